#include "guestmem/detail/epoch.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

namespace guestmem::detail {

std::atomic<std::uint64_t> g_epoch{1};

namespace {

// Every record ever created, newest first; records are only ever added.
std::atomic<EpochRecord*> g_records{nullptr};

// Releases the thread's record when the thread exits. Only touched on the registration
// path, so the guard fast path never pays for a thread_local with a destructor.
struct RecordReleaser {
  EpochRecord* record = nullptr;
  ~RecordReleaser() {
    if (record != nullptr) {
      record->state.store(0, std::memory_order_release);
      record->in_use.store(false, std::memory_order_release);
      t_epoch_record = nullptr;
    }
  }
};
thread_local RecordReleaser t_releaser;

struct Retired {
  void* object;
  void (*deleter)(void*);
  std::uint64_t epoch;
};

std::mutex g_retired_mutex;
std::vector<Retired> g_retired;  // guarded by g_retired_mutex

}  // namespace

EpochRecord* epoch_register_thread() noexcept {
  enable_asymmetric_fences();
  EpochRecord* record = nullptr;
  for (EpochRecord* r = g_records.load(std::memory_order_acquire); r != nullptr; r = r->next) {
    bool free = false;
    if (!r->in_use.load(std::memory_order_relaxed) &&
        r->in_use.compare_exchange_strong(free, true, std::memory_order_acq_rel)) {
      record = r;
      break;
    }
  }
  if (record == nullptr) {
    record = new EpochRecord;
    record->in_use.store(true, std::memory_order_relaxed);
    EpochRecord* head = g_records.load(std::memory_order_relaxed);
    do {
      record->next = head;
    } while (!g_records.compare_exchange_weak(head, record, std::memory_order_release,
                                              std::memory_order_relaxed));
  }
  record->nesting = 0;
  t_releaser.record = record;
  t_epoch_record = record;
  return record;
}

void epoch_retire(void* object, void (*deleter)(void*)) {
  {
    std::lock_guard lock(g_retired_mutex);
    g_retired.push_back(Retired{object, deleter, g_epoch.load(std::memory_order_relaxed)});
    // Readers that announce a later epoch started after `object` was unpublished.
    g_epoch.fetch_add(1, std::memory_order_release);
  }
  epoch_reclaim();
}

void epoch_reclaim() {
  std::vector<Retired> ready;
  {
    std::lock_guard lock(g_retired_mutex);
    if (g_retired.empty()) {
      return;
    }
    // After this, every reader's announcement made before it is visible here, and every
    // reader that announces later loads the pointers published before it.
    heavy_fence();
    std::uint64_t oldest = std::numeric_limits<std::uint64_t>::max();
    for (EpochRecord* r = g_records.load(std::memory_order_acquire); r != nullptr; r = r->next) {
      const std::uint64_t state = r->state.load(std::memory_order_acquire);
      if ((state & 1U) != 0) {
        oldest = std::min(oldest, state >> 1);
      }
    }
    auto keep = std::partition(g_retired.begin(), g_retired.end(),
                               [&](const Retired& item) { return item.epoch >= oldest; });
    ready.assign(keep, g_retired.end());
    g_retired.erase(keep, g_retired.end());
  }
  // Outside the lock: a deleter may itself retire (a map that owns another).
  for (const Retired& item : ready) {
    item.deleter(item.object);
  }
}

}  // namespace guestmem::detail
