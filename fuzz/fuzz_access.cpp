// fuzz_access: guest-controlled (address, length) pairs through every byte-access call of
// GuestMemoryMmap, against a model of which bytes exist and what each call must return.
//
// Each input builds a valid layout of up to five regions (adjacent or with holes, anywhere
// up to the top of the address space, read-write, read-only or write-only) over
// GuestMemoryMmap<AtomicBitmap>, then runs a stream of accesses at addresses near region
// edges, in holes, near 2^64 and anywhere, with lengths that are small, reach an edge, or
// overflow. Calls covered: read, write, read_slice, write_slice, read_obj/write_obj of 1 to
// 96 bytes, load/store of 1 to 8 bytes in each valid memory order, the try_* fallible
// counterparts and try_compare_exchange, get_slice, get_slices (with and without an access
// kind), check_range, find_region, to_region_addr, address_in_range, checked_offset,
// get_host_address, reader/writer, and read_volatile_from/write_volatile_to (and their
// exact/all variants) with a memfd and a pipe.
//
// The model is a list of regions with their bytes; it predicts exact counts, error codes and
// the fields each error carries, the data read back, the host pointers of views, and at the
// end of each input the dirty bit of every page.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "fuzz_common.hpp"
#include "guestmem/guestmem.hpp"

namespace {

using guestmem::AtomicBitmap;
using guestmem::BorrowedFd;
using guestmem::Error;
using guestmem::ErrorCode;
using guestmem::GuestAddress;
using guestmem::Permissions;
using guestmem::Protection;
using guestmem::Result;
using guestmem::fuzz::draw_protection;
using guestmem::fuzz::Input;

using Memory = guestmem::GuestMemoryMmap<AtomicBitmap>;
using Region = guestmem::GuestRegionMmap<AtomicBitmap>;

constexpr std::uint64_t kTop = ~std::uint64_t{0};
constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kMaxRegions = 5;
constexpr std::size_t kMaxOps = 48;
// Largest buffer an op allocates; lengths of calls that move no buffer are unbounded.
constexpr std::size_t kMaxBuffer = 0x6000;
constexpr std::size_t kPipeMax = 4096;  // PIPE_BUF: pipe transfers stay whole

struct ModelRegion {
  std::uint64_t start;
  std::uint64_t len;
  Permissions allowed;
  std::vector<std::uint8_t> data;
  std::vector<bool> dirty;
};

// A failure the model predicts for the first piece of an access.
struct FirstError {
  ErrorCode code;
  std::uint64_t address;
  std::uint64_t length;
  std::uint64_t expected;
};

void check_error(const Error& e, const FirstError& want, const char* what) {
  GUESTMEM_FUZZ_CHECK(e.code() == want.code && e.address() == want.address &&
                          e.length() == want.length && e.expected() == want.expected,
                      "%s: error %d (address %#llx length %llu expected %llu); model %d "
                      "(%#llx, %llu, %llu)",
                      what, static_cast<int>(e.code()),
                      static_cast<unsigned long long>(e.address()),
                      static_cast<unsigned long long>(e.length()),
                      static_cast<unsigned long long>(e.expected()), static_cast<int>(want.code),
                      static_cast<unsigned long long>(want.address),
                      static_cast<unsigned long long>(want.length),
                      static_cast<unsigned long long>(want.expected));
}

std::uint64_t access_bits(Permissions access) {
  return (access.has_read() ? 1U : 0U) | (access.has_write() ? 2U : 0U);
}

class Model {
 public:
  std::vector<ModelRegion> regions;

  [[nodiscard]] const ModelRegion* find(std::uint64_t a) const {
    for (const ModelRegion& r : regions) {
      if (a >= r.start && a - r.start < r.len) {
        return &r;
      }
    }
    return nullptr;
  }
  ModelRegion* find(std::uint64_t a) {
    return const_cast<ModelRegion*>(static_cast<const Model*>(this)->find(a));
  }

  // The error of an access of `count` > 0 bytes at `addr` whose first piece is missing, or
  // nullopt when the first piece exists.
  [[nodiscard]] std::optional<FirstError> first_error(std::uint64_t addr, std::uint64_t count,
                                                      Permissions access) const {
    const ModelRegion* r = find(addr);
    if (r == nullptr) {
      return FirstError{ErrorCode::InvalidGuestAddress, addr, 0, 0};
    }
    if (!r->allowed.allow(access)) {
      return FirstError{ErrorCode::ProtectionViolation, addr, count, access_bits(access)};
    }
    return std::nullopt;
  }

  // The pieces of [addr, addr + count) for `access`: (region, offset, size) while regions
  // continue and allow the access. The walk never wraps: a region's end fits in 64 bits.
  struct Piece {
    const ModelRegion* region;
    std::uint64_t offset;
    std::uint64_t size;
  };
  [[nodiscard]] std::vector<Piece> pieces(std::uint64_t addr, std::uint64_t count,
                                          Permissions access) const {
    std::vector<Piece> out;
    std::uint64_t done = 0;
    while (done < count) {
      const ModelRegion* r = find(addr + done);
      if (r == nullptr || !r->allowed.allow(access)) {
        break;
      }
      const std::uint64_t off = addr + done - r->start;
      const std::uint64_t n = std::min(r->len - off, count - done);
      out.push_back(Piece{r, off, n});
      done += n;
    }
    return out;
  }
  [[nodiscard]] std::uint64_t reach(std::uint64_t addr, std::uint64_t count,
                                    Permissions access) const {
    std::uint64_t n = 0;
    for (const Piece& p : pieces(addr, count, access)) {
      n += p.size;
    }
    return n;
  }

  void read(std::uint64_t addr, std::span<std::uint8_t> out) const {
    std::size_t done = 0;
    for (const Piece& p : pieces(addr, out.size(), Permissions::Read)) {
      std::memcpy(out.data() + done, p.region->data.data() + p.offset, p.size);
      done += p.size;
    }
  }
  // Writes as much of `in` as the walk reaches; returns the count.
  std::size_t write(std::uint64_t addr, std::span<const std::uint8_t> in) {
    std::size_t done = 0;
    for (const Piece& p : pieces(addr, in.size(), Permissions::Write)) {
      auto* r = const_cast<ModelRegion*>(p.region);
      std::memcpy(r->data.data() + p.offset, in.data() + done, p.size);
      mark(*r, p.offset, p.size);
      done += p.size;
    }
    return done;
  }
  // The bytes at [addr, addr + size), whatever the protection; they must exist.
  void read_raw(std::uint64_t addr, void* out, std::size_t size) const {
    std::size_t done = 0;
    for (const Piece& p : pieces(addr, size, Permissions::No)) {
      std::memcpy(static_cast<std::uint8_t*>(out) + done, p.region->data.data() + p.offset, p.size);
      done += p.size;
    }
  }
  static void mark(ModelRegion& r, std::uint64_t off, std::uint64_t count) {
    for (std::uint64_t page = off / kPage; count > 0 && page <= (off + count - 1) / kPage; ++page) {
      r.dirty[page] = true;
    }
  }
};

// A memfd and a non-blocking pipe, reused by every input.
struct Files {
  int memfd;
  int pipe_read;
  int pipe_write;
};

Files& files() {
  static Files f = [] {
    Files out{};
    out.memfd = ::memfd_create("fuzz_access", MFD_CLOEXEC);
    GUESTMEM_FUZZ_CHECK(out.memfd >= 0, "memfd_create failed");
    int p[2];
    GUESTMEM_FUZZ_CHECK(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0, "pipe2 failed");
    out.pipe_read = p[0];
    out.pipe_write = p[1];
    return out;
  }();
  return f;
}

void drain_pipe() {
  std::array<std::uint8_t, 4096> sink;
  while (::read(files().pipe_read, sink.data(), sink.size()) > 0) {
  }
}

class Session {
 public:
  explicit Session(Input& in) : in_(in) {}

  bool build() {
    const std::size_t n = 1 + in_.below(kMaxRegions);
    std::vector<Region> regions;
    std::uint64_t end = in_.below(3) * kPage + in_.below(2) * 7;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint64_t len;
      switch (in_.below(4)) {
        case 0:
          len = kPage;
          break;
        case 1:
          len = 1 + in_.below(32);
          break;
        case 2:
          len = kPage * (1 + in_.below(3));
          break;
        default:
          len = 1 + in_.below(3 * kPage);
          break;
      }
      std::uint64_t start;
      switch (in_.below(6)) {
        case 0:
        case 1:
          start = end;
          break;
        case 2:
          start = end + 1 + in_.below(16);
          break;
        case 3:
          start = end + kPage * (1 + in_.below(8));
          break;
        case 4:
          // Up to the top: the exclusive end may be 2^64 - 1, never 2^64.
          start = kTop - len - in_.below(3);
          break;
        default:
          start = end + in_.u64() % (kTop / 2);
          break;
      }
      if (start < end || len > kTop - start) {
        break;  // keep the layout sorted and inside the address space
      }
      const auto [prot, allowed] = draw_protection(in_, 6);
      auto mapping = guestmem::MmapRegionBuilder<AtomicBitmap>(len).with_protection(prot).build();
      GUESTMEM_FUZZ_CHECK(mapping.has_value(), "mapping %llu bytes failed",
                          static_cast<unsigned long long>(len));
      auto region = Region::create(std::move(*mapping), GuestAddress{start});
      GUESTMEM_FUZZ_CHECK(region.has_value(), "region at %#llx failed",
                          static_cast<unsigned long long>(start));
      regions.push_back(std::move(*region));
      model_.regions.push_back(ModelRegion{start, len, allowed, std::vector<std::uint8_t>(len),
                                           std::vector<bool>((len + kPage - 1) / kPage)});
      end = start + len;
    }
    if (regions.empty()) {
      return false;
    }
    auto built = Memory::from_regions(std::move(regions));
    GUESTMEM_FUZZ_CHECK(built.has_value(), "from_regions of a valid layout failed");
    mem_.emplace(std::move(*built));
    return true;
  }

  void run() {
    if (!build()) {
      return;
    }
    for (std::size_t op = 0; op < kMaxOps && !in_.empty(); ++op) {
      step();
    }
    verify_dirty();
  }

 private:
  std::uint64_t address() {
    const auto& rs = model_.regions;
    switch (in_.below(6)) {
      case 0:
      case 1: {
        const ModelRegion& r = rs[in_.below(rs.size())];
        const std::uint64_t edge = in_.flag() ? r.start : r.start + r.len;
        return edge + static_cast<std::uint64_t>(in_.delta(20));
      }
      case 2: {
        const ModelRegion& r = rs[in_.below(rs.size())];
        return r.start + in_.below(r.len + 1);
      }
      case 3:
        return kTop - in_.below(40);
      case 4:
        return in_.below(64);
      default:
        return in_.u64();
    }
  }

  // A length for a call with a buffer (at most kMaxBuffer).
  std::size_t buffer_length(std::uint64_t addr) {
    switch (in_.below(4)) {
      case 0:
        return in_.below(17);
      case 1: {
        // Up to the end of the region holding addr (and the next ones), plus a little.
        const ModelRegion* r = model_.find(addr);
        const std::uint64_t to_end = r == nullptr ? 0 : r->start + r->len - addr;
        return static_cast<std::size_t>(std::min<std::uint64_t>(
            to_end + in_.below(3) + (in_.flag() ? in_.below(2 * kPage) : 0), kMaxBuffer));
      }
      default:
        return in_.below(kMaxBuffer + 1);
    }
  }

  // A length for a call without a buffer: anything, including lengths that overflow.
  std::uint64_t any_length(std::uint64_t addr) {
    switch (in_.below(3)) {
      case 0:
        return kTop - in_.below(8);
      case 1:
        return in_.u64();
      default:
        return buffer_length(addr);
    }
  }

  Permissions access_kind() {
    switch (in_.below(3)) {
      case 0:
        return Permissions::Read;
      case 1:
        return Permissions::Write;
      default:
        return Permissions::ReadWrite;
    }
  }

  void step() {
    switch (in_.below(20)) {
      case 0:
        read(false);
        break;
      case 1:
        read(true);
        break;
      case 2:
        write(false);
        break;
      case 3:
        write(true);
        break;
      case 4:
        read_obj();
        break;
      case 5:
        write_obj();
        break;
      case 6:
        load();
        break;
      case 7:
        store();
        break;
      case 8:
        compare_exchange();
        break;
      case 9:
        get_slice();
        break;
      case 10:
        get_slices();
        break;
      case 11:
        check_range();
        break;
      case 12:
        lookups();
        break;
      case 13:
        reader_writer();
        break;
      case 14:
        from_memfd();
        break;
      case 15:
        to_memfd();
        break;
      case 16:
        from_pipe();
        break;
      case 17:
        to_pipe();
        break;
      default:
        verify_dirty();
        break;
    }
  }

  // read, read_slice and their try_ counterparts. `slice`: all-or-nothing.
  void read(bool slice) {
    const std::uint64_t addr = address();
    const std::size_t len = buffer_length(addr);
    const bool fallible = in_.flag();
    std::vector<std::uint8_t> buf(len, 0xa5);
    auto bytes = std::as_writable_bytes(std::span(buf));
    const std::uint64_t n = model_.reach(addr, len, Permissions::Read);
    const auto first = len == 0 ? std::nullopt : model_.first_error(addr, len, Permissions::Read);
    std::vector<std::uint8_t> want(len, 0xa5);
    model_.read(addr, std::span(want).first(n));
    if (!slice) {
      auto got = fallible ? mem_->try_read(bytes, GuestAddress{addr})
                          : mem_->read(bytes, GuestAddress{addr});
      if (first) {
        GUESTMEM_FUZZ_CHECK(!got, "read of %zu at %#llx succeeded with %zu; model: error", len,
                            static_cast<unsigned long long>(addr), got ? *got : 0);
        check_error(got.error(), *first, "read");
        return;
      }
      GUESTMEM_FUZZ_CHECK(got && *got == n, "read of %zu at %#llx: got %s %llu, model %llu", len,
                          static_cast<unsigned long long>(addr), got ? "ok" : "error",
                          got ? static_cast<unsigned long long>(*got)
                              : static_cast<unsigned long long>(got.error().code()),
                          static_cast<unsigned long long>(n));
    } else {
      auto got = fallible ? mem_->try_read_slice(bytes, GuestAddress{addr})
                          : mem_->read_slice(bytes, GuestAddress{addr});
      check_all_or_nothing(got, first, len, n, "read_slice");
    }
    // The bytes read hold guest data; the rest of the buffer is untouched.
    GUESTMEM_FUZZ_CHECK(buf == want, "read at %#llx: data differs from the model",
                        static_cast<unsigned long long>(addr));
  }

  static void check_all_or_nothing(const Result<void>& got, const std::optional<FirstError>& first,
                                   std::uint64_t len, std::uint64_t n, const char* what) {
    if (first) {
      GUESTMEM_FUZZ_CHECK(!got, "%s succeeded; model: error", what);
      check_error(got.error(), *first, what);
    } else if (n < len) {
      GUESTMEM_FUZZ_CHECK(!got && got.error().code() == ErrorCode::PartialBuffer &&
                              got.error().expected() == len && got.error().completed() == n,
                          "%s: expected PartialBuffer(%llu, %llu)", what,
                          static_cast<unsigned long long>(len), static_cast<unsigned long long>(n));
    } else {
      GUESTMEM_FUZZ_CHECK(got.has_value(), "%s of %llu bytes failed with %d", what,
                          static_cast<unsigned long long>(len),
                          static_cast<int>(got.error().code()));
    }
  }

  void write(bool slice) {
    const std::uint64_t addr = address();
    const std::size_t len = buffer_length(addr);
    const bool fallible = in_.flag();
    const std::vector<std::byte> data = guestmem::fuzz::pattern(in_.u64(), len);
    const auto first = len == 0 ? std::nullopt : model_.first_error(addr, len, Permissions::Write);
    const std::uint64_t n =
        model_.write(addr, std::span(reinterpret_cast<const std::uint8_t*>(data.data()), len));
    if (!slice) {
      auto got = fallible ? mem_->try_write(data, GuestAddress{addr})
                          : mem_->write(data, GuestAddress{addr});
      if (first) {
        GUESTMEM_FUZZ_CHECK(!got, "write succeeded; model: error");
        check_error(got.error(), *first, "write");
      } else {
        GUESTMEM_FUZZ_CHECK(got && *got == n, "write of %zu at %#llx: model %llu", len,
                            static_cast<unsigned long long>(addr),
                            static_cast<unsigned long long>(n));
      }
    } else {
      auto got = fallible ? mem_->try_write_slice(data, GuestAddress{addr})
                          : mem_->write_slice(data, GuestAddress{addr});
      check_all_or_nothing(got, first, len, n, "write_slice");
    }
    verify_bytes(addr, len);
  }

  // Reads [addr, addr + len) back through the regions' host memory (readable or not) and
  // compares it with the model.
  void verify_bytes(std::uint64_t addr, std::uint64_t len) const {
    for (const auto& p : model_.pieces(addr, len, Permissions::No)) {
      const auto* region = mem_->find_region(GuestAddress{p.region->start});
      // Write-only mappings are readable on x86-64 (PROT_WRITE implies PROT_READ there).
      const std::uint8_t* host = region->mapping().unsafe_host_ptr() + p.offset;
      GUESTMEM_FUZZ_CHECK(std::memcmp(host, p.region->data.data() + p.offset, p.size) == 0,
                          "region %#llx: bytes differ from the model",
                          static_cast<unsigned long long>(p.region->start));
    }
  }

  template <std::size_t N>
  using Bytes = std::array<std::uint8_t, N>;

  template <class T>
  void read_obj_as(std::uint64_t addr, bool fallible) {
    auto got = fallible ? mem_->try_read_obj<T>(GuestAddress{addr})
                        : mem_->read_obj<T>(GuestAddress{addr});
    const auto first = model_.first_error(addr, sizeof(T), Permissions::Read);
    const std::uint64_t n = model_.reach(addr, sizeof(T), Permissions::Read);
    if (!first && n == sizeof(T)) {
      GUESTMEM_FUZZ_CHECK(got.has_value(), "read_obj<%zu> at %#llx failed", sizeof(T),
                          static_cast<unsigned long long>(addr));
      std::array<std::uint8_t, sizeof(T)> want;
      model_.read(addr, want);
      GUESTMEM_FUZZ_CHECK(std::memcmp(&*got, want.data(), sizeof(T)) == 0,
                          "read_obj<%zu> at %#llx: wrong value", sizeof(T),
                          static_cast<unsigned long long>(addr));
      return;
    }
    const Result<void> as_void = got ? Result<void>{} : Result<void>(std::unexpect, got.error());
    check_all_or_nothing(as_void, first, sizeof(T), n, "read_obj");
  }

  void read_obj() {
    const std::uint64_t addr = address();
    const bool fallible = in_.flag();
    switch (in_.below(8)) {
      case 0:
        return read_obj_as<std::uint8_t>(addr, fallible);
      case 1:
        return read_obj_as<std::uint16_t>(addr, fallible);
      case 2:
        return read_obj_as<std::uint32_t>(addr, fallible);
      case 3:
        return read_obj_as<std::uint64_t>(addr, fallible);
      case 4:
        return read_obj_as<Bytes<3>>(addr, fallible);
      case 5:
        return read_obj_as<Bytes<16>>(addr, fallible);
      case 6:
        return read_obj_as<Bytes<24>>(addr, fallible);
      default:
        return read_obj_as<Bytes<96>>(addr, fallible);
    }
  }

  template <class T>
  void write_obj_as(std::uint64_t addr, bool fallible) {
    T value;
    guestmem::fuzz::fill_pattern(std::as_writable_bytes(std::span(&value, 1)), in_.u64());
    const auto first = model_.first_error(addr, sizeof(T), Permissions::Write);
    const std::uint64_t n =
        model_.write(addr, std::span(reinterpret_cast<const std::uint8_t*>(&value), sizeof(T)));
    auto got = fallible ? mem_->try_write_obj(value, GuestAddress{addr})
                        : mem_->write_obj(value, GuestAddress{addr});
    check_all_or_nothing(got, first, sizeof(T), n, "write_obj");
    verify_bytes(addr, sizeof(T));
  }

  void write_obj() {
    const std::uint64_t addr = address();
    const bool fallible = in_.flag();
    switch (in_.below(8)) {
      case 0:
        return write_obj_as<std::uint8_t>(addr, fallible);
      case 1:
        return write_obj_as<std::uint16_t>(addr, fallible);
      case 2:
        return write_obj_as<std::uint32_t>(addr, fallible);
      case 3:
        return write_obj_as<std::uint64_t>(addr, fallible);
      case 4:
        return write_obj_as<Bytes<3>>(addr, fallible);
      case 5:
        return write_obj_as<Bytes<16>>(addr, fallible);
      case 6:
        return write_obj_as<Bytes<24>>(addr, fallible);
      default:
        return write_obj_as<Bytes<96>>(addr, fallible);
    }
  }

  // The error of a single access of `size` bytes, or nullopt when it is allowed: out of
  // range, refused, crossing the region's end, misaligned in the region (in that order).
  std::optional<FirstError> single_error(std::uint64_t addr, std::size_t size,
                                         Permissions access) const {
    if (auto first = model_.first_error(addr, size, access)) {
      return first;
    }
    const ModelRegion* r = model_.find(addr);
    const std::uint64_t off = addr - r->start;
    if (r->len - off < size || off % size != 0) {
      return FirstError{ErrorCode::InvalidBackendAddress, addr, 0, 0};
    }
    return std::nullopt;
  }

  template <class T>
  void load_as(std::uint64_t addr) {
    static constexpr std::memory_order kOrders[] = {
        std::memory_order_relaxed, std::memory_order_acquire, std::memory_order_seq_cst};
    const std::memory_order order = kOrders[in_.below(3)];
    auto got = in_.flag() ? mem_->try_load<T>(GuestAddress{addr}, order)
                          : mem_->load<T>(GuestAddress{addr}, order);
    if (auto err = single_error(addr, sizeof(T), Permissions::Read)) {
      GUESTMEM_FUZZ_CHECK(!got, "load<%zu> at %#llx succeeded; model: error", sizeof(T),
                          static_cast<unsigned long long>(addr));
      check_error(got.error(), *err, "load");
      return;
    }
    T want;
    model_.read(addr, std::span(reinterpret_cast<std::uint8_t*>(&want), sizeof(T)));
    GUESTMEM_FUZZ_CHECK(got && *got == want, "load<%zu> at %#llx: wrong value or error",
                        sizeof(T), static_cast<unsigned long long>(addr));
  }

  void load() {
    const std::uint64_t addr = address();
    switch (in_.below(4)) {
      case 0:
        return load_as<std::uint8_t>(addr);
      case 1:
        return load_as<std::uint16_t>(addr);
      case 2:
        return load_as<std::uint32_t>(addr);
      default:
        return load_as<std::uint64_t>(addr);
    }
  }

  template <class T>
  void store_as(std::uint64_t addr) {
    static constexpr std::memory_order kOrders[] = {
        std::memory_order_relaxed, std::memory_order_release, std::memory_order_seq_cst};
    const std::memory_order order = kOrders[in_.below(3)];
    const T value = static_cast<T>(in_.u64());
    auto got = in_.flag() ? mem_->try_store<T>(value, GuestAddress{addr}, order)
                          : mem_->store<T>(value, GuestAddress{addr}, order);
    if (auto err = single_error(addr, sizeof(T), Permissions::Write)) {
      GUESTMEM_FUZZ_CHECK(!got, "store<%zu> at %#llx succeeded; model: error", sizeof(T),
                          static_cast<unsigned long long>(addr));
      check_error(got.error(), *err, "store");
      return;
    }
    GUESTMEM_FUZZ_CHECK(got.has_value(), "store<%zu> at %#llx failed", sizeof(T),
                        static_cast<unsigned long long>(addr));
    model_.write(addr, std::span(reinterpret_cast<const std::uint8_t*>(&value), sizeof(T)));
    verify_bytes(addr, sizeof(T));
  }

  void store() {
    const std::uint64_t addr = address();
    switch (in_.below(4)) {
      case 0:
        return store_as<std::uint8_t>(addr);
      case 1:
        return store_as<std::uint16_t>(addr);
      case 2:
        return store_as<std::uint32_t>(addr);
      default:
        return store_as<std::uint64_t>(addr);
    }
  }

  template <class T>
  void compare_exchange_as(std::uint64_t addr) {
    const bool match = in_.flag();
    const T desired = static_cast<T>(in_.u64());
    T current{};
    const bool allowed = !single_error(addr, sizeof(T), Permissions::Write);
    if (allowed) {
      model_.read_raw(addr, &current, sizeof(T));
    }
    const T expected = match ? current : static_cast<T>(current + 1);
    auto got = mem_->try_compare_exchange<T>(GuestAddress{addr}, expected, desired);
    if (auto err = single_error(addr, sizeof(T), Permissions::Write)) {
      GUESTMEM_FUZZ_CHECK(!got, "compare_exchange at %#llx succeeded; model: error",
                          static_cast<unsigned long long>(addr));
      check_error(got.error(), *err, "compare_exchange");
      return;
    }
    GUESTMEM_FUZZ_CHECK(got && *got == current, "compare_exchange<%zu> at %#llx: wrong result",
                        sizeof(T), static_cast<unsigned long long>(addr));
    if (match) {
      model_.write(addr, std::span(reinterpret_cast<const std::uint8_t*>(&desired), sizeof(T)));
    }
    verify_bytes(addr, sizeof(T));
  }

  void compare_exchange() {
    const std::uint64_t addr = address();
    switch (in_.below(4)) {
      case 0:
        return compare_exchange_as<std::uint8_t>(addr);
      case 1:
        return compare_exchange_as<std::uint16_t>(addr);
      case 2:
        return compare_exchange_as<std::uint32_t>(addr);
      default:
        return compare_exchange_as<std::uint64_t>(addr);
    }
  }

  void get_slice() {
    const std::uint64_t addr = address();
    const std::uint64_t count = any_length(addr);
    auto got = mem_->get_slice(GuestAddress{addr}, count);
    const ModelRegion* r = model_.find(addr);
    if (r == nullptr) {
      GUESTMEM_FUZZ_CHECK(!got, "get_slice outside memory succeeded");
      check_error(got.error(), {ErrorCode::InvalidGuestAddress, addr, 0, 0}, "get_slice");
      return;
    }
    const std::uint64_t off = addr - r->start;
    if (count > r->len - off) {
      GUESTMEM_FUZZ_CHECK(!got, "get_slice past the region's end succeeded");
      check_error(got.error(), {ErrorCode::InvalidBackendAddress, off, 0, 0}, "get_slice");
      return;
    }
    GUESTMEM_FUZZ_CHECK(got && got->size() == count &&
                            got->unsafe_host_ptr() == host_of(*r) + off,
                        "get_slice at %#llx: wrong view", static_cast<unsigned long long>(addr));
  }

  std::uint8_t* host_of(const ModelRegion& r) const {
    return mem_->find_region(GuestAddress{r.start})->mapping().unsafe_host_ptr();
  }

  void get_slices() {
    const std::uint64_t addr = address();
    const std::uint64_t count = any_length(addr);
    const bool with_access = in_.flag();
    const Permissions access = with_access ? access_kind() : Permissions::No;
    auto iter = with_access ? *mem_->get_slices(GuestAddress{addr}, count, access)
                            : mem_->get_slices(GuestAddress{addr}, count);
    const auto want = model_.pieces(addr, count, access);
    std::uint64_t done = 0;
    for (const auto& p : want) {
      auto item = iter.next();
      GUESTMEM_FUZZ_CHECK(item && item->has_value() && (*item)->size() == p.size &&
                              (*item)->unsafe_host_ptr() == host_of(*p.region) + p.offset,
                          "get_slices at %#llx: piece at %llu differs",
                          static_cast<unsigned long long>(addr),
                          static_cast<unsigned long long>(done));
      done += p.size;
    }
    auto last = iter.next();
    if (done == count) {
      GUESTMEM_FUZZ_CHECK(!last, "get_slices: an item after the whole range");
      return;
    }
    GUESTMEM_FUZZ_CHECK(last && !last->has_value(), "get_slices: missing error item");
    const std::uint64_t at = addr + done;
    const ModelRegion* r = model_.find(at);
    if (r == nullptr) {
      check_error(last->error(), {ErrorCode::InvalidGuestAddress, at, 0, 0}, "get_slices");
    } else {
      check_error(last->error(),
                  {ErrorCode::ProtectionViolation, at, count - done, access_bits(access)},
                  "get_slices");
    }
    GUESTMEM_FUZZ_CHECK(!iter.next(), "get_slices: an item after an error");
  }

  void check_range() {
    const std::uint64_t addr = address();
    const std::uint64_t count = any_length(addr);
    if (in_.flag()) {
      const Permissions access = access_kind();
      const bool want = model_.reach(addr, count, access) == count;
      GUESTMEM_FUZZ_CHECK(mem_->check_range(GuestAddress{addr}, count, access) == want,
                          "check_range(%#llx, %llu, access): model %d",
                          static_cast<unsigned long long>(addr),
                          static_cast<unsigned long long>(count), want ? 1 : 0);
    } else {
      const bool want = model_.reach(addr, count, Permissions::No) == count;
      GUESTMEM_FUZZ_CHECK(mem_->check_range(GuestAddress{addr}, count) == want,
                          "check_range(%#llx, %llu): model %d",
                          static_cast<unsigned long long>(addr),
                          static_cast<unsigned long long>(count), want ? 1 : 0);
    }
  }

  void lookups() {
    const std::uint64_t addr = address();
    const ModelRegion* r = model_.find(addr);
    const auto* region = mem_->find_region(GuestAddress{addr});
    GUESTMEM_FUZZ_CHECK((region == nullptr) == (r == nullptr), "find_region(%#llx)",
                        static_cast<unsigned long long>(addr));
    GUESTMEM_FUZZ_CHECK(mem_->address_in_range(GuestAddress{addr}) == (r != nullptr),
                        "address_in_range");
    auto to_region = mem_->to_region_addr(GuestAddress{addr});
    auto host = mem_->get_host_address(GuestAddress{addr});
    if (r == nullptr) {
      GUESTMEM_FUZZ_CHECK(!to_region && !mem_->check_address(GuestAddress{addr}), "lookup hit");
      GUESTMEM_FUZZ_CHECK(!host, "get_host_address outside memory succeeded");
      check_error(host.error(), {ErrorCode::InvalidGuestAddress, addr, 0, 0}, "get_host_address");
    } else {
      GUESTMEM_FUZZ_CHECK(region->start_addr().raw_value() == r->start && region->len() == r->len,
                          "find_region(%#llx) found the wrong region",
                          static_cast<unsigned long long>(addr));
      GUESTMEM_FUZZ_CHECK(to_region && to_region->first == region &&
                              to_region->second.raw_value() == addr - r->start,
                          "to_region_addr");
      GUESTMEM_FUZZ_CHECK(host && *host == host_of(*r) + (addr - r->start), "get_host_address");
    }
    const std::uint64_t offset = any_length(addr);
    auto checked = mem_->checked_offset(GuestAddress{addr}, offset);
    const bool fits = offset <= kTop - addr && model_.find(addr + offset) != nullptr;
    GUESTMEM_FUZZ_CHECK(checked.has_value() == fits &&
                            (!fits || checked->raw_value() == addr + offset),
                        "checked_offset(%#llx, %llu)", static_cast<unsigned long long>(addr),
                        static_cast<unsigned long long>(offset));
    GUESTMEM_FUZZ_CHECK(mem_->last_addr().raw_value() ==
                            model_.regions.back().start + model_.regions.back().len - 1,
                        "last_addr");
  }

  // reader/writer: one piece only.
  void reader_writer() {
    const std::uint64_t addr = address();
    const std::uint64_t count = any_length(addr);
    const bool write = in_.flag();
    const Permissions access = write ? Permissions::Write : Permissions::Read;
    std::optional<FirstError> err;
    if (count > 0) {
      err = model_.first_error(addr, count, access);
      if (!err) {
        const ModelRegion* r = model_.find(addr);
        if (r->len - (addr - r->start) < count) {
          err = FirstError{ErrorCode::InvalidBackendAddress, addr, 0, 0};
        }
      }
    }
    std::size_t size = 0;
    const std::uint8_t* ptr = nullptr;
    if (write) {
      auto got = mem_->writer(GuestAddress{addr}, count);
      if (err) {
        GUESTMEM_FUZZ_CHECK(!got, "writer succeeded; model: error");
        check_error(got.error(), *err, "writer");
        return;
      }
      GUESTMEM_FUZZ_CHECK(got.has_value(), "writer failed");
      size = got->avail();
      ptr = got->cursor();
      // Write through it, so that its bitmap slice is checked too.
      std::vector<std::byte> data = guestmem::fuzz::pattern(in_.u64(), std::min<std::size_t>(size, 64));
      auto src = guestmem::VmReader<guestmem::Infallible>::from_bytes(data);
      auto moved = got->write_fallible(src);
      GUESTMEM_FUZZ_CHECK(moved && *moved == data.size(), "writer: write_fallible");
      model_.write(addr, std::span(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
      verify_bytes(addr, data.size());
    } else {
      auto got = mem_->reader(GuestAddress{addr}, count);
      if (err) {
        GUESTMEM_FUZZ_CHECK(!got, "reader succeeded; model: error");
        check_error(got.error(), *err, "reader");
        return;
      }
      GUESTMEM_FUZZ_CHECK(got.has_value(), "reader failed");
      size = got->remain();
      ptr = got->cursor();
    }
    GUESTMEM_FUZZ_CHECK(size == count, "reader/writer size");
    if (count > 0) {
      const ModelRegion* r = model_.find(addr);
      GUESTMEM_FUZZ_CHECK(ptr == host_of(*r) + (addr - r->start), "reader/writer host pointer");
    }
  }

  // read_volatile_from / read_exact_volatile_from with a memfd holding `k` bytes.
  void from_memfd() {
    const int fd = files().memfd;
    const std::uint64_t addr = address();
    const std::uint64_t count = any_length(addr);
    const std::size_t k = in_.below(kMaxBuffer + 1);
    const std::vector<std::byte> content = guestmem::fuzz::pattern(in_.u64(), k);
    GUESTMEM_FUZZ_CHECK(::ftruncate(fd, 0) == 0 && ::pwrite(fd, content.data(), k, 0) ==
                                                       static_cast<ssize_t>(k) &&
                            ::lseek(fd, 0, SEEK_SET) == 0,
                        "memfd set-up");
    const bool exact = in_.flag();
    BorrowedFd src{fd};
    const auto first = count == 0 ? std::nullopt : model_.first_error(addr, count, Permissions::Write);
    const std::uint64_t reach = model_.reach(addr, count, Permissions::Write);
    const std::uint64_t n = std::min<std::uint64_t>(reach, k);
    if (!first) {
      model_.write(addr, std::span(reinterpret_cast<const std::uint8_t*>(content.data()), n));
    }
    if (exact) {
      auto got = mem_->read_exact_volatile_from(GuestAddress{addr}, src, count);
      check_all_or_nothing(got, first, count, n, "read_exact_volatile_from");
    } else {
      auto got = mem_->read_volatile_from(GuestAddress{addr}, src, count);
      if (first) {
        GUESTMEM_FUZZ_CHECK(!got, "read_volatile_from succeeded; model: error");
        check_error(got.error(), *first, "read_volatile_from");
      } else {
        GUESTMEM_FUZZ_CHECK(got && *got == n, "read_volatile_from(%#llx, %llu) of %zu bytes: "
                            "got %llu, model %llu",
                            static_cast<unsigned long long>(addr),
                            static_cast<unsigned long long>(count), k,
                            got ? static_cast<unsigned long long>(*got) : ~0ULL,
                            static_cast<unsigned long long>(n));
      }
    }
    verify_bytes(addr, std::min<std::uint64_t>(count, kMaxBuffer));
  }

  // write_volatile_to / write_all_volatile_to into a memfd, read back with pread.
  void to_memfd() {
    const int fd = files().memfd;
    const std::uint64_t addr = address();
    // The file takes every byte offered, so the transfer is bounded to keep the file small.
    const std::uint64_t count = std::min<std::uint64_t>(any_length(addr), kMaxBuffer);
    GUESTMEM_FUZZ_CHECK(::ftruncate(fd, 0) == 0 && ::lseek(fd, 0, SEEK_SET) == 0, "memfd");
    const bool all = in_.flag();
    BorrowedFd dst{fd};
    const auto first = count == 0 ? std::nullopt : model_.first_error(addr, count, Permissions::Read);
    const std::uint64_t n = model_.reach(addr, count, Permissions::Read);
    if (all) {
      auto got = mem_->write_all_volatile_to(GuestAddress{addr}, dst, count);
      check_all_or_nothing(got, first, count, n, "write_all_volatile_to");
    } else {
      auto got = mem_->write_volatile_to(GuestAddress{addr}, dst, count);
      if (first) {
        GUESTMEM_FUZZ_CHECK(!got, "write_volatile_to succeeded; model: error");
        check_error(got.error(), *first, "write_volatile_to");
        return;
      }
      GUESTMEM_FUZZ_CHECK(got && *got == n, "write_volatile_to: model %llu",
                          static_cast<unsigned long long>(n));
    }
    if (first) {
      return;
    }
    std::vector<std::uint8_t> file(n + 1);
    GUESTMEM_FUZZ_CHECK(::pread(fd, file.data(), file.size(), 0) == static_cast<ssize_t>(n),
                        "write_volatile_to: the file holds a different number of bytes");
    std::vector<std::uint8_t> want(n + 1);
    model_.read(addr, std::span(want).first(n));
    GUESTMEM_FUZZ_CHECK(file == want, "write_volatile_to: the file's bytes differ");
  }

  // read_volatile_from a non-blocking pipe that holds more than the transfer asks for, so
  // that the source never runs dry.
  void from_pipe() {
    const std::uint64_t addr = address();
    const std::size_t count = in_.below(kPipeMax + 1);
    const std::size_t extra = in_.below(64);
    const std::vector<std::byte> content = guestmem::fuzz::pattern(in_.u64(), count + extra);
    GUESTMEM_FUZZ_CHECK(::write(files().pipe_write, content.data(), content.size()) ==
                            static_cast<ssize_t>(content.size()),
                        "pipe write");
    BorrowedFd src{files().pipe_read};
    const auto first = count == 0 ? std::nullopt : model_.first_error(addr, count, Permissions::Write);
    auto got = mem_->read_volatile_from(GuestAddress{addr}, src, count);
    drain_pipe();
    if (first) {
      GUESTMEM_FUZZ_CHECK(!got, "read_volatile_from(pipe) succeeded; model: error");
      check_error(got.error(), *first, "read_volatile_from(pipe)");
      return;
    }
    const std::uint64_t n = model_.write(
        addr, std::span(reinterpret_cast<const std::uint8_t*>(content.data()), count));
    GUESTMEM_FUZZ_CHECK(got && *got == n, "read_volatile_from(pipe): model %llu",
                        static_cast<unsigned long long>(n));
    verify_bytes(addr, count);
  }

  void to_pipe() {
    const std::uint64_t addr = address();
    const std::size_t count = in_.below(kPipeMax + 1);
    BorrowedFd dst{files().pipe_write};
    const auto first = count == 0 ? std::nullopt : model_.first_error(addr, count, Permissions::Read);
    auto got = mem_->write_volatile_to(GuestAddress{addr}, dst, count);
    std::vector<std::uint8_t> out(kPipeMax + 1);
    const ssize_t r = ::read(files().pipe_read, out.data(), out.size());
    drain_pipe();
    if (first) {
      GUESTMEM_FUZZ_CHECK(!got, "write_volatile_to(pipe) succeeded; model: error");
      check_error(got.error(), *first, "write_volatile_to(pipe)");
      return;
    }
    const std::uint64_t n = model_.reach(addr, count, Permissions::Read);
    GUESTMEM_FUZZ_CHECK(got && *got == n && (n == 0 ? r <= 0 : r == static_cast<ssize_t>(n)),
                        "write_volatile_to(pipe): model %llu",
                        static_cast<unsigned long long>(n));
    std::vector<std::uint8_t> want(n);
    model_.read(addr, want);
    GUESTMEM_FUZZ_CHECK(std::equal(want.begin(), want.end(), out.begin()),
                        "write_volatile_to(pipe): bytes differ");
  }

  void verify_dirty() const {
    for (const ModelRegion& r : model_.regions) {
      const auto* region = mem_->find_region(GuestAddress{r.start});
      const std::vector<std::uint64_t> words = region->bitmap().to_words();
      for (std::size_t page = 0; page < r.dirty.size(); ++page) {
        const bool bit = ((words[page / 64] >> (page % 64)) & 1U) != 0;
        GUESTMEM_FUZZ_CHECK(bit == r.dirty[page],
                            "region %#llx page %zu: dirty bit %d, model %d",
                            static_cast<unsigned long long>(r.start), page, bit ? 1 : 0,
                            r.dirty[page] ? 1 : 0);
      }
    }
  }

  Input& in_;
  Model model_;
  std::optional<Memory> mem_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  Session session(in);
  session.run();
  return 0;
}
