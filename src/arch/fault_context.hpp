// guestmem: what the fault handler (fault_handler.cpp) needs from the architecture, one source
// file per architecture with fault recovery (x86_64/fault_context.cpp,
// aarch64/fault_context.cpp): where the interrupted thread was, how to resume it at a
// recovery label with the fault's details, and what to choose once before the handler runs.
// Private to the library.
//
//   if (const FaultTableEntry* entry = find_entry(faulting_instruction(context))) {
//     resume_at(context, fault_table_target(entry->recovery), address, signal);
//   }
#pragma once

#include <ucontext.h>

#include <cstdint>

namespace guestmem::detail {

/// The address of the instruction the interrupted thread was executing (RIP, PC).
/// Concurrency: async-signal-safe.
[[nodiscard]] std::uintptr_t faulting_instruction(const ucontext_t& context) noexcept;

/// Makes the interrupted thread resume at `recovery` with `address` and `signal` in the two
/// registers where the primitives read a fault (r10 and r11 on x86-64, x16 and x17 on
/// aarch64). Preconditions: `recovery` is the recovery label of the fault table entry of the
/// faulting instruction, whose code reads those two registers and needs no other changed.
/// Concurrency: async-signal-safe; writes only the kernel's context.
void resume_at(ucontext_t& context, std::uintptr_t recovery, std::uintptr_t address,
               int signal) noexcept;

/// Chooses among variants of the primitives once, before the handler is installed and before
/// any primitive runs (x86-64: whether copies may use AVX2). Errors: none.
void prepare_fault_primitives() noexcept;

}  // namespace guestmem::detail
