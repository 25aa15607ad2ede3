// guestmem-case-loop: runs one case of bench/cases.hpp a fixed number of times, for a profile
// that does not depend on the machine's noise. Under callgrind, the instructions counted in
// `timed_loop` divided by the iterations are the instructions per operation:
//
//   valgrind --tool=callgrind --toggle-collect='*timed_loop*' --callgrind-out-file=/dev/null
//       build/release/bench/guestmem-case-loop write_obj_big96/in_region_7 100000
//       write_all_to_slice/cross_region_6
//
// (one command line). bench/count.sh runs that for a list of cases.
//
// Usage: guestmem-case-loop CASE ITERATIONS [AFTER]
// The case runs 1000 times untimed first. AFTER, another case, runs 1000 times before that:
// the case that precedes CASE in the peer's table, since the lookup hint it leaves behind is
// part of what CASE measures there.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "cases.hpp"

namespace {

constexpr int kWarm = 1000;

struct LoopHarness {
  std::string name;
  long iterations = 0;
  std::string after;
  bool ran = false;

  [[nodiscard]] bool selected(const std::string& n) const { return n == name || n == after; }

  template <class F>
  void run(const std::string& n, std::optional<std::size_t> /*bytes*/, F op) {
    if (n == after) {
      warm(op);
    } else if (n == name) {
      warm(op);
      timed_loop(op, iterations);
      ran = true;
    }
  }

  template <class F>
  static void warm(F& op) {
    for (int i = 0; i < kWarm; ++i) {
      op();
    }
  }

  template <class F>
  [[gnu::noinline]] static void timed_loop(F& op, long iterations) {
    for (long i = 0; i < iterations; ++i) {
      op();
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s CASE ITERATIONS [AFTER]\n", argv[0]);
    return 2;
  }
  LoopHarness h{argv[1], std::atol(argv[2]), argc == 4 ? argv[3] : ""};
  guestmem::bench::all_cases(h);
  if (!h.ran) {
    std::fprintf(stderr, "no case named %s\n", argv[1]);
    return 1;
  }
  return 0;
}
