#include "guestmem/mmap_region.hpp"

#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>

namespace guestmem::detail {
namespace {

// The size of what `fd` refers to, when it has one: regular files (memfds included) by fstat,
// block devices by BLKGETSIZE64. std::nullopt for anything else (character devices, ...).
std::optional<std::uint64_t> file_size(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return std::nullopt;
  }
  if (S_ISREG(st.st_mode)) {
    return static_cast<std::uint64_t>(st.st_size);
  }
  if (S_ISBLK(st.st_mode)) {
    std::uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) == 0) {
      return bytes;
    }
  }
  return std::nullopt;
}

// Checks that the file holds [start, start + size).
Result<void> check_file_range(int fd, std::uint64_t start, std::size_t size) {
  std::uint64_t end = 0;
  if (__builtin_add_overflow(start, static_cast<std::uint64_t>(size), &end) ||
      end > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max())) {
    return std::unexpected(Error::at(ErrorCode::InvalidOffsetLength, start, size));
  }
  if (auto length = file_size(fd); length && *length < end) {
    return std::unexpected(Error::mapping_past_eof(start, size, *length));
  }
  return {};
}

std::optional<bool> detect_hugetlbfs(const Mapping::Options& options) {
  if (options.hugetlbfs) {
    return options.hugetlbfs;
  }
  if (options.file) {
    struct statfs fs {};
    if (::fstatfs(options.file->get(), &fs) == 0) {
      return static_cast<unsigned long>(fs.f_type) == HUGETLBFS_MAGIC;
    }
    return std::nullopt;
  }
  if ((options.flags & MAP_HUGETLB) != 0) {
    return true;
  }
  return std::nullopt;
}

}  // namespace

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

Result<Mapping> Mapping::create(const Options& options) {
  if (options.external != nullptr) {
    if (reinterpret_cast<std::uintptr_t>(options.external) % page_size() != 0) {
      return std::unexpected(
          Error::at(ErrorCode::InvalidPointer, reinterpret_cast<std::uintptr_t>(options.external)));
    }
    return Mapping(options.external, options, detect_hugetlbfs(options), /*owned=*/false);
  }
  if ((options.flags & MAP_FIXED) != 0) {
    return std::unexpected(Error(ErrorCode::MapFixed));
  }
  if (options.size == 0) {
    return std::unexpected(Error::mapping_failed(EINVAL, 0));
  }
  int fd = -1;
  off_t offset = 0;
  if (options.file) {
    if (auto ok = check_file_range(options.file->get(), options.file_start, options.size); !ok) {
      return std::unexpected(ok.error());
    }
    fd = options.file->get();
    offset = static_cast<off_t>(options.file_start);
  }
  // SAFETY: no MAP_FIXED (checked above), so the kernel picks an unused range and nothing
  // existing is replaced.
  void* addr = ::mmap(nullptr, options.size, options.prot, options.flags, fd, offset);
  if (addr == MAP_FAILED) {
    return std::unexpected(Error::mapping_failed(errno, options.size));
  }
  return Mapping(static_cast<std::uint8_t*>(addr), options, detect_hugetlbfs(options),
                 /*owned=*/true);
}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    Mapping old(std::move(*this));
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    prot_ = other.prot_;
    flags_ = other.flags_;
    owned_ = std::exchange(other.owned_, false);
    hugetlbfs_ = other.hugetlbfs_;
    file_offset_ = std::move(other.file_offset_);
  }
  return *this;
}

Mapping::~Mapping() {
  if (owned_ && addr_ != nullptr) {
    // SAFETY: this object created the mapping and is its only owner; every view of it is
    // documented to die with the region.
    ::munmap(addr_, size_);
  }
}

bool Mapping::fds_overlap(const Mapping& other) const noexcept {
  if (!file_offset_ || !other.file_offset_) {
    return false;
  }
  struct stat a {};
  struct stat b {};
  if (::fstat(file_offset_->fd(), &a) != 0 || ::fstat(other.file_offset_->fd(), &b) != 0) {
    return false;
  }
  if (a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    return false;
  }
  const std::uint64_t s1 = file_offset_->start();
  const std::uint64_t s2 = other.file_offset_->start();
  // Both ranges were checked to fit in 64 bits when the mappings were created.
  return s1 < s2 ? s1 + size_ > s2 : s2 + other.size_ > s1;
}

}  // namespace guestmem::detail
