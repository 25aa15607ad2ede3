// guestmem: the SIGSEGV/SIGBUS handler and the one fixup function behind the fault-tolerant
// primitives of fault_primitives.S. This file and the assembly are the only code in guestmem
// that handles faults.
//
// - The handler is installed once, with SA_SIGINFO (it needs si_addr, si_code and the
//   ucontext) and SA_ONSTACK (a thread that overflowed its stack can only run a handler on an
//   alternate stack, and the handler it chains to may need that).
// - It recovers only from kernel-generated faults (si_code > 0) whose RIP is one of the
//   instructions listed in guestmem_fault_table. A signal sent with kill/sigqueue/tgkill
//   (si_code <= 0) is never a fault of ours, wherever the thread happened to be.
// - Recovering means: RIP = the instruction's recovery label, r10 = si_addr, r11 = the signal.
//   The fault details travel in the interrupted context's registers, so the handler writes no
//   memory but the kernel's ucontext: no TLS slot, no lock, no allocation.
// - Anything else goes to the action installed before guestmem's: its sa_sigaction (with
//   SA_SIGINFO) or sa_handler. For SIG_DFL the default action is restored and the signal
//   raised again, so the process dies of the right signal (with a core dump where enabled).
//   SIG_IGN is honoured for a signal someone sent; a real fault cannot be ignored (the kernel
//   itself forces the default action then), so it is treated as SIG_DFL.
//
// Everything the handler calls is async-signal-safe: sigaction(2) and raise(3) (POSIX lists
// both) and reads of data written before the handler was installed.
#include <signal.h>
#include <ucontext.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>

#include "guestmem/fault.hpp"

namespace guestmem {
namespace detail {

std::atomic<bool> fault_handler_ready{false};

namespace {

// One entry per instruction of the primitives that may fault: offsets from
// guestmem_fault_text_begin of the instruction and of its recovery label.
struct FaultTableEntry {
  std::int32_t instruction;
  std::int32_t recovery;
};

}  // namespace

extern "C" {
[[gnu::visibility("hidden")]] extern const std::uint8_t guestmem_fault_text_begin[];
[[gnu::visibility("hidden")]] extern const std::uint8_t guestmem_fault_text_end[];
[[gnu::visibility("hidden")]] extern const FaultTableEntry guestmem_fault_table[];
[[gnu::visibility("hidden")]] extern const FaultTableEntry guestmem_fault_table_end[];
[[gnu::visibility("hidden")]] extern std::uint8_t guestmem_fault_copy_avx2;
}

namespace {

// The actions installed before guestmem's, written once before guestmem's handler is
// installed and never again, so the handler reads them without synchronisation.
struct sigaction previous_segv;
struct sigaction previous_bus;

// The result of the one installation attempt: 0 = success, otherwise the errno.
int install_errno = 0;

// The fixup function: if `rip` is a listed instruction of the primitives, moves the context
// to its recovery label with the fault's details in r10 and r11 and returns true.
bool fixup(ucontext_t& context, const siginfo_t& info, int signal) noexcept {
  greg_t* registers = context.uc_mcontext.gregs;
  const auto rip = static_cast<std::uintptr_t>(registers[REG_RIP]);
  const auto begin = reinterpret_cast<std::uintptr_t>(guestmem_fault_text_begin);
  const auto end = reinterpret_cast<std::uintptr_t>(guestmem_fault_text_end);
  if (rip < begin || rip >= end) {
    return false;
  }
  const auto offset = static_cast<std::int32_t>(rip - begin);
  // SAFETY: the table is read-only data of this library, bounded by its two symbols.
  for (const FaultTableEntry* entry = guestmem_fault_table; entry != guestmem_fault_table_end;
       ++entry) {
    if (entry->instruction == offset) {
      // SAFETY: the kernel's ucontext of the interrupted thread; the recovery code reads r10
      // and r11 and needs no other register changed.
      registers[REG_RIP] = static_cast<greg_t>(begin + static_cast<std::uintptr_t>(entry->recovery));
      registers[REG_R10] = static_cast<greg_t>(reinterpret_cast<std::uintptr_t>(info.si_addr));
      registers[REG_R11] = signal;
      return true;
    }
  }
  return false;
}

// Hands a signal that is not a recoverable fault to the action installed before guestmem's.
void forward(int signal, siginfo_t* info, void* context) noexcept {
  const struct sigaction& previous = signal == SIGBUS ? previous_bus : previous_segv;
  // sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN read the same in both.
  const bool is_default = previous.sa_handler == SIG_DFL;
  const bool is_ignore = previous.sa_handler == SIG_IGN;
  if (!is_default && !is_ignore) {
    if ((previous.sa_flags & SA_SIGINFO) != 0) {
      previous.sa_sigaction(signal, info, context);
    } else {
      previous.sa_handler(signal);
    }
    return;
  }
  if (is_ignore && info->si_code <= 0) {
    return;
  }
  struct sigaction fallback = {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  sigaction(signal, &fallback, nullptr);
  // The signal is blocked while this handler runs: it is delivered, with the default action
  // now, as soon as the handler returns. A fault would also recur when the instruction is
  // retried, but a sent signal or an asynchronous machine-check SIGBUS would not.
  raise(signal);
}

void handle_fault(int signal, siginfo_t* info, void* context) noexcept {
  if (info->si_code > 0 && fixup(*static_cast<ucontext_t*>(context), *info, signal)) {
    return;
  }
  forward(signal, info, context);
}

int install_once() noexcept {
  // Read the previous actions first and install ours after, so that the handler never runs
  // before they are recorded.
  if (sigaction(SIGSEGV, nullptr, &previous_segv) != 0 ||
      sigaction(SIGBUS, nullptr, &previous_bus) != 0) {
    return errno;
  }
  __builtin_cpu_init();
  guestmem_fault_copy_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
  struct sigaction action = {};
  action.sa_sigaction = handle_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGSEGV, &action, nullptr) != 0) {
    return errno;
  }
  if (sigaction(SIGBUS, &action, nullptr) != 0) {
    const int saved = errno;
    sigaction(SIGSEGV, &previous_segv, nullptr);
    return saved;
  }
  return 0;
}

}  // namespace

void require_fault_handler_slow() noexcept {
  GUESTMEM_ASSERT(install_fault_handler().has_value(),
                  "the fault handler could not be installed (sigaction failed)");
}

}  // namespace detail

Result<void> install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    detail::install_errno = detail::install_once();
    if (detail::install_errno == 0) {
      detail::fault_handler_ready.store(true, std::memory_order_release);
    }
  });
  if (detail::install_errno != 0) {
    return std::unexpected(Error::fault_recovery_unsupported(detail::install_errno));
  }
  return {};
}

}  // namespace guestmem
