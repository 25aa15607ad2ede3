// guestmem: {fmt} support, for projects that format with fmt::format (GCC 12's standard
// library has no <format>; with one that does, std::format works through the formatters in
// address.hpp and error.hpp).
//
// Include this header explicitly; it requires {fmt} (Debian: libfmt-dev). Addresses format
// as "0x1200" with an empty spec and as an unsigned integer with any other ("{:08x}");
// errors as their message; error codes as their name.
//
//   fmt::print("read failed at {}: {}\n", addr, result.error());
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string_view>

#include "guestmem/address.hpp"
#include "guestmem/error.hpp"

template <guestmem::detail::Address A>
struct fmt::formatter<A, char> : fmt::formatter<std::uint64_t, char> {
  constexpr auto parse(fmt::format_parse_context& ctx) {
    hex_default_ = ctx.begin() == ctx.end() || *ctx.begin() == '}';
    return hex_default_ ? ctx.begin() : fmt::formatter<std::uint64_t, char>::parse(ctx);
  }
  template <class FormatContext>
  auto format(const A& address, FormatContext& ctx) const {
    if (hex_default_) {
      return fmt::format_to(ctx.out(), "{:#x}", address.raw_value());
    }
    return fmt::formatter<std::uint64_t, char>::format(address.raw_value(), ctx);
  }

 private:
  bool hex_default_ = true;
};

template <>
struct fmt::formatter<guestmem::Error, char> : fmt::formatter<std::string_view, char> {
  template <class FormatContext>
  auto format(const guestmem::Error& error, FormatContext& ctx) const {
    return fmt::formatter<std::string_view, char>::format(error.message(), ctx);
  }
};

template <>
struct fmt::formatter<guestmem::ErrorCode, char> : fmt::formatter<std::string_view, char> {
  template <class FormatContext>
  auto format(guestmem::ErrorCode code, FormatContext& ctx) const {
    return fmt::formatter<std::string_view, char>::format(guestmem::to_string(code), ctx);
  }
};
