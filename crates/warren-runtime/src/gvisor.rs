//! The gVisor backend: each sandbox is an OCI bundle run by `runsc`, with Warren's agent
//! as the container's first process. The sandbox's system calls reach gVisor's Sentry, a
//! kernel in user space, not the host's.
//!
//! Creating one:
//! 1. the run directory gets a bundle (`config.json`) and a socket directory; the data
//!    directory the writable layer (`upper`, `work`);
//! 2. `warren __oci` (single-threaded, see [`oci_main`](crate::bundle::oci_main)) makes a private mount
//!    namespace, mounts the overlay root there (idmapped: files stored under the common
//!    id range show as the sandbox's 0-65,535, as they do in a namespace sandbox) and
//!    becomes `runsc create`: the sandbox's processes inherit that namespace, so the
//!    root is mounted nowhere on the host;
//! 3. `runsc start` runs the agent (`warren __agent`, bound read-only at
//!    `/.warren/warren`), which binds its socket in the socket directory; with
//!    `--host-uds=create` that is a socket on the host the daemon connects to.
//!
//! Limits: memory and CPU are recorded in the bundle's `linux.resources` and written by
//! Warren to a cgroup named as the namespace backend names its own (under this process's
//! cgroup), which runsc's process enters between its fork and its exec; runsc runs with
//! `--ignore-cgroups`, so it moves no process itself (see `place_cgroup`). The memory
//! limit is also the memory gVisor's kernel reports (`MemTotal`), as runsc would make it
//! from its own cgroup (see `crate::bundle::limit_meminfo`).
//! Tasks are limited on the host too, and always: each process inside costs gVisor
//! (on the ptrace platform) several host tasks, so without a cap a fork bomb inside
//! would use up the host's pids. The cap is `host_tasks` of the sandbox's pids limit;
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
//! Its published ports are listened on by `warren __oci` before it leaves the host's
//! network namespace, and forwarded by the sandbox's reaper, which lives in the
//! sandbox's, as long as its processes do. A sandbox on `none` publishes none.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use warren_sys::cgroup::{Cgroup, Hierarchy, Limits};
use warren_types::api::{BackendInfo, Capabilities, Isolation};
use warren_types::spec::{NetworkMode, SandboxSpec};

use crate::backend::{BoxFuture, PortDialer, Teardowns};
use crate::bundle::{
    bundle_config, container, copy_layer, prepare_dirs, read_only_sources, recorded_disk,
    recorded_mounts, recorded_volumes, remove_runtime_cgroups, run_oci, which, AgentFiles,
    BundleKind, OciCli, OciLaunch, OciVolume,
};
use crate::ids::FIRST_SLOT_BASE;
use crate::namespace::CreateOptions;
use crate::{template, Backend, Error, Instance, Paths, Result, Usage, HOST_ID_BASE, ID_COUNT};

mod control;

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
    /// How a pause, snapshot or fork with memory writes its image [default: none].
    #[serde(default)]
    pub image_compression: ImageCompression,
}

/// How `runsc checkpoint` writes a memory image (its `--compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageCompression {
    /// Pages as they are: a pause and a resume spend no time compressing (an idle
    /// shell's pause 56 -> 47 ms, a process holding 100 MB 266 -> 84 ms, its resume
    /// 272 -> 214 ms, against runsc's default here), for a larger image on disk (0.12 ->
    /// 0.81 MiB for the idle shell; memory that compresses well, such as text, grows most).
    #[default]
    None,
    /// flate at its fastest level (runsc's own default): a smaller image, made and read
    /// more slowly. For hosts short of disk rather than time.
    Flate,
}

impl ImageCompression {
    fn flag(self) -> &'static str {
        match self {
            Self::None => "--compression=none",
            Self::Flate => "--compression=flate-best-speed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GvisorBackend {
    paths: Paths,
    exe: PathBuf,
    hierarchy: Hierarchy,
    runsc: std::result::Result<PathBuf, String>,
    platform: String,
    debug_log: Option<PathBuf>,
    compression: Compression,
    /// Teardowns still finishing after their sandbox's end was answered (see
    /// [`GvisorSandbox::end`]).
    teardowns: Teardowns,
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
    /// The end of a pause to disk still running off the request's path (the saved
    /// container deleted, its Sentry's memory freed, its mounts let go): joined by
    /// whatever touches the container or its files next ([`GvisorSandbox::settle`]).
    settling: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    teardowns: Teardowns,
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
    compression: Compression,
    /// For a container on `nat`: every command must name the network it was made with.
    nat: bool,
}

/// The image compression asked for, and whether this runsc takes `--compression` (asked
/// of `runsc help checkpoint` at the first checkpoint, once per daemon): one that does
/// not writes its default, flate.
#[derive(Debug, Clone, Default)]
struct Compression {
    wanted: ImageCompression,
    supported: std::sync::Arc<std::sync::OnceLock<bool>>,
}

impl Compression {
    /// `runsc checkpoint`'s flag for it, if `bin` takes one.
    fn flag(&self, bin: &Path) -> Option<&'static str> {
        let supported = *self.supported.get_or_init(|| {
            std::process::Command::new(bin)
                .args(["help", "checkpoint"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("-compression"))
                .unwrap_or(false)
        });
        supported.then(|| self.wanted.flag())
    }
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
            // Warren makes the sandbox's cgroup and starts runsc in it (see
            // `place_cgroup`): runsc moving its processes in and itself out again, each
            // a whole-process move the kernel makes wait for an RCU grace period, cost
            // some 25 ms of every start and restore.
            "--ignore-cgroups".into(),
        ];
        if let Some(d) = &self.debug_log {
            f.push("--debug".into());
            f.push(format!("--debug-log={}/", d.display()));
        }
        f
    }

    /// The runtime CLI with this runsc's global flags.
    fn cli(&self) -> OciCli {
        OciCli {
            name: "runsc",
            bin: self.bin.clone(),
            flags: self.flags(),
        }
    }

    /// Runs `runsc ARGS` to completion; its error output on failure.
    fn run(&self, args: &[&str]) -> Result<String> {
        self.cli().run(args)
    }

    /// Sends `signal` to the first process of `container` (Warren's agent): through the
    /// sandbox's control socket (about 1 ms), or, when that fails, by `runsc kill` (a
    /// runsc process of 20-40 ms), which reports the error if it fails too.
    fn signal(&self, container: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let socket = control::socket_path(&self.root, container);
        match control::signal(&socket, container, signal as i32) {
            Ok(()) => {
                crate::trace::mark("gvisor: signalled through the control socket");
                Ok(())
            }
            Err(e) => {
                if crate::trace::enabled() {
                    crate::trace::mark(&format!("gvisor: control socket failed ({e}), runsc kill"));
                }
                self.run(&["kill", container, signal.as_str().trim_start_matches("SIG")])
                    .map(drop)
            }
        }
    }

    /// Whether runsc may still hold state of `container`: something in its root
    /// directory names it (its state file, lock or control socket). An unreadable root
    /// counts as yes, so the caller cleans up rather than trusting nothing.
    fn may_know(&self, container: &str) -> bool {
        match std::fs::read_dir(&self.root) {
            Ok(entries) => entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(container)),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// Ends `container` for good. Its Sentry and its gofer, as its state file names them,
    /// are killed side by side (runsc kills the gofer, then looks again only 100 ms
    /// later); `run` is the sandbox's run directory, whose bundle a process's command
    /// line must name to count as the container's. Once both are gone, all runsc keeps
    /// of it is in its root: the state file, its lock and the control socket's path,
    /// removed here under runsc's own lock, as `runsc delete --force` would, without a
    /// runsc process (25-35 ms). Otherwise, or when anything else in the root still
    /// names the container, runsc deletes it.
    fn delete(&self, container: &str, run: &Path) {
        let state = self.saved_state(container);
        let gofer = state.as_ref().and_then(|s| state_pid(&s["goferPid"]));
        let sentry = state.as_ref().and_then(|s| state_pid(&s["sandbox"]["pid"]));
        let known: Vec<i32> = [gofer, sentry].into_iter().flatten().collect();
        kill_runsc_processes(&known, run);
        let gone = match (&state, gofer, sentry) {
            // Nothing saved: nothing runs that runsc would know of.
            (None, _, _) => true,
            (Some(_), Some(g), Some(s)) => {
                !runsc_process_running(g, run) && !runsc_process_running(s, run)
            }
            // A state file this code does not read: runsc's own delete.
            _ => false,
        };
        if gone && self.forget(container) {
            return;
        }
        let _ = self.run(&["delete", "--force", container]);
    }

    /// The pid of `container`'s gofer, as its state file in runsc's root records it.
    fn gofer_pid(&self, container: &str) -> Option<i32> {
        state_pid(&self.saved_state(container)?["goferPid"])
    }

    /// `container`'s state file in runsc's root, parsed, if there is one.
    fn saved_state(&self, container: &str) -> Option<serde_json::Value> {
        let state = self
            .root
            .join(format!("{container}_sandbox:{container}.state"));
        serde_json::from_slice(&std::fs::read(state).ok()?).ok()
    }

    /// Removes what runsc's root holds of `container`, whose processes are gone, holding
    /// runsc's lock of it as runsc does while it changes a container's state. True when
    /// nothing in the root names the container any more.
    fn forget(&self, container: &str) -> bool {
        let lock_path = self
            .root
            .join(format!("{container}_sandbox:{container}.lock"));
        let lock = match std::fs::File::open(&lock_path) {
            Ok(file) => match hold_runsc_lock(file) {
                Some(held) => Some(held),
                // A runsc command holds it past the wait: runsc's own delete, which
                // waits its turn.
                None => return false,
            },
            Err(_) => None,
        };
        for path in [
            self.root
                .join(format!("{container}_sandbox:{container}.state")),
            control::socket_path(&self.root, container),
            lock_path,
        ] {
            let _ = std::fs::remove_file(path);
        }
        drop(lock);
        !self.may_know(container)
    }

    /// `runsc state ID`: its status (`created`, `running`, `paused`, `stopped`) and pid.
    fn state(&self, id: &str) -> Option<(String, i32)> {
        self.cli().state(id)
    }
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
            image_compression: ImageCompression::default(),
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
            compression: Compression {
                wanted: config.image_compression,
                supported: Default::default(),
            },
            teardowns: Teardowns::default(),
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
            compression: self.compression.clone(),
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
        if !matches!(spec.network, NetworkMode::None | NetworkMode::Nat) {
            return Err(Error::Invalid {
                what: "request",
                why: "a gvisor sandbox has network `none` or `nat`".into(),
            });
        }
        if from.is_some() && !spec.publish.is_empty() {
            return Err(Error::Invalid {
                what: "request",
                why: "a gvisor sandbox started from saved memory is on `none`, which the \
                      host cannot reach: it publishes no ports (a fresh one on \
                      `--network nat` does)"
                    .into(),
            });
        }
        if spec.network == NetworkMode::None && !spec.publish.is_empty() {
            return Err(Error::Invalid {
                what: "request",
                why: "a gvisor sandbox on `none` has no network the host can reach, so it \
                      publishes no ports: create it with `--network nat` to publish them"
                    .into(),
            });
        }
        // The names, paths and limits every backend checks (volume names and targets, a
        // CPU limit past the host's cores).
        crate::namespace::validate(&spec)?;
        let nat = spec.network == NetworkMode::Nat;
        let runsc = runsc.on_nat(nat);
        if nat && from.is_some() {
            return Err(no_snapshots_on_nat());
        }
        let template = template::resolve(&self.paths, &spec.template)?;
        // On v2, the controllers its cgroup needs handed down (see `place_cgroup`).
        self.hierarchy.prepare()?;
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
            settling: Default::default(),
            teardowns: self.teardowns.clone(),
        };
        let r = (|| -> Result<(PathBuf, AgentFiles)> {
            let bundle = prepare_dirs(&run, &data, false)?;
            if let Some((_, files)) = from {
                // Saved with the memory (`save_memory`): a directory, of that moment.
                copy_layer(&files.join("upper"), &data.join("upper"))?;
            }
            // A restore runs the agent from the files its image was saved with.
            let agent = match from {
                Some((image, _)) => {
                    AgentFiles::for_restore(&self.paths, &self.exe, &image.join("agent"))?
                }
                None => AgentFiles::current(&self.paths, &self.exe)?,
            };
            agent.record(&run.join("agent"))?;
            let config = bundle_config(
                &spec,
                &template,
                &run.join("sock"),
                &bundle,
                BundleKind::Gvisor,
                &agent,
            )?;
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
            let mounts = serde_json::to_vec(&spec.mounts).expect("mounts serialize");
            std::fs::write(run.join("mounts.json"), mounts)
                .map_err(crate::io_err("record the host directory mounts"))?;
            Ok((bundle, agent))
        })();
        crate::trace::mark("gvisor: bundle written");
        let (bundle, agent) = match r {
            Ok(b) => b,
            Err(e) => {
                sb.teardown();
                return Err(e);
            }
        };
        let started = self
            .start(
                &mut sb,
                &bundle,
                (&template, &agent),
                &data,
                &spec,
                from.map(|f| f.0),
            )
            .await;
        if started.is_ok() {
            crate::bundle::copy_next_disk(&self.paths, spec.resources.disk);
        }
        match started {
            Ok(()) if opts.die_with_parent => {
                // Started from this (the caller's) thread: the kernel tells it when the
                // thread ends.
                match crate::bundle::start_watch(
                    &self.exe,
                    &self.paths,
                    Isolation::Gvisor,
                    &id,
                    opts.ephemeral,
                ) {
                    Ok(child) => {
                        sb.watchdog = Some(child);
                        Ok(sb)
                    }
                    Err(e) => {
                        tokio::task::spawn_blocking(move || sb.teardown())
                            .await
                            .ok();
                        Err(e)
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
        bundle: &Path,
        (template, agent): (&template::Template, &AgentFiles),
        data: &Path,
        spec: &SandboxSpec,
        image: Option<&Path>,
    ) -> Result<()> {
        let runsc = &sb.runsc.clone();
        // The sandbox process's pid, written by `create` (what `runsc state` would say, one
        // runsc less).
        let pid_file = sb.run.join("runsc.pid");
        // On `none` nothing is done between create and start: `run -detach` does both,
        // one runsc process instead of two (some 50 ms on ptrace). On `nat` the network
        // is wired in between.
        let one_step = image.is_none() && !sb.runsc.nat;
        let verb: Vec<String> = match image {
            None if one_step => vec![
                "run".into(),
                "-detach".into(),
                format!("--pid-file={}", pid_file.display()),
            ],
            None => vec![
                "create".into(),
                format!("--pid-file={}", pid_file.display()),
            ],
            Some(i) => vec![
                "restore".into(),
                format!("--image-path={}", i.display()),
                format!("--pid-file={}", pid_file.display()),
                "-detach".into(),
            ],
        };
        // A restore reads the saved memory unthrottled, as a resume does.
        let limits = host_limits(&spec.resources);
        place_cgroup(&sb.cgroup, &limits, image.is_some())?;
        let launch = OciLaunch {
            volumes: recorded_volumes(&sb.run)?,
            mounts: recorded_mounts(&sb.run)?,
            read_only: read_only_sources(bundle, template, agent),
            bundle: bundle.to_path_buf(),
            lower: template.lower.clone(),
            rw: data.to_path_buf(),
            disk: spec.resources.disk,
            new_netns: sb.runsc.nat,
            keeper: None,
            // On `nat` only (refused on `none`); forwarded by the sandbox's reaper.
            publish: spec.publish.clone(),
            cgroup: sb.cgroup.self_join_files(),
            memory: limits.memory,
            root_tmp: true,
            argv: std::iter::once(runsc.bin.display().to_string())
                .chain(runsc.flags())
                .chain(verb)
                .chain([format!("--bundle={}", bundle.display()), container(&sb.id)])
                .collect(),
        };
        let exe = self.exe.clone();
        let log = sb.run.join("runsc.log");
        tokio::task::spawn_blocking(move || run_oci(&exe, &launch, &log, "runsc"))
            .await
            .map_err(|e| Error::Setup(format!("runsc create: {e}")))??;
        if image.is_some() {
            limit_cpu(&sb.cgroup, limits.cpu_millis)?;
        }
        crate::trace::mark("gvisor: runsc create");
        let created_pid = || sandbox_pid(runsc, &sb.id, &pid_file);
        if sb.runsc.nat {
            // The container's processes are in the namespace `__oci` made: wire it.
            let pid = created_pid();
            if pid <= 0 {
                return Err(Error::Setup("runsc create left no sandbox process".into()));
            }
            let (run_dir, id) = (self.paths.run.clone(), sb.id.clone());
            let lease = tokio::task::spawn_blocking(move || {
                // The link's alias names the Sentry, which lives exactly as long as
                // the sandbox (a `nat` sandbox pauses in place, never restored anew).
                crate::network::setup_nat(
                    &run_dir,
                    &id,
                    nix::unistd::Pid::from_raw(pid),
                    pid.unsigned_abs(),
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
                r.signal(&container(&id), nix::sys::signal::Signal::SIGUSR2)
            } else if one_step {
                Ok(())
            } else {
                r.run(&["start", &container(&id)]).map(drop)
            }
        })
        .await
        .map_err(|e| Error::Setup(format!("runsc start: {e}")))??;
        crate::trace::mark("gvisor: runsc start");
        let pid = created_pid();
        crate::trace::mark("gvisor: the sandbox's pid");
        sb.pid.store(pid, Ordering::Relaxed);
        std::fs::write(sb.run.join("helper.pid"), pid.to_string())
            .map_err(crate::io_err("write the sandbox's pid"))?;
        // The agent binds its socket once it runs: wait for it to answer.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            match crate::client::AgentClient::connect(&sb.socket).await {
                Ok(_) => {
                    crate::trace::mark("gvisor: the agent answers");
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Setup(format!(
                        "the agent did not answer in 30 s: {e}"
                    )))
                }
                Err(_) => {
                    // It answers 10-20 ms after runsc returns: asked every millisecond
                    // then (a refused connect costs microseconds), every 5 after the
                    // first half second.
                    let every = match started.elapsed() < Duration::from_millis(500) {
                        true => 1,
                        false => 5,
                    };
                    tokio::time::sleep(Duration::from_millis(every)).await
                }
            }
        }
    }
}

/// Kills `pid`, a runsc process (the Sentry, the gofer) of the sandbox whose run
/// directory is `run`, with SIGKILL and waits (up to 2 s) for it to be gone: true if it
/// did. Only a process whose command line names that sandbox's bundle is signalled,
/// never another that took its pid.
fn kill_runsc_process(pid: i32, run: &Path) -> bool {
    kill_runsc_processes(&[pid], run)
}

/// [`kill_runsc_process`] for several at once: all are signalled before the wait, so
/// they die side by side. True if every one of them was ours, and is gone.
fn kill_runsc_processes(pids: &[i32], run: &Path) -> bool {
    let signalled: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&pid| signal_runsc_process(pid, run))
        .collect();
    let gone = crate::wait_for(Duration::from_secs(2), || {
        !signalled
            .iter()
            .any(|&pid| crate::namespace::pid_alive(pid))
    });
    gone && signalled.len() == pids.len()
}

/// Takes runsc's lock of a container (`flock` on its lock file), waiting up to a second
/// for a runsc command that holds it.
fn hold_runsc_lock(mut file: std::fs::File) -> Option<Flock<std::fs::File>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Some(held),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

/// A pid as runsc's state file holds it.
fn state_pid(v: &serde_json::Value) -> Option<i32> {
    v.as_i64().and_then(|p| i32::try_from(p).ok())
}

/// Sends SIGKILL to `pid` if it is a runsc process of the sandbox whose run directory
/// is `run` (see [`runsc_process_running`]); true if it was sent.
fn signal_runsc_process(pid: i32, run: &Path) -> bool {
    runsc_process_running(pid, run)
        && nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
}

/// Whether `pid` runs and is a runsc process of the sandbox whose run directory is
/// `run` (its command line names that bundle): a pid reused by anything else is not.
fn runsc_process_running(pid: i32, run: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let bundle = format!("--bundle={}", run.join("bundle").display());
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == bundle.as_bytes()));
    ours && crate::namespace::pid_alive(pid)
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
pub(crate) fn host_tasks(pids: Option<u32>) -> u64 {
    BASE_HOST_TASKS + HOST_TASKS_PER_TASK * pids.map_or(DEFAULT_TASKS, u64::from)
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

/// The sandbox process's pid as `create` or `restore` wrote it to `pid_file` (what
/// `runsc state` would say, one runsc less), else as `runsc state` says it.
fn sandbox_pid(runsc: &Runsc, id: &str, pid_file: &Path) -> i32 {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .filter(|p: &i32| *p > 0)
        .or_else(|| runsc.state(id).map(|(_, pid)| pid))
        .unwrap_or_default()
}

/// The checkpoint image of a sandbox paused to disk, in its data directory (the run
/// directory is often a tmpfs, where the image would hold as much memory as the
/// processes it saved); complete once `done` is written.
fn image_dir(data: &Path) -> PathBuf {
    data.join("image")
}

fn image_done(data: &Path) -> bool {
    image_dir(data).join("done").exists()
}

/// The host cgroup limits of a gVisor sandbox's resources: the request's, with the host
/// task cap ([`host_tasks`]) for its pids. What its cgroup is made with at its start, and
/// what its bundle records for a resume ([`bundle_limits`]).
pub(crate) fn host_limits(r: &warren_types::spec::Resources) -> Limits {
    Limits {
        pids: Some(u32::try_from(host_tasks(r.pids)).unwrap_or(u32::MAX)),
        ..crate::cgroup_limits(r)
    }
}

/// The limits a sandbox's bundle records (`linux.resources`, as [`bundle_config`]
/// writes them, [`host_limits`] of its request): what its cgroup is made with at a
/// resume, when no request is at hand.
fn bundle_limits(bundle: &Path) -> Result<Limits> {
    let text = std::fs::read(bundle.join("config.json"))
        .map_err(crate::io_err("read the sandbox's bundle"))?;
    let config: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Setup(format!("the sandbox's bundle is not JSON: {e}")))?;
    let r = &config["linux"]["resources"];
    let cpu = (r["cpu"]["quota"].as_u64(), r["cpu"]["period"].as_u64());
    Ok(Limits {
        memory: r["memory"]["limit"].as_u64(),
        cpu_millis: match cpu {
            (Some(q), Some(p)) if q > 0 && p > 0 => u32::try_from(q * 1000 / p).ok(),
            _ => None,
        },
        pids: r["pids"]["limit"]
            .as_u64()
            .map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
    })
}

/// Makes the sandbox's cgroup with `limits` (one left by an earlier start, empty, goes
/// first), where `warren __oci` starts runsc: runsc, told to leave cgroups alone, and
/// every process it starts (the gofer, the Sentry) are in it from their first
/// instruction. `restoring` leaves the CPU limit off: the Sentry reads (and decompresses)
/// the saved memory before any process of the sandbox runs, and a limit of one core made
/// that twice as slow on two; [`limit_cpu`] sets it once the restore is done.
fn place_cgroup(cgroup: &Cgroup, limits: &Limits, restoring: bool) -> Result<()> {
    if cgroup.exists() {
        let _ = cgroup.remove();
    }
    let limits = Limits {
        cpu_millis: limits.cpu_millis.filter(|_| !restoring),
        ..*limits
    };
    cgroup
        .create(&limits)
        .map_err(|e| Error::Setup(format!("make the sandbox's cgroup: {e}")))
}

/// Sets the CPU limit [`place_cgroup`] left off for a restore.
fn limit_cpu(cgroup: &Cgroup, cpu_millis: Option<u32>) -> Result<()> {
    match cpu_millis {
        Some(_) => cgroup
            .set_cpu(cpu_millis)
            .map_err(|e| Error::Setup(format!("set the sandbox's CPU limit: {e}"))),
        None => Ok(()),
    }
}

impl GvisorSandbox {
    /// Its data directory: its writable layer (or disk image) and, paused to disk, its
    /// checkpoint image.
    fn data(&self) -> PathBuf {
        self.restore.paths.sandbox_data(&self.id)
    }

    /// Writes the container's memory to `image` with the agent's host socket closed, and
    /// stops the container.
    fn checkpoint_into(&self, image: &Path) -> Result<()> {
        self.settle();
        let c = container(&self.id);
        std::fs::create_dir_all(image).map_err(crate::io_err("make the checkpoint directory"))?;
        // Which files the agent runs from, for the restore to run it from the same (a
        // sandbox made before records were kept has none).
        match std::fs::copy(self.run.join("agent"), image.join("agent")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(crate::io_err("record the agent's files in the image")(e));
            }
            _ => {}
        }
        // An open host socket cannot be saved: the agent closes its listener and every
        // connection (SIGUSR1) and keeps its processes.
        self.runsc.signal(&c, nix::sys::signal::Signal::SIGUSR1)?;
        crate::trace::mark("gvisor checkpoint: agent told to close");
        // The agent removes its socket's path once it holds none (never probed with a
        // connect: one queued behind a listener that stopped accepting would block).
        if !crate::wait_for(Duration::from_secs(5), || {
            self.socket.symlink_metadata().is_err()
        }) {
            let _ = self.runsc.signal(&c, nix::sys::signal::Signal::SIGUSR2);
            return Err(Error::Setup("the agent did not close its socket".into()));
        }
        crate::trace::mark("gvisor checkpoint: agent socket closed");
        let image_flag = format!("--image-path={}", image.display());
        // Committed pages that hold only zeros are left out of the image (restored as
        // zeros): gVisor commits anonymous memory in large runs, so a process's stack
        // and heap carry mostly untouched pages (the agent's stack alone, 1.1 MiB
        // committed where 24 KiB are used on the host), each compressed and written
        // otherwise.
        let mut args = vec![
            "checkpoint",
            image_flag.as_str(),
            "--exclude-committed-zero-pages",
        ];
        args.extend(self.runsc.compression.flag(&self.runsc.bin));
        args.push(&c);
        // The Sentry saves (and compresses) the memory itself, in the sandbox's cgroup,
        // with every process of the sandbox stopped: its CPU limit would only slow the
        // save (one core of two doubled it). Lifted for the save, set again if the
        // sandbox goes on.
        let cpu = self.cgroup.cpu();
        if cpu.is_some() {
            let _ = self.cgroup.set_cpu(None);
        }
        let r = self.runsc.run(&args);
        if cpu.is_some() && r.is_err() {
            self.cgroup
                .set_cpu(cpu)
                .map_err(|e| Error::Setup(format!("set the sandbox's CPU limit again: {e}")))?;
        }
        if r.is_err() {
            // Still running (a checkpoint that failed leaves it be): listen again.
            let _ = self.runsc.signal(&c, nix::sys::signal::Signal::SIGUSR2);
            self.wait_listening()?;
        }
        r.map(drop)
    }

    fn wait_listening(&self) -> Result<()> {
        match crate::wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        }) {
            true => Ok(()),
            false => Err(Error::Setup(
                "the agent did not listen again in 10 s".into(),
            )),
        }
    }

    /// Agent, close the host socket; checkpoint; remove the stopped container.
    fn checkpoint_to_disk(&self) -> Result<()> {
        let c = container(&self.id);
        let image = image_dir(&self.data());
        let _ = crate::tree::remove(&image);
        crate::trace::mark("gvisor pause: begin");
        if let Err(e) = self.checkpoint_into(&image) {
            let _ = crate::tree::remove(&image);
            return Err(e);
        }
        crate::trace::mark("gvisor pause: runsc checkpoint");
        std::fs::write(image.join("done"), b"")
            .map_err(crate::io_err("mark the checkpoint complete"))?;
        // Saved: the pause is done. What is left (deleting the stopped container, which
        // waits for its Sentry to free the memory it held, 0.3 s for 1 GB; the runtime's
        // cgroups; the gofer letting go of the disk) runs off the request's path, and
        // whatever touches the container or its files next waits for it first.
        self.pid.store(0, Ordering::Relaxed);
        let (runsc, run, cgroup) = (self.runsc.clone(), self.run.clone(), self.cgroup.clone());
        let settling = std::thread::spawn(move || {
            // Its image complete, the Sentry is only freeing what it held: the delete
            // kills it with its gofer, both gone at once, and removes runsc's files of
            // them (runsc's own delete looks again every 100 ms, which a resume right
            // after waited for).
            runsc.delete(&c, &run);
            crate::trace::mark("gvisor pause: Sentry and gofer killed, container deleted");
            let _ = cgroup.remove();
            remove_runtime_cgroups(&c);
            crate::bundle::wait_mounts_released(&run);
            crate::trace::mark("gvisor pause: mounts released");
        });
        *self.settling.lock().unwrap_or_else(|e| e.into_inner()) = Some(settling);
        Ok(())
    }

    /// Waits for the end of a pause to disk still running, if one is.
    fn settle(&self) {
        let pending = self
            .settling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(settling) = pending {
            let _ = settling.join();
        }
    }

    /// Restores the container from its image, in a fresh mount of its root, and has the
    /// agent listen again.
    fn restore_from_disk(&self) -> Result<()> {
        self.settle();
        crate::trace::mark("gvisor resume: begin");
        let c = container(&self.id);
        let image = image_dir(&self.data());
        let bundle = self.run.join("bundle");
        let pid_file = self.run.join("runsc.pid");
        let _ = std::fs::remove_file(&pid_file);
        let key = std::fs::read_to_string(self.run.join("template"))
            .map_err(crate::io_err("read the sandbox's template"))?;
        let template = template::resolve(&self.restore.paths, key.trim())?;
        let limits = bundle_limits(&bundle)?;
        let launch = OciLaunch {
            volumes: recorded_volumes(&self.run)?,
            mounts: recorded_mounts(&self.run)?,
            read_only: read_only_sources(
                &bundle,
                &template,
                &AgentFiles::for_restore(
                    &self.restore.paths,
                    &self.restore.exe,
                    &image.join("agent"),
                )?,
            ),
            bundle: bundle.clone(),
            lower: template.lower.clone(),
            rw: self.restore.paths.sandbox_data(&self.id),
            // The image made when it was created, whatever its size.
            disk: recorded_disk(&self.restore.paths.sandbox_data(&self.id)),
            new_netns: false,
            keeper: None,
            // Only a sandbox on `none` is saved to disk: it publishes nothing.
            publish: Vec::new(),
            cgroup: self.cgroup.self_join_files(),
            memory: limits.memory,
            root_tmp: true,
            argv: std::iter::once(self.runsc.bin.display().to_string())
                .chain(self.runsc.flags())
                .chain([
                    "restore".to_string(),
                    format!("--image-path={}", image.display()),
                    format!("--pid-file={}", pid_file.display()),
                    format!("--bundle={}", bundle.display()),
                    "-detach".to_string(),
                    c.clone(),
                ])
                .collect(),
        };
        // Nothing of an earlier attempt may stand in the way, and nothing of a failed one
        // may stay: a damaged image is refused whole, the sandbox stays paused. After a
        // pause in this daemon runsc knows nothing of the container any more (its end
        // deleted it, settled above), and asking it costs a runsc process (15-45 ms).
        if self.runsc.may_know(&c) {
            self.runsc.delete(&c, &self.run);
            crate::trace::mark("gvisor resume: stale container deleted");
        }
        // The pause's end ran in this daemon (settled above); after a restart nothing
        // waited for it: no mount of the disk may stand while the restore mounts it.
        crate::bundle::wait_mounts_released(&self.run);
        place_cgroup(&self.cgroup, &limits, true)?;
        crate::trace::mark("gvisor resume: mounts released, cgroup made");
        let restored = run_oci(
            &self.restore.exe,
            &launch,
            &self.run.join("runsc.log"),
            "runsc",
        );
        crate::trace::mark("gvisor resume: runsc restore exited");
        if let Err(e) = restored.and_then(|()| limit_cpu(&self.cgroup, limits.cpu_millis)) {
            self.runsc.delete(&c, &self.run);
            let _ = self.cgroup.kill_all(Duration::from_secs(5));
            let _ = self.cgroup.remove();
            remove_runtime_cgroups(&c);
            return Err(Error::Setup(format!(
                "the sandbox's saved memory could not be restored ({e}); it stays paused, \
                 and removing it is safe"
            )));
        }
        let pid = sandbox_pid(&self.runsc, &self.id, &pid_file);
        self.pid.store(pid, Ordering::Relaxed);
        let _ = std::fs::write(self.run.join("helper.pid"), pid.to_string());
        crate::trace::mark("gvisor resume: runsc restore");
        self.runsc.signal(&c, nix::sys::signal::Signal::SIGUSR2)?;
        self.wait_listening()?;
        crate::trace::mark("gvisor resume: the agent listens");
        // The image is no longer the sandbox's state: out of the way at once (a pause
        // that follows writes a new one there), its files removed off the request's
        // path (a 1 GB image takes a while to unlink).
        let aside = crate::new_id().map(|id| image.with_file_name(format!(".image-gone-{id}")));
        match aside.map(|a| std::fs::rename(&image, &a).map(|()| a)) {
            Ok(Ok(aside)) => {
                std::thread::spawn(move || crate::tree::remove(&aside));
            }
            _ => {
                let _ = crate::tree::remove(&image);
            }
        }
        crate::trace::mark("gvisor resume: image set aside");
        Ok(())
    }

    /// Kills the sandbox's Sentry with SIGKILL and waits (up to 2 s) for it to be gone:
    /// true if it did. Only a process whose command line names this sandbox's bundle is
    /// signalled, never another that took its pid.
    fn kill_sentry(&self) -> bool {
        kill_runsc_process(self.pid.load(Ordering::Relaxed), &self.run)
    }

    /// Stops and deletes the container, removes its cgroup and run directory (and its
    /// writable layer when ephemeral). Blocking.
    fn teardown(&mut self) {
        self.stop_processes();
        self.finish_teardown();
    }

    /// The first half of [`teardown`](Self::teardown): every process of the sandbox
    /// stopped. True when they are known to be gone: its Sentry, which holds them all,
    /// was killed and has exited.
    fn stop_processes(&mut self) -> bool {
        self.settle();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        crate::trace::mark("gvisor teardown: begin");
        // Killed first: `delete --force` alone waits on a running sandbox for some 100 ms
        // more. Its Sentry, when it is still the one this sandbox started, is killed
        // directly (some 5 ms; `runsc kill` is a runsc process of 20); otherwise runsc
        // does it. A container that is not there fails both, which is no error here.
        // The gofer is signalled first and left to die beside the Sentry: the delete
        // after the answer then finds it gone.
        if let Some(gofer) = self.runsc.gofer_pid(&container(&self.id)) {
            signal_runsc_process(gofer, &self.run);
        }
        let gone = self.kill_sentry();
        if !gone {
            let _ = self.runsc.run(&["kill", &container(&self.id), "KILL"]);
        }
        crate::trace::mark("gvisor teardown: runsc kill");
        gone
    }

    /// The rest of [`teardown`](Self::teardown), once the processes are stopped.
    fn finish_teardown(&mut self) {
        let c = container(&self.id);
        self.runsc.delete(&c, &self.run);
        crate::trace::mark("gvisor teardown: runsc delete");
        if self.cgroup.exists() {
            let _ = self.cgroup.kill_all(Duration::from_secs(5));
            let _ = self.cgroup.remove();
        }
        remove_runtime_cgroups(&c);
        crate::trace::mark("gvisor teardown: cgroups");
        // Nothing of it outlives its removal: the reaper holding its mounts ends last.
        crate::bundle::wait_mounts_released(&self.run);
        crate::trace::mark("gvisor teardown: mounts released");
        // Its link went with its namespace; the lease is this daemon's to return.
        if let Ok(lease) = std::fs::read(self.run.join("lease")) {
            crate::network::remove_link(&crate::network::link_name(&self.id));
            use std::os::unix::ffi::OsStrExt;
            let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(&lease));
        }
        let _ = crate::tree::remove(&self.run);
        // The processes it saved are gone with it: a stopped sandbox starts afresh.
        let _ = crate::tree::remove(&image_dir(&self.data()));
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
                limits: ["memory", "cpu", "pids", "disk"].map(String::from).to_vec(),
                volumes: true,
                host_mounts: true,
                // On `none` its network is gVisor's own, which the host cannot reach.
                publish: vec![NetworkMode::Nat],
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
        let runsc = self.runsc().ok()?;
        let run = self.paths.sandbox_run(id);
        // Paused to disk: no container, an image.
        let (status, pid) = match runsc.state(id) {
            Some(s) => s,
            None if image_done(&self.paths.sandbox_data(id)) => ("saved".into(), 0),
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
            settling: Default::default(),
            teardowns: self.teardowns.clone(),
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
            settling: Default::default(),
            teardowns: self.teardowns.clone(),
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

    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.teardowns.settle())
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
        if image_done(&self.data()) {
            self.restore_from_disk()
        } else {
            // Paused in place by an earlier daemon (`runsc pause`).
            self.runsc.run(&["resume", &container(&self.id)]).map(drop)
        }
    }

    /// Pauses it to disk (unless it is), so that the image and the files are of one
    /// moment, copies both, and resumes it if it was running.
    fn save_memory(&self, into: &Path) -> Result<()> {
        if self.runsc.nat {
            return Err(no_snapshots_on_nat());
        }
        let was_running = !image_done(&self.data());
        if was_running {
            self.checkpoint_to_disk()?;
        }
        // Nothing may still hold the disk it copies.
        self.settle();
        let data = self.restore.paths.sandbox_data(&self.id);
        let copied = std::fs::create_dir_all(into)
            .map_err(crate::io_err("make the memory directory"))
            .and_then(|()| copy_layer(&image_dir(&data), &into.join("image")))
            .and_then(|()| match recorded_disk(&data) {
                // Nothing mounts the disk while the sandbox is paused to disk.
                Some(_) => template::copy_upper(
                    &template::UpperSource::Image(data.join("disk.img")),
                    &into.join("upper"),
                ),
                None => copy_layer(&data.join("upper"), &into.join("upper")),
            });
        if was_running {
            self.restore_from_disk()?;
        }
        copied
    }

    fn is_paused(&self) -> bool {
        image_done(&self.data())
            || self
                .runsc
                .state(&self.id)
                .is_some_and(|(s, _)| s == "paused")
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

    fn fatal_task_limit_hits(&self) -> u64 {
        self.cgroup.task_limit_hits()
    }

    fn is_alive(&mut self) -> bool {
        image_done(&self.data()) || crate::namespace::pid_alive(self.pid.load(Ordering::Relaxed))
    }

    fn monitor_pid(&self) -> Option<i32> {
        // Paused to disk, nothing mounts its files once the pause's end has run.
        if image_done(&self.data()) {
            self.settle();
            return None;
        }
        crate::bundle::mounts_holder(&self.run)
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

    /// Answers once the Sentry, and with it every process of the sandbox, is gone; the
    /// rest (`runsc delete`, some 15 ms, the cgroups, the gofer letting go of the mounts,
    /// the run directory) finishes after, and [`Backend::settle`] waits for it. A sandbox
    /// on `nat` is torn down whole first: its published ports are free only once its
    /// reaper has exited. So is one whose Sentry could not be killed directly. Either
    /// way its disk is held open until then and let go of without flushes (see
    /// `bundle::EndingDisk`).
    fn end(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let disk = crate::bundle::EndingDisk::open(&self.run, &self.data());
            if self.runsc.nat {
                let r = self.destroy().await;
                crate::bundle::EndingDisk::let_go_later(disk);
                return r;
            }
            let held = self.teardowns.hold().await;
            let (mut sb, gone) = tokio::task::spawn_blocking(move || {
                let gone = self.stop_processes();
                if gone {
                    // Nothing runs from its template any more: the template may go.
                    let _ = std::fs::remove_file(self.run.join("template"));
                    // Its files are removed before the answer, as the caller removes
                    // them too, never by two at once.
                    if let Some(dir) = self.ephemeral.take() {
                        let _ = crate::tree::remove(&dir);
                    }
                }
                (self, gone)
            })
            .await
            .map_err(|e| Error::Setup(format!("tear down: {e}")))?;
            let rest = tokio::task::spawn_blocking(move || {
                let through = disk.and_then(crate::bundle::EndingDisk::let_go);
                sb.finish_teardown();
                drop(through);
                drop(held);
            });
            if !gone {
                rest.await
                    .map_err(|e| Error::Setup(format!("tear down: {e}")))?;
            }
            Ok(())
        })
    }
}

// The slot range of namespace sandboxes starts far above the common range gVisor maps.
const _: () = assert!(HOST_ID_BASE + ID_COUNT <= FIRST_SLOT_BASE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_images_are_uncompressed_unless_configured_and_runsc_takes_the_flag() {
        let parse = |v: serde_json::Value| serde_json::from_value::<GvisorConfig>(v);
        let default = parse(serde_json::json!({})).unwrap();
        assert_eq!(default.image_compression, ImageCompression::None);
        let flate = parse(serde_json::json!({"image_compression": "flate"})).unwrap();
        assert_eq!(flate.image_compression, ImageCompression::Flate);
        assert!(parse(serde_json::json!({"image_compression": "zstd"})).is_err());

        // A runsc whose `help checkpoint` lists the flag is given it; one that does not
        // is given none (it writes its default), and is asked once.
        let dir = tempfile::tempdir().unwrap();
        let fake = |name: &str, help: &str| {
            let bin = dir.path().join(name);
            let script = format!(
                "#!/bin/sh\n[ \"$1\" = ready ] && exit 0\necho asked >> {}.asked\n\
                 printf '%s\\n' '{help}'\n",
                bin.display()
            );
            std::fs::write(&bin, script).unwrap();
            std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            // A file just written may be held open for writing by a child another test
            // forked meanwhile (ETXTBSY) until that child's exec: run once it can be.
            for _ in 0..100 {
                match std::process::Command::new(&bin).arg("ready").status() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    r => {
                        assert!(r.unwrap().success());
                        break;
                    }
                }
            }
            bin
        };
        let new = fake("new", "  -compression value");
        let old = fake("old", "  -image-path string");
        for (wanted, flag) in [
            (ImageCompression::None, "--compression=none"),
            (ImageCompression::Flate, "--compression=flate-best-speed"),
        ] {
            let c = Compression {
                wanted,
                supported: Default::default(),
            };
            assert_eq!(c.flag(&new), Some(flag));
            let c = Compression {
                wanted,
                supported: Default::default(),
            };
            assert_eq!(c.flag(&old), None);
            assert_eq!(c.flag(&old), None);
        }
        let asked = |bin: &Path| {
            std::fs::read_to_string(format!("{}.asked", bin.display()))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(
            (asked(&new), asked(&old)),
            (2, 2),
            "once per daemon's runsc"
        );
    }

    #[test]
    fn a_resume_reads_back_the_limits_its_start_made_the_cgroup_with() {
        let dir = tempfile::tempdir().unwrap();
        let template = template::Template {
            name: "host".into(),
            lower: vec![],
            host_binds: vec![],
            env: Default::default(),
            meta: template::host_meta(),
        };
        for (memory, cpu_millis, pids) in [
            (Some(256 << 20), Some(500), Some(32)),
            (None, None, None),
            (Some(3 << 30), Some(1500), None),
        ] {
            let mut spec = SandboxSpec {
                id: "abc".into(),
                ..Default::default()
            };
            spec.resources.memory = memory;
            spec.resources.cpu_millis = cpu_millis;
            spec.resources.pids = pids;
            let config = bundle_config(
                &spec,
                &template,
                Path::new("/s"),
                dir.path(),
                BundleKind::Gvisor,
                &crate::bundle::AgentFiles::stand_in(None),
            )
            .unwrap();
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            let limits = host_limits(&spec.resources);
            assert_eq!(bundle_limits(dir.path()).unwrap(), limits);
            assert_eq!(limits.memory, memory);
            assert_eq!(limits.cpu_millis, cpu_millis);
            assert_eq!(limits.pids.map(u64::from), Some(host_tasks(pids)));
        }
    }

    fn runsc(root: PathBuf) -> Runsc {
        Runsc {
            bin: PathBuf::from("runsc"),
            root,
            platform: "ptrace".into(),
            debug_log: None,
            compression: Compression::default(),
            nat: false,
        }
    }

    /// A process whose command line names `run`'s bundle, as a Sentry's or gofer's does.
    fn fake_runsc_process(run: &Path) -> std::process::Child {
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "sh"])
            .arg(format!("--bundle={}", run.join("bundle").display()))
            .spawn()
            .unwrap();
        // Until its exec, the child's command line is still this test's.
        let pid = i32::try_from(child.id()).unwrap();
        while !runsc_process_running(pid, run) {
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }

    #[test]
    fn a_container_whose_processes_are_gone_is_forgotten_without_a_runsc_process() {
        let dir = tempfile::tempdir().unwrap();
        let (root, run) = (dir.path().join("root"), dir.path().join("run"));
        std::fs::create_dir_all(&root).unwrap();
        // A runsc that only says it ran.
        let ran = dir.path().join("ran");
        let bin = dir.path().join("runsc");
        std::fs::write(&bin, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = Runsc {
            bin,
            ..runsc(root.clone())
        };
        let c = container("0123456789abcdef");
        let save = |gofer: u32, sentry: u32| {
            let state = serde_json::json!({"goferPid": gofer, "sandbox": {"pid": sentry}});
            std::fs::write(
                root.join(format!("{c}_sandbox:{c}.state")),
                state.to_string(),
            )
            .unwrap();
            std::fs::write(root.join(format!("{c}_sandbox:{c}.lock")), "").unwrap();
            std::fs::write(control::socket_path(&root, &c), "").unwrap();
        };
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        exited.wait().unwrap();

        // Its Sentry gone, its gofer still running: the gofer is killed, the files go.
        let mut gofer = fake_runsc_process(&run);
        save(gofer.id(), exited.id());
        r.delete(&c, &run);
        assert!(gofer.try_wait().unwrap().is_some(), "the gofer was killed");
        assert!(!r.may_know(&c), "nothing in runsc's root names it");
        assert!(!ran.exists(), "no runsc process was needed");

        // Both still running: killed side by side, then the files go.
        let (mut gofer, mut sentry) = (fake_runsc_process(&run), fake_runsc_process(&run));
        save(gofer.id(), sentry.id());
        r.delete(&c, &run);
        assert!(gofer.try_wait().unwrap().is_some(), "the gofer was killed");
        assert!(
            sentry.try_wait().unwrap().is_some(),
            "the Sentry was killed"
        );
        assert!(!r.may_know(&c), "nothing in runsc's root names it");
        assert!(!ran.exists(), "no runsc process was needed");

        // A Sentry that is not this sandbox's (its pid taken by another process) is
        // never signalled.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        save(exited.id(), other.id());
        r.delete(&c, &run);
        assert!(
            other.try_wait().unwrap().is_none(),
            "another process was killed"
        );
        let _ = other.kill();
        let _ = other.wait();

        // A runsc command that holds the container's lock past the wait: runsc's turn.
        save(exited.id(), exited.id());
        let held = Flock::lock(
            std::fs::File::open(root.join(format!("{c}_sandbox:{c}.lock"))).unwrap(),
            FlockArg::LockExclusive,
        )
        .unwrap();
        r.delete(&c, &run);
        assert!(
            ran.exists(),
            "a held lock is waited for by runsc, not removed under it"
        );
        drop(held);

        // A state file that names no pids is not read as one whose processes are gone.
        std::fs::remove_file(&ran).unwrap();
        std::fs::write(root.join(format!("{c}_sandbox:{c}.state")), "{}").unwrap();
        r.delete(&c, &run);
        assert!(ran.exists(), "an unknown state is runsc's to delete");
    }

    #[test]
    fn runsc_is_asked_to_delete_only_a_container_its_root_names() {
        let dir = tempfile::tempdir().unwrap();
        let r = runsc(dir.path().to_path_buf());
        let c = container("0123456789abcdef");
        assert!(!r.may_know(&c), "an empty root knows no container");
        std::fs::write(
            dir.path().join("warren-other_sandbox:warren-other.state"),
            "",
        )
        .unwrap();
        assert!(
            !r.may_know(&c),
            "another container's state is not this one's"
        );
        std::fs::write(dir.path().join(format!("{c}_sandbox:{c}.lock")), "").unwrap();
        assert!(
            r.may_know(&c),
            "a lock file naming it is state runsc may hold"
        );
        assert!(
            !runsc(dir.path().join("missing")).may_know(&c),
            "a root never made holds nothing"
        );
    }
}
