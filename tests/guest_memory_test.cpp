#include "guestmem/guest_memory.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/io.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::bytes;
using testing::Marks;
using testing::pattern;
using testing::RecordingBitmap;

constexpr std::uint64_t kTop = std::numeric_limits<std::uint64_t>::max();

GuestMemoryMmap<> make(std::initializer_list<std::pair<GuestAddress, std::size_t>> ranges) {
  auto mem = GuestMemoryMmap<>::from_ranges(ranges);
  EXPECT_TRUE(mem.has_value()) << mem.error();
  return mem.has_value() ? std::move(*mem) : GuestMemoryMmap<>();
}

// ---------------------------------------------------------------- construction

TEST(GuestMemoryMmap, FromRangesAndIteration) {
  auto mem = make({{GuestAddress{0x0}, 1024}, {GuestAddress{0x400}, 2048}});
  EXPECT_EQ(mem.num_regions(), 2u);
  std::uint64_t kib = 0;
  for (const auto& region : mem.regions()) {
    kib += region.len() / 1024;
  }
  EXPECT_EQ(kib, 3u);
  EXPECT_EQ(mem.last_addr(), GuestAddress{0xbff});
  EXPECT_EQ(mem.region_ptrs().size(), 2u);
}

TEST(GuestMemoryMmap, LastAddr) {
  auto mem = make({{GuestAddress{0x1000}, 0x400}});
  EXPECT_EQ(GuestAddress{0x1000}.checked_add(0x3ff), mem.last_addr());
  EXPECT_EQ(GuestMemoryMmap<>().last_addr(), GuestAddress{0});
}

TEST(GuestMemoryMmap, ZeroSizedRegionIsAMappingFailure) {
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0}});
  ASSERT_FALSE(mem.has_value());
  EXPECT_EQ(mem.error().code(), ErrorCode::MappingFailed);
  EXPECT_EQ(mem.error().os_error(), EINVAL);
}

TEST(GuestMemoryMmap, NoRegions) {
  auto mem = GuestMemoryMmap<>::from_ranges(std::span<const std::pair<GuestAddress, std::size_t>>{});
  EXPECT_EQ(mem.error(), Error(ErrorCode::NoMemoryRegion));
  EXPECT_EQ(GuestMemoryMmap<>::from_regions({}).error(), Error(ErrorCode::NoMemoryRegion));
}

TEST(GuestMemoryMmap, OverlappingRegions) {
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x1000}, {GuestAddress{0xfff}, 0x1000}});
  EXPECT_EQ(mem.error(), Error::at(ErrorCode::MemoryRegionOverlap, 0xfff));
  auto same = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x10}, {GuestAddress{0}, 0x10}});
  EXPECT_EQ(same.error().code(), ErrorCode::MemoryRegionOverlap);
}

TEST(GuestMemoryMmap, UnsortedRegions) {
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0x1000}, 0x1000}, {GuestAddress{0}, 0x10}});
  EXPECT_EQ(mem.error(), Error::at(ErrorCode::UnsortedMemoryRegions, 0));
}

TEST(GuestMemoryMmap, RegionEndingPastTheTopOfTheAddressSpace) {
  auto past = GuestMemoryMmap<>::from_ranges({{GuestAddress{kTop - 0xfff}, 0x1000}});
  EXPECT_EQ(past.error(), Error::at(ErrorCode::InvalidGuestRegion, kTop - 0xfff, 0x1000));
  auto wraps = GuestMemoryMmap<>::from_ranges({{GuestAddress{kTop - 0xf}, 0x1000}});
  EXPECT_EQ(wraps.error().code(), ErrorCode::InvalidGuestRegion);
  auto below = GuestMemoryMmap<>::from_ranges({{GuestAddress{kTop - 0x1000}, 0x1000}});
  ASSERT_TRUE(below.has_value());
  EXPECT_EQ(below->last_addr(), GuestAddress{kTop - 1});
}

TEST(GuestMemoryMmap, FileTooShortForTheMapping) {
  std::vector<RegionSpec> specs;
  specs.push_back(RegionSpec{GuestAddress{0}, 0x2000, FileOffset(testing::memfd(0x1000), 0)});
  auto mem = GuestMemoryMmap<>::from_ranges_with_files(specs);
  EXPECT_EQ(mem.error(), Error::mapping_past_eof(0, 0x2000, 0x1000));
  specs[0] = RegionSpec{GuestAddress{0}, 0x1000, FileOffset(testing::memfd(0x1800), 0x1000)};
  EXPECT_EQ(GuestMemoryMmap<>::from_ranges_with_files(specs).error(),
            Error::mapping_past_eof(0x1000, 0x1000, 0x1800));
}

TEST(GuestMemoryMmap, FromRangesWithFiles) {
  UniqueFd fd = testing::memfd(0x3000);
  const auto data = pattern(16, 0x40);
  ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0x1000), 16);
  std::vector<RegionSpec> specs;
  specs.push_back(RegionSpec{GuestAddress{0}, 0x1000, std::nullopt});
  specs.push_back(RegionSpec{GuestAddress{0x1000}, 0x2000, FileOffset(std::move(fd), 0x1000)});
  auto mem = GuestMemoryMmap<>::from_ranges_with_files(specs);
  ASSERT_TRUE(mem.has_value()) << mem.error();
  EXPECT_EQ(mem->find_region(GuestAddress{0})->file_offset(), nullptr);
  const FileOffset* file = mem->find_region(GuestAddress{0x1000})->file_offset();
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->start(), 0x1000u);
  EXPECT_EQ(mem->read_obj<std::uint8_t>(GuestAddress{0x1000}), 0x40u);
  ASSERT_TRUE(mem->write_obj(std::uint32_t{0xfeedface}, GuestAddress{0x2000}).has_value());
  std::uint32_t in_file = 0;
  ASSERT_EQ(::pread(file->fd(), &in_file, 4, 0x2000), 4);
  EXPECT_EQ(in_file, 0xfeedfaceu);
}

TEST(GuestMemoryMmap, FromRegionsAndIsHugetlbfs) {
  std::vector<GuestRegionMmap<>> regions;
  regions.push_back(*GuestRegionMmap<>::create(*MmapRegion<>::create(0x1000), GuestAddress{0x1000}));
  auto mem = GuestMemoryMmap<>::from_regions(std::move(regions));
  ASSERT_TRUE(mem.has_value());
  const auto* region = mem->find_region(GuestAddress{0x1000});
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->is_hugetlbfs(), std::nullopt);
}

// ---------------------------------------------------------------- seed examples

TEST(GuestMemoryMmap, WriteAt0x1200AndReadBack) {
  auto mem = make({{GuestAddress{0x1000}, 0x400}});
  EXPECT_EQ(mem.write(bytes(1, 2, 3, 4, 5), GuestAddress{0x1200}), 5u);
  std::array<std::byte, 16> buf{};
  EXPECT_EQ(mem.read(buf, GuestAddress{0x1200}), 16u);
  EXPECT_EQ(buf[0], std::byte{1});
  EXPECT_EQ(buf[4], std::byte{5});
  EXPECT_EQ(buf[5], std::byte{0});
  ASSERT_TRUE(mem.write_slice(bytes(1, 2, 3, 4, 5), GuestAddress{0x1000}).has_value());
  ASSERT_TRUE(mem.read_slice(buf, GuestAddress{0x1000}).has_value());
  EXPECT_EQ(buf[4], std::byte{5});
}

TEST(GuestMemoryMmap, GetHostAddressExample) {
  auto mem = make({{GuestAddress{0x1000}, 0x500}});
  auto host = mem.get_host_address(GuestAddress{0x1200});
  ASSERT_TRUE(host.has_value());
  EXPECT_EQ(*host, mem.find_region(GuestAddress{0x1000})->mapping().unsafe_host_ptr() + 0x200);
  EXPECT_EQ(mem.get_host_address(GuestAddress{0x1500}).error(),
            Error::invalid_guest_address(GuestAddress{0x1500}));
}

TEST(GuestMemoryMmap, ReadFromDevUrandomThenReadObj) {
  auto mem = make({{GuestAddress{0x1000}, 0x400}});
  UniqueFd urandom{::open("/dev/urandom", O_RDONLY | O_CLOEXEC)};
  ASSERT_TRUE(urandom.valid());
  BorrowedFd src{urandom};
  const GuestAddress addr{0x1100};
  EXPECT_EQ(mem.read_volatile_from(addr, src, 128), 128u);
  ASSERT_TRUE(mem.read_exact_volatile_from(addr, src, 128).has_value());
  std::array<std::byte, 128> copy{};
  ASSERT_TRUE(mem.read_slice(copy, addr).has_value());
  auto value = mem.read_obj<std::uint32_t>(*addr.checked_add(8));
  ASSERT_TRUE(value.has_value());
  std::uint32_t expected = 0;
  std::memcpy(&expected, copy.data() + 8, 4);
  EXPECT_EQ(*value, expected);
  EXPECT_TRUE(std::any_of(copy.begin(), copy.end(), [](std::byte b) { return b != std::byte{0}; }));
}

TEST(GuestMemoryMmap, WriteVolatileToDevNull) {
  auto mem = make({{GuestAddress{0x1000}, 0x400}});
  UniqueFd null{::open("/dev/null", O_WRONLY | O_CLOEXEC)};
  ASSERT_TRUE(null.valid());
  BorrowedFd dst{null};
  EXPECT_EQ(mem.write_volatile_to(GuestAddress{0x1000}, dst, 128), 128u);
  ASSERT_TRUE(mem.write_all_volatile_to(GuestAddress{0x1000}, dst, 128).has_value());
}

TEST(GuestMemoryMmap, CheckedReadFromAcrossTwoRegions) {
  auto mem = make({{GuestAddress{0x0}, 64}, {GuestAddress{0x40}, 64}});
  const auto image = pattern(0x80);
  SpanReader src{image};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0x30}, src, 0x20), 0x20u);
  std::array<std::byte, 0x20> back{};
  ASSERT_TRUE(mem.read_slice(back, GuestAddress{0x30}).has_value());
  EXPECT_TRUE(std::equal(back.begin(), back.end(), image.begin()));
  EXPECT_EQ(src.remaining().size(), 0x60u);
}

TEST(GuestMemoryMmap, ZeroLengthAccessesSucceedWhereverTheyPoint) {
  auto mem = make({{GuestAddress{0x1000}, 0x1000}});
  const auto image = pattern(0x80);
  for (GuestAddress addr : {GuestAddress{0x1000}, GuestAddress{0x0}, GuestAddress{0x5000},
                            GuestAddress{kTop}}) {
    SCOPED_TRACE(to_string(addr));
    EXPECT_EQ(mem.write({}, addr), 0u);
    EXPECT_EQ(mem.read({}, addr), 0u);
    EXPECT_TRUE(mem.write_slice({}, addr).has_value());
    EXPECT_TRUE(mem.read_slice({}, addr).has_value());
    EXPECT_TRUE(mem.check_range(addr, 0));
    SpanReader src{image};
    EXPECT_EQ(mem.read_volatile_from(addr, src, 0), 0u);
    EXPECT_TRUE(mem.read_exact_volatile_from(addr, src, 0).has_value());
    std::vector<std::byte> out;
    VectorWriter dst{out};
    EXPECT_EQ(mem.write_volatile_to(addr, dst, 0), 0u);
    EXPECT_TRUE(mem.write_all_volatile_to(addr, dst, 0).has_value());
    EXPECT_TRUE(out.empty());
    EXPECT_FALSE(mem.get_slices(addr, 0).next().has_value());
  }
}

TEST(GuestMemoryMmap, AtomicAccesses) {
  const GuestAddress addr{0x1000};
  auto mem = make({{addr, 0x1000}});
  const GuestAddress bad = addr.unchecked_add(0x1000);
  EXPECT_EQ(mem.load<std::uint32_t>(addr, std::memory_order_relaxed), 0u);
  ASSERT_TRUE(mem.store<std::uint32_t>(100, addr, std::memory_order_relaxed).has_value());
  EXPECT_EQ(mem.load<std::uint32_t>(addr, std::memory_order_relaxed), 100u);
  EXPECT_EQ(mem.load<std::uint32_t>(bad, std::memory_order_relaxed).error(),
            Error::invalid_guest_address(bad));
  EXPECT_EQ(mem.store<std::uint32_t>(1, bad, std::memory_order_relaxed).error(),
            Error::invalid_guest_address(bad));
  // Misaligned, and crossing the end of the region.
  EXPECT_EQ(mem.load<std::uint64_t>(GuestAddress{0x1004}, std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0x1004));
  EXPECT_EQ(mem.store<std::uint16_t>(1, GuestAddress{0x1fff}, std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0x1fff));
  // Every width, every order that fits the operation.
  ASSERT_TRUE(mem.store<std::uint8_t>(0xab, GuestAddress{0x1003}, std::memory_order_seq_cst));
  ASSERT_TRUE(mem.store<std::uint16_t>(0xcdef, GuestAddress{0x1006}, std::memory_order_release));
  ASSERT_TRUE(mem.store<std::uint64_t>(0x0102030405060708, GuestAddress{0x1008},
                                       std::memory_order_relaxed));
  EXPECT_EQ(mem.load<std::uint8_t>(GuestAddress{0x1003}, std::memory_order_acquire), 0xabu);
  EXPECT_EQ(mem.load<std::uint16_t>(GuestAddress{0x1006}, std::memory_order_seq_cst), 0xcdefu);
  EXPECT_EQ(mem.load<std::int64_t>(GuestAddress{0x1008}, std::memory_order_consume),
            0x0102030405060708);
}

TEST(GuestMemoryMmap, AtomicAlignmentIsRelativeToTheRegion) {
  auto mem = make({{GuestAddress{0x1001}, 0x1000}});
  EXPECT_TRUE(mem.store<std::uint32_t>(7, GuestAddress{0x1001}, std::memory_order_relaxed));
  EXPECT_EQ(mem.load<std::uint32_t>(GuestAddress{0x1004}, std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0x1004));
  EXPECT_EQ(mem.load<std::uint32_t>(GuestAddress{0x1005}, std::memory_order_relaxed), 0u);
}

// ---------------------------------------------------------------- crossing regions

TEST(GuestMemoryMmap, AccessesCrossAdjacentRegions) {
  auto mem = make({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000},
                   {GuestAddress{0x2000}, 0x1000}});
  const auto data = pattern(0x1100, 3);
  ASSERT_TRUE(mem.write_slice(data, GuestAddress{0xf80}).has_value());
  std::vector<std::byte> back(data.size());
  ASSERT_TRUE(mem.read_slice(back, GuestAddress{0xf80}).has_value());
  EXPECT_EQ(back, data);
  ASSERT_TRUE(mem.write_obj(std::uint64_t{0x1122334455667788}, GuestAddress{0x1ffc}).has_value());
  EXPECT_EQ(mem.read_obj<std::uint64_t>(GuestAddress{0x1ffc}), 0x1122334455667788u);
  EXPECT_EQ(mem.read_obj<std::uint32_t>(GuestAddress{0x2000}), 0x11223344u);
}

TEST(GuestMemoryMmap, AHoleEndsAnAccess) {
  auto mem = make({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1001}, 0x1000}});
  EXPECT_EQ(mem.write(pattern(8), GuestAddress{0xffc}), 4u);
  EXPECT_EQ(mem.write_obj(std::uint64_t{1}, GuestAddress{0xffc}).error(),
            Error::partial_buffer(8, 4));
  EXPECT_EQ(mem.read_obj<std::uint64_t>(GuestAddress{0x1000}).error(),
            Error::invalid_guest_address(GuestAddress{0x1000}));
  EXPECT_FALSE(mem.check_range(GuestAddress{0xfff}, 2));
  EXPECT_TRUE(mem.check_range(GuestAddress{0x1001}, 0x1000));
  EXPECT_FALSE(mem.check_range(GuestAddress{0x1001}, 0x1001));
}

TEST(GuestMemoryMmap, GetSlicesAndStopOnError) {
  auto mem = make({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000},
                   {GuestAddress{0x3000}, 0x1000}});
  std::vector<std::size_t> sizes;
  for (const auto& item : mem.get_slices(GuestAddress{0x800}, 0x1000)) {
    ASSERT_TRUE(item.has_value());
    sizes.push_back(item->size());
  }
  EXPECT_EQ(sizes, (std::vector<std::size_t>{0x800, 0x800}));

  auto into_hole = mem.get_slices(GuestAddress{0x1800}, 0x1000);
  auto first = into_hole.next();
  ASSERT_TRUE(first && first->has_value());
  EXPECT_EQ((*first)->size(), 0x800u);
  auto second = into_hole.next();
  ASSERT_TRUE(second && !second->has_value());
  EXPECT_EQ(second->error(), Error::invalid_guest_address(GuestAddress{0x2000}));
  EXPECT_FALSE(into_hole.next().has_value()) << "nothing after an error";

  auto stopped = mem.get_slices(GuestAddress{0x1800}, 0x1000).stop_on_error();
  ASSERT_TRUE(stopped.has_value());
  std::size_t total = 0;
  for (const auto& slice : *stopped) {
    total += slice.size();
  }
  EXPECT_EQ(total, 0x800u);
  auto nothing = mem.get_slices(GuestAddress{0x2000}, 0x10).stop_on_error();
  EXPECT_EQ(nothing.error(), Error::invalid_guest_address(GuestAddress{0x2000}));

  auto with_access = mem.get_slices(GuestAddress{0}, 0x10, Permissions::Write);
  ASSERT_TRUE(with_access.has_value());
  EXPECT_EQ((*with_access->next())->size(), 0x10u);
}

// Read-write memory at [0, 0x1000) followed directly by read-only memory at [0x1000, 0x2000)
// over a memfd holding pattern(0x1000, 5), and a read-write region at [0x3000, 0x4000).
struct MixedProtection {
  std::shared_ptr<const UniqueFd> rom_file = std::make_shared<const UniqueFd>(testing::memfd(0x1000));
  GuestMemoryMmap<RecordingBitmap> mem;

  MixedProtection() {
    const auto image = pattern(0x1000, 5);
    EXPECT_EQ(::pwrite(rom_file->get(), image.data(), image.size(), 0), 0x1000);
    std::vector<GuestRegionMmap<RecordingBitmap>> regions;
    auto add = [&](Result<MmapRegion<RecordingBitmap>> mapping, std::uint64_t base) {
      EXPECT_TRUE(mapping.has_value());
      regions.push_back(
          *GuestRegionMmap<RecordingBitmap>::create(std::move(*mapping), GuestAddress{base}));
    };
    add(MmapRegion<RecordingBitmap>::create(0x1000), 0);
    add(MmapRegionBuilder<RecordingBitmap>(0x1000)
            .with_file_offset(FileOffset(rom_file, 0))
            .with_protection(Protection::read())
            .build(),
        0x1000);
    add(MmapRegion<RecordingBitmap>::create(0x1000), 0x3000);
    mem = *GuestMemoryMmap<RecordingBitmap>::from_regions(std::move(regions));
  }
};

TEST(GuestMemoryMmap, ReadOnlyRegionRefusesWritesBeforeTheCpuWould) {
  MixedProtection m;
  auto& mem = m.mem;
  EXPECT_EQ(mem.write_obj(std::uint32_t{7}, GuestAddress{0x1008}).error(),
            Error::protection_violation(0x1008, 4, Permissions::Write));
  EXPECT_EQ(mem.store(std::uint16_t{7}, GuestAddress{0x1ffe}, std::memory_order_release).error(),
            Error::protection_violation(0x1ffe, 2, Permissions::Write));
  const auto data = pattern(0x20, 0x40);
  // Crossing from writable into read-only memory ends the access there, as a hole would.
  EXPECT_EQ(mem.write(data, GuestAddress{0xff0}), 0x10u);
  EXPECT_EQ(mem.write_slice(data, GuestAddress{0xff0}).error(), Error::partial_buffer(0x20, 0x10));
  const auto image = pattern(0x1000, 5);
  std::vector<std::byte> back(0x20);
  ASSERT_TRUE(mem.read_slice(back, GuestAddress{0xff0}).has_value()) << "reads cross";
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 0x10, data.begin()));
  EXPECT_TRUE(std::equal(back.begin() + 0x10, back.end(), image.begin()));
  std::vector<std::byte> in_file(0x1000);
  ASSERT_EQ(::pread(m.rom_file->get(), in_file.data(), in_file.size(), 0), 0x1000);
  EXPECT_EQ(in_file, image) << "nothing reached the read-only file";
  const auto marks = mem.find_region(GuestAddress{0})->bitmap().take();
  EXPECT_EQ(marks, (Marks{{0xff0, 0x10}, {0xff0, 0x10}}));
  EXPECT_TRUE(mem.find_region(GuestAddress{0x1000})->bitmap().take().empty());

  EXPECT_EQ(mem.read_obj<std::uint64_t>(GuestAddress{0x1ff8}),
            mem.find_region(GuestAddress{0x1000})->read_obj<std::uint64_t>(MemoryRegionAddress{0xff8}));
  ASSERT_TRUE(mem.write_obj(std::uint64_t{1}, GuestAddress{0x3000}).has_value())
      << "regions after the read-only one are unaffected";
}

TEST(GuestMemoryMmap, SlicesAndRangeChecksTakeTheAccess) {
  MixedProtection m;
  auto& mem = m.mem;
  auto writes = mem.get_slices(GuestAddress{0xff0}, 0x20, Permissions::Write);
  ASSERT_TRUE(writes.has_value());
  auto first = writes->next();
  ASSERT_TRUE(first && first->has_value());
  EXPECT_EQ((*first)->size(), 0x10u);
  auto second = writes->next();
  ASSERT_TRUE(second && !second->has_value());
  EXPECT_EQ(second->error(), Error::protection_violation(0x1000, 0x10, Permissions::Write));
  EXPECT_FALSE(writes->next().has_value());

  for (auto access : {Permissions::No, Permissions::Read}) {
    auto reads = mem.get_slices(GuestAddress{0xff0}, 0x20, access);
    std::size_t total = 0;
    for (const auto& item : *reads) {
      ASSERT_TRUE(item.has_value()) << access.name();
      total += item->size();
    }
    EXPECT_EQ(total, 0x20u);
  }
  std::size_t untyped = 0;
  for (const auto& item : mem.get_slices(GuestAddress{0xff0}, 0x20)) {
    ASSERT_TRUE(item.has_value()) << "views without an access kind are not checked";
    untyped += item->size();
  }
  EXPECT_EQ(untyped, 0x20u);

  EXPECT_FALSE(mem.check_range(GuestAddress{0xff0}, 0x20, Permissions::Write));
  EXPECT_FALSE(mem.check_range(GuestAddress{0x1000}, 1, Permissions::ReadWrite));
  EXPECT_TRUE(mem.check_range(GuestAddress{0xff0}, 0x20, Permissions::Read));
  EXPECT_TRUE(mem.check_range(GuestAddress{0xff0}, 0x20));
  EXPECT_TRUE(mem.check_range(GuestAddress{0x3000}, 0x1000, Permissions::Write));
  EXPECT_FALSE(mem.check_range(GuestAddress{0x1f00}, 0x200, Permissions::Read)) << "a hole";
}

TEST(GuestMemoryMmap, GetSliceStaysInOneRegion) {
  auto mem = make({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}});
  auto slice = mem.get_slice(GuestAddress{0x800}, 0x800);
  ASSERT_TRUE(slice.has_value());
  EXPECT_EQ(slice->size(), 0x800u);
  EXPECT_EQ(mem.get_slice(GuestAddress{0x800}, 0x801).error(), Error::invalid_backend_address(0x800));
  EXPECT_EQ(mem.get_slice(GuestAddress{0x2000}, 1).error(),
            Error::invalid_guest_address(GuestAddress{0x2000}));
  ASSERT_TRUE(slice->write_obj(std::uint16_t{0x55aa}, 0x10).has_value());
  EXPECT_EQ(mem.read_obj<std::uint16_t>(GuestAddress{0x810}), 0x55aau);
}

TEST(GuestMemoryMmap, AddressQueries) {
  auto mem = make({{GuestAddress{0x1000}, 0x400}, {GuestAddress{0x2000}, 0x400}});
  EXPECT_TRUE(mem.address_in_range(GuestAddress{0x1000}));
  EXPECT_TRUE(mem.address_in_range(GuestAddress{0x13ff}));
  EXPECT_FALSE(mem.address_in_range(GuestAddress{0x1400}));
  EXPECT_FALSE(mem.address_in_range(GuestAddress{0xfff}));
  EXPECT_EQ(mem.check_address(GuestAddress{0x2010}), GuestAddress{0x2010});
  EXPECT_EQ(mem.check_address(GuestAddress{0x2400}), std::nullopt);
  EXPECT_EQ(mem.checked_offset(GuestAddress{0x1000}, 0x3ff), GuestAddress{0x13ff});
  EXPECT_EQ(mem.checked_offset(GuestAddress{0x1000}, 0x400), std::nullopt);
  EXPECT_EQ(mem.checked_offset(GuestAddress{kTop}, 1), std::nullopt);
  auto found = mem.to_region_addr(GuestAddress{0x2010});
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->first->start_addr(), GuestAddress{0x2000});
  EXPECT_EQ(found->second, MemoryRegionAddress{0x10});
  EXPECT_EQ(mem.to_region_addr(GuestAddress{0x1800}), std::nullopt);
  EXPECT_EQ(mem.find_region(GuestAddress{0x1800}), nullptr);
  EXPECT_EQ(mem.physical_memory(), &mem);
}

// Region counts around the index's bucket counts (powers of two, twice the regions), in three
// layouts: spread out, with adjacent regions and holes; skewed, every region but the last in
// the index's first bucket, so that lookups there search all of them; and regions at the top
// of the address space.
enum class Spread { Even, Skewed, Top };

void FindRegionAgreesWithALinearScan(Spread layout, int regions) {
  SCOPED_TRACE(::testing::Message() << "layout " << static_cast<int>(layout) << ", " << regions
                                    << " regions");
  std::vector<std::pair<GuestAddress, std::size_t>> ranges;
  std::mt19937_64 rng(static_cast<std::uint64_t>(regions));
  std::uint64_t next = layout == Spread::Top ? kTop - 0x8000 * static_cast<std::uint64_t>(regions)
                                             : rng() % 0x10000;
  for (int i = 0; i < regions; ++i) {
    next += rng() % 3 == 0 ? 0 : (rng() % 0x3000);  // adjacent or a hole
    const std::size_t size = 0x1000 * (1 + rng() % 4);
    if (layout == Spread::Skewed && i == regions - 1 && regions > 1) {
      next = std::uint64_t{1} << 62;
    }
    ranges.emplace_back(GuestAddress{next}, size);
    next += size;
  }
  auto mem = GuestMemoryMmap<>::from_ranges(ranges);
  ASSERT_TRUE(mem.has_value());
  auto expect_found = [&](GuestAddress a) {
    const GuestRegionMmap<>* expected = nullptr;
    for (const auto& region : mem->regions()) {
      if (a >= region.start_addr() && a <= region.last_addr()) {
        expected = &region;
      }
    }
    ASSERT_EQ(mem->find_region(a), expected) << to_string(a);
  };
  const std::uint64_t low = ranges.front().first.raw_value();
  const std::uint64_t span = layout == Spread::Skewed
                                 ? ranges[ranges.size() / 2].first.raw_value() + 0x4000 - low
                                 : next - low;
  for (int i = 0; i < 3000; ++i) {
    expect_found(GuestAddress{low - std::min<std::uint64_t>(low, 0x1000) + rng() % (span + 0x2000)});
  }
  for (const auto& [start, size] : ranges) {
    for (std::uint64_t a : {start.raw_value() - 1, start.raw_value(), start.raw_value() + size - 1,
                            start.raw_value() + size}) {
      expect_found(GuestAddress{a});
    }
  }
  expect_found(GuestAddress{0});
  expect_found(GuestAddress{std::numeric_limits<std::uint64_t>::max()});
}

TEST(GuestMemoryMmap, FindRegionAgreesWithALinearScan) {
  for (Spread layout : {Spread::Even, Spread::Skewed, Spread::Top}) {
    for (int regions : {1, 2, 3, 7, 8, 9, 63, 64, 65, 200, 730}) {
      FindRegionAgreesWithALinearScan(layout, regions);
    }
  }
}

// The lookup remembers where it last moved to and checks that region's neighbours first, so
// its answer must not depend on what came before: every ordered triple of probes, from every
// state the previous probes leave, must find the right region and the right byte in it.
TEST(GuestMemoryMmap, LookupsInEveryOrder) {
  // Regions 0 and 1 adjacent, a hole, region 2, a hole, region 3 ending just below 2^64 - 1
  // (the last address a region's exclusive end allows).
  auto mem = make({{GuestAddress{0}, 0x1000},
                   {GuestAddress{0x1000}, 0x1000},
                   {GuestAddress{0x4000}, 0x1000},
                   {GuestAddress{kTop - 0x1000}, 0x1000}});
  struct Probe {
    std::uint64_t addr;
    int region;  // -1: a hole
  };
  const std::vector<Probe> probes{
      {0, 0},         {0xfff, 0},     {0x1000, 1},         {0x1fff, 1},
      {0x2000, -1},   {0x3fff, -1},   {0x4000, 2},         {0x4fff, 2},
      {0x5000, -1},   {kTop - 0x1001, -1}, {kTop - 0x1000, 3}, {kTop - 1, 3}, {kTop, -1}};
  // Each byte a probe can read holds its own value.
  for (std::size_t i = 0; i < probes.size(); ++i) {
    if (probes[i].region >= 0) {
      ASSERT_TRUE(mem.write_obj(static_cast<std::uint8_t>(0x10 + i), GuestAddress{probes[i].addr}));
    }
  }
  const std::vector<const GuestRegionMmap<>*> regions{&mem.regions()[0], &mem.regions()[1],
                                                      &mem.regions()[2], &mem.regions()[3]};
  auto check = [&](std::size_t i) {
    const Probe& p = probes[i];
    const GuestAddress a{p.addr};
    ASSERT_EQ(mem.find_region(a), p.region < 0 ? nullptr : regions[static_cast<std::size_t>(p.region)])
        << to_string(a);
    auto value = mem.read_obj<std::uint8_t>(a);
    if (p.region < 0) {
      ASSERT_FALSE(value.has_value()) << to_string(a);
      ASSERT_EQ(value.error().code(), ErrorCode::InvalidGuestAddress) << to_string(a);
    } else {
      ASSERT_TRUE(value.has_value()) << to_string(a);
      ASSERT_EQ(*value, 0x10 + i) << to_string(a);
    }
  };
  for (std::size_t i = 0; i < probes.size(); ++i) {
    for (std::size_t j = 0; j < probes.size(); ++j) {
      for (std::size_t k = 0; k < probes.size(); ++k) {
        check(i);
        check(j);
        check(k);
      }
    }
  }
}

// ---------------------------------------------------------------- hot-plug

TEST(GuestMemoryMmap, InsertRegionLeavesTheOldMemoryValid) {
  auto mem = make({{GuestAddress{0}, 0x1000}, {GuestAddress{0x3000}, 0x1000}});
  ASSERT_TRUE(mem.write_obj(std::uint32_t{0x11}, GuestAddress{0x10}).has_value());
  auto region = std::make_shared<const GuestRegionMmap<>>(
      *GuestRegionMmap<>::create(*MmapRegion<>::create(0x2000), GuestAddress{0x1000}));
  auto bigger = mem.insert_region(region);
  ASSERT_TRUE(bigger.has_value());
  EXPECT_EQ(bigger->num_regions(), 3u);
  EXPECT_EQ(mem.num_regions(), 2u);
  EXPECT_EQ(bigger->read_obj<std::uint32_t>(GuestAddress{0x10}), 0x11u) << "regions are shared";
  EXPECT_TRUE(bigger->check_range(GuestAddress{0}, 0x4000));
  EXPECT_FALSE(mem.check_range(GuestAddress{0}, 0x4000));
  auto overlapping = std::make_shared<const GuestRegionMmap<>>(
      *GuestRegionMmap<>::create(*MmapRegion<>::create(0x1000), GuestAddress{0x3800}));
  EXPECT_EQ(bigger->insert_region(overlapping).error(),
            Error::at(ErrorCode::MemoryRegionOverlap, 0x3800));
}

TEST(GuestMemoryMmap, RemoveRegion) {
  auto mem = make({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}});
  EXPECT_EQ(mem.remove_region(GuestAddress{0x1000}, 0x800).error(),
            Error::at(ErrorCode::InvalidGuestRegion, 0x1000, 0x800));
  EXPECT_EQ(mem.remove_region(GuestAddress{0x1800}, 0x1000).error().code(),
            ErrorCode::InvalidGuestRegion);
  auto removed = mem.remove_region(GuestAddress{0x1000}, 0x1000);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->first.num_regions(), 1u);
  EXPECT_EQ(removed->second->start_addr(), GuestAddress{0x1000});
  EXPECT_EQ(mem.num_regions(), 2u);
  EXPECT_FALSE(removed->first.address_in_range(GuestAddress{0x1000}));
  EXPECT_TRUE(mem.address_in_range(GuestAddress{0x1000}));
  auto empty = removed->first.remove_region(GuestAddress{0}, 0x1000);
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->first.num_regions(), 0u);
  EXPECT_EQ(empty->first.read_obj<std::uint8_t>(GuestAddress{0}).error().code(),
            ErrorCode::InvalidGuestAddress);
}

TEST(GuestMemoryMmap, CopiesShareRegions) {
  auto mem = make({{GuestAddress{0}, 0x1000}});
  GuestMemoryMmap<> copy = mem;
  ASSERT_TRUE(copy.write_obj(std::uint8_t{9}, GuestAddress{0x20}).has_value());
  EXPECT_EQ(mem.read_obj<std::uint8_t>(GuestAddress{0x20}), 9u);
  GuestMemoryMmap<> assigned;
  assigned = copy;
  EXPECT_EQ(assigned.read_obj<std::uint8_t>(GuestAddress{0x20}), 9u);
}

// ---------------------------------------------------------------- edge tables

// Adjacent regions, a one-byte hole, and a region whose exclusive end is 2^64 - 1.
struct Layout {
  std::uint64_t start;
  std::uint64_t size;
};
constexpr std::array<Layout, 4> kLayout{{{0x0, 0x1000},
                                         {0x1000, 0x1000},
                                         {0x2001, 0xfff},
                                         {kTop - 0x1000, 0x1000}}};

// Run over untracked and tracked memory: dirty tracking must not change any result.
template <class B>
class EdgeTable : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::pair<GuestAddress, std::size_t>> ranges;
    for (const auto& r : kLayout) {
      ranges.emplace_back(GuestAddress{r.start}, r.size);
    }
    auto built = GuestMemoryMmap<B>::from_ranges(ranges);
    ASSERT_TRUE(built.has_value()) << built.error();
    mem_ = std::move(*built);
  }

  // The bytes in memory from `a` on before a hole or the end (capped at `cap`).
  static std::uint64_t available(std::uint64_t a, std::uint64_t cap) {
    std::uint64_t n = 0;
    while (n < cap) {
      const std::uint64_t at = a + n;
      if (at < a) {
        break;  // wrapped past 2^64
      }
      const auto* r = std::find_if(kLayout.begin(), kLayout.end(), [&](const Layout& l) {
        return at >= l.start && at - l.start < l.size;
      });
      if (r == kLayout.end()) {
        break;
      }
      n += r->start + r->size - at;
    }
    return std::min(n, cap);
  }

  static const Layout* region_of(std::uint64_t a) {
    for (const auto& l : kLayout) {
      if (a >= l.start && a - l.start < l.size) {
        return &l;
      }
    }
    return nullptr;
  }

  static std::vector<std::uint64_t> addresses() {
    std::vector<std::uint64_t> out{0, kTop, kTop - 1, kTop - 8};
    for (const auto& l : kLayout) {
      for (std::uint64_t edge : {l.start, l.start + l.size}) {
        for (int d = -9; d <= 9; ++d) {
          const std::uint64_t a = edge + static_cast<std::uint64_t>(static_cast<std::int64_t>(d));
          if ((d < 0 && a > edge) || (d > 0 && a < edge)) {
            continue;  // wrapped
          }
          out.push_back(a);
        }
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  // What the model says guest memory holds.
  std::byte model_at(std::uint64_t a) const {
    auto it = model_.find(a);
    return it == model_.end() ? std::byte{0} : it->second;
  }

  GuestMemoryMmap<B> mem_;
  std::map<std::uint64_t, std::byte> model_;
};

using BitmapTypes = ::testing::Types<NoBitmap, AtomicBitmap>;
TYPED_TEST_SUITE(EdgeTable, BitmapTypes);

constexpr std::array<std::size_t, 14> kLengths{0, 1, 2, 3, 4, 7, 8, 9, 16, 17, 0xfff, 0x1000,
                                               0x1001, 0x2001};

TYPED_TEST(EdgeTable, WriteAndReadEveryAddressLengthPair) {
  std::uint8_t seed = 1;
  for (std::uint64_t a : TestFixture::addresses()) {
    for (std::size_t len : kLengths) {
      SCOPED_TRACE(::testing::Message() << "addr " << to_string(GuestAddress{a}) << " len " << len);
      const std::uint64_t n = TestFixture::available(a, len);
      const auto data = pattern(len, seed++);

      auto wrote = this->mem_.write(data, GuestAddress{a});
      if (len == 0) {
        EXPECT_EQ(wrote, 0u);
      } else if (n == 0) {
        EXPECT_EQ(wrote.error(), Error::invalid_guest_address(GuestAddress{a}));
      } else {
        EXPECT_EQ(wrote, n);
        for (std::uint64_t i = 0; i < n; ++i) {
          this->model_[a + i] = data[i];
        }
      }

      std::vector<std::byte> back(len, std::byte{0xee});
      auto read = this->mem_.read(back, GuestAddress{a});
      if (len == 0) {
        EXPECT_EQ(read, 0u);
      } else if (n == 0) {
        EXPECT_EQ(read.error(), Error::invalid_guest_address(GuestAddress{a}));
      } else {
        ASSERT_EQ(read, n);
        for (std::uint64_t i = 0; i < n; ++i) {
          ASSERT_EQ(back[i], this->model_at(a + i)) << "byte " << i;
        }
        for (std::uint64_t i = n; i < len; ++i) {
          ASSERT_EQ(back[i], std::byte{0xee}) << "read past the hole at byte " << i;
        }
      }

      EXPECT_EQ(this->mem_.check_range(GuestAddress{a}, len), len == 0 || n == len);
      auto slice_read = this->mem_.read_slice(back, GuestAddress{a});
      if (len == 0 || n == len) {
        EXPECT_TRUE(slice_read.has_value());
      } else if (n == 0) {
        EXPECT_EQ(slice_read.error(), Error::invalid_guest_address(GuestAddress{a}));
      } else {
        EXPECT_EQ(slice_read.error(), Error::partial_buffer(len, n));
      }
    }
  }
}

TYPED_TEST(EdgeTable, WriteSliceWritesTheFirstBytesBeforeFailing) {
  for (std::uint64_t a : TestFixture::addresses()) {
    for (std::size_t len : kLengths) {
      SCOPED_TRACE(::testing::Message() << "addr " << to_string(GuestAddress{a}) << " len " << len);
      const std::uint64_t n = TestFixture::available(a, len);
      const auto data = pattern(len, static_cast<std::uint8_t>(a + len));
      auto r = this->mem_.write_slice(data, GuestAddress{a});
      if (len == 0 || n == len) {
        EXPECT_TRUE(r.has_value());
      } else if (n == 0) {
        EXPECT_EQ(r.error(), Error::invalid_guest_address(GuestAddress{a}));
      } else {
        EXPECT_EQ(r.error(), Error::partial_buffer(len, n));
      }
      if (n > 0 && len > 0) {
        std::vector<std::byte> back(n);
        ASSERT_EQ(this->mem_.read(back, GuestAddress{a}), n);
        EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin()));
      }
    }
  }
}

TYPED_TEST(EdgeTable, ObjectsAndAtomics) {
  for (std::uint64_t a : TestFixture::addresses()) {
    SCOPED_TRACE(to_string(GuestAddress{a}));
    const std::uint64_t n = TestFixture::available(a, 8);
    auto wrote = this->mem_.write_obj(std::uint64_t{0x0807060504030201}, GuestAddress{a});
    auto read = this->mem_.template read_obj<std::uint64_t>(GuestAddress{a});
    if (n == 8) {
      EXPECT_TRUE(wrote.has_value());
      EXPECT_EQ(read, 0x0807060504030201u);
    } else if (n == 0) {
      EXPECT_EQ(wrote.error(), Error::invalid_guest_address(GuestAddress{a}));
      EXPECT_EQ(read.error(), Error::invalid_guest_address(GuestAddress{a}));
    } else {
      EXPECT_EQ(wrote.error(), Error::partial_buffer(8, n));
      EXPECT_EQ(read.error(), Error::partial_buffer(8, n));
    }

    const Layout* region = TestFixture::region_of(a);
    auto stored = this->mem_.template store<std::uint32_t>(0xa5a5a5a5, GuestAddress{a}, std::memory_order_seq_cst);
    auto loaded = this->mem_.template load<std::uint32_t>(GuestAddress{a}, std::memory_order_seq_cst);
    if (region == nullptr) {
      EXPECT_EQ(stored.error(), Error::invalid_guest_address(GuestAddress{a}));
      EXPECT_EQ(loaded.error(), Error::invalid_guest_address(GuestAddress{a}));
      continue;
    }
    const std::uint64_t offset = a - region->start;
    if (offset + 4 > region->size || offset % 4 != 0) {
      EXPECT_EQ(stored.error(), Error::invalid_backend_address(a));
      EXPECT_EQ(loaded.error(), Error::invalid_backend_address(a));
    } else {
      EXPECT_TRUE(stored.has_value());
      EXPECT_EQ(loaded, 0xa5a5a5a5u);
    }
  }
}

// An object of N bytes, with or without a default constructor: read_obj builds each kind in
// its result its own way, and small and large objects crossing regions take different paths.
template <std::size_t N, bool kDefault>
struct Obj {
  std::array<std::uint8_t, N> bytes;
};
template <std::size_t N>
struct Obj<N, false> {
  explicit Obj(std::uint8_t fill) { bytes.fill(fill); }
  std::array<std::uint8_t, N> bytes;
};
static_assert(ByteValued<Obj<96, false>> && !std::is_default_constructible_v<Obj<96, false>>);

template <std::size_t N, bool kDefault, class Mem>
void objects_at_every_split(Mem& mem, std::uint64_t (*available)(std::uint64_t, std::uint64_t),
                            std::uint8_t seed) {
  using T = Obj<N, kDefault>;
  for (const auto& l : kLayout) {
    const std::uint64_t edge = l.start + l.size;  // an adjacent region, a hole, or 2^64 - 1
    for (std::uint64_t k = 0; k <= N; ++k) {
      const std::uint64_t a = edge - k;
      SCOPED_TRACE(::testing::Message() << "size " << N << " at " << to_string(GuestAddress{a}));
      const std::uint64_t n = available(a, N);
      T value = std::bit_cast<T>(std::array<std::uint8_t, N>{});
      for (std::size_t i = 0; i < N; ++i) {
        value.bytes[i] = static_cast<std::uint8_t>(seed + k + i);
      }
      auto wrote = mem.write_obj(value, GuestAddress{a});
      auto read = mem.template read_obj<T>(GuestAddress{a});
      if (n == 0) {
        EXPECT_EQ(wrote.error(), Error::invalid_guest_address(GuestAddress{a}));
        EXPECT_EQ(read.error(), Error::invalid_guest_address(GuestAddress{a}));
        continue;
      }
      if (n < N) {
        EXPECT_EQ(wrote.error(), Error::partial_buffer(N, n));
        EXPECT_EQ(read.error(), Error::partial_buffer(N, n));
      } else {
        EXPECT_TRUE(wrote.has_value());
        ASSERT_TRUE(read.has_value()) << read.error();
        EXPECT_EQ(read->bytes, value.bytes);
      }
      // The bytes before the hole were written, and only those.
      std::vector<std::byte> back(N, std::byte{0xee});
      ASSERT_EQ(mem.read(back, GuestAddress{a}), n);
      for (std::size_t i = 0; i < N; ++i) {
        ASSERT_EQ(back[i], i < n ? std::byte{value.bytes[i]} : std::byte{0xee}) << "byte " << i;
      }
    }
  }
}

TYPED_TEST(EdgeTable, ObjectsOfEverySizeAtEverySplit) {
  objects_at_every_split<3, true>(this->mem_, &TestFixture::available, 1);
  objects_at_every_split<8, true>(this->mem_, &TestFixture::available, 2);
  objects_at_every_split<16, true>(this->mem_, &TestFixture::available, 3);
  objects_at_every_split<17, true>(this->mem_, &TestFixture::available, 4);
  objects_at_every_split<96, true>(this->mem_, &TestFixture::available, 5);
  objects_at_every_split<256, true>(this->mem_, &TestFixture::available, 6);
  objects_at_every_split<12, false>(this->mem_, &TestFixture::available, 7);
  objects_at_every_split<96, false>(this->mem_, &TestFixture::available, 8);
}

// Zircon-style table of hostile addresses with hostile lengths: nothing may crash, and the
// counts must match the model.
TYPED_TEST(EdgeTable, HostileAddressesAndLengths) {
  constexpr std::array<std::uint64_t, 12> kHostile{
      0, 0xfff, 0x2000, 0x2001, std::uint64_t{1} << 32, std::uint64_t{1} << 63,
      kTop - 0x1001, kTop - 0x1000, kTop - 2, kTop - 1, kTop, 0xdeadbeefcafebabe};
  constexpr std::array<std::size_t, 4> kHuge{std::numeric_limits<std::size_t>::max(),
                                             std::numeric_limits<std::size_t>::max() / 2,
                                             std::size_t{1} << 40, 0x10000};
  const auto data = pattern(64);
  for (std::uint64_t a : kHostile) {
    for (std::size_t len : kHuge) {
      SCOPED_TRACE(::testing::Message() << to_string(GuestAddress{a}) << " len " << len);
      const std::uint64_t n = TestFixture::available(a, len);
      EXPECT_EQ(this->mem_.check_range(GuestAddress{a}, len), n == len);
      std::uint64_t total = 0;
      for (const auto& item : this->mem_.get_slices(GuestAddress{a}, len)) {
        if (!item.has_value()) {
          break;
        }
        total += item->size();
      }
      EXPECT_EQ(total, n);
      SpanReader src{data};
      auto moved = this->mem_.read_volatile_from(GuestAddress{a}, src, len);
      if (n == 0) {
        EXPECT_EQ(moved.error(), Error::invalid_guest_address(GuestAddress{a}));
      } else {
        EXPECT_EQ(moved, std::min<std::uint64_t>(n, data.size()));
      }
    }
  }
}

// ---------------------------------------------------------------- dirty reporting

TEST(GuestMemoryMmapDirty, EveryWritePathReportsExactlyTheBytesItWrote) {
  auto built = GuestMemoryMmap<RecordingBitmap>::from_ranges(
      {{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}, {GuestAddress{0x3000}, 0x1000}});
  ASSERT_TRUE(built.has_value());
  auto& mem = *built;
  auto marks = [&](std::size_t i) { return mem.region_ptrs()[i]->bitmap().take(); };

  ASSERT_TRUE(mem.write(pattern(8), GuestAddress{0xffc}).has_value());
  EXPECT_EQ(marks(0), (Marks{{0xffc, 4}}));
  EXPECT_EQ(marks(1), (Marks{{0, 4}}));

  EXPECT_EQ(mem.write_slice(pattern(32), GuestAddress{0x1ff0}).error(), Error::partial_buffer(32, 16));
  EXPECT_EQ(marks(1), (Marks{{0xff0, 16}})) << "a partial write marks what was written";
  EXPECT_EQ(marks(2), Marks{});

  ASSERT_TRUE(mem.write_obj(std::uint64_t{1}, GuestAddress{0x3008}).has_value());
  EXPECT_EQ(marks(2), (Marks{{8, 8}}));
  ASSERT_TRUE(mem.store<std::uint16_t>(1, GuestAddress{0x3002}, std::memory_order_relaxed));
  EXPECT_EQ(marks(2), (Marks{{2, 2}}));
  EXPECT_FALSE(mem.store<std::uint16_t>(1, GuestAddress{0x3001}, std::memory_order_relaxed));
  EXPECT_EQ(marks(2), Marks{}) << "a refused store marks nothing";

  const auto image = pattern(0x100);
  SpanReader reader{image};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0xf80}, reader, 0x100), 0x100u);
  EXPECT_EQ(marks(0), (Marks{{0xf80, 0x80}}));
  EXPECT_EQ(marks(1), (Marks{{0, 0x80}}));

  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end{pipe_fds[0]};
  UniqueFd write_end{pipe_fds[1]};
  ASSERT_EQ(::write(write_end.get(), image.data(), 0x30), 0x30);
  BorrowedFd pipe{read_end};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0xfe0}, pipe, 0x100), 0x30u)
      << "one readv straight into both regions, short because the pipe had 0x30 bytes";
  EXPECT_EQ(marks(0), (Marks{{0xfe0, 0x20}}));
  EXPECT_EQ(marks(1), (Marks{{0, 0x10}}));

  std::vector<std::byte> sink(0x2000);
  (void)mem.read(sink, GuestAddress{0});
  (void)mem.read_slice(sink, GuestAddress{0});
  (void)mem.read_obj<std::uint64_t>(GuestAddress{0xffc});
  (void)mem.load<std::uint32_t>(GuestAddress{0}, std::memory_order_relaxed);
  std::vector<std::byte> out;
  VectorWriter writer{out};
  EXPECT_EQ(mem.write_volatile_to(GuestAddress{0}, writer, 0x2000), 0x2000u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(marks(i), Marks{}) << "reads never mark, region " << i;
  }
}

// A source that copies part of what it was offered and then fails, as read(2) may with EFAULT,
// or claims more than it was offered: its bytes are in guest memory but the call returned no
// count, so every byte it was offered is reported.
struct WritesThenFails {
  std::size_t written = 0;
  bool lie = false;
  Result<std::size_t> read_volatile(const VolatileSlice<>& dst) {
    const auto data = pattern(dst.size());
    written = dst.copy_from(std::span(data).first(dst.size() / 2));
    if (lie) {
      return dst.size() + 1;
    }
    return std::unexpected(Error::io(EFAULT));
  }
};

TEST(GuestMemoryMmapDirty, ASourceThatFailsOrLiesMarksEverythingItWasOffered) {
  auto built = GuestMemoryMmap<RecordingBitmap>::from_ranges(
      {{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}});
  ASSERT_TRUE(built.has_value());
  auto& mem = *built;
  auto marks = [&](std::size_t i) { return mem.region_ptrs()[i]->bitmap().take(); };

  WritesThenFails fails;
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0x100}, fails, 0x40).error(), Error::io(EFAULT));
  EXPECT_EQ(fails.written, 0x20u);
  EXPECT_EQ(marks(0), (Marks{{0x100, 0x40}})) << "one piece";

  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0xfe0}, fails, 0x40).error(), Error::io(EFAULT));
  EXPECT_EQ(marks(0), (Marks{{0xfe0, 0x20}})) << "the first piece of two, where the call failed";
  EXPECT_EQ(marks(1), Marks{}) << "the source was never offered the second piece";

  WritesThenFails liar{.lie = true};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0x200}, liar, 0x40).error().code(),
            ErrorCode::CallbackOutOfRange);
  EXPECT_EQ(marks(0), (Marks{{0x200, 0x40}}));
  EXPECT_EQ(mem.read_exact_volatile_from(GuestAddress{0xff0}, liar, 0x40).error().code(),
            ErrorCode::CallbackOutOfRange);
  EXPECT_EQ(marks(0), (Marks{{0xff0, 0x10}}));
  EXPECT_EQ(marks(1), Marks{});

  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end{pipe_fds[0]};
  UniqueFd write_end{pipe_fds[1]};
  ASSERT_EQ(::fcntl(read_end.get(), F_SETFL, O_NONBLOCK), 0);
  BorrowedFd empty_pipe{read_end};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0xfe0}, empty_pipe, 0x40).error(),
            Error::io(EAGAIN));
  EXPECT_EQ(marks(0), (Marks{{0xfe0, 0x20}})) << "a failed readv marks both pieces it was offered";
  EXPECT_EQ(marks(1), (Marks{{0, 0x20}}));
}

// ---------------------------------------------------------------- races

// The racing-writer test of vm-memory's guest_memory.rs: an object whose first member (of
// type T) ends exactly at the end of one region, the rest in the next. The writer flips all
// bits of that member while the reader checks that it never sees a mix of old and new bytes.
template <class T>
void NonAtomicAccessAtRegionJunction() {
  struct Data {
    T val;
    std::array<std::uint8_t, 8> some_bytes;
  };
  static_assert(alignof(Data) == alignof(T) && sizeof(T) == alignof(T));
  static_assert(sizeof(Data) == sizeof(T) + 8, "no padding");
  static_assert(ByteValued<Data>);

  constexpr std::size_t kRegion = 0x1000;
  const GuestAddress start{0};
  const GuestAddress data_start{kRegion - sizeof(T)};
  auto mem = GuestMemoryMmap<>::from_ranges({{start, kRegion}, {GuestAddress{kRegion}, kRegion}});
  ASSERT_TRUE(mem.has_value());

  Data data{T{0}, {1, 2, 4, 16, 32, 64, 128, 255}};
  ASSERT_TRUE(mem->write_obj(data, data_start).has_value());
  auto first = mem->read_obj<Data>(data_start);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->val, data.val);
  EXPECT_EQ(first->some_bytes, data.some_bytes);

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1000);
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> torn{0};
  std::atomic<std::uint64_t> reads{0};
  std::thread reader([&] {
    const GuestMemoryMmap<> copy = *mem;
    std::uint64_t count = 0;
    while (!done.load(std::memory_order_relaxed)) {
      auto seen = copy.read_obj<Data>(data_start);
      if (!seen.has_value()) {
        torn.fetch_add(1);
        continue;
      }
      std::array<std::uint8_t, sizeof(T)> raw{};
      std::memcpy(raw.data(), &seen->val, sizeof(T));
      if (std::any_of(raw.begin(), raw.end(), [&](std::uint8_t b) { return b != raw[0]; })) {
        torn.fetch_add(1);
      }
      ++count;
    }
    reads.store(count);
  });
  std::uint64_t writes = 0;
  std::uint64_t failed_writes = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 1024; ++i) {
      failed_writes += !mem->write_obj(data, data_start).has_value();
      data.val = static_cast<T>(~data.val);
      ++writes;
    }
  }
  done.store(true);
  reader.join();
  EXPECT_EQ(failed_writes, 0u);
  EXPECT_EQ(torn.load(), 0u) << "after " << reads.load() << " reads and " << writes << " writes";
  EXPECT_GT(reads.load(), 0u);
}

TEST(GuestMemoryMmapRace, NonAtomicAccessU16) { NonAtomicAccessAtRegionJunction<std::uint16_t>(); }
TEST(GuestMemoryMmapRace, NonAtomicAccessU32) { NonAtomicAccessAtRegionJunction<std::uint32_t>(); }
TEST(GuestMemoryMmapRace, NonAtomicAccessU64) { NonAtomicAccessAtRegionJunction<std::uint64_t>(); }

TEST(GuestMemoryMmap, NullRegionIsRefused) {
  using Mem = GuestMemoryMmap<>;
  auto region = std::make_shared<const GuestRegionMmap<>>(
      *GuestRegionMmap<>::create(*MmapRegion<>::create(0x1000), GuestAddress{0x1000}));
  const Error no_region = Error::at(ErrorCode::InvalidGuestRegion, 0, 0);

  EXPECT_EQ(Mem::from_arc_regions({nullptr}).error(), no_region);
  EXPECT_EQ(Mem::from_arc_regions({region, nullptr}).error(), no_region);
  EXPECT_EQ(Mem::from_arc_regions({nullptr, region}).error(), no_region);

  auto mem = Mem::from_arc_regions({region});
  ASSERT_TRUE(mem.has_value()) << mem.error();
  EXPECT_EQ(mem->insert_region(nullptr).error(), no_region);
  EXPECT_EQ(Mem().insert_region(nullptr).error(), no_region);
  // The memory is unchanged and still works.
  ASSERT_EQ(mem->num_regions(), 1u);
  EXPECT_EQ(mem->write_obj(std::uint32_t{0x01020304}, GuestAddress{0x1ffc}), Result<void>());
  EXPECT_EQ(mem->read_obj<std::uint32_t>(GuestAddress{0x1ffc}), Result<std::uint32_t>(0x01020304));
}

}  // namespace
}  // namespace guestmem
