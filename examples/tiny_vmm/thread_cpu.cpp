// The thread processor: guest.S's program performed by a host thread through guestmem.
#include <array>
#include <cstring>

#include "guest_cpu.hpp"

namespace tiny_vmm {
namespace {

using guestmem::GuestAddress;
using guestmem::Le16;
using guestmem::Le32;
using guestmem::Le64;

// Where the program is: the thread's "instruction pointer" and its one live register.
enum class Pc : std::uint32_t { Start, Read, Transform, Write, Print, Done, Halted };

struct ThreadRegs {
  Le32 pc;
  Le32 block;
};
static_assert(guestmem::ByteValued<ThreadRegs>);

class ThreadCpu final : public GuestCpu {
 public:
  ThreadCpu(MemorySpace space, BlockDevice& device, Console& console)
      : space_(std::move(space)), device_(device), console_(console) {}

  GuestKind kind() const noexcept override { return GuestKind::Thread; }

  Status<void> reset() override {
    pc_ = Pc::Start;
    block_ = 0;
    return {};
  }

  Status<RunEnd> run() override {
    while (!stop_.exchange(false, std::memory_order_acq_rel)) {
      if (pc_ == Pc::Halted) {
        return RunEnd::Halted;
      }
      if (auto r = step(); !r) {
        return std::unexpected(r.error());
      }
    }
    return RunEnd::Stopped;
  }

  void stop() noexcept override { stop_.store(true, std::memory_order_release); }

  Status<std::vector<std::byte>> save_state() const override {
    const ThreadRegs regs{Le32(static_cast<std::uint32_t>(pc_)), Le32(block_)};
    std::vector<std::byte> out(sizeof regs);
    std::memcpy(out.data(), &regs, sizeof regs);
    return out;
  }

  Status<void> load_state(std::span<const std::byte> state) override {
    ThreadRegs regs;
    if (state.size() != sizeof regs) {
      return std::unexpected("thread processor state has " + std::to_string(state.size()) +
                             " bytes, expected " + std::to_string(sizeof regs));
    }
    std::memcpy(&regs, state.data(), sizeof regs);
    if (regs.pc.to_native() > static_cast<std::uint32_t>(Pc::Halted) ||
        regs.block.to_native() > kNumBlocks) {
      return std::unexpected(std::string("thread processor state out of range"));
    }
    pc_ = static_cast<Pc>(regs.pc.to_native());
    block_ = regs.block.to_native();
    return {};
  }

  Status<void> merge_dirty_log(const Memory&) override { return {}; }

 private:
  // One step of guest.S's main loop.
  Status<void> step() {
    switch (pc_) {
      case Pc::Start:
        console_.write("guest: swapping the case of 8 blocks\n");
        pc_ = block_ < kNumBlocks ? Pc::Read : Pc::Done;
        return {};
      case Pc::Read:
        return submit(TVM_OP_READ, Pc::Transform);
      case Pc::Transform:
        return transform();
      case Pc::Write:
        return submit(TVM_OP_WRITE, Pc::Print);
      case Pc::Print: {
        const std::string line = "guest: block " + std::to_string(block_) + " done\n";
        console_.write(line);
        ++block_;
        pc_ = block_ < kNumBlocks ? Pc::Read : Pc::Done;
        return {};
      }
      case Pc::Done:
        console_.write("guest: all blocks done\n");
        pc_ = Pc::Halted;
        return {};
      case Pc::Halted:
        return {};
    }
    return {};
  }

  // guest.S's submit: post, ring, check the status.
  Status<void> submit(std::uint32_t op, Pc next) {
    {
      auto guard = space_.memory();
      const Memory& mem = *guard;
      auto avail = mem.read_obj<Le16>(kAvailIdx);
      if (!avail) {
        return std::unexpected(describe("guest: reading the avail index", avail.error()));
      }
      const std::uint16_t idx = avail->to_native();
      const std::uint32_t slot = idx % kRingSize;
      const GuestAddress req = kRequestTable.unchecked_add(std::uint64_t{slot} * sizeof(Request));
      const Request r{Le32(op), Le32(kBlockSize),
                      Le64(std::uint64_t{block_} << TVM_BLOCK_SHIFT),
                      Le64(block_buffer(block_).raw_value()), Le32(TVM_STATUS_PENDING), Le32(0)};
      if (auto w = mem.write_obj(r, req); !w) {
        return std::unexpected(describe("guest: writing a request", w.error()));
      }
      if (auto w = mem.write_obj(Le16(static_cast<std::uint16_t>(slot)),
                                 kAvailRing.unchecked_add(2U * slot));
          !w) {
        return std::unexpected(describe("guest: writing the avail ring", w.error()));
      }
      expected_used_ = static_cast<std::uint16_t>(idx + 1);
      if (auto w = mem.store<std::uint16_t>(expected_used_, kAvailIdx, std::memory_order_release);
          !w) {
        return std::unexpected(describe("guest: writing the avail index", w.error()));
      }
      request_ = req;
    }
    // The doorbell: a synchronous exit to the device, as KVM_EXIT_IO is for the vCPU.
    if (auto d = device_.notify(); !d) {
      return d;
    }
    auto guard = space_.memory();
    auto used = guard->load<std::uint16_t>(kUsedIdx, std::memory_order_acquire);
    if (!used || *used != expected_used_) {
      return std::unexpected(std::string("guest: the device did not complete the request"));
    }
    auto status = guard->read_obj<Le32>(request_.unchecked_add(TVM_REQ_STATUS));
    if (!status || status->to_native() != TVM_STATUS_OK) {
      console_.write("guest: I/O error\n");
      pc_ = Pc::Halted;
      return {};
    }
    pc_ = next;
    return {};
  }

  // guest.S's loop of xorl: every word of the block, through a host copy.
  Status<void> transform() {
    auto guard = space_.memory();
    std::array<std::byte, kBlockSize> data;
    const GuestAddress buf = block_buffer(block_);
    if (auto r = guard->read_slice(std::span(data), buf); !r) {
      return std::unexpected(describe("guest: reading a block", r.error()));
    }
    for (std::size_t i = 0; i < data.size(); i += 4) {
      std::uint32_t word;
      std::memcpy(&word, &data[i], 4);
      word = Le32(Le32(word).to_native() ^ kXorKey).to_native();
      std::memcpy(&data[i], &word, 4);
    }
    if (auto r = guard->write_slice(std::span<const std::byte>(data), buf); !r) {
      return std::unexpected(describe("guest: writing a block", r.error()));
    }
    pc_ = Pc::Write;
    return {};
  }

  MemorySpace space_;
  BlockDevice& device_;
  Console& console_;
  Pc pc_ = Pc::Start;
  std::uint32_t block_ = 0;
  std::uint16_t expected_used_ = 0;
  GuestAddress request_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace

const char* to_string(GuestKind kind) noexcept {
  return kind == GuestKind::Kvm ? "kvm" : "thread";
}

std::unique_ptr<GuestCpu> make_thread_cpu(MemorySpace space, BlockDevice& device,
                                          Console& console) {
  return std::make_unique<ThreadCpu>(std::move(space), device, console);
}

}  // namespace tiny_vmm
