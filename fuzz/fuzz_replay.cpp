// fuzz_replay: the replay script format of ../shared/peers/rust-vm-memory/README.md, run
// against guestmem and against a model of the format's contract in the same process.
//
// The input is decoded as a binary stream of script commands (every command of the format:
// regions, write, read, write_slice, read_slice, read_from, write_to, read_obj_u64,
// write_obj_u64, load_uW, store_uW, check_range, find_region, last_addr, dirty, reset_dirty).
// Each command is executed twice: by a replayer over GuestMemoryMmap<AtomicBitmap> (the
// library, as tools/replay.cpp uses it) and by `Model`, which implements the README's
// "Semantics" section directly over byte vectors and never calls guestmem. Both produce the
// format's output line; the first difference aborts with the script so far, in the text
// format, so that it can be replayed with guestmem-replay or the peer's model_replay.py.
//
// Region sizes stay small (the README's advice: mmap failures of huge sizes depend on the
// host), and lengths stay below 128 KiB so that a run stays fast; the format's parse errors
// have no binary counterpart and are not exercised.
#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_common.hpp"
#include "guestmem/guestmem.hpp"

namespace {

using guestmem::ErrorCode;
using guestmem::GuestAddress;
using guestmem::fuzz::fnv1a64;
using guestmem::fuzz::Input;
using guestmem::fuzz::pattern;

constexpr std::uint64_t kTop = ~std::uint64_t{0};  // U = 2^64 - 1
constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kMaxOps = 64;
constexpr std::size_t kMaxRegions = 6;

std::string hex(std::uint64_t v) {
  char buf[17];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, 16);
  return "0x" + std::string(buf, end);
}

std::string hex_padded(std::uint64_t v, int digits) {
  std::string s = hex(v).substr(2);
  if (static_cast<int>(s.size()) < digits) {
    s.insert(0, static_cast<std::size_t>(digits - static_cast<int>(s.size())), '0');
  }
  return "0x" + s;
}

std::string checksum(std::span<const std::byte> data) { return hex_padded(fnv1a64(data), 16); }

// ------------------------------------------------------------------------------------------
// The model: the README's semantics, written from the README alone.

class Model {
 public:
  std::string regions(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& tokens) {
    regions_.reset();
    for (const auto& [start, len] : tokens) {
      if (len == 0) {
        return "err mmap_failed";
      }
      if (len > kTop - start) {  // START + LEN > U
        return "err invalid_guest_region";
      }
    }
    if (tokens.empty()) {
      return "err no_memory_region";
    }
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      const auto [s0, l0] = tokens[i];
      const auto s1 = tokens[i + 1].first;
      if (s0 > s1) {
        return "err unsorted_memory_regions";
      }
      if (s0 + l0 - 1 >= s1) {
        return "err memory_region_overlap";
      }
    }
    regions_.emplace();
    for (const auto& [start, len] : tokens) {
      regions_->push_back(Region{start, len, std::vector<std::byte>(len),
                                 std::vector<bool>((len + kPage - 1) / kPage)});
    }
    return "ok " + std::to_string(tokens.size());
  }

  [[nodiscard]] bool has_memory() const { return regions_.has_value(); }

  // Write-like ops: write, write_slice, read_from.
  std::string write(const std::string& cmd, std::uint64_t addr, std::span<const std::byte> data) {
    if (data.empty()) {
      return cmd == "write_slice" ? "ok" : "ok 0";
    }
    if (find(addr) == nullptr) {
      return "err invalid_guest_address";
    }
    const std::size_t n = walk(addr, data.size(), [&](Region& r, std::uint64_t off, std::size_t done,
                                                      std::size_t count) {
      std::copy_n(data.begin() + static_cast<std::ptrdiff_t>(done), count,
                  r.data.begin() + static_cast<std::ptrdiff_t>(off));
      mark(r, off, count);
    });
    if (cmd == "write_slice") {
      return n == data.size() ? "ok" : partial(data.size(), n);
    }
    return "ok " + std::to_string(n);
  }

  // Read-like ops: read, read_slice, write_to.
  std::string read(const std::string& cmd, std::uint64_t addr, std::size_t len) {
    std::vector<std::byte> out(len);
    if (len == 0) {
      return cmd == "read_slice" ? "ok " + checksum(out) : "ok 0 " + checksum(out);
    }
    if (find(addr) == nullptr) {
      return "err invalid_guest_address";
    }
    const std::size_t n = walk(addr, len, [&](Region& r, std::uint64_t off, std::size_t done,
                                              std::size_t count) {
      std::copy_n(r.data.begin() + static_cast<std::ptrdiff_t>(off), count,
                  out.begin() + static_cast<std::ptrdiff_t>(done));
    });
    if (cmd == "read_slice") {
      return n == len ? "ok " + checksum(out) : partial(len, n);
    }
    return "ok " + std::to_string(n) + " " + checksum(std::span(out).first(n));
  }

  std::string read_obj_u64(std::uint64_t addr) {
    std::vector<std::byte> out(8);
    if (find(addr) == nullptr) {
      return "err invalid_guest_address";
    }
    const std::size_t n = walk(addr, 8, [&](Region& r, std::uint64_t off, std::size_t done,
                                            std::size_t count) {
      std::copy_n(r.data.begin() + static_cast<std::ptrdiff_t>(off), count,
                  out.begin() + static_cast<std::ptrdiff_t>(done));
    });
    if (n < 8) {
      return partial(8, n);
    }
    return "ok " + hex_padded(little_endian(out), 16);
  }

  std::string write_obj_u64(std::uint64_t addr, std::uint64_t value) {
    std::vector<std::byte> bytes(8);
    for (std::size_t i = 0; i < 8; ++i) {
      bytes[i] = static_cast<std::byte>(value >> (8 * i));
    }
    const std::string r = write("write_slice", addr, bytes);
    return r;
  }

  std::string load(unsigned width, std::uint64_t addr) {
    Region* r = find(addr);
    const std::size_t w = width / 8;
    if (r == nullptr) {
      return "err invalid_guest_address";
    }
    const std::uint64_t off = addr - r->start;
    if (off + w > r->len || off % w != 0) {
      return "err invalid_backend_address";
    }
    return "ok " + hex_padded(little_endian(std::span(r->data).subspan(off, w)),
                              static_cast<int>(2 * w));
  }

  std::string store(unsigned width, std::uint64_t addr, std::uint64_t value) {
    Region* r = find(addr);
    const std::size_t w = width / 8;
    if (r == nullptr) {
      return "err invalid_guest_address";
    }
    const std::uint64_t off = addr - r->start;
    if (off + w > r->len || off % w != 0) {
      return "err invalid_backend_address";
    }
    for (std::size_t i = 0; i < w; ++i) {
      r->data[off + i] = static_cast<std::byte>(value >> (8 * i));
    }
    mark(*r, off, w);
    return "ok";
  }

  std::string check_range(std::uint64_t addr, std::uint64_t len) {
    if (len == 0) {
      return "ok true";
    }
    if (find(addr) == nullptr) {
      return "ok false";
    }
    const std::size_t n = walk(addr, len, [](Region&, std::uint64_t, std::size_t, std::size_t) {});
    return n == len ? "ok true" : "ok false";
  }

  std::string find_region(std::uint64_t addr) {
    Region* r = find(addr);
    return r == nullptr ? "none" : "region " + hex(r->start) + " " + hex(r->len);
  }

  std::string last_addr() {
    std::uint64_t last = 0;
    for (const Region& r : *regions_) {
      last = std::max(last, r.start + r.len - 1);
    }
    return "ok " + hex(last);
  }

  std::string dirty(std::uint64_t addr) {
    Region* r = find(addr);
    if (r == nullptr) {
      return "err invalid_guest_address";
    }
    return r->dirty[(addr - r->start) / kPage] ? "ok true" : "ok false";
  }

  std::string reset_dirty() {
    for (Region& r : *regions_) {
      std::fill(r.dirty.begin(), r.dirty.end(), false);
    }
    return "ok";
  }

 private:
  struct Region {
    std::uint64_t start;
    std::uint64_t len;
    std::vector<std::byte> data;
    std::vector<bool> dirty;
  };

  static std::string partial(std::size_t expected, std::size_t completed) {
    return "err partial_buffer " + std::to_string(expected) + " " + std::to_string(completed);
  }

  static std::uint64_t little_endian(std::span<const std::byte> bytes) {
    std::uint64_t v = 0;
    for (std::size_t i = bytes.size(); i-- > 0;) {
      v = (v << 8) | static_cast<std::uint64_t>(bytes[i]);
    }
    return v;
  }

  // The region that contains `a` (S <= A <= S + L - 1), searched linearly.
  Region* find(std::uint64_t a) {
    for (Region& r : *regions_) {
      if (a >= r.start && a - r.start <= r.len - 1) {
        return &r;
      }
    }
    return nullptr;
  }

  static void mark(Region& r, std::uint64_t off, std::size_t count) {
    for (std::uint64_t p = off / kPage; p <= (off + count - 1) / kPage; ++p) {
      r.dirty[p] = true;
    }
  }

  // Step 3 of "Range access": moves from region to region while bytes remain and `cur` is in
  // some region; returns N. Preconditions: len > 0 and find(addr) != nullptr.
  template <class Move>
  std::size_t walk(std::uint64_t addr, std::uint64_t len, Move&& move) {
    std::uint64_t cur = addr;
    std::size_t done = 0;
    while (done < len) {
      Region* r = find(cur);
      if (r == nullptr) {
        break;
      }
      const std::uint64_t off = cur - r->start;
      const std::size_t n = static_cast<std::size_t>(std::min(r->len - off, len - done));
      move(*r, off, done, n);
      done += n;
      cur += n;  // at most S + L <= U: never wraps
    }
    return done;
  }

  std::optional<std::vector<Region>> regions_;
};

// ------------------------------------------------------------------------------------------
// The library side, as tools/replay.cpp drives it.

using Memory = guestmem::GuestMemoryMmap<guestmem::AtomicBitmap>;

std::string error_line(const guestmem::Error& e) {
  switch (e.code()) {
    case ErrorCode::InvalidGuestAddress:
      return "err invalid_guest_address";
    case ErrorCode::InvalidBackendAddress:
      return "err invalid_backend_address";
    case ErrorCode::PartialBuffer:
      return "err partial_buffer " + std::to_string(e.expected()) + " " +
             std::to_string(e.completed());
    case ErrorCode::MappingFailed:
      return "err mmap_failed";
    case ErrorCode::InvalidGuestRegion:
      return "err invalid_guest_region";
    case ErrorCode::NoMemoryRegion:
      return "err no_memory_region";
    case ErrorCode::UnsortedMemoryRegions:
      return "err unsorted_memory_regions";
    case ErrorCode::MemoryRegionOverlap:
      return "err memory_region_overlap";
    default:
      return "err unexpected:" + std::string(to_string(e.code()));
  }
}

class Library {
 public:
  std::string regions(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& tokens) {
    std::vector<std::pair<GuestAddress, std::size_t>> ranges;
    for (const auto& [start, len] : tokens) {
      ranges.emplace_back(GuestAddress{start}, len);
    }
    mem_.reset();
    auto built = Memory::from_ranges(ranges);
    if (!built) {
      return error_line(built.error());
    }
    mem_.emplace(std::move(*built));
    return "ok " + std::to_string(mem_->num_regions());
  }

  std::string write(const std::string& cmd, std::uint64_t addr, std::span<const std::byte> data) {
    if (cmd == "write") {
      auto r = mem_->write(data, GuestAddress{addr});
      return r ? "ok " + std::to_string(*r) : error_line(r.error());
    }
    if (cmd == "write_slice") {
      auto r = mem_->write_slice(data, GuestAddress{addr});
      return r ? "ok" : error_line(r.error());
    }
    guestmem::SpanReader src{data};
    auto r = mem_->read_volatile_from(GuestAddress{addr}, src, data.size());
    return r ? "ok " + std::to_string(*r) : error_line(r.error());
  }

  std::string read(const std::string& cmd, std::uint64_t addr, std::size_t len) {
    if (cmd == "write_to") {
      std::vector<std::byte> out;
      guestmem::VectorWriter dst{out};
      auto r = mem_->write_volatile_to(GuestAddress{addr}, dst, len);
      return r ? "ok " + std::to_string(*r) + " " + checksum(out) : error_line(r.error());
    }
    std::vector<std::byte> buf(len);
    if (cmd == "read") {
      auto r = mem_->read(buf, GuestAddress{addr});
      return r ? "ok " + std::to_string(*r) + " " + checksum(std::span(buf).first(*r))
               : error_line(r.error());
    }
    auto r = mem_->read_slice(buf, GuestAddress{addr});
    return r ? "ok " + checksum(buf) : error_line(r.error());
  }

  std::string read_obj_u64(std::uint64_t addr) {
    auto r = mem_->read_obj<std::uint64_t>(GuestAddress{addr});
    return r ? "ok " + hex_padded(*r, 16) : error_line(r.error());
  }

  std::string write_obj_u64(std::uint64_t addr, std::uint64_t value) {
    auto r = mem_->write_obj(value, GuestAddress{addr});
    return r ? std::string("ok") : error_line(r.error());
  }

  template <class T>
  std::string load(std::uint64_t addr) {
    auto r = mem_->load<T>(GuestAddress{addr}, std::memory_order_seq_cst);
    return r ? "ok " + hex_padded(*r, 2 * sizeof(T)) : error_line(r.error());
  }

  template <class T>
  std::string store(std::uint64_t addr, std::uint64_t value) {
    auto r = mem_->store<T>(static_cast<T>(value), GuestAddress{addr}, std::memory_order_seq_cst);
    return r ? std::string("ok") : error_line(r.error());
  }

  std::string load(unsigned width, std::uint64_t addr) {
    switch (width) {
      case 8:
        return load<std::uint8_t>(addr);
      case 16:
        return load<std::uint16_t>(addr);
      case 32:
        return load<std::uint32_t>(addr);
      default:
        return load<std::uint64_t>(addr);
    }
  }

  std::string store(unsigned width, std::uint64_t addr, std::uint64_t value) {
    switch (width) {
      case 8:
        return store<std::uint8_t>(addr, value);
      case 16:
        return store<std::uint16_t>(addr, value);
      case 32:
        return store<std::uint32_t>(addr, value);
      default:
        return store<std::uint64_t>(addr, value);
    }
  }

  std::string check_range(std::uint64_t addr, std::uint64_t len) {
    return mem_->check_range(GuestAddress{addr}, len) ? "ok true" : "ok false";
  }

  std::string find_region(std::uint64_t addr) {
    const auto* r = mem_->find_region(GuestAddress{addr});
    return r != nullptr ? "region " + hex(r->start_addr().raw_value()) + " " + hex(r->len())
                        : "none";
  }

  std::string last_addr() { return "ok " + hex(mem_->last_addr().raw_value()); }

  std::string dirty(std::uint64_t addr) {
    auto found = mem_->to_region_addr(GuestAddress{addr});
    if (!found) {
      return "err invalid_guest_address";
    }
    return found->first->bitmap().dirty_at(found->second.raw_value()) ? "ok true" : "ok false";
  }

  std::string reset_dirty() {
    for (const auto& region : mem_->regions()) {
      region.bitmap().reset();
    }
    return "ok";
  }

 private:
  std::optional<Memory> mem_;
};

// ------------------------------------------------------------------------------------------
// The driver: decodes commands, runs both sides, compares.

class Driver {
 public:
  explicit Driver(Input& in) : in_(in) {}

  void run() {
    for (std::size_t op = 0; op < kMaxOps && !in_.empty(); ++op) {
      step();
    }
  }

 private:
  // An address: near the edges of the last layout asked for, in holes, at the top of the
  // address space, near 0, or anywhere.
  std::uint64_t address() {
    switch (in_.below(6)) {
      case 0:
      case 1:
        if (!anchors_.empty()) {
          return anchors_[in_.below(anchors_.size())] + static_cast<std::uint64_t>(in_.delta(40));
        }
        return in_.below(0x40);
      case 2:
        if (!anchors_.empty()) {
          return anchors_[in_.below(anchors_.size())] + in_.below(0x4000);
        }
        return in_.u64();
      case 3:
        return kTop - in_.below(0x48);
      case 4:
        return in_.below(0x40);
      default:
        return in_.u64();
    }
  }

  std::uint64_t length() {
    switch (in_.below(5)) {
      case 0:
        return 0;
      case 1:
        return in_.below(0x21);
      case 2:
        return in_.below(0x1001);
      case 3:
        // Long enough to cross several small regions and the holes between them.
        return in_.below(0x8000);
      default:
        return in_.below(kMaxLen + 1);
    }
  }

  void regions() {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> tokens;
    const std::size_t n = in_.below(kMaxRegions + 1);
    std::uint64_t end = in_.below(4) * 0x1000;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint64_t len;
      switch (in_.below(6)) {
        case 0:
          len = 0x1000;
          break;
        case 1:
          len = 1 + in_.below(0x20);
          break;
        case 2:
          len = 0x1000 * (1 + in_.below(4));
          break;
        case 3:
          len = in_.below(16) == 0 ? 0 : 1 + in_.below(0x5000);
          break;
        case 4:
          len = 0x10000;
          break;
        default:
          len = 1 + in_.below(0x3000);
          break;
      }
      std::uint64_t start;
      switch (in_.below(10)) {
        case 0:
        case 1:
        case 2:
          start = end;  // adjacent
          break;
        case 3:
          start = end + 1 + in_.below(16);
          break;
        case 4:
          start = end + 0x1000 * (1 + in_.below(4));
          break;
        case 5:
          start = (std::uint64_t{1} << 32) - in_.below(3) * 0x1000;
          break;
        case 6:
          // Ending exactly at U (the largest allowed end), or one or two bytes past it.
          start = kTop - len + in_.below(3);
          break;
        case 7:
          start = end - std::min<std::uint64_t>(end, 1 + in_.below(0x2000));  // overlap/unsorted
          break;
        case 8:
          start = in_.below(0x100000);
          break;
        default:
          start = in_.u64();
          break;
      }
      tokens.emplace_back(start, len);
      end = start + len;  // may wrap for invalid layouts; only used to place the next one
    }
    anchors_.clear();
    for (const auto& [start, len] : tokens) {
      anchors_.push_back(start);
      anchors_.push_back(start + len);
    }
    std::string line = "regions";
    for (const auto& [start, len] : tokens) {
      line += " " + hex(start) + ":" + hex(len);
    }
    compare(line, model_.regions(tokens), library_.regions(tokens));
  }

  void step() {
    const unsigned cmd = static_cast<unsigned>(in_.below(18));
    if (cmd == 0 || (cmd == 1 && !model_.has_memory())) {
      regions();
      return;
    }
    if (!model_.has_memory()) {
      return;  // both would say err no_memory
    }
    switch (cmd) {
      case 1:
      case 2:
      case 3: {
        static const char* const kNames[] = {"write", "write_slice", "read_from"};
        const std::string name = kNames[cmd - 1];
        const std::uint64_t addr = address();
        const std::uint64_t len = length();
        const std::uint64_t seed = in_.u64();
        const std::vector<std::byte> data = pattern(seed, len);
        compare(name + " " + hex(addr) + " " + hex(len) + " " + std::to_string(seed),
                model_.write(name, addr, data), library_.write(name, addr, data));
        break;
      }
      case 4:
      case 5:
      case 6: {
        static const char* const kNames[] = {"read", "read_slice", "write_to"};
        const std::string name = kNames[cmd - 4];
        const std::uint64_t addr = address();
        const std::uint64_t len = length();
        compare(name + " " + hex(addr) + " " + hex(len), model_.read(name, addr, len),
                library_.read(name, addr, len));
        break;
      }
      case 7: {
        const std::uint64_t addr = address();
        compare("read_obj_u64 " + hex(addr), model_.read_obj_u64(addr), library_.read_obj_u64(addr));
        break;
      }
      case 8: {
        const std::uint64_t addr = address();
        const std::uint64_t value = in_.u64();
        compare("write_obj_u64 " + hex(addr) + " " + hex(value), model_.write_obj_u64(addr, value),
                library_.write_obj_u64(addr, value));
        break;
      }
      case 9:
      case 10: {
        const unsigned width = 8U << in_.below(4);
        std::uint64_t addr = address();
        if (in_.flag()) {
          addr &= ~std::uint64_t{width / 8 - 1};  // aligned in guest space
        }
        if (cmd == 9) {
          compare("load_u" + std::to_string(width) + " " + hex(addr), model_.load(width, addr),
                  library_.load(width, addr));
        } else {
          std::uint64_t value = in_.u64();
          if (width < 64) {
            value &= (std::uint64_t{1} << width) - 1;
          }
          compare("store_u" + std::to_string(width) + " " + hex(addr) + " " + hex(value),
                  model_.store(width, addr, value), library_.store(width, addr, value));
        }
        break;
      }
      case 11: {
        const std::uint64_t addr = address();
        // check_range moves no data, so any length goes, up to the full 64 bits.
        const std::uint64_t len = in_.flag() ? length() : in_.u64();
        compare("check_range " + hex(addr) + " " + hex(len), model_.check_range(addr, len),
                library_.check_range(addr, len));
        break;
      }
      case 12: {
        const std::uint64_t addr = address();
        compare("find_region " + hex(addr), model_.find_region(addr), library_.find_region(addr));
        break;
      }
      case 13:
        compare("last_addr", model_.last_addr(), library_.last_addr());
        break;
      case 14:
      case 15: {
        const std::uint64_t addr = address();
        compare("dirty " + hex(addr), model_.dirty(addr), library_.dirty(addr));
        break;
      }
      default:
        compare("reset_dirty", model_.reset_dirty(), library_.reset_dirty());
        break;
    }
  }

  void compare(const std::string& line, const std::string& model, const std::string& library) {
    script_ += line + "\n";
    GUESTMEM_FUZZ_CHECK(model == library,
                        "the library and the model disagree on the last line of this "
                        "script:\n%s=> model:   %s\n=> library: %s",
                        script_.c_str(), model.c_str(), library.c_str());
  }

  static constexpr std::uint64_t kMaxLen = 0x20000;

  Input& in_;
  Model model_;
  Library library_;
  std::vector<std::uint64_t> anchors_;
  std::string script_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  Driver driver(in);
  driver.run();
  return 0;
}
