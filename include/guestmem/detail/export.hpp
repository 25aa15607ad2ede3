// guestmem: which declarations a shared guestmem library exports.
//
// guestmem's libraries are compiled with -fvisibility=hidden and -fvisibility-inlines-hidden,
// so a shared build (BUILD_SHARED_LIBS=ON) exports only what is marked GUESTMEM_API: the
// public API defined in src/, and the detail:: functions and variables that inline header code
// calls or reads, since that code is compiled into the user's program. Everything else stays
// inside the library, where the linker may inline or drop it and no user can come to depend
// on it. On ELF, the same attribute serves the library and its users, and it changes nothing
// in a static build.
//
//   class GUESTMEM_API SharedMemory { ... };
//   GUESTMEM_API std::string to_string(GuestAddress address);
//   GUESTMEM_API extern std::atomic<std::uint64_t> g_epoch;
#pragma once

/// Gives a class, function or variable default visibility, so that a shared guestmem
/// library exports it.
#define GUESTMEM_API [[gnu::visibility("default")]]

/// Keeps a private member function of a GUESTMEM_API class out of the exports, when only the
/// library's own code (src/) calls it and no inline header code does.
#define GUESTMEM_LOCAL [[gnu::visibility("hidden")]]
