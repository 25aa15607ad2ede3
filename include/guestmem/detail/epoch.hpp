// guestmem: epoch-based reclamation, for maps that readers use while a writer replaces them.
//
// Every thread that reads has a record. A reader announces the epoch it starts in (one
// relaxed store, only for its outermost guard) and clears the announcement when its last
// guard goes; nested guards only count. A writer retires what it replaced with the current
// epoch, advances the epoch, and frees what no reader can still see: everything retired
// before the oldest epoch announced. The reader's store-then-load against the writer's
// exchange-then-scan is ordered by an asymmetric fence (detail/asymmetric_fence.hpp), so
// readers execute no fence, no read-modify-write and no lock.
//
// Records are never freed. A thread's record is released for reuse when the thread exits
// and its last guard is gone, whichever comes last: a guard kept in a thread_local built
// before the thread's first guard, or in a static object on the main thread, is destroyed
// after the thread's own release step ran. That step then only detaches the record from the
// hot path (the thread's guards keep announcing their epoch), and the last guard released on
// the thread releases the record itself, on the slow path the detachment routes it to.
#pragma once

#include <atomic>
#include <cstdint>

#include "guestmem/detail/asymmetric_fence.hpp"
#include "guestmem/detail/config.hpp"

namespace guestmem::detail {

struct EpochRecord {
  // 0 while the owner reads nothing; otherwise (epoch << 1) | 1.
  std::atomic<std::uint64_t> state{0};
  // Guards the owner holds; only the owner touches it.
  std::uint32_t nesting = 0;
  // Whether a live thread owns the record.
  std::atomic<bool> in_use{false};
  EpochRecord* next = nullptr;
};

// The current epoch (advanced by writers).
GUESTMEM_API extern std::atomic<std::uint64_t> g_epoch;
// This thread's record, or null before its first guard and once the thread's exit detached
// the record (see epoch_register_thread).
GUESTMEM_API inline thread_local EpochRecord* t_epoch_record = nullptr;

// Gives the calling thread a record (reusing a released one when it can) and arranges its
// release at thread exit. The first guard of each thread calls it; it allocates at most once.
// On a thread whose exit already detached its record, it returns that record while guards
// hold it, and otherwise a record that the thread's last guard releases.
[[gnu::noinline]] GUESTMEM_API EpochRecord* epoch_register_thread() noexcept;

// epoch_exit and epoch_nest for a record that is not t_epoch_record: the calling thread's
// detached record, or a guard used on the wrong thread (which aborts).
[[gnu::noinline]] GUESTMEM_API void epoch_exit_detached(EpochRecord* record) noexcept;
[[gnu::noinline]] GUESTMEM_API void epoch_nest_detached(EpochRecord* record) noexcept;

// Starts (or nests) a read-side section on this thread and returns its record.
GUESTMEM_ALWAYS_INLINE EpochRecord* epoch_enter() noexcept {
  EpochRecord* record = t_epoch_record;
  if (record == nullptr) [[unlikely]] {
    record = epoch_register_thread();
  }
  if (record->nesting++ == 0) {
    record->state.store((g_epoch.load(std::memory_order_acquire) << 1) | 1U,
                        std::memory_order_relaxed);
    // The announcement must be visible before the pointer load that follows.
    light_fence();
  }
  return record;
}

// Ends one nesting level of the section `record` was returned for.
// Preconditions: called on the thread that entered (aborts otherwise).
GUESTMEM_ALWAYS_INLINE void epoch_exit(EpochRecord* record) noexcept {
  // The same comparison that checks the thread also sends a detached record to the slow path,
  // so the hot path costs what it did before records could be detached.
  if (record != t_epoch_record) [[unlikely]] {
    epoch_exit_detached(record);
    return;
  }
  if (--record->nesting == 0) {
    record->state.store(0, std::memory_order_release);
  }
}

// Adds one more nesting level to the calling thread's current section (guard copies).
// Preconditions: the thread holds a section on `record` (aborts otherwise).
GUESTMEM_ALWAYS_INLINE void epoch_nest(EpochRecord* record) noexcept {
  if (record != t_epoch_record || record->nesting == 0) [[unlikely]] {
    epoch_nest_detached(record);
    return;
  }
  ++record->nesting;
}

// Schedules `deleter(object)` for when no read-side section that could see `object` is
// left, then frees what it can. Writers call it after unpublishing `object`.
GUESTMEM_API void epoch_retire(void* object, void (*deleter)(void*));

// Frees every retired object that no read-side section can see any more.
GUESTMEM_API void epoch_reclaim();

}  // namespace guestmem::detail
