//! What every crate's tests share.
//!
//! Rust's test harness has no way to skip a test at run time: a test that returns early
//! counts as passed. So a test that cannot run here calls [`skip`], which says so on
//! stderr and appends a line to the file named by `WARREN_SKIP_LOG`; `scripts/test`
//! prints those lines at the end and counts them as skipped, not passed.

use std::io::Write;

/// The environment variable naming the file skipped tests are recorded in.
pub const SKIP_LOG: &str = "WARREN_SKIP_LOG";

/// Records that `test` did not run, and why.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    let Some(path) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    // O_APPEND writes of one short line land whole even from concurrent tests.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        // A skip that cannot be recorded must not pass as a success either.
        panic!(
            "cannot record the skip of {test} in {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when `test` may run: it needs root. Otherwise records the skip.
pub fn needs_root(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, &format!("needs root: {why}"));
    false
}

/// Waits until `f` holds, for at most `secs` seconds: whether it did.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}

/// Stops a daemon a test started: SIGTERM, then SIGKILL if it is still there after 10 s;
/// reaped either way.
pub fn stop_daemon(child: &mut std::process::Child) {
    use std::time::{Duration, Instant};
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
}
