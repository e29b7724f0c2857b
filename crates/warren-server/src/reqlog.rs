//! The request log: one line per API request at info level (`warren::request`), with the
//! method, the path, status, microseconds to the answer's head (`us`), the tenant and
//! the sandbox as the request names it (its id or name).
//!
//! The native API logs the path (a share's token in `/v1/shared/{token}` as that
//! template); the E2B listener logs `api="e2b"` and the route the request matched, as
//! its template (`route="/sandboxes/{id}/timeout"`), or `port N` for traffic to a
//! sandbox's port, whose paths are the sandbox's own business.
//!
//! Lines are limited per sandbox (and for requests about no sandbox, together): at most
//! [`PER_SECOND`] a second; the rest are counted, and one line says how many were left
//! out. A client that hammers one sandbox so costs the log a line a second, not one a
//! request. A request whose caller is not known (no key or token, or a wrong one) counts
//! with those about no sandbox, whatever sandbox it names: one naming a new sandbox each
//! time must not buy a line each. The query string is never logged (it may carry a
//! path, a name, or a signed URL's signature); nor are headers (keys and tokens).
//!
//! Each request also runs in a `request` span holding its tenant (once its caller is
//! known) and the sandbox it names, so whatever the engine logs while answering it
//! (a lifecycle change, a warning) carries them.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Extensions, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::Empty;
use tracing::Instrument;
use warren_core::log_limit::LogLimit;
use warren_core::Caller;

/// Lines a second for one sandbox.
pub const PER_SECOND: u32 = 10;

/// Where the extractors note who the caller was, for the line written after the answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantSlot(Arc<OnceLock<String>>);

/// Notes `caller`'s tenant for the request log, if the request has a slot.
pub(crate) fn note_caller(extensions: &Extensions, caller: &Caller) {
    note_tenant(extensions, &caller.tenant);
}

/// Notes the tenant a request acted for (the owner of the sandbox whose port it reached).
pub(crate) fn note_tenant(extensions: &Extensions, tenant: &str) {
    if let Some(slot) = extensions.get::<TenantSlot>() {
        let _ = slot.0.set(tenant.to_string());
        // The extractors run inside the request's span (see `span`).
        tracing::Span::current().record("tenant", tenant);
    }
}

/// The span a request is answered in: its tenant is recorded once known.
fn span(sandbox: Option<&str>) -> tracing::Span {
    tracing::info_span!(
        target: "warren::request",
        "request",
        tenant = Empty,
        sandbox = sandbox.unwrap_or("-")
    )
}

/// Where the E2B routers note the route a request matched: its template, never the
/// path.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteSlot(Arc<OnceLock<String>>);

/// Notes `route` for the request log, if the request has a slot.
pub(crate) fn note_route(extensions: &Extensions, route: &str) {
    if let Some(slot) = extensions.get::<RouteSlot>() {
        let _ = slot.0.set(route.to_string());
    }
}

/// A layer of the E2B routers: notes the template of the route matched.
pub(crate) async fn note_matched_route(req: Request, next: Next) -> Response {
    if let Some(m) = req.extensions().get::<MatchedPath>() {
        note_route(req.extensions(), m.as_str());
    }
    next.run(req).await
}

/// The request lines' budget (see the module doc).
fn limit() -> &'static LogLimit {
    static L: OnceLock<LogLimit> = OnceLock::new();
    L.get_or_init(|| LogLimit::new(PER_SECOND))
}

/// The sandbox a path is about: `/v1/sandboxes/{key}/...`.
fn sandbox_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/sandboxes/")
        .and_then(|rest| rest.split('/').next())
        .filter(|k| !k.is_empty())
}

/// The path as logged: a share's token, which lets whoever holds it watch a terminal,
/// is left out.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/v1/shared/") {
        "/v1/shared/{token}"
    } else {
        path
    }
}

/// Whether to log a request about `sandbox`, counted against it when its caller is
/// known and with the requests about no sandbox otherwise; says once how many of that
/// count were left out before.
fn admitted(known_caller: bool, sandbox: &str) -> bool {
    let bucket = if known_caller { sandbox } else { "-" };
    let (log, left_out) = limit().admit(bucket);
    if left_out > 0 {
        tracing::info!(
            target: "warren::request",
            sandbox = bucket,
            left_out,
            "{left_out} more requests were not logged"
        );
    }
    log
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The middleware of the native API.
pub(crate) async fn log_request(mut req: Request, next: Next) -> Response {
    let slot = TenantSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = next.run(req).instrument(span(sandbox_of(&path))).await;
    let sandbox = sandbox_of(&path).unwrap_or("-");
    let tenant = slot.0.get().map(String::as_str);
    if admitted(tenant.is_some(), sandbox) {
        tracing::info!(
            target: "warren::request",
            %method,
            path = loggable_path(&path),
            status = resp.status().as_u16(),
            us = micros(started),
            tenant = tenant.unwrap_or("-"),
            sandbox,
            "request"
        );
    }
    resp
}

/// The sandbox an E2B control-plane request is about: the `{id}` after `sandboxes` in
/// the route it matched, read off the path.
fn e2b_sandbox_of<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let mut before = "";
    for (r, p) in route.split('/').zip(path.split('/')) {
        if r == "{id}" && before == "sandboxes" {
            return Some(p);
        }
        before = r;
    }
    None
}

/// The middleware of the E2B listener.
pub(crate) async fn log_e2b_request(req: Request, next: Next) -> Response {
    log_by_route("e2b", req, next).await
}

/// The middleware of traffic to sandboxes' ports on the daemon's own listener: like
/// the E2B listener's, the port and never the path.
pub(crate) async fn log_port_request(req: Request, next: Next) -> Response {
    log_by_route("port", req, next).await
}

/// One line per request, with the route it matched (or `port N`), never its path.
async fn log_by_route(api: &'static str, mut req: Request, next: Next) -> Response {
    let tenant = TenantSlot::default();
    let route = RouteSlot::default();
    req.extensions_mut().insert(tenant.clone());
    req.extensions_mut().insert(route.clone());
    let method: Method = req.method().clone();
    // envd's requests and a port's name their sandbox in headers; the control plane's
    // in the path, which is read here and never logged.
    let named = crate::e2b::target(req.headers()).map(|t| t.sandbox);
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let in_span = span(named.as_deref().filter(|id| crate::e2b::valid_id(id)));
    let resp = next.run(req).instrument(in_span).await;
    let route = route.0.get().map(String::as_str).unwrap_or("-");
    let sandbox = named
        .as_deref()
        .or_else(|| e2b_sandbox_of(route, &path))
        .filter(|id| crate::e2b::valid_id(id))
        .unwrap_or("-");
    let tenant = tenant.0.get().map(String::as_str);
    if admitted(tenant.is_some(), sandbox) {
        tracing::info!(
            target: "warren::request",
            api,
            %method,
            route,
            status = resp.status().as_u16(),
            us = micros(started),
            tenant = tenant.unwrap_or("-"),
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
    fn the_sandbox_is_read_off_the_path() {
        assert_eq!(sandbox_of("/v1/sandboxes/abc/exec"), Some("abc"));
        assert_eq!(sandbox_of("/v1/sandboxes/abc"), Some("abc"));
        assert_eq!(sandbox_of("/v1/sandboxes"), None);
        assert_eq!(sandbox_of("/v1/templates"), None);
    }

    #[test]
    fn an_e2b_sandbox_is_read_off_the_path_where_its_route_has_one() {
        let of = e2b_sandbox_of;
        assert_eq!(of("/sandboxes/{id}", "/sandboxes/abc"), Some("abc"));
        assert_eq!(
            of("/sandboxes/{id}/timeout", "/sandboxes/abc/timeout"),
            Some("abc")
        );
        assert_eq!(
            of("/v2/sandboxes/{id}/connect", "/v2/sandboxes/abc/connect"),
            Some("abc")
        );
        // A template's id is not a sandbox.
        assert_eq!(of("/templates/{id}", "/templates/abc"), None);
        assert_eq!(of("/v2/sandboxes", "/v2/sandboxes"), None);
        assert_eq!(of("-", "/sandboxes/abc"), None);
    }

    #[test]
    fn a_share_token_is_not_logged() {
        assert_eq!(loggable_path("/v1/shared/wsh_secret"), "/v1/shared/{token}");
        assert_eq!(
            loggable_path("/v1/sandboxes/a/exec"),
            "/v1/sandboxes/a/exec"
        );
    }
}
