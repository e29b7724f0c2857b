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

mod auth;
mod choose;
mod create;
mod dataplane;
mod egress;
mod error;
mod keys;
mod lifecycle;
pub mod log_limit;
mod metrics;
mod mounts;
pub mod policy;
mod pools;
mod port_links;
mod port_traffic;
mod reaper;
mod session;
mod share;
mod ssh;
pub mod store;
mod templates;
mod tenants;
mod time;
pub mod tokens;
mod upload;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use warren_runtime::namespace::CreateOptions;
use warren_runtime::{Backend, Backends, Instance, NamespaceBackend};
use warren_types::api::{
    CreateSandbox, Event, PoolInfo, PoolSpec, ResourceRequest, SandboxInfo, SandboxState,
    SetTimeout, TimeoutAction, UsageSample,
};
use warren_types::spec::Isolation;
use warren_types::spec::{Resources, SandboxSpec, VolumeMount};

pub use crate::auth::Caller;
pub use crate::dataplane::{ActivityGuard, AgentConn, ProcessExit};
pub use crate::error::{CoreError, Result};
pub use crate::port_links::{PortLink, CODE_TTL_MS as PORT_LINK_CODE_TTL_MS};
pub use crate::port_traffic::{PortConnection, PortError, PortPass};
pub use crate::share::Guest;
pub use crate::store::{Record, Store, StoreError};
pub use crate::templates::{
    BuildEvent, BuildTemplate, DiskUsage, HostDisk, ImportEvent, ImportResult, ImportTemplate,
    LayerGcResult, SnapshotRequest, SnapshotResult, TemplateInfo, UsageRow,
};
pub use crate::time::{now_ms, rfc3339};
use crate::tokens::{Keyring, TokenKind, TokenRef};
pub use crate::upload::{Upload, UploadTemplate, MAX_UPLOAD, MAX_UPLOADS};
pub use warren_runtime::oci::ImportProgress;
pub use warren_runtime::Paths;

/// Lifecycle log lines a second for one sandbox (its events are all kept in the store).
const LIFECYCLE_LINES_PER_SECOND: u32 = 10;

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
    /// Which runc binary the runc backend uses, and its global flags.
    pub runc: Option<warren_runtime::runc::RuncConfig>,
    /// The same for crun.
    pub crun: Option<warren_runtime::runc::RuncConfig>,
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
            runc: None,
            crun: None,
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
    /// The protocol version its agent answered a hello in, once it has.
    agent_version: Option<u16>,
    /// The connection every data-plane call shares (see [`Manager::agent`]), once made;
    /// dropped whenever the sandbox is paused, saved or resumed.
    agent: Option<warren_runtime::client::AgentClient>,
    /// When a call last took the shared connection (ms): one unused for
    /// [`AGENT_KEPT_MS`] is let go (the agent's buffers for it with it).
    agent_used_ms: i64,
    /// A warm pool's member: its shared connection was made ahead and is kept until the
    /// member is claimed, so that the first call after a claim finds it.
    warm: bool,
    last_cpu_us: u64,
    /// Readings of its use, oldest first, at most [`SAMPLES_KEPT`].
    samples: std::collections::VecDeque<UsageSample>,
    /// CPU time at the last reading.
    sampled_cpu_us: u64,
}

/// How often a live sandbox's use is read into its history, and how many readings
/// are kept (half an hour).
const SAMPLE_EVERY_MS: i64 = 5_000;

/// How long a sandbox's shared agent connection is kept without a call (its streams
/// keep theirs for as long as they last).
const AGENT_KEPT_MS: i64 = 30_000;
const SAMPLES_KEPT: usize = 360;

impl Live {
    /// A sandbox whose CPU time so far is `cpu` µs (0 for a new one: nothing is read on
    /// the create path).
    fn new(sandbox: Box<dyn Instance>, cpu: u64) -> Self {
        Self {
            sandbox,
            streams: Arc::default(),
            agent_version: None,
            agent: None,
            agent_used_ms: 0,
            warm: false,
            last_cpu_us: cpu,
            samples: std::collections::VecDeque::new(),
            sampled_cpu_us: cpu,
        }
    }

    /// A sandbox this daemon has just booted: its agent is this build (the helper, or
    /// the runtime's first process, ran this daemon's own binary), so the first call
    /// need not wait for its hello's answer (see [`Manager::agent`]). Not one restored
    /// from saved memory, whose agent may be an older build's.
    fn booted(sandbox: Box<dyn Instance>) -> Self {
        Self {
            agent_version: Some(warren_types::proto::PROTOCOL_VERSION),
            ..Self::new(sandbox, 0)
        }
    }

    /// Whether a reading is due: the last one is old enough, or there is none.
    fn sample_due(&self, now: i64) -> bool {
        self.samples
            .back()
            .is_none_or(|s| now - s.at_ms >= SAMPLE_EVERY_MS)
    }

    /// Keeps `usage` (read by the reaper's pass) as a reading when one is due.
    fn sample(&mut self, now: i64, usage: &warren_runtime::Usage, disk_bytes: u64) {
        if !self.sample_due(now) {
            return;
        }
        let last = self.samples.back().map(|s| s.at_ms);
        let cpu_pct = match last {
            Some(t) if now > t => {
                let used = usage.cpu_us.saturating_sub(self.sampled_cpu_us) as f64;
                used / ((now - t) as f64 * 1000.0) * 100.0
            }
            _ => 0.0,
        };
        self.sampled_cpu_us = usage.cpu_us;
        if self.samples.len() == SAMPLES_KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(UsageSample {
            at_ms: now,
            cpu_pct,
            memory_bytes: usage.memory_bytes,
            disk_bytes,
            pids: usage.tasks,
        });
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
const MAX_FORKS: usize = 20;

/// A fork's template is kept at least this long, so that no fork still being made
/// loses it.
const FORK_TEMPLATE_GRACE_MS: i64 = 5 * 60 * 1000;

/// How long a sandbox lives once it resumed by itself after its lifetime had ended.
const AUTO_RESUME_LIFETIME_MS: i64 = 300_000;

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
    /// When the pools' orphans were last looked for (ms).
    orphans_swept_at: std::sync::atomic::AtomicI64,
    pools: Mutex<Vec<Arc<Pool>>>,
    shares: Mutex<Vec<Arc<share::Share>>>,
    /// Port links' codes and the grants browsers keep (see [`port_links`]).
    port_grants: Mutex<Vec<port_links::PortGrant>>,
    backends: Backends,
    store: Mutex<Store>,
    live: Mutex<HashMap<String, Live>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<(String, Event)>,
    /// Counts API keys revoked, so that streams opened with one can look again.
    revocations: tokio::sync::watch::Sender<u64>,
    metrics: metrics::Metrics,
    /// Held while a create checks its tenant's quota and records itself.
    quota_lock: Mutex<()>,
    /// The disk each sandbox takes, as the reaper last measured it.
    disk_cache: Mutex<HashMap<String, u64>>,
    /// Template builds running, per tenant.
    builds: Mutex<HashMap<String, u32>>,
    /// Archives being received.
    uploads: upload::Uploads,
    /// Derives the sandboxes' tokens (see [`tokens`]).
    keys: Keyring,
    /// Looks at the connections domain rules must judge; `None` if it could not listen.
    egress: Option<warren_runtime::egress::EgressProxy>,
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
        // Cgroups a killed daemon made ahead are nobody's now.
        warren_runtime::spares::clear_dead(namespace.hierarchy());
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
        let runc = warren_runtime::runc::RuncBackend::new(
            Isolation::Runc,
            config.paths.clone(),
            config.exe.clone(),
            config.runc.clone(),
        )
        .map_err(CoreError::from)?;
        let crun = warren_runtime::runc::RuncBackend::new(
            Isolation::Crun,
            config.paths.clone(),
            config.exe.clone(),
            config.crun.clone(),
        )
        .map_err(CoreError::from)?;
        let backends = Backends::new(vec![
            Arc::new(namespace),
            Arc::new(gvisor),
            Arc::new(runc),
            Arc::new(crun),
            Arc::new(process),
        ]);
        let (events, _) = broadcast::channel(1024);
        let mgr = Arc::new(Self {
            passes: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            pruned_at: std::sync::atomic::AtomicI64::new(0),
            // The first look a minute after the start: an operator who sets the pools
            // again after a restart finds their warm members still there.
            orphans_swept_at: std::sync::atomic::AtomicI64::new(now_ms() + 50_000),
            pools: Mutex::new(Vec::new()),
            shares: Mutex::new(Vec::new()),
            port_grants: Mutex::new(Vec::new()),
            backends,
            store: Mutex::new(store),
            live: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            events,
            revocations: tokio::sync::watch::Sender::new(0),
            metrics: metrics::Metrics::default(),
            quota_lock: Mutex::new(()),
            disk_cache: Mutex::default(),
            builds: Mutex::default(),
            uploads: upload::Uploads::default(),
            keys,
            egress: match warren_runtime::egress::EgressProxy::start(&config.paths.run) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(
                        "the egress proxy cannot listen ({e}); domain rules are refused"
                    );
                    None
                }
            },
            config,
        });
        mgr.recover()?;
        upload::clear_leftovers(&mgr.config.paths);
        // What earlier binaries' agents ran from, where no sandbox or saved memory needs it.
        warren_runtime::bundle::remove_unused_agent_files(&mgr.config.paths, &mgr.config.exe);
        let weak = Arc::downgrade(&mgr);
        let interval = mgr.config.reaper_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(mgr) = weak.upgrade() else { break };
                mgr.refill_pools();
                let every = (mgr.config.disk_interval.as_millis() / interval.as_millis().max(1))
                    .max(1) as u64;
                let all = mgr
                    .passes
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(every);
                // Every sandbox now and then; one made since the last walk at the next
                // pass, so that none goes unmeasured for a whole interval.
                if (all || mgr.has_unmeasured()) && !mgr.measuring.swap(true, Ordering::AcqRel) {
                    // A walk of a large layer takes seconds: on a thread of its own, so
                    // it holds up neither the runtime's workers nor the next pass.
                    let m = mgr.clone();
                    tokio::task::spawn_blocking(move || {
                        m.measure_disks(!all);
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

    /// Waits until the teardowns of terminated sandboxes still finishing are done (a
    /// terminate answers once the sandbox's processes are gone): for the daemon's exit.
    pub async fn settle(&self) {
        for b in self.backends.iter() {
            b.settle().await;
        }
    }

    /// Every isolation backend of this daemon: whether it is available and what it offers.
    pub fn backends(&self) -> Vec<warren_types::api::BackendInfo> {
        self.backends.infos()
    }

    /// The networks a sandbox of `template` (as `who` names it) can have, on the backend
    /// its template (else the daemon) gives a request that names none; empty when the
    /// template or backend is unknown.
    pub fn networks_for(
        &self,
        who: &Caller,
        template: &str,
    ) -> Vec<warren_types::spec::NetworkMode> {
        self.networks_of(self.isolation_for(who, template))
    }

    /// The networks backend `kind` offers; none when this daemon lacks it.
    pub fn networks_of(&self, kind: Isolation) -> Vec<warren_types::spec::NetworkMode> {
        self.backend(kind)
            .map(|b| b.info().capabilities.networks)
            .unwrap_or_default()
    }

    /// The backend a request for `template` (as `who` names it) that names none gets:
    /// the template's, else the daemon's default.
    pub fn isolation_for(&self, who: &Caller, template: &str) -> Isolation {
        self.resolve_template(who, template)
            .ok()
            .and_then(|t| t.meta.isolation)
            .unwrap_or(self.config.isolation)
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
        self.clear_egress(&r.spec);
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
        // Every event is kept in the store; the log gets a few a second per sandbox.
        static LIFECYCLE_LINES: std::sync::OnceLock<log_limit::LogLimit> =
            std::sync::OnceLock::new();
        let (log, left_out) = LIFECYCLE_LINES
            .get_or_init(|| log_limit::LogLimit::new(LIFECYCLE_LINES_PER_SECOND))
            .admit(&r.id);
        if left_out > 0 {
            tracing::info!(
                target: "warren::lifecycle",
                tenant = %r.tenant,
                sandbox = %r.id,
                left_out,
                "{left_out} more lifecycle changes were not logged (`warren events` has them)"
            );
        }
        if log {
            tracing::info!(
                target: "warren::lifecycle",
                tenant = %r.tenant,
                sandbox = %r.id,
                owner = %r.owner,
                kind,
                "{message}"
            );
        }
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
                            // The proxy's port is this daemon's.
                            if let Err(e) = self.apply_egress(&r.spec) {
                                self.event(&r, "failed", format!("egress rules not restored: {e}"));
                            }
                            let cpu = sb.usage().cpu_us;
                            self.live().insert(r.id.clone(), Live::new(sb, cpu));
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

    /// Finds a sandbox by id, `owner/name`, or name (of the owner named like the tenant).
    fn resolve(&self, who: &Caller, key: &str) -> Result<Record> {
        let not_found = || CoreError::NotFound(key.to_string());
        let store = self.store();
        let r = match store.get(key)? {
            Some(r) => Some(r),
            None => match key.split_once('/') {
                Some((owner, name)) => store.by_name(&who.tenant, owner, name)?,
                // A bare name: the tenant's own sandbox of that name, else the one sandbox
                // of the tenant that has it, whoever its owner (as docker resolves names).
                None => match store.by_name(&who.tenant, &who.tenant, key)? {
                    Some(r) => Some(r),
                    None => {
                        let mut found = store.by_bare_name(&who.tenant, key, 11)?;
                        // A caller held to one sandbox sees no other's name.
                        if let Some(only) = &who.only_sandbox {
                            found.retain(|r| r.id == *only);
                        }
                        if found.len() > 1 {
                            let mut names: Vec<String> = found
                                .iter()
                                .take(10)
                                .map(|r| format!("{}/{key}", r.owner))
                                .collect();
                            if found.len() > 10 {
                                names.push("...".into());
                            }
                            return Err(CoreError::Invalid(format!(
                                "{key:?} names more than one sandbox; say which: {}",
                                names.join(", ")
                            )));
                        }
                        found.pop()
                    }
                },
            },
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
            egress: r.spec.egress.clone(),
            publish: r.spec.publish.clone(),
            mounts: r.spec.mounts.clone(),
            isolation: r.spec.isolation,
            labels: r.labels.clone(),
            metadata: r.metadata.clone(),
            created_at: rfc3339(r.created_at),
            last_active_at: rfc3339(r.last_active_at),
            expires_at: r.expires_at.map(rfc3339),
            idle_timeout_secs: r.idle_timeout_secs,
            on_timeout: r.on_timeout,
            auto_resume: r.auto_resume,
            request_host: r.request_host.clone(),
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
            usage: None,
        }
    }

    /// `info` with the last usage reading, for the lists and the one-sandbox answer.
    fn info_now(&self, r: &Record) -> SandboxInfo {
        let usage = self
            .live()
            .get(&r.id)
            .and_then(|l| l.samples.back().copied());
        SandboxInfo {
            usage,
            ..self.info(r)
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

    pub fn get(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        Ok(self.info_now(&r))
    }

    /// The size of the filesystem that holds sandboxes' files, in bytes.
    pub fn data_disk_bytes(&self) -> u64 {
        warren_runtime::template::data_disk_size(&self.config.paths)
    }

    /// A live sandbox's readings of its use, oldest first, between `from` and `to`
    /// (Unix milliseconds, both kept). A sandbox that is not live has none.
    pub fn usage_history(
        &self,
        who: &Caller,
        key: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<UsageSample>> {
        let r = self.resolve(who, key)?;
        let live = self.live();
        Ok(live.get(&r.id).map_or_else(Vec::new, |l| {
            l.samples
                .iter()
                .filter(|s| from.is_none_or(|f| s.at_ms >= f) && to.is_none_or(|t| s.at_ms <= t))
                .copied()
                .collect()
        }))
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
            .map(|r| self.info_now(r))
            .collect())
    }

    fn touch_key(&self, who: &Caller, key: &str) -> Result<()> {
        let r = self.resolve(who, key)?;
        self.store().touch(&r.id, now_ms())?;
        Ok(())
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

    /// Bytes sandbox `id`'s files took when last measured.
    pub(crate) fn disk_bytes(&self, id: &str) -> u64 {
        self.disk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Sandboxes that are running or paused right now (for health and tests).
    pub fn live_count(&self) -> usize {
        self.live().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_types::api::WireCode;

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
    fn futures_are_send(m: &Arc<Manager>, who: &Caller) {
        is_send(&m.create(who, CreateSandbox::default()));
        is_send(&m.pause(who, ""));
        is_send(&m.resume(who, ""));
        is_send(&m.stop(who, ""));
        is_send(&m.start(who, ""));
        is_send(&m.terminate(who, ""));
        is_send(&m.agent(who, ""));
        is_send(&m.gc(who, Duration::ZERO, true));
        is_send(&m.volumes(who));
        is_send(&m.volume(who, ""));
        is_send(&m.remove_volume(who, ""));
        is_send(&m.resize_volume(who, "", 0));
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
