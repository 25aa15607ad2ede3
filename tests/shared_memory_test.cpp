#include "guestmem/shared_memory.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include "guestmem/mmap_region.hpp"
#include "test_support.hpp"

namespace guestmem {
namespace {

// The size of the file behind `fd`, read with fstat.
off_t file_size(int fd) {
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  return st.st_size;
}

// A second open file description of `fd` (as a peer that opened it through /proc would
// hold), read-write.
UniqueFd reopen(int fd) {
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  UniqueFd peer{::open(path.c_str(), O_RDWR | O_CLOEXEC)};
  EXPECT_TRUE(peer.valid()) << std::strerror(errno);
  return peer;
}

TEST(SharedMemory, CreateNamesAndSizesAMemfd) {
  auto shm = SharedMemory::create("guest-ram", 0x3000);
  ASSERT_TRUE(shm.has_value()) << shm.error();
  EXPECT_EQ(shm->size(), 0x3000u);
  EXPECT_EQ(file_size(shm->fd()), 0x3000);
  std::array<char, 64> target{};
  const std::string link = "/proc/self/fd/" + std::to_string(shm->fd());
  const ssize_t n = ::readlink(link.c_str(), target.data(), target.size() - 1);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(target.data(), static_cast<std::size_t>(n)), "/memfd:guest-ram (deleted)");
  EXPECT_EQ(::fcntl(shm->fd(), F_GETFD), FD_CLOEXEC);
  std::uint64_t word = 1;
  ASSERT_EQ(::pread(shm->fd(), &word, 8, 0x2ff8), 8);
  EXPECT_EQ(word, 0u);
  EXPECT_EQ(shm->seals(), Seal::None);
}

TEST(SharedMemory, BadNamesAreRefused) {
  using namespace std::string_view_literals;
  EXPECT_EQ(SharedMemory::create("a\0b"sv, 0x1000).error(), Error::io(EINVAL));
  EXPECT_EQ(SharedMemory::create(std::string(250, 'n'), 0x1000).error(), Error::io(EINVAL));
  EXPECT_TRUE(SharedMemory::create(std::string(249, 'n'), 0x1000).has_value());
  EXPECT_EQ(SharedMemory::create("big", std::uint64_t{1} << 63).error(), Error::io(EINVAL));
}

TEST(SharedMemory, ResizeGrowsAndShrinks) {
  auto shm = SharedMemory::create("resize", 0x1000);
  ASSERT_TRUE(shm.has_value());
  ASSERT_TRUE(shm->resize(0x5000).has_value());
  EXPECT_EQ(file_size(shm->fd()), 0x5000);
  EXPECT_EQ(shm->size(), 0x5000u);
  ASSERT_TRUE(shm->resize(0x2000).has_value());
  EXPECT_EQ(file_size(shm->fd()), 0x2000);
}

TEST(SharedMemory, SealedSizeHoldsAgainstEveryDescriptor) {
  auto shm = SharedMemory::create("sealed", 0x2000);
  ASSERT_TRUE(shm.has_value());
  UniqueFd peer = reopen(shm->fd());
  ASSERT_TRUE(shm->add_seals(Seal::Shrink | Seal::Grow).has_value());
  EXPECT_EQ(shm->seals(), Seal::Shrink | Seal::Grow);

  EXPECT_EQ(shm->resize(0x1000).error(), Error::io(EPERM));
  EXPECT_EQ(shm->resize(0x3000).error(), Error::io(EPERM));
  errno = 0;
  EXPECT_EQ(::ftruncate(shm->fd(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_EQ(::ftruncate(peer.get(), 0), -1) << "a peer's own descriptor cannot truncate it";
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(file_size(peer.get()), 0x2000);

  // Writes are still allowed: only the size is sealed.
  const std::uint32_t value = 0xfeedf00d;
  EXPECT_EQ(::pwrite(peer.get(), &value, 4, 0x1ffc), 4);
}

TEST(SharedMemory, NoMoreSealsForbidsFurtherSeals) {
  auto shm = SharedMemory::create("final", 0x1000);
  ASSERT_TRUE(shm.has_value());
  ASSERT_TRUE(shm->add_seals(Seal::Grow | Seal::NoMoreSeals).has_value());
  EXPECT_EQ(shm->add_seals(Seal::Shrink).error(), Error::io(EPERM));
  EXPECT_EQ(shm->seals(), Seal::Grow | Seal::NoMoreSeals);
  EXPECT_TRUE(shm->resize(0x800).has_value()) << "shrinking is not sealed";
}

TEST(SharedMemory, WriteSealNeedsNoWritableMapping) {
  auto shm = SharedMemory::create("write-seal", 0x1000);
  ASSERT_TRUE(shm.has_value());
  {
    auto region = MmapRegionBuilder<>(0x1000).from_shared_memory(*shm).build();
    ASSERT_TRUE(region.has_value()) << region.error();
    EXPECT_EQ(shm->add_seals(Seal::Write).error(), Error::io(EBUSY));
  }
  ASSERT_TRUE(shm->add_seals(Seal::Write).has_value());
  const std::uint8_t byte = 1;
  errno = 0;
  EXPECT_EQ(::pwrite(shm->fd(), &byte, 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
}

TEST(SharedMemory, MappingsShareTheBytesAndKeepTheDescriptor) {
  auto shm = SharedMemory::create("shared", 0x3000);
  ASSERT_TRUE(shm.has_value());
  const std::uint64_t in_file = 0x0123456789abcdef;
  ASSERT_EQ(::pwrite(shm->fd(), &in_file, 8, 0x2008), 8);
  auto region = MmapRegionBuilder<>(0x2000).from_shared_memory(*shm, 0x1000).build();
  ASSERT_TRUE(region.has_value()) << region.error();
  EXPECT_EQ(region->flags(), MAP_SHARED | MAP_NORESERVE);
  ASSERT_NE(region->file_offset(), nullptr);
  EXPECT_EQ(region->file_offset()->start(), 0x1000u);
  EXPECT_EQ(region->file_offset()->arc(), shm->file());
  EXPECT_EQ(region->as_volatile_slice().read_obj<std::uint64_t>(0x1008), in_file);

  const int fd = shm->fd();
  { SharedMemory gone = std::move(*shm); }
  EXPECT_NE(::fcntl(fd, F_GETFD), -1) << "the region keeps the descriptor open";
  ASSERT_TRUE(region->as_volatile_slice().write_obj(std::uint32_t{0xabcd}, 0x10).has_value());
  std::uint32_t back = 0;
  ASSERT_EQ(::pread(fd, &back, 4, 0x1010), 4);
  EXPECT_EQ(back, 0xabcdu);
}

TEST(SharedMemory, DescriptorPassedOverASocketMapsTheSameMemory) {
  auto shm = SharedMemory::create("passed", 0x1000);
  ASSERT_TRUE(shm.has_value());
  int sockets[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets), 0);
  UniqueFd sender{sockets[0]};
  UniqueFd receiver{sockets[1]};

  // Send the descriptor with SCM_RIGHTS, as to a vhost-user back end.
  char byte = 'm';
  iovec iov{&byte, 1};
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  const int sent_fd = shm->fd();
  std::memcpy(CMSG_DATA(cmsg), &sent_fd, sizeof(int));
  ASSERT_EQ(::sendmsg(sender.get(), &msg, 0), 1);

  msghdr in{};
  std::array<char, CMSG_SPACE(sizeof(int))> in_control{};
  in.msg_iov = &iov;
  in.msg_iovlen = 1;
  in.msg_control = in_control.data();
  in.msg_controllen = in_control.size();
  ASSERT_EQ(::recvmsg(receiver.get(), &in, MSG_CMSG_CLOEXEC), 1);
  int received_fd = -1;
  std::memcpy(&received_fd, CMSG_DATA(CMSG_FIRSTHDR(&in)), sizeof(int));
  ASSERT_NE(received_fd, sent_fd);

  auto ours = MmapRegionBuilder<>(0x1000).from_shared_memory(*shm).build();
  auto theirs = MmapRegion<>::from_file(FileOffset(UniqueFd{received_fd}, 0), 0x1000);
  ASSERT_TRUE(ours && theirs);
  ASSERT_NE(ours->unsafe_host_ptr(), theirs->unsafe_host_ptr());
  ASSERT_TRUE(theirs->as_volatile_slice().write_obj(std::uint64_t{0x5eed}, 0x800).has_value());
  EXPECT_EQ(ours->as_volatile_slice().read_obj<std::uint64_t>(0x800), 0x5eedu);
}

}  // namespace
}  // namespace guestmem
