//! The seam between Warren's lifecycle engine and the ways it can isolate a sandbox.
//!
//! A [`Backend`] makes sandboxes from one [`SandboxSpec`] and takes them over again after
//! a daemon restart; an [`Instance`] is one live sandbox: its agent connection, pause and
//! resume, usage figures, port traffic, teardown. Everything above this seam (exec,
//! files, terminals, watches, tenancy, timeouts) speaks the agent protocol through
//! [`Instance::connect`] and is the same for every backend.
//!
//! Adding a backend is a file: a type implementing both traits, and a line in
//! [`Backends::new`]. Capabilities a backend lacks are declared in its
//! [`BackendInfo`]; optional operations have default bodies that refuse with
//! [`Error::Unsupported`].

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use warren_types::api::{BackendInfo, Isolation};
use warren_types::spec::SandboxSpec;

use crate::client::{AgentClient, ClientError};
use crate::namespace::CreateOptions;
use crate::{Error, Result};

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One way to make sandboxes.
pub trait Backend: Send + Sync + Debug {
    fn kind(&self) -> Isolation;

    /// Whether it works on this host (and why not), and what it offers.
    fn info(&self) -> BackendInfo;

    /// Builds a sandbox and returns once its agent accepts connections.
    fn create(
        &self,
        spec: SandboxSpec,
        opts: CreateOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Instance>>>;

    /// Takes over a sandbox an earlier daemon made; `None` if it is gone.
    fn adopt(&self, id: &str) -> Option<Box<dyn Instance>>;

    /// Removes what is left of a sandbox whose monitor died without cleaning up; its
    /// writable layer too when `remove_data`.
    fn purge(&self, id: &str, remove_data: bool);

    /// Deletes a stopped sandbox's kept files.
    fn remove_data<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Waits until every teardown that [`Instance::end`] left running has finished (at
    /// the daemon's exit, so that nothing it made outlives it half removed).
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Makes a sandbox from what [`Instance::save_memory`] saved of another sandbox of
    /// this backend: its processes go on where they were (the memory image `image`),
    /// over a copy of the writable layer saved with it (`files/upper`). Only backends
    /// whose info declares `memory_snapshots`.
    fn restore<'a>(
        &'a self,
        spec: SandboxSpec,
        image: &'a Path,
        files: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>>> {
        let _ = (spec, image, files);
        Box::pin(async { Err(Error::Unsupported("memory snapshots")) })
    }
}

/// Usage figures of a live sandbox, from its cgroup (or what the backend has instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_us: u64,
    pub memory_bytes: u64,
    pub oom_kills: u64,
    /// Processes and threads.
    pub tasks: u64,
}

/// Connects to a port inside a sandbox, blocking, within a timeout.
pub type PortDialer = Box<dyn FnOnce(u16, Duration) -> std::io::Result<std::net::TcpStream> + Send>;

impl Usage {
    /// The figures of a sandbox whose processes are all in `cgroup`.
    pub fn of(cgroup: &warren_sys::cgroup::Cgroup) -> Self {
        Self {
            cpu_us: cgroup.cpu_usage_us(),
            memory_bytes: cgroup.memory_current(),
            oom_kills: cgroup.oom_kills(),
            tasks: cgroup.tasks_current(),
        }
    }
}

/// One live (running or paused) sandbox.
pub trait Instance: Send + Sync + Debug {
    fn id(&self) -> &str;

    /// Where the sandbox's agent accepts connections: a unix socket on the host (a
    /// microVM backend's vsock is one too, behind its VMM's handshake).
    fn agent_socket(&self) -> &Path;

    /// A connection to the sandbox's agent.
    fn connect(&self) -> BoxFuture<'_, Result<AgentClient>> {
        Box::pin(async move { Ok(connect_agent(self.agent_socket()).await?) })
    }

    /// Stops every process where it is (memory kept).
    fn pause(&self) -> Result<()>;

    fn resume(&self) -> Result<()>;

    /// Whether its processes are stopped by [`pause`](Self::pause) right now.
    fn is_paused(&self) -> bool;

    fn usage(&self) -> Usage;

    /// [`Usage::cpu_us`] alone: the reaper reads it every pass to tell a busy sandbox,
    /// and the whole usage only when it keeps a reading.
    fn cpu_us(&self) -> u64 {
        self.usage().cpu_us
    }

    /// [`Usage::oom_kills`] alone: an exec reads it before and after the command, and
    /// the other figures cost a cgroup file each.
    fn oom_kills(&self) -> u64 {
        self.usage().oom_kills
    }

    /// How often the host refused the sandbox a task for its limit, where that stops
    /// the whole sandbox (gVisor); 0 where a process is refused and the sandbox goes on.
    fn fatal_task_limit_hits(&self) -> u64 {
        0
    }

    /// Whether the sandbox still runs.
    fn is_alive(&mut self) -> bool;

    /// What makes TCP connections to ports on the sandbox's own loopback from the host.
    /// It is taken out (the sandbox's entry stays locked only briefly) and called off the
    /// async runtime: it blocks.
    fn port_dialer(&self) -> PortDialer;

    /// The host process that watches the sandbox (for a snapshot that must read the
    /// writable layer from inside the sandbox's mount namespace), when there is one. May
    /// block (a gVisor sandbox paused to disk waits until nothing mounts its disk).
    fn monitor_pid(&self) -> Option<i32> {
        None
    }

    /// Stops everything and removes what the sandbox was made of (its writable layer
    /// too if it was created ephemeral).
    fn destroy(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// Ends a sandbox that will never run again under this id: like
    /// [`destroy`](Self::destroy), but it may return once the sandbox's processes are
    /// gone, with the rest of its teardown (cgroup, mounts, run directory) finishing
    /// after; [`Backend::settle`] waits for that. Not for a stop whose files a start
    /// takes up again: that start would meet the teardown still going.
    fn end(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.destroy()
    }

    /// Saves the sandbox's processes and memory, and its writable layer, as they are at
    /// one moment, into `into` (`image/` and `upper/`, see
    /// [`memory_dir`](crate::template::memory_dir)); the sandbox goes on as it was
    /// (running or paused). Only backends whose info declares `memory_snapshots`.
    fn save_memory(&self, into: &Path) -> Result<()> {
        let _ = into;
        Err(Error::Unsupported("memory snapshots"))
    }
}

/// The teardowns of a backend's sandboxes still finishing after their end was answered
/// ([`Instance::end`]): each holds the lock shared while it runs, and
/// [`Backend::settle`] waits until it can take it whole.
#[derive(Debug, Clone, Default)]
pub(crate) struct Teardowns(Arc<tokio::sync::RwLock<()>>);

impl Teardowns {
    /// Held by one teardown until it has finished.
    pub(crate) async fn hold(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.0.clone().read_owned().await
    }

    /// Waits for the teardowns begun before this call; those begun while it waits queue
    /// behind it and are not waited for.
    pub(crate) async fn settle(&self) {
        drop(self.0.write().await);
    }
}

/// Connects to the agent's socket at `path`, never through a link there. A backend whose
/// sandbox can write in the socket's directory (gVisor's `--host-uds` makes the agent's
/// files there host files) would otherwise let it swap the socket for a link to another
/// sandbox's agent, and have the daemon run its commands there. The socket is opened as a
/// path (`O_PATH | O_NOFOLLOW`), checked to be one, and connected to through that
/// descriptor, so what is checked is what is connected to.
pub async fn connect_agent(path: &Path) -> Result<AgentClient, ClientError> {
    connect_agent_with(path, Hello::Ask).await
}

/// How a connection to an agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// Ask which protocol version the agent speaks and wait for the answer.
    Ask,
    /// The agent is known to speak this version: the first request follows the hello
    /// at once ([`AgentClient::connect_known`]).
    Known(u16),
}

/// [`connect_agent`], starting as `hello` says.
pub async fn connect_agent_with(path: &Path, hello: Hello) -> Result<AgentClient, ClientError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let connect_err = ClientError::Connect;
    let pinned = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(connect_err)?;
    let is_socket = pinned
        .metadata()
        .map_err(connect_err)?
        .file_type()
        .is_socket();
    if !is_socket {
        return Err(connect_err(std::io::Error::other(format!(
            "{} is not the agent's socket",
            path.display()
        ))));
    }
    let via = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let client = match hello {
        Hello::Ask => AgentClient::connect(Path::new(&via)).await,
        Hello::Known(version) => AgentClient::connect_known(Path::new(&via), version).await,
    };
    drop(pinned);
    client
}

/// The backends of this daemon, one per [`Isolation`] it knows.
#[derive(Debug, Clone)]
pub struct Backends {
    all: Vec<Arc<dyn Backend>>,
}

impl Backends {
    pub fn new(all: Vec<Arc<dyn Backend>>) -> Self {
        Self { all }
    }

    /// The backend of `kind`, if this daemon has it and it is available here.
    pub fn get(&self, kind: Isolation) -> Result<&Arc<dyn Backend>> {
        let b = self
            .all
            .iter()
            .find(|b| b.kind() == kind)
            .ok_or(Error::Unavailable {
                kind,
                why: "this daemon was not started with it".into(),
            })?;
        let info = b.info();
        if !info.available {
            return Err(Error::Unavailable {
                kind,
                why: info.reason.unwrap_or_default(),
            });
        }
        Ok(b)
    }

    /// Every backend this daemon knows, available or not, in the order of
    /// [`Isolation::ALL`].
    pub fn infos(&self) -> Vec<BackendInfo> {
        let mut out: Vec<BackendInfo> = self.all.iter().map(|b| b.info()).collect();
        for kind in Isolation::ALL {
            if !out.iter().any(|i| i.name == kind) {
                out.push(BackendInfo {
                    name: kind,
                    available: false,
                    reason: Some("not built into this daemon".into()),
                    capabilities: Default::default(),
                });
            }
        }
        out.sort_by_key(|i| Isolation::ALL.iter().position(|k| *k == i.name));
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.all.iter()
    }
}
