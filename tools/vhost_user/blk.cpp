#include "vhost_user/blk.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <limits>
#include <string_view>

#include <guestmem/detail/config.hpp>
#include <guestmem/permissions.hpp>

#include "vhost_user/log.hpp"

#if defined(GUESTMEM_TSAN)
// ThreadSanitizer's calls that pause race detection for the calling thread (see src/io.cpp).
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

namespace guestmem::vhost_user {
namespace {

constexpr std::string_view kDeviceId = "guestmem-vhost-blk";
// Data segments a request may carry (seg_max); the header and status take two more entries.
constexpr std::uint32_t kSegMax = 126;

// Bytes of a run of descriptors.
std::uint64_t total_len(std::span<const Descriptor> descs) noexcept {
  std::uint64_t total = 0;
  for (const Descriptor& d : descs) {
    total += d.len;
  }
  return total;
}

// Appends the iovecs of bytes [skip, skip + length) of the stream formed by `descs`.
// Errors: the guest-memory error of the first piece that is not memory (a hole, the end of
// memory) or that `access` does not allow.
Result<void> gather(const GuestMemoryMmap<>& mem, std::span<const Descriptor> descs,
                    std::uint64_t skip, std::uint64_t length, Permissions access,
                    std::vector<iovec>& out) {
  for (const Descriptor& d : descs) {
    if (length == 0) {
      break;
    }
    if (skip >= d.len) {
      skip -= d.len;
      continue;
    }
    const std::uint64_t take = std::min<std::uint64_t>(d.len - skip, length);
    auto pieces = mem.get_slices(GuestAddress{d.addr.raw_value() + skip},
                                 static_cast<std::size_t>(take), access);
    for (auto& piece : *pieces) {
      if (!piece) {
        return std::unexpected(piece.error());
      }
      // SAFETY: the slice is a live view of guest memory that stays mapped while `mem` (the
      // caller's snapshot) is held; the kernel reports a vanished page as EFAULT.
      out.push_back(iovec{piece->unsafe_host_ptr(), piece->size()});
    }
    skip = 0;
    length -= take;
  }
  return {};
}

// Copies bytes [skip, skip + out.size()) of the stream formed by `descs` into `out`.
// Errors: the fault-tolerant read's error; PartialBuffer when the stream is shorter.
Result<void> read_stream(const GuestMemoryMmap<>& mem, std::span<const Descriptor> descs,
                         std::uint64_t skip, std::span<std::byte> out) {
  std::size_t done = 0;
  for (const Descriptor& d : descs) {
    if (done == out.size()) {
      break;
    }
    if (skip >= d.len) {
      skip -= d.len;
      continue;
    }
    const std::size_t take = static_cast<std::size_t>(
        std::min<std::uint64_t>(d.len - skip, out.size() - done));
    auto read = mem.try_read_slice(out.subspan(done, take), GuestAddress{d.addr.raw_value() + skip});
    if (!read) {
      return std::unexpected(read.error());
    }
    done += take;
    skip = 0;
  }
  if (done != out.size()) {
    return std::unexpected(Error::partial_buffer(out.size(), done));
  }
  return {};
}

// Copies `in` to the start of the stream formed by `descs`.
// Errors: as read_stream.
Result<void> write_stream(const GuestMemoryMmap<>& mem, std::span<const Descriptor> descs,
                          std::span<const std::byte> in) {
  std::size_t done = 0;
  for (const Descriptor& d : descs) {
    if (done == in.size()) {
      break;
    }
    const std::size_t take = std::min<std::size_t>(d.len, in.size() - done);
    if (auto written = mem.try_write_slice(in.subspan(done, take), d.addr); !written) {
      return std::unexpected(written.error());
    }
    done += take;
  }
  if (done != in.size()) {
    return std::unexpected(Error::partial_buffer(in.size(), done));
  }
  return {};
}

enum class Direction { ToGuest, FromGuest };

#if defined(GUESTMEM_TSAN)
// Touches the bytes the kernel moved with relaxed atomics that change nothing, so TSan sees
// the copy as the relaxed atomic copy guestmem's own accesses are (see src/io.cpp).
void touch_as_atomics(std::span<const iovec> iov, std::size_t count, Direction direction) {
  for (const iovec& piece : iov) {
    const std::size_t len = std::min(count, piece.iov_len);
    auto* bytes = static_cast<std::uint8_t*>(piece.iov_base);
    for (std::size_t i = 0; i < len; ++i) {
      // SAFETY: the kernel has just moved these bytes, so they are mapped; an atomic add of 0
      // keeps whatever the driver stores meanwhile.
      if (direction == Direction::ToGuest) {
        __atomic_fetch_add(bytes + i, 0, __ATOMIC_RELAXED);
      } else {
        (void)__atomic_load_n(bytes + i, __ATOMIC_RELAXED);
      }
    }
    count -= len;
  }
}
#endif

// One preadv or pwritev of `iov` at `offset`.
ssize_t positional_io(int fd, std::span<const iovec> iov, off_t offset, Direction direction) {
  const int count = static_cast<int>(iov.size());
#if defined(GUESTMEM_TSAN)
  __tsan_ignore_thread_begin();
#endif
  // SAFETY: every iovec is a live guest-memory slice of the caller's snapshot (gather); the
  // kernel touches only those bytes and returns EFAULT where a page has vanished.
  const ssize_t n = direction == Direction::ToGuest ? ::preadv(fd, iov.data(), count, offset)
                                                    : ::pwritev(fd, iov.data(), count, offset);
#if defined(GUESTMEM_TSAN)
  const int saved_errno = errno;
  __tsan_ignore_thread_end();
  if (n > 0) {
    touch_as_atomics(iov, static_cast<std::size_t>(n), direction);
  }
  errno = saved_errno;
#endif
  return n;
}

// Moves every byte of `iov` between the image at `offset` and guest memory, calling the
// kernel again after a short transfer. `iov` is consumed.
// Errors: IoError with errno (EFAULT when guest memory vanished); IoError(EIO) when the
// image ends early.
Result<void> transfer_all(int fd, std::span<iovec> iov, std::uint64_t offset,
                          Direction direction) {
  while (!iov.empty()) {
    const std::span<const iovec> batch = iov.first(std::min<std::size_t>(iov.size(), IOV_MAX));
    const ssize_t n = positional_io(fd, batch, static_cast<off_t>(offset), direction);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return std::unexpected(Error::io(errno));
    }
    if (n == 0) {
      return std::unexpected(Error::io(EIO));
    }
    auto moved = static_cast<std::size_t>(n);
    offset += moved;
    while (!iov.empty() && moved >= iov.front().iov_len) {
      moved -= iov.front().iov_len;
      iov = iov.subspan(1);
    }
    if (moved > 0) {
      iov.front().iov_base = static_cast<std::uint8_t*>(iov.front().iov_base) + moved;
      iov.front().iov_len -= moved;
    }
  }
  return {};
}

// Whether `bytes` starting at `sector` lie inside an image of `sectors` sectors.
bool in_image(std::uint64_t sector, std::uint64_t bytes, std::uint64_t sectors) noexcept {
  const std::uint64_t count = bytes / kSectorSize;
  return sector <= sectors && count <= sectors - sector;
}

}  // namespace

Result<BlkDevice> BlkDevice::open(const std::string& path, BlkOptions options) {
  const int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  UniqueFd fd{::open(path.c_str(), flags)};
  if (!fd) {
    return std::unexpected(Error::io(errno));
  }
  return from_fd(std::move(fd), options);
}

Result<BlkDevice> BlkDevice::from_fd(UniqueFd image, BlkOptions options) {
  struct stat st {};
  if (::fstat(image.get(), &st) != 0) {
    return std::unexpected(Error::io(errno));
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size == 0 || size % kSectorSize != 0 || options.num_queues == 0) {
    return std::unexpected(Error::io(EINVAL));
  }
  return BlkDevice(std::move(image), size / kSectorSize, options);
}

std::uint64_t BlkDevice::features() const noexcept {
  std::uint64_t bits = feature_bit(feature::kVersion1) | feature_bit(feature::kRingIndirectDesc) |
                       feature_bit(feature::kRingEventIdx) |
                       feature_bit(feature::kProtocolFeatures) | feature_bit(feature::kBlkSegMax) |
                       feature_bit(feature::kBlkBlkSize) | feature_bit(feature::kBlkFlush) |
                       feature_bit(feature::kBlkMq);
  if (options_.read_only) {
    bits |= feature_bit(feature::kBlkRo);
  } else {
    bits |= feature_bit(feature::kBlkDiscard) | feature_bit(feature::kBlkWriteZeroes);
  }
  return bits;
}

BlkConfig BlkDevice::config() const noexcept {
  BlkConfig config{};
  config.capacity = Le64(sectors_);
  config.seg_max = Le32(kSegMax);
  config.blk_size = Le32(static_cast<std::uint32_t>(kSectorSize));
  config.num_queues = Le16(options_.num_queues);
  config.max_discard_sectors = Le32(kBlkMaxDiscardSectors);
  config.max_discard_seg = Le32(kBlkMaxDiscardSegments);
  config.discard_sector_alignment = Le32(1);
  config.max_write_zeroes_sectors = Le32(kBlkMaxDiscardSectors);
  config.max_write_zeroes_seg = Le32(kBlkMaxDiscardSegments);
  return config;
}

std::uint32_t BlkDevice::handle(const GuestMemoryMmap<>& mem, std::span<const Descriptor> chain,
                                std::vector<iovec>& scratch) const {
  // The status byte is the last byte of the last device-writable buffer that has any.
  auto last = std::find_if(chain.rbegin(), chain.rend(),
                           [](const Descriptor& d) { return d.writable && d.len > 0; });
  if (last == chain.rend()) {
    log_line("request without a device-writable status byte: returned unanswered");
    return 0;
  }
  const Outcome outcome = serve(mem, chain, scratch);
  const GuestAddress status_at{last->addr.raw_value() + (last->len - 1)};
  if (!mem.try_write_obj(static_cast<std::uint8_t>(outcome.status), status_at)) {
    log_line(format_text("status byte at guest address {:#x} is not writable memory",
                         status_at.raw_value()));
    return 0;
  }
  return outcome.written + 1;
}

BlkDevice::Outcome BlkDevice::serve(const GuestMemoryMmap<>& mem,
                                    std::span<const Descriptor> chain,
                                    std::vector<iovec>& scratch) const {
  constexpr Outcome kIoErr{BlkStatus::IoErr, 0};
  // read_chain puts every device-readable buffer before the device-writable ones.
  const auto split = std::find_if(chain.begin(), chain.end(),
                                  [](const Descriptor& d) { return d.writable; });
  const std::span<const Descriptor> readable(chain.begin(), split);
  const std::span<const Descriptor> writable(split, chain.end());
  const std::uint64_t readable_len = total_len(readable);
  const std::uint64_t writable_len = total_len(writable);  // at least 1: the status byte

  BlkRequestHeader header;
  if (auto read = read_stream(mem, readable, 0, writable_bytes_of(header)); !read) {
    log_line(format_text("request header unreadable: {}", read.error().message()));
    return kIoErr;
  }
  const std::uint32_t type = header.type.to_native();
  const std::uint64_t sector = header.sector.to_native();
  const std::uint64_t payload_in = readable_len - sizeof(header);
  const std::uint64_t payload_out = writable_len - 1;
  scratch.clear();

  switch (static_cast<BlkRequestType>(type)) {
    case BlkRequestType::In:
    case BlkRequestType::Out: {
      const bool in = type == to_underlying(BlkRequestType::In);
      // IN data goes only into device-writable buffers and OUT data comes only from
      // device-readable ones; a chain that puts data on the other side is refused whole.
      if (in ? payload_in != 0 : payload_out != 0) {
        log_line(format_text("{} request with data buffers of the wrong direction",
                             in ? "read" : "write"));
        return kIoErr;
      }
      if (!in && options_.read_only) {
        log_line("write request to a read-only image");
        return kIoErr;
      }
      const std::uint64_t bytes = in ? payload_out : payload_in;
      if (bytes % kSectorSize != 0 || !in_image(sector, bytes, sectors_) ||
          bytes > std::numeric_limits<std::uint32_t>::max()) {
        log_line(format_text("request of {} bytes at sector {} is outside the image of {} "
                             "sectors or not whole sectors", bytes, sector, sectors_));
        return kIoErr;
      }
      auto gathered = in ? gather(mem, writable, 0, bytes, Permissions::Write, scratch)
                         : gather(mem, readable, sizeof(header), bytes, Permissions::Read, scratch);
      if (!gathered) {
        log_line(format_text("request buffer is not guest memory: {}", gathered.error().message()));
        return kIoErr;
      }
      auto moved = transfer_all(image_.get(), scratch, sector * kSectorSize,
                                in ? Direction::ToGuest : Direction::FromGuest);
      if (!moved) {
        log_line(format_text("{} at sector {} failed: {}", in ? "read" : "write", sector,
                             moved.error().message()));
        return kIoErr;
      }
      return Outcome{BlkStatus::Ok, in ? static_cast<std::uint32_t>(bytes) : 0};
    }
    case BlkRequestType::Flush:
      if (::fdatasync(image_.get()) != 0) {
        log_line(format_text("flush failed: errno {}", errno));
        return kIoErr;
      }
      return Outcome{BlkStatus::Ok, 0};
    case BlkRequestType::GetId: {
      std::array<std::byte, kBlkIdBytes> id{};
      std::memcpy(id.data(), kDeviceId.data(), kDeviceId.size());
      const std::size_t count = static_cast<std::size_t>(std::min<std::uint64_t>(id.size(), payload_out));
      if (auto written = write_stream(mem, writable, std::span(id).first(count)); !written) {
        log_line(format_text("GET_ID buffer is not writable memory: {}", written.error().message()));
        return kIoErr;
      }
      return Outcome{BlkStatus::Ok, static_cast<std::uint32_t>(count)};
    }
    case BlkRequestType::Discard:
    case BlkRequestType::WriteZeroes: {
      const bool discard = type == to_underlying(BlkRequestType::Discard);
      if (options_.read_only || payload_out != 0 || payload_in == 0 ||
          payload_in % sizeof(BlkDiscardWriteZeroes) != 0 ||
          payload_in / sizeof(BlkDiscardWriteZeroes) > kBlkMaxDiscardSegments) {
        log_line("discard or write-zeroes request with a malformed segment list");
        return kIoErr;
      }
      BlkDiscardWriteZeroes segment;
      if (auto read = read_stream(mem, readable, sizeof(header), writable_bytes_of(segment)); !read) {
        log_line(format_text("discard segment unreadable: {}", read.error().message()));
        return kIoErr;
      }
      const std::uint64_t first = segment.sector.to_native();
      const std::uint32_t count = segment.num_sectors.to_native();
      const std::uint32_t flags = segment.flags.to_native();
      if ((discard && flags != 0) || (flags & ~kBlkWriteZeroesFlagUnmap) != 0) {
        return Outcome{BlkStatus::Unsupp, 0};
      }
      if (count > kBlkMaxDiscardSectors || !in_image(first, std::uint64_t{count} * kSectorSize, sectors_)) {
        log_line(format_text("discard of {} sectors at {} is outside the image", count, first));
        return kIoErr;
      }
      const auto offset = static_cast<off_t>(first * kSectorSize);
      const auto length = static_cast<off_t>(std::uint64_t{count} * kSectorSize);
      int done = discard ? ::fallocate(image_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                       offset, length)
                         : ::fallocate(image_.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                                       offset, length);
      if (done != 0 && errno == EOPNOTSUPP) {
        // Discarding is advisory; zeroing falls back to punching a hole, which reads back as
        // zeros on every file system that supports it.
        done = discard ? 0
                       : ::fallocate(image_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                     offset, length);
      }
      if (done != 0) {
        log_line(format_text("discard or write-zeroes failed: errno {}", errno));
        return kIoErr;
      }
      return Outcome{BlkStatus::Ok, 0};
    }
    default:
      return Outcome{BlkStatus::Unsupp, 0};
  }
}

}  // namespace guestmem::vhost_user
