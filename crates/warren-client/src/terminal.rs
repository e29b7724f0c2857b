//! A terminal: a command on a pseudo-terminal in the sandbox, over a WebSocket.
//!
//! Binary messages carry keystrokes one way and the screen the other; text messages are
//! JSON: a resize from the client (`{"resize":{"rows":R,"cols":C}}`), and from the daemon
//! a [`Notice`]: the exit, an error, the process to join again, a share's mode.
//! Closing the WebSocket kills the command, unless it was started with `keep`.

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use warren_types::api::ApiError;

use crate::exec::Exit;
use crate::transport::{enc, sandbox_path, Io};
use crate::{Client, Error};

/// How to open a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalOptions {
    /// The window's height, in lines [default: 24].
    pub rows: u16,
    /// The window's width, in columns [default: 80].
    pub cols: u16,
    /// The command, run by `/bin/sh -c` [default: `/bin/bash`].
    pub cmd: Option<String>,
    /// Keep the command running when the terminal closes; the first event is then
    /// the notice [`Notice::Process`], whose pid [`pid`](Self::pid) joins again.
    pub keep: bool,
    /// Join the terminal of this running process instead of starting one: the output
    /// the agent still holds comes first, so the screen is drawn again.
    pub pid: Option<u32>,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        Self {
            rows: 24,
            cols: 80,
            cmd: None,
            keep: false,
            pid: None,
        }
    }
}

impl TerminalOptions {
    fn query(&self) -> String {
        let mut q = format!("?rows={}&cols={}", self.rows, self.cols);
        if let Some(cmd) = &self.cmd {
            q.push_str(&format!("&cmd={}", enc(cmd)));
        }
        if self.keep {
            q.push_str("&keep=true");
        }
        if let Some(pid) = self.pid {
            q.push_str(&format!("&pid={pid}"));
        }
        q
    }
}

/// A text message from the daemon on a terminal (or a share's) WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// The command ended; the socket closes next.
    Exit(Exit),
    /// Something failed: a refused resize or key, or the reason the terminal ends.
    Error(ApiError),
    /// First to a share's guest: whether its keys reach the process.
    Share {
        /// The guest's keys reach the process.
        write: bool,
    },
    /// First on a kept or joined terminal: the process, to join again later.
    Process {
        /// Its pid in the sandbox: [`TerminalOptions::pid`] joins it.
        pid: u32,
    },
}

/// What a terminal sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalEvent {
    /// Bytes of the screen.
    Output(Bytes),
    /// A notice from the daemon.
    Notice(Notice),
}

#[derive(Debug, Serialize)]
struct Resize {
    resize: Size,
}

#[derive(Debug, Serialize)]
struct Size {
    rows: u16,
    cols: u16,
}

type Socket = WebSocketStream<Box<dyn Io>>;

/// An open terminal. [`split`](Self::split) it to type from one task while another
/// reads the screen.
#[derive(Debug)]
pub struct Terminal {
    input: TerminalInput,
    output: TerminalOutput,
}

/// The typing half of a [`Terminal`].
pub struct TerminalInput(SplitSink<Socket, Message>);

/// The screen half of a [`Terminal`].
pub struct TerminalOutput(SplitStream<Socket>);

impl std::fmt::Debug for TerminalInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalInput")
    }
}

impl std::fmt::Debug for TerminalOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalOutput")
    }
}

impl TerminalInput {
    /// Sends keystrokes (`b"ls\r"`, `b"\x03"` for Ctrl-C).
    pub async fn write(&mut self, keys: impl Into<Bytes>) -> Result<(), Error> {
        self.0
            .send(Message::Binary(keys.into()))
            .await
            .map_err(|e| Error::Connection(e.to_string()))
    }

    /// Tells the command the window is now `rows` by `cols`.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), Error> {
        let msg = serde_json::to_string(&Resize {
            resize: Size { rows, cols },
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        self.0
            .send(Message::Text(msg.into()))
            .await
            .map_err(|e| Error::Connection(e.to_string()))
    }

    /// Closes the terminal: the command is killed, unless it was started with `keep`.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.0
            .close()
            .await
            .map_err(|e| Error::Connection(e.to_string()))
    }
}

impl TerminalOutput {
    /// The next bytes of the screen or notice; `None` once the socket has closed.
    pub async fn next(&mut self) -> Result<Option<TerminalEvent>, Error> {
        loop {
            return match self.0.next().await {
                Some(Ok(Message::Binary(data))) => Ok(Some(TerminalEvent::Output(data))),
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(n) => Ok(Some(TerminalEvent::Notice(n))),
                    // A notice of a daemon newer than this client.
                    Err(_) => continue,
                },
                Some(Ok(Message::Close(_))) | None => Ok(None),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(Error::Connection(e.to_string())),
            };
        }
    }

    /// Reads until the command ends: the screen's bytes and how it ended. An error
    /// notice before the end is the reason it ended, returned as [`Error::Api`].
    pub async fn wait(&mut self) -> Result<(Vec<u8>, Exit), Error> {
        let mut screen = Vec::new();
        let mut failure = None;
        loop {
            match self.next().await? {
                Some(TerminalEvent::Output(d)) => screen.extend_from_slice(&d),
                Some(TerminalEvent::Notice(Notice::Exit(e))) => return Ok((screen, e)),
                Some(TerminalEvent::Notice(Notice::Error(ApiError { code, message }))) => {
                    failure = Some(Error::Api { code, message });
                }
                Some(TerminalEvent::Notice(_)) => {}
                None => {
                    return Err(failure.unwrap_or_else(|| {
                        Error::Connection("the terminal closed before the command ended".into())
                    }))
                }
            }
        }
    }
}

impl Terminal {
    /// Sends keystrokes; see [`TerminalInput::write`].
    pub async fn write(&mut self, keys: impl Into<Bytes>) -> Result<(), Error> {
        self.input.write(keys).await
    }

    /// Resizes the window; see [`TerminalInput::resize`].
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), Error> {
        self.input.resize(rows, cols).await
    }

    /// The next screen bytes or notice; see [`TerminalOutput::next`].
    pub async fn next(&mut self) -> Result<Option<TerminalEvent>, Error> {
        self.output.next().await
    }

    /// Reads until the command ends; see [`TerminalOutput::wait`].
    pub async fn wait(&mut self) -> Result<(Vec<u8>, Exit), Error> {
        self.output.wait().await
    }

    /// Closes the terminal; see [`TerminalInput::close`].
    pub async fn close(&mut self) -> Result<(), Error> {
        self.input.close().await
    }

    /// The typing half and the screen half, for two tasks.
    pub fn split(self) -> (TerminalInput, TerminalOutput) {
        (self.input, self.output)
    }
}

impl Client {
    /// Opens a terminal in sandbox `key`. A command that cannot start, or a sandbox
    /// that cannot run one, is refused before the WebSocket opens, as an [`Error::Api`].
    pub async fn terminal(&self, key: &str, opts: &TerminalOptions) -> Result<Terminal, Error> {
        let path = sandbox_path(key, &format!("/pty{}", opts.query()));
        let (sink, stream) = self.websocket(&path).await?.split();
        Ok(Terminal {
            input: TerminalInput(sink),
            output: TerminalOutput(stream),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_as_the_daemon_writes_them() {
        let n: Notice = serde_json::from_str(
            r#"{"exit":{"exit_code":0,"signal":null,"timed_out":false,"oom_killed":false}}"#,
        )
        .unwrap();
        assert_eq!(
            n,
            Notice::Exit(Exit {
                exit_code: Some(0),
                ..Exit::default()
            })
        );
        let n: Notice =
            serde_json::from_str(r#"{"error":{"code":"read_only","message":"m"}}"#).unwrap();
        assert!(matches!(n, Notice::Error(ApiError { code, .. }) if code == "read_only"));
        let n: Notice = serde_json::from_str(r#"{"process":{"pid":7}}"#).unwrap();
        assert_eq!(n, Notice::Process { pid: 7 });
        let n: Notice = serde_json::from_str(r#"{"share":{"write":true}}"#).unwrap();
        assert_eq!(n, Notice::Share { write: true });
    }

    #[test]
    fn options_become_queries() {
        let o = TerminalOptions {
            cmd: Some("echo hi".into()),
            keep: true,
            ..TerminalOptions::default()
        };
        assert_eq!(o.query(), "?rows=24&cols=80&cmd=echo%20hi&keep=true");
        let o = TerminalOptions {
            pid: Some(4),
            ..TerminalOptions::default()
        };
        assert_eq!(o.query(), "?rows=24&cols=80&pid=4");
    }
}
