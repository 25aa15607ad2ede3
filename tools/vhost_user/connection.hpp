// guestmem vhost-user: messages over a Unix stream socket.
//
// A message is a `MessageHeader`, `size` payload bytes and up to kMaxFds file descriptors
// sent with the header as SCM_RIGHTS ancillary data. `Connection` receives and sends whole
// messages with strict checks: the payload may not exceed kMaxPayloadSize, the version must
// be 1, descriptors beyond kMaxFds or a truncated control message close the connection, and
// a peer that closes mid-message is an error. Received descriptors are owned (UniqueFd), so
// none leaks whatever the handler does with the message.
//
//   Connection conn(UniqueFd(accepted));
//   auto msg = conn.receive();                          // Result<Message>
//   conn.send(reply_header(*msg, 8), bytes_of(features));
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <guestmem/byte_valued.hpp>
#include <guestmem/error.hpp>
#include <guestmem/fd.hpp>

#include "vhost_user/protocol.hpp"

namespace guestmem::vhost_user {

/// One received message.
struct Message {
  MessageHeader header{};
  std::array<std::byte, kMaxPayloadSize> payload{};
  std::vector<UniqueFd> fds;

  /// The payload bytes that arrived. Validity: as long as the message.
  [[nodiscard]] std::span<const std::byte> body() const noexcept {
    return std::span(payload).first(header.size);
  }

  /// Copies the payload into `out` when between `min_size` and sizeof(T) bytes arrived (the
  /// bytes that did not arrive are zero) and returns true; returns false otherwise.
  template <ByteValued T>
  [[nodiscard]] bool read_as(T& out, std::size_t min_size = sizeof(T)) const noexcept {
    if (header.size < min_size || header.size > sizeof(T)) {
      return false;
    }
    out = T{};
    std::memcpy(&out, payload.data(), header.size);
    return true;
  }
};

class Connection {
 public:
  explicit Connection(UniqueFd socket) noexcept : socket_(std::move(socket)) {}

  /// Receives one whole message, waiting for it.
  /// Errors: IoError(0) when the peer closed the connection between messages; IoError(EPROTO)
  /// for a message that breaks the rules above (closed mid-message, wrong version, payload
  /// too large, too many or truncated descriptors); IoError with errno when recvmsg fails.
  /// After an error the connection must be closed.
  Result<Message> receive();

  /// Sends `header` and `payload` (header.size must equal payload.size()) with `fds`.
  /// Errors: IoError with errno (EPIPE when the peer is gone; sends never raise SIGPIPE).
  Result<void> send(const MessageHeader& header, std::span<const std::byte> payload,
                    std::span<const int> fds = {});

  /// The socket. Validity: while the connection lives.
  [[nodiscard]] int fd() const noexcept { return socket_.get(); }

 private:
  UniqueFd socket_;
};

/// The header of the reply to `request` carrying `size` payload bytes.
[[nodiscard]] constexpr MessageHeader reply_header(const MessageHeader& request,
                                                   std::uint32_t size) noexcept {
  return MessageHeader{request.request, kVersion | kReplyFlag, size};
}

}  // namespace guestmem::vhost_user
