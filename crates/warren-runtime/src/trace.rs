//! Phase timings for finding where sandbox creation spends its time.
//!
//! With `WARREN_TRACE=1`, the CLI, the daemon and the helper print one line per phase to
//! stderr: the monotonic clock in microseconds (comparable across processes), the
//! process, and the phase. Off by default; when off, a mark costs one relaxed atomic load.

use std::sync::atomic::{AtomicU8, Ordering};

static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether `WARREN_TRACE=1` asked for marks.
pub(crate) fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("WARREN_TRACE").is_some_and(|v| v == "1");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Records that `phase` just ended.
pub fn mark(phase: &str) {
    if !enabled() {
        return;
    }
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    eprintln!("trace {now} {} {phase}", std::process::id());
}
