#!/usr/bin/env python3
"""Per-call counts by kind of thread, from `perf stat --per-thread -x,` output.

    threads.py STAT CALLS
"""
import collections
import sys

KINDS = [("NIO-SGLTN", "event loops"), ("SGLTN-TP", "thread pool (ledger, audit)")]


def main():
    path, calls = sys.argv[1], float(sys.argv[2])
    counts = collections.defaultdict(collections.Counter)
    for line in open(path):
        fields = line.strip().split(",")
        if len(fields) < 4 or line.startswith("#") or not fields[1].isdigit():
            continue
        thread, value, event = fields[0], int(fields[1]), fields[3]
        kind = next((name for prefix, name in KINDS if thread.startswith(prefix)), "other threads")
        counts[event][kind] += value
        counts[event]["all"] += value
    kinds = [name for _, name in KINDS] + ["other threads", "all"]
    print(f"  {'':40} " + " ".join(f"{kind[:12]:>12}" for kind in kinds))
    for event in sorted(counts):
        print(f"  {event:40} " + " ".join(f"{counts[event][kind] / calls:12.2f}" for kind in kinds))


if __name__ == "__main__":
    main()
