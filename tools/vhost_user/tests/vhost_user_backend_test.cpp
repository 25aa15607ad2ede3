// The back end's message handling over a socketpair: features, reply-ack, memory tables of
// memfds, single regions, vring setup, config, malformed messages; and a queue thread that
// serves requests written into the shared memory, including one whose memory is truncated.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "test_support.hpp"
#include "vhost_user/backend.hpp"
#include "vhost_user/connection.hpp"

namespace guestmem::vhost_user {
namespace {

using namespace testing;

constexpr std::uint64_t kUserBase = 0x7f00'0000'0000;
constexpr int kTimeoutMs = 5000;

MessageHeader header_of(Request request, std::size_t size, std::uint32_t flags = 0) {
  return MessageHeader{to_underlying(request), kVersion | flags, static_cast<std::uint32_t>(size)};
}

MemoryRegion region_a() { return MemoryRegion{kBaseA, kRegionSize, kUserBase + kBaseA, 0}; }
MemoryRegion region_b() { return MemoryRegion{kBaseB, kRegionSize, kUserBase + kBaseB, 0}; }

bool readable_within(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

class BackendTest : public ::testing::Test {
 protected:
  BackendTest() {
    std::array<int, 2> sv{};
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv.data()), 0);
    front = std::make_unique<Connection>(UniqueFd(sv[0]));
    back = std::make_unique<Connection>(UniqueFd(sv[1]));
  }

  // Sends a message from the front end and lets the back end handle it.
  template <class T>
  BlkBackend::Next send(Request request, const T& payload, std::vector<int> fds = {},
                        std::uint32_t flags = 0, std::size_t size = sizeof(T)) {
    const auto bytes = bytes_of(payload).first(size);
    EXPECT_TRUE(front->send(header_of(request, size, flags), bytes, fds).has_value());
    auto msg = back->receive();
    EXPECT_TRUE(msg.has_value());
    return backend.handle(*back, *msg);
  }
  BlkBackend::Next send_empty(Request request, std::uint32_t flags = 0) {
    EXPECT_TRUE(front->send(header_of(request, 0, flags), {}).has_value());
    auto msg = back->receive();
    EXPECT_TRUE(msg.has_value());
    return backend.handle(*back, *msg);
  }

  // The reply waiting for the front end, as a u64.
  std::uint64_t reply_u64(Request request) {
    EXPECT_TRUE(readable_within(front->fd(), 0));
    auto msg = front->receive();
    EXPECT_TRUE(msg.has_value());
    EXPECT_EQ(msg->header.request, to_underlying(request));
    EXPECT_EQ(msg->header.flags, kVersion | kReplyFlag);
    U64Payload value{};
    EXPECT_TRUE(msg->read_as(value));
    return value.value;
  }

  bool no_reply() { return !readable_within(front->fd(), 0); }

  void negotiate(std::uint64_t features) {
    EXPECT_EQ(send(Request::SetFeatures, U64Payload{features}), BlkBackend::Next::Continue);
    EXPECT_EQ(send(Request::SetProtocolFeatures, U64Payload{kOfferedProtocolFeatures}),
              BlkBackend::Next::Continue);
  }

  void send_table() {
    MemoryTable table{};
    table.num_regions = 2;
    table.regions[0] = region_a();
    table.regions[1] = region_b();
    EXPECT_EQ(send(Request::SetMemTable, table, {memory.fd_a->get(), memory.fd_b->get()},
                   kNeedReplyFlag, kMemoryTableHeaderSize + 2 * sizeof(MemoryRegion)),
              BlkBackend::Next::Continue);
    EXPECT_EQ(reply_u64(Request::SetMemTable), 0U);
  }

  // One queue's rings, request buffers and eventfds in the test's memory (region A).
  struct QueueIo {
    std::uint32_t index;
    RingAddrs rings;
    std::uint64_t header_at;
    std::uint64_t status_at;
    UniqueFd kick{::eventfd(0, EFD_CLOEXEC)};
    UniqueFd call{::eventfd(0, EFD_CLOEXEC)};
  };

  // Sets `queue` up and starts it.
  void setup_queue(const QueueIo& queue) {
    send(Request::SetVringNum, VringState{queue.index, kQueueSize});
    send(Request::SetVringAddr,
         VringAddress{queue.index, 0, kUserBase + queue.rings.desc, kUserBase + queue.rings.used,
                      kUserBase + queue.rings.avail, 0});
    send(Request::SetVringBase, VringState{queue.index, 0});
    send(Request::SetVringCall, U64Payload{queue.index}, {queue.call.get()});
    send(Request::SetVringKick, U64Payload{queue.index}, {queue.kick.get()});
    send(Request::SetVringEnable, VringState{queue.index, 1});
    ASSERT_TRUE(backend.queue_running(queue.index));
  }

  // Negotiates `features`, shares the memory and starts queue 0.
  void start_queue(std::uint64_t features) {
    negotiate(features);
    send_table();
    setup_queue(q0);
  }

  // Makes a read of `sector` into `data_at` available as entry `slot` of `queue` and kicks.
  void submit_read(std::uint16_t slot, std::uint64_t data_at, const QueueIo& queue,
                   std::uint64_t sector = 1) {
    const BlkRequestHeader h{Le32(to_underlying(BlkRequestType::In)), Le32(0), Le64(sector)};
    ASSERT_TRUE(memory.mem.write_obj(h, GuestAddress{queue.header_at}).has_value());
    ASSERT_TRUE(memory.mem.write_obj(std::uint8_t{0xee}, GuestAddress{queue.status_at}).has_value());
    put_desc(memory.mem, queue.rings.desc, 0, queue.header_at, sizeof(h), kDescFNext, 1);
    put_desc(memory.mem, queue.rings.desc, 1, data_at, 512, kDescFNext | kDescFWrite, 2);
    put_desc(memory.mem, queue.rings.desc, 2, queue.status_at, 1, kDescFWrite);
    // With EVENT_IDX, ask for a notification when this entry is used.
    ASSERT_TRUE(memory.mem.write_obj(Le16(slot), GuestAddress{queue.rings.avail + 4 + 2 * kQueueSize})
                    .has_value());
    make_available(memory.mem, slot, 0, queue.rings);
    const std::uint64_t one = 1;
    ASSERT_EQ(::write(queue.kick.get(), &one, sizeof(one)), 8);
  }
  void submit_read(std::uint16_t slot, std::uint64_t data_at) { submit_read(slot, data_at, q0); }

  // Waits for the call eventfd of `queue`, then for `slot` to be used.
  void wait_used(std::uint16_t slot, const QueueIo& queue) {
    ASSERT_TRUE(readable_within(queue.call.get(), kTimeoutMs));
    std::uint64_t count;
    ASSERT_EQ(::read(queue.call.get(), &count, sizeof(count)), 8);
    ASSERT_EQ(used_idx(memory.mem, queue.rings), slot + 1);
  }
  void wait_used(std::uint16_t slot) { wait_used(slot, q0); }

  UniqueFd image = [] {
    UniqueFd fd = make_memfd(64 * kSectorSize);
    std::vector<std::uint8_t> content(64 * kSectorSize);
    for (std::size_t i = 0; i < content.size(); ++i) {
      content[i] = static_cast<std::uint8_t>(i / 3);
    }
    EXPECT_EQ(::pwrite(fd.get(), content.data(), content.size(), 0), 64 * 512);
    return fd;
  }();
  BlkDevice device = *BlkDevice::from_fd(UniqueFd(::dup(image.get())), BlkOptions{false, 2});
  BlkBackend backend{device};
  std::unique_ptr<Connection> front;
  std::unique_ptr<Connection> back;
  TestMemory memory;
  QueueIo q0{0, kRing0, 0x5000, 0x5800};
  QueueIo q1{1, RingAddrs{0x9000, 0xa000, 0xb000}, 0xc000, 0xc800};
};

TEST_F(BackendTest, AnswersFeatureQueries) {
  send_empty(Request::GetFeatures);
  EXPECT_EQ(reply_u64(Request::GetFeatures), device.features());
  send_empty(Request::GetProtocolFeatures);
  EXPECT_EQ(reply_u64(Request::GetProtocolFeatures), kOfferedProtocolFeatures);
  send_empty(Request::GetQueueNum);
  EXPECT_EQ(reply_u64(Request::GetQueueNum), 2U);
  send_empty(Request::GetMaxMemSlots);
  EXPECT_EQ(reply_u64(Request::GetMaxMemSlots), kMaxMemSlots);
}

TEST_F(BackendTest, ReplyAckOnlyOnceNegotiated) {
  EXPECT_EQ(send_empty(Request::SetOwner, kNeedReplyFlag), BlkBackend::Next::Continue);
  EXPECT_TRUE(no_reply());
  negotiate(device.features());
  send_empty(Request::SetOwner, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetOwner), 0U);
  // A feature the device did not offer is refused, and the refusal is acknowledged as such.
  send(Request::SetFeatures, U64Payload{feature_bit(feature::kRingPacked)}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetFeatures), 1U);
  // A payload of the wrong size is refused.
  send(Request::SetFeatures, VringState{1, 2}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetFeatures), 1U);
}

TEST_F(BackendTest, MemoryTableOfMemfds) {
  negotiate(device.features());
  send_table();
  EXPECT_EQ(backend.memory().num_regions(), 2U);
  auto snapshot = backend.memory().space().memory();
  EXPECT_EQ(snapshot->translate(kUserBase + kBaseB + 0x10, 0x100),
            std::optional(GuestAddress{kBaseB + 0x10}));
  EXPECT_EQ(snapshot->translate(kUserBase + kHole, 1), std::nullopt);
  EXPECT_EQ(snapshot->translate(kUserBase + kBaseA + kRegionSize - 1, 2), std::nullopt);
  // The back end's mapping shares the memfd: what the test writes, the back end reads.
  ASSERT_TRUE(memory.mem.write_obj(std::uint64_t{0x1122334455667788}, GuestAddress{kBaseB + 8}).has_value());
  EXPECT_EQ(*snapshot->guest.try_read_obj<std::uint64_t>(GuestAddress{kBaseB + 8}),
            0x1122334455667788U);
}

TEST_F(BackendTest, MemoryTableWithInconsistentSizesIsRefused) {
  negotiate(device.features());
  MemoryTable table{};
  table.num_regions = 2;
  table.regions[0] = region_a();
  table.regions[1] = region_b();
  // Two regions announced, one region's bytes sent.
  send(Request::SetMemTable, table, {memory.fd_a->get(), memory.fd_b->get()}, kNeedReplyFlag,
       kMemoryTableHeaderSize + sizeof(MemoryRegion));
  EXPECT_EQ(reply_u64(Request::SetMemTable), 1U);
  // Two regions, one descriptor.
  send(Request::SetMemTable, table, {memory.fd_a->get()}, kNeedReplyFlag,
       kMemoryTableHeaderSize + 2 * sizeof(MemoryRegion));
  EXPECT_EQ(reply_u64(Request::SetMemTable), 1U);
  // Overlapping guest ranges.
  table.regions[1].guest_address = kBaseA + 0x1000;
  send(Request::SetMemTable, table, {memory.fd_a->get(), memory.fd_b->get()}, kNeedReplyFlag,
       kMemoryTableHeaderSize + 2 * sizeof(MemoryRegion));
  EXPECT_EQ(reply_u64(Request::SetMemTable), 1U);
  // A region past the end of its file.
  table.num_regions = 1;
  table.regions[0].size = 4 * kRegionSize;
  send(Request::SetMemTable, table, {memory.fd_a->get()}, kNeedReplyFlag,
       kMemoryTableHeaderSize + sizeof(MemoryRegion));
  EXPECT_EQ(reply_u64(Request::SetMemTable), 1U);
  EXPECT_EQ(backend.memory().num_regions(), 0U);
}

TEST_F(BackendTest, AddAndRemoveRegions) {
  negotiate(device.features());
  send(Request::AddMemReg, SingleMemoryRegion{0, region_a()}, {memory.fd_a->get()}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::AddMemReg), 0U);
  send(Request::AddMemReg, SingleMemoryRegion{0, region_b()}, {memory.fd_b->get()}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::AddMemReg), 0U);
  EXPECT_EQ(backend.memory().num_regions(), 2U);
  // Overlaps region A.
  MemoryRegion overlapping = region_a();
  overlapping.user_address = kUserBase + 0x100000;
  send(Request::AddMemReg, SingleMemoryRegion{0, overlapping}, {memory.fd_a->get()}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::AddMemReg), 1U);
  // No descriptor.
  send(Request::AddMemReg, SingleMemoryRegion{0, region_a()}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::AddMemReg), 1U);

  send(Request::RemMemReg, SingleMemoryRegion{0, region_a()}, {memory.fd_a->get()}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::RemMemReg), 0U);
  EXPECT_EQ(backend.memory().num_regions(), 1U);
  EXPECT_EQ(backend.memory().space().memory()->translate(kUserBase + kBaseA, 1), std::nullopt);
  send(Request::RemMemReg, SingleMemoryRegion{0, region_a()}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::RemMemReg), 1U);
  EXPECT_EQ(backend.memory().num_regions(), 1U);
}

TEST_F(BackendTest, GetConfig) {
  ConfigPayload request{};
  request.header = ConfigHeader{0, sizeof(BlkConfig), 0};
  send(Request::GetConfig, request, {}, 0, sizeof(ConfigHeader) + sizeof(BlkConfig));
  auto reply = front->receive();
  ASSERT_TRUE(reply.has_value());
  ASSERT_EQ(reply->header.size, sizeof(ConfigHeader) + sizeof(BlkConfig));
  BlkConfig config{};
  std::memcpy(&config, reply->payload.data() + sizeof(ConfigHeader), sizeof(config));
  EXPECT_EQ(config.capacity.to_native(), 64U);
  EXPECT_EQ(config.num_queues.to_native(), 2);

  // A window past the largest configuration space closes the connection.
  request.header = ConfigHeader{250, 10, 0};
  EXPECT_EQ(send(Request::GetConfig, request, {}, 0, sizeof(ConfigHeader) + 10),
            BlkBackend::Next::Close);
}

TEST_F(BackendTest, UnsupportedRequestClosesTheConnection) {
  EXPECT_EQ(send(Request::GetInflightFd, Inflight{}), BlkBackend::Next::Close);
  EXPECT_EQ(send_empty(static_cast<Request>(200)), BlkBackend::Next::Close);
}

TEST_F(BackendTest, MalformedMessagesAreConnectionErrors) {
  // A payload larger than any message.
  const MessageHeader big = header_of(Request::SetFeatures, 4096);
  ASSERT_EQ(::send(front->fd(), &big, sizeof(big), 0), static_cast<ssize_t>(sizeof(big)));
  auto msg = back->receive();
  ASSERT_FALSE(msg.has_value());
  EXPECT_EQ(msg.error().os_error(), EPROTO);
}

TEST_F(BackendTest, WrongVersionIsAConnectionError) {
  MessageHeader h = header_of(Request::GetFeatures, 0);
  h.flags = 2;
  ASSERT_EQ(::send(front->fd(), &h, sizeof(h), 0), static_cast<ssize_t>(sizeof(h)));
  auto msg = back->receive();
  ASSERT_FALSE(msg.has_value());
  EXPECT_EQ(msg.error().os_error(), EPROTO);
}

TEST_F(BackendTest, PeerClosingMidMessage) {
  const MessageHeader h = header_of(Request::SetFeatures, 8);
  ASSERT_EQ(::send(front->fd(), &h, sizeof(h), 0), static_cast<ssize_t>(sizeof(h)));
  front.reset();
  auto msg = back->receive();
  ASSERT_FALSE(msg.has_value());
  EXPECT_EQ(msg.error().os_error(), EPROTO);
}

TEST_F(BackendTest, VringSetupChecks) {
  negotiate(device.features());
  send(Request::SetVringNum, VringState{0, 100}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetVringNum), 1U);
  send(Request::SetVringNum, VringState{2, 16}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetVringNum), 1U);
  send(Request::SetVringNum, VringState{0, 16}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetVringNum), 0U);
  // Rings in memory the front end never shared.
  send(Request::SetVringAddr, VringAddress{0, 0, kUserBase + kDescAddr, kUserBase + kUsedAddr,
                                           kUserBase + kAvailAddr, 0}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetVringAddr), 1U);
  send_table();
  send(Request::SetVringAddr, VringAddress{0, 0, kUserBase + kDescAddr + 8, kUserBase + kUsedAddr,
                                           kUserBase + kAvailAddr, 0}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetVringAddr), 1U);
  // A kick message whose descriptor is missing.
  send(Request::SetVringKick, U64Payload{0}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::SetVringKick), 1U);
  EXPECT_FALSE(backend.queue_running(0));
}

TEST_F(BackendTest, QueueServesRequestsAndStopsOnGetVringBase) {
  start_queue(device.features());
  submit_read(0, kBaseB + 0x200);
  wait_used(0);
  EXPECT_EQ(used_elem(memory.mem, 0).len.to_native(), 513U);
  EXPECT_EQ(*memory.mem.read_obj<std::uint8_t>(GuestAddress{0x5800}), 0);
  std::array<std::uint8_t, 512> data{};
  ASSERT_TRUE(memory.mem.read_slice(std::as_writable_bytes(std::span(data)),
                                    GuestAddress{kBaseB + 0x200}).has_value());
  for (std::size_t i = 0; i < data.size(); ++i) {
    ASSERT_EQ(data[i], static_cast<std::uint8_t>((512 + i) / 3)) << i;
  }

  send(Request::GetVringBase, VringState{0, 0});
  auto reply = front->receive();
  ASSERT_TRUE(reply.has_value());
  VringState state{};
  ASSERT_TRUE(reply->read_as(state));
  EXPECT_EQ(state.index, 0U);
  EXPECT_EQ(state.num, 1U);
  EXPECT_FALSE(backend.queue_running(0));
}

TEST_F(BackendTest, TruncatedMemoryCostsTheRequestOnly) {
  start_queue(device.features() & ~feature_bit(feature::kRingEventIdx));
  memory.truncate_b();
  submit_read(0, kBaseB + 0x200);
  wait_used(0);
  EXPECT_EQ(used_elem(memory.mem, 0).len.to_native(), 1U);
  EXPECT_EQ(*memory.mem.read_obj<std::uint8_t>(GuestAddress{0x5800}),
            to_underlying(BlkStatus::IoErr));
  // The queue still serves a request in memory that is there.
  submit_read(1, 0x7000);
  wait_used(1);
  EXPECT_EQ(used_elem(memory.mem, 1).len.to_native(), 513U);
  EXPECT_EQ(*memory.mem.read_obj<std::uint8_t>(GuestAddress{0x5800}), 0);
  EXPECT_TRUE(backend.queue_running(0));
}

TEST_F(BackendTest, RegionsChangeWhileTheQueueRuns) {
  start_queue(device.features());
  const UniqueFd fd_c = make_memfd(kRegionSize);
  const MemoryRegion region_c{0x40000, kRegionSize, kUserBase + 0x40000, 0};
  send(Request::AddMemReg, SingleMemoryRegion{0, region_c}, {fd_c.get()}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::AddMemReg), 0U);
  submit_read(0, 0x40000 + 0x100);
  wait_used(0);
  EXPECT_EQ(used_elem(memory.mem, 0).len.to_native(), 513U);
  EXPECT_EQ(*memory.mem.read_obj<std::uint8_t>(GuestAddress{0x5800}), 0);
  std::array<std::uint8_t, 512> data{};
  ASSERT_EQ(::pread(fd_c.get(), data.data(), data.size(), 0x100), 512);
  for (std::size_t i = 0; i < data.size(); ++i) {
    ASSERT_EQ(data[i], static_cast<std::uint8_t>((512 + i) / 3)) << i;
  }
  // Region B goes away under the running queue: a request into it now meets a hole.
  send(Request::RemMemReg, SingleMemoryRegion{0, region_b()}, {}, kNeedReplyFlag);
  EXPECT_EQ(reply_u64(Request::RemMemReg), 0U);
  submit_read(1, kBaseB + 0x200);
  wait_used(1);
  EXPECT_EQ(used_elem(memory.mem, 1).len.to_native(), 1U);
  EXPECT_EQ(*memory.mem.read_obj<std::uint8_t>(GuestAddress{0x5800}),
            to_underlying(BlkStatus::IoErr));
  EXPECT_TRUE(backend.queue_running(0));
}

TEST_F(BackendTest, TwoQueuesServeAtOnce) {
  start_queue(device.features());
  setup_queue(q1);
  for (std::uint16_t slot = 0; slot < 40; ++slot) {
    const std::uint64_t sector = slot % 60;
    submit_read(slot, 0x7000, q0, sector);
    submit_read(slot, 0xd000, q1, sector + 1);
    wait_used(slot, q0);
    wait_used(slot, q1);
    std::array<std::uint8_t, 512> data0{};
    std::array<std::uint8_t, 512> data1{};
    ASSERT_TRUE(memory.mem.read_slice(std::as_writable_bytes(std::span(data0)), GuestAddress{0x7000}).has_value());
    ASSERT_TRUE(memory.mem.read_slice(std::as_writable_bytes(std::span(data1)), GuestAddress{0xd000}).has_value());
    for (std::size_t i = 0; i < 512; ++i) {
      ASSERT_EQ(data0[i], static_cast<std::uint8_t>((sector * 512 + i) / 3)) << slot << " " << i;
      ASSERT_EQ(data1[i], static_cast<std::uint8_t>(((sector + 1) * 512 + i) / 3)) << slot << " " << i;
    }
    EXPECT_EQ(used_elem(memory.mem, slot, q1.rings).len.to_native(), 513U);
  }
  EXPECT_TRUE(backend.queue_running(0));
  EXPECT_TRUE(backend.queue_running(1));
}

TEST_F(BackendTest, CorruptRingStopsTheQueueAndSignalsErr) {
  UniqueFd err{::eventfd(0, EFD_CLOEXEC)};
  start_queue(device.features());
  send(Request::SetVringErr, U64Payload{0}, {err.get()});
  ASSERT_TRUE(memory.mem.write_obj(Le16(kQueueSize + 5), GuestAddress{kAvailAddr + 2}).has_value());
  const std::uint64_t one = 1;
  ASSERT_EQ(::write(q0.kick.get(), &one, sizeof(one)), 8);
  ASSERT_TRUE(readable_within(err.get(), kTimeoutMs));
  EXPECT_EQ(used_idx(memory.mem), 0);
  // The front end resets the device; the queue thread is gone.
  send_empty(Request::ResetDevice);
  EXPECT_FALSE(backend.queue_running(0));
}

}  // namespace
}  // namespace guestmem::vhost_user
