// guestmem: asymmetric fences, for protocols with a frequent side and a rare side.
//
// Dirty marking (every guest write) and snapshot guards (every device access) must not pay
// for a full memory fence; bitmap resets and map reclamation are rare. The frequent side
// calls light_fence(), which is only a compiler barrier; the rare side calls heavy_fence(),
// a membarrier(2) (MEMBARRIER_CMD_PRIVATE_EXPEDITED) that makes every running thread of the
// process execute a full memory barrier. Together they order a store before a load on each
// side (the store-load case, which release/acquire cannot order): after heavy_fence returns,
// either the light side's store is visible to the heavy side, or the light side's later load
// sees the heavy side's earlier store.
//
// Where membarrier is unavailable (old kernels, seccomp filters), light_fence() falls back
// to a full fence and heavy_fence() becomes one too, so the protocol stays correct. Under
// ThreadSanitizer, which models neither fences nor membarrier, both sides instead do a
// sequentially consistent read-modify-write of one shared word: it orders the same pairs and
// is something the sanitizer understands.
#pragma once

#include <atomic>
#include <cstdint>

#include "guestmem/detail/config.hpp"

namespace guestmem::detail {

/// True once membarrier is registered for this process; light fences are then compiler
/// barriers. Set once, by enable_asymmetric_fences(), before the objects that rely on it are
/// shared with other threads.
GUESTMEM_API extern std::atomic<bool> g_light_fence_is_free;

/// Registers the process for expedited membarriers (idempotent, thread-safe). Called by the
/// constructors of the types that use asymmetric fences.
GUESTMEM_API void enable_asymmetric_fences() noexcept;

#if defined(GUESTMEM_TSAN)
GUESTMEM_API extern std::atomic<std::uint64_t> g_tsan_fence_word;
#endif

/// The frequent side: a compiler barrier, or a full fence without membarrier.
GUESTMEM_ALWAYS_INLINE void light_fence() noexcept {
#if defined(GUESTMEM_TSAN)
  g_tsan_fence_word.fetch_add(0, std::memory_order_seq_cst);
#else
  if (g_light_fence_is_free.load(std::memory_order_relaxed)) [[likely]] {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
#endif
}

/// The rare side: a full barrier on every running thread of the process (a system call).
GUESTMEM_API void heavy_fence() noexcept;

}  // namespace guestmem::detail
