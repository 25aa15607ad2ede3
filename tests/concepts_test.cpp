#include "guestmem/concepts.hpp"

#include <cstdint>

#include <gtest/gtest.h>

#include "guestmem/guestmem.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

static_assert(Bytes<VolatileSlice<>, std::size_t>);
static_assert(Bytes<GuestRegionMmap<>, MemoryRegionAddress>);
static_assert(Bytes<GuestMemoryMmap<>, GuestAddress>);
static_assert(!Bytes<GuestMemoryMmap<>, MemoryRegionAddress>);
static_assert(GuestMemoryRegion<GuestRegionMmap<>>);
static_assert(GuestMemoryRegion<GuestRegionMmap<testing::RecordingBitmap>>);
static_assert(GuestMemoryBackend<GuestMemoryMmap<>>);
static_assert(GuestMemoryBackend<GuestMemoryMmap<testing::RecordingBitmap>>);
static_assert(GuestMemory<GuestMemoryMmap<>>);
static_assert(GuestMemory<GuestMemoryMmap<testing::RecordingBitmap>>);
static_assert(!GuestMemory<GuestRegionMmap<>>, "a region is not addressed by guest address");
static_assert(!GuestMemoryBackend<VolatileSlice<>>);

// Device code written once against the concept: a split virtqueue's "used" ring update.
struct UsedElem {
  Le32 id;
  Le32 len;
};

template <GuestMemory M>
Result<void> push_used(const M& mem, GuestAddress used_ring, std::uint16_t queue_size,
                       std::uint32_t id, std::uint32_t len) {
  auto idx = mem.template load<std::uint16_t>(used_ring.unchecked_add(2), std::memory_order_acquire);
  if (!idx) {
    return std::unexpected(idx.error());
  }
  const std::uint64_t slot = 4 + std::uint64_t{*idx} % queue_size * sizeof(UsedElem);
  auto elem_addr = used_ring.checked_add(slot);
  if (!elem_addr) {
    return std::unexpected(Error::invalid_guest_address(used_ring));
  }
  if (auto w = mem.write_obj(UsedElem{Le32{id}, Le32{len}}, *elem_addr); !w) {
    return w;
  }
  return mem.store(static_cast<std::uint16_t>(*idx + 1), used_ring.unchecked_add(2),
                   std::memory_order_release);
}

template <class M>
void exercise_device(const M& mem) {
  const GuestAddress ring{0x1ff8};  // straddles two regions
  ASSERT_TRUE(push_used(mem, ring, 4, 7, 512).has_value());
  ASSERT_TRUE(push_used(mem, ring, 4, 8, 64).has_value());
  EXPECT_EQ(mem.template load<std::uint16_t>(GuestAddress{0x1ffa}, std::memory_order_relaxed), 2u);
  auto second = mem.template read_obj<UsedElem>(GuestAddress{0x1ff8 + 4 + 8});
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id.to_native(), 8u);
  EXPECT_EQ(second->len.to_native(), 64u);
  EXPECT_EQ(push_used(mem, GuestAddress{0x5000}, 4, 1, 1).error(),
            Error::invalid_guest_address(GuestAddress{0x5002}));
}

TEST(Concepts, DeviceCodeRunsOnAnyMemory) {
  auto plain = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x2000}, {GuestAddress{0x2000}, 0x1000}});
  ASSERT_TRUE(plain.has_value());
  exercise_device(*plain);
  auto tracked = GuestMemoryMmap<testing::RecordingBitmap>::from_ranges(
      {{GuestAddress{0}, 0x2000}, {GuestAddress{0x2000}, 0x1000}});
  ASSERT_TRUE(tracked.has_value());
  exercise_device(*tracked);
  // The first element straddles the regions (0x1ffc + 8), the second is in the next one
  // (0x2004); each push also stores the index at 0x1ffa. The refused push marks nothing.
  using testing::Marks;
  EXPECT_EQ(tracked->region_ptrs()[0]->bitmap().take(),
            (Marks{{0x1ffc, 4}, {0x1ffa, 2}, {0x1ffa, 2}}));
  EXPECT_EQ(tracked->region_ptrs()[1]->bitmap().take(), (Marks{{0, 4}, {4, 8}}));
}

}  // namespace
}  // namespace guestmem
