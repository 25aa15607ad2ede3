// guestmem: mappings of memory into the VMM's address space.
//
// An `MmapRegion` owns one mmap (anonymous or of a file) and unmaps it when destroyed; or it
// wraps memory someone else mapped ("external", not unmapped). It records how it was mapped
// (prot, flags, file and offset, whether the file lives on hugetlbfs) and carries the dirty
// bitmap of the memory. `MmapRegionBuilder` creates one with every option; `FileOffset`
// names a shared file descriptor and an offset into it.
//
// An MmapRegion has no guest address: `GuestRegionMmap` (guestmem/guest_region.hpp) places
// it at one.
//
//   auto anon = MmapRegion<>::create(0x10000);                                  // Result
//   auto file = MmapRegion<>::from_file(FileOffset(std::move(fd), 0), 0x10000);
//   auto ro = MmapRegionBuilder<>(0x1000).with_mmap_prot(PROT_READ).build();
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "guestmem/bitmap.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fd.hpp"
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
  [[nodiscard]] int fd() const noexcept { return file_->get(); }
  /// The offset in the file where the mapping starts.
  [[nodiscard]] std::uint64_t start() const noexcept { return start_; }

 private:
  std::shared_ptr<const UniqueFd> file_;
  std::uint64_t start_;
};

namespace detail {

/// The mmap itself, without the bitmap: everything here is independent of the bitmap type,
/// so it is compiled once in src/mmap_region.cpp.
class Mapping {
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
    std::optional<bool> hugetlbfs;
  };

  /// Maps (or, with `external`, wraps) memory as `options` say.
  /// Errors: MapFixed, InvalidPointer (external not page aligned), InvalidOffsetLength,
  /// MappingPastEof, MappingFailed(errno) (size 0 fails with EINVAL).
  static Result<Mapping> create(const Options& options);

  Mapping(Mapping&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        prot_(other.prot_),
        flags_(other.flags_),
        owned_(std::exchange(other.owned_, false)),
        hugetlbfs_(other.hugetlbfs_),
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
  [[nodiscard]] std::optional<bool> hugetlbfs() const noexcept { return hugetlbfs_; }
  [[nodiscard]] const FileOffset* file_offset() const noexcept {
    return file_offset_ ? &*file_offset_ : nullptr;
  }
  /// True when both mappings are of the same file (same device and inode, whatever the
  /// descriptor) and their file ranges overlap.
  [[nodiscard]] bool fds_overlap(const Mapping& other) const noexcept;

 private:
  Mapping(std::uint8_t* addr, const Options& options, std::optional<bool> hugetlbfs,
          bool owned) noexcept
      : addr_(addr),
        size_(options.size),
        prot_(options.prot),
        flags_(options.flags),
        owned_(owned),
        hugetlbfs_(hugetlbfs) {
    if (options.file) {
      file_offset_.emplace(options.file, options.file_start);
    }
  }

  std::uint8_t* addr_;
  std::size_t size_;
  int prot_;
  int flags_;
  bool owned_;
  std::optional<bool> hugetlbfs_;
  std::optional<FileOffset> file_offset_;
};

/// The host page size, read from the system once.
[[nodiscard]] std::size_t page_size() noexcept;

}  // namespace detail

template <Bitmap B = NoBitmap>
class MmapRegionBuilder;

/// One mapping and its dirty bitmap. Moves, never copies; unmaps on destruction when owned.
/// Validity of views (slices, host pointers): while the region is alive and not moved from.
template <Bitmap B = NoBitmap>
class MmapRegion {
 public:
  using bitmap_type = B;
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

  [[nodiscard]] std::size_t size() const noexcept { return mapping_.size(); }

  /// The first byte of the mapping, for handing the memory to KVM or another process.
  /// Writes through it are not reported to the dirty bitmap.
  /// Validity: while the region is alive (an external mapping: while its owner keeps it).
  [[nodiscard]] std::uint8_t* unsafe_host_ptr() const noexcept { return mapping_.addr(); }

  /// The file and offset mapped, or nullptr for anonymous memory. Validity: as the region.
  [[nodiscard]] const FileOffset* file_offset() const noexcept { return mapping_.file_offset(); }
  /// The prot argument given to mmap.
  [[nodiscard]] int prot() const noexcept { return mapping_.prot(); }
  /// The flags argument given to mmap.
  [[nodiscard]] int flags() const noexcept { return mapping_.flags(); }
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
  [[nodiscard]] const B& bitmap() const noexcept { return bitmap_; }

  /// A view of `count` bytes at `offset`.
  /// Errors: Overflow, or OutOfBounds when the range passes the end.
  /// Validity: as the region.
  [[nodiscard]] Result<slice_type> get_slice(std::size_t offset, std::size_t count) const noexcept {
    if (auto end = detail::checked_end(offset, count, size()); !end) {
      return std::unexpected(end.error());
    }
    // SAFETY: [offset, offset + count) lies inside the live mapping.
    return slice_type::from_raw_parts(mapping_.addr() + offset, count, bitmap_.slice_at(offset));
  }

  /// A view of the whole mapping. Validity: as the region.
  [[nodiscard]] slice_type as_volatile_slice() const noexcept {
    // SAFETY: the mapping is live and `size()` bytes long.
    return slice_type::from_raw_parts(mapping_.addr(), size(), bitmap_.slice_at(0));
  }

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
/// shared mapping when a file is given; MAP_NORESERVE either way; a fresh bitmap.
template <Bitmap B>
class MmapRegionBuilder {
 public:
  explicit MmapRegionBuilder(std::size_t size) noexcept { options_.size = size; }

  /// The bitmap to use instead of a fresh one (required when B is not a NewBitmap).
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
  /// Overrides what is_hugetlbfs() reports.
  MmapRegionBuilder&& with_hugetlbfs(bool hugetlbfs) && noexcept {
    options_.hugetlbfs = hugetlbfs;
    return std::move(*this);
  }
  /// Wraps memory someone else mapped instead of mapping: build() calls no mmap, and the
  /// region never unmaps it.
  /// Preconditions: [addr, addr + size) is mapped with the prot and flags given to this
  /// builder and stays mapped while the region or any view of it is used; nothing else
  /// unmaps or remaps it meanwhile. A violation is a use-after-unmap, which no check here can
  /// catch: that is why the name says unsafe.
  MmapRegionBuilder&& unsafe_with_raw_mmap_pointer(std::uint8_t* addr) && noexcept {
    options_.external = addr;
    return std::move(*this);
  }

  /// Creates the region.
  /// Errors: MapFixed, InvalidPointer, InvalidOffsetLength, MappingPastEof,
  /// MappingFailed(errno) (size 0 fails with EINVAL).
  Result<MmapRegion<B>> build() && {
    if (!prot_set_) {
      options_.prot = kDefaultProt;
    }
    if (!flags_set_) {
      options_.flags = options_.file ? kDefaultFileFlags : kDefaultAnonFlags;
    }
    const std::size_t size = options_.size;
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

 private:
  static constexpr int kDefaultProt = PROT_READ | PROT_WRITE;
  static constexpr int kDefaultAnonFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  static constexpr int kDefaultFileFlags = MAP_SHARED | MAP_NORESERVE;

  detail::Mapping::Options options_;
  std::optional<B> bitmap_;
  bool prot_set_ = false;
  bool flags_set_ = false;
};

}  // namespace guestmem
