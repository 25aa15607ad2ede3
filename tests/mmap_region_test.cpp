#include "guestmem/mmap_region.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <bit>
#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/endian.hpp"

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::is_mapped;
using testing::resident_pages;
using testing::vm_flags_at;
using testing::vma_at;

const std::size_t kPage = detail::page_size();

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
  // An empty region of someone else's memory is refused like an empty mmap: its last address
  // would be the byte before its start.
  EXPECT_EQ(MmapRegionBuilder<>(0).unsafe_with_raw_mmap_pointer(base).build().error(),
            Error::mapping_failed(EINVAL, 0));
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

TEST(MmapRegionBuilder, ProtectionIsRecordedAndEnforcedOnVolatileAccess) {
  auto ro = MmapRegionBuilder<>(0x1000).with_protection(Protection::read()).build();
  ASSERT_TRUE(ro.has_value()) << ro.error();
  EXPECT_EQ(ro->prot(), PROT_READ);
  EXPECT_EQ(ro->protection(), Protection::read());
  EXPECT_TRUE(ro->permits(Permissions::Read));
  EXPECT_FALSE(ro->permits(Permissions::Write));
  EXPECT_EQ(vma_at(ro->unsafe_host_ptr())->perms, "r--p");
  EXPECT_EQ(ro->write_obj_volatile(std::uint32_t{1}, 0x10).error(),
            Error::protection_violation(0x10, 4, Permissions::Write));
  EXPECT_EQ(ro->read_obj_volatile<std::uint32_t>(0x10), 0u);
  // Views carry no protection; reading through them works.
  EXPECT_EQ(ro->as_volatile_slice().read_obj<std::uint64_t>(0xff8), 0u);

  auto none = MmapRegionBuilder<>(0x1000).with_protection(Protection::none()).build();
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->read_obj_volatile<std::uint8_t>(0).error(),
            Error::protection_violation(0, 1, Permissions::Read));
}

TEST(MmapRegion, VolatileObjectAccess) {
  auto r = MmapRegionBuilder<testing::RecordingBitmap>(0x1000).build();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->write_obj_volatile(std::uint32_t{0xf00}, 16).has_value());
  EXPECT_EQ(r->bitmap().take(), (testing::Marks{{16, 4}}));
  EXPECT_EQ(r->read_obj_volatile<std::uint32_t>(16), 0xf00u);
  EXPECT_EQ(r->as_volatile_slice().read_obj<std::uint32_t>(16), 0xf00u) << "another path";
  ASSERT_TRUE(r->write_obj_volatile(std::uint64_t{0x1122334455667788}, 0xff8).has_value());
  EXPECT_EQ(r->as_volatile_slice().read_obj<std::uint8_t>(0xfff), 0x11u);
  ASSERT_TRUE(r->write_obj_volatile(Le16{0xbeef}, 2).has_value());
  EXPECT_EQ(r->as_volatile_slice().read_obj<std::uint8_t>(2), 0xefu);
  EXPECT_EQ(r->read_obj_volatile<Le16>(2)->to_native(), 0xbeefu);
  r->bitmap().take();

  EXPECT_EQ(r->write_obj_volatile(std::uint32_t{1}, 17).error(), Error::misaligned(17, 4));
  EXPECT_EQ(r->read_obj_volatile<std::uint64_t>(4).error(), Error::misaligned(4, 8));
  EXPECT_EQ(r->write_obj_volatile(std::uint32_t{1}, 0xffe).error(),
            Error::out_of_bounds(0xffe, 4, 0x1000));
  EXPECT_EQ(r->read_obj_volatile<std::uint16_t>(0x1000).error(),
            Error::out_of_bounds(0x1000, 2, 0x1000));
  const std::size_t huge = std::numeric_limits<std::size_t>::max() - 1;
  EXPECT_EQ(r->write_obj_volatile(std::uint32_t{1}, huge).error(), Error::overflow(huge, 4));
  EXPECT_TRUE(r->bitmap().take().empty()) << "refused stores report nothing";
}

TEST(MmapRegion, VolatileWriteReachesTheFile) {
  auto shm = SharedMemory::create("volatile", 0x1000);
  ASSERT_TRUE(shm.has_value());
  auto r = MmapRegionBuilder<>(0x1000).from_shared_memory(*shm).build();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->write_obj_volatile(std::uint64_t{0xc0ffee}, 0x40).has_value());
  std::uint64_t in_file = 0;
  ASSERT_EQ(::pread(shm->fd(), &in_file, 8, 0x40), 8);
  EXPECT_EQ(in_file, 0xc0ffeeu);
  const std::uint16_t from_peer = 0x7777;
  ASSERT_EQ(::pwrite(shm->fd(), &from_peer, 2, 0x80), 2);
  EXPECT_EQ(r->read_obj_volatile<std::uint16_t>(0x80), 0x7777u);
}

// A file in the working directory (a real file system, unlike a memfd or tmpfs), unlinked.
UniqueFd disk_file(std::size_t size) {
  char name[] = "guestmem-msync-XXXXXX";
  UniqueFd fd{::mkstemp(name)};
  EXPECT_TRUE(fd.valid());
  ::unlink(name);
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

// The dirty bytes of the VMA holding `addr`, from /proc/self/smaps: pages written since they
// were last written back.
std::size_t dirty_kib_at(const void* addr) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream smaps("/proc/self/smaps");
  bool inside = false;
  std::size_t dirty = 0;
  for (std::string line; std::getline(smaps, line);) {
    if (auto vma = line.find('-'); vma != std::string::npos &&
                                   line.find_first_not_of("0123456789abcdef") == vma) {
      const auto start = std::stoull(line.substr(0, vma), nullptr, 16);
      const auto end = std::stoull(line.substr(vma + 1), nullptr, 16);
      inside = a >= start && a < end;
    } else if (inside && (line.starts_with("Shared_Dirty:") || line.starts_with("Private_Dirty:"))) {
      dirty += std::stoull(line.substr(line.find(':') + 1));
    }
  }
  return dirty;
}

TEST(MmapRegion, MsyncWritesTheMappingBackToItsFile) {
  UniqueFd fd = disk_file(0x2000);
  const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  UniqueFd reader{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  ASSERT_TRUE(reader.valid());
  auto r = MmapRegion<>::from_file(FileOffset(std::move(fd), 0), 0x2000);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->as_volatile_slice().write_obj(std::uint64_t{0xdeadbeefcafe}, 0x1100).has_value());
  struct statfs fs {};
  ASSERT_EQ(::fstatfs(reader.get(), &fs), 0);
  const bool writes_back = fs.f_type != TMPFS_MAGIC;
  if (writes_back) {
    EXPECT_GT(dirty_kib_at(r->unsafe_host_ptr()), 0u);
  }
  ASSERT_TRUE(r->msync().has_value());
  if (writes_back) {
    EXPECT_EQ(dirty_kib_at(r->unsafe_host_ptr()), 0u) << "msync wrote the dirty page back";
  }
  std::uint64_t in_file = 0;
  ASSERT_EQ(::pread(reader.get(), &in_file, 8, 0x1100), 8);
  EXPECT_EQ(in_file, 0xdeadbeefcafeu);
  EXPECT_TRUE(MmapRegion<>::create(0x1000)->msync().has_value()) << "anonymous memory";
}

TEST(MmapRegion, FlushOnARealMapping) {
  auto r = MmapRegion<>::create(0x3000);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->as_volatile_slice().write_obj(std::uint64_t{0xabcdef}, 0x1fc0).has_value());
#if defined(__x86_64__) || defined(__aarch64__)
  EXPECT_TRUE(r->flush_all().has_value());
  EXPECT_TRUE(r->flush_region(0x1fc1, 0x3f).has_value());
  EXPECT_TRUE(r->flush_region(0x2fff, 1).has_value());
  EXPECT_TRUE(r->flush_region(0, 0).has_value());
  EXPECT_EQ(r->as_volatile_slice().read_obj<std::uint64_t>(0x1fc0), 0xabcdefu);
#else
  EXPECT_EQ(r->flush_all().error(), Error(ErrorCode::NotImplemented));
#endif
  EXPECT_EQ(r->flush_region(0x3000, 0).error(), Error::invalid_range(0x3000, 0, 0x3000));
  EXPECT_EQ(r->flush_region(1, 0x3000).error(), Error::invalid_range(1, 0x3000, 0x3000));
  EXPECT_EQ(r->flush_region(0x2000, std::numeric_limits<std::size_t>::max()).error(),
            Error::invalid_range(0x2000, std::numeric_limits<std::size_t>::max(), 0x3000));
  auto none = MmapRegionBuilder<>(0x1000).with_protection(Protection::none()).build();
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->flush_all().error(), Error::protection_violation(0, 0x1000, Permissions::Read));
}

TEST(MmapRegion, CacheLineSizeIsTheSystems) {
  const std::size_t line = cache_line_size();
  EXPECT_TRUE(std::has_single_bit(line));
  EXPECT_LE(line, kPage);
#if defined(__x86_64__)
  // The kernel reports the CLFLUSH line size of each CPU in /proc/cpuinfo.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::size_t reported = 0;
  for (std::string l; std::getline(cpuinfo, l);) {
    if (l.starts_with("clflush size")) {
      reported = std::stoull(l.substr(l.find(':') + 1));
      break;
    }
  }
  EXPECT_EQ(line, reported);
#endif
}

// A bitmap shorter than the mapping would ignore the writes past its end, so migration would
// never copy those pages again: build() refuses it before mapping anything.
TEST(MmapRegionBuilder, RefusesABitmapSmallerThanTheMapping) {
  constexpr std::size_t kSize = 0x100000;
  auto one_page = MmapRegionBuilder<AtomicBitmap>(kSize).with_bitmap(AtomicBitmap(0x1000)).build();
  ASSERT_FALSE(one_page.has_value());
  EXPECT_EQ(one_page.error(), Error::at(ErrorCode::InvalidBitmap, 0x1000, kSize));
  auto one_byte_short =
      MmapRegionBuilder<AtomicBitmap>(kSize).with_bitmap(AtomicBitmap(kSize - 1)).build();
  ASSERT_FALSE(one_byte_short.has_value());
  EXPECT_EQ(one_byte_short.error(), Error::at(ErrorCode::InvalidBitmap, kSize - 1, kSize));
  auto external = MmapRegionBuilder<AtomicBitmap>(kSize)
                      .with_bitmap(AtomicBitmap(0x1000))
                      .unsafe_with_raw_mmap_pointer(reinterpret_cast<std::uint8_t*>(kPage))
                      .build();
  ASSERT_FALSE(external.has_value()) << "checked for memory mapped by someone else too";
  EXPECT_EQ(external.error(), Error::at(ErrorCode::InvalidBitmap, 0x1000, kSize));

  // A bitmap of exactly the mapping's size is accepted and sees a write to the last page.
  auto exact = MmapRegionBuilder<AtomicBitmap>(kSize).with_bitmap(AtomicBitmap(kSize)).build();
  ASSERT_TRUE(exact.has_value()) << exact.error();
  ASSERT_TRUE(exact->write_obj_volatile(std::uint64_t{1}, 0x80000).has_value());
  ASSERT_TRUE(exact->write_obj_volatile(std::uint64_t{2}, kSize - 8).has_value());
  std::vector<std::uint64_t> expected(kSize / 0x1000 / 64, 0);
  expected[0x80 / 64] = std::uint64_t{1} << (0x80 % 64);
  expected.back() = std::uint64_t{1} << 63;
  EXPECT_EQ(exact->bitmap().get_and_reset(), expected);
  // A larger one too: the pages past the mapping are never written.
  auto larger =
      MmapRegionBuilder<AtomicBitmap>(kSize).with_bitmap(AtomicBitmap(2 * kSize)).build();
  ASSERT_TRUE(larger.has_value()) << larger.error();
}

TEST(MmapRegionBuilder, AlignmentByOverReserveAndTrim) {
  constexpr std::size_t kAlign = std::size_t{2} << 20;
  auto r = MmapRegionBuilder<>(3 * kPage).with_alignment(kAlign).build();
  ASSERT_TRUE(r.has_value()) << r.error();
  std::uint8_t* p = r->unsafe_host_ptr();
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % kAlign, 0u);
  auto vma = vma_at(p);
  ASSERT_TRUE(vma.has_value());
  EXPECT_EQ(vma->start, reinterpret_cast<std::uintptr_t>(p));
  EXPECT_EQ(vma->end, reinterpret_cast<std::uintptr_t>(p) + 3 * kPage);
  EXPECT_EQ(vma->perms, "rw-p");
  // The over-reservation was PROT_NONE; had its slack not been unmapped, it would sit right
  // next to the memory. (Whatever else is there belongs to someone else.)
  for (const std::uint8_t* neighbour : {p - 1, p + 3 * kPage}) {
    auto next_to = vma_at(neighbour);
    EXPECT_TRUE(!next_to || next_to->perms != "---p") << "slack left at " << next_to->start;
  }
  ASSERT_TRUE(r->as_volatile_slice().write_obj(std::uint8_t{1}, 3 * kPage - 1).has_value());

  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_alignment(3 * kPage).build().error(),
            Error::at(ErrorCode::InvalidAlignment, 0, 3 * kPage));
  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_alignment(0x10).build()->size(), kPage);
}

TEST(MmapRegionBuilder, GuardPagesSurroundTheMapping) {
  std::uint8_t* guard = nullptr;
  {
    auto r = MmapRegionBuilder<>(2 * kPage + 1)
                 .with_guard_pages(2, 1)
                 .with_alignment(std::size_t{1} << 16)
                 .build();
    ASSERT_TRUE(r.has_value()) << r.error();
    std::uint8_t* p = r->unsafe_host_ptr();
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    EXPECT_EQ(at % (std::size_t{1} << 16), 0u);
    EXPECT_EQ(r->size(), 2 * kPage + 1);

    // Exactly the guard pages are PROT_NONE: the slack of the reservation around them is gone.
    auto before = vma_at(p - 1);
    ASSERT_TRUE(before.has_value());
    EXPECT_EQ(before->perms, "---p");
    EXPECT_EQ(before->start, at - 2 * kPage);
    EXPECT_EQ(before->end, at);
    auto memory = vma_at(p);
    ASSERT_TRUE(memory.has_value());
    EXPECT_EQ(memory->perms, "rw-p");
    EXPECT_EQ(memory->end, at + 3 * kPage) << "the size rounded up to pages";
    auto after = vma_at(p + 3 * kPage);
    ASSERT_TRUE(after.has_value());
    EXPECT_EQ(after->perms, "---p");
    EXPECT_EQ(after->start, at + 3 * kPage);
    EXPECT_EQ(after->end, at + 4 * kPage);
    EXPECT_TRUE(is_mapped(p - 2 * kPage, 2 * kPage)) << "guard pages are reserved";

    // SAFETY (of both death tests): the access happens in a child process, which faults on
    // the guard page and dies.
    EXPECT_DEATH(*static_cast<volatile std::uint8_t*>(p - 1) = 1, "");
    EXPECT_DEATH(static_cast<void>(*static_cast<volatile std::uint8_t*>(p + 3 * kPage)), "");
    guard = p - 2 * kPage;
  }
  EXPECT_FALSE(is_mapped(guard, 4 * kPage)) << "guard pages go with the region";
}

TEST(MmapRegionBuilder, PopulateFaultsEveryPageIn) {
  auto lazy = MmapRegion<>::create(8 * kPage);
  auto eager = MmapRegionBuilder<>(8 * kPage).with_populate().build();
  ASSERT_TRUE(lazy && eager);
  EXPECT_EQ(eager->flags(), MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE);
  EXPECT_EQ(resident_pages(lazy->unsafe_host_ptr(), 8 * kPage), 0u);
  EXPECT_EQ(resident_pages(eager->unsafe_host_ptr(), 8 * kPage), 8u);
}

TEST(MmapRegionBuilder, SwapReservation) {
  auto noreserve = MmapRegion<>::create(kPage);
  auto reserve = MmapRegionBuilder<>(kPage).with_swap_reservation(SwapReservation::Reserve).build();
  auto flags_then_noreserve = MmapRegionBuilder<>(kPage)
                                  .with_mmap_flags(MAP_PRIVATE | MAP_ANONYMOUS)
                                  .with_swap_reservation(SwapReservation::NoReserve)
                                  .build();
  ASSERT_TRUE(noreserve && reserve && flags_then_noreserve);
  EXPECT_EQ(reserve->flags(), MAP_PRIVATE | MAP_ANONYMOUS);
  EXPECT_EQ(flags_then_noreserve->flags(), MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
  // "nr": swap space is not reserved for the area.
  EXPECT_NE(vm_flags_at(noreserve->unsafe_host_ptr()).find(" nr "), std::string::npos);
  EXPECT_EQ(vm_flags_at(reserve->unsafe_host_ptr()).find(" nr "), std::string::npos);
}

TEST(MmapRegionBuilder, AdviceReachesTheKernel) {
  auto plain = MmapRegion<>::create(kPage);
  auto advised = MmapRegionBuilder<>(4 * kPage)
                     .with_advice(Advice::DontDump | Advice::DontFork)
                     .with_advice(Advice::HugePage)
                     .build();
  ASSERT_TRUE(plain.has_value());
  ASSERT_TRUE(advised.has_value()) << advised.error();
  EXPECT_EQ(advised->advice(), Advice::HugePage | Advice::DontDump | Advice::DontFork);
  const std::string flags = vm_flags_at(advised->unsafe_host_ptr());
  EXPECT_NE(flags.find(" hg "), std::string::npos) << flags;  // MADV_HUGEPAGE
  EXPECT_NE(flags.find(" dd "), std::string::npos) << flags;  // MADV_DONTDUMP
  EXPECT_NE(flags.find(" dc "), std::string::npos) << flags;  // MADV_DONTFORK
  const std::string plain_flags = vm_flags_at(plain->unsafe_host_ptr());
  EXPECT_EQ(plain_flags.find(" dd "), std::string::npos) << plain_flags;
  EXPECT_EQ(plain_flags.find(" dc "), std::string::npos) << plain_flags;
}

TEST(MmapRegionBuilder, MergeableAdvice) {
  if (::access("/sys/kernel/mm/ksm", F_OK) != 0) {
    GTEST_SKIP() << "the kernel has no KSM, so MADV_MERGEABLE cannot be applied";
  }
  auto r = MmapRegionBuilder<>(kPage).with_advice(Advice::Mergeable).build();
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_NE(vm_flags_at(r->unsafe_host_ptr()).find(" mg "), std::string::npos);
}

TEST(MmapRegionBuilder, UnsafeBuildAtAFixedAddress) {
  void* raw = ::mmap(nullptr, 4 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
  ASSERT_NE(raw, MAP_FAILED);
  auto* reservation = static_cast<std::uint8_t*>(raw);
  {
    auto r = MmapRegionBuilder<>(kPage).unsafe_build_at(reservation + kPage);
    ASSERT_TRUE(r.has_value()) << r.error();
    EXPECT_EQ(r->unsafe_host_ptr(), reservation + kPage);
    EXPECT_EQ(r->flags(), MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    EXPECT_EQ(vma_at(reservation + kPage)->perms, "rw-p");
    ASSERT_TRUE(r->write_obj_volatile(std::uint32_t{9}, 0).has_value());
  }
  EXPECT_FALSE(is_mapped(reservation + kPage, kPage)) << "the region unmapped its page";
  EXPECT_TRUE(is_mapped(reservation, kPage));
  EXPECT_TRUE(is_mapped(reservation + 2 * kPage, 2 * kPage));

  EXPECT_EQ(MmapRegionBuilder<>(kPage).unsafe_build_at(reservation + 1).error(),
            Error::at(ErrorCode::InvalidPointer, reinterpret_cast<std::uintptr_t>(reservation + 1)));
  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_guard_pages(1, 0).unsafe_build_at(reservation).error(),
            Error(ErrorCode::IncompatibleOptions));
  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_alignment(kPage).unsafe_build_at(reservation).error(),
            Error(ErrorCode::IncompatibleOptions));
  ASSERT_EQ(::munmap(raw, 4 * kPage), 0);
}

TEST(MmapRegionBuilder, ExternalMemoryTakesNoPlacementOrAdvice) {
  void* raw = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(raw, MAP_FAILED);
  auto* base = static_cast<std::uint8_t*>(raw);
  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_guard_pages(0, 1).unsafe_with_raw_mmap_pointer(base).build().error(),
            Error(ErrorCode::IncompatibleOptions));
  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_alignment(kPage).unsafe_with_raw_mmap_pointer(base).build().error(),
            Error(ErrorCode::IncompatibleOptions));
  EXPECT_EQ(MmapRegionBuilder<>(kPage).with_advice(Advice::DontDump).unsafe_with_raw_mmap_pointer(base).build().error(),
            Error(ErrorCode::IncompatibleOptions));
  EXPECT_EQ(vm_flags_at(base).find(" dd "), std::string::npos) << "nothing was applied";
  ASSERT_EQ(::munmap(raw, kPage), 0);
}

// The default huge page size, as /proc/meminfo reports it.
std::size_t meminfo_huge_page_size() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.starts_with("Hugepagesize:")) {
      return std::stoull(line.substr(13)) * 1024;
    }
  }
  return 0;
}

TEST(MmapRegionBuilder, HugetlbfsPageSizeDetection) {
  UniqueFd fd{::memfd_create("guestmem-huge", MFD_CLOEXEC | MFD_HUGETLB)};
  if (!fd.valid()) {
    GTEST_SKIP() << "the kernel has no hugetlbfs (memfd_create(MFD_HUGETLB) failed)";
  }
  const std::size_t huge = meminfo_huge_page_size();
  ASSERT_GT(huge, kPage);
  ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(huge)), 0);
  auto shared = std::make_shared<const UniqueFd>(std::move(fd));
  // MAP_NORESERVE (the default) maps without taking huge pages from the pool, which may be
  // empty; the memory is never touched here.
  auto r = MmapRegion<>::from_file(FileOffset(shared, 0), huge);
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_EQ(r->is_hugetlbfs(), true);
  EXPECT_EQ(r->page_size(), huge);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(r->unsafe_host_ptr()) % huge, 0u);
  EXPECT_EQ(MmapRegion<>::from_file(FileOffset(shared, 0), kPage).error(),
            Error::at(ErrorCode::NotPageAligned, kPage, huge));

  // Anonymous MAP_HUGETLB: the default size, compared with what statfs says of hugetlbfs.
  struct statfs fs {};
  ASSERT_EQ(::fstatfs(shared->get(), &fs), 0);
  auto anon = MmapRegionBuilder<>(huge)
                  .with_mmap_flags(MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_HUGETLB)
                  .build();
  ASSERT_TRUE(anon.has_value()) << anon.error();
  EXPECT_EQ(anon->is_hugetlbfs(), true);
  EXPECT_EQ(anon->page_size(), static_cast<std::size_t>(fs.f_bsize));
  // A size in the flags wins: 1 GiB pages make a 2 MiB mapping misaligned, refused before
  // mmap whether or not the system has such pages.
  EXPECT_EQ(MmapRegionBuilder<>(huge)
                .with_mmap_flags(MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (30 << MAP_HUGE_SHIFT))
                .build()
                .error(),
            Error::at(ErrorCode::NotPageAligned, huge, std::size_t{1} << 30));
  EXPECT_EQ(MmapRegion<>::create(kPage)->page_size(), kPage);
}

}  // namespace
}  // namespace guestmem
