// guestmem: fault-tolerant single accesses on aarch64, inlined, with their fault table entries
// (detail/fault_table.hpp). guestmem/fault.hpp includes this header on aarch64 only.
//
// As on x86-64 (detail/fault_x86_64.hpp): an access is one inline `asm` statement whose memory
// instructions are listed in the section `guestmem_extable` with the place to resume after the
// statement. When one faults, the handler (src/arch/fault_handler.cpp, with
// src/arch/aarch64/fault_context.cpp) finds the entry, puts the signal number in x17 and the
// faulting address (si_addr) in x16, the two intra-procedure-call scratch registers, and
// resumes there. The statement binds x17 as an in/out operand that is 0 on entry and x16 as an
// output, so the fast path is the instruction and one test of x17, with no call. The bulk
// routines of src/arch/aarch64/fault_primitives.S receive a fault in the same two registers.
//
// The instructions are load-acquire (ldar), store-release (stlr) and the exclusive pair
// ldaxr/stlxr, which the C++ mappings for AArch64 use for seq_cst loads, seq_cst and release
// stores and seq_cst read-modify-writes. They fault on an unaligned address (SIGBUS,
// BUS_ADRALN), so an unaligned load or store goes through the bulk copy routine between full
// barriers instead: a call, exact to the byte like the copy, never torn only when aligned.
//
//   InlineFault fault;
//   const auto value = inline_load<std::uint64_t>(guest_pointer, fault);
//   if (fault.signal != 0) { /* fault.address, fault.signal */ }
#pragma once

#include <cstddef>
#include <cstdint>

#include "guestmem/detail/config.hpp"
#include "guestmem/detail/fault_table.hpp"

namespace guestmem::detail {

/// This architecture has the recovery primitives.
inline constexpr bool kFaultRecovery = true;

/// Copies `size` bytes from `src` to `dst` with the bulk copy routine between two full
/// barriers (dmb ish), for an unaligned load or store: `fault.signal` is 0 when all were
/// copied, otherwise the fault of the first byte that faulted. Defined in
/// src/arch/aarch64/fault_context.cpp. Preconditions: as the accesses below, for both ranges.
GUESTMEM_API void unaligned_access(void* dst, const void* src, std::size_t size,
                                  InlineFault& fault) noexcept;

// The entry of one instruction that may fault: label `at`, resuming at `to`. The flags are
// those of the x86-64 entries: "a" allocated, "o" linked to the instruction's section, "?" in
// its section group (so that a discarded duplicate of an inline function takes its entries
// with it). %= makes the labels unique to each copy of the statement the compiler emits; %%
// is a literal % in an asm template.
#define GUESTMEM_DETAIL_EXTABLE(at, to)                                   \
  ".pushsection guestmem_extable, \"ao?\", %%progbits, " at "\n\t"       \
  ".balign 4\n\t"                                                          \
  ".long " at " - .\n\t"                                                   \
  ".long " to " - .\n\t"                                                   \
  ".popsection\n\t"

// One access that may fault, resuming after it.
#define GUESTMEM_DETAIL_FAULTING(access)                                               \
  ".Lguestmem_access%=:\n\t" access "\n.Lguestmem_resume%=:\n\t"                      \
  GUESTMEM_DETAIL_EXTABLE(".Lguestmem_access%=", ".Lguestmem_resume%=")

/// Whether `pointer` is aligned to sizeof(U), as the acquire, release and exclusive
/// instructions require.
template <class U>
[[nodiscard]] inline bool is_aligned_for(const void* pointer) noexcept {
  return (reinterpret_cast<std::uintptr_t>(pointer) & (sizeof(U) - 1)) == 0;
}

// The accesses. U is an unsigned integer of 1, 2, 4 or 8 bytes; an unaligned pointer takes
// the copy path (unaligned_access). Each aligned access is one inline asm statement with a
// compiler barrier (the "memory" clobber). The pointer is a register operand, never a C++
// lvalue, so that no sanitizer checks the access and no alignment or null rule of the language
// applies to it. Values narrower than a register travel zero-extended in a 32- or 64-bit
// operand, because the compiler leaves the upper bits of a narrow asm operand unspecified.
// Preconditions: the handler is installed; every byte accessed either may be accessed or
// faults (no memory with side effects on access). After a fault the value returned is
// unspecified.
//
// x17 is 0 on entry and x16 is unused unless the handler wrote both: no other operand can be
// in x17 or x16 (both are operands themselves), and an input read only by the instruction is
// read before the handler overwrites them.

/// Loads the U at `src` with a load-acquire.
template <class U>
GUESTMEM_ALWAYS_INLINE U inline_load(const void* src, InlineFault& fault) noexcept {
  if (!is_aligned_for<U>(src)) [[unlikely]] {
    U value = 0;
    // SAFETY: `value` is a local of sizeof(U) bytes; the routine recovers from a fault on the
    // bytes at `src` (the caller's precondition).
    unaligned_access(&value, src, sizeof(U), fault);
    return value;
  }
  register std::uint64_t signal asm("x17") = 0;
  register std::uintptr_t address asm("x16");
  std::uint64_t value;
  // SAFETY: a fault on the bytes at `src` resumes after the instruction with x17 and x16 set
  // (the entry), and the caller guarantees no other effect of touching them.
  if constexpr (sizeof(U) == 1) {
    asm volatile(GUESTMEM_DETAIL_FAULTING("ldarb %w[value], [%[src]]")
                 : [value] "=r"(value), "+r"(signal), "=r"(address)
                 : [src] "r"(src)
                 : "memory");
  } else if constexpr (sizeof(U) == 2) {
    asm volatile(GUESTMEM_DETAIL_FAULTING("ldarh %w[value], [%[src]]")
                 : [value] "=r"(value), "+r"(signal), "=r"(address)
                 : [src] "r"(src)
                 : "memory");
  } else if constexpr (sizeof(U) == 4) {
    asm volatile(GUESTMEM_DETAIL_FAULTING("ldar %w[value], [%[src]]")
                 : [value] "=r"(value), "+r"(signal), "=r"(address)
                 : [src] "r"(src)
                 : "memory");
  } else {
    static_assert(sizeof(U) == 8, "fault-tolerant accesses are 1, 2, 4 or 8 bytes");
    asm volatile(GUESTMEM_DETAIL_FAULTING("ldar %x[value], [%[src]]")
                 : [value] "=r"(value), "+r"(signal), "=r"(address)
                 : [src] "r"(src)
                 : "memory");
  }
  fault = InlineFault{signal, address};
  return static_cast<U>(value);
}

/// Stores `value` at `dst` with a store-release.
template <class U>
GUESTMEM_ALWAYS_INLINE void inline_store(void* dst, U value, InlineFault& fault) noexcept {
  if (!is_aligned_for<U>(dst)) [[unlikely]] {
    // SAFETY: `value` is a local of sizeof(U) bytes; the routine recovers from a fault on the
    // bytes at `dst` (the caller's precondition).
    unaligned_access(dst, &value, sizeof(U), fault);
    return;
  }
  register std::uint64_t signal asm("x17") = 0;
  register std::uintptr_t address asm("x16");
  const std::uint64_t wide = value;
  // SAFETY: as in inline_load, for the bytes at `dst`.
  if constexpr (sizeof(U) == 1) {
    asm volatile(GUESTMEM_DETAIL_FAULTING("stlrb %w[value], [%[dst]]")
                 : "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [value] "r"(wide)
                 : "memory");
  } else if constexpr (sizeof(U) == 2) {
    asm volatile(GUESTMEM_DETAIL_FAULTING("stlrh %w[value], [%[dst]]")
                 : "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [value] "r"(wide)
                 : "memory");
  } else if constexpr (sizeof(U) == 4) {
    asm volatile(GUESTMEM_DETAIL_FAULTING("stlr %w[value], [%[dst]]")
                 : "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [value] "r"(wide)
                 : "memory");
  } else {
    static_assert(sizeof(U) == 8, "fault-tolerant accesses are 1, 2, 4 or 8 bytes");
    asm volatile(GUESTMEM_DETAIL_FAULTING("stlr %x[value], [%[dst]]")
                 : "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [value] "r"(wide)
                 : "memory");
  }
  fault = InlineFault{signal, address};
}

/// Stores `value` at `dst` sequentially consistently: a store-release is one on AArch64,
/// because every sequentially consistent load is a load-acquire (ldar), which a later ldar
/// cannot pass.
template <class U>
GUESTMEM_ALWAYS_INLINE void inline_exchange(void* dst, U value, InlineFault& fault) noexcept {
  inline_store(dst, value, fault);
}

// The compare-exchange loop for one access size: `load` and `store` are the exclusive
// instructions, `r` the register view ("w" or "x"). When the value found differs, it is stored
// back, so that the access always writes, as x86-64's lock cmpxchg does: a read-only page
// faults whatever the values, on both architectures. A store-exclusive that lost the
// reservation (another writer, an interrupt) starts over.
#define GUESTMEM_DETAIL_CAS(load, store, r)                                                      \
  ".Lguestmem_cas%=:\n"                                                                        \
  ".Lguestmem_cas_load%=:\n\t" load " %" r "[found], [%[dst]]\n\t"                            \
  "cmp %" r "[found], %" r "[expected]\n\t"                                                    \
  "b.ne .Lguestmem_cas_differs%=\n"                                                            \
  ".Lguestmem_cas_store%=:\n\t" store " %w[status], %" r "[desired], [%[dst]]\n\t"             \
  "cbnz %w[status], .Lguestmem_cas%=\n\t"                                                      \
  "b .Lguestmem_resume%=\n"                                                                    \
  ".Lguestmem_cas_differs%=:\n"                                                                \
  ".Lguestmem_cas_back%=:\n\t" store " %w[status], %" r "[found], [%[dst]]\n\t"               \
  "cbnz %w[status], .Lguestmem_cas%=\n"                                                        \
  ".Lguestmem_resume%=:\n\t"                                                                   \
  GUESTMEM_DETAIL_EXTABLE(".Lguestmem_cas_load%=", ".Lguestmem_resume%=")                      \
  GUESTMEM_DETAIL_EXTABLE(".Lguestmem_cas_store%=", ".Lguestmem_resume%=")                     \
  GUESTMEM_DETAIL_EXTABLE(".Lguestmem_cas_back%=", ".Lguestmem_resume%=")

/// Replaces the U at `dst` with `desired` if it equals `expected`, with a load-acquire and
/// store-release exclusive pair; returns the value found (the exchange happened iff it equals
/// `expected`). Preconditions: also `dst` aligned to sizeof(U) (an unaligned exclusive access
/// faults with SIGBUS, which is then reported as the fault).
template <class U>
GUESTMEM_ALWAYS_INLINE U inline_compare_exchange(void* dst, U expected, U desired,
                                                 InlineFault& fault) noexcept {
  register std::uint64_t signal asm("x17") = 0;
  register std::uintptr_t address asm("x16");
  std::uint64_t found;
  std::uint32_t status;
  const std::uint64_t wide_expected = expected;
  const std::uint64_t wide_desired = desired;
  // SAFETY: as in inline_load, for the bytes at `dst`; every instruction that touches them has
  // an entry resuming after the loop.
  if constexpr (sizeof(U) == 1) {
    asm volatile(GUESTMEM_DETAIL_CAS("ldaxrb", "stlxrb", "w")
                 : [found] "=&r"(found), [status] "=&r"(status), "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [expected] "r"(wide_expected), [desired] "r"(wide_desired)
                 : "memory", "cc");
  } else if constexpr (sizeof(U) == 2) {
    asm volatile(GUESTMEM_DETAIL_CAS("ldaxrh", "stlxrh", "w")
                 : [found] "=&r"(found), [status] "=&r"(status), "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [expected] "r"(wide_expected), [desired] "r"(wide_desired)
                 : "memory", "cc");
  } else if constexpr (sizeof(U) == 4) {
    asm volatile(GUESTMEM_DETAIL_CAS("ldaxr", "stlxr", "w")
                 : [found] "=&r"(found), [status] "=&r"(status), "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [expected] "r"(wide_expected), [desired] "r"(wide_desired)
                 : "memory", "cc");
  } else {
    static_assert(sizeof(U) == 8, "fault-tolerant accesses are 1, 2, 4 or 8 bytes");
    asm volatile(GUESTMEM_DETAIL_CAS("ldaxr", "stlxr", "x")
                 : [found] "=&r"(found), [status] "=&r"(status), "+r"(signal), "=r"(address)
                 : [dst] "r"(dst), [expected] "r"(wide_expected), [desired] "r"(wide_desired)
                 : "memory", "cc");
  }
  fault = InlineFault{signal, address};
  return static_cast<U>(found);
}

#undef GUESTMEM_DETAIL_CAS
#undef GUESTMEM_DETAIL_FAULTING
#undef GUESTMEM_DETAIL_EXTABLE

}  // namespace guestmem::detail
