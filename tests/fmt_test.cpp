#include "guestmem/fmt.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace guestmem {
namespace {

TEST(Fmt, AddressesAndErrors) {
  EXPECT_EQ(fmt::format("{}", GuestAddress{0x1200}), "0x1200");
  EXPECT_EQ(fmt::format("{:08x}", GuestAddress{0x1200}), "00001200");
  EXPECT_EQ(fmt::format("{:d}", MemoryRegionAddress{16}), "16");
  EXPECT_EQ(fmt::format("{}", Error::partial_buffer(8, 4)), "partial buffer: completed 4 of 8 bytes");
  EXPECT_EQ(fmt::format("{}", ErrorCode::InvalidGuestAddress), "InvalidGuestAddress");
  EXPECT_EQ(fmt::format("[{:>12}]", ErrorCode::IoError), "[     IoError]");
}

}  // namespace
}  // namespace guestmem
