// guestmem: safe, fast access to a virtual machine's memory.
//
// The umbrella header; it only includes the public headers, one concept each:
//   address.hpp         GuestAddress, MemoryRegionAddress, GuestUsize
//   error.hpp           Error, ErrorCode, Result<T>
//   byte_valued.hpp     ByteValued, AtomicAccess
//   endian.hpp          Le16/32/64, Be16/32/64
//   permissions.hpp     Permissions
//   bitmap.hpp          Bitmap, BitmapSlice, NewBitmap, NoBitmap
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
//   concepts.hpp        Bytes, GuestMemoryRegion, GuestMemoryBackend, GuestMemory
#pragma once

#include "guestmem/address.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/byte_valued.hpp"
#include "guestmem/concepts.hpp"
#include "guestmem/endian.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fd.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/guest_region.hpp"
#include "guestmem/io.hpp"
#include "guestmem/mapped_region.hpp"
#include "guestmem/mapping_arena.hpp"
#include "guestmem/mmap_region.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/protection.hpp"
#include "guestmem/shared_memory.hpp"
#include "guestmem/volatile_io.hpp"
#include "guestmem/volatile_slice.hpp"

namespace guestmem {

static_assert(Bytes<VolatileSlice<>, std::size_t>);
static_assert(GuestMemoryRegion<GuestRegionMmap<>>);
static_assert(GuestMemoryBackend<GuestMemoryMmap<>>);
static_assert(GuestMemory<GuestMemoryMmap<>>);
static_assert(MappedRegion<MmapRegion<>> && MappedRegion<MappingArena> &&
              MappedRegion<ExternalMapping>);

}  // namespace guestmem
