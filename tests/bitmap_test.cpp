#include "guestmem/bitmap.hpp"

#include <cstddef>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/volatile_slice.hpp"

namespace guestmem {
namespace {

// A minimal tracking bitmap: one flag per byte.
class ByteMap {
 public:
  using slice_type = BitmapRefSlice<ByteMap>;
  static ByteMap with_len(std::size_t len) { return ByteMap(len); }
  void mark_dirty(std::size_t offset, std::size_t len) const {
    for (std::size_t i = 0; i < len; ++i) {
      flags_.at(offset + i) = true;
    }
  }
  [[nodiscard]] bool dirty_at(std::size_t offset) const { return flags_.at(offset); }
  [[nodiscard]] slice_type slice_at(std::size_t offset) const { return slice_type(*this, offset); }

 private:
  explicit ByteMap(std::size_t len) : flags_(len) {}
  mutable std::vector<bool> flags_;
};

static_assert(Bitmap<ByteMap> && NewBitmap<ByteMap> && BitmapSlice<BitmapRefSlice<ByteMap>>);

TEST(NoBitmap, CostsNothing) {
  static_assert(std::is_empty_v<NoBitmap>);
  static_assert(sizeof(VolatileSlice<NoBitmap>) == sizeof(void*) + sizeof(std::size_t));
  constexpr NoBitmap b = NoBitmap::with_len(4096);
  b.mark_dirty(0, 4096);
  EXPECT_FALSE(b.dirty_at(0));
  EXPECT_FALSE(b.slice_at(100).dirty_at(0));
}

TEST(BitmapRefSlice, MarksRelativeToItsBase) {
  const ByteMap map = ByteMap::with_len(64);
  const auto slice = map.slice_at(16);
  EXPECT_EQ(slice.base(), 16u);
  slice.mark_dirty(4, 2);
  EXPECT_FALSE(map.dirty_at(19));
  EXPECT_TRUE(map.dirty_at(20));
  EXPECT_TRUE(map.dirty_at(21));
  EXPECT_FALSE(map.dirty_at(22));
  EXPECT_TRUE(slice.dirty_at(4));
  const auto nested = slice.slice_at(8);
  EXPECT_EQ(nested.base(), 24u);
  nested.mark_dirty(0, 1);
  EXPECT_TRUE(map.dirty_at(24));
}

TEST(BitmapRefSlice, ViewsReportTheirWrites) {
  std::vector<std::byte> memory(64);
  const ByteMap map = ByteMap::with_len(64);
  auto slice = VolatileSlice<BitmapRefSlice<ByteMap>>::from_raw_parts(
      reinterpret_cast<std::uint8_t*>(memory.data()), memory.size(), map.slice_at(0));
  auto tail = slice.offset(32);
  ASSERT_TRUE(tail.has_value());
  ASSERT_TRUE(tail->write_obj(std::uint16_t{0xabcd}, 3).has_value());
  for (std::size_t i = 0; i < 64; ++i) {
    EXPECT_EQ(map.dirty_at(i), i == 35 || i == 36) << i;
  }
}

}  // namespace
}  // namespace guestmem
