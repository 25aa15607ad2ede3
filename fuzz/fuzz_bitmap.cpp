// fuzz_bitmap: AtomicBitmap's marks and resets against a model, single-threaded.
//
// Each input picks a bitmap (its length in bytes and a page size from 1 byte to 64 KiB, so
// that the page count reaches past one summary word of 64 words) and runs a stream of
// operations: mark_dirty through the bitmap and through slices at any offset, merge of a
// KVM-layout log (of the right size or not, with bits past the last page or not),
// reset_range, get_and_reset (into a new vector, or into a caller's buffer of the right
// size or not), reset, to_words and dirty_at. The model is one bit per page; after every
// operation that returns words they must equal the model's, so no bit is lost and none is
// invented, and every error must be InvalidBitmap with the sizes it reports.
//
// Offsets and lengths are arbitrary 64-bit values: parts past the end of the bitmap are
// ignored by contract, including ranges whose end does not fit in 64 bits. The end is the
// end of the last page: an offset past len() but inside the last, partly covered page is
// that page, for marks and queries alike.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_common.hpp"
#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/error.hpp"

namespace {

using guestmem::AtomicBitmap;
using guestmem::ErrorCode;
using guestmem::fuzz::Input;

constexpr std::size_t kMaxOps = 64;
constexpr std::size_t kMaxPages = 3 * 64 * 64 + 17;  // three summary words and a bit

class Session {
 public:
  explicit Session(Input& in)
      : in_(in),
        shift_(static_cast<unsigned>(in_.below(17))),
        len_(bitmap_len()),
        pages_(len_ == 0 ? 0 : ((len_ - 1) >> shift_) + 1),
        bitmap_(len_, std::size_t{1} << shift_),
        model_(words()) {}

  void run() {
    GUESTMEM_FUZZ_CHECK(bitmap_.num_pages() == pages_ && bitmap_.len() == len_ &&
                            bitmap_.page_size() == (std::size_t{1} << shift_) &&
                            bitmap_.num_words() == words(),
                        "bitmap geometry: %zu bytes, page %zu: pages %zu (model %zu)", len_,
                        std::size_t{1} << shift_, bitmap_.num_pages(), pages_);
    for (std::size_t op = 0; op < kMaxOps && !in_.empty(); ++op) {
      step();
    }
    compare(bitmap_.to_words(), "to_words at the end");
  }

 private:
  std::size_t bitmap_len() {
    const std::size_t page = std::size_t{1} << shift_;
    const std::size_t pages = in_.below(kMaxPages + 1);
    // A whole number of pages, or a last page that is only partly covered.
    const std::size_t partial = in_.flag() && pages > 0 ? page - 1 - in_.below(page) : 0;
    return pages * page - partial;
  }

  [[nodiscard]] std::size_t words() const { return (pages_ + 63) / 64; }

  // An offset in bytes: near page and word boundaries, near the end, or anything.
  std::uint64_t offset() {
    const std::uint64_t page = std::uint64_t{1} << shift_;
    switch (in_.below(5)) {
      case 0:
        return in_.below(pages_ + 2) * page + static_cast<std::uint64_t>(in_.delta(2));
      case 1:
        return in_.below(words() + 2) * 64 * page + static_cast<std::uint64_t>(in_.delta(2));
      case 2:
        return len_ + static_cast<std::uint64_t>(in_.delta(3));
      case 3:
        return in_.below(len_ + 1);
      default:
        return in_.u64();
    }
  }
  std::uint64_t length() {
    const std::uint64_t page = std::uint64_t{1} << shift_;
    switch (in_.below(5)) {
      case 0:
        return in_.below(3 * page + 2);
      case 1:
        return in_.below(130) * page + static_cast<std::uint64_t>(in_.delta(1));
      case 2:
        return ~std::uint64_t{0} - in_.below(4);
      case 3:
        return in_.below(len_ + 2);
      default:
        return in_.u64();
    }
  }

  // The pages [offset, offset + len) touch, clipped to the bitmap; an end past 2^64 counts as
  // "to the end of the bitmap".
  void model_range(std::uint64_t offset, std::uint64_t len, bool value) {
    if (len == 0) {
      return;
    }
    const std::uint64_t first = offset >> shift_;
    if (first >= pages_) {
      return;
    }
    std::uint64_t last = pages_ - 1;
    if (len - 1 <= ~std::uint64_t{0} - offset) {
      last = std::min<std::uint64_t>(last, (offset + (len - 1)) >> shift_);
    }
    set_pages(first, last, value);
  }

  // Sets or clears the model's pages first..last (inclusive), a word at a time.
  void set_pages(std::uint64_t first, std::uint64_t last, bool value) {
    for (std::uint64_t w = first / 64; w <= last / 64; ++w) {
      const std::uint64_t lo = w == first / 64 ? first % 64 : 0;
      const std::uint64_t hi = w == last / 64 ? last % 64 : 63;
      const std::uint64_t mask = (~std::uint64_t{0} >> (63 - hi)) & (~std::uint64_t{0} << lo);
      model_[w] = value ? (model_[w] | mask) : (model_[w] & ~mask);
    }
  }

  [[nodiscard]] bool model_page(std::uint64_t page) const {
    return page < pages_ && ((model_[page / 64] >> (page % 64)) & 1U) != 0;
  }

  void compare(const std::vector<std::uint64_t>& got, const char* what) const {
    const std::vector<std::uint64_t>& want = model_;
    GUESTMEM_FUZZ_CHECK(got.size() == want.size(), "%s: %zu words, model %zu", what, got.size(),
                        want.size());
    for (std::size_t w = 0; w < want.size(); ++w) {
      GUESTMEM_FUZZ_CHECK(got[w] == want[w],
                          "%s: word %zu is %#llx, model %#llx (bits lost %#llx, invented %#llx)",
                          what, w, static_cast<unsigned long long>(got[w]),
                          static_cast<unsigned long long>(want[w]),
                          static_cast<unsigned long long>(want[w] & ~got[w]),
                          static_cast<unsigned long long>(got[w] & ~want[w]));
    }
  }

  void step() {
    switch (in_.below(10)) {
      case 0:
      case 1: {
        const std::uint64_t off = offset();
        const std::uint64_t len = length();
        bitmap_.mark_dirty(off, len);
        model_range(off, len, true);
        break;
      }
      case 2: {
        // Through a slice: the slice's base plus the offset, both inside the address space.
        const std::uint64_t base = in_.below(len_ + 2);
        const std::uint64_t off = in_.below(len_ + 2);
        const std::uint64_t len = length();
        bitmap_.slice_at(base).slice_at(0).mark_dirty(off, len);
        model_range(base + off, len, true);
        const std::uint64_t probe = in_.below(len_ + 2);
        const bool model_bit = model_page((base + probe) >> shift_);
        GUESTMEM_FUZZ_CHECK(bitmap_.slice_at(base).dirty_at(probe) == model_bit,
                            "slice dirty_at(%llu) from %llu",
                            static_cast<unsigned long long>(probe),
                            static_cast<unsigned long long>(base));
        break;
      }
      case 3: {
        const std::uint64_t off = offset();
        const std::uint64_t len = length();
        bitmap_.reset_range(off, len);
        model_range(off, len, false);
        break;
      }
      case 4:
        merge();
        break;
      case 5: {
        compare(bitmap_.get_and_reset(), "get_and_reset");
        std::fill(model_.begin(), model_.end(), 0);
        break;
      }
      case 6:
        get_and_reset_into();
        break;
      case 7:
        bitmap_.reset();
        std::fill(model_.begin(), model_.end(), 0);
        break;
      case 8:
        compare(bitmap_.to_words(), "to_words");
        break;
      default: {
        const std::uint64_t off = offset();
        const bool want = model_page(off >> shift_);
        GUESTMEM_FUZZ_CHECK(bitmap_.dirty_at(off) == want, "dirty_at(%llu): model %d",
                            static_cast<unsigned long long>(off), want ? 1 : 0);
        break;
      }
    }
  }

  void merge() {
    std::size_t size = words();
    if (in_.below(4) == 0) {
      size = in_.below(words() + 3);
    }
    std::vector<std::uint64_t> log(size);
    for (auto& w : log) {
      w = in_.flag() ? in_.u64() : 0;
    }
    // Mostly logs without bits past the last page (KVM never sets them).
    if (!log.empty() && pages_ % 64 != 0 && in_.below(4) != 0) {
      log.back() &= (std::uint64_t{1} << (pages_ % 64)) - 1;
    }
    const bool stray =
        !log.empty() && pages_ % 64 != 0 && (log.back() >> (pages_ % 64)) != 0;
    auto got = bitmap_.merge(log);
    if (size != words() || stray) {
      GUESTMEM_FUZZ_CHECK(!got && got.error().code() == ErrorCode::InvalidBitmap &&
                              got.error().address() == size && got.error().length() == words(),
                          "merge of %zu words (bitmap %zu, stray bits %d) was not refused", size,
                          words(), stray ? 1 : 0);
      return;  // nothing is merged then
    }
    GUESTMEM_FUZZ_CHECK(got.has_value(), "merge of a valid log failed");
    for (std::size_t w = 0; w < log.size(); ++w) {
      model_[w] |= log[w];
    }
  }

  void get_and_reset_into() {
    std::size_t size = words();
    if (in_.below(4) == 0) {
      size = in_.below(words() + 3);
    }
    // A reused buffer holds last round's bits: get_and_reset must overwrite all of them.
    std::vector<std::uint64_t> out(size, in_.flag() ? ~std::uint64_t{0} : 0);
    auto got = bitmap_.get_and_reset(out);
    if (size != words()) {
      GUESTMEM_FUZZ_CHECK(!got && got.error().code() == ErrorCode::InvalidBitmap &&
                              got.error().address() == size && got.error().length() == words(),
                          "get_and_reset into %zu words (bitmap %zu) was not refused", size,
                          words());
      return;  // nothing is cleared then
    }
    GUESTMEM_FUZZ_CHECK(got.has_value(), "get_and_reset into the right size failed");
    compare(out, "get_and_reset(span)");
    std::fill(model_.begin(), model_.end(), 0);
  }

  Input& in_;
  unsigned shift_;
  std::size_t len_;
  std::size_t pages_;
  AtomicBitmap bitmap_;
  // The model: one bit per page, in the same layout as the bitmap's words.
  std::vector<std::uint64_t> model_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  Session session(in);
  session.run();
  return 0;
}
