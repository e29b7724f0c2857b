//! envd's directory watches on the agent's: `WatchDir`, a server stream over one agent
//! watch, and the polling watchers (`CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`), which the sync SDK uses because it cannot hold a stream open
//! between calls.
//!
//! A polling watcher is a task that holds the agent watch and keeps its events until
//! the client collects them. What a tenant can make the daemon hold this way is bounded
//! three ways: a watcher keeps at most [`MAX_EVENTS`] events and [`MAX_BYTES`] of them
//! (older ones are dropped first, as envd has no way to report an overflow), a sandbox
//! has at most [`PER_SANDBOX`] watchers and a tenant [`PER_TENANT`]. A watcher goes
//! when it is removed, and on its own when its sandbox goes: the agent's connection
//! closes then, which ends the task, and the task removes its watcher. A check every
//! [`SWEEP`] catches a sandbox that is gone while its connection is not.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use warren_agent::client::{AgentClient, Channel, ClientError, Incoming};
use warren_core::{Caller, Manager};
use warren_types::api::SandboxState;
use warren_types::proto::{
    FileType, Request as AgentRequest, Response as AgentResponse, User, WatchKind,
};

use super::connect::{self, message, Code, RpcError};
use super::envd::Envd;
use super::E2bState;
use crate::shutting_down;

/// Events a polling watcher keeps between collections.
const MAX_EVENTS: usize = 1000;
/// Bytes of events a polling watcher keeps between collections, counted as
/// [`FsEvent::cost`].
const MAX_BYTES: usize = 256 << 10;
/// What an event costs besides its name: its place in the queue, its type, its JSON.
const EVENT_OVERHEAD: usize = 64;

/// What an event's entry costs: its paths and names (metadata included) and the rest.
fn entry_cost(entry: &Value) -> usize {
    entry.to_string().len() + EVENT_OVERHEAD
}
/// Polling watchers one sandbox may hold.
const PER_SANDBOX: usize = 64;
/// Polling watchers one tenant may hold, over all its sandboxes.
const PER_TENANT: usize = 256;
/// How often a watcher checks that its sandbox still exists.
const SWEEP: Duration = Duration::from_secs(30);

/// The agent's uploads land through a hidden temporary file renamed into place; its
/// events are the agent's business, not the watcher's.
const UPLOAD_MARK: &str = ".warren-upload-";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WatchRequest {
    path: String,
    recursive: bool,
    include_entry: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WatcherRequest {
    watcher_id: String,
}

/// A change as envd reports it: the name is relative to the watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FsEvent {
    name: String,
    kind: WatchKind,
    /// What is at the path now, for a watch that asked (`includeEntry`).
    entry: Option<Value>,
}

impl FsEvent {
    fn new(root: &str, kind: WatchKind, path: &str) -> Self {
        let name = path
            .strip_prefix(root)
            .map(|r| r.trim_start_matches('/'))
            .filter(|r| !r.is_empty())
            .unwrap_or(path);
        Self {
            name: name.to_string(),
            kind,
            entry: None,
        }
    }

    fn json(&self) -> Value {
        let kind = match self.kind {
            WatchKind::Create => "EVENT_TYPE_CREATE",
            WatchKind::Write => "EVENT_TYPE_WRITE",
            WatchKind::Remove => "EVENT_TYPE_REMOVE",
            WatchKind::Rename => "EVENT_TYPE_RENAME",
            WatchKind::Chmod => "EVENT_TYPE_CHMOD",
        };
        let mut v = json!({"name": self.name, "type": kind});
        if let Some(entry) = &self.entry {
            v["entry"] = entry.clone();
        }
        v
    }

    fn cost(&self) -> usize {
        self.name.len() + EVENT_OVERHEAD + self.entry.as_ref().map_or(0, entry_cost)
    }
}

/// The events a polling watcher keeps, oldest first, within [`MAX_EVENTS`] and
/// [`MAX_BYTES`].
#[derive(Debug, Default)]
struct EventBuffer {
    events: VecDeque<FsEvent>,
    bytes: usize,
}

impl EventBuffer {
    fn push(&mut self, e: FsEvent) {
        self.bytes += e.cost();
        self.events.push_back(e);
        while self.events.len() > MAX_EVENTS || self.bytes > MAX_BYTES {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
        }
    }

    /// Everything kept, leaving the buffer empty and its memory freed.
    fn take(&mut self) -> VecDeque<FsEvent> {
        self.bytes = 0;
        std::mem::take(&mut self.events)
    }
}

/// How an agent watch ended.
enum Ended {
    /// The agent refused to go on (the directory went, the tree grew too large).
    Failed(RpcError),
    /// The agent's connection closed: the sandbox stopped or went.
    Closed,
}

/// An agent watch on a directory, as the caller.
struct Watch {
    root: String,
    ch: Channel,
    client: AgentClient,
    user: Option<User>,
    include_entry: bool,
}

impl Watch {
    async fn open(st: &E2bState, env: &Envd, r: &WatchRequest) -> Result<Self, RpcError> {
        let root = env.path(&r.path)?;
        let client = env.agent(st).await?;
        let user = env.fs_user();
        let info = client.stat_as(root.as_str(), user.as_ref()).await?;
        if info.file_type != FileType::Dir {
            return Err(RpcError::invalid(format!("path {root} is not a directory")));
        }
        let ch = client
            .watch_as(root.as_str(), r.recursive, user.as_ref())
            .await?;
        Ok(Self {
            root,
            ch,
            client,
            user,
            include_entry: r.include_entry,
        })
    }

    /// The next event.
    ///
    /// inotify's "moved" events say nothing about the direction; envd (through
    /// fsnotify) reports a file moved *into* the directory as created and one moved
    /// away as renamed. Whether the path still exists, for the caller, tells which.
    async fn next(&mut self) -> Result<FsEvent, Ended> {
        loop {
            match self.ch.recv().await {
                Some(Incoming::Control(AgentResponse::WatchEvent { kind, path, .. })) => {
                    if path.contains(UPLOAD_MARK) {
                        continue;
                    }
                    let now = if kind == WatchKind::Remove
                        || (kind != WatchKind::Rename && !self.include_entry)
                    {
                        None
                    } else {
                        self.client
                            .stat_as(path.as_str(), self.user.as_ref())
                            .await
                            .ok()
                    };
                    let kind = match kind {
                        WatchKind::Rename if now.is_some() => WatchKind::Create,
                        k => k,
                    };
                    let mut event = FsEvent::new(&self.root, kind, &path);
                    if self.include_entry {
                        event.entry = now.as_ref().map(super::filesystem::entry);
                    }
                    return Ok(event);
                }
                Some(Incoming::Control(AgentResponse::Error { code, message })) => {
                    return Err(Ended::Failed(ClientError::Agent { code, message }.into()))
                }
                Some(_) => continue,
                None => return Err(Ended::Closed),
            }
        }
    }
}

fn stopped() -> RpcError {
    RpcError::new(Code::Unavailable, "the watch ended: the sandbox stopped")
}

/// `WatchDir`: the events of one agent watch as a server stream, for as long as the
/// client reads it.
pub(super) async fn watch_dir(
    st: &E2bState,
    env: &Envd,
    r: WatchRequest,
    interval: Duration,
) -> Result<Response, RpcError> {
    let mut watch = Watch::open(st, env, &r).await?;
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
                ev = watch.next() => match ev {
                    Ok(ev) => (message(&json!({"filesystem": ev.json()})), false),
                    Err(Ended::Failed(e)) => (connect::end(Some(&e)), true),
                    Err(Ended::Closed) => (connect::end(Some(&stopped())), true),
                },
                _ = ticks.tick() => (message(&json!({"keepalive": {}})), false),
                _ = tx.closed() => break,
                _ = &mut shutdown => (connect::end(Some(&RpcError::new(Code::Unavailable, "the daemon is shutting down"))), true),
            };
            if tx.send(b).await.is_err() || last {
                break;
            }
        }
        let _ = watch.ch.send(&AgentRequest::Cancel).await;
    });
    Ok(connect::stream(rx))
}

/// What a polling watcher's task shares with the calls that collect its events.
#[derive(Debug, Default)]
struct Kept {
    buffer: EventBuffer,
    /// Why the agent's watch ended, once it has.
    ended: Option<RpcError>,
}

/// A polling watcher: whose it is, what it kept, and the task feeding it.
#[derive(Debug)]
struct Watcher {
    sandbox: String,
    tenant: String,
    kept: Arc<Mutex<Kept>>,
    task: AbortHandle,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every polling watcher of the daemon, by id.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, Watcher>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchers {
    /// Refuses another watcher for `sandbox` of `tenant` when either has its most.
    fn admit(map: &HashMap<String, Watcher>, sandbox: &str, tenant: &str) -> Result<(), RpcError> {
        let (mut in_sandbox, mut in_tenant) = (0, 0);
        for w in map.values() {
            in_sandbox += usize::from(w.sandbox == sandbox);
            in_tenant += usize::from(w.tenant == tenant);
        }
        if in_sandbox >= PER_SANDBOX {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("a sandbox may have {PER_SANDBOX} watchers; remove some first"),
            ));
        }
        if in_tenant >= PER_TENANT {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "a team may have {PER_TENANT} watchers over its sandboxes; remove some first"
                ),
            ));
        }
        Ok(())
    }

    /// Adds `w` as `id` if its sandbox and tenant still have room (checked again here:
    /// calls to create watchers run side by side).
    fn insert(&self, id: String, w: Watcher) -> Result<(), RpcError> {
        let mut map = lock(&self.map);
        Self::admit(&map, &w.sandbox, &w.tenant)?;
        map.insert(id, w);
        Ok(())
    }

    fn check(&self, sandbox: &str, tenant: &str) -> Result<(), RpcError> {
        Self::admit(&lock(&self.map), sandbox, tenant)
    }

    /// Drops watcher `id`, its task and what it kept.
    fn forget(&self, id: &str) {
        // Out of the lock: dropping a watcher aborts a task.
        let gone = lock(&self.map).remove(id);
        drop(gone);
    }

    fn kept(&self, id: &str, sandbox: &str) -> Result<Arc<Mutex<Kept>>, RpcError> {
        lock(&self.map)
            .get(id)
            .filter(|w| w.sandbox == sandbox)
            .map(|w| w.kept.clone())
            .ok_or_else(|| no_watcher(id))
    }

    fn remove(&self, id: &str, sandbox: &str) -> Result<(), RpcError> {
        let mut map = lock(&self.map);
        match map.get(id) {
            Some(w) if w.sandbox == sandbox => {
                let gone = map.remove(id);
                drop(map);
                drop(gone);
                Ok(())
            }
            _ => Err(no_watcher(id)),
        }
    }
}

fn no_watcher(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("watcher {id} not found"))
}

fn new_watcher_id() -> Result<String, RpcError> {
    warren_types::random::hex(12).map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))
}

/// Whether sandbox `id` still exists for `caller` (a stopped or paused one does).
fn exists(mgr: &Manager, caller: &Caller, id: &str) -> bool {
    mgr.get(caller, id)
        .is_ok_and(|i| i.state != SandboxState::Terminated)
}

pub(super) async fn create_watcher(
    st: &E2bState,
    env: &Envd,
    r: WatchRequest,
) -> Result<Value, RpcError> {
    st.watchers.check(&env.id, &env.caller.tenant)?;
    let mut watch = Watch::open(st, env, &r).await?;
    let id = new_watcher_id()?;
    let kept: Arc<Mutex<Kept>> = Arc::default();
    let (watchers, mgr, caller, sandbox) = (
        Arc::downgrade(&st.watchers),
        st.mgr.clone(),
        env.caller.clone(),
        env.id.clone(),
    );
    let (task_kept, task_id) = (kept.clone(), id.clone());
    // The task starts once its watcher is in the map, so that its removal of the
    // watcher always comes after the insertion.
    let (start, started) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if started.await.is_err() {
            return;
        }
        let client = watch.client.clone();
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP, SWEEP);
        let mut watching = true;
        loop {
            tokio::select! {
                ev = watch.next(), if watching => match ev {
                    Ok(e) => lock(&task_kept).buffer.push(e),
                    Err(Ended::Failed(e)) => {
                        // Kept for the client to collect; the connection still tells
                        // when the sandbox goes.
                        lock(&task_kept).ended = Some(e);
                        watching = false;
                    }
                    Err(Ended::Closed) => break,
                },
                _ = closed(&client), if !watching => break,
                _ = sweep.tick() => if !exists(&mgr, &caller, &sandbox) {
                    break;
                },
            }
        }
        if let Some(w) = watchers.upgrade() {
            w.forget(&task_id);
        }
    });
    let watcher = Watcher {
        sandbox: env.id.clone(),
        tenant: env.caller.tenant.clone(),
        kept,
        task: task.abort_handle(),
    };
    st.watchers.insert(id.clone(), watcher)?;
    let _ = start.send(());
    Ok(json!({ "watcherId": id }))
}

/// Resolves when the agent's connection has closed.
async fn closed(client: &AgentClient) {
    while !client.is_closed() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) async fn watcher_events(
    st: &E2bState,
    env: &Envd,
    r: WatcherRequest,
) -> Result<Value, RpcError> {
    let kept = st.watchers.kept(&r.watcher_id, &env.id)?;
    let mut kept = lock(&kept);
    let events = kept.buffer.take();
    if events.is_empty() {
        if let Some(e) = kept.ended.clone() {
            return Err(e);
        }
    }
    let events: Vec<Value> = events.iter().map(FsEvent::json).collect();
    Ok(json!({ "events": events }))
}

pub(super) async fn remove_watcher(
    st: &E2bState,
    env: &Envd,
    r: WatcherRequest,
) -> Result<Value, RpcError> {
    st.watchers.remove(&r.watcher_id, &env.id)?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_relative() {
        let e = FsEvent::new("/home/user/d", WatchKind::Create, "/home/user/d/a/b");
        assert_eq!(
            e.json(),
            json!({"name": "a/b", "type": "EVENT_TYPE_CREATE"})
        );
    }

    fn event(name: String) -> FsEvent {
        FsEvent {
            name,
            kind: WatchKind::Write,
            entry: None,
        }
    }

    #[test]
    fn buffers_keep_the_newest_events_within_a_count() {
        let mut b = EventBuffer::default();
        for i in 0..MAX_EVENTS + 500 {
            b.push(event(format!("f{i}")));
        }
        let kept = b.take();
        assert_eq!(kept.len(), MAX_EVENTS);
        assert_eq!(kept[0].name, "f500");
        assert_eq!(kept[MAX_EVENTS - 1].name, format!("f{}", MAX_EVENTS + 499));
        assert!(b.take().is_empty());
        assert_eq!(b.bytes, 0);
    }

    #[test]
    fn buffers_keep_the_newest_events_within_a_size() {
        let mut b = EventBuffer::default();
        let long = "n".repeat(4000);
        for i in 0..500 {
            b.push(event(format!("{long}{i}")));
        }
        assert!(b.bytes <= MAX_BYTES);
        let kept = b.take();
        let bytes: usize = kept.iter().map(FsEvent::cost).sum();
        assert!(bytes <= MAX_BYTES && bytes > MAX_BYTES - 4100, "{bytes}");
        assert_eq!(kept.back().unwrap().name, format!("{long}499"));
        // Small events fill what is left, up to the count.
        b.push(event(long.clone()));
        for i in 0..MAX_EVENTS {
            b.push(event(format!("{i}")));
        }
        assert_eq!(b.events.len(), MAX_EVENTS);
        assert!(b.events.iter().all(|e| e.name.len() < 4));
    }

    fn fake(sandbox: &str, tenant: &str) -> Watcher {
        Watcher {
            sandbox: sandbox.into(),
            tenant: tenant.into(),
            kept: Arc::default(),
            task: tokio::spawn(std::future::pending::<()>()).abort_handle(),
        }
    }

    #[tokio::test]
    async fn watchers_are_counted_per_sandbox_and_per_tenant() {
        let w = Watchers::default();
        for i in 0..PER_SANDBOX {
            w.insert(format!("a{i}"), fake("a", "t")).unwrap();
        }
        let full = w.insert("a-extra".into(), fake("a", "t")).unwrap_err();
        assert_eq!(full.code, Code::ResourceExhausted);
        // Another tenant's sandboxes do not count against this one's.
        w.insert("x0".into(), fake("x", "u")).unwrap();
        for s in ["b", "c", "d"] {
            for i in 0..PER_SANDBOX {
                w.insert(format!("{s}{i}"), fake(s, "t")).unwrap();
            }
        }
        assert_eq!(4 * PER_SANDBOX, PER_TENANT);
        let full = w.check("e", "t").unwrap_err();
        assert_eq!(full.code, Code::ResourceExhausted);
        assert!(full.message.contains("team"), "{}", full.message);
        assert!(w.check("e", "u").is_ok());
        // A removed watcher makes room, and only its own sandbox may remove it.
        assert_eq!(w.remove("b0", "c").unwrap_err().code, Code::NotFound);
        w.remove("b0", "b").unwrap();
        w.insert("e0".into(), fake("e", "t")).unwrap();
        w.forget("c0");
        assert!(w.check("e", "t").is_ok());
        assert_eq!(lock(&w.map).len(), PER_TENANT);
    }
}
