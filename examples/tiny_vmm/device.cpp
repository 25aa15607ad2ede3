#include "device.hpp"

#include <unistd.h>

#include <cstdio>
#include <thread>

namespace tiny_vmm {

using guestmem::GuestAddress;

void Console::write(std::string_view bytes) {
  std::lock_guard lock(mutex_);
  for (char c : bytes) {
    if (c != '\n') {
      line_ += c;
      continue;
    }
    if (!quiet_) {
      std::printf("%s%s\n", prefix_.c_str(), line_.c_str());
      std::fflush(stdout);
    }
    transcript_ += line_;
    transcript_ += '\n';
    line_.clear();
  }
}

std::string Console::transcript() const {
  std::lock_guard lock(mutex_);
  return transcript_;
}

std::string Console::pending() const {
  std::lock_guard lock(mutex_);
  return line_;
}

void Console::set_pending(std::string line) {
  std::lock_guard lock(mutex_);
  line_ = std::move(line);
}

Status<void> BlockDevice::notify() {
  auto guard = space_.memory();
  const Memory& mem = *guard;
  auto avail = mem.load<std::uint16_t>(kAvailIdx, std::memory_order_acquire);
  if (!avail) {
    return std::unexpected(describe("reading the avail index", avail.error()));
  }
  // The guest may not post more than the ring holds; anything beyond is ignored until the
  // next doorbell rather than trusted.
  std::uint16_t pending = static_cast<std::uint16_t>(*avail - next_avail_);
  if (pending > kRingSize) {
    pending = static_cast<std::uint16_t>(kRingSize);
  }
  for (; pending > 0; --pending) {
    const GuestAddress slot_addr = kAvailRing.unchecked_add(2U * (next_avail_ % kRingSize));
    auto id = mem.read_obj<guestmem::Le16>(slot_addr);
    if (!id) {
      return std::unexpected(describe("reading the avail ring", id.error()));
    }
    const std::uint32_t n = id->to_native();
    std::uint32_t status = TVM_STATUS_BADREQ;
    std::uint32_t moved = 0;
    if (n < kRingSize) {
      const GuestAddress req = kRequestTable.unchecked_add(std::uint64_t{n} * sizeof(Request));
      std::tie(status, moved) = serve(mem, req);
      if (auto r = mem.write_obj(guestmem::Le32(status), req.unchecked_add(TVM_REQ_STATUS)); !r) {
        return std::unexpected(describe("writing a request's status", r.error()));
      }
    }
    const GuestAddress used_addr = kUsedRing.unchecked_add(8U * (used_idx_ % kRingSize));
    if (auto r = mem.write_obj(UsedElem{guestmem::Le32(n), guestmem::Le32(moved)}, used_addr); !r) {
      return std::unexpected(describe("writing the used ring", r.error()));
    }
    ++next_avail_;
    ++used_idx_;
    // Release: the guest that sees the new index sees the status and the payload.
    if (auto r = mem.store<std::uint16_t>(used_idx_, kUsedIdx, std::memory_order_release); !r) {
      return std::unexpected(describe("writing the used index", r.error()));
    }
    const std::uint32_t done = completed_.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (delay_.count() > 0) {
      std::this_thread::sleep_for(delay_);
    }
    if (on_complete_) {
      on_complete_(done);
    }
  }
  return {};
}

std::pair<std::uint32_t, std::uint32_t> BlockDevice::serve(const Memory& mem, GuestAddress at) {
  // One read of the request: the guest may change it meanwhile, and every field is used
  // from this copy only.
  auto req = mem.read_obj<Request>(at);
  if (!req) {
    return {TVM_STATUS_BADREQ, 0};
  }
  const std::uint32_t op = req->op.to_native();
  const std::uint32_t len = req->len.to_native();
  const std::uint64_t offset = req->offset.to_native();
  const GuestAddress addr{req->addr.to_native()};
  if ((op != TVM_OP_READ && op != TVM_OP_WRITE) || len > kRegion0Size ||
      offset > (std::uint64_t{1} << 40)) {
    return {TVM_STATUS_BADREQ, 0};
  }
  const int fd = op == TVM_OP_READ ? input_fd_ : output_fd_;
  if (::lseek(fd, static_cast<off_t>(offset), SEEK_SET) < 0) {
    return {TVM_STATUS_IOERR, 0};
  }
  guestmem::BorrowedFd file{fd};
  // Straight between the file and guest memory, whichever regions the buffer lies in; an
  // address in the hole or past the end fails the request, not the VMM.
  auto moved = op == TVM_OP_READ ? mem.read_exact_volatile_from(addr, file, len)
                                 : mem.write_all_volatile_to(addr, file, len);
  if (!moved) {
    return {TVM_STATUS_IOERR, static_cast<std::uint32_t>(moved.error().completed())};
  }
  return {TVM_STATUS_OK, len};
}

void BlockDevice::wait_completed(std::uint32_t count, const std::function<bool()>& give_up) const {
  while (completed() < count && !give_up()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

DeviceState BlockDevice::state() const noexcept {
  return DeviceState{guestmem::Le16(next_avail_), guestmem::Le16(used_idx_),
                     guestmem::Le32(completed())};
}

void BlockDevice::load_state(const DeviceState& state) noexcept {
  next_avail_ = state.next_avail.to_native();
  used_idx_ = state.used_idx.to_native();
  completed_.store(state.completed.to_native(), std::memory_order_release);
}

}  // namespace tiny_vmm
