// guestmem vhost-user: the front end's memory, as the back end maps it.
//
// A vhost-user front end shares its guest memory as file descriptors, one per region, each
// with the region's guest address, size, the address where the front end itself maps it
// ("user address") and the offset of the region's first byte in the file. `MemoryMap` maps
// each descriptor MAP_SHARED at its offset as a `GuestRegionMmap` and publishes the result
// through a `GuestMemoryAtomic`, so queue threads take a consistent snapshot per request while
// the message thread replaces the table (SET_MEM_TABLE) or changes it one region at a time
// (ADD_MEM_REG/REM_MEM_REG). A snapshot also translates front-end user addresses (vring
// addresses arrive as those) to guest addresses.
//
//   MemoryMap map;
//   map.set_table(regions, fds);                       // from SET_MEM_TABLE
//   auto snapshot = map.space().memory();              // in a queue thread
//   auto desc = snapshot->translate(vring.descriptor, desc_table_size(256));
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include <guestmem/address.hpp>
#include <guestmem/atomic_memory.hpp>
#include <guestmem/error.hpp>
#include <guestmem/fd.hpp>
#include <guestmem/guest_memory.hpp>

#include "vhost_user/protocol.hpp"

namespace guestmem::vhost_user {

/// Where the front end maps one region, and where the guest sees it.
struct UserRange {
  std::uint64_t user_address;
  std::uint64_t size;
  GuestAddress guest_address;
};

/// One published state of the front end's memory.
struct FrontEndMemory {
  GuestMemoryMmap<> guest;
  std::vector<UserRange> user_ranges;
  /// Incremented by every change, so a queue can tell its translated ring addresses are stale.
  std::uint64_t generation = 0;

  /// The guest address of the front-end user address `user_address`, when the `size` bytes
  /// there lie inside one region (a ring never spans two). std::nullopt otherwise, also when
  /// user_address + size overflows.
  [[nodiscard]] std::optional<GuestAddress> translate(std::uint64_t user_address,
                                                      std::uint64_t size) const noexcept;
};

/// The back end's map of the front end's memory. Owned by the message thread, which is the
/// only caller of the changing functions; queue threads only call space().memory().
class MemoryMap {
 public:
  MemoryMap() : space_(FrontEndMemory{}) {}

  /// The published memory. Concurrency: any thread may take snapshots of it. Validity: as
  /// long as this MemoryMap; a snapshot keeps its maps alive until it is dropped.
  [[nodiscard]] const GuestMemoryAtomic<FrontEndMemory>& space() const noexcept { return space_; }

  /// Replaces the whole table with `regions`, mapping `fds[i]` for `regions[i]`. On failure
  /// the previous table stays published.
  /// Errors: InvalidGuestRegion(guest address, size) when the counts differ, a region is
  /// empty, its user or guest range overflows, its mmap offset is not page aligned, or there
  /// are more than kMaxMemSlots regions; MappingFailed and the other errors of
  /// MmapRegionBuilder::build; MemoryRegionOverlap when two regions share guest addresses.
  Result<void> set_table(std::span<const MemoryRegion> regions, std::span<UniqueFd> fds);

  /// Adds one region, mapping `fd`.
  /// Errors: as set_table, for the one region, and InvalidGuestRegion when kMaxMemSlots
  /// regions are already present.
  Result<void> add_region(const MemoryRegion& region, UniqueFd fd);

  /// Removes the region with this guest address, size and user address (mmap_offset is
  /// ignored, as the specification says). Its mapping goes away once no snapshot holds it.
  /// Errors: InvalidGuestRegion(guest address, size) when no region matches.
  Result<void> remove_region(const MemoryRegion& region);

  /// Unmaps everything (the front end disconnected or reset the device).
  void clear();

  /// Regions currently mapped.
  [[nodiscard]] std::size_t num_regions() const noexcept { return ranges_.size(); }

 private:
  // Makes `guest` and `ranges` the current state and publishes them to the queue threads.
  void publish(GuestMemoryMmap<> guest, std::vector<UserRange> ranges);

  GuestMemoryAtomic<FrontEndMemory> space_;
  GuestMemoryMmap<> guest_;
  std::vector<UserRange> ranges_;
  std::uint64_t generation_ = 0;
};

}  // namespace guestmem::vhost_user
