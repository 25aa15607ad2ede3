// guestmem quickstart: a guest memory of three regions, two adjacent and one beyond a hole,
// and the basic accesses a device model makes.
#include <guestmem/guestmem.hpp>

#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

using guestmem::GuestAddress;

namespace {

// A virtio-style descriptor: little-endian fields, no padding, so it is ByteValued.
struct Descriptor {
  guestmem::Le64 addr;
  guestmem::Le32 len;
  guestmem::Le16 flags;
  guestmem::Le16 next;
};

[[noreturn]] void die(const char* what, const guestmem::Error& error) {
  std::fprintf(stderr, "%s: %s\n", what, error.message().c_str());
  std::exit(1);
}

}  // namespace

int main() {
  // 0x0000-0x0fff and 0x1000-0x1fff are adjacent; 0x2000-0x2fff is a hole; 0x3000-0x3fff.
  auto mem = guestmem::GuestMemoryMmap<>::from_ranges({{GuestAddress{0x0000}, 0x1000},
                                                       {GuestAddress{0x1000}, 0x1000},
                                                       {GuestAddress{0x3000}, 0x1000}});
  if (!mem) {
    die("creating guest memory", mem.error());
  }
  std::printf("guest memory: %zu regions, last address %s\n", mem->num_regions(),
              to_string(mem->last_addr()).c_str());
  for (const auto& region : mem->regions()) {
    std::printf("  region %s..%s (%" PRIu64 " bytes)\n", to_string(region.start_addr()).c_str(),
                to_string(region.last_addr()).c_str(), region.len());
  }

  // A write that crosses from the first region into the second, and the read back.
  const std::array<std::uint8_t, 8> out{1, 2, 3, 4, 5, 6, 7, 8};
  const GuestAddress boundary{0x0ffc};
  if (auto r = mem->write_slice(std::as_bytes(std::span(out)), boundary); !r) {
    die("write across the boundary", r.error());
  }
  std::array<std::uint8_t, 8> in{};
  if (auto r = mem->read_slice(std::as_writable_bytes(std::span(in)), boundary); !r) {
    die("read across the boundary", r.error());
  }
  std::printf("wrote and read 8 bytes at %s across two regions:", to_string(boundary).c_str());
  for (auto b : in) {
    std::printf(" %u", b);
  }
  std::printf("\n");

  // An address in the hole is an error value, not a crash.
  auto hole = mem->read_obj<std::uint32_t>(GuestAddress{0x2800});
  std::printf("read_obj at 0x2800 (the hole): %s\n",
              hole ? "unexpectedly succeeded" : hole.error().message().c_str());

  // A read that starts before the hole stops at it.
  std::array<std::byte, 32> tail{};
  auto partial = mem->read(tail, GuestAddress{0x1ff0});
  std::printf("read of 32 bytes at 0x1ff0 stopped after %zu bytes at the hole\n",
              partial.value_or(0));

  // Atomics: a naturally aligned 32-bit counter.
  const GuestAddress counter{0x3010};
  if (auto r = mem->store<std::uint32_t>(41, counter, std::memory_order_release); !r) {
    die("store", r.error());
  }
  auto loaded = mem->load<std::uint32_t>(counter, std::memory_order_acquire);
  std::printf("atomic store 41, load -> %u\n", loaded.value_or(0));
  auto misaligned = mem->load<std::uint32_t>(GuestAddress{0x3011}, std::memory_order_relaxed);
  std::printf("atomic load at 0x3011: %s\n",
              misaligned ? "unexpectedly succeeded" : misaligned.error().message().c_str());

  // An object with a fixed byte order.
  const Descriptor desc{guestmem::Le64{0x3000}, guestmem::Le32{512}, guestmem::Le16{1},
                        guestmem::Le16{0}};
  if (auto r = mem->write_obj(desc, GuestAddress{0x3100}); !r) {
    die("write_obj", r.error());
  }
  auto back = mem->read_obj<Descriptor>(GuestAddress{0x3100});
  if (!back) {
    die("read_obj", back.error());
  }
  std::printf("descriptor at 0x3100: addr=0x%" PRIx64 " len=%u flags=%u\n",
              back->addr.to_native(), back->len.to_native(), back->flags.to_native());
  return 0;
}
