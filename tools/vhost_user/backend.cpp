#include "vhost_user/backend.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "vhost_user/log.hpp"
#include "vhost_user/virtqueue.hpp"

namespace guestmem::vhost_user {

// Everything the front end set for one queue, and its thread.
struct BlkBackend::Queue {
  std::uint32_t size = 0;  // 0 until SET_VRING_NUM
  std::optional<VringAddress> addr;
  std::uint16_t next_avail = 0;
  std::uint16_t next_used = 0;
  UniqueFd kick;
  bool enabled = false;
  // The call and err descriptors change under a running thread (SET_VRING_CALL while the
  // queue runs), so the thread uses them under this lock.
  std::mutex notify_mutex;
  UniqueFd call;
  UniqueFd err;
  UniqueFd stop;  // an eventfd that tells the thread to exit
  std::thread thread;
};

namespace {

const char* request_name(std::uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::GetInflightFd:
      return "GET_INFLIGHT_FD";
    case Request::SetInflightFd:
      return "SET_INFLIGHT_FD";
    case Request::SetLogBase:
      return "SET_LOG_BASE";
    case Request::SetBackendReqFd:
      return "SET_BACKEND_REQ_FD";
    default:
      return "request";
  }
}

// Signals an eventfd, if there is one.
void signal_eventfd(const UniqueFd& fd) {
  if (fd) {
    const std::uint64_t one = 1;
    // A full counter (EAGAIN) already wakes the reader; nothing else can fail here.
    (void)!::write(fd.get(), &one, sizeof(one));
  }
}

// Consumes an eventfd's count.
void drain_eventfd(int fd) {
  std::uint64_t count;
  (void)!::read(fd, &count, sizeof(count));
}

// The guest addresses of a queue's three areas, when each lies in one region and is
// aligned as the specification requires (16, 2 and 4 bytes).
std::optional<QueueLayout> translate_layout(const FrontEndMemory& mem, const VringAddress& addr,
                                            std::uint32_t size) {
  auto desc = mem.translate(addr.descriptor, desc_table_size(size));
  auto avail = mem.translate(addr.available, avail_ring_size(size));
  auto used = mem.translate(addr.used, used_ring_size(size));
  if (!desc || !avail || !used || desc->raw_value() % 16 != 0 || avail->raw_value() % 2 != 0 ||
      used->raw_value() % 4 != 0) {
    return std::nullopt;
  }
  return QueueLayout{static_cast<std::uint16_t>(size - 1), *desc, *avail, *used};
}

}  // namespace

BlkBackend::BlkBackend(const BlkDevice& device) : device_(device) {
  for (std::uint16_t i = 0; i < device.options().num_queues; ++i) {
    queues_.push_back(std::make_unique<Queue>());
  }
}

BlkBackend::~BlkBackend() { reset(); }

bool BlkBackend::queue_running(std::uint32_t index) const noexcept {
  return index < queues_.size() && queues_[index]->thread.joinable();
}

void BlkBackend::reset() {
  for (std::uint32_t i = 0; i < queues_.size(); ++i) {
    stop_queue(i);
    queues_[i] = std::make_unique<Queue>();
  }
  acked_features_ = 0;
  acked_protocol_features_ = 0;
  memory_.clear();
}

void BlkBackend::serve(Connection& conn) {
  for (;;) {
    auto msg = conn.receive();
    if (!msg) {
      if (msg.error().os_error() != 0) {
        log_line(format_text("closing the connection: {}", msg.error().message()));
      }
      break;
    }
    if (handle(conn, *msg) == Next::Close) {
      break;
    }
  }
  reset();
}

BlkBackend::Next BlkBackend::handle(Connection& conn, Message& msg) {
  const Outcome outcome = dispatch(conn, msg);
  if (outcome == Outcome::Close) {
    return Next::Close;
  }
  const bool ack = (msg.header.flags & kNeedReplyFlag) != 0 &&
                   (acked_protocol_features_ & protocol_bit(ProtocolFeature::ReplyAck)) != 0;
  if (ack) {
    const U64Payload status{outcome == Outcome::Done ? 0U : 1U};
    if (!conn.send(reply_header(msg.header, sizeof(status)), bytes_of(status))) {
      return Next::Close;
    }
  }
  return Next::Continue;
}

BlkBackend::Outcome BlkBackend::dispatch(Connection& conn, Message& msg) {
  const MessageHeader& h = msg.header;
  // Replies with a u64; `value` is sent only when the request carried no payload.
  auto reply_u64 = [&](std::uint64_t value) {
    if (h.size != 0 || !msg.fds.empty()) {
      log_line(format_text("request {} with a payload or descriptors", h.request));
      return Outcome::Close;
    }
    const U64Payload payload{value};
    return conn.send(reply_header(h, sizeof(payload)), bytes_of(payload)) ? Outcome::Done
                                                                           : Outcome::Close;
  };
  auto refuse = [&](std::string_view why) {
    log_line(format_text("request {} refused: {}", h.request, why));
    return Outcome::Refused;
  };
  // Fixed-size payloads without descriptors.
  auto exact = [&](auto& out) { return msg.fds.empty() && msg.read_as(out); };

  switch (static_cast<Request>(h.request)) {
    case Request::GetFeatures:
      return reply_u64(device_.features());
    case Request::GetProtocolFeatures:
      return reply_u64(kOfferedProtocolFeatures);
    case Request::GetQueueNum:
      return reply_u64(queues_.size());
    case Request::GetMaxMemSlots:
      return reply_u64(kMaxMemSlots);
    case Request::SetFeatures: {
      U64Payload features{};
      if (!exact(features) || (features.value & ~device_.features()) != 0) {
        return refuse("features not offered, or a malformed payload");
      }
      acked_features_ = features.value;
      return Outcome::Done;
    }
    case Request::SetProtocolFeatures: {
      U64Payload features{};
      if (!exact(features) || (features.value & ~kOfferedProtocolFeatures) != 0) {
        return refuse("protocol features not offered, or a malformed payload");
      }
      acked_protocol_features_ = features.value;
      return Outcome::Done;
    }
    case Request::SetOwner:
      return h.size == 0 && msg.fds.empty() ? Outcome::Done : refuse("unexpected payload");
    case Request::ResetOwner:
    case Request::ResetDevice:
      if (h.size != 0 || !msg.fds.empty()) {
        return refuse("unexpected payload");
      }
      for (std::uint32_t i = 0; i < queues_.size(); ++i) {
        stop_queue(i);
        queues_[i] = std::make_unique<Queue>();
      }
      return Outcome::Done;
    case Request::SetMemTable:
      return set_mem_table(msg);
    case Request::AddMemReg:
    case Request::RemMemReg: {
      const bool add = h.request == to_underlying(Request::AddMemReg);
      SingleMemoryRegion single{};
      // ADD carries the region's descriptor; REM needs none, but QEMU sends one.
      const bool fds_ok = add ? msg.fds.size() == 1 : msg.fds.size() <= 1;
      if (!msg.read_as(single, sizeof(single)) || !fds_ok) {
        return refuse("malformed region message");
      }
      if ((acked_protocol_features_ & protocol_bit(ProtocolFeature::ConfigureMemSlots)) == 0) {
        return refuse("memory slots not negotiated");
      }
      auto changed = add ? memory_.add_region(single.region, std::move(msg.fds[0]))
                         : memory_.remove_region(single.region);
      if (!changed) {
        return refuse(changed.error().message());
      }
      return Outcome::Done;
    }
    case Request::SetVringNum:
    case Request::SetVringBase:
    case Request::SetVringEnable: {
      VringState state{};
      if (!exact(state) || state.index >= queues_.size()) {
        return refuse("malformed payload or queue index out of range");
      }
      Queue& q = *queues_[state.index];
      if (h.request == to_underlying(Request::SetVringEnable)) {
        if (state.num > 1) {
          return refuse("enable value is neither 0 nor 1");
        }
        q.enabled = state.num == 1;
        if (q.enabled) {
          start_if_ready(state.index);
        } else {
          stop_queue(state.index);
        }
        return Outcome::Done;
      }
      if (q.thread.joinable()) {
        return refuse("queue is running");
      }
      if (h.request == to_underlying(Request::SetVringNum)) {
        if (state.num == 0 || state.num > kMaxQueueSize || !std::has_single_bit(state.num)) {
          return refuse(format_text("queue size {} is not a power of two up to 32768", state.num));
        }
        q.size = state.num;
      } else {
        if (state.num > 0xffff) {
          return refuse("ring base past 16 bits");
        }
        q.next_avail = static_cast<std::uint16_t>(state.num);
        q.next_used = static_cast<std::uint16_t>(state.num);
      }
      return Outcome::Done;
    }
    case Request::GetVringBase: {
      VringState state{};
      if (!exact(state) || state.index >= queues_.size()) {
        log_line("GET_VRING_BASE with a malformed payload or queue index");
        return Outcome::Close;
      }
      stop_queue(state.index);
      Queue& q = *queues_[state.index];
      // The ring is stopped until the front end sends a kick descriptor again.
      q.kick.reset();
      const VringState reply{state.index, q.next_avail};
      return conn.send(reply_header(h, sizeof(reply)), bytes_of(reply)) ? Outcome::Done
                                                                       : Outcome::Close;
    }
    case Request::SetVringAddr:
      return set_vring_addr(msg);
    case Request::SetVringKick:
    case Request::SetVringCall:
    case Request::SetVringErr:
      return set_vring_fd(msg);
    case Request::GetConfig:
      return get_config(conn, msg);
    case Request::SetConfig:
      return refuse("the configuration space is read-only");
    default:
      log_line(format_text("unsupported {} {}: closing the connection",
                           request_name(h.request), h.request));
      return Outcome::Close;
  }
}

BlkBackend::Outcome BlkBackend::set_mem_table(Message& msg) {
  MemoryTable table{};
  if (!msg.read_as(table, kMemoryTableHeaderSize) || table.num_regions == 0 ||
      table.num_regions > kMaxMemTableRegions ||
      msg.header.size != kMemoryTableHeaderSize + table.num_regions * sizeof(MemoryRegion) ||
      msg.fds.size() != table.num_regions) {
    log_line("SET_MEM_TABLE refused: region count, payload size and descriptors disagree");
    return Outcome::Refused;
  }
  auto set = memory_.set_table(std::span(table.regions).first(table.num_regions), msg.fds);
  if (!set) {
    log_line(format_text("SET_MEM_TABLE refused: {}", set.error().message()));
    return Outcome::Refused;
  }
  return Outcome::Done;
}

BlkBackend::Outcome BlkBackend::set_vring_addr(const Message& msg) {
  VringAddress addr{};
  if (!msg.fds.empty() || !msg.read_as(addr) || addr.index >= queues_.size()) {
    log_line("SET_VRING_ADDR refused: malformed payload or queue index");
    return Outcome::Refused;
  }
  Queue& q = *queues_[addr.index];
  if (q.thread.joinable() || q.size == 0) {
    log_line("SET_VRING_ADDR refused: queue running or without a size");
    return Outcome::Refused;
  }
  auto snapshot = memory_.space().memory();
  if (!translate_layout(*snapshot, addr, q.size)) {
    log_line(format_text("SET_VRING_ADDR refused: rings of queue {} are not in mapped memory "
                         "or misaligned", addr.index));
    return Outcome::Refused;
  }
  q.addr = addr;
  return Outcome::Done;
}

BlkBackend::Outcome BlkBackend::set_vring_fd(Message& msg) {
  U64Payload value{};
  if (!msg.read_as(value)) {
    log_line("vring descriptor message with a malformed payload");
    return Outcome::Refused;
  }
  const auto index = static_cast<std::uint32_t>(value.value & kVringIndexMask);
  const bool no_fd = (value.value & kVringNoFdMask) != 0;
  if ((value.value & ~(kVringIndexMask | kVringNoFdMask)) != 0 || index >= queues_.size() ||
      msg.fds.size() != (no_fd ? 0U : 1U)) {
    log_line("vring descriptor message refused: bad index, flags or descriptor count");
    return Outcome::Refused;
  }
  UniqueFd fd = no_fd ? UniqueFd() : std::move(msg.fds[0]);
  Queue& q = *queues_[index];
  switch (static_cast<Request>(msg.header.request)) {
    case Request::SetVringKick:
      if (no_fd) {
        log_line("SET_VRING_KICK without a descriptor: polling is not supported");
        return Outcome::Refused;
      }
      stop_queue(index);
      q.kick = std::move(fd);
      // Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled when it gets its kick.
      if ((acked_features_ & feature_bit(feature::kProtocolFeatures)) == 0) {
        q.enabled = true;
      }
      start_if_ready(index);
      return Outcome::Done;
    case Request::SetVringCall: {
      const std::lock_guard lock(q.notify_mutex);
      q.call = std::move(fd);
      return Outcome::Done;
    }
    default: {
      const std::lock_guard lock(q.notify_mutex);
      q.err = std::move(fd);
      return Outcome::Done;
    }
  }
}

BlkBackend::Outcome BlkBackend::get_config(Connection& conn, const Message& msg) {
  ConfigPayload request{};
  if (!msg.fds.empty() || !msg.read_as(request, sizeof(ConfigHeader)) ||
      request.header.size > kMaxConfigSize ||
      request.header.offset > kMaxConfigSize - request.header.size ||
      msg.header.size != sizeof(ConfigHeader) + request.header.size) {
    log_line("GET_CONFIG with a malformed payload: closing the connection");
    return Outcome::Close;
  }
  // Bytes past the virtio-blk configuration read as zero.
  std::array<std::byte, kMaxConfigSize> space{};
  const BlkConfig config = device_.config();
  std::memcpy(space.data(), &config, sizeof(config));
  ConfigPayload reply{};
  reply.header = request.header;
  std::memcpy(reply.data.data(), space.data() + request.header.offset, request.header.size);
  const std::size_t size = sizeof(ConfigHeader) + request.header.size;
  return conn.send(reply_header(msg.header, static_cast<std::uint32_t>(size)),
                   bytes_of(reply).first(size))
             ? Outcome::Done
             : Outcome::Close;
}

void BlkBackend::start_if_ready(std::uint32_t index) {
  Queue& q = *queues_[index];
  if (q.thread.joinable() || !q.enabled || !q.kick || q.size == 0 || !q.addr) {
    return;
  }
  q.stop = UniqueFd(::eventfd(0, EFD_CLOEXEC));
  if (!q.stop) {
    log_line(format_text("queue {}: eventfd failed (errno {}), not started", index, errno));
    return;
  }
  const bool event_idx = (acked_features_ & feature_bit(feature::kRingEventIdx)) != 0;
  q.thread = std::thread([this, &q, index, event_idx] { run_queue(q, index, event_idx); });
}

void BlkBackend::stop_queue(std::uint32_t index) {
  Queue& q = *queues_[index];
  if (q.thread.joinable()) {
    signal_eventfd(q.stop);
    q.thread.join();
    q.stop.reset();
  }
}

void BlkBackend::run_queue(Queue& q, std::uint32_t index, bool event_idx) {
  std::vector<Descriptor> chain;
  std::vector<iovec> scratch;
  std::optional<SplitQueue> ring;
  std::uint64_t generation = 0;
  bool broken = false;
  bool pending = true;  // serve what is already available before the first kick
  const auto fail = [&](std::string_view why) {
    log_line(format_text("queue {} stopped: {}", index, why));
    broken = true;
    const std::lock_guard lock(q.notify_mutex);
    signal_eventfd(q.err);
  };
  // A snapshot of the front end's memory, with `ring` translated for it (again when the
  // table changed); std::nullopt when the rings are no longer mapped (the queue is broken).
  // Snapshots are short-lived, so a replaced table is unmapped soon after the change.
  const auto snapshot = [&]() -> std::optional<GuestMemoryGuard<FrontEndMemory>> {
    auto mem = memory_.space().memory();
    if (!ring || mem->generation != generation) {
      auto layout = translate_layout(*mem, *q.addr, q.size);
      if (!layout) {
        fail("rings are no longer in mapped memory");
        return std::nullopt;
      }
      ring.emplace(*layout, event_idx, ring ? ring->next_avail() : q.next_avail,
                   ring ? ring->next_used() : q.next_used);
      generation = mem->generation;
    }
    return mem;
  };
  // Publishes the used entries added so far and signals the driver if it asked to be.
  const auto publish = [&](const GuestMemoryMmap<>& guest) {
    auto notify = ring->publish_used(guest);
    if (!notify) {
      fail(notify.error().describe());
      return false;
    }
    if (*notify) {
      const std::lock_guard lock(q.notify_mutex);
      signal_eventfd(q.call);
    }
    return true;
  };
  for (;;) {
    if (!pending) {
      std::array<pollfd, 2> fds{pollfd{q.kick.get(), POLLIN, 0}, pollfd{q.stop.get(), POLLIN, 0}};
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) {
          continue;
        }
        fail(format_text("poll failed: errno {}", errno));
        break;
      }
      if (fds[1].revents != 0) {
        break;
      }
      drain_eventfd(q.kick.get());
    }
    pending = false;
    for (bool more = !broken; more && !broken;) {
      for (;;) {
        std::optional<std::uint16_t> head;
        if (auto mem = snapshot(); !mem) {
          break;
        } else if (auto popped = ring->pop_head((*mem)->guest); popped) {
          head = *popped;
        } else if (popped.error().kind == QueueErrorKind::HeadOutOfRange) {
          log_line(format_text("queue {}: {}", index, popped.error().describe()));
          continue;
        } else {
          fail(popped.error().describe());
          break;
        }
        if (!head) {
          break;
        }
        // A new snapshot, taken after the request was seen: a table the front end changed
        // before making the request available is the one that serves it.
        auto mem = snapshot();
        if (!mem) {
          break;
        }
        std::uint32_t written = 0;
        if (auto walked = ring->read_chain((*mem)->guest, *head, chain); walked) {
          written = device_.handle((*mem)->guest, chain, scratch);
        } else {
          log_line(format_text("queue {}: request {} returned unanswered: {}", index, *head,
                               walked.error().describe()));
        }
        if (auto used = ring->add_used((*mem)->guest, *head, written); !used) {
          fail(used.error().describe());
          break;
        }
        // Each request is returned as soon as it is served, so that the driver refills the
        // queue while the next one is served instead of waiting for the whole batch.
        if (!publish((*mem)->guest)) {
          break;
        }
      }
      auto mem = broken ? std::nullopt : snapshot();
      if (!mem) {
        break;
      }
      auto again = ring->enable_notification((*mem)->guest);
      if (!again) {
        fail(again.error().describe());
        break;
      }
      more = *again;
    }
  }
  if (ring) {
    q.next_avail = ring->next_avail();
    q.next_used = ring->next_used();
  }
}

}  // namespace guestmem::vhost_user
