//! The gVisor backend: each sandbox is an OCI bundle run by `runsc`, with Warren's agent
//! as the container's first process. The sandbox's system calls reach gVisor's Sentry, a
//! kernel in user space, not the host's.
//!
//! Creating one:
//! 1. the run directory gets a bundle (`config.json`) and a socket directory; the data
//!    directory the writable layer (`upper`, `work`);
//! 2. `warren __oci` (single-threaded, see [`oci_main`]) makes a private mount
//!    namespace, mounts the overlay root there (idmapped: files stored under the common
//!    id range show as the sandbox's 0-65,535, as they do in a namespace sandbox) and
//!    becomes `runsc create`: the sandbox's processes inherit that namespace, so the
//!    root is mounted nowhere on the host;
//! 3. `runsc start` runs the agent (`warren __agent`, bound read-only at
//!    `/.warren/warren`), which binds its socket in the socket directory; with
//!    `--host-uds=create` that is a socket on the host the daemon connects to.
//!
//! Limits: memory and CPU go in the bundle's `linux.resources`, under a cgroup named as
//! the namespace backend names its own (relative, so under this process's cgroup).
//! Tasks are limited on the host too, and always: each process inside costs gVisor
//! (on the ptrace platform) several host tasks, so without a cap a fork bomb inside
//! would use up the host's pids. The cap is [`host_tasks`] of the sandbox's pids limit;
//! past it gVisor cannot make a thread and the sandbox stops whole, as past its memory
//! limit. gVisor's own pids cgroup is not used: this runsc enforces it only now and then.
//!
//! Volumes (the owner's home among them) are mounted by `warren __oci` as a namespace
//! sandbox's are (an ext4 image through the one loop device that has it, or a directory;
//! idmapped), at `bundle/volumes/N`, which the bundle's config binds at their targets;
//! the list is kept in the run directory (`volumes.json`), so a resume mounts them again.
//!
//! Networks: `none` is gVisor's own network stack with loopback only. `nat` is the host
//! kernel's stack (runsc `--network=host`) in a network namespace of the sandbox's own,
//! made by `warren __oci` and wired as a namespace sandbox's is (a veth, the same
//! netfilter policy, egress rules). gVisor's own stack in such a namespace
//! (`--network=sandbox`) would be the stronger choice, but the runsc Debian ships (2022)
//! takes every namespace for the host's on kernels that show `net.core` settings in all
//! of them, and refuses. A `nat` sandbox's sockets are the host kernel's, which runsc
//! cannot checkpoint: it pauses in place (frozen, its memory kept) and is not forked.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use warren_sys::cgroup::{Cgroup, Hierarchy};
use warren_types::api::{BackendInfo, Capabilities, Isolation};
use warren_types::spec::{NetworkMode, SandboxSpec};

use crate::backend::{BoxFuture, PortDialer};
use crate::launch::AgentLaunch;
use crate::namespace::CreateOptions;
use crate::{ids::FIRST_SLOT_BASE, PREFIX};
use crate::{template, Backend, Error, Instance, Paths, Result, Usage, HOST_ID_BASE, ID_COUNT};

/// Where the agent's socket directory is inside the sandbox.
const SOCKET_DIR: &str = "/.warren/run";
/// Where the warren binary is inside the sandbox.
const AGENT_BIN: &str = "/.warren/warren";
/// Soft limit on open files inside: where a process without close_range (gVisor has
/// none) stops scanning descriptors before an exec.
const NOFILE_SOFT: u64 = 1024;
const NOFILE_HARD: u64 = 8192;

/// The operator's settings: which `runsc` and with what platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GvisorConfig {
    /// The runsc binary [default: found in PATH].
    #[serde(default)]
    pub runsc: Option<PathBuf>,
    /// `ptrace` (works everywhere) or `kvm` (faster, needs /dev/kvm) [default: ptrace].
    #[serde(default)]
    pub platform: Option<String>,
    /// A directory for runsc's debug logs (`--debug-log`), when diagnosing it.
    #[serde(default)]
    pub debug_log: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct GvisorBackend {
    paths: Paths,
    exe: PathBuf,
    hierarchy: Hierarchy,
    runsc: std::result::Result<PathBuf, String>,
    platform: String,
    debug_log: Option<PathBuf>,
}

/// A live gVisor sandbox.
#[derive(Debug)]
pub struct GvisorSandbox {
    id: String,
    socket: PathBuf,
    /// The Sentry's pid on the host (0 while paused to disk).
    pid: AtomicI32,
    cgroup: Cgroup,
    runsc: Runsc,
    run: PathBuf,
    ephemeral: Option<PathBuf>,
    /// How to mount its root again for a restore.
    restore: Restore,
    /// With `die_with_parent` (`warren run`): the process that removes the sandbox if
    /// its maker dies first.
    watchdog: Option<std::process::Child>,
}

/// What a restore needs besides the checkpoint image: the root is mounted afresh in the
/// restored sandbox's own mount namespace.
#[derive(Debug, Clone)]
struct Restore {
    exe: PathBuf,
    paths: Paths,
}

/// How to call runsc for one daemon's sandboxes.
#[derive(Debug, Clone)]
struct Runsc {
    bin: PathBuf,
    root: PathBuf,
    platform: String,
    debug_log: Option<PathBuf>,
    /// For a container on `nat`: every command must name the network it was made with.
    nat: bool,
}

impl Runsc {
    /// The same runsc for a container on `nat` (the host's stack in its own namespace).
    fn on_nat(&self, nat: bool) -> Self {
        Self {
            nat,
            ..self.clone()
        }
    }

    fn flags(&self) -> Vec<String> {
        let mut f = vec![
            format!("--root={}", self.root.display()),
            format!("--platform={}", self.platform),
            if self.nat {
                "--network=host"
            } else {
                "--network=none"
            }
            .into(),
            "--host-uds=create".into(),
            // The writable layer is Warren's own overlay, not a file inside the root.
            "--overlay2=none".into(),
        ];
        if let Some(d) = &self.debug_log {
            f.push("--debug".into());
            f.push(format!("--debug-log={}/", d.display()));
        }
        f
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.args(self.flags()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `runsc ARGS` to completion; its error output on failure.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .map_err(crate::io_err(format!("run {}", self.bin.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(Error::Setup(format!(
                "runsc {}: {}",
                args.first().unwrap_or(&""),
                last.chars().take(400).collect::<String>()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `runsc state ID`: its status (`created`, `running`, `paused`, `stopped`) and pid.
    fn state(&self, id: &str) -> Option<(String, i32)> {
        let out = self.run(&["state", &container(id)]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        Some((
            v["status"].as_str()?.to_string(),
            v["pid"].as_i64().unwrap_or(0) as i32,
        ))
    }
}

/// The container id runsc knows a sandbox by.
fn container(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// Finds `name` in PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_else(|| vec!["/usr/local/bin".into(), "/usr/bin".into()])
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why this runsc cannot run Warren's sandboxes, if it cannot: it must run, and be new
/// enough that `statx` works inside (Debian 12's 2022 build fails every `ls`).
fn check_runsc(bin: &Path) -> std::result::Result<(), String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not run: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "runsc version 0.0~20240729.0" (Debian) or "release-20240729.0".
    let date: Option<u32> = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 8 && w.starts_with("20"))
        .and_then(|w| w.parse().ok());
    match date {
        Some(d) if d < 20230101 => Err(format!(
            "{} is gVisor {d}, too old: `ls` and `stat` fail inside it (statx); install a \
             newer runsc (scripts/install-deps installs Debian 13's)",
            bin.display()
        )),
        _ => Ok(()),
    }
}

impl GvisorBackend {
    pub fn new(paths: Paths, exe: PathBuf, config: Option<GvisorConfig>) -> Result<Self> {
        let config = config.unwrap_or(GvisorConfig {
            runsc: None,
            platform: None,
            debug_log: None,
        });
        let runsc = config
            .runsc
            .clone()
            .or_else(|| which("runsc"))
            .ok_or_else(|| {
                "runsc (gVisor) is not installed: `apt-get install runsc`, or set \
                 [backends.gvisor] runsc"
                    .to_string()
            })
            .and_then(|b| check_runsc(&b).map(|()| b));
        Ok(Self {
            paths,
            exe,
            hierarchy: Hierarchy::detect()?,
            runsc,
            platform: config.platform.unwrap_or_else(|| "ptrace".into()),
            debug_log: config.debug_log,
        })
    }

    fn runsc(&self) -> Result<Runsc> {
        let bin = self.runsc.clone().map_err(|why| Error::Unavailable {
            kind: Isolation::Gvisor,
            why,
        })?;
        Ok(Runsc {
            bin,
            root: self.paths.run.join("runsc"),
            platform: self.platform.clone(),
            debug_log: self.debug_log.clone(),
            nat: false,
        })
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        self.hierarchy.cgroup(&container(id))
    }

    fn restore(&self) -> Restore {
        Restore {
            exe: self.exe.clone(),
            paths: self.paths.clone(),
        }
    }

    async fn make(&self, spec: SandboxSpec, opts: CreateOptions) -> Result<GvisorSandbox> {
        self.make_from(spec, opts, None).await
    }

    /// Makes a sandbox; with `from` (an image and the writable layer it goes with), by
    /// restoring that image over a copy of those files.
    async fn make_from(
        &self,
        spec: SandboxSpec,
        opts: CreateOptions,
        from: Option<(&Path, &Path)>,
    ) -> Result<GvisorSandbox> {
        let runsc = self.runsc()?;
        if !matches!(spec.network, NetworkMode::None | NetworkMode::Nat) || !spec.publish.is_empty()
        {
            return Err(Error::Invalid {
                what: "request",
                why: "a gvisor sandbox has network `none` or `nat` and takes no published \
                      ports yet (reach its ports through the daemon)"
                    .into(),
            });
        }
        for v in &spec.volumes {
            if !v.target.starts_with('/') || v.target.split('/').any(|c| c == "..") {
                return Err(Error::Invalid {
                    what: "volume target",
                    why: format!("{:?} must be an absolute path without ..", v.target),
                });
            }
            if !crate::valid_name(&v.name) {
                return Err(Error::Invalid {
                    what: "volume name",
                    why: format!("{:?}", v.name),
                });
            }
        }
        let nat = spec.network == NetworkMode::Nat;
        let runsc = runsc.on_nat(nat);
        if nat && from.is_some() {
            return Err(no_snapshots_on_nat());
        }
        if !crate::valid_name(&spec.id) {
            return Err(Error::Invalid {
                what: "sandbox id",
                why: format!("{:?} is not a plain name", spec.id),
            });
        }
        let template = template::resolve(&self.paths, &spec.template)?;
        template
            .check_layers()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let id = spec.id.clone();
        let run = self.paths.sandbox_run(&id);
        let data = self.paths.sandbox_data(&id);
        let mut sb = GvisorSandbox {
            socket: run.join("sock/agent.sock"),
            id: id.clone(),
            pid: AtomicI32::new(0),
            cgroup: self.cgroup(&id),
            runsc: runsc.clone(),
            run: run.clone(),
            ephemeral: opts.ephemeral.then(|| data.clone()),
            restore: self.restore(),
            watchdog: None,
        };
        let r = (|| -> Result<PathBuf> {
            let bundle = prepare_dirs(&self.paths, &run, &data)?;
            if let Some((_, files)) = from {
                copy_layer(&files.join("upper"), &data.join("upper"))?;
            }
            let config = bundle_config(&spec, &template, &run.join("sock"), &bundle)?;
            std::fs::write(bundle.join("config.json"), config.to_string())
                .map_err(crate::io_err("write the bundle's config.json"))?;
            std::fs::write(run.join("template"), spec.template.as_bytes())
                .map_err(crate::io_err("record the template"))?;
            let volumes: Vec<OciVolume> = spec
                .volumes
                .iter()
                .map(|v| OciVolume {
                    dir: self.paths.volume(&v.name),
                    size: v.size,
                    target: v.target.clone(),
                })
                .collect();
            let volumes = serde_json::to_vec(&volumes).expect("volumes serialize");
            std::fs::write(run.join("volumes.json"), volumes)
                .map_err(crate::io_err("record the volumes"))?;
            Ok(bundle)
        })();
        let bundle = match r {
            Ok(b) => b,
            Err(e) => {
                sb.teardown();
                return Err(e);
            }
        };
        match self
            .start(
                &mut sb,
                &runsc,
                &bundle,
                &template,
                &data,
                from.map(|f| f.0),
            )
            .await
        {
            Ok(()) if opts.die_with_parent => {
                // Started from this (the caller's) thread: the kernel tells it when the
                // thread ends.
                match std::process::Command::new(&self.exe)
                    .args(["__gvisor-watch", &id, &std::process::id().to_string()])
                    .arg(if opts.ephemeral { "remove" } else { "keep" })
                    .env("WARREN_RUN_DIR", &self.paths.run)
                    .env("WARREN_DATA_DIR", &self.paths.data)
                    .stdin(Stdio::null())
                    // It must not hold the caller's output open after the caller.
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                {
                    Ok(child) => {
                        sb.watchdog = Some(child);
                        Ok(sb)
                    }
                    Err(e) => {
                        tokio::task::spawn_blocking(move || sb.teardown())
                            .await
                            .ok();
                        Err(crate::io_err("start the sandbox's watchdog")(e))
                    }
                }
            }
            Ok(()) => Ok(sb),
            Err(e) => {
                let s = sb;
                tokio::task::spawn_blocking(move || {
                    let mut s = s;
                    s.teardown()
                })
                .await
                .ok();
                Err(e)
            }
        }
    }

    async fn start(
        &self,
        sb: &mut GvisorSandbox,
        runsc: &Runsc,
        bundle: &Path,
        template: &template::Template,
        data: &Path,
        image: Option<&Path>,
    ) -> Result<()> {
        let verb: Vec<String> = match image {
            None => vec!["create".into()],
            Some(i) => vec![
                "restore".into(),
                format!("--image-path={}", i.display()),
                "-detach".into(),
            ],
        };
        let launch = OciLaunch {
            volumes: recorded_volumes(&sb.run)?,
            read_only: read_only_sources(bundle, template, &self.exe),
            bundle: bundle.to_path_buf(),
            lower: template.lower.clone(),
            rw: data.to_path_buf(),
            new_netns: sb.runsc.nat,
            argv: std::iter::once(runsc.bin.display().to_string())
                .chain(runsc.flags())
                .chain(verb)
                .chain([format!("--bundle={}", bundle.display()), container(&sb.id)])
                .collect(),
        };
        let exe = self.exe.clone();
        let log = sb.run.join("runsc.log");
        tokio::task::spawn_blocking(move || run_oci(&exe, &launch, &log))
            .await
            .map_err(|e| Error::Setup(format!("runsc create: {e}")))??;
        if sb.runsc.nat {
            // The container's processes are in the namespace `__oci` made: wire it.
            let (_, pid) = runsc.state(&sb.id).unwrap_or_default();
            if pid <= 0 {
                return Err(Error::Setup("runsc create left no sandbox process".into()));
            }
            let (run_dir, id) = (self.paths.run.clone(), sb.id.clone());
            let lease = tokio::task::spawn_blocking(move || {
                crate::network::setup_nat(
                    &run_dir,
                    &id,
                    nix::unistd::Pid::from_raw(pid),
                    std::process::id(),
                )
            })
            .await
            .map_err(|e| Error::Setup(format!("network: {e}")))?
            .map_err(|e| Error::Setup(format!("network: {e}")))?;
            std::fs::write(sb.run.join("lease"), lease.as_os_str().as_encoded_bytes())
                .map_err(crate::io_err("record the address lease"))?;
        }
        let r = runsc.clone();
        let id = sb.id.clone();
        let restored = image.is_some();
        tokio::task::spawn_blocking(move || {
            if restored {
                // The restored agent closed its socket before the image was written.
                r.run(&["kill", &container(&id), "USR2"])
            } else {
                r.run(&["start", &container(&id)])
            }
        })
        .await
        .map_err(|e| Error::Setup(format!("runsc start: {e}")))??;
        let (_, pid) = runsc.state(&sb.id).unwrap_or_default();
        sb.pid.store(pid, Ordering::Relaxed);
        std::fs::write(sb.run.join("helper.pid"), pid.to_string())
            .map_err(crate::io_err("write the sandbox's pid"))?;
        // The agent binds its socket once it runs: wait for it to answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match crate::client::AgentClient::connect(&sb.socket).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Setup(format!(
                        "the agent did not answer in 30 s: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

/// Why a `nat` sandbox cannot be checkpointed, forked or restored.
fn no_snapshots_on_nat() -> Error {
    Error::Invalid {
        what: "request",
        why: "a gvisor sandbox on the `nat` network keeps no memory snapshots (its sockets \
              are the host kernel's, which runsc cannot save): fork or snapshot with memory \
              one on `none`"
            .into(),
    }
}

/// Makes the run directory (bundle, socket directory) and the writable layer, owned as
/// the sandbox's root will see them. Returns the bundle's directory.
fn prepare_dirs(paths: &Paths, run: &Path, data: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = paths;
    let bundle = run.join("bundle");
    for d in [&bundle, &run.join("sock")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(crate::io_err(format!("make {}", d.display())))?;
    }
    for d in [data.join("upper"), data.join("work")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&d)
            .map_err(crate::io_err(format!("make {}", d.display())))?;
    }
    // Stored as the common range's root: the sandbox's root through the overlay's map.
    let root = Some(nix::unistd::Uid::from_raw(HOST_ID_BASE));
    let group = Some(nix::unistd::Gid::from_raw(HOST_ID_BASE));
    for d in [data.join("upper"), data.join("work")] {
        nix::unistd::chown(&d, root, group)
            .map_err(|e| crate::io_err(format!("chown {}", d.display()))(e.into()))?;
    }
    Ok(bundle)
}

/// Copies a writable layer (owners, modes, links, holes) for a sandbox of its own.
fn copy_layer(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--sparse=always", "-T"])
        .arg(from)
        .arg(to)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(crate::io_err("run cp"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Setup(format!(
            "copy the writable layer: {}",
            err.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>()
        )));
    }
    Ok(())
}

/// The OCI runtime configuration of a sandbox.
fn bundle_config(
    spec: &SandboxSpec,
    template: &template::Template,
    sock: &Path,
    bundle: &Path,
) -> Result<serde_json::Value> {
    let mut env = template.env.clone();
    env.extend(spec.env.clone());
    let launch = AgentLaunch {
        socket: PathBuf::from(SOCKET_DIR).join("agent.sock"),
        host_user: None,
        workdir: template.meta.workdir.as_ref().map(PathBuf::from),
        env,
        confined: true,
        user: template.meta.user.as_deref().map(template::agent_user),
        quiesce: true,
    };
    let caps: Vec<&str> = warren_sys::caps::KEPT_CAPABILITIES.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                           "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    // The host's files are bound from read-only mounts `warren __oci` makes of them
    // (see `read_only_sources`): runsc's own `ro` is enforced by its Sentry after the
    // host file is opened, and an open that truncates would reach the host file first.
    for (i, host) in template.host_binds.iter().enumerate() {
        mounts.push(json!({"destination": host, "type": "bind",
                           "source": read_only_point(bundle, i),
                           "options": ["rbind", "ro", "nosuid", "nodev"]}));
    }
    mounts.push(
        json!({"destination": AGENT_BIN, "type": "bind", "source": bundle.join("ro/agent"),
                       "options": ["bind", "ro", "nosuid", "nodev"]}),
    );
    mounts.push(
        json!({"destination": SOCKET_DIR, "type": "bind", "source": sock,
                       "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]}),
    );
    for (i, v) in spec.volumes.iter().enumerate() {
        mounts.push(json!({"destination": v.target, "type": "bind",
                           "source": volume_point(bundle, i),
                           "options": ["rbind", "rw", "nosuid", "nodev"]}));
    }
    let r = &spec.resources;
    let mut resources = serde_json::Map::new();
    if let Some(m) = r.memory {
        resources.insert("memory".into(), json!({"limit": m, "swap": m}));
    }
    if let Some(c) = r.cpu_millis {
        resources.insert(
            "cpu".into(),
            json!({"quota": u64::from(c) * 100, "period": 100_000}),
        );
    }
    resources.insert("pids".into(), json!({"limit": host_tasks(r.pids)}));
    let launch = serde_json::to_string(&launch).expect("the launch serializes");
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    // On `nat` the container stays in the namespace `warren __oci` made for it.
    if spec.network != NetworkMode::Nat {
        namespaces.push(json!({"type": "network"}));
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [AGENT_BIN, "__agent", launch],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": NOFILE_SOFT, "hard": NOFILE_HARD},
                        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}],
            "noNewPrivileges": true,
        },
        "root": {"path": "root", "readonly": false},
        "hostname": spec.hostname.clone().unwrap_or_else(|| "sandbox".into()),
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": container(&spec.id),
            "resources": resources,
            "maskedPaths": ["/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                            "/sys/devices/virtual/powercap"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"],
        },
    }))
}

/// Host tasks gVisor's Sentry, Gofer and platform use with nothing running inside
/// (measured: about 40 on the ptrace platform), with room to spare.
const BASE_HOST_TASKS: u64 = 256;
/// Host tasks each process inside costs on the ptrace platform (measured: about 6, its
/// address space's stub and the threads tracing it; a thread inside costs less).
const HOST_TASKS_PER_TASK: u64 = 8;
/// Tasks a sandbox with no pids limit of its own may have, for the host cap.
const DEFAULT_TASKS: u64 = 1024;

/// The host's cap on a gVisor sandbox's tasks (its cgroup's `pids.max`) for a limit of
/// `pids` tasks inside.
fn host_tasks(pids: Option<u32>) -> u64 {
    BASE_HOST_TASKS + HOST_TASKS_PER_TASK * pids.map_or(DEFAULT_TASKS, u64::from)
}

/// Runs `warren __oci` with `launch` and waits for it (the OCI runtime's create or
/// restore); on failure, the last line runsc wrote to `log`.
fn run_oci(exe: &Path, launch: &OciLaunch, log_path: &Path) -> Result<()> {
    use std::io::Write;
    let input = serde_json::to_vec(launch).expect("the launch serializes");
    let log = std::fs::File::create(log_path).map_err(crate::io_err("make runsc.log"))?;
    let mut child = std::process::Command::new(exe)
        .arg("__oci")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(crate::io_err("runsc.log"))?)
        .stderr(log)
        .spawn()
        .map_err(crate::io_err("start runsc"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(&input)
            .map_err(crate::io_err("send the launch"))?;
    }
    let status = child.wait().map_err(crate::io_err("wait for runsc"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(Error::Setup(format!(
        "runsc failed ({status}): {}",
        last.chars().take(400).collect::<String>()
    )))
}

/// What `warren __oci` is started with (on stdin).
#[derive(Debug, Serialize, Deserialize)]
struct OciLaunch {
    /// The bundle's directory: the overlay is mounted at `bundle/root`.
    bundle: PathBuf,
    /// The template's layers, top first.
    lower: Vec<PathBuf>,
    /// The writable layer's directory (with `upper` and `work`).
    rw: PathBuf,
    /// Give the container a network namespace of its own, loopback up (`nat`).
    #[serde(default)]
    new_netns: bool,
    /// The OCI runtime's `create` command line, run in the new mount namespace.
    argv: Vec<String>,
    /// Volumes to mount (idmapped) in the bundle, where the bundle's config binds them.
    #[serde(default)]
    volumes: Vec<OciVolume>,
    /// Host paths to mount read-only (on every mount of their tree) in the bundle, at the
    /// second path, which the bundle's config binds.
    #[serde(default)]
    read_only: Vec<(PathBuf, PathBuf)>,
}

/// A volume of a gVisor sandbox: mounted by `warren __oci` at `bundle/volumes/N`, which
/// the bundle's config binds at its target inside.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OciVolume {
    /// Where the volume is kept (`Paths::volume`).
    dir: PathBuf,
    /// Its size when it is first made (an ext4 image), or none (a directory).
    size: Option<u64>,
    /// Its target inside the sandbox.
    target: String,
}

/// Where `warren __oci` mounts the read-only view of host directory `i` of a bundle.
fn read_only_point(bundle: &Path, i: usize) -> PathBuf {
    bundle.join("ro").join(i.to_string())
}

/// What a bundle binds read-only from the host, each with where `warren __oci` mounts its
/// read-only view: the template's host directories, and the agent's binary.
fn read_only_sources(
    bundle: &Path,
    template: &template::Template,
    exe: &Path,
) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = template
        .host_binds
        .iter()
        .enumerate()
        .map(|(i, h)| (h.clone(), read_only_point(bundle, i)))
        .collect();
    out.push((exe.to_path_buf(), bundle.join("ro/agent")));
    out
}

/// Where `warren __oci` mounts volume `i` of a bundle.
fn volume_point(bundle: &Path, i: usize) -> PathBuf {
    bundle.join("volumes").join(i.to_string())
}

/// The volumes a sandbox was made with, as recorded in its run directory (a resume
/// mounts them again).
fn recorded_volumes(run: &Path) -> Result<Vec<OciVolume>> {
    match std::fs::read(run.join("volumes.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Setup(format!("volumes.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(crate::io_err("read volumes.json")(e)),
    }
}

/// `warren __oci`: mounts a sandbox's root in a mount namespace of its own and becomes
/// the OCI runtime's `create`, whose processes keep that namespace. Must run before any
/// thread starts (it unshares). Never returns.
pub fn oci_main() -> ! {
    use std::io::Read;
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("warren __oci: {what}: {e}");
        std::process::exit(1)
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin()
        .lock()
        .take(1 << 20)
        .read_to_end(&mut input)
    {
        fail("read the launch", &e);
    }
    let launch: OciLaunch = match serde_json::from_slice(&input) {
        Ok(l) => l,
        Err(e) => fail("bad launch", &e),
    };
    let mut flags = warren_sys::ns::CloneFlags::CLONE_NEWNS;
    if launch.new_netns {
        flags |= warren_sys::ns::CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = warren_sys::ns::unshare(flags) {
        fail("new namespaces", &e);
    }
    if launch.new_netns {
        if let Err(e) = warren_sys::ns::loopback_up() {
            fail("bring up loopback", &e);
        }
    }
    if let Err(e) =
        warren_sys::mount::set_propagation(Path::new("/"), nix::mount::MsFlags::MS_PRIVATE)
    {
        fail("private mounts", &e);
    }
    if let Err(e) = std::fs::create_dir_all(launch.bundle.join("root")) {
        fail("make the root mount point", &e);
    }
    // Files are stored under the common range; through this map they are the
    // sandbox's 0-65,535, which runsc shows as they are (it runs as host root).
    let map = format!("{HOST_ID_BASE} 0 {ID_COUNT}\n");
    let storage = match warren_sys::ns::idmap_userns(&map, &map) {
        Ok(fd) => fd,
        Err(e) => fail("make the id mapping of the sandbox's files", &e),
    };
    if let Err(e) = warren_sys::mount::mount_overlay(
        &launch.bundle,
        &launch.lower,
        &launch.rw,
        Some(std::os::fd::AsFd::as_fd(&storage)),
        // gVisor's kernel runs the sandbox's setuid programs, and its processes keep
        // no_new_privs (see docs/design.md).
        false,
    ) {
        fail("mount the root overlay", &e);
    }
    for (src, at) in &launch.read_only {
        let made = if src.is_dir() {
            std::fs::create_dir_all(at)
        } else {
            at.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| std::fs::File::create(at).map(drop))
        };
        if let Err(e) = made {
            fail("make a read-only mount point", &e);
        }
        if let Err(e) =
            warren_sys::mount::bind_with(src, at, warren_sys::mount::MountAttrs::PROTECTED)
        {
            fail("bind a host path read-only", &e);
        }
    }
    for (i, v) in launch.volumes.iter().enumerate() {
        let at = volume_point(&launch.bundle, i);
        if let Err(e) = std::fs::create_dir_all(&at) {
            fail("make a volume's mount point", &e);
        }
        let storage = std::os::fd::AsFd::as_fd(&storage);
        if let Err(e) = crate::helper::place_volume(&v.dir, v.size, &launch.bundle, i, &at, storage)
        {
            fail("mount a volume", &e.message);
        }
    }
    drop(storage);
    let Some((bin, _)) = launch.argv.split_first() else {
        fail("launch", &"no command");
    };
    let args: Vec<std::ffi::CString> = launch
        .argv
        .iter()
        .filter_map(|a| std::ffi::CString::new(a.as_str()).ok())
        .collect();
    let bin = std::ffi::CString::new(bin.as_str()).unwrap_or_default();
    // The runtime's create (or restore) leaves the container's processes behind when it
    // exits. They are adopted by a reaper of the sandbox's own, not by the host's init,
    // which may reap as late as a second after (this host's does): `runsc delete` waits
    // for them to be gone, so a slow reaper is in every remove and pause.
    let (status_r, status_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => fail("pipe", &e),
    };
    match warren_sys::ns::fork_process() {
        Ok(warren_sys::ns::Forked::Child) => {
            drop(status_r);
            reap_for_the_sandbox(&bin, &args, status_w)
        }
        Ok(warren_sys::ns::Forked::Parent(_)) => {
            drop(status_w);
            // The runtime's exit status, from the reaper; nothing if it died first.
            let mut code = [1u8];
            let _ = std::io::Read::read_exact(&mut std::fs::File::from(status_r), &mut code);
            std::process::exit(i32::from(code[0]))
        }
        Err(e) => fail("fork the sandbox's reaper", &e),
    }
}

/// The sandbox's reaper (see [`oci_main`]): in a session of its own, it adopts what the
/// runtime leaves (PR_SET_CHILD_SUBREAPER), runs the runtime, sends its exit status
/// down `status`, and reaps until nothing is left under it. Never returns.
fn reap_for_the_sandbox(
    bin: &std::ffi::CStr,
    args: &[std::ffi::CString],
    status: std::os::fd::OwnedFd,
) -> ! {
    use nix::sys::wait::{waitpid, WaitStatus};
    let _ = nix::unistd::setsid();
    if warren_sys::ns::set_child_subreaper().is_err() {
        // The host's init adopts them instead: slower to remove, nothing worse.
    }
    let runtime = match warren_sys::ns::fork_process() {
        Ok(warren_sys::ns::Forked::Child) => {
            drop(status);
            let e = nix::unistd::execv(bin, args).unwrap_err();
            eprintln!("warren __oci: exec the OCI runtime: {e}");
            std::process::exit(1)
        }
        Ok(warren_sys::ns::Forked::Parent(pid)) => pid,
        Err(e) => {
            eprintln!("warren __oci: fork the OCI runtime: {e}");
            std::process::exit(1)
        }
    };
    let code: u8 = loop {
        match waitpid(runtime, None) {
            Ok(WaitStatus::Exited(_, c)) => break u8::try_from(c).unwrap_or(1),
            Ok(WaitStatus::Signaled(..)) => break 1,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break 1,
        }
    };
    let _ = std::io::Write::write_all(&mut std::fs::File::from(status), &[code]);
    // Nothing of the daemon's is held from here on: not its log, not a terminal.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
    loop {
        match waitpid(None, None) {
            Err(nix::errno::Errno::ECHILD) => std::process::exit(0),
            _ => continue,
        }
    }
}

/// `warren __gvisor-watch ID PID remove|keep`: waits for its parent (`warren run`, pid
/// PID) to die, then removes sandbox ID as `purge` would (its writable layer too with
/// `remove`). Killed by its parent when the sandbox ends normally. Never returns.
pub fn watch_main() -> ! {
    use nix::sys::signal::{SigSet, Signal};
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [id, parent, keep] = args.as_slice() else {
        eprintln!("warren __gvisor-watch: expected ID PID remove|keep");
        std::process::exit(2)
    };
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = set.thread_block();
    let _ = warren_sys::ns::set_parent_death_signal(Signal::SIGTERM);
    // The parent may have died before the death signal was armed.
    if nix::unistd::getppid().to_string() == *parent {
        let _ = set.wait();
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("warren"));
    if let Ok(b) = GvisorBackend::new(Paths::from_env(), exe, None) {
        b.purge(id, keep == "remove");
    }
    std::process::exit(0)
}

/// runsc makes the container's cgroup in every hierarchy it finds (blkio, cpuset,
/// devices, the named systemd one too), and a failed create or a forced delete may leave
/// them: every empty one of that name goes.
fn remove_runsc_cgroups(name: &str) {
    for (n, dir) in cgroups_everywhere(PREFIX) {
        if n == name {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Every cgroup whose name starts with `prefix`, in every hierarchy mounted under
/// /sys/fs/cgroup, at its top or under this process's own cgroup there: (name, path).
pub fn cgroups_everywhere(prefix: &str) -> Vec<(String, PathBuf)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for m in mounts.flatten() {
        let dir = m.file_name().to_string_lossy().into_owned();
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if dir == "unified" {
                ctrls.is_empty()
            } else {
                ctrls
                    .split(',')
                    .any(|c| c == dir || c.strip_prefix("name=") == Some(dir.as_str()))
            };
            hit.then(|| path.trim_start_matches('/').to_string())
        });
        let base = m.path();
        let mut parents = vec![base.clone()];
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            parents.push(base.join(p));
        }
        for parent in parents {
            for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(prefix) && e.path().is_dir() {
                    out.push((n, e.path()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The checkpoint image of a sandbox paused to disk; complete once `done` is written.
fn image_dir(run: &Path) -> PathBuf {
    run.join("image")
}

fn image_done(run: &Path) -> bool {
    image_dir(run).join("done").exists()
}

impl GvisorSandbox {
    /// Writes the container's memory to `image` with the agent's host socket closed;
    /// `leave_running` keeps the container (the agent listens again), otherwise it is
    /// stopped.
    fn checkpoint_into(&self, image: &Path, leave_running: bool) -> Result<()> {
        let c = container(&self.id);
        std::fs::create_dir_all(image).map_err(crate::io_err("make the checkpoint directory"))?;
        // An open host socket cannot be saved: the agent closes its listener and every
        // connection (SIGUSR1) and keeps its processes.
        self.runsc.run(&["kill", &c, "USR1"])?;
        // The agent removes its socket's path once it holds none (never probed with a
        // connect: one queued behind a listener that stopped accepting would block).
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.socket.symlink_metadata().is_ok() {
            if Instant::now() > deadline {
                let _ = self.runsc.run(&["kill", &c, "USR2"]);
                return Err(Error::Setup("the agent did not close its socket".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let image_flag = format!("--image-path={}", image.display());
        let mut args = vec!["checkpoint", image_flag.as_str()];
        if leave_running {
            args.push("--leave-running");
        }
        args.push(&c);
        let r = self.runsc.run(&args);
        if r.is_err() || leave_running {
            // Still running (a checkpoint that failed leaves it be): listen again.
            let _ = self.runsc.run(&["kill", &c, "USR2"]);
            self.wait_listening()?;
        }
        r.map(drop)
    }

    fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Setup(
                    "the agent did not listen again in 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Agent, close the host socket; checkpoint; remove the stopped container.
    fn checkpoint_to_disk(&self) -> Result<()> {
        let c = container(&self.id);
        let image = image_dir(&self.run);
        let _ = crate::tree::remove(&image);
        if let Err(e) = self.checkpoint_into(&image, false) {
            let _ = crate::tree::remove(&image);
            return Err(e);
        }
        std::fs::write(image.join("done"), b"")
            .map_err(crate::io_err("mark the checkpoint complete"))?;
        let _ = self.runsc.run(&["delete", "--force", &c]);
        remove_runsc_cgroups(&c);
        self.pid.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Restores the container from its image, in a fresh mount of its root, and has the
    /// agent listen again.
    fn restore_from_disk(&self) -> Result<()> {
        let c = container(&self.id);
        let image = image_dir(&self.run);
        let bundle = self.run.join("bundle");
        let key = std::fs::read_to_string(self.run.join("template"))
            .map_err(crate::io_err("read the sandbox's template"))?;
        let template = template::resolve(&self.restore.paths, key.trim())?;
        let launch = OciLaunch {
            volumes: recorded_volumes(&self.run)?,
            read_only: read_only_sources(&bundle, &template, &self.restore.exe),
            bundle: bundle.clone(),
            lower: template.lower.clone(),
            rw: self.restore.paths.sandbox_data(&self.id),
            new_netns: false,
            argv: std::iter::once(self.runsc.bin.display().to_string())
                .chain(self.runsc.flags())
                .chain([
                    "restore".to_string(),
                    format!("--image-path={}", image.display()),
                    format!("--bundle={}", bundle.display()),
                    "-detach".to_string(),
                    c.clone(),
                ])
                .collect(),
        };
        // Nothing of an earlier attempt may stand in the way, and nothing of a failed one
        // may stay: a damaged image is refused whole, the sandbox stays paused.
        let _ = self.runsc.run(&["delete", "--force", &c]);
        if let Err(e) = run_oci(&self.restore.exe, &launch, &self.run.join("runsc.log")) {
            let _ = self.runsc.run(&["delete", "--force", &c]);
            remove_runsc_cgroups(&c);
            return Err(Error::Setup(format!(
                "the sandbox's saved memory could not be restored ({e}); it stays paused, \
                 and removing it is safe"
            )));
        }
        let (_, pid) = self.runsc.state(&self.id).unwrap_or_default();
        self.pid.store(pid, Ordering::Relaxed);
        let _ = std::fs::write(self.run.join("helper.pid"), pid.to_string());
        self.runsc.run(&["kill", &c, "USR2"])?;
        self.wait_listening()?;
        let _ = crate::tree::remove(&image);
        Ok(())
    }

    /// Stops and deletes the container, removes its cgroup and run directory (and its
    /// writable layer when ephemeral). Blocking.
    fn teardown(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let c = container(&self.id);
        if self.runsc.state(&self.id).is_some() {
            let _ = self.runsc.run(&["kill", &c, "KILL"]);
            let _ = self.runsc.run(&["delete", "--force", &c]);
        }
        if self.cgroup.exists() {
            let _ = self.cgroup.kill_all(Duration::from_secs(5));
            let _ = self.cgroup.remove();
        }
        remove_runsc_cgroups(&c);
        // Its link went with its namespace; the lease is this daemon's to return.
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

impl Backend for GvisorBackend {
    fn kind(&self) -> Isolation {
        Isolation::Gvisor
    }

    fn info(&self) -> BackendInfo {
        let (available, reason) = match &self.runsc {
            Ok(_) => (true, None),
            Err(why) => (false, Some(why.clone())),
        };
        BackendInfo {
            name: Isolation::Gvisor,
            available,
            reason,
            capabilities: Capabilities {
                isolation: format!(
                    "gVisor's user-space kernel (runsc, {} platform) in front of the host kernel",
                    self.platform
                ),
                strong_isolation: true,
                pause: true,
                memory_snapshots: true,
                networks: vec![NetworkMode::None, NetworkMode::Nat],
                limits: ["memory", "cpu", "pids"].map(String::from).to_vec(),
                volumes: true,
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
        let runsc = self.runsc().ok()?;
        let run = self.paths.sandbox_run(id);
        // Paused to disk: no container, an image.
        let (status, pid) = match runsc.state(id) {
            Some(s) => s,
            None if image_done(&run) => ("saved".into(), 0),
            None => return None,
        };
        if !matches!(status.as_str(), "running" | "paused" | "saved") {
            return None;
        }
        Some(Box::new(GvisorSandbox {
            id: id.to_string(),
            socket: run.join("sock/agent.sock"),
            pid: AtomicI32::new(pid),
            cgroup: self.cgroup(id),
            runsc: runsc.on_nat(run.join("lease").exists()),
            run,
            ephemeral: None,
            restore: self.restore(),
            watchdog: None,
        }))
    }

    fn purge(&self, id: &str, remove_data: bool) {
        let Ok(runsc) = self.runsc() else { return };
        let run = self.paths.sandbox_run(id);
        let nat = run.join("lease").exists();
        let mut sb = GvisorSandbox {
            id: id.to_string(),
            socket: PathBuf::new(),
            pid: AtomicI32::new(0),
            cgroup: self.cgroup(id),
            runsc: runsc.on_nat(nat),
            run,
            ephemeral: remove_data.then(|| self.paths.sandbox_data(id)),
            restore: self.restore(),
            watchdog: None,
        };
        sb.teardown();
    }

    fn remove_data<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        let data = self.paths.sandbox_data(id);
        Box::pin(crate::tree::remove_off_runtime(data))
    }

    fn restore<'a>(
        &'a self,
        spec: SandboxSpec,
        image: &'a Path,
        files: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>>> {
        Box::pin(async move {
            let sb = self
                .make_from(spec, CreateOptions::default(), Some((image, files)))
                .await?;
            Ok(Box::new(sb) as Box<dyn Instance>)
        })
    }

    fn files_of(&self, id: &str) -> Option<PathBuf> {
        Some(self.paths.sandbox_data(id))
    }
}

impl Instance for GvisorSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent_socket(&self) -> &Path {
        &self.socket
    }

    /// Saves the processes and memory to disk and ends the container: a paused gvisor
    /// sandbox holds no memory. One on `nat` is frozen in place instead.
    fn pause(&self) -> Result<()> {
        if self.runsc.nat {
            return self.runsc.run(&["pause", &container(&self.id)]).map(drop);
        }
        self.checkpoint_to_disk()
    }

    fn resume(&self) -> Result<()> {
        if image_done(&self.run) {
            self.restore_from_disk()
        } else {
            // Paused in place by an earlier daemon (`runsc pause`).
            self.runsc.run(&["resume", &container(&self.id)]).map(drop)
        }
    }

    fn checkpoint(&self, image: &Path) -> Result<()> {
        if self.runsc.nat {
            return Err(no_snapshots_on_nat());
        }
        self.checkpoint_into(image, true)
    }

    /// Pauses it to disk (unless it is), so that the image and the files are of one
    /// moment, copies both, and resumes it if it was running.
    fn save_memory(&self, into: &Path) -> Result<()> {
        if self.runsc.nat {
            return Err(no_snapshots_on_nat());
        }
        let was_running = !image_done(&self.run);
        if was_running {
            self.checkpoint_to_disk()?;
        }
        let files = self.restore.paths.sandbox_data(&self.id).join("upper");
        let copied = std::fs::create_dir_all(into)
            .map_err(crate::io_err("make the memory directory"))
            .and_then(|()| copy_layer(&image_dir(&self.run), &into.join("image")))
            .and_then(|()| copy_layer(&files, &into.join("upper")));
        if was_running {
            self.restore_from_disk()?;
        }
        copied
    }

    fn is_paused(&self) -> bool {
        image_done(&self.run)
            || self
                .runsc
                .state(&self.id)
                .is_some_and(|(s, _)| s == "paused")
    }

    fn usage(&self) -> Usage {
        Usage::of(&self.cgroup)
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills()
    }

    fn fatal_task_limit_hits(&self) -> u64 {
        self.cgroup.task_limit_hits()
    }

    fn is_alive(&mut self) -> bool {
        image_done(&self.run) || crate::namespace::pid_alive(self.pid.load(Ordering::Relaxed))
    }

    fn port_dialer(&self) -> PortDialer {
        if self.runsc.nat {
            // Its sockets are the host kernel's, in its own namespace.
            let pid = self.pid.load(Ordering::Relaxed);
            return Box::new(move |port, timeout| {
                crate::network::connect_inside(pid, port, timeout)
            });
        }
        Box::new(|_, _| {
            Err(std::io::Error::other(
                "a gvisor sandbox on `none` has no network the host can reach: create it \
                 on `nat` to reach its ports",
            ))
        })
    }

    fn destroy(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.teardown())
                .await
                .map_err(|e| Error::Setup(format!("tear down: {e}")))
        })
    }
}

// The slot range of namespace sandboxes starts far above the common range gVisor maps.
const _: () = assert!(HOST_ID_BASE + ID_COUNT <= FIRST_SLOT_BASE);
