//! The runc and crun backends: each sandbox is an OCI bundle run by a runc-compatible
//! runtime on the host kernel, with Warren's agent as the container's first process.
//! What isolates it is what isolates a namespace sandbox (namespaces, the agent's seccomp
//! policy and capability set, cgroups); only who sets it up differs.
//!
//! Creating one:
//! 1. the run directory gets a bundle (`config.json`) and a socket directory; the data
//!    directory the writable layer (`upper`, `work`);
//! 2. `warren __oci` (see [`crate::bundle::oci_main`]) takes an id slot, mounts the
//!    overlay root in a private mount namespace, idmapped to that slot as a namespace
//!    sandbox's is, writes the slot's maps into the bundle's `linux.uidMappings`, and
//!    runs the runtime's `create` as its child. It stays as the sandbox's keeper: it holds
//!    the slot, and is the subreaper of the container's first process until that ends;
//! 3. the daemon wires `nat` into the container's network namespace, and `RUNTIME start`
//!    runs the agent (`warren __agent`, bound read-only at `/.warren/warren`), which binds
//!    its socket in the socket directory, bound at `/.warren/run`.
//!
//! Published ports are listened on by `warren __oci` before anything else (a port taken
//! fails the create with nothing made) and forwarded by the keeper's threads into the
//! container's network namespace: they outlive a daemon restart and end with the keeper.
//!
//! The container has its own user (the slot's 65,536 ids), pid, ipc, uts, mount, cgroup
//! and network namespaces; memory, CPU and pids limits go in `linux.resources`, under a
//! cgroup named as a namespace sandbox's (relative, so under this process's own cgroup,
//! where [`Hierarchy::cgroup`] finds it for usage and OOM kills). Pause is the runtime's
//! (the freezer). The runtime's state is under the run directory (`--root`).
//!
//! Another runc-compatible runtime is one more [`Isolation`] value and a line in
//! [`RuncBackend::new`]'s caller; a VM-backed one (kata-runtime) is configured as the
//! binary of one of these (see docs/design.md for what it needs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warren_sys::cgroup::{Cgroup, Hierarchy};
use warren_types::api::{BackendInfo, Capabilities, Isolation};
use warren_types::spec::{NetworkMode, SandboxSpec};

use crate::backend::{BoxFuture, PortDialer};
use crate::bundle::{
    bundle_config, container, prepare_dirs, read_only_sources, remove_runtime_cgroups, run_keeper,
    which, AgentFiles, BundleKind, Keeper, OciCli, OciLaunch, OciVolume,
};
use crate::namespace::CreateOptions;
use crate::{template, Backend, Error, Instance, Paths, Result, Usage};

/// The operator's settings of one runc-compatible runtime (`[backends.runc]`,
/// `[backends.crun]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuncConfig {
    /// The runtime's binary [default: `runc` or `crun`, found in PATH].
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Global flags put before every command (after Warren's `--root`).
    #[serde(default)]
    pub args: Vec<String>,
}

/// Makes sandboxes with one runc-compatible runtime.
#[derive(Debug, Clone)]
pub struct RuncBackend {
    kind: Isolation,
    paths: Paths,
    exe: PathBuf,
    hierarchy: Hierarchy,
    /// The binary and its version, or why it cannot be used.
    runtime: std::result::Result<(PathBuf, String), String>,
    args: Vec<String>,
    /// Hide the host's cgroup v2 hierarchy from `create` (see [`refuses_hybrid`]).
    hide_cgroup2: bool,
    /// Warren makes the sandbox's cgroup (see [`places_cgroups_elsewhere`]).
    warren_cgroups: bool,
}

/// A live runc or crun sandbox.
#[derive(Debug)]
pub struct RuncSandbox {
    id: String,
    kind: Isolation,
    socket: PathBuf,
    /// The container's first process (the agent) on the host.
    pid: i32,
    cgroup: Cgroup,
    cli: OciCli,
    /// Pause and resume are Warren's own freezing of the cgroup Warren made.
    warren_cgroups: bool,
    run: PathBuf,
    /// Its data directory: its writable layer or disk image.
    data: PathBuf,
    ephemeral: Option<PathBuf>,
    /// With `die_with_parent` (`warren run`): the process that removes the sandbox if
    /// its maker dies first.
    watchdog: Option<std::process::Child>,
}

/// The runtime's first line of `--version` ("runc version 1.1.5+ds1"), or why it does not
/// run.
fn version_of(bin: &Path) -> std::result::Result<String, String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{} does not run: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{} --version failed", bin.display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Whether `kind`'s runtime refuses to make cgroups on this host: crun does on a cgroup
/// v1 host whose v2 hierarchy has a controller (hugetlb, on these machines), which it
/// takes for a "hybrid" set-up it does not support. Its `create` then runs with that
/// hierarchy hidden (in its private mount namespace), and takes the host for the plain v1
/// one it is: the sandbox's cgroups are v1 cgroups, as a namespace sandbox's are.
fn refuses_hybrid(kind: Isolation, hierarchy: &Hierarchy) -> bool {
    kind == Isolation::Crun
        && !hierarchy.is_v2()
        && std::fs::read_to_string(
            Path::new(crate::bundle::CGROUP2_ON_V1).join("cgroup.controllers"),
        )
        .is_ok_and(|c| !c.trim().is_empty())
}

/// Whether `kind`'s runtime would put the sandbox's cgroups somewhere other than where
/// Warren keeps its own. crun 1.8 takes a relative `cgroupsPath` from the top of each v1
/// hierarchy, not from its own cgroup there as runc does: out of the daemon's own memory
/// cgroup, and not where usage and OOM kills are read. So Warren makes the cgroup, limits
/// included, as for a namespace sandbox, puts the runtime's `create` in it, and runs the
/// runtime with `--cgroup-manager=disabled`; pause freezes that cgroup.
fn places_cgroups_elsewhere(kind: Isolation) -> bool {
    kind == Isolation::Crun
}

impl RuncBackend {
    /// The backend of `kind` (`Runc` or `Crun`).
    pub fn new(
        kind: Isolation,
        paths: Paths,
        exe: PathBuf,
        config: Option<RuncConfig>,
    ) -> Result<Self> {
        let name = kind.as_str();
        let config = config.unwrap_or_default();
        let runtime = config
            .binary
            .clone()
            .or_else(|| which(name))
            .ok_or_else(|| {
                format!(
                    "{name} is not installed: `apt-get install {name}`, or set \
                     [backends.{name}] binary"
                )
            })
            .and_then(|b| version_of(&b).map(|v| (b, v)));
        let hierarchy = Hierarchy::detect()?;
        Ok(Self {
            hide_cgroup2: refuses_hybrid(kind, &hierarchy),
            warren_cgroups: places_cgroups_elsewhere(kind),
            kind,
            paths,
            exe,
            hierarchy,
            runtime,
            args: config.args,
        })
    }

    fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    fn cli(&self) -> Result<OciCli> {
        let (bin, _) = self.runtime.clone().map_err(|why| Error::Unavailable {
            kind: self.kind,
            why,
        })?;
        Ok(OciCli {
            name: self.name(),
            bin,
            flags: std::iter::once(format!("--root={}", self.state_dir().display()))
                .chain(
                    self.warren_cgroups
                        .then(|| "--cgroup-manager=disabled".to_string()),
                )
                .chain(self.args.iter().cloned())
                .collect(),
        })
    }

    /// The runtime's state directory: one per runtime, in the run directory.
    fn state_dir(&self) -> PathBuf {
        self.paths.run.join(self.name())
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        self.hierarchy.cgroup(&container(id))
    }

    fn sandbox(&self, id: &str, cli: OciCli, pid: i32) -> RuncSandbox {
        let run = self.paths.sandbox_run(id);
        RuncSandbox {
            id: id.to_string(),
            kind: self.kind,
            socket: run.join("sock/agent.sock"),
            pid,
            cgroup: self.cgroup(id),
            cli,
            warren_cgroups: self.warren_cgroups,
            run,
            data: self.paths.sandbox_data(id),
            ephemeral: None,
            watchdog: None,
        }
    }

    async fn make(&self, spec: SandboxSpec, opts: CreateOptions) -> Result<RuncSandbox> {
        let cli = self.cli()?;
        crate::namespace::validate(&spec)?;
        let template = template::resolve(&self.paths, &spec.template)?;
        template
            .check_layers()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let id = spec.id.clone();
        let data = self.paths.sandbox_data(&id);
        let mut sb = self.sandbox(&id, cli.clone(), 0);
        sb.ephemeral = opts.ephemeral.then(|| data.clone());
        let r = self.start(&mut sb, &spec, &template, &data).await;
        if r.is_ok() {
            crate::bundle::copy_next_disk(&self.paths, spec.resources.disk);
        }
        let r = match r {
            Ok(()) if opts.die_with_parent => {
                crate::bundle::start_watch(&self.exe, &self.paths, self.kind, &id, opts.ephemeral)
                    .map(|w| sb.watchdog = Some(w))
            }
            r => r,
        };
        match r {
            Ok(()) => Ok(sb),
            Err(e) => {
                tokio::task::spawn_blocking(move || sb.teardown())
                    .await
                    .ok();
                Err(e)
            }
        }
    }

    async fn start(
        &self,
        sb: &mut RuncSandbox,
        spec: &SandboxSpec,
        template: &template::Template,
        data: &Path,
    ) -> Result<()> {
        let run = sb.run.clone();
        let bundle = prepare_dirs(&run, data, true)?;
        let agent = AgentFiles::current(&self.paths, &self.exe)?;
        let config = bundle_config(
            spec,
            template,
            &run.join("sock"),
            &bundle,
            BundleKind::HostKernel,
            &agent,
        )?;
        std::fs::write(bundle.join("config.json"), config.to_string())
            .map_err(crate::io_err("write the bundle's config.json"))?;
        std::fs::write(run.join("template"), spec.template.as_bytes())
            .map_err(crate::io_err("record the template"))?;
        let pid_file = run.join("init.pid");
        let mut cgroup = Vec::new();
        if self.warren_cgroups {
            self.hierarchy.prepare()?;
            sb.cgroup.create(&crate::cgroup_limits(&spec.resources))?;
            cgroup = sb.cgroup.self_join_files();
        }

        let launch = OciLaunch {
            volumes: spec
                .volumes
                .iter()
                .map(|v| OciVolume {
                    dir: self.paths.volume(&v.name),
                    size: v.size,
                    target: v.target.clone(),
                })
                .collect(),
            mounts: spec.mounts.clone(),
            read_only: read_only_sources(&bundle, template, &agent),
            bundle: bundle.clone(),
            lower: template.lower.clone(),
            rw: data.to_path_buf(),
            disk: spec.resources.disk,
            new_netns: false,
            argv: std::iter::once(sb.cli.bin.display().to_string())
                .chain(sb.cli.flags.iter().cloned())
                .chain([
                    "create".to_string(),
                    format!("--bundle={}", bundle.display()),
                    format!("--pid-file={}", pid_file.display()),
                    container(&sb.id),
                ])
                .collect(),
            root_tmp: false,
            publish: spec.publish.clone(),
            cgroup,
            memory: None,
            keeper: Some(Keeper {
                sandbox_run: run.clone(),
                runtime_root: self.state_dir(),
                pid_file,
                hide_cgroup2: self.hide_cgroup2,
            }),
        };
        let exe = self.exe.clone();
        let log = run.join(format!("{}.log", self.name()));
        let name = self.name();
        let (keeper, pid) =
            tokio::task::spawn_blocking(move || run_keeper(&exe, &launch, &log, name))
                .await
                .map_err(|e| Error::Setup(format!("{name} create: {e}")))??;
        sb.pid = pid;
        // The keeper lives exactly as long as the sandbox: what `warren doctor` and a
        // restarted daemon look at.
        std::fs::write(run.join("helper.pid"), keeper.to_string())
            .map_err(crate::io_err("write the sandbox's pid"))?;
        if spec.network == NetworkMode::Nat {
            let (run_dir, id) = (self.paths.run.clone(), sb.id.clone());
            let lease = tokio::task::spawn_blocking(move || {
                crate::network::setup_nat(
                    &run_dir,
                    &id,
                    nix::unistd::Pid::from_raw(pid),
                    keeper as u32,
                )
            })
            .await
            .map_err(|e| Error::Setup(format!("network: {e}")))?
            .map_err(|e| Error::Setup(format!("network: {e}")))?;
            std::fs::write(run.join("lease"), lease.as_os_str().as_encoded_bytes())
                .map_err(crate::io_err("record the address lease"))?;
        }
        let cli = sb.cli.clone();
        let c = container(&sb.id);
        tokio::task::spawn_blocking(move || cli.run(&["start", &c]))
            .await
            .map_err(|e| Error::Setup(format!("{name} start: {e}")))??;
        // The agent binds its socket once it runs: wait for it to answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match crate::client::AgentClient::connect(&sb.socket).await {
                Ok(_) => return take_back_socket_dir(&run),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Setup(format!(
                        "the agent did not answer in 30 s: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}

/// Gives the socket directory back to host root once the agent listens there, before
/// any of the sandbox's own code runs: the daemon connects to the socket by its path, so
/// the sandbox must not be able to replace it (with a link to another sandbox's socket,
/// say). Its root, unmapped inside, then cannot even list the directory.
fn take_back_socket_dir(run: &Path) -> Result<()> {
    let dir = run.join("sock");
    std::os::unix::fs::chown(&dir, Some(0), Some(0))
        .map_err(crate::io_err(format!("chown {}", dir.display())))
}

impl RuncSandbox {
    /// Stops and deletes the container, removes its cgroups, link and run directory (and
    /// its writable layer when ephemeral). Blocking.
    fn teardown(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let c = container(&self.id);
        if let Some((status, _)) = self.cli.state(&self.id) {
            // Frozen processes cannot die.
            if status == "paused" {
                let _ = self.cli.run(&["resume", &c]);
            }
            let _ = self.cli.run(&["delete", "--force", &c]);
        }
        if self.cgroup.exists() {
            let _ = self.cgroup.thaw();
            let _ = self.cgroup.kill_all(Duration::from_secs(5));
            let _ = self.cgroup.remove();
        }
        remove_runtime_cgroups(&c);
        // The keeper ends with the sandbox's first process; wait for it, so that nothing
        // of the sandbox outlives its removal.
        let keeper = std::fs::read_to_string(self.run.join("helper.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(k) = keeper {
            crate::wait_for(Duration::from_secs(5), || !crate::namespace::pid_alive(k));
        }
        if let Ok(lease) = std::fs::read(self.run.join("lease")) {
            crate::network::remove_link(&crate::network::link_name(&self.id));
            use std::os::unix::ffi::OsStrExt;
            let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(&lease));
        }
        let _ = crate::tree::remove(&self.run);
        if let Some(dir) = self.ephemeral.take() {
            let _ = crate::tree::remove(&dir);
        }
    }
}

impl Backend for RuncBackend {
    fn kind(&self) -> Isolation {
        self.kind
    }

    fn info(&self) -> BackendInfo {
        let (available, reason, version) = match &self.runtime {
            Ok((_, v)) => (true, None, v.clone()),
            Err(why) => (false, Some(why.clone()), self.name().to_string()),
        };
        let mut lacking = std::collections::BTreeMap::new();
        lacking.insert(
            "memory_snapshots".to_string(),
            format!(
                "{} checkpoints through CRIU, which cannot dump a sandbox on this kernel; \
                 gvisor keeps processes and memory",
                self.name()
            ),
        );
        lacking.insert(
            "strong_isolation".to_string(),
            "the host kernel is shared, as with the namespace backend".to_string(),
        );
        BackendInfo {
            name: self.kind,
            available,
            reason,
            capabilities: Capabilities {
                isolation: format!(
                    "Linux namespaces, seccomp and cgroups on the host kernel, set up by {version}"
                ),
                strong_isolation: false,
                pause: true,
                memory_snapshots: false,
                networks: vec![NetworkMode::None, NetworkMode::Nat],
                limits: ["memory", "cpu", "pids", "disk"].map(String::from).to_vec(),
                volumes: true,
                host_mounts: true,
                publish: vec![NetworkMode::None, NetworkMode::Nat],
                lacking,
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
        let cli = self.cli().ok()?;
        let (status, pid) = cli.state(id)?;
        if !matches!(status.as_str(), "running" | "paused") {
            return None;
        }
        Some(Box::new(self.sandbox(id, cli, pid)))
    }

    fn purge(&self, id: &str, remove_data: bool) {
        let Ok(cli) = self.cli() else { return };
        let mut sb = self.sandbox(id, cli, 0);
        sb.ephemeral = remove_data.then(|| self.paths.sandbox_data(id));
        sb.teardown();
    }

    fn remove_data<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        let data = self.paths.sandbox_data(id);
        Box::pin(crate::tree::remove_off_runtime(data))
    }
}

impl Instance for RuncSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent_socket(&self) -> &Path {
        &self.socket
    }

    fn pause(&self) -> Result<()> {
        if self.warren_cgroups {
            return Ok(self.cgroup.freeze()?);
        }
        self.cli.run(&["pause", &container(&self.id)]).map(drop)
    }

    fn resume(&self) -> Result<()> {
        if self.warren_cgroups {
            return Ok(self.cgroup.thaw()?);
        }
        self.cli.run(&["resume", &container(&self.id)]).map(drop)
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
        crate::namespace::pid_alive(self.pid)
    }

    fn monitor_pid(&self) -> Option<i32> {
        crate::bundle::mounts_holder(&self.run)
    }

    fn port_dialer(&self) -> PortDialer {
        let pid = self.pid;
        Box::new(move |port, timeout| crate::network::connect_inside(pid, port, timeout))
    }

    fn destroy(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let kind = self.kind;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.teardown())
                .await
                .map_err(|e| Error::Setup(format!("tear down the {kind} sandbox: {e}")))
        })
    }

    /// [`destroy`](Self::destroy), for good: its disk, held open through the teardown,
    /// is let go of after the answer with its device set to drop flushes, so that its
    /// unmount forces nothing to the host's disk for an image removed next.
    fn end(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let disk = crate::bundle::EndingDisk::open(&self.run, &self.data);
            let r = self.destroy().await;
            crate::bundle::EndingDisk::let_go_later(disk);
            r
        })
    }
}
