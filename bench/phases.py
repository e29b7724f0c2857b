#!/usr/bin/env python3
"""Where `warren run --rm -- true` spends its time, phase by phase.

Runs the command N times with WARREN_TRACE=1 and prints, for every phase the CLI and
the helper mark, the median and p90 of the time since the previous mark and since the
CLI started. "create to agent ready" is from the CLI's backend being ready to the
sandbox being reported created (the helper's whole set-up, seen from the caller).

    python3 bench/phases.py [--runs 50] [--warren target/release/warren]
"""
import argparse
import re
import os
import statistics
import subprocess
import sys
import tempfile


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-phases-")
    env = dict(os.environ, WARREN_TRACE="1",
               WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    order, since_prev, since_start, ready = [], {}, {}, []
    for i in range(a.runs + 3):
        p = subprocess.run([a.warren, "run", "--rm", "--", "true"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            subprocess.run(["rm", "-rf", tmp])
            sys.exit(f"warren failed: {p.stderr.strip()}")
        # The CLI and the helper share stderr and a mark may be written in pieces, so
        # lines can run into each other: find the marks rather than split lines.
        marks = [(int(m.group(1)), m.group(3).strip()) for m in re.finditer(
            r"trace (\d+) (\d+) (.+?)(?=trace \d+ \d+ |\n|$)", p.stderr)]
        if i < 3 or not marks:
            continue
        marks.sort()
        t0, prev = marks[0][0], marks[0][0]
        seen = {}
        for t, name in marks:
            if name in seen:
                continue
            seen[name] = t
            if name not in order:
                order.append(name)
            since_prev.setdefault(name, []).append((t - prev) / 1000)
            since_start.setdefault(name, []).append((t - t0) / 1000)
            prev = t
        if "cli: backend ready" in seen and "cli: sandbox created" in seen:
            ready.append((seen["cli: sandbox created"] - seen["cli: backend ready"]) / 1000)
    subprocess.run(["rm", "-rf", tmp])
    print(f"{'phase':32} {'step p50':>9} {'step p90':>9} {'at p50':>8}   (ms, {a.runs} runs)")
    for name in order:
        xs, ys = since_prev[name], since_start[name]
        print(f"{name:32} {statistics.median(xs):9.2f} {pct(xs, .9):9.2f} {statistics.median(ys):8.2f}")
    if ready:
        print(f"\ncreate to agent ready: p50 {statistics.median(ready):.2f} ms, "
              f"p90 {pct(ready, .9):.2f} ms")


if __name__ == "__main__":
    main()
