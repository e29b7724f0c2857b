//! OCI bundles and the OCI runtime's command line, shared by the backends that run a
//! sandbox through one: gVisor (`runsc`) and the runc-compatible runtimes (`runc`,
//! `crun`).
//!
//! A sandbox's bundle lives in its run directory: `config.json`, the root's mount point,
//! and the mount points of what the config binds (read-only host directories, the
//! agent's binary, volumes). `warren __oci` ([`oci_main`]) mounts all of them in a
//! private mount namespace, so nothing of a sandbox is mounted on the host, and runs the
//! runtime's `create` there.
//!
//! Published ports are listened on first, in the daemon's network namespace, and kept
//! by the process that then lives exactly as long as the sandbox (the keeper of a runc
//! or crun sandbox, the reaper of a gVisor one), whose threads forward each connection
//! into the sandbox's network namespace: they survive a daemon restart and close with
//! the sandbox.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::json;
use warren_types::api::Isolation;
use warren_types::spec::{HostMount, NetworkMode, PortMap, SandboxSpec};

use crate::ids::IdSlot;
use crate::launch::AgentLaunch;
use crate::{template, Backend, Error, Paths, Result, HOST_ID_BASE, ID_COUNT, PREFIX};

/// Where the agent's socket directory is inside the sandbox.
pub(crate) const SOCKET_DIR: &str = "/.warren/run";
/// Where the warren binary is inside the sandbox.
pub(crate) const AGENT_BIN: &str = "/.warren/warren";
/// Where the agent's dynamic loader and libraries are inside the sandbox.
pub(crate) const AGENT_LIB: &str = "/.warren/lib";
/// The argument that makes the binary `warren __oci` ([`oci_main`]): an OCI sandbox's
/// keeper, which holds its namespaces and reaps its runtime.
pub const OCI_ARG: &str = "__oci";
/// Soft limit on open files inside: where a process without close_range (gVisor has
/// none) stops scanning descriptors before an exec.
pub(crate) const NOFILE_SOFT: u64 = 1024;
pub(crate) const NOFILE_HARD: u64 = 8192;

/// Which kind of runtime a bundle is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BundleKind {
    /// runsc: its own kernel maps ids and makes the network.
    Gvisor,
    /// runc, crun: the host kernel, so a user namespace of the sandbox's own (its id
    /// slot), and every other namespace the namespace backend gives a sandbox.
    HostKernel,
}

/// An OCI runtime's command line: its binary and the global flags every command of one
/// daemon's sandboxes takes (`--root` among them).
#[derive(Debug, Clone)]
pub(crate) struct OciCli {
    /// How errors name it.
    pub(crate) name: &'static str,
    pub(crate) bin: PathBuf,
    pub(crate) flags: Vec<String>,
}

impl OciCli {
    pub(crate) fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.args(&self.flags).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `RUNTIME ARGS` to completion; its error output on failure.
    pub(crate) fn run(&self, args: &[&str]) -> Result<String> {
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
                "{} {}: {}",
                self.name,
                args.first().unwrap_or(&""),
                last.chars().take(400).collect::<String>()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `RUNTIME state ID` of sandbox `id`: its status (`created`, `running`, `paused`,
    /// `stopped`) and its first process's pid.
    pub(crate) fn state(&self, id: &str) -> Option<(String, i32)> {
        let out = self.run(&["state", &container(id)]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        Some((
            v["status"].as_str()?.to_string(),
            v["pid"].as_i64().unwrap_or(0) as i32,
        ))
    }
}

/// What the agent of an OCI sandbox runs from, kept in `DATA/agent/KEY`: the warren
/// binary (`warren`: a hard link to the running binary where the data directory is on
/// its filesystem, a copy elsewhere) and, for a dynamically linked binary, the host's
/// dynamic loader and the libraries the binary was linked with (`lib/`, copies; the
/// loader's name in `loader`).
///
/// The agent is started through that loader with those libraries, so it needs nothing of
/// the template's root: not its C library (musl, a glibc older than the binary's), not
/// even one at all (a static image). KEY names the files (device, inode, size and time of
/// each), so a new binary or new libraries get a new directory, and the one a checkpoint
/// image was made with stays for its restore ([`AgentFiles::for_restore`]): an agent
/// restored from memory maps the very files it mapped when it was saved, after an
/// upgrade as before it.
#[derive(Debug, Clone)]
pub(crate) struct AgentFiles {
    key: String,
    dir: PathBuf,
    /// The loader's file name in `lib/`; `None` for a static binary.
    loader: Option<String>,
}

/// The agent's files by name: `(name in the directory, the host file)`, the loader first.
type Linked = (Option<String>, Vec<(std::ffi::OsString, PathBuf)>);

impl AgentFiles {
    /// The files of the running binary, kept under `paths.data` (made there on first use).
    pub(crate) fn current(paths: &Paths, exe: &Path) -> Result<Self> {
        let (key, (loader, libs)) = current_key(exe)?;
        let dir = agent_root(paths).join(&key);
        if !dir.join("warren").exists() {
            make_agent_dir(&agent_root(paths), &key, exe, loader.as_deref(), &libs)?;
        }
        Ok(Self { key, dir, loader })
    }

    /// The files a checkpoint image's agent ran from, as `record` (a file of the image)
    /// names them, while they are kept; else the running binary's ([`Self::current`]): an
    /// image made before records were kept.
    pub(crate) fn for_restore(paths: &Paths, exe: &Path, record: &Path) -> Result<Self> {
        let recorded = std::fs::read_to_string(record).ok().and_then(|key| {
            let key = key.trim();
            let valid = !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit());
            let dir = agent_root(paths).join(key);
            (valid && dir.join("warren").exists()).then(|| Self {
                key: key.to_string(),
                loader: std::fs::read_to_string(dir.join("loader"))
                    .ok()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
                dir,
            })
        });
        match recorded {
            Some(a) => Ok(a),
            None => Self::current(paths, exe),
        }
    }

    /// Writes which files these are at `record`, for a restore to find them again.
    pub(crate) fn record(&self, record: &Path) -> Result<()> {
        std::fs::write(record, &self.key).map_err(crate::io_err("record the agent's files"))
    }

    /// Files at `/a/k` named `k`, with `loader`, for tests of what a bundle says.
    #[cfg(test)]
    pub(crate) fn stand_in(loader: Option<&str>) -> Self {
        Self {
            key: "k".into(),
            dir: "/a/k".into(),
            loader: loader.map(str::to_string),
        }
    }

    fn exe(&self) -> PathBuf {
        self.dir.join("warren")
    }

    fn libs(&self) -> Option<PathBuf> {
        self.loader.as_ref().map(|_| self.dir.join("lib"))
    }

    /// The agent's command line, `launch` its configuration.
    fn argv(&self, launch: String) -> Vec<String> {
        let mut argv = match &self.loader {
            // `--inhibit-cache`: the root's /etc/ld.so.cache names the root's libraries.
            Some(loader) => vec![
                format!("{AGENT_LIB}/{loader}"),
                "--inhibit-cache".into(),
                "--library-path".into(),
                AGENT_LIB.into(),
            ],
            None => Vec::new(),
        };
        argv.extend([AGENT_BIN.into(), "__agent".into(), launch]);
        argv
    }
}

/// Where every version's agent files are kept.
fn agent_root(paths: &Paths) -> PathBuf {
    paths.data.join("agent")
}

/// The running binary's key and files: the loader (by its name in the binary's
/// `PT_INTERP`) and each library (by the name the binary asks for it by), as the loader
/// reports them; no loader and no library for a static binary.
fn current_key(exe: &Path) -> Result<(String, Linked)> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    // Found once: the loader's report and where its names lead do not change while this
    // process runs (a library replaced on the host is a new file under the same name,
    // which the key below tells apart).
    static LINKED: std::sync::OnceLock<std::result::Result<Linked, String>> =
        std::sync::OnceLock::new();
    let (loader, files) = LINKED
        .get_or_init(|| {
            let linked = warren_sys::linked::linked();
            let loader = match &linked.interpreter {
                None => None,
                Some(i) => Some(
                    i.file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| {
                            format!(
                                "the binary's loader {} has no usable file name",
                                i.display()
                            )
                        })?
                        .to_string(),
                ),
            };
            let mut files: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
            for path in linked.interpreter.iter().chain(&linked.libraries) {
                let Some(name) = path.file_name() else {
                    continue;
                };
                if !files.iter().any(|(n, _)| n == name) {
                    let real = std::fs::canonicalize(path)
                        .map_err(|e| format!("find {}: {e}", path.display()))?;
                    files.push((name.to_owned(), real));
                }
            }
            Ok((loader, files))
        })
        .clone()
        .map_err(Error::Setup)?;
    // Named once per binary too: a create then costs one look at the directory. The
    // daemon keeps running its agents from the files it found first, the ones it runs
    // itself, even once a new binary is installed beside it.
    static KEYS: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, key)) = keys.iter().find(|(e, _)| e == exe) {
        return Ok((key.clone(), (loader, files)));
    }
    let mut key = Sha256::new();
    for (name, path) in std::iter::once((std::ffi::OsStr::new("warren"), exe))
        .chain(files.iter().map(|(n, p)| (n.as_os_str(), p.as_path())))
    {
        let m =
            std::fs::metadata(path).map_err(crate::io_err(format!("read {}", path.display())))?;
        key.update(name.as_bytes());
        for v in [m.dev(), m.ino(), m.size()] {
            key.update(v.to_le_bytes());
        }
        for v in [m.mtime(), m.mtime_nsec()] {
            key.update(v.to_le_bytes());
        }
    }
    let key: String = key.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    keys.push((exe.to_path_buf(), key.clone()));
    Ok((key, (loader, files)))
}

/// Makes `root/KEY`: made aside, then renamed in whole, so a directory under KEY is
/// always complete, whoever made it first.
fn make_agent_dir(
    root: &Path,
    key: &str,
    exe: &Path,
    loader: Option<&str>,
    libs: &[(std::ffi::OsString, PathBuf)],
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::fs::create_dir_all(root).map_err(crate::io_err(format!("make {}", root.display())))?;
    let dir = root.join(key);
    let tmp = root.join(format!(
        ".{key}.{}.{}",
        std::process::id(),
        MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let made = || -> std::io::Result<()> {
        let mode =
            |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        std::fs::create_dir(&tmp)?;
        if std::fs::hard_link(exe, tmp.join("warren")).is_err() {
            std::fs::copy(exe, tmp.join("warren"))?;
            mode(&tmp.join("warren"), 0o755)?;
        }
        if let Some(loader) = loader {
            let lib = tmp.join("lib");
            std::fs::create_dir(&lib)?;
            for (name, real) in libs {
                std::fs::copy(real, lib.join(name))?;
                mode(&lib.join(name), 0o755)?;
            }
            mode(&lib, 0o755)?;
            std::fs::write(tmp.join("loader"), loader)?;
        }
        mode(&tmp, 0o755)?;
        std::fs::rename(&tmp, &dir)
    };
    match made() {
        Ok(()) => Ok(()),
        Err(_) if dir.join("warren").exists() => {
            let _ = crate::tree::remove(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = crate::tree::remove(&tmp);
            Err(crate::io_err(format!(
                "keep the agent's files in {}",
                dir.display()
            ))(e))
        }
    }
}

/// Removes the agent files of other binaries that nothing needs any more: kept are the
/// running binary's, and those a live sandbox (its run directory's `agent`) or a
/// checkpoint image (a paused sandbox's, a template's saved memory) records. Run by the
/// daemon as it starts, once it has adopted what runs.
pub fn remove_unused_agent_files(paths: &Paths, exe: &Path) {
    let root = agent_root(paths);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    let mut keep: std::collections::HashSet<String> = std::collections::HashSet::new();
    if let Ok((key, _)) = current_key(exe) {
        keep.insert(key);
    }
    let mut note = |p: PathBuf| {
        if let Ok(k) = std::fs::read_to_string(p) {
            keep.insert(k.trim().to_string());
        }
    };
    let sandboxes = |dir: PathBuf| std::fs::read_dir(dir).into_iter().flatten().flatten();
    for e in sandboxes(paths.run.join("sandboxes")) {
        note(e.path().join("agent"));
    }
    for e in sandboxes(paths.data.join("sandboxes")) {
        note(e.path().join("image/agent"));
    }
    for t in crate::template::list(paths).unwrap_or_default() {
        if t.memory.is_some() {
            note(crate::template::memory_dir(paths, &t.storage_key()).join("image/agent"));
        }
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Something else may be making one right now: only a long-abandoned one goes.
        let aside = name.starts_with('.')
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < old);
        if aside || (!name.starts_with('.') && !keep.contains(&name)) {
            let _ = crate::tree::remove(&e.path());
        }
    }
}

/// The container id the OCI runtime knows a sandbox by.
pub(crate) fn container(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// Finds `name` in PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_else(|| vec!["/usr/local/bin".into(), "/usr/bin".into()])
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Makes the run directory (bundle, socket directory) and the writable layer, owned as
/// the sandbox's root will see them. Returns the bundle's directory. With `walkable`, the
/// run directory and the bundle may be walked through (not listed) by anyone: a runtime
/// that sets the root up from inside the sandbox's user namespace must reach it (the
/// directories above it are not walkable on the host; see [`oci_main`]).
pub(crate) fn prepare_dirs(run: &Path, data: &Path, walkable: bool) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let bundle = run.join("bundle");
    for d in [&bundle, &run.join("sock")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(crate::io_err(format!("make {}", d.display())))?;
    }
    if walkable {
        for d in [run, &bundle] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
                .map_err(crate::io_err(format!("open {} to be walked", d.display())))?;
        }
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

/// The OCI runtime configuration of a sandbox.
pub(crate) fn bundle_config(
    spec: &SandboxSpec,
    template: &template::Template,
    sock: &Path,
    bundle: &Path,
    kind: BundleKind,
    agent: &AgentFiles,
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
        // Only runsc checkpoints: the agent closes its socket first when told.
        quiesce: kind == BundleKind::Gvisor,
        remove: match kind {
            BundleKind::Gvisor => ["/dev/fuse", "/dev/net/tun", "/dev/net"]
                .map(PathBuf::from)
                .to_vec(),
            // crun's link to /proc/kcore (masked, but no business in /dev).
            BundleKind::HostKernel => vec!["/dev/core".into()],
        },
        // gVisor's Sentry is one process to the host's OOM killer. (A score written
        // inside would also leave the process's /proc directory in gVisor's kernel,
        // saved by every checkpoint after.)
        killed_whole: kind == BundleKind::Gvisor,
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
    if kind == BundleKind::Gvisor {
        // runsc mounts a tmpfs of its own over /tmp unless the config mounts something
        // there: /tmp stays the root's own directory, in the writable layer, as on the
        // other backends (on the sandbox's disk, kept by a stop and in a snapshot).
        // `warren __oci` makes sure it is a plain directory first (`ROOT_TMP`).
        mounts.push(json!({"destination": "/tmp", "type": "bind",
                           "source": bundle.join("root/tmp"),
                           "options": ["bind", "rw", "nosuid", "nodev"]}));
    }
    mounts.push(
        json!({"destination": AGENT_BIN, "type": "bind", "source": bundle.join("ro/agent"),
                       "options": ["bind", "ro", "nosuid", "nodev"]}),
    );
    if agent.libs().is_some() {
        mounts.push(
            json!({"destination": AGENT_LIB, "type": "bind", "source": bundle.join("ro/lib"),
                           "options": ["bind", "ro", "nosuid", "nodev"]}),
        );
    }
    mounts.push(
        json!({"destination": SOCKET_DIR, "type": "bind", "source": sock,
                       "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]}),
    );
    for (i, v) in spec.volumes.iter().enumerate() {
        mounts.push(json!({"destination": v.target, "type": "bind",
                           "source": volume_point(bundle, i),
                           "options": ["rbind", "rw", "nosuid", "nodev"]}));
    }
    // Bound from the mounts `warren __oci` makes of them (see `crate::mounts`): a
    // read-only one is read-only there already, before the runtime's `ro`.
    for (i, m) in spec.mounts.iter().enumerate() {
        if let Some(why) = HostMount::target_problem(&m.target) {
            return Err(Error::Invalid {
                what: "host directory mount",
                why,
            });
        }
        let mode = if m.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": m.target, "type": "bind",
                           "source": host_mount_point(bundle, i),
                           "options": ["bind", mode, "nosuid", "nodev"]}));
    }
    // The limits the sandbox's cgroup is made with, as the runtime reads them (gVisor's
    // pids are a cap on the host tasks it uses, always: see `crate::gvisor`).
    let limits = match kind {
        BundleKind::Gvisor => crate::gvisor::host_limits(&spec.resources),
        BundleKind::HostKernel => crate::cgroup_limits(&spec.resources),
    };
    let mut resources = serde_json::Map::new();
    if let Some(m) = limits.memory {
        resources.insert("memory".into(), json!({"limit": m, "swap": m}));
    }
    if let Some(p) = limits.pids {
        resources.insert("pids".into(), json!({"limit": p}));
    }
    if let Some(c) = limits.cpu_millis {
        resources.insert(
            "cpu".into(),
            json!({"quota": u64::from(c) * 100, "period": 100_000}),
        );
    }
    let launch = serde_json::to_string(&launch).expect("the launch serializes");
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match kind {
        // On `nat` the container stays in the namespace `warren __oci` made for it.
        BundleKind::Gvisor if spec.network == NetworkMode::Nat => {}
        BundleKind::Gvisor => namespaces.push(json!({"type": "network"})),
        // Its own network namespace, in its user namespace (it may mount sysfs): the
        // keeper brings loopback up, the daemon wires `nat`. The keeper writes the slot's
        // id maps.
        BundleKind::HostKernel => {
            for t in ["network", "cgroup", "user"] {
                namespaces.push(json!({"type": t}));
            }
        }
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": agent.argv(launch),
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

/// Runs `warren __oci` with `launch` and waits for it (the OCI runtime's create or
/// restore); on failure, the last line the runtime (`name`) wrote to `log`.
pub(crate) fn run_oci(exe: &Path, launch: &OciLaunch, log_path: &Path, name: &str) -> Result<()> {
    let mut child = start_oci(exe, launch, log_path)?;
    let status = child
        .wait()
        .map_err(crate::io_err(format!("wait for {name}")))?;
    if status.success() {
        return Ok(());
    }
    if status.code() == Some(PORT_TAKEN) {
        return Err(port_taken(log_path));
    }
    Err(Error::Setup(format!(
        "{name} failed ({status}): {}",
        last_line(log_path)
    )))
}

/// Runs `warren __oci` with `launch`, which has a [`Keeper`], and waits for the keeper's
/// line: its pid and the sandbox's first process's.
pub(crate) fn run_keeper(
    exe: &Path,
    launch: &OciLaunch,
    log_path: &Path,
    name: &str,
) -> Result<(i32, i32)> {
    use std::io::BufRead;
    let mut child = start_oci(exe, launch, log_path)?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    let status = child.wait().ok();
    if status.and_then(|s| s.code()) == Some(PORT_TAKEN) {
        return Err(port_taken(log_path));
    }
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("ready"), Some(k), Some(i)) => match (k.parse(), i.parse()) {
            (Ok(k), Ok(i)) => Ok((k, i)),
            _ => Err(Error::Setup(format!("{name}: a bad keeper line {line:?}"))),
        },
        _ => Err(Error::Setup(format!(
            "{name} failed: {}",
            last_line(log_path)
        ))),
    }
}

fn start_oci(exe: &Path, launch: &OciLaunch, log_path: &Path) -> Result<std::process::Child> {
    use std::io::Write;
    let input = serde_json::to_vec(launch).expect("the launch serializes");
    let log = std::fs::File::create(log_path)
        .map_err(crate::io_err(format!("make {}", log_path.display())))?;
    // A keeper says it is ready on stdout; a runtime that is exec'd writes there too.
    let stdout: Stdio = if launch.keeper.is_some() {
        Stdio::piped()
    } else {
        log.try_clone()
            .map_err(crate::io_err("open the runtime's log"))?
            .into()
    };
    let mut child = std::process::Command::new(exe)
        .arg(OCI_ARG)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(log)
        .spawn()
        .map_err(crate::io_err("start warren __oci"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(&input)
            .map_err(crate::io_err("send the launch"))?;
    }
    Ok(child)
}

/// How `warren __oci` exits when a published port's host side cannot be listened on
/// (the runtimes it becomes or waits for exit 1 when they fail).
const PORT_TAKEN: i32 = 98;

/// A published port `warren __oci` could not listen on (its log's last line says which
/// and why): the request's to change, as when core finds the port taken.
fn port_taken(log_path: &Path) -> Error {
    Error::Invalid {
        what: "published port",
        why: format!("{}; pick another, or 0", last_line(log_path)),
    }
}

/// The last line of a runtime's log, for an error.
fn last_line(log_path: &Path) -> String {
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(400)
        .collect()
}

/// What `warren __oci` is started with (on stdin).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OciLaunch {
    /// The bundle's directory: the overlay is mounted at `bundle/root`.
    pub(crate) bundle: PathBuf,
    /// The template's layers, top first.
    pub(crate) lower: Vec<PathBuf>,
    /// The sandbox's data directory: the writable layer (`upper`, `work`) is there, or
    /// inside its disk image when `disk` bounds it.
    pub(crate) rw: PathBuf,
    /// The size of the sandbox's disk: its writable layer is then kept in an ext4 image
    /// of that size (`disk.img` in `rw`, made on first use), mounted in this namespace
    /// only. An image already there is used whatever its size.
    #[serde(default)]
    pub(crate) disk: Option<u64>,
    /// Give the container a network namespace of its own, loopback up (`nat`).
    #[serde(default)]
    pub(crate) new_netns: bool,
    /// The OCI runtime's `create` command line, run in the new mount namespace.
    pub(crate) argv: Vec<String>,
    /// Volumes to mount (idmapped) in the bundle, where the bundle's config binds them.
    #[serde(default)]
    pub(crate) volumes: Vec<OciVolume>,
    /// Host directories to mount in the bundle (`bundle/mounts/N`), where the bundle's
    /// config binds them.
    #[serde(default)]
    pub(crate) mounts: Vec<HostMount>,
    /// Host paths to mount read-only (on every mount of their tree) in the bundle, at the
    /// second path, which the bundle's config binds.
    #[serde(default)]
    pub(crate) read_only: Vec<(PathBuf, PathBuf)>,
    /// Make `root/tmp` a plain directory (the config binds it at /tmp): a link there,
    /// planted by a sandbox whose files a template kept, would be followed on the host.
    #[serde(default)]
    pub(crate) root_tmp: bool,
    /// Stay as the sandbox's keeper (see [`Keeper`]) rather than become the runtime.
    #[serde(default)]
    pub(crate) keeper: Option<Keeper>,
    /// Published ports: listened on (127.0.0.1 of the caller's network namespace, the
    /// host's) before anything else, and forwarded by the process that lives as long as
    /// the sandbox (the keeper, or gVisor's reaper on `nat`) into the sandbox's network.
    #[serde(default)]
    pub(crate) publish: Vec<PortMap>,
    /// The sandbox's cgroup, made by the daemon, for a runtime told to leave cgroups
    /// alone: the files (see [`warren_sys::cgroup::Cgroup::self_join_files`]) the
    /// runtime's process writes `0` to between its fork and its exec, so that it and
    /// every process it starts are in the cgroup from their first instruction, and no
    /// whole process is ever moved (the kernel's RCU wait, twice per start when runsc
    /// placed its processes itself). Empty: the runtime places them itself.
    #[serde(default)]
    pub(crate) cgroup: Vec<PathBuf>,
    /// The sandbox's memory limit, shown to the runtime as the host's memory (see
    /// [`limit_meminfo`]).
    #[serde(default)]
    pub(crate) memory: Option<u64>,
}

/// What `warren __oci` does for a runtime that runs the sandbox's processes on the host
/// kernel in a user namespace of their own (runc, crun): it takes an id slot (see
/// [`crate::ids`]) and holds it as long as the sandbox runs, shows the root's files
/// under that slot's ids, writes the slot's maps into the bundle's config, and runs the
/// runtime's `create` as its child rather than becoming it. Its line on stdout is
/// `ready KEEPER_PID INIT_PID`; then it waits, as the sandbox's subreaper, for the
/// sandbox's first process to end, and exits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Keeper {
    /// This sandbox's run directory (bundle, socket directory, logs): the directories
    /// above it that are not walkable on the host are covered (see `cover_run_dir`).
    pub(crate) sandbox_run: PathBuf,
    /// The runtime's state directory (`--root`).
    pub(crate) runtime_root: PathBuf,
    /// Where the runtime's `create` writes the first process's pid (`--pid-file`).
    pub(crate) pid_file: PathBuf,
    /// Hide the (controller-less but for one) cgroup v2 hierarchy of a v1 host from the
    /// runtime's `create`, which would refuse such a host (see `crate::runc`).
    #[serde(default)]
    pub(crate) hide_cgroup2: bool,
}

/// A volume of an OCI sandbox: mounted by `warren __oci` at `bundle/volumes/N`, which
/// the bundle's config binds at its target inside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OciVolume {
    /// Where the volume is kept (`Paths::volume`).
    pub(crate) dir: PathBuf,
    /// Its size when it is first made (an ext4 image), or none (a directory).
    pub(crate) size: Option<u64>,
    /// Its target inside the sandbox.
    pub(crate) target: String,
}

/// Where `warren __oci` mounts the read-only view of host directory `i` of a bundle.
pub(crate) fn read_only_point(bundle: &Path, i: usize) -> PathBuf {
    bundle.join("ro").join(i.to_string())
}

/// What a bundle binds read-only from the host, each with where `warren __oci` mounts its
/// read-only view: the template's host directories, the agent's binary and its
/// libraries.
pub(crate) fn read_only_sources(
    bundle: &Path,
    template: &template::Template,
    agent: &AgentFiles,
) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = template
        .host_binds
        .iter()
        .enumerate()
        .map(|(i, h)| (h.clone(), read_only_point(bundle, i)))
        .collect();
    out.push((agent.exe(), bundle.join("ro/agent")));
    if let Some(dir) = agent.libs() {
        out.push((dir, bundle.join("ro/lib")));
    }
    out
}

/// Where `warren __oci` mounts volume `i` of a bundle.
pub(crate) fn volume_point(bundle: &Path, i: usize) -> PathBuf {
    bundle.join("volumes").join(i.to_string())
}

/// Where `warren __oci` mounts host directory `i` of a bundle.
pub(crate) fn host_mount_point(bundle: &Path, i: usize) -> PathBuf {
    bundle.join("mounts").join(i.to_string())
}

/// The host directories a sandbox was made with, as recorded in its run directory (a
/// restore mounts them again).
pub(crate) fn recorded_mounts(run: &Path) -> Result<Vec<HostMount>> {
    match std::fs::read(run.join("mounts.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Setup(format!("mounts.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(crate::io_err("read mounts.json")(e)),
    }
}

/// The volumes a sandbox was made with, as recorded in its run directory (a resume
/// mounts them again).
pub(crate) fn recorded_volumes(run: &Path) -> Result<Vec<OciVolume>> {
    match std::fs::read(run.join("volumes.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Setup(format!("volumes.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(crate::io_err("read volumes.json")(e)),
    }
}

/// `warren __oci`: mounts a sandbox's root in a mount namespace of its own and runs the
/// OCI runtime's `create` there, whose processes keep that namespace: under a reaper of
/// the sandbox's own (runsc), or, with a `Keeper` in the launch, under the keeper.
/// Must run before any thread starts (it unshares and forks). Never returns.
pub fn oci_main() -> ! {
    use std::io::Read;
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin()
        .lock()
        .take(1 << 20)
        .read_to_end(&mut input)
    {
        oci_fail("read the launch", &e);
    }
    let launch: OciLaunch = match serde_json::from_slice(&input) {
        Ok(l) => l,
        Err(e) => oci_fail("bad launch", &e),
    };
    // In the caller's network namespace, before this process leaves it (gVisor on `nat`)
    // or joins the sandbox's (the keeper): a port taken fails the create before anything
    // of the sandbox exists.
    let listeners: Vec<(std::net::TcpListener, u16)> = launch
        .publish
        .iter()
        .map(|p| match crate::network::listen(*p) {
            Ok(l) => (l, p.sandbox),
            Err(e) => {
                let why = match e {
                    crate::network::NetError::Publish(_, e) => e.to_string(),
                    e => e.to_string(),
                };
                eprintln!("host port {} cannot be published ({why})", p.host);
                std::process::exit(PORT_TAKEN)
            }
        })
        .collect();
    let mut flags = warren_sys::ns::CloneFlags::CLONE_NEWNS;
    if launch.new_netns {
        flags |= warren_sys::ns::CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = warren_sys::ns::unshare(flags) {
        oci_fail("new namespaces", &e);
    }
    if launch.new_netns {
        if let Err(e) = warren_sys::ns::loopback_up() {
            oci_fail("bring up loopback", &e);
        }
    }
    if let Err(e) =
        warren_sys::mount::set_propagation(Path::new("/"), nix::mount::MsFlags::MS_PRIVATE)
    {
        oci_fail("private mounts", &e);
    }
    if let Err(e) = std::fs::create_dir_all(launch.bundle.join("root")) {
        oci_fail("make the root mount point", &e);
    }
    if let Some(limit) = launch.memory {
        if let Err(e) = limit_meminfo(limit, &sandbox_run(&launch.bundle)) {
            oci_fail("show the memory limit as the host's memory", &e);
        }
    }
    let slot = launch.keeper.as_ref().map(|_| match IdSlot::allocate() {
        Ok(s) => s,
        Err(e) => oci_fail("take an id slot", &e),
    });
    let map = match &slot {
        // Files are stored under the common range; through this map they are the slot's,
        // the host ids of the sandbox's 0-65,535.
        Some(slot) => slot.storage_map(),
        // Through this map they are the sandbox's 0-65,535 themselves, which runsc shows
        // as they are (it runs as host root and maps ids in its own kernel).
        None => format!("{HOST_ID_BASE} 0 {ID_COUNT}\n"),
    };
    let storage = match warren_sys::ns::idmap_userns(&map, &map) {
        Ok(fd) => fd,
        Err(e) => oci_fail("make the id mapping of the sandbox's files", &e),
    };
    crate::trace::mark("__oci: namespaces and id map");
    let rw = match launch.disk {
        None => launch.rw.clone(),
        Some(size) => match mount_disk(&launch.rw, size, &sandbox_run(&launch.bundle)) {
            Ok(at) => at,
            Err(e) => oci_fail("mount the sandbox's disk", &e.message),
        },
    };
    crate::trace::mark("__oci: disk mounted");
    if let Err(e) = warren_sys::mount::mount_overlay(
        &launch.bundle,
        &launch.lower,
        &rw,
        Some(std::os::fd::AsFd::as_fd(&storage)),
        // No setuid program of the root runs as its owner: gVisor's kernel would run
        // them, and every process keeps no_new_privs anyway (see docs/design.md).
        false,
    ) {
        oci_fail("mount the root overlay", &e);
    }
    if launch.root_tmp {
        if let Err(e) = plain_tmp(&launch.bundle.join("root/tmp")) {
            oci_fail("make the root's /tmp", &e);
        }
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
            oci_fail("make a read-only mount point", &e);
        }
        if let Err(e) =
            warren_sys::mount::bind_with(src, at, warren_sys::mount::MountAttrs::PROTECTED)
        {
            oci_fail("bind a host path read-only", &e);
        }
    }
    for (i, v) in launch.volumes.iter().enumerate() {
        let at = volume_point(&launch.bundle, i);
        if let Err(e) = std::fs::create_dir_all(&at) {
            oci_fail("make a volume's mount point", &e);
        }
        let storage = std::os::fd::AsFd::as_fd(&storage);
        if let Err(e) = crate::helper::place_volume(&v.dir, v.size, &launch.bundle, i, &at, storage)
        {
            oci_fail("mount a volume", &e.message);
        }
    }
    drop(storage);
    if !launch.mounts.is_empty() {
        // Host ids show as themselves inside: through the slot's own maps on the host
        // kernel; gVisor, running as the host's root, maps ids in its own.
        let own = slot
            .as_ref()
            .map(|s| warren_sys::ns::idmap_userns(&s.map(), &s.map()))
            .transpose()
            .unwrap_or_else(|e| oci_fail("make the id mapping of host directories", &e));
        for (i, m) in launch.mounts.iter().enumerate() {
            let at = host_mount_point(&launch.bundle, i);
            if let Err(e) = std::fs::create_dir_all(&at) {
                oci_fail("make a host directory's mount point", &e);
            }
            let own = own.as_ref().map(std::os::fd::AsFd::as_fd);
            if let Err(e) = crate::mounts::place(m, &at, own) {
                oci_fail("mount a host directory", &e);
            }
        }
    }
    crate::trace::mark("__oci: root and mounts");
    let Some((bin, _)) = launch.argv.split_first() else {
        oci_fail("launch", &"no command");
    };
    let args: Vec<std::ffi::CString> = launch
        .argv
        .iter()
        .filter_map(|a| std::ffi::CString::new(a.as_str()).ok())
        .collect();
    let bin = std::ffi::CString::new(bin.as_str()).unwrap_or_default();
    match (launch.keeper, slot) {
        (Some(keeper), Some(slot)) => keep(
            &launch.bundle,
            &keeper,
            slot,
            (&bin, &args, &launch.cgroup),
            listeners,
        ),
        _ => {
            // The runtime's create (or restore) leaves the container's processes behind
            // when it exits. They are adopted by a reaper of the sandbox's own, not by the
            // host's init, which may reap as late as a second after (this host's does):
            // `runsc delete` waits for them to be gone, so a slow reaper is in every
            // remove and pause.
            let (status_r, status_w) = match nix::unistd::pipe() {
                Ok(p) => p,
                Err(e) => oci_fail("pipe", &e),
            };
            match warren_sys::ns::fork_process() {
                Ok(warren_sys::ns::Forked::Child) => {
                    drop(status_r);
                    reap_for_the_sandbox((&bin, &args, &launch.cgroup), status_w, listeners)
                }
                Ok(warren_sys::ns::Forked::Parent(reaper)) => {
                    drop(status_w);
                    drop(listeners);
                    record_mounts_holder(&launch.bundle, reaper.as_raw());
                    // The runtime's exit status, from the reaper; nothing if it died first.
                    let mut code = [1u8];
                    let _ =
                        std::io::Read::read_exact(&mut std::fs::File::from(status_r), &mut code);
                    std::process::exit(i32::from(code[0]))
                }
                Err(e) => oci_fail("fork the sandbox's reaper", &e),
            }
        }
    }
}

/// Shows `limit` as the host's memory to the runtime, in this (private) mount namespace
/// only: /proc/meminfo is covered by a copy whose `MemTotal` is the smaller of the
/// two, kept in `run`. runsc sizes its kernel's memory (`MemTotal` inside, what
/// programs size their caches and heaps by) from the host's /proc/meminfo and the
/// cgroup it makes; told to leave cgroups alone, it reads the file alone.
fn limit_meminfo(limit: u64, run: &Path) -> std::io::Result<()> {
    let host = std::fs::read_to_string("/proc/meminfo")?;
    let shown: String = host
        .lines()
        .map(|line| match line.strip_prefix("MemTotal:") {
            Some(rest) => {
                let kb = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(u64::MAX);
                format!("MemTotal:{:>16} kB\n", kb.min(limit / 1024))
            }
            None => format!("{line}\n"),
        })
        .collect();
    let copy = run.join("meminfo");
    std::fs::write(&copy, shown)?;
    warren_sys::mount::bind_with(
        &copy,
        Path::new("/proc/meminfo"),
        warren_sys::mount::MountAttrs::PROTECTED,
    )
}

/// The OCI runtime's command: its program, its arguments, and the files that put it in
/// the sandbox's cgroup ([`OciLaunch::cgroup`]) between its fork and its exec.
type Runtime<'a> = (&'a std::ffi::CStr, &'a [std::ffi::CString], &'a [PathBuf]);

/// The sandbox's reaper (see [`oci_main`]): in a session of its own, it adopts what the
/// runtime leaves (PR_SET_CHILD_SUBREAPER), runs the runtime, sends its exit status
/// down `status`, and reaps until nothing is left under it. Once the runtime has made
/// the sandbox, it forwards the published ports' `listeners` from the network namespace
/// it is in, the sandbox's (gVisor on `nat`): they close with it. Never returns.
fn reap_for_the_sandbox(
    (bin, args, cgroup): Runtime<'_>,
    status: std::os::fd::OwnedFd,
    listeners: Vec<(std::net::TcpListener, u16)>,
) -> ! {
    use nix::sys::wait::{waitpid, WaitStatus};
    let _ = nix::unistd::setsid();
    if warren_sys::ns::set_child_subreaper().is_err() {
        // The host's init adopts them instead: slower to remove, nothing worse.
    }
    let runtime = match warren_sys::ns::fork_process() {
        Ok(warren_sys::ns::Forked::Child) => {
            drop(status);
            if let Err(e) = warren_sys::cgroup::join_self(cgroup) {
                eprintln!("warren __oci: join the sandbox's cgroup: {e}");
                std::process::exit(1)
            }
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
    // Threads only now: no fork follows.
    if code == 0 {
        for (l, port) in listeners {
            crate::network::forward(l, port, None);
        }
    }
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

/// Where a cgroup v1 host mounts its cgroup v2 hierarchy ("hybrid").
pub(crate) const CGROUP2_ON_V1: &str = "/sys/fs/cgroup/unified";

fn oci_fail(what: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("warren __oci: {what}: {e}");
    std::process::exit(1)
}

/// Makes `tmp` (in the mounted root) a directory open to all (1777) unless it is one
/// already: anything else there (a link, a file) is removed first. No process of the
/// sandbox runs yet to swap it again.
fn plain_tmp(tmp: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(tmp) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(tmp)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir(tmp)?;
    // Made through the root's id mapping: the sandbox's root owns it.
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o1777))
}

/// The sandbox's run directory, which holds its bundle.
fn sandbox_run(bundle: &Path) -> PathBuf {
    bundle.parent().unwrap_or(bundle).to_path_buf()
}

/// Where a sandbox's disk image is mounted (in the namespace of `warren __oci` only) and
/// the file naming the process that holds that namespace for as long as the sandbox
/// runs: a snapshot or a usage reading enters it to see the sandbox's files.
pub(crate) const DISK_MOUNT: &str = "disk";
pub(crate) const MOUNTS_HOLDER: &str = "mounts.pid";

fn record_mounts_holder(bundle: &Path, pid: i32) {
    let _ = std::fs::write(sandbox_run(bundle).join(MOUNTS_HOLDER), pid.to_string());
}

/// The live process holding the mount namespace of the OCI sandbox whose run directory
/// is `run`, if it runs.
pub(crate) fn mounts_holder(run: &Path) -> Option<i32> {
    std::fs::read_to_string(run.join(MOUNTS_HOLDER))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&pid| crate::namespace::pid_alive(pid))
}

/// The size of the disk image in the sandbox data directory `data`, when it has one.
pub(crate) fn recorded_disk(data: &Path) -> Option<u64> {
    std::fs::metadata(data.join("disk.img"))
        .ok()
        .map(|m| m.len())
}

/// The host path `path` as the process `pid` sees it, in its mount namespace: a disk
/// that only a sandbox's mount holder has mounted.
pub(crate) fn seen_by(pid: i32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// Waits (up to 5 s) until nothing holds the mounts of the OCI sandbox whose run
/// directory is `run`: its disk image may then be mounted again, by a restore or a
/// snapshot, without two mounts of one ext4 image at once.
pub(crate) fn wait_mounts_released(run: &Path) {
    crate::wait_for(std::time::Duration::from_secs(5), || {
        mounts_holder(run).is_none()
    });
}

/// Mounts the sandbox's disk image (made first, of `size` bytes, when `data` has none)
/// at `run/disk`, and returns it as the writable layer's directory. A new image takes in
/// the files already in `data/upper` (a sandbox started from a snapshot with memory),
/// which are then removed from the host's disk.
fn mount_disk(data: &Path, size: u64, run: &Path) -> crate::helper::Setup<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let img = data.join("disk.img");
    let new = !img.exists();
    if new {
        crate::helper::make_ext4(&img, size, HOST_ID_BASE, crate::helper::Image::Disk)?;
    }
    let at = run.join(DISK_MOUNT);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&at)
        .map_err(|e| format!("make the disk's mount point: {e}"))?;
    crate::helper::mount_image(&img, &at, new)?;
    if new {
        // An empty disk: lost+found is fsck's business, which makes it when it needs it.
        let _ = std::fs::remove_dir(at.join("lost+found"));
    }
    let seed = data.join("upper");
    if new && std::fs::read_dir(&seed).is_ok_and(|mut d| d.next().is_some()) {
        copy_layer(&seed, &at.join("upper"))?;
        let _ = crate::tree::remove(&seed);
        let _ = std::fs::create_dir(&seed);
    }
    std::fs::File::open(&at)
        .and_then(|d| crate::helper::layer_dirs(std::os::fd::AsFd::as_fd(&d)))
        .map_err(|e| format!("make the writable layer: {e}"))?;
    Ok(at)
}

/// The disk of an OCI sandbox that ends for good, whose run directory is `run` and data
/// directory `data`: its filesystem held open from before the sandbox's processes are
/// killed, so that nothing unmounts it while the sandbox ends, and the loop device it is
/// mounted from set to drop flushes only then, off the removal's answer (the setting
/// freezes the device's queue, some 16 ms each way; see
/// [`warren_sys::mount::write_through`]). `None` without a disk.
pub(crate) struct EndingDisk {
    held: std::fs::File,
    img: std::fs::File,
}

impl EndingDisk {
    /// Opens the disk mounted at `run/disk` in the namespace of what holds the sandbox's
    /// mounts (`warren __oci`), while it runs.
    pub(crate) fn open(run: &Path, data: &Path) -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let holder = mounts_holder(run)?;
        // Opened now: the caller removes the sandbox's files before the rest is done.
        let img = std::fs::File::open(data.join("disk.img")).ok()?;
        let held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(seen_by(holder, &run.join(DISK_MOUNT)))
            .ok()?;
        Some(Self { held, img })
    }

    /// [`let_go`](Self::let_go) in a task of its own, for a caller that has answered.
    pub(crate) fn let_go_later(disk: Option<Self>) {
        if let Some(disk) = disk {
            tokio::task::spawn_blocking(move || drop(disk.let_go()));
        }
    }

    /// With the sandbox's processes gone: sets its device to drop flushes and lets go of
    /// the filesystem, whose unmount, when the runtime too has let go of its mounts,
    /// then forces nothing to the host's disk. The setting is undone when the returned
    /// value is dropped, once the mounts are gone.
    pub(crate) fn let_go(self) -> Option<warren_sys::mount::WriteThrough> {
        let through = warren_sys::mount::write_through_image(&self.img)
            .ok()
            .flatten();
        drop(self.held);
        through
    }
}

/// Once an OCI sandbox with a disk of `size` is ready: the next one's disk copied from
/// the blank off the request's path, as a namespace sandbox's helper does (see
/// [`crate::helper::make_spare`]); `warren __oci` takes it by a rename.
pub(crate) fn copy_next_disk(paths: &crate::Paths, size: Option<u64>) {
    if let Some(size) = size {
        let data = paths.data.clone();
        tokio::task::spawn_blocking(move || {
            crate::helper::make_spare(&data, size, crate::HOST_ID_BASE)
        });
    }
}

/// Copies a writable layer (or a checkpoint image) `from` into `to`, keeping owners,
/// modes, links, holes and xattrs; a copy that met a full disk is told apart.
pub(crate) fn copy_layer(from: &Path, to: &Path) -> Result<()> {
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
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let e = Error::Setup(format!(
        "copy the writable layer: {}",
        why.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>()
    ));
    Err(if crate::tool_says_disk_full(&why) {
        Error::disk_full(e)
    } else {
        e
    })
}

/// The [`Keeper`]'s part of `warren __oci`, once the root is mounted: see there.
fn keep(
    bundle: &Path,
    keeper: &Keeper,
    slot: IdSlot,
    (bin, args, cgroup): Runtime<'_>,
    listeners: Vec<(std::net::TcpListener, u16)>,
) -> ! {
    use std::io::Write;
    use warren_sys::ns::Forked;
    if let Err(e) = give_ids(bundle, keeper, &slot) {
        oci_fail("give the sandbox its ids", &e);
    }
    if let Err(e) = cover_run_dir(keeper) {
        oci_fail("make the bundle reachable", &e);
    }
    if keeper.hide_cgroup2 {
        let hidden = warren_sys::mount::mount_fs(
            "warren-oci",
            Path::new(CGROUP2_ON_V1),
            "tmpfs",
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("size=64k"),
        );
        if let Err(e) = hidden {
            oci_fail("hide the cgroup v2 hierarchy", &e);
        }
    }
    // The caller reads one line, then this process goes on alone: out of the caller's
    // session and process tree, so that it outlives a daemon that restarts.
    match warren_sys::ns::fork_process() {
        Ok(Forked::Parent(_)) => std::process::exit(0),
        Ok(Forked::Child) => {}
        Err(e) => oci_fail("fork the keeper", &e),
    }
    let _ = nix::unistd::setsid();
    record_mounts_holder(bundle, std::process::id() as i32);
    // The runtime's `create` exits once the sandbox's first process waits to start: that
    // process is then this one's child.
    if let Err(e) = warren_sys::ns::set_child_subreaper() {
        oci_fail("become the sandbox's subreaper", &e);
    }
    let _ = std::fs::remove_file(&keeper.pid_file);
    let create = match warren_sys::ns::fork_process() {
        Ok(Forked::Child) => {
            if let Err(e) = warren_sys::cgroup::join_self(cgroup) {
                oci_fail("join the sandbox's cgroup", &e);
            }
            // The runtime's output goes to the log (stderr); the first process inherits
            // its descriptors, and must not hold the caller's status pipe.
            let _ = nix::unistd::dup2(2, 1);
            if let Ok(null) = std::fs::File::open("/dev/null") {
                let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0);
            }
            let e = nix::unistd::execv(bin, args).unwrap_err();
            oci_fail("exec the OCI runtime", &e)
        }
        Ok(Forked::Parent(p)) => p,
        Err(e) => oci_fail("fork the OCI runtime", &e),
    };
    match nix::sys::wait::waitpid(create, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
        // Its own last words (in the log) say why.
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => std::process::exit(code),
        Ok(status) => oci_fail("the OCI runtime's create failed", &format!("{status:?}")),
        Err(e) => oci_fail("wait for the OCI runtime", &e),
    }
    let init: i32 = match std::fs::read_to_string(&keeper.pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => oci_fail("read the sandbox's pid", &"the runtime wrote none"),
    };
    // The runtime made the sandbox's network namespace (in its user namespace, so that
    // it may mount sysfs) with loopback down.
    let up = warren_sys::ns::open_ns(nix::unistd::Pid::from_raw(init), "net").and_then(|net| {
        warren_sys::ns::setns(&net, warren_sys::ns::CloneFlags::CLONE_NEWNET)?;
        warren_sys::ns::loopback_up()
    });
    if let Err(e) = up {
        oci_fail("bring up the sandbox's loopback", &e);
    }
    // The published ports, forwarded into the sandbox's network namespace by threads of
    // this process (no fork follows): they close when it exits, with the sandbox.
    for (l, port) in listeners {
        match warren_sys::ns::open_ns(nix::unistd::Pid::from_raw(init), "net") {
            Ok(net) => drop(crate::network::forward(l, port, Some(net))),
            Err(e) => oci_fail("open the sandbox's network namespace", &e),
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready {} {init}", std::process::id());
    let _ = out.flush();
    drop(out);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
    }
    // Holds the slot until the sandbox's first process is gone.
    let init = nix::unistd::Pid::from_raw(init);
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(s) if s.pid() == Some(init) => break,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // Not this process's child after all: watch it instead.
            Err(_) => {
                while crate::namespace::pid_alive(init.as_raw()) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                break;
            }
        }
    }
    drop(slot);
    std::process::exit(0)
}

/// Writes the slot's id maps into the bundle's config and hands the socket directory to
/// the sandbox's root (its agent binds its socket there).
fn give_ids(bundle: &Path, keeper: &Keeper, slot: &IdSlot) -> std::io::Result<()> {
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let map = json!([{"containerID": 0, "hostID": slot.base, "size": ID_COUNT}]);
    config["linux"]["uidMappings"] = map.clone();
    config["linux"]["gidMappings"] = map;
    std::fs::write(&path, config.to_string())?;
    let sock = keeper.sandbox_run.join("sock");
    nix::unistd::chown(
        &sock,
        Some(nix::unistd::Uid::from_raw(slot.base)),
        Some(nix::unistd::Gid::from_raw(slot.base)),
    )?;
    std::fs::write(keeper.sandbox_run.join("uid"), slot.base.to_string())
}

/// The runtime sets the root and the bind mounts up from inside the sandbox's user
/// namespace, whose root may not walk a directory only host root may (the daemon's run
/// directory is 0700; a directory above it may be too). In this mount namespace only,
/// the highest such directory on the way to this sandbox's run directory is covered by a
/// walkable one holding this sandbox's run directory and the runtime's state directory
/// (when it is under it too), each bound at its own path: the paths stay the same, and
/// nothing else under it (another sandbox's state) is there to be reached.
fn cover_run_dir(keeper: &Keeper) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use warren_sys::mount::{clone_tree, mount_fs, MsFlags};
    std::fs::create_dir_all(&keeper.runtime_root)?;
    let mut closed = None;
    let mut at = PathBuf::from("/");
    for c in keeper.sandbox_run.components().skip(1) {
        at.push(c);
        if std::fs::metadata(&at)?.permissions().mode() & 0o001 == 0 {
            closed = Some(at.clone());
            break;
        }
    }
    let Some(closed) = closed else {
        return Ok(());
    };
    let mut trees = Vec::new();
    for dir in [&keeper.sandbox_run, &keeper.runtime_root] {
        if dir.starts_with(&closed) {
            trees.push((clone_tree(dir, true)?, dir));
        }
    }
    mount_fs(
        "warren-oci",
        &closed,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0711,size=64k"),
    )?;
    for (tree, dir) in trees {
        std::fs::create_dir_all(dir)?;
        tree.attach(dir)?;
    }
    Ok(())
}

/// `warren __oci-watch ISOLATION ID PID remove|keep`: waits for its parent (`warren run`,
/// pid PID) to die, then removes sandbox ID of that backend as `purge` would (its
/// writable layer too with `remove`). Killed by its parent when the sandbox ends
/// normally. Never returns.
pub fn watch_main() -> ! {
    use nix::sys::signal::{SigSet, Signal};
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [kind, id, parent, keep] = args.as_slice() else {
        eprintln!("warren __oci-watch: expected ISOLATION ID PID remove|keep");
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
    let paths = Paths::from_env();
    let backend: Option<Box<dyn Backend>> = match kind.parse::<Isolation>() {
        Ok(Isolation::Gvisor) => crate::gvisor::GvisorBackend::new(paths, exe, None)
            .ok()
            .map(|b| Box::new(b) as Box<dyn Backend>),
        Ok(k @ (Isolation::Runc | Isolation::Crun)) => {
            crate::runc::RuncBackend::new(k, paths, exe, None)
                .ok()
                .map(|b| Box::new(b) as Box<dyn Backend>)
        }
        _ => None,
    };
    if let Some(b) = backend {
        b.purge(id, keep == "remove");
    }
    std::process::exit(0)
}

/// Starts `warren __oci-watch` for sandbox `id` of backend `kind`, from the caller's
/// thread (the kernel tells the watcher when that thread ends).
pub(crate) fn start_watch(
    exe: &Path,
    paths: &Paths,
    kind: Isolation,
    id: &str,
    remove: bool,
) -> Result<std::process::Child> {
    std::process::Command::new(exe)
        .args([
            "__oci-watch",
            kind.as_str(),
            id,
            &std::process::id().to_string(),
        ])
        .arg(if remove { "remove" } else { "keep" })
        .env("WARREN_RUN_DIR", &paths.run)
        .env("WARREN_DATA_DIR", &paths.data)
        .stdin(Stdio::null())
        // It must not hold the caller's output open after the caller.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(crate::io_err("start the sandbox's watchdog"))
}

/// An OCI runtime makes the container's cgroup in every hierarchy it finds (blkio,
/// cpuset, devices, the named systemd one too), and a failed create or a forced delete
/// may leave them: every empty one of that name goes.
pub(crate) fn remove_runtime_cgroups(name: &str) {
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
        // systemd links `cpu` and `cpuacct` to the `cpu,cpuacct` it mounts: each hierarchy
        // is looked through once, at its mount.
        if m.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        let dir = m.file_name().to_string_lossy().into_owned();
        let path = own_path_in(&own, &dir);
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

/// This process's cgroup in the hierarchy mounted at `/sys/fs/cgroup/<dir>`, from
/// `/proc/self/cgroup` (`own`): the cgroup2 one for `unified`, else the line naming the
/// directory's controllers, one (`pids`), all of them (`cpu,cpuacct`) or a named
/// hierarchy (`systemd` for `name=systemd`).
fn own_path_in(own: &str, dir: &str) -> Option<String> {
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if dir == "unified" {
            ctrls.is_empty()
        } else {
            ctrls == dir
                || ctrls
                    .split(',')
                    .any(|c| c == dir || c.strip_prefix("name=") == Some(dir))
        };
        hit.then(|| path.trim_start_matches('/').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hierarchys_own_cgroup_is_found_by_its_mount_directory() {
        let own = "9:name=systemd:/s\n4:memory:/m/n\n2:cpu,cpuacct:/c\n0::/u\n";
        assert_eq!(own_path_in(own, "memory").as_deref(), Some("m/n"));
        assert_eq!(own_path_in(own, "cpu,cpuacct").as_deref(), Some("c"));
        assert_eq!(own_path_in(own, "cpu").as_deref(), Some("c"));
        assert_eq!(own_path_in(own, "systemd").as_deref(), Some("s"));
        assert_eq!(own_path_in(own, "unified").as_deref(), Some("u"));
        assert_eq!(own_path_in(own, "blkio"), None);
    }

    fn host() -> template::Template {
        template::Template {
            name: "host".into(),
            lower: vec![],
            host_binds: vec!["/usr".into()],
            env: Default::default(),
            meta: template::host_meta(),
        }
    }

    fn agent() -> AgentFiles {
        AgentFiles::stand_in(Some("ld-linux-x86-64.so.2"))
    }

    /// The bundle at /b of the host template on `network`.
    fn config_at_b(
        network: NetworkMode,
        kind: BundleKind,
        agent: &AgentFiles,
    ) -> serde_json::Value {
        bundle_config(
            &spec(network),
            &host(),
            Path::new("/s"),
            Path::new("/b"),
            kind,
            agent,
        )
        .unwrap()
    }

    #[test]
    fn the_agent_starts_through_the_hosts_loader_with_the_hosts_libraries() {
        let b = Path::new("/b");
        let c = config_at_b(NetworkMode::None, BundleKind::Gvisor, &agent());
        // The host's OOM killer sees one Sentry: no OOM score is written inside.
        let launch = c["process"]["args"].as_array().unwrap().last().unwrap();
        assert!(
            launch.as_str().unwrap().contains("\"killed_whole\":true"),
            "{launch}"
        );
        let args: Vec<&str> = c["process"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[..6],
            [
                "/.warren/lib/ld-linux-x86-64.so.2",
                "--inhibit-cache",
                "--library-path",
                "/.warren/lib",
                "/.warren/warren",
                "__agent"
            ]
        );
        let lib = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == AGENT_LIB)
            .unwrap();
        assert_eq!(lib["source"], "/b/ro/lib");
        assert_eq!(lib["options"], json!(["bind", "ro", "nosuid", "nodev"]));
        let ro = read_only_sources(b, &host(), &agent());
        assert!(ro.contains(&("/a/k/warren".into(), "/b/ro/agent".into())));
        assert!(ro.contains(&("/a/k/lib".into(), "/b/ro/lib".into())));
        // A static binary is its own loader: no mount, started by itself.
        let alone = AgentFiles::stand_in(None);
        let c = config_at_b(NetworkMode::None, BundleKind::Gvisor, &alone);
        assert_eq!(c["process"]["args"][0], AGENT_BIN);
        let mounts = c["mounts"].as_array().unwrap();
        assert!(!mounts.iter().any(|m| m["destination"] == AGENT_LIB));
        assert_eq!(read_only_sources(b, &host(), &alone).len(), 2);
    }

    #[test]
    fn the_kept_loader_and_libraries_start_this_binary_and_are_kept_once() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::under(tmp.path());
        let exe = std::env::current_exe().unwrap();
        let agent = AgentFiles::current(&paths, &exe).unwrap();
        assert!(agent.dir.starts_with(paths.data.join("agent")));
        let (libs, loader) = (agent.libs().unwrap(), agent.loader.clone().unwrap());
        assert_eq!(
            std::fs::metadata(agent.exe()).unwrap().len(),
            std::fs::metadata(&exe).unwrap().len()
        );
        // The kept binary started by nothing but the kept loader, searching the kept
        // libraries alone: no cache, no LD_LIBRARY_PATH, an empty environment.
        let run = |args: &[&str]| {
            std::process::Command::new(libs.join(&loader))
                .args(args)
                .args(["--inhibit-cache", "--library-path"])
                .arg(&libs)
                .arg(agent.exe())
                .arg("--list")
                .env_clear()
                .output()
                .unwrap()
        };
        let out = run(&[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every library it loads comes from there.
        let list = run(&["--list"]);
        let list = String::from_utf8_lossy(&list.stdout);
        let found: Vec<&str> = list
            .lines()
            .filter_map(|l| l.split(" => ").nth(1))
            .collect();
        assert!(!found.is_empty(), "{list}");
        assert!(
            found.iter().all(|f| f.starts_with(libs.to_str().unwrap())),
            "{list}"
        );
        // Kept once.
        let again = AgentFiles::current(&paths, &exe).unwrap();
        assert_eq!(
            (again.key.as_str(), &again.dir),
            (agent.key.as_str(), &agent.dir)
        );
        let kept = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(paths.data.join("agent"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            kept(),
            vec![agent.key.clone()],
            "one directory, nothing left aside"
        );

        // A new binary (another file) gets files of its own; an image's record finds the
        // old ones again, a missing or unknown record the running binary's.
        let newer = tmp.path().join("warren-newer");
        std::fs::copy(&exe, &newer).unwrap();
        let image = paths.data.join("sandboxes/abc/image");
        std::fs::create_dir_all(&image).unwrap();
        agent.record(&image.join("agent")).unwrap();
        let restored = AgentFiles::for_restore(&paths, &newer, &image.join("agent")).unwrap();
        assert_eq!(restored.dir, agent.dir);
        assert_eq!(restored.loader, agent.loader);
        let fresh = AgentFiles::for_restore(&paths, &newer, &image.join("none")).unwrap();
        assert_ne!(fresh.key, agent.key);
        std::fs::write(image.join("bad"), "../../etc").unwrap();
        let bad = AgentFiles::for_restore(&paths, &newer, &image.join("bad")).unwrap();
        assert_eq!(bad.key, fresh.key);
        let mut both = vec![agent.key.clone(), fresh.key.clone()];
        both.sort();
        assert_eq!(kept(), both);

        // What a record names stays; what nothing names goes, but never the running
        // binary's.
        remove_unused_agent_files(&paths, &newer);
        assert_eq!(kept(), both);
        std::fs::remove_file(image.join("agent")).unwrap();
        remove_unused_agent_files(&paths, &newer);
        assert_eq!(kept(), vec![fresh.key.clone()]);
        // A template's saved memory (here a tenant's own) keeps its own.
        let current = AgentFiles::current(&paths, &exe).unwrap();
        let meta = template::TemplateMeta {
            name: "warm".into(),
            key: template::key(Some("acme"), "warm"),
            private: true,
            tenant: Some("acme".into()),
            memory: Some(template::SavedMemory {
                home_volume: false,
                image_bytes: 0,
            }),
            ..Default::default()
        };
        template::save_with(&paths, &meta, |stage| {
            let image = stage.join("memory/image");
            std::fs::create_dir_all(&image).unwrap();
            current.record(&image.join("agent"))
        })
        .unwrap();
        remove_unused_agent_files(&paths, &newer);
        let mut now = vec![current.key.clone(), fresh.key.clone()];
        now.sort();
        assert_eq!(kept(), now);
    }

    fn spec(network: NetworkMode) -> SandboxSpec {
        let mut s = SandboxSpec {
            id: "abc".into(),
            network,
            ..Default::default()
        };
        s.resources.memory = Some(64 << 20);
        s.resources.pids = Some(32);
        s
    }

    fn namespaces(config: &serde_json::Value) -> Vec<String> {
        config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_host_kernel_bundle_has_every_namespace_and_the_pids_limit() {
        let b = Path::new("/run/warren/sandboxes/abc/bundle");
        for network in [NetworkMode::None, NetworkMode::Nat] {
            let c = bundle_config(
                &spec(network),
                &host(),
                Path::new("/s"),
                b,
                BundleKind::HostKernel,
                &agent(),
            )
            .unwrap();
            assert_eq!(
                namespaces(&c),
                ["pid", "ipc", "uts", "mount", "network", "cgroup", "user"]
            );
            assert_eq!(c["linux"]["resources"]["pids"]["limit"], 32);
            assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 << 20);
            assert_eq!(c["linux"]["cgroupsPath"], "warren-abc");
            assert_eq!(c["process"]["noNewPrivileges"], true);
            // The agent does not close its socket for a checkpoint no one makes.
            let args = c["process"]["args"].as_array().unwrap();
            let launch = args.last().unwrap().as_str().unwrap();
            assert!(launch.contains("\"quiesce\":false"), "{launch}");
            // A host kernel's OOM killer chooses among the processes: they ask to be
            // chosen before the agent.
            assert!(launch.contains("\"killed_whole\":false"), "{launch}");
            // Host directories come from the read-only mounts `warren __oci` made.
            let usr = c["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/usr")
                .unwrap();
            assert_eq!(usr["source"], b.join("ro/0").display().to_string());
        }
    }

    #[test]
    fn a_gvisor_bundle_keeps_runscs_network_and_a_host_task_cap() {
        let c = config_at_b(NetworkMode::Nat, BundleKind::Gvisor, &agent());
        assert_eq!(namespaces(&c), ["pid", "ipc", "uts", "mount"]);
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], 256 + 8 * 32);
        let c = config_at_b(NetworkMode::None, BundleKind::Gvisor, &agent());
        assert_eq!(namespaces(&c), ["pid", "ipc", "uts", "mount", "network"]);
    }

    #[test]
    fn a_launch_without_a_keeper_still_reads() {
        // What an older daemon wrote for `warren __oci` (gvisor) has no keeper.
        let l: OciLaunch =
            serde_json::from_str(r#"{"bundle":"/b","lower":[],"rw":"/r","argv":["runsc"]}"#)
                .unwrap();
        assert!(l.keeper.is_none());
    }
}
