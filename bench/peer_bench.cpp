// guestmem-peer-bench: the cases of bench/cases.hpp, timed and printed exactly as the
// vm-memory peer's bench prints them (../shared/peers/rust-vm-memory/src/bin/bench.rs), so
// that bench/compare.sh can join the two tables line by line.
//
// Output: '#' comment lines, then "case ns_per_op" or, for bulk cases, "case ns_per_op
// MB_per_s" (MB = 10^6 bytes). Method (the peer's): double the iteration count until a batch
// takes >= target/8, scale it so one repetition takes ~target, run `reps` repetitions and
// print the median ns/op.
//
// Usage: guestmem-peer-bench [--target-ms N(300)] [--reps N(5)] [--filter SUBSTR]... [--verbose]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "cases.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  double target_ns = 300e6;
  int reps = 5;
  std::vector<std::string> filters;
  bool verbose = false;
};

class PeerHarness {
 public:
  explicit PeerHarness(Options options) : o_(std::move(options)) {}

  [[nodiscard]] bool selected(const std::string& name) const {
    return o_.filters.empty() || std::any_of(o_.filters.begin(), o_.filters.end(), [&](const std::string& f) {
             return name.find(f) != std::string::npos;
           });
  }

  template <class F>
  void run(const std::string& name, std::optional<std::size_t> bytes, F op) {
    if (!selected(name)) {
      return;
    }
    std::uint64_t iters = 1;
    double per_op = 0;
    for (;;) {
      const double ns = time(op, iters);
      if (ns >= o_.target_ns / 8) {
        per_op = ns / static_cast<double>(iters);
        break;
      }
      iters *= 2;
    }
    iters = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(o_.target_ns / per_op)));
    std::vector<double> samples;
    for (int r = 0; r < o_.reps; ++r) {
      samples.push_back(time(op, iters) / static_cast<double>(iters));
    }
    std::vector<double> sorted = samples;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    if (o_.verbose) {
      std::fprintf(stderr, "# %s iters=%llu min=%.3f max=%.3f\n", name.c_str(),
                   static_cast<unsigned long long>(iters), sorted.front(), sorted.back());
    }
    if (bytes) {
      std::printf("%s %.2f %.1f\n", name.c_str(), median, static_cast<double>(*bytes) / median * 1e3);
    } else {
      std::printf("%s %.2f\n", name.c_str(), median);
    }
    std::fflush(stdout);
  }

 private:
  template <class F>
  static double time(F& op, std::uint64_t iters) {
    const auto start = Clock::now();
    for (std::uint64_t i = 0; i < iters; ++i) {
      op();
    }
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
  }

  Options o_;
};

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? "unknown" : line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--target-ms") {
      o.target_ns = std::stod(value()) * 1e6;
    } else if (a == "--reps") {
      o.reps = std::stoi(value());
    } else if (a == "--filter") {
      o.filters.push_back(value());
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (a == "-h" || a == "--help") {
      std::fprintf(stderr, "usage: guestmem-peer-bench [--target-ms N(300)] [--reps N(5)] [--filter SUBSTR]... [--verbose]\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      std::exit(2);
    }
  }
  if (o.reps < 1 || o.target_ns <= 0) {
    std::fprintf(stderr, "--reps and --target-ms must be positive\n");
    std::exit(2);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::printf("# peer: guestmem (C++), GuestMemoryMmap\n");
  std::printf("# cpu: %s\n", cpu_model().c_str());
  std::printf("# method: calibrated loop ~%.0f ms per repetition, %d repetitions, median; MB = 1e6 bytes\n",
              o.target_ns / 1e6, o.reps);
  std::printf("# memory: %llu regions x %#zx bytes (anonymous, MAP_NORESERVE), ACCESS_SIZE %#zx\n",
              static_cast<unsigned long long>(guestmem::bench::kRegions), guestmem::bench::kRegionSize,
              guestmem::bench::kAccessSize);
  std::printf("# columns: case ns_per_op [MB_per_s]\n");
  PeerHarness harness(o);
  guestmem::bench::all_cases(harness);
  return 0;
}
