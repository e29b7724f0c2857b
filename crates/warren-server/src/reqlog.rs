//! The request log: one line per API request at info level (`warren::request`), with the
//! method, path, status, microseconds to the answer's head (`us`), the tenant and the
//! sandbox as the path names it (its id or name).
//!
//! Lines are limited per sandbox (and for requests about no sandbox, together): at most
//! [`PER_SECOND`] a second; the rest are counted, and one line says how many were left
//! out. A client that hammers one sandbox so costs the log a line a second, not one a
//! request. The query string is never logged (it may carry a path or a name the
//! tenant would not want in the host's logs); nor are headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::Request;
use axum::http::Extensions;
use axum::middleware::Next;
use axum::response::Response;
use warren_core::Caller;

/// Lines a second for one sandbox.
pub const PER_SECOND: u32 = 10;
/// Sandboxes whose counts are kept; past it they all start afresh.
const KEPT: usize = 4096;

/// Where the extractors note who the caller was, for the line written after the answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantSlot(Arc<OnceLock<String>>);

/// Notes `caller`'s tenant for the request log, if the request has a slot.
pub(crate) fn note_caller(extensions: &Extensions, caller: &Caller) {
    if let Some(slot) = extensions.get::<TenantSlot>() {
        let _ = slot.0.set(caller.tenant.clone());
    }
}

#[derive(Debug, Default)]
struct Window {
    second: u64,
    logged: u32,
    left_out: u64,
}

fn windows() -> &'static Mutex<HashMap<String, Window>> {
    static W: OnceLock<Mutex<HashMap<String, Window>>> = OnceLock::new();
    W.get_or_init(Mutex::default)
}

fn seconds() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_secs()
}

/// Whether to log a request about `sandbox` now; and how many about it were left out in
/// the seconds before, to be said once.
fn admit(sandbox: &str, now: u64) -> (bool, u64) {
    let mut w = windows().lock().unwrap_or_else(|e| e.into_inner());
    // A sandbox already counted costs no allocation: every exec passes here.
    if !w.contains_key(sandbox) {
        if w.len() >= KEPT {
            w.clear();
        }
        w.insert(sandbox.to_string(), Window::default());
    }
    let Some(win) = w.get_mut(sandbox) else {
        return (true, 0);
    };
    let mut said = 0;
    if win.second != now {
        said = std::mem::take(&mut win.left_out);
        win.second = now;
        win.logged = 0;
    }
    if win.logged < PER_SECOND {
        win.logged += 1;
        (true, said)
    } else {
        win.left_out += 1;
        (false, said)
    }
}

/// The sandbox a path is about: `/v1/sandboxes/{key}/...`.
fn sandbox_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/sandboxes/")
        .and_then(|rest| rest.split('/').next())
        .filter(|k| !k.is_empty())
}

/// The middleware.
pub(crate) async fn log_request(mut req: Request, next: Next) -> Response {
    let slot = TenantSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let sandbox = sandbox_of(&path).unwrap_or("-");
    let (log, left_out) = admit(sandbox, seconds());
    if left_out > 0 {
        tracing::info!(
            target: "warren::request",
            sandbox,
            left_out,
            "{left_out} more requests were not logged"
        );
    }
    if log {
        let tenant = slot.0.get().map(String::as_str).unwrap_or("-");
        tracing::info!(
            target: "warren::request",
            %method,
            path,
            status = resp.status().as_u16(),
            us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            tenant,
            sandbox,
            "request"
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_about_one_sandbox_is_cut_to_a_few_lines_and_counted() {
        let key = "a-sandbox-of-this-test";
        let admitted = (0..100).filter(|_| admit(key, 1_000_000).0).count();
        assert_eq!(admitted, PER_SECOND as usize);
        // Another sandbox is counted apart.
        assert!(admit("another-of-this-test", 1_000_000).0);
        // The next second logs again and says how many were left out.
        assert_eq!(admit(key, 1_000_001), (true, 100 - u64::from(PER_SECOND)));
    }

    #[test]
    fn the_sandbox_is_read_off_the_path() {
        assert_eq!(sandbox_of("/v1/sandboxes/abc/exec"), Some("abc"));
        assert_eq!(sandbox_of("/v1/sandboxes/abc"), Some("abc"));
        assert_eq!(sandbox_of("/v1/sandboxes"), None);
        assert_eq!(sandbox_of("/v1/templates"), None);
    }
}
