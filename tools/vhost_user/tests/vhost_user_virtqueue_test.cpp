// The split virtqueue against guest memory built in the test: chains, indirect tables, the
// used ring and notifications, and every hostile ring or chain the driver can write.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "test_support.hpp"
#include "vhost_user/virtqueue.hpp"

namespace guestmem::vhost_user {
namespace {

using namespace testing;

class SplitQueueTest : public ::testing::Test {
 protected:
  // Pops the one available head and walks its chain.
  QueueResult<void> walk(std::uint16_t head) {
    make_available(memory.mem, 0, head);
    auto popped = queue.pop_head(memory.mem);
    EXPECT_TRUE(popped.has_value());
    EXPECT_EQ(popped.value_or(std::nullopt), std::optional<std::uint16_t>(head));
    return queue.read_chain(memory.mem, head, chain);
  }

  void expect_error(QueueResult<void> result, QueueErrorKind kind, std::uint64_t value) {
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().kind, kind);
    EXPECT_EQ(result.error().value, value);
    EXPECT_FALSE(result.error().describe().empty());
  }

  TestMemory memory;
  SplitQueue queue{test_layout(), false, 0, 0};
  std::vector<Descriptor> chain;
};

TEST_F(SplitQueueTest, EmptyRingHasNoHead) {
  auto head = queue.pop_head(memory.mem);
  ASSERT_TRUE(head.has_value());
  EXPECT_FALSE(head->has_value());
  EXPECT_EQ(queue.next_avail(), 0);
}

TEST_F(SplitQueueTest, DirectChainInOrder) {
  put_desc(memory.mem, kDescAddr, 3, 0x5000, 16, kDescFNext, 7);
  put_desc(memory.mem, kDescAddr, 7, kBaseB + 0x100, 4096, kDescFNext | kDescFWrite, 9);
  put_desc(memory.mem, kDescAddr, 9, 0x6000, 1, kDescFWrite);
  ASSERT_TRUE(walk(3).has_value());
  ASSERT_EQ(chain.size(), 3U);
  EXPECT_EQ(chain[0].addr.raw_value(), 0x5000U);
  EXPECT_EQ(chain[0].len, 16U);
  EXPECT_FALSE(chain[0].writable);
  EXPECT_EQ(chain[1].addr.raw_value(), kBaseB + 0x100);
  EXPECT_EQ(chain[1].len, 4096U);
  EXPECT_TRUE(chain[1].writable);
  EXPECT_EQ(chain[2].addr.raw_value(), 0x6000U);
  EXPECT_TRUE(chain[2].writable);
  EXPECT_EQ(queue.next_avail(), 1);
  auto none = queue.pop_head(memory.mem);
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
}

TEST_F(SplitQueueTest, IndirectTableAfterDirectDescriptor) {
  put_desc(memory.mem, kDescAddr, 0, 0x5000, 16, kDescFNext, 1);
  put_desc(memory.mem, kDescAddr, 1, 0x4000, 2 * 16, kDescFIndirect);
  put_desc(memory.mem, 0x4000, 0, 0x7000, 512, kDescFWrite | kDescFNext, 1);
  put_desc(memory.mem, 0x4000, 1, 0x7200, 1, kDescFWrite);
  ASSERT_TRUE(walk(0).has_value());
  ASSERT_EQ(chain.size(), 3U);
  EXPECT_EQ(chain[1].addr.raw_value(), 0x7000U);
  EXPECT_EQ(chain[1].len, 512U);
  EXPECT_EQ(chain[2].addr.raw_value(), 0x7200U);
}

TEST_F(SplitQueueTest, LoopIsChainTooLong) {
  put_desc(memory.mem, kDescAddr, 0, 0x5000, 16, kDescFNext, 1);
  put_desc(memory.mem, kDescAddr, 1, 0x5100, 16, kDescFNext, 0);
  expect_error(walk(0), QueueErrorKind::ChainTooLong, kQueueSize);
}

TEST_F(SplitQueueTest, LoopInsideIndirectTable) {
  put_desc(memory.mem, kDescAddr, 0, 0x4000, 4 * 16, kDescFIndirect);
  for (std::uint32_t i = 0; i < 4; ++i) {
    put_desc(memory.mem, 0x4000, i, 0x5000, 16, kDescFNext, static_cast<std::uint16_t>((i + 1) % 4));
  }
  expect_error(walk(0), QueueErrorKind::ChainTooLong, 4);
}

TEST_F(SplitQueueTest, NextPastTable) {
  put_desc(memory.mem, kDescAddr, 0, 0x5000, 16, kDescFNext, kQueueSize);
  expect_error(walk(0), QueueErrorKind::NextOutOfRange, kQueueSize);
  ASSERT_EQ(chain.size(), 1U);
}

TEST_F(SplitQueueTest, NextPastIndirectTable) {
  put_desc(memory.mem, kDescAddr, 0, 0x4000, 2 * 16, kDescFIndirect);
  put_desc(memory.mem, 0x4000, 0, 0x5000, 16, kDescFNext, 2);
  expect_error(walk(0), QueueErrorKind::NextOutOfRange, 2);
}

TEST_F(SplitQueueTest, HeadPastTableIsConsumed) {
  make_available(memory.mem, 0, kQueueSize);
  auto head = queue.pop_head(memory.mem);
  ASSERT_FALSE(head.has_value());
  EXPECT_EQ(head.error().kind, QueueErrorKind::HeadOutOfRange);
  EXPECT_EQ(head.error().value, kQueueSize);
  EXPECT_EQ(queue.next_avail(), 1);
}

TEST_F(SplitQueueTest, AvailIndexMoreThanAQueueAhead) {
  ASSERT_TRUE(memory.mem.write_obj(Le16(kQueueSize + 1), GuestAddress{kAvailAddr + 2}).has_value());
  auto head = queue.pop_head(memory.mem);
  ASSERT_FALSE(head.has_value());
  EXPECT_EQ(head.error().kind, QueueErrorKind::AvailIndexJump);
  EXPECT_EQ(head.error().value, kQueueSize + 1U);
  EXPECT_EQ(queue.next_avail(), 0);
}

TEST_F(SplitQueueTest, LengthThatOverflows) {
  put_desc(memory.mem, kDescAddr, 0, 0xffff'ffff'ffff'f000, 0x2000, 0);
  expect_error(walk(0), QueueErrorKind::LengthOverflow, 0xffff'ffff'ffff'f000);
}

TEST_F(SplitQueueTest, IndirectTableThatOverflows) {
  put_desc(memory.mem, kDescAddr, 0, 0xffff'ffff'ffff'fff0, 32, kDescFIndirect);
  expect_error(walk(0), QueueErrorKind::LengthOverflow, 0xffff'ffff'ffff'fff0);
}

TEST_F(SplitQueueTest, ReadableAfterWritable) {
  put_desc(memory.mem, kDescAddr, 0, 0x5000, 16, kDescFWrite | kDescFNext, 1);
  put_desc(memory.mem, kDescAddr, 1, 0x5100, 16, 0);
  expect_error(walk(0), QueueErrorKind::ReadableAfterWritable, 1);
}

TEST_F(SplitQueueTest, IndirectInsideIndirect) {
  put_desc(memory.mem, kDescAddr, 0, 0x4000, 16, kDescFIndirect);
  put_desc(memory.mem, 0x4000, 0, 0x4800, 16, kDescFIndirect);
  expect_error(walk(0), QueueErrorKind::NestedIndirect, 0);
}

TEST_F(SplitQueueTest, IndirectWithNextFlag) {
  put_desc(memory.mem, kDescAddr, 2, 0x4000, 16, kDescFIndirect | kDescFNext, 3);
  expect_error(walk(2), QueueErrorKind::IndirectWithNext, 2);
}

TEST_F(SplitQueueTest, IndirectTableSizes) {
  for (const std::uint32_t len : {0U, 24U, 17U, (kMaxQueueSize + 1) * 16}) {
    SCOPED_TRACE(len);
    queue = SplitQueue(test_layout(), false, 0, 0);
    put_desc(memory.mem, kDescAddr, 0, 0x4000, len, kDescFIndirect);
    expect_error(walk(0), QueueErrorKind::IndirectSize, len);
  }
}

TEST_F(SplitQueueTest, IndirectTableInAHole) {
  put_desc(memory.mem, kDescAddr, 0, kHole + 0x100, 32, kDescFIndirect);
  expect_error(walk(0), QueueErrorKind::DescriptorAccess, kHole + 0x100);
}

TEST_F(SplitQueueTest, IndirectTableInTruncatedMemory) {
  put_desc(memory.mem, kDescAddr, 0, kBaseB + 0x40, 32, kDescFIndirect);
  memory.truncate_b();
  expect_error(walk(0), QueueErrorKind::DescriptorAccess, kBaseB + 0x40);
}

TEST(SplitQueueRing, RingInTruncatedMemoryIsRingAccess) {
  TestMemory memory;
  const QueueLayout layout{kQueueSize - 1, GuestAddress{kBaseB}, GuestAddress{kBaseB + 0x1000},
                           GuestAddress{kBaseB + 0x2000}};
  SplitQueue queue(layout, true, 0, 0);
  memory.truncate_b();
  auto head = queue.pop_head(memory.mem);
  ASSERT_FALSE(head.has_value());
  EXPECT_EQ(head.error().kind, QueueErrorKind::RingAccess);
  EXPECT_EQ(head.error().value, kBaseB + 0x1000 + 2);
  auto used = queue.add_used(memory.mem, 0, 1);
  ASSERT_FALSE(used.has_value());
  EXPECT_EQ(used.error().kind, QueueErrorKind::RingAccess);
  EXPECT_EQ(used.error().value, kBaseB + 0x2000 + 4);
  EXPECT_EQ(queue.next_used(), 0);
}

TEST_F(SplitQueueTest, UsedElementsAppearOnPublish) {
  ASSERT_TRUE(queue.add_used(memory.mem, 5, 513).has_value());
  ASSERT_TRUE(queue.add_used(memory.mem, 9, 1).has_value());
  EXPECT_EQ(used_idx(memory.mem), 0);
  auto notify = queue.publish_used(memory.mem);
  ASSERT_TRUE(notify.has_value());
  EXPECT_TRUE(*notify);
  EXPECT_EQ(used_idx(memory.mem), 2);
  EXPECT_EQ(used_elem(memory.mem, 0).id.to_native(), 5U);
  EXPECT_EQ(used_elem(memory.mem, 0).len.to_native(), 513U);
  EXPECT_EQ(used_elem(memory.mem, 1).id.to_native(), 9U);
  // Nothing new since the last notification.
  EXPECT_FALSE(*queue.publish_used(memory.mem));
}

TEST_F(SplitQueueTest, NoInterruptFlagSuppressesNotification) {
  ASSERT_TRUE(memory.mem.write_obj(Le16(kAvailFNoInterrupt), GuestAddress{kAvailAddr}).has_value());
  ASSERT_TRUE(queue.add_used(memory.mem, 1, 1).has_value());
  EXPECT_FALSE(*queue.publish_used(memory.mem));
  EXPECT_EQ(used_idx(memory.mem), 1);
}

TEST_F(SplitQueueTest, UsedEventDecidesNotification) {
  SplitQueue ring(test_layout(), true, 0, 0);
  const GuestAddress used_event{kAvailAddr + 4 + 2 * kQueueSize};
  ASSERT_TRUE(memory.mem.write_obj(Le16(0), used_event).has_value());
  ASSERT_TRUE(ring.add_used(memory.mem, 1, 1).has_value());
  EXPECT_TRUE(*ring.publish_used(memory.mem));  // used index passed 0
  ASSERT_TRUE(memory.mem.write_obj(Le16(3), used_event).has_value());
  ASSERT_TRUE(ring.add_used(memory.mem, 2, 1).has_value());
  EXPECT_FALSE(*ring.publish_used(memory.mem));  // 2 has not passed 3
  ASSERT_TRUE(ring.add_used(memory.mem, 3, 1).has_value());
  ASSERT_TRUE(ring.add_used(memory.mem, 4, 1).has_value());
  EXPECT_TRUE(*ring.publish_used(memory.mem));  // 4 passed 3
}

TEST_F(SplitQueueTest, EnableNotificationWritesAvailEventAndSeesNewEntries) {
  SplitQueue ring(test_layout(), true, 0, 0);
  put_desc(memory.mem, kDescAddr, 0, 0x5000, 1, kDescFWrite);
  make_available(memory.mem, 0, 0);
  ASSERT_TRUE(ring.pop_head(memory.mem).has_value());
  auto more = ring.enable_notification(memory.mem);
  ASSERT_TRUE(more.has_value());
  EXPECT_FALSE(*more);
  const GuestAddress avail_event{kUsedAddr + 4 + 8 * kQueueSize};
  EXPECT_EQ(memory.mem.read_obj<Le16>(avail_event)->to_native(), 1);
  make_available(memory.mem, 1, 0);
  EXPECT_TRUE(*ring.enable_notification(memory.mem));
}

TEST_F(SplitQueueTest, ContinuesFromBaseAcrossWrap) {
  SplitQueue ring(test_layout(), false, 0xffff, 0xffff);
  put_desc(memory.mem, kDescAddr, 4, 0x5000, 1, kDescFWrite);
  ASSERT_TRUE(memory.mem.write_obj(Le16(4), GuestAddress{kAvailAddr + 4 + 2 * 15}).has_value());
  ASSERT_TRUE(memory.mem.write_obj(Le16(0), GuestAddress{kAvailAddr + 2}).has_value());
  auto head = ring.pop_head(memory.mem);
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->value_or(99), 4);
  EXPECT_EQ(ring.next_avail(), 0);
  ASSERT_TRUE(ring.add_used(memory.mem, 4, 1).has_value());
  ASSERT_TRUE(ring.publish_used(memory.mem).has_value());
  EXPECT_EQ(used_idx(memory.mem), 0);
  EXPECT_EQ(used_elem(memory.mem, 15).id.to_native(), 4U);
}

}  // namespace
}  // namespace guestmem::vhost_user
