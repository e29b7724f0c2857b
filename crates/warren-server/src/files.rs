//! Files inside a sandbox, through its agent. Paths are the sandbox's own (absolute, or
//! relative to the agent's working directory); the agent does every check that depends
//! on the sandbox's filesystem, so errors here are its codes mapped to HTTP.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use warren_types::proto::FileInfo;

use crate::error::Error;
use crate::extract::{Body, Json, Query, SandboxAccess};
use crate::AppState;

/// Largest upload, in bytes.
pub const MAX_FILE: usize = 128 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
}

fn checked(path: &str) -> Result<&str, Error> {
    if path.is_empty() {
        return Err(Error::invalid("path is empty"));
    }
    if path.contains('\0') {
        return Err(Error::invalid("path contains a NUL byte"));
    }
    Ok(path)
}

/// `GET /v1/sandboxes/{key}/files?path=`.
pub async fn read(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<PathQuery>,
) -> Result<Response, Error> {
    let path = checked(&q.path)?;
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    let data = client.read_file(path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    path: String,
    /// Octal permission bits, as `chmod` takes them.
    #[serde(default)]
    mode: Option<String>,
}

fn parse_mode(s: &str) -> Result<u32, Error> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::invalid(format!("mode {s:?}: use octal permission bits, like 644")))
}

/// `PUT /v1/sandboxes/{key}/files?path=&mode=`: replaces the file with the body.
pub async fn write(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<WriteQuery>,
    Body(body): Body,
) -> Result<StatusCode, Error> {
    let path = checked(&q.path)?;
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    client.write_file(path, &body, mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

/// `DELETE /v1/sandboxes/{key}/files?path=&recursive=`.
pub async fn remove(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, Error> {
    let path = checked(&q.path)?;
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    client.remove(path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{key}/files/stat?path=`.
pub async fn stat(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<PathQuery>,
) -> Result<axum::Json<FileInfo>, Error> {
    let path = checked(&q.path)?;
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    Ok(axum::Json(client.stat(path).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    path: String,
    #[serde(default = "one")]
    depth: u32,
}

fn one() -> u32 {
    1
}

/// Deepest listing: a whole tree in one answer would be unbounded.
pub const MAX_DEPTH: u32 = 16;

/// `GET /v1/sandboxes/{key}/files/list?path=&depth=`.
pub async fn list(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Vec<FileInfo>>, Error> {
    let path = checked(&q.path)?;
    if q.depth == 0 || q.depth > MAX_DEPTH {
        return Err(Error::invalid(format!("depth must be 1 to {MAX_DEPTH}")));
    }
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    Ok(axum::Json(client.list_dir(path, q.depth).await?))
}

/// `POST /v1/sandboxes/{key}/files/mkdir?path=`: makes the directory and its parents.
pub async fn mkdir(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<PathQuery>,
) -> Result<StatusCode, Error> {
    let path = checked(&q.path)?;
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    client.make_dir(path).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    pub from: String,
    pub to: String,
}

/// `POST /v1/sandboxes/{key}/files/rename`.
pub async fn rename(
    State(st): State<AppState>,
    access: SandboxAccess,
    Json(req): Json<RenameRequest>,
) -> Result<StatusCode, Error> {
    let (from, to) = (checked(&req.from)?, checked(&req.to)?);
    let (_, client) = st.mgr.agent(&access.caller, &access.key).await?;
    client.rename(from, to).await?;
    Ok(StatusCode::NO_CONTENT)
}
