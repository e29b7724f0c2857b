//! A minimal protocol client and an agent running in a thread, for the tests.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::watch;
use warren_agent::AgentConfig;
use warren_types::proto::{
    frame_credit, read_frame, write_frame, ExecRequest, ExitStatus, Frame, FrameKind, Request,
    Response, INPUT_WINDOW, PROTOCOL_VERSION,
};

pub const WAIT: Duration = Duration::from_secs(20);

/// An agent serving on a socket in a temporary directory; stopped (and its processes
/// killed) on drop.
pub struct TestAgent {
    pub socket: PathBuf,
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(AgentConfig::default())
    }

    pub fn start_with(config: AgentConfig) -> Self {
        Self::start_in(config, false)
    }

    /// An agent whose socket closes for a checkpoint (SIGUSR1) and opens again
    /// (SIGUSR2): [`AgentConfig::rebind`].
    pub fn start_quiescable() -> Self {
        Self::start_in(AgentConfig::default(), true)
    }

    fn start_in(mut config: AgentConfig, rebind: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        if rebind {
            config.rebind = Some(socket.clone());
        }
        let (stop, stopped) = watch::channel(false);
        config.shutdown = Some(stopped);
        let thread = std::thread::spawn(move || warren_agent::serve(listener, config));
        Self {
            socket,
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// A scratch directory that lives as long as the agent.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub async fn connect(&self) -> Client {
        let mut c = self.connect_raw().await;
        c.send(
            0,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .await;
        match c.control(0).await {
            Response::Hello { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("handshake answered {other:?}"),
        }
        c
    }

    pub async fn connect_raw(&self) -> Client {
        let (rd, wr) = UnixStream::connect(&self.socket)
            .await
            .unwrap()
            .into_split();
        Client {
            rd: BufReader::new(rd),
            wr,
            pending: VecDeque::new(),
            next: 1,
            input_spent: HashMap::new(),
        }
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

pub struct Client {
    rd: BufReader<OwnedReadHalf>,
    pub wr: OwnedWriteHalf,
    pending: VecDeque<Frame>,
    next: u32,
    /// Input credit spent per channel and not yet given back by the agent.
    input_spent: HashMap<u32, usize>,
}

/// What an exec produced.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl Outcome {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Client {
    /// A fresh odd channel number.
    pub fn channel(&mut self) -> u32 {
        let ch = self.next;
        self.next += 2;
        ch
    }

    /// Sends a frame; stdin and data count against the channel's input credit, whether
    /// or not there is enough (see [`Client::send_input`]).
    pub async fn send_frame(&mut self, f: &Frame) {
        if matches!(f.kind, FrameKind::Stdin | FrameKind::Data) {
            *self.input_spent.entry(f.channel).or_default() += frame_credit(f.payload.len());
        }
        write_frame(&mut self.wr, f).await.unwrap();
        self.wr.flush().await.unwrap();
    }

    pub async fn send(&mut self, ch: u32, r: &Request) {
        self.send_frame(&Frame::control(ch, r)).await;
    }

    /// Sends `r` on a new channel and returns the channel.
    pub async fn open(&mut self, r: &Request) -> u32 {
        let ch = self.channel();
        self.send(ch, r).await;
        ch
    }

    pub async fn grant(&mut self, ch: u32, bytes: u32) {
        self.send_frame(&Frame::credit(ch, bytes)).await;
    }

    /// The next frame from the agent, `None` when it closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, read_frame(&mut self.rd))
            .await
            .expect("agent did not answer in time")
            .unwrap_or(None)
    }

    /// The next frame on `ch` other than input credit (which is counted), keeping
    /// frames of other channels for later.
    pub async fn frame(&mut self, ch: u32) -> Frame {
        if let Some(i) = self.pending.iter().position(|f| f.channel == ch) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let f = self.next_frame().await.expect("connection closed");
            if f.kind == FrameKind::Credit {
                self.credited(&f);
            } else if f.channel == ch {
                return f;
            } else {
                self.pending.push_back(f);
            }
        }
    }

    fn credited(&mut self, f: &Frame) {
        let n = f.credit_bytes().expect("a credit frame carries 4 bytes") as usize;
        let spent = self.input_spent.entry(f.channel).or_default();
        assert!(
            n <= *spent,
            "the agent gave back more credit than was spent"
        );
        *spent -= n;
    }

    /// Frames that came on `ch` and are waiting to be read.
    pub fn pending_on(&self, ch: u32) -> usize {
        self.pending.iter().filter(|f| f.channel == ch).count()
    }

    /// Input credit left on `ch`.
    pub fn input_left(&self, ch: u32) -> usize {
        (INPUT_WINDOW as usize).saturating_sub(self.input_spent.get(&ch).copied().unwrap_or(0))
    }

    /// Reads what has arrived and is waiting, counting input credit; false if nothing
    /// came within `wait`.
    pub async fn poll_credit(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, read_frame(&mut self.rd)).await {
            Ok(Ok(Some(f))) if f.kind == FrameKind::Credit => self.credited(&f),
            Ok(Ok(Some(f))) => self.pending.push_back(f),
            Ok(_) => panic!("connection closed"),
            Err(_) => return false,
        }
        true
    }

    /// Sends stdin or upload data as a client that keeps to its credit does: waits for
    /// the agent to give enough back first.
    pub async fn send_input(&mut self, ch: u32, kind: FrameKind, data: Vec<u8>) {
        let cost = frame_credit(data.len());
        while self.input_left(ch) < cost {
            assert!(
                self.poll_credit(WAIT).await,
                "the agent gave no credit back in time"
            );
        }
        self.send_frame(&Frame::new(ch, kind, data)).await;
    }

    pub async fn control(&mut self, ch: u32) -> Response {
        let f = self.frame(ch).await;
        assert_eq!(
            f.kind,
            FrameKind::Control,
            "expected a control frame, got {f:?}"
        );
        f.parse().unwrap()
    }

    pub async fn request(&mut self, r: &Request) -> Response {
        let ch = self.open(r).await;
        self.control(ch).await
    }

    /// Starts `req`, returning its channel and pid.
    pub async fn exec(&mut self, req: ExecRequest) -> (u32, u32) {
        let ch = self.open(&Request::Exec(req)).await;
        match self.control(ch).await {
            Response::Started { pid, .. } => (ch, pid),
            other => panic!("exec answered {other:?}"),
        }
    }

    /// Reads a channel's output to its `Exited`, granting credit as it goes.
    pub async fn outcome(&mut self, ch: u32) -> Outcome {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let f = self.frame(ch).await;
            match f.kind {
                FrameKind::Stdout => stdout.extend_from_slice(&f.payload),
                FrameKind::Stderr => stderr.extend_from_slice(&f.payload),
                FrameKind::Control => match f.parse::<Response>().unwrap() {
                    Response::Exited { status } => {
                        return Outcome {
                            stdout,
                            stderr,
                            status,
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                },
                _ => panic!("unexpected frame {f:?}"),
            }
            if matches!(f.kind, FrameKind::Stdout | FrameKind::Stderr) {
                self.grant(ch, f.payload.len() as u32).await;
            }
        }
    }

    /// Reads stdout on `ch` until it contains `needle`.
    pub async fn read_until(&mut self, ch: u32, needle: &str) -> String {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let f = self.frame(ch).await;
            assert!(
                matches!(f.kind, FrameKind::Stdout | FrameKind::Stderr),
                "unexpected {f:?}"
            );
            seen.extend_from_slice(&f.payload);
            self.grant(ch, f.payload.len() as u32).await;
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    pub async fn run(&mut self, req: ExecRequest) -> Outcome {
        let (ch, _) = self.exec(req).await;
        self.outcome(ch).await
    }
}

pub fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        command: Some(warren_types::proto::Command::Shell(script.into())),
        ..Default::default()
    }
}

pub fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest {
        command: Some(warren_types::proto::Command::Argv(
            args.iter().map(|s| s.to_string()).collect(),
        )),
        ..Default::default()
    }
}
