#include "layout.hpp"

#include <cstring>

#include <xxhash.h>

// The guest binary, placed in this object by guest_image.S (.incbin).
extern "C" const unsigned char tiny_vmm_guest_start[];
extern "C" const unsigned char tiny_vmm_guest_end[];

namespace tiny_vmm {

std::span<const std::byte> guest_image() noexcept {
  const auto size = static_cast<std::size_t>(tiny_vmm_guest_end - tiny_vmm_guest_start);
  return std::as_bytes(std::span(tiny_vmm_guest_start, size));
}

Status<Memory> make_memory() {
  auto mem = Memory::from_ranges({{kRegion0Base, kRegion0Size}, {kRegion1Base, kRegion1Size}});
  if (!mem) {
    return std::unexpected(describe("creating guest memory", mem.error()));
  }
  return std::move(*mem);
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> region_table(const Memory& mem) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> table;
  for (const auto& region : mem.regions()) {
    table.emplace_back(region.start_addr().raw_value(), region.len());
  }
  return table;
}

std::uint64_t memory_hash(const Memory& mem) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const auto& region : mem.regions()) {
    auto slice = region.as_volatile_slice();
    // SAFETY: the slice covers the whole live region; the caller has stopped the guest, so
    // nothing writes the bytes while XXH3 reads them.
    XXH3_64bits_update(state, slice.unsafe_host_ptr(), slice.size());
  }
  const std::uint64_t hash = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return hash;
}

std::vector<std::byte> expected_output(std::span<const std::byte> input) {
  std::vector<std::byte> out(input.begin(), input.end());
  const std::size_t words = std::min<std::size_t>(out.size(), kNumBlocks * kBlockSize) / 4;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint32_t word;
    std::memcpy(&word, out.data() + 4 * i, 4);
    word = guestmem::Le32(guestmem::Le32(word).to_native() ^ kXorKey).to_native();
    std::memcpy(out.data() + 4 * i, &word, 4);
  }
  return out;
}

}  // namespace tiny_vmm
