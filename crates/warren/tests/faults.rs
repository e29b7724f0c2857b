//! Faults: the daemon SIGKILLed at random points of create, exec, snapshot and delete;
//! a sandbox's PID 1 SIGKILLed; the data directory's filesystem full; the store file
//! corrupt or truncated. After each, every sandbox is either fully there or fully gone,
//! and the store is intact or refused, never silently replaced. Needs root.
//!
//! The number of daemon-kill trials is WARREN_TRUST_FAULT_TRIALS (default 52, 13 per
//! operation); the random delays come from a seed the test prints (WARREN_TRUST_SEED
//! repeats a run).

mod common;
mod trust;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::can_run;
use trust::{my_turn, stderr, stdout, Daemon, Rng, Via};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Sandboxes the store lists for tenant `default`, with their states.
fn listed(d: &Daemon) -> Vec<(String, String)> {
    let r = d.http(Via::Unix, "GET", "/v1/sandboxes", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Sandbox run directories present on disk.
fn run_dirs(d: &Daemon) -> BTreeSet<String> {
    std::fs::read_dir(d.run_dir().join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Host processes whose cgroup names sandbox `id`.
fn processes_of(id: &str) -> Vec<String> {
    let needle = format!("warren-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup"))
                .map(|c| c.contains(&needle))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The invariant after a restart: each sandbox the store knows is running and answers,
/// and nothing exists on the host for a sandbox it does not list as live. An interrupted
/// operation has happened wholly or not at all.
fn all_or_nothing(d: &Daemon, context: &str) -> Vec<String> {
    let live = listed(d);
    let ids: BTreeSet<String> = live.iter().map(|(id, _)| id.clone()).collect();
    for (id, state) in &live {
        d.saw(id);
        assert_eq!(state, "running", "{context}: {id} is {state}\n{}", d.log());
        let (code, out) = d.exec(id, "echo up");
        assert_eq!((code, out.as_str()), (0, "up\n"), "{context}: {id}");
    }
    // A helper whose daemon died mid-create tears its half-made sandbox down by itself,
    // a moment after it finds nobody listening.
    let deadline = Instant::now() + Duration::from_secs(5);
    while run_dirs(d).iter().any(|dir| !ids.contains(dir)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for dir in run_dirs(d) {
        d.saw(&dir);
        assert!(
            ids.contains(&dir),
            "{context}: run directory of {dir}, which the store does not list"
        );
    }
    let left = d.leftovers();
    assert!(left.is_empty(), "{context}: {}", left.join("\n"));
    live.into_iter().map(|(id, _)| id).collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Exec,
    Snapshot,
    Delete,
}

#[test]
fn the_daemon_killed_mid_operation_leaves_each_sandbox_whole_or_gone() {
    if !can_run("the_daemon_killed_mid_operation_leaves_each_sandbox_whole_or_gone") {
        return;
    }
    let _turn = my_turn();
    let trials: usize = std::env::var("WARREN_TRUST_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(52);
    let mut rng = Rng::seeded();
    let mut d = Daemon::start(false);
    let base = d.create(&["--no-home", "--name", "base"]);
    let ops = [Op::Create, Op::Exec, Op::Snapshot, Op::Delete];
    // How long each operation takes here (CLI start included), measured once unhurried,
    // so that the kill lands anywhere from before the request to just after the answer.
    let took = [
        timed(|| d.create(&["--no-home"])),
        timed(|| {
            d.ok(&[
                "exec",
                "base",
                "--",
                "sh",
                "-c",
                "echo calibrate >> /tmp/log; sleep 0.1",
            ])
        }),
        timed(|| d.ok(&["snapshot", "base", "--name", "calibrate"])),
        {
            let id = d.create(&["--no-home"]);
            timed(|| d.ok(&["rm", &id]))
        },
    ];
    d.ok(&["template", "rm", "calibrate"]);
    for id in listed(&d)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| *id != base)
    {
        d.ok(&["rm", &id]);
    }
    println!("FAULTS calibration (create, exec, snapshot, delete): {took:?}");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for trial in 0..trials {
        let op = ops[trial % ops.len()];
        let victim = matches!(op, Op::Delete).then(|| d.create(&["--no-home"]));
        let snap = format!("snap{trial}");
        let args: Vec<String> = match op {
            Op::Create => vec!["create".into(), "--no-home".into()],
            Op::Exec => vec![
                "exec".into(),
                "base".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                format!("echo {trial} >> /tmp/log; sleep 0.1"),
            ],
            Op::Snapshot => vec![
                "snapshot".into(),
                "base".into(),
                "--name".into(),
                snap.clone(),
            ],
            Op::Delete => vec!["rm".into(), victim.clone().unwrap()],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let slot = trial % ops.len();
        let delay = Duration::from_millis(rng.range(0, took[slot].as_millis() as u64 * 2 + 1));
        let child = d
            .warren(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        d.crash();
        let o = child.wait_with_output().unwrap();
        let finished = o.status.success();
        *outcomes
            .entry(format!(
                "{op:?} {}",
                if finished { "completed" } else { "interrupted" }
            ))
            .or_default() += 1;
        d.spawn();
        let context = format!(
            "trial {trial}: {op:?} killed after {delay:?} (completed: {finished}; {})",
            stderr(&o).trim()
        );
        let live = all_or_nothing(&d, &context);
        assert!(live.contains(&base), "{context}: the base sandbox is gone");
        match op {
            Op::Create if finished => {
                let id = stdout(&o).trim().to_string();
                assert!(live.contains(&id), "{context}: created {id} is gone");
            }
            Op::Delete if finished => {
                let id = victim.clone().unwrap();
                assert!(!live.contains(&id), "{context}: removed {id} is back");
            }
            Op::Snapshot => {
                // A template is listed whole, or not at all (and then leaves no files).
                let r = d.http(Via::Unix, "GET", &format!("/v1/templates/{snap}"), &[], b"");
                let dir = d.data_dir().join("templates").join(&snap);
                match r.status {
                    200 => {
                        let t = d.http(
                            Via::Unix,
                            "POST",
                            "/v1/sandboxes",
                            &[JSON],
                            format!(r#"{{"template":"{snap}","home_volume":false}}"#).as_bytes(),
                        );
                        assert_eq!(t.status, 201, "{context}: from the snapshot: {}", t.text());
                        let id = t.json()["id"].as_str().unwrap().to_string();
                        d.saw(&id);
                        assert_eq!(d.exec(&id, "echo ok").1, "ok\n", "{context}");
                        d.ok(&["rm", &id]);
                        d.ok(&["template", "rm", &snap]);
                    }
                    404 => {
                        // Not there means not half there: nothing under its name.
                        assert!(!dir.exists(), "{context}: {} left behind", dir.display());
                    }
                    s => panic!("{context}: GET template: {s} {}", r.text()),
                }
                if finished {
                    assert_eq!(r.status, 200, "{context}: a finished snapshot is missing");
                }
            }
            _ => {}
        }
        // Remove what the trial made so every trial starts alike.
        for id in live.iter().filter(|id| **id != base) {
            d.ok(&["rm", id]);
        }
    }
    let (code, out) = d.exec(&base, "wc -l < /tmp/log");
    assert_eq!(code, 0);
    println!(
        "FAULTS daemon SIGKILL: {trials} trials, {outcomes:?}; base sandbox saw {} execs",
        out.trim()
    );
    let _ = &mut outcomes;
    d.finish();
}

#[test]
fn a_killed_agent_stops_its_sandbox_and_leaves_nothing_running() {
    if !can_run("a_killed_agent_stops_its_sandbox_and_leaves_nothing_running") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    assert_eq!(
        d.exec(&id, "echo kept > /tmp/kept; sleep 300 & echo started")
            .1,
        "started\n"
    );
    let run = d.run_dir().join("sandboxes").join(&id);
    let agent: i32 = std::fs::read_to_string(run.join("agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let helper: i32 = std::fs::read_to_string(run.join("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        processes_of(&id).len() >= 2,
        "agent and sleep are in the cgroup"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.info(&id)["state"] != "stopped" {
        assert!(Instant::now() < deadline, "still {}", d.info(&id)["state"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{id}/logs"),
        &[],
        b"",
    );
    assert!(
        logs.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "failed"),
        "no failed event: {}",
        logs.text()
    );
    // Everything of it is gone from the host: helper, processes, cgroup.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(&id).is_empty()
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper), None).is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "left running: helper alive {}, processes {:?}",
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper), None).is_ok(),
            processes_of(&id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    // Files are kept: starting it again finds them.
    d.ok(&["start", &id]);
    assert_eq!(d.exec(&id, "cat /tmp/kept").1, "kept\n");
    println!(
        "FAULTS agent SIGKILL: stopped with a failed event; helper, processes and cgroup gone"
    );
    d.finish();
}

/// A tmpfs of its own, unmounted (lazily if busy) on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(size: &str) -> Option<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("wtfs")
            .tempdir_in("/tmp")
            .ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        ok.then_some(SmallFs(dir))
    }

    fn path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.0.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
}

/// Fills the filesystem under `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let block = vec![0xa5u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    // Whatever is left in smaller pieces, so that even a page of SQLite cannot fit.
    while f.write_all(&block[..512]).is_ok() {}
    let _ = f.sync_all();
    p
}

fn integrity(db: &Path) -> String {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA integrity_check;")
        .output()
        .expect("the sqlite3 CLI (scripts/install-deps installs it)");
    format!("{}{}", stdout(&o).trim(), stderr(&o).trim())
}

#[test]
fn a_full_data_directory_gives_clear_errors_and_no_corruption() {
    if !can_run("a_full_data_directory_gives_clear_errors_and_no_corruption") {
        return;
    }
    let _turn = my_turn();
    let Some(fs) = SmallFs::new("96m") else {
        warren_testkit::skip(
            "a_full_data_directory_gives_clear_errors_and_no_corruption",
            "cannot mount a tmpfs",
        );
        return;
    };
    let data = fs.path().join("data");
    // Sandboxes keep their files on the data directory's own disk (no image), so that a
    // full data directory is what they run into.
    let mut d = Daemon::start_opts(trust::Options {
        data: Some(data.clone()),
        config: Some("[limits.defaults]\ndisk = 0\n".into()),
        ..Default::default()
    });
    let before = d.create(&["--no-home", "--name", "before"]);
    assert_eq!(d.exec(&before, "echo hello > /tmp/a; echo ok").1, "ok\n");
    let filler = fill(&fs.path());

    // Every call that needs the disk fails with a code and a one-line message; nothing
    // else fails, and the daemon keeps answering.
    let mut failures = Vec::new();
    let mut check = |what: &str, r: trust::Resp| {
        if r.status >= 400 {
            let v = r.json();
            let (code, msg) = (
                v["code"].as_str().unwrap_or(""),
                v["message"].as_str().unwrap_or(""),
            );
            // The only thing wrong is the disk, and the answer says so.
            assert!(
                r.status == 507 && code == "no_space" && !msg.is_empty() && !msg.contains('\n'),
                "{what}: an unclear error: {} {}",
                r.status,
                r.text()
            );
            failures.push(format!("{what}: {} {code}: {msg}", r.status));
        }
    };
    for i in 0..3 {
        let r = d.http(
            Via::Unix,
            "POST",
            "/v1/sandboxes",
            &[JSON],
            br#"{"home_volume":false}"#,
        );
        if r.status == 201 {
            d.saw(r.json()["id"].as_str().unwrap());
        }
        check(&format!("create {i}"), r);
    }
    check(
        "write a file",
        d.http(
            Via::Unix,
            "PUT",
            &format!("/v1/sandboxes/{before}/files?path=/tmp/big"),
            &[],
            &[7u8; 1 << 20],
        ),
    );
    check(
        "exec writing",
        d.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{before}/exec"),
            &[JSON],
            br#"{"command":{"shell":"dd if=/dev/zero of=/tmp/more bs=1M count=8"}}"#,
        ),
    );
    check(
        "pause",
        d.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{before}/pause"),
            &[],
            b"",
        ),
    );
    check(
        "resume",
        d.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{before}/resume"),
            &[],
            b"",
        ),
    );
    check(
        "snapshot",
        d.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{before}/snapshot"),
            &[JSON],
            br#"{"name":"full"}"#,
        ),
    );
    assert!(d.healthy(), "the daemon stopped answering on a full disk");
    for f in &failures {
        println!("FAULTS disk full: {f}");
    }
    assert!(!failures.is_empty(), "nothing noticed the full disk");

    // Space back: everything works again.
    std::fs::remove_file(&filler).unwrap();
    if d.info(&before)["state"] == "paused" {
        d.ok(&["resume", &before]);
    }
    assert_eq!(d.exec(&before, "cat /tmp/a").1, "hello\n");
    let after = d.create(&["--no-home"]);
    assert_eq!(d.exec(&after, "echo ok").1, "ok\n");
    d.remove_all();
    d.shut_down();
    let db = data.join("warren.db");
    assert_eq!(integrity(&db), "ok");
    // And it opens again.
    d.spawn();
    d.finish();
    drop(fs);
}

#[test]
fn a_corrupt_or_truncated_store_is_refused_not_replaced() {
    if !can_run("a_corrupt_or_truncated_store_is_refused_not_replaced") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    for i in 0..3 {
        d.create(&["--no-home", "--name", &format!("keep{i}")]);
    }
    // A bigger store, so that damage lands in pages that matter.
    for _ in 0..60 {
        for verb in ["pause", "resume"] {
            let r = d.http(
                Via::Unix,
                "POST",
                &format!("/v1/sandboxes/keep0/{verb}"),
                &[],
                b"",
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    d.shut_down();
    let db = d.data_dir().join("warren.db");
    for side in ["warren.db-wal", "warren.db-shm"] {
        let p = d.data_dir().join(side);
        if p.exists() {
            assert_eq!(
                std::fs::metadata(&p).unwrap().len(),
                0,
                "{side} left after a clean stop"
            );
        }
    }
    let good = std::fs::read(&db).unwrap();
    assert!(good.len() > 8192, "{} bytes", good.len());
    let mut damaged: Vec<(&str, Vec<u8>)> = vec![
        ("truncated to half", good[..good.len() / 2].to_vec()),
        (
            "truncated to one page",
            good[..4096.min(good.len())].to_vec(),
        ),
        ("truncated to nothing", Vec::new()),
        ("a garbage header", {
            let mut g = good.clone();
            g[..100].copy_from_slice(&[0x5a; 100]);
            g
        }),
    ];
    let mut scribbled = good.clone();
    for b in &mut scribbled[4096..8192] {
        *b = 0xff;
    }
    damaged.push(("a scribbled page", scribbled));
    for (what, bytes) in &damaged {
        std::fs::write(&db, bytes).unwrap();
        for side in ["warren.db-wal", "warren.db-shm"] {
            let _ = std::fs::remove_file(d.data_dir().join(side));
        }
        let mut child = d
            .serve_command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let o = child.wait_with_output().unwrap();
        let msg = stderr(&o);
        assert!(
            matches!(status, Some(s) if !s.success()),
            "{what}: warren serve started on a damaged store ({status:?}):\n{msg}"
        );
        assert!(
            msg.contains("store")
                && (msg.contains(&*db.to_string_lossy()) || msg.contains("integrity")),
            "{what}: {msg}"
        );
        assert_eq!(
            &std::fs::read(&db).unwrap(),
            bytes,
            "{what}: the damaged store was rewritten"
        );
        println!(
            "FAULTS store {what}: refused: {}",
            msg.trim().replace('\n', " | ")
        );
    }
    // The good store back: the sandboxes are all there, running.
    std::fs::write(&db, &good).unwrap();
    d.spawn();
    assert_eq!(listed(&d).len(), 3);
    for i in 0..3 {
        assert_eq!(d.exec(&format!("keep{i}"), "echo ok").1, "ok\n");
    }
    d.finish();
}
