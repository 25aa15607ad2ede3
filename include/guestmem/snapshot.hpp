// guestmem: saving guest memory to a file and restoring it (target guestmem::snapshot).
//
// A snapshot file holds a checksummed header that describes the memory's layout (its
// regions: guest base, size, and where the region's bytes sit in the file) followed by each
// region's bytes at a page-aligned file offset, in the same order as in the region. Pages of
// zeros are holes in the file, so a 4 GiB guest that touched 40 MiB makes a file of about
// 40 MiB on disk. Every 1 MiB chunk of region data, and the header, carries an XXH3 checksum.
//
// Restoring either copies the data into fresh anonymous memory and verifies every chunk
// before handing the memory out (RestoreMode::Eager), or maps the file privately
// (RestoreMode::Lazy): the cost is O(regions), pages load from the file on first touch, and
// writes stay in the process (copy-on-write). Lazy restore verifies the header and layout
// only; verify_snapshot checks the data when that is wanted.
//
// A diff (save_snapshot_diff) holds only the pages whose dirty bits were set, names the
// snapshot it applies onto, and is refused on any other (SnapshotWrongBase).
//
// File format (version 1, little-endian): one header page with the magic "GMEMSNAP", the
// version, the snapshot's id and base id, the page size, the region table and, per region,
// a bitmap of the pages the file holds and the chunk checksums; then the regions' data. A
// chunk's checksum is XXH3-64 of the bytes of the pages it holds, in order (all non-zero
// pages of a full snapshot, all dirty pages of a diff).
//
//   auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 1 << 30}});
//   UniqueFd file{::open("guest.snap", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
//   auto base = save_snapshot(*mem, BorrowedFd{file});          // Result<SnapshotId>
//   ...the guest runs...
//   auto diff = save_snapshot_diff(*mem, *base, BorrowedFd{diff_file});
//   auto copy = restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
//   apply_snapshot_diff(*copy, BorrowedFd{diff_file}, *base);
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "guestmem/address.hpp"
#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/bitmap.hpp"
#include "guestmem/error.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/io.hpp"

namespace guestmem {

/// How restore_snapshot builds the memory.
enum class RestoreMode : std::uint8_t {
  /// Copies the data into new anonymous memory, verifying every chunk: returns only a
  /// complete and verified memory.
  Eager,
  /// Maps the file privately (MAP_PRIVATE): O(regions), pages load on first touch.
  Lazy,
};

/// A snapshot's identity: 128 random bits chosen when it is saved. The zero id means "none".
struct SnapshotId {
  /// The high 64 bits.
  std::uint64_t hi = 0;
  /// The low 64 bits.
  std::uint64_t lo = 0;
  /// Equal when all 128 bits are.
  friend constexpr bool operator==(const SnapshotId&, const SnapshotId&) noexcept = default;
};

/// One region as a snapshot file records it.
struct SnapshotRegionInfo {
  /// The guest address of the region's first byte.
  GuestAddress guest_base;
  /// The region's length in bytes.
  std::uint64_t size = 0;
  /// Where the region's first byte sits in the file (a multiple of the page size).
  std::uint64_t file_offset = 0;
  /// Pages the file holds for the region: the non-zero ones of a full snapshot, the dirty
  /// ones of a diff.
  std::uint64_t pages_present = 0;
};

/// What a snapshot file's header says (see read_snapshot_info).
struct SnapshotInfo {
  /// The format version the file was written in.
  std::uint32_t version = 0;
  /// This snapshot's identity.
  SnapshotId id;
  /// The snapshot a diff applies onto; std::nullopt for a full snapshot.
  std::optional<SnapshotId> base;
  /// The page size the file's page data and offsets are in.
  std::uint64_t page_size = 0;
  /// The size of the file the header describes (st_size; the blocks on disk are fewer).
  std::uint64_t file_size = 0;
  /// The regions, in guest address order.
  std::vector<SnapshotRegionInfo> regions;
};

/// The format version this build writes and reads.
inline constexpr std::uint32_t kSnapshotVersion = 1;
/// The bytes of region data one checksum covers (the last chunk of a region may be shorter).
inline constexpr std::uint64_t kSnapshotChunkSize = std::uint64_t{1} << 20;

/// Saves all of `mem` into `out`, a regular file open for reading and writing, replacing its
/// contents (it is truncated first); pages of zeros become holes. Returns the new snapshot's
/// id. The data is written with pwrite, not synced: call fsync when it must survive a crash.
/// For tracked memory (AtomicBitmap) each region's dirty bits are cleared before its pages
/// are read, so that a later save_snapshot_diff holds every page written since.
/// Errors: NoMemoryRegion (an empty memory); ProtectionViolation (a region that cannot be
/// read; `out` is untouched then); IoError(errno) from fcntl, ftruncate or pwrite (EINVAL for
/// an O_APPEND descriptor). A save that fails after it began writing leaves `out` holding an
/// incomplete file that every reader refuses, as its header is written last. Pages the
/// kernel cannot describe (no /proc/self/pagemap, no SEEK_DATA) are all read, not an error.
/// Concurrency: nothing may write the memory during the call (pause the vCPUs and devices);
/// a page written meanwhile may make the file fail its checksums.
template <Bitmap B>
GUESTMEM_API Result<SnapshotId> save_snapshot(const GuestMemoryMmap<B>& mem, BorrowedFd out);

/// Saves into `out` (as save_snapshot) only the pages whose dirty bits are set, taking the
/// bits (get_and_reset), as a diff that applies onto the snapshot `base`. Dirty pages of
/// zeros are holes in the file but still part of the diff. Returns the diff's id.
/// Errors and concurrency: as save_snapshot. A page written during the call is either in
/// this diff or has its bit set again for the next one.
GUESTMEM_API Result<SnapshotId> save_snapshot_diff(const GuestMemoryMmap<AtomicBitmap>& mem,
                                                   const SnapshotId& base, BorrowedFd out);

/// A new memory with the layout and contents of the full snapshot in `in`.
/// Eager: anonymous memory, filled with pread and verified chunk by chunk; returned only
/// when complete, otherwise freed. Lazy: MAP_PRIVATE mappings of `in` (duplicated, so the
/// caller may close it); only the header and layout are verified, the data is not read (use
/// verify_snapshot), and a later change of the file may show through pages not yet touched.
/// The memory's dirty bitmaps (if any) start clean.
/// Errors: IoError(errno); SnapshotUnsupported; SnapshotCorrupt (the header, or in eager
/// mode a chunk: its number and offset); SnapshotTruncated; SnapshotWrongBase (the file is
/// a diff); the mapping errors of MmapRegionBuilder (MappingFailed, ...).
template <Bitmap B = NoBitmap>
GUESTMEM_API Result<GuestMemoryMmap<B>> restore_snapshot(BorrowedFd in, RestoreMode mode);

/// Applies the diff in `diff` onto `mem`, which must hold the snapshot `expected_base` and
/// have the diff's layout. Every chunk is verified before any byte of `mem` changes; the
/// bytes are then read straight into guest memory (and reported to its dirty bitmap).
/// Errors: IoError(errno); SnapshotUnsupported; SnapshotCorrupt; SnapshotTruncated;
/// SnapshotWrongBase (the diff names another base, or is a full snapshot);
/// SnapshotLayoutMismatch; ProtectionViolation (a region the diff writes is read-only). On
/// any of these `mem` is unchanged, unless the file changes during the call or an I/O error
/// hits the second pass (then the error is IoError and part of the diff is applied).
/// Concurrency: nothing else may access the pages the diff writes during the call.
template <Bitmap B>
GUESTMEM_API Result<void> apply_snapshot_diff(const GuestMemoryMmap<B>& mem, BorrowedFd diff,
                                              const SnapshotId& expected_base);

/// The header of the snapshot (or diff) in `in`, verified (checksum, layout, file size).
/// Errors: IoError(errno); SnapshotUnsupported; SnapshotCorrupt (chunk 0);
/// SnapshotTruncated.
GUESTMEM_API Result<SnapshotInfo> read_snapshot_info(BorrowedFd in);

/// Reads the whole snapshot in `in` and checks every chunk's checksum, and that the pages
/// the file does not hold read as zeros (what a lazy restore would show). Costs one read of
/// the file (holes included).
/// Errors: as read_snapshot_info, plus SnapshotCorrupt for the first bad chunk.
GUESTMEM_API Result<void> verify_snapshot(BorrowedFd in);

extern template Result<SnapshotId> save_snapshot(const GuestMemoryMmap<NoBitmap>&, BorrowedFd);
extern template Result<SnapshotId> save_snapshot(const GuestMemoryMmap<AtomicBitmap>&,
                                                 BorrowedFd);
extern template Result<GuestMemoryMmap<NoBitmap>> restore_snapshot(BorrowedFd, RestoreMode);
extern template Result<GuestMemoryMmap<AtomicBitmap>> restore_snapshot(BorrowedFd,
                                                                       RestoreMode);
extern template Result<void> apply_snapshot_diff(const GuestMemoryMmap<NoBitmap>&, BorrowedFd,
                                                 const SnapshotId&);
extern template Result<void> apply_snapshot_diff(const GuestMemoryMmap<AtomicBitmap>&,
                                                 BorrowedFd, const SnapshotId&);

}  // namespace guestmem
