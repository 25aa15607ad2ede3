#include "guestmem/mmap_region.hpp"

#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <fstream>
#include <limits>
#include <string>
#include <utility>

namespace guestmem {
namespace {

#if defined(__aarch64__)
std::size_t read_cache_line_size() noexcept {
  std::uint64_t ctr = 0;
  asm volatile("mrs %0, ctr_el0" : "=r"(ctr));
  // CTR_EL0.DminLine (bits 19:16) is log2 of the smallest data cache line of any core, in
  // 4-byte words: the stride a `dc cvac` loop must use to reach every line everywhere.
  return std::size_t{4} << ((ctr >> 16) & 0xf);
}
#else
std::size_t read_cache_line_size() noexcept {
#if defined(__x86_64__)
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  // CPUID.01H:EBX[15:8] is the line size that CLFLUSH works on, in 8-byte units.
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && ((ebx >> 8) & 0xff) != 0) {
    return std::size_t{(ebx >> 8) & 0xff} * 8;
  }
#endif
  const long line = ::sysconf(_SC_LEVEL1_DCACHE_LINESIZE);
  return line > 0 ? static_cast<std::size_t>(line) : 64;
}
#endif

// Writes back every cache line that holds a byte of [begin, begin + len), then waits for the
// write-backs. Preconditions: the range lies in a readable mapping that starts page aligned.
Result<void> flush_lines(const std::uint8_t* begin, std::size_t len) noexcept {
#if defined(__x86_64__) || defined(__aarch64__)
  const std::size_t line = cache_line_size();
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(begin) + len;
  // Lines are aligned to their size, so the first one may start before `begin`; it is still
  // inside the mapping, which starts page aligned and line <= page.
  for (std::uintptr_t at = reinterpret_cast<std::uintptr_t>(begin) & ~(line - 1); at < end;
       at += line) {
#if defined(__x86_64__)
    // SAFETY: `at` lies in the caller's readable mapping (see above). CLFLUSH is ordered with
    // earlier stores, and the clobber keeps the compiler from moving stores past it.
    asm volatile("clflush (%0)" : : "r"(at) : "memory");
#else
    // SAFETY: as above; DC CVAC cleans the line to the point of coherency.
    asm volatile("dc cvac, %0" : : "r"(at) : "memory");
#endif
  }
#if defined(__x86_64__)
  asm volatile("mfence" : : : "memory");
#else
  asm volatile("dsb sy" : : : "memory");
#endif
  return {};
#else
  static_cast<void>(begin);
  static_cast<void>(len);
  return std::unexpected(Error(ErrorCode::NotImplemented));
#endif
}

}  // namespace

std::size_t cache_line_size() noexcept {
  static const std::size_t size = [] {
    const std::size_t line = read_cache_line_size();
    GUESTMEM_ASSERT(std::has_single_bit(line) && line <= detail::page_size(),
                    "the CPU reports a cache line size that is not a power of two up to a page");
    return line;
  }();
  return size;
}

namespace detail {
namespace {

// The size of what `fd` refers to, when it has one: regular files (memfds included) by fstat,
// block devices by BLKGETSIZE64. std::nullopt for anything else (character devices, ...).
std::optional<std::uint64_t> file_size(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return std::nullopt;
  }
  if (S_ISREG(st.st_mode)) {
    return static_cast<std::uint64_t>(st.st_size);
  }
  if (S_ISBLK(st.st_mode)) {
    std::uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) == 0) {
      return bytes;
    }
  }
  return std::nullopt;
}

// The system's default huge page size ("Hugepagesize:" in /proc/meminfo), read once; the
// system page size when it cannot be read.
std::size_t default_huge_page_size() {
  static const std::size_t size = [] {
    std::ifstream meminfo("/proc/meminfo");
    constexpr std::string_view kKey = "Hugepagesize:";
    for (std::string line; std::getline(meminfo, line);) {
      if (!line.starts_with(kKey)) {
        continue;
      }
      const auto digits = line.find_first_not_of(' ', kKey.size());
      std::size_t kib = 0;
      if (digits != std::string::npos &&
          std::from_chars(line.data() + digits, line.data() + line.size(), kib).ec == std::errc{} &&
          kib != 0) {
        return kib * 1024;
      }
    }
    return page_size();
  }();
  return size;
}

struct PageInfo {
  std::optional<bool> hugetlbfs;
  std::size_t size;
};

// Whether the memory lives on hugetlbfs and the size of its pages.
PageInfo detect_pages(const Mapping::Options& options) {
  PageInfo info{std::nullopt, page_size()};
  if (options.file) {
    struct statfs fs {};
    if (::fstatfs(options.file->get(), &fs) == 0) {
      const bool huge = static_cast<unsigned long>(fs.f_type) == HUGETLBFS_MAGIC;
      info.hugetlbfs = huge;
      if (huge && fs.f_bsize > 0) {
        info.size = static_cast<std::size_t>(fs.f_bsize);
      }
    }
  } else if ((options.flags & MAP_HUGETLB) != 0) {
    info.hugetlbfs = true;
    // MAP_HUGE_2MB and friends encode log2 of the page size; without them the kernel uses
    // its default huge page size.
    const auto shift = static_cast<unsigned>(options.flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
    info.size = shift != 0 ? std::size_t{1} << shift : default_huge_page_size();
  }
  if (options.hugetlbfs) {
    info.hugetlbfs = options.hugetlbfs;
  }
  return info;
}

struct Placement {
  std::uint8_t* addr;
  std::uint8_t* reservation;
  std::size_t reservation_size;
};

// Maps the memory: where the kernel chooses, at the caller's fixed address, or, for an
// alignment above the page size or guard pages, inside an over-sized PROT_NONE reservation
// that is then trimmed to the guard pages and the memory.
Result<Placement> place(const Mapping::Options& options, std::size_t mapping_page) {
  const int fd = options.file ? options.file->get() : -1;
  const auto offset = static_cast<off_t>(options.file_start);
  const std::size_t page = page_size();
  const std::size_t unit = std::max(page, mapping_page);
  std::size_t span = 0;
  if (__builtin_add_overflow(options.size, unit - 1, &span)) {
    return std::unexpected(Error::mapping_failed(ENOMEM, options.size));
  }
  span &= ~(unit - 1);

  if (options.fixed != nullptr) {
    // SAFETY: the caller of unsafe_build_at promised that [fixed, fixed + span) is its own
    // and unused; MAP_FIXED replaces what is there.
    void* addr = ::mmap(options.fixed, options.size, options.prot, options.flags | MAP_FIXED,
                        fd, offset);
    if (addr == MAP_FAILED) {
      return std::unexpected(Error::mapping_failed(errno, options.size));
    }
    return Placement{static_cast<std::uint8_t*>(addr), static_cast<std::uint8_t*>(addr), span};
  }

  if (options.alignment <= page && options.guard_pages_before == 0 &&
      options.guard_pages_after == 0) {
    // SAFETY: no MAP_FIXED (refused by create()), so the kernel picks an unused range and
    // nothing existing is replaced.
    void* addr = ::mmap(nullptr, options.size, options.prot, options.flags, fd, offset);
    if (addr == MAP_FAILED) {
      return std::unexpected(Error::mapping_failed(errno, options.size));
    }
    return Placement{static_cast<std::uint8_t*>(addr), static_cast<std::uint8_t*>(addr), span};
  }

  const std::size_t alignment = std::max(options.alignment, unit);
  std::size_t before = 0;
  std::size_t after = 0;
  std::size_t total = 0;
  if (__builtin_mul_overflow(options.guard_pages_before, page, &before) ||
      __builtin_mul_overflow(options.guard_pages_after, page, &after) ||
      __builtin_add_overflow(before, span, &total) || __builtin_add_overflow(total, after, &total) ||
      __builtin_add_overflow(total, alignment - page, &total)) {
    return std::unexpected(Error::mapping_failed(ENOMEM, options.size));
  }
  // SAFETY: no MAP_FIXED: the kernel picks an unused range, which from here on is ours.
  void* raw = ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    return std::unexpected(Error::mapping_failed(errno, options.size));
  }
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  // base and before are page aligned, so start - (base + before) <= alignment - page: the
  // memory and the guard after it end inside the reservation.
  const std::uintptr_t start = (base + before + alignment - 1) & ~std::uintptr_t{alignment - 1};
  // SAFETY: [start, start + span) lies inside the reservation made above, which nothing else
  // uses: MAP_FIXED replaces only our own PROT_NONE pages.
  void* addr = ::mmap(reinterpret_cast<void*>(start), options.size, options.prot,
                      options.flags | MAP_FIXED, fd, offset);
  if (addr == MAP_FAILED) {
    const int err = errno;
    // SAFETY: the reservation is ours and nothing refers to it.
    ::munmap(raw, total);
    return std::unexpected(Error::mapping_failed(err, options.size));
  }
  const std::uintptr_t head = start - before - base;
  const std::uintptr_t tail_start = start + span + after;
  const std::uintptr_t tail = base + total - tail_start;
  // SAFETY: the head and the tail are the unused slack of our reservation; the guard pages
  // between them and the memory stay PROT_NONE.
  if (head != 0) {
    ::munmap(raw, head);
  }
  if (tail != 0) {
    ::munmap(reinterpret_cast<void*>(tail_start), tail);
  }
  return Placement{static_cast<std::uint8_t*>(addr), reinterpret_cast<std::uint8_t*>(start - before),
                   before + span + after};
}

// Applies each advice in `advice` to [addr, addr + size).
Result<void> apply_advice(std::uint8_t* addr, std::size_t size, Advice advice) {
  constexpr std::pair<Advice, int> kAdvice[] = {{Advice::HugePage, MADV_HUGEPAGE},
                                                {Advice::DontDump, MADV_DONTDUMP},
                                                {Advice::Mergeable, MADV_MERGEABLE},
                                                {Advice::DontFork, MADV_DONTFORK}};
  for (const auto& [flag, madv] : kAdvice) {
    if ((advice & flag) == Advice::None) {
      continue;
    }
    // SAFETY: [addr, addr + size) is the mapping just created; these advices change how the
    // kernel backs, dumps, merges or forks it, never its contents.
    if (::madvise(addr, size, madv) != 0) {
      return std::unexpected(
          Error::os_failure(ErrorCode::AdviceFailed, errno, static_cast<std::uint64_t>(madv), size));
    }
  }
  return {};
}

}  // namespace

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

Result<void> check_file_range(int fd, std::uint64_t start, std::size_t size) {
  std::uint64_t end = 0;
  if (__builtin_add_overflow(start, static_cast<std::uint64_t>(size), &end) ||
      end > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max())) {
    return std::unexpected(Error::at(ErrorCode::InvalidOffsetLength, start, size));
  }
  if (auto length = file_size(fd); length && *length < end) {
    return std::unexpected(Error::mapping_past_eof(start, size, *length));
  }
  return {};
}

Result<Mapping> Mapping::create(const Options& options) {
  // Every path refuses an empty mapping, as mmap does: a region's last address is its start
  // plus size minus one, and a region of no bytes would make that the byte before it.
  if (options.size == 0) {
    return std::unexpected(Error::mapping_failed(EINVAL, 0));
  }
  const bool placed = options.alignment != 0 || options.guard_pages_before != 0 ||
                      options.guard_pages_after != 0;
  if (options.external != nullptr) {
    if (options.fixed != nullptr || placed || options.advice != Advice::None) {
      return std::unexpected(Error(ErrorCode::IncompatibleOptions));
    }
    if (reinterpret_cast<std::uintptr_t>(options.external) % detail::page_size() != 0) {
      return std::unexpected(
          Error::at(ErrorCode::InvalidPointer, reinterpret_cast<std::uintptr_t>(options.external)));
    }
    const PageInfo pages = detect_pages(options);
    return Mapping(options.external, nullptr, 0, options, pages.hugetlbfs, pages.size,
                   /*owned=*/false);
  }
  if ((options.flags & MAP_FIXED) != 0) {
    return std::unexpected(Error(ErrorCode::MapFixed));
  }
  if (options.fixed != nullptr) {
    if (placed) {
      return std::unexpected(Error(ErrorCode::IncompatibleOptions));
    }
    if (reinterpret_cast<std::uintptr_t>(options.fixed) % detail::page_size() != 0) {
      return std::unexpected(
          Error::at(ErrorCode::InvalidPointer, reinterpret_cast<std::uintptr_t>(options.fixed)));
    }
  }
  if (options.alignment != 0 && !std::has_single_bit(options.alignment)) {
    return std::unexpected(Error::at(ErrorCode::InvalidAlignment, 0, options.alignment));
  }
  if (options.file) {
    if (auto ok = check_file_range(options.file->get(), options.file_start, options.size); !ok) {
      return std::unexpected(ok.error());
    }
  }
  const PageInfo pages = detect_pages(options);
  if (pages.size > detail::page_size()) {
    // The kernel rounds a huge-page mapping up to whole pages but munmap refuses a length
    // that is not a multiple: catch it here rather than leak the mapping.
    if (options.size % pages.size != 0) {
      return std::unexpected(Error::at(ErrorCode::NotPageAligned, options.size, pages.size));
    }
    if (options.file_start % pages.size != 0) {
      return std::unexpected(Error::at(ErrorCode::NotPageAligned, options.file_start, pages.size));
    }
  }
  auto placement = place(options, pages.size);
  if (!placement) {
    return std::unexpected(placement.error());
  }
  Mapping mapping(placement->addr, placement->reservation, placement->reservation_size, options,
                  pages.hugetlbfs, pages.size, /*owned=*/true);
  // On failure `mapping` goes out of scope and unmaps everything.
  if (auto ok = apply_advice(mapping.addr_, mapping.size_, options.advice); !ok) {
    return std::unexpected(ok.error());
  }
  return mapping;
}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    Mapping old(std::move(*this));
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    reservation_ = std::exchange(other.reservation_, nullptr);
    reservation_size_ = std::exchange(other.reservation_size_, 0);
    prot_ = other.prot_;
    flags_ = other.flags_;
    owned_ = std::exchange(other.owned_, false);
    protection_ = other.protection_;
    advice_ = other.advice_;
    hugetlbfs_ = other.hugetlbfs_;
    page_size_ = other.page_size_;
    file_offset_ = std::move(other.file_offset_);
  }
  return *this;
}

Mapping::~Mapping() {
  if (owned_ && reservation_ != nullptr) {
    // SAFETY: this object created the mapping and its guard pages and is their only owner;
    // every view of it is documented to die with the region.
    ::munmap(reservation_, reservation_size_);
  }
}

bool Mapping::fds_overlap(const Mapping& other) const noexcept {
  if (!file_offset_ || !other.file_offset_) {
    return false;
  }
  struct stat a {};
  struct stat b {};
  if (::fstat(file_offset_->fd(), &a) != 0 || ::fstat(other.file_offset_->fd(), &b) != 0) {
    return false;
  }
  if (a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    return false;
  }
  const std::uint64_t s1 = file_offset_->start();
  const std::uint64_t s2 = other.file_offset_->start();
  // Both ranges were checked to fit in 64 bits when the mappings were created.
  return s1 < s2 ? s1 + size_ > s2 : s2 + other.size_ > s1;
}

Result<void> Mapping::check_single_access(std::size_t offset, std::size_t size,
                                          Permissions access) const noexcept {
  if (auto end = checked_end(offset, size, size_); !end) {
    return std::unexpected(end.error());
  }
  if (reinterpret_cast<std::uintptr_t>(addr_ + offset) % size != 0) {
    return std::unexpected(Error::misaligned(offset, size));
  }
  if (!protection_.as_permissions().allow(access)) {
    return std::unexpected(Error::protection_violation(offset, size, access));
  }
  return {};
}

Result<void> Mapping::msync() const noexcept {
  // SAFETY: [addr_, addr_ + size_) is this live mapping; msync only writes it back.
  if (::msync(addr_, size_, MS_SYNC) != 0) {
    return std::unexpected(Error::os_failure(ErrorCode::MsyncFailed, errno, 0, size_));
  }
  return {};
}

Result<void> Mapping::flush(std::size_t offset, std::size_t len) const noexcept {
  // The range checks of crosvm's flush_region. (Its check that the mapping does not wrap
  // the address space holds for every live mapping.)
  if (offset >= size_ || size_ - offset < len) {
    return std::unexpected(Error::invalid_range(offset, len, size_));
  }
  if (!protection_.readable()) {
    return std::unexpected(Error::protection_violation(offset, len, Permissions::Read));
  }
  return flush_lines(addr_ + offset, len);
}

}  // namespace detail
}  // namespace guestmem
