//! envd's `filesystem.Filesystem` service on the agent's file operations.
//!
//! Entries are described the way envd describes them: absolute paths, a type enum, the
//! size as a protobuf int64 (a JSON string), owner and group by name, permissions as
//! Go prints a file mode (`-rw-r--r--`), and the modification time in RFC 3339.
//!
//! Watches come in two forms. `WatchDir` is a server stream over one agent watch.
//! The polling form (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`), which the
//! sync SDK uses because it cannot hold a stream open between calls, keeps the agent
//! watch in a task that buffers its events until the client collects them; the
//! watcher lives until removed or until its sandbox goes, and a sandbox has a bounded
//! number of them, each with a bounded buffer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warren_runtime::client::{AgentClient, Channel, ClientError, Incoming};
use warren_types::proto::{
    ErrorCode, FileInfo, FileType, Request as AgentRequest, Response as AgentResponse, User,
    WatchKind,
};

use super::connect::{self, failure, lenient_u32, message, Code, Rpc, RpcError};
use super::envd::Envd;
use super::process::{keepalive, unary};
use super::E2bState;
use crate::extract::Path;
use crate::shutting_down;

/// Deepest listing, as the native API.
const MAX_DEPTH: u32 = crate::files::MAX_DEPTH;
/// Polling watchers one sandbox may hold.
const MAX_WATCHERS: usize = 64;
/// Events a polling watcher keeps between collections; older ones are dropped.
const MAX_BUFFERED: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PathRequest {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MoveRequest {
    source: String,
    destination: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListDirRequest {
    path: String,
    #[serde(deserialize_with = "lenient_u32::deserialize")]
    depth: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatchRequest {
    path: String,
    recursive: bool,
    include_entry: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatcherRequest {
    watcher_id: String,
}

/// A polling watcher: its sandbox, its buffered events, and the task feeding them.
#[derive(Debug)]
pub(crate) struct Watcher {
    sandbox: String,
    events: Arc<Mutex<Vec<Value>>>,
    /// Set when the agent's watch ended (the directory went, the sandbox stopped).
    ended: Arc<Mutex<Option<RpcError>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `POST /filesystem.Filesystem/{method}`.
pub(super) async fn call(
    State(st): State<E2bState>,
    Path(method): Path<String>,
    env: Envd,
    req: Request,
) -> Response {
    match method.as_str() {
        "Stat" => unary(req, |r: PathRequest| stat(&st, &env, r)).await,
        "MakeDir" => unary(req, |r: PathRequest| make_dir(&st, &env, r)).await,
        "Move" => unary(req, |r: MoveRequest| rename(&st, &env, r)).await,
        "ListDir" => unary(req, |r: ListDirRequest| list_dir(&st, &env, r)).await,
        "Remove" => unary(req, |r: PathRequest| remove(&st, &env, r)).await,
        "CreateWatcher" => unary(req, |r: WatchRequest| create_watcher(&st, &env, r)).await,
        "GetWatcherEvents" => unary(req, |r: WatcherRequest| watcher_events(&st, &env, r)).await,
        "RemoveWatcher" => unary(req, |r: WatcherRequest| remove_watcher(&st, &env, r)).await,
        "WatchDir" => {
            let interval = keepalive(req.headers());
            match Rpc::<WatchRequest>::from_request(req, &()).await {
                Ok(rpc) if rpc.streaming => watch_dir(&st, &env, rpc.msg, interval)
                    .await
                    .unwrap_or_else(|e| failure(true, e)),
                Ok(_) => failure(
                    false,
                    RpcError::invalid("WatchDir is a server-streaming method"),
                ),
                Err(e) => failure(true, e),
            }
        }
        other => failure(
            false,
            RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{other} is not a method"),
            ),
        ),
    }
}

fn user_name(id: u32) -> String {
    match id {
        0 => "root".into(),
        1000 => "user".into(),
        65534 => "nobody".into(),
        n => n.to_string(),
    }
}

fn group_name(id: u32) -> String {
    match id {
        0 => "root".into(),
        1000 => "user".into(),
        65534 => "nogroup".into(),
        n => n.to_string(),
    }
}

/// A mode as Go's `FileMode.String` prints it.
fn permissions(t: FileType, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match t {
        FileType::Dir => 'd',
        FileType::Symlink => 'L',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn entry(i: &FileInfo) -> Value {
    let kind = match i.file_type {
        FileType::File => "FILE_TYPE_FILE",
        FileType::Dir => "FILE_TYPE_DIRECTORY",
        FileType::Symlink => "FILE_TYPE_SYMLINK",
        FileType::Other => "FILE_TYPE_UNSPECIFIED",
    };
    let mut v = json!({
        "name": i.name,
        "type": kind,
        "path": i.path,
        "size": i.size.to_string(),
        "mode": i.mode,
        "permissions": permissions(i.file_type, i.mode),
        "owner": user_name(i.uid),
        "group": group_name(i.gid),
        "modifiedTime": warren_core::rfc3339(i.modified.saturating_mul(1000)),
    });
    if let Some(t) = &i.symlink_target {
        v["symlinkTarget"] = json!(t);
    }
    v
}

async fn stat(st: &E2bState, env: &Envd, r: PathRequest) -> Result<Value, RpcError> {
    let path = env.path(&r.path)?;
    let client = env.agent(st).await?;
    let info = client
        .stat_as(path.as_str(), env.fs_user().as_ref())
        .await?;
    Ok(json!({ "entry": entry(&info) }))
}

async fn make_dir(st: &E2bState, env: &Envd, r: PathRequest) -> Result<Value, RpcError> {
    let path = env.path(&r.path)?;
    let client = env.agent(st).await?;
    let user = env.fs_user();
    client
        .make_dir_as(path.as_str(), None, user.as_ref())
        .await
        .map_err(|e| match e {
            ClientError::Agent {
                code: ErrorCode::AlreadyExists,
                ..
            } => RpcError::new(Code::AlreadyExists, format!("path {path} already exists")),
            e => e.into(),
        })?;
    let info = client.stat_as(path.as_str(), user.as_ref()).await?;
    Ok(json!({ "entry": entry(&info) }))
}

async fn rename(st: &E2bState, env: &Envd, r: MoveRequest) -> Result<Value, RpcError> {
    let (from, to) = (env.path(&r.source)?, env.path(&r.destination)?);
    let client = env.agent(st).await?;
    let user = env.fs_user();
    client
        .rename_as(from.as_str(), to.as_str(), user.as_ref())
        .await?;
    let info = client.stat_as(to.as_str(), user.as_ref()).await?;
    Ok(json!({ "entry": entry(&info) }))
}

async fn list_dir(st: &E2bState, env: &Envd, r: ListDirRequest) -> Result<Value, RpcError> {
    let path = env.path(&r.path)?;
    let depth = r.depth.unwrap_or(1).max(1);
    if depth > MAX_DEPTH {
        return Err(RpcError::invalid(format!("depth must be 1 to {MAX_DEPTH}")));
    }
    let client = env.agent(st).await?;
    let user = env.fs_user();
    let info = client.stat_as(path.as_str(), user.as_ref()).await?;
    if info.file_type != FileType::Dir {
        return Err(RpcError::invalid(format!("path {path} is not a directory")));
    }
    let entries: Vec<Value> = client
        .list_dir_as(path.as_str(), depth, user.as_ref())
        .await?
        .iter()
        .map(entry)
        .collect();
    Ok(json!({ "entries": entries }))
}

async fn remove(st: &E2bState, env: &Envd, r: PathRequest) -> Result<Value, RpcError> {
    let path = env.path(&r.path)?;
    let client = env.agent(st).await?;
    client
        .remove_as(path.as_str(), true, env.fs_user().as_ref())
        .await?;
    Ok(json!({}))
}

/// An agent watch event as envd's `FilesystemEvent`: the name is relative to the
/// watched directory.
fn fs_event(root: &str, kind: WatchKind, path: &str) -> Value {
    let name = path
        .strip_prefix(root)
        .map(|r| r.trim_start_matches('/'))
        .filter(|r| !r.is_empty())
        .unwrap_or(path);
    let kind = match kind {
        WatchKind::Create => "EVENT_TYPE_CREATE",
        WatchKind::Write => "EVENT_TYPE_WRITE",
        WatchKind::Remove => "EVENT_TYPE_REMOVE",
        WatchKind::Rename => "EVENT_TYPE_RENAME",
        WatchKind::Chmod => "EVENT_TYPE_CHMOD",
    };
    json!({"name": name, "type": kind})
}

/// The agent's uploads land through a hidden temporary file renamed into place; its
/// events are the agent's business, not the watcher's.
const UPLOAD_MARK: &str = ".warren-upload-";

/// The next event of an agent watch; `Err` when the watch ended.
///
/// inotify's "moved" events say nothing about the direction; envd (through fsnotify)
/// reports a file moved *into* the directory as created and one moved away as
/// renamed. Whether the path still exists tells which.
async fn next_event(
    ch: &mut Channel,
    client: &AgentClient,
    user: Option<&User>,
    root: &str,
) -> Result<Value, RpcError> {
    loop {
        match ch.recv().await {
            Some(Incoming::Control(AgentResponse::WatchEvent { kind, path, .. })) => {
                if path.contains(UPLOAD_MARK) {
                    continue;
                }
                let kind = match kind {
                    WatchKind::Rename if client.stat_as(path.as_str(), user).await.is_ok() => {
                        WatchKind::Create
                    }
                    k => k,
                };
                return Ok(fs_event(root, kind, &path));
            }
            Some(Incoming::Control(AgentResponse::Error { code, message })) => {
                return Err(warren_runtime::client::ClientError::Agent { code, message }.into())
            }
            Some(_) => continue,
            None => {
                return Err(RpcError::new(
                    Code::Unavailable,
                    "the watch ended: the sandbox stopped",
                ))
            }
        }
    }
}

/// Starts an agent watch, as the caller, on a directory of the caller's sandbox.
async fn open_watch(
    st: &E2bState,
    env: &Envd,
    r: &WatchRequest,
) -> Result<(String, Channel, AgentClient), RpcError> {
    if r.include_entry {
        return Err(RpcError::new(
            Code::Unimplemented,
            "watch events with entry info are not supported by Warren",
        ));
    }
    let path = env.path(&r.path)?;
    let client = env.agent(st).await?;
    let user = env.fs_user();
    let info = client.stat_as(path.as_str(), user.as_ref()).await?;
    if info.file_type != FileType::Dir {
        return Err(RpcError::invalid(format!("path {path} is not a directory")));
    }
    let ch = client
        .watch_as(path.as_str(), r.recursive, user.as_ref())
        .await?;
    Ok((path, ch, client))
}

async fn watch_dir(
    st: &E2bState,
    env: &Envd,
    r: WatchRequest,
    interval: Duration,
) -> Result<Response, RpcError> {
    let (root, mut ch, client) = open_watch(st, env, &r).await?;
    let user = env.fs_user();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let shutdown = shutting_down(st.shutdown.clone());
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        if tx.send(message(&json!({"start": {}}))).await.is_err() {
            return;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let (b, last) = tokio::select! {
                ev = next_event(&mut ch, &client, user.as_ref(), &root) => match ev {
                    Ok(ev) => (message(&json!({"filesystem": ev})), false),
                    Err(e) => (connect::end(Some(&e)), true),
                },
                _ = ticks.tick() => (message(&json!({"keepalive": {}})), false),
                _ = tx.closed() => break,
                _ = &mut shutdown => (connect::end(Some(&RpcError::new(Code::Unavailable, "the daemon is shutting down"))), true),
            };
            if tx.send(b).await.is_err() || last {
                break;
            }
        }
        let _ = ch.send(&AgentRequest::Cancel).await;
    });
    Ok(connect::stream(rx))
}

fn watchers(
    st: &E2bState,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Watcher>> {
    st.watchers.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_watcher_id() -> Result<String, RpcError> {
    warren_types::random::hex(12).map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))
}

async fn create_watcher(st: &E2bState, env: &Envd, r: WatchRequest) -> Result<Value, RpcError> {
    // A watcher whose watch ended (its sandbox went) and whose events were collected is
    // dropped here, so none outlives its sandbox by more than the next create.
    watchers(st).retain(|_, w| {
        !w.task.is_finished()
            || !w
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    });
    let count = watchers(st)
        .values()
        .filter(|w| w.sandbox == env.id)
        .count();
    if count >= MAX_WATCHERS {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("a sandbox may have {MAX_WATCHERS} watchers; remove some first"),
        ));
    }
    let (root, mut ch, client) = open_watch(st, env, &r).await?;
    let user = env.fs_user();
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let ended: Arc<Mutex<Option<RpcError>>> = Arc::default();
    let (ev, end) = (events.clone(), ended.clone());
    let task = tokio::spawn(async move {
        loop {
            match next_event(&mut ch, &client, user.as_ref(), &root).await {
                Ok(e) => {
                    let mut evs = ev.lock().unwrap_or_else(|p| p.into_inner());
                    if evs.len() >= MAX_BUFFERED {
                        evs.remove(0);
                    }
                    evs.push(e);
                }
                Err(e) => {
                    *end.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return;
                }
            }
        }
    });
    let id = new_watcher_id()?;
    watchers(st).insert(
        id.clone(),
        Watcher {
            sandbox: env.id.clone(),
            events,
            ended,
            task: task.abort_handle(),
        },
    );
    Ok(json!({ "watcherId": id }))
}

fn no_watcher(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("watcher {id} not found"))
}

async fn watcher_events(st: &E2bState, env: &Envd, r: WatcherRequest) -> Result<Value, RpcError> {
    let w = watchers(st);
    let w = w
        .get(&r.watcher_id)
        .filter(|w| w.sandbox == env.id)
        .ok_or_else(|| no_watcher(&r.watcher_id))?;
    let events: Vec<Value> =
        std::mem::take(&mut *w.events.lock().unwrap_or_else(|p| p.into_inner()));
    if events.is_empty() {
        if let Some(e) = w.ended.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(e);
        }
    }
    Ok(json!({ "events": events }))
}

async fn remove_watcher(st: &E2bState, env: &Envd, r: WatcherRequest) -> Result<Value, RpcError> {
    let mut w = watchers(st);
    match w.get(&r.watcher_id) {
        Some(found) if found.sandbox == env.id => {
            w.remove(&r.watcher_id);
            Ok(json!({}))
        }
        _ => Err(no_watcher(&r.watcher_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_print_like_go() {
        assert_eq!(permissions(FileType::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileType::Dir, 0o755), "drwxr-xr-x");
    }

    #[test]
    fn event_names_are_relative() {
        let e = fs_event("/home/user/d", WatchKind::Create, "/home/user/d/a/b");
        assert_eq!(e["name"], "a/b");
        assert_eq!(e["type"], "EVENT_TYPE_CREATE");
    }

    #[test]
    fn entries_use_protobuf_json() {
        let e = entry(&FileInfo {
            path: "/home/user/x".into(),
            name: "x".into(),
            file_type: FileType::File,
            size: 5,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            modified: 0,
            symlink_target: None,
            path_b64: None,
            name_b64: None,
            symlink_target_b64: None,
        });
        assert_eq!(e["size"], "5");
        assert_eq!(e["owner"], "user");
        assert_eq!(e["type"], "FILE_TYPE_FILE");
    }
}
