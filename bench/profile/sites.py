#!/usr/bin/env python3
"""Where allocations come from: the first frame of each malloc's stack that is not the
allocator, the Swift runtime or a standard-library container.

    sites.py SCRIPT CALLS [DEPTH] [COUNT]

SCRIPT is `perf script -F comm,ip,sym | swift demangle --simplified` output of a recording of
the `probe_libc:malloc` uprobe (bench/profile/allocs with SITES=1). Prints allocations per call
by site, DEPTH frames from the site towards the root.
"""
import collections
import re
import sys

from attribute import samples

ALLOCATOR = re.compile(
    r"^(malloc|__GI___libc_malloc|_int_malloc|swift_|_swift_|__swift|swift::|\[unknown\]|_allocateStringStorage|"
    r"(specialized )?static __StringStorage|(specialized )?static String\.|String\.|_StringGuts|_SmallString|"
    r"(specialized )?static _DictionaryStorage|(specialized )?static _SetStorage|(specialized )?_ContiguousArrayBuffer|"
    r"(specialized )?_copyCollectionToContiguousArray|(specialized )?Array\.|_allocateUninitializedArray|"
    r"(specialized )?_allocateUninitializedArray|static __RawDictionaryStorage)"
)


def main():
    path, calls = sys.argv[1], float(sys.argv[2])
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    sites, total = collections.Counter(), 0
    for frames in samples(path):
        total += 1
        index = next((i for i, frame in enumerate(frames) if not ALLOCATOR.search(frame)), None)
        sites["?" if index is None else " <- ".join(frame[:80] for frame in frames[index:index + depth])] += 1
    print(f"  {total / calls:7.2f}  allocations (malloc)")
    for site, hits in sites.most_common(count):
        print(f"  {hits / calls:7.2f}  {site}")


if __name__ == "__main__":
    main()
