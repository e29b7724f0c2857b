#!/usr/bin/env python3
"""What an idle sandbox's helper and agent hold, and what removing one costs.

Starts its own `warren serve` in a temporary directory, then `--rounds` times, one
sandbox at a time (no home volume): reads its helper's and agent's page tables (VmPTE)
and private dirty memory (smaps_rollup) at the create's answer and `--wait` seconds
later, runs a command that prints `--output` bytes (collected by the daemon) and reads
them right after it and `--wait` seconds later, then removes the sandbox and times the
`DELETE`. Prints the medians; with `--fresh`, each round also times the removal of a
sandbox made just before (its helper not settled yet).

    python3 bench/settle.py [--warren target/release/warren] [--rounds 10] [--wait 2]
                            [--output 8000000] [--fresh]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api as api_mod  # noqa: E402

BODY = {"home_volume": False}


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
        except (OSError, ValueError, IndexError):
            continue
    return out


def memory(pid):
    """(VmPTE, Private_Dirty) of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        pte = next(int(line.split()[1]) for line in f if line.startswith("VmPTE:"))
    with open(f"/proc/{pid}/smaps_rollup") as f:
        dirty = next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))
    return pte, dirty


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--wait", type=float, default=2.0)
    ap.add_argument("--output", type=int, default=8_000_000)
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-settle-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_LOG="off", WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {}
    script = f"head -c {a.output} /dev/zero | tr '\\0' a"
    try:
        api = api_mod.connect(sock)

        def note(key, helper, agent):
            h, g = memory(helper), memory(agent)
            for who, (pte, dirty) in (("helper", h), ("agent", g)):
                rows.setdefault(f"{who} page tables, {key}", []).append(pte)
                rows.setdefault(f"{who} private dirty, {key}", []).append(dirty)

        def delete(sid):
            t0 = time.perf_counter()
            api.call("DELETE", f"/v1/sandboxes/{sid}")
            return api_mod.ms(t0)

        for _ in range(a.rounds):
            if a.fresh:
                sid = api.call("POST", "/v1/sandboxes", BODY)["id"]
                rows.setdefault("DELETE at once (ms)", []).append(delete(sid))
            sid = api.call("POST", "/v1/sandboxes", BODY)["id"]
            # The zygote (made with the first sandbox) forks each sandbox's helper; the
            # one with an agent (a removed sandbox's may still be tearing down).
            ((helper, (agent,)),) = [(h, kids) for z in children(server.pid)
                                     for h in children(z) if (kids := children(h))]
            note("at the answer", helper, agent)
            time.sleep(a.wait)
            note(f"{a.wait:g} s later", helper, agent)
            api.call("POST", f"/v1/sandboxes/{sid}/exec", {"command": {"argv": ["sh", "-c", script]}})
            note("after the output", helper, agent)
            time.sleep(a.wait)
            note(f"{a.wait:g} s after the output", helper, agent)
            rows.setdefault(f"DELETE after {2 * a.wait:g} s (ms)", []).append(delete(sid))
        for key, xs in rows.items():
            print(f"{key:45} median {statistics.median(xs):8.2f}  (min {min(xs)}, max {max(xs)})"
                  if "ms" not in key else
                  f"{key:45} median {statistics.median(xs):8.2f}  p90 {api_mod.pct(xs, 0.9):.2f}")
    finally:
        try:
            for s in api_mod.Api(sock).call("GET", "/v1/sandboxes"):
                api_mod.Api(sock).call("DELETE", f"/v1/sandboxes/{s['id']}")
        except (OSError, RuntimeError) as e:
            print(f"cleanup: {e}", file=sys.stderr)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
