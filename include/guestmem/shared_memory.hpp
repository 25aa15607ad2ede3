// guestmem: memory shared with other processes through a file descriptor.
//
// `SharedMemory` is a memfd: anonymous memory with a name, a size and a descriptor that can
// be passed to another process (a vhost-user back end, a device process) over a Unix
// socket. Map it with `MmapRegionBuilder::from_shared_memory`; every mapping of it, in any
// process, sees the same bytes.
//
// Seals (fcntl F_ADD_SEALS) make promises that hold against every holder of the descriptor:
// once the size is sealed (`Seal::Shrink | Seal::Grow`), no peer can truncate the memory
// under a mapping and turn accesses into SIGBUS. A memfd is created with sealing allowed;
// `Seal::NoMoreSeals` forbids adding further seals.
//
//   auto shm = SharedMemory::create("guest-ram", 0x100000);
//   shm->add_seals(Seal::Shrink | Seal::Grow);              // the size is now fixed
//   auto region = MmapRegionBuilder<>(0x100000).from_shared_memory(*shm).build();
//   send_fd(socket, shm->fd());                             // the peer maps the same memory
#pragma once

#include <fcntl.h>

#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include "guestmem/error.hpp"
#include "guestmem/fd.hpp"

namespace guestmem {

/// Seals of a memfd (fcntl F_ADD_SEALS), combined with `|`.
enum class Seal : unsigned {
  None = 0,
  /// No seal can be added any more (F_SEAL_SEAL).
  NoMoreSeals = F_SEAL_SEAL,
  /// The size cannot shrink (F_SEAL_SHRINK).
  Shrink = F_SEAL_SHRINK,
  /// The size cannot grow (F_SEAL_GROW).
  Grow = F_SEAL_GROW,
  /// The contents cannot be written, through write(2) or a shared writable mapping
  /// (F_SEAL_WRITE); adding it fails with EBUSY while such a mapping exists.
  Write = F_SEAL_WRITE,
  /// Existing writable mappings may still write, but no new write access is granted
  /// (F_SEAL_FUTURE_WRITE).
  FutureWrite = F_SEAL_FUTURE_WRITE,
};

[[nodiscard]] constexpr Seal operator|(Seal a, Seal b) noexcept {
  return static_cast<Seal>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
[[nodiscard]] constexpr Seal operator&(Seal a, Seal b) noexcept {
  return static_cast<Seal>(static_cast<unsigned>(a) & static_cast<unsigned>(b));
}

/// A memfd. Moves, never copies (a moved-from object must not be used); the descriptor is
/// shared with the mappings made from it and closed when the last of them and this object
/// are gone.
class GUESTMEM_API SharedMemory {
 public:
  /// A new memfd named `name` (shown in `/proc/<pid>/maps` as `/memfd:<name>`) of `size`
  /// zero bytes, close-on-exec, with sealing allowed.
  /// Errors: IoError(EINVAL) when `name` holds a NUL byte or is longer than 249 bytes, or when
  /// `size` does not fit in off_t; IoError(errno) when memfd_create or ftruncate fails.
  static Result<SharedMemory> create(std::string_view name, std::uint64_t size);

  /// Takes over the memfd; the moved-from object must not be used.
  SharedMemory(SharedMemory&&) noexcept = default;
  /// Gives up this object's share of its memfd and takes over the other's.
  SharedMemory& operator=(SharedMemory&&) noexcept = default;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory() = default;

  /// The current size, which a peer may have changed unless the size is sealed.
  /// Errors: IoError(errno) when fstat fails.
  [[nodiscard]] Result<std::uint64_t> size() const;

  /// Changes the size; new bytes read as zero.
  /// Errors: IoError(EPERM) when a seal forbids the change; IoError(EINVAL) when `size` does
  /// not fit in off_t; IoError(errno) for other ftruncate failures.
  /// Concurrency: shrinking under a live mapping of the removed range makes accesses to it
  /// fault (SIGBUS); seal the size to rule that out.
  Result<void> resize(std::uint64_t size);

  /// Adds seals. Errors: IoError(EPERM) when Seal::NoMoreSeals is set; IoError(EBUSY) for
  /// Seal::Write while a shared writable mapping exists; IoError(errno) otherwise.
  Result<void> add_seals(Seal seals);
  /// The seals in force. Errors: IoError(errno) when fcntl fails.
  [[nodiscard]] Result<Seal> seals() const;

  /// The descriptor, for passing to another process (SCM_RIGHTS) or to mmap.
  /// Validity: while this object or a mapping made from it is alive.
  [[nodiscard]] int fd() const noexcept { return file_->get(); }
  /// The shared owner of the descriptor, for mappings that keep it open.
  [[nodiscard]] const std::shared_ptr<const UniqueFd>& file() const noexcept { return file_; }

 private:
  explicit SharedMemory(UniqueFd fd)
      : file_(std::make_shared<const UniqueFd>(std::move(fd))) {}

  std::shared_ptr<const UniqueFd> file_;
};

}  // namespace guestmem
