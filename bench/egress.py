#!/usr/bin/env python3
"""What egress rules add to a `nat` create: `warren create --no-home` with no rules, with
address rules and with a domain rule, interleaved round by round against one daemon of
its own (in a temporary directory), the first rounds dropped as warm-up. Needs root.

    python3 bench/egress.py --warren target/release/warren --rounds 12
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

CASES = {
    "nat": ["--network", "nat"],
    "address rules": ["--network", "nat", "--deny-out", "0.0.0.0/0", "--allow-out", "1.1.1.1"],
    "a domain rule": ["--network", "nat", "--allow-out", "pypi.org"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warren", default="target/release/warren")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="wb", dir="/tmp")
    env = dict(os.environ, WARREN_DATA_DIR=f"{root}/data", WARREN_RUN_DIR=f"{root}/run")
    daemon = subprocess.Popen(
        [a.warren, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    times = {k: [] for k in CASES}
    try:
        sock = f"{root}/run/warren.sock"
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        for i in range(a.rounds):
            for name, flags in CASES.items():
                t = time.perf_counter()
                made = subprocess.run(
                    [a.warren, "create", "--no-home", *flags],
                    env=env, capture_output=True, text=True, check=True,
                )
                ms = (time.perf_counter() - t) * 1000
                subprocess.run(
                    [a.warren, "rm", made.stdout.strip()], env=env, capture_output=True, check=True
                )
                if i >= a.warmup:
                    times[name].append(ms)
        base = statistics.median(times["nat"])
        print(f"load {os.getloadavg()[0]:.2f}")
        for name, v in times.items():
            p50 = statistics.median(v)
            print(f"{name}: p50 {p50:.1f} ms (+{p50 - base:.1f} ms), n={len(v)}")
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
