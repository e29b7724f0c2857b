//! The host side of the agent protocol (see `warren_types::proto`).
//!
//! One [`AgentClient`] is one connection: a reader task hands incoming frames to the
//! channel they belong to, a writer task serialises outgoing frames. Data credit is
//! granted back to the agent only when the consumer takes the data out of its
//! [`Channel`], so a slow consumer slows the process it reads from, not the host's memory.
//! The other way, stdin and upload data wait for the agent's credit on their own channel
//! (a process that does not read its stdin holds up only whoever writes to it), and at
//! most [`DATA_IN_FLIGHT`] bytes of data wait to be written to the agent on a connection.
//! An agent that an older build started speaks protocol version 1, which has no input
//! credit: the client then sends without it, as that agent expects.
//!
//! File operations come in two forms: the plain ones (`stat`, `read_file`, ...) take text
//! paths and act as the agent itself (the sandbox's root); the `*_as` and `*_with` ones
//! take any [`WirePath`] (a `&str`, raw bytes, an `OsStr`) and may name the sandbox user
//! to act as. [`AgentClient::open_read`] and [`AgentClient::write_stream`] move a file in
//! chunks, so neither side ever holds more of it than a window.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Semaphore};
use warren_types::proto::{
    frame_credit, read_frame, write_frame, ErrorCode, ExecRequest, ExitStatus, FileInfo, Frame,
    FrameKind, ProcessInfo, Request, Response, User, WinSize, WirePath, CHUNK, CLOSE_SINCE,
    INPUT_WINDOW, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// Bytes of data (uploads, stdin) one connection queues for the agent at most; a frame
/// holds its share until the writer has written it.
pub const DATA_IN_FLIGHT: usize = 4 * CHUNK;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sandbox agent: {0}")]
    Connect(std::io::Error),
    #[error("the agent closed the connection")]
    Closed,
    #[error("unexpected reply from the agent: {0}")]
    Protocol(String),
    #[error("{message}")]
    Agent { code: ErrorCode, message: String },
    #[error("reading the data to upload")]
    Upload(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug)]
struct Inner {
    out: mpsc::Sender<Frame>,
    /// Credit grants jump the data queue and never wait: a `recv` abandoned halfway
    /// (in a `select!`) must not lose the frame it took.
    credit: mpsc::UnboundedSender<Frame>,
    closed: AtomicBool,
    chans: Mutex<HashMap<u32, Route>>,
    next: AtomicU32,
    /// Permits for [`DATA_IN_FLIGHT`] bytes; closed when the writer stops.
    in_flight: Arc<Semaphore>,
    /// The protocol version the connection speaks (input credit from version 2 on).
    version: u16,
    /// Dropped with the last client: the reader stops then, and the socket is closed at
    /// once rather than when the agent closes its end.
    _last_client: tokio::sync::oneshot::Sender<()>,
}

impl Inner {
    /// See [`AgentClient::ends_dropped_channels`].
    fn ends_dropped_channels(&self) -> bool {
        self.version >= CLOSE_SINCE
    }
}

/// Where the reader puts a channel's frames, and what they hold there until taken.
#[derive(Debug, Clone)]
struct Route {
    tx: mpsc::UnboundedSender<Frame>,
    queued: Arc<AtomicUsize>,
    input: Arc<Semaphore>,
}

/// A cap on hoarded input credit, far below the semaphore's own limit, so that no
/// sequence of grants can make it panic.
const MAX_INPUT_CREDIT: usize = 1 << 40;

/// What a channel's frames may hold on the host before its consumer takes them. Data is
/// bounded by credit well below this (a window plus a little per frame); what passes it is
/// control messages (file-watch events) that a consumer stopped taking, and the channel
/// ends rather than grow.
const MAX_QUEUED: usize = 8 << 20;

/// What a queued frame is counted as beyond its payload.
const FRAME_OVERHEAD: usize = 64;

fn queued_cost(f: &Frame) -> usize {
    f.payload.len() + FRAME_OVERHEAD
}

/// A connection to one sandbox's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

/// What arrives on a channel.
#[derive(Debug)]
pub enum Incoming {
    Control(Response),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Data(Vec<u8>),
}

/// One operation on a connection.
#[derive(Debug)]
pub struct Channel {
    id: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    queued: Arc<AtomicUsize>,
    /// Credit for stdin and upload data; closed when the channel or connection ends.
    input: Arc<Semaphore>,
    inner: Arc<Inner>,
    /// Its operation has ended on the agent's side (the last answer came): dropping it
    /// tells the agent nothing.
    settled: bool,
}

/// How to read a file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Read as this sandbox user; `None` reads as the agent (the sandbox's root).
    pub user: Option<User>,
    /// Also read FIFOs, devices and sockets, which are otherwise refused with
    /// `ErrorCode::NotAFile`. They may never end: stream them with
    /// [`AgentClient::open_read`].
    pub special: bool,
}

/// How to write a file.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Write as this sandbox user, who then owns what is created; `None` writes as the
    /// agent (the sandbox's root).
    pub user: Option<User>,
    /// Permission bits; a replaced file keeps its own, a new one gets 0644.
    pub mode: Option<u32>,
    /// Append instead of replacing the file atomically.
    pub append: bool,
    /// Truncate and write the file in place instead of replacing it atomically.
    pub in_place: bool,
    /// Set on the file as `user.e2b.KEY` extended attributes.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Where an attach starts, and which process it expects.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// Replay the output the agent still holds.
    pub replay: bool,
    /// Start at this absolute output offset (taking precedence over `replay`), such as
    /// the count of bytes received before a disconnect; see `ProcessInfo::output_end`.
    pub from: Option<u64>,
    /// Attach only to the process with this serial: a pid reused by another process is
    /// `ErrorCode::ProcessNotFound`.
    pub serial: Option<u64>,
}

impl AgentClient {
    /// Connects and checks that the agent speaks our protocol version, or one of the
    /// older ones that an agent started by an older build speaks (newest first).
    pub async fn connect(socket: &Path) -> Result<Self> {
        let mut refused = None;
        for version in (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).rev() {
            match Self::connect_speaking(socket, version).await {
                // The agent closes a connection it refuses: ask again on a new one.
                Err(
                    e @ ClientError::Agent {
                        code: ErrorCode::VersionMismatch,
                        ..
                    },
                ) => {
                    refused.get_or_insert(e);
                }
                // What went wrong with the newest version says most.
                Err(e) => return Err(refused.unwrap_or(e)),
                Ok(client) => return Ok(client),
            }
        }
        Err(refused.unwrap_or(ClientError::Closed))
    }

    /// Connects to an agent known to speak protocol `version` (an earlier connection to
    /// the same agent said so, [`AgentClient::version`]): the hello goes out and the
    /// caller's first request right behind it, without waiting a round trip for the
    /// answer. An agent that refuses the hello after all closes the connection, and
    /// calls on it fail as on a closed one.
    pub async fn connect_known(socket: &Path, version: u16) -> Result<Self> {
        let client = Self::start(socket, version).await?;
        // On channel 0, which is not opened here: its answer, once it comes, finds no
        // channel and is dropped.
        client
            .inner
            .out
            .send(Frame::control(0, &Request::Hello { version }))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(client)
    }

    /// The protocol version the connection speaks: this build's, or an older one that
    /// its agent speaks.
    pub fn version(&self) -> u16 {
        self.inner.version
    }

    /// Whether this connection can carry many callers' operations at once: its agent
    /// ends a channel's work (a foreground process, a stream) when the channel is
    /// dropped before its operation finished, as it does for all of a connection's
    /// channels when the connection closes. Older agents end them only then.
    pub fn ends_dropped_channels(&self) -> bool {
        self.inner.ends_dropped_channels()
    }

    async fn connect_speaking(socket: &Path, version: u16) -> Result<Self> {
        let client = Self::start(socket, version).await?;
        let mut hello = client.open_at(|_| 0);
        // Channel 0 is the handshake's alone: nothing is ever closed on it.
        hello.settled = true;
        hello.send(&Request::Hello { version }).await?;
        match hello.recv().await {
            Some(Incoming::Control(Response::Hello { version: v, .. })) if v == version => {
                Ok(client)
            }
            Some(Incoming::Control(Response::Error { code, message })) => {
                Err(ClientError::Agent { code, message })
            }
            Some(other) => Err(ClientError::Protocol(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// A connection to speak `version` on; its hello goes on channel 0.
    async fn start(socket: &Path, version: u16) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(ClientError::Connect)?;
        let (r, mut w) = stream.into_split();
        // Frames waiting for the socket: data frames are up to CHUNK each, so this bounds
        // what one connection holds (2 MiB) when the agent reads slower than we send.
        let (out, mut out_rx) = mpsc::channel::<Frame>(32);
        let (credit, mut credit_rx) = mpsc::unbounded_channel::<Frame>();
        let in_flight = Arc::new(Semaphore::new(DATA_IN_FLIGHT));
        let (last_client, mut no_client) = tokio::sync::oneshot::channel::<()>();
        let inner = Arc::new(Inner {
            out,
            credit,
            closed: AtomicBool::new(false),
            chans: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            in_flight: in_flight.clone(),
            version,
            _last_client: last_client,
        });
        tokio::spawn(async move {
            loop {
                let f = tokio::select! {
                    biased;
                    Some(f) = credit_rx.recv() => f,
                    f = out_rx.recv() => match f {
                        Some(f) => f,
                        None => break,
                    },
                };
                if write_frame(&mut w, &f).await.is_err() {
                    break;
                }
                if let Some(n) = data_share(&f) {
                    in_flight.add_permits(n as usize);
                }
            }
            // Senders waiting for room would wait forever.
            in_flight.close();
        });
        let client = AgentClient { inner };
        let reader_inner = Arc::downgrade(&client.inner);
        // Buffered: a frame's length and header are two small reads, which without a
        // buffer were a system call each, and small frames arrive back to back. The buffer
        // is small so that most of a large payload is read straight into its frame.
        let mut r = tokio::io::BufReader::with_capacity(16 << 10, r);
        tokio::spawn(async move {
            loop {
                let f = tokio::select! {
                    read = read_frame(&mut r) => match read {
                        Ok(Some(f)) => f,
                        _ => break,
                    },
                    // Nobody holds the connection any more.
                    _ = &mut no_client => break,
                };
                let Some(inner) = reader_inner.upgrade() else {
                    break;
                };
                let route = inner.chans.lock().unwrap().get(&f.channel).cloned();
                if let (Some(route), FrameKind::Credit) = (&route, f.kind) {
                    // Input credit, taken here: whoever writes input waits for it while
                    // nobody may be reading the channel's other frames.
                    if let Some(n) = f.credit_bytes() {
                        if route.input.available_permits() < MAX_INPUT_CREDIT {
                            route.input.add_permits(n as usize);
                        }
                    }
                    continue;
                }
                if let Some(route) = route {
                    let cost = queued_cost(&f);
                    if route.queued.fetch_add(cost, Ordering::Relaxed) + cost > MAX_QUEUED {
                        // Its consumer stopped taking: the channel ends (after what is
                        // queued) instead of growing.
                        route.queued.fetch_sub(cost, Ordering::Relaxed);
                        if let Some(gone) = inner.chans.lock().unwrap().remove(&f.channel) {
                            gone.input.close();
                        }
                        continue;
                    }
                    let _ = route.tx.send(f);
                }
            }
            // Dropping every sender ends every channel's stream.
            if let Some(inner) = reader_inner.upgrade() {
                inner.closed.store(true, Ordering::Relaxed);
                for (_, route) in inner.chans.lock().unwrap().drain() {
                    route.input.close();
                }
            }
        });
        Ok(client)
    }

    /// Whether the connection has ended (the agent went away).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed) || self.inner.out.is_closed()
    }

    /// A channel with the id `id` gives, under the table's lock.
    fn open_at(&self, id: impl FnOnce(&HashMap<u32, Route>) -> u32) -> Channel {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let input = Arc::new(Semaphore::new(INPUT_WINDOW as usize));
        let route = Route {
            tx,
            queued: queued.clone(),
            input: input.clone(),
        };
        let mut chans = self.inner.chans.lock().unwrap();
        if self.inner.closed.load(Ordering::Relaxed) {
            // The reader has gone: nothing would ever close this channel's input.
            input.close();
        }
        let id = id(&chans);
        chans.insert(id, route);
        drop(chans);
        Channel {
            id,
            rx,
            queued,
            input,
            inner: self.inner.clone(),
            settled: false,
        }
    }

    /// A new channel for one operation.
    pub fn open(&self) -> Channel {
        self.open_at(|open| loop {
            // Odd ids, so never the handshake's 0. A connection kept for long enough to
            // wrap around skips the ids still open (a watch, a terminal).
            let id = self.inner.next.fetch_add(2, Ordering::Relaxed);
            if !open.contains_key(&id) {
                break id;
            }
        })
    }

    /// Sends one request on a new channel and returns its first reply.
    pub async fn call(&self, req: &Request) -> Result<Response> {
        let mut ch = self.open();
        ch.send(req).await?;
        let reply = ch.reply().await;
        // One answer is all a call's channel carries.
        ch.settled = true;
        reply
    }

    async fn call_ok(&self, req: &Request) -> Result<()> {
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    async fn call_info(&self, req: &Request) -> Result<FileInfo> {
        match self.call(req).await? {
            Response::FileInfo { info } => Ok(info),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Starts a process.
    pub async fn exec(&self, req: ExecRequest) -> Result<Process> {
        let mut ch = self.open();
        ch.send(&Request::Exec(req)).await?;
        match ch.reply().await? {
            Response::Started { pid, serial } => Ok(Process {
                pid,
                // An agent that predates serials sends none.
                serial: (serial != 0).then_some(serial),
                ch,
                client: self.clone(),
            }),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Follows a process started earlier (by any client).
    pub async fn attach(&self, pid: u32, replay: bool) -> Result<Process> {
        let opts = AttachOptions {
            replay,
            ..AttachOptions::default()
        };
        self.attach_with(pid, opts).await
    }

    /// Follows a process started earlier, from where `opts` says.
    pub async fn attach_with(&self, pid: u32, opts: AttachOptions) -> Result<Process> {
        let ch = self.open();
        ch.send(&Request::Attach {
            pid,
            replay: opts.replay,
            from: opts.from,
            serial: opts.serial,
        })
        .await?;
        // Output (or an error for an unknown pid or serial) follows on the channel.
        Ok(Process {
            pid,
            serial: opts.serial,
            ch,
            client: self.clone(),
        })
    }

    pub async fn list_processes(&self) -> Result<Vec<ProcessInfo>> {
        match self.call(&Request::ListProcesses).await? {
            Response::Processes { list } => Ok(list),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        self.call_ok(&Request::Signal {
            pid,
            signal,
            group: false,
        })
        .await
    }

    /// `signal` to the process's whole group (what it started too).
    pub async fn signal_group(&self, pid: u32, signal: i32) -> Result<()> {
        self.call_ok(&Request::Signal {
            pid,
            signal,
            group: true,
        })
        .await
    }

    pub async fn resize(&self, pid: u32, size: WinSize) -> Result<()> {
        self.call_ok(&Request::Resize { pid, size }).await
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.stat_as(path, None).await
    }

    /// Describes `path` (a symlink as itself), looked at as `user`.
    pub async fn stat_as(
        &self,
        path: impl Into<WirePath>,
        user: Option<&User>,
    ) -> Result<FileInfo> {
        self.call_info(&Request::Stat {
            path: path.into(),
            user: user.cloned(),
        })
        .await
    }

    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<FileInfo>> {
        self.list_dir_as(path, depth, None).await
    }

    /// Lists a directory down to `depth` levels, as `user`.
    pub async fn list_dir_as(
        &self,
        path: impl Into<WirePath>,
        depth: u32,
        user: Option<&User>,
    ) -> Result<Vec<FileInfo>> {
        let req = Request::ListDir {
            path: path.into(),
            depth,
            user: user.cloned(),
        };
        match self.call(&req).await? {
            Response::DirEntries { entries } => Ok(entries),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn make_dir(&self, path: &str) -> Result<()> {
        self.make_dir_as(path, None, None).await
    }

    /// Makes a directory and its missing parents, as `user` (who then owns them).
    pub async fn make_dir_as(
        &self,
        path: impl Into<WirePath>,
        mode: Option<u32>,
        user: Option<&User>,
    ) -> Result<()> {
        self.call_ok(&Request::MakeDir {
            path: path.into(),
            mode,
            user: user.cloned(),
        })
        .await
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.remove_as(path, recursive, None).await
    }

    pub async fn remove_as(
        &self,
        path: impl Into<WirePath>,
        recursive: bool,
        user: Option<&User>,
    ) -> Result<()> {
        self.call_ok(&Request::Remove {
            path: path.into(),
            recursive,
            user: user.cloned(),
        })
        .await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_as(from, to, None).await
    }

    pub async fn rename_as(
        &self,
        from: impl Into<WirePath>,
        to: impl Into<WirePath>,
        user: Option<&User>,
    ) -> Result<()> {
        self.call_ok(&Request::Rename {
            from: from.into(),
            to: to.into(),
            user: user.cloned(),
        })
        .await
    }

    /// Watches a path (and, when `recursive`, the directories below it). Once the agent
    /// answers `Ok`, the returned channel carries `Response::WatchEvent`s until the
    /// watch fails or the channel is sent `Request::Cancel` or dropped.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<Channel> {
        self.watch_as(path, recursive, None).await
    }

    /// [`AgentClient::watch`] with what `user` may read.
    pub async fn watch_as(
        &self,
        path: impl Into<WirePath>,
        recursive: bool,
        user: Option<&User>,
    ) -> Result<Channel> {
        let mut ch = self.open();
        ch.send(&Request::Watch {
            path: path.into(),
            recursive,
            user: user.cloned(),
        })
        .await?;
        match ch.reply().await? {
            Response::Ok => Ok(ch),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Reads a whole regular file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        self.read_file_with(path, &ReadOptions::default()).await
    }

    /// Reads a whole file into memory, however large. For a special file, or one of
    /// unknown size, use [`AgentClient::open_read`].
    pub async fn read_file_with(
        &self,
        path: impl Into<WirePath>,
        opts: &ReadOptions,
    ) -> Result<Vec<u8>> {
        let mut reader = self.open_read(path, opts).await?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Opens a file for a streaming read: the answer describes the file, and its
    /// contents come by [`FileReader::chunk`]. The agent sends only as much as the
    /// consumer has taken plus one window, so that is all the host ever holds.
    pub async fn open_read(
        &self,
        path: impl Into<WirePath>,
        opts: &ReadOptions,
    ) -> Result<FileReader> {
        let mut ch = self.open();
        ch.send(&Request::ReadFile {
            path: path.into(),
            special: opts.special,
            user: opts.user.clone(),
        })
        .await?;
        match ch.reply().await? {
            Response::FileInfo { info } => Ok(FileReader { info, ch }),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Writes a whole file (replacing it atomically).
    pub async fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> Result<u64> {
        let opts = WriteOptions {
            mode,
            ..WriteOptions::default()
        };
        self.write_file_with(path, data, &opts).await
    }

    pub async fn write_file_with(
        &self,
        path: impl Into<WirePath>,
        data: &[u8],
        opts: &WriteOptions,
    ) -> Result<u64> {
        self.write_stream(path, data, opts).await
    }

    /// Writes a file from `source`, sending each chunk as it is read: memory stays
    /// bounded by the connection's queue however large the file. Stops early (and
    /// abandons the upload, leaving the file as it was) when the agent refuses it or
    /// `source` fails. Dropping the future also abandons it.
    pub async fn write_stream<R: AsyncRead + Unpin>(
        &self,
        path: impl Into<WirePath>,
        mut source: R,
        opts: &WriteOptions,
    ) -> Result<u64> {
        let mut upload = Abandon(Some(self.open()));
        let ch = upload.0.as_mut().ok_or(ClientError::Closed)?;
        ch.send(&Request::WriteFile {
            path: path.into(),
            mode: opts.mode,
            append: opts.append,
            in_place: opts.in_place,
            metadata: opts.metadata.clone(),
            user: opts.user.clone(),
        })
        .await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            // The agent answers a refused upload (no permission, a directory) at once;
            // sending the rest would be for nothing.
            if let Some(answer) = ch.try_recv() {
                return match answer {
                    Incoming::Control(Response::Error { code, message }) => {
                        Err(ClientError::Agent { code, message })
                    }
                    other => Err(ClientError::Protocol(format!("{other:?}"))),
                };
            }
            let n = source.read(&mut buf).await.map_err(ClientError::Upload)?;
            if n == 0 {
                break;
            }
            ch.send_data(FrameKind::Data, buf[..n].to_vec()).await?;
        }
        ch.send(&Request::End).await?;
        let answer = ch.reply().await;
        // The agent has finished with the channel either way.
        upload.0.take();
        match answer? {
            Response::Written { bytes } => Ok(bytes),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }
}

/// Abandons the operation on its channel when dropped before it finished.
struct Abandon(Option<Channel>);

impl Drop for Abandon {
    fn drop(&mut self) {
        // An agent that ends dropped channels ends this one as the channel drops.
        if let Some(ch) = self.0.as_ref().filter(|ch| !ch.ends_when_dropped()) {
            ch.cancel_queued();
        }
    }
}

/// A file being read; see [`AgentClient::open_read`]. Dropping it before the end stops
/// the agent's read.
#[derive(Debug)]
pub struct FileReader {
    info: FileInfo,
    ch: Channel,
}

impl FileReader {
    /// What the file was when it was opened.
    pub fn info(&self) -> &FileInfo {
        &self.info
    }

    /// The next chunk of the contents, `None` at the end. Taking a chunk grants the
    /// agent credit for as many bytes more.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        // Settled by its `End` or an error: the read is over.
        if self.ch.settled {
            return Ok(None);
        }
        match self.ch.recv().await {
            Some(Incoming::Data(d)) => Ok(Some(d)),
            Some(Incoming::Control(Response::End)) => Ok(None),
            Some(Incoming::Control(Response::Error { code, message })) => {
                self.ch.settled = true;
                Err(ClientError::Agent { code, message })
            }
            Some(other) => Err(ClientError::Protocol(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        if !self.ch.settled && !self.ch.ends_when_dropped() {
            self.ch.cancel_queued();
        }
    }
}

/// The sending half of a [`Channel`]: a task may send on it (a process's stdin) while
/// another receives.
#[derive(Debug, Clone)]
pub struct ChannelSender {
    id: u32,
    input: Arc<Semaphore>,
    inner: Arc<Inner>,
}

impl ChannelSender {
    pub async fn send(&self, req: &Request) -> Result<()> {
        self.inner
            .out
            .send(Frame::control(self.id, req))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends data (stdin, upload data) in frames of at most [`CHUNK`], each once the
    /// agent has granted credit for it on this channel and the connection has room for
    /// it (see [`DATA_IN_FLIGHT`]). Data for a channel that has been dropped is
    /// discarded: nothing follows what runs on it any more.
    pub async fn send_data(&self, kind: FrameKind, data: Vec<u8>) -> Result<()> {
        if data.len() <= CHUNK {
            return self.send_frame(kind, data).await;
        }
        for chunk in data.chunks(CHUNK) {
            self.send_frame(kind, chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn send_frame(&self, kind: FrameKind, data: Vec<u8>) -> Result<()> {
        if self.inner.version >= 2 {
            // CHUNK is below INPUT_WINDOW, so the agent can always grant this much.
            let cost = frame_credit(data.len()) as u32;
            match self.input.acquire_many(cost).await {
                Ok(credit) => credit.forget(),
                Err(_) if self.inner.closed.load(Ordering::Relaxed) => {
                    return Err(ClientError::Closed)
                }
                Err(_) => return Ok(()),
            }
        }
        let frame = Frame::new(self.id, kind, data);
        let share = data_share(&frame).unwrap_or(0);
        let room = self
            .inner
            .in_flight
            .acquire_many(share)
            .await
            .map_err(|_| ClientError::Closed)?;
        self.inner
            .out
            .send(frame)
            .await
            .map_err(|_| ClientError::Closed)?;
        // The writer gives the room back once the frame is written.
        room.forget();
        Ok(())
    }
}

impl Channel {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A sender of this channel's, for another task.
    pub fn sender(&self) -> ChannelSender {
        ChannelSender {
            id: self.id,
            input: self.input.clone(),
            inner: self.inner.clone(),
        }
    }

    pub async fn send(&self, req: &Request) -> Result<()> {
        self.sender().send(req).await
    }

    /// Sends data; see [`ChannelSender::send_data`].
    pub async fn send_data(&self, kind: FrameKind, data: Vec<u8>) -> Result<()> {
        self.sender().send_data(kind, data).await
    }

    /// The next message; data is credited back to the agent as it is taken.
    pub async fn recv(&mut self) -> Option<Incoming> {
        loop {
            let f = self.rx.recv().await?;
            if let Some(incoming) = self.take(f) {
                return Some(incoming);
            }
        }
    }

    /// A message that has already arrived, if any, without waiting.
    fn try_recv(&mut self) -> Option<Incoming> {
        loop {
            let f = self.rx.try_recv().ok()?;
            if let Some(incoming) = self.take(f) {
                return Some(incoming);
            }
        }
    }

    /// Decodes a frame handed to the consumer, granting the agent credit for its data;
    /// `None` for frames a client never receives.
    fn take(&mut self, f: Frame) -> Option<Incoming> {
        self.queued.fetch_sub(queued_cost(&f), Ordering::Relaxed);
        let kind = f.kind;
        if matches!(
            kind,
            FrameKind::Stdout | FrameKind::Stderr | FrameKind::Data
        ) {
            // The agent counted the frame as at least MIN_FRAME_CREDIT; so do we.
            let n = f.payload.len();
            if n > 0 {
                let credit = frame_credit(n).min(u32::MAX as usize) as u32;
                let _ = self.inner.credit.send(Frame::credit(self.id, credit));
            }
        }
        Some(match kind {
            FrameKind::Control => match f.parse::<Response>() {
                Ok(r) => {
                    // The last answer of a process, a read and an upload.
                    if matches!(
                        r,
                        Response::Exited { .. } | Response::End | Response::Written { .. }
                    ) {
                        self.settled = true;
                    }
                    Incoming::Control(r)
                }
                Err(e) => Incoming::Control(Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("undecodable reply: {e}"),
                }),
            },
            FrameKind::Stdout => Incoming::Stdout(f.payload),
            FrameKind::Stderr => Incoming::Stderr(f.payload),
            FrameKind::Data => Incoming::Data(f.payload),
            FrameKind::Stdin | FrameKind::Credit => return None,
        })
    }

    /// Stops what runs on this channel (a watch, a read, an upload), after what was
    /// already sent on it.
    pub async fn cancel(&self) -> Result<()> {
        self.send(&Request::Cancel).await
    }

    /// [`Channel::cancel`] from a destructor, which cannot wait: queued after what was
    /// sent before, so the agent never sees the cancel ahead of the request it cancels.
    fn cancel_queued(&self) {
        self.queue(&Request::Cancel);
    }

    /// Whether dropping the channel before its operation ended ends it on the agent
    /// (see [`AgentClient::ends_dropped_channels`]).
    pub fn ends_when_dropped(&self) -> bool {
        self.inner.ends_dropped_channels()
    }

    /// Sends `req` on this channel from a destructor, which cannot wait: queued after
    /// what was sent before, so the agent never sees it ahead of the request it is about.
    fn queue(&self, req: &Request) {
        let frame = Frame::control(self.id, req);
        match self.inner.out.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let out = self.inner.out.clone();
                    runtime.spawn(async move {
                        let _ = out.send(frame).await;
                    });
                }
            }
            // The connection is gone, and with it whatever ran on the channel.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The next control reply, with agent errors turned into `Err`. An error as the
    /// reply to a request ends its operation: the channel is then settled.
    pub async fn reply(&mut self) -> Result<Response> {
        loop {
            match self.recv().await {
                Some(Incoming::Control(Response::Error { code, message })) => {
                    self.settled = true;
                    return Err(ClientError::Agent { code, message });
                }
                Some(Incoming::Control(r)) => return Ok(r),
                Some(_) => continue,
                None => return Err(ClientError::Closed),
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.settled && self.ends_when_dropped() {
            // Whatever runs on it is nobody's now; the connection may go on for others.
            self.queue(&Request::Close);
        }
        self.inner.chans.lock().unwrap().remove(&self.id);
        // Nothing routes credit to it now: a sender waiting for some gives up.
        self.input.close();
    }
}

/// The room a frame takes in [`DATA_IN_FLIGHT`], for the data that counts.
fn data_share(f: &Frame) -> Option<u32> {
    matches!(f.kind, FrameKind::Data | FrameKind::Stdin)
        .then(|| f.payload.len().min(DATA_IN_FLIGHT) as u32)
}

/// What a running process produces.
#[derive(Debug)]
pub enum ProcessEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(ExitStatus),
}

/// A process started or attached on a channel.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    /// The process's serial: from the agent for a started process, as asked for an
    /// attached one.
    pub serial: Option<u64>,
    ch: Channel,
    client: AgentClient,
}

impl Process {
    /// The next output chunk or the exit; `Closed` if the connection was lost.
    pub async fn next(&mut self) -> Result<ProcessEvent> {
        loop {
            match self.ch.recv().await {
                Some(Incoming::Stdout(d)) => return Ok(ProcessEvent::Stdout(d)),
                Some(Incoming::Stderr(d)) => return Ok(ProcessEvent::Stderr(d)),
                Some(Incoming::Control(Response::Exited { status })) => {
                    return Ok(ProcessEvent::Exited(status))
                }
                Some(Incoming::Control(Response::Error { code, message })) => {
                    return Err(ClientError::Agent { code, message })
                }
                Some(_) => continue,
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Its channel's sending half: stdin written from another task than the one reading
    /// the output. Needed by a writer that may get ahead of the process: a write waits
    /// for the process to take earlier input, and the process may first wait for its
    /// output to be read.
    pub fn sender(&self) -> ChannelSender {
        self.ch.sender()
    }

    /// Writes to the process's stdin, waiting for the agent's credit as it goes.
    pub async fn write_stdin(&self, data: Vec<u8>) -> Result<()> {
        self.ch.send_data(FrameKind::Stdin, data).await
    }

    pub async fn close_stdin(&self) -> Result<()> {
        self.ch.send(&Request::CloseStdin).await
    }

    pub async fn resize(&self, size: WinSize) -> Result<()> {
        self.client.resize(self.pid, size).await
    }

    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.client.signal(self.pid, signal).await
    }

    /// Runs to the end, collecting output.
    pub async fn output(mut self) -> Result<Output> {
        let mut out = Output::default();
        loop {
            match self.next().await? {
                ProcessEvent::Stdout(d) => out.stdout.extend_from_slice(&d),
                ProcessEvent::Stderr(d) => out.stderr.extend_from_slice(&d),
                ProcessEvent::Exited(s) => {
                    out.status = Some(s);
                    return Ok(out);
                }
            }
        }
    }
}

/// A finished process's output.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExitStatus>,
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;
    use tokio::sync::watch;
    use warren_types::proto::INITIAL_WINDOW;

    use super::*;

    /// An agent serving on a socket in a temporary directory, in a thread of its own.
    struct TestAgent {
        socket: PathBuf,
        dir: tempfile::TempDir,
        stop: watch::Sender<bool>,
        thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    }

    impl TestAgent {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("agent.sock");
            let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
            let (stop, stopped) = watch::channel(false);
            let config = crate::AgentConfig {
                shutdown: Some(stopped),
                ..Default::default()
            };
            let thread = std::thread::spawn(move || crate::serve(listener, config));
            Self {
                socket,
                dir,
                stop,
                thread: Some(thread),
            }
        }

        async fn client(&self) -> AgentClient {
            AgentClient::connect(&self.socket).await.unwrap()
        }

        fn path(&self, name: &[u8]) -> PathBuf {
            self.dir.path().join(OsStr::from_bytes(name))
        }
    }

    impl Drop for TestAgent {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            if let Some(t) = self.thread.take() {
                t.join().unwrap().unwrap();
            }
        }
    }

    fn agent_code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
        match r {
            Err(ClientError::Agent { code, .. }) => code,
            other => panic!("expected an agent error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn streaming_reads_hold_at_most_a_window() {
        let agent = TestAgent::start();
        let client = agent.client().await;
        let path = agent.path(b"big");
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();

        let mut reader = client
            .open_read(path.as_path(), &ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(reader.info().size, data.len() as u64);
        // Nothing taken yet: the agent stops at its initial credit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queued = reader.ch.rx.len();
        assert!(
            queued <= INITIAL_WINDOW as usize / CHUNK,
            "{queued} chunks queued unread"
        );
        let mut read = Vec::new();
        while let Some(chunk) = reader.chunk().await.unwrap() {
            read.extend_from_slice(&chunk);
        }
        assert!(read == data, "contents differ");
        assert_eq!(reader.chunk().await.unwrap(), None);
    }

    #[tokio::test]
    async fn dropping_a_reader_stops_the_agents_read() {
        use std::io::Write;

        let agent = TestAgent::start();
        let client = agent.client().await;
        let fifo = agent.path(b"fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Writes until no reader is left: its end is the agent closing the FIFO.
        let writer_path = fifo.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .unwrap();
            let err = loop {
                if let Err(e) = w.write_all(&[b'x'; 4096]) {
                    break e;
                }
            };
            let _ = done_tx.send(err.kind());
        });
        let special = ReadOptions {
            special: true,
            ..ReadOptions::default()
        };
        assert_eq!(
            agent_code(client.read_file(fifo.to_str().unwrap()).await),
            ErrorCode::NotAFile
        );
        let mut reader = client.open_read(fifo.as_path(), &special).await.unwrap();
        assert!(!reader.chunk().await.unwrap().unwrap().is_empty());
        drop(reader);
        let ended =
            tokio::task::spawn_blocking(move || done_rx.recv_timeout(Duration::from_secs(5)))
                .await
                .unwrap();
        assert_eq!(
            ended,
            Ok(std::io::ErrorKind::BrokenPipe),
            "the agent kept reading"
        );
        // Whole special reads work too, where they end.
        let empty = client.read_file_with("/dev/null", &special).await.unwrap();
        assert!(empty.is_empty());
    }

    /// Yields some bytes, then fails.
    struct Failing(bool);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.0 {
                return Poll::Ready(Err(std::io::Error::other("source broke")));
            }
            self.0 = true;
            buf.put_slice(b"partial");
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn uploads_stream_and_stop_early() {
        let agent = TestAgent::start();
        let client = agent.client().await;
        let path = agent.path(b"up");
        let size = 5u64 << 20;
        let source = tokio::io::repeat(7).take(size);
        let written = client
            .write_stream(path.as_path(), source, &WriteOptions::default())
            .await
            .unwrap();
        assert_eq!(written, size);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);

        // A refused upload ends at once, not when its (here endless) source does.
        let endless = tokio::io::repeat(0);
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            client.write_stream(agent.dir.path(), endless, &WriteOptions::default()),
        )
        .await
        .expect("the upload went on after the agent refused it");
        assert_eq!(agent_code(refused), ErrorCode::IsADirectory);

        // A broken source abandons the upload: the file keeps its contents.
        let broken = client
            .write_stream(path.as_path(), Failing(false), &WriteOptions::default())
            .await;
        assert!(matches!(broken, Err(ClientError::Upload(_))), "{broken:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let leftovers = std::fs::read_dir(agent.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .as_bytes()
                    .starts_with(b".up")
            })
            .count();
        assert_eq!(leftovers, 0, "the abandoned upload left a temporary file");
        // The old entry points still work.
        client
            .write_file(path.to_str().unwrap(), b"small", None)
            .await
            .unwrap();
        assert_eq!(
            client.read_file(path.to_str().unwrap()).await.unwrap(),
            b"small"
        );
    }

    /// Counts what is read from an endless source.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = buf.remaining();
            buf.put_slice(&vec![7u8; n]);
            self.0.fetch_add(n, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    /// A socket for a stand-in agent, in a directory that lives as long as the first.
    fn fake_agent() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::net::UnixListener,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        (dir, socket, listener)
    }

    /// The stand-in agent's answer to a hello (always on channel 0).
    async fn answer_hello(s: &mut tokio::net::UnixStream, version: u16, agent: &str) {
        let reply = Response::Hello {
            version,
            agent: agent.into(),
        };
        write_frame(s, &Frame::control(0, &reply)).await.unwrap();
    }

    /// What a client sends an agent of protocol `version` (which refuses any other) on
    /// channels other than the handshake's, while it makes a call, starts a process and
    /// drops it unfinished, then makes another call.
    async fn requests_seen_by_an_agent_of(version: u16) -> Vec<(u32, Request)> {
        let (_dir, socket, listener) = fake_agent();
        let agent = tokio::spawn(async move {
            let mut s = loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let hello = read_frame(&mut s).await.unwrap().unwrap();
                match hello.parse::<Request>().unwrap() {
                    Request::Hello { version: v } if v == version => break s,
                    _ => {
                        let refusal = Response::Error {
                            code: ErrorCode::VersionMismatch,
                            message: format!("agent speaks protocol version {version}"),
                        };
                        write_frame(&mut s, &Frame::control(0, &refusal))
                            .await
                            .unwrap();
                    }
                }
            };
            answer_hello(&mut s, version, "fake").await;
            let mut seen = Vec::new();
            let mut lists = 0;
            while lists < 2 {
                let f = read_frame(&mut s).await.unwrap().unwrap();
                let req = f.parse::<Request>().unwrap();
                let answer = match req {
                    Request::ListProcesses => {
                        lists += 1;
                        Some(Response::Processes { list: vec![] })
                    }
                    Request::Exec(_) => Some(Response::Started { pid: 7, serial: 1 }),
                    _ => None,
                };
                if let Some(answer) = answer {
                    write_frame(&mut s, &Frame::control(f.channel, &answer))
                        .await
                        .unwrap();
                }
                seen.push((f.channel, req));
            }
            seen
        });
        let client = AgentClient::connect(&socket).await.unwrap();
        // Newest first, down to the one the agent speaks.
        assert_eq!(client.version(), version);
        assert_eq!(client.ends_dropped_channels(), version >= CLOSE_SINCE);
        client.list_processes().await.unwrap();
        drop(client.exec(ExecRequest::default()).await.unwrap());
        client.list_processes().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), agent)
            .await
            .expect("the fake agent did not see both calls")
            .unwrap()
    }

    /// A stand-in agent that says hello, then reads nothing more.
    fn agent_that_only_says_hello(
        listener: tokio::net::UnixListener,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_frame(&mut s).await.unwrap().unwrap();
            answer_hello(&mut s, PROTOCOL_VERSION, "stalled").await;
            std::future::pending::<()>().await;
            drop(s);
        })
    }

    #[tokio::test]
    async fn the_last_client_dropped_closes_the_socket_without_waiting_for_the_agent() {
        let (_dir, socket, listener) = fake_agent();
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_frame(&mut s).await.unwrap().unwrap();
            answer_hello(&mut s, PROTOCOL_VERSION, "lingering").await;
            // It never closes its end and sends nothing until the client is gone; then
            // its first frame must find the client's end closed, both ways.
            dropped.await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let f = Frame::control(999, &Response::Ok);
            write_frame(&mut s, &f).await.is_err()
        });
        let client = AgentClient::connect(&socket).await.unwrap();
        let second = client.clone();
        drop(client);
        // Another clone still holds it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_closed(),
            "the connection closed under a live clone"
        );
        drop(second);
        dropped_tx.send(()).unwrap();
        assert!(
            agent.await.unwrap(),
            "the client's end stayed open after the last clone was dropped"
        );
    }

    #[tokio::test]
    async fn channel_ids_wrapping_around_skip_the_open_ones() {
        let (_dir, socket, listener) = fake_agent();
        let agent = agent_that_only_says_hello(listener);
        let client = AgentClient::connect(&socket).await.unwrap();
        let kept = client.open();
        assert_eq!(kept.id, 1);
        client.inner.next.store(u32::MAX, Ordering::Relaxed);
        let last = client.open();
        assert_eq!(last.id, u32::MAX);
        // 1 is still open: the ids go on at 3, never at the handshake's 0.
        assert_eq!(client.open().id, 3);
        drop(kept);
        agent.abort();
    }

    #[tokio::test]
    async fn a_channel_dropped_unfinished_is_closed_and_an_answered_one_is_not() {
        let seen = requests_seen_by_an_agent_of(PROTOCOL_VERSION).await;
        let kinds: Vec<_> = seen
            .iter()
            .map(|(ch, r)| {
                (
                    *ch,
                    format!("{r:?}")
                        .split([' ', '('])
                        .next()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (1, "ListProcesses".to_owned()),
                (3, "Exec".to_owned()),
                (3, "Close".to_owned()),
                (5, "ListProcesses".to_owned()),
            ]
        );
        // An agent of the version before is told nothing it does not know: its
        // connection is the caller's alone, and closing it ends the process.
        let old = requests_seen_by_an_agent_of(CLOSE_SINCE - 1).await;
        assert!(
            !old.iter().any(|(_, r)| matches!(r, Request::Close)),
            "{old:?}"
        );
        assert_eq!(old.len(), 3);
    }

    #[tokio::test]
    async fn an_agent_that_stops_reading_holds_back_the_sender() {
        let (_dir, socket, listener) = fake_agent();
        let agent = agent_that_only_says_hello(listener);
        let client = AgentClient::connect(&socket).await.unwrap();
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let source = Counted(read.clone());
        let opts = WriteOptions::default();
        let upload = client.write_stream("/x", source, &opts);
        let _ = tokio::time::timeout(Duration::from_secs(1), upload).await;
        // The window, what the socket's buffers take, and a chunk being read.
        let taken = read.load(Ordering::SeqCst);
        assert!(
            taken < DATA_IN_FLIGHT + (2 << 20),
            "{} KiB read from the source while the agent read nothing",
            taken >> 10
        );
        agent.abort();
    }

    #[tokio::test]
    async fn stdin_nobody_reads_holds_up_only_its_own_channel() {
        let agent = TestAgent::start();
        let client = agent.client().await;
        // A reads nothing for a while, then all of its stdin.
        let input: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let req = ExecRequest {
            command: Some(warren_types::proto::Command::Shell(
                "sleep 4; exec cat".into(),
            )),
            stdin: true,
            ..Default::default()
        };
        let a = client.exec(req).await.unwrap();
        let stdin = a.sender();
        let sent = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn({
            let (input, sent) = (input.clone(), sent.clone());
            async move {
                for chunk in input.chunks(CHUNK) {
                    stdin.send_data(FrameKind::Stdin, chunk.to_vec()).await?;
                    sent.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                stdin.send(&Request::CloseStdin).await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Meanwhile, on the same connection, another process's output and a file read
        // go through at once.
        let started = std::time::Instant::now();
        let b = ExecRequest {
            command: Some(warren_types::proto::Command::Shell(
                "head -c 4194304 /dev/zero".into(),
            )),
            ..Default::default()
        };
        let b = client.exec(b).await.unwrap().output().await.unwrap();
        assert_eq!(b.stdout.len(), 4 << 20);
        let path = agent.path(b"meanwhile");
        std::fs::write(&path, vec![5u8; 1 << 20]).unwrap();
        let read = client.read_file(path.to_str().unwrap()).await.unwrap();
        assert_eq!(read.len(), 1 << 20);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2500), "took {took:?}");
        // A's writer waits for credit, having sent its window and what the pipe buffers.
        let taken = sent.load(Ordering::SeqCst);
        assert!(
            taken < 2 << 20,
            "{taken} bytes of stdin went out while the process read none"
        );
        assert!(!writer.is_finished());

        // Then A reads, and gets all of it, in order.
        let out = a.output().await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(out.stdout.len(), input.len());
        assert!(out.stdout == input, "the process read different bytes");
        assert_eq!(out.status.and_then(|s| s.code), Some(0));
    }

    #[tokio::test]
    async fn an_agent_of_the_previous_version_is_sent_stdin_without_credit() {
        let (_dir, socket, listener) = fake_agent();
        // An agent as version 1 was: it refuses any other version and closes, and
        // grants no input credit.
        let agent = tokio::spawn(async move {
            let mut s = loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let hello = read_frame(&mut s).await.unwrap().unwrap();
                match hello.parse::<Request>().unwrap() {
                    Request::Hello { version: 1 } => break s,
                    Request::Hello { .. } => {
                        let refusal = Response::Error {
                            code: ErrorCode::VersionMismatch,
                            message: "agent speaks protocol version 1".into(),
                        };
                        write_frame(&mut s, &Frame::control(0, &refusal))
                            .await
                            .unwrap();
                    }
                    other => panic!("{other:?}"),
                }
            };
            answer_hello(&mut s, 1, "old").await;
            let exec = read_frame(&mut s).await.unwrap().unwrap();
            let started = Response::Started { pid: 7, serial: 1 };
            write_frame(&mut s, &Frame::control(exec.channel, &started))
                .await
                .unwrap();
            let mut stdin = 0;
            while stdin < 1 << 20 {
                let f = read_frame(&mut s).await.unwrap().unwrap();
                assert_eq!(f.kind, FrameKind::Stdin);
                stdin += f.payload.len();
            }
            stdin
        });
        let client = AgentClient::connect(&socket).await.unwrap();
        let p = client.exec(ExecRequest::default()).await.unwrap();
        let write = p.write_stdin(vec![1; 1 << 20]);
        tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the client waited for credit an old agent never sends")
            .unwrap();
        assert_eq!(agent.await.unwrap(), 1 << 20);
    }

    #[tokio::test]
    async fn a_known_agent_gets_the_first_request_behind_the_hello_and_a_refusal_fails_it() {
        let (_dir, socket, listener) = fake_agent();
        // An agent that reads two frames before it answers anything: the hello and the
        // request must both have come without waiting. The second connection it refuses.
        let agent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let hello = read_frame(&mut s).await.unwrap().unwrap();
            assert!(matches!(
                hello.parse::<Request>().unwrap(),
                Request::Hello {
                    version: PROTOCOL_VERSION
                }
            ));
            let list = read_frame(&mut s).await.unwrap().unwrap();
            assert!(matches!(
                list.parse::<Request>().unwrap(),
                Request::ListProcesses
            ));
            answer_hello(&mut s, PROTOCOL_VERSION, "known").await;
            write_frame(
                &mut s,
                &Frame::control(list.channel, &Response::Processes { list: vec![] }),
            )
            .await
            .unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let _hello = read_frame(&mut s).await.unwrap().unwrap();
            let refusal = Response::Error {
                code: ErrorCode::VersionMismatch,
                message: "another version".into(),
            };
            write_frame(&mut s, &Frame::control(0, &refusal))
                .await
                .unwrap();
        });
        let client = AgentClient::connect_known(&socket, PROTOCOL_VERSION)
            .await
            .unwrap();
        assert_eq!(client.version(), PROTOCOL_VERSION);
        let listed = tokio::time::timeout(Duration::from_secs(10), client.list_processes())
            .await
            .expect("the request waited for the hello's answer");
        assert!(listed.unwrap().is_empty());

        let refused = AgentClient::connect_known(&socket, PROTOCOL_VERSION)
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), refused.list_processes()).await;
        assert!(
            matches!(r, Ok(Err(ClientError::Closed))),
            "a refused hello fails the call: {r:?}"
        );
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn a_channel_whose_consumer_stopped_ends_instead_of_growing() {
        let (_dir, socket, listener) = fake_agent();
        // An agent that answers hello, then floods channel 1 with 4 KiB control messages
        // (as watch events would come) far past MAX_QUEUED, then says something on 3.
        let agent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_frame(&mut s).await.unwrap().unwrap();
            answer_hello(&mut s, PROTOCOL_VERSION, "flooding").await;
            let event = Response::Error {
                code: ErrorCode::Io,
                message: "e".repeat(4096),
            };
            for _ in 0..(3 * MAX_QUEUED / 4096) {
                write_frame(&mut s, &Frame::control(1, &event))
                    .await
                    .unwrap();
            }
            write_frame(&mut s, &Frame::control(3, &Response::End))
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });
        let client = AgentClient::connect(&socket).await.unwrap();
        let mut stalled = client.open();
        let mut other = client.open();
        assert_eq!((stalled.id, other.id), (1, 3));
        // The other channel still gets its message: the flood did not stop the reader.
        let got = tokio::time::timeout(Duration::from_secs(20), other.recv()).await;
        assert!(
            matches!(got, Ok(Some(Incoming::Control(Response::End)))),
            "{got:?}"
        );
        // What the stalled one holds stayed under the bound, and it ends after that.
        assert!(stalled.queued.load(Ordering::SeqCst) <= MAX_QUEUED);
        let mut n = 0;
        while let Some(Incoming::Control(_)) = stalled.recv().await {
            n += 1;
        }
        assert!(n > 0 && n * 4096 <= MAX_QUEUED, "{n} messages were kept");
        agent.abort();
    }

    #[tokio::test]
    async fn raw_paths_and_users_reach_the_agent() {
        let agent = TestAgent::start();
        let client = agent.client().await;
        let dir = agent.path(b"d\xff");
        client.make_dir_as(dir.as_path(), None, None).await.unwrap();
        let file = dir.join(OsStr::from_bytes(b"f\xfe"));
        client
            .write_file_with(file.as_path(), b"raw", &WriteOptions::default())
            .await
            .unwrap();
        let listed = client.list_dir_as(dir.as_path(), 1, None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].raw_path().unwrap().as_path(), file.as_path());
        let info = client.stat_as(file.as_path(), None).await.unwrap();
        assert_eq!(info.raw_name().unwrap().as_bytes(), b"f\xfe");
        let moved = dir.join(OsStr::from_bytes(b"g\x80"));
        client
            .rename_as(file.as_path(), moved.as_path(), None)
            .await
            .unwrap();
        assert_eq!(
            client
                .read_file_with(moved.as_path(), &ReadOptions::default())
                .await
                .unwrap(),
            b"raw"
        );
        let watch = client.watch_as(dir.as_path(), true, None).await.unwrap();
        drop(watch);
        client.remove_as(dir.as_path(), true, None).await.unwrap();
        assert!(!dir.exists());

        if !warren_testkit::needs_root(
            "raw_paths_and_users_reach_the_agent (the user half)",
            "switching users",
        ) {
            return;
        }
        // Like /tmp: anyone may create files, only their owner remove them.
        std::fs::set_permissions(
            agent.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        let user = User::Id {
            uid: 1000,
            gid: None,
        };
        let as_user = WriteOptions {
            user: Some(user.clone()),
            ..WriteOptions::default()
        };
        let theirs = agent.path(b"theirs");
        client
            .write_file_with(theirs.as_path(), b"u", &as_user)
            .await
            .unwrap();
        let meta = std::fs::metadata(&theirs).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        let secret = agent.path(b"secret");
        std::fs::write(&secret, "root").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let read_as_user = ReadOptions {
            user: Some(user.clone()),
            special: false,
        };
        assert_eq!(
            agent_code(client.read_file_with(secret.as_path(), &read_as_user).await),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            agent_code(client.remove_as(secret.as_path(), false, Some(&user)).await),
            ErrorCode::PermissionDenied
        );
    }

    #[tokio::test]
    async fn attach_resumes_at_an_offset_of_the_same_process() {
        let agent = TestAgent::start();
        let client = agent.client().await;
        let req = ExecRequest {
            command: Some(warren_types::proto::Command::Shell(
                "printf 0123456789; exec sleep 100".into(),
            )),
            background: true,
            ..Default::default()
        };
        let mut started = client.exec(req).await.unwrap();
        let serial = started.serial.expect("the agent sends serials");
        let mut seen = Vec::new();
        while seen.len() < 10 {
            match started.next().await.unwrap() {
                ProcessEvent::Stdout(d) => seen.extend_from_slice(&d),
                other => panic!("{other:?}"),
            }
        }
        drop(started);
        let listed = client.list_processes().await.unwrap();
        let info = listed.iter().find(|p| p.serial == serial).unwrap();
        assert_eq!(info.output_end, 10);

        let resume = AttachOptions {
            from: Some(6),
            serial: Some(serial),
            ..AttachOptions::default()
        };
        let mut resumed = client.attach_with(info.pid, resume).await.unwrap();
        match resumed.next().await.unwrap() {
            ProcessEvent::Stdout(d) => assert_eq!(d, b"6789"),
            other => panic!("{other:?}"),
        }
        let stranger = AttachOptions {
            serial: Some(serial + 1),
            ..AttachOptions::default()
        };
        let mut wrong = client.attach_with(info.pid, stranger).await.unwrap();
        assert_eq!(agent_code(wrong.next().await), ErrorCode::ProcessNotFound);
        resumed.signal(9).await.unwrap();
        let out = resumed.output().await.unwrap();
        assert_eq!(out.status.and_then(|s| s.signal), Some(9));
    }
}
