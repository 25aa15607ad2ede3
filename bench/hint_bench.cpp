// What the lookup hint costs under the access patterns of a real guest, on the usual x86
// layout: RAM below the 3 GiB PCI hole and RAM from 4 GiB up, two regions that are not
// adjacent in the guest but are adjacent in the region table. Every case reads a u64 through
// GuestMemoryMmap::read_obj at addresses taken in turn from a table of 4096.
//
//   cmake --preset release && cmake --build --preset release --target hint_bench
//   ./build/release/bench/hint_bench
//
// The patterns, as the share of accesses that go to the low region:
//   high_only      0 %: a guest whose buffers all lie above 4 GiB;
//   low_only     100 %;
//   high_mostly    1 in 16 low (Linux allocates from ZONE_NORMAL, above 4 GiB, first);
//   low_mostly     1 in 16 high;
//   alternating    low, high, low, high;
//   random        50 %, in a random order.
// The `threads:2` runs share one memory between two threads, as the queues of a device do:
// a lookup that writes the shared hint makes its cache line travel between the cores.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "cases.hpp"

namespace {

using guestmem::GuestAddress;
using guestmem::GuestMemoryMmap;
using guestmem::bench::black_box;
using guestmem::bench::keep;
using guestmem::bench::unwrap;

constexpr std::uint64_t kLowBase = 0;
constexpr std::size_t kLowSize = 0xC000'0000;       // 3 GiB
constexpr std::uint64_t kHighBase = 0x1'0000'0000;  // 4 GiB
constexpr std::size_t kHighSize = 0x1'0000'0000;    // 4 GiB
constexpr std::size_t kAddrs = 4096;                // a power of 2
constexpr std::uint64_t kSpread = 0x1'0000;         // 64 KiB of each region is touched

const GuestMemoryMmap<>& memory() {
  static const GuestMemoryMmap<> m = [] {
    const std::array ranges{std::pair{GuestAddress{kLowBase}, kLowSize},
                            std::pair{GuestAddress{kHighBase}, kHighSize}};
    return unwrap(GuestMemoryMmap<>::from_ranges(std::span(ranges)));
  }();
  return m;
}

// The addresses of a pattern: access i goes to the low region when low(i).
template <class Low>
std::vector<GuestAddress> pattern(Low low) {
  guestmem::bench::Rng rng{0x5eed};
  std::vector<GuestAddress> addrs;
  addrs.reserve(kAddrs);
  for (std::size_t i = 0; i < kAddrs; ++i) {
    const std::uint64_t offset = (rng.next() % kSpread) & ~std::uint64_t{7};
    addrs.push_back(GuestAddress{(low(i, rng) ? kLowBase : kHighBase) + offset});
  }
  return addrs;
}

template <class Low>
void run(benchmark::State& state, Low low) {
  static const std::vector<GuestAddress> addrs = pattern(low);
  const GuestMemoryMmap<>* mem = &memory();
  std::size_t i = 0;
  for (auto _ : state) {
    const GuestAddress a = addrs[i++ & (kAddrs - 1)];
    keep(unwrap(black_box(mem)->read_obj<std::uint64_t>(black_box(a))));
  }
}

void high_only(benchmark::State& s) {
  run(s, [](std::size_t, guestmem::bench::Rng&) { return false; });
}
void low_only(benchmark::State& s) {
  run(s, [](std::size_t, guestmem::bench::Rng&) { return true; });
}
void high_mostly(benchmark::State& s) {
  run(s, [](std::size_t i, guestmem::bench::Rng&) { return i % 16 == 0; });
}
void low_mostly(benchmark::State& s) {
  run(s, [](std::size_t i, guestmem::bench::Rng&) { return i % 16 != 0; });
}
void alternating(benchmark::State& s) {
  run(s, [](std::size_t i, guestmem::bench::Rng&) { return i % 2 == 0; });
}
void random_mix(benchmark::State& s) {
  run(s, [](std::size_t, guestmem::bench::Rng& rng) { return rng.next() % 2 == 0; });
}

}  // namespace

// With --benchmark_repetitions, "min" beside the median: on a shared machine the fastest
// repetition is the one least disturbed.
void configure(benchmark::internal::Benchmark* b) {
  b->Threads(1)->Threads(2)->ComputeStatistics("min", [](const std::vector<double>& v) {
    return *std::min_element(v.begin(), v.end());
  });
}

BENCHMARK(high_only)->Name("hint/high_only")->Apply(configure);
BENCHMARK(low_only)->Name("hint/low_only")->Apply(configure);
BENCHMARK(high_mostly)->Name("hint/high_mostly")->Apply(configure);
BENCHMARK(low_mostly)->Name("hint/low_mostly")->Apply(configure);
BENCHMARK(alternating)->Name("hint/alternating")->Apply(configure);
BENCHMARK(random_mix)->Name("hint/random")->Apply(configure);

BENCHMARK_MAIN();
