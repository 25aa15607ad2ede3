#include "vhost_user/virtqueue.hpp"

#include <atomic>
#include <bit>
#include <limits>

#include <guestmem/endian.hpp>

#include "vhost_user/log.hpp"
#include "vhost_user/protocol.hpp"

namespace guestmem::vhost_user {
namespace {

// Ring fields are little-endian; a 16-bit load or store moves their raw bits.
std::uint16_t from_le(std::uint16_t raw) noexcept { return std::bit_cast<Le16>(raw).to_native(); }
std::uint16_t to_le(std::uint16_t value) noexcept { return std::bit_cast<std::uint16_t>(Le16(value)); }

GuestAddress offset(GuestAddress base, std::uint64_t by) noexcept {
  // The layout's areas were checked to lie inside one region, so the sum cannot wrap.
  return GuestAddress{base.raw_value() + by};
}

QueueError ring_error(GuestAddress addr) noexcept {
  return QueueError{QueueErrorKind::RingAccess, addr.raw_value()};
}

// virtio's vring_need_event: whether the used index moving from `old_idx` to `new_idx`
// passed the driver's `event` index.
bool need_event(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old_idx) noexcept {
  return static_cast<std::uint16_t>(new_idx - event - 1) <
         static_cast<std::uint16_t>(new_idx - old_idx);
}

}  // namespace

std::string QueueError::describe() const {
  switch (kind) {
    case QueueErrorKind::RingAccess:
      return format_text("ring memory at guest address {:#x} is not accessible", value);
    case QueueErrorKind::AvailIndexJump:
      return format_text("available index {} runs more than a queue ahead", value);
    case QueueErrorKind::HeadOutOfRange:
      return format_text("chain head {} is past the descriptor table", value);
    case QueueErrorKind::NextOutOfRange:
      return format_text("descriptor next index {} is past its table", value);
    case QueueErrorKind::ChainTooLong:
      return format_text("descriptor chain loops or is longer than its table of {}", value);
    case QueueErrorKind::NestedIndirect:
      return format_text("indirect descriptor {} inside an indirect table", value);
    case QueueErrorKind::IndirectWithNext:
      return format_text("indirect descriptor {} also has the next flag", value);
    case QueueErrorKind::IndirectSize:
      return format_text("indirect table length {} is not a valid table size", value);
    case QueueErrorKind::LengthOverflow:
      return format_text("buffer at guest address {:#x} ends past the address space", value);
    case QueueErrorKind::ReadableAfterWritable:
      return format_text("device-readable descriptor {} follows a device-writable one", value);
    case QueueErrorKind::DescriptorAccess:
      return format_text("descriptor at guest address {:#x} is not in guest memory", value);
  }
  return "unknown queue error";
}

SplitQueue::SplitQueue(QueueLayout layout, bool event_idx, std::uint16_t next_avail,
                       std::uint16_t next_used) noexcept
    : layout_(layout),
      event_idx_(event_idx),
      next_avail_(next_avail),
      next_used_(next_used),
      avail_idx_(next_avail),
      signalled_used_(next_used) {}

QueueResult<std::uint16_t> SplitQueue::load_avail_idx(const GuestMemoryMmap<>& mem) {
  const GuestAddress at = offset(layout_.avail, 2);
  // Acquire: the ring entries the index covers are read after it.
  auto raw = mem.try_load<std::uint16_t>(at, std::memory_order_acquire);
  if (!raw) {
    return std::unexpected(ring_error(at));
  }
  const std::uint16_t idx = from_le(*raw);
  if (static_cast<std::uint16_t>(idx - next_avail_) > layout_.size()) {
    return std::unexpected(QueueError{QueueErrorKind::AvailIndexJump, idx});
  }
  avail_idx_ = idx;
  return idx;
}

QueueResult<std::optional<std::uint16_t>> SplitQueue::pop_head(const GuestMemoryMmap<>& mem) {
  if (avail_idx_ == next_avail_) {
    auto idx = load_avail_idx(mem);
    if (!idx) {
      return std::unexpected(idx.error());
    }
    if (*idx == next_avail_) {
      return std::nullopt;
    }
  }
  const std::uint32_t slot = next_avail_ & layout_.size_minus_one;
  const GuestAddress at = offset(layout_.avail, 4 + std::uint64_t{2} * slot);
  auto raw = mem.try_load<std::uint16_t>(at, std::memory_order_relaxed);
  if (!raw) {
    return std::unexpected(ring_error(at));
  }
  ++next_avail_;
  const std::uint16_t head = from_le(*raw);
  if (head >= layout_.size()) {
    return std::unexpected(QueueError{QueueErrorKind::HeadOutOfRange, head});
  }
  return head;
}

QueueResult<void> SplitQueue::read_chain(const GuestMemoryMmap<>& mem, std::uint16_t head,
                                         std::vector<Descriptor>& chain) const {
  chain.clear();
  GuestAddress table = layout_.desc;
  std::uint32_t table_size = layout_.size();
  bool indirect = false;
  bool seen_writable = false;
  std::uint32_t index = head;
  std::uint32_t walked = 0;
  for (;;) {
    if (index >= table_size) {
      return std::unexpected(QueueError{QueueErrorKind::NextOutOfRange, index});
    }
    // A chain visits each entry of its table at most once; more means a loop.
    if (++walked > table_size) {
      return std::unexpected(QueueError{QueueErrorKind::ChainTooLong, table_size});
    }
    const GuestAddress at = offset(table, std::uint64_t{16} * index);
    auto desc = mem.try_read_obj<VirtqDesc>(at);
    if (!desc) {
      return std::unexpected(QueueError{QueueErrorKind::DescriptorAccess, at.raw_value()});
    }
    const std::uint16_t flags = desc->flags.to_native();
    const std::uint64_t addr = desc->addr.to_native();
    const std::uint32_t len = desc->len.to_native();
    if (addr > std::numeric_limits<std::uint64_t>::max() - len) {
      return std::unexpected(QueueError{QueueErrorKind::LengthOverflow, addr});
    }
    if ((flags & kDescFIndirect) != 0) {
      if (indirect) {
        return std::unexpected(QueueError{QueueErrorKind::NestedIndirect, index});
      }
      if ((flags & kDescFNext) != 0) {
        return std::unexpected(QueueError{QueueErrorKind::IndirectWithNext, index});
      }
      if (len == 0 || len % sizeof(VirtqDesc) != 0 || len / sizeof(VirtqDesc) > kMaxQueueSize) {
        return std::unexpected(QueueError{QueueErrorKind::IndirectSize, len});
      }
      indirect = true;
      table = GuestAddress{addr};
      table_size = len / static_cast<std::uint32_t>(sizeof(VirtqDesc));
      index = 0;
      walked = 0;
      continue;
    }
    const bool writable = (flags & kDescFWrite) != 0;
    if (!writable && seen_writable) {
      return std::unexpected(QueueError{QueueErrorKind::ReadableAfterWritable, index});
    }
    seen_writable = seen_writable || writable;
    chain.push_back(Descriptor{GuestAddress{addr}, len, writable});
    if ((flags & kDescFNext) == 0) {
      return {};
    }
    index = desc->next.to_native();
  }
}

QueueResult<void> SplitQueue::add_used(const GuestMemoryMmap<>& mem, std::uint16_t head,
                                       std::uint32_t len) {
  const std::uint32_t slot = next_used_ & layout_.size_minus_one;
  const GuestAddress at = offset(layout_.used, 4 + std::uint64_t{8} * slot);
  if (!mem.try_write_obj(VirtqUsedElem{Le32(head), Le32(len)}, at)) {
    return std::unexpected(ring_error(at));
  }
  ++next_used_;
  return {};
}

QueueResult<bool> SplitQueue::publish_used(const GuestMemoryMmap<>& mem) {
  const GuestAddress idx_at = offset(layout_.used, 2);
  // Sequentially consistent (a locked instruction): the used elements are visible before the
  // index, and the driver's notification fields below are read after it.
  if (!mem.try_store(to_le(next_used_), idx_at, std::memory_order_seq_cst)) {
    return std::unexpected(ring_error(idx_at));
  }
  const std::uint16_t old_used = signalled_used_;
  signalled_used_ = next_used_;
  if (event_idx_) {
    const GuestAddress event_at = offset(layout_.avail, 4 + std::uint64_t{2} * layout_.size());
    auto event = mem.try_load<std::uint16_t>(event_at, std::memory_order_relaxed);
    if (!event) {
      return std::unexpected(ring_error(event_at));
    }
    return need_event(from_le(*event), next_used_, old_used);
  }
  auto flags = mem.try_load<std::uint16_t>(layout_.avail, std::memory_order_relaxed);
  if (!flags) {
    return std::unexpected(ring_error(layout_.avail));
  }
  return old_used != next_used_ && (from_le(*flags) & kAvailFNoInterrupt) == 0;
}

QueueResult<bool> SplitQueue::enable_notification(const GuestMemoryMmap<>& mem) {
  if (event_idx_) {
    const GuestAddress event_at = offset(layout_.used, 4 + std::uint64_t{8} * layout_.size());
    // Sequentially consistent: the driver's index is read again only after the event index
    // is visible, so an entry added in between is seen here or kicked.
    if (!mem.try_store(to_le(next_avail_), event_at, std::memory_order_seq_cst)) {
      return std::unexpected(ring_error(event_at));
    }
  }
  auto idx = load_avail_idx(mem);
  if (!idx) {
    return std::unexpected(idx.error());
  }
  return *idx != next_avail_;
}

}  // namespace guestmem::vhost_user
