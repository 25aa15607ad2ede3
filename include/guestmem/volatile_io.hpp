// guestmem: what file descriptors, sockets and host buffers must offer to exchange data with
// guest memory without a bounce buffer.
//
// A `ReadVolatile` source fills a volatile view of guest memory; a `WriteVolatile` sink drains
// one. The byte-access calls `read_volatile_from` and `write_volatile_to` hand them views of
// the guest range one contiguous piece at a time, or, when the type is also
// `ReadVolatileVectored`/`WriteVolatileVectored`, several pieces in one call (readv/writev).
//
// Contract for an implementation:
// - Move at most `view.size()` bytes (or the sum of the sizes) and return how many, in order
//   from the first byte. Returning fewer is allowed (end of file, a short pipe read); 0 means
//   "no more" and ends the transfer. Claiming more than offered is reported as
//   `CallbackOutOfRange`.
// - Retry EINTR; report other failures as `Error::io(errno)`.
// - Views passed in carry no dirty bitmap: the caller marks the bytes you report, so an
//   implementation never has to remember to. A call that fails or claims more than it was
//   offered may have written any of the bytes offered, so the caller marks all of them.
// - Write into a view only through its methods or through `unsafe_host_ptr()` for a system
//   call; never keep the pointer after returning.
// - Under ThreadSanitizer, the interceptor of a system call that reads or writes the view
//   reports the kernel's copy as plain accesses, which race with the relaxed atomic accesses
//   every guestmem copy of the same bytes makes (guest memory is shared by design).
//   `BorrowedFd` (src/io.cpp) therefore makes the call between __tsan_ignore_thread_begin()
//   and __tsan_ignore_thread_end() and then touches the bytes moved with relaxed atomics that
//   change nothing (an atomic add of 0 where the kernel wrote, an atomic load where it read),
//   so that TSan sees a relaxed atomic copy: guestmem's accesses are not reported, a plain
//   access of those bytes in other code still is, and the descriptor's synchronisation still
//   counts. An implementation that hands `unsafe_host_ptr()` to a system call can do the same.
//
// guestmem/io.hpp provides `BorrowedFd` (any file descriptor), `SpanReader`, `SpanWriter` and
// `VectorWriter` (host memory).
#pragma once

#include <concepts>
#include <cstddef>
#include <span>

#include "guestmem/detail/fwd.hpp"
#include "guestmem/error.hpp"

namespace guestmem {

/// A source that can copy bytes into a view of guest memory.
template <class R>
concept ReadVolatile = requires(R& source, const VolatileSlice<>& dst) {
  { source.read_volatile(dst) } -> std::same_as<Result<std::size_t>>;
};

/// A source that can fill several views with one call (readv).
template <class R>
concept ReadVolatileVectored =
    ReadVolatile<R> && requires(R& source, std::span<const VolatileSlice<>> dsts) {
      { source.read_volatile_vectored(dsts) } -> std::same_as<Result<std::size_t>>;
    };

/// A sink that can copy bytes out of a view of guest memory.
template <class W>
concept WriteVolatile = requires(W& sink, const VolatileSlice<>& src) {
  { sink.write_volatile(src) } -> std::same_as<Result<std::size_t>>;
};

/// A sink that can drain several views with one call (writev).
template <class W>
concept WriteVolatileVectored =
    WriteVolatile<W> && requires(W& sink, std::span<const VolatileSlice<>> srcs) {
      { sink.write_volatile_vectored(srcs) } -> std::same_as<Result<std::size_t>>;
    };

}  // namespace guestmem
