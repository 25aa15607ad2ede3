// guestmem: volatile views of guest memory.
//
// A `VolatileSlice` is a bounds-checked (pointer, length) view of memory that another party,
// the guest, may change at any time. It never hands out a `T&` or a `std::span` into that
// memory: every access copies, so guest changes during an access cannot break a C++
// invariant, and the views have the full byte-access interface at offsets (std::size_t).
// `VolatileRef<T>` is a view of one `T`, `VolatileArrayRef<T>` of an array of them.
//
// Each view carries the dirty-bitmap slice of the memory it covers (nothing for the default
// `NoBitmap`) and reports the bytes it writes.
//
// Validity: a view does not own its memory. One obtained from a region or a guest memory is
// valid while that region is alive (for GuestMemoryMmap: while any collection holding the
// region, or a shared_ptr to it, is alive).
//
//   auto slice = region.get_slice(MemoryRegionAddress{0x100}, 64);      // Result<VolatileSlice>
//   auto [head, tail] = *slice->split_at(16);
//   head.write_obj(std::uint32_t{7}, 0);
//   std::array<std::uint32_t, 12> words;
//   tail.copy_to(std::span(words));                                       // 12 elements
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>

#include "guestmem/bitmap.hpp"
#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/bytes_impl.hpp"
#include "guestmem/detail/copy.hpp"
#include "guestmem/detail/fallible_impl.hpp"
#include "guestmem/detail/fwd.hpp"
#include "guestmem/error.hpp"

namespace guestmem {

template <ByteValued T, BitmapSlice S = NoBitmap>
class VolatileRef;
template <ByteValued T, BitmapSlice S = NoBitmap>
class VolatileArrayRef;

namespace detail {

/// Yields one item, then nothing: the piece sequence of a container that is one piece.
template <class Item>
class OneItem {
 public:
  explicit OneItem(Item item) noexcept : item_(std::move(item)) {}
  std::optional<Item> next() noexcept {
    if (done_) {
      return std::nullopt;
    }
    done_ = true;
    return std::move(item_);
  }

 private:
  Item item_;
  bool done_ = false;
};

/// The end of [offset, offset + count) in a view of `size` bytes, or the error for it.
[[nodiscard]] constexpr Result<std::size_t> checked_end(std::size_t offset, std::size_t count,
                                                        std::size_t size) noexcept {
  std::size_t end = 0;
  if (__builtin_add_overflow(offset, count, &end)) {
    return std::unexpected(Error::overflow(offset, count));
  }
  if (end > size) {
    return std::unexpected(Error::out_of_bounds(offset, count, size));
  }
  return end;
}

}  // namespace detail

/// A bounds-checked (pointer, length) view of memory the guest may change at any time, with the
/// byte-access interface at offsets, reporting its writes to the bitmap slice `S` (see the top of
/// this header). Copies are views of the same memory. Validity: as the memory it was made from.
template <BitmapSlice S>
class VolatileSlice : public detail::BytesMixin<VolatileSlice<S>, std::size_t>,
                      public detail::FallibleMixin<VolatileSlice<S>, std::size_t> {
 public:
  /// The dirty-bitmap slice the view reports its writes to.
  using bitmap_slice_type = S;

  /// An empty view.
  constexpr VolatileSlice() noexcept
    requires std::default_initializable<S>
  = default;

  /// A view of `size` bytes at `addr`, reporting writes to `bitmap`.
  /// Preconditions: [addr, addr + size) is mapped, readable memory and stays so while this
  /// view or any view derived from it is used, and is writable if anything writes through
  /// the view (a view carries no protection: a write to read-only memory faults); `bitmap`
  /// covers the same range.
  /// Concurrency: other threads and the guest may access the memory concurrently.
  [[nodiscard]] static VolatileSlice from_raw_parts(std::uint8_t* addr, std::size_t size,
                                                    S bitmap) noexcept {
    return VolatileSlice(addr, size, std::move(bitmap));
  }

  /// As above, for a bitmap slice type that needs no state (NoBitmap).
  [[nodiscard]] static VolatileSlice from_raw_parts(std::uint8_t* addr, std::size_t size) noexcept
    requires std::default_initializable<S>
  {
    return VolatileSlice(addr, size, S{});
  }

  /// A view of host memory the caller owns (a buffer, an array).
  /// Validity: as long as `bytes` is.
  [[nodiscard]] static VolatileSlice from_bytes(std::span<std::byte> bytes) noexcept
    requires std::same_as<S, NoBitmap>
  {
    // SAFETY: a span refers to live, writable memory for as long as its owner keeps it.
    return VolatileSlice(reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size(), S{});
  }

  /// The bytes the view covers.
  [[nodiscard]] constexpr std::size_t size() const noexcept { return size_; }
  /// The same as size(), under the reference API's name.
  [[nodiscard]] constexpr std::size_t len() const noexcept { return size_; }
  /// Whether the view covers no byte.
  [[nodiscard]] constexpr bool empty() const noexcept { return size_ == 0; }
  /// The same as empty(), under the reference API's name.
  [[nodiscard]] constexpr bool is_empty() const noexcept { return size_ == 0; }

  /// The dirty-bitmap slice of this view. Writes through the pointer of unsafe_host_ptr() are
  /// not tracked: report them here.
  [[nodiscard]] constexpr const S& bitmap() const noexcept { return bitmap_; }

  /// The first byte of the view, for system calls and for DMA set-up.
  /// Validity: as the view. The memory may change at any time; access it only with volatile or
  /// atomic operations, and report writes to bitmap().
  [[nodiscard]] constexpr std::uint8_t* unsafe_host_ptr() const noexcept { return addr_; }

  /// The view from `count` bytes in to the end. `count == size()` gives an empty view.
  /// Errors: OutOfBounds when count > size().
  [[nodiscard]] Result<VolatileSlice> offset(std::size_t count) const noexcept {
    if (count > size_) {
      return std::unexpected(Error::out_of_bounds(count, 0, size_));
    }
    // SAFETY: count <= size_, so [count, size_) lies inside this view.
    return VolatileSlice(addr_ + count, size_ - count, bitmap_.slice_at(count));
  }

  /// The view of `count` bytes at `offset`.
  /// Errors: Overflow when offset + count does not fit; OutOfBounds when it passes the end.
  [[nodiscard]] Result<VolatileSlice> subslice(std::size_t offset, std::size_t count) const noexcept {
    if (auto end = detail::checked_end(offset, count, size_); !end) {
      return std::unexpected(end.error());
    }
    // SAFETY: [offset, offset + count) lies inside this view.
    return VolatileSlice(addr_ + offset, count, bitmap_.slice_at(offset));
  }

  /// The views [0, mid) and [mid, size()).
  /// Errors: OutOfBounds when mid > size().
  [[nodiscard]] Result<std::pair<VolatileSlice, VolatileSlice>> split_at(
      std::size_t mid) const noexcept {
    auto tail = offset(mid);
    if (!tail) {
      return std::unexpected(tail.error());
    }
    // SAFETY: offset(mid) checked mid <= size_, so [0, mid) lies inside this view.
    return std::pair{VolatileSlice(addr_, mid, bitmap_), *tail};
  }

  /// Copies min(buf.size(), size() / sizeof(T)) elements into `buf`, from the lowest address
  /// up; elements of 2, 4 or 8 bytes that are aligned in guest memory are read with one access
  /// each. Returns the number of elements copied. Never fails.
  template <ByteValued T, std::size_t N>
    requires(!std::is_const_v<T>)
  std::size_t copy_to(std::span<T, N> buf) const noexcept {
    const std::size_t count = std::min(buf.size(), size_ / sizeof(T));
    auto* dst = reinterpret_cast<std::byte*>(buf.data());
    if constexpr (sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8) {
      for (std::size_t i = 0; i < count; ++i) {
        // SAFETY: element i lies inside both `buf` and this view (i < count).
        detail::read_guest<sizeof(T)>(dst + i * sizeof(T), addr_ + i * sizeof(T), sizeof(T));
      }
    } else {
      // SAFETY: count * sizeof(T) bytes fit in both `buf` and this view.
      detail::read_guest(dst, addr_, count * sizeof(T));
    }
    return count;
  }

  /// Copies min(buf.size(), size() / sizeof(T)) elements from `buf`, as copy_to in the other
  /// direction, and reports them as written. Returns the number of elements copied.
  template <class T, std::size_t N>
    requires ByteValued<T>
  std::size_t copy_from(std::span<T, N> buf) const noexcept {
    const std::size_t count = std::min(buf.size(), size_ / sizeof(T));
    const auto* src = reinterpret_cast<const std::byte*>(buf.data());
    if constexpr (sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8) {
      for (std::size_t i = 0; i < count; ++i) {
        // SAFETY: element i lies inside both `buf` and this view (i < count).
        detail::write_guest<sizeof(T)>(addr_ + i * sizeof(T), src + i * sizeof(T), sizeof(T));
      }
    } else {
      // SAFETY: count * sizeof(T) bytes fit in both `buf` and this view.
      detail::write_guest(addr_, src, count * sizeof(T));
    }
    if (count > 0) {
      bitmap_.mark_dirty(0, count * sizeof(T));
    }
    return count;
  }

  /// Copies min(size(), dst.size()) bytes into `dst` (the two may overlap) and reports them as
  /// written to dst's bitmap. Returns the bytes copied. Never fails.
  template <BitmapSlice D>
  std::size_t copy_to_volatile_slice(const VolatileSlice<D>& dst) const noexcept {
    const std::size_t count = std::min(size_, dst.size());
    // SAFETY: both views are live and hold at least `count` bytes.
    detail::copy_guest(dst.unsafe_host_ptr(), addr_, count);
    if (count > 0) {
      dst.bitmap().mark_dirty(0, count);
    }
    return count;
  }

  /// A view of the `T` at `offset`. Errors: as subslice(offset, sizeof(T)).
  template <ByteValued T>
  [[nodiscard]] Result<VolatileRef<T, S>> get_ref(std::size_t offset) const noexcept {
    if (auto end = detail::checked_end(offset, sizeof(T), size_); !end) {
      return std::unexpected(end.error());
    }
    // SAFETY: sizeof(T) bytes at `offset` lie inside this view.
    return VolatileRef<T, S>::from_raw_parts(addr_ + offset, bitmap_.slice_at(offset));
  }

  /// A view of `count` consecutive `T`s at `offset`.
  /// Errors: Overflow when count * sizeof(T) or the end does not fit; OutOfBounds when the
  /// array passes the end of this view.
  template <ByteValued T>
  [[nodiscard]] Result<VolatileArrayRef<T, S>> get_array_ref(std::size_t offset,
                                                              std::size_t count) const noexcept {
    std::size_t bytes = 0;
    if (__builtin_mul_overflow(count, sizeof(T), &bytes)) {
      return std::unexpected(Error::overflow(offset, count));
    }
    if (auto end = detail::checked_end(offset, bytes, size_); !end) {
      return std::unexpected(end.error());
    }
    // SAFETY: count * sizeof(T) bytes at `offset` lie inside this view.
    return VolatileArrayRef<T, S>::from_raw_parts(addr_ + offset, count,
                                                  bitmap_.slice_at(offset));
  }

 private:
  friend class detail::BytesMixin<VolatileSlice, std::size_t>;
  friend class detail::FallibleMixin<VolatileSlice, std::size_t>;

  constexpr VolatileSlice(std::uint8_t* addr, std::size_t size, S bitmap) noexcept
      : addr_(addr), size_(size), bitmap_(std::move(bitmap)) {}

  // Byte-access hook: the piece [offset, min(offset + count, size())).
  GUESTMEM_ALWAYS_INLINE std::optional<VolatileSlice> first_piece(
      std::size_t offset, std::size_t count, Permissions /*access*/) const noexcept {
    if (offset >= size_) [[unlikely]] {
      return std::nullopt;
    }
    // SAFETY: [offset, offset + min(count, size_ - offset)) lies inside this view.
    return VolatileSlice(addr_ + offset, std::min(count, size_ - offset), bitmap_.slice_at(offset));
  }

  // Byte-access hook: the same piece, or the error for it, as a sequence.
  Result<detail::OneItem<Result<VolatileSlice>>> slices_for(std::size_t offset, std::size_t count,
                                                            Permissions /*access*/) const noexcept {
    if (offset >= size_) {
      return detail::OneItem(
          Result<VolatileSlice>(std::unexpect, Error::out_of_bounds(offset, count, size_)));
    }
    return detail::OneItem(Result<VolatileSlice>(*first_piece(offset, count, Permissions::No)));
  }

  // Byte-access hook: a single access that crosses the end or is misaligned.
  Error single_access_error(ErrorCode reason, std::size_t offset, std::size_t size) const noexcept {
    if (reason == ErrorCode::Misaligned) {
      return Error::misaligned(offset, size);
    }
    return Error::out_of_bounds(offset, size, size_);
  }

  std::uint8_t* addr_ = nullptr;
  std::size_t size_ = 0;
  [[no_unique_address]] S bitmap_{};
};

/// A view of one `T` in guest memory. Loads and stores copy the whole value; a `T` of 1, 2, 4
/// or 8 bytes at an address aligned to its size is accessed with one instruction.
template <ByteValued T, BitmapSlice S>
class VolatileRef {
 public:
  /// Preconditions: sizeof(T) bytes at `addr` are mapped, readable and writable, and stay so
  /// while the view is used; `bitmap` covers them.
  [[nodiscard]] static VolatileRef from_raw_parts(std::uint8_t* addr, S bitmap) noexcept {
    return VolatileRef(addr, std::move(bitmap));
  }

  /// The current value.
  [[nodiscard]] T load() const noexcept {
    std::array<std::byte, sizeof(T)> raw;
    // SAFETY: the view covers sizeof(T) valid bytes (from_raw_parts precondition).
    detail::read_guest<sizeof(T)>(raw.data(), addr_, sizeof(T));
    return std::bit_cast<T>(raw);
  }

  /// Replaces the value and reports the bytes as written.
  void store(const T& value) const noexcept {
    // SAFETY: the view covers sizeof(T) valid bytes (from_raw_parts precondition).
    detail::write_guest<sizeof(T)>(addr_, bytes_of(value).data(), sizeof(T));
    bitmap_.mark_dirty(0, sizeof(T));
  }

  /// The same bytes as a slice.
  [[nodiscard]] VolatileSlice<S> to_slice() const noexcept {
    // SAFETY: the view covers sizeof(T) valid bytes (from_raw_parts precondition).
    return VolatileSlice<S>::from_raw_parts(addr_, sizeof(T), bitmap_);
  }

  /// The bytes the value takes: sizeof(T).
  [[nodiscard]] static constexpr std::size_t size() noexcept { return sizeof(T); }
  /// The dirty-bitmap slice the view reports its writes to. Validity: as the view.
  [[nodiscard]] constexpr const S& bitmap() const noexcept { return bitmap_; }
  /// Validity and rules: as VolatileSlice::unsafe_host_ptr().
  [[nodiscard]] constexpr std::uint8_t* unsafe_host_ptr() const noexcept { return addr_; }

 private:
  constexpr VolatileRef(std::uint8_t* addr, S bitmap) noexcept
      : addr_(addr), bitmap_(std::move(bitmap)) {}

  std::uint8_t* addr_;
  [[no_unique_address]] S bitmap_;
};

/// A view of `size()` consecutive `T`s in guest memory. Indexes are checked: a guest-supplied
/// index out of range is an error, never an out-of-bounds access.
template <ByteValued T, BitmapSlice S>
class VolatileArrayRef {
 public:
  /// Preconditions: count * sizeof(T) bytes at `addr` are mapped, readable and writable, and
  /// stay so while the view is used; count * sizeof(T) does not overflow; `bitmap` covers them.
  [[nodiscard]] static VolatileArrayRef from_raw_parts(std::uint8_t* addr, std::size_t count,
                                                       S bitmap) noexcept {
    return VolatileArrayRef(addr, count, std::move(bitmap));
  }

  /// The number of elements.
  [[nodiscard]] constexpr std::size_t size() const noexcept { return count_; }
  /// The same as size(), under the reference API's name.
  [[nodiscard]] constexpr std::size_t len() const noexcept { return count_; }
  /// Whether the array has no element.
  [[nodiscard]] constexpr bool empty() const noexcept { return count_ == 0; }
  /// The bytes one element takes: sizeof(T).
  [[nodiscard]] static constexpr std::size_t element_size() noexcept { return sizeof(T); }

  /// A view of element `index`. Errors: OutOfBounds when index >= size().
  [[nodiscard]] Result<VolatileRef<T, S>> ref_at(std::size_t index) const noexcept {
    if (index >= count_) {
      return std::unexpected(Error::out_of_bounds(index, 1, count_));
    }
    // SAFETY: index < count_, so the element lies inside the array.
    return VolatileRef<T, S>::from_raw_parts(addr_ + index * sizeof(T),
                                             bitmap_.slice_at(index * sizeof(T)));
  }

  /// Element `index`. Errors: as ref_at.
  [[nodiscard]] Result<T> load(std::size_t index) const noexcept {
    auto ref = ref_at(index);
    if (!ref) {
      return std::unexpected(ref.error());
    }
    return ref->load();
  }

  /// Replaces element `index`. Errors: as ref_at.
  Result<void> store(std::size_t index, const T& value) const noexcept {
    auto ref = ref_at(index);
    if (!ref) {
      return std::unexpected(ref.error());
    }
    ref->store(value);
    return {};
  }

  /// As VolatileSlice::copy_to: copies min(buf.size(), size()) elements, returns the count.
  std::size_t copy_to(std::span<T> buf) const noexcept { return to_slice().copy_to(buf); }

  /// As VolatileSlice::copy_from: copies min(buf.size(), size()) elements, returns the count.
  std::size_t copy_from(std::span<const T> buf) const noexcept {
    return to_slice().copy_from(buf);
  }

  /// The same bytes as a slice.
  [[nodiscard]] VolatileSlice<S> to_slice() const noexcept {
    // SAFETY: the view covers count_ * sizeof(T) valid bytes (from_raw_parts precondition).
    return VolatileSlice<S>::from_raw_parts(addr_, count_ * sizeof(T), bitmap_);
  }

  /// The dirty-bitmap slice the view reports its writes to. Validity: as the view.
  [[nodiscard]] constexpr const S& bitmap() const noexcept { return bitmap_; }
  /// Validity and rules: as VolatileSlice::unsafe_host_ptr().
  [[nodiscard]] constexpr std::uint8_t* unsafe_host_ptr() const noexcept { return addr_; }

 private:
  constexpr VolatileArrayRef(std::uint8_t* addr, std::size_t count, S bitmap) noexcept
      : addr_(addr), count_(count), bitmap_(std::move(bitmap)) {}

  std::uint8_t* addr_;
  std::size_t count_;
  [[no_unique_address]] S bitmap_;
};

}  // namespace guestmem
