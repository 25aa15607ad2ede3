// guestmem: the x86-64 part of the fault handler (src/arch/fault_handler.cpp): RIP is the
// faulting instruction, and the primitives (fault_primitives.S and the inline accesses of
// include/guestmem/detail/fault_x86_64.hpp) read a fault from r10 (the address) and r11 (the
// signal) at their recovery labels.
#include <ucontext.h>

#include <cstdint>

#include "../fault_context.hpp"

namespace guestmem::detail {

extern "C" {
[[gnu::visibility("hidden")]] extern std::uint8_t guestmem_fault_copy_avx2;
}

std::uintptr_t faulting_instruction(const ucontext_t& context) noexcept {
  return static_cast<std::uintptr_t>(context.uc_mcontext.gregs[REG_RIP]);
}

void resume_at(ucontext_t& context, std::uintptr_t recovery, std::uintptr_t address,
               int signal) noexcept {
  greg_t* registers = context.uc_mcontext.gregs;
  // SAFETY: the kernel's ucontext of the interrupted thread; the code at the recovery address
  // reads r10 and r11 and needs no other register changed.
  registers[REG_RIP] = static_cast<greg_t>(recovery);
  registers[REG_R10] = static_cast<greg_t>(address);
  registers[REG_R11] = signal;
}

void prepare_fault_primitives() noexcept {
  __builtin_cpu_init();
  guestmem_fault_copy_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
}

}  // namespace guestmem::detail
