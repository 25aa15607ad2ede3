#include "guestmem/byte_valued.hpp"

#include <array>
#include <cstdint>

#include <gtest/gtest.h>

namespace {

struct Pair {
  std::uint32_t a;
  std::uint32_t b;
};
struct Padded {
  std::uint8_t a;
  std::uint32_t b;
};
struct Floats {
  float x;
  float y;
};
struct NotTrivial {
  NotTrivial(const NotTrivial&) {}
  std::uint32_t a;
};

}  // namespace

template <>
inline constexpr bool guestmem::enable_byte_valued<Floats> = true;

namespace guestmem {
namespace {

TEST(ByteValued, AcceptsPlainData) {
  static_assert(ByteValued<std::uint8_t> && ByteValued<std::int64_t> && ByteValued<char>);
  static_assert(ByteValued<Pair> && ByteValued<const Pair>);
  static_assert(ByteValued<std::array<std::uint16_t, 4>> && ByteValued<std::uint32_t[3]>);
  static_assert(ByteValued<float> && ByteValued<double> && ByteValued<float[2]>);
  static_assert(ByteValued<std::byte>);
}

TEST(ByteValued, RejectsWhatCouldLeakOrLie) {
  static_assert(!ByteValued<Padded>, "padding would leak host bytes");
  static_assert(!ByteValued<bool>, "only 0 and 1 are valid");
  static_assert(!ByteValued<int*>, "a host pointer from guest memory");
  static_assert(!ByteValued<NotTrivial>);
  static_assert(!ByteValued<Pair&>);
  static_assert(!ByteValued<long double>, "x87 long double has padding");
}

TEST(ByteValued, OptInForStructsTheRuleCannotProve) {
  static_assert(ByteValued<Floats>);
}

TEST(ByteValued, BytesOf) {
  Pair p{0x04030201, 0x08070605};
  auto view = bytes_of(p);
  static_assert(view.size() == 8);
  EXPECT_EQ(view[0], std::byte{1});
  EXPECT_EQ(view[7], std::byte{8});
  writable_bytes_of(p)[0] = std::byte{0xff};
  EXPECT_EQ(p.a, 0x040302ffu);
}

TEST(AtomicAccess, IntegersOfOneTwoFourEightBytes) {
  static_assert(AtomicAccess<std::uint8_t> && AtomicAccess<std::int16_t>);
  static_assert(AtomicAccess<std::uint32_t> && AtomicAccess<std::int64_t>);
  static_assert(!AtomicAccess<bool> && !AtomicAccess<float> && !AtomicAccess<Pair>);
  static_assert(!AtomicAccess<const std::uint32_t>);
}

}  // namespace
}  // namespace guestmem
