// guestmem: the index behind GuestMemoryMmap::find_region.
//
// `RegionIndex` answers "which is the last of these sorted keys that is <= x" for the region
// starts of a memory, which never change after construction. The span of the keys is cut
// into at most 2^16 equal buckets (twice as many as keys, rounded up to a power of two), and
// each bucket records the answers for its first and its last value. Every x in the bucket
// has an answer between those two, so when they are equal (whenever no key lies inside the
// bucket) a lookup is a subtraction, a shift and one load. Only a bucket holding keys needs a
// search, a branch-free binary search over just the keys between its two answers: for evenly
// spread regions (the common layout: DIMMs, NUMA nodes, slots of one size) that is rare and
// short, and for the most skewed layout it is a binary search over all keys, O(log n).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace guestmem::detail {

class RegionIndex {
 public:
  static constexpr std::size_t kNone = ~std::size_t{0};

  RegionIndex() = default;

  /// An index over `sorted` (strictly ascending, at most 2^32 - 1 keys).
  explicit RegionIndex(std::span<const std::uint64_t> sorted) : keys_(sorted.begin(), sorted.end()) {
    const std::size_t n = sorted.size();
    if (n == 0) {
      return;
    }
    base_ = sorted.front();
    const std::uint64_t span = sorted.back() - base_;
    const int bucket_bits = std::min(static_cast<int>(std::bit_width(2 * n - 1)), kMaxBucketBits);
    const int span_bits = static_cast<int>(std::bit_width(span));
    shift_ = span_bits > bucket_bits ? span_bits - bucket_bits : 0;
    last_bucket_ = span >> shift_;
    buckets_.resize(last_bucket_ + 1);
    // One sweep: `lo` and `hi` only move forward as the buckets do.
    std::size_t lo = 0;
    for (std::uint64_t b = 0; b <= last_bucket_; ++b) {
      const std::uint64_t first = base_ + (b << shift_);
      while (lo + 1 < n && sorted[lo + 1] <= first) {
        ++lo;
      }
      std::size_t hi = lo;
      if (b == last_bucket_) {
        hi = n - 1;  // values past the last key answer the last key
      } else {
        const std::uint64_t last = first + ((std::uint64_t{1} << shift_) - 1);
        while (hi + 1 < n && sorted[hi + 1] <= last) {
          ++hi;
        }
      }
      buckets_[b] = static_cast<std::uint64_t>(lo) | (static_cast<std::uint64_t>(hi) << 32);
    }
  }

  /// The index (in the sorted input) of the last key <= x, or kNone when every key is > x.
  [[nodiscard]] std::size_t find(std::uint64_t x) const noexcept {
    if (x < base_ || keys_.empty()) {
      return kNone;
    }
    const std::uint64_t bucket = std::min((x - base_) >> shift_, last_bucket_);
    const std::uint64_t answers = buckets_[bucket];
    std::size_t lo = answers & 0xffff'ffffU;
    std::size_t len = (answers >> 32) - lo;
    // keys_[lo] <= x; the answer is lo plus the number of keys in (lo, lo + len] that are <= x.
    while (len > 0) {
      const std::size_t half = (len + 1) / 2;
      lo = keys_[lo + half] <= x ? lo + half : lo;
      len -= half;
    }
    return lo;
  }

 private:
  static constexpr int kMaxBucketBits = 16;

  std::vector<std::uint64_t> keys_;
  // Per bucket: the answer for its first value, and (<< 32) the answer for its last value.
  std::vector<std::uint64_t> buckets_;
  std::uint64_t base_ = 0;
  int shift_ = 0;
  std::uint64_t last_bucket_ = 0;
};

}  // namespace guestmem::detail
