#include "guestmem/detail/asymmetric_fence.hpp"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <mutex>

namespace guestmem::detail {

std::atomic<bool> g_light_fence_is_free{false};
#if defined(GUESTMEM_TSAN)
std::atomic<std::uint64_t> g_tsan_fence_word{0};
#endif

namespace {

long membarrier(int command) noexcept { return ::syscall(SYS_membarrier, command, 0, 0); }

}  // namespace

void enable_asymmetric_fences() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    const long supported = membarrier(MEMBARRIER_CMD_QUERY);
    if (supported < 0 || (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) {
      return;
    }
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0) {
      g_light_fence_is_free.store(true, std::memory_order_release);
    }
  });
}

void heavy_fence() noexcept {
#if defined(GUESTMEM_TSAN)
  g_tsan_fence_word.fetch_add(0, std::memory_order_seq_cst);
#else
  if (g_light_fence_is_free.load(std::memory_order_acquire)) {
    // Registered, so the command cannot fail with EPERM; it has no other failure mode once
    // the query succeeded.
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace guestmem::detail
