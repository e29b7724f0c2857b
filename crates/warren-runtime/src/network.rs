//! Sandbox networking: the `nat` policy and published ports.
//!
//! Every sandbox has its own network namespace with only loopback. `nat` adds a veth
//! pair: `wrn<id>` on the host, `eth0` inside, a /30 of 10.200.0.0/16 between them, and
//! masquerading for traffic leaving the host. Filter rules drop whatever a sandbox sends
//! to the host itself or to another sandbox; the host's loopback is never routed to.
//! The veth disappears with the namespace, so nothing needs removing when a sandbox ends
//! except its address lease.
//!
//! Published ports need no network at all: the helper listens on 127.0.0.1 of the host
//! and opens each forwarded connection from inside the sandbox's namespace (a thread that
//! has joined it), to the sandbox's own loopback. That works for `none` sandboxes too.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;

use nix::unistd::Pid;
use warren_sys::ns::{self, CloneFlags};
use warren_types::spec::PortMap;

/// Host-side link names start with this; `warren doctor` looks for them.
pub const LINK_PREFIX: &str = "wrn";
const SUBNET: &str = "10.200.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run {0} (install iproute2 and iptables for --network nat): {1}")]
    Missing(&'static str, io::Error),
    #[error("no free sandbox subnet: every /30 of {SUBNET} is leased")]
    Exhausted,
    #[error("publish 127.0.0.1:{0}: {1}")]
    Publish(u16, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn run(tool: &'static str, args: &[&str]) -> Result<(), NetError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| NetError::Missing(tool, e))?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The host link name of a sandbox.
pub fn link_name(id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("{LINK_PREFIX}{short}")
}

/// Deletes a sandbox's host link, and with it its peer; one already gone is no error.
pub fn remove_link(name: &str) {
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = run("ip", &["link", "del", name]);
    }
}

/// Leases a /30 for `id` under `run_dir/net`; the lease file names the sandbox.
fn lease(run_dir: &Path, id: &str) -> Result<(u32, std::path::PathBuf), NetError> {
    let dir = run_dir.join("net");
    fs::create_dir_all(&dir)?;
    let start = u32::from_str_radix(&id[..id.len().min(4)], 16).unwrap_or(0) % 16384;
    for i in 0..16384u32 {
        let n = (start + i) % 16384;
        let p = dir.join(n.to_string());
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(_) => {
                fs::write(&p, id)?;
                return Ok((n, p));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(NetError::Exhausted)
}

fn addr(n: u32, host: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + n * 4 + host)
}

/// Connects sandbox `pid` (a fresh network namespace) to the host through NAT. Returns
/// the lease file, which the caller removes when the sandbox ends.
pub fn setup_nat(run_dir: &Path, id: &str, pid: Pid) -> Result<std::path::PathBuf, NetError> {
    let (n, lease_file) = lease(run_dir, id)?;
    let r = (|| {
        let host_if = link_name(id);
        let (gw, ip) = (addr(n, 1), addr(n, 2));
        let pid_s = pid.to_string();
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &pid_s,
            ],
        )?;
        run("ip", &["addr", "add", &format!("{gw}/30"), "dev", &host_if])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut a = vec!["-t", pid_s.as_str(), "-n", "ip"];
            a.extend_from_slice(args);
            run("nsenter", &a)
        };
        inside(&["addr", "add", &format!("{ip}/30"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["route", "add", "default", "via", &gw.to_string()])?;
        host_rules()
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&lease_file);
        return Err(e);
    }
    Ok(lease_file)
}

/// The host-wide rules, added once: forwarding on, masquerade out, and nothing from a
/// sandbox to the host, to another sandbox, or to a link-local (metadata) address.
fn host_rules() -> Result<(), NetError> {
    fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    let wild = format!("{LINK_PREFIX}+");
    let rules: [(&str, &str, Vec<&str>); 4] = [
        (
            "nat",
            "POSTROUTING",
            vec!["-s", SUBNET, "!", "-o", &wild, "-j", "MASQUERADE"],
        ),
        ("filter", "INPUT", vec!["-i", &wild, "-j", "DROP"]),
        (
            "filter",
            "FORWARD",
            vec!["-i", &wild, "-o", &wild, "-j", "DROP"],
        ),
        // Link-local addresses: a cloud's metadata service (169.254.169.254) hands out
        // the machine's credentials to whoever asks, so sandboxes must not reach it.
        (
            "filter",
            "FORWARD",
            vec!["-i", &wild, "-d", "169.254.0.0/16", "-j", "DROP"],
        ),
    ];
    for (table, chain, spec) in rules {
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend(spec.iter().copied());
        if run("iptables", &check).is_ok() {
            continue;
        }
        let mut add = vec!["-w", "-t", table, "-I", chain, "1"];
        add.extend(spec.iter().copied());
        run("iptables", &add)?;
    }
    Ok(())
}

/// Forwards 127.0.0.1:`map.host` on the host to the sandbox's own 127.0.0.1:`map.sandbox`.
/// The listener is bound before this returns, so a taken port is reported at once.
pub fn publish(pid: Pid, map: PortMap) -> Result<JoinHandle<()>, NetError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, map.host))
        .map_err(|e| NetError::Publish(map.host, e))?;
    let netns = ns::open_ns(pid, "net")?;
    Ok(std::thread::spawn(move || {
        // From here this thread's sockets are created in the sandbox's namespace; the
        // listener, made before, stays in the host's.
        if ns::setns(&netns, CloneFlags::CLONE_NEWNET).is_err() {
            return;
        }
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(upstream) = TcpStream::connect((Ipv4Addr::LOCALHOST, map.sandbox)) else {
                continue;
            };
            splice_pair(client, upstream);
        }
    }))
}

/// Opens a TCP connection from the host to `port` on the loopback of the sandbox whose
/// PID 1 is `pid`, as published ports do: a thread of its own joins the sandbox's network
/// namespace, makes the socket there and connects. The socket stays in that namespace
/// whoever uses it afterwards, and the thread ends, so no other thread is left inside.
pub fn connect_inside(pid: i32, port: u16, timeout: std::time::Duration) -> io::Result<TcpStream> {
    let netns = ns::open_ns(Pid::from_raw(pid), "net")?;
    std::thread::Builder::new()
        .name("warren-port".into())
        .spawn(move || {
            ns::setns(&netns, CloneFlags::CLONE_NEWNET)?;
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout)
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the connecting thread panicked")))
}

fn splice_pair(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pump = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    pump(a, b2);
    pump(b, a2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_30s() {
        let dir = tempfile::tempdir().unwrap();
        let (a, fa) = lease(dir.path(), "abcd0001").unwrap();
        let (b, _) = lease(dir.path(), "abcd0001").unwrap();
        assert_ne!(a, b);
        assert_eq!(addr(a, 1).octets()[0..2], [10, 200]);
        fs::remove_file(fa).unwrap();
        let (c, _) = lease(dir.path(), "abcd0001").unwrap();
        assert_eq!(c, a, "a released lease is reused");
    }

    #[test]
    fn link_names_fit_ifnamsiz() {
        assert!(link_name("0123456789abcdef").len() < 16);
    }
}
