#!/bin/bash
# Hostile-front-end test of a vhost-user-blk back end, driven by vhost-user-blk-bench.
#
# Starts the back end on a 64 MiB image in tmpfs and runs, each bounded by a timeout:
#   1. `--mode verify` at 4 KiB and 64 KiB: random writes each read back, every byte checked,
#      then a read of the whole image;
#   2. `--mode hostile`: descriptor loops, a chain longer than the queue, buffers in a hole or
#      wrapping around 2^64, a read into a device-readable buffer, bad indices, a short
#      header, a device-readable status, and requests into memory the front end truncated
#      before or right after making them available (tools/vhost_user_blk_bench/hostile.hpp
#      says what passing means);
#   3. `--mode verify` again: the back end still serves correct requests.
# The test passes when every step passed and the server is still running at the end.
#
# Usage: tests/e2e/vhost_user_blk_hostile.sh --bench PATH --server CMD
#   CMD is "qsd" or a command line with @SOCKET@ and @IMAGE@ (as in vhost_user_blk_qemu.sh).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench=""
server=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) bench=$2; shift 2 ;;
    --server) server=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ -n "$bench" ] && [ -n "$server" ] || { echo "--bench and --server are required" >&2; exit 2; }
[ -x "$bench" ] || { echo "$bench is not executable" >&2; exit 1; }

work=$(mktemp -d /dev/shm/guestmem-hostile.XXXXXX)
# shellcheck source=server.sh
source "$script_dir/server.sh"
trap 'stop_server; rm -rf "$work"' EXIT
socket="$work/blk.sock"
image="$work/disk.img"
truncate -s 64M "$image"
start_server "$server" "$socket" "$image" "$work/server.log" 600

status=0
step() {
  echo "--- $*"
  timeout 120 "$bench" --socket "$socket" "$@" || status=1
}
step --mode verify --size 4096 --queue-depth 32 --seconds 1
step --mode verify --size 65536 --queue-depth 8 --seconds 1
step --mode hostile
step --mode verify --size 4096 --queue-depth 32 --seconds 1

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the server is no longer running" >&2
  status=1
fi
echo "--- server log (last 30 lines)"
tail -30 "$work/server.log"
if [ "$status" = 0 ]; then echo "hostile: PASS"; else echo "hostile: FAIL" >&2; fi
exit "$status"
