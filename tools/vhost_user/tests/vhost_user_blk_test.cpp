// The virtio-blk device against guest memory built in the test and an image in a memfd:
// every request type, exact used lengths and status bytes, data read back from both sides,
// and the hostile requests (wrong directions, holes, truncated memory, past the image).
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "test_support.hpp"
#include "vhost_user/blk.hpp"

namespace guestmem::vhost_user {
namespace {

using namespace testing;

constexpr std::uint64_t kImageSectors = 64;
constexpr std::uint64_t kHeaderAt = 0x5000;
constexpr std::uint64_t kStatusAt = 0x5800;
constexpr std::uint8_t kUntouched = 0xee;

std::uint8_t image_byte(std::uint64_t offset) {
  return static_cast<std::uint8_t>(offset * 7 + offset / 512);
}

class BlkDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::uint8_t> content(kImageSectors * kSectorSize);
    for (std::size_t i = 0; i < content.size(); ++i) {
      content[i] = image_byte(i);
    }
    ASSERT_EQ(::pwrite(image_fd, content.data(), content.size(), 0),
              static_cast<ssize_t>(content.size()));
    ASSERT_TRUE(mem().write_obj(kUntouched, GuestAddress{kStatusAt}).has_value());
  }

  const GuestMemoryMmap<>& mem() const { return memory.mem; }

  BlkDevice device(BlkOptions options = {}) {
    auto made = BlkDevice::from_fd(UniqueFd(::dup(image_fd)), options);
    EXPECT_TRUE(made.has_value());
    return std::move(*made);
  }

  // Writes a request header at kHeaderAt and returns its descriptor.
  Descriptor header(BlkRequestType type, std::uint64_t sector) {
    const BlkRequestHeader h{Le32(to_underlying(type)), Le32(0), Le64(sector)};
    EXPECT_TRUE(mem().write_obj(h, GuestAddress{kHeaderAt}).has_value());
    return Descriptor{GuestAddress{kHeaderAt}, sizeof(h), false};
  }

  static Descriptor status() { return Descriptor{GuestAddress{kStatusAt}, 1, true}; }

  std::uint8_t status_byte() const { return *mem().read_obj<std::uint8_t>(GuestAddress{kStatusAt}); }

  std::vector<std::uint8_t> image(std::uint64_t offset, std::size_t len) const {
    std::vector<std::uint8_t> out(len);
    EXPECT_EQ(::pread(image_fd, out.data(), len, static_cast<off_t>(offset)),
              static_cast<ssize_t>(len));
    return out;
  }

  std::vector<std::uint8_t> guest(std::uint64_t addr, std::size_t len) const {
    std::vector<std::uint8_t> out(len);
    EXPECT_TRUE(mem().read_slice(std::as_writable_bytes(std::span(out)), GuestAddress{addr}).has_value());
    return out;
  }

  void fill_guest(std::uint64_t addr, std::size_t len, std::uint8_t value) const {
    std::vector<std::uint8_t> bytes(len, value);
    ASSERT_TRUE(mem().write_slice(std::as_bytes(std::span(bytes)), GuestAddress{addr}).has_value());
  }

  TestMemory memory;
  int image_fd = make_memfd(kImageSectors * kSectorSize).release();
  std::vector<iovec> scratch;

  void TearDown() override { ::close(image_fd); }
};

TEST_F(BlkDeviceTest, ReadAcrossTwoBuffersInTwoRegions) {
  const auto blk = device();
  const std::array chain{header(BlkRequestType::In, 3),
                         Descriptor{GuestAddress{0x8000}, 512, true},
                         Descriptor{GuestAddress{kBaseB + 0x10}, 1024, true}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1536U + 1);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Ok));
  EXPECT_EQ(guest(0x8000, 512), image(3 * 512, 512));
  EXPECT_EQ(guest(kBaseB + 0x10, 1024), image(4 * 512, 1024));
}

TEST_F(BlkDeviceTest, ReadWithDataAndStatusInOneBuffer) {
  const auto blk = device();
  const std::array chain{header(BlkRequestType::In, 0),
                         Descriptor{GuestAddress{0x8000}, 513, true}};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 513U);
  EXPECT_EQ(guest(0x8000, 512), image(0, 512));
  EXPECT_EQ(guest(0x8000 + 512, 1)[0], to_underlying(BlkStatus::Ok));
}

TEST_F(BlkDeviceTest, WriteFromGuest) {
  const auto blk = device();
  fill_guest(0x9000, 1024, 0x5a);
  const std::array chain{header(BlkRequestType::Out, 10),
                         Descriptor{GuestAddress{0x9000}, 1024, false}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Ok));
  EXPECT_EQ(image(10 * 512, 1024), std::vector<std::uint8_t>(1024, 0x5a));
  EXPECT_EQ(image(9 * 512, 512)[511], image_byte(10 * 512 - 1));
  EXPECT_EQ(image(12 * 512, 1)[0], image_byte(12 * 512));
}

TEST_F(BlkDeviceTest, RequestsPastTheImage) {
  const auto blk = device();
  fill_guest(0x8000, 1024, kUntouched);
  for (const std::uint64_t sector : {kImageSectors - 1, kImageSectors, ~std::uint64_t{0} >> 9,
                                     ~std::uint64_t{0}}) {
    SCOPED_TRACE(sector);
    const std::array chain{header(BlkRequestType::In, sector),
                           Descriptor{GuestAddress{0x8000}, 1024, true}, status()};
    EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
    EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
    EXPECT_EQ(guest(0x8000, 1024), std::vector<std::uint8_t>(1024, kUntouched));
  }
}

TEST_F(BlkDeviceTest, ReadIntoDeviceReadableBufferIsRefused) {
  const auto blk = device();
  fill_guest(0x8000, 512, kUntouched);
  const std::array chain{header(BlkRequestType::In, 0),
                         Descriptor{GuestAddress{0x8000}, 512, false}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
  EXPECT_EQ(guest(0x8000, 512), std::vector<std::uint8_t>(512, kUntouched));
}

TEST_F(BlkDeviceTest, WriteFromDeviceWritableBufferIsRefused) {
  const auto blk = device();
  const auto before = image(0, 512);
  const std::array chain{header(BlkRequestType::Out, 0),
                         Descriptor{GuestAddress{0x8000}, 512, true}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
  EXPECT_EQ(image(0, 512), before);
}

TEST_F(BlkDeviceTest, PartialSectorIsRefused) {
  const auto blk = device();
  const std::array chain{header(BlkRequestType::In, 0),
                         Descriptor{GuestAddress{0x8000}, 100, true}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
}

TEST_F(BlkDeviceTest, ShortHeaderIsRefused) {
  const auto blk = device();
  header(BlkRequestType::In, 0);
  const std::array chain{Descriptor{GuestAddress{kHeaderAt}, 8, false}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
}

TEST_F(BlkDeviceTest, DataBufferInAHole) {
  const auto blk = device();
  const std::array chain{header(BlkRequestType::In, 0),
                         Descriptor{GuestAddress{kRegionSize - 512}, 1024, true}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
}

TEST_F(BlkDeviceTest, TruncatedMemoryUnderRead) {
  const auto blk = device();
  memory.truncate_b();
  const std::array chain{header(BlkRequestType::In, 0),
                         Descriptor{GuestAddress{kBaseB}, 4096, true}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
}

TEST_F(BlkDeviceTest, TruncatedMemoryUnderWrite) {
  const auto blk = device();
  const auto before = image(0, 4096);
  memory.truncate_b();
  const std::array chain{header(BlkRequestType::Out, 0),
                         Descriptor{GuestAddress{kBaseB}, 4096, false}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
  EXPECT_EQ(image(0, 4096), before);
}

TEST_F(BlkDeviceTest, TruncatedMemoryUnderHeaderAndStatus) {
  const auto blk = device();
  memory.truncate_b();
  const std::array chain{Descriptor{GuestAddress{kBaseB}, 16, false},
                         Descriptor{GuestAddress{kBaseB + 0x100}, 1, true}};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 0U);
}

TEST_F(BlkDeviceTest, NoStatusBufferWritesNothing) {
  const auto blk = device();
  fill_guest(0x8000, 512, kUntouched);
  const std::array chain{header(BlkRequestType::In, 0),
                         Descriptor{GuestAddress{0x8000}, 512, false}};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 0U);
  EXPECT_EQ(guest(0x8000, 512), std::vector<std::uint8_t>(512, kUntouched));
  EXPECT_EQ(status_byte(), kUntouched);
}

TEST_F(BlkDeviceTest, UnknownTypeIsUnsupported) {
  const auto blk = device();
  const std::array chain{header(static_cast<BlkRequestType>(77), 0), status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Unsupp));
}

TEST_F(BlkDeviceTest, GetIdAndFlush) {
  const auto blk = device();
  fill_guest(0x8000, 32, kUntouched);
  const std::array id_chain{header(BlkRequestType::GetId, 0),
                            Descriptor{GuestAddress{0x8000}, kBlkIdBytes, true}, status()};
  EXPECT_EQ(blk.handle(mem(), id_chain, scratch), kBlkIdBytes + 1);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Ok));
  const auto id = guest(0x8000, 21);
  EXPECT_EQ(std::memcmp(id.data(), "guestmem-vhost-blk\0\0", 20), 0);
  EXPECT_EQ(id[20], kUntouched);

  const std::array flush_chain{header(BlkRequestType::Flush, 0), status()};
  EXPECT_EQ(blk.handle(mem(), flush_chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Ok));
}

TEST_F(BlkDeviceTest, WriteZeroesAndDiscard) {
  const auto blk = device();
  const BlkDiscardWriteZeroes segment{Le64(4), Le32(3), Le32(0)};
  ASSERT_TRUE(mem().write_obj(segment, GuestAddress{0x8000}).has_value());
  const std::array chain{header(BlkRequestType::WriteZeroes, 0),
                         Descriptor{GuestAddress{0x8000}, sizeof(segment), false}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Ok));
  EXPECT_EQ(image(4 * 512, 3 * 512), std::vector<std::uint8_t>(3 * 512, 0));
  EXPECT_EQ(image(7 * 512, 1)[0], image_byte(7 * 512));
  EXPECT_EQ(image(4 * 512 - 1, 1)[0], image_byte(4 * 512 - 1));

  // Discard takes no flags; the unmap flag is for write-zeroes only.
  const BlkDiscardWriteZeroes unmap{Le64(0), Le32(1), Le32(kBlkWriteZeroesFlagUnmap)};
  ASSERT_TRUE(mem().write_obj(unmap, GuestAddress{0x8000}).has_value());
  const std::array discard{header(BlkRequestType::Discard, 0),
                           Descriptor{GuestAddress{0x8000}, sizeof(unmap), false}, status()};
  EXPECT_EQ(blk.handle(mem(), discard, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::Unsupp));

  const BlkDiscardWriteZeroes outside{Le64(kImageSectors - 1), Le32(2), Le32(0)};
  ASSERT_TRUE(mem().write_obj(outside, GuestAddress{0x8000}).has_value());
  EXPECT_EQ(blk.handle(mem(), discard, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
}

TEST_F(BlkDeviceTest, ReadOnlyImage) {
  const auto blk = device(BlkOptions{.read_only = true});
  EXPECT_NE(blk.features() & feature_bit(feature::kBlkRo), 0U);
  EXPECT_EQ(blk.features() & feature_bit(feature::kBlkDiscard), 0U);
  const auto before = image(0, 512);
  const std::array chain{header(BlkRequestType::Out, 0),
                         Descriptor{GuestAddress{0x9000}, 512, false}, status()};
  EXPECT_EQ(blk.handle(mem(), chain, scratch), 1U);
  EXPECT_EQ(status_byte(), to_underlying(BlkStatus::IoErr));
  EXPECT_EQ(image(0, 512), before);
}

TEST_F(BlkDeviceTest, ConfigSpace) {
  const auto blk = device(BlkOptions{.num_queues = 4});
  const BlkConfig config = blk.config();
  EXPECT_EQ(config.capacity.to_native(), kImageSectors);
  EXPECT_EQ(config.num_queues.to_native(), 4);
  EXPECT_EQ(config.blk_size.to_native(), 512U);
  EXPECT_EQ(blk.capacity_sectors(), kImageSectors);
}

TEST(BlkDeviceOpen, RefusesEmptyAndPartialSectorImages) {
  for (const std::uint64_t size : {0U, 1000U}) {
    auto made = BlkDevice::from_fd(make_memfd(size), BlkOptions{});
    ASSERT_FALSE(made.has_value());
    EXPECT_EQ(made.error().code(), ErrorCode::IoError);
    EXPECT_EQ(made.error().os_error(), EINVAL);
  }
  auto missing = BlkDevice::open("/nonexistent/image", BlkOptions{});
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().os_error(), ENOENT);
}

}  // namespace
}  // namespace guestmem::vhost_user
