// guestmem: the SIGSEGV/SIGBUS handler and the one fixup function behind the fault-tolerant
// primitives: the copy and fill of src/arch/<architecture>/fault_primitives.S and the inline
// single accesses of include/guestmem/detail/fault_<architecture>.hpp. The same on every
// architecture with fault recovery; what differs (which registers hold the program counter and
// receive the fault) is in src/arch/<architecture>/fault_context.cpp. These files are the only
// code in guestmem that handles faults.
//
// - The handler is installed once, with SA_SIGINFO (it needs si_addr, si_code and the
//   ucontext) and SA_ONSTACK (a thread that overflowed its stack can only run a handler on an
//   alternate stack, and the handler it chains to may need that).
// - It recovers only from kernel-generated faults (si_code > 0) whose program counter (RIP,
//   PC) is an instruction listed in a fault table: the table of the object this file is linked
//   into, read directly, or one registered by another object (register_fault_table). A signal
//   sent with kill/sigqueue/tgkill (si_code <= 0) is never a fault of ours, wherever the
//   thread was.
// - Recovering means: program counter = the entry's recovery address, and si_addr and the
//   signal in two scratch registers (r10 and r11 on x86-64, x16 and x17 on aarch64). The fault
//   details travel in the interrupted context's registers, so the handler writes no memory but
//   the kernel's ucontext: no TLS slot, no lock, no allocation.
// - Anything else goes to the action installed before guestmem's: its sa_sigaction (with
//   SA_SIGINFO) or sa_handler, called as the kernel would have called it: with the
//   interrupted thread's mask plus the action's sa_mask, plus the signal unless SA_NODEFER,
//   and, for an SA_RESETHAND action, only once (the kernel resets such an action to SIG_DFL
//   as it delivers the signal). For SIG_DFL the default action is restored and the signal
//   raised again, so the process dies of the right signal (with a core dump where enabled).
//   SIG_IGN is honoured for a signal someone sent; a real fault cannot be ignored (the kernel
//   itself forces the default action then), so it is treated as SIG_DFL.
// - Before chaining, the handler clears the thread's kept verdict that SIGSEGV and SIGBUS are
//   deliverable (thread_fault_ready), because the handler it chains to runs with the signal
//   blocked: a fallible call made there checks the mask again and is refused instead of
//   faulting, which the kernel would punish with the default action.
//
// Everything the handler calls is async-signal-safe: sigaction(2), raise(3), pthread_sigmask(3)
// and the sigset functions (POSIX lists them all), reads of data written before the handler
// was installed, acquire loads of the registered tables, each published before the count that
// makes it visible, an exchange on a lock-free atomic and a store to an initial-exec
// thread-local variable, which lives in the static TLS block and is never allocated lazily.
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <ucontext.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <mutex>

#include "fault_context.hpp"
#include "guestmem/fault.hpp"

namespace guestmem {
namespace detail {

std::atomic<bool> fault_handler_ready{false};
[[gnu::tls_model("initial-exec")]] constinit thread_local std::atomic<bool> thread_fault_ready{
    false};

namespace {

// The actions installed before guestmem's, written once before guestmem's handler is
// installed and never again, so the handler reads them without synchronisation.
struct sigaction previous_segv;
struct sigaction previous_bus;

// Whether an earlier action with SA_RESETHAND has been used: only the first chained call runs
// it, as the kernel resets such an action to SIG_DFL when it delivers the signal. An exchange
// decides which thread's call is the first when several fault at once.
std::atomic<bool> previous_segv_spent{false};
std::atomic<bool> previous_bus_spent{false};

// The result of the one installation attempt: 0 = success, otherwise the errno.
int install_errno = 0;

// The tables of the other objects that contain entries (register_fault_table): the first
// `registered_count` slots are filled, each before the count that covers it is published, and
// never change after. Constant-initialised, so registration works before this object's own
// static initialisers have run.
constexpr std::size_t kMaxRegisteredTables = 64;
struct RegisteredTable {
  std::atomic<const FaultTableEntry*> begin{nullptr};
  std::atomic<const FaultTableEntry*> end{nullptr};
};
constinit std::array<RegisteredTable, kMaxRegisteredTables> registered_tables;
constinit std::atomic<std::size_t> registered_count{0};
constinit std::mutex registration_mutex;

// The entry for the instruction at `pc` in [begin, end), or null. A linear search: it runs
// only for a fault, and a table holds one entry per faulting instruction emitted.
const FaultTableEntry* find_entry(const FaultTableEntry* begin, const FaultTableEntry* end,
                                  std::uintptr_t pc) noexcept {
  // SAFETY: [begin, end) is a whole fault table of an object that stays loaded (this one, or
  // one pinned by register_fault_table), in read-only data.
  for (const FaultTableEntry* entry = begin; entry != end; ++entry) {
    if (fault_table_target(entry->instruction) == pc) {
      return entry;
    }
  }
  return nullptr;
}

const FaultTableEntry* find_entry(std::uintptr_t pc) noexcept {
  if (const FaultTableEntry* entry = find_entry(fault_table_begin, fault_table_end, pc)) {
    return entry;
  }
  const std::size_t count = registered_count.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i) {
    const RegisteredTable& table = registered_tables[i];
    const FaultTableEntry* entry = find_entry(table.begin.load(std::memory_order_relaxed),
                                              table.end.load(std::memory_order_relaxed), pc);
    if (entry != nullptr) {
      return entry;
    }
  }
  return nullptr;
}

// The fixup function: if the faulting instruction is a listed one, moves the context to its
// recovery address with the fault's details in the architecture's two registers and returns
// true. The address is si_addr on every architecture. (On aarch64 the context's
// uc_mcontext.fault_address holds the same address under a real kernel, but qemu-user leaves
// the previous fault's address there for a SIGBUS from a truncated file.)
bool fixup(ucontext_t& context, const siginfo_t& info, int signal) noexcept {
  const FaultTableEntry* entry = find_entry(faulting_instruction(context));
  if (entry == nullptr) {
    return false;
  }
  resume_at(context, fault_table_target(entry->recovery),
            reinterpret_cast<std::uintptr_t>(info.si_addr), signal);
  return true;
}

// Keeps the object that contains `address` loaded until the process exits: a later dlclose
// leaves it mapped. For the executable the dlopen finds nothing or the executable itself,
// which is never unloaded anyway.
void pin_object_containing(const void* address) noexcept {
  Dl_info object = {};
  if (dladdr(address, &object) == 0 || object.dli_fname == nullptr) {
    return;
  }
  if (void* handle = dlopen(object.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE)) {
    dlclose(handle);
  }
}

bool has_flag(const struct sigaction& action, unsigned flag) noexcept {
  // sa_flags is an int, but SA_RESETHAND is 0x80000000: compare the bits unsigned.
  return (static_cast<unsigned>(action.sa_flags) & flag) != 0;
}

// Calls the handler of the earlier action `previous` with the mask the kernel would have given
// it: the interrupted thread's mask (the context's uc_sigmask), plus its sa_mask, plus the
// signal unless SA_NODEFER. This handler's own mask is restored when it returns; when this
// handler returns in turn, the kernel restores the context's uc_sigmask, which the earlier
// handler may have changed, as it could have without guestmem.
void call_previous(const struct sigaction& previous, int signal, siginfo_t* info,
                   void* context) noexcept {
  const sigset_t& interrupted = static_cast<ucontext_t*>(context)->uc_sigmask;
  sigset_t mask;
  sigemptyset(&mask);
  // Signal by signal: the kernel fills only the first 64 bits of uc_sigmask, and sigorset is
  // not POSIX.
  for (int other = 1; other < NSIG; ++other) {
    if (sigismember(&interrupted, other) == 1 || sigismember(&previous.sa_mask, other) == 1) {
      sigaddset(&mask, other);
    }
  }
  if (!has_flag(previous, SA_NODEFER)) {
    sigaddset(&mask, signal);
  }
  sigset_t own;
  pthread_sigmask(SIG_SETMASK, &mask, &own);
  // The thread's kept verdict does not hold while the earlier handler runs (the signal is
  // blocked, unless SA_NODEFER); its fallible calls must check the mask again.
  thread_fault_ready.store(false, std::memory_order_relaxed);
  if (has_flag(previous, SA_SIGINFO)) {
    previous.sa_sigaction(signal, info, context);
  } else {
    previous.sa_handler(signal);
  }
  pthread_sigmask(SIG_SETMASK, &own, nullptr);
}

// Hands a signal that is not a recoverable fault to the action installed before guestmem's.
void forward(int signal, siginfo_t* info, void* context) noexcept {
  const bool is_bus = signal == SIGBUS;
  const struct sigaction& previous = is_bus ? previous_bus : previous_segv;
  // sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN read the same in both.
  bool is_default = previous.sa_handler == SIG_DFL;
  const bool is_ignore = previous.sa_handler == SIG_IGN;
  if (!is_default && !is_ignore && has_flag(previous, SA_RESETHAND)) {
    std::atomic<bool>& spent = is_bus ? previous_bus_spent : previous_segv_spent;
    is_default = spent.exchange(true, std::memory_order_relaxed);
  }
  if (!is_default && !is_ignore) {
    call_previous(previous, signal, info, context);
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
  prepare_fault_primitives();
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

bool register_fault_table(const FaultTableEntry* begin, const FaultTableEntry* end) noexcept {
  if (begin == end || begin == fault_table_begin) {
    return true;
  }
  const std::lock_guard lock(registration_mutex);
  const std::size_t count = registered_count.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < count; ++i) {
    if (registered_tables[i].begin.load(std::memory_order_relaxed) == begin) {
      return true;
    }
  }
  GUESTMEM_ASSERT(count < kMaxRegisteredTables,
                  "too many objects with guestmem fault tables (raise kMaxRegisteredTables)");
  pin_object_containing(begin);
  registered_tables[count].begin.store(begin, std::memory_order_relaxed);
  registered_tables[count].end.store(end, std::memory_order_relaxed);
  registered_count.store(count + 1, std::memory_order_release);
  return true;
}

int require_fault_handler_slow() noexcept {
  const Result<void> ready = recheck_fault_signals();
  if (ready.has_value()) {
    return 0;
  }
  GUESTMEM_ASSERT(ready.error().code() == ErrorCode::FaultSignalBlocked,
                  "the fault handler could not be installed (sigaction failed)");
  return ready.error().signal();
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

Result<void> recheck_fault_signals() {
  // The installation's flag first, so that a call from a signal handler never reaches
  // call_once once the handler is installed.
  if (!detail::fault_handler_ready.load(std::memory_order_acquire)) {
    if (Result<void> installed = install_fault_handler(); !installed.has_value()) {
      return installed;
    }
  }
  sigset_t blocked;
  // Without a new set, pthread_sigmask only reads the mask, and cannot fail.
  pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
  for (const int signal : {SIGSEGV, SIGBUS}) {
    if (sigismember(&blocked, signal) == 1) {
      detail::thread_fault_ready.store(false, std::memory_order_relaxed);
      return std::unexpected(Error::fault_signal_blocked(signal));
    }
  }
  detail::thread_fault_ready.store(true, std::memory_order_relaxed);
  return {};
}

}  // namespace guestmem
