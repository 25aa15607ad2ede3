// guestmem: the aarch64 part of the fault handler (src/arch/fault_handler.cpp): PC is the
// faulting instruction, and the primitives (fault_primitives.S and the inline accesses of
// include/guestmem/detail/fault_aarch64.hpp) read a fault from x16 (the address) and x17 (the
// signal) at their recovery labels. Also the unaligned single accesses, which the inline code
// hands to the copy routine.
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../fault_context.hpp"
#include "guestmem/fault.hpp"

namespace guestmem::detail {

std::uintptr_t faulting_instruction(const ucontext_t& context) noexcept {
  return static_cast<std::uintptr_t>(context.uc_mcontext.pc);
}

void resume_at(ucontext_t& context, std::uintptr_t recovery, std::uintptr_t address,
               int signal) noexcept {
  using Register = std::remove_reference_t<decltype(context.uc_mcontext.regs[0])>;
  // SAFETY: the kernel's ucontext of the interrupted thread; the code at the recovery address
  // reads x16 and x17 and needs no other register changed.
  context.uc_mcontext.pc = recovery;
  context.uc_mcontext.regs[16] = address;
  context.uc_mcontext.regs[17] = static_cast<Register>(signal);
}

// One variant of each primitive: nothing to choose.
void prepare_fault_primitives() noexcept {}

void unaligned_access(void* dst, const void* src, std::size_t size, InlineFault& fault) noexcept {
  RawFault raw;
  // Full barriers on both sides give the unaligned access at least the ordering of the aligned
  // one it stands for (a seq_cst load, a release or seq_cst store).
  asm volatile("dmb ish" ::: "memory");
  // SAFETY: the routine recovers from a fault on any byte of either range (the caller's
  // precondition), and touches no byte outside them.
  const std::size_t left = guestmem_fault_copy(dst, src, size, &raw);
  asm volatile("dmb ish" ::: "memory");
  fault = left == 0 ? InlineFault{0, 0}
                    : InlineFault{static_cast<std::uint64_t>(raw.signal), raw.address};
}

}  // namespace guestmem::detail
