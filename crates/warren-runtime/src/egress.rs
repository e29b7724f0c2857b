//! The egress proxy: where a sandbox's domain rules are enforced.
//!
//! An address rule is a netfilter rule (see [`crate::network::set_egress`]); a domain
//! rule needs the name a connection carries, which only shows in its first bytes: the
//! server name of a TLS ClientHello (port 443) or the `Host` header of an HTTP request
//! (port 80). A sandbox with a domain rule has those connections redirected here. The
//! proxy reads the first bytes (nothing is sent on before a decision), and then:
//!
//! - a name an `allow` rule names goes to what the name resolves to on the host, never
//!   to an address the sandbox chose: a ClientHello naming an allowed host sent to any
//!   other address reaches that host or nothing;
//! - anything else is judged by its address as the netfilter rules would;
//! - the host itself, its loopback, link-local, multicast and the sandboxes' own subnet
//!   are never a destination, whatever a name resolves to.
//!
//! A refused HTTP request gets a `403` saying why; a refused TLS connection is closed.
//! The proxy takes connections only from sandbox addresses whose lease names a sandbox
//! it has rules for, only redirected ones, and at most [`PER_SANDBOX`] of a sandbox at
//! once (the daemon's file descriptors are not the sandbox's to spend). When a
//! sandbox's rules change, each of its open connections is judged again and closed if
//! the new rules refuse it; when the sandbox goes, they all close.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use warren_types::egress::{EgressRules, Net};

/// The most of a connection read before deciding.
const HEAD_MAX: usize = 16 * 1024 + 5;
/// How long a connection may take to show its name (and the destination to answer).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections of one sandbox through the proxy at once.
pub const PER_SANDBOX: usize = 256;

/// A sandbox's rules as its connections follow them: `None` once it is gone.
type Rules = Option<Arc<EgressRules>>;

#[derive(Debug)]
struct Entry {
    rules: watch::Sender<Rules>,
    open: AtomicUsize,
}

type Table = Arc<Mutex<HashMap<String, Arc<Entry>>>>;

/// The proxy of one daemon.
#[derive(Debug, Clone)]
pub struct EgressProxy {
    port: u16,
    rules: Table,
}

impl EgressProxy {
    /// Listens on a port the kernel picks and serves on the current tokio runtime;
    /// `run_dir` is where the sandboxes' address leases are.
    pub fn start(run_dir: &Path) -> io::Result<Self> {
        let std = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        std.set_nonblocking(true)?;
        let port = std.local_addr()?.port();
        let listener = TcpListener::from_std(std)?;
        let rules: Table = Arc::default();
        let leases = run_dir.join("net");
        let table = rules.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(entry) = sandbox_of(&leases, peer).and_then(|id| {
                    table
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .cloned()
                }) else {
                    continue;
                };
                if entry.open.fetch_add(1, Ordering::AcqRel) >= PER_SANDBOX {
                    entry.open.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                tokio::spawn(async move {
                    let _ = serve(conn, peer, entry.rules.subscribe()).await;
                    entry.open.fetch_sub(1, Ordering::AcqRel);
                });
            }
        });
        Ok(Self { port, rules })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The rules the proxy holds sandbox `id` to, its open connections included.
    pub fn set(&self, id: &str, rules: EgressRules) {
        let rules = Some(Arc::new(rules));
        let mut table = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(id) {
            Some(e) => {
                e.rules.send_replace(rules);
            }
            None => {
                table.insert(
                    id.to_string(),
                    Arc::new(Entry {
                        rules: watch::Sender::new(rules),
                        open: AtomicUsize::new(0),
                    }),
                );
            }
        }
    }

    /// Forgets sandbox `id`: its open connections close.
    pub fn remove(&self, id: &str) {
        let gone = self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(e) = gone {
            e.rules.send_replace(None);
        }
    }
}

/// The sandbox whose address `peer` is, from its lease (see [`crate::network`]).
fn sandbox_of(leases: &Path, peer: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = peer.ip() else {
        return None;
    };
    let base = u32::from(Ipv4Addr::new(10, 200, 0, 0));
    let off = u32::from(ip).checked_sub(base)?;
    // The sandbox's end of its /30 is the second address.
    if off >= 1 << 16 || off % 4 != 2 {
        return None;
    }
    let lease: PathBuf = leases.join((off / 4).to_string());
    std::fs::read_to_string(lease).ok()
}

async fn serve(
    mut conn: TcpStream,
    peer: SocketAddr,
    mut rx: watch::Receiver<Rules>,
) -> io::Result<()> {
    let local = conn.local_addr()?;
    let orig = original_dst(&conn)?;
    if SocketAddr::V4(orig) == local || !through_own_link(peer, local) {
        // Not redirected (someone dialled the proxy itself), or not from the sandbox's
        // own link.
        return Ok(());
    }
    let Some(rules) = rx.borrow_and_update().clone() else {
        return Ok(());
    };
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn, orig.port()))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let name = match orig.port() {
        443 => server_name(&head),
        80 => http_host(&head),
        _ => None,
    };
    let target = match decide(&rules, orig, name.as_deref()).await {
        Ok(t) => t,
        Err(why) => {
            if orig.port() == 80 {
                let body = format!("blocked by the sandbox's egress rules: {why}\n");
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: \
                     {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
            return Ok(());
        }
    };
    let mut up = tokio::time::timeout(HEAD_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    up.write_all(&head).await?;
    let relay = tokio::io::copy_bidirectional(&mut conn, &mut up);
    tokio::pin!(relay);
    loop {
        tokio::select! {
            r = &mut relay => return r.map(|_| ()),
            changed = rx.changed() => {
                let still = changed.is_ok()
                    && rx
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|r| still_allowed(r, &name, orig, target));
                if !still {
                    return Ok(());
                }
            }
        }
    }
}

/// Whether a connection `decide` sent to `target` is allowed by changed rules.
fn still_allowed(
    rules: &EgressRules,
    name: &Option<String>,
    orig: SocketAddrV4,
    target: SocketAddrV4,
) -> bool {
    name.as_deref().is_some_and(|h| rules.allows_name(h))
        || (target == orig && rules.allows(*orig.ip(), None))
}

/// Whether a redirected connection from `peer` arrived at its own link's host end (the
/// first address of the sandbox's /30), as every sandbox connection does.
fn through_own_link(peer: SocketAddr, local: SocketAddr) -> bool {
    match (peer.ip(), local.ip()) {
        (IpAddr::V4(p), IpAddr::V4(l)) => u32::from(p).wrapping_sub(1) == u32::from(l),
        _ => false,
    }
}

/// Where a connection may go, or why not.
async fn decide(
    rules: &EgressRules,
    orig: SocketAddrV4,
    name: Option<&str>,
) -> Result<SocketAddrV4, String> {
    if let Some(host) = name.filter(|h| rules.allows_name(h)) {
        let found: Vec<Ipv4Addr> =
            tokio::time::timeout(HEAD_TIMEOUT, tokio::net::lookup_host((host, orig.port())))
                .await
                .map_err(|_| format!("{host} did not resolve in time"))?
                .map_err(|e| format!("{host} does not resolve: {e}"))?
                .filter_map(|a| match a {
                    SocketAddr::V4(a) => Some(*a.ip()),
                    SocketAddr::V6(_) => None,
                })
                .filter(|ip| !forbidden(*ip))
                .collect();
        let ip = if found.contains(orig.ip()) {
            *orig.ip()
        } else {
            *found
                .first()
                .ok_or_else(|| format!("{host} has no address a sandbox may reach"))?
        };
        return Ok(SocketAddrV4::new(ip, orig.port()));
    }
    if forbidden(*orig.ip()) {
        return Err(format!("{} is not reachable from a sandbox", orig.ip()));
    }
    if rules.allows(*orig.ip(), None) {
        return Ok(orig);
    }
    Err(match name {
        Some(h) => format!("{h} ({}) is not allowed", orig.ip()),
        None => format!("{} is not allowed", orig.ip()),
    })
}

/// Addresses no sandbox connection goes to through the proxy: the proxy speaks from the
/// host, where they would reach the host itself or its neighbours' special services.
fn forbidden(ip: Ipv4Addr) -> bool {
    let special = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/3",
        "10.200.0.0/16",
    ];
    special
        .iter()
        .filter_map(|n| Net::parse(n))
        .any(|n| n.contains(ip))
        || host_addresses().contains(&ip)
}

/// The IPv4 addresses of the host's own interfaces.
fn host_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
                .collect()
        })
        .unwrap_or_default()
}

fn original_dst(conn: &TcpStream) -> io::Result<SocketAddrV4> {
    let a = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst)
        .map_err(io::Error::from)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
        u16::from_be(a.sin_port),
    ))
}

/// Reads what the decision needs: a whole first TLS record on 443, an HTTP request's
/// head on 80, at most [`HEAD_MAX`] bytes (the peer's end or the limit ends it early).
async fn read_head(conn: &mut TcpStream, port: u16) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let enough = match port {
            443 => {
                buf.len() >= 5 && buf.len() >= 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))
            }
            80 => buf.windows(4).any(|w| w == b"\r\n\r\n"),
            _ => !buf.is_empty(),
        };
        if enough || buf.len() >= HEAD_MAX {
            return Ok(buf);
        }
        let want = chunk.len().min(HEAD_MAX - buf.len());
        let n = conn.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The server name of a TLS ClientHello in its first record, if it has one.
pub fn server_name(head: &[u8]) -> Option<String> {
    let mut r = Reader(head);
    if r.u8()? != 0x16 {
        return None;
    }
    r.take(2)?;
    let len = usize::from(r.u16()?);
    let mut hs = Reader(r.take(len.min(r.0.len()))?);
    if hs.u8()? != 0x01 {
        return None;
    }
    let hlen = hs.u24()?;
    let mut hello = Reader(hs.take(hlen.min(hs.0.len()))?);
    hello.take(2 + 32)?;
    let sid = usize::from(hello.u8()?);
    hello.take(sid)?;
    let suites = usize::from(hello.u16()?);
    hello.take(suites)?;
    let comp = usize::from(hello.u8()?);
    hello.take(comp)?;
    let ext_len = usize::from(hello.u16()?);
    let mut exts = Reader(hello.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let mut data = Reader(exts.take(len)?);
        if kind != 0 {
            continue;
        }
        let list = usize::from(data.u16()?);
        let mut names = Reader(data.take(list)?);
        while !names.0.is_empty() {
            let t = names.u8()?;
            let n = usize::from(names.u16()?);
            let name = names.take(n)?;
            if t == 0 {
                return valid_host(name);
            }
        }
        return None;
    }
    None
}

/// The host an HTTP request's `Host` header names (without the port).
pub fn http_host(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?;
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next()?;
    if hosts.next().is_some() {
        // Two Host headers: which one a server believes is its own business.
        return None;
    }
    let v = host.value;
    let v = match v.iter().rposition(|b| *b == b':') {
        Some(i) if v[i + 1..].iter().all(u8::is_ascii_digit) => &v[..i],
        _ => v,
    };
    valid_host(v)
}

fn valid_host(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?;
    (!s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')))
    .then(|| s.to_ascii_lowercase())
}

/// Reads big-endian fields off a byte slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client would send it, naming `name`.
    fn hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut exts = Vec::new();
        // An extension before it, so the walk is exercised.
        exts.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
        exts.extend_from_slice(&[0x00, 0x00]);
        exts.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sni);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[0]);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_server_name_is_read_from_a_client_hello() {
        assert_eq!(server_name(&hello("PyPI.org")).as_deref(), Some("pypi.org"));
        let h = hello("example.com");
        // Every truncation is refused, none panics.
        for i in 0..h.len() {
            assert_eq!(server_name(&h[..i]), None, "cut at {i}");
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(server_name(&hello("bad name")), None);
    }

    #[test]
    fn the_host_header_is_read_without_its_port() {
        let req = b"GET / HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(http_host(req).as_deref(), Some("example.com"));
        let two = b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n";
        assert_eq!(http_host(two), None);
        assert_eq!(http_host(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(http_host(&hello("a.com")), None);
    }

    #[test]
    fn the_host_and_special_addresses_are_never_destinations() {
        assert!(forbidden(Ipv4Addr::LOCALHOST));
        assert!(forbidden("169.254.169.254".parse().unwrap()));
        assert!(forbidden("10.200.3.6".parse().unwrap()));
        assert!(forbidden("239.1.1.1".parse().unwrap()));
        for ip in host_addresses() {
            assert!(forbidden(ip));
        }
        assert!(!forbidden("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn only_a_sandbox_address_with_a_lease_is_a_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("3"), "sbx").unwrap();
        let at = |ip: &str| sandbox_of(dir.path(), SocketAddr::new(ip.parse().unwrap(), 1));
        assert_eq!(at("10.200.0.14").as_deref(), Some("sbx"));
        assert_eq!(at("10.200.0.13"), None);
        assert_eq!(at("10.200.0.18"), None);
        assert_eq!(at("192.168.0.14"), None);
    }
}
