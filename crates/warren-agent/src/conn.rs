//! One client connection: the handshake, then a dispatcher routing frames to channels.
//!
//! The dispatcher owns the connection's read side and the table of open channels; each
//! operation that outlives its request runs as a task of its own, writing frames to a
//! bounded queue that a writer task drains to the socket. The dispatcher never waits on
//! a process or a file: stdin and upload data go into queues that the client's input
//! credit bounds (see `flow::Window`), so one process that does not read its stdin holds
//! up its own channel's input and nothing else. It waits only for room in the outgoing
//! queue, which a client that reads its socket always makes.
//!
//! Credit frames to the client go through a queue of their own, ahead of everything
//! else and never waiting: credit is given back from wherever input is consumed (a
//! process's stdin writer, an upload on the blocking pool), and the queue holds each
//! channel at most once, with what it has given back added up (see `flow::Window`).
//!
//! Credit frames for a channel that has just finished are dropped, and so are its stdin
//! and data frames, with their credit given back: the client may have sent them before
//! it saw the operation end. When the connection goes away every channel task is stopped,
//! and processes started on it without `background` are killed with their process group;
//! a client that leaves one channel of a connection it keeps says so (`Request::Close`),
//! and that channel alone ends the same way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use warren_types::proto::{
    frame_credit, read_frame, write_frame, ErrorCode, Frame, FrameKind, Request, Response,
    PROTOCOL_VERSION,
};

use crate::files::{self, Upload};
use crate::flow::{Credit, Window};
use crate::process::{self, parse_signal, Replay};
use crate::watches;
use crate::{Agent, Failure};

/// Frames queued for the socket; data frames are at most [`CHUNK`](warren_types::proto::CHUNK) each.
const OUT_QUEUE: usize = 16;

#[derive(Debug)]
struct Chan {
    /// What the agent may send the client.
    credit: Arc<Credit>,
    /// What the client may send the agent.
    input: Arc<Window>,
    /// The client sent beyond its input credit: its input is dropped from then on.
    refused: bool,
    task: Option<AbortHandle>,
    /// The process whose stdin this channel feeds.
    pid: Option<u32>,
    kill_on_disconnect: bool,
    upload: Option<mpsc::UnboundedSender<Upload>>,
}

impl Chan {
    fn new(ch: u32, grants: mpsc::UnboundedSender<Arc<Window>>) -> Self {
        Self {
            credit: Arc::new(Credit::new()),
            input: Window::new(ch, grants),
            refused: false,
            task: None,
            pid: None,
            kill_on_disconnect: false,
            upload: None,
        }
    }
}

struct Conn {
    agent: Arc<Agent>,
    out: mpsc::Sender<Frame>,
    /// Channels with input credit to give back, ahead of `out`.
    grants: mpsc::UnboundedSender<Arc<Window>>,
    chans: HashMap<u32, Chan>,
    done_tx: mpsc::UnboundedSender<u32>,
    done_rx: mpsc::UnboundedReceiver<u32>,
}

/// Serves one connection until the client goes and what it left running has sent its
/// last frame. The writer runs in this same task, not one of its own: when the task is
/// aborted (the agent closing every connection before its memory is saved), both halves
/// of the socket are closed by the time the abort is joined, so no connection is open
/// in the saved image.
pub(crate) async fn serve(stream: UnixStream, agent: Arc<Agent>) {
    let (rd, wr) = stream.into_split();
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let (grants, grants_rx) = mpsc::unbounded_channel();
    tokio::join!(
        read_requests(rd, out, grants, agent),
        write_frames(wr, out_rx, grants_rx)
    );
}

/// The dispatcher: the handshake, then every frame to its channel until the client
/// closes the connection.
async fn read_requests(
    rd: tokio::net::unix::OwnedReadHalf,
    out: mpsc::Sender<Frame>,
    grants: mpsc::UnboundedSender<Arc<Window>>,
    agent: Arc<Agent>,
) {
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    if !handshake(&mut rd, &out).await {
        return;
    }
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        agent,
        out,
        grants,
        chans: HashMap::new(),
        done_tx,
        done_rx,
    };
    loop {
        let frame = match read_frame(&mut rd).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                // The stream cannot be resynchronised after a bad frame: say why, close.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    conn.fail(0, ErrorCode::BadRequest, format!("bad frame: {e}"))
                        .await;
                }
                break;
            }
        };
        while let Ok(ch) = conn.done_rx.try_recv() {
            conn.chans.remove(&ch);
        }
        conn.dispatch(frame).await;
    }
    conn.close();
}

async fn handshake(
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    out: &mpsc::Sender<Frame>,
) -> bool {
    let Ok(Some(first)) = read_frame(rd).await else {
        return false;
    };
    let hello = (first.channel == 0 && first.kind == FrameKind::Control)
        .then(|| first.parse::<Request>().ok())
        .flatten();
    let (reply, ok) = match hello {
        Some(Request::Hello { version }) if version == PROTOCOL_VERSION => (
            Response::Hello {
                version: PROTOCOL_VERSION,
                agent: format!("warren-agent {}", env!("CARGO_PKG_VERSION")),
            },
            true,
        ),
        Some(Request::Hello { version }) => (
            Failure::new(
                ErrorCode::VersionMismatch,
                format!("agent speaks protocol version {PROTOCOL_VERSION}, client {version}"),
            )
            .response(),
            false,
        ),
        _ => (
            Failure::new(
                ErrorCode::BadRequest,
                "the first frame must be hello on channel 0",
            )
            .response(),
            false,
        ),
    };
    out.send(Frame::control(0, &reply)).await.is_ok() && ok
}

/// The agent's write buffer: small frames are gathered in it, larger ones bypass it.
const WRITE_BUFFER: usize = 16 << 10;

/// The agent's read buffer: small frames arrive back to back, and most of a large one
/// is read straight into its payload. A connection the daemon keeps open between calls
/// holds it, so it is kept small.
const READ_BUFFER: usize = 16 << 10;

async fn write_frames(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    mut grants: mpsc::UnboundedReceiver<Arc<Window>>,
) {
    // Small frames (credit, control, short output) gather into one flush; a frame of at
    // least the buffer's size goes straight to the socket from where its payload lies
    // (after what is buffered), not copied into the buffer first.
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, wr);
    loop {
        let frame = tokio::select! {
            biased;
            Some(window) = grants.recv() => window.grant(),
            frame = rx.recv() => match frame {
                Some(frame) => Some(frame),
                None => return,
            },
        };
        if let Some(frame) = frame {
            if write_frame(&mut w, &frame).await.is_err() {
                return;
            }
        }
        // Batch what is already queued into one flush, credit first.
        loop {
            let frame = match grants.try_recv() {
                Ok(window) => window.grant(),
                Err(_) => match rx.try_recv() {
                    Ok(frame) => Some(frame),
                    Err(_) => break,
                },
            };
            if let Some(frame) = frame {
                if write_frame(&mut w, &frame).await.is_err() {
                    return;
                }
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

impl Conn {
    async fn send(&self, ch: u32, response: Response) {
        let _ = self.out.send(Frame::control(ch, &response)).await;
    }

    async fn fail(&self, ch: u32, code: ErrorCode, message: impl Into<String>) {
        self.send(ch, Failure::new(code, message).response()).await;
    }

    /// Runs `task` as channel `ch`'s operation; the channel closes when it ends.
    fn run(&mut self, ch: u32, task: impl Future<Output = ()> + Send + 'static) -> &mut Chan {
        let done = self.done_tx.clone();
        let busy = self.agent.busy.enter();
        let handle = tokio::spawn(async move {
            task.await;
            let _ = done.send(ch);
            drop(busy);
        });
        let grants = self.grants.clone();
        let chan = self
            .chans
            .entry(ch)
            .or_insert_with(|| Chan::new(ch, grants));
        chan.task = Some(handle.abort_handle());
        chan
    }

    /// Runs blocking file work on the blocking pool and answers with its result.
    fn run_blocking(&mut self, ch: u32, work: impl FnOnce() -> Response + Send + 'static) {
        let out = self.out.clone();
        self.run(ch, async move {
            let response = tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
                Failure::new(ErrorCode::Io, "file operation failed").response()
            });
            let _ = out.send(Frame::control(ch, &response)).await;
        });
    }

    async fn dispatch(&mut self, frame: Frame) {
        let ch = frame.channel;
        match frame.kind {
            FrameKind::Control => match frame.parse::<Request>() {
                Ok(request) => self.request(ch, request).await,
                Err(e) => {
                    self.fail(ch, ErrorCode::BadRequest, format!("bad request: {e}"))
                        .await
                }
            },
            FrameKind::Credit => match frame.credit_bytes() {
                Some(bytes) => {
                    if let Some(chan) = self.chans.get(&ch) {
                        chan.credit.grant(bytes);
                    }
                }
                None => {
                    self.fail(ch, ErrorCode::BadRequest, "a credit frame carries 4 bytes")
                        .await
                }
            },
            FrameKind::Stdin | FrameKind::Data => self.input(frame).await,
            FrameKind::Stdout | FrameKind::Stderr => {
                self.fail(
                    ch,
                    ErrorCode::BadRequest,
                    "stdout and stderr frames only come from the agent",
                )
                .await
            }
        }
    }

    /// Takes stdin or upload data: charges the channel's input credit and hands the
    /// bytes on without waiting. Whatever is dropped here gives its credit back.
    async fn input(&mut self, frame: Frame) {
        let (ch, kind) = (frame.channel, frame.kind);
        let Some(chan) = self.chans.get_mut(&ch) else {
            // The channel has ended (or never began): nothing takes the bytes, but the
            // client counted them against a window it may still be writing to.
            let cost = frame_credit(frame.payload.len()) as u32;
            let _ = self.out.send(Frame::credit(ch, cost)).await;
            return;
        };
        if chan.refused {
            return;
        }
        let Some(input) = chan.input.charge(frame.payload) else {
            chan.refused = true;
            // An upload with a hole in it must not be finished: abandon it.
            chan.upload = None;
            let what = if kind == FrameKind::Stdin {
                "stdin"
            } else {
                "data"
            };
            let message = format!(
                "{what} beyond the credit the agent granted; this channel's input is refused"
            );
            return self.fail(ch, ErrorCode::BadRequest, message).await;
        };
        match (kind, chan.pid, &chan.upload) {
            (FrameKind::Stdin, Some(pid), _) => {
                if let Some(proc) = self.agent.procs.get(pid) {
                    proc.write_stdin(input);
                }
            }
            (FrameKind::Data, _, Some(upload)) => {
                let _ = upload.send(Upload::Data(input));
            }
            // Stdin for a channel without a process is dropped, as for an ended one.
            (FrameKind::Stdin, None, _) => {}
            _ => {
                drop(input);
                self.fail(
                    ch,
                    ErrorCode::BadRequest,
                    "data frame without an upload on this channel",
                )
                .await
            }
        }
    }

    async fn request(&mut self, ch: u32, request: Request) {
        if ch == 0 {
            return self
                .fail(
                    0,
                    ErrorCode::BadRequest,
                    "channel 0 carries only the handshake",
                )
                .await;
        }
        match request {
            Request::End => match self.chans.get_mut(&ch).and_then(|c| c.upload.take()) {
                Some(upload) => {
                    let _ = upload.send(Upload::End);
                }
                None => {
                    self.fail(
                        ch,
                        ErrorCode::BadRequest,
                        "no upload to end on this channel",
                    )
                    .await
                }
            },
            Request::Cancel => {
                // Stops the stream; a process keeps running. Dropping an upload's queue
                // abandons it.
                if let Some(task) = self.chans.remove(&ch).and_then(|c| c.task) {
                    task.abort();
                }
            }
            Request::Close => {
                if let Some(chan) = self.chans.remove(&ch) {
                    self.close_chan(chan);
                }
            }
            Request::CloseStdin => {
                let proc = self
                    .chans
                    .get(&ch)
                    .and_then(|c| c.pid)
                    .and_then(|pid| self.agent.procs.get(pid));
                match proc {
                    Some(proc) => proc.close_stdin(),
                    None => {
                        self.fail(ch, ErrorCode::BadRequest, "no process on this channel")
                            .await
                    }
                }
            }
            _ if self.chans.contains_key(&ch) => {
                self.fail(ch, ErrorCode::BadRequest, format!("channel {ch} is in use"))
                    .await
            }
            request => self.start(ch, request).await,
        }
    }

    async fn start(&mut self, ch: u32, request: Request) {
        let out = self.out.clone();
        match request {
            Request::Exec(exec) => {
                let proc = match process::spawn(&self.agent, &exec) {
                    Ok(proc) => proc,
                    Err(f) => return self.send(ch, f.response()).await,
                };
                let reader = proc.reader(Replay::All);
                let credit = Arc::new(Credit::new());
                let agent = self.agent.clone();
                let (pid, serial) = (proc.pid, proc.serial);
                let task_credit = credit.clone();
                let background = exec.background;
                let chan = self.run(ch, async move {
                    if out
                        .send(Frame::control(ch, &Response::Started { pid, serial }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // A background process is kept, output and exit, for as long as
                    // MAX_ENDED allows: its starter has usually gone before it ends
                    // (what this channel sent then reached nobody), and its output is
                    // read again and again (`warren logs`).
                    if reader.follow(ch, &task_credit, &out).await && !background {
                        agent.procs.collect(pid);
                    }
                });
                chan.credit = credit;
                chan.pid = Some(pid);
                chan.kill_on_disconnect = !exec.background;
            }
            Request::Attach {
                pid,
                replay,
                from,
                serial,
            } => {
                let proc = self
                    .agent
                    .procs
                    .get(pid)
                    .filter(|p| serial.is_none_or(|s| s == p.serial));
                let Some(proc) = proc else {
                    let message = match serial {
                        Some(s) => format!("no process {pid} with serial {s}"),
                        None => format!("no process {pid}"),
                    };
                    return self.fail(ch, ErrorCode::ProcessNotFound, message).await;
                };
                let reader = proc.reader(match (from, replay) {
                    (Some(offset), _) => Replay::From(offset),
                    (None, true) => Replay::All,
                    (None, false) => Replay::Nothing,
                });
                let credit = Arc::new(Credit::new());
                let agent = self.agent.clone();
                let task_credit = credit.clone();
                let background = proc.background;
                let chan = self.run(ch, async move {
                    if reader.follow(ch, &task_credit, &out).await && !background {
                        agent.procs.collect(pid);
                    }
                });
                chan.credit = credit;
                chan.pid = Some(pid);
            }
            Request::ListProcesses => {
                let list = self.agent.procs.list();
                self.send(ch, Response::Processes { list }).await;
            }
            Request::Signal { pid, signal, group } => {
                let result = parse_signal(signal).and_then(|sig| match self.agent.procs.get(pid) {
                    Some(proc) => proc.signal(sig, group),
                    None => Err(Failure::new(
                        ErrorCode::ProcessNotFound,
                        format!("no process {pid}"),
                    )),
                });
                self.send(ch, result.map_or_else(Failure::response, |()| Response::Ok))
                    .await;
            }
            Request::Resize { pid, size } => {
                let result = match self.agent.procs.get(pid) {
                    Some(proc) => proc.resize(size),
                    None => Err(Failure::new(
                        ErrorCode::ProcessNotFound,
                        format!("no process {pid}"),
                    )),
                };
                self.send(ch, result.map_or_else(Failure::response, |()| Response::Ok))
                    .await;
            }
            Request::ReadFile {
                path,
                special,
                user,
            } => {
                let credit = Arc::new(Credit::new());
                let task_credit = credit.clone();
                let path = path.into_path_buf();
                let read = files::read_file(path, special, user, ch, task_credit, out);
                self.run(ch, read).credit = credit;
            }
            Request::WriteFile {
                path,
                mode,
                append,
                in_place,
                metadata,
                user,
            } => {
                let (tx, rx) = mpsc::unbounded_channel();
                let path = path.into_path_buf();
                let how = match (append, in_place) {
                    (true, _) => files::WriteHow::Append,
                    (false, true) => files::WriteHow::InPlace,
                    (false, false) => files::WriteHow::Replace,
                };
                let chan = self.run(ch, async move {
                    let _ = tokio::task::spawn_blocking(move || {
                        files::write_file(
                            files::WriteJob {
                                path,
                                mode,
                                how,
                                metadata,
                                user,
                            },
                            rx,
                            ch,
                            out,
                        )
                    })
                    .await;
                });
                chan.upload = Some(tx);
            }
            Request::ListDir { path, depth, user } => self.run_blocking(ch, move || {
                files::as_user(user.as_ref(), || files::list_dir(path.as_path(), depth))
            }),
            Request::Stat { path, user } => self.run_blocking(ch, move || {
                files::as_user(user.as_ref(), || files::stat(path.as_path()))
            }),
            Request::MakeDir { path, mode, user } => self.run_blocking(ch, move || {
                files::make_dir_as(path.as_path(), mode, user.as_ref())
            }),
            Request::Remove {
                path,
                recursive,
                user,
            } => self.run_blocking(ch, move || {
                files::as_user(user.as_ref(), || files::remove(path.as_path(), recursive))
            }),
            Request::Rename { from, to, user } => self.run_blocking(ch, move || {
                files::as_user(user.as_ref(), || {
                    files::rename(from.as_path(), to.as_path())
                })
            }),
            Request::Watch {
                path,
                recursive,
                user,
            } => {
                let watch = watches::watch(path.into_path_buf(), recursive, user, ch, out);
                self.run(ch, watch);
            }
            Request::Hello { .. } => {
                self.fail(ch, ErrorCode::BadRequest, "hello was already exchanged")
                    .await
            }
            Request::End | Request::Cancel | Request::Close | Request::CloseStdin => {
                self.fail(ch, ErrorCode::BadRequest, "nothing runs on this channel")
                    .await
            }
        }
    }

    fn close(mut self) {
        for chan in std::mem::take(&mut self.chans).into_values() {
            self.close_chan(chan);
        }
    }

    /// Ends a channel its client has gone from: its work stops, and a process started
    /// on it in the foreground dies with its group.
    fn close_chan(&self, chan: Chan) {
        if chan.kill_on_disconnect {
            if let Some(proc) = chan.pid.and_then(|pid| self.agent.procs.get(pid)) {
                proc.kill_group();
            }
        }
        if let Some(task) = chan.task {
            task.abort();
        }
    }
}

impl Drop for Conn {
    /// A connection ended from outside (the agent closing every connection before its
    /// sandbox's memory is saved) stops the work it ran for its channels, which holds
    /// its half of the socket open otherwise; the processes go on.
    fn drop(&mut self) {
        for chan in self.chans.values() {
            if let Some(task) = &chan.task {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn an_aborted_connection_is_closed_once_its_abort_is_joined() {
        let agent = Arc::new(Agent {
            config: crate::AgentConfig::default(),
            procs: process::Procs::new(),
            busy: Arc::default(),
        });
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut conns = tokio::task::JoinSet::new();
        conns.spawn(serve(UnixStream::from_std(theirs).unwrap(), agent));
        // Served a while: the dispatcher waits for the hello, the writer for frames.
        tokio::task::yield_now().await;
        // As the agent does before its memory is saved.
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        // Nothing else has run since: the socket must be closed already, not once some
        // other task of the agent's gets to it.
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut &ours, &mut byte) {
            Ok(0) => {}
            other => panic!("the connection is still open: {other:?}"),
        }
    }
}
