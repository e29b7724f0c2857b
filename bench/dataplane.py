#!/usr/bin/env python3
"""Data plane, A/B: exec round trip and 100 MB binary stream of several warren binaries.

Starts one `warren serve` per binary (temp directories under /tmp), one sandbox in each,
then alternates the binaries round by round: each round times 20 execs of `true`
(POST /exec, median) and one 100 MB stdout stream (`head -c 100000000 /dev/zero`,
`?stream=binary`, MB/s); with `--files`, also 20 writes and 20 reads of a 1 KiB file
(PUT and GET /files, medians). A plain pipe from the same `head` to the same reader is timed
in every round too, as the floor. Prints medians, min and max per binary. Root.

    python3 bench/dataplane.py BIN_A BIN_B [--rounds 20] [--isolation gvisor] [--no-stream]
                                      [--files]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402  (the suite's API client and stream reader)

HEAD = ["head", "-c", "100000000", "/dev/zero"]
KIB_BYTES = bytes(range(256)) * 4


def start(binary, isolation):
    tmp = tempfile.mkdtemp(prefix="wdp-", dir="/tmp")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    sock = os.path.join(tmp, "run", "warren.sock")
    d = subprocess.Popen([binary, "serve", "--socket", sock], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    api = suite.Api(sock)
    body = {"home_volume": False}
    if isolation:
        body["isolation"] = isolation
    sid = api.call("POST", "/v1/sandboxes", body)["id"]
    return {"bin": binary, "daemon": d, "tmp": tmp, "api": api, "sid": sid}


def stop(w):
    try:
        w["api"].call("DELETE", f"/v1/sandboxes/{w['sid']}")
    finally:
        w["daemon"].terminate()
        w["daemon"].wait()
        shutil.rmtree(w["tmp"], ignore_errors=True)


def pipe_mbps():
    t = time.perf_counter()
    p = subprocess.Popen(HEAD, stdout=subprocess.PIPE)
    n = 0
    while True:
        chunk = p.stdout.read1(1 << 20)
        if not chunk:
            break
        n += len(chunk)
    p.wait()
    return n / 1e6 / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--isolation", help="the sandboxes' backend (default: the daemon's)")
    ap.add_argument("--no-stream", action="store_true", help="execs only")
    ap.add_argument("--files", action="store_true", help="small file writes and reads too")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED dataplane: sandboxes need root")
        return 0
    workers = []
    execs = {b: [] for b in a.binaries}
    streams = {b: [] for b in a.binaries}
    writes = {b: [] for b in a.binaries}
    reads = {b: [] for b in a.binaries}
    floor = []
    try:
        for b in a.binaries:
            workers.append(start(b, a.isolation))
        for _ in range(a.rounds):
            for w in workers:
                api, sid = w["api"], w["sid"]
                xs = []
                for _ in range(20):
                    t = time.perf_counter()
                    api.call("POST", f"/v1/sandboxes/{sid}/exec",
                             {"command": {"argv": ["true"]}})
                    xs.append((time.perf_counter() - t) * 1000)
                execs[w["bin"]].append(statistics.median(xs))
                if a.files:
                    url = f"/v1/sandboxes/{sid}/files?path=/tmp/f"
                    ws, rs = [], []
                    for _ in range(20):
                        t = time.perf_counter()
                        api.call("PUT", url, KIB_BYTES)
                        ws.append((time.perf_counter() - t) * 1000)
                        t = time.perf_counter()
                        if api.call("GET", url, expect_json=False) != KIB_BYTES:
                            raise RuntimeError(f"{w['bin']}: the file read back differs")
                        rs.append((time.perf_counter() - t) * 1000)
                    writes[w["bin"]].append(statistics.median(ws))
                    reads[w["bin"]].append(statistics.median(rs))
                if not a.no_stream:
                    t = time.perf_counter()
                    n = api.stream_binary(sid, HEAD)
                    if n != 100_000_000:
                        raise RuntimeError(f"{w['bin']}: read {n} bytes")
                    streams[w["bin"]].append(n / 1e6 / (time.perf_counter() - t))
            if not a.no_stream:
                floor.append(pipe_mbps())
    finally:
        for w in workers:
            stop(w)
    for b in a.binaries:
        e = execs[b]
        line = f"{b:40} exec true {statistics.median(e):7.3f} ms ({min(e):.3f}-{max(e):.3f})"
        for name, xs in (("write 1 KiB", writes[b]), ("read 1 KiB", reads[b])):
            if xs:
                line += f"   {name} {statistics.median(xs):.3f} ms ({min(xs):.3f}-{max(xs):.3f})"
        if streams[b]:
            s = streams[b]
            line += f"   stream {statistics.median(s):7.1f} MB/s ({min(s):.0f}-{max(s):.0f})"
        print(line)
    if floor:
        print(f"{'a pipe from head to the same reader':40} {'':28}   stream "
              f"{statistics.median(floor):7.1f} MB/s ({min(floor):.0f}-{max(floor):.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
