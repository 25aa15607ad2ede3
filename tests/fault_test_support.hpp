// Helpers of the fault tests (fault_test.cpp, vm_io_test.cpp): whole pages to protect or unmap,
// death tests that re-execute the binary, and a child process that recovers one fault before it
// crashes on purpose.
#pragma once

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include <gtest/gtest.h>

#include "guestmem/fault.hpp"

namespace guestmem::testing {

inline const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

// Every death test of the fault tests re-executes the binary for its child ("threadsafe"): the children
// that crash must start without guestmem's handler or any test thread, and the sanitizer
// runtimes' own threads make forking without exec unreliable. Set by a global environment,
// after gtest has parsed its flags and before the first test saves them.
class ThreadsafeDeathTests : public ::testing::Environment {
 public:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};
[[maybe_unused]] inline ::testing::Environment* const kThreadsafeDeathTests =
    ::testing::AddGlobalTestEnvironment(new ThreadsafeDeathTests);

// An anonymous read-write mapping of whole pages, unmapped on destruction.
class Pages {
 public:
  explicit Pages(std::size_t count) : size_(count * kPage) {
    void* addr = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(addr, MAP_FAILED);
    base_ = static_cast<std::uint8_t*>(addr);
  }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;
  ~Pages() {
    for (std::size_t at = 0; at < size_; at += kPage) {
      if (!unmapped_[at / kPage]) {
        ::munmap(base_ + at, kPage);
      }
    }
  }
  [[nodiscard]] std::uint8_t* page(std::size_t index) const { return base_ + index * kPage; }
  void protect(std::size_t index, int prot) const {
    ASSERT_EQ(::mprotect(page(index), kPage, prot), 0);
  }
  void unmap(std::size_t index) {
    ASSERT_EQ(::munmap(page(index), kPage), 0);
    unmapped_[index] = true;
  }

 private:
  std::size_t size_;
  std::uint8_t* base_ = nullptr;
  std::array<bool, 16> unmapped_{};
};

inline std::uintptr_t address_of(const void* pointer) {
  return reinterpret_cast<std::uintptr_t>(pointer);
}

// No core files from the children that are meant to crash.
inline void no_core_dumps() {
  const rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
}

// A recovered fault, then `crash` outside the primitives. Exits 3 when the recovered fault is
// not reported exactly (so the test fails with the wrong exit status).
template <class Crash>
void recover_then(Crash crash) {
  no_core_dumps();
  if (!install_fault_handler()) {
    ::_exit(2);
  }
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  std::array<std::byte, 16> host{};
  const FallibleOutcome read = fallible_copy(host.data(), pages.page(1) - 8, 16);
  if (read.done != 8 || !read.fault || read.fault->address != address_of(pages.page(1))) {
    ::_exit(3);
  }
  crash(pages.page(1));
}

// A plain store outside the primitives: faults kill the process unless a handler repairs them.
inline void write_to(std::uint8_t* address) {
  *reinterpret_cast<volatile std::uint8_t*>(address) = 1;
}

}  // namespace guestmem::testing
