// The fault tables of other linked objects: a shared object loaded with dlopen does inline
// fallible accesses whose entries are in its own table, and the handler recovers them.
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstddef>
#include <cstdint>

#include <gtest/gtest.h>

#include "guestmem/fault.hpp"

namespace guestmem {
namespace {

using LoadFunction = int (*)(const void*, std::uint64_t*, std::uintptr_t*);
using StoreFunction = int (*)(void*, std::uint64_t, std::uintptr_t*);

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

TEST(FaultTable, AccessesInADlopenedObjectRecoverAndTheObjectStaysLoaded) {
  ASSERT_TRUE(install_fault_handler().has_value());
  void* handle = ::dlopen(GUESTMEM_FAULT_TABLE_MODULE, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << ::dlerror();
  auto load = reinterpret_cast<LoadFunction>(::dlsym(handle, "fault_table_module_load"));
  auto store = reinterpret_cast<StoreFunction>(::dlsym(handle, "fault_table_module_store"));
  ASSERT_NE(load, nullptr);
  ASSERT_NE(store, nullptr);

  void* mapping = ::mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapping, MAP_FAILED);
  auto* good = static_cast<std::uint8_t*>(mapping);
  std::uint8_t* bad = good + kPage;
  ASSERT_EQ(::mprotect(bad, kPage, PROT_NONE), 0);

  std::uintptr_t address = 0;
  std::uint64_t value = 0;
  EXPECT_EQ(store(good + 8, 0x1122334455667788, &address), 0);
  EXPECT_EQ(load(good + 8, &value, &address), 0);
  EXPECT_EQ(value, 0x1122334455667788u);
  EXPECT_EQ(load(bad + 16, &value, &address), SIGSEGV);
  EXPECT_EQ(address, reinterpret_cast<std::uintptr_t>(bad + 16));
  address = 0;
  EXPECT_EQ(store(bad + 24, 1, &address), SIGSEGV);
  EXPECT_EQ(address, reinterpret_cast<std::uintptr_t>(bad + 24));

  // The registration pinned the object: dlclose leaves it loaded, so the handler never reads
  // a table that was unmapped.
  EXPECT_EQ(::dlclose(handle), 0);
  void* again = ::dlopen(GUESTMEM_FAULT_TABLE_MODULE, RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(again, nullptr);
  if (again != nullptr) {
    ::dlclose(again);
  }
  EXPECT_EQ(load(bad, &value, &address), SIGSEGV);
  EXPECT_EQ(address, reinterpret_cast<std::uintptr_t>(bad));
  ::munmap(mapping, 2 * kPage);
}

}  // namespace
}  // namespace guestmem
