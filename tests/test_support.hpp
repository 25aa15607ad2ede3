// Helpers shared by the guestmem tests.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
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
