#include "guestmem/address.hpp"

#include <array>
#include <charconv>
#include <ostream>

namespace guestmem {
namespace {

std::string hex(std::uint64_t value) {
  std::array<char, 2 + 16> buf{'0', 'x'};
  const auto [end, ec] = std::to_chars(buf.data() + 2, buf.data() + buf.size(), value, 16);
  GUESTMEM_ASSERT(ec == std::errc{}, "to_chars failed on a 64-bit value");
  return std::string(buf.data(), end);
}

}  // namespace

std::string to_string(GuestAddress address) { return hex(address.raw_value()); }
std::string to_string(MemoryRegionAddress address) { return hex(address.raw_value()); }

std::ostream& operator<<(std::ostream& out, GuestAddress address) {
  return out << to_string(address);
}
std::ostream& operator<<(std::ostream& out, MemoryRegionAddress address) {
  return out << to_string(address);
}

}  // namespace guestmem
