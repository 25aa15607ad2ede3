#!/usr/bin/env python3
"""The targets that guestmem sets against its own baselines (no peer involved), checked in one
run on this machine: fault-tolerant access (issue 6), get_and_reset (issue 4) and the IOMMU
(issue 7). Each suite runs with interleaved repetitions, so a pair's samples come from the
same stretch of time, and a ratio is the median over repetitions of the pair's ratio.

Usage: cmake --preset release && cmake --build --preset release
       python3 bench/targets.py build/release [--repetitions N] [--min-time S]

Prints one line per pair and PASS/FAIL per target; exits 1 if a target fails.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys


def run(binary, repetitions, min_time):
    out = subprocess.run(
        [binary, "--benchmark_format=json", "--benchmark_repetitions=%d" % repetitions,
         "--benchmark_enable_random_interleaving=true", "--benchmark_min_time=%g" % min_time],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    samples = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        samples.setdefault(b["run_name"], []).append(b)
    return samples


def ratios(samples, numerator, denominator, field):
    """Per repetition index, numerator[field] / denominator[field]; the median of those."""
    a, b = samples[numerator], samples[denominator]
    return statistics.median(x[field] / y[field] for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build")
    ap.add_argument("--repetitions", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.2)
    args = ap.parse_args()
    bench = os.path.join(args.build, "bench")
    print("# guestmem against its own baselines, %d interleaved repetitions, medians" % args.repetitions)
    print("# machine: %s, %s, %d cpus; date: %s" % (platform.node(), platform.platform(), os.cpu_count(),
                                                    datetime.date.today().isoformat()))
    failed = 0

    def check(what, value, op, limit):
        nonlocal failed
        ok = value >= limit if op == ">=" else value <= limit
        failed += not ok
        print("%-4s %-58s %6.3f  (%s %g)" % ("PASS" if ok else "FAIL", what, value, op, limit))

    s = run(os.path.join(bench, "vm_io_bench"), args.repetitions, args.min_time)
    print("\n# issue 6: fallible copy throughput / memcpy throughput; fallible / plain time")
    for size in ("8", "512", "4096", "1048576", "67108864"):
        r = ratios(s, "BM_FallibleCopy/" + size, "BM_Memcpy/" + size, "bytes_per_second")
        if int(size) >= 4096:
            check("fallible_copy %s B vs memcpy (throughput ratio)" % size, r, ">=", 0.95)
        else:
            print("info %-58s %6.3f" % ("fallible_copy %s B vs memcpy (throughput ratio)" % size, r))
    for plain, fallible in (("BM_PlainLoad", "BM_FallibleLoad"), ("BM_PlainStore", "BM_FallibleStore"),
                            ("BM_SliceLoad", "BM_SliceTryLoad"), ("BM_SliceStore", "BM_SliceTryStore"),
                            ("BM_MemoryLoad", "BM_MemoryTryLoad"), ("BM_MemoryStore", "BM_MemoryTryStore")):
        check("%s vs %s (time ratio)" % (fallible[3:], plain[3:]), ratios(s, fallible, plain, "real_time"), "<=", 2.0)

    s = run(os.path.join(bench, "atomic_bitmap_bench"), args.repetitions, args.min_time)
    print("\n# issue 4: swapping every word / get_and_reset (time ratio)")
    check("get_and_reset of 64 GiB at 1 % dirty, speed-up",
          ratios(s, "swap_every_word/64GiB_1pct", "get_and_reset/64GiB_1pct", "real_time"), ">=", 10.0)

    s = run(os.path.join(bench, "iommu_bench"), args.repetitions, args.min_time)
    print("\n# issue 7: IommuMemory (IOTLB hits) / plain GuestMemoryMmap (time ratio)")
    for case in ("Read8", "Read512", "Read8Pages"):
        check("%s through the IOMMU vs plain" % case, ratios(s, "BM_Iommu_" + case, "BM_Plain_" + case, "real_time"),
              "<=", 3.0)
    print("# %d target(s) failed" % failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
