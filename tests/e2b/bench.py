"""Sandbox.create() + commands.run("true") through the E2B SDK, against a live Warren.

    sudo python tests/e2b/bench.py [--rounds 50] [--warren target/release/warren]

Starts its own `warren serve --e2b-listen` in a temp dir, times each round from before
`Sandbox.create()` to the end of `commands.run("true")` (the kill is outside the timing),
and prints p50 and p90 in milliseconds. Run it with the venv of scripts/e2b-test.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pool", type=int, default=0,
                    help="keep this many warm `host` sandboxes (POST /v1/pools) before timing")
    ap.add_argument("--warren", default=os.path.join(conftest.ROOT, "target", "release", "warren"))
    args = ap.parse_args()
    conftest.WARREN = args.warren
    d = conftest.Daemon()
    os.environ.update(E2B_API_KEY=d.key, E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url)
    from e2b import Sandbox

    if args.pool:
        spec = json.dumps({"template": "host", "min": args.pool, "max": args.pool})
        subprocess.run(["curl", "-sf", "--unix-socket", d.socket, "-H", "Content-Type: application/json",
                        "-d", spec, "http://localhost/v1/pools"], check=True, capture_output=True)
        time.sleep(2)

    samples = []
    try:
        for i in range(args.warmup + args.rounds):
            t = time.perf_counter()
            sb = Sandbox.create()
            sb.commands.run("true")
            dt = (time.perf_counter() - t) * 1000
            sb.kill()
            if args.pool:
                time.sleep(0.2)  # let the pool refill, as between requests in service
            if i >= args.warmup:
                samples.append(dt)
    finally:
        d.kill_all()
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)
    samples.sort()
    q = statistics.quantiles(samples, n=10)
    print(f"rounds {len(samples)}  p50 {statistics.median(samples):.1f} ms  p90 {q[8]:.1f} ms  "
          f"min {samples[0]:.1f} ms  max {samples[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
