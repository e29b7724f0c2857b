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

/// The document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub sandboxes: usize,
}

/// `GET /health`: no authentication, so a load balancer can ask.
pub async fn health(State(st): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sandboxes: st.mgr.live_count(),
    })
}

/// `GET /metrics`: Prometheus text exposition of the caller's tenant, or for the
/// operator of the whole host.
pub async fn metrics(State(st): State<AppState>, Tenant(who): Tenant) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.mgr.metrics(&who),
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
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
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.get(&who, &key)?))
}

/// `DELETE /v1/sandboxes/{key}`.
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

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsQuery {
    /// Unix milliseconds.
    from: Option<i64>,
    to: Option<i64>,
}

/// `GET /v1/sandboxes/{key}/metrics?from=&to=`: readings of a live sandbox's use,
/// taken every 5 s, the last half hour of them, oldest first.
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
pub async fn pause(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.pause(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/resume`.
pub async fn resume(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.resume(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/stop`.
pub async fn stop(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.stop(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/start`.
pub async fn start(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.start(&who, &key).await?))
}

/// `POST /v1/sandboxes/{key}/timeout`.
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
pub async fn set_egress(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
    Json(req): Json<warren_types::egress::Egress>,
) -> Result<axum::Json<SandboxInfo>, Error> {
    Ok(axum::Json(st.mgr.set_egress(&who, &key, req).await?))
}

/// `GET /v1/sandboxes/{key}/logs`.
pub async fn logs(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<Vec<Event>>, Error> {
    Ok(axum::Json(st.mgr.logs(&who, &key)?))
}

/// `GET /v1/events`: NDJSON, one [`Event`] a line, until the client leaves.
pub async fn events(State(st): State<AppState>, Tenant(who): Tenant) -> Result<Response, Error> {
    let mut events = st.mgr.subscribe(&who);
    let (tx, out) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let shutdown = shutting_down(st.shutdown.clone());
        tokio::pin!(shutdown);
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = tx.closed() => return,
                _ = &mut shutdown => return,
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    pub idle_minutes: u64,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/gc`: removes (or with `dry_run`, lists) the caller's sandboxes idle longer
/// than `idle_minutes`.
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub tenant: String,
    /// An operator's key: no quota, any host port, the whole host's metrics.
    #[serde(default)]
    pub operator: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyResponse {
    pub tenant: String,
    pub api_key: String,
}

/// `POST /v1/keys`: only the host's root, on the unix socket, hands out keys; the TCP
/// router does not have this route.
pub async fn create_key(
    State(st): State<AppState>,
    Json(req): Json<KeyRequest>,
) -> Result<(StatusCode, axum::Json<KeyResponse>), Error> {
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

/// `GET /v1/backends`: the isolation backends, whether each is available here, and what
/// each offers.
pub async fn backends(
    State(st): State<AppState>,
    Tenant(_who): Tenant,
) -> axum::Json<Vec<warren_types::api::BackendInfo>> {
    axum::Json(st.mgr.backends())
}
