// guestmem: readers and writers over memory that may fault.
//
// `VmReader<F>` and `VmWriter<F, S>` are cursors over one contiguous range of memory, after
// Asterinas OSTD's mm::io. `F` says whether accesses may fault:
// - `Fallible`: the memory may vanish at any time (guest memory whose memfd a vhost-user
//   front end truncates, a region unmapped or protected under a device). Every transfer goes
//   through the fault-tolerant primitives of guestmem/fault.hpp and reports a fault as an
//   Error (code Fault, with the host address, the signal and the bytes completed) instead of
//   killing the process.
// - `Infallible`: the memory stays valid (a host buffer): plain copies, no error but running
//   out of room.
// A writer carries the dirty-bitmap slice `S` of its memory and reports every byte it writes,
// including the bytes written before a fault.
//
// Rules:
// - A Fallible transfer in a thread that blocks SIGSEGV or SIGBUS does nothing and fails with
//   FaultSignalBlocked (a fault there would kill the process; guestmem/fault.hpp says when the
//   thread's mask is checked). The containers' reader() and writer() refuse to make a cursor
//   in such a thread.
// - `read_fallible`/`write_fallible`/`fill_zeros` may stop short: they return the bytes done,
//   or the Fault error whose completed() is the bytes done, and leave the cursors after the
//   last byte done, so a caller can resume or report exactly.
// - `read_val`/`write_val`/`read_once`/`write_once` are all-or-nothing from the caller's
//   view: on failure the cursor does not move (bytes written before a fault stay written and
//   are reported to the bitmap).
// - A transfer of 1, 2, 4 or 8 bytes is one load and one store (never torn when aligned);
//   read_once/write_once require alignment and are always one access.
//
// `VmIo` and `VmIoOnce` are the fallible access interfaces of the containers (VolatileSlice,
// GuestRegionMmap, GuestMemoryMmap): try_read, try_write_obj, reader(addr, len), ... (see
// guestmem/detail/fallible_impl.hpp). `PodOnce` is a plain-data type that one instruction
// loads or stores.
//
//   auto reader = mem.reader(desc_addr, desc_len);                 // Result<VmReader<>>
//   std::array<std::byte, 512> buf;
//   auto writer = VmWriter<Infallible>::from_bytes(buf);
//   auto n = reader->read_fallible(writer);
//   if (!n && n.error().code() == ErrorCode::Fault) {
//     // n.error().completed() bytes arrived; the guest memory behind the rest is gone.
//   }
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>

#include "guestmem/bitmap.hpp"
#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/config.hpp"
#include "guestmem/detail/copy.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fault.hpp"

namespace guestmem {

/// Marks a reader or writer whose memory may fault: transfers use the fault-tolerant
/// primitives and report faults as errors.
struct Fallible {};
/// Marks a reader or writer whose memory stays valid: transfers are plain copies.
struct Infallible {};

/// Fallible or Infallible.
template <class F>
concept Fallibility = std::same_as<F, Fallible> || std::same_as<F, Infallible>;

/// Plain data that one instruction loads or stores: 1, 2, 4 or 8 bytes, aligned to its size.
template <class T>
concept PodOnce = ByteValued<T> && !std::is_const_v<T> &&
                  (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8) &&
                  alignof(T) == sizeof(T);

template <Fallibility F = Fallible>
class VmReader;
template <Fallibility F = Fallible, BitmapSlice S = NoBitmap>
class VmWriter;

namespace detail {

template <class U>
inline void copy_one(std::uint8_t* dst, const std::uint8_t* src) noexcept {
  if (is_aligned(dst, sizeof(U)) && is_aligned(src, sizeof(U))) {
    store_relaxed(dst, load_relaxed<U>(src));
  } else {
    bulk_read<sizeof(U)>(reinterpret_cast<std::byte*>(dst), src, sizeof(U));
  }
}

/// Copies between two ranges that stay valid. 1, 2, 4 or 8 bytes aligned on both sides are
/// one access. Preconditions: both ranges valid for `len` bytes and disjoint.
inline void copy_infallible(std::uint8_t* dst, const std::uint8_t* src, std::size_t len) noexcept {
  switch (len) {
    case 1:
      copy_one<std::uint8_t>(dst, src);
      return;
    case 2:
      copy_one<std::uint16_t>(dst, src);
      return;
    case 4:
      copy_one<std::uint32_t>(dst, src);
      return;
    case 8:
      copy_one<std::uint64_t>(dst, src);
      return;
    default:
      bulk_read<std::dynamic_extent>(reinterpret_cast<std::byte*>(dst), src, len);
  }
}

/// Zeroes a range that stays valid. Preconditions: `dst` valid for `len` bytes.
inline void zero_infallible(std::uint8_t* dst, std::size_t len) noexcept {
#if defined(GUESTMEM_TSAN)
  for (std::size_t i = 0; i < len; ++i) {
    store_relaxed<std::uint8_t>(dst + i, 0);
  }
#else
  // SAFETY: the caller guarantees `dst` is valid for `len` bytes (the precondition).
  std::memset(dst, 0, len);
#endif
}

/// The error for `fault`: Fault with the counts, or FaultSignalBlocked when the primitive
/// refused to run (then nothing was done).
[[nodiscard]] inline Error fault_error(const FaultInfo& fault, std::size_t expected,
                                       std::size_t completed) noexcept {
  if (fault.blocked) [[unlikely]] {
    return Error::fault_signal_blocked(fault.signal);
  }
  return Error::fault(fault.address, fault.signal, expected, completed);
}

/// The error of a cursor access of `size` bytes with `left` bytes left.
[[nodiscard]] inline Error too_short(std::size_t size, std::size_t left) noexcept {
  return Error::out_of_bounds(0, size, left);
}

}  // namespace detail

/// A cursor for reading a contiguous range of memory.
/// Validity: a reader does not own its memory; see from_raw_parts and the container that
/// handed it out. Copies of a reader are independent cursors over the same memory.
template <Fallibility F>
class VmReader {
 public:
  /// Whether reads may fault (Fallible) or not (Infallible).
  using fallibility = F;

  /// An empty reader.
  constexpr VmReader() noexcept = default;

  /// A reader of the `len` bytes at `ptr`.
  /// Preconditions: Infallible: the bytes are readable while the reader is used. Fallible:
  /// each byte is readable or faults, reading it has no side effects (no device MMIO), and
  /// install_fault_handler() has succeeded or will on first use (transfers abort where fault
  /// recovery is unsupported; the containers' reader() reports that as an error instead).
  [[nodiscard]] static constexpr VmReader from_raw_parts(const std::uint8_t* ptr,
                                                         std::size_t len) noexcept {
    return VmReader(ptr, len);
  }

  /// A reader of a host buffer. Validity: while `bytes` is.
  [[nodiscard]] static VmReader from_bytes(std::span<const std::byte> bytes) noexcept
    requires std::same_as<F, Infallible>
  {
    return VmReader(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }

  /// The bytes left to read.
  [[nodiscard]] constexpr std::size_t remain() const noexcept {
    return static_cast<std::size_t>(end_ - cursor_);
  }
  /// Whether any byte is left to read: remain() > 0.
  [[nodiscard]] constexpr bool has_remain() const noexcept { return cursor_ != end_; }
  /// The next byte to read. Validity: as the reader's memory.
  [[nodiscard]] constexpr const std::uint8_t* cursor() const noexcept { return cursor_; }

  /// Limits the bytes left to at most `max_remain`.
  constexpr VmReader& limit(std::size_t max_remain) noexcept {
    if (max_remain < remain()) {
      end_ = cursor_ + max_remain;
    }
    return *this;
  }

  /// Skips `count` bytes without reading them.
  /// Preconditions: count <= remain() (aborts otherwise).
  VmReader& skip(std::size_t count) noexcept {
    GUESTMEM_ASSERT(count <= remain(), "VmReader::skip past the end");
    cursor_ += count;
    return *this;
  }

  /// The same cursor, for memory that may fault.
  [[nodiscard]] constexpr VmReader<Fallible> to_fallible() const noexcept {
    return VmReader<Fallible>::from_raw_parts(cursor_, remain());
  }

  /// Copies min(remain(), writer.avail()) bytes into `writer` and advances both.
  /// Returns the bytes copied. Never fails, never stops short of that minimum.
  template <BitmapSlice S>
    requires std::same_as<F, Infallible>
  std::size_t read(VmWriter<Infallible, S>& writer) noexcept {
    const std::size_t count = std::min(remain(), writer.avail());
    // SAFETY: both cursors have at least `count` valid bytes (Infallible preconditions).
    detail::copy_infallible(writer.cursor(), cursor_, count);
    cursor_ += count;
    writer.commit(count);
    return count;
  }

  /// Copies min(remain(), writer.avail()) bytes into `writer` when either side may fault,
  /// stopping at the first byte that faults. Both cursors advance by the bytes copied, even
  /// when it fails, and those bytes are reported to the writer's bitmap.
  /// Returns the bytes copied.
  /// Errors: Fault(host address, signal, expected = the minimum above, completed = bytes
  /// copied); FaultSignalBlocked when the calling thread blocks SIGSEGV or SIGBUS (nothing
  /// copied, the cursors unmoved). May stop short: only at a fault.
  template <Fallibility W, BitmapSlice S>
    requires(std::same_as<F, Fallible> || std::same_as<W, Fallible>)
  Result<std::size_t> read_fallible(VmWriter<W, S>& writer) noexcept {
    const std::size_t count = std::min(remain(), writer.avail());
    // SAFETY: each byte of both ranges is valid or faults (the Fallible preconditions), and
    // the primitive touches nothing outside them.
    const FallibleOutcome copied = fallible_copy(writer.cursor(), cursor_, count);
    cursor_ += copied.done;
    writer.commit(copied.done);
    if (copied.fault) [[unlikely]] {
      return std::unexpected(detail::fault_error(*copied.fault, count, copied.done));
    }
    return count;
  }

  /// Reads a `T` and advances past it. A `T` of 1, 2, 4 or 8 bytes is read with one load.
  /// Errors: OutOfBounds(0, sizeof(T), remain()) when fewer bytes are left; for a Fallible
  /// reader, Fault with completed() = the bytes read before it, or FaultSignalBlocked as
  /// read_fallible. The cursor moves only on success.
  template <ByteValued T>
  Result<T> read_val() noexcept {
    if (remain() < sizeof(T)) [[unlikely]] {
      return std::unexpected(detail::too_short(sizeof(T), remain()));
    }
    std::array<std::byte, sizeof(T)> raw;
    auto* dst = reinterpret_cast<std::uint8_t*>(raw.data());
    if constexpr (std::same_as<F, Fallible>) {
      // SAFETY: `raw` is a local buffer of sizeof(T) bytes; the reader's bytes are valid or
      // fault (Fallible preconditions).
      const FallibleOutcome copied = fallible_copy(dst, cursor_, sizeof(T));
      if (copied.fault) [[unlikely]] {
        return std::unexpected(detail::fault_error(*copied.fault, sizeof(T), copied.done));
      }
    } else {
      // SAFETY: remain() >= sizeof(T) valid bytes (Infallible preconditions).
      detail::copy_infallible(dst, cursor_, sizeof(T));
    }
    cursor_ += sizeof(T);
    return std::bit_cast<T>(raw);
  }

  /// Reads a `T` with one load and advances past it.
  /// Errors: Misaligned(cursor address, sizeof(T)) unless the cursor is aligned to sizeof(T);
  /// OutOfBounds as read_val; for a Fallible reader, Fault with completed() = 0, or
  /// FaultSignalBlocked as read_fallible. The cursor moves only on success.
  template <PodOnce T>
  Result<T> read_once() noexcept {
    using U = detail::UintOfSize<sizeof(T)>;
    if (remain() < sizeof(T)) [[unlikely]] {
      return std::unexpected(detail::too_short(sizeof(T), remain()));
    }
    if (!detail::is_aligned(cursor_, sizeof(T))) [[unlikely]] {
      return std::unexpected(
          Error::misaligned(reinterpret_cast<std::uintptr_t>(cursor_), sizeof(T)));
    }
    U bits;
    if constexpr (std::same_as<F, Fallible>) {
      // SAFETY: sizeof(T) aligned bytes that are valid or fault (Fallible preconditions).
      auto loaded = fallible_load<U>(cursor_);
      if (!loaded) [[unlikely]] {
        return std::unexpected(detail::fault_error(loaded.error(), sizeof(T), 0));
      }
      bits = *loaded;
    } else {
      // SAFETY: sizeof(T) valid bytes aligned to sizeof(T) (checked above).
      bits = detail::load_relaxed<U>(cursor_);
    }
    cursor_ += sizeof(T);
    return std::bit_cast<T>(bits);
  }

 private:
  constexpr VmReader(const std::uint8_t* ptr, std::size_t len) noexcept
      : cursor_(ptr), end_(ptr + len) {}

  const std::uint8_t* cursor_ = nullptr;
  const std::uint8_t* end_ = nullptr;
};

/// A cursor for writing a contiguous range of memory, reporting written bytes to the
/// dirty-bitmap slice `S` of that memory (offsets from the writer's first byte).
/// Validity: as VmReader.
template <Fallibility F, BitmapSlice S>
class VmWriter {
 public:
  /// Whether writes may fault (Fallible) or not (Infallible).
  using fallibility = F;
  /// The dirty bitmap slice that writes are reported to.
  using bitmap_slice_type = S;

  /// An empty writer.
  constexpr VmWriter() noexcept
    requires std::default_initializable<S>
  = default;

  /// A writer of the `len` bytes at `ptr`, reporting writes to `bitmap`.
  /// Preconditions: as VmReader::from_raw_parts, for writing; `bitmap` covers the range.
  [[nodiscard]] static VmWriter from_raw_parts(std::uint8_t* ptr, std::size_t len,
                                               S bitmap) noexcept {
    return VmWriter(ptr, len, std::move(bitmap));
  }
  /// As above, for a bitmap slice type that needs no state (NoBitmap).
  [[nodiscard]] static VmWriter from_raw_parts(std::uint8_t* ptr, std::size_t len) noexcept
    requires std::default_initializable<S>
  {
    return VmWriter(ptr, len, S{});
  }

  /// A writer of a host buffer. Validity: while `bytes` is.
  [[nodiscard]] static VmWriter from_bytes(std::span<std::byte> bytes) noexcept
    requires(std::same_as<F, Infallible> && std::same_as<S, NoBitmap>)
  {
    return VmWriter(reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size(), S{});
  }

  /// The bytes left to write.
  [[nodiscard]] constexpr std::size_t avail() const noexcept {
    return static_cast<std::size_t>(end_ - cursor_);
  }
  /// Whether any space is left to write: avail() > 0.
  [[nodiscard]] constexpr bool has_avail() const noexcept { return cursor_ != end_; }
  /// The next byte to write. Validity: as the writer's memory; report writes through it to
  /// bitmap().
  [[nodiscard]] constexpr std::uint8_t* cursor() const noexcept { return cursor_; }
  /// The bitmap slice of the writer's first byte (not of the cursor).
  [[nodiscard]] constexpr const S& bitmap() const noexcept { return bitmap_; }

  /// Limits the bytes left to at most `max_avail`.
  constexpr VmWriter& limit(std::size_t max_avail) noexcept {
    if (max_avail < avail()) {
      end_ = cursor_ + max_avail;
    }
    return *this;
  }

  /// Skips `count` bytes without writing them (they are not reported as written).
  /// Preconditions: count <= avail() (aborts otherwise).
  VmWriter& skip(std::size_t count) noexcept {
    GUESTMEM_ASSERT(count <= avail(), "VmWriter::skip past the end");
    cursor_ += count;
    return *this;
  }

  /// The same cursor, for memory that may fault.
  [[nodiscard]] VmWriter<Fallible, S> to_fallible() const noexcept {
    auto out = VmWriter<Fallible, S>::from_raw_parts(start_, static_cast<std::size_t>(end_ - start_), bitmap_);
    out.skip(static_cast<std::size_t>(cursor_ - start_));
    return out;
  }

  /// reader.read(*this): copies min(avail(), reader.remain()) bytes. Never fails.
  std::size_t write(VmReader<Infallible>& reader) noexcept
    requires std::same_as<F, Infallible>
  {
    return reader.read(*this);
  }

  /// reader.read_fallible(*this): see VmReader::read_fallible for the result and errors.
  template <Fallibility R>
    requires(std::same_as<F, Fallible> || std::same_as<R, Fallible>)
  Result<std::size_t> write_fallible(VmReader<R>& reader) noexcept {
    return reader.read_fallible(*this);
  }

  /// Writes `value` and advances past it. A `T` of 1, 2, 4 or 8 bytes is one store.
  /// Errors: OutOfBounds(0, sizeof(T), avail()) when fewer bytes are left; for a Fallible
  /// writer, Fault with completed() = the bytes written before it (they stay written and are
  /// reported to the bitmap), or FaultSignalBlocked as VmReader::read_fallible. The cursor
  /// moves only on success.
  template <ByteValued T>
  Result<void> write_val(const T& value) noexcept {
    if (avail() < sizeof(T)) [[unlikely]] {
      return std::unexpected(detail::too_short(sizeof(T), avail()));
    }
    const auto* src = reinterpret_cast<const std::uint8_t*>(bytes_of(value).data());
    if constexpr (std::same_as<F, Fallible>) {
      // SAFETY: `value` is a live object; the writer's bytes are valid or fault.
      const FallibleOutcome copied = fallible_copy(cursor_, src, sizeof(T));
      mark(copied.done);
      if (copied.fault) [[unlikely]] {
        return std::unexpected(detail::fault_error(*copied.fault, sizeof(T), copied.done));
      }
    } else {
      // SAFETY: avail() >= sizeof(T) valid bytes (Infallible preconditions).
      detail::copy_infallible(cursor_, src, sizeof(T));
      mark(sizeof(T));
    }
    cursor_ += sizeof(T);
    return {};
  }

  /// Writes `value` with one store and advances past it.
  /// Errors: Misaligned(cursor address, sizeof(T)) unless the cursor is aligned to sizeof(T);
  /// OutOfBounds as write_val; for a Fallible writer, Fault with completed() = 0 (nothing was
  /// stored), or FaultSignalBlocked as VmReader::read_fallible. The cursor moves only on
  /// success.
  template <PodOnce T>
  Result<void> write_once(const T& value) noexcept {
    using U = detail::UintOfSize<sizeof(T)>;
    if (avail() < sizeof(T)) [[unlikely]] {
      return std::unexpected(detail::too_short(sizeof(T), avail()));
    }
    if (!detail::is_aligned(cursor_, sizeof(T))) [[unlikely]] {
      return std::unexpected(
          Error::misaligned(reinterpret_cast<std::uintptr_t>(cursor_), sizeof(T)));
    }
    const auto bits = std::bit_cast<U>(value);
    if constexpr (std::same_as<F, Fallible>) {
      // SAFETY: sizeof(T) aligned bytes that are valid or fault (Fallible preconditions).
      auto stored = fallible_store<U>(cursor_, bits);
      if (!stored) [[unlikely]] {
        return std::unexpected(detail::fault_error(stored.error(), sizeof(T), 0));
      }
    } else {
      // SAFETY: sizeof(T) valid bytes aligned to sizeof(T) (checked above).
      detail::store_relaxed(cursor_, bits);
    }
    mark(sizeof(T));
    cursor_ += sizeof(T);
    return {};
  }

  /// Writes min(count, avail()) zero bytes and advances past them.
  /// Returns the bytes written. Never fails.
  std::size_t fill_zeros(std::size_t count) noexcept
    requires std::same_as<F, Infallible>
  {
    const std::size_t n = std::min(count, avail());
    // SAFETY: avail() >= n valid bytes (Infallible preconditions).
    detail::zero_infallible(cursor_, n);
    commit(n);
    return n;
  }

  /// Writes min(count, avail()) zero bytes, stopping at the first byte that faults; the
  /// cursor advances by the bytes written, which are reported to the bitmap.
  /// Returns the bytes written.
  /// Errors: Fault(host address, signal, expected = min(count, avail()), completed = bytes
  /// written); FaultSignalBlocked as VmReader::read_fallible. May stop short: only at a fault.
  Result<std::size_t> fill_zeros(std::size_t count) noexcept
    requires std::same_as<F, Fallible>
  {
    const std::size_t n = std::min(count, avail());
    // SAFETY: the writer's bytes are valid or fault (Fallible preconditions).
    const FallibleOutcome filled = fallible_fill(cursor_, 0, n);
    commit(filled.done);
    if (filled.fault) [[unlikely]] {
      return std::unexpected(detail::fault_error(*filled.fault, n, filled.done));
    }
    return n;
  }

 private:
  template <Fallibility>
  friend class VmReader;

  VmWriter(std::uint8_t* ptr, std::size_t len, S bitmap) noexcept
      : start_(ptr), cursor_(ptr), end_(ptr + len), bitmap_(std::move(bitmap)) {}

  // Reports `count` bytes written at the cursor to the bitmap.
  void mark(std::size_t count) const {
    if (count > 0) {
      bitmap_.mark_dirty(static_cast<std::size_t>(cursor_ - start_), count);
    }
  }

  // Reports `count` bytes written at the cursor and advances past them.
  void commit(std::size_t count) {
    mark(count);
    cursor_ += count;
  }

  std::uint8_t* start_ = nullptr;
  std::uint8_t* cursor_ = nullptr;
  std::uint8_t* end_ = nullptr;
  [[no_unique_address]] S bitmap_{};
};

/// The fallible byte-access interface at addresses of type `A` (containers get it from
/// detail::FallibleMixin): the counterparts of `Bytes` that report a fault as an Error, and
/// fallible readers and writers of a range.
template <class M, class A>
concept VmIo = requires(const M& m, A addr, std::span<const std::byte> in,
                        std::span<std::byte> out, std::size_t count) {
  { m.try_write(in, addr) } -> std::same_as<Result<std::size_t>>;
  { m.try_read(out, addr) } -> std::same_as<Result<std::size_t>>;
  { m.try_write_slice(in, addr) } -> std::same_as<Result<void>>;
  { m.try_read_slice(out, addr) } -> std::same_as<Result<void>>;
  { m.template try_read_obj<std::uint64_t>(addr) } -> std::same_as<Result<std::uint64_t>>;
  { m.try_write_obj(std::uint64_t{}, addr) } -> std::same_as<Result<void>>;
  { m.reader(addr, count) } -> std::same_as<Result<VmReader<Fallible>>>;
  { m.writer(addr, count)->avail() } -> std::same_as<std::size_t>;
  requires std::same_as<typename std::remove_cvref_t<decltype(*m.writer(addr, count))>::fallibility,
                        Fallible>;
};

/// Single, never-torn fallible accesses of 1, 2, 4 and 8 bytes at addresses of type `A`.
template <class M, class A>
concept VmIoOnce = requires(const M& m, A addr, std::memory_order order) {
  { m.template try_load<std::uint32_t>(addr, order) } -> std::same_as<Result<std::uint32_t>>;
  { m.try_store(std::uint32_t{}, addr, order) } -> std::same_as<Result<void>>;
  {
    m.template try_compare_exchange<std::uint32_t>(addr, 0, 1)
  } -> std::same_as<Result<std::uint32_t>>;
};

}  // namespace guestmem
