//! envd's `filesystem.Filesystem` service on the agent's file operations, each done as
//! the caller's user (see [`super::envd`]); its watches are in [`super::watches`].
//!
//! Entries are described the way envd describes them: absolute paths, a type enum, the
//! size as a protobuf int64 (a JSON string), owner and group by name, permissions as
//! Go prints a file mode (`-rw-r--r--`), and the modification time in RFC 3339.

use axum::extract::{FromRequest, Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use warren_agent::client::ClientError;
use warren_types::proto::{ErrorCode, FileInfo, FileType};

use super::connect::{failure, lenient_u32, Code, Rpc, RpcError};
use super::envd::Envd;
use super::process::{keepalive, unary};
use super::watches::{self, WatchRequest, WatcherRequest};
use super::E2bState;
use crate::extract::Path;

/// Deepest listing, as the native API.
const MAX_DEPTH: u32 = crate::files::MAX_DEPTH;

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
        "CreateWatcher" => {
            unary(req, |r: WatchRequest| watches::create_watcher(&st, &env, r)).await
        }
        "GetWatcherEvents" => {
            unary(req, |r: WatcherRequest| {
                watches::watcher_events(&st, &env, r)
            })
            .await
        }
        "RemoveWatcher" => {
            unary(req, |r: WatcherRequest| {
                watches::remove_watcher(&st, &env, r)
            })
            .await
        }
        "WatchDir" => {
            let interval = keepalive(req.headers());
            match Rpc::<WatchRequest>::from_request(req, &()).await {
                Ok(rpc) if rpc.streaming => watches::watch_dir(&st, &env, rpc.msg, interval)
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

/// envd's `EntryInfo`. As envd, a symlink is described by what it leads to: its type
/// and permission bits are the final target's (unspecified when it leads nowhere), and
/// `symlinkTarget` is the absolute path with every link followed (the link's own path
/// when it cannot be followed).
pub(super) fn entry(i: &FileInfo) -> Value {
    let kind = |t: FileType| match t {
        FileType::File => "FILE_TYPE_FILE",
        FileType::Dir => "FILE_TYPE_DIRECTORY",
        FileType::Symlink => "FILE_TYPE_SYMLINK",
        FileType::Other => "FILE_TYPE_UNSPECIFIED",
    };
    let (file_type, mode) = match (i.file_type, &i.resolved) {
        (FileType::Symlink, Some(r)) => (kind(r.file_type), r.mode),
        (FileType::Symlink, None) => (kind(FileType::Other), 0),
        (t, _) => (kind(t), i.mode),
    };
    let mut v = json!({
        "name": i.name,
        "type": file_type,
        "path": i.path,
        "size": i.size.to_string(),
        "mode": mode,
        "permissions": permissions(i.file_type, if i.file_type == FileType::Symlink { 0o777 } else { i.mode }),
        "owner": user_name(i.uid),
        "group": group_name(i.gid),
        "modifiedTime": warren_core::rfc3339(i.modified.saturating_mul(1000)),
    });
    if i.file_type == FileType::Symlink {
        let target = i.resolved.as_ref().map_or(&i.path, |r| &r.path);
        v["symlinkTarget"] = json!(target);
    }
    if !i.metadata.is_empty() {
        v["metadata"] = json!(i.metadata);
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
    // As envd (Go's `os.RemoveAll`): what is not there is removed already.
    match client
        .remove_as(path.as_str(), true, env.fs_user().as_ref())
        .await
    {
        Ok(_)
        | Err(ClientError::Agent {
            code: ErrorCode::NotFound,
            ..
        }) => Ok(json!({})),
        Err(e) => Err(e.into()),
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
            resolved: None,
            metadata: Default::default(),
        });
        assert_eq!(e["size"], "5");
        assert_eq!(e["owner"], "user");
        assert_eq!(e["type"], "FILE_TYPE_FILE");
    }
}
