#!/usr/bin/env python3
"""What a sandbox keeps of the work it did, per backend: its host memory before and after
many commands and file calls, and (where it pauses with memory) its pause and image.

    python3 bench/soak.py [--warren target/release/warren] [--commands 1000]
                          [--files 300] [--backends namespace,gvisor,runc,crun]

Starts its own `warren serve` (`WARREN_LOG=off`, in a temporary directory). For each
backend asked for that `GET /v1/backends` says is available, one sandbox with an idle
shell (`while true; do sleep 1; done`, started in the background) runs, in turn:

  commands  `true`, `--commands` times, through `POST .../exec`
  files     `--files` rounds of a 1 KB write, its read, a stat and a list of /tmp

and after each step, once the sandbox settled for a second: the memory of its cgroup
(user and kernel, `memory.usage_in_bytes` or `memory.current`) and, on gvisor, the time
of `POST .../pause` with the image's size (then resumed). A sandbox that keeps something
of every call shows it here as growth: memory that rises with each step, or a pause and
image that do. Every sandbox is removed and the daemon stopped, whatever happens.
Python 3 standard library only; root.
"""
import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


api_mod, backends_mod, ab_mod = load("api"), load("backends"), load("ab")
Api, ms = api_mod.Api, api_mod.ms
IDLE = ["sh", "-c", "while true; do sleep 1; done"]


def raw(sock, method, url, body=None):
    """A call whose body or answer is not JSON: the answer's bytes."""
    conn = api_mod.UnixHTTP(sock)
    try:
        conn.request(method, url, body=body)
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {url}: {r.status} {data[:200]!r}")
    return data


def reading(api, sock, sid, data_dir, backend):
    """Memory (KiB) after a second's rest, and on gvisor a pause (ms) and its image (KiB)."""
    time.sleep(1)
    mem = backends_mod.cgroup_memory(sid)
    out = {"memory KiB": None if mem is None else mem >> 10}
    if backend == "gvisor":
        t0 = time.perf_counter()
        api.call("POST", f"/v1/sandboxes/{sid}/pause")
        out["pause ms"] = ms(t0)
        out["image KiB"] = backends_mod.du(
            os.path.join(data_dir, "sandboxes", sid, "image")) >> 10
        api.call("POST", f"/v1/sandboxes/{sid}/resume")
    return out


def soak(api, sock, data_dir, backend, commands, files):
    sid = api.call("POST", "/v1/sandboxes", {"isolation": backend})["id"]
    try:
        backends_mod.start_background(sock, sid, IDLE)
        rows = [("started", reading(api, sock, sid, data_dir, backend))]
        for _ in range(commands):
            api.call("POST", f"/v1/sandboxes/{sid}/exec", backends_mod.TRUE)
        rows.append((f"after {commands} commands", reading(api, sock, sid, data_dir, backend)))
        for i in range(files):
            path = f"/tmp/soak{i % 10}"
            raw(sock, "PUT", f"/v1/sandboxes/{sid}/files?path={path}", b"x" * 1000)
            raw(sock, "GET", f"/v1/sandboxes/{sid}/files?path={path}")
            raw(sock, "GET", f"/v1/sandboxes/{sid}/files/stat?path={path}")
            raw(sock, "GET", f"/v1/sandboxes/{sid}/files/list?path=/tmp")
        rows.append((f"after {files} file rounds", reading(api, sock, sid, data_dir, backend)))
        return rows
    finally:
        try:
            api.call("DELETE", f"/v1/sandboxes/{sid}")
        except RuntimeError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warren", default=os.path.join(os.path.dirname(HERE),
                                                     "target/release/warren"))
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--backends", default="namespace,gvisor,runc,crun")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    tmp = tempfile.mkdtemp(prefix="wsoak-")
    sock = os.path.join(tmp, "run", "warren.sock")
    data_dir = os.path.join(tmp, "data")
    # A daemon as bench/ab.py starts one: its directories in `tmp`, its log off.
    server, api = ab_mod.start(a.warren, tmp)
    try:
        offered = {b["name"]: b for b in api.call("GET", "/v1/backends")}
        for backend in a.backends.split(","):
            b = offered.get(backend)
            if not b or not b["available"]:
                print(f"SKIPPED {backend}: {(b or {}).get('reason', 'not offered')}")
                continue
            for step, r in soak(api, sock, data_dir, backend, a.commands, a.files):
                figures = ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in r.items())
                print(f"{backend:<10} {step:<26} {figures}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
