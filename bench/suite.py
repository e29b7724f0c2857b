#!/usr/bin/env python3
"""Warren and its peers side by side, every scenario in one run.

    python3 bench/suite.py [--quick] [--json PATH]

Installs the peers it needs from Debian (bubblewrap, crun, runc, podman, busybox-static),
starts its own `warren serve` in a temp dir, and runs, each with the tools interleaved
round by round (A B C A B C ...):

  cold      `true` in a fresh sandbox, made and removed: warren CLI, warren API, bwrap,
            crun, runc, podman run --rm (fork+exec as the floor)
  create    create-to-first-exec through the API, cold and from a warm pool
  exec      exec round trip of `true` in a running sandbox: warren API and CLI, runc
            exec, crun exec, podman exec
  stream    100 MB of stdout from a running sandbox, read by the harness: MB/s
  pause     pause + resume: warren API, runc, crun, podman
  density   N idle sandboxes (100, 500, 1000; --quick 50, 100): host memory per sandbox
            (kernel and user side), time to start and to remove them all
  scaling   create latency with 0 and N sandboxes already running
  throughput sandboxes created and removed per second with 1, 8, 64 concurrent clients

It prints a table per scenario (median, p90, min, max, n and warren's ratio to each
peer), the goals of issue 6 met or missed, and checks at the end that nothing leaked
(the API lists no sandbox, `warren doctor` is clean for the daemon's and the CLI's
directories, no peer container, cgroup or mount is left). `--json PATH` writes every
sample, warren's own figures flattened for tracking over commits, the load during each
scenario, the machine and the commit. Python 3 standard library only; root.

Exit status: 0 all well; 1 something leaked; 2 a scenario failed; 3 bad usage or not
root; 130 interrupted. See BENCHMARKS.md.
"""

import argparse
import base64
import datetime
import importlib.util
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cs = _load("cold_start", "cold-start.py")  # bundles, podman image, peer cleanup, facts
apimod = _load("bench_api", "api.py")  # UnixHTTP

NS_ENV = cs.NS_ENV
STREAM_BYTES = 100_000_000
TRUE = {"command": {"argv": ["true"]}}
SANDBOX = {"home_volume": False}
IDS = itertools.count(1)

GOALS = {
    "cold_cli_vs_bwrap": "warren run --rm true <= bwrap (median)",
    "cold_api_vs_bwrap": "API create+exec+remove <= bwrap (median)",
    "api_cold_first_exec": "API create-to-first-exec, cold <= 10 ms",
    "api_warm_first_exec": "API create-to-first-exec, warm pool <= 2 ms",
    "exec_round_trip": "exec round trip of true <= 2 ms",
    "pause": "pause <= 5 ms",
    "resume": "resume <= 5 ms",
    "density": ">= 1000 idle sandboxes at <= 2 MiB host memory each",
    "throughput_8": ">= 200 creates/s at 8 clients",
    "scaling_flat": "create latency flat up to 1000 running (median within 25% of 0)",
    "stream_vs_crun": "100 MB stdout, API binary stream >= crun exec to a pipe",
}


def log(msg=""):
    cs.log(msg)


# ---------------------------------------------------------------------------
# Statistics and tables


def stats(xs, unit):
    if not xs:
        return {"unit": unit, "n": 0, "median": None, "p90": None, "min": None, "max": None}
    return {"unit": unit, "n": len(xs), "median": statistics.median(xs),
            "p90": cs.percentile(xs, 0.9), "min": min(xs), "max": max(xs)}


def fmt(v, w=9):
    if v is None:
        return f"{'-':>{w}}"
    if abs(v) >= 1000:
        return f"{v:>{w}.0f}"
    if abs(v) >= 100:
        return f"{v:>{w}.1f}"
    return f"{v:>{w}.2f}"


def table(title, rows, unit, warren_rows, higher_better=False):
    """rows: [(name, samples)]; one ratio column per warren row (its median / peer's)."""
    st = {name: stats(xs, unit) for name, xs in rows}
    peers = [n for n, _ in rows if n not in warren_rows]
    log(f"== {title}")
    hdr = f"{'':<22} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'n':>5}"
    for w in warren_rows:
        hdr += f" {w + '/peer':>16}"
    log(hdr + f"   ({unit})")
    for name, _ in rows:
        s = st[name]
        line = (f"{name:<22} {fmt(s['median'])} {fmt(s['p90'])} {fmt(s['min'])} "
                f"{fmt(s['max'])} {s['n']:>5}")
        s["ratios"] = {}
        for w in warren_rows:
            wm = st.get(w, {}).get("median")
            if name in peers and wm and s["median"]:
                r = wm / s["median"]
                s["ratios"][w] = r
                line += f" {r:>16.2f}"
            else:
                line += f" {'':>16}"
        log(line)
    better = "above 1: warren higher (better)" if higher_better else \
        "below 1: warren faster"
    if peers and warren_rows:
        log(f"   ratio = warren median / peer median ({better}); p90 interpolated")
    log()
    return st


# ---------------------------------------------------------------------------
# Machine state


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def load():
    return list(os.getloadavg())


def wait_for_load(limit, max_wait):
    if limit <= 0:
        return 0.0
    t0 = time.monotonic()
    announced = False
    while os.getloadavg()[0] >= limit:
        if time.monotonic() - t0 > max_wait:
            log(f"WARNING: load still {os.getloadavg()[0]:.2f} after {max_wait:.0f} s; "
                "measuring anyway")
            break
        if not announced:
            log(f"waiting for the 1-minute load ({os.getloadavg()[0]:.2f}) to fall "
                f"below {limit} (at most {max_wait:.0f} s)")
            announced = True
        time.sleep(5)
    return time.monotonic() - t0


def proc_table():
    """pid -> (ppid, comm)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            comm = s[s.index("(") + 1:s.rindex(")")]
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            out[int(p)] = (ppid, comm)
        except (OSError, ValueError):
            pass
    return out


def descendants(root):
    pt = proc_table()
    kids = {}
    for pid, (ppid, _) in pt.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append((c, pt[c][1]))
            todo.append(c)
    return out


def smaps_rollup(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
                    out[parts[0][:-1]] = int(parts[1]) * 1024
    except OSError:
        pass
    return out


def memory_cgroup_root():
    for mp, fstype in cs.mounts():
        if fstype == "cgroup" and os.path.exists(os.path.join(mp, "memory.usage_in_bytes")):
            return mp, "v1"
    for mp, fstype in cs.mounts():
        if fstype == "cgroup2" and os.path.exists(os.path.join(mp, "cgroup.controllers")):
            return mp, "v2"
    return None, None


def sandbox_cgroups(ids):
    """{id: memory cgroup dir} for the given sandbox ids (cgroup `warren-<id>`)."""
    root, _ = memory_cgroup_root()
    want = {f"warren-{i}": i for i in ids}
    out = {}
    if root is None:
        return out
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            if d in want:
                out[want[d]] = os.path.join(dirpath, d)
        dirnames[:] = [d for d in dirnames if d not in want]
    return out


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cgroup_memory(dirs):
    tot = {"usage": 0, "kmem": 0, "rss": 0, "cache": 0, "n": 0}
    for d in dirs.values():
        u = read_int(os.path.join(d, "memory.usage_in_bytes"))
        if u is None:
            u = read_int(os.path.join(d, "memory.current"))
        if u is None:
            continue
        tot["n"] += 1
        tot["usage"] += u
        k = read_int(os.path.join(d, "memory.kmem.usage_in_bytes"))
        if k is not None:
            tot["kmem"] += k
        try:
            with open(os.path.join(d, "memory.stat")) as f:
                for line in f:
                    key, v = line.split()
                    if key in ("rss", "anon"):
                        tot["rss"] += int(v)
                    elif key in ("cache", "file"):
                        tot["cache"] += int(v)
        except (OSError, ValueError):
            pass
    return tot


# ---------------------------------------------------------------------------
# The daemon and its API


class Api:
    """A keep-alive HTTP/1.1 connection to the daemon's unix socket."""

    def __init__(self, sock):
        self.sock = sock
        self.conn = apimod.UnixHTTP(sock)

    def call(self, method, url, body=None, expect_json=True):
        if isinstance(body, bytes):
            data, headers = body, {"content-type": "application/octet-stream"}
        else:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"content-type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, url, body=data, headers=headers)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, ConnectionError, Exception) as e:  # reconnect next time
            self.conn.close()
            self.conn = apimod.UnixHTTP(self.sock)
            raise RuntimeError(f"{method} {url}: {e}") from e
        if r.status >= 300:
            raise RuntimeError(f"{method} {url}: {r.status} {raw[:300]!r}")
        if raw and expect_json and r.getheader("content-type", "").startswith("application/json"):
            return json.loads(raw)
        return raw

    def create(self):
        return self.call("POST", "/v1/sandboxes", SANDBOX)["id"]

    def exec_true(self, sid):
        res = self.call("POST", f"/v1/sandboxes/{sid}/exec", TRUE)
        if res.get("exit_code") != 0:
            raise RuntimeError(f"exec true: {res}")

    def delete(self, sid):
        self.call("DELETE", f"/v1/sandboxes/{sid}")

    def _streamed(self, sid, argv, mode, read):
        """Runs argv with ?stream=MODE; `read(response)` returns (stdout bytes, last event)."""
        body = json.dumps({"command": {"argv": argv}}).encode()
        conn = apimod.UnixHTTP(self.sock)
        try:
            conn.request("POST", f"/v1/sandboxes/{sid}/exec?stream={mode}", body=body,
                         headers={"content-type": "application/json"})
            r = conn.getresponse()
            if r.status >= 300:
                raise RuntimeError(f"stream: {r.status} {r.read()[:300]!r}")
            n, last = read(r)
            if not last or last.get("type") != "exit" or last.get("exit_code") != 0:
                raise RuntimeError(f"stream ended with {last}")
            return n
        finally:
            conn.close()

    def stream_binary(self, sid, argv):
        """Runs argv with ?stream=binary; returns the stdout byte count."""
        def read(r):
            n, buf, at, last = 0, bytearray(), 0, None
            while True:
                chunk = r.read1(1 << 20)
                if not chunk:
                    return n, last
                buf += chunk
                # Frames: kind, three zero bytes, a big-endian length, the payload.
                while len(buf) - at >= 8:
                    size = int.from_bytes(buf[at + 4:at + 8], "big")
                    if len(buf) - at < 8 + size:
                        break
                    if buf[at] == 1:
                        n += size
                    elif buf[at] == 3:
                        last = json.loads(bytes(buf[at + 8:at + 8 + size]))
                    at += 8 + size
                del buf[:at]
                at = 0
        return self._streamed(sid, argv, "binary", read)

    def stream(self, sid, argv):
        """Runs argv with ?stream=true; returns the stdout byte count (decoded)."""
        def read(r):
            n, buf, last = 0, b"", None
            while True:
                chunk = r.read1(1 << 20)
                if not chunk:
                    return n, last
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                for line in lines:
                    if not line:
                        continue
                    ev = json.loads(line)
                    t = ev.get("type")
                    if t == "stdout":
                        n += len(base64.b64decode(ev["data"]))
                    elif t in ("exit", "error"):
                        last = ev
        return self._streamed(sid, argv, "true", read)


class Daemon:
    def __init__(self, warren, tmp):
        self.warren = warren
        self.run_dir = os.path.join(tmp, "warren-run")
        self.data_dir = os.path.join(tmp, "warren-data")
        self.sock = os.path.join(self.run_dir, "warren.sock")
        self.env = dict(os.environ, WARREN_RUN_DIR=self.run_dir, WARREN_DATA_DIR=self.data_dir)
        self.env.pop("WARREN_TRACE", None)
        self.log_path = os.path.join(tmp, "warren-serve.log")
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen([self.warren, "serve", "--socket", self.sock],
                                     env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"warren serve exited {self.proc.returncode}: {self.tail()}")
            if os.path.exists(self.sock):
                try:
                    Api(self.sock).call("GET", "/health", expect_json=False)
                    return
                except RuntimeError:
                    pass
            time.sleep(0.02)
        raise RuntimeError("warren serve did not answer /health within 30 s")

    def tail(self, n=20):
        try:
            with open(self.log_path) as f:
                return " | ".join(f.read().strip().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "the daemon did not stop within 60 s of SIGTERM (killed)"
        return None


# ---------------------------------------------------------------------------
# Rows: something timed once per round


class Row:
    def __init__(self, name, fn, desc, warren=False):
        self.name = name
        self.fn = fn  # (i) -> sample value; raises on failure
        self.desc = desc
        self.warren = warren
        self.samples = []
        self.failures = []
        self.extra = {}


def timed_run(argv, env=None, timeout=120):
    t0 = time.perf_counter_ns()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout} s")
    ms = (time.perf_counter_ns() - t0) / 1e6
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"exit {r.returncode}: {err[-1] if err else '(no stderr)'}")
    return ms


def timed_pipe(argv, env=None, timeout=300):
    """Runs argv with stdout on a pipe the harness drains; returns (ms, bytes read)."""
    t0 = time.perf_counter_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    n = 0
    fd = p.stdout.fileno()
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        n += len(b)
    err = p.stderr.read()
    rc = p.wait(timeout=timeout)
    ms = (time.perf_counter_ns() - t0) / 1e6
    p.stdout.close()
    p.stderr.close()
    if rc != 0:
        e = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"exit {rc}: {e[-1] if e else '(no stderr)'}")
    return ms, n


def interleave(rows, rounds, warmup, between=None):
    """A B C A B C ...: every row once per round; warm-up rounds are thrown away."""
    for r in range(warmup + rounds):
        for row in rows:
            if between:
                between()
            try:
                v = row.fn(r)
            except Exception as e:  # recorded, the run goes on
                row.failures.append({"round": r, "warmup": r < warmup, "error": str(e)[:400]})
                continue
            if r >= warmup:
                row.samples.append(v)


def probe(rows):
    """Drops rows whose first run fails (listed as SKIPPED)."""
    kept, skipped = [], {}
    for row in rows:
        try:
            row.fn(-1)
            kept.append(row)
        except Exception as e:
            skipped[row.name] = f"probe failed: {str(e)[:300]}"
            log(f"SKIPPED: {row.name}: {skipped[row.name]}")
    return kept, skipped


# ---------------------------------------------------------------------------
# The harness


class Suite:
    def __init__(self, args):
        self.a = args
        self.q = args.quick
        self.warren = os.path.abspath(args.warren)
        self.tmp = tempfile.mkdtemp(prefix="wsuite-")
        os.chmod(self.tmp, 0o755)  # the OCI runtimes' mapped root must reach the bundles
        self.id_prefix = f"ws{os.getpid()}-"
        self.runtimes = []  # (name, state dir) for cleanup
        self.bundles = {}  # runtime -> bundle dir
        self.podman = None
        self.podman_tag = f"localhost/warren-suite:{os.getpid()}"
        self.podman_box = None
        self.daemon = Daemon(self.warren, self.tmp)
        self.cli_env = dict(os.environ, WARREN_RUN_DIR=os.path.join(self.tmp, "cli-run"),
                            WARREN_DATA_DIR=os.path.join(self.tmp, "cli-data"))
        self.cli_env.pop("WARREN_TRACE", None)
        self.api = None
        self.results = {}
        self.skipped = {}
        self.failures = {}
        self.long_running = []  # (runtime, id)
        self.bwrap_argv = None

    # -- peers --------------------------------------------------------------

    def setup_peers(self):
        tools = ["bwrap", "crun", "runc", "podman"]
        cs.install_missing(tools, self.a.no_install)
        if shutil.which("bwrap"):
            argv = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent",
                    "--ro-bind", "/usr", "/usr"]
            for name in sorted(os.listdir("/")):
                p = os.path.join("/", name)
                if os.path.islink(p) and os.readlink(p).startswith("usr/"):
                    argv += ["--symlink", os.readlink(p), "/" + name]
            argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
            self.bwrap_argv = argv
        else:
            self.skipped["bwrap"] = "not installed"
        for rt in ("crun", "runc"):
            if shutil.which(rt) is None:
                self.skipped[rt] = "not installed"
                continue
            try:
                bundle, _ = cs.build_bundle(rt, self.tmp, True)
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                self.skipped[rt] = f"OCI bundle: {e}"
                continue
            self.bundles[rt] = bundle
            self.runtimes.append((rt, os.path.join(self.tmp, f"{rt}-state")))
            # A long-running twin of the bundle for exec, stream and pause.
            with open(os.path.join(bundle, "config.json")) as f:
                spec = json.load(f)
            spec["process"]["args"] = ["sleep", "1000000"]
            os.mkdir(f"{bundle}-sleep")
            with open(os.path.join(f"{bundle}-sleep", "config.json"), "w") as f:
                json.dump(spec, f, indent=1)
        if shutil.which("podman") and shutil.which("runc"):
            pd = os.path.join(self.tmp, "podman")
            self.podman = ["podman", "--root", f"{pd}/root", "--runroot", f"{pd}/run",
                           "--tmpdir", f"{pd}/tmp", "--storage-driver", "overlay",
                           "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                           "--runtime", "runc"]
            try:
                cs.build_podman_image(self.tmp, self.podman, self.podman_tag)
            except (OSError, RuntimeError) as e:
                self.skipped["podman"] = str(e)
                self.podman = None
        else:
            self.skipped["podman"] = "podman (and runc) not installed"

    def rt_state(self, rt):
        return os.path.join(self.tmp, f"{rt}-state")

    def start_long_running(self):
        """One long `sleep` container per OCI runtime and one podman container."""
        for rt, bundle in self.bundles.items():
            cid = f"{self.id_prefix}{rt}-long"
            # The container keeps its stdio: a file, not a pipe (a pipe would never close).
            errpath = os.path.join(self.tmp, f"{rt}-long.err")
            with open(errpath, "w+") as errf:
                r = subprocess.run([rt, "--root", self.rt_state(rt), "run", "--detach",
                                    "--bundle", f"{bundle}-sleep", cid],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=errf, timeout=60)
                errf.seek(0)
                err = errf.read().strip()
            if r.returncode != 0:
                self.skipped[f"{rt} exec"] = f"run --detach: {err[-200:]}"
                continue
            self.long_running.append((rt, cid))
        if self.podman:
            name = f"{self.id_prefix}podman-long"
            self.podman_box = name  # removed at the end even if `run -d` half-failed
            r = subprocess.run([*self.podman, "run", "-d", "--name", name, "--network", "none",
                                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                self.podman_tag, "/bin/busybox", "sleep", "1000000"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=120)
            if r.returncode != 0:
                self.skipped["podman exec"] = f"run -d: {r.stderr.strip()[-200:]}"
                self.stop_long_running()

    def stop_long_running(self):
        for rt, cid in self.long_running:
            subprocess.run([rt, "--root", self.rt_state(rt), "delete", "--force", cid],
                           capture_output=True, timeout=60)
        self.long_running = []
        if self.podman_box and self.podman:
            subprocess.run([*self.podman, "rm", "-f", "-t", "0", self.podman_box],
                           capture_output=True, timeout=120)
            self.podman_box = None

    def long_id(self, rt):
        for r, cid in self.long_running:
            if r == rt:
                return cid
        return None

    # -- bookkeeping ----------------------------------------------------------

    def record(self, key, title, rows, unit, higher_better=False, extra=None, t0=None,
               load0=None):
        warren_rows = [r.name for r in rows if r.warren]
        st = table(title, [(r.name, r.samples) for r in rows], unit, warren_rows,
                   higher_better)
        for r in rows:
            for f in r.failures[:5]:
                log(f"FAILED: {key}/{r.name} round {f['round']}: {f['error']}")
            if r.failures:
                self.failures.setdefault(key, {})[r.name] = r.failures
        self.results[key] = {
            "title": title,
            "unit": unit,
            "higher_is_better": higher_better,
            "rows": {r.name: {**st[r.name], "desc": r.desc, "warren": r.warren,
                              "samples": r.samples, "failures": r.failures, **r.extra}
                     for r in rows},
            "load_before": load0,
            "load_after": load(),
            "elapsed_s": time.monotonic() - t0 if t0 else None,
            **(extra or {}),
        }
        return st

    def begin(self, key):
        log(f"-- {key}: load {os.getloadavg()[0]:.2f}")
        return time.monotonic(), load()

    # -- scenarios -------------------------------------------------------------

    def sc_cold(self):
        t0, l0 = self.begin("cold")
        rows = [Row("fork-exec", lambda i: timed_run(["/bin/true"]),
                    "floor: fork+exec of /bin/true from the harness")]
        if self.bwrap_argv:
            rows.append(Row("bwrap", lambda i: timed_run([*self.bwrap_argv, "true"]),
                            "bwrap --unshare-all, /usr ro bind, no cgroup"))
        for rt, bundle in self.bundles.items():
            rows.append(Row(rt, lambda i, rt=rt, b=bundle: timed_run(
                [rt, "--root", self.rt_state(rt), "run", "--bundle", b,
                 f"{self.id_prefix}{rt}-c{next(IDS)}"]),
                f"{rt} run (userns, cgroups v1, seccomp)"))
        if self.podman:
            argv = [*self.podman, "run", "--rm", "--network", "none", "--ulimit",
                    "nofile=1024:1024", "--ulimit", "nproc=1024:1024", self.podman_tag, "true"]
            rows.append(Row("podman", lambda i: timed_run(argv), "podman run --rm (runc)"))
        rows.append(Row("warren-cli", lambda i: timed_run(
            [self.warren, "run", "--rm", "--", "true"], env=self.cli_env),
            "warren run --rm -- true (no daemon)", warren=True))

        def api_cold(i):
            t = time.perf_counter_ns()
            sid = self.api.create()
            try:
                self.api.exec_true(sid)
            finally:
                self.api.delete(sid)
            return (time.perf_counter_ns() - t) / 1e6
        rows.append(Row("warren-api", api_cold,
                        "POST sandbox, exec true, DELETE on a keep-alive connection",
                        warren=True))
        rows, skipped = probe(rows)
        self.skipped.update({f"cold/{k}": v for k, v in skipped.items()})
        rounds, warm = (10, 2) if self.q else (self.a.rounds, 3)
        interleave(rows, rounds, warm)
        self.record("cold", "cold start: make a sandbox, run `true`, remove it (ms)", rows,
                    "ms", t0=t0, load0=l0)

    def sc_create(self):
        t0, l0 = self.begin("create")
        n = 20 if self.q else self.a.rounds * 2
        cold_c, cold_ce, warm_c, warm_ce = [], [], [], []
        fails = []
        for i in range(n + 3):
            try:
                t = time.perf_counter_ns()
                sid = self.api.create()
                tc = (time.perf_counter_ns() - t) / 1e6
                self.api.exec_true(sid)
                tce = (time.perf_counter_ns() - t) / 1e6
                self.api.delete(sid)
                if i >= 3:
                    cold_c.append(tc)
                    cold_ce.append(tce)
            except Exception as e:
                fails.append(str(e))
        self.api.call("POST", "/v1/pools", {"min": 4, "max": 8})
        pool = None
        try:
            for i in range(n + 3):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    pools = self.api.call("GET", "/v1/pools")
                    if pools and pools[0]["ready"] >= 4:
                        break
                    time.sleep(0.005)
                try:
                    t = time.perf_counter_ns()
                    sid = self.api.create()
                    tc = (time.perf_counter_ns() - t) / 1e6
                    self.api.exec_true(sid)
                    tce = (time.perf_counter_ns() - t) / 1e6
                    self.api.delete(sid)
                    if i >= 3:
                        warm_c.append(tc)
                        warm_ce.append(tce)
                except Exception as e:
                    fails.append(str(e))
            pool = self.api.call("GET", "/v1/pools")
        finally:
            self.api.call("POST", "/v1/pools", {"min": 0, "max": 0})
        rows = []
        for name, xs, desc in (("cold create", cold_c, "POST /v1/sandboxes, no pool"),
                               ("cold create+exec", cold_ce, "... then exec true"),
                               ("warm create", warm_c, "POST /v1/sandboxes, pool min 4"),
                               ("warm create+exec", warm_ce, "... then exec true")):
            r = Row(name, None, desc, warren=False)
            r.samples = xs
            rows.append(r)
        for f in fails[:5]:
            log(f"FAILED: create: {f}")
        if fails:
            self.failures["create"] = fails
        self.record("create", "API create-to-first-exec, cold and from a warm pool (ms; "
                    "warren only; removal not timed)", rows, "ms", t0=t0, load0=l0,
                    extra={"pool": pool})

    def sc_exec(self):
        t0, l0 = self.begin("exec")
        sid = self.api.create()
        try:
            # The floor again, in the same rounds as the execs: the goal is a ratio to it,
            # and the peers' execs leave work behind that slows whatever runs next.
            rows = [Row("fork-exec", lambda i: timed_run(["/bin/true"]),
                        "floor: fork+exec of /bin/true from the harness"),
                    Row("warren-api", lambda i: self._api_exec(sid),
                        "POST exec true on a keep-alive connection", warren=True),
                    Row("warren-cli", lambda i: timed_run(
                        [self.warren, "exec", sid, "--", "true"], env=self.daemon.env),
                        "warren exec ID -- true (CLI to the daemon)", warren=True)]
            for rt in self.bundles:
                cid = self.long_id(rt)
                if cid:
                    rows.append(Row(f"{rt} exec", lambda i, rt=rt, cid=cid: timed_run(
                        [rt, "--root", self.rt_state(rt), "exec", cid, "true"]),
                        f"{rt} exec in a running container"))
            if self.podman_box:
                rows.append(Row("podman exec", lambda i: timed_run(
                    [*self.podman, "exec", self.podman_box, "true"]), "podman exec"))
            rows, skipped = probe(rows)
            self.skipped.update({f"exec/{k}": v for k, v in skipped.items()})
            rounds = 20 if self.q else self.a.rounds * 2
            interleave(rows, rounds, 3)
            self.record("exec", "exec round trip of `true` in a running sandbox (ms)", rows,
                        "ms", t0=t0, load0=l0)

            # 100 MB of stdout.
            t0, l0 = self.begin("stream")
            head = ["head", "-c", str(STREAM_BYTES), "/dev/zero"]
            srows = []

            def mbps(fn):
                def run(i):
                    t = time.perf_counter_ns()
                    n = fn()
                    if n != STREAM_BYTES:
                        raise RuntimeError(f"read {n} bytes, not {STREAM_BYTES}")
                    return STREAM_BYTES / 1e6 / ((time.perf_counter_ns() - t) / 1e9)
                return run
            srows.append(Row("warren-api", mbps(lambda: self.api.stream(sid, head)),
                             "exec ?stream=true, NDJSON+base64 decoded by the harness",
                             warren=True))
            srows.append(Row("warren-api-binary", mbps(lambda: self.api.stream_binary(sid, head)),
                             "exec ?stream=binary, frames of raw bytes read by the harness",
                             warren=True))
            srows.append(Row("warren-cli", mbps(lambda: timed_pipe(
                [self.warren, "exec", sid, "--", *head], env=self.daemon.env)[1]),
                "warren exec ID -- head ..., stdout on a pipe the harness drains",
                warren=True))
            for rt in self.bundles:
                cid = self.long_id(rt)
                if cid:
                    srows.append(Row(f"{rt} exec", mbps(lambda rt=rt, cid=cid: timed_pipe(
                        [rt, "--root", self.rt_state(rt), "exec", cid, *head])[1]),
                        f"{rt} exec, stdout on a pipe"))
            if self.podman_box:
                srows.append(Row("podman exec", mbps(lambda: timed_pipe(
                    [*self.podman, "exec", self.podman_box, "/bin/busybox", *head])[1]),
                    "podman exec (busybox head), stdout on a pipe"))
            rounds = 2 if self.q else 5
            interleave(srows, rounds, 1)
            self.record("stream", "100 MB stdout stream from a running sandbox (MB/s)", srows,
                        "MB/s", higher_better=True, t0=t0, load0=l0)

            # Pause and resume.
            t0, l0 = self.begin("pause")
            prow = Row("warren-api", None, "POST pause then POST resume", warren=True)
            pause_s, resume_s = [], []

            def warren_pr(i):
                t = time.perf_counter_ns()
                self.api.call("POST", f"/v1/sandboxes/{sid}/pause")
                t1 = time.perf_counter_ns()
                self.api.call("POST", f"/v1/sandboxes/{sid}/resume")
                t2 = time.perf_counter_ns()
                if i >= 3:
                    pause_s.append((t1 - t) / 1e6)
                    resume_s.append((t2 - t1) / 1e6)
                return (t2 - t) / 1e6
            prow.fn = warren_pr
            prows = [prow]
            for rt in self.bundles:
                cid = self.long_id(rt)
                if cid:
                    def oci_pr(i, rt=rt, cid=cid):
                        st = self.rt_state(rt)
                        return (timed_run([rt, "--root", st, "pause", cid]) +
                                timed_run([rt, "--root", st, "resume", cid]))
                    prows.append(Row(rt, oci_pr, f"{rt} pause + {rt} resume (freezer)"))
            if self.podman_box:
                def podman_pr(i):
                    return (timed_run([*self.podman, "pause", self.podman_box]) +
                            timed_run([*self.podman, "unpause", self.podman_box]))
                prows.append(Row("podman", podman_pr, "podman pause + unpause"))
            rounds = 15 if self.q else self.a.rounds
            interleave(prows, rounds, 3)
            prow.extra = {"pause": stats(pause_s, "ms"), "resume": stats(resume_s, "ms"),
                          "pause_samples": pause_s, "resume_samples": resume_s}
            self.record("pause", "pause + resume of a running sandbox (ms)", prows, "ms",
                        t0=t0, load0=l0)
            log(f"   warren pause alone: median {statistics.median(pause_s):.2f} ms, "
                f"resume alone: median {statistics.median(resume_s):.2f} ms")
            log()
        finally:
            self.api.delete(sid)

    def _api_exec(self, sid):
        t = time.perf_counter_ns()
        self.api.exec_true(sid)
        return (time.perf_counter_ns() - t) / 1e6

    # density, scaling

    def _fill(self, n, clients=8):
        """Creates n sandboxes with `clients` concurrent connections; (ids, s, errors)."""
        ids, errors, lock = [], [], threading.Lock()
        todo = itertools.count()

        def worker():
            api = Api(self.daemon.sock)
            while next(todo) < n:
                try:
                    sid = api.create()
                    with lock:
                        ids.append(sid)
                except Exception as e:
                    with lock:
                        errors.append(str(e)[:300])
                    if len(errors) > 10:
                        return
        t = time.perf_counter()
        ths = [threading.Thread(target=worker) for _ in range(clients)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        return ids, time.perf_counter() - t, errors

    def _remove(self, ids, clients=8):
        errors, lock = [], threading.Lock()
        it = iter(list(ids))
        itl = threading.Lock()

        def worker():
            api = Api(self.daemon.sock)
            while True:
                with itl:
                    sid = next(it, None)
                if sid is None:
                    return
                try:
                    api.delete(sid)
                except Exception as e:
                    with lock:
                        errors.append(str(e)[:300])
        t = time.perf_counter()
        ths = [threading.Thread(target=worker) for _ in range(clients)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        return time.perf_counter() - t, errors

    def _scaling_probe(self, k):
        """k times: create (timed), exec true (timed with it), remove (not timed)."""
        c, ce = [], []
        for i in range(k + 2):
            t = time.perf_counter_ns()
            sid = self.api.create()
            tc = (time.perf_counter_ns() - t) / 1e6
            try:
                self.api.exec_true(sid)
                tce = (time.perf_counter_ns() - t) / 1e6
            finally:
                self.api.delete(sid)
            if i >= 2:
                c.append(tc)
                ce.append(tce)
        return c, ce

    def _memory_snapshot(self, ids):
        procs = descendants(self.daemon.proc.pid)
        pss = rss = anon = 0
        by_comm = {}
        for pid, comm in procs:
            sm = smaps_rollup(pid)
            pss += sm.get("Pss", 0)
            rss += sm.get("Rss", 0)
            anon += sm.get("Pss_Anon", 0)
            c = by_comm.setdefault(comm, {"n": 0, "pss": 0, "rss": 0})
            c["n"] += 1
            c["pss"] += sm.get("Pss", 0)
            c["rss"] += sm.get("Rss", 0)
        daemon = smaps_rollup(self.daemon.proc.pid)
        cg = cgroup_memory(sandbox_cgroups(ids))
        return {"meminfo": meminfo(), "procs": len(procs), "pss": pss, "rss": rss,
                "pss_anon": anon, "by_comm": by_comm, "daemon_pss": daemon.get("Pss", 0),
                "daemon_rss": daemon.get("Rss", 0), "cgroup": cg}

    def sc_density(self):
        t0, l0 = self.begin("density")
        levels = [50, 100] if self.q else [100, 500, 1000]
        k = 10 if self.q else 30
        scaling = {}
        density = {}
        stopped = None
        c, ce = self._scaling_probe(k)
        scaling[0] = {"create": c, "create+exec": ce, "load": load()}
        for n in levels:
            time.sleep(1)
            base = self._memory_snapshot([])
            ids, t_start, errors = self._fill(n)
            if errors or len(ids) < n:
                stopped = {"level": n, "made": len(ids), "errors": errors[:10]}
                log(f"density: stopped at {len(ids)} of {n}: {errors[:3]}")
            time.sleep(2 if self.q else 5)  # let the agents settle into idle
            snap = self._memory_snapshot(ids)
            m0, m1 = base["meminfo"], snap["meminfo"]
            made = max(len(ids), 1)
            d = {
                "n": len(ids),
                "start_s": t_start,
                "start_per_s": len(ids) / t_start if t_start else None,
                "memavailable_delta_per_sb": (m0["MemAvailable"] - m1["MemAvailable"]) / made,
                "kernel_delta_per_sb": {
                    key: (m1.get(key, 0) - m0.get(key, 0)) / made
                    for key in ("Slab", "SUnreclaim", "SReclaimable", "KernelStack",
                                "PageTables", "Shmem", "AnonPages")},
                "pss_per_sb": (snap["pss"] - base["pss"]) / made,
                "rss_per_sb": (snap["rss"] - base["rss"]) / made,
                "procs_per_sb": (snap["procs"] - base["procs"]) / made,
                "by_comm": snap["by_comm"],
                "daemon_pss_delta_per_sb": (snap["daemon_pss"] - base["daemon_pss"]) / made,
                "cgroup_usage_per_sb": snap["cgroup"]["usage"] / made,
                "cgroup_kmem_per_sb": snap["cgroup"]["kmem"] / made,
                "cgroup_rss_per_sb": snap["cgroup"]["rss"] / made,
                "cgroup_cache_per_sb": snap["cgroup"]["cache"] / made,
                "cgroups_found": snap["cgroup"]["n"],
                "load": load(),
            }
            if not stopped:
                c, ce = self._scaling_probe(k)
                scaling[n] = {"create": c, "create+exec": ce, "load": load()}
            t_rm, rm_err = self._remove(ids)
            d["remove_s"] = t_rm
            d["remove_per_s"] = len(ids) / t_rm if t_rm else None
            d["remove_errors"] = rm_err[:10]
            density[n] = d
            if stopped:
                break
        self._print_density(density, stopped)
        rows = []
        for lvl, s in scaling.items():
            r = Row(f"{lvl} running", None, "create, then exec true", warren=False)
            r.samples = s["create"]
            r.extra = {"create+exec": stats(s["create+exec"], "ms"),
                       "create+exec_samples": s["create+exec"], "load": s["load"]}
            rows.append(r)
        self.results["density"] = {"levels": density, "stopped": stopped,
                                   "load_before": l0, "load_after": load(),
                                   "elapsed_s": time.monotonic() - t0}
        st = table("scaling: API create latency with N sandboxes already running (ms)",
                   [(r.name, r.samples) for r in rows], "ms", [])
        for r in rows:
            ce = r.extra["create+exec"]
            log(f"   {r.name:<14} create+first exec median {fmt(ce['median'])} ms, "
                f"p90 {fmt(ce['p90'])}")
        log()
        self.results["scaling"] = {
            "rows": {r.name: {**st[r.name], "samples": r.samples, **r.extra} for r in rows},
            "levels": list(scaling.keys())}

    def _print_density(self, density, stopped):
        log("== density: N idle sandboxes (host memory per sandbox; times for all N)")
        log(f"{'N':>6} {'start s':>8} {'/s':>7} {'remove s':>9} {'/s':>7} "
            f"{'MemAvail':>9} {'kernel':>8} {'PSS':>8} {'cg usage':>9} {'cg kmem':>8}"
            f" {'procs':>6}")
        mib = 1 << 20
        for n, d in density.items():
            kd = d["kernel_delta_per_sb"]
            kern = kd["Slab"] + kd["KernelStack"] + kd["PageTables"]
            log(f"{d['n']:>6} {d['start_s']:>8.2f} {d['start_per_s']:>7.0f} "
                f"{d['remove_s']:>9.2f} {d['remove_per_s']:>7.0f} "
                f"{d['memavailable_delta_per_sb'] / mib:>9.2f} {kern / mib:>8.2f} "
                f"{d['pss_per_sb'] / mib:>8.2f} {d['cgroup_usage_per_sb'] / mib:>9.2f} "
                f"{d['cgroup_kmem_per_sb'] / mib:>8.2f} {d['procs_per_sb']:>6.1f}")
        log("   MiB per sandbox. MemAvail: drop of /proc/meminfo MemAvailable (whole host,"
            " noisy); kernel: Slab+KernelStack+PageTables delta; PSS: helper+agent"
            " processes (user side); cg usage/kmem: the sandboxes' memory cgroups")
        if stopped:
            log(f"   STOPPED at {stopped['made']} of {stopped['level']}: {stopped['errors'][:2]}")
        log()

    # throughput

    def sc_throughput(self):
        t0, l0 = self.begin("throughput")
        conc = [1, 8, 64]
        window = 2.0 if self.q else self.a.window
        rounds = 1 if self.q else 2
        makers = {}

        def warren_api_factory():
            api = Api(self.daemon.sock)

            def op():
                api.delete(api.create())
            return op
        makers["warren-api"] = (warren_api_factory, True, "POST + DELETE per client loop")
        if self.bwrap_argv:
            makers["bwrap"] = (lambda: (lambda: timed_run([*self.bwrap_argv, "true"])),
                               False, "bwrap ... true")
        for rt, b in self.bundles.items():
            makers[rt] = (lambda rt=rt, b=b: (lambda: timed_run(
                [rt, "--root", self.rt_state(rt), "run", "--bundle", b,
                 f"{self.id_prefix}{rt}-t{next(IDS)}"])), False, f"{rt} run ... true")
        out = {}
        for c in conc:
            if c != conc[0]:
                t0, l0 = self.begin(f"throughput {c}")
            rows = [Row(name, None, desc, warren=w) for name, (_, w, desc) in makers.items()]
            row_errors = {}
            for row in rows:
                factory = makers[row.name][0]
                errs = row_errors.setdefault(row.name, [])
                row.fn = lambda i, factory=factory, errs=errs: self._throughput_window(
                    factory, c, window, errs)
            interleave(rows, rounds, 0)
            for name, errs in row_errors.items():
                if errs:
                    log(f"FAILED: throughput {c} clients, {name}: {len(errs)} failed "
                        f"operations, e.g. {errs[0]}")
                    self.failures.setdefault(f"throughput_{c}", {})[name] = errs[:20]
            st = self.record(f"throughput_{c}",
                             f"throughput: sandboxes created+removed per second, {c} "
                             f"concurrent client(s), {window:.0f} s windows", rows, "ops/s",
                             higher_better=True, t0=t0, load0=l0,
                             extra={"errors": {k: v[:20] for k, v in row_errors.items()},
                                    "window_s": window})
            out[c] = st

    def _throughput_window(self, factory, clients, window, errors):
        done = [0]
        lock = threading.Lock()
        stop = time.perf_counter() + window

        def worker():
            op = factory()
            while time.perf_counter() < stop:
                try:
                    op()
                    with lock:
                        done[0] += 1
                except Exception as e:
                    with lock:
                        errors.append(str(e)[:200])
                    time.sleep(0.01)
        t = time.perf_counter()
        ths = [threading.Thread(target=worker) for _ in range(clients)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        took = time.perf_counter() - t  # includes finishing the ops in flight
        return done[0] / took

    # -- goals, leak check -------------------------------------------------------

    def goals(self):
        R = self.results
        out = {}

        def med(key, row):
            try:
                return R[key]["rows"][row]["median"]
            except KeyError:
                return None

        def put(name, value, ok, text):
            out[name] = {"goal": GOALS[name], "value": value, "met": ok, "text": text}

        bw = med("cold", "bwrap")
        for row, g in (("warren-cli", "cold_cli_vs_bwrap"), ("warren-api", "cold_api_vs_bwrap")):
            w = med("cold", row)
            if w is not None and bw:
                put(g, w, w <= bw, f"{w:.2f} ms vs bwrap {bw:.2f} ms")
        v = med("create", "cold create+exec")
        if v is not None:
            put("api_cold_first_exec", v, v <= 10, f"{v:.2f} ms")
        v = med("create", "warm create+exec")
        if v is not None:
            put("api_warm_first_exec", v, v <= 2, f"{v:.2f} ms")
        v = med("exec", "warren-api")
        if v is not None:
            floor = med("exec", "fork-exec")
            put("exec_round_trip", v, v <= 2, f"{v:.2f} ms" + (
                f" ({v / floor:.2f}x a fork+exec of true in the same rounds)" if floor else ""))
        try:
            p = R["pause"]["rows"]["warren-api"]["pause"]["median"]
            r = R["pause"]["rows"]["warren-api"]["resume"]["median"]
            put("pause", p, p <= 5, f"{p:.2f} ms")
            put("resume", r, r <= 5, f"{r:.2f} ms")
        except (KeyError, TypeError):
            pass
        dens = R.get("density", {}).get("levels", {})
        if dens:
            top = max(dens)
            d = dens[top]
            # User side (PSS of helper+agent) plus kernel side (Slab, kernel stacks, page
            # tables): MemAvailable is printed as a cross-check, but on a shared machine it
            # moves with everyone else's work.
            per = (d["pss_per_sb"] + d["kernel_delta_per_sb"]["Slab"]
                   + d["kernel_delta_per_sb"]["KernelStack"]
                   + d["kernel_delta_per_sb"]["PageTables"]) / (1 << 20)
            put("density", per, d["n"] >= 1000 and per <= 2,
                f"{d['n']} sandboxes at {per:.2f} MiB each (MemAvailable: "
                f"{d['memavailable_delta_per_sb'] / (1 << 20):.2f})")
        v = med("throughput_8", "warren-api")
        if v is not None:
            put("throughput_8", v, v >= 200, f"{v:.0f} /s")
        sc = R.get("scaling", {}).get("rows", {})
        if sc:
            base = sc.get("0 running", {}).get("median")
            lv = [k for k in sc if k != "0 running"]
            if base and lv:
                worst = max(sc[k]["median"] for k in lv if sc[k]["median"])
                top_n = max(int(k.split()[0]) for k in lv)
                put("scaling_flat", worst / base, worst / base <= 1.25 and top_n >= 1000,
                    f"{base:.2f} ms at 0, worst {worst:.2f} ms up to {top_n} "
                    f"({worst / base:.2f}x)")
        w, c = med("stream", "warren-api-binary"), med("stream", "crun exec")
        if w is not None and c:
            put("stream_vs_crun", w / c, w >= c,
                f"{w:.0f} MB/s vs crun {c:.0f} MB/s ({w / c:.2f}x)")
        log("== goals (issue 6; not asserted)")
        for g in GOALS:
            if g in out:
                o = out[g]
                log(f"   {'met   ' if o['met'] else 'MISSED'} {o['goal']:<58} {o['text']}")
            else:
                log(f"   n/a    {GOALS[g]}")
        log()
        self.results["goals"] = out

    def leak_check(self):
        problems = []
        if self.api is not None:
            try:
                for p in self.api.call("GET", "/v1/pools"):
                    problems.append(f"pool left: {p}")
                    self.api.call("POST", "/v1/pools", {**p["spec"], "min": 0, "max": 0})
            except RuntimeError as e:
                problems.append(f"could not remove a pool: {e}")
            try:
                left = self.api.call("GET", "/v1/sandboxes")
                for sb in left:
                    problems.append(f"sandbox still listed by the API: {sb['id']} ({sb['state']})")
                    try:
                        self.api.delete(sb["id"])
                    except RuntimeError:
                        pass
            except RuntimeError as e:
                problems.append(f"could not list sandboxes: {e}")
        err = self.daemon.stop()
        if err:
            problems.append(err)
        self.stop_long_running()  # the peers' containers go first: not warren's to judge
        time.sleep(0.3)
        doctors = {}
        for name, env in (("daemon dirs", self.daemon.env), ("cli dirs", self.cli_env)):
            r = subprocess.run([self.warren, "doctor"], env=env, capture_output=True, text=True,
                               timeout=120)
            verdict = (r.stdout.strip() + "\n" + r.stderr.strip()).strip()
            ours, foreign = doctor_lines(
                verdict, (self.daemon.run_dir, self.cli_env["WARREN_RUN_DIR"]),
                os.path.realpath(self.warren))
            doctors[name] = {"exit": r.returncode, "output": verdict, "ours": ours,
                             "foreign": foreign}
            log(f"warren doctor ({name}): exit {r.returncode}: "
                f"{' | '.join(verdict.splitlines()) or '(no output)'}")
            if foreign:
                log(f"   ignored {len(foreign)} line(s) naming processes of another warren "
                    "(another WARREN_RUN_DIR, e.g. a colleague's test run)")
            if r.returncode != 0 and (ours or not foreign):
                problems.append(f"warren doctor ({name}) exit {r.returncode}: "
                                f"{' | '.join(ours)[:500]}")
        # No process of the run may survive: the daemon's helpers and agents, the peers.
        for pid, (ppid, comm) in proc_table().items():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
            if pid != os.getpid() and (self.tmp in cmd or self.id_prefix in cmd):
                problems.append(f"process left: {pid} {cmd[:200]}")
        self.stop_long_running()
        return problems, doctors

    # -- main ---------------------------------------------------------------------

    def run(self, only):
        scen = [("cold", self.sc_cold), ("create", self.sc_create), ("exec", self.sc_exec),
                ("density", self.sc_density), ("throughput", self.sc_throughput)]
        self.setup_peers()
        self.daemon.start()
        self.api = Api(self.daemon.sock)
        self.start_long_running()
        for name, fn in scen:
            if only and name not in only:
                continue
            try:
                fn()
            except Exception as e:
                log(f"FAILED: scenario {name}: {type(e).__name__}: {e}")
                self.failures.setdefault(name, []).append(f"{type(e).__name__}: {e}")
                if self.daemon.proc.poll() is not None:
                    log(f"the daemon died (exit {self.daemon.proc.returncode}): "
                        f"{self.daemon.tail()}")
                    break


def doctor_lines(verdict, run_dirs, warren):
    """Splits the doctor's findings into ours and those naming another warren's processes.

    The doctor of this commit may report a live helper or agent of another warren (another
    WARREN_RUN_DIR, from a concurrent test run) as `... pid N with no sandbox`; such a
    line is foreign when process N's environment names a run dir that is not ours."""
    import re
    ours, foreign = [], []
    for line in verdict.splitlines():
        if line.startswith("warren:") or not line.strip():
            continue
        m = re.search(r"pid (\d+)", line)
        if m:
            try:
                env = open(f"/proc/{m.group(1)}/environ", "rb").read().split(b"\0")
                rd = [e.split(b"=", 1)[1].decode() for e in env
                      if e.startswith(b"WARREN_RUN_DIR=")]
                if rd and rd[0] not in run_dirs:
                    foreign.append(line)
                    continue
                exe = os.readlink(f"/proc/{m.group(1)}/exe").removesuffix(" (deleted)")
                if not rd and exe != warren:
                    foreign.append(line)
                    continue
            except OSError:
                pass
        ours.append(line)
    return ours, foreign


def flat_warren(results):
    """warren's own figures as flat keys, for tracking over commits."""
    out = {}
    for key, sc in results.items():
        if key in ("goals",) or not isinstance(sc, dict):
            continue
        for row, s in sc.get("rows", {}).items():
            if not isinstance(s, dict):
                continue
            if s.get("warren") or key in ("create", "scaling"):
                for f in ("median", "p90", "min", "max", "n"):
                    out[f"{key}.{row}.{f}"] = s.get(f)
                for sub in ("pause", "resume", "create+exec"):
                    if isinstance(s.get(sub), dict):
                        out[f"{key}.{row}.{sub}.median"] = s[sub]["median"]
        if key == "density":
            for n, d in sc.get("levels", {}).items():
                for f in ("start_s", "remove_s", "memavailable_delta_per_sb", "pss_per_sb",
                          "cgroup_usage_per_sb", "cgroup_kmem_per_sb"):
                    out[f"density.{n}.{f}"] = d.get(f)
                kd = d["kernel_delta_per_sb"]
                out[f"density.{n}.kernel_per_sb"] = kd["Slab"] + kd["KernelStack"] + kd["PageTables"]
    return out


def parse_args():
    p = argparse.ArgumentParser(description="Warren and its peers, every scenario, one run.")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, density 50/100, 2 s throughput windows (< 2 min)")
    p.add_argument("--json", metavar="PATH", help="write every figure and sample here")
    p.add_argument("--rounds", type=int, default=50,
                   help="rounds of the cold and pause scenarios (exec, create: twice this)")
    p.add_argument("--window", type=float, default=6.0,
                   help="seconds per throughput window (full run)")
    p.add_argument("--warren", default=os.path.join(REPO, "target/release/warren"))
    p.add_argument("--only", help="comma-separated: cold,create,exec,density,throughput")
    p.add_argument("--wait-load", type=float, default=None,
                   help="wait until the 1-minute load is below this first "
                        "(default 1.5 for a full run, off with --quick; 0: never wait)")
    p.add_argument("--max-wait", type=float, default=900, help="longest wait for the load")
    p.add_argument("--no-install", action="store_true", help="never apt-get install peers")
    a = p.parse_args()
    if a.wait_load is None:
        a.wait_load = 0 if a.quick else 1.5
    return a


def main():
    a = parse_args()
    if os.geteuid() != 0:
        log("suite: needs root")
        return 3
    only = set(a.only.split(",")) if a.only else None
    if os.environ.get(NS_ENV) != "1" and shutil.which("unshare"):
        env = dict(os.environ, **{NS_ENV: "1"})
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
        os.execvpe("unshare", argv, env)
    if not os.access(a.warren, os.X_OK):
        log(f"suite: no warren binary at {a.warren} (cargo build --release -p warren)")
        return 3
    started = time.monotonic()
    waited = wait_for_load(a.wait_load, a.max_wait)
    host_before = cs.host_state()
    unified = cs.drop_unified()
    commit = cs.git("rev-parse", "HEAD")
    dirty = bool(cs.git("status", "--porcelain"))
    facts = cs.machine_facts()
    facts["mem_total"] = meminfo()["MemTotal"]
    facts["warren_binary_mtime"] = datetime.datetime.fromtimestamp(
        os.stat(a.warren).st_mtime, datetime.timezone.utc).isoformat()
    log(f"warren suite | commit {commit}{' (dirty tree)' if dirty else ''} | "
        f"{facts['nproc']} cpus, {facts['mem_total'] >> 30} GiB, kernel {facts['kernel']} | "
        f"load {os.getloadavg()[0]:.2f} (waited {waited:.0f} s) | "
        f"{'quick' if a.quick else 'full'} | {a.warren}")
    if cs.newest_source() > os.stat(a.warren).st_mtime:
        log("NOTE: the warren binary is older than the newest file under crates/ (rebuild)")
    log(f"private mount namespace; {cs.UNIFIED}: {unified}")
    log()

    s = Suite(a)
    problems, doctors, interrupted = [], {}, False

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        s.run(only)
        if not only or "cold" in only:
            pass
        s.goals()
    except KeyboardInterrupt:
        log("suite: interrupted; cleaning up")
        interrupted = True
    finally:
        try:
            p, doctors = s.leak_check()
            problems += p
        except Exception as e:
            problems.append(f"leak check failed: {e}")
        finally:
            s.stop_long_running()
            notes = []
            problems += cs.cleanup(s.tmp, s.id_prefix, s.runtimes, s.podman, s.podman_tag,
                                   host_before, notes)
            for n in notes:
                log(f"cleanup: {n}")
    for p in problems:
        log(f"LEFTOVER: {p}")
    if not problems:
        log("leak check: no sandbox, pool, warren leftover (doctor), peer container, cgroup, "
            "mount or process left; temp dir removed")
    elapsed = time.monotonic() - started
    log(f"suite: {elapsed:.0f} s")
    versions = {t: cs.first_line(v) for t, v in (
        ("warren", [a.warren, "--version"]), ("bwrap", ["bwrap", "--version"]),
        ("crun", ["crun", "--version"]), ("runc", ["runc", "--version"]),
        ("podman", ["podman", "--version"]))}
    if a.json:
        out = {"schema": 1,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "commit": commit, "dirty": dirty, "machine": facts, "versions": versions,
               "config": {"quick": a.quick, "rounds": a.rounds, "window_s": a.window,
                          "only": sorted(only) if only else None, "waited_for_load_s": waited,
                          "wait_load": a.wait_load, "cgroup2_unified": unified},
               "elapsed_s": elapsed, "load_at_end": load(),
               "warren": flat_warren(s.results), "goals": s.results.get("goals"),
               "scenarios": {k: v for k, v in s.results.items() if k != "goals"},
               "skipped": s.skipped, "failures": s.failures, "doctor": doctors,
               "leftovers": problems, "interrupted": interrupted}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        log(f"wrote {a.json}")
    if interrupted:
        return 130
    if problems:
        return 1
    if s.failures:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
