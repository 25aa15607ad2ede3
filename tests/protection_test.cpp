#include "guestmem/protection.hpp"

#include <sys/mman.h>

#include <gtest/gtest.h>

namespace guestmem {
namespace {

static_assert(Protection::read().readable() && !Protection::read().writable());
static_assert(!Protection::write().readable() && Protection::write().writable());
static_assert(Protection::read().set_write() == Protection::read_write());
static_assert(Protection::write().set_read() == Protection::read_write());
static_assert(Protection::none().set_read() == Protection::read());

TEST(Protection, MmapProtBits) {
  EXPECT_EQ(Protection::none().to_mmap_prot(), PROT_NONE);
  EXPECT_EQ(Protection::read().to_mmap_prot(), PROT_READ);
  EXPECT_EQ(Protection::write().to_mmap_prot(), PROT_WRITE);
  EXPECT_EQ(Protection::read_write().to_mmap_prot(), PROT_READ | PROT_WRITE);
  EXPECT_EQ(Protection::from_mmap_prot(PROT_READ | PROT_EXEC), Protection::read());
  EXPECT_EQ(Protection::from_mmap_prot(PROT_READ | PROT_WRITE), Protection::read_write());
  EXPECT_EQ(Protection::from_mmap_prot(PROT_NONE), Protection::none());
  EXPECT_EQ(Protection::from_mmap_prot(PROT_WRITE), Protection::write());
}

TEST(Protection, AllowsIsInclusion) {
  const Protection all[] = {Protection::none(), Protection::read(), Protection::write(),
                            Protection::read_write()};
  // allows(a, b) for each pair: row a, column b.
  constexpr bool kExpected[4][4] = {{true, false, false, false},
                                    {true, true, false, false},
                                    {true, false, true, false},
                                    {true, true, true, true}};
  for (int a = 0; a < 4; ++a) {
    for (int b = 0; b < 4; ++b) {
      EXPECT_EQ(all[a].allows(all[b]), kExpected[a][b]) << a << " allows " << b;
    }
  }
}

TEST(Protection, AsPermissions) {
  EXPECT_EQ(Protection::none().as_permissions(), Permissions::No);
  EXPECT_EQ(Protection::read().as_permissions(), Permissions::Read);
  EXPECT_EQ(Protection::write().as_permissions(), Permissions::Write);
  EXPECT_EQ(Protection::read_write().as_permissions(), Permissions::ReadWrite);
  EXPECT_FALSE(Protection::read().as_permissions().allow(Permissions::Write));
  EXPECT_TRUE(Protection::read().as_permissions().allow(Permissions::No));
}

}  // namespace
}  // namespace guestmem
