// Tests of fault-tolerant access through the cursors (guestmem/vm_io.hpp) and the containers'
// fallible calls, with real faults: PROT_NONE pages, unmapped pages and memfds truncated under
// a mapping; and of the refusal in threads that block SIGSEGV or SIGBUS. The primitives and
// the handler's chaining are tested in fault_test.cpp.
//
// Every test runs under every preset. Sanitizers change who handled SIGSEGV/SIGBUS before
// guestmem (ASan installs its own handlers; TSan interposes sigaction): the child-process
// tests therefore set the earlier handler themselves, in a fresh process (death-test style
// "threadsafe" re-executes the binary), so the expected outcome is the same everywhere.
#include "guestmem/vm_io.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/endian.hpp"
#include "guestmem/fault.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/guest_region.hpp"
#include "guestmem/volatile_slice.hpp"
#include "fault_test_support.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::address_of;
using testing::kPage;
using testing::Marks;
using testing::Pages;
using testing::pattern;
using testing::recover_then;
using testing::RecordingBitmap;
using testing::write_to;

// ---- cursors ---------------------------------------------------------------------------------

static_assert(PodOnce<std::uint32_t> && PodOnce<std::int64_t> && PodOnce<Le32>);
static_assert(!PodOnce<std::array<std::uint8_t, 4>> && !PodOnce<const std::uint32_t>);
static_assert(Fallibility<Fallible> && Fallibility<Infallible> && !Fallibility<int>);

TEST(VmReader, InfallibleCursorOperations) {
  const auto source = pattern(32);
  auto reader = VmReader<Infallible>::from_bytes(source);
  EXPECT_EQ(reader.remain(), 32u);
  EXPECT_TRUE(reader.has_remain());
  reader.skip(4).limit(20);
  EXPECT_EQ(reader.remain(), 20u);
  EXPECT_EQ(reader.cursor(), reinterpret_cast<const std::uint8_t*>(source.data()) + 4);
  reader.limit(100);
  EXPECT_EQ(reader.remain(), 20u);

  std::vector<std::byte> sink(8);
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_EQ(reader.read(writer), 8u);
  EXPECT_EQ(reader.remain(), 12u);
  EXPECT_EQ(writer.avail(), 0u);
  EXPECT_FALSE(writer.has_avail());
  EXPECT_EQ(sink, pattern(8, 4));
  EXPECT_EQ(reader.read(writer), 0u);

  EXPECT_EQ(reader.read_val<std::uint32_t>(), 0x0f0e0d0cu);
  EXPECT_EQ(reader.read_once<std::uint32_t>(), 0x13121110u);
  EXPECT_EQ(reader.remain(), 4u);
  EXPECT_EQ(reader.read_val<std::uint64_t>().error(), Error::out_of_bounds(0, 8, 4));
  EXPECT_EQ(reader.remain(), 4u);
  EXPECT_DEATH(reader.skip(5), "skip past the end");
}

TEST(VmReader, ReadOnceRequiresAlignment) {
  alignas(8) std::array<std::byte, 16> source{};
  auto reader = VmReader<Infallible>::from_bytes(source);
  reader.skip(2);
  EXPECT_EQ(reader.read_once<std::uint32_t>().error(),
            Error::misaligned(address_of(source.data() + 2), 4));
  EXPECT_EQ(reader.to_fallible().read_once<std::uint64_t>().error().code(), ErrorCode::Misaligned);
  EXPECT_EQ(reader.remain(), 14u);
  EXPECT_EQ(reader.read_once<std::uint16_t>(), 0u);
}

TEST(VmWriter, InfallibleCursorOperations) {
  alignas(8) std::array<std::byte, 24> sink{};
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_TRUE(writer.write_val(std::uint32_t{0x04030201}).has_value());
  EXPECT_TRUE(writer.write_once(std::uint32_t{0x08070605}).has_value());
  EXPECT_TRUE(writer.write_once(std::uint16_t{1}).has_value());
  EXPECT_EQ(writer.write_once(std::uint32_t{1}).error(),
            Error::misaligned(address_of(sink.data() + 10), 4));
  std::memset(sink.data() + 10, 0xff, 14);
  EXPECT_EQ(writer.fill_zeros(100), 14u);
  EXPECT_EQ(writer.avail(), 0u);
  EXPECT_EQ(writer.write_val(std::uint8_t{1}).error(), Error::out_of_bounds(0, 1, 0));
  EXPECT_EQ(sink[0], std::byte{1});
  EXPECT_EQ(sink[7], std::byte{8});
  EXPECT_EQ(sink[23], std::byte{0});

  const auto source = pattern(4);
  auto reader = VmReader<Infallible>::from_bytes(source);
  auto again = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_EQ(again.skip(20).write(reader), 4u);
  EXPECT_EQ(sink[20], std::byte{0});
  EXPECT_EQ(sink[23], std::byte{3});
  EXPECT_DEATH(again.skip(1), "skip past the end");
}

TEST(VmWriter, ReportsEveryWriteToTheBitmapAndNotSkips) {
  RecordingBitmap bitmap;
  alignas(8) std::array<std::byte, 32> sink{};
  auto writer = VmWriter<Infallible, RecordingBitmap::Slice>::from_raw_parts(
      reinterpret_cast<std::uint8_t*>(sink.data()), sink.size(), bitmap.slice_at(0x100));
  writer.skip(4);
  EXPECT_TRUE(writer.write_val(std::uint32_t{1}).has_value());
  EXPECT_TRUE(writer.write_once(std::uint64_t{2}).has_value());
  EXPECT_EQ(writer.fill_zeros(3), 3u);
  auto fallible = writer.to_fallible();
  EXPECT_EQ(fallible.avail(), 13u);
  EXPECT_EQ(fallible.fill_zeros(5), 5u);
  EXPECT_EQ(bitmap.take(), (Marks{{0x104, 4}, {0x108, 8}, {0x110, 3}, {0x113, 5}}));
}

TEST(VmReader, FallibleReadStopsAtTheFaultAndKeepsTheCursorThere) {
  Pages pages(2);
  std::memset(pages.page(0), 0x44, kPage);
  pages.protect(1, PROT_NONE);
  auto reader = VmReader<Fallible>::from_raw_parts(pages.page(1) - 100, 300);
  std::vector<std::byte> sink(400);
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  auto read = reader.read_fallible(writer);
  ASSERT_FALSE(read.has_value());
  EXPECT_EQ(read.error(), Error::fault(address_of(pages.page(1)), SIGSEGV, 300, 100));
  EXPECT_EQ(reader.remain(), 200u);
  EXPECT_EQ(reader.cursor(), pages.page(1));
  EXPECT_EQ(writer.avail(), 300u);
  EXPECT_EQ(sink[99], std::byte{0x44});
  EXPECT_EQ(sink[100], std::byte{0});

  auto before = VmReader<Fallible>::from_raw_parts(pages.page(1) - 4, 8);
  EXPECT_EQ(before.read_val<std::uint64_t>().error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 8, 4));
  EXPECT_EQ(before.remain(), 8u);
  auto inside = VmReader<Fallible>::from_raw_parts(pages.page(1), 8);
  EXPECT_EQ(inside.read_once<std::uint64_t>().error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 8, 0));
  auto good = VmReader<Fallible>::from_raw_parts(pages.page(0), 8);
  EXPECT_EQ(good.read_once<std::uint32_t>(), 0x44444444u);
  EXPECT_EQ(good.read_val<std::uint32_t>(), 0x44444444u);
}

TEST(VmWriter, FallibleWritesReportBytesDoneBeforeTheFault) {
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  RecordingBitmap bitmap;
  auto writer = VmWriter<Fallible, RecordingBitmap::Slice>::from_raw_parts(
      pages.page(1) - 16, 64, bitmap.slice_at(0));
  const auto source = pattern(64);
  auto reader = VmReader<Infallible>::from_bytes(source);
  writer.skip(8);
  auto written = writer.write_fallible(reader);
  EXPECT_EQ(written.error(), Error::fault(address_of(pages.page(1)), SIGSEGV, 56, 8));
  EXPECT_EQ(writer.avail(), 48u);
  EXPECT_EQ(reader.remain(), 56u);
  EXPECT_EQ(bitmap.take(), (Marks{{8, 8}}));

  auto value = VmWriter<Fallible, RecordingBitmap::Slice>::from_raw_parts(pages.page(1) - 2, 8,
                                                                          bitmap.slice_at(0));
  EXPECT_EQ(value.write_val(std::uint64_t{~0ull}).error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 8, 2));
  EXPECT_EQ(value.avail(), 8u);
  EXPECT_EQ(bitmap.take(), (Marks{{0, 2}}));
  EXPECT_EQ(pages.page(1)[-1], 0xff);

  auto zeros = VmWriter<Fallible>::from_raw_parts(pages.page(1) - 3, 10);
  EXPECT_EQ(zeros.fill_zeros(20).error(), Error::fault(address_of(pages.page(1)), SIGSEGV, 10, 3));
  EXPECT_EQ(zeros.avail(), 7u);
  EXPECT_EQ(pages.page(1)[-1], 0);
  auto once = VmWriter<Fallible>::from_raw_parts(pages.page(1), 8);
  EXPECT_EQ(once.write_once(std::uint32_t{1}).error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 4, 0));
  EXPECT_EQ(once.avail(), 8u);
}

// ---- containers ----------------------------------------------------------------------------

// Two adjacent regions of four pages each, backed by memfds, with a recording bitmap.
struct FileBackedMemory {
  FileBackedMemory() {
    std::vector<RegionSpec> specs;
    specs.push_back(RegionSpec{GuestAddress{0x10000}, 4 * kPage, FileOffset(testing::memfd(4 * kPage), 0)});
    specs.push_back(
        RegionSpec{GuestAddress{0x10000 + 4 * kPage}, 4 * kPage, FileOffset(testing::memfd(4 * kPage), 0)});
    auto built = GuestMemoryMmap<RecordingBitmap>::from_ranges_with_files(specs);
    EXPECT_TRUE(built.has_value());
    mem = std::move(*built);
  }
  // Truncates the second region's file to `pages` pages.
  void truncate_second(std::size_t pages) const {
    const auto* region = mem.find_region(second());
    ASSERT_EQ(::ftruncate(region->file_offset()->fd(), static_cast<off_t>(pages * kPage)), 0);
  }
  [[nodiscard]] GuestAddress second() const { return GuestAddress{0x10000 + 4 * kPage}; }
  [[nodiscard]] std::uintptr_t host(GuestAddress addr) const { return address_of(*mem.get_host_address(addr)); }

  GuestMemoryMmap<RecordingBitmap> mem;
};

TEST(GuestMemoryMmap, TryReadAcrossRegionsStopsAtTheTruncatedPage) {
  FileBackedMemory f;
  const auto data = pattern(8 * kPage);
  ASSERT_TRUE(f.mem.write_slice(data, GuestAddress{0x10000}).has_value());
  // The reader exists before the file shrinks under it.
  auto reader = f.mem.reader(f.second(), 2 * kPage);
  ASSERT_TRUE(reader.has_value());
  f.truncate_second(1);
  const GuestAddress lost = f.second().unchecked_add(kPage);
  std::vector<std::byte> out(8 * kPage);
  auto read = f.mem.try_read(out, GuestAddress{0x10000});
  ASSERT_FALSE(read.has_value());
  EXPECT_EQ(read.error(), Error::fault(f.host(f.second()) + kPage, SIGBUS, 8 * kPage, 5 * kPage));
  EXPECT_EQ(GuestAddress{0x10000}.unchecked_add(read.error().completed()), lost);
  EXPECT_EQ(std::memcmp(out.data(), data.data(), 5 * kPage), 0);
  EXPECT_EQ(f.mem.try_read_slice(out, GuestAddress{0x10000}).error().code(), ErrorCode::Fault);
  std::vector<std::byte> sink(2 * kPage);
  auto writer = VmWriter<Infallible>::from_bytes(sink);
  EXPECT_EQ(reader->read_fallible(writer).error(),
            Error::fault(f.host(lost), SIGBUS, 2 * kPage, kPage));
  EXPECT_EQ(reader->remain(), kPage);
  EXPECT_EQ(f.mem.try_read_obj<std::uint64_t>(lost).error(),
            Error::fault(f.host(lost), SIGBUS, 8, 0));
  EXPECT_EQ(f.mem.try_load<std::uint64_t>(lost, std::memory_order_acquire).error(),
            Error::fault(f.host(lost), SIGBUS, 8, 0));
  EXPECT_EQ(f.mem.try_read_obj<std::uint64_t>(lost.unchecked_sub(8)),
            f.mem.read_obj<std::uint64_t>(lost.unchecked_sub(8)));
}

TEST(GuestMemoryMmap, TryWriteMarksExactlyTheBytesWrittenBeforeTheFault) {
  FileBackedMemory f;
  f.truncate_second(1);
  const auto& first = f.mem.find_region(GuestAddress{0x10000})->bitmap();
  const auto& second = f.mem.find_region(f.second())->bitmap();
  const auto data = pattern(3 * kPage);
  const GuestAddress start = f.second().unchecked_sub(kPage);
  const GuestAddress gone = f.second().unchecked_add(kPage);
  const std::uintptr_t lost = f.host(gone);
  EXPECT_EQ(f.mem.try_write(data, start).error(), Error::fault(lost, SIGBUS, 3 * kPage, 2 * kPage));
  EXPECT_EQ(first.take(), (Marks{{3 * kPage, kPage}}));
  EXPECT_EQ(second.take(), (Marks{{0, kPage}}));
  EXPECT_EQ(f.mem.try_write_slice(data, start).error(),
            Error::fault(lost, SIGBUS, 3 * kPage, 2 * kPage));
  EXPECT_EQ(first.take(), (Marks{{3 * kPage, kPage}}));
  EXPECT_EQ(second.take(), (Marks{{0, kPage}}));

  EXPECT_EQ(f.mem.try_write_obj(std::uint32_t{1}, gone).error(), Error::fault(lost, SIGBUS, 4, 0));
  EXPECT_EQ(f.mem.try_store(std::uint32_t{1}, gone, std::memory_order_seq_cst).error(),
            Error::fault(lost, SIGBUS, 4, 0));
  EXPECT_EQ(f.mem.try_compare_exchange<std::uint32_t>(gone, 0, 1).error(),
            Error::fault(lost, SIGBUS, 4, 0));
  EXPECT_TRUE(second.take().empty());
  auto writer = f.mem.writer(gone.unchecked_sub(4), 8);
  ASSERT_TRUE(writer.has_value());
  EXPECT_EQ(writer->fill_zeros(8).error(), Error::fault(lost, SIGBUS, 8, 4));
  EXPECT_EQ(second.take(), (Marks{{kPage - 4, 4}}));
}

TEST(GuestMemoryMmap, FallibleCallsFollowTheAccessRules) {
  FileBackedMemory f;
  const GuestAddress end = f.second().unchecked_add(4 * kPage);
  std::array<std::byte, 16> buf{};
  EXPECT_EQ(f.mem.try_read(std::span<std::byte>(), GuestAddress{0}), 0u);
  EXPECT_EQ(f.mem.try_read(buf, GuestAddress{0}).error(), Error::invalid_guest_address(GuestAddress{0}));
  EXPECT_EQ(f.mem.try_read(buf, end.unchecked_sub(4)), 4u);
  EXPECT_EQ(f.mem.try_write(buf, end.unchecked_sub(6)), 6u);
  EXPECT_EQ(f.mem.try_read_slice(buf, end.unchecked_sub(4)).error(), Error::partial_buffer(16, 4));
  EXPECT_EQ(f.mem.try_write_slice(buf, end).error(), Error::invalid_guest_address(end));
  EXPECT_EQ(f.mem.try_read_obj<std::uint64_t>(end).error(), Error::invalid_guest_address(end));
  EXPECT_EQ(f.mem.try_load<std::uint32_t>(f.second().unchecked_sub(2), std::memory_order_relaxed).error(),
            Error::invalid_backend_address(f.second().unchecked_sub(2).raw_value()));
  EXPECT_EQ(f.mem.try_store(std::uint32_t{1}, GuestAddress{0x10002}, std::memory_order_release).error(),
            Error::invalid_backend_address(0x10002));
  EXPECT_EQ(f.mem.reader(f.second().unchecked_sub(8), 16).error(),
            Error::invalid_backend_address(f.second().unchecked_sub(8).raw_value()));
  EXPECT_EQ(f.mem.writer(end, 1).error(), Error::invalid_guest_address(end));
  EXPECT_EQ(f.mem.reader(end, 0)->remain(), 0u);
  EXPECT_DEATH((void)f.mem.try_load<std::uint32_t>(GuestAddress{0x10000}, std::memory_order_release),
               "release");

  (void)f.mem.find_region(f.second())->bitmap().take();
  ASSERT_TRUE(f.mem.try_store(std::uint64_t{7}, f.second(), std::memory_order_relaxed).has_value());
  EXPECT_EQ(f.mem.try_load<std::uint64_t>(f.second(), std::memory_order_seq_cst), 7u);
  EXPECT_EQ(f.mem.try_compare_exchange<std::uint64_t>(f.second(), 6, 9), 7u);
  EXPECT_EQ(f.mem.try_compare_exchange<std::uint64_t>(f.second(), 7, 9), 7u);
  EXPECT_EQ(f.mem.read_obj<std::uint64_t>(f.second()), 9u);
  EXPECT_EQ(f.mem.find_region(f.second())->bitmap().take(), (Marks{{0, 8}, {0, 8}}));

  const auto data = pattern(3 * kPage);
  EXPECT_EQ(f.mem.try_write(data, f.second().unchecked_sub(kPage)), 3 * kPage);
  std::vector<std::byte> back(3 * kPage);
  ASSERT_TRUE(f.mem.try_read_slice(back, f.second().unchecked_sub(kPage)).has_value());
  EXPECT_EQ(back, data);
  ASSERT_TRUE(f.mem.try_write_obj(Le32{0x01020304}, f.second()).has_value());
  EXPECT_EQ(f.mem.try_read_obj<std::uint32_t>(f.second()), 0x01020304u);
}

TEST(GuestRegionMmap, FallibleCallsAtRegionOffsets) {
  FileBackedMemory f;
  const auto& region = *f.mem.find_region(f.second());
  f.truncate_second(3);
  const MemoryRegionAddress lost{3 * kPage};
  std::vector<std::byte> out(2 * kPage);
  EXPECT_EQ(region.try_read(out, MemoryRegionAddress{2 * kPage + 8}).error(),
            Error::fault(f.host(f.second().unchecked_add(3 * kPage)), SIGBUS, 2 * kPage, kPage - 8));
  EXPECT_EQ(region.try_read(out, MemoryRegionAddress{4 * kPage}).error(),
            Error::invalid_backend_address(4 * kPage));
  EXPECT_EQ(region.reader(lost, 8)->read_val<std::uint64_t>().error().signal(), SIGBUS);
  EXPECT_EQ(region.writer(MemoryRegionAddress{4 * kPage - 4}, 8).error(),
            Error::invalid_backend_address(4 * kPage - 4));
  EXPECT_EQ(region.try_load<std::uint16_t>(MemoryRegionAddress{0}, std::memory_order_relaxed), 0u);
}

TEST(VolatileSlice, FallibleCallsAtOffsets) {
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  auto slice = VolatileSlice<>::from_raw_parts(pages.page(0), 2 * kPage);
  std::array<std::byte, 32> buf{};
  EXPECT_EQ(slice.try_read(buf, kPage - 8).error(),
            Error::fault(address_of(pages.page(1)), SIGSEGV, 32, 8));
  EXPECT_EQ(slice.try_read(buf, 2 * kPage).error(), Error::out_of_bounds(2 * kPage, 32, 2 * kPage));
  EXPECT_EQ(slice.try_load<std::uint32_t>(2, std::memory_order_relaxed).error(),
            Error::misaligned(2, 4));
  EXPECT_EQ(slice.try_store(std::uint16_t{1}, 2 * kPage - 1, std::memory_order_relaxed).error(),
            Error::out_of_bounds(2 * kPage - 1, 2, 2 * kPage));
  auto writer = slice.writer(kPage - 4, 16);
  ASSERT_TRUE(writer.has_value());
  EXPECT_TRUE(writer->write_once(std::uint32_t{0xdeadbeef}).has_value());
  EXPECT_EQ(writer->write_once(std::uint32_t{1}).error().code(), ErrorCode::Fault);
  EXPECT_EQ(slice.reader(kPage - 4, 4)->read_once<std::uint32_t>(), 0xdeadbeefu);
  EXPECT_EQ(slice.writer(2 * kPage - 4, 8).error(), Error::out_of_bounds(2 * kPage - 4, 8, 2 * kPage));
}

// ---- threads that block SIGSEGV or SIGBUS ---------------------------------------------------
//
// The kernel kills the process for a fault whose signal the faulting thread blocks, whatever
// handler is installed; the fallible calls refuse with FaultSignalBlocked instead, before
// touching memory. Each test runs in a child process, so that a missing refusal kills the
// child and fails the test, not the test binary.

// In a child process: reports `what` and exits 1 unless `ok`.
void child_expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "child expectation failed: %s\n", what);
    ::_exit(1);
  }
}

// Blocks (SIG_BLOCK) or unblocks (SIG_UNBLOCK) `signal` in the calling thread.
void mask_signal(int how, int signal) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signal);
  child_expect(::pthread_sigmask(how, &set, nullptr) == 0, "pthread_sigmask");
}

// Runs `body` in a new thread, waits for it and exits 0.
template <class Body>
void in_a_thread_then_exit(Body body) {
  std::thread(body).join();
  ::_exit(0);
}

template <class T>
bool fails_with(const Result<T>& result, const Error& error) {
  return !result.has_value() && result.error() == error;
}

// The fault a primitive reports when it refused to run because the thread blocks `signal`.
FaultInfo refused(int signal) { return FaultInfo{0, signal, true}; }

template <class T>
bool refused_with(const std::expected<T, FaultInfo>& result, int signal) {
  return !result.has_value() && result.error() == refused(signal);
}

bool refused_with(const FallibleOutcome& outcome, int signal) {
  return outcome.done == 0 && outcome.fault == refused(signal);
}

TEST(FaultSignalsDeathTest, ThreadThatBlocksSigbusGetsFaultSignalBlockedInsteadOfDying) {
  EXPECT_EXIT(in_a_thread_then_exit([] {
                mask_signal(SIG_BLOCK, SIGBUS);
                FileBackedMemory f;
                f.truncate_second(1);
                const GuestAddress lost = f.second().unchecked_add(kPage);
                const Error blocked = Error::fault_signal_blocked(SIGBUS);
                std::vector<std::byte> out(8 * kPage, std::byte{0xee});
                child_expect(fails_with(f.mem.try_read(out, GuestAddress{0x10000}), blocked),
                             "try_read across the truncated page");
                child_expect(out[0] == std::byte{0xee}, "the refused try_read wrote nothing");
                child_expect(fails_with(f.mem.try_read_obj<std::uint64_t>(lost), blocked),
                             "try_read_obj");
                child_expect(fails_with(f.mem.try_write_slice(out, GuestAddress{0x10000}), blocked),
                             "try_write_slice");
                child_expect(f.mem.find_region(GuestAddress{0x10000})->bitmap().take().empty(),
                             "the refused write marked nothing");
                child_expect(
                    fails_with(f.mem.try_load<std::uint64_t>(lost, std::memory_order_acquire),
                               blocked),
                    "try_load");
                child_expect(fails_with(f.mem.reader(f.second(), 2 * kPage), blocked), "reader");
                child_expect(fails_with(f.mem.writer(f.second(), 2 * kPage), blocked), "writer");
                child_expect(fails_with(recheck_fault_signals(), blocked), "recheck_fault_signals");

                // The primitives, and cursors made from raw parts, refuse the same way.
                auto* host = reinterpret_cast<std::uint8_t*>(f.host(lost));
                child_expect(refused_with(fallible_copy(out.data(), host, 16), SIGBUS),
                             "fallible_copy");
                child_expect(refused_with(fallible_load<std::uint32_t>(host), SIGBUS),
                             "fallible_load");
                auto reader = VmReader<Fallible>::from_raw_parts(host - 8, 16);
                auto writer = VmWriter<Infallible>::from_bytes(out);
                child_expect(fails_with(reader.read_fallible(writer), blocked) &&
                                 reader.remain() == 16 && writer.avail() == out.size(),
                             "read_fallible");
                child_expect(fails_with(reader.read_once<std::uint64_t>(), blocked),
                             "read_once");
              }),
              ::testing::ExitedWithCode(0), "");
}

TEST(FaultSignalsDeathTest, ThreadThatBlocksSigsegvGetsFaultSignalBlockedInsteadOfDying) {
  EXPECT_EXIT(in_a_thread_then_exit([] {
                mask_signal(SIG_BLOCK, SIGSEGV);
                Pages pages(2);
                std::memset(pages.page(0), 0x44, kPage);
                pages.protect(1, PROT_NONE);
                auto slice = VolatileSlice<>::from_raw_parts(pages.page(0), 2 * kPage);
                const Error blocked = Error::fault_signal_blocked(SIGSEGV);
                std::array<std::byte, 32> buf{};
                child_expect(fails_with(slice.try_read(buf, kPage - 8), blocked), "try_read");
                child_expect(fails_with(slice.try_write(buf, kPage - 8), blocked), "try_write");
                child_expect(pages.page(1)[-1] == 0x44, "the refused try_write wrote nothing");
                child_expect(
                    fails_with(slice.try_store(std::uint32_t{1}, kPage, std::memory_order_relaxed),
                               blocked),
                    "try_store");
                child_expect(fails_with(slice.try_compare_exchange<std::uint32_t>(kPage, 0, 1),
                                        blocked),
                             "try_compare_exchange");
                child_expect(fails_with(slice.writer(kPage - 4, 8), blocked), "writer");

                std::uint8_t* bad = pages.page(1);
                child_expect(refused_with(fallible_fill(bad - 4, 0, 8), SIGSEGV), "fallible_fill");
                child_expect(pages.page(1)[-1] == 0x44, "the refused fill wrote nothing");
                child_expect(refused_with(fallible_store<std::uint32_t>(bad, 1), SIGSEGV),
                             "fallible_store");
                child_expect(refused_with(fallible_store_seq_cst<std::uint64_t>(bad, 1), SIGSEGV),
                             "fallible_store_seq_cst");
                child_expect(refused_with(fallible_compare_exchange<std::uint16_t>(bad, 0, 1),
                                          SIGSEGV),
                             "fallible_compare_exchange");
                auto writer = VmWriter<Fallible>::from_raw_parts(bad - 4, 8);
                child_expect(fails_with(writer.write_once(std::uint32_t{1}), blocked) &&
                                 writer.avail() == 8,
                             "write_once");
                child_expect(fails_with(writer.write_val(std::uint64_t{1}), blocked), "write_val");
                child_expect(fails_with(writer.fill_zeros(8), blocked) && writer.avail() == 8,
                             "fill_zeros");
              }),
              ::testing::ExitedWithCode(0), "");
}

TEST(FaultSignalsDeathTest, RecheckSeesASignalBlockedLaterAndARefusalIsNotRemembered) {
  EXPECT_EXIT(in_a_thread_then_exit([] {
                FileBackedMemory f;
                f.truncate_second(1);
                const GuestAddress lost = f.second().unchecked_add(kPage);
                const Error fault = Error::fault(f.host(lost), SIGBUS, 2 * kPage, kPage);
                const Error blocked = Error::fault_signal_blocked(SIGBUS);
                std::vector<std::byte> out(2 * kPage);
                child_expect(fails_with(f.mem.try_read(out, f.second()), fault),
                             "recovers while SIGBUS is deliverable");
                // The verdict of the first call is cached for the thread; blocking a signal
                // later is only seen by a recheck.
                mask_signal(SIG_BLOCK, SIGBUS);
                child_expect(fails_with(recheck_fault_signals(), blocked),
                             "the recheck sees SIGBUS blocked");
                child_expect(fails_with(f.mem.try_read(out, f.second()), blocked),
                             "refused after the recheck");
                mask_signal(SIG_UNBLOCK, SIGBUS);
                child_expect(fails_with(f.mem.try_read(out, f.second()), fault),
                             "recovers again once SIGBUS is unblocked, without a recheck");
                child_expect(recheck_fault_signals().has_value(), "the recheck succeeds");
              }),
              ::testing::ExitedWithCode(0), "");
}

// The page the in-handler tests read: published by the crashing code before the crash.
std::uint8_t* volatile handler_target = nullptr;

// Reads handler_target fallibly, as a crash reporter reads memory from its SIGSEGV handler,
// where SIGSEGV is blocked. Exits 42 when every read was refused with FaultSignalBlocked.
void read_fallibly_then_exit() {
  std::uint8_t* target = handler_target;
  std::array<std::byte, 16> host{};
  const bool copy_refused = refused_with(fallible_copy(host.data(), target, host.size()), SIGSEGV);
  auto reader = VmReader<Fallible>::from_raw_parts(target, 8);
  const bool read_refused =
      fails_with(reader.read_val<std::uint64_t>(), Error::fault_signal_blocked(SIGSEGV));
  ::_exit(copy_refused && read_refused ? 42 : 10);
}

void earlier_handler_reading_fallibly(int /*signal*/, siginfo_t* /*info*/, void* /*context*/) {
  read_fallibly_then_exit();
}

void later_handler_rechecking(int /*signal*/, siginfo_t* /*info*/, void* /*context*/) {
  if (!fails_with(recheck_fault_signals(), Error::fault_signal_blocked(SIGSEGV))) {
    ::_exit(11);
  }
  read_fallibly_then_exit();
}

TEST(FaultSignalsDeathTest, EarlierSigsegvHandlerReadingFalliblyIsRefusedInsteadOfKilled) {
  EXPECT_EXIT(
      {
        struct sigaction action = {};
        action.sa_sigaction = earlier_handler_reading_fallibly;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        ::sigaction(SIGSEGV, &action, nullptr);
        // guestmem's handler chains to the earlier one, which runs with SIGSEGV blocked.
        recover_then([](std::uint8_t* bad) {
          handler_target = bad;
          write_to(bad);
        });
      },
      ::testing::ExitedWithCode(42), "");
}

TEST(FaultSignalsDeathTest, LaterSigsegvHandlerThatRechecksIsRefusedInsteadOfKilled) {
  EXPECT_EXIT(
      {
        recover_then([](std::uint8_t* bad) {
          // A handler installed over guestmem's runs first, so it rechecks itself.
          struct sigaction action = {};
          action.sa_sigaction = later_handler_rechecking;
          action.sa_flags = SA_SIGINFO;
          sigemptyset(&action.sa_mask);
          ::sigaction(SIGSEGV, &action, nullptr);
          handler_target = bad;
          write_to(bad);
        });
      },
      ::testing::ExitedWithCode(42), "");
}

TEST(FaultSignals, RecheckSucceedsWhereBothSignalsAreDeliverable) {
  EXPECT_TRUE(recheck_fault_signals().has_value());
  Pages pages(2);
  pages.protect(1, PROT_NONE);
  EXPECT_EQ(fallible_load<std::uint8_t>(pages.page(1)).error(),
            (FaultInfo{address_of(pages.page(1)), SIGSEGV, false}));
}

TEST(Error, FaultMessage) {
  EXPECT_EQ(Error::fault(0x7f0000001000, SIGBUS, 8192, 4096).message(),
            "SIGBUS at host address 0x7f0000001000 after 4096 of 8192 bytes");
  EXPECT_EQ(Error::fault(0x1000, SIGSEGV, 4, 0).message(),
            "SIGSEGV at host address 0x1000 after 0 of 4 bytes");
  EXPECT_EQ(Error::fault(0x1000, SIGSEGV, 4, 0).signal(), SIGSEGV);
  EXPECT_EQ(Error::fault_recovery_unsupported().message(),
            "fault-tolerant access is not supported on this architecture");
  EXPECT_EQ(Error::fault_signal_blocked(SIGBUS).message(),
            "SIGBUS is blocked in the calling thread, so a fault could not be recovered: "
            "nothing was accessed");
}

}  // namespace
}  // namespace guestmem
