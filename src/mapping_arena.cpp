#include "guestmem/mapping_arena.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>

#include "guestmem/detail/config.hpp"
#include "guestmem/mmap_region.hpp"

namespace guestmem {
namespace {

constexpr int kPlaceholderFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

// Maps the inaccessible placeholder over [addr, addr + size) of an arena, replacing whatever
// is there. Returns 0, or the errno of the failed mmap.
int map_placeholder(std::uint8_t* addr, std::size_t size) noexcept {
  // SAFETY: the range lies inside the arena's reservation, which only the arena uses.
  void* placed = ::mmap(addr, size, PROT_NONE, kPlaceholderFlags | MAP_FIXED, -1, 0);
  return placed == MAP_FAILED ? errno : 0;
}

// Whether every page of [addr, addr + size) is mapped. msync with MS_ASYNC does nothing to a
// mapping but fails with ENOMEM where the range has a hole.
bool is_mapped(std::uint8_t* addr, std::size_t size) noexcept {
  // SAFETY: MS_ASYNC neither reads nor writes the range, and the range is the arena's.
  return ::msync(addr, size, MS_ASYNC) == 0;
}

// After a MAP_FIXED mmap over [addr, addr + size) failed, returns true when what was there is
// still there: the range has no hole, because the kernel refused before it unmapped anything
// (as at the mapping-count limit, where it cannot split the VMAs around the range). Older
// kernels unmapped the range before some failures; then the placeholder goes back and this
// returns false, or, should that fail too, the arena aborts, because a hole in the reservation
// could be taken by another mmap and later unmapped by the arena.
bool keep_reserved(std::uint8_t* addr, std::size_t size) noexcept {
  if (is_mapped(addr, size)) {
    return true;
  }
  const int err = map_placeholder(addr, size);
  GUESTMEM_ASSERT(err == 0,
                  "MappingArena: cannot restore its reservation after a failed mmap left a hole");
  return false;
}

}  // namespace

Result<MappingArena> MappingArena::create(std::size_t size) {
  const std::size_t page = detail::page_size();
  if (size % page != 0) {
    return std::unexpected(Error::at(ErrorCode::NotPageAligned, size, page));
  }
  if (size == 0) {
    return std::unexpected(Error::mapping_failed(EINVAL, 0));
  }
  // SAFETY: no MAP_FIXED: the kernel picks an unused range, which from here on is ours.
  void* base = ::mmap(nullptr, size, PROT_NONE, kPlaceholderFlags, -1, 0);
  if (base == MAP_FAILED) {
    return std::unexpected(Error::mapping_failed(errno, size));
  }
  return MappingArena(static_cast<std::uint8_t*>(base), size);
}

MappingArena& MappingArena::operator=(MappingArena&& other) noexcept {
  if (this != &other) {
    MappingArena old(std::move(*this));
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mappings_ = std::move(other.mappings_);
  }
  return *this;
}

MappingArena::~MappingArena() {
  if (base_ != nullptr) {
    // SAFETY: the arena reserved the whole range and is its only owner; the mappings inside
    // it go with it, as documented.
    ::munmap(base_, size_);
  }
}

Result<void> MappingArena::add_fd_mapping(std::size_t offset, std::size_t size, BorrowedFd fd,
                                          std::uint64_t fd_offset, Protection protection) {
  const std::size_t page = detail::page_size();
  if (offset % page != 0) {
    return std::unexpected(Error::at(ErrorCode::NotPageAligned, offset, page));
  }
  if (size % page != 0) {
    return std::unexpected(Error::at(ErrorCode::NotPageAligned, size, page));
  }
  if (size == 0 || offset > size_ || size_ - offset < size) {
    return std::unexpected(Error::invalid_range(offset, size, size_));
  }
  if (fd_offset % page != 0) {
    return std::unexpected(Error::at(ErrorCode::NotPageAligned, fd_offset, page));
  }
  if (auto ok = detail::check_file_range(fd.get(), fd_offset, size); !ok) {
    return std::unexpected(ok.error());
  }
  // Room for the new entry first, so that nothing can fail once the mmap is done. The list
  // grows geometrically: reserving one more each time would copy it on every add.
  if (mappings_.size() == mappings_.capacity()) {
    mappings_.reserve(std::max<std::size_t>(8, 2 * mappings_.capacity()));
  }
  // The first mapping that ends after `offset` is the only one that can overlap.
  auto next = std::upper_bound(
      mappings_.begin(), mappings_.end(), offset,
      [](std::size_t at, const ArenaMapping& m) { return at < m.offset + m.size; });
  if (next != mappings_.end() && next->offset < offset + size) {
    return std::unexpected(Error::at(ErrorCode::MappingOverlap, offset, size));
  }
  std::uint8_t* addr = base_ + offset;
  // SAFETY: [addr, addr + size) lies inside the arena's reservation and holds no mapping
  // (checked above), so MAP_FIXED replaces only the arena's own placeholder.
  void* placed = ::mmap(addr, size, protection.to_mmap_prot(), MAP_SHARED | MAP_FIXED, fd.get(),
                        static_cast<off_t>(fd_offset));
  if (placed == MAP_FAILED) {
    const int err = errno;
    // The range holds the placeholder again either way.
    static_cast<void>(keep_reserved(addr, size));
    return std::unexpected(Error::mapping_failed(err, size));
  }
  mappings_.insert(next, ArenaMapping{offset, size, fd_offset, protection});
  return {};
}

Result<void> MappingArena::remove_mapping(std::size_t offset, std::size_t size) {
  auto found = std::lower_bound(
      mappings_.begin(), mappings_.end(), offset,
      [](const ArenaMapping& m, std::size_t at) { return m.offset < at; });
  if (found == mappings_.end() || found->offset != offset || found->size != size) {
    return std::unexpected(Error::at(ErrorCode::NoSuchMapping, offset, size));
  }
  std::uint8_t* addr = base_ + offset;
  if (const int err = map_placeholder(addr, size); err != 0) {
    // At the mapping-count limit the kernel refuses to split a VMA that holds this mapping and
    // a neighbour it merged with (consecutive pages of the same file), and leaves the mapping
    // as it was: it stays in the list. A kernel that unmapped it before failing has removed
    // it, and keep_reserved put the placeholder back.
    if (keep_reserved(addr, size)) {
      return std::unexpected(Error::mapping_failed(err, size));
    }
  }
  mappings_.erase(found);
  return {};
}

}  // namespace guestmem
