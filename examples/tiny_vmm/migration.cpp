#include "migration.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include <xxhash.h>

// Live rounds read pages the guest may be writing at that moment: that race is the design
// (such a page is dirty again and sent again), so ThreadSanitizer is told to ignore the
// sender's reads of guest memory.
#if defined(__SANITIZE_THREAD__)
#define TINY_VMM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TINY_VMM_TSAN 1
#endif
#endif
#if defined(TINY_VMM_TSAN)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
#endif

namespace tiny_vmm {
namespace {

using guestmem::GuestAddress;
using guestmem::Le32;
using guestmem::Le64;
using Clock = std::chrono::steady_clock;

constexpr std::array<char, 8> kMagic{'T', 'V', 'M', 'M', 'I', 'G', 'R', '\0'};
constexpr std::uint32_t kMaxRegions = 16;
constexpr std::uint64_t kMaxRegionSize = std::uint64_t{1} << 30;
constexpr std::uint64_t kMaxState = 1 << 16;
constexpr char kAck = 'R';

enum class RecordType : std::uint32_t { Pages = 1, State = 2, End = 3 };

struct StreamHeader {
  std::array<char, 8> magic;
  Le32 version;
  Le32 kind;
  Le32 page_size;
  Le32 regions;
};
struct RegionEntry {
  Le64 base;
  Le64 size;
};
struct Record {
  Le32 type;
  Le32 reserved;
  Le64 a;
  Le64 b;
};
static_assert(guestmem::ByteValued<StreamHeader> && guestmem::ByteValued<RegionEntry> &&
              guestmem::ByteValued<Record> && sizeof(Record) == 24);

template <class T>
std::span<const std::byte> bytes_of(const T& value) {
  return std::as_bytes(std::span(&value, 1));
}
template <class T>
std::span<std::byte> writable_bytes_of(T& value) {
  return std::as_writable_bytes(std::span(&value, 1));
}

class Xxh3 {
 public:
  Xxh3() : state_(XXH3_createState()) { XXH3_64bits_reset(state_); }
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  ~Xxh3() { XXH3_freeState(state_); }
  void update(std::span<const std::byte> bytes) {
    XXH3_64bits_update(state_, bytes.data(), bytes.size());
  }
  [[nodiscard]] std::uint64_t digest() const { return XXH3_64bits_digest(state_); }

 private:
  XXH3_state_t* state_;
};

// The sending end. Framing bytes are hashed as they are produced; page records are gathered:
// record headers (host memory) and the guest pages they describe go out together in one
// writev per batch of records, so a round of scattered pages costs one system call per
// batch, not two per page, and no page is copied in user space.
class StreamOut {
 public:
  using Slice = guestmem::VolatileSlice<>;
  // Records gathered into one writev at most (the iovecs stay below IOV_MAX: a run of pages
  // inside one region is one iovec, and a run never spans regions).
  static constexpr std::size_t kBatch = 256;

  StreamOut(int fd, std::uint64_t cut_after) : fd_(fd), cut_after_(cut_after) {
    headers_.reserve(kBatch);
    iov_.reserve(2 * kBatch);
  }

  Status<void> frame(std::span<const std::byte> bytes) {
    if (auto f = flush(); !f) {
      return f;
    }
    hash_.update(bytes);
    std::vector<std::byte> copy(bytes.begin(), bytes.end());
    const std::vector<Slice> one{Slice::from_bytes(copy)};
    return write_all(one);
  }

  // Adds a Pages record for the `len` bytes of guest memory at `addr` to the batch.
  Status<void> add_pages(const Memory& mem, GuestAddress addr, std::uint64_t len) {
    if (headers_.size() == kBatch) {
      if (auto f = flush(); !f) {
        return f;
      }
    }
    headers_.push_back(Record{Le32(static_cast<std::uint32_t>(RecordType::Pages)), Le32(0),
                              Le64(addr.raw_value()), Le64(len)});
    hash_.update(bytes_of(headers_.back()));
    iov_.push_back(Slice::from_bytes(writable_bytes_of(headers_.back())));
    auto pieces = mem.get_slices(addr, static_cast<std::size_t>(len));
    while (auto piece = pieces.next()) {
      if (!*piece) {
        return std::unexpected(describe("sending pages", piece->error()));
      }
      // SAFETY: the piece is a live view of guest memory that `mem` (kept alive by the
      // caller's guard) maps; the untracked view covers the same bytes and is used only by
      // the writev of this batch, before the caller lets go of `mem`.
      iov_.push_back(Slice::from_raw_parts((*piece)->unsafe_host_ptr(), (*piece)->size()));
    }
    return {};
  }

  // Sends the gathered records.
  Status<void> flush() {
    if (iov_.empty()) {
      return {};
    }
#if defined(TINY_VMM_TSAN)
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
#endif
    auto r = write_all(iov_);
#if defined(TINY_VMM_TSAN)
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
    iov_.clear();
    headers_.clear();
    return r;
  }

  [[nodiscard]] std::uint64_t sent() const noexcept { return sent_; }
  [[nodiscard]] std::uint64_t digest() const { return hash_.digest(); }

 private:
  // Writes every byte of `slices` (writev, continuing after short writes), or as many as the
  // cut hook allows and then fails.
  Status<void> write_all(std::span<const Slice> slices) {
    std::vector<Slice> rest(slices.begin(), slices.end());
    std::size_t first = 0;
    while (first < rest.size()) {
      std::uint64_t total = 0;
      for (std::size_t i = first; i < rest.size(); ++i) {
        total += rest[i].size();
      }
      const std::uint64_t room = sent_ >= cut_after_ ? 0 : cut_after_ - sent_;
      if (room == 0) {
        ::shutdown(fd_, SHUT_RDWR);
        return std::unexpected("the migration stream was cut after " + std::to_string(sent_) +
                               " bytes (--cut-stream-after)");
      }
      std::size_t last = rest.size();
      Slice saved = rest[last - 1];
      if (room < total) {
        // Only the first `room` bytes: end the list inside the slice that holds byte `room`.
        std::uint64_t upto = 0;
        for (last = first; upto + rest[last].size() < room; ++last) {
          upto += rest[last].size();
        }
        saved = rest[last];
        rest[last] = *saved.subslice(0, static_cast<std::size_t>(room - upto));
        ++last;
      }
      guestmem::BorrowedFd socket{fd_};
      auto n = socket.write_volatile_vectored(std::span(rest).subspan(first, last - first));
      if (room < total) {
        rest[last - 1] = saved;
      }
      if (!n) {
        return std::unexpected(describe("sending the migration stream", n.error()));
      }
      sent_ += *n;
      // Drop the slices written in full, trim the one written in part.
      std::size_t done = *n;
      while (first < rest.size() && done >= rest[first].size()) {
        done -= rest[first].size();
        ++first;
      }
      if (done > 0) {
        rest[first] = *rest[first].offset(done);
      }
    }
    return {};
  }

  int fd_;
  std::uint64_t cut_after_;
  std::uint64_t sent_ = 0;
  Xxh3 hash_;
  std::vector<Record> headers_;
  std::vector<Slice> iov_;
};

std::uint64_t count_pages(const std::vector<std::vector<std::uint64_t>>& words) {
  std::uint64_t n = 0;
  for (const auto& region : words) {
    for (std::uint64_t w : region) {
      n += static_cast<std::uint64_t>(std::popcount(w));
    }
  }
  return n;
}

// Sends the pages set in `words` as one Pages record per run of contiguous dirty pages,
// paced to `max_mbps`. Returns the pages sent.
Status<std::uint64_t> send_pages(const Memory& mem,
                                 const std::vector<std::vector<std::uint64_t>>& words,
                                 StreamOut& out, double max_mbps) {
  const auto start = Clock::now();
  const std::uint64_t first_byte = out.sent();
  std::uint64_t pages = 0;
  std::size_t r = 0;
  for (const auto& region : mem.regions()) {
    const std::vector<std::uint64_t>& bits = words[r++];
    const std::uint64_t num_pages = region.len() / kPageSize;
    auto dirty = [&](std::uint64_t p) { return ((bits[p / 64] >> (p % 64)) & 1U) != 0; };
    for (std::uint64_t p = 0; p < num_pages;) {
      if (bits[p / 64] == 0) {
        p = (p / 64 + 1) * 64;  // a clean word: 64 clean pages
        continue;
      }
      if (!dirty(p)) {
        ++p;
        continue;
      }
      std::uint64_t end = p + 1;
      while (end < num_pages && dirty(end)) {
        ++end;
      }
      if (auto a = out.add_pages(mem, region.start_addr().unchecked_add(p * kPageSize),
                                 (end - p) * kPageSize);
          !a) {
        return std::unexpected(a.error());
      }
      pages += end - p;
      p = end;
      if (max_mbps > 0) {
        // Pace: send what is gathered, then sleep until the bytes so far took as long as
        // max_mbps allows.
        if (auto f = out.flush(); !f) {
          return std::unexpected(f.error());
        }
        const double secs = double(out.sent() - first_byte) / (max_mbps * 1e6);
        std::this_thread::sleep_until(
            start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(secs)));
      }
    }
  }
  if (auto f = out.flush(); !f) {
    return std::unexpected(f.error());
  }
  return pages;
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

Status<std::uint64_t> send_page_records(const Memory& mem,
                                        const std::vector<std::vector<std::uint64_t>>& dirty,
                                        int fd) {
  StreamOut out(fd, std::numeric_limits<std::uint64_t>::max());
  return send_pages(mem, dirty, out, 0);
}

Status<MigrationReport> migrate_out(Machine& vm, int fd, const MigrationOptions& options,
                                    const std::function<void(const RoundReport&)>& on_round) {
  StreamOut out(fd, options.cut_after);
  MigrationReport report;
  std::vector<std::vector<std::uint64_t>> words;
  // Resetting the bitmaps first makes the first round's writes show in the second round.
  if (auto r = vm.take_dirty(words); !r) {
    (void)vm.pause();
    return std::unexpected(r.error());
  }
  auto guard = vm.space().memory();
  const Memory& mem = *guard;

  // The header.
  const auto table = region_table(mem);
  const StreamHeader header{kMagic, Le32(kMigrationVersion),
                            Le32(static_cast<std::uint32_t>(vm.kind())), Le32(kPageSize),
                            Le32(static_cast<std::uint32_t>(table.size()))};
  std::vector<std::byte> head(bytes_of(header).begin(), bytes_of(header).end());
  for (const auto& [base, size] : table) {
    const RegionEntry e{Le64(base), Le64(size)};
    head.insert(head.end(), bytes_of(e).begin(), bytes_of(e).end());
  }
  auto fail = [&](std::string message) -> Status<MigrationReport> {
    (void)vm.pause();
    return std::unexpected(std::move(message));
  };
  if (auto f = out.frame(head); !f) {
    return fail(f.error());
  }

  // Round 1 sends all of memory; each later round the pages dirtied during the one before.
  for (std::size_t i = 0; i < table.size(); ++i) {
    const std::uint64_t pages = table[i].second / kPageSize;
    std::fill(words[i].begin(), words[i].end(), ~std::uint64_t{0});
    if (pages % 64 != 0) {
      words[i].back() = (std::uint64_t{1} << (pages % 64)) - 1;
    }
  }
  for (std::uint32_t round = 1;; ++round) {
    const auto start = Clock::now();
    const std::uint64_t before = out.sent();
    auto sent = send_pages(mem, words, out, options.max_mbps);
    if (!sent) {
      return fail(sent.error());
    }
    const double secs = seconds_since(start);
    if (auto r = vm.take_dirty(words); !r) {
      return fail(r.error());
    }
    RoundReport line{round, *sent, count_pages(words), out.sent() - before, secs,
                     secs > 0 ? double(out.sent() - before) / secs / 1e6 : 0};
    report.live_rounds = round;
    if (on_round) {
      on_round(line);
    }
    if (line.pages_dirty <= options.stop_copy_pages || round >= options.max_rounds) {
      break;
    }
  }

  // Stop and copy: the guest stops at a consistent point; everything it and the device
  // wrote since the last round goes, then the state and the end record.
  // The downtime runs from the moment the guest is stopped (pause() first lets the vCPU
  // finish the request it is in, while the guest still runs) to the destination's answer.
  if (auto r = vm.pause(); !r) {
    return std::unexpected("stopping the guest: " + r.error());
  }
  const auto stop = Clock::now();
  // The pages dirtied during the last live round, and since.
  std::vector<std::vector<std::uint64_t>> since;
  if (auto r = vm.take_dirty(since); !r) {
    return std::unexpected(r.error());
  }
  for (std::size_t i = 0; i < words.size(); ++i) {
    for (std::size_t w = 0; w < words[i].size(); ++w) {
      words[i][w] |= since[i][w];
    }
  }
  const auto copy_start = Clock::now();
  const std::uint64_t copy_before = out.sent();
  auto sent = send_pages(mem, words, out, 0);
  if (!sent) {
    return std::unexpected(sent.error());
  }
  auto state = vm.save_state();
  if (!state) {
    return std::unexpected(state.error());
  }
  const Record state_rec{Le32(static_cast<std::uint32_t>(RecordType::State)), Le32(0),
                         Le64(state->size()), Le64(0)};
  if (auto f = out.frame(bytes_of(state_rec)); !f) {
    return std::unexpected(f.error());
  }
  if (auto f = out.frame(*state); !f) {
    return std::unexpected(f.error());
  }
  report.memory_hash = memory_hash(mem);
  const double copy_secs = seconds_since(copy_start);
  if (on_round) {
    on_round(RoundReport{0, *sent, 0, out.sent() - copy_before, copy_secs,
                         copy_secs > 0 ? double(out.sent() - copy_before) / copy_secs / 1e6 : 0});
  }
  const Record end{Le32(static_cast<std::uint32_t>(RecordType::End)), Le32(0),
                   Le64(out.sent()), Le64(report.memory_hash)};
  if (auto f = out.frame(bytes_of(end)); !f) {
    return std::unexpected(f.error());
  }
  const Le64 digest(out.digest());
  if (auto f = out.frame(bytes_of(digest)); !f) {
    return std::unexpected(f.error());
  }
  report.final_pages = *sent;
  report.bytes = out.sent();

  // The destination answers once it has verified the stream and built the machine.
  char ack = 0;
  ssize_t n;
  do {
    n = ::recv(fd, &ack, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n != 1 || ack != kAck) {
    return std::unexpected(std::string("the destination did not accept the migration"));
  }
  report.downtime_ms = seconds_since(stop) * 1e3;
  return report;
}

namespace {

// The receiving end: counts and hashes framing bytes, says where the stream ended.
class StreamIn {
 public:
  explicit StreamIn(int fd) : fd_(fd) {}

  Status<void> frame(std::span<std::byte> into, const char* where) {
    std::size_t done = 0;
    while (done < into.size()) {
      const ssize_t n = ::recv(fd_, into.data() + done, into.size() - done, 0);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        received_ += done;
        return std::unexpected(ended(where, n < 0 ? errno : 0));
      }
      done += static_cast<std::size_t>(n);
    }
    received_ += done;
    hash_.update(into);
    return {};
  }

  Status<void> payload(const Memory& mem, GuestAddress addr, std::uint64_t len) {
    guestmem::BorrowedFd socket{fd_};
    auto r = mem.read_exact_volatile_from(addr, socket, len);
    if (!r) {
      received_ += r.error().completed();
      return std::unexpected(ended("the payload of a page record", r.error().os_error()));
    }
    received_ += len;
    return {};
  }

  [[nodiscard]] std::uint64_t received() const noexcept { return received_; }
  [[nodiscard]] std::uint64_t digest() const { return hash_.digest(); }

 private:
  std::string ended(const char* where, int err) const {
    std::string m = "the migration stream ended after " + std::to_string(received_) +
                    " bytes, in " + where;
    if (err != 0) {
      m += std::string(" (") + std::strerror(err) + ")";
    }
    return m;
  }

  int fd_;
  std::uint64_t received_ = 0;
  Xxh3 hash_;
};

}  // namespace

Status<std::pair<std::unique_ptr<Machine>, IncomingReport>> migrate_in(int fd,
                                                                        MachineConfig config) {
  StreamIn in(fd);
  IncomingReport report;
  StreamHeader header;
  if (auto r = in.frame(writable_bytes_of(header), "the header"); !r) {
    return std::unexpected(r.error());
  }
  if (header.magic != kMagic) {
    return std::unexpected(std::string("not a tiny_vmm migration stream (bad magic)"));
  }
  if (header.version.to_native() != kMigrationVersion) {
    return std::unexpected("migration stream version " +
                           std::to_string(header.version.to_native()) + ", this VMM reads " +
                           std::to_string(kMigrationVersion));
  }
  const std::uint32_t kind = header.kind.to_native();
  if (kind != static_cast<std::uint32_t>(GuestKind::Kvm) &&
      kind != static_cast<std::uint32_t>(GuestKind::Thread)) {
    return std::unexpected("migration stream names an unknown processor kind " +
                           std::to_string(kind));
  }
  config.kind = static_cast<GuestKind>(kind);
  const std::uint32_t regions = header.regions.to_native();
  if (header.page_size.to_native() != kPageSize || regions == 0 || regions > kMaxRegions) {
    return std::unexpected(std::string("migration stream header out of range"));
  }
  std::vector<std::pair<GuestAddress, std::size_t>> ranges;
  for (std::uint32_t i = 0; i < regions; ++i) {
    RegionEntry e;
    if (auto r = in.frame(writable_bytes_of(e), "the region table"); !r) {
      return std::unexpected(r.error());
    }
    const std::uint64_t base = e.base.to_native();
    const std::uint64_t size = e.size.to_native();
    if (base % kPageSize != 0 || size % kPageSize != 0 || size == 0 || size > kMaxRegionSize) {
      return std::unexpected(std::string("migration stream region out of range"));
    }
    ranges.emplace_back(GuestAddress{base}, static_cast<std::size_t>(size));
  }
  auto fresh = Memory::from_ranges(std::span<const std::pair<GuestAddress, std::size_t>>(ranges));
  if (!fresh) {
    return std::unexpected(describe("the migration stream's memory layout", fresh.error()));
  }
  // The machine (with a KVM VM and vCPU) is built now, while pages arrive, so that its cost
  // is not part of the downtime; it is handed out only once the end record verified.
  auto machine = Machine::with_memory(config, std::move(*fresh));
  if (!machine) {
    return std::unexpected(machine.error());
  }
  auto guard = (*machine)->space().memory();
  const Memory* mem = guard.get();

  std::optional<std::vector<std::byte>> state;
  for (;;) {
    Record rec;
    if (auto r = in.frame(writable_bytes_of(rec), "a record header"); !r) {
      return std::unexpected(r.error());
    }
    const std::uint64_t a = rec.a.to_native();
    const std::uint64_t b = rec.b.to_native();
    switch (static_cast<RecordType>(rec.type.to_native())) {
      case RecordType::Pages: {
        const GuestAddress addr{a};
        if (a % kPageSize != 0 || b % kPageSize != 0 || b == 0 || b > kMaxRegionSize ||
            !mem->check_range(addr, static_cast<std::size_t>(b))) {
          return std::unexpected("migration stream: a page record outside memory at " +
                                 guestmem::to_string(addr));
        }
        if (auto r = in.payload(*mem, addr, b); !r) {
          return std::unexpected(r.error());
        }
        report.pages += b / kPageSize;
        break;
      }
      case RecordType::State: {
        if (a > kMaxState || state) {
          return std::unexpected(std::string("migration stream: a bad state record"));
        }
        state.emplace(static_cast<std::size_t>(a));
        if (auto r = in.frame(*state, "the machine state"); !r) {
          return std::unexpected(r.error());
        }
        break;
      }
      case RecordType::End: {
        const std::uint64_t expected_digest = in.digest();
        const std::uint64_t bytes_before = in.received() - sizeof rec;
        Le64 digest;
        if (auto r = in.frame(writable_bytes_of(digest), "the end record"); !r) {
          return std::unexpected(r.error());
        }
        // The digest covers the stream up to and including the end record's header.
        if (digest.to_native() != expected_digest || a != bytes_before) {
          return std::unexpected(std::string("migration stream checksum mismatch"));
        }
        if (!state) {
          return std::unexpected(std::string("migration stream has no machine state"));
        }
        report.memory_hash = memory_hash(*mem);
        if (report.memory_hash != b) {
          return std::unexpected(std::string(
              "migration stream: the memory received differs from the source's"));
        }
        report.bytes = in.received();
        // The pages arrived through guestmem and were marked dirty: start clean.
        for (const auto& region : mem->regions()) {
          region.bitmap().reset();
        }
        if (auto r = (*machine)->load_state(*state); !r) {
          return std::unexpected(r.error());
        }
        const char ack = kAck;
        if (::send(fd, &ack, 1, MSG_NOSIGNAL) != 1) {
          return std::unexpected(std::string("the source went away before the hand-over"));
        }
        return std::pair{std::move(*machine), report};
      }
      default:
        return std::unexpected("migration stream: unknown record type " +
                               std::to_string(rec.type.to_native()));
    }
  }
}

}  // namespace tiny_vmm
