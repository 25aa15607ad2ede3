// tiny_vmm: the guest's memory layout and the ring's structures, as C++ types.
//
// The numbers come from guest_abi.h, which the guest's assembly includes too; this header
// gives them types and adds the structures the device reads and writes with read_obj and
// write_obj (little-endian fields, no padding, so they are ByteValued).
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>

#include <guestmem/guestmem.hpp>

#include "guest_abi.h"

namespace tiny_vmm {

/// A fallible result of the demo: the error is one readable line.
template <class T>
using Status = std::expected<T, std::string>;

/// "what: message" for a guestmem error.
inline std::string describe(const char* what, const guestmem::Error& error) {
  return std::string(what) + ": " + error.message();
}

/// The guest's memory: every write through guestmem marks its page in the region's bitmap.
using Memory = guestmem::GuestMemoryMmap<guestmem::AtomicBitmap>;
/// The memory as devices keep it: a map that could be replaced (hot-plug) while they run.
using MemorySpace = guestmem::GuestMemoryAtomic<Memory>;

inline constexpr std::size_t kPageSize = 4096;
inline constexpr guestmem::GuestAddress kRegion0Base{TVM_REGION0_BASE};
inline constexpr std::size_t kRegion0Size = TVM_REGION0_SIZE;
inline constexpr guestmem::GuestAddress kRegion1Base{TVM_REGION1_BASE};
inline constexpr std::size_t kRegion1Size = TVM_REGION1_SIZE;

inline constexpr guestmem::GuestAddress kCodeAddr{TVM_CODE_ADDR};
inline constexpr std::uint32_t kRingSize = TVM_RING_SIZE;
inline constexpr guestmem::GuestAddress kRequestTable{TVM_REQ_TABLE};
inline constexpr guestmem::GuestAddress kAvailIdx{TVM_AVAIL_IDX};
inline constexpr guestmem::GuestAddress kAvailRing{TVM_AVAIL_RING};
inline constexpr guestmem::GuestAddress kUsedIdx{TVM_USED_IDX};
inline constexpr guestmem::GuestAddress kUsedRing{TVM_USED_RING};

inline constexpr std::uint16_t kConsolePort = TVM_PORT_CONSOLE;
inline constexpr std::uint16_t kDoorbellPort = TVM_PORT_DOORBELL;

inline constexpr std::uint32_t kBlockSize = TVM_BLOCK_SIZE;
inline constexpr std::uint32_t kNumBlocks = TVM_NUM_BLOCKS;
inline constexpr std::uint32_t kXorKey = TVM_XOR_KEY;
/// Requests of one full run: a read and a write per block.
inline constexpr std::uint32_t kRequestsPerRun = 2 * kNumBlocks;

/// One request of the ring (TVM_REQ_SIZE bytes).
struct Request {
  guestmem::Le32 op;
  guestmem::Le32 len;
  guestmem::Le64 offset;
  guestmem::Le64 addr;
  guestmem::Le32 status;
  guestmem::Le32 reserved;
};
static_assert(sizeof(Request) == TVM_REQ_SIZE && offsetof(Request, op) == TVM_REQ_OP &&
              offsetof(Request, len) == TVM_REQ_LEN && offsetof(Request, offset) == TVM_REQ_OFFSET &&
              offsetof(Request, addr) == TVM_REQ_ADDR && offsetof(Request, status) == TVM_REQ_STATUS);
static_assert(guestmem::ByteValued<Request>);

/// One entry of the used ring.
struct UsedElem {
  guestmem::Le32 id;
  guestmem::Le32 len;
};
static_assert(sizeof(UsedElem) == 8 && guestmem::ByteValued<UsedElem>);
static_assert(TVM_USED_RING - TVM_USED_IDX == 8, "the used ring starts 8 bytes after its index");
static_assert((kRingSize & (kRingSize - 1)) == 0, "the ring size is a power of two");

/// The guest buffer of block `block`: region 0 for even blocks, region 1 for odd ones.
[[nodiscard]] constexpr guestmem::GuestAddress block_buffer(std::uint32_t block) noexcept {
  const std::uint64_t base = (block % 2 == 0) ? TVM_LOW_BUFFERS : TVM_HIGH_BUFFERS;
  return guestmem::GuestAddress{base + (std::uint64_t{block} << TVM_BLOCK_SHIFT)};
}

/// The guest program (guest.S assembled to a flat binary, loaded at kCodeAddr).
[[nodiscard]] std::span<const std::byte> guest_image() noexcept;

/// A fresh memory: [0, 1 MiB) and [2 MiB, 3 MiB), zero-filled, clean bitmaps.
[[nodiscard]] Status<Memory> make_memory();

/// The memory's regions as (base, size) pairs, in address order.
[[nodiscard]] std::vector<std::pair<std::uint64_t, std::uint64_t>> region_table(const Memory& mem);

/// XXH3-64 of the contents of every region, in address order.
/// Concurrency: the guest must be stopped, or the hash describes no moment in particular.
[[nodiscard]] std::uint64_t memory_hash(const Memory& mem);

/// The bytes of the expected output for `input`: every 32-bit little-endian word XORed with
/// kXorKey (what the guest computes), for the first kNumBlocks blocks.
[[nodiscard]] std::vector<std::byte> expected_output(std::span<const std::byte> input);

}  // namespace tiny_vmm
