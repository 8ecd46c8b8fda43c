#pragma once
/// \file
/// Everything a Troupe user needs: include this and link troupe::troupe.

#include <troupe/actor/actor.hpp>
#include <troupe/actor/actor_ref.hpp>
#include <troupe/actor/actor_system.hpp>
#include <troupe/actor/errc.hpp>
#include <troupe/actor/router.hpp>
#include <troupe/actor/supervision.hpp>
#include <troupe/actor/timer.hpp>
#include <troupe/membership/service.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/message.hpp>
#include <troupe/serialization/registry.hpp>
#include <troupe/serialization/result.hpp>
#include <troupe/serialization/system_generated.h>
#include <troupe/serialization/type_id.hpp>
#include <troupe/sharding/cluster_router.hpp>
