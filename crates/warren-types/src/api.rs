//! The native REST API's request and response bodies (JSON), shared by the server, the
//! CLI client and the core. The routes are listed in docs/api.md and in the OpenAPI
//! document the server serves at `/openapi.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::spec::Isolation;
pub use crate::spec::Resources;
use crate::spec::{NetworkMode, PortMap};

/// The lifecycle states of a sandbox.
///
/// ```text
/// creating → running ⇄ paused
/// running|paused → stopped (processes gone, files kept) → running
/// any → terminated
/// ```
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Paused,
    Stopping,
    Stopped,
    Terminated,
}

impl SandboxState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "terminated" => Self::Terminated,
            _ => return None,
        })
    }
}

/// What happens when a sandbox's timeout passes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    Pause,
    Stop,
    #[default]
    Terminate,
}

/// Limits asked for at creation: the same [`Resources`] the sandbox is built with, from
/// the request to the cgroup. A field left out takes the daemon's default. Sizes are
/// bytes on the wire.
pub type ResourceRequest = Resources;

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Who the sandbox is for (a user, an agent); defaults to the tenant's name.
    #[serde(default)]
    pub owner: Option<String>,
    /// Unique per owner. With `get_or_create`, an existing sandbox of that name is
    /// returned (and resumed or started if needed) instead of an error.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub get_or_create: bool,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub resources: ResourceRequest,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub publish: Vec<PortMap>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Seconds the sandbox may live, from now; `set_timeout` moves it later.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Seconds without activity (API calls, attached clients, CPU use inside) before
    /// the timeout action applies.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub on_timeout: Option<TimeoutAction>,
    /// Mount the owner's persistent volume at /home/user (default true).
    #[serde(default)]
    pub home_volume: Option<bool>,
    /// Size of the owner's home volume in bytes, when this request makes it (the
    /// daemon's default otherwise); an existing volume keeps its size.
    #[serde(default)]
    pub home_size: Option<u64>,
    /// Issue a traffic token: connections to the sandbox's ports through the daemon
    /// (`PORT-ID.DOMAIN` hosts on the E2B surface) must then carry it. Without one, anyone
    /// who can reach that surface and knows the sandbox's id reaches its ports.
    #[serde(default)]
    pub traffic_token: bool,
    /// The backend to make the sandbox with; the template's default (or the daemon's)
    /// when absent. `GET /v1/backends` lists what this host offers.
    #[serde(default)]
    pub isolation: Option<Isolation>,
}

/// `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub on_timeout: Option<TimeoutAction>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: String,
    pub owner: String,
    pub name: Option<String>,
    pub template: String,
    pub state: SandboxState,
    pub resources: ResourceRequest,
    pub network: NetworkMode,
    pub publish: Vec<PortMap>,
    #[serde(default)]
    pub isolation: Isolation,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 times.
    pub created_at: String,
    pub last_active_at: String,
    /// When the lifetime ends, if it has one.
    pub expires_at: Option<String>,
    pub idle_timeout_secs: Option<u64>,
    pub on_timeout: TimeoutAction,
    /// Required on exec and file calls made with it instead of an API key. Shown only
    /// in the answer that creates the sandbox (or finds it, with `get_or_create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Required on traffic to the sandbox's ports, when it was created with one. Shown
    /// as the access token is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_token: Option<String>,
}

/// `GET /v1/backends`: one isolation backend of this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: Isolation,
    /// Whether sandboxes can be made with it here.
    pub available: bool,
    /// Why not, when it is not: what to install or enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub capabilities: Capabilities,
}

/// What a backend offers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capabilities {
    /// What stands between a sandbox's code and the host kernel, in a few words.
    pub isolation: String,
    /// Stronger than a shared kernel with namespaces.
    pub strong_isolation: bool,
    /// Pause keeps processes and memory (frozen in place, or checkpointed to disk).
    pub pause: bool,
    /// Snapshots can carry processes and memory, not only files.
    pub memory_snapshots: bool,
    pub networks: Vec<NetworkMode>,
    /// The limits the backend enforces: of `memory`, `cpu`, `pids`, `disk`.
    pub limits: Vec<String>,
    /// Volumes (the owner's home volume included) can be mounted.
    #[serde(default)]
    pub volumes: bool,
}

/// `POST /v1/sandboxes/{id}/exec` without streaming: the collected result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecResult {
    pub pid: u32,
    /// UTF-8 (invalid bytes replaced); `stdout_b64` has the exact bytes.
    pub stdout: String,
    pub stderr: String,
    pub stdout_b64: String,
    pub stderr_b64: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
}

/// One line of a streamed exec or attach (NDJSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    /// `data` is base64.
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        oom_killed: bool,
    },
    Error {
        code: String,
        message: String,
    },
}

/// A lifecycle event (the `/v1/events` stream and per-sandbox logs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub time: String,
    pub sandbox: String,
    pub owner: String,
    /// created, paused, resumed, stopped, started, terminated, timeout, failed, adopted...
    pub kind: String,
    pub message: String,
}

/// Every error the API returns: a stable machine code and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// A warm pool: sandboxes made ahead of demand for one template and resource profile,
/// handed out by creates that ask for exactly that profile (and no home volume, env or
/// published ports, which are fixed when a sandbox is made).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default = "host")]
    pub template: String,
    #[serde(default)]
    pub resources: ResourceRequest,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub isolation: Isolation,
    /// Warm sandboxes kept ready.
    pub min: usize,
    /// Most warm sandboxes at once (ready and being made).
    pub max: usize,
    /// A warm sandbox older than this is replaced by a fresh one.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

fn host() -> String {
    "host".into()
}

/// A pool and how full it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolInfo {
    pub spec: PoolSpec,
    pub ready: usize,
    pub hits: u64,
    pub misses: u64,
}

/// `POST /v1/sandboxes/{key}/processes/{pid}/share`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// Let the guest type too; read-only otherwise.
    #[serde(default)]
    pub write: bool,
}

/// A shared terminal: a token that lets a second client watch (or drive) one process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareInfo {
    /// Names the share in lists and revocations; not a credential.
    pub id: String,
    /// The credential, shown once, when the share is made.
    pub token: Option<String>,
    pub sandbox: String,
    pub pid: u32,
    pub write: bool,
    pub created_at: String,
}

/// The states of a session: a client's attachment to its sandbox.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The client is there (it calls or sends heartbeats).
    Active,
    /// The client went away; its sandbox runs on, waiting for it.
    Detached,
    /// Away too long: the sandbox is paused until the client comes back.
    Suspended,
    Terminated,
}

/// How long a session may stay in each state before it moves on: active without a
/// heartbeat → detached → suspended (sandbox paused) → terminated (sandbox removed).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SessionTimeouts {
    #[serde(default = "five_minutes")]
    pub active_secs: u64,
    #[serde(default = "one_hour")]
    pub detached_secs: u64,
    #[serde(default = "one_day")]
    pub suspended_secs: u64,
}

fn five_minutes() -> u64 {
    300
}
fn one_hour() -> u64 {
    3600
}
fn one_day() -> u64 {
    86_400
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self {
            active_secs: five_minutes(),
            detached_secs: one_hour(),
            suspended_secs: one_day(),
        }
    }
}

/// `POST /v1/sessions`: attach `client` to its default sandbox (made on first use from
/// `sandbox`'s settings, found again afterwards).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    pub client: String,
    #[serde(default)]
    pub sandbox: CreateSandbox,
    #[serde(default)]
    pub timeouts: Option<SessionTimeouts>,
}

/// `POST /v1/sessions/{id}/release`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSession {
    /// Keep the sandbox running for the client's next session; otherwise it is removed.
    #[serde(default)]
    pub keep_alive: bool,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub client: String,
    pub state: SessionState,
    pub sandbox: SandboxInfo,
    pub timeouts: SessionTimeouts,
    pub created_at: String,
    pub last_seen_at: String,
}
