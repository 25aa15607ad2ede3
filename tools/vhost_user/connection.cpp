#include "vhost_user/connection.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace guestmem::vhost_user {
namespace {

Error protocol_error() { return Error::io(EPROTO); }

// Reads exactly `out.size()` bytes; IoError(EPROTO) when the peer closes first.
Result<void> read_exact(int fd, std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::recv(fd, out.data() + done, out.size() - done, 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return std::unexpected(Error::io(errno));
    }
    if (n == 0) {
      return std::unexpected(protocol_error());
    }
    done += static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace

Result<Message> Connection::receive() {
  Message msg;
  alignas(cmsghdr) std::array<std::byte, CMSG_SPACE(sizeof(int) * kMaxFds)> control{};
  iovec iov{&msg.header, sizeof(msg.header)};
  msghdr hdr{};
  hdr.msg_iov = &iov;
  hdr.msg_iovlen = 1;
  hdr.msg_control = control.data();
  hdr.msg_controllen = control.size();
  ssize_t n;
  do {
    n = ::recvmsg(socket_.get(), &hdr, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return std::unexpected(Error::io(errno));
  }
  if (n == 0) {
    return std::unexpected(Error::io(0));
  }
  // Take ownership of every descriptor first, so that each one is closed on any error below.
  for (cmsghdr* c = CMSG_FIRSTHDR(&hdr); c != nullptr; c = CMSG_NXTHDR(&hdr, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
      continue;
    }
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      // SAFETY: the kernel wrote `count` ints after the cmsg header, inside `control`; memcpy
      // because CMSG_DATA need not be aligned for int.
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      msg.fds.emplace_back(fd);
    }
  }
  if ((hdr.msg_flags & MSG_CTRUNC) != 0 || msg.fds.size() > kMaxFds) {
    return std::unexpected(protocol_error());
  }
  const auto got = static_cast<std::size_t>(n);
  if (got < sizeof(msg.header)) {
    auto rest = writable_bytes_of(msg.header).subspan(got);
    if (auto read = read_exact(socket_.get(), rest); !read) {
      return std::unexpected(read.error());
    }
  }
  if ((msg.header.flags & kVersionMask) != kVersion || msg.header.size > kMaxPayloadSize) {
    return std::unexpected(protocol_error());
  }
  if (auto read = read_exact(socket_.get(), std::span(msg.payload).first(msg.header.size)); !read) {
    return std::unexpected(read.error());
  }
  return msg;
}

Result<void> Connection::send(const MessageHeader& header, std::span<const std::byte> payload,
                              std::span<const int> fds) {
  if (header.size != payload.size() || fds.size() > kMaxFds) {
    return std::unexpected(Error::io(EINVAL));
  }
  std::array<iovec, 2> iov{iovec{const_cast<MessageHeader*>(&header), sizeof(header)},
                           iovec{const_cast<std::byte*>(payload.data()), payload.size()}};
  alignas(cmsghdr) std::array<std::byte, CMSG_SPACE(sizeof(int) * kMaxFds)> control{};
  msghdr hdr{};
  hdr.msg_iov = iov.data();
  hdr.msg_iovlen = payload.empty() ? 1 : 2;
  if (!fds.empty()) {
    hdr.msg_control = control.data();
    hdr.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&hdr);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    // SAFETY: `control` has room for kMaxFds ints after the header (CMSG_SPACE above).
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  std::size_t total = sizeof(header) + payload.size();
  std::size_t sent = 0;
  while (sent < total) {
    const ssize_t n = ::sendmsg(socket_.get(), &hdr, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return std::unexpected(Error::io(errno));
    }
    sent += static_cast<std::size_t>(n);
    if (sent == total) {
      break;
    }
    // A short send: the descriptors went with the first byte; send the rest without them.
    hdr.msg_control = nullptr;
    hdr.msg_controllen = 0;
    auto skip = static_cast<std::size_t>(n);
    while (skip >= hdr.msg_iov->iov_len) {
      skip -= hdr.msg_iov->iov_len;
      ++hdr.msg_iov;
      --hdr.msg_iovlen;
    }
    hdr.msg_iov->iov_base = static_cast<std::byte*>(hdr.msg_iov->iov_base) + skip;
    hdr.msg_iov->iov_len -= skip;
  }
  return {};
}

}  // namespace guestmem::vhost_user
