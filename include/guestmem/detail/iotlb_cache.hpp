// guestmem: the translation cache of an IommuMemory, and the per-thread record of its last
// failed lookup. Not API: see iommu.hpp for the contracts they serve.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "guestmem/detail/config.hpp"
#include "guestmem/error.hpp"
#include "guestmem/permissions.hpp"

namespace guestmem::detail {

/// The rights of `p` as two bits: 1 read, 2 write.
[[nodiscard]] constexpr std::uint64_t permission_bits(Permissions p) noexcept {
  return (p.has_read() ? 1U : 0U) | (p.has_write() ? 2U : 0U);
}

/// A few IOTLB entries, direct-mapped by 4 KiB page of the IOVA, each tagged with the IOMMU
/// generation it was read at. An entry is used only while the IOMMU's generation is still the
/// tag: every change to an existing IOTLB entry (removed, cut, replaced, or grown by a merge)
/// moves the generation on, so a hit is never staler than the last such change, and the
/// `available` bytes of a hit end where the IOTLB entry (or the region below) ends now. An
/// entry's permissions are what its user may do through it (IommuMemory stores the IOTLB
/// entry's permissions less what the protection of the memory below refuses); a hit needs
/// every right the access asks for.
///
/// Each slot is a sequence lock over atomic words: a reader takes the words, then checks that
/// the sequence number is even and unchanged; a writer that finds the slot busy skips it (the
/// cache is only a cache). Readers never write, so threads that hit the same entries share
/// its cache lines; on x86 a hit is plain loads.
class IotlbCache {
 public:
  /// A translation from the cache: the target of the IOVA looked up, its host address, and
  /// how many bytes from it on the entry covers.
  struct Hit {
    std::uint64_t target;
    std::uint8_t* host;
    std::uint64_t available;
  };

  IotlbCache() noexcept = default;
  /// A copy starts empty: entries are cheap to find again.
  IotlbCache(const IotlbCache& /*other*/) noexcept : IotlbCache() {}
  IotlbCache& operator=(const IotlbCache& /*other*/) noexcept {
    clear();
    return *this;
  }
  ~IotlbCache() = default;

  /// The cached translation of `iova` for `access` at IOMMU generation `generation`.
  [[nodiscard]] GUESTMEM_ALWAYS_INLINE std::optional<Hit> find(std::uint64_t iova,
                                                             Permissions access,
                                                             std::uint64_t generation) const noexcept {
    const Slot& slot = slots_[index(iova)];
    const std::uint64_t before = slot.sequence.load(std::memory_order_acquire);
    // Acquire loads keep the second sequence load after them (no fence needed, which
    // ThreadSanitizer would not model).
    const std::uint64_t start = slot.start.load(std::memory_order_acquire);
    const std::uint64_t end = slot.end.load(std::memory_order_acquire);
    const std::uint64_t target = slot.target.load(std::memory_order_acquire);
    std::uint8_t* const host = slot.host.load(std::memory_order_acquire);
    const std::uint64_t tag = slot.tag.load(std::memory_order_acquire);
    const std::uint64_t after = slot.sequence.load(std::memory_order_relaxed);
    const bool hit = before == after && (before & 1U) == 0 && iova - start < end - start &&
                     (tag >> 2) == generation && (permission_bits(access) & ~tag & 3U) == 0;
    if (!hit) {
      return std::nullopt;
    }
    return Hit{target + (iova - start), host + (iova - start), end - iova};
  }

  /// Remembers, in the slot of `iova`, that [start, end) (which holds `iova`) maps to
  /// `target`, at host address `host`, for the accesses `permissions` allows, at
  /// `generation`.
  void insert(std::uint64_t iova, std::uint64_t start, std::uint64_t end, std::uint64_t target,
              std::uint8_t* host, Permissions permissions,
              std::uint64_t generation) const noexcept {
    Slot& slot = slots_[index(iova)];
    std::uint64_t sequence = slot.sequence.load(std::memory_order_relaxed);
    if ((sequence & 1U) != 0 ||
        !slot.sequence.compare_exchange_strong(sequence, sequence + 1, std::memory_order_acquire,
                                               std::memory_order_relaxed)) {
      return;
    }
    // Release stores: a reader that sees any of them also sees the odd sequence number.
    slot.start.store(start, std::memory_order_release);
    slot.end.store(end, std::memory_order_release);
    slot.target.store(target, std::memory_order_release);
    slot.host.store(host, std::memory_order_release);
    slot.tag.store(generation << 2 | permission_bits(permissions), std::memory_order_release);
    slot.sequence.store(sequence + 2, std::memory_order_release);
  }

  /// Forgets every entry. Concurrency: no other call on this cache may run at the same time.
  void clear() noexcept {
    for (Slot& slot : slots_) {
      slot.start.store(0, std::memory_order_relaxed);
      slot.end.store(0, std::memory_order_relaxed);
    }
  }

 private:
  static constexpr std::size_t kSlots = 8;
  static constexpr unsigned kPageShift = 12;

  // One cache line per slot, so that a refill does not disturb readers of the others.
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> sequence{0};
    // An empty slot covers nothing: [0, 0).
    std::atomic<std::uint64_t> start{0};
    std::atomic<std::uint64_t> end{0};
    std::atomic<std::uint64_t> target{0};
    std::atomic<std::uint8_t*> host{nullptr};
    std::atomic<std::uint64_t> tag{~std::uint64_t{0}};
  };

  [[nodiscard]] static constexpr std::size_t index(std::uint64_t iova) noexcept {
    return static_cast<std::size_t>(iova >> kPageShift) % kSlots;
  }

  // An entry sits in the slot of the page it was looked up for; other pages of the same
  // entry that index other slots miss once and insert it there too.
  mutable std::array<Slot, kSlots> slots_{};
};

/// The failure of the last IOMMU-translated first-piece lookup on this thread, if it failed.
///
/// The byte-access mixin looks up an access's first piece twice when it fails: once on the
/// fast path (no Error is built there), once through `slices_for` to get the error. Another
/// thread may install a mapping in between, and the second lookup must not then find the
/// piece that the first did not. The first lookup records its failure here and the second
/// reports it; every successful lookup clears the record, so it never outlives the access
/// that made it.
struct IommuFailure {
  const void* owner = nullptr;
  std::uint64_t addr = 0;
  std::size_t count = 0;
  Permissions access = Permissions::No;
  std::optional<Error> error;
};

GUESTMEM_API inline constinit thread_local IommuFailure last_iommu_failure;

}  // namespace guestmem::detail
