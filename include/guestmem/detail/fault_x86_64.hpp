// guestmem: fault-tolerant single accesses on x86-64, inlined, with their fault table entries
// (detail/fault_table.hpp). guestmem/fault.hpp includes this header on x86-64 only.
//
// An access is one inline `asm` statement in the style of the Linux kernel's exception table
// (_ASM_EXTABLE, get_user): its memory instruction has a label, and the statement adds an
// entry for it to the section `guestmem_extable`: where the instruction is, and where to resume
// after it. When the instruction faults, the handler (src/arch/fault_handler.cpp, with
// src/arch/x86_64/fault_context.cpp) finds the entry, puts the signal number in r11 and the
// faulting address (si_addr) in r10, and resumes after the instruction. The statement binds
// r11 as an in/out operand that is 0 on entry and r10 as an output, so the fast path is the
// instruction and one test of r11, with no call. The bulk routines of
// src/arch/x86_64/fault_primitives.S list their instructions in the same table and receive a
// fault in the same two registers.
//
//   InlineFault fault;
//   const auto value = inline_load<std::uint64_t>(guest_pointer, fault);
//   if (fault.signal != 0) { /* fault.address, fault.signal */ }
#pragma once

#include <cstdint>

#include "guestmem/detail/config.hpp"
#include "guestmem/detail/fault_table.hpp"

namespace guestmem::detail {

/// This architecture has the recovery primitives.
inline constexpr bool kFaultRecovery = true;

// The assembly of one access that may fault: `access` is the instruction, written
// "{AT&T|Intel}" so that code compiled with -masm=intel assembles too. The entry goes into
// guestmem_extable with flags
//   "a": allocated, so the table is loaded with the object;
//   "o": linked to the instruction's section, so a linker that collects unused sections drops
//        the entry exactly when it drops the code (GNU ld with -z start-stop-gc, lld);
//   "?": in the instruction's section group, so when the linker discards the duplicate copy of
//        an inline function (a COMDAT group) its entries go with it, instead of the link
//        failing with "defined in discarded section".
// %= makes the labels unique to each copy of the statement the compiler emits.
#define GUESTMEM_DETAIL_FAULTING(access)                                          \
  ".Lguestmem_access%=:\n\t" access                                               \
  "\n.Lguestmem_resume%=:\n\t"                                                     \
  ".pushsection guestmem_extable, \"ao?\", @progbits, .Lguestmem_access%=\n\t"     \
  ".balign 4\n\t"                                                                  \
  ".long .Lguestmem_access%= - .\n\t"                                              \
  ".long .Lguestmem_resume%= - .\n\t"                                              \
  ".popsection"

// The accesses. U is an unsigned integer of 1, 2, 4 or 8 bytes; the pointer need not be
// aligned (an aligned access is never torn). Each is one instruction and a compiler barrier
// (the "memory" clobber), so the ordering is that of the x86-64 instruction: a load is an
// acquire (as a seq_cst load), a store a release, an xchg or lock cmpxchg sequentially
// consistent. The pointer is a register operand, never a C++ lvalue, so that no sanitizer
// checks the access and no alignment or null rule of the language applies to it.
// Preconditions: the handler is installed; every byte accessed either may be accessed or
// faults (no memory with side effects on access). After a fault the value returned is
// unspecified.
//
// r11 is 0 on entry and r10 is unused unless the handler wrote both: no other input can be in
// r11 (it is an input itself), and an input the compiler places in r10 is only read by the
// instruction, before the handler overwrites r10.

/// Loads the U at `src`.
template <class U>
GUESTMEM_ALWAYS_INLINE U inline_load(const void* src, InlineFault& fault) noexcept {
  register std::uint64_t signal asm("r11") = 0;
  register std::uintptr_t address asm("r10");
  U value;
  // SAFETY: a fault on the bytes at `src` resumes after the instruction with r11 and r10 set
  // (the entry), and the caller guarantees no other effect of touching them.
  asm volatile(GUESTMEM_DETAIL_FAULTING("{mov (%[src]), %[value]|mov %[value], [%[src]]}")
               : [value] "=r"(value), "+r"(signal), "=r"(address)
               : [src] "r"(src)
               : "memory");
  fault = InlineFault{signal, address};
  return value;
}

/// Stores `value` at `dst` with a plain mov.
template <class U>
GUESTMEM_ALWAYS_INLINE void inline_store(void* dst, U value, InlineFault& fault) noexcept {
  register std::uint64_t signal asm("r11") = 0;
  register std::uintptr_t address asm("r10");
  // SAFETY: as in inline_load, for the bytes at `dst`.
  asm volatile(GUESTMEM_DETAIL_FAULTING("{mov %[value], (%[dst])|mov [%[dst]], %[value]}")
               : "+r"(signal), "=r"(address)
               : [dst] "r"(dst), [value] "r"(value)
               : "memory");
  fault = InlineFault{signal, address};
}

/// Stores `value` at `dst` with an xchg (implicitly locked: a sequentially consistent store).
template <class U>
GUESTMEM_ALWAYS_INLINE void inline_exchange(void* dst, U value, InlineFault& fault) noexcept {
  register std::uint64_t signal asm("r11") = 0;
  register std::uintptr_t address asm("r10");
  // SAFETY: as in inline_load, for the bytes at `dst`.
  asm volatile(GUESTMEM_DETAIL_FAULTING("{xchg %[value], (%[dst])|xchg [%[dst]], %[value]}")
               : [value] "+r"(value), "+r"(signal), "=r"(address)
               : [dst] "r"(dst)
               : "memory");
  fault = InlineFault{signal, address};
}

/// Replaces the U at `dst` with `desired` if it equals `expected`, with a lock cmpxchg;
/// returns the value found (the exchange happened iff it equals `expected`).
template <class U>
GUESTMEM_ALWAYS_INLINE U inline_compare_exchange(void* dst, U expected, U desired,
                                                 InlineFault& fault) noexcept {
  register std::uint64_t signal asm("r11") = 0;
  register std::uintptr_t address asm("r10");
  // SAFETY: as in inline_load, for the bytes at `dst`.
  asm volatile(GUESTMEM_DETAIL_FAULTING(
                   "{lock cmpxchg %[desired], (%[dst])|lock cmpxchg [%[dst]], %[desired]}")
               : "+a"(expected), "+r"(signal), "=r"(address)
               : [dst] "r"(dst), [desired] "r"(desired)
               : "memory", "cc");
  fault = InlineFault{signal, address};
  return expected;
}

#undef GUESTMEM_DETAIL_FAULTING

}  // namespace guestmem::detail
