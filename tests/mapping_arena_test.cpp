#include "guestmem/mapping_arena.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/mmap_region.hpp"
#include "guestmem/volatile_slice.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::is_mapped;
using testing::pattern;
using testing::vma_at;

const std::size_t kPage = detail::page_size();

// A memfd of `pages` pages filled with pattern(…, seed).
UniqueFd filled_memfd(std::size_t pages, std::uint8_t seed) {
  UniqueFd fd = testing::memfd(pages * kPage);
  const auto image = pattern(pages * kPage, seed);
  EXPECT_EQ(::pwrite(fd.get(), image.data(), image.size(), 0), static_cast<ssize_t>(image.size()));
  return fd;
}

// A view of arena bytes [offset, offset + size), which the test knows hold a mapping.
VolatileSlice<> view(const MappingArena& arena, std::size_t offset, std::size_t size) {
  // SAFETY: the callers only view ranges where they added a read-write mapping.
  return VolatileSlice<>::from_raw_parts(arena.unsafe_host_ptr() + offset, size);
}

TEST(MappingArena, CreateReservesAnInaccessibleRange) {
  auto arena = MappingArena::create(16 * kPage);
  ASSERT_TRUE(arena.has_value()) << arena.error();
  EXPECT_EQ(arena->size(), 16 * kPage);
  EXPECT_TRUE(arena->mappings().empty());
  auto vma = vma_at(arena->unsafe_host_ptr());
  ASSERT_TRUE(vma.has_value());
  EXPECT_EQ(vma->perms, "---p");
  EXPECT_TRUE(is_mapped(arena->unsafe_host_ptr(), 16 * kPage));

  EXPECT_EQ(MappingArena::create(kPage + 1).error(),
            Error::at(ErrorCode::NotPageAligned, kPage + 1, kPage));
  EXPECT_EQ(MappingArena::create(0).error(), Error::mapping_failed(EINVAL, 0));

  std::uint8_t* base = arena->unsafe_host_ptr();
  { MappingArena gone = std::move(*arena); }
  EXPECT_FALSE(is_mapped(base, 16 * kPage)) << "the arena unmaps its range";
}

TEST(MappingArena, AddMapsTheFileAtTheOffset) {
  auto arena = MappingArena::create(16 * kPage);
  ASSERT_TRUE(arena.has_value());
  UniqueFd fd = filled_memfd(4, 7);
  ASSERT_TRUE(arena->add_fd_mapping(4 * kPage, 2 * kPage, BorrowedFd{fd}, kPage,
                                    Protection::read_write())
                  .has_value());
  EXPECT_EQ(arena->mappings().size(), 1u);
  EXPECT_EQ(arena->mappings()[0],
            (ArenaMapping{4 * kPage, 2 * kPage, kPage, Protection::read_write()}));

  std::uint8_t* base = arena->unsafe_host_ptr();
  auto inside = vma_at(base + 4 * kPage);
  ASSERT_TRUE(inside.has_value());
  EXPECT_EQ(inside->perms, "rw-s");
  EXPECT_EQ(inside->start, reinterpret_cast<std::uintptr_t>(base + 4 * kPage));
  EXPECT_EQ(inside->end, reinterpret_cast<std::uintptr_t>(base + 6 * kPage));
  EXPECT_EQ(vma_at(base + 4 * kPage - 1)->perms, "---p");
  EXPECT_EQ(vma_at(base + 6 * kPage)->perms, "---p");

  // The arena shows the file from fd_offset on, and writes reach the file.
  std::vector<std::byte> seen(2 * kPage);
  ASSERT_TRUE(view(*arena, 4 * kPage, 2 * kPage).read_slice(seen, 0).has_value());
  const auto image = pattern(4 * kPage, 7);
  EXPECT_TRUE(std::equal(seen.begin(), seen.end(), image.begin() + static_cast<std::ptrdiff_t>(kPage)));
  ASSERT_TRUE(view(*arena, 4 * kPage, 2 * kPage).write_obj(std::uint32_t{0xa5a5a5a5}, 8).has_value());
  std::uint32_t in_file = 0;
  ASSERT_EQ(::pread(fd.get(), &in_file, 4, static_cast<off_t>(kPage + 8)), 4);
  EXPECT_EQ(in_file, 0xa5a5a5a5u);

  // The mapping holds its own reference to the file.
  const int raw = fd.get();
  fd.reset();
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);
  EXPECT_EQ(view(*arena, 4 * kPage, 2 * kPage).read_obj<std::uint32_t>(8), 0xa5a5a5a5u);
}

TEST(MappingArena, ReadOnlyMapping) {
  auto arena = MappingArena::create(4 * kPage);
  ASSERT_TRUE(arena.has_value());
  UniqueFd fd = filled_memfd(1, 1);
  ASSERT_TRUE(arena->add_fd_mapping(0, kPage, BorrowedFd{fd}, 0, Protection::read()).has_value());
  EXPECT_EQ(vma_at(arena->unsafe_host_ptr())->perms, "r--s");
  // SAFETY: the page holds a read-only mapping: the child process faults writing it.
  EXPECT_DEATH(*static_cast<volatile std::uint8_t*>(arena->unsafe_host_ptr()) = 1, "");
}

TEST(MappingArena, RefusesMisalignedOutOfRangeAndOverlappingMappings) {
  auto arena = MappingArena::create(8 * kPage);
  ASSERT_TRUE(arena.has_value());
  UniqueFd fd = filled_memfd(4, 0);
  const BorrowedFd file{fd};
  const auto rw = Protection::read_write();
  ASSERT_TRUE(arena->add_fd_mapping(2 * kPage, 2 * kPage, file, 0, rw).has_value());

  EXPECT_EQ(arena->add_fd_mapping(kPage + 1, kPage, file, 0, rw).error(),
            Error::at(ErrorCode::NotPageAligned, kPage + 1, kPage));
  EXPECT_EQ(arena->add_fd_mapping(0, kPage - 8, file, 0, rw).error(),
            Error::at(ErrorCode::NotPageAligned, kPage - 8, kPage));
  EXPECT_EQ(arena->add_fd_mapping(0, kPage, file, 0x10, rw).error(),
            Error::at(ErrorCode::NotPageAligned, 0x10, kPage));
  EXPECT_EQ(arena->add_fd_mapping(0, 0, file, 0, rw).error(), Error::invalid_range(0, 0, 8 * kPage));
  EXPECT_EQ(arena->add_fd_mapping(7 * kPage, 2 * kPage, file, 0, rw).error(),
            Error::invalid_range(7 * kPage, 2 * kPage, 8 * kPage));
  EXPECT_EQ(arena->add_fd_mapping(9 * kPage, kPage, file, 0, rw).error(),
            Error::invalid_range(9 * kPage, kPage, 8 * kPage));
  EXPECT_EQ(arena->add_fd_mapping(kPage, 2 * kPage, file, 0, rw).error(),
            Error::at(ErrorCode::MappingOverlap, kPage, 2 * kPage));
  EXPECT_EQ(arena->add_fd_mapping(3 * kPage, kPage, file, 0, rw).error(),
            Error::at(ErrorCode::MappingOverlap, 3 * kPage, kPage));
  EXPECT_EQ(arena->add_fd_mapping(6 * kPage, 2 * kPage, file, 3 * kPage, rw).error(),
            Error::mapping_past_eof(3 * kPage, 2 * kPage, 4 * kPage));

  // Adjacent on both sides is not an overlap.
  EXPECT_TRUE(arena->add_fd_mapping(kPage, kPage, file, 0, rw).has_value());
  EXPECT_TRUE(arena->add_fd_mapping(4 * kPage, kPage, file, 0, rw).has_value());
  ASSERT_EQ(arena->mappings().size(), 3u);
  EXPECT_EQ(arena->mappings()[0].offset, kPage);
  EXPECT_EQ(arena->mappings()[1].offset, 2 * kPage);
  EXPECT_EQ(arena->mappings()[2].offset, 4 * kPage);
}

TEST(MappingArena, FailedMmapLeavesTheHoleReserved) {
  auto arena = MappingArena::create(4 * kPage);
  ASSERT_TRUE(arena.has_value());
  UniqueFd fd = filled_memfd(1, 0);
  const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  UniqueFd read_only{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  ASSERT_TRUE(read_only.valid());
  EXPECT_EQ(arena->add_fd_mapping(kPage, kPage, BorrowedFd{read_only}, 0, Protection::read_write())
                .error(),
            Error::mapping_failed(EACCES, kPage));
  EXPECT_TRUE(arena->mappings().empty());
  auto vma = vma_at(arena->unsafe_host_ptr() + kPage);
  ASSERT_TRUE(vma.has_value());
  EXPECT_EQ(vma->perms, "---p");
  EXPECT_TRUE(arena->add_fd_mapping(kPage, kPage, BorrowedFd{read_only}, 0, Protection::read())
                  .has_value());
}

TEST(MappingArena, RemoveLeavesAReservedInaccessibleHole) {
  auto arena = MappingArena::create(8 * kPage);
  ASSERT_TRUE(arena.has_value());
  UniqueFd fd = filled_memfd(2, 0);
  ASSERT_TRUE(arena->add_fd_mapping(2 * kPage, 2 * kPage, BorrowedFd{fd}, 0, Protection::read_write())
                  .has_value());
  EXPECT_EQ(arena->remove_mapping(2 * kPage, kPage).error(),
            Error::at(ErrorCode::NoSuchMapping, 2 * kPage, kPage));
  EXPECT_EQ(arena->remove_mapping(3 * kPage, kPage).error(),
            Error::at(ErrorCode::NoSuchMapping, 3 * kPage, kPage));
  ASSERT_TRUE(arena->remove_mapping(2 * kPage, 2 * kPage).has_value());
  EXPECT_TRUE(arena->mappings().empty());
  std::uint8_t* hole = arena->unsafe_host_ptr() + 2 * kPage;
  auto vma = vma_at(hole);
  ASSERT_TRUE(vma.has_value());
  EXPECT_EQ(vma->perms, "---p");
  EXPECT_TRUE(is_mapped(hole, 2 * kPage)) << "still reserved";
  // SAFETY: the child process faults reading the hole.
  EXPECT_DEATH(static_cast<void>(*static_cast<volatile std::uint8_t*>(hole)), "");
  EXPECT_EQ(arena->remove_mapping(2 * kPage, 2 * kPage).error(),
            Error::at(ErrorCode::NoSuchMapping, 2 * kPage, 2 * kPage));
}

TEST(MappingArena, ReplaceIsRemoveThenAdd) {
  auto arena = MappingArena::create(4 * kPage);
  ASSERT_TRUE(arena.has_value());
  UniqueFd first = filled_memfd(1, 10);
  UniqueFd second = filled_memfd(1, 20);
  ASSERT_TRUE(arena->add_fd_mapping(kPage, kPage, BorrowedFd{first}, 0, Protection::read_write())
                  .has_value());
  EXPECT_EQ(view(*arena, kPage, kPage).read_obj<std::uint8_t>(0), 10u);
  EXPECT_EQ(arena->add_fd_mapping(kPage, kPage, BorrowedFd{second}, 0, Protection::read_write())
                .error(),
            Error::at(ErrorCode::MappingOverlap, kPage, kPage))
      << "adding over a mapping is refused";
  ASSERT_TRUE(arena->remove_mapping(kPage, kPage).has_value());
  ASSERT_TRUE(arena->add_fd_mapping(kPage, kPage, BorrowedFd{second}, 0, Protection::read_write())
                  .has_value());
  EXPECT_EQ(view(*arena, kPage, kPage).read_obj<std::uint8_t>(0), 20u);
  EXPECT_EQ(view(*arena, kPage, kPage).read_obj<std::uint8_t>(kPage - 1),
            static_cast<std::uint8_t>(20 + kPage - 1));
}

}  // namespace
}  // namespace guestmem
