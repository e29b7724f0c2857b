#!/usr/bin/env python3
"""What a sandbox's cgroup costs to make on cgroup v1, call by call.

    python3 bench/cgroup-ops.py [--n 60] [--existing 0]

Under this process's own cgroup in each of the memory, cpu, cpuacct, pids and freezer
hierarchies (a directory `warren-cgbench-PID` of its own), times N times: the five
`mkdir`s of a sandbox's cgroup, its memory limit and CPU period writes, its CPU quota
write, its pids limit write, the five `rename`s that take a cgroup made ahead into place,
and the five `rmdir`s; medians in ms. `--existing N` first makes N cgroups with limits
beside them (idle: no task), to see which calls grow with the host's cgroups; a run with
real sandboxes beside it is `bench/phases.py --api --running N`. Root, cgroup v1;
everything it made is removed at the end, whatever happens. Python 3 standard library.
"""
import argparse
import os
import statistics
import time

CONTROLLERS = ["memory", "cpu", "cpuacct", "pids", "freezer"]


def own_dirs():
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(","):
                own[c] = path
    base = {}
    for c in CONTROLLERS:
        if c not in own or not os.path.isdir(f"/sys/fs/cgroup/{c}"):
            raise SystemExit(f"no cgroup v1 {c} hierarchy here")
        base[c] = f"/sys/fs/cgroup/{c}{own[c]}".rstrip("/") + f"/warren-cgbench-{os.getpid()}"
    return base


def write(path, value):
    with open(path, "w") as f:
        f.write(value)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--existing", type=int, default=0)
    a = p.parse_args()
    base = own_dirs()
    made = []
    for c in CONTROLLERS:
        os.mkdir(base[c])
    try:
        for i in range(a.existing):
            name = f"s{i}"
            for c in CONTROLLERS:
                os.mkdir(f"{base[c]}/{name}")
            made.append(name)
            write(f"{base['memory']}/{name}/memory.limit_in_bytes", str(512 << 20))
            write(f"{base['cpu']}/{name}/cpu.cfs_quota_us", "100000")
            write(f"{base['pids']}/{name}/pids.max", "1024")
        steps = {k: [] for k in ("mkdir x5", "memory limit + CPU period", "CPU quota",
                                 "pids limit", "rename x5", "rmdir x5")}
        for _ in range(a.n):
            t = [time.perf_counter()]
            for c in CONTROLLERS:
                os.mkdir(f"{base[c]}/x")
            made.append("x")
            t.append(time.perf_counter())
            write(f"{base['memory']}/x/memory.limit_in_bytes", str(512 << 20))
            write(f"{base['cpu']}/x/cpu.cfs_period_us", "100000")
            t.append(time.perf_counter())
            write(f"{base['cpu']}/x/cpu.cfs_quota_us", "100000")
            t.append(time.perf_counter())
            write(f"{base['pids']}/x/pids.max", "1024")
            t.append(time.perf_counter())
            for c in CONTROLLERS:
                os.rename(f"{base[c]}/x", f"{base[c]}/y")
            made[-1] = "y"
            t.append(time.perf_counter())
            for c in CONTROLLERS:
                os.rmdir(f"{base[c]}/y")
            made.pop()
            t.append(time.perf_counter())
            for k, (t0, t1) in zip(steps, zip(t, t[1:])):
                steps[k].append((t1 - t0) * 1000)
        print(f"{a.existing} cgroups beside, {a.n} rounds (median ms):")
        for k, v in steps.items():
            print(f"  {k:<28} {statistics.median(v):.3f}")
    finally:
        for name in made:
            for c in CONTROLLERS:
                try:
                    os.rmdir(f"{base[c]}/{name}")
                except FileNotFoundError:
                    pass
        for c in CONTROLLERS:
            os.rmdir(base[c])


if __name__ == "__main__":
    main()
