#include "guestmem/kvm.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/atomic_memory.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/mmap_region.hpp"
#include "guestmem/protection.hpp"

namespace guestmem {
namespace {

// The KVM device and a VM, or the reason a test cannot have them.
struct Vm {
  KvmSystem kvm;
  UniqueFd fd;
};

std::optional<Vm> open_vm(std::string& why) {
  auto kvm = KvmSystem::open();
  if (!kvm) {
    why = "/dev/kvm is not usable: " + kvm.error().message();
    return std::nullopt;
  }
  auto vm = kvm->create_vm();
  if (!vm) {
    why = "KVM_CREATE_VM failed: " + vm.error().message();
    return std::nullopt;
  }
  return Vm{std::move(*kvm), std::move(*vm)};
}

#define OPEN_VM_OR_SKIP(name)           \
  std::string name##_why;               \
  auto name = open_vm(name##_why);      \
  if (!name) {                          \
    GTEST_SKIP() << name##_why;         \
  }

// The guests below are x86 real-mode code; elsewhere only the tests without a guest run.
#if defined(__x86_64__)

// Real-mode code that stores each byte at its address (below 64 KiB, DS base 0), then hlt.
std::vector<std::uint8_t> store_bytes_code(
    const std::vector<std::pair<std::uint16_t, std::uint8_t>>& stores) {
  std::vector<std::uint8_t> code;
  for (auto [addr, value] : stores) {
    // mov byte [disp16], imm8
    code.insert(code.end(), {0xc6, 0x06, static_cast<std::uint8_t>(addr & 0xff),
                             static_cast<std::uint8_t>(addr >> 8), value});
  }
  code.push_back(0xf4);  // hlt
  return code;
}

// One vCPU in real mode with CS and DS at base 0, set up as a VMM would (the library leaves
// vCPUs to the VMM).
class TestVcpu {
 public:
  TestVcpu() = default;
  TestVcpu(const TestVcpu&) = delete;
  TestVcpu& operator=(const TestVcpu&) = delete;
  ~TestVcpu() {
    if (run_ != nullptr) {
      ::munmap(run_, run_size_);
    }
  }

  // Creates vCPU 0 of `vm`; failures are test failures.
  void create(const Vm& vm) {
    // Intel without unrestricted guest runs real mode through a TSS KVM places here (outside
    // guest memory); other hosts ignore or refuse it, which is harmless.
    (void)::ioctl(vm.fd.get(), KVM_SET_TSS_ADDR, 0xfffbd000UL);
    fd_.reset(::ioctl(vm.fd.get(), KVM_CREATE_VCPU, 0UL));
    ASSERT_TRUE(fd_.valid()) << "KVM_CREATE_VCPU: " << std::strerror(errno);
    auto size = vm.kvm.vcpu_mmap_size();
    ASSERT_TRUE(size.has_value()) << size.error().message();
    run_size_ = *size;
    void* p = ::mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
    run_ = static_cast<kvm_run*>(p);

    kvm_sregs sregs{};
    ASSERT_EQ(::ioctl(fd_.get(), KVM_GET_SREGS, &sregs), 0) << std::strerror(errno);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    ASSERT_EQ(::ioctl(fd_.get(), KVM_SET_SREGS, &sregs), 0) << std::strerror(errno);
  }

  // Points DS, ES, FS and GS at these guest addresses (real mode with any base, as KVM
  // allows), for stores beyond the first 64 KiB.
  void set_data_segments(std::uint64_t ds, std::uint64_t es, std::uint64_t fs,
                         std::uint64_t gs) {
    kvm_sregs sregs{};
    ASSERT_EQ(::ioctl(fd_.get(), KVM_GET_SREGS, &sregs), 0) << std::strerror(errno);
    sregs.ds.base = ds;
    sregs.es.base = es;
    sregs.fs.base = fs;
    sregs.gs.base = gs;
    ASSERT_EQ(::ioctl(fd_.get(), KVM_SET_SREGS, &sregs), 0) << std::strerror(errno);
  }

  // Starts the code at guest address `rip` again.
  void set_rip(std::uint64_t rip) {
    kvm_regs regs{};
    regs.rip = rip;
    regs.rflags = 2;  // bit 1 is always set
    ASSERT_EQ(::ioctl(fd_.get(), KVM_SET_REGS, &regs), 0) << std::strerror(errno);
  }

  // Runs until an exit other than an interruption; returns the exit reason.
  std::uint32_t run() {
    for (;;) {
      if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
        if (errno == EINTR || errno == EAGAIN) {
          continue;
        }
        ADD_FAILURE() << "KVM_RUN: " << std::strerror(errno);
        return ~std::uint32_t{0};
      }
      if (run_->exit_reason != KVM_EXIT_INTR) {
        return run_->exit_reason;
      }
    }
  }

  [[nodiscard]] const kvm_run& state() const { return *run_; }
  [[nodiscard]] BorrowedFd fd() const { return BorrowedFd(fd_); }

 private:
  UniqueFd fd_;
  kvm_run* run_ = nullptr;
  std::size_t run_size_ = 0;
};

// Runs `code` placed at guest address `at` (written through `mem`) to its hlt.
template <class M>
void run_code(TestVcpu& vcpu, const M& mem, std::uint64_t at,
              const std::vector<std::uint8_t>& code) {
  ASSERT_TRUE(mem.write_slice(std::as_bytes(std::span(code)), GuestAddress{at}));
  vcpu.set_rip(at);
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT));
}

#endif  // __x86_64__

template <class M>
std::uint8_t byte_at(const M& mem, std::uint64_t addr) {
  using Addr = std::conditional_t<std::is_same_v<M, GuestRegionMmap<>>, MemoryRegionAddress,
                                  GuestAddress>;
  auto v = mem.template read_obj<std::uint8_t>(Addr{addr});
  EXPECT_TRUE(v.has_value());
  return v.value_or(0xee);
}

// ---- KvmSystem ----

TEST(KvmSystem, ANonexistentPathIsNoKvmWithEnoent) {
  auto kvm = KvmSystem::open("/nonexistent/kvm");
  ASSERT_FALSE(kvm.has_value());
  EXPECT_EQ(kvm.error().code(), ErrorCode::KvmUnavailable);
  EXPECT_EQ(kvm.error().os_error(), ENOENT);
  EXPECT_EQ(kvm.error().message().rfind("no KVM device: ", 0), 0U) << kvm.error().message();
}

TEST(KvmSystem, ADeviceThatIsNotKvmIsRefusedWithEnotty) {
  auto kvm = KvmSystem::open("/dev/null");
  ASSERT_FALSE(kvm.has_value());
  EXPECT_EQ(kvm.error().code(), ErrorCode::KvmUnavailable);
  EXPECT_EQ(kvm.error().os_error(), ENOTTY);
  EXPECT_EQ(kvm.error().message().rfind("the device is not KVM: ", 0), 0U);
}

TEST(KvmSystem, MessagesNameWhatFailed) {
  EXPECT_EQ(Error::kvm_unavailable(EACCES).message().rfind("no permission to open the KVM", 0),
            0U);
  EXPECT_EQ(Error::kvm_unavailable(0, 11).message(),
            "KVM API version 11 is not the supported version 12");
  EXPECT_EQ(Error::at(ErrorCode::KvmCapabilityMissing, KVM_CAP_READONLY_MEM).message(),
            "KVM lacks capability KVM_CAP_READONLY_MEM (81)");
  const Error slot = Error::kvm_slot_refused(EINVAL, KVM_SET_USER_MEMORY_REGION, 3, 0x1800,
                                             0x1000);
  EXPECT_EQ(slot.message(),
            "KVM refused KVM_SET_USER_MEMORY_REGION for memory slot 3 (guest 0x1800, 0x1000 "
            "bytes): Invalid argument (errno 22)");
  EXPECT_EQ(Error::kvm_ioctl_failed(ENOTTY, KVM_CHECK_EXTENSION, 10).message(),
            "KVM_CHECK_EXTENSION(10) failed: Inappropriate ioctl for device (errno 25)");
}

TEST(KvmSystem, OpensChecksAndCreatesVms) {
  OPEN_VM_OR_SKIP(vm);
  auto user_memory = vm->kvm.check_extension(KVM_CAP_USER_MEMORY);
  ASSERT_TRUE(user_memory.has_value());
  EXPECT_EQ(*user_memory, 1);
  auto unknown = vm->kvm.check_extension(0xfffffff);
  ASSERT_TRUE(unknown.has_value());
  EXPECT_EQ(*unknown, 0);
  auto size = vm->kvm.vcpu_mmap_size();
  ASSERT_TRUE(size.has_value());
  EXPECT_GE(*size, sizeof(kvm_run));
  EXPECT_TRUE(vm->fd.valid());
}

// ---- KvmMemorySlots ----

TEST(KvmMemorySlots, CreateRefusesADescriptorThatIsNoVm) {
  auto closed = KvmMemorySlots::create(BorrowedFd(-1));
  ASSERT_FALSE(closed.has_value());
  EXPECT_EQ(closed.error().code(), ErrorCode::IoError);
  EXPECT_EQ(closed.error().os_error(), EBADF);

  UniqueFd null{::open("/dev/null", O_RDWR | O_CLOEXEC)};
  ASSERT_TRUE(null.valid());
  auto not_vm = KvmMemorySlots::create(BorrowedFd(null));
  ASSERT_FALSE(not_vm.has_value());
  EXPECT_EQ(not_vm.error().code(), ErrorCode::KvmIoctlFailed);
  EXPECT_EQ(not_vm.error().os_error(), ENOTTY);
  EXPECT_EQ(not_vm.error().address(), static_cast<std::uint64_t>(KVM_CHECK_EXTENSION));
  EXPECT_EQ(not_vm.error().expected(), static_cast<std::uint64_t>(KVM_CAP_NR_MEMSLOTS));
}

// Two regions with a hole between them: [0, 0x4000) and [0x8000, 0xc000).
constexpr std::uint64_t kHoleStart = 0x4000;
constexpr std::uint64_t kSecondBase = 0x8000;

#if defined(__x86_64__)
TEST(KvmMemorySlots, TwoRegionsWithAHoleCarryAGuestsWrites) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<>::from_ranges(
      {{GuestAddress{0}, kHoleStart}, {GuestAddress{kSecondBase}, 0x4000}});
  ASSERT_TRUE(mem.has_value());
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(slots.has_value()) << slots.error().message();
  ASSERT_TRUE(slots->sync(*mem).has_value());
  EXPECT_EQ(slots->num_slots(), 2U);
  EXPECT_EQ(slots->last_sync().added, 2U);
  EXPECT_EQ(slots->last_sync().removed, 0U);

  const auto* first = mem->find_region(GuestAddress{0});
  const auto* second = mem->find_region(GuestAddress{kSecondBase});
  const std::vector<KvmSlot> expected{
      {0, GuestAddress{0}, kHoleStart,
       reinterpret_cast<std::uint64_t>(first->mapping().unsafe_host_ptr()), 0},
      {1, GuestAddress{kSecondBase}, 0x4000,
       reinterpret_cast<std::uint64_t>(second->mapping().unsafe_host_ptr()), 0}};
  EXPECT_EQ(slots->slots(), expected);
  EXPECT_EQ(slots->slot_for(GuestAddress{0x3fff})->slot, 0U);
  EXPECT_FALSE(slots->slot_for(GuestAddress{kHoleStart}).has_value());
  EXPECT_EQ(slots->slot_for(GuestAddress{0xbfff})->slot, 1U);
  EXPECT_FALSE(slots->slot_for(GuestAddress{0xc000}).has_value());

  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  ASSERT_NO_FATAL_FAILURE(run_code(vcpu, *mem, 0x100,
                                   store_bytes_code({{0x1234, 0xaa}, {0x8765, 0xbb}})));
  EXPECT_EQ(byte_at(*mem, 0x1234), 0xaa);
  EXPECT_EQ(byte_at(*mem, 0x8765), 0xbb);
  EXPECT_EQ(byte_at(*mem, 0x1233), 0x00);
  EXPECT_EQ(byte_at(*mem, 0x8766), 0x00);
}
#endif  // __x86_64__

#if defined(__x86_64__)
// The pages set in the first word of `region`'s bitmap, clearing them; the other words must
// be clean.
std::uint64_t take_dirty(const GuestRegionMmap<AtomicBitmap>& region) {
  std::vector<std::uint64_t> words = region.bitmap().get_and_reset();
  for (std::size_t i = 1; i < words.size(); ++i) {
    EXPECT_EQ(words[i], 0U) << "word " << i;
  }
  return words.empty() ? 0 : words[0];
}
#endif  // __x86_64__

#if defined(__x86_64__)
TEST(KvmMemorySlots, DirtyLogJoinsGuestAndDeviceWritesInOneReset) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges(
      {{GuestAddress{0}, kHoleStart}, {GuestAddress{kSecondBase}, 0x4000}});
  ASSERT_TRUE(mem.has_value());
  const auto& first = *mem->find_region(GuestAddress{0});
  const auto& second = *mem->find_region(GuestAddress{kSecondBase});
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd), {.log_dirty_pages = true});
  ASSERT_TRUE(slots.has_value()) << slots.error().message();
  ASSERT_TRUE(slots->sync(*mem).has_value());
  for (const KvmSlot& s : slots->slots()) {
    EXPECT_EQ(s.flags, KvmSlot::kLogDirtyPages);
  }

  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  // Guest stores to pages 1 and 3 of the first region and 0 and 2 of the second.
  const auto code = store_bytes_code({{0x1000, 1}, {0x3ff0, 2}, {0x8000, 3}, {0xa010, 4}});
  ASSERT_TRUE(mem->write_slice(std::as_bytes(std::span(code)), GuestAddress{0x100}));
  take_dirty(first);  // the code's own page
  take_dirty(second);
  vcpu.set_rip(0x100);
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT));
  // Device writes meanwhile: page 2 of the first region, page 3 of the second.
  ASSERT_TRUE(mem->write_obj(std::uint32_t{5}, GuestAddress{0x2000}));
  ASSERT_TRUE(mem->write_obj(std::uint32_t{6}, GuestAddress{0xb000}));

  ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
  EXPECT_EQ(slots->last_merge_pages(), 4U);
  EXPECT_EQ(take_dirty(first), 0b1110U);
  EXPECT_EQ(take_dirty(second), 0b1101U);

  // Nothing new: KVM's log was cleared of what was fetched.
  ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
  EXPECT_EQ(slots->last_merge_pages(), 0U);
  EXPECT_EQ(take_dirty(first), 0U);
  EXPECT_EQ(take_dirty(second), 0U);

  // The pages were write-protected again: the same stores are logged again.
  vcpu.set_rip(0x100);
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT));
  ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
  EXPECT_EQ(slots->last_merge_pages(), 4U);
  EXPECT_EQ(take_dirty(first), 0b1010U);
  EXPECT_EQ(take_dirty(second), 0b0101U);
  EXPECT_EQ(byte_at(*mem, 0xa010), 4);
}
#endif  // __x86_64__

#if defined(__x86_64__)
// Pages in words of the log far apart (more than the gap across which one clear covers two
// runs), at a word boundary and in the last page of the slot: each merge reports exactly
// them, and each clear re-arms exactly them.
TEST(KvmMemorySlots, DirtyLogOfPagesFarApartInALargeSlot) {
  OPEN_VM_OR_SKIP(vm);
  constexpr std::uint64_t kSize = std::uint64_t{256} << 20;
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, kSize}});
  ASSERT_TRUE(mem.has_value());
  const auto& region = *mem->find_region(GuestAddress{0});
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd), {.log_dirty_pages = true});
  ASSERT_TRUE(slots.has_value());
  ASSERT_TRUE(slots->sync(*mem).has_value());

  // Pages 63 and 64 (the last of word 0 and the first of word 1) through DS; 17000 and
  // 40000 through ES and FS; the slot's last page through GS.
  const std::uint64_t last_page = kSize / 4096 - 1;
  std::vector<std::uint8_t> code;
  auto store = [&](std::uint8_t prefix, std::uint16_t offset) {
    code.insert(code.end(), {prefix, 0xc6, 0x06, static_cast<std::uint8_t>(offset & 0xff),
                             static_cast<std::uint8_t>(offset >> 8), 0x77});
  };
  store(0x3e, 0);
  store(0x3e, 0x1000);
  store(0x26, 0);
  store(0x64, 0);
  store(0x65, 0xfff);
  code.push_back(0xf4);
  ASSERT_TRUE(mem->write_slice(std::as_bytes(std::span(code)), GuestAddress{0x100}));

  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  ASSERT_NO_FATAL_FAILURE(
      vcpu.set_data_segments(63 * 4096, 17000 * 4096, 40000 * 4096, last_page * 4096));
  const std::vector<std::uint64_t> pages{63, 64, 17000, 40000, last_page};
  for (int round = 0; round < 2; ++round) {
    (void)region.bitmap().get_and_reset();
    vcpu.set_rip(0x100);
    ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT)) << "round " << round;
    ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
    EXPECT_EQ(slots->last_merge_pages(), pages.size()) << "round " << round;
    std::vector<std::uint64_t> expected(region.bitmap().num_words(), 0);
    for (std::uint64_t p : pages) {
      expected[p / 64] |= std::uint64_t{1} << (p % 64);
    }
    EXPECT_EQ(region.bitmap().get_and_reset(), expected) << "round " << round;
    ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
    EXPECT_EQ(slots->last_merge_pages(), 0U) << "round " << round;
  }
  EXPECT_EQ(byte_at(*mem, last_page * 4096 + 0xfff), 0x77);
}
#endif  // __x86_64__

#if defined(__x86_64__)
TEST(KvmMemorySlots, DirtyLogWithoutManualProtection) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 0x10000}});
  ASSERT_TRUE(mem.has_value());
  const auto& region = *mem->find_region(GuestAddress{0});
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd),
                                      {.log_dirty_pages = true, .manual_protect = false});
  ASSERT_TRUE(slots.has_value());
  EXPECT_FALSE(slots->manual_protect());
  ASSERT_TRUE(slots->sync(*mem).has_value());
  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  ASSERT_NO_FATAL_FAILURE(run_code(vcpu, *mem, 0x100, store_bytes_code({{0xf000, 1}})));
  take_dirty(region);
  ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
  EXPECT_EQ(slots->last_merge_pages(), 1U);
  EXPECT_EQ(take_dirty(region), std::uint64_t{1} << 15);
  ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
  EXPECT_EQ(slots->last_merge_pages(), 0U);
}
#endif  // __x86_64__

TEST(KvmMemorySlots, MergeRefusesAMapWithoutTheSlotsRegions) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 0x4000}});
  auto other = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 0x4000}});
  ASSERT_TRUE(mem.has_value() && other.has_value());
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd), {.log_dirty_pages = true});
  ASSERT_TRUE(slots.has_value());
  ASSERT_TRUE(slots->sync(*mem).has_value());
  auto merged = slots->merge_dirty_log(*other);  // same range, other memory
  ASSERT_FALSE(merged.has_value());
  EXPECT_EQ(merged.error(), Error::at(ErrorCode::InvalidGuestRegion, 0, 0x4000));
}

TEST(KvmMemorySlots, MergeOfSlotsThatDoNotLogReportsNothing) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 0x4000}});
  ASSERT_TRUE(mem.has_value());
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(slots.has_value());
  ASSERT_TRUE(slots->sync(*mem).has_value());
  EXPECT_EQ(slots->slots().at(0).flags, 0U);
  ASSERT_TRUE(slots->merge_dirty_log(*mem).has_value());
  EXPECT_EQ(slots->last_merge_pages(), 0U);
}

#if defined(__x86_64__)
TEST(KvmMemorySlots, HotPlugChangesExactlyTheSlotsThatChanged) {
  OPEN_VM_OR_SKIP(vm);
  auto initial = GuestMemoryMmap<>::from_ranges(
      {{GuestAddress{0}, kHoleStart}, {GuestAddress{kSecondBase}, 0x4000}});
  ASSERT_TRUE(initial.has_value());
  GuestMemoryAtomic<GuestMemoryMmap<>> space(std::move(*initial));
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(slots.has_value());
  auto sync = [&] { ASSERT_TRUE(slots->sync(*space.memory()).has_value()); };

  ASSERT_NO_FATAL_FAILURE(sync());
  EXPECT_EQ(slots->last_sync().updates(), 2U);
  ASSERT_NO_FATAL_FAILURE(sync());  // the same map: nothing to do
  EXPECT_EQ(slots->last_sync().updates(), 0U);

  // Plug a region into the hole: one slot added, numbered after the two in use.
  auto plugged = MmapRegion<>::create(0x2000);
  ASSERT_TRUE(plugged.has_value());
  auto plugged_region = std::make_shared<const GuestRegionMmap<>>(
      *GuestRegionMmap<>::create(std::move(*plugged), GuestAddress{kHoleStart}));
  {
    auto writer = space.lock();
    writer.replace(*writer.memory()->insert_region(plugged_region));
  }
  ASSERT_NO_FATAL_FAILURE(sync());
  EXPECT_EQ(slots->last_sync().added, 1U);
  EXPECT_EQ(slots->last_sync().removed, 0U);
  EXPECT_EQ(slots->num_slots(), 3U);
  EXPECT_EQ(slots->slot_for(GuestAddress{kHoleStart})->slot, 2U);

  // Unplug the second region: its slot deleted, the others kept.
  std::shared_ptr<const GuestRegionMmap<>> unplugged;
  {
    auto writer = space.lock();
    auto removed = writer.memory()->remove_region(GuestAddress{kSecondBase}, 0x4000);
    ASSERT_TRUE(removed.has_value());
    unplugged = removed->second;
    writer.replace(std::move(removed->first));
  }
  ASSERT_NO_FATAL_FAILURE(sync());
  EXPECT_EQ(slots->last_sync().removed, 1U);
  EXPECT_EQ(slots->last_sync().added, 0U);
  EXPECT_EQ(slots->num_slots(), 2U);
  EXPECT_FALSE(slots->slot_for(GuestAddress{kSecondBase}).has_value());

  // New memory at the second region's place takes the lowest free slot number, 1.
  auto replacement = MmapRegion<>::create(0x4000);
  ASSERT_TRUE(replacement.has_value());
  {
    auto writer = space.lock();
    writer.replace(*writer.memory()->insert_region(std::make_shared<const GuestRegionMmap<>>(
        *GuestRegionMmap<>::create(std::move(*replacement), GuestAddress{kSecondBase}))));
  }
  ASSERT_NO_FATAL_FAILURE(sync());
  EXPECT_EQ(slots->last_sync().added, 1U);
  EXPECT_EQ(slots->last_sync().removed, 0U);
  EXPECT_EQ(slots->slot_for(GuestAddress{kSecondBase})->slot, 1U);

  // The guest's stores land in the plugged region and the new memory, not the old one.
  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  auto mem = space.memory();
  ASSERT_NO_FATAL_FAILURE(
      run_code(vcpu, *mem, 0x100, store_bytes_code({{0x4321, 0x11}, {0x8765, 0x22}})));
  EXPECT_EQ(byte_at(*mem, 0x4321), 0x11);
  EXPECT_EQ(byte_at(*plugged_region, 0x321), 0x11);
  EXPECT_EQ(byte_at(*mem, 0x8765), 0x22);
  EXPECT_EQ(byte_at(*unplugged, 0x765), 0x00);
}
#endif  // __x86_64__

#if defined(__x86_64__)
TEST(KvmMemorySlots, AReadOnlyRegionExitsAsMmioAndStaysUnchanged) {
  OPEN_VM_OR_SKIP(vm);
  auto readonly_ok = vm->kvm.check_extension(KVM_CAP_READONLY_MEM);
  ASSERT_TRUE(readonly_ok.has_value());
  if (*readonly_ok <= 0) {
    GTEST_SKIP() << "KVM lacks KVM_CAP_READONLY_MEM";
  }
  auto ram = MmapRegion<>::create(kHoleStart);
  auto rom = MmapRegionBuilder<>(0x4000).with_protection(Protection::read()).build();
  ASSERT_TRUE(ram.has_value() && rom.has_value());
  std::vector<GuestRegionMmap<>> regions;
  regions.push_back(*GuestRegionMmap<>::create(std::move(*ram), GuestAddress{0}));
  regions.push_back(*GuestRegionMmap<>::create(std::move(*rom), GuestAddress{kSecondBase}));
  auto mem = GuestMemoryMmap<>::from_regions(std::move(regions));
  ASSERT_TRUE(mem.has_value());

  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd), {.log_dirty_pages = true});
  ASSERT_TRUE(slots.has_value());
  ASSERT_TRUE(slots->sync(*mem).has_value());
  EXPECT_EQ(slots->slot_for(GuestAddress{0})->flags, KvmSlot::kLogDirtyPages);
  EXPECT_EQ(slots->slot_for(GuestAddress{kSecondBase})->flags, KvmSlot::kReadonly);

  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  const auto code = store_bytes_code({{0x8123, 0xbb}, {0x1000, 0xcc}});
  ASSERT_TRUE(mem->write_slice(std::as_bytes(std::span(code)), GuestAddress{0x100}));
  vcpu.set_rip(0x100);
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_MMIO));
  EXPECT_EQ(vcpu.state().mmio.phys_addr, 0x8123U);
  EXPECT_EQ(vcpu.state().mmio.is_write, 1U);
  EXPECT_EQ(vcpu.state().mmio.len, 1U);
  EXPECT_EQ(vcpu.state().mmio.data[0], 0xbb);
  EXPECT_EQ(byte_at(*mem, 0x8123), 0x00);
  // The VMM dropped the write; the guest goes on to the next store and the hlt.
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT));
  EXPECT_EQ(byte_at(*mem, 0x1000), 0xcc);
  EXPECT_EQ(byte_at(*mem, 0x8123), 0x00);
}
#endif  // __x86_64__

TEST(KvmMemorySlots, ARefusedSlotNamesItsNumberRangeAndErrno) {
  OPEN_VM_OR_SKIP(vm);
  // KVM needs page-aligned guest addresses; guestmem does not.
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0x1800}, 0x1000}});
  ASSERT_TRUE(mem.has_value());
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(slots.has_value());
  auto synced = slots->sync(*mem);
  ASSERT_FALSE(synced.has_value());
  EXPECT_EQ(synced.error(),
            Error::kvm_slot_refused(EINVAL, KVM_SET_USER_MEMORY_REGION, 0, 0x1800, 0x1000));
  EXPECT_EQ(synced.error().message(),
            "KVM refused KVM_SET_USER_MEMORY_REGION for memory slot 0 (guest 0x1800, 0x1000 "
            "bytes): Invalid argument (errno 22)");
  EXPECT_EQ(slots->num_slots(), 0U);
  EXPECT_EQ(slots->last_sync().updates(), 0U);
}

TEST(KvmMemorySlots, RunningOutOfSlotNumbersIsEnospcAfterTheSlotsMade) {
  OPEN_VM_OR_SKIP(vm);
  auto probe = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(probe.has_value());
  const std::uint32_t last = probe->max_slots() - 1;
  auto mem = GuestMemoryMmap<>::from_ranges(
      {{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}});
  ASSERT_TRUE(mem.has_value());
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd), {.first_slot = last});
  ASSERT_TRUE(slots.has_value());
  auto synced = slots->sync(*mem);
  ASSERT_FALSE(synced.has_value());
  EXPECT_EQ(synced.error(), Error::kvm_slot_refused(ENOSPC, KVM_SET_USER_MEMORY_REGION,
                                                    last + 1, 0x1000, 0x1000));
  EXPECT_EQ(slots->last_sync().added, 1U);
  EXPECT_EQ(slots->slots().at(0).slot, last);
}

TEST(KvmMemorySlots, DestructionDeletesTheSlots) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x4000}});
  ASSERT_TRUE(mem.has_value());
  {
    auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd), {.first_slot = 5});
    ASSERT_TRUE(slots.has_value());
    ASSERT_TRUE(slots->sync(*mem).has_value());
  }
  // Slot 5 is gone: the same range can be registered again under another number (KVM
  // refuses overlapping slots with EEXIST).
  auto again = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(again.has_value());
  ASSERT_TRUE(again->sync(*mem).has_value());
  EXPECT_EQ(again->slots().at(0).slot, 0U);

  // An empty map deletes every slot.
  ASSERT_TRUE(again->sync(GuestMemoryMmap<>()).has_value());
  EXPECT_EQ(again->last_sync().removed, 1U);
  EXPECT_EQ(again->num_slots(), 0U);
}

TEST(KvmMemorySlots, KeepTheVmOpenAfterTheCallerClosesIt) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x4000}});
  ASSERT_TRUE(mem.has_value());
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd));
  ASSERT_TRUE(slots.has_value());
  ASSERT_TRUE(slots->sync(*mem).has_value());
  vm->fd.reset();
  // The slots hold their own descriptor of the VM: it can still delete its slots.
  auto emptied = slots->sync(GuestMemoryMmap<>());
  ASSERT_TRUE(emptied.has_value()) << emptied.error().message();
  EXPECT_EQ(slots->last_sync().removed, 1U);
}

TEST(KvmMemorySlots, MoveAssignmentDeletesTheSlotsItReplaces) {
  OPEN_VM_OR_SKIP(vm);
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x4000}});
  auto other = GuestMemoryMmap<>::from_ranges({{GuestAddress{0x10000}, 0x4000}});
  ASSERT_TRUE(mem.has_value() && other.has_value());
  auto first = KvmMemorySlots::create(BorrowedFd(vm->fd));
  auto second = KvmMemorySlots::create(BorrowedFd(vm->fd), {.first_slot = 1});
  ASSERT_TRUE(first.has_value() && second.has_value());
  ASSERT_TRUE(first->sync(*mem).has_value());
  ASSERT_TRUE(second->sync(*other).has_value());
  *first = std::move(*second);
  EXPECT_EQ(first->num_slots(), 1U);
  EXPECT_EQ(first->slots().at(0).guest_base, GuestAddress{0x10000});
  // The range of the replaced slots is free again in KVM.
  auto third = KvmMemorySlots::create(BorrowedFd(vm->fd), {.first_slot = 2});
  ASSERT_TRUE(third.has_value());
  EXPECT_TRUE(third->sync(*mem).has_value());
}

// ---- KvmDirtyRing ----

#if defined(__x86_64__)
TEST(KvmDirtyRing, HarvestsTheGuestsWritesIntoTheBitmaps) {
  OPEN_VM_OR_SKIP(vm);
  auto max = KvmDirtyRing::max_bytes(BorrowedFd(vm->fd));
  ASSERT_TRUE(max.has_value());
  if (*max == 0) {
    GTEST_SKIP() << "this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING); KvmDirtyRing could "
                    "not be exercised";
  }
  const std::size_t bytes = std::min<std::size_t>(*max, 65536);
  ASSERT_TRUE(KvmDirtyRing::enable(BorrowedFd(vm->fd), bytes).has_value());

  auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges(
      {{GuestAddress{0}, kHoleStart}, {GuestAddress{kSecondBase}, 0x4000}});
  ASSERT_TRUE(mem.has_value());
  const auto& first = *mem->find_region(GuestAddress{0});
  const auto& second = *mem->find_region(GuestAddress{kSecondBase});
  auto slots = KvmMemorySlots::create(BorrowedFd(vm->fd),
                                      {.log_dirty_pages = true, .manual_protect = false});
  ASSERT_TRUE(slots.has_value());
  ASSERT_TRUE(slots->sync(*mem).has_value());

  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  auto ring = KvmDirtyRing::map(vcpu.fd(), bytes);
  ASSERT_TRUE(ring.has_value()) << ring.error().message();
  EXPECT_EQ(ring->entries(), bytes / sizeof(kvm_dirty_gfn));

  const auto code = store_bytes_code({{0x1000, 1}, {0x3ff0, 2}, {0x8000, 3}, {0xa010, 4}});
  ASSERT_TRUE(mem->write_slice(std::as_bytes(std::span(code)), GuestAddress{0x100}));
  take_dirty(first);
  take_dirty(second);
  vcpu.set_rip(0x100);
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT));
  ASSERT_TRUE(mem->write_obj(std::uint32_t{5}, GuestAddress{0x2000}));

  EXPECT_EQ(ring->harvest(*slots, *mem), 4U);
  EXPECT_EQ(take_dirty(first), 0b1110U);
  EXPECT_EQ(take_dirty(second), 0b0101U);
  EXPECT_EQ(ring->harvest(*slots, *mem), 0U);  // nothing new published
  auto reset = KvmDirtyRing::reset(BorrowedFd(vm->fd));
  ASSERT_TRUE(reset.has_value());
  EXPECT_EQ(*reset, 4U);

  // A VM with rings has no dirty bitmap.
  auto merged = slots->merge_dirty_log(*mem);
  ASSERT_FALSE(merged.has_value());
  EXPECT_EQ(merged.error().code(), ErrorCode::KvmSlotRefused);
  EXPECT_EQ(merged.error().os_error(), ENXIO);

  // After the reset the pages are protected again: the same stores are pushed again.
  vcpu.set_rip(0x100);
  ASSERT_EQ(vcpu.run(), static_cast<std::uint32_t>(KVM_EXIT_HLT));
  std::vector<KvmDirtyPage> pages;
  EXPECT_EQ(ring->harvest(pages), 4U);
  const std::uint32_t s0 = slots->slot_for(GuestAddress{0})->slot;
  const std::uint32_t s1 = slots->slot_for(GuestAddress{kSecondBase})->slot;
  const std::vector<KvmDirtyPage> expected{{s0, 1}, {s0, 3}, {s1, 0}, {s1, 2}};
  EXPECT_EQ(pages, expected);
}
#endif  // __x86_64__

#if defined(__x86_64__)
TEST(KvmDirtyRing, EnableAfterAVcpuExistsIsRefused) {
  OPEN_VM_OR_SKIP(vm);
  auto max = KvmDirtyRing::max_bytes(BorrowedFd(vm->fd));
  ASSERT_TRUE(max.has_value());
  if (*max == 0) {
    GTEST_SKIP() << "this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)";
  }
  TestVcpu vcpu;
  ASSERT_NO_FATAL_FAILURE(vcpu.create(*vm));
  auto enabled = KvmDirtyRing::enable(BorrowedFd(vm->fd), 65536);
  ASSERT_FALSE(enabled.has_value());
  EXPECT_EQ(enabled.error().code(), ErrorCode::KvmIoctlFailed);
  EXPECT_EQ(enabled.error().os_error(), EINVAL);
  EXPECT_EQ(enabled.error().address(), static_cast<std::uint64_t>(KVM_ENABLE_CAP));
}
#endif  // __x86_64__

}  // namespace
}  // namespace guestmem
