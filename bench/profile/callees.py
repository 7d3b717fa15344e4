#!/usr/bin/env python3
"""What a function spends its samples on.

    callees.py SCRIPT TARGET [DEPTH] [STOP...]

For samples whose first match (leaf towards root) among STOP patterns and TARGET is TARGET,
counts the DEPTH frames just below TARGET (its callees). STOP patterns take the samples that
belong to another part (system calls, a stage measured on its own). SCRIPT as for
attribute.py.
"""
import collections
import re
import sys

from attribute import samples


def main():
    path, target = sys.argv[1], re.compile(sys.argv[2])
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    stops = [re.compile(text) for text in sys.argv[4:]]
    counts, total, matched = collections.Counter(), 0, 0
    for frames in samples(path):
        total += 1
        for index, frame in enumerate(frames):
            if any(stop.search(frame) for stop in stops):
                break
            if target.search(frame):
                matched += 1
                below = frames[max(0, index - depth):index]
                counts[" <- ".join(reversed([name[:90] for name in below])) or "(self)"] += 1
                break
    print(f"{matched} of {total} samples ({100 * matched / max(1, total):.2f}%)")
    for name, count in counts.most_common(40):
        print(f"{100 * count / total:6.2f}%  {name}")


if __name__ == "__main__":
    main()
