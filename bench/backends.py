#!/usr/bin/env python3
"""Each isolation backend side by side, in one run, with gVisor's own floor.

    python3 bench/backends.py [--runs 20] [--idle 5] [--warren target/release/warren]

Starts its own `warren serve` (trust mode on, as user nobody, in a temporary directory)
and, for every backend `GET /v1/backends` says is available, interleaved round by round:

  cold     POST /v1/sandboxes + exec `true` + DELETE, through the API (and with gvisor,
           `runsc do true` in the same rounds)
  exec     exec round trip of `true` in a running sandbox
  idle     host memory per idle sandbox: its cgroup's memory (kernel and user side)
           after it settled, plus the RSS of its host processes outside the cgroup

and, as the floor the gvisor backend adds to: `runsc do true`, and bare `runsc
checkpoint` / `restore` of a minimal bundle (an idle shell; a python holding 100 MB, and 1 GB;
each image written with runsc's default flate and uncompressed, as Warren writes it) round by round with Warren's pause (memory to disk) and resume of the same workloads, the image
sizes, a fork of 10, and a template carrying each workload's memory (`snapshot` with
`memory`) with sandboxes made from it, cold and (idle shell, 100 MB) claimed from a pool
of one that restores them ahead. Prints median, p90, min, max and n, and the ratios.
`--json PATH` writes every sample.
Python 3 standard library only; root.
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("api", os.path.join(HERE, "api.py"))
api_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_mod)
Api, pct, ms = api_mod.Api, api_mod.pct, api_mod.ms

TRUE = {"command": {"argv": ["true"]}}


def row(name, xs, unit="ms"):
    if not xs:
        return f"{name:<34} (no samples)"
    return (f"{name:<34} {statistics.median(xs):9.1f} {pct(xs, 0.9):9.1f} {min(xs):9.1f} "
            f"{max(xs):9.1f} {len(xs):5d}  {unit}")


def cgroup_dirs(sid):
    own = {}
    for line in open("/proc/self/cgroup"):
        _, ctrl, path = line.strip().split(":", 2)
        for c in ctrl.split(","):
            own[c] = path
    base = own.get("memory", "/").lstrip("/")
    return os.path.join("/sys/fs/cgroup/memory", base, f"warren-{sid}")


def cgroup_memory(sid):
    d = cgroup_dirs(sid)
    for f in ("memory.usage_in_bytes", "memory.current"):
        try:
            return int(open(os.path.join(d, f)).read())
        except OSError:
            continue
    return None


def runsc_do_true(runsc):
    """`runsc do true` (`runsc` the program's path), the floor of a gVisor sandbox's
    create + exec + remove: ms."""
    t0 = time.perf_counter()
    subprocess.run([runsc, "--platform=ptrace", "--network=none", "do", "true"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return ms(t0)


HOLD_100M = ("import os, time\nb = os.urandom(100 << 20)\n"
             "while True:\n    time.sleep(1)")
HOLD_1G = ("import os, time\nb = os.urandom(1 << 30)\n"
           "while True:\n    time.sleep(1)")
IDLE = "while true; do sleep 1; done"
# Seconds a sandbox stays paused before its resume is timed.
PAUSED = 1.0

# The workloads paused and resumed: name, command, seconds to settle after it starts,
# most rounds (the 1 GB one is slow to save and takes a GiB of disk per image).
WORKLOADS = (
    ("idle shell", ["sh", "-c", IDLE], 0.3, None),
    ("python holding 100 MB", ["python3", "-c", HOLD_100M], 1.5, None),
    ("python holding 1 GB", ["python3", "-c", HOLD_1G], 10.0, 2),
)


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class BareRunsc:
    """runsc checkpoint and restore of a minimal bundle, as the floor, a round at a time
    (called between Warren's rounds of the same workload, so the two meet the same host)."""

    def __init__(self, runsc, tmp):
        self.tmp = tmp
        self.root = os.path.join(tmp, "runsc-root")
        self.bundle = os.path.join(tmp, "bundle")
        rootfs = os.path.join(self.bundle, "rootfs")
        for d in ("usr", "proc", "dev", "tmp", "etc"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        for l in ("bin", "lib", "lib64", "sbin"):
            if not os.path.lexists(os.path.join(rootfs, l)):
                os.symlink("usr/" + l, os.path.join(rootfs, l))
        self.flags = [runsc, f"--root={self.root}", "--platform=ptrace", "--network=none",
                      "--overlay2=root:memory"]

    def round(self, name, args, settle, i, compression=None):
        """One container of workload `name` started, checkpointed `settle` s later (with
        `--compression=COMPRESSION`, else runsc's default, flate) and restored:
        (checkpoint ms, restore ms, image MiB)."""
        cfg = {
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
                        "env": ["PATH=/usr/bin:/bin"]},
            "root": {"path": "rootfs", "readonly": False},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/usr", "type": "bind", "source": "/usr",
                 "options": ["rbind", "ro"]},
            ],
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount",
                                                           "network")]},
        }
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        cid = f"wbb-{os.getpid()}-{i}"
        img = os.path.join(self.tmp, f"img-{i}")
        run = lambda *a: subprocess.run([*self.flags, *a], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, check=True)
        try:
            run("run", "--bundle", self.bundle, "-detach", cid)
            time.sleep(settle)
            t0 = time.perf_counter()
            run("checkpoint", f"--image-path={img}",
                *([f"--compression={compression}"] if compression else []), cid)
            t_ck = ms(t0)
            run("delete", "-force", cid)
            t0 = time.perf_counter()
            run("restore", f"--image-path={img}", "--bundle", self.bundle, "-detach", cid)
            return t_ck, ms(t0), du(img) / 2**20
        finally:
            subprocess.run([*self.flags, "delete", "-force", cid], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            shutil.rmtree(img, ignore_errors=True)


def start_background(sock, sid, argv):
    """Starts a process that runs on (a streamed exec, left once it has started)."""
    conn = api_mod.UnixHTTP(sock)
    body = json.dumps({"command": {"argv": argv}, "background": True})
    conn.request("POST", f"/v1/sandboxes/{sid}/exec?stream=true", body=body,
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    first = r.readline()
    conn.close()
    if b"started" not in first:
        raise RuntimeError(f"exec in {sid}: {first[:200]!r}")


def warren_pause(api, sock, runs, data_dir, bare):
    """Warren's pause (memory to disk) and resume of the same workloads, each round next
    to a round of bare runsc's (`bare`, a BareRunsc, when runsc is there), and a fork."""
    out = {}
    for name, cmd, settle, most in WORKLOADS:
        rounds = min(runs, most or runs)
        resources = {"memory": 3 << 30} if "1 GB" in name else {}
        sid = api.call("POST", "/v1/sandboxes",
                       {"isolation": "gvisor", "resources": resources})["id"]
        try:
            start_background(sock, sid, cmd)
            time.sleep(settle)
            for i in range(rounds + 1):
                t0 = time.perf_counter()
                api.call("POST", f"/v1/sandboxes/{sid}/pause")
                t_p = ms(t0)
                img = du(os.path.join(data_dir, "sandboxes", sid, "image")) / 2**20
                # Paused, the sandbox's Sentry is still letting go of its memory (some 0.3 s
                # for 1 GB; the pause answered once the image was complete, as bare runsc's
                # checkpoint returns before its delete), and a resume waits for that:
                # resumed a second later, as bare runsc restores once deleted.
                time.sleep(PAUSED)
                t0 = time.perf_counter()
                api.call("POST", f"/v1/sandboxes/{sid}/resume")
                t_r = ms(t0)
                if i >= 1:
                    out.setdefault(f"warren pause (to disk), {name}", []).append(t_p)
                    out.setdefault(f"warren resume, {name}", []).append(t_r)
                    out.setdefault(f"warren image, {name}", []).append(img)
                # Bare runsc as its users run it (flate), and writing its image as Warren
                # does by default (uncompressed): Warren's own cost over the same work.
                for compression, how in ((None, ""), ("none", " uncompressed")) if bare else ():
                    t_ck, t_rs, b_img = bare.round(name, cmd, settle, i, compression)
                    if i >= 1:
                        out.setdefault(f"bare runsc checkpoint{how}, {name}", []).append(t_ck)
                        out.setdefault(f"bare runsc restore{how}, {name}", []).append(t_rs)
                        out.setdefault(f"bare runsc image{how}, {name}", []).append(b_img)
            if "idle" in name:
                t0 = time.perf_counter()
                copies = api.call("POST", f"/v1/sandboxes/{sid}/fork", {"count": 10})
                out["warren fork of 10 (idle shell)"] = [ms(t0)]
                for c in copies:
                    api.call("DELETE", f"/v1/sandboxes/{c['id']}")
            # A template that carries this process, warm: the snapshot, then sandboxes
            # made from it (each restored, the process going on) next to a cold create.
            tname = f"warm-{sid}"
            t0 = time.perf_counter()
            api.call("POST", f"/v1/sandboxes/{sid}/snapshot", {"name": tname, "memory": True})
            out[f"warren snapshot with memory, {name}"] = [ms(t0)]
            try:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    w = api.call("POST", "/v1/sandboxes", {"template": tname,
                                                           "resources": resources})
                    api.call("POST", f"/v1/sandboxes/{w['id']}/exec", TRUE)
                    out.setdefault(f"warren create from it + exec, {name}", []).append(ms(t0))
                    api.call("DELETE", f"/v1/sandboxes/{w['id']}")
            finally:
                api.call("DELETE", f"/v1/templates/{tname}")
        finally:
            api.call("DELETE", f"/v1/sandboxes/{sid}")
        if "1 GB" not in name:
            out.update(warm_pool(api, sock, name, cmd, settle, rounds))
    return out


def warm_pool(api, sock, name, cmd, settle, rounds):
    """Creates from a template that carries memory, claimed from a pool of one that
    restores its members ahead (the template saved without a home volume, as a pool's
    sandboxes have none)."""
    out = {}
    sid = api.call("POST", "/v1/sandboxes", {"isolation": "gvisor", "home_volume": False})["id"]
    tname = f"pooled-{sid}"
    pool = {"template": tname, "isolation": "gvisor", "min": 1, "max": 1}
    try:
        start_background(sock, sid, cmd)
        time.sleep(settle)
        api.call("POST", f"/v1/sandboxes/{sid}/snapshot", {"name": tname, "memory": True})
        api.call("DELETE", f"/v1/sandboxes/{sid}")
        sid = None
        api.call("POST", "/v1/pools", pool)
        ready = lambda: api.call("GET", "/v1/pools")[0]["ready"] == 1
        for _ in range(rounds):
            deadline = time.time() + 120
            while not ready() and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            t0 = time.perf_counter()
            w = api.call("POST", "/v1/sandboxes", {"template": tname})
            api.call("POST", f"/v1/sandboxes/{w['id']}/exec", TRUE)
            out.setdefault(f"warren create from it + exec, pool of 1, {name}", []).append(ms(t0))
            api.call("DELETE", f"/v1/sandboxes/{w['id']}")
    finally:
        api.call("POST", "/v1/pools", dict(pool, min=0, max=0))
        if sid:
            api.call("DELETE", f"/v1/sandboxes/{sid}")
        api.call("DELETE", f"/v1/templates/{tname}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle", type=int, default=5)
    repo = os.path.dirname(HERE)
    ap.add_argument("--warren", default=os.path.join(repo, "target/release/warren"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    tmp = tempfile.mkdtemp(prefix="wbb-")
    spaces = os.path.join("/tmp", f"wbb-spaces-{os.getpid()}")
    os.makedirs(spaces, mode=0o755)
    cfg = os.path.join(tmp, "config.toml")
    with open(cfg, "w") as f:
        f.write(f'[backends.process]\nuser = "nobody"\ndir = "{spaces}"\n')
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([a.warren, "serve", "--socket", sock, "--config", cfg], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    made = []
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        api = Api(sock)
        api.call("GET", "/health")
        backends = [b for b in api.call("GET", "/v1/backends") if b["available"]]
        for b in api.call("GET", "/v1/backends"):
            if not b["available"]:
                print(f"SKIPPED {b['name']}: {b.get('reason')}")
        names = [b["name"] for b in backends]
        runsc = shutil.which("runsc")
        body = lambda n: {"isolation": n, "resources": {}}

        # cold: interleaved round by round
        for i in range(a.runs + 2):
            for n in names:
                t0 = time.perf_counter()
                sb = api.call("POST", "/v1/sandboxes", body(n))
                api.call("POST", f"/v1/sandboxes/{sb['id']}/exec", TRUE)
                api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
                if i >= 2:
                    results.setdefault(f"{n}: create+exec+remove", []).append(ms(t0))
            # gVisor's floor in the same rounds.
            floor = runsc_do_true(runsc) if runsc and "gvisor" in names else None
            if floor is not None and i >= 2:
                results.setdefault("runsc do true", []).append(floor)

        # exec round trip
        running = {n: api.call("POST", "/v1/sandboxes", body(n))["id"] for n in names}
        made.extend(running.values())
        for i in range(a.runs * 5 + 5):
            for n in names:
                t0 = time.perf_counter()
                api.call("POST", f"/v1/sandboxes/{running[n]}/exec", TRUE)
                if i >= 5:
                    results.setdefault(f"{n}: exec true", []).append(ms(t0))

        # idle memory
        for n in names:
            ids = [api.call("POST", "/v1/sandboxes", body(n))["id"] for _ in range(a.idle)]
            made.extend(ids)
            time.sleep(3)
            mem = [cgroup_memory(s) for s in ids]
            results[f"{n}: idle memory per sandbox"] = [m / 2**20 for m in mem if m is not None]

        if "gvisor" in names:
            bare = BareRunsc(runsc, tmp) if runsc else None
            results.update(warren_pause(api, sock, max(3, a.runs // 4),
                                        os.path.join(tmp, "data"), bare))
    finally:
        for s in made:
            try:
                api.call("DELETE", f"/v1/sandboxes/{s}")
            except Exception:
                pass
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(spaces, ignore_errors=True)

    print(f"{'scenario':<34} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'n':>5}")
    for k, xs in results.items():
        print(row(k, xs, "MiB" if ("idle memory" in k or " image" in k) else "ms"))
    g = results.get("gvisor: create+exec+remove")
    floor = results.get("runsc do true")
    if g and floor:
        ratio = statistics.median(g) / statistics.median(floor)
        print(f"gvisor backend / runsc do true (medians): {ratio:.2f}x")
    for w, _, _, _ in WORKLOADS:
        for ours, bare in (("warren pause (to disk)", "bare runsc checkpoint"),
                           ("warren resume", "bare runsc restore"),
                           ("warren pause (to disk)", "bare runsc checkpoint uncompressed"),
                           ("warren resume", "bare runsc restore uncompressed")):
            x, y = results.get(f"{ours}, {w}"), results.get(f"{bare}, {w}")
            if x and y:
                print(f"{ours} / {bare}, {w}: "
                      f"{statistics.median(x) / statistics.median(y):.2f}x")
        x = results.get(f"warren create from it + exec, pool of 1, {w}")
        y = results.get(f"bare runsc restore, {w}")
        if x and y:
            print(f"create from a template with memory, pooled / bare runsc restore, {w}: "
                  f"{statistics.median(x) / statistics.median(y):.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
