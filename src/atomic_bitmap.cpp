#include "guestmem/atomic_bitmap.hpp"

#include <algorithm>
#include <bit>

namespace guestmem {

namespace detail {

void set_bits_slow(std::atomic<std::uint64_t>* words, std::size_t pages, std::size_t w,
                   std::uint64_t mask) noexcept {
  // Release: a reset that takes these bits sees the data stores of the write. Acquire: a
  // fetch_or that follows a reset's exchange of the word sees that reset's clear of the
  // summary bit in the load below, and sets the bit again.
  words[w].fetch_or(mask, std::memory_order_acq_rel);
  // Checked whatever the fetch_or returned: the writer that made the word non-zero may not
  // have set the summary bit yet, and this write must not return before the bit is set.
  if (summary_has(words, pages, w)) {
    return;
  }
  // Release, with the acquire of a reset's exchange of the summary: a reset that finds the bit
  // exchanges the word after the fetch_or above. (The argument above set_bits does not rely
  // on it.)
  summary_of(words, pages)[w / 64].fetch_or(std::uint64_t{1} << (w % 64),
                                            std::memory_order_release);
}

void mark_words(std::atomic<std::uint64_t>* words, std::size_t pages, std::size_t first,
                std::size_t last) noexcept {
  for (std::size_t w = first / 64; w <= last / 64; ++w) {
    const unsigned lo = w == first / 64 ? static_cast<unsigned>(first % 64) : 0U;
    const unsigned hi = w == last / 64 ? static_cast<unsigned>(last % 64) : 63U;
    set_bits(words, pages, w, bit_range(lo, hi));
  }
}

}  // namespace detail

AtomicBitmap::AtomicBitmap(std::size_t len, std::size_t page_size)
    : len_(len),
      pages_(0),
      shift_(static_cast<unsigned>(std::countr_zero(page_size))) {
  GUESTMEM_ASSERT(std::has_single_bit(page_size), "AtomicBitmap page size must be a power of two");
  pages_ = len / page_size + (len % page_size != 0 ? 1 : 0);
  // Value-initialised: every word starts clean, and so does the summary.
  words_ = std::make_unique<std::atomic<std::uint64_t>[]>(num_words() +
                                                          detail::words_for(num_words()));
  // Marks skip their atomic operation when a bit is already set; resets then need the
  // heavy side of an asymmetric fence.
  detail::enable_asymmetric_fences();
}

template <class Take>
void AtomicBitmap::take_dirty_words(Take&& take) const {
  std::atomic<std::uint64_t>* summary = detail::summary_of(words_.get(), pages_);
  for (std::size_t k = 0; k < detail::words_for(num_words()); ++k) {
    // A clean stretch of 64 words costs one load.
    if (summary[k].load(std::memory_order_relaxed) == 0) {
      continue;
    }
    // Clear the summary bits first: a write to a word after its exchange below finds its
    // summary bit clear and sets it again, for the next reset.
    for (std::uint64_t bits = summary[k].exchange(0, std::memory_order_acquire); bits != 0;
         bits &= bits - 1) {
      const std::size_t w = k * 64 + static_cast<std::size_t>(std::countr_zero(bits));
      // An exchange, not a store: a bit set between a load and here would be lost. Acquire:
      // the data of the writes whose bits it takes is visible to the caller. Release: a write
      // whose acquire reads a later value of the word sees the summary clear above, so it
      // does not return before setting the bit again.
      take(w, words_[w].exchange(0, std::memory_order_acq_rel));
    }
  }
  // A write that found its bit set before the exchange is now visible to the caller's copy;
  // one after it finds the bit clear and sets it for the next reset.
  detail::heavy_fence();
}

std::vector<std::uint64_t> AtomicBitmap::to_words() const {
  std::vector<std::uint64_t> out(num_words());
  for (std::size_t w = 0; w < out.size(); ++w) {
    out[w] = words_[w].load(std::memory_order_acquire);
  }
  return out;
}

std::vector<std::uint64_t> AtomicBitmap::get_and_reset() const {
  std::vector<std::uint64_t> out(num_words());
  // The size matches by construction.
  (void)get_and_reset(std::span(out));
  return out;
}

Result<void> AtomicBitmap::get_and_reset(std::span<std::uint64_t> out) const {
  if (out.size() != num_words()) {
    return std::unexpected(Error::at(ErrorCode::InvalidBitmap, out.size(), num_words()));
  }
  std::fill(out.begin(), out.end(), std::uint64_t{0});
  take_dirty_words([&](std::size_t w, std::uint64_t bits) { out[w] = bits; });
  return {};
}

void AtomicBitmap::reset() const {
  take_dirty_words([](std::size_t, std::uint64_t) {});
}

void AtomicBitmap::reset_range(std::size_t offset, std::size_t len) const {
  if (len == 0) {
    return;
  }
  const std::size_t first = offset >> shift_;
  if (first >= pages_) {
    return;
  }
  const std::size_t last = detail::last_page(offset, len, shift_, pages_);
  for (std::size_t w = first / 64; w <= last / 64; ++w) {
    const unsigned lo = w == first / 64 ? static_cast<unsigned>(first % 64) : 0U;
    const unsigned hi = w == last / 64 ? static_cast<unsigned>(last % 64) : 63U;
    const std::uint64_t mask = detail::bit_range(lo, hi);
    // The summary bit stays: it only makes a later reset look at a word that may be clean.
    if ((words_[w].load(std::memory_order_relaxed) & mask) != 0) {
      words_[w].fetch_and(~mask, std::memory_order_relaxed);
    }
  }
  detail::heavy_fence();
}

Result<void> AtomicBitmap::merge(std::span<const std::uint64_t> words) const {
  const std::size_t tail = pages_ % 64;
  if (words.size() != num_words() || (tail != 0 && (words.back() >> tail) != 0)) {
    return std::unexpected(Error::at(ErrorCode::InvalidBitmap, words.size(), num_words()));
  }
  for (std::size_t w = 0; w < words.size(); ++w) {
    if (words[w] != 0) {
      detail::set_bits(words_.get(), pages_, w, words[w]);
    }
  }
  return {};
}

}  // namespace guestmem
