// guestmem: the dirty-tracking hooks.
//
// Every region carries a bitmap object of a type chosen at compile time. Every write path of
// every container reports the exact bytes it wrote with `mark_dirty(offset, len)`, offsets
// relative to the start of the region; reads never report. Views (volatile slices, references)
// carry a *bitmap slice*: the bitmap seen from an offset, so that a view reports writes
// relative to its own start and the slice adds its base.
//
// `NoBitmap` tracks nothing and costs nothing: every call is an empty inline function and the
// object takes no space in a view. A tracking bitmap satisfies `Bitmap` and, to be created by
// the region builders, `NewBitmap`.
//
//   template <guestmem::Bitmap B> void f(const B& bitmap) {
//     bitmap.mark_dirty(0x1000, 8);            // bytes [0x1000, 0x1008) were written
//     auto slice = bitmap.slice_at(0x1000);    // slice.mark_dirty(0, 8) marks the same bytes
//   }
#pragma once

#include <concepts>
#include <cstddef>

#include "guestmem/detail/export.hpp"

namespace guestmem {

/// A bitmap seen from an offset. Cheap to copy; marks through a slice are relative to it. A
/// default-constructed slice is an inert placeholder (lookup tables hold one for "no region");
/// nothing ever marks through it.
template <class S>
concept BitmapSlice = std::copyable<S> && std::default_initializable<S> &&
                      requires(const S& s, std::size_t offset, std::size_t len) {
  { s.mark_dirty(offset, len) } -> std::same_as<void>;
  { s.dirty_at(offset) } -> std::convertible_to<bool>;
  { s.slice_at(offset) } -> std::same_as<S>;
};

/// A dirty bitmap. `mark_dirty` is const: marking happens through shared views, so a tracking
/// bitmap uses atomic operations internally.
template <class B>
concept Bitmap = requires(const B& b, std::size_t offset, std::size_t len) {
  typename B::slice_type;
  { b.mark_dirty(offset, len) } -> std::same_as<void>;
  { b.dirty_at(offset) } -> std::convertible_to<bool>;
  { b.slice_at(offset) } -> std::same_as<typename B::slice_type>;
} && BitmapSlice<typename B::slice_type>;

/// A bitmap that region builders can create for a mapping of `len` bytes.
template <class B>
concept NewBitmap = Bitmap<B> && requires(std::size_t len) {
  { B::with_len(len) } -> std::same_as<B>;
};

// Exported because a shared library hides what a template instantiates with a hidden type:
// without it the snapshot library's functions for GuestMemoryMmap<NoBitmap> would be hidden.
/// No tracking, no cost.
struct GUESTMEM_API NoBitmap {
  /// Its slices are NoBitmap too.
  using slice_type = NoBitmap;

  /// The (empty) bitmap of a mapping of any length.
  static constexpr NoBitmap with_len(std::size_t /*len*/) noexcept { return {}; }
  /// Does nothing: nothing is tracked.
  constexpr void mark_dirty(std::size_t /*offset*/, std::size_t /*len*/) const noexcept {}
  /// Always false: nothing is tracked.
  [[nodiscard]] constexpr bool dirty_at(std::size_t /*offset*/) const noexcept { return false; }
  /// Another NoBitmap.
  [[nodiscard]] constexpr NoBitmap slice_at(std::size_t /*offset*/) const noexcept { return {}; }
};

/// The slice of a bitmap `B` that is reached through a pointer: `slice_at(o).mark_dirty(x, n)`
/// calls `B::mark_dirty(o + x, n)`.
/// Validity: the slice refers to the bitmap and must not outlive it.
template <class B>
class BitmapRefSlice {
 public:
  /// The type of slice_at().
  using slice_type = BitmapRefSlice;

  /// The inert placeholder: refers to no bitmap and must not be marked through.
  constexpr BitmapRefSlice() noexcept = default;
  /// The slice of `bitmap` that starts at byte `base`. Validity: while `bitmap` is alive.
  constexpr BitmapRefSlice(const B& bitmap, std::size_t base) noexcept
      : bitmap_(&bitmap), base_(base) {}

  /// Marks `len` bytes at `offset` (relative to this slice) dirty in the bitmap.
  void mark_dirty(std::size_t offset, std::size_t len) const { bitmap_->mark_dirty(base_ + offset, len); }
  /// Whether the bitmap holds the byte at `offset` (relative to this slice) dirty.
  [[nodiscard]] bool dirty_at(std::size_t offset) const { return bitmap_->dirty_at(base_ + offset); }
  /// The slice that starts `offset` bytes into this one.
  [[nodiscard]] BitmapRefSlice slice_at(std::size_t offset) const noexcept {
    return BitmapRefSlice(*bitmap_, base_ + offset);
  }
  /// The offset of this slice within its bitmap.
  [[nodiscard]] constexpr std::size_t base() const noexcept { return base_; }

 private:
  const B* bitmap_ = nullptr;
  std::size_t base_ = 0;
};

static_assert(Bitmap<NoBitmap> && NewBitmap<NoBitmap>);

}  // namespace guestmem
