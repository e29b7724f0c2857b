//! Floods of TCP connections, contained: thousands of idle connections and heads sent a
//! byte at a time, opened with no key against the daemon's TCP port. Throughout,
//! `/health` on the unix socket answers quickly and a client with an API key is served
//! on TCP; the idle and slow connections are closed once their timeouts pass; the
//! daemon's descriptors stay under its cap and its memory bounded. The test prints its
//! figures (`cargo test --test connections -- --nocapture`). Needs root (a daemon).
//!
//! The daemon's configuration (`[connections]`) shortens its timeouts, so that the test
//! takes seconds, and lowers its cap, so that a flood opened within the header timeout
//! passes it.

mod common;
mod trust;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::can_run;
use trust::{rss, Daemon, Options, Via};
use warren_server::Limits;

const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
const MAX_CONNECTIONS: usize = 500;
/// Idle connections opened, from [`PEERS`] addresses: more than the listener holds.
const FLOOD: usize = 3000;
const PEERS: u8 = 6;
/// Connections sending a head a byte at a time, and kept-alive ones left idle.
const SLOW: usize = 200;
const KEPT: usize = 50;
/// How often the clients with a key make a request: well within the idle timeout.
const KEYED_EVERY: Duration = Duration::from_secs(2);
/// What closing late or early may be off by: the daemon's timers, this test's polling.
const SLACK: Duration = Duration::from_millis(1500);
/// `/health` on the unix socket must answer within this, every time.
const HEALTH_BOUND: Duration = Duration::from_secs(1);
/// The daemon's resident memory may grow this much over its start.
const RSS_GROWTH_BOUND: u64 = 256 << 20;

/// A connection from `from` (any 127/8 address is this host's), so that the daemon sees
/// many peers.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(to) = to else {
        panic!("the daemon listens on IPv4")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// Whether the daemon closed `s` (which is non-blocking): its end came, or a reset.
fn is_closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 256];
    match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// One GET on a kept-alive connection: the status, or None if the connection is gone.
fn request(s: &mut BufReader<TcpStream>, path: &str, headers: &str) -> Option<u16> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    s.get_mut().write_all(head.as_bytes()).ok()?;
    let mut line = String::new();
    s.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0;
    loop {
        line.clear();
        if s.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some(status)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What the watcher saw while the flood lasted.
#[derive(Debug, Default)]
struct Watched {
    health_samples: usize,
    health_worst: Duration,
    health_failures: Vec<String>,
    files_peak: usize,
    rss_peak: u64,
}

/// A connection that is being or was closed, and when that was seen.
struct Tracked {
    stream: TcpStream,
    since: Instant,
    closed: Option<Duration>,
}

impl Tracked {
    fn poll(&mut self) {
        if self.closed.is_none() && is_closed(&self.stream) {
            self.closed = Some(self.since.elapsed());
        }
    }
}

#[test]
fn a_flood_of_connections_leaves_the_daemon_answering() {
    if !can_run("a_flood_of_connections_leaves_the_daemon_answering") {
        return;
    }
    let files = warren_sys::fd::raise_open_files_limit().unwrap();
    let config = format!(
        "[connections]\nheader_timeout_secs = {}\nidle_timeout_secs = {}\n\
         max_connections = {MAX_CONNECTIONS}\n",
        HEADER_TIMEOUT.as_secs(),
        IDLE_TIMEOUT.as_secs(),
    );
    let d = Daemon::start_opts(Options {
        tcp: true,
        config: Some(config),
        ..Default::default()
    });
    let pid = d.pid().unwrap();
    let addr: SocketAddr = d.listen.as_ref().unwrap().parse().unwrap();
    // The daemon runs under the same limit as this test, which it raises the same way.
    let limits = Limits {
        max_connections: MAX_CONNECTIONS,
        ..Limits::default()
    };
    let cap = limits.fitted(files, 1).max_connections;
    let flood = FLOOD.min(files as usize / 2);
    let bearer = format!("Authorization: Bearer {}\r\n", d.api_key());
    let (files_before, rss_before) = (open_files(pid), rss(pid));
    println!(
        "daemon before: {files_before} descriptors, {} MiB; cap {cap} connections, \
         open-files limit {files}",
        rss_before >> 20
    );

    let mut keyed = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(request(&mut keyed, "/v1/sandboxes", &bearer), Some(200));
    let mut keyed_requests = 1;
    let mut last_keyed = Instant::now();

    let stop = AtomicBool::new(false);
    let watched = Mutex::new(Watched::default());
    std::thread::scope(|scope| {
        // Stops the watcher however this ends: a failed assertion must not leave it
        // running, and the scope waiting for it.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stopper = Stop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = d.try_http(Via::Unix, "GET", "/health", &[], b"", HEALTH_BOUND * 5);
                let took = t.elapsed();
                let mut w = watched.lock().unwrap();
                w.health_samples += 1;
                w.health_worst = w.health_worst.max(took);
                match r {
                    Ok(r) if r.status == 200 && took <= HEALTH_BOUND => {}
                    Ok(r) => w.health_failures.push(format!("{} in {took:?}", r.status)),
                    Err(e) => w.health_failures.push(format!("{e} after {took:?}")),
                }
                w.files_peak = w.files_peak.max(open_files(pid));
                w.rss_peak = w.rss_peak.max(rss(pid));
                drop(w);
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        // Idle connections, more than the listener holds: the oldest make room.
        let t = Instant::now();
        let mut idle = Vec::with_capacity(flood);
        let mut refused = 0;
        for i in 0..flood {
            let from = Ipv4Addr::new(127, 0, 1, 1 + (i % PEERS as usize) as u8);
            match connect_from(from, addr) {
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    idle.push(Tracked {
                        stream: s,
                        since: Instant::now(),
                        closed: None,
                    });
                }
                Err(_) => refused += 1,
            }
            if last_keyed.elapsed() >= KEYED_EVERY {
                assert_eq!(request(&mut keyed, "/v1/sandboxes", &bearer), Some(200));
                keyed_requests += 1;
                last_keyed = Instant::now();
            }
        }
        let opened_in = t.elapsed();
        // Connections still in the listen queue look open from here; let them be taken.
        std::thread::sleep(Duration::from_millis(500));
        idle.iter_mut().for_each(Tracked::poll);
        let open_now = idle.iter().filter(|c| c.closed.is_none()).count();
        println!(
            "{} idle connections opened in {opened_in:?} ({refused} refused at connect); \
             {open_now} still open, {} descriptors in the daemon",
            idle.len(),
            open_files(pid)
        );
        assert!(open_now <= cap, "{open_now} open, over the cap of {cap}");

        // Heads a byte at a time, and kept-alive connections that then idle.
        let mut slow: Vec<Tracked> = (0..SLOW)
            .map(|_| {
                let s = connect_from(Ipv4Addr::new(127, 0, 2, 1), addr).unwrap();
                s.set_nonblocking(true).unwrap();
                Tracked {
                    stream: s,
                    since: Instant::now(),
                    closed: None,
                }
            })
            .collect();
        let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut kept: Vec<(BufReader<TcpStream>, Instant, Option<Duration>)> = (0..KEPT)
            .map(|_| {
                let s = connect_from(Ipv4Addr::new(127, 0, 3, 1), addr).unwrap();
                let mut s = BufReader::new(s);
                assert_eq!(request(&mut s, "/health", ""), Some(200));
                s.get_ref().set_nonblocking(true).unwrap();
                (s, Instant::now(), None)
            })
            .collect();

        // A new client with a key gets in while the listener is full of strangers.
        let mut newcomer = BufReader::new(TcpStream::connect(addr).unwrap());
        assert_eq!(request(&mut newcomer, "/v1/sandboxes", &bearer), Some(200));

        let end = Instant::now() + IDLE_TIMEOUT + SLACK;
        let mut sent = 0;
        while Instant::now() < end {
            for c in slow.iter_mut().filter(|c| c.closed.is_none()) {
                let b = head.get(sent).copied().unwrap_or(b'a');
                if sent == 0 {
                    c.since = Instant::now();
                }
                let _ = c.stream.write(&[b]);
                c.poll();
            }
            sent += 1;
            idle.iter_mut().for_each(Tracked::poll);
            for (s, since, closed) in kept.iter_mut() {
                if closed.is_none() && is_closed(s.get_ref()) {
                    *closed = Some(since.elapsed());
                }
            }
            if last_keyed.elapsed() >= KEYED_EVERY {
                for c in [&mut keyed, &mut newcomer] {
                    assert_eq!(request(c, "/v1/sandboxes", &bearer), Some(200));
                    keyed_requests += 1;
                }
                last_keyed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(stopper);

        let still_idle = idle.iter().filter(|c| c.closed.is_none()).count();
        assert_eq!(
            still_idle, 0,
            "idle connections outlived the header timeout"
        );
        let slow_times: Vec<Duration> = slow
            .iter()
            .map(|c| c.closed.expect("a slow head outlived the header timeout"))
            .collect();
        let kept_times: Vec<Duration> = kept
            .iter()
            .map(|(_, _, c)| c.expect("a kept-alive connection outlived the idle timeout"))
            .collect();
        let span = |v: &[Duration]| (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        let (slow_first, slow_last) = span(&slow_times);
        let (kept_first, kept_last) = span(&kept_times);
        println!(
            "{SLOW} slow heads closed {slow_first:?}..{slow_last:?} after their first byte \
             ({sent} bytes sent each at most); {KEPT} kept-alive connections closed \
             {kept_first:?}..{kept_last:?} after their answer; {keyed_requests} keyed \
             requests answered meanwhile"
        );
        assert!(slow_first + SLACK >= HEADER_TIMEOUT && slow_last <= HEADER_TIMEOUT + SLACK);
        assert!(kept_first + SLACK >= IDLE_TIMEOUT && kept_last <= IDLE_TIMEOUT + SLACK);
        assert!(
            kept_first > HEADER_TIMEOUT,
            "an idle connection is not a slow head"
        );
    });

    let w = watched.into_inner().unwrap();
    let settled = Instant::now() + Duration::from_secs(5);
    while open_files(pid) > files_before + 2 && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (files_after, rss_after) = (open_files(pid), rss(pid));
    println!(
        "unix /health: {} answers, worst {:?}, {} failures; daemon descriptors peak {} \
         (before {files_before}, after {files_after}); RSS peak {} MiB (before {}, after {})",
        w.health_samples,
        w.health_worst,
        w.health_failures.len(),
        w.files_peak,
        w.rss_peak >> 20,
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        w.health_failures.is_empty(),
        "/health on the unix socket: {:?}",
        w.health_failures
    );
    assert!(w.health_samples > 20, "too few /health samples");
    // The cap (the keyed clients are in it), the one being accepted, the watcher's own;
    // and the flood did reach the cap.
    assert!(
        w.files_peak >= files_before + cap,
        "the cap was never reached"
    );
    assert!(
        w.files_peak <= files_before + cap + 8,
        "descriptors peaked at {}",
        w.files_peak
    );
    assert!(
        files_after <= files_before + 2,
        "{files_after} descriptors left"
    );
    assert!(
        w.rss_peak <= rss_before + RSS_GROWTH_BOUND,
        "RSS peaked at {} MiB",
        w.rss_peak >> 20
    );
    drop(keyed);
    d.finish();
}
