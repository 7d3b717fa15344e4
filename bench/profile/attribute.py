#!/usr/bin/env python3
"""Splits perf samples into named parts of a call.

    attribute.py SCRIPT PATTERN...

SCRIPT is `perf script -F comm,ip,sym | swift demangle --simplified` output. Each sample is
given to the first PATTERN (a regular expression) that matches one of its frames, walking
from the leaf towards the root, so list the narrow parts (system calls, SQLite) before the
wide ones (the handler that calls everything). Prints each part's share of all samples.
"""
import collections
import re
import sys


def samples(path):
    """Yields each sample's frames, leaf first."""
    frames = []
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                if frames:
                    yield frames
                frames = []
            elif line[0] not in " \t":
                frames = []  # the sample's header line (thread name)
            else:
                parts = line.strip().split(None, 1)
                frames.append(parts[1] if len(parts) > 1 else "")
    if frames:
        yield frames


def main():
    path, patterns = sys.argv[1], [(text, re.compile(text)) for text in sys.argv[2:]]
    counts, total = collections.Counter(), 0
    for frames in samples(path):
        total += 1
        counts[next((text for frame in frames for text, pattern in patterns if pattern.search(frame)), "(other)")] += 1
    for name, count in counts.most_common():
        print(f"{100 * count / total:6.2f}%  {name}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
