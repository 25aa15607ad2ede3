#include <guestmem/guestmem.hpp>
#include <guestmem/kvm.hpp>
#include <guestmem/snapshot.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>

int main() {
  using guestmem::GuestAddress;
  auto mem = guestmem::GuestMemoryMmap<>::from_ranges({{GuestAddress{0x1000}, 0x1000}});
  if (!mem || !mem->write_obj(std::uint32_t{0x600d}, GuestAddress{0x1ffc})) {
    return 1;
  }
  auto value = mem->read_obj<std::uint32_t>(GuestAddress{0x1ffc});
  std::printf("installed guestmem works: 0x%x\n", value.value_or(0));
  if (value != 0x600du) {
    return 1;
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
  std::printf("installed guestmem::snapshot works\n");

  // The KVM component links and answers; a machine without /dev/kvm says why.
  auto kvm = guestmem::KvmSystem::open();
  std::printf("installed guestmem::kvm works: %s\n",
              kvm ? "/dev/kvm opened" : kvm.error().message().c_str());
  return 0;
}
