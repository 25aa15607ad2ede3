// guestmem-peer-bench: the cases of bench/cases.hpp, timed and printed exactly as the
// vm-memory peer's bench prints them (../shared/peers/rust-vm-memory/src/bin/bench.rs), so
// that bench/compare.sh can join the two tables line by line.
//
// Output: '#' comment lines, then "case ns_per_op" or, for bulk cases, "case ns_per_op
// MB_per_s" (MB = 10^6 bytes). Method (the peer's): double the iteration count until a batch
// takes >= target/8, scale it so one repetition takes ~target, run `reps` repetitions and
// print the median ns/op. Two cases that a target compares with each other (a bulk copy and
// its plain memcpy, a tracked write and the untracked one) run their repetitions in
// alternation (run_pair); each still prints its own line.
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
    const std::uint64_t iters = calibrate(op);
    std::vector<double> samples;
    for (int r = 0; r < o_.reps; ++r) {
      samples.push_back(time(op, iters) / static_cast<double>(iters));
    }
    report(name, bytes, iters, std::move(samples));
  }

  // Two cases that a target compares with each other, timed in alternation, repetition by
  // repetition (A B A B ...): two cases timed one after the other carry the machine's drift
  // between them into their ratio (up to 20 % for the 64 MiB copies here). Each case keeps
  // its own calibration and prints its own line, as run() does.
  template <class FA, class FB>
  void run_pair(const std::string& name_a, std::optional<std::size_t> bytes_a, FA op_a,
                const std::string& name_b, std::optional<std::size_t> bytes_b, FB op_b) {
    if (!selected(name_a) || !selected(name_b)) {
      run(name_a, bytes_a, std::move(op_a));
      run(name_b, bytes_b, std::move(op_b));
      return;
    }
    const std::uint64_t iters_a = calibrate(op_a);
    const std::uint64_t iters_b = calibrate(op_b);
    std::vector<double> a;
    std::vector<double> b;
    for (int r = 0; r < o_.reps; ++r) {
      a.push_back(time(op_a, iters_a) / static_cast<double>(iters_a));
      b.push_back(time(op_b, iters_b) / static_cast<double>(iters_b));
    }
    report(name_a, bytes_a, iters_a, std::move(a));
    report(name_b, bytes_b, iters_b, std::move(b));
  }

 private:
  // The peer's calibration: double the iterations until a batch takes >= target/8, then
  // scale them so that one repetition takes ~target.
  template <class F>
  [[nodiscard]] std::uint64_t calibrate(F& op) const {
    std::uint64_t iters = 1;
    for (;;) {
      const double ns = time(op, iters);
      if (ns >= o_.target_ns / 8) {
        const double per_op = ns / static_cast<double>(iters);
        return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(o_.target_ns / per_op)));
      }
      iters *= 2;
    }
  }

  void report(const std::string& name, std::optional<std::size_t> bytes, std::uint64_t iters,
              std::vector<double> samples) const {
    std::sort(samples.begin(), samples.end());
    const double median = samples[samples.size() / 2];
    if (o_.verbose) {
      std::fprintf(stderr, "# %s iters=%llu min=%.3f max=%.3f\n", name.c_str(),
                   static_cast<unsigned long long>(iters), samples.front(), samples.back());
    }
    if (bytes) {
      std::printf("%s %.2f %.1f\n", name.c_str(), median, static_cast<double>(*bytes) / median * 1e3);
    } else {
      std::printf("%s %.2f\n", name.c_str(), median);
    }
    std::fflush(stdout);
  }

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
