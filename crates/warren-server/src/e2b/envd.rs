//! envd's plain HTTP side (`/health`, `/files`) and what every in-sandbox call shares:
//! finding the sandbox, checking its access token, and acting as the E2B user.
//!
//! E2B runs envd calls as a Linux user named in `Authorization: Basic base64(user:)`
//! (RPCs) or `?username=` (file transfers), `user` by default, and resolves relative
//! paths against that user's home. Every file operation is the agent's, done with that
//! user's filesystem identity: the sandbox's kernel checks each step (symlinks
//! included) against the user's rights, and what is created is theirs. Nothing runs in
//! the sandbox on the daemon's behalf, so nothing the user planted there (a program on
//! the PATH, a symlink) acts with more rights than the user's own.
//!
//! Files move through the daemon in chunks, never whole: an upload goes to the agent
//! as it arrives, a download to the client as the agent reads it, each held back by the
//! slower side. However large the file or slow the client, the daemon holds a window of
//! it per transfer.
//!
//! A sandbox that is gone, or an access token that is not its own, is answered the
//! way E2B's proxy answers for a sandbox it does not know: `502` and a message saying
//! the sandbox was not found, which the SDK raises as its not-running error. Telling
//! the two apart would tell a stranger which sandbox ids exist.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};
use warren_agent::client::{AgentClient, ClientError, FileReader, ReadOptions, WriteOptions};
use warren_core::Caller;
use warren_types::proto::{ErrorCode, User};

use super::connect::{Code, RpcError};
use super::{filesystem, process, target, E2bState, ENVD_PORT};
use crate::error::Error;
use crate::extract::ACCESS_TOKEN_HEADER;

/// Largest file upload.
const MAX_UPLOAD: usize = crate::MAX_RAW;

pub(super) fn router(state: E2bState) -> Router {
    let rpc = DefaultBodyLimit::max(super::connect::MAX_MESSAGE);
    Router::new()
        .route("/health", get(health))
        .route(
            "/files",
            get(download)
                .post(upload)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/process.Process/{method}", post(process::call).layer(rpc))
        .route(
            "/filesystem.Filesystem/{method}",
            post(filesystem::call).layer(rpc),
        )
        .fallback(fallback)
        .layer(axum::middleware::from_fn(crate::reqlog::note_matched_route))
        .with_state(state)
}

/// An error in the shape E2B's proxy and envd's HTTP routes use: `{"code": status,
/// "message"}`. The SDK reads the status; Connect clients read an integer `code` as
/// one too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// What E2B's proxy answers for a sandbox it does not know.
    pub fn sandbox_gone(id: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} was not found"),
        )
    }
}

impl IntoResponse for HttpError {
    /// These errors are often answered before the request body was read (a refused
    /// key or token). The connection is closed after them, so a client's pool does not
    /// reuse one whose unread body the server may drop mid-way.
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        (
            self.status,
            [(header::CONNECTION, "close")],
            axum::Json(body),
        )
            .into_response()
    }
}

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        Self::new(e.status, e.message)
    }
}

impl From<ClientError> for HttpError {
    fn from(e: ClientError) -> Self {
        Error::from(e).into()
    }
}

impl From<warren_core::CoreError> for HttpError {
    fn from(e: warren_core::CoreError) -> Self {
        Error::from(e).into()
    }
}

/// An authenticated in-sandbox caller.
#[derive(Debug, Clone)]
pub(crate) struct Envd {
    pub id: String,
    pub caller: Caller,
    /// The E2B user from `Authorization: Basic`, `user` when none is named.
    pub user: String,
    /// Set for a sandbox in trust mode (the process backend): its directory on the host.
    /// Its processes run as the host account the operator chose, which E2B's users all
    /// stand for there, and that directory is their home.
    pub trust_dir: Option<String>,
}

impl Envd {
    /// The user's home: relative paths and a missing `cwd` start there.
    pub fn home(&self) -> String {
        match &self.trust_dir {
            Some(dir) => dir.clone(),
            None => home_of(&self.user),
        }
    }

    /// A path of the request as an absolute path inside the sandbox.
    pub fn path(&self, p: &str) -> Result<String, RpcError> {
        if p.is_empty() {
            return Err(RpcError::invalid("path is required"));
        }
        resolve(p, &self.home()).map_err(RpcError::invalid)
    }

    /// A connection to the sandbox's agent.
    pub async fn agent(&self, st: &E2bState) -> Result<AgentClient, RpcError> {
        let client = st.mgr.agent(&self.caller, &self.id).await?.into_client();
        Ok(client)
    }

    /// The agent's notion of this user, for the processes it starts: none in trust
    /// mode, where they run as the agent's own account.
    pub fn exec_user(&self) -> Option<User> {
        self.trust_dir
            .is_none()
            .then(|| User::Name(self.user.clone()))
    }

    /// Whom the agent's file operations act as: the user, or the agent itself (the
    /// sandbox's root, or in trust mode its account) for root.
    pub fn fs_user(&self) -> Option<User> {
        if self.user == "root" {
            return None;
        }
        self.exec_user()
    }
}

pub(crate) const DEFAULT_USER: &str = "user";

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) fn home_of(user: &str) -> String {
    if user == "root" {
        "/root".into()
    } else {
        format!("/home/{user}")
    }
}

/// `~`, `~/x` and relative paths start at `home`; absolute paths stay.
pub(crate) fn resolve(p: &str, home: &str) -> Result<String, String> {
    if p.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let joined = if p.starts_with('/') {
        p.to_string()
    } else if p.is_empty() || p == "~" {
        home.to_string()
    } else if let Some(rest) = p.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else {
        format!("{home}/{p}")
    };
    Ok(joined)
}

/// The user named by `Authorization: Basic base64(user:)`, if any.
fn basic_user(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "Authorization: use Basic base64(user:)",
        )
    };
    let v = v.to_str().map_err(|_| bad())?;
    let Some(b64) = v.strip_prefix("Basic ") else {
        return Err(bad());
    };
    let raw = B64.decode(b64.trim()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let user = raw.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return Ok(None);
    }
    if !valid_user(user) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid user {user:?}"),
        ));
    }
    Ok(Some(user.to_string()))
}

impl FromRequestParts<E2bState> for Envd {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &E2bState) -> Result<Self, HttpError> {
        let t = target(&parts.headers)
            .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, "no sandbox named"))?;
        if t.port != ENVD_PORT {
            // Routed to the sandbox's own port before this (see `ports`).
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("port {} is not envd's", t.port),
            ));
        }
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).unwrap_or_default();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let caller = match parts.headers.get(ACCESS_TOKEN_HEADER) {
            Some(token) => {
                let token = token.to_str().unwrap_or_default();
                st.mgr
                    .authenticate_sandbox(&t.sandbox, token)
                    .ok_or_else(|| HttpError::sandbox_gone(&t.sandbox))?
            }
            // A signed file URL (`download_url` / `upload_url`): the signature stands for
            // the token, for this path, operation and user, until it expires.
            None if parts.uri.path() == "/files" && param("signature").is_some() => {
                // envd's order and words: the signature first, then its expiration.
                let signed = SignedUrl::of(&parts.method, &param)?;
                let caller = st
                    .mgr
                    .authenticate_signed(&t.sandbox, |token| signed.holds_for(token))
                    .ok_or_else(|| HttpError::new(StatusCode::UNAUTHORIZED, "invalid signature"))?;
                if signed
                    .expiration
                    .is_some_and(|e| e < warren_core::now_ms() / 1000)
                {
                    return Err(HttpError::new(
                        StatusCode::UNAUTHORIZED,
                        "signature is already expired",
                    ));
                }
                caller
            }
            None => {
                return Err(HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "send the sandbox's envdAccessToken as X-Access-Token, or use a signed URL",
                ))
            }
        };
        crate::conn::mark_authenticated(&parts.extensions);
        crate::reqlog::note_caller(&parts.extensions, &caller);
        let user = match basic_user(&parts.headers)? {
            Some(u) => u,
            None => {
                let q = parts.uri.query().unwrap_or_default();
                serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|(k, _)| k == "username")
                    .map(|(_, v)| v)
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| DEFAULT_USER.to_string())
            }
        };
        if !valid_user(&user) {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid user {user:?}"),
            ));
        }
        let trust_dir = st
            .mgr
            .trust_dir(&caller, &t.sandbox)?
            .map(|d| d.display().to_string());
        Ok(Envd {
            id: t.sandbox,
            caller,
            user,
            trust_dir,
        })
    }
}

/// The sandbox that signed `uri`, a signed file URL (`GET` or `POST /files` with a
/// `signature`) that names none: see [`warren_core::Manager::sandbox_signed_by`]. None
/// when `uri` is no such URL; `admit` is asked before any sandbox is looked at.
pub(super) fn signed_sandbox(
    mgr: &warren_core::Manager,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    admit: impl FnOnce() -> Result<(), HttpError>,
) -> Option<Result<String, HttpError>> {
    if uri.path() != "/files" {
        return None;
    }
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    param("signature")?;
    let found = SignedUrl::of(method, &param).and_then(|signed| {
        admit()?;
        mgr.sandbox_signed_by(|token| signed.holds_for(token))
            .ok_or_else(|| HttpError::new(StatusCode::UNAUTHORIZED, "invalid signature"))
    });
    Some(found)
}

/// A file URL signed as envd signs them: `v1_` and the unpadded base64 of the SHA-256
/// of `path:operation:user:token[:expiration]`.
struct SignedUrl {
    signature: String,
    path: String,
    operation: &'static str,
    user: String,
    expiration: Option<i64>,
}

impl SignedUrl {
    fn of<'a>(
        method: &axum::http::Method,
        param: &impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, HttpError> {
        let bad = |m: &str| HttpError::new(StatusCode::UNAUTHORIZED, m.to_string());
        let operation = match *method {
            axum::http::Method::GET => "read",
            axum::http::Method::POST => "write",
            _ => return Err(bad("a signed URL reads (GET) or writes (POST) a file")),
        };
        let expiration = param("signature_expiration")
            .map(|e| {
                e.parse::<i64>()
                    .map_err(|_| bad("signature_expiration is not a number"))
            })
            .transpose()?;
        Ok(Self {
            signature: param("signature").unwrap_or_default().to_string(),
            path: param("path").unwrap_or_default().to_string(),
            operation,
            user: param("username").unwrap_or_default().to_string(),
            expiration,
        })
    }

    fn holds_for(&self, token: &str) -> bool {
        use sha2::Digest;
        let mut raw = format!("{}:{}:{}:{token}", self.path, self.operation, self.user);
        if let Some(e) = self.expiration {
            raw.push_str(&format!(":{e}"));
        }
        let want = format!(
            "v1_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(raw))
        );
        // Compared in full whatever differs, so the time taken tells nothing.
        want.len() == self.signature.len()
            && want
                .bytes()
                .zip(self.signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

async fn fallback(req: Request) -> Response {
    HttpError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

/// `GET /health`: 204 while the sandbox runs (the SDK's `is_running`).
async fn health(State(st): State<E2bState>, env: Envd) -> Result<StatusCode, HttpError> {
    let info = st.mgr.get(&env.caller, &env.id)?;
    if info.state != warren_types::api::SandboxState::Running {
        return Err(HttpError::sandbox_gone(&env.id));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    #[serde(default)]
    path: Option<String>,
}

fn file_query(q: Option<&str>) -> Result<FileQuery, HttpError> {
    // Signed-URL parameters and the user are read elsewhere or not at all.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or_default())
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("query: {e}")))?;
    Ok(FileQuery {
        path: pairs.into_iter().find(|(k, _)| k == "path").map(|(_, v)| v),
    })
}

fn bad_path(e: String) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, e)
}

/// `GET /files?path=`: the file's bytes, as the agent reads them. Only regular files:
/// a device or a FIFO may never end, and envd has no way to ask for one.
async fn download(
    State(st): State<E2bState>,
    env: Envd,
    uri: axum::http::Uri,
) -> Result<Response, HttpError> {
    let q = file_query(uri.query())?;
    let path = q
        .path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, "path is required"))?;
    let path = resolve(&path, &env.home()).map_err(bad_path)?;
    let client = st.mgr.agent(&env.caller, &env.id).await?.into_client();
    let opts = ReadOptions {
        user: env.fs_user(),
        special: false,
    };
    let reader = client
        .open_read(path.as_str(), &opts)
        .await
        .map_err(|e| match e {
            ClientError::Agent {
                code: ErrorCode::IsADirectory,
                ..
            } => HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("path {path} is a directory"),
            ),
            ClientError::Agent {
                code: ErrorCode::NotAFile,
                ..
            } => HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("path {path} is not a regular file"),
            ),
            e => e.into(),
        })?;
    let body = Body::from_stream(chunks(reader));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The contents of `reader` as a body stream. Each chunk is taken from the agent only
/// when the server asks for the next, that is when the client has taken the last, so
/// a slow client holds the agent's read back instead of filling the daemon.
fn chunks(reader: FileReader) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(reader, |mut reader| async move {
        let chunk = reader.chunk().await.map_err(io::Error::other)?;
        Ok(chunk.map(|c| (Bytes::from(c), reader)))
    })
}

#[derive(Debug, Serialize)]
struct Written {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

fn written(path: &str, metadata: &BTreeMap<String, String>) -> Written {
    Written {
        name: Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file",
        path: path.to_string(),
        metadata: metadata.clone(),
    }
}

/// An upload's `X-Metadata-KEY: VALUE` headers (envd 0.6.2): keys lowercased, as envd
/// keeps them; each is set on every file of the upload as `user.e2b.KEY`.
fn upload_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, HttpError> {
    const PREFIX: &str = "x-metadata-";
    let bad = |m: String| HttpError::new(StatusCode::BAD_REQUEST, m);
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(PREFIX) else {
            continue;
        };
        if key.is_empty() || key.len() > 200 {
            return Err(bad(format!(
                "metadata key {key:?}: give 1 to 200 characters"
            )));
        }
        let value = value
            .to_str()
            .ok()
            .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .ok_or_else(|| bad(format!("metadata value of {key:?}: use printable ASCII")))?;
        // What the agent reports of a file's metadata (see its `metadata_of`).
        if value.len() > 1024 {
            return Err(bad(format!(
                "metadata value of {key:?}: at most 1024 bytes"
            )));
        }
        out.insert(key.to_string(), value.to_string());
    }
    if out.len() > 32 {
        return Err(bad("at most 32 metadata keys".into()));
    }
    Ok(out)
}

fn too_large() -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the upload is larger than Warren accepts ({} MiB)",
            MAX_UPLOAD >> 20
        ),
    )
}

fn multipart_error(e: &MultipartError) -> HttpError {
    HttpError::new(e.status(), format!("multipart body: {}", e.body_text()))
}

/// Why an upload stopped, as the client should hear it.
fn upload_error(e: ClientError) -> HttpError {
    let ClientError::Upload(e) = e else {
        return e.into();
    };
    let cause = e.get_ref();
    if cause.is_some_and(|c| c.is::<TooLarge>()) {
        return too_large();
    }
    if let Some(m) = cause.and_then(|c| c.downcast_ref::<MultipartError>()) {
        return multipart_error(m);
    }
    HttpError::new(StatusCode::BAD_REQUEST, "the upload ended before its end")
}

/// `POST /files?path=`: a multipart form (a part per file, named by the `path`
/// parameter or else by the part's file name, as envd does) or raw bytes for `path`.
/// Each file goes to the agent as it arrives.
async fn upload(
    State(st): State<E2bState>,
    env: Envd,
    req: Request,
) -> Result<Response, HttpError> {
    let q = file_query(req.uri().query())?;
    let metadata = upload_metadata(req.headers())?;
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes())
    {
        None | Some(b"identity") => false,
        Some(b"gzip") => true,
        Some(other) => {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content encoding {:?} is not supported: upload plain or gzip",
                    String::from_utf8_lossy(other)
                ),
            ))
        }
    };
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(too_large());
    }
    if gzip && multipart {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a gzip upload is one file as application/octet-stream, not a multipart form",
        ));
    }
    let dest = |name: Option<String>| -> Result<String, HttpError> {
        let dest = match (&q.path, name) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(n)) if !n.is_empty() => n,
            _ => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "name the file: a path parameter or a file name on each part",
                ))
            }
        };
        resolve(&dest, &env.home()).map_err(bad_path)
    };
    let client = st.mgr.agent(&env.caller, &env.id).await?.into_client();
    let mut out: Vec<Written> = Vec::new();
    if !multipart {
        let path = dest(None)?;
        let body = req.into_body().into_data_stream();
        if gzip {
            // Limited twice: what arrives, and what it expands to.
            let mut arrived = 0usize;
            let compressed = tokio_util::io::StreamReader::new(futures_util::StreamExt::map(
                body,
                move |chunk| {
                    let chunk = chunk.map_err(io::Error::other)?;
                    arrived += chunk.len();
                    if arrived > MAX_UPLOAD {
                        return Err(io::Error::other(TooLarge));
                    }
                    Ok(chunk)
                },
            ));
            let plain = async_compression::tokio::bufread::GzipDecoder::new(compressed);
            let plain = Limited::new(tokio_util::io::ReaderStream::new(plain));
            write(&client, &env, &path, &metadata, plain).await?;
        } else {
            write(&client, &env, &path, &metadata, Limited::new(body)).await?;
        }
        out.push(written(&path, &metadata));
        return Ok(axum::Json(out).into_response());
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(&e))? {
        let path = dest(field.file_name().map(str::to_string))?;
        if out.iter().any(|w| w.path == path) {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("one upload may write {path} once"),
            ));
        }
        write(&client, &env, &path, &metadata, Limited::new(field)).await?;
        out.push(written(&path, &metadata));
    }
    Ok(axum::Json(out).into_response())
}

/// Writes one uploaded file as the caller.
async fn write(
    client: &AgentClient,
    env: &Envd,
    path: &str,
    metadata: &BTreeMap<String, String>,
    source: impl AsyncRead + Unpin,
) -> Result<u64, HttpError> {
    // In place, as envd writes: a watcher sees the file written, links see the new
    // contents.
    let opts = WriteOptions {
        user: env.fs_user(),
        in_place: true,
        metadata: metadata.clone(),
        ..WriteOptions::default()
    };
    client
        .write_stream(path, source, &opts)
        .await
        .map_err(upload_error)
}

/// An upload passed [`MAX_UPLOAD`].
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the upload passed {} bytes", MAX_UPLOAD)
    }
}

impl std::error::Error for TooLarge {}

/// A request body, or one part of a multipart body, read as it arrives. It fails with
/// [`TooLarge`] as soon as it passes [`MAX_UPLOAD`], so an oversized file is refused
/// without being held. A body whose length was not declared is checked this way only.
struct Limited<S> {
    stream: S,
    pending: Bytes,
    total: u64,
}

impl<S> Limited<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            pending: Bytes::new(),
            total: 0,
        }
    }
}

impl<S, E> AsyncRead for Limited<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(Pin::new(&mut self.stream).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(b)) => {
                    self.total += b.len() as u64;
                    if self.total > MAX_UPLOAD as u64 {
                        return Poll::Ready(Err(io::Error::other(TooLarge)));
                    }
                    self.pending = b;
                }
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let taken = self.pending.split_to(n);
        buf.put_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

impl From<HttpError> for RpcError {
    fn from(e: HttpError) -> Self {
        let code = match e.status.as_u16() {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            429 => Code::ResourceExhausted,
            501 => Code::Unimplemented,
            502 | 503 => Code::Unavailable,
            _ => Code::Internal,
        };
        RpcError::new(code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_home() {
        let h = "/home/user";
        assert_eq!(resolve("/etc/x", h).unwrap(), "/etc/x");
        assert_eq!(resolve("a/b", h).unwrap(), "/home/user/a/b");
        assert_eq!(resolve("~", h).unwrap(), "/home/user");
        assert_eq!(resolve("~/x", h).unwrap(), "/home/user/x");
        assert_eq!(resolve("", h).unwrap(), "/home/user");
        assert!(resolve("a\0b", h).is_err());
        assert_eq!(home_of("root"), "/root");
    }

    #[test]
    fn basic_auth_names_the_user() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(basic_user(&h).unwrap().as_deref(), Some("root"));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic_user(&h).is_err());
        let evil = B64.encode("../x:");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {evil}").parse().unwrap(),
        );
        assert!(basic_user(&h).is_err());
    }
}
