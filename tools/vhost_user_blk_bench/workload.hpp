// The benchmark's workloads on a `Frontend`: a fill of the device with the pattern, timed
// random reads or writes (or write-then-read-back pairs) at a queue depth, and a final read
// of every block. Every byte read is compared with the pattern its block should hold.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "frontend.hpp"

namespace guestmem::vhost_user_bench {

enum class Mode { RandRead, RandWrite, Verify };

struct WorkloadOptions {
  Mode mode = Mode::RandRead;
  /// Bytes per request; a multiple of 512.
  std::uint32_t block_size = 4096;
  /// Bytes of the device used from its start (0: all of it), rounded down to block_size.
  std::uint64_t span = 0;
  std::chrono::duration<double> duration{5.0};
  std::uint64_t seed = 1;
  /// How long one request may take before the run fails.
  std::chrono::milliseconds request_timeout{10000};
};

struct WorkloadResult {
  /// Requests completed in the timed phase (both halves of a Verify pair count).
  std::uint64_t requests = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  /// Blocks whose content was checked, in the timed phase and the final pass.
  std::uint64_t blocks_checked = 0;
  double fill_seconds = 0;
};

/// Fills the span, runs the timed phase, and (RandWrite, Verify) reads every block back.
/// Errors: a request failed (status other than OK, a wrong used length), a read returned
/// other bytes than the block's pattern (the message names block, offset and generation),
/// or the front end failed (see Frontend).
Outcome<WorkloadResult> run_workload(Frontend& frontend, const WorkloadOptions& options);

}  // namespace guestmem::vhost_user_bench
