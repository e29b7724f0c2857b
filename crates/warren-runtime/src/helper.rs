//! The sandbox helper: `warren __init`, one process per sandbox.
//!
//! The daemon and the CLI are multi-threaded; forking into new namespaces from them is
//! not sound. So they start this helper, a fresh single-threaded process, hand it the
//! sandbox's configuration on stdin and read one status line from its stdout. The helper
//!
//! 1. creates the sandbox's cgroup with its limits;
//! 2. enters a private mount namespace and builds the root filesystem there (overlay,
//!    read-only host directories, /dev, volumes, a loop-mounted disk when the disk is
//!    bounded), so no mount of a sandbox is ever visible on the host or outlives it;
//! 3. binds the agent's socket, then clones the sandbox's first process into new user,
//!    mount, pid, uts, ipc and network namespaces, writes its id maps, puts it in the
//!    cgroup, and lets it go on;
//! 4. the child mounts /proc, /sys and /dev/pts, masks what the OCI default masks,
//!    enters the new root and becomes the agent (PID 1): a helper the zygote forked
//!    clones it in a copy of the zygote's shell namespace (see [`crate::shell`]), where
//!    it moves the root onto the namespace's own and `chroot`s; otherwise it pivots;
//! 5. the helper reports `ready`, then stays as the sandbox's monitor: it forwards
//!    published ports and, when asked to stop (SIGTERM) or when PID 1 dies, kills what is
//!    left, removes the cgroup and the sandbox's directories, and exits.
//!
//! With `die_with_parent` (the CLI's `warren run`), the kernel sends the helper SIGTERM
//! when its caller dies, so even a SIGKILLed CLI leaves nothing behind.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use warren_sys::cgroup::Hierarchy;
use warren_sys::mount::{
    bind, bind_idmapped, bind_with, mount_fs, set_propagation, unmount, DetachedMount, MountAttrs,
    MsFlags,
};
use warren_sys::ns::{self, Forked};
use warren_types::spec::{HostMount, NetworkMode, SandboxSpec, VolumeMount};

use crate::ids::IdSlot;
use crate::template::{self, Template};
use crate::{Paths, HOST_ID_BASE, ID_COUNT, PREFIX, USER_ID};

/// What the caller sends the helper on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperConfig {
    pub spec: SandboxSpec,
    pub run_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The caller's pid: the helper tears the sandbox down when that process dies.
    pub die_with_parent: Option<i32>,
    /// Remove the writable layer when the sandbox ends.
    pub ephemeral: bool,
    /// Its disk, `DATA/sandboxes/ID/disk.img`, was made and mounted ahead by the daemon:
    /// the mount is the descriptor at [`PREPARED_DISK_FD`] (see [`crate::prepared`]).
    #[serde(default)]
    pub prepared_disk: bool,
    /// A cgroup the daemon made ahead with this sandbox's limits, to be renamed into
    /// place (see [`crate::spares`]); one is made afresh when that cannot be.
    #[serde(default)]
    pub spare_cgroup: Option<String>,
    /// The caller makes the copy of the blank disk that the next sandbox's disk takes
    /// (a daemon does, with its disks made ahead): the helper does not (see
    /// `make_spare`).
    #[serde(default)]
    pub no_spare_disk: bool,
}

/// Where a helper forked with a prepared disk finds its mount.
pub const PREPARED_DISK_FD: i32 = 3;

/// The helper's one status line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperStatus {
    Ready {
        agent_pid: i32,
        socket: PathBuf,
    },
    Error {
        message: String,
        #[serde(default)]
        kind: FailureKind,
    },
}

/// What kind of failure a helper reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    #[default]
    Failed,
    /// The host's disk (the data directory) is full, or too small for what was asked.
    NoSpace,
}

/// /proc and /sys paths hidden from sandboxes: the OCI runtime spec's defaults, with
/// what runc and containerd added since (interrupt counts per CPU and device, the
/// powercap energy counters behind the "Platypus" power side channel).
const MASKED: [&str; 11] = [
    "proc/acpi",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Where the helper leaves the sandbox's own boot id (in its /dev, which the host's root
/// owns) for its first process to put over the kernel's, and removes it once that is
/// done: the host's boot id, the same in every sandbox and readable by all, would tell
/// sandboxes that they share a host, and a sandbox's start is its boot (a paused
/// sandbox resumed from its files starts again with a new one, as E2B's microVMs boot).
const BOOT_ID: &str = "dev/.boot_id";

/// /proc paths made read-only.
const READONLY: [&str; 6] = [
    "proc/asound",
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// The argument that starts a helper (and the second word of a forked helper's command
/// line, by which `warren doctor` knows it whatever the binary is called).
pub const ARG: &str = "__init";

/// Entry point of `warren __init`: the configuration on stdin, the status on stdout;
/// `shell` is the zygote's (see [`crate::shell`]), for a helper it forked. Never returns.
pub fn main(shell: Option<OwnedFd>) -> ! {
    let mut input = Vec::new();
    let config = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<HelperConfig>(&input).map_err(|e| e.to_string()));
    let status = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => fs::File::from(fd),
        Err(_) => std::process::exit(1),
    };
    match config {
        // The status pipe says when the processes are gone too: a caller that ends the
        // sandbox for good need not wait for the rest (see `Instance::end`).
        Ok(c) => {
            let stopped = status.as_fd().try_clone_to_owned().ok();
            // Taken before anything else is opened; without it the disk is made here.
            let disk = c
                .prepared_disk
                .then(|| warren_sys::fd::take_inherited(PREPARED_DISK_FD).ok())
                .flatten();
            run(&c, status, stopped, disk, shell)
        }
        Err(e) => report_and_exit(
            status,
            HelperStatus::Error {
                message: format!("bad helper configuration: {e}"),
                kind: FailureKind::Failed,
            },
        ),
    }
}

/// Builds the sandbox of `config`, writes one status line to `status`, then watches the
/// sandbox until it ends, writing a [`Stopped`] to `stopped` (if given) once its processes
/// are gone and before the rest of the teardown (with ports published, once they are
/// free, as it exits). `disk` is the mount of a disk made ahead
/// (see [`HelperConfig::prepared_disk`]); `shell`, when given, the namespace the sandbox
/// is built in a copy of (see [`crate::shell`]). Never returns.
pub fn run(
    config: &HelperConfig,
    mut status: fs::File,
    stopped: Option<OwnedFd>,
    disk: Option<OwnedFd>,
    shell: Option<OwnedFd>,
) -> ! {
    crate::trace::mark("helper: configuration read");
    // Nothing its caller left open may reach the sandbox (see warren_sys::fd).
    let keep = [
        status.as_raw_fd(),
        stopped.as_ref().map_or(-1, |f| f.as_raw_fd()),
        disk.as_ref().map_or(-1, |f| f.as_raw_fd()),
        shell.as_ref().map_or(-1, |f| f.as_raw_fd()),
    ];
    if let Err(e) = warren_sys::fd::close_all_except(&keep) {
        report_and_exit(
            status,
            HelperStatus::Error {
                message: format!("close inherited descriptors: {e}"),
                kind: FailureKind::Failed,
            },
        );
    }
    let mut monitor = match Sandbox::build(config, disk.map(DetachedMount::from), shell) {
        Ok(m) => m,
        Err(e) => report_and_exit(
            status,
            HelperStatus::Error {
                message: e.message,
                kind: e.kind,
            },
        ),
    };
    let heard = report(
        &mut status,
        &HelperStatus::Ready {
            agent_pid: monitor.agent.as_raw(),
            socket: monitor.socket.clone(),
        },
    );
    drop(status);
    if !heard {
        // The caller died before hearing of the sandbox (a daemon killed mid-create):
        // nobody will ever own it, and a restarted daemon has already written it off.
        drop(monitor);
        std::process::exit(1);
    }
    monitor.stopped = stopped;
    // The next sandbox's disk, copied beside this one's watch, now that it is ready; the
    // helper does not exit before the copy is placed or removed.
    let spare_size = config.spec.resources.disk.filter(|_| !config.no_spare_disk);
    monitor.spare = spare_size.and_then(|size| {
        let data = config.data_dir.clone();
        std::thread::Builder::new()
            .spawn(move || make_spare(&data, size, HOST_ID_BASE))
            .ok()
    });
    // The helper keeps none of its caller's input and output (a reader waiting for the
    // caller's stdout to close must not wait for the helper); stderr stays for traces.
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    std::process::exit(monitor.watch())
}

/// Writes one status line; false when nobody is there to read it.
fn report(out: &mut fs::File, status: &HelperStatus) -> bool {
    let mut line = serde_json::to_vec(status).unwrap_or_default();
    line.push(b'\n');
    out.write_all(&line).and_then(|()| out.flush()).is_ok()
}

fn report_and_exit(mut out: fs::File, status: HelperStatus) -> ! {
    let _ = report(&mut out, &status);
    std::process::exit(1)
}

/// Undoes, in reverse, what set-up did so far. Dropped on every failure path.
struct Cleanup {
    /// The host's mount namespace. Going back into it drops every mount of the sandbox
    /// at once (the private namespace dies with its last user), which is cheaper than
    /// unmounting one by one.
    host_mounts: Option<OwnedFd>,
    cgroup: Option<warren_sys::cgroup::Cgroup>,
    dirs: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
    agent: Option<Pid>,
    /// The sandbox's own mount namespace, held so that its last process's exit does not
    /// take it down: that unmounts its whole tree and waits for an expedited RCU grace
    /// period, after which alone the exit is told. Let go once the caller has heard that
    /// the processes are gone.
    sandbox_mounts: Option<OwnedFd>,
    /// The binds the root overlay was mounted from, and their directory (see
    /// `mount_overlay_staged`): gone with this process's mount namespace, their
    /// directories removed after it.
    staged: Vec<PathBuf>,
    /// The host end of a `nat` sandbox's veth pair.
    link: Option<String>,
    /// Where the sandbox's own disk is mounted, when it has one.
    disk: Option<PathBuf>,
    /// The sandbox ends for good (`warren run --rm`, or a removal: see [`END_SIGNAL`]):
    /// its disk's image is removed next, and nothing it writes on its way down need
    /// reach the host's disk.
    for_good: bool,
    /// Made by `warren run`, which put the run directories in memory: they are released
    /// last when none is left (see [`crate::rundir`]).
    release_run: Option<Paths>,
}

impl Cleanup {
    fn run(&mut self) {
        self.stop_processes();
        self.remove();
    }

    fn stop_processes(&mut self) {
        // Killing PID 1 kills its whole pid namespace, and its exit completes only once
        // every task in it is gone: after the wait, the cgroup is empty and removable at
        // once. Frozen tasks cannot die, so a paused sandbox is thawed first.
        if let Some(cg) = &self.cgroup {
            if cg.is_frozen().unwrap_or(false) {
                let _ = cg.thaw();
            }
        }
        if let Some(pid) = self.agent.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        // The kernel would remove the pair with the network namespace, but later, on a
        // work queue: deleted here, it is gone before the caller hears that the sandbox is.
        if let Some(link) = self.link.take() {
            crate::network::remove_link(&link);
        }
    }

    fn remove(&mut self) {
        drop(self.sandbox_mounts.take());
        // Before the mounts go, with the sandbox's processes gone: the unmount's journal
        // commit is not forced to the host's disk for an image about to be removed. Held
        // until the mounts are gone, then undone.
        let cacheless = self
            .disk
            .take()
            .filter(|_| self.for_good)
            .and_then(|disk| warren_sys::mount::write_through(&disk).ok().flatten());
        if let Some(cg) = self.cgroup.take() {
            // Normally a no-op: only a task that escaped the namespace would be left.
            let _ = cg.kill_all(Duration::from_secs(5));
            let _ = cg.remove();
        }
        let back_home = self
            .host_mounts
            .take()
            .is_some_and(|fd| ns::setns(&fd, ns::CloneFlags::CLONE_NEWNS).is_ok());
        // setns refuses a process with threads (published ports): unmount instead.
        for m in self.mounts.drain(..).rev() {
            if !back_home {
                let _ = unmount(&m);
            }
        }
        // Before the disk's cache is back: a bind of its writable layer holds it.
        warren_sys::mount::drop_staged(&std::mem::take(&mut self.staged));
        drop(cacheless);
        for d in self.dirs.drain(..).rev() {
            if crate::tree::remove(&d).is_err() {
                let _ = fs::remove_file(&d);
            }
        }
        if let Some(paths) = self.release_run.take().filter(|_| back_home) {
            let _ = crate::rundir::release(&paths);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// A built sandbox, watched by this helper.
struct Sandbox {
    /// The sandbox's host ids, held as long as the helper lives.
    _ids: IdSlot,
    agent: Pid,
    /// Written to once every process of the sandbox is gone (see `watch`).
    stopped: Option<OwnedFd>,
    /// The caller removes the sandbox itself, even one whose PID 1 ended (`warren run`).
    caller_removes: bool,
    socket: PathBuf,
    /// `RUN/template`: which template the sandbox's processes run from.
    template_mark: PathBuf,
    cleanup: Cleanup,
    publishers: Vec<std::thread::JoinHandle<()>>,
    /// The thread copying the next sandbox's disk, joined before the helper exits.
    spare: Option<std::thread::JoinHandle<()>>,
    /// When the helper gives back what it held only for the set-up (see `settle`),
    /// unless the sandbox ends first; `None` once done.
    settle_at: Option<std::time::Instant>,
}

/// Why a sandbox could not be made, and what kind of failure it was: the caller answers
/// a full disk differently from a bad request or a broken host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetupError {
    kind: FailureKind,
    pub(crate) message: String,
}

pub(crate) type Setup<T> = Result<T, SetupError>;

impl From<String> for SetupError {
    fn from(message: String) -> Self {
        Self {
            kind: FailureKind::Failed,
            message,
        }
    }
}

impl From<&str> for SetupError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl SetupError {
    pub(crate) fn no_space(message: String) -> Self {
        Self {
            kind: FailureKind::NoSpace,
            message,
        }
    }
}

impl From<crate::Error> for SetupError {
    fn from(e: crate::Error) -> Self {
        Self {
            kind: match e {
                crate::Error::NoSpace { .. } => FailureKind::NoSpace,
                _ => FailureKind::Failed,
            },
            message: e.to_string(),
        }
    }
}

impl From<crate::network::NetError> for SetupError {
    fn from(e: crate::network::NetError) -> Self {
        Self {
            kind: match &e {
                crate::network::NetError::Io(e) => kind_of(e),
                _ => FailureKind::Failed,
            },
            message: e.to_string(),
        }
    }
}

/// What an I/O error says about the host: a full disk is told apart by its errno.
fn kind_of(e: &std::io::Error) -> FailureKind {
    if crate::is_disk_full(e) {
        FailureKind::NoSpace
    } else {
        FailureKind::Failed
    }
}

fn fail(what: &str) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |e| SetupError {
        kind: kind_of(&e),
        message: format!("{what}: {e}"),
    }
}

impl Sandbox {
    fn build(
        config: &HelperConfig,
        disk: Option<DetachedMount>,
        shell: Option<OwnedFd>,
    ) -> Setup<Self> {
        let spec = &config.spec;
        if let Some(parent) = config.die_with_parent {
            ns::set_parent_death_signal(Signal::SIGTERM).map_err(fail("set death signal"))?;
            if nix::unistd::getppid().as_raw() != parent {
                return Err("the caller exited before the sandbox was made".into());
            }
        } else {
            // Outlive the daemon, and do not take its terminal's Ctrl-C as a stop.
            nix::unistd::setsid().map_err(|e| format!("new session: {e}"))?;
        }
        // Signals are taken synchronously by `watch`; blocked from here on so that a
        // SIGTERM during set-up still leads to a full clean-up, not a half-made sandbox.
        block_signals()?;

        let paths = Paths {
            run: config.run_dir.clone(),
            data: config.data_dir.clone(),
        };
        let ids = IdSlot::allocate()?;
        let template = template::resolve(&paths, &spec.template)?;
        crate::trace::mark("helper: template resolved");
        let run = paths.sandbox_run(&spec.id);
        let data = paths.sandbox_data(&spec.id);
        let mut cleanup = Cleanup {
            host_mounts: None,
            cgroup: None,
            dirs: vec![],
            mounts: vec![],
            agent: None,
            sandbox_mounts: None,
            staged: vec![],
            link: None,
            disk: None,
            for_good: config.ephemeral,
            release_run: config.die_with_parent.map(|_| paths.clone()),
        };
        fs::create_dir_all(&run).map_err(fail("create the run directory"))?;
        cleanup.dirs.push(run.clone());
        if config.ephemeral {
            cleanup.dirs.push(data.clone());
        }
        if !in_memory_layer(config) {
            fs::create_dir_all(&data).map_err(fail("create the data directory"))?;
        }
        fs::write(
            run.join("helper.pid"),
            std::process::id().to_string().as_bytes(),
        )
        .map_err(fail("write the helper pid"))?;
        // Which template the root is built on: a template in use is not removed.
        fs::write(run.join("template"), spec.template.as_bytes())
            .map_err(fail("record the template"))?;
        // The host uid of the sandbox's root, for people and tests reading the host.
        fs::write(run.join("uid"), ids.base.to_string()).map_err(fail("record the ids"))?;

        let hierarchy = Hierarchy::detect_shared().map_err(|e| e.to_string())?;
        hierarchy.prepare().map_err(|e| e.to_string())?;
        let cgroup = hierarchy.cgroup(&format!("{PREFIX}{}", spec.id));
        let renamed = config
            .spare_cgroup
            .as_deref()
            .is_some_and(|spare| cgroup.rename_from(&hierarchy.cgroup(spare)).is_ok());
        if !renamed {
            cgroup
                .create(&crate::cgroup_limits(&spec.resources))
                .map_err(|e| e.to_string())?;
        }
        cleanup.cgroup = Some(cgroup.clone());
        crate::trace::mark("helper: cgroup created");

        // Everything mounted from here on lives in this private namespace and dies with it.
        cleanup.host_mounts = Some(
            ns::open_ns(nix::unistd::getpid(), "mnt").map_err(fail("open the mount namespace"))?,
        );
        ns::unshare(ns::CloneFlags::CLONE_NEWNS).map_err(fail("new mount namespace"))?;
        set_propagation(Path::new("/"), MsFlags::MS_PRIVATE).map_err(fail("private mounts"))?;
        crate::trace::mark("helper: mount namespace");

        let root = run.join("root");
        fs::create_dir_all(&root).map_err(fail("create the root mount point"))?;
        let (rw, disk) = writable_layer(config, &run, &data, disk)?;
        if spec.resources.disk.is_some() {
            cleanup.disk.clone_from(&disk);
        }
        cleanup.mounts.extend(disk);
        crate::trace::mark("helper: writable layer");
        template.check_layers()?;
        // Files are stored under the common range; the sandbox sees them under its own.
        let storage = ns::idmap_userns(&ids.storage_map(), &ids.storage_map())
            .map_err(fail("make the id mapping of the sandbox's files"))?;
        crate::trace::mark("helper: id mapping made");
        // The binds of its layers go with this process's mount namespace, not one by one
        // now (see `mount_overlay_staged`).
        cleanup.staged = warren_sys::mount::mount_overlay_staged(
            &run,
            &template.lower,
            &rw,
            Some(storage.as_fd()),
            template.meta.setuid,
        )
        .map_err(fail("mount the root overlay"))?;
        cleanup.mounts.push(root.clone());
        crate::trace::mark("helper: overlay mounted");
        // An image's root may lack the mount points the sandbox needs.
        for d in ["proc", "sys", "dev"] {
            mkdir_no_follow(&root, d)?;
        }
        populate_root(&template, &root, spec, &paths, &ids, storage.as_fd())?;
        drop(storage);
        // The child works from this descriptor: as the sandbox's namespace owner it may
        // not walk the host's directories that lead to the root.
        let mut root_fd: OwnedFd = fs::File::open(&root).map_err(fail("open the root"))?.into();
        crate::trace::mark("helper: root populated");

        let socket = run.join("agent.sock");
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(fail("bind the agent socket"))?;

        let mut env = template.env.clone();
        env.extend(spec.env.clone());
        let hostname = spec.hostname.clone().unwrap_or_else(|| "sandbox".into());
        let seccomp = warren_sys::seccomp::SeccompProgram::default_policy_shared()
            .map_err(|e| format!("the seccomp policy: {e}"))?
            .clone();
        crate::trace::mark("helper: seccomp policy");

        // On cgroup v1 the child moves itself in (see `Cgroup::open_for_self`: the helper
        // moving it would wait for an RCU grace period); on v2 the helper moves it.
        let mut join = cgroup.open_for_self().map_err(|e| e.to_string())?;
        // The go, and with it the child's own OOM score file (see below).
        let (go_r, go_w) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let (st_r, st_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        // Where the child's command line is: this helper's, whose memory it copies.
        let title = warren_sys::proctitle::ArgArea::own().map_err(fail("find the command line"))?;
        // From here to the clone this helper stands in its copy of the shell, with the
        // root tree placed there; the namespace to come back to right after.
        let back = match &shell {
            Some(shell) => {
                let (fd, back) = enter_shell(shell, &root)?;
                root_fd = fd;
                Some(back)
            }
            None => None,
        };
        let cloned = ns::clone_process_owned_by(ns::sandbox_flags(), ids.owner);
        if let (Ok(Forked::Parent(_)) | Err(_), Some(back)) = (&cloned, &back) {
            ns::setns(back, ns::CloneFlags::CLONE_NEWNS)
                .map_err(fail("return from the shell namespace"))?;
        }
        match cloned.map_err(fail("clone the sandbox"))? {
            Forked::Child => {
                drop(go_w);
                drop(st_r);
                let err = child_main(ChildArgs {
                    go: go_r,
                    status: st_w,
                    root: root_fd,
                    hostname: &hostname,
                    join: join.take(),
                    listener,
                    env,
                    seccomp,
                    user: template.meta.user.as_deref().map(template::agent_user),
                    workdir: template.meta.workdir.as_ref().map(PathBuf::from),
                    allow_setuid: template.meta.setuid,
                    in_shell: back.is_some(),
                    title,
                });
                // Only reached on failure; the status pipe carried the reason.
                let _ = err;
                std::process::exit(1);
            }
            Forked::Parent(child) => {
                crate::trace::mark("helper: cloned");
                drop(go_r);
                drop(st_w);
                drop(listener);
                drop(root_fd);
                drop(join);
                cleanup.agent = Some(child);
                // Cloning as the namespace's owner changed this process's credentials for
                // a moment, and the kernel forgets the death signal on any such change.
                if let Some(parent) = config.die_with_parent {
                    ns::set_parent_death_signal(Signal::SIGTERM)
                        .map_err(fail("set death signal"))?;
                    if nix::unistd::getppid().as_raw() != parent {
                        return Err("the caller exited while the sandbox was made".into());
                    }
                }
                let setup = (|| -> Setup<()> {
                    ns::write_id_maps(child, 0, ids.base, ID_COUNT)
                        .map_err(fail("write the id maps"))?;
                    cgroup
                        .finish_join(child.as_raw())
                        .map_err(|e| e.to_string().into())
                })();
                setup?;
                crate::trace::mark("helper: maps and cgroup set");
                // The agent gives every process it starts its OOM score by raising its
                // own around the clone (see `warren_sys::child`), through this file: its
                // /proc files are global root's (its memory is this helper's copy, made
                // in the host's user namespace, and not dumpable), so only this process
                // can open it. Without it, processes are raised once they run.
                let score = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/{child}/oom_score_adj"))
                    .map(OwnedFd::from);
                let fds: Vec<BorrowedFd> = score.iter().map(|f| f.as_fd()).collect();
                warren_sys::fd::send_fds(go_w.as_fd(), b'g', &fds)
                    .map_err(fail("start the sandbox"))?;
                drop((go_w, score));
                // The child writes READY when set up, or why not (a `HelperStatus`); a
                // child that died saying nothing did not make it either.
                let mut msg = String::new();
                let _ = fs::File::from(st_r).read_to_string(&mut msg);
                match msg.strip_prefix(READY) {
                    Some("") => {}
                    _ if msg.is_empty() => {
                        return Err("the sandbox's first process died while setting up".into())
                    }
                    _ => match serde_json::from_str(&msg) {
                        Ok(HelperStatus::Error { message, kind }) => {
                            return Err(SetupError { kind, message })
                        }
                        _ => return Err(msg.into()),
                    },
                }
                crate::trace::mark("helper: child ready");
                cleanup.sandbox_mounts = ns::open_ns(child, "mnt").ok();
                // Its network namespace is the child's own from its set-up on; nothing of
                // the sandbox runs before it is answered for.
                if spec.network == NetworkMode::Nat {
                    let lease = crate::network::setup_nat(
                        &config.run_dir,
                        &spec.id,
                        child,
                        std::process::id(),
                    )?;
                    cleanup.dirs.push(lease);
                    cleanup.link = Some(crate::network::link_name(&spec.id));
                }
                // Its mount over the kernel's holds it now.
                let _ = fs::remove_file(root.join(BOOT_ID));
                fs::write(run.join("agent.pid"), child.to_string())
                    .map_err(fail("write the agent pid"))?;
                let mut publishers = Vec::new();
                for p in &spec.publish {
                    let h = crate::network::publish(child, *p)?;
                    publishers.push(h);
                }
                Ok(Sandbox {
                    _ids: ids,
                    stopped: None,
                    caller_removes: config.die_with_parent.is_some(),
                    agent: child,
                    socket,
                    template_mark: run.join("template"),
                    cleanup,
                    publishers,
                    spare: None,
                    settle_at: None,
                })
            }
        }
    }

    /// Waits for one of `set`'s signals: whether it asks for the sandbox's stop (a
    /// SIGCHLD does not), and for good ([`END_SIGNAL`]). The helper settles first if
    /// no signal comes before it is time to.
    fn stop_asked(&mut self, set: &SigSet) -> bool {
        if let Some(at) = self.settle_at {
            if !signalled_within(set, at.saturating_duration_since(std::time::Instant::now())) {
                self.settle_at = None;
                self.settle();
            }
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => false,
            Ok(END_SIGNAL) => {
                self.cleanup.for_good = true;
                true
            }
            Ok(_) => true,
        }
    }

    /// Gives back what this helper held only to build the sandbox: the thread that
    /// copied the next disk (once done), the heap's free pages, and the page tables of
    /// its code (some 30 KiB; the teardown maps what it runs again).
    fn settle(&mut self) {
        if self.spare.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(t) = self.spare.take() {
                let _ = t.join();
            }
        }
        warren_sys::heap::release_read_only_segments();
        warren_sys::heap::release_free();
        crate::trace::mark("helper: settled");
    }

    /// Waits until PID 1 dies or a stop is asked for, then tears everything down.
    fn watch(mut self) -> i32 {
        self.settle_at = Some(std::time::Instant::now() + SETTLE_AFTER);
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            set.add(s);
        }
        set.add(END_SIGNAL);
        let code = loop {
            match waitpid(self.agent, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(WaitStatus::Exited(_, c)) => {
                    self.cleanup.agent = None;
                    break c;
                }
                Ok(WaitStatus::Signaled(_, s, _)) => {
                    self.cleanup.agent = None;
                    break 128 + s as i32;
                }
                Ok(_) => {}
                Err(_) => {
                    self.cleanup.agent = None;
                    break 1;
                }
            }
            if self.stop_asked(&set) {
                break 0;
            }
        };
        if self.caller_removes && self.cleanup.agent.is_none() {
            // PID 1 ended by itself: the caller (`warren run`) reads the sandbox's
            // counters once the command's connection closes (was it the OOM killer?),
            // which must not be gone by then. It asks for the rest, or dies, which sends
            // SIGTERM.
            while !self.stop_asked(&set) {}
        }
        crate::trace::mark("helper: stop asked");
        self.cleanup.stop_processes();
        // Nothing runs from the template any more: it may be removed while the rest of
        // the teardown goes on (the mounts left hold its files until they go).
        let _ = fs::remove_file(&self.template_mark);
        // A caller that only needs the processes gone may go on now; the rest of the
        // teardown does not need it to wait. Nor need whoever reads the caller's stderr,
        // which this helper has held since it was forked (`$(warren run ...)` and a pipe
        // wait until every holder closes it): it lets go first, unless it prints traces.
        // Published ports are this process's listeners, free only once they are dropped:
        // their caller hears after that (below), so that a port is free when it does.
        // What the caller cannot read once the cgroup is gone: whether the OOM killer
        // had a hand in the end (a sandbox whose first process it took is told so).
        let told = Stopped {
            oom_kills: self.cleanup.cgroup.as_ref().map_or(0, |c| c.oom_kills()),
        }
        .encode();
        if let Some(fd) = self.stopped.take() {
            if !crate::trace::enabled() {
                if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
                    let _ = nix::unistd::dup2(null.as_raw_fd(), 2);
                }
            }
            if self.publishers.is_empty() {
                let _ = nix::unistd::write(&fd, &told);
            } else {
                self.stopped = Some(fd);
            }
        }
        crate::trace::mark("helper: processes gone");
        self.cleanup.run();
        crate::trace::mark("helper: torn down");
        drop(self.publishers);
        // With ports published the caller hears once they are free, now. `warren run`'s
        // hears the pipe's end instead, as a sign to release the run directories this
        // helper could not (see `Sandbox::destroy`); it reads the counters itself.
        if let Some(fd) = self.stopped.take() {
            if !self.caller_removes {
                let _ = nix::unistd::write(&fd, &told);
            }
        }
        if let Some(t) = self.spare.take() {
            let _ = t.join();
        }
        code
    }
}

/// How long a helper waits, once its sandbox is ready, before it gives back what it
/// held for the set-up: a sandbox removed sooner (a create, a command and a removal in
/// a row) leaves its helper's code mapped for its teardown.
const SETTLE_AFTER: Duration = Duration::from_secs(1);

/// Whether one of `set`'s signals (blocked) is pending within `timeout`; it stays
/// pending, for the wait that follows.
fn signalled_within(set: &SigSet, timeout: Duration) -> bool {
    let Ok(fd) =
        nix::sys::signalfd::SignalFd::with_flags(set, nix::sys::signalfd::SfdFlags::SFD_CLOEXEC)
    else {
        return true;
    };
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    crate::namespace::readable_within(fd.as_fd(), nix::poll::PollTimeout::from(ms)).unwrap_or(true)
}

/// What a helper writes on its stopped pipe once the sandbox's processes are gone: a byte
/// (`s`, all a caller waiting for the processes to be gone reads), then the sandbox's
/// counters of that moment, which its cgroup, removed next, no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Processes the OOM killer killed in the sandbox.
    pub oom_kills: u64,
}

impl Stopped {
    const LEN: usize = 9;

    fn encode(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = b's';
        b[1..].copy_from_slice(&self.oom_kills.to_le_bytes());
        b
    }

    /// What a helper wrote (`encode`), read whole; `None` for anything else (a
    /// helper that died first, or wrote only the byte).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let (&[b's'], rest) = b.split_first_chunk::<1>()? else {
            return None;
        };
        let oom_kills = u64::from_le_bytes(rest.try_into().ok()?);
        Some(Self { oom_kills })
    }
}

/// What a helper is sent, instead of SIGTERM, when its sandbox ends for good: the same
/// stop and teardown, and its disk's last writes are not forced to the host's disk
/// (its image is removed next).
pub const END_SIGNAL: Signal = Signal::SIGUSR2;

fn block_signals() -> Setup<()> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        END_SIGNAL,
    ] {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("block signals: {e}").into())
}

/// The directory holding the overlay's upper and work directories: on the host's disk,
/// in memory, or inside a loop-mounted ext4 image of the requested size when the disk is
/// bounded (whose mount point is returned too, for the teardown). `prepared` is that
/// image's mount when the daemon made it ahead.
fn writable_layer(
    config: &HelperConfig,
    run: &Path,
    data: &Path,
    prepared: Option<DetachedMount>,
) -> Setup<(PathBuf, Option<PathBuf>)> {
    let (base, mount) = match config.spec.resources.disk {
        // Nothing of an ephemeral sandbox outlives it: its layer lives in memory (charged
        // to the sandbox's own memory cgroup as it writes), in this helper's mount
        // namespace, and no directory is made or removed on the host's disk for it.
        None if in_memory_layer(config) => {
            let mnt = run.join("layer");
            fs::create_dir(&mnt).map_err(fail("create the layer mount point"))?;
            mount_fs(
                "warren-layer",
                &mnt,
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755"),
            )
            .map_err(fail("mount the in-memory layer"))?;
            (mnt.clone(), Some(mnt))
        }
        None => (data.to_path_buf(), None),
        Some(size) => {
            let mnt = run.join("disk");
            fs::create_dir_all(&mnt).map_err(fail("create the disk mount point"))?;
            match prepared {
                Some(m) => m.attach(&mnt).map_err(fail("place the disk"))?,
                None => {
                    let img = data.join("disk.img");
                    let fresh = !img.exists();
                    if fresh {
                        make_ext4(&img, size, HOST_ID_BASE, Image::Disk)?;
                    }
                    mount_image(&img, &mnt, fresh)?;
                }
            }
            (mnt.clone(), Some(mnt))
        }
    };
    let dir = fs::File::open(&base).map_err(fail("open the writable layer"))?;
    layer_dirs(dir.as_fd()).map_err(fail("create the writable layer"))?;
    Ok((base, mount))
}

/// The directories of a writable layer, [`LAYER_DIRS`], in the directory open as `base`,
/// owned by the sandbox's root (stored as the common range's root: see [`crate::ids`]):
/// made, or given to it, only where they are not already so (a sandbox started again
/// has them; its disk is not written for it).
pub(crate) fn layer_dirs(base: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
    let base = Some(base.as_raw_fd());
    for d in LAYER_DIRS {
        // Made, as it mostly is (a new disk or layer): no look first.
        match mkdirat(base, d, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let st = fstatat(base, d, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
                    return Err(std::io::Error::other(format!(
                        "{d} of the writable layer is not a directory"
                    )));
                }
                if st.st_uid == HOST_ID_BASE && st.st_gid == HOST_ID_BASE {
                    continue;
                }
            }
            Err(e) => return Err(e.into()),
        }
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(HOST_ID_BASE),
            nix::unistd::Gid::from_raw(HOST_ID_BASE),
        );
        nix::unistd::fchownat(base, d, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

/// A writable layer's directories: the overlay's upper directory, the sandbox root's
/// own, and its work directory beside it.
pub(crate) const LAYER_DIRS: [&str; 2] = ["upper", "work"];

/// An ephemeral sandbox without a disk limit keeps its writable layer in memory.
fn in_memory_layer(config: &HelperConfig) -> bool {
    config.ephemeral && config.spec.resources.disk.is_none()
}

/// What an ext4 image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Image {
    /// A sandbox's disk: its size is fixed for its life, so the image has no blocks kept
    /// for growing it while mounted (`resize_inode`: 2 MiB of a 4 GiB image's 2.2 MiB of
    /// metadata, copied and written out for every new sandbox).
    Disk,
    /// A home volume, which grows (offline, `resize2fs`) when its owner asks.
    Volume,
}

/// Makes a sparse ext4 image of `size` bytes whose root directory `owner` owns, at
/// `img` (a sandbox's `DATA/sandboxes/ID/disk.img` or a volume's
/// `DATA/volumes/NAME/volume.img`).
///
/// The first image of a kind, size and owner is made by `mkfs.ext4` (some 7-10 ms: a
/// process, and the metadata of every block group written) as a blank kept in
/// `DATA/.blank-disks`; each image after it is a sparse copy of that blank (a disk's
/// 180 KiB of metadata, a volume's 2 MiB or so). Copies share the blank's filesystem
/// UUID, which nothing mounts by.
pub(crate) fn make_ext4(img: &Path, size: u64, owner: u32, kind: Image) -> Setup<()> {
    const MIN: u64 = 16 << 20;
    if size < MIN {
        return Err(format!("a disk of {size} bytes is too small: give at least 16M").into());
    }
    // A sparse image takes its blocks as they are written: one larger than the free space
    // could never be filled, and would fail its sandbox's writes at some later moment
    // rather than now.
    let parent = img.parent().unwrap_or(Path::new("/"));
    if let Ok(st) = nix::sys::statvfs::statvfs(parent) {
        let free = st.blocks_available() * st.fragment_size();
        if size > free {
            return Err(SetupError::no_space(format!(
                "a disk of {} MiB was asked for and the host has {} MiB free in the data \
                 directory; ask for less or free space",
                size >> 20,
                free >> 20
            )));
        }
    }
    let blank = img
        .ancestors()
        .nth(3)
        .map(|data| blank_disk(data, size, owner, kind));
    if let Some(b) = blank.as_ref().filter(|b| b.exists()) {
        if copy_of_blank(b, img).is_ok() {
            return Ok(());
        }
    }
    let tmp = img.with_extension("tmp");
    mkfs_ext4(&tmp, size, owner, kind)?;
    if let Some(b) = &blank {
        // Kept for the next image of this size, made aside and renamed into place so a
        // half-made blank is never copied. Failing to keep it costs only time.
        let _ = keep_blank(&tmp, b);
    }
    fs::rename(&tmp, img).map_err(fail("place the disk image"))
}

/// A copy of the kept blank `blank` at `to`: the spare made ahead (see [`make_spare`]),
/// taken whole by one rename (of two takers only one gets it), else a copy made now.
pub(crate) fn copy_of_blank(blank: &Path, to: &Path) -> std::io::Result<()> {
    let spare = blank.with_extension("spare");
    if made_since_boot(&spare) && fs::rename(&spare, to).is_ok() {
        return Ok(());
    }
    copy_into_place(blank, to, Durable::Mounted)
}

/// Whether the file at `path` was last written since the host booted. A spare is not
/// synced when made: one from before a crash of the host may be torn, and is neither
/// taken nor kept (a clock set back since the boot makes spares look old: slower
/// creates, never a torn disk).
fn made_since_boot(path: &Path) -> bool {
    static BOOT: std::sync::OnceLock<Option<std::time::SystemTime>> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let secs = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    });
    let written = fs::metadata(path).and_then(|m| m.modified());
    matches!((boot, written), (Some(boot), Ok(w)) if w >= *boot)
}

/// The kept blank image of `kind`, `size` bytes, whose root `owner` owns, under the data
/// directory `data`.
pub(crate) fn blank_disk(data: &Path, size: u64, owner: u32, kind: Image) -> PathBuf {
    let name = match kind {
        Image::Disk => format!("{size}-{owner}-disk.img"),
        Image::Volume => format!("{size}-{owner}.img"),
    };
    data.join(".blank-disks").join(name)
}

/// Leaves a copy of the disk blank of `size` and `owner`
/// (`DATA/.blank-disks/SIZE-OWNER-disk.spare`)
/// for the next [`make_ext4`] of that size to take by a rename, when there is a blank
/// and no spare yet: the copy then happens after a sandbox is ready rather than in the
/// next one's create. Failing costs only that time.
pub(crate) fn make_spare(data: &Path, size: u64, owner: u32) {
    let blank = blank_disk(data, size, owner, Image::Disk);
    let spare = blank.with_extension("spare");
    if !blank.exists() || made_since_boot(&spare) {
        return;
    }
    // A half-made spare is never taken (one from before the boot is replaced); a data
    // directory removed meanwhile stays removed.
    let _ = copy_into_place(&blank, &spare, Durable::Mounted);
}

/// `mkfs.ext4` of a new sparse file `at` of `size` bytes, its root owned by `owner`.
fn mkfs_ext4(at: &Path, size: u64, owner: u32, kind: Image) -> Setup<()> {
    let f = fs::File::create(at).map_err(fail("create the disk image"))?;
    f.set_len(size).map_err(fail("size the disk image"))?;
    drop(f);
    let mut mkfs = std::process::Command::new("mkfs.ext4");
    if kind == Image::Disk {
        mkfs.args(["-O", "^resize_inode"]);
    }
    let out = mkfs
        .env("LC_ALL", "C")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg(format!(
            "lazy_itable_init=1,lazy_journal_init=1,root_owner={owner}:{owner}"
        ))
        .arg(at)
        .output()
        .map_err(|e| format!("run mkfs.ext4 (install e2fsprogs): {e}"))?;
    if !out.status.success() {
        let _ = fs::remove_file(at);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Its complaint names the image's path: the caller hears only what happened.
        return Err(if crate::tool_says_disk_full(&stderr) {
            SetupError::no_space(format!("make the disk image: {}", crate::DISK_FULL))
        } else {
            format!("mkfs.ext4 failed: {}", stderr.trim()).into()
        });
    }
    Ok(())
}

/// Copies the fresh image `from` to the blank `to`, through a file of its own.
fn keep_blank(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to.parent().unwrap_or(Path::new("/")))?;
    copy_into_place(from, to, Durable::Synced)
}

/// Whether a copy is synced to the disk before it is put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    /// A blank, kept for good: synced.
    Synced,
    /// An image that is mounted before anything uses it: not synced here, since
    /// attaching it to its loop device writes it out (`LOOP_CONFIGURE` syncs the file);
    /// a spare a crash of the host may have left torn is never taken (see
    /// [`made_since_boot`]).
    Mounted,
}

/// Copies `from` to `to` beside it under a dot-name no taker looks for, then renames it
/// into place: a half-made copy is never seen at `to`. Creates nothing but that file.
pub(crate) fn copy_into_place(from: &Path, to: &Path, durable: Durable) -> std::io::Result<()> {
    let id = crate::new_id().map_err(|e| std::io::Error::other(e.to_string()))?;
    let aside = to.with_file_name(format!(".{id}"));
    let r = copy_sparse(from, &aside)
        .and_then(|dst| match durable {
            Durable::Synced => dst.sync_data(),
            Durable::Mounted => Ok(()),
        })
        .and_then(|()| fs::rename(&aside, to));
    if r.is_err() {
        let _ = fs::remove_file(&aside);
    }
    r
}

/// Copies the sparse file `from` to a new file `to` of the same size, writing only its
/// data extents (the holes stay holes). Each extent is copied by the kernel
/// (`copy_file_range`, through `std::io::copy`): no buffer of this process holds the
/// bytes, so a helper that makes a spare keeps no megabyte of heap for the rest of its
/// sandbox's life.
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<fs::File> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Read, Seek, SeekFrom};
    let src = fs::File::open(from)?;
    let size = src.metadata()?.len();
    let dst = fs::File::create(to)?;
    dst.set_len(size)?;
    let mut pos = 0i64;
    let end = i64::try_from(size).map_err(std::io::Error::other)?;
    while pos < end {
        let data = match lseek(src.as_raw_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            // No data past `pos`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src.as_raw_fd(), data, Whence::SeekHole)?;
        let at = u64::try_from(data).map_err(std::io::Error::other)?;
        let len = u64::try_from(hole - data).map_err(std::io::Error::other)?;
        (&src).seek(SeekFrom::Start(at))?;
        (&dst).seek(SeekFrom::Start(at))?;
        if std::io::copy(&mut (&src).take(len), &mut &dst)? != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pos = hole;
    }
    Ok(dst)
}

/// Mounts the ext4 image `img` at `target`; `fresh`: the caller just made it (see
/// [`warren_sys::mount::attach_loop`]).
pub(crate) fn mount_image(img: &Path, target: &Path, fresh: bool) -> Setup<()> {
    let dev = warren_sys::mount::attach_loop(img, fresh).map_err(fail("attach a loop device"))?;
    let src = dev.path.display().to_string();
    mount_fs(
        &src,
        target,
        "ext4",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
    .map_err(fail("mount the disk image"))?;
    // Costs only time if it cannot be said.
    let _ = warren_sys::mount::ext4_no_bitmap_prefetch(&dev.path);
    Ok(())
}

/// Binds the template's host directories, builds /dev and mounts the volumes (their
/// owners shown through `storage`, see [`crate::ids`]).
fn populate_root(
    template: &Template,
    root: &Path,
    spec: &SandboxSpec,
    paths: &Paths,
    ids: &IdSlot,
    storage: BorrowedFd<'_>,
) -> Setup<()> {
    for host in &template.host_binds {
        let target = root.join(host.strip_prefix("/").unwrap_or(host));
        // Read-only, no setuid and no devices on every mount of the tree, submounts
        // included (a remount of the top would leave those writable).
        bind_with(host, &target, MountAttrs::PROTECTED)
            .map_err(fail("bind a template directory"))?;
    }
    // One tmpfs holds /dev and /dev/shm (a superblock is kernel memory of its own, and
    // one more entry every memory cgroup's removal walks): its size is the shared
    // memory's, since nothing else in it can grow. /dev itself belongs to the host's
    // root, whom the sandbox's root is not; /dev/shm is a directory the sandbox owns,
    // bound onto itself without exec, setuid or devices.
    let shm_size = spec.resources.memory.map(|m| m / 2).unwrap_or(64 << 20);
    let dev = root.join("dev");
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!("mode=755,size={shm_size}")),
    )
    .map_err(fail("mount /dev"))?;
    let nodes: [(&str, u64, u64); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| fail(&format!("create /dev/{name}"))(e.into()))?;
        // mknod applies the umask; these must be usable by every user.
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(fail("chmod a device"))?;
    }
    for d in ["pts", "shm"] {
        fs::create_dir(dev.join(d)).map_err(fail("create a /dev directory"))?;
    }
    fs::write(root.join(BOOT_ID), boot_id()?).map_err(fail("write the boot id"))?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(fail("link a /dev entry"))?;
    }
    let shm = dev.join("shm");
    let base = Some(nix::unistd::Uid::from_raw(ids.base));
    nix::unistd::chown(&shm, base, Some(nix::unistd::Gid::from_raw(ids.base)))
        .map_err(|e| fail("own /dev/shm")(e.into()))?;
    fs::set_permissions(&shm, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .map_err(fail("open /dev/shm to every user"))?;
    let shared = MountAttrs {
        noexec: true,
        ..MountAttrs::PLAIN
    };
    bind_with(&shm, &shm, shared).map_err(fail("mount /dev/shm"))?;
    for (i, v) in spec.volumes.iter().enumerate() {
        mount_volume(v, i, root, paths, storage)?;
    }
    if !spec.mounts.is_empty() {
        // Host ids show as themselves inside: through the sandbox's own maps.
        let own = ns::idmap_userns(&ids.map(), &ids.map())
            .map_err(fail("make the id mapping of host directories"))?;
        for m in &spec.mounts {
            if let Some(why) = HostMount::target_problem(&m.target) {
                return Err(why.into());
            }
            mkdir_no_follow(root, &m.target)?;
            let target = root.join(m.target.trim_start_matches('/'));
            crate::mounts::place(m, &target, Some(own.as_fd()))
                .map_err(fail("mount a host directory"))?;
        }
    }
    Ok(())
}

/// A fresh boot id, as the kernel shows one: a random (version 4) UUID and a newline.
fn boot_id() -> Setup<String> {
    let b = warren_types::random::bytes(16).map_err(|e| format!("make a boot id: {e}"))?;
    let mut b: [u8; 16] = b.try_into().map_err(|_| "make a boot id: short read")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = warren_types::random::to_hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}\n",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// A named volume: a host directory, or an ext4 image when it has a size, made on first
/// use and owned by the sandbox's `user`. Shown through `storage`, honouring no setuid
/// bit and no device node.
fn mount_volume(
    v: &VolumeMount,
    index: usize,
    root: &Path,
    paths: &Paths,
    storage: BorrowedFd<'_>,
) -> Setup<()> {
    let dir = paths.volume(&v.name);
    let target = root.join(v.target.trim_start_matches('/'));
    if v.target.split('/').any(|c| c == "..") || !v.target.starts_with('/') {
        return Err(format!(
            "volume target {:?} must be an absolute path without ..",
            v.target
        )
        .into());
    }
    mkdir_no_follow(root, &v.target)?;
    let scratch = root.parent().unwrap_or(root);
    place_volume(&dir, v.size, scratch, index, &target, storage)
}

/// Mounts the volume kept in `dir` at `target`, its owners shown through `storage`: an
/// ext4 image when it has a size (made on first use, `size` bytes; loop-mounted at a
/// point in `scratch` and bound from there), else the directory's `data`. The gVisor
/// backend mounts a sandbox's volumes with this too (`warren __oci`).
pub(crate) fn place_volume(
    dir: &Path,
    size: Option<u64>,
    scratch: &Path,
    index: usize,
    target: &Path,
    storage: BorrowedFd<'_>,
) -> Setup<()> {
    fs::create_dir_all(dir).map_err(fail("create the volume"))?;
    let img = dir.join("volume.img");
    let owner = HOST_ID_BASE + USER_ID;
    let data = dir.join("data");
    // An owner's first sandboxes may start together, each finding the volume new: they
    // take turns on the volume's directory, so that one makes its image and the others
    // mount that one (two makers would write the same file at once, or one would
    // replace the image the other had mounted, and what was written there would be
    // lost). Mounting needs no turn: the loop device is shared (see `mount_image`).
    let turn = nix::fcntl::Flock::lock(
        fs::File::open(dir).map_err(fail("open the volume"))?,
        nix::fcntl::FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| fail("wait for the volume")(e.into()))?;
    // A volume made as a plain directory (before volumes had sizes) stays one: its files
    // are there, not in a new, empty image.
    if img.exists() || (size.is_some() && !data.exists()) {
        let new = !img.exists();
        if new {
            make_ext4(&img, size.unwrap_or(0), owner, Image::Volume)?;
        }
        drop(turn);
        // Mounted aside, then shown through the mapping where it belongs.
        let staging = scratch.join(format!(".volume-{index}"));
        fs::create_dir_all(&staging).map_err(fail("create a volume mount point"))?;
        // Never fresh for this search: a volume may be mounted by another sandbox.
        mount_image(&img, &staging, false)?;
        if new {
            // A new home is empty: ext4's lost+found is fsck's business, which makes it
            // again when it needs one.
            let _ = fs::remove_dir(staging.join("lost+found"));
        }
        let placed = bind_idmapped(&staging, target, storage, MountAttrs::PLAIN)
            .map_err(fail("mount the volume"));
        let _ = unmount(&staging);
        let _ = fs::remove_dir(&staging);
        return placed;
    }

    if !data.exists() {
        fs::create_dir(&data).map_err(fail("create the volume"))?;
        nix::unistd::chown(
            &data,
            Some(nix::unistd::Uid::from_raw(owner)),
            Some(nix::unistd::Gid::from_raw(owner)),
        )
        .map_err(|e| fail("chown the volume")(e.into()))?;
    }
    bind_idmapped(&data, target, storage, MountAttrs::PLAIN).map_err(fail("mount the volume"))
}

/// Creates `rel` under `root` one component at a time, refusing symlinks: the host
/// resolves these paths, and a link planted by a template must not lead it out of `root`.
fn mkdir_no_follow(root: &Path, rel: &str) -> Setup<()> {
    let mut p = root.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        p.push(c);
        match p.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{rel:?} is not a plain directory in the sandbox").into()),
            Err(_) => fs::create_dir(&p).map_err(fail("create a mount point"))?,
        }
    }
    Ok(())
}

struct ChildArgs<'a> {
    go: OwnedFd,
    status: OwnedFd,
    /// The sandbox's root directory (its overlay).
    root: OwnedFd,
    hostname: &'a str,
    /// The cgroup's files through which the child moves itself in (cgroup v1).
    join: Option<warren_sys::cgroup::SelfJoin>,
    listener: UnixListener,
    env: std::collections::BTreeMap<String, String>,
    seccomp: warren_sys::seccomp::SeccompProgram,
    /// The template's default user and working directory.
    user: Option<warren_types::proto::User>,
    workdir: Option<PathBuf>,
    allow_setuid: bool,
    /// `root` is placed in a copy of the shell (see [`crate::shell`]): the child moves it
    /// onto the namespace's root instead of pivoting.
    in_shell: bool,
    /// The child's command line, which is this helper's (the host's path of warren, a
    /// CLI's arguments) until the child overwrites it: every process of the sandbox can
    /// read PID 1's.
    title: warren_sys::proctitle::ArgArea,
}

/// Places a copy of the root tree at `root` (this namespace's) in a copy of `shell` and
/// stays there: the tree's descriptor and this namespace's, to come back to once the
/// sandbox's first process is cloned. On failure the caller is where it was.
fn enter_shell(shell: &OwnedFd, root: &Path) -> Setup<(OwnedFd, OwnedFd)> {
    let here =
        ns::open_ns(nix::unistd::getpid(), "mnt").map_err(fail("open the mount namespace"))?;
    let tree = warren_sys::mount::clone_tree(root, true).map_err(fail("copy the root tree"))?;
    let top = tree
        .as_fd()
        .try_clone_to_owned()
        .map_err(fail("hold the root tree"))?;
    ns::setns(shell, ns::CloneFlags::CLONE_NEWNS).map_err(fail("enter the shell namespace"))?;
    let placed = ns::unshare(ns::CloneFlags::CLONE_NEWNS)
        .and_then(|()| tree.attach(Path::new(crate::shell::ROOT)));
    if let Err(e) = placed {
        let _ = ns::setns(&here, ns::CloneFlags::CLONE_NEWNS);
        return Err(fail("place the root in the shell namespace")(e));
    }
    Ok((top, here))
}

/// What the sandbox's first process writes on the status pipe once it is set up.
const READY: &str = "ready";

/// The sandbox's first process, before it becomes the agent. Returns only on failure,
/// after writing the reason to the status pipe.
fn child_main(args: ChildArgs<'_>) -> String {
    let mut status = fs::File::from(args.status);
    // While this process has its one thread (the namespace's maker below is a second,
    // listed for some time after it ends, and in the shell no /proc tells): every
    // process the agent starts then gets no more than the kept capabilities without
    // dropping the rest itself (some seventy system calls an exec). The agent drops its
    // children's capabilities always; its own stay, the set only bounds what an exec
    // may gain.
    warren_sys::caps::limit_bounding_set_of_one_thread();
    // Made while the helper finishes its part and this process its mounts; should the
    // maker not start, this process makes its own namespace when it needs it.
    let net = ns::make_netns_beside().ok();
    // Before anything of the sandbox runs, while the helper writes the id maps. The
    // namespace's maker reads no arguments.
    args.title.write("warren-agent");
    let r = child_setup(
        args.go,
        &args.root,
        args.hostname,
        args.join,
        args.in_shell,
        net,
    );
    drop(args.root);
    let score = match r {
        Ok(score) => score,
        Err(e) => {
            let line = serde_json::to_vec(&HelperStatus::Error {
                message: e.message.clone(),
                kind: e.kind,
            })
            .unwrap_or_default();
            let _ = status.write_all(&line);
            return e.message;
        }
    };
    crate::trace::mark("child: set up");
    if status.write_all(READY.as_bytes()).is_err() {
        return "the helper went away".into();
    }
    drop(status);
    // The agent holds its listener and its own OOM score file, and nothing else of the
    // helper's: not the host's mount namespace, not a pipe, not a lock.
    let mut kept = vec![args.listener.as_raw_fd()];
    kept.extend(score.as_ref().map(|f| f.as_raw_fd()));
    if let Err(e) = warren_sys::fd::close_all_except(&kept) {
        return format!("close the helper's descriptors: {e}");
    }
    if let Some(score) = score {
        warren_sys::child::keep_oom_score_file(score);
    }
    let mut config = warren_agent::AgentConfig {
        env: args.env,
        reap_all: true,
        seccomp: Some(Arc::new(args.seccomp)),
        drop_caps: true,
        allow_setuid: args.allow_setuid,
        // Root's passwd entry gives HOME and the working directory when a request names
        // no user (and the template names none either).
        user: Some(args.user.unwrap_or(warren_types::proto::User::Id {
            uid: 0,
            gid: Some(0),
        })),
        workdir: args.workdir,
        ..Default::default()
    };
    // The agent holds CAP_SYS_ADMIN in the sandbox's user namespace, so this does not
    // fail; if it did, each process would install the filter itself.
    let _ = config.confine_agent();
    match warren_agent::serve(args.listener, config) {
        Ok(()) => std::process::exit(0),
        Err(e) => e.to_string(),
    }
}

/// Waits for the helper's go, then sets the sandbox up; returns the file of this
/// process's own OOM score the go carried, if it carried one.
fn child_setup(
    go: OwnedFd,
    root: &OwnedFd,
    hostname: &str,
    join: Option<warren_sys::cgroup::SelfJoin>,
    in_shell: bool,
    net: Option<ns::NetnsBeside>,
) -> Setup<Option<OwnedFd>> {
    let score = match warren_sys::fd::recv_fds(go.as_fd()) {
        Ok(Some(mut fds)) => fds.pop(),
        _ => return Err("the helper did not start the sandbox".into()),
    };
    drop(go);
    // Out of the way of stdio, which becomes /dev/null below.
    let score = score.and_then(|f| match f.as_raw_fd() {
        0..=2 => warren_sys::fd::dup_at_least(f.as_fd(), 3).ok(),
        _ => Some(f),
    });
    // Into the sandbox's cgroup first, before anything of the sandbox is done (and before
    // the cgroup namespace below, whose root is the cgroup this process is in).
    if let Some(join) = join {
        join.join()
            .map_err(|e| format!("join the sandbox's cgroup: {e}"))?;
        drop(join);
    }
    crate::trace::mark("child: cgroup joined");
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("unblock signals: {e}"))?;
    // This process runs as the owner of its user namespace, who may not walk the host's
    // directories that lead to the root: it works from the helper's descriptor instead.
    // It still shares the helper's mount namespace, so it can stand in the root first;
    // its own mount namespace, made then, follows its working directory to the copy.
    nix::unistd::fchdir(root.as_raw_fd()).map_err(|e| format!("enter the root: {e}"))?;
    ns::unshare(ns::CloneFlags::CLONE_NEWNS).map_err(fail("new mount namespace"))?;
    // Mounts copied from the helper's namespace are locked here, and pivot_root (or a
    // move) refuses a locked new root: a copy of the root tree, made and placed in this
    // namespace, is not.
    let here = Path::new(".");
    let tree = warren_sys::mount::clone_tree(here, true).map_err(fail("copy the root"))?;
    let top = tree
        .as_fd()
        .try_clone_to_owned()
        .map_err(fail("hold the root"))?;
    tree.attach(here).map_err(fail("place the root"))?;
    crate::trace::mark("child: mount namespace");
    nix::unistd::fchdir(top.as_raw_fd()).map_err(|e| format!("enter the root: {e}"))?;
    drop(top);
    let root = Path::new(".");
    ns::unshare(ns::CloneFlags::CLONE_NEWCGROUP).map_err(fail("new cgroup namespace"))?;
    ns::sethostname(hostname).map_err(fail("set the hostname"))?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &root.join("proc"), "proc", hidden, None).map_err(fail("mount /proc"))?;
    // Masked directories show an empty read-only directory: /dev/pts's own, of the /dev
    // tmpfs, before devpts covers it. It belongs to the host's root, whom nobody in the
    // sandbox is, so it stays empty even were its bind made writable; and a mask costs
    // no filesystem of its own (a superblock is kernel memory, and one more entry the
    // kernel walks, under its cgroup lock, whenever a memory cgroup is removed).
    let empty = root.join("dev/pts");
    let null = root.join("dev/null");
    let mask = |m: &str| -> Setup<()> {
        let p = root.join(m);
        let Ok(meta) = p.symlink_metadata() else {
            return Ok(());
        };
        if meta.is_dir() {
            bind(&empty, &p, false).and_then(|()| warren_sys::mount::remount_readonly(&p, hidden))
        } else {
            bind(&null, &p, false)
        }
        .map_err(fail("mask a /proc or /sys path"))
    };
    let in_sys = |m: &str| m.starts_with("sys/");
    for m in MASKED.iter().filter(|m| !in_sys(m)) {
        mask(m)?;
    }
    for m in READONLY {
        let p = root.join(m);
        if p.symlink_metadata().is_ok() {
            bind(&p, &p, true).map_err(fail("make a /proc path read-only"))?;
        }
    }
    let boot_id = root.join("proc/sys/kernel/random/boot_id");
    if boot_id.symlink_metadata().is_ok() {
        // Of the /dev tmpfs, which honours device nodes: not this mount.
        bind(&root.join(BOOT_ID), &boot_id, false)
            .and_then(|()| warren_sys::mount::remount_readonly(&boot_id, hidden))
            .map_err(fail("give the sandbox its boot id"))?;
    }
    crate::trace::mark("child: /proc masked");
    // A sysfs shows the network namespace of whoever mounts it: this process enters its
    // own first, as late as it can (its maker has had /proc's masks' time more).
    net.map_or_else(ns::new_netns, ns::NetnsBeside::enter)
        .map_err(fail("new network namespace"))?;
    crate::trace::mark("child: network namespace");
    mount_fs(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        hidden | MsFlags::MS_RDONLY,
        None,
    )
    .map_err(fail("mount /sys"))?;
    for m in MASKED.iter().filter(|m| in_sys(m)) {
        mask(m)?;
    }
    mount_fs(
        "devpts",
        &root.join("dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(fail("mount /dev/pts"))?;
    crate::trace::mark("child: /sys mounted and masked");
    if in_shell {
        ns::move_root_here().map_err(fail("enter the sandbox root"))?;
    } else {
        ns::pivot_root(root).map_err(fail("pivot into the sandbox root"))?;
    }
    crate::trace::mark("child: pivoted");
    // A clone keeps the host ids it had (host root); now become root *of the namespace*,
    // which the maps tie to an unprivileged host uid. Not earlier: the mounts above name
    // host paths, whose directories may be open to their owner (host root) alone.
    {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
        setgroups(&[]).map_err(|e| format!("drop supplementary groups: {e}"))?;
        setresgid(g, g, g).map_err(|e| format!("become gid 0 of the sandbox: {e}"))?;
        setresuid(u, u, u).map_err(|e| format!("become uid 0 of the sandbox: {e}"))?;
    }
    // The agent keeps only its listener; stdio goes nowhere (it logs nothing to the host).
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn what_a_helper_tells_as_the_processes_are_gone_reads_back_whole_or_not_at_all() {
        let told = Stopped { oom_kills: 3 };
        assert_eq!(Stopped::decode(&told.encode()), Some(told));
        // The byte alone, a cut message, or one with more after it: nothing is made up.
        let b = told.encode();
        for cut in [&b[..0], &b[..1], &b[..8]] {
            assert_eq!(Stopped::decode(cut), None, "{cut:?}");
        }
        assert_eq!(Stopped::decode(&[&b[..], b"s"].concat()), None);
        assert_eq!(Stopped::decode(b"x\0\0\0\0\0\0\0\0"), None);
    }

    #[test]
    fn a_sparse_copy_keeps_the_data_and_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let f = fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&[7u8; 3 << 20], 10 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        copy_sparse(&from, &to).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        let m = fs::metadata(&to).unwrap();
        assert_eq!(m.len(), 64 << 20);
        // About what was written, not the whole length.
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
    }

    /// The filesystem features `dumpe2fs -h` lists for image `img`.
    fn features(img: &Path) -> String {
        let out = std::process::Command::new("dumpe2fs")
            .arg("-h")
            .arg(img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Filesystem features:"))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_layers_directories_are_made_or_given_only_where_they_are_not_so() {
        let name = "a_layers_directories_are_made_or_given_only_where_they_are_not_so";
        if !warren_testkit::needs_root(name, "giving directories to the sandbox's root") {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let at = |d: &str| base.path().join(d);
        let dir = fs::File::open(base.path()).unwrap();
        let owner = |d: &str| {
            let m = fs::symlink_metadata(at(d)).unwrap();
            (m.is_dir(), m.uid(), m.gid())
        };
        let ours = (true, HOST_ID_BASE, HOST_ID_BASE);
        layer_dirs(dir.as_fd()).unwrap();
        for d in LAYER_DIRS {
            assert_eq!(owner(d), ours, "{d}");
        }
        // Already so: nothing is written, not even a change time.
        let changed = |d: &str| {
            let m = fs::symlink_metadata(at(d)).unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let before = changed("upper");
        layer_dirs(dir.as_fd()).unwrap();
        assert_eq!(changed("upper"), before);
        // One of another owner is given back, the other left alone.
        std::os::unix::fs::chown(at("work"), Some(0), Some(0)).unwrap();
        layer_dirs(dir.as_fd()).unwrap();
        assert_eq!(owner("work"), ours);
        assert_eq!(changed("upper"), before);
        // Neither a file nor a link in a directory's place is taken, or followed.
        fs::remove_dir(at("upper")).unwrap();
        fs::write(at("upper"), b"x").unwrap();
        assert!(layer_dirs(dir.as_fd()).is_err());
        assert_eq!(fs::read(at("upper")).unwrap(), b"x");
        fs::remove_file(at("upper")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), at("upper")).unwrap();
        assert!(layer_dirs(dir.as_fd()).is_err());
        assert_eq!(fs::metadata(elsewhere.path()).unwrap().uid(), 0);
    }

    #[test]
    fn disk_images_after_the_first_are_copies_of_a_kept_blank() {
        let data = tempfile::tempdir().unwrap();
        let img = |n: &str| {
            let dir = data.path().join("sandboxes").join(n);
            fs::create_dir_all(&dir).unwrap();
            dir.join("disk.img")
        };
        if std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIPPED disk_images_after_the_first_are_copies_of_a_kept_blank: no mkfs.ext4"
            );
            return;
        }
        let (a, b) = (img("a"), img("b"));
        make_ext4(&a, 64 << 20, 1234, Image::Disk).unwrap();
        let blank = data
            .path()
            .join(".blank-disks")
            .join(format!("{}-1234-disk.img", 64 << 20));
        assert!(blank.exists());
        make_ext4(&b, 64 << 20, 1234, Image::Disk).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(fs::metadata(&b).unwrap().len(), 64 << 20);
        // A disk keeps no blocks for growing: what a copy writes is a few blocks a group.
        let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
        assert!(allocated(&b) < 512 << 10, "{} bytes", allocated(&b));
        // A volume, which grows, has them, and a blank of its own.
        let v = img("v");
        make_ext4(&v, 64 << 20, 1234, Image::Volume).unwrap();
        assert!(features(&v).contains("resize_inode"), "{}", features(&v));
        assert!(!features(&b).contains("resize_inode"), "{}", features(&b));
        fs::remove_file(blank.with_file_name(format!("{}-1234.img", 64 << 20))).unwrap();
        // Another size or owner has a blank of its own.
        let c = img("c");
        make_ext4(&c, 32 << 20, 1234, Image::Disk).unwrap();
        assert_eq!(fs::read_dir(blank.parent().unwrap()).unwrap().count(), 2);
        // A spare made ahead is the next image of its size, taken whole; then there is
        // none until one is made again.
        let spare = blank.with_extension("spare");
        make_spare(data.path(), 64 << 20, 1234);
        let ino = fs::metadata(&spare).unwrap().ino();
        let d = img("d");
        make_ext4(&d, 64 << 20, 1234, Image::Disk).unwrap();
        assert!(!spare.exists());
        assert_eq!(fs::metadata(&d).unwrap().ino(), ino);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&d).unwrap());
        make_spare(data.path(), 64 << 20, 1234);
        assert!(spare.exists());
        // A spare written before the host booted (not synced when made: a crash may have
        // torn it) is not taken, and the next spare replaces it.
        let before_boot = std::time::UNIX_EPOCH + Duration::from_secs(86_400);
        let set_old = |p: &Path| {
            fs::write(p, b"torn").unwrap();
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(before_boot)
                .unwrap();
        };
        set_old(&spare);
        let e = img("e");
        make_ext4(&e, 64 << 20, 1234, Image::Disk).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&e).unwrap());
        assert_eq!(fs::read(&spare).unwrap(), b"torn");
        make_spare(data.path(), 64 << 20, 1234);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&spare).unwrap());
        // No blank of a size, no spare of it.
        make_spare(data.path(), 48 << 20, 1234);
        assert_eq!(fs::read_dir(blank.parent().unwrap()).unwrap().count(), 3);
    }
}
