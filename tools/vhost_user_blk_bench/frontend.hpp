// vhost-user-blk front end: the driver side of one virtio-blk device behind a vhost-user
// socket, for benchmarks and hostile tests.
//
// `Frontend::connect` negotiates features with the back end (our own or qemu-storage-daemon),
// shares a memfd as the whole guest memory (one region at guest address 0) with
// SET_MEM_TABLE, and sets up queue 0 as a split ring with kick and call eventfds. Guest
// memory is laid out as: the descriptor table, the available ring and the used ring in the
// first pages, then one slot per request in flight (a 16-byte request header, a status byte,
// and a data buffer of `slot_data_size` bytes).
//
// The front end drives the ring through guestmem's byte-access interface; a back end that
// scribbles over the rings costs a wrong answer, never a crash of the front end.
//
//   auto fe = Frontend::connect({.socket_path = "/tmp/blk.sock", .queue_depth = 32,
//                                .slot_data_size = 4096});
//   fe->submit_io(0, BlkRequestType::In, /*sector=*/8, 4096);
//   auto done = fe->wait_completions(out, std::chrono::seconds(5));
#pragma once

#include <guestmem/fd.hpp>
#include <guestmem/guest_memory.hpp>
#include <guestmem/shared_memory.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vhost_user/connection.hpp"
#include "vhost_user/protocol.hpp"

namespace guestmem::vhost_user_bench {

/// A failure of the front end, in words for a log line.
template <class T>
using Outcome = std::expected<T, std::string>;

struct FrontendOptions {
  std::string socket_path;
  /// Requests in flight at most; one slot each.
  std::uint32_t queue_depth = 32;
  /// Data bytes per slot: the largest request the caller will submit.
  std::uint32_t slot_data_size = 4096;
  /// Entries of the split ring (a power of two, at least 3 * queue_depth).
  std::uint32_t queue_size = 256;
  /// How long a reply to a vhost-user message may take.
  std::chrono::milliseconds reply_timeout{5000};
};

/// What the back end reported for one finished request.
struct Completion {
  std::uint32_t slot;
  /// The used element's length: bytes the back end says it wrote.
  std::uint32_t used_len;
  /// The status byte of the slot, as the back end left it.
  std::uint8_t status;
};

/// Descriptor flags and fields as they go into the table, for hostile chains.
struct RawDescriptor {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};

/// One connected vhost-user-blk device with queue 0 running.
class Frontend {
 public:
  /// Connects and sets up the device and queue 0 as described at the top of this file.
  /// Errors: a string naming the step that failed (socket, a message the back end refused or
  /// did not answer within reply_timeout, a missing feature: VIRTIO_F_VERSION_1 and the
  /// CONFIG protocol feature, for the capacity, are required).
  static Outcome<Frontend> connect(const FrontendOptions& options);

  Frontend(Frontend&&) noexcept = default;
  Frontend& operator=(Frontend&&) noexcept = default;
  Frontend(const Frontend&) = delete;
  Frontend& operator=(const Frontend&) = delete;
  ~Frontend() = default;

  /// Capacity of the device in bytes (from GET_CONFIG).
  [[nodiscard]] std::uint64_t capacity() const noexcept { return capacity_; }
  /// Features both sides agreed on.
  [[nodiscard]] std::uint64_t features() const noexcept { return features_; }
  [[nodiscard]] const FrontendOptions& options() const noexcept { return options_; }

  /// Guest address of slot `slot`'s request header, status byte and data buffer.
  [[nodiscard]] GuestAddress header_address(std::uint32_t slot) const noexcept;
  [[nodiscard]] GuestAddress status_address(std::uint32_t slot) const noexcept;
  [[nodiscard]] GuestAddress data_address(std::uint32_t slot) const noexcept;
  /// Bytes of guest memory shared with the back end; the region starts at guest address 0.
  [[nodiscard]] std::uint64_t memory_size() const noexcept;

  /// The guest memory, to fill and check data buffers. Validity: while this object lives.
  [[nodiscard]] const GuestMemoryMmap<>& memory() const noexcept { return memory_; }

  /// Submits a read (In) or write (Out) of `len` bytes at `sector` in slot `slot`: header,
  /// data and status descriptors, a kick unless the back end suppressed notifications.
  /// Preconditions: slot < queue_depth, not in flight; len <= slot_data_size.
  /// Errors: a guest-memory access failed, or the kick eventfd write failed.
  Outcome<void> submit_io(std::uint32_t slot, vhost_user::BlkRequestType type,
                          std::uint64_t sector, std::uint32_t len);

  /// Submits `chain` as written (descriptor i at table index `first_index + i`) and makes
  /// `head` available, for chains no well-behaved driver would build. The slot's status byte
  /// is set to 0xff first, so a back end that never writes it can be told apart.
  /// Preconditions: the descriptors fit in the table. Errors: as submit_io.
  Outcome<void> submit_raw(std::uint32_t slot, std::uint16_t first_index,
                           std::span<const RawDescriptor> chain, std::uint16_t head);

  /// Waits until at least one request finished or `timeout` passed, and appends what
  /// finished to `out`. Returns the number appended; 0 means the timeout passed.
  /// Errors: the back end closed the connection ("disconnected"), a used element names a
  /// head that is not in flight, or a system call failed.
  Outcome<std::size_t> wait_completions(std::vector<Completion>& out,
                                        std::chrono::milliseconds timeout);

  /// True while the back end keeps the socket open (checked without blocking).
  [[nodiscard]] bool connected() const;

  /// Shrinks the shared memfd to `size` bytes, so that the back end's next access beyond it
  /// faults. The front end itself no longer touches memory past `size` (no slot whose data
  /// lies there may be used afterwards). Errors: ftruncate failed.
  Outcome<void> truncate_memory(std::uint64_t size);

 private:
  Frontend() = default;

  Outcome<void> setup();
  Outcome<void> send(vhost_user::Request request, std::span<const std::byte> payload,
                     std::span<const int> fds = {}, bool want_ack = true);
  Outcome<std::vector<std::byte>> receive_reply(vhost_user::Request request);
  Outcome<std::uint64_t> get_u64(vhost_user::Request request);
  Outcome<void> publish(std::uint16_t head);

  FrontendOptions options_;
  vhost_user::Connection conn_{UniqueFd{}};
  UniqueFd kick_;
  UniqueFd call_;
  std::optional<SharedMemory> shm_;
  GuestMemoryMmap<> memory_;
  std::uint64_t features_ = 0;
  std::uint64_t protocol_features_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t slots_base_ = 0;
  std::uint64_t slot_stride_ = 0;
  std::uint16_t avail_idx_ = 0;
  std::uint16_t used_seen_ = 0;
  /// For each descriptor head: the slot in flight there, or kNoSlot.
  std::vector<std::uint32_t> head_slot_;
};

}  // namespace guestmem::vhost_user_bench
