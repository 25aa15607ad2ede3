// guestmem: errors.
//
// Every fallible call returns `Result<T> = std::expected<T, Error>`; no exception crosses the
// public API. `Error` is a small value: a specific `ErrorCode` plus the data a caller needs to
// react (the address involved, how many bytes were expected and completed, errno, the signal
// of a fault). The table below says which fields each code fills; unused fields are zero.
//
//   code                     address                 length         expected/completed  errno
//   InvalidGuestAddress      guest address           -              -                   -
//   IoError                  -                       -              -/bytes done before  yes
//   PartialBuffer            -                       -              yes                 -
//   InvalidBackendAddress    address in the container-              -                   -
//   HostAddressNotAvailable  address                 -              -                   -
//   CallbackOutOfRange       -                       bytes offered  claimed/done before -
//   GuestAddressOverflow     address that wrapped    bytes left     -                   -
//   OutOfBounds              offset asked for        length asked   view size/-         -
//   Overflow                 base                    offset added   -                   -
//   Misaligned               address                 alignment      -                   -
//   NoMemoryRegion           -                       -              -                   -
//   MemoryRegionOverlap      start of the 2nd region -              -                   -
//   UnsortedMemoryRegions    start of the 2nd region -              -                   -
//   InvalidGuestRegion       guest base              size           -                   -
//   MappingFailed            -                       size           -                   yes
//   MappingPastEof           file offset             size           file size/-         -
//   InvalidOffsetLength      file offset             size           -                   -
//   InvalidPointer           the pointer             -              -                   -
//   MapFixed                 -                       -              -                   -
//   InvalidBitmap            words given             words expected -                   -
//   CannotResolve            IOVA of the failed part length of it   -                   -
//   Fragmented               IOVA asked for          length asked   -/contiguous bytes  -
//   PermissionDenied         IOVA of refused part    length of it   -                   -
//   Fault                    host address (si_addr)  -              asked/done before   -   (+ signal)
//   FaultRecoveryUnsupported -                       -              -                   yes/0
//   ProtectionViolation      address in the container bytes asked    access asked/-      -
//   InvalidAlignment         -                       alignment      -                   -
//   NotPageAligned           the offset or size      page size      -                   -
//   InvalidRange             offset in the mapping   length asked   mapping size/-      -
//   MappingOverlap           offset in the arena     size           -                   -
//   NoSuchMapping            offset in the arena     size           -                   -
//   IncompatibleOptions      -                       -              -                   -
//   AdviceFailed             the MADV_ advice        size           -                   yes
//   MsyncFailed              -                       size           -                   yes
//   NotImplemented           -                       -              -                   -
//   KvmUnavailable           -                       -              API version/-       yes/0
//   KvmCapabilityMissing     KVM_CAP_ number         -              -                   -
//   KvmIoctlFailed           ioctl request           -              its argument/-      yes
//   KvmSlotRefused           guest base of the slot  slot size      slot/ioctl request  yes
//   SnapshotUnsupported      file offset of the field -             version supported/found -
//   SnapshotCorrupt          file offset of the chunk chunk length  chunk number/-      -
//   SnapshotTruncated        file offset where data ends -          size needed/size found -
//   SnapshotWrongBase        base named: high half   low half       base expected: high/low -
//   SnapshotLayoutMismatch   guest base of the region size          region index/-      -
//   FaultSignalBlocked       -                       -              -                   -   (+ signal)
//
// A snapshot's "chunk number" is 0 for its header and 1, 2, ... for its data chunks in file
// order (see guestmem/snapshot.hpp).
// "access asked" is 1 for a read and 2 for a write (the bits of `Permissions`).
//
//   auto r = mem.read_obj<std::uint32_t>(addr);
//   if (!r && r.error().code() == ErrorCode::PartialBuffer) {
//     log(r.error().message());   // "partial buffer: completed 2 of 4 bytes"
//   }
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <iosfwd>
#include <string>
#include <string_view>
#include <version>

#if defined(__cpp_lib_format)
#include <format>
#endif

#include "guestmem/address.hpp"
#include "guestmem/permissions.hpp"

namespace guestmem {

/// What went wrong. Codes are stable; new ones are only ever appended.
enum class ErrorCode : std::uint8_t {
  /// No memory region contains the guest address.
  InvalidGuestAddress,
  /// A system call on a file descriptor failed.
  IoError,
  /// An all-or-nothing access could only move part of the data.
  PartialBuffer,
  /// The address is outside the backing memory of a region (or a single access crosses its
  /// end or is misaligned).
  InvalidBackendAddress,
  /// The region has no host mapping to hand out.
  HostAddressNotAvailable,
  /// A transfer callback (a ReadVolatile or WriteVolatile implementation) claimed to have
  /// moved more bytes than it was given.
  CallbackOutOfRange,
  /// Advancing through a range would wrap past the top of the 64-bit address space.
  GuestAddressOverflow,
  /// An offset is outside a volatile view.
  OutOfBounds,
  /// Offset arithmetic on a volatile view overflowed.
  Overflow,
  /// A single access is not naturally aligned.
  Misaligned,
  /// A memory was built from no regions.
  NoMemoryRegion,
  /// Two regions share guest addresses.
  MemoryRegionOverlap,
  /// Regions were given out of address order.
  UnsortedMemoryRegions,
  /// A region would end past the top of the guest address space, or remove_region found no
  /// region with that base and size. (An empty mapping is MappingFailed with EINVAL.)
  InvalidGuestRegion,
  /// mmap failed.
  MappingFailed,
  /// A file mapping would extend past the end of the file.
  MappingPastEof,
  /// The file offset plus the size of a mapping does not fit in 64 bits.
  InvalidOffsetLength,
  /// A caller-supplied mapping pointer is not page aligned.
  InvalidPointer,
  /// MAP_FIXED was passed to a builder that must not replace existing mappings.
  MapFixed,
  /// A dirty bitmap from outside does not match the bitmap it is merged into.
  InvalidBitmap,
  /// Part of an I/O virtual address range has no IOMMU mapping, even after the IOMMU's miss
  /// handler was asked for one.
  CannotResolve,
  /// An I/O virtual address range that had to be one contiguous host range is not.
  Fragmented,
  /// An IOMMU mapping exists but its permissions refuse the access, even after the miss
  /// handler was asked.
  PermissionDenied,
  /// A fault-tolerant access hit memory that faulted (SIGSEGV or SIGBUS): see signal(),
  /// address() (the faulting host address) and completed() (bytes done before it).
  Fault,
  /// Fault-tolerant access is not available: the architecture has no recovery primitives, or
  /// installing the signal handler failed (os_error()).
  FaultRecoveryUnsupported,
  /// The mapping's protection does not allow the access (a write to a read-only mapping):
  /// refused before the CPU would fault.
  ProtectionViolation,
  /// A requested alignment is not a power of two.
  InvalidAlignment,
  /// An offset or size is not a multiple of the page size it must be aligned to.
  NotPageAligned,
  /// A range (offset, length) does not lie inside a mapping or an arena.
  InvalidRange,
  /// A mapping added to an arena would overlap one already there.
  MappingOverlap,
  /// No mapping of an arena starts at the offset with the size given.
  NoSuchMapping,
  /// Builder options that cannot be combined (alignment or guard pages with memory the
  /// builder does not place itself, for example).
  IncompatibleOptions,
  /// madvise refused an advice the builder was asked to apply.
  AdviceFailed,
  /// msync failed to write a mapping back to its file.
  MsyncFailed,
  /// The operation has no implementation on this architecture (cache flush outside x86-64
  /// and aarch64).
  NotImplemented,
  /// The KVM device cannot be used: opening it failed (os_error(): ENOENT when there is no
  /// such device, EACCES or EPERM without permission), it is no KVM device (ENOTTY), or its
  /// API version (expected()) is not 12 (os_error() 0).
  KvmUnavailable,
  /// KVM lacks a capability the call needs; address() is the KVM_CAP_ number.
  KvmCapabilityMissing,
  /// A KVM ioctl failed: address() is the ioctl request, expected() its argument (the
  /// capability of KVM_CHECK_EXTENSION or KVM_ENABLE_CAP), os_error() the errno.
  KvmIoctlFailed,
  /// KVM refused an ioctl on one memory slot (KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG,
  /// KVM_CLEAR_DIRTY_LOG): address() and length() are the slot's guest range, expected() the
  /// slot number, completed() the ioctl request, os_error() the errno (ENOSPC when every
  /// slot number KVM allows is taken).
  KvmSlotRefused,
  /// A file is not a guestmem snapshot (bad magic, address 0) or has a format version this
  /// build does not read (address 8; expected() the version supported, completed() the one
  /// found).
  SnapshotUnsupported,
  /// A snapshot's checksum does not match its contents: the header (chunk 0, at offset 0) or
  /// a data chunk (address() its file offset, length() its size, expected() its number).
  SnapshotCorrupt,
  /// A snapshot file ends before the data its header describes: address() where it ends,
  /// expected() the size needed, completed() the size found.
  SnapshotTruncated,
  /// A snapshot diff is based on another snapshot than the one it is applied to (or a diff
  /// was given where a full snapshot is needed, or the reverse): address() and length() hold
  /// the base the file names (zero for a full snapshot), expected() and completed() the one
  /// the caller expected.
  SnapshotWrongBase,
  /// A snapshot's regions do not match the memory it is applied to: address() and length()
  /// are the guest base and size of the first region that differs (from the memory, or from
  /// the file when the memory has fewer regions), expected() its index.
  SnapshotLayoutMismatch,
  /// A fault-tolerant access was refused before touching memory because the calling thread
  /// blocks SIGSEGV or SIGBUS (signal()): the kernel kills the process for a fault whose
  /// signal is blocked, so a fault could not have been recovered (see guestmem/fault.hpp).
  FaultSignalBlocked,
};

/// The enumerator's name, for example "PartialBuffer".
GUESTMEM_API std::string_view to_string(ErrorCode code) noexcept;
GUESTMEM_API std::ostream& operator<<(std::ostream& out, ErrorCode code);

/// An error value. See the table at the top of this header for the fields of each code.
class [[nodiscard]] GUESTMEM_API Error {
 public:
  /// An error with code `code` and every other field zero.
  constexpr explicit Error(ErrorCode code) noexcept : code_(code) {}

  /// InvalidGuestAddress: no region holds the guest address `address`.
  static constexpr Error invalid_guest_address(GuestAddress address) noexcept {
    return Error(ErrorCode::InvalidGuestAddress).with_address(address.raw_value());
  }
  /// IoError: a system call failed with `errnum` after `completed` bytes were transferred.
  static constexpr Error io(int errnum, std::uint64_t completed = 0) noexcept {
    Error e(ErrorCode::IoError);
    e.os_error_ = errnum;
    e.completed_ = completed;
    return e;
  }
  /// PartialBuffer: an all-or-nothing access of `expected` bytes stopped after `completed`.
  static constexpr Error partial_buffer(std::uint64_t expected, std::uint64_t completed) noexcept {
    Error e(ErrorCode::PartialBuffer);
    e.expected_ = expected;
    e.completed_ = completed;
    return e;
  }
  /// InvalidBackendAddress: `address` (in the container's own address space) is out of range.
  static constexpr Error invalid_backend_address(std::uint64_t address) noexcept {
    return Error(ErrorCode::InvalidBackendAddress).with_address(address);
  }
  /// CallbackOutOfRange: a transfer callback that was offered `offered` bytes claimed to have
  /// moved `claimed`.
  static constexpr Error callback_out_of_range(std::uint64_t offered,
                                               std::uint64_t claimed) noexcept {
    Error e(ErrorCode::CallbackOutOfRange);
    e.length_ = offered;
    e.expected_ = claimed;
    return e;
  }
  /// GuestAddressOverflow: advancing past `address` with `remaining` bytes left wraps around 2^64.
  static constexpr Error guest_address_overflow(std::uint64_t address,
                                                std::uint64_t remaining) noexcept {
    Error e = Error(ErrorCode::GuestAddressOverflow).with_address(address);
    e.length_ = remaining;
    return e;
  }
  /// OutOfBounds: `length` bytes at `offset` do not fit in a view of `view_size` bytes.
  static constexpr Error out_of_bounds(std::uint64_t offset, std::uint64_t length,
                                       std::uint64_t view_size) noexcept {
    Error e = Error(ErrorCode::OutOfBounds).with_address(offset);
    e.length_ = length;
    e.expected_ = view_size;
    return e;
  }
  /// Overflow: `base + offset` does not fit in 64 bits.
  static constexpr Error overflow(std::uint64_t base, std::uint64_t offset) noexcept {
    Error e = Error(ErrorCode::Overflow).with_address(base);
    e.length_ = offset;
    return e;
  }
  /// Misaligned: `address` is not a multiple of `alignment`.
  static constexpr Error misaligned(std::uint64_t address, std::uint64_t alignment) noexcept {
    Error e = Error(ErrorCode::Misaligned).with_address(address);
    e.length_ = alignment;
    return e;
  }
  /// An error with `code`, `address` and `length() = size`, for the codes whose table row has only
  /// those fields.
  static constexpr Error at(ErrorCode code, std::uint64_t address,
                                std::uint64_t size = 0) noexcept {
    Error e = Error(code).with_address(address);
    e.length_ = size;
    return e;
  }
  /// MappingFailed: mmap of `size` bytes failed with `errnum`.
  static constexpr Error mapping_failed(int errnum, std::uint64_t size) noexcept {
    Error e(ErrorCode::MappingFailed);
    e.os_error_ = errnum;
    e.length_ = size;
    return e;
  }
  /// A fault at host address `address` with signal `signal` stopped an access of `expected`
  /// bytes after `completed` bytes.
  static constexpr Error fault(std::uint64_t address, int signal, std::uint64_t expected,
                               std::uint64_t completed) noexcept {
    Error e = Error(ErrorCode::Fault).with_address(address);
    e.signal_ = static_cast<std::uint8_t>(signal);
    e.expected_ = expected;
    e.completed_ = completed;
    return e;
  }
  /// FaultRecoveryUnsupported: this architecture has no recovery primitives (`errnum` 0), or
  /// installing the handler failed with `errnum`.
  static constexpr Error fault_recovery_unsupported(int errnum = 0) noexcept {
    Error e(ErrorCode::FaultRecoveryUnsupported);
    e.os_error_ = errnum;
    return e;
  }
  /// A fault-tolerant access refused because the calling thread blocks `signal`.
  static constexpr Error fault_signal_blocked(int signal) noexcept {
    Error e(ErrorCode::FaultSignalBlocked);
    e.signal_ = static_cast<std::uint8_t>(signal);
    return e;
  }
  /// ProtectionViolation: an access `access` of `length` bytes at `address` that the mapping's
  /// protection does not allow.
  static constexpr Error protection_violation(std::uint64_t address, std::uint64_t length,
                                              Permissions access) noexcept {
    Error e = at(ErrorCode::ProtectionViolation, address, length);
    e.expected_ = (access.has_read() ? 1U : 0U) | (access.has_write() ? 2U : 0U);
    return e;
  }
  /// InvalidRange: `length` bytes at `offset` do not fit in a mapping of `size` bytes.
  static constexpr Error invalid_range(std::uint64_t offset, std::uint64_t length,
                                       std::uint64_t size) noexcept {
    Error e = at(ErrorCode::InvalidRange, offset, length);
    e.expected_ = size;
    return e;
  }
  /// An error with `code` for a system call that failed with `errnum` on `length` bytes at
  /// `address`.
  static constexpr Error os_failure(ErrorCode code, int errnum, std::uint64_t address,
                                    std::uint64_t length) noexcept {
    Error e = at(code, address, length);
    e.os_error_ = errnum;
    return e;
  }
  /// MappingPastEof: `size` bytes at `file_offset` reach past the end of a file of `file_size`
  /// bytes.
  static constexpr Error mapping_past_eof(std::uint64_t file_offset, std::uint64_t size,
                                          std::uint64_t file_size) noexcept {
    Error e = at(ErrorCode::MappingPastEof, file_offset, size);
    e.expected_ = file_size;
    return e;
  }

  /// The KVM device cannot be used: `errnum` from open or KVM_GET_API_VERSION, or 0 with the
  /// unexpected `api_version`.
  static constexpr Error kvm_unavailable(int errnum, std::uint64_t api_version = 0) noexcept {
    Error e(ErrorCode::KvmUnavailable);
    e.os_error_ = errnum;
    e.expected_ = api_version;
    return e;
  }
  /// KVM ioctl `request` with argument `argument` failed with `errnum`.
  static constexpr Error kvm_ioctl_failed(int errnum, std::uint64_t request,
                                          std::uint64_t argument = 0) noexcept {
    Error e = os_failure(ErrorCode::KvmIoctlFailed, errnum, request, 0);
    e.expected_ = argument;
    return e;
  }
  /// KVM refused ioctl `request` on memory slot `slot`, which covers `size` bytes of guest
  /// memory at `guest_base`.
  static constexpr Error kvm_slot_refused(int errnum, std::uint64_t request, std::uint32_t slot,
                                          std::uint64_t guest_base, std::uint64_t size) noexcept {
    Error e = os_failure(ErrorCode::KvmSlotRefused, errnum, guest_base, size);
    e.expected_ = slot;
    e.completed_ = request;
    return e;
  }

  /// A snapshot error (SnapshotUnsupported, SnapshotCorrupt, ...) with the fields the table
  /// above gives for its code.
  static constexpr Error snapshot(ErrorCode code, std::uint64_t address, std::uint64_t length,
                                  std::uint64_t expected, std::uint64_t completed) noexcept {
    Error e = at(code, address, length);
    e.expected_ = expected;
    e.completed_ = completed;
    return e;
  }

  /// Fragmented: `length` bytes at I/O virtual address `iova` had to be one host range, but only
  /// the first `contiguous` are.
  static constexpr Error fragmented(std::uint64_t iova, std::uint64_t length,
                                    std::uint64_t contiguous) noexcept {
    Error e = at(ErrorCode::Fragmented, iova, length);
    e.completed_ = contiguous;
    return e;
  }

  /// The same error with `completed()` replaced; used when a failure ends a transfer that had
  /// already moved `completed` bytes.
  [[nodiscard]] constexpr Error with_completed(std::uint64_t completed) const noexcept {
    Error e = *this;
    e.completed_ = completed;
    return e;
  }

  /// What went wrong.
  [[nodiscard]] constexpr ErrorCode code() const noexcept { return code_; }
  /// The address the code's table row names (guest, container, host or I/O virtual), or 0.
  [[nodiscard]] constexpr std::uint64_t address() const noexcept { return address_; }
  /// The length, size or alignment the code's table row names, or 0.
  [[nodiscard]] constexpr std::uint64_t length() const noexcept { return length_; }
  /// The bytes asked for, or the other value the code's table row names, or 0.
  [[nodiscard]] constexpr std::uint64_t expected() const noexcept { return expected_; }
  /// The bytes done before the failure, or the other value the code's table row names, or 0.
  [[nodiscard]] constexpr std::uint64_t completed() const noexcept { return completed_; }
  /// The errno of a failed system call, or 0.
  [[nodiscard]] constexpr int os_error() const noexcept { return os_error_; }
  /// The signal of a Fault or a FaultSignalBlocked (SIGSEGV or SIGBUS), or 0.
  [[nodiscard]] constexpr int signal() const noexcept { return signal_; }

  /// A readable one-line description carrying the addresses and counts, for example
  /// "invalid guest address 0x3000" or "partial buffer: completed 4 of 8 bytes".
  [[nodiscard]] std::string message() const;

  /// Equal when the code and every field are equal.
  friend constexpr bool operator==(const Error&, const Error&) noexcept = default;

 private:
  constexpr Error with_address(std::uint64_t address) const noexcept {
    Error e = *this;
    e.address_ = address;
    return e;
  }

  ErrorCode code_;
  // Signal numbers are below 65; one byte keeps Error at 40 bytes (it fills padding).
  std::uint8_t signal_ = 0;
  std::int32_t os_error_ = 0;
  std::uint64_t address_ = 0;
  std::uint64_t length_ = 0;
  std::uint64_t expected_ = 0;
  std::uint64_t completed_ = 0;
};

/// The result of a fallible guestmem call.
template <class T>
using Result = std::expected<T, Error>;

/// `error.message()`.
GUESTMEM_API std::string to_string(const Error& error);
GUESTMEM_API std::ostream& operator<<(std::ostream& out, const Error& error);

}  // namespace guestmem

#if defined(__cpp_lib_format)
template <>
struct std::formatter<guestmem::Error, char> : std::formatter<std::string_view, char> {
  template <class FormatContext>
  auto format(const guestmem::Error& error, FormatContext& ctx) const {
    return std::formatter<std::string_view, char>::format(error.message(), ctx);
  }
};
template <>
struct std::formatter<guestmem::ErrorCode, char> : std::formatter<std::string_view, char> {
  template <class FormatContext>
  auto format(guestmem::ErrorCode code, FormatContext& ctx) const {
    return std::formatter<std::string_view, char>::format(guestmem::to_string(code), ctx);
  }
};
#endif
