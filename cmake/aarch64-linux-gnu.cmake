# Cross-compiling guestmem for aarch64 Linux with Debian's g++-aarch64-linux-gnu, and running
# what it builds (ctest, the tests' own death tests) under qemu-user through
# aarch64-qemu-run.sh. Used by the cross-aarch64 configure preset and .ci/aarch64-faults.sh.
#
#   cmake --preset cross-aarch64 && cmake --build build/cross-aarch64 --target vm_io_test
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_ASM_COMPILER aarch64-linux-gnu-gcc)

# Libraries, headers and CMake packages come from the target's root only (Debian's host
# packages are x86-64); programs run on the build machine.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_CROSSCOMPILING_EMULATOR ${CMAKE_CURRENT_LIST_DIR}/aarch64-qemu-run.sh)
