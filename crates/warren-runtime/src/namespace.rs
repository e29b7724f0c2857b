//! The namespace backend: sandboxes made of Linux namespaces, cgroups and an overlay root.
//!
//! Creating a sandbox starts the helper (`warren __init`, see [`crate::helper`]) and
//! waits for its one status line; from then on the helper is the sandbox's monitor and
//! this side talks to the agent over its socket. Pausing and resuming act on the cgroup
//! freezer directly; destroying asks the helper to tear down and waits for it, and
//! ending (for good) waits only until the helper says the processes are gone.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::ChildStdout;
use warren_sys::cgroup::{Cgroup, Hierarchy};
use warren_types::spec::SandboxSpec;

use warren_types::api::{BackendInfo, Capabilities, Isolation};
use warren_types::spec::NetworkMode;

use crate::backend::{BoxFuture, Teardowns};
use crate::client::AgentClient;
use crate::helper::{HelperConfig, HelperStatus, Stopped};
use crate::prepared::PreparedDisk;
use crate::zygote::Zygote;
use crate::{Error, Instance, Paths, Result, Usage, PREFIX};

/// How a sandbox relates to the process that creates it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Tear the sandbox down when the creating process dies (the CLI's `run`). The
    /// kernel signals the helper when the creating *thread* exits, so create from a
    /// thread that lives as long as the sandbox should.
    pub die_with_parent: bool,
    /// Delete the writable layer when the sandbox ends.
    pub ephemeral: bool,
}

/// Creates sandboxes with the `warren __init` helper found at `exe`.
#[derive(Debug, Clone)]
pub struct NamespaceBackend {
    paths: Paths,
    exe: PathBuf,
    hierarchy: Hierarchy,
    /// Held shared by each helper finishing the teardown of a sandbox ended for good;
    /// taken whole by [`settle`](Self::settle) to wait for them all.
    teardowns: Teardowns,
    /// What forks the helpers (see [`crate::zygote`]), started with the first create.
    zygote: std::sync::Arc<std::sync::Mutex<Option<Zygote>>>,
    /// The next sandbox's disk, made ahead (see [`crate::prepared`]).
    next_disk: std::sync::Arc<NextDisk>,
    /// Cgroups made ahead for the next creates (see [`crate::spares`]).
    spares: std::sync::Arc<crate::spares::Spares>,
}

/// The disk made ahead for the next create, and whether one is being made.
#[derive(Debug, Default)]
struct NextDisk {
    slot: std::sync::Mutex<Option<PreparedDisk>>,
    making: std::sync::atomic::AtomicBool,
    /// The size of the disk being made.
    making_size: std::sync::atomic::AtomicU64,
    /// A create waits for the disk being made (one at a time: creates at once past the
    /// first make their own rather than all wait for one disk).
    awaited: std::sync::atomic::AtomicBool,
    /// Told when a disk being made is placed (or could not be).
    made: tokio::sync::Notify,
    /// What a daemon before this one left has been removed.
    cleared: std::sync::atomic::AtomicBool,
    /// A spare copy of the blank is being made for the next disk to take (see
    /// [`helper::make_spare`](crate::helper::make_spare)).
    sparing: std::sync::atomic::AtomicBool,
}

/// How long a create waits for the disk being made before it makes its own: making one
/// takes 1.5-3 ms on an idle host, and the one being made was begun before; only one
/// stuck (its loop device slow to attach) is waited for this long.
const DISK_WAIT: Duration = Duration::from_millis(50);

/// A live sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub socket: PathBuf,
    /// The agent's pid on the host.
    pub agent_pid: i32,
    cgroup: Cgroup,
    helper: Helper,
    teardowns: Teardowns,
    /// What its helper said as the sandbox's processes were gone, read once it is found
    /// dead: the counters its cgroup, removed after, no longer holds.
    stopped: Option<Stopped>,
}

/// The sandbox's helper: our child, or one a previous daemon started (after a restart).
#[derive(Debug)]
enum Helper {
    Child(Box<tokio::process::Child>, BufReader<ChildStdout>),
    /// Forked by the zygote: its pid, a pidfd readable once it has exited, and its
    /// status pipe.
    Spawned(i32, OwnedFd, BufReader<pipe::Receiver>),
    /// Forked from this process without exec (see [`NamespaceBackend::create_forked`]),
    /// with the pipe on which it says the sandbox's processes are gone, and the
    /// directories whose run directories it put in memory.
    Forked(i32, std::os::fd::OwnedFd, Paths),
    Adopted(i32),
}

impl NamespaceBackend {
    pub fn new(paths: Paths, exe: PathBuf) -> Result<Self> {
        paths.secure()?;
        let hierarchy = Hierarchy::detect_shared()?;
        Ok(Self {
            paths,
            exe,
            hierarchy,
            teardowns: Teardowns::default(),
            zygote: Default::default(),
            next_disk: Default::default(),
            spares: Default::default(),
        })
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The cgroup a sandbox with this id has.
    pub fn cgroup(&self, id: &str) -> Cgroup {
        self.hierarchy.cgroup(&format!("{PREFIX}{id}"))
    }

    /// Like [`create`](Self::create), but the helper is forked from this process rather
    /// than started afresh, which saves an exec of the binary on the CLI's path.
    ///
    /// Forking is only sound while this process has one thread: the CLI calls this before
    /// it starts its async runtime, and the call checks. (A thread just joined may still
    /// be counted for a moment, until the kernel has released it: the check waits for
    /// that, up to 50 ms.)
    pub fn create_forked(&self, spec: SandboxSpec, opts: CreateOptions) -> Result<Sandbox> {
        validate(&spec)?;
        let threads = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse::<u32>().ok())
                })
        };
        let deadline = std::time::Instant::now() + Duration::from_millis(50);
        let mut counted = threads();
        while counted != Some(1) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(100));
            counted = threads();
        }
        if counted != Some(1) {
            return Err(Error::Helper(
                "create_forked needs a single-threaded caller; use create".into(),
            ));
        }
        let id = spec.id.clone();
        let config = HelperConfig {
            spec,
            run_dir: self.paths.run.clone(),
            data_dir: self.paths.data.clone(),
            die_with_parent: opts
                .die_with_parent
                .then(std::process::id)
                .map(|p| p as i32),
            ephemeral: opts.ephemeral,
            prepared_disk: false,
            spare_cgroup: None,
            no_spare_disk: false,
        };
        // The run directories in memory, as a daemon keeps them: this sandbox's is made
        // under the lock, which is let go before the helper is forked (its teardown takes
        // the lock to release them).
        let run_dir = self.paths.sandbox_run(&id);
        let held = crate::rundir::hold(&self.paths);
        let _ = std::fs::create_dir_all(&run_dir);
        drop(held);
        // A helper that fails before it owns the directory leaves it (and the tmpfs).
        let undo = || {
            let _ = std::fs::remove_dir(&run_dir);
            let _ = crate::rundir::release(&self.paths);
        };
        let (r, w) = nix::unistd::pipe().map_err(|e| Error::Helper(format!("pipe: {e}")))?;
        // Close-on-exec: only the helper may hold the writing end, not what it starts.
        let (stopped_r, stopped_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Helper(format!("pipe: {e}")))?;
        let forked =
            warren_sys::ns::fork_process().map_err(crate::io_err("fork the sandbox helper"));
        if forked.is_err() {
            undo();
        }
        match forked? {
            warren_sys::ns::Forked::Child => {
                drop(r);
                drop(stopped_r);
                crate::helper::run(&config, std::fs::File::from(w), Some(stopped_w), None, None)
            }
            warren_sys::ns::Forked::Parent(pid) => {
                drop(w);
                drop(stopped_w);
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(std::fs::File::from(r)),
                    &mut line,
                );
                match serde_json::from_str::<HelperStatus>(&line) {
                    Ok(HelperStatus::Ready { agent_pid, socket }) => Ok(Sandbox {
                        cgroup: self.cgroup(&id),
                        id,
                        socket,
                        agent_pid,
                        helper: Helper::Forked(pid.as_raw(), stopped_r, self.paths.clone()),
                        teardowns: self.teardowns.clone(),
                        stopped: None,
                    }),
                    Ok(HelperStatus::Error { message, kind }) => {
                        let _ = nix::sys::wait::waitpid(pid, None);
                        undo();
                        Err(Error::from_helper(kind, message))
                    }
                    Err(_) => {
                        let status = nix::sys::wait::waitpid(pid, None).ok();
                        undo();
                        Err(Error::Helper(format!(
                            "it exited ({status:?}) without reporting; see its messages above"
                        )))
                    }
                }
            }
        }
    }

    /// Builds a sandbox and waits until its agent accepts connections.
    pub async fn create(&self, spec: SandboxSpec, opts: CreateOptions) -> Result<Sandbox> {
        validate(&spec)?;
        let id = spec.id.clone();
        // A helper that dies with its caller (`die_with_parent`) must be the caller's
        // child; any other is the zygote's, and may be given a disk made ahead.
        let by_zygote = !opts.die_with_parent;
        let disk_size = spec.resources.disk.filter(|_| by_zygote);
        let prepared = match disk_size {
            Some(size) => self.take_or_await_disk(&id, size).await,
            None => None,
        };
        if let Some(size) = disk_size {
            crate::trace::mark(match prepared {
                Some(_) => "daemon: disk made ahead taken",
                None => "daemon: no disk made ahead",
            });
            // The next one is begun now, beside this create, rather than after it: a
            // create that follows at once (a removal between) finds it made, or nearly.
            if prepared.is_some() {
                self.make_next_disk(size);
            }
        }
        let limits = crate::cgroup_limits(&spec.resources);
        // Removed when this create is done with it, if its helper did not rename it.
        let spare = by_zygote
            .then(|| self.spares.take(&self.hierarchy, &limits))
            .flatten();
        let mut config = HelperConfig {
            spec,
            run_dir: self.paths.run.clone(),
            data_dir: self.paths.data.clone(),
            die_with_parent: opts
                .die_with_parent
                .then(std::process::id)
                .map(|p| p as i32),
            ephemeral: opts.ephemeral,
            prepared_disk: prepared.is_some(),
            spare_cgroup: None,
            no_spare_disk: false,
        };
        let forked = match by_zygote {
            true => self.fork_by_zygote(prepared.as_ref().map(|m| m.as_fd())),
            false => None,
        };
        // The helper has its own copy now.
        drop(prepared);
        if let Some((pid, exited, config_w, status_r)) = forked {
            crate::trace::mark("daemon: helper forked");
            config.spare_cgroup = spare.as_ref().map(|s| s.name.clone());
            // Made with the next disk, below.
            config.no_spare_disk = true;
            let input = serde_json::to_vec(&config).expect("helper config serializes");
            let made = self
                .finish_spawned(id, &input, pid, exited, config_w, status_r)
                .await;
            // After it: the first sandbox of a size makes the blank the next disk copies,
            // and the cgroups of the next creates are made with these limits.
            if let Some(size) = disk_size {
                self.make_next_disk(size);
            }
            self.spares.refill(&self.hierarchy, limits, spare);
            return made;
        }
        drop(spare);
        if config.prepared_disk {
            // No helper got the mount, which went with the descriptor dropped above and
            // takes its loop device with it: the blank image goes too, and the helper
            // started below makes the disk afresh rather than meet a device being cleared.
            let _ = std::fs::remove_file(self.paths.sandbox_data(&id).join("disk.img"));
            config.prepared_disk = false;
        }
        let input = serde_json::to_vec(&config).expect("helper config serializes");
        let mut child = tokio::process::Command::new(&self.exe)
            .arg(crate::helper::ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(crate::io_err(format!(
                "start the sandbox helper {}",
                self.exe.display()
            )))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(&input)
            .await
            .map_err(crate::io_err("send the helper its configuration"))?;
        drop(stdin);
        let mut status = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        status
            .read_line(&mut line)
            .await
            .map_err(crate::io_err("read the helper's status"))?;
        match serde_json::from_str::<HelperStatus>(&line) {
            Ok(HelperStatus::Ready { agent_pid, socket }) => Ok(Sandbox {
                cgroup: self.cgroup(&id),
                id,
                socket,
                agent_pid,
                helper: Helper::Child(Box::new(child), status),
                teardowns: self.teardowns.clone(),
                stopped: None,
            }),
            Ok(HelperStatus::Error { message, kind }) => {
                let _ = child.wait().await;
                Err(Error::from_helper(kind, message))
            }
            Err(_) => {
                let status = child.wait().await.ok();
                Err(Error::Helper(format!(
                    "it exited ({status:?}) without reporting; see its messages above"
                )))
            }
        }
    }
}

impl NamespaceBackend {
    /// Has the zygote fork a helper (starting the zygote first if there is none, or
    /// again once if it has died): the helper's pid, its pidfd, and the daemon's ends of
    /// its configuration and status pipes. `None` if that cannot be: the helper is then
    /// started afresh.
    ///
    /// Each try has pipes of its own: a zygote that failed to answer may still have
    /// forked a helper on the pipes it was sent, and two helpers on one configuration
    /// pipe would race for it (one reads the configuration, the other an empty one, and
    /// both write to one status pipe). A helper left on a try's pipes reads an empty
    /// configuration once they are dropped, and exits.
    fn fork_by_zygote(
        &self,
        disk: Option<std::os::fd::BorrowedFd>,
    ) -> Option<(i32, OwnedFd, OwnedFd, OwnedFd)> {
        use nix::fcntl::OFlag;
        let pipes = || {
            let (config_r, config_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
            let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
            Some((config_r, config_w, status_r, status_w))
        };
        // The first try's pipes are made before the lock, which every create waits for.
        let mut next = pipes();
        let mut zygote = self.zygote.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..2 {
            let (config_r, config_w, status_r, status_w) = match next.take() {
                Some(p) => p,
                None => pipes()?,
            };
            if zygote.is_none() {
                *zygote = Some(Zygote::start(&self.exe).ok()?);
            }
            let z = zygote.as_ref()?;
            match z.fork_helper(config_r.as_fd(), status_w.as_fd(), disk) {
                Ok(pid) => {
                    drop(zygote);
                    // Until it has its configuration the helper waits: it cannot have
                    // exited and its pid cannot have been reused.
                    let exited = warren_sys::ns::pidfd_open(pid).ok()?;
                    return Some((pid, exited, config_w, status_r));
                }
                // Gone (or stuck): it is replaced.
                Err(_) => *zygote = None,
            }
        }
        None
    }

    /// The rest of [`create`](Self::create) for a helper the zygote forked.
    async fn finish_spawned(
        &self,
        id: String,
        input: &[u8],
        pid: i32,
        exited: OwnedFd,
        config_w: OwnedFd,
        status_r: OwnedFd,
    ) -> Result<Sandbox> {
        let mut config = pipe::Sender::from_owned_fd(config_w)
            .map_err(crate::io_err("send the helper its configuration"))?;
        let sent = config.write_all(input).await;
        drop(config);
        let mut status = BufReader::new(
            pipe::Receiver::from_owned_fd(status_r)
                .map_err(crate::io_err("read the helper's status"))?,
        );
        let mut line = String::new();
        if sent.is_ok() {
            status
                .read_line(&mut line)
                .await
                .map_err(crate::io_err("read the helper's status"))?;
        }
        match serde_json::from_str::<HelperStatus>(&line) {
            Ok(HelperStatus::Ready { agent_pid, socket }) => Ok(Sandbox {
                cgroup: self.cgroup(&id),
                id,
                socket,
                agent_pid,
                helper: Helper::Spawned(pid, exited, status),
                teardowns: self.teardowns.clone(),
                stopped: None,
            }),
            Ok(HelperStatus::Error { message, kind }) => {
                exit_of_pidfd(&exited).await;
                Err(Error::from_helper(kind, message))
            }
            Err(_) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                exit_of_pidfd(&exited).await;
                Err(Error::Helper(
                    "it exited without reporting; see its messages above".into(),
                ))
            }
        }
    }

    /// Waits for the helpers of sandboxes ended for good to finish their teardowns, and
    /// drops the disk made ahead (a daemon stopping leaves none behind).
    pub async fn settle(&self) {
        self.teardowns.settle().await;
        self.spares.clear(&self.hierarchy).await;
        for _ in 0..100 {
            if !self
                .next_disk
                .making
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = self.next_disk.slot.lock().ok().and_then(|mut s| s.take());
        drop(left);
    }

    /// The disk made ahead, for a sandbox with a disk of `size` bytes at `img`: its image
    /// renamed there (its directory made), its mount given. `None` when there is none of
    /// that size (the caller has looked that the sandbox has no disk yet).
    fn take_disk(&self, img: &Path, size: u64) -> Option<warren_sys::mount::DetachedMount> {
        let disk = self
            .next_disk
            .slot
            .lock()
            .ok()?
            .take_if(|d| d.size == size)?;
        std::fs::create_dir_all(img.parent()?).ok()?;
        disk.take(img).ok()
    }

    /// [`take_disk`](Self::take_disk), or when there is none of `size` and one is being
    /// made, that one once it is placed: begun before this create, it is done sooner
    /// than one this create would make (up to [`DISK_WAIT`]). One create at a time
    /// waits; the others make their own, and a sandbox started again (its disk is
    /// there) never waits.
    async fn take_or_await_disk(
        &self,
        id: &str,
        size: u64,
    ) -> Option<warren_sys::mount::DetachedMount> {
        use std::sync::atomic::Ordering::SeqCst;
        // A sandbox started again has its disk: nothing made ahead is for it. Looked at
        // once: `take_disk` below and after the wait do not look again.
        let img = self.paths.sandbox_data(id).join("disk.img");
        if img.exists() {
            return None;
        }
        let next = &self.next_disk;
        let made = next.made.notified();
        tokio::pin!(made);
        // Told from here on: a disk placed after this line wakes the wait below.
        made.as_mut().enable();
        if let Some(disk) = self.take_disk(&img, size) {
            return Some(disk);
        }
        if !next.making.load(SeqCst)
            || next.making_size.load(SeqCst) != size
            || next.awaited.swap(true, SeqCst)
        {
            return None;
        }
        /// Lets the next create wait, this one done waiting or dropped mid-wait (its
        /// caller gone).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.store(false, SeqCst);
            }
        }
        let waiting = Waiting(&next.awaited);
        let _ = tokio::time::timeout(DISK_WAIT, made).await;
        drop(waiting);
        self.take_disk(&img, size)
    }

    /// Makes the next disk of `size` bytes off the create's path, unless one is there or
    /// being made.
    fn make_next_disk(&self, size: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let next = self.next_disk.clone();
        if next.making.swap(true, SeqCst) {
            return;
        }
        next.making_size.store(size, SeqCst);
        let data = self.paths.data.clone();
        tokio::task::spawn_blocking(move || {
            let have = next
                .slot
                .lock()
                .map_or(true, |s| s.as_ref().is_some_and(|d| d.size == size));
            if !have {
                if !next.cleared.swap(true, SeqCst) {
                    crate::prepared::clear_left(&data);
                }
                let made = PreparedDisk::make(&data, size);
                let replaced = next
                    .slot
                    .lock()
                    .ok()
                    .and_then(|mut s| std::mem::replace(&mut *s, made));
                drop(replaced);
            }
            next.making.store(false, SeqCst);
            next.made.notify_waiters();
            // The copy the next disk takes by a rename, made here rather than by each
            // helper beside its watch (a thread whose stack and heap an idle helper
            // would keep): the next disk is begun meanwhile if one is taken.
            if !next.sparing.swap(true, SeqCst) {
                crate::helper::make_spare(&data, size, crate::HOST_ID_BASE);
                next.sparing.store(false, SeqCst);
            }
        });
    }

    /// Takes over a sandbox whose helper is alive (made by an earlier daemon); `None` if
    /// it is gone.
    pub fn adopt(&self, id: &str) -> Option<Sandbox> {
        let run = self.paths.sandbox_run(id);
        let pid: i32 = std::fs::read_to_string(run.join("helper.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if !pid_alive(pid) {
            return None;
        }
        let agent_pid = std::fs::read_to_string(run.join("agent.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Some(Sandbox {
            id: id.to_string(),
            socket: socket_path(&self.paths, id),
            agent_pid,
            cgroup: self.cgroup(id),
            helper: Helper::Adopted(pid),
            teardowns: self.teardowns.clone(),
            stopped: None,
        })
    }

    /// Removes what is left of a sandbox whose helper died without cleaning up (a crash
    /// of the whole host, a SIGKILLed helper): processes, cgroup, run directory, and the
    /// writable layer when `remove_data`.
    pub fn purge(&self, id: &str, remove_data: bool) {
        let cg = self.cgroup(id);
        if cg.exists() {
            let _ = cg.kill_all(Duration::from_secs(5));
            let _ = cg.remove();
        }
        let _ = std::fs::remove_dir_all(self.paths.sandbox_run(id));
        if remove_data {
            let _ = crate::tree::remove(&self.paths.sandbox_data(id));
        }
    }

    /// Deletes a stopped sandbox's kept files, off the async runtime's threads (a tree
    /// a sandbox made can take seconds to remove).
    pub async fn remove_data(&self, id: &str) -> Result<()> {
        crate::tree::remove_off_runtime(self.paths.sandbox_data(id)).await
    }
}

pub(crate) fn validate(spec: &SandboxSpec) -> Result<()> {
    if !crate::valid_name(&spec.id) {
        return Err(Error::Invalid {
            what: "sandbox id",
            why: format!(
                "{:?} must be 1-64 letters, digits, '-', '_' or '.'",
                spec.id
            ),
        });
    }
    if let Some(h) = &spec.hostname {
        if h.is_empty()
            || h.len() > 63
            || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::Invalid {
                what: "hostname",
                why: format!("{h:?} must be 1-63 letters, digits or '-'"),
            });
        }
    }
    for m in &spec.mounts {
        if let Some(why) = warren_types::spec::HostMount::target_problem(&m.target) {
            return Err(Error::Invalid {
                what: "host directory mount",
                why,
            });
        }
    }
    for v in &spec.volumes {
        if !crate::valid_name(&v.name) {
            return Err(Error::Invalid {
                what: "volume name",
                why: format!("{:?} must be 1-64 letters, digits, '-', '_' or '.'", v.name),
            });
        }
        if !v.target.starts_with('/') || v.target.split('/').any(|c| c == "..") {
            return Err(Error::Invalid {
                what: "volume target",
                why: format!("{:?} must be an absolute path without '..'", v.target),
            });
        }
    }
    if spec.network == NetworkMode::Host {
        return Err(Error::Invalid {
            what: "network",
            why: "a namespace sandbox has its own network (`none` or `nat`), never the host's"
                .into(),
        });
    }
    let r = &spec.resources;
    if r.memory.is_some_and(|m| m < 8 << 20) {
        return Err(Error::Invalid {
            what: "memory limit",
            why: "below 8M no program can start; give at least 8M".into(),
        });
    }
    if r.cpu_millis == Some(0) || r.pids == Some(0) {
        return Err(Error::Invalid {
            what: "limit",
            why: "--cpus and --pids must be above zero".into(),
        });
    }
    let cores = warren_sys::host_cores();
    if r.cpu_millis.is_some_and(|c| c > cores * 1000) {
        return Err(Error::Invalid {
            what: "CPU limit",
            why: format!("this host has {cores} cores; ask for at most {cores}"),
        });
    }
    Ok(())
}

impl Sandbox {
    pub async fn connect(&self) -> Result<AgentClient> {
        Ok(AgentClient::connect(&self.socket).await?)
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Freezes every process of the sandbox.
    pub fn pause(&self) -> Result<()> {
        Ok(self.cgroup.freeze()?)
    }

    pub fn resume(&self) -> Result<()> {
        Ok(self.cgroup.thaw()?)
    }

    /// Processes the OOM killer has killed in this sandbox so far.
    pub fn oom_kills(&self) -> u64 {
        self.with_told_oom_kills(self.cgroup.oom_kills())
    }

    /// `counted` (the cgroup's count), or what the helper told as it removed the cgroup.
    fn with_told_oom_kills(&self, counted: u64) -> u64 {
        counted.max(self.stopped.map_or(0, |s| s.oom_kills))
    }

    /// The helper's pid on the host.
    pub fn helper_pid(&self) -> Option<i32> {
        match &self.helper {
            Helper::Child(c, _) => c.id().map(|p| p as i32),
            Helper::Spawned(p, _, _) | Helper::Forked(p, _, _) | Helper::Adopted(p) => Some(*p),
        }
    }

    /// Asks the helper to stop the sandbox and tear it down (SIGTERM, or
    /// [`helper::END_SIGNAL`](crate::helper::END_SIGNAL) when it ends for good); one the
    /// zygote forked is signalled through its pidfd, never a process that took its pid.
    fn stop_helper(&self, signal: Signal) {
        match &self.helper {
            Helper::Spawned(_, pidfd, _) => {
                let _ = warren_sys::ns::pidfd_send_signal(pidfd.as_fd(), signal as i32);
            }
            _ => {
                if let Some(pid) = self.helper_pid() {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
            }
        }
    }

    /// Whether the sandbox still runs (its helper is alive).
    pub fn is_alive(&mut self) -> bool {
        let alive = match &mut self.helper {
            Helper::Child(c, _) => matches!(c.try_wait(), Ok(None)),
            Helper::Spawned(p, exited, _) => {
                match readable_within(exited.as_fd(), PollTimeout::ZERO) {
                    Some(gone) => !gone,
                    None => pid_alive(*p),
                }
            }
            Helper::Forked(p, _, _) | Helper::Adopted(p) => pid_alive(*p),
        };
        if !alive && self.stopped.is_none() {
            self.stopped = self.helper.told_stopped();
        }
        alive
    }

    /// Stops everything and removes what the sandbox was made of (its writable layer too
    /// if it was created ephemeral).
    pub async fn destroy(mut self) -> Result<()> {
        self.stop_helper(Signal::SIGTERM);
        let wait = async {
            match &mut self.helper {
                Helper::Child(c, _) => {
                    let _ = c.wait().await;
                }
                Helper::Spawned(_, exited, _) => exit_of_pidfd(exited).await,
                // The helper says when the processes are gone and finishes the rest
                // of the teardown alone: a `--rm` caller need not wait for directories
                // and cgroups to be removed. (It is this process's child: the kernel
                // reaps it once this process exits, and a caller that lives on reaps
                // it here.)
                // Read on the runtime, not by a thread of its blocking pool: `warren run`
                // would start one for this read alone, and have it killed at its exit.
                Helper::Forked(p, stopped, paths) => {
                    let pid = Pid::from_raw(*p);
                    let pipe = stopped
                        .try_clone()
                        .and_then(pipe::Receiver::from_owned_fd)
                        .ok();
                    match pipe {
                        Some(mut pipe) => {
                            // The pipe's end, not its byte: the helper is gone, its
                            // teardown done, without releasing the run directories'
                            // tmpfs (a helper with published ports cannot leave its own
                            // mount namespace to), so this process does.
                            let mut b = [0u8; 1];
                            if let Ok(0) = pipe.read(&mut b).await {
                                let _ = crate::rundir::release(paths);
                            }
                        }
                        None => {
                            let _ = tokio::task::spawn_blocking(move || {
                                nix::sys::wait::waitpid(pid, None)
                            })
                            .await;
                        }
                    }
                }
                // Not our child: watch for the pid to go away.
                Helper::Adopted(p) => {
                    while pid_alive(*p) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Helper(
                "it did not finish tearing down in 30 s".into(),
            )),
        }
    }

    /// Ends the sandbox for good: returns once its processes are gone, and leaves its
    /// helper removing the rest (its cgroup, mounts and run directory: the unmount of an
    /// ext4 disk alone writes its journal out, some milliseconds), tracked so that
    /// [`NamespaceBackend::settle`] can wait for it. Only a helper this process started
    /// says when the processes are gone; any other is waited for as by `destroy`.
    pub async fn end(self) -> Result<()> {
        if !matches!(self.helper, Helper::Child(..) | Helper::Spawned(..)) {
            return self.destroy().await;
        }
        self.stop_helper(crate::helper::END_SIGNAL);
        let teardowns = self.teardowns.clone();
        let mut helper = self.helper;
        // A byte once the processes are gone. The end of the pipe instead when the
        // helper exits without telling (it publishes ports, which are free only once it
        // has exited; or it died): then it is waited for, as by `destroy`.
        let gone = async {
            let mut b = [0u8; 1];
            let told = match &mut helper {
                Helper::Child(_, status) => status.read(&mut b).await,
                Helper::Spawned(_, _, status) => status.read(&mut b).await,
                _ => Ok(0),
            };
            if !matches!(told, Ok(1)) {
                exit_of(&mut helper).await;
            }
        };
        let told = tokio::time::timeout(Duration::from_secs(30), gone).await;
        let held = teardowns.hold().await;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), exit_of(&mut helper)).await;
            drop(held);
        });
        told.map_err(|_| Error::Helper("its processes were not gone after 30 s".into()))
    }
}

impl Helper {
    /// What a helper that has exited wrote on its status pipe after its status line
    /// ([`Stopped`]), read without waiting; `None` for a helper without that pipe here or
    /// one that died before writing it.
    fn told_stopped(&mut self) -> Option<Stopped> {
        let (buffered, fd) = match self {
            Helper::Child(_, status) => (status.buffer().to_vec(), status.get_ref().as_fd()),
            Helper::Spawned(_, _, status) => (status.buffer().to_vec(), status.get_ref().as_fd()),
            Helper::Forked(..) | Helper::Adopted(..) => return None,
        };
        let mut told = buffered;
        let mut chunk = [0u8; 64];
        // The writer has exited: what it wrote is there or never will be. Polled first
        // all the same, so that a descriptor someone else still holds open for writing
        // cannot make this wait.
        while told.len() < 64 {
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            if !matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
                Ok(1)
            ) || !fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
            {
                break;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => told.extend_from_slice(&chunk[..n]),
            }
        }
        Stopped::decode(&told)
    }
}

/// Waits until a helper this process started (or had forked) has exited.
async fn exit_of(helper: &mut Helper) {
    match helper {
        Helper::Child(child, _) => {
            let _ = child.wait().await;
        }
        Helper::Spawned(_, exited, _) => exit_of_pidfd(exited).await,
        Helper::Forked(..) | Helper::Adopted(..) => {}
    }
}

/// Whether `fd` is readable within `timeout` (one `poll`, retried when interrupted);
/// `None` when it cannot be polled. Of a pidfd: whether its process has exited (a
/// zombie counts as gone, as for [`pid_alive`]), where reading `/proc/PID/stat` has the
/// kernel write out the process's whole status (the daemon asks of every sandbox each
/// second, with no wait). Of a signalfd: whether one of its signals is pending.
pub(crate) fn readable_within(fd: BorrowedFd, timeout: PollTimeout) -> Option<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Some(n > 0),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Waits until the process of `pidfd` has exited (on a blocking thread: a helper takes
/// milliseconds to exit once told to).
async fn exit_of_pidfd(pidfd: &OwnedFd) {
    let Ok(fd) = pidfd.try_clone() else {
        return;
    };
    let _ =
        tokio::task::spawn_blocking(move || readable_within(fd.as_fd(), PollTimeout::NONE)).await;
}

/// The agent socket of sandbox `id`.
pub fn socket_path(paths: &Paths, id: &str) -> PathBuf {
    paths.sandbox_run(id).join("agent.sock")
}

/// Whether a helper recorded under `run` is alive.
pub fn helper_alive(run: &Path) -> bool {
    std::fs::read_to_string(run.join("helper.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(pid_alive)
}

/// Whether `pid` is a live process (a zombie waiting for its parent counts as gone).
pub(crate) fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

impl crate::Backend for NamespaceBackend {
    fn kind(&self) -> Isolation {
        Isolation::Namespace
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: Isolation::Namespace,
            available: true,
            reason: None,
            capabilities: Capabilities {
                isolation: "Linux namespaces, seccomp and cgroups on the host kernel".into(),
                strong_isolation: false,
                pause: true,
                memory_snapshots: false,
                networks: vec![NetworkMode::None, NetworkMode::Nat],
                limits: ["memory", "cpu", "pids", "disk"].map(String::from).to_vec(),
                volumes: true,
                host_mounts: true,
                publish: vec![NetworkMode::None, NetworkMode::Nat],
                lacking: Default::default(),
            },
        }
    }

    fn create(
        &self,
        spec: SandboxSpec,
        opts: CreateOptions,
    ) -> BoxFuture<'_, Result<Box<dyn Instance>>> {
        Box::pin(async move {
            let sb = NamespaceBackend::create(self, spec, opts).await?;
            Ok(Box::new(sb) as Box<dyn Instance>)
        })
    }

    fn adopt(&self, id: &str) -> Option<Box<dyn Instance>> {
        NamespaceBackend::adopt(self, id).map(|sb| Box::new(sb) as Box<dyn Instance>)
    }

    fn purge(&self, id: &str, remove_data: bool) {
        NamespaceBackend::purge(self, id, remove_data)
    }

    fn remove_data<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(NamespaceBackend::remove_data(self, id))
    }

    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(NamespaceBackend::settle(self))
    }
}

impl Instance for Sandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent_socket(&self) -> &Path {
        &self.socket
    }

    fn pause(&self) -> Result<()> {
        Sandbox::pause(self)
    }

    fn resume(&self) -> Result<()> {
        Sandbox::resume(self)
    }

    fn is_paused(&self) -> bool {
        self.cgroup.is_frozen().unwrap_or(false)
    }

    fn usage(&self) -> Usage {
        let mut usage = Usage::of(&self.cgroup);
        usage.oom_kills = self.with_told_oom_kills(usage.oom_kills);
        usage
    }

    fn cpu_us(&self) -> u64 {
        self.cgroup.cpu_usage_us()
    }

    fn oom_kills(&self) -> u64 {
        Sandbox::oom_kills(self)
    }

    fn is_alive(&mut self) -> bool {
        Sandbox::is_alive(self)
    }

    fn port_dialer(&self) -> crate::backend::PortDialer {
        let pid = self.agent_pid;
        Box::new(move |port, timeout| crate::network::connect_inside(pid, port, timeout))
    }

    fn monitor_pid(&self) -> Option<i32> {
        self.helper_pid()
    }

    fn destroy(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(Sandbox::destroy(*self))
    }

    fn end(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(Sandbox::end(*self))
    }
}
