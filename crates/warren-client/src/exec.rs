//! Processes: a command run to its end, or streamed as it runs, with stdin, signals and
//! window sizes sent beside the stream.
//!
//! A streamed exec is one response of binary frames ([`warren_types::mux`]): a
//! `started` event, then stdout and stderr chunks, raw, as the process writes them, then
//! an `exit` event (or `error` when following it failed). Stdin, signals and resizes go as short calls of their own
//! on other connections, so a process blocked writing output never holds up the input it
//! waits for. Dropping an [`ExecStream`] before the exit kills the process, unless it was
//! started with `background`.

use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};
use warren_types::api::{ExecEvent, ExecResult, WireCode};
use warren_types::mux;
use warren_types::proto::{Command, ExecRequest, ProcessInfo};

use crate::transport::{sandbox_path, Frames, Lines};
use crate::{Client, Error};

/// An [`ExecRequest`] running `argv` (its first word looked up in `PATH`).
pub fn argv<I, S>(words: I) -> ExecRequest
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    ExecRequest {
        command: Some(Command::Argv(words.into_iter().map(Into::into).collect())),
        ..ExecRequest::default()
    }
}

/// An [`ExecRequest`] running `script` with `/bin/sh -c`.
pub fn shell(script: impl Into<String>) -> ExecRequest {
    ExecRequest {
        command: Some(Command::Shell(script.into())),
        ..ExecRequest::default()
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Killed because its `timeout_ms` passed.
    #[serde(default)]
    pub timed_out: bool,
    /// Killed by the sandbox's memory limit.
    #[serde(default)]
    pub oom_killed: bool,
}

impl Exit {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// What a streamed process sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes it wrote to stdout (or, on a terminal, to the terminal).
    Stdout(Bytes),
    /// Bytes it wrote to stderr.
    Stderr(Bytes),
    /// It ended; nothing follows.
    Exit(Exit),
}

#[derive(Debug, Serialize)]
struct SignalRequest {
    signal: i32,
}

#[derive(Debug, Serialize)]
struct ResizeRequest {
    rows: u16,
    cols: u16,
}

/// A process's stdin, signals and window size: for a task apart from the one reading its
/// output.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    client: Client,
    key: String,
    pid: u32,
}

impl ProcessHandle {
    /// The process's pid inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn path(&self, rest: &str) -> String {
        sandbox_path(&self.key, &format!("/processes/{}/{rest}", self.pid))
    }

    /// Writes `data` to its stdin (started with `stdin: true`); returns once the process
    /// has taken it.
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        let body = Some(("application/octet-stream", data.into()));
        self.client
            .send(Method::POST, &self.path("stdin"), body)
            .await
            .map(drop)
    }

    /// Closes its stdin: it reads the end of its input.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.client
            .send(Method::POST, &self.path("stdin?eof=true"), None)
            .await
            .map(drop)
    }

    /// Sends it `signal` (15 for SIGTERM, 9 for SIGKILL, ...).
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        let body = SignalRequest { signal };
        self.client
            .call_raw(Method::POST, &self.path("signal"), Some(&body))
            .await
            .map(drop)
    }

    /// Changes its terminal's size (a process started with `tty`).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        let body = ResizeRequest { rows, cols };
        self.client
            .call_raw(Method::POST, &self.path("resize"), Some(&body))
            .await
            .map(drop)
    }
}

/// A process's output as it comes: see the [module documentation](self).
#[derive(Debug)]
pub struct ExecStream {
    handle: ProcessHandle,
    pieces: Pieces,
    ended: bool,
}

/// One piece of a binary exec or attach stream, as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes the process wrote to stdout (or its terminal).
    Stdout(Bytes),
    /// Bytes it wrote to stderr.
    Stderr(Bytes),
    /// `started`, `exit` or `error`: never output, which always comes as the two above.
    Event(ExecEvent),
}

impl Frames {
    /// The next piece of an exec or attach stream; `None` at the end of the stream.
    pub async fn piece(&mut self) -> Result<Option<Piece>, Error> {
        Ok(match self.next().await? {
            Some((mux::Kind::Stdout, data)) => Some(Piece::Stdout(data)),
            Some((mux::Kind::Stderr, data)) => Some(Piece::Stderr(data)),
            Some((mux::Kind::Event, json)) => {
                match serde_json::from_slice(&json).map_err(|e| {
                    Error::Protocol(format!("{e}: {}", String::from_utf8_lossy(&json)))
                })? {
                    ExecEvent::Stdout { .. } | ExecEvent::Stderr { .. } => {
                        return Err(Error::Protocol("output inside an event frame".into()))
                    }
                    event => Some(Piece::Event(event)),
                }
            }
            None => None,
        })
    }
}

/// A process's output stream as it arrives: binary frames, or NDJSON lines from a daemon
/// older than them (see [`Client::process_stream`]).
#[derive(Debug)]
pub struct Pieces(Source);

#[derive(Debug)]
enum Source {
    Frames(Frames),
    Lines(Lines),
}

impl Pieces {
    /// The next piece; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Piece>, Error> {
        let lines = match &mut self.0 {
            Source::Frames(f) => return f.piece().await,
            Source::Lines(l) => l,
        };
        let decode = |data: String| {
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map(Bytes::from)
                .map_err(|e| Error::Protocol(format!("output is not base64: {e}")))
        };
        Ok(match lines.next::<ExecEvent>().await? {
            Some(ExecEvent::Stdout { data }) => Some(Piece::Stdout(decode(data)?)),
            Some(ExecEvent::Stderr { data }) => Some(Piece::Stderr(decode(data)?)),
            Some(event) => Some(Piece::Event(event)),
            None => None,
        })
    }
}

impl ExecStream {
    /// The process's pid inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.handle.pid
    }

    /// Its stdin, signals and size, to use from another task while this one reads.
    pub fn handle(&self) -> ProcessHandle {
        self.handle.clone()
    }

    /// The next piece of output, or its exit; `None` after the exit. An `error` line
    /// (following the process failed, the daemon shutting down) is an [`Error::Api`].
    pub async fn next(&mut self) -> Result<Option<Output>, Error> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let ev = match self.pieces.next().await? {
                Some(Piece::Stdout(data)) => return Ok(Some(Output::Stdout(data))),
                Some(Piece::Stderr(data)) => return Ok(Some(Output::Stderr(data))),
                Some(Piece::Event(ev)) => ev,
                None => {
                    return Err(Error::Connection(
                        "the output stream ended before the process did".into(),
                    ))
                }
            };
            return match ev {
                // Output never comes as an event (`Pieces` sees to it).
                ExecEvent::Started { .. } | ExecEvent::Stdout { .. } | ExecEvent::Stderr { .. } => {
                    continue
                }
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    timed_out,
                    oom_killed,
                } => {
                    self.ended = true;
                    Ok(Some(Output::Exit(Exit {
                        exit_code,
                        signal,
                        timed_out,
                        oom_killed,
                    })))
                }
                ExecEvent::Error { code, message } => {
                    self.ended = true;
                    Err(Error::Api { code, message })
                }
            };
        }
    }

    /// Reads the rest of the output: stdout, stderr and the exit.
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>, Exit), Error> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next().await? {
                Some(Output::Stdout(d)) => stdout.extend_from_slice(&d),
                Some(Output::Stderr(d)) => stderr.extend_from_slice(&d),
                Some(Output::Exit(e)) => return Ok((stdout, stderr, e)),
                None => return Err(Error::Protocol("the stream had ended".into())),
            }
        }
    }

    /// Writes to its stdin; see [`ProcessHandle::write_stdin`].
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.handle.write_stdin(data).await
    }

    /// Closes its stdin; see [`ProcessHandle::close_stdin`].
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.handle.close_stdin().await
    }

    /// Sends it a signal; see [`ProcessHandle::signal`].
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        self.handle.signal(signal).await
    }
}

impl Client {
    /// Runs a command to its end and returns its output whole (at most 64 MiB of
    /// answer: stream a command that writes more). A command that cannot start is an
    /// [`Error::Api`] (`command_not_found`, `permission_denied`).
    pub async fn exec(&self, key: &str, req: &ExecRequest) -> Result<ExecResult, Error> {
        self.call(Method::POST, &sandbox_path(key, "/exec"), Some(req))
            .await
    }

    /// Starts a command and streams its output as it comes; returns once it has
    /// started. With `stdin: true` in `req`, write to it with
    /// [`ExecStream::write_stdin`].
    pub async fn exec_stream(&self, key: &str, req: &ExecRequest) -> Result<ExecStream, Error> {
        let path = sandbox_path(key, "/exec");
        let mut pieces = self.process_stream(Method::POST, &path, Some(req)).await?;
        let pid = match pieces.next().await? {
            Some(Piece::Event(ExecEvent::Started { pid })) => pid,
            Some(Piece::Event(ExecEvent::Error { code, message })) => {
                return Err(Error::Api { code, message })
            }
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "expected the process to start, got {other:?}"
                )))
            }
            None => {
                return Err(Error::Protocol(
                    "the stream ended before the process started".into(),
                ))
            }
        };
        Ok(ExecStream {
            handle: self.process(key, pid),
            pieces,
            ended: false,
        })
    }

    /// Opens the output stream of an exec (`POST .../exec`, `body` its request) or an
    /// attach (`GET .../attach`); `path` has no `stream` parameter. Binary frames, or,
    /// from a daemon older than them (one that refuses `stream=binary`, which it does
    /// before running anything), NDJSON lines.
    pub async fn process_stream(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Pieces, Error> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let binary = format!("{path}{sep}stream=binary");
        match self.frames(method.clone(), &binary, body).await {
            Err(Error::Api { code, message })
                if code == WireCode::InvalidRequest.as_str() && message.starts_with("query:") =>
            {
                // Its exec streams with stream=true, its attach always (and knows no
                // stream parameter).
                let lines = if method == Method::POST {
                    format!("{path}{sep}stream=true")
                } else {
                    path.to_string()
                };
                Ok(Pieces(Source::Lines(
                    self.lines(method, &lines, body).await?,
                )))
            }
            r => r.map(|f| Pieces(Source::Frames(f))),
        }
    }

    /// Follows a process started earlier (in the background, or by another client);
    /// with `replay`, the output the agent still holds comes first.
    pub async fn attach(&self, key: &str, pid: u32, replay: bool) -> Result<ExecStream, Error> {
        let path = sandbox_path(key, &format!("/processes/{pid}/attach?replay={replay}"));
        let pieces = self.process_stream(Method::GET, &path, None::<&()>).await?;
        Ok(ExecStream {
            handle: self.process(key, pid),
            pieces,
            ended: false,
        })
    }

    /// The stdin, signals and size of process `pid` of sandbox `key`.
    pub fn process(&self, key: &str, pid: u32) -> ProcessHandle {
        ProcessHandle {
            client: self.clone(),
            key: key.to_string(),
            pid,
        }
    }

    /// The processes the sandbox's agent started (and those ended but not yet seen).
    pub async fn processes(&self, key: &str) -> Result<Vec<ProcessInfo>, Error> {
        self.call(Method::GET, &sandbox_path(key, "/processes"), None::<&()>)
            .await
    }

    /// Sends `signal` to process `pid` (9 kills it).
    pub async fn kill(&self, key: &str, pid: u32, signal: i32) -> Result<(), Error> {
        self.process(key, pid).signal(signal).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_exits() {
        let r = argv(["echo", "hi"]);
        assert_eq!(
            r.command,
            Some(Command::Argv(vec!["echo".into(), "hi".into()]))
        );
        assert_eq!(shell("ls").command, Some(Command::Shell("ls".into())));
        let killed = Exit {
            signal: Some(9),
            ..Exit::default()
        };
        assert_eq!(killed.shell_code(), 137);
        assert!(!killed.success());
        let ok: Exit = serde_json::from_str(r#"{"exit_code":0}"#).unwrap();
        assert!(ok.success());
    }
}
