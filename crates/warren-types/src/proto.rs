//! The agent protocol: how a host-side client talks to the agent (PID 1) of a sandbox.
//!
//! One connection carries many concurrent operations. Every operation lives on a
//! *channel*, a number the client picks (odd numbers, never reused on a connection).
//! Bytes on the wire are frames:
//!
//! ```text
//! [len: u32 BE][channel: u32 BE][kind: u8][payload: len - 5 bytes]
//! ```
//!
//! `kind` says what the payload is: a JSON [`Request`] (client → agent) or [`Response`]
//! (agent → client) for [`FrameKind::Control`], raw bytes for the data kinds, or a
//! window update for [`FrameKind::Credit`].
//!
//! The first frame on a connection is `Request::Hello` on channel 0; the agent answers
//! `Response::Hello` with the version it speaks, or `Response::Error` with
//! [`ErrorCode::VersionMismatch`] and closes. The agent speaks exactly
//! [`PROTOCOL_VERSION`]; a client that is refused may connect again with an older version
//! it still speaks (see [`OLDEST_PROTOCOL_VERSION`]), which is how a daemon adopts a
//! sandbox whose agent an older build started.
//!
//! Flow control is credit, per channel and both ways. The agent never sends more data
//! (stdout, stderr, file contents) on a channel than the client has granted: each
//! channel starts with [`INITIAL_WINDOW`] bytes of credit, and the client grants more
//! with a `Credit` frame whose payload is a u32 BE byte count, sent as it consumes data.
//! A process whose reader stops reading is therefore stopped by its full pipe, and the
//! agent's memory stays bounded.
//!
//! The client likewise never sends more data (stdin, upload `Data`) on a channel than
//! the agent has granted: each channel starts with [`INPUT_WINDOW`] bytes, and the agent
//! sends `Credit` frames as the bytes leave it (written into the process or the file, or
//! thrown away because nothing takes them any more: a process without stdin, a channel
//! that has ended), so an input frame can carry no more than the window (the client
//! library sends [`CHUNK`]s). So the agent never waits on a process's stdin or a slow disk while
//! reading the connection, and a process that does not read its stdin holds up that
//! channel's input alone, not the other channels of the connection. A frame beyond the
//! granted credit is a protocol error on its channel only: it is dropped, the agent
//! answers `Error` (`BadRequest`) once on the channel, and refuses its input from then on
//! (stdin frames are dropped, an upload is abandoned), since a stream with a hole in it
//! is worth nothing; the process and the rest of the connection carry on.
//!
//! In both directions a data frame costs its length but at least [`MIN_FRAME_CREDIT`]
//! (both sides count it so), which bounds the frames in flight as well as the bytes: a
//! process writing one byte at a time cannot queue a million one-byte frames on the
//! host, nor a client a million one-byte stdin frames in the agent.
//!
//! File names are bytes on Linux, not text. Paths in requests are [`WirePath`]s, which
//! travel as plain JSON strings when they are UTF-8 (nearly always) and as
//! `{"b64": "..."}` when they are not; names the agent reports carry a `*_b64` twin in
//! the second case, so two names that display alike can still be told apart and
//! addressed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::b64::Base64Error;

/// The protocol version this build speaks. Version 2 added credit for the data a
/// client sends ([`INPUT_WINDOW`]); version 3 added [`Request::Close`], so that one
/// connection can carry the channels of many callers.
pub const PROTOCOL_VERSION: u16 = 3;

/// The first version with [`Request::Close`].
pub const CLOSE_SINCE: u16 = 3;

/// The oldest version a client still speaks, to an agent an older build started. In
/// version 1 the agent grants no credit for stdin and upload data: a client sends it
/// bounded only by its own queue, and the agent stops reading the connection while a
/// process's stdin is full.
pub const OLDEST_PROTOCOL_VERSION: u16 = 1;

/// Bytes of frame header after the length prefix: channel (4) and kind (1).
pub const HEADER_LEN: usize = 5;

/// The largest payload a frame may carry; larger frames are a protocol error.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Credit each new channel starts with for data from the agent, in bytes.
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// Credit each new channel starts with for data from the client (stdin, upload data),
/// in bytes: what the agent may have to hold per channel, so smaller than
/// [`INITIAL_WINDOW`] (the agent runs inside the sandbox, on its memory).
pub const INPUT_WINDOW: u32 = 256 << 10;

/// The least credit a data frame costs, however short.
pub const MIN_FRAME_CREDIT: usize = 256;

/// The credit a data frame of `len` bytes costs.
pub fn frame_credit(len: usize) -> usize {
    len.max(MIN_FRAME_CREDIT)
}

/// The largest data chunk a sender puts in one frame.
pub const CHUNK: usize = 64 * 1024;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON-encoded [`Request`] or [`Response`].
    Control = 0,
    /// A process's standard output.
    Stdout = 1,
    /// A process's standard error.
    Stderr = 2,
    /// Bytes for a process's standard input.
    Stdin = 3,
    /// File contents, in either direction.
    Data = 4,
    /// A window update: u32 BE bytes the receiver may send more on the channel. From
    /// the client it grants output (stdout, stderr, read data); from the agent, input
    /// (stdin, upload data).
    Credit = 5,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Control,
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Stdin,
            4 => Self::Data,
            5 => Self::Credit,
            _ => return None,
        })
    }
}

/// One frame of the agent protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// Why bytes could not be read as a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame payload of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("frame is shorter than its header")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

impl Frame {
    pub fn new(channel: u32, kind: FrameKind, payload: Vec<u8>) -> Self {
        Self {
            channel,
            kind,
            payload,
        }
    }

    /// A control frame carrying `msg` as JSON.
    pub fn control<T: Serialize>(channel: u32, msg: &T) -> Self {
        // Serializing our own plain data types to a Vec cannot fail.
        let payload = serde_json::to_vec(msg).unwrap_or_default();
        Self::new(channel, FrameKind::Control, payload)
    }

    /// A credit frame granting `bytes` more on `channel`.
    pub fn credit(channel: u32, bytes: u32) -> Self {
        Self::new(channel, FrameKind::Credit, bytes.to_be_bytes().to_vec())
    }

    /// The byte count of a credit frame.
    pub fn credit_bytes(&self) -> Option<u32> {
        let b: [u8; 4] = self.payload.as_slice().try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }

    /// Appends the frame's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_header(out);
        out.extend_from_slice(&self.payload);
    }

    /// Appends what comes before the payload: the frame's length and its header.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        let len = (HEADER_LEN + self.payload.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.push(self.kind as u8);
    }

    /// Reads one frame from the front of `buf`. `Ok(None)` means more bytes are needed;
    /// otherwise the frame and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(len) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        if len - HEADER_LEN > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len - HEADER_LEN));
        }
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        let channel = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let kind = FrameKind::from_u8(body[4]).ok_or(FrameError::UnknownKind(body[4]))?;
        Ok(Some((
            Frame::new(channel, kind, body[HEADER_LEN..].to_vec()),
            4 + len,
        )))
    }

    /// Parses a control frame's JSON payload.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// A path as the exact bytes the filesystem knows it by.
///
/// Serialized as a JSON string when the bytes are UTF-8, which keeps the wire unchanged
/// for every such path, and as `{"b64": "<standard base64>"}` otherwise; both forms are
/// read back.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WirePath(Vec<u8>);

impl WirePath {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn as_path(&self) -> &Path {
        Path::new(self.as_os_str())
    }

    pub fn into_path_buf(self) -> PathBuf {
        PathBuf::from(OsString::from_vec(self.0))
    }

    /// The path as text, when it is UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The path for display: invalid UTF-8 becomes U+FFFD, so different paths may look
    /// the same.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The bytes in base64 when they are not UTF-8, as the `*_b64` fields of
    /// [`FileInfo`] and [`Response::WatchEvent`] carry them; `None` for text.
    pub fn b64_unless_utf8(&self) -> Option<String> {
        self.to_str().is_none().then(|| crate::b64::encode(&self.0))
    }

    /// The path a display string and its `*_b64` twin stand for: the twin's bytes when
    /// present, else the string's.
    pub fn from_shown(shown: &str, b64: Option<&str>) -> Result<Self, Base64Error> {
        match b64 {
            Some(b64) => Ok(Self(crate::b64::decode(b64)?)),
            None => Ok(Self::from(shown)),
        }
    }
}

impl fmt::Debug for WirePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

impl fmt::Display for WirePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl From<&str> for WirePath {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<String> for WirePath {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl From<&String> for WirePath {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<&[u8]> for WirePath {
    fn from(b: &[u8]) -> Self {
        Self(b.to_vec())
    }
}

impl From<Vec<u8>> for WirePath {
    fn from(b: Vec<u8>) -> Self {
        Self(b)
    }
}

impl From<&OsStr> for WirePath {
    fn from(s: &OsStr) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<OsString> for WirePath {
    fn from(s: OsString) -> Self {
        Self(s.into_vec())
    }
}

impl From<&Path> for WirePath {
    fn from(p: &Path) -> Self {
        Self::from(p.as_os_str())
    }
}

impl From<PathBuf> for WirePath {
    fn from(p: PathBuf) -> Self {
        Self::from(p.into_os_string())
    }
}

impl From<&WirePath> for WirePath {
    fn from(p: &WirePath) -> Self {
        p.clone()
    }
}

impl AsRef<OsStr> for WirePath {
    fn as_ref(&self) -> &OsStr {
        self.as_os_str()
    }
}

impl AsRef<Path> for WirePath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}

impl Serialize for WirePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.to_str() {
            Some(s) => serializer.serialize_str(s),
            None => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("b64", &crate::b64::encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for WirePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WirePathVisitor;

        impl<'de> Visitor<'de> for WirePathVisitor {
            type Value = WirePath;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a path: a string, or {"b64": "<base64>"}"#)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<WirePath, E> {
                Ok(WirePath::from(s))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<WirePath, E> {
                Ok(WirePath::from(s))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WirePath, A::Error> {
                let mut bytes = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key != "b64" {
                        return Err(de::Error::unknown_field(&key, &["b64"]));
                    }
                    if bytes.is_some() {
                        return Err(de::Error::duplicate_field("b64"));
                    }
                    let text: Cow<'de, str> = map.next_value()?;
                    bytes = Some(crate::b64::decode(&text).map_err(de::Error::custom)?);
                }
                bytes
                    .map(WirePath)
                    .ok_or_else(|| de::Error::missing_field("b64"))
            }
        }

        deserializer.deserialize_any(WirePathVisitor)
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// argv\[0\] is looked up in PATH.
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`.
    Shell(String),
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WinSize {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub rows: u16,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub cols: u16,
}

/// Who a process runs as, inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum User {
    /// A numeric uid; the gid defaults to the same number.
    Id { uid: u32, gid: Option<u32> },
    /// A name looked up in the sandbox's /etc/passwd.
    Name(String),
}

impl User {
    /// `name`, `uid` or `uid:gid`, as `docker exec --user` takes them.
    pub fn parse(s: &str) -> Result<User, String> {
        if s.is_empty() {
            return Err("the user is empty: give a name, a uid or uid:gid".into());
        }
        if let Some((u, g)) = s.split_once(':') {
            let uid = u.parse().map_err(|_| format!("{u:?} is not a uid"))?;
            let gid = g.parse().map_err(|_| format!("{g:?} is not a gid"))?;
            return Ok(User::Id {
                uid,
                gid: Some(gid),
            });
        }
        Ok(match s.parse::<u32>() {
            Ok(uid) => User::Id { uid, gid: None },
            Err(_) => User::Name(s.into()),
        })
    }
}

/// Start a process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Option<Command>,
    /// Added to the sandbox's environment (which these override).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the user's home when unset.
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<User>,
    /// Run on a new pseudo-terminal of this size; stdout then carries the terminal's
    /// output and stderr is empty.
    #[serde(default)]
    pub tty: Option<WinSize>,
    /// Keep stdin open for the client to write; otherwise stdin is /dev/null.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub stdin: bool,
    /// Kill the whole process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Keep the process running when this channel closes; reattach with `Attach`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub background: bool,
    /// A client-chosen label shown in process lists.
    #[serde(default)]
    pub tag: Option<String>,
}

/// A request from the client; each opens or acts on a channel.
///
/// Every file request takes `user`: when set, the agent performs it with that user's
/// filesystem identity (resolved from the sandbox's /etc/passwd and /etc/group, as for
/// `Exec`), so permission checks, the traversal of directories and symlinks, and the
/// owner of what is created are that user's. Unset, the agent acts as itself (the
/// sandbox's root).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello {
        version: u16,
    },
    /// Answered by `Started`, then output frames, then `Exited`.
    Exec(ExecRequest),
    /// Follow a running (or recently ended) process: output since its start when `replay`
    /// (as much as its buffer kept), then live output and `Exited`. Stdin frames on this
    /// channel go to the process.
    Attach {
        pid: u32,
        #[serde(default)]
        replay: bool,
        /// Start at this absolute output offset instead (see [`ProcessInfo::output_end`]),
        /// or at the oldest byte the buffer still holds if that is later; an offset past
        /// the end starts at the end. Takes precedence over `replay`. A client that
        /// counts what it has received resumes with it after a disconnect.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<u64>,
        /// Attach only if the process `pid` has this [`ProcessInfo::serial`]; otherwise
        /// `ProcessNotFound`, as the pid now belongs to another process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<u64>,
    },
    ListProcesses,
    Signal {
        pid: u32,
        signal: i32,
        /// To the process's whole group: a process the agent started leads its own, so
        /// this reaches what it started too (a shell's children).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        group: bool,
    },
    Resize {
        pid: u32,
        size: WinSize,
    },
    /// Close the stdin of the process started or attached on this channel.
    CloseStdin,
    /// Answered by `FileInfo`, then `Data` frames, then `End`. Anything but a regular
    /// file (a FIFO, a device, a socket) is refused with [`ErrorCode::NotAFile`] unless
    /// `special` is set; then it is streamed for as long as it yields data and the client
    /// grants credit, so the client decides how much it takes (and `Cancel`s).
    ReadFile {
        path: WirePath,
        #[serde(default, skip_serializing_if = "is_false")]
        special: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    /// Followed by the client's `Data` frames and `End`; answered by `Written`.
    WriteFile {
        path: WirePath,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        append: bool,
        /// Truncate and write the file itself (same inode, seen by watchers as a
        /// write) rather than replacing it whole at the end.
        #[serde(default, skip_serializing_if = "is_false")]
        in_place: bool,
        /// Set on the written file as `user.e2b.KEY` extended attributes.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metadata: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    /// The client has no more data for this channel.
    End,
    ListDir {
        path: WirePath,
        #[serde(default = "one")]
        depth: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    Stat {
        path: WirePath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    MakeDir {
        path: WirePath,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    Remove {
        path: WirePath,
        #[serde(default)]
        recursive: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    Rename {
        from: WirePath,
        to: WirePath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    /// Answered by `Ok`, then `WatchEvent`s until the client sends `Cancel`.
    Watch {
        path: WirePath,
        #[serde(default)]
        recursive: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<User>,
    },
    /// Stop what runs on this channel (a watch, a stream); the process stays alive.
    Cancel,
    /// The client has gone from this channel: what runs on it stops, and a process
    /// started on it without `background` is killed with its process group, as when a
    /// connection closes. Never answered; a channel that has already ended is left as
    /// it is. Since version 3 ([`CLOSE_SINCE`]).
    Close,
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExitStatus {
    /// The exit code, when it exited.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub code: Option<i32>,
    /// The signal that killed it, when it was killed.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub signal: Option<i32>,
    /// Killed because its timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// A process the agent started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessInfo {
    pub pid: u32,
    /// Assigned by the agent, from 1, never reused while it runs: tells this process from
    /// a later one the kernel gave the same pid.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required))]
    pub serial: u64,
    pub command: Command,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub tag: Option<String>,
    pub tty: bool,
    pub background: bool,
    /// Set once it has ended (an ended process stays listed until a client has seen its
    /// end; one started in the background, until 64 newer ones have ended).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub exit: Option<ExitStatus>,
    /// The absolute offset just past the newest output byte: how many bytes of output
    /// (stdout and stderr together) the process has produced so far.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required))]
    pub output_end: u64,
}

/// The type of a file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

/// What `stat` tells of a file.
///
/// `path`, `name` and `symlink_target` are for display; when their bytes are not UTF-8
/// they show them lossily and the matching `*_b64` field holds the exact bytes (see
/// [`WirePath`]). [`FileInfo::raw_path`] and its siblings give the exact bytes either way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileInfo {
    /// The path as the client named it (joined for listings).
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub modified: i64,
    /// Where a symlink points.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub symlink_target: Option<String>,
    /// The exact bytes of `path` in standard base64, present only when they are not UTF-8
    /// (`path` then shows them with U+FFFD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// The exact bytes of `name`, as `path_b64` for `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_b64: Option<String>,
    /// The exact bytes of `symlink_target`, as `path_b64` for `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target_b64: Option<String>,
    /// For a symlink, what it finally leads to when it leads anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Box<Resolved>>,
    /// The file's `user.e2b.KEY` extended attributes, by KEY.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The prefix of the extended attributes that hold a file's metadata.
pub const METADATA_XATTR: &str = "user.e2b.";

/// Where a chain of symlinks ends: the absolute path with every link followed, and
/// what is there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resolved {
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Permission bits.
    pub mode: u32,
}

impl FileInfo {
    /// The exact bytes of `path`, to address the file in another request.
    pub fn raw_path(&self) -> Result<WirePath, Base64Error> {
        WirePath::from_shown(&self.path, self.path_b64.as_deref())
    }

    pub fn raw_name(&self) -> Result<WirePath, Base64Error> {
        WirePath::from_shown(&self.name, self.name_b64.as_deref())
    }

    pub fn raw_symlink_target(&self) -> Result<Option<WirePath>, Base64Error> {
        self.symlink_target
            .as_deref()
            .map(|t| WirePath::from_shown(t, self.symlink_target_b64.as_deref()))
            .transpose()
    }
}

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// Stable error codes of the agent protocol.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    VersionMismatch,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    NotADirectory,
    IsADirectory,
    /// A FIFO, device or socket where a regular file was expected.
    NotAFile,
    NotEmpty,
    NoSpace,
    ProcessNotFound,
    CommandNotFound,
    Io,
}

/// A message from the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u16,
        agent: String,
    },
    Started {
        pid: u32,
        /// The process's [`ProcessInfo::serial`].
        #[serde(default)]
        serial: u64,
    },
    Exited {
        status: ExitStatus,
    },
    Processes {
        list: Vec<ProcessInfo>,
    },
    FileInfo {
        info: FileInfo,
    },
    DirEntries {
        entries: Vec<FileInfo>,
    },
    /// The end of a read's `Data` frames.
    End,
    Written {
        bytes: u64,
    },
    /// `path` is for display, `path_b64` the exact bytes when they are not UTF-8 (see
    /// [`WirePath::from_shown`]).
    WatchEvent {
        kind: WatchKind,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_b64: Option<String>,
    },
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[cfg(feature = "tokio")]
mod io {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{Frame, FrameError, FrameKind, HEADER_LEN, MAX_PAYLOAD};

    /// Reads one frame. `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len < HEADER_LEN {
            return Err(invalid(FrameError::Truncated));
        }
        if len - HEADER_LEN > MAX_PAYLOAD {
            return Err(invalid(FrameError::TooLarge(len - HEADER_LEN)));
        }
        let mut head = [0u8; HEADER_LEN];
        r.read_exact(&mut head).await?;
        let channel = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = FrameKind::from_u8(head[4]).ok_or(invalid(FrameError::UnknownKind(head[4])))?;
        // Read into the vector's spare capacity: no zeroing of what is overwritten next.
        let size = len - HEADER_LEN;
        let mut payload = Vec::with_capacity(size);
        while payload.len() < size {
            let room = size - payload.len();
            if (&mut *r).take(room as u64).read_buf(&mut payload).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(Some(Frame::new(channel, kind, payload)))
    }

    /// Writes one frame (not flushed): its length and header, then its payload from
    /// where it lies, in vectored writes (one system call on a socket, no copy of the
    /// payload into a frame first).
    pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(4 + HEADER_LEN);
        f.encode_header(&mut head);
        let (mut head, mut body) = (&head[..], &f.payload[..]);
        while !head.is_empty() || !body.is_empty() {
            let n = w
                .write_vectored(&[std::io::IoSlice::new(head), std::io::IoSlice::new(body)])
                .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        Ok(())
    }

    fn invalid(e: FrameError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(feature = "tokio")]
pub use io::{read_frame, write_frame};

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip() {
        let stat = Request::Stat {
            path: "/x".into(),
            user: None,
        };
        let f = Frame::control(7, &stat);
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (g, used) = Frame::decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(f, g);
        assert_eq!(g.parse::<Request>().unwrap(), stat);
    }

    #[test]
    fn partial_input_needs_more() {
        let mut buf = Vec::new();
        Frame::new(1, FrameKind::Stdout, vec![1, 2, 3]).encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(Frame::decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut big = ((MAX_PAYLOAD + HEADER_LEN + 1) as u32)
            .to_be_bytes()
            .to_vec();
        big.extend_from_slice(&[0; 5]);
        assert!(matches!(Frame::decode(&big), Err(FrameError::TooLarge(_))));
        let bad = [0, 0, 0, 5, 0, 0, 0, 1, 99];
        assert_eq!(Frame::decode(&bad), Err(FrameError::UnknownKind(99)));
        let short = [0, 0, 0, 2, 0, 0];
        assert_eq!(Frame::decode(&short), Err(FrameError::Truncated));
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let r: Result<Request, _> = serde_json::from_str(r#"{"op":"stat","path":"/","evil":1}"#);
        assert!(r.is_err());
    }

    #[test]
    fn shell_code_follows_convention() {
        let s = |code, signal| ExitStatus {
            code,
            signal,
            timed_out: false,
        };
        assert_eq!(s(Some(3), None).shell_code(), 3);
        assert_eq!(s(None, Some(9)).shell_code(), 137);
    }

    #[test]
    fn text_paths_are_plain_strings_and_others_base64() {
        let text = WirePath::from("/tmp/ü");
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""/tmp/ü""#);
        let raw = WirePath::from(&b"/tmp/\xff\xfe"[..]);
        let json = serde_json::to_string(&raw).unwrap();
        assert_eq!(json, r#"{"b64":"L3RtcC///g=="}"#);
        assert_eq!(serde_json::from_str::<WirePath>(&json).unwrap(), raw);
        assert_eq!(raw.b64_unless_utf8().as_deref(), Some("L3RtcC///g=="));
        assert_eq!(text.b64_unless_utf8(), None);
        assert_eq!(raw.to_string(), "/tmp/\u{fffd}\u{fffd}");
        assert_eq!(format!("{raw:?}"), r#"b"/tmp/\xff\xfe""#);
        // A text path may be sent base64-encoded too.
        let spelled: WirePath = serde_json::from_str(r#"{"b64":"L3g="}"#).unwrap();
        assert_eq!(spelled, WirePath::from("/x"));
        assert_eq!(
            WirePath::from_shown("/tmp/\u{fffd}\u{fffd}", Some("L3RtcC///g==")).unwrap(),
            raw
        );
        assert_eq!(
            WirePath::from_shown("/x", None).unwrap(),
            WirePath::from("/x")
        );
    }

    #[test]
    fn requests_with_text_paths_keep_their_old_wire_form() {
        let old = [
            r#"{"op":"stat","path":"/x"}"#,
            r#"{"op":"read_file","path":"/x"}"#,
            r#"{"op":"read_file","path":"/x","special":true}"#,
            r#"{"op":"rename","from":"/a","to":"/b"}"#,
            r#"{"op":"list_dir","path":"/","depth":2}"#,
            r#"{"op":"attach","pid":7,"replay":true}"#,
            r#"{"op":"attach","pid":7,"replay":false,"from":42,"serial":3}"#,
        ];
        for json in old {
            let r: Request = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), json);
        }
        let raw = Request::Stat {
            path: WirePath::from(&b"/\x80"[..]),
            user: None,
        };
        let json = serde_json::to_string(&raw).unwrap();
        assert_eq!(json, r#"{"op":"stat","path":{"b64":"L4A="}}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), raw);
        let as_user = r#"{"op":"stat","path":"/x","user":{"name":"user"}}"#;
        let r: Request = serde_json::from_str(as_user).unwrap();
        assert_eq!(
            r,
            Request::Stat {
                path: "/x".into(),
                user: Some(User::Name("user".into()))
            }
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), as_user);
        // The tag and the raw path's object do not confuse deny_unknown_fields.
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"stat","path":{"b64":"L4A=","x":1}}"#)
                .is_err()
        );
    }

    #[test]
    fn file_info_gives_back_exact_names() {
        let json = r#"{"path":"/d/\ufffd","name":"\ufffd","type":"symlink","size":1,"mode":511,
            "uid":0,"gid":0,"modified":0,"symlink_target":"\ufffd","path_b64":"L2Qv/w==",
            "name_b64":"/w==","symlink_target_b64":"/g=="}"#;
        let info: FileInfo = serde_json::from_str(json).unwrap();
        assert_eq!(info.raw_path().unwrap().as_bytes(), b"/d/\xff");
        assert_eq!(info.raw_name().unwrap().as_bytes(), b"\xff");
        assert_eq!(
            info.raw_symlink_target().unwrap().unwrap().as_bytes(),
            b"\xfe"
        );
        // Text names carry no twins, so old readers see the same fields as before.
        let text = FileInfo {
            path: "/a".into(),
            name: "a".into(),
            file_type: FileType::File,
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            modified: 0,
            symlink_target: None,
            path_b64: None,
            name_b64: None,
            symlink_target_b64: None,
            resolved: None,
            metadata: Default::default(),
        };
        let value = serde_json::to_value(&text).unwrap();
        assert!(value.get("path_b64").is_none() && value.get("name_b64").is_none());
        assert_eq!(text.raw_path().unwrap(), WirePath::from("/a"));
    }

    #[test]
    fn malformed_raw_paths_are_refused() {
        for bad in [
            r#"{}"#,
            r#"{"b64":"L3g=","b64":"L3g="}"#,
            r#"{"b64":"L3g"}"#,
            r#"{"b64":"L3g=","x":1}"#,
            r#"{"hex":"2f"}"#,
            r#"47"#,
            r#"["/x"]"#,
        ] {
            assert!(serde_json::from_str::<WirePath>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_path_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let path = WirePath::from(bytes.clone());
            let json = serde_json::to_string(&path).unwrap();
            prop_assert_eq!(json.starts_with('"'), std::str::from_utf8(&bytes).is_ok());
            let back: WirePath = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.as_bytes(), &bytes[..]);
        }

        /// Arbitrary bytes never panic the decoder, and whatever it accepts re-encodes
        /// to the same bytes.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some((f, used))) = Frame::decode(&bytes) {
                let mut again = Vec::new();
                f.encode(&mut again);
                prop_assert_eq!(&again[..], &bytes[..used]);
                let _ = f.parse::<Request>();
                let _ = f.parse::<Response>();
            }
        }

        #[test]
        fn frames_round_trip(channel in any::<u32>(), kind in 0u8..6,
                             payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let f = Frame::new(channel, FrameKind::from_u8(kind).unwrap(), payload);
            let mut buf = Vec::new();
            f.encode(&mut buf);
            let (g, used) = Frame::decode(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(f, g);
        }
    }

    #[tokio::test]
    async fn async_reader_matches_decoder() {
        let mut buf = Vec::new();
        Frame::new(3, FrameKind::Data, b"abc".to_vec()).encode(&mut buf);
        Frame::credit(3, 42).encode(&mut buf);
        let mut r = &buf[..];
        let a = read_frame(&mut r).await.unwrap().unwrap();
        let b = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(a.payload, b"abc");
        assert_eq!(b.credit_bytes(), Some(42));
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frames_cross_a_pipe_that_takes_a_few_bytes_at_a_time() {
        // A pipe of 5 bytes: every write and read is partial, the vectored write's
        // header and payload split anywhere, the payload read in pieces.
        let (mut w, mut r) = tokio::io::duplex(5);
        let sent = vec![
            Frame::new(1, FrameKind::Stdout, Vec::new()),
            Frame::new(2, FrameKind::Stdout, b"x".to_vec()),
            Frame::new(
                3,
                FrameKind::Stderr,
                (0..70_000u32).map(|i| i as u8).collect(),
            ),
            Frame::credit(4, 7),
        ];
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            for f in &sent {
                write_frame(&mut w, f).await.unwrap();
            }
        });
        for f in expected {
            assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), f);
        }
        writer.await.unwrap();
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error() {
        let mut buf = Vec::new();
        Frame::new(3, FrameKind::Data, b"abcdef".to_vec()).encode(&mut buf);
        buf.truncate(buf.len() - 2);
        let e = read_frame(&mut &buf[..]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
