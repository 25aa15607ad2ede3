// fuzz_iommu: the IOTLB, the Iommu with its miss handler, and IommuMemory accesses in both
// modes, against a model of the IOTLB, the permissions and the memory below.
//
// Each input builds up to three regions of memory below the IOMMU (read-write, read-only or
// write-only, adjacent or not; untracked or tracked by AtomicBitmap, which take different
// paths through the translation cache) and an Iommu with one of four miss handlers: none,
// one that does nothing, one that maps what missed, and one that also grants ReadWrite to
// what was refused. A stream of operations follows: set_mapping (including ranges that
// overflow 2^64 on either side), invalidate_mapping, invalidate_all, Iommu::translate,
// Iotlb lookups on a snapshot, entry_at, switching between Translate and Passthrough, moving
// the IommuMemory away and back, and IOVA accesses (read, write, read_slice, write_slice,
// read_obj, write_obj, load, store, get_slice, check_range).
//
// The model keeps the IOTLB as a sorted list of entries, rebuilt in canonical form (maximal
// runs that continue each other) after every change, the memory below as byte vectors with
// protections and dirty pages, and the handler's effects. It predicts the entries, every
// translation and failure list, each call the handler receives, whether the IOMMU's
// generation advances, and for accesses the exact count, error and fields, data and dirty
// bits.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "fuzz_common.hpp"
#include "guestmem/guestmem.hpp"

namespace {

using guestmem::AtomicBitmap;
using guestmem::Error;
using guestmem::ErrorCode;
using guestmem::GuestAddress;
using guestmem::Iommu;
using guestmem::IommuMode;
using guestmem::IotlbEntry;
using guestmem::IotlbFails;
using guestmem::IovaRange;
using guestmem::MappedRange;
using guestmem::NoBitmap;
using guestmem::Permissions;
using guestmem::Protection;
using guestmem::Result;
using guestmem::fuzz::draw_protection;
using guestmem::fuzz::Input;

constexpr std::uint64_t kTop = ~std::uint64_t{0};
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kTargetBase = 0x100000;
constexpr std::size_t kMaxOps = 48;
constexpr std::size_t kMaxBuffer = 0x5000;
// How far the mapping handler maps past the start of a miss (it never maps more).
constexpr std::uint64_t kHandlerSpan = 0x3000;

std::uint64_t access_bits(Permissions access) {
  return (access.has_read() ? 1U : 0U) | (access.has_write() ? 2U : 0U);
}

struct Expected {
  ErrorCode code;
  std::uint64_t address;
  std::uint64_t length;
  std::uint64_t expected;
  std::uint64_t completed;
};

void check_error(const Error& e, const Expected& want, const char* what) {
  GUESTMEM_FUZZ_CHECK(e.code() == want.code && e.address() == want.address &&
                          e.length() == want.length && e.expected() == want.expected &&
                          e.completed() == want.completed,
                      "%s: error %d (address %#llx length %llu expected %llu completed %llu); "
                      "model %d (%#llx, %llu, %llu, %llu)",
                      what, static_cast<int>(e.code()),
                      static_cast<unsigned long long>(e.address()),
                      static_cast<unsigned long long>(e.length()),
                      static_cast<unsigned long long>(e.expected()),
                      static_cast<unsigned long long>(e.completed()), static_cast<int>(want.code),
                      static_cast<unsigned long long>(want.address),
                      static_cast<unsigned long long>(want.length),
                      static_cast<unsigned long long>(want.expected),
                      static_cast<unsigned long long>(want.completed));
}

// ------------------------------------------------------------------------------------------
// The IOTLB model.

struct Entry {
  std::uint64_t iova;
  std::uint64_t target;
  std::uint64_t len;
  Permissions perm;
  [[nodiscard]] std::uint64_t end() const { return iova + len; }
};

class ModelIotlb {
 public:
  std::vector<Entry> entries;

  // Removes [start, end) from every entry; returns whether anything was removed.
  bool remove(std::uint64_t start, std::uint64_t end) {
    std::vector<Entry> kept;
    bool removed = false;
    for (const Entry& e : entries) {
      if (e.iova >= end || e.end() <= start) {
        kept.push_back(e);
        continue;
      }
      removed = true;
      if (e.iova < start) {
        kept.push_back(Entry{e.iova, e.target, start - e.iova, e.perm});
      }
      if (e.end() > end) {
        kept.push_back(Entry{end, e.target + (end - e.iova), e.end() - end, e.perm});
      }
    }
    entries = std::move(kept);
    return removed;
  }

  // Sorts and merges entries that continue each other (adjacent in IOVA and target space,
  // same permissions): the canonical form.
  void canonicalize() {
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return a.iova < b.iova; });
    std::vector<Entry> out;
    for (const Entry& e : entries) {
      if (!out.empty()) {
        Entry& prev = out.back();
        if (prev.end() == e.iova && prev.target + prev.len == e.target && prev.perm == e.perm) {
          prev.len += e.len;
          continue;
        }
      }
      out.push_back(e);
    }
    entries = std::move(out);
  }

  // set_mapping: the error, or whether an existing entry changed (part of it replaced, or
  // merged with the new range so that it reaches further).
  Result<bool> set(std::uint64_t iova, std::uint64_t target, std::uint64_t len, Permissions perm) {
    if (len == 0) {
      return false;
    }
    if (len > kTop - iova) {
      return std::unexpected(Error::guest_address_overflow(iova, len));
    }
    if (len > kTop - target) {
      return std::unexpected(Error::guest_address_overflow(target, len));
    }
    const bool replaced = remove(iova, iova + len);
    entries.push_back(Entry{iova, target, len, perm});
    canonicalize();
    const Entry* merged = entry_at(iova);
    return replaced || merged->iova < iova || merged->end() > iova + len;
  }

  bool invalidate(std::uint64_t iova, std::uint64_t len) {
    if (len == 0) {
      return false;
    }
    const std::uint64_t end = len > kTop - iova ? kTop : iova + len;
    return remove(iova, end);
  }

  [[nodiscard]] const Entry* entry_at(std::uint64_t x) const {
    for (const Entry& e : entries) {
      if (x >= e.iova && x - e.iova < e.len) {
        return &e;
      }
    }
    return nullptr;
  }

  // Iotlb::lookup: the target ranges, or every part that misses or is refused.
  [[nodiscard]] std::pair<std::vector<MappedRange>, IotlbFails> lookup(std::uint64_t iova,
                                                                      std::uint64_t length,
                                                                      Permissions access) const {
    std::vector<MappedRange> ranges;
    IotlbFails fails;
    std::uint64_t cursor = iova;
    std::uint64_t left = length;
    while (left > 0) {
      // The next entry that ends after the cursor.
      const Entry* next = nullptr;
      for (const Entry& e : entries) {
        if (e.end() > cursor) {
          next = &e;
          break;
        }
      }
      if (next == nullptr) {
        fails.misses.push_back(IovaRange{GuestAddress{cursor}, left});
        break;
      }
      if (next->iova > cursor) {
        const std::uint64_t gap = std::min(left, next->iova - cursor);
        fails.misses.push_back(IovaRange{GuestAddress{cursor}, gap});
        left -= gap;
        cursor += gap;
        if (left == 0) {
          break;
        }
      }
      const std::uint64_t n = std::min(left, next->end() - cursor);
      if (next->perm.allow(access)) {
        ranges.push_back(MappedRange{GuestAddress{next->target + (cursor - next->iova)}, n});
      } else {
        fails.access_fails.push_back(IovaRange{GuestAddress{cursor}, n});
      }
      left -= n;
      cursor += n;
    }
    return {ranges, fails};
  }

  // The error for [x, x + length) when x does not translate.
  [[nodiscard]] Expected failure(std::uint64_t x, std::uint64_t length) const {
    if (const Entry* e = entry_at(x)) {
      return {ErrorCode::PermissionDenied, x, std::min(length, e->end() - x), 0, 0};
    }
    std::uint64_t unmapped = length;
    for (const Entry& e : entries) {
      if (e.iova > x) {
        unmapped = std::min(unmapped, e.iova - x);
        break;
      }
    }
    return {ErrorCode::CannotResolve, x, unmapped, 0, 0};
  }
};

bool fails_empty(const IotlbFails& f) { return f.misses.empty() && f.access_fails.empty(); }

// The handler's policy, applied the same way to the real Iommu and to the model.
enum class Policy : std::uint8_t { None, Nothing, MapMisses, MapAndGrant };

struct HandlerCall {
  IotlbFails fails;
  Permissions access;
  bool operator==(const HandlerCall&) const = default;
};

// What the handler does with the failed parts: map each miss (at most kHandlerSpan bytes of
// it) at target = IOVA + delta with `perm`, and for MapAndGrant also remap each refused part
// ReadWrite to its current target. `set` is the real Iommu's set_mapping or the model's.
template <class Set, class EntryAt>
void handle(Policy policy, std::uint64_t delta, Permissions perm, const IotlbFails& fails,
            Set&& set, EntryAt&& entry_at) {
  if (policy == Policy::None || policy == Policy::Nothing) {
    return;
  }
  for (const IovaRange& miss : fails.misses) {
    const std::uint64_t base = miss.base.raw_value();
    set(base, base + delta, std::min(miss.length, kHandlerSpan), perm);
  }
  if (policy == Policy::MapAndGrant) {
    for (const IovaRange& refused : fails.access_fails) {
      const std::uint64_t base = refused.base.raw_value();
      if (auto e = entry_at(base)) {
        set(base, e->first + (base - e->second), refused.length, Permissions::ReadWrite);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// The memory model.

struct ModelRegion {
  std::uint64_t start;
  std::uint64_t len;
  Permissions allowed;
  std::vector<std::uint8_t> data;
  std::vector<bool> dirty;
};

template <class M>
class Session {
  static constexpr bool kTracked = std::is_same_v<M, guestmem::GuestMemoryMmap<AtomicBitmap>>;
  using RegionType = typename M::region_type;
  using BitmapType = typename RegionType::bitmap_type;
  using Mem = guestmem::IommuMemory<M>;

 public:
  explicit Session(Input& in) : in_(in) {}

  void run() {
    if (!build()) {
      return;
    }
    for (std::size_t op = 0; op < kMaxOps && !in_.empty(); ++op) {
      step();
      check_handler_log();
    }
    check_entries();
    if constexpr (kTracked) {
      check_dirty();
    }
  }

 private:
  bool build() {
    const std::size_t n = 1 + in_.below(3);
    std::vector<RegionType> regions;
    std::uint64_t end = kTargetBase;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t len = in_.flag() ? kPage * (1 + in_.below(3)) : 1 + in_.below(3 * kPage);
      const std::uint64_t start = in_.flag() ? end : end + 1 + in_.below(2 * kPage);
      const auto [prot, allowed] = draw_protection(in_, 5);
      auto mapping = guestmem::MmapRegionBuilder<BitmapType>(len).with_protection(prot).build();
      GUESTMEM_FUZZ_CHECK(mapping.has_value(), "mapping failed");
      auto region = RegionType::create(std::move(*mapping), GuestAddress{start});
      GUESTMEM_FUZZ_CHECK(region.has_value(), "region failed");
      regions.push_back(std::move(*region));
      model_regions_.push_back(ModelRegion{start, len, allowed, std::vector<std::uint8_t>(len),
                                           std::vector<bool>((len + kPage - 1) / kPage)});
      end = start + len;
    }
    auto memory = M::from_regions(std::move(regions));
    GUESTMEM_FUZZ_CHECK(memory.has_value(), "from_regions failed");
    policy_ = static_cast<Policy>(in_.below(4));
    handler_delta_ = kTargetBase - 0x10000 + in_.below(4) * 0x800;
    handler_perm_ = in_.flag() ? Permissions::ReadWrite : Permissions::Read;
    Iommu::MissHandler handler;
    if (policy_ != Policy::None) {
      handler = [this](Iommu& iommu, const IotlbFails& fails, Permissions access) {
        handler_log_.push_back(HandlerCall{fails, access});
        GUESTMEM_FUZZ_TRACE("  handler: %zu misses, %zu refused", fails.misses.size(),
                            fails.access_fails.size());
        handle(
            policy_, handler_delta_, handler_perm_, fails,
            [&](std::uint64_t iova, std::uint64_t target, std::uint64_t len, Permissions perm) {
              (void)iommu.set_mapping(GuestAddress{iova}, GuestAddress{target}, len, perm);
            },
            [&](std::uint64_t x) -> std::optional<std::pair<std::uint64_t, std::uint64_t>> {
              auto e = iommu.entry_at(GuestAddress{x});
              if (!e) {
                return std::nullopt;
              }
              return std::pair{e->target.raw_value(), e->iova.raw_value()};
            });
      };
    }
    iommu_ = std::make_shared<Iommu>(std::move(handler));
    mode_ = in_.below(4) == 0 ? IommuMode::Passthrough : IommuMode::Translate;
    mem_.emplace(std::move(*memory), iommu_, mode_);
    for (const ModelRegion& r : model_regions_) {
      GUESTMEM_FUZZ_TRACE("region [%#llx, +%#llx) access %d", static_cast<unsigned long long>(r.start),
                          static_cast<unsigned long long>(r.len),
                          static_cast<int>(access_bits(r.allowed)));
    }
    GUESTMEM_FUZZ_TRACE("policy %d delta %#llx", static_cast<int>(policy_),
                        static_cast<unsigned long long>(handler_delta_));
    generation_ = iommu_->generation();
    return true;
  }

  // ---- the model's side of the handler and of translation

  void model_handle(const IotlbFails& fails, Permissions access) {
    if (policy_ == Policy::None) {
      return;
    }
    expected_log_.push_back(HandlerCall{fails, access});
    handle(
        policy_, handler_delta_, handler_perm_, fails,
        [&](std::uint64_t iova, std::uint64_t target, std::uint64_t len, Permissions perm) {
          auto changed = iotlb_.set(iova, target, len, perm);
          if (changed && *changed) {
            generation_moves_ = true;
          }
        },
        [&](std::uint64_t x) -> std::optional<std::pair<std::uint64_t, std::uint64_t>> {
          const Entry* e = iotlb_.entry_at(x);
          if (e == nullptr) {
            return std::nullopt;
          }
          return std::pair{e->target, e->iova};
        });
  }

  void check_handler_log() {
    GUESTMEM_FUZZ_CHECK(handler_log_ == expected_log_,
                        "the miss handler was called %zu times, the model expects %zu (or with "
                        "other failed parts)",
                        handler_log_.size(), expected_log_.size());
    handler_log_.clear();
    expected_log_.clear();
    const std::uint64_t now = iommu_->generation();
    GUESTMEM_FUZZ_CHECK(now >= generation_, "the generation went back");
    // It advances exactly when an existing entry was removed, cut, replaced or grown: a
    // missed advance leaves stale or too short translations in caches, a needless one only
    // costs cache misses but is still not what Iommu documents.
    GUESTMEM_FUZZ_CHECK((now > generation_) == generation_moves_,
                        "generation %llu -> %llu, but the model %s a changed entry",
                        static_cast<unsigned long long>(generation_),
                        static_cast<unsigned long long>(now),
                        generation_moves_ ? "saw" : "did not see");
    generation_ = now;
    generation_moves_ = false;
  }

  // Iommu::translate_entry for the byte at x of an access with `count` bytes left: the
  // entry, after asking the handler once when x does not translate; or the error.
  std::optional<Expected> translate_at(std::uint64_t x, std::uint64_t count, Permissions access,
                                       const Entry** out) {
    const std::uint64_t length = std::max<std::uint64_t>(count, 1);
    const Entry* e = iotlb_.entry_at(x);
    if (e == nullptr || !e->perm.allow(access)) {
      if (policy_ != Policy::None) {
        model_handle(iotlb_.lookup(x, length, access).second, access);
      }
      e = iotlb_.entry_at(x);
      if (e == nullptr || !e->perm.allow(access)) {
        return iotlb_.failure(x, length);
      }
    }
    *out = e;
    return std::nullopt;
  }

  ModelRegion* find(std::uint64_t a) {
    for (ModelRegion& r : model_regions_) {
      if (a >= r.start && a - r.start < r.len) {
        return &r;
      }
    }
    return nullptr;
  }

  struct Piece {
    ModelRegion* region;
    std::uint64_t offset;
    std::uint64_t size;
  };
  struct Walk {
    std::vector<Piece> pieces;
    std::uint64_t done = 0;
    std::optional<Expected> first_error;
  };

  // The pieces of an access of `count` bytes at `addr`, in the current mode, running the
  // handler where the library would.
  Walk walk(std::uint64_t addr, std::uint64_t count, Permissions access, bool moved = false) {
    Walk w;
    while (w.done < count) {
      const std::uint64_t x = addr + w.done;
      const std::uint64_t left = count - w.done;
      std::uint64_t target = x;
      std::uint64_t avail = left;
      std::optional<Expected> err;
      if (moved) {
        err = mode_ == IommuMode::Translate
                  ? Expected{ErrorCode::CannotResolve, x, std::max<std::uint64_t>(left, 1), 0, 0}
                  : Expected{ErrorCode::InvalidGuestAddress, x, 0, 0, 0};
      } else if (mode_ == IommuMode::Translate) {
        const Entry* e = nullptr;
        err = translate_at(x, left, access, &e);
        if (!err) {
          target = e->target + (x - e->iova);
          avail = std::min(left, e->end() - x);
        }
      }
      ModelRegion* r = nullptr;
      if (!err) {
        r = find(target);
        if (r == nullptr) {
          err = Expected{ErrorCode::InvalidGuestAddress, target, 0, 0, 0};
        } else if (!r->allowed.allow(access)) {
          err = Expected{ErrorCode::ProtectionViolation, target, left, access_bits(access), 0};
        }
      }
      if (err) {
        if (w.done == 0) {
          w.first_error = err;
        }
        break;
      }
      const std::uint64_t off = target - r->start;
      const std::uint64_t n = std::min(avail, r->len - off);
      w.pieces.push_back(Piece{r, off, n});
      w.done += n;
    }
    return w;
  }

  void model_write(const Walk& w, std::span<const std::uint8_t> data) {
    std::size_t done = 0;
    for (const Piece& p : w.pieces) {
      std::memcpy(p.region->data.data() + p.offset, data.data() + done, p.size);
      for (std::uint64_t page = p.offset / kPage; page <= (p.offset + p.size - 1) / kPage; ++page) {
        p.region->dirty[page] = true;
      }
      done += p.size;
    }
  }
  static void model_read(const Walk& w, std::span<std::uint8_t> out) {
    std::size_t done = 0;
    for (const Piece& p : w.pieces) {
      std::memcpy(out.data() + done, p.region->data.data() + p.offset, p.size);
      done += p.size;
    }
  }

  // ---- input decoding

  std::uint64_t iova() {
    switch (in_.below(6)) {
      case 0:
      case 1:
        if (!iotlb_.entries.empty()) {
          const Entry& e = iotlb_.entries[in_.below(iotlb_.entries.size())];
          return (in_.flag() ? e.iova : e.end()) + static_cast<std::uint64_t>(in_.delta(8));
        }
        return 0x10000 + in_.below(0x8000);
      case 2:
      case 3:
        return 0x10000 + in_.below(0x8000);
      case 4:
        return kTop - in_.below(0x2000);
      default:
        return in_.u64();
    }
  }
  std::uint64_t target() {
    switch (in_.below(4)) {
      case 0:
      case 1: {
        const ModelRegion& r = model_regions_[in_.below(model_regions_.size())];
        return (in_.flag() ? r.start : r.start + r.len) + static_cast<std::uint64_t>(in_.delta(24));
      }
      case 2:
        return kTargetBase + in_.below(0x6000);
      default:
        return in_.flag() ? kTop - in_.below(0x2000) : in_.u64();
    }
  }
  std::uint64_t map_length() {
    switch (in_.below(5)) {
      case 0:
        return in_.below(0x20);
      case 1:
        return kPage * in_.below(3);
      case 2:
        return kTop - in_.below(0x10);
      default:
        return 1 + in_.below(0x4000);
    }
  }
  std::size_t buffer_length() {
    return in_.flag() ? in_.below(17) : in_.below(kMaxBuffer + 1);
  }
  Permissions perm() {
    static constexpr Permissions kAll[] = {Permissions::No, Permissions::Read, Permissions::Write,
                                           Permissions::ReadWrite};
    return kAll[in_.below(4)];
  }
  Permissions access() {
    static constexpr Permissions kAll[] = {Permissions::Read, Permissions::Write,
                                           Permissions::ReadWrite};
    return kAll[in_.below(3)];
  }

  // ---- operations

  void step() {
    const unsigned op = static_cast<unsigned>(in_.below(18));
    GUESTMEM_FUZZ_TRACE("op %u (mode %s)", op, mode_ == IommuMode::Translate ? "translate" : "passthrough");
    switch (op) {
      case 0:
      case 1:
      case 2:
        set_mapping();
        break;
      case 3: {
        const std::uint64_t at = iova();
        const std::uint64_t len = map_length();
        iommu_->invalidate_mapping(GuestAddress{at}, len);
        if (iotlb_.invalidate(at, len)) {
          generation_moves_ = true;
        }
        check_entries();
        break;
      }
      case 4:
        if (in_.below(4) == 0) {
          iommu_->invalidate_all();
          if (!iotlb_.entries.empty()) {
            generation_moves_ = true;
          }
          iotlb_.entries.clear();
        }
        break;
      case 5:
        translate();
        break;
      case 6:
        snapshot_lookup();
        break;
      case 7:
        mode_ = mode_ == IommuMode::Translate ? IommuMode::Passthrough : IommuMode::Translate;
        mem_->set_iommu_mode(mode_);
        GUESTMEM_FUZZ_CHECK(mem_->iommu_mode() == mode_ &&
                                (mem_->physical_memory() == nullptr) ==
                                    (mode_ == IommuMode::Translate),
                            "set_iommu_mode");
        break;
      case 8:
        move_away_and_back();
        break;
      case 9:
      case 10:
        read(in_.flag());
        break;
      case 11:
      case 12:
        write(in_.flag());
        break;
      case 13:
        load_store();
        break;
      case 14:
        get_slice();
        break;
      case 15:
        check_range();
        break;
      case 16:
        objects();
        break;
      default:
        check_entries();
        break;
    }
  }

  void set_mapping() {
    const std::uint64_t at = iova();
    const std::uint64_t to = target();
    const std::uint64_t len = map_length();
    const Permissions p = perm();
    GUESTMEM_FUZZ_TRACE("set_mapping(%#llx, %#llx, %#llx, access %d)", static_cast<unsigned long long>(at),
                        static_cast<unsigned long long>(to), static_cast<unsigned long long>(len),
                        static_cast<int>(access_bits(p)));
    auto got = iommu_->set_mapping(GuestAddress{at}, GuestAddress{to}, len, p);
    auto want = iotlb_.set(at, to, len, p);
    if (!want) {
      GUESTMEM_FUZZ_CHECK(!got, "set_mapping(%#llx, %#llx, %#llx) succeeded; model: overflow",
                          static_cast<unsigned long long>(at), static_cast<unsigned long long>(to),
                          static_cast<unsigned long long>(len));
      check_error(got.error(),
                  {ErrorCode::GuestAddressOverflow, want.error().address(), len, 0, 0},
                  "set_mapping");
    } else {
      GUESTMEM_FUZZ_CHECK(got.has_value(), "set_mapping failed with %d",
                          static_cast<int>(got.error().code()));
      if (*want) {
        generation_moves_ = true;
      }
    }
    check_entries();
  }

  void check_entries() {
    const guestmem::Iotlb snapshot = iommu_->iotlb_snapshot();
    const auto entries = snapshot.entries();
    GUESTMEM_FUZZ_CHECK(entries.size() == iotlb_.entries.size(), "IOTLB has %zu entries, model %zu",
                        entries.size(), iotlb_.entries.size());
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const Entry& e = iotlb_.entries[i];
      GUESTMEM_FUZZ_CHECK(entries[i] == (IotlbEntry{GuestAddress{e.iova}, GuestAddress{e.target},
                                                    e.len, e.perm}),
                          "IOTLB entry %zu: [%#llx, +%#llx) -> %#llx, model [%#llx, +%#llx) -> "
                          "%#llx",
                          i, static_cast<unsigned long long>(entries[i].iova.raw_value()),
                          static_cast<unsigned long long>(entries[i].length),
                          static_cast<unsigned long long>(entries[i].target.raw_value()),
                          static_cast<unsigned long long>(e.iova),
                          static_cast<unsigned long long>(e.len),
                          static_cast<unsigned long long>(e.target));
    }
  }

  // Iommu::translate: one lookup, the handler once on failure, a second lookup.
  void translate() {
    const std::uint64_t at = iova();
    const std::uint64_t len = in_.flag() ? map_length() : buffer_length();
    const Permissions a = access();
    auto got = iommu_->translate(GuestAddress{at}, len, a);
    auto [ranges, fails] = iotlb_.lookup(at, len, a);
    if (!fails_empty(fails)) {
      model_handle(fails, a);
      std::tie(ranges, fails) = iotlb_.lookup(at, len, a);
    }
    if (fails_empty(fails)) {
      GUESTMEM_FUZZ_CHECK(got && *got == ranges, "translate(%#llx, %#llx): ranges differ",
                          static_cast<unsigned long long>(at), static_cast<unsigned long long>(len));
      return;
    }
    GUESTMEM_FUZZ_CHECK(!got, "translate succeeded; model: failure");
    const IovaRange* miss = fails.misses.empty() ? nullptr : &fails.misses.front();
    const IovaRange* refused = fails.access_fails.empty() ? nullptr : &fails.access_fails.front();
    if (refused != nullptr && (miss == nullptr || refused->base < miss->base)) {
      check_error(got.error(),
                  {ErrorCode::PermissionDenied, refused->base.raw_value(), refused->length, 0, 0},
                  "translate");
    } else {
      check_error(got.error(),
                  {ErrorCode::CannotResolve, miss->base.raw_value(), miss->length, 0, 0},
                  "translate");
    }
  }

  // Iotlb::lookup and entry_at on a snapshot, without the handler.
  void snapshot_lookup() {
    const std::uint64_t at = iova();
    const std::uint64_t len = in_.flag() ? map_length() : buffer_length();
    const Permissions a = access();
    const guestmem::Iotlb snapshot = iommu_->iotlb_snapshot();
    auto got = snapshot.lookup(GuestAddress{at}, len, a);
    const auto [ranges, fails] = iotlb_.lookup(at, len, a);
    if (fails_empty(fails)) {
      GUESTMEM_FUZZ_CHECK(got && *got == ranges, "Iotlb::lookup ranges differ");
    } else {
      GUESTMEM_FUZZ_CHECK(!got && got.error() == fails, "Iotlb::lookup failures differ");
    }
    const auto entry = iommu_->entry_at(GuestAddress{at});
    const Entry* want = iotlb_.entry_at(at);
    GUESTMEM_FUZZ_CHECK(entry.has_value() == (want != nullptr) &&
                            (!entry || (entry->iova.raw_value() == want->iova &&
                                        entry->length == want->len)),
                        "entry_at(%#llx)", static_cast<unsigned long long>(at));
  }

  // A move leaves the source usable: every access fails as an IOVA without translation
  // (Translate) or an address in no region (Passthrough). The value moves back after.
  void move_away_and_back() {
    Mem moved(std::move(*mem_));
    GUESTMEM_FUZZ_CHECK(mem_->iommu() == nullptr && moved.iommu() == iommu_, "move");
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const std::size_t len = 1 + in_.below(16);
    std::vector<std::byte> buf(len);
    auto got = mem_->read(buf, GuestAddress{addr});
    const Walk w = walk(addr, len, Permissions::Read, /*moved=*/true);
    GUESTMEM_FUZZ_CHECK(!got, "a read through a moved-from IommuMemory succeeded");
    check_error(got.error(), *w.first_error, "moved-from read");
    if (in_.flag()) {
      *mem_ = std::move(moved);
    } else {
      mem_.emplace(std::move(moved));
    }
    GUESTMEM_FUZZ_CHECK(mem_->iommu() == iommu_ && mem_->iommu_mode() == mode_, "move back");
  }

  void read(bool slice) {
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const std::size_t len = buffer_length();
    std::vector<std::uint8_t> buf(len, 0x5a);
    auto bytes = std::as_writable_bytes(std::span(buf));
    const Walk w = len == 0 ? Walk{} : walk(addr, len, Permissions::Read);
    std::vector<std::uint8_t> want(len, 0x5a);
    model_read(w, want);
    if (slice) {
      auto got = mem_->read_slice(bytes, GuestAddress{addr});
      check_all_or_nothing(got, w, len, "read_slice");
    } else {
      auto got = mem_->read(bytes, GuestAddress{addr});
      if (w.first_error) {
        GUESTMEM_FUZZ_CHECK(!got, "read succeeded; model: error");
        check_error(got.error(), *w.first_error, "read");
        return;
      }
      GUESTMEM_FUZZ_CHECK(got && *got == w.done, "read of %zu at %#llx: got %llu, model %llu", len,
                          static_cast<unsigned long long>(addr),
                          got ? static_cast<unsigned long long>(*got) : ~0ULL,
                          static_cast<unsigned long long>(w.done));
    }
    GUESTMEM_FUZZ_CHECK(buf == want, "read at %#llx: data differs from the model",
                        static_cast<unsigned long long>(addr));
  }

  static void check_all_or_nothing(const Result<void>& got, const Walk& w, std::uint64_t len,
                                   const char* what) {
    if (w.first_error) {
      GUESTMEM_FUZZ_CHECK(!got, "%s succeeded; model: error", what);
      check_error(got.error(), *w.first_error, what);
    } else if (w.done < len) {
      GUESTMEM_FUZZ_CHECK(!got, "%s succeeded; model: partial", what);
      check_error(got.error(), {ErrorCode::PartialBuffer, 0, 0, len, w.done}, what);
    } else {
      GUESTMEM_FUZZ_CHECK(got.has_value(), "%s failed with %d", what,
                          static_cast<int>(got.error().code()));
    }
  }

  void write(bool slice) {
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const std::size_t len = buffer_length();
    const std::vector<std::byte> data = guestmem::fuzz::pattern(in_.u64(), len);
    const Walk w = len == 0 ? Walk{} : walk(addr, len, Permissions::Write);
    model_write(w, std::span(reinterpret_cast<const std::uint8_t*>(data.data()), len));
    if (slice) {
      auto got = mem_->write_slice(data, GuestAddress{addr});
      check_all_or_nothing(got, w, len, "write_slice");
    } else {
      auto got = mem_->write(data, GuestAddress{addr});
      if (w.first_error) {
        GUESTMEM_FUZZ_CHECK(!got, "write succeeded; model: error");
        check_error(got.error(), *w.first_error, "write");
      } else {
        GUESTMEM_FUZZ_CHECK(got && *got == w.done, "write: model %llu",
                            static_cast<unsigned long long>(w.done));
      }
    }
    verify(w);
  }

  // Compares the host bytes of the pieces with the model.
  void verify(const Walk& w) const {
    for (const Piece& p : w.pieces) {
      const auto* region = mem_->backend().find_region(GuestAddress{p.region->start});
      GUESTMEM_FUZZ_CHECK(std::memcmp(region->mapping().unsafe_host_ptr() + p.offset,
                                      p.region->data.data() + p.offset, p.size) == 0,
                          "target %#llx: bytes differ from the model",
                          static_cast<unsigned long long>(p.region->start + p.offset));
    }
  }

  template <class T>
  void objects_as(std::uint64_t addr, bool write) {
    const Permissions a = write ? Permissions::Write : Permissions::Read;
    const Walk w = walk(addr, sizeof(T), a);
    if (write) {
      T value;
      guestmem::fuzz::fill_pattern(std::as_writable_bytes(std::span(&value, 1)), in_.u64());
      model_write(w, std::span(reinterpret_cast<const std::uint8_t*>(&value), sizeof(T)));
      check_all_or_nothing(mem_->write_obj(value, GuestAddress{addr}), w, sizeof(T), "write_obj");
      verify(w);
      return;
    }
    auto got = mem_->template read_obj<T>(GuestAddress{addr});
    if (!w.first_error && w.done == sizeof(T)) {
      std::array<std::uint8_t, sizeof(T)> want;
      model_read(w, want);
      GUESTMEM_FUZZ_CHECK(got && std::memcmp(&*got, want.data(), sizeof(T)) == 0,
                          "read_obj<%zu> at %#llx: wrong value or error", sizeof(T),
                          static_cast<unsigned long long>(addr));
      return;
    }
    check_all_or_nothing(got ? Result<void>{} : Result<void>(std::unexpect, got.error()), w,
                         sizeof(T), "read_obj");
  }

  void objects() {
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const bool write = in_.flag();
    switch (in_.below(4)) {
      case 0:
        return objects_as<std::uint16_t>(addr, write);
      case 1:
        return objects_as<std::uint64_t>(addr, write);
      case 2:
        return objects_as<std::array<std::uint8_t, 3>>(addr, write);
      default:
        return objects_as<std::array<std::uint8_t, 40>>(addr, write);
    }
  }

  // The error of a load or store of `size` bytes, from its walk (which stops after the
  // first piece when that is all the access needs).
  std::optional<Expected> single_error(std::uint64_t addr, std::size_t size, const Walk& w) {
    if (w.first_error) {
      return w.first_error;
    }
    const Piece& first = w.pieces.front();
    if (first.size < size) {
      if (mode_ == IommuMode::Passthrough) {
        return Expected{ErrorCode::InvalidBackendAddress, addr, 0, 0, 0};
      }
      return Expected{ErrorCode::Fragmented, addr, size, 0, first.size};
    }
    if (first.offset % size != 0) {
      if (mode_ == IommuMode::Passthrough) {
        return Expected{ErrorCode::InvalidBackendAddress, addr, 0, 0, 0};
      }
      return Expected{ErrorCode::Misaligned, addr, size, 0, 0};
    }
    return std::nullopt;
  }

  template <class T>
  void load_store_as(std::uint64_t addr, bool store) {
    const Permissions a = store ? Permissions::Write : Permissions::Read;
    // A single access looks up its first piece only.
    GUESTMEM_FUZZ_TRACE("%s<%zu> at %#llx", store ? "store" : "load", sizeof(T),
                        static_cast<unsigned long long>(addr));
    Walk w = walk_first(addr, sizeof(T), a);
    const auto err = single_error(addr, sizeof(T), w);
    if (store) {
      const T value = static_cast<T>(in_.u64());
      auto got = mem_->template store<T>(value, GuestAddress{addr}, std::memory_order_release);
      if (err) {
        GUESTMEM_FUZZ_CHECK(!got, "store<%zu> at %#llx succeeded; model: error", sizeof(T),
                            static_cast<unsigned long long>(addr));
        check_error(got.error(), *err, "store");
        return;
      }
      GUESTMEM_FUZZ_CHECK(got.has_value(), "store<%zu> at %#llx failed with %d", sizeof(T),
                          static_cast<unsigned long long>(addr),
                          static_cast<int>(got.error().code()));
      w.pieces.front().size = sizeof(T);
      model_write(w, std::span(reinterpret_cast<const std::uint8_t*>(&value), sizeof(T)));
      verify(w);
      return;
    }
    auto got = mem_->template load<T>(GuestAddress{addr}, std::memory_order_acquire);
    if (err) {
      GUESTMEM_FUZZ_CHECK(!got, "load<%zu> at %#llx succeeded; model: error", sizeof(T),
                          static_cast<unsigned long long>(addr));
      check_error(got.error(), *err, "load");
      return;
    }
    T want;
    w.pieces.front().size = sizeof(T);
    model_read(w, std::span(reinterpret_cast<std::uint8_t*>(&want), sizeof(T)));
    GUESTMEM_FUZZ_CHECK(got && *got == want, "load<%zu> at %#llx: wrong value or error",
                        sizeof(T), static_cast<unsigned long long>(addr));
  }

  // The first piece of an access only (what load, store and get_slice look up).
  Walk walk_first(std::uint64_t addr, std::uint64_t count, Permissions access) {
    // walk() over `count` bytes would continue into the next piece and could run the
    // handler there; a single access stops after its first piece.
    Walk w;
    const std::uint64_t x = addr;
    std::uint64_t target = x;
    std::uint64_t avail = count;
    std::optional<Expected> err;
    if (mode_ == IommuMode::Translate) {
      const Entry* e = nullptr;
      err = translate_at(x, count, access, &e);
      if (!err) {
        target = e->target + (x - e->iova);
        avail = std::min(count, e->end() - x);
      }
    }
    if (!err) {
      ModelRegion* r = find(target);
      if (r == nullptr) {
        err = Expected{ErrorCode::InvalidGuestAddress, target, 0, 0, 0};
      } else if (!r->allowed.allow(access)) {
        err = Expected{ErrorCode::ProtectionViolation, target, count, access_bits(access), 0};
      } else {
        const std::uint64_t off = target - r->start;
        w.pieces.push_back(Piece{r, off, std::min(avail, r->len - off)});
        w.done = w.pieces.front().size;
      }
    }
    w.first_error = err;
    return w;
  }

  void load_store() {
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const bool store = in_.flag();
    switch (in_.below(4)) {
      case 0:
        return load_store_as<std::uint8_t>(addr, store);
      case 1:
        return load_store_as<std::uint16_t>(addr, store);
      case 2:
        return load_store_as<std::uint32_t>(addr, store);
      default:
        return load_store_as<std::uint64_t>(addr, store);
    }
  }

  void get_slice() {
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const std::uint64_t count = in_.flag() ? map_length() : buffer_length();
    const Permissions a = access();
    auto got = mem_->get_slice(GuestAddress{addr}, count, a);
    std::optional<Expected> err;
    const std::uint8_t* host = nullptr;
    if (mode_ == IommuMode::Passthrough) {
      ModelRegion* r = find(addr);
      if (r == nullptr) {
        err = Expected{ErrorCode::InvalidGuestAddress, addr, 0, 0, 0};
      } else if (count > r->len - (addr - r->start)) {
        err = Expected{ErrorCode::InvalidBackendAddress, addr - r->start, 0, 0, 0};
      } else if (!r->allowed.allow(a)) {
        err = Expected{ErrorCode::ProtectionViolation, addr, count, access_bits(a), 0};
      } else {
        host = host_of(*r) + (addr - r->start);
      }
    } else {
      const Walk w = walk_first(addr, std::max<std::uint64_t>(count, 1), a);
      if (w.first_error) {
        err = w.first_error;
      } else if (w.pieces.front().size < count) {
        err = Expected{ErrorCode::Fragmented, addr, count, 0, w.pieces.front().size};
      } else {
        host = host_of(*w.pieces.front().region) + w.pieces.front().offset;
      }
    }
    if (err) {
      GUESTMEM_FUZZ_CHECK(!got, "get_slice(%#llx, %#llx) succeeded; model: error",
                          static_cast<unsigned long long>(addr),
                          static_cast<unsigned long long>(count));
      check_error(got.error(), *err, "get_slice");
      return;
    }
    GUESTMEM_FUZZ_CHECK(got && got->size() == count && got->unsafe_host_ptr() == host,
                        "get_slice(%#llx, %#llx): wrong view", static_cast<unsigned long long>(addr),
                        static_cast<unsigned long long>(count));
  }

  const std::uint8_t* host_of(const ModelRegion& r) const {
    return mem_->backend().find_region(GuestAddress{r.start})->mapping().unsafe_host_ptr();
  }

  void check_range() {
    const std::uint64_t addr = in_.flag() ? iova() : target();
    const std::uint64_t count = in_.flag() ? map_length() : buffer_length();
    const Permissions a = access();
    const bool got = mem_->check_range(GuestAddress{addr}, count, a);
    const bool want = count == 0 || walk(addr, count, a).done == count;
    GUESTMEM_FUZZ_CHECK(got == want, "check_range(%#llx, %#llx): %d, model %d",
                        static_cast<unsigned long long>(addr),
                        static_cast<unsigned long long>(count), got ? 1 : 0, want ? 1 : 0);
  }

  void check_dirty() const {
    for (const ModelRegion& r : model_regions_) {
      const auto* region = mem_->backend().find_region(GuestAddress{r.start});
      const std::vector<std::uint64_t> words = region->bitmap().to_words();
      for (std::size_t page = 0; page < r.dirty.size(); ++page) {
        const bool bit = ((words[page / 64] >> (page % 64)) & 1U) != 0;
        GUESTMEM_FUZZ_CHECK(bit == r.dirty[page], "region %#llx page %zu: dirty %d, model %d",
                            static_cast<unsigned long long>(r.start), page, bit ? 1 : 0,
                            r.dirty[page] ? 1 : 0);
      }
    }
  }

  Input& in_;
  std::vector<ModelRegion> model_regions_;
  ModelIotlb iotlb_;
  Policy policy_ = Policy::None;
  std::uint64_t handler_delta_ = 0;
  Permissions handler_perm_ = Permissions::ReadWrite;
  std::vector<HandlerCall> handler_log_;
  std::vector<HandlerCall> expected_log_;
  std::shared_ptr<Iommu> iommu_;
  IommuMode mode_ = IommuMode::Translate;
  std::optional<Mem> mem_;
  std::uint64_t generation_ = 0;
  bool generation_moves_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  if (in.flag()) {
    Session<guestmem::GuestMemoryMmap<AtomicBitmap>> session(in);
    session.run();
  } else {
    Session<guestmem::GuestMemoryMmap<>> session(in);
    session.run();
  }
  return 0;
}
