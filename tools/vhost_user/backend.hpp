// guestmem vhost-user: the vhost-user-blk back end, message handling and queue threads.
//
// `BlkBackend` serves one front end at a time over a `Connection`: it answers the messages
// QEMU's vhost-user-blk-pci sends (features, protocol features, owner, memory table and
// single regions, vring num/addr/base/kick/call/err/enable, config, queue count, max memory
// slots, reset) and runs one thread per started queue. A queue starts when it has a size,
// addresses, a kick descriptor and (once VHOST_USER_F_PROTOCOL_FEATURES is negotiated) has
// been enabled; GET_VRING_BASE, SET_VRING_ENABLE 0, RESET_DEVICE and a disconnect stop it.
// Queue threads read the front end's memory through snapshots of `MemoryMap`, so the table
// may change while they run.
//
// Refusals: a message with the wrong payload size or descriptor count, or a value out of
// range, gets one log line and, when the front end asked for it (REPLY_ACK), a failure
// reply; a request this back end does not implement, or a broken message stream, closes the
// connection. A ring the guest corrupts stops its queue (one log line, the err eventfd is
// signalled) until the front end sets the queue up again.
//
//   BlkBackend backend(*device);
//   Connection conn(std::move(accepted));
//   backend.serve(conn);                                // until the front end goes away
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <guestmem/error.hpp>
#include <guestmem/fd.hpp>

#include "vhost_user/blk.hpp"
#include "vhost_user/connection.hpp"
#include "vhost_user/memory.hpp"
#include "vhost_user/protocol.hpp"

namespace guestmem::vhost_user {

/// The protocol features this back end offers.
inline constexpr std::uint64_t kOfferedProtocolFeatures =
    protocol_bit(ProtocolFeature::Mq) | protocol_bit(ProtocolFeature::ReplyAck) |
    protocol_bit(ProtocolFeature::Config) | protocol_bit(ProtocolFeature::ConfigureMemSlots) |
    protocol_bit(ProtocolFeature::ResetDevice);

class BlkBackend {
 public:
  /// A back end for `device`. Validity: `device` must outlive the back end.
  explicit BlkBackend(const BlkDevice& device);
  /// Stops every queue thread.
  ~BlkBackend();
  BlkBackend(const BlkBackend&) = delete;
  BlkBackend& operator=(const BlkBackend&) = delete;

  /// What to do with the connection after a message.
  enum class Next { Continue, Close };

  /// Serves `conn` until the front end disconnects or breaks the protocol, then stops the
  /// queues and forgets the front end's memory and settings, ready for the next one.
  /// Returns normally in both cases (the reason is logged).
  void serve(Connection& conn);

  /// Handles one message, replying on `conn` where the protocol says so.
  /// Returns Close when the connection must be closed (logged).
  Next handle(Connection& conn, Message& msg);

  /// Stops the queues and forgets everything the front end set.
  void reset();

  /// The front end's memory as currently mapped (for tests and diagnostics).
  /// Validity: as long as the back end.
  [[nodiscard]] const MemoryMap& memory() const noexcept { return memory_; }
  /// Whether queue `index`'s thread is running.
  [[nodiscard]] bool queue_running(std::uint32_t index) const noexcept;

 private:
  struct Queue;

  // Handles a message that has no reply of its own: success, or refused (logged).
  enum class Outcome { Done, Refused, Close };
  Outcome dispatch(Connection& conn, Message& msg);
  Outcome set_vring_fd(Message& msg);
  Outcome set_vring_addr(const Message& msg);
  Outcome set_mem_table(Message& msg);
  Outcome get_config(Connection& conn, const Message& msg);
  void start_if_ready(std::uint32_t index);
  void stop_queue(std::uint32_t index);
  void run_queue(Queue& queue, std::uint32_t index, bool event_idx);

  const BlkDevice& device_;
  MemoryMap memory_;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::uint64_t acked_features_ = 0;
  std::uint64_t acked_protocol_features_ = 0;
};

}  // namespace guestmem::vhost_user
