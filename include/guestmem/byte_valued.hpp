// guestmem: plain data that may be copied to and from guest memory.
//
// A type is `ByteValued` when any sequence of bytes is a valid value of it and its value is
// fully described by its bytes: trivially copyable, and no padding
// (std::has_unique_object_representations), because padding would leak host stack contents
// into the guest on a write. `bool` is excluded (only 0 and 1 are valid values), and so are
// pointers (a host address read from guest memory is an attacker's choice). `float` and
// `double` qualify on their own (every bit pattern is a value); a struct that contains them
// can opt in after checking it has no padding:
//
//   struct Pair { std::uint32_t a; std::uint32_t b; };           // ByteValued
//   struct Padded { std::uint8_t a; std::uint32_t b; };          // not: 3 padding bytes
//   struct Sample { float x; float y; };
//   template <> inline constexpr bool guestmem::enable_byte_valued<Sample> = true;
//
// `AtomicAccess` names the integers that `load` and `store` access atomically: 1, 2, 4 and
// 8 bytes wide, not bool.
#pragma once

#include <concepts>
#include <cstddef>
#include <span>
#include <type_traits>

namespace guestmem {
namespace detail {

template <class T>
inline constexpr bool is_plain_float_v =
    std::is_floating_point_v<T> && (sizeof(T) == 4 || sizeof(T) == 8);

template <class T>
inline constexpr bool default_byte_valued_v = [] {
  using E = std::remove_cv_t<std::remove_all_extents_t<T>>;
  if constexpr (!std::is_trivially_copyable_v<T> || std::is_same_v<E, bool> ||
                std::is_pointer_v<E> || std::is_member_pointer_v<E> ||
                std::is_same_v<E, std::nullptr_t>) {
    return false;
  } else {
    return std::has_unique_object_representations_v<T> || is_plain_float_v<E>;
  }
}();

}  // namespace detail

/// Customization point: specialize to `true` for a type whose every bit pattern is valid and
/// that has no padding, but that the default rule cannot prove (a struct of floats).
template <class T>
inline constexpr bool enable_byte_valued = detail::default_byte_valued_v<T>;

/// Plain data: may be read from and written to guest memory byte for byte.
template <class T>
concept ByteValued = !std::is_reference_v<T> && enable_byte_valued<std::remove_cv_t<T>>;

/// An integer that guest memory can load and store atomically with one instruction.
template <class T>
concept AtomicAccess = std::integral<T> && !std::is_same_v<std::remove_cv_t<T>, bool> &&
                       !std::is_const_v<T> && !std::is_volatile_v<T> &&
                       (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8);

/// The bytes of `value`.
template <ByteValued T>
[[nodiscard]] std::span<const std::byte, sizeof(T)> bytes_of(const T& value) noexcept {
  return std::as_bytes(std::span<const T, 1>(&value, 1));
}

/// The bytes of `value`, writable. Any bytes written leave a valid `T` (ByteValued).
template <ByteValued T>
[[nodiscard]] std::span<std::byte, sizeof(T)> writable_bytes_of(T& value) noexcept {
  return std::as_writable_bytes(std::span<T, 1>(&value, 1));
}

}  // namespace guestmem
