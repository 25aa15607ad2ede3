// Fuzzes the vhost-user-blk back end's split virtqueue and virtio-blk device with a guest
// that controls everything in its memory: the ring addresses and size, the available ring,
// direct and indirect descriptor tables, and the request headers and DISCARD segments.
//
// Guest memory is two regions with a hole between them, [0, 64 KiB) and [128, 192 KiB); the
// image is a 64 KiB memfd. The target serves every chain the guest made available, as the
// back end's queue thread does, and checks what the back end promises a hostile guest:
//  - nothing crashes or hangs (ASan, UBSan, libFuzzer's timeout);
//  - every byte of guest memory that changed lies in a device-writable buffer of a chain the
//    device served, or in the used ring (its index, elements and avail_event);
//  - the used length of a served chain is at most the chain's device-writable bytes;
//  - a chain the queue refused is returned with used length 0, and none of its buffers
//    changed (nothing is served from a half-walked chain).
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "fuzz_common.hpp"
#include "guestmem/endian.hpp"
#include "guestmem/fault.hpp"
#include "guestmem/guest_memory.hpp"
#include "vhost_user/blk.hpp"
#include "vhost_user/protocol.hpp"
#include "vhost_user/virtqueue.hpp"

namespace {

using guestmem::GuestAddress;
using guestmem::GuestMemoryMmap;
using guestmem::Le16;
using guestmem::Le32;
using guestmem::Le64;
using guestmem::fuzz::Input;
namespace vu = guestmem::vhost_user;

constexpr std::uint64_t kRegion = 0x10000;
constexpr std::uint64_t kBaseB = 0x20000;
constexpr std::uint64_t kSpan = kBaseB + kRegion;  // guest addresses the target compares
constexpr std::uint64_t kImageSize = 0x10000;

// Where the input writes request headers and segments, and a few addresses a descriptor is
// drawn from: inside each region, straddling the end of region A into the hole, in the hole,
// at the end of region B, and the top of the address space.
// Guest layout of region A: descriptor table, data, status bytes, available ring, used ring,
// request headers, DISCARD segments, indirect tables; region B holds more data.
constexpr std::uint64_t kDesc = 0x1000;
constexpr std::uint64_t kData = 0x2000;
constexpr std::uint64_t kStatus = 0x5f00;
constexpr std::uint64_t kAvail = 0x6000;
constexpr std::uint64_t kUsed = 0x7000;
constexpr std::uint64_t kHeaders = 0x8000;
constexpr std::uint64_t kSegments = 0x9000;
constexpr std::uint64_t kIndirect = 0xa000;
constexpr std::uint64_t kInteresting[] = {kHeaders, kSegments, 0xfff0, kRegion, 0x18000, kBaseB,
                                          kBaseB + 0xfffc, ~std::uint64_t{0} - 7};

struct Harness {
  GuestMemoryMmap<> mem = *GuestMemoryMmap<>::from_ranges(
      {{GuestAddress{0}, kRegion}, {GuestAddress{kBaseB}, kRegion}});
  vu::BlkDevice device = [] {
    guestmem::UniqueFd image{::memfd_create("fuzz-image", MFD_CLOEXEC)};
    GUESTMEM_FUZZ_CHECK(image.valid() && ::ftruncate(image.get(), kImageSize) == 0, "memfd");
    return *vu::BlkDevice::from_fd(std::move(image), vu::BlkOptions{});
  }();
  std::vector<iovec> scratch;
};

Harness& harness() {
  static Harness h;
  return h;
}

void put(const GuestMemoryMmap<>& mem, std::uint64_t addr, const auto& value) {
  (void)mem.write_obj(value, GuestAddress{addr});
}

std::uint64_t draw_addr(Input& in) {
  switch (in.below(4)) {
    case 0:
      return in.below(kSpan);
    case 1:
      return in.u64();
    default:
      return kInteresting[in.below(std::size(kInteresting))] + in.below(0x200);
  }
}

std::uint32_t draw_len(Input& in) {
  switch (in.below(4)) {
    case 0:
      return in.u32();
    case 1:
      return static_cast<std::uint32_t>(in.below(0x3000));
    default:
      return static_cast<std::uint32_t>(in.below(0x400));
  }
}

// Writes a descriptor table of `count` entries at `table`. Most entries are parts of a
// well-formed request (a header, data, a status byte, each chained to the next entry), so
// that chains reach the device; the rest are drawn freely.
void put_table(const GuestMemoryMmap<>& mem, Input& in, std::uint64_t table, std::uint32_t count,
               std::uint32_t queue_size) {
  for (std::uint32_t i = 0; i < count; ++i) {
    const auto following = static_cast<std::uint16_t>((i + 1) % count);
    std::uint16_t flags = vu::kDescFNext;
    std::uint16_t next = following;
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    switch (in.below(5)) {
      case 0:  // a request header
        addr = kHeaders + 16 * in.below(16);
        len = 16;
        break;
      case 1:  // data, in either region, in either direction
        addr = (in.flag() ? 0 : kBaseB) + kData + 0x200 * in.below(24);
        len = static_cast<std::uint32_t>(0x200 * in.below(9));
        flags = static_cast<std::uint16_t>(flags | (in.flag() ? vu::kDescFWrite : 0));
        break;
      case 2:  // the status byte, at the end of a chain
        addr = kStatus + in.below(0x100);
        len = 1;
        flags = vu::kDescFWrite;
        break;
      default:  // anything
        flags = static_cast<std::uint16_t>(in.u8() & 7);
        next = in.below(8) == 0 ? in.u16() : static_cast<std::uint16_t>(in.below(queue_size));
        addr = draw_addr(in);
        len = draw_len(in);
        if ((flags & vu::kDescFIndirect) != 0 && in.below(4) != 0) {
          // Usually a well-formed indirect table (which the input may fill).
          addr = kIndirect + 0x400 * in.below(8);
          len = static_cast<std::uint32_t>(16 * (1 + in.below(16)));
        }
        break;
    }
    put(mem, table + 16ULL * i, vu::VirtqDesc{Le64(addr), Le32(len), Le16(flags), Le16(next)});
  }
}

// Both regions' bytes at their guest addresses; the hole reads as zeros.
std::vector<std::byte> snapshot(const GuestMemoryMmap<>& mem) {
  std::vector<std::byte> out(kSpan);
  (void)mem.read_slice(std::span(out).first(kRegion), GuestAddress{0});
  (void)mem.read_slice(std::span(out).subspan(kBaseB), GuestAddress{kBaseB});
  return out;
}

struct Range {
  std::uint64_t first;
  std::uint64_t end;
};

}  // namespace

// The queue and the device read and write guest memory through the fault-tolerant calls,
// which need guestmem's handler (installed after libFuzzer's and the sanitizers').
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  GUESTMEM_FUZZ_CHECK(guestmem::install_fault_handler().has_value(), "fault handler");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Harness& h = harness();
  Input in(data, size);
  const GuestMemoryMmap<>& mem = h.mem;

  // Guest memory starts as a pattern (one of 256), so that almost any write shows.
  static const std::vector<std::byte> kFill = guestmem::fuzz::pattern(1, kRegion + 0x100);
  const std::uint64_t shift = in.u8();
  (void)mem.write_slice(std::span(kFill).subspan(shift, kRegion), GuestAddress{0});
  (void)mem.write_slice(std::span(kFill).subspan(shift, kRegion), GuestAddress{kBaseB});

  const std::uint32_t queue_size = 1U << in.below(9);  // 1 to 256
  const bool event_idx = in.flag();
  const bool odd_rings = in.below(8) == 0;
  // Rings anywhere in the span, possibly misaligned, in the hole or across a region's end;
  // never ending past the top of the address space, which the back end refuses before it
  // makes a queue.
  const std::uint64_t desc = odd_rings ? in.below(kSpan) : kDesc;
  const std::uint64_t avail = odd_rings ? in.below(kSpan) : kAvail;
  const std::uint64_t used = odd_rings ? in.below(kSpan) : kUsed;

  put_table(mem, in, kDesc, queue_size, queue_size);
  for (std::uint64_t t = 0; t < 8; ++t) {
    if (in.flag()) {
      put_table(mem, in, kIndirect + 0x400 * t, 1 + static_cast<std::uint32_t>(in.below(64)),
                queue_size);
    }
  }
  // Request headers and DISCARD / WRITE_ZEROES segments where descriptors often point.
  const std::uint32_t types[] = {0, 1, 4, 8, 11, 13, in.u32()};
  for (std::uint64_t i = 0; i < 16; ++i) {
    const std::uint32_t type = types[in.below(std::size(types))];
    const std::uint64_t sector = in.below(4) == 0 ? in.u64() : in.below(kImageSize / 512 + 4);
    put(mem, kHeaders + 16 * i, vu::BlkRequestHeader{Le32(type), Le32(0), Le64(sector)});
  }
  for (std::uint64_t i = 0; i < 8; ++i) {
    put(mem, kSegments + 16 * i,
        vu::BlkDiscardWriteZeroes{Le64(in.below(kImageSize / 512 + 4)),
                                  Le32(static_cast<std::uint32_t>(in.below(0x90))),
                                  Le32(in.u8() & 3U)});
  }
  // The available ring: the driver's index, then its heads (a few out of range).
  const std::uint16_t avail_idx =
      in.below(8) == 0 ? in.u16() : static_cast<std::uint16_t>(in.below(queue_size + 1));
  for (std::uint32_t i = 0; i < queue_size; ++i) {
    const std::uint16_t head =
        in.below(16) == 0 ? in.u16() : static_cast<std::uint16_t>(in.below(queue_size));
    put(mem, avail + 4 + 2ULL * i, Le16(head));
  }
  put(mem, avail, vu::VirtqAvailHeader{Le16(static_cast<std::uint16_t>(in.u8() & 1)),
                                       Le16(avail_idx)});
  put(mem, avail + 4 + 2ULL * queue_size, Le16(in.u16()));  // used_event

  const std::vector<std::byte> before = snapshot(mem);

  GUESTMEM_FUZZ_TRACE("queue of %u at desc 0x%llx avail 0x%llx used 0x%llx, event_idx %d",
                      queue_size, static_cast<unsigned long long>(desc),
                      static_cast<unsigned long long>(avail), static_cast<unsigned long long>(used),
                      event_idx);
  vu::SplitQueue queue(vu::QueueLayout{static_cast<std::uint16_t>(queue_size - 1),
                                       GuestAddress{desc}, GuestAddress{avail}, GuestAddress{used}},
                       event_idx, 0, 0);
  std::vector<Range> allowed;
  std::vector<vu::Descriptor> chain;
  for (std::uint32_t served = 0; served <= queue_size; ++served) {
    auto head = queue.pop_head(mem);
    if (!head && head.error().kind == vu::QueueErrorKind::HeadOutOfRange) {
      continue;  // consumed: the back end logs it and goes on
    }
    if (!head || !*head) {
      break;
    }
    std::uint32_t len = 0;
    if (queue.read_chain(mem, **head, chain)) {
      std::uint64_t writable = 0;
      for (const vu::Descriptor& d : chain) {
        if (d.writable) {
          writable += d.len;
          allowed.push_back({d.addr.raw_value(), d.addr.raw_value() + d.len});
        }
      }
      len = h.device.handle(mem, chain, h.scratch);
      GUESTMEM_FUZZ_TRACE("head %u: %zu descriptors, %llu writable bytes, used length %u", **head,
                          chain.size(), static_cast<unsigned long long>(writable), len);
      GUESTMEM_FUZZ_CHECK(len <= writable, "used length %u beyond %llu writable bytes", len,
                          static_cast<unsigned long long>(writable));
    }
    if (!queue.add_used(mem, **head, len)) {
      break;
    }
  }
  (void)queue.publish_used(mem);
  (void)queue.enable_notification(mem);
  allowed.push_back({used, used + vu::used_ring_size(queue_size)});

  const std::vector<std::byte> after = snapshot(mem);
  for (std::uint64_t a = 0; a < kSpan; ++a) {
    if (a % 256 == 0 && std::memcmp(&before[a], &after[a], 256) == 0) {
      a += 255;
      continue;
    }
    if (before[a] == after[a]) {
      continue;
    }
    const bool inside = std::any_of(allowed.begin(), allowed.end(), [a](const Range& r) {
      return r.first <= a && a < r.end;  // an overflowing end allows nothing past the top
    });
    GUESTMEM_FUZZ_CHECK(inside, "guest byte 0x%llx changed outside every writable buffer",
                        static_cast<unsigned long long>(a));
  }
  return 0;
}
