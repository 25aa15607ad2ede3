// guestmem: fault-tolerant memory primitives.
//
// A VMM's guest memory can disappear under it: a vhost-user front end truncates the memfd it
// shared (the next access raises SIGBUS), or a region is unmapped or protected while a device
// uses it (SIGSEGV). The primitives here copy, fill, load, store and compare-exchange memory
// like plain instructions, but a fault stops them instead of killing the process: they report
// how much was done, the faulting address and the signal.
//
// How: every memory instruction of a primitive that may fault is listed in a fault table with
// a place to resume: copy and fill are assembly routines (src/arch/x86_64/, src/arch/aarch64/),
// the single accesses are inline assembly (detail/fault_x86_64.hpp, detail/fault_aarch64.hpp).
// A SIGSEGV/SIGBUS handler, installed once, recognises a kernel-generated fault at a listed instruction and resumes there with the
// fault's details; every other fault goes to the handler installed before it (or the default
// action), so a real crash still crashes with its own signal. The fast path is the plain
// instruction sequence: no system call, no sigsetjmp, no per-call registration. See
// docs/DESIGN.md, "Fault-tolerant access".
//
// Rules shared by every primitive:
// - A copy or fill does a prefix of the bytes: `done` bytes from the start, exactly those
//   before the first byte that faulted. A copy or fill of 1, 2, 4 or 8 bytes is one access.
// - The handler is installed on first use; install_fault_handler() does it explicitly (and
//   reports failure). Only x86-64 and aarch64 can recover from faults; elsewhere
//   install_fault_handler() fails with FaultRecoveryUnsupported and the primitives abort.
// - Recovery needs SIGSEGV and SIGBUS deliverable in the thread that faults: for a fault whose
//   signal the thread blocks, the kernel forces the default action and the process dies,
//   whatever handler is installed. So a fallible call refuses to run in a thread that blocks
//   either signal: nothing is accessed, a primitive reports a FaultInfo with `blocked` set,
//   and the containers' calls and the cursors fail with FaultSignalBlocked. Reading the mask
//   is a system call, so the verdict "both deliverable" is kept per thread:
//   * A thread's first fallible call checks its mask. A refusal is never kept: a thread that
//     blocks either signal checks again on every call, and succeeds once it unblocks.
//   * guestmem's handler forgets the thread's verdict before it chains to the handler
//     installed before it (a crash reporter, say), which runs with the signal blocked, so the
//     fallible calls of that handler check again and are refused.
//   * Any other change is seen only by recheck_fault_signals(): a thread that blocks SIGSEGV
//     or SIGBUS after its first fallible call, and a signal handler guestmem's does not chain
//     to (one installed after guestmem's, or one for another signal whose sa_mask holds
//     SIGSEGV or SIGBUS), call it before their next fallible call. Without it a fault in that
//     call kills the process.
//
//   auto done = guestmem::fallible_copy(host_buf, guest_ptr, 4096);
//   if (done.fault) {
//     log(done.done, done.fault->address, done.fault->signal);   // 2048, ..., SIGBUS
//   }
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <type_traits>

#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/config.hpp"
#include "guestmem/error.hpp"

// The one choice of architecture for fault recovery: its inline single accesses and
// kFaultRecovery. The build selects the matching sources (src/arch/, GUESTMEM_ARCH_SOURCES).
#if defined(__x86_64__) && !defined(GUESTMEM_NO_FAULT_RECOVERY)
#include "guestmem/detail/fault_x86_64.hpp"
#elif defined(__aarch64__) && !defined(GUESTMEM_NO_FAULT_RECOVERY)
#include "guestmem/detail/fault_aarch64.hpp"
#else
#include "guestmem/detail/fault_unsupported.hpp"
#endif

namespace guestmem {

/// Where and why a fault-tolerant access stopped.
struct FaultInfo {
  /// The first byte that could not be accessed (the kernel's si_addr; 0 when the kernel did
  /// not say, as for a non-canonical address).
  std::uintptr_t address = 0;
  /// SIGSEGV (unmapped or protected memory) or SIGBUS (a page past the end of a truncated
  /// file, or a hardware memory error).
  int signal = 0;
  /// True when the access was refused before touching memory because the calling thread
  /// blocks `signal` (a fault would have killed the process; see the rules above). `address`
  /// is then 0.
  bool blocked = false;

  /// Equal when every field is.
  friend constexpr bool operator==(const FaultInfo&, const FaultInfo&) noexcept = default;
};

/// What a fault-tolerant copy or fill did.
struct FallibleOutcome {
  /// Bytes done, from the start of the range.
  std::size_t done = 0;
  /// The fault that stopped it; empty when all bytes were done.
  std::optional<FaultInfo> fault;
};

/// Installs the SIGSEGV/SIGBUS handler that lets the primitives recover, once per process
/// (later calls return the first call's result). The fallible APIs call it on first use; call
/// it explicitly to install at a chosen time and to see failures early.
/// Errors: FaultRecoveryUnsupported on architectures without the primitives (os_error() 0) or
/// when sigaction fails (os_error() = errno).
/// Concurrency: thread-safe. A SIGSEGV or SIGBUS handler installed later by someone else
/// replaces guestmem's; it must chain to the handler it replaced (sigaction's old action), as
/// guestmem's does, or faults in the primitives will reach it instead.
GUESTMEM_API Result<void> install_fault_handler();

/// Reads the calling thread's signal mask (one system call) and keeps the verdict for the
/// thread's later fallible calls: they run when neither SIGSEGV nor SIGBUS is blocked, and
/// refuse otherwise. Call it after blocking either signal in a thread that has already made a
/// fallible call, and at the start of a signal handler that makes fallible calls while either
/// signal may be blocked, unless guestmem's handler chains to it (see the rules above).
/// Installs the handler first when needed.
/// Errors: FaultSignalBlocked (signal() = SIGSEGV, or SIGBUS when only that one is blocked);
/// FaultRecoveryUnsupported as install_fault_handler().
/// Concurrency: concerns the calling thread only. Async-signal-safe once the handler is
/// installed: it then only calls pthread_sigmask and writes a thread-local flag.
GUESTMEM_API Result<void> recheck_fault_signals();

namespace detail {

/// The fault record the primitives fill in after a fault (layout fixed by the assembly).
struct RawFault {
  std::uintptr_t address;
  std::int32_t signal;
};

/// True once the handler is installed; set with release order after it is.
GUESTMEM_API extern std::atomic<bool> fault_handler_ready;

/// Per thread: true when the handler is installed and the thread's last check found SIGSEGV
/// and SIGBUS deliverable (recheck_fault_signals). Only the thread itself and its signal
/// handlers touch it. Initial-exec TLS: at a fixed offset from the thread pointer, so the fast
/// path is one load, and the fault handler may clear it (static TLS is never allocated lazily,
/// as a dynamic TLS block may be on first use).
[[gnu::tls_model("initial-exec")]] GUESTMEM_API extern constinit thread_local std::atomic<bool>
    thread_fault_ready;

// The bulk primitives (src/arch/<architecture>/fault_primitives.S). Where fault recovery is
// unsupported, src/arch/unsupported/fault_handler.cpp defines them to abort.
extern "C" {
GUESTMEM_API std::size_t guestmem_fault_copy(void* dst, const void* src, std::size_t len,
                                             RawFault* fault) noexcept;
GUESTMEM_API std::size_t guestmem_fault_fill(void* dst, int byte, std::size_t len,
                                             RawFault* fault) noexcept;
}

/// Installs the handler if needed and checks the calling thread's mask unless its verdict is
/// kept; for the APIs that return errors.
/// Errors: as recheck_fault_signals().
GUESTMEM_ALWAYS_INLINE Result<void> ensure_fault_handler() {
  if constexpr (kFaultRecovery) {
    if (thread_fault_ready.load(std::memory_order_relaxed)) [[likely]] {
      return {};
    }
  }
  return recheck_fault_signals();
}

/// As ensure_fault_handler, for the primitives, which have no error to return: returns 0 when
/// they may run, or the signal the calling thread blocks (then they must refuse); aborts when
/// the handler cannot be installed.
[[gnu::noinline]] GUESTMEM_API int require_fault_handler_slow() noexcept;
GUESTMEM_ALWAYS_INLINE int require_fault_handler() noexcept {
  if (thread_fault_ready.load(std::memory_order_relaxed)) [[likely]] {
    return 0;
  }
  return require_fault_handler_slow();
}

/// What a primitive reports when it refused to run because the thread blocks `signal`.
[[nodiscard]] constexpr FaultInfo refused_fault(int signal) noexcept {
  return FaultInfo{0, signal, true};
}

[[nodiscard]] inline FaultInfo to_fault_info(const RawFault& raw) noexcept {
  return FaultInfo{raw.address, raw.signal};
}

[[nodiscard]] inline FaultInfo to_fault_info(const InlineFault& inline_fault) noexcept {
  return FaultInfo{inline_fault.address, static_cast<int>(inline_fault.signal)};
}

// The primitives without the installation check, for callers that made it once for several
// accesses (ensure_fault_handler). Preconditions: the handler is installed; otherwise as the
// public functions below. Where fault recovery is unsupported they abort.

inline FallibleOutcome copy_recovering(void* dst, const void* src, std::size_t len) noexcept {
  RawFault raw;
  // SAFETY: the routine recovers from a fault on any byte of either range (the caller's
  // precondition), and touches no byte outside them.
  const std::size_t left = guestmem_fault_copy(dst, src, len, &raw);
  if (left == 0) [[likely]] {
    return FallibleOutcome{len, std::nullopt};
  }
  return FallibleOutcome{len - left, to_fault_info(raw)};
}

inline FallibleOutcome fill_recovering(void* dst, std::uint8_t byte, std::size_t len) noexcept {
  RawFault raw;
  // SAFETY: as in copy_recovering, for the one range.
  const std::size_t left = guestmem_fault_fill(dst, byte, len, &raw);
  if (left == 0) [[likely]] {
    return FallibleOutcome{len, std::nullopt};
  }
  return FallibleOutcome{len - left, to_fault_info(raw)};
}

// The single accesses are inline (the architecture's header): one instruction and no call for
// an aligned access.

template <AtomicAccess T>
std::expected<T, FaultInfo> load_recovering(const void* src) noexcept {
  using U = std::make_unsigned_t<T>;
  InlineFault fault;
  // SAFETY: the access recovers from a fault on these bytes (the caller's precondition).
  const U value = inline_load<U>(src, fault);
  if (fault.signal == 0) [[likely]] {
    return static_cast<T>(value);
  }
  return std::unexpected(to_fault_info(fault));
}

template <AtomicAccess T>
std::expected<void, FaultInfo> store_recovering(void* dst, T value) noexcept {
  InlineFault fault;
  // SAFETY: the access recovers from a fault on these bytes (the caller's precondition).
  inline_store(dst, static_cast<std::make_unsigned_t<T>>(value), fault);
  if (fault.signal == 0) [[likely]] {
    return {};
  }
  return std::unexpected(to_fault_info(fault));
}

template <AtomicAccess T>
std::expected<void, FaultInfo> store_seq_cst_recovering(void* dst, T value) noexcept {
  InlineFault fault;
  // SAFETY: the access recovers from a fault on these bytes (the caller's precondition).
  inline_exchange(dst, static_cast<std::make_unsigned_t<T>>(value), fault);
  if (fault.signal == 0) [[likely]] {
    return {};
  }
  return std::unexpected(to_fault_info(fault));
}

template <AtomicAccess T>
std::expected<T, FaultInfo> compare_exchange_recovering(void* dst, T expected,
                                                        T desired) noexcept {
  using U = std::make_unsigned_t<T>;
  InlineFault fault;
  // SAFETY: the access recovers from a fault on these bytes (the caller's precondition).
  const U found =
      inline_compare_exchange(dst, static_cast<U>(expected), static_cast<U>(desired), fault);
  if (fault.signal == 0) [[likely]] {
    return static_cast<T>(found);
  }
  return std::unexpected(to_fault_info(fault));
}

}  // namespace detail

/// Copies `len` bytes from `src` to `dst`, forward, stopping at the first byte that faults.
/// A copy of 1, 2, 4 or 8 bytes is one load and one store (never torn when aligned).
/// Returns the bytes copied (a prefix) and, when fewer than `len`, the fault.
/// May stop short: only at a fault (on either side). Errors: none besides the fault; when the
/// calling thread blocks SIGSEGV or SIGBUS, nothing is copied and the fault has `blocked` set
/// (whatever `len`; see the rules above).
/// Validity: nothing is retained. Preconditions: every byte of both ranges either may be
/// accessed or faults (no memory with side effects on access, such as device MMIO); the ranges
/// do not overlap, or the bytes written in the overlap are unspecified (nothing outside the
/// ranges is touched). Installs the handler on first use; aborts where fault recovery is
/// unsupported (install_fault_handler() reports that as an error instead).
/// Concurrency: other threads and the guest may access both ranges; only single accesses
/// are untorn.
inline FallibleOutcome fallible_copy(void* dst, const void* src, std::size_t len) noexcept {
  if (const int blocked = detail::require_fault_handler(); blocked != 0) [[unlikely]] {
    return FallibleOutcome{0, detail::refused_fault(blocked)};
  }
  return detail::copy_recovering(dst, src, len);
}

/// Sets `len` bytes at `dst` to `byte`, stopping at the first byte that faults. A fill of 1,
/// 2, 4 or 8 bytes is one store. Returns, stops short and fails as fallible_copy.
/// Preconditions: as fallible_copy, for the one range.
inline FallibleOutcome fallible_fill(void* dst, std::uint8_t byte, std::size_t len) noexcept {
  if (const int blocked = detail::require_fault_handler(); blocked != 0) [[unlikely]] {
    return FallibleOutcome{0, detail::refused_fault(blocked)};
  }
  return detail::fill_recovering(dst, byte, len);
}

/// Loads the `T` at `src` with one instruction (never torn when `src` is aligned to sizeof(T)),
/// inline: no call (on aarch64 an unaligned load is a call that copies the bytes).
/// Ordering: as a std::memory_order_seq_cst load (on x86-64 every load is one; aarch64 uses
/// a load-acquire, ldar).
/// Errors: the fault, when the load faulted; its address is the first byte that faulted (`src`
/// itself unless an unaligned load crosses into a page that faults). A fault with `blocked`
/// set when the calling thread blocks SIGSEGV or SIGBUS (nothing was loaded). Never stops
/// short: the load is done whole or not at all. Validity: nothing is retained.
/// Preconditions: as fallible_copy.
template <AtomicAccess T>
inline std::expected<T, FaultInfo> fallible_load(const void* src) noexcept {
  if (const int blocked = detail::require_fault_handler(); blocked != 0) [[unlikely]] {
    return std::unexpected(detail::refused_fault(blocked));
  }
  return detail::load_recovering<T>(src);
}

/// Stores `value` at `dst` with one instruction (never torn when `dst` is aligned), inline.
/// Ordering: as a std::memory_order_release store; fallible_store_seq_cst for seq_cst.
/// Errors: the fault, when the store faulted (then nothing was stored, except on aarch64 for
/// an unaligned `dst`, whose store is a copy: the bytes before the faulting one were stored),
/// with its address as in fallible_load; or refused as in fallible_load. Never stops short.
/// Validity: nothing is retained.
/// Preconditions: as fallible_copy.
template <AtomicAccess T>
inline std::expected<void, FaultInfo> fallible_store(void* dst, T value) noexcept {
  if (const int blocked = detail::require_fault_handler(); blocked != 0) [[unlikely]] {
    return std::unexpected(detail::refused_fault(blocked));
  }
  return detail::store_recovering(dst, value);
}

/// Stores `value` at `dst` with one sequentially consistent instruction (on x86-64 an
/// implicitly locked exchange, on aarch64 a store-release, stlr), never torn when `dst` is
/// aligned, inline.
/// Errors, stopping short, validity and preconditions: as fallible_store.
template <AtomicAccess T>
inline std::expected<void, FaultInfo> fallible_store_seq_cst(void* dst, T value) noexcept {
  if (const int blocked = detail::require_fault_handler(); blocked != 0) [[unlikely]] {
    return std::unexpected(detail::refused_fault(blocked));
  }
  return detail::store_seq_cst_recovering(dst, value);
}

/// Atomically replaces the `T` at `dst` with `desired` if it equals `expected`, with one
/// sequentially consistent read-modify-write instruction (on aarch64 a load-acquire and
/// store-release exclusive pair), inline.
/// Returns the value found: the exchange happened iff it equals `expected`.
/// Errors: the fault, when the access faulted (then nothing was stored); a read-only page
/// faults even when the values differ, because the access always writes (the value found,
/// when it differs); or refused as in fallible_load. Never stops short. Validity: nothing is retained.
/// Preconditions: as fallible_copy, and `dst` is aligned to sizeof(T) (an unaligned locked
/// access may split across cache lines, which x86-64 makes slow and other CPUs refuse).
template <AtomicAccess T>
inline std::expected<T, FaultInfo> fallible_compare_exchange(void* dst, T expected,
                                                             T desired) noexcept {
  if (const int blocked = detail::require_fault_handler(); blocked != 0) [[unlikely]] {
    return std::unexpected(detail::refused_fault(blocked));
  }
  return detail::compare_exchange_recovering(dst, expected, desired);
}

}  // namespace guestmem
