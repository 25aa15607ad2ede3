// guestmem: the static search tree behind GuestMemoryMmap::find_region.
//
// `SearchTree` answers "which is the last of these sorted keys that is <= x" for the region
// starts of a memory, which never change after construction. It is a B-tree laid out
// implicitly (no pointers): each node is one 64-byte cache line holding 8 keys, node k's
// children are nodes 9k+1 .. 9k+9, and the keys are placed by an in-order walk. A lookup
// reads one line per level (3 levels for 512 regions, against 9 dependent loads for a binary
// search), and the 8 comparisons inside a node are independent of each other, so nothing
// waits on a branch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace guestmem::detail {

class SearchTree {
 public:
  static constexpr std::size_t kNone = ~std::size_t{0};

  SearchTree() = default;

  /// A tree over `sorted` (ascending, at most 2^32 - 1 keys).
  explicit SearchTree(std::span<const std::uint64_t> sorted) {
    const std::size_t n = sorted.size();
    if (n == 0) {
      return;
    }
    nodes_.resize((n + kKeys - 1) / kKeys);
    index_.resize(nodes_.size() * kKeys);
    std::size_t next = 0;
    fill(0, sorted, next);
  }

  /// The index (in the sorted input) of the last key <= x, or kNone when every key is > x.
  [[nodiscard]] std::size_t find(std::uint64_t x) const noexcept {
    std::size_t slot = kNone;
    std::size_t k = 0;
    while (k < nodes_.size()) {
      const std::uint64_t* keys = nodes_[k].keys;
      std::size_t below = 0;  // keys in this node that are <= x
      for (std::size_t j = 0; j < kKeys; ++j) {
        below += keys[j] <= x ? 1 : 0;
      }
      slot = below != 0 ? k * kKeys + below - 1 : slot;
      k = k * (kKeys + 1) + below + 1;
    }
    return slot == kNone ? kNone : index_[slot];
  }

 private:
  static constexpr std::size_t kKeys = 8;

  struct alignas(64) Node {
    std::uint64_t keys[kKeys];
  };

  // In-order placement: the subtree under child i comes before key i. Slots past the end of
  // the input hold the largest key, mapped to the last index: they sort after every real key,
  // so reaching one means x is at or above the last key anyway.
  void fill(std::size_t k, std::span<const std::uint64_t> sorted, std::size_t& next) {
    if (k >= nodes_.size()) {
      return;
    }
    for (std::size_t i = 0; i < kKeys; ++i) {
      fill(k * (kKeys + 1) + i + 1, sorted, next);
      const bool real = next < sorted.size();
      nodes_[k].keys[i] = real ? sorted[next] : std::numeric_limits<std::uint64_t>::max();
      index_[k * kKeys + i] = static_cast<std::uint32_t>(real ? next : sorted.size() - 1);
      next += real ? 1 : 0;
    }
    fill(k * (kKeys + 1) + kKeys + 1, sorted, next);
  }

  std::vector<Node> nodes_;
  std::vector<std::uint32_t> index_;
};

}  // namespace guestmem::detail
