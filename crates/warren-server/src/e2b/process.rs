//! envd's `process.Process` service on the agent's processes.
//!
//! The mapping follows envd's semantics rather than the native API's:
//!
//! - Every process is started *background* on the agent: in E2B a process outlives the
//!   stream that started it (a client that disconnects reattaches with `Connect`),
//!   and only its `Connect-Timeout-Ms` deadline, which envd applies to the process
//!   itself, kills it. That deadline becomes the agent's `timeout_ms`.
//! - A stream opens with a `start` event naming the pid, carries `data` events
//!   (stdout, stderr, or `pty` for a terminal) and `keepalive`s at the interval the
//!   client asks for in `Keepalive-Ping-Interval`, and closes with an `end` event:
//!   `exitCode`, `exited`, and `status` worded like Go's `ProcessState` ("exit status
//!   1", "signal: killed"), which the SDK shows.
//! - Input, stdin closing, signals and resizes are separate unary calls naming the
//!   process by pid (or by the tag it was started with); each attaches to the process
//!   on the agent for just that call.
//! - Only running processes are listed and reachable: the agent keeps ended ones until
//!   collected, envd forgets them at once.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use warren_agent::client::{AgentClient, ClientError, ProcessEvent};
use warren_core::ActivityGuard;
use warren_types::proto::{Command, ExecRequest, ExitStatus, ProcessInfo as AgentProcess, WinSize};

use super::connect::{self, failure, lenient_u32, message, ok, Code, Rpc, RpcError};
use super::envd::Envd;
use super::E2bState;
use crate::exec::Followed;
use crate::extract::Path;
use crate::shutting_down;

/// Keepalive interval when the client names none.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// Envelopes queued between a stream's task and the HTTP body.
const STREAM_QUEUE: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Size {
    #[serde(deserialize_with = "lenient_u32::deserialize")]
    cols: Option<u32>,
    #[serde(deserialize_with = "lenient_u32::deserialize")]
    rows: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<Size>,
}

impl Pty {
    fn win_size(&self) -> Result<WinSize, RpcError> {
        let size = self.size.as_ref();
        let rows = size.and_then(|s| s.rows).unwrap_or(24);
        let cols = size.and_then(|s| s.cols).unwrap_or(80);
        let fit = |n: u32| u16::try_from(n).ok().filter(|n| *n > 0);
        match (fit(rows), fit(cols)) {
            (Some(rows), Some(cols)) => Ok(WinSize { rows, cols }),
            _ => Err(RpcError::invalid("pty rows and cols must be 1 to 65535")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: Option<ProcessConfig>,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    #[serde(deserialize_with = "lenient_u32::deserialize")]
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selected {
    process: Option<Selector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Option<Selector>,
    input: Option<Input>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SignalValue {
    Name(String),
    Number(i32),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Option<Selector>,
    signal: Option<SignalValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Option<Selector>,
    pty: Option<Pty>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigOut {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct ProcessOut {
    config: ConfigOut,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

/// `POST /process.Process/{method}`.
pub(super) async fn call(
    State(st): State<E2bState>,
    Path(method): Path<String>,
    env: Envd,
    req: Request,
) -> Response {
    let keepalive = keepalive(req.headers());
    match method.as_str() {
        "Start" => match Rpc::from_request(req, &()).await {
            Ok(rpc) => start(&st, &env, rpc, keepalive).await,
            Err(e) => failure(true, e),
        },
        "Connect" => match Rpc::from_request(req, &()).await {
            Ok(rpc) => reconnect(&st, &env, rpc, keepalive).await,
            Err(e) => failure(true, e),
        },
        "List" => unary(req, |_: Selected| list(&st, &env)).await,
        "SendInput" => unary(req, |r: SendInputRequest| send_input(&st, &env, r)).await,
        "CloseStdin" => unary(req, |r: Selected| close_stdin(&st, &env, r)).await,
        "SendSignal" => unary(req, |r: SendSignalRequest| send_signal(&st, &env, r)).await,
        "Update" => unary(req, |r: UpdateRequest| update(&st, &env, r)).await,
        "StreamInput" => failure(
            false,
            RpcError::new(
                Code::Unimplemented,
                "StreamInput needs a client stream, which Warren does not serve; use SendInput",
            ),
        ),
        other => failure(
            false,
            RpcError::new(
                Code::Unimplemented,
                format!("process.Process/{other} is not a method"),
            ),
        ),
    }
}

/// Decodes a unary request, runs `f`, and answers its message or error.
pub(super) async fn unary<T, F, Fut>(req: Request, f: F) -> Response
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, RpcError>>,
{
    let rpc: Rpc<T> = match Rpc::from_request(req, &()).await {
        Ok(r) => r,
        Err(e) => return failure(false, e),
    };
    if rpc.streaming {
        return failure(true, RpcError::invalid("this method is unary"));
    }
    match f(rpc.msg).await {
        Ok(v) => ok(&v),
        Err(e) => failure(false, e),
    }
}

/// The keepalive interval a streaming client asks for, in seconds.
pub(super) fn keepalive(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.min(3600)))
        .unwrap_or(DEFAULT_KEEPALIVE)
}

async fn start(st: &E2bState, env: &Envd, rpc: Rpc<StartRequest>, keepalive: Duration) -> Response {
    if !rpc.streaming {
        return failure(
            false,
            RpcError::invalid("Start is a server-streaming method"),
        );
    }
    match start_stream(st, env, rpc, keepalive).await {
        Ok(r) => r,
        Err(e) => failure(true, e),
    }
}

async fn start_stream(
    st: &E2bState,
    env: &Envd,
    rpc: Rpc<StartRequest>,
    keepalive: Duration,
) -> Result<Response, RpcError> {
    let msg = rpc.msg;
    let cfg = msg
        .process
        .ok_or_else(|| RpcError::invalid("process is required"))?;
    if cfg.cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd is required"));
    }
    let tty = msg.pty.as_ref().map(Pty::win_size).transpose()?;
    let cwd = cfg
        .cwd
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| env.path(c))
        .transpose()?;
    let mut argv = vec![cfg.cmd];
    argv.extend(cfg.args);
    let req = ExecRequest {
        command: Some(Command::Argv(argv)),
        env: cfg.envs,
        cwd: cwd.or_else(|| Some(env.home())),
        user: env.exec_user(),
        tty,
        // Older clients expect stdin open unless they say otherwise; a terminal always
        // takes input.
        stdin: tty.is_some() || msg.stdin.unwrap_or(true),
        timeout_ms: rpc.timeout_ms.filter(|t| *t > 0),
        background: true,
        tag: msg.tag,
    };
    let conn = st.mgr.agent(&env.caller, &env.id).await?;
    let activity = conn.hold();
    let p = Followed::exec(conn.client(), req).await?;
    Ok(follow(st, p, tty.is_some(), keepalive, activity))
}

/// Streams a followed process's events as envd does, `start` first.
fn follow(
    st: &E2bState,
    p: Followed,
    tty: bool,
    keepalive: Duration,
    activity: Option<ActivityGuard>,
) -> Response {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(pump(st.clone(), p, tx, tty, keepalive, activity));
    connect::stream(rx)
}

fn event(ev: serde_json::Value) -> Bytes {
    message(&json!({ "event": ev }))
}

/// How a process ended, in envd's words.
fn end_status(s: &ExitStatus) -> String {
    end_event(s)["end"]["status"]
        .as_str()
        .unwrap_or("unknown")
        .to_string()
}

/// envd's end event for an exit status.
fn end_event(s: &ExitStatus) -> serde_json::Value {
    match (s.code, s.signal) {
        (Some(code), _) => {
            json!({"end": {"exitCode": code, "exited": true, "status": format!("exit status {code}")}})
        }
        (None, Some(sig)) => {
            json!({"end": {"exitCode": -1, "exited": false, "status": format!("signal: {}", signal_name(sig))}})
        }
        (None, None) => json!({"end": {"exitCode": -1, "exited": false, "status": "unknown"}}),
    }
}

/// Go's wording of a few signals (what envd reports); others by number.
fn signal_name(sig: i32) -> String {
    match sig {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        9 => "killed".into(),
        13 => "broken pipe".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    }
}

async fn pump(
    st: E2bState,
    mut p: Followed,
    tx: mpsc::Sender<Bytes>,
    tty: bool,
    keepalive: Duration,
    _activity: Option<ActivityGuard>,
) {
    if tx
        .send(event(json!({"start": {"pid": p.pid}})))
        .await
        .is_err()
    {
        return;
    }
    let shutdown = shutting_down(st.shutdown.clone());
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    loop {
        let (out, last) = tokio::select! {
            ev = p.next() => match ev {
                Ok(ProcessEvent::Stdout(d)) => {
                    let field = if tty { "pty" } else { "stdout" };
                    (vec![event(json!({"data": {field: connect::encode_bytes(&d)}}))], false)
                }
                Ok(ProcessEvent::Stderr(d)) => {
                    (vec![event(json!({"data": {"stderr": connect::encode_bytes(&d)}}))], false)
                }
                // As envd: a process its deadline ended fails the call, which the
                // SDK raises as its timeout.
                Ok(ProcessEvent::Exited(s)) if s.timed_out => {
                    let e = RpcError::new(
                        Code::DeadlineExceeded,
                        format!("the command ran past its deadline and was killed ({})", end_status(&s)),
                    );
                    (vec![connect::end(Some(&e))], true)
                }
                Ok(ProcessEvent::Exited(s)) => (vec![event(end_event(&s)), connect::end(None)], true),
                // The sandbox (its agent) went away under the stream.
                Err(ClientError::Closed | ClientError::Connect(_)) => {
                    (vec![connect::drop_connection()], true)
                }
                Err(e) => (vec![connect::end(Some(&RpcError::from(e)))], true),
            },
            _ = ticks.tick() => (vec![event(json!({"keepalive": {}}))], false),
            _ = tx.closed() => return,
            _ = &mut shutdown => {
                let e = RpcError::new(Code::Unavailable, "the daemon is shutting down; reconnect to the process");
                (vec![connect::end(Some(&e))], true)
            }
        };
        for b in out {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

fn not_found(what: impl std::fmt::Display) -> RpcError {
    RpcError::new(Code::NotFound, format!("process {what} not found"))
}

/// The running process a selector names.
async fn running(client: &AgentClient, sel: Option<&Selector>) -> Result<AgentProcess, RpcError> {
    let sel = sel.ok_or_else(|| RpcError::invalid("process is required"))?;
    let list = client.list_processes().await?;
    let found = match (&sel.pid, &sel.tag) {
        (Some(pid), _) => list.into_iter().find(|p| p.pid == *pid && p.exit.is_none()),
        (None, Some(tag)) => list
            .into_iter()
            .find(|p| p.tag.as_ref() == Some(tag) && p.exit.is_none()),
        (None, None) => return Err(RpcError::invalid("name the process by pid or tag")),
    };
    found.ok_or_else(|| match (&sel.pid, &sel.tag) {
        (Some(pid), _) => not_found(format!("with pid {pid}")),
        (_, Some(tag)) => not_found(format!("with tag {tag:?}")),
        _ => not_found(""),
    })
}

async fn reconnect(st: &E2bState, env: &Envd, rpc: Rpc<Selected>, keepalive: Duration) -> Response {
    if !rpc.streaming {
        return failure(
            false,
            RpcError::invalid("Connect is a server-streaming method"),
        );
    }
    let result = async {
        let conn = st.mgr.agent(&env.caller, &env.id).await?;
        let p = running(conn.client(), rpc.msg.process.as_ref()).await?;
        let activity = conn.hold();
        let followed = Followed::attach(conn.client(), p.pid, false).await?;
        Ok::<_, RpcError>(follow(st, followed, p.tty, keepalive, activity))
    }
    .await;
    result.unwrap_or_else(|e| failure(true, e))
}

fn config_of(p: &AgentProcess) -> ConfigOut {
    let (cmd, args) = match &p.command {
        Command::Argv(v) => (
            v.first().cloned().unwrap_or_default(),
            v.iter().skip(1).cloned().collect(),
        ),
        Command::Shell(s) => ("/bin/sh".to_string(), vec!["-c".to_string(), s.clone()]),
    };
    ConfigOut {
        cmd,
        args,
        envs: BTreeMap::new(),
    }
}

async fn list(st: &E2bState, env: &Envd) -> Result<serde_json::Value, RpcError> {
    let client = env.agent(st).await?;
    let list: Vec<ProcessOut> = client
        .list_processes()
        .await?
        .iter()
        .filter(|p| p.exit.is_none())
        .map(|p| ProcessOut {
            config: config_of(p),
            pid: p.pid,
            tag: p.tag.clone(),
        })
        .collect();
    Ok(json!({ "processes": list }))
}

async fn send_input(
    st: &E2bState,
    env: &Envd,
    r: SendInputRequest,
) -> Result<serde_json::Value, RpcError> {
    let input = r.input.unwrap_or_default();
    let data = match (&input.stdin, &input.pty) {
        (Some(d), _) | (None, Some(d)) => connect::decode_bytes(d)?,
        (None, None) => Vec::new(),
    };
    let client = env.agent(st).await?;
    let p = running(&client, r.process.as_ref()).await?;
    if !data.is_empty() {
        let attached = Followed::attach(&client, p.pid, false).await?;
        attached.write_stdin(&data).await?;
    }
    Ok(json!({}))
}

async fn close_stdin(
    st: &E2bState,
    env: &Envd,
    r: Selected,
) -> Result<serde_json::Value, RpcError> {
    let client = env.agent(st).await?;
    let p = running(&client, r.process.as_ref()).await?;
    if p.tty {
        return Err(RpcError::new(
            Code::FailedPrecondition,
            "a terminal has no stdin to close; send Ctrl-D (0x04) instead",
        ));
    }
    let attached = Followed::attach(&client, p.pid, false).await?;
    attached.close_stdin().await?;
    Ok(json!({}))
}

fn signal_number(v: Option<&SignalValue>) -> Result<i32, RpcError> {
    match v {
        Some(SignalValue::Name(n)) if n == "SIGNAL_SIGKILL" => Ok(SIGKILL),
        Some(SignalValue::Name(n)) if n == "SIGNAL_SIGTERM" => Ok(15),
        Some(SignalValue::Number(n)) if *n == 9 || *n == 15 => Ok(*n),
        _ => Err(RpcError::invalid(
            "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM",
        )),
    }
}

async fn send_signal(
    st: &E2bState,
    env: &Envd,
    r: SendSignalRequest,
) -> Result<serde_json::Value, RpcError> {
    let sig = signal_number(r.signal.as_ref())?;
    let client = env.agent(st).await?;
    let p = running(&client, r.process.as_ref()).await?;
    client.signal(p.pid, sig).await?;
    if sig == SIGKILL {
        // `kill()` in the SDK means killed: answer once the process is gone (it cannot
        // ignore SIGKILL), so a `list` or a second `kill` right after sees it so.
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        let sel = Selector {
            pid: Some(p.pid),
            tag: None,
        };
        while running(&client, Some(&sel)).await.is_ok() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(json!({}))
}

const SIGKILL: i32 = 9;

/// Longest wait for a SIGKILLed process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

async fn update(
    st: &E2bState,
    env: &Envd,
    r: UpdateRequest,
) -> Result<serde_json::Value, RpcError> {
    let Some(pty) = r.pty.as_ref() else {
        return Ok(json!({}));
    };
    let size = pty.win_size()?;
    let client = env.agent(st).await?;
    let p = running(&client, r.process.as_ref()).await?;
    if !p.tty {
        return Err(RpcError::new(
            Code::FailedPrecondition,
            format!("process {} has no terminal to resize", p.pid),
        ));
    }
    client.resize(p.pid, size).await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2b::connect::decode;

    #[test]
    fn start_requests_parse_like_protobuf_json() {
        let r: StartRequest = decode(
            br#"{"process":{"cmd":"/bin/bash","args":["-l","-c","true"],"envs":{"A":"1"}},"pty":{"size":{"cols":80,"rows":"24"}},"stdin":false,"unknownField":1}"#,
        )
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args.len(), 3);
        assert_eq!(
            r.pty.unwrap().win_size().unwrap(),
            WinSize { rows: 24, cols: 80 }
        );
        assert_eq!(r.stdin, Some(false));
    }

    #[test]
    fn end_events_read_like_go() {
        let s = |code, signal| ExitStatus {
            code,
            signal,
            timed_out: false,
        };
        assert_eq!(
            end_event(&s(Some(1), None))["end"]["status"],
            "exit status 1"
        );
        assert_eq!(
            end_event(&s(None, Some(9)))["end"]["status"],
            "signal: killed"
        );
        assert_eq!(end_event(&s(None, Some(9)))["end"]["exitCode"], -1);
    }

    #[test]
    fn signals_are_the_two_envd_knows() {
        assert_eq!(
            signal_number(Some(&SignalValue::Name("SIGNAL_SIGKILL".into()))).unwrap(),
            9
        );
        assert_eq!(signal_number(Some(&SignalValue::Number(15))).unwrap(), 15);
        assert!(signal_number(Some(&SignalValue::Number(3))).is_err());
        assert!(signal_number(None).is_err());
    }
}
