// guestmem: forward declarations that break include cycles between the view types, the
// transfer concepts and the byte-access implementation.
#pragma once

#include "guestmem/bitmap.hpp"

namespace guestmem {

template <BitmapSlice S = NoBitmap>
class VolatileSlice;

}  // namespace guestmem
