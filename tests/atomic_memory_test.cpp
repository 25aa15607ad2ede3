#include "guestmem/atomic_memory.hpp"

#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/guest_memory.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

// A map that counts how many of its kind are alive, to see when replaced maps are freed.
struct Counted {
  static inline std::atomic<int> alive{0};
  explicit Counted(int v) : value(v) { alive.fetch_add(1); }
  Counted(const Counted& other) : value(other.value) { alive.fetch_add(1); }
  Counted(Counted&& other) noexcept : value(other.value) { alive.fetch_add(1); }
  ~Counted() { alive.fetch_sub(1); }
  int value;
};

TEST(GuestMemoryAtomic, AGuardKeepsItsSnapshotAcrossReplace) {
  const int before = Counted::alive.load();
  {
    GuestMemoryAtomic<Counted> space(Counted{1});
    auto guard = space.memory();
    EXPECT_EQ(guard->value, 1);
    space.lock().replace(Counted{2});
    EXPECT_EQ(guard->value, 1) << "the snapshot does not change under its guard";
    EXPECT_EQ(space.memory()->value, 2);
    EXPECT_EQ(Counted::alive.load(), before + 2) << "the old map lives while a guard sees it";
    {
      auto copy = guard;  // nested on the same thread
      EXPECT_EQ(copy->value, 1);
    }
    EXPECT_EQ(guard->value, 1);
  }
  // The last guard is gone; the next reclamation frees what was retired.
  GuestMemoryAtomic<Counted>::reclaim();
  EXPECT_EQ(Counted::alive.load(), before);
}

TEST(GuestMemoryAtomic, ReclaimFreesAMapReplacedUnderAGuard) {
  const int before = Counted::alive.load();
  GuestMemoryAtomic<Counted> space(Counted{1});
  {
    auto guard = space.memory();
    space.lock().replace(Counted{2});
  }
  EXPECT_EQ(Counted::alive.load(), before + 2) << "replace() could not free what a guard saw";
  space.reclaim();
  EXPECT_EQ(Counted::alive.load(), before + 1) << "reclaim() did, once the guard was gone";
  EXPECT_EQ(space.memory()->value, 2);
}

TEST(GuestMemoryAtomic, ReplacedMapsAreFreedOnceNoGuardSeesThem) {
  const int before = Counted::alive.load();
  GuestMemoryAtomic<Counted> space(Counted{0});
  for (int i = 1; i <= 100; ++i) {
    space.lock().replace(Counted{i});
  }
  space.reclaim();
  EXPECT_EQ(Counted::alive.load(), before + 1) << "only the current map is left";
  EXPECT_EQ(space.memory()->value, 100);
}

TEST(GuestMemoryAtomic, ReadersDoNotWaitForTheWriter) {
  GuestMemoryAtomic<Counted> space(Counted{7});
  auto writer = space.lock();  // the writer lock is held for the whole test
  auto reader = std::async(std::launch::async, [&] { return space.memory()->value; });
  ASSERT_EQ(reader.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(reader.get(), 7);
  writer.replace(Counted{8});
  EXPECT_EQ(writer.memory()->value, 8);
}

TEST(GuestMemoryAtomic, CopiesShareTheMap) {
  GuestMemoryAtomic<Counted> a(Counted{1});
  GuestMemoryAtomic<Counted> b = a;
  a.lock().replace(Counted{5});
  EXPECT_EQ(b.memory()->value, 5);
}

TEST(GuestMemoryAtomicDeathTest, AGuardBelongsToItsThread) {
  GuestMemoryAtomic<Counted> space(Counted{1});
  EXPECT_DEATH(
      {
        auto guard = std::make_unique<GuestMemoryGuard<Counted>>(space.memory());
        std::thread([&] { guard.reset(); }).join();
      },
      "released on another thread");
}

// A map that records its destruction in a flag, to see whether it was freed while a guard
// still held it.
struct Witness {
  Witness(int v, std::atomic<bool>* freed_flag) : value(v), freed(freed_flag) {}
  Witness(Witness&& other) noexcept
      : value(other.value), freed(std::exchange(other.freed, nullptr)) {}
  Witness& operator=(Witness&&) = delete;
  ~Witness() {
    if (freed != nullptr) {
      freed->store(true);
    }
  }
  int value;
  std::atomic<bool>* freed;
};

// What a device thread's thread-local context and the main thread of
// AThreadLocalGuardOutlivesTheThreadsRecord share.
struct ThreadExit {
  // 1 once the context's destructor runs, 2 once the main thread replaced the map.
  std::atomic<int> phase{0};
  // Set by the first map's destructor.
  std::atomic<bool> first_map_freed{false};
  // What the context's destructor saw through its guard.
  std::atomic<bool> freed_under_guard{false};
  std::atomic<int> value_seen{0};
  std::atomic<int> value_seen_through_copy{0};
};
ThreadExit g_thread_exit;

// A device's per-thread context that keeps a snapshot between calls and drops it when the
// thread exits. Built before the thread's first guard, so the thread destroys it after
// whatever that guard set up.
struct DeviceContext {
  std::optional<GuestMemoryGuard<Witness>> guard;
  ~DeviceContext() {
    if (!guard.has_value()) {
      return;
    }
    g_thread_exit.phase.store(1);
    g_thread_exit.phase.notify_all();
    while (g_thread_exit.phase.load() != 2) {
      g_thread_exit.phase.wait(1);
    }
    g_thread_exit.freed_under_guard.store(g_thread_exit.first_map_freed.load());
    if (g_thread_exit.freed_under_guard.load()) {
      std::fputs("the map was freed under a live guard\n", stderr);
    }
    // Reads freed memory if the map was freed (ASan reports it).
    g_thread_exit.value_seen.store((*guard)->value);
    // A copy nests on the same record; the map must live until the copy is gone too.
    GuestMemoryGuard<Witness> copy = *guard;
    guard.reset();
    g_thread_exit.value_seen_through_copy.store(copy->value);
  }
};

DeviceContext& device_context() {
  thread_local DeviceContext context;
  return context;
}

// A guard held by a thread_local that the thread destroys after the thread's own epoch
// bookkeeping still protects its map: a writer that replaces the map and reclaims while the
// guard lives must not free it. Run in a child process: before the record outlived such
// guards, the child aborted ("released on another thread") or freed the map under the guard.
TEST(GuestMemoryAtomicDeathTest, AThreadLocalGuardOutlivesTheThreadsRecord) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        GuestMemoryAtomic<Witness> space(Witness{1, &g_thread_exit.first_map_freed});
        std::thread device([&] {
          static_cast<void>(device_context());  // built first, as a device sets up its thread
          device_context().guard.emplace(space.memory());  // the thread's first guard
        });
        while (g_thread_exit.phase.load() != 1) {
          g_thread_exit.phase.wait(0);
        }
        // The device thread is exiting and its context still holds the guard.
        space.lock().replace(Witness{2, nullptr});
        GuestMemoryAtomic<Witness>::reclaim();
        g_thread_exit.phase.store(2);
        g_thread_exit.phase.notify_all();
        device.join();
        int code = 0;
        if (g_thread_exit.freed_under_guard.load()) {
          code = 1;
        } else if (g_thread_exit.value_seen.load() != 1 ||
                   g_thread_exit.value_seen_through_copy.load() != 1) {
          std::fprintf(stderr, "the guard saw %d, its copy %d\n", g_thread_exit.value_seen.load(),
                       g_thread_exit.value_seen_through_copy.load());
          code = 2;
        } else {
          // The last guard is gone, and with it the thread's announcement.
          GuestMemoryAtomic<Witness>::reclaim();
          if (!g_thread_exit.first_map_freed.load()) {
            std::fputs("the map outlived its last guard\n", stderr);
            code = 3;
          }
        }
        std::fflush(stderr);
        ::_exit(code);
      },
      ::testing::ExitedWithCode(0), "");
}

// A static object that holds a snapshot until static destruction, which on the main thread
// comes after the thread's thread_locals are destroyed: the process still exits cleanly.
TEST(GuestMemoryAtomicDeathTest, AStaticGuardAtExitExitsCleanly) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        struct Holder {
          GuestMemoryAtomic<Counted> space{Counted{1}};
          GuestMemoryGuard<Counted> guard = space.memory();
        };
        static Holder holder;
        std::exit(holder.guard->value == 1 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

// Device code written once against GuestAddressSpace.
template <GuestAddressSpace AS>
Result<std::uint32_t> bump(const AS& space, GuestAddress counter) {
  auto mem = space.memory();
  auto value = mem->template load<std::uint32_t>(counter, std::memory_order_acquire);
  if (!value) {
    return value;
  }
  if (auto r = mem->store(*value + 1, counter, std::memory_order_release); !r) {
    return std::unexpected(r.error());
  }
  return *value + 1;
}

TEST(GuestAddressSpace, DeviceCodeRunsOnEveryKind) {
  auto built = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x1000}});
  ASSERT_TRUE(built.has_value());
  auto shared = std::make_shared<const GuestMemoryMmap<>>(*built);
  EXPECT_EQ(bump(RefAddressSpace(*shared), GuestAddress{0x10}), 1u);
  EXPECT_EQ(bump(SharedAddressSpace(shared), GuestAddress{0x10}), 2u);
  GuestMemoryAtomic<GuestMemoryMmap<>> atomic(*shared);
  EXPECT_EQ(bump(atomic, GuestAddress{0x10}), 3u) << "all three see the same regions";
  EXPECT_EQ(bump(atomic, GuestAddress{0x2000}).error(),
            Error::invalid_guest_address(GuestAddress{0x2000}));
}

// Two writers hot-plug regions in and out of the map while readers read through guards.
// Every region instance holds its own tag in every 8-byte word: its slot and a number no
// other instance has. A read must return the tag of a region at that slot, and all reads of
// one slot through one guard the same instance's tag: the snapshot a guard holds never
// changes, even while the writers replace the map, and a region it holds is never unmapped
// and replaced by another (a read from an unmapped region would crash, or be reported by
// ASan/TSan).
TEST(GuestMemoryAtomicStress, HotPlugUnderReaders) {
  constexpr std::uint64_t kSlot = 0x10000;
  constexpr int kSlots = 8;
  constexpr unsigned kSlotBits = 16;
  std::atomic<std::uint64_t> instances{0};
  auto make_region = [&](std::uint64_t base) {
    auto mapping = MmapRegion<>::create(kSlot);
    EXPECT_TRUE(mapping.has_value());
    auto region = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{base});
    EXPECT_TRUE(region.has_value());
    const std::uint64_t tag = ((instances.fetch_add(1) + 1) << kSlotBits) | (base / kSlot);
    for (std::uint64_t off = 0; off < kSlot; off += 8) {
      EXPECT_TRUE(region->write_obj(tag, MemoryRegionAddress{off}).has_value());
    }
    return std::make_shared<const GuestRegionMmap<>>(std::move(*region));
  };
  // Slot 0 is always present; the writers toggle the others.
  auto first = GuestMemoryMmap<>::from_arc_regions({make_region(0)});
  ASSERT_TRUE(first.has_value());
  GuestMemoryAtomic<GuestMemoryMmap<>> space(std::move(*first));

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> replaces{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(w) + 1);
      while (!stop.load(std::memory_order_relaxed)) {
        const std::uint64_t base = (1 + rng() % (kSlots - 1)) * kSlot;
        auto writer = space.lock();
        auto current = writer.memory();
        if (current->address_in_range(GuestAddress{base})) {
          auto removed = current->remove_region(GuestAddress{base}, kSlot);
          ASSERT_TRUE(removed.has_value());
          writer.replace(std::move(removed->first));
        } else {
          auto inserted = current->insert_region(make_region(base));
          ASSERT_TRUE(inserted.has_value());
          writer.replace(std::move(*inserted));
        }
        replaces.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(r) + 100);
      std::uint64_t count = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        auto guard = space.memory();
        std::array<std::uint64_t, kSlots> seen{};  // the tag read at each slot, 0 for none
        for (int i = 0; i < 64; ++i) {
          const std::uint64_t slot = rng() % kSlots;
          const GuestAddress addr{slot * kSlot + (rng() % (kSlot / 8)) * 8};
          auto value = guard->read_obj<std::uint64_t>(addr);
          if (guard->address_in_range(addr)) {
            ASSERT_TRUE(value.has_value()) << to_string(addr);
            ASSERT_EQ(*value & ((std::uint64_t{1} << kSlotBits) - 1), slot) << to_string(addr);
            if (seen[slot] == 0) {
              seen[slot] = *value;
            }
            ASSERT_EQ(*value, seen[slot]) << "one guard saw two instances at " << to_string(addr);
          } else {
            ASSERT_EQ(value.error(), Error::invalid_guest_address(addr));
          }
          ++count;
        }
      }
      reads.fetch_add(count);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop.store(true);
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_GT(replaces.load(), 10u);
  EXPECT_GT(reads.load(), 1000u);
}

}  // namespace
}  // namespace guestmem
