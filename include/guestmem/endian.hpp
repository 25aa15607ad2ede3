// guestmem: integers with an explicit byte order, for structures defined by a specification
// (virtio rings are little-endian, some legacy devices big-endian) and shared with a guest.
//
// The value is stored in the declared byte order, so a struct of these types can be read and
// written with read_obj/write_obj and has the same bytes on every host.
//
//   struct VirtqDesc { Le64 addr; Le32 len; Le16 flags; Le16 next; };
//   auto desc = mem.read_obj<VirtqDesc>(table_addr);
//   std::uint64_t buffer = desc->addr.to_native();
#pragma once

#include <bit>
#include <concepts>
#include <cstdint>

namespace guestmem {

/// An unsigned integer `T` stored in byte order `Order`.
template <std::unsigned_integral T, std::endian Order>
class Endian {
 public:
  constexpr Endian() noexcept = default;
  /// Stores the native value `value` in byte order `Order`.
  constexpr explicit Endian(T value) noexcept : stored_(convert(value)) {}

  /// The value in the host's byte order.
  [[nodiscard]] constexpr T to_native() const noexcept { return convert(stored_); }

  /// Equal when the stored bytes are equal.
  friend constexpr bool operator==(Endian, Endian) noexcept = default;

 private:
  static constexpr T convert(T value) noexcept {
    if constexpr (Order == std::endian::native) {
      return value;
    } else {
      return std::byteswap(value);
    }
  }

  T stored_ = 0;
};

using Le16 = Endian<std::uint16_t, std::endian::little>;
using Le32 = Endian<std::uint32_t, std::endian::little>;
using Le64 = Endian<std::uint64_t, std::endian::little>;
using Be16 = Endian<std::uint16_t, std::endian::big>;
using Be32 = Endian<std::uint32_t, std::endian::big>;
using Be64 = Endian<std::uint64_t, std::endian::big>;

}  // namespace guestmem
