#!/usr/bin/env bash
# Side by side: the rust-vmm vm-memory peer's bench and guestmem-peer-bench (the same cases,
# the same table format), run alternately A B A B ... on this machine, then per case the
# median over rounds of the ratio peer ns / guestmem ns, and the targets of issue 3.
#
#   bench/compare.sh                          # 3 rounds, full tables (~12 min)
#   bench/compare.sh --rounds 5 --target-ms 100 --filter obj
#
# Options: --rounds N (default 3); --preset P (default release, the GCC build; clang-release
# builds guestmem with Clang 19); everything else goes to both benchmarks (--target-ms, --reps,
# --filter). The raw tables are kept in the directory printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
preset=release
args=()
while (($#)); do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

peer=../shared/peers/rust-vm-memory
eval "$("$peer/build.sh" | tail -2)"   # sets REPLAY and BENCH
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" --target guestmem-peer-bench >/dev/null
ours=build/$preset/bench/guestmem-peer-bench
compiler=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "build/$preset/CMakeCache.txt")
echo "# guestmem built by: $("$compiler" --version | head -1) (preset $preset)"

out=$(mktemp -d "${TMPDIR:-/tmp}/guestmem-compare.XXXXXX")
for ((r = 1; r <= rounds; r++)); do
  echo "round $r/$rounds: vm-memory" >&2
  "$BENCH" "${args[@]}" >"$out/peer.$r"
  echo "round $r/$rounds: guestmem" >&2
  "$ours" "${args[@]}" >"$out/guestmem.$r"
done
python3 bench/compare.py "$out" "$rounds"
echo "raw tables: $out" >&2
