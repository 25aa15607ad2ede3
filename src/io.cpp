#include "guestmem/io.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>

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
  // SAFETY: `dst` is a live view of dst.size() writable bytes; the kernel writes at most the
  // requested count into it.
  return retry_eintr(
      [&] { return ::read(fd_, dst.unsafe_host_ptr(), std::min(dst.size(), kMaxTransfer)); });
}

Result<std::size_t> BorrowedFd::read_volatile_vectored(std::span<const VolatileSlice<>> dsts) {
  std::array<iovec, kMaxIovecs> iov{};
  const int count = to_iovecs(dsts, iov);
  // SAFETY: each iovec describes a prefix of a live view.
  return retry_eintr([&] { return ::readv(fd_, iov.data(), count); });
}

Result<std::size_t> BorrowedFd::write_volatile(const VolatileSlice<>& src) {
  // SAFETY: `src` is a live view of src.size() readable bytes.
  return retry_eintr(
      [&] { return ::write(fd_, src.unsafe_host_ptr(), std::min(src.size(), kMaxTransfer)); });
}

Result<std::size_t> BorrowedFd::write_volatile_vectored(std::span<const VolatileSlice<>> srcs) {
  std::array<iovec, kMaxIovecs> iov{};
  const int count = to_iovecs(srcs, iov);
  // SAFETY: each iovec describes a prefix of a live view.
  return retry_eintr([&] { return ::writev(fd_, iov.data(), count); });
}

}  // namespace guestmem
