#!/usr/bin/env python3
"""What each kind of namespace costs to make: `unshare(2)` timed in a forked child.

    python3 bench/namespaces.py [--n 40]

For each of the user, network, ipc, uts, pid, mount and cgroup namespaces, and for all
seven at once (as a sandbox's first process gets them), N times: fork a child that times
its own `unshare` of that kind and exits (its namespaces go with it); medians in ms of the
wall clock and of the child's CPU time (what is not CPU time is waiting: a lock, a grace
period). The child's clocks bracket the system call alone. Root; Python 3 standard library
(ctypes).
"""
import argparse
import ctypes
import os
import statistics
import time

KINDS = {
    "user": 0x10000000,
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "pid": 0x20000000,
    "mount": 0x00020000,
    "cgroup": 0x02000000,
}


def timed(flags, n):
    libc = ctypes.CDLL(None, use_errno=True)
    samples = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            cpu = time.thread_time_ns()
            t = time.perf_counter_ns()
            rc = libc.unshare(flags)
            took = time.perf_counter_ns() - t
            cpu = time.thread_time_ns() - cpu
            if rc != 0:
                took = -ctypes.get_errno()
            os.write(w, f"{took} {cpu}".encode())
            os._exit(0)
        os.close(w)
        took, cpu = (int(x) for x in (os.read(r, 64) or b"0 0").split())
        os.close(r)
        os.waitpid(pid, 0)
        if took < 0:
            raise SystemExit(f"unshare({flags:#x}) failed: {os.strerror(-took)}")
        samples.append((took / 1e6, cpu / 1e6))
    return (statistics.median(s[0] for s in samples),
            statistics.median(s[1] for s in samples))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40)
    a = p.parse_args()
    print(f"unshare(2), median of {a.n} (ms): wall, CPU")
    for name, flag in [*KINDS.items(), ("all", sum(KINDS.values()))]:
        wall, cpu = timed(flag, a.n)
        print(f"  {name:<8} {wall:.3f}  {cpu:.3f}")


if __name__ == "__main__":
    main()
