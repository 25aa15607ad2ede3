// guestmem: the kind of access a caller intends, checked by an IOMMU view of memory.
//
// Four values, combined bitwise: `Read | Write == ReadWrite`, `Read & Write == No`.
// `p.allow(access)` is true when every right in `access` is also in `p`.
//
//   Permissions granted = Permissions::Read;
//   granted.allow(Permissions::Write);   // false
//   granted.has_write();                 // false
#pragma once

#include <cstdint>
#include <string_view>

namespace guestmem {

/// The kind of access a caller intends: no access, read, write or both. A small value; combine with
/// | and &.
class Permissions {
 public:
  /// No access.
  static const Permissions No;
  /// Reading.
  static const Permissions Read;
  /// Writing.
  static const Permissions Write;
  /// Reading and writing: Read | Write.
  static const Permissions ReadWrite;

  /// True when `access` asks for nothing that `*this` lacks.
  [[nodiscard]] constexpr bool allow(Permissions access) const noexcept {
    return (*this & access) == access;
  }
  /// True when `*this` includes write access.
  [[nodiscard]] constexpr bool has_write() const noexcept { return (bits_ & 2U) != 0; }
  /// True when `*this` includes read access.
  [[nodiscard]] constexpr bool has_read() const noexcept { return (bits_ & 1U) != 0; }

  /// The union of two sets of rights.
  friend constexpr Permissions operator|(Permissions a, Permissions b) noexcept {
    return Permissions(static_cast<std::uint8_t>(a.bits_ | b.bits_));
  }
  /// The intersection of two sets of rights.
  friend constexpr Permissions operator&(Permissions a, Permissions b) noexcept {
    return Permissions(static_cast<std::uint8_t>(a.bits_ & b.bits_));
  }
  /// Equal when they grant the same rights.
  friend constexpr bool operator==(Permissions, Permissions) noexcept = default;

  /// "No", "Read", "Write" or "ReadWrite".
  [[nodiscard]] constexpr std::string_view name() const noexcept {
    constexpr std::string_view kNames[] = {"No", "Read", "Write", "ReadWrite"};
    return kNames[bits_];
  }

 private:
  constexpr explicit Permissions(std::uint8_t bits) noexcept : bits_(bits) {}

  std::uint8_t bits_;
};

inline constexpr Permissions Permissions::No{0};
inline constexpr Permissions Permissions::Read{1};
inline constexpr Permissions Permissions::Write{2};
inline constexpr Permissions Permissions::ReadWrite{3};

}  // namespace guestmem
