// guestmem: an owned file descriptor.
//
// `UniqueFd` closes its descriptor when destroyed; it moves and never copies. Regions backed
// by a file share one through `FileOffset` (guestmem/mmap_region.hpp); I/O calls borrow one
// through `BorrowedFd` (guestmem/io.hpp).
//
//   UniqueFd fd{::memfd_create("guest-ram", MFD_CLOEXEC)};
//   if (!fd) { /* errno says why */ }
#pragma once

#include <utility>

#include "guestmem/detail/export.hpp"

namespace guestmem {

/// An owned file descriptor: closed when destroyed or reset. Moves, never copies.
class GUESTMEM_API UniqueFd {
 public:
  constexpr UniqueFd() noexcept = default;
  /// Takes ownership of `fd` (a negative value means "none").
  constexpr explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  /// Takes `other`'s descriptor; `other` is left with none.
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  /// Closes this descriptor, then takes `other`'s; `other` is left with none.
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset(other.release());
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  /// The descriptor, or -1. Validity: until this object is destroyed or reset.
  [[nodiscard]] constexpr int get() const noexcept { return fd_; }
  /// Whether a descriptor is owned.
  [[nodiscard]] constexpr bool valid() const noexcept { return fd_ >= 0; }
  /// valid().
  constexpr explicit operator bool() const noexcept { return valid(); }

  /// Gives up ownership without closing; returns the descriptor.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

  /// Closes the current descriptor (if any) and takes `fd`. A failing close(2) is ignored:
  /// Linux releases the descriptor even then, and retrying could close a reused number.
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

}  // namespace guestmem
