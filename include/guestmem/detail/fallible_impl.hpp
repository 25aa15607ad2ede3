// guestmem: the fallible byte-access interface, implemented once for every container.
//
// `FallibleMixin<Derived, Addr>` gives a container the counterparts of the byte-access calls
// (detail/bytes_impl.hpp) that survive memory vanishing under them: a SIGSEGV or SIGBUS
// during the copy becomes an Error with code Fault, the faulting host address, the signal
// and the bytes completed, instead of killing the process. It uses the same private hooks as
// BytesMixin (first_piece, next_piece, slices_for, single_access_error), so the container
// befriends it too; a container with this mixin also has BytesMixin. It follows the same
// rules (docs/DESIGN.md, "One set of access semantics"):
// - A zero-length access succeeds with 0 bytes wherever it points.
// - try_read/try_write may stop short at a hole and return the count; the others are
//   all-or-nothing from the caller's view (PartialBuffer at a hole).
// - The first piece missing is the container's out-of-range error; a later one ends the
//   access.
// - Copies of 1, 2, 4 or 8 bytes are single accesses.
// - Every byte written is reported to the piece's dirty bitmap, including the bytes written
//   before a fault.
// And, for faults: the access stops at the first byte that faults. A Fault error's
// completed() is the number of bytes done before it, so when the fault is on the guest side
// the first guest address not done is `addr + completed()`. Bytes written before a fault stay
// written. Every call first installs the fault handler if needed and fails with
// FaultRecoveryUnsupported where that is impossible, and with FaultSignalBlocked, before
// touching memory, in a thread that blocks SIGSEGV or SIGBUS (see guestmem/fault.hpp).
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>

#include "guestmem/byte_valued.hpp"
#include "guestmem/detail/bytes_impl.hpp"
#include "guestmem/detail/copy.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fault.hpp"
#include "guestmem/permissions.hpp"
#include "guestmem/vm_io.hpp"

namespace guestmem::detail {

/// The fault-tolerant counterpart of BytesMixin (try_read, try_write, try_read_obj, reader, writer,
/// ...) that every container inherits: accesses that turn a SIGSEGV or SIGBUS on guest memory into
/// an ErrorCode::Fault with the bytes done (guestmem/fault.hpp, guestmem/vm_io.hpp).
template <class Derived, class Addr>
class FallibleMixin {
 public:
  /// Reads into `buf` from `addr`, as much as is there, stopping at a fault.
  /// Returns the bytes read (fewer than buf.size() at a hole or the end of memory).
  /// Errors: the container's out-of-range error when `addr` itself is outside (and `buf` is
  /// not empty); Fault(host address, signal, buf.size(), bytes read before the fault);
  /// FaultSignalBlocked (nothing read); FaultRecoveryUnsupported. Concurrency: as read.
  Result<std::size_t> try_read(std::span<std::byte> buf, Addr addr) const {
    auto walked = copy_out(buf, addr);
    if (!walked) {
      return std::unexpected(walked.error());
    }
    return walked->done;
  }

  /// Writes `buf` at `addr`, as much of it as fits, stopping at a fault.
  /// Returns the bytes written. Errors: as try_read; bytes written before a fault stay
  /// written and are reported to the dirty bitmap.
  Result<std::size_t> try_write(std::span<const std::byte> buf, Addr addr) const {
    auto walked = copy_in(buf, addr);
    if (!walked) {
      return std::unexpected(walked.error());
    }
    return walked->done;
  }

  /// Fills all of `buf` from `addr`.
  /// Errors: the container's out-of-range error; PartialBuffer(buf.size(), read) at a hole or
  /// the end of memory; Fault, FaultSignalBlocked and FaultRecoveryUnsupported as try_read.
  Result<void> try_read_slice(std::span<std::byte> buf, Addr addr) const {
    return whole(copy_out(buf, addr), buf.size());
  }

  /// Writes all of `buf` at `addr`.
  /// Errors: as try_read_slice; bytes written before a failure stay written (and marked).
  Result<void> try_write_slice(std::span<const std::byte> buf, Addr addr) const {
    return whole(copy_in(buf, addr), buf.size());
  }

  /// Reads a `T` at `addr`; a `T` of 1, 2, 4 or 8 bytes is one load. Errors: as
  /// try_read_slice.
  template <ByteValued T>
  Result<T> try_read_obj(Addr addr) const {
    std::array<std::byte, sizeof(T)> raw;
    if (auto read = try_read_slice(raw, addr); !read) {
      return std::unexpected(read.error());
    }
    return std::bit_cast<T>(raw);
  }

  /// Writes `value` at `addr`; a `T` of 1, 2, 4 or 8 bytes is one store. Errors: as
  /// try_write_slice.
  template <ByteValued T>
  Result<void> try_write_obj(const T& value, Addr addr) const {
    return try_write_slice(bytes_of(value), addr);
  }

  /// Atomically loads a `T` from `addr`, with one instruction; every load order is honoured.
  /// Errors: as load (out of range, crossing a piece end, misaligned in host memory); Fault
  /// (completed() 0); FaultSignalBlocked; FaultRecoveryUnsupported. Preconditions: `order` is
  /// a load order.
  template <AtomicAccess T>
  Result<T> try_load(Addr addr, std::memory_order order) const {
    GUESTMEM_ASSERT(valid_load_order(order), "load with a release or acq_rel memory order");
    auto piece = single_piece<T>(addr, Permissions::Read);
    if (!piece) {
      return std::unexpected(piece.error());
    }
    // SAFETY: the piece holds sizeof(T) bytes aligned to sizeof(T); a fault is recovered.
    auto loaded = load_recovering<T>(piece->unsafe_host_ptr());
    if (!loaded) [[unlikely]] {
      return std::unexpected(fault_error(loaded.error(), sizeof(T), 0));
    }
    return *loaded;
  }

  /// Atomically stores `value` at `addr` with memory order `order`, with one instruction
  /// (`mov`, or `xchg` for seq_cst), and reports it to the dirty bitmap.
  /// Errors: as try_load (nothing is stored or marked after a Fault).
  /// Preconditions: `order` is a store order.
  template <AtomicAccess T>
  Result<void> try_store(T value, Addr addr, std::memory_order order) const {
    GUESTMEM_ASSERT(valid_store_order(order), "store with an acquire, consume or acq_rel order");
    auto piece = single_piece<T>(addr, Permissions::Write);
    if (!piece) {
      return std::unexpected(piece.error());
    }
    // SAFETY: as in try_load.
    auto stored = order == std::memory_order_seq_cst
                      ? store_seq_cst_recovering(piece->unsafe_host_ptr(), value)
                      : store_recovering(piece->unsafe_host_ptr(), value);
    if (!stored) [[unlikely]] {
      return std::unexpected(fault_error(stored.error(), sizeof(T), 0));
    }
    piece->bitmap().mark_dirty(0, sizeof(T));
    return {};
  }

  /// Atomically replaces the `T` at `addr` with `desired` if it equals `expected` (one
  /// sequentially consistent instruction); a replacement is reported to the dirty bitmap.
  /// Returns the value found: the exchange happened iff it equals `expected`.
  /// Errors: as try_load.
  template <AtomicAccess T>
  Result<T> try_compare_exchange(Addr addr, T expected, T desired) const {
    auto piece = single_piece<T>(addr, Permissions::Write);
    if (!piece) {
      return std::unexpected(piece.error());
    }
    // SAFETY: as in try_load.
    auto found = compare_exchange_recovering(piece->unsafe_host_ptr(), expected, desired);
    if (!found) [[unlikely]] {
      return std::unexpected(fault_error(found.error(), sizeof(T), 0));
    }
    if (*found == expected) {
      piece->bitmap().mark_dirty(0, sizeof(T));
    }
    return *found;
  }

  /// A fallible reader of the `count` bytes at `addr`, which must lie in one piece (one
  /// region; use try_read for ranges that cross regions). count == 0 gives an empty reader.
  /// Errors: the container's out-of-range error when `addr` is outside; its single-access
  /// error (InvalidBackendAddress, or OutOfBounds for a slice) when the range crosses the end
  /// of the piece; FaultSignalBlocked when the calling thread blocks SIGSEGV or SIGBUS;
  /// FaultRecoveryUnsupported. The cursor's transfers check the thread that makes them as
  /// well, so a cursor used by another thread is refused there when that thread blocks either
  /// signal (guestmem/fault.hpp says when a check reads the mask).
  /// Validity: while the container's memory (the region) is alive.
  Result<VmReader<Fallible>> reader(Addr addr, std::size_t count) const {
    if (auto ready = ensure_fault_handler(); !ready) [[unlikely]] {
      return std::unexpected(ready.error());
    }
    if (count == 0) {
      return VmReader<Fallible>();
    }
    auto piece = self().first_piece(addr, count, Permissions::Read);
    if (!piece || piece->size() < count) [[unlikely]] {
      return std::unexpected(range_error(addr, count, Permissions::Read));
    }
    // SAFETY: the piece is a live view of `count` bytes; a fault is recovered.
    return VmReader<Fallible>::from_raw_parts(piece->unsafe_host_ptr(), count);
  }

  /// A fallible writer of the `count` bytes at `addr`, reporting its writes to the piece's
  /// dirty bitmap: Result<VmWriter<Fallible, S>> with S the container's bitmap slice type.
  /// count == 0 gives an empty writer wherever `addr` points, except that a bitmap slice type
  /// that cannot be default-constructed needs `addr` inside the container (the slice comes
  /// from there).
  /// Errors and validity: as reader.
  auto writer(Addr addr, std::size_t count) const {
    using Piece = std::remove_cvref_t<decltype(*self().first_piece(addr, count,
                                                                    Permissions::Write))>;
    using S = typename Piece::bitmap_slice_type;
    using Writer = VmWriter<Fallible, S>;
    if (auto ready = ensure_fault_handler(); !ready) [[unlikely]] {
      return Result<Writer>(std::unexpect, ready.error());
    }
    if constexpr (std::default_initializable<S>) {
      if (count == 0) {
        return Result<Writer>(Writer());
      }
    }
    auto piece = self().first_piece(addr, count, Permissions::Write);
    if (!piece || piece->size() < count) [[unlikely]] {
      return Result<Writer>(std::unexpect, range_error(addr, count, Permissions::Write));
    }
    // SAFETY: the piece is a live view of `count` bytes; a fault is recovered.
    return Result<Writer>(Writer::from_raw_parts(piece->unsafe_host_ptr(), count, piece->bitmap()));
  }

 protected:
  FallibleMixin() = default;
  ~FallibleMixin() = default;
  /// Copied as part of the container that derives from it; it has no state of its own.
  FallibleMixin(const FallibleMixin&) = default;
  /// Assigned as part of the container that derives from it; it has no state of its own.
  FallibleMixin& operator=(const FallibleMixin&) = default;

 private:
  // The bytes done by a walk over the pieces, and the fault that ended it, if one did.
  struct Walked {
    std::size_t done;
    std::optional<FaultInfo> fault;
  };

  [[nodiscard]] const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }

  // Copies guest memory at [addr, ...) into buf. A fault is an error (with completed()); a
  // hole ends the walk with the bytes done.
  Result<Walked> copy_out(std::span<std::byte> buf, Addr addr) const {
    return walk(addr, buf.size(), Permissions::Read,
                [buf](const auto& piece, std::size_t done) {
                  // SAFETY: `piece` is a live view of piece.size() <= buf.size() - done bytes;
                  // a fault on either side is recovered.
                  return copy_recovering(buf.data() + done, piece.unsafe_host_ptr(), piece.size());
                });
  }

  // Copies buf into guest memory at [addr, ...), reporting every byte written.
  Result<Walked> copy_in(std::span<const std::byte> buf, Addr addr) const {
    return walk(addr, buf.size(), Permissions::Write,
                [buf](const auto& piece, std::size_t done) {
                  // SAFETY: as in copy_out, with the direction reversed.
                  FallibleOutcome copied =
                      copy_recovering(piece.unsafe_host_ptr(), buf.data() + done, piece.size());
                  if (copied.done > 0) {
                    piece.bitmap().mark_dirty(0, copied.done);
                  }
                  return copied;
                });
  }

  // Runs `step(piece, done)` (a fallible copy of the whole piece) over the pieces of
  // [addr, addr + count). Ends at `count` bytes, at a hole, or with a Fault error after a
  // step that faulted. The first piece missing is the container's out-of-range error.
  template <class Step>
  Result<Walked> walk(Addr addr, std::size_t count, Permissions access, Step&& step) const {
    if (count == 0) {
      return Walked{0, std::nullopt};
    }
    if (auto ready = ensure_fault_handler(); !ready) [[unlikely]] {
      return std::unexpected(ready.error());
    }
    auto piece = self().first_piece(addr, count, access);
    if (!piece) [[unlikely]] {
      return std::unexpected(range_error(addr, count, access));
    }
    std::size_t done = 0;
    for (;;) {
      const FallibleOutcome copied = step(*piece, done);
      done += copied.done;
      if (copied.fault) [[unlikely]] {
        return std::unexpected(fault_error(*copied.fault, count, done));
      }
      if (done == count) {
        return Walked{done, std::nullopt};
      }
      // Cannot wrap: addr + done is the end of a piece that exists.
      // BytesMixin's continuation: next_piece where the container has it, else first_piece.
      piece = static_cast<const BytesMixin<Derived, Addr>&>(self()).continuation(
          advance(addr, done), count - done, access);
      if (!piece) {
        return Walked{done, std::nullopt};
      }
    }
  }

  // Result<void> for an all-or-nothing access of `expected` bytes.
  static Result<void> whole(const Result<Walked>& walked, std::size_t expected) {
    if (!walked) {
      return std::unexpected(walked.error());
    }
    if (walked->done != expected) {
      return std::unexpected(Error::partial_buffer(expected, walked->done));
    }
    return {};
  }

  // The piece of a single access of sizeof(T) bytes at `addr`, or the error load/store give.
  template <class T>
  auto single_piece(Addr addr, Permissions access) const {
    using Piece = std::remove_cvref_t<decltype(*self().first_piece(addr, sizeof(T), access))>;
    using Out = Result<Piece>;
    if (auto ready = ensure_fault_handler(); !ready) [[unlikely]] {
      return Out(std::unexpect, ready.error());
    }
    auto piece = self().first_piece(addr, sizeof(T), access);
    if (!piece) [[unlikely]] {
      return Out(std::unexpect, range_error(addr, sizeof(T), access));
    }
    if (piece->size() < sizeof(T)) [[unlikely]] {
      return Out(std::unexpect, self().single_access_error(ErrorCode::OutOfBounds, addr, sizeof(T)));
    }
    if (!is_aligned(piece->unsafe_host_ptr(), sizeof(T))) [[unlikely]] {
      return Out(std::unexpect, self().single_access_error(ErrorCode::Misaligned, addr, sizeof(T)));
    }
    return Out(std::move(*piece));
  }

  // The error for [addr, addr + count) when it does not start in a piece (the container's
  // out-of-range error), or does not fit in its first piece (its single-access error).
  [[gnu::noinline]] Error range_error(Addr addr, std::size_t count, Permissions access) const {
    auto slices = self().slices_for(addr, count, access);
    if (!slices) {
      return slices.error();
    }
    auto item = slices->next();
    if (item && !item->has_value()) {
      return item->error();
    }
    return self().single_access_error(ErrorCode::OutOfBounds, addr, count);
  }
};

}  // namespace guestmem::detail
