#!/bin/bash
# Boots an unmodified QEMU from guestmem's vhost-user-blk back end, without a guest kernel:
# QEMU's firmware (SeaBIOS) reads the boot sector through the virtio-blk queue that the back
# end serves, runs it, and the sector prints a marker on the serial port. This checks the
# whole path QEMU drives (features, protocol features, memory table of a shared memfd
# backend, two queues, config, kick and call) in a few seconds; the back end must then exit
# cleanly once QEMU disconnects (--once).
#
# Usage: tools/vhost_user/tests/qemu_boot_sector.sh PATH/TO/vhost-user-blk
# Needs qemu-system-x86 (qemu-system-x86_64 and its SeaBIOS firmware).
set -euo pipefail

backend=${1:?usage: $0 PATH/TO/vhost-user-blk}
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing" >&2; exit 1; }
work=$(mktemp -d)
backend_pid=""
qemu_pid=""
cleanup() {
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null || true
  [[ -n $backend_pid ]] && kill "$backend_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The boot sector: mov dx, 0x3f8; out "VHOK\n" one byte at a time; hlt; jmp to the hlt.
truncate -s 1M "$work/disk.img"
printf '\xba\xf8\x03\xb0V\xee\xb0H\xee\xb0O\xee\xb0K\xee\xb0\x0a\xee\xf4\xeb\xfd' |
  dd of="$work/disk.img" conv=notrunc status=none
printf '\x55\xaa' | dd of="$work/disk.img" bs=1 seek=510 conv=notrunc status=none

"$backend" --socket "$work/vhost.sock" --image "$work/disk.img" --num-queues 2 --once \
  2>"$work/backend.log" &
backend_pid=$!
for _ in $(seq 50); do [[ -S $work/vhost.sock ]] && break; sleep 0.1; done
[[ -S $work/vhost.sock ]] || { echo "back end did not listen" >&2; cat "$work/backend.log" >&2; exit 1; }

timeout 60 qemu-system-x86_64 -accel tcg -m 128 -display none -monitor none -no-reboot \
  -object memory-backend-memfd,id=mem,size=128M,share=on -numa node,memdev=mem \
  -chardev socket,id=disk,path="$work/vhost.sock" \
  -device vhost-user-blk-pci,chardev=disk,num-queues=2,bootindex=1 \
  -serial file:"$work/serial.log" 2>"$work/qemu.log" &
qemu_pid=$!
for _ in $(seq 300); do
  grep -q VHOK "$work/serial.log" 2>/dev/null && break
  kill -0 "$qemu_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q VHOK "$work/serial.log" 2>/dev/null; then
  echo "FAIL: no boot marker from the guest" >&2
  cat "$work/qemu.log" "$work/backend.log" >&2
  exit 1
fi
kill "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""
# The back end serves one front end (--once) and must exit 0 when QEMU goes away.
if ! timeout 10 tail --pid="$backend_pid" -f /dev/null; then
  echo "FAIL: back end still running 10 s after QEMU went away" >&2
  exit 1
fi
status=0
wait "$backend_pid" || status=$?
backend_pid=""
if [[ $status -ne 0 ]]; then
  echo "FAIL: back end exit status $status" >&2
  cat "$work/backend.log" >&2
  exit 1
fi
echo "PASS: QEMU booted from the vhost-user-blk back end; back end exited cleanly"
