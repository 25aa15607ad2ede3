// guestmem: fault-tolerant access on aarch64 is not implemented yet.
//
// The x86-64 primitives (src/arch/x86_64/) recover from faults through recovery labels in
// assembly; a port needs the same routines in AArch64 assembly and a fixup function that
// edits uc_mcontext.pc and two scratch registers. Until then install_fault_handler() fails
// with FaultRecoveryUnsupported, every fallible container call (try_*, reader, writer) returns
// that error before touching memory, and the primitives themselves (guestmem/fault.hpp, and
// the transfers of a VmReader/VmWriter<Fallible> made from raw parts) abort with a message.
#include <atomic>

#include "guestmem/fault.hpp"

namespace guestmem {
namespace detail {

std::atomic<bool> fault_handler_ready{false};
// Never set here; defined because the inline fast paths of guestmem/fault.hpp name it.
[[gnu::tls_model("initial-exec")]] constinit thread_local std::atomic<bool> thread_fault_ready{
    false};

int require_fault_handler_slow() noexcept { fault_recovery_unsupported(); }

void fault_recovery_unsupported() noexcept {
  assertion_failed("kFaultRecovery", __FILE__, __LINE__,
                   "fault-tolerant access is not supported on this architecture");
}

}  // namespace detail

Result<void> install_fault_handler() {
  return std::unexpected(Error::fault_recovery_unsupported());
}

Result<void> recheck_fault_signals() { return install_fault_handler(); }

}  // namespace guestmem
