#include "vhost_user/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace guestmem::vhost_user {

void log_line(std::string_view text) noexcept {
  static constexpr std::string_view kPrefix = "vhost-user: ";
  std::array<char, 512> line;
  const std::size_t body = std::min(text.size(), line.size() - kPrefix.size() - 1);
  std::memcpy(line.data(), kPrefix.data(), kPrefix.size());
  std::memcpy(line.data() + kPrefix.size(), text.data(), body);
  line[kPrefix.size() + body] = '\n';
  // A short or failed write to the log only loses the line.
  (void)!::write(STDERR_FILENO, line.data(), kPrefix.size() + body + 1);
}

}  // namespace guestmem::vhost_user
