//! The systemd unit in `contrib/systemd`: systemd finds nothing to say about it, and the
//! daemon tells a `Type=notify` manager when it is ready.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../contrib/systemd/warren.service"
);

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        warren_testkit::skip(
            "the_unit_passes_systemd_analyze_verify",
            "systemd-analyze is not installed (apt-get install systemd)",
        );
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nDelegate=yes\n"));
    assert!(
        unit.contains("\nKillMode=process\n"),
        "sandboxes must outlive a restart"
    );
    // Checked as installed, with the binary where this build put it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warren.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/warren", env!("CARGO_BIN_EXE_warren")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    // Unknown keys and bad values are warnings, not failures: none may be printed.
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify said: {said}"
    );
}

#[test]
fn serve_tells_a_notify_manager_it_is_ready_once_it_listens() {
    if !common::can_run("serve_tells_a_notify_manager_it_is_ready_once_it_listens") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let manager = UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let run = dir.path().join("run");
    let socket = run.join("warren.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--socket"])
        .arg(&socket)
        .env("WARREN_RUN_DIR", &run)
        .env("WARREN_DATA_DIR", dir.path().join("data"))
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let got = manager.recv(&mut buf);
    let ready_at = started.elapsed();
    let listening = Path::new(&socket).exists();
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    let n = got.expect("no notification within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(
        msg.lines().any(|l| l == format!("MAINPID={}", daemon.id())),
        "{msg:?}"
    );
    assert!(listening, "READY=1 came before the socket ({ready_at:?})");
}
