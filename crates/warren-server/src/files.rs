//! Files inside a sandbox, through its agent. Paths are the sandbox's own (absolute, or
//! relative to the agent's working directory); the agent does every check that depends
//! on the sandbox's filesystem, so errors here are its codes mapped to HTTP.
//!
//! Contents stream both ways: a download is sent as the agent reads it, an upload is
//! passed on as it arrives, each with flow control, so the daemon holds at most a window
//! of a file whatever its size (a sparse terabyte, `/dev/zero`) and however slowly the
//! client reads or writes. A name that is not UTF-8 is listed with its exact bytes in a
//! `*_b64` twin, and every route takes `path_b64` instead of `path` to address it.

use axum::body::Body as HttpBody;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use warren_agent::client::{ClientError, FileReader, ReadOptions, WriteOptions};
use warren_core::AgentConn;
use warren_types::proto::{FileInfo, User, WirePath};

use crate::error::Error;
use crate::extract::{Json, Query, SandboxAccess};
use crate::AppState;

/// Largest upload, in bytes.
pub const MAX_FILE: usize = 128 << 20;

/// A path given as text, or as the base64 of its exact bytes.
fn wire_path(path: Option<&str>, b64: Option<&str>) -> Result<WirePath, Error> {
    let p = match (path, b64) {
        (_, Some(b)) => WirePath::from_shown("", Some(b))
            .map_err(|e| Error::invalid(format!("path_b64: {e}")))?,
        (Some(p), None) => WirePath::from(p),
        (None, None) => return Err(Error::invalid("give path (or path_b64)")),
    };
    if p.as_bytes().is_empty() {
        return Err(Error::invalid("path is empty"));
    }
    if p.as_bytes().contains(&0) {
        return Err(Error::invalid("path contains a NUL byte"));
    }
    Ok(p)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// A path inside the sandbox (or `path_b64`).
    #[serde(default)]
    path: Option<String>,
    /// The path's bytes in base64, for a name that is not UTF-8 (instead of `path`).
    #[serde(default)]
    path_b64: Option<String>,
    /// Act as this sandbox user: a name, uid or uid:gid [default: the template's user,
    /// the one its processes run as; root when it names none].
    #[serde(default)]
    user: Option<String>,
}

impl PathQuery {
    fn path(&self) -> Result<WirePath, Error> {
        wire_path(self.path.as_deref(), self.path_b64.as_deref())
    }
}

/// Who a file call acts as: the user the request names, else the template's (see
/// [`AgentConn::default_user`]); the sandbox's root when the template's record cannot
/// be read (as file calls acted before templates named a user), rather than no file
/// call at all.
fn acting_user(named: Option<&str>, conn: &AgentConn) -> Result<Option<User>, Error> {
    match named {
        Some(u) => User::parse(u)
            .map(Some)
            .map_err(|e| Error::invalid(format!("user: {e}"))),
        None => Ok(conn.default_user().unwrap_or(None)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// A path inside the sandbox (or `path_b64`).
    #[serde(default)]
    path: Option<String>,
    /// The path's bytes in base64, for a name that is not UTF-8 (instead of `path`).
    #[serde(default)]
    path_b64: Option<String>,
    /// Act as this sandbox user: a name, uid or uid:gid [default: the template's user,
    /// the one its processes run as; root when it names none].
    #[serde(default)]
    user: Option<String>,
    /// Also read a FIFO, a device or a socket (otherwise refused with `not_a_file`); such
    /// a file may never end, and is read for as long as the client reads.
    #[serde(default)]
    #[param(default = false)]
    special: bool,
}

/// The chunks of a streaming read, as an HTTP body.
fn body_of(reader: FileReader) -> HttpBody {
    let chunks = futures_util::stream::try_unfold(reader, |mut r| async move {
        match r.chunk().await {
            Ok(Some(c)) => Ok(Some((Bytes::from(c), r))),
            Ok(None) => Ok(None),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    });
    HttpBody::from_stream(chunks)
}

/// `GET /v1/sandboxes/{key}/files?path=&special=`: the file's contents, streamed.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/files",
    operation_id = "readFile",
    tag = "files",
    summary = "Read a file.",
    params(
        crate::openapi::SandboxKey,
        ReadQuery,
    ),
    responses(
        (status = 200, description = "The file's bytes.", body = inline(crate::openapi::Binary), content_type = "application/octet-stream"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn read(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<ReadQuery>,
) -> Result<Response, Error> {
    let path = wire_path(q.path.as_deref(), q.path_b64.as_deref())?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let opts = ReadOptions {
        user: acting_user(q.user.as_deref(), &conn)?,
        special: q.special,
    };
    // The reader's channel holds the agent connection for as long as the body is read.
    let reader = conn.client().open_read(path, &opts).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body_of(reader),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    /// A path inside the sandbox (or `path_b64`).
    #[serde(default)]
    path: Option<String>,
    /// The path's bytes in base64, for a name that is not UTF-8 (instead of `path`).
    #[serde(default)]
    path_b64: Option<String>,
    /// Act as this sandbox user: a name, uid or uid:gid [default: the template's user,
    /// the one its processes run as; root when it names none].
    #[serde(default)]
    user: Option<String>,
    /// Octal permission bits, as `chmod` takes them.
    #[param(pattern = "^[0-7]{1,4}$")]
    #[serde(default)]
    mode: Option<String>,
}

fn parse_mode(s: &str) -> Result<u32, Error> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::invalid(format!("mode {s:?}: use octal permission bits, like 644")))
}

/// A request body as a stream of at most `limit` bytes: past it, the stream fails (and
/// the upload is abandoned) instead of the daemon holding or passing on more.
pub(crate) fn limited_body(
    body: axum::body::Body,
    limit: usize,
) -> impl tokio::io::AsyncRead + Unpin + Send {
    let mut seen = 0usize;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk: Bytes| {
            seen += chunk.len();
            let over = seen > limit;
            async move {
                if over {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        "the upload is larger than this route accepts",
                    ))
                } else {
                    Ok(chunk)
                }
            }
        });
    tokio_util::io::StreamReader::new(Box::pin(stream))
}

/// An upload's failure: a body past the limit is the client's (413), the rest as usual.
pub(crate) fn upload_error(e: ClientError) -> Error {
    match e {
        ClientError::Upload(io) if io.kind() == std::io::ErrorKind::FileTooLarge => {
            Error::too_large(format!(
                "the file is larger than {} MiB; nothing was written",
                MAX_FILE >> 20
            ))
        }
        ClientError::Upload(io) => Error::invalid(format!("the upload broke off: {io}")),
        e => e.into(),
    }
}

/// `PUT /v1/sandboxes/{key}/files?path=&mode=`: replaces the file with the body, which
/// is passed to the sandbox as it arrives.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{key}/files",
    operation_id = "writeFile",
    tag = "files",
    summary = "Write a file (replaced atomically; parent directories made), up to 128 MiB.",
    params(
        crate::openapi::SandboxKey,
        WriteQuery,
    ),
    request_body(content = inline(Option<crate::openapi::Binary>), content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn write(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<WriteQuery>,
    req: Request,
) -> Result<StatusCode, Error> {
    let path = wire_path(q.path.as_deref(), q.path_b64.as_deref())?;
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let opts = WriteOptions {
        mode,
        user: acting_user(q.user.as_deref(), &conn)?,
        ..WriteOptions::default()
    };
    conn.client()
        .write_stream(path, limited_body(req.into_body(), MAX_FILE), &opts)
        .await
        .map_err(upload_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// A path inside the sandbox (or `path_b64`).
    #[serde(default)]
    path: Option<String>,
    /// The path's bytes in base64, for a name that is not UTF-8 (instead of `path`).
    #[serde(default)]
    path_b64: Option<String>,
    /// Act as this sandbox user: a name, uid or uid:gid [default: the template's user,
    /// the one its processes run as; root when it names none].
    #[serde(default)]
    user: Option<String>,
    /// Remove a non-empty directory with its contents.
    #[serde(default)]
    #[param(default = false)]
    recursive: bool,
}

/// `DELETE /v1/sandboxes/{key}/files?path=&recursive=`.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{key}/files",
    operation_id = "removeFile",
    tag = "files",
    summary = "Remove a file or directory.",
    params(
        crate::openapi::SandboxKey,
        RemoveQuery,
    ),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn remove(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, Error> {
    let path = wire_path(q.path.as_deref(), q.path_b64.as_deref())?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let user = acting_user(q.user.as_deref(), &conn)?;
    conn.client()
        .remove_as(path, q.recursive, user.as_ref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{key}/files/stat?path=`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/files/stat",
    operation_id = "statFile",
    tag = "files",
    summary = "Describe a file (symlinks are not followed).",
    params(
        crate::openapi::SandboxKey,
        PathQuery,
    ),
    responses(
        (status = 200, description = "The file.", body = warren_types::proto::FileInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn stat(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<PathQuery>,
) -> Result<axum::Json<FileInfo>, Error> {
    let path = q.path()?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let user = acting_user(q.user.as_deref(), &conn)?;
    Ok(axum::Json(
        conn.client().stat_as(path, user.as_ref()).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A path inside the sandbox (or `path_b64`).
    #[serde(default)]
    path: Option<String>,
    /// The path's bytes in base64, for a name that is not UTF-8 (instead of `path`).
    #[serde(default)]
    path_b64: Option<String>,
    /// Act as this sandbox user: a name, uid or uid:gid [default: the template's user,
    /// the one its processes run as; root when it names none].
    #[serde(default)]
    user: Option<String>,
    /// Levels to descend.
    #[param(minimum = 1, maximum = 16, default = 1)]
    #[serde(default = "one")]
    depth: u32,
}

fn one() -> u32 {
    1
}

/// Deepest listing: a whole tree in one answer would be unbounded.
pub const MAX_DEPTH: u32 = 16;

/// `GET /v1/sandboxes/{key}/files/list?path=&depth=`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/files/list",
    operation_id = "listDir",
    tag = "files",
    summary = "List a directory, down to `depth` levels.",
    params(
        crate::openapi::SandboxKey,
        ListQuery,
    ),
    responses(
        (status = 200, description = "Entries.", body = [warren_types::proto::FileInfo], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
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
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Vec<FileInfo>>, Error> {
    let path = wire_path(q.path.as_deref(), q.path_b64.as_deref())?;
    if q.depth == 0 || q.depth > MAX_DEPTH {
        return Err(Error::invalid(format!("depth must be 1 to {MAX_DEPTH}")));
    }
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    Ok(axum::Json(
        conn.client()
            .list_dir_as(
                path,
                q.depth,
                acting_user(q.user.as_deref(), &conn)?.as_ref(),
            )
            .await?,
    ))
}

/// `POST /v1/sandboxes/{key}/files/mkdir?path=`: makes the directory and its parents.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/files/mkdir",
    operation_id = "makeDir",
    tag = "files",
    summary = "Make a directory and its parents.",
    params(
        crate::openapi::SandboxKey,
        PathQuery,
    ),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn mkdir(
    State(st): State<AppState>,
    access: SandboxAccess,
    Query(q): Query<PathQuery>,
) -> Result<StatusCode, Error> {
    let path = q.path()?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let user = acting_user(q.user.as_deref(), &conn)?;
    conn.client().make_dir_as(path, None, user.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from_b64: Option<String>,
    #[serde(default)]
    pub to_b64: Option<String>,
    /// Act as this sandbox user: a name, uid or uid:gid [default: the template's user,
    /// the one its processes run as; root when it names none].
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /v1/sandboxes/{key}/files/rename`.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/files/rename",
    operation_id = "renameFile",
    tag = "files",
    summary = "Rename (move) a file or directory.",
    params(
        crate::openapi::SandboxKey,
    ),
    request_body(content = crate::files::RenameRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Done."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("accessToken" = []), ("unixTenant" = [])),
)]
pub async fn rename(
    State(st): State<AppState>,
    access: SandboxAccess,
    Json(req): Json<RenameRequest>,
) -> Result<StatusCode, Error> {
    let from = wire_path(req.from.as_deref(), req.from_b64.as_deref())?;
    let to = wire_path(req.to.as_deref(), req.to_b64.as_deref())?;
    let conn = st.mgr.agent(&access.caller, &access.key).await?;
    let user = acting_user(req.user.as_deref(), &conn)?;
    conn.client().rename_as(from, to, user.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}
