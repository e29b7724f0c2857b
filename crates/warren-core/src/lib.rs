//! Warren's lifecycle engine: what a sandbox is at every moment, kept in the store, and
//! what changes it: API calls, timeouts, crashes.
//!
//! The [`Manager`] is what the HTTP server (and any embedding application) talks to. It
//! never sees HTTP: it takes a [`Caller`] (the tenant an API key or token belongs to) and
//! typed requests, and answers with typed results or a [`CoreError`] whose `code()` is the
//! stable code clients see.
//!
//! State machine (every transition is committed to the store before it is acknowledged):
//!
//! ```text
//! creating → running ⇄ paused
//! running | paused → stopping → stopped (processes gone, files kept) → running
//! any → terminated (files gone; the name is free again)
//! ```
//!
//! Sandboxes outlive the daemon: their helpers run in sessions of their own. When the
//! daemon starts, [`Manager::open`] re-adopts every sandbox whose helper is alive, and
//! cleans up those half-made or whose processes died meanwhile.

mod metrics;
pub mod policy;
mod session;
mod share;
pub mod store;
mod templates;
mod time;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use warren_runtime::client::AgentClient;
use warren_runtime::namespace::CreateOptions;
use warren_runtime::{Backend, Backends, Instance, NamespaceBackend};
use warren_types::api::{
    CreateSandbox, Event, PoolInfo, PoolSpec, ResourceRequest, SandboxInfo, SandboxState,
    SetTimeout, TimeoutAction, WireCode,
};
use warren_types::spec::Isolation;
use warren_types::spec::{Resources, SandboxSpec, VolumeMount};

pub use crate::share::Guest;
pub use crate::store::{Record, Store, StoreError};
pub use crate::templates::{
    BuildEvent, BuildTemplate, DiskUsage, HostDisk, ImportResult, ImportTemplate, LayerGcResult,
    SnapshotRequest, SnapshotResult, TemplateInfo, UsageRow,
};
pub use crate::time::{now_ms, rfc3339};
use crate::tokens::{Keyring, TokenKind, TokenRef};
pub use warren_runtime::Paths;

/// Errors of the engine, each with a stable code (see [`CoreError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no sandbox {0:?}")]
    NotFound(String),
    #[error("no template {0:?}; `warren template ls` lists them")]
    TemplateNotFound(String),
    /// A sandbox asked for a template that does not exist (or is another tenant's
    /// snapshot): a bad request, not a missing resource.
    #[error("unknown template {0:?}; `warren template ls` lists them")]
    UnknownTemplate(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("a sandbox named {0:?} already exists for this owner; pick another name or pass get_or_create")]
    NameTaken(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the sandbox could not be made: {0}")]
    Backend(String),
    #[error("the sandbox's agent: {0}")]
    Agent(#[from] warren_runtime::client::ClientError),
    #[error("{0}")]
    NoSpace(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Random(#[from] warren_types::random::RandomError),
    /// A tenant's quota would be passed.
    #[error("{0}")]
    Quota(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            return Self::NoSpace(
                "the daemon's data directory is full; free space there and retry".into(),
            );
        }
        Self::Store(e)
    }
}

impl From<warren_runtime::Error> for CoreError {
    /// A backend's failure: a full disk and a bad request keep their kinds, anything else
    /// is the backend's failing.
    fn from(e: warren_runtime::Error) -> Self {
        use warren_runtime::Error as E;
        match e {
            E::NoSpace { why, .. } => Self::NoSpace(why),
            E::Invalid { .. } | E::Image(_) | E::Unavailable { .. } => Self::Invalid(e.to_string()),
            E::Random(r) => Self::Random(r),
            e => Self::Backend(e.to_string()),
        }
    }
}

impl CoreError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> WireCode {
        match self {
            Self::NotFound(_) | Self::TemplateNotFound(_) => WireCode::NotFound,
            Self::InvalidState(_) => WireCode::InvalidState,
            Self::UnknownTemplate(_) | Self::Invalid(_) => WireCode::InvalidRequest,
            Self::NameTaken(_) => WireCode::NameTaken,
            Self::Backend(_) => WireCode::BackendFailed,
            Self::Agent(_) => WireCode::AgentError,
            Self::NoSpace(_) => WireCode::NoSpace,
            Self::Store(_) => WireCode::StoreError,
            Self::Random(_) => WireCode::Unavailable,
            Self::Quota(_) => WireCode::QuotaExceeded,
        }
    }

    /// An I/O failure of the engine's own doing `what`: a full disk is told apart as the
    /// backend's failures are.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        warren_runtime::Error::io(what, source).into()
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Why traffic to a sandbox's port was not let through.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no such sandbox")]
    NoSandbox,
    #[error("the traffic token is missing or wrong")]
    Token,
    #[error("the sandbox is {}", .0.as_str())]
    NotRunning(SandboxState),
    #[error("nothing accepts connections on that port: {0}")]
    Closed(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Longest wait for a sandbox's port to accept a connection.
const PORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is asking: a tenant sees and touches only its own sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// Set when the caller authenticated with one sandbox's access token: it may act on
    /// that sandbox only.
    pub only_sandbox: Option<String>,
    /// The host's operator (root on the unix socket, or an operator key): no quota, any
    /// host port, the whole host's metrics, templates for every tenant.
    pub operator: bool,
}

impl Caller {
    /// A tenant's caller.
    pub fn tenant(name: &str) -> Self {
        Self {
            tenant: name.to_string(),
            only_sandbox: None,
            operator: false,
        }
    }

    /// The operator, acting in tenant `name`.
    pub fn operator(name: &str) -> Self {
        Self {
            operator: true,
            ..Self::tenant(name)
        }
    }
}

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub paths: Paths,
    /// The `warren` binary, which the backend runs as the sandbox helper.
    pub exe: PathBuf,
    /// How often timeouts and activity are checked.
    pub reaper_interval: Duration,
    /// CPU use (fraction of one core, averaged over a reaper interval) above which a
    /// sandbox counts as active even with no client.
    pub busy_cpu_fraction: f64,
    /// Defaults, maxima and quotas.
    pub policy: policy::Policy,
    /// How often the disk each sandbox takes is measured.
    pub disk_interval: Duration,
    /// The backend of a request that names none.
    pub isolation: Isolation,
    /// Which runsc the gvisor backend uses, and how.
    pub gvisor: Option<warren_runtime::gvisor::GvisorConfig>,
    /// The process backend (trust mode): off unless set.
    pub process: Option<warren_runtime::process::ProcessConfig>,
    /// Tenants other than the operator's that may ask for the process backend.
    pub process_tenants: Vec<String>,
}

impl Config {
    pub fn new(paths: Paths, exe: PathBuf) -> Self {
        Self {
            paths,
            exe,
            reaper_interval: Duration::from_secs(1),
            busy_cpu_fraction: 0.02,
            policy: policy::Policy::default(),
            disk_interval: Duration::from_secs(30),
            isolation: Isolation::Namespace,
            gvisor: None,
            process: None,
            process_tenants: Vec::new(),
        }
    }
}

/// A filter for [`Manager::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub owner: Option<String>,
    pub state: Option<SandboxState>,
    /// Every pair must match.
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

/// A running (or paused) sandbox's runtime side.
struct Live {
    sandbox: Box<dyn Instance>,
    streams: Arc<AtomicUsize>,
    last_cpu_us: u64,
}

/// Keeps a sandbox counted as active while held (an attached terminal or a stream).
#[derive(Debug)]
pub struct ActivityGuard(Arc<AtomicUsize>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A configured pool and its counters.
#[derive(Debug)]
struct Pool {
    spec: PoolSpec,
    key: String,
    /// Members being made right now.
    filling: Arc<AtomicUsize>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The event kind that records a termination under way.
const TERMINATING: &str = "terminating";

/// How long a terminated sandbox's record and events are kept (`warren logs` of a
/// sandbox removed today still works).
const KEEP_TERMINATED_MS: i64 = 24 * 3600 * 1000;
/// How often the reaper looks for records to forget.
const PRUNE_EVERY_MS: i64 = 10 * 60 * 1000;

/// Runs a future to completion on a thread of its own: `recover` runs inside `open`,
/// on the caller's runtime, and must finish a teardown before it goes on.
fn block_on_own_thread<F: std::future::Future + Send + 'static>(f: F) -> Option<F::Output>
where
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .map(|rt| rt.block_on(f))
    })
    .join()
    .ok()
    .flatten()
}

/// The tenant and owner of warm pool members; `@` cannot start a real tenant's name.
const POOL_TENANT: &str = "@pool";

/// Most copies one fork makes.
const MAX_FORKS: usize = 16;

/// A pool's identity: its template, the whole of its resources (every limit, including
/// any added later, without listing them here) and its network.
/// What makes two warm sandboxes interchangeable: a pool hands a member only to a
/// request of exactly this profile. Every field of it is part of the key.
#[derive(serde::Serialize)]
struct Profile<'a> {
    template: &'a str,
    resources: &'a Resources,
    network: warren_types::spec::NetworkMode,
    isolation: Isolation,
}

fn pool_key(
    template: &str,
    resources: &Resources,
    network: warren_types::spec::NetworkMode,
    isolation: Isolation,
) -> String {
    serde_json::to_string(&Profile {
        template,
        resources,
        network,
        isolation,
    })
    .expect("a profile serializes")
}

/// A caller's live view of lifecycle events (see [`Manager::subscribe`]).
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<(String, Event)>,
    who: Caller,
}

impl EventStream {
    /// The next event of the caller's sandboxes; `None` once the manager is gone. A
    /// reader too slow to keep up skips events rather than holding the daemon's memory.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok((tenant, ev)) => {
                    let mine = tenant == self.who.tenant
                        && self
                            .who
                            .only_sandbox
                            .as_ref()
                            .is_none_or(|o| *o == ev.sandbox);
                    if mine {
                        return Some(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The lifecycle engine.
pub struct Manager {
    /// Reaper passes so far.
    passes: AtomicU64,
    /// A walk of the sandboxes' disks is under way (see [`Manager::measure_disks`]).
    measuring: AtomicBool,
    /// When the reaper last forgot long-terminated sandboxes (ms).
    pruned_at: std::sync::atomic::AtomicI64,
    pools: Mutex<Vec<Arc<Pool>>>,
    shares: Mutex<Vec<Arc<share::Share>>>,
    backends: Backends,
    store: Mutex<Store>,
    live: Mutex<HashMap<String, Live>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<(String, Event)>,
    metrics: metrics::Metrics,
    /// Held while a create checks its tenant's quota and records itself.
    quota_lock: Mutex<()>,
    /// The disk each sandbox takes, as the reaper last measured it.
    disk_cache: Mutex<HashMap<String, u64>>,
    /// Template builds running, per tenant.
    builds: Mutex<HashMap<String, u32>>,
    /// Derives the sandboxes' tokens (see [`tokens`]).
    keys: Keyring,
    config: Config,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("paths", &self.config.paths)
            .finish_non_exhaustive()
    }
}

/// The name of the home volume of `owner` in `tenant`: a hash, so that any owner name
/// makes a safe path, and two tenants' owners of one name never share.
fn home_volume_name(tenant: &str, owner: &str) -> String {
    let key = sha256_hex(&format!("{tenant}\0{owner}"));
    format!("home-{}", &key[..24])
}

/// `secs` seconds after the Unix-millisecond time `ms`, saturating rather than
/// overflowing on absurd inputs.
fn after(ms: i64, secs: u64) -> i64 {
    ms.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
}

fn random_hex(bytes: usize) -> Result<String> {
    Ok(warren_types::random::hex(bytes)?)
}

use crate::tokens::sha256_hex;

/// Whether `s` can name an owner, a tenant or a session's client: 1-128 letters, digits
/// and `- _ . @ +`, and not `.` or `..` (which a path or a URL would read otherwise).
pub fn valid_owner(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
        && s != "."
        && s != ".."
}

impl Manager {
    /// Opens the store under the data directory, re-adopts live sandboxes, cleans up
    /// the rest, and starts the reaper.
    pub async fn open(config: Config) -> Result<Arc<Self>> {
        config
            .paths
            .secure()
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let store = Store::open(&config.paths.data.join("warren.db"))?;
        let keys = Keyring::load_or_create(&config.paths.data.join("secret"))?;
        let namespace = NamespaceBackend::new(config.paths.clone(), config.exe.clone())
            .map_err(CoreError::from)?;
        let process = warren_runtime::process::ProcessBackend::new(
            config.paths.clone(),
            config.exe.clone(),
            config.process.clone(),
        )
        .map_err(CoreError::from)?;
        let gvisor = warren_runtime::gvisor::GvisorBackend::new(
            config.paths.clone(),
            config.exe.clone(),
            config.gvisor.clone(),
        )
        .map_err(CoreError::from)?;
        let backends = Backends::new(vec![
            Arc::new(namespace),
            Arc::new(gvisor),
            Arc::new(process),
        ]);
        let (events, _) = broadcast::channel(1024);
        let mgr = Arc::new(Self {
            passes: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            pruned_at: std::sync::atomic::AtomicI64::new(0),
            pools: Mutex::new(Vec::new()),
            shares: Mutex::new(Vec::new()),
            backends,
            store: Mutex::new(store),
            live: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            events,
            metrics: metrics::Metrics::default(),
            quota_lock: Mutex::new(()),
            disk_cache: Mutex::default(),
            builds: Mutex::default(),
            keys,
            config,
        });
        mgr.recover()?;
        let weak = Arc::downgrade(&mgr);
        let interval = mgr.config.reaper_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(mgr) = weak.upgrade() else { break };
                mgr.refill_pools();
                let every = (mgr.config.disk_interval.as_millis() / interval.as_millis().max(1))
                    .max(1) as u64;
                if mgr
                    .passes
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(every)
                    && !mgr.measuring.swap(true, Ordering::AcqRel)
                {
                    // A walk of a large layer takes seconds: on a thread of its own, so
                    // it holds up neither the runtime's workers nor the next pass.
                    let m = mgr.clone();
                    tokio::task::spawn_blocking(move || {
                        m.measure_disks();
                        m.measuring.store(false, Ordering::Release);
                    });
                }
                mgr.reap().await;
                mgr.reap_sessions().await;
            }
        });
        Ok(mgr)
    }

    /// The backend of `kind`, when this host has it.
    fn backend(&self, kind: Isolation) -> Result<&Arc<dyn Backend>> {
        self.backends.get(kind).map_err(CoreError::from)
    }

    /// Every isolation backend of this daemon: whether it is available and what it offers.
    pub fn backends(&self) -> Vec<warren_types::api::BackendInfo> {
        self.backends.infos()
    }

    /// Takes over a recorded sandbox after a restart.
    fn adopt(&self, r: &Record) -> Option<Box<dyn Instance>> {
        self.backend(r.spec.isolation).ok()?.adopt(&r.id)
    }

    /// Removes what is left of a recorded sandbox whose monitor died.
    fn purge(&self, r: &Record, remove_data: bool) {
        if let Ok(b) = self.backend(r.spec.isolation) {
            b.purge(&r.id, remove_data);
        }
    }

    /// Deletes a recorded sandbox's kept files.
    async fn remove_data(&self, r: &Record) -> Result<()> {
        self.backend(r.spec.isolation)?
            .remove_data(&r.id)
            .await
            .map_err(CoreError::from)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn event(&self, r: &Record, kind: &str, message: impl Into<String>) {
        let message = message.into();
        let time = now_ms();
        let _ = self.store().add_event(&store::EventRow {
            time,
            sandbox: r.id.clone(),
            owner: r.owner.clone(),
            kind: kind.into(),
            message: message.clone(),
        });
        let _ = self.events.send((
            r.tenant.clone(),
            Event {
                time: rfc3339(time),
                sandbox: r.id.clone(),
                owner: r.owner.clone(),
                kind: kind.into(),
                message,
            },
        ));
    }

    /// Re-adopts what runs, cleans up what was half made or died while we were down.
    fn recover(&self) -> Result<()> {
        let records = self.store().list_live(None)?;
        for r in records {
            match r.state {
                SandboxState::Creating => {
                    self.purge(&r, true);
                    self.store().set_state(&r.id, SandboxState::Terminated)?;
                    self.event(
                        &r,
                        "failed",
                        "the daemon stopped while creating it; removed",
                    );
                }
                SandboxState::Stopping if self.was_terminating(&r.id) => {
                    if let Some(sb) = self.adopt(&r) {
                        let _ = block_on_own_thread(sb.destroy());
                    }
                    self.purge(&r, true);
                    self.store().set_state(&r.id, SandboxState::Terminated)?;
                    self.event(&r, "terminated", "finished after the daemon restarted");
                }
                SandboxState::Running | SandboxState::Paused | SandboxState::Stopping => {
                    match self.adopt(&r) {
                        Some(sb) => {
                            let mut frozen = sb.is_paused();
                            // Frozen while recorded as running: by an operation the
                            // daemon died in (a snapshot's copy, or a pause it had not
                            // yet recorded). Nobody was told it is paused, so it is not.
                            if frozen && r.state == SandboxState::Running && sb.resume().is_ok() {
                                frozen = false;
                            }
                            let state = if frozen {
                                SandboxState::Paused
                            } else {
                                SandboxState::Running
                            };
                            self.store().set_state(&r.id, state)?;
                            self.live().insert(
                                r.id.clone(),
                                Live {
                                    last_cpu_us: sb.usage().cpu_us,
                                    sandbox: sb,
                                    streams: Arc::default(),
                                },
                            );
                            self.event(&r, "adopted", format!("re-adopted as {}", state.as_str()));
                        }
                        None => {
                            self.purge(&r, false);
                            self.store().set_state(&r.id, SandboxState::Stopped)?;
                            self.event(
                                &r,
                                "failed",
                                "its processes were gone when the daemon started; stopped, files kept",
                            );
                        }
                    }
                }
                SandboxState::Stopped | SandboxState::Terminated => {}
            }
        }
        Ok(())
    }

    /// Whether the last thing recorded of a sandbox is the start of its termination.
    fn was_terminating(&self, id: &str) -> bool {
        self.store()
            .events_of(id, 1)
            .ok()
            .and_then(|e| e.into_iter().next())
            .is_some_and(|e| e.kind == TERMINATING)
    }

    /// A new API key for `tenant` (created if new), an operator's when `operator` (see
    /// [`Caller::operator`]). Only its hash is stored: the key is shown this once.
    pub fn create_api_key(&self, tenant: &str, operator: bool) -> Result<String> {
        if !valid_owner(tenant) || tenant.starts_with('@') {
            return Err(CoreError::Invalid(format!(
                "tenant {tenant:?}: use letters, digits and - _ . @ +, not starting with @"
            )));
        }
        let key = format!("wrn_{}", random_hex(24)?);
        self.store()
            .add_api_key(&sha256_hex(&key), tenant, operator, now_ms())?;
        Ok(key)
    }

    /// The caller an API key stands for.
    pub fn authenticate(&self, api_key: &str) -> Option<Caller> {
        let (tenant, operator) = self.store().tenant_of_key(&sha256_hex(api_key)).ok()??;
        Some(Caller {
            operator,
            ..Caller::tenant(&tenant)
        })
    }

    /// A caller limited to sandbox `id`, if `token` is its access token.
    pub fn authenticate_sandbox(&self, id: &str, token: &str) -> Option<Caller> {
        let r = self.store().get(id).ok()??;
        if r.state == SandboxState::Terminated
            || !self.keys.verify(TokenKind::Access, &r.id, &r.access, token)
        {
            return None;
        }
        Some(Caller {
            tenant: r.tenant,
            only_sandbox: Some(r.id),
            operator: false,
        })
    }

    /// Opens a TCP connection to `port` inside sandbox `id`, for traffic to its ports
    /// through the daemon, if `token` is what the sandbox requires (nothing, or its
    /// traffic token). A sandbox that does not exist and a wrong token are told apart
    /// only by the caller's having the right token.
    pub async fn connect_port(
        &self,
        id: &str,
        port: u16,
        token: Option<&str>,
    ) -> Result<(tokio::net::TcpStream, Option<ActivityGuard>), PortError> {
        let r = self
            .store()
            .get(id)?
            .filter(|r| r.state != SandboxState::Terminated)
            .ok_or(PortError::NoSandbox)?;
        if let Some(want) = &r.traffic {
            if !token.is_some_and(|t| self.keys.verify(TokenKind::Traffic, &r.id, want, t)) {
                return Err(PortError::Token);
            }
        }
        if r.state != SandboxState::Running {
            return Err(PortError::NotRunning(r.state));
        }
        let dial = self
            .with_live(&r.id, |l| l.sandbox.port_dialer())
            .map_err(|_| PortError::NotRunning(r.state))?;
        let _ = self.store().touch(&r.id, now_ms());
        let stream = tokio::task::spawn_blocking(move || dial(port, PORT_CONNECT_TIMEOUT))
            .await
            .map_err(|e| PortError::Closed(std::io::Error::other(e.to_string())))?
            .map_err(PortError::Closed)?;
        stream.set_nonblocking(true).map_err(PortError::Closed)?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(PortError::Closed)?;
        Ok((stream, self.hold_activity(&r.id)))
    }

    /// Finds a sandbox by id, `owner/name`, or name (of the owner named like the tenant).
    fn resolve(&self, who: &Caller, key: &str) -> Result<Record> {
        let not_found = || CoreError::NotFound(key.to_string());
        let store = self.store();
        let r = match store.get(key)? {
            Some(r) => Some(r),
            None => {
                let (owner, name) = key.split_once('/').unwrap_or((&who.tenant, key));
                store.by_name(&who.tenant, owner, name)?
            }
        };
        let r = r.ok_or_else(not_found)?;
        let visible = r.tenant == who.tenant
            && who.only_sandbox.as_ref().is_none_or(|only| *only == r.id)
            && r.state != SandboxState::Terminated;
        if !visible {
            return Err(not_found());
        }
        Ok(r)
    }

    /// A sandbox as the API shows it. Its tokens are in it only when `tokens`: in the
    /// answer that makes (or, with `get_or_create`, finds) it.
    fn info_with(&self, r: &Record, tokens: bool) -> SandboxInfo {
        let res = &r.spec.resources;
        SandboxInfo {
            id: r.id.clone(),
            owner: r.owner.clone(),
            name: r.name.clone(),
            template: warren_runtime::template::display_name(&r.spec.template).to_string(),
            state: r.state,
            resources: ResourceRequest {
                memory: res.memory,
                cpu_millis: res.cpu_millis,
                pids: res.pids,
                disk: res.disk,
            },
            network: r.spec.network,
            publish: r.spec.publish.clone(),
            isolation: r.spec.isolation,
            labels: r.labels.clone(),
            metadata: r.metadata.clone(),
            created_at: rfc3339(r.created_at),
            last_active_at: rfc3339(r.last_active_at),
            expires_at: r.expires_at.map(rfc3339),
            idle_timeout_secs: r.idle_timeout_secs,
            on_timeout: r.on_timeout,
            access_token: tokens
                .then(|| self.keys.token(TokenKind::Access, &r.id, &r.access))
                .flatten(),
            traffic_token: tokens
                .then(|| {
                    r.traffic
                        .as_ref()
                        .and_then(|t| self.keys.token(TokenKind::Traffic, &r.id, t))
                })
                .flatten(),
        }
    }

    fn info(&self, r: &Record) -> SandboxInfo {
        self.info_with(r, false)
    }

    /// A sandbox's tokens again, for its tenant (E2B's `connect` hands them out): the
    /// access token and, when it has one, the traffic token. A sandbox made before
    /// tokens were derived has none that can be shown.
    pub fn tokens(&self, who: &Caller, key: &str) -> Result<(Option<String>, Option<String>)> {
        let r = self.resolve(who, key)?;
        let info = self.info_with(&r, true);
        Ok((info.access_token, info.traffic_token))
    }

    /// Creates a sandbox; with a name and `get_or_create`, returns the existing one
    /// (resumed or started if needed). The flag says whether a new one was made.
    pub async fn create(&self, who: &Caller, req: CreateSandbox) -> Result<(SandboxInfo, bool)> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::NotFound("sandboxes".into()));
        }
        let mut req = req;
        let name = req.template.clone().unwrap_or_else(|| "host".into());
        // From here on the template is named by where it is stored: the name `who` gave
        // resolves once, to its own or a shared one, never to another tenant's.
        let meta = self
            .resolve_template(who, &name)
            .map_err(|e| match e {
                CoreError::TemplateNotFound(_) => CoreError::UnknownTemplate(name.clone()),
                e => CoreError::Invalid(e.to_string()),
            })?
            .meta;
        // A request that names no backend gets its template's (then the daemon's).
        req.isolation = req.isolation.or(meta.isolation);
        let template = meta.key;
        let req = self.admit(who, req)?;
        let owner = req.owner.clone().unwrap_or_else(|| who.tenant.clone());
        if !valid_owner(&owner) {
            return Err(CoreError::Invalid(format!(
                "owner {owner:?}: use 1-128 letters, digits and - _ . @ + (not . or ..)"
            )));
        }
        if let Some(n) = &req.name {
            if !warren_runtime::valid_name(n) {
                return Err(CoreError::Invalid(format!(
                    "name {n:?}: use 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
        }
        if let Some(info) = self.claim_from_pool(who, &owner, &template, &req)? {
            return Ok((info, true));
        }
        // Creation with a taken name races with its creator at most this many times.
        for _ in 0..100 {
            if let (Some(name), true) = (&req.name, req.get_or_create) {
                let existing = self.store().by_name(&who.tenant, &owner, name)?;
                if let Some(r) = existing {
                    return Ok((self.bring_up(who, r).await?, false));
                }
            }
            match self.create_new(who, &owner, &template, &req).await {
                Err(CoreError::NameTaken(_)) if req.get_or_create => continue,
                other => return other.map(|i| (i, true)),
            }
        }
        Err(CoreError::InvalidState(
            "the sandbox of that name keeps changing; try again".into(),
        ))
    }

    /// Copies of a running sandbox with its processes and memory (a fork): each has its
    /// own id, tokens and writable layer, and goes on from the moment of the copy. The
    /// source keeps running. Only on a backend with memory snapshots.
    pub async fn fork(&self, who: &Caller, key: &str, count: usize) -> Result<Vec<SandboxInfo>> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::NotFound("sandboxes".into()));
        }
        if count == 0 || count > MAX_FORKS {
            return Err(CoreError::Invalid(format!(
                "count {count}: ask for 1 to {MAX_FORKS} copies"
            )));
        }
        let r = self.resolve(who, key)?;
        let backend = self.backend(r.spec.isolation)?.clone();
        if !backend.info().capabilities.memory_snapshots {
            return Err(CoreError::Invalid(format!(
                "a {} sandbox cannot be forked with its memory: use a snapshot (its files), \
                 or the gvisor backend",
                r.spec.isolation
            )));
        }
        if r.state != SandboxState::Running {
            return Err(Self::invalid(&r, "fork"));
        }
        let files = backend
            .files_of(&r.id)
            .ok_or_else(|| CoreError::Invalid("this backend keeps no files to copy".into()))?;
        let image = self.config.paths.run.join("forks").join(random_hex(8)?);
        {
            let lock = self.lock_for(&r.id);
            let _g = lock.lock().await;
            let img = image.clone();
            self.off_lock(&r.id, move |l| l.sandbox.checkpoint(&img))
                .await?
                .map_err(CoreError::from)?;
        }
        let req = CreateSandbox {
            resources: r.spec.resources.clone(),
            network: r.spec.network,
            env: r.spec.env.clone(),
            labels: r.labels.clone(),
            metadata: r.metadata.clone(),
            idle_timeout_secs: r.idle_timeout_secs,
            on_timeout: Some(r.on_timeout),
            home_volume: Some(false),
            isolation: Some(r.spec.isolation),
            timeout_secs: r
                .expires_at
                .map(|e| u64::try_from((e - now_ms()).max(1000) / 1000).unwrap_or(1)),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut failed = None;
        for _ in 0..count {
            match self
                .create_from(
                    who,
                    &r.owner,
                    &r.spec.template,
                    &req,
                    Some((&image, &files)),
                )
                .await
            {
                Ok(info) => out.push(info),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&image);
        match (failed, out.is_empty()) {
            (Some(e), true) => Err(e),
            _ => Ok(out),
        }
    }

    /// Checks a request against the policy and gives it the defaults it leaves out:
    /// nothing is recorded or made for a request refused here.
    fn admit(&self, who: &Caller, mut req: CreateSandbox) -> Result<CreateSandbox> {
        let policy = &self.config.policy;
        let isolation = req.isolation.unwrap_or(self.config.isolation);
        // A default fills in only a limit the backend enforces; one the request names
        // itself is refused below if the backend cannot hold it.
        let enforced = self.backend(isolation)?.info().capabilities.limits;
        let defaults = policy.with_defaults(&Resources::default());
        let keep = |l: &str| enforced.iter().any(|e| e == l);
        let r = &mut req.resources;
        r.memory = r.memory.or(defaults.memory.filter(|_| keep("memory")));
        r.cpu_millis = r.cpu_millis.or(defaults.cpu_millis.filter(|_| keep("cpu")));
        r.pids = r.pids.or(defaults.pids.filter(|_| keep("pids")));
        r.disk = r.disk.or(defaults.disk.filter(|_| keep("disk")));
        policy.check_resources(&req.resources, "resources")?;
        policy::check_tags("labels", &req.labels)?;
        policy::check_tags("metadata", &req.metadata)?;
        if let Some(why) = warren_types::spec::env_problem(&req.env) {
            return Err(CoreError::Invalid(why));
        }
        if !self.backend(isolation)?.info().capabilities.volumes {
            // Its home is in its own files (trust mode: its directory on the host).
            if req.home_volume == Some(true) {
                return Err(CoreError::Invalid(format!(
                    "the {isolation} backend mounts no volumes: leave home_volume out"
                )));
            }
            req.home_volume = Some(false);
        }
        if req.home_volume.unwrap_or(true) {
            let size = req.home_size.unwrap_or(policy.home_size);
            policy.check_home(size)?;
            req.home_size = Some(size);
        }
        req.publish = policy.place_ports(who, &req.publish)?;
        // Trust mode has the host's network whatever is asked; `none` is only the
        // default, which it cannot honour, so it says `host` instead of pretending.
        if isolation == Isolation::Process && req.network == warren_types::spec::NetworkMode::None {
            req.network = warren_types::spec::NetworkMode::Host;
        }
        self.check_backend(who, isolation, &req)?;
        req.isolation = Some(isolation);
        Ok(req)
    }

    /// Refuses a request the chosen backend cannot serve here, naming what it lacks.
    fn check_backend(&self, who: &Caller, kind: Isolation, req: &CreateSandbox) -> Result<()> {
        let info = self.backend(kind)?.info();
        if kind == Isolation::Process
            && !who.operator
            && !self.config.process_tenants.contains(&who.tenant)
        {
            return Err(CoreError::Invalid(format!(
                "the process backend (trust mode) is not open to tenant {:?}: the operator \
                 allows it per tenant (`[backends.process] tenants`)",
                who.tenant
            )));
        }
        if !info.capabilities.networks.contains(&req.network) {
            let offered: Vec<&str> = info
                .capabilities
                .networks
                .iter()
                .map(|n| n.as_str())
                .collect();
            return Err(CoreError::Invalid(format!(
                "the {kind} backend offers no `{}` network; it offers {}",
                req.network.as_str(),
                offered.join(", ")
            )));
        }
        let r = &req.resources;
        let asked = [
            ("memory", r.memory.is_some()),
            ("cpu", r.cpu_millis.is_some()),
            ("pids", r.pids.is_some()),
            ("disk", r.disk.is_some()),
        ];
        for (limit, set) in asked {
            if set && !info.capabilities.limits.iter().any(|l| l == limit) {
                return Err(CoreError::Invalid(format!(
                    "the {kind} backend cannot enforce a {limit} limit here; leave it out or \
                     pick another isolation (`GET /v1/backends`)"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a sandbox that would take `who`'s tenant past a quota (the operator has
    /// none). Called with the quota lock held, right before the row is written.
    fn check_quota(&self, who: &Caller, owner: &str, req: &CreateSandbox) -> Result<()> {
        if who.operator {
            return Ok(());
        }
        let live = self.store().list_live(Some(&who.tenant))?;
        let mut used = policy::Usage::default();
        let mut homes = std::collections::BTreeSet::new();
        for r in &live {
            used.sandboxes += 1;
            used.memory += r.spec.resources.memory.unwrap_or(0);
            used.disk += r.spec.resources.disk.unwrap_or(0);
            for v in r.spec.volumes.iter().filter(|v| v.target == "/home/user") {
                if homes.insert(v.name.clone()) {
                    used.disk += v.size.unwrap_or(0);
                }
            }
        }
        let home_new = req.home_volume.unwrap_or(true)
            && !homes.contains(&home_volume_name(&who.tenant, owner));
        let adding = policy::Usage {
            sandboxes: 1,
            memory: req.resources.memory.unwrap_or(0),
            disk: req.resources.disk.unwrap_or(0)
                + if home_new {
                    req.home_size.unwrap_or(0)
                } else {
                    0
                },
        };
        self.config.policy.quotas.check(&used, &adding)
    }

    /// Makes an existing named sandbox usable: waits for its creation, resumes, starts.
    async fn bring_up(&self, who: &Caller, r: Record) -> Result<SandboxInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut r = r;
        while r.state == SandboxState::Creating || r.state == SandboxState::Stopping {
            if tokio::time::Instant::now() > deadline {
                return Err(CoreError::InvalidState(format!(
                    "sandbox {} is still {}",
                    r.id,
                    r.state.as_str()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            r = self.resolve(who, &r.id)?;
        }
        match r.state {
            SandboxState::Paused => self.resume(who, &r.id).await,
            SandboxState::Stopped => self.start(who, &r.id).await,
            _ => Ok(self.info(&r)),
        }
        .map(|i| SandboxInfo {
            access_token: self.keys.token(TokenKind::Access, &r.id, &r.access),
            traffic_token: r
                .traffic
                .as_ref()
                .and_then(|t| self.keys.token(TokenKind::Traffic, &r.id, t)),
            ..i
        })
    }

    async fn create_new(
        &self,
        who: &Caller,
        owner: &str,
        template: &str,
        req: &CreateSandbox,
    ) -> Result<SandboxInfo> {
        self.create_from(who, owner, template, req, None).await
    }

    /// Makes a sandbox and records it; with `from`, by restoring a memory image over a
    /// copy of another sandbox's files (a fork) instead of booting the template.
    async fn create_from(
        &self,
        who: &Caller,
        owner: &str,
        template: &str,
        req: &CreateSandbox,
        from: Option<(&Path, &Path)>,
    ) -> Result<SandboxInfo> {
        let id = warren_runtime::new_id().map_err(CoreError::from)?;
        let mut volumes = Vec::new();
        if req.home_volume.unwrap_or(true) {
            volumes.push(VolumeMount {
                name: home_volume_name(&who.tenant, owner),
                target: "/home/user".into(),
                size: req.home_size,
            });
        }
        let spec = SandboxSpec {
            id: id.clone(),
            template: template.to_string(),
            hostname: None,
            resources: req.resources.clone(),
            network: req.network,
            publish: req.publish.clone(),
            volumes,
            env: req.env.clone(),
            isolation: req.isolation.unwrap_or_default(),
        };
        let now = now_ms();
        let record = Record {
            id: id.clone(),
            tenant: who.tenant.clone(),
            owner: owner.to_string(),
            name: req.name.clone(),
            state: SandboxState::Creating,
            spec: spec.clone(),
            labels: req.labels.clone(),
            metadata: req.metadata.clone(),
            created_at: now,
            last_active_at: now,
            expires_at: req.timeout_secs.map(|s| after(now, s)),
            idle_timeout_secs: req.idle_timeout_secs,
            on_timeout: req.on_timeout.unwrap_or_default(),
            access: TokenRef::Derived(0),
            traffic: req.traffic_token.then_some(TokenRef::Derived(0)),
        };
        {
            // Checked and recorded under one lock: concurrent creates of one tenant
            // cannot each find room for themselves in the same quota.
            let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.check_quota(who, owner, req)?;
            self.store().insert(&record).map_err(|e| match e {
                StoreError::NameTaken(n) => CoreError::NameTaken(n),
                e => e.into(),
            })?;
        }
        let lock = self.lock_for(&id);
        let _g = lock.lock().await;
        let started = std::time::Instant::now();
        let opts = CreateOptions {
            die_with_parent: false,
            ephemeral: false,
        };
        let made = match from {
            None => self.boot(spec, opts).await,
            Some((image, files)) => match self.backends.get(spec.isolation) {
                Ok(b) => b.restore(spec, image, files).await,
                Err(e) => Err(e),
            },
        };
        match made {
            Ok(sb) => {
                self.metrics.observe_create(started.elapsed());
                self.store().set_state(&id, SandboxState::Running)?;
                self.live().insert(
                    id.clone(),
                    Live {
                        last_cpu_us: 0,
                        sandbox: sb,
                        streams: Arc::default(),
                    },
                );
                self.metrics.created.fetch_add(1, Ordering::Relaxed);
                let mut r = record;
                r.state = SandboxState::Running;
                self.event(
                    &r,
                    "created",
                    format!(
                        "from template {}",
                        warren_runtime::template::display_name(template)
                    ),
                );
                Ok(self.info_with(&r, true))
            }
            Err(e) => {
                let _ = self.remove_data(&record).await;
                self.store().set_state(&id, SandboxState::Terminated)?;
                self.event(&record, "failed", e.to_string());
                Err(match e {
                    warren_runtime::Error::UnknownTemplate(_) => CoreError::Invalid(e.to_string()),
                    e => e.into(),
                })
            }
        }
    }

    /// Hands out a warm sandbox when the request fits a pool exactly; counts the hit or
    /// the miss. The store claims the member atomically.
    fn claim_from_pool(
        &self,
        who: &Caller,
        owner: &str,
        template: &str,
        req: &CreateSandbox,
    ) -> Result<Option<SandboxInfo>> {
        let fits = req.home_volume == Some(false) && req.env.is_empty() && req.publish.is_empty();
        let key = pool_key(
            template,
            &req.resources,
            req.network,
            req.isolation.unwrap_or_default(),
        );
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.key == key)
            .cloned();
        let (Some(pool), true) = (pool, fits) else {
            return Ok(None);
        };
        if let (Some(name), false) = (&req.name, req.get_or_create) {
            if self.store().by_name(&who.tenant, owner, name)?.is_some() {
                return Err(CoreError::NameTaken(name.clone()));
            }
        }
        let now = now_ms();
        let claim = Record {
            id: String::new(),
            tenant: who.tenant.clone(),
            owner: owner.to_string(),
            name: req.name.clone(),
            state: SandboxState::Running,
            spec: SandboxSpec::default(),
            labels: req.labels.clone(),
            metadata: req.metadata.clone(),
            created_at: now,
            last_active_at: now,
            expires_at: req.timeout_secs.map(|s| after(now, s)),
            idle_timeout_secs: req.idle_timeout_secs,
            on_timeout: req.on_timeout.unwrap_or_default(),
            // A new generation: the warm member's own token was never shown, and its
            // new tenant's is one no earlier holder could have derived.
            access: TokenRef::Derived(1),
            traffic: req.traffic_token.then_some(TokenRef::Derived(1)),
        };
        let claimed = {
            let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.check_quota(who, owner, req)?;
            self.store()
                .claim_from_pool(&key, &claim)
                .map_err(|e| match e {
                    StoreError::NameTaken(n) => CoreError::NameTaken(n),
                    e => e.into(),
                })?
        };
        match claimed {
            Some(r) => {
                pool.hits.fetch_add(1, Ordering::Relaxed);
                self.metrics.created.fetch_add(1, Ordering::Relaxed);
                self.event(
                    &r,
                    "created",
                    format!(
                        "from the warm pool of {}",
                        warren_runtime::template::display_name(template)
                    ),
                );
                Ok(Some(self.info_with(&r, true)))
            }
            None => {
                pool.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Adds a warm pool, or changes the pool of the same template and profile. A pool
    /// with `max` 0 is removed, and its warm sandboxes with it.
    pub async fn set_pool(&self, spec: PoolSpec) -> Result<PoolInfo> {
        if spec.min > spec.max || spec.max > 1000 {
            return Err(CoreError::Invalid(
                "a pool needs min <= max <= 1000 (max 0 removes the pool)".into(),
            ));
        }
        let mut spec = spec;
        spec.resources = self.config.policy.with_defaults(&spec.resources);
        self.config
            .policy
            .check_resources(&spec.resources, "the pool's resources")?;
        if spec.max == 0 {
            return self.remove_pool(spec).await;
        }
        warren_runtime::template::resolve(&self.config.paths, &spec.template)
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let key = pool_key(
            &spec.template,
            &spec.resources,
            spec.network,
            spec.isolation,
        );
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = match pools.iter().position(|p| p.key == key) {
            Some(i) => {
                let old = &pools[i];
                let p = Arc::new(Pool {
                    spec: spec.clone(),
                    key: key.clone(),
                    filling: old.filling.clone(),
                    hits: AtomicU64::new(old.hits.load(Ordering::Relaxed)),
                    misses: AtomicU64::new(old.misses.load(Ordering::Relaxed)),
                });
                pools[i] = p.clone();
                p
            }
            None => {
                let p = Arc::new(Pool {
                    spec: spec.clone(),
                    key: key.clone(),
                    filling: Arc::default(),
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                });
                pools.push(p.clone());
                p
            }
        };
        drop(pools);
        Ok(self.pool_info(&pool))
    }

    async fn remove_pool(&self, spec: PoolSpec) -> Result<PoolInfo> {
        let key = pool_key(
            &spec.template,
            &spec.resources,
            spec.network,
            spec.isolation,
        );
        let removed = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            let i = pools.iter().position(|p| p.key == key);
            i.map(|i| pools.remove(i))
        };
        let members = self.store().pool_members(&key)?;
        for (id, _) in members {
            let lock = self.lock_for(&id);
            let _g = lock.lock().await;
            let found = self.store().get(&id)?;
            if let Some(r) = found.filter(|r| r.tenant == POOL_TENANT) {
                self.terminate_locked(r, "terminated", "its pool was removed")
                    .await?;
            }
        }
        Ok(PoolInfo {
            spec,
            ready: 0,
            hits: removed
                .as_ref()
                .map_or(0, |p| p.hits.load(Ordering::Relaxed)),
            misses: removed
                .as_ref()
                .map_or(0, |p| p.misses.load(Ordering::Relaxed)),
        })
    }

    fn pool_info(&self, p: &Pool) -> PoolInfo {
        PoolInfo {
            spec: p.spec.clone(),
            ready: self
                .store()
                .pool_members(&p.key)
                .map(|m| m.len())
                .unwrap_or(0),
            hits: p.hits.load(Ordering::Relaxed),
            misses: p.misses.load(Ordering::Relaxed),
        }
    }

    pub fn pools(&self) -> Vec<PoolInfo> {
        let pools: Vec<Arc<Pool>> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pools.iter().map(|p| self.pool_info(p)).collect()
    }

    /// Tops pools up to their minimum and replaces members past their time to live.
    fn refill_pools(self: &Arc<Self>) {
        let pools: Vec<Arc<Pool>> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = now_ms();
        for pool in pools {
            let Ok(members) = self.store().pool_members(&pool.key) else {
                continue;
            };
            let mut ready = members.len();
            if let Some(ttl) = pool.spec.ttl_secs {
                for (id, created) in &members {
                    if after(*created, ttl) <= now {
                        ready -= 1;
                        let mgr = self.clone();
                        let id = id.clone();
                        tokio::spawn(async move {
                            let lock = mgr.lock_for(&id);
                            let _g = lock.lock().await;
                            let found = mgr.store().get(&id);
                            if let Ok(Some(r)) = found {
                                if r.tenant == POOL_TENANT && r.state == SandboxState::Running {
                                    let _ = mgr
                                        .terminate_locked(r, "terminated", "warm too long")
                                        .await;
                                }
                            }
                        });
                    }
                }
            }
            let filling = pool.filling.load(Ordering::Relaxed);
            let want = pool.spec.min.saturating_sub(ready + filling);
            let room = pool.spec.max.saturating_sub(ready + filling);
            for _ in 0..want.min(room) {
                pool.filling.fetch_add(1, Ordering::Relaxed);
                let mgr = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    let who = Caller::operator(POOL_TENANT);
                    let req = CreateSandbox {
                        resources: pool.spec.resources.clone(),
                        network: pool.spec.network,
                        isolation: Some(pool.spec.isolation),
                        home_volume: Some(false),
                        ..Default::default()
                    };
                    if let Ok(info) = mgr
                        .create_new(&who, POOL_TENANT, &pool.spec.template, &req)
                        .await
                    {
                        let _ = mgr.store().set_pool(&info.id, Some(&pool.key));
                    }
                    pool.filling.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    pub fn get(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        Ok(self.info(&r))
    }

    pub fn list(&self, who: &Caller, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        let all = self.store().list_live(Some(&who.tenant))?;
        Ok(all
            .iter()
            .filter(|r| who.only_sandbox.as_ref().is_none_or(|o| *o == r.id))
            .filter(|r| filter.owner.as_ref().is_none_or(|o| *o == r.owner))
            .filter(|r| filter.state.is_none_or(|s| s == r.state))
            .filter(|r| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
            })
            .filter(|r| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| r.metadata.get(k) == Some(v))
            })
            .map(|r| self.info(r))
            .collect())
    }

    fn invalid(r: &Record, action: &str) -> CoreError {
        let hint = match r.state {
            SandboxState::Paused => "; resume it first",
            SandboxState::Stopped => "; start it first",
            SandboxState::Creating | SandboxState::Stopping => "; wait a moment",
            _ => "",
        };
        CoreError::InvalidState(format!(
            "cannot {action} sandbox {}: it is {}{hint}",
            r.id,
            r.state.as_str()
        ))
    }

    pub async fn pause(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        self.touch_key(who, key)?;
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let mut r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Paused => return Ok(self.info(&r)),
            SandboxState::Running => {}
            _ => return Err(Self::invalid(&r, "pause")),
        }
        self.off_lock(&r.id, |l| l.sandbox.pause())
            .await?
            .map_err(CoreError::from)?;
        let recorded = self.store().set_state(&r.id, SandboxState::Paused);
        if let Err(e) = recorded {
            // Unrecorded, so undone: the store and the cgroup must agree.
            let _ = self.off_lock(&r.id, |l| l.sandbox.resume()).await;
            return Err(e.into());
        }
        r.state = SandboxState::Paused;
        self.event(&r, "paused", "processes frozen");
        Ok(self.info(&r))
    }

    pub async fn resume(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let mut r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Running => return Ok(self.info(&r)),
            SandboxState::Paused => {}
            _ => return Err(Self::invalid(&r, "resume")),
        }
        self.off_lock(&r.id, |l| l.sandbox.resume())
            .await?
            .map_err(CoreError::from)?;
        let recorded = self.store().set_state(&r.id, SandboxState::Running);
        if let Err(e) = recorded {
            let _ = self.off_lock(&r.id, |l| l.sandbox.pause()).await;
            return Err(e.into());
        }
        let _ = self.store().touch(&r.id, now_ms());
        r.state = SandboxState::Running;
        self.event(&r, "resumed", "processes thawed");
        Ok(self.info(&r))
    }

    /// Runs `f` on a live sandbox off the async runtime and outside the table's lock (a
    /// pause that saves memory to disk takes a while). The caller holds the sandbox's own
    /// lock; meanwhile the sandbox is out of the table and counts as not running.
    async fn off_lock<T: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Live) -> T + Send + 'static,
    ) -> Result<T> {
        let mut l = self
            .live()
            .remove(id)
            .ok_or_else(|| CoreError::InvalidState(format!("sandbox {id} is not running")))?;
        let (l, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut l);
            (l, out)
        })
        .await
        .map_err(|e| CoreError::InvalidState(format!("sandbox {id}: {e}")))?;
        self.live().insert(id.to_string(), l);
        Ok(out)
    }

    fn with_live<T>(&self, id: &str, f: impl FnOnce(&mut Live) -> T) -> Result<T> {
        let mut live = self.live();
        let l = live
            .get_mut(id)
            .ok_or_else(|| CoreError::InvalidState(format!("sandbox {id} is not running")))?;
        Ok(f(l))
    }

    /// Stops every process; the files stay, and `start` runs the sandbox again.
    pub async fn stop(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Stopped => return Ok(self.info(&r)),
            SandboxState::Running | SandboxState::Paused => {}
            _ => return Err(Self::invalid(&r, "stop")),
        }
        self.stop_locked(r, "stopped", "processes ended, files kept")
            .await
    }

    async fn stop_locked(&self, mut r: Record, kind: &str, why: &str) -> Result<SandboxInfo> {
        self.store().set_state(&r.id, SandboxState::Stopping)?;
        let live = self.live().remove(&r.id);
        if let Some(l) = live {
            l.sandbox.destroy().await.map_err(CoreError::from)?;
        }
        self.store().set_state(&r.id, SandboxState::Stopped)?;
        self.forget_shares(&r.id);
        r.state = SandboxState::Stopped;
        self.event(&r, kind, why);
        Ok(self.info(&r))
    }

    /// Runs a stopped sandbox again from its kept files.
    pub async fn start(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let mut r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Running => return Ok(self.info(&r)),
            SandboxState::Stopped => {}
            _ => return Err(Self::invalid(&r, "start")),
        }
        let opts = CreateOptions {
            die_with_parent: false,
            ephemeral: false,
        };
        let sb = self
            .boot(r.spec.clone(), opts)
            .await
            .map_err(CoreError::from)?;
        self.store().set_state(&r.id, SandboxState::Running)?;
        self.store().touch(&r.id, now_ms())?;
        self.live().insert(
            r.id.clone(),
            Live {
                last_cpu_us: 0,
                sandbox: sb,
                streams: Arc::default(),
            },
        );
        r.state = SandboxState::Running;
        self.event(&r, "started", "running again from its kept files");
        Ok(self.info(&r))
    }

    /// Ends the sandbox for good: processes and files go (volumes stay).
    pub async fn terminate(&self, who: &Caller, key: &str) -> Result<()> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let r = self.resolve(who, &r.id)?;
        self.terminate_locked(r, "terminated", "removed").await
    }

    async fn terminate_locked(&self, r: Record, kind: &str, why: &str) -> Result<()> {
        // The intent is written first: a daemon killed halfway finishes the job when it
        // starts again (see `recover`) instead of leaving half a sandbox.
        self.store().set_state(&r.id, SandboxState::Stopping)?;
        self.event(&r, TERMINATING, why);
        let live = self.live().remove(&r.id);
        if let Some(l) = live {
            l.sandbox.destroy().await.map_err(CoreError::from)?;
        }
        self.remove_data(&r).await?;
        self.store().set_state(&r.id, SandboxState::Terminated)?;
        self.forget_shares(&r.id);
        self.metrics.terminated.fetch_add(1, Ordering::Relaxed);
        self.event(&r, kind, why);
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r.id);
        Ok(())
    }

    /// Changes the lifetime (from now), the idle timeout, or the action on expiry.
    pub fn set_timeout(&self, who: &Caller, key: &str, t: SetTimeout) -> Result<SandboxInfo> {
        let mut r = self.resolve(who, key)?;
        let now = now_ms();
        if let Some(s) = t.timeout_secs {
            r.expires_at = Some(after(now, s));
        }
        if t.idle_timeout_secs.is_some() {
            r.idle_timeout_secs = t.idle_timeout_secs;
        }
        if let Some(a) = t.on_timeout {
            r.on_timeout = a;
        }
        self.store()
            .set_timeouts(&r.id, r.expires_at, r.idle_timeout_secs, r.on_timeout)?;
        self.store().touch(&r.id, now)?;
        Ok(self.info(&r))
    }

    fn touch_key(&self, who: &Caller, key: &str) -> Result<()> {
        let r = self.resolve(who, key)?;
        self.store().touch(&r.id, now_ms())?;
        Ok(())
    }

    /// A connection of its own to a running sandbox's agent (for exec and file calls).
    /// Counts as activity. Each caller gets a fresh connection: when it goes away, the
    /// agent ends what it started on it (a foreground process), which a shared
    /// connection could not tell.
    pub async fn agent(&self, who: &Caller, key: &str) -> Result<(String, AgentClient)> {
        let r = self.resolve(who, key)?;
        if r.state != SandboxState::Running {
            return Err(Self::invalid(&r, "reach the processes of"));
        }
        // Best-effort: a data directory too full to record the activity must not stop
        // the sandbox's own work (a read, a command that frees space).
        let _ = self.store().touch(&r.id, now_ms());
        let socket = self.with_live(&r.id, |l| l.sandbox.agent_socket().to_owned())?;
        let c = AgentClient::connect(&socket).await?;
        Ok((r.id, c))
    }

    /// Marks the sandbox active for as long as the guard lives.
    pub fn hold_activity(&self, id: &str) -> Option<ActivityGuard> {
        self.with_live(id, |l| {
            l.streams.fetch_add(1, Ordering::Relaxed);
            ActivityGuard(l.streams.clone())
        })
        .ok()
    }

    /// OOM kills so far in a sandbox.
    pub fn oom_kills(&self, id: &str) -> u64 {
        self.with_live(id, |l| l.sandbox.usage().oom_kills)
            .unwrap_or(0)
    }

    /// Lifecycle events of the caller's sandboxes, from now on.
    pub fn subscribe(&self, who: &Caller) -> EventStream {
        EventStream {
            rx: self.events.subscribe(),
            who: who.clone(),
        }
    }

    /// The daemon's own log of a sandbox (its lifecycle events), oldest first.
    pub fn logs(&self, who: &Caller, key: &str) -> Result<Vec<Event>> {
        let r = self.resolve(who, key)?;
        Ok(self
            .store()
            .events_of(&r.id, 1000)?
            .into_iter()
            .map(|e| Event {
                time: rfc3339(e.time),
                sandbox: e.sandbox,
                owner: e.owner,
                kind: e.kind,
                message: e.message,
            })
            .collect())
    }

    /// Sandboxes of `who` idle longer than `idle`; removed unless `dry_run`.
    pub async fn gc(
        &self,
        who: &Caller,
        idle: Duration,
        dry_run: bool,
    ) -> Result<Vec<SandboxInfo>> {
        if who.only_sandbox.is_some() {
            return Ok(Vec::new());
        }
        let cutoff = now_ms().saturating_sub(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX));
        let busy: Vec<String> = self
            .live()
            .iter()
            .filter(|(_, l)| l.streams.load(Ordering::Relaxed) > 0)
            .map(|(id, _)| id.clone())
            .collect();
        let idle_ones: Vec<Record> = self
            .store()
            .list_live(Some(&who.tenant))?
            .into_iter()
            .filter(|r| r.last_active_at < cutoff && !busy.contains(&r.id))
            .collect();
        let infos = idle_ones.iter().map(|r| self.info(r)).collect();
        if !dry_run {
            for r in idle_ones {
                let lock = self.lock_for(&r.id);
                let _g = lock.lock().await;
                if let Ok(r) = self.resolve(who, &r.id) {
                    self.terminate_locked(r, "terminated", "removed by gc: idle")
                        .await?;
                }
            }
        }
        Ok(infos)
    }

    /// Measures the disk each sandbox's files take (its writable layer, or the image
    /// that holds it), on a thread of its own and one walk at a time: requests read the
    /// last figures, never walk a tree themselves.
    fn measure_disks(&self) {
        let ids: Vec<String> = match self.store().list_live(None) {
            Ok(rs) => rs.into_iter().map(|r| r.id).collect(),
            Err(_) => return,
        };
        let mut measured = HashMap::with_capacity(ids.len());
        for id in ids {
            let bytes = warren_runtime::template::sandbox_disk_used(&self.config.paths, &id);
            measured.insert(id, bytes);
        }
        *self.disk_cache.lock().unwrap_or_else(|e| e.into_inner()) = measured;
    }

    /// Bytes sandbox `id`'s files took when last measured.
    pub(crate) fn disk_bytes(&self, id: &str) -> u64 {
        self.disk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// One pass of the reaper: activity from CPU use and attached clients, then expiry;
    /// now and then, the records of sandboxes that ended long ago are forgotten.
    async fn reap(&self) {
        let interval_us = self.config.reaper_interval.as_micros() as f64;
        let now = now_ms();
        if now - self.pruned_at.load(Ordering::Relaxed) >= PRUNE_EVERY_MS {
            self.pruned_at.store(now, Ordering::Relaxed);
            let _ = self.store().prune_terminated(now - KEEP_TERMINATED_MS);
        }
        let mut active = Vec::new();
        let mut dead = Vec::new();
        {
            let mut live = self.live();
            for (id, l) in live.iter_mut() {
                if !l.sandbox.is_alive() {
                    dead.push(id.clone());
                    continue;
                }
                let cpu = l.sandbox.usage().cpu_us;
                let used = cpu.saturating_sub(l.last_cpu_us) as f64;
                l.last_cpu_us = cpu;
                if l.streams.load(Ordering::Relaxed) > 0
                    || used > interval_us * self.config.busy_cpu_fraction
                {
                    active.push(id.clone());
                }
            }
        }
        for id in &active {
            let _ = self.store().touch(id, now);
        }
        for id in dead {
            let lock = self.lock_for(&id);
            let _g = lock.lock().await;
            let Ok(Some(r)) = self.store().get(&id) else {
                continue;
            };
            if matches!(r.state, SandboxState::Running | SandboxState::Paused) {
                let _ = self
                    .stop_locked(r, "failed", "its init process died; stopped, files kept")
                    .await;
            }
        }
        let Ok(records) = self.store().list_live(None) else {
            return;
        };
        for r in records {
            if r.state != SandboxState::Running {
                continue;
            }
            let reason = if r.expires_at.is_some_and(|t| t <= now) {
                "its lifetime ended"
            } else if r
                .idle_timeout_secs
                .is_some_and(|s| after(r.last_active_at, s) <= now)
            {
                "it was idle too long"
            } else {
                continue;
            };
            self.expire(r, reason).await;
        }
    }

    async fn expire(&self, r: Record, reason: &str) {
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let Ok(Some(mut r)) = self.store().get(&r.id) else {
            return;
        };
        if r.state != SandboxState::Running {
            return;
        }
        let action = r.on_timeout;
        self.metrics.timeouts[action as usize].fetch_add(1, Ordering::Relaxed);
        self.event(
            &r,
            "timeout",
            format!("{reason}: {action:?}").to_lowercase(),
        );
        // The lifetime is used up: a later resume or start gets no second expiry at once.
        let _ = self
            .store()
            .set_timeouts(&r.id, None, r.idle_timeout_secs, r.on_timeout);
        match action {
            TimeoutAction::Pause => {
                let paused = self.off_lock(&r.id, |l| l.sandbox.pause()).await;
                if matches!(paused, Ok(Ok(()))) {
                    let _ = self.store().set_state(&r.id, SandboxState::Paused);
                    r.state = SandboxState::Paused;
                    self.event(&r, "paused", reason);
                }
            }
            TimeoutAction::Stop => {
                let _ = self.stop_locked(r, "stopped", reason).await;
            }
            TimeoutAction::Terminate => {
                let _ = self.terminate_locked(r, "terminated", reason).await;
            }
        }
    }

    /// Sandboxes that are running or paused right now (for health and tests).
    pub fn live_count(&self) -> usize {
        self.live().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_by_the_runtime_not_by_its_message() {
        // ENOSPC and EDQUOT.
        for errno in [28, 122] {
            let e = CoreError::io(
                "copy /var/lib/warren/x",
                std::io::Error::from_raw_os_error(errno),
            );
            assert_eq!(e.code(), WireCode::NoSpace, "{e}");
            assert!(!e.to_string().contains("/var/lib"), "{e}");
        }
        // A helper's report of a full disk is for the caller as it stands.
        let helper = warren_runtime::Error::from_helper(
            warren_runtime::helper::FailureKind::NoSpace,
            "a disk of 9 MiB was asked for and the host has 1 MiB free".into(),
        );
        let e = CoreError::from(helper);
        assert_eq!(e.code(), WireCode::NoSpace);
        assert!(e.to_string().starts_with("a disk of 9 MiB"), "{e}");
        // Words are not a kind: a failure that only mentions a full disk is not one.
        let e = CoreError::from(warren_runtime::Error::Setup(
            "copy: No space left on device (os error 28)".into(),
        ));
        assert_eq!(e.code(), WireCode::BackendFailed);
        let e = CoreError::io("copy x", std::io::Error::from_raw_os_error(13));
        assert_eq!(e.code(), WireCode::BackendFailed);
    }

    fn is_send<T: Send>(_: &T) {}

    /// The HTTP server runs these on a multi-threaded runtime: their futures must be Send.
    #[allow(dead_code, clippy::diverging_sub_expression, unreachable_code)]
    fn futures_are_send(m: &Manager, who: &Caller) {
        is_send(&m.create(who, CreateSandbox::default()));
        is_send(&m.pause(who, ""));
        is_send(&m.resume(who, ""));
        is_send(&m.stop(who, ""));
        is_send(&m.start(who, ""));
        is_send(&m.terminate(who, ""));
        is_send(&m.agent(who, ""));
        is_send(&m.gc(who, Duration::ZERO, true));
    }

    #[test]
    fn pool_keys_tell_profiles_apart() {
        let a = ResourceRequest::default();
        let b = ResourceRequest {
            memory: Some(1 << 30),
            ..Default::default()
        };
        let none = warren_types::spec::NetworkMode::None;
        let ns = Isolation::Namespace;
        assert_ne!(
            pool_key("host", &a, none, ns),
            pool_key("host", &b, none, ns)
        );
        assert_ne!(
            pool_key("host", &a, none, ns),
            pool_key("host", &a, none, Isolation::Gvisor)
        );
        assert_eq!(
            pool_key("host", &b, none, ns),
            pool_key("host", &b.clone(), none, ns)
        );
    }
}
