// guestmem: memory mapped into the VMM that can be handed to someone else.
//
// `MappedRegion` is what code needs that registers host memory with another party (a KVM
// memory slot, a vhost-user memory table, a VFIO DMA map): the host address of the first
// byte and the size, valid for as long as the object lives. `MmapRegion`, `MappingArena` and
// `ExternalMapping` satisfy it.
//
// `ExternalMapping` describes memory that someone else mapped and unmaps (a graphics
// driver's buffer, memory a library handed over). It owns nothing: destroying it does
// nothing, and its creator promises to keep the memory mapped while it is used. To read and
// write such memory through guestmem's checked interface, wrap it in an MmapRegion with
// `MmapRegionBuilder::unsafe_with_raw_mmap_pointer`.
//
//   auto blob = ExternalMapping::unsafe_from_raw_parts(driver_ptr, driver_size);
//   kvm.set_user_memory_region(slot, guest_base, blob);   // any MappedRegion
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

namespace guestmem {

/// Host memory with a stable address and size while the object lives.
template <class R>
concept MappedRegion = requires(const R& r) {
  { r.unsafe_host_ptr() } -> std::same_as<std::uint8_t*>;
  { r.size() } -> std::same_as<std::size_t>;
};

/// Memory mapped by someone else, described by its address and size. Copyable; owns nothing.
class ExternalMapping {
 public:
  /// Describes [addr, addr + size).
  /// Preconditions (lifetime rules): the range is mapped now; whoever mapped it keeps it
  /// mapped, and does not remap it, for as long as this object, a copy of it, or anything it
  /// was handed to (a KVM memory slot, a region built over it) uses it; the range is
  /// unregistered from all of those before it is unmapped. Nothing here can check any of
  /// this, which is why the name says unsafe: a broken promise is a use-after-unmap.
  [[nodiscard]] static constexpr ExternalMapping unsafe_from_raw_parts(std::uint8_t* addr,
                                                                       std::size_t size) noexcept {
    return ExternalMapping(addr, size);
  }

  /// The first byte. Validity: as promised to unsafe_from_raw_parts.
  [[nodiscard]] constexpr std::uint8_t* unsafe_host_ptr() const noexcept { return addr_; }
  /// The bytes described.
  [[nodiscard]] constexpr std::size_t size() const noexcept { return size_; }

  /// Equal when they describe the same address and size.
  friend constexpr bool operator==(const ExternalMapping&, const ExternalMapping&) noexcept =
      default;

 private:
  constexpr ExternalMapping(std::uint8_t* addr, std::size_t size) noexcept
      : addr_(addr), size_(size) {}

  std::uint8_t* addr_;
  std::size_t size_;
};

static_assert(MappedRegion<ExternalMapping>);

}  // namespace guestmem
