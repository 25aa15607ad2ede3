#include "guestmem/snapshot.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <concepts>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "guestmem/detail/config.hpp"

// The streaming state on the stack (its layout is that of the installed library's version).
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
// On x86-64, the library's entry points that choose SSE2, AVX2 or AVX-512 at run time (the
// plain ones are built for the baseline, SSE2); the checksums are the same either way.
#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>
#endif

namespace guestmem {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the snapshot format is little-endian; a big-endian host needs byte swaps here");

constexpr char kMagic[8] = {'G', 'M', 'E', 'M', 'S', 'N', 'A', 'P'};
constexpr std::uint32_t kFlagDiff = 1;
// The largest header a reader accepts: a bitmap bit per page and a checksum per chunk make
// about 40 KiB per GiB of guest memory, so this allows guests of many TiB while refusing a
// header that would make a reader allocate without bound.
constexpr std::uint64_t kMaxMetadataSize = std::uint64_t{1} << 32;
// The most one pwrite or pread moves (Linux moves at most 0x7ffff000 bytes a call).
constexpr std::size_t kMaxIo = std::size_t{1} << 30;
// How many pages ahead a save prefetches the pages to read, a batch of this many at a time.
constexpr std::size_t kPrefetchAhead = 8;
// How many pages a save lists at a time (64 MiB of 4 KiB pages; the list is at most 128 KiB).
constexpr std::uint64_t kListWindow = 16384;

// The fixed part of the header, at file offset 0.
struct FileHeader {
  char magic[8];
  std::uint32_t version;
  std::uint32_t flags;
  std::uint64_t page_size;
  std::uint64_t chunk_size;
  std::uint64_t id_hi;
  std::uint64_t id_lo;
  std::uint64_t base_hi;
  std::uint64_t base_lo;
  std::uint64_t region_count;
  // The bytes of the header: this struct, the region table, the bitmaps and the checksums.
  std::uint64_t metadata_size;
  std::uint64_t file_size;
  // XXH3-64 of the metadata_size bytes of the header with this field zero.
  std::uint64_t checksum;
  std::uint64_t reserved[4];
};
static_assert(sizeof(FileHeader) == 128);
constexpr std::size_t kChecksumWord = offsetof(FileHeader, checksum) / 8;

// One entry of the region table, which follows the FileHeader.
struct RegionEntry {
  std::uint64_t guest_base;
  std::uint64_t size;
  std::uint64_t file_offset;
  // Offsets in the header of the region's page bitmap (a bit per page the file holds, 64
  // pages a word) and of its chunk checksums (one word per chunk).
  std::uint64_t bitmap_offset;
  std::uint64_t checksum_offset;
  std::uint64_t pages;
  std::uint64_t chunks;
  std::uint64_t pages_present;
};
static_assert(sizeof(RegionEntry) == 64);

constexpr std::uint64_t div_ceil(std::uint64_t a, std::uint64_t b) noexcept {
  return a / b + (a % b != 0 ? 1 : 0);
}
constexpr std::uint64_t round_up(std::uint64_t a, std::uint64_t b) noexcept {
  return div_ceil(a, b) * b;
}

// What the code below needs of a region, whatever its bitmap type.
struct RegionView {
  std::uint64_t guest_base = 0;
  std::uint64_t size = 0;
  std::uint8_t* host = nullptr;
  // The file behind the mapping (-1 for anonymous memory) and the offset of the region in it.
  int file_fd = -1;
  std::uint64_t file_start = 0;
  bool readable = false;
  bool writable = false;
  // The dirty bitmap to report writes to, or null.
  const AtomicBitmap* bitmap = nullptr;
};

template <Bitmap B>
std::vector<RegionView> views_of(const GuestMemoryMmap<B>& mem) {
  std::vector<RegionView> views;
  views.reserve(mem.num_regions());
  for (const auto& region : mem.regions()) {
    RegionView view;
    view.guest_base = region.start_addr().raw_value();
    view.size = region.len();
    view.host = region.mapping().unsafe_host_ptr();
    if (const FileOffset* file = region.file_offset(); file != nullptr) {
      view.file_fd = file->fd();
      view.file_start = file->start();
    }
    view.readable = region.mapping().permits(Permissions::Read);
    view.writable = region.mapping().permits(Permissions::Write);
    if constexpr (std::same_as<B, AtomicBitmap>) {
      view.bitmap = &region.bitmap();
    }
    views.push_back(view);
  }
  return views;
}

// The layout of a file for these regions: the header with its table filled in (bitmaps and
// checksums still zero), as 64-bit words.
struct Layout {
  std::vector<std::uint64_t> meta;
  std::uint64_t file_size = 0;

  FileHeader header() const noexcept {
    FileHeader h;
    std::memcpy(&h, meta.data(), sizeof h);
    return h;
  }
  RegionEntry entry(std::size_t i) const noexcept {
    RegionEntry e;
    std::memcpy(&e, meta.data() + (sizeof(FileHeader) + i * sizeof(RegionEntry)) / 8, sizeof e);
    return e;
  }
  std::uint64_t* bitmap(const RegionEntry& e) noexcept { return meta.data() + e.bitmap_offset / 8; }
  const std::uint64_t* bitmap(const RegionEntry& e) const noexcept {
    return meta.data() + e.bitmap_offset / 8;
  }
  std::uint64_t* checksums(const RegionEntry& e) noexcept {
    return meta.data() + e.checksum_offset / 8;
  }
  const std::uint64_t* checksums(const RegionEntry& e) const noexcept {
    return meta.data() + e.checksum_offset / 8;
  }
};

Layout make_layout(std::span<const RegionView> regions, std::uint64_t page_size,
                   std::uint32_t flags, SnapshotId id, SnapshotId base) {
  std::vector<RegionEntry> entries(regions.size());
  std::uint64_t offset = sizeof(FileHeader) + regions.size() * sizeof(RegionEntry);
  for (std::size_t i = 0; i < regions.size(); ++i) {
    RegionEntry& e = entries[i];
    e.guest_base = regions[i].guest_base;
    e.size = regions[i].size;
    e.pages = div_ceil(e.size, page_size);
    e.chunks = div_ceil(e.size, kSnapshotChunkSize);
    e.bitmap_offset = offset;
    offset += div_ceil(e.pages, 64) * 8;
    e.checksum_offset = offset;
    offset += e.chunks * 8;
    e.pages_present = 0;
  }
  const std::uint64_t metadata_size = offset;
  std::uint64_t data = round_up(metadata_size, page_size);
  for (RegionEntry& e : entries) {
    e.file_offset = data;
    data += round_up(e.size, page_size);
  }
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kSnapshotVersion;
  h.flags = flags;
  h.page_size = page_size;
  h.chunk_size = kSnapshotChunkSize;
  h.id_hi = id.hi;
  h.id_lo = id.lo;
  h.base_hi = base.hi;
  h.base_lo = base.lo;
  h.region_count = regions.size();
  h.metadata_size = metadata_size;
  h.file_size = data;
  Layout layout;
  layout.meta.assign(metadata_size / 8, 0);
  std::memcpy(layout.meta.data(), &h, sizeof h);
  std::memcpy(layout.meta.data() + sizeof h / 8, entries.data(),
              entries.size() * sizeof(RegionEntry));
  layout.file_size = data;
  return layout;
}

void set_entry(Layout& layout, std::size_t i, const RegionEntry& e) noexcept {
  std::memcpy(layout.meta.data() + (sizeof(FileHeader) + i * sizeof(RegionEntry)) / 8, &e,
              sizeof e);
}

// XXH3-64 of the header with its checksum field taken as zero.
std::uint64_t header_checksum(std::span<const std::uint64_t> meta) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, meta.data(), kChecksumWord * 8);
  const std::uint64_t zero = 0;
  XXH3_64bits_update(&state, &zero, sizeof zero);
  XXH3_64bits_update(&state, meta.data() + kChecksumWord + 1,
                     (meta.size() - kChecksumWord - 1) * 8);
  return XXH3_64bits_digest(&state);
}

Result<SnapshotId> random_id() {
  SnapshotId id;
  do {
    std::uint64_t words[2];
    std::size_t done = 0;
    while (done < sizeof words) {
      const ssize_t n = ::getrandom(reinterpret_cast<char*>(words) + done, sizeof words - done, 0);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        return std::unexpected(Error::io(errno));
      }
      done += static_cast<std::size_t>(n);
    }
    id = SnapshotId{words[0], words[1]};
  } while (id == SnapshotId{});
  return id;
}

// pwrite of all `len` bytes, retried on EINTR and continued after a short write.
Result<void> pwrite_all(int fd, const std::uint8_t* src, std::size_t len, std::uint64_t offset) {
  std::size_t done = 0;
  while (done < len) {
    const std::size_t n = std::min(len - done, kMaxIo);
    const ssize_t r = ::pwrite(fd, src + done, n, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return std::unexpected(Error::io(errno, done));
    }
    if (r == 0) {
      return std::unexpected(Error::io(EIO, done));
    }
    done += static_cast<std::size_t>(r);
  }
  return {};
}


Error truncated(std::uint64_t found, std::uint64_t needed) noexcept {
  return Error::snapshot(ErrorCode::SnapshotTruncated, found, 0, needed, found);
}

// The error for a header that fails its checksum or describes an impossible layout.
Error corrupt_header(std::uint64_t metadata_size) noexcept {
  return Error::snapshot(ErrorCode::SnapshotCorrupt, 0, metadata_size, 0, 0);
}

// pread of all `len` bytes, retried on EINTR and continued after a short read. The end of
// the file before `len` bytes is SnapshotTruncated (the file needs `needed` bytes).
Result<void> pread_all(int fd, std::uint8_t* dst, std::size_t len, std::uint64_t offset,
                       std::uint64_t needed) {
  std::size_t done = 0;
  while (done < len) {
    const std::size_t n = std::min(len - done, kMaxIo);
    const ssize_t r = ::pread(fd, dst + done, n, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return std::unexpected(Error::io(errno, done));
    }
    if (r == 0) {
      return std::unexpected(truncated(offset + done, needed));
    }
    done += static_cast<std::size_t>(r);
  }
  return {};
}

Result<void> ftruncate_retry(int fd, std::uint64_t size) {
  while (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (errno != EINTR) {
      return std::unexpected(Error::io(errno));
    }
  }
  return {};
}

// XXH3-64 over a sequence of byte ranges, as if they were one.
class Hasher {
 public:
  Hasher() noexcept { reset(); }
  void reset() noexcept { XXH3_64bits_reset(&state_); }
  void update(const void* data, std::size_t len) noexcept { XXH3_64bits_update(&state_, data, len); }
  [[nodiscard]] std::uint64_t digest() const noexcept { return XXH3_64bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

// Calls f(first, end) for each maximal run of set bits in [first, end) of `words`; stops at
// the first error f returns.
template <class F>
Result<void> for_each_run(const std::uint64_t* words, std::uint64_t first, std::uint64_t end,
                          F&& f) {
  std::uint64_t p = first;
  while (p < end) {
    std::uint64_t w = p / 64;
    std::uint64_t bits = words[w] & (~std::uint64_t{0} << (p % 64));
    while (bits == 0) {
      ++w;
      if (w * 64 >= end) {
        return {};
      }
      bits = words[w];
    }
    const std::uint64_t start = w * 64 + static_cast<std::uint64_t>(std::countr_zero(bits));
    if (start >= end) {
      return {};
    }
    w = start / 64;
    std::uint64_t clear = ~words[w] & (~std::uint64_t{0} << (start % 64));
    while (clear == 0) {
      ++w;
      if (w * 64 >= end) {
        break;
      }
      clear = ~words[w];
    }
    const std::uint64_t stop =
        clear == 0 ? end
                   : std::min(end, w * 64 + static_cast<std::uint64_t>(std::countr_zero(clear)));
    if (auto r = f(start, stop); !r) {
      return r;
    }
    p = stop;
  }
  return {};
}

void set_bit(std::uint64_t* words, std::uint64_t bit) noexcept {
  words[bit / 64] |= std::uint64_t{1} << (bit % 64);
}

void set_bits(std::uint64_t* words, std::uint64_t first, std::uint64_t end) noexcept {
  for (std::uint64_t b = first; b < end; ++b) {
    set_bit(words, b);
  }
}

// True when the `len` bytes at `p` are all zero. Stops at the first non-zero 64 bytes: a
// page with data almost always shows it at once.
bool all_zero(const std::uint8_t* p, std::size_t len) noexcept {
  std::size_t i = 0;
  for (; i + 64 <= len; i += 64) {
    std::uint64_t w[8];
    // SAFETY: the caller guarantees [p, p + len) is readable, and i + 64 <= len.
    std::memcpy(w, p + i, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) {
      return false;
    }
  }
  for (; i < len; ++i) {
    // SAFETY: i < len.
    if (p[i] != 0) {
      return false;
    }
  }
  return true;
}

// The pages of a region that may hold data, so that a save reads only those: pages the
// process has never touched (neither present nor swapped in /proc/self/pagemap) read as
// zero in anonymous memory, and as the file's contents in a file mapping, whose holes
// (SEEK_HOLE) read as zero too.
class PageHints {
 public:
  PageHints() : pagemap_(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) {}

  // Sets the bits of the pages of `r` that may hold data (all of them when the system
  // cannot say).
  void mark(const RegionView& r, std::uint64_t pages, std::uint64_t page_size,
            std::uint64_t* bits) {
    std::fill_n(bits, div_ceil(pages, 64), 0);
    if (!mark_mapped(r.host, pages, page_size, bits) ||
        (r.file_fd >= 0 && !mark_file_data(r, pages, page_size, bits))) {
      set_bits(bits, 0, pages);
    }
  }

 private:
  static constexpr std::uint64_t kPresent = std::uint64_t{1} << 63;
  static constexpr std::uint64_t kSwapped = std::uint64_t{1} << 62;
  static constexpr std::size_t kBatch = 32768;

  bool mark_mapped(const std::uint8_t* host, std::uint64_t pages, std::uint64_t page_size,
                   std::uint64_t* bits) {
    if (!pagemap_ || page_size != detail::page_size()) {
      return false;
    }
    buffer_.resize(kBatch);
    const std::uint64_t first = reinterpret_cast<std::uintptr_t>(host) / page_size;
    for (std::uint64_t p = 0; p < pages; p += kBatch) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kBatch, pages - p));
      auto read = pread_all(pagemap_.get(), reinterpret_cast<std::uint8_t*>(buffer_.data()),
                            n * 8, (first + p) * 8, 0);
      if (!read) {
        return false;
      }
      for (std::size_t i = 0; i < n; ++i) {
        if ((buffer_[i] & (kPresent | kSwapped)) != 0) {
          set_bit(bits, p + i);
        }
      }
    }
    return true;
  }

  // Marks the pages over the file's data extents. Uses its own open file description (from
  // /proc/self/fd), because lseek would move the offset that the region's descriptor shares
  // with its other users.
  static bool mark_file_data(const RegionView& r, std::uint64_t pages, std::uint64_t page_size,
                             std::uint64_t* bits) {
    const std::string path = "/proc/self/fd/" + std::to_string(r.file_fd);
    const UniqueFd own{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (!own) {
      return false;
    }
    const std::uint64_t end = r.file_start + r.size;
    std::uint64_t pos = r.file_start;
    while (pos < end) {
      const off_t data = ::lseek(own.get(), static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0) {
        return errno == ENXIO;  // no data after pos
      }
      const auto d = static_cast<std::uint64_t>(data);
      if (d >= end) {
        return true;
      }
      const off_t hole = ::lseek(own.get(), data, SEEK_HOLE);
      if (hole < 0) {
        return false;
      }
      const std::uint64_t h = std::min(end, static_cast<std::uint64_t>(hole));
      set_bits(bits, (d - r.file_start) / page_size,
               std::min(pages, div_ceil(h - r.file_start, page_size)));
      pos = h;
    }
    return true;
  }

  UniqueFd pagemap_;
  std::vector<std::uint64_t> buffer_;
};

// Writes the pages a file holds for one region and computes the region's chunk checksums.
// Adjacent pages go to adjacent file offsets, so a run of them is one pwrite. Each run is
// written first and hashed after, while its bytes are still in the cache from the kernel's
// copy: the memory is read from DRAM once, by the copy, and the hash reads the cache. (Hashed
// first, a page is read from DRAM by the hash and again from the cache by the copy, and a long
// run of dense memory no longer in the cache when its pwrite comes reads DRAM twice.) A run
// is therefore at most kRunBytes, which a recent core's L2 cache holds.
class RegionWriter {
 public:
  // Preconditions: `r` is readable and stays alive and unwritten during the save; `sums`
  // has a word per chunk of the region.
  RegionWriter(int fd, const RegionView& r, std::uint64_t file_offset, std::uint64_t page_size,
               std::uint64_t* sums, Hasher& hasher) noexcept
      : fd_(fd),
        region_(r),
        file_offset_(file_offset),
        page_size_(page_size),
        pages_per_chunk_(kSnapshotChunkSize / page_size),
        sums_(sums),
        hasher_(hasher) {
    hasher_.reset();
  }

  // Page p (after every page added before) is written and hashed.
  Result<void> add_data(std::uint64_t p) {
    if (run_end_ != run_first_ && run_end_ == p && (p - run_first_) * page_size_ < kRunBytes) {
      run_end_ = p + 1;
      return {};
    }
    if (auto r = flush(); !r) {
      return r;
    }
    run_first_ = p;
    run_end_ = p + 1;
    return {};
  }

  // Page p (after every page added before), which reads as zeros, is hashed but not written:
  // the file's hole reads as the same zeros.
  Result<void> add_zero(std::uint64_t p) {
    if (auto r = flush(); !r) {
      return r;
    }
    hash_pages(p, p + 1);
    return {};
  }

  // Writes what is pending and closes the region's remaining chunks.
  Result<void> finish(std::uint64_t chunks) {
    if (auto r = flush(); !r) {
      return r;
    }
    close_chunks(chunks);
    return {};
  }

 private:
  static constexpr std::uint64_t kRunBytes = std::uint64_t{256} << 10;

  Result<void> flush() {
    if (run_end_ == run_first_) {
      return {};
    }
    const std::uint64_t off = run_first_ * page_size_;
    const auto len =
        static_cast<std::size_t>(std::min(run_end_ * page_size_, region_.size) - off);
    // SAFETY: [off, off + len) lies inside the live region (pages of it the caller listed).
    auto r = pwrite_all(fd_, region_.host + off, len, file_offset_ + off);
    if (r) {
      hash_pages(run_first_, run_end_);
    }
    run_first_ = run_end_ = 0;
    return r;
  }

  // Hashes pages [first, end) into their chunks, closing the chunks before them.
  void hash_pages(std::uint64_t first, std::uint64_t end) noexcept {
    while (first < end) {
      const std::uint64_t c = first / pages_per_chunk_;
      close_chunks(c);
      const std::uint64_t stop = std::min(end, (c + 1) * pages_per_chunk_);
      const std::uint64_t off = first * page_size_;
      // SAFETY: pages [first, stop) lie inside the live region.
      hasher_.update(region_.host + off,
                     static_cast<std::size_t>(std::min(stop * page_size_, region_.size) - off));
      first = stop;
    }
  }

  // Closes the chunks before chunk `end` (those without pages hash nothing).
  void close_chunks(std::uint64_t end) noexcept {
    for (; chunk_ < end; ++chunk_) {
      sums_[chunk_] = hasher_.digest();
      hasher_.reset();
    }
  }

  int fd_;
  const RegionView& region_;
  std::uint64_t file_offset_;
  std::uint64_t page_size_;
  std::uint64_t pages_per_chunk_;
  std::uint64_t* sums_;
  Hasher& hasher_;
  // The pending run: pages [run_first_, run_end_), not yet written nor hashed.
  std::uint64_t run_first_ = 0;
  std::uint64_t run_end_ = 0;
  // The first chunk whose checksum is not yet stored.
  std::uint64_t chunk_ = 0;
};

// Saves `regions` into `fd`: every non-zero page (full snapshot, `dirty` empty), or the
// pages set in dirty[i] for region i (a diff onto `base`).
Result<SnapshotId> save_impl(std::span<const RegionView> regions, int fd, const SnapshotId* base,
                             std::span<const std::vector<std::uint64_t>> dirty) {
  if (regions.empty()) {
    return std::unexpected(Error(ErrorCode::NoMemoryRegion));
  }
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) {
    return std::unexpected(Error::io(errno));
  }
  // pwrite on an O_APPEND descriptor appends wherever the offset says.
  if ((fl & O_APPEND) != 0) {
    return std::unexpected(Error::io(EINVAL));
  }
  // Refused before the file changes: reading such a region would fault.
  for (const RegionView& r : regions) {
    if (!r.readable) {
      return std::unexpected(Error::protection_violation(r.guest_base, r.size, Permissions::Read));
    }
  }
  auto id = random_id();
  if (!id) {
    return id;
  }
  const std::uint64_t page_size = detail::page_size();
  Layout layout = make_layout(regions, page_size, base != nullptr ? kFlagDiff : 0, *id,
                              base != nullptr ? *base : SnapshotId{});
  // Emptied first, so that every page not written below is a hole.
  if (auto r = ftruncate_retry(fd, 0); !r) {
    return std::unexpected(r.error());
  }
  if (auto r = ftruncate_retry(fd, layout.file_size); !r) {
    return std::unexpected(r.error());
  }

  const bool diff = base != nullptr;
  std::optional<PageHints> hints;
  if (!diff) {
    hints.emplace();
  }
  std::vector<std::uint64_t> candidates;
  std::vector<std::uint64_t> listed;
  Hasher hasher;
  for (std::size_t i = 0; i < regions.size(); ++i) {
    const RegionView& r = regions[i];
    RegionEntry e = layout.entry(i);
    std::uint64_t* present = layout.bitmap(e);
    const std::uint64_t* pages_to_read;
    if (diff) {
      pages_to_read = dirty[i].data();
    } else {
      candidates.resize(div_ceil(e.pages, 64));
      hints->mark(r, e.pages, page_size, candidates.data());
      pages_to_read = candidates.data();
    }
    // The region's pages to read, listed a window at a time so that the loop below can
    // prefetch a few pages ahead, across chunk boundaries: the first touch of a scattered
    // page waits for memory, and that wait, not the check or the hash, dominates a save of
    // sparse memory.
    std::uint64_t count = 0;
    RegionWriter writer(fd, r, e.file_offset, page_size, layout.checksums(e), hasher);
    for (std::uint64_t w0 = 0; w0 < e.pages; w0 += kListWindow) {
      listed.clear();
      (void)for_each_run(pages_to_read, w0, std::min(w0 + kListWindow, e.pages),
                         [&](std::uint64_t s, std::uint64_t t) -> Result<void> {
        for (std::uint64_t p = s; p < t; ++p) {
          listed.push_back(p);
        }
        return {};
      });
      for (std::size_t k = 0; k < listed.size(); ++k) {
        if (k % kPrefetchAhead == 0) {
          // The next batch of pages, prefetched back to back: a prefetch retires only once
          // its address is translated, and the pwrite below waits for it to retire, so one
          // prefetch per page would wait out a page walk per page, one at a time (scattered
          // pages miss the TLB). Issued together, the walks overlap.
          const std::size_t end = std::min(listed.size(), k + 2 * kPrefetchAhead);
          for (std::size_t j = k + kPrefetchAhead; j < end; ++j) {
            // SAFETY: a prefetch never faults; the address lies inside the region anyway.
            __builtin_prefetch(r.host + listed[j] * page_size);
          }
        }
        const std::uint64_t p = listed[k];
        const std::uint64_t off = p * page_size;
        const auto len = static_cast<std::size_t>(std::min(page_size, r.size - off));
        // SAFETY: off < r.size and off + len <= r.size: the page lies inside the live region.
        const bool zero = all_zero(r.host + off, len);
        if (zero && !diff) {
          continue;
        }
        set_bit(present, p);
        ++count;
        if (auto w = zero ? writer.add_zero(p) : writer.add_data(p); !w) {
          return std::unexpected(w.error());
        }
      }
    }
    if (auto w = writer.finish(e.chunks); !w) {
      return std::unexpected(w.error());
    }
    e.pages_present = count;
    set_entry(layout, i, e);
  }
  // The header last: a save that fails before this point leaves a file without a magic.
  layout.meta[kChecksumWord] = header_checksum(layout.meta);
  if (auto r = pwrite_all(fd, reinterpret_cast<const std::uint8_t*>(layout.meta.data()),
                          layout.meta.size() * 8, 0);
      !r) {
    return std::unexpected(r.error());
  }
  return *id;
}

// A verified header.
struct Parsed {
  Layout layout;
  FileHeader header{};
  std::vector<RegionEntry> entries;
  // The number of the first data chunk of each region (chunk 0 is the header).
  std::vector<std::uint64_t> first_chunk;
};

bool is_power_of_two(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

// Checks that a header that passed its checksum describes a possible file: aligned, inside
// the header and the file, sorted, without overlaps or overflows, bitmaps that agree with
// their counts. Only a bug or a forged file fails here.
bool layout_valid(const Parsed& p) {
  const FileHeader& h = p.header;
  const std::uint64_t meta = h.metadata_size;
  if ((h.flags & ~kFlagDiff) != 0 || !is_power_of_two(h.page_size) || h.page_size < 512 ||
      h.page_size > (std::uint64_t{1} << 30) || h.chunk_size == 0 ||
      h.chunk_size % h.page_size != 0 || h.chunk_size > (std::uint64_t{1} << 30) ||
      h.region_count == 0 || h.region_count > (meta - sizeof(FileHeader)) / sizeof(RegionEntry) ||
      (h.id_hi == 0 && h.id_lo == 0) ||
      ((h.flags & kFlagDiff) == 0 && (h.base_hi != 0 || h.base_lo != 0)) ||
      ((h.flags & kFlagDiff) != 0 && h.base_hi == 0 && h.base_lo == 0)) {
    return false;
  }
  std::uint64_t file_end = meta;
  std::uint64_t guest_end = 0;
  for (std::size_t i = 0; i < p.entries.size(); ++i) {
    const RegionEntry& e = p.entries[i];
    if (e.size == 0 || e.size > (std::uint64_t{1} << 56) || e.pages != div_ceil(e.size, h.page_size) ||
        e.chunks != div_ceil(e.size, h.chunk_size)) {
      return false;
    }
    const std::uint64_t words = div_ceil(e.pages, 64);
    if (e.bitmap_offset % 8 != 0 || e.bitmap_offset < sizeof(FileHeader) || e.bitmap_offset > meta ||
        words > (meta - e.bitmap_offset) / 8 || e.checksum_offset % 8 != 0 ||
        e.checksum_offset < sizeof(FileHeader) || e.checksum_offset > meta ||
        e.chunks > (meta - e.checksum_offset) / 8) {
      return false;
    }
    if (e.file_offset % h.page_size != 0 || e.file_offset < file_end ||
        e.file_offset > h.file_size || round_up(e.size, h.page_size) > h.file_size - e.file_offset) {
      return false;
    }
    file_end = e.file_offset + round_up(e.size, h.page_size);
    if ((i > 0 && e.guest_base < guest_end) || e.guest_base > ~std::uint64_t{0} - e.size) {
      return false;
    }
    guest_end = e.guest_base + e.size;
    const std::uint64_t* bits = p.layout.bitmap(e);
    std::uint64_t count = 0;
    for (std::uint64_t w = 0; w < words; ++w) {
      count += static_cast<std::uint64_t>(std::popcount(bits[w]));
    }
    // No bit past the last page, and the count the table gives.
    if ((e.pages % 64 != 0 && (bits[words - 1] >> (e.pages % 64)) != 0) ||
        count != e.pages_present) {
      return false;
    }
  }
  return true;
}

Result<Parsed> read_header(int fd) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    return std::unexpected(Error::io(errno));
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size < sizeof(FileHeader)) {
    return std::unexpected(truncated(file_size, sizeof(FileHeader)));
  }
  Parsed p;
  if (auto r = pread_all(fd, reinterpret_cast<std::uint8_t*>(&p.header), sizeof p.header, 0,
                         sizeof p.header);
      !r) {
    return std::unexpected(r.error());
  }
  const FileHeader& h = p.header;
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) {
    return std::unexpected(Error::snapshot(ErrorCode::SnapshotUnsupported, 0, 0, 0, 0));
  }
  if (h.version != kSnapshotVersion) {
    return std::unexpected(Error::snapshot(ErrorCode::SnapshotUnsupported,
                                           offsetof(FileHeader, version), 0, kSnapshotVersion,
                                           h.version));
  }
  if (h.metadata_size < sizeof(FileHeader) || h.metadata_size % 8 != 0 ||
      h.metadata_size > kMaxMetadataSize) {
    return std::unexpected(corrupt_header(h.metadata_size));
  }
  if (file_size < h.metadata_size) {
    return std::unexpected(truncated(file_size, h.metadata_size));
  }
  p.layout.meta.resize(h.metadata_size / 8);
  if (auto r = pread_all(fd, reinterpret_cast<std::uint8_t*>(p.layout.meta.data()),
                         h.metadata_size, 0, h.metadata_size);
      !r) {
    return std::unexpected(r.error());
  }
  // Compared with the copy just read: the first read may have raced a writer.
  if (p.layout.meta[kChecksumWord] != header_checksum(p.layout.meta) ||
      std::memcmp(&h, p.layout.meta.data(), sizeof h) != 0) {
    return std::unexpected(corrupt_header(h.metadata_size));
  }
  p.layout.file_size = h.file_size;
  if (h.region_count <= (h.metadata_size - sizeof(FileHeader)) / sizeof(RegionEntry)) {
    p.entries.resize(h.region_count);
    for (std::size_t i = 0; i < p.entries.size(); ++i) {
      p.entries[i] = p.layout.entry(i);
    }
  }
  if (!layout_valid(p)) {
    return std::unexpected(corrupt_header(h.metadata_size));
  }
  if (file_size < h.file_size) {
    return std::unexpected(truncated(file_size, h.file_size));
  }
  std::uint64_t chunk = 1;
  for (const RegionEntry& e : p.entries) {
    p.first_chunk.push_back(chunk);
    chunk += e.chunks;
  }
  return p;
}

SnapshotId id_of(const FileHeader& h) noexcept { return SnapshotId{h.id_hi, h.id_lo}; }
SnapshotId base_of(const FileHeader& h) noexcept { return SnapshotId{h.base_hi, h.base_lo}; }

Error wrong_base(SnapshotId named, SnapshotId expected) noexcept {
  return Error::snapshot(ErrorCode::SnapshotWrongBase, named.hi, named.lo, expected.hi,
                         expected.lo);
}

// The bytes of chunk c of region e: [first page, end page) and its place in the file.
struct ChunkSpan {
  std::uint64_t p0;
  std::uint64_t p1;
  std::uint64_t offset;  // in the region
  std::uint64_t len;
};
ChunkSpan chunk_span(const FileHeader& h, const RegionEntry& e, std::uint64_t c) noexcept {
  const std::uint64_t per = h.chunk_size / h.page_size;
  const std::uint64_t p0 = c * per;
  const std::uint64_t offset = c * h.chunk_size;
  return ChunkSpan{p0, std::min(p0 + per, e.pages), offset, std::min(h.chunk_size, e.size - offset)};
}

Error corrupt_chunk(const Parsed& p, std::size_t region, std::uint64_t c) noexcept {
  const RegionEntry& e = p.entries[region];
  const ChunkSpan span = chunk_span(p.header, e, c);
  return Error::snapshot(ErrorCode::SnapshotCorrupt, e.file_offset + span.offset, span.len,
                         p.first_chunk[region] + c, 0);
}

// Reads the pages the file holds for chunk c of region i into dst + (page offset in the
// region - base), hashing them; SnapshotCorrupt when the hash differs.
Result<void> read_chunk(int fd, const Parsed& p, std::size_t i, std::uint64_t c,
                        std::uint8_t* dst, std::uint64_t base, Hasher& hasher) {
  const RegionEntry& e = p.entries[i];
  const FileHeader& h = p.header;
  const ChunkSpan span = chunk_span(h, e, c);
  hasher.reset();
  auto done = for_each_run(p.layout.bitmap(e), span.p0, span.p1,
                           [&](std::uint64_t s, std::uint64_t t) -> Result<void> {
    const std::uint64_t off = s * h.page_size;
    const auto len = static_cast<std::size_t>(std::min(t * h.page_size, e.size) - off);
    // SAFETY: the caller's dst covers [base, base + chunk) of the region or all of it, and
    // [off, off + len) lies inside the chunk and the region.
    std::uint8_t* to = dst + (off - base);
    if (auto r = pread_all(fd, to, len, e.file_offset + off, h.file_size); !r) {
      return r;
    }
    hasher.update(to, len);
    return {};
  });
  if (!done) {
    return done;
  }
  if (hasher.digest() != p.layout.checksums(e)[c]) {
    return std::unexpected(corrupt_chunk(p, i, c));
  }
  return {};
}

template <Bitmap B>
Result<GuestMemoryMmap<B>> restore_eager(int fd, const Parsed& p) {
  std::vector<std::pair<GuestAddress, std::size_t>> ranges;
  ranges.reserve(p.entries.size());
  for (const RegionEntry& e : p.entries) {
    ranges.emplace_back(GuestAddress{e.guest_base}, static_cast<std::size_t>(e.size));
  }
  auto mem = GuestMemoryMmap<B>::from_ranges(std::span<const std::pair<GuestAddress, std::size_t>>(ranges));
  if (!mem) {
    return mem;
  }
  Hasher hasher;
  std::size_t i = 0;
  for (const auto& region : mem->regions()) {
    std::uint8_t* host = region.mapping().unsafe_host_ptr();
    for (std::uint64_t c = 0; c < p.entries[i].chunks; ++c) {
      // The pages go straight into the new memory, which nobody else sees yet.
      if (auto r = read_chunk(fd, p, i, c, host, 0, hasher); !r) {
        return std::unexpected(r.error());
      }
    }
    ++i;
  }
  return mem;
}

template <Bitmap B>
Result<GuestMemoryMmap<B>> restore_lazy(int fd, const Parsed& p) {
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    return std::unexpected(Error::io(errno));
  }
  auto file = std::make_shared<const UniqueFd>(copy);
  std::vector<typename GuestMemoryMmap<B>::RegionPtr> regions;
  regions.reserve(p.entries.size());
  for (const RegionEntry& e : p.entries) {
    auto mapping = MmapRegionBuilder<B>(static_cast<std::size_t>(e.size))
                       .with_file_offset(FileOffset(file, e.file_offset))
                       .with_mmap_flags(MAP_PRIVATE | MAP_NORESERVE)
                       .build();
    if (!mapping) {
      return std::unexpected(mapping.error());
    }
    auto region = GuestRegionMmap<B>::create(std::move(*mapping), GuestAddress{e.guest_base});
    if (!region) {
      return std::unexpected(region.error());
    }
    regions.push_back(std::make_shared<const GuestRegionMmap<B>>(std::move(*region)));
  }
  return GuestMemoryMmap<B>::from_arc_regions(std::move(regions));
}

Result<void> apply_impl(std::span<const RegionView> regions, int fd,
                        const SnapshotId& expected_base) {
  auto parsed = read_header(fd);
  if (!parsed) {
    return std::unexpected(parsed.error());
  }
  const Parsed& p = *parsed;
  if ((p.header.flags & kFlagDiff) == 0 || base_of(p.header) != expected_base) {
    return std::unexpected(wrong_base(base_of(p.header), expected_base));
  }
  const std::size_t n = std::max(regions.size(), p.entries.size());
  for (std::size_t i = 0; i < n; ++i) {
    if (i >= regions.size()) {
      return std::unexpected(Error::snapshot(ErrorCode::SnapshotLayoutMismatch,
                                             p.entries[i].guest_base, p.entries[i].size, i, 0));
    }
    if (i >= p.entries.size() || regions[i].guest_base != p.entries[i].guest_base ||
        regions[i].size != p.entries[i].size) {
      return std::unexpected(Error::snapshot(ErrorCode::SnapshotLayoutMismatch,
                                             regions[i].guest_base, regions[i].size, i, 0));
    }
    if (p.entries[i].pages_present != 0 && !regions[i].writable) {
      return std::unexpected(Error::protection_violation(regions[i].guest_base, regions[i].size,
                                                         Permissions::Write));
    }
  }
  // First pass: verify every chunk, reading into a scratch buffer.
  Hasher hasher;
  std::vector<std::uint8_t> scratch(p.header.chunk_size);
  for (std::size_t i = 0; i < p.entries.size(); ++i) {
    for (std::uint64_t c = 0; c < p.entries[i].chunks; ++c) {
      const ChunkSpan span = chunk_span(p.header, p.entries[i], c);
      if (auto r = read_chunk(fd, p, i, c, scratch.data(), span.offset, hasher); !r) {
        return r;
      }
    }
  }
  // Second pass: straight into guest memory.
  for (std::size_t i = 0; i < p.entries.size(); ++i) {
    const RegionEntry& e = p.entries[i];
    const RegionView& r = regions[i];
    auto done = for_each_run(p.layout.bitmap(e), 0, e.pages,
                             [&](std::uint64_t s, std::uint64_t t) -> Result<void> {
      const std::uint64_t off = s * p.header.page_size;
      const auto len = static_cast<std::size_t>(std::min(t * p.header.page_size, e.size) - off);
      // SAFETY: [off, off + len) lies inside the region (same layout, checked above), which
      // is writable and alive while the caller's memory is.
      if (auto rd = pread_all(fd, r.host + off, len, e.file_offset + off, p.header.file_size); !rd) {
        return rd;
      }
      if (r.bitmap != nullptr) {
        r.bitmap->mark_dirty(off, len);
      }
      return {};
    });
    if (!done) {
      return done;
    }
  }
  return {};
}

}  // namespace

template <Bitmap B>
Result<SnapshotId> save_snapshot(const GuestMemoryMmap<B>& mem, BorrowedFd out) {
  if constexpr (std::same_as<B, AtomicBitmap>) {
    // Before any page is read: a write from now on is in the next diff.
    for (const auto& region : mem.regions()) {
      region.bitmap().reset();
    }
  }
  const std::vector<RegionView> views = views_of(mem);
  return save_impl(views, out.get(), nullptr, {});
}

Result<SnapshotId> save_snapshot_diff(const GuestMemoryMmap<AtomicBitmap>& mem,
                                      const SnapshotId& base, BorrowedFd out) {
  if (base == SnapshotId{}) {
    return std::unexpected(wrong_base(base, base));
  }
  const std::vector<RegionView> views = views_of(mem);
  const std::uint64_t page_size = detail::page_size();
  std::vector<std::vector<std::uint64_t>> dirty;
  dirty.reserve(views.size());
  for (const RegionView& r : views) {
    const AtomicBitmap& bitmap = *r.bitmap;
    std::vector<std::uint64_t> words = bitmap.get_and_reset();
    const std::uint64_t pages = div_ceil(r.size, page_size);
    if (bitmap.page_size() == page_size && words.size() == div_ceil(pages, 64)) {
      dirty.push_back(std::move(words));
      continue;
    }
    // Another page size: every snapshot page that a dirty bitmap page overlaps.
    std::vector<std::uint64_t> converted(div_ceil(pages, 64), 0);
    const std::uint64_t bp = bitmap.page_size();
    for (std::uint64_t w = 0; w < words.size(); ++w) {
      for (std::uint64_t bits = words[w]; bits != 0; bits &= bits - 1) {
        const std::uint64_t b = w * 64 + static_cast<std::uint64_t>(std::countr_zero(bits));
        const std::uint64_t from = b * bp;
        const std::uint64_t to = std::min(r.size, from + bp);
        if (from < to) {
          set_bits(converted.data(), from / page_size, div_ceil(to, page_size));
        }
      }
    }
    dirty.push_back(std::move(converted));
  }
  return save_impl(views, out.get(), &base, dirty);
}

template <Bitmap B>
Result<GuestMemoryMmap<B>> restore_snapshot(BorrowedFd in, RestoreMode mode) {
  auto parsed = read_header(in.get());
  if (!parsed) {
    return std::unexpected(parsed.error());
  }
  if ((parsed->header.flags & kFlagDiff) != 0) {
    return std::unexpected(wrong_base(base_of(parsed->header), SnapshotId{}));
  }
  if (mode == RestoreMode::Lazy) {
    return restore_lazy<B>(in.get(), *parsed);
  }
  return restore_eager<B>(in.get(), *parsed);
}

template <Bitmap B>
Result<void> apply_snapshot_diff(const GuestMemoryMmap<B>& mem, BorrowedFd diff,
                                 const SnapshotId& expected_base) {
  const std::vector<RegionView> views = views_of(mem);
  return apply_impl(views, diff.get(), expected_base);
}

Result<SnapshotInfo> read_snapshot_info(BorrowedFd in) {
  auto parsed = read_header(in.get());
  if (!parsed) {
    return std::unexpected(parsed.error());
  }
  const FileHeader& h = parsed->header;
  SnapshotInfo info;
  info.version = h.version;
  info.id = id_of(h);
  if ((h.flags & kFlagDiff) != 0) {
    info.base = base_of(h);
  }
  info.page_size = h.page_size;
  info.file_size = h.file_size;
  for (const RegionEntry& e : parsed->entries) {
    info.regions.push_back(
        SnapshotRegionInfo{GuestAddress{e.guest_base}, e.size, e.file_offset, e.pages_present});
  }
  return info;
}

Result<void> verify_snapshot(BorrowedFd in) {
  auto parsed = read_header(in.get());
  if (!parsed) {
    return std::unexpected(parsed.error());
  }
  const Parsed& p = *parsed;
  const FileHeader& h = p.header;
  std::vector<std::uint8_t> buffer(h.chunk_size);
  Hasher hasher;
  for (std::size_t i = 0; i < p.entries.size(); ++i) {
    const RegionEntry& e = p.entries[i];
    const std::uint64_t* bits = p.layout.bitmap(e);
    for (std::uint64_t c = 0; c < e.chunks; ++c) {
      const ChunkSpan span = chunk_span(h, e, c);
      if (auto r = pread_all(in.get(), buffer.data(), static_cast<std::size_t>(span.len),
                             e.file_offset + span.offset, h.file_size);
          !r) {
        return r;
      }
      hasher.reset();
      for (std::uint64_t page = span.p0; page < span.p1; ++page) {
        const std::uint64_t off = page * h.page_size - span.offset;
        const auto len = static_cast<std::size_t>(std::min(h.page_size, span.len - off));
        const bool held = ((bits[page / 64] >> (page % 64)) & 1U) != 0;
        if (held) {
          hasher.update(buffer.data() + off, len);
        } else if (!all_zero(buffer.data() + off, len)) {
          return std::unexpected(corrupt_chunk(p, i, c));
        }
      }
      if (hasher.digest() != p.layout.checksums(e)[c]) {
        return std::unexpected(corrupt_chunk(p, i, c));
      }
    }
  }
  return {};
}

template Result<SnapshotId> save_snapshot(const GuestMemoryMmap<NoBitmap>&, BorrowedFd);
template Result<SnapshotId> save_snapshot(const GuestMemoryMmap<AtomicBitmap>&, BorrowedFd);
template Result<GuestMemoryMmap<NoBitmap>> restore_snapshot(BorrowedFd, RestoreMode);
template Result<GuestMemoryMmap<AtomicBitmap>> restore_snapshot(BorrowedFd, RestoreMode);
template Result<void> apply_snapshot_diff(const GuestMemoryMmap<NoBitmap>&, BorrowedFd,
                                          const SnapshotId&);
template Result<void> apply_snapshot_diff(const GuestMemoryMmap<AtomicBitmap>&, BorrowedFd,
                                          const SnapshotId&);

}  // namespace guestmem
