// IOMMU translation cost: 8-byte and 512-byte reads through IommuMemory with IOTLB hits,
// beside the same reads on the plain GuestMemoryMmap below it (the target is within 3x).
//
//   cmake --preset release && cmake --build --preset release --target iommu_bench
//   ./build/release/bench/iommu_bench
//
// The "pages" cases walk 8 pages of one mapping, so that every slot of the translation cache
// is used, rather than hitting one slot over and over.
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <memory>
#include <span>

#include "cases.hpp"

namespace {

using guestmem::GuestAddress;
using guestmem::GuestMemoryMmap;
using guestmem::Iommu;
using guestmem::IommuMemory;
using guestmem::Permissions;
using guestmem::bench::black_box;
using guestmem::bench::keep;
using guestmem::bench::unwrap;

constexpr std::size_t kMemorySize = 0x20'0000;  // 2 MiB
constexpr std::uint64_t kIova = 0x1'0000'0000;  // the memory, mapped at 4 GiB
constexpr std::uint64_t kOffset = 0x1'2340;     // where the reads go (8-byte aligned)
constexpr std::size_t kPages = 8;

struct Setup {
  GuestMemoryMmap<> plain = guestmem::bench::contiguous_memory(kMemorySize, 1);
  std::shared_ptr<Iommu> iommu = std::make_shared<Iommu>();
  IommuMemory<GuestMemoryMmap<>> translated{plain, iommu};
  std::span<std::byte> buffer = guestmem::bench::placed_buffer(guestmem::bench::kAccessSize);

  Setup() {
    if (!iommu->set_mapping(GuestAddress{kIova}, GuestAddress{0}, kMemorySize,
                            Permissions::ReadWrite)) {
      std::abort();
    }
  }
};

Setup& setup() {
  static Setup instance;
  return instance;
}

template <class M>
void read8(benchmark::State& state, const M& memory, std::uint64_t base) {
  const M* mem = &memory;
  const GuestAddress addr{base + kOffset};
  for (auto _ : state) {
    keep(unwrap(black_box(mem)->template read_obj<std::uint64_t>(black_box(addr))));
  }
}

template <class M>
void read512(benchmark::State& state, const M& memory, std::uint64_t base) {
  const M* mem = &memory;
  const GuestAddress addr{base + kOffset};
  std::byte* out = setup().buffer.data();
  for (auto _ : state) {
    unwrap(black_box(mem)->read_slice(std::span(black_box(out), guestmem::bench::kAccessSize),
                                      black_box(addr)));
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(guestmem::bench::kAccessSize));
}

template <class M>
void read8_pages(benchmark::State& state, const M& memory, std::uint64_t base) {
  const M* mem = &memory;
  std::array<GuestAddress, kPages> addrs{};
  for (std::size_t i = 0; i < kPages; ++i) {
    addrs[i] = GuestAddress{base + kOffset + i * 0x1000};
  }
  std::size_t i = 0;
  for (auto _ : state) {
    keep(unwrap(black_box(mem)->template read_obj<std::uint64_t>(black_box(addrs[i]))));
    i = (i + 1) % kPages;
  }
}

void BM_Plain_Read8(benchmark::State& state) { read8(state, setup().plain, 0); }
void BM_Iommu_Read8(benchmark::State& state) { read8(state, setup().translated, kIova); }
void BM_Plain_Read512(benchmark::State& state) { read512(state, setup().plain, 0); }
void BM_Iommu_Read512(benchmark::State& state) { read512(state, setup().translated, kIova); }
void BM_Plain_Read8Pages(benchmark::State& state) { read8_pages(state, setup().plain, 0); }
void BM_Iommu_Read8Pages(benchmark::State& state) { read8_pages(state, setup().translated, kIova); }

BENCHMARK(BM_Plain_Read8);
BENCHMARK(BM_Iommu_Read8);
BENCHMARK(BM_Plain_Read512);
BENCHMARK(BM_Iommu_Read512);
BENCHMARK(BM_Plain_Read8Pages);
BENCHMARK(BM_Iommu_Read8Pages);

}  // namespace

BENCHMARK_MAIN();
