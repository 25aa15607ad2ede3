#include "guestmem/guest_region.hpp"

#include <unistd.h>

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/io.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::pattern;

GuestRegionMmap<> region_at(std::uint64_t base, std::size_t size) {
  auto mapping = MmapRegion<>::create(size);
  EXPECT_TRUE(mapping.has_value());
  auto region = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{base});
  EXPECT_TRUE(region.has_value());
  return std::move(*region);
}

TEST(GuestRegionMmap, Bounds) {
  auto r = region_at(0x1000, 0x400);
  EXPECT_EQ(r.len(), 0x400u);
  EXPECT_EQ(r.start_addr(), GuestAddress{0x1000});
  EXPECT_EQ(r.last_addr(), GuestAddress{0x13ff});
  EXPECT_EQ(r.check_address(MemoryRegionAddress{0x3ff}), MemoryRegionAddress{0x3ff});
  EXPECT_EQ(r.check_address(MemoryRegionAddress{0x400}), std::nullopt);
  EXPECT_TRUE(r.address_in_range(MemoryRegionAddress{0}));
  EXPECT_FALSE(r.address_in_range(MemoryRegionAddress{0x400}));
  EXPECT_EQ(r.checked_offset(MemoryRegionAddress{0x100}, 0x2ff), MemoryRegionAddress{0x3ff});
  EXPECT_EQ(r.checked_offset(MemoryRegionAddress{0x100}, 0x300), std::nullopt);
  EXPECT_EQ(r.checked_offset(MemoryRegionAddress{std::numeric_limits<std::uint64_t>::max()}, 1),
            std::nullopt);
  EXPECT_EQ(r.to_region_addr(GuestAddress{0x1010}), MemoryRegionAddress{0x10});
  EXPECT_EQ(r.to_region_addr(GuestAddress{0xfff}), std::nullopt);
  EXPECT_EQ(r.to_region_addr(GuestAddress{0x1400}), std::nullopt);
}

TEST(GuestRegionMmap, CreateRefusesARegionPastTheTop) {
  auto mapping = MmapRegion<>::create(0x1000);
  ASSERT_TRUE(mapping.has_value());
  auto r = GuestRegionMmap<>::create(std::move(*mapping),
                                     GuestAddress{std::numeric_limits<std::uint64_t>::max() - 0xfff});
  EXPECT_EQ(r.error().code(), ErrorCode::InvalidGuestRegion);
}

TEST(GuestRegionMmap, HostAddressAndSlices) {
  auto r = region_at(0x1000, 0x400);
  auto host = r.get_host_address(MemoryRegionAddress{0x10});
  ASSERT_TRUE(host.has_value());
  EXPECT_EQ(*host, r.mapping().unsafe_host_ptr() + 0x10);
  EXPECT_EQ(r.get_host_address(MemoryRegionAddress{0x400}).error(), Error::invalid_backend_address(0x400));

  auto slice = r.get_slice(MemoryRegionAddress{0x100}, 0x300);
  ASSERT_TRUE(slice.has_value());
  EXPECT_EQ(slice->size(), 0x300u);
  EXPECT_EQ(slice->unsafe_host_ptr(), r.mapping().unsafe_host_ptr() + 0x100);
  EXPECT_EQ(r.get_slice(MemoryRegionAddress{0x100}, 0x301).error(), Error::invalid_backend_address(0x100));
  EXPECT_EQ(r.as_volatile_slice().size(), 0x400u);
  EXPECT_EQ(r.file_offset(), nullptr);
  EXPECT_EQ(r.is_hugetlbfs(), std::nullopt);
  ASSERT_TRUE(slice->write_obj(std::uint32_t{0xabcdef01}, 0).has_value());
  EXPECT_EQ(r.read_obj<std::uint32_t>(MemoryRegionAddress{0x100}), 0xabcdef01u);
}

TEST(GuestRegionMmap, ByteAccessStaysInsideTheRegion) {
  auto r = region_at(0x1000, 0x400);
  EXPECT_EQ(r.write(pattern(5), MemoryRegionAddress{0x200}), 5u);
  std::array<std::byte, 16> buf{};
  EXPECT_EQ(r.read(buf, MemoryRegionAddress{0x3f8}), 8u);
  EXPECT_EQ(r.read_slice(buf, MemoryRegionAddress{0x3f8}).error(), Error::partial_buffer(16, 8));
  EXPECT_EQ(r.read(buf, MemoryRegionAddress{0x400}).error(), Error::invalid_backend_address(0x400));
  EXPECT_EQ(r.read({}, MemoryRegionAddress{0x400}), 0u);
  EXPECT_EQ(r.write_obj(std::uint64_t{1}, MemoryRegionAddress{0x3fc}).error(),
            Error::partial_buffer(8, 4));
  EXPECT_EQ(r.read_obj<std::uint8_t>(MemoryRegionAddress{0x200}), 0u);
  EXPECT_EQ(r.read_obj<std::uint8_t>(MemoryRegionAddress{0x204}), 4u);
}

TEST(GuestRegionMmap, AtomicAccesses) {
  auto r = region_at(0x1000, 0x1000);
  const MemoryRegionAddress addr{0x10};
  EXPECT_EQ(r.load<std::uint32_t>(addr, std::memory_order_relaxed), 0u);
  ASSERT_TRUE(r.store<std::uint32_t>(100, addr, std::memory_order_relaxed).has_value());
  EXPECT_EQ(r.load<std::uint32_t>(addr, std::memory_order_relaxed), 100u);
  EXPECT_EQ(r.load<std::uint32_t>(MemoryRegionAddress{0x1000}, std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0x1000));
  EXPECT_EQ(r.load<std::uint32_t>(MemoryRegionAddress{0x11}, std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0x11));
  EXPECT_EQ(r.store<std::uint64_t>(1, MemoryRegionAddress{0xffc}, std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0xffc));
}

TEST(GuestRegionMmap, VolatileTransfers) {
  auto r = region_at(0, 0x100);
  const auto image = pattern(0x200, 9);
  SpanReader src{image};
  EXPECT_EQ(r.read_volatile_from(MemoryRegionAddress{0xf0}, src, 0x100), 0x10u);
  EXPECT_EQ(r.read_exact_volatile_from(MemoryRegionAddress{0xf0}, src, 0x20).error(),
            Error::partial_buffer(0x20, 0x10));
  std::vector<std::byte> out;
  VectorWriter dst{out};
  EXPECT_EQ(r.write_volatile_to(MemoryRegionAddress{0xf0}, dst, 0x100), 0x10u);
  ASSERT_EQ(out.size(), 0x10u);
  EXPECT_EQ(out[0], image[0x10]) << "the second transfer overwrote the first";
}

// A region of `size` bytes at guest address 0 over a memfd filled with pattern(size, 3),
// mapped with `protection`; the memfd is returned too, for checking what reached it.
std::pair<GuestRegionMmap<testing::RecordingBitmap>, std::shared_ptr<const UniqueFd>>
protected_region(std::size_t size, Protection protection) {
  auto file = std::make_shared<const UniqueFd>(testing::memfd(size));
  const auto image = pattern(size, 3);
  EXPECT_EQ(::pwrite(file->get(), image.data(), size, 0), static_cast<ssize_t>(size));
  auto mapping = MmapRegionBuilder<testing::RecordingBitmap>(size)
                     .with_file_offset(FileOffset(file, 0))
                     .with_protection(protection)
                     .build();
  EXPECT_TRUE(mapping.has_value());
  auto region = GuestRegionMmap<testing::RecordingBitmap>::create(std::move(*mapping), GuestAddress{0});
  EXPECT_TRUE(region.has_value());
  return {std::move(*region), file};
}

TEST(GuestRegionMmap, ReadOnlyRegionRefusesEveryWrite) {
  auto [r, file] = protected_region(0x1000, Protection::read());
  const MemoryRegionAddress at{0x10};
  const Error refused = Error::protection_violation(0x10, 4, Permissions::Write);
  const auto four = pattern(4, 0x80);
  EXPECT_EQ(r.write_obj(std::uint32_t{1}, at).error(), refused);
  EXPECT_EQ(r.write(four, at).error(), refused);
  EXPECT_EQ(r.write_slice(four, at).error(), refused);
  EXPECT_EQ(r.store(std::uint32_t{1}, at, std::memory_order_relaxed).error(), refused);
  const auto image = pattern(0x20, 1);
  SpanReader src{image};
  EXPECT_EQ(r.read_volatile_from(at, src, 0x20).error(),
            Error::protection_violation(0x10, 0x20, Permissions::Write));
  EXPECT_EQ(r.read_exact_volatile_from(at, src, 0x20).error(),
            Error::protection_violation(0x10, 0x20, Permissions::Write));
  EXPECT_EQ(src.remaining().size(), 0x20u) << "the source was not consumed";
  EXPECT_TRUE(r.bitmap().take().empty()) << "nothing was written";
  EXPECT_EQ(r.write_obj(std::uint32_t{1}, MemoryRegionAddress{0x1000}).error(),
            Error::invalid_backend_address(0x1000))
      << "out of range is reported before protection";

  // Reads work and see the file's bytes.
  const auto expected = pattern(0x1000, 3);
  EXPECT_EQ(r.read_obj<std::uint8_t>(at), static_cast<std::uint8_t>(expected[0x10]));
  EXPECT_EQ(r.load<std::uint8_t>(MemoryRegionAddress{0xfff}, std::memory_order_acquire),
            static_cast<std::uint8_t>(expected[0xfff]));
  std::vector<std::byte> out;
  VectorWriter dst{out};
  EXPECT_EQ(r.write_volatile_to(MemoryRegionAddress{0}, dst, 0x1000), 0x1000u);
  EXPECT_EQ(out, expected);
  std::vector<std::byte> in_file(0x1000);
  ASSERT_EQ(::pread(file->get(), in_file.data(), 0x1000, 0), 0x1000);
  EXPECT_EQ(in_file, expected) << "the file is unchanged";

  // A view of a read-only region is available, for reads.
  auto slice = r.get_slice(MemoryRegionAddress{0x100}, 0x10);
  ASSERT_TRUE(slice.has_value());
  EXPECT_EQ(slice->read_obj<std::uint8_t>(0), static_cast<std::uint8_t>(expected[0x100]));
}

TEST(GuestRegionMmap, InaccessibleAndWriteOnlyRegions) {
  auto [none, none_file] = protected_region(0x1000, Protection::none());
  EXPECT_EQ(none.read_obj<std::uint64_t>(MemoryRegionAddress{8}).error(),
            Error::protection_violation(8, 8, Permissions::Read));
  EXPECT_EQ(none.load<std::uint16_t>(MemoryRegionAddress{2}, std::memory_order_relaxed).error(),
            Error::protection_violation(2, 2, Permissions::Read));
  EXPECT_EQ(none.write_obj(std::uint8_t{1}, MemoryRegionAddress{0}).error(),
            Error::protection_violation(0, 1, Permissions::Write));

  auto [wo, wo_file] = protected_region(0x1000, Protection::write());
  ASSERT_TRUE(wo.write_obj(std::uint32_t{0x01020304}, MemoryRegionAddress{0x20}).has_value());
  EXPECT_EQ(wo.bitmap().take(), (testing::Marks{{0x20, 4}}));
  std::uint32_t in_file = 0;
  ASSERT_EQ(::pread(wo_file->get(), &in_file, 4, 0x20), 4);
  EXPECT_EQ(in_file, 0x01020304u);
  std::array<std::byte, 4> buf{};
  EXPECT_EQ(wo.read(buf, MemoryRegionAddress{0x20}).error(),
            Error::protection_violation(0x20, 4, Permissions::Read))
      << "the CPU would allow the read; the protection does not";
}

}  // namespace
}  // namespace guestmem
