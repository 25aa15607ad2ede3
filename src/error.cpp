#include "guestmem/error.hpp"

#include <sys/mman.h>

#if __has_include(<linux/kvm.h>)
#include <linux/kvm.h>
#endif

#include <cerrno>
#include <csignal>
#include <cstring>
#include <ostream>

namespace guestmem {
namespace {

std::string hex(std::uint64_t value) { return to_string(GuestAddress{value}); }

std::string os_error_text(int errnum) {
  // strerror_r has two incompatible signatures; strerrordesc_np (glibc 2.32+) is
  // thread-safe and returns a static string without the locale machinery.
  const char* text = strerrordesc_np(errnum);
  std::string out = text != nullptr ? text : "unknown error";
  out += " (errno " + std::to_string(errnum) + ")";
  return out;
}

std::string signal_name(int signal) {
  switch (signal) {
    case SIGSEGV:
      return "SIGSEGV";
    case SIGBUS:
      return "SIGBUS";
    default:
      return "signal " + std::to_string(signal);
  }
}

// The access kind recorded by Error::protection_violation.
std::string access_name(std::uint64_t bits) {
  switch (bits) {
    case 1:
      return "read";
    case 2:
      return "write";
    case 3:
      return "read-write access";
    default:
      return "access";
  }
}

// A snapshot id as 32 hex digits, or "none" for the zero id of a full snapshot.
std::string snapshot_id_text(std::uint64_t hi, std::uint64_t lo) {
  if (hi == 0 && lo == 0) {
    return "none";
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[static_cast<std::size_t>(15 - i)] = kDigits[(hi >> (4 * i)) & 0xf];
    out[static_cast<std::size_t>(31 - i)] = kDigits[(lo >> (4 * i)) & 0xf];
  }
  return out;
}

std::string advice_name(std::uint64_t advice) {
  switch (advice) {
    case MADV_HUGEPAGE:
      return "MADV_HUGEPAGE";
    case MADV_DONTDUMP:
      return "MADV_DONTDUMP";
    case MADV_MERGEABLE:
      return "MADV_MERGEABLE";
    case MADV_DONTFORK:
      return "MADV_DONTFORK";
    default:
      return "advice " + std::to_string(advice);
  }
}

// The KVM names of the requests and capabilities guestmem::kvm uses, where the kernel
// headers are available; elsewhere (and for other values) the number.
std::string kvm_ioctl_name(std::uint64_t request) {
#if __has_include(<linux/kvm.h>)
  switch (request) {
    case KVM_GET_API_VERSION:
      return "KVM_GET_API_VERSION";
    case KVM_CREATE_VM:
      return "KVM_CREATE_VM";
    case KVM_CHECK_EXTENSION:
      return "KVM_CHECK_EXTENSION";
    case KVM_GET_VCPU_MMAP_SIZE:
      return "KVM_GET_VCPU_MMAP_SIZE";
    case KVM_ENABLE_CAP:
      return "KVM_ENABLE_CAP";
    case KVM_SET_USER_MEMORY_REGION:
      return "KVM_SET_USER_MEMORY_REGION";
    case KVM_GET_DIRTY_LOG:
      return "KVM_GET_DIRTY_LOG";
    case KVM_CLEAR_DIRTY_LOG:
      return "KVM_CLEAR_DIRTY_LOG";
    case KVM_RESET_DIRTY_RINGS:
      return "KVM_RESET_DIRTY_RINGS";
    default:
      break;
  }
#endif
  return "KVM ioctl " + hex(request);
}

std::string kvm_capability_name(std::uint64_t cap) {
  std::string name;
#if __has_include(<linux/kvm.h>)
  switch (cap) {
    case KVM_CAP_USER_MEMORY:
      name = "KVM_CAP_USER_MEMORY ";
      break;
    case KVM_CAP_NR_MEMSLOTS:
      name = "KVM_CAP_NR_MEMSLOTS ";
      break;
    case KVM_CAP_READONLY_MEM:
      name = "KVM_CAP_READONLY_MEM ";
      break;
    case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2:
      name = "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 ";
      break;
    case KVM_CAP_DIRTY_LOG_RING:
      name = "KVM_CAP_DIRTY_LOG_RING ";
      break;
#if defined(KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
    case KVM_CAP_DIRTY_LOG_RING_ACQ_REL:
      name = "KVM_CAP_DIRTY_LOG_RING_ACQ_REL ";
      break;
#endif
    default:
      break;
  }
#endif
  return name + "(" + std::to_string(cap) + ")";
}

}  // namespace

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidGuestAddress:
      return "InvalidGuestAddress";
    case ErrorCode::IoError:
      return "IoError";
    case ErrorCode::PartialBuffer:
      return "PartialBuffer";
    case ErrorCode::InvalidBackendAddress:
      return "InvalidBackendAddress";
    case ErrorCode::HostAddressNotAvailable:
      return "HostAddressNotAvailable";
    case ErrorCode::CallbackOutOfRange:
      return "CallbackOutOfRange";
    case ErrorCode::GuestAddressOverflow:
      return "GuestAddressOverflow";
    case ErrorCode::OutOfBounds:
      return "OutOfBounds";
    case ErrorCode::Overflow:
      return "Overflow";
    case ErrorCode::Misaligned:
      return "Misaligned";
    case ErrorCode::NoMemoryRegion:
      return "NoMemoryRegion";
    case ErrorCode::MemoryRegionOverlap:
      return "MemoryRegionOverlap";
    case ErrorCode::UnsortedMemoryRegions:
      return "UnsortedMemoryRegions";
    case ErrorCode::InvalidGuestRegion:
      return "InvalidGuestRegion";
    case ErrorCode::MappingFailed:
      return "MappingFailed";
    case ErrorCode::MappingPastEof:
      return "MappingPastEof";
    case ErrorCode::InvalidOffsetLength:
      return "InvalidOffsetLength";
    case ErrorCode::InvalidPointer:
      return "InvalidPointer";
    case ErrorCode::MapFixed:
      return "MapFixed";
    case ErrorCode::InvalidBitmap:
      return "InvalidBitmap";
    case ErrorCode::CannotResolve:
      return "CannotResolve";
    case ErrorCode::Fragmented:
      return "Fragmented";
    case ErrorCode::PermissionDenied:
      return "PermissionDenied";
    case ErrorCode::Fault:
      return "Fault";
    case ErrorCode::FaultRecoveryUnsupported:
      return "FaultRecoveryUnsupported";
    case ErrorCode::ProtectionViolation:
      return "ProtectionViolation";
    case ErrorCode::InvalidAlignment:
      return "InvalidAlignment";
    case ErrorCode::NotPageAligned:
      return "NotPageAligned";
    case ErrorCode::InvalidRange:
      return "InvalidRange";
    case ErrorCode::MappingOverlap:
      return "MappingOverlap";
    case ErrorCode::NoSuchMapping:
      return "NoSuchMapping";
    case ErrorCode::IncompatibleOptions:
      return "IncompatibleOptions";
    case ErrorCode::AdviceFailed:
      return "AdviceFailed";
    case ErrorCode::MsyncFailed:
      return "MsyncFailed";
    case ErrorCode::NotImplemented:
      return "NotImplemented";
    case ErrorCode::KvmUnavailable:
      return "KvmUnavailable";
    case ErrorCode::KvmCapabilityMissing:
      return "KvmCapabilityMissing";
    case ErrorCode::KvmIoctlFailed:
      return "KvmIoctlFailed";
    case ErrorCode::KvmSlotRefused:
      return "KvmSlotRefused";
    case ErrorCode::SnapshotUnsupported:
      return "SnapshotUnsupported";
    case ErrorCode::SnapshotCorrupt:
      return "SnapshotCorrupt";
    case ErrorCode::SnapshotTruncated:
      return "SnapshotTruncated";
    case ErrorCode::SnapshotWrongBase:
      return "SnapshotWrongBase";
    case ErrorCode::SnapshotLayoutMismatch:
      return "SnapshotLayoutMismatch";
    case ErrorCode::FaultSignalBlocked:
      return "FaultSignalBlocked";
  }
  return "UnknownErrorCode";
}

std::string Error::message() const {
  using std::to_string;
  switch (code_) {
    case ErrorCode::InvalidGuestAddress:
      return "invalid guest address " + hex(address_);
    case ErrorCode::IoError:
      return "I/O error: " + os_error_text(os_error_) + " after " + to_string(completed_) +
             " bytes";
    case ErrorCode::PartialBuffer:
      return "partial buffer: completed " + to_string(completed_) + " of " +
             to_string(expected_) + " bytes";
    case ErrorCode::InvalidBackendAddress:
      return "invalid backend address " + hex(address_);
    case ErrorCode::HostAddressNotAvailable:
      return "host virtual address not available for " + hex(address_);
    case ErrorCode::CallbackOutOfRange:
      return "transfer callback claimed " + to_string(expected_) + " bytes of the " +
             to_string(length_) + " it was given, after " + to_string(completed_) + " bytes";
    case ErrorCode::GuestAddressOverflow:
      return "address overflow past " + hex(address_) + " with " + to_string(length_) +
             " bytes left";
    case ErrorCode::OutOfBounds:
      return "range of " + to_string(length_) + " bytes at offset " + hex(address_) +
             " is out of bounds of a view of " + to_string(expected_) + " bytes";
    case ErrorCode::Overflow:
      return "offset overflow: " + hex(address_) + " + " + hex(length_);
    case ErrorCode::Misaligned:
      return "address " + hex(address_) + " is not aligned to " + to_string(length_) + " bytes";
    case ErrorCode::NoMemoryRegion:
      return "no memory region";
    case ErrorCode::MemoryRegionOverlap:
      return "memory regions overlap at " + hex(address_);
    case ErrorCode::UnsortedMemoryRegions:
      return "memory regions are not sorted at " + hex(address_);
    case ErrorCode::InvalidGuestRegion:
      return "invalid guest region at " + hex(address_) + " of size " + hex(length_);
    case ErrorCode::MappingFailed:
      return "mmap of " + hex(length_) + " bytes failed: " + os_error_text(os_error_);
    case ErrorCode::MappingPastEof:
      return "mapping of " + hex(length_) + " bytes at file offset " + hex(address_) +
             " goes past the end of the file (size " + hex(expected_) + ")";
    case ErrorCode::InvalidOffsetLength:
      return "file offset " + hex(address_) + " plus length " + hex(length_) +
             " does not fit in 64 bits";
    case ErrorCode::InvalidPointer:
      return "mapping pointer " + hex(address_) + " is not page aligned";
    case ErrorCode::MapFixed:
      return "MAP_FIXED is not allowed: it would silently replace existing mappings";
    case ErrorCode::InvalidBitmap:
      return "dirty bitmap of " + to_string(address_) + " words does not match one of " +
             to_string(length_) + " words (or sets bits past the last page)";
    case ErrorCode::CannotResolve:
      return "cannot translate I/O virtual address range " + hex(address_) + "+" + hex(length_);
    case ErrorCode::Fragmented:
      return "I/O virtual address range " + hex(address_) + "+" + hex(length_) +
             " is not contiguous in host memory: only " + hex(completed_) + " bytes are";
    case ErrorCode::PermissionDenied:
      return "I/O virtual address range " + hex(address_) + "+" + hex(length_) +
             " does not permit the access";
    case ErrorCode::Fault:
      return signal_name(signal_) + " at host address " + hex(address_) + " after " +
             to_string(completed_) + " of " + to_string(expected_) + " bytes";
    case ErrorCode::FaultRecoveryUnsupported:
      if (os_error_ != 0) {
        return "cannot install the fault handler: " + os_error_text(os_error_);
      }
      return "fault-tolerant access is not supported on this architecture";
    case ErrorCode::ProtectionViolation:
      return access_name(expected_) + " of " + to_string(length_) + " bytes at " +
             hex(address_) + " refused: the mapping's protection does not allow it";
    case ErrorCode::InvalidAlignment:
      return "alignment " + hex(length_) + " is not a power of two";
    case ErrorCode::NotPageAligned:
      return hex(address_) + " is not a multiple of the page size " + hex(length_);
    case ErrorCode::InvalidRange:
      return "range of " + hex(length_) + " bytes at offset " + hex(address_) +
             " is outside the mapping of " + hex(expected_) + " bytes";
    case ErrorCode::MappingOverlap:
      return "mapping of " + hex(length_) + " bytes at offset " + hex(address_) +
             " overlaps a mapping already in the arena";
    case ErrorCode::NoSuchMapping:
      return "no mapping of " + hex(length_) + " bytes at offset " + hex(address_) +
             " in the arena";
    case ErrorCode::IncompatibleOptions:
      return "builder options that cannot be combined: alignment and guard pages need memory "
             "the builder places itself, advice needs memory it maps";
    case ErrorCode::AdviceFailed:
      return "madvise(" + advice_name(address_) + ") of " + hex(length_) +
             " bytes failed: " + os_error_text(os_error_);
    case ErrorCode::MsyncFailed:
      return "msync of " + hex(length_) + " bytes failed: " + os_error_text(os_error_);
    case ErrorCode::NotImplemented:
      return "cache flush is not implemented on this architecture";
    case ErrorCode::KvmUnavailable:
      if (os_error_ == ENOENT) {
        return "no KVM device: " + os_error_text(os_error_);
      }
      if (os_error_ == EACCES || os_error_ == EPERM) {
        return "no permission to open the KVM device: " + os_error_text(os_error_);
      }
      if (os_error_ == ENOTTY) {
        return "the device is not KVM: " + os_error_text(os_error_);
      }
      if (os_error_ != 0) {
        return "cannot open the KVM device: " + os_error_text(os_error_);
      }
      return "KVM API version " + to_string(expected_) + " is not the supported version 12";
    case ErrorCode::KvmCapabilityMissing:
      return "KVM lacks capability " + kvm_capability_name(address_);
    case ErrorCode::KvmIoctlFailed:
      return kvm_ioctl_name(address_) + "(" + to_string(expected_) +
             ") failed: " + os_error_text(os_error_);
    case ErrorCode::KvmSlotRefused:
      return "KVM refused " + kvm_ioctl_name(completed_) + " for memory slot " +
             to_string(expected_) + " (guest " + hex(address_) + ", " + hex(length_) +
             " bytes): " + os_error_text(os_error_);
    case ErrorCode::SnapshotUnsupported:
      if (address_ == 0) {
        return "not a guestmem snapshot (bad magic)";
      }
      return "snapshot format version " + to_string(completed_) + " is not supported (this "
             "build reads version " + to_string(expected_) + ")";
    case ErrorCode::SnapshotCorrupt:
      if (expected_ == 0) {
        return "snapshot corrupt: the header (chunk 0, " + hex(length_) +
               " bytes at file offset " + hex(address_) + ") fails its checksum";
      }
      return "snapshot corrupt: chunk " + to_string(expected_) + " (" + hex(length_) +
             " bytes at file offset " + hex(address_) + ") fails its checksum";
    case ErrorCode::SnapshotTruncated:
      return "snapshot truncated: the file ends at offset " + hex(address_) + " but needs " +
             hex(expected_) + " bytes";
    case ErrorCode::SnapshotWrongBase:
      return "snapshot base mismatch: the file names base " + snapshot_id_text(address_, length_) +
             ", expected " + snapshot_id_text(expected_, completed_);
    case ErrorCode::SnapshotLayoutMismatch:
      return "snapshot layout mismatch at region " + to_string(expected_) + " (guest base " +
             hex(address_) + ", size " + hex(length_) + ")";
    case ErrorCode::FaultSignalBlocked:
      return signal_name(signal_) +
             " is blocked in the calling thread, so a fault could not be recovered: nothing "
             "was accessed";
  }
  return "unknown error code " + to_string(static_cast<unsigned>(code_));
}

std::string to_string(const Error& error) { return error.message(); }

std::ostream& operator<<(std::ostream& out, ErrorCode code) { return out << to_string(code); }

std::ostream& operator<<(std::ostream& out, const Error& error) {
  return out << to_string(error.code()) << ": " << error.message();
}

}  // namespace guestmem
