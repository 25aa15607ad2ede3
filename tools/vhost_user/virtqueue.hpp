// guestmem vhost-user: a split virtqueue, read and written through guest memory.
//
// A split virtqueue (virtio specification, "Split Virtqueues") is three areas in guest
// memory: the descriptor table, the available ring the driver fills with chain heads, and
// the used ring the device returns them on. `SplitQueue` keeps the device's side of it (the
// next available entry to take, the next used entry to fill) and walks descriptor chains,
// including indirect tables, with every check the guest can make necessary: a head or next
// index past the table, a chain longer than the table (which is how a loop shows), an indirect
// table inside an indirect table or with a bad size, a buffer whose end overflows, a
// device-readable buffer after a device-writable one, and a ring index that runs more than a
// queue's worth ahead. Every access goes through guestmem's fault-tolerant calls, so memory
// that vanishes under the queue is an error, never a crash.
//
//   SplitQueue queue(layout, /*event_idx=*/true, 0, 0);
//   while (auto head = queue.pop_head(mem); head && *head) {
//     if (queue.read_chain(mem, **head, chain)) { ...serve...; }
//     queue.add_used(mem, **head, written);
//   }
//   queue.publish_used(mem);
#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include <guestmem/address.hpp>
#include <guestmem/error.hpp>
#include <guestmem/guest_memory.hpp>

namespace guestmem::vhost_user {

/// One buffer of a chain, with the direction the driver allows the device.
struct Descriptor {
  GuestAddress addr;
  std::uint32_t len;
  bool writable;  ///< device-writable (VIRTQ_DESC_F_WRITE)
};

/// What is wrong with a ring or a chain.
enum class QueueErrorKind : std::uint8_t {
  /// Guest memory of the rings could not be read or written (value: guest address).
  RingAccess,
  /// The available index ran ahead of the device by more than the queue size (value: index).
  AvailIndexJump,
  /// A chain head from the available ring is not a descriptor index (value: the head).
  HeadOutOfRange,
  /// A `next` field is past the end of its table (value: the index).
  NextOutOfRange,
  /// A chain has more descriptors than its table holds: a loop (value: table size).
  ChainTooLong,
  /// An indirect descriptor inside an indirect table (value: its index).
  NestedIndirect,
  /// An indirect descriptor that also has VIRTQ_DESC_F_NEXT (value: its index).
  IndirectWithNext,
  /// An indirect table whose length is 0, not a multiple of 16 or more than 32768 entries
  /// (value: the length).
  IndirectSize,
  /// A buffer or table whose address plus length overflows (value: the address).
  LengthOverflow,
  /// A device-readable buffer after a device-writable one (value: its index).
  ReadableAfterWritable,
  /// A descriptor could not be read from guest memory (value: its guest address).
  DescriptorAccess,
};

/// A ring or chain error: its kind and the value that shows it (see QueueErrorKind).
struct QueueError {
  QueueErrorKind kind;
  std::uint64_t value;

  /// One line for the log, "descriptor chain loops or is too long (table of 256)".
  [[nodiscard]] std::string describe() const;
};

template <class T>
using QueueResult = std::expected<T, QueueError>;

/// Where a queue's areas are, in guest addresses, and its size (a power of two, at most
/// kMaxQueueSize).
struct QueueLayout {
  std::uint16_t size_minus_one;  ///< queue size - 1 (a size of 32768 does not fit 16 bits)
  GuestAddress desc;
  GuestAddress avail;
  GuestAddress used;

  [[nodiscard]] std::uint32_t size() const noexcept { return std::uint32_t{size_minus_one} + 1; }
};

/// The device side of one split virtqueue.
/// Concurrency: one thread uses a queue at a time; the driver changes the rings at any time,
/// and every value read from them is read once and checked.
class SplitQueue {
 public:
  /// A queue at `layout`, continuing from available index `next_avail` and used index
  /// `next_used` (SET_VRING_BASE gives both).
  /// Preconditions: no area ends past the top of the address space (the back end checks
  /// that each lies inside one region); an area outside guest memory is a RingAccess error.
  SplitQueue(QueueLayout layout, bool event_idx, std::uint16_t next_avail,
             std::uint16_t next_used) noexcept;

  /// Takes the next chain head from the available ring; std::nullopt when the driver has made
  /// nothing more available.
  /// Errors: RingAccess (the ring is not readable memory, or not aligned); AvailIndexJump;
  /// HeadOutOfRange (the entry is consumed, so the caller may skip it). A queue that returns
  /// RingAccess or AvailIndexJump is broken: the caller stops serving it.
  QueueResult<std::optional<std::uint16_t>> pop_head(const GuestMemoryMmap<>& mem);

  /// Walks the chain that starts at `head` into `chain` (cleared first).
  /// Errors: NextOutOfRange, ChainTooLong, NestedIndirect, IndirectWithNext, IndirectSize,
  /// LengthOverflow, ReadableAfterWritable, DescriptorAccess. On an error `chain` holds the
  /// descriptors read before it; the caller returns the head with add_used and length 0.
  /// Preconditions: head < layout size (pop_head checks it).
  QueueResult<void> read_chain(const GuestMemoryMmap<>& mem, std::uint16_t head,
                               std::vector<Descriptor>& chain) const;

  /// Writes the used element (head, len) at the next used entry; the driver sees it after
  /// publish_used.
  /// Errors: RingAccess.
  QueueResult<void> add_used(const GuestMemoryMmap<>& mem, std::uint16_t head, std::uint32_t len);

  /// Stores the used index, with a full barrier so that the notification check that follows
  /// reads the driver's flags or event index after it.
  /// Returns whether the driver asked to be notified of the entries added since the last
  /// notification (VIRTQ_AVAIL_F_NO_INTERRUPT, or the used_event index with EVENT_IDX); the
  /// caller then signals the call eventfd.
  /// Errors: RingAccess.
  QueueResult<bool> publish_used(const GuestMemoryMmap<>& mem);

  /// Asks the driver for a kick at its next addition (with EVENT_IDX: avail_event = the next
  /// entry to take, with a full barrier) and returns whether entries arrived meanwhile, in
  /// which case the caller serves them before waiting for the kick.
  /// Errors: RingAccess, AvailIndexJump.
  QueueResult<bool> enable_notification(const GuestMemoryMmap<>& mem);

  /// The next available entry the device will take (GET_VRING_BASE returns it).
  [[nodiscard]] std::uint16_t next_avail() const noexcept { return next_avail_; }
  /// The next used entry the device will fill.
  [[nodiscard]] std::uint16_t next_used() const noexcept { return next_used_; }

 private:
  QueueResult<std::uint16_t> load_avail_idx(const GuestMemoryMmap<>& mem);

  QueueLayout layout_;
  bool event_idx_;
  std::uint16_t next_avail_;
  std::uint16_t next_used_;
  std::uint16_t avail_idx_;       // the driver's index at the last read
  std::uint16_t signalled_used_;  // the used index at the last notification
};

}  // namespace guestmem::vhost_user
