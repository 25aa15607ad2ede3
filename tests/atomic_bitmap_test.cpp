#include "guestmem/atomic_bitmap.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "guestmem/guest_memory.hpp"
#include "guestmem/io.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

using testing::pattern;

std::set<std::size_t> dirty_pages(const AtomicBitmap& bitmap) {
  std::set<std::size_t> out;
  for (std::size_t p = 0; p < bitmap.num_pages(); ++p) {
    if (bitmap.dirty_at(p * bitmap.page_size())) {
      out.insert(p);
    }
  }
  return out;
}

TEST(AtomicBitmap, Geometry) {
  AtomicBitmap bitmap(0x10001);
  EXPECT_EQ(bitmap.len(), 0x10001u);
  EXPECT_EQ(bitmap.page_size(), 4096u);
  EXPECT_EQ(bitmap.num_pages(), 17u);
  EXPECT_EQ(bitmap.num_words(), 1u);
  AtomicBitmap small_pages(64 * 512 + 1, 512);
  EXPECT_EQ(small_pages.num_pages(), 65u);
  EXPECT_EQ(small_pages.num_words(), 2u);
  EXPECT_EQ(AtomicBitmap::with_len(8192).num_pages(), 2u);
  EXPECT_EQ(AtomicBitmap(0).num_words(), 0u);
}

TEST(AtomicBitmapDeathTest, PageSizeMustBeAPowerOfTwo) {
  EXPECT_DEATH(AtomicBitmap(4096, 3000), "power of two");
}

TEST(AtomicBitmap, MarksEveryPageARangeTouches) {
  AtomicBitmap bitmap(200 * 4096);
  bitmap.mark_dirty(4095, 2);  // the last byte of page 0 and the first of page 1
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{0, 1}));
  bitmap.mark_dirty(62 * 4096, 3 * 4096);  // pages 62, 63, 64: across a word boundary
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{0, 1, 62, 63, 64}));
  bitmap.mark_dirty(10 * 4096, 0);  // nothing written, nothing marked
  bitmap.mark_dirty(199 * 4096 + 1, 100 * 4096);  // runs past the end: clamped
  bitmap.mark_dirty(500 * 4096, 1);  // entirely past the end: ignored
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{0, 1, 62, 63, 64, 199}));
  bitmap.mark_dirty(0, 200 * 4096);
  EXPECT_EQ(dirty_pages(bitmap).size(), 200u);
  EXPECT_FALSE(bitmap.dirty_at(200 * 4096)) << "past the end";
}

TEST(AtomicBitmap, GetAndResetReturnsKvmLayoutAndClears) {
  AtomicBitmap bitmap(130 * 4096);
  bitmap.mark_dirty(0, 1);
  bitmap.mark_dirty(65 * 4096, 1);
  bitmap.mark_dirty(129 * 4096 + 7, 1);
  EXPECT_EQ(bitmap.to_words(), (std::vector<std::uint64_t>{1, 2, 2}));
  EXPECT_EQ(bitmap.get_and_reset(), (std::vector<std::uint64_t>{1, 2, 2}));
  EXPECT_EQ(bitmap.get_and_reset(), (std::vector<std::uint64_t>{0, 0, 0}));
  EXPECT_TRUE(dirty_pages(bitmap).empty());
}

TEST(AtomicBitmap, ResetAndResetRange) {
  AtomicBitmap bitmap(128 * 4096);
  bitmap.mark_dirty(0, 128 * 4096);
  bitmap.reset_range(4096 + 1, 2 * 4096);  // pages 1, 2 and 3 (it touches 3)
  std::set<std::size_t> expected;
  for (std::size_t p = 0; p < 128; ++p) {
    if (p < 1 || p > 3) {
      expected.insert(p);
    }
  }
  EXPECT_EQ(dirty_pages(bitmap), expected);
  bitmap.reset_range(60 * 4096, 10 * 4096);  // across the word boundary
  for (std::size_t p = 60; p < 70; ++p) {
    expected.erase(p);
  }
  EXPECT_EQ(dirty_pages(bitmap), expected);
  bitmap.reset_range(127 * 4096, ~std::size_t{0} - 127 * 4096);  // to the end, no overflow
  expected.erase(127);
  EXPECT_EQ(dirty_pages(bitmap), expected);
  bitmap.reset();
  EXPECT_TRUE(dirty_pages(bitmap).empty());
}

// A range whose end passes 2^64 reaches the end of the bitmap, for marks and resets alike:
// the wrapped end must not stand in for the real one.
TEST(AtomicBitmap, RangesWhoseEndPasses2To64ReachTheEnd) {
  constexpr std::size_t kMax = ~std::size_t{0};
  AtomicBitmap bitmap(128 * 32, 32);
  // offset + len wraps to 0x10 (page 0, before the first page): pages 3..127 are touched.
  bitmap.mark_dirty(3 * 32 + 5, kMax - (3 * 32 + 5) + 0x11);
  std::set<std::size_t> expected;
  for (std::size_t p = 3; p < 128; ++p) {
    expected.insert(p);
  }
  EXPECT_EQ(dirty_pages(bitmap), expected);
  // Through a slice too: its offsets are relative to its base.
  bitmap.reset();
  bitmap.slice_at(64 * 32).mark_dirty(0, kMax);
  expected.clear();
  for (std::size_t p = 64; p < 128; ++p) {
    expected.insert(p);
  }
  EXPECT_EQ(dirty_pages(bitmap), expected);

  // A reset whose wrapped end falls in the page of its start clears to the end, not one page.
  bitmap.mark_dirty(0, 128 * 32);
  bitmap.reset_range(111 * 32 + 27, kMax);  // offset + len - 1 wraps to 111 * 32 + 25
  expected.clear();
  for (std::size_t p = 0; p < 111; ++p) {
    expected.insert(p);
  }
  EXPECT_EQ(dirty_pages(bitmap), expected);
}

TEST(AtomicBitmap, MergeFromOutside) {
  AtomicBitmap bitmap(70 * 4096);
  bitmap.mark_dirty(0, 1);
  ASSERT_TRUE(bitmap.merge(std::vector<std::uint64_t>{0x8000'0000'0000'0002, 0x21}).has_value());
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{0, 1, 63, 64, 69}));
  EXPECT_EQ(bitmap.merge(std::vector<std::uint64_t>{1}).error(),
            Error::at(ErrorCode::InvalidBitmap, 1, 2));
  EXPECT_EQ(bitmap.merge(std::vector<std::uint64_t>{0, 0x40}).error(),
            Error::at(ErrorCode::InvalidBitmap, 2, 2))
      << "bit 70 is past the last page";
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{0, 1, 63, 64, 69})) << "nothing merged";
}

TEST(AtomicBitmap, SlicesMarkRelativeToTheirOffset) {
  AtomicBitmap bitmap(16 * 4096);
  const AtomicBitmapSlice slice = bitmap.slice_at(3 * 4096 + 100);
  slice.mark_dirty(4000, 10);  // bytes 3*4096+4100 .. +4109: page 4
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{4}));
  EXPECT_TRUE(slice.dirty_at(4000));
  EXPECT_FALSE(slice.dirty_at(0));
  slice.slice_at(8192).mark_dirty(0, 1);  // 5*4096 + 100: page 5
  EXPECT_EQ(dirty_pages(bitmap), (std::set<std::size_t>{4, 5}));
  AtomicBitmap moved = std::move(bitmap);
  slice.mark_dirty(0, 1);  // page 3: the slice still reaches the moved bitmap's bits
  EXPECT_EQ(dirty_pages(moved), (std::set<std::size_t>{3, 4, 5}));
}

// Random write sequences on a tracked memory, partial writes included; the dirty pages of
// every region must be exactly those holding a byte that a write actually wrote.
// Across several summary words (each covers 64 words of 64 pages): random marks, range resets
// and merges, then get_and_reset and reset, checked page by page against a set of pages.
TEST(AtomicBitmap, GetAndResetFindsEveryDirtyWordThroughTheSummary) {
  constexpr std::size_t kPages = 64 * 64 * 3 + 5;  // three summary words and a partial fourth
  const AtomicBitmap bitmap(kPages * 4096);
  ASSERT_EQ(bitmap.num_words(), 64u * 3 + 1);
  std::set<std::size_t> model;
  std::mt19937_64 rng(7);
  auto to_pages = [&](const std::vector<std::uint64_t>& words) {
    std::set<std::size_t> pages;
    for (std::size_t w = 0; w < words.size(); ++w) {
      for (std::uint64_t bits = words[w]; bits != 0; bits &= bits - 1) {
        pages.insert(w * 64 + static_cast<std::size_t>(std::countr_zero(bits)));
      }
    }
    return pages;
  };
  for (int round = 0; round < 30; ++round) {
    for (int op = 0; op < 40; ++op) {
      const std::size_t page = rng() % kPages;
      const std::size_t count = rng() % 3 == 0 ? 1 + rng() % 200 : 1;
      switch (rng() % 4) {
        case 0:
        case 1:
          bitmap.mark_dirty(page * 4096 + rng() % 4096, (count - 1) * 4096 + 1);
          for (std::size_t p = page; p < std::min(kPages, page + count); ++p) {
            model.insert(p);
          }
          break;
        case 2:
          bitmap.reset_range(page * 4096, count * 4096);
          for (std::size_t p = page; p < std::min(kPages, page + count); ++p) {
            model.erase(p);
          }
          break;
        default: {
          std::vector<std::uint64_t> outside(bitmap.num_words(), 0);
          outside[page / 64] = std::uint64_t{1} << (page % 64);
          ASSERT_TRUE(bitmap.merge(outside).has_value());
          model.insert(page);
          break;
        }
      }
    }
    if (round % 3 == 2) {
      bitmap.reset();
      model.clear();
      EXPECT_EQ(to_pages(bitmap.to_words()), model);
      continue;
    }
    std::vector<std::uint64_t> out(bitmap.num_words(), ~std::uint64_t{0});  // stale contents
    ASSERT_TRUE(bitmap.get_and_reset(std::span(out)).has_value());
    EXPECT_EQ(to_pages(out), model) << "round " << round;
    model.clear();
    EXPECT_EQ(to_pages(bitmap.to_words()), model) << "get_and_reset left pages dirty";
  }
}

// Hot-plug on tracked memory: the new map shares the old one's regions, bitmaps included, so
// no dirty bit is lost or duplicated by insert_region and remove_region, and an inserted
// region is tracked from its first write.
TEST(AtomicBitmap, HotPlugKeepsEachRegionsDirtyPages) {
  auto built = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, 0x4000}});
  ASSERT_TRUE(built.has_value());
  const auto& mem = *built;
  ASSERT_TRUE(mem.write_obj(std::uint32_t{1}, GuestAddress{0x2000}).has_value());
  auto added = GuestRegionMmap<AtomicBitmap>::create(*MmapRegion<AtomicBitmap>::create(0x2000),
                                                     GuestAddress{0x4000});
  ASSERT_TRUE(added.has_value());
  auto bigger =
      mem.insert_region(std::make_shared<const GuestRegionMmap<AtomicBitmap>>(std::move(*added)));
  ASSERT_TRUE(bigger.has_value());
  EXPECT_EQ(bigger->write(pattern(0x20), GuestAddress{0x3ff0}), 0x20u) << "crosses into it";
  EXPECT_EQ(dirty_pages(bigger->region_ptrs()[0]->bitmap()), (std::set<std::size_t>{2, 3}));
  EXPECT_EQ(dirty_pages(mem.region_ptrs()[0]->bitmap()), (std::set<std::size_t>{2, 3}))
      << "the old map has the same region";
  EXPECT_EQ(dirty_pages(bigger->region_ptrs()[1]->bitmap()), (std::set<std::size_t>{0}));

  auto removed = bigger->remove_region(GuestAddress{0x4000}, 0x2000);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->second->bitmap().get_and_reset(), (std::vector<std::uint64_t>{1}))
      << "the removed region keeps its log for a last migration round";
  EXPECT_EQ(removed->first.write_slice(pattern(0x20), GuestAddress{0x3ff0}).error(),
            Error::partial_buffer(0x20, 0x10));
  EXPECT_EQ(removed->first.region_ptrs()[0]->bitmap().get_and_reset(),
            (std::vector<std::uint64_t>{0b1100}));
}

TEST(AtomicBitmap, DirtySetsMatchAModelBitForBit) {
  struct Range {
    std::uint64_t start;
    std::uint64_t size;
  };
  // Adjacent regions, a hole, a region that is not a page multiple.
  const std::array<Range, 4> layout{{{0x0, 0x8000}, {0x8000, 0x6000}, {0x10000, 0x3001}, {0x20000, 0x4000}}};
  std::vector<std::pair<GuestAddress, std::size_t>> ranges;
  for (const auto& r : layout) {
    ranges.emplace_back(GuestAddress{r.start}, r.size);
  }
  auto built = GuestMemoryMmap<AtomicBitmap>::from_ranges(ranges);
  ASSERT_TRUE(built.has_value());
  const auto& mem = *built;
  std::vector<std::set<std::size_t>> model(layout.size());
  auto record = [&](std::uint64_t addr, std::uint64_t n) {
    for (std::uint64_t a = addr; a < addr + n; ++a) {
      for (std::size_t i = 0; i < layout.size(); ++i) {
        if (a >= layout[i].start && a - layout[i].start < layout[i].size) {
          model[i].insert((a - layout[i].start) / 4096);
        }
      }
    }
  };
  auto available = [&](std::uint64_t addr, std::uint64_t n) {
    std::uint64_t done = 0;
    while (done < n) {
      const std::uint64_t a = addr + done;
      auto it = std::find_if(layout.begin(), layout.end(),
                             [&](const Range& r) { return a >= r.start && a - r.start < r.size; });
      if (it == layout.end()) {
        break;
      }
      done += std::min(n - done, it->start + it->size - a);
    }
    return done;
  };

  std::mt19937_64 rng(42);
  for (int round = 0; round < 40; ++round) {
    for (int op = 0; op < 50; ++op) {
      const std::uint64_t addr = rng() % 0x25000;
      const std::size_t len = rng() % 4 == 0 ? rng() % 0x5000 : rng() % 64;
      const auto data = pattern(len, static_cast<std::uint8_t>(op));
      switch (rng() % 5) {
        case 0:
          (void)mem.write(data, GuestAddress{addr});
          record(addr, available(addr, len));
          break;
        case 1:
          (void)mem.write_slice(data, GuestAddress{addr});  // partial writes keep their bytes
          record(addr, available(addr, len));
          break;
        case 2: {
          SpanReader src{data};
          (void)mem.read_volatile_from(GuestAddress{addr}, src, len);
          record(addr, available(addr, len));
          break;
        }
        case 3:
          if (mem.store<std::uint32_t>(1, GuestAddress{addr & ~std::uint64_t{3}}, std::memory_order_relaxed)) {
            record(addr & ~std::uint64_t{3}, 4);
          }
          break;
        default: {
          std::vector<std::byte> sink(len);
          (void)mem.read(sink, GuestAddress{addr});  // reads never mark
          (void)mem.read_obj<std::uint64_t>(GuestAddress{addr});
          break;
        }
      }
    }
    for (std::size_t i = 0; i < layout.size(); ++i) {
      const AtomicBitmap& bitmap = mem.region_ptrs()[i]->bitmap();
      ASSERT_EQ(dirty_pages(bitmap), model[i]) << "round " << round << " region " << i;
      if (round % 3 == 0) {
        const auto words = bitmap.get_and_reset();
        std::set<std::size_t> reported;
        for (std::size_t w = 0; w < words.size(); ++w) {
          for (std::size_t b = 0; b < 64; ++b) {
            if ((words[w] >> b) & 1U) {
              reported.insert(w * 64 + b);
            }
          }
        }
        ASSERT_EQ(reported, model[i]);
        model[i].clear();
      }
    }
  }
}

// Live migration in miniature: writers write pages while a migrator repeatedly takes the
// dirty pages and copies them. After each burst of writes, the writers stop, one last round
// runs, and the copy must equal the memory: a lost dirty bit leaves a stale page. Bursts
// are short so that a lost bit is often the last one its page gets.
TEST(AtomicBitmapConcurrency, GetAndResetUnderWritersLosesNoDirtyBit) {
  constexpr std::size_t kPages = 256;
  auto built = GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, kPages * 4096}});
  ASSERT_TRUE(built.has_value());
  const auto& mem = *built;
  const AtomicBitmap& bitmap = mem.region_ptrs()[0]->bitmap();
  std::vector<std::uint64_t> copy(kPages, 0);
  auto migrate_round = [&] {
    const auto words = bitmap.get_and_reset();
    for (std::size_t p = 0; p < kPages; ++p) {
      if ((words[p / 64] >> (p % 64)) & 1U) {
        copy[p] = *mem.read_obj<std::uint64_t>(GuestAddress{p * 4096});
      }
    }
  };

  std::array<std::uint64_t, 2> counters{std::uint64_t{0} << 60, std::uint64_t{1} << 60};
  int rounds = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1000);
  for (int burst = 0; std::chrono::steady_clock::now() < deadline; ++burst) {
    std::atomic<int> running{2};
    std::vector<std::thread> writers;
    for (int w = 0; w < 2; ++w) {
      writers.emplace_back([&, w] {
        std::mt19937_64 rng(static_cast<std::uint64_t>(burst * 2 + w));
        for (int i = 0; i < 2000; ++i) {
          // Each writer owns half of the pages, so a page's last value is well defined.
          const std::size_t page = (rng() % (kPages / 2)) * 2 + static_cast<std::size_t>(w);
          // EXPECT, not ASSERT: a writer that returned early would leave `running` above
          // zero and the migrator waiting for ever.
          EXPECT_TRUE(mem.write_obj(++counters[static_cast<std::size_t>(w)],
                                    GuestAddress{page * 4096})
                          .has_value());
        }
        running.fetch_sub(1);
      });
    }
    while (running.load() > 0) {
      migrate_round();
      ++rounds;
    }
    for (auto& t : writers) {
      t.join();
    }
    migrate_round();
    for (std::size_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(copy[p], *mem.read_obj<std::uint64_t>(GuestAddress{p * 4096}))
          << "page " << p << " in burst " << burst << " after " << rounds << " rounds";
    }
  }
  EXPECT_GT(rounds, 10);
}

// What the writer threads of the reset stress tests mark in each word of the bitmap.
enum class OtherWriters {
  // One of pages 1..63 of the word, never page 0: the main thread's mark of page 0 does its
  // fetch_or and finds the word already non-zero.
  OtherPagesOfTheWord,
  // Pages 0..n for a growing n: the main thread's mark of page 0 often finds its bit already
  // set and does no atomic read-modify-write at all. (Each mark still sets a new bit, so that
  // the writers keep the pace of the other case.)
  PageZeroToo,
};

// The words of the reset stress tests' bitmaps: 64 pages each, four summary words.
constexpr std::size_t kStressWords = 256;

// Four writer threads keep re-dirtying every word of a kStressWords-word bitmap while the main
// thread marks page 0 of every word through `mark_page_0(word)` and then calls get_and_reset.
// Those marks returned before the reset started and nothing else resets the bitmap, so every
// reset must report page 0 of every word; returns how many times one did not, and the rounds
// run in `rounds`.
//
// A word is at risk right after a reset, while the writer that makes it non-zero again has
// not yet recorded that in the summary; the window is a few instructions long. Two more
// threads sleep for a few microseconds and then spin, so that the scheduler switches writers
// out at arbitrary instructions far more often than its time slices would, and sometimes
// inside that window. Threads are started afresh for each of several short bursts, because how
// the scheduler places them changes how often that happens.
template <class MarkPage0>
int page_0s_missed_by_resets(const AtomicBitmap& bitmap, OtherWriters others,
                             MarkPage0 mark_page_0, int& rounds) {
  constexpr int kBursts = 6;
  constexpr auto kBurstTime = std::chrono::milliseconds(150);
  constexpr int kMinRoundsPerBurst = 100;
  int missed = 0;
  rounds = 0;
  for (int burst = 0; burst < kBursts; ++burst) {
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> writer_marks{0};
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::uint64_t marks = 0;
        for (std::size_t i = t; !stop.load(std::memory_order_relaxed); ++i) {
          const std::size_t word = i % kStressWords;
          const std::size_t n = 1 + (i / kStressWords) % 63;
          if (others == OtherWriters::PageZeroToo) {
            bitmap.mark_dirty(word * 64 * bitmap.page_size(), (n + 1) * bitmap.page_size());
          } else {
            bitmap.mark_dirty((word * 64 + n) * bitmap.page_size(), 1);
          }
          ++marks;
        }
        writer_marks.fetch_add(marks);
      });
    }
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&] {
        while (!stop.load(std::memory_order_relaxed)) {
          std::this_thread::sleep_for(std::chrono::microseconds(10));
          const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
          while (std::chrono::steady_clock::now() < until) {
          }
        }
      });
    }
    const auto deadline = std::chrono::steady_clock::now() + kBurstTime;
    for (int r = 0; r < kMinRoundsPerBurst || std::chrono::steady_clock::now() < deadline;
         ++r, ++rounds) {
      for (std::size_t w = 0; w < kStressWords; ++w) {
        mark_page_0(w);
      }
      const std::vector<std::uint64_t> words = bitmap.get_and_reset();
      for (std::size_t w = 0; w < kStressWords; ++w) {
        if ((words[w] & 1U) == 0) {
          ++missed;
        }
      }
    }
    stop.store(true);
    for (auto& t : threads) {
      t.join();
    }
    // The writers ran throughout: without them the test checks nothing concurrent.
    EXPECT_GT(writer_marks.load(), std::uint64_t{kMinRoundsPerBurst});
  }
  return missed;
}

// A write that returned before get_and_reset started is reported by it, even while another
// writer has made the word non-zero and not yet recorded that in the summary.
TEST(AtomicBitmapConcurrency, ResetReportsEveryWriteThatReturnedBeforeIt) {
  const AtomicBitmap bitmap(kStressWords * 64 * 4096);
  int rounds = 0;
  const int missed = page_0s_missed_by_resets(
      bitmap, OtherWriters::OtherPagesOfTheWord,
      [&](std::size_t w) { bitmap.mark_dirty(w * 64 * 4096 + 100, 8); }, rounds);
  EXPECT_EQ(missed, 0) << "pages written just before a reset and not reported by it, in "
                       << rounds << " rounds of " << kStressWords << " pages";
}

// As above, when the write finds its bit already set by a writer that has not yet recorded
// the word in the summary: the write must not return before the summary has its bit.
TEST(AtomicBitmapConcurrency, ResetReportsAWriteThatFoundItsBitAlreadySet) {
  const AtomicBitmap bitmap(kStressWords * 64 * 4096);
  int rounds = 0;
  const int missed = page_0s_missed_by_resets(
      bitmap, OtherWriters::PageZeroToo,
      [&](std::size_t w) { bitmap.mark_dirty(w * 64 * 4096 + 100, 8); }, rounds);
  EXPECT_EQ(missed, 0) << "pages written just before a reset and not reported by it, in "
                       << rounds << " rounds of " << kStressWords << " pages";
}

// The same guarantee through the write path of tracked guest memory.
TEST(AtomicBitmapConcurrency, ResetReportsEveryGuestWriteThatReturnedBeforeIt) {
  auto built =
      GuestMemoryMmap<AtomicBitmap>::from_ranges({{GuestAddress{0}, kStressWords * 64 * 4096}});
  ASSERT_TRUE(built.has_value());
  const auto& mem = *built;
  const AtomicBitmap& bitmap = mem.region_ptrs()[0]->bitmap();
  int rounds = 0;
  std::uint64_t value = 0;
  const int missed = page_0s_missed_by_resets(
      bitmap, OtherWriters::OtherPagesOfTheWord,
      [&](std::size_t w) {
        EXPECT_TRUE(mem.write_obj(++value, GuestAddress{w * 64 * 4096 + 0x100}).has_value());
      },
      rounds);
  EXPECT_EQ(missed, 0) << "pages written just before a reset and not reported by it, in "
                       << rounds << " rounds of " << kStressWords << " pages";
}

}  // namespace
}  // namespace guestmem
