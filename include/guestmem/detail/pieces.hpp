// guestmem internals: the range interface shared by the sequences of pieces that collections
// hand out (GuestMemoryMmap::get_slices, IommuMemory::get_slices).
#pragma once

#include <cstddef>
#include <iterator>
#include <optional>
#include <utility>

#include "guestmem/error.hpp"

namespace guestmem::detail {

/// An input iterator over anything with `std::optional<Item> next()`.
template <class Source>
class NextIterator {
 public:
  using value_type = typename decltype(std::declval<Source&>().next())::value_type;
  using difference_type = std::ptrdiff_t;

  NextIterator() = default;
  explicit NextIterator(Source* source) : source_(source), current_(source->next()) {}

  const value_type& operator*() const { return *current_; }
  const value_type* operator->() const { return &*current_; }
  NextIterator& operator++() {
    current_ = source_->next();
    return *this;
  }
  void operator++(int) { ++*this; }
  friend bool operator==(const NextIterator& it, std::default_sentinel_t) {
    return !it.current_.has_value();
  }

 private:
  Source* source_ = nullptr;
  std::optional<value_type> current_;
};

/// What every sequence of pieces offers, given its `std::optional<Result<Slice>> next()`
/// (the next piece, an error after which nothing follows, or std::nullopt at the end):
/// iteration over the items and stop_on_error.
template <class Derived, class Slice>
class PieceSequence {
 public:
  class StopOnError;

  /// The pieces as a range of Result<Slice>.
  NextIterator<Derived> begin() { return NextIterator<Derived>(&derived()); }
  std::default_sentinel_t end() const noexcept { return {}; }

  /// Ends the sequence quietly at the first error after at least one piece.
  /// Errors: the first item's error, when the very first piece is missing.
  Result<StopOnError> stop_on_error() && {
    auto first = derived().next();
    if (first && !first->has_value()) {
      return std::unexpected(first->error());
    }
    std::optional<Slice> head;
    if (first) {
      head.emplace(std::move(**first));
    }
    return StopOnError(std::move(derived()), std::move(head));
  }

 private:
  Derived& derived() noexcept { return static_cast<Derived&>(*this); }
};

/// A sequence of pieces that ends at the end of the range or at the first failure (a hole,
/// a refused access), which it keeps to itself.
template <class Derived, class Slice>
class PieceSequence<Derived, Slice>::StopOnError {
 public:
  StopOnError(Derived rest, std::optional<Slice> head) noexcept
      : rest_(std::move(rest)), head_(std::move(head)) {}

  std::optional<Slice> next() {
    if (head_) {
      return std::exchange(head_, std::nullopt);
    }
    auto item = rest_.next();
    if (!item || !item->has_value()) {
      return std::nullopt;
    }
    return std::move(**item);
  }

  NextIterator<StopOnError> begin() { return NextIterator<StopOnError>(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  Derived rest_;
  std::optional<Slice> head_;
};

}  // namespace guestmem::detail
