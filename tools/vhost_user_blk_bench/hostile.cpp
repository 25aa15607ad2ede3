// The hostile cases: each builds its chain in slot 0 of a fresh front end, slot 1 serves the
// correct read afterwards, and every other data buffer holds a canary.
#include "hostile.hpp"

#include <fmt/core.h>

#include <array>
#include <vector>

#include "frontend.hpp"

namespace guestmem::vhost_user_bench {
namespace {

using namespace vhost_user;

constexpr std::uint32_t kBlock = 4096;
constexpr std::uint32_t kDepth = 4;
constexpr std::uint32_t kQueueSize = 256;
constexpr std::byte kCanary{0x5a};
constexpr std::uint32_t kHostileSlot = 0;
constexpr std::uint32_t kCheckSlot = 1;
// Slot 3 is the last; its data buffer is what TruncatedMemory cuts away.
constexpr std::uint32_t kTruncatedSlot = kDepth - 1;

constexpr std::array kCases{
    HostileCase{HostileKind::DescriptorLoop, "descriptor-loop"},
    HostileCase{HostileKind::ChainLongerThanQueue, "chain-longer-than-queue"},
    HostileCase{HostileKind::AddressInHole, "address-in-hole"},
    HostileCase{HostileKind::LengthOverflows, "length-overflows"},
    HostileCase{HostileKind::WriteIntoReadable, "write-into-readable"},
    HostileCase{HostileKind::NextIndexOutOfRange, "next-index-out-of-range"},
    HostileCase{HostileKind::HeadIndexOutOfRange, "head-index-out-of-range"},
    HostileCase{HostileKind::ShortHeader, "short-header"},
    HostileCase{HostileKind::ReadableStatus, "readable-status"},
    HostileCase{HostileKind::TruncatedMemory, "truncated-memory"},
    HostileCase{HostileKind::TruncatedInFlight, "truncated-in-flight"},
};

std::string_view answer_name(HostileAnswer answer) {
  switch (answer) {
    case HostileAnswer::ErrorStatus: return "error status";
    case HostileAnswer::NoStatus: return "used, no status";
    case HostileAnswer::OkStatus: return "OK status";
    case HostileAnswer::Disconnected: return "disconnected";
    case HostileAnswer::NoAnswer: return "no answer";
    case HostileAnswer::SetupFailed: return "setup failed";
  }
  return "?";
}

FrontendOptions options_for(const std::string& socket_path, std::chrono::milliseconds timeout) {
  return {.socket_path = socket_path, .queue_depth = kDepth, .slot_data_size = kBlock,
          .queue_size = kQueueSize, .reply_timeout = timeout};
}

// The slots whose data buffers the case lets the device write.
bool device_may_write(const HostileCase& c, std::uint32_t slot) {
  return slot == kCheckSlot || (slot == kHostileSlot && c.kind != HostileKind::WriteIntoReadable);
}

// Writes the hostile request of `c` into slot 0's descriptors and makes it available.
Outcome<void> submit_case(Frontend& fe, const HostileCase& c) {
  const BlkRequestHeader header{.type = Le32{to_underlying(BlkRequestType::In)},
                                .ioprio = Le32{0}, .sector = Le64{0}};
  if (auto ok = fe.memory().write_obj(header, fe.header_address(kHostileSlot)); !ok) {
    return std::unexpected(ok.error().message());
  }
  const std::uint64_t h = fe.header_address(kHostileSlot).raw_value();
  const std::uint64_t d = fe.data_address(kHostileSlot).raw_value();
  const std::uint64_t s = fe.status_address(kHostileSlot).raw_value();
  constexpr std::uint16_t kRW = kDescFNext | kDescFWrite;
  // A well-formed read is {h, 16, NEXT, 1}, {d, 4096, NEXT|WRITE, 2}, {s, 1, WRITE, 0}.
  std::vector<RawDescriptor> chain = {{h, sizeof(BlkRequestHeader), kDescFNext, 1},
                                      {d, kBlock, kRW, 2},
                                      {s, 1, kDescFWrite, 0}};
  std::uint16_t head = 0;
  switch (c.kind) {
    case HostileKind::DescriptorLoop:
      chain[1].next = 0;
      break;
    case HostileKind::ChainLongerThanQueue:
      chain.resize(kQueueSize);
      for (std::uint32_t i = 1; i < kQueueSize; ++i) {
        chain[i] = {d, 512, kRW, static_cast<std::uint16_t>((i + 1) % kQueueSize)};
      }
      break;
    case HostileKind::AddressInHole:
      chain[1].addr = fe.memory_size() + 0x100000;
      break;
    case HostileKind::LengthOverflows:
      chain[1].addr = ~std::uint64_t{0} - 0xfff;
      chain[1].len = 0x2000;
      break;
    case HostileKind::WriteIntoReadable:
      chain[1].flags = kDescFNext;
      break;
    case HostileKind::NextIndexOutOfRange:
      chain[1].next = kQueueSize + 5;
      break;
    case HostileKind::HeadIndexOutOfRange:
      head = kQueueSize + 7;
      break;
    case HostileKind::ShortHeader:
      chain[0].len = 8;
      break;
    case HostileKind::ReadableStatus:
      chain[2].flags = 0;
      break;
    case HostileKind::TruncatedMemory:
      chain[1].addr = fe.data_address(kTruncatedSlot).raw_value();
      if (auto ok = fe.truncate_memory(fe.data_address(kTruncatedSlot).raw_value()); !ok) {
        return std::unexpected(ok.error());
      }
      break;
    case HostileKind::TruncatedInFlight:
      chain[1].addr = fe.data_address(kTruncatedSlot).raw_value();
      if (auto ok = fe.submit_raw(kHostileSlot, 0, chain, head); !ok) return ok;
      return fe.truncate_memory(fe.data_address(kTruncatedSlot).raw_value());
  }
  return fe.submit_raw(kHostileSlot, 0, chain, head);
}

// Bytes of the data buffers the device had no right to write that no longer hold the canary.
Outcome<std::uint64_t> count_stray_bytes(const Frontend& fe, const HostileCase& c) {
  std::vector<std::byte> buffer(kBlock);
  std::uint64_t stray = 0;
  for (std::uint32_t slot = 0; slot < kDepth; ++slot) {
    if (device_may_write(c, slot)) continue;
    if (slot == kTruncatedSlot && (c.kind == HostileKind::TruncatedMemory ||
                                   c.kind == HostileKind::TruncatedInFlight)) {
      continue;
    }
    if (auto ok = fe.memory().read_slice(buffer, fe.data_address(slot)); !ok) {
      return std::unexpected(ok.error().message());
    }
    for (std::byte b : buffer) stray += b != kCanary ? 1 : 0;
  }
  return stray;
}

}  // namespace

std::span<const HostileCase> hostile_cases() noexcept { return kCases; }

HostileReport run_hostile_case(const HostileCase& c, const std::string& socket_path,
                               std::chrono::milliseconds timeout) {
  HostileReport report;
  auto fe = Frontend::connect(options_for(socket_path, timeout));
  if (!fe) {
    report.answer = HostileAnswer::SetupFailed;
    report.detail = fe.error();
    return report;
  }
  const std::vector<std::byte> canary(kBlock, kCanary);
  for (std::uint32_t slot = 0; slot < kDepth; ++slot) {
    if (auto ok = fe->memory().write_slice(canary, fe->data_address(slot)); !ok) {
      report.answer = HostileAnswer::SetupFailed;
      report.detail = ok.error().message();
      return report;
    }
  }
  if (auto ok = submit_case(*fe, c); !ok) {
    report.answer = HostileAnswer::SetupFailed;
    report.detail = "submit: " + ok.error();
    return report;
  }
  std::vector<Completion> done;
  auto got = fe->wait_completions(done, timeout);
  if (!got) {
    if (got.error() == "disconnected") {
      report.answer = HostileAnswer::Disconnected;
    } else {
      report.answer = HostileAnswer::NoAnswer;
      report.detail = got.error();
    }
  } else if (*got == 0) {
    report.answer = HostileAnswer::NoAnswer;
  } else {
    report.status = done.front().status;
    report.answer = report.status == 0xff ? HostileAnswer::NoStatus
                    : report.status == static_cast<std::uint8_t>(BlkStatus::Ok)
                        ? HostileAnswer::OkStatus
                        : HostileAnswer::ErrorStatus;
  }

  if (auto stray = count_stray_bytes(*fe, c); stray) {
    report.stray_bytes = *stray;
  } else {
    report.detail = "canary check: " + stray.error();
  }

  if (report.answer != HostileAnswer::Disconnected && fe->connected()) {
    done.clear();
    auto ok = fe->submit_io(kCheckSlot, BlkRequestType::In, 0, kBlock);
    auto answered = ok ? fe->wait_completions(done, timeout) : Outcome<std::size_t>(0);
    report.served_after = answered && *answered > 0 && done.back().slot == kCheckSlot &&
                          done.back().status == static_cast<std::uint8_t>(BlkStatus::Ok);
  }
  // The first connection closes before the second opens, as a front end that restarts.
  fe = std::unexpected(std::string("closed"));
  auto again = Frontend::connect(options_for(socket_path, timeout));
  report.reconnected = again.has_value();

  const bool answered_well = report.answer == HostileAnswer::ErrorStatus ||
                             report.answer == HostileAnswer::NoStatus ||
                             report.answer == HostileAnswer::Disconnected ||
                             (report.answer == HostileAnswer::NoAnswer &&
                              c.kind == HostileKind::HeadIndexOutOfRange && report.served_after) ||
                             (report.answer == HostileAnswer::OkStatus &&
                              c.kind == HostileKind::TruncatedInFlight);
  const bool kept_serving = report.answer == HostileAnswer::Disconnected || report.served_after;
  report.passed = answered_well && kept_serving && report.stray_bytes == 0 &&
                  report.reconnected && report.detail.empty();
  return report;
}

bool run_hostile_cases(const std::string& socket_path) {
  bool all = true;
  for (const HostileCase& c : hostile_cases()) {
    const HostileReport r = run_hostile_case(c, socket_path);
    fmt::print("{:<24} {:<5} answer: {}{}; stray bytes {}; served after: {}; reconnected: {}{}{}\n",
               c.name, r.passed ? "PASS" : "FAIL", answer_name(r.answer),
               r.answer == HostileAnswer::ErrorStatus ? fmt::format(" ({})", r.status) : "",
               r.stray_bytes, r.served_after ? "yes" : "no", r.reconnected ? "yes" : "no",
               r.detail.empty() ? "" : "; ", r.detail);
    all = all && r.passed;
  }
  return all;
}

}  // namespace guestmem::vhost_user_bench
