// guestmem: fault-tolerant access where guestmem has no recovery primitives: every
// architecture but x86-64 and aarch64, and builds configured with GUESTMEM_FAULT_RECOVERY=OFF.
//
// install_fault_handler() fails with FaultRecoveryUnsupported, every fallible container call
// (try_*, reader, writer) returns that error before touching memory, and the primitives
// themselves (guestmem/fault.hpp, and the transfers of a VmReader/VmWriter<Fallible> made from
// raw parts) abort with a message. A port needs the routines of src/arch/x86_64/ or
// src/arch/aarch64/ for its architecture (fault_primitives.S, fault_context.cpp), its inline
// accesses in include/guestmem/detail/, and a line in the one choice of guestmem/fault.hpp and
// of the top-level CMakeLists.txt.
#include <atomic>
#include <cstddef>

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

extern "C" {
std::size_t guestmem_fault_copy(void* /*dst*/, const void* /*src*/, std::size_t /*len*/,
                                RawFault* /*fault*/) noexcept {
  fault_recovery_unsupported();
}

std::size_t guestmem_fault_fill(void* /*dst*/, int /*byte*/, std::size_t /*len*/,
                                RawFault* /*fault*/) noexcept {
  fault_recovery_unsupported();
}
}

}  // namespace detail

Result<void> install_fault_handler() {
  return std::unexpected(Error::fault_recovery_unsupported());
}

Result<void> recheck_fault_signals() { return install_fault_handler(); }

}  // namespace guestmem
