#!/usr/bin/env python3
"""Two builds of Warren, alternated: `warren run --rm -- true`, end to end.

    python3 bench/run-ab.py BEFORE AFTER [--runs 100]

Runs the command with each binary in turn (the order swapped every run), each with the
same `WARREN_RUN_DIR` and `WARREN_DATA_DIR` of a temp dir of its own, and prints per
build the median, p25 and p75 of the wall time from spawn to exit, and the after/before
ratio of the medians. Three runs of each are thrown away first (the host template is
built once). Python 3 standard library only; root.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--runs", type=int, default=100)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-run-ab-")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    bins = [a.before, a.after]
    times = {b: [] for b in bins}
    try:
        for i in range(a.runs + 3):
            for b in bins if i % 2 == 0 else bins[::-1]:
                start = time.perf_counter()
                subprocess.run([b, "run", "--rm", "--", "true"], env=env, check=True)
                if i >= 3:
                    times[b].append((time.perf_counter() - start) * 1000)
    finally:
        # The run directory is a tmpfs the CLI mounted; the last run released it.
        shutil.rmtree(tmp, ignore_errors=True)
    for b in bins:
        xs = sorted(times[b])
        q = statistics.quantiles(xs, n=4)
        print(f"{b}: median {statistics.median(xs):.2f} ms, p25 {q[0]:.2f}, p75 {q[2]:.2f}")
    ratio = statistics.median(times[a.after]) / statistics.median(times[a.before])
    print(f"after/before: {ratio:.3f}")


if __name__ == "__main__":
    main()
