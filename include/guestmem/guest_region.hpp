// guestmem: one region of guest physical memory, backed by an mmap in the VMM.
//
// `GuestRegionMmap` places an `MmapRegion` at a guest base address: the region holds guest
// addresses [start_addr(), last_addr()] and offers the byte-access interface at offsets
// inside it (`MemoryRegionAddress`). An access never leaves the region: one that would run
// past the end stops there (read/write) or fails (read_slice, read_obj, ...). An access the
// mapping's protection does not allow (a write to a read-only mapping) fails with
// ProtectionViolation before it touches memory.
//
//   auto mapping = MmapRegion<>::create(0x1000);
//   auto region = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{0x10000});
//   region->write_obj(std::uint32_t{1}, MemoryRegionAddress{0x10});
//   auto off = region->to_region_addr(GuestAddress{0x10010});           // 0x10
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

#include "guestmem/address.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/detail/bytes_impl.hpp"
#include "guestmem/detail/fallible_impl.hpp"
#include "guestmem/error.hpp"
#include "guestmem/mmap_region.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {

/// One region of guest physical memory: an MmapRegion with dirty bitmap `B` placed at a guest base
/// address, with the byte-access interface at offsets inside it (see the top of this header).
/// Concurrency: const member functions may be called from any number of threads.
template <Bitmap B = NoBitmap>
class GuestRegionMmap : public detail::BytesMixin<GuestRegionMmap<B>, MemoryRegionAddress>,
                        public detail::FallibleMixin<GuestRegionMmap<B>, MemoryRegionAddress> {
 public:
  /// The dirty bitmap of the region's mapping.
  using bitmap_type = B;
  /// The bitmap slice that views into this region carry.
  using slice_type = typename MmapRegion<B>::slice_type;

  /// Places `mapping` at guest address `guest_base`.
  /// Errors: InvalidGuestRegion when guest_base + size does not fit in 64 bits (the exclusive
  /// end must be representable, so the last address of the guest space, 2^64 - 1, can never
  /// be part of a region).
  static Result<GuestRegionMmap> create(MmapRegion<B> mapping, GuestAddress guest_base) {
    if (!guest_base.checked_add(mapping.size())) {
      return std::unexpected(
          Error::at(ErrorCode::InvalidGuestRegion, guest_base.raw_value(), mapping.size()));
    }
    return GuestRegionMmap(std::move(mapping), guest_base);
  }

  /// The mapping behind the region (prot, flags, owned, fds_overlap, unsafe_host_ptr, ...).
  /// Validity: as long as the region.
  [[nodiscard]] const MmapRegion<B>& mapping() const noexcept { return mapping_; }

  /// The size of the region in bytes (at least 1).
  [[nodiscard]] GuestUsize len() const noexcept { return mapping_.size(); }
  /// The lowest guest address in the region.
  [[nodiscard]] GuestAddress start_addr() const noexcept { return guest_base_; }
  /// The highest guest address in the region (inclusive).
  [[nodiscard]] GuestAddress last_addr() const noexcept {
    // Cannot wrap: create() checked guest_base + len() and len() >= 1.
    return GuestAddress{guest_base_.raw_value() + (len() - 1)};
  }

  /// `addr` if it is inside the region.
  [[nodiscard]] std::optional<MemoryRegionAddress> check_address(
      MemoryRegionAddress addr) const noexcept {
    if (!address_in_range(addr)) {
      return std::nullopt;
    }
    return addr;
  }
  /// Whether `addr` is inside the region (below len()).
  [[nodiscard]] bool address_in_range(MemoryRegionAddress addr) const noexcept {
    return addr.raw_value() < len();
  }
  /// `base + offset` if it does not overflow and is inside the region.
  [[nodiscard]] std::optional<MemoryRegionAddress> checked_offset(
      MemoryRegionAddress base, std::size_t offset) const noexcept {
    auto sum = base.checked_add(offset);
    return sum ? check_address(*sum) : std::nullopt;
  }
  /// The offset of guest address `addr` in the region, if the region holds it.
  [[nodiscard]] std::optional<MemoryRegionAddress> to_region_addr(GuestAddress addr) const noexcept {
    auto offset = addr.checked_offset_from(guest_base_);
    return offset ? check_address(MemoryRegionAddress{*offset}) : std::nullopt;
  }

  /// The host address of region offset `addr`, for handing to KVM or a system call.
  /// Writes through it are not reported to the dirty bitmap.
  /// Errors: InvalidBackendAddress when `addr` is outside the region.
  /// Validity: while the region is alive.
  [[nodiscard]] Result<std::uint8_t*> get_host_address(MemoryRegionAddress addr) const noexcept {
    if (!address_in_range(addr)) {
      return std::unexpected(Error::invalid_backend_address(addr.raw_value()));
    }
    // SAFETY: addr < len(), so the pointer lies inside the live mapping.
    return mapping_.unsafe_host_ptr() + addr.raw_value();
  }

  /// A view of `count` bytes at `offset`.
  /// Errors: InvalidBackendAddress(offset) when the range does not fit in the region.
  /// Validity: while the region is alive. The view carries no protection: for a read-only
  /// region it serves reads only (see MmapRegion::get_slice).
  [[nodiscard]] Result<slice_type> get_slice(MemoryRegionAddress offset,
                                             std::size_t count) const noexcept {
    auto slice = mapping_.get_slice(offset.raw_value(), count);
    if (!slice) {
      return std::unexpected(Error::invalid_backend_address(offset.raw_value()));
    }
    return slice;
  }

  /// A view of the whole region. Validity and protection: as get_slice.
  [[nodiscard]] slice_type as_volatile_slice() const noexcept {
    return mapping_.as_volatile_slice();
  }

  /// The file and offset behind the region, or nullptr for anonymous memory.
  /// Validity: as long as the region.
  [[nodiscard]] const FileOffset* file_offset() const noexcept { return mapping_.file_offset(); }
  /// Whether the region is backed by hugetlbfs; std::nullopt when unknown.
  [[nodiscard]] std::optional<bool> is_hugetlbfs() const noexcept {
    return mapping_.is_hugetlbfs();
  }
  /// The region's dirty bitmap (offsets from the region's start). Validity: as long as the
  /// region.
  [[nodiscard]] const B& bitmap() const noexcept { return mapping_.bitmap(); }

 private:
  friend class detail::BytesMixin<GuestRegionMmap, MemoryRegionAddress>;
  friend class detail::FallibleMixin<GuestRegionMmap, MemoryRegionAddress>;

  GuestRegionMmap(MmapRegion<B> mapping, GuestAddress guest_base) noexcept
      : mapping_(std::move(mapping)), guest_base_(guest_base) {}

  // Byte-access hook: the piece [offset, min(offset + count, len())), when the protection
  // allows `access`.
  GUESTMEM_ALWAYS_INLINE std::optional<slice_type> first_piece(
      MemoryRegionAddress offset, std::size_t count, Permissions access) const noexcept {
    const std::uint64_t at = offset.raw_value();
    if (at >= len() || !mapping_.permits(access)) [[unlikely]] {
      return std::nullopt;
    }
    const std::size_t n = std::min<std::uint64_t>(count, len() - at);
    // SAFETY: [at, at + n) lies inside the live mapping.
    return slice_type::from_raw_parts(mapping_.unsafe_host_ptr() + at, n,
                                      mapping_.bitmap().slice_at(at));
  }

  // Byte-access hook: the same piece, or the error for it, as a sequence.
  Result<detail::OneItem<Result<slice_type>>> slices_for(MemoryRegionAddress offset,
                                                         std::size_t count,
                                                         Permissions access) const noexcept {
    const std::uint64_t at = offset.raw_value();
    if (at >= len()) {
      return detail::OneItem(
          Result<slice_type>(std::unexpect, Error::invalid_backend_address(at)));
    }
    if (!mapping_.permits(access)) {
      return detail::OneItem(
          Result<slice_type>(std::unexpect, Error::protection_violation(at, count, access)));
    }
    return detail::OneItem(Result<slice_type>(*first_piece(offset, count, Permissions::No)));
  }

  // Byte-access hook: single accesses that cross the end or are misaligned.
  Error single_access_error(ErrorCode /*reason*/, MemoryRegionAddress addr,
                            std::size_t /*size*/) const noexcept {
    return Error::invalid_backend_address(addr.raw_value());
  }

  MmapRegion<B> mapping_;
  GuestAddress guest_base_;
};

}  // namespace guestmem
