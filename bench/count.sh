#!/usr/bin/env bash
# Instructions per operation of peer-bench cases, counted by callgrind: a profile that the
# machine's noise does not move, to read beside the timed comparison (bench/compare.sh).
#
#   bench/count.sh [BUILD_DIR]            # default build/release; builds guestmem-case-loop
#
# Each case runs after the case that leaves the lookup hint where the peer's table leaves it
# (the hint is part of what a case measures there).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
cmake --build "$build" --target guestmem-case-loop >/dev/null
loop=$build/bench/guestmem-case-loop
iterations=100000

# case, and the case that last moved the hint before it in the peer's table: the last case
# of the access point before (an access point's cases leave the hint where its first left it)
cases=(
  "read_obj_small8/in_region_0"
  "read_obj_big96/in_region_0"
  "write_obj_small8/in_region_0"
  "write_obj_big96/in_region_0"
  "read_obj_small8/cross_region_0 write_all_to_slice/in_region_0"
  "read_obj_big96/cross_region_0 write_all_to_slice/in_region_0"
  "write_obj_small8/cross_region_0 write_all_to_slice/in_region_0"
  "write_obj_big96/cross_region_0 write_all_to_slice/in_region_0"
  "read_obj_small8/cross_region_6 write_all_to_slice/cross_region_0"
  "read_obj_big96/cross_region_6 write_all_to_slice/cross_region_0"
  "write_obj_small8/cross_region_6 write_all_to_slice/cross_region_0"
  "write_obj_big96/cross_region_6 write_all_to_slice/cross_region_0"
  "read_slice/in_region_7 write_all_to_slice/cross_region_6"
  "read_obj_small8/in_region_7 write_all_to_slice/cross_region_6"
  "read_obj_big96/in_region_7 write_all_to_slice/cross_region_6"
  "write_obj_small8/in_region_7 write_all_to_slice/cross_region_6"
  "write_obj_big96/in_region_7 write_all_to_slice/cross_region_6"
  "atomic_store_u64_seqcst/in_region_0 atomic_store_u64_release/in_region_0"
  "write_obj_u64/in_region_7 read_obj_u64/in_region_7"
  "find_region/512"
)
echo "# instructions per operation (callgrind, $iterations iterations), $build"
for entry in "${cases[@]}"; do
  read -r name after <<<"$entry"
  total=$(valgrind --tool=callgrind --toggle-collect='*timed_loop*' --callgrind-out-file=/dev/null \
            "$loop" "$name" "$iterations" "$after" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  awk -v name="$name" -v total="$total" -v n="$iterations" 'BEGIN { printf "%-40s %8.1f\n", name, total / n }'
done
