// The consumer that every way of taking in guestmem builds (tests/consumers/CMakeLists.txt,
// .ci/consumers.sh): it uses the core library, including a fault-tolerant access whose fault
// table lives in this program while the handler lives in the library (in a shared build, in
// another object), and the snapshot and KVM components. It exits with 0 only when each
// gives the exact answer.
#include <guestmem/fault.hpp>
#include <guestmem/guestmem.hpp>
#include <guestmem/kvm.hpp>
#include <guestmem/snapshot.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>

namespace {

// A copy across a readable page into a PROT_NONE one stops at the boundary; an inline load
// from the PROT_NONE page reports SIGSEGV at its address. Returns 0 when both do.
int check_fault_recovery() {
  if (auto installed = guestmem::install_fault_handler(); !installed) {
    std::printf("fault recovery: %s\n", installed.error().message().c_str());
    return installed.error().code() == guestmem::ErrorCode::FaultRecoveryUnsupported ? 0 : 3;
  }
  const long page = ::sysconf(_SC_PAGESIZE);
  const auto page_size = static_cast<std::size_t>(page);
  void* map = ::mmap(nullptr, 2 * page_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) {
    return 3;
  }
  auto* bytes = static_cast<std::uint8_t*>(map);
  if (::mprotect(bytes + page_size, page_size, PROT_NONE) != 0) {
    return 3;
  }
  static std::uint8_t out[2 * 65536];
  const auto copied = guestmem::fallible_copy(out, bytes, 2 * page_size);
  const auto loaded = guestmem::fallible_load<std::uint32_t>(bytes + page_size);
  const auto hole = reinterpret_cast<std::uintptr_t>(bytes + page_size);
  const bool ok = page_size <= 65536 && copied.done == page_size && copied.fault &&
                  copied.fault->address == hole && !loaded && loaded.error().address == hole &&
                  loaded.error().signal == SIGSEGV;
  ::munmap(map, 2 * page_size);
  std::printf("fault recovery: copy stopped after %zu bytes, load faulted: %s\n", copied.done,
              ok ? "as expected" : "WRONG");
  return ok ? 0 : 3;
}

}  // namespace

int main() {
  using guestmem::GuestAddress;
  auto mem = guestmem::GuestMemoryMmap<>::from_ranges({{GuestAddress{0x1000}, 0x1000}});
  if (!mem || !mem->write_obj(std::uint32_t{0x600d}, GuestAddress{0x1ffc})) {
    return 1;
  }
  auto value = mem->read_obj<std::uint32_t>(GuestAddress{0x1ffc});
  std::printf("guestmem works: 0x%x\n", value.value_or(0));
  if (value != 0x600du) {
    return 1;
  }
  if (const int failed = check_fault_recovery(); failed != 0) {
    return failed;
  }

  // The snapshot component: a round trip through a memfd.
  const int fd = ::memfd_create("consumer-snapshot", 0);
  if (fd < 0 || !guestmem::save_snapshot(*mem, guestmem::BorrowedFd{fd})) {
    return 2;
  }
  auto restored =
      guestmem::restore_snapshot(guestmem::BorrowedFd{fd}, guestmem::RestoreMode::Eager);
  ::close(fd);
  if (!restored || restored->read_obj<std::uint32_t>(GuestAddress{0x1ffc}) != 0x600du) {
    return 2;
  }
  std::printf("guestmem::snapshot works\n");

  // The KVM component links and answers; a machine without /dev/kvm says why.
  auto kvm = guestmem::KvmSystem::open();
  std::printf("guestmem::kvm works: %s\n",
              kvm ? "/dev/kvm opened" : kvm.error().message().c_str());
  return 0;
}
