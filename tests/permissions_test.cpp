#include "guestmem/permissions.hpp"

#include <array>

#include <gtest/gtest.h>

namespace guestmem {
namespace {

constexpr std::array kAll{Permissions::No, Permissions::Read, Permissions::Write,
                          Permissions::ReadWrite};

TEST(Permissions, And) {
  for (auto p : kAll) {
    EXPECT_EQ(p & p, p);
    EXPECT_EQ(Permissions::No & p, Permissions::No);
    EXPECT_EQ(Permissions::ReadWrite & p, p);
    for (auto q : kAll) {
      EXPECT_EQ(p & q, q & p);
    }
  }
  EXPECT_EQ(Permissions::Read & Permissions::Write, Permissions::No);
}

TEST(Permissions, Or) {
  for (auto p : kAll) {
    EXPECT_EQ(p | p, p);
    EXPECT_EQ(Permissions::No | p, p);
    EXPECT_EQ(Permissions::ReadWrite | p, Permissions::ReadWrite);
    for (auto q : kAll) {
      EXPECT_EQ(p | q, q | p);
    }
  }
  EXPECT_EQ(Permissions::Read | Permissions::Write, Permissions::ReadWrite);
}

TEST(Permissions, HasWrite) {
  EXPECT_FALSE(Permissions::No.has_write());
  EXPECT_FALSE(Permissions::Read.has_write());
  EXPECT_TRUE(Permissions::Write.has_write());
  EXPECT_TRUE(Permissions::ReadWrite.has_write());
}

TEST(Permissions, Allow) {
  EXPECT_TRUE(Permissions::ReadWrite.allow(Permissions::Read));
  EXPECT_TRUE(Permissions::ReadWrite.allow(Permissions::ReadWrite));
  EXPECT_TRUE(Permissions::Read.allow(Permissions::No));
  EXPECT_FALSE(Permissions::Read.allow(Permissions::Write));
  EXPECT_FALSE(Permissions::Write.allow(Permissions::ReadWrite));
  EXPECT_FALSE(Permissions::No.allow(Permissions::Read));
  EXPECT_EQ(Permissions::ReadWrite.name(), "ReadWrite");
  EXPECT_EQ(Permissions::No.name(), "No");
}

}  // namespace
}  // namespace guestmem
