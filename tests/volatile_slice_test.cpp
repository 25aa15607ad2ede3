#include "guestmem/volatile_slice.hpp"

#include <array>
#include <cstdint>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/io.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::bytes;
using testing::Marks;
using testing::pattern;
using testing::RecordingBitmap;

constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();

TEST(VolatileSlice, SeedWriteExample) {
  std::vector<std::byte> memory = bytes(1, 2, 3, 4, 5);
  auto slice = VolatileSlice<>::from_bytes(memory);
  const auto three = bytes(1, 2, 3);
  EXPECT_EQ(slice.write(three, 0), 3u);
  EXPECT_EQ(slice.write(three, 3), 2u);
  auto past = slice.write(three, 5);
  ASSERT_FALSE(past.has_value());
  EXPECT_EQ(past.error().code(), ErrorCode::OutOfBounds);
  EXPECT_EQ(past.error().address(), 5u);
  EXPECT_EQ(slice.write({}, 5), 0u);
  EXPECT_EQ(slice.write({}, kMax), 0u);
  EXPECT_EQ(memory, bytes(1, 2, 3, 1, 2));
}

TEST(VolatileSlice, EmptyContainerFailsUnlessTheBufferIsEmpty) {
  auto empty = VolatileSlice<>();
  EXPECT_TRUE(empty.empty());
  std::array<std::byte, 1> one{};
  EXPECT_EQ(empty.read(one, 0).error().code(), ErrorCode::OutOfBounds);
  EXPECT_EQ(empty.read({}, 0), 0u);
}

TEST(VolatileSlice, ReadAndPartialBuffer) {
  std::vector<std::byte> memory = pattern(16);
  auto slice = VolatileSlice<>::from_bytes(memory);
  std::array<std::byte, 8> buf{};
  EXPECT_EQ(slice.read(buf, 12), 4u);
  EXPECT_EQ(buf[0], std::byte{12});
  EXPECT_EQ(buf[3], std::byte{15});
  auto partial = slice.read_slice(buf, 12);
  ASSERT_FALSE(partial.has_value());
  EXPECT_EQ(partial.error(), Error::partial_buffer(8, 4));
  auto written = slice.write_slice(bytes(9, 9, 9, 9, 9, 9), 13);
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error(), Error::partial_buffer(6, 3));
  EXPECT_EQ(memory[12], std::byte{12});
  EXPECT_EQ(memory[13], std::byte{9});
  EXPECT_EQ(memory[15], std::byte{9});
}

TEST(VolatileSlice, Objects) {
  std::vector<std::byte> memory(32);
  auto slice = VolatileSlice<>::from_bytes(memory);
  ASSERT_TRUE(slice.write_obj(std::uint64_t{0x1122334455667788}, 8).has_value());
  EXPECT_EQ(slice.read_obj<std::uint64_t>(8), 0x1122334455667788u);
  EXPECT_EQ(slice.read_obj<std::uint32_t>(12), 0x11223344u);
  EXPECT_EQ(slice.read_obj<std::uint64_t>(28).error(), Error::partial_buffer(8, 4));
  EXPECT_EQ(slice.read_obj<std::uint64_t>(32).error().code(), ErrorCode::OutOfBounds);
}

TEST(VolatileSlice, OffsetSubsliceSplitAt) {
  std::vector<std::byte> memory = pattern(16);
  auto slice = VolatileSlice<>::from_bytes(memory);
  auto tail = slice.offset(10);
  ASSERT_TRUE(tail.has_value());
  EXPECT_EQ(tail->size(), 6u);
  EXPECT_EQ(tail->read_obj<std::uint8_t>(0), 10u);
  EXPECT_EQ(slice.offset(16)->size(), 0u);
  EXPECT_EQ(slice.offset(17).error().code(), ErrorCode::OutOfBounds);

  auto mid = slice.subslice(4, 8);
  ASSERT_TRUE(mid.has_value());
  EXPECT_EQ(mid->len(), 8u);
  EXPECT_EQ(mid->read_obj<std::uint8_t>(7), 11u);
  EXPECT_EQ(slice.subslice(16, 0)->size(), 0u);
  EXPECT_EQ(slice.subslice(9, 8).error(), Error::out_of_bounds(9, 8, 16));
  EXPECT_EQ(slice.subslice(kMax, 2).error(), Error::overflow(kMax, 2));

  auto halves = slice.split_at(5);
  ASSERT_TRUE(halves.has_value());
  EXPECT_EQ(halves->first.size(), 5u);
  EXPECT_EQ(halves->second.size(), 11u);
  EXPECT_EQ(halves->second.read_obj<std::uint8_t>(0), 5u);
  EXPECT_EQ(slice.split_at(17).error().code(), ErrorCode::OutOfBounds);
  EXPECT_EQ(slice.split_at(16)->second.size(), 0u);
}

TEST(VolatileSlice, CopyToAndFromCountElements) {
  std::vector<std::byte> memory(32);
  auto slice = VolatileSlice<>::from_bytes(memory);
  const std::array<std::uint32_t, 10> words{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(slice.copy_from(std::span(words)), 8u);
  std::array<std::uint32_t, 4> few{};
  EXPECT_EQ(slice.copy_to(std::span(few)), 4u);
  EXPECT_EQ(few, (std::array<std::uint32_t, 4>{1, 2, 3, 4}));
  std::array<std::uint8_t, 40> many{};
  EXPECT_EQ(slice.copy_to(std::span(many)), 32u);
  EXPECT_EQ(many[4], 2u);
  std::array<std::uint64_t, 8> wide{};
  EXPECT_EQ(slice.subslice(0, 20)->copy_to(std::span(wide)), 2u);
}

TEST(VolatileSlice, CopyToVolatileSliceMayOverlap) {
  std::vector<std::byte> memory = pattern(16);
  auto slice = VolatileSlice<>::from_bytes(memory);
  EXPECT_EQ(slice.subslice(0, 8)->copy_to_volatile_slice(*slice.subslice(4, 12)), 8u);
  EXPECT_EQ(memory, bytes(0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15));
  std::vector<std::byte> other(4);
  EXPECT_EQ(slice.copy_to_volatile_slice(VolatileSlice<>::from_bytes(other)), 4u);
  EXPECT_EQ(other, bytes(0, 1, 2, 3));
}

TEST(VolatileSlice, Atomics) {
  alignas(8) std::array<std::byte, 16> memory{};
  auto slice = VolatileSlice<>::from_bytes(memory);
  EXPECT_EQ(slice.load<std::uint32_t>(4, std::memory_order_relaxed), 0u);
  ASSERT_TRUE(slice.store<std::uint32_t>(100, 4, std::memory_order_release).has_value());
  EXPECT_EQ(slice.load<std::uint32_t>(4, std::memory_order_acquire), 100u);
  EXPECT_EQ(slice.load<std::uint64_t>(8, std::memory_order_seq_cst), 0u);
  EXPECT_EQ(slice.load<std::uint32_t>(2, std::memory_order_relaxed).error(),
            Error::misaligned(2, 4));
  EXPECT_EQ(slice.store<std::uint64_t>(1, 12, std::memory_order_relaxed).error(),
            Error::out_of_bounds(12, 8, 16));
  EXPECT_EQ(slice.load<std::uint16_t>(16, std::memory_order_relaxed).error().code(),
            ErrorCode::OutOfBounds);
  EXPECT_EQ(slice.load<std::uint8_t>(15, std::memory_order_relaxed), 0u);
}

TEST(VolatileSliceDeathTest, InvalidMemoryOrderAborts) {
  alignas(8) std::array<std::byte, 8> memory{};
  auto slice = VolatileSlice<>::from_bytes(memory);
  EXPECT_DEATH((void)slice.load<std::uint32_t>(0, std::memory_order_release), "release");
  EXPECT_DEATH((void)slice.store<std::uint32_t>(1, 0, std::memory_order_acquire), "acquire");
}

TEST(VolatileRef, LoadStoreAndSlice) {
  std::vector<std::byte> memory(16);
  auto slice = VolatileSlice<>::from_bytes(memory);
  auto ref = slice.get_ref<std::uint32_t>(4);
  ASSERT_TRUE(ref.has_value());
  ref->store(0xa1b2c3d4);
  EXPECT_EQ(ref->load(), 0xa1b2c3d4u);
  EXPECT_EQ(slice.read_obj<std::uint32_t>(4), 0xa1b2c3d4u);
  EXPECT_EQ(ref->to_slice().size(), 4u);
  EXPECT_EQ(slice.get_ref<std::uint64_t>(12).error(), Error::out_of_bounds(12, 8, 16));
}

TEST(VolatileArrayRef, CheckedIndexes) {
  std::vector<std::byte> memory(16);
  auto slice = VolatileSlice<>::from_bytes(memory);
  auto array = slice.get_array_ref<std::uint16_t>(2, 6);
  ASSERT_TRUE(array.has_value());
  EXPECT_EQ(array->size(), 6u);
  EXPECT_EQ(array->element_size(), 2u);
  ASSERT_TRUE(array->store(5, 0xbeef).has_value());
  EXPECT_EQ(array->load(5), 0xbeefu);
  EXPECT_EQ(slice.read_obj<std::uint16_t>(12), 0xbeefu);
  EXPECT_EQ(array->load(6).error(), Error::out_of_bounds(6, 1, 6));
  EXPECT_EQ(array->store(kMax, 1).error().code(), ErrorCode::OutOfBounds);
  const std::array<std::uint16_t, 8> values{1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(array->copy_from(values), 6u);
  std::array<std::uint16_t, 3> out{};
  EXPECT_EQ(array->copy_to(out), 3u);
  EXPECT_EQ(out, (std::array<std::uint16_t, 3>{1, 2, 3}));
  EXPECT_EQ(array->to_slice().size(), 12u);
  EXPECT_EQ(slice.get_array_ref<std::uint16_t>(2, 8).error().code(), ErrorCode::OutOfBounds);
  EXPECT_EQ(slice.get_array_ref<std::uint64_t>(0, kMax / 4).error().code(),
            ErrorCode::Overflow);
}

TEST(VolatileSlice, EveryWritePathReportsExactlyItsBytes) {
  std::vector<std::byte> memory(64);
  RecordingBitmap bitmap;
  auto slice = VolatileSlice<RecordingBitmap::Slice>::from_raw_parts(
      reinterpret_cast<std::uint8_t*>(memory.data()), memory.size(), bitmap.slice_at(0));
  auto tail = *slice.offset(32);

  ASSERT_TRUE(tail.write(bytes(1, 2, 3), 30).has_value());
  EXPECT_EQ(bitmap.take(), (Marks{{62, 2}}));
  EXPECT_FALSE(tail.write_slice(bytes(1, 2, 3), 31).has_value());
  EXPECT_EQ(bitmap.take(), (Marks{{63, 1}}));
  ASSERT_TRUE(tail.write_obj(std::uint16_t{1}, 4).has_value());
  EXPECT_EQ(bitmap.take(), (Marks{{36, 2}}));
  ASSERT_TRUE(slice.store<std::uint32_t>(1, 8, std::memory_order_relaxed).has_value());
  EXPECT_EQ(bitmap.take(), (Marks{{8, 4}}));
  const std::array<std::uint32_t, 2> words{1, 2};
  EXPECT_EQ(tail.copy_from(std::span(words)), 2u);
  EXPECT_EQ(bitmap.take(), (Marks{{32, 8}}));
  EXPECT_EQ(slice.subslice(0, 4)->copy_to_volatile_slice(*slice.subslice(16, 8)), 4u);
  EXPECT_EQ(bitmap.take(), (Marks{{16, 4}}));
  slice.get_ref<std::uint8_t>(50)->store(7);
  EXPECT_EQ(bitmap.take(), (Marks{{50, 1}}));
  ASSERT_TRUE(slice.get_array_ref<std::uint16_t>(20, 4)->store(2, 9).has_value());
  EXPECT_EQ(bitmap.take(), (Marks{{24, 2}}));
  const auto data = pattern(10);
  SpanReader reader{data};
  EXPECT_EQ(tail.read_volatile_from(28, reader, 10), 4u);
  EXPECT_EQ(bitmap.take(), (Marks{{60, 4}}));

  std::array<std::byte, 64> sink{};
  ASSERT_TRUE(slice.read_slice(sink, 0).has_value());
  (void)slice.load<std::uint32_t>(0, std::memory_order_relaxed);
  std::array<std::uint32_t, 4> out{};
  (void)slice.copy_to(std::span(out));
  (void)slice.get_ref<std::uint64_t>(0)->load();
  std::vector<std::byte> collected;
  VectorWriter writer{collected};
  EXPECT_EQ(slice.write_volatile_to(0, writer, 64), 64u);
  EXPECT_EQ(bitmap.take(), Marks{}) << "reads must never mark";
}

}  // namespace
}  // namespace guestmem
