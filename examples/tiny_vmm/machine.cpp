#include "machine.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tiny_vmm {

namespace {

// The state blob: this header, the processor's registers, the block device's state, then
// the console's unfinished line.
struct StateHeader {
  guestmem::Le32 kind;
  guestmem::Le32 cpu_bytes;
  guestmem::Le32 console_bytes;
};
constexpr std::size_t kMaxConsoleLine = 4096;
static_assert(guestmem::ByteValued<StateHeader>);

}  // namespace

Machine::Machine(const MachineConfig& config, Memory mem)
    : space_(std::move(mem)), console_(config.console_prefix, config.quiet) {}

Machine::~Machine() {
  if (thread_.joinable()) {
    cpu_->stop();
    thread_.join();
  }
}

Status<void> Machine::open_files(const MachineConfig& config) {
  input_.reset(::open(config.input_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!input_) {
    return std::unexpected("opening the input file " + config.input_path + ": " +
                           std::strerror(errno));
  }
  output_.reset(::open(config.output_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (!output_) {
    return std::unexpected("opening the output file " + config.output_path + ": " +
                           std::strerror(errno));
  }
  device_ = std::make_unique<BlockDevice>(space_, input_.get(), output_.get(), config.io_delay);
  device_->set_on_complete([this](std::uint32_t done) {
    if (done == stop_after_.load(std::memory_order_acquire)) {
      cpu_->stop();
    }
  });
  return {};
}

Status<void> Machine::make_cpu(GuestKind kind) {
  if (kind == GuestKind::Thread) {
    cpu_ = make_thread_cpu(space_, *device_, console_);
    return {};
  }
  auto guard = space_.memory();
  auto cpu = make_kvm_cpu(*guard, *device_, console_);
  if (!cpu) {
    return std::unexpected(cpu.error());
  }
  cpu_ = std::move(*cpu);
  return {};
}

Status<std::unique_ptr<Machine>> Machine::boot(const MachineConfig& config) {
  auto mem = make_memory();
  if (!mem) {
    return std::unexpected(mem.error());
  }
  if (auto r = mem->write_slice(guest_image(), kCodeAddr); !r) {
    return std::unexpected(describe("loading the guest program", r.error()));
  }
  auto machine = with_memory(config, std::move(*mem));
  if (!machine) {
    return machine;
  }
  if (auto r = (*machine)->cpu_->reset(); !r) {
    return std::unexpected(r.error());
  }
  return machine;
}

Status<std::unique_ptr<Machine>> Machine::with_memory(const MachineConfig& config, Memory mem) {
  std::unique_ptr<Machine> machine(new Machine(config, std::move(mem)));
  if (auto r = machine->open_files(config); !r) {
    return std::unexpected(r.error());
  }
  if (auto r = machine->make_cpu(config.kind); !r) {
    return std::unexpected(r.error());
  }
  return machine;
}

void Machine::start() {
  result_.reset();
  thread_ = std::thread([this] { result_ = cpu_->run(); });
}

Status<void> Machine::run_to_halt() {
  start();
  auto end = wait();
  if (!end) {
    return std::unexpected(end.error());
  }
  if (*end != RunEnd::Halted) {
    return std::unexpected(std::string("the guest stopped before halting"));
  }
  return {};
}

Status<RunEnd> Machine::wait() {
  if (thread_.joinable()) {
    thread_.join();
  }
  if (!result_) {
    return RunEnd::Stopped;  // never started: as stopped as it gets
  }
  if (*result_ && **result_ == RunEnd::Halted) {
    halted_ = true;
  }
  return *result_;
}

Status<RunEnd> Machine::pause() {
  if (thread_.joinable()) {
    cpu_->stop();
  }
  return wait();
}

void Machine::stop_after_request(std::uint32_t count) {
  stop_after_.store(count, std::memory_order_release);
}

Status<std::vector<std::byte>> Machine::save_state() const {
  auto cpu = cpu_->save_state();
  if (!cpu) {
    return std::unexpected(cpu.error());
  }
  std::string line = console_.pending();
  line.resize(std::min(line.size(), kMaxConsoleLine));
  const StateHeader header{guestmem::Le32(static_cast<std::uint32_t>(cpu_->kind())),
                           guestmem::Le32(static_cast<std::uint32_t>(cpu->size())),
                           guestmem::Le32(static_cast<std::uint32_t>(line.size()))};
  const DeviceState device = device_->state();
  std::vector<std::byte> out(sizeof header + cpu->size() + sizeof device + line.size());
  std::byte* at = out.data();
  std::memcpy(at, &header, sizeof header);
  at += sizeof header;
  std::memcpy(at, cpu->data(), cpu->size());
  at += cpu->size();
  std::memcpy(at, &device, sizeof device);
  at += sizeof device;
  std::memcpy(at, line.data(), line.size());
  return out;
}

Status<void> Machine::load_state(std::span<const std::byte> state) {
  StateHeader header;
  DeviceState device;
  if (state.size() < sizeof header + sizeof device) {
    return std::unexpected("machine state of " + std::to_string(state.size()) +
                           " bytes is too short");
  }
  std::memcpy(&header, state.data(), sizeof header);
  if (header.kind.to_native() != static_cast<std::uint32_t>(cpu_->kind())) {
    return std::unexpected(std::string("machine state is of another kind of processor"));
  }
  const std::size_t cpu_bytes = header.cpu_bytes.to_native();
  const std::size_t console_bytes = header.console_bytes.to_native();
  if (cpu_bytes > state.size() || console_bytes > kMaxConsoleLine ||
      state.size() != sizeof header + cpu_bytes + sizeof device + console_bytes) {
    return std::unexpected(std::string("machine state has the wrong size"));
  }
  if (auto r = cpu_->load_state(state.subspan(sizeof header, cpu_bytes)); !r) {
    return r;
  }
  std::memcpy(&device, state.data() + sizeof header + cpu_bytes, sizeof device);
  device_->load_state(device);
  const auto* line = reinterpret_cast<const char*>(state.data() + sizeof header + cpu_bytes +
                                                   sizeof device);
  console_.set_pending(std::string(line, console_bytes));
  return {};
}

Status<void> Machine::take_dirty(std::vector<std::vector<std::uint64_t>>& words) {
  auto guard = space_.memory();
  if (auto r = cpu_->merge_dirty_log(*guard); !r) {
    return r;
  }
  words.resize(guard->num_regions());
  std::size_t i = 0;
  for (const auto& region : guard->regions()) {
    words[i].resize(region.bitmap().num_words());
    if (auto r = region.bitmap().get_and_reset(std::span(words[i])); !r) {
      return std::unexpected(describe("reading a dirty bitmap", r.error()));
    }
    ++i;
  }
  return {};
}

}  // namespace tiny_vmm
