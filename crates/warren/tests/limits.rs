//! Limits, enforced by the kernel and seen from inside. Needs root.

mod common;

use common::*;

#[test]
fn memory_past_the_limit_is_oom_killed_and_reported() {
    if !can_run("memory_past_the_limit_is_oom_killed_and_reported") {
        return;
    }
    let o = warren()
        .args(["run", "--rm", "--memory", "64M", "--", "python3", "-c"])
        .arg("b = bytearray(256 << 20); print('allocated')")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(137), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("out of memory"),
        "stderr: {}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("allocated"));
    // The host and other sandboxes go on.
    assert_eq!(sh_ok(&[], "echo fine").trim(), "fine");
}

#[test]
fn memory_below_the_limit_is_fine() {
    if !can_run("memory_below_the_limit_is_fine") {
        return;
    }
    let out = sh_ok(
        &["--memory", "256M"],
        "python3 -c \"b = bytearray(64 << 20); b[-1] = 1; print('ok')\"",
    );
    assert_eq!(out.trim(), "ok");
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_sandbox_stays_usable() {
    if !can_run("a_fork_bomb_stops_at_the_pids_limit_and_the_sandbox_stays_usable") {
        return;
    }
    let script = r#"
import os, signal, time
kids = []
try:
    for _ in range(10000):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        kids.append(pid)
except OSError as e:
    print("stopped", len(kids), e.errno)
for k in kids:
    os.kill(k, signal.SIGKILL)
for k in kids:
    os.waitpid(k, 0)
print("usable", os.fork() and "yes")
"#;
    let o = warren()
        .args(["run", "--rm", "--pids", "32", "--", "python3", "-c", script])
        .output()
        .unwrap();
    let out = stdout(&o);
    if isolation() == "gvisor" {
        // gVisor's task limit is a cap on its host tasks (SECURITY.md, A32): past it the
        // whole sandbox stops, and says so.
        assert_eq!(o.status.code(), Some(137), "{out}");
        assert!(stderr(&o).contains("too many tasks"), "{}", stderr(&o));
        return;
    }
    let stopped: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("stopped"))
        .unwrap_or_else(|| panic!("fork never failed: {out} {}", stderr(&o)))
        .split_whitespace()
        .collect();
    let n: u32 = stopped[1].parse().unwrap();
    assert!(n < 32, "forked {n} children under --pids 32");
    assert_eq!(stopped[2], "11", "fork fails with EAGAIN");
    assert!(out.contains("usable yes"), "{out}");
}

#[test]
fn cpu_quota_holds_a_busy_loop_to_its_share() {
    if !can_run("cpu_quota_holds_a_busy_loop_to_its_share") {
        return;
    }
    // Two busy threads against a quota of half a core, for 2 s of wall time.
    let script = r#"
import threading, time
def spin(stop):
    while time.monotonic() < stop:
        pass
stop = time.monotonic() + 2.0
t0, c0 = time.monotonic(), time.process_time()
ts = [threading.Thread(target=spin, args=(stop,)) for _ in range(2)]
[t.start() for t in ts]; [t.join() for t in ts]
print((time.process_time() - c0) / (time.monotonic() - t0))
"#;
    // gVisor's kernel counts its processes' CPU time by its own clock, which runs on
    // while the host holds the Sentry back: the quota is the host's, the figure is
    // gVisor's, and they agree only roughly (0.55-0.65 here for 0.5).
    let slack = if isolation() == "gvisor" { 0.5 } else { 0.15 };
    let within = 0.5 * (1.0 - slack)..=0.5 * (1.0 + slack);
    // A shared host's clocks are noisy (a hypervisor's stolen time, other tests'
    // memory pressure): one figure in three within the slack shows the quota holds,
    // while a quota not applied is above it every time (about 1.9 for two threads).
    let mut shares = Vec::new();
    for _ in 0..3 {
        let out = sh_ok(&["--cpus", "0.5"], &format!("python3 -c '{script}'"));
        let share: f64 = out.trim().parse().unwrap();
        println!("CPU share under --cpus 0.5: {share:.3}");
        shares.push(share);
        if within.contains(&share) {
            return;
        }
    }
    // On a host busier than its cores the sandbox may get less than its share, which
    // says nothing of the quota: what it must never get is more.
    let (load, cores) = host_load();
    if load >= cores && shares.iter().all(|s| s < within.start()) {
        println!(
            "the host is loaded ({load:.1} on {cores:.0} cores): no share above the quota, \
             the lower bound not held against it"
        );
        return;
    }
    panic!(
        "CPU shares {shares:.3?} under --cpus 0.5: none within {:.0} % of 0.5 (host load \
         {load:.1} on {cores:.0} cores)",
        slack * 100.0
    );
}

/// The host's one-minute load average and its number of cores.
fn host_load() -> (f64, f64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (load, cores as f64)
}

#[test]
fn writes_past_the_disk_limit_get_enospc() {
    if !can_run("writes_past_the_disk_limit_get_enospc") {
        return;
    }
    let o = sh(
        &["--disk", "64M"],
        "dd if=/dev/zero of=/tmp/fill bs=1M count=128 2>&1; echo rc=$?",
    );
    let out = stdout(&o);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("rc=1"), "{out}");
}

#[test]
fn a_sized_volume_is_bounded_too() {
    if !can_run("a_sized_volume_is_bounded_too") {
        return;
    }
    let name = format!("lim-vol-{}", std::process::id());
    let o = sh(
        &["--volume", &format!("{name}:/data:32M")],
        "dd if=/dev/zero of=/data/fill bs=1M count=64 2>&1; echo rc=$?",
    );
    let out = stdout(&o);
    assert!(
        out.contains("No space left on device"),
        "{out} {}",
        stderr(&o)
    );
    std::fs::remove_dir_all(test_root().join("data/volumes").join(&name)).unwrap();
}

#[test]
fn impossible_limits_are_refused_with_a_clear_error() {
    if !can_run("impossible_limits_are_refused_with_a_clear_error") {
        return;
    }
    for (flags, needle) in [
        (vec!["--cpus", "64"], "cores"),
        (vec!["--memory", "1k"], "memory"),
        (vec!["--pids", "0"], "--pids"),
        (vec!["--disk", "1M"], "16M"),
        (vec!["--template", "nope"], "unknown template"),
        (vec!["--memory", "lots"], "not a size"),
    ] {
        let o = warren()
            .arg("run")
            .arg("--rm")
            .args(&flags)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flags:?} was accepted");
        let err = stderr(&o);
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flags:?}: one line: {err}");
    }
}
