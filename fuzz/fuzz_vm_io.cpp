// fuzz_vm_io: VmReader/VmWriter cursors over memory with holes, against a model of where
// every copy must stop.
//
// At start-up the target maps one area of twelve pages: eight anonymous pages followed by
// four pages of a memfd (MAP_SHARED). Each input first decides, page by page, what the area
// looks like (read-write, read-only or PROT_NONE; the memfd truncated to 0..4 pages, so the
// pages past its end raise SIGBUS) and then runs a stream of cursor operations: readers and
// writers over ranges of the area or of host buffers, read_fallible in every allowed
// combination, read_val/read_once/write_val/write_once of several sizes, fill_zeros, skip,
// limit, and protection or file-size changes between operations.
//
// The model knows, byte by byte, whether the area can be read or written and which signal a
// failed access raises, so it predicts the exact count of every transfer, the fault address
// and signal, where the cursors end up, the bytes of memory afterwards and the dirty bits the
// writers report (an AtomicBitmap of 64-byte pages over the area).
//
// Run with the fault handler chained behind the sanitizer's (see fuzz/run.sh): a fault the
// library recovers never reaches the sanitizer, and any other fault is still a crash.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "fuzz_common.hpp"
#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fault.hpp"
#include "guestmem/vm_io.hpp"

namespace {

using guestmem::AtomicBitmap;
using guestmem::AtomicBitmapSlice;
using guestmem::Error;
using guestmem::ErrorCode;
using guestmem::Fallible;
using guestmem::Infallible;
using guestmem::VmReader;
using guestmem::VmWriter;
using guestmem::fuzz::Input;

constexpr std::size_t kPage = 4096;
constexpr std::size_t kAnonPages = 8;
constexpr std::size_t kFilePages = 4;
constexpr std::size_t kPages = kAnonPages + kFilePages;
constexpr std::size_t kSize = kPages * kPage;
constexpr std::size_t kHostSize = 3 * kPage;
// The writers' dirty bitmap tracks 64-byte pages, so that the model sees which bytes a
// writer reported and not only which 4 KiB pages.
constexpr std::size_t kGranule = 64;
constexpr std::size_t kGranules = kSize / kGranule;
constexpr int kMaxOps = 48;

// The mapping that every input reuses; only its contents, protections and the memfd's size
// change between inputs.
struct Area {
  std::uint8_t* base = nullptr;
  int memfd = -1;
};

Area make_area() {
  Area area;
  void* reserved = ::mmap(nullptr, kSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                          -1, 0);
  GUESTMEM_FUZZ_CHECK(reserved != MAP_FAILED, "mmap of the area failed");
  area.base = static_cast<std::uint8_t*>(reserved);
  // The area is ours (reserved just above), so MAP_FIXED replaces nothing of anyone else's.
  void* anon = ::mmap(area.base, kAnonPages * kPage, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  GUESTMEM_FUZZ_CHECK(anon == area.base, "mmap of the anonymous pages failed");
  area.memfd = ::memfd_create("fuzz_vm_io", MFD_CLOEXEC);
  GUESTMEM_FUZZ_CHECK(area.memfd >= 0, "memfd_create failed");
  GUESTMEM_FUZZ_CHECK(::ftruncate(area.memfd, kFilePages * kPage) == 0, "ftruncate failed");
  void* file = ::mmap(area.base + kAnonPages * kPage, kFilePages * kPage, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_FIXED, area.memfd, 0);
  GUESTMEM_FUZZ_CHECK(file == area.base + kAnonPages * kPage, "mmap of the memfd failed");
  return area;
}

Area& area() {
  static Area instance = make_area();
  return instance;
}

// What one page of the area allows.
enum class Prot : std::uint8_t { None, Read, ReadWrite };

int to_mmap_prot(Prot prot) {
  switch (prot) {
    case Prot::None:
      return PROT_NONE;
    case Prot::Read:
      return PROT_READ;
    case Prot::ReadWrite:
      return PROT_READ | PROT_WRITE;
  }
  return PROT_NONE;
}

// The expected failure of an access: which byte (index from the start of the access), which
// host address and which signal.
struct Failure {
  std::size_t index;
  std::uintptr_t address;
  int signal;
};

// The model: contents, per-page protection and file size, dirty granules.
class Model {
 public:
  std::array<std::uint8_t, kSize> bytes{};
  std::array<Prot, kPages> prot{};
  std::size_t file_pages = kFilePages;
  std::vector<bool> dirty = std::vector<bool>(kGranules);

  [[nodiscard]] bool past_eof(std::size_t page) const {
    return page >= kAnonPages && page - kAnonPages >= file_pages;
  }

  // The signal a read of `page` raises, or 0 when it can be read. The protection is checked
  // before the file: a PROT_NONE page past the end of the file raises SIGSEGV.
  [[nodiscard]] int read_signal(std::size_t page) const {
    if (prot[page] == Prot::None) {
      return SIGSEGV;
    }
    return past_eof(page) ? SIGBUS : 0;
  }
  [[nodiscard]] int write_signal(std::size_t page) const {
    if (prot[page] != Prot::ReadWrite) {
      return SIGSEGV;
    }
    return past_eof(page) ? SIGBUS : 0;
  }

  // The first byte of [offset, offset + count) of the area that cannot be accessed.
  [[nodiscard]] std::optional<Failure> first_failure(std::size_t offset, std::size_t count,
                                                     bool write) const {
    std::size_t at = offset;
    while (at < offset + count) {
      const std::size_t page = at / kPage;
      const int signal = write ? write_signal(page) : read_signal(page);
      if (signal != 0) {
        return Failure{at - offset, reinterpret_cast<std::uintptr_t>(area().base + at), signal};
      }
      at = (page + 1) * kPage;
    }
    return std::nullopt;
  }

  void mark(std::size_t offset, std::size_t count) {
    for (std::size_t g = offset / kGranule; count > 0 && g <= (offset + count - 1) / kGranule;
         ++g) {
      dirty[g] = true;
    }
  }
};

// A cursor over the area (fallible) or over a host buffer (infallible), with the model of
// its position.
struct AreaReader {
  VmReader<Fallible> reader;
  std::size_t pos;  // offset in the area of the cursor
  std::size_t end;
};
struct AreaWriter {
  VmWriter<Fallible, AtomicBitmapSlice> writer;
  std::size_t start;  // offset in the area of the writer's first byte
  std::size_t pos;
  std::size_t end;
};
struct HostReader {
  VmReader<Infallible> reader;
  std::size_t pos;
  std::size_t end;
};
struct HostWriter {
  VmWriter<Infallible> writer;
  std::size_t pos;
  std::size_t end;
};

void check_fault(const Error& e, const Failure& f, std::size_t expected, std::size_t completed) {
  GUESTMEM_FUZZ_CHECK(e.code() == ErrorCode::Fault, "expected Fault, got %d",
                      static_cast<int>(e.code()));
  GUESTMEM_FUZZ_CHECK(e.address() == f.address && e.signal() == f.signal &&
                          e.expected() == expected && e.completed() == completed,
                      "fault: address %#llx signal %d expected %llu completed %llu; model: "
                      "address %#llx signal %d expected %zu completed %zu",
                      static_cast<unsigned long long>(e.address()), e.signal(),
                      static_cast<unsigned long long>(e.expected()),
                      static_cast<unsigned long long>(e.completed()),
                      static_cast<unsigned long long>(f.address), f.signal, expected, completed);
}

void check_out_of_bounds(const Error& e, std::size_t size, std::size_t left) {
  GUESTMEM_FUZZ_CHECK(e.code() == ErrorCode::OutOfBounds && e.address() == 0 &&
                          e.length() == size && e.expected() == left,
                      "expected OutOfBounds(0, %zu, %zu), got code %d (%llu, %llu, %llu)", size,
                      left, static_cast<int>(e.code()),
                      static_cast<unsigned long long>(e.address()),
                      static_cast<unsigned long long>(e.length()),
                      static_cast<unsigned long long>(e.expected()));
}

void check_misaligned(const Error& e, const std::uint8_t* cursor, std::size_t size) {
  GUESTMEM_FUZZ_CHECK(e.code() == ErrorCode::Misaligned &&
                          e.address() == reinterpret_cast<std::uintptr_t>(cursor) &&
                          e.length() == size,
                      "expected Misaligned, got code %d", static_cast<int>(e.code()));
}

class Session {
 public:
  explicit Session(Input& in) : in_(in) {}

  void run() {
    setup();
    for (int op = 0; op < kMaxOps && !in_.empty(); ++op) {
      step();
    }
    verify();
  }

 private:
  void setup() {
    Area& a = area();
    // Every page read-write and the file whole again. Pages cut off the file come back
    // zeroed; the pattern below overwrites every byte anyway. Only what changed is redone:
    // the system calls are most of the cost of an input.
    for (std::size_t page = 0; page < kPages; ++page) {
      set_prot(page, Prot::ReadWrite);
    }
    if (current_file_pages_ != kFilePages) {
      GUESTMEM_FUZZ_CHECK(::ftruncate(a.memfd, kFilePages * kPage) == 0, "ftruncate");
      current_file_pages_ = kFilePages;
    }
    model_.file_pages = kFilePages;
    const std::uint64_t seed = in_.u64();
    guestmem::fuzz::fill_pattern(std::as_writable_bytes(std::span(model_.bytes)), seed);
    std::memcpy(a.base, model_.bytes.data(), kSize);
    guestmem::fuzz::fill_pattern(std::as_writable_bytes(std::span(host_src_)), ~seed);
    host_dst_.fill(0);
    model_host_dst_.fill(0);
    bitmap_.reset();
    for (std::size_t page = 0; page < kPages; ++page) {
      set_prot(page, static_cast<Prot>(in_.below(3)));
    }
    set_file_pages(in_.below(kFilePages + 1));
  }

  void set_prot(std::size_t page, Prot prot) {
    model_.prot[page] = prot;
    if (current_prot_[page] != prot) {
      GUESTMEM_FUZZ_CHECK(::mprotect(area().base + page * kPage, kPage, to_mmap_prot(prot)) == 0,
                          "mprotect");
      current_prot_[page] = prot;
    }
  }

  // Truncates (or grows) the memfd to `pages` pages. Pages cut off lose their contents: if
  // the file grows again they come back zeroed.
  void set_file_pages(std::size_t pages) {
    if (current_file_pages_ != pages) {
      GUESTMEM_FUZZ_CHECK(::ftruncate(area().memfd, static_cast<off_t>(pages * kPage)) == 0,
                          "ftruncate");
      current_file_pages_ = pages;
    }
    model_.file_pages = pages;
    std::fill(model_.bytes.begin() + static_cast<std::ptrdiff_t>((kAnonPages + pages) * kPage),
              model_.bytes.end(), 0);
  }

  // An offset in [0, limit], often near a page boundary.
  std::size_t offset_in(std::size_t limit) {
    if (in_.flag()) {
      const std::size_t page = in_.below(limit / kPage + 1) * kPage;
      const std::int64_t d = in_.delta(16);
      const std::int64_t at = static_cast<std::int64_t>(page) + d;
      return static_cast<std::size_t>(std::clamp<std::int64_t>(at, 0, static_cast<std::int64_t>(limit)));
    }
    return in_.below(limit + 1);
  }
  std::size_t length_in(std::size_t limit) {
    switch (in_.below(4)) {
      case 0:
        return std::min<std::size_t>(in_.below(17), limit);
      case 1:
        return limit;
      default:
        return in_.below(limit + 1);
    }
  }

  void step() {
    switch (in_.below(16)) {
      case 0: {
        const std::size_t off = offset_in(kSize);
        const std::size_t len = length_in(kSize - off);
        area_reader_ = AreaReader{VmReader<Fallible>::from_raw_parts(area().base + off, len), off,
                                  off + len};
        break;
      }
      case 1: {
        const std::size_t off = offset_in(kSize);
        const std::size_t len = length_in(kSize - off);
        area_writer_ = AreaWriter{VmWriter<Fallible, AtomicBitmapSlice>::from_raw_parts(
                                      area().base + off, len, bitmap_.slice_at(off)),
                                  off, off, off + len};
        break;
      }
      case 2: {
        const std::size_t off = offset_in(kHostSize);
        const std::size_t len = length_in(kHostSize - off);
        host_reader_ = HostReader{
            VmReader<Infallible>::from_bytes(std::as_bytes(std::span(host_src_)).subspan(off, len)),
            off, off + len};
        break;
      }
      case 3: {
        const std::size_t off = offset_in(kHostSize);
        const std::size_t len = length_in(kHostSize - off);
        host_writer_ = HostWriter{VmWriter<Infallible>::from_bytes(
                                      std::as_writable_bytes(std::span(host_dst_)).subspan(off, len)),
                                  off, off + len};
        break;
      }
      case 4:
        copy();
        break;
      case 5:
        read_val();
        break;
      case 6:
        read_once();
        break;
      case 7:
        write_val();
        break;
      case 8:
        write_once();
        break;
      case 9:
        fill_zeros();
        break;
      case 10:
        skip_or_limit();
        break;
      case 11:
        set_prot(in_.below(kPages), static_cast<Prot>(in_.below(3)));
        break;
      case 12:
        set_file_pages(in_.below(kFilePages + 1));
        break;
      case 13:
        host_to_host();
        break;
      case 14:
        host_fill_zeros();
        break;
      default:
        check_cursors();
        break;
    }
  }

  void check_cursors() const {
    if (area_reader_) {
      GUESTMEM_FUZZ_CHECK(area_reader_->reader.cursor() == area().base + area_reader_->pos &&
                              area_reader_->reader.remain() == area_reader_->end - area_reader_->pos,
                          "area reader cursor");
    }
    if (area_writer_) {
      GUESTMEM_FUZZ_CHECK(area_writer_->writer.cursor() == area().base + area_writer_->pos &&
                              area_writer_->writer.avail() == area_writer_->end - area_writer_->pos,
                          "area writer cursor");
    }
    if (host_reader_) {
      GUESTMEM_FUZZ_CHECK(host_reader_->reader.remain() == host_reader_->end - host_reader_->pos,
                          "host reader cursor");
    }
    if (host_writer_) {
      GUESTMEM_FUZZ_CHECK(host_writer_->writer.avail() == host_writer_->end - host_writer_->pos,
                          "host writer cursor");
    }
  }

  // Applies a successful prefix of `done` bytes of a copy into the area writer's model.
  void model_area_write(std::size_t at, const std::uint8_t* src, std::size_t done) {
    if (done == 0) {
      return;
    }
    std::memcpy(model_.bytes.data() + at, src, done);
    model_.mark(at, done);
  }

  // read_fallible in each combination that has a fallible side.
  void copy() {
    const unsigned kind = static_cast<unsigned>(in_.below(3));
    if (kind == 0 && area_reader_ && area_writer_) {
      AreaReader& r = *area_reader_;
      AreaWriter& w = *area_writer_;
      const std::size_t count = std::min(r.end - r.pos, w.end - w.pos);
      // Overlapping ranges leave the overlap unspecified (fallible_copy's precondition).
      if (r.pos < w.pos + count && w.pos < r.pos + count) {
        return;
      }
      const auto src_fail = model_.first_failure(r.pos, count, false);
      const auto dst_fail = model_.first_failure(w.pos, count, true);
      // Byte by byte the load comes before the store, so at the same index the source wins.
      std::optional<Failure> fail;
      if (src_fail && (!dst_fail || src_fail->index <= dst_fail->index)) {
        fail = src_fail;
      } else {
        fail = dst_fail;
      }
      const std::size_t done = fail ? fail->index : count;
      std::vector<std::uint8_t> src(model_.bytes.begin() + static_cast<std::ptrdiff_t>(r.pos),
                                    model_.bytes.begin() + static_cast<std::ptrdiff_t>(r.pos + done));
      auto got = r.reader.read_fallible(w.writer);
      finish_copy(got, fail, count, done);
      model_area_write(w.pos, src.data(), done);
      r.pos += done;
      w.pos += done;
    } else if (kind == 1 && area_reader_ && host_writer_) {
      AreaReader& r = *area_reader_;
      HostWriter& w = *host_writer_;
      const std::size_t count = std::min(r.end - r.pos, w.end - w.pos);
      const auto fail = model_.first_failure(r.pos, count, false);
      const std::size_t done = fail ? fail->index : count;
      auto got = r.reader.read_fallible(w.writer);
      finish_copy(got, fail, count, done);
      if (done > 0) {
        std::memcpy(model_host_dst_.data() + w.pos, model_.bytes.data() + r.pos, done);
      }
      r.pos += done;
      w.pos += done;
    } else if (kind == 2 && host_reader_ && area_writer_) {
      HostReader& r = *host_reader_;
      AreaWriter& w = *area_writer_;
      const std::size_t count = std::min(r.end - r.pos, w.end - w.pos);
      const auto fail = model_.first_failure(w.pos, count, true);
      const std::size_t done = fail ? fail->index : count;
      auto got = w.writer.write_fallible(r.reader);
      finish_copy(got, fail, count, done);
      model_area_write(w.pos, host_src_.data() + r.pos, done);
      r.pos += done;
      w.pos += done;
    }
    check_cursors();
  }

  static void finish_copy(const guestmem::Result<std::size_t>& got,
                          const std::optional<Failure>& fail, std::size_t count, std::size_t done) {
    if (fail) {
      GUESTMEM_FUZZ_CHECK(!got, "copy of %zu bytes succeeded with %zu; model: fault after %zu",
                          count, got ? *got : 0, done);
      check_fault(got.error(), *fail, count, done);
    } else {
      GUESTMEM_FUZZ_CHECK(got && *got == count, "copy of %zu bytes: got %s %llu", count,
                          got ? "ok" : "error",
                          got ? static_cast<unsigned long long>(*got)
                              : static_cast<unsigned long long>(got.error().code()));
    }
  }

  template <class T>
  void read_val_as() {
    AreaReader& r = *area_reader_;
    const std::size_t left = r.end - r.pos;
    auto got = r.reader.template read_val<T>();
    if (left < sizeof(T)) {
      GUESTMEM_FUZZ_CHECK(!got, "read_val past the end succeeded");
      check_out_of_bounds(got.error(), sizeof(T), left);
      return;
    }
    const auto fail = model_.first_failure(r.pos, sizeof(T), false);
    if (fail) {
      GUESTMEM_FUZZ_CHECK(!got, "read_val over a fault succeeded");
      check_fault(got.error(), *fail, sizeof(T), fail->index);
      return;
    }
    GUESTMEM_FUZZ_CHECK(got && std::memcmp(&*got, model_.bytes.data() + r.pos, sizeof(T)) == 0,
                        "read_val of %zu bytes at %zu: wrong value or error", sizeof(T), r.pos);
    r.pos += sizeof(T);
  }

  void read_val() {
    if (!area_reader_) {
      return;
    }
    switch (in_.below(6)) {
      case 0:
        read_val_as<std::uint8_t>();
        break;
      case 1:
        read_val_as<std::uint16_t>();
        break;
      case 2:
        read_val_as<std::uint32_t>();
        break;
      case 3:
        read_val_as<std::uint64_t>();
        break;
      case 4:
        read_val_as<std::array<std::uint8_t, 3>>();
        break;
      default:
        read_val_as<std::array<std::uint8_t, 24>>();
        break;
    }
    check_cursors();
  }

  template <class T>
  void read_once_as() {
    AreaReader& r = *area_reader_;
    const std::size_t left = r.end - r.pos;
    auto got = r.reader.template read_once<T>();
    if (left < sizeof(T)) {
      GUESTMEM_FUZZ_CHECK(!got, "read_once past the end succeeded");
      check_out_of_bounds(got.error(), sizeof(T), left);
      return;
    }
    if (r.pos % sizeof(T) != 0) {
      GUESTMEM_FUZZ_CHECK(!got, "misaligned read_once succeeded");
      check_misaligned(got.error(), area().base + r.pos, sizeof(T));
      return;
    }
    const auto fail = model_.first_failure(r.pos, sizeof(T), false);
    if (fail) {
      GUESTMEM_FUZZ_CHECK(!got, "read_once over a fault succeeded");
      // An aligned access lies in one page, so it faults at its first byte.
      check_fault(got.error(), *fail, sizeof(T), 0);
      GUESTMEM_FUZZ_CHECK(fail->index == 0, "aligned access faulting inside");
      return;
    }
    GUESTMEM_FUZZ_CHECK(got && std::memcmp(&*got, model_.bytes.data() + r.pos, sizeof(T)) == 0,
                        "read_once of %zu bytes at %zu: wrong value or error", sizeof(T), r.pos);
    r.pos += sizeof(T);
  }

  void read_once() {
    if (!area_reader_) {
      return;
    }
    switch (in_.below(4)) {
      case 0:
        read_once_as<std::uint8_t>();
        break;
      case 1:
        read_once_as<std::uint16_t>();
        break;
      case 2:
        read_once_as<std::uint32_t>();
        break;
      default:
        read_once_as<std::uint64_t>();
        break;
    }
    check_cursors();
  }

  template <class T>
  void write_val_as() {
    AreaWriter& w = *area_writer_;
    T value;
    guestmem::fuzz::fill_pattern(std::as_writable_bytes(std::span(&value, 1)), in_.u64());
    const std::size_t left = w.end - w.pos;
    auto got = w.writer.write_val(value);
    if (left < sizeof(T)) {
      GUESTMEM_FUZZ_CHECK(!got, "write_val past the end succeeded");
      check_out_of_bounds(got.error(), sizeof(T), left);
      return;
    }
    const auto fail = model_.first_failure(w.pos, sizeof(T), true);
    const auto* src = reinterpret_cast<const std::uint8_t*>(&value);
    if (fail) {
      GUESTMEM_FUZZ_CHECK(!got, "write_val over a fault succeeded");
      check_fault(got.error(), *fail, sizeof(T), fail->index);
      // The bytes before the fault stay written and reported; the cursor stays.
      model_area_write(w.pos, src, fail->index);
      return;
    }
    GUESTMEM_FUZZ_CHECK(got.has_value(), "write_val failed with %d",
                        static_cast<int>(got.error().code()));
    model_area_write(w.pos, src, sizeof(T));
    w.pos += sizeof(T);
  }

  void write_val() {
    if (!area_writer_) {
      return;
    }
    switch (in_.below(6)) {
      case 0:
        write_val_as<std::uint8_t>();
        break;
      case 1:
        write_val_as<std::uint16_t>();
        break;
      case 2:
        write_val_as<std::uint32_t>();
        break;
      case 3:
        write_val_as<std::uint64_t>();
        break;
      case 4:
        write_val_as<std::array<std::uint8_t, 3>>();
        break;
      default:
        write_val_as<std::array<std::uint8_t, 24>>();
        break;
    }
    check_cursors();
  }

  template <class T>
  void write_once_as() {
    AreaWriter& w = *area_writer_;
    const T value = static_cast<T>(in_.u64());
    const std::size_t left = w.end - w.pos;
    auto got = w.writer.write_once(value);
    if (left < sizeof(T)) {
      GUESTMEM_FUZZ_CHECK(!got, "write_once past the end succeeded");
      check_out_of_bounds(got.error(), sizeof(T), left);
      return;
    }
    if (w.pos % sizeof(T) != 0) {
      GUESTMEM_FUZZ_CHECK(!got, "misaligned write_once succeeded");
      check_misaligned(got.error(), area().base + w.pos, sizeof(T));
      return;
    }
    const auto fail = model_.first_failure(w.pos, sizeof(T), true);
    if (fail) {
      GUESTMEM_FUZZ_CHECK(!got, "write_once over a fault succeeded");
      // Nothing was stored, and nothing is reported.
      check_fault(got.error(), *fail, sizeof(T), 0);
      return;
    }
    GUESTMEM_FUZZ_CHECK(got.has_value(), "write_once failed");
    model_area_write(w.pos, reinterpret_cast<const std::uint8_t*>(&value), sizeof(T));
    w.pos += sizeof(T);
  }

  void write_once() {
    if (!area_writer_) {
      return;
    }
    switch (in_.below(4)) {
      case 0:
        write_once_as<std::uint8_t>();
        break;
      case 1:
        write_once_as<std::uint16_t>();
        break;
      case 2:
        write_once_as<std::uint32_t>();
        break;
      default:
        write_once_as<std::uint64_t>();
        break;
    }
    check_cursors();
  }

  void fill_zeros() {
    if (!area_writer_) {
      return;
    }
    AreaWriter& w = *area_writer_;
    const std::size_t count = in_.flag() ? in_.u64() : in_.below(kSize + 1);
    const std::size_t n = std::min(count, w.end - w.pos);
    const auto fail = model_.first_failure(w.pos, n, true);
    const std::size_t done = fail ? fail->index : n;
    auto got = w.writer.fill_zeros(count);
    finish_copy(got, fail, n, done);
    std::memset(model_.bytes.data() + w.pos, 0, done);
    model_.mark(w.pos, done);
    w.pos += done;
    check_cursors();
  }

  void skip_or_limit() {
    const unsigned which = static_cast<unsigned>(in_.below(4));
    const std::uint64_t raw = in_.u64();
    if (which == 0 && area_reader_) {
      const std::size_t n = raw % (area_reader_->end - area_reader_->pos + 1);
      area_reader_->reader.skip(n);
      area_reader_->pos += n;
    } else if (which == 1 && area_writer_) {
      const std::size_t n = raw % (area_writer_->end - area_writer_->pos + 1);
      area_writer_->writer.skip(n);
      area_writer_->pos += n;
    } else if (which == 2 && area_reader_) {
      // Any limit, including ones past the end (no change then).
      const std::size_t max = in_.flag() ? raw : raw % (kSize + 1);
      area_reader_->reader.limit(max);
      area_reader_->end = area_reader_->pos + std::min(max, area_reader_->end - area_reader_->pos);
    } else if (which == 3 && area_writer_) {
      const std::size_t max = in_.flag() ? raw : raw % (kSize + 1);
      area_writer_->writer.limit(max);
      area_writer_->end = area_writer_->pos + std::min(max, area_writer_->end - area_writer_->pos);
    }
    check_cursors();
  }

  void host_to_host() {
    if (!host_reader_ || !host_writer_) {
      return;
    }
    HostReader& r = *host_reader_;
    HostWriter& w = *host_writer_;
    const std::size_t count = std::min(r.end - r.pos, w.end - w.pos);
    const std::size_t got = r.reader.read(w.writer);
    GUESTMEM_FUZZ_CHECK(got == count, "infallible read moved %zu of %zu", got, count);
    if (count > 0) {
      std::memcpy(model_host_dst_.data() + w.pos, host_src_.data() + r.pos, count);
    }
    r.pos += count;
    w.pos += count;
    check_cursors();
  }

  void host_fill_zeros() {
    if (!host_writer_) {
      return;
    }
    HostWriter& w = *host_writer_;
    const std::size_t count = in_.flag() ? in_.u64() : in_.below(kHostSize + 1);
    const std::size_t n = std::min(count, w.end - w.pos);
    GUESTMEM_FUZZ_CHECK(w.writer.fill_zeros(count) == n, "infallible fill_zeros count");
    std::memset(model_host_dst_.data() + w.pos, 0, n);
    w.pos += n;
    check_cursors();
  }

  void verify() const {
    const Area& a = area();
    for (std::size_t page = 0; page < kPages; ++page) {
      if (model_.read_signal(page) != 0) {
        continue;  // cannot be read back directly; the next input resets it
      }
      GUESTMEM_FUZZ_CHECK(std::memcmp(a.base + page * kPage, model_.bytes.data() + page * kPage,
                                      kPage) == 0,
                          "contents of page %zu differ from the model", page);
    }
    GUESTMEM_FUZZ_CHECK(host_dst_ == model_host_dst_, "host buffer differs from the model");
    const std::vector<std::uint64_t> words = bitmap_.to_words();
    for (std::size_t g = 0; g < kGranules; ++g) {
      const bool bit = ((words[g / 64] >> (g % 64)) & 1U) != 0;
      GUESTMEM_FUZZ_CHECK(bit == model_.dirty[g], "dirty bit of bytes [%zu, %zu): %d, model %d",
                          g * kGranule, (g + 1) * kGranule, bit ? 1 : 0,
                          model_.dirty[g] ? 1 : 0);
    }
  }

  Input& in_;
  Model model_;
  static inline AtomicBitmap bitmap_{kSize, kGranule};
  static inline std::array<std::uint8_t, kHostSize> host_src_{};
  static inline std::array<std::uint8_t, kHostSize> host_dst_{};
  // The area's real state, kept across inputs (it starts read-write and whole).
  static inline std::array<Prot, kPages> current_prot_ = [] {
    std::array<Prot, kPages> all;
    all.fill(Prot::ReadWrite);
    return all;
  }();
  static inline std::size_t current_file_pages_ = kFilePages;
  std::array<std::uint8_t, kHostSize> model_host_dst_{};
  std::optional<AreaReader> area_reader_;
  std::optional<AreaWriter> area_writer_;
  std::optional<HostReader> host_reader_;
  std::optional<HostWriter> host_writer_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // Installed after the sanitizer's handler, which it chains to for faults it does not own.
  GUESTMEM_FUZZ_CHECK(guestmem::install_fault_handler().has_value(),
                      "fault recovery is not available");
  (void)area();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  Session session(in);
  session.run();
  return 0;
}
