// guestmem: an arena of file-descriptor mappings inside one reserved range.
//
// A `MappingArena` reserves a range of address space (PROT_NONE, nothing behind it) and lets
// shared mappings of file descriptors come and go at page-aligned offsets inside it, while
// the range itself stays put. That is what a PCI BAR whose backing changes needs (a VFIO
// region mapped and unmapped as the guest programs the BAR), and shared device memory
// (a virtio shared memory region, a DAX window): the VMM registers the whole arena once, for
// example as one KVM memory slot, and changes what is inside.
//
// Rules:
// - Offsets and sizes are multiples of the page size and lie inside the arena; a mapping
//   never overlaps another (NotPageAligned, InvalidRange, MappingOverlap otherwise).
// - Removing a mapping puts a PROT_NONE placeholder back: the hole stays reserved (no other
//   mmap in the process can land in it) and inaccessible (an access faults).
// - Replacing a mapping is remove_mapping then add_fd_mapping at the same offset.
// - A mapping inside the placeholder costs the process up to two more mappings (VMAs): at
//   its limit (vm.max_map_count) add and remove fail with MappingFailed(ENOMEM) and change
//   nothing.
// - The arena unmaps the whole range, mappings included, when destroyed.
//
//   auto bar = MappingArena::create(0x100000);
//   bar->add_fd_mapping(0x4000, 0x2000, BorrowedFd{vfio_fd}, region_offset,
//                       Protection::read_write());
//   bar->remove_mapping(0x4000, 0x2000);                  // back to an inaccessible hole
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "guestmem/error.hpp"
#include "guestmem/io.hpp"
#include "guestmem/protection.hpp"

namespace guestmem {

/// One mapping in an arena.
struct ArenaMapping {
  /// Where it starts, from the start of the arena.
  std::size_t offset;
  /// Its length in bytes.
  std::size_t size;
  /// Where it starts in its file.
  std::uint64_t fd_offset;
  /// What it allows.
  Protection protection;

  /// Equal when every field is.
  friend constexpr bool operator==(const ArenaMapping&, const ArenaMapping&) noexcept = default;
};

/// A reserved range of address space in which mappings of file descriptors are added and removed at
/// page-aligned offsets while the range stays put (see the top of this header). Moves, never
/// copies; unmaps the whole range when destroyed. Concurrency: add_fd_mapping and remove_mapping
/// are serialized with each other and with mappings().
class GUESTMEM_API MappingArena {
 public:
  /// Reserves `size` bytes of address space, all of it an inaccessible hole.
  /// Errors: NotPageAligned(size, page size); MappingFailed(errno) (size 0 fails with EINVAL).
  static Result<MappingArena> create(std::size_t size);

  /// Takes over `other`'s range and mappings; `other` is left with none.
  MappingArena(MappingArena&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        mappings_(std::move(other.mappings_)) {}
  /// Unmaps this arena's range, then takes over `other`'s; `other` is left with none.
  MappingArena& operator=(MappingArena&& other) noexcept;
  MappingArena(const MappingArena&) = delete;
  MappingArena& operator=(const MappingArena&) = delete;
  ~MappingArena();

  /// Maps `size` bytes of `fd` from `fd_offset` at `offset` in the arena, shared
  /// (MAP_SHARED), with `protection`. The mapping holds its own reference to the file: `fd`
  /// may be closed afterwards.
  /// Errors, in this order: NotPageAligned(offset or size, page size); InvalidRange(offset,
  /// size, arena size) when size is 0 or the range passes the end; NotPageAligned(fd_offset,
  /// page size); InvalidOffsetLength or MappingPastEof when the file is known to be too short
  /// (regular files, memfds, block devices); MappingOverlap when the range meets a mapping
  /// already there; MappingFailed(errno) when mmap refuses (EACCES: `fd` was not opened for
  /// the protection asked; ENODEV: it cannot be mapped; ENOMEM: the process has reached its
  /// mapping-count limit, vm.max_map_count, and the placeholder cannot be split around the
  /// new mapping). After an error nothing changed. Throws std::bad_alloc, before anything
  /// changed, when the list of mappings cannot grow.
  /// Preconditions: a kernel that unmaps the range before its mmap fails (older kernels did,
  /// for some failures; a failure at the mapping-count limit leaves the placeholder) lets the
  /// arena map the placeholder back; otherwise this aborts, because a hole in the reservation
  /// could be taken by another mmap and later unmapped by the arena.
  /// Concurrency: add and remove change the arena; callers serialize them with each other
  /// and with mappings().
  Result<void> add_fd_mapping(std::size_t offset, std::size_t size, BorrowedFd fd,
                              std::uint64_t fd_offset, Protection protection);

  /// Removes the mapping that starts at `offset` and is `size` bytes long, leaving a reserved,
  /// inaccessible hole. Accesses to the range fault from then on (SIGSEGV in the VMM, EFAULT
  /// for KVM): stop every user of it first.
  /// Errors: NoSuchMapping unless exactly such a mapping was added; MappingFailed(ENOMEM)
  /// when the kernel merged the mapping with a neighbour (consecutive pages of the same file,
  /// same protection) and the process's mapping-count limit refuses the split that removing
  /// only this one needs: the mapping then stays, usable and listed, and a later remove can
  /// succeed once the process has fewer mappings. After an error nothing changed.
  /// Preconditions and concurrency: as add_fd_mapping.
  Result<void> remove_mapping(std::size_t offset, std::size_t size);

  /// The mappings, sorted by offset. Validity: until the next add or remove.
  [[nodiscard]] std::span<const ArenaMapping> mappings() const noexcept { return mappings_; }

  /// The first byte of the arena, for registering it with KVM.
  /// Validity: while the arena is alive; each part is accessible only while a mapping with
  /// the protection for the access is there.
  [[nodiscard]] std::uint8_t* unsafe_host_ptr() const noexcept { return base_; }
  /// The bytes reserved.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  MappingArena(std::uint8_t* base, std::size_t size) noexcept : base_(base), size_(size) {}

  std::uint8_t* base_;
  std::size_t size_;
  std::vector<ArenaMapping> mappings_;
};

}  // namespace guestmem
