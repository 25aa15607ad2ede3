// guestmem: a memory map that changes (hot-plug) while devices use it.
//
// `GuestAddressSpace` is what a device keeps instead of a memory: something whose `memory()`
// gives a consistent snapshot of the map for the duration of one operation. Three kinds:
// - `GuestMemoryAtomic<M>`: a map that a single writer replaces while readers work.
//   `memory()` returns a guard; the map it shows stays alive and unchanged until the guard
//   is gone, even if the writer replaces it meanwhile. Readers never block, never take a
//   lock and execute no atomic read-modify-write or fence: a guard costs a thread-local
//   load, a nesting count and, for the outermost guard of a thread, one store, however
//   many guards the thread holds (epoch-based reclamation, detail/epoch.hpp).
// - `SharedAddressSpace<M>`: an immutable map shared through std::shared_ptr.
// - `RefAddressSpace<M>`: an immutable map the caller keeps alive.
//
//   GuestMemoryAtomic<GuestMemoryMmap<>> space(std::move(*mem));
//   {
//     auto guard = space.memory();                     // a snapshot
//     guard->read_obj<std::uint64_t>(GuestAddress{0x1000});
//   }
//   auto writer = space.lock();                        // the single writer
//   writer.replace(*writer.memory()->insert_region(region));
#pragma once

#include <concepts>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>

#include "guestmem/concepts.hpp"
#include "guestmem/detail/epoch.hpp"

namespace guestmem {

/// A snapshot of a GuestMemoryAtomic's map: dereferences to the map, which stays alive and
/// unchanged while the guard (or a copy of it) exists.
/// Validity: the guard and its copies belong to the thread that created them: copying or
/// destroying one on another thread aborts. A guard kept in a thread_local (a per-thread
/// device context) or, on the main thread, in a static object stays valid until it is
/// destroyed, even when that happens after the thread's other thread_locals are gone. Keep
/// guards for one operation; a guard held for long keeps every map replaced since it was
/// taken alive.
template <class M>
class GuestMemoryGuard {
 public:
  /// Another guard of the same map, on the same thread (aborts on another). Keeps the map alive as
  /// long as either guard lives.
  GuestMemoryGuard(const GuestMemoryGuard& other) noexcept
      : record_(other.record_), map_(other.map_) {
    detail::epoch_nest(record_);
  }
  /// Guards the map `other` guards instead; on the thread that made both (aborts otherwise).
  GuestMemoryGuard& operator=(const GuestMemoryGuard& other) noexcept {
    if (this != &other) {
      detail::epoch_nest(other.record_);
      detail::epoch_exit(record_);
      record_ = other.record_;
      map_ = other.map_;
    }
    return *this;
  }
  ~GuestMemoryGuard() { detail::epoch_exit(record_); }

  /// The map. Validity: while this guard (or a copy of it) lives.
  [[nodiscard]] const M& operator*() const noexcept { return *map_; }
  /// The map's members. Validity: while this guard (or a copy of it) lives.
  [[nodiscard]] const M* operator->() const noexcept { return map_; }
  /// The map, never null. Validity: while this guard (or a copy of it) lives.
  [[nodiscard]] const M* get() const noexcept { return map_; }

 private:
  template <class>
  friend class GuestMemoryAtomic;

  GuestMemoryGuard(detail::EpochRecord* record, const M* map) noexcept
      : record_(record), map_(map) {}

  detail::EpochRecord* record_;
  const M* map_;
};

/// A map that a single writer replaces while readers use it. Copies share the same map
/// (give each device a copy).
template <class M>
class GuestMemoryAtomic {
 public:
  /// Publishes `map`.
  explicit GuestMemoryAtomic(M map) : state_(std::make_shared<State>(std::move(map))) {}

  /// A snapshot of the current map. Never waits for a writer or takes a lock. A thread's
  /// first guard registers the thread once (a record from a list, allocated if none is free,
  /// and at most one membarrier registration per process); running out of memory there
  /// aborts.
  /// Validity: see GuestMemoryGuard.
  [[nodiscard]] GUESTMEM_ALWAYS_INLINE GuestMemoryGuard<M> memory() const noexcept {
    detail::EpochRecord* record = detail::epoch_enter();
    return GuestMemoryGuard<M>(record, state_->current.load(std::memory_order_acquire));
  }

  /// The writer's handle: holds the writer lock until destroyed.
  class Writer {
   public:
    /// A snapshot of the current map (the one replace() would replace).
    [[nodiscard]] GuestMemoryGuard<M> memory() const noexcept { return owner_->memory(); }

    /// Publishes `map`. Readers that already hold a guard keep seeing the old map; the old
    /// map is destroyed once no guard can see it (maybe later, by another writer's call or
    /// reclaim()). Errors: none but std::bad_alloc when memory runs out: for the new map,
    /// thrown before anything changes; for the old map's retirement record, after `map` is
    /// published, and the old map is then never freed (never freed early).
    void replace(M map) {
      const M* old = owner_->state_->current.exchange(new M(std::move(map)),
                                                      std::memory_order_acq_rel);
      detail::epoch_retire(const_cast<M*>(old), [](void* p) { delete static_cast<M*>(p); });
    }

   private:
    friend class GuestMemoryAtomic;
    explicit Writer(const GuestMemoryAtomic* owner)
        : owner_(owner), lock_(owner->state_->writer) {}

    const GuestMemoryAtomic* owner_;
    std::unique_lock<std::mutex> lock_;
  };

  /// The single writer's handle; blocks while another writer holds one. Readers are never
  /// blocked by it.
  [[nodiscard]] Writer lock() const { return Writer(this); }

  /// Destroys the maps replaced earlier (here or in any other GuestMemoryAtomic) that no guard
  /// can see any more. replace() does this on its own, but a map replaced while a guard held
  /// it waits for the next replace(): after a hot-unplug, call this once the guards of that
  /// time are gone to unmap the removed region now. Blocks only other writers and reclaimers.
  static void reclaim() { detail::epoch_reclaim(); }

 private:
  struct State {
    explicit State(M map) : current(new M(std::move(map))) {}
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
      // Guards may outlive the last handle: retire rather than delete.
      detail::epoch_retire(const_cast<M*>(current.load(std::memory_order_acquire)),
                           [](void* p) { delete static_cast<M*>(p); });
    }

    std::atomic<const M*> current;
    std::mutex writer;
  };

  std::shared_ptr<State> state_;
};

/// An immutable map shared through std::shared_ptr (vm-memory's Arc<M> address space).
template <class M>
class SharedAddressSpace {
 public:
  /// The space of `map`, which it shares.
  explicit SharedAddressSpace(std::shared_ptr<const M> map) noexcept : map_(std::move(map)) {}
  /// The map (its shared owner). Validity: as long as the returned pointer is kept.
  [[nodiscard]] std::shared_ptr<const M> memory() const noexcept { return map_; }

 private:
  std::shared_ptr<const M> map_;
};

/// An immutable map that the caller keeps alive (vm-memory's &M address space).
template <class M>
class RefAddressSpace {
 public:
  /// The space of `map`. Preconditions: `map` outlives the space and every pointer from memory().
  explicit RefAddressSpace(const M& map) noexcept : map_(&map) {}
  /// The map. Validity: as long as the map the space was made from.
  [[nodiscard]] const M* memory() const noexcept { return map_; }

 private:
  const M* map_;
};

/// The memory an address space gives snapshots of.
template <class AS>
using address_space_memory_t =
    std::remove_cvref_t<decltype(*std::declval<const AS&>().memory())>;

/// Something a device keeps to reach guest memory whose map may change: `memory()` returns a
/// copyable snapshot that dereferences to a GuestMemory.
template <class AS>
concept GuestAddressSpace = std::copyable<AS> && requires(const AS& space) {
  { space.memory() } -> std::copyable;
  { *space.memory() } -> std::convertible_to<const address_space_memory_t<AS>&>;
} && GuestMemory<address_space_memory_t<AS>>;

}  // namespace guestmem
