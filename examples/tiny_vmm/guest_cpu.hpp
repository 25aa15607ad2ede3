// tiny_vmm: the processors that run the guest.
//
// A GuestCpu runs the guest until it halts, until another thread asks it to stop, or until
// something fails. Two kinds:
// - KvmCpu: one KVM vCPU running guest.S in 32-bit protected mode; its port I/O exits go to
//   the console and the block device.
// - ThreadCpu: a host thread that performs the same program, step for step, through
//   guestmem accesses (for machines where /dev/kvm is not usable).
// Both stop only at points where their state (save_state) and the device's are consistent:
// the vCPU after KVM has completed its pending I/O, the thread between two steps.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "device.hpp"
#include "layout.hpp"

namespace tiny_vmm {

enum class GuestKind : std::uint32_t { Kvm = 1, Thread = 2 };

/// "kvm" or "thread".
[[nodiscard]] const char* to_string(GuestKind kind) noexcept;

/// Why run() returned.
enum class RunEnd { Halted, Stopped };

class GuestCpu {
 public:
  virtual ~GuestCpu() = default;
  [[nodiscard]] virtual GuestKind kind() const noexcept = 0;
  /// Puts the processor at the guest's entry point.
  virtual Status<void> reset() = 0;
  /// Runs until the guest halts, stop() is called, or an error. Called on one thread at a time.
  virtual Status<RunEnd> run() = 0;
  /// Asks run() to return at its next consistent point; callable from any thread.
  virtual void stop() noexcept = 0;
  /// The processor's state (registers), valid after run() returned; and its restoration.
  [[nodiscard]] virtual Status<std::vector<std::byte>> save_state() const = 0;
  virtual Status<void> load_state(std::span<const std::byte> state) = 0;
  /// Adds to the memory's bitmaps the pages the processor wrote since the last call (KVM's
  /// dirty log; the thread's writes went through guestmem and are there already).
  virtual Status<void> merge_dirty_log(const Memory& mem) = 0;
};

/// The thread processor; its writes go through `space` (so they are tracked).
[[nodiscard]] std::unique_ptr<GuestCpu> make_thread_cpu(MemorySpace space, BlockDevice& device,
                                                        Console& console);

/// Whether /dev/kvm can run a guest here; the reason when it cannot.
[[nodiscard]] Status<void> kvm_usable();

/// A KVM vCPU in a new VM whose memory slots are `mem`'s regions, with dirty logging.
[[nodiscard]] Status<std::unique_ptr<GuestCpu>> make_kvm_cpu(const Memory& mem, BlockDevice& device,
                                                             Console& console);

}  // namespace tiny_vmm
