#include "guestmem/address.hpp"

#include <cstdint>
#include <limits>
#include <sstream>

#include <gtest/gtest.h>

namespace guestmem {
namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

TEST(GuestAddress, RawValueAndComparisons) {
  constexpr GuestAddress a{0x1000};
  constexpr GuestAddress b{0x2000};
  static_assert(a.raw_value() == 0x1000);
  static_assert(a < b && b > a && a != b && a == GuestAddress{0x1000});
  static_assert(a <= a && a >= a);
  EXPECT_EQ(GuestAddress{}.raw_value(), 0u);
}

TEST(GuestAddress, CheckedAdd) {
  EXPECT_EQ(GuestAddress{0x1000}.checked_add(0x10), GuestAddress{0x1010});
  EXPECT_EQ(GuestAddress{kMax - 1}.checked_add(1), GuestAddress{kMax});
  EXPECT_EQ(GuestAddress{kMax}.checked_add(1), std::nullopt);
  EXPECT_EQ(GuestAddress{1}.checked_add(kMax), std::nullopt);
}

TEST(GuestAddress, OverflowingAdd) {
  EXPECT_EQ(GuestAddress{10}.overflowing_add(5), std::pair(GuestAddress{15}, false));
  EXPECT_EQ(GuestAddress{kMax}.overflowing_add(1), std::pair(GuestAddress{0}, true));
  EXPECT_EQ(GuestAddress{kMax}.overflowing_add(3), std::pair(GuestAddress{2}, true));
}

TEST(GuestAddress, CheckedSub) {
  EXPECT_EQ(GuestAddress{0x1000}.checked_sub(0x1000), GuestAddress{0});
  EXPECT_EQ(GuestAddress{0x1000}.checked_sub(0x1001), std::nullopt);
  EXPECT_EQ(GuestAddress{0x1000}.unchecked_sub(0x10), GuestAddress{0xff0});
}

TEST(GuestAddress, UncheckedAdd) {
  EXPECT_EQ(GuestAddress{0x1000}.unchecked_add(0x234), GuestAddress{0x1234});
}

TEST(GuestAddressDeathTest, UncheckedArithmeticAbortsOnOverflow) {
  EXPECT_DEATH((void)GuestAddress{kMax}.unchecked_add(1), "unchecked_add overflowed");
  EXPECT_DEATH((void)GuestAddress{1}.unchecked_sub(2), "unchecked_sub underflowed");
  EXPECT_DEATH((void)GuestAddress{1}.unchecked_offset_from(GuestAddress{2}), "base is above");
}

TEST(GuestAddress, Mask) {
  EXPECT_EQ(GuestAddress{0x1234}.mask(0xff00), 0x1200u);
  EXPECT_EQ(GuestAddress{kMax}.mask(0), 0u);
}

TEST(GuestAddress, OffsetFrom) {
  const GuestAddress base{0x1000};
  EXPECT_EQ(GuestAddress{0x1800}.checked_offset_from(base), 0x800u);
  EXPECT_EQ(GuestAddress{0x1000}.checked_offset_from(base), 0u);
  EXPECT_EQ(GuestAddress{0xfff}.checked_offset_from(base), std::nullopt);
  EXPECT_EQ(GuestAddress{0x1800}.unchecked_offset_from(base), 0x800u);
}

TEST(GuestAddress, AlignUp) {
  EXPECT_EQ(GuestAddress{0x1001}.checked_align_up(0x1000), GuestAddress{0x2000});
  EXPECT_EQ(GuestAddress{0x1000}.checked_align_up(0x1000), GuestAddress{0x1000});
  EXPECT_EQ(GuestAddress{0}.checked_align_up(8), GuestAddress{0});
  EXPECT_EQ(GuestAddress{0x1001}.checked_align_up(3), std::nullopt);
  EXPECT_EQ(GuestAddress{0x1001}.checked_align_up(0), std::nullopt);
  EXPECT_EQ(GuestAddress{kMax}.checked_align_up(2), std::nullopt);
  EXPECT_EQ(GuestAddress{kMax - 7}.checked_align_up(8), GuestAddress{kMax - 7});
  EXPECT_EQ(GuestAddress{5}.unchecked_align_up(4), GuestAddress{8});
}

TEST(MemoryRegionAddress, SameArithmetic) {
  const MemoryRegionAddress a{0x10};
  EXPECT_EQ(a.checked_add(0x10), MemoryRegionAddress{0x20});
  EXPECT_EQ(a.checked_sub(0x11), std::nullopt);
  EXPECT_EQ(MemoryRegionAddress{kMax}.overflowing_add(1),
            std::pair(MemoryRegionAddress{0}, true));
  static_assert(!std::is_convertible_v<MemoryRegionAddress, GuestAddress>);
  static_assert(!std::is_convertible_v<std::uint64_t, GuestAddress>);
}

TEST(GuestAddress, Formatting) {
  EXPECT_EQ(to_string(GuestAddress{0x1200}), "0x1200");
  EXPECT_EQ(to_string(GuestAddress{0}), "0x0");
  EXPECT_EQ(to_string(GuestAddress{kMax}), "0xffffffffffffffff");
  EXPECT_EQ(to_string(MemoryRegionAddress{0xabc}), "0xabc");
  std::ostringstream out;
  out << GuestAddress{0x42} << ' ' << MemoryRegionAddress{0x7};
  EXPECT_EQ(out.str(), "0x42 0x7");
#if defined(__cpp_lib_format)
  EXPECT_EQ(std::format("{}", GuestAddress{0x1200}), "0x1200");
  EXPECT_EQ(std::format("{:08x}", GuestAddress{0x1200}), "00001200");
  EXPECT_EQ(std::format("{:d}", MemoryRegionAddress{16}), "16");
#endif
}

}  // namespace
}  // namespace guestmem
