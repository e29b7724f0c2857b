#!/usr/bin/env python3
"""The SSH gateway against the same daemon's API: `ssh host true` (a new connection, key
exchange and sign-in each time) next to `warren exec SANDBOX -- true`, and a 100 MB file
up and down with scp (SFTP) next to `warren cp`. One daemon of its own in a temporary
directory; OpenSSH's client. Needs root.

    python3 bench/ssh.py --warren target/release/warren --rounds 20
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd, env, **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, **kw)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warren", default="target/release/warren")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--megabytes", type=int, default=100)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="wb", dir="/tmp")
    env = dict(os.environ, WARREN_DATA_DIR=f"{root}/data", WARREN_RUN_DIR=f"{root}/run")
    port = free_port()
    daemon = subprocess.Popen(
        [a.warren, "serve", "--ssh-listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if os.path.exists(f"{root}/run/warren.sock"):
                break
            time.sleep(0.05)
        key = f"{root}/key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        subprocess.run([a.warren, "keys", "ssh", "add", "--owner", "bench", key + ".pub"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        opts = ["-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={root}/kh",
                "-o", "LogLevel=ERROR"]
        ssh = ["ssh", *opts, "-p", str(port), "bench+b@127.0.0.1"]
        subprocess.run([*ssh, "true"], check=True)  # makes the sandbox
        sandbox = "bench/b"
        ssh_ms, exec_ms = [], []
        for i in range(a.rounds + 2):
            s = timed([*ssh, "true"], env)
            e = timed([a.warren, "exec", sandbox, "--", "true"], env)
            if i >= 2:
                ssh_ms.append(s)
                exec_ms.append(e)
        blob = f"{root}/blob"
        with open(blob, "wb") as f:
            f.write(os.urandom(a.megabytes << 20))
        scp = ["scp", *opts, "-P", str(port)]
        up = timed([*scp, blob, "bench+b@127.0.0.1:/tmp/blob"], env)
        down = timed([*scp, "bench+b@127.0.0.1:/tmp/blob", f"{root}/back"], env)
        cp_up = timed([a.warren, "cp", blob, f"{sandbox}:/tmp/blob2"], env)
        cp_down = timed([a.warren, "cp", f"{sandbox}:/tmp/blob2", f"{root}/back2"], env)
        mb = a.megabytes
        print(f"load {os.getloadavg()[0]:.2f}")
        print(f"ssh host true (new connection each): p50 {statistics.median(ssh_ms):.1f} ms, "
              f"p90 {sorted(ssh_ms)[int(len(ssh_ms) * 0.9) - 1]:.1f} ms")
        print(f"warren exec -- true (CLI, unix socket): p50 {statistics.median(exec_ms):.1f} ms")
        print(f"scp {mb} MB up {mb / up * 1000:.0f} MB/s, down {mb / down * 1000:.0f} MB/s")
        print(f"warren cp {mb} MB up {mb / cp_up * 1000:.0f} MB/s, down {mb / cp_down * 1000:.0f} MB/s")
        subprocess.run([a.warren, "rm", sandbox], env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
