// guestmem: ready-made sources and sinks for read_volatile_from and write_volatile_to.
//
// - `BorrowedFd`: any file descriptor (file, pipe, socket, device). Transfers go straight
//   between the descriptor and guest memory with read/readv and write/writev, retrying on
//   EINTR. It does not own the descriptor.
// - `SpanReader`, `SpanWriter`: host memory, consumed from the front as data moves.
// - `VectorWriter`: appends everything it is given to a std::vector.
//
//   BorrowedFd urandom{fd.get()};
//   auto n = mem.read_volatile_from(GuestAddress{0x1000}, urandom, 128);  // Result<size_t>
//   std::vector<std::byte> out;
//   VectorWriter sink{out};
//   mem.write_all_volatile_to(GuestAddress{0x1000}, sink, 128);
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include "guestmem/error.hpp"
#include "guestmem/fd.hpp"
#include "guestmem/volatile_io.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {

/// A file descriptor used for transfers; not owned.
/// Validity: the descriptor must stay open while the object is used.
class GUESTMEM_API BorrowedFd {
 public:
  /// Borrows `fd`.
  constexpr explicit BorrowedFd(int fd) noexcept : fd_(fd) {}
  /// Borrows the descriptor `fd` owns. Validity: while `fd` keeps it open.
  constexpr explicit BorrowedFd(const UniqueFd& fd) noexcept : fd_(fd.get()) {}

  /// The descriptor.
  [[nodiscard]] constexpr int get() const noexcept { return fd_; }

  /// One read(2) into `dst`, retried on EINTR. Returns the bytes read (0 at end of file); may
  /// stop short. Errors: IoError with errno.
  Result<std::size_t> read_volatile(const VolatileSlice<>& dst);
  /// One readv(2) into `dsts` (at most IOV_MAX views and 0x7ffff000 bytes per call, as the
  /// kernel allows), retried on EINTR. Returns the bytes read; may stop short.
  /// Errors: IoError with errno.
  Result<std::size_t> read_volatile_vectored(std::span<const VolatileSlice<>> dsts);
  /// One write(2) from `src`, retried on EINTR. Returns the bytes written; may stop short.
  /// Errors: IoError with errno.
  Result<std::size_t> write_volatile(const VolatileSlice<>& src);
  /// One writev(2) from `srcs`, with the limits of read_volatile_vectored.
  Result<std::size_t> write_volatile_vectored(std::span<const VolatileSlice<>> srcs);

 private:
  int fd_;
};

/// Reads from host memory, consuming it from the front. Never fails; returns 0 when empty.
/// Validity: the span's memory must outlive the reader and must not be guest memory.
class SpanReader {
 public:
  /// A reader of `data`.
  constexpr explicit SpanReader(std::span<const std::byte> data) noexcept : rest_(data) {}

  /// Copies the next min(remaining().size(), dst.size()) bytes into `dst` and returns that count: 0
  /// when nothing is left. Never fails.
  Result<std::size_t> read_volatile(const VolatileSlice<>& dst) {
    const std::size_t n = std::min(rest_.size(), dst.size());
    dst.copy_from(rest_.first(n));
    rest_ = rest_.subspan(n);
    return n;
  }

  /// The bytes not read yet.
  [[nodiscard]] constexpr std::span<const std::byte> remaining() const noexcept { return rest_; }

 private:
  std::span<const std::byte> rest_;
};

/// Writes into host memory, filling it from the front. Never fails; returns 0 when full.
/// Validity: as SpanReader.
class SpanWriter {
 public:
  /// A writer into `space`.
  constexpr explicit SpanWriter(std::span<std::byte> space) noexcept : rest_(space) {}

  /// Copies the first min(remaining().size(), src.size()) bytes of `src` and returns that count: 0
  /// when full. Never fails.
  Result<std::size_t> write_volatile(const VolatileSlice<>& src) {
    const std::size_t n = std::min(rest_.size(), src.size());
    src.copy_to(rest_.first(n));
    rest_ = rest_.subspan(n);
    return n;
  }

  /// The space not written yet.
  [[nodiscard]] constexpr std::span<std::byte> remaining() const noexcept { return rest_; }

 private:
  std::span<std::byte> rest_;
};

/// Appends to a vector. Never fails and never stops short (barring std::bad_alloc, which
/// terminates: no exception crosses the API).
/// Validity: the vector must outlive the writer.
class VectorWriter {
 public:
  /// A writer that appends to `out`.
  explicit VectorWriter(std::vector<std::byte>& out) noexcept : out_(&out) {}

  /// Appends all of `src` to the vector and returns src.size(). Never fails.
  Result<std::size_t> write_volatile(const VolatileSlice<>& src) noexcept {
    const std::size_t old = out_->size();
    out_->resize(old + src.size());
    return src.copy_to(std::span(*out_).subspan(old));
  }

 private:
  std::vector<std::byte>* out_;
};

static_assert(ReadVolatileVectored<BorrowedFd> && WriteVolatileVectored<BorrowedFd>);
static_assert(ReadVolatile<SpanReader> && WriteVolatile<SpanWriter> && WriteVolatile<VectorWriter>);

}  // namespace guestmem
