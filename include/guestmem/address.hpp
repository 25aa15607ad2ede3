// guestmem: addresses.
//
// `GuestAddress` is a guest physical address; `MemoryRegionAddress` is an offset inside one
// region. Both wrap a 64-bit value and never convert into each other implicitly, so a region
// offset cannot be passed where a guest address is expected. Every arithmetic operation comes
// in a checked form (returns std::nullopt on overflow), an overflowing form (wraps and says
// so) and an unchecked form (the caller guarantees no overflow; a violation aborts).
// Guest-supplied values must only ever go through the checked forms.
//
//   GuestAddress base{0x1000};
//   if (auto end = base.checked_add(len)) { ... }         // nullopt when it would wrap
//   auto [sum, wrapped] = base.overflowing_add(len);
//   std::string s = to_string(base);                      // "0x1000"
#pragma once

#include <bit>
#include <compare>
#include <concepts>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <utility>
#include <version>

#if defined(__cpp_lib_format)
#include <format>
#endif

#include "guestmem/detail/config.hpp"

namespace guestmem {

/// The type of the raw value of a `GuestAddress`, and of guest sizes.
using GuestUsize = std::uint64_t;

namespace detail {

/// The arithmetic shared by the address types. `Derived` is the concrete address type.
template <class Derived>
class AddressBase {
 public:
  /// The raw value's type.
  using value_type = std::uint64_t;

  constexpr AddressBase() noexcept = default;
  /// The address with raw value `value`.
  constexpr explicit AddressBase(value_type value) noexcept : value_(value) {}

  /// The raw 64-bit value.
  [[nodiscard]] constexpr value_type raw_value() const noexcept { return value_; }

  /// `*this + offset`, or std::nullopt if the sum does not fit in 64 bits.
  [[nodiscard]] constexpr std::optional<Derived> checked_add(value_type offset) const noexcept {
    value_type sum = 0;
    if (__builtin_add_overflow(value_, offset, &sum)) {
      return std::nullopt;
    }
    return Derived{sum};
  }

  /// `*this + offset` modulo 2^64, and whether it wrapped.
  [[nodiscard]] constexpr std::pair<Derived, bool> overflowing_add(
      value_type offset) const noexcept {
    value_type sum = 0;
    const bool wrapped = __builtin_add_overflow(value_, offset, &sum);
    return {Derived{sum}, wrapped};
  }

  /// `*this + offset`. Preconditions: the sum fits in 64 bits (aborts otherwise).
  [[nodiscard]] constexpr Derived unchecked_add(value_type offset) const noexcept {
    const auto [sum, wrapped] = overflowing_add(offset);
    GUESTMEM_ASSERT(!wrapped, "unchecked_add overflowed");
    return sum;
  }

  /// `*this - offset`, or std::nullopt if it would go below zero.
  [[nodiscard]] constexpr std::optional<Derived> checked_sub(value_type offset) const noexcept {
    if (offset > value_) {
      return std::nullopt;
    }
    return Derived{value_ - offset};
  }

  /// `*this - offset`. Preconditions: `offset <= raw_value()` (aborts otherwise).
  [[nodiscard]] constexpr Derived unchecked_sub(value_type offset) const noexcept {
    GUESTMEM_ASSERT(offset <= value_, "unchecked_sub underflowed");
    return Derived{value_ - offset};
  }

  /// The bitwise AND of the raw value and `mask`.
  [[nodiscard]] constexpr value_type mask(value_type mask) const noexcept {
    return value_ & mask;
  }

  /// The distance from `base` up to `*this`, or std::nullopt if `base` is above `*this`.
  [[nodiscard]] constexpr std::optional<value_type> checked_offset_from(
      Derived base) const noexcept {
    if (base.raw_value() > value_) {
      return std::nullopt;
    }
    return value_ - base.raw_value();
  }

  /// The distance from `base` up to `*this`. Preconditions: `base <= *this` (aborts otherwise).
  [[nodiscard]] constexpr value_type unchecked_offset_from(Derived base) const noexcept {
    GUESTMEM_ASSERT(base.raw_value() <= value_, "unchecked_offset_from: base is above address");
    return value_ - base.raw_value();
  }

  /// The smallest multiple of `power_of_two` that is >= `*this`; std::nullopt if
  /// `power_of_two` is not a power of two or the result does not fit in 64 bits.
  [[nodiscard]] constexpr std::optional<Derived> checked_align_up(
      value_type power_of_two) const noexcept {
    if (!std::has_single_bit(power_of_two)) {
      return std::nullopt;
    }
    const value_type low = power_of_two - 1;
    auto bumped = checked_add(low);
    if (!bumped) {
      return std::nullopt;
    }
    return Derived{bumped->raw_value() & ~low};
  }

  /// As checked_align_up. Preconditions: `power_of_two` is a power of two and the result
  /// fits in 64 bits (aborts otherwise).
  [[nodiscard]] constexpr Derived unchecked_align_up(value_type power_of_two) const noexcept {
    auto aligned = checked_align_up(power_of_two);
    GUESTMEM_ASSERT(aligned.has_value(), "unchecked_align_up: bad alignment or overflow");
    return *aligned;
  }

  /// Equal when the raw values are.
  friend constexpr bool operator==(const Derived& a, const Derived& b) noexcept {
    return a.raw_value() == b.raw_value();
  }
  /// Ordered as the raw values.
  friend constexpr std::strong_ordering operator<=>(const Derived& a, const Derived& b) noexcept {
    return a.raw_value() <=> b.raw_value();
  }

 private:
  value_type value_ = 0;
};

template <class T>
concept Address = std::derived_from<T, AddressBase<T>>;

}  // namespace detail

/// A guest physical address (GPA). 64 bits whatever the guest's word size.
struct GuestAddress : detail::AddressBase<GuestAddress> {
  using AddressBase::AddressBase;
};

/// An offset inside one memory region.
struct MemoryRegionAddress : detail::AddressBase<MemoryRegionAddress> {
  using AddressBase::AddressBase;
};

/// "0x" followed by the lowercase hexadecimal raw value, for example "0x1200".
GUESTMEM_API std::string to_string(GuestAddress address);
GUESTMEM_API std::string to_string(MemoryRegionAddress address);
GUESTMEM_API std::ostream& operator<<(std::ostream& out, GuestAddress address);
GUESTMEM_API std::ostream& operator<<(std::ostream& out, MemoryRegionAddress address);

}  // namespace guestmem

#if defined(__cpp_lib_format)
/// std::format support: an empty spec prints "0x1200"; any other spec formats the raw
/// value as an unsigned 64-bit integer ("{:08x}" prints "00001200").
template <guestmem::detail::Address A>
struct std::formatter<A, char> : std::formatter<std::uint64_t, char> {
  constexpr auto parse(std::format_parse_context& ctx) {
    hex_default_ = ctx.begin() == ctx.end() || *ctx.begin() == '}';
    return hex_default_ ? ctx.begin() : std::formatter<std::uint64_t, char>::parse(ctx);
  }
  template <class FormatContext>
  auto format(const A& address, FormatContext& ctx) const {
    if (hex_default_) {
      return std::format_to(ctx.out(), "{:#x}", address.raw_value());
    }
    return std::formatter<std::uint64_t, char>::format(address.raw_value(), ctx);
  }

 private:
  bool hex_default_ = true;
};
#endif
