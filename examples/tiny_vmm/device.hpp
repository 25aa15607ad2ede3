// tiny_vmm: the block device behind the ring, and the console.
//
// BlockDevice serves the requests the guest posts on the ring of guest_abi.h: it reads each
// request with read_obj, moves the payload between guest memory and a real file with
// read_exact_volatile_from / write_all_volatile_to (straight between the file and guest
// memory), and reports with write_obj and a release store of the used index. Every one of
// those writes marks its page dirty in the memory's bitmap, which is how live migration
// learns about the device's writes.
//
// Concurrency: notify() runs on the vCPU's thread (the doorbell is a synchronous exit), so
// the device's state needs no lock; the completion counter is also read by other threads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "layout.hpp"

namespace tiny_vmm {

/// The device's state that a migration or a snapshot carries: where it is in the ring.
struct DeviceState {
  guestmem::Le16 next_avail;
  guestmem::Le16 used_idx;
  guestmem::Le32 completed;
};
static_assert(guestmem::ByteValued<DeviceState>);

/// Bytes the guest writes to the console port, printed a line at a time with a prefix.
class Console {
 public:
  explicit Console(std::string prefix, bool quiet = false)
      : prefix_(std::move(prefix)), quiet_(quiet) {}
  void write(std::string_view bytes);
  /// Every complete line written so far, without prefixes.
  [[nodiscard]] std::string transcript() const;
  /// The line begun and not yet ended: console state that a migration or snapshot carries,
  /// so that a line the guest was printing at the stop comes out whole on the other side.
  [[nodiscard]] std::string pending() const;
  void set_pending(std::string line);

 private:
  std::string prefix_;
  bool quiet_;
  std::string line_;
  std::string transcript_;
  mutable std::mutex mutex_;
};

class BlockDevice {
 public:
  /// A device that reads from `input_fd` and writes to `output_fd` (both borrowed) and waits
  /// `delay` after each request, like a slow disk, so that the guest's work spans time.
  BlockDevice(MemorySpace space, int input_fd, int output_fd, std::chrono::microseconds delay)
      : space_(std::move(space)), input_fd_(input_fd), output_fd_(output_fd), delay_(delay) {}

  /// The doorbell: serves every request posted since the last call.
  /// Errors: a failure to reach the ring itself (the guest's memory map lost the ring);
  /// failures of one request (a bad address, a short file) are its status, not an error.
  Status<void> notify();

  /// Called on the vCPU's thread after each request completes, with the completion count.
  void set_on_complete(std::function<void(std::uint32_t)> hook) { on_complete_ = std::move(hook); }

  /// The requests completed since the guest booted.
  [[nodiscard]] std::uint32_t completed() const noexcept {
    return completed_.load(std::memory_order_acquire);
  }
  /// Waits until completed() >= count or `give_up()` is true (checked every millisecond).
  void wait_completed(std::uint32_t count, const std::function<bool()>& give_up) const;

  [[nodiscard]] DeviceState state() const noexcept;
  void load_state(const DeviceState& state) noexcept;

 private:
  // Serves the request at `at`; returns its status and the bytes moved.
  std::pair<std::uint32_t, std::uint32_t> serve(const Memory& mem, guestmem::GuestAddress at);

  MemorySpace space_;
  int input_fd_;
  int output_fd_;
  std::chrono::microseconds delay_;
  std::uint16_t next_avail_ = 0;
  std::uint16_t used_idx_ = 0;
  std::atomic<std::uint32_t> completed_{0};
  std::function<void(std::uint32_t)> on_complete_;
};

}  // namespace tiny_vmm
