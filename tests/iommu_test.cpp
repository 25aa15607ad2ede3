#include "guestmem/iommu.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/io.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::Marks;
using testing::pattern;
using testing::RecordingBitmap;

constexpr std::uint64_t kTop = std::numeric_limits<std::uint64_t>::max();

static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<>>>);
static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<RecordingBitmap>>>);
static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<>, RecordingBitmap>>);
static_assert(GuestMemory<IommuMemory<GuestMemoryMmap<RecordingBitmap>, RecordingBitmap>>);
static_assert(BitmapSlice<IommuBitmapSlice<RecordingBitmap::Slice, RecordingBitmap::Slice>>);

using Mem = IommuMemory<GuestMemoryMmap<>>;

GuestAddress ga(std::uint64_t a) { return GuestAddress{a}; }

Error cannot_resolve(std::uint64_t iova, std::uint64_t length) {
  return Error::at(ErrorCode::CannotResolve, iova, length);
}
Error permission_denied(std::uint64_t iova, std::uint64_t length) {
  return Error::at(ErrorCode::PermissionDenied, iova, length);
}

template <Bitmap B = NoBitmap>
GuestMemoryMmap<B> physical(std::initializer_list<std::pair<GuestAddress, std::size_t>> ranges) {
  auto mem = GuestMemoryMmap<B>::from_ranges(ranges);
  EXPECT_TRUE(mem.has_value()) << mem.error();
  return mem.has_value() ? std::move(*mem) : GuestMemoryMmap<B>();
}

/// Fills every region of `mem` with bytes seed, seed + 1, ... (mod 256), region after region,
/// as vm-memory's IOMMU tests do.
template <class M>
void fill(const M& mem, std::uint8_t seed) {
  for (const auto& region : mem.regions()) {
    const auto bytes = pattern(region.len(), seed);
    ASSERT_TRUE(mem.write_slice(bytes, region.start_addr()).has_value());
    seed = static_cast<std::uint8_t>(seed + region.len());
  }
}

std::vector<std::byte> read_all(const auto& mem, GuestAddress addr, std::size_t n) {
  std::vector<std::byte> out(n);
  auto r = mem.read_slice(out, addr);
  EXPECT_TRUE(r.has_value()) << r.error();
  return out;
}

// ---------------------------------------------------------------- errors

TEST(IommuErrors, NamesAndMessages) {
  EXPECT_EQ(to_string(ErrorCode::CannotResolve), "CannotResolve");
  EXPECT_EQ(to_string(ErrorCode::Fragmented), "Fragmented");
  EXPECT_EQ(to_string(ErrorCode::PermissionDenied), "PermissionDenied");
  EXPECT_EQ(cannot_resolve(0x2a000, 0x80).message(),
            "cannot translate I/O virtual address range 0x2a000+0x80");
  EXPECT_EQ(permission_denied(0x1000, 0x10).message(),
            "I/O virtual address range 0x1000+0x10 does not permit the access");
  const Error fragmented = Error::fragmented(0x1ffc, 8, 4);
  EXPECT_EQ(fragmented.code(), ErrorCode::Fragmented);
  EXPECT_EQ(fragmented.address(), 0x1ffcu);
  EXPECT_EQ(fragmented.length(), 8u);
  EXPECT_EQ(fragmented.completed(), 4u);
  EXPECT_EQ(fragmented.message(),
            "I/O virtual address range 0x1ffc+0x8 is not contiguous in host memory: only 0x4 "
            "bytes are");
}

// ---------------------------------------------------------------- Iotlb

using Fragments = std::vector<MappedRange>;

void expect_hit(const Iotlb& iotlb, std::uint64_t iova, std::uint64_t length, Permissions access,
                const Fragments& expected) {
  auto found = iotlb.lookup(ga(iova), length, access);
  ASSERT_TRUE(found.has_value()) << "misses " << found.error().misses.size() << ", refusals "
                                 << found.error().access_fails.size();
  EXPECT_EQ(*found, expected);
}

void expect_fail(const Iotlb& iotlb, std::uint64_t iova, std::uint64_t length, Permissions access,
                 const IotlbFails& expected) {
  auto found = iotlb.lookup(ga(iova), length, access);
  ASSERT_FALSE(found.has_value()) << found->size() << " fragments";
  EXPECT_EQ(found.error(), expected);
}

TEST(Iotlb, MergesAdjacentEntriesThatContinueEachOther) {
  Iotlb iotlb;
  ASSERT_EQ(iotlb.set_mapping(ga(42), ga(87), 123, Permissions::ReadWrite), Result<bool>(false));
  // The entry grows: a change that a cache of translations must hear of.
  ASSERT_EQ(iotlb.set_mapping(ga(42 + 123), ga(87 + 123), 234, Permissions::ReadWrite),
            Result<bool>(true));
  ASSERT_EQ(iotlb.size(), 1u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(42), ga(87), 357, Permissions::ReadWrite}));
  expect_hit(iotlb, 42, 357, Permissions::ReadWrite, {{ga(87), 357}});
  expect_hit(iotlb, 42 + 122, 2, Permissions::ReadWrite, {{ga(87 + 122), 2}});
}

TEST(Iotlb, MergesWithBothNeighboursWhenFillingAHole) {
  Iotlb iotlb;
  ASSERT_EQ(iotlb.set_mapping(ga(0x1000), ga(0x9000), 0x1000, Permissions::Read), Result<bool>(false));
  ASSERT_EQ(iotlb.set_mapping(ga(0x3000), ga(0xb000), 0x1000, Permissions::Read), Result<bool>(false));
  ASSERT_EQ(iotlb.size(), 2u);
  ASSERT_EQ(iotlb.set_mapping(ga(0x2000), ga(0xa000), 0x1000, Permissions::Read), Result<bool>(true));
  ASSERT_EQ(iotlb.size(), 1u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(0x1000), ga(0x9000), 0x3000, Permissions::Read}));
}

TEST(Iotlb, AdjacentEntriesToTheSameTargetStaySeparate) {
  Iotlb iotlb;
  ASSERT_TRUE(iotlb.set_mapping(ga(42), ga(87), 123, Permissions::ReadWrite).has_value());
  ASSERT_TRUE(iotlb.set_mapping(ga(42 + 123), ga(87), 234, Permissions::ReadWrite).has_value());
  EXPECT_EQ(iotlb.size(), 2u);
  expect_hit(iotlb, 42, 357, Permissions::ReadWrite, {{ga(87), 123}, {ga(87), 234}});
}

TEST(Iotlb, AdjacentEntriesWithOtherPermissionsStaySeparate) {
  Iotlb iotlb;
  ASSERT_TRUE(iotlb.set_mapping(ga(0), ga(0x100), 0x10, Permissions::Read).has_value());
  ASSERT_TRUE(iotlb.set_mapping(ga(0x10), ga(0x110), 0x10, Permissions::ReadWrite).has_value());
  EXPECT_EQ(iotlb.size(), 2u);
  expect_hit(iotlb, 0, 0x20, Permissions::Read, {{ga(0x100), 0x10}, {ga(0x110), 0x10}});
}

TEST(Iotlb, PermissionsRefuseReadsAndWrites) {
  // 123 read-only bytes, then 234 write-only bytes, continuing in target space.
  Iotlb iotlb;
  ASSERT_TRUE(iotlb.set_mapping(ga(42), ga(87), 123, Permissions::Read).has_value());
  ASSERT_TRUE(iotlb.set_mapping(ga(165), ga(210), 234, Permissions::Write).has_value());
  expect_fail(iotlb, 42, 357, Permissions::ReadWrite, {{}, {{ga(42), 123}, {ga(165), 234}}});
  expect_fail(iotlb, 42, 357, Permissions::Read, {{}, {{ga(165), 234}}});
  expect_fail(iotlb, 42, 357, Permissions::Write, {{}, {{ga(42), 123}}});
  expect_hit(iotlb, 42, 357, Permissions::No, {{ga(87), 123}, {ga(210), 234}});
  expect_hit(iotlb, 42, 123, Permissions::Read, {{ga(87), 123}});
  expect_hit(iotlb, 165, 234, Permissions::Write, {{ga(210), 234}});
  // A refused part is clipped to the range looked up.
  expect_fail(iotlb, 160, 10, Permissions::Write, {{}, {{ga(160), 5}}});
}

TEST(Iotlb, InvalidationSplitsEntries) {
  Iotlb iotlb;
  ASSERT_TRUE(iotlb.set_mapping(ga(42), ga(87), 123, Permissions::ReadWrite).has_value());
  EXPECT_TRUE(iotlb.invalidate_mapping(ga(42 + 61), 3));
  ASSERT_EQ(iotlb.size(), 2u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(42), ga(87), 61, Permissions::ReadWrite}));
  EXPECT_EQ(iotlb.entries()[1], (IotlbEntry{ga(106), ga(151), 59, Permissions::ReadWrite}));
  expect_hit(iotlb, 42, 61, Permissions::ReadWrite, {{ga(87), 61}});
  expect_fail(iotlb, 42, 123, Permissions::ReadWrite, {{{ga(103), 3}}, {}});
  expect_hit(iotlb, 106, 59, Permissions::ReadWrite, {{ga(151), 59}});
  // Nothing left to remove there.
  EXPECT_FALSE(iotlb.invalidate_mapping(ga(103), 3));
  EXPECT_FALSE(iotlb.invalidate_mapping(ga(42), 0));

  iotlb.invalidate_all();
  EXPECT_TRUE(iotlb.empty());
  expect_fail(iotlb, 42, 123, Permissions::ReadWrite, {{{ga(42), 123}}, {}});
}

TEST(Iotlb, InvalidationAcrossSeveralEntriesKeepsTheOutsideParts) {
  Iotlb iotlb;
  ASSERT_TRUE(iotlb.set_mapping(ga(0x0), ga(0x5000), 0x1000, Permissions::Read).has_value());
  ASSERT_TRUE(iotlb.set_mapping(ga(0x1000), ga(0x9000), 0x1000, Permissions::Read).has_value());
  ASSERT_TRUE(iotlb.set_mapping(ga(0x2000), ga(0x3000), 0x1000, Permissions::Write).has_value());
  EXPECT_TRUE(iotlb.invalidate_mapping(ga(0x800), 0x2000));
  ASSERT_EQ(iotlb.size(), 2u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(0x0), ga(0x5000), 0x800, Permissions::Read}));
  EXPECT_EQ(iotlb.entries()[1], (IotlbEntry{ga(0x2800), ga(0x3800), 0x800, Permissions::Write}));
}

TEST(Iotlb, SetMappingReplacesWhatItOverlaps) {
  Iotlb iotlb;
  ASSERT_TRUE(iotlb.set_mapping(ga(0x1000), ga(0x8000), 0x3000, Permissions::ReadWrite).has_value());
  EXPECT_EQ(iotlb.set_mapping(ga(0x2000), ga(0x100), 0x800, Permissions::Read), Result<bool>(true));
  ASSERT_EQ(iotlb.size(), 3u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(0x1000), ga(0x8000), 0x1000, Permissions::ReadWrite}));
  EXPECT_EQ(iotlb.entries()[1], (IotlbEntry{ga(0x2000), ga(0x100), 0x800, Permissions::Read}));
  EXPECT_EQ(iotlb.entries()[2], (IotlbEntry{ga(0x2800), ga(0x9800), 0x1800, Permissions::ReadWrite}));
  // Mapping the hole back as it was restores one entry.
  EXPECT_EQ(iotlb.set_mapping(ga(0x2000), ga(0x9000), 0x800, Permissions::ReadWrite),
            Result<bool>(true));
  ASSERT_EQ(iotlb.size(), 1u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(0x1000), ga(0x8000), 0x3000, Permissions::ReadWrite}));
}

TEST(Iotlb, RangesThatReachTheTopOfTheAddressSpace) {
  Iotlb iotlb;
  EXPECT_EQ(iotlb.set_mapping(ga(kTop - 0xf), ga(0), 0x10, Permissions::Read),
            Result<bool>(std::unexpect, Error::guest_address_overflow(kTop - 0xf, 0x10)));
  EXPECT_EQ(iotlb.set_mapping(ga(0), ga(kTop - 0x7), 0x10, Permissions::Read),
            Result<bool>(std::unexpect, Error::guest_address_overflow(kTop - 0x7, 0x10)));
  EXPECT_TRUE(iotlb.empty());
  EXPECT_EQ(iotlb.set_mapping(ga(5), ga(6), 0, Permissions::Read), Result<bool>(false));
  EXPECT_TRUE(iotlb.empty());
  // The highest mapping possible ends just below 2^64 - 1.
  ASSERT_TRUE(iotlb.set_mapping(ga(kTop - 0x10), ga(0x100), 0x10, Permissions::Read).has_value());
  expect_fail(iotlb, kTop - 0x10, 0x20, Permissions::Read, {{{ga(kTop), 0x10}}, {}});
  expect_hit(iotlb, kTop - 0x10, 0x10, Permissions::Read, {{ga(0x100), 0x10}});
  // An invalidation that would run past the top ends there.
  EXPECT_TRUE(iotlb.invalidate_mapping(ga(kTop - 0x8), 0x100));
  ASSERT_EQ(iotlb.size(), 1u);
  EXPECT_EQ(iotlb.entries()[0], (IotlbEntry{ga(kTop - 0x10), ga(0x100), 0x8, Permissions::Read}));
  EXPECT_EQ(iotlb.entry_at(ga(kTop - 0x9)),
            (IotlbEntry{ga(kTop - 0x10), ga(0x100), 0x8, Permissions::Read}));
  EXPECT_EQ(iotlb.entry_at(ga(kTop - 0x8)), std::nullopt);
  expect_hit(iotlb, 0, 0, Permissions::ReadWrite, {});
}

// ---------------------------------------------------------------- Iommu

/// A miss handler for tests: records every call, and installs the mappings it was told to
/// for the failed parts (like vm-memory's SimpleIommu, one mapping per call).
struct ScriptedHandler {
  struct State {
    std::mutex mutex;
    std::vector<std::pair<IotlbFails, Permissions>> calls;
    // Where to map the first failed part on the next call (none: install nothing).
    std::optional<GuestAddress> next_target;
  };
  std::shared_ptr<State> state = std::make_shared<State>();

  Iommu::MissHandler handler() const {
    return [state = state](Iommu& iommu, const IotlbFails& fails, Permissions access) {
      std::optional<GuestAddress> target;
      {
        std::lock_guard lock(state->mutex);
        state->calls.emplace_back(fails, access);
        target = std::exchange(state->next_target, std::nullopt);
      }
      if (target) {
        const IovaRange& part = fails.misses.empty() ? fails.access_fails.front() : fails.misses.front();
        ASSERT_TRUE(iommu.set_mapping(part.base, *target, part.length, access).has_value());
      }
    };
  }
  void expect_mapping_request(GuestAddress target) const {
    std::lock_guard lock(state->mutex);
    state->next_target = target;
  }
  std::vector<std::pair<IotlbFails, Permissions>> take_calls() const {
    std::lock_guard lock(state->mutex);
    return std::exchange(state->calls, {});
  }
};

TEST(Iommu, TranslateWithoutAHandlerReportsTheFirstFailedPart) {
  Iommu iommu;
  ASSERT_TRUE(iommu.set_mapping(ga(0x1000), ga(0x8000), 0x1000, Permissions::Read).has_value());
  EXPECT_EQ(iommu.translate(ga(0x1800), 0x100, Permissions::Read),
            (Result<std::vector<MappedRange>>(std::vector<MappedRange>{{ga(0x8800), 0x100}})));
  EXPECT_EQ(iommu.translate(ga(0x1800), 0x1000, Permissions::Read).error(),
            cannot_resolve(0x2000, 0x800));
  EXPECT_EQ(iommu.translate(ga(0x800), 0x1000, Permissions::Write).error(),
            cannot_resolve(0x800, 0x800));
  EXPECT_EQ(iommu.translate(ga(0x1800), 0x1000, Permissions::Write).error(),
            permission_denied(0x1800, 0x800));
  EXPECT_EQ(iommu.translate(ga(0x5000), 0, Permissions::Write),
            (Result<std::vector<MappedRange>>(std::vector<MappedRange>{})));
}

TEST(Iommu, TheHandlerResolvesMissesAndAccessFailures) {
  ScriptedHandler script;
  Iommu iommu(script.handler());
  script.expect_mapping_request(ga(0x8000));
  EXPECT_EQ(iommu.translate(ga(0x1000), 0x1000, Permissions::Read),
            (Result<std::vector<MappedRange>>(std::vector<MappedRange>{{ga(0x8000), 0x1000}})));
  auto calls = script.take_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, (IotlbFails{{{ga(0x1000), 0x1000}}, {}}));
  EXPECT_EQ(calls[0].second, Permissions::Read);

  // A hit does not call the handler.
  EXPECT_TRUE(iommu.translate(ga(0x1000), 0x1000, Permissions::Read).has_value());
  EXPECT_TRUE(script.take_calls().empty());

  // A write to the read-only mapping is an access failure; the handler upgrades it.
  script.expect_mapping_request(ga(0x8000));
  EXPECT_EQ(iommu.translate(ga(0x1000), 0x1000, Permissions::Write),
            (Result<std::vector<MappedRange>>(std::vector<MappedRange>{{ga(0x8000), 0x1000}})));
  calls = script.take_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, (IotlbFails{{}, {{ga(0x1000), 0x1000}}}));
  EXPECT_EQ(calls[0].second, Permissions::Write);

  // A handler that installs nothing: the lookup after it fails again, with the error.
  EXPECT_EQ(iommu.translate(ga(0x1f00), 0x200, Permissions::Write).error(),
            cannot_resolve(0x2000, 0x100));
  calls = script.take_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, (IotlbFails{{{ga(0x2000), 0x100}}, {}}));
}

TEST(Iommu, TranslateEntryGivesTheWholeEntryAndItsGeneration) {
  Iommu iommu;
  ASSERT_TRUE(iommu.set_mapping(ga(0x1000), ga(0x8000), 0x2000, Permissions::ReadWrite).has_value());
  auto found = iommu.translate_entry(ga(0x2800), 8, Permissions::Write);
  ASSERT_TRUE(found.has_value()) << found.error();
  EXPECT_EQ(found->entry, (IotlbEntry{ga(0x1000), ga(0x8000), 0x2000, Permissions::ReadWrite}));
  EXPECT_EQ(found->generation, iommu.generation());
  EXPECT_EQ(iommu.translate_entry(ga(0x3000), 0x20, Permissions::Read).error(),
            cannot_resolve(0x3000, 0x20));
  EXPECT_EQ(iommu.translate_entry(ga(0xff0), 0x20, Permissions::Read).error(),
            cannot_resolve(0xff0, 0x10));
  ASSERT_TRUE(iommu.set_mapping(ga(0x4000), ga(0x8000), 0x100, Permissions::Read).has_value());
  EXPECT_EQ(iommu.translate_entry(ga(0x40f0), 0x20, Permissions::Write).error(),
            permission_denied(0x40f0, 0x10));
  EXPECT_EQ(iommu.translate_entry(ga(0x4000), 0, Permissions::Write).error(),
            permission_denied(0x4000, 1));
}

TEST(Iommu, GenerationAdvancesOnlyWhenAnExistingEntryChanges) {
  Iommu iommu;
  const std::uint64_t g0 = iommu.generation();
  // Entries of their own: next to others, but not continuing them (other target, same
  // target, other permissions).
  ASSERT_TRUE(iommu.set_mapping(ga(0x1000), ga(0x8000), 0x1000, Permissions::Read).has_value());
  ASSERT_TRUE(iommu.set_mapping(ga(0x2000), ga(0x7000), 0x1000, Permissions::Read).has_value());
  ASSERT_TRUE(iommu.set_mapping(ga(0x3000), ga(0x7000), 0x1000, Permissions::Read).has_value());
  ASSERT_TRUE(iommu.set_mapping(ga(0x4000), ga(0x8000), 0x1000, Permissions::Write).has_value());
  EXPECT_EQ(iommu.generation(), g0);
  EXPECT_EQ(iommu.iotlb_snapshot().size(), 4u);
  iommu.invalidate_mapping(ga(0x5000), 0x1000);
  iommu.invalidate_all();
  EXPECT_EQ(iommu.generation(), g0 + 1);
  iommu.invalidate_all();
  EXPECT_EQ(iommu.generation(), g0 + 1);

  // An entry that grows forward, then backward, then merges with another through the range
  // between them: each time a cached copy of it would be too short.
  ASSERT_TRUE(iommu.set_mapping(ga(0x1000), ga(0x8000), 0x1000, Permissions::Read).has_value());
  EXPECT_EQ(iommu.generation(), g0 + 1);
  ASSERT_TRUE(iommu.set_mapping(ga(0x2000), ga(0x9000), 0x800, Permissions::Read).has_value());
  EXPECT_EQ(iommu.generation(), g0 + 2);
  ASSERT_TRUE(iommu.set_mapping(ga(0x800), ga(0x7800), 0x800, Permissions::Read).has_value());
  EXPECT_EQ(iommu.generation(), g0 + 3);
  ASSERT_TRUE(iommu.set_mapping(ga(0x3000), ga(0xa000), 0x100, Permissions::Read).has_value());
  EXPECT_EQ(iommu.generation(), g0 + 3);
  ASSERT_TRUE(iommu.set_mapping(ga(0x2800), ga(0x9800), 0x800, Permissions::Read).has_value());
  EXPECT_EQ(iommu.generation(), g0 + 4);
  EXPECT_EQ(iommu.iotlb_snapshot().entries()[0],
            (IotlbEntry{ga(0x800), ga(0x7800), 0x2900, Permissions::Read}));

  // Part of an entry replaced, then cut off.
  ASSERT_TRUE(iommu.set_mapping(ga(0x1800), ga(0x100), 0x100, Permissions::Read).has_value());
  EXPECT_EQ(iommu.generation(), g0 + 5);
  iommu.invalidate_mapping(ga(0x800), 1);
  EXPECT_EQ(iommu.generation(), g0 + 6);
  EXPECT_EQ(iommu.set_mapping(ga(kTop), ga(0), 1, Permissions::Read),
            (Result<void>(std::unexpect, Error::guest_address_overflow(kTop, 1))));
  EXPECT_EQ(iommu.generation(), g0 + 6);
  EXPECT_EQ(iommu.iotlb_snapshot().size(), 3u);
  EXPECT_EQ(iommu.entry_at(ga(0x1800)), (IotlbEntry{ga(0x1800), ga(0x100), 0x100, Permissions::Read}));
}

// ---------------------------------------------------------------- IommuMemory

constexpr std::uint64_t kPhys1 = 0x4000;
constexpr std::uint64_t kPhys2 = 0x8000;
constexpr std::size_t kPhysLen = 128;
constexpr std::uint64_t kVirt = 0x2a000;
constexpr std::size_t kVirtLen = 2 * kPhysLen;

// Two 128-byte regions filled with 0, 1, 2, ...; with `premap`, mapped back to back at kVirt.
Mem two_fragment_memory(std::shared_ptr<Iommu> iommu, std::optional<Permissions> premap,
                        std::uint8_t seed = 0) {
  auto phys = physical({{ga(kPhys1), kPhysLen}, {ga(kPhys2), kPhysLen}});
  fill(phys, seed);
  if (premap) {
    EXPECT_TRUE(iommu->set_mapping(ga(kVirt), ga(kPhys1), kPhysLen, *premap).has_value());
    EXPECT_TRUE(iommu->set_mapping(ga(kVirt + kPhysLen), ga(kPhys2), kPhysLen, *premap).has_value());
  }
  return Mem(std::move(phys), std::move(iommu));
}

// Reads [addr, addr + len) through get_slices and checks the bytes count up from `seed`.
Result<void> check_content(const auto& mem, GuestAddress addr, std::size_t len, std::uint8_t seed) {
  auto slices = mem.get_slices(addr, len, Permissions::Read);
  if (!slices) {
    return std::unexpected(slices.error());
  }
  std::size_t done = 0;
  for (const auto& item : *slices) {
    if (!item) {
      return std::unexpected(item.error());
    }
    std::vector<std::byte> data(item->size());
    EXPECT_EQ(item->read(data, 0), Result<std::size_t>(data.size()));
    EXPECT_EQ(data, pattern(data.size(), static_cast<std::uint8_t>(seed + done)));
    done += data.size();
  }
  EXPECT_EQ(done, len);
  return {};
}

TEST(IommuMemory, PreMappedMemory) {
  auto mem = two_fragment_memory(std::make_shared<Iommu>(), Permissions::Read);
  EXPECT_EQ(mem.physical_memory(), nullptr);
  EXPECT_TRUE(mem.check_range(ga(kVirt), kVirtLen, Permissions::No));
  EXPECT_TRUE(mem.check_range(ga(kVirt), kVirtLen, Permissions::Read));
  EXPECT_FALSE(mem.check_range(ga(kVirt), kVirtLen, Permissions::Write));
  EXPECT_FALSE(mem.check_range(ga(kVirt), kVirtLen, Permissions::ReadWrite));
  EXPECT_FALSE(mem.check_range(ga(kVirt - 1), 1, Permissions::No));
  EXPECT_FALSE(mem.check_range(ga(kVirt + kVirtLen), 1, Permissions::No));
  EXPECT_TRUE(mem.check_range(ga(0x1234), 0, Permissions::Write));

  EXPECT_EQ(check_content(mem, ga(kVirt), kVirtLen, 0), Result<void>());
  EXPECT_EQ(check_content(mem, ga(kVirt - 1), 1, 0).error(), cannot_resolve(kVirt - 1, 1));
  EXPECT_EQ(check_content(mem, ga(kVirt + kVirtLen), 1, 0).error(),
            cannot_resolve(kVirt + kVirtLen, 1));
  EXPECT_EQ(check_content(mem, ga(kVirt), kVirtLen + 1, 0).error(),
            cannot_resolve(kVirt + kVirtLen, 1));

  // The byte-access interface over the same range: one read crosses both fragments.
  EXPECT_EQ(read_all(mem, ga(kVirt), kVirtLen), pattern(kVirtLen));
  EXPECT_EQ(mem.read_obj<std::uint32_t>(ga(kVirt + kPhysLen - 2)),
            Result<std::uint32_t>(0x81807f7eu));
}

TEST(IommuMemory, MissesAreResolvedThroughTheHandler) {
  ScriptedHandler script;
  auto mem = two_fragment_memory(std::make_shared<Iommu>(script.handler()), std::nullopt);
  EXPECT_FALSE(mem.check_range(ga(kVirt), kVirtLen, Permissions::Read));
  EXPECT_EQ(check_content(mem, ga(kVirt), kVirtLen, 0).error(), cannot_resolve(kVirt, kVirtLen));
  EXPECT_EQ(check_content(mem, ga(kVirt - 1), 1, 0).error(), cannot_resolve(kVirt - 1, 1));
  script.take_calls();

  // The handler maps one range per call: first the 128 bytes asked for...
  script.expect_mapping_request(ga(kPhys1));
  EXPECT_EQ(check_content(mem, ga(kVirt), kPhysLen, 0), Result<void>());
  auto calls = script.take_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, (IotlbFails{{{ga(kVirt), kPhysLen}}, {}}));

  // ...then the rest, when an access reaches it.
  script.expect_mapping_request(ga(kPhys2));
  EXPECT_EQ(check_content(mem, ga(kVirt), kVirtLen, 0), Result<void>());
  calls = script.take_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, (IotlbFails{{{ga(kVirt + kPhysLen), kPhysLen}}, {}}));

  // A write to the read-only first part is an access failure, resolved by the handler.
  ASSERT_TRUE(mem.iommu()->set_mapping(ga(kVirt), ga(kPhys1), kPhysLen, Permissions::Read).has_value());
  script.expect_mapping_request(ga(kPhys1 + 5));
  EXPECT_EQ(mem.write_obj(std::uint8_t{0xaa}, ga(kVirt + 5)), Result<void>());
  calls = script.take_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, (IotlbFails{{}, {{ga(kVirt + 5), 1}}}));
  EXPECT_EQ(calls[0].second, Permissions::Write);
  EXPECT_EQ(mem.backend().read_obj<std::uint8_t>(ga(kPhys1 + 5)), Result<std::uint8_t>(0xaa));
}

TEST(IommuMemory, ReadOnlyRefusesWritesAndWriteOnlyRefusesReads) {
  auto iommu = std::make_shared<Iommu>();
  auto mem = two_fragment_memory(iommu, std::nullopt);
  ASSERT_TRUE(iommu->set_mapping(ga(kVirt), ga(kPhys1), kPhysLen, Permissions::Read).has_value());
  ASSERT_TRUE(iommu->set_mapping(ga(kVirt + kPhysLen), ga(kPhys2), kPhysLen, Permissions::Write).has_value());
  const std::array<std::byte, 4> ones{std::byte{1}, std::byte{1}, std::byte{1}, std::byte{1}};
  std::array<std::byte, 4> buf{};

  EXPECT_EQ(mem.write(ones, ga(kVirt + 8)).error(), permission_denied(kVirt + 8, 4));
  EXPECT_EQ(mem.write_slice(ones, ga(kVirt + 8)).error(), permission_denied(kVirt + 8, 4));
  EXPECT_EQ(mem.write_obj(std::uint64_t{1}, ga(kVirt)).error(), permission_denied(kVirt, 8));
  EXPECT_EQ(mem.store(std::uint32_t{1}, ga(kVirt + 4), std::memory_order_relaxed).error(),
            permission_denied(kVirt + 4, 4));
  EXPECT_EQ(mem.read(buf, ga(kVirt + kPhysLen)).error(), permission_denied(kVirt + kPhysLen, 4));
  EXPECT_EQ(mem.read_obj<std::uint16_t>(ga(kVirt + kVirtLen - 2)).error(),
            permission_denied(kVirt + kVirtLen - 2, 2));
  EXPECT_EQ(mem.load<std::uint32_t>(ga(kVirt + kPhysLen), std::memory_order_relaxed).error(),
            permission_denied(kVirt + kPhysLen, 4));

  // Nothing was written below.
  std::vector<std::byte> below(kPhysLen);
  ASSERT_TRUE(mem.backend().read_slice(below, ga(kPhys1)).has_value());
  EXPECT_EQ(below, pattern(kPhysLen, 0));

  // The allowed directions work, and an access stops where the permissions change.
  EXPECT_EQ(mem.read_obj<std::uint32_t>(ga(kVirt)), Result<std::uint32_t>(0x03020100u));
  EXPECT_EQ(mem.write_obj(std::uint32_t{0x11223344}, ga(kVirt + kPhysLen)), Result<void>());
  EXPECT_EQ(mem.backend().read_obj<std::uint32_t>(ga(kPhys2)), Result<std::uint32_t>(0x11223344u));
  std::vector<std::byte> across(16);
  EXPECT_EQ(mem.read(across, ga(kVirt + kPhysLen - 4)), Result<std::size_t>(4));
  EXPECT_EQ(mem.read_slice(across, ga(kVirt + kPhysLen - 4)).error(), Error::partial_buffer(16, 4));
  EXPECT_EQ(mem.write(ones, ga(kVirt + kVirtLen - 2)), Result<std::size_t>(2));
  EXPECT_EQ(mem.write_slice(ones, ga(kVirt + kVirtLen - 2)).error(), Error::partial_buffer(4, 2));
}

TEST(IommuMemory, FragmentedTranslation) {
  // One contiguous IOVA range over three scattered 16-byte pieces of one region.
  auto phys = physical({{ga(0x1000), 0x1000}});
  fill(phys, 0);
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x10000), ga(0x1800), 16, Permissions::ReadWrite).has_value());
  ASSERT_TRUE(iommu->set_mapping(ga(0x10010), ga(0x1100), 16, Permissions::ReadWrite).has_value());
  ASSERT_TRUE(iommu->set_mapping(ga(0x10020), ga(0x1f00), 16, Permissions::ReadWrite).has_value());
  Mem mem(phys, iommu);

  auto fragments = iommu->translate(ga(0x10008), 0x20, Permissions::Read);
  ASSERT_TRUE(fragments.has_value()) << fragments.error();
  EXPECT_EQ(*fragments, (std::vector<MappedRange>{{ga(0x1808), 8}, {ga(0x1100), 16}, {ga(0x1f00), 8}}));

  auto slices = mem.get_slices(ga(0x10008), 0x20, Permissions::Read);
  std::vector<std::size_t> sizes;
  for (const auto& item : *slices) {
    ASSERT_TRUE(item.has_value()) << item.error();
    sizes.push_back(item->size());
  }
  EXPECT_EQ(sizes, (std::vector<std::size_t>{8, 16, 8}));

  // Accesses spread over the pieces.
  const auto data = pattern(48, 0xa0);
  EXPECT_EQ(mem.write_slice(data, ga(0x10000)), Result<void>());
  EXPECT_EQ(read_all(mem, ga(0x10000), 48), data);
  EXPECT_EQ(read_all(phys, ga(0x1100), 16), pattern(16, 0xb0));
  EXPECT_EQ(read_all(phys, ga(0x1f00), 16), pattern(16, 0xc0));
  EXPECT_EQ(read_all(phys, ga(0x1810), 1), pattern(1, 0x10));  // untouched after the piece

  // One view of the range is impossible; a single access cannot span two pieces.
  EXPECT_EQ(mem.get_slice(ga(0x10008), 16, Permissions::Read).error(),
            Error::fragmented(0x10008, 16, 8));
  auto within = mem.get_slice(ga(0x10010), 16, Permissions::Write);
  ASSERT_TRUE(within.has_value()) << within.error();
  EXPECT_EQ(within->size(), 16u);
  EXPECT_EQ(within->unsafe_host_ptr(), *phys.get_host_address(ga(0x1100)));
  EXPECT_EQ(mem.get_slice(ga(0x10010), 0, Permissions::Write)->size(), 0u);
  EXPECT_EQ(mem.store(std::uint64_t{1}, ga(0x1000c), std::memory_order_relaxed).error(),
            Error::fragmented(0x1000c, 8, 4));
  EXPECT_EQ(mem.load<std::uint32_t>(ga(0x10012), std::memory_order_relaxed).error(),
            Error::misaligned(0x10012, 4));
  EXPECT_EQ(mem.load<std::uint32_t>(ga(0x10014), std::memory_order_relaxed),
            Result<std::uint32_t>(0xb7b6b5b4u));

  // Transfers to and from files go piece by piece.
  std::vector<std::byte> out;
  VectorWriter writer(out);
  EXPECT_EQ(mem.write_volatile_to(ga(0x10004), writer, 40), Result<std::size_t>(40));
  EXPECT_EQ(out, pattern(40, 0xa4));
  const auto in = pattern(40, 0x40);
  SpanReader reader(in);
  EXPECT_EQ(mem.read_exact_volatile_from(ga(0x10004), reader, 40), Result<void>());
  EXPECT_EQ(read_all(mem, ga(0x10004), 40), in);
}

TEST(IommuMemory, InvalidationWhileATranslationIsCached) {
  auto phys = physical({{ga(0x0), 0x4000}});
  fill(phys, 0);
  ScriptedHandler script;
  auto iommu = std::make_shared<Iommu>(script.handler());
  ASSERT_TRUE(iommu->set_mapping(ga(0x100000), ga(0x1000), 0x1000, Permissions::ReadWrite).has_value());
  Mem mem(phys, iommu);
  Mem copy = mem;
  ASSERT_EQ(mem.read_obj<std::uint8_t>(ga(0x100010)), Result<std::uint8_t>(0x10));
  ASSERT_EQ(copy.read_obj<std::uint8_t>(ga(0x100010)), Result<std::uint8_t>(0x10));

  // Unmapped: the cached translation must not be used, and the handler is asked.
  iommu->invalidate_mapping(ga(0x100000), 0x1000);
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x100010)).error(), cannot_resolve(0x100010, 1));
  EXPECT_EQ(script.take_calls().size(), 1u);

  // Remapped elsewhere (the handler installs it on the miss): the new target is read.
  script.expect_mapping_request(ga(0x2000));
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x100010)), Result<std::uint8_t>(0x00));
  EXPECT_EQ(iommu->entry_at(ga(0x100010)),
            (IotlbEntry{ga(0x100010), ga(0x2000), 1, Permissions::Read}));

  // Changed in place to another target: both objects see the change at once.
  ASSERT_TRUE(iommu->set_mapping(ga(0x100000), ga(0x3000), 0x1000, Permissions::Read).has_value());
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x100020)), Result<std::uint8_t>(0x20));
  EXPECT_EQ(copy.read_obj<std::uint8_t>(ga(0x100020)), Result<std::uint8_t>(0x20));
  EXPECT_EQ(mem.backend().read_obj<std::uint8_t>(ga(0x3020)), Result<std::uint8_t>(0x20));
  ASSERT_TRUE(mem.backend().write_obj(std::uint8_t{0xee}, ga(0x3020)).has_value());
  EXPECT_EQ(copy.read_obj<std::uint8_t>(ga(0x100020)), Result<std::uint8_t>(0xee));

  // Permissions restricted in place: a cached read-write translation must not allow a write.
  ASSERT_TRUE(iommu->set_mapping(ga(0x100000), ga(0x3000), 0x1000, Permissions::ReadWrite).has_value());
  ASSERT_EQ(mem.write_obj(std::uint8_t{1}, ga(0x100030)), Result<void>());
  ASSERT_TRUE(iommu->set_mapping(ga(0x100000), ga(0x3000), 0x1000, Permissions::Read).has_value());
  EXPECT_EQ(mem.write_obj(std::uint8_t{2}, ga(0x100030)).error(), permission_denied(0x100030, 1));
  EXPECT_EQ(mem.backend().read_obj<std::uint8_t>(ga(0x3030)), Result<std::uint8_t>(1));

  // Everything invalidated.
  iommu->invalidate_all();
  EXPECT_EQ(copy.read_obj<std::uint8_t>(ga(0x100020)).error(), cannot_resolve(0x100020, 1));
}

// A failed Result's error, for failure messages (GoogleTest prints a Result as raw bytes).
template <class T>
std::string error_of(const Result<T>& r) {
  std::ostringstream out;
  if (!r) {
    out << r.error();
  }
  return out.str();
}

// The integer whose little-endian bytes are seed, seed + 1, ... (what fill() writes).
template <class T>
T counting_from(std::uint64_t seed) {
  std::uint64_t value = 0;
  for (unsigned i = 0; i < sizeof(T); ++i) {
    value |= ((seed + i) & 0xff) << (8 * i);
  }
  return static_cast<T>(value);
}

// How an IOTLB entry changes after an IommuMemory cached its translation at `cached` (a
// 4-byte load there, which reads `cached_target`): the mappings installed before, and the
// one installed after.
struct EntryChange {
  const char* name;
  std::vector<IotlbEntry> before;
  std::uint64_t cached;
  std::uint64_t cached_target;
  IotlbEntry change;
};

// An object over a 16 KiB region at 0x100000 filled with 0, 1, 2, ... whose Iommu holds
// `change.before`, with the translation at `change.cached` cached, and `change.change` then
// installed. Each access below runs on its own object, so that it is the first to meet the
// changed entry.
template <Bitmap B>
IommuMemory<GuestMemoryMmap<B>> after_change(const GuestMemoryMmap<B>& phys,
                                             const EntryChange& change) {
  fill(phys, 0);
  auto iommu = std::make_shared<Iommu>();
  for (const IotlbEntry& e : change.before) {
    EXPECT_TRUE(iommu->set_mapping(e.iova, e.target, e.length, e.permissions).has_value());
  }
  IommuMemory<GuestMemoryMmap<B>> mem(phys, iommu);
  EXPECT_EQ(mem.template load<std::uint32_t>(ga(change.cached), std::memory_order_relaxed),
            Result<std::uint32_t>(counting_from<std::uint32_t>(change.cached_target - 0x100000)));
  const IotlbEntry& c = change.change;
  EXPECT_TRUE(iommu->set_mapping(c.iova, c.target, c.length, c.permissions).has_value());
  return mem;
}

// Accesses of 8 and 16 bytes at `iova`, which the IOTLB maps contiguously to `target` in the
// region at 0x100000: each is one host range, whatever the object cached before.
template <Bitmap B>
void expect_contiguous_after(const EntryChange& change, std::uint64_t iova, std::uint64_t target) {
  SCOPED_TRACE(change.name);
  auto phys = physical<B>({{ga(0x100000), 0x4000}});
  const auto seed = static_cast<std::uint8_t>(target - 0x100000);
  const auto expected = counting_from<std::uint64_t>(seed);
  {
    auto mem = after_change(phys, change);
    const auto loaded = mem.template load<std::uint64_t>(ga(iova), std::memory_order_relaxed);
    EXPECT_EQ(loaded, Result<std::uint64_t>(expected)) << error_of(loaded);
  }
  {
    auto mem = after_change(phys, change);
    const auto stored =
        mem.store(std::uint64_t{0x1122334455667788}, ga(iova), std::memory_order_relaxed);
    EXPECT_EQ(stored, Result<void>()) << error_of(stored);
    EXPECT_EQ(phys.template read_obj<std::uint64_t>(ga(target)),
              Result<std::uint64_t>(0x1122334455667788));
  }
  {
    auto mem = after_change(phys, change);
    auto view = mem.get_slice(ga(iova), 16, Permissions::Write);
    ASSERT_TRUE(view.has_value()) << view.error();
    EXPECT_EQ(view->size(), 16u);
    EXPECT_EQ(view->unsafe_host_ptr(), *phys.get_host_address(ga(target)));
    std::vector<std::byte> bytes(16);
    EXPECT_EQ(view->read(bytes, 0), Result<std::size_t>(16));
    EXPECT_EQ(bytes, pattern(16, seed));
  }
  {
    auto mem = after_change(phys, change);
    const auto read = mem.template read_obj<std::uint64_t>(ga(iova));
    EXPECT_EQ(read, Result<std::uint64_t>(expected)) << error_of(read);
  }
}

template <Bitmap B>
void expect_grown_entries_are_contiguous() {
  constexpr Permissions kRW = Permissions::ReadWrite;
  // The entry continues past the end of the cached translation.
  expect_contiguous_after<B>({"grows forward",
                              {{ga(0x10000), ga(0x100000), 4, kRW}},
                              0x10000, 0x100000,
                              {ga(0x10004), ga(0x100004), 0x1000, kRW}},
                             0x10000, 0x100000);
  // A mapping fills the hole between two entries, which merge into one.
  expect_contiguous_after<B>({"two entries merge",
                              {{ga(0x20000), ga(0x101000), 4, kRW},
                               {ga(0x20008), ga(0x101008), 0x100, kRW}},
                              0x20000, 0x101000,
                              {ga(0x20004), ga(0x101004), 4, kRW}},
                             0x20000, 0x101000);
  // The entry grows before the cached translation's start; an access from the new start runs
  // over the cached part.
  expect_contiguous_after<B>({"grows backward",
                              {{ga(0x30004), ga(0x102004), 0xffc, kRW}},
                              0x30004, 0x102004,
                              {ga(0x30000), ga(0x102000), 4, kRW}},
                             0x30000, 0x102000);
}

TEST(IommuMemory, AccessAfterAnEntryGrewIsNotFragmented) {
  expect_grown_entries_are_contiguous<NoBitmap>();
  // Regions with a bitmap look the region up on a hit (another path through the cache).
  expect_grown_entries_are_contiguous<AtomicBitmap>();
}

// The opposite change: an invalidation that cuts the end off a cached entry. An access across
// the new end is Fragmented, counting the bytes that are still mapped.
TEST(IommuMemory, AccessAfterAnEntryShrankIsFragmented) {
  auto phys = physical({{ga(0x100000), 0x4000}});
  fill(phys, 0);
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x40000), ga(0x103000), 0x1000, Permissions::ReadWrite).has_value());
  Mem mem(phys, iommu);
  ASSERT_EQ(mem.load<std::uint64_t>(ga(0x40000), std::memory_order_relaxed),
            Result<std::uint64_t>(0x0706050403020100));
  iommu->invalidate_mapping(ga(0x40004), 0xffc);
  EXPECT_EQ(mem.load<std::uint64_t>(ga(0x40000), std::memory_order_relaxed).error(),
            Error::fragmented(0x40000, 8, 4));
  EXPECT_EQ(mem.store(std::uint64_t{1}, ga(0x40000), std::memory_order_relaxed).error(),
            Error::fragmented(0x40000, 8, 4));
  EXPECT_EQ(mem.get_slice(ga(0x40000), 16, Permissions::Read).error(),
            Error::fragmented(0x40000, 16, 4));
  EXPECT_EQ(mem.read_obj<std::uint64_t>(ga(0x40000)).error(), Error::partial_buffer(8, 4));
  EXPECT_EQ(phys.read_obj<std::uint64_t>(ga(0x103000)), Result<std::uint64_t>(0x0706050403020100));
}

TEST(IommuMemory, AFailedFirstPieceIsReportedWithoutAskingAgain) {
  // The handler installs the mapping only on its second call. The failed access must report
  // the failure it saw (asking once), not look again and find a piece it did not access.
  auto phys = physical({{ga(0x0), 0x2000}});
  std::atomic<int> calls{0};
  auto iommu = std::make_shared<Iommu>([&calls](Iommu& self, const IotlbFails& fails, Permissions) {
    if (calls.fetch_add(1) == 1) {
      ASSERT_TRUE(self.set_mapping(fails.misses.front().base, ga(0x1000), 0x100,
                                   Permissions::ReadWrite).has_value());
    }
  });
  Mem mem(phys, iommu);
  std::array<std::byte, 8> buf{};
  EXPECT_EQ(mem.read(buf, ga(0x5000)).error(), cannot_resolve(0x5000, 8));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(mem.read(buf, ga(0x5000)), Result<std::size_t>(8));
  EXPECT_EQ(calls.load(), 2);
  // The same for the other entry points of the failure path.
  iommu->invalidate_all();
  calls = 0;
  EXPECT_EQ(mem.store(std::uint32_t{1}, ga(0x5000), std::memory_order_relaxed).error(),
            cannot_resolve(0x5000, 4));
  EXPECT_EQ(calls.load(), 1);
  iommu->invalidate_all();
  calls = 0;
  const auto in = pattern(8);
  SpanReader reader(in);
  EXPECT_EQ(mem.read_volatile_from(ga(0x5000), reader, 8).error(), cannot_resolve(0x5000, 8));
  EXPECT_EQ(calls.load(), 1);
}

TEST(IommuMemory, MappingOutsideTheMemoryBelow) {
  auto phys = physical({{ga(0x0), 0x1000}, {ga(0x2000), 0x1000}});
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x10000), ga(0x800), 0x1000, Permissions::ReadWrite).has_value());
  Mem mem(phys, iommu);
  std::vector<std::byte> buf(0x1000);
  // The first 0x800 bytes are memory, then the hole at 0x1000.
  EXPECT_EQ(mem.read(buf, ga(0x10000)), Result<std::size_t>(0x800));
  EXPECT_EQ(mem.read(buf, ga(0x10800)).error(), Error::invalid_guest_address(ga(0x1000)));
  EXPECT_FALSE(mem.check_range(ga(0x10000), 0x1000, Permissions::Read));
  EXPECT_TRUE(mem.check_range(ga(0x10000), 0x800, Permissions::Read));
}

TEST(IommuMemory, TranslationSwitchedAtRunTime) {
  auto phys = physical({{ga(0x0), 0x2000}});
  fill(phys, 0);
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x0), ga(0x1000), 0x1000, Permissions::Read).has_value());
  Mem mem(phys, iommu, IommuMode::Passthrough);
  EXPECT_EQ(mem.iommu_mode(), IommuMode::Passthrough);
  EXPECT_EQ(mem.physical_memory(), &mem.backend());
  // Addresses go straight to the memory, and every access is allowed.
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x10)), Result<std::uint8_t>(0x10));
  EXPECT_EQ(mem.write_obj(std::uint8_t{0x55}, ga(0x11)), Result<void>());
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x3000)).error(), Error::invalid_guest_address(ga(0x3000)));
  EXPECT_EQ(mem.load<std::uint64_t>(ga(0x1ffc), std::memory_order_relaxed).error(),
            Error::invalid_backend_address(0x1ffc));
  EXPECT_EQ(mem.get_slice(ga(0x1ff0), 0x20, Permissions::Read).error(),
            Error::invalid_backend_address(0x1ff0));
  EXPECT_TRUE(mem.check_range(ga(0x0), 0x2000, Permissions::Write));

  mem.set_iommu_mode(IommuMode::Translate);
  EXPECT_EQ(mem.physical_memory(), nullptr);
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x10)), Result<std::uint8_t>(0x10));  // 0x1010 below
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x11)), Result<std::uint8_t>(0x11));
  EXPECT_EQ(mem.write_obj(std::uint8_t{0x55}, ga(0x11)).error(), permission_denied(0x11, 1));
  EXPECT_FALSE(mem.check_range(ga(0x0), 0x2000, Permissions::Read));

  mem.set_iommu_mode(IommuMode::Passthrough);
  EXPECT_EQ(mem.read_obj<std::uint8_t>(ga(0x11)), Result<std::uint8_t>(0x55));
}

TEST(IommuMemory, ReplacedBackend) {
  ScriptedHandler script;
  auto iommu = std::make_shared<Iommu>(script.handler());
  auto phys = physical({{ga(kPhys1), kPhysLen}});
  fill(phys, 0);
  ASSERT_TRUE(iommu->set_mapping(ga(kVirt), ga(kPhys1), kPhysLen, Permissions::Read).has_value());
  Mem mem(phys, iommu);
  EXPECT_EQ(check_content(mem, ga(kVirt), kPhysLen, 0), Result<void>());
  EXPECT_EQ(check_content(mem, ga(kVirt), 2 * kPhysLen, 0).error(),
            cannot_resolve(kVirt + kPhysLen, kPhysLen));

  auto bigger = physical({{ga(kPhys1), kPhysLen}, {ga(kPhys2), kPhysLen}});
  fill(bigger, 42);
  const Mem old = mem;
  mem = mem.with_replaced_backend(bigger);
  script.expect_mapping_request(ga(kPhys2));
  EXPECT_EQ(check_content(mem, ga(kVirt), 2 * kPhysLen, 42), Result<void>());
  // The old object keeps its memory, shares the IOMMU (which has the new mapping), and the
  // new mapping points outside its memory.
  EXPECT_EQ(check_content(old, ga(kVirt), kPhysLen, 0), Result<void>());
  EXPECT_EQ(iommu->iotlb_snapshot().size(), 2u);
  EXPECT_EQ(check_content(old, ga(kVirt + kPhysLen), 1, 0).error(),
            Error::invalid_guest_address(ga(kPhys2)));
}

TEST(IommuMemory, DirtyBitmapAtIovaGranularity) {
  auto phys = physical<RecordingBitmap>({{ga(0x4000), 0x2000}});
  auto iova_bitmap = std::make_shared<const RecordingBitmap>();
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x2a000), ga(0x5000), 0x1000, Permissions::ReadWrite).has_value());
  ASSERT_TRUE(iommu->set_mapping(ga(0x2b000), ga(0x4000), 0x1000, Permissions::ReadWrite).has_value());
  IommuMemory<GuestMemoryMmap<RecordingBitmap>, RecordingBitmap> mem(phys, iommu, iova_bitmap);
  auto& phys_bitmap = phys.find_region(ga(0x4000))->bitmap();
  phys_bitmap.take();

  std::vector<std::byte> buf(0x20);
  ASSERT_EQ(mem.read(buf, ga(0x2affc)), Result<std::size_t>(0x20));
  EXPECT_EQ(iova_bitmap->take(), Marks{});
  EXPECT_EQ(phys_bitmap.take(), Marks{});

  // A write across the two mappings: IOVA marks by IOVA, region marks by region offset.
  ASSERT_EQ(mem.write_slice(buf, ga(0x2affc)), Result<void>());
  EXPECT_EQ(iova_bitmap->take(), (Marks{{0x2affc, 4}, {0x2b000, 0x1c}}));
  EXPECT_EQ(phys_bitmap.take(), (Marks{{0x1ffc, 4}, {0x0, 0x1c}}));

  ASSERT_EQ(mem.store(std::uint32_t{7}, ga(0x2b010), std::memory_order_release), Result<void>());
  EXPECT_EQ(iova_bitmap->take(), (Marks{{0x2b010, 4}}));
  EXPECT_EQ(phys_bitmap.take(), (Marks{{0x10, 4}}));

  // A view from get_slices carries both.
  auto view = mem.get_slice(ga(0x2a100), 0x10, Permissions::Write);
  ASSERT_TRUE(view.has_value()) << view.error();
  EXPECT_EQ(iova_bitmap->take(), Marks{});
  ASSERT_EQ(view->write_obj(std::uint16_t{1}, 2), Result<void>());
  EXPECT_TRUE(view->bitmap().physical().dirty_at(3));
  EXPECT_TRUE(view->bitmap().iova()->dirty_at(2));
  EXPECT_FALSE(view->bitmap().dirty_at(4));
  EXPECT_EQ(iova_bitmap->take(), (Marks{{0x2a102, 2}}));
  EXPECT_EQ(phys_bitmap.take(), (Marks{{0x1102, 2}}));
  EXPECT_TRUE(view->bitmap().iova().has_value());

  // Without translation the addresses are not IOVAs: only the region bitmap hears.
  mem.set_iommu_mode(IommuMode::Passthrough);
  ASSERT_EQ(mem.write_obj(std::uint8_t{1}, ga(0x4008)), Result<void>());
  EXPECT_EQ(iova_bitmap->take(), Marks{});
  EXPECT_EQ(phys_bitmap.take(), (Marks{{0x8, 1}}));
  EXPECT_FALSE(mem.get_slice(ga(0x4000), 1, Permissions::Write)->bitmap().iova().has_value());
  EXPECT_EQ(&mem.bitmap(), iova_bitmap.get());
}

// The same through the real tracker: a vhost-user back end with the IOMMU on logs writes by
// IOVA (the IOVA bitmap) while migration reads the regions' bitmaps.
TEST(IommuMemory, AtomicBitmapsAtIovaAndRegionGranularity) {
  auto phys = physical<AtomicBitmap>({{ga(0x4000), 0x2000}});
  auto iova_bitmap = std::make_shared<const AtomicBitmap>(0x40000);
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x2a000), ga(0x5000), 0x1000, Permissions::ReadWrite).has_value());
  ASSERT_TRUE(iommu->set_mapping(ga(0x2b000), ga(0x4000), 0x1000, Permissions::ReadWrite).has_value());
  IommuMemory<GuestMemoryMmap<AtomicBitmap>, AtomicBitmap> mem(phys, iommu, iova_bitmap);
  const AtomicBitmap& region_bitmap = phys.find_region(ga(0x4000))->bitmap();

  std::vector<std::byte> buf(0x20);
  ASSERT_EQ(mem.read(buf, ga(0x2affc)), Result<std::size_t>(0x20));
  EXPECT_EQ(iova_bitmap->to_words(), std::vector<std::uint64_t>{0}) << "reads never mark";
  EXPECT_EQ(region_bitmap.to_words(), std::vector<std::uint64_t>{0});

  // Across the two mappings: IOVA pages 0x2a and 0x2b; region pages 1 (0x5000) and 0 (0x4000).
  ASSERT_EQ(mem.write_slice(buf, ga(0x2affc)), Result<void>());
  EXPECT_EQ(iova_bitmap->get_and_reset(), (std::vector<std::uint64_t>{0x3ULL << 42}));
  EXPECT_EQ(region_bitmap.get_and_reset(), std::vector<std::uint64_t>{0x3});
  ASSERT_EQ(mem.store(std::uint64_t{7}, ga(0x2a008), std::memory_order_relaxed), Result<void>());
  EXPECT_EQ(iova_bitmap->get_and_reset(), (std::vector<std::uint64_t>{0x1ULL << 42}));
  EXPECT_EQ(region_bitmap.get_and_reset(), std::vector<std::uint64_t>{0x2});
}

// The IOVA bitmap is not checked against the IOVAs the IOTLB maps (they change after
// construction): a write through a mapping past an AtomicBitmap's end reaches memory and the
// region's bitmap, and the IOVA bitmap drops its mark, as its constructor's precondition says.
TEST(IommuMemory, WriteAtAnIovaPastTheIovaBitmapIsNotMarkedThere) {
  auto phys = physical<AtomicBitmap>({{ga(0x4000), 0x2000}});
  auto iova_bitmap = std::make_shared<const AtomicBitmap>(0x10000);
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x1000), ga(0x4000), 0x1000, Permissions::ReadWrite).has_value());
  ASSERT_TRUE(iommu->set_mapping(ga(0x2a000), ga(0x5000), 0x1000, Permissions::ReadWrite).has_value());
  IommuMemory<GuestMemoryMmap<AtomicBitmap>, AtomicBitmap> mem(phys, iommu, iova_bitmap);
  const AtomicBitmap& region_bitmap = phys.find_region(ga(0x4000))->bitmap();

  ASSERT_EQ(mem.write_obj(std::uint32_t{0x11223344}, ga(0x1008)), Result<void>());
  EXPECT_EQ(iova_bitmap->get_and_reset(), std::vector<std::uint64_t>{0x2});
  EXPECT_EQ(region_bitmap.get_and_reset(), std::vector<std::uint64_t>{0x1});

  ASSERT_EQ(mem.write_obj(std::uint32_t{0x55667788}, ga(0x2a008)), Result<void>());
  EXPECT_EQ(phys.read_obj<std::uint32_t>(ga(0x5008)), Result<std::uint32_t>(0x55667788));
  EXPECT_EQ(iova_bitmap->get_and_reset(), std::vector<std::uint64_t>{0});
  EXPECT_EQ(region_bitmap.get_and_reset(), std::vector<std::uint64_t>{0x2});
}

TEST(IommuMemory, RegionBitmapsWithoutAnIovaBitmap) {
  using Tracked = IommuMemory<GuestMemoryMmap<RecordingBitmap>>;
  static_assert(std::same_as<Tracked::slice_type, GuestMemoryMmap<RecordingBitmap>::slice_type>);
  auto phys = physical<RecordingBitmap>({{ga(0x4000), 0x1000}});
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x2a000), ga(0x4800), 0x800, Permissions::Write).has_value());
  Tracked mem(phys, iommu);
  auto& bitmap = phys.find_region(ga(0x4000))->bitmap();
  bitmap.take();
  // The second write hits the cache; both report at region offsets.
  ASSERT_EQ(mem.write_obj(std::uint32_t{1}, ga(0x2a010)), Result<void>());
  ASSERT_EQ(mem.write_obj(std::uint16_t{2}, ga(0x2a7fe)), Result<void>());
  EXPECT_EQ(bitmap.take(), (Marks{{0x810, 4}, {0xffe, 2}}));
  EXPECT_EQ(mem.backend().read_obj<std::uint16_t>(ga(0x4ffe)), Result<std::uint16_t>(2));
}

TEST(IommuMemory, StopOnError) {
  auto mem = two_fragment_memory(std::make_shared<Iommu>(), Permissions::Read);
  auto err = (*mem.get_slices(ga(kVirt - 4), 8, Permissions::Read)).stop_on_error();
  EXPECT_EQ(err.error(), cannot_resolve(kVirt - 4, 4));
  auto ok = (*mem.get_slices(ga(kVirt + kPhysLen - 4), kPhysLen + 8, Permissions::Read)).stop_on_error();
  ASSERT_TRUE(ok.has_value()) << ok.error();
  std::vector<std::size_t> sizes;
  for (const auto& slice : *ok) {
    sizes.push_back(slice.size());
  }
  EXPECT_EQ(sizes, (std::vector<std::size_t>{4, kPhysLen}));
  EXPECT_FALSE(mem.get_slices(ga(kVirt), 0, Permissions::Read)->next().has_value());
}

// ---------------------------------------------------------------- protection of the memory below

// Four regions below, one page each: read-write at 0x0, read-only at 0x1000 (a file holding
// kImageSeed, kImageSeed + 1, ...), write-only at 0x2000 and inaccessible at 0x3000. The
// IOMMU maps IOVA 0x10000 + t to target t ReadWrite over all of them, so only the regions'
// protection can refuse an access.
struct ProtectedMemory {
  static constexpr std::uint64_t kIovaBase = 0x10000;
  static constexpr std::uint8_t kImageSeed = 5;

  std::shared_ptr<const UniqueFd> rom_file =
      std::make_shared<const UniqueFd>(testing::memfd(0x1000));
  Mem mem;

  explicit ProtectedMemory(IommuMode mode) : mem(below(rom_file), iommu(), mode) {}

  // The address at which this memory reaches target `target`.
  [[nodiscard]] GuestAddress at(std::uint64_t target) const {
    return ga(mem.iommu_mode() == IommuMode::Translate ? kIovaBase + target : target);
  }

  static GuestMemoryMmap<> below(const std::shared_ptr<const UniqueFd>& file) {
    const auto image = pattern(0x1000, kImageSeed);
    EXPECT_EQ(::pwrite(file->get(), image.data(), image.size(), 0), 0x1000);
    std::vector<GuestRegionMmap<>> regions;
    auto add = [&](Result<MmapRegion<>> mapping, std::uint64_t base) {
      EXPECT_TRUE(mapping.has_value()) << mapping.error();
      regions.push_back(*GuestRegionMmap<>::create(std::move(*mapping), ga(base)));
    };
    add(MmapRegion<>::create(0x1000), 0x0);
    add(MmapRegionBuilder<>(0x1000)
            .with_file_offset(FileOffset(file, 0))
            .with_protection(Protection::read())
            .build(),
        0x1000);
    add(MmapRegionBuilder<>(0x1000).with_protection(Protection::write()).build(), 0x2000);
    add(MmapRegionBuilder<>(0x1000).with_protection(Protection::none()).build(), 0x3000);
    auto mem = GuestMemoryMmap<>::from_regions(std::move(regions));
    EXPECT_TRUE(mem.has_value()) << mem.error();
    return std::move(*mem);
  }

  static std::shared_ptr<Iommu> iommu() {
    auto iommu = std::make_shared<Iommu>();
    EXPECT_TRUE(iommu->set_mapping(ga(kIovaBase), ga(0x0), 0x4000, Permissions::ReadWrite).has_value());
    return iommu;
  }
};

Error protection_violation(std::uint64_t target, std::uint64_t length, Permissions access) {
  return Error::protection_violation(target, length, access);
}

// The error of an item of a slice sequence, or std::nullopt when it is a view or missing.
template <class T>
std::optional<Error> error_of(const std::optional<Result<T>>& item) {
  if (!item || item->has_value()) {
    return std::nullopt;
  }
  return item->error();
}

// The checks that refuse without touching memory come first, so that code which ignores the
// protection fails them before it writes to the read-only page and dies of SIGSEGV.
void expect_writes_to_read_only_refused(IommuMode mode) {
  ProtectedMemory p(mode);
  const Mem& mem = p.mem;
  const auto image = pattern(0x1000, ProtectedMemory::kImageSeed);
  const auto data = pattern(0x20, 0x40);

  EXPECT_FALSE(mem.check_range(p.at(0x1008), 4, Permissions::Write));
  EXPECT_FALSE(mem.check_range(p.at(0xff0), 0x20, Permissions::Write));
  EXPECT_TRUE(mem.check_range(p.at(0xff0), 0x10, Permissions::Write));
  EXPECT_TRUE(mem.check_range(p.at(0xff0), 0x20, Permissions::Read));
  EXPECT_EQ(mem.get_slice(p.at(0x1008), 4, Permissions::Write).error(),
            protection_violation(0x1008, 4, Permissions::Write));
  ASSERT_TRUE(mem.get_slice(p.at(0x1008), 4, Permissions::Read).has_value());
  auto slices = mem.get_slices(p.at(0xff0), 0x20, Permissions::Write);
  auto first = slices->next();
  ASSERT_TRUE(first && first->has_value());
  EXPECT_EQ((*first)->size(), 0x10u);
  EXPECT_EQ(error_of(slices->next()), protection_violation(0x1000, 0x10, Permissions::Write));
  EXPECT_FALSE(slices->next().has_value());

  // Twice: the second round finds the translations (of reads and of writes) in the cache.
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    EXPECT_EQ(mem.read_obj<std::uint8_t>(p.at(0x1008)), Result<std::uint8_t>(static_cast<std::uint8_t>(ProtectedMemory::kImageSeed + 8)));
    EXPECT_EQ(mem.write_obj(std::uint32_t{7}, p.at(0x1008)).error(),
              protection_violation(0x1008, 4, Permissions::Write));
    EXPECT_EQ(mem.store(std::uint16_t{7}, p.at(0x1ffe), std::memory_order_release).error(),
              protection_violation(0x1ffe, 2, Permissions::Write));
    EXPECT_EQ(mem.write(data, p.at(0x1000)).error(),
              protection_violation(0x1000, 0x20, Permissions::Write));
    EXPECT_EQ(mem.write_slice(data, p.at(0x1000)).error(),
              protection_violation(0x1000, 0x20, Permissions::Write));
    SpanReader reader(data);
    EXPECT_EQ(mem.read_volatile_from(p.at(0x1000), reader, 0x10).error(),
              protection_violation(0x1000, 0x10, Permissions::Write));
    EXPECT_EQ(reader.remaining().size(), 0x20u) << "nothing was taken from the source";
    // From writable memory into the read-only region: the access stops there, as at a hole.
    EXPECT_EQ(mem.write(data, p.at(0xff0)), Result<std::size_t>(0x10));
    EXPECT_EQ(mem.write_slice(data, p.at(0xff0)).error(), Error::partial_buffer(0x20, 0x10));
    EXPECT_EQ(mem.read_volatile_from(p.at(0xff0), reader, 0x20), Result<std::size_t>(0x10));
    EXPECT_FALSE(mem.check_range(p.at(0x1008), 4, Permissions::Write));
    EXPECT_EQ(mem.get_slice(p.at(0x1008), 4, Permissions::Write).error(),
              protection_violation(0x1008, 4, Permissions::Write));
  }

  // Reads see the file, which is unchanged, and the writable part before it took the writes.
  std::vector<std::byte> back(0x20);
  ASSERT_EQ(mem.read_slice(back, p.at(0xff0)), Result<void>());
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 0x10, data.begin()));
  EXPECT_TRUE(std::equal(back.begin() + 0x10, back.end(), image.begin()));
  std::vector<std::byte> in_file(0x1000);
  ASSERT_EQ(::pread(p.rom_file->get(), in_file.data(), in_file.size(), 0), 0x1000);
  EXPECT_EQ(in_file, image);
}

TEST(IommuMemory, WriteToReadOnlyRegionIsAProtectionViolation) {
  expect_writes_to_read_only_refused(IommuMode::Translate);
}

TEST(IommuMemory, WriteToReadOnlyRegionIsAProtectionViolationWithoutTranslation) {
  expect_writes_to_read_only_refused(IommuMode::Passthrough);
}

// The write-only region refuses reads although the CPU would allow them; the inaccessible
// one refuses everything (last: ignoring its protection dies of SIGSEGV).
void expect_reads_of_unreadable_refused(IommuMode mode) {
  ProtectedMemory p(mode);
  const Mem& mem = p.mem;
  std::array<std::byte, 8> buf{};

  EXPECT_FALSE(mem.check_range(p.at(0x2000), 8, Permissions::Read));
  EXPECT_TRUE(mem.check_range(p.at(0x2000), 8, Permissions::Write));
  EXPECT_EQ(mem.get_slice(p.at(0x2000), 8, Permissions::Read).error(),
            protection_violation(0x2000, 8, Permissions::Read));
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    ASSERT_EQ(mem.write_obj(std::uint64_t{0x1122334455667788}, p.at(0x2010)), Result<void>());
    EXPECT_EQ(mem.read_obj<std::uint64_t>(p.at(0x2010)).error(),
              protection_violation(0x2010, 8, Permissions::Read));
    EXPECT_EQ(mem.load<std::uint32_t>(p.at(0x2010), std::memory_order_acquire).error(),
              protection_violation(0x2010, 4, Permissions::Read));
    EXPECT_EQ(mem.read(buf, p.at(0x2010)).error(), protection_violation(0x2010, 8, Permissions::Read));
    std::vector<std::byte> out;
    VectorWriter writer(out);
    EXPECT_EQ(mem.write_volatile_to(p.at(0x2010), writer, 8).error(),
              protection_violation(0x2010, 8, Permissions::Read));
    EXPECT_TRUE(out.empty());
    // A read from the read-only region into the write-only one stops at the boundary.
    EXPECT_EQ(mem.read(buf, p.at(0x1ffc)), Result<std::size_t>(4));
  }

  EXPECT_FALSE(mem.check_range(p.at(0x3000), 1, Permissions::Read));
  EXPECT_FALSE(mem.check_range(p.at(0x3000), 1, Permissions::Write));
  EXPECT_EQ(mem.read_obj<std::uint32_t>(p.at(0x3004)).error(),
            protection_violation(0x3004, 4, Permissions::Read));
  EXPECT_EQ(mem.write_obj(std::uint32_t{1}, p.at(0x3004)).error(),
            protection_violation(0x3004, 4, Permissions::Write));
}

TEST(IommuMemory, ReadOfUnreadableRegionIsAProtectionViolation) {
  expect_reads_of_unreadable_refused(IommuMode::Translate);
}

TEST(IommuMemory, ReadOfUnreadableRegionIsAProtectionViolationWithoutTranslation) {
  expect_reads_of_unreadable_refused(IommuMode::Passthrough);
}

// ---------------------------------------------------------------- moved-from objects

TEST(IommuMemory, MovedFromReturnsErrors) {
  auto phys = physical({{ga(0x0), 0x1000}});
  auto iommu = std::make_shared<Iommu>();
  ASSERT_TRUE(iommu->set_mapping(ga(0x10000), ga(0x0), 0x1000, Permissions::ReadWrite).has_value());
  Mem mem(phys, iommu);
  // The translation is cached before the move.
  ASSERT_EQ(mem.write_obj(std::uint32_t{7}, ga(0x10010)), Result<void>());
  ASSERT_EQ(mem.read_obj<std::uint32_t>(ga(0x10010)), Result<std::uint32_t>(7));

  Mem moved(std::move(mem));
  EXPECT_EQ(moved.read_obj<std::uint32_t>(ga(0x10010)), Result<std::uint32_t>(7));

  // The moved-from object has no Iommu and no memory: every IOVA is without translation.
  auto expect_unresolved = [](const Mem& empty) {
    EXPECT_EQ(empty.iommu(), nullptr);
    EXPECT_EQ(empty.backend().num_regions(), 0u);
    EXPECT_EQ(empty.read_obj<std::uint32_t>(ga(0x10010)).error(), cannot_resolve(0x10010, 4));
    EXPECT_EQ(empty.write_obj(std::uint32_t{1}, ga(0x10010)).error(), cannot_resolve(0x10010, 4));
    EXPECT_EQ(empty.load<std::uint32_t>(ga(0x10010), std::memory_order_relaxed).error(),
              cannot_resolve(0x10010, 4));
    EXPECT_EQ(empty.store(std::uint32_t{1}, ga(0x10010), std::memory_order_relaxed).error(),
              cannot_resolve(0x10010, 4));
    std::array<std::byte, 8> buf{};
    EXPECT_EQ(empty.read(buf, ga(0x10010)).error(), cannot_resolve(0x10010, 8));
    EXPECT_EQ(empty.write(buf, ga(0x10010)).error(), cannot_resolve(0x10010, 8));
    SpanReader reader(buf);
    EXPECT_EQ(empty.read_volatile_from(ga(0x10010), reader, 8).error(), cannot_resolve(0x10010, 8));
    std::vector<std::byte> out;
    VectorWriter writer(out);
    EXPECT_EQ(empty.write_volatile_to(ga(0x10010), writer, 8).error(), cannot_resolve(0x10010, 8));
    EXPECT_EQ(empty.get_slice(ga(0x10010), 8, Permissions::Read).error(),
              cannot_resolve(0x10010, 8));
    EXPECT_FALSE(empty.check_range(ga(0x10010), 8, Permissions::Read));
    EXPECT_EQ(error_of(empty.get_slices(ga(0x10010), 8, Permissions::Read)->next()),
              cannot_resolve(0x10010, 8));
    EXPECT_EQ(empty.read(std::span<std::byte>(), ga(0x10010)), Result<std::size_t>(0));
  };
  expect_unresolved(mem);

  // Move assignment leaves the source in the same state, and the target works.
  Mem assigned(physical({{ga(0x0), 0x1000}}), iommu);
  ASSERT_EQ(assigned.read_obj<std::uint32_t>(ga(0x10010)), Result<std::uint32_t>(0));
  assigned = std::move(moved);
  EXPECT_EQ(assigned.read_obj<std::uint32_t>(ga(0x10010)), Result<std::uint32_t>(7));
  expect_unresolved(moved);

  // A moved-from object can be assigned a new value and copied.
  const Mem copy = mem;
  expect_unresolved(copy);
  mem = assigned;
  EXPECT_EQ(mem.read_obj<std::uint32_t>(ga(0x10010)), Result<std::uint32_t>(7));

  // Without translation, the memory below is gone: the address is in no region.
  Mem untranslated(phys, iommu, IommuMode::Passthrough);
  Mem untranslated_target(std::move(untranslated));
  EXPECT_EQ(untranslated_target.read_obj<std::uint32_t>(ga(0x10)), Result<std::uint32_t>(7));
  EXPECT_EQ(untranslated.read_obj<std::uint32_t>(ga(0x10)).error(),
            Error::invalid_guest_address(ga(0x10)));
  EXPECT_EQ(untranslated.write_obj(std::uint32_t{1}, ga(0x10)).error(),
            Error::invalid_guest_address(ga(0x10)));

  // With an IOVA bitmap too.
  using Tracked = IommuMemory<GuestMemoryMmap<>, RecordingBitmap>;
  Tracked tracked(phys, iommu, std::make_shared<const RecordingBitmap>());
  ASSERT_EQ(tracked.write_obj(std::uint32_t{9}, ga(0x10010)), Result<void>());
  Tracked tracked_target(std::move(tracked));
  EXPECT_EQ(tracked_target.read_obj<std::uint32_t>(ga(0x10010)), Result<std::uint32_t>(9));
  EXPECT_EQ(tracked.write_obj(std::uint32_t{1}, ga(0x10010)).error(), cannot_resolve(0x10010, 4));
  EXPECT_EQ(tracked.read_obj<std::uint32_t>(ga(0x10010)).error(), cannot_resolve(0x10010, 4));
}

// ---------------------------------------------------------------- concurrency

TEST(IommuMemoryRace, TranslationsChangeUnderConcurrentReaders) {
  // Two pages below, filled with 0x11.. and 0x22..; the IOVA page is remapped between them and
  // invalidated while readers run. A read sees one page or the other, or fails; never a mix
  // within one 8-byte read, never another value.
  auto phys = physical({{ga(0x0), 0x2000}});
  ASSERT_TRUE(phys.write_slice(std::vector<std::byte>(0x1000, std::byte{0x11}), ga(0x0)).has_value());
  ASSERT_TRUE(phys.write_slice(std::vector<std::byte>(0x1000, std::byte{0x22}), ga(0x1000)).has_value());
  auto iommu = std::make_shared<Iommu>([](Iommu& self, const IotlbFails& fails, Permissions) {
    for (const IovaRange& miss : fails.misses) {
      EXPECT_TRUE(self.set_mapping(ga(0x10000), ga(0x0), 0x1000, Permissions::Read).has_value())
          << miss.base.raw_value();
    }
  });
  const Mem mem(phys, iommu);
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::atomic<std::uint64_t> reads{0};
  auto reader = [&] {
    started.fetch_add(1);
    for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      auto value = mem.read_obj<std::uint64_t>(ga(0x10000 + (i % 512) * 8));
      if (value) {
        EXPECT_TRUE(*value == 0x1111111111111111u || *value == 0x2222222222222222u) << *value;
      } else {
        EXPECT_EQ(value.error().code(), ErrorCode::CannotResolve);
      }
      reads.fetch_add(1, std::memory_order_relaxed);
    }
  };
  // Waits until the readers have done `n` more reads, so that every mapping below is read
  // while it holds, however the threads are scheduled.
  auto let_readers_read = [&](std::uint64_t n) {
    const std::uint64_t target = reads.load() + n;
    while (reads.load() < target) {
      std::this_thread::yield();
    }
  };
  std::thread a(reader);
  std::thread b(reader);
  while (started.load() < 2) {
    std::this_thread::yield();
  }
  constexpr int kRounds = 300;
  constexpr std::uint64_t kReadsPerRound = 16;
  for (int round = 0; round < kRounds; ++round) {
    // EXPECT, not ASSERT: returning with the readers running would destroy joinable threads.
    EXPECT_TRUE(iommu->set_mapping(ga(0x10000), ga(0x1000 * static_cast<std::uint64_t>(round % 2)),
                                   0x1000, Permissions::Read).has_value());
    let_readers_read(kReadsPerRound);
    if (round % 7 == 0) {
      iommu->invalidate_mapping(ga(0x10000), 0x1000);
    }
  }
  stop = true;
  a.join();
  b.join();
  EXPECT_GE(reads.load(), kRounds * kReadsPerRound);
}

// ---------------------------------------------------------------- randomized model

/// The simplest correct IOMMU: a translation per IOVA byte over a small window, and the bytes
/// of the memory below (with holes).
class Model {
 public:
  static constexpr std::uint64_t kWindow = 0x400;
  static constexpr std::uint64_t kPhysEnd = 0x3000;

  struct Byte {
    std::uint64_t target = 0;
    Permissions permissions = Permissions::No;
    bool mapped = false;
  };

  explicit Model(std::vector<std::pair<std::uint64_t, std::uint64_t>> regions)
      : regions_(std::move(regions)), memory_(kPhysEnd) {}

  void set_mapping(std::uint64_t iova, std::uint64_t target, std::uint64_t length, Permissions p) {
    for (std::uint64_t i = 0; i < length; ++i) {
      map_[iova + i] = Byte{target + i, p, true};
    }
  }
  void invalidate(std::uint64_t iova, std::uint64_t length) {
    for (std::uint64_t i = iova; i < std::min(iova + length, kWindow); ++i) {
      map_[i] = Byte{};
    }
  }
  void invalidate_all() { map_.fill(Byte{}); }

  /// The canonical entries: maximal runs that continue each other.
  std::vector<IotlbEntry> entries() const {
    std::vector<IotlbEntry> out;
    for (std::uint64_t i = 0; i < kWindow; ++i) {
      if (!map_[i].mapped) {
        continue;
      }
      if (i > 0 && continues(i - 1)) {
        ++out.back().length;
      } else {
        out.push_back({ga(i), ga(map_[i].target), 1, map_[i].permissions});
      }
    }
    return out;
  }

  /// For each IOVA, the index in entries() of the entry holding it.
  std::vector<std::optional<std::size_t>> entry_index() const {
    std::vector<std::optional<std::size_t>> out(kWindow);
    const auto all = entries();
    for (std::size_t k = 0; k < all.size(); ++k) {
      for (std::uint64_t i = 0; i < all[k].length; ++i) {
        out[all[k].iova.raw_value() + i] = k;
      }
    }
    return out;
  }

  /// What Iotlb::lookup must answer, derived byte by byte.
  std::expected<std::vector<MappedRange>, IotlbFails> lookup(std::uint64_t iova, std::uint64_t length,
                                                            Permissions access) const {
    const auto index = entry_index();
    std::vector<MappedRange> fragments;
    IotlbFails fails;
    std::optional<std::size_t> run_entry;
    int run_kind = -1;  // 0 fragment, 1 miss, 2 refused
    for (std::uint64_t i = iova; i < iova + length; ++i) {
      const int kind = !map_[i].mapped ? 1 : map_[i].permissions.allow(access) ? 0 : 2;
      const bool extends = kind == run_kind && index[i] == run_entry;
      if (kind == 0) {
        if (extends) {
          ++fragments.back().length;
        } else {
          fragments.push_back({ga(map_[i].target), 1});
        }
      } else {
        auto& list = kind == 1 ? fails.misses : fails.access_fails;
        if (extends) {
          ++list.back().length;
        } else {
          list.push_back({ga(i), 1});
        }
      }
      run_kind = kind;
      run_entry = index[i];
    }
    if (!fails.misses.empty() || !fails.access_fails.empty()) {
      return std::unexpected(fails);
    }
    return fragments;
  }

  /// The bytes an access of `length` bytes at `iova` can reach, or the error of its first.
  Result<std::uint64_t> accessible(std::uint64_t iova, std::uint64_t length, Permissions access) const {
    std::uint64_t n = 0;
    while (n < length && byte_ok(iova + n, access)) {
      ++n;
    }
    if (n > 0) {
      return n;
    }
    const Byte& first = map_[iova];
    if (!first.mapped) {
      std::uint64_t run = 1;
      while (run < length && !map_[iova + run].mapped) {
        ++run;
      }
      return std::unexpected(Error::at(ErrorCode::CannotResolve, iova, run));
    }
    if (!first.permissions.allow(access)) {
      std::uint64_t run = 1;
      while (run < length && continues(iova + run - 1)) {
        ++run;
      }
      return std::unexpected(Error::at(ErrorCode::PermissionDenied, iova, run));
    }
    return std::unexpected(Error::invalid_guest_address(ga(first.target)));
  }

  /// The error of a single access of `size` bytes at `iova` that accessible() allows, if any.
  std::optional<Error> single_access(std::uint64_t iova, std::uint64_t size) const {
    std::uint64_t piece = 1;
    while (piece < size && continues(iova + piece - 1) && region_of(map_[iova + piece].target) ==
                                                              region_of(map_[iova].target)) {
      ++piece;
    }
    if (piece < size) {
      return Error::fragmented(iova, size, piece);
    }
    if (map_[iova].target % size != 0) {
      return Error::misaligned(iova, size);
    }
    return std::nullopt;
  }

  std::uint8_t& memory(std::uint64_t target) { return memory_[target]; }
  std::uint64_t target(std::uint64_t iova) const { return map_[iova].target; }

 private:
  // Byte i + 1 continues byte i's entry.
  bool continues(std::uint64_t i) const {
    if (i + 1 >= kWindow) {
      return false;
    }
    const Byte& a = map_[i];
    const Byte& b = map_[i + 1];
    return a.mapped && b.mapped && b.target == a.target + 1 && a.permissions == b.permissions;
  }

  std::optional<std::size_t> region_of(std::uint64_t target) const {
    for (std::size_t r = 0; r < regions_.size(); ++r) {
      if (target >= regions_[r].first && target < regions_[r].first + regions_[r].second) {
        return r;
      }
    }
    return std::nullopt;
  }

  bool byte_ok(std::uint64_t iova, Permissions access) const {
    const Byte& b = map_[iova];
    return b.mapped && b.permissions.allow(access) && region_of(b.target).has_value();
  }

  std::vector<std::pair<std::uint64_t, std::uint64_t>> regions_;
  std::array<Byte, kWindow + 1> map_{};
  std::vector<std::uint8_t> memory_;
};

TEST(IommuMemoryModel, RandomOperationsAgreeWithTheModel) {
  // Regions [0, 0x1000) and [0x1000, 0x2000) are adjacent (accesses cross them); past 0x2000
  // targets are a hole. The IOVA window is small so that mappings collide constantly.
  Model model({{0x0, 0x1000}, {0x1000, 0x1000}});
  auto phys = physical({{ga(0x0), 0x1000}, {ga(0x1000), 0x1000}});
  auto iommu = std::make_shared<Iommu>();
  const Mem mem(phys, iommu);
  std::mt19937_64 rng(0x10a11u);
  auto below = [&](std::uint64_t n) { return rng() % n; };
  const std::array kAccesses{Permissions::Read, Permissions::Write, Permissions::ReadWrite,
                             Permissions::No};

  for (int step = 0; step < 6000; ++step) {
    SCOPED_TRACE(step);
    const std::uint64_t op = below(100);
    if (op < 25) {
      const std::uint64_t iova = below(Model::kWindow);
      const std::uint64_t length = 1 + below(std::min<std::uint64_t>(0x80, Model::kWindow - iova));
      // Targets mostly continue the last mapping or land in memory; some run into the hole.
      const std::uint64_t target = below(3) == 0 && iova > 0 ? model.target(iova - 1) + 1
                                                             : below(Model::kPhysEnd - length);
      const Permissions p = kAccesses[below(4)];
      ASSERT_TRUE(iommu->set_mapping(ga(iova), ga(target), length, p).has_value());
      model.set_mapping(iova, target, length, p);
    } else if (op < 35) {
      const std::uint64_t iova = below(Model::kWindow);
      const std::uint64_t length = 1 + below(0x40);
      iommu->invalidate_mapping(ga(iova), length);
      model.invalidate(iova, length);
    } else if (op < 36) {
      iommu->invalidate_all();
      model.invalidate_all();
    } else if (op < 50) {
      const std::uint64_t iova = below(Model::kWindow);
      const std::uint64_t length = below(Model::kWindow - iova + 1);
      const Permissions access = kAccesses[below(4)];
      ASSERT_EQ(iommu->iotlb_snapshot().lookup(ga(iova), length, access),
                model.lookup(iova, length, access));
    } else if (op < 75) {
      const std::uint64_t iova = below(Model::kWindow);
      const std::uint64_t length = 1 + below(std::min<std::uint64_t>(0x60, Model::kWindow - iova));
      std::vector<std::byte> buf(length);
      const auto expected = model.accessible(iova, length, Permissions::Read);
      auto got = mem.read(buf, ga(iova));
      ASSERT_EQ(got, (expected ? Result<std::size_t>(*expected) : Result<std::size_t>(std::unexpect, expected.error())));
      for (std::uint64_t i = 0; got && i < *got; ++i) {
        ASSERT_EQ(std::to_integer<std::uint8_t>(buf[i]), model.memory(model.target(iova + i))) << i;
      }
    } else if (op < 95) {
      const std::uint64_t iova = below(Model::kWindow);
      const std::uint64_t length = 1 + below(std::min<std::uint64_t>(0x60, Model::kWindow - iova));
      const auto data = pattern(length, static_cast<std::uint8_t>(step));
      const auto expected = model.accessible(iova, length, Permissions::Write);
      auto got = mem.write_slice(data, ga(iova));
      if (!expected) {
        ASSERT_EQ(got.error(), expected.error());
      } else if (*expected < length) {
        ASSERT_EQ(got.error(), Error::partial_buffer(length, *expected));
      } else {
        ASSERT_TRUE(got.has_value()) << got.error();
      }
      for (std::uint64_t i = 0; expected && i < *expected; ++i) {
        model.memory(model.target(iova + i)) = std::to_integer<std::uint8_t>(data[i]);
      }
    } else {
      const std::uint64_t iova = below(Model::kWindow - 4);
      const auto expected = model.accessible(iova, 4, Permissions::Read);
      auto got = mem.load<std::uint32_t>(ga(iova), std::memory_order_acquire);
      if (!expected) {
        ASSERT_EQ(got.error(), expected.error());
      } else if (auto error = model.single_access(iova, 4)) {
        ASSERT_FALSE(got.has_value()) << *got;
        ASSERT_EQ(got.error(), *error);
      } else {
        std::uint32_t value = 0;
        for (std::uint64_t i = 4; i-- > 0;) {
          value = value << 8 | model.memory(model.target(iova + i));
        }
        ASSERT_EQ(got, Result<std::uint32_t>(value));
      }
    }
    if (step % 500 == 0) {
      const Iotlb snapshot = iommu->iotlb_snapshot();
      ASSERT_EQ(std::vector<IotlbEntry>(snapshot.entries().begin(), snapshot.entries().end()),
                model.entries());
      std::vector<std::byte> all(0x2000);
      ASSERT_TRUE(phys.read_slice(all, ga(0)).has_value());
      for (std::uint64_t t = 0; t < 0x2000; ++t) {
        ASSERT_EQ(std::to_integer<std::uint8_t>(all[t]), model.memory(t)) << t;
      }
    }
  }
}

}  // namespace
}  // namespace guestmem
