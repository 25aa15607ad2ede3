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

// The calling thread's record after its RecordReleaser ran while guards still held it, or
// a record taken after that; null otherwise. Only the slow paths touch it.
thread_local EpochRecord* t_detached_record = nullptr;
// Whether the calling thread's RecordReleaser has run (the thread is exiting).
thread_local bool t_releaser_done = false;

// Makes `record` free for another thread to take. Called by its owner once it holds no guard.
void release_record(EpochRecord* record) noexcept {
  record->state.store(0, std::memory_order_release);
  record->in_use.store(false, std::memory_order_release);
}

// Releases the thread's record when the thread exits, or, if guards still hold it (guards in
// thread_locals destroyed after this one, or in static objects on the main thread, which
// exit() destroys after the thread's thread_locals), detaches it so that the last of them
// releases it. Only touched on the registration path, so the guard fast path never pays for a
// thread_local with a destructor.
struct RecordReleaser {
  EpochRecord* record = nullptr;
  ~RecordReleaser() {
    t_releaser_done = true;
    if (record == nullptr) {
      return;
    }
    t_epoch_record = nullptr;
    if (record->nesting == 0) {
      release_record(record);
    } else {
      // The guards keep announcing their epoch; epoch_exit_detached releases the record.
      t_detached_record = record;
    }
  }
};
thread_local RecordReleaser t_releaser;

// Takes a released record, or allocates one.
EpochRecord* acquire_record() noexcept {
  for (EpochRecord* r = g_records.load(std::memory_order_acquire); r != nullptr; r = r->next) {
    bool free = false;
    if (!r->in_use.load(std::memory_order_relaxed) &&
        r->in_use.compare_exchange_strong(free, true, std::memory_order_acq_rel)) {
      return r;
    }
  }
  auto* record = new EpochRecord;
  record->in_use.store(true, std::memory_order_relaxed);
  EpochRecord* head = g_records.load(std::memory_order_relaxed);
  do {
    record->next = head;
  } while (!g_records.compare_exchange_weak(head, record, std::memory_order_release,
                                            std::memory_order_relaxed));
  return record;
}

struct Retired {
  void* object;
  void (*deleter)(void*);
  std::uint64_t epoch;
};

// What writers retired and reclaimers have not freed yet. Never destroyed: a map whose last
// handle is a static object is retired during static destruction, maybe after this file's
// statics would have been destroyed.
struct RetiredList {
  std::mutex mutex;
  std::vector<Retired> items;  // guarded by mutex
};

RetiredList& retired_list() {
  // A union member is not destroyed with the union, and the empty destructor leaves it be.
  union Storage {
    Storage() : list() {}
    ~Storage() {}
    RetiredList list;
  };
  static Storage storage;
  return storage.list;
}

}  // namespace

EpochRecord* epoch_register_thread() noexcept {
  if (t_detached_record != nullptr) {
    // An exiting thread whose guards still hold its detached record: one more nests.
    return t_detached_record;
  }
  enable_asymmetric_fences();
  EpochRecord* record = acquire_record();
  record->nesting = 0;
  if (t_releaser_done) {
    // The thread is past its RecordReleaser (a guard taken by a later thread_local destructor
    // or a static destructor): the last guard of the section releases the record.
    t_detached_record = record;
    return record;
  }
  t_releaser.record = record;
  t_epoch_record = record;
  return record;
}

void epoch_exit_detached(EpochRecord* record) noexcept {
  GUESTMEM_ASSERT(record == t_detached_record, "a snapshot guard was released on another thread");
  if (--record->nesting == 0) {
    t_detached_record = nullptr;
    release_record(record);
  }
}

void epoch_nest_detached(EpochRecord* record) noexcept {
  GUESTMEM_ASSERT(record == t_detached_record && record->nesting > 0,
                  "a snapshot guard was copied on another thread");
  ++record->nesting;
}

void epoch_retire(void* object, void (*deleter)(void*)) {
  {
    RetiredList& retired = retired_list();
    std::lock_guard lock(retired.mutex);
    retired.items.push_back(Retired{object, deleter, g_epoch.load(std::memory_order_relaxed)});
    // Readers that announce a later epoch started after `object` was unpublished.
    g_epoch.fetch_add(1, std::memory_order_release);
  }
  epoch_reclaim();
}

void epoch_reclaim() {
  std::vector<Retired> ready;
  {
    RetiredList& retired = retired_list();
    std::lock_guard lock(retired.mutex);
    if (retired.items.empty()) {
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
    auto keep = std::partition(retired.items.begin(), retired.items.end(),
                               [&](const Retired& item) { return item.epoch >= oldest; });
    ready.assign(keep, retired.items.end());
    retired.items.erase(keep, retired.items.end());
  }
  // Outside the lock: a deleter may itself retire (a map that owns another).
  for (const Retired& item : ready) {
    item.deleter(item.object);
  }
}

}  // namespace guestmem::detail
