#include "guestmem/snapshot.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/guest_memory.hpp"
#include "guestmem/io.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::pattern;

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kChunk = kSnapshotChunkSize;

// An unnamed regular file in /tmp (a real file system, so st_blocks and SEEK_HOLE mean what
// they do for a snapshot on disk).
UniqueFd temp_file() {
  UniqueFd fd{::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)};
  EXPECT_TRUE(fd.valid()) << "O_TMPFILE in /tmp failed: errno " << errno;
  return fd;
}

struct stat stat_of(const UniqueFd& fd) {
  struct stat st{};
  EXPECT_EQ(::fstat(fd.get(), &st), 0);
  return st;
}

std::uint64_t allocated(const UniqueFd& fd) {
  return static_cast<std::uint64_t>(stat_of(fd).st_blocks) * 512;
}

void flip_byte(const UniqueFd& fd, std::uint64_t offset) {
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x5a;
  ASSERT_EQ(::pwrite(fd.get(), &b, 1, static_cast<off_t>(offset)), 1);
}

template <Bitmap B>
std::vector<std::byte> contents(const GuestMemoryMmap<B>& mem) {
  std::vector<std::byte> out;
  for (const auto& region : mem.regions()) {
    std::vector<std::byte> part(region.len());
    EXPECT_TRUE(region.read_slice(part, MemoryRegionAddress{0}).has_value());
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

template <Bitmap B>
void write_page(const GuestMemoryMmap<B>& mem, std::uint64_t addr, std::uint8_t seed,
                std::size_t len = kPage) {
  ASSERT_TRUE(mem.write_slice(pattern(len, seed), GuestAddress{addr}).has_value());
}

// Two regions with a hole between them: 256 KiB at 0 and 2 MiB + 8 KiB (three chunks, the
// last one short) at 1 MiB.
template <Bitmap B>
GuestMemoryMmap<B> two_regions() {
  auto mem = GuestMemoryMmap<B>::from_ranges(
      {{GuestAddress{0}, 0x40000}, {GuestAddress{0x100000}, 0x202000}});
  EXPECT_TRUE(mem.has_value());
  return std::move(*mem);
}

// Writes whole pages, writes across a page boundary, the last byte of each region. Pages
// touched: region 0: 0, 1, 2, 63; region 1 (514 pages): 0, 5, 6, 512, 513.
template <Bitmap B>
void fill(const GuestMemoryMmap<B>& mem) {
  write_page(mem, 0x0, 1);
  write_page(mem, 0x1800, 2);                // pages 1 and 2
  write_page(mem, 0x3ffff, 3, 1);            // last byte of region 0
  write_page(mem, 0x100000, 4);
  write_page(mem, 0x105800, 5, 0x1000);      // pages 5 and 6
  write_page(mem, 0x100000 + 512 * kPage, 6, 2 * kPage);
  write_page(mem, 0x100000 + 0x201fff, 7, 1);  // last byte of region 1 (page 513)
}

TEST(Snapshot, RoundTripEager) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  auto id = save_snapshot(mem, BorrowedFd{file});
  ASSERT_TRUE(id.has_value()) << id.error().message();

  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value()) << info.error().message();
  EXPECT_EQ(info->version, kSnapshotVersion);
  EXPECT_EQ(info->id, *id);
  EXPECT_FALSE(info->base.has_value());
  EXPECT_EQ(info->page_size, kPage);
  ASSERT_EQ(info->regions.size(), 2u);
  EXPECT_EQ(info->regions[0].guest_base, GuestAddress{0});
  EXPECT_EQ(info->regions[0].size, 0x40000u);
  EXPECT_EQ(info->regions[0].pages_present, 4u);
  EXPECT_EQ(info->regions[0].file_offset % kPage, 0u);
  EXPECT_EQ(info->regions[1].guest_base, GuestAddress{0x100000});
  EXPECT_EQ(info->regions[1].size, 0x202000u);
  EXPECT_EQ(info->regions[1].pages_present, 5u);
  EXPECT_EQ(info->regions[1].file_offset, info->regions[0].file_offset + 0x40000);
  EXPECT_EQ(info->file_size, info->regions[1].file_offset + 0x202000);
  EXPECT_EQ(static_cast<std::uint64_t>(stat_of(file).st_size), info->file_size);

  auto copy = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_TRUE(copy.has_value()) << copy.error().message();
  ASSERT_EQ(copy->num_regions(), 2u);
  EXPECT_EQ(copy->regions()[0].start_addr(), GuestAddress{0});
  EXPECT_EQ(copy->regions()[1].start_addr(), GuestAddress{0x100000});
  EXPECT_EQ(copy->regions()[1].len(), 0x202000u);
  EXPECT_TRUE(contents(*copy) == contents(mem));
  EXPECT_FALSE(copy->address_in_range(GuestAddress{0x40000}));  // the hole stays a hole
  EXPECT_TRUE(verify_snapshot(BorrowedFd{file}).has_value());
}

TEST(Snapshot, RoundTripLazy) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());

  auto lazy = restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
  ASSERT_TRUE(lazy.has_value()) << lazy.error().message();
  EXPECT_TRUE(contents(*lazy) == contents(mem));
  // The mapping is private: writes stay in the process, the file keeps the snapshot.
  write_page(*lazy, 0x100000, 99);
  auto again = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(contents(*again) == contents(mem));
  EXPECT_FALSE(contents(*lazy) == contents(mem));
}

TEST(Snapshot, LazyMemoryOutlivesTheCallersDescriptor) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  std::vector<std::byte> expected = contents(mem);
  std::optional<GuestMemoryMmap<>> lazy;
  {
    UniqueFd file = temp_file();
    ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());
    auto restored = restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
    ASSERT_TRUE(restored.has_value());
    lazy.emplace(std::move(*restored));
  }
  EXPECT_TRUE(contents(*lazy) == expected);
}

TEST(Snapshot, LazyRestoreFromAReadOnlyDescriptor) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());
  const std::string path = "/proc/self/fd/" + std::to_string(file.get());
  UniqueFd read_only{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  ASSERT_TRUE(read_only.valid());
  auto lazy = restore_snapshot<AtomicBitmap>(BorrowedFd{read_only}, RestoreMode::Lazy);
  ASSERT_TRUE(lazy.has_value()) << lazy.error().message();
  EXPECT_TRUE(contents(*lazy) == contents(mem));
  // Writable, privately, and tracked.
  write_page(*lazy, 0x100000 + 7 * kPage, 5);
  EXPECT_TRUE(lazy->regions()[1].bitmap().dirty_at(7 * kPage));
  EXPECT_FALSE(lazy->regions()[1].bitmap().dirty_at(8 * kPage));
}

TEST(Snapshot, ZeroPagesAreHoles) {
  // 16 MiB; 40 scattered pages in the first 8 MiB, a 1 MiB run at 10 MiB, and a page written
  // and then cleared at 12 MiB (present in memory, but zero: it must not be stored).
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 16 << 20}});
  ASSERT_TRUE(mem.has_value());
  for (std::uint64_t i = 0; i < 40; ++i) {
    write_page(*mem, (i * 47 + 7) * kPage, static_cast<std::uint8_t>(i + 1));
  }
  for (std::uint64_t i = 0; i < 256; ++i) {
    write_page(*mem, (10 << 20) + i * kPage, static_cast<std::uint8_t>(i + 3));
  }
  write_page(*mem, 12 << 20, 9);
  ASSERT_TRUE(mem->write_slice(std::vector<std::byte>(kPage), GuestAddress{12 << 20}).has_value());
  const std::uint64_t distinct = 40 + 256;
  const std::uint64_t nonzero = distinct * kPage;

  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(*mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->regions[0].pages_present, distinct);
  // The file is 16 MiB long, but only the data pages and the header take blocks: one page of
  // header (the bitmap of 4096 pages and 16 checksums fit in it), the data, and a few blocks
  // of the file system's extent tree.
  EXPECT_EQ(static_cast<std::uint64_t>(stat_of(file).st_size), info->file_size);
  EXPECT_GE(allocated(file), nonzero);
  EXPECT_LE(allocated(file), nonzero + 16 * kPage);
  // The first data page of the file is the first written page of the memory.
  const std::uint64_t data = info->regions[0].file_offset;
  EXPECT_EQ(::lseek(file.get(), static_cast<off_t>(data), SEEK_DATA),
            static_cast<off_t>(data + 7 * kPage));
  auto copy = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_TRUE(copy.has_value());
  EXPECT_TRUE(contents(*copy) == contents(*mem));
}

TEST(Snapshot, FileBackedMemoryRoundTrips) {
  // A shared memfd mapping: pages never written are holes of the memfd, written ones are
  // found through its data extents as well as through the page tables.
  std::vector<RegionSpec> specs;
  specs.push_back(RegionSpec{GuestAddress{0x10000}, 8 << 20,
                             FileOffset(testing::memfd(8 << 20), 0)});
  auto mem = GuestMemoryMmap<>::from_ranges_with_files(specs);
  ASSERT_TRUE(mem.has_value());
  write_page(*mem, 0x10000 + 3 * kPage, 1);
  write_page(*mem, 0x10000 + (5 << 20), 2, 3 * kPage);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(*mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->regions[0].pages_present, 4u);

  // A lazily restored memory (a private file mapping) written again saves its own writes and
  // the file's data it still shows.
  auto lazy = restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
  ASSERT_TRUE(lazy.has_value());
  write_page(*lazy, 0x10000 + (7 << 20), 3);
  UniqueFd second = temp_file();
  ASSERT_TRUE(save_snapshot(*lazy, BorrowedFd{second}).has_value());
  auto info2 = read_snapshot_info(BorrowedFd{second});
  ASSERT_TRUE(info2.has_value());
  EXPECT_EQ(info2->regions[0].pages_present, 5u);
  auto copy = restore_snapshot(BorrowedFd{second}, RestoreMode::Eager);
  ASSERT_TRUE(copy.has_value());
  EXPECT_TRUE(contents(*copy) == contents(*lazy));
}

TEST(Snapshot, CorruptDataIsRefusedWithItsChunk) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  // Page 513 of region 1 lies in its third chunk (2 MiB to 2 MiB + 8 KiB): chunk number 1
  // (region 0's only chunk) + 2 (region 1's first two) + 1 = 4.
  const std::uint64_t chunk_offset = info->regions[1].file_offset + 2 * kChunk;
  flip_byte(file, info->regions[1].file_offset + 513 * kPage + 100);

  auto eager = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_FALSE(eager.has_value());
  EXPECT_EQ(eager.error().code(), ErrorCode::SnapshotCorrupt);
  EXPECT_EQ(eager.error().address(), chunk_offset);
  EXPECT_EQ(eager.error().length(), 0x2000u);
  EXPECT_EQ(eager.error().expected(), 4u);
  EXPECT_EQ(eager.error().message(),
            "snapshot corrupt: chunk 4 (0x2000 bytes at file offset " +
                to_string(GuestAddress{chunk_offset}) + ") fails its checksum");
  auto verified = verify_snapshot(BorrowedFd{file});
  ASSERT_FALSE(verified.has_value());
  EXPECT_EQ(verified.error(), eager.error());
  // A lazy restore reads no data up front, so it cannot see the damage.
  EXPECT_TRUE(restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy).has_value());
}

TEST(Snapshot, DataInAHoleIsFoundByVerify) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  flip_byte(file, info->regions[0].file_offset + 10 * kPage);  // page 10 is a hole
  auto verified = verify_snapshot(BorrowedFd{file});
  ASSERT_FALSE(verified.has_value());
  EXPECT_EQ(verified.error(), Error::snapshot(ErrorCode::SnapshotCorrupt,
                                              info->regions[0].file_offset, 0x40000, 1, 0));
  // The eager restore does not read holes: the memory it builds is the snapshot's.
  auto copy = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_TRUE(copy.has_value());
  EXPECT_TRUE(contents(*copy) == contents(mem));
}

TEST(Snapshot, CorruptHeaderIsRefused) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  // The header holds the fixed part (128 bytes), two table entries (64 each) and the
  // bitmaps and checksums: 64 + 515 pages -> 1 + 9 words, 1 + 3 chunks -> 4 words.
  const std::uint64_t metadata_size = 128 + 2 * 64 + (1 + 9) * 8 + (1 + 3) * 8;

  flip_byte(file, 128 + 64 + 8);  // region 1's size
  auto restored = restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
  ASSERT_FALSE(restored.has_value());
  EXPECT_EQ(restored.error(),
            Error::snapshot(ErrorCode::SnapshotCorrupt, 0, metadata_size, 0, 0));
  EXPECT_EQ(restored.error().message(), "snapshot corrupt: the header (chunk 0, " +
                                            to_string(GuestAddress{metadata_size}) +
                                            " bytes at file offset 0x0) fails its checksum");
  flip_byte(file, 128 + 64 + 8);
  ASSERT_TRUE(read_snapshot_info(BorrowedFd{file}).has_value());

  flip_byte(file, 350);  // a chunk checksum of region 1
  EXPECT_EQ(read_snapshot_info(BorrowedFd{file}).error(),
            Error::snapshot(ErrorCode::SnapshotCorrupt, 0, metadata_size, 0, 0));
  flip_byte(file, 350);

  flip_byte(file, 8);  // the version: 1 ^ 0x5a
  auto version = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_FALSE(version.has_value());
  EXPECT_EQ(version.error(), Error::snapshot(ErrorCode::SnapshotUnsupported, 8, 0, 1, 0x5b));
  flip_byte(file, 8);

  flip_byte(file, 0);  // the magic
  auto magic = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_FALSE(magic.has_value());
  EXPECT_EQ(magic.error(), Error::snapshot(ErrorCode::SnapshotUnsupported, 0, 0, 0, 0));
}

TEST(Snapshot, TruncatedFileIsRefused) {
  auto mem = two_regions<NoBitmap>();
  fill(mem);
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  const std::uint64_t size = info->file_size;

  ASSERT_EQ(::ftruncate(file.get(), static_cast<off_t>(size - kPage)), 0);
  for (RestoreMode mode : {RestoreMode::Eager, RestoreMode::Lazy}) {
    auto restored = restore_snapshot(BorrowedFd{file}, mode);
    ASSERT_FALSE(restored.has_value());
    EXPECT_EQ(restored.error(),
              Error::snapshot(ErrorCode::SnapshotTruncated, size - kPage, 0, size, size - kPage));
  }
  ASSERT_EQ(::ftruncate(file.get(), 200), 0);  // inside the header
  const std::uint64_t metadata_size = 128 + 2 * 64 + (1 + 9) * 8 + (1 + 3) * 8;
  EXPECT_EQ(read_snapshot_info(BorrowedFd{file}).error(),
            Error::snapshot(ErrorCode::SnapshotTruncated, 200, 0, metadata_size, 200));
  ASSERT_EQ(::ftruncate(file.get(), 100), 0);  // inside the fixed part
  EXPECT_EQ(read_snapshot_info(BorrowedFd{file}).error(),
            Error::snapshot(ErrorCode::SnapshotTruncated, 100, 0, 128, 100));
  ASSERT_EQ(::ftruncate(file.get(), 0), 0);
  EXPECT_EQ(read_snapshot_info(BorrowedFd{file}).error(),
            Error::snapshot(ErrorCode::SnapshotTruncated, 0, 0, 128, 0));
}

TEST(Snapshot, IncrementalDiffIsSmallAndApplies) {
  auto mem = two_regions<AtomicBitmap>();
  fill(mem);
  for (std::uint64_t p = 100; p < 400; ++p) {
    write_page(mem, 0x100000 + p * kPage, static_cast<std::uint8_t>(p));
  }
  UniqueFd base_file = temp_file();
  auto base = save_snapshot(mem, BorrowedFd{base_file});
  ASSERT_TRUE(base.has_value());

  // Five pages change after the base: three get data, one is cleared to zero (a dirty zero
  // page is part of the diff, as a hole), one gets a single byte.
  write_page(mem, 0x2000, 50);
  write_page(mem, 0x100000 + 200 * kPage, 51);
  write_page(mem, 0x100000 + 513 * kPage, 52, 0x1000);
  ASSERT_TRUE(mem.write_slice(std::vector<std::byte>(kPage), GuestAddress{0x100000 + 300 * kPage})
                  .has_value());
  ASSERT_TRUE(mem.write_obj(std::uint8_t{0xee}, GuestAddress{0x30000}).has_value());

  UniqueFd diff_file = temp_file();
  auto diff = save_snapshot_diff(mem, *base, BorrowedFd{diff_file});
  ASSERT_TRUE(diff.has_value()) << diff.error().message();
  EXPECT_NE(*diff, *base);
  auto info = read_snapshot_info(BorrowedFd{diff_file});
  ASSERT_TRUE(info.has_value());
  ASSERT_TRUE(info->base.has_value());
  EXPECT_EQ(*info->base, *base);
  EXPECT_EQ(info->regions[0].pages_present + info->regions[1].pages_present, 5u);
  // On disk: the four pages with data, one page of header, and at most one block of the
  // file system's extent tree (five extents do not fit in an ext4 inode).
  EXPECT_GE(allocated(diff_file), 5 * kPage);
  EXPECT_LE(allocated(diff_file), 6 * kPage);
  EXPECT_TRUE(verify_snapshot(BorrowedFd{diff_file}).has_value());

  // The bits were taken: a second diff right away holds nothing.
  UniqueFd empty_file = temp_file();
  ASSERT_TRUE(save_snapshot_diff(mem, *diff, BorrowedFd{empty_file}).has_value());
  auto empty = read_snapshot_info(BorrowedFd{empty_file});
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->regions[0].pages_present + empty->regions[1].pages_present, 0u);

  // Base + diff = the memory now.
  auto copy = restore_snapshot<AtomicBitmap>(BorrowedFd{base_file}, RestoreMode::Eager);
  ASSERT_TRUE(copy.has_value());
  EXPECT_FALSE(contents(*copy) == contents(mem));
  auto applied = apply_snapshot_diff(*copy, BorrowedFd{diff_file}, *base);
  ASSERT_TRUE(applied.has_value()) << applied.error().message();
  EXPECT_TRUE(contents(*copy) == contents(mem));
  // The pages the diff wrote are reported to the copy's dirty bitmap.
  EXPECT_TRUE(copy->regions()[1].bitmap().dirty_at(300 * kPage));
  EXPECT_FALSE(copy->regions()[1].bitmap().dirty_at(301 * kPage));

  // And onto a lazily restored base.
  auto lazy = restore_snapshot(BorrowedFd{base_file}, RestoreMode::Lazy);
  ASSERT_TRUE(lazy.has_value());
  ASSERT_TRUE(apply_snapshot_diff(*lazy, BorrowedFd{diff_file}, *base).has_value());
  EXPECT_TRUE(contents(*lazy) == contents(mem));
}

TEST(Snapshot, DiffOnTheWrongBaseIsRefused) {
  auto mem = two_regions<AtomicBitmap>();
  fill(mem);
  UniqueFd base_file = temp_file();
  auto base = save_snapshot(mem, BorrowedFd{base_file});
  ASSERT_TRUE(base.has_value());
  write_page(mem, 0x0, 77);
  UniqueFd diff_file = temp_file();
  ASSERT_TRUE(save_snapshot_diff(mem, *base, BorrowedFd{diff_file}).has_value());

  auto target = restore_snapshot(BorrowedFd{base_file}, RestoreMode::Eager);
  ASSERT_TRUE(target.has_value());
  const std::vector<std::byte> before = contents(*target);
  const SnapshotId other{base->hi ^ 1, base->lo};
  auto wrong = apply_snapshot_diff(*target, BorrowedFd{diff_file}, other);
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error(), Error::snapshot(ErrorCode::SnapshotWrongBase, base->hi, base->lo,
                                           other.hi, other.lo));
  EXPECT_TRUE(contents(*target) == before);

  // A full snapshot is no diff, and a diff is no full snapshot.
  auto full = apply_snapshot_diff(*target, BorrowedFd{base_file}, *base);
  ASSERT_FALSE(full.has_value());
  EXPECT_EQ(full.error(),
            Error::snapshot(ErrorCode::SnapshotWrongBase, 0, 0, base->hi, base->lo));
  auto as_full = restore_snapshot(BorrowedFd{diff_file}, RestoreMode::Eager);
  ASSERT_FALSE(as_full.has_value());
  EXPECT_EQ(as_full.error(),
            Error::snapshot(ErrorCode::SnapshotWrongBase, base->hi, base->lo, 0, 0));

  // Another layout.
  auto small = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x40000}});
  ASSERT_TRUE(small.has_value());
  auto layout = apply_snapshot_diff(*small, BorrowedFd{diff_file}, *base);
  ASSERT_FALSE(layout.has_value());
  EXPECT_EQ(layout.error(), Error::snapshot(ErrorCode::SnapshotLayoutMismatch, 0x100000,
                                            0x202000, 1, 0));
}

TEST(Snapshot, CorruptDiffLeavesTheMemoryUnchanged) {
  auto mem = two_regions<AtomicBitmap>();
  fill(mem);
  UniqueFd base_file = temp_file();
  auto base = save_snapshot(mem, BorrowedFd{base_file});
  ASSERT_TRUE(base.has_value());
  write_page(mem, 0x0, 80);                            // region 0, chunk 1
  write_page(mem, 0x100000 + 2 * kChunk, 81);          // region 1's last chunk, chunk 4
  UniqueFd diff_file = temp_file();
  ASSERT_TRUE(save_snapshot_diff(mem, *base, BorrowedFd{diff_file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{diff_file});
  ASSERT_TRUE(info.has_value());
  flip_byte(diff_file, info->regions[1].file_offset + 2 * kChunk + 5);

  auto target = restore_snapshot(BorrowedFd{base_file}, RestoreMode::Eager);
  ASSERT_TRUE(target.has_value());
  const std::vector<std::byte> before = contents(*target);
  auto applied = apply_snapshot_diff(*target, BorrowedFd{diff_file}, *base);
  ASSERT_FALSE(applied.has_value());
  EXPECT_EQ(applied.error(),
            Error::snapshot(ErrorCode::SnapshotCorrupt, info->regions[1].file_offset + 2 * kChunk,
                            0x2000, 4, 0));
  // Chunk 1 was fine, and still nothing of it reached the memory.
  EXPECT_TRUE(contents(*target) == before);
}

TEST(Snapshot, DiffWithLargerBitmapPagesHoldsEveryPageTheyCover) {
  // A bitmap of 16 KiB pages: one dirty bit covers four snapshot pages, all of them in the
  // diff.
  constexpr std::size_t kSize = 1 << 20;
  auto mapping = MmapRegionBuilder<AtomicBitmap>(kSize).with_bitmap(AtomicBitmap(kSize, 16384)).build();
  ASSERT_TRUE(mapping.has_value());
  auto region = GuestRegionMmap<AtomicBitmap>::create(std::move(*mapping), GuestAddress{0});
  ASSERT_TRUE(region.has_value());
  std::vector<GuestRegionMmap<AtomicBitmap>> regions;
  regions.push_back(std::move(*region));
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_regions(std::move(regions));
  ASSERT_TRUE(mem.has_value());
  UniqueFd base_file = temp_file();
  auto base = save_snapshot(*mem, BorrowedFd{base_file});
  ASSERT_TRUE(base.has_value());
  ASSERT_TRUE(mem->write_obj(std::uint8_t{1}, GuestAddress{0x5000}).has_value());  // pages 4-7
  UniqueFd diff_file = temp_file();
  ASSERT_TRUE(save_snapshot_diff(*mem, *base, BorrowedFd{diff_file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{diff_file});
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->regions[0].pages_present, 4u);
  auto copy = restore_snapshot(BorrowedFd{base_file}, RestoreMode::Eager);
  ASSERT_TRUE(copy.has_value());
  ASSERT_TRUE(apply_snapshot_diff(*copy, BorrowedFd{diff_file}, *base).has_value());
  EXPECT_TRUE(contents(*copy) == contents(*mem));
}

TEST(Snapshot, DiffIntoReadOnlyMemoryIsRefused) {
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 0x10000}});
  ASSERT_TRUE(mem.has_value());
  UniqueFd base_file = temp_file();
  auto base = save_snapshot(*mem, BorrowedFd{base_file});
  ASSERT_TRUE(base.has_value());
  write_page(*mem, 0x3000, 1);
  UniqueFd diff_file = temp_file();
  ASSERT_TRUE(save_snapshot_diff(*mem, *base, BorrowedFd{diff_file}).has_value());

  auto mapping = MmapRegionBuilder<>(0x10000).with_protection(Protection::read()).build();
  ASSERT_TRUE(mapping.has_value());
  auto region = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{0});
  ASSERT_TRUE(region.has_value());
  std::vector<GuestRegionMmap<>> regions;
  regions.push_back(std::move(*region));
  auto read_only = GuestMemoryMmap<>::from_regions(std::move(regions));
  ASSERT_TRUE(read_only.has_value());
  auto applied = apply_snapshot_diff(*read_only, BorrowedFd{diff_file}, *base);
  ASSERT_FALSE(applied.has_value());
  EXPECT_EQ(applied.error(), Error::protection_violation(0, 0x10000, Permissions::Write));
}

TEST(Snapshot, LargeSparseLazyRestore) {
  // 4 GiB of guest memory, 64 scattered pages and one 2 MiB run written.
  constexpr std::uint64_t kSize = std::uint64_t{4} << 30;
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0x100000000}, kSize}});
  ASSERT_TRUE(mem.has_value());
  std::vector<std::uint64_t> pages;
  for (std::uint64_t i = 0; i < 64; ++i) {
    pages.push_back((i * 16411 + 5) % (kSize / kPage));
    write_page(*mem, 0x100000000 + pages.back() * kPage, static_cast<std::uint8_t>(i + 1));
  }
  ASSERT_TRUE(mem->write_slice(pattern(2 << 20, 200), GuestAddress{0x100000000 + (3ULL << 30)})
                  .has_value());
  UniqueFd file = temp_file();
  ASSERT_TRUE(save_snapshot(*mem, BorrowedFd{file}).has_value());
  auto info = read_snapshot_info(BorrowedFd{file});
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->regions[0].pages_present, 64u + 512u);
  EXPECT_GT(static_cast<std::uint64_t>(stat_of(file).st_size), kSize);
  // Data, plus a header of 41 pages (a 128 KiB bitmap and 32 KiB of checksums) and a few
  // blocks of the file system's extent tree.
  EXPECT_GE(allocated(file), (64 + 512 + 41) * kPage);
  EXPECT_LE(allocated(file), (64 + 512 + 48) * kPage);

  auto lazy = restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
  ASSERT_TRUE(lazy.has_value());
  std::vector<std::byte> page(kPage);
  for (std::uint64_t i = 0; i < pages.size(); ++i) {
    ASSERT_TRUE(lazy->read_slice(page, GuestAddress{0x100000000 + pages[i] * kPage}).has_value());
    EXPECT_TRUE(page == pattern(kPage, static_cast<std::uint8_t>(i + 1))) << i;
  }
  std::vector<std::byte> run(2 << 20);
  ASSERT_TRUE(lazy->read_slice(run, GuestAddress{0x100000000 + (3ULL << 30)}).has_value());
  EXPECT_TRUE(run == pattern(2 << 20, 200));
  ASSERT_TRUE(lazy->read_slice(page, GuestAddress{0x100000000 + kSize - kPage}).has_value());
  EXPECT_TRUE(page == std::vector<std::byte>(kPage));
  // The lazy memory maps the file: nothing was copied into anonymous memory.
  EXPECT_NE(lazy->regions()[0].file_offset(), nullptr);

  // An eager restore checks all 4096 chunk checksums, and reads only the held pages.
  auto eager = restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
  ASSERT_TRUE(eager.has_value()) << eager.error().message();
  EXPECT_EQ(eager->regions()[0].file_offset(), nullptr);
  ASSERT_TRUE(eager->read_slice(page, GuestAddress{0x100000000 + pages[63] * kPage}).has_value());
  EXPECT_TRUE(page == pattern(kPage, 64));
  ASSERT_TRUE(eager->read_slice(run, GuestAddress{0x100000000 + (3ULL << 30)}).has_value());
  EXPECT_TRUE(run == pattern(2 << 20, 200));
}

TEST(Snapshot, NotASnapshot) {
  UniqueFd file = temp_file();
  ASSERT_EQ(::ftruncate(file.get(), 4096), 0);
  EXPECT_EQ(read_snapshot_info(BorrowedFd{file}).error(),
            Error::snapshot(ErrorCode::SnapshotUnsupported, 0, 0, 0, 0));
  EXPECT_EQ(read_snapshot_info(BorrowedFd{file}).error().message(),
            "not a guestmem snapshot (bad magic)");
  EXPECT_EQ(read_snapshot_info(BorrowedFd{-1}).error(), Error::io(EBADF));
}

TEST(Snapshot, SaveErrors) {
  auto mem = two_regions<NoBitmap>();
  EXPECT_EQ(save_snapshot(mem, BorrowedFd{-1}).error(), Error::io(EBADF));
  UniqueFd read_only{::open("/proc/self/exe", O_RDONLY | O_CLOEXEC)};
  ASSERT_TRUE(read_only.valid());
  auto refused = save_snapshot(mem, BorrowedFd{read_only});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::IoError);
  EXPECT_EQ(save_snapshot(GuestMemoryMmap<>{}, BorrowedFd{-1}).error(),
            Error(ErrorCode::NoMemoryRegion));

  // A region that cannot be read is refused before the file changes.
  auto mapping = MmapRegionBuilder<>(0x4000).with_protection(Protection::none()).build();
  ASSERT_TRUE(mapping.has_value());
  auto region = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{0x8000});
  ASSERT_TRUE(region.has_value());
  std::vector<GuestRegionMmap<>> regions;
  regions.push_back(std::move(*region));
  auto guarded = GuestMemoryMmap<>::from_regions(std::move(regions));
  ASSERT_TRUE(guarded.has_value());
  UniqueFd file = temp_file();
  ASSERT_EQ(::ftruncate(file.get(), 123), 0);
  EXPECT_EQ(save_snapshot(*guarded, BorrowedFd{file}).error(),
            Error::protection_violation(0x8000, 0x4000, Permissions::Read));
  EXPECT_EQ(stat_of(file).st_size, 123);
}

}  // namespace
}  // namespace guestmem
