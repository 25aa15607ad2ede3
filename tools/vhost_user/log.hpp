// guestmem vhost-user: the back end's log, one line per event on standard error.
//
// Every refused message, broken ring and failed request gets exactly one line, so an
// operator can tell what a front end or guest did wrong. `format_text` fills `{}` with an
// integer in decimal or a string, and `{:#x}` with an integer in hexadecimal (GCC 12 has no
// <format>):
//
//   log_line(format_text("queue {}: ring at {:#x} unreadable", index, address));
#pragma once

#include <charconv>
#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>

namespace guestmem::vhost_user {

namespace detail_log {

inline void append(std::string& out, std::string_view text, bool) { out += text; }
inline void append(std::string& out, const std::string& text, bool) { out += text; }
inline void append(std::string& out, const char* text, bool) { out += text; }

template <std::integral T>
void append(std::string& out, T value, bool hex) {
  char buf[24];
  if (hex) {
    out += "0x";
  }
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value, hex ? 16 : 10);
  out.append(buf, end);
}

inline void format_into(std::string& out, std::string_view pattern) { out += pattern; }

template <class First, class... Rest>
void format_into(std::string& out, std::string_view pattern, const First& first,
                 const Rest&... rest) {
  const std::size_t open = pattern.find('{');
  const std::size_t close = pattern.find('}', open);
  if (open == std::string_view::npos || close == std::string_view::npos) {
    out += pattern;
    return;
  }
  out += pattern.substr(0, open);
  append(out, first, pattern.substr(open, close - open + 1) == "{:#x}");
  format_into(out, pattern.substr(close + 1), rest...);
}

}  // namespace detail_log

/// `pattern` with each `{}` or `{:#x}` replaced by the next argument (integers and strings).
template <class... Args>
[[nodiscard]] std::string format_text(std::string_view pattern, const Args&... args) {
  std::string out;
  detail_log::format_into(out, pattern, args...);
  return out;
}

/// Writes "vhost-user: <text>\n" to standard error with one write(2), so lines from several
/// threads never interleave. Never fails (a log that cannot be written is dropped).
void log_line(std::string_view text) noexcept;

}  // namespace guestmem::vhost_user
