#!/usr/bin/env python3
"""Where `warren run --rm -- true` spends its time, phase by phase.

Runs the command N times with WARREN_TRACE=1 and prints, for every phase the CLI and
the helper mark, the median and p90 of the time since the previous mark and since the
CLI started. "create to agent ready" is from the CLI's backend being ready to the
sandbox being reported created (the helper's whole set-up, seen from the caller).

With --api, the same for sandboxes made through the daemon: a `warren serve` of its own
with WARREN_TRACE=1, N times `POST /v1/sandboxes` then `DELETE`, and the marks of each
helper (one process per sandbox) read back from the daemon's stderr; `--no-home` asks for
no home volume, as the suite's throughput scenario does. Each step's time is since the
same helper's previous mark. `--running N` first starts N idle sandboxes (8 clients) and
leaves them running while the N+1st to the last are made and removed, to see which steps
grow with the number of sandboxes on the host; the sandbox's first process marks its own
steps too (`child: ...`, pid 1 in its namespace), listed after the helper's.

    python3 bench/phases.py [--runs 50] [--warren target/release/warren] [--api [--no-home]
                            [--running N]]
"""
import argparse
import collections
import importlib.util
import re
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time


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
    ap.add_argument("--api", action="store_true", help="sandboxes made through a daemon")
    ap.add_argument("--no-home", action="store_true", help="with --api: no home volume")
    ap.add_argument("--running", type=int, default=0,
                    help="with --api: idle sandboxes left running during the probe")
    a = ap.parse_args()
    if a.api:
        return api_phases(a)
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


CHILD_FIRST = "child: cgroup joined"


def fill(api_mod, sock, body, n, clients=8):
    """Starts n sandboxes from `clients` connections; their ids."""
    import threading
    ids, errors, lock = [], [], threading.Lock()

    def work(k):
        api = api_mod.Api(sock)
        for _ in range(k):
            try:
                sid = api.call("POST", "/v1/sandboxes", body)["id"]
            except Exception as e:  # reported below, once the others are removed
                with lock:
                    errors.append(e)
                return
            with lock:
                ids.append(sid)
    threads = [threading.Thread(target=work, args=(n // clients + (i < n % clients),))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        empty(api_mod, sock, ids, clients)
        raise errors[0]
    if n:
        time.sleep(5)  # the agents settle into idle
    return ids


def empty(api_mod, sock, ids, clients=8):
    import threading

    def work(part):
        api = api_mod.Api(sock)
        for sid in part:
            api.call("DELETE", f"/v1/sandboxes/{sid}")
    threads = [threading.Thread(target=work, args=(ids[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


MARK = re.compile(r"trace (\d+) (\d+) (.+?)(?=trace \d+ \d+ |\n|$)")


def api_phases(a):
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("api", os.path.join(here, "api.py"))
    api_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_mod)
    tmp = tempfile.mkdtemp(prefix="warren-phases-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_TRACE="1", WARREN_LOG="off",
               WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    log = open(os.path.join(tmp, "stderr"), "w+")
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=log)
    body = {"home_volume": False} if a.no_home else {}
    create, remove = [], []
    start = end = 0
    try:
        api = api_mod.connect(sock)
        idle = fill(api_mod, sock, body, a.running)
        log.flush()
        # Only the probe's marks: the daemon appends to the file after this.
        start = os.path.getsize(log.name)
        for i in range(a.runs + 3):
            t0 = time.perf_counter()
            sb = api.call("POST", "/v1/sandboxes", body)
            t1 = time.perf_counter()
            api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
            if i >= 3:
                create.append((t1 - t0) * 1000)
                remove.append((time.perf_counter() - t1) * 1000)
        end = os.path.getsize(log.name)
        empty(api_mod, sock, idle)
    finally:
        end = end or os.path.getsize(log.name)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.seek(start if a.running else 0)
        text = log.read(end - start if a.running else -1)
        log.close()
        subprocess.run(["rm", "-rf", tmp])
    # The daemon's marks, one run per create ("daemon: create asked" starts one); the
    # helpers' and the sandboxes' first processes' marks, each placed in the create whose
    # window holds them (the probe makes one sandbox at a time); what a helper marks
    # after its create answered (its stop and teardown) is listed apart.
    runs, by_pid, rest = [], collections.defaultdict(list), []
    for m in MARK.finditer(text):
        t, pid, name = int(m.group(1)), int(m.group(2)), m.group(3).strip()
        if name.startswith("daemon:"):
            if name == "daemon: request in" or not runs:
                runs.append([])
            runs[-1].append((t, name))
        else:
            by_pid[pid].append((t, name))
    runs = runs[3:]  # the warm-up's
    windows = [(min(t for t, _ in r), max(t for t, _ in r)) for r in runs]
    for marks in by_pid.values():
        for t, name in marks:
            for r, (lo, hi) in zip(runs, windows):
                if lo <= t <= hi:
                    r.append((t, name))
                    break
            else:
                if t > windows[0][0] if windows else False:
                    rest.append((t, name))

    def table(title, seqs):
        order, steps = [], {}
        for marks in seqs:
            marks.sort()
            for (t0, _), (t1, name) in zip(marks, marks[1:]):
                if name not in order:
                    order.append(name)
                steps.setdefault(name, []).append((t1 - t0) / 1000)
        print(f"{title:32} {'step p50':>9} {'step p90':>9}   (ms, {len(seqs)} sandboxes, "
              f"{a.running} running)")
        for name in order:
            xs = steps[name]
            print(f"{name:32} {statistics.median(xs):9.2f} {pct(xs, .9):9.2f}")

    table("create, daemon and helper (API)", runs)
    spans = [(max(t for t, n in r if n.startswith("daemon:")) - r[0][0]) / 1000
             for r in runs if r]
    if spans:
        print(f"{'core, request in to recorded':32} {statistics.median(spans):9.2f} "
              f"{pct(spans, .9):9.2f}")
    # A helper's later marks, per helper: its stop and teardown.
    later = collections.defaultdict(list)
    for pid, marks in by_pid.items():
        tail = [(t, n) for t, n in marks if (t, n) in set(rest)]
        if len(tail) > 1:
            later[pid] = tail
    if later:
        print()
        table("after the create (helper)", list(later.values()))
    print(f"\nPOST /v1/sandboxes: p50 {statistics.median(create):.2f} ms, p90 {pct(create, .9):.2f}; "
          f"DELETE: p50 {statistics.median(remove):.2f} ms, p90 {pct(remove, .9):.2f}")


if __name__ == "__main__":
    main()
