#include "guestmem/mapping_arena.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <fstream>
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

// The process's mapping-count limit (vm.max_map_count).
std::size_t max_map_count() {
  std::ifstream in("/proc/sys/vm/max_map_count");
  std::size_t limit = 0;
  in >> limit;
  return limit;
}

// How many mappings the process has: the lines of /proc/self/maps.
std::size_t map_count() {
  std::ifstream maps("/proc/self/maps");
  std::size_t lines = 0;
  for (std::string line; std::getline(maps, line);) {
    ++lines;
  }
  return lines;
}

// Drives an arena into the process's mapping-count limit and back, in this process: called in
// a child, it exits 0 when every check held and otherwise prints what failed and exits 1.
[[noreturn]] void arena_at_the_map_count_limit() {
  auto check = [](bool ok, const char* what) {
    if (!ok) {
      std::fprintf(stderr, "check failed: %s\n", what);
      std::fflush(stderr);
      ::_exit(1);
    }
  };
  const std::size_t limit = max_map_count();
  check(limit > 1000, "vm.max_map_count is readable");
  // Mappings the arena is left to use up; each one-page mapping in the middle of the
  // placeholder costs two (the placeholder is split around it).
  constexpr std::size_t kHeadroom = 256;
  auto arena = MappingArena::create((kHeadroom + 16) * kPage);
  check(arena.has_value(), "create");
  std::uint8_t* base = arena->unsafe_host_ptr();
  UniqueFd fd = filled_memfd(2, 5);
  const BorrowedFd file{fd};
  const auto rw = Protection::read_write();
  // Two mappings of consecutive file pages side by side, which the kernel merges into one
  // VMA: removing one of them needs a split, which the limit refuses.
  check(arena->add_fd_mapping(0, kPage, file, 0, rw).has_value(), "add the pair's first page");
  check(arena->add_fd_mapping(kPage, kPage, file, kPage, rw).has_value(),
        "add the pair's second page");
  auto pair = vma_at(base);
  check(pair.has_value() && pair->end == reinterpret_cast<std::uintptr_t>(base + 2 * kPage),
        "the pair is one VMA");

  // Burn the mapping count down to the headroom with one-page anonymous mappings of our own,
  // alternating protections so that neighbours do not merge.
  std::vector<void*> burned;
  burned.reserve(limit);
  auto burn_one = [&]() {
    const int prot = burned.size() % 2 == 0 ? PROT_NONE : PROT_READ;
    void* page = ::mmap(nullptr, kPage, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
      return false;
    }
    burned.push_back(page);
    return true;
  };
  for (std::size_t count = map_count(); count + kHeadroom < limit; count = map_count()) {
    for (std::size_t i = count; i + kHeadroom < limit; ++i) {
      check(burn_one(), "burn a mapping");
    }
  }

  // One-page mappings with a placeholder page between them, until the limit refuses one.
  std::size_t added = 2;
  std::size_t failed_at = 0;
  for (std::size_t offset = 3 * kPage; offset < arena->size(); offset += 2 * kPage) {
    auto r = arena->add_fd_mapping(offset, kPage, file, 0, rw);
    if (!r) {
      check(r.error() == Error::mapping_failed(ENOMEM, kPage), "the add fails with ENOMEM");
      failed_at = offset;
      break;
    }
    ++added;
  }
  check(failed_at != 0, "the arena reached the limit");
  check(arena->mappings().size() == added, "the failed add changed nothing");

  // At the limit (a new mapping that needs no split may still take it one past), removing
  // half of the merged pair needs a split: an error, and the mapping stays.
  while (burn_one()) {
  }
  check(arena->remove_mapping(0, kPage).error() == Error::mapping_failed(ENOMEM, kPage),
        "the remove fails with ENOMEM");
  check(arena->mappings().size() == added, "the failed remove changed nothing");
  check(view(*arena, 0, 2 * kPage).read_obj<std::uint8_t>(kPage - 1) ==
            static_cast<std::uint8_t>(5 + kPage - 1),
        "the mapping is still there");

  // Room again: the arena works as before.
  for (int i = 0; i < 16; ++i) {
    check(::munmap(burned.back(), kPage) == 0, "unmap a burned page");
    burned.pop_back();
  }
  check(arena->remove_mapping(0, kPage).has_value(), "remove after making room");
  check(arena->add_fd_mapping(failed_at, kPage, file, kPage, rw).has_value(),
        "add where the limit refused one");
  check(arena->mappings().size() == added, "one mapping less, one more");
  check(view(*arena, failed_at, kPage).read_obj<std::uint8_t>(0) ==
            static_cast<std::uint8_t>(5 + kPage),
        "the new mapping shows the file");
  auto hole = vma_at(base);
  check(hole.has_value() && hole->perms == "---p", "the removed mapping left a placeholder");
  check(is_mapped(base, arena->size()), "the whole arena is still reserved");
  std::fflush(stderr);
  ::_exit(0);
}

// The mapping-count limit (vm.max_map_count) makes the kernel refuse the VMA splits that an
// add or a remove needs. Both fail with MappingFailed(ENOMEM) and leave the arena as it was:
// the kernel refuses before it touches the placeholder or the mapping. The limit is per
// process, so a child process uses up its own count, and the system's setting is untouched.
TEST(MappingArena, MapCountLimitIsAnErrorNotAnAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(arena_at_the_map_count_limit(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace guestmem
