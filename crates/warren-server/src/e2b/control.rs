//! E2B's control plane (its `spec/openapi.yml`) on the [`Manager`].
//!
//! What maps, and why this way:
//!
//! - `templateID` names a Warren template; E2B's default `base` is the template of that
//!   name when the operator built one (`warren template base`: Debian with python, pip,
//!   git, curl and a `user` with sudo), else Warren's built-in `host`, reported back as
//!   `base`.
//! - `timeout` is the sandbox's lifetime from now (300 s when the request names none,
//!   as E2B), `autoPause` picks pause rather than terminate when it passes, and
//!   `autoPauseMemory: false` a pause that keeps only the files (Warren's stop).
//!   `connect` only ever lengthens a running sandbox's lifetime; a paused one it
//!   resumes gets the lifetime asked for, or the default. E2B sandboxes are independent machines, so an E2B
//!   sandbox gets no shared home volume: its `/home/user` is its own and goes with it.
//! - `envVars` become the sandbox's base environment, `metadata` its metadata (the
//!   list filter matches it), `allow_internet_access` picks the `nat` network (true)
//!   or loopback only (false); a create that does not say gets the operator's choice,
//!   internet on by default as on E2B (`[e2b] internet_access` in the configuration).
//! - States: E2B knows `running` and `paused`. A Warren sandbox that is stopped (files
//!   kept, processes gone) is shown as `paused`, since `connect` brings it back the
//!   way E2B resumes a paused sandbox.
//! - Errors are `{"code": status, "message"}` with E2B's statuses, so the SDK raises
//!   its own exceptions: 404 for a sandbox that does not exist or is another tenant's,
//!   409 for pausing a paused sandbox, 401 for a bad key.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warren_core::{Caller, ListFilter};
use warren_types::api::{CreateSandbox, SandboxInfo, SandboxState, SetTimeout, TimeoutAction};
use warren_types::egress::Egress;
use warren_types::spec::NetworkMode;

use super::envd::HttpError;
use super::{E2bState, ENVD_VERSION};
use crate::extract::Path;

/// The header carrying an E2B API key (a Warren API key).
const API_KEY_HEADER: &str = "x-api-key";
/// E2B's default template, Warren's `host`.
const DEFAULT_TEMPLATE: &str = "base";
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 100;

pub(super) fn router(state: E2bState) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route(
            "/sandboxes/{id}/snapshots",
            post(snapshot_create).fallback(unsupported),
        )
        .route("/snapshots", get(snapshot_list).fallback(unsupported))
        .route(
            "/templates/{id}",
            delete(template_delete).fallback(unsupported),
        )
        .route("/sandboxes/{id}/fork", post(fork).fallback(unsupported))
        .route(
            "/sandboxes/{id}/metrics",
            get(metrics).fallback(unsupported),
        )
        .route("/sandboxes/metrics", any(unsupported))
        .route("/sandboxes/{id}/logs", any(unsupported))
        .route("/v2/sandboxes/{id}/logs", any(unsupported))
        .route(
            "/sandboxes/{id}/network",
            axum::routing::put(update_network).fallback(unsupported),
        )
        .route("/templates", any(unsupported))
        .route("/templates/{id}/{*rest}", any(unsupported))
        .route("/v2/templates", any(unsupported))
        .route("/v3/templates", any(unsupported))
        .route("/v2/templates/{*rest}", any(unsupported))
        .route("/volumes", any(unsupported))
        .route("/volumes/{*rest}", any(unsupported))
        .route("/secrets", any(unsupported))
        .route("/secrets/{*rest}", any(unsupported))
        .fallback(|uri: Uri| async move {
            HttpError::new(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
        })
        .layer(axum::middleware::from_fn(crate::reqlog::note_matched_route))
        .with_state(state)
}

/// The tenant of the `X-API-Key`.
#[derive(Debug)]
struct Key(Caller);

impl FromRequestParts<E2bState> for Key {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &E2bState) -> Result<Self, HttpError> {
        let key = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HttpError::new(StatusCode::UNAUTHORIZED, "send X-API-Key"))?;
        let caller = st
            .mgr
            .authenticate(key.trim())
            .ok_or_else(|| HttpError::new(StatusCode::UNAUTHORIZED, "Invalid API key"))?;
        crate::conn::mark_authenticated(&parts.extensions);
        crate::reqlog::note_caller(&parts.extensions, &caller);
        Ok(Key(caller))
    }
}

/// A JSON body; an empty one reads as `{}`. Unknown fields are ignored: newer SDKs
/// send options this server does not know, and refusing them would refuse the SDK.
#[derive(Debug)]
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = HttpError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, HttpError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| HttpError::new(e.status(), "cannot read the body"))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    #[serde(rename = "autoPause")]
    auto_pause: Option<bool>,
    #[serde(rename = "autoPauseMemory")]
    auto_pause_memory: Option<bool>,
    #[serde(rename = "autoResume")]
    auto_resume: Option<AutoResume>,
    metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "envVars")]
    env_vars: Option<BTreeMap<String, String>>,
    allow_internet_access: Option<bool>,
    network: Option<NetworkConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AutoResume {
    enabled: bool,
}

/// E2B's `network`: egress rules, whether the sandbox's ports take traffic without its
/// traffic token, and the `Host` they see. Per-host request transforms and a SOCKS
/// proxy for egress have no counterpart here and are refused rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NetworkConfig {
    #[serde(rename = "allowPublicTraffic", alias = "allow_public_traffic")]
    allow_public_traffic: Option<bool>,
    #[serde(rename = "maskRequestHost", alias = "mask_request_host")]
    mask_request_host: Option<String>,
    #[serde(flatten)]
    egress: EgressConfig,
}

/// The egress part of E2B's `network` (a create's, and the whole of an update's).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EgressConfig {
    #[serde(rename = "allowOut", alias = "allow_out")]
    allow_out: Option<Vec<String>>,
    #[serde(rename = "denyOut", alias = "deny_out")]
    deny_out: Option<Vec<String>>,
    #[serde(rename = "dnsServers", alias = "dns_servers")]
    dns_servers: Option<Vec<String>>,
    rules: Option<serde_json::Value>,
    #[serde(rename = "egressProxy", alias = "egress_proxy")]
    egress_proxy: Option<serde_json::Value>,
    /// Only in an update's body (a create has it outside `network`).
    #[serde(rename = "allow_internet_access", alias = "allowInternetAccess")]
    allow_internet_access: Option<bool>,
}

impl EgressConfig {
    /// Warren's rules for these fields; `internet: false` adds "deny all" (E2B's
    /// meaning of it).
    fn to_egress(&self, internet: Option<bool>) -> Result<Egress, HttpError> {
        let given = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
        };
        if given(&self.rules) {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "network.rules (per-host request transforms) are not supported by Warren;                  allow the hosts with allowOut and set headers in the sandbox",
            ));
        }
        if given(&self.egress_proxy) {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "network.egressProxy is not supported by Warren: a sandbox's traffic leaves                  through the host's own network",
            ));
        }
        let mut e = Egress {
            allow: self.allow_out.clone().unwrap_or_default(),
            deny: self.deny_out.clone().unwrap_or_default(),
            dns: self.dns_servers.clone(),
        };
        if internet.or(self.allow_internet_access) == Some(false)
            && !e.deny.iter().any(|d| d == ALL_TRAFFIC)
        {
            e.deny.push(ALL_TRAFFIC.into());
        }
        Ok(e)
    }
}

/// E2B's "all traffic".
const ALL_TRAFFIC: &str = "0.0.0.0/0";

/// E2B's default lifetime when a create or connect names none (its spec's 300 s).
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// The Warren template an E2B name means: `base` is the template of that name when the
/// operator has built it (`warren template base`), else the built-in `host`.
fn warren_template(st: &E2bState, who: &Caller, e2b: &str) -> String {
    if e2b == DEFAULT_TEMPLATE && st.mgr.template_meta(who, DEFAULT_TEMPLATE).is_err() {
        "host".into()
    } else {
        e2b.to_string()
    }
}

fn e2b_template(warren: &str) -> String {
    if warren == "host" {
        DEFAULT_TEMPLATE.into()
    } else {
        warren.to_string()
    }
}

fn state_of(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Creating | SandboxState::Running => "running",
        _ => "paused",
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: Option<String>,
    traffic_access_token: Option<String>,
}

fn created(i: &SandboxInfo) -> Created {
    Created {
        template_id: e2b_template(&i.template),
        sandbox_id: i.id.clone(),
        client_id: "warren",
        envd_version: ENVD_VERSION,
        envd_access_token: i.access_token.clone(),
        traffic_access_token: i.traffic_token.clone(),
    }
}

/// The host's CPUs and memory, shown for sandboxes without their own limits.
fn host_cpus() -> u64 {
    u64::from(warren_sys::host_cores())
}

fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// No end: a sandbox without a lifetime lives until killed.
const NO_END: &str = "9999-12-31T23:59:59Z";

fn listed(i: &SandboxInfo) -> serde_json::Value {
    let r = &i.resources;
    serde_json::json!({
        "templateID": e2b_template(&i.template),
        "sandboxID": i.id,
        "clientID": "warren",
        "startedAt": i.created_at,
        "endAt": i.expires_at.clone().unwrap_or_else(|| NO_END.into()),
        "cpuCount": r.cpu_millis.map_or_else(host_cpus, |m| u64::from(m).div_ceil(1000)),
        "memoryMB": r.memory.map_or_else(host_memory_mb, |m| m >> 20),
        "diskSizeMB": r.disk.map_or(0, |d| d >> 20),
        "metadata": i.metadata,
        "state": state_of(i.state),
        "envdVersion": ENVD_VERSION,
    })
}

/// `info` with its tokens, which E2B hands to every holder of the API key that asks
/// (`connect` and the detail of a sandbox).
fn with_tokens(
    st: &E2bState,
    who: &warren_core::Caller,
    info: SandboxInfo,
) -> Result<SandboxInfo, HttpError> {
    let (access_token, traffic_token) = st.mgr.tokens(who, &info.id).map_err(core(&info.id))?;
    Ok(SandboxInfo {
        access_token,
        traffic_token,
        ..info
    })
}

fn detail_of(i: &SandboxInfo) -> serde_json::Value {
    let mut v = listed(i);
    v["envdAccessToken"] = serde_json::json!(i.access_token);
    let denies_all = i.egress.deny.iter().any(|d| d == ALL_TRAFFIC) && i.egress.allow.is_empty();
    v["allowInternetAccess"] = serde_json::json!(i.network == NetworkMode::Nat && !denies_all);
    let mut network = serde_json::json!({
        "allowOut": i.egress.allow,
        "denyOut": i.egress.deny,
        // A detail carries the tokens (`with_tokens`): a traffic token means not public.
        "allowPublicTraffic": i.traffic_token.is_none(),
    });
    if let Some(d) = &i.egress.dns {
        network["dnsServers"] = serde_json::json!(d);
    }
    if let Some(h) = &i.request_host {
        network["maskRequestHost"] = serde_json::json!(h);
    }
    v["network"] = network;
    let on_timeout = match i.on_timeout {
        TimeoutAction::Pause | TimeoutAction::Stop => "pause",
        TimeoutAction::Terminate => "kill",
    };
    v["lifecycle"] = serde_json::json!({"autoResume": i.auto_resume, "onTimeout": on_timeout});
    v
}

fn not_found(id: &str) -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
}

/// Engine errors, with a missing sandbox worded as E2B words it.
fn core(id: &str) -> impl FnOnce(warren_core::CoreError) -> HttpError + '_ {
    move |e| match e {
        warren_core::CoreError::NotFound(_) => not_found(id),
        e => e.into(),
    }
}

async fn create(
    State(st): State<E2bState>,
    Key(who): Key,
    Body(req): Body<NewSandbox>,
) -> Result<Response, HttpError> {
    let template = warren_template(
        &st,
        &who,
        req.template_id.as_deref().unwrap_or(DEFAULT_TEMPLATE),
    );
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let auto_resume = req.auto_resume.as_ref().is_some_and(|a| a.enabled);
    if auto_resume && (req.auto_pause != Some(true) || req.auto_pause_memory == Some(false)) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "autoResume needs autoPause with memory: a sandbox that keeps only its files is \
             resumed by connect, not by traffic",
        ));
    }
    let egress = match &req.network {
        Some(n) => n.egress.to_egress(req.allow_internet_access)?,
        None => Egress::default(),
    };
    // The template's metadata is read once for both.
    let isolation = st.mgr.isolation_for(&who, &template);
    // A gVisor sandbox on `nat` keeps no memory snapshots (no fork, see docs/e2b.md):
    // there, internet is on only when asked for.
    let nat_by_default = st.options.internet_by_default
        && isolation != warren_types::spec::Isolation::Gvisor
        && st.mgr.networks_of(isolation).contains(&NetworkMode::Nat);
    // `allow_internet_access: false` alone is loopback only; with rules (or where the
    // sandbox may be opened later, E2B's model) it is `nat` denying everything.
    let network = match req.allow_internet_access {
        Some(true) => NetworkMode::Nat,
        Some(false) if egress.allow.is_empty() && egress.dns.is_none() => NetworkMode::None,
        Some(false) => NetworkMode::Nat,
        None if !egress.is_open() => NetworkMode::Nat,
        None if nat_by_default => NetworkMode::Nat,
        None => NetworkMode::None,
    };
    let egress = if network == NetworkMode::None {
        Egress::default()
    } else {
        egress
    };
    let create = CreateSandbox {
        template: Some(template.clone()),
        env: req.env_vars.unwrap_or_default(),
        metadata: req.metadata.unwrap_or_default(),
        timeout_secs: Some(timeout),
        on_timeout: Some(match (req.auto_pause, req.auto_pause_memory) {
            (Some(true), Some(false)) => TimeoutAction::Stop,
            (Some(true), _) => TimeoutAction::Pause,
            _ => TimeoutAction::Terminate,
        }),
        network,
        egress,
        auto_resume: Some(auto_resume),
        home_volume: Some(false),
        request_host: req
            .network
            .as_ref()
            .and_then(|n| n.mask_request_host.clone()),
        traffic_token: req.network.and_then(|n| n.allow_public_traffic) == Some(false),
        ..CreateSandbox::default()
    };
    let (info, _) = st.mgr.create(&who, create).await.map_err(|e| match e {
        // As E2B answers an unknown template (or another team's snapshot).
        warren_core::CoreError::UnknownTemplate(t) => HttpError::new(
            StatusCode::NOT_FOUND,
            format!("template '{}' not found", e2b_template(&t)),
        ),
        e => e.into(),
    })?;
    Ok((StatusCode::CREATED, axum::Json(created(&info))).into_response())
}

async fn detail(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let info = with_tokens(&st, &who, st.mgr.get(&who, &id).map_err(core(&id))?)?;
    Ok(axum::Json(detail_of(&info)).into_response())
}

async fn kill(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    st.mgr.terminate(&who, &id).await.map_err(core(&id))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TimeoutRequest {
    timeout: Option<u64>,
    duration: Option<u64>,
    #[serde(rename = "autoPause")]
    auto_pause: Option<bool>,
    /// `false` on connect: resume from the files only (a paused sandbox's processes
    /// end and it starts afresh).
    memory: Option<bool>,
}

async fn set_timeout(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<TimeoutRequest>,
) -> Result<StatusCode, HttpError> {
    let secs = req
        .timeout
        .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, "timeout is required"))?;
    let t = SetTimeout {
        timeout_secs: Some(secs),
        ..SetTimeout::default()
    };
    st.mgr.set_timeout(&who, &id, t).map_err(core(&id))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes`: lives `duration` more seconds from now (E2B's
/// default 60), never less than it already would.
async fn refresh(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<TimeoutRequest>,
) -> Result<StatusCode, HttpError> {
    let info = st.mgr.get(&who, &id).map_err(core(&id))?;
    extend(&st, &who, &info, req.duration.unwrap_or(60))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a sandbox live `secs` more seconds from now unless it already would (one
/// without an end lives on).
fn extend(st: &E2bState, who: &Caller, info: &SandboxInfo, secs: u64) -> Result<(), HttpError> {
    let wanted = warren_core::now_ms().saturating_add(
        i64::try_from(secs)
            .unwrap_or(i64::MAX / 2)
            .saturating_mul(1000),
    );
    let longer = info
        .expires_at
        .as_deref()
        .is_none_or(|e| e > warren_core::rfc3339(wanted).as_str());
    if !longer {
        let t = SetTimeout {
            timeout_secs: Some(secs),
            ..SetTimeout::default()
        };
        st.mgr
            .set_timeout(who, &info.id, t)
            .map_err(core(&info.id))?;
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PauseRequest {
    /// `false`: keep the files only; processes end and resume starts the sandbox
    /// afresh (E2B's file-system-only pause). Memory is kept otherwise.
    memory: Option<bool>,
}

async fn pause(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<PauseRequest>,
) -> Result<StatusCode, HttpError> {
    let info = st.mgr.get(&who, &id).map_err(core(&id))?;
    if info.state != SandboxState::Running {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    if req.memory == Some(false) {
        st.mgr.stop(&who, &id).await.map_err(core(&id))?;
    } else {
        st.mgr.pause(&who, &id).await.map_err(core(&id))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Brings a paused (or stopped) sandbox back; the flag says whether it had to.
async fn wake(st: &E2bState, who: &Caller, id: &str) -> Result<(SandboxInfo, bool), HttpError> {
    let info = st.mgr.get(who, id).map_err(core(id))?;
    let info = match info.state {
        SandboxState::Running | SandboxState::Creating => return Ok((info, false)),
        SandboxState::Paused => st.mgr.resume(who, id).await,
        _ => st.mgr.start(who, id).await,
    }
    .map_err(core(id))?;
    Ok((info, true))
}

fn apply_timeout(
    st: &E2bState,
    who: &Caller,
    id: &str,
    req: &TimeoutRequest,
) -> Result<(), HttpError> {
    if req.timeout.is_none() && req.auto_pause.is_none() {
        return Ok(());
    }
    let t = SetTimeout {
        timeout_secs: req.timeout,
        on_timeout: req.auto_pause.map(|p| {
            if p {
                TimeoutAction::Pause
            } else {
                TimeoutAction::Terminate
            }
        }),
        ..SetTimeout::default()
    };
    st.mgr.set_timeout(who, id, t).map_err(core(id))?;
    Ok(())
}

/// `POST /sandboxes/{id}/resume`: 409 for a running sandbox, as E2B.
async fn resume(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<TimeoutRequest>,
) -> Result<Response, HttpError> {
    let (info, woke) = wake(&st, &who, &id).await?;
    if !woke {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already running"),
        ));
    }
    apply_timeout(&st, &who, &id, &req)?;
    let info = with_tokens(&st, &who, info)?;
    Ok((StatusCode::CREATED, axum::Json(created(&info))).into_response())
}

/// `POST /sandboxes/{id}/connect`: the sandbox, resumed if it was paused (201) or as
/// it runs (200). A resumed sandbox lives the `timeout` asked for (the default when
/// none is); a running one only ever gets longer, as on E2B.
async fn connect(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<TimeoutRequest>,
) -> Result<Response, HttpError> {
    if req.memory == Some(false)
        && st.mgr.get(&who, &id).map_err(core(&id))?.state == SandboxState::Paused
    {
        st.mgr.stop(&who, &id).await.map_err(core(&id))?;
    }
    let (info, woke) = wake(&st, &who, &id).await?;
    if woke {
        let req = TimeoutRequest {
            timeout: req.timeout.or(Some(DEFAULT_TIMEOUT_SECS)),
            ..req
        };
        apply_timeout(&st, &who, &id, &req)?;
    } else if let Some(secs) = req.timeout {
        extend(&st, &who, &info, secs)?;
    }
    let info = with_tokens(&st, &who, st.mgr.get(&who, &id).map_err(core(&id))?)?;
    let status = if woke {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(created(&info))).into_response())
}

#[derive(Debug, Default)]
struct ListQuery {
    metadata: BTreeMap<String, String>,
    states: Vec<String>,
    limit: Option<usize>,
    next_token: Option<String>,
    descending: bool,
    template: Option<String>,
    started_after: Option<jiff::Timestamp>,
    started_before: Option<jiff::Timestamp>,
}

/// An instant as the SDK sends it: RFC 3339, or without an offset meaning UTC (a
/// naive Python `datetime.isoformat()`).
fn instant(v: &str) -> Option<jiff::Timestamp> {
    v.parse::<jiff::Timestamp>().ok().or_else(|| {
        v.parse::<jiff::civil::DateTime>()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    })
}

fn list_query(uri: &Uri) -> Result<ListQuery, HttpError> {
    let bad = |m: String| HttpError::new(StatusCode::BAD_REQUEST, m);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or_default())
        .map_err(|e| bad(format!("query: {e}")))?;
    let mut q = ListQuery {
        descending: true,
        ..ListQuery::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            // `metadata` is itself a query string (`k=v&k2=v2`, url-encoded once more).
            "metadata" => {
                let inner: Vec<(String, String)> =
                    serde_urlencoded::from_str(&v).map_err(|e| bad(format!("metadata: {e}")))?;
                // The SDK percent-quotes each key and value before encoding the pairs.
                q.metadata
                    .extend(inner.into_iter().map(|(k, v)| (unquote(&k), unquote(&v))));
            }
            "state" => q
                .states
                .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string)),
            "limit" => {
                let n: usize = v.parse().map_err(|_| bad(format!("limit {v:?}")))?;
                if n == 0 || n > PAGE_MAX {
                    return Err(bad(format!("limit must be 1 to {PAGE_MAX}")));
                }
                q.limit = Some(n);
            }
            "nextToken" => q.next_token = Some(v),
            "order" => match v.as_str() {
                "asc" => q.descending = false,
                "desc" => q.descending = true,
                _ => return Err(bad(format!("order {v:?}: use asc or desc"))),
            },
            "template" => q.template = Some(v),
            "startedAfter" | "startedBefore" => {
                let t = instant(&v).ok_or_else(|| {
                    bad(format!(
                        "{k} {v:?}: give an RFC 3339 time such as 2026-01-02T03:04:05Z"
                    ))
                })?;
                if k == "startedAfter" {
                    q.started_after = Some(t);
                } else {
                    q.started_before = Some(t);
                }
            }
            _ => {}
        }
    }
    for s in &q.states {
        if s != "running" && s != "paused" {
            return Err(bad(format!("state {s:?}: use running or paused")));
        }
    }
    Ok(q)
}

/// Undoes one level of percent-encoding; text that is not percent-encoded stays.
fn unquote(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={}", s.replace('+', "%2B")))
        .ok()
        .and_then(|mut v| v.pop())
        .map_or_else(|| s.to_string(), |(_, v)| v)
}

/// Position in the listing: the start time, then the id. Opaque to clients.
fn token_of(i: &SandboxInfo) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{}", i.created_at, i.id))
}

fn parse_token(t: &str) -> Option<(String, String)> {
    let raw = URL_SAFE_NO_PAD.decode(t).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (time, id) = raw.split_once('\n')?;
    Some((time.to_string(), id.to_string()))
}

fn page(
    st: &E2bState,
    who: &Caller,
    q: &ListQuery,
) -> Result<(Vec<serde_json::Value>, Option<String>), HttpError> {
    let filter = ListFilter {
        metadata: q.metadata.clone(),
        ..ListFilter::default()
    };
    let mut all: Vec<SandboxInfo> = st
        .mgr
        .list(who, &filter)?
        .into_iter()
        .filter(|i| i.state != SandboxState::Terminated)
        .filter(|i| q.states.is_empty() || q.states.iter().any(|s| s == state_of(i.state)))
        .filter(|i| {
            q.template
                .as_ref()
                .is_none_or(|t| *t == e2b_template(&i.template) || *t == i.template)
        })
        .filter(|i| {
            let started = instant(&i.created_at);
            q.started_after
                .is_none_or(|a| started.is_some_and(|s| s >= a))
                && q.started_before
                    .is_none_or(|b| started.is_some_and(|s| s <= b))
        })
        .collect();
    all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    if q.descending {
        all.reverse();
    }
    let start = match &q.next_token {
        None => 0,
        Some(t) => {
            let (time, id) = parse_token(t).ok_or_else(|| {
                HttpError::new(StatusCode::BAD_REQUEST, "nextToken is not one of ours")
            })?;
            let key = (time, id);
            all.iter()
                .position(|i| {
                    let k = (i.created_at.clone(), i.id.clone());
                    if q.descending {
                        k < key
                    } else {
                        k > key
                    }
                })
                .unwrap_or(all.len())
        }
    };
    let limit = q.limit.unwrap_or(PAGE_DEFAULT);
    let items: Vec<&SandboxInfo> = all.iter().skip(start).take(limit).collect();
    let next = (start + items.len() < all.len())
        .then(|| items.last().map(|i| token_of(i)))
        .flatten();
    Ok((items.into_iter().map(listed).collect(), next))
}

fn page_response(items: Vec<serde_json::Value>, next: Option<String>) -> Response {
    let mut resp = axum::Json(items).into_response();
    if let Some(t) = next.and_then(|t| t.parse().ok()) {
        resp.headers_mut().insert("x-next-token", t);
    }
    resp
}

/// `GET /v2/sandboxes`: running and paused sandboxes, filtered and paged.
async fn list_v2(
    State(st): State<E2bState>,
    Key(who): Key,
    uri: Uri,
) -> Result<Response, HttpError> {
    let q = list_query(&uri)?;
    let (items, next) = page(&st, &who, &q)?;
    Ok(page_response(items, next))
}

/// `GET /sandboxes`: the older listing, of running sandboxes only.
async fn list_v1(
    State(st): State<E2bState>,
    Key(who): Key,
    uri: Uri,
) -> Result<Response, HttpError> {
    let mut q = list_query(&uri)?;
    q.states = vec!["running".into()];
    q.limit = Some(usize::MAX);
    let (items, _) = page(&st, &who, &q)?;
    Ok(axum::Json(items).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SnapshotBody {
    name: Option<String>,
    /// Memory is not captured here (see docs/e2b.md): accepted, and the files are.
    #[allow(dead_code)]
    memory: Option<bool>,
}

fn snapshot_info(name: &str) -> serde_json::Value {
    serde_json::json!({"snapshotID": name, "names": [name]})
}

/// `POST /sandboxes/{id}/snapshots`: the sandbox as a template of the caller's, which
/// `Sandbox.create(snapshot_id)` starts from. As E2B's, with its processes and memory
/// where the backend can save them (gVisor, network none); otherwise its files.
async fn snapshot_create(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<SnapshotBody>,
) -> Result<Response, HttpError> {
    let name = match req.name {
        Some(n) => n,
        None => format!(
            "snapshot-{id}-{}",
            warren_types::random::hex(8)
                .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        ),
    };
    let info = st.mgr.get(&who, &id).map_err(core(&id))?;
    let memory = info.network == NetworkMode::None
        && st
            .mgr
            .backends()
            .iter()
            .any(|b| b.name == info.isolation && b.capabilities.memory_snapshots);
    let req = warren_core::SnapshotRequest { name, memory };
    let made = st.mgr.snapshot(&who, &id, req).await.map_err(core(&id))?;
    let name = made.template.meta.name;
    Ok((StatusCode::CREATED, axum::Json(snapshot_info(&name))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetricsQuery {
    /// Unix seconds.
    start: Option<i64>,
    end: Option<i64>,
}

/// `GET /sandboxes/{id}/metrics?start=&end=`: the readings the daemon takes of a live
/// sandbox every 5 s (the last half hour), as E2B's `SandboxMetric`s. CPU use is a
/// share of the sandbox's CPUs; totals are its limits, else the host's.
async fn metrics(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, HttpError> {
    let q: MetricsQuery = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("query: {e}")))?;
    let info = st.mgr.get(&who, &id).map_err(core(&id))?;
    let ms = |s: i64| s.saturating_mul(1000);
    let samples = st
        .mgr
        .usage_history(&who, &id, q.start.map(ms), q.end.map(ms).map(|e| e + 999))
        .map_err(core(&id))?;
    let r = &info.resources;
    let cpus = r
        .cpu_millis
        .map_or_else(host_cpus, |m| u64::from(m).div_ceil(1000))
        .max(1);
    let mem_total = r.memory.unwrap_or_else(|| host_memory_mb() << 20);
    let disk_total = r.disk.unwrap_or_else(|| st.mgr.data_disk_bytes());
    let out: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| {
            serde_json::json!({
                "timestamp": warren_core::rfc3339(s.at_ms),
                "timestampUnix": s.at_ms.div_euclid(1000),
                "cpuCount": cpus,
                "cpuUsedPct": (s.cpu_pct / cpus as f64 * 100.0).round() / 100.0,
                "memUsed": s.memory_bytes,
                "memTotal": mem_total,
                "memCache": 0,
                "diskUsed": s.disk_bytes,
                "diskTotal": disk_total,
            })
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ForkBody {
    timeout: Option<u64>,
    count: Option<usize>,
}

/// `POST /sandboxes/{id}/fork`: copies of a running sandbox, each with its own id,
/// tokens, network and files, living `timeout` (default 300 s): with its processes and
/// memory on a backend with memory snapshots (gvisor), with its files on the namespace
/// backend (see docs/e2b.md). One entry per copy asked for, a sandbox or an error.
async fn fork(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<ForkBody>,
) -> Result<Response, HttpError> {
    let copies = st
        .mgr
        .fork(&who, &id, req.count.unwrap_or(1))
        .await
        .map_err(core(&id))?;
    let secs = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let mut out = Vec::with_capacity(copies.len());
    for copy in copies {
        let made = copy.and_then(|copy| {
            let t = SetTimeout {
                timeout_secs: Some(secs),
                ..SetTimeout::default()
            };
            st.mgr.set_timeout(&who, &copy.id, t)
        });
        let made = match made {
            Ok(copy) => with_tokens(&st, &who, copy),
            Err(e) => Err(HttpError::from(e)),
        };
        out.push(match made {
            Ok(copy) => serde_json::json!({ "sandbox": created(&copy) }),
            Err(e) => serde_json::json!({
                "error": { "code": e.status.as_u16(), "message": e.message },
            }),
        });
    }
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SnapshotQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
}

/// `GET /snapshots`: the caller's snapshots, oldest first, paged by name.
async fn snapshot_list(
    State(st): State<E2bState>,
    Key(who): Key,
    uri: Uri,
) -> Result<Response, HttpError> {
    let q: SnapshotQuery = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("query: {e}")))?;
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let snaps: Vec<_> = st
        .mgr
        .snapshots(&who)?
        .into_iter()
        .filter(|m| {
            q.sandbox_id
                .as_ref()
                .is_none_or(|s| m.source_sandbox.as_ref() == Some(s))
        })
        .filter(|m| q.name.as_ref().is_none_or(|n| *n == m.name))
        .collect();
    let start = match &q.next_token {
        Some(t) => snaps.iter().position(|m| m.name == *t).ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "nextToken is not from this listing",
            )
        })?,
        None => 0,
    };
    let page: Vec<_> = snaps.iter().skip(start).take(limit).collect();
    let next = snaps.get(start + limit).map(|m| m.name.clone());
    let items = page.iter().map(|m| snapshot_info(&m.name)).collect();
    Ok(page_response(items, next))
}

/// `DELETE /templates/{id}`: the SDK's `delete_snapshot`. Another tenant's template
/// is not found here, as it is not listed.
async fn template_delete(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let visible = st
        .mgr
        .template_meta(&who, &id)
        .is_ok_and(|m| m.tenant.as_deref() == Some(who.tenant.as_str()));
    if !visible {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("template {id} not found"),
        ));
    }
    st.mgr.remove_template(&who, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What Warren does not map (see docs/e2b.md for why): E2B's not-implemented shape.
async fn unsupported(_: Key, uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{} is not implemented by Warren's E2B API (see docs/e2b.md)",
            uri.path()
        ),
    )
}

/// `PUT /sandboxes/{id}/network`: replaces the sandbox's egress rules (what the body
/// leaves out is cleared, as E2B does).
async fn update_network(
    State(st): State<E2bState>,
    Key(who): Key,
    Path(id): Path<String>,
    Body(req): Body<EgressConfig>,
) -> Result<Response, HttpError> {
    let egress = req.to_egress(None)?;
    let info = st.mgr.get(&who, &id).map_err(core(&id))?;
    if info.network != NetworkMode::Nat {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!(
                "sandbox {id} was made without internet access (loopback only), so it has no \
                 network to open; create it with allow_internet_access=True and \
                 network={{\"deny_out\": [ALL_TRAFFIC]}} to change its rules later"
            ),
        ));
    }
    st.mgr
        .set_egress(&who, &id, egress)
        .await
        .map_err(core(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_nested_query_strings() {
        let uri: Uri = "/v2/sandboxes?metadata=a%3D1%26b%3Dx%252520y%26c%3D%25252B&state=running,paused&limit=5"
            .parse()
            .unwrap();
        let q = list_query(&uri).unwrap();
        assert_eq!(q.metadata.get("a").map(String::as_str), Some("1"));
        assert_eq!(q.metadata.get("b").map(String::as_str), Some("x y"));
        assert_eq!(q.metadata.get("c").map(String::as_str), Some("+"));
        assert_eq!(q.states, ["running", "paused"]);
        assert_eq!(q.limit, Some(5));
        assert!(list_query(&"/x?limit=0".parse().unwrap()).is_err());
        assert!(list_query(&"/x?state=dead".parse().unwrap()).is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let t = URL_SAFE_NO_PAD.encode("2024-01-01T00:00:00Z\nabc");
        assert_eq!(
            parse_token(&t),
            Some(("2024-01-01T00:00:00Z".into(), "abc".into()))
        );
        assert_eq!(parse_token("!!"), None);
    }

    #[test]
    fn host_is_shown_as_base() {
        assert_eq!(e2b_template("host"), "base");
        assert_eq!(e2b_template("py"), "py");
    }
}
