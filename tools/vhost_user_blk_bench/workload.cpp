// The workloads: one engine that keeps every slot busy with the next operation of a plan.
#include "workload.hpp"

#include <fmt/format.h>
#include <random>
#include <vector>

#include "pattern.hpp"

namespace guestmem::vhost_user_bench {
namespace {

using vhost_user::BlkRequestType;
using vhost_user::BlkStatus;
using vhost_user::kSectorSize;

constexpr std::uint64_t kNoBlock = ~std::uint64_t{0};

struct SlotState {
  std::uint64_t block = kNoBlock;
  BlkRequestType type = BlkRequestType::In;
  /// Verify mode: the read that checks this slot's write comes next.
  bool read_back_pending = false;
};

class Engine {
 public:
  Engine(Frontend& frontend, const WorkloadOptions& options, std::uint64_t blocks)
      : fe_(frontend), options_(options), generation_(blocks, 0), busy_(blocks, false),
        slots_(frontend.options().queue_depth), buffer_(options.block_size),
        random_(options.seed), nonce_(std::random_device{}() ^ options.seed) {}

  // Runs until `next` says there is nothing more to start and every slot finished. `next`
  // fills in a slot's block and type and returns false when no operation is left.
  template <class Next>
  Outcome<void> run(Next next) {
    std::uint32_t in_flight = 0;
    bool more = true;
    std::vector<Completion> done;
    for (std::uint32_t s = 0; s < slots_.size() && more; ++s) {
      more = next(slots_[s]);
      if (more) {
        if (auto ok = start(s); !ok) return ok;
        ++in_flight;
      }
    }
    while (in_flight > 0) {
      done.clear();
      auto got = fe_.wait_completions(done, options_.request_timeout);
      if (!got) return std::unexpected(got.error());
      if (*got == 0) {
        return std::unexpected(fmt::format("{} requests unanswered after {} ms", in_flight,
                                           options_.request_timeout.count()));
      }
      for (const Completion& c : done) {
        if (auto ok = finish(c); !ok) return ok;
        --in_flight;
        SlotState& slot = slots_[c.slot];
        if (slot.read_back_pending) {
          slot.read_back_pending = false;
          slot.type = BlkRequestType::In;
        } else {
          busy_[slot.block] = false;
          more = more && next(slot);
          if (!more) continue;
        }
        if (auto ok = start(c.slot); !ok) return ok;
        ++in_flight;
      }
    }
    return {};
  }

  // A random block that no slot is using.
  std::uint64_t random_idle_block() {
    std::uniform_int_distribution<std::uint64_t> pick(0, generation_.size() - 1);
    for (;;) {
      const std::uint64_t block = pick(random_);
      if (!busy_[block]) return block;
    }
  }
  void claim(std::uint64_t block) { busy_[block] = true; }

  std::uint64_t completed = 0;
  std::uint64_t checked = 0;

 private:
  Outcome<void> start(std::uint32_t s) {
    SlotState& slot = slots_[s];
    busy_[slot.block] = true;
    if (slot.type == BlkRequestType::Out) {
      ++generation_[slot.block];
      fill_pattern(buffer_, key(slot.block));
      if (auto ok = fe_.memory().write_slice(buffer_, fe_.data_address(s)); !ok) {
        return std::unexpected("data buffer: " + ok.error().message());
      }
    }
    const std::uint64_t sector = slot.block * options_.block_size / kSectorSize;
    return fe_.submit_io(s, slot.type, sector, options_.block_size);
  }

  Outcome<void> finish(const Completion& c) {
    ++completed;
    const SlotState& slot = slots_[c.slot];
    const bool read = slot.type == BlkRequestType::In;
    if (c.status != static_cast<std::uint8_t>(BlkStatus::Ok)) {
      return std::unexpected(fmt::format("{} of block {} failed with status {}",
                                         read ? "read" : "write", slot.block, c.status));
    }
    // The used length counts the bytes written into the chain: the data of a read, and the
    // status byte (a back end may leave the status byte out, as QEMU's own devices do not).
    const std::uint32_t data = read ? options_.block_size : 0;
    if (c.used_len != data + 1 && c.used_len != data) {
      return std::unexpected(fmt::format("{} of block {}: used length {}, expected {}",
                                         read ? "read" : "write", slot.block, c.used_len,
                                         data + 1));
    }
    if (!read) return {};
    if (auto ok = fe_.memory().read_slice(buffer_, fe_.data_address(c.slot)); !ok) {
      return std::unexpected("data buffer: " + ok.error().message());
    }
    ++checked;
    if (auto at = pattern_mismatch(buffer_, key(slot.block))) {
      return std::unexpected(fmt::format("block {} (generation {}): wrong data at byte {}",
                                         slot.block, generation_[slot.block], *at));
    }
    return {};
  }

  std::uint64_t key(std::uint64_t block) const {
    return block_key(nonce_, block, generation_[block]);
  }

  Frontend& fe_;
  const WorkloadOptions& options_;
  std::vector<std::uint32_t> generation_;
  std::vector<bool> busy_;
  std::vector<SlotState> slots_;
  std::vector<std::byte> buffer_;
  std::mt19937_64 random_;
  std::uint64_t nonce_;
};

}  // namespace

Outcome<WorkloadResult> run_workload(Frontend& frontend, const WorkloadOptions& options) {
  if (options.block_size == 0 || options.block_size % kSectorSize != 0 ||
      options.block_size > frontend.options().slot_data_size) {
    return std::unexpected("the block size must be a multiple of 512 within a slot");
  }
  const std::uint64_t span = options.span == 0 || options.span > frontend.capacity()
                                 ? frontend.capacity()
                                 : options.span;
  const std::uint64_t blocks = span / options.block_size;
  if (blocks < 2ULL * frontend.options().queue_depth) {
    return std::unexpected(fmt::format("{} blocks of {} bytes are too few for queue depth {}",
                                       blocks, options.block_size,
                                       frontend.options().queue_depth));
  }
  Engine engine(frontend, options, blocks);
  WorkloadResult result;
  using Clock = std::chrono::steady_clock;

  // Fill: every block once, in order, so that every later read has a known answer.
  auto fill_start = Clock::now();
  std::uint64_t next_fill = 0;
  auto fill = engine.run([&](SlotState& slot) {
    if (next_fill == blocks) return false;
    slot = {.block = next_fill++, .type = BlkRequestType::Out, .read_back_pending = false};
    return true;
  });
  if (!fill) return std::unexpected("fill: " + fill.error());
  result.fill_seconds = std::chrono::duration<double>(Clock::now() - fill_start).count();

  engine.completed = 0;
  engine.checked = 0;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(options.duration);
  std::uint64_t started = 0;
  auto timed = engine.run([&](SlotState& slot) {
    // The clock is read every 32 requests: often enough for a deadline, rarely enough to
    // cost nothing.
    if ((++started & 31) == 0 && Clock::now() >= deadline) return false;
    const std::uint64_t block = engine.random_idle_block();
    engine.claim(block);
    switch (options.mode) {
      case Mode::RandRead:
        slot = {.block = block, .type = BlkRequestType::In, .read_back_pending = false};
        break;
      case Mode::RandWrite:
        slot = {.block = block, .type = BlkRequestType::Out, .read_back_pending = false};
        break;
      case Mode::Verify:
        slot = {.block = block, .type = BlkRequestType::Out, .read_back_pending = true};
        break;
    }
    return true;
  });
  if (!timed) return std::unexpected(timed.error());
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.requests = engine.completed;
  result.bytes = engine.completed * options.block_size;
  result.blocks_checked = engine.checked;

  if (options.mode != Mode::RandRead) {
    std::uint64_t next_check = 0;
    auto check = engine.run([&](SlotState& slot) {
      if (next_check == blocks) return false;
      slot = {.block = next_check++, .type = BlkRequestType::In, .read_back_pending = false};
      return true;
    });
    if (!check) return std::unexpected("final read-back: " + check.error());
    result.blocks_checked = engine.checked;
  }
  return result;
}

}  // namespace guestmem::vhost_user_bench
