// guestmem: I/O virtual address spaces: the IOTLB, the IOMMU, and memory seen through them.
//
// A device behind an IOMMU addresses memory with I/O virtual addresses (IOVAs). Each access
// names its kind (`Permissions::Read` or `Write`); the IOMMU translates the IOVA range into
// target ranges, possibly several (a range contiguous in IOVA space may be fragmented below),
// and refuses an access that the mapping's permissions do not allow.
//
// - `Iotlb`: a plain range map from IOVA ranges to target ranges with permissions. Setting a
//   mapping replaces what it overlaps and merges with adjacent entries that continue it;
//   invalidating a range splits the entries it cuts. Not synchronized (like std::vector).
// - `Iommu`: an `Iotlb` shared between threads, plus a miss handler supplied by the user
//   (for vhost-user: send the front end an IOTLB miss and wait for its update). Translation
//   consults the IOTLB, asks the handler for what failed, and looks up again.
// - `IommuMemory<M, B>`: the byte-access interface at IOVAs over a guest memory `M`, with the
//   permission check on every access, translation that can be switched off (vhost-user's
//   IOMMU feature not negotiated), and an optional dirty bitmap `B` indexed by IOVA.
//
// Targets are addresses in `M`. For vhost-user with VHOST_USER_PROTOCOL_F_IOMMU they are the
// front end's user addresses (the `uaddr` of IOTLB updates), so `M` is built with its regions
// at the memory table's user addresses.
//
//   auto iommu = std::make_shared<Iommu>();
//   iommu->set_mapping(GuestAddress{0x10000}, GuestAddress{0x2000}, 0x1000, Permissions::Read);
//   IommuMemory<GuestMemoryMmap<>> mem(physical, iommu);
//   mem.read_obj<std::uint32_t>(GuestAddress{0x10010});            // reads 0x2010
//   mem.write_obj(std::uint32_t{1}, GuestAddress{0x10010});        // PermissionDenied
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "guestmem/address.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/concepts.hpp"
#include "guestmem/detail/bytes_impl.hpp"
#include "guestmem/detail/iotlb_cache.hpp"
#include "guestmem/detail/pieces.hpp"
#include "guestmem/error.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {

/// A range of I/O virtual addresses.
struct IovaRange {
  /// The first I/O virtual address.
  GuestAddress base;
  /// The length in bytes.
  GuestUsize length = 0;
  /// Equal when base and length are.
  friend constexpr bool operator==(const IovaRange&, const IovaRange&) noexcept = default;
};

/// A range of target addresses (addresses of the memory below the IOMMU).
struct MappedRange {
  /// The first target address.
  GuestAddress base;
  /// The length in bytes.
  GuestUsize length = 0;
  /// Equal when base and length are.
  friend constexpr bool operator==(const MappedRange&, const MappedRange&) noexcept = default;
};

/// One IOTLB entry: [iova, iova + length) maps to [target, target + length).
struct IotlbEntry {
  /// The first I/O virtual address the entry maps.
  GuestAddress iova;
  /// The target address `iova` maps to.
  GuestAddress target;
  /// The bytes mapped.
  GuestUsize length = 0;
  /// The accesses the mapping allows.
  Permissions permissions = Permissions::No;
  /// Equal when every field is.
  friend constexpr bool operator==(const IotlbEntry&, const IotlbEntry&) noexcept = default;
};

/// The parts of a looked-up range that cannot be translated, each list in address order.
struct IotlbFails {
  /// Parts that no entry maps.
  std::vector<IovaRange> misses;
  /// Parts that an entry maps but whose permissions refuse the access, one per entry.
  std::vector<IovaRange> access_fails;
  /// Equal when both lists are.
  friend bool operator==(const IotlbFails&, const IotlbFails&) = default;
};

/// A range map from IOVA ranges to target ranges with permissions: sorted, non-overlapping,
/// non-empty entries in a vector. Lookups are a binary search; a change moves the entries
/// after it, which stays cheap for the thousands of entries an IOTLB holds. Adjacent entries
/// never continue each other (set_mapping merges them), so the entries are the same whatever
/// order the mappings arrived in.
///
/// No entry may contain the address 2^64 - 1 on either side (an entry's exclusive end fits in
/// 64 bits), so a range that reaches the top of the address space is never mapped there and
/// iterating over entries needs no overflow check.
///
/// Concurrency: none; const calls may run concurrently, any other call needs exclusive access
/// (`Iommu` provides the locking).
class GUESTMEM_API Iotlb {
 public:
  Iotlb() = default;

  /// Maps [iova, iova + length) to [target, target + length) with `permissions`, replacing
  /// what the range overlaps (entries it cuts are split). The result merges with an entry
  /// just before or after it that continues it: adjacent in IOVA space *and* in target space,
  /// with the same permissions. A length of 0 changes nothing.
  /// Returns whether an existing entry changed: part of it was replaced, or it merged with
  /// the new range and now starts earlier or ends later. A cache of translations must then
  /// forget it (a cached copy of a grown entry would end too early, and an access across its
  /// old end would look fragmented); false means the range became an entry of its own.
  /// Errors: GuestAddressOverflow(base, length) when `iova + length` or `target + length` does
  /// not fit in 64 bits (nothing changes).
  Result<bool> set_mapping(GuestAddress iova, GuestAddress target, GuestUsize length,
                           Permissions permissions);

  /// Removes every mapping of [iova, iova + length); entries that reach outside the range
  /// keep their outside parts. A range that would run past 2^64 - 1 ends there, so any length
  /// is accepted. Returns whether anything was removed. Errors: none.
  bool invalidate_mapping(GuestAddress iova, GuestUsize length);

  /// Removes every mapping.
  void invalidate_all() noexcept { entries_.clear(); }

  /// Translates [iova, iova + length) for `access`: the target ranges, one per entry crossed,
  /// in IOVA order (none for length 0); or, when any part is unmapped or refuses `access`,
  /// every such part, misses and access failures apart. The part of a range past 2^64 - 2 is
  /// a miss. Validity: the result is a copy, independent of later changes.
  [[nodiscard]] std::expected<std::vector<MappedRange>, IotlbFails> lookup(
      GuestAddress iova, GuestUsize length, Permissions access) const;

  /// The entry that contains `iova`, if any.
  [[nodiscard]] std::optional<IotlbEntry> entry_at(GuestAddress iova) const noexcept;

  /// The entries in IOVA order. Validity: until the next change to this IOTLB, or its end.
  [[nodiscard]] std::span<const IotlbEntry> entries() const noexcept { return entries_; }
  /// The number of entries.
  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
  /// Whether there is no entry.
  [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }

 private:
  // Index of the first entry that ends after `iova`.
  [[nodiscard]] GUESTMEM_LOCAL std::size_t first_ending_after(std::uint64_t iova) const noexcept;
  // Removes [start, end) from every entry; returns whether anything was removed.
  GUESTMEM_LOCAL bool remove(std::uint64_t start, std::uint64_t end);

  std::vector<IotlbEntry> entries_;
};

/// An IOTLB shared by the threads of a device, with a handler that resolves misses.
///
/// Translation looks the range up; if part of it fails (unmapped, or mapped without the
/// rights the access needs), the miss handler is called once with every failed part and the
/// access, and the range is looked up again. The handler installs what it can with
/// `set_mapping` (directly, or by waiting for the thread that receives the mappings); what
/// still fails is the error: CannotResolve for an unmapped part, PermissionDenied for a part
/// whose permissions refuse the access, each carrying the first such IOVA range.
///
/// Every change to an existing entry advances `generation()`, which the caches of
/// IommuMemory check on every hit: a removal, a cut, a replacement, and a merge that makes an
/// entry reach further at either end. A cached entry is thus the whole IOTLB entry, not an
/// older, shorter extent of it, so a translation from the cache ends where a fresh lookup's
/// ends. Adding a mapping that becomes an entry of its own (it touches no entry it continues)
/// does not: no cache can hold a translation of an unmapped range.
///
/// Concurrency: every member may be called from any thread at any time. Lookups share a
/// reader-writer lock, changes take it exclusively; the handler runs with no lock held. After
/// invalidate_mapping or invalidate_all returns, no translation that starts afterwards uses
/// the removed mappings. An access that translated before may still complete on the old
/// target, and views handed out before keep pointing at it (the memory stays mapped, so this
/// is never a host memory error). A back end that must not touch a page once it has
/// acknowledged its invalidation stops its queue workers first, as Linux vhost does by taking
/// every virtqueue's lock.
class GUESTMEM_API Iommu {
 public:
  /// Called on a failed lookup with the failed parts and the access. It must be safe to call
  /// from several threads at once and must not throw; it may call any member of `iommu`,
  /// and may block (the access that missed waits for it).
  using MissHandler =
      std::function<void(Iommu& iommu, const IotlbFails& fails, Permissions access)>;

  /// An IOMMU with an empty IOTLB. Without a handler, misses are errors straight away.
  explicit Iommu(MissHandler handler = {}) : handler_(std::move(handler)) {}
  Iommu(const Iommu&) = delete;
  Iommu& operator=(const Iommu&) = delete;
  ~Iommu() = default;

  /// Iotlb::set_mapping under the lock (vhost-user: an IOTLB update).
  /// Errors: as Iotlb::set_mapping. Concurrency: waits for lookups in progress (never for a
  /// handler that is running); may be called from inside the handler.
  Result<void> set_mapping(GuestAddress iova, GuestAddress target, GuestUsize length,
                           Permissions permissions);
  /// Iotlb::invalidate_mapping under the lock (vhost-user: an IOTLB invalidation).
  void invalidate_mapping(GuestAddress iova, GuestUsize length);
  /// Iotlb::invalidate_all under the lock.
  void invalidate_all();

  /// The target ranges of [iova, iova + length) for `access`, one per IOTLB entry crossed
  /// (none for length 0), resolving failures through the miss handler once.
  /// Errors: CannotResolve or PermissionDenied for the first part that still fails.
  /// Validity: the result describes the IOTLB at the time of the call.
  /// Concurrency: on a failure, runs the handler on the calling thread and waits for it.
  Result<std::vector<MappedRange>> translate(GuestAddress iova, GuestUsize length,
                                             Permissions access);

  /// An IOTLB entry and the generation() at which it was read.
  struct Translation {
    /// The entry.
    IotlbEntry entry;
    /// The generation() when the entry was read.
    std::uint64_t generation = 0;
  };

  /// The IOTLB entry that translates `iova` for `access`, for a cache: it stays correct while
  /// generation() is still the one returned with it. When `iova` fails, the handler is asked
  /// for everything that fails in [iova, iova + length) (length 0 counts as 1), then `iova`
  /// is looked up again.
  /// Errors: CannotResolve(iova, unmapped bytes from iova on, at most length) or
  /// PermissionDenied(iova, bytes of the refusing entry from iova on, at most length).
  /// Concurrency: as translate.
  Result<Translation> translate_entry(GuestAddress iova, GuestUsize length, Permissions access);

  /// The entry that contains `iova`, without asking the handler.
  [[nodiscard]] std::optional<IotlbEntry> entry_at(GuestAddress iova) const;

  /// A copy of the IOTLB as it is now (for inspection; it does not follow later changes).
  [[nodiscard]] Iotlb iotlb_snapshot() const;

  /// Advances (never wraps back) whenever an existing entry is removed, cut, replaced or
  /// merged with a new mapping.
  [[nodiscard]] std::uint64_t generation() const noexcept {
    return generation_.load(std::memory_order_acquire);
  }

 private:
  // With the lock held: the entry translating `iova` for `access`, with the generation.
  [[nodiscard]] GUESTMEM_LOCAL std::optional<Translation> find_locked(GuestAddress iova,
                                                                      Permissions access) const;
  // With the lock held: the error for [iova, iova + length) when `iova` does not translate.
  [[nodiscard]] GUESTMEM_LOCAL Error failure_locked(GuestAddress iova, GuestUsize length) const;
  GUESTMEM_LOCAL void advance_generation() noexcept;

  MissHandler handler_;
  mutable std::shared_mutex mutex_;
  Iotlb iotlb_;
  // Read on every cached hit by every device thread; kept off the line the lock writes.
  alignas(64) std::atomic<std::uint64_t> generation_{0};
};

/// Whether an IommuMemory translates addresses (vhost-user: VIRTIO_F_ACCESS_PLATFORM
/// negotiated) or passes them straight to the memory below.
enum class IommuMode : std::uint8_t { Passthrough, Translate };

/// The dirty-bitmap slice of a view of IommuMemory with an IOVA bitmap: writes are reported
/// to the memory's own bitmap (at target offsets, as every write in guestmem is) and, when
/// the view was translated, to the IOVA bitmap (at IOVA offsets).
template <BitmapSlice P, BitmapSlice V>
class IommuBitmapSlice {
 public:
  /// The type of slice_at().
  using slice_type = IommuBitmapSlice;

  /// The inert placeholder (BitmapSlice): marks nothing through an empty physical slice.
  IommuBitmapSlice() = default;
  /// A slice that marks through `physical` and, when given, `iova`.
  IommuBitmapSlice(P physical, std::optional<V> iova) noexcept
      : physical_(std::move(physical)), iova_(std::move(iova)) {}

  /// Marks `len` bytes at `offset` dirty in the physical bitmap and, when there is one, the IOVA
  /// bitmap.
  void mark_dirty(std::size_t offset, std::size_t len) const {
    physical_.mark_dirty(offset, len);
    if (iova_) {
      iova_->mark_dirty(offset, len);
    }
  }
  /// Dirty in either bitmap.
  [[nodiscard]] bool dirty_at(std::size_t offset) const {
    return physical_.dirty_at(offset) || (iova_ && iova_->dirty_at(offset));
  }
  /// The slice that starts `offset` bytes into this one, in both bitmaps.
  [[nodiscard]] IommuBitmapSlice slice_at(std::size_t offset) const {
    return IommuBitmapSlice(physical_.slice_at(offset),
                            iova_ ? std::optional<V>(iova_->slice_at(offset)) : std::nullopt);
  }
  /// The physical bitmap's slice.
  [[nodiscard]] const P& physical() const noexcept { return physical_; }
  /// The IOVA bitmap's slice; std::nullopt for a view made without translation.
  [[nodiscard]] const std::optional<V>& iova() const noexcept { return iova_; }

 private:
  P physical_{};
  std::optional<V> iova_;
};

/// Guest memory `M` seen through an IOMMU: the byte-access interface (detail/bytes_impl.hpp)
/// at I/O virtual addresses, where every piece of every access is translated and checked
/// against the mapping's permissions. Pieces end where an IOTLB entry or a region of `M` ends.
///
/// Errors of the byte-access interface, beyond its usual ones: when the first piece cannot
/// be translated, CannotResolve or PermissionDenied with the IOVA range (see Iommu); when a
/// mapping points outside `M`, InvalidGuestAddress with the target address; when the region
/// below refuses the access (a write to read-only memory, a read of memory that is not
/// readable), ProtectionViolation(target address, bytes left in the access, access), the
/// error `M` gives for the same access at the target, whatever the mapping's permissions
/// say; a single access (load/store) that would span two pieces is Fragmented(iova, size,
/// bytes in the first piece), one that is misaligned is Misaligned. A later piece that fails
/// ends the access early, as a hole does. In Passthrough mode the errors are those of `M`,
/// ProtectionViolation included.
///
/// Dirty tracking: with `B` other than NoBitmap, a translated write is also reported to `B`
/// at IOVA offsets (vhost-user logs writes by IOVA when the IOMMU is on). Writes are always
/// reported to the regions' own bitmaps; vm-memory reports them to one level only.
///
/// Translations are cached per IommuMemory object (a few entries, checked against the
/// IOMMU's generation on every hit, each clipped to one region of `M` and holding its host
/// address and the accesses that both the mapping and the region's protection allow), so a
/// hit costs a few loads and compares and takes no lock; with untracked regions it does not
/// even look `M` up. A miss asks the Iommu, and through it maybe the miss
/// handler, on the calling thread. `M` must not change under the object (GuestMemoryMmap
/// never does; hot-plug goes through with_replaced_backend).
///
/// Concurrency: const members may be called from any number of threads, concurrently with
/// any Iommu call (see Iommu for what an invalidation guarantees). set_iommu_mode and
/// assignment need exclusive access to the object. Copies are independent objects that share
/// the Iommu, the IOVA bitmap and the memory's regions.
/// Validity: views are valid while this object (or another holder of the regions) is alive;
/// they keep pointing at their target when the mapping that produced them is invalidated.
template <GuestMemoryBackend M, Bitmap B = NoBitmap>
class IommuMemory : public detail::BytesMixin<IommuMemory<M, B>, GuestAddress> {
  using PhysicalSlice = typename M::region_type::slice_type;
  using PhysicalBitmapSlice = typename PhysicalSlice::bitmap_slice_type;
  static constexpr bool kIovaTracking = !std::same_as<B, NoBitmap>;
  // Without tracking below, a cached host address is all a hit needs.
  static constexpr bool kPhysicalTracking = !std::same_as<PhysicalBitmapSlice, NoBitmap>;

 public:
  /// The memory below the IOMMU.
  using physical_memory_type = M;
  /// The IOVA bitmap: NoBitmap when writes are not tracked at I/O virtual addresses.
  using bitmap_type = B;
  /// The physical bitmap slice alone without IOVA tracking, so that views are then the very
  /// views of `M`.
  using bitmap_slice_type =
      std::conditional_t<kIovaTracking, IommuBitmapSlice<PhysicalBitmapSlice, typename B::slice_type>,
                         PhysicalBitmapSlice>;
  /// The views that accesses and get_slices() hand out.
  using slice_type = VolatileSlice<bitmap_slice_type>;

  class SliceIterator;

  /// Memory `memory` behind `iommu`, in `mode`, without an IOVA bitmap.
  /// Preconditions: `iommu` is not null (aborts otherwise).
  IommuMemory(M memory, std::shared_ptr<Iommu> iommu, IommuMode mode = IommuMode::Translate)
    requires(!kIovaTracking)
      : memory_(std::move(memory)), iommu_(std::move(iommu)), mode_(mode) {
    GUESTMEM_ASSERT(iommu_ != nullptr, "IommuMemory needs an Iommu");
  }

  /// As above, reporting translated writes to `iova_bitmap` at IOVA offsets.
  /// Preconditions: `iommu` and `iova_bitmap` are not null (aborts otherwise); the bitmap
  /// accepts marks at every IOVA the device may write. Nothing can check this here: the IOVAs
  /// that matter are those the IOTLB maps writable, and they change after construction. An
  /// AtomicBitmap drops marks past its len(), so a write at such an IOVA reaches memory and
  /// the regions' bitmaps but not this one: size it to the end of the IOVA space that the
  /// front end maps (the guest IOMMU's address width).
  IommuMemory(M memory, std::shared_ptr<Iommu> iommu, std::shared_ptr<const B> iova_bitmap,
              IommuMode mode = IommuMode::Translate)
    requires kIovaTracking
      : memory_(std::move(memory)), iommu_(std::move(iommu)), bitmap_(std::move(iova_bitmap)),
        mode_(mode) {
    GUESTMEM_ASSERT(iommu_ != nullptr, "IommuMemory needs an Iommu");
    GUESTMEM_ASSERT(bitmap_ != nullptr, "IommuMemory needs its IOVA bitmap");
  }

  /// Copies share the Iommu, the IOVA bitmap and the memory's regions, and start with an
  /// empty translation cache.
  IommuMemory(const IommuMemory&) = default;
  /// As the copy constructor: shares the other object's Iommu, IOVA bitmap and regions, and
  /// starts with an empty translation cache.
  IommuMemory& operator=(const IommuMemory&) = default;
  /// A move leaves `other` without an Iommu, an IOVA bitmap or memory below, in its mode,
  /// with an empty translation cache (which held host addresses of regions it no longer
  /// owns). Such an object stays usable: a translated access fails as an IOVA without
  /// translation does (CannotResolve), an untranslated one as an address in no region
  /// (InvalidGuestAddress); iommu() is null. It may be assigned a new value.
  IommuMemory(IommuMemory&& other) noexcept
      : memory_(std::move(other.memory_)), iommu_(std::move(other.iommu_)),
        bitmap_(std::move(other.bitmap_)), mode_(other.mode_) {
    other.cache_.clear();
  }
  /// As the move constructor: takes `other`'s Iommu, IOVA bitmap and memory, and leaves `other` as
  /// it describes.
  IommuMemory& operator=(IommuMemory&& other) noexcept {
    if (this != &other) {
      memory_ = std::move(other.memory_);
      iommu_ = std::move(other.iommu_);
      bitmap_ = std::move(other.bitmap_);
      mode_ = other.mode_;
      cache_.clear();
      other.cache_.clear();
    }
    return *this;
  }
  ~IommuMemory() = default;

  /// A memory with the same Iommu, IOVA bitmap and mode over `memory` (after hot-plug, or a
  /// new vhost-user memory table). This one is unchanged.
  [[nodiscard]] IommuMemory with_replaced_backend(M memory) const {
    IommuMemory copy(*this);
    copy.memory_ = std::move(memory);
    return copy;
  }

  /// Switches translation on or off (vm-memory's set_iommu_enabled).
  /// Concurrency: no other call on this object may run at the same time.
  void set_iommu_mode(IommuMode mode) noexcept { mode_ = mode; }
  /// Whether accesses are translated.
  [[nodiscard]] IommuMode iommu_mode() const noexcept { return mode_; }

  /// The IOMMU, to update its mappings; null once this object was moved from.
  /// Validity: while this object is alive.
  [[nodiscard]] const std::shared_ptr<Iommu>& iommu() const noexcept { return iommu_; }
  /// The memory below, whatever the mode (vm-memory's get_backend).
  [[nodiscard]] const M& backend() const noexcept { return memory_; }
  /// The IOVA bitmap. Preconditions: this object was not moved from (aborts otherwise).
  [[nodiscard]] const B& bitmap() const noexcept
    requires kIovaTracking
  {
    GUESTMEM_ASSERT(bitmap_ != nullptr, "a moved-from IommuMemory has no IOVA bitmap");
    return *bitmap_;
  }

  /// The memory below when addresses are not translated; nullptr in Translate mode.
  /// Validity: while this object is alive and its mode unchanged.
  [[nodiscard]] const M* physical_memory() const noexcept {
    return mode_ == IommuMode::Translate ? nullptr : &memory_;
  }

  /// True when all of [addr, addr + count) can be accessed with `access` (true for count 0):
  /// the IOMMU's permissions (in Translate mode) and the protection of the regions below
  /// allow it. In Translate mode this may call the miss handler, like an access.
  [[nodiscard]] bool check_range(GuestAddress addr, std::size_t count, Permissions access) const {
    SliceIterator slices(this, addr, count, access);
    std::size_t total = 0;
    while (auto item = slices.next()) {
      if (!item->has_value()) {
        return false;
      }
      total += (*item)->size();
    }
    return total == count;
  }

  /// The views that together cover [addr, addr + count) for `access`, one per IOTLB entry
  /// and region crossed. Each piece is translated when the iterator reaches it; the first
  /// that fails gives an error item (see the class comment) and ends the sequence; count 0
  /// gives no items. Never fails itself: the Result is the GuestMemory interface's.
  /// Validity: the iterator, while this object is alive; the views, as the class says.
  [[nodiscard]] Result<SliceIterator> get_slices(GuestAddress addr, std::size_t count,
                                                 Permissions access) const noexcept {
    return SliceIterator(this, addr, count, access);
  }

  /// One view of `count` bytes at `addr` for `access` (count 0: an empty view where `addr`
  /// translates to).
  /// Errors: as the first piece of an access (count 0 is looked up as 1 byte);
  /// Fragmented(addr, count, bytes contiguous) when the range is not one contiguous host
  /// range. In Passthrough mode, M::get_slice's, then ProtectionViolation(addr, count,
  /// access) when the region's protection does not allow `access`.
  [[nodiscard]] Result<slice_type> get_slice(GuestAddress addr, std::size_t count,
                                             Permissions access) const {
    if (mode_ == IommuMode::Passthrough) {
      // M::get_slice's lookup, with the protection check its views leave to the caller.
      auto found = memory_.to_region_addr(addr);
      if (!found) {
        return std::unexpected(Error::invalid_guest_address(addr));
      }
      auto slice = found->first->get_slice(found->second, count);
      if (!slice) {
        return std::unexpected(slice.error());
      }
      if (!found->first->mapping().permits(access)) {
        return std::unexpected(Error::protection_violation(addr.raw_value(), count, access));
      }
      return untranslated(*slice);
    }
    auto piece = translated_piece(addr, std::max<std::size_t>(count, 1), access);
    if (!piece) {
      return std::unexpected(piece.error());
    }
    if (piece->size() < count) {
      return std::unexpected(Error::fragmented(addr.raw_value(), count, piece->size()));
    }
    // SAFETY: the first `count` bytes of a live view (count <= its size, checked above).
    return slice_type::from_raw_parts(piece->unsafe_host_ptr(), count, piece->bitmap());
  }

 private:
  friend class detail::BytesMixin<IommuMemory, GuestAddress>;

  using BitmapHolder = std::conditional_t<kIovaTracking, std::shared_ptr<const B>, NoBitmap>;

  // A view of `M` as a view of this memory, reporting to the IOVA bitmap at `iova` if any.
  GUESTMEM_ALWAYS_INLINE slice_type translated(const PhysicalSlice& piece,
                                               std::uint64_t iova) const {
    if constexpr (kIovaTracking) {
      // SAFETY: the same live bytes as `piece`.
      return slice_type::from_raw_parts(
          piece.unsafe_host_ptr(), piece.size(),
          bitmap_slice_type(piece.bitmap(), bitmap_->slice_at(static_cast<std::size_t>(iova))));
    } else {
      return piece;
    }
  }
  GUESTMEM_ALWAYS_INLINE slice_type untranslated(const PhysicalSlice& piece) const {
    if constexpr (kIovaTracking) {
      // SAFETY: the same live bytes as `piece`.
      return slice_type::from_raw_parts(piece.unsafe_host_ptr(), piece.size(),
                                        bitmap_slice_type(piece.bitmap(), std::nullopt));
    } else {
      return piece;
    }
  }

  // The first piece of `M` at `target`, at most `count` bytes, for `access`: M's error
  // (InvalidGuestAddress, or ProtectionViolation when the region's protection refuses the
  // access) when there is none.
  GUESTMEM_ALWAYS_INLINE std::optional<Result<PhysicalSlice>> physical_piece(
      std::uint64_t target, std::size_t count, Permissions access) const {
    return memory_.get_slices(GuestAddress{target}, count, access)->next();
  }

  // Where `iova` translates for `access`: the cache, else the Iommu (and its handler). The
  // cache gets the part of the IOTLB entry whose targets lie in the region holding the
  // target of `iova`, with its host address and the accesses that both the entry's
  // permissions and the region's protection allow; a target outside memory is not cached.
  // Errors: the Iommu's; ProtectionViolation(target, count, access) when the region's
  // protection refuses the access; CannotResolve once this object was moved from.
  Result<detail::IotlbCache::Hit> lookup(std::uint64_t iova, std::size_t count,
                                         Permissions access) const {
    if (iommu_ == nullptr) [[unlikely]] {
      // Moved from: no IOVA has a translation (the error of an empty Iommu without handler).
      return std::unexpected(
          Error::at(ErrorCode::CannotResolve, iova, std::max<std::size_t>(count, 1)));
    }
    if (auto hit = cache_.find(iova, access, iommu_->generation())) {
      return *hit;
    }
    auto found = iommu_->translate_entry(GuestAddress{iova}, count, access);
    if (!found) {
      return std::unexpected(found.error());
    }
    const IotlbEntry& entry = found->entry;
    // Bytes of the entry before `iova`, and from `iova` on (no sum wraps: an entry's
    // exclusive end fits in 64 bits on both sides).
    std::uint64_t before = iova - entry.iova.raw_value();
    std::uint64_t after = entry.length - before;
    const std::uint64_t target = entry.target.raw_value() + before;
    auto region = memory_.to_region_addr(GuestAddress{target});
    if (!region) {
      return detail::IotlbCache::Hit{target, nullptr, after};
    }
    const std::uint64_t offset = region->second.raw_value();
    before = std::min(before, offset);
    after = std::min<std::uint64_t>(after, region->first->len() - offset);
    std::uint8_t* const base = region->first->as_volatile_slice().unsafe_host_ptr();
    // A hit must never grant what the region's protection refuses: the CPU would fault on
    // a write to read-only memory, or a read of inaccessible memory, and kill the process.
    const Permissions protection = region->first->mapping().protection().as_permissions();
    cache_.insert(iova, iova - before, iova + after, target - before, base + (offset - before),
                  entry.permissions & protection, found->generation);
    if (!protection.allow(access)) {
      return std::unexpected(Error::protection_violation(target, count, access));
    }
    return detail::IotlbCache::Hit{target, base + offset, after};
  }

  // The translated piece of [iova, iova + count) that starts at `iova` (count > 0).
  Result<slice_type> translated_piece(GuestAddress iova, std::size_t count,
                                      Permissions access) const {
    auto hit = lookup(iova.raw_value(), count, access);
    if (!hit) {
      return std::unexpected(hit.error());
    }
    auto piece =
        physical_piece(hit->target, std::min<std::uint64_t>(count, hit->available), access);
    if (!piece->has_value()) {
      return std::unexpected(piece->error());
    }
    return translated(**piece, iova.raw_value());
  }

  // The piece of [addr, addr + count) that starts at `addr`, in either mode (count > 0).
  Result<slice_type> piece_at(GuestAddress addr, std::size_t count, Permissions access) const {
    if (mode_ == IommuMode::Translate) {
      return translated_piece(addr, count, access);
    }
    auto piece = physical_piece(addr.raw_value(), count, access);
    if (!piece->has_value()) {
      return std::unexpected(piece->error());
    }
    return untranslated(**piece);
  }

  // Byte-access hook: the first piece of [addr, addr + count). A cached translation and the
  // memory's own fast lookup; everything else (a miss, a moved-from object) out of line.
  GUESTMEM_ALWAYS_INLINE std::optional<slice_type> first_piece(GuestAddress addr,
                                                               std::size_t count,
                                                               Permissions access) const {
    if (mode_ == IommuMode::Translate) [[likely]] {
      const Iommu* const iommu = iommu_.get();
      if (iommu != nullptr) [[likely]] {
        const auto hit = cache_.find(addr.raw_value(), access, iommu->generation());
        if (hit) [[likely]] {
          const std::uint64_t n = std::min<std::uint64_t>(count, hit->available);
          if constexpr (kPhysicalTracking) {
            auto piece = physical_piece(hit->target, n, access);
            if (piece->has_value()) [[likely]] {
              forget_failure();
              return translated(**piece, addr.raw_value());
            }
          } else {
            forget_failure();
            // SAFETY: a cache entry covers host bytes of one region of memory_, from `host`
            // on for `available` bytes (lookup() clips it to the region), and hits only for
            // accesses that the region's protection allows (lookup() caches the entry's
            // permissions less what the protection refuses). memory_ keeps the region mapped
            // and never changes while this cache exists: copies and assignments start with
            // an empty cache, and a move empties the cache of the object moved from.
            return translated(PhysicalSlice::from_raw_parts(hit->host, n), addr.raw_value());
          }
        }
      }
      return first_piece_slow(addr, count, access);
    }
    auto piece = physical_piece(addr.raw_value(), count, access);
    if (!piece->has_value()) [[unlikely]] {
      return std::nullopt;
    }
    return untranslated(**piece);
  }

  // A first piece was found: no failure is pending for slices_for.
  GUESTMEM_ALWAYS_INLINE static void forget_failure() noexcept {
    if (detail::last_iommu_failure.owner != nullptr) [[unlikely]] {
      detail::last_iommu_failure.owner = nullptr;
    }
  }

  // The translated first piece when the cache cannot give it; records a failure for
  // slices_for (see detail::IommuFailure).
  [[gnu::noinline]] std::optional<slice_type> first_piece_slow(GuestAddress addr,
                                                               std::size_t count,
                                                               Permissions access) const {
    auto piece = translated_piece(addr, count, access);
    if (piece) {
      forget_failure();
      return std::move(*piece);
    }
    detail::last_iommu_failure =
        detail::IommuFailure{this, addr.raw_value(), count, access, piece.error()};
    return std::nullopt;
  }

  // Byte-access hook: the pieces of [addr, addr + count). Right after first_piece failed
  // for the same range, the iterator reports that failure rather than looking again.
  Result<SliceIterator> slices_for(GuestAddress addr, std::size_t count,
                                   Permissions access) const noexcept {
    detail::IommuFailure& failure = detail::last_iommu_failure;
    if (mode_ == IommuMode::Translate && failure.owner == this &&
        failure.addr == addr.raw_value() && failure.count == count && failure.access == access) {
      failure.owner = nullptr;
      return SliceIterator(this, addr, count, access, std::move(failure.error));
    }
    return SliceIterator(this, addr, count, access);
  }

  // Byte-access hook: a load or store that crosses the end of its piece or is misaligned.
  Error single_access_error(ErrorCode reason, GuestAddress addr, std::size_t size) const {
    if (mode_ == IommuMode::Passthrough) {
      return Error::invalid_backend_address(addr.raw_value());
    }
    if (reason == ErrorCode::Misaligned) {
      return Error::misaligned(addr.raw_value(), size);
    }
    return Error::fragmented(addr.raw_value(), size, contiguous_bytes(addr, size));
  }

  // How many of the `size` bytes at `addr` one host range holds now, without the handler.
  std::uint64_t contiguous_bytes(GuestAddress addr, std::size_t size) const {
    if (iommu_ == nullptr) {
      return 0;
    }
    auto entry = iommu_->entry_at(addr);
    if (!entry) {
      return 0;
    }
    const std::uint64_t offset = addr.raw_value() - entry->iova.raw_value();
    const std::uint64_t mapped = std::min<std::uint64_t>(size, entry->length - offset);
    auto piece = physical_piece(entry->target.raw_value() + offset, mapped, Permissions::No);
    return piece->has_value() ? (*piece)->size() : 0;
  }

  M memory_;
  std::shared_ptr<Iommu> iommu_;
  [[no_unique_address]] BitmapHolder bitmap_;
  IommuMode mode_;
  detail::IotlbCache cache_;
};

/// The pieces of an IOVA range (see IommuMemory::get_slices).
template <GuestMemoryBackend M, Bitmap B>
class IommuMemory<M, B>::SliceIterator
    : public detail::PieceSequence<SliceIterator, slice_type> {
 public:
  /// The pieces of `count` bytes at `addr` for `access` in `memory`; with `first_error`, only that
  /// error. Validity: while `memory` is alive and unchanged.
  SliceIterator(const IommuMemory* memory, GuestAddress addr, std::size_t count,
                Permissions access, std::optional<Error> first_error = std::nullopt) noexcept
      : memory_(memory), addr_(addr), count_(count), access_(access),
        first_error_(std::move(first_error)) {}

  /// The next piece, an error (after which nothing follows), or std::nullopt at the end.
  std::optional<Result<slice_type>> next() {
    if (count_ == 0) {
      return std::nullopt;
    }
    if (first_error_) {
      count_ = 0;
      return Result<slice_type>(std::unexpect, *std::exchange(first_error_, std::nullopt));
    }
    auto piece = memory_->piece_at(addr_, count_, access_);
    if (!piece) {
      count_ = 0;
      return piece;
    }
    count_ -= piece->size();
    // Cannot wrap: a piece ends where an IOTLB entry or a region ends, inside 64 bits.
    addr_ = addr_.unchecked_add(piece->size());
    return piece;
  }

 private:
  const IommuMemory* memory_;
  GuestAddress addr_;
  std::size_t count_;
  Permissions access_;
  std::optional<Error> first_error_;
};

static_assert(BitmapSlice<IommuBitmapSlice<NoBitmap, NoBitmap>>);
static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<>>>);
static_assert(std::same_as<IommuMemory<GuestMemoryMmap<>>::slice_type, GuestMemoryMmap<>::slice_type>);

}  // namespace guestmem
