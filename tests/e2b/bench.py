"""Sandbox.create() + commands.run("true") through the E2B SDK, against a live Warren.

    sudo python tests/e2b/bench.py [--rounds 50] [--warren target/release/warren]

Starts its own `warren serve --e2b-listen` in a temp dir, times each round from before
`Sandbox.create()` to the end of `commands.run("true")` (the kill is outside the timing),
and prints p50 and p90 in milliseconds. Run it with the venv of scripts/e2b-test.

With `--port-traffic`, it instead times GET requests to `python3 -m http.server` inside
one sandbox through the listener (`Host: PORT-ID.DOMAIN`, one keep-alive client
connection), beside the same server run on the host's loopback for reference.

With `--port-traffic --tls`, the listener speaks TLS (a self-signed certificate for
warren.test, *.warren.test and localhost): the same GETs over one TLS connection each
round, and a fresh TLS connection (handshake included) per request.

With `--code-interpreter`, each round is `e2b_code_interpreter.Sandbox.create()` +
`run_code("1+1")` on the code-interpreter-v1 template (built first from the base archive
named by WARREN_BASE_ARCHIVE, as scripts/e2b-test keeps it).
"""

import argparse
import http.client
import json
import socket
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
    ap.add_argument("--port-traffic", action="store_true",
                    help="time requests to a port inside a sandbox instead")
    ap.add_argument("--tls", action="store_true",
                    help="with --port-traffic: the E2B listener over TLS")
    ap.add_argument("--code-interpreter", action="store_true",
                    help="time Sandbox.create() + run_code('1+1') of e2b_code_interpreter")
    args = ap.parse_args()
    conftest.WARREN = args.warren
    d = conftest.Daemon(base=not args.tls, tls="warren.test" if args.tls else None)
    url = d.url
    if args.tls:
        # The certificate names localhost, not 127.0.0.1.
        url = f"https://localhost:{d.port}"
        os.environ["SSL_CERT_FILE"] = d.cert
    os.environ.update(E2B_API_KEY=d.key, E2B_API_URL=url, E2B_SANDBOX_URL=url)
    from e2b import Sandbox

    template = "host"
    if args.code_interpreter:
        from e2b_code_interpreter import Sandbox  # noqa: F811
        template = "code-interpreter-v1"
        d.run("template", "code-interpreter", "--quiet-progress", "--socket", d.socket)

    if args.port_traffic:
        try:
            return port_traffic(d, Sandbox, args.rounds, args.warmup, args.tls)
        finally:
            d.kill_all()
            d.stop()
            shutil.rmtree(d.dir, ignore_errors=True)

    if args.pool:
        # The profile of an E2B create: the template, and internet access (on by default).
        spec = json.dumps({"template": template, "network": "nat", "min": args.pool, "max": args.pool})
        subprocess.run(["curl", "-sf", "--unix-socket", d.socket, "-H", "Content-Type: application/json",
                        "-d", spec, "http://localhost/v1/pools"], check=True, capture_output=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            pools = json.loads(subprocess.run(["curl", "-sf", "--unix-socket", d.socket, "http://localhost/v1/pools"],
                                              check=True, capture_output=True).stdout)
            if pools and all(p["ready"] >= p["spec"]["min"] for p in pools):
                break
            time.sleep(0.5)

    samples = []
    try:
        for i in range(args.warmup + args.rounds):
            t = time.perf_counter()
            sb = Sandbox.create()
            if args.code_interpreter:
                assert sb.run_code("1+1").text == "2"
            else:
                sb.commands.run("true")
            dt = (time.perf_counter() - t) * 1000
            sb.kill()
            if args.pool:
                # Let the pool refill, as between requests in service.
                time.sleep(3 if args.code_interpreter else 0.2)
            if i >= args.warmup:
                samples.append(dt)
    finally:
        if args.pool:
            # Warm sandboxes are the daemon's, not a tenant's, and outlive it by design:
            # the pool goes first (max 0 ends them).
            spec = json.dumps({"template": template, "network": "nat", "min": 0, "max": 0})
            subprocess.run(["curl", "-sf", "--unix-socket", d.socket, "-H", "Content-Type: application/json",
                            "-d", spec, "http://localhost/v1/pools"], capture_output=True)
        d.kill_all()
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)
    samples.sort()
    q = statistics.quantiles(samples, n=10)
    print(f"rounds {len(samples)}  p50 {statistics.median(samples):.1f} ms  p90 {q[8]:.1f} ms  "
          f"min {samples[0]:.1f} ms  max {samples[-1]:.1f} ms")
    return 0


def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _time_gets(port: int, host: str, n: int, tls=None, fresh=False) -> list:
    def connect():
        if tls:
            return http.client.HTTPSConnection("localhost", port, timeout=30, context=tls)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    c = connect()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        if fresh:
            c.close()
            c = connect()
        c.request("GET", "/", headers={"Host": host})
        r = c.getresponse()
        r.read()
        out.append((time.perf_counter() - t) * 1000)
        assert r.status == 200, r.status
    c.close()
    return out


def _summary(name: str, xs: list) -> str:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10)
    return f"{name:<18} n {len(xs)}  p50 {statistics.median(xs):.2f} ms  p90 {q[8]:.2f} ms"


def port_traffic(d, Sandbox, rounds: int, warmup: int, tls: bool = False) -> int:
    sb = Sandbox.create(timeout=600)
    sb.commands.run("cd /tmp && python3 -m http.server 8080 >/dev/null 2>&1", background=True)
    sb.commands.run("for i in $(seq 200); do python3 -c 'import socket; "
                    "socket.create_connection((\"127.0.0.1\", 8080))' 2>/dev/null && exit 0; "
                    "sleep 0.05; done; exit 1")
    local_port = conftest._free_port()
    local = subprocess.Popen([sys.executable, "-m", "http.server", str(local_port), "--bind", "127.0.0.1"],
                             cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(local_port)
        host = sb.get_host(8080)
        ctx = None
        if tls:
            import ssl

            ctx = ssl.create_default_context(cafile=d.cert)
        _time_gets(d.port, host, warmup, ctx)
        _time_gets(local_port, "127.0.0.1", warmup)
        through, direct, fresh = [], [], []
        for _ in range(rounds):  # interleaved, so drift hits both alike
            through += _time_gets(d.port, host, 10, ctx)
            direct += _time_gets(local_port, "127.0.0.1", 10)
            if tls:
                fresh += _time_gets(d.port, host, 2, ctx, fresh=True)
        print(_summary("through warren" + (" (tls)" if tls else ""), through))
        if fresh:
            print(_summary("new tls conn each", fresh))
        print(_summary("host loopback", direct))
        print(f"ratio of medians {statistics.median(through) / statistics.median(direct):.2f}")
    finally:
        local.kill()
        local.wait()
        sb.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
