// tiny_vmm: a machine's snapshot as three files: PATH (guest memory, guestmem/snapshot.hpp),
// PATH.state (the processor's and the device's state) and PATH.disk (a copy of the output
// file as it was, the disk the device writes).
#pragma once

#include <memory>
#include <string>

#include <guestmem/snapshot.hpp>

#include "machine.hpp"

namespace tiny_vmm {

struct SnapshotReport {
  std::uint64_t file_size = 0;
  std::uint64_t pages_present = 0;
};

/// Saves the stopped machine `vm`, whose output file is `output_path`, under `path`.
Status<SnapshotReport> save_machine(Machine& vm, const std::string& output_path,
                                    const std::string& path);

/// A new machine from the snapshot under `path`, restored in `mode`; its output file
/// (config.output_path) starts as a copy of the snapshot's disk. Ready for start().
Status<std::unique_ptr<Machine>> restore_machine(const std::string& path, guestmem::RestoreMode mode,
                                                 const MachineConfig& config);

/// Copies the file `from` to `to` (replacing it).
Status<void> copy_file(const std::string& from, const std::string& to);

/// The whole file at `path`.
Status<std::vector<std::byte>> read_file(const std::string& path);

}  // namespace tiny_vmm
