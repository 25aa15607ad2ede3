// The benchmark cases of ../shared/peers/rust-vm-memory (src/bin/bench.rs), for guestmem:
// same memory layout, access points, sizes and case names, so that the two tables join line
// by line. Both harnesses (the Google Benchmark suite and guestmem-peer-bench) run this one
// list; a harness is any type with
//
//   template <class F> void run(const std::string& name, std::optional<std::size_t> bytes, F op);
//
// which times `op()` (inlined: F is a concrete lambda type), and optionally a `run_pair` for
// two cases that a target compares with each other (see run_pair below).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "guestmem/guestmem.hpp"

namespace guestmem::bench {

inline constexpr std::size_t kRegionSize = 0x8000'0000;  // 2 GiB, as in vm-memory's benches
inline constexpr std::uint64_t kRegions = 8;
inline constexpr std::size_t kAccessSize = 0x200;

/// Makes `value` opaque to the optimizer (inputs): like Rust's std::hint::black_box, the
/// compiler must assume the asm read and changed it and any memory.
template <class T>
inline T black_box(T value) {
  asm volatile("" : "+r"(value) : : "memory");
  return value;
}

/// Forces `value` to be computed and stored (results): in a register or memory when it fits
/// a register, else in memory where it lies, as Rust's black_box does with a pointer to it.
/// (An "r,m" operand that cannot be a register makes GCC copy the object first.)
template <class T>
inline void keep(const T& value) {
  if constexpr (sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<T>) {
    asm volatile("" : : "r,m"(value) : "memory");
  } else {
    asm volatile("" : : "m"(value) : "memory");
  }
}

[[noreturn, gnu::noinline, gnu::cold]] inline void fail(const Error& error) {
  std::fprintf(stderr, "benchmark access failed: %s\n", error.message().c_str());
  std::abort();
}

/// The peer's `.unwrap()`: aborts on an error, gives the value (by reference, as LLVM elides
/// the move in the peer's `black_box(r.unwrap())`).
template <class T>
[[gnu::always_inline]] inline decltype(auto) unwrap(const Result<T>& result) {
  if (!result) [[unlikely]] {
    fail(result.error());
  }
  if constexpr (!std::is_void_v<T>) {
    return *result;
  }
}

/// Times two cases that a target compares with each other (a bulk copy and the plain memcpy
/// of the same bytes, a tracked write and the untracked one): in alternation, repetition by
/// repetition, where the harness has `run_pair` (guestmem-peer-bench), else one after the
/// other.
template <class Harness, class FA, class FB>
void run_pair(Harness& h, const std::string& name_a, std::optional<std::size_t> bytes_a, FA op_a,
              const std::string& name_b, std::optional<std::size_t> bytes_b, FB op_b) {
  if constexpr (requires { h.run_pair(name_a, bytes_a, op_a, name_b, bytes_b, op_b); }) {
    h.run_pair(name_a, bytes_a, std::move(op_a), name_b, bytes_b, std::move(op_b));
  } else {
    h.run(name_a, bytes_a, std::move(op_a));
    h.run(name_b, bytes_b, std::move(op_b));
  }
}

struct SmallDummy {
  std::uint32_t a;
  std::uint32_t b;
};
struct BigDummy {
  std::array<std::uint64_t, 12> elements;
};
static_assert(ByteValued<SmallDummy> && ByteValued<BigDummy> && sizeof(BigDummy) == 96);

/// A host buffer of `size` bytes, 64-byte aligned at half a page past a page boundary. Where
/// a small buffer lands decides whether back-to-back copies between it and a page-aligned
/// guest address 4K-alias (a 512-byte copy then costs 4 ns or 24 ns on the same machine);
/// placing it on purpose keeps that out of the comparison. See docs/PERFORMANCE.md.
inline std::span<std::byte> placed_buffer(std::size_t size) {
  const std::size_t page = 4096;
  auto* base = static_cast<std::byte*>(std::aligned_alloc(page, (size + page / 2 + page - 1) / page * page + page));
  if (base == nullptr) {
    std::abort();
  }
  std::span<std::byte> out(base + page / 2, size);
  for (std::size_t i = 0; i < size; ++i) {
    out[i] = static_cast<std::byte>(i);
  }
  return out;  // never freed: the cases use it until the process ends
}

inline std::vector<std::byte> make_image(std::size_t size) {
  std::vector<std::byte> out(size);
  for (std::size_t i = 0; i < size; ++i) {
    out[i] = static_cast<std::byte>(i);
  }
  return out;
}

/// `count` regions of `size` bytes at 0, size, 2 * size, ... (anonymous, MAP_NORESERVE).
template <class B = NoBitmap>
GuestMemoryMmap<B> contiguous_memory(std::size_t size, std::uint64_t count, std::uint64_t stride = 0) {
  std::vector<std::pair<GuestAddress, std::size_t>> ranges;
  for (std::uint64_t i = 0; i < count; ++i) {
    ranges.emplace_back(GuestAddress{i * (stride == 0 ? size : stride)}, size);
  }
  auto mem = GuestMemoryMmap<B>::from_ranges(ranges);
  if (!mem) {
    std::fprintf(stderr, "benchmark memory: %s\n", mem.error().message().c_str());
    std::abort();
  }
  return std::move(*mem);
}

/// The peer's xorshift64* generator, so the address tables are the same.
struct Rng {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t x = state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state = x;
    return x * 0x2545F4914F6CDD1DULL;
  }
};

struct Access {
  bool in_region;
  std::uint64_t index;
  std::uint64_t offset(std::size_t access_size) const {
    return in_region ? kRegionSize * index : kRegionSize * (index + 1) - access_size / 2;
  }
  std::string label() const {
    return (in_region ? "in_region_" : "cross_region_") + std::to_string(index);
  }
};

template <class Harness>
void accesses(Harness& h, const GuestMemoryMmap<>& memory) {
  const SmallDummy small{0x11112222, 0x33334444};
  BigDummy big{};
  big.elements.fill(0x1111222233334444);
  // Static: a harness may run the cases after this function returns.
  static const std::span<std::byte> image = placed_buffer(kAccessSize);
  static const std::span<std::byte> buf = placed_buffer(kAccessSize);
  const std::array<Access, 4> kinds{{{true, 0}, {false, 0}, {false, kRegions - 2}, {true, kRegions - 1}}};

  for (const Access& access : kinds) {
    const std::string l = access.label();
    const GuestAddress address{access.offset(kAccessSize)};
    const GuestAddress small_addr{access.offset(sizeof(SmallDummy))};
    const GuestAddress big_addr{access.offset(sizeof(BigDummy))};
    const auto* mem = &memory;
    std::byte* out = buf.data();
    const std::byte* in = image.data();

    h.run("read_slice/" + l, std::nullopt, [=] {
      unwrap(black_box(mem)->read_slice(std::span(black_box(out), kAccessSize), black_box(address)));
    });
    h.run("write_slice/" + l, std::nullopt, [=] {
      unwrap(black_box(mem)->write_slice(std::span(black_box(in), kAccessSize), black_box(address)));
    });
    h.run("read/" + l, std::nullopt, [=] {
      keep(unwrap(black_box(mem)->read(std::span(black_box(out), kAccessSize), black_box(address))));
    });
    h.run("write/" + l, std::nullopt, [=] {
      keep(unwrap(black_box(mem)->write(std::span(black_box(in), kAccessSize), black_box(address))));
    });
    h.run("read_obj_small8/" + l, std::nullopt, [=] {
      keep(unwrap(black_box(mem)->template read_obj<SmallDummy>(black_box(small_addr))));
    });
    h.run("read_obj_big96/" + l, std::nullopt, [=] {
      keep(unwrap(black_box(mem)->template read_obj<BigDummy>(black_box(big_addr))));
    });
    h.run("write_obj_small8/" + l, std::nullopt, [=] {
      unwrap(black_box(mem)->write_obj(black_box(small), black_box(small_addr)));
    });
    h.run("write_obj_big96/" + l, std::nullopt, [=] {
      const BigDummy* value = black_box(&big);
      unwrap(black_box(mem)->write_obj(*value, black_box(big_addr)));
    });
    // The peer's read_from/write_to on &[u8] / &mut [u8] are read_volatile_from and
    // write_volatile_to with a host-buffer source or sink.
    h.run("read_from_slice/" + l, std::nullopt, [=] {
      SpanReader src{std::span(black_box(in), kAccessSize)};
      keep(unwrap(black_box(mem)->read_volatile_from(black_box(address), src, kAccessSize)));
    });
    h.run("read_exact_from_slice/" + l, std::nullopt, [=] {
      SpanReader src{std::span(black_box(in), kAccessSize)};
      unwrap(black_box(mem)->read_exact_volatile_from(black_box(address), src, kAccessSize));
    });
    h.run("write_to_slice/" + l, std::nullopt, [=] {
      SpanWriter dst{std::span(black_box(out), kAccessSize)};
      keep(unwrap(black_box(mem)->write_volatile_to(black_box(address), dst, kAccessSize)));
    });
    h.run("write_all_to_slice/" + l, std::nullopt, [=] {
      SpanWriter dst{std::span(black_box(out), kAccessSize)};
      unwrap(black_box(mem)->write_all_volatile_to(black_box(address), dst, kAccessSize));
    });
  }
}

template <class Harness>
void atomics(Harness& h, const GuestMemoryMmap<>& memory) {
  const auto* mem = &memory;
  const GuestAddress a0{0x1000};
  const GuestAddress a7{7 * kRegionSize + 0x1000};
  for (auto [label, addr] : {std::pair{"in_region_0", a0}, std::pair{"in_region_7", a7}}) {
    h.run(std::string("atomic_load_u64_relaxed/") + label, std::nullopt, [=] {
      keep(unwrap(black_box(mem)->template load<std::uint64_t>(black_box(addr), std::memory_order_relaxed)));
    });
    h.run(std::string("atomic_store_u64_relaxed/") + label, std::nullopt, [=] {
      unwrap(black_box(mem)->store(black_box(std::uint64_t{0x55}), black_box(addr),
                                 std::memory_order_relaxed));
    });
  }
  h.run("atomic_load_u64_acquire/in_region_0", std::nullopt, [=] {
    keep(unwrap(black_box(mem)->template load<std::uint64_t>(black_box(a0), std::memory_order_acquire)));
  });
  h.run("atomic_store_u64_release/in_region_0", std::nullopt, [=] {
    unwrap(black_box(mem)->store(black_box(std::uint64_t{0x55}), black_box(a0), std::memory_order_release));
  });
  h.run("atomic_store_u64_seqcst/in_region_0", std::nullopt, [=] {
    unwrap(black_box(mem)->store(black_box(std::uint64_t{0x55}), black_box(a0), std::memory_order_seq_cst));
  });
  for (auto [label, addr] : {std::pair{"in_region_0", a0}, std::pair{"in_region_7", a7}}) {
    h.run(std::string("read_obj_u64/") + label, std::nullopt, [=] {
      keep(unwrap(black_box(mem)->template read_obj<std::uint64_t>(black_box(addr))));
    });
    h.run(std::string("write_obj_u64/") + label, std::nullopt, [=] {
      unwrap(black_box(mem)->write_obj(black_box(std::uint64_t{0x77}), black_box(addr)));
    });
  }
}

inline constexpr std::size_t kAddrs = 4096;           // random lookups per table (a power of 2)
inline constexpr std::size_t kFrRegion = 0x10'0000;  // 1 MiB, as in vm-memory's benches

template <class Harness>
void find_region(Harness& h) {
  auto lookups = [&](const std::string& name, GuestMemoryMmap<> mem, std::uint64_t span,
                     std::uint64_t seed) {
    if (!h.selected(name)) {
      return;
    }
    Rng rng{seed};
    auto addrs = std::make_shared<std::vector<GuestAddress>>();
    for (std::size_t i = 0; i < kAddrs; ++i) {
      addrs->push_back(GuestAddress{rng.next() % span});
    }
    auto memory = std::make_shared<GuestMemoryMmap<>>(std::move(mem));
    auto i = std::make_shared<std::size_t>(0);
    h.run(name, std::nullopt, [memory, addrs, i] {
      const GuestAddress a = (*addrs)[*i & (kAddrs - 1)];
      ++*i;
      keep(black_box(memory.get())->find_region(black_box(a)) != nullptr);
    });
  };
  for (std::uint64_t n : {1ULL, 8ULL, 64ULL, 512ULL}) {
    const std::string name = "find_region/" + std::to_string(n);
    if (h.selected(name)) {
      lookups(name, contiguous_memory(kFrRegion, n), n * kFrRegion, 0x9E3779B97F4A7C15ULL ^ n);
    }
  }
  if (h.selected("find_region/512_holes")) {
    lookups("find_region/512_holes", contiguous_memory(kFrRegion, 512, 2 * kFrRegion),
            512 * 2 * kFrRegion, 0xDEADBEEF12345678ULL);
  }
  if (h.selected("find_region_sweep/256")) {
    auto memory = std::make_shared<GuestMemoryMmap<>>(contiguous_memory(kFrRegion, 256));
    auto i = std::make_shared<std::uint64_t>(0);
    h.run("find_region_sweep/256", std::nullopt, [memory, i] {
      const GuestAddress a{(*i & 255) * kFrRegion};
      ++*i;
      keep(black_box(memory.get())->find_region(black_box(a)));
    });
  }
}

template <class Harness>
void bulk(Harness& h, const GuestMemoryMmap<>& memory) {
  for (auto [label, size] : {std::pair{"1MiB", std::size_t{1} << 20}, std::pair{"64MiB", std::size_t{64} << 20}}) {
    const std::array<std::string, 4> names{
        std::string("bulk_read_slice/") + label, std::string("bulk_write_slice/") + label,
        std::string("memcpy_guest_to_host/") + label, std::string("memcpy_host_to_guest/") + label};
    bool any = false;
    for (const auto& n : names) {
      any = any || h.selected(n);
    }
    if (!any) {
      continue;
    }
    auto host = std::make_shared<std::vector<std::byte>>(make_image(size));
    // Guest range: the start of region 1 (page aligned, inside one region), pre-faulted.
    const GuestAddress gaddr{kRegionSize};
    if (!memory.write_slice(*host, gaddr)) {
      std::abort();
    }
    std::uint8_t* gptr = *memory.get_host_address(gaddr);
    const auto* mem = &memory;
    std::byte* hptr = host->data();
    // Each against the physical limit: a plain memcpy between the same buffers.
    run_pair(
        h, names[0], size,
        [=] { unwrap(black_box(mem)->read_slice(std::span(black_box(hptr), size), black_box(gaddr))); },
        names[2], size, [=] { std::memcpy(black_box(hptr), black_box(gptr), size); keep(host); });
    run_pair(
        h, names[1], size,
        [=] { unwrap(black_box(mem)->write_slice(std::span(black_box(hptr), size), black_box(gaddr))); },
        names[3], size, [=] { std::memcpy(black_box(gptr), black_box(hptr), size); keep(host); });
  }
}

// The peer's bitmap cases: the same writes with and without dirty tracking.
template <class Harness>
void bitmap_writes(Harness& h, const GuestMemoryMmap<>& memory) {
  static const GuestMemoryMmap<AtomicBitmap> tracked =
      contiguous_memory<AtomicBitmap>(kRegionSize, kRegions);
  static const std::span<std::byte> d8 = placed_buffer(8);
  static const std::span<std::byte> d4k = placed_buffer(4096);
  const GuestAddress a{0x2000};   // page aligned
  const GuestAddress au{0x3800};  // straddles two pages
  // The same three writes on the tracked memory (prefix "bitmap_") and on the untracked one,
  // each pair timed together. `kSize` is a constant, as in the peer's cases.
  auto writes = [&]<std::size_t kSize>(const std::string& name, std::byte* data, GuestAddress at,
                                        std::integral_constant<std::size_t, kSize> /*size*/) {
    const auto write_to = [=](const auto* mem) {
      return [=] { unwrap(black_box(mem)->write_slice(std::span(black_box(data), kSize), black_box(at))); };
    };
    run_pair(h, "bitmap_" + name, std::nullopt, write_to(&tracked), name, std::nullopt, write_to(&memory));
  };
  writes("write_slice_8/in_region_0", d8.data(), a, std::integral_constant<std::size_t, 8>{});
  writes("write_slice_4096/in_region_0", d4k.data(), a, std::integral_constant<std::size_t, 4096>{});
  writes("write_slice_4096_unaligned/in_region_0", d4k.data(), au, std::integral_constant<std::size_t, 4096>{});
  const auto* bm = &tracked;
  h.run("bitmap_store_u64/in_region_0", std::nullopt, [=] {
    unwrap(black_box(bm)->store(black_box(std::uint64_t{1}), black_box(a), std::memory_order_relaxed));
  });
}

// The peer's snapshot cases: a GuestMemoryAtomic over the same regions.
template <class Harness>
void snapshots(Harness& h, const GuestMemoryMmap<>& memory) {
  static const GuestMemoryAtomic<GuestMemoryMmap<>> atomic(memory);  // shares the regions
  const auto* space = &atomic;
  const GuestAddress a0{0x1000};
  const GuestAddress a7{7 * kRegionSize + 0x1000};
  h.run("atomic_snapshot", std::nullopt, [=] {
    auto guard = black_box(space)->memory();
    keep(guard.get());
  });
  for (auto [label, addr] : {std::pair{"in_region_0", a0}, std::pair{"in_region_7", a7}}) {
    h.run(std::string("atomic_snapshot_read_obj_u64/") + label, std::nullopt, [=] {
      auto guard = black_box(space)->memory();
      keep(unwrap(guard->template read_obj<std::uint64_t>(black_box(addr))));
    });
  }
}

// What the hardware costs for the work some cases must do, without guestmem: the floors that
// bound a case's ratio to the peer (docs/PERFORMANCE.md). The peer has no such cases; in the
// compared table they have no ratio. Same guest addresses as the cases they bound.
template <class Harness>
void floors(Harness& h, const GuestMemoryMmap<>& memory) {
  const std::uint8_t* in0 = *memory.get_host_address(GuestAddress{0});
  std::uint8_t* word = *memory.get_host_address(GuestAddress{0x1000});
  // read_obj_big96 returns a Result<BigDummy>: at least one 96-byte copy out of guest memory,
  // two where the compiler builds the value outside the result (GCC 12).
  h.run("floor_copy96_once/in_region_0", std::nullopt, [=] {
    BigDummy value;
    std::memcpy(&value, black_box(in0), sizeof(value));
    keep(value);
  });
  h.run("floor_copy96_twice/in_region_0", std::nullopt, [=] {
    BigDummy value;
    std::memcpy(&value, black_box(in0), sizeof(value));
    asm volatile("" : "+m"(value));  // the copy in between stays, nothing else is forced
    BigDummy result;
    std::memcpy(&result, &value, sizeof(result));
    keep(result);
  });
  // A sequentially consistent store is one locked instruction (xchg) on x86-64.
  h.run("floor_xchg_u64/in_region_0", std::nullopt, [=] {
    __atomic_store_n(reinterpret_cast<std::uint64_t*>(black_box(word)), black_box(std::uint64_t{0x55}),
                     __ATOMIC_SEQ_CST);
  });
}

/// The memory every access case uses: 8 regions of 2 GiB.
inline const GuestMemoryMmap<>& shared_memory() {
  static const GuestMemoryMmap<> memory = contiguous_memory(kRegionSize, kRegions);
  return memory;
}

template <class Harness>
void all_cases(Harness& h) {
  const auto& memory = shared_memory();
  if (memory.last_addr() != GuestAddress{kRegionSize * kRegions - 1}) {
    std::abort();
  }
  accesses(h, memory);
  atomics(h, memory);
  find_region(h);
  bulk(h, memory);
  snapshots(h, memory);
  bitmap_writes(h, memory);
  floors(h, memory);
}

}  // namespace guestmem::bench
