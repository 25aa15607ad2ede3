#!/usr/bin/env bash
# CI: the fault-tolerant access tests (vm_io_test: primitives, handler chaining, cursors and
# containers; fault_table_test: the fault table of a dlopen'ed object) cross-compiled for
# aarch64 by the cross-aarch64 preset and run under qemu-aarch64 by ctest, through
# cmake/aarch64-qemu-run.sh. Builds only those test binaries (and GoogleTest from
# /usr/src/googletest).
# Needs: cmake ninja-build g++-aarch64-linux-gnu qemu-user googletest.
#   .ci/aarch64-faults.sh [build-dir]        (default: build/cross-aarch64)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/cross-aarch64}
cmake --preset cross-aarch64 -B "$build" >/dev/null
cmake --build "$build" -j2 --target vm_io_test fault_table_test
ctest --test-dir "$build" -R '^(vm_io_test|fault_table_test)$' --output-on-failure
