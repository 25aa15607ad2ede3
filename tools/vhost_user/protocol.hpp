// guestmem vhost-user: the wire format shared by a back end and a front end.
//
// vhost-user (QEMU docs/interop/vhost-user.rst) moves a virtio device's data plane into
// another process. The front end sends messages over a Unix stream socket: a 12-byte header
// (request, flags, payload size), then the payload, with file descriptors attached as
// SCM_RIGHTS ancillary data. vhost-user numbers are in the host's byte order; the virtio
// structures that live in guest memory (ring descriptors, the virtio-blk request header) are
// little-endian and use `Le16/32/64`.
//
// Every struct here is standard-layout, has no padding (ByteValued) and has the size the
// specification gives, checked by static_assert, so it can be sent and received byte for byte:
//
//   MessageHeader header{.request = to_underlying(Request::GetFeatures),
//                        .flags = kVersion, .size = 0};
//   send(fd, &header, sizeof(header), 0);
#pragma once

#include <guestmem/byte_valued.hpp>
#include <guestmem/endian.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace guestmem::vhost_user {

// ---------------------------------------------------------------------------------------
// Message header

/// The header that starts every message in both directions.
struct MessageHeader {
  std::uint32_t request;  ///< a `Request` (front end to back end)
  std::uint32_t flags;    ///< version in bits 0-1, `kReplyFlag`, `kNeedReplyFlag`
  std::uint32_t size;     ///< payload bytes that follow the header
};

/// The protocol version carried in bits 0-1 of `MessageHeader::flags`.
inline constexpr std::uint32_t kVersion = 0x1;
/// Mask of the version bits in `MessageHeader::flags`.
inline constexpr std::uint32_t kVersionMask = 0x3;
/// Set on every reply.
inline constexpr std::uint32_t kReplyFlag = 1U << 2;
/// The front end asks for a u64 status reply (only with `ProtocolFeature::ReplyAck`).
inline constexpr std::uint32_t kNeedReplyFlag = 1U << 3;

/// Memory regions carried by one SET_MEM_TABLE (and file descriptors in one message).
inline constexpr std::size_t kMaxMemTableRegions = 8;
/// File descriptors a single message may carry.
inline constexpr std::size_t kMaxFds = kMaxMemTableRegions;
/// Memory slots this implementation offers with `ProtocolFeature::ConfigureMemSlots`.
inline constexpr std::uint64_t kMaxMemSlots = 32;
/// Largest device configuration space a GET_CONFIG/SET_CONFIG may move.
inline constexpr std::size_t kMaxConfigSize = 256;
/// Largest payload any message this implementation accepts carries (a config message).
inline constexpr std::size_t kMaxPayloadSize = 12 + kMaxConfigSize;

/// Requests from the front end to the back end (`MessageHeader::request`).
enum class Request : std::uint32_t {
  GetFeatures = 1,
  SetFeatures = 2,
  SetOwner = 3,
  ResetOwner = 4,
  SetMemTable = 5,
  SetLogBase = 6,
  SetLogFd = 7,
  SetVringNum = 8,
  SetVringAddr = 9,
  SetVringBase = 10,
  GetVringBase = 11,
  SetVringKick = 12,
  SetVringCall = 13,
  SetVringErr = 14,
  GetProtocolFeatures = 15,
  SetProtocolFeatures = 16,
  GetQueueNum = 17,
  SetVringEnable = 18,
  SendRarp = 19,
  NetSetMtu = 20,
  SetBackendReqFd = 21,
  IotlbMsg = 22,
  SetVringEndian = 23,
  GetConfig = 24,
  SetConfig = 25,
  CreateCryptoSession = 26,
  CloseCryptoSession = 27,
  PostcopyAdvise = 28,
  PostcopyListen = 29,
  PostcopyEnd = 30,
  GetInflightFd = 31,
  SetInflightFd = 32,
  GpuSetSocket = 33,
  ResetDevice = 34,
  VringKick = 35,
  GetMaxMemSlots = 36,
  AddMemReg = 37,
  RemMemReg = 38,
  SetStatus = 39,
  GetStatus = 40,
  GetSharedObject = 41,
  SetDeviceStateFd = 42,
  CheckDeviceState = 43,
};

/// The wire value of an enum.
template <class E>
  requires std::is_enum_v<E>
[[nodiscard]] constexpr std::underlying_type_t<E> to_underlying(E value) noexcept {
  return static_cast<std::underlying_type_t<E>>(value);
}

/// The bit of a feature number in a 64-bit feature mask.
[[nodiscard]] constexpr std::uint64_t feature_bit(unsigned number) noexcept {
  return std::uint64_t{1} << number;
}

// ---------------------------------------------------------------------------------------
// Feature bits (GET_FEATURES / SET_FEATURES): virtio transport bits and vhost-user's own

namespace feature {
inline constexpr unsigned kNotifyOnEmpty = 24;       ///< VIRTIO_F_NOTIFY_ON_EMPTY
inline constexpr unsigned kRingIndirectDesc = 28;    ///< VIRTIO_RING_F_INDIRECT_DESC
inline constexpr unsigned kRingEventIdx = 29;        ///< VIRTIO_RING_F_EVENT_IDX
inline constexpr unsigned kProtocolFeatures = 30;    ///< VHOST_USER_F_PROTOCOL_FEATURES
inline constexpr unsigned kVersion1 = 32;            ///< VIRTIO_F_VERSION_1
inline constexpr unsigned kAccessPlatform = 33;      ///< VIRTIO_F_ACCESS_PLATFORM
inline constexpr unsigned kRingPacked = 34;          ///< VIRTIO_F_RING_PACKED
inline constexpr unsigned kInOrder = 35;             ///< VIRTIO_F_IN_ORDER
inline constexpr unsigned kLogAll = 26;              ///< VHOST_F_LOG_ALL

// virtio-blk device features (virtio specification, "Block Device").
inline constexpr unsigned kBlkSizeMax = 1;
inline constexpr unsigned kBlkSegMax = 2;
inline constexpr unsigned kBlkGeometry = 4;
inline constexpr unsigned kBlkRo = 5;
inline constexpr unsigned kBlkBlkSize = 6;
inline constexpr unsigned kBlkFlush = 9;
inline constexpr unsigned kBlkTopology = 10;
inline constexpr unsigned kBlkConfigWce = 11;
inline constexpr unsigned kBlkMq = 12;
inline constexpr unsigned kBlkDiscard = 13;
inline constexpr unsigned kBlkWriteZeroes = 14;
}  // namespace feature

/// Protocol feature bits (GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES).
enum class ProtocolFeature : unsigned {
  Mq = 0,
  LogShmfd = 1,
  Rarp = 2,
  ReplyAck = 3,
  Mtu = 4,
  BackendReq = 5,
  CrossEndian = 6,
  CryptoSession = 7,
  Pagefault = 8,
  Config = 9,
  BackendSendFd = 10,
  HostNotifier = 11,
  InflightShmfd = 12,
  ResetDevice = 13,
  InbandNotifications = 14,
  ConfigureMemSlots = 15,
  Status = 16,
  XenMmap = 17,
  SharedObject = 18,
  DeviceState = 19,
};

/// The bit of a protocol feature in a protocol-feature mask.
[[nodiscard]] constexpr std::uint64_t protocol_bit(ProtocolFeature f) noexcept {
  return feature_bit(to_underlying(f));
}

// ---------------------------------------------------------------------------------------
// Payloads

/// A single 64-bit payload: feature masks, the reply-ack status, queue counts, and the vring
/// file messages (SET_VRING_KICK/CALL/ERR), whose bits 0-7 hold the queue index and bit 8
/// (`kVringNoFdMask`) says no descriptor is attached.
struct U64Payload {
  std::uint64_t value;
};
inline constexpr std::uint64_t kVringIndexMask = 0xff;
inline constexpr std::uint64_t kVringNoFdMask = 1U << 8;

/// SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE.
struct VringState {
  std::uint32_t index;
  std::uint32_t num;
};

/// SET_VRING_ADDR: the three ring parts as front-end user addresses.
struct VringAddress {
  std::uint32_t index;
  std::uint32_t flags;  ///< `kVringFlagLog`
  std::uint64_t descriptor;
  std::uint64_t used;
  std::uint64_t available;
  std::uint64_t log;  ///< guest address of the used ring, for dirty logging
};
/// `VringAddress::flags`: the used ring is logged.
inline constexpr std::uint32_t kVringFlagLog = 1U << 0;

/// One region of front-end memory: where the guest sees it, its size, where the front end
/// maps it, and the offset of its first byte in the file descriptor sent with it.
struct MemoryRegion {
  std::uint64_t guest_address;
  std::uint64_t size;
  std::uint64_t user_address;
  std::uint64_t mmap_offset;
};

/// SET_MEM_TABLE: `num_regions` regions, one file descriptor each, in order. The front end
/// sends `8 + num_regions * 32` bytes.
struct MemoryTable {
  std::uint32_t num_regions;
  std::uint32_t padding;
  std::array<MemoryRegion, kMaxMemTableRegions> regions;
};
/// Bytes of `MemoryTable` before the region array.
inline constexpr std::size_t kMemoryTableHeaderSize = 8;

/// ADD_MEM_REG (one file descriptor) and REM_MEM_REG (none; QEMU sends one anyway).
struct SingleMemoryRegion {
  std::uint64_t padding;
  MemoryRegion region;
};

/// SET_LOG_BASE: the dirty log's size and offset in the file descriptor sent with it.
struct LogDescription {
  std::uint64_t size;
  std::uint64_t offset;
};

/// GET_CONFIG/SET_CONFIG header; `size` payload bytes follow it (up to `kMaxConfigSize`).
struct ConfigHeader {
  std::uint32_t offset;
  std::uint32_t size;
  std::uint32_t flags;  ///< `kConfigFlagWritable`, `kConfigFlagLiveMigration`
};
inline constexpr std::uint32_t kConfigFlagWritable = 0;
inline constexpr std::uint32_t kConfigFlagLiveMigration = 1;

/// GET_CONFIG/SET_CONFIG as a whole message body.
struct ConfigPayload {
  ConfigHeader header;
  std::array<std::uint8_t, kMaxConfigSize> data;
};

/// GET_INFLIGHT_FD (front end: queue count and size; back end: mmap size and offset of the
/// file descriptor it returns) and SET_INFLIGHT_FD. QEMU sends its C struct, whose 4 trailing
/// padding bytes make 24; here they are named so the struct has no padding.
struct Inflight {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
  std::uint16_t num_queues;
  std::uint16_t queue_size;
  std::uint32_t padding;
};

static_assert(sizeof(MessageHeader) == 12);
static_assert(sizeof(U64Payload) == 8);
static_assert(sizeof(VringState) == 8);
static_assert(sizeof(VringAddress) == 40);
static_assert(sizeof(MemoryRegion) == 32);
static_assert(sizeof(MemoryTable) == kMemoryTableHeaderSize + 8 * 32);
static_assert(sizeof(SingleMemoryRegion) == 40);
static_assert(sizeof(LogDescription) == 16);
static_assert(sizeof(ConfigHeader) == 12);
static_assert(sizeof(ConfigPayload) == kMaxPayloadSize);
static_assert(sizeof(Inflight) == 24);
static_assert(ByteValued<MessageHeader> && ByteValued<VringAddress> && ByteValued<MemoryTable> &&
              ByteValued<SingleMemoryRegion> && ByteValued<ConfigPayload> &&
              ByteValued<Inflight> && ByteValued<VringState> && ByteValued<LogDescription>);
static_assert(std::is_standard_layout_v<MemoryTable> && std::is_standard_layout_v<ConfigPayload>);

// ---------------------------------------------------------------------------------------
// Split virtqueue (virtio specification, "Split Virtqueues"), little-endian in guest memory

/// Largest queue size a split ring may have.
inline constexpr std::uint32_t kMaxQueueSize = 32768;

/// One descriptor of the descriptor table or of an indirect table.
struct VirtqDesc {
  Le64 addr;
  Le32 len;
  Le16 flags;  ///< `kDescFNext`, `kDescFWrite`, `kDescFIndirect`
  Le16 next;
};
inline constexpr std::uint16_t kDescFNext = 1;
inline constexpr std::uint16_t kDescFWrite = 2;
inline constexpr std::uint16_t kDescFIndirect = 4;

/// Available ring: `flags`, `idx`, then `ring[queue size]` (Le16 each), then `used_event`
/// (with EVENT_IDX).
struct VirtqAvailHeader {
  Le16 flags;  ///< `kAvailFNoInterrupt`
  Le16 idx;
};
inline constexpr std::uint16_t kAvailFNoInterrupt = 1;

/// One used-ring element: the head of the chain and the bytes the device wrote.
struct VirtqUsedElem {
  Le32 id;
  Le32 len;
};

/// Used ring: `flags`, `idx`, then `ring[queue size]` (VirtqUsedElem each), then
/// `avail_event` (with EVENT_IDX).
struct VirtqUsedHeader {
  Le16 flags;  ///< `kUsedFNoNotify`
  Le16 idx;
};
inline constexpr std::uint16_t kUsedFNoNotify = 1;

/// Bytes of each ring part for `queue_size` entries, with the event field of EVENT_IDX.
[[nodiscard]] constexpr std::uint64_t desc_table_size(std::uint32_t queue_size) noexcept {
  return std::uint64_t{16} * queue_size;
}
[[nodiscard]] constexpr std::uint64_t avail_ring_size(std::uint32_t queue_size) noexcept {
  return 4 + std::uint64_t{2} * queue_size + 2;
}
[[nodiscard]] constexpr std::uint64_t used_ring_size(std::uint32_t queue_size) noexcept {
  return 4 + std::uint64_t{8} * queue_size + 2;
}

static_assert(sizeof(VirtqDesc) == 16 && ByteValued<VirtqDesc>);
static_assert(sizeof(VirtqAvailHeader) == 4 && ByteValued<VirtqAvailHeader>);
static_assert(sizeof(VirtqUsedElem) == 8 && ByteValued<VirtqUsedElem>);
static_assert(sizeof(VirtqUsedHeader) == 4 && ByteValued<VirtqUsedHeader>);

// ---------------------------------------------------------------------------------------
// virtio-blk (virtio specification, "Block Device")

/// Sector size of every virtio-blk address and length.
inline constexpr std::uint64_t kSectorSize = 512;
inline constexpr unsigned kSectorShift = 9;
/// Bytes of the GET_ID answer.
inline constexpr std::size_t kBlkIdBytes = 20;

/// `BlkRequestHeader::type`.
enum class BlkRequestType : std::uint32_t {
  In = 0,
  Out = 1,
  Flush = 4,
  GetId = 8,
  GetLifetime = 10,
  Discard = 11,
  WriteZeroes = 13,
  SecureErase = 14,
};

/// The status byte the device writes as the last byte of a request.
enum class BlkStatus : std::uint8_t {
  Ok = 0,
  IoErr = 1,
  Unsupp = 2,
};

/// The device-readable header that starts every request.
struct BlkRequestHeader {
  Le32 type;
  Le32 ioprio;
  Le64 sector;
};

/// One segment of a DISCARD or WRITE_ZEROES request.
struct BlkDiscardWriteZeroes {
  Le64 sector;
  Le32 num_sectors;
  Le32 flags;  ///< `kBlkWriteZeroesFlagUnmap`
};
inline constexpr std::uint32_t kBlkWriteZeroesFlagUnmap = 1;

/// The device configuration space (GET_CONFIG), up to and including the zoned fields.
struct BlkConfig {
  Le64 capacity;  ///< in 512-byte sectors
  Le32 size_max;
  Le32 seg_max;
  Le16 geometry_cylinders;
  std::uint8_t geometry_heads;
  std::uint8_t geometry_sectors;
  Le32 blk_size;
  std::uint8_t physical_block_exp;
  std::uint8_t alignment_offset;
  Le16 min_io_size;
  Le32 opt_io_size;
  std::uint8_t writeback;
  std::uint8_t unused0;
  Le16 num_queues;
  Le32 max_discard_sectors;
  Le32 max_discard_seg;
  Le32 discard_sector_alignment;
  Le32 max_write_zeroes_sectors;
  Le32 max_write_zeroes_seg;
  std::uint8_t write_zeroes_may_unmap;
  std::array<std::uint8_t, 3> unused1;
  Le32 max_secure_erase_sectors;
  Le32 max_secure_erase_seg;
  Le32 secure_erase_sector_alignment;
  Le32 zone_sectors;
  Le32 max_open_zones;
  Le32 max_active_zones;
  Le32 max_append_sectors;
  Le32 write_granularity;
  std::uint8_t zoned_model;
  std::array<std::uint8_t, 3> unused2;
};

static_assert(sizeof(BlkRequestHeader) == 16 && ByteValued<BlkRequestHeader>);
static_assert(sizeof(BlkDiscardWriteZeroes) == 16 && ByteValued<BlkDiscardWriteZeroes>);
static_assert(sizeof(BlkConfig) == 96 && ByteValued<BlkConfig>);
static_assert(offsetof(BlkConfig, num_queues) == 34 && offsetof(BlkConfig, zone_sectors) == 72);
static_assert(std::is_standard_layout_v<BlkConfig>);

}  // namespace guestmem::vhost_user
