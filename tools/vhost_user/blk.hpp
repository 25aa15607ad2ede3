// guestmem vhost-user: a virtio-blk device serving a raw image file.
//
// `BlkDevice` serves one request given as its descriptor chain (virtio specification, "Block
// Device"): a 16-byte device-readable header, then the data, then a one-byte device-writable
// status. The device-readable buffers are read as one byte stream and the device-writable
// ones as another, so a driver may split or merge buffers as it likes (VIRTIO_F_VERSION_1
// implies any layout). Data moves between the image and guest memory with preadv/pwritev on
// iovecs built from guest-memory slices: no bounce buffer. A request that asks for the wrong
// direction (data to read into a device-readable buffer, data to write from a device-writable
// one), runs past the image, or whose buffers are not guest memory completes with
// VIRTIO_BLK_S_IOERR; an unknown type with VIRTIO_BLK_S_UNSUPP. Nothing is ever written
// outside the chain's device-writable buffers.
//
//   auto device = BlkDevice::open("disk.img", BlkOptions{});
//   std::uint32_t written = device->handle(mem, chain, scratch);   // the used length
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <sys/uio.h>

#include <guestmem/error.hpp>
#include <guestmem/fd.hpp>
#include <guestmem/guest_memory.hpp>

#include "vhost_user/protocol.hpp"
#include "vhost_user/virtqueue.hpp"

namespace guestmem::vhost_user {

struct BlkOptions {
  bool read_only = false;
  std::uint16_t num_queues = 1;
};

/// Largest DISCARD or WRITE_ZEROES segment count and sector count the device accepts.
inline constexpr std::uint32_t kBlkMaxDiscardSegments = 1;
inline constexpr std::uint32_t kBlkMaxDiscardSectors = 1U << 22;

class BlkDevice {
 public:
  /// Opens the image at `path` (read-write unless options.read_only).
  /// Errors: IoError with errno when it cannot be opened or its size read; IoError(EINVAL)
  /// when it is not a whole number of 512-byte sectors or is empty.
  static Result<BlkDevice> open(const std::string& path, BlkOptions options);

  /// A device on an image already open (`image` readable, and writable unless read-only).
  /// Errors: as open.
  static Result<BlkDevice> from_fd(UniqueFd image, BlkOptions options);

  /// The virtio feature bits the device offers (vhost-user and ring bits included).
  [[nodiscard]] std::uint64_t features() const noexcept;
  /// The configuration space the device presents.
  [[nodiscard]] BlkConfig config() const noexcept;
  [[nodiscard]] std::uint64_t capacity_sectors() const noexcept { return sectors_; }
  [[nodiscard]] const BlkOptions& options() const noexcept { return options_; }

  /// Serves the request in `chain` and writes its status byte as the last byte of the
  /// device-writable buffers. `scratch` holds the iovecs (kept by the caller to reuse).
  /// Returns the used length: the bytes of device-writable buffers the request filled,
  /// including the status byte; 0 when the chain has no device-writable byte to hold a
  /// status (it is logged and nothing is written).
  /// Concurrency: any number of threads may call it at once (positional I/O only); the
  /// driver may change the chain's buffers meanwhile, which changes only the data moved.
  std::uint32_t handle(const GuestMemoryMmap<>& mem, std::span<const Descriptor> chain,
                       std::vector<iovec>& scratch) const;

 private:
  BlkDevice(UniqueFd image, std::uint64_t sectors, BlkOptions options) noexcept
      : image_(std::move(image)), sectors_(sectors), options_(options) {}

  // Serves a request whose status goes to `status_at`; returns its status and the data
  // bytes written into the chain.
  struct Outcome {
    BlkStatus status;
    std::uint32_t written;
  };
  Outcome serve(const GuestMemoryMmap<>& mem, std::span<const Descriptor> chain,
                std::vector<iovec>& scratch) const;

  UniqueFd image_;
  std::uint64_t sectors_;
  BlkOptions options_;
};

}  // namespace guestmem::vhost_user
