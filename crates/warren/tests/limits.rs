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
    assert_cpu_share_held(&isolation(), 0.5, || {
        let out = sh_ok(&["--cpus", "0.5"], &format!("python3 -c '{CPU_SPIN}'"));
        out.trim().parse().unwrap()
    });
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
