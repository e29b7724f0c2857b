//! The process backend: trust mode, for a collaborator's space on the host.
//!
//! No namespaces, no seccomp, no root filesystem of its own: the agent runs on the host
//! as a host user the operator chose, in a directory of its own under the operator's
//! directory, inside a cgroup that carries the sandbox's memory, CPU and pid limits. It
//! sees the host's files with that user's permissions and shares the host's network. It
//! is off unless the operator configures it, and only the operator and the tenants the
//! operator names may ask for it.
//!
//! The agent is this binary started as `warren __agent` (see [`crate::launch`]): it reads
//! its launch on stdin, binds its socket in the sandbox's run directory (private to root),
//! gives up root for the chosen user, says `ready` on stdout and serves; or says why not,
//! as a namespace sandbox's helper does (a [`HelperStatus`]). It is its own monitor:
//! its pid is kept as the sandbox's `helper.pid`, so `warren doctor` and a restarted
//! daemon find it as they find a namespace sandbox's helper.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use warren_sys::cgroup::{Cgroup, Hierarchy};
use warren_types::api::{BackendInfo, Capabilities, Isolation};
use warren_types::spec::{NetworkMode, SandboxSpec};

use crate::backend::{BoxFuture, PortDialer};
use crate::helper::HelperStatus;
use crate::launch::AgentLaunch;
use crate::namespace::CreateOptions;
use crate::{Backend, Error, Instance, Paths, Result, Usage, PREFIX};

/// The operator's settings for trust mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The host account every process runs as.
    pub user: String,
    /// Each sandbox works in `dir/ID`, made for it and owned by `user`.
    pub dir: PathBuf,
}

/// Sandboxes that are host processes (see the module's documentation).
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    paths: Paths,
    exe: PathBuf,
    hierarchy: Hierarchy,
    config: Option<ProcessConfig>,
}

/// A live process sandbox.
#[derive(Debug)]
pub struct ProcessSandbox {
    id: String,
    socket: PathBuf,
    agent_pid: i32,
    cgroup: Cgroup,
    run: PathBuf,
    child: Option<tokio::process::Child>,
    ephemeral: Option<PathBuf>,
}

impl ProcessBackend {
    /// `config` is `None` when the operator has not turned trust mode on.
    pub fn new(paths: Paths, exe: PathBuf, config: Option<ProcessConfig>) -> Result<Self> {
        Ok(Self {
            paths,
            exe,
            hierarchy: Hierarchy::detect()?,
            config,
        })
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        self.hierarchy.cgroup(&format!("{PREFIX}{id}"))
    }

    fn workdir(&self, id: &str) -> Option<PathBuf> {
        self.config.as_ref().map(|c| c.dir.join(id))
    }

    /// The configured user's ids, or why they cannot be had.
    fn account(&self) -> Result<(ProcessConfig, nix::unistd::User)> {
        let config = self.config.clone().ok_or(Error::Unavailable {
            kind: Isolation::Process,
            why: "trust mode is off: the operator turns it on with [backends.process] in \
                  `warren serve --config`"
                .into(),
        })?;
        let user = nix::unistd::User::from_name(&config.user)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Unavailable {
                kind: Isolation::Process,
                why: format!("no host user {:?} (backends.process.user)", config.user),
            })?;
        Ok((config, user))
    }

    async fn make(&self, spec: SandboxSpec, opts: CreateOptions) -> Result<ProcessSandbox> {
        let (config, user) = self.account()?;
        if spec.network == NetworkMode::Nat
            || !spec.volumes.is_empty()
            || !spec.mounts.is_empty()
            || !spec.publish.is_empty()
        {
            return Err(Error::Invalid {
                what: "request",
                why: "a process sandbox has the host's network and files: it takes no `nat` \
                      network, volumes, host directory mounts or published ports"
                    .into(),
            });
        }
        if !crate::valid_name(&spec.id) {
            return Err(Error::Invalid {
                what: "sandbox id",
                why: format!("{:?} is not a plain name", spec.id),
            });
        }
        let id = spec.id.clone();
        let run = self.paths.sandbox_run(&id);
        let workdir = config.dir.join(&id);
        std::fs::create_dir_all(&run).map_err(crate::io_err("make the run directory"))?;
        make_workdir(&config.dir, &workdir, &user)?;
        let cgroup = self.cgroup(&id);
        let r = &spec.resources;
        cgroup.create(&crate::cgroup_limits(r))?;
        let mut sb = ProcessSandbox {
            socket: run.join("agent.sock"),
            id,
            agent_pid: 0,
            cgroup,
            run,
            child: None,
            ephemeral: opts.ephemeral.then(|| workdir.clone()),
        };
        let mut env = spec.env.clone();
        env.entry("HOME".into())
            .or_insert_with(|| workdir.display().to_string());
        env.entry("USER".into())
            .or_insert_with(|| user.name.clone());
        env.entry("PATH".into())
            .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
        let launch = AgentLaunch {
            socket: sb.socket.clone(),
            host_user: Some((user.uid.as_raw(), user.gid.as_raw())),
            workdir: Some(workdir),
            env,
            confined: false,
            user: None,
            quiesce: false,
            remove: Vec::new(),
            killed_whole: false,
        };
        match self.start_agent(&mut sb, &launch).await {
            Ok(()) => Ok(sb),
            Err(e) => {
                sb.teardown();
                Err(e)
            }
        }
    }

    async fn start_agent(&self, sb: &mut ProcessSandbox, launch: &AgentLaunch) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("__agent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_clear();
        // In the cgroup before it says ready, so before anything it starts exists: on v1
        // it moves itself in before its exec (see `Cgroup::open_for_self`), on v2 it is
        // moved once started.
        if let Some(join) = sb.cgroup.open_for_self()? {
            join.join_on_spawn(cmd.as_std_mut());
        }
        let mut child = cmd.spawn().map_err(crate::io_err(format!(
            "start the agent {}",
            self.exe.display()
        )))?;
        let pid = child.id().unwrap_or(0) as i32;
        sb.agent_pid = pid;
        sb.cgroup.finish_join(pid)?;
        // The parent's copies of the `tasks` files go with the command.
        drop(cmd);
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = serde_json::to_vec(launch).expect("the launch serializes");
        stdin
            .write_all(&input)
            .await
            .map_err(crate::io_err("send the agent its configuration"))?;
        drop(stdin);
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let _ = tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await;
        sb.child = Some(child);
        match line.trim() {
            "ready" => {}
            "" => {
                return Err(Error::Setup(
                    "the agent exited before it was ready; see its messages above".into(),
                ))
            }
            why => {
                return Err(match serde_json::from_str(why) {
                    Ok(HelperStatus::Error { message, kind }) => {
                        Error::from_helper(kind, format!("the agent: {message}"))
                    }
                    _ => Error::Setup(format!("the agent: {why}")),
                })
            }
        }
        std::fs::write(sb.run.join("helper.pid"), pid.to_string())
            .map_err(crate::io_err("write the agent pid"))?;
        std::fs::write(sb.run.join("agent.pid"), pid.to_string())
            .map_err(crate::io_err("write the agent pid"))?;
        Ok(())
    }
}

/// Makes `dir` (the operator's, root's) and the sandbox's `workdir` in it, owned by
/// `user` and private to it.
fn make_workdir(dir: &Path, workdir: &Path, user: &nix::unistd::User) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(crate::io_err(format!("make {}", dir.display())))?;
    match std::fs::DirBuilder::new().mode(0o700).create(workdir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(crate::io_err(format!("make {}", workdir.display()))(e)),
    }
    // Not following a link the user may have put there since an earlier run.
    nix::unistd::fchownat(
        None,
        workdir,
        Some(user.uid),
        Some(user.gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| crate::io_err(format!("give {} to its user", workdir.display()))(e.into()))?;
    let meta = std::fs::symlink_metadata(workdir)
        .map_err(crate::io_err(format!("look at {}", workdir.display())))?;
    if !meta.is_dir() {
        return Err(Error::Setup(format!(
            "{} is not a directory",
            workdir.display()
        )));
    }
    let _ = std::fs::set_permissions(workdir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

impl ProcessSandbox {
    /// Kills every process, removes the cgroup and the run directory.
    fn teardown(&mut self) {
        if self.cgroup.is_frozen().unwrap_or(false) {
            let _ = self.cgroup.thaw();
        }
        if self.cgroup.exists() {
            let _ = self.cgroup.kill_all(Duration::from_secs(5));
            let _ = self.cgroup.remove();
        }
        let _ = std::fs::remove_dir_all(&self.run);
        if let Some(dir) = self.ephemeral.take() {
            let _ = crate::tree::remove(&dir);
        }
    }
}

impl Backend for ProcessBackend {
    fn kind(&self) -> Isolation {
        Isolation::Process
    }

    fn info(&self) -> BackendInfo {
        let (available, reason) = match self.account() {
            Ok(_) => (true, None),
            Err(Error::Unavailable { why, .. }) => (false, Some(why)),
            Err(e) => (false, Some(e.to_string())),
        };
        BackendInfo {
            name: Isolation::Process,
            available,
            reason,
            capabilities: Capabilities {
                isolation: "none: a host user's processes in a cgroup (trust mode)".into(),
                strong_isolation: false,
                pause: true,
                memory_snapshots: false,
                networks: vec![NetworkMode::Host],
                limits: ["memory", "cpu", "pids"].map(String::from).to_vec(),
                volumes: false,
                host_mounts: false,
                // Its ports are the host's already.
                publish: Vec::new(),
                lacking: Default::default(),
            },
        }
    }

    fn create(
        &self,
        spec: SandboxSpec,
        opts: CreateOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Instance>>> {
        Box::pin(async move { Ok(Box::new(self.make(spec, opts).await?) as Box<dyn Instance>) })
    }

    fn adopt(&self, id: &str) -> Option<Box<dyn Instance>> {
        let run = self.paths.sandbox_run(id);
        let pid: i32 = std::fs::read_to_string(run.join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cgroup = self.cgroup(id);
        // The pid must still be ours: in the sandbox's cgroup, not a reused number.
        if !cgroup.pids().contains(&pid) {
            return None;
        }
        Some(Box::new(ProcessSandbox {
            id: id.to_string(),
            socket: run.join("agent.sock"),
            agent_pid: pid,
            cgroup,
            run,
            child: None,
            ephemeral: None,
        }))
    }

    fn purge(&self, id: &str, remove_data: bool) {
        let mut sb = ProcessSandbox {
            id: id.to_string(),
            socket: PathBuf::new(),
            agent_pid: 0,
            cgroup: self.cgroup(id),
            run: self.paths.sandbox_run(id),
            child: None,
            ephemeral: remove_data.then(|| self.workdir(id)).flatten(),
        };
        sb.teardown();
    }

    fn remove_data<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        let dir = self.workdir(id);
        Box::pin(async move {
            let Some(dir) = dir else { return Ok(()) };
            crate::tree::remove_off_runtime(dir).await
        })
    }
}

impl Instance for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent_socket(&self) -> &Path {
        &self.socket
    }

    fn pause(&self) -> Result<()> {
        Ok(self.cgroup.freeze()?)
    }

    fn resume(&self) -> Result<()> {
        Ok(self.cgroup.thaw()?)
    }

    fn is_paused(&self) -> bool {
        self.cgroup.is_frozen().unwrap_or(false)
    }

    fn usage(&self) -> Usage {
        Usage::of(&self.cgroup)
    }

    fn cpu_us(&self) -> u64 {
        self.cgroup.cpu_usage_us()
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills()
    }

    fn is_alive(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            return matches!(c.try_wait(), Ok(None));
        }
        self.cgroup.pids().contains(&self.agent_pid)
    }

    fn port_dialer(&self) -> PortDialer {
        // The host's own network: the sandbox's loopback is the host's.
        Box::new(|port, timeout| {
            std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
        })
    }

    fn destroy(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let child = self.child.take();
            tokio::task::spawn_blocking(move || self.teardown())
                .await
                .map_err(|e| Error::Setup(format!("tear down: {e}")))?;
            if let Some(mut c) = child {
                let _ = c.wait().await;
            }
            Ok(())
        })
    }
}
