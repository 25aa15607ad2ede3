// guestmem: the guest's physical memory, a collection of regions.
//
// `GuestMemoryMmap` is an immutable, sorted set of non-overlapping `GuestRegionMmap`s with the
// byte-access interface at guest physical addresses. An access may cross from one region into
// an adjacent one (the first ends where the second starts); a hole or the end of memory ends
// it. Lookups are O(log n) (a branch-free binary search over a dense array of region starts)
// with a fast path that remembers the last region hit. A region whose protection does not
// allow an access (a write to read-only memory) refuses it: first with ProtectionViolation,
// later in the access like a hole.
//
// The collection never changes: hot-plug makes a new one (insert_region, remove_region) that
// shares the unchanged regions with the old one, which stays valid. Copies are cheap (they
// share the regions) and safe to use from any number of threads.
//
//   auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x1000},
//                                              {GuestAddress{0x1000}, 0x1000}});
//   mem->write_obj(std::uint64_t{42}, GuestAddress{0xffc});   // crosses into region 2
//   auto bigger = mem->insert_region(std::move(extra));       // mem is unchanged
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <utility>
#include <vector>

#include "guestmem/address.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/detail/bytes_impl.hpp"
#include "guestmem/detail/fallible_impl.hpp"
#include "guestmem/detail/pieces.hpp"
#include "guestmem/detail/region_index.hpp"
#include "guestmem/error.hpp"
#include "guestmem/guest_region.hpp"
#include "guestmem/mmap_region.hpp"
#include "guestmem/permissions.hpp"

namespace guestmem {

/// One region to create: `size` bytes at `guest_base`, anonymous or from a file.
struct RegionSpec {
  /// The guest address of the region's first byte.
  GuestAddress guest_base;
  /// The region's length in bytes.
  std::size_t size = 0;
  /// The file and offset that back the region, or none for anonymous memory.
  std::optional<FileOffset> file_offset;
};

/// The guest's physical memory: an immutable, sorted set of non-overlapping regions, each tracking
/// writes in a bitmap `B`, with the byte-access interface at guest physical addresses (see the top
/// of this header). Concurrency: every const member function may be called from any number of
/// threads; hot-plug returns a new memory.
template <Bitmap B = NoBitmap>
class GuestMemoryMmap : public detail::BytesMixin<GuestMemoryMmap<B>, GuestAddress>,
                        public detail::FallibleMixin<GuestMemoryMmap<B>, GuestAddress> {
 public:
  /// The type of each region.
  using region_type = GuestRegionMmap<B>;
  /// The bitmap slice that views into this memory carry.
  using slice_type = typename region_type::slice_type;
  /// How the memory holds a region: shared with copies and with the memories hot-plug makes.
  using RegionPtr = std::shared_ptr<const region_type>;

  class SliceIterator;

  /// An empty memory (no regions): every non-empty access fails with InvalidGuestAddress.
  GuestMemoryMmap() = default;
  /// Copies share the regions.
  GuestMemoryMmap(const GuestMemoryMmap& other) : GuestMemoryMmap(other.regions_) {}
  /// Takes `other`'s regions; `other` is left empty.
  GuestMemoryMmap(GuestMemoryMmap&& other) noexcept : GuestMemoryMmap() { swap(other); }
  /// Holds `other`'s regions instead of its own (copy or move, as the argument was made).
  GuestMemoryMmap& operator=(GuestMemoryMmap other) noexcept {
    swap(other);
    return *this;
  }
  ~GuestMemoryMmap() = default;

  /// Anonymous regions of the given sizes at the given addresses, in the given order.
  /// Errors, first failure wins: per range in order, MappingFailed(EINVAL) for size 0 (or
  /// another mmap failure) then InvalidGuestRegion when it would end past 2^64 - 1; then
  /// NoMemoryRegion when there are none; then, per adjacent pair, UnsortedMemoryRegions or
  /// MemoryRegionOverlap.
  static Result<GuestMemoryMmap> from_ranges(
      std::span<const std::pair<GuestAddress, std::size_t>> ranges)
    requires NewBitmap<B>
  {
    std::vector<RegionPtr> regions;
    regions.reserve(ranges.size());
    for (const auto& [base, size] : ranges) {
      auto region = make_region(MmapRegion<B>::create(size), base);
      if (!region) {
        return std::unexpected(region.error());
      }
      regions.push_back(std::move(*region));
    }
    return from_arc_regions(std::move(regions));
  }
  /// As from_ranges(std::span), for a braced list of (guest base, size) pairs.
  static Result<GuestMemoryMmap> from_ranges(
      std::initializer_list<std::pair<GuestAddress, std::size_t>> ranges)
    requires NewBitmap<B>
  {
    return from_ranges(std::span(ranges.begin(), ranges.size()));
  }

  /// As from_ranges, with a file (shared mapping) for the ranges that have one.
  /// Errors: as from_ranges, plus the file errors of MmapRegion::from_file.
  static Result<GuestMemoryMmap> from_ranges_with_files(std::span<const RegionSpec> ranges)
    requires NewBitmap<B>
  {
    std::vector<RegionPtr> regions;
    regions.reserve(ranges.size());
    for (const RegionSpec& spec : ranges) {
      auto mapping = spec.file_offset ? MmapRegion<B>::from_file(*spec.file_offset, spec.size)
                                      : MmapRegion<B>::create(spec.size);
      auto region = make_region(std::move(mapping), spec.guest_base);
      if (!region) {
        return std::unexpected(region.error());
      }
      regions.push_back(std::move(*region));
    }
    return from_arc_regions(std::move(regions));
  }

  /// A memory of these regions, which must be sorted and must not overlap.
  /// Errors: NoMemoryRegion, UnsortedMemoryRegions, MemoryRegionOverlap.
  static Result<GuestMemoryMmap> from_regions(std::vector<region_type> regions) {
    std::vector<RegionPtr> shared;
    shared.reserve(regions.size());
    for (auto& region : regions) {
      shared.push_back(std::make_shared<const region_type>(std::move(region)));
    }
    return from_arc_regions(std::move(shared));
  }

  /// As from_regions, for regions that may also belong to other memories.
  /// Errors, first failure wins: NoMemoryRegion; InvalidGuestRegion(0, 0) when a pointer is
  /// null; then, per adjacent pair, UnsortedMemoryRegions or MemoryRegionOverlap.
  static Result<GuestMemoryMmap> from_arc_regions(std::vector<RegionPtr> regions) {
    if (regions.empty()) {
      return std::unexpected(Error(ErrorCode::NoMemoryRegion));
    }
    // A null pointer is no region: refused before anything dereferences it.
    if (std::ranges::any_of(regions, [](const RegionPtr& r) { return r == nullptr; })) {
      return std::unexpected(null_region_error());
    }
    for (std::size_t i = 1; i < regions.size(); ++i) {
      const region_type& prev = *regions[i - 1];
      const region_type& next = *regions[i];
      if (prev.start_addr() > next.start_addr()) {
        return std::unexpected(
            Error::at(ErrorCode::UnsortedMemoryRegions, next.start_addr().raw_value()));
      }
      if (prev.last_addr() >= next.start_addr()) {
        return std::unexpected(
            Error::at(ErrorCode::MemoryRegionOverlap, next.start_addr().raw_value()));
      }
    }
    return GuestMemoryMmap(std::move(regions));
  }

  /// A new memory with `region` added; this one is unchanged.
  /// Errors: InvalidGuestRegion(0, 0) when `region` is null; MemoryRegionOverlap when it
  /// overlaps a region already present.
  [[nodiscard]] Result<GuestMemoryMmap> insert_region(RegionPtr region) const {
    if (region == nullptr) {
      return std::unexpected(null_region_error());
    }
    std::vector<RegionPtr> regions = regions_;
    auto at = std::upper_bound(regions.begin(), regions.end(), region->start_addr(),
                               [](GuestAddress a, const RegionPtr& r) { return a < r->start_addr(); });
    regions.insert(at, std::move(region));
    return from_arc_regions(std::move(regions));
  }

  /// A new memory without the region that starts at `base` and is `size` bytes long, and that
  /// region; this memory is unchanged. Removing the last region gives an empty memory.
  /// Errors: InvalidGuestRegion(base, size) when no region matches exactly.
  [[nodiscard]] Result<std::pair<GuestMemoryMmap, RegionPtr>> remove_region(
      GuestAddress base, GuestUsize size) const {
    const std::size_t index = find_index(base);
    if (index == kNone || slot_data_[index].start != base.raw_value() ||
        slot_data_[index].size != size) {
      return std::unexpected(Error::at(ErrorCode::InvalidGuestRegion, base.raw_value(), size));
    }
    std::vector<RegionPtr> regions = regions_;
    RegionPtr removed = regions[index];
    regions.erase(regions.begin() + static_cast<std::ptrdiff_t>(index));
    return std::pair{GuestMemoryMmap(std::move(regions)), std::move(removed)};
  }

  /// The number of regions.
  [[nodiscard]] std::size_t num_regions() const noexcept { return regions_.size(); }

  /// The region holding `addr`, or nullptr. Validity: while this memory (or another holder
  /// of the region) is alive.
  [[nodiscard]] const region_type* find_region(GuestAddress addr) const noexcept {
    std::uint64_t offset;
    const Slot* slot = find_slot(addr.raw_value(), offset);
    return slot == nullptr ? nullptr : slot->region;
  }

  /// The regions in address order, as `const region_type&`.
  /// Validity: the view and the references it yields live as long as this collection (and
  /// the regions as long as any collection or `region_ptrs()` copy sharing them).
  [[nodiscard]] auto regions() const noexcept {
    return std::views::transform(regions_, [](const RegionPtr& r) -> const region_type& { return *r; });
  }
  /// The same as regions(), under the reference API's name.
  [[nodiscard]] auto iter() const noexcept { return regions(); }
  /// The shared owners of the regions, in address order (for hot-plug and snapshots).
  /// Validity: the span lives as long as this collection; a copied pointer keeps its region.
  [[nodiscard]] std::span<const RegionPtr> region_ptrs() const noexcept { return regions_; }

  /// The highest address in any region, or GuestAddress{0} when there are none.
  [[nodiscard]] GuestAddress last_addr() const noexcept {
    return regions_.empty() ? GuestAddress{0} : regions_.back()->last_addr();
  }

  /// The region holding `addr` and the offset of `addr` in it. Validity of the pointer: as
  /// find_region.
  [[nodiscard]] std::optional<std::pair<const region_type*, MemoryRegionAddress>> to_region_addr(
      GuestAddress addr) const noexcept {
    std::uint64_t offset;
    const Slot* slot = find_slot(addr.raw_value(), offset);
    if (slot == nullptr) {
      return std::nullopt;
    }
    return std::pair{slot->region, MemoryRegionAddress{offset}};
  }

  /// Whether some region holds `addr`.
  [[nodiscard]] bool address_in_range(GuestAddress addr) const noexcept {
    return find_index(addr) != kNone;
  }
  /// `addr` if some region holds it.
  [[nodiscard]] std::optional<GuestAddress> check_address(GuestAddress addr) const noexcept {
    return address_in_range(addr) ? std::optional(addr) : std::nullopt;
  }
  /// `base + offset` if it does not overflow and some region holds it.
  [[nodiscard]] std::optional<GuestAddress> checked_offset(GuestAddress base,
                                                           std::size_t offset) const noexcept {
    auto sum = base.checked_add(offset);
    return sum ? check_address(*sum) : std::nullopt;
  }

  /// True when all of [base, base + len) is in memory (regions may be adjacent); true for
  /// len == 0 wherever `base` points.
  [[nodiscard]] bool check_range(GuestAddress base, std::size_t len) const noexcept {
    return check_range(base, len, Permissions::No);
  }
  /// As above, and every region in the range allows an access of kind `access`.
  [[nodiscard]] bool check_range(GuestAddress base, std::size_t len,
                                 Permissions access) const noexcept {
    SliceIterator slices(this, base, len, access);
    std::size_t total = 0;
    while (auto item = slices.next()) {
      if (!item->has_value()) {
        return false;
      }
      total += (*item)->size();
    }
    return total == len;
  }

  /// The host address of `addr`. Writes through it are not reported to the dirty bitmap.
  /// Errors: InvalidGuestAddress. Validity: while the region holding it is alive.
  [[nodiscard]] Result<std::uint8_t*> get_host_address(GuestAddress addr) const noexcept {
    auto found = to_region_addr(addr);
    if (!found) {
      return std::unexpected(Error::invalid_guest_address(addr));
    }
    return found->first->get_host_address(found->second);
  }

  /// A view of `count` bytes at `addr`, which must lie in one region.
  /// Errors: InvalidGuestAddress when no region holds `addr`; InvalidBackendAddress when the
  /// range runs past the end of that region (use get_slices to cross regions).
  /// Validity: while the region is alive.
  [[nodiscard]] Result<slice_type> get_slice(GuestAddress addr, std::size_t count) const noexcept {
    auto found = to_region_addr(addr);
    if (!found) {
      return std::unexpected(Error::invalid_guest_address(addr));
    }
    return found->first->get_slice(found->second, count);
  }

  /// The views that together cover [addr, addr + count), one per region crossed. Items are
  /// Result<slice_type>: without an error the sizes add up to `count`; the first hole gives an
  /// InvalidGuestAddress item and ends the sequence. count == 0 gives no items. Protection is
  /// not consulted: views of read-only regions serve reads only (see MmapRegion::get_slice).
  /// Validity: the iterator and its views, while this memory is alive.
  [[nodiscard]] SliceIterator get_slices(GuestAddress addr, std::size_t count) const noexcept {
    return SliceIterator(this, addr, count);
  }
  /// As above, for an access of kind `access`: a region whose protection does not allow it
  /// gives a ProtectionViolation item (address, bytes left, access) and ends the sequence, as
  /// a hole does. The call itself never fails.
  [[nodiscard]] Result<SliceIterator> get_slices(GuestAddress addr, std::size_t count,
                                                 Permissions access) const noexcept {
    return SliceIterator(this, addr, count, access);
  }

  /// This memory: there is no translation layer above it.
  [[nodiscard]] const GuestMemoryMmap* physical_memory() const noexcept { return this; }

 private:
  friend class detail::BytesMixin<GuestMemoryMmap, GuestAddress>;
  friend class detail::FallibleMixin<GuestMemoryMmap, GuestAddress>;

  static constexpr std::size_t kNone = ~std::size_t{0};

  // What an access needs of a region, packed so that a hit touches one cache line: the
  // bounds, the host memory, the region, its bitmap slice (so that a tracked write does not
  // chase slot -> region -> bitmap) and the kinds of access its protection allows (so that
  // the protection check is one test of a byte loaded with the bounds).
  struct Slot {
    std::uint64_t start = 0;
    std::uint64_t size = 0;
    std::uint8_t* host = nullptr;
    const region_type* region = nullptr;
    [[no_unique_address]] typename B::slice_type bitmap{};
    Permissions allowed = Permissions::No;
  };
  // The slots of a memory without regions: the hint points at the middle one, whose
  // neighbours are the slots find_slot and search check next (see slots_).
  static inline const Slot kNoSlots[3]{};

  explicit GuestMemoryMmap(std::vector<RegionPtr> regions) : regions_(std::move(regions)) {
    std::vector<std::uint64_t> starts;
    starts.reserve(regions_.size());
    if (!regions_.empty()) {
      slots_.reserve(regions_.size() + 2);
      slots_.push_back(Slot{});
      for (const RegionPtr& r : regions_) {
        starts.push_back(r->start_addr().raw_value());
        slots_.push_back(Slot{r->start_addr().raw_value(), r->len(),
                              r->mapping().unsafe_host_ptr(), r.get(), r->bitmap().slice_at(0),
                              r->mapping().protection().as_permissions()});
      }
      slots_.push_back(Slot{});
      slot_data_ = slots_.data() + 1;
      hint_.store(slot_data_, std::memory_order_relaxed);
    }
    index_ = detail::RegionIndex(starts);
  }

  void swap(GuestMemoryMmap& other) noexcept {
    regions_.swap(other.regions_);
    std::swap(index_, other.index_);
    slots_.swap(other.slots_);
    std::swap(slot_data_, other.slot_data_);
    hint_.store(slot_data_, std::memory_order_relaxed);
    other.hint_.store(other.slot_data_, std::memory_order_relaxed);
  }

  // The error for a null region pointer: an invalid region with neither base nor size (no
  // real region has size 0, so it is never confused with one).
  static constexpr Error null_region_error() noexcept {
    return Error::at(ErrorCode::InvalidGuestRegion, 0, 0);
  }

  static Result<RegionPtr> make_region(Result<MmapRegion<B>> mapping, GuestAddress base) {
    if (!mapping) {
      return std::unexpected(mapping.error());
    }
    auto region = region_type::create(std::move(*mapping), base);
    if (!region) {
      return std::unexpected(region.error());
    }
    return std::make_shared<const region_type>(std::move(*region));
  }

  // The slot of the region holding `a`, with the offset of `a` in it, or nullptr.
  [[nodiscard]] GUESTMEM_ALWAYS_INLINE const Slot* find_slot(std::uint64_t a,
                                                            std::uint64_t& offset) const noexcept {
    // The hinted slot, then the one before it, which always exist (the empty slots around
    // the regions): a hit is one load from this object and two from the slot. A hit on the
    // slot before leaves the hint alone, so that accesses alternating between two
    // neighbouring regions never write it.
    const Slot* hinted = hint_.load(std::memory_order_relaxed);
    offset = a - hinted->start;
    if (offset < hinted->size) [[likely]] {
      return hinted;
    }
    offset = a - hinted[-1].start;
    if (offset < hinted[-1].size) {
      return hinted - 1;
    }
    const Slot* found = search(a, hinted);
    if (found != nullptr) {
      offset = a - found->start;
    }
    return found;
  }

  // The index of the region holding `addr`, or kNone.
  [[nodiscard]] GUESTMEM_ALWAYS_INLINE std::size_t find_index(GuestAddress addr) const noexcept {
    std::uint64_t offset;
    const Slot* slot = find_slot(addr.raw_value(), offset);
    return slot == nullptr ? kNone : static_cast<std::size_t>(slot - slot_data_);
  }

  // The lookups that miss the hinted slot and the one before it, out of line: the slot after
  // the hinted one, which always exists, then the index. Both move the hint to the slot
  // found, so that a thread that has moved on to the next region hits it first from then on.
  [[nodiscard]] [[gnu::noinline]] const Slot* search(std::uint64_t a,
                                                     const Slot* hinted) const noexcept {
    const Slot* found = hinted + 1;
    if (a - found->start >= found->size) {
      const std::size_t index = index_.find(a);
      if (index == detail::RegionIndex::kNone ||
          a - slot_data_[index].start >= slot_data_[index].size) {
        return nullptr;
      }
      found = slot_data_ + index;
    }
    hint_.store(found, std::memory_order_relaxed);
    return found;
  }

  // The piece of the region of `slot` from `offset` (inside it) on, at most `count` bytes long.
  GUESTMEM_ALWAYS_INLINE static slice_type piece(const Slot& slot, std::uint64_t offset,
                                                 std::size_t count) noexcept {
    const std::size_t len = std::min<std::uint64_t>(count, slot.size - offset);
    // SAFETY: [offset, offset + len) lies inside the region, which this memory keeps alive.
    return slice_type::from_raw_parts(slot.host + offset, len, slot.bitmap.slice_at(offset));
  }

  // Byte-access hook: the first piece of [addr, addr + count), when its region allows
  // `access`.
  GUESTMEM_ALWAYS_INLINE std::optional<slice_type> first_piece(GuestAddress addr, std::size_t count,
                                                               Permissions access) const noexcept {
    // The slot and offset straight from the lookup: no second indexing or subtraction.
    std::uint64_t offset;
    const Slot* slot = find_slot(addr.raw_value(), offset);
    if (slot == nullptr || !slot->allowed.allow(access)) [[unlikely]] {
      return std::nullopt;
    }
    return piece(*slot, offset, count);
  }

  // Byte-access hook: as first_piece, at the end of the access's previous piece, which ended
  // at its region's end. The slot after the hinted one is checked first (the previous piece
  // was most likely found at the hint), and the lookup behind it is find_slot's; either way
  // a repeated crossing from the hinted region writes nothing and keeps the hint there.
  GUESTMEM_ALWAYS_INLINE std::optional<slice_type> next_piece(GuestAddress addr, std::size_t count,
                                                              Permissions access) const noexcept {
    const std::uint64_t a = addr.raw_value();
    const Slot* slot = hint_.load(std::memory_order_relaxed) + 1;
    std::uint64_t offset = a - slot->start;
    if (offset >= slot->size) [[unlikely]] {
      slot = find_slot(a, offset);
    }
    if (slot == nullptr || !slot->allowed.allow(access)) [[unlikely]] {
      return std::nullopt;
    }
    return piece(*slot, offset, count);
  }

  // Byte-access hook: the pieces of [addr, addr + count) for an access of kind `access`.
  Result<SliceIterator> slices_for(GuestAddress addr, std::size_t count,
                                   Permissions access) const noexcept {
    return SliceIterator(this, addr, count, access);
  }

  // Byte-access hook: single accesses that cross a region end or are misaligned.
  Error single_access_error(ErrorCode /*reason*/, GuestAddress addr,
                            std::size_t /*size*/) const noexcept {
    return Error::invalid_backend_address(addr.raw_value());
  }

  std::vector<RegionPtr> regions_;
  // The region starts, for lookups that miss the hint.
  detail::RegionIndex index_;
  // An empty slot, one slot per region, and another empty slot, so that the slots before
  // and after the hinted one always exist. Empty for a memory without regions.
  std::vector<Slot> slots_;
  // The first region's slot, slots_.data() + 1, or kNoSlots + 1 when there are no regions.
  const Slot* slot_data_ = kNoSlots + 1;
  // The slot of the region a lookup last moved to (see find_slot); a racy cache, so relaxed
  // loads and stores are enough. Written only by a lookup that missed both the hinted slot
  // and the one before it, so threads that hit never write a shared line.
  mutable std::atomic<const Slot*> hint_{kNoSlots + 1};
};

/// The pieces of a guest range, one per region crossed (see GuestMemoryMmap::get_slices).
template <Bitmap B>
class GuestMemoryMmap<B>::SliceIterator
    : public detail::PieceSequence<SliceIterator, slice_type> {
 public:
  /// The pieces of [addr, addr + count) for an access of kind `access` (Permissions::No: no
  /// protection check).
  SliceIterator(const GuestMemoryMmap* memory, GuestAddress addr, std::size_t count,
                Permissions access = Permissions::No) noexcept
      : memory_(memory), addr_(addr.raw_value()), count_(count), access_(access) {}

  /// The next piece, an error (after which nothing follows), or std::nullopt at the end.
  std::optional<Result<slice_type>> next() noexcept {
    if (count_ == 0) {
      return std::nullopt;
    }
    std::size_t index;
    if (index_ == kNone) {
      index = memory_->find_index(GuestAddress{addr_});
    } else {
      // The previous piece ended at its region's end; only an adjacent region continues.
      index = index_ + 1;
      if (index == memory_->regions_.size() || memory_->slot_data_[index].start != addr_) {
        index = kNone;
      }
    }
    if (index == kNone) {
      count_ = 0;
      return Result<slice_type>(std::unexpect, Error::invalid_guest_address(GuestAddress{addr_}));
    }
    if (!memory_->slot_data_[index].allowed.allow(access_)) {
      const std::size_t left = std::exchange(count_, 0);
      return Result<slice_type>(std::unexpect, Error::protection_violation(addr_, left, access_));
    }
    const Slot& slot = memory_->slot_data_[index];
    slice_type slice = piece(slot, addr_ - slot.start, count_);
    index_ = index;
    count_ -= slice.size();
    // Cannot wrap: a region's exclusive end fits in 64 bits.
    addr_ += slice.size();
    return Result<slice_type>(std::move(slice));
  }

 private:
  const GuestMemoryMmap* memory_;
  std::uint64_t addr_;
  std::size_t count_;
  Permissions access_;
  std::size_t index_ = kNone;
};

}  // namespace guestmem
