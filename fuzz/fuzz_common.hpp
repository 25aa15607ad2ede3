// Shared helpers of the fuzz targets: a reader that decodes the fuzzer's bytes into the
// values an operation needs, and the check that turns a disagreement with a model into a
// crash libFuzzer reports.
//
// Every target decodes its input as a stream of operations. The reader never fails: past the
// end of the input every value reads as zero, so any byte string is a valid program and the
// fuzzer's mutations always mean something.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "guestmem/permissions.hpp"
#include "guestmem/protection.hpp"

namespace guestmem::fuzz {

// Aborts with a message when a check fails. libFuzzer (and ASan's handler under it) report
// the abort as a crash and write the input to a crash-* file.
#define GUESTMEM_FUZZ_CHECK(cond, ...)                                                   \
  do {                                                                                   \
    if (!(cond)) [[unlikely]] {                                                          \
      std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                 \
      std::fprintf(stderr, "\n");                                                        \
      std::abort();                                                                      \
    }                                                                                    \
  } while (false)

/// True when GUESTMEM_FUZZ_UNMASK is set in the environment. Each target masks the input
/// classes of known library findings (so that fuzzing continues on everything else) unless
/// this is set; the reproducers in fuzz/regressions/ fail only with it set.
inline bool unmask_known_findings() noexcept {
  static const bool unmask = std::getenv("GUESTMEM_FUZZ_UNMASK") != nullptr;
  return unmask;
}

/// True when GUESTMEM_FUZZ_TRACE is set: targets then print each operation to stderr, for
/// reading a reproducer.
inline bool tracing() noexcept {
  static const bool trace = std::getenv("GUESTMEM_FUZZ_TRACE") != nullptr;
  return trace;
}

#define GUESTMEM_FUZZ_TRACE(...)            \
  do {                                      \
    if (::guestmem::fuzz::tracing()) {      \
      std::fprintf(stderr, __VA_ARGS__);    \
      std::fprintf(stderr, "\n");           \
    }                                       \
  } while (false)

/// Decodes the fuzzer's bytes, front to back.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

  [[nodiscard]] bool empty() const noexcept { return pos_ >= size_; }

  std::uint8_t u8() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() noexcept {
    return static_cast<std::uint32_t>(u16()) | (static_cast<std::uint32_t>(u16()) << 16);
  }
  std::uint64_t u64() noexcept {
    return static_cast<std::uint64_t>(u32()) | (static_cast<std::uint64_t>(u32()) << 32);
  }
  bool flag() noexcept { return (u8() & 1U) != 0; }

  /// A value in [0, n); n must be at least 1.
  std::uint64_t below(std::uint64_t n) noexcept {
    if (n <= 0x100) {
      return u8() % n;
    }
    if (n <= 0x10000) {
      return u16() % n;
    }
    return u64() % n;
  }

  /// A small signed delta in [-span, span].
  std::int64_t delta(std::int64_t span) noexcept {
    return static_cast<std::int64_t>(below(static_cast<std::uint64_t>(2 * span + 1))) - span;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

/// A region's protection drawn from the input, with the accesses it allows: read-only and
/// write-only each once in `outcomes` draws (at least 3), read-write otherwise.
struct DrawnProtection {
  Protection prot = Protection::read_write();
  Permissions allowed = Permissions::ReadWrite;
};
inline DrawnProtection draw_protection(Input& in, std::uint64_t outcomes) noexcept {
  switch (in.below(outcomes)) {
    case 0:
      return {Protection::read(), Permissions::Read};
    case 1:
      return {Protection::write(), Permissions::Write};
    default:
      return {};
  }
}

/// The byte pattern of the replay format: an LCG whose top byte is each data byte.
inline void fill_pattern(std::span<std::byte> out, std::uint64_t seed) noexcept {
  std::uint64_t s = seed;
  for (auto& b : out) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    b = static_cast<std::byte>(s >> 56);
  }
}

inline std::vector<std::byte> pattern(std::uint64_t seed, std::size_t len) {
  std::vector<std::byte> out(len);
  fill_pattern(out, seed);
  return out;
}

/// FNV-1a 64 of `data`, the replay format's checksum.
inline std::uint64_t fnv1a64(std::span<const std::byte> data) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (std::byte b : data) {
    h ^= static_cast<std::uint64_t>(b);
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace guestmem::fuzz
