#pragma once
/// \file
/// Errors of the actor layer a caller can react to.

#include <system_error>

namespace troupe {

enum class ActorErrc {
  timeout = 1,        ///< an ask() got no reply in time
  dead_target,        ///< the target was gone: the message went to dead letters
  system_shutdown,    ///< the actor system shut down before a reply
  duplicate_name,     ///< spawn: a sibling already has that name
  invalid_name,       ///< spawn: empty name, or one with '/', or starting with '$'
};
const std::error_category& actor_category() noexcept;
inline std::error_code make_error_code(ActorErrc e) noexcept { return {static_cast<int>(e), actor_category()}; }

}  // namespace troupe

template <>
struct std::is_error_code_enum<troupe::ActorErrc> : std::true_type {};
