// tiny_vmm: a demo VMM on guestmem. It boots a small guest (guest.S) on KVM, or on a host
// thread that plays the guest where /dev/kvm is not usable; the guest copies blocks of a file
// through a block device on a ring in its memory, swapping their case. Midway the VMM
// live-migrates the guest to a second process (itself, started with --incoming), which
// finishes the work, saves a snapshot on the way, and the first process then restores that
// snapshot eagerly and lazily and lets the guest carry on from it.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "machine.hpp"
#include "migration.hpp"
#include "snapshot_files.hpp"

namespace {

using namespace tiny_vmm;

struct Options {
  std::string guest = "auto";
  std::string workdir;
  std::string input;
  std::string output;
  std::string incoming;
  bool tcp = false;
  bool no_migrate = false;
  std::uint32_t io_delay_us = 10000;
  std::uint32_t migrate_after = 4;
  std::uint32_t snapshot_after = 12;
  double max_mbps = 100;
  std::uint32_t max_rounds = 6;
  std::uint64_t stop_copy_pages = 1;
  std::uint64_t cut_after = std::numeric_limits<std::uint64_t>::max();
};

// printf to stdout, flushed at once: the destination process prints to the same terminal.
[[gnu::format(printf, 1, 2)]] void say(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
  std::fflush(stdout);
}

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "tiny_vmm: %s\n", message.c_str());
  std::exit(1);
}

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// The input: kNumBlocks blocks of lines of letters, whose swapped case shows in the output.
Status<void> write_input(const std::string& path) {
  std::string text;
  const std::size_t total = std::size_t{kNumBlocks} * kBlockSize;
  while (text.size() < total) {
    text += "TheQuickBrownFoxJumpsOverTheLazyDog\n";
  }
  text.resize(total);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) {
    return std::unexpected("writing the input file " + path + " failed");
  }
  return {};
}

GuestKind choose_guest(const std::string& which) {
  if (which == "thread") {
    return GuestKind::Thread;
  }
  auto usable = kvm_usable();
  if (which == "kvm") {
    if (!usable) {
      die("--guest kvm: " + usable.error());
    }
    return GuestKind::Kvm;
  }
  if (!usable) {
    say("tiny_vmm: KVM is not usable here (%s); the guest runs as a host thread\n",
        usable.error().c_str());
    return GuestKind::Thread;
  }
  return GuestKind::Kvm;
}

MachineConfig machine_config(const Options& o, GuestKind kind, const std::string& output,
                             const char* prefix) {
  MachineConfig c;
  c.kind = kind;
  c.input_path = o.input;
  c.output_path = output;
  c.io_delay = std::chrono::microseconds(o.io_delay_us);
  c.console_prefix = prefix;
  return c;
}

Status<void> check_output(const Options& o, const std::string& output, const char* what) {
  auto input = read_file(o.input);
  auto got = read_file(output);
  if (!input || !got) {
    return std::unexpected(!input ? input.error() : got.error());
  }
  if (*got != expected_output(*input)) {
    return std::unexpected(std::string(what) + ": the output file " + output +
                           " differs from the expected transformation of the input");
  }
  return {};
}

// ---- the destination (--incoming)

int run_destination(const Options& o) {
  const std::string& addr = o.incoming;
  int fd = -1;
  if (addr.starts_with("unix:")) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    const std::string path = addr.substr(5);
    if (path.size() >= sizeof sa.sun_path) {
      die("--incoming: the socket path is too long");
    }
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
      die(errno_text("destination: connecting to " + path));
    }
  } else if (addr.starts_with("tcp:")) {
    const std::string rest = addr.substr(4);
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos) {
      die("--incoming tcp:HOST:PORT expected");
    }
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(std::stoi(rest.substr(colon + 1))));
    if (::inet_pton(AF_INET, rest.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
      die("--incoming: bad IPv4 address " + rest.substr(0, colon));
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
      die(errno_text("destination: connecting to " + rest));
    }
  } else {
    die("--incoming expects unix:PATH or tcp:HOST:PORT");
  }

  auto incoming = migrate_in(fd, machine_config(o, GuestKind::Thread, o.output, "[destination] "));
  ::close(fd);
  if (!incoming) {
    std::fprintf(stderr, "tiny_vmm: destination: refusing to run the guest: %s\n",
                 incoming.error().c_str());
    return 1;
  }
  auto& [vm, report] = *incoming;
  say("destination: stream verified (%" PRIu64 " bytes, %" PRIu64
      " pages, memory xxh3 %016" PRIx64 "); resuming the guest after request %u\n",
      report.bytes, report.pages, report.memory_hash, vm->device().completed());

  const std::string snapshot = o.workdir + "/guest.snap";
  if (o.snapshot_after > vm->device().completed()) {
    vm->stop_after_request(o.snapshot_after);
    vm->start();
    auto end = vm->wait();
    if (!end) {
      die("destination: " + end.error());
    }
    if (*end == RunEnd::Stopped) {
      auto saved = save_machine(*vm, o.output, snapshot);
      if (!saved) {
        die("destination: " + saved.error());
      }
      say("destination: snapshot after request %u: %s (%" PRIu64 " pages of data, %" PRIu64
          " bytes)\n",
          vm->device().completed(), snapshot.c_str(), saved->pages_present, saved->file_size);
    }
  }
  if (!vm->halted()) {
    if (auto r = vm->run_to_halt(); !r) {
      die("destination: " + r.error());
    }
  }
  say("destination: the guest halted after %u requests\n", vm->device().completed());
  return 0;
}

// ---- the source

struct Listener {
  int fd = -1;
  std::string address;  // for --incoming
};

Listener listen_on(const Options& o) {
  Listener l;
  if (o.tcp) {
    l.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (::bind(l.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || ::listen(l.fd, 1) < 0 ||
        ::getsockname(l.fd, reinterpret_cast<sockaddr*>(&sa), &len) < 0) {
      die(errno_text("listening on 127.0.0.1"));
    }
    l.address = "tcp:127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
    return l;
  }
  const std::string path = o.workdir + "/migration.sock";
  ::unlink(path.c_str());
  l.fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    die("the socket path " + path + " is too long (use a shorter --workdir)");
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  if (::bind(l.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || ::listen(l.fd, 1) < 0) {
    die(errno_text("listening on " + path));
  }
  l.address = "unix:" + path;
  return l;
}

pid_t spawn_destination(const Options& o, GuestKind kind, const std::string& address) {
  std::vector<std::string> args{"tiny_vmm",
                                "--incoming", address,
                                "--guest", to_string(kind),
                                "--workdir", o.workdir,
                                "--input", o.input,
                                "--output", o.output,
                                "--io-delay-us", std::to_string(o.io_delay_us),
                                "--snapshot-after", std::to_string(o.snapshot_after)};
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execv("/proc/self/exe", argv.data());
    std::fprintf(stderr, "tiny_vmm: exec of the destination failed: %s\n", std::strerror(errno));
    ::_exit(127);
  }
  if (pid < 0) {
    die(errno_text("fork"));
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The first line of the input and the same bytes of the output, non-printing bytes as '.'.
void show_first_line(const std::string& input, const std::string& output) {
  auto in = read_file(input);
  auto out = read_file(output);
  if (!in || !out) {
    return;
  }
  std::string a;
  std::string b;
  for (std::size_t i = 0; i < std::min<std::size_t>({in->size(), out->size(), 60}); ++i) {
    const auto c = static_cast<unsigned char>((*in)[i]);
    if (c == '\n') {
      break;
    }
    const auto d = static_cast<unsigned char>((*out)[i]);
    a += static_cast<char>(c >= 0x20 && c < 0x7f ? c : '.');
    b += static_cast<char>(d >= 0x20 && d < 0x7f ? d : '.');
  }
  say("  input:  %s...\n  output: %s...\n", a.c_str(), b.c_str());
}

int run_source(const Options& o, GuestKind kind) {
  auto vm = Machine::boot(machine_config(o, kind, o.output, "[source] "));
  if (!vm) {
    die(vm.error());
  }
  if (o.no_migrate) {
    if (auto r = (*vm)->run_to_halt(); !r) {
      die(r.error());
    }
    if (auto r = check_output(o, o.output, "run"); !r) {
      die(r.error());
    }
    say("done: the guest halted after %u requests; the output is the input with its case "
        "swapped\n", (*vm)->device().completed());
    return 0;
  }

  Listener listener = listen_on(o);
  const pid_t child = spawn_destination(o, kind, listener.address);
  pollfd pfd{listener.fd, POLLIN, 0};
  if (::poll(&pfd, 1, 10000) != 1) {
    die("the destination process did not connect within 10 s");
  }
  const int conn = ::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (conn < 0) {
    die(errno_text("accept"));
  }
  ::close(listener.fd);
  say("source: destination process %d connected over %s\n", static_cast<int>(child),
      listener.address.c_str());

  (*vm)->start();
  (*vm)->device().wait_completed(o.migrate_after, [] { return false; });
  say("source: live migration starts after request %u, the guest still running\n",
      (*vm)->device().completed());
  MigrationOptions mo;
  mo.max_mbps = o.max_mbps;
  mo.max_rounds = o.max_rounds;
  mo.stop_copy_pages = o.stop_copy_pages;
  mo.cut_after = o.cut_after;
  auto report = migrate_out(**vm, conn, mo, [](const RoundReport& r) {
    if (r.round == 0) {
      say("  stop-and-copy: %" PRIu64 " pages and the machine state, %" PRIu64
          " bytes in %.2f ms\n",
          r.pages_sent, r.bytes, r.seconds * 1e3);
    } else {
      say("  round %u: %" PRIu64 " pages sent, %" PRIu64 " pages still dirty, %.0f MB/s\n",
          r.round, r.pages_sent, r.pages_dirty, r.mbps);
    }
  });
  ::close(conn);
  if (!report) {
    const int code = wait_child(child);
    die("migration failed: " + report.error() + "; the destination exited with status " +
        std::to_string(code));
  }
  say("source: handed over after %u requests: %" PRIu64 " bytes in %u live rounds + "
      "stop-and-copy; downtime %.2f ms\n",
      (*vm)->device().completed(), report->bytes, report->live_rounds, report->downtime_ms);
  vm->reset();

  if (const int code = wait_child(child); code != 0) {
    die("the destination failed with status " + std::to_string(code));
  }
  if (auto r = check_output(o, o.output, "migrated run"); !r) {
    die(r.error());
  }
  say("source: the destination's output is the input with its case swapped\n");
  show_first_line(o.input, o.output);

  if (o.snapshot_after == 0 || o.snapshot_after >= kRequestsPerRun) {
    return 0;
  }
  const std::string snapshot = o.workdir + "/guest.snap";
  if (!std::filesystem::exists(snapshot)) {
    say("snapshot: none; the guest was past request %u when it reached the destination\n",
        o.snapshot_after);
    return 0;
  }
  for (auto mode : {guestmem::RestoreMode::Eager, guestmem::RestoreMode::Lazy}) {
    const bool eager = mode == guestmem::RestoreMode::Eager;
    const std::string out = o.output + (eager ? ".eager" : ".lazy");
    const char* prefix = eager ? "[restored eagerly] " : "[restored lazily] ";
    auto restored = restore_machine(snapshot, mode, machine_config(o, kind, out, prefix));
    if (!restored) {
      die(restored.error());
    }
    const std::uint32_t from = (*restored)->device().completed();
    say("snapshot: restored %s into a fresh %s machine at request %u\n",
        eager ? "eagerly" : "lazily", to_string(kind), from);
    if (auto r = (*restored)->run_to_halt(); !r) {
      die(r.error());
    }
    if (auto r = check_output(o, out, eager ? "eager restore" : "lazy restore"); !r) {
      die(r.error());
    }
    say("snapshot: the guest carried on from request %u to %u; its output equals the "
        "migrated run's\n", from, (*restored)->device().completed());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tiny_vmm: a demo VMM on guestmem: a guest on KVM (or a host thread), live "
               "migration to a second process, snapshots"};
  Options o;
  app.add_option("--guest", o.guest, "what runs the guest: kvm, thread (a host thread doing "
                                     "the same ring protocol) or auto (kvm when usable)")
      ->check(CLI::IsMember({"auto", "kvm", "thread"}))
      ->capture_default_str();
  app.add_option("--workdir", o.workdir,
                 "directory for the input, output, socket and snapshot files (default: a new "
                 "directory under $TMPDIR or /tmp)");
  app.add_option("--input", o.input, "the block device's input file (default: WORKDIR/input.txt, "
                                     "generated)");
  app.add_option("--output", o.output, "the block device's output file (default: "
                                       "WORKDIR/output.txt)");
  app.add_flag("--tcp", o.tcp, "migrate over TCP on 127.0.0.1 instead of a Unix socket");
  app.add_flag("--no-migrate", o.no_migrate, "run the guest to its end in this process only");
  app.add_option("--io-delay-us", o.io_delay_us,
                 "the block device's delay after each request, in microseconds (a slow disk "
                 "makes the guest's work span time)")
      ->capture_default_str();
  app.add_option("--migrate-after", o.migrate_after,
                 "start the live migration once this many requests completed (of 16)")
      ->check(CLI::Range(0U, kRequestsPerRun - 1))
      ->capture_default_str();
  app.add_option("--snapshot-after", o.snapshot_after,
                 "the destination saves a snapshot after this many requests (0: none)")
      ->check(CLI::Range(0U, kRequestsPerRun - 1))
      ->capture_default_str();
  app.add_option("--max-bandwidth", o.max_mbps,
                 "pace the live rounds to this many MB/s (0: unlimited)")
      ->capture_default_str();
  app.add_option("--max-rounds", o.max_rounds, "live rounds at most before stop-and-copy")
      ->check(CLI::Range(1U, 100U))
      ->capture_default_str();
  app.add_option("--stop-copy-pages", o.stop_copy_pages,
                 "stop the guest for the final copy once a live round leaves at most this many "
                 "pages dirty")
      ->capture_default_str();
  app.add_option("--incoming", o.incoming,
                 "run as the migration destination, reading the stream from unix:PATH or "
                 "tcp:HOST:PORT (the source starts this itself)");
  app.add_option("--cut-stream-after", o.cut_after,
                 "test hook: the source closes the migration stream after this many bytes");
  CLI11_PARSE(app, argc, argv);

  if (o.workdir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr ? tmp : "/tmp") + "/tiny_vmm.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      die(errno_text("creating a work directory"));
    }
    o.workdir = templ;
  }
  if (o.input.empty()) {
    o.input = o.workdir + "/input.txt";
    if (auto r = write_input(o.input); !r) {
      die(r.error());
    }
  }
  if (o.output.empty()) {
    o.output = o.workdir + "/output.txt";
  }
  if (!o.incoming.empty()) {
    return run_destination(o);
  }
  // A fresh output file (the guest writes every block of it) and no snapshot of an earlier
  // run in a reused work directory.
  std::filesystem::remove(o.output);
  std::filesystem::remove(o.workdir + "/guest.snap");
  const GuestKind kind = choose_guest(o.guest);
  say("tiny_vmm: guest on %s; memory 0-1 MiB and 2-3 MiB; work in %s\n",
      kind == GuestKind::Kvm ? "KVM (one vCPU)" : "a host thread", o.workdir.c_str());
  return run_source(o, kind);
}
