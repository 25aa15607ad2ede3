// The vhost-user-blk front end: message exchange, setup and the driver side of the split ring.
#include "frontend.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fmt/format.h>
#include <utility>

#include <guestmem/mmap_region.hpp>

namespace guestmem::vhost_user_bench {
namespace {

using namespace vhost_user;

constexpr std::uint32_t kNoSlot = ~std::uint32_t{0};
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kDescAddress = 0;
constexpr std::uint64_t kAvailAddress = 0x1000;
constexpr std::uint64_t kUsedAddress = 0x2000;
constexpr std::uint64_t kRingsEnd = 0x3000;
constexpr std::uint64_t kDataOffsetInSlot = kPage;

std::uint64_t round_up(std::uint64_t value, std::uint64_t align) {
  return (value + align - 1) / align * align;
}

std::string errno_text(std::string_view what) {
  return fmt::format("{}: {}", what, std::strerror(errno));
}

template <class T>
std::span<const std::byte> as_payload(const T& value) {
  return std::as_bytes(std::span<const T, 1>(&value, 1));
}

// The ring's 16-bit fields are little-endian; load and store move their raw bits.
std::uint16_t le16_bits(std::uint16_t value) { return std::bit_cast<std::uint16_t>(Le16{value}); }
std::uint16_t from_le16_bits(std::uint16_t bits) { return std::bit_cast<Le16>(bits).to_native(); }

std::string request_name(Request request) {
  return fmt::format("request {}", to_underlying(request));
}

// The requests whose reply the back end sends anyway; REPLY_ACK adds nothing to them.
bool has_own_reply(Request request) {
  switch (request) {
    case Request::GetFeatures:
    case Request::GetProtocolFeatures:
    case Request::GetQueueNum:
    case Request::GetVringBase:
    case Request::GetConfig:
    case Request::GetMaxMemSlots:
      return true;
    default:
      return false;
  }
}

// Waits until `fd` is readable; false when `timeout` passed first.
Outcome<bool> wait_readable(int fd, std::chrono::milliseconds timeout) {
  pollfd entry{.fd = fd, .events = POLLIN, .revents = 0};
  for (;;) {
    int ready = ::poll(&entry, 1, static_cast<int>(timeout.count()));
    if (ready >= 0) return ready > 0;
    if (errno != EINTR) return std::unexpected(errno_text("poll"));
  }
}

// Reads exactly `buf.size()` bytes from the socket; "disconnected" at end of stream.
Outcome<void> read_exact(int fd, std::span<std::byte> buf, std::chrono::milliseconds timeout) {
  std::size_t done = 0;
  while (done < buf.size()) {
    auto readable = wait_readable(fd, timeout);
    if (!readable) return std::unexpected(readable.error());
    if (!*readable) return std::unexpected("no reply within the timeout");
    ssize_t n = ::recv(fd, buf.data() + done, buf.size() - done, 0);
    if (n == 0) return std::unexpected("disconnected");
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) return std::unexpected("disconnected");
      return std::unexpected(errno_text("recv"));
    }
    done += static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace

Outcome<Frontend> Frontend::connect(const FrontendOptions& options) {
  if (options.queue_depth == 0 || options.queue_size > kMaxQueueSize ||
      (options.queue_size & (options.queue_size - 1)) != 0 ||
      std::uint64_t{options.queue_depth} * 3 > options.queue_size) {
    return std::unexpected("the queue size must be a power of two of at least 3 * queue depth");
  }
  Frontend fe;
  fe.options_ = options;
  fe.conn_ = vhost_user::Connection{UniqueFd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)}};
  if (fe.conn_.fd() < 0) return std::unexpected(errno_text("socket"));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (options.socket_path.size() >= sizeof(address.sun_path)) {
    return std::unexpected("socket path too long");
  }
  std::memcpy(address.sun_path, options.socket_path.data(), options.socket_path.size());
  if (::connect(fe.conn_.fd(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return std::unexpected(errno_text("connect " + options.socket_path));
  }
  if (auto ok = fe.setup(); !ok) return std::unexpected(ok.error());
  return fe;
}

Outcome<void> Frontend::send(Request request, std::span<const std::byte> payload,
                             std::span<const int> fds, bool want_ack) {
  const bool ack = want_ack && !has_own_reply(request) &&
                   (protocol_features_ & protocol_bit(ProtocolFeature::ReplyAck)) != 0;
  MessageHeader header{.request = to_underlying(request),
                       .flags = kVersion | (ack ? kNeedReplyFlag : 0),
                       .size = static_cast<std::uint32_t>(payload.size())};
  if (fds.size() > kMaxFds) return std::unexpected("too many descriptors for one message");
  if (auto sent = conn_.send(header, payload, fds); !sent) {
    const int err = sent.error().os_error();
    if (err == EPIPE || err == ECONNRESET) return std::unexpected("disconnected");
    return std::unexpected(fmt::format("sendmsg: {}", std::strerror(err)));
  }
  if (!ack) return {};
  auto reply = receive_reply(request);
  if (!reply) return std::unexpected(reply.error());
  std::uint64_t status = 0;
  if (reply->size() != sizeof(status)) return std::unexpected("reply-ack of the wrong size");
  std::memcpy(&status, reply->data(), sizeof(status));
  if (status != 0) {
    return std::unexpected(fmt::format("the back end refused {} (status {})",
                                       request_name(request), status));
  }
  return {};
}

Outcome<std::vector<std::byte>> Frontend::receive_reply(Request request) {
  MessageHeader header{};
  auto got = read_exact(conn_.fd(), std::as_writable_bytes(std::span(&header, 1)),
                        options_.reply_timeout);
  if (!got) return std::unexpected(got.error());
  if (header.request != to_underlying(request) || (header.flags & kReplyFlag) == 0 ||
      (header.flags & kVersionMask) != kVersion) {
    return std::unexpected(fmt::format("unexpected reply (request {}, flags {:#x}) to {}",
                                       header.request, header.flags, request_name(request)));
  }
  if (header.size > kMaxPayloadSize) return std::unexpected("reply payload too large");
  std::vector<std::byte> payload(header.size);
  got = read_exact(conn_.fd(), payload, options_.reply_timeout);
  if (!got) return std::unexpected(got.error());
  return payload;
}

Outcome<std::uint64_t> Frontend::get_u64(Request request) {
  if (auto ok = send(request, {}); !ok) return std::unexpected(ok.error());
  auto reply = receive_reply(request);
  if (!reply) return std::unexpected(reply.error());
  std::uint64_t value = 0;
  if (reply->size() != sizeof(value)) return std::unexpected("u64 reply of the wrong size");
  std::memcpy(&value, reply->data(), sizeof(value));
  return value;
}

Outcome<void> Frontend::setup() {
  // Features: the back end's offer, less what this driver does not implement.
  auto offered = get_u64(Request::GetFeatures);
  if (!offered) return std::unexpected("GET_FEATURES: " + offered.error());
  if ((*offered & feature_bit(feature::kVersion1)) == 0) {
    return std::unexpected("the back end does not offer VIRTIO_F_VERSION_1");
  }
  if ((*offered & feature_bit(feature::kProtocolFeatures)) == 0) {
    return std::unexpected("the back end does not offer VHOST_USER_F_PROTOCOL_FEATURES");
  }
  auto offered_protocol = get_u64(Request::GetProtocolFeatures);
  if (!offered_protocol) return std::unexpected("GET_PROTOCOL_FEATURES: " + offered_protocol.error());
  const std::uint64_t wanted_protocol =
      protocol_bit(ProtocolFeature::Config) | protocol_bit(ProtocolFeature::ReplyAck);
  if ((*offered_protocol & protocol_bit(ProtocolFeature::Config)) == 0) {
    return std::unexpected("the back end does not offer the CONFIG protocol feature");
  }
  const std::uint64_t protocol = *offered_protocol & wanted_protocol;
  if (auto ok = send(Request::SetProtocolFeatures, as_payload(U64Payload{protocol})); !ok) {
    return std::unexpected("SET_PROTOCOL_FEATURES: " + ok.error());
  }
  protocol_features_ = protocol;
  if (auto ok = send(Request::SetOwner, {}); !ok) return std::unexpected("SET_OWNER: " + ok.error());

  // The capacity, from the device configuration space.
  // The fields up to write_zeroes_may_unmap: back ends built before the secure-erase and
  // zoned fields existed (qemu-storage-daemon 7.2) refuse a request for more.
  constexpr std::uint32_t kConfigBytes = offsetof(BlkConfig, max_secure_erase_sectors);
  ConfigPayload config{};
  config.header = {.offset = 0, .size = kConfigBytes, .flags = kConfigFlagWritable};
  auto config_bytes = std::as_bytes(std::span(&config, 1))
                          .first(sizeof(ConfigHeader) + kConfigBytes);
  if (auto ok = send(Request::GetConfig, config_bytes); !ok) {
    return std::unexpected("GET_CONFIG: " + ok.error());
  }
  auto config_reply = receive_reply(Request::GetConfig);
  if (!config_reply) return std::unexpected("GET_CONFIG: " + config_reply.error());
  if (config_reply->size() < sizeof(ConfigHeader) + sizeof(Le64)) {
    return std::unexpected("GET_CONFIG: the reply holds no capacity");
  }
  Le64 capacity_sectors;
  std::memcpy(&capacity_sectors, config_reply->data() + sizeof(ConfigHeader),
              sizeof(capacity_sectors));
  capacity_ = capacity_sectors.to_native() * kSectorSize;

  const std::uint64_t wanted = feature_bit(feature::kVersion1) |
                               feature_bit(feature::kProtocolFeatures) |
                               feature_bit(feature::kBlkFlush) | feature_bit(feature::kBlkBlkSize);
  features_ = *offered & wanted;
  if (auto ok = send(Request::SetFeatures, as_payload(U64Payload{features_})); !ok) {
    return std::unexpected("SET_FEATURES: " + ok.error());
  }

  // Guest memory: rings, then one slot per request in flight; 2 MiB granularity.
  slot_stride_ = kDataOffsetInSlot + round_up(options_.slot_data_size, kPage);
  slots_base_ = kRingsEnd;
  const std::uint64_t size = memory_size();
  auto shm = SharedMemory::create("vhost-user-blk-bench", size);
  if (!shm) return std::unexpected("memfd: " + shm.error().message());
  auto mapping = MmapRegionBuilder<>(size).from_shared_memory(*shm).build();
  if (!mapping) return std::unexpected("mmap: " + mapping.error().message());
  // The front end's own address of the mapping, which names the region in the memory table
  // and in the ring addresses; it is sent, never dereferenced here.
  const auto user_address = reinterpret_cast<std::uint64_t>(mapping->unsafe_host_ptr());
  auto region = GuestRegionMmap<>::create(std::move(*mapping), GuestAddress{0});
  if (!region) return std::unexpected("region: " + region.error().message());
  std::vector<GuestRegionMmap<>> regions;
  regions.push_back(std::move(*region));
  auto memory = GuestMemoryMmap<>::from_regions(std::move(regions));
  if (!memory) return std::unexpected("guest memory: " + memory.error().message());
  memory_ = std::move(*memory);
  shm_.emplace(std::move(*shm));

  MemoryTable table{};
  table.num_regions = 1;
  table.regions[0] = {.guest_address = 0, .size = size, .user_address = user_address,
                      .mmap_offset = 0};
  const int memfd = shm_->fd();
  auto table_bytes = std::as_bytes(std::span(&table, 1))
                         .first(kMemoryTableHeaderSize + sizeof(MemoryRegion));
  if (auto ok = send(Request::SetMemTable, table_bytes, std::span(&memfd, 1)); !ok) {
    return std::unexpected("SET_MEM_TABLE: " + ok.error());
  }

  // Queue 0.
  const std::uint32_t qs = options_.queue_size;
  if (auto ok = send(Request::SetVringNum, as_payload(VringState{0, qs})); !ok) {
    return std::unexpected("SET_VRING_NUM: " + ok.error());
  }
  VringAddress addresses{.index = 0, .flags = 0,
                         .descriptor = user_address + kDescAddress,
                         .used = user_address + kUsedAddress,
                         .available = user_address + kAvailAddress,
                         .log = kUsedAddress};
  if (desc_table_size(qs) > kAvailAddress || avail_ring_size(qs) > kUsedAddress - kAvailAddress ||
      used_ring_size(qs) > kRingsEnd - kUsedAddress) {
    return std::unexpected("the queue size does not fit the ring layout");
  }
  if (auto ok = send(Request::SetVringAddr, as_payload(addresses)); !ok) {
    return std::unexpected("SET_VRING_ADDR: " + ok.error());
  }
  if (auto ok = send(Request::SetVringBase, as_payload(VringState{0, 0})); !ok) {
    return std::unexpected("SET_VRING_BASE: " + ok.error());
  }
  kick_ = UniqueFd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  call_ = UniqueFd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  const int kick = kick_.get();
  const int call = call_.get();
  if (kick < 0 || call < 0) return std::unexpected(errno_text("eventfd"));
  if (auto ok = send(Request::SetVringCall, as_payload(U64Payload{0}), std::span(&call, 1)); !ok) {
    return std::unexpected("SET_VRING_CALL: " + ok.error());
  }
  if (auto ok = send(Request::SetVringKick, as_payload(U64Payload{0}), std::span(&kick, 1)); !ok) {
    return std::unexpected("SET_VRING_KICK: " + ok.error());
  }
  if (auto ok = send(Request::SetVringEnable, as_payload(VringState{0, 1})); !ok) {
    return std::unexpected("SET_VRING_ENABLE: " + ok.error());
  }
  head_slot_.assign(qs, kNoSlot);
  return {};
}

GuestAddress Frontend::header_address(std::uint32_t slot) const noexcept {
  return GuestAddress{slots_base_ + slot_stride_ * slot};
}
GuestAddress Frontend::status_address(std::uint32_t slot) const noexcept {
  return GuestAddress{slots_base_ + slot_stride_ * slot + sizeof(BlkRequestHeader)};
}
GuestAddress Frontend::data_address(std::uint32_t slot) const noexcept {
  return GuestAddress{slots_base_ + slot_stride_ * slot + kDataOffsetInSlot};
}
std::uint64_t Frontend::memory_size() const noexcept {
  return round_up(slots_base_ + slot_stride_ * options_.queue_depth, std::uint64_t{2} << 20);
}

Outcome<void> Frontend::submit_io(std::uint32_t slot, BlkRequestType type, std::uint64_t sector,
                                  std::uint32_t len) {
  const BlkRequestHeader header{.type = Le32{to_underlying(type)}, .ioprio = Le32{0},
                                .sector = Le64{sector}};
  if (auto ok = memory_.write_obj(header, header_address(slot)); !ok) {
    return std::unexpected("request header: " + ok.error().message());
  }
  const auto first = static_cast<std::uint16_t>(slot * 3);
  const bool device_writes = type == BlkRequestType::In;
  const RawDescriptor chain[3] = {
      {header_address(slot).raw_value(), sizeof(BlkRequestHeader), kDescFNext,
       static_cast<std::uint16_t>(first + 1)},
      {data_address(slot).raw_value(), len,
       static_cast<std::uint16_t>(kDescFNext | (device_writes ? kDescFWrite : 0)),
       static_cast<std::uint16_t>(first + 2)},
      {status_address(slot).raw_value(), 1, kDescFWrite, 0},
  };
  return submit_raw(slot, first, chain, first);
}

Outcome<void> Frontend::submit_raw(std::uint32_t slot, std::uint16_t first_index,
                                   std::span<const RawDescriptor> chain, std::uint16_t head) {
  if (auto ok = memory_.write_obj(std::uint8_t{0xff}, status_address(slot)); !ok) {
    return std::unexpected("status byte: " + ok.error().message());
  }
  for (std::size_t i = 0; i < chain.size(); ++i) {
    const VirtqDesc desc{.addr = Le64{chain[i].addr}, .len = Le32{chain[i].len},
                         .flags = Le16{chain[i].flags}, .next = Le16{chain[i].next}};
    const GuestAddress at{kDescAddress + sizeof(VirtqDesc) * (first_index + i)};
    if (auto ok = memory_.write_obj(desc, at); !ok) {
      return std::unexpected("descriptor: " + ok.error().message());
    }
  }
  if (head < head_slot_.size()) head_slot_[head] = slot;
  return publish(head);
}

Outcome<void> Frontend::publish(std::uint16_t head) {
  const std::uint32_t qs = options_.queue_size;
  const GuestAddress entry{kAvailAddress + sizeof(VirtqAvailHeader) +
                           2 * std::uint64_t{static_cast<std::uint16_t>(avail_idx_ % qs)}};
  if (auto ok = memory_.store(le16_bits(head), entry, std::memory_order_relaxed); !ok) {
    return std::unexpected("avail ring: " + ok.error().message());
  }
  ++avail_idx_;
  // Sequentially consistent store and load: the index store is visible before the flag is
  // read, or the back end could go to sleep between our read and its check of the index
  // (virtio specification 2.7.13); seq_cst also releases the descriptors and the entry. (A
  // separate fence would do too, but GCC refuses atomic_thread_fence under TSan.)
  if (auto ok = memory_.store(le16_bits(avail_idx_), GuestAddress{kAvailAddress + 2},
                              std::memory_order_seq_cst);
      !ok) {
    return std::unexpected("avail index: " + ok.error().message());
  }
  auto used_flags = memory_.load<std::uint16_t>(GuestAddress{kUsedAddress},
                                                std::memory_order_seq_cst);
  if (!used_flags) return std::unexpected("used flags: " + used_flags.error().message());
  if ((from_le16_bits(*used_flags) & kUsedFNoNotify) != 0) return {};
  const std::uint64_t one = 1;
  if (::write(kick_.get(), &one, sizeof(one)) != sizeof(one) && errno != EAGAIN) {
    return std::unexpected(errno_text("kick"));
  }
  return {};
}

Outcome<std::size_t> Frontend::wait_completions(std::vector<Completion>& out,
                                                std::chrono::milliseconds timeout) {
  const std::uint32_t qs = options_.queue_size;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto used_idx = memory_.load<std::uint16_t>(GuestAddress{kUsedAddress + 2},
                                                std::memory_order_acquire);
    if (!used_idx) return std::unexpected("used index: " + used_idx.error().message());
    const std::uint16_t published = from_le16_bits(*used_idx);
    std::size_t appended = 0;
    while (used_seen_ != published) {
      const GuestAddress at{kUsedAddress + sizeof(VirtqUsedHeader) +
                            sizeof(VirtqUsedElem) * (used_seen_ % qs)};
      auto elem = memory_.read_obj<VirtqUsedElem>(at);
      if (!elem) return std::unexpected("used ring: " + elem.error().message());
      const std::uint32_t id = elem->id.to_native();
      if (id >= head_slot_.size() || head_slot_[id] == kNoSlot) {
        return std::unexpected(fmt::format("the back end completed head {}, not in flight", id));
      }
      const std::uint32_t slot = std::exchange(head_slot_[id], kNoSlot);
      auto status = memory_.read_obj<std::uint8_t>(status_address(slot));
      if (!status) return std::unexpected("status byte: " + status.error().message());
      out.push_back({slot, elem->len.to_native(), *status});
      ++used_seen_;
      ++appended;
    }
    if (appended > 0) return appended;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return 0;
    pollfd entries[2] = {{.fd = call_.get(), .events = POLLIN, .revents = 0},
                         {.fd = conn_.fd(), .events = POLLIN, .revents = 0}};
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    int ready = ::poll(entries, 2, static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) return std::unexpected(errno_text("poll"));
    if (ready > 0 && (entries[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !connected()) {
      return std::unexpected("disconnected");
    }
    if (ready > 0 && (entries[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      if (::read(call_.get(), &count, sizeof(count)) < 0 && errno != EAGAIN) {
        return std::unexpected(errno_text("call eventfd"));
      }
    }
  }
}

bool Frontend::connected() const {
  std::byte probe{};
  ssize_t n = ::recv(conn_.fd(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return false;
  return n > 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

Outcome<void> Frontend::truncate_memory(std::uint64_t size) {
  if (auto ok = shm_->resize(size); !ok) return std::unexpected("truncate: " + ok.error().message());
  return {};
}

}  // namespace guestmem::vhost_user_bench
