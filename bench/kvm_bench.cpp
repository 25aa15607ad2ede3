// Merging KVM's dirty log into guestmem's AtomicBitmap (KvmMemorySlots::merge_dirty_log) for
// one 4 GiB slot of MAP_NORESERVE anonymous memory, against the ioctl alone
// (KVM_GET_DIRTY_LOG into a buffer). Target: the merge takes at most twice the ioctl's time.
//
// Cases, side by side in one run:
// - kvm_get_dirty_log/4GiB: the ioctl alone, the baseline of the clean merge.
// - kvm_get_dirty_log/4GiB_after_guest: the ioctl alone after the guest run of the 8-page
//   case (below), its baseline.
// - merge_dirty_log/4GiB_clean: a merge that finds nothing (the ioctl plus a scan of the
//   fetched bitmap).
// - merge_dirty_log/4GiB_8pages: a merge after a tiny real-mode guest stored to 8 pages
//   scattered over the slot (the ioctl, the scan, the marks in the AtomicBitmap and one
//   KVM_CLEAR_DIRTY_LOG per dirty run). The guest runs and the AtomicBitmap is reset between
//   iterations, outside the measured time.
//
// Without a usable /dev/kvm the binary says why and exits successfully with no case run.
#include <benchmark/benchmark.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/kvm.hpp"

namespace {

using guestmem::AtomicBitmap;
using guestmem::BorrowedFd;
using guestmem::GuestAddress;
using guestmem::GuestMemoryMmap;
using guestmem::KvmMemorySlots;
using guestmem::KvmSystem;
using guestmem::UniqueFd;

constexpr std::size_t kSlotSize = std::size_t{4} << 30;

// Segment bases for the guest's stores: each of DS, ES, FS, GS and SS points at another part
// of the 4 GiB slot, so the 8 dirty pages spread over 5 distant words of the log.
constexpr std::uint64_t kBases[] = {0x00100000, 0x40000000, 0x80000000, 0xc0000000, 0xfff00000};

struct Setup {
  KvmSystem kvm;
  UniqueFd vm;
  GuestMemoryMmap<AtomicBitmap> mem;
  std::optional<KvmMemorySlots> slots;
  UniqueFd vcpu;
  kvm_run* run = nullptr;
  std::vector<std::uint64_t> buffer;  // the baseline's KVM_GET_DIRTY_LOG buffer
  std::vector<std::uint64_t> reset_buffer;
};

std::string g_why;

// Stores 1 byte through each segment (prefixes 3e ds, 26 es, 64 fs, 65 gs, 36 ss), three
// more through DS at other pages, then hlt.
std::vector<std::uint8_t> guest_code() {
  std::vector<std::uint8_t> code;
  auto store = [&](std::uint8_t prefix, std::uint16_t offset) {
    code.insert(code.end(), {prefix, 0xc6, 0x06, static_cast<std::uint8_t>(offset & 0xff),
                             static_cast<std::uint8_t>(offset >> 8), 0x5a});
  };
  store(0x3e, 0x0000);
  store(0x26, 0x0000);
  store(0x64, 0x0000);
  store(0x65, 0x0000);
  store(0x36, 0x0000);
  store(0x3e, 0x4000);
  store(0x3e, 0x8000);
  store(0x3e, 0xc000);
  code.push_back(0xf4);
  return code;
}

std::unique_ptr<Setup> make_setup() {
  auto kvm = KvmSystem::open();
  if (!kvm) {
    g_why = kvm.error().message();
    return nullptr;
  }
  auto vm = kvm->create_vm();
  if (!vm) {
    g_why = vm.error().message();
    return nullptr;
  }
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, kSlotSize}});
  if (!mem) {
    g_why = mem.error().message();
    return nullptr;
  }
  auto setup = std::unique_ptr<Setup>(
      new Setup{std::move(*kvm), std::move(*vm), std::move(*mem), std::nullopt, {}, nullptr,
                {}, {}});
  auto slots = KvmMemorySlots::create(BorrowedFd(setup->vm), {.log_dirty_pages = true});
  if (!slots) {
    g_why = slots.error().message();
    return nullptr;
  }
  setup->slots.emplace(std::move(*slots));
  if (auto synced = setup->slots->sync(setup->mem); !synced) {
    g_why = synced.error().message();
    return nullptr;
  }
  const auto code = guest_code();
  (void)setup->mem.write_slice(std::as_bytes(std::span(code)), GuestAddress{0x100});

  (void)::ioctl(setup->vm.get(), KVM_SET_TSS_ADDR, 0xfffbd000UL);
  setup->vcpu.reset(::ioctl(setup->vm.get(), KVM_CREATE_VCPU, 0UL));
  auto run_size = setup->kvm.vcpu_mmap_size();
  if (!setup->vcpu || !run_size) {
    g_why = "KVM_CREATE_VCPU failed";
    return nullptr;
  }
  void* run = ::mmap(nullptr, *run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                     setup->vcpu.get(), 0);
  if (run == MAP_FAILED) {
    g_why = "mmap of kvm_run failed";
    return nullptr;
  }
  setup->run = static_cast<kvm_run*>(run);
  kvm_sregs sregs{};
  if (::ioctl(setup->vcpu.get(), KVM_GET_SREGS, &sregs) != 0) {
    g_why = "KVM_GET_SREGS failed";
    return nullptr;
  }
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  kvm_segment* segments[] = {&sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
  for (std::size_t i = 0; i < 5; ++i) {
    segments[i]->base = kBases[i];
  }
  if (::ioctl(setup->vcpu.get(), KVM_SET_SREGS, &sregs) != 0) {
    g_why = "KVM_SET_SREGS failed";
    return nullptr;
  }
  const std::size_t words = setup->mem.find_region(GuestAddress{0})->bitmap().num_words();
  setup->buffer.assign(words, 0);
  setup->reset_buffer.assign(words, 0);
  return setup;
}

Setup* g_setup = nullptr;

// Runs the guest's 8 stores to its hlt.
bool run_guest(Setup& s) {
  kvm_regs regs{};
  regs.rip = 0x100;
  regs.rflags = 2;
  if (::ioctl(s.vcpu.get(), KVM_SET_REGS, &regs) != 0) {
    return false;
  }
  for (;;) {
    if (::ioctl(s.vcpu.get(), KVM_RUN, 0) != 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      return false;
    }
    if (s.run->exit_reason == KVM_EXIT_HLT) {
      return true;
    }
    if (s.run->exit_reason != KVM_EXIT_INTR) {
      return false;
    }
  }
}

void reset_bitmap(Setup& s) {
  (void)s.mem.find_region(GuestAddress{0})->bitmap().get_and_reset(std::span(s.reset_buffer));
}

// KVM_GET_DIRTY_LOG of `slot` into the setup's buffer: the ioctl alone, as a VMM without
// guestmem would call it.
bool get_dirty_log(Setup& s, std::uint32_t slot) {
  kvm_dirty_log log{};
  log.slot = slot;
  log.dirty_bitmap = s.buffer.data();
  const bool ok = ::ioctl(s.vm.get(), KVM_GET_DIRTY_LOG, &log) == 0;
  benchmark::DoNotOptimize(s.buffer.data());
  return ok;
}

// Every case pauses the timers around its preparation, even an empty one, so that the
// pause's own cost weighs the same on each. CPU time is the steadier column on a shared
// machine (it leaves out the time other processes run); both are reported.
void kvm_get_dirty_log(benchmark::State& state) {
  Setup& s = *g_setup;
  const std::uint32_t slot = s.slots->slots().at(0).slot;
  for (auto _ : state) {
    state.PauseTiming();
    state.ResumeTiming();
    if (!get_dirty_log(s, slot)) {
      state.SkipWithError("KVM_GET_DIRTY_LOG failed");
      break;
    }
  }
}

// The ioctl alone after the same guest run as merge_dirty_log/4GiB_8pages, which leaves the
// caches in the same state (with manual protection the fetch does not clear the log, so the
// bits of earlier runs stay: the ioctl copies the same bitmap either way).
void kvm_get_dirty_log_after_guest(benchmark::State& state) {
  Setup& s = *g_setup;
  const std::uint32_t slot = s.slots->slots().at(0).slot;
  for (auto _ : state) {
    state.PauseTiming();
    reset_bitmap(s);
    const bool ran = run_guest(s);
    state.ResumeTiming();
    if (!ran) {
      state.SkipWithError("the guest did not reach its hlt");
      break;
    }
    if (!get_dirty_log(s, slot)) {
      state.SkipWithError("KVM_GET_DIRTY_LOG failed");
      break;
    }
  }
}

void merge_clean(benchmark::State& state) {
  Setup& s = *g_setup;
  (void)s.slots->merge_dirty_log(s.mem);  // start from an empty log
  reset_bitmap(s);
  for (auto _ : state) {
    state.PauseTiming();
    state.ResumeTiming();
    if (!s.slots->merge_dirty_log(s.mem)) {
      state.SkipWithError("merge_dirty_log failed");
      break;
    }
  }
  state.counters["pages"] = static_cast<double>(s.slots->last_merge_pages());
}

void merge_8_pages(benchmark::State& state) {
  Setup& s = *g_setup;
  std::size_t pages = 0;
  for (auto _ : state) {
    state.PauseTiming();
    reset_bitmap(s);
    const bool ran = run_guest(s);
    state.ResumeTiming();
    if (!ran) {
      state.SkipWithError("the guest did not reach its hlt");
      break;
    }
    if (!s.slots->merge_dirty_log(s.mem)) {
      state.SkipWithError("merge_dirty_log failed");
      break;
    }
    pages = s.slots->last_merge_pages();
  }
  state.counters["pages"] = static_cast<double>(pages);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  auto setup = make_setup();
  if (setup == nullptr) {
    std::printf("kvm_bench: skipped, KVM is not usable: %s\n", g_why.c_str());
    return 0;
  }
  g_setup = setup.get();
  benchmark::RegisterBenchmark("kvm_get_dirty_log/4GiB", kvm_get_dirty_log)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("kvm_get_dirty_log/4GiB_after_guest",
                               kvm_get_dirty_log_after_guest)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("merge_dirty_log/4GiB_clean", merge_clean)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("merge_dirty_log/4GiB_8pages", merge_8_pages)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
