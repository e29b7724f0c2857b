//! The TCP listeners' connections, bounded so that a flood of them cannot take the daemon
//! down: anyone who reaches a TCP port may open connections, with no key.
//!
//! A connection is always in one of three phases:
//!
//! - *waiting*: no request in flight. The next request must begin within the idle
//!   timeout (within the header timeout for a connection's first request).
//! - *head*: bytes of a request came, its head is not complete. It must be complete
//!   within the header timeout of its first byte, however the rest trickles in.
//! - *busy*: a request is being answered. No timeout: an exec stream, a terminal or a
//!   stream of events may be quiet for hours. A connection that switched protocols (a
//!   WebSocket) has left HTTP and is never timed again.
//!
//! A listener holds at most [`Limits::max_connections`], and one peer (an IPv4 address,
//! or an IPv6 /64, which one host usually has whole) at most [`Limits::max_per_peer`].
//! A connection that would pass either closes the oldest connection (of that peer, for
//! the second) that is not [authenticated](mark_authenticated) to make room; when every
//! one is, the newcomer is closed instead. A flood of anonymous connections so pushes out
//! only anonymous ones, and a client is authenticated from its first request on.
//!
//! The unix socket is served apart and counts nowhere here: the caps are fitted under the
//! process's limit on open files with room to spare ([`Limits::fitted`]), so the host's
//! root reaches the daemon whatever happens on TCP.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, Version};
use axum::response::Response;
use axum::Router;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::{Builder, UpgradeableConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How the connections of each TCP listener are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a request's head may take from its first byte, and longest a new
    /// connection may wait before its first request begins.
    pub header_timeout: Duration,
    /// Longest a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Most connections open on one listener.
    pub max_connections: usize,
    /// Most connections open on one listener from one peer.
    pub max_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_per_peer: 512,
        }
    }
}

/// Descriptors kept for all but TCP clients: the unix socket and its clients, each
/// sandbox's agent and console, the store, images being unpacked.
const RESERVED_FILES: u64 = 1024;

impl Limits {
    /// These limits, with the caps lowered if need be so that `listeners` TCP listeners
    /// at their caps leave room under `open_files`, the process's limit: a reserve for
    /// everything else, and two descriptors for each connection, since one may hold a
    /// second (to a sandbox's port or agent) for as long as it lasts.
    pub fn fitted(self, open_files: u64, listeners: usize) -> Limits {
        let reserve = RESERVED_FILES.min(open_files / 2);
        let room = (open_files - reserve) / 2 / listeners.max(1) as u64;
        let max_connections = self
            .max_connections
            .min(usize::try_from(room).unwrap_or(usize::MAX))
            .max(1);
        Limits {
            max_connections,
            max_per_peer: self.max_per_peer.clamp(1, max_connections),
            ..self
        }
    }
}

/// Longest the accept loop waits for a connection it closed to make room to be gone.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` within `limits` until `shutdown` turns true; then stops
/// accepting, lets the requests in flight finish, and returns once they have.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    nodelay: bool,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let registry = Arc::new(Registry::new(limits));
    let mut builder = Builder::new(TokioExecutor::new());
    // The phases time heads; hyper's own timer would count the idle wait as well.
    builder.http1().header_read_timeout(None);
    // WebSockets over HTTP/2 use the extended CONNECT.
    builder.http2().enable_connect_protocol();
    let builder = Arc::new(builder);
    // Every connection's task holds a receiver; all are gone once every task ended.
    let (done, running) = watch::channel(());
    let mut stopping = pin!(crate::shutting_down(shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stopping => break,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) if is_connection_error(&e) => continue,
            Err(_) => {
                // Out of descriptors or memory: the next accept would fail the same way.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((slot, evicted)) = registry.admit(Peer::of(addr.ip())) else {
            continue;
        };
        if let Some(old) = evicted {
            // Its task closes it, but may not run before this loop accepts again: a flood
            // would hold descriptors past the cap. Not forever, though, should it be slow.
            let _ = tokio::time::timeout(EVICTION_WAIT, old.gone.notified()).await;
        }
        if nodelay {
            // Streams write small envelopes; Nagle's algorithm would hold each behind the
            // client's delayed ACK.
            let _ = stream.set_nodelay(true);
        }
        let conn = slot.conn.clone();
        let io = Io {
            stream,
            conn: conn.clone(),
            _slot: slot,
        };
        let service = Service {
            router: router.clone(),
            conn: conn.clone(),
        };
        let (builder, shutdown, running) = (builder.clone(), shutdown.clone(), running.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let http = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    drive(http, &conn, &limits, shutdown).await;
                }
                Some(acceptor) => {
                    // The handshake is the head of the first request: it gets that time.
                    let shaken =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await;
                    if let Ok(Ok(stream)) = shaken {
                        let http =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        drive(http, &conn, &limits, shutdown).await;
                    }
                }
            }
            drop(running);
        });
    }
    drop(listener);
    drop(running);
    done.closed().await;
    Ok(())
}

/// Errors of one connection that the listener goes on after.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

type Http<'a, I> = UpgradeableConnection<'a, TokioIo<I>, Service, TokioExecutor>;

/// Runs one connection's HTTP until it ends, is closed from outside, or overstays its
/// phase; on shutdown, it finishes what is in flight and ends.
async fn drive<I>(http: Http<'_, I>, conn: &Conn, limits: &Limits, shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = pin!(http);
    let mut stopping = pin!(crate::shutting_down(shutdown));
    let mut draining = false;
    loop {
        let deadline = conn.deadline(limits);
        let overstay = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Ended, or switched protocols: the socket is the upgrade's now.
            _ = http.as_mut() => return,
            _ = conn.closed.notified() => return,
            _ = conn.rearm.notified() => {}
            _ = overstay => {
                if conn.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    conn.close();
                    return;
                }
            }
            _ = &mut stopping, if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is between requests; see the module's doc.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Waiting { since: Instant, first: bool },
    Head { since: Instant },
    Busy(usize),
}

/// What the registry, the socket, the service and the connection's task share.
#[derive(Debug)]
struct Conn {
    /// Order of arrival on the listener: the lowest is the oldest.
    serial: u64,
    peer: Peer,
    trusted: Trusted,
    phase: Mutex<Phase>,
    /// An HTTP/2 connection reads frames of its own between requests (pings, window
    /// updates), which begin no request.
    http2: AtomicBool,
    /// Wakes the connection's task when its deadline came nearer.
    rearm: Notify,
    is_closed: AtomicBool,
    /// Wakes the connection's task when it is closed from outside.
    closed: Notify,
    /// Whoever waits on the socket, which after an upgrade is not the connection's task.
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// Told when the socket has been closed and the slot given back.
    gone: Notify,
}

impl Conn {
    fn new(serial: u64, peer: Peer) -> Conn {
        Conn {
            serial,
            peer,
            trusted: Trusted::default(),
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                first: true,
            }),
            http2: AtomicBool::new(false),
            rearm: Notify::new(),
            is_closed: AtomicBool::new(false),
            closed: Notify::new(),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            gone: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match *self.phase() {
            Phase::Waiting { since, first: true } | Phase::Head { since } => {
                Some(since + limits.header_timeout)
            }
            Phase::Waiting {
                since,
                first: false,
            } => Some(since + limits.idle_timeout),
            Phase::Busy(_) => None,
        }
    }

    /// Bytes came from the client.
    fn received(&self) {
        if self.http2.load(Ordering::Relaxed) {
            return;
        }
        let mut phase = self.phase();
        if let Phase::Waiting { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
            self.rearm.notify_one();
        }
    }

    fn request_started(&self, version: Version) {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
    }

    fn request_ended(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => {
                self.rearm.notify_one();
                Phase::Waiting {
                    since: Instant::now(),
                    first: false,
                }
            }
        };
    }

    /// Closes the connection: its task lets go of the socket, and whoever holds it after
    /// an upgrade gets an error from then on.
    fn close(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed.notify_one();
        self.reader.wake();
        self.writer.wake();
    }

    fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }
}

/// Who a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    V4(Ipv4Addr),
    /// The first 64 bits.
    V6(u64),
}

impl Peer {
    fn of(ip: IpAddr) -> Peer {
        match ip {
            IpAddr::V4(a) => Peer::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => Peer::V4(a),
                None => Peer::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// The open connections of one listener.
#[derive(Debug)]
struct Registry {
    limits: Limits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    conns: BTreeMap<u64, Arc<Conn>>,
    per_peer: HashMap<Peer, usize>,
}

impl Open {
    fn remove(&mut self, serial: u64) -> Option<Arc<Conn>> {
        let conn = self.conns.remove(&serial)?;
        if let Some(n) = self.per_peer.get_mut(&conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&conn.peer);
            }
        }
        Some(conn)
    }

    /// The oldest connection, of `peer` if given, with no authenticated request.
    fn oldest_anonymous(&self, peer: Option<Peer>) -> Option<u64> {
        self.conns
            .values()
            .find(|c| !c.trusted.is_set() && peer.is_none_or(|p| c.peer == p))
            .map(|c| c.serial)
    }
}

impl Registry {
    fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            open: Mutex::default(),
        }
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `peer`, made by closing an anonymous one if the
    /// listener or the peer is at its cap (returned too, as it may not be gone yet);
    /// none if there is no anonymous one to close.
    fn admit(self: &Arc<Self>, peer: Peer) -> Option<(Slot, Option<Arc<Conn>>)> {
        let mut open = self.open();
        let peer_full = open.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer;
        let full = open.conns.len() >= self.limits.max_connections;
        let mut evicted = None;
        if peer_full || full {
            let victim = open.oldest_anonymous(peer_full.then_some(peer))?;
            evicted = open.remove(victim);
            if let Some(conn) = &evicted {
                conn.close();
            }
        }
        open.next += 1;
        let conn = Arc::new(Conn::new(open.next, peer));
        open.conns.insert(conn.serial, conn.clone());
        *open.per_peer.entry(peer).or_default() += 1;
        let slot = Slot {
            registry: self.clone(),
            conn,
        };
        Some((slot, evicted))
    }
}

/// A connection's place on its listener, given back when its socket is closed.
#[derive(Debug)]
struct Slot {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.open().remove(self.conn.serial);
        self.conn.gone.notify_one();
    }
}

/// The socket as HTTP sees it: reads move the phase, and once the connection is closed
/// from outside every call fails. It holds the connection's slot, which it keeps through
/// an upgrade.
#[derive(Debug)]
struct Io {
    stream: TcpStream,
    conn: Arc<Conn>,
    /// Dropped after `stream`, so that a slot given back is a descriptor closed.
    _slot: Slot,
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the server")
}

impl Io {
    /// `poll` on the socket, failing once the connection is closed; `waker` is woken
    /// when that happens.
    fn guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        waker: fn(&Conn) -> &AtomicWaker,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(aborted()));
        }
        let r = poll(Pin::new(&mut self.stream), cx);
        if r.is_pending() {
            waker(&self.conn).register(cx.waker());
            // Closed between the check and the registration: nobody would wake us.
            if self.conn.is_closed() {
                return Poll::Ready(Err(aborted()));
            }
        }
        r
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = this.guarded(cx, |c| &c.reader, |s, cx| s.poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                this.conn.received();
            }
        }
        r
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guarded(cx, |c| &c.writer, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guarded(cx, |c| &c.writer, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guarded(cx, |c| &c.writer, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guarded(cx, |c| &c.writer, |s, cx| s.poll_shutdown(cx))
    }
}

/// The router, for one connection: each request carries the connection's [`Trusted`]
/// and keeps it busy until its answer has been sent.
#[derive(Debug, Clone)]
struct Service {
    router: Router,
    conn: Arc<Conn>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let busy = Busy::start(self.conn.clone(), req.version());
        req.extensions_mut().insert(self.conn.trusted.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let resp = router.oneshot(req).await?;
            Ok(resp.map(|body| Body::new(Answer { body, _busy: busy })))
        })
    }
}

/// A request in flight on its connection.
#[derive(Debug)]
struct Busy(Arc<Conn>);

impl Busy {
    fn start(conn: Arc<Conn>, version: Version) -> Busy {
        conn.request_started(version);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// An answer's body, which keeps its request in flight until it is sent or dropped.
#[derive(Debug)]
struct Answer {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Set on a connection once one of its requests passed an API key or token check.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trusted(Arc<AtomicBool>);

impl Trusted {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Records that a request passed an API key or token check, which makes its connection
/// one of the last to be closed when the listener is full. Requests that did not come
/// through [`serve`] (the unix socket's, a test's) have no connection to mark.
pub(crate) fn mark_authenticated(extensions: &Extensions) {
    if let Some(t) = extensions.get::<Trusted>() {
        t.0.store(true, Ordering::Relaxed);
    }
}

/// The connection a request came on, for a handler that checks a credential itself.
#[derive(Debug)]
pub(crate) struct Connection(Option<Trusted>);

impl Connection {
    /// See [`mark_authenticated`].
    pub fn authenticated(&self) {
        if let Some(t) = &self.0 {
            t.0.store(true, Ordering::Relaxed);
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Connection {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Connection(parts.extensions.get::<Trusted>().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::get;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    use super::*;

    const QUIET: Duration = Duration::from_millis(1500);

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(700),
            max_connections: 100,
            max_per_peer: 100,
        }
    }

    /// `/` answers at once, `/auth` as a route whose credential passed, `/quiet` sends a
    /// line and then nothing for [`QUIET`] before its last, `/ws` echoes a WebSocket.
    fn app() -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/auth",
                get(|conn: Connection| async move {
                    conn.authenticated();
                    "ok"
                }),
            )
            .route(
                "/quiet",
                get(|| async {
                    let lines = futures_util::stream::iter([0, 1]).then(|i| async move {
                        if i == 1 {
                            tokio::time::sleep(QUIET).await;
                        }
                        Ok::<_, Infallible>(format!("line {i}\n"))
                    });
                    Body::from_stream(lines)
                }),
            )
            .route(
                "/ws",
                get(|ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(|mut socket| async move {
                        while let Some(Ok(Message::Text(t))) = socket.recv().await {
                            let _ = socket.send(Message::Text(t)).await;
                        }
                    })
                }),
            )
    }

    struct Server {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(listener, app(), limits, true, None, shutdown));
        Server { addr, stop, task }
    }

    async fn connect_from(server: &Server, from: &str) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        s.connect(server.addr).await.unwrap()
    }

    async fn connect(server: &Server) -> TcpStream {
        connect_from(server, "127.0.0.1").await
    }

    /// Sends `GET path` on a kept-alive connection and reads a short answer whole: its
    /// status, or None if the connection was closed.
    async fn request(s: &mut TcpStream, path: &str) -> Option<u16> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(head.as_bytes()).await.ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            // Every answer of `app` but `/quiet` is short and ends with "ok".
            if text.contains("\r\n\r\n") && text.ends_with("ok") {
                return text.split_whitespace().nth(1)?.parse().ok();
            }
        }
    }

    /// How long until the server closes `s`, if it does within `limit`.
    async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return t.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
    }

    /// Open, not closed by the server: nothing to read, no end.
    async fn is_open(s: &mut TcpStream) -> bool {
        closed_after(s, Duration::from_millis(100)).await.is_none()
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let server = start(limits()).await;
        let mut s = connect(&server).await;
        let after = closed_after(&mut s, Duration::from_secs(5)).await;
        let after = after.expect("a connection that sends nothing is closed");
        assert!(
            after >= Duration::from_millis(250),
            "closed after {after:?}"
        );
    }

    #[tokio::test]
    async fn a_trickled_head_is_closed_after_the_header_timeout() {
        let server = start(limits()).await;
        let mut s = connect(&server).await;
        let start = Instant::now();
        let mut cut = None;
        for b in b"GET / HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 200].iter())
        {
            if s.write_all(&[*b]).await.is_err() || !is_open(&mut s).await {
                cut = Some(start.elapsed());
                break;
            }
        }
        let cut = cut.expect("a head sent a byte at a time is cut off");
        assert!(
            cut >= Duration::from_millis(250) && cut < Duration::from_secs(2),
            "cut after {cut:?}"
        );
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_once_idle_for_the_idle_timeout() {
        let server = start(limits()).await;
        let mut s = connect(&server).await;
        assert_eq!(request(&mut s, "/").await, Some(200));
        // Longer than the header timeout: idle, not slow.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(request(&mut s, "/").await, Some(200));
        let after = closed_after(&mut s, Duration::from_secs(5)).await;
        let after = after.expect("an idle connection is closed");
        assert!(
            after >= Duration::from_millis(600),
            "closed after {after:?}"
        );
    }

    #[tokio::test]
    async fn http2_frames_between_requests_are_not_a_slow_head() {
        let server = start(limits()).await;
        let io = TokioIo::new(connect(&server).await);
        let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let get = || {
            Request::get(format!("http://{}/", server.addr))
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(h2.send_request(get()).await.unwrap().status(), 200);
        // Past the header timeout, within the idle one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = h2.send_request(get()).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            h2.send_request(get()).await.is_err(),
            "idle, yet still open"
        );
    }

    #[tokio::test]
    async fn a_quiet_answer_is_not_cut() {
        let server = start(limits()).await;
        let mut s = connect(&server).await;
        s.write_all(b"GET /quiet HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("line 1") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "cut: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        // And the connection serves the next request.
        assert_eq!(request(&mut s, "/").await, Some(200));
    }

    #[tokio::test]
    async fn a_quiet_websocket_is_not_cut() {
        let server = start(limits()).await;
        let mut s = connect(&server).await;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1);
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        tokio::time::sleep(QUIET).await;
        // A masked text frame "hi" (mask 0): the echo comes back unmasked.
        s.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
            .await
            .unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, [0x81, 2, b'h', b'i']);
    }

    #[tokio::test]
    async fn a_full_listener_closes_its_oldest_anonymous_connection() {
        let server = start(Limits {
            max_connections: 4,
            ..limits()
        })
        .await;
        let mut trusted = connect(&server).await;
        assert_eq!(request(&mut trusted, "/auth").await, Some(200));
        let mut anonymous = Vec::new();
        for _ in 0..3 {
            let mut s = connect(&server).await;
            // Answered, so accepted: the order of arrival is this one.
            assert_eq!(request(&mut s, "/").await, Some(200));
            anonymous.push(s);
        }
        let mut newcomer = connect(&server).await;
        assert_eq!(request(&mut newcomer, "/").await, Some(200));
        assert!(closed_after(&mut anonymous[0], Duration::from_secs(1))
            .await
            .is_some());
        assert_eq!(request(&mut anonymous[1], "/").await, Some(200));
        assert_eq!(request(&mut anonymous[2], "/").await, Some(200));
        assert_eq!(request(&mut trusted, "/").await, Some(200));
    }

    #[tokio::test]
    async fn a_listener_full_of_authenticated_connections_refuses_newcomers() {
        let server = start(Limits {
            max_connections: 2,
            ..limits()
        })
        .await;
        let mut a = connect(&server).await;
        let mut b = connect(&server).await;
        assert_eq!(request(&mut a, "/auth").await, Some(200));
        assert_eq!(request(&mut b, "/auth").await, Some(200));
        let mut c = connect(&server).await;
        assert_eq!(request(&mut c, "/").await, None);
        assert_eq!(request(&mut a, "/").await, Some(200));
        assert_eq!(request(&mut b, "/").await, Some(200));
        drop(b);
        // The place is given back once the socket is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = connect(&server).await;
        assert_eq!(request(&mut d, "/").await, Some(200));
    }

    #[tokio::test]
    async fn a_peer_over_its_share_makes_room_among_its_own() {
        let server = start(Limits {
            max_per_peer: 2,
            ..limits()
        })
        .await;
        let mut other = connect_from(&server, "127.0.0.2").await;
        assert_eq!(request(&mut other, "/").await, Some(200));
        let mut first = connect(&server).await;
        assert_eq!(request(&mut first, "/").await, Some(200));
        let mut second = connect(&server).await;
        assert_eq!(request(&mut second, "/").await, Some(200));
        let mut third = connect(&server).await;
        assert_eq!(request(&mut third, "/").await, Some(200));
        assert!(closed_after(&mut first, Duration::from_secs(1))
            .await
            .is_some());
        assert_eq!(request(&mut other, "/").await, Some(200));
        assert_eq!(request(&mut second, "/").await, Some(200));
    }

    #[tokio::test]
    async fn an_upgraded_anonymous_connection_can_be_closed_to_make_room() {
        let server = start(Limits {
            max_connections: 1,
            ..limits()
        })
        .await;
        let mut ws = connect(&server).await;
        ws.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut b = [0u8; 12];
        ws.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"HTTP/1.1 101");
        let mut newcomer = connect(&server).await;
        assert_eq!(request(&mut newcomer, "/").await, Some(200));
        assert!(closed_after(&mut ws, Duration::from_secs(1))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn shutdown_lets_answers_in_flight_finish() {
        let server = start(limits()).await;
        let mut s = connect(&server).await;
        s.write_all(b"GET /quiet HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("line 0"));
        let _ = server.stop.send(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "still accepting"
        );
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(String::from_utf8_lossy(&rest).contains("line 1"));
        let served = tokio::time::timeout(Duration::from_secs(1), server.task).await;
        assert!(matches!(served, Ok(Ok(Ok(())))));
    }

    #[test]
    fn caps_fit_under_the_open_files_limit() {
        let d = Limits::default();
        assert_eq!(d.fitted(1 << 20, 2), d);
        assert_eq!(d.fitted(20000, 2), d);
        let small = d.fitted(1024, 2);
        assert_eq!((small.max_connections, small.max_per_peer), (128, 128));
        assert_eq!(d.fitted(1024, 1).max_connections, 256);
        assert_eq!(d.fitted(0, 2).max_connections, 1);
    }

    #[test]
    fn peers_are_addresses_and_ipv6_prefixes() {
        let p = |s: &str| Peer::of(s.parse().unwrap());
        assert_eq!(p("10.0.0.1"), p("::ffff:10.0.0.1"));
        assert_ne!(p("10.0.0.1"), p("10.0.0.2"));
        assert_eq!(p("2001:db8:1:2::1"), p("2001:db8:1:2:ffff::9"));
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:3::1"));
    }
}
