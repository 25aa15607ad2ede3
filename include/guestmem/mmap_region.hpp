// guestmem: mappings of memory into the VMM's address space.
//
// An `MmapRegion` owns one mmap (anonymous, of a file or of a `SharedMemory`) and unmaps it
// when destroyed; or it wraps memory someone else mapped ("external", not unmapped). It
// records how it was mapped (prot, flags, file and offset, hugetlbfs and its page size, the
// madvise advice applied) and carries the dirty bitmap of the memory. `MmapRegionBuilder`
// creates one with every option: protection, alignment of the start (over-reserve and trim),
// PROT_NONE guard pages around it, MAP_POPULATE, the MAP_NORESERVE choice, madvise advice,
// and an unsafe build at a fixed address. `FileOffset` names a shared file descriptor and an
// offset into it.
//
// Besides views, a region offers what device emulation needs of a mapping: single volatile
// accesses with the fence rule for I/O (`write_obj_volatile`, `read_obj_volatile`), msync,
// and cache-line flushes (`flush_region`, `flush_all`).
//
// An MmapRegion has no guest address: `GuestRegionMmap` (guestmem/guest_region.hpp) places
// it at one, and refuses accesses the protection does not allow.
//
//   auto anon = MmapRegion<>::create(0x10000);                                  // Result
//   auto file = MmapRegion<>::from_file(FileOffset(std::move(fd), 0), 0x10000);
//   auto ro = MmapRegionBuilder<>(0x1000).with_protection(Protection::read()).build();
//   auto ram = MmapRegionBuilder<>(1 << 30)
//                  .with_alignment(2 << 20)                         // 2 MiB: huge pages
//                  .with_guard_pages(1, 1)
//                  .with_advice(Advice::HugePage | Advice::DontDump)
//                  .build();
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "guestmem/bitmap.hpp"
#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/copy.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fd.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/protection.hpp"
#include "guestmem/shared_memory.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {

/// A file shared by the regions that map it, and the offset at which a mapping starts.
class FileOffset {
 public:
  /// Takes ownership of `file`.
  FileOffset(UniqueFd file, std::uint64_t start)
      : file_(std::make_shared<const UniqueFd>(std::move(file))), start_(start) {}
  /// Shares `file` with its other owners.
  FileOffset(std::shared_ptr<const UniqueFd> file, std::uint64_t start) noexcept
      : file_(std::move(file)), start_(start) {}

  /// The file. Validity: while any FileOffset (or region) sharing it is alive.
  [[nodiscard]] const UniqueFd& file() const noexcept { return *file_; }
  /// The shared owner of the file.
  [[nodiscard]] const std::shared_ptr<const UniqueFd>& arc() const noexcept { return file_; }
  /// The descriptor number. Validity: as file(); never close it (the FileOffset owns it).
  [[nodiscard]] int fd() const noexcept { return file_->get(); }
  /// The offset in the file where the mapping starts.
  [[nodiscard]] std::uint64_t start() const noexcept { return start_; }

 private:
  std::shared_ptr<const UniqueFd> file_;
  std::uint64_t start_;
};

/// madvise advice a builder applies to a new mapping, combined with `|`.
enum class Advice : std::uint8_t {
  None = 0,
  /// MADV_HUGEPAGE: back the memory with transparent huge pages where possible.
  HugePage = 1,
  /// MADV_DONTDUMP: leave guest memory out of core dumps of the VMM.
  DontDump = 2,
  /// MADV_MERGEABLE: let KSM merge identical pages (needs a kernel with KSM).
  Mergeable = 4,
  /// MADV_DONTFORK: a child process does not inherit the mapping (nor copy-on-write it).
  DontFork = 8,
};

[[nodiscard]] constexpr Advice operator|(Advice a, Advice b) noexcept {
  return static_cast<Advice>(static_cast<std::uint8_t>(static_cast<std::uint8_t>(a) |
                                                       static_cast<std::uint8_t>(b)));
}
[[nodiscard]] constexpr Advice operator&(Advice a, Advice b) noexcept {
  return static_cast<Advice>(static_cast<std::uint8_t>(static_cast<std::uint8_t>(a) &
                                                       static_cast<std::uint8_t>(b)));
}

/// Whether a mapping reserves swap space for its private writable pages.
enum class SwapReservation : std::uint8_t {
  /// MAP_NORESERVE: pages are backed when touched; memory overcommit decides what happens
  /// when the system runs out (the default, as a VMM expects for guest RAM).
  NoReserve,
  /// No MAP_NORESERVE: the kernel accounts the whole size up front, and mmap fails with
  /// ENOMEM when it cannot.
  Reserve,
};

/// The size of the lines that `MmapRegion::flush_region` writes back, read from the CPU
/// once (CPUID on x86-64, CTR_EL0 on aarch64; sysconf elsewhere, and 64 if that is unknown).
[[nodiscard]] GUESTMEM_API std::size_t cache_line_size() noexcept;

namespace detail {

/// The mmap itself, without the bitmap: everything here is independent of the bitmap type,
/// so it is compiled once in src/mmap_region.cpp.
class GUESTMEM_API Mapping {
 public:
  struct Options {
    std::size_t size = 0;
    int prot = 0;
    int flags = 0;
    // The file to map (null for anonymous memory) and the offset in it. Kept as two fields
    // rather than std::optional<FileOffset>, which trips GCC 12's -Wmaybe-uninitialized
    // (PR 80635) in every builder chain.
    std::shared_ptr<const UniqueFd> file;
    std::uint64_t file_start = 0;
    std::uint8_t* external = nullptr;
    std::uint8_t* fixed = nullptr;
    std::optional<bool> hugetlbfs;
    // 0 when not asked for; otherwise must be a power of two.
    std::size_t alignment = 0;
    // Guard pages (of the system page size) before and after the mapping.
    std::size_t guard_pages_before = 0;
    std::size_t guard_pages_after = 0;
    Advice advice = Advice::None;
  };

  /// Maps (or, with `external`, wraps) memory as `options` say.
  /// Errors: MapFixed, IncompatibleOptions, InvalidPointer (external or fixed not page
  /// aligned), InvalidAlignment, InvalidOffsetLength, MappingPastEof, NotPageAligned (a
  /// huge-page mapping whose size or file offset is not a multiple of the huge page size),
  /// MappingFailed(errno) (size 0 fails with EINVAL), AdviceFailed(advice, errno).
  static Result<Mapping> create(const Options& options);

  Mapping(Mapping&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        reservation_(std::exchange(other.reservation_, nullptr)),
        reservation_size_(std::exchange(other.reservation_size_, 0)),
        prot_(other.prot_),
        flags_(other.flags_),
        owned_(std::exchange(other.owned_, false)),
        protection_(other.protection_),
        advice_(other.advice_),
        hugetlbfs_(other.hugetlbfs_),
        page_size_(other.page_size_),
        file_offset_(std::move(other.file_offset_)) {}
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  [[nodiscard]] std::uint8_t* addr() const noexcept { return addr_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] int prot() const noexcept { return prot_; }
  [[nodiscard]] int flags() const noexcept { return flags_; }
  [[nodiscard]] bool owned() const noexcept { return owned_; }
  [[nodiscard]] Protection protection() const noexcept { return protection_; }
  [[nodiscard]] Advice advice() const noexcept { return advice_; }
  [[nodiscard]] std::optional<bool> hugetlbfs() const noexcept { return hugetlbfs_; }
  [[nodiscard]] std::size_t page_size() const noexcept { return page_size_; }
  [[nodiscard]] const FileOffset* file_offset() const noexcept {
    return file_offset_ ? &*file_offset_ : nullptr;
  }
  /// True when both mappings are of the same file (same device and inode, whatever the
  /// descriptor) and their file ranges overlap.
  [[nodiscard]] bool fds_overlap(const Mapping& other) const noexcept;

  /// Checks a single access of `size` bytes (1, 2, 4 or 8) at `offset`: in range, aligned to
  /// its size, allowed by the protection. Errors: Overflow, OutOfBounds, Misaligned,
  /// ProtectionViolation.
  [[nodiscard]] Result<void> check_single_access(std::size_t offset, std::size_t size,
                                                 Permissions access) const noexcept;
  /// msync(MS_SYNC) of the whole mapping. Errors: MsyncFailed(errno).
  [[nodiscard]] Result<void> msync() const noexcept;
  /// Writes back the cache lines of [offset, offset + len). Errors: InvalidRange,
  /// ProtectionViolation (not readable), NotImplemented.
  [[nodiscard]] Result<void> flush(std::size_t offset, std::size_t len) const noexcept;

 private:
  Mapping(std::uint8_t* addr, std::uint8_t* reservation, std::size_t reservation_size,
          const Options& options, std::optional<bool> hugetlbfs, std::size_t page_size,
          bool owned)
      : addr_(addr),
        size_(options.size),
        reservation_(reservation),
        reservation_size_(reservation_size),
        prot_(options.prot),
        flags_(options.flags),
        owned_(owned),
        protection_(Protection::from_mmap_prot(options.prot)),
        advice_(options.advice),
        hugetlbfs_(hugetlbfs),
        page_size_(page_size) {
    if (options.file) {
      file_offset_.emplace(options.file, options.file_start);
    }
  }

  // The memory handed out.
  std::uint8_t* addr_;
  std::size_t size_;
  // What the destructor unmaps: the memory and its guard pages.
  std::uint8_t* reservation_;
  std::size_t reservation_size_;
  int prot_;
  int flags_;
  bool owned_;
  Protection protection_;
  Advice advice_;
  std::optional<bool> hugetlbfs_;
  std::size_t page_size_;
  std::optional<FileOffset> file_offset_;
};

/// The host page size, read from the system once.
[[nodiscard]] GUESTMEM_API std::size_t page_size() noexcept;

/// Checks that the file `fd` holds [start, start + size) when its size is known (regular
/// files, memfds, block devices). Errors: InvalidOffsetLength, MappingPastEof.
[[nodiscard]] GUESTMEM_API Result<void> check_file_range(int fd, std::uint64_t start,
                                                       std::size_t size);

/// One store of `value` that the compiler neither drops, merges nor splits, and that other
/// threads see whole (a relaxed atomic store through a volatile pointer).
/// Preconditions: `dst` is valid for writing sizeof(T) bytes and aligned to sizeof(T).
template <ByteValued T>
inline void volatile_store(std::uint8_t* dst, const T& value) noexcept {
  using U = UintOfSize<sizeof(T)>;
  // SAFETY: the caller guarantees `dst` is valid for and aligned to sizeof(T) == sizeof(U).
  __atomic_store_n(reinterpret_cast<volatile U*>(dst), std::bit_cast<U>(value), __ATOMIC_RELAXED);
}

/// A full (seq_cst) fence: every earlier access of this thread is visible before any later
/// one.
inline void full_fence() noexcept {
#if defined(GUESTMEM_TSAN)
  // GCC rejects fences under ThreadSanitizer, which does not model them; a seq_cst
  // read-modify-write is a full barrier as well (a locked instruction on x86-64).
  std::atomic<unsigned char> local{0};
  local.fetch_add(0, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

/// One load, as volatile_store in the other direction.
/// Preconditions: `src` is valid for reading sizeof(T) bytes and aligned to sizeof(T).
template <ByteValued T>
[[nodiscard]] inline T volatile_load(const std::uint8_t* src) noexcept {
  using U = UintOfSize<sizeof(T)>;
  // SAFETY: the caller guarantees `src` is valid for and aligned to sizeof(T) == sizeof(U).
  return std::bit_cast<T>(__atomic_load_n(reinterpret_cast<const volatile U*>(src), __ATOMIC_RELAXED));
}

}  // namespace detail

template <Bitmap B = NoBitmap>
class MmapRegionBuilder;

/// One mapping and its dirty bitmap. Moves, never copies; unmaps on destruction when owned.
/// Validity of views (slices, host pointers): while the region is alive and not moved from.
template <Bitmap B = NoBitmap>
class MmapRegion {
 public:
  /// The dirty bitmap.
  using bitmap_type = B;
  /// The views that accesses hand out.
  using slice_type = VolatileSlice<typename B::slice_type>;

  /// `size` bytes of anonymous private memory, read-write, MAP_NORESERVE (pages are only
  /// backed when touched). Errors: MappingFailed(errno).
  static Result<MmapRegion> create(std::size_t size)
    requires NewBitmap<B>
  {
    return MmapRegionBuilder<B>(size).build();
  }

  /// `size` bytes of the file at `file_offset`, shared and read-write (writes reach the file).
  /// Errors: InvalidOffsetLength, MappingPastEof (the file is shorter than start + size),
  /// MappingFailed(errno).
  static Result<MmapRegion> from_file(FileOffset file_offset, std::size_t size)
    requires NewBitmap<B>
  {
    return MmapRegionBuilder<B>(size).with_file_offset(std::move(file_offset)).build();
  }

  /// The mapping's length in bytes.
  [[nodiscard]] std::size_t size() const noexcept { return mapping_.size(); }

  /// The first byte of the mapping, for handing the memory to KVM or another process.
  /// Writes through it are not reported to the dirty bitmap, and nothing checks them against
  /// the protection.
  /// Validity: while the region is alive (an external mapping: while its owner keeps it).
  [[nodiscard]] std::uint8_t* unsafe_host_ptr() const noexcept { return mapping_.addr(); }

  /// The file and offset mapped, or nullptr for anonymous memory. Validity: as the region.
  [[nodiscard]] const FileOffset* file_offset() const noexcept { return mapping_.file_offset(); }
  /// The prot argument given to mmap.
  [[nodiscard]] int prot() const noexcept { return mapping_.prot(); }
  /// The flags argument given to mmap (without the MAP_FIXED that places an aligned or
  /// guarded mapping inside its reservation).
  [[nodiscard]] int flags() const noexcept { return mapping_.flags(); }
  /// The read and write bits of prot().
  [[nodiscard]] Protection protection() const noexcept { return mapping_.protection(); }
  /// True when the protection allows an access of kind `access` (Permissions::No always is).
  [[nodiscard]] GUESTMEM_ALWAYS_INLINE bool permits(Permissions access) const noexcept {
    return mapping_.protection().as_permissions().allow(access);
  }
  /// The madvise advice applied when the mapping was built.
  [[nodiscard]] Advice advice() const noexcept { return mapping_.advice(); }
  /// False for memory mapped by someone else (unsafe_with_raw_mmap_pointer).
  [[nodiscard]] bool owned() const noexcept { return mapping_.owned(); }
  /// True when both regions map overlapping ranges of the same file (compared by device and
  /// inode, so two descriptors of one file are recognised).
  template <Bitmap B2>
  [[nodiscard]] bool fds_overlap(const MmapRegion<B2>& other) const noexcept {
    return mapping_.fds_overlap(other.mapping_);
  }
  /// Whether the memory lives on hugetlbfs: from statfs for a file, true for MAP_HUGETLB,
  /// std::nullopt (unknown) for other anonymous memory, or what the builder was told.
  [[nodiscard]] std::optional<bool> is_hugetlbfs() const noexcept { return mapping_.hugetlbfs(); }
  /// The size of the pages backing the memory: the huge page size of a hugetlbfs file (from
  /// statfs) or of MAP_HUGETLB memory (from the flags, else the system default), otherwise
  /// the system page size.
  [[nodiscard]] std::size_t page_size() const noexcept { return mapping_.page_size(); }
  /// The dirty bitmap. Validity: while the region is alive and not moved from.
  [[nodiscard]] const B& bitmap() const noexcept { return bitmap_; }

  /// A view of `count` bytes at `offset`.
  /// Errors: Overflow, or OutOfBounds when the range passes the end.
  /// Validity: as the region. The view carries no protection: for a mapping that is not
  /// writable it serves reads only, and a write through it faults (SIGSEGV). The region's
  /// own accessors (and GuestRegionMmap's) check the protection and refuse instead.
  [[nodiscard]] Result<slice_type> get_slice(std::size_t offset, std::size_t count) const noexcept {
    if (auto end = detail::checked_end(offset, count, size()); !end) {
      return std::unexpected(end.error());
    }
    // SAFETY: [offset, offset + count) lies inside the live mapping.
    return slice_type::from_raw_parts(mapping_.addr() + offset, count, bitmap_.slice_at(offset));
  }

  /// A view of the whole mapping. Validity and protection: as get_slice.
  [[nodiscard]] slice_type as_volatile_slice() const noexcept {
    // SAFETY: the mapping is live and `size()` bytes long.
    return slice_type::from_raw_parts(mapping_.addr(), size(), bitmap_.slice_at(0));
  }

  /// Writes `value` at `offset` with one volatile store, for memory that a device or another
  /// process watches. A full fence (seq_cst) comes first, so every earlier write of this
  /// thread is visible before this one, which may start I/O that depends on them. The store
  /// is reported to the dirty bitmap.
  /// Errors: Overflow or OutOfBounds when the value does not fit; Misaligned(offset,
  /// sizeof(T)) when `offset` is not a multiple of sizeof(T); ProtectionViolation when the
  /// mapping is not writable.
  /// Concurrency: others may access the same bytes; they see all or nothing of the store.
  template <ByteValued T>
    requires(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8)
  Result<void> write_obj_volatile(const T& value, std::size_t offset) const noexcept {
    if (auto ok = mapping_.check_single_access(offset, sizeof(T), Permissions::Write); !ok)
        [[unlikely]] {
      return ok;
    }
    detail::full_fence();
    // SAFETY: check_single_access proved sizeof(T) writable bytes at offset, aligned.
    detail::volatile_store(mapping_.addr() + offset, value);
    bitmap_.mark_dirty(offset, sizeof(T));
    return {};
  }

  /// Reads a `T` at `offset` with one volatile load. No fence: a read does not publish
  /// anything; order later accesses after it with `load(..., std::memory_order_acquire)` or a
  /// fence where a protocol needs it.
  /// Errors: as write_obj_volatile, with ProtectionViolation when the mapping is not readable.
  template <ByteValued T>
    requires(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8)
  Result<T> read_obj_volatile(std::size_t offset) const noexcept {
    if (auto ok = mapping_.check_single_access(offset, sizeof(T), Permissions::Read); !ok)
        [[unlikely]] {
      return std::unexpected(ok.error());
    }
    // SAFETY: check_single_access proved sizeof(T) readable bytes at offset, aligned.
    return detail::volatile_load<T>(mapping_.addr() + offset);
  }

  /// Writes the whole mapping back to its file and waits for it (msync with MS_SYNC); for
  /// anonymous memory there is nothing to write and it succeeds.
  /// Errors: MsyncFailed(errno), for example EIO when the file system fails the write.
  [[nodiscard]] Result<void> msync() const noexcept { return mapping_.msync(); }

  /// Writes the CPU cache lines holding [offset, offset + len) back to memory (clflush on
  /// x86-64, `dc cvac` on aarch64), then fences, for memory that someone reads without going
  /// through the cache: a guest's uncached mapping, or a device. Lines that only partly
  /// overlap the range are written back too. Invalidation (for memory someone else writes
  /// uncached) is not offered.
  /// Errors: InvalidRange(offset, len, size()) when offset >= size() or the range passes the
  /// end (also for len == 0 at or past the end); ProtectionViolation when the mapping is not
  /// readable (the CPU treats a flush as a read); NotImplemented on other architectures.
  [[nodiscard]] Result<void> flush_region(std::size_t offset, std::size_t len) const noexcept {
    return mapping_.flush(offset, len);
  }
  /// flush_region(0, size()).
  [[nodiscard]] Result<void> flush_all() const noexcept { return mapping_.flush(0, size()); }

 private:
  template <Bitmap>
  friend class MmapRegion;
  friend class MmapRegionBuilder<B>;

  MmapRegion(detail::Mapping mapping, B bitmap) noexcept
      : mapping_(std::move(mapping)), bitmap_(std::move(bitmap)) {}

  detail::Mapping mapping_;
  B bitmap_;
};

/// Every way to create an MmapRegion. Defaults: read-write; anonymous private memory, or a
/// shared mapping when a file is given; MAP_NORESERVE either way; placed where the kernel
/// chooses (page aligned); no guard pages, no advice; a fresh bitmap.
template <Bitmap B>
class MmapRegionBuilder {
 public:
  /// A builder of a mapping of `size` bytes; its other members choose the backing and options.
  explicit MmapRegionBuilder(std::size_t size) noexcept { options_.size = size; }

  /// The bitmap to use instead of a fresh one (required when B is not a NewBitmap). It must
  /// cover the whole mapping: a bitmap with a `len()` shorter than the size is refused by
  /// build(), because the writes past its end would never be reported dirty.
  MmapRegionBuilder&& with_bitmap(B bitmap) && noexcept {
    bitmap_.emplace(std::move(bitmap));
    return std::move(*this);
  }
  /// The prot argument of mmap (default PROT_READ | PROT_WRITE).
  MmapRegionBuilder&& with_mmap_prot(int prot) && noexcept {
    options_.prot = prot;
    prot_set_ = true;
    return std::move(*this);
  }
  /// The protection of the mapping (default Protection::read_write()); the same as
  /// with_mmap_prot(protection.to_mmap_prot()).
  MmapRegionBuilder&& with_protection(Protection protection) && noexcept {
    return std::move(*this).with_mmap_prot(protection.to_mmap_prot());
  }
  /// The flags argument of mmap (default MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, or
  /// MAP_SHARED | MAP_NORESERVE with a file). MAP_FIXED is refused by build().
  MmapRegionBuilder&& with_mmap_flags(int flags) && noexcept {
    options_.flags = flags;
    flags_set_ = true;
    return std::move(*this);
  }
  /// Map this file at this offset instead of anonymous memory.
  MmapRegionBuilder&& with_file_offset(FileOffset file_offset) && noexcept {
    options_.file = file_offset.arc();
    options_.file_start = file_offset.start();
    return std::move(*this);
  }
  /// Map `shm` from byte `offset` (a multiple of the page size) instead of anonymous memory;
  /// the mapping shares the descriptor and keeps it open.
  MmapRegionBuilder&& from_shared_memory(const SharedMemory& shm,
                                         std::uint64_t offset = 0) && noexcept {
    options_.file = shm.file();
    options_.file_start = offset;
    return std::move(*this);
  }
  /// Overrides what is_hugetlbfs() reports.
  MmapRegionBuilder&& with_hugetlbfs(bool hugetlbfs) && noexcept {
    options_.hugetlbfs = hugetlbfs;
    return std::move(*this);
  }
  /// Places the start of the mapping at a multiple of `alignment`, a power of two (2 MiB
  /// lets the kernel back guest RAM with transparent huge pages from the first byte).
  /// build() reserves `alignment` more address space than needed and unmaps what is left
  /// over on both sides. Alignments up to the page size change nothing.
  MmapRegionBuilder&& with_alignment(std::size_t alignment) && noexcept {
    options_.alignment = alignment;
    return std::move(*this);
  }
  /// Surrounds the mapping with `before` and `after` PROT_NONE pages (of the system page
  /// size) that belong to the region: an access that runs off either end faults at once
  /// instead of reaching a neighbouring mapping. They are unmapped with the region.
  MmapRegionBuilder&& with_guard_pages(std::size_t before, std::size_t after) && noexcept {
    options_.guard_pages_before = before;
    options_.guard_pages_after = after;
    return std::move(*this);
  }
  /// Adds MAP_POPULATE: build() faults every page in, so the first guest accesses do not.
  MmapRegionBuilder&& with_populate() && noexcept {
    populate_ = true;
    return std::move(*this);
  }
  /// Sets or clears MAP_NORESERVE (default SwapReservation::NoReserve). Applied on top of
  /// with_mmap_flags.
  MmapRegionBuilder&& with_swap_reservation(SwapReservation reservation) && noexcept {
    swap_ = reservation;
    return std::move(*this);
  }
  /// Adds madvise advice that build() applies to the new mapping; build() fails
  /// (AdviceFailed) when the kernel refuses one, for example MADV_MERGEABLE without KSM.
  MmapRegionBuilder&& with_advice(Advice advice) && noexcept {
    options_.advice = options_.advice | advice;
    return std::move(*this);
  }
  /// Wraps memory someone else mapped instead of mapping: build() calls no mmap, and the
  /// region never unmaps it. Alignment, guard pages and advice cannot be combined with it.
  /// Preconditions: [addr, addr + size) is mapped with the prot and flags given to this
  /// builder and stays mapped while the region or any view of it is used; nothing else
  /// unmaps or remaps it meanwhile. A violation is a use-after-unmap, which no check here can
  /// catch: that is why the name says unsafe.
  MmapRegionBuilder&& unsafe_with_raw_mmap_pointer(std::uint8_t* addr) && noexcept {
    options_.external = addr;
    return std::move(*this);
  }

  /// Creates the region.
  /// Errors: InvalidBitmap(bitmap.len(), size) when the bitmap given to with_bitmap covers
  /// fewer bytes than the mapping (checked first, so nothing is mapped); MapFixed;
  /// IncompatibleOptions; InvalidPointer; InvalidAlignment (not a power of two);
  /// InvalidOffsetLength; MappingPastEof; NotPageAligned (a hugetlbfs or MAP_HUGETLB mapping
  /// whose size or file offset is not a multiple of its huge page size, which munmap would
  /// refuse); MappingFailed(errno) (size 0 fails with EINVAL); AdviceFailed(advice, errno), in
  /// which case nothing stays mapped.
  Result<MmapRegion<B>> build() && { return std::move(*this).build_impl(); }

  /// Creates the region at `addr` exactly, with MAP_FIXED. Alignment and guard pages cannot
  /// be combined with it.
  /// Preconditions: [addr, addr + size rounded up to pages) belongs to the caller (typically
  /// address space it reserved itself), and nothing there is in use: MAP_FIXED silently
  /// replaces whatever is mapped in the range, so a wrong address corrupts unrelated memory
  /// of the process, which no check here can detect. That is why the name says unsafe. The
  /// region owns the new mapping and unmaps it when destroyed, which leaves a hole in the
  /// caller's reservation.
  /// Errors: as build(), and InvalidPointer when `addr` is not page aligned.
  Result<MmapRegion<B>> unsafe_build_at(std::uint8_t* addr) && {
    options_.fixed = addr;
    return std::move(*this).build_impl();
  }

 private:
  static constexpr int kDefaultProt = PROT_READ | PROT_WRITE;
  static constexpr int kDefaultAnonFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  static constexpr int kDefaultFileFlags = MAP_SHARED | MAP_NORESERVE;

  Result<MmapRegion<B>> build_impl() && {
    if (!prot_set_) {
      options_.prot = kDefaultProt;
    }
    if (!flags_set_) {
      options_.flags = options_.file ? kDefaultFileFlags : kDefaultAnonFlags;
    }
    if (populate_) {
      options_.flags |= MAP_POPULATE;
    }
    if (swap_ == SwapReservation::NoReserve) {
      options_.flags |= MAP_NORESERVE;
    } else if (swap_ == SwapReservation::Reserve) {
      options_.flags &= ~MAP_NORESERVE;
    }
    const std::size_t size = options_.size;
    // A bitmap that knows its length must cover the mapping: marks past its end are ignored,
    // so the pages there would never be reported dirty. (A bitmap type without len() is the
    // caller's to size.)
    if constexpr (requires(const B& b) {
                    { b.len() } -> std::convertible_to<std::size_t>;
                  }) {
      if (bitmap_) {
        if (const auto covered = static_cast<std::size_t>(bitmap_->len()); covered < size) {
          return std::unexpected(Error::at(ErrorCode::InvalidBitmap, covered, size));
        }
      }
    }
    auto mapping = detail::Mapping::create(options_);
    if (!mapping) {
      return std::unexpected(mapping.error());
    }
    if (bitmap_) {
      return MmapRegion<B>(std::move(*mapping), std::move(*bitmap_));
    }
    if constexpr (NewBitmap<B>) {
      return MmapRegion<B>(std::move(*mapping), B::with_len(size));
    } else {
      GUESTMEM_ASSERT(false, "MmapRegionBuilder: this bitmap type needs with_bitmap()");
      std::unreachable();
    }
  }

  detail::Mapping::Options options_;
  std::optional<B> bitmap_;
  std::optional<SwapReservation> swap_;
  bool prot_set_ = false;
  bool flags_set_ = false;
  bool populate_ = false;
};

}  // namespace guestmem
