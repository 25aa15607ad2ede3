#include "guestmem/io.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/guest_memory.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::pattern;

struct Pipe {
  Pipe() {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }
  UniqueFd read_end;
  UniqueFd write_end;
};

GuestMemoryMmap<> memory_of(std::size_t regions, std::size_t size) {
  std::vector<std::pair<GuestAddress, std::size_t>> ranges;
  for (std::size_t i = 0; i < regions; ++i) {
    ranges.emplace_back(GuestAddress{i * size}, size);
  }
  auto mem = GuestMemoryMmap<>::from_ranges(ranges);
  EXPECT_TRUE(mem.has_value());
  return std::move(*mem);
}

TEST(UniqueFd, OwnsAndReleases) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  {
    UniqueFd a{fds[0]};
    UniqueFd b = std::move(a);
    EXPECT_FALSE(a.valid());
    EXPECT_EQ(b.get(), fds[0]);
  }
  EXPECT_EQ(::fcntl(fds[0], F_GETFD), -1) << "closed by the destructor";
  UniqueFd c{fds[1]};
  const int raw = c.release();
  EXPECT_FALSE(c);
  EXPECT_EQ(::close(raw), 0) << "release did not close";
}

TEST(BorrowedFd, ReadExactAcrossShortPipeReads) {
  auto mem = memory_of(2, 0x1000);
  Pipe pipe;
  const auto data = pattern(0x100, 5);
  std::thread writer([&] {
    for (std::size_t off = 0; off < data.size(); off += 0x40) {
      ASSERT_EQ(::write(pipe.write_end.get(), data.data() + off, 0x40), 0x40);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  BorrowedFd src{pipe.read_end};
  ASSERT_TRUE(mem.read_exact_volatile_from(GuestAddress{0xf80}, src, 0x100).has_value());
  writer.join();
  std::vector<std::byte> back(0x100);
  ASSERT_TRUE(mem.read_slice(back, GuestAddress{0xf80}).has_value());
  EXPECT_EQ(back, data);
}

TEST(BorrowedFd, EndOfFileIsAPartialBuffer) {
  auto mem = memory_of(1, 0x1000);
  Pipe pipe;
  ASSERT_EQ(::write(pipe.write_end.get(), "abc", 3), 3);
  pipe.write_end.reset();
  BorrowedFd src{pipe.read_end};
  EXPECT_EQ(mem.read_exact_volatile_from(GuestAddress{0}, src, 8).error(),
            Error::partial_buffer(8, 3));
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0}, src, 8), 0u) << "end of file";
}

TEST(BorrowedFd, ErrorsCarryErrno) {
  auto mem = memory_of(1, 0x1000);
  UniqueFd write_only{::open("/dev/null", O_WRONLY | O_CLOEXEC)};
  BorrowedFd src{write_only};
  auto r = mem.read_volatile_from(GuestAddress{0}, src, 16);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::IoError);
  EXPECT_EQ(r.error().os_error(), EBADF);
  EXPECT_EQ(r.error().completed(), 0u);
  BorrowedFd closed{-1};
  EXPECT_EQ(mem.write_all_volatile_to(GuestAddress{0}, closed, 4).error(), Error::io(EBADF, 0));
}

TEST(BorrowedFd, WriteAllToAPipe) {
  auto mem = memory_of(2, 0x1000);
  const auto data = pattern(0x2000, 1);
  ASSERT_TRUE(mem.write_slice(data, GuestAddress{0}).has_value());
  Pipe pipe;
  std::vector<std::byte> received;
  std::thread reader([&] {
    std::array<std::byte, 0x300> chunk{};
    ssize_t n;
    while ((n = ::read(pipe.read_end.get(), chunk.data(), chunk.size())) > 0) {
      received.insert(received.end(), chunk.begin(), chunk.begin() + n);
    }
  });
  BorrowedFd dst{pipe.write_end};
  ASSERT_TRUE(mem.write_all_volatile_to(GuestAddress{0}, dst, 0x2000).has_value());
  pipe.write_end.reset();
  reader.join();
  EXPECT_EQ(received, data);
}

std::atomic<int> g_signals{0};
void count_signal(int) { g_signals.fetch_add(1); }

TEST(BorrowedFd, RetriesOnEintr) {
  struct sigaction action {};
  action.sa_handler = count_signal;  // no SA_RESTART: a blocked read returns EINTR
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGUSR1, &action, &old), 0);
  auto mem = memory_of(1, 0x1000);
  Pipe pipe;
  const pthread_t reader = ::pthread_self();
  std::thread interrupter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::pthread_kill(reader, SIGUSR1);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_EQ(::write(pipe.write_end.get(), "12345678", 8), 8);
  });
  BorrowedFd src{pipe.read_end};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0}, src, 8), 8u);
  interrupter.join();
  EXPECT_EQ(g_signals.load(), 1) << "the read really was interrupted";
  EXPECT_EQ(mem.read_obj<std::uint8_t>(GuestAddress{7}), '8');
  ASSERT_EQ(::sigaction(SIGUSR1, &old, nullptr), 0);
}

TEST(BorrowedFd, VectoredTransfersSpanManyRegions) {
  // 40 adjacent regions of one page: more pieces than one readv batch.
  auto mem = memory_of(40, 0x1000);
  UniqueFd file = testing::memfd(0);
  const auto data = pattern(40 * 0x1000 - 0x20, 3);
  ASSERT_EQ(::write(file.get(), data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(::lseek(file.get(), 0, SEEK_SET), 0);
  BorrowedFd fd{file};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0x10}, fd, data.size()), data.size());
  std::vector<std::byte> back(data.size());
  ASSERT_TRUE(mem.read_slice(back, GuestAddress{0x10}).has_value());
  EXPECT_EQ(back, data);

  UniqueFd out = testing::memfd(0);
  BorrowedFd sink{out};
  ASSERT_TRUE(mem.write_all_volatile_to(GuestAddress{0x10}, sink, data.size()).has_value());
  std::vector<std::byte> written(data.size());
  ASSERT_EQ(::pread(out.get(), written.data(), written.size(), 0),
            static_cast<ssize_t>(written.size()));
  EXPECT_EQ(written, data);
}

// The kernel's copy in read(2) and write(2) races with other threads' accesses of the same guest
// bytes, as every guest access does: under ThreadSanitizer guestmem's own copies are relaxed
// atomics, and the kernel's side must look the same, or TSan reports a data race (and the
// test binary exits 66). In the other builds these tests check the data that arrived.
constexpr int kRacingRounds = 200;

// Whether each byte of `value` is one a round wrote (0 before the first round).
bool bytes_from_some_round(std::uint64_t value) {
  for (int i = 0; i < 8; ++i) {
    if (((value >> (8 * i)) & 0xff) > kRacingRounds) {
      return false;
    }
  }
  return true;
}

TEST(BorrowedFd, ReadVolatileFromWhileAnotherThreadLoadsTheSameBytes) {
  auto mem = memory_of(1, 0x1000);
  Pipe pipe;
  std::atomic<bool> started{false};
  std::atomic<bool> stop{false};
  std::atomic<int> foreign{0};
  std::thread loader([&] {
    started.store(true);
    while (!stop.load(std::memory_order_relaxed)) {
      const auto object = mem.read_obj<std::uint64_t>(GuestAddress{0x100});
      const auto word = mem.load<std::uint64_t>(GuestAddress{0x108}, std::memory_order_relaxed);
      if (!object || !word || !bytes_from_some_round(*object) || !bytes_from_some_round(*word)) {
        foreign.fetch_add(1);
      }
    }
  });
  while (!started.load()) {
    std::this_thread::yield();
  }
  BorrowedFd src{pipe.read_end};
  for (int round = 1; round <= kRacingRounds; ++round) {
    std::array<std::uint8_t, 16> chunk;
    chunk.fill(static_cast<std::uint8_t>(round));
    ASSERT_EQ(::write(pipe.write_end.get(), chunk.data(), chunk.size()), 16);
    ASSERT_EQ(mem.read_volatile_from(GuestAddress{0x100}, src, 16), 16u);
  }
  stop.store(true);
  loader.join();
  EXPECT_EQ(foreign.load(), 0);
  EXPECT_EQ(mem.read_obj<std::uint64_t>(GuestAddress{0x100}), 0xc8c8c8c8c8c8c8c8u);
  EXPECT_EQ(mem.read_obj<std::uint64_t>(GuestAddress{0x108}), 0xc8c8c8c8c8c8c8c8u);
}

TEST(BorrowedFd, WriteVolatileToWhileAnotherThreadStoresTheSameBytes) {
  auto mem = memory_of(2, 0x1000);
  Pipe pipe;
  std::atomic<bool> started{false};
  std::atomic<bool> stop{false};
  std::thread storer([&] {
    started.store(true);
    for (std::uint64_t round = 1; !stop.load(std::memory_order_relaxed); ++round) {
      const std::uint64_t value = (round % kRacingRounds) * 0x0101010101010101u;
      ASSERT_TRUE(mem.store(value, GuestAddress{0xff8}, std::memory_order_relaxed).has_value());
      ASSERT_TRUE(mem.write_obj(value, GuestAddress{0x1000}).has_value());
    }
  });
  while (!started.load()) {
    std::this_thread::yield();
  }
  BorrowedFd dst{pipe.write_end};
  int foreign = 0;
  for (int round = 0; round < kRacingRounds; ++round) {
    // Two pieces, one per region: one writev.
    ASSERT_EQ(mem.write_volatile_to(GuestAddress{0xff8}, dst, 16), 16u);
    std::array<std::uint64_t, 2> sent{};
    ASSERT_EQ(::read(pipe.read_end.get(), sent.data(), sizeof sent), 16);
    foreign += bytes_from_some_round(sent[0]) && bytes_from_some_round(sent[1]) ? 0 : 1;
  }
  stop.store(true);
  storer.join();
  EXPECT_EQ(foreign, 0);
}

TEST(BorrowedFd, ReadVolatileFromKeepsThePipeOrderingItsWriterBeforeItsReader) {
  // The pipe orders what its writer did before writing before what the reader does after
  // reading: a plain host value written first is seen, and under ThreadSanitizer its plain
  // accesses are not reported as a race, however the kernel's copy is annotated.
  auto mem = memory_of(1, 0x1000);
  Pipe pipe;
  std::uint64_t before_the_data = 0;
  std::thread writer([&] {
    before_the_data = 0x1234;
    ASSERT_EQ(::write(pipe.write_end.get(), "x", 1), 1);
  });
  BorrowedFd src{pipe.read_end};
  ASSERT_EQ(mem.read_volatile_from(GuestAddress{0}, src, 1), 1u);
  EXPECT_EQ(before_the_data, 0x1234u);
  EXPECT_EQ(mem.read_obj<std::uint8_t>(GuestAddress{0}), 'x');
  writer.join();
}

TEST(SpanReaderWriter, ConsumeFromTheFront) {
  auto mem = memory_of(1, 0x100);
  const auto data = pattern(0x40);
  SpanReader reader{data};
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0}, reader, 0x10), 0x10u);
  EXPECT_EQ(reader.remaining().size(), 0x30u);
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0x10}, reader, 0x100), 0x30u);
  EXPECT_EQ(mem.read_exact_volatile_from(GuestAddress{0}, reader, 1).error(),
            Error::partial_buffer(1, 0));
  std::array<std::byte, 0x18> space{};
  SpanWriter writer{space};
  EXPECT_EQ(mem.write_volatile_to(GuestAddress{0}, writer, 0x40), 0x18u);
  EXPECT_EQ(writer.remaining().size(), 0u);
  EXPECT_EQ(space[0x17], std::byte{0x17});
  EXPECT_EQ(mem.write_all_volatile_to(GuestAddress{0}, writer, 1).error(),
            Error::partial_buffer(1, 0));
}

// A source that lies about how much it read.
struct Liar {
  Result<std::size_t> read_volatile(const VolatileSlice<>& dst) { return dst.size() + 1; }
};

TEST(ReadVolatile, ClaimingMoreThanOfferedIsCaught) {
  auto mem = memory_of(1, 0x100);
  Liar liar;
  auto r = mem.read_volatile_from(GuestAddress{0}, liar, 0x10);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::CallbackOutOfRange);
  EXPECT_EQ(r.error().length(), 0x10u);
  EXPECT_EQ(r.error().expected(), 0x11u);
  EXPECT_EQ(mem.read_exact_volatile_from(GuestAddress{0}, liar, 0x10).error().code(),
            ErrorCode::CallbackOutOfRange);
}

// A source that fails after its first call.
struct FailsSecond {
  int calls = 0;
  Result<std::size_t> read_volatile(const VolatileSlice<>& dst) {
    if (calls++ > 0) {
      return std::unexpected(Error::io(EIO));
    }
    const auto data = pattern(dst.size());
    return dst.copy_from(std::span(data));
  }
};

TEST(ReadVolatile, AFailureAfterProgressReportsTheProgress) {
  auto mem = memory_of(2, 0x100);
  FailsSecond src;
  EXPECT_EQ(mem.read_volatile_from(GuestAddress{0x80}, src, 0x100), 0x80u)
      << "the first region's piece arrived; the failure shows on the next call";
  FailsSecond again;
  EXPECT_EQ(mem.read_exact_volatile_from(GuestAddress{0x80}, again, 0x100).error(),
            Error::io(EIO, 0x80));
}

}  // namespace
}  // namespace guestmem
