#include "guestmem/error.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <sstream>

#include <gtest/gtest.h>

namespace guestmem {
namespace {

TEST(Error, FieldsOfEachConstructor) {
  const Error invalid = Error::invalid_guest_address(GuestAddress{0x3000});
  EXPECT_EQ(invalid.code(), ErrorCode::InvalidGuestAddress);
  EXPECT_EQ(invalid.address(), 0x3000u);

  const Error partial = Error::partial_buffer(8, 4);
  EXPECT_EQ(partial.code(), ErrorCode::PartialBuffer);
  EXPECT_EQ(partial.expected(), 8u);
  EXPECT_EQ(partial.completed(), 4u);

  const Error io = Error::io(EPIPE, 12);
  EXPECT_EQ(io.code(), ErrorCode::IoError);
  EXPECT_EQ(io.os_error(), EPIPE);
  EXPECT_EQ(io.completed(), 12u);

  const Error misaligned = Error::misaligned(0x1001, 4);
  EXPECT_EQ(misaligned.address(), 0x1001u);
  EXPECT_EQ(misaligned.length(), 4u);

  const Error eof = Error::mapping_past_eof(0x1000, 0x2000, 0x1800);
  EXPECT_EQ(eof.code(), ErrorCode::MappingPastEof);
  EXPECT_EQ(eof.address(), 0x1000u);
  EXPECT_EQ(eof.length(), 0x2000u);
  EXPECT_EQ(eof.expected(), 0x1800u);

  EXPECT_EQ(Error::io(EIO).with_completed(7).completed(), 7u);
  EXPECT_EQ(Error(ErrorCode::NoMemoryRegion), Error(ErrorCode::NoMemoryRegion));
  EXPECT_NE(Error::partial_buffer(8, 4), Error::partial_buffer(8, 5));
}

TEST(Error, MessagesCarryAddressesAndCounts) {
  EXPECT_EQ(Error::invalid_guest_address(GuestAddress{0x3000}).message(),
            "invalid guest address 0x3000");
  EXPECT_EQ(Error::partial_buffer(8, 4).message(), "partial buffer: completed 4 of 8 bytes");
  EXPECT_EQ(Error::io(EPIPE, 3).message(), "I/O error: Broken pipe (errno 32) after 3 bytes");
  EXPECT_EQ(Error::invalid_backend_address(0xffe).message(), "invalid backend address 0xffe");
  EXPECT_EQ(Error::out_of_bounds(5, 3, 5).message(),
            "range of 3 bytes at offset 0x5 is out of bounds of a view of 5 bytes");
  EXPECT_EQ(Error::overflow(0x10, 0xfffffffffffffff8).message(),
            "offset overflow: 0x10 + 0xfffffffffffffff8");
  EXPECT_EQ(Error::misaligned(0x1001, 4).message(), "address 0x1001 is not aligned to 4 bytes");
  EXPECT_EQ(Error(ErrorCode::NoMemoryRegion).message(), "no memory region");
  EXPECT_EQ(Error::at(ErrorCode::MemoryRegionOverlap, 0x800).message(),
            "memory regions overlap at 0x800");
  EXPECT_EQ(Error::at(ErrorCode::UnsortedMemoryRegions, 0x0).message(),
            "memory regions are not sorted at 0x0");
  EXPECT_EQ(Error::at(ErrorCode::InvalidGuestRegion, 0xfffffffffffff000, 0x1000).message(),
            "invalid guest region at 0xfffffffffffff000 of size 0x1000");
  EXPECT_EQ(Error::mapping_failed(EINVAL, 0).message(),
            "mmap of 0x0 bytes failed: Invalid argument (errno 22)");
  EXPECT_EQ(Error::mapping_past_eof(0x1000, 0x2000, 0x1800).message(),
            "mapping of 0x2000 bytes at file offset 0x1000 goes past the end of the file "
            "(size 0x1800)");
  EXPECT_EQ(Error::callback_out_of_range(16, 17).with_completed(4).message(),
            "transfer callback claimed 17 bytes of the 16 it was given, after 4 bytes");
  EXPECT_EQ(Error::at(ErrorCode::InvalidPointer, 0x1001).message(),
            "mapping pointer 0x1001 is not page aligned");
  EXPECT_EQ(Error::protection_violation(0x10, 4, Permissions::Write).message(),
            "write of 4 bytes at 0x10 refused: the mapping's protection does not allow it");
  EXPECT_EQ(Error::protection_violation(0x2000, 8, Permissions::Read).message(),
            "read of 8 bytes at 0x2000 refused: the mapping's protection does not allow it");
  EXPECT_EQ(Error::at(ErrorCode::InvalidAlignment, 0, 0x3000).message(),
            "alignment 0x3000 is not a power of two");
  EXPECT_EQ(Error::at(ErrorCode::NotPageAligned, 0x1001, 0x1000).message(),
            "0x1001 is not a multiple of the page size 0x1000");
  EXPECT_EQ(Error::invalid_range(0x3000, 0x10, 0x3000).message(),
            "range of 0x10 bytes at offset 0x3000 is outside the mapping of 0x3000 bytes");
  EXPECT_EQ(Error::at(ErrorCode::MappingOverlap, 0x1000, 0x2000).message(),
            "mapping of 0x2000 bytes at offset 0x1000 overlaps a mapping already in the arena");
  EXPECT_EQ(Error::at(ErrorCode::NoSuchMapping, 0x1000, 0x2000).message(),
            "no mapping of 0x2000 bytes at offset 0x1000 in the arena");
  EXPECT_EQ(Error::os_failure(ErrorCode::AdviceFailed, EINVAL, MADV_MERGEABLE, 0x1000).message(),
            "madvise(MADV_MERGEABLE) of 0x1000 bytes failed: Invalid argument (errno 22)");
  EXPECT_EQ(Error::os_failure(ErrorCode::MsyncFailed, EIO, 0, 0x2000).message(),
            "msync of 0x2000 bytes failed: Input/output error (errno 5)");
  EXPECT_EQ(Error(ErrorCode::NotImplemented).message(),
            "cache flush is not implemented on this architecture");
}

TEST(Error, FieldsOfTheMappingErrors) {
  const Error write = Error::protection_violation(0x1008, 4, Permissions::Write);
  EXPECT_EQ(write.code(), ErrorCode::ProtectionViolation);
  EXPECT_EQ(write.address(), 0x1008u);
  EXPECT_EQ(write.length(), 4u);
  EXPECT_EQ(write.expected(), 2u);
  EXPECT_EQ(Error::protection_violation(0, 1, Permissions::Read).expected(), 1u);
  EXPECT_NE(write, Error::protection_violation(0x1008, 4, Permissions::Read));

  const Error range = Error::invalid_range(0x10, 0x20, 0x30);
  EXPECT_EQ(range.code(), ErrorCode::InvalidRange);
  EXPECT_EQ(range.address(), 0x10u);
  EXPECT_EQ(range.length(), 0x20u);
  EXPECT_EQ(range.expected(), 0x30u);

  const Error advice = Error::os_failure(ErrorCode::AdviceFailed, EINVAL, MADV_HUGEPAGE, 0x1000);
  EXPECT_EQ(advice.code(), ErrorCode::AdviceFailed);
  EXPECT_EQ(advice.os_error(), EINVAL);
  EXPECT_EQ(advice.address(), static_cast<std::uint64_t>(MADV_HUGEPAGE));
  EXPECT_EQ(advice.length(), 0x1000u);
}

TEST(Error, EveryCodeHasANameAndAMessage) {
  for (int raw = 0; raw <= static_cast<int>(ErrorCode::FaultSignalBlocked); ++raw) {
    const auto code = static_cast<ErrorCode>(raw);
    EXPECT_NE(to_string(code), "UnknownErrorCode") << raw;
    EXPECT_EQ(Error(code).message().find("unknown error code"), std::string::npos) << raw;
  }
}

TEST(Error, SnapshotMessages) {
  EXPECT_EQ(Error::at(ErrorCode::SnapshotUnsupported, 0).message(),
            "not a guestmem snapshot (bad magic)");
  Error corrupt = Error::at(ErrorCode::SnapshotCorrupt, 0x201000, 0x100000);
  EXPECT_EQ(corrupt.message(), "snapshot corrupt: the header (chunk 0, 0x100000 bytes at file "
                               "offset 0x201000) fails its checksum");
  EXPECT_EQ(Error::at(ErrorCode::SnapshotLayoutMismatch, 0x1000, 0x2000).message(),
            "snapshot layout mismatch at region 0 (guest base 0x1000, size 0x2000)");
  EXPECT_EQ(Error::at(ErrorCode::SnapshotWrongBase, 0, 0).message(),
            "snapshot base mismatch: the file names base none, expected none");
}

TEST(Error, FaultSignalBlockedNamesTheSignal) {
  const Error blocked = Error::fault_signal_blocked(SIGBUS);
  EXPECT_EQ(blocked.code(), ErrorCode::FaultSignalBlocked);
  EXPECT_EQ(blocked.signal(), SIGBUS);
  EXPECT_EQ(blocked.address(), 0u);
  EXPECT_EQ(blocked.completed(), 0u);
  EXPECT_EQ(to_string(ErrorCode::FaultSignalBlocked), "FaultSignalBlocked");
  EXPECT_EQ(blocked.message(),
            "SIGBUS is blocked in the calling thread, so a fault could not be recovered: "
            "nothing was accessed");
  EXPECT_EQ(Error::fault_signal_blocked(SIGSEGV).message(),
            "SIGSEGV is blocked in the calling thread, so a fault could not be recovered: "
            "nothing was accessed");
  EXPECT_NE(blocked, Error::fault_signal_blocked(SIGSEGV));
}

TEST(Error, Streaming) {
  std::ostringstream out;
  out << Error::partial_buffer(2, 1);
  EXPECT_EQ(out.str(), "PartialBuffer: partial buffer: completed 1 of 2 bytes");
  EXPECT_EQ(to_string(Error::partial_buffer(2, 1)), "partial buffer: completed 1 of 2 bytes");
}

TEST(Result, IsStdExpected) {
  const Result<int> ok = 5;
  const Result<int> bad = std::unexpected(Error(ErrorCode::NoMemoryRegion));
  EXPECT_EQ(*ok, 5);
  EXPECT_EQ(bad.error().code(), ErrorCode::NoMemoryRegion);
}

}  // namespace
}  // namespace guestmem
