#!/usr/bin/env bash
# CI: builds tests/consumers/main.cpp against guestmem in every way a user's project takes it
# in, each from a clean temporary directory, and fails on the first failure:
#   1. the installed CMake package, static and shared (find_package);
#   2. pkg-config with a plain compiler command, static and shared;
#   3. add_subdirectory of the source tree, and FetchContent of it (URL file:// of an archive):
#      neither may build guestmem's tests, benchmarks, examples, tools or fuzzers, nor pass
#      guestmem's warning flags to the consumer;
#   4. the Debian package libguestmem-dev made by CPack: installed with apt-get, found by
#      find_package and pkg-config, then removed again.
# Needs: g++ cmake ninja-build pkg-config libxxhash-dev (and root or sudo for step 4).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=${JOBS:-2}

step() { printf '\n==== consumers: %s (%ss)\n' "$*" "$SECONDS"; }
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi

tmp=$(mktemp -d)
deb_installed=0
cleanup() {
  if ((deb_installed)); then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get remove -y -qq libguestmem-dev >/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# The source tree as a fresh clone has it (tracked files, and new ones not ignored), so that
# no build directory of the working tree is seen.
src=$tmp/guestmem
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$src"
consumer=$src/tests/consumers
lib_options=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr
             -DGUESTMEM_BUILD_TESTS=OFF -DGUESTMEM_BUILD_BENCHMARKS=OFF
             -DGUESTMEM_BUILD_EXAMPLES=OFF -DGUESTMEM_BUILD_TOOLS=OFF)
multiarch=$(gcc -print-multiarch)

# Runs a built consumer; with a library directory, checks that the program loads guestmem's
# shared libraries from there and not from anywhere else.
run_consumer() {
  local program=$1 libdir=${2:-}
  if [ -n "$libdir" ]; then
    local found
    found=$(ldd "$program" | awk '/libguestmem/ { print $3 }')
    [ "$(printf '%s\n' "$found" | wc -l)" = 3 ] || { echo "$program: $found"; return 1; }
    printf '%s\n' "$found" | while read -r lib; do
      [ "$(dirname "$(realpath "$lib")")" = "$(realpath "$libdir")" ] || { echo "$lib"; exit 1; }
    done
  elif ldd "$program" | grep -q libguestmem; then
    echo "$program: linked to a shared guestmem where the static one was meant"; return 1
  fi
  "$program"
}

for kind in static shared; do
  step "$kind library: build and install to a prefix"
  shared=OFF; [ "$kind" = shared ] && shared=ON
  cmake -S "$src" -B "$tmp/lib-$kind" "${lib_options[@]}" -DBUILD_SHARED_LIBS=$shared >/dev/null
  cmake --build "$tmp/lib-$kind" -j "$jobs"
  cmake --install "$tmp/lib-$kind" --prefix "$tmp/prefix-$kind" >/dev/null
  libdir=$tmp/prefix-$kind/lib/$multiarch
  expect_libdir=""; [ "$kind" = shared ] && expect_libdir=$libdir
  [ "$kind" = shared ] && readelf -d "$libdir/libguestmem.so" | grep -q 'SONAME.*libguestmem.so.0.1'

  step "$kind library: find_package"
  cmake -S "$consumer" -B "$tmp/package-$kind" -G Ninja \
    -DCMAKE_PREFIX_PATH="$tmp/prefix-$kind" >/dev/null
  cmake --build "$tmp/package-$kind" >/dev/null
  run_consumer "$tmp/package-$kind/consumer" "$expect_libdir"

  step "$kind library: pkg-config and a plain compiler command"
  flags=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs \
          guestmem guestmem-snapshot guestmem-kvm)
  echo "g++ -std=c++23 main.cpp $flags"
  # shellcheck disable=SC2086 # the flags are words
  g++ -std=c++23 "$consumer/main.cpp" $flags -Wl,-rpath,"$libdir" -o "$tmp/pkg-config-$kind"
  run_consumer "$tmp/pkg-config-$kind" "$expect_libdir"
done

# The targets a consumer project's build has besides its own: guestmem's libraries only.
check_only_libraries() {
  local build=$1 extra
  extra=$(cmake --build "$build" --target help | sed -n 's/^\([^ :]*\): .*/\1/p' |
          grep -v -x -E '(.*/)?(all|clean|help|edit_cache|rebuild_cache|list_install_components|install(/local|/strip)?)|build\.ninja|consumer|guestmem|guestmem_(snapshot|kvm)|.*\.(o|i|s|so[.0-9]*|a)' ||
          true)
  if [ -n "$extra" ]; then echo "targets beyond guestmem's libraries: $extra"; return 1; fi
  # guestmem's own warning flags stay on its own sources.
  if grep -B2 '"file": ".*consumers/main.cpp"' "$build/compile_commands.json" |
     grep -q -e '-Werror' -e '-Wconversion'; then
    echo "guestmem's warning flags reached the consumer"; return 1
  fi
}

step "add_subdirectory of the source tree"
cmake -S "$consumer" -B "$tmp/subdirectory" -G Ninja -DGUESTMEM_CONSUMER_MODE=subdirectory \
  -DGUESTMEM_SOURCE_DIR="$src" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
check_only_libraries "$tmp/subdirectory"
cmake --build "$tmp/subdirectory" -j "$jobs" >/dev/null
run_consumer "$tmp/subdirectory/consumer"

step "FetchContent of an archive of the source tree (URL file://)"
tar -czf "$tmp/guestmem.tar.gz" -C "$tmp" guestmem
cmake -S "$consumer" -B "$tmp/fetchcontent" -G Ninja -DGUESTMEM_CONSUMER_MODE=fetchcontent \
  -DGUESTMEM_URL="file://$tmp/guestmem.tar.gz" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
check_only_libraries "$tmp/fetchcontent"
cmake --build "$tmp/fetchcontent" -j "$jobs" >/dev/null
run_consumer "$tmp/fetchcontent/consumer"

step "the Debian package libguestmem-dev (CPack), installed with apt-get"
if dpkg-query -W -f='${Status}' libguestmem-dev 2>/dev/null | grep -q "install ok installed"; then
  echo "libguestmem-dev is already installed; this step would replace it"; exit 1
fi
(cd "$tmp/lib-static" && cpack -G DEB >/dev/null)
deb=$(echo "$tmp"/lib-static/libguestmem-dev_*.deb)
dpkg-deb --field "$deb" Package Version Depends
deb_installed=1
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$deb" >/dev/null
cmake -S "$consumer" -B "$tmp/deb-package" -G Ninja >/dev/null
cmake --build "$tmp/deb-package" >/dev/null
run_consumer "$tmp/deb-package/consumer"
# shellcheck disable=SC2046 # the flags are words
g++ -std=c++23 "$consumer/main.cpp" $(pkg-config --cflags --libs guestmem guestmem-snapshot \
  guestmem-kvm) -o "$tmp/deb-pkg-config"
run_consumer "$tmp/deb-pkg-config"
DEBIAN_FRONTEND=noninteractive $sudo apt-get remove -y -qq libguestmem-dev >/dev/null
deb_installed=0

step "done: every way builds and runs the consumer"
