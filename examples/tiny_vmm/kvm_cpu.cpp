// The KVM processor: one vCPU running guest.S in 32-bit protected mode without paging.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <guestmem/kvm.hpp>

#include "guest_cpu.hpp"

namespace tiny_vmm {
namespace {

using guestmem::BorrowedFd;
using guestmem::UniqueFd;

// Where KVM may put the three pages of the real-mode TSS it needs on Intel hosts without
// unrestricted guests: above the guest's memory, in no slot.
constexpr unsigned long kTssAddr = 0xfffbd000;

std::string errno_text(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

// What a migration or snapshot carries of the vCPU.
struct KvmCpuState {
  kvm_regs regs;
  kvm_sregs sregs;
};

// A flat segment: base 0, limit 4 GiB, 32-bit.
kvm_segment flat_segment(std::uint16_t selector, std::uint8_t type) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = 1;
  s.s = 1;
  s.l = 0;
  s.g = 1;
  return s;
}

class KvmCpu final : public GuestCpu {
 public:
  KvmCpu(guestmem::KvmSystem kvm, UniqueFd vm, guestmem::KvmMemorySlots slots, UniqueFd vcpu,
         kvm_run* run, std::size_t run_size, BlockDevice& device, Console& console)
      : kvm_(std::move(kvm)), vm_(std::move(vm)), slots_(std::move(slots)),
        vcpu_(std::move(vcpu)), run_(run), run_size_(run_size), device_(device),
        console_(console) {}
  KvmCpu(const KvmCpu&) = delete;
  KvmCpu& operator=(const KvmCpu&) = delete;
  ~KvmCpu() override { ::munmap(run_, run_size_); }

  GuestKind kind() const noexcept override { return GuestKind::Kvm; }

  Status<void> reset() override {
    kvm_sregs sregs{};
    if (::ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) < 0) {
      return std::unexpected(errno_text("KVM_GET_SREGS"));
    }
    sregs.cs = flat_segment(8, 11);   // code: execute/read, accessed
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat_segment(16, 3);  // data: r/w
    sregs.cr0 |= 1;                   // protected mode, no paging
    if (::ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) < 0) {
      return std::unexpected(errno_text("KVM_SET_SREGS"));
    }
    kvm_regs regs{};
    regs.rip = TVM_CODE_ADDR;
    regs.rsp = TVM_STACK_TOP;
    regs.rflags = 2;                  // the reserved bit; interrupts off
    if (::ioctl(vcpu_.get(), KVM_SET_REGS, &regs) < 0) {
      return std::unexpected(errno_text("KVM_SET_REGS"));
    }
    return {};
  }

  Status<RunEnd> run() override {
    for (;;) {
      // A stop is honoured with one more KVM_RUN with immediate_exit set: KVM completes the
      // port I/O of the last exit (so the registers are final) and returns EINTR at once.
      const bool stopping = stop_.load(std::memory_order_acquire);
      // SAFETY: run_ is the vCPU's kvm_run mapping (run_size_ bytes, at least sizeof(kvm_run)),
      // mapped until this object is destroyed; KVM writes it only during KVM_RUN, on this
      // thread, so between runs this thread is its only user.
      run_->immediate_exit = stopping ? 1 : 0;
      if (::ioctl(vcpu_.get(), KVM_RUN, 0) < 0) {
        if (errno != EINTR && errno != EAGAIN) {
          return std::unexpected(errno_text("KVM_RUN"));
        }
        if (stopping) {
          run_->immediate_exit = 0;
          stop_.store(false, std::memory_order_release);
          return RunEnd::Stopped;
        }
        continue;
      }
      // SAFETY: as above; KVM_RUN has returned, so the exit fields are final.
      switch (run_->exit_reason) {
        case KVM_EXIT_IO:
          if (auto r = port_io(); !r) {
            return std::unexpected(r.error());
          }
          break;
        case KVM_EXIT_HLT:
          return RunEnd::Halted;
        case KVM_EXIT_MMIO:
          // The hole and the space above memory: reads see all ones (no device answers),
          // writes are dropped, as on a PC bus.
          if (run_->mmio.is_write == 0) {
            // SAFETY: mmio.data is an 8-byte array inside kvm_run.
            std::memset(run_->mmio.data, 0xff, sizeof run_->mmio.data);
          }
          ++mmio_exits_;
          break;
        case KVM_EXIT_FAIL_ENTRY:
          return std::unexpected("KVM could not enter the guest (hardware entry failure 0x" +
                                 to_hex(run_->fail_entry.hardware_entry_failure_reason) + ")");
        case KVM_EXIT_INTERNAL_ERROR:
          return std::unexpected("KVM internal error, suberror " +
                                 std::to_string(run_->internal.suberror));
        case KVM_EXIT_SHUTDOWN:
          return std::unexpected(std::string("the guest shut down (triple fault)"));
        default:
          return std::unexpected("unexpected KVM exit reason " +
                                 std::to_string(run_->exit_reason));
      }
    }
  }

  void stop() noexcept override { stop_.store(true, std::memory_order_release); }

  Status<std::vector<std::byte>> save_state() const override {
    KvmCpuState state{};
    if (::ioctl(vcpu_.get(), KVM_GET_REGS, &state.regs) < 0) {
      return std::unexpected(errno_text("KVM_GET_REGS"));
    }
    if (::ioctl(vcpu_.get(), KVM_GET_SREGS, &state.sregs) < 0) {
      return std::unexpected(errno_text("KVM_GET_SREGS"));
    }
    std::vector<std::byte> out(sizeof state);
    std::memcpy(out.data(), &state, sizeof state);
    return out;
  }

  Status<void> load_state(std::span<const std::byte> bytes) override {
    KvmCpuState state{};
    if (bytes.size() != sizeof state) {
      return std::unexpected("vCPU state has " + std::to_string(bytes.size()) +
                             " bytes, expected " + std::to_string(sizeof state));
    }
    std::memcpy(&state, bytes.data(), sizeof state);
    if (::ioctl(vcpu_.get(), KVM_SET_SREGS, &state.sregs) < 0) {
      return std::unexpected(errno_text("KVM_SET_SREGS"));
    }
    if (::ioctl(vcpu_.get(), KVM_SET_REGS, &state.regs) < 0) {
      return std::unexpected(errno_text("KVM_SET_REGS"));
    }
    return {};
  }

  Status<void> merge_dirty_log(const Memory& mem) override {
    if (auto r = slots_.merge_dirty_log(mem); !r) {
      return std::unexpected(describe("merging KVM's dirty log", r.error()));
    }
    return {};
  }

 private:
  static std::string to_hex(std::uint64_t v) {
    char buf[20];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
  }

  Status<void> port_io() {
    auto& io = run_->io;
    // SAFETY: KVM places the I/O data inside the kvm_run mapping at data_offset, size *
    // count bytes long; the mapping is run_size_ bytes, which KVM sized to hold it.
    auto* data = reinterpret_cast<char*>(run_) + io.data_offset;
    const std::size_t len = std::size_t{io.size} * io.count;
    if (io.data_offset + len > run_size_) {
      return std::unexpected(std::string("KVM reported port I/O data outside kvm_run"));
    }
    if (io.direction == KVM_EXIT_IO_IN) {
      std::memset(data, 0xff, len);
      return {};
    }
    if (io.port == kConsolePort) {
      console_.write(std::string_view(data, len));
    } else if (io.port == kDoorbellPort) {
      return device_.notify();
    }
    return {};
  }

  guestmem::KvmSystem kvm_;
  UniqueFd vm_;
  guestmem::KvmMemorySlots slots_;
  UniqueFd vcpu_;
  kvm_run* run_;
  std::size_t run_size_;
  BlockDevice& device_;
  Console& console_;
  std::atomic<bool> stop_{false};
  std::uint64_t mmio_exits_ = 0;
};

Status<std::pair<guestmem::KvmSystem, UniqueFd>> open_vm() {
  auto kvm = guestmem::KvmSystem::open();
  if (!kvm) {
    return std::unexpected(describe("/dev/kvm", kvm.error()));
  }
  auto vm = kvm->create_vm();
  if (!vm) {
    return std::unexpected(describe("creating a VM", vm.error()));
  }
  if (::ioctl(vm->get(), KVM_SET_TSS_ADDR, kTssAddr) < 0) {
    return std::unexpected(errno_text("KVM_SET_TSS_ADDR"));
  }
  return std::pair{std::move(*kvm), std::move(*vm)};
}

}  // namespace

Status<void> kvm_usable() {
  auto vm = open_vm();
  if (!vm) {
    return std::unexpected(vm.error());
  }
  return {};
}

Status<std::unique_ptr<GuestCpu>> make_kvm_cpu(const Memory& mem, BlockDevice& device,
                                               Console& console) {
  auto opened = open_vm();
  if (!opened) {
    return std::unexpected(opened.error());
  }
  auto& [kvm, vm] = *opened;
  auto slots = guestmem::KvmMemorySlots::create(BorrowedFd(vm), {.log_dirty_pages = true});
  if (!slots) {
    return std::unexpected(describe("KVM memory slots", slots.error()));
  }
  if (auto r = slots->sync(mem); !r) {
    return std::unexpected(describe("registering guest memory with KVM", r.error()));
  }
  auto run_size = kvm.vcpu_mmap_size();
  if (!run_size) {
    return std::unexpected(describe("KVM_GET_VCPU_MMAP_SIZE", run_size.error()));
  }
  UniqueFd vcpu{::ioctl(vm.get(), KVM_CREATE_VCPU, 0UL)};
  if (!vcpu) {
    return std::unexpected(errno_text("KVM_CREATE_VCPU"));
  }
  void* run = ::mmap(nullptr, *run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.get(), 0);
  if (run == MAP_FAILED) {
    return std::unexpected(errno_text("mmap of kvm_run"));
  }
  auto cpu = std::make_unique<KvmCpu>(std::move(kvm), std::move(vm), std::move(*slots),
                                      std::move(vcpu), static_cast<kvm_run*>(run), *run_size,
                                      device, console);
  if (auto r = cpu->reset(); !r) {
    return std::unexpected(r.error());
  }
  return std::unique_ptr<GuestCpu>(std::move(cpu));
}

}  // namespace tiny_vmm
