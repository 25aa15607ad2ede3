// tiny_vmm: a machine: guest memory, the block device, the console and a processor, with
// the processor running on its own thread.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "device.hpp"
#include "guest_cpu.hpp"
#include "layout.hpp"

namespace tiny_vmm {

struct MachineConfig {
  GuestKind kind = GuestKind::Thread;
  /// The device's input file (read) and output file (created if missing, written).
  std::string input_path;
  std::string output_path;
  /// The device's delay after each request.
  std::chrono::microseconds io_delay{0};
  /// Put before each console line.
  std::string console_prefix;
  /// Keep console lines out of stdout (they are still in the transcript).
  bool quiet = false;
};

class Machine {
 public:
  /// A machine with the guest program loaded into fresh memory, at its entry point.
  static Status<std::unique_ptr<Machine>> boot(const MachineConfig& config);
  /// A machine with the contents of `mem` (received or restored): load_state() must follow
  /// before start().
  static Status<std::unique_ptr<Machine>> with_memory(const MachineConfig& config, Memory mem);

  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;
  /// Stops and joins the processor's thread if it still runs.
  ~Machine();

  /// Runs the processor on a new thread. Preconditions: not running.
  void start();
  /// Stops the processor at its next consistent point and joins its thread.
  Status<RunEnd> pause();
  /// Waits for the processor to return by itself (halt, a requested stop, or an error).
  Status<RunEnd> wait();
  /// Asks the processor to stop once the device has completed `count` requests in all.
  void stop_after_request(std::uint32_t count);
  /// Runs the processor from where it is until the guest halts. Preconditions: not running.
  /// Errors: the processor's, or "the guest stopped before halting" when it stopped
  /// otherwise (a requested stop).
  Status<void> run_to_halt();

  /// Whether the guest reached its final hlt (as far as the last run knows).
  [[nodiscard]] bool halted() const noexcept { return halted_; }

  /// The processor's and the device's state. Preconditions: not running.
  [[nodiscard]] Status<std::vector<std::byte>> save_state() const;
  /// Errors: a state of another kind of processor, or of the wrong size.
  Status<void> load_state(std::span<const std::byte> state);

  /// Takes the pages written since the last call, guest and device writes together, per
  /// region in KVM_GET_DIRTY_LOG's layout, into `words` (resized to the regions).
  Status<void> take_dirty(std::vector<std::vector<std::uint64_t>>& words);

  [[nodiscard]] const MemorySpace& space() const noexcept { return space_; }
  [[nodiscard]] BlockDevice& device() noexcept { return *device_; }
  [[nodiscard]] const Console& console() const noexcept { return console_; }
  [[nodiscard]] Console& console() noexcept { return console_; }
  [[nodiscard]] GuestKind kind() const noexcept { return cpu_->kind(); }

 private:
  Machine(const MachineConfig& config, Memory mem);
  Status<void> open_files(const MachineConfig& config);
  Status<void> make_cpu(GuestKind kind);

  MemorySpace space_;
  guestmem::UniqueFd input_;
  guestmem::UniqueFd output_;
  Console console_;
  std::unique_ptr<BlockDevice> device_;
  std::unique_ptr<GuestCpu> cpu_;
  std::thread thread_;
  std::optional<Status<RunEnd>> result_;
  std::atomic<std::uint32_t> stop_after_{0};
  bool halted_ = false;
};

}  // namespace tiny_vmm
