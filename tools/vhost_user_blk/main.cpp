// vhost-user-blk: serves a raw image file to a vhost-user front end (QEMU's
// vhost-user-blk-pci, or guestmem's benchmark front end) over a Unix socket.
//
//   vhost-user-blk --socket /tmp/vhost.sock --image disk.img [--num-queues 2] [--read-only]
//                  [--once]
//
// It listens on the socket and serves one front end at a time; when a front end goes away it
// waits for the next one, or exits with status 0 under --once (for tests). Errors from the
// front end or guest are logged on standard error and never end the program; the exit status
// is 1 when the fault handler, the image or the socket cannot be set up, or accept fails.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include <CLI/CLI.hpp>

#include <guestmem/fault.hpp>

#include "vhost_user/backend.hpp"
#include "vhost_user/connection.hpp"
#include "vhost_user/log.hpp"

namespace {

using guestmem::UniqueFd;
namespace vu = guestmem::vhost_user;

// A listening Unix socket at `path` (an old socket file there is replaced).
UniqueFd listen_at(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    errno = ENAMETOOLONG;
    return UniqueFd();
  }
  UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (!fd) {
    return fd;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd.get(), 1) != 0) {
    return UniqueFd();
  }
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vhost-user-blk back end on guestmem"};
  std::string socket_path;
  std::string image_path;
  std::uint16_t num_queues = 1;
  bool read_only = false;
  bool once = false;
  app.add_option("--socket", socket_path, "Unix socket to listen on")->required();
  app.add_option("--image", image_path, "raw image file to serve")->required();
  app.add_option("--num-queues", num_queues, "number of request queues")
      ->check(CLI::Range(1, 64));
  app.add_flag("--read-only", read_only, "refuse writes, offer VIRTIO_BLK_F_RO");
  app.add_flag("--once", once, "exit after the first front end disconnects");
  CLI11_PARSE(app, argc, argv);

  if (auto installed = guestmem::install_fault_handler(); !installed) {
    vu::log_line(vu::format_text("cannot install the fault handler: {}", installed.error().message()));
    return 1;
  }
  auto device = vu::BlkDevice::open(image_path, vu::BlkOptions{read_only, num_queues});
  if (!device) {
    vu::log_line(vu::format_text("cannot open {}: {}", image_path, device.error().message()));
    return 1;
  }
  UniqueFd listener = listen_at(socket_path);
  if (!listener) {
    vu::log_line(vu::format_text("cannot listen on {}: errno {}", socket_path, errno));
    return 1;
  }
  vu::BlkBackend backend(*device);
  do {
    UniqueFd accepted{::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC)};
    if (!accepted) {
      if (errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      vu::log_line(vu::format_text("accept failed: errno {}", errno));
      return 1;
    }
    vu::Connection conn(std::move(accepted));
    backend.serve(conn);
  } while (!once);
  return 0;
}
