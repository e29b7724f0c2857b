//! Processes the agent starts: spawning, output, stdin, signals and reaping.
//!
//! Each process has one output [`Ring`] fed by a *pump* task per stream and drained by
//! *readers*, one per channel following the process (its exec channel, attaches). A
//! reader is lossless: the pumps stop reading the pipe while the slowest reader's unread
//! bytes fill the ring, so a process that floods a slow client blocks on its full pipe
//! and the agent's memory stays bounded. With no reader (a detached background process)
//! the pumps read freely and the ring forgets the oldest output. The ring is the
//! process's total budget (stdout and stderr together), `AgentConfig::ring_size` bytes.
//!
//! A process has ended for its readers when it has been reaped *and* its output is
//! drained. Once it is reaped the pumps give up on a pipe that stays silent for
//! [`EXIT_GRACE`], because a background grandchild (`sh -c 'daemon &'`) may hold the pipe
//! open forever; what the process itself wrote is already in the pipe by then.
//!
//! Reaping does not use `tokio::process`: as PID 1 the agent must `waitpid(-1)` for every
//! orphan reparented to it, which would steal statuses from tokio's own child handling.
//! The reaper runs on the runtime's single thread, as does every spawn, so it can never
//! reap a child between `spawn` returning and the pid entering the table, nor race the
//! spawn's own wait for a child whose exec failed.
//!
//! A process is started by [`warren_sys::child::spawn`], a child sharing the agent's
//! memory until its exec (no copy of the agent's page tables: under gVisor, where that
//! copy is the Sentry's, it took most of an exec's 20-30 ms).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::signal::unix::Signal as SignalStream;
use tokio::sync::{mpsc, watch};
use warren_sys::child::{self, ChildSetup};
use warren_sys::pty::{self, TermSize};
use warren_types::proto::{
    frame_credit, Command, ErrorCode, ExecRequest, ExitStatus, Frame, FrameKind, ProcessInfo,
    Response, WinSize, CHUNK, MIN_FRAME_CREDIT,
};

use crate::flow::{self, Charged, Credit};
use crate::ring::{Ring, Stream};
use crate::{lock, user, Agent, Failure};

/// How long a pump keeps reading a silent pipe after its process was reaped.
const EXIT_GRACE: Duration = Duration::from_millis(100);
/// Ended processes nobody has collected are kept (with their output) up to this many: a
/// background process is never collected, so these are its output's last home.
const MAX_ENDED: usize = 64;

/// The most output one frame carries: what a follower has not yet taken of one stream
/// (several pipe reads, when the client is behind the process) goes in one frame up to
/// this, so a fast stream crosses the daemon and the client in fewer, larger pieces.
const MAX_FRAME: usize = 4 * CHUNK;

/// A net under SIGCHLD. Signals coalesce, but each is followed by a reap of every exit
/// there is, and the signal is registered before any child exists, so none should be
/// missed; the net is rare because an idle agent should not wake: once a second, a
/// thousand idle sandboxes took some 50 ms of CPU a second and 2,000 context switches.
const REAP_INTERVAL: Duration = Duration::from_secs(60);

/// Every process the agent started that is running or not yet collected.
#[derive(Debug)]
pub(crate) struct Procs {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_pid: BTreeMap<u32, Arc<Proc>>,
    /// Ended processes, oldest first, for eviction.
    ended: VecDeque<u32>,
    /// The last serial handed out.
    last_serial: u64,
}

/// Where a new reader starts in a process's output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Replay {
    /// At the end: only output from now on.
    Nothing,
    /// At the oldest byte the ring still holds.
    All,
    /// At this absolute offset, moved into what the ring holds.
    From(u64),
}

#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) serial: u64,
    command: Command,
    tag: Option<String>,
    pub(crate) background: bool,
    /// A handle on the terminal master, for resizing.
    tty: Option<OwnedFd>,
    state: Mutex<State>,
    /// Bumped on every change of `state`: new output, a reader moving, an exit.
    changed: watch::Sender<()>,
    exit: watch::Sender<Option<ExitStatus>>,
    timed_out: AtomicBool,
    /// Input for the process's stdin, in order, from every channel that writes to it.
    /// Unbounded here because the client's credit bounds it: each channel that feeds
    /// the process holds at most its input window in this queue.
    stdin: Mutex<Option<mpsc::UnboundedSender<Charged>>>,
}

#[derive(Debug)]
struct State {
    ring: Ring,
    /// Reader id to the offset it has sent up to.
    readers: HashMap<u64, u64>,
    next_reader: u64,
    open_streams: u8,
    exit: Option<ExitStatus>,
}

impl Procs {
    pub(crate) fn new() -> Self {
        Self {
            table: Mutex::new(Table::default()),
        }
    }

    pub(crate) fn get(&self, pid: u32) -> Option<Arc<Proc>> {
        lock(&self.table).by_pid.get(&pid).cloned()
    }

    pub(crate) fn list(&self) -> Vec<ProcessInfo> {
        lock(&self.table)
            .by_pid
            .values()
            .map(|p| p.info())
            .collect()
    }

    /// Drops an ended process whose exit a client has now seen.
    pub(crate) fn collect(&self, pid: u32) {
        let mut t = lock(&self.table);
        if t.by_pid.get(&pid).is_some_and(|p| !p.is_running()) {
            t.by_pid.remove(&pid);
            t.ended.retain(|p| *p != pid);
        }
    }

    fn running(&self) -> Vec<Arc<Proc>> {
        let t = lock(&self.table);
        t.by_pid
            .values()
            .filter(|p| p.is_running())
            .cloned()
            .collect()
    }

    fn record(&self, status: WaitStatus) {
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, Some(code), None),
            WaitStatus::Signaled(pid, sig, _) => (pid, None, Some(sig as i32)),
            _ => return,
        };
        let pid = pid.as_raw() as u32;
        let mut t = lock(&self.table);
        let Some(p) = t.by_pid.get(&pid).cloned() else {
            // An orphan reparented to PID 1: reaped, nothing to report.
            return;
        };
        p.finish(ExitStatus {
            code,
            signal,
            timed_out: p.timed_out.load(Ordering::SeqCst),
        });
        t.ended.push_back(pid);
        while t.ended.len() > MAX_ENDED {
            if let Some(old) = t.ended.pop_front() {
                t.by_pid.remove(&old);
            }
        }
    }

    /// Collects every exit status available now.
    fn reap(&self, reap_all: bool) {
        if reap_all {
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
                self.record(status);
            }
        } else {
            for p in self.running() {
                if let Ok(status) = waitpid(Pid::from_raw(p.pid as i32), Some(WaitPidFlag::WNOHANG))
                {
                    self.record(status);
                }
            }
        }
    }

    /// Kills every running process group and, when they are the agent's own children,
    /// waits for them so none is left behind.
    pub(crate) fn kill_all(&self, reap_all: bool) {
        for p in self.running() {
            p.kill_group();
            if !reap_all {
                let _ = waitpid(Pid::from_raw(p.pid as i32), None);
            }
        }
    }
}

/// Reaps children for as long as the agent runs.
pub(crate) async fn reaper(agent: Arc<Agent>, mut sigchld: SignalStream) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tick.tick() => {}
        }
        agent.procs.reap(agent.config.reap_all);
    }
}

impl Proc {
    fn info(&self) -> ProcessInfo {
        let state = lock(&self.state);
        ProcessInfo {
            pid: self.pid,
            serial: self.serial,
            command: self.command.clone(),
            tag: self.tag.clone(),
            tty: self.tty.is_some(),
            background: self.background,
            exit: state.exit,
            output_end: state.ring.end(),
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        lock(&self.state).exit.is_none()
    }

    fn bump(&self) {
        self.changed.send_replace(());
    }

    fn finish(&self, status: ExitStatus) {
        lock(&self.state).exit = Some(status);
        self.exit.send_replace(Some(status));
        self.bump();
    }

    /// SIGKILL to the whole process group (the process is its leader, see `setsid` in
    /// warren-sys), unless the process was already reaped: its pid may be reused.
    pub(crate) fn kill_group(&self) {
        if self.is_running() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// `sig` to the process, or with `group` to its process group (it leads one).
    pub(crate) fn signal(&self, sig: Signal, group: bool) -> Result<(), Failure> {
        if !self.is_running() {
            return Err(Failure::new(
                ErrorCode::ProcessNotFound,
                format!("process {} has ended", self.pid),
            ));
        }
        let pid = Pid::from_raw(self.pid as i32);
        let sent = if group {
            killpg(pid, sig)
        } else {
            kill(pid, sig)
        };
        sent.map_err(|e| {
            Failure::new(
                ErrorCode::Io,
                format!("signalling process {}: {e}", self.pid),
            )
        })
    }

    pub(crate) fn resize(&self, size: WinSize) -> Result<(), Failure> {
        let Some(master) = &self.tty else {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("process {} has no terminal", self.pid),
            ));
        };
        let size = TermSize {
            rows: size.rows,
            cols: size.cols,
        };
        pty::set_size(master.as_fd(), size).map_err(|e| {
            Failure::new(
                ErrorCode::Io,
                format!("resizing the terminal of {}: {e}", self.pid),
            )
        })
    }

    /// Queues bytes for the process's stdin; never waits, as the client's credit bounds
    /// the queue. Bytes for a process without stdin, or whose stdin is closed, are
    /// dropped (which gives their credit back): they race with its end and carry nothing
    /// the process could still read.
    pub(crate) fn write_stdin(&self, input: Charged) {
        if let Some(tx) = lock(&self.stdin).as_ref() {
            let _ = tx.send(input);
        }
    }

    /// Closes stdin once what is queued has been written. On a terminal, where closing
    /// the master would hang the terminal up, it types the EOF character instead.
    pub(crate) fn close_stdin(&self) {
        let tx = lock(&self.stdin).take();
        if let (Some(tx), Some(_)) = (&tx, &self.tty) {
            let _ = tx.send(Charged::free(vec![0x04]));
        }
    }

    fn has_room(&self) -> bool {
        let s = lock(&self.state);
        s.ring.has_room(s.readers.values().min().copied())
    }

    fn append(&self, stream: Stream, data: &[u8]) {
        {
            let mut s = lock(&self.state);
            let keep = s.readers.values().min().copied();
            s.ring.push(stream, data, keep);
        }
        self.bump();
    }

    fn close_stream(&self) {
        lock(&self.state).open_streams -= 1;
        self.bump();
    }

    /// Starts following the output where `replay` says.
    pub(crate) fn reader(self: &Arc<Self>, replay: Replay) -> Reader {
        let mut s = lock(&self.state);
        let id = s.next_reader;
        s.next_reader += 1;
        // Never past the end: a reader's position pins the ring from there on.
        let pos = match replay {
            Replay::Nothing => s.ring.end(),
            Replay::All => s.ring.start(),
            Replay::From(offset) => offset.clamp(s.ring.start(), s.ring.end()),
        };
        s.readers.insert(id, pos);
        Reader {
            proc: self.clone(),
            id,
        }
    }
}

/// A lossless follower of a process's output; dropping it lets the pumps run free.
#[derive(Debug)]
pub(crate) struct Reader {
    proc: Arc<Proc>,
    id: u64,
}

enum Next {
    /// This many bytes of one stream are ready.
    Data(usize),
    Done(ExitStatus),
    Wait,
}

impl Reader {
    fn next(&self) -> Next {
        let s = lock(&self.proc.state);
        let pos = s.readers.get(&self.id).copied().unwrap_or(0);
        if let Some((_, _, len)) = s.ring.run(pos, MAX_FRAME) {
            return Next::Data(len);
        }
        match s.exit {
            Some(status) if s.open_streams == 0 => Next::Done(status),
            _ => Next::Wait,
        }
    }

    fn take(&self, max: usize) -> Option<(Stream, Vec<u8>)> {
        let taken = {
            let mut s = lock(&self.proc.state);
            let pos = s.readers.get(&self.id).copied().unwrap_or(0);
            let (at, stream, data) = s.ring.read_run(pos, max)?;
            let (end, taken) = (at + data.len() as u64, (stream, data));
            s.readers.insert(self.id, end);
            taken
        };
        self.proc.bump();
        Some(taken)
    }

    /// Sends output as credit allows, then `Exited`. False when the connection went away
    /// first.
    pub(crate) async fn follow(&self, ch: u32, credit: &Credit, out: &mpsc::Sender<Frame>) -> bool {
        let mut changed = self.proc.changed.subscribe();
        loop {
            changed.borrow_and_update();
            match self.next() {
                Next::Data(ready) => {
                    // Even a short frame costs MIN_FRAME_CREDIT (see the protocol).
                    let granted = credit
                        .take_between(MIN_FRAME_CREDIT, ready.max(MIN_FRAME_CREDIT))
                        .await;
                    if granted == 0 {
                        return false;
                    }
                    let Some((stream, data)) = self.take(granted) else {
                        credit.refund(granted);
                        continue;
                    };
                    credit.refund(granted - frame_credit(data.len()));
                    let kind = match stream {
                        Stream::Stdout => FrameKind::Stdout,
                        Stream::Stderr => FrameKind::Stderr,
                    };
                    if out.send(Frame::new(ch, kind, data)).await.is_err() {
                        return false;
                    }
                }
                Next::Done(status) => {
                    return out
                        .send(Frame::control(ch, &Response::Exited { status }))
                        .await
                        .is_ok();
                }
                Next::Wait => {
                    if changed.changed().await.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        lock(&self.proc.state).readers.remove(&self.id);
        self.proc.bump();
    }
}

/// Moves one stream from its pipe into the ring; see the module doc for when it stops.
async fn pump(proc: Arc<Proc>, mut pipe: pipe::Receiver, stream: Stream) {
    // Read into its spare room, never zeroed: a command that writes little (most) costs
    // no 64 KiB memset and no page faults per stream.
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut changed = proc.changed.subscribe();
    let mut exit = proc.exit.subscribe();
    'reading: loop {
        loop {
            changed.borrow_and_update();
            if proc.has_room() {
                break;
            }
            if changed.changed().await.is_err() {
                break 'reading;
            }
        }
        let reaped = exit.borrow_and_update().is_some();
        let read = if reaped {
            match tokio::time::timeout(EXIT_GRACE, pipe.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = pipe.read_buf(&mut buf) => r,
                _ = exit.changed() => continue,
            }
        };
        match read {
            Ok(0) => break,
            Ok(_) => {
                proc.append(stream, &buf);
                buf.clear();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO is a terminal whose last slave closed; anything else ends the stream too.
            Err(_) => break,
        }
    }
    proc.close_stream();
}

/// Writes queued input into the process, giving each frame's credit back to its
/// channel once written.
async fn feed_stdin(mut pipe: pipe::Sender, mut rx: mpsc::UnboundedReceiver<Charged>) {
    while let Some(input) = rx.recv().await {
        if pipe.write_all(&input.data).await.is_err() {
            // The process closed its stdin or died; the rest has no reader. Dropping the
            // queue gives its credit back, and what comes later is dropped on arrival.
            return;
        }
    }
}

/// Kills the process group when the timeout passes first.
async fn enforce_timeout(proc: Arc<Proc>, after: Duration) {
    let mut exit = proc.exit.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(after) => {
            if proc.is_running() {
                proc.timed_out.store(true, Ordering::SeqCst);
                proc.kill_group();
            }
        }
        _ = exit.wait_for(|e| e.is_some()) => {}
    }
}

/// Starts `req` and registers it. Runs synchronously on the runtime thread (see the
/// module doc); the process's tasks start before this returns.
pub(crate) fn spawn(agent: &Agent, req: &ExecRequest) -> Result<Arc<Proc>, Failure> {
    let config = &agent.config;
    let command = req
        .command
        .clone()
        .ok_or_else(|| Failure::new(ErrorCode::BadRequest, "exec needs a command"))?;
    let account = match req.user.as_ref().or(config.user.as_ref()) {
        Some(u) => Some(
            user::resolve(Path::new("/"), u)
                .map_err(|e| Failure::new(ErrorCode::BadRequest, e.to_string()))?,
        ),
        None => None,
    };
    let home = account.as_ref().and_then(|a| a.home.clone());
    let login = account.as_ref().and_then(|a| a.name.clone());

    if let Some(why) = warren_types::spec::env_problem(&req.env) {
        return Err(Failure::new(ErrorCode::BadRequest, why));
    }
    let nul = match &command {
        Command::Shell(script) => script.contains('\0'),
        Command::Argv(argv) => argv.iter().any(|a| a.contains('\0')),
    };
    if nul || req.cwd.as_ref().is_some_and(|c| c.contains('\0')) {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            "the command or working directory holds a NUL byte, which no command line carries",
        ));
    }
    let mut env = config.env.clone();
    env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if account.is_some() {
        // A user without a home (not in the root's /etc/passwd: a numeric user of an
        // image that has none) gets `/`, as an OCI runtime gives it.
        env.entry("HOME".into())
            .or_insert_with(|| home.clone().unwrap_or_else(|| "/".into()));
    }
    if let Some(name) = &login {
        // As login(1) and su(1) set them: programs read who they are from these.
        env.entry("USER".into()).or_insert_with(|| name.clone());
        env.entry("LOGNAME".into()).or_insert_with(|| name.clone());
    }
    if req.tty.is_some() {
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
    }

    let cwd = req
        .cwd
        .clone()
        .map(PathBuf::from)
        .or_else(|| config.workdir.clone())
        .or_else(|| home.map(PathBuf::from).filter(|h| h.is_dir()))
        .or_else(|| config.cwd.clone())
        .unwrap_or_else(|| PathBuf::from("/"));
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Failure::new(
                ErrorCode::NotADirectory,
                format!("working directory {}: not a directory", cwd.display()),
            ))
        }
        Err(e) => return Err(Failure::io(cwd.display(), &e)),
    }

    let (program, argv0, args): (PathBuf, String, Vec<String>) = match &command {
        Command::Shell(script) => (
            "/bin/sh".into(),
            "/bin/sh".into(),
            vec!["-c".into(), script.clone()],
        ),
        Command::Argv(argv) => {
            let Some((first, rest)) = argv.split_first() else {
                return Err(Failure::new(
                    ErrorCode::BadRequest,
                    "exec needs a non-empty argv",
                ));
            };

            let program = user::find_program(first, env.get("PATH").map(String::as_str), &cwd)
                .ok_or_else(|| {
                    Failure::new(
                        ErrorCode::CommandNotFound,
                        format!("{first}: command not found"),
                    )
                })?;
            (program, first.clone(), rest.to_vec())
        }
    };

    let terminal = match req.tty {
        Some(size) => Some(
            pty::open(TermSize {
                rows: size.rows,
                cols: size.cols,
            })
            .map_err(|e| Failure::new(ErrorCode::Io, format!("opening a terminal: {e}")))?,
        ),
        None => None,
    };
    let (master, slave) = match terminal {
        Some(p) => (Some(p.master), Some(p.slave)),
        None => (None, None),
    };
    let program = child::Program {
        path: program.into_os_string(),
        argv: std::iter::once(&argv0)
            .chain(&args)
            .map(OsString::from)
            .collect(),
        env: env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect(),
        cwd: cwd.into_os_string(),
        stdin: if req.stdin {
            child::Stdio::Pipe
        } else {
            child::Stdio::Null
        },
        stdout: child::Stdio::Pipe,
        stderr: child::Stdio::Pipe,
    };
    let spawned = child::spawn(
        &program,
        ChildSetup {
            tty: slave,
            oom_victim: config.oom_victims,
            identity: account.map(|a| a.identity),
            drop_caps: config.drop_caps,
            seccomp: config.seccomp.clone(),
            allow_setuid: config.allow_setuid,
        },
    );
    let child = spawned.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Failure::new(
            ErrorCode::CommandNotFound,
            format!("{argv0}: command not found"),
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => Failure::new(
            ErrorCode::PermissionDenied,
            format!("starting {argv0}: {e}"),
        ),
        _ => Failure::new(ErrorCode::Io, format!("starting {argv0}: {e}")),
    })?;
    let pid = child.pid as u32;

    // From here the child runs: failures below must not leave it unsupervised, so the
    // process is registered first and killed if its plumbing cannot be set up.
    let (changed, _) = watch::channel(());
    let (exit, _) = watch::channel(None);
    let resize_handle = master.as_ref().and_then(|m| m.try_clone().ok());
    let mut streams: Vec<(OwnedFd, Stream)> = Vec::new();
    let stdin_fd: Option<OwnedFd> = match master {
        Some(m) => {
            let input = m.try_clone().ok();
            streams.push((m, Stream::Stdout));
            input
        }
        None => {
            if let Some(out) = child.stdout {
                streams.push((out, Stream::Stdout));
            }
            if let Some(err) = child.stderr {
                streams.push((err, Stream::Stderr));
            }
            child.stdin
        }
    };
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let mut table = lock(&agent.procs.table);
    table.last_serial += 1;
    let proc = Arc::new(Proc {
        pid,
        serial: table.last_serial,
        command,
        tag: req.tag.clone(),
        background: req.background,
        tty: resize_handle,
        state: Mutex::new(State {
            ring: Ring::new(config.ring_size),
            readers: HashMap::new(),
            next_reader: 0,
            open_streams: streams.len() as u8,
            exit: None,
        }),
        changed,
        exit,
        timed_out: AtomicBool::new(false),
        stdin: Mutex::new(stdin_fd.is_some().then_some(stdin_tx)),
    });
    table.by_pid.insert(pid, proc.clone());
    drop(table);

    let plumb = || -> std::io::Result<()> {
        if let Some(fd) = stdin_fd {
            tokio::spawn(feed_stdin(flow::writer(fd)?, stdin_rx));
        }
        for (fd, stream) in streams {
            let pipe = flow::reader(fd)?;
            tokio::spawn(pump(proc.clone(), pipe, stream));
        }
        Ok(())
    };
    if let Err(e) = plumb() {
        proc.kill_group();
        return Err(Failure::new(
            ErrorCode::Io,
            format!("connecting to {argv0}: {e}"),
        ));
    }
    if let Some(ms) = req.timeout_ms {
        tokio::spawn(enforce_timeout(proc.clone(), Duration::from_millis(ms)));
    }
    Ok(proc)
}

/// The signal numbered `signal`.
pub(crate) fn parse_signal(signal: i32) -> Result<Signal, Failure> {
    Signal::try_from(signal).map_err(|_: Errno| {
        Failure::new(ErrorCode::BadRequest, format!("{signal} is not a signal"))
    })
}
