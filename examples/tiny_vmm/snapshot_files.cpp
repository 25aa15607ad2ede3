#include "snapshot_files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

namespace tiny_vmm {
namespace {

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

Status<void> write_file(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    return std::unexpected("writing " + path + " failed");
  }
  return {};
}

}  // namespace

Status<std::vector<std::byte>> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::unexpected("cannot open " + path);
  }
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

Status<void> copy_file(const std::string& from, const std::string& to) {
  auto bytes = read_file(from);
  if (!bytes) {
    return std::unexpected(bytes.error());
  }
  return write_file(to, *bytes);
}

Status<SnapshotReport> save_machine(Machine& vm, const std::string& output_path,
                                    const std::string& path) {
  guestmem::UniqueFd file{::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
  if (!file) {
    return std::unexpected(errno_text("creating " + path));
  }
  {
    auto guard = vm.space().memory();
    if (auto id = guestmem::save_snapshot(*guard, guestmem::BorrowedFd(file)); !id) {
      return std::unexpected(describe("saving the snapshot", id.error()));
    }
  }
  auto state = vm.save_state();
  if (!state) {
    return std::unexpected(state.error());
  }
  if (auto r = write_file(path + ".state", *state); !r) {
    return std::unexpected(r.error());
  }
  if (auto r = copy_file(output_path, path + ".disk"); !r) {
    return std::unexpected(r.error());
  }
  auto info = guestmem::read_snapshot_info(guestmem::BorrowedFd(file));
  if (!info) {
    return std::unexpected(describe("reading the snapshot back", info.error()));
  }
  SnapshotReport report;
  report.file_size = info->file_size;
  for (const auto& region : info->regions) {
    report.pages_present += region.pages_present;
  }
  return report;
}

Status<std::unique_ptr<Machine>> restore_machine(const std::string& path, guestmem::RestoreMode mode,
                                                 const MachineConfig& config) {
  guestmem::UniqueFd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (!file) {
    return std::unexpected(errno_text("opening " + path));
  }
  auto mem = guestmem::restore_snapshot<guestmem::AtomicBitmap>(guestmem::BorrowedFd(file), mode);
  if (!mem) {
    return std::unexpected(describe("restoring the snapshot", mem.error()));
  }
  auto state = read_file(path + ".state");
  if (!state) {
    return std::unexpected(state.error());
  }
  if (auto r = copy_file(path + ".disk", config.output_path); !r) {
    return std::unexpected(r.error());
  }
  auto machine = Machine::with_memory(config, std::move(*mem));
  if (!machine) {
    return machine;
  }
  if (auto r = (*machine)->load_state(*state); !r) {
    return std::unexpected(r.error());
  }
  return machine;
}

}  // namespace tiny_vmm
