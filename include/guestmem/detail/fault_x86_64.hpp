// guestmem: fault-tolerant single accesses on x86-64, inlined, and the fault tables that let
// the fault handler recognise them.
//
// An access is one inline `asm` statement in the style of the Linux kernel's exception table
// (_ASM_EXTABLE, get_user): its memory instruction has a label, and the statement adds an
// entry for it to the section `guestmem_extable`: where the instruction is, and where to resume
// after it. When the instruction faults, the handler (src/arch/x86_64/fault_handler.cpp) finds
// the entry, puts the signal number in r11 and the faulting address (si_addr) in r10, and
// resumes after the instruction. The statement binds r11 as an in/out operand that is 0 on
// entry and r10 as an output, so the fast path is the instruction and one test of r11, with
// no call. The bulk routines of fault_primitives.S list their instructions in the same table
// and receive a fault in the same two registers.
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
//   InlineFault fault;
//   const auto value = inline_load<std::uint64_t>(guest_pointer, fault);
//   if (fault.signal != 0) { /* fault.address, fault.signal */ }
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
bool register_fault_table(const FaultTableEntry* begin, const FaultTableEntry* end) noexcept;

/// Registers this object's table during its static initialisation. An inline variable is
/// initialised once per linked object however many translation units include this header;
/// hidden, so that a shared library's registration is not merged with the executable's.
[[gnu::visibility("hidden")]] inline const bool fault_table_registered =
    register_fault_table(fault_table_begin, fault_table_end);

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

/// What an inline access met: `signal` is 0 when the access was done; otherwise it is SIGSEGV
/// or SIGBUS, nothing was stored, and `address` is the first byte that faulted.
struct InlineFault {
  std::uint64_t signal;
  std::uintptr_t address;
};

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
