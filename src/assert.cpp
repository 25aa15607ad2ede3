#include <cstdio>
#include <cstdlib>

#include "guestmem/detail/config.hpp"

namespace guestmem::detail {

void assertion_failed(const char* condition, const char* file, int line,
                      const char* message) noexcept {
  std::fprintf(stderr, "guestmem: assertion failed: %s (%s:%d): %s\n", condition, file, line,
               message);
  std::abort();
}

}  // namespace guestmem::detail
