#!/usr/bin/env bash
# CI: the fault-tolerant access tests (fault_test: primitives and handler chaining; vm_io_test:
# cursors, containers and threads that block the signals; fault_table_test: the fault table of
# a dlopen'ed object) cross-compiled for aarch64 by the cross-aarch64 preset and run under
# qemu-aarch64 by ctest, through cmake/aarch64-qemu-run.sh. Builds only those test binaries
# (and GoogleTest from /usr/src/googletest).
# Needs: cmake ninja-build g++-aarch64-linux-gnu qemu-user googletest.
#   .ci/aarch64-faults.sh [build-dir]        (default: build/cross-aarch64)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/cross-aarch64}
cmake --preset cross-aarch64 -B "$build" >/dev/null
cmake --build "$build" -j2 --target fault_test vm_io_test fault_table_test
ctest --test-dir "$build" -R '^(fault_test|vm_io_test|fault_table_test)$' --output-on-failure
