// std::format support, which GCC 12's standard library lacks: built as a test where the
// standard library has <format>, and by .ci/run with Clang 19 and libc++. Plain main()
// because Debian's GoogleTest is built against libstdc++.
#include <cstdio>
#include <format>
#include <string>

#include "guestmem/guestmem.hpp"

namespace {

int failures = 0;

void expect(const std::string& got, const char* want) {
  if (got != want) {
    std::fprintf(stderr, "std::format gave '%s', expected '%s'\n", got.c_str(), want);
    ++failures;
  }
}

}  // namespace

int main() {
  using namespace guestmem;
  expect(std::format("{}", GuestAddress{0x1200}), "0x1200");
  expect(std::format("{:08x}", GuestAddress{0x1200}), "00001200");
  expect(std::format("{:d}", MemoryRegionAddress{16}), "16");
  expect(std::format("{}", Error::partial_buffer(8, 4)), "partial buffer: completed 4 of 8 bytes");
  expect(std::format("{}", Error::invalid_guest_address(GuestAddress{0x3000})),
         "invalid guest address 0x3000");
  expect(std::format("[{:>14}]", ErrorCode::IoError), "[       IoError]");

  // The library itself works with this standard library too.
  auto mem = GuestMemoryMmap<>::from_ranges({{GuestAddress{0}, 0x1000}, {GuestAddress{0x1000}, 0x1000}});
  if (!mem || !mem->write_obj(std::uint64_t{7}, GuestAddress{0xffc}) ||
      mem->read_obj<std::uint64_t>(GuestAddress{0xffc}) != 7u) {
    std::fprintf(stderr, "cross-region object access failed\n");
    ++failures;
  }
  std::printf("std_format_test: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
