#!/usr/bin/env bash
# CI: builds the API reference of the public headers with Doxygen (the CMake target `docs`).
# Doxygen's warnings are errors (Doxyfile.in), so a public declaration without documentation
# fails this step. Needs: cmake ninja-build doxygen. The reference ends up in
# build/docs/docs/html/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/docs
cmake -S . -B "$build" -G Ninja -DGUESTMEM_BUILD_TESTS=OFF -DGUESTMEM_BUILD_BENCHMARKS=OFF \
  -DGUESTMEM_BUILD_EXAMPLES=OFF -DGUESTMEM_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" --target docs
test -s "$build/docs/html/index.html"
echo "API reference: $build/docs/html/index.html"
