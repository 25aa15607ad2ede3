// Shared helpers of the vhost-user tests: memfd-backed guest memory with a hole, and a
// driver's view of a split ring written through that memory.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include <guestmem/endian.hpp>
#include <guestmem/fd.hpp>
#include <guestmem/guest_memory.hpp>

#include "vhost_user/protocol.hpp"
#include "vhost_user/virtqueue.hpp"

namespace guestmem::vhost_user::testing {

inline constexpr std::uint64_t kRegionSize = 0x10000;
// Region A holds guest [0, 0x10000), region B [0x20000, 0x30000); between them is a hole.
inline constexpr std::uint64_t kBaseA = 0;
inline constexpr std::uint64_t kBaseB = 0x20000;
inline constexpr std::uint64_t kHole = 0x10000;

// Queue areas inside region A.
inline constexpr std::uint16_t kQueueSize = 16;
inline constexpr std::uint64_t kDescAddr = 0x1000;
inline constexpr std::uint64_t kAvailAddr = 0x2000;
inline constexpr std::uint64_t kUsedAddr = 0x3000;

inline UniqueFd make_memfd(std::uint64_t size) {
  UniqueFd fd{::memfd_create("vhost-user-test", MFD_CLOEXEC)};
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

// Two memfd regions with a hole between them. The descriptors stay open so a test can
// truncate them under the memory.
struct TestMemory {
  std::shared_ptr<const UniqueFd> fd_a = std::make_shared<const UniqueFd>(make_memfd(kRegionSize));
  std::shared_ptr<const UniqueFd> fd_b = std::make_shared<const UniqueFd>(make_memfd(kRegionSize));
  GuestMemoryMmap<> mem = [this] {
    std::vector<RegionSpec> specs{
        RegionSpec{GuestAddress{kBaseA}, kRegionSize, FileOffset(fd_a, 0)},
        RegionSpec{GuestAddress{kBaseB}, kRegionSize, FileOffset(fd_b, 0)}};
    auto built = GuestMemoryMmap<>::from_ranges_with_files(specs);
    EXPECT_TRUE(built.has_value());
    return std::move(*built);
  }();

  void truncate_b() const { ASSERT_EQ(::ftruncate(fd_b->get(), 0), 0); }
};

// Where one queue's rings are, in guest addresses.
struct RingAddrs {
  std::uint64_t desc;
  std::uint64_t avail;
  std::uint64_t used;
};
inline constexpr RingAddrs kRing0{kDescAddr, kAvailAddr, kUsedAddr};

inline QueueLayout test_layout() {
  return QueueLayout{kQueueSize - 1, GuestAddress{kDescAddr}, GuestAddress{kAvailAddr},
                     GuestAddress{kUsedAddr}};
}

// Writes descriptor `index` of the table at `table`.
inline void put_desc(const GuestMemoryMmap<>& mem, std::uint64_t table, std::uint32_t index,
                     std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                     std::uint16_t next = 0) {
  const VirtqDesc desc{Le64(addr), Le32(len), Le16(flags), Le16(next)};
  ASSERT_TRUE(mem.write_obj(desc, GuestAddress{table + 16ULL * index}).has_value());
}

// Makes `head` available as the driver's entry number `slot` and publishes `slot + 1`.
inline void make_available(const GuestMemoryMmap<>& mem, std::uint16_t slot, std::uint16_t head,
                           RingAddrs rings = kRing0) {
  ASSERT_TRUE(mem.write_obj(Le16(head), GuestAddress{rings.avail + 4 + 2ULL * (slot % kQueueSize)})
                  .has_value());
  ASSERT_TRUE(mem.write_obj(Le16(static_cast<std::uint16_t>(slot + 1)), GuestAddress{rings.avail + 2})
                  .has_value());
}

inline VirtqUsedElem used_elem(const GuestMemoryMmap<>& mem, std::uint16_t slot,
                               RingAddrs rings = kRing0) {
  return *mem.read_obj<VirtqUsedElem>(GuestAddress{rings.used + 4 + 8ULL * (slot % kQueueSize)});
}

inline std::uint16_t used_idx(const GuestMemoryMmap<>& mem, RingAddrs rings = kRing0) {
  return mem.read_obj<Le16>(GuestAddress{rings.used + 2})->to_native();
}

}  // namespace guestmem::vhost_user::testing
