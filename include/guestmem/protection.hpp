// guestmem: what a mapping allows, as given to mmap.
//
// `Protection` is the protection of a mapping: readable, writable, both or neither (the
// PROT_READ and PROT_WRITE bits of mmap). It is the mapping-side counterpart of
// `Permissions` (guestmem/permissions.hpp), which names the kind of access a caller intends:
// a region refuses an access whose Permissions its Protection does not allow, before the CPU
// would fault on it.
//
//   auto rom = MmapRegionBuilder<>(0x1000).with_protection(Protection::read()).build();
//   Protection::read_write().allows(Protection::read());       // true
//   Protection::read().allows(Protection::read_write());       // false
//   Protection::read().as_permissions().allow(Permissions::Write);  // false
#pragma once

#include <sys/mman.h>

#include <cstdint>

#include "guestmem/permissions.hpp"

namespace guestmem {

/// The protection of a mapping: readable, writable, both or neither, as the PROT_READ and
/// PROT_WRITE bits of mmap. A small value.
class Protection {
 public:
  /// No access: PROT_NONE.
  [[nodiscard]] static constexpr Protection none() noexcept { return Protection(0); }
  /// Read-only: PROT_READ.
  [[nodiscard]] static constexpr Protection read() noexcept { return Protection(kRead); }
  /// Write-only: PROT_WRITE. (On x86-64 the CPU also lets such pages be read; guestmem's
  /// accessors do not.)
  [[nodiscard]] static constexpr Protection write() noexcept { return Protection(kWrite); }
  /// Read and write: PROT_READ | PROT_WRITE.
  [[nodiscard]] static constexpr Protection read_write() noexcept {
    return Protection(kRead | kWrite);
  }
  /// The read and write bits of an mmap prot argument; PROT_EXEC and other bits are ignored.
  [[nodiscard]] static constexpr Protection from_mmap_prot(int prot) noexcept {
    return Protection(static_cast<std::uint8_t>(((prot & PROT_READ) != 0 ? kRead : 0) |
                                                 ((prot & PROT_WRITE) != 0 ? kWrite : 0)));
  }

  /// This protection with reading added.
  [[nodiscard]] constexpr Protection set_read() const noexcept {
    return Protection(static_cast<std::uint8_t>(bits_ | kRead));
  }
  /// This protection with writing added.
  [[nodiscard]] constexpr Protection set_write() const noexcept {
    return Protection(static_cast<std::uint8_t>(bits_ | kWrite));
  }

  /// Whether the mapping may be read (PROT_READ).
  [[nodiscard]] constexpr bool readable() const noexcept { return (bits_ & kRead) != 0; }
  /// Whether the mapping may be written (PROT_WRITE).
  [[nodiscard]] constexpr bool writable() const noexcept { return (bits_ & kWrite) != 0; }

  /// True when every access `other` allows is also allowed by this protection.
  [[nodiscard]] constexpr bool allows(Protection other) const noexcept {
    return (bits_ & other.bits_) == other.bits_;
  }

  /// The prot argument of mmap: PROT_NONE, PROT_READ, PROT_WRITE or both.
  [[nodiscard]] constexpr int to_mmap_prot() const noexcept {
    return (readable() ? PROT_READ : 0) | (writable() ? PROT_WRITE : 0);
  }
  /// The kinds of access this protection allows.
  [[nodiscard]] constexpr Permissions as_permissions() const noexcept {
    return (readable() ? Permissions::Read : Permissions::No) |
           (writable() ? Permissions::Write : Permissions::No);
  }

  /// Equal when they allow the same accesses.
  friend constexpr bool operator==(Protection, Protection) noexcept = default;

 private:
  static constexpr std::uint8_t kRead = 1;
  static constexpr std::uint8_t kWrite = 2;

  constexpr explicit Protection(std::uint8_t bits) noexcept : bits_(bits) {}

  std::uint8_t bits_;
};

}  // namespace guestmem
