//! The E2B API, so that E2B's SDKs drive Warren unchanged (guide: `docs/e2b.md`).
//!
//! E2B splits its API in two, and so does this module:
//!
//! - the **control plane** (`control`): REST + JSON under `/sandboxes` and
//!   `/v2/sandboxes`, authenticated by `X-API-Key`. Each call is one [`Manager`] call
//!   for the [`Caller`](warren_core::Caller) the key belongs to, so tenancy is the
//!   native API's: another tenant's sandbox is a 404, exactly like a missing one.
//! - **envd**, the daemon E2B runs inside each sandbox: the Connect-protocol services
//!   `process.Process` (`process`) and `filesystem.Filesystem` (`filesystem`), plus
//!   plain HTTP `/files` and `/health` (`envd`). Warren has no daemon inside the
//!   sandbox that speaks this; its agent does the work, and this module translates.
//!
//! Both are served on one TCP listener. E2B reaches envd through a proxy that picks the
//! sandbox from the `E2b-Sandbox-Id` header (with `E2B_SANDBOX_URL` set, which is how
//! the SDK is pointed at a self-hosted server) or from a `Host` of the form
//! `PORT-SANDBOXID.DOMAIN`; a request carrying either is envd's, every other one the
//! control plane's. The paths of the two never overlap except `/health`, which both
//! answer.
//!
//! Ids: an E2B sandbox id is the Warren sandbox id, an E2B pid the agent's pid, and
//! the `envdAccessToken` the sandbox's access token, which every envd call must carry.

mod connect;
mod control;
mod envd;
mod filesystem;
pub(crate) mod ports;
mod process;
#[cfg(test)]
mod tests;
mod watches;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;
use tokio::sync::watch;
use tower::ServiceExt;
use warren_core::log_limit::LogLimit;
use warren_core::Manager;

/// The port envd listens on inside an E2B sandbox; the SDK names it in `Host` and in
/// `E2b-Sandbox-Port`.
pub const ENVD_PORT: u16 = 49983;

/// The envd version Warren claims. The SDK turns features on and off by it: 0.6.4 has
/// stdin closing, default-user handling, octet-stream and gzip uploads, recursive
/// watches, file metadata (`X-Metadata-*` uploads kept as `user.e2b.*` extended
/// attributes, shown on entries), entry info in watch events, and the
/// `allowNetworkMounts` watch option (a sandbox here has no network mounts to refuse).
pub const ENVD_VERSION: &str = "0.6.4";

/// How the E2B surface behaves where E2B leaves a choice to its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E2bOptions {
    /// A create that does not say `allow_internet_access` gets the `nat` network (E2B's
    /// default: internet on); false gives it loopback only unless it asks.
    pub internet_by_default: bool,
}

impl Default for E2bOptions {
    fn default() -> Self {
        Self {
            internet_by_default: true,
        }
    }
}

/// What every E2B handler gets.
#[derive(Debug, Clone)]
pub(crate) struct E2bState {
    pub mgr: Arc<Manager>,
    pub options: E2bOptions,
    /// Turns true when the daemon shuts down; streams end then.
    pub shutdown: watch::Receiver<bool>,
    pub watchers: Arc<watches::Watchers>,
}

/// The E2B surface: control plane and envd on one router. Streams it serves end when
/// `shutdown` turns true.
pub fn router(mgr: Arc<Manager>, shutdown: watch::Receiver<bool>, options: E2bOptions) -> Router {
    let state = E2bState {
        mgr,
        options,
        shutdown,
        watchers: Arc::default(),
    };
    let control = control::router(state.clone());
    let envd = envd::router(state.clone());
    Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(crate::drain::drain_unread))
        .layer(axum::middleware::from_fn(crate::reqlog::log_e2b_request))
        .with_state(Routers {
            control,
            envd,
            mgr: state.mgr,
            signed_lookups: SignedLookups::default(),
        })
}

#[derive(Debug, Clone)]
struct Routers {
    control: Router,
    envd: Router,
    mgr: Arc<Manager>,
    signed_lookups: SignedLookups,
}

/// How many signed file URLs that name no sandbox are looked up a second. Each looks at
/// every sandbox (see [`envd::signed_sandbox`]) and needs no key: the limit keeps what a
/// stranger can make the daemon do for them small. A browser following a download link
/// makes one.
const SIGNED_LOOKUPS_PER_SECOND: u32 = 20;

/// The budget of [`SIGNED_LOOKUPS_PER_SECOND`], one for the whole listener.
#[derive(Debug, Clone)]
struct SignedLookups(Arc<LogLimit>);

impl Default for SignedLookups {
    fn default() -> Self {
        Self(Arc::new(LogLimit::new(SIGNED_LOOKUPS_PER_SECOND)))
    }
}

impl SignedLookups {
    fn admit(&self) -> Result<(), envd::HttpError> {
        if self.0.admit("signed file URLs").0 {
            return Ok(());
        }
        Err(envd::HttpError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many signed file URLs that name no sandbox this second: try again, or \
             name the sandbox (the E2b-Sandbox-Id header, or a 49983-ID host)",
        ))
    }
}

/// Which sandbox (and port) a request is for, when it is for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub sandbox: String,
    pub port: u16,
}

pub(crate) const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";

pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The sandbox a request addresses: the proxy headers first, else `Host`.
pub(crate) fn target(headers: &HeaderMap) -> Option<Target> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = text(SANDBOX_ID_HEADER) {
        let port = text(SANDBOX_PORT_HEADER)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(ENVD_PORT);
        return Some(Target {
            sandbox: id.trim().to_string(),
            port,
        });
    }
    host_target(headers)
}

/// The sandbox and port a `Host` of the form `PORT-ID.DOMAIN` names.
pub(crate) fn host_target(headers: &HeaderMap) -> Option<Target> {
    let host = headers.get("host").and_then(|v| v.to_str().ok())?;
    let label = host.split('.').next()?;
    // A bare `host:port` has no dot and no sandbox in it.
    if !host.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port: u16 = port.parse().ok()?;
    valid_id(id).then(|| Target {
        sandbox: id.to_string(),
        port,
    })
}

async fn dispatch(State(r): State<Routers>, req: Request) -> Response {
    let router = match target(req.headers()) {
        Some(t) if t.port != ENVD_PORT => {
            crate::reqlog::note_route(req.extensions(), &format!("port {}", t.port));
            return ports::proxy(&r.mgr, t, ports::Door::E2b, req).await;
        }
        Some(_) => r.envd,
        None => {
            match envd::signed_sandbox(&r.mgr, req.method(), req.uri(), || r.signed_lookups.admit())
            {
                None => r.control,
                // A signed file URL built on `E2B_SANDBOX_URL`: to the sandbox that signed it.
                Some(found) => match found {
                    Ok(id) => {
                        let mut req = req;
                        if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
                            req.headers_mut().insert(SANDBOX_ID_HEADER, v);
                        }
                        return match r.envd.oneshot(req).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        };
                    }
                    Err(e) => return axum::response::IntoResponse::into_response(e),
                },
            }
        }
    };
    match router.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}
