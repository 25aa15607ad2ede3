#include "guestmem/io.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdint>

#include "guestmem/detail/config.hpp"

#if defined(GUESTMEM_TSAN)
// ThreadSanitizer's runtime calls that stop and restart the race detection of the calling
// thread's memory accesses (compiler-rt's tsan_interface.cpp; GCC 12's
// <sanitizer/tsan_interface.h> does not declare them).
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

namespace guestmem {
namespace {

// The most bytes Linux moves in one read/write call (MAX_RW_COUNT): asking for more is
// allowed for read/write but readv/writev fail with EINVAL past SSIZE_MAX, so every call is
// clamped here and simply returns short.
constexpr std::size_t kMaxTransfer = 0x7ffff000;
// Views handed to one readv/writev; the kernel's limit is IOV_MAX (1024).
constexpr std::size_t kMaxIovecs = 64;

template <class Call>
Result<std::size_t> retry_eintr(Call&& call) {
  for (;;) {
    const ssize_t n = call();
    if (n >= 0) {
      return static_cast<std::size_t>(n);
    }
    if (errno != EINTR) {
      return std::unexpected(Error::io(errno));
    }
  }
}

// What the kernel does to the guest memory of a transfer: read(2) writes it, write(2) reads it.
enum class KernelAccess { Writes, Reads };

#if defined(GUESTMEM_TSAN)
// Touches the first `count` bytes of `iov` with relaxed atomic operations that change nothing:
// a fetch_add of 0 where the kernel wrote, a load where it read.
void touch_as_atomics(std::span<const iovec> iov, std::size_t count, KernelAccess access) {
  for (const iovec& piece : iov) {
    const std::size_t len = std::min(count, piece.iov_len);
    auto* bytes = static_cast<std::uint8_t*>(piece.iov_base);
    for (std::size_t i = 0; i < len; ++i) {
      // SAFETY: the kernel has just moved these bytes, so they are mapped, and writable where
      // it wrote them; an atomic add of 0 keeps whatever another thread stores meanwhile.
      if (access == KernelAccess::Writes) {
        __atomic_fetch_add(bytes + i, 0, __ATOMIC_RELAXED);
      } else {
        (void)__atomic_load_n(bytes + i, __ATOMIC_RELAXED);
      }
    }
    count -= len;
    if (count == 0) {
      return;
    }
  }
}
#endif

// Runs `call`, a read, readv, write or writev of the guest memory in `iov`, and returns its
// result. Under ThreadSanitizer the system call's interceptor reports the kernel's copy as
// plain accesses of guest memory, which race with the relaxed atomic accesses every guestmem
// copy makes there (guest memory is shared by design). So the call runs with the thread's
// race detection off, and the bytes it moved are then touched with relaxed atomics that change
// nothing: TSan sees the kernel's copy as the relaxed atomic copy it is in effect. Races
// between guestmem's copies and the kernel's are then no longer reported, while a plain access
// of the same bytes in the user's own code still races with it and still is. Only memory
// accesses are ignored during the call, not synchronisation: the interceptor's ordering of a
// descriptor's data (a pipe's write happens before the read that returns it) still counts.
template <class Call>
ssize_t transfer(Call&& call, [[maybe_unused]] std::span<const iovec> iov,
                 [[maybe_unused]] KernelAccess access) {
#if defined(GUESTMEM_TSAN)
  __tsan_ignore_thread_begin();
  const ssize_t n = call();
  const int saved_errno = errno;
  __tsan_ignore_thread_end();
  if (n > 0) {
    touch_as_atomics(iov, static_cast<std::size_t>(n), access);
  }
  errno = saved_errno;
  return n;
#else
  return call();
#endif
}

// Fills `iov` from `views`, clamped to kMaxIovecs entries and kMaxTransfer bytes.
int to_iovecs(std::span<const VolatileSlice<>> views, std::array<iovec, kMaxIovecs>& iov) {
  std::size_t used = 0;
  std::size_t total = 0;
  for (const auto& view : views) {
    if (used == iov.size() || total == kMaxTransfer) {
      break;
    }
    const std::size_t len = std::min(view.size(), kMaxTransfer - total);
    iov[used++] = iovec{view.unsafe_host_ptr(), len};
    total += len;
  }
  return static_cast<int>(used);
}

}  // namespace

Result<std::size_t> BorrowedFd::read_volatile(const VolatileSlice<>& dst) {
  const iovec piece{dst.unsafe_host_ptr(), std::min(dst.size(), kMaxTransfer)};
  // SAFETY: `dst` is a live view of dst.size() writable bytes; the kernel writes at most the
  // requested count into it.
  return retry_eintr([&] {
    return transfer([&] { return ::read(fd_, piece.iov_base, piece.iov_len); },
                    std::span(&piece, 1), KernelAccess::Writes);
  });
}

Result<std::size_t> BorrowedFd::read_volatile_vectored(std::span<const VolatileSlice<>> dsts) {
  std::array<iovec, kMaxIovecs> iov{};
  const int count = to_iovecs(dsts, iov);
  const std::span<const iovec> used(iov.data(), static_cast<std::size_t>(count));
  // SAFETY: each iovec describes a prefix of a live view.
  return retry_eintr([&] {
    return transfer([&] { return ::readv(fd_, iov.data(), count); }, used, KernelAccess::Writes);
  });
}

Result<std::size_t> BorrowedFd::write_volatile(const VolatileSlice<>& src) {
  const iovec piece{src.unsafe_host_ptr(), std::min(src.size(), kMaxTransfer)};
  // SAFETY: `src` is a live view of src.size() readable bytes.
  return retry_eintr([&] {
    return transfer([&] { return ::write(fd_, piece.iov_base, piece.iov_len); },
                    std::span(&piece, 1), KernelAccess::Reads);
  });
}

Result<std::size_t> BorrowedFd::write_volatile_vectored(std::span<const VolatileSlice<>> srcs) {
  std::array<iovec, kMaxIovecs> iov{};
  const int count = to_iovecs(srcs, iov);
  const std::span<const iovec> used(iov.data(), static_cast<std::size_t>(count));
  // SAFETY: each iovec describes a prefix of a live view.
  return retry_eintr([&] {
    return transfer([&] { return ::writev(fd_, iov.data(), count); }, used, KernelAccess::Reads);
  });
}

}  // namespace guestmem
