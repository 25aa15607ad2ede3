// tiny_vmm's tests: the guest's work on both processors, live migration between two
// machines (in this process, over a socketpair, and between two processes with the demo
// binary), and streams cut short at many points.
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "machine.hpp"
#include "migration.hpp"
#include "snapshot_files.hpp"

namespace tiny_vmm {
namespace {

namespace fs = std::filesystem;
using guestmem::GuestAddress;

constexpr const char* kTranscript =
    "guest: swapping the case of 8 blocks\n"
    "guest: block 0 done\nguest: block 1 done\nguest: block 2 done\nguest: block 3 done\n"
    "guest: block 4 done\nguest: block 5 done\nguest: block 6 done\nguest: block 7 done\n"
    "guest: all blocks done\n";

// A fresh directory with an input file of kNumBlocks blocks of varied bytes.
class TinyVmm : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (fs::temp_directory_path() / "tiny_vmm_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    input_ = dir_ + "/input";
    std::vector<char> bytes(std::size_t{kNumBlocks} * kBlockSize);
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      bytes[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
    }
    std::ofstream(input_, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  void TearDown() override { fs::remove_all(dir_); }

  MachineConfig config(GuestKind kind, const std::string& output) const {
    MachineConfig c;
    c.kind = kind;
    c.input_path = input_;
    c.output_path = dir_ + "/" + output;
    c.quiet = true;
    return c;
  }

  std::vector<std::byte> expected() const { return expected_output(*read_file(input_)); }

  std::string dir_;
  std::string input_;
};

// Every byte of every region.
std::vector<std::byte> contents(const Machine& vm) {
  auto guard = vm.space().memory();
  std::vector<std::byte> all;
  for (const auto& region : guard->regions()) {
    std::vector<std::byte> bytes(region.len());
    EXPECT_TRUE(guard->read_slice(std::span(bytes), region.start_addr()).has_value());
    all.insert(all.end(), bytes.begin(), bytes.end());
  }
  return all;
}

struct Pair {
  int source = -1;
  int destination = -1;
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    source = fds[0];
    destination = fds[1];
  }
  ~Pair() {
    ::close(source);
    ::close(destination);
  }
};

TEST_F(TinyVmm, ThreadGuestSwapsTheCaseOfEveryBlock) {
  auto vm = Machine::boot(config(GuestKind::Thread, "out"));
  ASSERT_TRUE(vm) << vm.error();
  ASSERT_TRUE((*vm)->run_to_halt()) << "";
  EXPECT_EQ((*vm)->device().completed(), kRequestsPerRun);
  EXPECT_EQ((*vm)->console().transcript(), kTranscript);
  EXPECT_EQ(*read_file(dir_ + "/out"), expected());
  // Odd blocks went through region 1, above the hole.
  auto guard = (*vm)->space().memory();
  auto word = guard->read_obj<std::uint32_t>(block_buffer(1));
  ASSERT_TRUE(word);
  EXPECT_EQ(block_buffer(1).raw_value(), 0x201000U);
}

// Posts one request on the ring of a machine whose guest never runs and rings the doorbell.
std::uint32_t post(Machine& vm, std::uint16_t idx, const Request& req) {
  auto guard = vm.space().memory();
  const std::uint32_t slot = idx % kRingSize;
  const auto at = kRequestTable.unchecked_add(std::uint64_t{slot} * sizeof(Request));
  EXPECT_TRUE(guard->write_obj(req, at));
  EXPECT_TRUE(guard->write_obj(guestmem::Le16(static_cast<std::uint16_t>(slot)),
                               kAvailRing.unchecked_add(2U * slot)));
  EXPECT_TRUE(guard->store<std::uint16_t>(static_cast<std::uint16_t>(idx + 1), kAvailIdx,
                                          std::memory_order_release));
  EXPECT_TRUE(vm.device().notify());
  EXPECT_EQ(*guard->load<std::uint16_t>(kUsedIdx, std::memory_order_acquire), idx + 1);
  return guard->read_obj<guestmem::Le32>(at.unchecked_add(TVM_REQ_STATUS))->to_native();
}

TEST_F(TinyVmm, DeviceFailsRequestsWithHostileFieldsAndKeepsServing) {
  auto vm = Machine::boot(config(GuestKind::Thread, "hostile"));
  ASSERT_TRUE(vm) << vm.error();
  using guestmem::Le32;
  using guestmem::Le64;
  auto req = [](std::uint32_t op, std::uint32_t len, std::uint64_t off, std::uint64_t addr) {
    return Request{Le32(op), Le32(len), Le64(off), Le64(addr), Le32(TVM_STATUS_PENDING), Le32(0)};
  };
  // A buffer in the hole, one running from region 0 into the hole, one past the end of
  // memory, an unknown op, a length over the limit, an offset past the input's end.
  EXPECT_EQ(post(**vm, 0, req(TVM_OP_READ, 4096, 0, 0x180000)), TVM_STATUS_IOERR);
  EXPECT_EQ(post(**vm, 1, req(TVM_OP_READ, 8192, 0, 0xff000)), TVM_STATUS_IOERR);
  EXPECT_EQ(post(**vm, 2, req(TVM_OP_WRITE, 4096, 0, ~std::uint64_t{0} - 100)), TVM_STATUS_IOERR);
  EXPECT_EQ(post(**vm, 3, req(7, 4096, 0, 0x20000)), TVM_STATUS_BADREQ);
  EXPECT_EQ(post(**vm, 4, req(TVM_OP_READ, 0x7fffffff, 0, 0x20000)), TVM_STATUS_BADREQ);
  EXPECT_EQ(post(**vm, 5, req(TVM_OP_READ, 4096, 1 << 20, 0x20000)), TVM_STATUS_IOERR);
  // The read that crossed into the hole moved the 4096 bytes up to it and reported them.
  auto guard = (*vm)->space().memory();
  auto used1 = guard->read_obj<UsedElem>(kUsedRing.unchecked_add(8));
  ASSERT_TRUE(used1);
  EXPECT_EQ(used1->id.to_native(), 1U);
  EXPECT_EQ(used1->len.to_native(), 4096U);
  // A good request after them is served.
  EXPECT_EQ(post(**vm, 6, req(TVM_OP_READ, 4096, 4096, 0x201000)), TVM_STATUS_OK);
  std::vector<std::byte> got(4096);
  ASSERT_TRUE(guard->read_slice(std::span(got), GuestAddress{0x201000}));
  const auto input = *read_file(input_);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), input.begin() + 4096));
  EXPECT_EQ((*vm)->device().completed(), 7U);
}

// Migrates `vm` (running or not) to a new machine in this process over a socketpair.
Status<std::pair<std::unique_ptr<Machine>, MigrationReport>> migrate_here(
    Machine& vm, MachineConfig dest_config, MigrationOptions options = {}) {
  Pair pair;
  auto incoming = std::async(std::launch::async, [&] {
    auto in = migrate_in(pair.destination, dest_config);
    // As a destination process's exit would: the source sees the end of the connection.
    ::shutdown(pair.destination, SHUT_RDWR);
    return in;
  });
  auto out = migrate_out(vm, pair.source, options, nullptr);
  auto in = incoming.get();
  if (!in) {
    return std::unexpected("destination: " + in.error());
  }
  if (!out) {
    return std::unexpected("source: " + out.error());
  }
  return std::pair{std::move(in->first), *out};
}

TEST_F(TinyVmm, ThreadGuestMigrationEndsLikeARunWithoutIt) {
  auto plain = Machine::boot(config(GuestKind::Thread, "plain"));
  ASSERT_TRUE(plain) << plain.error();
  ASSERT_TRUE((*plain)->run_to_halt());
  const std::vector<std::byte> final_memory = contents(**plain);

  for (std::uint32_t after : {1U, 6U, 13U}) {
    SCOPED_TRACE(after);
    auto cfg = config(GuestKind::Thread, "migrated" + std::to_string(after));
    cfg.io_delay = std::chrono::microseconds(2000);
    auto vm = Machine::boot(cfg);
    ASSERT_TRUE(vm) << vm.error();
    (*vm)->start();
    (*vm)->device().wait_completed(after, [] { return false; });
    auto moved = migrate_here(**vm, cfg);
    ASSERT_TRUE(moved) << moved.error();
    auto& dest = *moved->first;
    EXPECT_GE(dest.device().completed(), after);
    EXPECT_EQ(moved->second.memory_hash, memory_hash(*dest.space().memory()));
    ASSERT_TRUE(dest.run_to_halt());
    EXPECT_EQ(dest.device().completed(), kRequestsPerRun);
    EXPECT_EQ(contents(dest), final_memory);
    EXPECT_EQ(*read_file(cfg.output_path), *read_file(dir_ + "/plain"));
    EXPECT_EQ((*vm)->console().transcript() + dest.console().transcript(), kTranscript);
  }
}

TEST_F(TinyVmm, StreamCutAnywhereIsRefused) {
  // A stopped guest makes the stream the same length every time.
  auto cfg = config(GuestKind::Thread, "cut");
  auto full_vm = Machine::boot(cfg);
  ASSERT_TRUE(full_vm) << full_vm.error();
  auto full = migrate_here(**full_vm, cfg);
  ASSERT_TRUE(full) << full.error();
  const std::uint64_t total = full->second.bytes;
  // The header (24 + 2 * 16 bytes), record headers, payloads, the state, the end record and
  // its digest: cuts in each.
  const std::vector<std::uint64_t> cuts{0,         1,          55,         56,          60,
                                        80,        81,         5000,       1 << 20,     total / 2,
                                        total - 60, total - 32, total - 9, total - 8,   total - 1};
  for (std::uint64_t cut : cuts) {
    SCOPED_TRACE(cut);
    auto vm = Machine::boot(cfg);
    ASSERT_TRUE(vm) << vm.error();
    Pair pair;
    auto incoming = std::async(std::launch::async, [&] {
      auto in = migrate_in(pair.destination, cfg);
      ::shutdown(pair.destination, SHUT_RDWR);
      return in;
    });
    MigrationOptions options;
    options.cut_after = cut;
    auto out = migrate_out(**vm, pair.source, options, nullptr);
    auto in = incoming.get();
    ASSERT_FALSE(out);
    EXPECT_NE(out.error().find("cut after " + std::to_string(cut) + " bytes"), std::string::npos)
        << out.error();
    ASSERT_FALSE(in) << "a destination ran a guest from " << cut << " of " << total << " bytes";
    EXPECT_EQ(in.error().rfind("the migration stream ended after " + std::to_string(cut) +
                                   " bytes, in ",
                               0),
              0U)
        << in.error();
  }
}

TEST_F(TinyVmm, CorruptStreamIsRefused) {
  auto cfg = config(GuestKind::Thread, "corrupt");
  auto vm = Machine::boot(cfg);
  ASSERT_TRUE(vm) << vm.error();
  // A stream whose magic is wrong: refused before any memory is made.
  Pair pair;
  const std::array<char, 24> junk{'N', 'O', 'T', 'A', 'V', 'M', 'M', 0};
  ASSERT_EQ(::write(pair.source, junk.data(), junk.size()), 24);
  ::shutdown(pair.source, SHUT_WR);
  auto in = migrate_in(pair.destination, cfg);
  ASSERT_FALSE(in);
  EXPECT_EQ(in.error(), "not a tiny_vmm migration stream (bad magic)");
}

TEST_F(TinyVmm, SnapshotRestoresEagerlyAndLazily) {
  auto cfg = config(GuestKind::Thread, "snap_out");
  auto vm = Machine::boot(cfg);
  ASSERT_TRUE(vm) << vm.error();
  (*vm)->stop_after_request(7);
  (*vm)->start();
  auto end = (*vm)->wait();
  ASSERT_TRUE(end && *end == RunEnd::Stopped);
  ASSERT_EQ((*vm)->device().completed(), 7U);
  auto saved = save_machine(**vm, cfg.output_path, dir_ + "/snap");
  ASSERT_TRUE(saved) << saved.error();
  ASSERT_TRUE((*vm)->run_to_halt());
  const auto final_memory = contents(**vm);
  for (auto mode : {guestmem::RestoreMode::Eager, guestmem::RestoreMode::Lazy}) {
    auto rcfg = config(GuestKind::Thread, mode == guestmem::RestoreMode::Eager ? "e" : "l");
    auto restored = restore_machine(dir_ + "/snap", mode, rcfg);
    ASSERT_TRUE(restored) << restored.error();
    EXPECT_EQ((*restored)->device().completed(), 7U);
    ASSERT_TRUE((*restored)->run_to_halt());
    EXPECT_EQ((*restored)->device().completed(), kRequestsPerRun);
    EXPECT_EQ(contents(**restored), final_memory);
    EXPECT_EQ(*read_file(rcfg.output_path), expected());
  }
}

TEST_F(TinyVmm, KvmGuestSwapsTheCaseOfEveryBlock) {
  if (auto usable = kvm_usable(); !usable) {
    GTEST_SKIP() << "KVM is not usable here: " << usable.error();
  }
  auto vm = Machine::boot(config(GuestKind::Kvm, "kvm_out"));
  ASSERT_TRUE(vm) << vm.error();
  auto r = (*vm)->run_to_halt();
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ((*vm)->device().completed(), kRequestsPerRun);
  EXPECT_EQ((*vm)->console().transcript(), kTranscript);
  EXPECT_EQ(*read_file(dir_ + "/kvm_out"), expected());
}

TEST_F(TinyVmm, KvmGuestMigratesMidway) {
  if (auto usable = kvm_usable(); !usable) {
    GTEST_SKIP() << "KVM is not usable here: " << usable.error();
  }
  auto cfg = config(GuestKind::Kvm, "kvm_migrated");
  cfg.io_delay = std::chrono::microseconds(2000);
  auto vm = Machine::boot(cfg);
  ASSERT_TRUE(vm) << vm.error();
  (*vm)->start();
  (*vm)->device().wait_completed(5, [] { return false; });
  auto moved = migrate_here(**vm, cfg);
  ASSERT_TRUE(moved) << moved.error();
  auto r = moved->first->run_to_halt();
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(moved->first->device().completed(), kRequestsPerRun);
  EXPECT_EQ((*vm)->console().transcript() + moved->first->console().transcript(), kTranscript);
  EXPECT_EQ(*read_file(cfg.output_path), expected());
}

// ---- the demo binary: two processes.

struct Ran {
  int status = -1;
  std::string output;
};

Ran run_demo(const std::string& args) {
  Ran ran;
  const std::string command = std::string(TINY_VMM_EXE) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    return ran;
  }
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) {
    ran.output.append(buf.data(), n);
  }
  const int status = ::pclose(pipe);
  ran.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return ran;
}

TEST_F(TinyVmm, DemoMigratesToASecondProcess) {
  for (const char* transport : {"", "--tcp"}) {
    SCOPED_TRACE(transport);
    fs::remove(dir_ + "/out");
    // A slow disk and an early start leave the migration (slow under the sanitizers) 13
    // requests of 20 ms to finish in before the snapshot point.
    const Ran ran = run_demo("--guest thread --io-delay-us 20000 --max-bandwidth 0 "
                             "--migrate-after 2 --snapshot-after 15 --workdir " +
                             dir_ + " --input " + input_ + " --output " + dir_ + "/out " +
                             transport);
    ASSERT_EQ(ran.status, 0) << ran.output;
    EXPECT_NE(ran.output.find("destination: stream verified"), std::string::npos) << ran.output;
    EXPECT_NE(ran.output.find("[destination] guest: all blocks done"), std::string::npos)
        << ran.output;
    EXPECT_NE(ran.output.find("snapshot: the guest carried on from request 15 to 16"),
              std::string::npos)
        << ran.output;
    EXPECT_EQ(*read_file(dir_ + "/out"), expected());
  }
}

TEST_F(TinyVmm, DemoDestinationRefusesACutStream) {
  for (std::uint64_t cut : {10U, 3000U, 1500000U}) {
    SCOPED_TRACE(cut);
    const Ran ran = run_demo("--guest thread --io-delay-us 2000 --workdir " + dir_ + " --input " +
                             input_ + " --output " + dir_ + "/out --cut-stream-after " +
                             std::to_string(cut));
    EXPECT_EQ(ran.status, 1) << ran.output;
    EXPECT_NE(ran.output.find("destination: refusing to run the guest: the migration stream "
                              "ended after " + std::to_string(cut) + " bytes"),
              std::string::npos)
        << ran.output;
    EXPECT_NE(ran.output.find("the destination exited with status 1"), std::string::npos)
        << ran.output;
    EXPECT_EQ(ran.output.find("[destination] guest:"), std::string::npos) << ran.output;
  }
}

}  // namespace
}  // namespace tiny_vmm
