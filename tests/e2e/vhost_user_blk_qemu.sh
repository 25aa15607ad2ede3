#!/bin/bash
# End-to-end test of a vhost-user-blk back end with an unmodified QEMU guest.
#
# Boots a Debian kernel under qemu-system-x86_64 -accel tcg with a shared memfd memory and a
# vhost-user-blk-pci device connected to the back end under test. The guest (guest_init.sh
# in an initramfs) writes a pattern to /dev/vda and reads it back, and reads a region that
# this script wrote into the image before boot. The test passes when the guest's checksums
# match and the image holds the guest's pattern afterwards.
#
# Usage:
#   tests/e2e/vhost_user_blk_qemu.sh --server qsd
#   tests/e2e/vhost_user_blk_qemu.sh --server 'build/release/tools/vhost_user_blk/vhost-user-blk
#       --socket @SOCKET@ --image @IMAGE@'
# --server qsd runs qemu-storage-daemon's vhost-user-blk export (the reference back end);
# any other value is a command line in which @SOCKET@ and @IMAGE@ are replaced by the socket
# path and the raw image path. Other options:
#   --cache DIR      where the Debian kernel is downloaded and extracted (default
#                    build/e2e-kernel); reused by later runs
#   --workdir DIR    scratch directory (default: a new directory under /dev/shm, removed at exit)
#   --boot-timeout S seconds the guest may take from start to power-off (default 180)
#
# Needs: qemu-system-x86 (qemu-system-x86_64), qemu-utils (qemu-storage-daemon, for --server
# qsd), busybox-static, cpio, xz-utils, coreutils; apt-get and dpkg to fetch the kernel the
# first time. It installs nothing: a missing tool is reported and the test fails.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$script_dir/../.." && pwd)
server=""
cache_dir="$repo_dir/build/e2e-kernel"
work_dir=""
boot_timeout=180

while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=$2; shift 2 ;;
    --cache) cache_dir=$2; shift 2 ;;
    --workdir) work_dir=$2; shift 2 ;;
    --boot-timeout) boot_timeout=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$cache_dir"
cache_dir=$(cd "$cache_dir" && pwd)
if [ -z "$server" ]; then
  echo "--server is required (qsd, or a command with @SOCKET@ and @IMAGE@)" >&2
  exit 2
fi

log() { echo "e2e: $*"; }
fail() { echo "e2e: FAIL: $*" >&2; exit 1; }

for tool in qemu-system-x86_64 busybox cpio xz sha256sum timeout truncate dd; do
  command -v "$tool" >/dev/null || fail "$tool is missing"
done
[ "$server" != qsd ] || command -v qemu-storage-daemon >/dev/null \
  || fail "qemu-storage-daemon is missing (Debian package qemu-utils)"
busybox_path=$(command -v busybox)
# A dynamically linked busybox would need the host's libc inside the initramfs.
if ldd "$busybox_path" >/dev/null 2>&1; then
  fail "$busybox_path is dynamically linked; install busybox-static"
fi

started=$(date +%s.%N)
elapsed() { awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

# --- The guest kernel: Debian's, extracted into the cache, never installed. -------------
kernel_dir="$cache_dir/root"
if [ ! -f "$cache_dir/vmlinux" ]; then
  command -v apt-get >/dev/null && command -v dpkg >/dev/null \
    || fail "no kernel in $cache_dir and no apt-get/dpkg to fetch one"
  package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
  [ -n "$package" ] || fail "apt-cache names no linux-image package behind linux-image-amd64"
  log "downloading $package"
  (cd "$cache_dir" && timeout 300 apt-get download "$package" >/dev/null 2>&1) \
    || fail "apt-get download $package failed"
  rm -rf "$kernel_dir"
  timeout 120 dpkg -x "$cache_dir"/"$package"_*.deb "$kernel_dir"
  # The bzImage is an xz stream behind a decompressor. Booting the ELF vmlinux inside it
  # through its PVH entry (CONFIG_PVH) skips the decompression, which is slow under TCG.
  vmlinuz=$(ls "$kernel_dir"/boot/vmlinuz-*)
  offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
  [ -n "$offset" ] || fail "no xz stream in $vmlinuz"
  tail -c +"$((offset + 1))" "$vmlinuz" | xz -dc 2>/dev/null >"$cache_dir/vmlinux.tmp" || true
  head -c 4 "$cache_dir/vmlinux.tmp" | grep -q ELF || fail "could not extract vmlinux"
  mv "$cache_dir/vmlinux.tmp" "$cache_dir/vmlinux"
fi
modules_root=$(ls -d "$kernel_dir"/lib/modules/*/kernel)

# --- Scratch space: socket, image, initramfs, logs. ----------------------------------------
if [ -z "$work_dir" ]; then
  work_dir=$(mktemp -d /dev/shm/guestmem-e2e.XXXXXX)
  cleanup_work=1
else
  mkdir -p "$work_dir"
  cleanup_work=0
fi
# shellcheck source=server.sh
source "$script_dir/server.sh"
cleanup() {
  stop_server
  if [ "$cleanup_work" = 1 ]; then rm -rf "$work_dir"; fi
}
trap cleanup EXIT

socket="$work_dir/blk.sock"
image="$work_dir/disk.img"
initrd_dir="$work_dir/initrd"
mkdir -p "$initrd_dir/bin" "$initrd_dir/modules" "$initrd_dir/proc" "$initrd_dir/sys" \
  "$initrd_dir/dev"

# The modules virtio_blk and virtio_pci need, dependencies first, read from each module's
# .modinfo "depends=" entry (kmod's modinfo is not needed for that).
declare -A loaded=()
order=()
module_file() {
  local found
  found=$(find "$modules_root" \( -name "$1.ko" -o -name "$1.ko.xz" \) | head -1)
  [ -n "$found" ] || fail "module $1 not found under $modules_root"
  echo "$found"
}
add_module() {
  local name=$1 file plain dep
  [ -z "${loaded[$name]:-}" ] || return 0
  loaded[$name]=1
  file=$(module_file "$name")
  plain="$initrd_dir/modules/$name.ko"
  case "$file" in
    *.xz) xz -dc "$file" >"$plain" ;;
    *) cp "$file" "$plain" ;;
  esac
  for dep in $(tr '\0' '\n' <"$plain" | sed -n 's/^depends=//p' | tr ',' ' '); do
    add_module "$dep"
  done
  order+=("$name.ko")
}
for module in virtio virtio_ring virtio_pci virtio_blk; do
  if grep -q "^CONFIG_${module^^}=y" "$kernel_dir"/boot/config-*; then continue; fi
  add_module "$module"
done
printf '%s\n' "${order[@]}" >"$initrd_dir/modules.order"

cp "$busybox_path" "$initrd_dir/bin/busybox"
cp "$script_dir/guest_init.sh" "$initrd_dir/init"
chmod +x "$initrd_dir/init"

# The guest writes write_mib MiB at write_seek_mib; the host prepares host_mib MiB at
# host_skip_mib for the guest to read. The image is 64 MiB, a sparse file in tmpfs.
write_mib=4
write_seek_mib=8
host_mib=2
host_skip_mib=32
echo "$write_mib" >"$initrd_dir/write.mib"
echo "$write_seek_mib" >"$initrd_dir/write.seek_mib"
echo "$host_mib" >"$initrd_dir/host.mib"
echo "$host_skip_mib" >"$initrd_dir/host.skip_mib"
head -c $((write_mib << 20)) /dev/urandom >"$initrd_dir/pattern.bin"
pattern_sum=$(sha256sum <"$initrd_dir/pattern.bin" | cut -d' ' -f1)
(cd "$initrd_dir" && find . | cpio -o -H newc --quiet >"$work_dir/initrd.cpio")

truncate -s 64M "$image"
head -c $((host_mib << 20)) /dev/urandom \
  | dd of="$image" bs=1M seek="$host_skip_mib" conv=notrunc status=none
host_sum=$(dd if="$image" bs=1M skip="$host_skip_mib" count="$host_mib" status=none \
  | sha256sum | cut -d' ' -f1)

# --- The back end. ---------------------------------------------------------------------
start_server "$server" "$socket" "$image" "$work_dir/server.log" "$((boot_timeout + 30))" \
  || fail "the server did not start"

# --- The guest. ------------------------------------------------------------------------
log "booting the guest (timeout ${boot_timeout}s)"
qemu_status=0
timeout "$boot_timeout" qemu-system-x86_64 -accel tcg -m 256 \
  -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
  -chardev socket,id=blk,path="$socket" -device vhost-user-blk-pci,chardev=blk \
  -kernel "$cache_dir/vmlinux" -initrd "$work_dir/initrd.cpio" \
  -append 'console=ttyS0 panic=-1 loglevel=3 rdinit=/init' \
  -nographic -no-reboot -nodefaults -serial stdio \
  </dev/null >"$work_dir/guest.log" 2>&1 || qemu_status=$?
guest_time=$(elapsed)

marker() { sed -n "s/.*GUESTMEM-E2E: $1 *//p" "$work_dir/guest.log" | tr -d '\r' | head -1; }
report_logs() {
  echo "--- guest console (last 40 lines) ---" >&2
  tail -40 "$work_dir/guest.log" >&2
  echo "--- server log (last 20 lines) ---" >&2
  tail -20 "$work_dir/server.log" >&2
}
if [ "$qemu_status" -ne 0 ]; then
  report_logs
  fail "qemu-system-x86_64 exited with status $qemu_status (124: timed out)"
fi
if ! grep -q 'GUESTMEM-E2E: end' "$work_dir/guest.log"; then
  report_logs
  fail "the guest did not reach its end marker"
fi
if grep -q 'GUESTMEM-E2E: \(no-device\|insmod-failed\|write-failed\)' "$work_dir/guest.log"; then
  report_logs
  fail "the guest reported an error"
fi
sectors=$(marker device-sectors)
[ "$sectors" = $((64 << 11)) ] || { report_logs; fail "the guest saw $sectors sectors, not $((64 << 11))"; }
[ "$(marker readback-sha256)" = "$pattern_sum" ] \
  || { report_logs; fail "the guest read back other bytes than it wrote"; }
[ "$(marker host-region-sha256)" = "$host_sum" ] \
  || { report_logs; fail "the guest read other bytes than the host wrote"; }
image_sum=$(dd if="$image" bs=1M skip="$write_seek_mib" count="$write_mib" status=none \
  | sha256sum | cut -d' ' -f1)
[ "$image_sum" = "$pattern_sum" ] || { report_logs; fail "the image does not hold the guest's pattern"; }

log "PASS: guest wrote and read back ${write_mib} MiB, read ${host_mib} MiB written by the host;" \
  "image checked; ${guest_time}s"
