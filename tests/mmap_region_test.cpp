#include "guestmem/mmap_region.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace guestmem {
namespace {

TEST(FileOffset, SharesTheFile) {
  FileOffset offset(testing::memfd(0x1000), 1234);
  EXPECT_EQ(offset.start(), 1234u);
  EXPECT_EQ(&offset.file(), offset.arc().get());
  EXPECT_EQ(offset.fd(), offset.file().get());
  FileOffset other(offset.arc(), 0);
  EXPECT_EQ(other.fd(), offset.fd());
  EXPECT_EQ(offset.arc().use_count(), 2);
}

TEST(MmapRegion, Anonymous) {
  auto r = MmapRegion<>::create(0x3000);
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_EQ(r->size(), 0x3000u);
  EXPECT_EQ(r->prot(), PROT_READ | PROT_WRITE);
  EXPECT_EQ(r->flags(), MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
  EXPECT_TRUE(r->owned());
  EXPECT_EQ(r->file_offset(), nullptr);
  EXPECT_EQ(r->is_hugetlbfs(), std::nullopt);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(r->unsafe_host_ptr()) % detail::page_size(), 0u);
  auto slice = r->get_slice(0x2ff0, 0x10);
  ASSERT_TRUE(slice.has_value());
  ASSERT_TRUE(slice->write_obj(std::uint32_t{5}, 0xc).has_value());
  EXPECT_EQ(r->as_volatile_slice().read_obj<std::uint32_t>(0x2ffc), 5u);
  EXPECT_EQ(r->get_slice(0x2ff0, 0x11).error(), Error::out_of_bounds(0x2ff0, 0x11, 0x3000));
}

TEST(MmapRegion, ZeroSizeFailsWithEinval) {
  auto r = MmapRegion<>::create(0);
  EXPECT_EQ(r.error(), Error::mapping_failed(EINVAL, 0));
}

TEST(MmapRegion, FileBackedWritesReachTheFile) {
  FileOffset offset(testing::memfd(0x3000), 0x1000);
  const int fd = offset.fd();
  auto r = MmapRegion<>::from_file(std::move(offset), 0x2000);
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_EQ(r->flags(), MAP_SHARED | MAP_NORESERVE);
  ASSERT_NE(r->file_offset(), nullptr);
  EXPECT_EQ(r->file_offset()->start(), 0x1000u);
  EXPECT_EQ(r->is_hugetlbfs(), false);
  ASSERT_TRUE(r->as_volatile_slice().write_obj(std::uint64_t{0x1122334455667788}, 0x10).has_value());
  std::uint64_t in_file = 0;
  ASSERT_EQ(::pread(fd, &in_file, 8, 0x1010), 8);
  EXPECT_EQ(in_file, 0x1122334455667788u);
}

TEST(MmapRegion, FileErrors) {
  EXPECT_EQ(MmapRegion<>::from_file(FileOffset(testing::memfd(0x1000), 0), 0x1001).error(),
            Error::mapping_past_eof(0, 0x1001, 0x1000));
  EXPECT_EQ(MmapRegion<>::from_file(FileOffset(testing::memfd(0x1000), 0x1000), 1).error(),
            Error::mapping_past_eof(0x1000, 1, 0x1000));
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max() - 0xfff;
  EXPECT_EQ(MmapRegion<>::from_file(FileOffset(testing::memfd(0x1000), huge), 0x1000).error(),
            Error::at(ErrorCode::InvalidOffsetLength, huge, 0x1000));
  auto unaligned = MmapRegion<>::from_file(FileOffset(testing::memfd(0x2000), 0x10), 0x1000);
  EXPECT_EQ(unaligned.error().code(), ErrorCode::MappingFailed);
  EXPECT_EQ(unaligned.error().os_error(), EINVAL);
}

TEST(MmapRegion, MapFixedIsRefused) {
  auto r = MmapRegionBuilder<>(0x1000).with_mmap_flags(MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED).build();
  EXPECT_EQ(r.error(), Error(ErrorCode::MapFixed));
}

TEST(MmapRegion, ExternalMappingIsNotUnmapped) {
  void* raw = ::mmap(nullptr, 0x2000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(raw, MAP_FAILED);
  auto* base = static_cast<std::uint8_t*>(raw);
  {
    auto r = MmapRegionBuilder<>(0x2000)
                 .with_mmap_prot(PROT_READ | PROT_WRITE)
                 .with_mmap_flags(MAP_PRIVATE | MAP_ANONYMOUS)
                 .unsafe_with_raw_mmap_pointer(base)
                 .build();
    ASSERT_TRUE(r.has_value()) << r.error();
    EXPECT_FALSE(r->owned());
    EXPECT_EQ(r->unsafe_host_ptr(), base);
    ASSERT_TRUE(r->as_volatile_slice().write_obj(std::uint8_t{0x5a}, 0x1fff).has_value());
  }
  EXPECT_EQ(base[0x1fff], 0x5a) << "still mapped after the region is gone";
  auto misaligned = MmapRegionBuilder<>(0x1000).unsafe_with_raw_mmap_pointer(base + 1).build();
  EXPECT_EQ(misaligned.error(),
            Error::at(ErrorCode::InvalidPointer, reinterpret_cast<std::uintptr_t>(base + 1)));
  ASSERT_EQ(::munmap(raw, 0x2000), 0);
}

TEST(MmapRegion, ProtAndHugetlbfsAsConfigured) {
  auto r = MmapRegionBuilder<>(0x1000).with_mmap_prot(PROT_READ).with_hugetlbfs(true).build();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->prot(), PROT_READ);
  EXPECT_EQ(r->is_hugetlbfs(), true);
}

TEST(MmapRegion, FdsOverlapComparesFilesNotDescriptors) {
  UniqueFd fd = testing::memfd(0x4000);
  UniqueFd dup{::dup(fd.get())};
  auto shared = std::make_shared<const UniqueFd>(std::move(fd));
  auto a = MmapRegion<>::from_file(FileOffset(shared, 0), 0x2000);
  auto b = MmapRegion<>::from_file(FileOffset(shared, 0x1000), 0x2000);
  auto c = MmapRegion<>::from_file(FileOffset(shared, 0x2000), 0x2000);
  auto d = MmapRegion<>::from_file(FileOffset(std::move(dup), 0x1000), 0x1000);
  auto other = MmapRegion<>::from_file(FileOffset(testing::memfd(0x4000), 0), 0x2000);
  auto anon = MmapRegion<>::create(0x1000);
  ASSERT_TRUE(a && b && c && d && other && anon);
  EXPECT_TRUE(a->fds_overlap(*b));
  EXPECT_TRUE(b->fds_overlap(*a));
  EXPECT_FALSE(a->fds_overlap(*c)) << "adjacent file ranges do not overlap";
  EXPECT_TRUE(a->fds_overlap(*d)) << "a second descriptor of the same file";
  EXPECT_FALSE(a->fds_overlap(*other));
  EXPECT_FALSE(a->fds_overlap(*anon));
  EXPECT_FALSE(anon->fds_overlap(*anon));
}

TEST(MmapRegion, MovesKeepTheMapping) {
  auto r = MmapRegion<>::create(0x1000);
  ASSERT_TRUE(r.has_value());
  std::uint8_t* ptr = r->unsafe_host_ptr();
  MmapRegion<> moved = std::move(*r);
  EXPECT_EQ(moved.unsafe_host_ptr(), ptr);
  ASSERT_TRUE(moved.as_volatile_slice().write_obj(std::uint8_t{1}, 0).has_value());
}

}  // namespace
}  // namespace guestmem
