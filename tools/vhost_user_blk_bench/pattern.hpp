// The data pattern of the benchmark: every block of the device has a content that depends on
// the run, the block number and how many times the run has written it, so a read that
// returns another block, stale data, or a torn or shifted buffer is caught.
//
// Word k (8 bytes, native order) of a block holds `key + k * kPatternStep`, where `key` mixes
// the run's nonce, the block and its generation; comparing is one pass over the buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

namespace guestmem::vhost_user_bench {

inline constexpr std::uint64_t kPatternStep = 0x9e3779b97f4a7c15;

/// The key of `block` at `generation` in the run with `nonce` (splitmix64 finalizer).
[[nodiscard]] constexpr std::uint64_t block_key(std::uint64_t nonce, std::uint64_t block,
                                                std::uint32_t generation) noexcept {
  std::uint64_t z = nonce ^ (block * 0xbf58476d1ce4e5b9) ^
                    (std::uint64_t{generation} << 40) ^ 0x94d049bb133111eb;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

/// Fills `buf` (a multiple of 8 bytes) with the block content of `key`.
inline void fill_pattern(std::span<std::byte> buf, std::uint64_t key) noexcept {
  for (std::size_t k = 0; k < buf.size() / 8; ++k) {
    const std::uint64_t word = key + k * kPatternStep;
    std::memcpy(buf.data() + k * 8, &word, 8);
  }
}

/// The byte offset of the first word of `buf` that differs from the content of `key`, or
/// nothing when all of `buf` (a multiple of 8 bytes) matches.
[[nodiscard]] inline std::optional<std::size_t> pattern_mismatch(std::span<const std::byte> buf,
                                                                 std::uint64_t key) noexcept {
  std::uint64_t differs = 0;
  const std::size_t words = buf.size() / 8;
  // One pass without an early exit vectorizes; the rare failure is located afterwards.
  for (std::size_t k = 0; k < words; ++k) {
    std::uint64_t word;
    std::memcpy(&word, buf.data() + k * 8, 8);
    differs |= word ^ (key + k * kPatternStep);
  }
  if (differs == 0) return std::nullopt;
  for (std::size_t k = 0; k < words; ++k) {
    std::uint64_t word;
    std::memcpy(&word, buf.data() + k * 8, 8);
    if (word != key + k * kPatternStep) return k * 8;
  }
  return std::nullopt;
}

}  // namespace guestmem::vhost_user_bench
