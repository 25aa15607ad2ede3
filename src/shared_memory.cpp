#include "guestmem/shared_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <string>

namespace guestmem {
namespace {

// The longest name memfd_create accepts (NAME_MAX minus the "memfd:" prefix).
constexpr std::size_t kMaxNameLength = 249;

bool fits_off_t(std::uint64_t size) {
  return size <= static_cast<std::uint64_t>(std::numeric_limits<off_t>::max());
}

}  // namespace

Result<SharedMemory> SharedMemory::create(std::string_view name, std::uint64_t size) {
  if (name.size() > kMaxNameLength || name.find('\0') != std::string_view::npos ||
      !fits_off_t(size)) {
    return std::unexpected(Error::io(EINVAL));
  }
  const std::string c_name(name);
  UniqueFd fd{::memfd_create(c_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING)};
  if (!fd) {
    return std::unexpected(Error::io(errno));
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return std::unexpected(Error::io(errno));
  }
  return SharedMemory(std::move(fd));
}

Result<std::uint64_t> SharedMemory::size() const {
  struct stat st {};
  if (::fstat(fd(), &st) != 0) {
    return std::unexpected(Error::io(errno));
  }
  return static_cast<std::uint64_t>(st.st_size);
}

Result<void> SharedMemory::resize(std::uint64_t size) {
  if (!fits_off_t(size)) {
    return std::unexpected(Error::io(EINVAL));
  }
  if (::ftruncate(fd(), static_cast<off_t>(size)) != 0) {
    return std::unexpected(Error::io(errno));
  }
  return {};
}

Result<void> SharedMemory::add_seals(Seal seals) {
  if (::fcntl(fd(), F_ADD_SEALS, static_cast<int>(seals)) != 0) {
    return std::unexpected(Error::io(errno));
  }
  return {};
}

Result<Seal> SharedMemory::seals() const {
  const int seals = ::fcntl(fd(), F_GET_SEALS);
  if (seals < 0) {
    return std::unexpected(Error::io(errno));
  }
  return static_cast<Seal>(seals);
}

}  // namespace guestmem
