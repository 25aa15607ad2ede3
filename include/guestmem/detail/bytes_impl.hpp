// guestmem: the byte-access interface, implemented once for every container.
//
// `BytesMixin<Derived, Addr>` gives a container (a volatile slice, a region, a collection of
// regions, an IOMMU view) the whole byte-access interface at addresses of type `Addr`. The
// container supplies these private hooks and befriends the mixin:
//
//   std::optional<VolatileSlice<S>> first_piece(Addr addr, std::size_t count,
//                                               Permissions access) const;
//       The first contiguous host piece of [addr, addr + count), at most `count` bytes, when
//       `addr` is mapped and its mapping allows `access`; std::nullopt otherwise.
//   std::optional<VolatileSlice<S>> next_piece(Addr addr, std::size_t count,
//                                              Permissions access) const;   (optional)
//       The same, at an `addr` where the previous piece of the same access ended. A
//       container whose lookup can expect the next region there supplies it; the mixin falls
//       back on first_piece.
//   Result<Iter> slices_for(Addr addr, std::size_t count, Permissions access) const;
//       The contiguous host pieces covering [addr, addr + count), in order. `Iter::next()`
//       returns std::optional<Result<VolatileSlice<S>>>: at least one item when count > 0,
//       nothing after an error, and pieces whose sizes add up to at most `count`.
//   Error single_access_error(ErrorCode reason, Addr addr, std::size_t size) const;
//       The error a container reports when a single access of `size` bytes at `addr` crosses
//       the end of its piece (reason OutOfBounds) or is misaligned (reason Misaligned).
//
// The rules (docs/DESIGN.md, "One set of access semantics"):
// - A zero-length access succeeds with 0 bytes wherever it points.
// - `read`, `write`, `read_volatile_from` and `write_volatile_to` may stop short and return
//   the count; the others are all-or-nothing from the caller's view and fail with
//   PartialBuffer(expected, completed), bytes already written staying written.
// - The first piece missing is the container's out-of-range error; a later one missing (a
//   hole, the end of memory) ends the access early.
// - Copies of 1, 2, 4 or 8 bytes at a naturally aligned address are single accesses.
// - Every byte written to guest memory is reported to the piece's dirty bitmap, exactly once.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>

#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/copy.hpp"
#include "guestmem/error.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/volatile_io.hpp"

namespace guestmem::detail {

/// `addr + n` for an address the caller knows is followed by at least `n` valid bytes.
[[nodiscard]] constexpr std::size_t advance(std::size_t addr, std::size_t n) noexcept {
  return addr + n;
}
template <Address A>
[[nodiscard]] constexpr A advance(A addr, std::size_t n) noexcept {
  return addr.unchecked_add(n);
}

/// The same memory as `slice`, without its dirty bitmap, for handing to a transfer callback.
/// (`View` is a parameter only to defer naming VolatileSlice until it is complete.)
template <class Slice, class View = VolatileSlice<>>
[[nodiscard]] View untracked(const Slice& slice) noexcept {
  // SAFETY: `slice` is a live view of exactly these bytes; the result covers the same range
  // and is only used while `slice` is.
  return View::from_raw_parts(slice.unsafe_host_ptr(), slice.size());
}

template <class Derived, class Addr>
class FallibleMixin;

/// The byte-access interface (read, write, read_slice, write_slice, read_obj, write_obj, load,
/// store, the descriptor transfers, ...) that every container inherits, at addresses of type
/// `Addr`, with one set of rules for all of them (docs/DESIGN.md, "One set of access semantics,
/// implemented once"). `Derived` is the container, which says how a range splits into host pieces.
template <class Derived, class Addr>
class BytesMixin {
  // The fallible walks continue a crossing access the same way (continuation).
  friend class FallibleMixin<Derived, Addr>;

 public:
  /// Writes `buf` at `addr`, as much of it as fits.
  /// Returns the bytes written: buf.size(), or fewer when the range reaches a hole or the end.
  /// Errors: the container's out-of-range error when `addr` itself is outside (and `buf` is
  /// not empty). Concurrency: the guest may access the same bytes; only single accesses
  /// (1, 2, 4, 8 aligned bytes) are untorn.
  GUESTMEM_ALWAYS_INLINE Result<std::size_t> write(std::span<const std::byte> buf,
                                                   Addr addr) const {
    const std::size_t done = copy_pieces<Direction::kIn>(buf, addr);
    if (done > 0 || buf.empty()) [[likely]] {
      return done;
    }
    return first_piece_error(addr, buf.size(), Permissions::Write);
  }

  /// Reads into `buf` from `addr`, as much as is there.
  /// Returns the bytes read (fewer than buf.size() at a hole or the end).
  /// Errors: as `write`.
  GUESTMEM_ALWAYS_INLINE Result<std::size_t> read(std::span<std::byte> buf, Addr addr) const {
    const std::size_t done = copy_pieces<Direction::kOut>(buf, addr);
    if (done > 0 || buf.empty()) [[likely]] {
      return done;
    }
    return first_piece_error(addr, buf.size(), Permissions::Read);
  }

  /// Writes all of `buf` at `addr`.
  /// Errors: the container's out-of-range error; PartialBuffer(buf.size(), written) when the
  /// range ends early, in which case the first `written` bytes have been written.
  GUESTMEM_ALWAYS_INLINE Result<void> write_slice(std::span<const std::byte> buf,
                                                  Addr addr) const {
    const std::size_t done = copy_pieces<Direction::kIn>(buf, addr);
    if (done == buf.size()) [[likely]] {
      return {};
    }
    return std::unexpected(partial_error(done, addr, buf.size(), Permissions::Write));
  }

  /// Fills all of `buf` from `addr`.
  /// Errors: as `write_slice`; after PartialBuffer the first `completed` bytes of `buf` hold
  /// guest data and the rest is unchanged.
  GUESTMEM_ALWAYS_INLINE Result<void> read_slice(std::span<std::byte> buf, Addr addr) const {
    const std::size_t done = copy_pieces<Direction::kOut>(buf, addr);
    if (done == buf.size()) [[likely]] {
      return {};
    }
    return std::unexpected(partial_error(done, addr, buf.size(), Permissions::Read));
  }

  /// Reads a `T` at `addr`. A `T` of 1, 2, 4 or 8 bytes at an address aligned to its size is
  /// read with one access. Errors: as `read_slice`.
  template <ByteValued T>
  GUESTMEM_ALWAYS_INLINE Result<T> read_obj(Addr addr) const {
    // One lookup: a container's first_piece may do work that must not be repeated (the
    // IOMMU's miss handler).
    auto first = self().first_piece(addr, sizeof(T), Permissions::Read);
    // The value is built in the result itself, so its bytes are copied once. Every other
    // case returns its own result from out of line: a second path that joined this one
    // would make GCC build both in a temporary and copy it (docs/DESIGN.md).
    if (!first) [[unlikely]] {
      return std::unexpected(partial_error(0, addr, sizeof(T), Permissions::Read));
    }
    if (first->size() == sizeof(T)) [[likely]] {
      return filled_by<T>([src = first->unsafe_host_ptr()](std::span<std::byte, sizeof(T)> buf) {
        // SAFETY: `src` is valid for sizeof(T) bytes (the piece has that size).
        read_guest<sizeof(T)>(buf.data(), src, sizeof(T));
      });
    }
    return read_obj_rest<T>(addr, std::move(*first));
  }

  /// Writes `value` at `addr`, with one access under the same condition as `read_obj`.
  /// Errors: as `write_slice`.
  template <ByteValued T>
  GUESTMEM_ALWAYS_INLINE Result<void> write_obj(const T& value, Addr addr) const {
    const std::size_t done = copy_pieces<Direction::kIn>(bytes_of(value), addr);
    if (done == sizeof(T)) [[likely]] {
      return {};
    }
    return std::unexpected(partial_error(done, addr, sizeof(T), Permissions::Write));
  }

  /// Atomically stores `value` at `addr` with memory order `order`.
  /// Errors: the container's out-of-range error; the container's single-access error when the
  /// value would cross the end of its region or piece, or `addr` is not aligned to sizeof(T)
  /// in host memory (regions are page aligned, so this is the alignment of the offset in the
  /// region). Preconditions: `order` is a valid store order (aborts otherwise).
  template <AtomicAccess T>
  GUESTMEM_ALWAYS_INLINE Result<void> store(T value, Addr addr, std::memory_order order) const {
    auto piece = self().first_piece(addr, sizeof(T), Permissions::Write);
    if (!piece || piece->size() < sizeof(T) || !is_aligned(piece->unsafe_host_ptr(), sizeof(T)))
        [[unlikely]] {
      return single_access_failure<T>(addr, Permissions::Write);
    }
    // SAFETY: the piece holds sizeof(T) bytes aligned to sizeof(T) (checked above).
    atomic_store(piece->unsafe_host_ptr(), value, order);
    piece->bitmap().mark_dirty(0, sizeof(T));
    return {};
  }

  /// Atomically loads a `T` from `addr` with memory order `order`.
  /// Errors and preconditions: as `store`, with a valid load order.
  template <AtomicAccess T>
  GUESTMEM_ALWAYS_INLINE Result<T> load(Addr addr, std::memory_order order) const {
    auto piece = self().first_piece(addr, sizeof(T), Permissions::Read);
    if (!piece || piece->size() < sizeof(T) || !is_aligned(piece->unsafe_host_ptr(), sizeof(T)))
        [[unlikely]] {
      return single_access_failure<T>(addr, Permissions::Read);
    }
    // SAFETY: the piece holds sizeof(T) bytes aligned to sizeof(T) (checked above).
    return atomic_load<T>(piece->unsafe_host_ptr(), order);
  }

  /// Reads up to `count` bytes from `src` into guest memory at `addr`, straight from the
  /// source into guest memory (one readv-style call per batch of pieces when `src` is
  /// vectored). Stops short at a hole, at the end of memory, or when `src` returns fewer
  /// bytes than asked (end of file, a short pipe read).
  /// Returns the bytes transferred. If `src` fails after some bytes were transferred, the
  /// count is returned (as read(2) does) and the failure shows again on the next call.
  /// Errors: the container's out-of-range error; IoError when `src` fails before moving any
  /// byte; CallbackOutOfRange when `src` claims more bytes than it was offered.
  template <ReadVolatile R>
  GUESTMEM_ALWAYS_INLINE Result<std::size_t> read_volatile_from(Addr addr, R& src,
                                                                std::size_t count) const {
    auto moved = transfer<Direction::kIn>(addr, src, count);
    if (moved) [[likely]] {
      return *moved;
    }
    return keep_progress(moved.error());
  }

  /// Reads exactly `count` bytes from `src` into guest memory at `addr`, calling `src` again
  /// after short reads.
  /// Errors: the container's out-of-range error when `addr` is outside; PartialBuffer(count,
  /// done) when the range or the source ends early; IoError or CallbackOutOfRange with
  /// `completed()` = bytes transferred before the failure. Bytes transferred stay written.
  template <ReadVolatile R>
  GUESTMEM_ALWAYS_INLINE Result<void> read_exact_volatile_from(Addr addr, R& src,
                                                               std::size_t count) const {
    return exact(addr, count,
                 [&](Addr at, std::size_t n) { return transfer<Direction::kIn>(at, src, n); });
  }

  /// Writes up to `count` bytes of guest memory at `addr` to `dst`, as `read_volatile_from`
  /// in the other direction. Stops short when `dst` accepts fewer bytes than offered.
  template <WriteVolatile W>
  GUESTMEM_ALWAYS_INLINE Result<std::size_t> write_volatile_to(Addr addr, W& dst,
                                                               std::size_t count) const {
    auto moved = transfer<Direction::kOut>(addr, dst, count);
    if (moved) [[likely]] {
      return *moved;
    }
    return keep_progress(moved.error());
  }

  /// Writes exactly `count` bytes of guest memory at `addr` to `dst`, as
  /// `read_exact_volatile_from` in the other direction.
  template <WriteVolatile W>
  GUESTMEM_ALWAYS_INLINE Result<void> write_all_volatile_to(Addr addr, W& dst,
                                                            std::size_t count) const {
    return exact(addr, count,
                 [&](Addr at, std::size_t n) { return transfer<Direction::kOut>(at, dst, n); });
  }

 protected:
  BytesMixin() = default;
  ~BytesMixin() = default;
  /// Copied as part of the container that derives from it; it has no state of its own.
  BytesMixin(const BytesMixin&) = default;
  /// Assigned as part of the container that derives from it; it has no state of its own.
  BytesMixin& operator=(const BytesMixin&) = default;

 private:
  // Pieces handed to one vectored call.
  static constexpr std::size_t kBatch = 16;

  [[nodiscard]] const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }

  // ---- copies. The whole access in its first piece is handled inline; anything else
  // (pieces in adjacent regions, a hole) by an out-of-line walk that gets the first piece in
  // registers and returns a plain count. No Result or Error is built on these paths: an Error
  // on the success path costs more than the access. `N` is the buffer's static extent, when
  // it has one: for objects it bounds every copy at compile time.

  // The two directions of a copy or transfer: into guest memory (which marks what it
  // writes) and out of it.
  enum class Direction { kIn, kOut };

  template <Direction kDir>
  static constexpr Permissions kAccessOf = kDir == Direction::kIn ? Permissions::Write
                                                                  : Permissions::Read;

  // Copies n bytes between `data` and the start of `piece`. `N` bounds n at compile time
  // when the buffer has a static extent.
  template <Direction kDir, std::size_t N, class Piece, class Byte>
  GUESTMEM_ALWAYS_INLINE static void copy_piece(const Piece& piece, Byte* data, std::size_t n) {
    // SAFETY: every caller passes a live piece of at least n bytes and a buffer position
    // with at least n bytes left.
    if constexpr (kDir == Direction::kIn) {
      write_guest<N>(piece.unsafe_host_ptr(), data, n);
      piece.bitmap().mark_dirty(0, n);
    } else {
      read_guest<N>(data, piece.unsafe_host_ptr(), n);
    }
  }

  // Copies `buf` into (kIn) or out of (kOut) [addr, ...) and reports the bytes copied:
  // buf.size(), fewer at a hole, 0 when `addr` itself is outside.
  template <Direction kDir, class Byte, std::size_t N>
  GUESTMEM_ALWAYS_INLINE std::size_t copy_pieces(std::span<Byte, N> buf, Addr addr) const {
    if (buf.empty()) {
      return 0;
    }
    auto first = self().first_piece(addr, buf.size(), kAccessOf<kDir>);
    if (!first) [[unlikely]] {
      return 0;
    }
    if (first->size() == buf.size()) [[likely]] {
      copy_piece<kDir, N>(*first, buf.data(), buf.size());
      return buf.size();
    }
    return copy_rest<kDir>(buf, addr, *first);
  }

  // Converts to a T whose bytes `fill(std::span<std::byte, sizeof(T)>)` writes. Handed to
  // Result<T>'s in-place constructor, so that the T is built in the result itself: a named T
  // returned from here is, where a byte array through bit_cast is copied (GCC 12).
  template <class T, class Fill>
  struct FilledBy {
    Fill fill;
    // NOLINTNEXTLINE(google-explicit-constructor): the conversion is the point.
    GUESTMEM_ALWAYS_INLINE operator T() const noexcept {
      if constexpr (std::is_default_constructible_v<T>) {
        T value;
        fill(writable_bytes_of(value));
        return value;
      } else {
        std::array<std::byte, sizeof(T)> raw;
        fill(std::span(raw));
        return std::bit_cast<T>(raw);
      }
    }
  };
  template <class T, class Fill>
  GUESTMEM_ALWAYS_INLINE static Result<T> filled_by(Fill fill) {
    return Result<T>(std::in_place, FilledBy<T, Fill>{std::move(fill)});
  }

  // Converts to the T that walk_value reads; handed to Result<T>'s in-place constructor like
  // FilledBy. The walk is a loop, and GCC builds a T that an inlined loop fills in a
  // temporary and copies it, so the T comes from a call whose return slot is the result.
  template <class T, class Piece>
  struct WalkedValue {
    const BytesMixin* mixin;
    Addr addr;
    const Piece* first;
    std::size_t* done;
    // NOLINTNEXTLINE(google-explicit-constructor): the conversion is the point.
    GUESTMEM_ALWAYS_INLINE operator T() const noexcept {
      return mixin->walk_value<T>(addr, *first, *done);
    }
  };
  // The T read from the pieces of [addr, addr + sizeof(T)), starting with `first`, and in
  // `done` the bytes read; the bytes after them are indeterminate. Returns its named T by
  // copy elision, straight into the caller's storage.
  template <class T, class Piece>
  [[gnu::noinline]] T walk_value(Addr addr, Piece first, std::size_t& done) const noexcept {
    T value;
    done = walk_copy<Direction::kOut>(writable_bytes_of(value), addr, std::move(first));
    return value;
  }

  // read_obj of a value that starts in `first` and goes on in adjacent regions: the walk
  // over them, straight into the result. A T of up to 16 bytes is zeroed in place first (one
  // or two stores) and walked into there; a larger T (whose zeroing GCC makes a `rep stos`)
  // comes from walk_value. Either way no copy of the T follows the walk: reloading bytes
  // stored piece by piece with wider loads stalls the CPU.
  template <ByteValued T, class Piece>
  [[gnu::noinline]] Result<T> read_obj_rest(Addr addr, Piece first) const {
    std::size_t done = 0;
    constexpr bool kSmall = sizeof(T) <= 16 || !std::is_default_constructible_v<T>;
    // Each branch returns a prvalue, so `result` is the T's storage either way.
    Result<T> result = [&] [[gnu::always_inline]] {
      if constexpr (kSmall) {
        return filled_by<T>([](std::span<std::byte, sizeof(T)> buf) {
          std::memset(buf.data(), 0, sizeof(T));
        });
      } else {
        return Result<T>(std::in_place, WalkedValue<T, Piece>{this, addr, &first, &done});
      }
    }();
    if constexpr (kSmall) {
      done = walk_copy<Direction::kOut>(writable_bytes_of(*result), addr, std::move(first));
    }
    if (done != sizeof(T)) [[unlikely]] {
      result = std::unexpected(partial_error(done, addr, sizeof(T), Permissions::Read));
    }
    return result;
  }

  // The walk over the pieces of an access that did not fit its first piece.
  template <Direction kDir, class Byte, std::size_t N, class Piece>
  [[gnu::noinline]] std::size_t copy_rest(std::span<Byte, N> buf, Addr addr, Piece first) const {
    return walk_copy<kDir>(buf, addr, std::move(first));
  }

  // copy_rest's body: copies `buf` over the pieces of [addr, ...), starting with `first`.
  template <Direction kDir, class Byte, std::size_t N, class Piece>
  GUESTMEM_ALWAYS_INLINE std::size_t walk_copy(std::span<Byte, N> buf, Addr addr,
                                               Piece first) const {
    return walk(addr, buf.size(), kAccessOf<kDir>, std::move(first),
                [buf](const Piece& piece, std::size_t done) -> std::size_t {
                  // The pieces add up to at most buf.size() bytes, so n is the piece; the
                  // min() lets the compiler see the buffer bound.
                  const std::size_t n = std::min(piece.size(), buf.size() - done);
                  copy_piece<kDir, N>(piece, buf.data() + done, n);
                  return n;
                });
  }

  // Runs `step(piece, done)` over the pieces of [addr, addr + count), starting with `piece`
  // (the first one), until one is missing, `step` handles fewer bytes than its piece, or
  // `count` bytes are done; returns the bytes done.
  template <class Piece, class Step>
  GUESTMEM_ALWAYS_INLINE std::size_t walk(Addr addr, std::size_t count, Permissions access,
                                          Piece piece, Step&& step) const {
    std::size_t done = 0;
    for (;;) {
      const std::size_t n = step(piece, done);
      done += n;
      if (done == count || n < piece.size()) {
        return done;
      }
      // Cannot wrap: addr + done is the end of a piece that exists.
      auto next = continuation(advance(addr, done), count - done, access);
      if (!next) {
        return done;
      }
      piece = std::move(*next);
    }
  }

  // The piece at `addr`, where the previous piece of the same access ended: the container's
  // next_piece hook when it has one (a lookup that expects the next region), else first_piece.
  GUESTMEM_ALWAYS_INLINE auto continuation(Addr addr, std::size_t count,
                                           Permissions access) const noexcept {
    if constexpr (requires { self().next_piece(addr, count, access); }) {
      return self().next_piece(addr, count, access);
    } else {
      return self().first_piece(addr, count, access);
    }
  }

  // The error of an all-or-nothing access that moved `done` of `expected` bytes.
  [[gnu::noinline]] Error partial_error(std::size_t done, Addr addr, std::size_t expected,
                                        Permissions access) const {
    if (done == 0) {
      return first_piece_error(addr, expected, access).error();
    }
    return Error::partial_buffer(expected, done);
  }

  // The error for [addr, addr + count) when its first piece is missing.
  [[gnu::noinline]] std::unexpected<Error> first_piece_error(Addr addr, std::size_t count,
                                                             Permissions access) const {
    auto slices = self().slices_for(addr, count, access);
    if (!slices) {
      return std::unexpected(slices.error());
    }
    auto item = slices->next();
    GUESTMEM_ASSERT(item && !item->has_value(),
                    "slices_for found a first piece that first_piece did not");
    return std::unexpected(item->error());
  }

  // The error of a single access of sizeof(T) bytes at `addr` that the fast path refused.
  template <class T>
  [[gnu::noinline]] std::unexpected<Error> single_access_failure(Addr addr,
                                                                 Permissions access) const {
    auto slices = self().slices_for(addr, sizeof(T), access);
    if (!slices) {
      return std::unexpected(slices.error());
    }
    auto item = slices->next();
    if (!item->has_value()) {
      return std::unexpected(item->error());
    }
    if ((*item)->size() < sizeof(T)) {
      return std::unexpected(self().single_access_error(ErrorCode::OutOfBounds, addr, sizeof(T)));
    }
    return std::unexpected(self().single_access_error(ErrorCode::Misaligned, addr, sizeof(T)));
  }

  // A transfer that failed after moving bytes reports the bytes, as read(2) does.
  [[gnu::noinline]] static Result<std::size_t> keep_progress(const Error& error) {
    if (error.code() == ErrorCode::IoError && error.completed() > 0) {
      return error.completed();
    }
    return std::unexpected(error);
  }

  // Runs `step(slice, done)` over the pieces of [addr, addr + count); `done` is the number of
  // bytes handled before the piece. `step` returns the bytes of the piece it handled, as
  // std::size_t or Result<std::size_t>; fewer than the piece ends the walk. Returns the bytes
  // handled. The first piece missing is an error; a later one missing ends the walk. A failed
  // step is returned with completed() = bytes handled before it.
  template <class Step>
  GUESTMEM_ALWAYS_INLINE Result<std::size_t> for_each_slice(Addr addr, std::size_t count,
                                                            Permissions access,
                                                            Step&& step) const {
    auto slices = self().slices_for(addr, count, access);
    if (!slices) {
      return std::unexpected(slices.error());
    }
    std::size_t done = 0;
    while (auto item = slices->next()) {
      if (!item->has_value()) {
        if (done == 0) {
          return std::unexpected(item->error());
        }
        break;
      }
      const auto& slice = **item;
      std::size_t moved = 0;
      if constexpr (std::is_same_v<decltype(step(slice, done)), std::size_t>) {
        moved = step(slice, done);
      } else {
        auto result = step(slice, done);
        if (!result) {
          return std::unexpected(result.error().with_completed(done));
        }
        moved = *result;
      }
      done += moved;
      if (moved < slice.size()) {
        break;
      }
    }
    return done;
  }

  // Reports to `piece`'s bitmap what a call into a source wrote there: the bytes it returned,
  // or every byte of the piece when it failed or claimed more than it was offered. Such a call
  // may have written anywhere in what it was offered (read(2) can fail with EFAULT after
  // copying some bytes), and a page reported dirty too many costs a migration one copy where a
  // page too few corrupts the destination.
  template <class Slice>
  GUESTMEM_ALWAYS_INLINE static void mark_written(const Slice& piece, const Result<std::size_t>& moved) {
    piece.bitmap().mark_dirty(0, moved && *moved <= piece.size() ? *moved : piece.size());
  }

  template <Direction kDir, class Io, class View>
  GUESTMEM_ALWAYS_INLINE static Result<std::size_t> transfer_one(Io& io, const View& view) {
    if constexpr (kDir == Direction::kIn) {
      return io.read_volatile(view);
    } else {
      return io.write_volatile(view);
    }
  }

  // One transfer over [addr, addr + count): a single call when the range is one piece,
  // the general walk otherwise. Errors carry completed() = bytes moved before them.
  template <Direction kDir, class Io>
  GUESTMEM_ALWAYS_INLINE Result<std::size_t> transfer(Addr addr, Io& io,
                                                      std::size_t count) const {
    constexpr Permissions kAccess = kAccessOf<kDir>;
    if (count == 0) {
      return 0;
    }
    if (auto piece = self().first_piece(addr, count, kAccess); piece && piece->size() == count)
        [[likely]] {
      auto moved = transfer_one<kDir>(io, untracked(*piece));
      if constexpr (kDir == Direction::kIn) {
        mark_written(*piece, moved);
      }
      if (moved && *moved <= count) [[likely]] {
        return *moved;
      }
      return std::unexpected(moved ? Error::callback_out_of_range(count, *moved) : moved.error());
    }
    return transfer_slow<kDir>(addr, io, count);
  }

  template <Direction kDir, class Io>
  [[gnu::noinline]] Result<std::size_t> transfer_slow(Addr addr, Io& io,
                                                      std::size_t count) const {
    constexpr Permissions kAccess = kAccessOf<kDir>;
    constexpr bool kVectored =
        kDir == Direction::kIn ? ReadVolatileVectored<Io> : WriteVolatileVectored<Io>;
    if constexpr (kVectored) {
      return vectored<kDir == Direction::kIn>(addr, count, kAccess, [&](auto views) {
        if constexpr (kDir == Direction::kIn) {
          return io.read_volatile_vectored(views);
        } else {
          return io.write_volatile_vectored(views);
        }
      });
    } else {
      return for_each_slice(addr, count, kAccess,
                            [&](const auto& slice, std::size_t) -> Result<std::size_t> {
                              auto moved = transfer_one<kDir>(io, untracked(slice));
                              if constexpr (kDir == Direction::kIn) {
                                mark_written(slice, moved);
                              }
                              if (moved && *moved > slice.size()) {
                                return std::unexpected(
                                    Error::callback_out_of_range(slice.size(), *moved));
                              }
                              return moved;
                            });
    }
  }

  // Hands the pieces of [addr, addr + count) to `call` in batches of up to kBatch views,
  // stopping after a batch that was not transferred completely. With `kMarks`, the bytes
  // transferred are reported to the pieces' bitmaps.
  template <bool kMarks, class Call>
  Result<std::size_t> vectored(Addr addr, std::size_t count, Permissions access,
                               Call&& call) const {
    auto slices = self().slices_for(addr, count, access);
    if (!slices) [[unlikely]] {
      return std::unexpected(slices.error());
    }
    using Slice = std::remove_cvref_t<decltype(**slices->next())>;
    using View = decltype(untracked(std::declval<const Slice&>()));
    std::size_t done = 0;
    bool more = true;
    while (more) {
      std::array<View, kBatch> views{};
      std::array<std::optional<Slice>, kBatch> pieces{};
      std::size_t used = 0;
      std::size_t offered = 0;
      while (used < kBatch) {
        auto item = slices->next();
        if (!item || !item->has_value()) {
          if (item && done == 0 && used == 0) {
            return std::unexpected(item->error());
          }
          more = false;
          break;
        }
        pieces[used].emplace(**item);
        views[used] = untracked(**item);
        offered += (**item).size();
        ++used;
      }
      if (used == 0) {
        break;
      }
      auto moved = call(std::span<const View>(views.data(), used));
      const bool lied = moved && *moved > offered;
      if constexpr (kMarks) {
        // As mark_written does for one piece.
        std::size_t left = moved && !lied ? *moved : offered;
        for (std::size_t i = 0; i < used && left > 0; ++i) {
          const std::size_t n = std::min(left, pieces[i]->size());
          pieces[i]->bitmap().mark_dirty(0, n);
          left -= n;
        }
      }
      if (!moved) {
        return std::unexpected(moved.error().with_completed(done));
      }
      if (lied) {
        return std::unexpected(Error::callback_out_of_range(offered, *moved).with_completed(done));
      }
      done += *moved;
      if (*moved < offered) {
        break;
      }
    }
    return done;
  }

  // Repeats `transfer(at, n)` until `count` bytes are done; the first call inline.
  template <class Transfer>
  GUESTMEM_ALWAYS_INLINE Result<void> exact(Addr addr, std::size_t count,
                                            Transfer&& transfer) const {
    if (count == 0) {
      return {};
    }
    auto first = transfer(addr, count);
    if (first && *first == count) [[likely]] {
      return {};
    }
    return exact_rest(addr, count, first, transfer);
  }

  template <class Transfer>
  [[gnu::noinline]] Result<void> exact_rest(Addr addr, std::size_t count,
                                            Result<std::size_t> moved, Transfer& transfer) const {
    std::size_t done = 0;
    for (;;) {
      if (!moved) {
        const Error& error = moved.error();
        if (error.code() == ErrorCode::IoError || error.code() == ErrorCode::CallbackOutOfRange) {
          return std::unexpected(error.with_completed(done + error.completed()));
        }
        if (done == 0) {
          return std::unexpected(error);
        }
        return std::unexpected(Error::partial_buffer(count, done));
      }
      if (*moved == 0) {
        return std::unexpected(Error::partial_buffer(count, done));
      }
      done += *moved;
      if (done == count) {
        return {};
      }
      moved = transfer(advance(addr, done), count - done);
    }
  }
};

}  // namespace guestmem::detail
