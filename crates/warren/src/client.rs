//! The CLI's side of a running daemon (`warren serve`): HTTP/1.1 on its unix socket, or on
//! TCP with an API key.
//!
//! Over the unix socket the caller is trusted (the socket's permissions are the gate) and
//! names its tenant in `X-Warren-Tenant`; over TCP the API key in `WARREN_API_KEY` names
//! it. Every request opens its own connection: a CLI call makes a handful, the socket is
//! local, and a long stream (exec output, events) then never holds up a short call made
//! beside it (stdin, a signal, a resize).
//!
//! Errors keep the daemon's stable code: an API error exits 1 and prints
//! `warren: <message> (<code>)`; a daemon that cannot be reached exits 125 with a hint.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;
use warren_types::api::{ApiError, WireCode};

/// The header that names the tenant on the unix socket.
pub const TENANT_HEADER: &str = "x-warren-tenant";

/// A line of a stream longer than this is refused rather than buffered.
const MAX_LINE: usize = 64 << 20;

/// How to reach the daemon; accepted by every verb that talks to it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// The daemon's unix socket [default: $WARREN_RUN_DIR/warren.sock, or
    /// /run/warren/warren.sock].
    #[arg(long, env = "WARREN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Reach the daemon over TCP instead, e.g. http://127.0.0.1:3000; the API key is read
    /// from WARREN_API_KEY.
    #[arg(long, env = "WARREN_HOST", value_name = "URL")]
    pub host: Option<String>,
    /// The tenant to act for on the unix socket [default: `warren --tenant`, else
    /// WARREN_TENANT, else default]. Over TCP the API key decides.
    #[arg(long)]
    pub tenant: Option<String>,
}

/// `warren --tenant` (or WARREN_TENANT): the tenant of every verb that names none.
static DEFAULT_TENANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the tenant of every verb that names none; the first call wins.
pub fn set_default_tenant(tenant: Option<String>) {
    if let Some(t) = tenant {
        let _ = DEFAULT_TENANT.set(t);
    }
}

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon answered with an error.
    #[error("{message} ({code})")]
    Api { code: String, message: String },
    #[error("cannot connect: {reason}; is `warren serve` running? ({target})")]
    Connect { target: String, reason: String },
    #[error("the connection to the daemon failed: {0}")]
    Connection(String),
    #[error("the daemon's answer was not understood: {0}")]
    Protocol(String),
    #[error("{0}")]
    Invalid(String),
    /// Our stdout's reader went away (`warren ls | head`): the command ends quietly, as
    /// SIGPIPE would end it.
    #[error("stdout is closed")]
    StdoutClosed,
    #[error("cannot write the output: {0}")]
    Output(String),
}

impl Error {
    /// What the caller named is not there (a port a sandbox does not publish, a process
    /// it does not have): refused as the daemon refuses what it cannot find.
    pub fn not_found(message: String) -> Self {
        Self::Api {
            code: WireCode::NotFound.as_str().into(),
            message,
        }
    }

    /// The CLI's exit status for this error: 1 when the daemon said no, 125 when it could
    /// not be asked.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Api { .. } => 1,
            Self::Invalid(_) => 2,
            Self::StdoutClosed => 141,
            _ => 125,
        }
    }
}

/// Either kind of connection, as one type the HTTP and WebSocket layers can drive.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

/// A daemon to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    tenant: Option<String>,
    api_key: Option<String>,
}

impl Client {
    /// From the command line and the environment: `--host` (TCP) wins over the socket.
    pub fn new(args: &ClientArgs) -> Result<Self, Error> {
        let target = match &args.host {
            Some(h) => Target::Tcp(parse_host(h)?),
            None => Target::Unix(args.socket.clone().unwrap_or_else(default_socket)),
        };
        let api_key = std::env::var("WARREN_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        Ok(Self {
            target,
            tenant: args
                .tenant
                .clone()
                .or_else(|| DEFAULT_TENANT.get().cloned()),
            api_key,
        })
    }

    /// Whether this client reaches the daemon over TCP, from wherever it may be, rather
    /// than on the daemon's own host.
    pub fn over_tcp(&self) -> bool {
        matches!(self.target, Target::Tcp(_))
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

    /// Who we are: the tenant on the socket, the API key on TCP.
    fn credentials(&self) -> Vec<(hyper::header::HeaderName, String)> {
        match &self.target {
            Target::Unix(_) => self
                .tenant
                .iter()
                .map(|t| {
                    (
                        hyper::header::HeaderName::from_static(TENANT_HEADER),
                        t.clone(),
                    )
                })
                .collect(),
            Target::Tcp(_) => self
                .api_key
                .iter()
                .map(|k| (AUTHORIZATION, format!("Bearer {k}")))
                .collect(),
        }
    }

    /// Sends one request; a non-2xx answer becomes [`Error::Api`].
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
            // The daemon's message speaks HTTP; the CLI's user sets a variable.
            Ok(e) if e.code == WireCode::Unauthorized.as_str() && self.api_key.is_none() => {
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
        let body = match body {
            Some(b) => Some(("application/json", json_bytes(b)?)),
            None => None,
        };
        let resp = self.send(method, path, body).await?;
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| Error::Connection(e.to_string()))
    }

    /// A call whose answer is a stream of JSON lines.
    pub async fn lines(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Lines, Error> {
        let body = match body {
            Some(b) => Some(("application/json", json_bytes(b)?)),
            None => None,
        };
        let resp = self.send(method, path, body).await?;
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Opens a WebSocket on `path`.
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

fn json_bytes(body: &impl Serialize) -> Result<Bytes, Error> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// The daemon's default socket: `warren.sock` in the run directory.
pub fn default_socket() -> PathBuf {
    warren_runtime::Paths::from_env().run.join("warren.sock")
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

/// A stream of newline-delimited JSON values from a response body.
#[derive(Debug)]
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
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
            match self.body.frame().await {
                None => self.eof = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Error::Connection(e.to_string())),
            }
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

/// Runs a client verb on a single-threaded runtime. The runtime is not waited for at the
/// end: a thread blocked reading the terminal must not keep the CLI from exiting.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    Ok(out)
}

/// Writes `data` to stdout and flushes it, so streamed output shows as it comes.
pub fn out(data: impl AsRef<[u8]>) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(data.as_ref())
        .and_then(|_| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Error::StdoutClosed,
            _ => Error::Output(e.to_string()),
        })
}

/// Writes `data` to stderr.
pub fn write_stderr(data: &[u8]) {
    let _ = std::io::stderr().lock().write_all(data);
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
    fn exit_codes() {
        let api = Error::Api {
            code: "not_found".into(),
            message: "no sandbox \"x\"".into(),
        };
        assert_eq!(api.exit_code(), 1);
        assert_eq!(api.to_string(), "no sandbox \"x\" (not_found)");
        let conn = Error::Connect {
            target: "socket /run/warren/warren.sock".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(conn.exit_code(), 125);
        assert!(conn.to_string().contains("is `warren serve` running?"));
    }

    #[test]
    fn error_bodies_keep_their_codes_even_unknown_ones() {
        let client = Client {
            target: Target::Tcp("localhost:1".into()),
            tenant: None,
            api_key: None,
        };
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
    }
}
