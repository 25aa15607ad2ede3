#!/bin/sh
# Runs an aarch64 program under qemu-user with Debian's aarch64 libraries:
#   aarch64-qemu-run.sh PROGRAM [ARGS...]
# The program sees this script as its argv[0], so that when it executes itself again
# (GoogleTest's death tests exec argv[0] for each child), the host kernel, which cannot run an
# aarch64 binary without binfmt_misc, runs this script, which runs the program under qemu
# again: the child finds the program in GUESTMEM_QEMU_PROGRAM, exported by the first call.
set -eu
self=$(readlink -f "$0")
sysroot=${GUESTMEM_QEMU_SYSROOT:-/usr/aarch64-linux-gnu}
if [ -z "${GUESTMEM_QEMU_PROGRAM:-}" ]; then
  GUESTMEM_QEMU_PROGRAM=$(readlink -f "$1")
  export GUESTMEM_QEMU_PROGRAM
  shift
fi
exec qemu-aarch64 -L "$sysroot" -0 "$self" "$GUESTMEM_QEMU_PROGRAM" "$@"
