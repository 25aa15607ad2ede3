#!/usr/bin/env python3
"""Joins alternated runs of the vm-memory peer bench and guestmem-peer-bench (see compare.sh).

Usage: compare.py DIR ROUNDS   (DIR holds peer.1.. and guestmem.1..)

Per case: the median peer ns, the median guestmem ns, and the median over rounds of the
per-round ratio peer/guestmem. Then the targets of issue 3, each PASS or FAIL.
"""
import datetime
import os
import platform
import re
import statistics
import sys


def table(path):
    rows, comments = {}, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                comments.append(line)
                continue
            parts = line.split()
            rows[parts[0]] = float(parts[1])
    return rows, comments


def main():
    d, rounds = sys.argv[1], int(sys.argv[2])
    peer = [table(os.path.join(d, "peer.%d" % r))[0] for r in range(1, rounds + 1)]
    ours = [table(os.path.join(d, "guestmem.%d" % r))[0] for r in range(1, rounds + 1)]
    cpu = next((c for c in table(os.path.join(d, "guestmem.1"))[1] if c.startswith("# cpu")), "# cpu: ?")
    print("# compare: vm-memory 0.10 (peer) vs guestmem, %d alternated rounds" % rounds)
    print("# machine: %s, %s, %d cpus; %s" % (platform.node(), platform.platform(), os.cpu_count(), cpu[2:]))
    print("# date: %s" % datetime.date.today().isoformat())
    print("# ratio = median over rounds of (peer ns / guestmem ns); > 1 means guestmem is faster")
    print("%-44s %12s %12s %8s" % ("case", "peer_ns", "guestmem_ns", "ratio"))
    ratio = {}
    names = list(ours[0].keys())
    for name in list(peer[0].keys()):
        if name not in names:
            names.append(name)
    for name in names:
        p = [t[name] for t in peer if name in t]
        g = [t[name] for t in ours if name in t]
        if not p or not g:
            print("%-44s %12s %12s %8s" % (name, "%.2f" % statistics.median(p) if p else "-",
                                           "%.2f" % statistics.median(g) if g else "-", "-"))
            continue
        rs = [pt[name] / gt[name] for pt, gt in zip(peer, ours) if name in pt and name in gt]
        ratio[name] = statistics.median(rs)
        print("%-44s %12.2f %12.2f %8.2f" % (name, statistics.median(p), statistics.median(g), ratio[name]))

    targets = [
        (r"^(read|write)_obj_(small8|big96)/in_region_\d+$", 3.0, "objects of 8 and 96 bytes, in-region"),
        (r"^(read|write)_obj_u64/in_region_\d+$", 3.0, "u64 objects, in-region"),
        (r"^atomic_(load|store)_u64_\w+/in_region_\d+$", 3.0, "u64 load/store, in-region"),
        (r"^(read|write)_obj_(small8|big96)/cross_region_\d+$", 2.0, "objects of 8 and 96 bytes, cross-region"),
        (r"^(read|write|read_slice|write_slice)/(in|cross)_region_\d+$", 1.5, "512-byte read/write/read_slice/write_slice"),
        (r"^find_region/512$", 1.5, "find_region with 512 regions"),
        (r"^bitmap_write_slice_8/", 3.0, "tracked 8-byte write (issue 4)"),
        (r"^atomic_snapshot_read_obj_u64/", 3.0, "snapshot + read_obj (issue 4)"),
    ]
    print()
    print("# targets (issue 3): ratio peer/guestmem per case")
    failed = 0
    for pattern, minimum, what in targets:
        cases = sorted(n for n in ratio if re.match(pattern, n))
        worst = min(cases, key=lambda n: ratio[n]) if cases else None
        ok = worst is not None and ratio[worst] >= minimum
        failed += not ok
        print("%-4s %-45s >= %.2f  worst %s %.2f" % ("PASS" if ok else "FAIL", what, minimum,
                                                     worst or "-", ratio[worst] if worst else 0))
    # Bulk copies against guestmem's own plain memcpy (same run, same buffers).
    for size in ("1MiB", "64MiB"):
        for bulk, base in (("bulk_read_slice", "memcpy_guest_to_host"), ("bulk_write_slice", "memcpy_host_to_guest")):
            b, m = "%s/%s" % (bulk, size), "%s/%s" % (base, size)
            rs = [t[m] / t[b] for t in ours if b in t and m in t]
            if not rs:
                continue
            r = statistics.median(rs)
            ok = r >= 0.97
            failed += not ok
            print("%-4s %-45s >= 0.97  %.3f" % ("PASS" if ok else "FAIL", "%s vs own memcpy (memcpy_ns/bulk_ns)" % b, r))
    # Tracking cost: a tracked 4 KiB write within 5 % of guestmem's untracked one (issue 4).
    for tracked, plain in (("bitmap_write_slice_4096/in_region_0", "write_slice_4096/in_region_0"),
                           ("bitmap_write_slice_4096_unaligned/in_region_0", "write_slice_4096_unaligned/in_region_0")):
        rs = [t[tracked] / t[plain] for t in ours if tracked in t and plain in t]
        if not rs:
            continue
        r = statistics.median(rs)
        ok = r <= 1.05
        failed += not ok
        print("%-4s %-45s <= 1.05  %.3f" % ("PASS" if ok else "FAIL", "%s vs untracked (ns ratio)" % tracked.split("/")[0], r))
    print("# %d target(s) failed" % failed)


if __name__ == "__main__":
    main()
