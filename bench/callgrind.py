#!/usr/bin/env python3
"""Instruction counts (callgrind) of the daemon's exec and create paths.

Wall-clock figures move with whatever else the machine runs; callgrind counts the
instructions a process executes, which is the same from run to run within a few per cent.
This script starts its own `warren serve` under `valgrind --tool=callgrind` (state in a
temp dir: WARREN_RUN_DIR, WARREN_DATA_DIR) and measures, through the unix-socket API:

  exec    N collected execs of `true` in one running sandbox
  create  N creates, each followed by its remove (`POST /v1/sandboxes`, `DELETE`)
  first   N creates, each followed by one exec of `true` and its remove: less the
          create window, what a new sandbox's first exec costs (its agent connection)
  idle    the daemon doing nothing for as long as each window above took (its ticks:
          reaper, metrics, disk measures), subtracted from both

With `--running N`, both windows are measured again with N more sandboxes running
(made first, outside any window): what a create and an exec cost the daemon when it
holds many sandboxes, and, from the idle windows, what those sandboxes cost it per
second doing nothing.

Each window is bracketed with `callgrind_control --zero` and `--dump`, so only the daemon's
instructions between the two count: its helpers (`warren __init`) and agents are separate
processes that run natively (valgrind does not follow exec by default). The agent's
side of an exec is not counted: BENCHMARKS.md says why.

    python3 bench/callgrind.py [--n 100] [--running N] [--top 25] [--warren PATH] [--json PATH]

Root (sandboxes need it); needs valgrind (`apt-get install valgrind`). A release build has
line tables, which is what callgrind_annotate needs for function names. Not part of CI:
about 2-4 minutes. At the end every sandbox is removed, the daemon stopped, and
`warren doctor` with the same directories must report nothing (exit 1 otherwise).
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Api:
    def __init__(self, path):
        self.conn = UnixHTTP(path)

    def call(self, method, url, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data is not None else {}
        self.conn.request(method, url, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {url}: {r.status} {raw[:300]!r}")
        if raw and r.getheader("content-type", "").startswith("application/json"):
            return json.loads(raw)
        return raw


def log(msg):
    print(msg, file=sys.stderr, flush=True)


TRUE = {"command": {"argv": ["true"]}}
CREATE = {"home_volume": False}


class Grind:
    """One process under callgrind, controlled with callgrind_control."""

    def __init__(self, pid, out_base):
        self.pid = pid
        self.out_base = out_base
        self.dumps = 0

    def control(self, *args):
        r = subprocess.run(["callgrind_control", *args, str(self.pid)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"callgrind_control {' '.join(args)} {self.pid}: "
                               f"{r.stdout.strip()} {r.stderr.strip()}")

    def zero(self):
        self.control("--zero")

    def dump(self, label):
        self.control(f"--dump={label}")
        self.dumps += 1
        # The dump is numbered in order: <out>.<n>.
        path = f"{self.out_base}.{self.dumps}"
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(path):
            raise RuntimeError(f"callgrind wrote no {path}")
        return path


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def top_functions(path, n):
    """(inclusive Ir, function) of the top n by inclusive cost, from callgrind_annotate."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", f"--threshold=100",
                        path], capture_output=True, text=True, timeout=300)
    rows, seen = [], set()
    pat = re.compile(r"^\s*([\d,]+)\s+(?:\([\s\d.%]+\)\s+)?(\S.*)$")
    started = False
    for line in r.stdout.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started or not line.strip() or line.startswith("-"):
            continue
        m = pat.match(line)
        if not m:
            continue
        file, _, name = m.group(2).partition(":")
        name = re.sub(r" \[[^\]]*\]$", "", name)
        if "/crates/" in file and not name.startswith("warren"):
            # A generic frame (an axum handler's future) in our code: name the file.
            name = f"{name.split('<')[0] or 'handler'} in crates/{file.split('/crates/', 1)[1]}"
        name = demangle_short(name)
        if SCAFFOLDING.search(name) or name in seen:
            continue
        seen.add(name)
        rows.append((int(m.group(1).replace(",", "")), name))
        if len(rows) >= n:
            break
    return rows


# Frames that contain everything below them (the runtime, the HTTP stack, a future's
# poll) say nothing about where the time goes; the list skips them.
SCAFFOLDING = re.compile(
    r"^(tokio::|hyper::|axum::serve|axum::middleware|axum::routing|tower::|futures_util::|"
    r"std::|core::|alloc::|<\.\.>::poll|<\.\.>::call|<\.\.>::new::thread_start|"
    r"clone\b|start_thread\b|<F as axum::handler)")


def demangle_short(name):
    """Drops Rust's hash suffix and long generic arguments so a line stays readable."""
    name = re.sub(r"::h[0-9a-f]{16}", "", name)
    name = name.replace(" [/", " [").strip()
    out, depth = [], 0
    for c in name:
        if c == "<":
            depth += 1
            if depth == 1:
                out.append("<")
            continue
        if c == ">":
            depth -= 1
            if depth == 0:
                out.append("..>")
            continue
        if depth <= 1:
            out.append(c) if depth == 0 else None
    return "".join(out)[:150]


class Daemon:
    def __init__(self, warren, tmp, name):
        self.warren = warren
        self.dir = os.path.join(tmp, name)
        self.run_dir = os.path.join(self.dir, "run")
        self.data_dir = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.run_dir, "warren.sock")
        self.out = os.path.join(self.dir, "callgrind.out")
        self.env = dict(os.environ, WARREN_RUN_DIR=self.run_dir, WARREN_DATA_DIR=self.data_dir)
        self.env.pop("WARREN_TRACE", None)
        os.makedirs(self.dir)
        self.log_path = os.path.join(self.dir, "serve.log")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}.%p",
                "--dump-instr=no", "--collect-jumps=no"]
        argv += [warren, "serve", "--socket", self.sock]
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        self.grind = Grind(self.proc.pid, f"{self.out}.{self.proc.pid}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"warren serve exited {self.proc.returncode}: {self.tail()}")
            if os.path.exists(self.sock):
                try:
                    Api(self.sock).call("GET", "/health")
                    self.api = Api(self.sock)
                    return
                except (OSError, RuntimeError, http.client.HTTPException):
                    pass
            time.sleep(0.1)
        raise RuntimeError("warren serve under valgrind did not answer /health within 120 s")

    def tail(self, n=20):
        try:
            with open(self.log_path) as f:
                return " | ".join(f.read().strip().splitlines()[-n:])
        except OSError:
            return ""

    def remove_all(self):
        api = Api(self.sock)
        for sb in api.call("GET", "/v1/sandboxes"):
            api.call("DELETE", f"/v1/sandboxes/{sb['id']}")

    def stop(self):
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()

    def doctor(self):
        """`warren doctor`'s verdict, once the helpers of the last removes have finished:
        a helper tears its sandbox down (cgroups, mounts) after the daemon has answered,
        so the first seconds after a stop may still show them."""
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run([self.warren, "doctor"], env=self.env, capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0 or time.monotonic() > deadline:
                return r.returncode, (r.stdout + r.stderr).strip()
            time.sleep(0.5)


def window(grind, label, work):
    """Zeroes, runs work(), dumps; returns (Ir, seconds, dump path)."""
    grind.zero()
    t0 = time.monotonic()
    work()
    secs = time.monotonic() - t0
    path = grind.dump(label)
    return total_ir(path), secs, path


def idle(grind, label, secs):
    return window(grind, label, lambda: time.sleep(secs))[0]


def figure(n, ir, quiet, secs, path, top):
    return {"n": n, "window_ir": ir, "idle_ir": quiet, "seconds": round(secs, 2),
            "idle_ir_per_s": round(quiet / secs) if secs else None,
            "per_op": (ir - quiet) // n, "top": top_functions(path, top)}


def measure_daemon(d, n, top, tag=""):
    api = d.api
    sid = api.call("POST", "/v1/sandboxes", CREATE)["id"]
    # Warm-up: first connections, lazily built state, the page cache.
    for _ in range(3):
        api.call("POST", f"/v1/sandboxes/{sid}/exec", TRUE)
    # The reaper's first passes over it (statements prepared once) before any window.
    time.sleep(2.5)
    ir, secs, path = window(d.grind, f"exec{tag}", lambda: [
        api.call("POST", f"/v1/sandboxes/{sid}/exec", TRUE) for _ in range(n)])
    quiet = idle(d.grind, f"exec-idle{tag}", secs)
    exec_fig = figure(n, ir, quiet, secs, path, top)
    api.call("DELETE", f"/v1/sandboxes/{sid}")

    for _ in range(2):
        s = api.call("POST", "/v1/sandboxes", CREATE)["id"]
        api.call("DELETE", f"/v1/sandboxes/{s}")

    def creates():
        for _ in range(n):
            s = api.call("POST", "/v1/sandboxes", CREATE)["id"]
            api.call("DELETE", f"/v1/sandboxes/{s}")

    ir, secs, path = window(d.grind, f"create{tag}", creates)
    quiet = idle(d.grind, f"create-idle{tag}", secs)
    create_fig = figure(n, ir, quiet, secs, path, top)

    def firsts():
        for _ in range(n):
            s = api.call("POST", "/v1/sandboxes", CREATE)["id"]
            api.call("POST", f"/v1/sandboxes/{s}/exec", TRUE)
            api.call("DELETE", f"/v1/sandboxes/{s}")

    ir, secs, path = window(d.grind, f"first{tag}", firsts)
    quiet = idle(d.grind, f"first-idle{tag}", secs)
    return exec_fig, create_fig, figure(n, ir, quiet, secs, path, top)


def fill(d, count):
    """Makes `count` sandboxes that stay running; returns their ids."""
    ids = []
    t0 = time.monotonic()
    for i in range(count):
        ids.append(d.api.call("POST", "/v1/sandboxes", CREATE)["id"])
        if (i + 1) % 100 == 0:
            log(f"  {i + 1} running ({time.monotonic() - t0:.0f} s)")
    return ids


def show(title, fig):
    print(f"\n== {title}: {fig['per_op']:,} instructions per operation "
          f"(window {fig['window_ir']:,} Ir over {fig['n']} in {fig['seconds']} s, "
          f"idle {fig['idle_ir']:,} Ir subtracted)")
    print("   inclusive Ir   per op   function")
    for ir, fn in fig["top"]:
        print(f"   {ir:>12,} {ir // fig['n']:>8,}   {fn}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "target"))
    ap.add_argument("--warren", default=os.path.join(target, "release/warren"))
    ap.add_argument("--n", type=int, default=100, help="operations per window (default 100)")
    ap.add_argument("--top", type=int, default=25, help="functions listed per window")
    ap.add_argument("--running", type=int, default=0,
                    help="measure again with this many sandboxes running")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (callgrind files)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y valgrind")
    warren = os.path.abspath(a.warren)
    tmp = tempfile.mkdtemp(prefix="wcg-")
    log(f"state and callgrind files in {tmp}")
    daemons, problems, figs = [], [], {}
    try:
        d = Daemon(warren, tmp, "daemon")
        daemons.append(d)
        log(f"exec and create windows, n={a.n} (the daemon runs about 50x slower under callgrind)")
        figs["exec"], figs["create"], figs["first"] = measure_daemon(d, a.n, a.top)
        if a.running:
            log(f"making {a.running} sandboxes that stay running")
            fill(d, a.running)
            time.sleep(5)  # their first reaper passes and disk measures
            (figs[f"exec_{a.running}"], figs[f"create_{a.running}"],
             figs[f"first_{a.running}"]) = measure_daemon(d, a.n, a.top, tag=f"-{a.running}")
    finally:
        for d in daemons:
            try:
                d.remove_all()
            except Exception as e:  # noqa: BLE001 - the daemon may be gone already
                problems.append(f"removing sandboxes: {e}")
            d.stop()
            time.sleep(0.5)
            code, out = d.doctor()
            if code != 0:
                problems.append(f"warren doctor ({d.dir}): exit {code}: {out}")
            else:
                log(f"warren doctor ({os.path.basename(d.dir)}): exit 0: {out.splitlines()[0]}")
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=here).stdout.strip()
    print(f"commit {commit}, binary {warren}")
    show("daemon: exec of `true` (collected) in a running sandbox", figs["exec"])
    show("daemon: create + remove", figs["create"])
    show("daemon: create + first exec of `true` + remove", figs["first"])
    print(f"   a first exec: {figs['first']['per_op'] - figs['create']['per_op']:,} "
          f"instructions (the window above less create + remove)")
    if a.running:
        show(f"daemon: exec of `true` with {a.running} more running", figs[f"exec_{a.running}"])
        show(f"daemon: create + remove with {a.running} running", figs[f"create_{a.running}"])
        show(f"daemon: create + first exec + remove with {a.running} running",
             figs[f"first_{a.running}"])
    for name, fig in figs.items():
        print(f"   idle {name}: {fig['idle_ir_per_s']:,} Ir per second of the daemon doing nothing")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"commit": commit, "figures": figs, "problems": problems}, f, indent=1)
    for p in problems:
        print(f"LEAK: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
