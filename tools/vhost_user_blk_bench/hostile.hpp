// Hostile requests for a vhost-user-blk back end: descriptor chains no correct driver builds,
// and guest memory that vanishes under a request. Each case runs on a fresh connection.
//
// A back end passes a case when it (1) answers the request with an error status
// (VIRTIO_BLK_S_IOERR or UNSUPP) or with a used element and no status, or closes the
// connection, within the timeout; (2) wrote no byte outside the buffers the chain made
// device-writable (every other data buffer keeps its canary); (3) on the same connection,
// if it kept it, still completes a correct read; and (4) accepts a new connection afterwards
// (it did not crash). A case whose request no back end could answer (a head index beyond
// the ring) also passes when the back end leaves it unanswered but keeps serving, and a
// request whose memory is truncated while in flight may also end with OK.
//
//   for (const HostileCase& c : hostile_cases())
//     HostileReport r = run_hostile_case(c, "/tmp/blk.sock");
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace guestmem::vhost_user_bench {

/// The malformed requests.
enum class HostileKind {
  DescriptorLoop,         ///< header -> data -> header ...
  ChainLongerThanQueue,   ///< every descriptor of the table chained, the last back to the first
  AddressInHole,          ///< data buffer beyond the end of guest memory
  LengthOverflows,        ///< data buffer whose address + length wraps around 2^64
  WriteIntoReadable,      ///< a read whose data descriptor is device-readable
  NextIndexOutOfRange,    ///< a next index beyond the descriptor table
  HeadIndexOutOfRange,    ///< an available-ring entry beyond the descriptor table
  ShortHeader,            ///< a request header of 8 bytes
  ReadableStatus,         ///< the status descriptor is device-readable
  TruncatedMemory,        ///< the data buffer lies in memory the front end truncated away
  /// The front end truncates the data buffer's memory right after making the request
  /// available: the back end may finish it before (OK) or meet the hole (error).
  TruncatedInFlight,
};

struct HostileCase {
  HostileKind kind;
  std::string_view name;
};

/// Every case, in a fixed order.
[[nodiscard]] std::span<const HostileCase> hostile_cases() noexcept;

/// How the back end answered.
enum class HostileAnswer {
  ErrorStatus,     ///< used element with VIRTIO_BLK_S_IOERR or UNSUPP
  NoStatus,        ///< used element, status byte left as the front end set it
  OkStatus,        ///< used element with VIRTIO_BLK_S_OK: the back end accepted the request
  Disconnected,    ///< the back end closed the connection
  NoAnswer,        ///< nothing within the timeout
  SetupFailed,     ///< the front end could not connect or set up the queue
};

struct HostileReport {
  HostileAnswer answer = HostileAnswer::NoAnswer;
  /// The status byte of an answered request.
  std::uint8_t status = 0;
  /// Bytes outside the device-writable buffers that changed.
  std::uint64_t stray_bytes = 0;
  /// A correct read on the same connection afterwards completed and returned OK
  /// (false when the connection was closed).
  bool served_after = false;
  /// A new connection and queue setup succeeded afterwards.
  bool reconnected = false;
  bool passed = false;
  /// What went wrong, for a failed case.
  std::string detail;
};

/// Runs `hostile_case` against the back end at `socket_path`. Never throws, never blocks
/// longer than a few times `timeout`.
[[nodiscard]] HostileReport run_hostile_case(const HostileCase& hostile_case,
                                             const std::string& socket_path,
                                             std::chrono::milliseconds timeout =
                                                 std::chrono::milliseconds(3000));

/// Runs every case, prints one line per case, and returns true when all passed.
bool run_hostile_cases(const std::string& socket_path);

}  // namespace guestmem::vhost_user_bench
