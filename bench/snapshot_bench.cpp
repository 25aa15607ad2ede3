// Snapshots of guest memory against the plain I/O that moves the same data.
//
// save/1GiB_10pct and restore_eager/1GiB_10pct work on 1 GiB of guest memory of which 10 %
// of the pages, scattered, hold data. Their references, plain_write and plain_read, move the
// same non-zero bytes to and from the same kind of file (in /tmp) with write() and read()
// from one contiguous buffer, which is the least any format could cost: no scan for zero
// pages, no checksums, no holes, one large transfer. The restore's reference reads into a
// fresh anonymous mapping, as the restore reads into fresh guest memory. restore_lazy/4GiB
// restores a 4 GiB snapshot (10 % of its pages non-zero) by mapping it.
//
// docs/PERFORMANCE.md ("Snapshots") records runs and the ratios of the paired cases.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "guestmem/guest_memory.hpp"
#include "guestmem/io.hpp"
#include "guestmem/snapshot.hpp"

namespace {

using guestmem::BorrowedFd;
using guestmem::GuestAddress;
using guestmem::GuestMemoryMmap;
using guestmem::RestoreMode;
using guestmem::UniqueFd;

constexpr std::size_t kPage = 4096;

// The directory for the files: $GUESTMEM_BENCH_DIR, else /tmp.
const char* bench_dir() {
  const char* dir = std::getenv("GUESTMEM_BENCH_DIR");
  return dir != nullptr ? dir : "/tmp";
}

UniqueFd temp_file() { return UniqueFd{::open(bench_dir(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)}; }

// `size` bytes of guest memory with every page non-zero with probability `density` (the
// same pages on every run), and the non-zero bytes one after the other.
struct Guest {
  GuestMemoryMmap<> mem;
  std::vector<std::byte> data;
};

Guest make_guest(std::size_t size, double density) {
  Guest g{*GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, size}}), {}};
  std::mt19937_64 rng(7);
  std::bernoulli_distribution pick(density);
  std::vector<std::byte> page(kPage);
  for (std::size_t p = 0; p < size / kPage; ++p) {
    if (!pick(rng)) {
      continue;
    }
    for (std::size_t i = 0; i < kPage; i += 8) {
      const std::uint64_t v = rng() | 1;
      std::memcpy(page.data() + i, &v, 8);
    }
    (void)g.mem.write_slice(page, GuestAddress{p * kPage});
    g.data.insert(g.data.end(), page.begin(), page.end());
  }
  return g;
}

Guest& guest_1g() {
  static Guest g = make_guest(std::size_t{1} << 30, 0.10);
  return g;
}

bool write_all(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (w <= 0) {
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, std::byte* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::read(fd, p, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (r <= 0) {
      return false;
    }
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void save(benchmark::State& state) {
  Guest& g = guest_1g();
  UniqueFd file = temp_file();
  for (auto _ : state) {
    auto id = guestmem::save_snapshot(g.mem, BorrowedFd{file});
    if (!id) {
      state.SkipWithError(id.error().message().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(g.data.size()));
}
BENCHMARK(save)->Name("save/1GiB_10pct")->Unit(benchmark::kMillisecond)->UseRealTime();

void plain_write(benchmark::State& state) {
  Guest& g = guest_1g();
  UniqueFd file = temp_file();
  for (auto _ : state) {
    if (::ftruncate(file.get(), 0) != 0 || ::lseek(file.get(), 0, SEEK_SET) != 0 ||
        !write_all(file.get(), g.data.data(), g.data.size())) {
      state.SkipWithError("write failed");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(g.data.size()));
}
BENCHMARK(plain_write)->Name("plain_write/1GiB_10pct")->Unit(benchmark::kMillisecond)->UseRealTime();

void restore_eager(benchmark::State& state) {
  Guest& g = guest_1g();
  UniqueFd file = temp_file();
  if (!guestmem::save_snapshot(g.mem, BorrowedFd{file})) {
    state.SkipWithError("save failed");
    return;
  }
  for (auto _ : state) {
    auto mem = guestmem::restore_snapshot(BorrowedFd{file}, RestoreMode::Eager);
    if (!mem) {
      state.SkipWithError(mem.error().message().c_str());
      break;
    }
    benchmark::DoNotOptimize(mem->num_regions());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(g.data.size()));
}
BENCHMARK(restore_eager)->Name("restore_eager/1GiB_10pct")->Unit(benchmark::kMillisecond)->UseRealTime();

void plain_read(benchmark::State& state) {
  Guest& g = guest_1g();
  UniqueFd file = temp_file();
  if (!write_all(file.get(), g.data.data(), g.data.size())) {
    state.SkipWithError("write failed");
    return;
  }
  for (auto _ : state) {
    void* buffer = ::mmap(nullptr, g.data.size(), PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (buffer == MAP_FAILED || ::lseek(file.get(), 0, SEEK_SET) != 0 ||
        !read_all(file.get(), static_cast<std::byte*>(buffer), g.data.size())) {
      state.SkipWithError("read failed");
      break;
    }
    ::munmap(buffer, g.data.size());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(g.data.size()));
}
BENCHMARK(plain_read)->Name("plain_read/1GiB_10pct")->Unit(benchmark::kMillisecond)->UseRealTime();

void restore_lazy(benchmark::State& state) {
  UniqueFd file = temp_file();
  {
    Guest g = make_guest(std::size_t{4} << 30, 0.10);
    if (!guestmem::save_snapshot(g.mem, BorrowedFd{file})) {
      state.SkipWithError("save failed");
      return;
    }
  }
  for (auto _ : state) {
    auto mem = guestmem::restore_snapshot(BorrowedFd{file}, RestoreMode::Lazy);
    if (!mem) {
      state.SkipWithError(mem.error().message().c_str());
      break;
    }
    benchmark::DoNotOptimize(mem->num_regions());
  }
}
BENCHMARK(restore_lazy)->Name("restore_lazy/4GiB_10pct")->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
