// guestmem: dirty-page tracking for live migration and snapshots.
//
// `AtomicBitmap` keeps one bit per page of a region (page size a power of two, default
// 4096) and satisfies the `Bitmap` and `NewBitmap` concepts, so `GuestMemoryMmap<AtomicBitmap>`
// tracks every write its accesses make. Its layout is KVM_GET_DIRTY_LOG's: bit i of 64-bit
// word j is page 64j + i.
//
// What makes it cheap:
// - mark_dirty sets whole words with one atomic operation each (not one per page), and none
//   at all when the bits are already set: a write to a page that is already dirty costs two
//   loads (its word and the word's summary bit, below). That shortcut is only correct because
//   get_and_reset pays an asymmetric fence (detail/asymmetric_fence.hpp): a write that found
//   its bit set is either seen by the reset that clears the bit, or finds the bit cleared and
//   sets it again.
// - get_and_reset and reset visit only the words that may be dirty: a summary keeps one bit
//   per word, set by the first write that finds it clear after the word's bits were set (one
//   more atomic operation, about once per word per round), so a reset of mostly clean memory
//   reads 1/64 of the bitmap.
//
// Guarantee: a write that returned before a get_and_reset started is reported by it, or by a
// reset that took the page first; every page written (with a guestmem write path) after one
// get_and_reset returns is reported by a later one; and a caller that copies the pages a reset
// reports, after it returns, copies data at least as new as every write that reset accounts
// for.
//
// The marking protocol, and why it keeps the guarantee, is described above detail::set_bits.
//
//   auto mem = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 1 << 30}});
//   ...
//   for (const auto& region : mem->regions()) {
//     std::vector<std::uint64_t> dirty = region.bitmap().get_and_reset();  // KVM layout
//     ...copy the pages whose bits are set...
//   }
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "guestmem/bitmap.hpp"
#include "guestmem/detail/asymmetric_fence.hpp"
#include "guestmem/detail/config.hpp"
#include "guestmem/error.hpp"

namespace guestmem {

namespace detail {

// The mask of bits lo..hi (inclusive) of a word.
[[nodiscard]] constexpr std::uint64_t bit_range(unsigned lo, unsigned hi) noexcept {
  return (~std::uint64_t{0} >> (63U - hi)) & (~std::uint64_t{0} << lo);
}

// The words of a bitmap of `pages` pages; the summary follows them in the same array, one bit
// per word (bit w % 64 of summary word w / 64), set when word w may be non-zero. A word is
// only ever made non-zero by set_bits (mark_dirty and merge), which then makes sure its summary
// bit is set before returning, and resets clear the summary bit before the word (the protocol
// is described above set_bits).
[[nodiscard]] constexpr std::size_t words_for(std::size_t pages) noexcept {
  return (pages + 63) / 64;
}
[[nodiscard]] inline std::atomic<std::uint64_t>* summary_of(std::atomic<std::uint64_t>* words,
                                                            std::size_t pages) noexcept {
  return words + words_for(pages);
}

// Whether word `w`'s summary bit is set.
[[nodiscard]] GUESTMEM_ALWAYS_INLINE bool summary_has(const std::atomic<std::uint64_t>* words,
                                                      std::size_t pages, std::size_t w) noexcept {
  const std::atomic<std::uint64_t>& summary = words[words_for(pages) + w / 64];
  return ((summary.load(std::memory_order_relaxed) >> (w % 64)) & 1U) != 0;
}

// The slow path of set_bits: sets `mask` in word `w` (one atomic operation), then the word's
// summary bit when it is clear (one more, about once per word per round).
GUESTMEM_API void set_bits_slow(std::atomic<std::uint64_t>* words, std::size_t pages,
                                std::size_t w, std::uint64_t mask) noexcept;

// The marking protocol (W is a word, S its summary word). No write returns while its word's
// summary bit may be clear: one whose fetch_or found the word already non-zero, or whose load
// found its bits already set, still checks S itself. Relying on the writer that made the word
// non-zero to set the bit is not enough: preempted between its fetch_or and its S.fetch_or, it
// would hide every other write to the word from resets.
// - A write either sets its bits (slow path: W.fetch_or acq_rel, then a relaxed load of S and,
//   when the word's summary bit is clear, S.fetch_or) or returns without a read-modify-write
//   (fast path: W.load acquire finds every bit of its mask set, then a relaxed load of S finds
//   the word's summary bit set). A reset does S.exchange(0) and then W.exchange(0, acq_rel)
//   for each bit it got, then the heavy fence; it skips W when its load or exchange of S finds
//   the bit clear. Every modification of W is a read-modify-write, so every value of W after a
//   reset's W.exchange is in that exchange's release sequence.
// - Why a write M that returned before a reset R started is reported: suppose R finds W's
//   summary bit clear. Let v be the value of S that M last saw (read, or wrote with its
//   S.fetch_or); it has the bit. M's access to S happens before R's, so R reads v or a later
//   value (coherence); the first value after v without the bit was written by the S.exchange
//   of a reset R' (before R in S's order), which then exchanges W. Suppose R''s W.exchange
//   came before M's access to W in W's modification order. Then M's acquire (fetch_or or
//   load) reads from that exchange's release sequence and synchronizes with it, so R''s
//   S.exchange happens before M's access to S, and coherence puts M's access to S after R''s
//   S.exchange: a contradiction, since v came before it. So R''s W.exchange comes after M's
//   fetch_or, or after the value M's load saw: R' (or a reset between the two, or a
//   reset_range the caller asked for) took M's bits.
// - Data: a slow-path write's data stores precede its release fetch_or, which the taking
//   reset's acquire exchange reads from; a fast-path write is covered by the asymmetric
//   fence, because its load read a value from before the taking reset's exchange.
// - reset_range clears bits with fetch_and and leaves the summary alone: it visits every word
//   of its range, so it has no summary bit to miss, and a word it clears only makes a later
//   reset look at a clean word. A write concurrent with it may or may not be cleared; one that
//   returned before it is (the caller asked for that).
//
// Sets `mask` in word `w`: no atomic operation when the bits and the word's summary bit are
// already set, else the slow path. The load of the word is an acquire: a word value written
// after a reset's exchange of the word then makes the summary load see that reset's clear,
// and the write takes the slow path instead of returning while the bit is clear.
GUESTMEM_ALWAYS_INLINE void set_bits(std::atomic<std::uint64_t>* words, std::size_t pages,
                                     std::size_t w, std::uint64_t mask) noexcept {
  if ((words[w].load(std::memory_order_acquire) & mask) == mask && summary_has(words, pages, w))
      [[likely]] {
    return;
  }
  set_bits_slow(words, pages, w, mask);
}

// The pages first..last span several words (a write of more than 64 pages, or across a
// word boundary): out of line.
GUESTMEM_API void mark_words(std::atomic<std::uint64_t>* words, std::size_t pages,
                             std::size_t first, std::size_t last) noexcept;

// The last page of the pages [offset, offset + len) touch, for len > 0 and a first page below
// `pages`: clipped to the last page, and the last page too when offset + len passes 2^64 (a
// wrapped end would stand for a page before the first).
[[nodiscard]] GUESTMEM_ALWAYS_INLINE std::size_t last_page(std::size_t offset, std::size_t len,
                                                           unsigned shift,
                                                           std::size_t pages) noexcept {
  std::size_t end = 0;
  if (__builtin_add_overflow(offset, len - 1, &end)) [[unlikely]] {
    return pages - 1;
  }
  return std::min(end >> shift, pages - 1);
}

// Sets the bits of the pages [offset, offset + len) touch, within `pages` pages; one atomic
// operation per word that lacks a bit (two when the word's summary bit is clear), none for
// words that have them all.
GUESTMEM_ALWAYS_INLINE void mark_pages(std::atomic<std::uint64_t>* words, std::size_t pages,
                                       unsigned shift, std::size_t offset,
                                       std::size_t len) noexcept {
  if (len == 0) [[unlikely]] {
    return;
  }
  const std::size_t first = offset >> shift;
  if (first >= pages) [[unlikely]] {
    return;
  }
  const std::size_t last = last_page(offset, len, shift, pages);
  // Order the data stores of the write before the loads below (see the header comment).
  light_fence();
  if (first / 64 == last / 64) [[likely]] {
    set_bits(words, pages, first / 64,
             bit_range(static_cast<unsigned>(first % 64), static_cast<unsigned>(last % 64)));
  } else {
    mark_words(words, pages, first, last);
  }
}

[[nodiscard]] GUESTMEM_ALWAYS_INLINE bool page_dirty(const std::atomic<std::uint64_t>* words,
                                                     std::size_t pages, unsigned shift,
                                                     std::size_t offset) noexcept {
  const std::size_t page = offset >> shift;
  if (page >= pages) {
    return false;
  }
  return ((words[page / 64].load(std::memory_order_relaxed) >> (page % 64)) & 1U) != 0;
}

}  // namespace detail

/// An AtomicBitmap seen from a byte offset; what views of tracked memory carry.
/// Validity: while the bitmap it came from is alive (moving the bitmap keeps it valid).
class AtomicBitmapSlice {
 public:
  /// The type of slice_at(): a slice of a slice is a slice.
  using slice_type = AtomicBitmapSlice;

  /// The inert placeholder: covers no page, so marks through it do nothing.
  constexpr AtomicBitmapSlice() noexcept = default;

  /// Marks the pages [offset, offset + len) (relative to this slice) touch as dirty.
  void mark_dirty(std::size_t offset, std::size_t len) const noexcept {
    detail::mark_pages(words_, pages_, shift_, base_ + offset, len);
  }
  /// Whether the page holding `offset` (relative to this slice) is dirty.
  [[nodiscard]] bool dirty_at(std::size_t offset) const noexcept {
    return detail::page_dirty(words_, pages_, shift_, base_ + offset);
  }
  /// The slice that starts `offset` bytes into this one. Validity: as this slice.
  [[nodiscard]] AtomicBitmapSlice slice_at(std::size_t offset) const noexcept {
    return AtomicBitmapSlice(words_, pages_, shift_, base_ + offset);
  }

 private:
  friend class AtomicBitmap;
  AtomicBitmapSlice(std::atomic<std::uint64_t>* words, std::size_t pages, unsigned shift,
                    std::size_t base) noexcept
      : words_(words), pages_(pages), shift_(shift), base_(base) {}

  std::atomic<std::uint64_t>* words_ = nullptr;
  std::size_t pages_ = 0;
  unsigned shift_ = 0;
  std::size_t base_ = 0;
};

/// One dirty bit per page of a memory of `len()` bytes. Moves, never copies. Every member
/// function may be called concurrently with every other, from any thread; all of them are
/// const because the bits are atomics that views of the memory share.
class GUESTMEM_API AtomicBitmap {
 public:
  /// The type of slice_at(), which views of tracked memory carry.
  using slice_type = AtomicBitmapSlice;

  /// The page size of a bitmap made by with_len().
  static constexpr std::size_t kDefaultPageSize = 4096;

  /// A clean bitmap for `len` bytes in pages of `page_size` bytes.
  /// Preconditions: page_size is a power of two (aborts otherwise).
  explicit AtomicBitmap(std::size_t len, std::size_t page_size = kDefaultPageSize);

  /// NewBitmap: a clean bitmap for `len` bytes in 4 KiB pages.
  static AtomicBitmap with_len(std::size_t len) { return AtomicBitmap(len); }

  /// Marks the pages [offset, offset + len) touch as dirty; parts past the end are ignored, and
  /// a range whose end passes 2^64 runs to the last page.
  void mark_dirty(std::size_t offset, std::size_t len) const noexcept {
    detail::mark_pages(words_.get(), pages_, shift_, offset, len);
  }
  /// Whether the page holding `offset` is dirty (false past the end).
  [[nodiscard]] bool dirty_at(std::size_t offset) const noexcept {
    return detail::page_dirty(words_.get(), pages_, shift_, offset);
  }
  /// The bitmap seen from `offset`.
  [[nodiscard]] AtomicBitmapSlice slice_at(std::size_t offset) const noexcept {
    return AtomicBitmapSlice(words_.get(), pages_, shift_, offset);
  }

  /// The dirty pages in KVM_GET_DIRTY_LOG's layout (num_words() words), clearing them. A
  /// write that returned before the call is reported by it (or was by an earlier one); a write
  /// concurrent with it, by it or by a later one, at the latest the first that starts after
  /// the write returned. Costs a pass over 1/64 of the bitmap plus the dirty words.
  [[nodiscard]] std::vector<std::uint64_t> get_and_reset() const;
  /// As above, into `out` (a buffer a migration loop reuses round after round, as with
  /// KVM_GET_DIRTY_LOG). Errors: InvalidBitmap when out.size() != num_words(); nothing is
  /// cleared then.
  Result<void> get_and_reset(std::span<std::uint64_t> out) const;
  /// The dirty pages in the same layout, without clearing them.
  [[nodiscard]] std::vector<std::uint64_t> to_words() const;
  /// Clears every page.
  void reset() const;
  /// Clears the pages [offset, offset + len) touch; parts past the end are ignored, and a
  /// range whose end passes 2^64 runs to the last page. A write
  /// that returned before the call is cleared; one concurrent with it may or may not be.
  void reset_range(std::size_t offset, std::size_t len) const;
  /// Marks the pages set in `words` (KVM_GET_DIRTY_LOG's layout, from KVM or a peer) as dirty.
  /// Errors: InvalidBitmap when `words` is not num_words() long or sets a bit past the last
  /// page; nothing is merged then.
  Result<void> merge(std::span<const std::uint64_t> words) const;

  /// The bytes covered.
  [[nodiscard]] std::size_t len() const noexcept { return len_; }
  /// The bytes one bit covers.
  [[nodiscard]] std::size_t page_size() const noexcept { return std::size_t{1} << shift_; }
  /// The number of bits: len() divided by page_size(), rounded up.
  [[nodiscard]] std::size_t num_pages() const noexcept { return pages_; }
  /// The number of 64-bit words the bits take in KVM_GET_DIRTY_LOG's layout (get_and_reset, merge).
  [[nodiscard]] std::size_t num_words() const noexcept { return detail::words_for(pages_); }

 private:
  // Visits the words whose summary bit is set, clearing the bit and handing the word to
  // `take` (which exchanges it); then the heavy side of the asymmetric fence.
  template <class Take>
  void take_dirty_words(Take&& take) const;

  // num_words() words, then the summary (detail::summary_of).
  std::unique_ptr<std::atomic<std::uint64_t>[]> words_;
  std::size_t len_;
  std::size_t pages_;
  unsigned shift_;
};

static_assert(Bitmap<AtomicBitmap> && NewBitmap<AtomicBitmap> && BitmapSlice<AtomicBitmapSlice>);

}  // namespace guestmem
