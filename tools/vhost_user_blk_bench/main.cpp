// vhost-user-blk-bench: drives any vhost-user-blk back end (guestmem's, qemu-storage-daemon)
// from a guestmem front end and prints IOPS and MB/s; --mode hostile sends malformed chains
// and reports how the back end answered each.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <map>
#include <fmt/core.h>

#include "frontend.hpp"
#include "hostile.hpp"
#include "workload.hpp"

using namespace guestmem::vhost_user_bench;

namespace {

std::uint32_t queue_size_for(std::uint32_t depth) {
  std::uint32_t size = 256;
  while (size < 3 * depth) size *= 2;
  return size;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vhost-user-blk front end: random I/O with every byte checked, or hostile chains"};
  std::string socket;
  std::uint32_t size = 4096;
  std::uint32_t depth = 32;
  std::string mode_name = "randread";
  double seconds = 5;
  std::uint64_t span = 0;
  std::uint64_t seed = 1;
  app.add_option("--socket", socket, "vhost-user socket of the back end")->required();
  app.add_option("--size", size, "bytes per request (a multiple of 512)")
      ->check(CLI::Range(512U, 1U << 20));
  app.add_option("--queue-depth", depth, "requests in flight")->check(CLI::Range(1U, 1024U));
  app.add_option("--mode", mode_name, "randread, randwrite, verify or hostile")
      ->check(CLI::IsMember({"randread", "randwrite", "verify", "hostile"}));
  app.add_option("--seconds", seconds, "length of the timed phase")->check(CLI::Range(0.0, 3600.0));
  app.add_option("--span", span, "bytes of the device to use from its start (0: all)");
  app.add_option("--seed", seed, "seed of the random block choice");
  CLI11_PARSE(app, argc, argv);

  if (mode_name == "hostile") {
    return run_hostile_cases(socket) ? 0 : 1;
  }
  const std::map<std::string, Mode> modes{
      {"randread", Mode::RandRead}, {"randwrite", Mode::RandWrite}, {"verify", Mode::Verify}};
  FrontendOptions fe_options{.socket_path = socket, .queue_depth = depth, .slot_data_size = size,
                             .queue_size = queue_size_for(depth)};
  auto frontend = Frontend::connect(fe_options);
  if (!frontend) {
    fmt::print(stderr, "vhost-user-blk-bench: {}\n", frontend.error());
    return 1;
  }
  WorkloadOptions options{.mode = modes.at(mode_name), .block_size = size, .span = span,
                          .duration = std::chrono::duration<double>(seconds), .seed = seed};
  auto result = run_workload(*frontend, options);
  if (!result) {
    fmt::print(stderr, "vhost-user-blk-bench: {}\n", result.error());
    return 1;
  }
  const double iops = static_cast<double>(result->requests) / result->seconds;
  const double mbps = static_cast<double>(result->bytes) / result->seconds / 1e6;
  fmt::print("{} size={} qd={}: {:.0f} IOPS, {:.1f} MB/s ({} requests in {:.2f} s; "
               "{} blocks checked; fill {:.2f} s)\n",
               mode_name, size, depth, iops, mbps, result->requests, result->seconds,
               result->blocks_checked, result->fill_seconds);
  fmt::print("RESULT mode={} size={} qd={} iops={:.0f} mbps={:.1f}\n", mode_name, size, depth,
               iops, mbps);
  return 0;
}
