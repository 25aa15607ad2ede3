// Fault recovery where guestmem has no primitives (an architecture other than x86-64 and
// aarch64, or a build with GUESTMEM_FAULT_RECOVERY=OFF): every fallible entry point must say
// FaultRecoveryUnsupported before it touches memory, while the plain byte-access interface
// works. A plain main(), so that it needs nothing but guestmem on any target; tests/CMakeLists
// builds it as the test unsupported_fault_check in such builds.
#include <cstdio>
#include <vector>

#include "guestmem/guestmem.hpp"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "unsupported_fault_check: %s\n", what);
    ++failures;
  }
}

template <class T>
bool unsupported(const guestmem::Result<T>& result) {
  return !result.has_value() &&
         result.error().code() == guestmem::ErrorCode::FaultRecoveryUnsupported;
}

}  // namespace

int main() {
  using namespace guestmem;
  expect(unsupported(install_fault_handler()), "install_fault_handler()");
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}});
  if (!mem) {
    std::fprintf(stderr, "unsupported_fault_check: %s\n", mem.error().message().c_str());
    return 1;
  }
  expect(mem->write_obj(std::uint64_t{0x1122334455667788}, GuestAddress{0xffc}).has_value(),
         "plain write_obj across two regions");
  expect(mem->read_obj<std::uint64_t>(GuestAddress{0xffc}) == 0x1122334455667788U,
         "plain read_obj across two regions");
  std::vector<std::byte> buf(16);
  expect(unsupported(mem->try_read(buf, GuestAddress{0})), "try_read");
  expect(unsupported(mem->try_write_slice(buf, GuestAddress{0})), "try_write_slice");
  expect(unsupported(mem->try_load<std::uint32_t>(GuestAddress{0}, std::memory_order_relaxed)),
         "try_load");
  expect(unsupported(mem->try_store(std::uint32_t{1}, GuestAddress{0}, std::memory_order_relaxed)),
         "try_store");
  expect(unsupported(mem->reader(GuestAddress{0}, 16)), "reader");
  expect(mem->read_obj<std::uint32_t>(GuestAddress{0}) == 0U,
         "the refused try_store wrote nothing");
  if (failures == 0) {
    std::puts("unsupported_fault_check: ok");
  }
  return failures == 0 ? 0 : 1;
}
