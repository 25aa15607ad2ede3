// A shared object loaded at run time by fault_table_test: its inline fallible accesses live in
// its own fault table, which the fault handler (in the test executable) only knows through
// register_fault_table. It links nothing of guestmem: the handler's symbols come from the
// executable, which exports them.
#include <cstdint>

#include "guestmem/fault.hpp"

/// Loads the u64 at `src` fallibly. Returns 0 and the value, or the signal and the faulting
/// address.
extern "C" [[gnu::visibility("default")]] int fault_table_module_load(const void* src,
                                                                      std::uint64_t* value,
                                                                      std::uintptr_t* address) {
  const auto loaded = guestmem::fallible_load<std::uint64_t>(src);
  if (loaded.has_value()) {
    *value = *loaded;
    return 0;
  }
  *address = loaded.error().address;
  return loaded.error().signal;
}

/// Stores `value` at `dst` fallibly. Returns 0, or the signal and the faulting address.
extern "C" [[gnu::visibility("default")]] int fault_table_module_store(void* dst,
                                                                       std::uint64_t value,
                                                                       std::uintptr_t* address) {
  const auto stored = guestmem::fallible_store<std::uint64_t>(dst, value);
  if (stored.has_value()) {
    return 0;
  }
  *address = stored.error().address;
  return stored.error().signal;
}
