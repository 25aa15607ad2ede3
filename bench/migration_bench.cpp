// The demo VMM's migration sender (examples/tiny_vmm: Pages records, each run of dirty pages
// sent straight from guest memory with a gathered write) against a plain write() loop of the
// same bytes from host memory, through the same kind of socket: a Unix socketpair whose
// other end a reader thread drains. Target: the sender at 0.8x the plain loop's throughput
// or better.
//
// Two patterns, 64 MiB of guest memory in two 32 MiB regions:
// - all: every page dirty (a first round): two records of 32 MiB each;
// - alternate: every other page dirty (a later round): a 24-byte header and one page per
//   record. The plain loop writes the same pieces (24 bytes, then 4096) from a host buffer.
#include <benchmark/benchmark.h>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "migration.hpp"

namespace {

using tiny_vmm::kPageSize;

constexpr std::size_t kRegion = std::size_t{32} << 20;
constexpr std::uint64_t kHeader = 24;

// A socketpair whose reading end a thread drains, counting the bytes.
class Drain {
 public:
  Drain() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      std::abort();
    }
    writer_ = fds[0];
    reader_ = fds[1];
    thread_ = std::thread([this] {
      std::vector<char> buf(1 << 20);
      for (;;) {
        const ssize_t n = ::read(reader_, buf.data(), buf.size());
        if (n <= 0) {
          return;
        }
        received_.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_release);
      }
    });
  }
  Drain(const Drain&) = delete;
  Drain& operator=(const Drain&) = delete;
  ~Drain() {
    ::shutdown(writer_, SHUT_RDWR);
    thread_.join();
    ::close(writer_);
    ::close(reader_);
  }
  [[nodiscard]] int fd() const noexcept { return writer_; }
  // Waits until the reader has taken `total` bytes in all.
  void wait_for(std::uint64_t total) const {
    while (received_.load(std::memory_order_acquire) < total) {
    }
  }

 private:
  int writer_ = -1;
  int reader_ = -1;
  std::thread thread_;
  std::atomic<std::uint64_t> received_{0};
};

// The dirty bitmap of a pattern, per region.
std::vector<std::vector<std::uint64_t>> pattern(bool alternate) {
  const std::size_t words = kRegion / kPageSize / 64;
  const std::uint64_t word = alternate ? 0x5555555555555555ULL : ~std::uint64_t{0};
  return {std::vector<std::uint64_t>(words, word), std::vector<std::uint64_t>(words, word)};
}

// What the sender writes for a pattern: the pieces, as (bytes, count).
std::vector<std::pair<std::size_t, std::size_t>> pieces(bool alternate) {
  if (alternate) {
    const std::size_t pages = 2 * kRegion / kPageSize / 2;
    return {{kHeader, pages}, {kPageSize, pages}};
  }
  return {{kHeader, 2}, {kRegion, 2}};
}

std::uint64_t stream_bytes(bool alternate) {
  return alternate ? (2 * kRegion / kPageSize / 2) * (kHeader + kPageSize)
                   : 2 * (kHeader + kRegion);
}

void migration_sender(benchmark::State& state) {
  const bool alternate = state.range(0) != 0;
  // 64 MiB of tracked guest memory in two regions with a hole, as the demo's but bigger.
  auto big = tiny_vmm::Memory::from_ranges(
      {{guestmem::GuestAddress{0}, kRegion}, {guestmem::GuestAddress{2 * kRegion}, kRegion}});
  if (!big) {
    state.SkipWithError("creating guest memory failed");
    return;
  }
  for (const auto& region : big->regions()) {
    std::vector<std::byte> fill(region.len(), std::byte{0x5a});
    (void)big->write_slice(std::span<const std::byte>(fill), region.start_addr());
  }
  const auto dirty = pattern(alternate);
  Drain drain;
  std::uint64_t total = 0;
  for (auto _ : state) {
    auto sent = tiny_vmm::send_page_records(*big, dirty, drain.fd());
    if (!sent) {
      state.SkipWithError(sent.error().c_str());
      return;
    }
    total += stream_bytes(alternate);
    drain.wait_for(total);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(total));
}

void plain_write_loop(benchmark::State& state) {
  const bool alternate = state.range(0) != 0;
  // As much host memory as the guest's, read in the same places: record i's payload comes
  // from where the sender's does (the region's start, or every other page).
  std::vector<char> source(2 * kRegion, 0x5a);
  const std::array<char, kHeader> header{};
  const auto parts = pieces(alternate);
  Drain drain;
  std::uint64_t total = 0;
  auto write_all = [&](const char* from, std::size_t len) {
    std::size_t done = 0;
    while (done < len) {
      const ssize_t n = ::write(drain.fd(), from + done, len - done);
      if (n <= 0) {
        std::abort();
      }
      done += static_cast<std::size_t>(n);
    }
  };
  for (auto _ : state) {
    // The same pieces in the same order as the sender: header, payload, header, payload...
    const std::size_t records = parts[0].second;
    for (std::size_t i = 0; i < records; ++i) {
      write_all(header.data(), parts[0].first);
      write_all(source.data() + (alternate ? 2 * i * kPageSize : i * kRegion), parts[1].first);
    }
    total += stream_bytes(alternate);
    drain.wait_for(total);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(total));
}

}  // namespace

BENCHMARK(migration_sender)->ArgName("alternate")->Arg(0)->Arg(1)->UseRealTime();
BENCHMARK(plain_write_loop)->ArgName("alternate")->Arg(0)->Arg(1)->UseRealTime();

BENCHMARK_MAIN();
