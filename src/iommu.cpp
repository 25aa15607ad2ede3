#include "guestmem/iommu.hpp"

#include <algorithm>
#include <limits>
#include <mutex>

namespace guestmem {
namespace {

constexpr std::uint64_t kTop = std::numeric_limits<std::uint64_t>::max();

// The exclusive end of an entry (fits in 64 bits, see Iotlb).
constexpr std::uint64_t end_of(const IotlbEntry& entry) noexcept {
  return entry.iova.raw_value() + entry.length;
}

// True when `next` continues `prev`: adjacent on both sides, same permissions.
constexpr bool continues(const IotlbEntry& prev, const IotlbEntry& next) noexcept {
  return end_of(prev) == next.iova.raw_value() &&
         prev.target.raw_value() + prev.length == next.target.raw_value() &&
         prev.permissions == next.permissions;
}

// The earliest failed part: the error a translation reports.
Error first_failure(const IotlbFails& fails) {
  const IovaRange* miss = fails.misses.empty() ? nullptr : &fails.misses.front();
  const IovaRange* refused = fails.access_fails.empty() ? nullptr : &fails.access_fails.front();
  if (refused != nullptr && (miss == nullptr || refused->base < miss->base)) {
    return Error::at(ErrorCode::PermissionDenied, refused->base.raw_value(), refused->length);
  }
  GUESTMEM_ASSERT(miss != nullptr, "a failed lookup reports at least one failed part");
  return Error::at(ErrorCode::CannotResolve, miss->base.raw_value(), miss->length);
}

}  // namespace

// ---------------------------------------------------------------- Iotlb

std::size_t Iotlb::first_ending_after(std::uint64_t iova) const noexcept {
  return static_cast<std::size_t>(
      std::partition_point(entries_.begin(), entries_.end(),
                           [iova](const IotlbEntry& e) { return end_of(e) <= iova; }) -
      entries_.begin());
}

bool Iotlb::remove(std::uint64_t start, std::uint64_t end) {
  const std::size_t first = first_ending_after(start);
  std::size_t last = first;
  while (last < entries_.size() && entries_[last].iova.raw_value() < end) {
    ++last;
  }
  if (first == last) {
    return false;
  }
  // What survives: the head of the first entry before `start`, the tail of the last after
  // `end` (the same entry when the range cuts a hole in it).
  std::vector<IotlbEntry> kept;
  const IotlbEntry head = entries_[first];
  if (head.iova.raw_value() < start) {
    kept.push_back({head.iova, head.target, start - head.iova.raw_value(), head.permissions});
  }
  const IotlbEntry tail = entries_[last - 1];
  if (end_of(tail) > end) {
    const std::uint64_t cut = end - tail.iova.raw_value();
    kept.push_back({GuestAddress{end}, GuestAddress{tail.target.raw_value() + cut},
                    tail.length - cut, tail.permissions});
  }
  const auto at = entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(first),
                                 entries_.begin() + static_cast<std::ptrdiff_t>(last));
  entries_.insert(at, kept.begin(), kept.end());
  return true;
}

Result<bool> Iotlb::set_mapping(GuestAddress iova, GuestAddress target, GuestUsize length,
                                Permissions permissions) {
  if (length == 0) {
    return false;
  }
  if (!iova.checked_add(length)) {
    return std::unexpected(Error::guest_address_overflow(iova.raw_value(), length));
  }
  if (!target.checked_add(length)) {
    return std::unexpected(Error::guest_address_overflow(target.raw_value(), length));
  }
  // An existing entry changes when the range replaces part of it, or when it merges with the
  // range and so reaches further (a cached copy of it would end or start too early).
  bool changed = remove(iova.raw_value(), iova.raw_value() + length);
  auto at = std::partition_point(entries_.begin(), entries_.end(), [iova](const IotlbEntry& e) {
    return e.iova < iova;
  });
  at = entries_.insert(at, IotlbEntry{iova, target, length, permissions});
  if (auto next = at + 1; next != entries_.end() && continues(*at, *next)) {
    at->length += next->length;
    entries_.erase(next);
    changed = true;
  }
  if (at != entries_.begin()) {
    if (auto prev = at - 1; continues(*prev, *at)) {
      prev->length += at->length;
      entries_.erase(at);
      changed = true;
    }
  }
  return changed;
}

bool Iotlb::invalidate_mapping(GuestAddress iova, GuestUsize length) {
  if (length == 0) {
    return false;
  }
  const std::uint64_t end = iova.checked_add(length).value_or(GuestAddress{kTop}).raw_value();
  return remove(iova.raw_value(), end);
}

std::expected<std::vector<MappedRange>, IotlbFails> Iotlb::lookup(GuestAddress iova,
                                                                 GuestUsize length,
                                                                 Permissions access) const {
  std::vector<MappedRange> fragments;
  IotlbFails fails;
  std::uint64_t cursor = iova.raw_value();
  std::uint64_t left = length;
  for (std::size_t i = first_ending_after(cursor); left > 0 && i < entries_.size(); ++i) {
    const IotlbEntry& entry = entries_[i];
    if (entry.iova.raw_value() > cursor) {
      const std::uint64_t gap = std::min(left, entry.iova.raw_value() - cursor);
      fails.misses.push_back({GuestAddress{cursor}, gap});
      left -= gap;
      cursor += gap;
      if (left == 0) {
        break;
      }
    }
    // The entry holds `cursor` now; no sum below passes its end.
    const std::uint64_t offset = cursor - entry.iova.raw_value();
    const std::uint64_t n = std::min(left, entry.length - offset);
    if (entry.permissions.allow(access)) {
      fragments.push_back({GuestAddress{entry.target.raw_value() + offset}, n});
    } else {
      fails.access_fails.push_back({GuestAddress{cursor}, n});
    }
    left -= n;
    cursor += n;
  }
  if (left > 0) {
    fails.misses.push_back({GuestAddress{cursor}, left});
  }
  if (!fails.misses.empty() || !fails.access_fails.empty()) {
    return std::unexpected(std::move(fails));
  }
  return fragments;
}

std::optional<IotlbEntry> Iotlb::entry_at(GuestAddress iova) const noexcept {
  const std::size_t i = first_ending_after(iova.raw_value());
  if (i == entries_.size() || entries_[i].iova > iova) {
    return std::nullopt;
  }
  return entries_[i];
}

// ---------------------------------------------------------------- Iommu

void Iommu::advance_generation() noexcept {
  generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

Result<void> Iommu::set_mapping(GuestAddress iova, GuestAddress target, GuestUsize length,
                                Permissions permissions) {
  std::unique_lock lock(mutex_);
  auto changed = iotlb_.set_mapping(iova, target, length, permissions);
  if (!changed) {
    return std::unexpected(changed.error());
  }
  if (*changed) {
    advance_generation();
  }
  return {};
}

void Iommu::invalidate_mapping(GuestAddress iova, GuestUsize length) {
  std::unique_lock lock(mutex_);
  if (iotlb_.invalidate_mapping(iova, length)) {
    advance_generation();
  }
}

void Iommu::invalidate_all() {
  std::unique_lock lock(mutex_);
  if (!iotlb_.empty()) {
    iotlb_.invalidate_all();
    advance_generation();
  }
}

Result<std::vector<MappedRange>> Iommu::translate(GuestAddress iova, GuestUsize length,
                                                  Permissions access) {
  IotlbFails fails;
  {
    std::shared_lock lock(mutex_);
    auto found = iotlb_.lookup(iova, length, access);
    if (found) {
      return std::move(*found);
    }
    fails = std::move(found.error());
  }
  if (handler_) {
    handler_(*this, fails, access);
  }
  std::shared_lock lock(mutex_);
  auto found = iotlb_.lookup(iova, length, access);
  if (found) {
    return std::move(*found);
  }
  return std::unexpected(first_failure(found.error()));
}

std::optional<Iommu::Translation> Iommu::find_locked(GuestAddress iova,
                                                     Permissions access) const {
  auto entry = iotlb_.entry_at(iova);
  if (!entry || !entry->permissions.allow(access)) {
    return std::nullopt;
  }
  return Translation{*entry, generation_.load(std::memory_order_relaxed)};
}

Error Iommu::failure_locked(GuestAddress iova, GuestUsize length) const {
  if (auto entry = iotlb_.entry_at(iova)) {
    const std::uint64_t rest = end_of(*entry) - iova.raw_value();
    return Error::at(ErrorCode::PermissionDenied, iova.raw_value(), std::min(length, rest));
  }
  const auto entries = iotlb_.entries();
  const auto next = std::upper_bound(entries.begin(), entries.end(), iova,
                                     [](GuestAddress a, const IotlbEntry& e) { return a < e.iova; });
  std::uint64_t unmapped = length;
  if (next != entries.end()) {
    unmapped = std::min(unmapped, next->iova.raw_value() - iova.raw_value());
  }
  return Error::at(ErrorCode::CannotResolve, iova.raw_value(), unmapped);
}

Result<Iommu::Translation> Iommu::translate_entry(GuestAddress iova, GuestUsize length,
                                                  Permissions access) {
  length = std::max<GuestUsize>(length, 1);
  IotlbFails fails;
  {
    std::shared_lock lock(mutex_);
    if (auto found = find_locked(iova, access)) {
      return *found;
    }
    if (!handler_) {
      return std::unexpected(failure_locked(iova, length));
    }
    auto whole = iotlb_.lookup(iova, length, access);
    GUESTMEM_ASSERT(!whole, "a range whose first byte fails cannot translate");
    fails = std::move(whole.error());
  }
  handler_(*this, fails, access);
  std::shared_lock lock(mutex_);
  if (auto found = find_locked(iova, access)) {
    return *found;
  }
  return std::unexpected(failure_locked(iova, length));
}

std::optional<IotlbEntry> Iommu::entry_at(GuestAddress iova) const {
  std::shared_lock lock(mutex_);
  return iotlb_.entry_at(iova);
}

Iotlb Iommu::iotlb_snapshot() const {
  std::shared_lock lock(mutex_);
  return iotlb_;
}

}  // namespace guestmem
