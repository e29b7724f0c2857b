//! Control groups, v1 and v2, behind one type.
//!
//! Warren puts each sandbox in a cgroup of its own, named `warren-<id>`, directly under
//! the cgroup the calling process is in (per controller on v1), so it works inside a
//! delegated subtree and never needs the host's root cgroup. Limits are written before
//! any sandbox process joins, so nothing runs unlimited even for a moment.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The v1 controllers a sandbox is placed in.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy found: mount cgroup2 or the v1 memory, cpu, pids and freezer controllers")]
    NotMounted,
    #[error("the cgroup v1 {0} controller is not mounted; mount it or run on cgroup v2")]
    MissingController(String),
    #[error(
        "cgroup v2 controllers {0} are not available under {1}; delegate them to Warren's cgroup"
    )]
    NotDelegated(String, PathBuf),
    #[error("{}: the freezer did not {} within {} s", .path.display(), if *.frozen { "stop every task" } else { "thaw every task" }, FREEZE_WAIT.as_secs())]
    Freeze { path: PathBuf, frozen: bool },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which hierarchy this host has, and where our own cgroup sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One directory per hierarchy: (its controllers, comma-separated; our cgroup's
    /// directory in it).
    V1(Vec<(String, PathBuf)>),
    /// The unified hierarchy: our cgroup's directory.
    V2(PathBuf),
}

/// Limits written to a new cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpu_millis: Option<u32>,
    pub pids: Option<u32>,
}

const CPU_PERIOD_US: u64 = 100_000;

/// On cgroup v2, the leaf the daemon moves to so that the cgroup it was started in can
/// hand controllers to its sandboxes' cgroups.
const DAEMON_LEAF: &str = "daemon";

/// Longest wait for the freezer to stop (or thaw) every task of a cgroup.
const FREEZE_WAIT: Duration = Duration::from_secs(5);

impl Hierarchy {
    /// Detects the hierarchy from /proc/self/mountinfo and /proc/self/cgroup. A v2 mount
    /// with no controllers (the v1 "hybrid" layout) does not count as v2.
    pub fn detect() -> Result<Self, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_at(Path::new("/proc/self/mountinfo")))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(io_at(Path::new("/proc/self/cgroup")))?;
        Self::from_tables(&mountinfo, &own, Path::new("/"))
    }

    /// [`detect`](Self::detect), once per process: what a process forks after the first
    /// call (a zygote's helpers, `warren run`'s) has it already, and reads neither table
    /// again on a create's path.
    pub fn detect_shared() -> Result<Self, CgroupError> {
        static DETECTED: std::sync::OnceLock<Hierarchy> = std::sync::OnceLock::new();
        if let Some(h) = DETECTED.get() {
            return Ok(h.clone());
        }
        let h = Self::detect()?;
        Ok(DETECTED.get_or_init(|| h).clone())
    }

    /// Detection from the two tables' text; `root` prefixes every path (tests use a
    /// temporary directory as a fake cgroupfs).
    pub fn from_tables(mountinfo: &str, own: &str, root: &Path) -> Result<Self, CgroupError> {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (Some(mnt), Some(fstype), Some(opts)) = (pre.get(4), post.first(), post.get(2))
            else {
                continue;
            };
            let mnt = root.join(mnt.trim_start_matches('/'));
            match *fstype {
                "cgroup2" => v2 = Some(mnt),
                "cgroup" => {
                    for c in opts.split(',') {
                        if V1_CONTROLLERS.contains(&c) {
                            v1.push((c.to_string(), mnt.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        let own_path = |ctrl: Option<&str>| -> Option<String> {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                let hit = match ctrl {
                    None => ctrls.is_empty(),
                    Some(c) => ctrls.split(',').any(|x| x == c),
                };
                hit.then(|| path.trim_start_matches('/').to_string())
            })
        };
        if let Some(mnt) = v2 {
            // Its own leaf (see `prepare`), or systemd's `DelegateSubgroup=daemon`: the
            // sandboxes go next to it, under the cgroup it was given.
            let own = own_path(None).unwrap_or_default();
            let own = match own.rsplit_once('/') {
                Some((parent, DAEMON_LEAF)) => parent.to_string(),
                None if own == DAEMON_LEAF => String::new(),
                _ => own,
            };
            let dir = mnt.join(own);
            let controllers =
                fs::read_to_string(mnt.join("cgroup.controllers")).unwrap_or_default();
            if v1.is_empty() || controllers.contains("memory") {
                return Ok(Hierarchy::V2(dir));
            }
        }
        if v1.is_empty() {
            return Err(CgroupError::NotMounted);
        }
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        for c in V1_CONTROLLERS {
            let (_, mnt) = v1
                .iter()
                .find(|(name, _)| name == c)
                .ok_or_else(|| CgroupError::MissingController(c.to_string()))?;
            let own = own_path(Some(c)).unwrap_or_default();
            let dir = mnt.join(own);
            // Controllers mounted together (systemd's `cpu,cpuacct`) share one directory:
            // it is made, joined and removed once.
            match dirs.iter_mut().find(|(_, d)| *d == dir) {
                Some((names, _)) => {
                    names.push(',');
                    names.push_str(c);
                }
                None => dirs.push((c.to_string(), dir)),
            }
        }
        Ok(Hierarchy::V1(dirs))
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2(_))
    }

    /// The cgroup for sandbox `name` (not created).
    pub fn cgroup(&self, name: &str) -> Cgroup {
        match self {
            Hierarchy::V1(dirs) => {
                let mut paths: Vec<(String, PathBuf)> = Vec::new();
                for (c, d) in dirs {
                    paths.push((c.clone(), d.join(name)));
                }
                Cgroup { v2: false, paths }
            }
            Hierarchy::V2(d) => Cgroup {
                v2: true,
                paths: vec![(String::new(), d.join(name))],
            },
        }
    }

    /// Names of cgroups under our own whose name starts with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let dirs: Vec<&PathBuf> = match self {
            Hierarchy::V1(d) => d.iter().map(|(_, p)| p).collect(),
            Hierarchy::V2(d) => vec![d],
        };
        let mut out: Vec<String> = dirs
            .into_iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// On v2, makes sure the controllers Warren needs are enabled for children of our
    /// cgroup.
    pub fn prepare(&self) -> Result<(), CgroupError> {
        let Hierarchy::V2(dir) = self else {
            return Ok(());
        };
        let ctl = dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&ctl).map_err(io_at(&ctl))?;
        let missing: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let line: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        let line = line.join(" ");
        let refused = || CgroupError::NotDelegated(missing.join(","), dir.clone());
        match fs::write(&ctl, &line) {
            Ok(()) => Ok(()),
            // cgroup v2 gives no controllers to the children of a cgroup that holds
            // processes, and this daemon is in it: it moves to a leaf of its own first.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let leaf = dir.join(DAEMON_LEAF);
                fs::create_dir_all(&leaf).map_err(io_at(&leaf))?;
                let procs = leaf.join("cgroup.procs");
                fs::write(&procs, std::process::id().to_string()).map_err(io_at(&procs))?;
                fs::write(&ctl, &line).map_err(|_| refused())
            }
            Err(_) => Err(refused()),
        }
    }
}

/// One sandbox's cgroup (a directory per v1 controller, or one v2 directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    v2: bool,
    paths: Vec<(String, PathBuf)>,
}

impl Cgroup {
    fn dir(&self, ctrl: &str) -> &Path {
        if self.v2 {
            return &self.paths[0].1;
        }
        self.paths
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c == ctrl))
            .map(|(_, p)| p.as_path())
            .unwrap_or(&self.paths[0].1)
    }

    fn write(&self, ctrl: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = self.dir(ctrl).join(file);
        fs::write(&p, value).map_err(io_at(&p))
    }

    fn read(&self, ctrl: &str, file: &str) -> Result<String, CgroupError> {
        let p = self.dir(ctrl).join(file);
        fs::read_to_string(&p).map_err(io_at(&p))
    }

    /// The directories this cgroup is made of.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.paths.iter().map(|(_, p)| p.as_path())
    }

    pub fn exists(&self) -> bool {
        self.paths.iter().any(|(_, p)| p.exists())
    }

    /// Creates the directories and writes the limits.
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        for (_, p) in &self.paths {
            fs::create_dir(p).map_err(io_at(p))?;
        }
        let r = self.apply(limits);
        if r.is_err() {
            let _ = self.remove();
        }
        r
    }

    /// Takes `spare`'s directories (made ahead in the same hierarchies, with the limits
    /// wanted) under this cgroup's name: on v1 each is renamed within its parent, which
    /// costs none of a new directory's allocations nor the limits' writes. If one cannot
    /// be (gone: its owner removed it meanwhile), those already renamed are removed, so
    /// that nothing is left under this name and nothing comes back under the spare's for
    /// its owner to miss; v2 cannot rename a cgroup at all.
    pub fn rename_from(&self, spare: &Cgroup) -> Result<(), CgroupError> {
        if self.v2 || spare.v2 || self.paths.len() != spare.paths.len() {
            let at = spare
                .paths
                .first()
                .map_or(Path::new(""), |(_, p)| p.as_path());
            return Err(io_at(at)(io::ErrorKind::Unsupported.into()));
        }
        let mut done: Vec<&Path> = Vec::new();
        for ((_, from), (_, to)) in spare.paths.iter().zip(&self.paths) {
            if let Err(e) = fs::rename(from, to) {
                for to in done.into_iter().rev() {
                    let _ = fs::remove_dir(to);
                }
                return Err(io_at(from)(e));
            }
            done.push(to);
        }
        Ok(())
    }

    fn apply(&self, l: &Limits) -> Result<(), CgroupError> {
        if self.v2 {
            if let Some(m) = l.memory {
                self.write("", "memory.max", &m.to_string())?;
                // Absent when the host has no swap accounting: nothing to bound then.
                let _ = self.write("", "memory.swap.max", "0");
            }
            if l.cpu_millis.is_some() {
                self.set_cpu(l.cpu_millis)?;
            }
            if let Some(p) = l.pids {
                self.write("", "pids.max", &p.to_string())?;
            }
            return Ok(());
        }
        if let Some(m) = l.memory {
            self.write("memory", "memory.limit_in_bytes", &m.to_string())?;
            let sw = self.dir("memory").join("memory.memsw.limit_in_bytes");
            if sw.exists() {
                fs::write(&sw, m.to_string()).map_err(io_at(&sw))?;
            }
        }
        if l.cpu_millis.is_some() {
            self.set_cpu(l.cpu_millis)?;
        }
        if let Some(p) = l.pids {
            self.write("pids", "pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// Sets the CPU bandwidth to `cpu_millis` thousandths of a core, or none at all.
    pub fn set_cpu(&self, cpu_millis: Option<u32>) -> Result<(), CgroupError> {
        let quota = cpu_millis.map(|c| u64::from(c) * CPU_PERIOD_US / 1000);
        if self.v2 {
            let quota = quota.map_or("max".to_string(), |q| q.to_string());
            return self.write("", "cpu.max", &format!("{quota} {CPU_PERIOD_US}"));
        }
        // A new cgroup's period is already this one: each write of either file makes
        // the kernel check every CPU cgroup's bandwidth on the host.
        let period = CPU_PERIOD_US.to_string();
        if self
            .read("cpu", "cpu.cfs_period_us")
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(&period)
        {
            self.write("cpu", "cpu.cfs_period_us", &period)?;
        }
        let quota = quota.map_or("-1".to_string(), |q| q.to_string());
        self.write("cpu", "cpu.cfs_quota_us", &quota)
    }

    /// The CPU bandwidth set, in thousandths of a core; `None` when there is none (or it
    /// cannot be read).
    pub fn cpu(&self) -> Option<u32> {
        let (quota, period) = if self.v2 {
            let line = self.read("", "cpu.max").ok()?;
            let mut parts = line.split_whitespace();
            (
                parts.next()?.parse::<u64>().ok()?,
                parts.next()?.parse::<u64>().ok()?,
            )
        } else {
            let quota = self.read("cpu", "cpu.cfs_quota_us").ok()?;
            let period = self.read("cpu", "cpu.cfs_period_us").ok()?;
            (
                quota.trim().parse::<u64>().ok()?,
                period.trim().parse::<u64>().ok()?,
            )
        };
        (period > 0).then(|| (quota * 1000 / period) as u32)
    }

    /// Moves process `pid` into this cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        let mut seen = Vec::new();
        for (_, p) in &self.paths {
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            let f = p.join("cgroup.procs");
            fs::write(&f, pid.to_string()).map_err(io_at(&f))?;
        }
        Ok(())
    }

    /// On v1, opens this cgroup's `tasks` file in every hierarchy, so that a process forked
    /// after this call can move itself in with [`SelfJoin::join`]; `None` on v2. Either
    /// way, [`Cgroup::finish_join`] once the process has started.
    ///
    /// Why: moving a whole process (a pid written to `cgroup.procs`, as `add` does) takes
    /// the kernel's `cgroup_threadgroup_rwsem` for writing, and its first writer waits for
    /// an RCU grace period: 7-16 ms on a small virtual machine, the largest single step of
    /// a sandbox's start. A thread that writes `0` to v1's `tasks` moves itself alone and
    /// the kernel skips that lock; a process with one thread is then wholly in. The kernel
    /// checks the rights of whoever opened the file, so the process may already have
    /// dropped its own.
    pub fn open_for_self(&self) -> Result<Option<SelfJoin>, CgroupError> {
        if self.v2 {
            return Ok(None);
        }
        let files = self
            .self_join_files()
            .into_iter()
            .map(|f| {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .map_err(io_at(&f))?;
                Ok((f, file))
            })
            .collect::<Result<_, CgroupError>>()?;
        Ok(Some(SelfJoin { files }))
    }

    /// The files a process writes `0` to, with [`join_self`], to move itself into this
    /// cgroup from another program: v1's `tasks` in each hierarchy (the writing thread
    /// alone, without the wait [`Cgroup::open_for_self`] explains), v2's `cgroup.procs`.
    pub fn self_join_files(&self) -> Vec<PathBuf> {
        let name = if self.v2 { "cgroup.procs" } else { "tasks" };
        let mut files: Vec<PathBuf> = Vec::new();
        for (_, p) in &self.paths {
            let f = p.join(name);
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files
    }

    /// Puts process `pid`, started after [`Cgroup::open_for_self`] with what it returned,
    /// in the cgroup: on v1 it has moved itself and nothing is left to do; on v2 it is
    /// moved here, by pid.
    pub fn finish_join(&self, pid: i32) -> Result<(), CgroupError> {
        if self.v2 {
            self.add(pid)
        } else {
            Ok(())
        }
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let ctrl = if self.v2 { "" } else { "pids" };
        self.read(ctrl, "cgroup.procs")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Stops every process (freezer); returns once the kernel says they are frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        if self.v2 {
            self.write("", "cgroup.freeze", if frozen { "1" } else { "0" })?;
        } else {
            self.write(
                "freezer",
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            )?;
        }
        // Freezing is asynchronous: wait until every task has stopped. One that will not
        // (a task stuck in the kernel) fails the freeze, which is undone: a caller that
        // went on would snapshot live files, or report paused what still runs.
        let deadline = Instant::now() + FREEZE_WAIT;
        while self.is_frozen()? != frozen {
            if Instant::now() >= deadline {
                if frozen {
                    let _ = self.set_frozen(false);
                }
                return Err(CgroupError::Freeze {
                    path: self
                        .paths
                        .first()
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default(),
                    frozen,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        if self.v2 {
            let ev = self.read("", "cgroup.events")?;
            return Ok(ev.lines().any(|l| l.trim() == "frozen 1"));
        }
        Ok(self.read("freezer", "freezer.state")?.trim() == "FROZEN")
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (ctrl, file) = if self.v2 {
            ("", "memory.events")
        } else {
            ("memory", "memory.oom_control")
        };
        self.read(ctrl, file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many times a new task was refused for the cgroup's pids limit.
    pub fn task_limit_hits(&self) -> u64 {
        let ctrl = if self.v2 { "" } else { "pids" };
        self.read(ctrl, "pids.events")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("max ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Memory in use, bytes.
    pub fn memory_current(&self) -> u64 {
        let (ctrl, file) = if self.v2 {
            ("", "memory.current")
        } else {
            ("memory", "memory.usage_in_bytes")
        };
        self.read(ctrl, file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Processes and threads in the cgroup now, as its pids limit counts them.
    pub fn tasks_current(&self) -> u64 {
        let ctrl = if self.v2 { "" } else { "pids" };
        self.read(ctrl, "pids.current")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used, microseconds.
    pub fn cpu_usage_us(&self) -> u64 {
        if self.v2 {
            return self
                .read("", "cpu.stat")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
                .unwrap_or(0);
        }
        self.read("cpuacct", "cpuacct.usage")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|ns| ns / 1000)
            .unwrap_or(0)
    }

    /// Kills every process in the cgroup and waits (up to `timeout`) until none is left.
    /// Frozen tasks cannot die, so the cgroup is thawed first.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        if self.is_frozen().unwrap_or(false) {
            self.thaw()?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if self.v2 && self.dir("").join("cgroup.kill").exists() {
                let _ = self.write("", "cgroup.kill", "1");
            } else {
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if Instant::now() > deadline {
                let p = self.dir("pids").to_owned();
                return Err(CgroupError::Io {
                    path: p,
                    source: io::Error::new(io::ErrorKind::TimedOut, "processes survived SIGKILL"),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the directories. They must hold no process. A killed process leaves its
    /// cgroup only at the end of its exit, after it has freed its memory and dropped its
    /// namespaces (the last one out of a mount namespace unmounts its file systems, a
    /// journal commit on a busy disk), and it is gone from `cgroup.procs` before that:
    /// a directory the kernel still calls busy is tried again, first after 1 ms, then
    /// twice as long each time up to 50 ms, for up to [`REMOVE_PATIENCE`]. Every
    /// hierarchy is tried even when one fails; the first failure is returned.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.remove_within(REMOVE_PATIENCE)
    }

    fn remove_within(&self, patience: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + patience;
        let mut first = None;
        for (_, p) in &self.paths {
            let mut nap = Duration::from_millis(1);
            loop {
                match fs::remove_dir(p) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(nap);
                        nap = (nap * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => {
                        first.get_or_insert(io_at(p)(e));
                        break;
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// How long [`Cgroup::remove`] waits for the processes of a cgroup to finish exiting.
pub const REMOVE_PATIENCE: Duration = Duration::from_secs(10);

/// Moves the calling process into the cgroup whose [`Cgroup::self_join_files`] are
/// `files`. The caller must be its process's only thread: on v1 another thread would stay
/// where it was, outside the cgroup's limits.
pub fn join_self(files: &[PathBuf]) -> Result<(), CgroupError> {
    for f in files {
        fs::write(f, b"0").map_err(io_at(f))?;
    }
    Ok(())
}

/// A v1 cgroup's `tasks` files, open for a process to move itself in: see
/// [`Cgroup::open_for_self`]. The descriptors close on exec and when this is dropped.
#[derive(Debug)]
pub struct SelfJoin {
    files: Vec<(PathBuf, fs::File)>,
}

impl SelfJoin {
    /// Moves the calling thread into the cgroup, in every hierarchy. The caller must be
    /// its process's only thread (a process just forked is): another thread would stay
    /// where it was, outside the cgroup's limits. Makes no allocation unless it fails, so
    /// a forked child may call it.
    pub fn join(&self) -> Result<(), CgroupError> {
        for (path, file) in &self.files {
            match (&*file).write(b"0") {
                Ok(1) => {}
                Ok(_) => {
                    return Err(CgroupError::Io {
                        path: path.clone(),
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    })
                }
                Err(e) => return Err(io_at(path)(e)),
            }
        }
        Ok(())
    }

    /// Has the process `cmd` starts move itself in between its fork and its exec, so that
    /// the program runs in the cgroup from its first instruction. The files close with
    /// `cmd` (and on exec in the child).
    pub fn join_on_spawn(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook runs in the forked child, whose only thread it is; `join`
        // writes to descriptors already open and allocates nothing on success. On failure
        // it reports the errno alone, also without allocating.
        unsafe {
            cmd.pre_exec(move || {
                self.join().map_err(|e| match e {
                    CgroupError::Io { source, .. } => match source.raw_os_error() {
                        Some(n) => io::Error::from_raw_os_error(n),
                        None => io::Error::from(io::ErrorKind::WriteZero),
                    },
                    _ => io::Error::from(io::ErrorKind::Other),
                })
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "8:pids:/\n6:freezer:/\n4:memory:/job/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_host_is_v1_under_own_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::from_tables(HYBRID, OWN, root.path()).unwrap();
        let Hierarchy::V1(dirs) = &h else {
            panic!("expected v1, got {h:?}")
        };
        let mem = &dirs.iter().find(|(c, _)| c == "memory").unwrap().1;
        assert_eq!(mem, &root.path().join("sys/fs/cgroup/memory/job/abc"));
    }

    #[test]
    fn a_process_joins_by_the_tasks_files_on_v1_and_cgroup_procs_on_v2() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::from_tables(HYBRID, OWN, root.path()).unwrap();
        let files = h.cgroup("warren-x").self_join_files();
        let base = root.path().join("sys/fs/cgroup");
        assert_eq!(files.len(), 5, "one per hierarchy: {files:?}");
        assert!(files.contains(&base.join("memory/job/abc/warren-x/tasks")));
        assert!(files.contains(&base.join("pids/warren-x/tasks")));
        let v2 = Hierarchy::V2(base.join("user.slice"));
        assert_eq!(
            v2.cgroup("warren-x").self_join_files(),
            vec![base.join("user.slice/warren-x/cgroup.procs")]
        );
        // Written as the kernel takes it: `0`, the writer itself.
        let dir = root.path().join("fake");
        fs::create_dir_all(&dir).unwrap();
        join_self(&[dir.join("tasks")]).unwrap();
        assert_eq!(fs::read_to_string(dir.join("tasks")).unwrap(), "0");
        assert!(join_self(&[dir.join("missing/tasks")]).is_err());
    }

    #[test]
    fn unified_with_controllers_is_v2() {
        let root = tempfile::tempdir().unwrap();
        let mnt = root.path().join("sys/fs/cgroup");
        fs::create_dir_all(&mnt).unwrap();
        fs::write(mnt.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let mi = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::from_tables(mi, "0::/user.slice/x\n", root.path()).unwrap();
        assert_eq!(h, Hierarchy::V2(mnt.join("user.slice/x")));
    }

    #[test]
    fn on_v2_a_daemon_leaf_puts_sandboxes_next_to_it() {
        let root = tempfile::tempdir().unwrap();
        let mnt = root.path().join("sys/fs/cgroup");
        fs::create_dir_all(&mnt).unwrap();
        fs::write(mnt.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let mi = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let own = "0::/system.slice/warren.service/daemon\n";
        let h = Hierarchy::from_tables(mi, own, root.path()).unwrap();
        assert_eq!(h, Hierarchy::V2(mnt.join("system.slice/warren.service")));
        let h = Hierarchy::from_tables(mi, "0::/daemon\n", root.path()).unwrap();
        assert_eq!(h, Hierarchy::V2(mnt.clone()));
    }

    #[test]
    fn a_forked_process_moves_itself_into_every_v1_hierarchy() {
        let skip = |why: &str| {
            warren_testkit::skip("a_forked_process_moves_itself_into_every_v1_hierarchy", why)
        };
        if !nix::unistd::geteuid().is_root() {
            return skip("needs root");
        }
        let h = match Hierarchy::detect() {
            Ok(h @ Hierarchy::V1(_)) => h,
            Ok(_) => return skip("this host is on cgroup v2"),
            Err(e) => return skip(&e.to_string()),
        };
        let name = format!("warren-selfjoin-test-{}", std::process::id());
        let cg = h.cgroup(&name);
        cg.create(&Limits::default()).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        cg.open_for_self().unwrap().unwrap().join_on_spawn(&mut cmd);
        let spawned = cmd.spawn();
        let seen = spawned
            .as_ref()
            .map(|c| fs::read_to_string(format!("/proc/{}/cgroup", c.id())).unwrap_or_default())
            .map_err(|e| e.to_string());
        let in_cgroup = cg.pids();
        if let Ok(mut c) = spawned {
            let _ = c.kill();
            let _ = c.wait();
        }
        cg.remove().unwrap();
        let seen = seen.unwrap();
        for ctrl in V1_CONTROLLERS {
            let line = seen
                .lines()
                .find(|l| l.split(':').nth(1).unwrap().split(',').any(|c| c == ctrl))
                .unwrap_or_else(|| panic!("no {ctrl} line in {seen}"));
            assert!(line.ends_with(&format!("/{name}")), "{ctrl}: {line}");
        }
        assert_eq!(in_cgroup.len(), 1, "{in_cgroup:?}");
    }

    #[test]
    fn a_busy_cgroup_is_removed_once_it_is_free() {
        let skip =
            |why: &str| warren_testkit::skip("a_busy_cgroup_is_removed_once_it_is_free", why);
        if !nix::unistd::geteuid().is_root() {
            return skip("needs root");
        }
        let h = match Hierarchy::detect() {
            Ok(h) => h,
            Err(e) => return skip(&e.to_string()),
        };
        let cg = h.cgroup(&format!("warren-busy-test-{}", std::process::id()));
        cg.create(&Limits::default()).unwrap();
        // A cgroup with a child cgroup is busy, as one whose last process is still
        // exiting is: the kernel answers EBUSY until the child goes.
        let child = cg.paths().next().unwrap().join("child");
        fs::create_dir(&child).unwrap();
        let freed = {
            let child = child.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                fs::remove_dir(&child).unwrap();
            })
        };
        let removed = cg.remove();
        freed.join().unwrap();
        let left = cg.exists();
        let _ = cg.remove();
        removed.unwrap();
        assert!(!left);
    }

    #[test]
    fn every_hierarchy_is_removed_when_one_cannot_be() {
        let root = tempfile::tempdir().unwrap();
        let h = fake_v1(root.path());
        let cg = h.cgroup("warren-t3");
        cg.create(&Limits::default()).unwrap();
        let first = cg.paths().next().unwrap().to_owned();
        fs::create_dir(first.join("stuck")).unwrap();
        let e = cg.remove_within(Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains(&first.display().to_string()), "{e}");
        let left: Vec<_> = cg.paths().filter(|p| p.exists()).collect();
        assert_eq!(left, vec![first.as_path()]);
    }

    #[test]
    fn no_hierarchy_is_a_clear_error() {
        let e = Hierarchy::from_tables("", "", Path::new("/")).unwrap_err();
        assert!(matches!(e, CgroupError::NotMounted));
    }

    fn fake_v1(root: &Path) -> Hierarchy {
        let h = Hierarchy::from_tables(HYBRID, OWN, root).unwrap();
        if let Hierarchy::V1(d) = &h {
            for (_, p) in d {
                fs::create_dir_all(p).unwrap();
            }
        }
        h
    }

    #[test]
    fn v1_limits_are_written_before_use() {
        let root = tempfile::tempdir().unwrap();
        let h = fake_v1(root.path());
        let cg = h.cgroup("warren-t1");
        // A fake cgroupfs has no control files until they are written.
        cg.create(&Limits {
            memory: Some(256 << 20),
            cpu_millis: Some(500),
            pids: Some(64),
        })
        .unwrap();
        let read = |ctrl: &str, f: &str| fs::read_to_string(cg.dir(ctrl).join(f)).unwrap();
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("pids", "pids.max"), "64");
        // Lifted for a while, and set again.
        assert_eq!(cg.cpu(), Some(500));
        cg.set_cpu(None).unwrap();
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "-1");
        assert_eq!(cg.cpu(), None);
        cg.set_cpu(Some(500)).unwrap();
        assert_eq!(cg.cpu(), Some(500));
        assert_eq!(h.list("warren-"), vec!["warren-t1".to_string()]);
    }

    #[test]
    fn a_spare_is_renamed_into_place_or_nothing_is_left_under_the_new_name() {
        let root = tempfile::tempdir().unwrap();
        let h = fake_v1(root.path());
        let limits = Limits {
            memory: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(32),
        };
        let spare = h.cgroup("warren-spare-1-0");
        spare.create(&limits).unwrap();
        let cg = h.cgroup("warren-a");
        cg.rename_from(&spare).unwrap();
        assert!(!spare.exists());
        assert_eq!(cg.paths().filter(|p| p.is_dir()).count(), 5);
        assert_eq!(cg.cpu(), Some(500));
        assert_eq!(
            fs::read_to_string(cg.dir("pids").join("pids.max")).unwrap(),
            "32"
        );

        // Its owner removed part of it meanwhile: what was renamed is removed, the rest
        // stays for the owner (a fake cgroupfs has no control files until written).
        let spare = h.cgroup("warren-spare-1-1");
        spare.create(&Limits::default()).unwrap();
        fs::remove_dir(spare.dir("pids")).unwrap();
        let taken = h.cgroup("warren-b");
        assert!(taken.rename_from(&spare).is_err());
        assert!(!taken.exists());
        assert_eq!(spare.paths().filter(|p| p.is_dir()).count(), 1);
        // v2 has no rename.
        let v2 = Hierarchy::V2(root.path().join("v2"));
        assert!(v2
            .cgroup("warren-c")
            .rename_from(&v2.cgroup("warren-d"))
            .is_err());
    }

    #[test]
    fn controllers_mounted_together_share_one_directory() {
        // systemd's layout: cpu and cpuacct in one hierarchy.
        const TOGETHER: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
";
        const OWN: &str = "8:pids:/\n6:freezer:/\n4:memory:/\n2:cpu,cpuacct:/x\n";
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::from_tables(TOGETHER, OWN, root.path()).unwrap();
        let Hierarchy::V1(dirs) = &h else {
            panic!("expected v1, got {h:?}")
        };
        for (_, p) in dirs {
            fs::create_dir_all(p).unwrap();
        }
        assert_eq!(dirs.len(), 4, "{dirs:?}");
        let cg = h.cgroup("warren-t2");
        cg.create(&Limits {
            cpu_millis: Some(250),
            ..Limits::default()
        })
        .unwrap();
        let both = root.path().join("sys/fs/cgroup/cpu,cpuacct/x/warren-t2");
        assert_eq!(cg.dir("cpu"), both);
        assert_eq!(cg.dir("cpuacct"), both);
        assert_eq!(cg.cpu(), Some(250));
        assert_eq!(cg.self_join_files().len(), 4);
        assert_eq!(cg.paths().count(), 4);
    }

    #[test]
    fn v2_limits_use_unified_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cg");
        fs::create_dir_all(&dir).unwrap();
        let h = Hierarchy::V2(dir.clone());
        let cg = h.cgroup("warren-t2");
        cg.create(&Limits {
            memory: Some(1 << 30),
            cpu_millis: Some(1500),
            pids: None,
        })
        .unwrap();
        let read = |f: &str| fs::read_to_string(dir.join("warren-t2").join(f)).unwrap();
        assert_eq!(read("memory.max"), (1u64 << 30).to_string());
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(cg.cpu(), Some(1500));
        cg.set_cpu(None).unwrap();
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(cg.cpu(), None);
        fs::write(
            dir.join("warren-t2/memory.events"),
            "low 0\noom 2\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 1);
        fs::write(dir.join("warren-t2/pids.current"), "7\n").unwrap();
        assert_eq!(cg.tasks_current(), 7);
    }
}
