// guestmem: the fault tables that let the fault handler recognise an instruction that may
// fault, on every architecture with fault recovery (detail/fault_x86_64.hpp,
// detail/fault_aarch64.hpp).
//
// An entry names an instruction that may fault on guest memory and the place to resume after
// it, as the Linux kernel's exception table does. The assembly routines
// (src/arch/<architecture>/fault_primitives.S) and the inline single accesses of the
// architecture's header add their entries to the section `guestmem_extable`. When such an
// instruction faults, the handler (src/arch/fault_handler.cpp) finds its entry and resumes at
// the recovery address with the fault's address and signal in two registers that the
// architecture's header names.
//
// Rules:
// - Each linked object (the executable, each shared library) has one table, bounded by the
//   linker's __start_guestmem_extable and __stop_guestmem_extable, which are hidden so that
//   every object sees its own. `fault_table_registered` hands the table to the handler once per
//   object, during the object's static initialisation (docs/DESIGN.md, "Fault-tolerant
//   access", says which accesses that leaves out).
// - The handler recognises an instruction only through an entry; nothing here handles a fault
//   itself.
//
//   for (const FaultTableEntry* e = fault_table_begin; e != fault_table_end; ++e) {
//     if (fault_table_target(e->instruction) == pc) { resume at fault_table_target(e->recovery) }
//   }
#pragma once

#include <cstdint>

#include "guestmem/detail/config.hpp"

namespace guestmem::detail {

/// One entry of a fault table: an instruction that may fault, and where to resume when it
/// does. Each field holds the distance from its own address to its target, so a table needs
/// no relocation when its object is loaded at any address (PIE executables, shared objects).
struct FaultTableEntry {
  std::int32_t instruction;
  std::int32_t recovery;
};

/// The address a field of a FaultTableEntry points to.
[[nodiscard]] inline std::uintptr_t fault_table_target(const std::int32_t& field) noexcept {
  return reinterpret_cast<std::uintptr_t>(&field) +
         static_cast<std::uintptr_t>(static_cast<std::intptr_t>(field));
}

// The bounds of the fault table of the object this code is linked into: the linker defines
// __start_NAME and __stop_NAME for a section whose name is a C identifier. Hidden, so that each
// object resolves them to its own table; weak, so that an object without entries still links
// (both are then null).
[[gnu::visibility("hidden"), gnu::weak]] extern const FaultTableEntry fault_table_begin[] asm(
    "__start_guestmem_extable");
[[gnu::visibility("hidden"), gnu::weak]] extern const FaultTableEntry fault_table_end[] asm(
    "__stop_guestmem_extable");

/// Makes the fault table [begin, end) of one linked object known to the fault handler, and
/// keeps that object loaded for the rest of the process (a dlclose would unmap a table the
/// handler may read at any time). An empty table, and the table of the object that contains
/// the handler (which it reads directly), are ignored, as is a table registered before.
/// Returns true.
/// Errors: none; aborts when more objects register than the handler has room for (64).
/// Concurrency: thread-safe, but not async-signal-safe; called from static initialisers.
GUESTMEM_API bool register_fault_table(const FaultTableEntry* begin,
                                      const FaultTableEntry* end) noexcept;

/// Registers this object's table during its static initialisation. An inline variable is
/// initialised once per linked object however many translation units include this header;
/// hidden, so that a shared library's registration is not merged with the executable's.
[[gnu::visibility("hidden")]] inline const bool fault_table_registered =
    register_fault_table(fault_table_begin, fault_table_end);

/// What an inline access met: `signal` is 0 when the access was done; otherwise it is SIGSEGV
/// or SIGBUS, nothing was stored, and `address` is the first byte that faulted.
struct InlineFault {
  std::uint64_t signal;
  std::uintptr_t address;
};

}  // namespace guestmem::detail
