#include "guestmem/endian.hpp"

#include <array>
#include <bit>
#include <cstring>

#include <gtest/gtest.h>

#include "guestmem/byte_valued.hpp"

namespace guestmem {
namespace {

template <class T>
std::array<unsigned char, sizeof(T)> raw(const T& value) {
  std::array<unsigned char, sizeof(T)> out{};
  std::memcpy(out.data(), &value, sizeof(T));
  return out;
}

TEST(Endian, StoresInTheDeclaredOrder) {
  EXPECT_EQ(raw(Le16{0x0102}), (std::array<unsigned char, 2>{0x02, 0x01}));
  EXPECT_EQ(raw(Be16{0x0102}), (std::array<unsigned char, 2>{0x01, 0x02}));
  EXPECT_EQ(raw(Le32{0x01020304}), (std::array<unsigned char, 4>{4, 3, 2, 1}));
  EXPECT_EQ(raw(Be32{0x01020304}), (std::array<unsigned char, 4>{1, 2, 3, 4}));
  EXPECT_EQ(raw(Le64{0x0102030405060708}), (std::array<unsigned char, 8>{8, 7, 6, 5, 4, 3, 2, 1}));
  EXPECT_EQ(raw(Be64{0x0102030405060708}), (std::array<unsigned char, 8>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Endian, RoundTrips) {
  EXPECT_EQ(Le16{0xbeef}.to_native(), 0xbeef);
  EXPECT_EQ(Be16{0xbeef}.to_native(), 0xbeef);
  EXPECT_EQ(Le32{0xdeadbeef}.to_native(), 0xdeadbeefu);
  EXPECT_EQ(Be32{0xdeadbeef}.to_native(), 0xdeadbeefu);
  EXPECT_EQ(Le64{0x0123456789abcdef}.to_native(), 0x0123456789abcdefu);
  EXPECT_EQ(Be64{0x0123456789abcdef}.to_native(), 0x0123456789abcdefu);
  EXPECT_EQ(Be32{7}, Be32{7});
  EXPECT_NE(Be32{7}, Be32{8});
}

TEST(Endian, IsByteValuedAndSized) {
  static_assert(ByteValued<Le16> && ByteValued<Be64>);
  static_assert(sizeof(Le16) == 2 && sizeof(Be32) == 4 && sizeof(Le64) == 8);
  struct Desc {
    Le64 addr;
    Le32 len;
    Le16 flags;
    Le16 next;
  };
  static_assert(ByteValued<Desc> && sizeof(Desc) == 16);
}

}  // namespace
}  // namespace guestmem
