//! Nothing is left behind: after --rm, after the command is killed, and after the CLI
//! itself is SIGKILLed mid-run. Needs root.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

fn sandboxes() -> BTreeSet<String> {
    std::fs::read_dir(test_root().join("run/sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Host objects of sandbox `id` still present.
fn remains(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let run = test_root().join("run/sandboxes").join(id);
    if run.exists() {
        out.push(run.display().to_string());
    }
    for ctrl in ["memory", "pids", "cpu", "freezer", "cpuacct", "unified", ""] {
        let base = PathBuf::from("/sys/fs/cgroup").join(ctrl);
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for line in own.lines() {
            let mut p = line.splitn(3, ':');
            let (_, c, path) = (p.next(), p.next().unwrap_or(""), p.next().unwrap_or(""));
            if c.split(',').any(|x| x == ctrl) || (ctrl.is_empty() && c.is_empty()) {
                let cg = base
                    .join(path.trim_start_matches('/'))
                    .join(format!("warren-{id}"));
                if cg.exists() {
                    out.push(cg.display().to_string());
                }
            }
        }
    }
    out
}

fn wait_gone(id: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = remains(id);
        if r.is_empty() || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `warren run --rm -- <args>` and returns it with its sandbox id once it exists.
// The caller waits for the child it is handed.
#[allow(clippy::zombie_processes)]
fn start(args: &[&str]) -> (std::process::Child, String) {
    let before = sandboxes();
    let mut child = warren()
        .args(["run", "--rm", "--"])
        .args(args)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for id in sandboxes().difference(&before) {
            // Ours is the one whose helper is our child's child.
            let pid = std::fs::read_to_string(
                test_root()
                    .join("run/sandboxes")
                    .join(id)
                    .join("helper.pid"),
            )
            .unwrap_or_default();
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1));
            if ppid == Some(&child.id().to_string()) {
                return (child, id.clone());
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sandbox never appeared");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn rm_leaves_nothing() {
    if !can_run("rm_leaves_nothing") {
        return;
    }
    let (child, id) = start(&["sh", "-c", "sleep 0.5; touch /tmp/x"]);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(wait_gone(&id), Vec::<String>::new());
    assert!(
        !test_root().join("data/sandboxes").join(&id).exists(),
        "writable layer kept"
    );
}

#[test]
fn a_killed_command_leaves_nothing() {
    if !can_run("a_killed_command_leaves_nothing") {
        return;
    }
    let (child, id) = start(&["sh", "-c", "sleep 0.5; kill -9 $$"]);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(137));
    assert_eq!(wait_gone(&id), Vec::<String>::new());
}

#[test]
fn a_sigkilled_cli_leaves_nothing() {
    if !can_run("a_sigkilled_cli_leaves_nothing") {
        return;
    }
    let (mut child, id) = start(&["sh", "-c", "sleep 100 & sleep 100"]);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(wait_gone(&id), Vec::<String>::new());
    assert!(
        !test_root().join("data/sandboxes").join(&id).exists(),
        "writable layer kept"
    );
}

#[test]
fn doctor_finds_a_planted_leftover_and_is_clean_otherwise() {
    if !can_run("doctor_finds_a_planted_leftover_and_is_clean_otherwise") {
        return;
    }
    let fake = test_root().join("run/sandboxes/doctor-test-planted");
    std::fs::create_dir_all(&fake).unwrap();
    let o = warren().arg("doctor").output().unwrap();
    std::fs::remove_dir_all(&fake).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("doctor-test-planted"), "{}", stdout(&o));
}

/// `warren run --isolation gvisor` SIGKILLed mid-run: its sandbox (a runsc container,
/// not a child of the CLI) goes too, by the watchdog the CLI left.
#[test]
fn a_sigkilled_cli_leaves_no_gvisor_sandbox() {
    sigkilled_cli_leaves_no_oci_sandbox(
        "a_sigkilled_cli_leaves_no_gvisor_sandbox",
        "gvisor",
        "runsc",
    );
}

/// The same with runc and crun, whose containers are children of their keeper.
#[test]
fn a_sigkilled_cli_leaves_no_runc_or_crun_sandbox() {
    for runtime in ["runc", "crun"] {
        sigkilled_cli_leaves_no_oci_sandbox(
            &format!("a_sigkilled_cli_leaves_no_runc_or_crun_sandbox ({runtime})"),
            runtime,
            runtime,
        );
    }
}

fn sigkilled_cli_leaves_no_oci_sandbox(test: &str, isolation: &str, runtime: &str) {
    if !can_run(test) {
        return;
    }
    let here = std::process::Command::new(runtime)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !here {
        warren_testkit::skip(test, &format!("{runtime} is not installed"));
        return;
    }
    let before = sandboxes();
    let mut child = warren()
        .args([
            "run",
            "--rm",
            "--isolation",
            isolation,
            "--",
            "sleep",
            "100",
        ])
        .spawn()
        .unwrap();
    // Its run directory has a bundle; it runs once its pid is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let now = sandboxes();
        let mine = now.difference(&before).find(|id| {
            let run = test_root().join("run/sandboxes").join(id);
            run.join("bundle").exists() && run.join("helper.pid").exists()
        });
        if let Some(id) = mine {
            break id.clone();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the {isolation} sandbox never appeared");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let data = test_root().join("data/sandboxes").join(&id);
    // The watchdog removes the run directory, then the writable layer.
    while (!remains(&id).is_empty() || data.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(remains(&id), Vec::<String>::new(), "{isolation}");
    assert!(
        !test_root().join("data/sandboxes").join(&id).exists(),
        "{isolation}: writable layer kept"
    );
    let listed = std::process::Command::new(runtime)
        .arg(format!(
            "--root={}",
            test_root().join("run").join(runtime).display()
        ))
        .arg("list")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(&id),
        "{runtime} still lists it"
    );
}
