#!/usr/bin/env bash
# Runs one libFuzzer target of guestmem for a bounded time, starting from its seed corpus.
#
#   fuzz/run.sh TARGET SECONDS [libFuzzer args...]
#   fuzz/run.sh --self-test
#
# TARGET is fuzz_access, fuzz_bitmap, fuzz_iommu, fuzz_replay, fuzz_vhost_queue or fuzz_vm_io.
# The seed corpus (fuzz/corpus/TARGET) is copied to a temporary directory, so the repository
# stays clean;
# fuzz/TARGET.dict is used when it exists. Extra arguments go to libFuzzer after the
# defaults, so they win (for example -runs=10000000 or -jobs=...).
#
# Exit status: 0 when the run ended without a finding; non-zero on any crash, model
# mismatch (an abort), sanitizer report, leak, timeout (-timeout=10 per input) or
# out-of-memory. The failing input is kept in $FUZZ_ARTIFACT_DIR/TARGET/ (default
# ${TMPDIR:-/tmp}/guestmem-fuzz-artifacts/TARGET/); replay it with `BUILD/fuzz/TARGET FILE`.
# The last line printed is libFuzzer's final stats line (#runs DONE cov: ft: corp: exec/s:).
#
# Environment: FUZZ_BUILD_DIR, the build directory of the fuzz preset (default build/fuzz).
#
# Signals: the library recovers faults with its own SIGSEGV/SIGBUS handler, installed when a
# target starts, after libFuzzer's and the sanitizers' handlers. A fault at one of the
# library's listed instructions is recovered and never reaches them; any other fault is
# chained to the handler installed before (ASan's or libFuzzer's), which reports it as a
# crash. This needs allow_user_segv_handler=1 (ASan's default, set here explicitly) and
# libFuzzer's and ASan's own handlers left on: with -handle_segv=0 a real fault would still
# kill the process, but without a report or a crash file. --self-test proves both halves with
# fuzz_canary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build="${FUZZ_BUILD_DIR:-$repo/build/fuzz}"


usage() {
  echo "usage: $0 TARGET SECONDS [libFuzzer args...] | $0 --self-test" >&2
  exit 2
}

# run TARGET SECONDS [args...]: the run itself; returns libFuzzer's status.
run() {
  local target="$1" seconds="$2"
  shift 2
  local binary="$build/fuzz/$target"
  if [[ ! -x "$binary" ]]; then
    echo "run.sh: $binary not built (cmake --preset fuzz && cmake --build --preset fuzz)" >&2
    return 2
  fi
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/guestmem-fuzz.XXXXXX")"
  mkdir -p "$work/corpus" "$work/artifacts"
  if [[ -d "$here/corpus/$target" ]]; then
    cp -r "$here/corpus/$target/." "$work/corpus/"
  fi
  local dict=()
  if [[ -f "$here/$target.dict" ]]; then
    dict=("-dict=$here/$target.dict")
  fi
  local status=0
  ASAN_OPTIONS="allow_user_segv_handler=1:detect_leaks=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
    "$binary" "$work/corpus" "${dict[@]}" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/" "$@" >"$work/log" 2>&1 || status=$?
  if [[ $status -eq 0 ]] && grep -q -E "^(==[0-9]+==ERROR|SUMMARY: )" "$work/log"; then
    status=1  # a sanitizer report that did not end the process still fails the run
  fi
  if [[ $status -ne 0 ]]; then
    local keep="${FUZZ_ARTIFACT_DIR:-${TMPDIR:-/tmp}/guestmem-fuzz-artifacts}/$target"
    mkdir -p "$keep"
    cp -r "$work/artifacts/." "$keep/" 2>/dev/null || true
    cp "$work/log" "$keep/log"
    tail -n 60 "$work/log" >&2
    echo "run.sh: $target FAILED (status $status); inputs and log in $keep" >&2
  fi
  grep -E "^#[0-9]+[[:space:]]+DONE" "$work/log" | tail -n 1 || tail -n 1 "$work/log"
  rm -rf "$work"
  return "$status"
}

self_test() {
  local failed=0
  echo "self-test: fuzz_canary without a failure must pass"
  if ! GUESTMEM_FUZZ_CANARY= run fuzz_canary 3 >/dev/null 2>&1; then
    echo "self-test: FAILED: the clean canary run failed" >&2
    failed=1
  fi
  local modes=(segv bus abort timeout)
  # LeakSanitizer exists only in the ASan build.
  if [[ "$(nm "$build/fuzz/fuzz_canary" 2>/dev/null | grep -c __lsan || true)" != 0 ]]; then
    modes+=(leak)
  fi
  for mode in "${modes[@]}"; do
    echo "self-test: fuzz_canary with GUESTMEM_FUZZ_CANARY=$mode must fail with a reproducer"
    local dir
    dir="$(mktemp -d)"
    if FUZZ_ARTIFACT_DIR="$dir" GUESTMEM_FUZZ_CANARY="$mode" \
        run fuzz_canary 20 -timeout=2 >/dev/null 2>&1; then
      echo "self-test: FAILED: mode $mode was not reported" >&2
      failed=1
    elif ! compgen -G "$dir/fuzz_canary/crash-*" >/dev/null &&
        ! compgen -G "$dir/fuzz_canary/leak-*" >/dev/null &&
        ! compgen -G "$dir/fuzz_canary/timeout-*" >/dev/null; then
      echo "self-test: FAILED: mode $mode failed without a reproducer" >&2
      failed=1
    fi
    rm -rf "$dir"
  done
  if [[ $failed -eq 0 ]]; then
    echo "self-test: passed"
  fi
  return "$failed"
}

if [[ $# -eq 1 && "$1" == "--self-test" ]]; then
  self_test
  exit $?
fi
[[ $# -ge 2 ]] || usage
[[ "$2" =~ ^[1-9][0-9]*$ ]] || usage
run "$@"
