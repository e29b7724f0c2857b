//! The agent: PID 1 of every sandbox, serving the agent protocol
//! ([`warren_types::proto`]) on a unix socket.
//!
//! The runtime binds the socket before it pivots into the sandbox's root, so the agent
//! only ever holds the listening descriptor: the socket's path may not exist in the
//! filesystem the agent sees.
//!
//! Everything runs on one thread (a current-thread tokio runtime). That is not only
//! frugal: it is what makes reaping sound (see `process`), and it keeps the state a
//! few mutexes that are never held across an await. Blocking file work goes to tokio's
//! blocking pool, which never forks.
//!
//! The agent never exits on a client's mistake: malformed requests get
//! `ErrorCode::BadRequest` on their channel, a broken frame stream closes only that
//! connection.

#![forbid(unsafe_code)]

pub mod client;
mod conn;
mod files;
mod flow;
mod process;
mod ring;
mod user;
mod watches;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use warren_sys::seccomp::SeccompProgram;
use warren_types::proto::{ErrorCode, Response, User};

/// How the agent runs its processes.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The sandbox's environment; each exec's own variables override it.
    pub env: BTreeMap<String, String>,
    /// Reap every child with `waitpid(-1)`, as PID 1 must (orphans are reparented to it).
    /// False when embedded in another process, which may have children of its own.
    pub reap_all: bool,
    /// Installed in every process the agent starts; `None` once [`Self::confine_agent`]
    /// has put the agent itself under it, whose children inherit it.
    pub seccomp: Option<Arc<SeccompProgram>>,
    /// Limit every process to [`warren_sys::caps::KEPT_CAPABILITIES`].
    pub drop_caps: bool,
    /// Leave `no_new_privs` off, so setuid programs of a template that keeps them (its
    /// `sudo`) raise a process to the sandbox's root; see `warren_sys::child`.
    pub allow_setuid: bool,
    /// Who processes run as when an exec names nobody; `None` keeps the agent's identity.
    pub user: Option<User>,
    /// Make every process the OOM killer's first choice (`oom_score_adj` 1000), so that
    /// a sandbox out of memory loses a process and keeps its agent. False where no
    /// kernel chooses among them: under gVisor the host's OOM killer sees one Sentry and
    /// takes the sandbox whole, and gVisor's kernel has no OOM killer of its own.
    pub oom_victims: bool,
    /// Working directory when an exec names none and its user has no home.
    pub cwd: Option<PathBuf>,
    /// Working directory of every exec that names none, ahead of the user's home: a
    /// template's (an image's `WorkingDir`).
    pub workdir: Option<PathBuf>,
    /// Output kept per process (stdout and stderr together), in bytes.
    pub ring_size: usize,
    /// `serve` kills every process it started and returns once this turns true. PID 1
    /// never stops and leaves it `None`.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// The listener's path, for a sandbox whose memory is saved to disk: on SIGUSR1 the
    /// agent closes its listener and every connection (an open host socket cannot be
    /// saved), removes the socket's path and keeps its processes; on SIGUSR2, after the
    /// restore, it listens again.
    pub rebind: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            env: BTreeMap::new(),
            reap_all: false,
            seccomp: None,
            drop_caps: false,
            allow_setuid: false,
            user: None,
            oom_victims: true,
            cwd: None,
            workdir: None,
            ring_size: 1 << 20,
            shutdown: None,
            rebind: None,
        }
    }
}

impl AgentConfig {
    /// Puts the agent's own process under [`Self::seccomp`], so that every process it
    /// starts inherits the filter instead of installing it: an install converts,
    /// JIT-compiles and analyses the whole program again, about 0.3 ms of an exec of
    /// `true` on a host and 2 ms under gVisor, where an inherited filter is shared as it
    /// is. The policy refuses nothing the agent does once it serves (it mounts, joins and
    /// traces nothing), and every child still sets `no_new_privs` itself, as before.
    ///
    /// For the sandbox's first process, before [`serve`], by whoever started it (not by
    /// an agent embedded in a process that runs other code). The kernel takes a filter
    /// from a process with `no_new_privs` (an OCI runtime's container process) or with
    /// `CAP_SYS_ADMIN` in its user namespace (the namespace backend's, which must not set
    /// `no_new_privs` on itself: a template's setuid programs need it unset in their
    /// processes). Where it takes none, the error is returned and every child installs
    /// the filter as before.
    pub fn confine_agent(&mut self) -> io::Result<()> {
        if let Some(filter) = &self.seccomp {
            filter.install_on_process()?;
            self.seccomp = None;
        }
        Ok(())
    }
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Agent {
    config: AgentConfig,
    procs: process::Procs,
    busy: Arc<Busy>,
}

/// The operations in flight on every connection, and a wake-up for the agent's loop
/// when their number leaves zero or comes back to it: the agent gives back memory once
/// it has been idle a while, whether or not a client stays connected.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    count: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Busy {
    /// Counts one operation until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> BusyGuard {
        if self.count.fetch_add(1, Ordering::SeqCst) == 0 {
            self.changed.notify_one();
        }
        BusyGuard(self.clone())
    }

    fn idle(&self) -> bool {
        self.count.load(Ordering::SeqCst) == 0
    }
}

/// One operation in flight (see [`Busy`]).
#[derive(Debug)]
pub(crate) struct BusyGuard(Arc<Busy>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// Serves the agent protocol on `listener` until `config.shutdown` (forever as PID 1).
pub fn serve(listener: std::os::unix::net::UnixListener, config: AgentConfig) -> io::Result<()> {
    if config.drop_caps {
        // Before any thread exists: every process started after gets no more than this
        // bounding set, which it then need not limit itself.
        warren_sys::caps::limit_bounding_set();
    }
    if config.reap_all {
        warren_sys::child::set_non_dumpable()?;
        // No core dumps in a sandbox, and no way to turn them back on (raising a hard
        // limit needs CAP_SYS_RESOURCE in the host's user namespace): the host's
        // core_pattern may pipe a crash to a host program running as host root, and
        // writes the dump to the host's disk.
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(listener, config))
}

async fn run(listener: std::os::unix::net::UnixListener, config: AgentConfig) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // An image's working directory that its layers do not hold (its config names one
    // no layer made) is made, as an OCI runtime makes a missing `cwd`: empty, the
    // agent's own, mode 0755. Where it cannot be made, each exec says so.
    if let Some(dir) = &config.workdir {
        if std::fs::symlink_metadata(dir).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir);
        }
    }
    let mut listener = Some(tokio::net::UnixListener::from_std(listener)?);
    // Registered before any child exists, so no exit goes unnoticed.
    let sigchld = signal(SignalKind::child())?;
    let mut quiesce = match config.rebind {
        Some(_) => Some((
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::user_defined2())?,
        )),
        None => None,
    };
    // Every handler the agent has is set now: the processes it starts reset just those.
    warren_sys::child::record_dispositions();
    let mut shutdown = config.shutdown.clone();
    let agent = Arc::new(Agent {
        config,
        procs: process::Procs::new(),
        busy: Arc::default(),
    });
    let reaper = tokio::spawn(process::reaper(agent.clone(), sigchld));
    let mut conns = tokio::task::JoinSet::new();
    // When memory goes back to the kernel: a while after the last operation ended (a
    // command's buffers are freed by then), not between one and the next; a client may
    // stay connected (the daemon does). Not before the first: a forked agent's heap is
    // then still shared with the process it came from, and a trim would write private
    // copies of its pages.
    let idle_from_now = || Some(tokio::time::Instant::now() + IDLE_TRIM);
    let mut trim_at = None;
    loop {
        tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(conn::serve(stream, agent.clone()));
                }
                // Out of descriptors or memory: refuse this client, keep serving others.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {
                if conns.is_empty() && agent.busy.idle() {
                    // A connection's buffers are gone with it.
                    trim_at = idle_from_now();
                }
            }
            () = agent.busy.changed.notified() => {
                trim_at = if agent.busy.idle() { idle_from_now() } else { None };
            }
            () = trim(trim_at) => {
                trim_at = None;
                // Its code's page tables stay: the idle loop maps most of them again
                // at once, and the next command would fault them back.
                warren_sys::heap::release_free();
            }
            close = quiesced(&mut quiesce) => {
                if close {
                    listener = None;
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                    // What a checkpoint saves is this process's memory: not its free pages.
                    warren_sys::heap::release_free();
                    // Gone from the directory: the sign, seen from outside, that the
                    // agent holds no socket any more.
                    if let Some(path) = &agent.config.rebind {
                        let _ = std::fs::remove_file(path);
                    }
                } else if let Some(path) = &agent.config.rebind {
                    let _ = std::fs::remove_file(path);
                    if let Ok(l) = tokio::net::UnixListener::bind(path) {
                        listener = Some(l);
                    }
                }
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    reaper.abort();
    agent.procs.kill_all(agent.config.reap_all);
    Ok(())
}

/// How long the agent waits without an operation in flight before it gives its free
/// heap back.
const IDLE_TRIM: Duration = Duration::from_secs(1);

/// Ready at `at`; never without it.
async fn trim(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next connection, or never while the listener is closed.
async fn accept(
    listener: &Option<tokio::net::UnixListener>,
) -> io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// True on the next SIGUSR1 (close), false on the next SIGUSR2 (listen again); never
/// without `rebind`.
async fn quiesced(
    signals: &mut Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
) -> bool {
    match signals {
        Some((usr1, usr2)) => tokio::select! {
            _ = usr1.recv() => true,
            _ = usr2.recv() => false,
        },
        None => std::future::pending().await,
    }
}

async fn stopped(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            // A dropped sender means nobody can stop us any more: run on.
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A request that failed, as the client will see it.
#[derive(Debug)]
pub(crate) struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An I/O error on `path`, with the stable code clients branch on.
    pub(crate) fn io(path: impl std::fmt::Display, e: &io::Error) -> Self {
        let code = match e.raw_os_error() {
            Some(libc::ENOENT) => ErrorCode::NotFound,
            Some(libc::EEXIST) => ErrorCode::AlreadyExists,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                ErrorCode::PermissionDenied
            }
            Some(libc::ENOTDIR) => ErrorCode::NotADirectory,
            Some(libc::EISDIR) => ErrorCode::IsADirectory,
            Some(libc::ENOTEMPTY) => ErrorCode::NotEmpty,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorCode::NoSpace,
            // What the request asks that this sandbox cannot do, said in the message.
            None if e.kind() == io::ErrorKind::Unsupported => ErrorCode::BadRequest,
            _ => ErrorCode::Io,
        };
        Self::new(code, format!("{path}: {}", reason(e)))
    }

    pub(crate) fn response(self) -> Response {
        Response::Error {
            code: self.code,
            message: self.message,
        }
    }
}

/// What went wrong, for a client: std's Display appends "(os error N)", which means
/// nothing to one.
pub(crate) fn reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Locks `m`. A panic while holding one of the agent's locks leaves plain data behind
/// (no invariant spans an unlock), so poisoning is ignored rather than spread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
