#include "guestmem/mapped_region.hpp"

#include <sys/mman.h>

#include <cstdint>

#include <gtest/gtest.h>

#include "guestmem/mapping_arena.hpp"
#include "guestmem/mmap_region.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

static_assert(MappedRegion<MmapRegion<>>);
static_assert(MappedRegion<MmapRegion<testing::RecordingBitmap>>);
static_assert(MappedRegion<MappingArena>);
static_assert(MappedRegion<ExternalMapping>);
static_assert(!MappedRegion<int>);

// The size of anything that is a MappedRegion, as a consumer (a KVM slot) would take it.
template <MappedRegion R>
std::size_t registered_size(const R& region) {
  return region.size();
}

TEST(ExternalMapping, DescribesWithoutOwning) {
  void* raw = ::mmap(nullptr, 0x2000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(raw, MAP_FAILED);
  auto* base = static_cast<std::uint8_t*>(raw);
  {
    const ExternalMapping external = ExternalMapping::unsafe_from_raw_parts(base, 0x2000);
    EXPECT_EQ(external.unsafe_host_ptr(), base);
    EXPECT_EQ(registered_size(external), 0x2000u);
    const ExternalMapping copy = external;
    EXPECT_EQ(copy, external);
    EXPECT_NE(ExternalMapping::unsafe_from_raw_parts(base, 0x1000), external);
  }
  EXPECT_TRUE(testing::is_mapped(base, 0x2000)) << "destroying it unmapped nothing";

  // Its memory, accessed through guestmem's checked interface.
  auto region = MmapRegionBuilder<>(0x2000)
                    .with_mmap_flags(MAP_PRIVATE | MAP_ANONYMOUS)
                    .unsafe_with_raw_mmap_pointer(base)
                    .build();
  ASSERT_TRUE(region.has_value());
  ASSERT_TRUE(region->write_obj_volatile(std::uint32_t{0x5a5a}, 0x1ffc).has_value());
  EXPECT_EQ(registered_size(*region), 0x2000u);
  ASSERT_EQ(::munmap(raw, 0x2000), 0);
}

}  // namespace
}  // namespace guestmem
