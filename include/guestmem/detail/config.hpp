// guestmem: build configuration shared by every header, and the one assertion macro.
//
// A broken precondition (a caller bug, never a guest-controlled value) aborts through
// GUESTMEM_ASSERT, in every build type: guest memory is shared with an untrusted party, and
// continuing after a broken invariant could turn a bug into a host memory corruption.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define GUESTMEM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GUESTMEM_TSAN 1
#endif
#endif

#include "guestmem/detail/export.hpp"

/// For the few functions on the per-access fast path whose inlining the measured
/// performance depends on (see docs/PERFORMANCE.md).
#define GUESTMEM_ALWAYS_INLINE [[gnu::always_inline]] inline

namespace guestmem::detail {

/// Prints the failed condition with its location and message to stderr, then aborts.
[[noreturn]] GUESTMEM_API void assertion_failed(const char* condition, const char* file,
                                                int line, const char* message) noexcept;

}  // namespace guestmem::detail

/// Aborts when `condition` is false. For preconditions that only a caller bug can break.
#define GUESTMEM_ASSERT(condition, message)                                          \
  (__builtin_expect(static_cast<bool>(condition), 1)                                 \
       ? static_cast<void>(0)                                                        \
       : ::guestmem::detail::assertion_failed(#condition, __FILE__, __LINE__, message))
