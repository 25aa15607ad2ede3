// Helpers shared by the guestmem tests.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/bitmap.hpp"
#include "guestmem/fd.hpp"

namespace guestmem::testing {

/// `n` bytes: seed, seed + 1, seed + 2, ... (mod 256).
inline std::vector<std::byte> pattern(std::size_t n, std::uint8_t seed = 0) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = static_cast<std::byte>(static_cast<std::uint8_t>(seed + i));
  }
  return out;
}

/// The given values as bytes.
template <class... T>
std::vector<std::byte> bytes(T... values) {
  return {static_cast<std::byte>(values)...};
}

/// A memfd of `size` bytes (zero-filled), or a test failure.
inline UniqueFd memfd(std::size_t size, const char* name = "guestmem-test") {
  UniqueFd fd{::memfd_create(name, MFD_CLOEXEC)};
  EXPECT_TRUE(fd.valid()) << "memfd_create failed";
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

/// One line of /proc/self/maps: a VMA of this process.
struct Vma {
  std::uintptr_t start = 0;
  std::uintptr_t end = 0;
  /// "rw-p", "---p", "r--s", ...
  std::string perms;
};

/// The VMA that holds `addr`, read from /proc/self/maps (the kernel's own view, independent
/// of guestmem), or std::nullopt when nothing is mapped there.
inline std::optional<Vma> vma_at(const void* addr) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    std::istringstream in(line);
    std::string range;
    Vma vma;
    in >> range >> vma.perms;
    const auto dash = range.find('-');
    vma.start = std::stoull(range.substr(0, dash), nullptr, 16);
    vma.end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (a >= vma.start && a < vma.end) {
      return vma;
    }
  }
  return std::nullopt;
}

/// The "VmFlags:" line of /proc/self/smaps for the VMA that holds `addr` ("rd wr mr ... hg"),
/// or "" when there is none.
inline std::string vm_flags_at(const void* addr) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream smaps("/proc/self/smaps");
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    const auto dash = line.find('-');
    const auto space = line.find(' ');
    if (dash != std::string::npos && space != std::string::npos && dash < space &&
        line.find_first_not_of("0123456789abcdef") == dash) {
      const auto start = std::stoull(line.substr(0, dash), nullptr, 16);
      const auto end = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
      inside = a >= start && a < end;
    } else if (inside && line.starts_with("VmFlags:")) {
      return line.substr(8) + " ";
    }
  }
  return "";
}

/// True when every page of [addr, addr + len) is mapped (mincore fails with ENOMEM on a
/// range that is not), whatever its protection.
inline bool is_mapped(const void* addr, std::size_t len) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> residency((len + page - 1) / page);
  return ::mincore(const_cast<void*>(addr), len, residency.data()) == 0;
}

/// How many pages of [addr, addr + len) are resident in memory (mincore).
inline std::size_t resident_pages(const void* addr, std::size_t len) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> residency((len + page - 1) / page);
  EXPECT_EQ(::mincore(const_cast<void*>(addr), len, residency.data()), 0);
  std::size_t resident = 0;
  for (unsigned char r : residency) {
    resident += r & 1U;
  }
  return resident;
}

/// A dirty bitmap that records every mark, for checking that write paths report exactly the
/// bytes they wrote. Marks are (offset from the start of the region, length). The record
/// lives on the heap, so moving the bitmap (with its region) keeps slices valid.
class RecordingBitmap {
 public:
  struct State {
    std::mutex mutex;
    std::vector<std::pair<std::size_t, std::size_t>> marks;
  };

  class Slice {
   public:
    using slice_type = Slice;
    Slice() = default;  // the inert placeholder
    Slice(std::shared_ptr<State> state, std::size_t base) : state_(std::move(state)), base_(base) {}
    void mark_dirty(std::size_t offset, std::size_t len) const {
      std::lock_guard lock(state_->mutex);
      state_->marks.emplace_back(base_ + offset, len);
    }
    [[nodiscard]] bool dirty_at(std::size_t offset) const {
      std::lock_guard lock(state_->mutex);
      for (const auto& [start, len] : state_->marks) {
        if (base_ + offset >= start && base_ + offset - start < len) {
          return true;
        }
      }
      return false;
    }
    [[nodiscard]] Slice slice_at(std::size_t offset) const { return Slice(state_, base_ + offset); }

   private:
    std::shared_ptr<State> state_;
    std::size_t base_ = 0;
  };
  using slice_type = Slice;

  static RecordingBitmap with_len(std::size_t /*len*/) { return RecordingBitmap(); }
  void mark_dirty(std::size_t offset, std::size_t len) const { slice_at(0).mark_dirty(offset, len); }
  [[nodiscard]] bool dirty_at(std::size_t offset) const { return slice_at(0).dirty_at(offset); }
  [[nodiscard]] Slice slice_at(std::size_t offset) const { return Slice(state_, offset); }

  /// The marks so far, in order; clears the record.
  std::vector<std::pair<std::size_t, std::size_t>> take() const {
    std::lock_guard lock(state_->mutex);
    return std::exchange(state_->marks, {});
  }

 private:
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

static_assert(NewBitmap<RecordingBitmap>);

using Marks = std::vector<std::pair<std::size_t, std::size_t>>;

}  // namespace guestmem::testing
