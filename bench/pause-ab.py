#!/usr/bin/env python3
"""Two builds of Warren, alternated: a gVisor sandbox's pause (memory to disk) and resume.

    python3 bench/pause-ab.py BEFORE AFTER ROUNDS

Each round starts a daemon of each binary in turn (the order swapped every round), and,
for an idle shell and a python holding 100 MB, times through the API three pauses each
followed by a resume 0.5 s later, and three resumes right after a pause (which wait for
whatever of the pause still runs after its answer). Prints the medians and after/before.
Python 3 standard library only; root.
"""
import importlib.util, os, sys, time, subprocess, tempfile, shutil, statistics
HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("api", os.path.join(HERE, "api.py"))
api_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(api_mod)
Api = api_mod.Api
bins = sys.argv[1:3]; rounds = int(sys.argv[3])
W = {"idle": ("sh -c 'while true; do sleep 1; done'", 0.5), "100MB": ("python3 -c 'import os,time\nb=os.urandom(100<<20)\nwhile True: time.sleep(1)'", 2.0)}
res = {}
for r in range(rounds):
    order = bins if r % 2 == 0 else bins[::-1]
    for b in order:
        tmp = tempfile.mkdtemp(prefix="wab-")
        env = dict(os.environ, WARREN_RUN_DIR=f"{tmp}/run", WARREN_DATA_DIR=f"{tmp}/data", WARREN_LOG="off")
        for k in ("WARREN_SOCKET","WARREN_HOST"): env.pop(k, None)
        sock = f"{tmp}/run/warren.sock"
        srv = subprocess.Popen([b, "serve", "--socket", sock], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(500):
                if os.path.exists(sock): break
                time.sleep(0.01)
            api = Api(sock); api.call("GET", "/health")
            for w, (cmd, settle) in W.items():
                sid = api.call("POST", "/v1/sandboxes", {"isolation": "gvisor"})["id"]
                subprocess.run([b, "exec", "-d", sid, "--", "sh", "-c", cmd], env=dict(env, WARREN_SOCKET=sock), stdout=subprocess.DEVNULL, check=True)
                time.sleep(settle)
                for i in range(3):
                    t0 = time.perf_counter(); api.call("POST", f"/v1/sandboxes/{sid}/pause"); tp = (time.perf_counter()-t0)*1000
                    time.sleep(0.5)
                    t0 = time.perf_counter(); api.call("POST", f"/v1/sandboxes/{sid}/resume"); tr = (time.perf_counter()-t0)*1000
                    res.setdefault((os.path.basename(b), w, "pause"), []).append(tp)
                    res.setdefault((os.path.basename(b), w, "resume"), []).append(tr)
                    t0 = time.perf_counter(); api.call("POST", f"/v1/sandboxes/{sid}/pause"); tp = (time.perf_counter()-t0)*1000
                    t0 = time.perf_counter(); api.call("POST", f"/v1/sandboxes/{sid}/resume"); tr = (time.perf_counter()-t0)*1000
                    res.setdefault((os.path.basename(b), w, "resume right after a pause"), []).append(tr)
                api.call("DELETE", f"/v1/sandboxes/{sid}")
        finally:
            srv.terminate(); srv.wait(timeout=60); shutil.rmtree(tmp, ignore_errors=True)
    print("round", r, "load", os.getloadavg()[0], flush=True)
for w in W:
    for what in ("pause", "resume", "resume right after a pause"):
        a = statistics.median(res[(os.path.basename(bins[0]), w, what)]); b2 = statistics.median(res[(os.path.basename(bins[1]), w, what)])
        print(f"{w:6} {what:28} {a:8.1f} -> {b2:8.1f} ms  ({b2/a:.2f}x)  n={len(res[(os.path.basename(bins[1]), w, what)])}")
