//! HTTP/1.1 to the daemon, on its unix socket or on TCP with an API key.
//!
//! Over the unix socket the caller is trusted (the socket's permissions are the gate) and
//! names its tenant in `X-Warren-Tenant`; over TCP the API key names it. Every request
//! opens its own connection: the socket is local, and a long stream (exec output, events)
//! then never holds up a short call made beside it (stdin, a signal, a resize).

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;
use warren_types::api::{ApiError, WireCode};
use warren_types::mux;

use crate::Error;

/// The header that names the tenant on the unix socket.
pub const TENANT_HEADER: &str = "x-warren-tenant";

/// The header that carries a sandbox's access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// A line of a stream longer than this is refused rather than buffered.
const MAX_LINE: usize = 64 << 20;

/// Either kind of connection, as one type the HTTP and WebSocket layers can drive.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

/// A daemon to talk to. Cheap to clone; every call opens its own connection.
#[derive(Clone)]
pub struct Client {
    target: Target,
    tenant: Option<String>,
    api_key: Option<String>,
    access_token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of logs.
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("tenant", &self.tenant)
            .field("api_key", &self.api_key.as_ref().map(|_| "..."))
            .field("access_token", &self.access_token.as_ref().map(|_| "..."))
            .finish()
    }
}

impl Client {
    /// The daemon on its unix socket at `path`, as the `default` tenant (see
    /// [`with_tenant`](Self::with_tenant)).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            target: Target::Unix(path.into()),
            tenant: None,
            api_key: None,
            access_token: None,
        }
    }

    /// The daemon on TCP: `http://HOST:PORT` or `HOST:PORT` (port 80 when absent), with
    /// the API key that names the tenant. TLS is not spoken: put a TLS proxy in front of
    /// a daemon reached over a network.
    pub fn tcp(host: &str, api_key: Option<String>) -> Result<Self, Error> {
        Ok(Self {
            target: Target::Tcp(parse_host(host)?),
            tenant: None,
            api_key: api_key.filter(|k| !k.is_empty()),
            access_token: None,
        })
    }

    /// The daemon as the CLI finds it: `WARREN_HOST` (TCP, with `WARREN_API_KEY`) when
    /// set, else the socket `WARREN_SOCKET`, else [`default_socket`]; the tenant from
    /// `WARREN_TENANT` on the socket.
    pub fn from_env() -> Result<Self, Error> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let client = match var("WARREN_HOST") {
            Some(host) => Self::tcp(&host, var("WARREN_API_KEY"))?,
            None => Self::unix(
                var("WARREN_SOCKET")
                    .map(PathBuf::from)
                    .unwrap_or_else(default_socket),
            ),
        };
        Ok(match var("WARREN_TENANT") {
            Some(t) => client.with_tenant(t),
            None => client,
        })
    }

    /// Acts for `tenant` on the unix socket (the default is `default`). Over TCP the API
    /// key decides and this is not sent.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sends `key` as the API key (TCP).
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into()).filter(|k| !k.is_empty());
        self
    }

    /// Sends a sandbox's access token (`SandboxInfo::access_token`) instead of an API
    /// key: it reaches that one sandbox's exec, process, file and terminal routes, named
    /// by its id, and nothing else.
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Whether this client reaches the daemon over TCP, from wherever it may be, rather
    /// than on the daemon's own host.
    pub fn over_tcp(&self) -> bool {
        matches!(self.target, Target::Tcp(_))
    }

    /// The unix socket this client uses, if it uses one.
    pub fn socket(&self) -> Option<&Path> {
        match &self.target {
            Target::Unix(p) => Some(p),
            Target::Tcp(_) => None,
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Unix(p) => format!("socket {}", p.display()),
            Target::Tcp(a) => format!("host http://{a}"),
        }
    }

    fn authority(&self) -> &str {
        match &self.target {
            Target::Unix(_) => "localhost",
            Target::Tcp(a) => a,
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Error> {
        let r: std::io::Result<Box<dyn Io>> = match &self.target {
            Target::Unix(p) => tokio::net::UnixStream::connect(p)
                .await
                .map(|s| Box::new(s) as Box<dyn Io>),
            Target::Tcp(a) => tokio::net::TcpStream::connect(a.as_str()).await.map(|s| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Io>
            }),
        };
        r.map_err(|e| Error::Connect {
            target: self.describe(),
            reason: e.to_string(),
        })
    }

    /// Who we are: the tenant on the socket, the API key on TCP; a sandbox's access
    /// token on either.
    fn credentials(&self) -> Vec<(HeaderName, String)> {
        let mut v = Vec::new();
        match &self.target {
            Target::Unix(_) => {
                if let Some(t) = &self.tenant {
                    v.push((HeaderName::from_static(TENANT_HEADER), t.clone()));
                }
            }
            Target::Tcp(_) => {
                if let Some(k) = &self.api_key {
                    v.push((AUTHORIZATION, format!("Bearer {k}")));
                }
            }
        }
        if let Some(t) = &self.access_token {
            v.push((HeaderName::from_static(ACCESS_TOKEN_HEADER), t.clone()));
        }
        v
    }

    /// Sends one request; a non-2xx answer becomes [`Error::Api`]. For routes this
    /// client has no typed method for.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<Response<Incoming>, Error> {
        let (content_type, body) = match body {
            Some((t, b)) => (Some(t), b),
            None => (None, Bytes::new()),
        };
        self.send_body(method, path, content_type, Full::new(body))
            .await
    }

    /// Sends one request with a body of any kind (a file streamed as it is read); a
    /// non-2xx answer becomes [`Error::Api`].
    pub async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: B,
    ) -> Result<Response<Incoming>, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the response body has been read or dropped; its errors reach the
            // reader of that body.
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.authority());
        for (name, value) in self.credentials() {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| Error::Invalid(format!("{name} has characters a header cannot")))?;
            req = req.header(name, value);
        }
        if let Some(content_type) = content_type {
            req = req.header(CONTENT_TYPE, content_type);
        }
        let req = req
            .body(body)
            .map_err(|e| Error::Invalid(format!("bad request {path:?}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(self.api_error(status, &bytes))
    }

    fn api_error(&self, status: hyper::StatusCode, body: &[u8]) -> Error {
        match serde_json::from_slice::<ApiError>(body) {
            // The daemon's message speaks HTTP; the caller sets a variable.
            Ok(e)
                if e.code == WireCode::Unauthorized.as_str()
                    && self.over_tcp()
                    && self.api_key.is_none()
                    && self.access_token.is_none() =>
            {
                Error::Api {
                    code: e.code,
                    message: "an API key is required over TCP: set WARREN_API_KEY".into(),
                }
            }
            Ok(e) => Error::Api {
                code: e.code,
                message: e.message,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                Error::Api {
                    code: format!("http_{}", status.as_u16()),
                    message: if text.is_empty() {
                        status.canonical_reason().unwrap_or("error").to_string()
                    } else {
                        text.chars().take(200).collect()
                    },
                }
            }
        }
    }

    /// A JSON call: `body` serialized, the answer parsed as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let bytes = self.call_raw(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// A JSON call whose answer is returned as bytes.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Bytes, Error> {
        let resp = self.send_json(method, path, body).await?;
        collect(resp).await
    }

    /// Sends one request whose body, if any, is `body` as JSON.
    async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Response<Incoming>, Error> {
        let body = match body {
            Some(b) => Some(("application/json", json_bytes(b)?)),
            None => None,
        };
        self.send(method, path, body).await
    }

    /// A call whose answer is a stream of JSON lines.
    pub async fn lines(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Lines, Error> {
        Ok(Lines::new(self.send_json(method, path, body).await?))
    }

    /// A call whose answer is a stream of binary frames ([`mux`]).
    pub async fn frames(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Frames, Error> {
        Ok(Frames::new(self.send_json(method, path, body).await?))
    }

    /// Opens a WebSocket on `path`. A refused upgrade becomes [`Error::Api`].
    pub async fn websocket(&self, path: &str) -> Result<WebSocketStream<Box<dyn Io>>, Error> {
        let io = self.connect().await?;
        let url = format!("ws://{}{}", self.authority(), path);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Invalid(format!("bad WebSocket address {url:?}: {e}")))?;
        for (name, value) in self.credentials() {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| Error::Invalid(format!("{name} has characters a header cannot")))?;
            req.headers_mut().insert(name, value);
        }
        match tokio_tungstenite::client_async(req, io).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                Err(self.api_error(resp.status(), body))
            }
            Err(e) => Err(Error::Connection(e.to_string())),
        }
    }
}

/// A whole response body.
pub(crate) async fn collect(resp: Response<Incoming>) -> Result<Bytes, Error> {
    resp.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| Error::Connection(e.to_string()))
}

fn json_bytes(body: &impl Serialize) -> Result<Bytes, Error> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// The daemon's default socket: `warren.sock` in its run directory, `$WARREN_RUN_DIR`
/// (default `/run/warren`).
pub fn default_socket() -> PathBuf {
    let run = std::env::var_os("WARREN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/warren"));
    std::path::absolute(&run).unwrap_or(run).join("warren.sock")
}

/// `http://host:port[/]` or `host:port` to `host:port` (port 80 when absent).
fn parse_host(s: &str) -> Result<String, Error> {
    if s.starts_with("https://") {
        return Err(Error::Invalid(format!(
            "--host {s}: TLS is not supported; use http:// behind a TLS proxy"
        )));
    }
    let rest = s.strip_prefix("http://").unwrap_or(s);
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(Error::Invalid(format!(
            "--host {s:?}: write http://HOST:PORT, e.g. http://127.0.0.1:3000"
        )));
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(_, rest)| rest).unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or_default(),
    };
    let port = port.strip_prefix(':').unwrap_or(port);
    if port.is_empty() && !authority.ends_with(':') {
        return Ok(format!("{authority}:80"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Invalid(format!(
            "--host {s:?}: {port:?} is not a port"
        )));
    }
    Ok(authority.to_string())
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a path segment or
/// a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v1/sandboxes/{key}{rest}`, the key encoded (it may be `owner/name`).
pub fn sandbox_path(key: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{}{rest}", enc(key))
}

/// Appends the body's next chunk to `buf`; false at its end.
async fn read_more(body: &mut Incoming, buf: &mut impl BufMut) -> Result<bool, Error> {
    match body.frame().await {
        None => Ok(false),
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data() {
                buf.put_slice(&data);
            }
            Ok(true)
        }
        Some(Err(e)) => Err(Error::Connection(e.to_string())),
    }
}

/// A stream of newline-delimited JSON values from a response body.
#[derive(Debug)]
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    /// The lines of `resp`'s body, as they arrive.
    pub fn new(resp: Response<Incoming>) -> Self {
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next non-empty line, without its newline; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.eof {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    self.buf.clear();
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(Error::Protocol(format!(
                    "a line of the stream is longer than {MAX_LINE} bytes"
                )));
            }
            self.eof = !read_more(&mut self.body, &mut self.buf).await?;
        }
    }

    /// The next line parsed as `T`; `None` at the end of the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        match self.next_line().await? {
            Some(line) => serde_json::from_slice(&line)
                .map(Some)
                .map_err(|e| Error::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line)))),
            None => Ok(None),
        }
    }
}

/// A stream of binary frames ([`mux`]) from a response body.
#[derive(Debug)]
pub struct Frames {
    body: Incoming,
    buf: BytesMut,
    eof: bool,
}

impl Frames {
    /// The frames of `resp`'s body, as they arrive.
    pub fn new(resp: Response<Incoming>) -> Self {
        Self {
            body: resp.into_body(),
            buf: BytesMut::new(),
            eof: false,
        }
    }

    /// The next frame: its kind and payload; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<(mux::Kind, Bytes)>, Error> {
        loop {
            if let Some(head) = self.buf.first_chunk::<{ mux::HEADER_LEN }>() {
                let (kind, len) =
                    mux::parse_header(head).map_err(|e| Error::Protocol(e.to_string()))?;
                if self.buf.len() >= mux::HEADER_LEN + len {
                    self.buf.advance(mux::HEADER_LEN);
                    return Ok(Some((kind, self.buf.split_to(len).freeze())));
                }
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Error::Connection("the stream ended inside a frame".into()));
            }
            self.eof = !read_more(&mut self.body, &mut self.buf).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("http://127.0.0.1:3000").unwrap(),
            "127.0.0.1:3000"
        );
        assert_eq!(parse_host("127.0.0.1:3000/").unwrap(), "127.0.0.1:3000");
        assert_eq!(parse_host("http://localhost").unwrap(), "localhost:80");
        assert_eq!(parse_host("http://[::1]:8080").unwrap(), "[::1]:8080");
        assert_eq!(parse_host("http://[::1]").unwrap(), "[::1]:80");
        assert!(parse_host("https://example.com").is_err());
        assert!(parse_host("http://a/b").is_err());
        assert!(parse_host("").is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(enc("alice/box 1"), "alice%2Fbox%201");
        assert_eq!(enc("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(sandbox_path("o/n", "/exec"), "/v1/sandboxes/o%2Fn/exec");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn connection_errors_say_where() {
        let conn = Error::Connect {
            target: "socket /run/warren/warren.sock".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        assert!(conn.to_string().contains("is `warren serve` running?"));
    }

    #[test]
    fn error_bodies_keep_their_codes_even_unknown_ones() {
        let client = Client::tcp("localhost:1", None).unwrap();
        let status = hyper::StatusCode::CONFLICT;
        let code = |body: &str| match client.api_error(status, body.as_bytes()) {
            Error::Api { code, .. } => code,
            e => panic!("{e}"),
        };
        assert_eq!(code(r#"{"code":"name_taken","message":"m"}"#), "name_taken");
        // A newer daemon's code still reaches the user.
        assert_eq!(code(r#"{"code":"brand_new","message":"m"}"#), "brand_new");
        assert_eq!(code("not json"), "http_409");
        match client.api_error(status, br#"{"code":"unauthorized","message":"m"}"#) {
            Error::Api { code, message } => {
                assert_eq!(code, "unauthorized");
                assert!(message.contains("WARREN_API_KEY"), "{message}");
            }
            e => panic!("{e}"),
        }
        // A wrong key is told as the daemon tells it.
        let keyed = client.with_api_key("wrong");
        match keyed.api_error(status, br#"{"code":"unauthorized","message":"m"}"#) {
            Error::Api { message, .. } => assert_eq!(message, "m"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn credentials_never_reach_debug_output() {
        let c = Client::tcp("127.0.0.1:1", Some("secret-key".into()))
            .unwrap()
            .with_access_token("secret-token");
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
