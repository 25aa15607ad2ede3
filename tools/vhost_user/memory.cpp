#include "vhost_user/memory.hpp"

#include <unistd.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include <guestmem/guest_region.hpp>
#include <guestmem/mmap_region.hpp>

namespace guestmem::vhost_user {
namespace {

Error bad_region(const MemoryRegion& region) {
  return Error::at(ErrorCode::InvalidGuestRegion, region.guest_address, region.size);
}

// Checks what the front end claims about one region before anything is mapped.
Result<void> check_region(const MemoryRegion& region) {
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  if (region.size == 0 || region.size > std::numeric_limits<std::size_t>::max() ||
      region.guest_address > max - region.size || region.user_address > max - region.size ||
      region.mmap_offset > max - region.size || region.mmap_offset % page != 0) {
    return std::unexpected(bad_region(region));
  }
  return {};
}

// Maps `fd` MAP_SHARED from `mmap_offset` and places it at the region's guest address.
Result<GuestMemoryMmap<>::RegionPtr> map_region(const MemoryRegion& region, UniqueFd fd) {
  if (auto checked = check_region(region); !checked) {
    return std::unexpected(checked.error());
  }
  auto mapping = MmapRegionBuilder<>(static_cast<std::size_t>(region.size))
                     .with_file_offset(FileOffset(std::move(fd), region.mmap_offset))
                     .build();
  if (!mapping) {
    return std::unexpected(mapping.error());
  }
  auto placed = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{region.guest_address});
  if (!placed) {
    return std::unexpected(placed.error());
  }
  return std::make_shared<const GuestRegionMmap<>>(std::move(*placed));
}

UserRange user_range_of(const MemoryRegion& region) {
  return UserRange{region.user_address, region.size, GuestAddress{region.guest_address}};
}

}  // namespace

std::optional<GuestAddress> FrontEndMemory::translate(std::uint64_t user_address,
                                                      std::uint64_t size) const noexcept {
  if (user_address > std::numeric_limits<std::uint64_t>::max() - size) {
    return std::nullopt;
  }
  for (const UserRange& range : user_ranges) {
    // Offsets from the range start, so no sum below can overflow.
    if (user_address >= range.user_address &&
        user_address - range.user_address <= range.size &&
        size <= range.size - (user_address - range.user_address)) {
      return GuestAddress{range.guest_address.raw_value() + (user_address - range.user_address)};
    }
  }
  return std::nullopt;
}

Result<void> MemoryMap::set_table(std::span<const MemoryRegion> regions, std::span<UniqueFd> fds) {
  if (regions.size() != fds.size() || regions.empty() || regions.size() > kMaxMemSlots) {
    return std::unexpected(Error::at(ErrorCode::InvalidGuestRegion, 0, regions.size()));
  }
  std::vector<GuestMemoryMmap<>::RegionPtr> mapped;
  std::vector<UserRange> ranges;
  for (std::size_t i = 0; i < regions.size(); ++i) {
    auto region = map_region(regions[i], std::move(fds[i]));
    if (!region) {
      return std::unexpected(region.error());
    }
    mapped.push_back(std::move(*region));
    ranges.push_back(user_range_of(regions[i]));
  }
  std::ranges::sort(mapped, {}, [](const auto& r) { return r->start_addr(); });
  auto guest = GuestMemoryMmap<>::from_arc_regions(std::move(mapped));
  if (!guest) {
    return std::unexpected(guest.error());
  }
  publish(std::move(*guest), std::move(ranges));
  return {};
}

Result<void> MemoryMap::add_region(const MemoryRegion& region, UniqueFd fd) {
  if (ranges_.size() >= kMaxMemSlots) {
    return std::unexpected(bad_region(region));
  }
  auto mapped = map_region(region, std::move(fd));
  if (!mapped) {
    return std::unexpected(mapped.error());
  }
  auto guest = guest_.num_regions() == 0
                   ? GuestMemoryMmap<>::from_arc_regions({std::move(*mapped)})
                   : guest_.insert_region(std::move(*mapped));
  if (!guest) {
    return std::unexpected(guest.error());
  }
  std::vector<UserRange> ranges = ranges_;
  ranges.push_back(user_range_of(region));
  publish(std::move(*guest), std::move(ranges));
  return {};
}

Result<void> MemoryMap::remove_region(const MemoryRegion& region) {
  auto match = std::ranges::find_if(ranges_, [&](const UserRange& r) {
    return r.guest_address.raw_value() == region.guest_address && r.size == region.size &&
           r.user_address == region.user_address;
  });
  if (match == ranges_.end()) {
    return std::unexpected(bad_region(region));
  }
  auto removed = guest_.remove_region(GuestAddress{region.guest_address}, region.size);
  if (!removed) {
    return std::unexpected(removed.error());
  }
  std::vector<UserRange> ranges = ranges_;
  ranges.erase(ranges.begin() + (match - ranges_.begin()));
  publish(std::move(removed->first), std::move(ranges));
  return {};
}

void MemoryMap::clear() {
  publish(GuestMemoryMmap<>(), {});
  GuestMemoryAtomic<FrontEndMemory>::reclaim();
}

void MemoryMap::publish(GuestMemoryMmap<> guest, std::vector<UserRange> ranges) {
  guest_ = guest;
  ranges_ = ranges;
  ++generation_;
  space_.lock().replace(FrontEndMemory{std::move(guest), std::move(ranges), generation_});
}

}  // namespace guestmem::vhost_user
