// Tests of fault-tolerant access: the primitives (guestmem/fault.hpp), the cursors
// (guestmem/vm_io.hpp) and the containers' fallible calls, with real faults: PROT_NONE pages,
// unmapped pages and memfds truncated under a mapping.
//
// Every test runs under every preset. Sanitizers change who handled SIGSEGV/SIGBUS before
// guestmem (ASan installs its own handlers; TSan interposes sigaction): the child-process
// tests therefore set the earlier handler themselves, in a fresh process (death-test style
// "threadsafe" re-executes the binary), so the expected outcome is the same everywhere.
#include "guestmem/vm_io.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/endian.hpp"
#include "guestmem/fault.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/guest_region.hpp"
#include "guestmem/volatile_slice.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::Marks;
using testing::pattern;
using testing::RecordingBitmap;

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

// Every death test here re-executes the binary for its child ("threadsafe"): the children
// that crash must start without guestmem's handler or any test thread, and the sanitizer
// runtimes' own threads make forking without exec unreliable. Set by a global environment,
// after gtest has parsed its flags and before the first test saves them.
class ThreadsafeDeathTests : public ::testing::Environment {
 public:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};
[[maybe_unused]] ::testing::Environment* const kThreadsafeDeathTests =
    ::testing::AddGlobalTestEnvironment(new ThreadsafeDeathTests);

// Lengths that reach every path of the copy routines: single accesses (1, 2, 4, 8), the
// overlapping small cases, the 16-31 case, and the blocks (x86-64: AVX2 blocks and
// `rep movsb`; aarch64: 64- and 16-byte blocks and the overlapping last 16 bytes).
constexpr std::size_t kLengths[] = {1,   2,   3,   4,    5,    7,    8,     9,     15,    16,
                                    17,  31,  32,  33,   127,  128,  129,   200,   4096,  5000,
                                    32767, 32768, 40000, 100000};

// An anonymous read-write mapping of whole pages, unmapped on destruction.
class Pages {
 public:
  explicit Pages(std::size_t count) : size_(count * kPage) {
    void* addr = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(addr, MAP_FAILED);
    base_ = static_cast<std::uint8_t*>(addr);
  }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;
  ~Pages() {
    for (std::size_t at = 0; at < size_; at += kPage) {
      if (!unmapped_[at / kPage]) {
        ::munmap(base_ + at, kPage);
      }
    }
  }
  [[nodiscard]] std::uint8_t* page(std::size_t index) const { return base_ + index * kPage; }
  void protect(std::size_t index, int prot) const {
    ASSERT_EQ(::mprotect(page(index), kPage, prot), 0);
  }
  void unmap(std::size_t index) {
    ASSERT_EQ(::munmap(page(index), kPage), 0);
    unmapped_[index] = true;
  }

 private:
  std::size_t size_;
  std::uint8_t* base_ = nullptr;
  std::array<bool, 16> unmapped_{};
};

std::uintptr_t address_of(const void* pointer) { return reinterpret_cast<std::uintptr_t>(pointer); }

// ---- the primitives ------------------------------------------------------------------------

TEST(FaultHandler, InstallsOnceAndSucceeds) {
  ASSERT_TRUE(install_fault_handler().has_value());
  ASSERT_TRUE(install_fault_handler().has_value());
  EXPECT_TRUE(detail::fault_handler_ready.load());
}

TEST(FallibleCopy, CopiesEveryLengthAndAlignment) {
  for (std::size_t len : kLengths) {
    for (std::size_t shift : {std::size_t{0}, std::size_t{1}, std::size_t{3}}) {
      const auto src = pattern(len + shift, static_cast<std::uint8_t>(len));
      std::vector<std::byte> dst(len + shift + 1);
      const FallibleOutcome copied = fallible_copy(dst.data() + shift, src.data() + shift, len);
      EXPECT_EQ(copied.done, len);
      EXPECT_FALSE(copied.fault.has_value());
      EXPECT_EQ(std::memcmp(dst.data() + shift, src.data() + shift, len), 0) << len;
      EXPECT_EQ(dst[len + shift], std::byte{0}) << "wrote past the end, len " << len;
    }
  }
  EXPECT_EQ(fallible_copy(nullptr, nullptr, 0).done, 0u);
}

// Copies `len` bytes that run into page 1 of a three-page mapping `before` bytes before it,
// in both directions, and checks the exact count, the address and the signal.
void expect_stops_at_page(Pages& pages, int signal, std::size_t len, std::size_t before) {
  std::uint8_t* guest = pages.page(1) - before;
  const std::uintptr_t lost = address_of(pages.page(1));
  std::vector<std::byte> host = pattern(len, 0x40);
  // SAFETY (test): the bytes before page 1 are mapped and writable.
  std::memset(guest, 0x11, before);

  const FallibleOutcome written = fallible_copy(guest, host.data(), len);
  EXPECT_EQ(written.done, before) << "write of " << len;
  ASSERT_TRUE(written.fault.has_value());
  EXPECT_EQ(written.fault->address, lost);
  EXPECT_EQ(written.fault->signal, signal);
  EXPECT_EQ(std::memcmp(guest, host.data(), before), 0);

  std::vector<std::byte> back(len, std::byte{0xee});
  const FallibleOutcome read = fallible_copy(back.data(), guest, len);
  EXPECT_EQ(read.done, before) << "read of " << len;
  ASSERT_TRUE(read.fault.has_value());
  EXPECT_EQ(read.fault->address, lost);
  EXPECT_EQ(read.fault->signal, signal);
  EXPECT_EQ(std::memcmp(back.data(), host.data(), before), 0);
  for (std::size_t i = before; i < len; ++i) {
    ASSERT_EQ(back[i], std::byte{0xee}) << "wrote past the fault at " << i << " of " << len;
  }

  const FallibleOutcome filled = fallible_fill(guest, 0x5a, len);
  EXPECT_EQ(filled.done, before) << "fill of " << len;
  ASSERT_TRUE(filled.fault.has_value());
  EXPECT_EQ(filled.fault->address, lost);
  EXPECT_EQ(filled.fault->signal, signal);
  for (std::size_t i = 0; i < before; ++i) {
    ASSERT_EQ(guest[i], 0x5a);
  }
}

void expect_stops_at_page_for_every_length(Pages& pages, int signal) {
  for (std::size_t len : kLengths) {
    for (std::size_t before : {std::size_t{0}, std::size_t{1}, len / 2, len - 1, kPage}) {
      if (before < len && before <= kPage) {
        expect_stops_at_page(pages, signal, len, before);
      }
    }
  }
}

TEST(FallibleCopy, StopsExactlyAtAProtNonePage) {
  Pages pages(3);
  pages.protect(1, PROT_NONE);
  expect_stops_at_page_for_every_length(pages, SIGSEGV);
}

TEST(FallibleCopy, StopsExactlyAtAnUnmappedPage) {
  Pages pages(3);
  pages.unmap(1);
  expect_stops_at_page_for_every_length(pages, SIGSEGV);
}

TEST(FallibleCopy, WriteStopsAtAReadOnlyPageThatReadsFine) {
  Pages pages(2);
  std::memset(pages.page(1), 0x22, kPage);
  pages.protect(1, PROT_READ);
  std::vector<std::byte> host = pattern(200);
  const FallibleOutcome written = fallible_copy(pages.page(1) - 100, host.data(), 200);
  EXPECT_EQ(written.done, 100u);
  ASSERT_TRUE(written.fault.has_value());
  EXPECT_EQ(written.fault->address, address_of(pages.page(1)));
  EXPECT_EQ(written.fault->signal, SIGSEGV);
  const FallibleOutcome read = fallible_copy(host.data(), pages.page(1) - 100, 200);
  EXPECT_EQ(read.done, 200u);
  EXPECT_FALSE(read.fault.has_value());
  EXPECT_EQ(host[150], std::byte{0x22});
}

TEST(FallibleCopy, TruncatedMemfdGivesSigbusAtTheLostPage) {
  UniqueFd fd = testing::memfd(4 * kPage);
  void* addr = ::mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(addr, MAP_FAILED);
  auto* guest = static_cast<std::uint8_t*>(addr);
  std::memset(guest, 0x33, 4 * kPage);
  ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(2 * kPage)), 0);
  std::vector<std::byte> host(4 * kPage);
  const FallibleOutcome read = fallible_copy(host.data(), guest, 4 * kPage);
  EXPECT_EQ(read.done, 2 * kPage);
  ASSERT_TRUE(read.fault.has_value());
  EXPECT_EQ(read.fault->address, address_of(guest + 2 * kPage));
  EXPECT_EQ(read.fault->signal, SIGBUS);
  EXPECT_EQ(host[2 * kPage - 1], std::byte{0x33});
  ::munmap(addr, 4 * kPage);
}

TEST(FallibleLoadStore, EverySizeWorksAndFaults) {
  Pages pages(2);
  std::uint8_t* ok = pages.page(0);
  std::uint8_t* bad = pages.page(1);
  pages.protect(1, PROT_NONE);
  const FaultInfo fault{address_of(bad), SIGSEGV};

  EXPECT_TRUE(fallible_store<std::uint8_t>(ok, 0xab).has_value());
  EXPECT_EQ(fallible_load<std::uint8_t>(ok), 0xab);
  EXPECT_TRUE(fallible_store<std::uint16_t>(ok + 2, 0xabcd).has_value());
  EXPECT_EQ(fallible_load<std::uint16_t>(ok + 2), 0xabcd);
  EXPECT_TRUE(fallible_store<std::uint32_t>(ok + 4, 0x89abcdef).has_value());
  EXPECT_EQ(fallible_load<std::uint32_t>(ok + 4), 0x89abcdefu);
  EXPECT_TRUE(fallible_store_seq_cst<std::uint64_t>(ok + 8, 0x0123456789abcdef).has_value());
  EXPECT_EQ(fallible_load<std::uint64_t>(ok + 8), 0x0123456789abcdefu);
  EXPECT_EQ(fallible_load<std::int16_t>(ok + 2), static_cast<std::int16_t>(0xabcd));
  EXPECT_TRUE(fallible_store_seq_cst<std::uint8_t>(ok + 1, 0x12).has_value());
  EXPECT_TRUE(fallible_store_seq_cst<std::int16_t>(ok + 2, -2).has_value());
  EXPECT_TRUE(fallible_store_seq_cst<std::uint32_t>(ok + 4, 0x01020304).has_value());
  EXPECT_EQ(fallible_load<std::uint64_t>(ok), 0x01020304fffe12abu);

  EXPECT_EQ(fallible_load<std::uint8_t>(bad).error(), fault);
  EXPECT_EQ(fallible_load<std::uint16_t>(bad).error(), fault);
  EXPECT_EQ(fallible_load<std::uint32_t>(bad).error(), fault);
  EXPECT_EQ(fallible_load<std::uint64_t>(bad).error(), fault);
  EXPECT_EQ(fallible_store<std::uint8_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store<std::uint16_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store<std::uint32_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store<std::uint64_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store_seq_cst<std::uint8_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store_seq_cst<std::uint16_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store_seq_cst<std::uint32_t>(bad, 1).error(), fault);
  EXPECT_EQ(fallible_store_seq_cst<std::uint64_t>(bad, 1).error(), fault);
  EXPECT_EQ((fallible_compare_exchange<std::uint8_t>(bad, 0, 1).error()), fault);
  EXPECT_EQ((fallible_compare_exchange<std::uint16_t>(bad, 0, 1).error()), fault);
  EXPECT_EQ((fallible_compare_exchange<std::uint32_t>(bad, 0, 1).error()), fault);
  EXPECT_EQ((fallible_compare_exchange<std::uint64_t>(bad, 0, 1).error()), fault);
  // A load of 8 bytes that starts 4 bytes before the bad page faults at the page.
  EXPECT_EQ(fallible_load<std::uint64_t>(bad - 4).error(), fault);
}

TEST(FallibleLoadStore, CompareExchangeSwapsOnlyOnAMatch) {
  Pages pages(1);
  std::uint8_t* ok = pages.page(0);
  EXPECT_TRUE(fallible_store<std::uint32_t>(ok, 5).has_value());
  EXPECT_EQ(fallible_compare_exchange<std::uint32_t>(ok, 4, 9), 5u);
  EXPECT_EQ(fallible_load<std::uint32_t>(ok), 5u);
  EXPECT_EQ(fallible_compare_exchange<std::uint32_t>(ok, 5, 9), 5u);
  EXPECT_EQ(fallible_load<std::uint32_t>(ok), 9u);
  EXPECT_EQ(fallible_compare_exchange<std::uint8_t>(ok + 8, 0, 0xff), 0u);
  EXPECT_EQ(fallible_compare_exchange<std::uint16_t>(ok + 10, 0, 0xffff), 0u);
  EXPECT_EQ(fallible_compare_exchange<std::uint64_t>(ok + 16, 0, ~std::uint64_t{0}), 0u);
  EXPECT_EQ(fallible_load<std::uint64_t>(ok + 16), ~std::uint64_t{0});
  EXPECT_EQ(fallible_load<std::uint8_t>(ok + 8), 0xffu);
  EXPECT_EQ(fallible_load<std::uint16_t>(ok + 10), 0xffffu);
  // A locked compare-exchange always writes, so a read-only page faults even on a mismatch.
  pages.protect(0, PROT_READ);
  EXPECT_EQ((fallible_compare_exchange<std::uint32_t>(ok, 4, 1).error()),
            (FaultInfo{address_of(ok), SIGSEGV}));
}

TEST(FaultHandler, FaultsInSeveralThreadsAtOnce) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&wrong, t] {
      Pages pages(2);
      pages.protect(1, PROT_NONE);
      const std::size_t before = 64 * static_cast<std::size_t>(t + 1);
      std::vector<std::byte> host(kPage);
      for (int round = 0; round < kRounds; ++round) {
        const FallibleOutcome read = fallible_copy(host.data(), pages.page(1) - before, kPage);
        if (read.done != before || !read.fault || read.fault->address != address_of(pages.page(1)) ||
            read.fault->signal != SIGSEGV) {
          wrong.fetch_add(1);
        }
        if (fallible_load<std::uint32_t>(pages.page(1)).error() !=
            FaultInfo{address_of(pages.page(1)), SIGSEGV}) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(wrong.load(), 0);
}

// ---- the handler in child processes ----------------------------------------------------------

// No core files from the children that are meant to crash.
void no_core_dumps() {
  const rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
}

void set_action(int signal, void (*handler)(int)) {
  struct sigaction action = {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  ::sigaction(signal, &action, nullptr);
}

// A recovered fault, then `crash` outside the primitives. Exits 3 when the recovered fault is
// not reported exactly (so the test fails with the wrong exit status).
template <class Crash>
void recover_then(Crash crash) {
  no_core_dumps();
  if (!install_fault_handler()) {
    ::_exit(2);
  }
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  std::array<std::byte, 16> host{};
  const FallibleOutcome read = fallible_copy(host.data(), pages.page(1) - 8, 16);
  if (read.done != 8 || !read.fault || read.fault->address != address_of(pages.page(1))) {
    ::_exit(3);
  }
  crash(pages.page(1));
}

void write_to(std::uint8_t* address) { *reinterpret_cast<volatile std::uint8_t*>(address) = 1; }

// Published by the crashing code for the handler. Volatile, because the write that faults is
// volatile too and the compiler keeps volatile accesses in program order: with a plain variable
// an optimising build may move the store after the fault, and the handler reads a stale value.
volatile std::uintptr_t expected_address = 0;

void exit_42_if_at_expected(int signal, siginfo_t* info, void* /*context*/) {
  ::_exit(signal == SIGSEGV && address_of(info->si_addr) == expected_address ? 42 : 4);
}

void exit_43_if_sent(int signal, siginfo_t* info, void* /*context*/) {
  ::_exit(signal == SIGSEGV && info->si_code == SI_TKILL ? 43 : 5);
}

void exit_44(int signal) { ::_exit(signal == SIGBUS ? 44 : 6); }

TEST(FaultHandlerDeathTest, CrashOutsideThePrimitivesDiesOfSigsegv) {
  EXPECT_EXIT(
      {
        set_action(SIGSEGV, SIG_DFL);
        recover_then(write_to);
      },
      ::testing::KilledBySignal(SIGSEGV), "");
}

TEST(FaultHandlerDeathTest, CrashOutsideThePrimitivesDiesOfSigbus) {
  EXPECT_EXIT(
      {
        set_action(SIGBUS, SIG_DFL);
        recover_then([](std::uint8_t*) {
          UniqueFd fd = testing::memfd(kPage);
          void* addr = ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd.get(), 0);
          ::ftruncate(fd.get(), 0);
          (void)*static_cast<volatile std::uint8_t*>(addr);
        });
      },
      ::testing::KilledBySignal(SIGBUS), "");
}

TEST(FaultHandlerDeathTest, FaultOutsideThePrimitivesReachesTheEarlierHandler) {
  EXPECT_EXIT(
      {
        struct sigaction action = {};
        action.sa_sigaction = exit_42_if_at_expected;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        ::sigaction(SIGSEGV, &action, nullptr);
        recover_then([](std::uint8_t* bad) {
          expected_address = address_of(bad);
          write_to(bad);
        });
      },
      ::testing::ExitedWithCode(42), "");
}

TEST(FaultHandlerDeathTest, FaultOutsideThePrimitivesReachesAnEarlierPlainHandler) {
  EXPECT_EXIT(
      {
        set_action(SIGBUS, exit_44);
        recover_then([](std::uint8_t*) {
          UniqueFd fd = testing::memfd(kPage);
          void* addr = ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd.get(), 0);
          ::ftruncate(fd.get(), 0);
          (void)*static_cast<volatile std::uint8_t*>(addr);
        });
      },
      ::testing::ExitedWithCode(44), "");
}

TEST(FaultHandlerDeathTest, SentSignalIsNeverTakenForAFault) {
  EXPECT_EXIT(
      {
        struct sigaction action = {};
        action.sa_sigaction = exit_43_if_sent;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        ::sigaction(SIGSEGV, &action, nullptr);
        recover_then([](std::uint8_t*) { ::raise(SIGSEGV); });
      },
      ::testing::ExitedWithCode(43), "");
}

TEST(FaultHandlerDeathTest, IgnoredSignalStaysIgnoredWhenSentButNotWhenAFault) {
  EXPECT_EXIT(
      {
        set_action(SIGSEGV, SIG_IGN);
        recover_then([](std::uint8_t* bad) {
          ::raise(SIGSEGV);
          write_to(bad);
        });
      },
      ::testing::KilledBySignal(SIGSEGV), "");
}

// ---- chaining honours the earlier action's flags and mask ------------------------------------

volatile sig_atomic_t earlier_handler_calls = 0;

// An earlier handler that counts its calls and returns, so that the faulting write is retried.
// It says so once on stderr; a second call exits 7 (an SA_RESETHAND action must be reset to
// SIG_DFL by the first one, as the kernel does).
void count_and_return(int /*signal*/) {
  earlier_handler_calls = earlier_handler_calls + 1;
  if (earlier_handler_calls > 1) {
    ::_exit(7);
  }
  static constexpr char kRan[] = "earlier handler ran once\n";
  [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, kRan, sizeof kRan - 1);
}

TEST(FaultHandlerDeathTest, EarlierResetHandHandlerRunsOnceThenTheDefaultActionKills) {
  EXPECT_EXIT(
      {
        struct sigaction action = {};
        action.sa_handler = count_and_return;
        action.sa_flags = static_cast<int>(SA_RESETHAND);  // 0x80000000, an unsigned constant
        sigemptyset(&action.sa_mask);
        ::sigaction(SIGSEGV, &action, nullptr);
        recover_then(write_to);
      },
      ::testing::KilledBySignal(SIGSEGV), "earlier handler ran once");
}

// What the earlier handler saw of its thread's signal mask: 1 blocked, 0 not, -1 not called.
volatile sig_atomic_t usr1_blocked_inside = -1;
volatile sig_atomic_t segv_blocked_inside = -1;

// An earlier handler that records the mask it runs with, makes the faulting page writable and
// returns, so that the write is retried and succeeds.
void record_mask_and_unprotect(int /*signal*/, siginfo_t* info, void* /*context*/) {
  sigset_t inside;
  ::pthread_sigmask(SIG_BLOCK, nullptr, &inside);
  usr1_blocked_inside = sigismember(&inside, SIGUSR1);
  segv_blocked_inside = sigismember(&inside, SIGSEGV);
  const std::uintptr_t page = address_of(info->si_addr) & ~(kPage - 1);
  ::mprotect(reinterpret_cast<void*>(page), kPage, PROT_READ | PROT_WRITE);
}

// Installs record_mask_and_unprotect as the earlier SIGSEGV action with `flags` and an sa_mask
// of `masked`, recovers a fault, then writes to the protected page outside the primitives.
// Exits 40, plus 1 if SIGUSR1 was blocked in the handler, 2 if SIGSEGV was, 4 if either is
// still blocked after it returned, 8 if the retried write did not happen.
void exit_with_the_mask_seen(int flags, std::initializer_list<int> masked) {
  struct sigaction action = {};
  action.sa_sigaction = record_mask_and_unprotect;
  action.sa_flags = SA_SIGINFO | flags;
  sigemptyset(&action.sa_mask);
  for (const int signal : masked) {
    sigaddset(&action.sa_mask, signal);
  }
  ::sigaction(SIGSEGV, &action, nullptr);
  recover_then([](std::uint8_t* bad) {
    write_to(bad);
    sigset_t after;
    ::pthread_sigmask(SIG_BLOCK, nullptr, &after);
    int code = 40;
    code += usr1_blocked_inside == 1 ? 1 : 0;
    code += segv_blocked_inside == 1 ? 2 : 0;
    code += sigismember(&after, SIGUSR1) == 1 || sigismember(&after, SIGSEGV) == 1 ? 4 : 0;
    code += *reinterpret_cast<volatile std::uint8_t*>(bad) != 1 ? 8 : 0;
    ::_exit(code);
  });
}

TEST(FaultHandlerDeathTest, EarlierHandlerRunsWithItsSaMaskAndTheSignalBlocked) {
  EXPECT_EXIT(exit_with_the_mask_seen(0, {SIGUSR1}), ::testing::ExitedWithCode(43), "");
}

TEST(FaultHandlerDeathTest, EarlierNodeferHandlerRunsWithTheSignalDeliverable) {
  EXPECT_EXIT(exit_with_the_mask_seen(SA_NODEFER, {}), ::testing::ExitedWithCode(40), "");
}

// ---- cursors ---------------------------------------------------------------------------------

static_assert(PodOnce<std::uint32_t> && PodOnce<std::int64_t> && PodOnce<Le32>);
static_assert(!PodOnce<std::array<std::uint8_t, 4>> && !PodOnce<const std::uint32_t>);
static_assert(Fallibility<Fallible> && Fallibility<Infallible> && !Fallibility<int>);

TEST(VmReader, InfallibleCursorOperations) {
  const auto source = pattern(32);
  auto reader = VmReader<Infallible>::from_bytes(source);
  EXPECT_EQ(reader.remain(), 32u);
  EXPECT_TRUE(reader.has_remain());
  reader.skip(4).limit(20);
  EXPECT_EQ(reader.remain(), 20u);
  EXPECT_EQ(reader.cursor(), reinterpret_cast<const std::uint8_t*>(source.data()) + 4);
  reader.limit(100);
  EXPECT_EQ(reader.remain(), 20u);

  std::vector<std::byte> sink(8);
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_EQ(reader.read(writer), 8u);
  EXPECT_EQ(reader.remain(), 12u);
  EXPECT_EQ(writer.avail(), 0u);
  EXPECT_FALSE(writer.has_avail());
  EXPECT_EQ(sink, pattern(8, 4));
  EXPECT_EQ(reader.read(writer), 0u);

  EXPECT_EQ(reader.read_val<std::uint32_t>(), 0x0f0e0d0cu);
  EXPECT_EQ(reader.read_once<std::uint32_t>(), 0x13121110u);
  EXPECT_EQ(reader.remain(), 4u);
  EXPECT_EQ(reader.read_val<std::uint64_t>().error(), Error::out_of_bounds(0, 8, 4));
  EXPECT_EQ(reader.remain(), 4u);
  EXPECT_DEATH(reader.skip(5), "skip past the end");
}

TEST(VmReader, ReadOnceRequiresAlignment) {
  alignas(8) std::array<std::byte, 16> source{};
  auto reader = VmReader<Infallible>::from_bytes(source);
  reader.skip(2);
  EXPECT_EQ(reader.read_once<std::uint32_t>().error(),
            Error::misaligned(address_of(source.data() + 2), 4));
  EXPECT_EQ(reader.to_fallible().read_once<std::uint64_t>().error().code(), ErrorCode::Misaligned);
  EXPECT_EQ(reader.remain(), 14u);
  EXPECT_EQ(reader.read_once<std::uint16_t>(), 0u);
}

TEST(VmWriter, InfallibleCursorOperations) {
  alignas(8) std::array<std::byte, 24> sink{};
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_TRUE(writer.write_val(std::uint32_t{0x04030201}).has_value());
  EXPECT_TRUE(writer.write_once(std::uint32_t{0x08070605}).has_value());
  EXPECT_TRUE(writer.write_once(std::uint16_t{1}).has_value());
  EXPECT_EQ(writer.write_once(std::uint32_t{1}).error(),
            Error::misaligned(address_of(sink.data() + 10), 4));
  std::memset(sink.data() + 10, 0xff, 14);
  EXPECT_EQ(writer.fill_zeros(100), 14u);
  EXPECT_EQ(writer.avail(), 0u);
  EXPECT_EQ(writer.write_val(std::uint8_t{1}).error(), Error::out_of_bounds(0, 1, 0));
  EXPECT_EQ(sink[0], std::byte{1});
  EXPECT_EQ(sink[7], std::byte{8});
  EXPECT_EQ(sink[23], std::byte{0});

  const auto source = pattern(4);
  auto reader = VmReader<Infallible>::from_bytes(source);
  auto again = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_EQ(again.skip(20).write(reader), 4u);
  EXPECT_EQ(sink[20], std::byte{0});
  EXPECT_EQ(sink[23], std::byte{3});
  EXPECT_DEATH(again.skip(1), "skip past the end");
}

TEST(VmWriter, ReportsEveryWriteToTheBitmapAndNotSkips) {
  RecordingBitmap bitmap;
  alignas(8) std::array<std::byte, 32> sink{};
  auto writer = VmWriter<Infallible, RecordingBitmap::Slice>::from_raw_parts(
      reinterpret_cast<std::uint8_t*>(sink.data()), sink.size(), bitmap.slice_at(0x100));
  writer.skip(4);
  EXPECT_TRUE(writer.write_val(std::uint32_t{1}).has_value());
  EXPECT_TRUE(writer.write_once(std::uint64_t{2}).has_value());
  EXPECT_EQ(writer.fill_zeros(3), 3u);
  auto fallible = writer.to_fallible();
  EXPECT_EQ(fallible.avail(), 13u);
  EXPECT_EQ(fallible.fill_zeros(5), 5u);
  EXPECT_EQ(bitmap.take(), (Marks{{0x104, 4}, {0x108, 8}, {0x110, 3}, {0x113, 5}}));
}

TEST(VmReader, FallibleReadStopsAtTheFaultAndKeepsTheCursorThere) {
  Pages pages(2);
  std::memset(pages.page(0), 0x44, kPage);
  pages.protect(1, PROT_NONE);
  auto reader = VmReader<Fallible>::from_raw_parts(pages.page(1) - 100, 300);
  std::vector<std::byte> sink(400);
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  auto read = reader.read_fallible(writer);
  ASSERT_FALSE(read.has_value());
  EXPECT_EQ(read.error(), Error::fault(address_of(pages.page(1)), SIGSEGV, 300, 100));
  EXPECT_EQ(reader.remain(), 200u);
  EXPECT_EQ(reader.cursor(), pages.page(1));
  EXPECT_EQ(writer.avail(), 300u);
  EXPECT_EQ(sink[99], std::byte{0x44});
  EXPECT_EQ(sink[100], std::byte{0});

  auto before = VmReader<Fallible>::from_raw_parts(pages.page(1) - 4, 8);
  EXPECT_EQ(before.read_val<std::uint64_t>().error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 8, 4));
  EXPECT_EQ(before.remain(), 8u);
  auto inside = VmReader<Fallible>::from_raw_parts(pages.page(1), 8);
  EXPECT_EQ(inside.read_once<std::uint64_t>().error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 8, 0));
  auto good = VmReader<Fallible>::from_raw_parts(pages.page(0), 8);
  EXPECT_EQ(good.read_once<std::uint32_t>(), 0x44444444u);
  EXPECT_EQ(good.read_val<std::uint32_t>(), 0x44444444u);
}

TEST(VmWriter, FallibleWritesReportBytesDoneBeforeTheFault) {
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  RecordingBitmap bitmap;
  auto writer = VmWriter<Fallible, RecordingBitmap::Slice>::from_raw_parts(
      pages.page(1) - 16, 64, bitmap.slice_at(0));
  const auto source = pattern(64);
  auto reader = VmReader<Infallible>::from_bytes(source);
  writer.skip(8);
  auto written = writer.write_fallible(reader);
  EXPECT_EQ(written.error(), Error::fault(address_of(pages.page(1)), SIGSEGV, 56, 8));
  EXPECT_EQ(writer.avail(), 48u);
  EXPECT_EQ(reader.remain(), 56u);
  EXPECT_EQ(bitmap.take(), (Marks{{8, 8}}));

  auto value = VmWriter<Fallible, RecordingBitmap::Slice>::from_raw_parts(pages.page(1) - 2, 8,
                                                                          bitmap.slice_at(0));
  EXPECT_EQ(value.write_val(std::uint64_t{~0ull}).error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 8, 2));
  EXPECT_EQ(value.avail(), 8u);
  EXPECT_EQ(bitmap.take(), (Marks{{0, 2}}));
  EXPECT_EQ(pages.page(1)[-1], 0xff);

  auto zeros = VmWriter<Fallible>::from_raw_parts(pages.page(1) - 3, 10);
  EXPECT_EQ(zeros.fill_zeros(20).error(), Error::fault(address_of(pages.page(1)), SIGSEGV, 10, 3));
  EXPECT_EQ(zeros.avail(), 7u);
  EXPECT_EQ(pages.page(1)[-1], 0);
  auto once = VmWriter<Fallible>::from_raw_parts(pages.page(1), 8);
  EXPECT_EQ(once.write_once(std::uint32_t{1}).error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 4, 0));
  EXPECT_EQ(once.avail(), 8u);
}

// ---- containers ----------------------------------------------------------------------------

// Two adjacent regions of four pages each, backed by memfds, with a recording bitmap.
struct FileBackedMemory {
  FileBackedMemory() {
    std::vector<RegionSpec> specs;
    specs.push_back(RegionSpec{GuestAddress{0x10000}, 4 * kPage, FileOffset(testing::memfd(4 * kPage), 0)});
    specs.push_back(
        RegionSpec{GuestAddress{0x10000 + 4 * kPage}, 4 * kPage, FileOffset(testing::memfd(4 * kPage), 0)});
    auto built = GuestMemoryMmap<RecordingBitmap>::from_ranges_with_files(specs);
    EXPECT_TRUE(built.has_value());
    mem = std::move(*built);
  }
  // Truncates the second region's file to `pages` pages.
  void truncate_second(std::size_t pages) const {
    const auto* region = mem.find_region(second());
    ASSERT_EQ(::ftruncate(region->file_offset()->fd(), static_cast<off_t>(pages * kPage)), 0);
  }
  [[nodiscard]] GuestAddress second() const { return GuestAddress{0x10000 + 4 * kPage}; }
  [[nodiscard]] std::uintptr_t host(GuestAddress addr) const { return address_of(*mem.get_host_address(addr)); }

  GuestMemoryMmap<RecordingBitmap> mem;
};

TEST(GuestMemoryMmap, TryReadAcrossRegionsStopsAtTheTruncatedPage) {
  FileBackedMemory f;
  const auto data = pattern(8 * kPage);
  ASSERT_TRUE(f.mem.write_slice(data, GuestAddress{0x10000}).has_value());
  // The reader exists before the file shrinks under it.
  auto reader = f.mem.reader(f.second(), 2 * kPage);
  ASSERT_TRUE(reader.has_value());
  f.truncate_second(1);
  const GuestAddress lost = f.second().unchecked_add(kPage);
  std::vector<std::byte> out(8 * kPage);
  auto read = f.mem.try_read(out, GuestAddress{0x10000});
  ASSERT_FALSE(read.has_value());
  EXPECT_EQ(read.error(), Error::fault(f.host(f.second()) + kPage, SIGBUS, 8 * kPage, 5 * kPage));
  EXPECT_EQ(GuestAddress{0x10000}.unchecked_add(read.error().completed()), lost);
  EXPECT_EQ(std::memcmp(out.data(), data.data(), 5 * kPage), 0);
  EXPECT_EQ(f.mem.try_read_slice(out, GuestAddress{0x10000}).error().code(), ErrorCode::Fault);
  std::vector<std::byte> sink(2 * kPage);
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_EQ(reader->read_fallible(writer).error(),
            Error::fault(f.host(lost), SIGBUS, 2 * kPage, kPage));
  EXPECT_EQ(reader->remain(), kPage);
  EXPECT_EQ(f.mem.try_read_obj<std::uint64_t>(lost).error(),
            Error::fault(f.host(lost), SIGBUS, 8, 0));
  EXPECT_EQ(f.mem.try_load<std::uint64_t>(lost, std::memory_order_acquire).error(),
            Error::fault(f.host(lost), SIGBUS, 8, 0));
  EXPECT_EQ(f.mem.try_read_obj<std::uint64_t>(lost.unchecked_sub(8)),
            f.mem.read_obj<std::uint64_t>(lost.unchecked_sub(8)));
}

TEST(GuestMemoryMmap, TryWriteMarksExactlyTheBytesWrittenBeforeTheFault) {
  FileBackedMemory f;
  f.truncate_second(1);
  const auto& first = f.mem.find_region(GuestAddress{0x10000})->bitmap();
  const auto& second = f.mem.find_region(f.second())->bitmap();
  const auto data = pattern(3 * kPage);
  const GuestAddress start = f.second().unchecked_sub(kPage);
  const GuestAddress gone = f.second().unchecked_add(kPage);
  const std::uintptr_t lost = f.host(gone);
  EXPECT_EQ(f.mem.try_write(data, start).error(), Error::fault(lost, SIGBUS, 3 * kPage, 2 * kPage));
  EXPECT_EQ(first.take(), (Marks{{3 * kPage, kPage}}));
  EXPECT_EQ(second.take(), (Marks{{0, kPage}}));
  EXPECT_EQ(f.mem.try_write_slice(data, start).error(),
            Error::fault(lost, SIGBUS, 3 * kPage, 2 * kPage));
  EXPECT_EQ(first.take(), (Marks{{3 * kPage, kPage}}));
  EXPECT_EQ(second.take(), (Marks{{0, kPage}}));

  EXPECT_EQ(f.mem.try_write_obj(std::uint32_t{1}, gone).error(), Error::fault(lost, SIGBUS, 4, 0));
  EXPECT_EQ(f.mem.try_store(std::uint32_t{1}, gone, std::memory_order_seq_cst).error(),
            Error::fault(lost, SIGBUS, 4, 0));
  EXPECT_EQ(f.mem.try_compare_exchange<std::uint32_t>(gone, 0, 1).error(),
            Error::fault(lost, SIGBUS, 4, 0));
  EXPECT_TRUE(second.take().empty());
  auto writer = f.mem.writer(gone.unchecked_sub(4), 8);
  ASSERT_TRUE(writer.has_value());
  EXPECT_EQ(writer->fill_zeros(8).error(), Error::fault(lost, SIGBUS, 8, 4));
  EXPECT_EQ(second.take(), (Marks{{kPage - 4, 4}}));
}

TEST(GuestMemoryMmap, FallibleCallsFollowTheAccessRules) {
  FileBackedMemory f;
  const GuestAddress end = f.second().unchecked_add(4 * kPage);
  std::array<std::byte, 16> buf{};
  EXPECT_EQ(f.mem.try_read(std::span<std::byte>(), GuestAddress{0}), 0u);
  EXPECT_EQ(f.mem.try_read(buf, GuestAddress{0}).error(), Error::invalid_guest_address(GuestAddress{0}));
  EXPECT_EQ(f.mem.try_read(buf, end.unchecked_sub(4)), 4u);
  EXPECT_EQ(f.mem.try_write(buf, end.unchecked_sub(6)), 6u);
  EXPECT_EQ(f.mem.try_read_slice(buf, end.unchecked_sub(4)).error(), Error::partial_buffer(16, 4));
  EXPECT_EQ(f.mem.try_write_slice(buf, end).error(), Error::invalid_guest_address(end));
  EXPECT_EQ(f.mem.try_read_obj<std::uint64_t>(end).error(), Error::invalid_guest_address(end));
  EXPECT_EQ(f.mem.try_load<std::uint32_t>(f.second().unchecked_sub(2), std::memory_order_relaxed).error(),
            Error::invalid_backend_address(f.second().unchecked_sub(2).raw_value()));
  EXPECT_EQ(f.mem.try_store(std::uint32_t{1}, GuestAddress{0x10002}, std::memory_order_release).error(),
            Error::invalid_backend_address(0x10002));
  EXPECT_EQ(f.mem.reader(f.second().unchecked_sub(8), 16).error(),
            Error::invalid_backend_address(f.second().unchecked_sub(8).raw_value()));
  EXPECT_EQ(f.mem.writer(end, 1).error(), Error::invalid_guest_address(end));
  EXPECT_EQ(f.mem.reader(end, 0)->remain(), 0u);
  EXPECT_DEATH((void)f.mem.try_load<std::uint32_t>(GuestAddress{0x10000}, std::memory_order_release),
               "release");

  (void)f.mem.find_region(f.second())->bitmap().take();
  ASSERT_TRUE(f.mem.try_store(std::uint64_t{7}, f.second(), std::memory_order_relaxed).has_value());
  EXPECT_EQ(f.mem.try_load<std::uint64_t>(f.second(), std::memory_order_seq_cst), 7u);
  EXPECT_EQ(f.mem.try_compare_exchange<std::uint64_t>(f.second(), 6, 9), 7u);
  EXPECT_EQ(f.mem.try_compare_exchange<std::uint64_t>(f.second(), 7, 9), 7u);
  EXPECT_EQ(f.mem.read_obj<std::uint64_t>(f.second()), 9u);
  EXPECT_EQ(f.mem.find_region(f.second())->bitmap().take(), (Marks{{0, 8}, {0, 8}}));

  const auto data = pattern(3 * kPage);
  EXPECT_EQ(f.mem.try_write(data, f.second().unchecked_sub(kPage)), 3 * kPage);
  std::vector<std::byte> back(3 * kPage);
  ASSERT_TRUE(f.mem.try_read_slice(back, f.second().unchecked_sub(kPage)).has_value());
  EXPECT_EQ(back, data);
  ASSERT_TRUE(f.mem.try_write_obj(Le32{0x01020304}, f.second()).has_value());
  EXPECT_EQ(f.mem.try_read_obj<std::uint32_t>(f.second()), 0x01020304u);
}

TEST(GuestRegionMmap, FallibleCallsAtRegionOffsets) {
  FileBackedMemory f;
  const auto& region = *f.mem.find_region(f.second());
  f.truncate_second(3);
  const MemoryRegionAddress lost{3 * kPage};
  std::vector<std::byte> out(2 * kPage);
  EXPECT_EQ(region.try_read(out, MemoryRegionAddress{2 * kPage + 8}).error(),
            Error::fault(f.host(f.second().unchecked_add(3 * kPage)), SIGBUS, 2 * kPage, kPage - 8));
  EXPECT_EQ(region.try_read(out, MemoryRegionAddress{4 * kPage}).error(),
            Error::invalid_backend_address(4 * kPage));
  EXPECT_EQ(region.reader(lost, 8)->read_val<std::uint64_t>().error().signal(), SIGBUS);
  EXPECT_EQ(region.writer(MemoryRegionAddress{4 * kPage - 4}, 8).error(),
            Error::invalid_backend_address(4 * kPage - 4));
  EXPECT_EQ(region.try_load<std::uint16_t>(MemoryRegionAddress{0}, std::memory_order_relaxed), 0u);
}

TEST(VolatileSlice, FallibleCallsAtOffsets) {
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  auto slice = VolatileSlice<>::from_raw_parts(pages.page(0), 2 * kPage);
  std::array<std::byte, 32> buf{};
  EXPECT_EQ(slice.try_read(buf, kPage - 8).error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 32, 8));
  EXPECT_EQ(slice.try_read(buf, 2 * kPage).error(), Error::out_of_bounds(2 * kPage, 32, 2 * kPage));
  EXPECT_EQ(slice.try_load<std::uint32_t>(2, std::memory_order_relaxed).error(),
            Error::misaligned(2, 4));
  EXPECT_EQ(slice.try_store(std::uint16_t{1}, 2 * kPage - 1, std::memory_order_relaxed).error(),
            Error::out_of_bounds(2 * kPage - 1, 2, 2 * kPage));
  auto writer = slice.writer(kPage - 4, 16);
  ASSERT_TRUE(writer.has_value());
  EXPECT_TRUE(writer->write_once(std::uint32_t{0xdeadbeef}).has_value());
  EXPECT_EQ(writer->write_once(std::uint32_t{1}).error().code(), ErrorCode::Fault);
  EXPECT_EQ(slice.reader(kPage - 4, 4)->read_once<std::uint32_t>(), 0xdeadbeefu);
  EXPECT_EQ(slice.writer(2 * kPage - 4, 8).error(), Error::out_of_bounds(2 * kPage - 4, 8, 2 * kPage));
}

// ---- threads that block SIGSEGV or SIGBUS ---------------------------------------------------
//
// The kernel kills the process for a fault whose signal the faulting thread blocks, whatever
// handler is installed; the fallible calls refuse with FaultSignalBlocked instead, before
// touching memory. Each test runs in a child process, so that a missing refusal kills the
// child and fails the test, not the test binary.

// In a child process: reports `what` and exits 1 unless `ok`.
void child_expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "child expectation failed: %s\n", what);
    ::_exit(1);
  }
}

// Blocks (SIG_BLOCK) or unblocks (SIG_UNBLOCK) `signal` in the calling thread.
void mask_signal(int how, int signal) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signal);
  child_expect(::pthread_sigmask(how, &set, nullptr) == 0, "pthread_sigmask");
}

// Runs `body` in a new thread, waits for it and exits 0.
template <class Body>
void in_a_thread_then_exit(Body body) {
  std::thread(body).join();
  ::_exit(0);
}

template <class T>
bool fails_with(const Result<T>& result, const Error& error) {
  return !result.has_value() && result.error() == error;
}

// The fault a primitive reports when it refused to run because the thread blocks `signal`.
FaultInfo refused(int signal) { return FaultInfo{0, signal, true}; }

template <class T>
bool refused_with(const std::expected<T, FaultInfo>& result, int signal) {
  return !result.has_value() && result.error() == refused(signal);
}

bool refused_with(const FallibleOutcome& outcome, int signal) {
  return outcome.done == 0 && outcome.fault == refused(signal);
}

TEST(FaultSignalsDeathTest, ThreadThatBlocksSigbusGetsFaultSignalBlockedInsteadOfDying) {
  EXPECT_EXIT(in_a_thread_then_exit([] {
                mask_signal(SIG_BLOCK, SIGBUS);
                FileBackedMemory f;
                f.truncate_second(1);
                const GuestAddress lost = f.second().unchecked_add(kPage);
                const Error blocked = Error::fault_signal_blocked(SIGBUS);
                std::vector<std::byte> out(8 * kPage, std::byte{0xee});
                child_expect(fails_with(f.mem.try_read(out, GuestAddress{0x10000}), blocked),
                             "try_read across the truncated page");
                child_expect(out[0] == std::byte{0xee}, "the refused try_read wrote nothing");
                child_expect(fails_with(f.mem.try_read_obj<std::uint64_t>(lost), blocked),
                             "try_read_obj");
                child_expect(fails_with(f.mem.try_write_slice(out, GuestAddress{0x10000}), blocked),
                             "try_write_slice");
                child_expect(f.mem.find_region(GuestAddress{0x10000})->bitmap().take().empty(),
                             "the refused write marked nothing");
                child_expect(
                    fails_with(f.mem.try_load<std::uint64_t>(lost, std::memory_order_acquire),
                               blocked),
                    "try_load");
                child_expect(fails_with(f.mem.reader(f.second(), 2 * kPage), blocked), "reader");
                child_expect(fails_with(f.mem.writer(f.second(), 2 * kPage), blocked), "writer");
                child_expect(fails_with(recheck_fault_signals(), blocked), "recheck_fault_signals");

                // The primitives, and cursors made from raw parts, refuse the same way.
                auto* host = reinterpret_cast<std::uint8_t*>(f.host(lost));
                child_expect(refused_with(fallible_copy(out.data(), host, 16), SIGBUS),
                             "fallible_copy");
                child_expect(refused_with(fallible_load<std::uint32_t>(host), SIGBUS),
                             "fallible_load");
                auto reader = VmReader<Fallible>::from_raw_parts(host - 8, 16);
                auto writer = VmWriter<Infallible>::from_bytes(out);
                child_expect(fails_with(reader.read_fallible(writer), blocked) &&
                                 reader.remain() == 16 && writer.avail() == out.size(),
                             "read_fallible");
                child_expect(fails_with(reader.read_once<std::uint64_t>(), blocked),
                             "read_once");
              }),
              ::testing::ExitedWithCode(0), "");
}

TEST(FaultSignalsDeathTest, ThreadThatBlocksSigsegvGetsFaultSignalBlockedInsteadOfDying) {
  EXPECT_EXIT(in_a_thread_then_exit([] {
                mask_signal(SIG_BLOCK, SIGSEGV);
                Pages pages(2);
                std::memset(pages.page(0), 0x44, kPage);
                pages.protect(1, PROT_NONE);
                auto slice = VolatileSlice<>::from_raw_parts(pages.page(0), 2 * kPage);
                const Error blocked = Error::fault_signal_blocked(SIGSEGV);
                std::array<std::byte, 32> buf{};
                child_expect(fails_with(slice.try_read(buf, kPage - 8), blocked), "try_read");
                child_expect(fails_with(slice.try_write(buf, kPage - 8), blocked), "try_write");
                child_expect(pages.page(1)[-1] == 0x44, "the refused try_write wrote nothing");
                child_expect(
                    fails_with(slice.try_store(std::uint32_t{1}, kPage, std::memory_order_relaxed),
                               blocked),
                    "try_store");
                child_expect(fails_with(slice.try_compare_exchange<std::uint32_t>(kPage, 0, 1),
                                        blocked),
                             "try_compare_exchange");
                child_expect(fails_with(slice.writer(kPage - 4, 8), blocked), "writer");

                std::uint8_t* bad = pages.page(1);
                child_expect(refused_with(fallible_fill(bad - 4, 0, 8), SIGSEGV), "fallible_fill");
                child_expect(pages.page(1)[-1] == 0x44, "the refused fill wrote nothing");
                child_expect(refused_with(fallible_store<std::uint32_t>(bad, 1), SIGSEGV),
                             "fallible_store");
                child_expect(refused_with(fallible_store_seq_cst<std::uint64_t>(bad, 1), SIGSEGV),
                             "fallible_store_seq_cst");
                child_expect(refused_with(fallible_compare_exchange<std::uint16_t>(bad, 0, 1),
                                          SIGSEGV),
                             "fallible_compare_exchange");
                auto writer = VmWriter<Fallible>::from_raw_parts(bad - 4, 8);
                child_expect(fails_with(writer.write_once(std::uint32_t{1}), blocked) &&
                                 writer.avail() == 8,
                             "write_once");
                child_expect(fails_with(writer.write_val(std::uint64_t{1}), blocked), "write_val");
                child_expect(fails_with(writer.fill_zeros(8), blocked) && writer.avail() == 8,
                             "fill_zeros");
              }),
              ::testing::ExitedWithCode(0), "");
}

TEST(FaultSignalsDeathTest, RecheckSeesASignalBlockedLaterAndARefusalIsNotRemembered) {
  EXPECT_EXIT(in_a_thread_then_exit([] {
                FileBackedMemory f;
                f.truncate_second(1);
                const GuestAddress lost = f.second().unchecked_add(kPage);
                const Error fault = Error::fault(f.host(lost), SIGBUS, 2 * kPage, kPage);
                const Error blocked = Error::fault_signal_blocked(SIGBUS);
                std::vector<std::byte> out(2 * kPage);
                child_expect(fails_with(f.mem.try_read(out, f.second()), fault),
                             "recovers while SIGBUS is deliverable");
                // The verdict of the first call is cached for the thread; blocking a signal
                // later is only seen by a recheck.
                mask_signal(SIG_BLOCK, SIGBUS);
                child_expect(fails_with(recheck_fault_signals(), blocked),
                             "the recheck sees SIGBUS blocked");
                child_expect(fails_with(f.mem.try_read(out, f.second()), blocked),
                             "refused after the recheck");
                mask_signal(SIG_UNBLOCK, SIGBUS);
                child_expect(fails_with(f.mem.try_read(out, f.second()), fault),
                             "recovers again once SIGBUS is unblocked, without a recheck");
                child_expect(recheck_fault_signals().has_value(), "the recheck succeeds");
              }),
              ::testing::ExitedWithCode(0), "");
}

// The page the in-handler tests read: published by the crashing code before the crash.
std::uint8_t* volatile handler_target = nullptr;

// Reads handler_target fallibly, as a crash reporter reads memory from its SIGSEGV handler,
// where SIGSEGV is blocked. Exits 42 when every read was refused with FaultSignalBlocked.
void read_fallibly_then_exit() {
  std::uint8_t* target = handler_target;
  std::array<std::byte, 16> host{};
  const bool copy_refused = refused_with(fallible_copy(host.data(), target, host.size()), SIGSEGV);
  auto reader = VmReader<Fallible>::from_raw_parts(target, 8);
  const bool read_refused =
      fails_with(reader.read_val<std::uint64_t>(), Error::fault_signal_blocked(SIGSEGV));
  ::_exit(copy_refused && read_refused ? 42 : 10);
}

void earlier_handler_reading_fallibly(int /*signal*/, siginfo_t* /*info*/, void* /*context*/) {
  read_fallibly_then_exit();
}

void later_handler_rechecking(int /*signal*/, siginfo_t* /*info*/, void* /*context*/) {
  if (!fails_with(recheck_fault_signals(), Error::fault_signal_blocked(SIGSEGV))) {
    ::_exit(11);
  }
  read_fallibly_then_exit();
}

TEST(FaultSignalsDeathTest, EarlierSigsegvHandlerReadingFalliblyIsRefusedInsteadOfKilled) {
  EXPECT_EXIT(
      {
        struct sigaction action = {};
        action.sa_sigaction = earlier_handler_reading_fallibly;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        ::sigaction(SIGSEGV, &action, nullptr);
        // guestmem's handler chains to the earlier one, which runs with SIGSEGV blocked.
        recover_then([](std::uint8_t* bad) {
          handler_target = bad;
          write_to(bad);
        });
      },
      ::testing::ExitedWithCode(42), "");
}

TEST(FaultSignalsDeathTest, LaterSigsegvHandlerThatRechecksIsRefusedInsteadOfKilled) {
  EXPECT_EXIT(
      {
        recover_then([](std::uint8_t* bad) {
          // A handler installed over guestmem's runs first, so it rechecks itself.
          struct sigaction action = {};
          action.sa_sigaction = later_handler_rechecking;
          action.sa_flags = SA_SIGINFO;
          sigemptyset(&action.sa_mask);
          ::sigaction(SIGSEGV, &action, nullptr);
          handler_target = bad;
          write_to(bad);
        });
      },
      ::testing::ExitedWithCode(42), "");
}

TEST(FaultSignals, RecheckSucceedsWhereBothSignalsAreDeliverable) {
  EXPECT_TRUE(recheck_fault_signals().has_value());
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  EXPECT_EQ(fallible_load<std::uint8_t>(pages.page(1)).error(),
            (FaultInfo{address_of(pages.page(1)), SIGSEGV, false}));
}

TEST(Error, FaultMessage) {
  EXPECT_EQ(Error::fault(0x7f0000001000, SIGBUS, 8192, 4096).message(),
            "SIGBUS at host address 0x7f0000001000 after 4096 of 8192 bytes");
  EXPECT_EQ(Error::fault(0x1000, SIGSEGV, 4, 0).message(),
            "SIGSEGV at host address 0x1000 after 0 of 4 bytes");
  EXPECT_EQ(Error::fault(0x1000, SIGSEGV, 4, 0).signal(), SIGSEGV);
  EXPECT_EQ(Error::fault_recovery_unsupported().message(),
            "fault-tolerant access is not supported on this architecture");
  EXPECT_EQ(Error::fault_signal_blocked(SIGBUS).message(),
            "SIGBUS is blocked in the calling thread, so a fault could not be recovered: "
            "nothing was accessed");
}

}  // namespace
}  // namespace guestmem
