// guestmem: KVM memory slots and dirty logs (target guestmem::kvm, library guestmem_kvm).
//
// What a VMM needs between its guest memory and KVM, without the vCPU handling (that stays
// with the VMM):
// - `KvmSystem`: the KVM device (/dev/kvm): capabilities, new VMs, the vCPU mmap size.
// - `KvmMemorySlots`: the memory slots of one VM kept equal to a `GuestMemoryMmap`. The first
//   sync registers every region (KVM_SET_USER_MEMORY_REGION); after a hot-plug (a new map
//   from insert_region/remove_region, published through GuestMemoryAtomic) a sync changes
//   exactly the slots that changed: a region with the same host address, guest base, size
//   and flags keeps its slot, a removed region's slot is deleted, a new region gets the
//   lowest free slot number. Read-only regions become KVM_MEM_READONLY slots (guest writes
//   exit to the VMM as MMIO). With `log_dirty_pages` the slots log guest writes, and
//   merge_dirty_log folds KVM's log (KVM_GET_DIRTY_LOG, and KVM_CLEAR_DIRTY_LOG of exactly
//   the bits fetched where KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 exists) into each region's
//   AtomicBitmap, so that one get_and_reset answers "dirty since the last reset" for guest
//   writes and device writes together.
// - `KvmDirtyRing`: the per-vCPU dirty rings (KVM_CAP_DIRTY_LOG_RING), the alternative to the
//   dirty bitmap: enabled on the VM before its vCPUs exist, mapped per vCPU, harvested into
//   the same AtomicBitmaps, then recycled with KVM_RESET_DIRTY_RINGS. A VM with rings has no
//   dirty bitmap (KVM_GET_DIRTY_LOG fails with ENXIO).
//
// The slots keep a reference to every region they registered, so a region KVM maps is never
// unmapped under it, whatever happens to the maps that held it.
//
//   auto kvm = KvmSystem::open();
//   auto vm = kvm->create_vm();
//   auto slots = KvmMemorySlots::create(BorrowedFd(*vm), {.log_dirty_pages = true});
//   slots->sync(*mem);                       // every region becomes a slot
//   ...run the guest; devices write through mem...
//   slots->merge_dirty_log(*mem);            // guest writes join the device writes
//   for (const auto& region : mem->regions()) {
//     auto dirty = region.bitmap().get_and_reset();   // both kinds, KVM's layout
//   }
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "guestmem/address.hpp"
#include "guestmem/atomic_bitmap.hpp"
#include "guestmem/error.hpp"
#include "guestmem/fd.hpp"
#include "guestmem/guest_memory.hpp"
#include "guestmem/io.hpp"

namespace guestmem {

/// KVM_CHECK_EXTENSION on `fd`: the KVM device (what KVM supports) or a VM (what that VM
/// supports, which may differ). Returns the capability's value; 0 means absent.
/// Errors: KvmIoctlFailed (request KVM_CHECK_EXTENSION, argument `cap`) with errno.
GUESTMEM_API Result<int> kvm_check_extension(BorrowedFd fd, unsigned long cap);

/// The KVM device. Moves, never copies; closes the device when destroyed.
class GUESTMEM_API KvmSystem {
 public:
  /// Opens the KVM device at `path` (read-write, close-on-exec) and checks its API version.
  /// Errors: KvmUnavailable with the errno of open (ENOENT: no such device; EACCES, EPERM:
  /// no permission) or of KVM_GET_API_VERSION (ENOTTY: not a KVM device), or with errno 0
  /// and expected() the API version when it is not 12.
  static Result<KvmSystem> open(const char* path = "/dev/kvm");

  /// The device's descriptor. Validity: while this object is alive.
  [[nodiscard]] BorrowedFd fd() const noexcept { return BorrowedFd(fd_); }
  /// KVM_CHECK_EXTENSION on the device; see kvm_check_extension.
  [[nodiscard]] Result<int> check_extension(unsigned long cap) const;
  /// A new VM (KVM_CREATE_VM, machine type 0), retried on EINTR.
  /// Errors: KvmIoctlFailed (KVM_CREATE_VM) with errno.
  [[nodiscard]] Result<UniqueFd> create_vm() const;
  /// The size of the area to mmap from a vCPU descriptor (struct kvm_run and what follows
  /// it). Errors: KvmIoctlFailed (KVM_GET_VCPU_MMAP_SIZE) with errno.
  [[nodiscard]] Result<std::size_t> vcpu_mmap_size() const;

 private:
  explicit KvmSystem(UniqueFd fd) noexcept : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

/// How KvmMemorySlots registers memory.
struct KvmSlotOptions {
  /// Give writable slots KVM_MEM_LOG_DIRTY_PAGES (needed by merge_dirty_log and by the dirty
  /// rings). Read-only slots never log: the guest cannot write them.
  bool log_dirty_pages = false;
  /// With log_dirty_pages, enable KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 where KVM has it, so that
  /// a fetch of the log does not write-protect the whole slot again: merge_dirty_log then
  /// clears (KVM_CLEAR_DIRTY_LOG) exactly the pages it fetched.
  bool manual_protect = true;
  /// The lowest slot number to use (a VMM may keep lower numbers for slots of its own).
  std::uint32_t first_slot = 0;
};

/// One memory slot as registered with KVM.
struct KvmSlot {
  /// The slot number (KVM's `slot`, address space 0).
  std::uint32_t slot = 0;
  /// The guest physical address of the slot's first byte.
  GuestAddress guest_base;
  /// The slot's length in bytes.
  std::uint64_t size = 0;
  /// The host address of the slot's first byte (KVM's `userspace_addr`).
  std::uint64_t host_address = 0;
  /// KVM_MEM_LOG_DIRTY_PAGES (1) and KVM_MEM_READONLY (2).
  std::uint32_t flags = 0;

  /// The flag KVM_MEM_LOG_DIRTY_PAGES: KVM logs the pages the guest writes.
  static constexpr std::uint32_t kLogDirtyPages = 1;
  /// The flag KVM_MEM_READONLY: guest writes exit to the VMM instead.
  static constexpr std::uint32_t kReadonly = 2;

  /// Equal when every field is.
  friend constexpr bool operator==(const KvmSlot&, const KvmSlot&) noexcept = default;
};

/// What the last sync changed.
struct KvmSyncStats {
  /// Slots deleted (KVM_SET_USER_MEMORY_REGION with memory_size 0).
  std::size_t removed = 0;
  /// Slots created.
  std::size_t added = 0;
  /// Every KVM_SET_USER_MEMORY_REGION the sync made.
  [[nodiscard]] constexpr std::size_t updates() const noexcept { return removed + added; }
};

/// The memory slots of one VM, kept equal to a guest memory map. Moves, never copies.
/// Concurrency: one thread at a time (the VMM's memory thread); the guest may run
/// meanwhile, and devices may keep writing to the memory.
class GUESTMEM_API KvmMemorySlots {
 public:
  /// Slots for the VM `vm_fd`, which this object keeps open (a duplicate descriptor) so that
  /// it can delete its slots when destroyed, whatever the VMM closes first. Queries the slot
  /// limit (KVM_CAP_NR_MEMSLOTS) and KVM_CAP_READONLY_MEM; with log_dirty_pages and
  /// manual_protect, enables KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 when the VM offers it.
  /// Errors: IoError when the descriptor cannot be duplicated (EBADF: it is closed);
  /// KvmIoctlFailed (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP) with errno (ENOTTY for a descriptor
  /// that is no VM).
  static Result<KvmMemorySlots> create(BorrowedFd vm_fd, KvmSlotOptions options = {});

  /// Takes over the other object's VM descriptor and slots; the moved-from object has none.
  KvmMemorySlots(KvmMemorySlots&&) noexcept = default;
  /// Takes over `other`'s VM descriptor and slots, after deleting this object's slots from its VM.
  KvmMemorySlots& operator=(KvmMemorySlots&& other) noexcept;
  KvmMemorySlots(const KvmMemorySlots&) = delete;
  KvmMemorySlots& operator=(const KvmMemorySlots&) = delete;
  /// Deletes the slots from the VM, then lets go of their regions.
  ~KvmMemorySlots();

  /// Makes the VM's slots match the regions of `mem`: deletes the slots of regions `mem`
  /// lacks, then creates slots for its regions that have none. A slot is kept when a region
  /// of `mem` has its host address, guest base, size and flags. Read-only regions (their
  /// mapping is not writable) get KVM_MEM_READONLY. last_sync() says what changed.
  /// Errors: KvmCapabilityMissing(KVM_CAP_READONLY_MEM) when `mem` has a read-only region and
  /// KVM cannot map one (nothing changed then); KvmSlotRefused (KVM_SET_USER_MEMORY_REGION,
  /// the slot, its guest range, errno: EINVAL for a base or size that is not page aligned,
  /// EEXIST for an overlap with a slot the VMM created itself, ENOSPC when no slot number
  /// is free). It may stop short: the changes made before the failure stay, are counted in
  /// last_sync() and are what a later sync starts from.
  /// Validity: the slots keep a reference to each region they register until its slot is
  /// deleted (by a sync or the destruction of this object), so KVM never maps freed memory.
  template <Bitmap B>
  Result<void> sync(const GuestMemoryMmap<B>& mem) {
    wanted_.clear();
    for (const auto& region : mem.region_ptrs()) {
      const bool writable = region->mapping().protection().writable();
      wanted_.push_back(Wanted{
          KvmSlot{0, region->start_addr(), region->len(),
                  reinterpret_cast<std::uint64_t>(region->mapping().unsafe_host_ptr()),
                  writable ? (options_.log_dirty_pages ? KvmSlot::kLogDirtyPages : 0U)
                           : KvmSlot::kReadonly},
          std::shared_ptr<const void>(region)});
    }
    return apply_wanted();
  }

  /// Fetches KVM's dirty log of every logging slot (KVM_GET_DIRTY_LOG into a buffer each slot
  /// keeps) and merges it into the AtomicBitmap of the slot's region in `mem`; with manual
  /// protection, then clears in KVM exactly the pages fetched (KVM_CLEAR_DIRTY_LOG), so a
  /// page the guest dirties meanwhile is reported by the next call. Slots that do not log
  /// (read-only ones, or all without log_dirty_pages) are skipped. No allocation.
  /// `mem` is the map last synced (or one with the same regions).
  /// Errors, checked before anything is fetched: InvalidGuestRegion(guest base, size) when
  /// `mem` has no region for a logging slot; InvalidBitmap(bitmap words, log words) when a
  /// region's bitmap does not use the host page size. Then KvmSlotRefused
  /// (KVM_GET_DIRTY_LOG or KVM_CLEAR_DIRTY_LOG, the slot, errno: ENXIO on a VM with dirty
  /// rings). It
  /// may stop short: slots merged before a failure stay merged; pages fetched from a slot
  /// whose clear failed are merged and stay dirty in KVM (reported again, never lost).
  Result<void> merge_dirty_log(const GuestMemoryMmap<AtomicBitmap>& mem);

  /// The number of slots registered.
  [[nodiscard]] std::size_t num_slots() const noexcept { return records_.size(); }
  /// The slots, in guest address order.
  [[nodiscard]] std::vector<KvmSlot> slots() const;
  /// The slot whose guest range holds `addr`, if any.
  [[nodiscard]] std::optional<KvmSlot> slot_for(GuestAddress addr) const noexcept;
  /// The slot numbered `slot`, if registered.
  [[nodiscard]] std::optional<KvmSlot> find_slot(std::uint32_t slot) const noexcept;
  /// What the last sync changed.
  [[nodiscard]] KvmSyncStats last_sync() const noexcept { return last_sync_; }
  /// The pages the last merge_dirty_log found dirty in KVM's log.
  [[nodiscard]] std::size_t last_merge_pages() const noexcept { return last_merge_pages_; }
  /// Whether merge_dirty_log clears KVM's log itself (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 was
  /// enabled) rather than KVM_GET_DIRTY_LOG clearing it.
  [[nodiscard]] bool manual_protect() const noexcept { return manual_protect_; }
  /// The number of slots KVM allows (KVM_CAP_NR_MEMSLOTS).
  [[nodiscard]] std::uint32_t max_slots() const noexcept { return max_slots_; }

 private:
  struct Wanted {
    KvmSlot slot;
    std::shared_ptr<const void> keep;
  };
  struct Record {
    KvmSlot slot;
    // The region, kept mapped while KVM maps it.
    std::shared_ptr<const void> keep;
    // KVM_GET_DIRTY_LOG's buffer for the slot (logging slots only), reused by every merge.
    std::vector<std::uint64_t> log;
  };

  GUESTMEM_LOCAL KvmMemorySlots(UniqueFd vm_fd, KvmSlotOptions options) noexcept;
  Result<void> apply_wanted();
  GUESTMEM_LOCAL void delete_all() noexcept;

  UniqueFd vm_fd_;
  KvmSlotOptions options_;
  std::uint32_t max_slots_ = 0;
  bool readonly_mem_ = false;
  bool manual_protect_ = false;
  KvmSyncStats last_sync_;
  std::size_t last_merge_pages_ = 0;
  std::vector<Record> records_;     // sorted by guest base
  std::vector<Wanted> wanted_;      // the scratch list of sync
  std::vector<bool> used_;          // slot numbers in use
};

/// One page a dirty ring reported: the slot and the page's index in it.
struct KvmDirtyPage {
  /// The memory slot, in address space 0 (the only one reported).
  std::uint32_t slot = 0;
  /// The page's index in the slot.
  std::uint64_t page = 0;
  /// Equal when slot and page are.
  friend constexpr bool operator==(const KvmDirtyPage&, const KvmDirtyPage&) noexcept = default;
};

/// The dirty ring of one vCPU (KVM_CAP_DIRTY_LOG_RING): KVM pushes the pages the vCPU
/// dirties, and the VMM harvests them while the vCPU runs. Moves, never copies; unmaps the
/// ring when destroyed.
/// Concurrency: one harvester per ring, concurrent with the vCPU; reset() once every ring
/// has been harvested. A vCPU whose ring is full exits with KVM_EXIT_DIRTY_RING_FULL until
/// the VMM harvests and resets.
class GUESTMEM_API KvmDirtyRing {
 public:
  /// Enables dirty rings of `bytes` bytes per vCPU on the VM `vm_fd` (KVM_ENABLE_CAP), with
  /// acquire/release ordering (KVM_CAP_DIRTY_LOG_RING_ACQ_REL) where KVM offers it. Must
  /// come before the VM's first vCPU. `bytes` is a power of two, at least a page and at most
  /// what KVM reports for the capability. The slots must log (KvmSlotOptions::log_dirty_pages).
  /// Errors: KvmCapabilityMissing(KVM_CAP_DIRTY_LOG_RING) when KVM has no rings;
  /// KvmIoctlFailed (KVM_ENABLE_CAP, the capability) with errno (EINVAL: a bad size or a
  /// vCPU exists already).
  static Result<void> enable(BorrowedFd vm_fd, std::size_t bytes = 65536);

  /// The largest ring KVM allows on `vm_fd`, in bytes; 0 when it has none.
  /// Errors: KvmIoctlFailed (KVM_CHECK_EXTENSION).
  static Result<std::size_t> max_bytes(BorrowedFd vm_fd);

  /// Maps the ring of the vCPU `vcpu_fd` (KVM_DIRTY_LOG_PAGE_OFFSET pages into the vCPU's
  /// mmap area).
  /// Preconditions: `bytes` is the size given to enable(); KVM backs no more than that, and
  /// harvesting a larger mapping would fault (SIGBUS) past the ring.
  /// Errors: MappingFailed(errno, bytes).
  /// Validity: the ring stays mapped while this object lives, even after the vCPU's
  /// descriptor is closed (the mapping keeps the vCPU).
  static Result<KvmDirtyRing> map(BorrowedFd vcpu_fd, std::size_t bytes);

  /// Takes over `other`'s ring mapping; `other` is left with none.
  KvmDirtyRing(KvmDirtyRing&& other) noexcept;
  /// Unmaps this ring, then takes over `other`'s; `other` is left with none.
  KvmDirtyRing& operator=(KvmDirtyRing&& other) noexcept;
  KvmDirtyRing(const KvmDirtyRing&) = delete;
  KvmDirtyRing& operator=(const KvmDirtyRing&) = delete;
  ~KvmDirtyRing();

  /// Takes every entry KVM has published since the last harvest, appends its page to `out`
  /// and hands the entry back to KVM (which reuses it after reset()). Returns the number of
  /// entries taken. Entries of address spaces other than 0 are taken but not appended.
  std::size_t harvest(std::vector<KvmDirtyPage>& out);
  /// As above, marking each page in the AtomicBitmap of its region in `mem`, found through
  /// the slot's guest base in `slots`; pages of slots `slots` no longer has (deleted since)
  /// or of regions `mem` lacks are taken and dropped. Returns the entries taken. No
  /// allocation.
  std::size_t harvest(const KvmMemorySlots& slots, const GuestMemoryMmap<AtomicBitmap>& mem);

  /// KVM_RESET_DIRTY_RINGS on the VM: KVM takes back the harvested entries of every ring
  /// and write-protects their pages again. Returns the entries KVM reset.
  /// Errors: KvmIoctlFailed (KVM_RESET_DIRTY_RINGS) with errno.
  static Result<std::size_t> reset(BorrowedFd vm_fd);

  /// The number of entries of the ring.
  [[nodiscard]] std::uint32_t entries() const noexcept { return entries_; }

 private:
  GUESTMEM_LOCAL KvmDirtyRing(void* ring, std::size_t bytes) noexcept;
  // Takes the entries, calling on_page(slot, page) for each of address space 0.
  template <class F>
  std::size_t take(F&& on_page);

  void* ring_ = nullptr;
  std::size_t bytes_ = 0;
  std::uint32_t entries_ = 0;
  std::uint32_t fetch_ = 0;
};

}  // namespace guestmem
