//! `warren exec`: a command in a sandbox the daemon keeps.
//!
//! Output arrives as a stream of pieces (started, stdout, stderr, exit); stdout and
//! stderr go to ours separately, and the exit status is the command's. Stdin, signals and
//! window sizes go back through their own short calls, sent beside the stream so that a
//! command blocked writing output never holds up the input it waits for. An interactive
//! terminal (`-it` on a terminal) uses the daemon's WebSocket terminal instead, where
//! keystrokes and output share one connection; that route takes a command and a size
//! only, so with -e, -w, -u or --timeout a terminal goes through the stream and the
//! stdin and resize calls.

use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use warren_client::Notice;
use warren_types::api::{ApiError, ExecEvent};
use warren_types::proto::{Command, ExecRequest, User, WinSize, CHUNK};

use crate::client::{
    block_on, connect, enc, out, sandbox_path, write_stderr, Client, ClientArgs, ClientError,
    Error, Piece, Pieces,
};
use crate::parse::{parse_env, parse_user};
use warren_types::size::parse_duration;

/// Run a command in a sandbox.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and stream it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (with -i, an interactive one).
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (NAME=VALUE).
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory inside the sandbox [default: the user's home].
    #[arg(short, long)]
    workdir: Option<String>,
    /// User to run as: a name, UID or UID:GID.
    #[arg(short, long, value_parser = parse_user)]
    user: Option<User>,
    /// Kill the command (and everything it started) after this long, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Run in the background and print its pid; `warren logs` shows its output later,
    /// `warren attach` follows it (with -i, typing into it).
    #[arg(short, long)]
    detach: bool,
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let plain = args.env.is_empty()
        && args.workdir.is_none()
        && args.user.is_none()
        && args.timeout.is_none();
    if args.tty && args.interactive && terminal && !args.detach && plain {
        let code = block_on(pty(&client, &args.key, &args.command))?;
        return Ok(ExitCode::from(not_started(code)?));
    }
    let size = if args.tty {
        Some(terminal_size().unwrap_or(WinSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let req = ExecRequest {
        command: Some(Command::Argv(args.command.clone())),
        env: args.env.iter().cloned().collect(),
        cwd: args.workdir.clone(),
        user: args.user.clone(),
        tty: size,
        stdin: args.interactive,
        timeout_ms: args.timeout.map(|d| d.as_millis().max(1) as u64),
        background: args.detach,
        tag: None,
    };
    let code = block_on(async {
        let path = sandbox_path(&args.key, "/exec");
        let mut pieces = client
            .process_stream(Method::POST, &path, Some(&req))
            .await?;
        if args.detach {
            return detach(&mut pieces).await;
        }
        let opts = Follow {
            stdin: args.interactive,
            tty: args.tty,
        };
        follow(&client, &args.key, None, &mut pieces, opts).await
    })?;
    Ok(ExitCode::from(not_started(code)?))
}

/// The daemon refuses an exec whose command cannot start with an API error; it is the
/// command's failure, and exits as a shell would.
fn not_started(r: Result<u8, Error>) -> Result<u8, Error> {
    match r {
        Err(Error::Client(ClientError::Api { code, message }))
            if code == "command_not_found" || code == "permission_denied" =>
        {
            Ok(start_failed(&code, &message))
        }
        r => r,
    }
}

/// Prints the pid of a process started in the background.
async fn detach(pieces: &mut Pieces) -> Result<u8, Error> {
    match pieces.next().await? {
        Some(Piece::Event(ExecEvent::Started { pid })) => {
            out(format!("{pid}\n"))?;
            Ok(0)
        }
        Some(Piece::Event(ExecEvent::Error { code, message })) => Ok(start_failed(&code, &message)),
        Some(other) => Err(Error::protocol(format!(
            "expected the process to start, got {other:?}"
        ))),
        None => Err(Error::protocol(
            "the stream ended before the process started".into(),
        )),
    }
}

/// What to do beside printing a process's output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Follow {
    /// Send our stdin to the process.
    pub stdin: bool,
    /// The process has a terminal: ours goes raw (when -i) and its size follows ours.
    pub tty: bool,
}

/// Prints a process's output until it ends; returns the CLI's exit status for it.
pub(crate) async fn follow(
    client: &Client,
    key: &str,
    mut pid: Option<u32>,
    pieces: &mut Pieces,
    opts: Follow,
) -> Result<u8, Error> {
    let stdin = std::io::stdin();
    let raw = if opts.tty && opts.stdin && stdin.is_terminal() {
        warren_sys::pty::RawMode::enter(stdin.as_fd()).ok()
    } else {
        None
    };
    let mut signals = Signals::new(raw.is_none(), opts.tty);
    // On our terminal in raw mode, Ctrl-P Ctrl-Q leaves the process running.
    let (detach_tx, mut detached) = tokio::sync::oneshot::channel::<()>();
    let mut armed = raw.is_some();
    let mut detach_tx = armed.then_some(detach_tx);
    let mut pump = None;
    if let (true, Some(pid)) = (opts.stdin, pid) {
        pump = Some(spawn_stdin(client, key, pid, detach_tx.take()));
    }
    let code = loop {
        tokio::select! {
            piece = pieces.next() => match piece? {
                Some(Piece::Stdout(data)) => out(data)?,
                Some(Piece::Stderr(data)) => write_stderr(&data),
                Some(Piece::Event(ExecEvent::Started { pid: p })) => {
                    pid = Some(p);
                    if opts.stdin && pump.is_none() {
                        pump = Some(spawn_stdin(client, key, p, detach_tx.take()));
                    }
                }
                Some(Piece::Event(ExecEvent::Exit { exit_code, signal, timed_out, oom_killed })) => {
                    break End::Exited { code: exit_code, signal, timed_out, oom_killed };
                }
                // Never sent: output comes as pieces of its own.
                Some(Piece::Event(ExecEvent::Stdout { .. } | ExecEvent::Stderr { .. })) => {}
                Some(Piece::Event(ExecEvent::Error { code, message })) => {
                    if pid.is_none() {
                        break End::NotStarted { code, message };
                    }
                    return Err(Error::api(code, message));
                }
                None => {
                    return Err(Error::connection(
                        "the output stream ended before the command did".into(),
                    ))
                }
            },
            typed = &mut detached, if armed => {
                if typed.is_err() {
                    // Our stdin ended: there is nothing to detach with any more.
                    armed = false;
                    continue;
                }
                drop(raw);
                if let Some(p) = pump {
                    p.abort();
                }
                eprintln!("\nwarren: detached; the process goes on");
                return Ok(0);
            }
            caught = signals.next() => {
                // The process may have just ended: its exit arrives on the stream.
                match (caught, pid) {
                    (Caught::Forward(sig), Some(pid)) => {
                        let path = sandbox_path(key, &format!("/processes/{pid}/signal"));
                        let body = serde_json::json!({ "signal": sig });
                        let _ = client.call_raw(Method::POST, &path, Some(&body)).await;
                    }
                    (Caught::WindowChanged, Some(pid)) => {
                        if let Some(size) = terminal_size() {
                            let path = sandbox_path(key, &format!("/processes/{pid}/resize"));
                            let _ = client.call_raw(Method::POST, &path, Some(&size)).await;
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    drop(raw);
    if let Some(p) = pump {
        p.abort();
    }
    Ok(code.status())
}

/// How a followed process ended.
enum End {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        oom_killed: bool,
    },
    NotStarted {
        code: String,
        message: String,
    },
}

impl End {
    /// The CLI's exit status; said once the terminal is out of raw mode, since it may
    /// print why.
    fn status(self) -> u8 {
        match self {
            Self::Exited {
                code,
                signal,
                timed_out,
                oom_killed,
            } => exit_status(code, signal, timed_out, oom_killed),
            Self::NotStarted { code, message } => start_failed(&code, &message),
        }
    }
}

/// The shell's convention, with the reasons a status alone would hide said on stderr.
fn exit_status(code: Option<i32>, signal: Option<i32>, timed_out: bool, oom_killed: bool) -> u8 {
    if timed_out {
        eprintln!("warren: the command timed out and was killed");
        return 124;
    }
    if oom_killed {
        eprintln!("warren: the command was killed by the kernel: out of memory");
        return 137;
    }
    match (code, signal) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        (None, None) => 255,
    }
}

/// The process never ran: 127 when its command does not exist, 126 otherwise.
fn start_failed(code: &str, message: &str) -> u8 {
    eprintln!("warren: {message} ({code})");
    if code == "command_not_found" {
        127
    } else {
        126
    }
}

/// Sends our stdin to process `pid`, then closes its stdin at our end of file.
/// Sends our stdin to the process; with `detach`, watches it for [`DETACH`] and, when
/// typed, says so there and stops (sending no end of input).
fn spawn_stdin(
    client: &Client,
    key: &str,
    pid: u32,
    detach: Option<tokio::sync::oneshot::Sender<()>>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = read_stdin();
    let client = client.clone();
    let path = sandbox_path(key, &format!("/processes/{pid}/stdin"));
    tokio::spawn(async move {
        let mut keys = DetachKeys::default();
        let mut detach = detach;
        while let Some(chunk) = rx.recv().await {
            let chunk = match detach.take() {
                Some(tx) => {
                    let (send, leave) = keys.feed(&chunk);
                    if leave {
                        if !send.is_empty() {
                            let body = Some(("application/octet-stream", send.into()));
                            let _ = client.send(Method::POST, &path, body).await;
                        }
                        let _ = tx.send(());
                        return;
                    }
                    detach = Some(tx);
                    send
                }
                None => chunk,
            };
            if chunk.is_empty() {
                continue;
            }
            let body = Some(("application/octet-stream", chunk.into()));
            if client.send(Method::POST, &path, body).await.is_err() {
                return;
            }
        }
        let _ = client
            .send(Method::POST, &format!("{path}?eof=true"), None)
            .await;
    })
}

/// Our stdin, chunk by chunk; the channel closes at end of file. Read on a thread of its
/// own: a blocking read of a terminal cannot be cancelled, and must not hold the runtime.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

pub(crate) fn terminal_size() -> Option<WinSize> {
    let s = warren_sys::pty::size(std::io::stdout().as_fd()).ok()?;
    (s.rows > 0 && s.cols > 0).then_some(WinSize {
        rows: s.rows,
        cols: s.cols,
    })
}

/// The signals a client passes on to its process, and window changes.
struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
    hup: Option<Signal>,
    winch: Option<Signal>,
}

impl Signals {
    /// Catches INT, TERM and HUP when `forward` (otherwise they end the CLI as usual),
    /// and window changes when `winch`.
    fn new(forward: bool, winch: bool) -> Self {
        let get = |on: bool, k| if on { signal(k).ok() } else { None };
        Self {
            int: get(forward, SignalKind::interrupt()),
            term: get(forward, SignalKind::terminate()),
            hup: get(forward, SignalKind::hangup()),
            winch: get(winch, SignalKind::window_change()),
        }
    }

    /// The next signal caught.
    async fn next(&mut self) -> Caught {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => Caught::Forward(libc::SIGINT),
            _ = one(&mut self.term) => Caught::Forward(libc::SIGTERM),
            _ = one(&mut self.hup) => Caught::Forward(libc::SIGHUP),
            _ = one(&mut self.winch) => Caught::WindowChanged,
        }
    }
}

enum Caught {
    /// Pass this signal on to the process.
    Forward(i32),
    WindowChanged,
}

/// Ctrl-P then Ctrl-Q: leave a terminal and let its process run on (docker's keys).
const DETACH: (u8, u8) = (0x10, 0x11);

/// Watches keystrokes for [`DETACH`]: a Ctrl-P is held back until the next key shows
/// whether it begins the sequence; the sequence itself is never sent.
#[derive(Debug, Default)]
struct DetachKeys {
    held: bool,
}

impl DetachKeys {
    /// The keys to send, and whether the sequence was typed (what follows it is dropped).
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len() + 1);
        for &b in data {
            if self.held {
                self.held = false;
                if b == DETACH.1 {
                    return (out, true);
                }
                out.push(DETACH.0);
            }
            if b == DETACH.0 {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// An interactive terminal over the daemon's WebSocket: keystrokes out as binary frames,
/// the screen back as binary frames, window sizes as text frames.
async fn pty(client: &Client, key: &str, command: &[String]) -> Result<u8, Error> {
    let size = terminal_size().unwrap_or(WinSize { rows: 24, cols: 80 });
    let query = format!(
        "?rows={}&cols={}&cmd={}",
        size.rows,
        size.cols,
        enc(&shell_words(command))
    );
    terminal(client, &sandbox_path(key, &format!("/pty{query}"))).await
}

/// Drives the terminal WebSocket at `path` from this terminal (raw mode, resizes) until
/// the process ends; its exit status as a shell would report it.
pub(crate) async fn terminal(client: &Client, path: &str) -> Result<u8, Error> {
    let mut ws = client.websocket(path).await?;
    let stdin = std::io::stdin();
    let raw = warren_sys::pty::RawMode::enter(stdin.as_fd()).ok();
    let mut input = read_stdin();
    let mut input_open = true;
    let mut signals = Signals::new(false, true);
    // An error notice is followed by the end of the terminal: it is the reason.
    let mut failure = None;
    let mut detach = DetachKeys::default();
    let mut told_read_only = false;
    let code = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) => out(&data)?,
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(Notice::Exit(e)) => {
                        break End::Exited {
                            code: e.exit_code,
                            signal: e.signal,
                            timed_out: e.timed_out,
                            oom_killed: e.oom_killed,
                        };
                    }
                    // Keys of a read-only guest are dropped, and the guest told once.
                    Ok(Notice::Error(ApiError { code, .. })) if code == "read_only" => {
                        if !told_read_only {
                            told_read_only = true;
                            eprint!("\r\nwarren: read-only share: your keys are not sent; Ctrl-P Ctrl-Q leaves\r\n");
                        }
                    }
                    Ok(Notice::Error(ApiError { code, message })) => {
                        failure = Some(Error::api(code, message));
                    }
                    Ok(Notice::Share { write }) => {
                        let mode = if write {
                            "read-write: you type into it"
                        } else {
                            "read-only: you watch, your keys are not sent"
                        };
                        eprint!("warren: joined a shared terminal, {mode}; Ctrl-P Ctrl-Q leaves\r\n");
                    }
                    // The process to join again: this terminal does not leave it running.
                    Ok(Notice::Process { .. }) | Err(_) => {}
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Err(failure.unwrap_or_else(|| {
                        Error::connection("the terminal closed before the command ended".into())
                    }));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Error::connection(e.to_string())),
            },
            chunk = input.recv(), if input_open => match chunk {
                Some(data) => {
                    let (keys, leave) = detach.feed(&data);
                    if !keys.is_empty() {
                        ws.send(Message::Binary(keys.into()))
                            .await
                            .map_err(|e| Error::connection(e.to_string()))?;
                    }
                    if leave {
                        drop(raw);
                        let _ = ws.close(None).await;
                        eprintln!("\nwarren: detached; the process goes on");
                        return Ok(0);
                    }
                }
                // A terminal's end of input is a keystroke (^D), not a closed stdin.
                None => input_open = false,
            },
            _ = signals.next() => {
                if let Some(s) = terminal_size() {
                    let msg = serde_json::json!({ "resize": { "rows": s.rows, "cols": s.cols } });
                    let _ = ws.send(Message::Text(msg.to_string().into())).await;
                }
            }
        }
    };
    drop(raw);
    let _ = ws.close(None).await;
    Ok(code.status())
}

/// The words of a command as one `sh -c` string that runs exactly them.
fn shell_words(words: &[String]) -> String {
    let safe = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    };
    let quoted: Vec<String> = words
        .iter()
        .map(|w| {
            if safe(w) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect();
    format!("exec {}", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_what_the_shell_would_read() {
        let w = |v: &[&str]| shell_words(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(w(&["bash"]), "exec bash");
        assert_eq!(
            w(&["sh", "-c", "echo $HOME; ls"]),
            "exec sh -c 'echo $HOME; ls'"
        );
        assert_eq!(w(&["echo", "it's", ""]), "exec echo 'it'\\''s' ''");
    }

    #[test]
    fn ctrl_p_ctrl_q_detaches_and_is_never_sent() {
        let mut d = DetachKeys::default();
        assert_eq!(d.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(d.feed(&[b'a', 0x10, 0x11, b'b']), (b"a".to_vec(), true));
        // Split across reads.
        let mut d = DetachKeys::default();
        assert_eq!(d.feed(&[0x10]), (vec![], false));
        assert_eq!(d.feed(&[0x11]), (vec![], true));
        // A Ctrl-P that begins nothing goes on with the key after it.
        let mut d = DetachKeys::default();
        assert_eq!(d.feed(&[0x10, b'x']), (vec![0x10, b'x'], false));
        assert_eq!(d.feed(&[0x10, 0x10, 0x11]), (vec![0x10], true));
    }

    #[test]
    fn statuses_follow_the_shell() {
        assert_eq!(exit_status(Some(3), None, false, false), 3);
        assert_eq!(exit_status(None, Some(15), false, false), 143);
        assert_eq!(exit_status(None, Some(9), false, true), 137);
        assert_eq!(exit_status(None, Some(9), true, false), 124);
        assert_eq!(exit_status(Some(300), None, false, false), 255);
    }
}
