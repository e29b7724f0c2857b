//! Processes: exec (collected or streamed), attach, stdin, signals, resize, and the
//! terminal WebSocket.
//!
//! Streams are NDJSON (one [`ExecEvent`] per line, output in base64) or, with
//! `stream=binary`, frames of raw bytes ([`warren_types::mux`]); either is written as soon
//! as the agent sends a chunk, so a client sees output live. A stream holds the sandbox active for its
//! lifetime. When the HTTP client goes away the body is dropped; the task feeding it
//! sees its queue close and drops the [`Followed`] process, which kills a foreground
//! exec and stops the agent's stream (the agent would only kill it when the whole
//! connection closes, and that connection is shared).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::task::AbortOnDropHandle;
use warren_agent::client::{
    AgentClient, Channel, ChannelSender, ClientError, Incoming, Process, ProcessEvent,
};
use warren_core::{ActivityGuard, AgentConn, ProcessExit};
use warren_types::api::{ExecEvent, ExecResult, WireCode};
use warren_types::mux;
use warren_types::proto::{
    Command, ExecRequest, FrameKind, ProcessInfo, Request, Response as AgentResponse, WinSize,
    CHUNK,
};

use crate::error::Error;
use crate::extract::{revoked, Body, Credential, Json, Path, Query, SandboxAccess};
use crate::{shutting_down, AppState};

/// Largest answer a collected exec may make, as encoded (the output as text, escaped,
/// and as base64: up to seven and a half times the raw bytes); past it, the process is
/// killed and the client told to stream instead, so one command cannot fill the
/// daemon's memory.
pub const MAX_COLLECTED: usize = 64 << 20;

/// What every collected exec under way may hold at once, daemon-wide: its raw output and
/// its answer, encoded, as it will be built (twice: the result and its JSON). Past it, an
/// exec is refused with 503 and the client told to stream, however many run in parallel.
pub const MAX_COLLECTING: usize = 512 << 20;

static COLLECTING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A share of [`MAX_COLLECTING`], given back when dropped.
struct Held(usize);

impl Held {
    fn grow(&mut self, more: usize) -> bool {
        use std::sync::atomic::Ordering;
        let before = COLLECTING.fetch_add(more, Ordering::AcqRel);
        if before + more > MAX_COLLECTING {
            COLLECTING.fetch_sub(more, Ordering::AcqRel);
            return false;
        }
        self.0 += more;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        COLLECTING.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Bytes `data` takes in the answer: as escaped JSON text and as base64.
fn encoded_len(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let escaped: usize = text
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum();
    escaped + data.len().div_ceil(3) * 4
}

/// Lines queued between a stream's task and the HTTP body.
const STREAM_QUEUE: usize = 16;

const SIGKILL: i32 = 9;

/// A process followed on one agent channel. Dropped before its exit, it abandons the
/// stream: a foreground exec is killed, and the agent stops sending.
#[derive(Debug)]
pub(crate) struct Followed {
    pub pid: u32,
    ch: Option<Channel>,
    client: AgentClient,
    kill_on_drop: bool,
    ended: bool,
}

impl Followed {
    pub async fn exec(client: &AgentClient, req: ExecRequest) -> Result<Self, ClientError> {
        let kill_on_drop = !req.background;
        let mut ch = client.open();
        ch.send(&Request::Exec(req)).await?;
        match ch.reply().await? {
            AgentResponse::Started { pid, .. } => Ok(Self {
                pid,
                ch: Some(ch),
                client: client.clone(),
                kill_on_drop,
                ended: false,
            }),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Follows a process started earlier. The agent sends no `Started` here: output (or
    /// an error for an unknown pid) comes first.
    pub async fn attach(client: &AgentClient, pid: u32, replay: bool) -> Result<Self, ClientError> {
        let ch = client.open();
        ch.send(&Request::Attach {
            pid,
            replay,
            from: None,
            serial: None,
        })
        .await?;
        Ok(Self {
            pid,
            ch: Some(ch),
            client: client.clone(),
            kill_on_drop: false,
            ended: false,
        })
    }

    pub async fn next(&mut self) -> Result<ProcessEvent, ClientError> {
        let Some(ch) = self.ch.as_mut() else {
            return Err(ClientError::Closed);
        };
        loop {
            let ev = match ch.recv().await {
                Some(Incoming::Stdout(d)) => Ok(ProcessEvent::Stdout(d)),
                Some(Incoming::Stderr(d)) => Ok(ProcessEvent::Stderr(d)),
                Some(Incoming::Control(AgentResponse::Exited { status })) => {
                    Ok(ProcessEvent::Exited(status))
                }
                Some(Incoming::Control(AgentResponse::Error { code, message })) => {
                    Err(ClientError::Agent { code, message })
                }
                Some(_) => continue,
                None => Err(ClientError::Closed),
            };
            if !matches!(ev, Ok(ProcessEvent::Stdout(_) | ProcessEvent::Stderr(_))) {
                self.ended = true;
            }
            return ev;
        }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.stdin().ok_or(ClientError::Closed)?.write(data).await
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.stdin().ok_or(ClientError::Closed)?.close().await
    }

    /// Its stdin, for a task that writes while another reads the output: a write that
    /// waits for the process to read must not hold up the output it is writing.
    pub fn stdin(&self) -> Option<Stdin> {
        self.ch.as_ref().map(|ch| Stdin(ch.sender()))
    }

    pub async fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        self.resizer().resize(size).await
    }

    /// Resizes its terminal from another task than the one reading its output.
    pub fn resizer(&self) -> Resizer {
        Resizer {
            client: self.client.clone(),
            pid: self.pid,
        }
    }
}

/// Resizes a followed process's terminal.
#[derive(Debug, Clone)]
pub(crate) struct Resizer {
    client: AgentClient,
    pid: u32,
}

impl Resizer {
    pub async fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        self.client.resize(self.pid, size).await
    }
}

/// A followed process's stdin, apart from its output.
#[derive(Debug, Clone)]
pub(crate) struct Stdin(ChannelSender);

impl Stdin {
    /// Writes as the agent grants credit for this process's stdin: waits while the
    /// process is not reading, and holds up nothing else on the connection.
    pub async fn write(&self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(CHUNK) {
            self.0.send_data(FrameKind::Stdin, chunk.to_vec()).await?;
        }
        Ok(())
    }

    pub async fn close(&self) -> Result<(), ClientError> {
        self.0.send(&Request::CloseStdin).await
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(ch) = self.ch.take() else {
            return;
        };
        // Dropped unanswered, the channel itself tells the agent, which ends a foreground
        // process with its group and stops sending, as below.
        if ch.ends_when_dropped() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, pid, kill) = (self.client.clone(), self.pid, self.kill_on_drop);
        rt.spawn(async move {
            // What it started goes too (a shell's children); an agent older than group
            // signals kills the process alone.
            if kill && client.signal_group(pid, SIGKILL).await.is_err() {
                let _ = client.signal(pid, SIGKILL).await;
            }
            let _ = ch.send(&Request::Cancel).await;
        });
    }
}

fn b64(d: &[u8]) -> String {
    B64.encode(d)
}

fn exit_event(e: ProcessExit) -> ExecEvent {
    ExecEvent::Exit {
        exit_code: e.code,
        signal: e.signal,
        timed_out: e.timed_out,
        oom_killed: e.oom_killed,
    }
}

fn error_event(e: Error) -> ExecEvent {
    ExecEvent::Error {
        code: e.code.to_string(),
        message: e.message,
    }
}

fn line(ev: &ExecEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// How a stream is written: NDJSON lines, or binary frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Ndjson,
    Binary,
}

impl Wire {
    fn event(self, ev: &ExecEvent) -> Bytes {
        match self {
            Wire::Ndjson => line(ev),
            Wire::Binary => Bytes::from(mux::frame(
                mux::Kind::Event,
                &serde_json::to_vec(ev).unwrap_or_default(),
            )),
        }
    }

    /// What a chunk of output becomes: one piece, or a binary frame's header followed by
    /// the bytes themselves, handed on without a copy.
    fn output(self, kind: mux::Kind, data: Vec<u8>) -> (Bytes, Option<Bytes>) {
        match (self, kind) {
            (Wire::Ndjson, mux::Kind::Stderr) => {
                (line(&ExecEvent::Stderr { data: b64(&data) }), None)
            }
            (Wire::Ndjson, _) => (line(&ExecEvent::Stdout { data: b64(&data) }), None),
            (Wire::Binary, kind) => (
                Bytes::copy_from_slice(&mux::header(kind, data.len())),
                Some(Bytes::from(data)),
            ),
        }
    }

    fn response(self, rx: mpsc::Receiver<Bytes>) -> Response {
        match self {
            Wire::Ndjson => ndjson(rx),
            Wire::Binary => streamed(rx, mux::CONTENT_TYPE),
        }
    }
}

/// An NDJSON response fed by `rx`.
pub(crate) fn ndjson(rx: mpsc::Receiver<Bytes>) -> Response {
    streamed(rx, "application/x-ndjson")
}

/// A response of `content_type` fed by `rx`, never cached.
fn streamed(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response {
    let body = HttpBody::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    /// `true` streams NDJSON lines, `binary` raw frames, instead of collecting.
    #[serde(default)]
    #[param(inline)]
    stream: StreamMode,
}

/// How an exec or attach answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub enum StreamMode {
    /// Collected: one ExecResult at the exit.
    #[default]
    #[serde(rename = "false")]
    Collected,
    /// NDJSON ExecEvent lines, output in base64.
    #[serde(rename = "true")]
    Ndjson,
    /// Frames of raw output and JSON events (`application/vnd.warren.multiplexed-stream`).
    #[serde(rename = "binary")]
    Binary,
}

/// `POST /v1/sandboxes/{key}/exec`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/exec",
    operation_id = "exec",
    tag = "processes",
    summary = "Run a command.",
    description = "Without `stream`, waits for the exit and answers an ExecResult. With `stream=true`, answers NDJSON ExecEvent lines (`started`, then `stdout`/`stderr` chunks in base64, then `exit` or `error`) as they happen. With `stream=binary`, the same as frames (`application/vnd.warren.multiplexed-stream`): an 8-byte header (kind 1 stdout, 2 stderr, 3 an ExecEvent as JSON; three zero bytes; the payload's length, big-endian u32) and the payload, the output raw. A client that disconnects kills a non-background command. The sandbox must be running.",
    params(
        crate::openapi::SandboxKey,
        ExecQuery,
    ),
    request_body(content = warren_types::proto::ExecRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "ExecResult, or with stream=true an NDJSON stream of ExecEvent, or with stream=binary a stream of frames.", content((warren_types::api::ExecResult = "application/json"), (warren_types::api::ExecEvent = "application/x-ndjson"), (crate::openapi::Binary = "application/vnd.warren.multiplexed-stream"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn exec(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<ExecQuery>,
    Json(req): Json<ExecRequest>,
) -> Result<Response, Error> {
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let activity = conn.hold();
    let stdin = req.stdin;
    let p = Followed::exec(conn.client(), req).await?;
    let wire = match q.stream {
        StreamMode::Ndjson => Wire::Ndjson,
        StreamMode::Binary => Wire::Binary,
        StreamMode::Collected => {
            if stdin {
                // Nobody can write to it in this mode; an open stdin would only hang readers.
                p.close_stdin().await?;
            }
            let r = collect(p, &conn).await;
            drop(activity);
            return r.map(|r| axum::Json(r).into_response());
        }
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    // The queue is new and empty: this never waits, and the line is first.
    let _ = tx.try_send(wire.event(&ExecEvent::Started { pid: p.pid }));
    tokio::spawn(pump(st, conn, p, wire, tx, activity, access.credential));
    Ok(wire.response(rx))
}

async fn collect(mut p: Followed, conn: &AgentConn) -> Result<ExecResult, Error> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut held = Held(0);
    let mut answer = 0usize;
    loop {
        let chunk = match p.next().await? {
            ProcessEvent::Stdout(d) => {
                stdout.extend_from_slice(&d);
                d
            }
            ProcessEvent::Stderr(d) => {
                stderr.extend_from_slice(&d);
                d
            }
            ProcessEvent::Exited(status) => {
                let exit = conn.exit(&status);
                return Ok(ExecResult {
                    pid: p.pid,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                    stdout_b64: b64(&stdout),
                    stderr_b64: b64(&stderr),
                    exit_code: exit.code,
                    signal: exit.signal,
                    timed_out: exit.timed_out,
                    oom_killed: exit.oom_killed,
                });
            }
        };
        let encoded = encoded_len(&chunk);
        answer += encoded;
        if answer > MAX_COLLECTED {
            return Err(Error::too_large(format!(
                "the command's output makes an answer of more than {} MiB and it was \
                 killed; use ?stream=true",
                MAX_COLLECTED >> 20
            )));
        }
        if !held.grow(chunk.len() + 2 * encoded) {
            return Err(Error::new(
                WireCode::Busy,
                "too much collected output is held for other commands right now; the \
                 command was killed: use ?stream=true, or retry",
            ));
        }
    }
}

/// Feeds a process's events to a streamed body until the exit, an error, the client
/// leaving, or the daemon shutting down.
async fn pump(
    st: AppState,
    conn: AgentConn,
    mut p: Followed,
    wire: Wire,
    tx: mpsc::Sender<Bytes>,
    _activity: Option<ActivityGuard>,
    credential: Option<Credential>,
) {
    let shutdown = shutting_down(st.shutdown.clone());
    tokio::pin!(shutdown);
    let revoked = revoked(st.clone(), credential);
    tokio::pin!(revoked);
    loop {
        let (out, last) = tokio::select! {
            ev = p.next() => match ev {
                Ok(ProcessEvent::Stdout(d)) => (wire.output(mux::Kind::Stdout, d), false),
                Ok(ProcessEvent::Stderr(d)) => (wire.output(mux::Kind::Stderr, d), false),
                Ok(ProcessEvent::Exited(s)) => ((wire.event(&exit_event(conn.exit(&s))), None), true),
                Err(e) => ((wire.event(&error_event(e.into())), None), true),
            },
            _ = tx.closed() => return,
            _ = &mut shutdown => ((wire.event(&error_event(Error::new(
                WireCode::ShuttingDown,
                "the daemon is shutting down; the stream ends here",
            ))), None), true),
            e = &mut revoked => ((wire.event(&error_event(e)), None), true),
        };
        for piece in [Some(out.0), out.1].into_iter().flatten() {
            if tx.send(piece).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// `GET /v1/sandboxes/{key}/processes`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/processes",
    operation_id = "listProcesses",
    tag = "processes",
    summary = "Processes the agent started (ended ones stay until collected).",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "Processes.", body = [warren_types::proto::ProcessInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    access: SandboxAccess,
) -> Result<axum::Json<Vec<ProcessInfo>>, Error> {
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    Ok(axum::Json(conn.client().list_processes().await?))
}

/// A process the agent knows and that still runs.
async fn running(client: &AgentClient, pid: u32) -> Result<ProcessInfo, Error> {
    let p = client
        .list_processes()
        .await?
        .into_iter()
        .find(|p| p.pid == pid)
        .ok_or_else(|| Error::new(WireCode::ProcessNotFound, format!("no process {pid}")))?;
    Ok(p)
}

/// `{key}` and `{pid}`.
type ProcessPath = (String, u32);

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: i32,
}

/// `POST /v1/sandboxes/{key}/processes/{pid}/signal`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/processes/{pid}/signal",
    operation_id = "signalProcess",
    tag = "processes",
    summary = "Send a signal to a process.",
    params(
        crate::openapi::SandboxKey,
        crate::openapi::ProcessId,
    ),
    request_body(content = crate::exec::SignalRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn signal(
    State(st): State<AppState>,
    access: SandboxAccess,
    Path((_, pid)): Path<ProcessPath>,
    Json(req): Json<SignalRequest>,
) -> Result<StatusCode, Error> {
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    conn.client().signal(pid, req.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    #[schema(minimum = 1, maximum = 65535)]
    pub rows: u16,
    #[schema(minimum = 1, maximum = 65535)]
    pub cols: u16,
}

pub(crate) fn win_size(rows: u16, cols: u16) -> Result<WinSize, Error> {
    if rows == 0 || cols == 0 {
        return Err(Error::invalid("rows and cols must be at least 1"));
    }
    Ok(WinSize { rows, cols })
}

/// `POST /v1/sandboxes/{key}/processes/{pid}/resize`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/processes/{pid}/resize",
    operation_id = "resizeProcess",
    tag = "processes",
    summary = "Resize a process's terminal.",
    params(
        crate::openapi::SandboxKey,
        crate::openapi::ProcessId,
    ),
    request_body(content = crate::exec::ResizeRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn resize(
    State(st): State<AppState>,
    access: SandboxAccess,
    Path((_, pid)): Path<ProcessPath>,
    Json(req): Json<ResizeRequest>,
) -> Result<StatusCode, Error> {
    let size = win_size(req.rows, req.cols)?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    conn.client().resize(pid, size).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StdinQuery {
    /// Close stdin after writing.
    #[serde(default)]
    #[param(default = false)]
    eof: bool,
}

/// `POST /v1/sandboxes/{key}/processes/{pid}/stdin`: writes the body to the process's
/// stdin on a channel of its own, then lets go of it (the process keeps running).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/processes/{pid}/stdin",
    operation_id = "writeStdin",
    tag = "processes",
    summary = "Write the body to a process's stdin (started with stdin: true).",
    params(
        crate::openapi::SandboxKey,
        crate::openapi::ProcessId,
        StdinQuery,
    ),
    request_body(content = inline(Option<crate::openapi::Binary>), content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn stdin(
    State(st): State<AppState>,
    access: SandboxAccess,
    Path((_, pid)): Path<ProcessPath>,
    Query(q): Query<StdinQuery>,
    Body(body): Body,
) -> Result<StatusCode, Error> {
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let client = conn.client();
    let p = running(client, pid).await?;
    if p.exit.is_some() {
        return Err(Error::invalid_state(format!("process {} has ended", pid)));
    }
    let attached = Followed::attach(client, pid, false).await?;
    attached.write_stdin(&body).await?;
    if q.eof {
        attached.close_stdin().await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttachQuery {
    /// First the output since its start, as much as the agent kept.
    #[serde(default)]
    #[param(default = false)]
    replay: bool,
    /// `true` (the default) for NDJSON lines, `binary` for frames as a streamed exec's.
    #[serde(default)]
    #[param(inline)]
    stream: Option<StreamMode>,
}

/// `GET /v1/sandboxes/{key}/processes/{pid}/attach`: the same stream as a streamed exec,
/// without the `started` line.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/processes/{pid}/attach",
    operation_id = "attachProcess",
    tag = "processes",
    summary = "Follow a process's output as NDJSON ExecEvent lines, or binary frames with stream=binary (no `started` event).",
    params(
        crate::openapi::SandboxKey,
        crate::openapi::ProcessId,
        AttachQuery,
    ),
    responses(
        (status = 200, description = "stdout/stderr lines, then exit or error. Disconnecting does not stop the process.", body = warren_types::api::ExecEvent, content_type = "application/x-ndjson"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn attach(
    State(st): State<AppState>,
    access: SandboxAccess,
    Path((_, pid)): Path<ProcessPath>,
    Query(q): Query<AttachQuery>,
) -> Result<Response, Error> {
    let wire = match q.stream {
        None | Some(StreamMode::Ndjson) => Wire::Ndjson,
        Some(StreamMode::Binary) => Wire::Binary,
        Some(StreamMode::Collected) => {
            return Err(Error::invalid(
                "an attach always streams: stream=true (NDJSON) or stream=binary",
            ))
        }
    };
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    running(conn.client(), pid).await?;
    let activity = conn.hold();
    let p = Followed::attach(conn.client(), pid, q.replay).await?;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(pump(st, conn, p, wire, tx, activity, access.credential));
    Ok(wire.response(rx))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PtyQuery {
    /// Terminal rows.
    #[param(minimum = 1, default = 24)]
    #[serde(default)]
    rows: Option<u16>,
    /// Terminal columns.
    #[param(minimum = 1, default = 80)]
    #[serde(default)]
    cols: Option<u16>,
    /// Shell command line; default /bin/bash.
    #[serde(default)]
    cmd: Option<String>,
    /// Keep the command running when the WebSocket closes (it can be joined again with
    /// `pid`); the first message then names its pid.
    #[serde(default)]
    #[param(default = false)]
    keep: bool,
    /// Join the terminal of this running process instead of starting one: the output
    /// the agent still holds comes first, so the screen is drawn again.
    #[param(minimum = 1)]
    #[serde(default)]
    pid: Option<u32>,
}

/// A text message from the terminal client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PtyControl {
    pub(crate) resize: ResizeRequest,
}

#[derive(Debug, Serialize)]
pub(crate) struct PtyExit {
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) timed_out: bool,
    pub(crate) oom_killed: bool,
}

impl From<ProcessExit> for PtyExit {
    fn from(e: ProcessExit) -> Self {
        Self {
            exit_code: e.code,
            signal: e.signal,
            timed_out: e.timed_out,
            oom_killed: e.oom_killed,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PtyNotice {
    Exit(PtyExit),
    Error(warren_types::api::ApiError),
    /// First to a share's guest: whether its keys reach the process.
    Share {
        write: bool,
    },
    /// First on a kept or joined terminal: the process, to join again later.
    Process {
        pid: u32,
    },
}

/// `GET /v1/sandboxes/{key}/pty`: a terminal over a WebSocket. The command starts (or,
/// with `pid`, is found) before the upgrade, so a sandbox that cannot run it answers
/// with an HTTP error.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/pty",
    operation_id = "pty",
    tag = "processes",
    summary = "A terminal over a WebSocket.",
    description = "Upgrade to a WebSocket. Runs `cmd` (default /bin/bash) through /bin/sh -c on a new terminal of rows x cols. Binary messages from the client are keystrokes (stdin); binary messages to the client are terminal output. A text message `{\"resize\":{\"rows\":R,\"cols\":C}}` resizes. When the command ends the server sends the text message `{\"exit\":{\"exit_code\":..,\"signal\":..,\"timed_out\":..,\"oom_killed\":..}}` and closes; a problem is sent as `{\"error\":{\"code\":..,\"message\":..}}`. Closing the socket kills the command.",
    params(
        crate::openapi::SandboxKey,
        PtyQuery,
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn pty(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<PtyQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let ws =
        ws.map_err(|e| Error::with_status(e.status(), WireCode::InvalidRequest, e.body_text()))?;
    let size = win_size(q.rows.unwrap_or(24), q.cols.unwrap_or(80))?;
    if q.pid.is_some() && (q.cmd.is_some() || q.keep) {
        return Err(Error::invalid(
            "pid joins a running terminal: it takes no cmd or keep",
        ));
    }
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let activity = conn.hold();
    let client = conn.client();
    let p = match q.pid {
        Some(pid) => {
            if !running(client, pid).await?.tty {
                return Err(Error::invalid(format!(
                    "process {pid} has no terminal: follow its output with .../processes/{pid}/attach"
                )));
            }
            let p = Followed::attach(client, pid, true).await?;
            // The joining window's size, as a terminal that starts takes its own.
            client.resize(pid, size).await.map_err(Error::from)?;
            p
        }
        None => {
            let req = ExecRequest {
                command: Some(Command::Shell(
                    q.cmd.unwrap_or_else(|| "/bin/bash".to_string()),
                )),
                tty: Some(size),
                stdin: true,
                background: q.keep,
                ..ExecRequest::default()
            };
            Followed::exec(client, req).await?
        }
    };
    let named = q.keep || q.pid.is_some();
    Ok(ws.on_upgrade(move |mut socket| async move {
        let _activity = activity;
        let mut p = p;
        if named {
            notice(&mut socket, &PtyNotice::Process { pid: p.pid }).await;
        }
        let shutdown = shutting_down(st.shutdown.clone());
        let revoked = revoked(st.clone(), access.credential);
        let rules = TerminalRules {
            input: Input::Forward {
                report_failures: true,
            },
            cut_off: async {
                tokio::select! {
                    _ = shutdown => {
                        Error::new(WireCode::ShuttingDown, "the daemon is shutting down")
                    }
                    e = revoked => e,
                }
            },
            close_wait: Some(Duration::from_secs(2)),
        };
        terminal(&conn, &mut p, socket, rules).await;
    }))
}

pub(crate) async fn notice(socket: &mut WebSocket, n: &PtyNotice) {
    let text = serde_json::to_string(n).unwrap_or_default();
    let _ = socket.send(Message::Text(text.into())).await;
}

/// The process behind a terminal: the owner's own `/pty` exec, or the process a share's
/// guest attached to. Both take input through a [`Stdin`], which waits for the agent's
/// credit on the process's channel.
pub(crate) trait TerminalProcess {
    async fn next(&mut self) -> Result<ProcessEvent, ClientError>;
    /// Its stdin, written from a task of its own.
    fn stdin(&self) -> Option<Stdin>;
    async fn resize(&self, size: WinSize) -> Result<(), ClientError>;
}

impl TerminalProcess for Followed {
    async fn next(&mut self) -> Result<ProcessEvent, ClientError> {
        Followed::next(self).await
    }

    fn stdin(&self) -> Option<Stdin> {
        Followed::stdin(self)
    }

    async fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        Followed::resize(self, size).await
    }
}

impl TerminalProcess for Process {
    async fn next(&mut self) -> Result<ProcessEvent, ClientError> {
        Process::next(self).await
    }

    fn stdin(&self) -> Option<Stdin> {
        Some(Stdin(self.sender()))
    }

    async fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        Process::resize(self, size).await
    }
}

/// What a terminal client's binary frames (input) and text frames (resizes) come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// Passed to the process. A write the agent refuses ends the session; with
    /// `report_failures` the client is told why, and of a refused resize too (otherwise
    /// that is ignored).
    Forward { report_failures: bool },
    /// Refused with a `read_only` notice each time: a read-only guest's.
    Refuse,
}

/// Where the owner's terminal and a share guest's differ.
pub(crate) struct TerminalRules<C> {
    pub(crate) input: Input,
    /// Resolves, to the error the client is told, when the session must end before the
    /// process does: the daemon shutting down, or the share revoked.
    pub(crate) cut_off: C,
    /// How long to wait for the client's close frame after sending ours, so that ours
    /// leaves before the socket is dropped.
    pub(crate) close_wait: Option<Duration>,
}

/// Keystroke messages queued for a terminal's process before the client's next
/// messages wait (TCP then slows it down).
const TERMINAL_INPUT_QUEUE: usize = 64;

/// Runs a terminal WebSocket: process output to the client, the client's input and
/// resizes to the process, and a notice of the exit or error that ends it. A client
/// that leaves gets no close frame. Input goes to the process from a task of its own:
/// its writes wait for the agent's credit while the process is not reading, and a paste
/// it is not reading must not hold up its output here, nor a Ctrl-C behind it (which
/// reaches the process once the paste is taken).
pub(crate) async fn terminal<C: Future<Output = Error>>(
    conn: &AgentConn,
    p: &mut impl TerminalProcess,
    mut socket: WebSocket,
    rules: TerminalRules<C>,
) {
    let TerminalRules {
        input,
        cut_off,
        close_wait,
    } = rules;
    tokio::pin!(cut_off);
    let (keys, mut queue) = mpsc::channel::<Bytes>(TERMINAL_INPUT_QUEUE);
    let stdin = p.stdin();
    // Ends only when a write fails: a closed queue means the session is over.
    let mut writer = AbortOnDropHandle::new(tokio::spawn(async move {
        if let Some(stdin) = stdin {
            while let Some(b) = queue.recv().await {
                stdin.write(&b).await?;
            }
        }
        std::future::pending::<Result<(), ClientError>>().await
    }));
    loop {
        tokio::select! {
            msg = socket.recv(), if keys.capacity() > 0 => match msg {
                Some(Ok(Message::Binary(b))) => match input {
                    Input::Refuse => refuse(&mut socket, "input").await,
                    Input::Forward { .. } => {
                        let _ = keys.try_send(b);
                    }
                },
                Some(Ok(Message::Text(t))) => match input {
                    Input::Refuse => refuse(&mut socket, "a resize").await,
                    Input::Forward { report_failures } => {
                        let size = serde_json::from_str::<PtyControl>(t.as_str())
                            .map_err(|e| Error::invalid_json(e.to_string()))
                            .and_then(|c| win_size(c.resize.rows, c.resize.cols));
                        match size {
                            Ok(size) => {
                                if let Err(e) = p.resize(size).await {
                                    if report_failures {
                                        let e = Error::from(e);
                                        notice(&mut socket, &PtyNotice::Error(e.body())).await;
                                    }
                                }
                            }
                            Err(e) => notice(&mut socket, &PtyNotice::Error(e.body())).await,
                        }
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            ev = p.next() => match ev {
                Ok(ProcessEvent::Stdout(d) | ProcessEvent::Stderr(d)) => {
                    if socket.send(Message::Binary(d.into())).await.is_err() {
                        return;
                    }
                }
                Ok(ProcessEvent::Exited(s)) => {
                    let exit = PtyExit::from(conn.exit(&s));
                    notice(&mut socket, &PtyNotice::Exit(exit)).await;
                    break;
                }
                Err(e) => {
                    notice(&mut socket, &PtyNotice::Error(Error::from(e).body())).await;
                    break;
                }
            },
            e = &mut cut_off => {
                notice(&mut socket, &PtyNotice::Error(e.body())).await;
                break;
            }
            written = &mut writer => {
                if let (Ok(Err(e)), Input::Forward { report_failures: true }) = (written, input) {
                    notice(&mut socket, &PtyNotice::Error(Error::from(e).body())).await;
                }
                break;
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    let Some(wait) = close_wait else {
        return;
    };
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn refuse(socket: &mut WebSocket, what: &str) {
    let e = Error::new(
        WireCode::ReadOnly,
        format!("this share is read-only: {what} is ignored"),
    );
    notice(socket, &PtyNotice::Error(e.body())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_what_serde_json_and_base64_write() {
        let mut samples: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"plain text\n".to_vec(),
            b"\"quoted\" \\ back\tslash\r\n\x08\x0c".to_vec(),
            (0u8..=255).collect(),
            "ünïcödé ✓ 😀".as_bytes().to_vec(),
            vec![0xff, 0xfe, b'a', 0xc3],
        ];
        samples.push(samples.concat());
        for data in samples {
            let json = serde_json::to_string(&String::from_utf8_lossy(&data)).unwrap();
            let sent = json.len() - 2 + B64.encode(&data).len();
            assert_eq!(encoded_len(&data), sent, "{data:?}");
        }
    }
}
