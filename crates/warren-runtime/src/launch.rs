//! `warren __agent`: the agent as a program of its own, for backends that cannot hand it
//! a listener the way the namespace helper does (it clones the agent into the sandbox).
//!
//! The process backend starts it on the host with its [`AgentLaunch`] on stdin; an OCI
//! runtime (gVisor's `runsc`) starts it as the container's first process with the launch
//! as its one argument. It binds its socket, becomes what the launch says, prints `ready`
//! and serves until it is killed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warren_types::proto::User;

use crate::helper::{FailureKind, HelperStatus};

/// What `warren __agent` is started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentLaunch {
    /// Where to listen (a path the agent binds itself).
    pub socket: PathBuf,
    /// Trust mode: leave the caller's session, adopt orphans, and give up root for
    /// these host ids (uid, gid) after binding.
    pub host_user: Option<(u32, u32)>,
    /// Working directory of execs that name none.
    pub workdir: Option<PathBuf>,
    /// The environment of every process.
    pub env: BTreeMap<String, String>,
    /// Confine every process as in a namespace sandbox: Docker's seccomp policy, the
    /// kept capabilities only, root (of the sandbox) unless a request names a user.
    pub confined: bool,
    /// Who processes run as when a request names nobody (a template's user).
    pub user: Option<User>,
    /// Close the listener on SIGUSR1 and listen again on SIGUSR2 (around a checkpoint of
    /// the sandbox's memory; see `warren_agent::AgentConfig::rebind`).
    #[serde(default)]
    pub quiesce: bool,
    /// What the runtime adds to `/dev` that no process of the sandbox may use (gVisor's
    /// FUSE and TUN devices, which need capabilities every process lacks; crun's `core`
    /// link): removed before anything runs (an empty directory too), so `/dev` holds
    /// what a namespace sandbox's does.
    #[serde(default)]
    pub remove: Vec<PathBuf>,
    /// The sandbox is killed whole at its memory limit (gVisor's Sentry, one process to
    /// the host): its processes' OOM scores choose nothing and are left as they are
    /// (see `warren_agent::AgentConfig::oom_victims`).
    #[serde(default)]
    pub killed_whole: bool,
}

/// Runs the agent; never returns.
pub fn agent_main() -> ! {
    // Started through the host's loader (see `crate::bundle::AgentFiles`), the kernel
    // named it after the loader: it is `warren` to `ps` inside, as when exec'd itself.
    let _ = nix::sys::prctl::set_name(c"warren");
    let mut out = std::io::stdout();
    let code = match setup() {
        Ok((listener, launch)) => {
            let _ = out.write_all(b"ready\n");
            let _ = out.flush();
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::fd::AsRawFd;
                for fd in 0..2 {
                    let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
                }
            }
            serve(listener, launch)
        }
        Err(why) => {
            let _ = writeln!(out, "{}", serde_json::to_string(&why).unwrap_or_default());
            1
        }
    };
    std::process::exit(code)
}

fn serve(listener: std::os::unix::net::UnixListener, launch: AgentLaunch) -> i32 {
    let seccomp = if launch.confined {
        match warren_sys::seccomp::SeccompProgram::default_policy() {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                eprintln!("warren agent: the seccomp policy: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let user = match (launch.confined, launch.user) {
        (_, Some(u)) => Some(u),
        (true, None) => Some(User::Id {
            uid: 0,
            gid: Some(0),
        }),
        (false, None) => None,
    };
    let rebind = launch.quiesce.then(|| launch.socket.clone());
    let mut config = warren_agent::AgentConfig {
        rebind,
        env: launch.env,
        reap_all: true,
        seccomp,
        drop_caps: launch.confined,
        user,
        oom_victims: !launch.killed_whole,
        cwd: if launch.confined {
            None
        } else {
            launch.workdir.clone()
        },
        workdir: if launch.confined {
            launch.workdir
        } else {
            None
        },
        ..Default::default()
    };
    // A container's process has no_new_privs (the bundle asks for it), so the kernel
    // takes the filter; if it did not, each process would install it itself.
    let _ = config.confine_agent();
    match warren_agent::serve(listener, config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("warren agent: {e}");
            1
        }
    }
}

/// Sets up, or says why not as a namespace sandbox's helper does.
fn setup() -> Result<(std::os::unix::net::UnixListener, AgentLaunch), HelperStatus> {
    let failed = |message: String| HelperStatus::Error {
        message,
        kind: FailureKind::Failed,
    };
    setup_inner().map_err(failed).and_then(|(bind, launch)| {
        let listener = bind.map_err(|e| {
            if crate::is_disk_full(&e) {
                HelperStatus::Error {
                    message: format!("bind the agent's socket: {}", crate::DISK_FULL),
                    kind: FailureKind::NoSpace,
                }
            } else {
                failed(format!("bind {}: {e}", launch.socket.display()))
            }
        })?;
        drop_to_user(&launch).map_err(failed)?;
        Ok((listener, launch))
    })
}

type Bound = std::io::Result<std::os::unix::net::UnixListener>;

/// Reads the launch, leaves the caller's session (trust mode) and binds the socket.
fn setup_inner() -> Result<(Bound, AgentLaunch), String> {
    let launch: AgentLaunch = match std::env::args().nth(2) {
        Some(arg) => serde_json::from_str(&arg).map_err(|e| format!("bad launch: {e}"))?,
        None => {
            let mut input = Vec::new();
            std::io::stdin()
                .lock()
                .take(1 << 20)
                .read_to_end(&mut input)
                .map_err(|e| format!("read the launch: {e}"))?;
            serde_json::from_slice(&input).map_err(|e| format!("bad launch: {e}"))?
        }
    };
    if !launch.killed_whole {
        // While this process's /proc files are its own (before it gives up root in
        // trust mode, and before it makes itself not dumpable): the processes it starts
        // take their OOM score from it (see `warren_sys::child`). Without the file they
        // are raised once they run.
        let _ = warren_sys::child::keep_own_oom_score_file();
    }
    if launch.host_user.is_some() {
        // Its own session (no terminal of the daemon's), and the parent of every orphan
        // its processes leave, as PID 1 is in a sandbox.
        nix::unistd::setsid().map_err(|e| format!("new session: {e}"))?;
        warren_sys::ns::set_child_subreaper().map_err(|e| format!("become a subreaper: {e}"))?;
    }
    for node in &launch.remove {
        let gone = match std::fs::symlink_metadata(node) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(node),
            _ => std::fs::remove_file(node),
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("remove {}: {e}", node.display()));
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_file(&launch.socket);
    let listener = std::os::unix::net::UnixListener::bind(&launch.socket);
    Ok((listener, launch))
}

/// Trust mode: becomes the chosen host user, in the sandbox's directory.
fn drop_to_user(launch: &AgentLaunch) -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    if let Some((uid, gid)) = launch.host_user {
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
        setgroups(&[g]).map_err(|e| format!("set groups: {e}"))?;
        setresgid(g, g, g).map_err(|e| format!("become gid {g}: {e}"))?;
        setresuid(u, u, u).map_err(|e| format!("become uid {u}: {e}"))?;
        if let Some(dir) = &launch.workdir {
            std::env::set_current_dir(dir).map_err(|e| format!("enter {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}
