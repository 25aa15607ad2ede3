#include <guestmem/guestmem.hpp>

#include <cstdio>

int main() {
  auto mem = guestmem::GuestMemoryMmap<>::from_ranges({{guestmem::GuestAddress{0x1000}, 0x1000}});
  if (!mem || !mem->write_obj(std::uint32_t{0x600d}, guestmem::GuestAddress{0x1ffc})) {
    return 1;
  }
  auto value = mem->read_obj<std::uint32_t>(guestmem::GuestAddress{0x1ffc});
  std::printf("installed guestmem works: 0x%x\n", value.value_or(0));
  return value == 0x600du ? 0 : 1;
}
