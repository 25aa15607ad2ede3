// Fault-tolerant access against plain access (issue 6): the fallible copy against memcpy at
// 8 B, 512 B, 4 KiB, 1 MiB and 64 MiB, and single-access fallible loads and stores against
// plain ones, both raw (one pointer) and through a container (a VolatileSlice and a
// GuestMemoryMmap, where the lookup is part of the cost).
//
//   cmake --preset release && cmake --build --preset release --target vm_io_bench
//   build/release/bench/vm_io_bench --benchmark_min_time=0.2
//
// Compare pairs by bytes_per_second (copies) or time per iteration (single accesses).
#include <benchmark/benchmark.h>

#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "guestmem/fault.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/volatile_slice.hpp"

namespace {

// Page-aligned, pre-faulted anonymous memory.
class Buffer {
 public:
  explicit Buffer(std::size_t size) : size_(size) {
    void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr == MAP_FAILED) {
      std::abort();
    }
    data_ = static_cast<std::uint8_t*>(addr);
    std::memset(data_, 0x5a, size);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { ::munmap(data_, size_); }
  [[nodiscard]] std::uint8_t* data() const { return data_; }

 private:
  std::size_t size_;
  std::uint8_t* data_;
};

void set_bytes(benchmark::State& state, std::size_t size) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(size));
}

void BM_Memcpy(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  Buffer src(size);
  Buffer dst(size);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), size);
    benchmark::ClobberMemory();
  }
  set_bytes(state, size);
}

void BM_FallibleCopy(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  Buffer src(size);
  Buffer dst(size);
  for (auto _ : state) {
    auto copied = guestmem::fallible_copy(dst.data(), src.data(), size);
    benchmark::DoNotOptimize(copied);
    benchmark::ClobberMemory();
  }
  set_bytes(state, size);
}

constexpr std::int64_t kSizes[] = {8, 512, 4096, 1 << 20, 64 << 20};

void copy_sizes(benchmark::internal::Benchmark* bench) {
  for (std::int64_t size : kSizes) {
    bench->Arg(size);
  }
}

BENCHMARK(BM_Memcpy)->Apply(copy_sizes);
BENCHMARK(BM_FallibleCopy)->Apply(copy_sizes);

// ---- single accesses through a pointer: a relaxed atomic load or store against the
// fault-tolerant one. Both are one instruction; the fallible one also tests for a fault.

void BM_PlainLoad(benchmark::State& state) {
  Buffer page(4096);
  auto* word = reinterpret_cast<std::uint64_t*>(page.data() + 64);
  for (auto _ : state) {
    benchmark::DoNotOptimize(__atomic_load_n(word, __ATOMIC_RELAXED));
  }
}

// A caller checks the result of a fallible access, and only that: the fault branch is what
// the fallible access adds to the plain one.
[[noreturn, gnu::cold, gnu::noinline]] void faulted() { std::abort(); }

void BM_FallibleLoad(benchmark::State& state) {
  Buffer page(4096);
  std::uint8_t* word = page.data() + 64;
  for (auto _ : state) {
    auto loaded = guestmem::fallible_load<std::uint64_t>(word);
    if (!loaded) {
      faulted();
    }
    benchmark::DoNotOptimize(*loaded);
  }
}

void BM_PlainStore(benchmark::State& state) {
  Buffer page(4096);
  auto* word = reinterpret_cast<std::uint64_t*>(page.data() + 64);
  std::uint64_t value = 0;
  for (auto _ : state) {
    __atomic_store_n(word, ++value, __ATOMIC_RELAXED);
    benchmark::ClobberMemory();
  }
}

void BM_FallibleStore(benchmark::State& state) {
  Buffer page(4096);
  std::uint8_t* word = page.data() + 64;
  std::uint64_t value = 0;
  for (auto _ : state) {
    if (!guestmem::fallible_store<std::uint64_t>(word, ++value)) {
      faulted();
    }
    benchmark::ClobberMemory();
  }
}

BENCHMARK(BM_PlainLoad);
BENCHMARK(BM_FallibleLoad);
BENCHMARK(BM_PlainStore);
BENCHMARK(BM_FallibleStore);

// ---- single accesses through containers: load/store against try_load/try_store.

void BM_SliceLoad(benchmark::State& state) {
  Buffer page(4096);
  auto slice = guestmem::VolatileSlice<>::from_raw_parts(page.data(), 4096);
  for (auto _ : state) {
    benchmark::DoNotOptimize(slice.load<std::uint64_t>(64, std::memory_order_relaxed));
  }
}

void BM_SliceTryLoad(benchmark::State& state) {
  Buffer page(4096);
  auto slice = guestmem::VolatileSlice<>::from_raw_parts(page.data(), 4096);
  for (auto _ : state) {
    benchmark::DoNotOptimize(slice.try_load<std::uint64_t>(64, std::memory_order_relaxed));
  }
}

void BM_SliceStore(benchmark::State& state) {
  Buffer page(4096);
  auto slice = guestmem::VolatileSlice<>::from_raw_parts(page.data(), 4096);
  std::uint64_t value = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(slice.store(++value, 64, std::memory_order_relaxed));
  }
}

void BM_SliceTryStore(benchmark::State& state) {
  Buffer page(4096);
  auto slice = guestmem::VolatileSlice<>::from_raw_parts(page.data(), 4096);
  std::uint64_t value = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(slice.try_store(++value, 64, std::memory_order_relaxed));
  }
}

std::unique_ptr<guestmem::GuestMemoryMmap<>> memory() {
  auto mem = guestmem::GuestMemoryMmap<>::from_ranges(
      {{guestmem::GuestAddress{0}, 0x10000}, {guestmem::GuestAddress{0x10000}, 0x10000}});
  if (!mem) {
    std::abort();
  }
  return std::make_unique<guestmem::GuestMemoryMmap<>>(std::move(*mem));
}

void BM_MemoryLoad(benchmark::State& state) {
  auto mem = memory();
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        mem->load<std::uint64_t>(guestmem::GuestAddress{0x10040}, std::memory_order_acquire));
  }
}

void BM_MemoryTryLoad(benchmark::State& state) {
  auto mem = memory();
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        mem->try_load<std::uint64_t>(guestmem::GuestAddress{0x10040}, std::memory_order_acquire));
  }
}

void BM_MemoryStore(benchmark::State& state) {
  auto mem = memory();
  std::uint64_t value = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        mem->store(++value, guestmem::GuestAddress{0x10040}, std::memory_order_release));
  }
}

void BM_MemoryTryStore(benchmark::State& state) {
  auto mem = memory();
  std::uint64_t value = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        mem->try_store(++value, guestmem::GuestAddress{0x10040}, std::memory_order_release));
  }
}

BENCHMARK(BM_SliceLoad);
BENCHMARK(BM_SliceTryLoad);
BENCHMARK(BM_SliceStore);
BENCHMARK(BM_SliceTryStore);
BENCHMARK(BM_MemoryLoad);
BENCHMARK(BM_MemoryTryLoad);
BENCHMARK(BM_MemoryStore);
BENCHMARK(BM_MemoryTryStore);

}  // namespace

BENCHMARK_MAIN();
