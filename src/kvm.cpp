#include "guestmem/kvm.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>

namespace guestmem {
namespace {

constexpr int kKvmApiVersion = 12;

// KvmSlot's flag values are KVM's, so they pass straight into the ioctl.
static_assert(KvmSlot::kLogDirtyPages == KVM_MEM_LOG_DIRTY_PAGES);
static_assert(KvmSlot::kReadonly == KVM_MEM_READONLY);

// ioctl, retried on EINTR (KVM_CREATE_VM and the dirty-log calls may be interrupted by a
// signal before they change anything).
template <class Arg>
int kvm_ioctl(int fd, unsigned long request, Arg arg) noexcept {
  int r;
  do {
    r = ::ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

std::size_t host_page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

Result<void> enable_cap(int vm_fd, std::uint32_t cap, std::uint64_t arg0) {
  kvm_enable_cap enable{};
  enable.cap = cap;
  enable.args[0] = arg0;
  if (kvm_ioctl(vm_fd, KVM_ENABLE_CAP, &enable) < 0) {
    return std::unexpected(Error::kvm_ioctl_failed(errno, KVM_ENABLE_CAP, cap));
  }
  return {};
}

// Calls on_run(first, count) for the runs of non-zero words of `words`, joining runs that
// are at most kJoinGap zero words apart: KVM_CLEAR_DIRTY_LOG walks its range a word at a
// time, and a few hundred clean words cost it about what a second ioctl costs. Returns the
// number of pages set.
constexpr std::size_t kJoinGap = 256;
// Words tested together: a block of clean words costs one OR reduction, which the compiler
// vectorises, so the scan of a clean log runs at the speed of the cache it was just copied
// into.
constexpr std::size_t kScanBlock = 32;

template <class F>
std::size_t for_each_dirty_run(std::span<const std::uint64_t> words, F&& on_run) {
  std::size_t dirty_pages = 0;
  std::size_t run_first = 0;
  std::size_t run_end = 0;  // one past the last non-zero word of the current run
  bool in_run = false;
  auto visit = [&](std::size_t w) {
    if (words[w] == 0) {
      return;
    }
    dirty_pages += static_cast<std::size_t>(std::popcount(words[w]));
    if (in_run && w - run_end <= kJoinGap) {
      run_end = w + 1;
      return;
    }
    if (in_run) {
      on_run(run_first, run_end - run_first);
    }
    in_run = true;
    run_first = w;
    run_end = w + 1;
  };
  const std::size_t n = words.size();
  const std::size_t blocks_end = n - n % kScanBlock;
  for (std::size_t b = 0; b < blocks_end; b += kScanBlock) {
    std::uint64_t any = 0;
    for (std::size_t i = 0; i < kScanBlock; ++i) {
      any |= words[b + i];
    }
    if (any != 0) [[unlikely]] {
      for (std::size_t w = b; w < b + kScanBlock; ++w) {
        visit(w);
      }
    }
  }
  for (std::size_t w = blocks_end; w < n; ++w) {
    visit(w);
  }
  if (in_run) {
    on_run(run_first, run_end - run_first);
  }
  return dirty_pages;
}

// Marks in `bitmap` the pages set in words [first, first + count) of a KVM-layout bitmap.
void mark_words(const AtomicBitmap& bitmap, std::span<const std::uint64_t> words,
                std::size_t first, std::size_t count) {
  const std::size_t page_size = bitmap.page_size();
  for (std::size_t w = first; w < first + count; ++w) {
    std::uint64_t bits = words[w];
    while (bits != 0) {
      const unsigned lo = static_cast<unsigned>(std::countr_zero(bits));
      const unsigned len = static_cast<unsigned>(std::countr_one(bits >> lo));
      bitmap.mark_dirty((w * 64 + lo) * page_size, std::size_t{len} * page_size);
      bits = len + lo >= 64 ? 0 : bits & ~(((std::uint64_t{1} << len) - 1) << lo);
    }
  }
}

}  // namespace

Result<int> kvm_check_extension(BorrowedFd fd, unsigned long cap) {
  const int r = kvm_ioctl(fd.get(), KVM_CHECK_EXTENSION, cap);
  if (r < 0) {
    return std::unexpected(Error::kvm_ioctl_failed(errno, KVM_CHECK_EXTENSION, cap));
  }
  return r;
}

// ---- KvmSystem ----

Result<KvmSystem> KvmSystem::open(const char* path) {
  UniqueFd fd{::open(path, O_RDWR | O_CLOEXEC)};
  if (!fd) {
    return std::unexpected(Error::kvm_unavailable(errno));
  }
  const int version = kvm_ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (version < 0) {
    return std::unexpected(Error::kvm_unavailable(errno));
  }
  if (version != kKvmApiVersion) {
    return std::unexpected(Error::kvm_unavailable(0, static_cast<std::uint64_t>(version)));
  }
  return KvmSystem(std::move(fd));
}

Result<int> KvmSystem::check_extension(unsigned long cap) const {
  return kvm_check_extension(fd(), cap);
}

Result<UniqueFd> KvmSystem::create_vm() const {
  const int vm = kvm_ioctl(fd_.get(), KVM_CREATE_VM, 0UL);
  if (vm < 0) {
    return std::unexpected(Error::kvm_ioctl_failed(errno, KVM_CREATE_VM));
  }
  return UniqueFd{vm};
}

Result<std::size_t> KvmSystem::vcpu_mmap_size() const {
  const int size = kvm_ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < 0) {
    return std::unexpected(Error::kvm_ioctl_failed(errno, KVM_GET_VCPU_MMAP_SIZE));
  }
  return static_cast<std::size_t>(size);
}

// ---- KvmMemorySlots ----

KvmMemorySlots::KvmMemorySlots(UniqueFd vm_fd, KvmSlotOptions options) noexcept
    : vm_fd_(std::move(vm_fd)), options_(options) {}

Result<KvmMemorySlots> KvmMemorySlots::create(BorrowedFd vm_fd, KvmSlotOptions options) {
  UniqueFd fd{::fcntl(vm_fd.get(), F_DUPFD_CLOEXEC, 0)};
  if (!fd) {
    return std::unexpected(Error::io(errno));
  }
  KvmMemorySlots slots(std::move(fd), options);
  const BorrowedFd vm(slots.vm_fd_);

  auto nr = kvm_check_extension(vm, KVM_CAP_NR_MEMSLOTS);
  if (!nr) {
    return std::unexpected(nr.error());
  }
  // Without the capability KVM has its historical 32 slots.
  slots.max_slots_ = *nr > 0 ? static_cast<std::uint32_t>(*nr) : 32U;

  auto readonly = kvm_check_extension(vm, KVM_CAP_READONLY_MEM);
  if (!readonly) {
    return std::unexpected(readonly.error());
  }
  slots.readonly_mem_ = *readonly > 0;

  if (options.log_dirty_pages && options.manual_protect) {
    auto manual = kvm_check_extension(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (!manual) {
      return std::unexpected(manual.error());
    }
    // Only manual protection itself: KVM_DIRTY_LOG_INITIALLY_SET would report every page of
    // a new slot as dirty on the first fetch.
    if ((static_cast<unsigned>(*manual) & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) != 0) {
      auto enabled = enable_cap(slots.vm_fd_.get(), KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                                KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
      if (!enabled) {
        return std::unexpected(enabled.error());
      }
      slots.manual_protect_ = true;
    }
  }
  return slots;
}

KvmMemorySlots& KvmMemorySlots::operator=(KvmMemorySlots&& other) noexcept {
  if (this != &other) {
    delete_all();
    vm_fd_ = std::move(other.vm_fd_);
    options_ = other.options_;
    max_slots_ = other.max_slots_;
    readonly_mem_ = other.readonly_mem_;
    manual_protect_ = other.manual_protect_;
    last_sync_ = other.last_sync_;
    last_merge_pages_ = other.last_merge_pages_;
    records_ = std::move(other.records_);
    wanted_ = std::move(other.wanted_);
    used_ = std::move(other.used_);
    other.records_.clear();
  }
  return *this;
}

KvmMemorySlots::~KvmMemorySlots() { delete_all(); }

void KvmMemorySlots::delete_all() noexcept {
  if (vm_fd_) {
    for (const Record& r : records_) {
      kvm_userspace_memory_region region{};
      region.slot = r.slot.slot;
      region.guest_phys_addr = r.slot.guest_base.raw_value();
      region.userspace_addr = r.slot.host_address;
      region.memory_size = 0;
      // A failure leaves the slot in a VM whose memory is going away; nothing better can be
      // done from a destructor, and the VM's descriptor is closed right after.
      (void)kvm_ioctl(vm_fd_.get(), KVM_SET_USER_MEMORY_REGION, &region);
    }
  }
  records_.clear();
}

Result<void> KvmMemorySlots::apply_wanted() {
  last_sync_ = {};
  // Refuse what KVM cannot map before changing anything.
  if (!readonly_mem_ && std::ranges::any_of(wanted_, [](const Wanted& w) {
        return (w.slot.flags & KvmSlot::kReadonly) != 0;
      })) {
    wanted_.clear();
    return std::unexpected(Error::at(ErrorCode::KvmCapabilityMissing, KVM_CAP_READONLY_MEM));
  }

  // Both lists are sorted by guest base and free of overlaps, so an identical slot is found
  // by walking them together. Matched wanted entries get flags ~0 as a mark.
  std::vector<bool> keep_record(records_.size(), false);
  {
    std::size_t r = 0;
    for (Wanted& w : wanted_) {
      while (r < records_.size() && records_[r].slot.guest_base < w.slot.guest_base) {
        ++r;
      }
      if (r < records_.size()) {
        KvmSlot candidate = records_[r].slot;
        candidate.slot = 0;
        if (candidate == w.slot) {
          keep_record[r] = true;
          w.slot.slot = ~std::uint32_t{0};
        }
      }
    }
  }

  // Deletions first: a new region may overlap the range of a removed one, and KVM refuses
  // overlapping slots.
  const int vm = vm_fd_.get();
  std::size_t kept = 0;
  Result<void> result;
  for (std::size_t r = 0; r < records_.size(); ++r) {
    Record& record = records_[r];
    if (keep_record[r] || !result) {
      records_[kept++] = std::move(record);
      continue;
    }
    kvm_userspace_memory_region region{};
    region.slot = record.slot.slot;
    region.flags = record.slot.flags;
    region.guest_phys_addr = record.slot.guest_base.raw_value();
    region.userspace_addr = record.slot.host_address;
    region.memory_size = 0;
    if (kvm_ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
      result = std::unexpected(Error::kvm_slot_refused(errno, KVM_SET_USER_MEMORY_REGION,
                                                       record.slot.slot,
                                                       record.slot.guest_base.raw_value(),
                                                       record.slot.size));
      records_[kept++] = std::move(record);
      continue;
    }
    used_[record.slot.slot] = false;
    ++last_sync_.removed;
  }
  records_.resize(kept);
  if (!result) {
    wanted_.clear();
    return result;
  }

  std::uint32_t next_free = options_.first_slot;
  for (Wanted& w : wanted_) {
    if (w.slot.slot == ~std::uint32_t{0}) {
      continue;
    }
    while (next_free < used_.size() && used_[next_free]) {
      ++next_free;
    }
    if (next_free >= max_slots_) {
      result = std::unexpected(Error::kvm_slot_refused(ENOSPC, KVM_SET_USER_MEMORY_REGION,
                                                       next_free,
                                                       w.slot.guest_base.raw_value(),
                                                       w.slot.size));
      break;
    }
    w.slot.slot = next_free;
    kvm_userspace_memory_region region{};
    region.slot = w.slot.slot;
    region.flags = w.slot.flags;
    region.guest_phys_addr = w.slot.guest_base.raw_value();
    region.memory_size = w.slot.size;
    region.userspace_addr = w.slot.host_address;
    if (kvm_ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
      result = std::unexpected(Error::kvm_slot_refused(errno, KVM_SET_USER_MEMORY_REGION,
                                                       w.slot.slot,
                                                       w.slot.guest_base.raw_value(),
                                                       w.slot.size));
      break;
    }
    if (used_.size() <= next_free) {
      used_.resize(std::size_t{next_free} + 1, false);
    }
    used_[next_free] = true;
    ++last_sync_.added;
    Record record{w.slot, std::move(w.keep), {}};
    if ((w.slot.flags & KvmSlot::kLogDirtyPages) != 0) {
      const std::size_t pages = (w.slot.size + host_page_size() - 1) / host_page_size();
      record.log.assign((pages + 63) / 64, 0);
    }
    auto at = std::ranges::upper_bound(records_, record.slot.guest_base, std::less<>{},
                                       [](const Record& r) { return r.slot.guest_base; });
    records_.insert(at, std::move(record));
  }
  wanted_.clear();
  return result;
}

Result<void> KvmMemorySlots::merge_dirty_log(const GuestMemoryMmap<AtomicBitmap>& mem) {
  last_merge_pages_ = 0;
  // Check every logging slot against `mem` before fetching anything: a fetch clears KVM's
  // log, so a page fetched for a region that is not there would be lost.
  for (const Record& record : records_) {
    if ((record.slot.flags & KvmSlot::kLogDirtyPages) == 0) {
      continue;
    }
    const auto* region = mem.find_region(record.slot.guest_base);
    if (region == nullptr || region->start_addr() != record.slot.guest_base ||
        region->len() != record.slot.size ||
        reinterpret_cast<std::uint64_t>(region->mapping().unsafe_host_ptr()) !=
            record.slot.host_address) {
      return std::unexpected(Error::at(ErrorCode::InvalidGuestRegion,
                                       record.slot.guest_base.raw_value(), record.slot.size));
    }
    if (region->bitmap().page_size() != host_page_size() ||
        region->bitmap().num_words() != record.log.size()) {
      return std::unexpected(
          Error::at(ErrorCode::InvalidBitmap, region->bitmap().num_words(), record.log.size()));
    }
  }

  const int vm = vm_fd_.get();
  for (Record& record : records_) {
    if ((record.slot.flags & KvmSlot::kLogDirtyPages) == 0) {
      continue;
    }
    const AtomicBitmap& bitmap = mem.find_region(record.slot.guest_base)->bitmap();
    kvm_dirty_log log{};
    log.slot = record.slot.slot;
    // SAFETY: record.log holds one bit per page of the slot, rounded up to 64-bit words,
    // which is exactly what KVM writes for a slot of this size.
    log.dirty_bitmap = record.log.data();
    if (kvm_ioctl(vm, KVM_GET_DIRTY_LOG, &log) < 0) {
      return std::unexpected(Error::kvm_slot_refused(errno, KVM_GET_DIRTY_LOG, record.slot.slot,
                                                     record.slot.guest_base.raw_value(),
                                                     record.slot.size));
    }
    const std::span<const std::uint64_t> words(record.log);
    const std::uint64_t slot_pages = record.slot.size / host_page_size();
    // Merge first, then clear in KVM: a failing clear leaves the pages dirty in both, and a
    // page is never clean in both while its data is unsaved.
    int clear_errno = 0;
    last_merge_pages_ += for_each_dirty_run(words, [&](std::size_t first, std::size_t count) {
      mark_words(bitmap, words, first, count);
      if (!manual_protect_ || clear_errno != 0) {
        return;
      }
      kvm_clear_dirty_log clear{};
      clear.slot = record.slot.slot;
      clear.first_page = std::uint64_t{first} * 64;
      // A multiple of 64 pages, or up to the end of the slot.
      clear.num_pages = static_cast<std::uint32_t>(
          std::min<std::uint64_t>(std::uint64_t{count} * 64, slot_pages - clear.first_page));
      // SAFETY: [first, first + count) lies inside record.log, which holds one bit per page
      // of the slot; KVM reads num_pages bits from there.
      clear.dirty_bitmap = record.log.data() + first;
      if (kvm_ioctl(vm, KVM_CLEAR_DIRTY_LOG, &clear) < 0) {
        clear_errno = errno;
      }
    });
    if (clear_errno != 0) {
      return std::unexpected(Error::kvm_slot_refused(clear_errno, KVM_CLEAR_DIRTY_LOG,
                                                     record.slot.slot,
                                                     record.slot.guest_base.raw_value(),
                                                     record.slot.size));
    }
  }
  return {};
}

std::vector<KvmSlot> KvmMemorySlots::slots() const {
  std::vector<KvmSlot> out;
  out.reserve(records_.size());
  for (const Record& r : records_) {
    out.push_back(r.slot);
  }
  return out;
}

std::optional<KvmSlot> KvmMemorySlots::slot_for(GuestAddress addr) const noexcept {
  auto it = std::ranges::upper_bound(records_, addr, std::less<>{},
                                     [](const Record& r) { return r.slot.guest_base; });
  if (it == records_.begin()) {
    return std::nullopt;
  }
  --it;
  if (addr.raw_value() - it->slot.guest_base.raw_value() >= it->slot.size) {
    return std::nullopt;
  }
  return it->slot;
}

std::optional<KvmSlot> KvmMemorySlots::find_slot(std::uint32_t slot) const noexcept {
  for (const Record& r : records_) {
    if (r.slot.slot == slot) {
      return r.slot;
    }
  }
  return std::nullopt;
}

// ---- KvmDirtyRing ----

Result<std::size_t> KvmDirtyRing::max_bytes(BorrowedFd vm_fd) {
#if defined(KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
  auto acq_rel = kvm_check_extension(vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
  if (!acq_rel) {
    return std::unexpected(acq_rel.error());
  }
  if (*acq_rel > 0) {
    return static_cast<std::size_t>(*acq_rel);
  }
#endif
  auto plain = kvm_check_extension(vm_fd, KVM_CAP_DIRTY_LOG_RING);
  if (!plain) {
    return std::unexpected(plain.error());
  }
  return static_cast<std::size_t>(std::max(*plain, 0));
}

Result<void> KvmDirtyRing::enable(BorrowedFd vm_fd, std::size_t bytes) {
  std::uint32_t cap = KVM_CAP_DIRTY_LOG_RING;
#if defined(KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
  auto acq_rel = kvm_check_extension(vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
  if (!acq_rel) {
    return std::unexpected(acq_rel.error());
  }
  if (*acq_rel > 0) {
    cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
  }
#endif
  if (cap == KVM_CAP_DIRTY_LOG_RING) {
    auto plain = kvm_check_extension(vm_fd, KVM_CAP_DIRTY_LOG_RING);
    if (!plain) {
      return std::unexpected(plain.error());
    }
    if (*plain <= 0) {
      return std::unexpected(Error::at(ErrorCode::KvmCapabilityMissing, KVM_CAP_DIRTY_LOG_RING));
    }
  }
  return enable_cap(vm_fd.get(), cap, bytes);
}

KvmDirtyRing::KvmDirtyRing(void* ring, std::size_t bytes) noexcept
    : ring_(ring),
      bytes_(bytes),
      entries_(static_cast<std::uint32_t>(bytes / sizeof(kvm_dirty_gfn))) {}

Result<KvmDirtyRing> KvmDirtyRing::map(BorrowedFd vcpu_fd, std::size_t bytes) {
  const auto offset =
      static_cast<off_t>(std::uint64_t{KVM_DIRTY_LOG_PAGE_OFFSET} * host_page_size());
  // KVM backs only the pages of the ring it allocated; `bytes` must be the size given to
  // enable() (see the header), or harvest would touch pages KVM does not back.
  void* ring = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd.get(), offset);
  if (ring == MAP_FAILED) {
    return std::unexpected(Error::mapping_failed(errno, bytes));
  }
  return KvmDirtyRing(ring, bytes);
}

KvmDirtyRing::KvmDirtyRing(KvmDirtyRing&& other) noexcept
    : ring_(std::exchange(other.ring_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      entries_(std::exchange(other.entries_, 0)),
      fetch_(std::exchange(other.fetch_, 0)) {}

KvmDirtyRing& KvmDirtyRing::operator=(KvmDirtyRing&& other) noexcept {
  if (this != &other) {
    if (ring_ != nullptr) {
      ::munmap(ring_, bytes_);
    }
    ring_ = std::exchange(other.ring_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    entries_ = std::exchange(other.entries_, 0);
    fetch_ = std::exchange(other.fetch_, 0);
  }
  return *this;
}

KvmDirtyRing::~KvmDirtyRing() {
  if (ring_ != nullptr) {
    ::munmap(ring_, bytes_);
  }
}

template <class F>
std::size_t KvmDirtyRing::take(F&& on_page) {
  if (ring_ == nullptr || entries_ == 0) {
    return 0;
  }
  auto* gfns = static_cast<kvm_dirty_gfn*>(ring_);
  std::size_t taken = 0;
  for (;;) {
    // SAFETY: the index is reduced modulo the number of entries (a power of two, as KVM
    // requires of the ring size), so the entry lies inside the mapped ring.
    kvm_dirty_gfn& entry = gfns[fetch_ & (entries_ - 1)];
    // KVM publishes an entry by setting DIRTY with release semantics after writing slot and
    // offset; the acquire load orders the reads of those after it. The entry is shared with
    // the kernel, hence atomic_ref.
    std::atomic_ref<std::uint32_t> flags(entry.flags);
    if ((flags.load(std::memory_order_acquire) & KVM_DIRTY_GFN_F_DIRTY) == 0) {
      break;
    }
    const std::uint32_t slot = entry.slot;
    const std::uint64_t page = entry.offset;
    // Address space 0 only (the upper 16 bits of slot hold the address space).
    if ((slot >> 16) == 0) {
      on_page(slot & 0xffffU, page);
    }
    // Hand the entry back: KVM collects entries marked RESET at KVM_RESET_DIRTY_RINGS.
    flags.store(KVM_DIRTY_GFN_F_RESET, std::memory_order_release);
    ++fetch_;
    ++taken;
  }
  return taken;
}

std::size_t KvmDirtyRing::harvest(std::vector<KvmDirtyPage>& out) {
  return take([&](std::uint32_t slot, std::uint64_t page) { out.push_back({slot, page}); });
}

std::size_t KvmDirtyRing::harvest(const KvmMemorySlots& slots,
                                  const GuestMemoryMmap<AtomicBitmap>& mem) {
  // Entries come in runs from the same slot: remember the last one looked up.
  std::uint32_t cached_slot = ~std::uint32_t{0};
  const AtomicBitmap* bitmap = nullptr;
  std::uint64_t slot_pages = 0;
  return take([&](std::uint32_t slot, std::uint64_t page) {
    if (slot != cached_slot) {
      cached_slot = slot;
      bitmap = nullptr;
      slot_pages = 0;
      if (auto info = slots.find_slot(slot)) {
        const auto* region = mem.find_region(info->guest_base);
        if (region != nullptr && region->start_addr() == info->guest_base &&
            region->len() == info->size) {
          bitmap = &region->bitmap();
          slot_pages = info->size / host_page_size();
        }
      }
    }
    if (bitmap != nullptr && page < slot_pages) {
      bitmap->mark_dirty(page * host_page_size(), 1);
    }
  });
}

Result<std::size_t> KvmDirtyRing::reset(BorrowedFd vm_fd) {
  const int r = kvm_ioctl(vm_fd.get(), KVM_RESET_DIRTY_RINGS, 0);
  if (r < 0) {
    return std::unexpected(Error::kvm_ioctl_failed(errno, KVM_RESET_DIRTY_RINGS));
  }
  return static_cast<std::size_t>(r);
}

}  // namespace guestmem
