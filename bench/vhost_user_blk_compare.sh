#!/bin/bash
# Compares vhost-user-blk back ends with the same front end (vhost-user-blk-bench): guestmem's
# back end against qemu-storage-daemon's vhost-user-blk export, on one raw image in tmpfs,
# alternated round by round so that a change in the machine's load hits both alike.
#
# Each round starts each back end afresh and runs 4 KiB random reads and 64 KiB random reads
# at queue depth 32 on one queue (every byte read is checked against the pattern the front
# end wrote first). The script prints every run, then per case the median IOPS and MB/s of
# each back end and the ratio ours / qemu-storage-daemon.
#
# Usage: bench/vhost_user_blk_compare.sh [options]
#   --build DIR      build directory holding both tools (default build/release)
#   --ours CMD       our back end's command; @SOCKET@ and @IMAGE@ are replaced (default
#                    DIR/tools/vhost_user_blk/vhost-user-blk --socket @SOCKET@ --image @IMAGE@)
#   --qsd-aio LIST   qemu-storage-daemon configurations to run, comma-separated, each
#                    threads, io_uring or native (native opens the image with O_DIRECT)
#                    (default io_uring); more than one compares them too
#   --no-ours        run only qemu-storage-daemon (to choose its fastest configuration)
#   --rounds N       rounds (default 5)
#   --seconds S      timed phase of each run (default 5)
#   --image-size SZ  image size for truncate (default 256M)
# Needs qemu-utils (qemu-storage-daemon).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$repo_dir/build/release"
ours=""
qsd_aio="io_uring"
run_ours=1
rounds=5
seconds=5
image_size=256M

while [ $# -gt 0 ]; do
  case "$1" in
    --build) build_dir=$2; shift 2 ;;
    --ours) ours=$2; shift 2 ;;
    --qsd-aio) qsd_aio=$2; shift 2 ;;
    --no-ours) run_ours=0; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --image-size) image_size=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
bench="$build_dir/tools/vhost_user_blk_bench/vhost-user-blk-bench"
[ -n "$ours" ] || ours="$build_dir/tools/vhost_user_blk/vhost-user-blk --socket @SOCKET@ --image @IMAGE@"
[ -x "$bench" ] || { echo "no $bench: build the vhost-user-blk-bench target" >&2; exit 1; }
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon missing (qemu-utils)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/guestmem-vub-compare.XXXXXX)
# start_server and stop_server, shared with the end-to-end tests.
. "$(dirname "$0")/../tests/e2e/server.sh"
trap 'stop_server; rm -rf "$work"' EXIT
image="$work/disk.img"
socket="$work/blk.sock"
truncate -s "$image_size" "$image"

# The back ends, by name: "ours" and "qsd-<aio>".
backends=()
[ "$run_ours" = 0 ] || backends+=(ours)
IFS=, read -r -a aios <<<"$qsd_aio"
for aio in "${aios[@]}"; do backends+=("qsd-$aio"); done

# The command line of a back end by name, with @SOCKET@ and @IMAGE@ for start_server.
server_command() {
  local export="type=vhost-user-blk,id=export,node-name=disk,addr.type=unix,addr.path=@SOCKET@,writable=on"
  case "$1" in
    ours) echo "$ours" ;;
    # native needs O_DIRECT.
    qsd-native) echo "qemu-storage-daemon --blockdev driver=file,node-name=disk,filename=@IMAGE@,aio=native,cache.direct=on --export $export" ;;
    qsd-*) echo "qemu-storage-daemon --blockdev driver=file,node-name=disk,filename=@IMAGE@,aio=${1#qsd-},cache.direct=off --export $export" ;;
  esac
}

results="$work/results"
: >"$results"
for round in $(seq "$rounds"); do
  # Odd rounds run the back ends in order, even rounds in reverse, so neither always goes
  # first after a server start or a neighbour's burst.
  order=("${backends[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#backends[@]} - 1; i >= 0; i--)); do order+=("${backends[$i]}"); done
  fi
  for name in "${order[@]}"; do
    start_server "$(server_command "$name")" "$socket" "$image" "$work/$name.log" 600 || exit 1
    for size in 4096 65536; do
      line=$(timeout $((seconds + 120)) "$bench" --socket "$socket" --mode randread \
               --size "$size" --queue-depth 32 --seconds "$seconds" | grep '^RESULT') \
        || { echo "the benchmark failed against $name" >&2; exit 1; }
      iops=$(sed 's/.* iops=\([0-9.]*\).*/\1/' <<<"$line")
      mbps=$(sed 's/.* mbps=\([0-9.]*\).*/\1/' <<<"$line")
      printf 'round %d %-12s %6d B: %9.0f IOPS %8.1f MB/s\n' "$round" "$name" "$size" "$iops" "$mbps"
      echo "$round $name $size $iops $mbps" >>"$results"
    done
    stop_server
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "medians of $rounds rounds (randread, queue depth 32, one queue, ${seconds}s each):"
for size in 4096 65536; do
  for name in "${backends[@]}"; do
    iops=$(awk -v n="$name" -v s="$size" '$2 == n && $3 == s { print $4 }' "$results" | median)
    mbps=$(awk -v n="$name" -v s="$size" '$2 == n && $3 == s { print $5 }' "$results" | median)
    printf '  %-12s %6d B: %9.0f IOPS %8.1f MB/s\n' "$name" "$size" "$iops" "$mbps"
    echo "$name $size $iops" >>"$work/medians"
  done
  if [ "$run_ours" = 1 ]; then
    for aio in "${aios[@]}"; do
      o=$(awk -v s="$size" '$1 == "ours" && $2 == s { print $3 }' "$work/medians")
      q=$(awk -v s="$size" -v n="qsd-$aio" '$1 == n && $2 == s { print $3 }' "$work/medians")
      # The median of each round's own ratio too: the two runs of a round are next to each
      # other in time, so a change in the machine's load cancels out of their ratio.
      paired=$(awk -v s="$size" -v n="qsd-$aio" \
        '$3 == s && $2 == "ours" { o[$1] = $4 } $3 == s && $2 == n { q[$1] = $4 }
         END { for (r in o) if (r in q) print o[r] / q[r] }' "$results" | median)
      awk -v o="$o" -v q="$q" -v s="$size" -v a="$aio" -v p="$paired" \
        'BEGIN { printf "  ratio ours / qsd-%s at %d B: %.2f (median of the rounds'"'"' ratios %.2f)\n", a, s, o / q, p }'
    done
    if [ "${#aios[@]}" -gt 1 ]; then
      best=$(awk -v s="$size" '$1 ~ /^qsd-/ && $2 == s && $3 > b { b = $3 } END { print b }' \
        "$work/medians")
      awk -v o="$o" -v q="$best" -v s="$size" \
        'BEGIN { printf "  ratio ours / fastest qsd at %d B: %.2f\n", s, o / q }'
    fi
  fi
done
