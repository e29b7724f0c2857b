//! The native REST API's request and response bodies (JSON), shared by the server, the
//! CLI client and the core. The routes are listed in docs/api.md and in the OpenAPI
//! document the server serves at `/openapi.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::spec::HostMount;
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(default = "terminate"))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Who the sandbox is for (a user, an agent); defaults to the tenant's name.
    #[serde(default)]
    pub owner: Option<String>,
    /// Unique per owner. With `get_or_create`, an existing sandbox of that name is
    /// returned (and resumed or started if needed) instead of an error.
    #[serde(default)]
    pub name: Option<String>,
    /// With a name: return (and resume or start) the existing sandbox of that name instead
    /// of failing with `name_taken`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub get_or_create: bool,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = "host"))]
    pub template: Option<String>,
    #[serde(default)]
    pub resources: ResourceRequest,
    #[serde(default)]
    pub network: NetworkMode,
    /// Where a `nat` sandbox may connect to (open when left out); changeable later
    /// with `PUT /v1/sandboxes/{key}/egress`.
    #[serde(default)]
    pub egress: crate::egress::Egress,
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
    #[cfg_attr(feature = "openapi", schema(maximum = 315360000))]
    pub timeout_secs: Option<u64>,
    /// Seconds without activity (API calls, attached clients, CPU use inside) before
    /// the timeout action applies.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 315360000))]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub on_timeout: Option<TimeoutAction>,
    /// When paused, resume by itself on the next use: an exec or file call, a
    /// terminal, traffic to a port (the first request waits for it) [default: false].
    #[serde(default)]
    pub auto_resume: Option<bool>,
    /// The `Host` header traffic to the sandbox's ports through the daemon carries
    /// (`${PORT}` stands for the port), instead of the client's.
    #[serde(default)]
    pub request_host: Option<String>,
    /// Mount the owner's persistent volume at /home/user (default true).
    #[serde(default)]
    pub home_volume: Option<bool>,
    /// Size of the owner's home volume in bytes, when this request makes it (the
    /// daemon's default otherwise); an existing volume keeps its size.
    #[serde(default)]
    pub home_size: Option<u64>,
    /// Directories of the daemon's host to mount in (`docker run -v` style). Allowed only
    /// on the daemon's unix socket (the host's root); refused on TCP, operator keys
    /// included, with 403 `permission_denied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<HostMount>,
    /// Issue a traffic token: connections to the sandbox's ports through the daemon
    /// (`PORT-ID.DOMAIN` hosts on the E2B surface) must then carry it. Without one, anyone
    /// who can reach that surface and knows the sandbox's id reaches its ports.
    #[serde(default)]
    pub traffic_token: bool,
    /// The backend to make the sandbox with; the template's default (or the daemon's)
    /// when absent. `GET /v1/backends` lists what this host offers.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// What the backend must offer. Without `isolation`, the first available backend
    /// that offers it (and the asked network, published ports and limits) is chosen:
    /// the template's default, the daemon's, then namespace, gvisor, runc, crun, and
    /// process where trust mode is open to the tenant. With `isolation`, that backend
    /// must offer it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Requirements>,
}

/// What a sandbox needs of its backend, as `GET /v1/backends` describes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Snapshots and forks that carry processes and memory.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub memory_snapshots: bool,
    /// Stronger than a shared kernel with namespaces (gVisor's own kernel).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub strong_isolation: bool,
    /// Pause keeps processes and memory.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub pause: bool,
    /// At least this many bytes of memory, held as a limit: the backend must enforce
    /// one, and the sandbox's limit is at least this (a default below it is raised; a
    /// `resources.memory` below it is refused).
    #[serde(default)]
    pub memory: Option<u64>,
    /// A named set of the above.
    #[serde(default)]
    pub profile: Option<Profile>,
}

/// Named sets of requirements, fixed: one stands for the requirement it names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// For code nobody vouches for: strong isolation.
    Untrusted,
    /// For sandboxes that are forked or saved with their processes: memory snapshots.
    Snapshots,
}

impl Requirements {
    /// Strong isolation, asked for itself or by the profile.
    pub fn needs_strong_isolation(&self) -> bool {
        self.strong_isolation || self.profile == Some(Profile::Untrusted)
    }

    /// Memory snapshots, asked for themselves or by the profile.
    pub fn needs_memory_snapshots(&self) -> bool {
        self.memory_snapshots || self.profile == Some(Profile::Snapshots)
    }
}

/// `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// New lifetime, from now.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 315360000))]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 315360000))]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub on_timeout: Option<TimeoutAction>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxInfo {
    pub id: String,
    pub owner: String,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub name: Option<String>,
    pub template: String,
    pub state: SandboxState,
    pub resources: ResourceRequest,
    pub network: NetworkMode,
    /// Where it may connect to (`{}`: anywhere).
    #[serde(default)]
    pub egress: crate::egress::Egress,
    pub publish: Vec<PortMap>,
    /// The host directories mounted in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<HostMount>,
    #[serde(default)]
    pub isolation: Isolation,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 times.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_active_at: String,
    /// When the lifetime ends, if it has one.
    #[cfg_attr(feature = "openapi", schema(required, format = DateTime))]
    pub expires_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub idle_timeout_secs: Option<u64>,
    pub on_timeout: TimeoutAction,
    /// A paused sandbox resumes by itself on its next use.
    #[serde(default)]
    pub auto_resume: bool,
    /// The `Host` its ports see on traffic through the daemon, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_host: Option<String>,
    /// Required on exec and file calls made with it instead of an API key. Shown only
    /// in the answer that creates the sandbox (or finds it, with `get_or_create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Required on traffic to the sandbox's ports, when it was created with one. Shown
    /// as the access token is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_token: Option<String>,
    /// The last reading of its CPU, memory and disk, while it runs (in lists and
    /// `GET /v1/sandboxes/{key}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageSample>,
}

/// A persistent volume: an owner's home, mounted at `/home/user` in each of the owner's
/// sandboxes (`GET /v1/volumes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeInfo {
    /// The owner whose home it is: the volume routes name it by this.
    pub owner: String,
    /// Where the daemon keeps it: `$WARREN_DATA_DIR/volumes/NAME`.
    pub name: String,
    /// Its size when it is an ext4 image of its own (made with `home_size`); a directory
    /// has none and takes what the disk has.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub size_bytes: Option<u64>,
    /// Bytes it takes on the host's disk.
    pub used_bytes: u64,
    /// The sandboxes that mount it (any not terminated: a stopped one mounts it again
    /// when started).
    pub used_by: Vec<String>,
}

/// `POST /v1/volumes/{owner}/resize`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// The new size: more than the volume's, within the daemon's largest home.
    pub size_bytes: u64,
}

/// An API key as `GET /v1/keys` lists it. The key itself is shown once, when it is made,
/// and never again: the daemon keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// Names the key to `DELETE /v1/keys/{id}`: the first 16 hex digits of its SHA-256
    /// hash, which tell nothing of the key.
    pub id: String,
    pub tenant: String,
    /// An operator's key (no quota, the whole host's metrics and templates).
    pub operator: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A tenant as `GET /v1/tenants` lists it (the daemon's unix socket only), with what it
/// holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantInfo {
    pub name: String,
    /// Unix milliseconds its first API key was made; none for a tenant only the unix
    /// socket has acted for.
    pub created_at: Option<i64>,
    pub keys: u64,
    /// Sandboxes that are not terminated, stopped ones included.
    pub sandboxes: u64,
    pub volumes: u64,
    /// Templates it built, imported or uploaded (its snapshots apart).
    pub templates: u64,
    pub snapshots: u64,
}

/// What `DELETE /v1/tenants/{name}` removed, and what it kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantRemoval {
    pub name: String,
    /// API keys revoked (with the SSH keys of its owners).
    pub keys: u64,
    pub sandboxes: u64,
    pub volumes: u64,
    pub templates: u64,
    pub snapshots: u64,
    /// Snapshots kept (`keep_snapshots`): a tenant of the same name has them again.
    pub kept_snapshots: Vec<String>,
    /// Templates it made for every tenant: others may use them, so they stay until
    /// removed by name.
    pub kept_templates: Vec<String>,
}

/// `POST /v1/ssh-keys`: a public key an owner signs in to the SSH gateway with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddSshKey {
    /// The owner whose sandboxes the key reaches (`ssh OWNER+NAME@host`).
    pub owner: String,
    /// One line of an OpenSSH public key file (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
    /// The template a sandbox this key signs in to is made from when it does not exist
    /// yet [default: the daemon's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A registered SSH public key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshKey {
    pub owner: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `ssh-ed25519`, `ssh-rsa`, ...
    pub algorithm: String,
    pub comment: String,
    /// The key as OpenSSH writes it, without its comment.
    pub public_key: String,
    /// Where a sandbox it signs in to is made from, when it does not exist yet.
    #[serde(default)]
    pub template: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// `POST /v1/sandboxes/{key}/fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies [default: 1].
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16))]
    pub count: Option<usize>,
}

/// One reading of a sandbox's use, taken by the daemon every few seconds while it is
/// live (`GET /v1/sandboxes/{key}/metrics`, E2B's sandbox metrics).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageSample {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// CPU time used since the reading before, as a share of one CPU (100 = one CPU
    /// busy the whole time).
    pub cpu_pct: f64,
    pub memory_bytes: u64,
    /// The files the sandbox added, as last measured.
    pub disk_bytes: u64,
    /// Processes and threads in the sandbox's cgroup (what `--pids` limits), Warren's
    /// own included (under gVisor, its kernel's threads); 0 from a daemon that did not
    /// count them.
    #[serde(default)]
    pub pids: u64,
}

/// `GET /v1/backends`: one isolation backend of this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Host directories can be mounted (`mounts`, on the unix socket).
    #[serde(default)]
    pub host_mounts: bool,
    /// The networks on which a sandbox's ports can be published to the host.
    #[serde(default)]
    pub publish: Vec<NetworkMode>,
    /// Why a capability this backend lacks is missing here, by its name above.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lacking: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/sandboxes/{id}/exec` without streaming: the collected result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResult {
    pub pid: u32,
    /// UTF-8 (invalid bytes replaced); `stdout_b64` has the exact bytes.
    pub stdout: String,
    pub stderr: String,
    /// The exact bytes of stdout, in base64.
    #[cfg_attr(feature = "openapi", schema(format = Byte))]
    pub stdout_b64: String,
    /// The exact bytes of stderr, in base64.
    #[cfg_attr(feature = "openapi", schema(format = Byte))]
    pub stderr_b64: String,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub exit_code: Option<i32>,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Killed by the sandbox's memory limit.
    pub oom_killed: bool,
}

/// One line of a streamed exec or attach (NDJSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    /// `data` is base64.
    Stdout {
        #[cfg_attr(feature = "openapi", schema(format = Byte))]
        data: String,
    },
    Stderr {
        #[cfg_attr(feature = "openapi", schema(format = Byte))]
        data: String,
    },
    Exit {
        #[cfg_attr(feature = "openapi", schema(required))]
        exit_code: Option<i32>,
        #[cfg_attr(feature = "openapi", schema(required))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub time: String,
    pub sandbox: String,
    pub owner: String,
    /// created, paused, resumed, stopped, started, terminated, timeout, failed, adopted...
    pub kind: String,
    pub message: String,
}

/// Every error the API returns: a stable machine code and a message for people.
///
/// `code` stays a string: a client reads the codes of daemons newer than itself too.
/// The daemon sends only [`WireCode`]s.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Error))]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// The stable machine codes of the API's errors (the `code` of an [`ApiError`], of an
/// `error` line in a stream, of a terminal's `error` message), and the HTTP status each
/// is answered with. docs/api.md lists them; clients program against them, so a code
/// once sent is never renamed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WireCode {
    InvalidJson,
    /// Also answers a refused WebSocket upgrade, with the upgrade's own status (405 for a
    /// method other than GET, 426 for a connection that cannot upgrade): the call site
    /// passes it.
    InvalidRequest,
    CommandNotFound,
    IsADirectory,
    NotADirectory,
    NotAFile,
    NotEmpty,
    Unauthorized,
    PermissionDenied,
    /// Input from a share's guest that may only watch.
    ReadOnly,
    NotFound,
    FileNotFound,
    ProcessNotFound,
    MethodNotAllowed,
    InvalidState,
    NameTaken,
    AlreadyExists,
    ShareRevoked,
    PayloadTooLarge,
    QuotaExceeded,
    BackendFailed,
    StoreError,
    AgentError,
    IoError,
    Busy,
    Unavailable,
    ShuttingDown,
    NoSpace,
}

impl WireCode {
    /// Every code, in the order of docs/api.md's table.
    pub const ALL: [Self; 28] = [
        Self::InvalidJson,
        Self::InvalidRequest,
        Self::CommandNotFound,
        Self::IsADirectory,
        Self::NotADirectory,
        Self::NotAFile,
        Self::NotEmpty,
        Self::Unauthorized,
        Self::PermissionDenied,
        Self::ReadOnly,
        Self::NotFound,
        Self::FileNotFound,
        Self::ProcessNotFound,
        Self::MethodNotAllowed,
        Self::InvalidState,
        Self::NameTaken,
        Self::AlreadyExists,
        Self::ShareRevoked,
        Self::PayloadTooLarge,
        Self::QuotaExceeded,
        Self::BackendFailed,
        Self::StoreError,
        Self::AgentError,
        Self::IoError,
        Self::Busy,
        Self::Unavailable,
        Self::ShuttingDown,
        Self::NoSpace,
    ];

    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::CommandNotFound => "command_not_found",
            Self::IsADirectory => "is_a_directory",
            Self::NotADirectory => "not_a_directory",
            Self::NotAFile => "not_a_file",
            Self::NotEmpty => "not_empty",
            Self::Unauthorized => "unauthorized",
            Self::PermissionDenied => "permission_denied",
            Self::ReadOnly => "read_only",
            Self::NotFound => "not_found",
            Self::FileNotFound => "file_not_found",
            Self::ProcessNotFound => "process_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidState => "invalid_state",
            Self::NameTaken => "name_taken",
            Self::AlreadyExists => "already_exists",
            Self::ShareRevoked => "share_revoked",
            Self::PayloadTooLarge => "payload_too_large",
            Self::QuotaExceeded => "quota_exceeded",
            Self::BackendFailed => "backend_failed",
            Self::StoreError => "store_error",
            Self::AgentError => "agent_error",
            Self::IoError => "io_error",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::NoSpace => "no_space",
        }
    }

    /// The HTTP status an error with this code is answered with. Codes sent only on a
    /// terminal or in a stream (`read_only`, `share_revoked`, `shutting_down`) have one
    /// too: the status they stand for, which the E2B surfaces translate.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::CommandNotFound
            | Self::IsADirectory
            | Self::NotADirectory
            | Self::NotAFile
            | Self::NotEmpty => 400,
            Self::Unauthorized => 401,
            Self::PermissionDenied | Self::ReadOnly => 403,
            Self::NotFound | Self::FileNotFound | Self::ProcessNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::InvalidState | Self::NameTaken | Self::AlreadyExists => 409,
            Self::ShareRevoked => 410,
            Self::PayloadTooLarge => 413,
            Self::QuotaExceeded => 429,
            Self::BackendFailed | Self::StoreError | Self::AgentError | Self::IoError => 500,
            Self::Busy | Self::Unavailable | Self::ShuttingDown => 503,
            Self::NoSpace => 507,
        }
    }
}

impl std::fmt::Display for WireCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A warm pool: sandboxes made ahead of demand for one template and resource profile,
/// handed out by creates that ask for exactly that profile (and no home volume, env or
/// published ports, which are fixed when a sandbox is made).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default = "host")]
    #[cfg_attr(feature = "openapi", schema(default = "host"))]
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
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolInfo {
    pub spec: PoolSpec,
    pub ready: usize,
    pub hits: u64,
    pub misses: u64,
}

/// `POST /v1/sandboxes/{key}/processes/{pid}/share`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// Let the guest type too; read-only otherwise.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub write: bool,
    /// Show the guest the output the agent still holds from before the share too (the
    /// screen as it is now, and what scrolled past); otherwise a guest sees what comes
    /// after the share only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub screen: bool,
}

/// A one-time link that lets a browser reach one port of a sandbox through the daemon's
/// TCP listener, on a host of its own (`PORT-ID.HOST`): the answer of
/// `POST /v1/sandboxes/{key}/ports/{port}/link`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortLinkInfo {
    /// The sandbox's id.
    pub sandbox: String,
    pub port: u16,
    /// Spent by the first request to the port's host that carries it as
    /// `?warren_port_link=CODE`, which answers with a cookie for that host and a redirect.
    pub code: String,
    /// Where to send the browser: the port's host under the host this request was sent
    /// to (`localhost` for a loopback address). Absent when that is an address other than
    /// loopback (a port host needs a name) or the request came over the unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How long the code waits for its first use.
    pub expires_in_secs: u64,
}

/// A shared terminal: a token that lets a second client watch (or drive) one process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareInfo {
    /// Names the share in lists and revocations; not a credential.
    pub id: String,
    /// The credential, shown once, when the share is made.
    pub token: Option<String>,
    pub sandbox: String,
    pub pid: u32,
    pub write: bool,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
}

/// The states of a session: a client's attachment to its sandbox.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionTimeouts {
    #[serde(default = "five_minutes")]
    #[cfg_attr(feature = "openapi", schema(default = 300))]
    pub active_secs: u64,
    #[serde(default = "one_hour")]
    #[cfg_attr(feature = "openapi", schema(default = 3600))]
    pub detached_secs: u64,
    #[serde(default = "one_day")]
    #[cfg_attr(feature = "openapi", schema(default = 86400))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReleaseSession {
    /// Keep the sandbox running for the client's next session; otherwise it is removed.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub keep_alive: bool,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub id: String,
    pub client: String,
    pub state: SessionState,
    pub sandbox: SandboxInfo,
    pub timeouts: SessionTimeouts,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_seen_at: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn wire_codes_serialize_as_their_names() {
        let all: BTreeSet<_> = WireCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(all.len(), WireCode::ALL.len(), "a code listed twice");
        for code in WireCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<WireCode>(&json).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
            assert!((400..600).contains(&code.status()), "{code}");
        }
    }

    #[test]
    fn every_variant_is_in_all() {
        // A new variant breaks this match until it is added to ALL too.
        let listed = |c: WireCode| match c {
            WireCode::InvalidJson
            | WireCode::InvalidRequest
            | WireCode::CommandNotFound
            | WireCode::IsADirectory
            | WireCode::NotADirectory
            | WireCode::NotAFile
            | WireCode::NotEmpty
            | WireCode::Unauthorized
            | WireCode::PermissionDenied
            | WireCode::ReadOnly
            | WireCode::NotFound
            | WireCode::FileNotFound
            | WireCode::ProcessNotFound
            | WireCode::MethodNotAllowed
            | WireCode::InvalidState
            | WireCode::NameTaken
            | WireCode::AlreadyExists
            | WireCode::ShareRevoked
            | WireCode::PayloadTooLarge
            | WireCode::QuotaExceeded
            | WireCode::BackendFailed
            | WireCode::StoreError
            | WireCode::AgentError
            | WireCode::IoError
            | WireCode::Busy
            | WireCode::Unavailable
            | WireCode::ShuttingDown
            | WireCode::NoSpace => WireCode::ALL.contains(&c),
        };
        assert!(WireCode::ALL.into_iter().all(listed));
    }

    /// docs/api.md's table of errors: (status, code) for every code in a row.
    fn documented_codes() -> BTreeSet<(u16, String)> {
        let doc = include_str!("../../../docs/api.md");
        let section = doc
            .split("\n## Errors\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("docs/api.md has an Errors section");
        let mut codes = BTreeSet::new();
        for row in section.lines().filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let Ok(status) = cells[1].parse::<u16>() else {
                continue;
            };
            for code in cells[2].split(", ") {
                let code = code.trim_matches('`');
                codes.insert((status, code.to_string()));
            }
        }
        codes
    }

    #[test]
    fn docs_list_every_code_with_its_status() {
        let ours: BTreeSet<_> = WireCode::ALL
            .iter()
            .map(|c| (c.status(), c.as_str().to_string()))
            .collect();
        assert_eq!(documented_codes(), ours);
    }
}
