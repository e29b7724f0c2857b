//! Starting a sandboxed process: the child made with `clone(CLONE_VM | CLONE_VFORK)` on a
//! stack of its own, as `posix_spawn` makes it, and what it does before exec.
//!
//! A child that shares its parent's memory costs no copy of the parent's page tables:
//! under gVisor a fork copies the agent's whole address space in the Sentry (20-30 ms on
//! the ptrace platform, against 6-9 ms for a spawn that shares it), on a host a few
//! hundred microseconds. The price is care: the parent's calling thread waits until the
//! child has exec'd or exited, and the child runs on the parent's memory, so it makes
//! only plain syscalls on data [`spawn`] prepared before the clone (no allocation, no
//! lock, nothing of libc's that keeps state for the whole process: the uid and gid are
//! changed by raw syscalls, as glibc's `setuid` would signal every thread of the
//! *parent*). Signals are blocked in the parent's thread around the clone, so no handler
//! of the parent runs in the child; the child resets every handler before unblocking. A
//! failing step leaves its errno where the parent reads it, and the child exits: a
//! process never starts half-confined.
//!
//! The steps run in this order, each for a reason:
//!
//! 1. stdin, stdout and stderr (pipes or `/dev/null`) moved onto 0-2, then the working
//!    directory.
//! 2. `setsid`: a new session and process group, so a timeout or a disconnect can kill
//!    the whole group, and so a terminal can become the controlling one.
//! 3. The terminal (if any) becomes the controlling terminal and stdin/stdout/stderr.
//! 4. Every descriptor above 2 becomes close-on-exec: the agent's sockets, other
//!    processes' pipes and whatever a library left inheritable must not leak into tenant
//!    code.
//! 5. `oom_score_adj` 1000: when a sandbox runs out of memory the OOM killer must pick
//!    a sandboxed process, never the agent, which reports the kill. (Lowering the
//!    agent's own score would need CAP_SYS_RESOURCE, which hosts may withhold; raising
//!    a score needs nothing.) The child takes it from its parent rather than writing
//!    it: a process's score is copied into the processes it clones, and the kernel
//!    keeps one score for every process of one memory, so a child that raised its own
//!    before exec would raise the agent's with it, for good (so it was under runc and
//!    crun). The parent raises its own score through its own `oom_score_adj`, held
//!    open ([`keep_oom_score_file`]: the agent's `/proc` files are global root's, not
//!    its own, once it is not dumpable), clones, and lowers it again once the child has
//!    exec'd into memory of its own: the program is the OOM killer's first choice from
//!    its first instruction, and the agent is one only for the clone's few hundred
//!    microseconds, and then only as a sandbox process of its size would be. A parent
//!    that holds no such file raises the child's score as soon as the program runs;
//!    until then a program that forks at once (`sh -c 'big; echo'`) gives its children
//!    the agent's score, and the OOM killer then takes the shell. The clone then waits
//!    for the exec (`CLONE_VFORK`): the kernel marks for good a memory that a second
//!    process shares while both run, and each write of a score of a process of a marked
//!    memory walks every process on the host under one kernel-wide lock (some 0.09 ms
//!    a write with 200 sandboxes running); a child the parent waits for in the clone
//!    marks nothing. (Nor may anything else of the agent's: the namespace its sandbox
//!    is made with is made by a thread, `crate::ns::NetnsBeside`.) Its parent unable to
//!    kill it meanwhile, such a child first arms a timer that kills it at the deadline
//!    the parent would have kept (`EXEC_DEADLINE`, 10 s); an exec deletes it.
//! 6. The signal mask and dispositions are reset: the agent's handlers and masks are its
//!    own business, and an ignored signal would survive exec. Only the signals the agent
//!    ignores or catches are reset (asked of the kernel once its handlers are
//!    set, [`record_dispositions`]): the others are at their default already.
//! 7. Capabilities drop to [`crate::caps`]'s set, before the uid changes, because the
//!    bounding set can only shrink while `CAP_SETPCAP` is effective. (The agent limits
//!    its own bounding set as it starts, [`crate::caps::limit_bounding_set`]; its
//!    children then inherit it and only drop the other sets.)
//! 8. Groups, gid, then uid (the uid last: it takes the right to change the others).
//! 9. `no_new_privs`, so setuid binaries and file capabilities cannot undo steps 7-8, and
//!    so an unprivileged process may install seccomp.
//! 10. seccomp, so the filter never has to allow the setup above. A parent that runs under
//!     the policy already (the agent puts itself under it, so that each exec does not
//!     compile it again) passes none: the child inherits the parent's filter, and the
//!     setup above is then made under it, which refuses none of those calls.
//! 11. exec; a file the kernel cannot run (`ENOEXEC`: a script without `#!`) is run by
//!     `/bin/sh`, as `execvp` does.
//!
//! A template that carries setuid programs it trusts (a distribution's `sudo`) asks for
//! [`ChildSetup::allow_setuid`]: then step 9 is left out, so a setuid program can raise
//! its process to the sandbox's root and no further (the bounding set of step 7 and the
//! filter stay), and the filter is installed first, before step 7, while the child still
//! holds `CAP_SYS_ADMIN` in the sandbox's user namespace, which installing a filter
//! without `no_new_privs` needs. The steps after it are ones the filter allows.
//!
//! The child is never made dumpable: dumpability belongs to the memory, and until exec
//! that is the agent's. A dumpable process can be ptraced, and its `/proc/PID/mem`
//! written, by the sandbox's root or a process of its uid: a child made so before exec
//! would hand them the agent itself. Non-dumpable, it is reachable only as the agent
//! is, and exec gives the program memory of its own, dumpable as its credentials say.
//! A process of the new uid may still stop the child between its uid change and exec
//! with a signal: the parent waits for the exec at most 10 s (`EXEC_DEADLINE`), then kills
//! it.

use std::ffi::{c_char, c_int, c_void, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::seccomp::SeccompProgram;

/// Who a child becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; empty leaves none.
    pub groups: Vec<u32>,
}

/// Everything a child sets up before exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// A pseudo-terminal slave that becomes the controlling terminal and fds 0-2
    /// (the program's stdin, stdout and stderr are then left out).
    pub tty: Option<OwnedFd>,
    /// Raise `oom_score_adj` to 1000, making the process the OOM killer's first choice
    /// (see the module doc).
    pub oom_victim: bool,
    pub identity: Option<Identity>,
    /// Limit capabilities to [`crate::caps::KEPT_MASK`].
    pub drop_caps: bool,
    pub seccomp: Option<Arc<SeccompProgram>>,
    /// Leave `no_new_privs` unset so setuid programs work (see the module doc).
    pub allow_setuid: bool,
}

/// What one of a child's stdin, stdout and stderr is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A pipe whose other end [`spawn`] answers.
    Pipe,
}

/// A program for [`spawn`] to start.
#[derive(Debug, Clone)]
pub struct Program {
    /// Its file, found beforehand (no `PATH` search).
    pub path: OsString,
    /// Its arguments, `argv[0]` first.
    pub argv: Vec<OsString>,
    /// Its whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Its working directory.
    pub cwd: OsString,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// A started child: its pid and the parent's ends of the pipes asked for. The caller
/// waits for it (it is an ordinary child, `SIGCHLD` on exit).
#[derive(Debug)]
pub struct Spawned {
    pub pid: libc::pid_t,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// How long a child may take from the clone to its exec before it is killed: one
/// stopped by a signal (its user may send it one once its uid has changed) would hold
/// the parent, which waits for the exec, forever. The parent kills it, or, when the
/// parent waits in the clone itself (`CLONE_VFORK`), the child's own timer does.
const EXEC_DEADLINE: Duration = Duration::from_secs(10);

/// The child's stack. Small: the child makes syscalls and nothing else.
const STACK_SIZE: usize = 128 << 10;

/// Starts `program` confined by `setup` (the steps of the module doc) in a child that
/// shares this process's memory until it execs. Returns once the program runs; a step
/// that failed is the error (`ENOENT`, `EACCES` and the like from exec among them), and
/// then no process is left.
pub fn spawn(program: &Program, setup: ChildSetup) -> io::Result<Spawned> {
    let plan_data = PlanData::new(program, setup)?;
    let (report_r, report_w) = pipe()?;
    let report_w = above_stdio(report_w)?;
    // The parent's ends of the pipes asked for, and the child's: its stdin, stdout and
    // stderr, `/dev/null` (opened once, whatever takes it) for the others.
    let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
    let mut pipe_ends: [Option<OwnedFd>; 3] = [None, None, None];
    let mut null: Option<OwnedFd> = None;
    let mut stdio: [RawFd; 3] = [-1; 3];
    if plan_data.tty.is_none() {
        for (i, how) in [program.stdin, program.stdout, program.stderr]
            .into_iter()
            .enumerate()
        {
            stdio[i] = match how {
                Stdio::Null => match &null {
                    Some(fd) => fd.as_raw_fd(),
                    None => null.insert(above_stdio(open_null()?)?).as_raw_fd(),
                },
                Stdio::Pipe => {
                    let (r, w) = pipe()?;
                    let (mine, theirs) = if i == 0 { (w, r) } else { (r, w) };
                    parent_ends[i] = Some(mine);
                    pipe_ends[i].insert(above_stdio(theirs)?).as_raw_fd()
                }
            };
        }
    }
    let spare = SPARE_STACK.lock().unwrap_or_else(|e| e.into_inner()).take();
    let stack = match spare {
        Some(stack) => stack,
        None => Stack::new(STACK_SIZE)?,
    };
    // The child takes its score from this process, raised until it has exec'd (step 5).
    let raised = match plan_data.oom_victim {
        true => RaisedScore::raise(),
        false => None,
    };
    // With the score raised around it, the clone waits for the exec (CLONE_VFORK): a
    // memory that a second process shares while it runs is marked for good, and every
    // write of its score after walks every process on the host. The child then keeps
    // its own deadline (step 0).
    let vfork = raised.is_some();
    let plan = Plan {
        data: &plan_data,
        stdio,
        report: report_w.as_raw_fd(),
        own_deadline: vfork,
    };
    let flags = match vfork {
        true => libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        false => libc::CLONE_VM | libc::SIGCHLD,
    };

    // No handler of this process may run in the child (it shares our memory): every
    // signal is blocked in this thread until the child has exec'd or exited; the child
    // resets the handlers before it unblocks them.
    let blocked = BlockedSignals::all()?;
    // SAFETY: `child_main` runs on `stack`, which stays mapped, with `plan` and all it
    // points at alive and untouched, until the report pipe says the child has exec'd or
    // exited (below; with CLONE_VFORK the clone itself returns only then). CLONE_VM
    // without CLONE_FILES or CLONE_SIGHAND: the child shares this memory and nothing else.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            flags,
            std::ptr::from_ref(&plan).cast_mut().cast(),
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        drop(blocked);
        return Err(e);
    }
    drop(report_w);
    drop((pipe_ends, null));
    let report = wait_exec(&report_r, pid);
    // The child has exec'd (its memory is its own: lowering this process's score no
    // longer lowers its) or will not.
    let inherited = raised.is_some();
    drop(raised);
    drop(blocked);
    let failed = match report {
        Ok(None) => None,
        Ok(Some(errno)) => Some(io::Error::from_raw_os_error(errno)),
        Err(e) => Some(e),
    };
    match failed {
        // Exec'd (or killed): the child runs on its stack no more; the next spawn takes it.
        None => *SPARE_STACK.lock().unwrap_or_else(|e| e.into_inner()) = Some(stack),
        // A child that reported a failure may still be on its way out on it.
        Some(_) => drop(stack),
    }
    if let Some(e) = failed {
        reap(pid);
        return Err(e);
    }
    if plan_data.oom_victim && !inherited {
        // This process could not raise its own score: the program runs now, in memory of
        // its own, and its files are its owner's or its user namespace's root's, which
        // the agent is. One that has already ended (`true`) has no memory and its files
        // are global root's again: nothing to raise.
        let path = CString::new(format!("/proc/{pid}/oom_score_adj")).expect("no NUL in a number");
        if let Err(e) = write_oom_score_adj_max(&path) {
            if !ended(pid) {
                // SAFETY: kill takes plain integers; `pid` is our unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                reap(pid);
                return Err(e);
            }
        }
    }
    let [stdin, stdout, stderr] = parent_ends;
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
    })
}

/// Waits until the child has exec'd (`None`) or reported the errno of the step that
/// failed; past [`EXEC_DEADLINE`] it is killed.
fn wait_exec(report: &OwnedFd, pid: libc::pid_t) -> io::Result<Option<c_int>> {
    let deadline = Instant::now() + EXEC_DEADLINE;
    let mut killed = false;
    let mut buf = [0u8; 4];
    let mut got = 0;
    loop {
        let timeout = if killed {
            -1
        } else {
            deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(c_int::MAX as u128) as c_int
        };
        let mut pfd = libc::pollfd {
            fd: report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // SAFETY: kill takes plain integers; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
            continue;
        }
        // SAFETY: reads into the rest of `buf`, of its length.
        let r = unsafe {
            libc::read(
                report.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match r {
            0 if got == buf.len() => return Ok(Some(c_int::from_ne_bytes(buf))),
            0 if killed => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the new process did not start within 10 s (stopped?) and was killed",
                ))
            }
            0 => return Ok(None),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            r => got = (got + r as usize).min(buf.len()),
        }
    }
}

/// Whether `pid`, our child, has ended or is ending (a zombie, or past releasing its
/// memory: `PF_EXITING`).
fn ended(pid: libc::pid_t) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After the command's closing parenthesis: state, ppid, pgrp, session, tty, tpgid,
    // flags.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let state = fields.first().copied().unwrap_or("Z");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Waits for a child that never ran its program (another waiter may have reaped it).
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is written once.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// What the child reads: every string and array it needs, made before the clone.
struct PlanData {
    path: CString,
    /// The strings `argv_ptrs` points at, alive as long as it.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// The strings `envp_ptrs` points at.
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    /// `/bin/sh PATH ARGS...`, for a file exec cannot run by itself.
    sh_argv_ptrs: Vec<*const c_char>,
    cwd: CString,
    tty: Option<OwnedFd>,
    oom_victim: bool,
    identity: Option<Identity>,
    drop_caps: bool,
    seccomp: Option<Arc<SeccompProgram>>,
    allow_setuid: bool,
    /// The signals the child resets (bit n-1 for signal n): those this process ignores
    /// or catches when the plan is made; all of them when the kernel does not say.
    signals: u64,
}

const SH: &std::ffi::CStr = c"/bin/sh";

/// The signals this process ignores or catches, once recorded ([`record_dispositions`]).
static RECORDED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Records which signals this process ignores or catches, for a process that has set
/// every handler it will have (the agent, as it starts, before anything of its sandbox
/// runs): every plan after takes them from here instead of asking the kernel again. A
/// process that records nothing has each plan ask for its own. True when recorded.
pub fn record_dispositions() -> bool {
    disposed_signals().is_some_and(|mask| RECORDED.set(mask).is_ok())
}

/// The signals a child resets before exec: the recorded ones, or those read now, or all.
fn signals_to_reset() -> u64 {
    match RECORDED.get() {
        Some(&mask) => mask,
        None => disposed_signals().unwrap_or(u64::MAX),
    }
}

/// The kernel's number of signals; its sigaction calls take a set of this many bits.
const KERNEL_NSIG: c_int = 64;

/// Every signal whose action can be asked or set (all but SIGKILL and SIGSTOP).
/// Allocates nothing: fit for the child.
fn settable_signals() -> impl Iterator<Item = c_int> {
    (1..=KERNEL_NSIG).filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
}

/// The signals this process ignores or catches (bit n-1 for signal n), asked of the
/// kernel one signal at a time: the only ones a child must reset before exec, as every
/// other is at its default already. (Not read from `/proc/self/status`: gVisor's has no
/// signal lines, so every child there reset all 62, some 60 trips to gVisor's kernel per
/// command.) `None` if the kernel refuses to say.
fn disposed_signals() -> Option<u64> {
    let mut mask = 0u64;
    for sig in settable_signals() {
        // The kernel's sigaction, whose handler comes first (on x86_64 and aarch64);
        // SIG_DFL is 0.
        let mut old = [0u64; 4];
        // SAFETY: no new action is given (only the old one is read, into `old`, which is
        // at least as large as the kernel's sigaction); the set's size is the kernel's.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<c_void>(),
                old.as_mut_ptr(),
                (KERNEL_NSIG / 8) as libc::size_t,
            )
        };
        if rc != 0 {
            return None;
        }
        if old[0] != 0 {
            mask |= 1 << (sig - 1);
        }
    }
    Some(mask)
}

impl PlanData {
    fn new(program: &Program, setup: ChildSetup) -> io::Result<Self> {
        let path = c_string(&program.path)?;
        let argv = program
            .argv
            .iter()
            .map(|a| c_string(a))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = program
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = OsString::with_capacity(k.len() + v.len() + 1);
                kv.push(k);
                kv.push("=");
                kv.push(v);
                c_string(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let with_nul = |v: &[CString]| -> Vec<*const c_char> {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv_ptrs = with_nul(&argv);
        let envp_ptrs = with_nul(&envp);
        let sh_argv_ptrs = [SH.as_ptr(), path.as_ptr()]
            .into_iter()
            .chain(argv.iter().skip(1).map(|c| c.as_ptr()))
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let ChildSetup {
            tty,
            oom_victim,
            identity,
            drop_caps,
            seccomp,
            allow_setuid,
        } = setup;
        Ok(Self {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            sh_argv_ptrs,
            cwd: c_string(&program.cwd)?,
            tty: tty.map(above_stdio).transpose()?,
            oom_victim,
            identity,
            drop_caps,
            seccomp,
            allow_setuid,
            signals: signals_to_reset(),
        })
    }
}

/// The child's plan: what it reads, the descriptors it moves onto 0-2 (-1: none), where
/// it reports a failure, and whether it keeps its own deadline (its parent waits in the
/// clone, unable to kill it).
struct Plan<'a> {
    data: &'a PlanData,
    stdio: [RawFd; 3],
    report: RawFd,
    own_deadline: bool,
}

/// The child: the steps of the module doc, then exec. Never returns on success.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Plan` that `spawn` keeps alive, unchanged, until this process
    // has exec'd or exited.
    let plan = unsafe { &*arg.cast::<Plan<'_>>() };
    let armed = match plan.own_deadline {
        true => arm_own_deadline(EXEC_DEADLINE),
        false => Ok(()),
    };
    let failed = match armed.and_then(|()| confine(plan)) {
        Ok(()) => exec(plan.data),
        Err(e) => e,
    };
    let errno = failed.raw_os_error().unwrap_or(libc::EIO);
    let bytes = errno.to_ne_bytes();
    // SAFETY: writes four bytes from the stack to the report pipe, then leaves without
    // running anything of the parent's (no atexit handlers, no buffers flushed).
    unsafe {
        libc::write(plan.report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Step 0 for a child its parent waits for in the clone: a timer of its own that kills
/// it `after` this long ([`EXEC_DEADLINE`]), should it not have exec'd by then (an exec
/// deletes it). Stopped, it is killed all the same.
fn arm_own_deadline(after: Duration) -> io::Result<()> {
    // SAFETY: `sigevent` is plain old data, all-zero valid; both structures live on this
    // stack through the calls; the kernel writes the timer's id (an int) into `id`.
    unsafe {
        let mut event: libc::sigevent = std::mem::zeroed();
        event.sigev_notify = libc::SIGEV_SIGNAL;
        event.sigev_signo = libc::SIGKILL;
        let mut id: c_int = 0;
        check_long(libc::syscall(
            libc::SYS_timer_create,
            libc::CLOCK_MONOTONIC,
            &mut event,
            &mut id,
        ))?;
        let mut when: libc::itimerspec = std::mem::zeroed();
        when.it_value.tv_sec = after.as_secs() as libc::time_t;
        when.it_value.tv_nsec = after.subsec_nanos() as libc::c_long;
        check_long(libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &when,
            std::ptr::null_mut::<libc::itimerspec>(),
        ))?;
    }
    Ok(())
}

/// The steps of the module doc before exec.
fn confine(plan: &Plan<'_>) -> io::Result<()> {
    let d = plan.data;
    if d.tty.is_none() {
        for (target, fd) in plan.stdio.into_iter().enumerate() {
            // SAFETY: dup2 of a descriptor of this process's own table (the child's
            // copy), all above 2, onto 0-2.
            check(unsafe { libc::dup2(fd, target as c_int) })?;
        }
    }
    // SAFETY: chdir reads a NUL-terminated string prepared by the parent.
    check(unsafe { libc::chdir(d.cwd.as_ptr()) })?;
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    if let Some(fd) = &d.tty {
        let fd = fd.as_raw_fd();
        // SAFETY: TIOCSCTTY takes an int by value; `fd` is an open terminal.
        check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) })?;
        for target in 0..3 {
            // SAFETY: dup2 on an open descriptor; it replaces 0-2 in this child only.
            check(unsafe { libc::dup2(fd, target) })?;
        }
    }
    crate::fd::cloexec_from(3)?;
    reset_signals(d.signals)?;
    if d.allow_setuid {
        if let Some(filter) = &d.seccomp {
            filter.install()?;
        }
    }
    if d.drop_caps {
        crate::caps::drop_to_kept()?;
    }
    if let Some(id) = &d.identity {
        // Raw syscalls: glibc's wrappers would have every thread of the process they
        // believe this is (the parent's, whose memory this is) change ids too.
        // SAFETY: the pointer and length describe `id.groups`, alive for the call.
        check_long(unsafe {
            libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr())
        })?;
        // SAFETY: setgid and setuid take plain integers.
        check_long(unsafe { libc::syscall(libc::SYS_setgid, id.gid) })?;
        // SAFETY: as above.
        check_long(unsafe { libc::syscall(libc::SYS_setuid, id.uid) })?;
    }
    if !d.allow_setuid {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        if let Some(filter) = &d.seccomp {
            filter.install()?;
        }
    }
    Ok(())
}

/// Execs the program (or `/bin/sh` with it, for a file the kernel cannot run): the
/// error is why it did not.
fn exec(d: &PlanData) -> io::Error {
    // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated arrays
    // of them, prepared by the parent and alive until exec.
    unsafe { libc::execve(d.path.as_ptr(), d.argv_ptrs.as_ptr(), d.envp_ptrs.as_ptr()) };
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOEXEC) {
        return e;
    }
    // SAFETY: as above, with `/bin/sh PATH ARGS...`.
    unsafe { libc::execve(SH.as_ptr(), d.sh_argv_ptrs.as_ptr(), d.envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a program's path, arguments, environment or directory holds a NUL byte",
        )
    })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_null() -> io::Result<OwnedFd> {
    // SAFETY: the path is a NUL-terminated literal.
    let fd = check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fd`, numbered above 2 (a process started with 0-2 closed gets them back from its
/// first opens; moved onto 0-2 in the child, one would overwrite another).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC takes a lowest number by value.
    let new = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// An anonymous stack with a guard page at its low end, unmapped on drop.
pub(crate) struct Stack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: a `Stack` owns its mapping; nothing else refers to it while it is held (a
// child that ran on it has exec'd or is gone before it is passed on).
unsafe impl Send for Stack {}

/// The stack of the last child that exec'd, for the next [`spawn`] to take instead of
/// mapping one: unmapping a stack after each spawn made the kernel flush the TLB of
/// every CPU the child ran on (an interrupt to each, dear on a virtual machine).
static SPARE_STACK: std::sync::Mutex<Option<Stack>> = std::sync::Mutex::new(None);

impl Stack {
    pub(crate) fn new(size: usize) -> io::Result<Self> {
        let len = size + 4096;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping just made.
        check(unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The highest address, where a downward-growing stack starts (16-byte aligned: the
    /// mapping is page aligned).
    pub(crate) fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is `len` bytes long.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used by anyone.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Every signal blocked in the calling thread; the previous mask back on drop.
pub(crate) struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    pub(crate) fn all() -> io::Result<Self> {
        // SAFETY: sigfillset and pthread_sigmask initialise and read the sets given.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let mut old: libc::sigset_t = std::mem::zeroed();
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self(old))
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `all`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Makes the calling process non-dumpable: no core dumps, and its /proc files and memory
/// become root-only, so a sandboxed process cannot inspect the agent.
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes integers only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(())
}

fn check_long(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Resets the signals of `which` (bit n-1 for signal n) to their default action, then
/// unblocks every signal.
fn reset_signals(which: u64) -> io::Result<()> {
    // The kernel's own call, not libc's `sigaction`, which refuses the signals libc keeps
    // for itself (32 and 33 in glibc): one ignored by the agent's parent would stay
    // ignored across exec. An all-zero kernel sigaction, whatever its layout, is
    // SIG_DFL with no flags and an empty mask.
    let zero = [0u64; 4];
    for sig in settable_signals().filter(|sig| which & (1 << (sig - 1)) != 0) {
        // SAFETY: `zero` is at least as large as the kernel's sigaction, all zero; the
        // old action is not requested; the set's size is the kernel's (64 signals).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                zero.as_ptr(),
                std::ptr::null_mut::<c_void>(),
                (KERNEL_NSIG / 8) as libc::size_t,
            )
        };
    }
    // SAFETY: sigemptyset initialises the set it is given.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; the old mask is not requested.
    check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) })?;
    Ok(())
}

/// This process's own `oom_score_adj`, open for reading and writing, and the lock that
/// keeps one spawn at a time between raising the score and lowering it again.
struct OwnScore {
    file: OwnedFd,
    lock: std::sync::Mutex<()>,
}

/// The file [`keep_oom_score_file`] was given, or else the one opened at the first spawn
/// that asked for an OOM victim (`None` if it could not be).
static OWN_SCORE: std::sync::OnceLock<Option<OwnScore>> = std::sync::OnceLock::new();

/// Keeps `file`, this process's own `oom_score_adj` opened for reading and writing, to
/// give the processes [`spawn`] starts their score from their first instruction (step 5
/// of the module doc). For a process whose `/proc` files are not its own to open: the
/// agent of a namespace sandbox, not dumpable, whose memory the host's user namespace
/// made, gets the file from its helper, which can open it. Call it before any spawn; a
/// file kept already (given, or opened by a spawn) stays.
pub fn keep_oom_score_file(file: OwnedFd) {
    let _ = OWN_SCORE.set(Some(OwnScore {
        file,
        lock: std::sync::Mutex::new(()),
    }));
}

/// Opens this process's own `oom_score_adj` and keeps it ([`keep_oom_score_file`]): for a
/// process about to give up what lets it open the file (a change of uid, or not being
/// dumpable, makes its `/proc` files global root's).
pub fn keep_own_oom_score_file() -> io::Result<()> {
    keep_oom_score_file(open_own_score()?);
    Ok(())
}

fn open_own_score() -> io::Result<OwnedFd> {
    // SAFETY: the path is NUL-terminated; the descriptor returned is ours alone.
    let fd = check(unsafe {
        libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kept file of this process's own score, opened now if none is kept yet.
fn own_score() -> Option<&'static OwnScore> {
    OWN_SCORE
        .get_or_init(|| {
            open_own_score().ok().map(|file| OwnScore {
                file,
                lock: std::sync::Mutex::new(()),
            })
        })
        .as_ref()
}

/// This process's score raised to 1000, lowered to what it was when dropped.
struct RaisedScore {
    file: RawFd,
    was: [u8; 8],
    len: usize,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl RaisedScore {
    /// `None` if this process holds no file of its own score or cannot raise it: then
    /// the child's score is raised once it runs.
    fn raise() -> Option<Self> {
        let own = own_score()?;
        let guard = own.lock.lock().unwrap_or_else(|e| e.into_inner());
        let file = own.file.as_raw_fd();
        let mut was = [0u8; 8];
        // SAFETY: reads into `was`, of its length, from a descriptor this process keeps.
        let len = unsafe { libc::pread(file, was.as_mut_ptr().cast(), was.len(), 0) };
        if len <= 0 {
            return None;
        }
        const MAX: &[u8] = b"1000";
        // SAFETY: writes a static buffer, of its length, to the same descriptor.
        if unsafe { libc::pwrite(file, MAX.as_ptr().cast(), MAX.len(), 0) } != MAX.len() as isize {
            return None;
        }
        Some(Self {
            file,
            was,
            len: len as usize,
            _one_at_a_time: guard,
        })
    }
}

impl Drop for RaisedScore {
    fn drop(&mut self) {
        // Back to what it was, which is never below the least this process may set
        // (the kernel's `oom_score_adj_min`), so no capability is needed. Should it fail,
        // the agent stays a candidate as a sandbox process is, and nothing worse.
        // SAFETY: writes the bytes read in `raise`, of their length, to the descriptor
        // this process keeps (in `OWN_SCORE`, never dropped).
        unsafe { libc::pwrite(self.file, self.was.as_ptr().cast(), self.len, 0) };
    }
}

/// Raises the OOM score at `path` (another process's `oom_score_adj`) to its maximum.
fn write_oom_score_adj_max(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    const MAX: &[u8] = b"1000";
    // SAFETY: writes from a static buffer, of its length, to the descriptor just opened.
    let written = unsafe { libc::write(fd, MAX.as_ptr().cast(), MAX.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, which nothing else uses.
    unsafe { libc::close(fd) };
    if written != MAX.len() as isize {
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::pty::{self, TermSize};

    fn sh(script: &str) -> Program {
        Program {
            path: "/bin/sh".into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
            stdin: Stdio::Null,
            stdout: Stdio::Pipe,
            stderr: Stdio::Pipe,
        }
    }

    /// Reads `fd` to its end.
    fn read_all(fd: OwnedFd) -> String {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }

    /// Waits for `pid`: its exit code, or 128 + the signal that ended it.
    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waits for the test's own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    }

    /// Runs `program` with `setup`: exit code, stdout, stderr.
    fn run(program: &Program, setup: ChildSetup) -> (i32, String, String) {
        let child = spawn(program, setup).unwrap();
        let err = child.stderr.map(read_all).unwrap_or_default();
        let out = child.stdout.map(read_all).unwrap_or_default();
        (wait(child.pid), out, err)
    }

    #[test]
    fn a_program_gets_exactly_its_arguments_environment_directory_and_pipes() {
        let mut p = sh("printf '%s|' \"$0\" \"$1\" \"$X\" \"$(pwd)\"; cat; echo err >&2; exit 3");
        p.argv.extend(["zero".into(), "one arg".into()]);
        p.env.push(("X".into(), "y=z".into()));
        p.cwd = "/usr".into();
        p.stdin = Stdio::Pipe;
        let child = spawn(&p, ChildSetup::default()).unwrap();
        let mut input = std::fs::File::from(child.stdin.unwrap());
        std::io::Write::write_all(&mut input, b"from stdin").unwrap();
        drop(input);
        let err = read_all(child.stderr.unwrap());
        let out = read_all(child.stdout.unwrap());
        assert_eq!(wait(child.pid), 3);
        assert_eq!(out, "zero|one arg|y=z|/usr|from stdin");
        assert_eq!(err, "err\n");
        // The whole environment is the one given, nothing of ours.
        let env = Program {
            path: "/usr/bin/env".into(),
            argv: vec!["env".into()],
            env: vec![("A".into(), "1".into()), ("B".into(), "two words".into())],
            ..sh("")
        };
        let (code, out, _) = run(&env, ChildSetup::default());
        assert_eq!((code, out.as_str()), (0, "A=1\nB=two words\n"));
    }

    #[test]
    fn exec_failures_are_the_spawns_errors() {
        let mut p = sh("true");
        p.path = "/nonexistent/program".into();
        let e = spawn(&p, ChildSetup::default()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "echo hi\n").unwrap();
        p.path = plain.clone().into();
        let e = spawn(&p, ChildSetup::default()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        p.cwd = "/nonexistent".into();
        p.path = "/bin/true".into();
        let e = spawn(&p, ChildSetup::default()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        p.cwd = "/".into();
        p.argv.push("a\0b".into());
        let e = spawn(&p, ChildSetup::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn a_script_without_an_interpreter_line_runs_in_sh() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "echo \"ran $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut p = sh("");
        p.path = script.into();
        p.argv = vec!["script".into(), "with arg".into()];
        // A child another test forked while this one still had the script open for
        // writing keeps that descriptor until it execs, and the script cannot be run
        // meanwhile (ETXTBSY): asked again, as shells do.
        let mut tries = 0;
        let child = loop {
            match spawn(&p, ChildSetup::default()) {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        let err = child.stderr.map(read_all).unwrap_or_default();
        let out = child.stdout.map(read_all).unwrap_or_default();
        assert_eq!(
            (wait(child.pid), out.as_str()),
            (0, "ran with arg\n"),
            "{err}"
        );
    }

    #[test]
    fn the_signals_asked_of_the_kernel_are_those_proc_lists_as_ignored_or_caught() {
        crate::testing::in_a_forked_process(|| {
            extern "C" fn caught(_: c_int) {}
            // SAFETY: in this forked process only; the handler does nothing.
            unsafe {
                libc::signal(libc::SIGUSR2, libc::SIG_IGN);
                libc::signal(libc::SIGUSR1, caught as *const () as libc::sighandler_t);
            }
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let field = |name: &str| {
                let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
                u64::from_str_radix(v.trim(), 16).unwrap()
            };
            let listed = field("SigIgn:") | field("SigCgt:");
            let asked = disposed_signals().unwrap();
            assert_eq!(asked, listed, "{asked:x} against {listed:x}");
            assert_ne!(asked & (1 << (libc::SIGUSR1 - 1)), 0);
            assert_ne!(asked & (1 << (libc::SIGUSR2 - 1)), 0);
        });
    }

    #[test]
    fn dispositions_recorded_once_are_the_ones_a_child_resets() {
        // Recording is for the whole process: in a forked one of its own. SIGUSR2
        // ignored before recording is reset in the child; one ignored after is not
        // (the recording stands for the process's handlers, set once).
        crate::testing::in_a_forked_process(|| {
            let ign = || {
                let (code, out, _) = run(
                    &sh("grep '^SigIgn:' /proc/self/status"),
                    ChildSetup::default(),
                );
                assert_eq!(code, 0);
                u64::from_str_radix(out.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap()
            };
            // SAFETY: in this forked process only.
            unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
            assert!(record_dispositions());
            assert_ne!(
                RECORDED.get().copied().unwrap_or(0) & (1 << (libc::SIGUSR2 - 1)),
                0
            );
            assert_eq!(ign(), 0, "SIGUSR2, ignored when recorded, is reset");
            // SAFETY: as above.
            unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
            assert_eq!(ign(), 1 << (libc::SIGUSR1 - 1), "only what was recorded");
        });
        assert!(RECORDED.get().is_none(), "nothing recorded here");
    }

    #[test]
    fn child_gets_new_session_and_is_the_oom_victim_with_no_signal_of_ours() {
        let p = sh(
            "cat /proc/self/oom_score_adj; cut -d' ' -f5,6 /proc/$$/stat; echo $$; \
                    grep -E '^Sig(Blk|Ign):' /proc/self/status",
        );
        // The test's own thread ignores one signal and blocks another: neither reaches
        // the child.
        // SAFETY: ignoring SIGUSR2 in this test process only.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        // SAFETY: a set with SIGUSR1, blocked in this thread.
        let before = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        let (code, out, err) = run(
            &p,
            ChildSetup {
                oom_victim: true,
                ..Default::default()
            },
        );
        // SAFETY: back as they were.
        unsafe {
            let mut now: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &before, &mut now);
            assert_eq!(
                libc::sigismember(&now, libc::SIGUSR1),
                1,
                "the mask is ours again"
            );
            assert_eq!(
                libc::sigismember(&now, libc::SIGINT),
                0,
                "the mask is ours again"
            );
            libc::signal(libc::SIGUSR2, libc::SIG_DFL);
        }
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "1000");
        let pid = lines[2].trim();
        let ids: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(ids, [pid, pid], "session and group led by the child");
        assert_eq!(lines[3], "SigBlk:\t0000000000000000", "{out}");
        assert_eq!(lines[4], "SigIgn:\t0000000000000000", "{out}");
    }

    #[test]
    fn the_child_starts_raised_and_the_parent_keeps_its_own_score() {
        // Read between spawns (another test's may raise this process's score meanwhile).
        let ours = || {
            let own = own_score().expect("a test process may open its own score");
            let _one = own.lock.lock().unwrap_or_else(|e| e.into_inner());
            std::fs::read_to_string("/proc/self/oom_score_adj").unwrap()
        };
        let before = ours();
        assert_ne!(before, "1000\n", "run the tests at a score below 1000");
        let p = Program {
            path: "/bin/cat".into(),
            argv: vec!["cat".into(), "/proc/self/oom_score_adj".into()],
            ..sh("")
        };
        for _ in 0..20 {
            let (code, out, err) = run(
                &p,
                ChildSetup {
                    oom_victim: true,
                    ..Default::default()
                },
            );
            assert_eq!((code, out.as_str()), (0, "1000\n"), "{err}");
            assert_eq!(ours(), before);
        }
    }

    #[test]
    fn a_child_past_its_own_deadline_is_killed_even_stopped_and_an_exec_disarms_it() {
        let deadline = Duration::from_millis(100);
        // Forked (not threads of this test): each arms its timer, then stops itself, or
        // execs a program that outlives the deadline.
        for stop in [true, false] {
            // SAFETY: the child makes system calls only, then exits or execs.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                if arm_own_deadline(deadline).is_err() {
                    // SAFETY: ends the forked child.
                    unsafe { libc::_exit(2) };
                }
                // SAFETY: as above; the strings are NUL-terminated.
                unsafe {
                    if stop {
                        libc::raise(libc::SIGSTOP);
                    } else {
                        let argv = [c"sleep".as_ptr(), c"0.3".as_ptr(), std::ptr::null()];
                        libc::execv(c"/bin/sleep".as_ptr(), argv.as_ptr());
                    }
                    libc::_exit(3)
                }
            }
            assert_eq!(wait(pid), if stop { 128 + libc::SIGKILL } else { 0 });
        }
    }

    #[test]
    fn child_runs_on_its_terminal() {
        let pty = pty::open(TermSize { rows: 33, cols: 77 }).unwrap();
        let master = pty.master;
        let p = sh("stty size; test -t 0 && echo tty");
        let child = spawn(
            &p,
            ChildSetup {
                tty: Some(pty.slave),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(child.stdout.is_none() && child.stdin.is_none());
        assert_eq!(wait(child.pid), 0);
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        // The child and our copy of the slave are gone: the master reads what is left,
        // then EIO.
        while let Ok(n) = nix::unistd::read(master.as_fd().as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("33 77"), "{text:?}");
        assert!(text.contains("tty"), "{text:?}");
    }

    #[test]
    fn unprivileged_child_is_confined_and_still_the_oom_victim() {
        const TEST: &str = "unprivileged_child_is_confined_and_still_the_oom_victim";
        if !warren_testkit::needs_root(TEST, "changing to another uid") {
            return;
        }
        let seccomp = match SeccompProgram::default_policy() {
            Ok(p) => Arc::new(p),
            Err(e) => {
                warren_testkit::skip(TEST, &format!("no seccomp policy here: {e}"));
                return;
            }
        };
        let p = sh(
            "id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
                    cat /proc/self/oom_score_adj; id -G",
        );
        let (code, text, err) = run(
            &p,
            ChildSetup {
                oom_victim: true,
                identity: Some(Identity {
                    uid: 1000,
                    gid: 1000,
                    groups: vec![1000],
                }),
                drop_caps: true,
                seccomp: Some(seccomp),
                ..Default::default()
            },
        );
        assert_eq!(code, 0, "{err}");
        let fields: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            fields,
            [
                vec!["1000"],
                vec!["NoNewPrivs:", "1"],
                vec!["Seccomp:", "2"],
                vec!["1000"],
                vec!["1000"],
            ],
            "{text}"
        );
        // This process (whose memory the child shared) kept its own ids.
        // SAFETY: getuid and getgid take nothing.
        assert_eq!(unsafe { (libc::getuid(), libc::getgid()) }, (0, 0));
    }

    /// The descriptors `/bin/ls` finds open in itself, while `parent_fd` is open here
    /// without close-on-exec.
    fn inherited(parent_fd: libc::c_int) -> Vec<String> {
        // SAFETY: F_GETFD takes no argument.
        let flags = unsafe { libc::fcntl(parent_fd, libc::F_GETFD) };
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            0,
            "the test descriptor is inheritable"
        );
        let p = Program {
            path: "/bin/ls".into(),
            argv: vec!["ls".into(), "/proc/self/fd".into()],
            env: Vec::new(),
            cwd: "/".into(),
            stdin: Stdio::Null,
            stdout: Stdio::Pipe,
            stderr: Stdio::Null,
        };
        let (code, out, _) = run(&p, ChildSetup::default());
        assert_eq!(code, 0);
        out.lines().map(str::to_string).collect()
    }

    #[test]
    fn only_stdio_is_inherited() {
        // nix's pipe() does not set close-on-exec, like a library that forgot to.
        let (r, w) = nix::unistd::pipe().unwrap();
        // ls lists 0-2 and the descriptor it reads the listing through, the lowest free.
        assert_eq!(inherited(r.as_raw_fd()), ["0", "1", "2", "3"]);
        drop(w);
    }

    #[test]
    fn the_slow_path_marks_descriptors_too() {
        use std::os::unix::process::CommandExt;
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut cmd = std::process::Command::new("/bin/ls");
        cmd.arg("/proc/self/fd")
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null());
        // SAFETY: the hook makes only async-signal-safe syscalls.
        unsafe { cmd.pre_exec(|| crate::fd::cloexec_each(3)) };
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let listed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(listed, ["0", "1", "2", "3"]);
        drop((r, w));
    }

    #[test]
    fn failing_setup_is_a_spawn_error() {
        // Not a terminal: TIOCSCTTY fails in the child.
        let bogus = std::fs::File::open("/dev/null").unwrap();
        let e = spawn(
            &sh("true"),
            ChildSetup {
                tty: Some(bogus.into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }
}
