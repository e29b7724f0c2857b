//! Sandboxes as a whole: create, list, look up, change state, time out, remove; their
//! lifecycle logs and the live event stream; garbage collection; API keys; and the
//! daemon's health, metrics and OpenAPI document.
//!
//! Each handler is one [`Manager`](warren_core::Manager) call: the engine decides what is
//! allowed, and its errors become HTTP through [`Error`].

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warren_core::ListFilter;
use warren_types::api::{
    CreateSandbox, Event, PortLinkInfo, SandboxInfo, SandboxState, SetTimeout,
};

use crate::error::Error;
use crate::exec::ndjson;
use crate::extract::{valid_tenant, Json, Path, Query, Tenant};
use crate::{shutting_down, AppState};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Sandboxes running or paused.
    pub sandboxes: usize,
}

/// `GET /health`: no authentication, so a load balancer can ask.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "daemon",
    summary = "Liveness, version and the number of live sandboxes.",
    responses(
        (status = 200, description = "Healthy.", body = crate::sandboxes::Health, content_type = "application/json"),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(()),
)]
pub async fn health(State(st): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sandboxes: st.mgr.live_count(),
    })
}

/// `GET /metrics`: Prometheus text exposition of the caller's tenant, or for the
/// operator of the whole host.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "daemon",
    summary = "Prometheus metrics.",
    responses(
        (status = 200, description = "Text exposition format 0.0.4.", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn metrics(State(st): State<AppState>, Tenant(who): Tenant) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.mgr.metrics(&who),
    )
        .into_response()
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "daemon",
    summary = "This document.",
    responses(
        (status = 200, description = "OpenAPI 3.1.", body = inline(crate::openapi::AnyObject), content_type = "application/json"),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(()),
)]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

/// Longest timeout accepted (ten years): the engine adds timeouts to clock times, and
/// nobody means more.
pub const MAX_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;

fn check_timeouts(lifetime: Option<u64>, idle: Option<u64>) -> Result<(), Error> {
    for (what, v) in [("timeout_secs", lifetime), ("idle_timeout_secs", idle)] {
        if v.is_some_and(|v| v > MAX_TIMEOUT_SECS) {
            return Err(Error::invalid(format!(
                "{what} is at most {MAX_TIMEOUT_SECS} (ten years)"
            )));
        }
    }
    Ok(())
}

/// `POST /v1/sandboxes`: 201 when made, 200 when `get_or_create` found it.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    operation_id = "createSandbox",
    tag = "sandboxes",
    summary = "Create a sandbox (or get it, with a name and get_or_create).",
    description = "An empty body makes a sandbox with every default.",
    request_body(content = Option<warren_types::api::CreateSandbox>, content_type = "application/json"),
    responses(
        (status = 200, description = "get_or_create found an existing sandbox (resumed or started if it was not running).", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 201, description = "Created.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 429, response = crate::openapi::QuotaExceeded),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn create(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(req): Json<CreateSandbox>,
) -> Result<(StatusCode, axum::Json<SandboxInfo>), Error> {
    check_timeouts(req.timeout_secs, req.idle_timeout_secs)?;
    let (info, created) = st.mgr.create(&who, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(info)))
}

/// `GET /v1/sandboxes?owner=&state=&label=k=v&metadata=k=v`; `label` and `metadata`
/// repeat, and every pair given must match.
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    operation_id = "listSandboxes",
    tag = "sandboxes",
    summary = "List the tenant's sandboxes (not terminated).",
    params(
        ("owner" = Option<String>, Query, description = "Only this owner's."),
        ("state" = Option<warren_types::api::SandboxState>, Query, description = "Only sandboxes in this state."),
        ("label" = Option<Vec<String>>, Query, description = "key=value; repeat for more; all must match.", style = Form, explode),
        ("metadata" = Option<Vec<String>>, Query, description = "key=value; repeat for more; all must match.", style = Form, explode),
    ),
    responses(
        (status = 200, description = "The sandboxes.", body = [warren_types::api::SandboxInfo], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<axum::Json<Vec<SandboxInfo>>, Error> {
    let filter = list_filter(pairs)?;
    Ok(axum::Json(st.mgr.list(&who, &filter)?))
}

fn list_filter(pairs: Vec<(String, String)>) -> Result<ListFilter, Error> {
    fn pair(param: &str, v: &str, into: &mut BTreeMap<String, String>) -> Result<(), Error> {
        let (k, v) = v
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("{param}={v:?}: use {param}=key=value")))?;
        into.insert(k.to_string(), v.to_string());
        Ok(())
    }
    let mut f = ListFilter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "owner" => f.owner = Some(v),
            "state" => {
                f.state = Some(SandboxState::parse(&v).ok_or_else(|| {
                    Error::invalid(format!(
                        "state {v:?}: use creating, running, paused, stopping or stopped"
                    ))
                })?)
            }
            "label" => pair("label", &v, &mut f.labels)?,
            "metadata" => pair("metadata", &v, &mut f.metadata)?,
            other => {
                return Err(Error::invalid(format!(
                    "unknown query parameter {other:?}: use owner, state, label, metadata"
                )))
            }
        }
    }
    Ok(f)
}

/// `GET /v1/sandboxes/{key}`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}",
    operation_id = "getSandbox",
    tag = "sandboxes",
    summary = "Get a sandbox.",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.get(&who, &key)?))
}

/// `DELETE /v1/sandboxes/{key}`.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{key}",
    operation_id = "terminateSandbox",
    tag = "sandboxes",
    summary = "Terminate a sandbox: processes and files go; volumes stay; the name is free again.",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 204, description = "Done."),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn terminate(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<StatusCode, Error> {
    st.mgr.terminate(&who, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sandboxes/{key}/fork`: copies of a running sandbox (with its processes and
/// memory where the backend has memory snapshots, its files otherwise), each with its
/// tokens (shown only here). The copies that were made; the first failure if none was.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/fork",
    operation_id = "forkSandbox",
    tag = "sandboxes",
    summary = "Copies of a running sandbox with its processes and memory (gvisor): each has its own id, tokens and writable layer, and goes on from the moment of the copy; the source keeps running. A backend without memory snapshots answers 400.",
    params(
        crate::openapi::SandboxKey,
    ),
    request_body(content = Option<warren_types::api::ForkRequest>, content_type = "application/json"),
    responses(
        (status = 201, description = "The copies, with their tokens.", body = [warren_types::api::SandboxInfo], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
        (status = 429, response = crate::openapi::QuotaExceeded),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn fork(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
    Json(req): Json<warren_types::api::ForkRequest>,
) -> Result<(StatusCode, axum::Json<Vec<SandboxInfo>>), Error> {
    let mut made = Vec::new();
    let mut failed = None;
    for copy in st.mgr.fork(&who, &key, req.count.unwrap_or(1)).await? {
        match copy {
            Ok(info) => made.push(info),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) if made.is_empty() => Err(e.into()),
        _ => Ok((StatusCode::CREATED, axum::Json(made))),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsQuery {
    /// Unix milliseconds.
    from: Option<i64>,
    /// Unix milliseconds: readings at or before.
    to: Option<i64>,
}

/// `GET /v1/sandboxes/{key}/metrics?from=&to=`: readings of a live sandbox's use,
/// taken every 5 s, the last half hour of them, oldest first.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/metrics",
    operation_id = "sandboxMetrics",
    tag = "sandboxes",
    summary = "Readings of a live sandbox's use (CPU, memory, disk), taken every 5 s while it is live; the last half hour of them, oldest first. A sandbox that is not live has none.",
    params(
        crate::openapi::SandboxKey,
        MetricsQuery,
    ),
    responses(
        (status = 200, description = "The readings.", body = [warren_types::api::UsageSample], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn usage_history(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<axum::Json<Vec<warren_types::api::UsageSample>>, Error> {
    Ok(axum::Json(st.mgr.usage_history(&who, &key, q.from, q.to)?))
}

/// `POST /v1/sandboxes/{key}/ports/{port}/link`: a one-time link for a browser to one
/// port of the sandbox (see [`crate::e2b::ports`]).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/ports/{port}/link",
    operation_id = "linkSandboxPort",
    tag = "sandboxes",
    summary = "A one-time link that opens one port of the sandbox in a browser, through the daemon's TCP listener on a host of its own (PORT-ID.HOST). The first request to that host that carries the code as ?warren_port_link=CODE is answered with a redirect and a cookie of that host only, which every later request of that browser to the port carries; that cookie, or the sandbox's traffic token in e2b-traffic-access-token, is the only way in there (never the sandbox's id alone). The code is spent on first use and waits 60 s; the grant lasts 12 hours or until the daemon restarts.",
    params(
        crate::openapi::SandboxKey,
        ("port" = u32, Path, description = "The sandbox's port, 1-65535.", minimum = 1, maximum = 65535),
    ),
    responses(
        (status = 200, description = "The code, and the address to send the browser to.", body = warren_types::api::PortLinkInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn port_link(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path((key, port)): Path<(String, u16)>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<PortLinkInfo>, Error> {
    let link = st.mgr.port_link(&who, &key, port)?;
    let url = match st.surface {
        crate::Surface::Tcp => crate::e2b::ports::link_url(&headers, &link),
        crate::Surface::Unix => None,
    };
    Ok(axum::Json(PortLinkInfo {
        url,
        expires_in_secs: (warren_core::PORT_LINK_CODE_TTL_MS / 1000) as u64,
        sandbox: link.sandbox,
        port: link.port,
        code: link.code,
    }))
}

/// `POST /v1/sandboxes/{key}/pause`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/pause",
    operation_id = "pauseSandbox",
    tag = "sandboxes",
    summary = "Freeze every process (cgroup freezer). Doing it again is a no-op.",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn pause(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.pause(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/resume`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/resume",
    operation_id = "resumeSandbox",
    tag = "sandboxes",
    summary = "Thaw a paused sandbox. Doing it again is a no-op.",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn resume(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.resume(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/stop`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/stop",
    operation_id = "stopSandbox",
    tag = "sandboxes",
    summary = "End every process; files are kept. Doing it again is a no-op.",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn stop(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.stop(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/start`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/start",
    operation_id = "startSandbox",
    tag = "sandboxes",
    summary = "Run a stopped sandbox again from its kept files. Doing it again is a no-op.",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn start(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.start(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/timeout`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/timeout",
    operation_id = "setTimeout",
    tag = "sandboxes",
    summary = "Change the lifetime (from now), idle timeout or timeout action.",
    params(
        crate::openapi::SandboxKey,
    ),
    request_body(content = warren_types::api::SetTimeout, content_type = "application/json"),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn set_timeout(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
    Json(req): Json<SetTimeout>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    check_timeouts(req.timeout_secs, req.idle_timeout_secs)?;
    Ok(axum::Json(st.mgr.set_timeout(&who, &key, req)?))
}

/// `PUT /v1/sandboxes/{key}/egress`: replaces the sandbox's egress rules.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{key}/egress",
    operation_id = "setEgress",
    tag = "sandboxes",
    summary = "Replace a sandbox's egress rules; a running or paused sandbox is under them at once, its open connections included.",
    params(
        crate::openapi::SandboxKey,
    ),
    request_body(content = warren_types::egress::Egress, content_type = "application/json"),
    responses(
        (status = 200, description = "The sandbox.", body = warren_types::api::SandboxInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
        (status = 409, response = crate::openapi::Conflict),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn set_egress(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
    Json(req): Json<warren_types::egress::Egress>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.set_egress(&who, &key, req).await?))
}

/// `GET /v1/sandboxes/{key}/logs`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/logs",
    operation_id = "sandboxLogs",
    tag = "sandboxes",
    summary = "The sandbox's lifecycle events, oldest first (at most 1000).",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "Events.", body = [warren_types::api::Event], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn logs(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<Vec<Event>>, Error> {
    Ok(axum::Json(st.mgr.logs(&who, &key)?))
}

/// `GET /v1/events`: NDJSON, one [`Event`] a line, until the client leaves.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events",
    tag = "sandboxes",
    summary = "Live lifecycle events of the tenant's sandboxes, as NDJSON, until the client disconnects.",
    responses(
        (status = 200, description = "One Event per line.", body = warren_types::api::Event, content_type = "application/x-ndjson"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn events(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Tenant(who): Tenant,
) -> Result<Response, Error> {
    let mut events = st.mgr.subscribe(&who);
    let revoked =
        crate::extract::revoked(st.clone(), crate::extract::tenant_credential(&st, &headers));
    let (tx, out) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let shutdown = shutting_down(st.shutdown.clone());
        tokio::pin!(shutdown);
        tokio::pin!(revoked);
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = tx.closed() => return,
                _ = &mut shutdown => return,
                // Ends as a shutdown does: an event stream has no error line.
                _ = &mut revoked => return,
            };
            let Some(ev) = ev else { return };
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(ndjson(out))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    #[schema(maximum = 5256000)]
    pub idle_minutes: u64,
    #[serde(default)]
    #[schema(default = false)]
    pub dry_run: bool,
}

/// `POST /v1/gc`: removes (or with `dry_run`, lists) the caller's sandboxes idle longer
/// than `idle_minutes`.
#[utoipa::path(
    post,
    path = "/v1/gc",
    operation_id = "gc",
    tag = "sandboxes",
    summary = "Terminate the tenant's sandboxes idle longer than idle_minutes (or only list them, with dry_run). Sandboxes with an open stream or terminal are never idle.",
    request_body(content = crate::sandboxes::GcRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The sandboxes removed (or that would be).", body = [warren_types::api::SandboxInfo], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn gc(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(req): Json<GcRequest>,
) -> Result<axum::Json<Vec<SandboxInfo>>, Error> {
    let secs = req
        .idle_minutes
        .checked_mul(60)
        .filter(|s| *s <= MAX_TIMEOUT_SECS)
        .ok_or_else(|| Error::invalid("idle_minutes is at most ten years"))?;
    Ok(axum::Json(
        st.mgr
            .gc(&who, Duration::from_secs(secs), req.dry_run)
            .await?,
    ))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// 1-128 letters, digits and - _ . @ + (not . or ..).
    pub tenant: String,
    /// An operator's key: no quota, any host port, the whole host's metrics.
    #[serde(default)]
    #[schema(default = false)]
    pub operator: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyResponse {
    pub tenant: String,
    /// Shown once; only its hash is stored.
    pub api_key: String,
}

/// `POST /v1/keys`: only the host's root, on the unix socket, hands out keys. The TCP
/// router has the path (for listing) but not this method: it answers as if it had
/// neither, before reading anything.
#[utoipa::path(
    post,
    path = "/v1/keys",
    operation_id = "createKey",
    tag = "daemon",
    summary = "Mint an API key for a tenant (unix socket only; 404 on TCP).",
    request_body(content = crate::sandboxes::KeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The new key.", body = crate::sandboxes::KeyResponse, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("unixTenant" = [])),
)]
pub async fn create_key(
    State(st): State<AppState>,
    req: axum::extract::Request,
) -> Result<(StatusCode, axum::Json<KeyResponse>), Error> {
    if st.surface != crate::Surface::Unix {
        return Err(crate::no_route("POST", "/v1/keys"));
    }
    let Json(req) =
        <Json<KeyRequest> as axum::extract::FromRequest<_>>::from_request(req, &st).await?;
    if !valid_tenant(&req.tenant) {
        return Err(Error::invalid(format!(
            "tenant {:?}: use 1-128 letters, digits and - _ . @ + (not . or ..)",
            req.tenant
        )));
    }
    let api_key = st.mgr.create_api_key(&req.tenant, req.operator)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(KeyResponse {
            tenant: req.tenant,
            api_key,
        }),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct KeysQuery {
    /// Only this tenant's keys (the unix socket; a key lists its own tenant's only).
    tenant: Option<String>,
}

/// `GET /v1/keys`: the caller's tenant's keys; on the unix socket every tenant's.
#[utoipa::path(
    get,
    path = "/v1/keys",
    operation_id = "listKeys",
    tag = "daemon",
    summary = "API keys, oldest first, each by its id (never the key): a key lists its own tenant's; the unix socket every tenant's, or one's with `tenant`.",
    params(
        KeysQuery,
    ),
    responses(
        (status = 200, description = "The keys.", body = [warren_types::api::ApiKeyInfo], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn list_keys(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Query(q): Query<KeysQuery>,
) -> Result<axum::Json<Vec<warren_types::api::ApiKeyInfo>>, Error> {
    Ok(axum::Json(st.mgr.api_keys(&who, q.tenant.as_deref())?))
}

/// `DELETE /v1/keys/{id}`: revokes a key; the next request that sends it is refused.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    operation_id = "revokeKey",
    tag = "daemon",
    summary = "Revoke an API key: every request with it is refused from now on; a console session signed in with it, and the terminals, exec, attach and event streams it opened, end. A key revokes its own tenant's keys only (another's: 404); the unix socket any.",
    params(
        ("id" = String, Path, description = "The key's id, as `GET /v1/keys` lists it."),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn revoke_key(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    st.mgr.revoke_api_key(&who, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/backends`: the isolation backends, whether each is available here, and what
/// each offers.
#[utoipa::path(
    get,
    path = "/v1/backends",
    operation_id = "listBackends",
    tag = "sandboxes",
    summary = "The isolation backends of this daemon: whether each is available here (and why not), and what it offers.",
    responses(
        (status = 200, description = "Every backend.", body = [warren_types::api::BackendInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn backends(
    State(st): State<AppState>,
    Tenant(_who): Tenant,
) -> axum::Json<Vec<warren_types::api::BackendInfo>> {
    axum::Json(st.mgr.backends())
}
