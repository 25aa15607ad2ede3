// guestmem: the interfaces device code is written against.
//
// Device models, boot loaders and vhost-user back ends take memory as a template parameter
// constrained by these concepts, so the same code runs on any memory (plain mmap'd regions,
// an IOMMU view, a snapshot guard) with static dispatch: no virtual call on an access.
//
// - `Bytes<M, A>`: the byte-access interface at addresses of type A.
// - `GuestMemoryRegion<R>`: one contiguous region (GuestRegionMmap).
// - `GuestMemoryBackend<M>`: a collection of regions (GuestMemoryMmap).
// - `GuestMemory<M>`: memory as a device sees it: byte access at guest (or I/O virtual)
//   addresses, and get_slices/check_range that take the kind of access (`Permissions`).
//   Every backend satisfies it directly.
//
//   template <GuestMemory M>
//   Result<std::uint16_t> ring_index(const M& mem, GuestAddress ring) {
//     return mem.template load<std::uint16_t>(ring.unchecked_add(2), std::memory_order_acquire);
//   }
#pragma once

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ranges>
#include <span>
#include <utility>

#include "guestmem/address.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/error.hpp"
#include "guestmem/mmap_region.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/volatile_io.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {
namespace detail {

// The narrowest source and sink: a container's transfer functions must accept them.
struct ReadArchetype {
  Result<std::size_t> read_volatile(const VolatileSlice<>& dst);
};
struct WriteArchetype {
  Result<std::size_t> write_volatile(const VolatileSlice<>& src);
};

}  // namespace detail

/// The byte-access interface at addresses of type `A` (see detail/bytes_impl.hpp for the
/// rules every implementation follows).
template <class M, class A>
concept Bytes = requires(const M& m, A addr, std::span<const std::byte> in,
                         std::span<std::byte> out, std::memory_order order,
                         detail::ReadArchetype& src, detail::WriteArchetype& dst,
                         std::size_t count) {
  { m.write(in, addr) } -> std::same_as<Result<std::size_t>>;
  { m.read(out, addr) } -> std::same_as<Result<std::size_t>>;
  { m.write_slice(in, addr) } -> std::same_as<Result<void>>;
  { m.read_slice(out, addr) } -> std::same_as<Result<void>>;
  { m.template read_obj<std::uint64_t>(addr) } -> std::same_as<Result<std::uint64_t>>;
  { m.write_obj(std::uint64_t{}, addr) } -> std::same_as<Result<void>>;
  { m.store(std::uint32_t{}, addr, order) } -> std::same_as<Result<void>>;
  { m.template load<std::uint32_t>(addr, order) } -> std::same_as<Result<std::uint32_t>>;
  { m.read_volatile_from(addr, src, count) } -> std::same_as<Result<std::size_t>>;
  { m.read_exact_volatile_from(addr, src, count) } -> std::same_as<Result<void>>;
  { m.write_volatile_to(addr, dst, count) } -> std::same_as<Result<std::size_t>>;
  { m.write_all_volatile_to(addr, dst, count) } -> std::same_as<Result<void>>;
};

/// One contiguous region of guest memory.
template <class R>
concept GuestMemoryRegion =
    Bitmap<typename R::bitmap_type> && Bytes<R, MemoryRegionAddress> &&
    requires(const R& r, GuestAddress guest, MemoryRegionAddress offset, std::size_t count) {
      typename R::slice_type;
      { r.len() } -> std::same_as<GuestUsize>;
      { r.start_addr() } -> std::same_as<GuestAddress>;
      { r.last_addr() } -> std::same_as<GuestAddress>;
      { r.bitmap() } -> std::same_as<const typename R::bitmap_type&>;
      { r.check_address(offset) } -> std::same_as<std::optional<MemoryRegionAddress>>;
      { r.address_in_range(offset) } -> std::same_as<bool>;
      { r.checked_offset(offset, count) } -> std::same_as<std::optional<MemoryRegionAddress>>;
      { r.to_region_addr(guest) } -> std::same_as<std::optional<MemoryRegionAddress>>;
      { r.get_host_address(offset) } -> std::same_as<Result<std::uint8_t*>>;
      { r.get_slice(offset, count) } -> std::same_as<Result<typename R::slice_type>>;
      { r.as_volatile_slice() } -> std::same_as<typename R::slice_type>;
      { r.file_offset() } -> std::same_as<const FileOffset*>;
      { r.is_hugetlbfs() } -> std::same_as<std::optional<bool>>;
    };

/// An immutable collection of regions, with accesses that cross adjacent regions.
template <class M>
concept GuestMemoryBackend =
    GuestMemoryRegion<typename M::region_type> &&
    requires(const M& m, GuestAddress addr, std::size_t count) {
      { m.num_regions() } -> std::same_as<std::size_t>;
      { m.find_region(addr) } -> std::same_as<const typename M::region_type*>;
      { m.regions() } -> std::ranges::input_range;
      { m.last_addr() } -> std::same_as<GuestAddress>;
      {
        m.to_region_addr(addr)
      } -> std::same_as<std::optional<std::pair<const typename M::region_type*, MemoryRegionAddress>>>;
      { m.address_in_range(addr) } -> std::same_as<bool>;
      { m.check_address(addr) } -> std::same_as<std::optional<GuestAddress>>;
      { m.check_range(addr, count) } -> std::same_as<bool>;
      { m.checked_offset(addr, count) } -> std::same_as<std::optional<GuestAddress>>;
      { m.get_host_address(addr) } -> std::same_as<Result<std::uint8_t*>>;
      { m.get_slice(addr, count) } -> std::same_as<Result<typename M::region_type::slice_type>>;
      { m.get_slices(addr, count).next() };
    };

/// Memory as a device uses it: byte access at guest (or I/O virtual) addresses, and access
/// checks and views that take the kind of access.
template <class M>
concept GuestMemory =
    Bytes<M, GuestAddress> &&
    requires(const M& m, GuestAddress addr, std::size_t count, Permissions access) {
      { m.check_range(addr, count, access) } -> std::same_as<bool>;
      { m.get_slices(addr, count, access)->next() };
      { m.physical_memory() };
    };

}  // namespace guestmem
