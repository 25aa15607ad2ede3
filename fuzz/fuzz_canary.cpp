// fuzz_canary: proves that fuzz/run.sh reports what it must, under the same signal set-up
// as the real targets. `fuzz/run.sh --self-test` runs it once per failure mode below and
// expects a failure each time, and once without one and expects success.
//
// Every input first makes the library recover from a real fault (a fallible copy from a
// PROT_NONE page), which must keep working with libFuzzer's and the sanitizers' handlers
// installed. Then GUESTMEM_FUZZ_CANARY selects a failure:
//   segv     a plain read of the PROT_NONE page: a fault the library does not own, which
//            must still be a crash with a report and a crash-* file;
//   bus      a plain read of a memfd page past the end of the file (SIGBUS);
//   abort    a failed model check (GUESTMEM_FUZZ_CHECK);
//   leak     memory allocated and lost (LeakSanitizer, ASan builds only);
//   timeout  an input that runs longer than run.sh's -timeout.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "fuzz_common.hpp"
#include "guestmem/fault.hpp"

namespace {

constexpr std::size_t kPage = 4096;

struct Pages {
  std::uint8_t* none = nullptr;     // PROT_NONE
  std::uint8_t* past_eof = nullptr;  // a memfd mapping whose file is empty
};

Pages make_pages() {
  Pages p;
  void* none = ::mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  GUESTMEM_FUZZ_CHECK(none != MAP_FAILED, "mmap failed");
  p.none = static_cast<std::uint8_t*>(none);
  const int fd = ::memfd_create("fuzz_canary", MFD_CLOEXEC);
  GUESTMEM_FUZZ_CHECK(fd >= 0, "memfd_create failed");
  void* file = ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd, 0);
  GUESTMEM_FUZZ_CHECK(file != MAP_FAILED, "mmap of the memfd failed");
  p.past_eof = static_cast<std::uint8_t*>(file);
  return p;
}

Pages pages;
std::string_view mode;
void* volatile leaked = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  GUESTMEM_FUZZ_CHECK(guestmem::install_fault_handler().has_value(), "no fault recovery");
  pages = make_pages();
  const char* env = std::getenv("GUESTMEM_FUZZ_CANARY");
  mode = env == nullptr ? "" : env;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::uint8_t buf[16];
  const auto outcome = guestmem::fallible_copy(buf, pages.none + (size % 8), sizeof buf);
  GUESTMEM_FUZZ_CHECK(outcome.done == 0 && outcome.fault && outcome.fault->signal == SIGSEGV,
                      "a fault in a fallible copy was not recovered");
  if (mode == "segv") {
    std::printf("%d\n", *static_cast<volatile std::uint8_t*>(pages.none));
  } else if (mode == "bus") {
    std::printf("%d\n", *static_cast<volatile std::uint8_t*>(pages.past_eof));
  } else if (mode == "abort") {
    GUESTMEM_FUZZ_CHECK(size > 1000000, "the canary's deliberate mismatch");
  } else if (mode == "leak") {
    leaked = std::malloc(64 + size);
    leaked = nullptr;
  } else if (mode == "timeout") {
    // libFuzzer's timeout check runs from SIGALRM, which cuts a single sleep() short: keep
    // sleeping until 30 seconds have passed.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      ::usleep(100000);
    }
  }
  (void)data;
  return 0;
}
