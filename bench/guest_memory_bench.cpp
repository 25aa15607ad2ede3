// The Google Benchmark suite: every case of bench/cases.hpp (the peer's cases, under the
// peer's names). For the side-by-side comparison with vm-memory use bench/compare.sh, which
// runs guestmem-peer-bench (the same cases, printed in the peer's table format).
#include <benchmark/benchmark.h>

#include <optional>
#include <string>

#include "cases.hpp"

namespace {

struct GoogleBenchmarkHarness {
  [[nodiscard]] bool selected(const std::string& /*name*/) const { return true; }

  template <class F>
  void run(const std::string& name, std::optional<std::size_t> bytes, F op) {
    benchmark::RegisterBenchmark(name.c_str(), [op, bytes](benchmark::State& state) mutable {
      for (auto _ : state) {
        op();
      }
      if (bytes) {
        state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                                static_cast<std::int64_t>(*bytes));
      }
    });
  }
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  GoogleBenchmarkHarness harness;
  guestmem::bench::all_cases(harness);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
