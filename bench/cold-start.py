#!/usr/bin/env python3
"""Cold start of one `true` in a fresh sandbox: warren against its peers.

Each round runs every tool once, in a fixed order; rounds repeat (--rounds, default
50; --quick, 15) after warm-up rounds that are thrown away. Every figure is the wall
time the harness sees from spawning the tool to reaping it, so every row, baselines
included, pays the same fork+exec and pipe cost of this Python process.

The whole harness re-executes itself in a private mount namespace and unmounts the
empty cgroup2 at /sys/fs/cgroup/unified there: crun refuses that "hybrid" layout
("cgroups in hybrid mode not supported"), and running every tool in the same namespace
keeps the comparison fair. The host's mount table is never touched.

Python 3 standard library only. Needs root. See bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS_ENV = "COLDSTART_PRIVATE_NS"
UNIFIED = "/sys/fs/cgroup/unified"
STAND_IN = ("cgroup2 unmounted in the harness's private mount namespace, "
            "a private tmpfs in its place")
RUN_TIMEOUT_S = 60
# Warren's mapping (warren-runtime HOST_ID_BASE, ID_COUNT): root inside is host uid 100000.
HOST_ID_BASE = 100_000
ID_COUNT = 65_536

# What the peers make on the host despite --root/--runroot/--tmpdir: `crun --version` and
# `crun spec` make /run/crun; podman makes netavark's config and run dirs, the blob-info
# cache, libpod's run dir, runc's default root and a libpod_parent cgroup. Each is removed
# at the end if it did not exist when the harness started.
HOST_PATHS = ["/run/crun", "/etc/containers/networks", "/run/containers", "/run/libpod",
              "/run/runc", "/var/lib/containers"]
PODMAN_CGROUP = "libpod_parent"

# Debian package that provides each peer.
PACKAGES = {"bwrap": "bubblewrap", "crun": "crun", "runc": "runc", "podman": "podman"}

WARREN_NS = "user (root -> host uid 100000), mount, pid, uts, ipc, net; cgroups v1"


def log(msg=""):
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        # The reader went away (| head): keep going, so cleanup still runs to the end.
        sys.stdout = open(os.devnull, "w")


def skipped(tool, reason):
    log(f"SKIPPED: {tool}: {reason}")


# ---------------------------------------------------------------------------
# Environment: private mount namespace, installs, machine facts


def reexec_in_private_ns():
    """Re-runs this script in a private mount namespace, so the cgroup2 unmount is ours."""
    unshare = shutil.which("unshare")
    if unshare is None:
        log("cold-start: unshare(1) not found; running in the host mount namespace")
        return
    env = dict(os.environ, **{NS_ENV: "1"})
    argv = [unshare, "--mount", "--propagation", "private", "--",
            sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    os.execve(unshare, argv, env)


def unescape_mount(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(pid="self"):
    """(mount point, fs type) of every mount in the namespace of `pid`."""
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                parts = line.split()
                sep = parts.index("-")
                out.append((unescape_mount(parts[4]), parts[sep + 1]))
    except (OSError, ValueError):
        pass
    return out


def drop_unified():
    """Unmounts the empty cgroup2 in this (private) namespace; returns what was done."""
    if (UNIFIED, "cgroup2") not in mounts():
        return "not mounted"
    if os.environ.get(NS_ENV) != "1":
        return "left mounted (not in a private mount namespace)"
    r = subprocess.run(["umount", UNIFIED], capture_output=True, text=True)
    if r.returncode != 0:
        return f"umount failed: {r.stderr.strip()}"
    # crun still sees the process's "0::/" line in /proc/self/cgroup and writes
    # <id>/cgroup.procs under /sys/fs/cgroup/unified, which never removes. Without this
    # tmpfs those files would land in the host's /sys/fs/cgroup tmpfs, hidden under the
    # host's cgroup2 mount; on it they vanish with this namespace. (Read-only, crun fails.)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=755", "coldstart-unified",
                        UNIFIED], capture_output=True, text=True)
    if r.returncode != 0:
        return f"unmounted, but no stand-in tmpfs: {r.stderr.strip()}"
    return STAND_IN


def install_missing(tools, no_install):
    want = []
    for t in tools:
        if t in PACKAGES and shutil.which(t) is None:
            want.append(PACKAGES[t])
    if "podman" in tools and not os.path.exists("/bin/busybox"):
        want.append("busybox-static")
    if not want:
        return
    if no_install:
        log(f"cold-start: not installing {' '.join(want)} (--no-install)")
        return
    log(f"cold-start: installing {' '.join(want)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(["apt-get", "install", "-y", "-qq", *want], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log(f"cold-start: apt-get install failed: {r.stderr.strip()[-300:]}")


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def git(*args):
    try:
        r = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def newest_source():
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, "crates")):
        dirnames[:] = [d for d in dirnames if d != "target"]
        for f in filenames:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, f)).st_mtime)
            except OSError:
                pass
    return newest


def machine_facts():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        debian = None
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "debian": debian,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------
# Peers: the OCI bundle for crun and runc, the podman image


def build_bundle(runtime, tmp, userns):
    """An OCI bundle (made by `<runtime> spec`, then edited) whose rootfs is the host's /usr."""
    bundle = os.path.join(tmp, f"bundle-{runtime}")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    for d in ("usr", "proc", "dev", "sys", "tmp"):
        os.mkdir(os.path.join(rootfs, d))
    # The top-level symlinks of a merged-usr host (Debian 12), copied as they are.
    for name in sorted(os.listdir("/")):
        p = os.path.join("/", name)
        if os.path.islink(p) and os.readlink(p).startswith("usr/"):
            os.symlink(os.readlink(p), os.path.join(rootfs, name))
    os.chmod(bundle, 0o755)
    os.chmod(rootfs, 0o755)
    r = subprocess.run([runtime, "spec"], cwd=bundle, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{runtime} spec: {r.stderr.strip()}")
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["args"] = ["true"]
    spec["process"]["terminal"] = False
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                           "options": ["rbind", "ro", "nosuid", "nodev"]})
    spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777"]})
    linux = spec["linux"]
    # No cgroupsPath: each runtime then makes one cgroup per controller named after the
    # container id, which the end-of-run check looks for.
    linux.pop("cgroupsPath", None)
    if userns:
        linux["namespaces"].append({"type": "user"})
        m = [{"containerID": 0, "hostID": HOST_ID_BASE, "size": ID_COUNT}]
        linux["uidMappings"] = m
        linux["gidMappings"] = m
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
    # The same container running `false`, for the probe: <bundle>-false shares the rootfs.
    spec["process"]["args"] = ["false"]
    os.mkdir(f"{bundle}-false")
    with open(os.path.join(f"{bundle}-false", "config.json"), "w") as f:
        json.dump(spec, f, indent=1)
    names = [n["type"] for n in linux["namespaces"]]
    desc = ", ".join(("user (root -> host uid 100000)" if n == "user" else n) for n in names)
    if not userns:
        desc += " (no user namespace)"
    return bundle, desc + "; cgroups v1, readonly root, /usr bind ro, seccomp+caps default"


def build_podman_image(tmp, podman_global, tag):
    """Imports a busybox-static rootfs: podman cannot pull here."""
    busybox = "/bin/busybox"
    if not os.path.exists(busybox):
        raise RuntimeError("no /bin/busybox to build an image from (apt-get install busybox-static)")
    tarball = os.path.join(tmp, "podman-rootfs.tar")
    with tarfile.open(tarball, "w") as tar:
        for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("true", "false", "sh"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(ti)
    r = subprocess.run([*podman_global, "import", tarball, tag], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"podman import: {r.stderr.strip()[-300:]}")


# ---------------------------------------------------------------------------
# Scenarios


class Scenario:
    def __init__(self, name, argv_for, desc, env=None):
        self.name = name
        self.argv_for = argv_for  # (index, "true"|"false") -> argv; ids unique per run
        self.desc = desc
        self.env = env
        self.samples = []
        self.failures = []


def run_once(sc, i, cmd="true"):
    """Runs one cold start; returns (ms, None) or (ms, error text)."""
    argv = sc.argv_for(i, cmd)
    t0 = time.perf_counter_ns()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=sc.env, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return (time.perf_counter_ns() - t0) / 1e6, f"timed out after {RUN_TIMEOUT_S}s"
    except OSError as e:
        return 0.0, str(e)
    ms = (time.perf_counter_ns() - t0) / 1e6
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        return ms, f"exit {r.returncode}: {err[-1] if err else '(no stderr)'}"
    return ms, None


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if not s:
        return None
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs):
    if not xs:
        return {"n": 0, "median_ms": None, "p90_ms": None, "min_ms": None, "max_ms": None}
    return {"n": len(xs), "median_ms": statistics.median(xs), "p90_ms": percentile(xs, 0.9),
            "min_ms": min(xs), "max_ms": max(xs)}


# ---------------------------------------------------------------------------
# Cleanup: nothing of a container may outlive the harness


def cgroup_dirs_named(prefix):
    found = []
    for hier in sorted(os.listdir("/sys/fs/cgroup")):
        root = os.path.join("/sys/fs/cgroup", hier)
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for dirpath, dirnames, _ in os.walk(root):
            for d in dirnames:
                if d.startswith(prefix):
                    found.append(os.path.join(dirpath, d))
    return found


def mounts_under(path):
    path = os.path.realpath(path)
    seen = set()
    for pid in ("self", "1"):
        for mp, _ in mounts(pid):
            if mp == path or mp.startswith(path + "/"):
                seen.add((pid, mp))
    return sorted(seen)


def rmtree_same_fs(top):
    """rm -rf that never crosses into another file system (a leaked bind of /usr!)."""
    dev = os.lstat(top).st_dev
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_dev == dev:
                os.unlink(p)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p) and os.lstat(p).st_dev == dev:
                try:
                    os.rmdir(p)
                except OSError:
                    pass
    os.rmdir(top)


def host_state():
    """Which of the peers' host paths exist now (those from before are left alone)."""
    cgroups = [os.path.join("/sys/fs/cgroup", h, PODMAN_CGROUP)
               for h in sorted(os.listdir("/sys/fs/cgroup"))]
    return {p for p in HOST_PATHS + cgroups if os.path.lexists(p)}


def remove_cgroup_tree(top):
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        os.rmdir(dirpath)


def cleanup(tmp, id_prefix, runtimes, podman_global, podman_tag, host_before, notes):
    """Removes and then checks for state dirs, containers, cgroups and mounts."""
    problems = []
    for rt, state in runtimes:
        if not os.path.isdir(state):
            continue
        for cid in os.listdir(state):
            problems.append(f"{rt} container state left: {cid}")
            subprocess.run([rt, "--root", state, "delete", "--force", cid],
                           capture_output=True)
    if podman_global:
        r = subprocess.run([*podman_global, "ps", "-aq"], capture_output=True, text=True)
        for cid in r.stdout.split():
            problems.append(f"podman container left: {cid}")
            subprocess.run([*podman_global, "rm", "-f", cid], capture_output=True)
        subprocess.run([*podman_global, "rmi", "-f", podman_tag], capture_output=True)
    cgroups = 0
    for p in sorted(host_state() - host_before):
        if p.startswith(UNIFIED + "/"):
            continue  # on the stand-in tmpfs
        try:
            if p.startswith("/sys/fs/cgroup/"):
                remove_cgroup_tree(p)
                cgroups += 1
                continue
            if mounts_under(p):
                problems.append(f"mounts left under {p}: {mounts_under(p)}")
                continue
            if os.path.isdir(p) and not os.path.islink(p):
                rmtree_same_fs(p)
            else:
                os.unlink(p)
            notes.append(f"removed {p} (a peer made it outside its --root)")
        except OSError as e:
            problems.append(f"could not remove {p}: {e}")
    if cgroups:
        notes.append(f"removed podman's {PODMAN_CGROUP} cgroup in {cgroups} hierarchies")
    for d in cgroup_dirs_named(id_prefix):
        if d.startswith(UNIFIED + "/") and (UNIFIED, "tmpfs") in mounts():
            continue  # crun's strays on the stand-in tmpfs: gone with this namespace
        problems.append(f"cgroup left: {d}")
        try:
            os.rmdir(d)
        except OSError as e:
            problems.append(f"cgroup could not be removed: {d}: {e}")
    for pid, mp in reversed(mounts_under(tmp)):
        if pid == "self":
            # podman's own overlay/shm mounts of its private storage live here until it
            # is reset; anything else is a leak.
            subprocess.run(["umount", "-l", mp], capture_output=True)
        else:
            problems.append(f"mount left in the host namespace: {mp}")
    left = mounts_under(tmp)
    if left:
        problems.append(f"not removing {tmp}: still mounted: {[m for _, m in left]}")
    else:
        try:
            rmtree_same_fs(tmp)
        except OSError as e:
            problems.append(f"could not remove {tmp}: {e}")
    return problems


# ---------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(
        description="Cold start of `true` in a fresh sandbox: warren vs bwrap, crun, runc.")
    p.add_argument("--rounds", type=int, default=50, help="timed rounds (default 50)")
    p.add_argument("--quick", action="store_true", help="15 rounds")
    p.add_argument("--warmup", type=int, default=3, help="discarded rounds (default 3)")
    p.add_argument("--warren", default=os.path.join(REPO, "target/release/warren"),
                   help="warren binary (default: target/release/warren of this repo)")
    p.add_argument("--default-dirs", action="store_true",
                   help="run warren with its default /run/warren and /var/lib/warren")
    p.add_argument("--with-podman", action="store_true",
                   help="also time podman (runc, busybox image imported locally; slow)")
    p.add_argument("--no-oci-userns", action="store_true",
                   help="crun/runc without a user namespace")
    p.add_argument("--tools", help="comma-separated subset, e.g. fork-exec,bwrap,warren")
    p.add_argument("--no-install", action="store_true", help="never apt-get install peers")
    p.add_argument("--no-private-ns", action="store_true",
                   help="stay in the caller's mount namespace (crun is then usually skipped)")
    p.add_argument("--json", metavar="PATH", help="write every figure and sample here")
    a = p.parse_args()
    if a.quick:
        a.rounds = 15
    if a.rounds < 1 or a.warmup < 0:
        p.error("--rounds must be >= 1 and --warmup >= 0")
    return a


ALL_TOOLS = ["fork-exec", "unshare", "bwrap", "crun", "runc", "podman", "warren"]


def main():
    args = parse_args()
    if os.geteuid() != 0:
        log("cold-start: needs root (crun/runc as root, warren's cgroups)")
        return 3
    if not args.no_private_ns and os.environ.get(NS_ENV) != "1":
        reexec_in_private_ns()

    tools = ALL_TOOLS if not args.tools else [t.strip() for t in args.tools.split(",")]
    unknown = [t for t in tools if t not in ALL_TOOLS]
    if unknown:
        log(f"cold-start: unknown tool(s) {unknown}; known: {ALL_TOOLS}")
        return 3
    if "podman" in tools and not args.with_podman:
        if args.tools:
            log("cold-start: podman is only timed with --with-podman")
        tools = [t for t in tools if t != "podman"]

    install_missing(tools, args.no_install)
    host_before = host_state()
    unified = drop_unified()

    tmp = tempfile.mkdtemp(prefix="coldstart-")
    os.chmod(tmp, 0o755)  # crun/runc's mapped root must reach the bundle
    id_prefix = f"cs{os.getpid()}-"
    skip = {}
    scenarios = []
    runtimes = []
    podman_global = None
    podman_tag = f"localhost/coldstart-bench:{os.getpid()}"
    notes = []
    warren_env = None
    warren = os.path.abspath(args.warren)
    oci_userns = not args.no_oci_userns
    doctor = None
    problems = []

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)

    try:
        for t in tools:
            if t == "fork-exec":
                scenarios.append(Scenario(t, lambda i, c: [f"/bin/{c}"],
                                          "baseline: fork+exec of /bin/true, no namespace"))
            elif t == "unshare":
                if shutil.which("unshare") is None:
                    skip[t] = "unshare(1) not found"
                    continue
                scenarios.append(Scenario(
                    t, lambda i, c: ["unshare", "-U", "-r", "-m", "-p", "-f", "-u", "-i", "-n",
                                     "--mount-proc", c],
                    "baseline: user (root -> host root, 1 id), mount, pid, uts, ipc, net; "
                    "/proc remounted; no rootfs, no cgroup"))
            elif t == "bwrap":
                if shutil.which("bwrap") is None:
                    skip[t] = "bwrap not installed (apt-get install bubblewrap)"
                    continue
                argv = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent",
                        "--ro-bind", "/usr", "/usr"]
                for name in sorted(os.listdir("/")):
                    p = os.path.join("/", name)
                    if os.path.islink(p) and os.readlink(p).startswith("usr/"):
                        argv += ["--symlink", os.readlink(p), "/" + name]
                argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
                scenarios.append(Scenario(
                    t, lambda i, c, argv=argv: [*argv, c],
                    "user (root -> host root, 1 id), mount, pid, uts, ipc, net, cgroup; "
                    "/usr ro bind, /proc, /dev, /tmp tmpfs; no cgroup made"))
            elif t in ("crun", "runc"):
                if shutil.which(t) is None:
                    skip[t] = f"{t} not installed (apt-get install {t})"
                    continue
                try:
                    bundle, desc = build_bundle(t, tmp, oci_userns)
                except (OSError, RuntimeError, KeyError, ValueError) as e:
                    skip[t] = f"could not build the OCI bundle: {e}"
                    continue
                state = os.path.join(tmp, f"{t}-state")
                runtimes.append((t, state))
                scenarios.append(Scenario(
                    t, lambda i, c, t=t, state=state, bundle=bundle:
                        [t, "--root", state, "run", "--bundle",
                         bundle if c == "true" else f"{bundle}-false", f"{id_prefix}{t}-{i}"],
                    desc))
            elif t == "podman":
                if shutil.which("podman") is None:
                    skip[t] = "podman not installed (apt-get install podman)"
                    continue
                if shutil.which("runc") is None:
                    skip[t] = "podman needs runc here, which is not installed"
                    continue
                pd = os.path.join(tmp, "podman")
                podman_global = ["podman", "--root", f"{pd}/root", "--runroot", f"{pd}/run",
                                 "--tmpdir", f"{pd}/tmp", "--storage-driver", "overlay",
                                 "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                                 "--runtime", "runc"]
                try:
                    build_podman_image(tmp, podman_global, podman_tag)
                except (OSError, RuntimeError) as e:
                    skip[t] = str(e)
                    continue
                argv = [*podman_global, "run", "--rm", "--network", "none",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                        podman_tag]
                scenarios.append(Scenario(
                    t, lambda i, c, argv=argv: [*argv, c],
                    "podman run --rm via runc: mount, pid, uts, ipc, net (none), no user "
                    "namespace; busybox image, private storage in the temp dir"))
            elif t == "warren":
                if not os.access(warren, os.X_OK):
                    skip[t] = (f"no binary at {warren} "
                               "(build it: cargo build --release -p warren)")
                    continue
                warren_env = dict(os.environ)
                if not args.default_dirs:
                    warren_env["WARREN_RUN_DIR"] = os.path.join(tmp, "warren-run")
                    warren_env["WARREN_DATA_DIR"] = os.path.join(tmp, "warren-data")
                scenarios.append(Scenario(
                    t, lambda i, c: [warren, "run", "--rm", "--", c],
                    f"warren run --rm: {WARREN_NS}; host template (overlay over host /usr), "
                    "agent as PID 1", env=warren_env))

        # Probe: every tool must run `true` to exit 0, and `false` to fail (a stub that
        # runs nothing and exits 0 must not be timed), before it is timed.
        for sc in list(scenarios):
            _, err = run_once(sc, 0)
            if err:
                skip[sc.name] = f"probe: `true` failed: {err}"
                scenarios.remove(sc)
                continue
            _, err = run_once(sc, -1, "false")
            if err is None:
                skip[sc.name] = "probe: `false` exited 0, so the command did not really run"
                scenarios.remove(sc)

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
        facts = machine_facts()
        versions = {
            "warren": first_line([warren, "--version"]) if os.access(warren, os.X_OK) else None,
            "bwrap": first_line(["bwrap", "--version"]),
            "crun": first_line(["crun", "--version"]),
            "runc": first_line(["runc", "--version"]),
            "podman": first_line(["podman", "--version"]) if args.with_podman else None,
            "unshare": first_line(["unshare", "--version"]),
        }
        log(f"cold start of `true` | commit {commit}{' (dirty tree)' if dirty else ''} | "
            f"{facts['nproc']} cpus, kernel {facts['kernel']}, "
            f"load {facts['loadavg_at_start'][0]:.2f} | "
            f"{args.rounds} rounds + {args.warmup} warm-up, interleaved")
        log(f"private mount namespace: {os.environ.get(NS_ENV) == '1'}; "
            f"{UNIFIED}: {unified}")
        if facts["loadavg_at_start"][0] > 0.25 * (facts["nproc"] or 1):
            log(f"WARNING: load average {facts['loadavg_at_start'][0]:.2f} on "
                f"{facts['nproc']} cpus: something else is running, figures will be noisy")
        if warren_env is not None:
            built = os.stat(warren).st_mtime
            facts["warren_binary_mtime"] = datetime.datetime.fromtimestamp(
                built, datetime.timezone.utc).isoformat()
            if newest_source() > built:
                log(f"NOTE: {warren} is older than the newest file under crates/: "
                    "the commit above may not be the code that ran (rebuild)")
        if warren_env is not None and not args.default_dirs:
            log(f"warren dirs: WARREN_RUN_DIR/WARREN_DATA_DIR under {tmp}")
        for name in tools:
            if name in skip:
                skipped(name, skip[name])
        for sc in scenarios:
            log(f"  {sc.name:<10} {sc.desc}")
        log()

        total = args.warmup + args.rounds
        started = time.monotonic()
        for r in range(total):
            for sc in scenarios:
                ms, err = run_once(sc, r + 1)
                if r < args.warmup:
                    if err:
                        sc.failures.append({"round": r, "warmup": True, "error": err})
                    continue
                if err:
                    sc.failures.append({"round": r, "warmup": False, "error": err})
                else:
                    sc.samples.append(ms)
        elapsed = time.monotonic() - started

        # Table.
        stats = {sc.name: summary(sc.samples) for sc in scenarios}
        wmed = stats.get("warren", {}).get("median_ms")
        hdr = (f"{'tool':<10} {'median ms':>10} {'p90':>9} {'min':>9} {'max':>9} "
               f"{'n':>4} {'warren/peer':>12}")
        log(hdr)
        log("-" * len(hdr))
        for sc in scenarios:
            s = stats[sc.name]
            ratio = None
            if wmed is not None and s["median_ms"]:
                ratio = wmed / s["median_ms"]
            s["warren_over_peer"] = ratio
            if s["n"] == 0:
                log(f"{sc.name:<10} {'-':>10} {'-':>9} {'-':>9} {'-':>9} {0:>4} {'-':>12}")
                continue
            log(f"{sc.name:<10} {s['median_ms']:>10.2f} {s['p90_ms']:>9.2f} "
                f"{s['min_ms']:>9.2f} {s['max_ms']:>9.2f} {s['n']:>4} "
                f"{(f'{ratio:.2f}' if ratio is not None else '-'):>12}")
        log(f"({elapsed:.1f} s; wall time per cold start as seen by the harness; "
            "p90 by linear interpolation)")
        fails = [(sc.name, f) for sc in scenarios for f in sc.failures]
        for name, f in fails[:20]:
            log(f"FAILED: {name} round {f['round']}{' (warm-up)' if f['warmup'] else ''}: "
                f"{f['error']}")
        if len(fails) > 20:
            log(f"... and {len(fails) - 20} more failures")

        # warren doctor, with the same directories.
        if warren_env is not None:
            r = subprocess.run([warren, "doctor"], env=warren_env, capture_output=True, text=True,
                               timeout=60)
            verdict = (r.stdout.strip() + ("\n" + r.stderr.strip() if r.stderr.strip() else ""))
            doctor = {"exit": r.returncode, "output": verdict}
            log()
            log(f"warren doctor (exit {r.returncode}):")
            for line in verdict.splitlines() or ["(no output)"]:
                log(f"  {line}")
    except KeyboardInterrupt:
        log("cold-start: interrupted; cleaning up")
        problems.append("interrupted")
        commit = dirty = facts = versions = None
        stats, elapsed = {}, None
    finally:
        problems += cleanup(tmp, id_prefix, runtimes, podman_global, podman_tag,
                            host_before, notes)

    leftovers = [p for p in problems if p != "interrupted"]
    log()
    for n in notes:
        log(f"cleanup: {n}")
    if leftovers:
        for p in leftovers:
            log(f"LEFTOVER: {p}")
    else:
        log("cleanup: no container state, cgroup or mount of the peers left; temp dir removed")

    if args.json and "interrupted" not in problems:
        out = {
            "schema": 1,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "commit": commit,
            "dirty": dirty,
            "machine": facts,
            "versions": versions,
            "config": {"rounds": args.rounds, "warmup": args.warmup, "order": tools,
                       "private_mount_ns": os.environ.get(NS_ENV) == "1",
                       "cgroup2_unified": unified, "oci_userns": oci_userns,
                       "warren": warren, "warren_default_dirs": args.default_dirs,
                       "elapsed_s": elapsed},
            "tools": {sc.name: {"argv": sc.argv_for(1, "true"), "namespaces": sc.desc,
                                **stats.get(sc.name, {}), "samples_ms": sc.samples,
                                "failures": sc.failures} for sc in scenarios},
            "skipped": skip,
            "doctor": doctor,
            "leftovers": leftovers,
            "cleanup_notes": notes,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        log(f"wrote {args.json}")

    if "interrupted" in problems:
        return 130
    if leftovers or (doctor is not None and doctor["exit"] != 0):
        return 1
    if any(sc.failures for sc in scenarios):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
