// guestmem: safe, fast access to a virtual machine's memory.
//
// The umbrella header; it only includes the public headers, one concept each:
//   address.hpp         GuestAddress, MemoryRegionAddress, GuestUsize
//   error.hpp           Error, ErrorCode, Result<T>
//   byte_valued.hpp     ByteValued, AtomicAccess
//   endian.hpp          Le16/32/64, Be16/32/64
//   permissions.hpp     Permissions
//   bitmap.hpp          Bitmap, BitmapSlice, NewBitmap, NoBitmap
//   atomic_bitmap.hpp   AtomicBitmap, AtomicBitmapSlice
//   volatile_slice.hpp  VolatileSlice, VolatileRef, VolatileArrayRef
//   volatile_io.hpp     ReadVolatile, WriteVolatile (+ Vectored)
//   fd.hpp, io.hpp      UniqueFd, BorrowedFd, SpanReader, SpanWriter, VectorWriter
//   protection.hpp      Protection
//   shared_memory.hpp   SharedMemory, Seal
//   mmap_region.hpp     FileOffset, MmapRegion, MmapRegionBuilder, Advice, SwapReservation,
//                       cache_line_size
//   mapped_region.hpp   MappedRegion, ExternalMapping
//   mapping_arena.hpp   MappingArena, ArenaMapping
//   guest_region.hpp    GuestRegionMmap
//   guest_memory.hpp    GuestMemoryMmap, RegionSpec
//   iommu.hpp           Iotlb, Iommu, IommuMemory, IommuMode, IovaRange, MappedRange
//   concepts.hpp        Bytes, GuestMemoryRegion, GuestMemoryBackend, GuestMemory
//   atomic_memory.hpp   GuestAddressSpace, GuestMemoryAtomic, SharedAddressSpace, RefAddressSpace
//   fault.hpp           install_fault_handler, FaultInfo, fallible_copy/fill/load/store/...
//   vm_io.hpp           VmReader, VmWriter, Fallible, Infallible, VmIo, VmIoOnce, PodOnce
#pragma once

#include "guestmem/address.hpp"
#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/atomic_memory.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/byte_valued.hpp"
#include "guestmem/concepts.hpp"
#include "guestmem/endian.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fault.hpp"
#include "guestmem/fd.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/guest_region.hpp"
#include "guestmem/io.hpp"
#include "guestmem/iommu.hpp"
#include "guestmem/mapped_region.hpp"
#include "guestmem/mapping_arena.hpp"
#include "guestmem/mmap_region.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/protection.hpp"
#include "guestmem/shared_memory.hpp"
#include "guestmem/vm_io.hpp"
#include "guestmem/volatile_io.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {

static_assert(Bytes<VolatileSlice<>, std::size_t>);
static_assert(GuestMemoryRegion<GuestRegionMmap<>>);
static_assert(GuestMemoryBackend<GuestMemoryMmap<>>);
static_assert(GuestMemory<GuestMemoryMmap<>>);
static_assert(GuestMemoryRegion<GuestRegionMmap<AtomicBitmap>>);
static_assert(GuestMemoryBackend<GuestMemoryMmap<AtomicBitmap>>);
static_assert(GuestMemory<GuestMemoryMmap<AtomicBitmap>>);
static_assert(GuestAddressSpace<GuestMemoryAtomic<GuestMemoryMmap<AtomicBitmap>>>);
static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<AtomicBitmap>, AtomicBitmap>>);
static_assert(GuestAddressSpace<GuestMemoryAtomic<GuestMemoryMmap<>>>);
static_assert(GuestAddressSpace<SharedAddressSpace<GuestMemoryMmap<>>>);
static_assert(GuestAddressSpace<RefAddressSpace<GuestMemoryMmap<>>>);
static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<>>>);
static_assert(VmIo<VolatileSlice<>, std::size_t> && VmIoOnce<VolatileSlice<>, std::size_t>);
static_assert(VmIo<GuestRegionMmap<>, MemoryRegionAddress> &&
              VmIoOnce<GuestRegionMmap<>, MemoryRegionAddress>);
static_assert(VmIo<GuestMemoryMmap<>, GuestAddress> && VmIoOnce<GuestMemoryMmap<>, GuestAddress>);
static_assert(VmIo<GuestMemoryMmap<AtomicBitmap>, GuestAddress> &&
              VmIoOnce<GuestMemoryMmap<AtomicBitmap>, GuestAddress>);
static_assert(MappedRegion<MmapRegion<>> && MappedRegion<MappingArena> &&
              MappedRegion<ExternalMapping>);

}  // namespace guestmem
