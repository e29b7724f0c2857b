//! The host side of the agent protocol (see `warren_types::proto`).
//!
//! One [`AgentClient`] is one connection: a reader task hands incoming frames to the
//! channel they belong to, a writer task serialises outgoing frames. Data credit is
//! granted back to the agent only when the consumer takes the data out of its
//! [`Channel`], so a slow consumer slows the process it reads from, not the host's memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::mpsc;
use warren_types::proto::{
    read_frame, write_frame, ErrorCode, ExecRequest, ExitStatus, FileInfo, Frame, FrameKind,
    ProcessInfo, Request, Response, WinSize, CHUNK, PROTOCOL_VERSION,
};

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
}

type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug)]
struct Inner {
    out: mpsc::Sender<Frame>,
    /// Credit grants jump the data queue and never wait: a `recv` abandoned halfway
    /// (in a `select!`) must not lose the frame it took.
    credit: mpsc::UnboundedSender<Frame>,
    closed: std::sync::atomic::AtomicBool,
    chans: Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>,
    next: AtomicU32,
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
    inner: Arc<Inner>,
}

impl AgentClient {
    /// Connects and checks that the agent speaks our protocol version.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(ClientError::Connect)?;
        let (mut r, mut w) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<Frame>(256);
        let (credit, mut credit_rx) = mpsc::unbounded_channel::<Frame>();
        let inner = Arc::new(Inner {
            out,
            credit,
            closed: std::sync::atomic::AtomicBool::new(false),
            chans: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
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
            }
        });
        let client = AgentClient { inner };
        let mut hello = client.open_at(0);
        let reader_inner = Arc::downgrade(&client.inner);
        tokio::spawn(async move {
            while let Ok(Some(f)) = read_frame(&mut r).await {
                let Some(inner) = reader_inner.upgrade() else {
                    break;
                };
                let tx = inner.chans.lock().unwrap().get(&f.channel).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(f);
                }
            }
            // Dropping every sender ends every channel's stream.
            if let Some(inner) = reader_inner.upgrade() {
                inner.closed.store(true, Ordering::Relaxed);
                inner.chans.lock().unwrap().clear();
            }
        });
        hello
            .send(&Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await?;
        match hello.recv().await {
            Some(Incoming::Control(Response::Hello { .. })) => Ok(client),
            Some(Incoming::Control(Response::Error { code, message })) => {
                Err(ClientError::Agent { code, message })
            }
            Some(other) => Err(ClientError::Protocol(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// Whether the connection has ended (the agent went away).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed) || self.inner.out.is_closed()
    }

    fn open_at(&self, id: u32) -> Channel {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.chans.lock().unwrap().insert(id, tx);
        Channel {
            id,
            rx,
            inner: self.inner.clone(),
        }
    }

    /// A new channel for one operation.
    pub fn open(&self) -> Channel {
        let id = self.inner.next.fetch_add(2, Ordering::Relaxed);
        self.open_at(id)
    }

    /// Sends one request on a new channel and returns its first reply.
    pub async fn call(&self, req: &Request) -> Result<Response> {
        let mut ch = self.open();
        ch.send(req).await?;
        ch.reply().await
    }

    async fn call_ok(&self, req: &Request) -> Result<()> {
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Starts a process.
    pub async fn exec(&self, req: ExecRequest) -> Result<Process> {
        let mut ch = self.open();
        ch.send(&Request::Exec(req)).await?;
        match ch.reply().await? {
            Response::Started { pid, .. } => Ok(Process {
                pid,
                ch,
                client: self.clone(),
            }),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Follows a process started earlier (by any client).
    pub async fn attach(&self, pid: u32, replay: bool) -> Result<Process> {
        let ch = self.open();
        ch.send(&Request::Attach {
            pid,
            replay,
            from: None,
            serial: None,
        })
        .await?;
        // Output (or an error for an unknown pid) follows on the channel.
        Ok(Process {
            pid,
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
        self.call_ok(&Request::Signal { pid, signal }).await
    }

    pub async fn resize(&self, pid: u32, size: WinSize) -> Result<()> {
        self.call_ok(&Request::Resize { pid, size }).await
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo> {
        match self
            .call(&Request::Stat {
                path: path.into(),
                user: None,
            })
            .await?
        {
            Response::FileInfo { info } => Ok(info),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<FileInfo>> {
        let req = Request::ListDir {
            path: path.into(),
            depth,
            user: None,
        };
        match self.call(&req).await? {
            Response::DirEntries { entries } => Ok(entries),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn make_dir(&self, path: &str) -> Result<()> {
        self.call_ok(&Request::MakeDir {
            path: path.into(),
            mode: None,
            user: None,
        })
        .await
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.call_ok(&Request::Remove {
            path: path.into(),
            recursive,
            user: None,
        })
        .await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.call_ok(&Request::Rename {
            from: from.into(),
            to: to.into(),
            user: None,
        })
        .await
    }

    /// Watches a path (and, when `recursive`, the directories below it). Once the agent
    /// answers `Ok`, the returned channel carries `Response::WatchEvent`s until the
    /// watch fails or the channel is sent `Request::Cancel` or dropped.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<Channel> {
        let mut ch = self.open();
        ch.send(&Request::Watch {
            path: path.into(),
            recursive,
            user: None,
        })
        .await?;
        match ch.reply().await? {
            Response::Ok => Ok(ch),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Reads a whole regular file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut ch = self.open();
        ch.send(&Request::ReadFile {
            path: path.into(),
            special: false,
            user: None,
        })
        .await?;
        ch.reply().await?;
        let mut out = Vec::new();
        loop {
            match ch.recv().await {
                Some(Incoming::Data(d)) => out.extend_from_slice(&d),
                Some(Incoming::Control(Response::End)) => return Ok(out),
                Some(Incoming::Control(Response::Error { code, message })) => {
                    return Err(ClientError::Agent { code, message })
                }
                Some(other) => return Err(ClientError::Protocol(format!("{other:?}"))),
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Writes a whole file (replacing it atomically).
    pub async fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> Result<u64> {
        let mut ch = self.open();
        ch.send(&Request::WriteFile {
            path: path.into(),
            mode,
            append: false,
            user: None,
        })
        .await?;
        for chunk in data.chunks(CHUNK) {
            ch.send_data(FrameKind::Data, chunk.to_vec()).await?;
        }
        ch.send(&Request::End).await?;
        match ch.reply().await? {
            Response::Written { bytes } => Ok(bytes),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }
}

impl Channel {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub async fn send(&self, req: &Request) -> Result<()> {
        self.inner
            .out
            .send(Frame::control(self.id, req))
            .await
            .map_err(|_| ClientError::Closed)
    }

    pub async fn send_data(&self, kind: FrameKind, data: Vec<u8>) -> Result<()> {
        self.inner
            .out
            .send(Frame::new(self.id, kind, data))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// The next message; data is credited back to the agent as it is taken.
    pub async fn recv(&mut self) -> Option<Incoming> {
        loop {
            let f = self.rx.recv().await?;
            let kind = f.kind;
            if matches!(
                kind,
                FrameKind::Stdout | FrameKind::Stderr | FrameKind::Data
            ) {
                let n = f.payload.len() as u32;
                if n > 0 {
                    let _ = self.inner.credit.send(Frame::credit(self.id, n));
                }
            }
            return Some(match kind {
                FrameKind::Control => match f.parse::<Response>() {
                    Ok(r) => Incoming::Control(r),
                    Err(e) => Incoming::Control(Response::Error {
                        code: ErrorCode::BadRequest,
                        message: format!("undecodable reply: {e}"),
                    }),
                },
                FrameKind::Stdout => Incoming::Stdout(f.payload),
                FrameKind::Stderr => Incoming::Stderr(f.payload),
                FrameKind::Data => Incoming::Data(f.payload),
                FrameKind::Stdin | FrameKind::Credit => continue,
            });
        }
    }

    /// The next control reply, with agent errors turned into `Err`.
    pub async fn reply(&mut self) -> Result<Response> {
        loop {
            match self.recv().await {
                Some(Incoming::Control(Response::Error { code, message })) => {
                    return Err(ClientError::Agent { code, message })
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
        self.inner.chans.lock().unwrap().remove(&self.id);
    }
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

    /// Writes to the process's stdin, in frames no larger than the agent takes.
    pub async fn write_stdin(&self, data: Vec<u8>) -> Result<()> {
        if data.len() <= CHUNK {
            return self.ch.send_data(FrameKind::Stdin, data).await;
        }
        for chunk in data.chunks(CHUNK) {
            self.ch.send_data(FrameKind::Stdin, chunk.to_vec()).await?;
        }
        Ok(())
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
