#pragma once
// An open-addressing hash set of non-null pointers: one pointer a slot and no node per element
// (linear probing, backward-shift deletion, at most 3/4 full; it shrinks when 1/8 full). A
// shard region's cell has one entry per entity in two of these (its named children and the
// children it watches), so an entry costs 8-16 bytes instead of a hash node and a bucket.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace troupe::detail {

/// Mixes a pointer's bits: allocation addresses share their low and high bits.
inline std::size_t mix_pointer(const void* p) noexcept {
  auto h = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return static_cast<std::size_t>(h);
}

/// `Traits::hash(const T*)` gives an element's hash (of whatever it is looked up by).
template <class T, class Traits>
class PtrSet {
 public:
  PtrSet() = default;
  PtrSet(PtrSet&& o) noexcept
      : slots_(std::move(o.slots_)), mask_(std::exchange(o.mask_, 0)), size_(std::exchange(o.size_, 0)) {}
  PtrSet& operator=(PtrSet&& o) noexcept {
    slots_ = std::move(o.slots_);
    mask_ = std::exchange(o.mask_, 0);
    size_ = std::exchange(o.size_, 0);
    return *this;
  }

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

  /// The element with hash `h` for which `match(element)` holds, or null.
  template <class Match>
  T* find(std::size_t h, Match&& match) const {
    if (size_ == 0) return nullptr;
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      T* e = slots_[i];
      if (!e) return nullptr;
      if (match(static_cast<const T*>(e))) return e;
    }
  }
  bool contains(const T* p) const {
    return find(Traits::hash(p), [p](const T* e) { return e == p; }) != nullptr;
  }
  /// Adds `p`, which the caller knows is absent.
  void insert(T* p) {
    if ((size_ + 1) * 4 > capacity() * 3) rehash(capacity() ? capacity() * 2 : 8);
    place(p);
    ++size_;
  }
  /// Removes `p` itself; false when absent.
  bool erase(const T* p) {
    if (size_ == 0) return false;
    std::size_t i = Traits::hash(p) & mask_;
    for (; slots_[i] != p; i = (i + 1) & mask_) {
      if (!slots_[i]) return false;
    }
    // Close the hole: a later element of the run moves into it when its home slot allows.
    for (std::size_t j = (i + 1) & mask_; slots_[j]; j = (j + 1) & mask_) {
      const std::size_t home = Traits::hash(slots_[j]) & mask_;
      if (((j - home) & mask_) >= ((j - i) & mask_)) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = nullptr;
    --size_;
    if (size_ == 0) {
      clear();
    } else if (capacity() > 8 && size_ * 8 < capacity()) {
      rehash(capacity() / 2);
    }
    return true;
  }
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < capacity(); ++i) {
      if (slots_[i]) f(slots_[i]);
    }
  }
  void clear() noexcept {
    slots_.reset();
    mask_ = 0;
    size_ = 0;
  }

 private:
  std::size_t capacity() const noexcept { return slots_ ? mask_ + 1 : 0; }
  void place(T* p) {
    std::size_t i = Traits::hash(p) & mask_;
    while (slots_[i]) i = (i + 1) & mask_;
    slots_[i] = p;
  }
  void rehash(std::size_t cap) {
    auto fresh = std::make_unique<T*[]>(cap);  // may throw: nothing has changed yet
    const std::size_t old_cap = capacity();
    auto old = std::exchange(slots_, std::move(fresh));
    mask_ = cap - 1;
    for (std::size_t i = 0; i < old_cap; ++i) {
      if (old[i]) place(old[i]);
    }
  }

  std::unique_ptr<T*[]> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace troupe::detail
