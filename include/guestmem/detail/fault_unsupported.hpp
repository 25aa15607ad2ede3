// guestmem: the fault-tolerant single accesses where guestmem has no recovery primitives: every
// architecture but x86-64 and aarch64, and any build configured with GUESTMEM_FAULT_RECOVERY=OFF
// (which defines GUESTMEM_NO_FAULT_RECOVERY). guestmem/fault.hpp includes this header then.
//
// The accesses have the signatures of detail/fault_x86_64.hpp's, so that guestmem/fault.hpp
// compiles everywhere unchanged, but each aborts with a message: the fallible APIs that
// return errors refuse with FaultRecoveryUnsupported before they get here
// (src/arch/unsupported/fault_handler.cpp), and only the raw primitives reach them.
//
//   InlineFault fault;
//   inline_load<std::uint32_t>(pointer, fault);   // aborts: "not supported on this architecture"
#pragma once

#include <cstdint>

#include "guestmem/detail/config.hpp"

namespace guestmem::detail {

/// This architecture (or build) has no recovery primitives.
inline constexpr bool kFaultRecovery = false;

/// Aborts with a message saying fault recovery is not supported on this architecture.
[[noreturn]] GUESTMEM_API void fault_recovery_unsupported() noexcept;

/// What an inline access met, as on the architectures with recovery; never filled in here.
struct InlineFault {
  std::uint64_t signal;
  std::uintptr_t address;
};

// The accesses of the architectures with recovery; each aborts. Preconditions: none (they
// are never reached through an API that reports errors).

template <class U>
[[noreturn]] U inline_load(const void* /*src*/, InlineFault& /*fault*/) noexcept {
  fault_recovery_unsupported();
}

template <class U>
[[noreturn]] void inline_store(void* /*dst*/, U /*value*/, InlineFault& /*fault*/) noexcept {
  fault_recovery_unsupported();
}

template <class U>
[[noreturn]] void inline_exchange(void* /*dst*/, U /*value*/, InlineFault& /*fault*/) noexcept {
  fault_recovery_unsupported();
}

template <class U>
[[noreturn]] U inline_compare_exchange(void* /*dst*/, U /*expected*/, U /*desired*/,
                                       InlineFault& /*fault*/) noexcept {
  fault_recovery_unsupported();
}

}  // namespace guestmem::detail
