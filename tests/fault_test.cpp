// Tests of the fault-tolerant primitives (guestmem/fault.hpp) with real faults: PROT_NONE
// pages, unmapped pages and memfds truncated under a mapping; and of the fault handler's
// chaining to the handler installed before it, in child processes. The cursors and the
// containers' fallible calls are tested in vm_io_test.cpp.
//
// Every test runs under every preset, and on aarch64 under qemu (.ci/aarch64-faults.sh).
// Sanitizers change who handled SIGSEGV/SIGBUS before guestmem (ASan installs its own
// handlers; TSan interposes sigaction): the child-process tests therefore set the earlier
// handler themselves, in a fresh process (death-test style "threadsafe" re-executes the
// binary), so the expected outcome is the same everywhere.
#include "guestmem/fault.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "fault_test_support.hpp"
#include "guestmem/fd.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::address_of;
using testing::kPage;
using testing::Pages;
using testing::pattern;
using testing::recover_then;
using testing::write_to;

// Lengths that reach every path of the copy routines: single accesses (1, 2, 4, 8), the
// overlapping small cases, the 16-31 case, and the blocks (x86-64: AVX2 blocks and
// `rep movsb`; aarch64: 64- and 16-byte blocks and the overlapping last 16 bytes).
constexpr std::size_t kLengths[] = {1,   2,   3,   4,    5,    7,    8,     9,     15,    16,
                                    17,  31,  32,  33,   127,  128,  129,   200,   4096,  5000,
                                    32767, 32768, 40000, 100000};

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

// ---- unaligned single accesses ---------------------------------------------------------------
//
// The pointer of a single access need not be aligned. x86-64 does any access with one
// instruction; aarch64's acquire and release instructions need alignment, so it does an
// unaligned access through the copy routine.

TEST(FallibleLoadStore, UnalignedAccessesOfEverySizeAndOffsetReadBack) {
  Pages pages(1);
  std::uint8_t* base = pages.page(0);
  for (std::size_t offset = 1; offset < 8; ++offset) {
    std::memset(base, 0x5c, 32);
    std::uint8_t* at = base + 8 + offset;
    ASSERT_TRUE(fallible_store<std::uint16_t>(at, 0xa1b2).has_value());
    EXPECT_EQ(fallible_load<std::uint16_t>(at), 0xa1b2u);
    ASSERT_TRUE(fallible_store<std::uint32_t>(at, 0xa1b2c3d4).has_value());
    EXPECT_EQ(fallible_load<std::uint32_t>(at), 0xa1b2c3d4u);
    ASSERT_TRUE(fallible_store_seq_cst<std::uint64_t>(at, 0x0102030405060708).has_value());
    EXPECT_EQ(fallible_load<std::uint64_t>(at), 0x0102030405060708u);
    EXPECT_EQ(fallible_load<std::int32_t>(at + 4), 0x01020304);
    std::uint64_t stored = 0;
    std::memcpy(&stored, at, sizeof stored);
    EXPECT_EQ(stored, 0x0102030405060708u) << "offset " << offset;
    EXPECT_EQ(at[-1], 0x5c) << "wrote before the value, offset " << offset;
    EXPECT_EQ(at[8], 0x5c) << "wrote past the value, offset " << offset;
  }
}

TEST(FallibleLoadStore, UnalignedAccessIntoAFaultingPageFaultsAtThePage) {
  Pages pages(2);
  std::uint8_t* bad = pages.page(1);
  pages.protect(1, PROT_NONE);
  const FaultInfo fault{address_of(bad), SIGSEGV};
  std::memset(bad - 8, 0x11, 8);
  EXPECT_EQ(fallible_load<std::uint16_t>(bad - 1).error(), fault);
  EXPECT_EQ(fallible_load<std::uint32_t>(bad - 3).error(), fault);
  EXPECT_EQ(fallible_store<std::uint64_t>(bad - 3, ~std::uint64_t{0}).error(), fault);
  // A faulting x86-64 store stores nothing; aarch64's copy stores the bytes before the fault.
#if defined(__aarch64__)
  constexpr std::uint8_t kBeforeTheFault = 0xff;
#else
  constexpr std::uint8_t kBeforeTheFault = 0x11;
#endif
  EXPECT_EQ(bad[-3], kBeforeTheFault);
  EXPECT_EQ(bad[-1], kBeforeTheFault);
  EXPECT_EQ(bad[-4], 0x11);
}

// ---- the handler in child processes ----------------------------------------------------------

void set_action(int signal, void (*handler)(int)) {
  struct sigaction action = {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  ::sigaction(signal, &action, nullptr);
}

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

}  // namespace
}  // namespace guestmem
