// The benchmark's data pattern: distinct per run, block and generation, and a mismatch is
// located at the first differing word.
#include "pattern.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace guestmem::vhost_user_bench {
namespace {

TEST(Pattern, KeysDifferByNonceBlockAndGeneration) {
  const std::uint64_t key = block_key(7, 100, 3);
  EXPECT_NE(key, block_key(8, 100, 3));
  EXPECT_NE(key, block_key(7, 101, 3));
  EXPECT_NE(key, block_key(7, 100, 4));
  EXPECT_EQ(key, block_key(7, 100, 3));
}

TEST(Pattern, FilledBufferMatchesItsKeyOnly) {
  std::vector<std::byte> buf(4096);
  fill_pattern(buf, block_key(1, 2, 3));
  EXPECT_EQ(pattern_mismatch(buf, block_key(1, 2, 3)), std::nullopt);
  EXPECT_EQ(pattern_mismatch(buf, block_key(1, 2, 4)), std::optional<std::size_t>(0));
}

TEST(Pattern, MismatchNamesTheFirstChangedWord) {
  std::vector<std::byte> buf(65536);
  const std::uint64_t key = block_key(9, 9, 9);
  for (std::size_t offset : {std::size_t{0}, std::size_t{7}, std::size_t{8}, std::size_t{4095},
                             std::size_t{65535}}) {
    fill_pattern(buf, key);
    buf[offset] ^= std::byte{0x01};
    EXPECT_EQ(pattern_mismatch(buf, key), std::optional<std::size_t>(offset / 8 * 8))
        << "offset " << offset;
  }
}

TEST(Pattern, ShiftedContentIsCaught) {
  // A back end that returns the block 8 bytes off (a wrong sector offset within a page).
  std::vector<std::byte> buf(4104);
  const std::uint64_t key = block_key(3, 4, 5);
  fill_pattern(buf, key);
  std::span<const std::byte> shifted(buf.data() + 8, 4096);
  EXPECT_EQ(pattern_mismatch(shifted, key), std::optional<std::size_t>(0));
}

}  // namespace
}  // namespace guestmem::vhost_user_bench
