// guestmem-replay: runs an operation script (stdin) against guestmem and prints one result
// line per operation, in the format of ../shared/peers/rust-vm-memory/README.md ("Replay
// script format"), so that difftest.py can compare guestmem with the real vm-memory.
//
// The replayer only translates: every result comes from the library's own behaviour. Where
// guestmem deliberately differs from vm-memory, the difference is documented in
// docs/DESIGN.md and passed to difftest.py with --equiv, never hidden here.
//
// Usage: guestmem-replay [--echo] < script.txt
#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "guestmem/guestmem.hpp"

namespace {

using guestmem::Error;
using guestmem::ErrorCode;
using guestmem::GuestAddress;
// Tracked, as the peer's is: one dirty bit per 4 KiB page of each region.
using Memory = guestmem::GuestMemoryMmap<guestmem::AtomicBitmap>;

// The largest LEN a data-moving op accepts (a larger one is a script error).
constexpr std::uint64_t kMaxLen = 0x4000000;
constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325;
constexpr std::uint64_t kFnvPrime = 0x100000001b3;

std::vector<std::byte> pattern(std::uint64_t seed, std::size_t len) {
  std::vector<std::byte> out(len);
  std::uint64_t s = seed;
  for (auto& b : out) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    b = static_cast<std::byte>(s >> 56);
  }
  return out;
}

std::uint64_t fnv1a64(std::span<const std::byte> data) {
  std::uint64_t h = kFnvOffset;
  for (std::byte b : data) {
    h ^= static_cast<std::uint64_t>(b);
    h *= kFnvPrime;
  }
  return h;
}

std::string hex(std::uint64_t v) {
  char buf[19];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, 16);
  return "0x" + std::string(buf, end);
}

std::string hex_padded(std::uint64_t v, int digits) {
  std::string digits_only = hex(v).substr(2);
  return "0x" + std::string(static_cast<std::size_t>(std::max(0, digits - static_cast<int>(digits_only.size()))), '0') +
         digits_only;
}

std::string checksum(std::span<const std::byte> data) { return hex_padded(fnv1a64(data), 16); }

std::optional<std::uint64_t> parse_number(std::string_view tok) {
  int base = 10;
  if (tok.size() > 2 && tok[0] == '0' && (tok[1] == 'x' || tok[1] == 'X')) {
    tok.remove_prefix(2);
    base = 16;
  }
  if (tok.empty()) {
    return std::nullopt;
  }
  for (char c : tok) {
    const bool ok = base == 16 ? std::isxdigit(static_cast<unsigned char>(c)) != 0
                               : std::isdigit(static_cast<unsigned char>(c)) != 0;
    if (!ok) {
      return std::nullopt;
    }
  }
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), value, base);
  if (ec != std::errc{} || end != tok.data() + tok.size()) {
    return std::nullopt;
  }
  return value;
}

// snake_case of an ErrorCode name ("InvalidGuestAddress" -> "invalid_guest_address").
std::string snake(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (std::isupper(static_cast<unsigned char>(c)) != 0) {
      if (!out.empty()) {
        out += '_';
      }
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out;
}

std::string error_line(const Error& e) {
  switch (e.code()) {
    case ErrorCode::PartialBuffer:
      return "err partial_buffer " + std::to_string(e.expected()) + " " + std::to_string(e.completed());
    case ErrorCode::MappingFailed:
      return "err mmap_failed";
    case ErrorCode::MemoryRegionOverlap:
      return "err memory_region_overlap";
    default:
      return "err " + snake(to_string(e.code()));
  }
}

class Replayer {
 public:
  std::string exec(const std::vector<std::string_view>& toks) {
    const std::string_view cmd = toks[0];
    const std::span<const std::string_view> rest(toks.data() + 1, toks.size() - 1);
    if (cmd == "regions") {
      return regions(rest);
    }
    if (cmd == "write" || cmd == "write_slice" || cmd == "read_from") {
      return with_args(rest, 3, 1, [&](const Args& a) {
        return write_op(cmd, GuestAddress{a[0]}, pattern(a[2], a[1]));
      });
    }
    if (cmd == "read" || cmd == "read_slice" || cmd == "write_to") {
      return with_args(rest, 2, 1, [&](const Args& a) { return read_op(cmd, GuestAddress{a[0]}, a[1]); });
    }
    if (cmd == "read_obj_u64") {
      return with_args(rest, 1, kNoLen, [&](const Args& a) {
        auto r = mem_->read_obj<std::uint64_t>(GuestAddress{a[0]});
        return r ? "ok " + hex_padded(*r, 16) : error_line(r.error());
      });
    }
    if (cmd == "write_obj_u64") {
      return with_args(rest, 2, kNoLen, [&](const Args& a) {
        auto r = mem_->write_obj(a[1], GuestAddress{a[0]});
        return r ? std::string("ok") : error_line(r.error());
      });
    }
    if (cmd.starts_with("load_u") || cmd.starts_with("store_u")) {
      return atomic_op(cmd, rest);
    }
    if (cmd == "check_range") {
      return with_args(rest, 2, 1, [&](const Args& a) {
        return std::string(mem_->check_range(GuestAddress{a[0]}, a[1]) ? "ok true" : "ok false");
      });
    }
    if (cmd == "find_region") {
      return with_args(rest, 1, kNoLen, [&](const Args& a) {
        const auto* r = mem_->find_region(GuestAddress{a[0]});
        return r ? "region " + hex(r->start_addr().raw_value()) + " " + hex(r->len()) : "none";
      });
    }
    if (cmd == "last_addr") {
      return with_args(rest, 0, kNoLen,
                       [&](const Args&) { return "ok " + hex(mem_->last_addr().raw_value()); });
    }
    if (cmd == "dirty") {
      return with_args(rest, 1, kNoLen, [&](const Args& a) {
        auto found = mem_->to_region_addr(GuestAddress{a[0]});
        if (!found) {
          return error_line(Error::invalid_guest_address(GuestAddress{a[0]}));
        }
        return std::string(found->first->bitmap().dirty_at(found->second.raw_value()) ? "ok true"
                                                                                     : "ok false");
      });
    }
    if (cmd == "reset_dirty") {
      return with_args(rest, 0, kNoLen, [&](const Args&) {
        for (const auto& region : mem_->regions()) {
          region.bitmap().reset();
        }
        return std::string("ok");
      });
    }
    return kParse;
  }

 private:
  static constexpr const char* kParse = "err parse";
  static constexpr const char* kNoMemory = "err no_memory";

  using Args = std::vector<std::uint64_t>;
  static constexpr std::size_t kNoLen = ~std::size_t{0};

  // Parses exactly `n` numbers; the one at `len_at` (unless kNoLen) is a LEN, bounded by
  // kMaxLen; `valid` checks the rest. Parse errors come before the memory check.
  template <class Op>
  std::string with_args(std::span<const std::string_view> toks, std::size_t n, std::size_t len_at,
                        Op&& op, bool (*valid)(const Args&) = nullptr) {
    auto a = args(toks, n);
    if (!a || (len_at != kNoLen && (*a)[len_at] > kMaxLen) || (valid != nullptr && !valid(*a))) {
      return kParse;
    }
    if (!mem_) {
      return kNoMemory;
    }
    return op(*a);
  }

  static std::optional<Args> args(std::span<const std::string_view> toks, std::size_t n) {
    if (toks.size() != n) {
      return std::nullopt;
    }
    std::vector<std::uint64_t> out;
    for (auto t : toks) {
      auto v = parse_number(t);
      if (!v) {
        return std::nullopt;
      }
      out.push_back(*v);
    }
    return out;
  }

  std::string regions(std::span<const std::string_view> toks) {
    std::vector<std::pair<GuestAddress, std::size_t>> ranges;
    for (auto t : toks) {
      const auto colon = t.find(':');
      if (colon == std::string_view::npos) {
        return kParse;
      }
      auto start = parse_number(t.substr(0, colon));
      auto len = parse_number(t.substr(colon + 1));
      if (!start || !len) {
        return kParse;
      }
      ranges.emplace_back(GuestAddress{*start}, *len);
    }
    mem_.reset();  // unmap the old memory before mapping the new one
    auto built = Memory::from_ranges(ranges);
    if (!built) {
      return error_line(built.error());
    }
    mem_.emplace(std::move(*built));
    return "ok " + std::to_string(mem_->num_regions());
  }

  std::string write_op(std::string_view cmd, GuestAddress addr, const std::vector<std::byte>& data) {
    if (cmd == "write") {
      auto r = mem_->write(data, addr);
      return r ? "ok " + std::to_string(*r) : error_line(r.error());
    }
    if (cmd == "write_slice") {
      auto r = mem_->write_slice(data, addr);
      return r ? "ok" : error_line(r.error());
    }
    guestmem::SpanReader src{data};
    auto r = mem_->read_volatile_from(addr, src, data.size());
    return r ? "ok " + std::to_string(*r) : error_line(r.error());
  }

  std::string read_op(std::string_view cmd, GuestAddress addr, std::size_t len) {
    if (cmd == "write_to") {
      std::vector<std::byte> out;
      guestmem::VectorWriter dst{out};
      auto r = mem_->write_volatile_to(addr, dst, len);
      return r ? "ok " + std::to_string(*r) + " " + checksum(out) : error_line(r.error());
    }
    std::vector<std::byte> buf(len);
    if (cmd == "read") {
      auto r = mem_->read(buf, addr);
      return r ? "ok " + std::to_string(*r) + " " + checksum(std::span(buf).first(*r))
               : error_line(r.error());
    }
    auto r = mem_->read_slice(buf, addr);
    return r ? "ok " + checksum(buf) : error_line(r.error());
  }

  template <class T>
  std::string load(GuestAddress addr) {
    auto r = mem_->load<T>(addr, std::memory_order_seq_cst);
    return r ? "ok " + hex_padded(*r, 2 * sizeof(T)) : error_line(r.error());
  }

  template <class T>
  std::string store(GuestAddress addr, std::uint64_t value) {
    auto r = mem_->store<T>(static_cast<T>(value), addr, std::memory_order_seq_cst);
    return r ? "ok" : error_line(r.error());
  }

  std::string atomic_op(std::string_view cmd, std::span<const std::string_view> rest) {
    const bool is_store = cmd.starts_with("store_u");
    const std::string_view width = cmd.substr(is_store ? 7 : 6);
    if (width != "8" && width != "16" && width != "32" && width != "64") {
      return kParse;
    }
    const int bits = std::stoi(std::string(width));
    auto fits = [](int w) -> bool (*)(const Args&) {
      switch (w) {
        case 8:
          return [](const Args& a) { return a[1] >> 8 == 0; };
        case 16:
          return [](const Args& a) { return a[1] >> 16 == 0; };
        case 32:
          return [](const Args& a) { return a[1] >> 32 == 0; };
        default:
          return nullptr;
      }
    };
    return with_args(
        rest, is_store ? 2 : 1, kNoLen,
        [&](const Args& a) {
          const GuestAddress addr{a[0]};
          switch (bits) {
            case 8:
              return is_store ? store<std::uint8_t>(addr, a[1]) : load<std::uint8_t>(addr);
            case 16:
              return is_store ? store<std::uint16_t>(addr, a[1]) : load<std::uint16_t>(addr);
            case 32:
              return is_store ? store<std::uint32_t>(addr, a[1]) : load<std::uint32_t>(addr);
            default:
              return is_store ? store<std::uint64_t>(addr, a[1]) : load<std::uint64_t>(addr);
          }
        },
        is_store ? fits(bits) : nullptr);
  }

  std::optional<Memory> mem_;
};

std::vector<std::string_view> tokenize(std::string_view line) {
  std::vector<std::string_view> toks;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) {
      ++i;
    }
    const std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') {
      ++i;
    }
    if (i > start) {
      toks.push_back(line.substr(start, i - start));
    }
  }
  return toks;
}

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) {
    return {};
  }
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

}  // namespace

int main(int argc, char** argv) {
  bool echo = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--echo") {
      echo = true;
    } else {
      std::fprintf(stderr, "usage: guestmem-replay [--echo] < script\n");
      return 2;
    }
  }
  std::ios::sync_with_stdio(false);
  Replayer replayer;
  std::string line;
  std::string out;
  while (std::getline(std::cin, line)) {
    const std::string_view t = trim(line);
    if (t.empty() || t.front() == '#') {
      continue;
    }
    const std::string result = replayer.exec(tokenize(t));
    if (echo) {
      std::string padded(t);
      padded.resize(std::max<std::size_t>(padded.size(), 48), ' ');
      out += padded + " => " + result + "\n";
    } else {
      out += result + "\n";
    }
    if (out.size() > (1 << 16)) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}
