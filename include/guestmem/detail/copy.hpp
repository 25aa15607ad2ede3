// guestmem: the raw copy primitives every container uses, so that the access rules of
// docs/DESIGN.md ("Copies and tearing") live in one place.
//
// - A copy of 1, 2, 4 or 8 bytes whose guest side is naturally aligned is one access: a
//   concurrent guest sees all of the old value or all of the new one, never a mix.
// - Longer or unaligned copies use memcpy and may be split into any number of accesses.
// - Under ThreadSanitizer every guest access is a relaxed atomic, because guest memory is
//   shared with a concurrently running guest by design and those races are not bugs.
//
// Preconditions for all functions: the guest pointer is valid for `len` bytes for the whole
// call (the caller holds a view that proves it) and the host buffer does not overlap guest
// memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>

#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/config.hpp"

namespace guestmem::detail {

/// The unsigned integer of `N` bytes (1, 2, 4 or 8).
template <std::size_t N>
using UintOfSize = std::conditional_t<
    N == 1, std::uint8_t,
    std::conditional_t<N == 2, std::uint16_t,
                       std::conditional_t<N == 4, std::uint32_t, std::uint64_t>>>;

[[nodiscard]] inline bool is_aligned(const void* pointer, std::size_t alignment) noexcept {
  return (reinterpret_cast<std::uintptr_t>(pointer) & (alignment - 1)) == 0;
}

template <class U>
[[nodiscard]] inline U load_relaxed(const std::uint8_t* src) noexcept {
  // SAFETY: the caller guarantees `src` is valid for sizeof(U) bytes and U-aligned.
  return __atomic_load_n(reinterpret_cast<const U*>(src), __ATOMIC_RELAXED);
}

template <class U>
inline void store_relaxed(std::uint8_t* dst, U value) noexcept {
  // SAFETY: the caller guarantees `dst` is valid for sizeof(U) bytes and U-aligned.
  __atomic_store_n(reinterpret_cast<U*>(dst), value, __ATOMIC_RELAXED);
}

// Copies len bytes, kChunk <= len <= kMax, as two chunks of the smallest power-of-two size
// kC >= kChunk with 2 * kC >= len: one that starts at 0 and one that ends at `len`, which
// overlap unless len is 2 * kC. GCC turns each fixed-size memcpy into vector moves.
// Preconditions: as copy_small's.
template <std::size_t kChunk, std::size_t kMax>
inline void copy_ends(std::byte* dst, const std::byte* src, std::size_t len) noexcept {
  if constexpr (2 * kChunk < kMax) {
    if (len > 2 * kChunk) {
      copy_ends<2 * kChunk, kMax>(dst, src, len);
      return;
    }
  }
  // SAFETY: kChunk <= len, so both chunks lie inside [0, len), valid in both ranges.
  std::memcpy(dst, src, kChunk);
  std::memcpy(dst + len - kChunk, src + len - kChunk, kChunk);
}

// Copies len <= kMax <= 256 bytes inline, for sizes only known at run time (a piece of an
// object that crosses into the next region): two chunks, one at each end, of 16, 32, 64 or
// 128 bytes (copy_ends) from 16 bytes on, and of 8, 4 or 2 bytes below. The chunks may copy
// some bytes twice, as memcpy itself does: the copies that get here have no single-access
// promise (read_guest and write_guest take aligned copies of 1, 2, 4 and 8 bytes first;
// docs/DESIGN.md, "Copies and tearing"). No loop, and at most five branches for any length.
// Preconditions: both ranges are valid for `len` bytes and disjoint, and len <= kMax.
template <std::size_t kMax>
inline void copy_small(std::byte* dst, const std::byte* src, std::size_t len) noexcept {
  // SAFETY (every copy below): each chunk lies inside [0, len), and both ranges are valid
  // for `len` bytes (the preconditions).
  if constexpr (kMax >= 16) {
    if (len >= 16) {
      copy_ends<16, kMax>(dst, src, len);
      return;
    }
  }
  if constexpr (kMax >= 8) {
    if (len >= 8) {
      std::memcpy(dst, src, 8);
      std::memcpy(dst + len - 8, src + len - 8, 8);
      return;
    }
  }
  if constexpr (kMax >= 4) {
    if (len >= 4) {
      std::memcpy(dst, src, 4);
      std::memcpy(dst + len - 4, src + len - 4, 4);
      return;
    }
  }
  if constexpr (kMax >= 2) {
    if (len >= 2) {
      std::memcpy(dst, src, 2);
      std::memcpy(dst + len - 2, src + len - 2, 2);
      return;
    }
  }
  if (len == 1) {
    dst[0] = src[0];
  }
}

// memcpy without its two costly forms: GCC expands a copy whose size it knows as vector
// moves up to 256 bytes but as `rep movsq` above, which on some CPUs costs five times the
// library memcpy (11.5 ns against 4.7 ns for 512 bytes on the AMD EPYC of docs/PERFORMANCE.md);
// and a call costs more than the copy for a few bytes. `kMax` is a static bound on `len`.
template <std::size_t kMax>
inline void copy_bytes(void* dst, const void* src, std::size_t len) noexcept {
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  if (__builtin_constant_p(len) && len <= 256) {
    // SAFETY: the callers guarantee both ranges are valid for `len` bytes and disjoint.
    std::memcpy(d, s, len);
  } else if constexpr (kMax <= 256) {
    copy_small<kMax>(d, s, len);
  } else {
    asm("" : "+r"(len));  // hide the size from the optimizer: always the library memcpy
    // SAFETY: as above.
    std::memcpy(d, s, len);
  }
}

template <std::size_t kMax>
inline void bulk_read(std::byte* dst, const std::uint8_t* src, std::size_t len) noexcept {
#if defined(GUESTMEM_TSAN)
  for (std::size_t i = 0; i < len; ++i) {
    dst[i] = std::byte{load_relaxed<std::uint8_t>(src + i)};
  }
#else
  copy_bytes<kMax>(dst, src, len);
#endif
}

template <std::size_t kMax>
inline void bulk_write(std::uint8_t* dst, const std::byte* src, std::size_t len) noexcept {
#if defined(GUESTMEM_TSAN)
  for (std::size_t i = 0; i < len; ++i) {
    store_relaxed<std::uint8_t>(dst + i, static_cast<std::uint8_t>(src[i]));
  }
#else
  copy_bytes<kMax>(dst, src, len);
#endif
}

/// Copies `len` bytes of guest memory at `src` into the host buffer `dst`. `kMax` is a bound
/// on `len` known at compile time (an object's size), which drops impossible cases.
template <std::size_t kMax = std::dynamic_extent>
inline void read_guest(std::byte* dst, const std::uint8_t* src, std::size_t len) noexcept {
  if (len > kMax) {
    std::unreachable();  // Preconditions: len <= kMax (the callers' buffers are that long).
  }
  if constexpr (kMax > 8 && kMax <= 256) {
    if (len > 8) {  // never a single access: one test for a piece of a longer object
      bulk_read<kMax>(dst, src, len);
      return;
    }
  }
  if constexpr (kMax >= 8) {
    if (len == 8 && is_aligned(src, 8)) {
      const auto value = load_relaxed<std::uint64_t>(src);
      std::memcpy(dst, &value, 8);
      return;
    }
  }
  if constexpr (kMax >= 4) {
    if (len == 4 && is_aligned(src, 4)) {
      const auto value = load_relaxed<std::uint32_t>(src);
      std::memcpy(dst, &value, 4);
      return;
    }
  }
  if constexpr (kMax >= 2) {
    if (len == 2 && is_aligned(src, 2)) {
      const auto value = load_relaxed<std::uint16_t>(src);
      std::memcpy(dst, &value, 2);
      return;
    }
  }
  if (len == 1) {
    dst[0] = std::byte{load_relaxed<std::uint8_t>(src)};
    return;
  }
  bulk_read<kMax>(dst, src, len);
}

/// Copies `len` bytes of the host buffer `src` into guest memory at `dst`; `kMax` as in
/// read_guest.
template <std::size_t kMax = std::dynamic_extent>
inline void write_guest(std::uint8_t* dst, const std::byte* src, std::size_t len) noexcept {
  if (len > kMax) {
    std::unreachable();  // Preconditions: len <= kMax (the callers' buffers are that long).
  }
  if constexpr (kMax > 8 && kMax <= 256) {
    if (len > 8) {  // never a single access: one test for a piece of a longer object
      bulk_write<kMax>(dst, src, len);
      return;
    }
  }
  if constexpr (kMax >= 8) {
    if (len == 8 && is_aligned(dst, 8)) {
      std::uint64_t value;
      std::memcpy(&value, src, 8);
      store_relaxed(dst, value);
      return;
    }
  }
  if constexpr (kMax >= 4) {
    if (len == 4 && is_aligned(dst, 4)) {
      std::uint32_t value;
      std::memcpy(&value, src, 4);
      store_relaxed(dst, value);
      return;
    }
  }
  if constexpr (kMax >= 2) {
    if (len == 2 && is_aligned(dst, 2)) {
      std::uint16_t value;
      std::memcpy(&value, src, 2);
      store_relaxed(dst, value);
      return;
    }
  }
  if (len == 1) {
    store_relaxed(dst, static_cast<std::uint8_t>(src[0]));
    return;
  }
  bulk_write<kMax>(dst, src, len);
}

/// Copies `len` bytes between two guest ranges, which may overlap.
inline void copy_guest(std::uint8_t* dst, const std::uint8_t* src, std::size_t len) noexcept {
  if ((len == 1 || len == 2 || len == 4 || len == 8) && is_aligned(dst, len) &&
      is_aligned(src, len)) {
    switch (len) {
      case 1:
        store_relaxed(dst, load_relaxed<std::uint8_t>(src));
        return;
      case 2:
        store_relaxed(dst, load_relaxed<std::uint16_t>(src));
        return;
      case 4:
        store_relaxed(dst, load_relaxed<std::uint32_t>(src));
        return;
      default:
        store_relaxed(dst, load_relaxed<std::uint64_t>(src));
        return;
    }
  }
#if defined(GUESTMEM_TSAN)
  if (dst <= src || dst >= src + len) {
    for (std::size_t i = 0; i < len; ++i) {
      store_relaxed(dst + i, load_relaxed<std::uint8_t>(src + i));
    }
  } else {
    for (std::size_t i = len; i > 0; --i) {
      store_relaxed(dst + i - 1, load_relaxed<std::uint8_t>(src + i - 1));
    }
  }
#else
  // SAFETY: the caller guarantees both ranges are valid for `len` bytes; memmove allows overlap.
  std::memmove(dst, src, len);
#endif
}

[[nodiscard]] constexpr bool valid_load_order(std::memory_order order) noexcept {
  return order == std::memory_order_relaxed || order == std::memory_order_consume ||
         order == std::memory_order_acquire || order == std::memory_order_seq_cst;
}

[[nodiscard]] constexpr bool valid_store_order(std::memory_order order) noexcept {
  return order == std::memory_order_relaxed || order == std::memory_order_release ||
         order == std::memory_order_seq_cst;
}

/// An atomic load of a naturally aligned `T`.
/// Preconditions: `src` is valid and aligned for `T`; `order` is a load order (aborts otherwise).
template <AtomicAccess T>
[[nodiscard]] inline T atomic_load(const std::uint8_t* src, std::memory_order order) noexcept {
  GUESTMEM_ASSERT(valid_load_order(order), "load with a release or acq_rel memory order");
  // SAFETY: the caller guarantees `src` is valid for and aligned to sizeof(T).
  auto& object = *reinterpret_cast<T*>(const_cast<std::uint8_t*>(src));
  return std::atomic_ref<T>(object).load(order);
}

/// An atomic store of a naturally aligned `T`.
/// Preconditions: `dst` is valid and aligned for `T`; `order` is a store order (aborts
/// otherwise).
template <AtomicAccess T>
inline void atomic_store(std::uint8_t* dst, T value, std::memory_order order) noexcept {
  GUESTMEM_ASSERT(valid_store_order(order), "store with an acquire, consume or acq_rel order");
  // SAFETY: the caller guarantees `dst` is valid for and aligned to sizeof(T).
  auto& object = *reinterpret_cast<T*>(dst);
  std::atomic_ref<T>(object).store(value, order);
}

}  // namespace guestmem::detail
