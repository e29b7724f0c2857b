//! Warren's HTTP surfaces: the native REST API (OpenAPI document generated from the
//! handlers in `openapi`, copied to `docs/openapi.json`; guide in `docs/api.md`).
//!
//! The same routes are served on two surfaces that differ only in who the caller is:
//!
//! - [`Surface::Unix`], the daemon's unix socket (mode 0600, so only the host's root
//!   reaches it): no key; the tenant is named by `X-Warren-Tenant` (default `default`);
//!   API keys are minted here (`POST /v1/keys`); a key lists and revokes its own
//!   tenant's on either surface.
//! - [`Surface::Tcp`]: every route but `/health` and `/openapi.json` needs
//!   `Authorization: Bearer <api key>`; the routes about one sandbox's insides (exec,
//!   processes, files, terminal) also take `X-Access-Token: <its access token>`, which
//!   reaches that sandbox only.
//!
//! Handlers turn a request into one [`Manager`] call (or agent call) and never pass HTTP
//! types down: the engine knows tenants and typed requests, not headers. Every failure
//! is one [`Error`] with a stable code. Long answers (exec and attach output, events)
//! stream as NDJSON; a terminal is a WebSocket.

mod conn;
mod console;
mod drain;
pub mod e2b;
mod error;
mod exec;
mod extract;
mod files;
mod openapi;
mod pools;
mod reqlog;
mod sandboxes;
mod sessions;
mod sftp;
mod share;
pub mod ssh;
mod ssh_keys;
mod templates;
mod tenants;
#[cfg(test)]
mod tests;
pub mod tls;
mod volumes;

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use warren_core::Manager;
use warren_types::api::WireCode;

pub use crate::conn::Limits;
pub use crate::error::Error;
pub use crate::extract::{ACCESS_TOKEN_HEADER, TENANT_HEADER};

/// Largest JSON body.
pub const MAX_JSON: usize = 1 << 20;
/// Largest raw body (a file upload, a stdin write).
pub const MAX_RAW: usize = files::MAX_FILE;

/// How long streams get to end after a shutdown signal before the daemon exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Who reaches the API, and so how callers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The host's root on the unix socket.
    Unix,
    /// Anyone who can reach the TCP port, with an API key or a sandbox access token.
    Tcp,
}

/// What every handler gets.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub mgr: Arc<Manager>,
    pub surface: Surface,
    /// Turns true when the daemon shuts down; streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// The web console's signed-in browsers (TCP only).
    pub console: Arc<console::Sessions>,
}

/// Every route, as `(method, path)` in axum's syntax, which is also OpenAPI's. The
/// OpenAPI document and the router are both checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/sandboxes"),
    ("GET", "/v1/sandboxes"),
    ("GET", "/v1/sandboxes/{key}"),
    ("DELETE", "/v1/sandboxes/{key}"),
    ("POST", "/v1/sandboxes/{key}/pause"),
    ("POST", "/v1/sandboxes/{key}/ports/{port}/link"),
    ("POST", "/v1/sandboxes/{key}/fork"),
    ("POST", "/v1/sandboxes/{key}/resume"),
    ("POST", "/v1/sandboxes/{key}/stop"),
    ("POST", "/v1/sandboxes/{key}/start"),
    ("POST", "/v1/sandboxes/{key}/timeout"),
    ("PUT", "/v1/sandboxes/{key}/egress"),
    ("GET", "/v1/sandboxes/{key}/logs"),
    ("GET", "/v1/sandboxes/{key}/metrics"),
    ("POST", "/v1/sandboxes/{key}/exec"),
    ("GET", "/v1/sandboxes/{key}/processes"),
    ("POST", "/v1/sandboxes/{key}/processes/{pid}/signal"),
    ("POST", "/v1/sandboxes/{key}/processes/{pid}/stdin"),
    ("POST", "/v1/sandboxes/{key}/processes/{pid}/resize"),
    ("GET", "/v1/sandboxes/{key}/processes/{pid}/attach"),
    ("GET", "/v1/sandboxes/{key}/files"),
    ("PUT", "/v1/sandboxes/{key}/files"),
    ("DELETE", "/v1/sandboxes/{key}/files"),
    ("GET", "/v1/sandboxes/{key}/files/stat"),
    ("GET", "/v1/sandboxes/{key}/files/list"),
    ("POST", "/v1/sandboxes/{key}/files/mkdir"),
    ("POST", "/v1/sandboxes/{key}/files/rename"),
    ("GET", "/v1/sandboxes/{key}/pty"),
    ("POST", "/v1/sandboxes/{key}/processes/{pid}/share"),
    ("GET", "/v1/sandboxes/{key}/shares"),
    ("DELETE", "/v1/sandboxes/{key}/shares/{id}"),
    ("GET", "/v1/shared/{token}"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/heartbeat"),
    ("POST", "/v1/sessions/{id}/detach"),
    ("POST", "/v1/sessions/{id}/release"),
    ("GET", "/v1/events"),
    ("POST", "/v1/gc"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys"),
    ("DELETE", "/v1/keys/{id}"),
    ("GET", "/v1/pools"),
    ("POST", "/v1/pools"),
    ("GET", "/v1/templates"),
    ("GET", "/v1/templates/{name}"),
    ("DELETE", "/v1/templates/{name}"),
    ("POST", "/v1/templates/import"),
    ("POST", "/v1/templates/upload"),
    ("POST", "/v1/templates/build"),
    ("POST", "/v1/templates/gc"),
    ("POST", "/v1/sandboxes/{key}/snapshot"),
    ("GET", "/v1/disk"),
    ("GET", "/v1/backends"),
    ("POST", "/v1/ssh-keys"),
    ("GET", "/v1/ssh-keys"),
    ("DELETE", "/v1/ssh-keys/{fingerprint}"),
    ("GET", "/v1/volumes"),
    ("GET", "/v1/volumes/{owner}"),
    ("DELETE", "/v1/volumes/{owner}"),
    ("POST", "/v1/volumes/{owner}/resize"),
    ("GET", "/v1/tenants"),
    ("DELETE", "/v1/tenants/{name}"),
];

/// Routes served on the unix socket only.
pub const UNIX_ONLY: &[(&str, &str)] = &[
    ("POST", "/v1/keys"),
    ("POST", "/v1/templates/import"),
    ("POST", "/v1/templates/gc"),
    ("GET", "/v1/tenants"),
    ("DELETE", "/v1/tenants/{name}"),
];

/// The API for one surface. Streams it serves never see a shutdown; [`serve`] builds
/// routers whose streams end when the daemon stops.
pub fn router(mgr: Arc<Manager>, surface: Surface) -> Router {
    let (_, shutdown) = watch::channel(false);
    build(AppState {
        mgr,
        surface,
        shutdown,
        console: console::sessions(),
    })
}

fn build(state: AppState) -> Router {
    let raw = DefaultBodyLimit::max(MAX_RAW);
    let mut r = Router::new()
        .route("/health", get(sandboxes::health))
        .route("/metrics", get(sandboxes::metrics))
        .route("/openapi.json", get(sandboxes::openapi))
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{key}",
            get(sandboxes::get).delete(sandboxes::terminate),
        )
        .route("/v1/sandboxes/{key}/pause", post(sandboxes::pause))
        .route(
            "/v1/sandboxes/{key}/ports/{port}/link",
            post(sandboxes::port_link),
        )
        .route("/v1/sandboxes/{key}/fork", post(sandboxes::fork))
        .route("/v1/sandboxes/{key}/metrics", get(sandboxes::usage_history))
        .route("/v1/sandboxes/{key}/resume", post(sandboxes::resume))
        .route("/v1/sandboxes/{key}/stop", post(sandboxes::stop))
        .route("/v1/sandboxes/{key}/start", post(sandboxes::start))
        .route("/v1/sandboxes/{key}/timeout", post(sandboxes::set_timeout))
        .route(
            "/v1/sandboxes/{key}/egress",
            axum::routing::put(sandboxes::set_egress),
        )
        .route("/v1/sandboxes/{key}/logs", get(sandboxes::logs))
        .route("/v1/sandboxes/{key}/exec", post(exec::exec))
        .route("/v1/sandboxes/{key}/processes", get(exec::list))
        .route(
            "/v1/sandboxes/{key}/processes/{pid}/signal",
            post(exec::signal),
        )
        .route(
            "/v1/sandboxes/{key}/processes/{pid}/stdin",
            post(exec::stdin).layer(raw),
        )
        .route(
            "/v1/sandboxes/{key}/processes/{pid}/resize",
            post(exec::resize),
        )
        .route(
            "/v1/sandboxes/{key}/processes/{pid}/attach",
            get(exec::attach),
        )
        .route(
            "/v1/sandboxes/{key}/files",
            get(files::read)
                .put(files::write)
                .layer(raw)
                .delete(files::remove),
        )
        .route("/v1/sandboxes/{key}/files/stat", get(files::stat))
        .route("/v1/sandboxes/{key}/files/list", get(files::list))
        .route("/v1/sandboxes/{key}/files/mkdir", post(files::mkdir))
        .route("/v1/sandboxes/{key}/files/rename", post(files::rename))
        .route("/v1/sandboxes/{key}/pty", get(exec::pty))
        .route(
            "/v1/sandboxes/{key}/processes/{pid}/share",
            post(share::create),
        )
        .route("/v1/sandboxes/{key}/shares", get(share::list))
        .route("/v1/sandboxes/{key}/shares/{id}", delete(share::revoke))
        .route("/v1/shared/{token}", get(share::join))
        .route("/v1/sessions", post(sessions::open).get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::get))
        .route("/v1/sessions/{id}/heartbeat", post(sessions::heartbeat))
        .route("/v1/sessions/{id}/detach", post(sessions::detach))
        .route("/v1/sessions/{id}/release", post(sessions::release))
        .route("/v1/events", get(sandboxes::events))
        .route("/v1/gc", post(sandboxes::gc))
        // POST is refused inside on TCP: GET shares the path.
        .route(
            "/v1/keys",
            post(sandboxes::create_key).get(sandboxes::list_keys),
        )
        .route("/v1/keys/{id}", delete(sandboxes::revoke_key))
        .route("/v1/templates", get(templates::list))
        .route("/v1/templates/build", post(templates::build))
        // Unix socket only, refused inside: on TCP `{name}` would match them.
        .route("/v1/templates/import", post(templates::import))
        .route("/v1/templates/gc", post(templates::gc))
        // The archive is counted by the engine, against a limit of its own.
        .route(
            "/v1/templates/upload",
            post(templates::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/templates/{name}",
            get(templates::get).delete(templates::remove),
        )
        .route("/v1/sandboxes/{key}/snapshot", post(templates::snapshot))
        .route("/v1/disk", get(templates::disk))
        .route("/v1/backends", get(sandboxes::backends))
        .route("/v1/ssh-keys", post(ssh_keys::add).get(ssh_keys::list))
        .route("/v1/ssh-keys/{fingerprint}", delete(ssh_keys::remove))
        .route("/v1/volumes", get(volumes::list))
        .route(
            "/v1/volumes/{owner}",
            get(volumes::get).delete(volumes::remove),
        )
        .route("/v1/volumes/{owner}/resize", post(volumes::resize))
        // Unix socket only, refused inside before any key is read.
        .route("/v1/tenants", get(tenants::list))
        .route("/v1/tenants/{name}", delete(tenants::remove))
        .route("/v1/pools", get(pools::list).post(pools::set));
    if state.surface == Surface::Tcp {
        r = r
            .route("/", get(console::root))
            .route("/console/", get(console::page))
            .route("/console/{*file}", get(console::asset))
            .route(
                "/console/session",
                post(console::sign_in)
                    .get(console::whoami)
                    .delete(console::sign_out),
            );
    }
    let mgr = state.mgr.clone();
    let surface = state.surface;
    let api = r
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON))
        .layer(axum::middleware::from_fn(drain::drain_unread))
        .layer(axum::middleware::from_fn(reqlog::log_request))
        .with_state(state);
    match surface {
        Surface::Unix => api,
        Surface::Tcp => with_port_hosts(api, mgr),
    }
}

/// The TCP listener's router: a request whose `Host` is `PORT-ID.DOMAIN` is traffic to
/// that sandbox's port (for a browser with a port link: see [`e2b::ports`]), every other
/// one the API's.
fn with_port_hosts(api: Router, mgr: Arc<Manager>) -> Router {
    let ports = Router::new()
        .fallback(port_traffic)
        .layer(axum::middleware::from_fn(drain::drain_unread))
        .layer(axum::middleware::from_fn(reqlog::log_port_request))
        .with_state(mgr);
    Router::new().fallback(move |req: axum::extract::Request| async move {
        let to = if e2b::host_target(req.headers()).is_some() {
            ports
        } else {
            api
        };
        match tower::ServiceExt::oneshot(to, req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    })
}

async fn port_traffic(
    axum::extract::State(mgr): axum::extract::State<Arc<Manager>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let Some(t) = e2b::host_target(req.headers()) else {
        return Error::not_found("no sandbox port is named by this host").into_response();
    };
    reqlog::note_route(req.extensions(), &format!("port {}", t.port));
    e2b::ports::proxy(&mgr, t, e2b::ports::Door::Listener, req).await
}

pub(crate) fn no_route(method: &str, path: &str) -> Error {
    if UNIX_ONLY.iter().any(|(m, p)| *m == method && *p == path) {
        // Documented as such: saying so tells a TCP caller nothing it could not read.
        return Error::not_found(format!(
            "no route {method} {path} over TCP: it is served on the daemon's unix socket \
             only (as the host's root: `warren` on the daemon's host)"
        ));
    }
    Error::not_found(format!("no route {method} {path}"))
}

async fn fallback(method: Method, uri: Uri) -> Error {
    no_route(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::new(
        WireCode::MethodNotAllowed,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Resolves once `rx` turns true; never, if its sender is gone without that.
pub(crate) async fn shutting_down(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Binds the unix socket: a missing parent directory is made 0700, a stale socket from a
/// dead daemon is replaced (a live one is an error), and the socket is 0600.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another daemon is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API on `unix_socket` and, if given, on `tcp`, until SIGINT or SIGTERM.
/// Then it stops accepting, ends its streams, waits for them a little, and returns:
/// sandboxes keep running, and the next daemon re-adopts them.
pub async fn serve(
    mgr: Arc<Manager>,
    unix_socket: PathBuf,
    tcp: Option<SocketAddr>,
) -> io::Result<()> {
    serve_with(mgr, unix_socket, tcp, None, None, Limits::default(), || ()).await
}

/// Where and how to serve the E2B API.
#[derive(Debug, Clone)]
pub struct E2bListener {
    pub addr: SocketAddr,
    pub options: e2b::E2bOptions,
    /// TLS on it (see [`tls`]); plain HTTP without.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// [`serve`], plus the E2B API ([`e2b`]) on `e2b` when given, with the TCP listeners'
/// connections bounded by `limits` (fitted under the limit on open files, which is
/// raised to its hard value first). `ready` runs once every listener is bound; a
/// listener that cannot be bound is named in the error, and leaves no socket file.
pub async fn serve_with(
    mgr: Arc<Manager>,
    unix_socket: PathBuf,
    tcp: Option<SocketAddr>,
    e2b: Option<E2bListener>,
    ssh: Option<ssh::SshListener>,
    limits: Limits,
    ready: impl FnOnce(),
) -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let open_files = warren_sys::fd::raise_open_files_limit()?;
    let limits = limits.fitted(
        open_files,
        usize::from(tcp.is_some()) + usize::from(e2b.is_some()),
    );
    let listen = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))
    };
    // TCP first: a taken port leaves no unix socket behind.
    let tcp = match tcp {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    let e2b = match e2b {
        Some(l) => Some((listen(l.addr).await?, l.options, l.tls)),
        None => None,
    };
    let ssh = match ssh {
        Some(l) => Some((listen(l.addr).await?, ssh::host_key(&l.host_key)?)),
        None => None,
    };
    let unix = bind_unix(&unix_socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("listen on {}: {e}", unix_socket.display()),
        )
    })?;
    ready();
    let (stop, shutdown) = watch::channel(false);
    let sessions = console::sessions();
    let app = |surface| {
        build(AppState {
            mgr: mgr.clone(),
            surface,
            shutdown: shutdown.clone(),
            console: sessions.clone(),
        })
    };
    let mut servers = JoinSet::new();
    servers.spawn(
        axum::serve(unix, app(Surface::Unix))
            .with_graceful_shutdown(shutting_down(shutdown.clone()))
            .into_future(),
    );
    if let Some(tcp) = tcp {
        servers.spawn(conn::serve(
            tcp,
            app(Surface::Tcp),
            limits,
            false,
            None,
            shutdown.clone(),
        ));
    }
    if let Some((listener, options, tls)) = e2b {
        servers.spawn(conn::serve(
            listener,
            e2b::router(mgr.clone(), shutdown.clone(), options),
            limits,
            true,
            tls,
            shutdown.clone(),
        ));
    }
    if let Some((listener, key)) = ssh {
        let st = AppState {
            mgr: mgr.clone(),
            surface: Surface::Tcp,
            shutdown: shutdown.clone(),
            console: sessions.clone(),
        };
        servers.spawn(ssh::serve(listener, st, key, shutdown.clone()));
    }
    let early = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        r = servers.join_next() => r,
    };
    let _ = stop.send(true);
    let result = match early {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(io::Error::other(e)),
        _ => Ok(()),
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    servers.abort_all();
    // Nothing the daemon made is left half removed behind it.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, mgr.settle()).await;
    let _ = std::fs::remove_file(&unix_socket);
    result
}
