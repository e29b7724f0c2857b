#!/usr/bin/env python3
"""Two builds of Warren, alternated: a daemon's create latency and its creates per second.

    python3 bench/create-ab.py BEFORE AFTER [--rounds 6] [--creates 40] [--seconds 3]
                               [--clients 8]

Each round starts a daemon of its own for each binary in turn (the order swapped every
round), with `WARREN_LOG=off` and no home volume, and times through the API, from Python:
`--creates` times `POST /v1/sandboxes` then `DELETE`, one at a time (after 3 thrown away),
then `--clients` clients creating and removing for `--seconds`. Prints, per build, the
median and p25 of the create, the median of create + remove, and the median rate over the
rounds. Every sandbox is removed and every daemon stopped, whatever happens. Python 3
standard library only; root. Run it in a private mount namespace as the suite does:
`unshare --mount --propagation private -- python3 bench/create-ab.py ...`.
"""
import argparse
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("api", os.path.join(HERE, "api.py"))
api_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_mod)

BODY = {"home_volume": False}


def one_round(binary, a, res):
    tmp = tempfile.mkdtemp(prefix="warren-create-ab-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_LOG="off", WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([binary, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    made, lock = [], threading.Lock()
    try:
        api = api_mod.connect(sock)
        for i in range(a.creates + 3):
            t0 = time.perf_counter()
            sb = api.call("POST", "/v1/sandboxes", BODY)
            t1 = time.perf_counter()
            api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
            if i >= 3:
                res["create"].append((t1 - t0) * 1000)
                res["cycle"].append((time.perf_counter() - t0) * 1000)
        done = [0]
        stop = time.perf_counter() + a.seconds

        def client():
            c = api_mod.Api(sock)
            while time.perf_counter() < stop:
                sid = c.call("POST", "/v1/sandboxes", BODY)["id"]
                with lock:
                    made.append(sid)
                c.call("DELETE", f"/v1/sandboxes/{sid}")
                with lock:
                    made.remove(sid)
                    done[0] += 1
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        res["rate"].append(done[0] / (time.perf_counter() - t0))
    finally:
        try:
            api = api_mod.Api(sock)
            for sid in list(made):
                api.call("DELETE", f"/v1/sandboxes/{sid}")
        except Exception:
            pass
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--creates", type=int, default=40)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=8)
    a = p.parse_args()
    bins = [a.before, a.after]
    res = {b: {"create": [], "cycle": [], "rate": []} for b in bins}
    for r in range(a.rounds):
        for b in (bins if r % 2 == 0 else bins[::-1]):
            one_round(b, a, res[b])
    for b in bins:
        d = res[b]
        create = sorted(d["create"])
        print(f"{b}: create p50 {statistics.median(create):.2f} ms, "
              f"p25 {create[len(create) // 4]:.2f}; create + remove p50 "
              f"{statistics.median(d['cycle']):.2f} ms; {a.clients} clients "
              f"{statistics.median(d['rate']):.0f}/s")
    m = statistics.median
    print(f"after/before: create {m(res[a.after]['create']) / m(res[a.before]['create']):.2f}, "
          f"create + remove {m(res[a.after]['cycle']) / m(res[a.before]['cycle']):.2f}, "
          f"rate {m(res[a.after]['rate']) / m(res[a.before]['rate']):.2f}")


if __name__ == "__main__":
    main()
