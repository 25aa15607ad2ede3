// tiny_vmm: live migration of a machine over a stream socket.
//
// The stream (all integers little-endian):
//   header   "TVMMIGR\0", version, processor kind, page size, region count, then per region
//            its guest base and size;
//   records  24 bytes each: type, reserved, a, b; then a payload:
//            Pages  a = guest address, b = length (whole pages): the pages' bytes, sent
//                   straight from guest memory (gathered writes on guest slices);
//            State  a = length: the machine's state (registers, device);
//            End    a = bytes of the stream before this record, b = XXH3-64 of all guest
//                   memory at the stop: then XXH3-64 of every byte of the stream outside
//                   page payloads, this record's 24 bytes included.
// Page payloads sent while the guest runs can change between any read of them and the
// write(2) that sends them, so no hash of them could be agreed on without copying them;
// instead the End record carries the hash of all of memory taken while the guest is stopped,
// and the destination compares it with its own memory. A destination starts the guest only
// after the End record verified: a stream cut short or damaged leaves it refusing, with an
// error that says where the stream ended.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>

#include "machine.hpp"

namespace tiny_vmm {

inline constexpr std::uint32_t kMigrationVersion = 1;

struct MigrationOptions {
  /// Live rounds at most, the first (all of memory) included.
  std::uint32_t max_rounds = 6;
  /// Stop the guest once a round leaves at most this many pages dirty.
  std::uint64_t stop_copy_pages = 16;
  /// Pace live rounds to this many MB/s (0: as fast as the socket takes them).
  double max_mbps = 0;
  /// Test hook: close the connection after this many bytes, wherever that falls.
  std::uint64_t cut_after = std::numeric_limits<std::uint64_t>::max();
};

/// One round of pages.
struct RoundReport {
  std::uint32_t round = 0;   // 0 for the stop-and-copy round
  std::uint64_t pages_sent = 0;
  std::uint64_t pages_dirty = 0;  // dirtied during the round (what the next one sends)
  std::uint64_t bytes = 0;        // of the stream, record headers and state included
  double seconds = 0;
  double mbps = 0;
};

struct MigrationReport {
  std::uint64_t bytes = 0;
  std::uint32_t live_rounds = 0;
  std::uint64_t final_pages = 0;
  double downtime_ms = 0;
  std::uint64_t memory_hash = 0;
};

/// Migrates the running machine `vm` over `fd` (connected): live rounds while the guest
/// runs, then stops it and sends the rest and its state, and waits for the destination to
/// say it has verified the stream. The machine stays stopped (whatever the outcome).
/// Errors: a send failure (the destination went away), the cut hook, a destination that
/// refused the stream.
Status<MigrationReport> migrate_out(Machine& vm, int fd, const MigrationOptions& options,
                                    const std::function<void(const RoundReport&)>& on_round);

/// Sends the pages set in `dirty` (per region, KVM_GET_DIRTY_LOG's layout) over `fd` as a
/// live round does: a Pages record header per run of contiguous pages, then the run straight
/// from guest memory (one gathered write per run). Returns the pages sent. The stream's
/// other parts are not written: this is for measuring the sender.
Status<std::uint64_t> send_page_records(const Memory& mem,
                                        const std::vector<std::vector<std::uint64_t>>& dirty,
                                        int fd);

/// What the destination received.
struct IncomingReport {
  std::uint64_t bytes = 0;
  std::uint64_t pages = 0;
  std::uint64_t memory_hash = 0;
};

/// Receives a migration over `fd` into a new machine (config.kind is replaced by the
/// stream's processor kind), verifies it, then tells the source it may let go. Returns the
/// machine, stopped, ready for start(): never one from a stream that did not verify.
/// Errors: the stream ended early (where), a bad header or record, a failed checksum or
/// memory hash, a machine that cannot be built.
Status<std::pair<std::unique_ptr<Machine>, IncomingReport>> migrate_in(int fd,
                                                                        MachineConfig config);

}  // namespace tiny_vmm
