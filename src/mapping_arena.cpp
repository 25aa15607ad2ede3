#include "guestmem/mapping_arena.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>

#include "guestmem/detail/config.hpp"
#include "guestmem/mmap_region.hpp"

namespace guestmem {
namespace {

constexpr int kPlaceholderFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

// Puts the inaccessible placeholder back over [addr, addr + size) of an arena, or aborts: a
// hole in the reservation could be taken by another mmap and later unmapped by the arena.
void restore_placeholder(std::uint8_t* addr, std::size_t size) noexcept {
  // SAFETY: the range lies inside the arena's reservation, which only the arena uses.
  void* placed = ::mmap(addr, size, PROT_NONE, kPlaceholderFlags | MAP_FIXED, -1, 0);
  GUESTMEM_ASSERT(placed != MAP_FAILED, "MappingArena: cannot restore its reservation");
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
  // Room for the new entry first, so that nothing can fail once the mmap is done.
  mappings_.reserve(mappings_.size() + 1);
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
    // Older kernels may have removed the placeholder before failing.
    restore_placeholder(addr, size);
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
  restore_placeholder(base_ + offset, size);
  mappings_.erase(found);
  return {};
}

}  // namespace guestmem
