//! Sandbox networking: the `nat` policy and published ports.
//!
//! Every sandbox has its own network namespace with only loopback. `nat` adds a veth
//! pair: `wrn…` on the host, `eth0` inside, a /30 of 10.200.0.0/16 between them, and
//! masquerading for traffic leaving the host. Neither end has IPv6: the policy below is
//! written for IPv4, and a link-local address on either end would reach the host's
//! services on `[::]` around it (ip6tables drops whatever an interface of Warren's still
//! carries, when the host has it).
//!
//! The host's filter rules live in chains of Warren's own (`WARREN-INPUT`,
//! `WARREN-FORWARD`, `WARREN-PREROUTING` in the raw table, and `WARREN-POSTROUTING` for
//! NAT), jumped to first from the built-in chains, and do not rely on the host's
//! policies:
//!
//! - nothing from a sandbox whose source address is not its own (root inside may set
//!   any): the raw table's reverse-path check drops a packet whose source would not be
//!   routed back through the link it came in on, so a sandbox can neither send forged
//!   packets out of the host (unmasqueraded, as anyone's) nor pass for a neighbour;
//! - nothing from a sandbox to the host itself, to another sandbox, or to a link-local
//!   (metadata) address;
//! - nothing into a sandbox but replies to connections it opened: a neighbour routing
//!   the sandbox subnet through this host reaches no port of any sandbox;
//! - when it was Warren that turned IPv4 forwarding on (it was off), nothing forwarded
//!   that does not come from a sandbox or answer one: the host does not become a router
//!   between its other interfaces.
//!
//! Links, addresses, the link alias and the sandbox's default route are made over
//! rtnetlink ([`rtnl`]), not with `ip` processes: inside the sandbox from a thread that
//! has joined its namespace, with a socket that thread opened there.
//!
//! The tables are read with one `iptables-save`, and every change they need goes in as
//! one `iptables-restore --noflush`, which applies it atomically (whole chains replaced,
//! single rules added or deleted), under a host-wide lock: every Warren of the host
//! writes the same rules. The host end of a veth carries, in its alias, the pid of the helper that made
//! it, so `warren doctor` tells a live sandbox's link (of any Warren) from a leftover.
//!
//! Published ports need no network at all: the helper listens on 127.0.0.1 of the host
//! and opens each forwarded connection from inside the sandbox's namespace (a thread that
//! has joined it), to the sandbox's own loopback. That works for `none` sandboxes too.
//! The OCI backends do the same in the process of Warren's that lives exactly as long as
//! the sandbox: runc's and crun's keeper, gVisor's reaper on `nat` (see
//! [`crate::bundle`]); gVisor on `none` has a network stack of its own the host cannot
//! reach, and publishes nothing.

use std::fs;
use std::io;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use warren_sys::ns::{self, CloneFlags};
use warren_types::spec::PortMap;

mod rtnl;

/// The chain of Warren's filter table holding each sandbox's jump to its egress rules.
const EGRESS: &str = "WARREN-EGRESS";
/// The filter chain accepting each sandbox's redirected connections to the proxy.
const EGRESS_IN: &str = "WARREN-EGRESS-IN";
/// The nat chain holding each sandbox's jump to its redirections.
const REDIRECT: &str = "WARREN-REDIRECT";
/// A sandbox's own filter chain starts with this (then its link's hash).
pub const EGRESS_CHAIN: &str = "WARREN-E-";
/// A sandbox's own nat chain starts with this.
const REDIRECT_CHAIN: &str = "WARREN-R-";

/// Host-side link names start with this; `warren doctor` looks for them.
pub const LINK_PREFIX: &str = "wrn";
/// What a host link's alias starts with, followed by its helper's pid.
pub const LINK_ALIAS: &str = "warren-helper ";
const SUBNET: &str = "10.200.0.0/16";
/// The host-wide lock for writing Warren's netfilter chains.
const RULES_LOCK: &str = "/run/warren-netfilter.lock";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run {0} (install iptables for --network nat): {1}")]
    Missing(&'static str, io::Error),
    /// A change of links, addresses or routes the kernel refused.
    #[error("{what}: {source}")]
    Link { what: String, source: io::Error },
    #[error("no free sandbox subnet: every /30 of {SUBNET} is leased")]
    Exhausted,
    #[error("publish 127.0.0.1:{0}: {1}")]
    Publish(u16, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn run_with(tool: &'static str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Missing(tool, e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(tool: &'static str, args: &[&str]) -> Result<(), NetError> {
    run_with(tool, args, None).map(|_| ())
}

/// The host link name of a sandbox: a hash of its whole id, so that no two sandboxes'
/// names meet (ids that share a prefix, as build sandboxes' do, included) and a link is
/// never torn down by the wrong sandbox's name.
pub fn link_name(id: &str) -> String {
    let h = warren_types::random::to_hex(&Sha256::digest(id.as_bytes()));
    format!("{LINK_PREFIX}{}", &h[..12])
}

/// Deletes a sandbox's host link, and with it its peer; one already gone is no error.
pub fn remove_link(name: &str) {
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = rtnl::Rtnl::open().and_then(|mut nl| nl.delete_link(name));
    }
}

/// What to say when the kernel refuses a change of links.
fn link_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Link { what, source }
}

/// The pid of the helper that made host link `name`, from its alias.
pub fn link_helper(name: &str) -> Option<i32> {
    fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifalias"))
        .ok()?
        .trim()
        .strip_prefix(LINK_ALIAS)?
        .parse()
        .ok()
}

/// Leases a /30 for `id` under `run_dir/net`; the lease file names the sandbox.
fn lease(run_dir: &Path, id: &str) -> Result<(u32, std::path::PathBuf), NetError> {
    let dir = run_dir.join("net");
    fs::create_dir_all(&dir)?;
    let start =
        u32::from_str_radix(&link_name(id)[LINK_PREFIX.len()..][..4], 16).unwrap_or(0) % 16384;
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

/// Turns IPv6 off on `dev` in the calling thread's network namespace (a host without
/// IPv6 has nothing to turn off).
fn no_ipv6(dev: &str) -> Result<(), NetError> {
    let p = Path::new("/proc/sys/net/ipv6/conf")
        .join(dev)
        .join("disable_ipv6");
    match fs::write(&p, "1") {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        r => Ok(r?),
    }
}

/// Runs `f` with the calling thread in the network namespace of `pid`, then back in its
/// own. The caller must be single-threaded or accept that only this thread moves.
fn in_netns_of<T>(pid: Pid, f: impl FnOnce() -> Result<T, NetError>) -> Result<T, NetError> {
    let own = fs::File::open("/proc/thread-self/ns/net")?;
    let theirs = ns::open_ns(pid, "net")?;
    ns::setns(&theirs, CloneFlags::CLONE_NEWNET)?;
    let r = f();
    ns::setns(own.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("return to the host's network: {e}")))?;
    r
}

/// Connects sandbox `pid` (a fresh network namespace) to the host through NAT; the host
/// link's alias names `helper`. Returns the lease file, which the caller removes when the
/// sandbox ends.
pub fn setup_nat(
    run_dir: &Path,
    id: &str,
    pid: Pid,
    helper: u32,
) -> Result<std::path::PathBuf, NetError> {
    let (n, lease_file) = lease(run_dir, id)?;
    let r = (|| {
        let host_if = link_name(id);
        let (gw, ip) = (addr(n, 1), addr(n, 2));
        // New interfaces of the sandbox's namespace get no IPv6, eth0 included.
        in_netns_of(pid, || no_ipv6("default"))?;
        let mut nl = rtnl::Rtnl::open().map_err(link_err("open a route netlink socket"))?;
        let peer_pid = u32::try_from(pid.as_raw()).map_err(io::Error::other)?;
        nl.add_veth(&host_if, "eth0", peer_pid)
            .map_err(link_err(format!("add veth pair {host_if}/eth0")))?;
        no_ipv6(&host_if)?;
        nl.add_address(&host_if, gw, 30)
            .map_err(link_err(format!("add {gw}/30 to {host_if}")))?;
        nl.set_up(&host_if, Some(&format!("{LINK_ALIAS}{helper}")))
            .map_err(link_err(format!("bring {host_if} up")))?;
        drop(nl);
        in_netns_of(pid, || {
            no_ipv6("eth0")?;
            // Opened inside: a netlink socket speaks for its opener's namespace.
            let mut nl = rtnl::Rtnl::open()
                .map_err(link_err("open a route netlink socket in the sandbox"))?;
            nl.add_address("eth0", ip, 30)
                .map_err(link_err(format!("add {ip}/30 to the sandbox's eth0")))?;
            nl.set_up("eth0", None)
                .map_err(link_err("bring the sandbox's eth0 up"))?;
            nl.add_default_route(gw).map_err(link_err(format!(
                "add the sandbox's default route via {gw}"
            )))
        })?;
        host_rules()
    })();
    if let Err(e) = r {
        remove_link(&link_name(id));
        let _ = fs::remove_file(&lease_file);
        return Err(e);
    }
    Ok(lease_file)
}

/// Chains of one table, each with its rule specs in order, written as `iptables -S`
/// prints them (so an unchanged chain is recognised and left alone).
type Chains = Vec<(&'static str, Vec<String>)>;

/// The chains of Warren's IPv4 filter table.
fn filter_v4(router_guard: bool) -> Chains {
    let w = format!("{LINK_PREFIX}+");
    let mut forward = vec![
        // Behind the reverse-path check: whatever else a sandbox forges, an address
        // outside the sandboxes' subnet never leaves the host unmasqueraded.
        format!("! -s {SUBNET} -i {w} -j DROP"),
        format!("-i {w} -o {w} -j DROP"),
        // Link-local addresses: a cloud's metadata service (169.254.169.254) hands out
        // the machine's credentials to whoever asks.
        format!("-d 169.254.0.0/16 -i {w} -j DROP"),
        format!("-o {w} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-o {w} -j DROP"),
        // Each sandbox with egress rules has a chain of its own, jumped to from here.
        format!("-i {w} -j {EGRESS}"),
        format!("-i {w} -j ACCEPT"),
    ];
    if router_guard {
        forward.push("-j DROP".to_string());
    }
    vec![
        (
            "WARREN-INPUT",
            vec![
                // Connections a sandbox's egress rules sent to the daemon's proxy
                // (redirected, so only those); each sandbox's own port is accepted in
                // the chain jumped to.
                format!("-i {w} -p tcp -m conntrack --ctstate DNAT -j {EGRESS_IN}"),
                format!("-i {w} -j DROP"),
            ],
        ),
        ("WARREN-FORWARD", forward),
    ]
}

fn filter_v6() -> Chains {
    let w = format!("{LINK_PREFIX}+");
    vec![
        ("WARREN-INPUT", vec![format!("-i {w} -j DROP")]),
        (
            "WARREN-FORWARD",
            vec![format!("-i {w} -j DROP"), format!("-o {w} -j DROP")],
        ),
    ]
}

/// One family's tables as `iptables-save` (or `ip6tables-save`) printed them: read once
/// for all the checks of a change, which then goes in as one `iptables-restore`.
struct Saved(String);

impl Saved {
    fn read(save: &'static str) -> Result<Self, NetError> {
        run_with(save, &[], None).map(Self)
    }

    /// The lines of `table`, between its `*table` and its `COMMIT`.
    fn table(&self, table: &str) -> Vec<&str> {
        let head = format!("*{table}");
        self.0
            .lines()
            .skip_while(|l| *l != head)
            .skip(1)
            .take_while(|l| *l != "COMMIT")
            .collect()
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.table(table)
            .iter()
            .any(|l| l.strip_prefix(':').and_then(|r| r.split(' ').next()) == Some(chain))
    }

    /// The rule specs of `chain` (without `-A chain`), in order.
    fn rules(&self, table: &str, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        self.table(table)
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }
}

/// Restore input, table by table, applied in one `iptables-restore --noflush` (one
/// transaction): whatever it holds takes effect together.
#[derive(Default)]
struct Batch(Vec<(String, Vec<String>)>);

impl Batch {
    fn push(&mut self, table: &str, line: String) {
        match self.0.iter_mut().find(|(t, _)| t == table) {
            Some((_, lines)) => lines.push(line),
            None => self.0.push((table.to_string(), vec![line])),
        }
    }

    /// Makes `chain` exactly `rules` (declaring a chain empties it).
    fn replace(&mut self, table: &str, chain: &str, rules: &[String]) {
        self.push(table, format!(":{chain} - [0:0]"));
        for r in rules {
            self.push(table, format!("-A {chain} {r}"));
        }
    }

    /// The restore input, or nothing when there is nothing to change.
    fn input(self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut input = String::new();
        for (table, mut lines) in self.0 {
            // Chains are declared before any rule of the table.
            lines.sort_by_key(|l| !l.starts_with(':'));
            input.push_str(&format!("*{table}\n"));
            for l in lines {
                input.push_str(&l);
                input.push('\n');
            }
            input.push_str("COMMIT\n");
        }
        Some(input)
    }

    fn apply(self, restore: &'static str) -> Result<(), NetError> {
        match self.input() {
            Some(input) => run_with(restore, &["-w", "--noflush"], Some(&input)).map(drop),
            None => Ok(()),
        }
    }
}

/// Adds to `batch` what makes Warren's chains of one family what `tables` say, and
/// jumps to them first from the built-in chains.
fn ensure_family(saved: &Saved, batch: &mut Batch, tables: &[(&str, Chains)]) {
    for (table, chains) in tables {
        let up_to_date = chains
            .iter()
            .all(|(c, rules)| saved.rules(table, c) == *rules);
        if !up_to_date {
            for (c, rules) in chains {
                batch.replace(table, c, rules);
            }
        }
        for (c, _) in chains {
            let builtin = c.trim_start_matches("WARREN-");
            let jump = format!("-j {c}");
            if !saved.rules(table, builtin).contains(&jump) {
                batch.push(table, format!("-I {builtin} 1 -j {c}"));
            }
        }
    }
}

/// Holds the host-wide lock for writing Warren's netfilter rules.
fn rules_lock() -> Result<Flock<fs::File>, NetError> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(RULES_LOCK)?;
    Ok(Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?)
}

/// The host-wide rules (see the module doc), written when missing or changed.
fn host_rules() -> Result<(), NetError> {
    let _held = rules_lock()?;
    let saved = Saved::read("iptables-save")?;
    let mut batch = Batch::default();
    host_rules_locked(&saved, &mut batch)?;
    batch.apply("iptables-restore")
}

/// Adds the IPv4 host-wide rules that `saved` lacks to `batch` (applied by the caller,
/// with the lock held); the IPv6 ones are written here.
fn host_rules_locked(saved: &Saved, batch: &mut Batch) -> Result<(), NetError> {
    let forwarding = fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    let turned_on = forwarding.trim() == "0";
    if turned_on {
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    // The guard stays once set: the rule itself records that Warren turned forwarding on.
    let guard = turned_on
        || saved
            .rules("filter", "WARREN-FORWARD")
            .iter()
            .any(|l| l == "-j DROP");
    let nat = vec![
        (
            "WARREN-POSTROUTING",
            vec![format!("-s {SUBNET} ! -o {LINK_PREFIX}+ -j MASQUERADE")],
        ),
        (
            "WARREN-PREROUTING",
            vec![format!("-i {LINK_PREFIX}+ -j {REDIRECT}")],
        ),
    ];
    // The chains each sandbox's rules hang from: made once, never rewritten whole
    // (the rules in them are sandboxes').
    for (table, chain) in [("filter", EGRESS), ("filter", EGRESS_IN), ("nat", REDIRECT)] {
        if !saved.has_chain(table, chain) {
            batch.push(table, format!(":{chain} - [0:0]"));
        }
    }
    let reverse_path = vec![(
        "WARREN-PREROUTING",
        vec![format!("-i {LINK_PREFIX}+ -m rpfilter --invert -j DROP")],
    )];
    ensure_family(
        saved,
        batch,
        &[
            ("raw", reverse_path),
            ("filter", filter_v4(guard)),
            ("nat", nat),
        ],
    );
    // Both ends have IPv6 off; these rules are for anything of Warren's that has it
    // anyway. A host without ip6tables has no IPv6 filtering to do it with.
    if let Ok(saved6) = Saved::read("ip6tables-save") {
        let mut batch6 = Batch::default();
        ensure_family(&saved6, &mut batch6, &[("filter", filter_v6())]);
        batch6.apply("ip6tables-restore")?;
    }
    Ok(())
}

/// Adds to `batch` what makes the rules naming `link` in `chain` exactly `wanted` (each
/// a rule spec without `-A chain`): missing ones are appended, others deleted; one
/// already there stays, so a jump that must not lapse never does.
fn converge(
    saved: &Saved,
    batch: &mut Batch,
    table: &str,
    chain: &str,
    link: &str,
    wanted: &[String],
) {
    let tag = format!("-i {link} ");
    let have: Vec<String> = saved
        .rules(table, chain)
        .into_iter()
        .filter(|l| l.starts_with(&tag) || l.contains(&format!(" {tag}")))
        .collect();
    for w in wanted {
        if !have.contains(w) {
            batch.push(table, format!("-A {chain} {w}"));
        }
    }
    for h in &have {
        if !wanted.contains(h) {
            batch.push(table, format!("-D {chain} {h}"));
        }
    }
}

/// The names of sandbox `id`'s own chains: (filter, nat).
fn egress_chains(id: &str) -> (String, String) {
    let h = &link_name(id)[LINK_PREFIX.len()..];
    (format!("{EGRESS_CHAIN}{h}"), format!("{REDIRECT_CHAIN}{h}"))
}

/// Puts sandbox `id`'s egress rules in place, or replaces the ones it has: the rules of
/// its own chain change in one step, so no connection sees half of the old set and half
/// of the new. Works before the sandbox's link exists (the rules name the link), so a
/// sandbox is under its rules from its first packet. With a domain rule, connections
/// on ports 80 and 443 that no address rule allows go to the proxy on `proxy_port`,
/// which looks at the name they carry. Open rules remove everything.
pub fn set_egress(
    id: &str,
    rules: &warren_types::egress::EgressRules,
    proxy_port: u16,
) -> Result<(), NetError> {
    let _held = rules_lock()?;
    let saved = Saved::read("iptables-save")?;
    let mut batch = Batch::default();
    host_rules_locked(&saved, &mut batch)?;
    let link = link_name(id);
    let (filter, nat) = egress_chains(id);
    let dns: Vec<Ipv4Addr> = if !rules.has_domains() {
        Vec::new()
    } else if rules.dns_given {
        rules.dns.clone()
    } else {
        crate::template::sandbox_resolvers()
    };
    let mut f = Vec::new();
    for ip in &dns {
        f.push(format!("-d {ip}/32 -j RETURN"));
    }
    for n in &rules.allow_nets {
        f.push(format!("-d {n} -j RETURN"));
    }
    for n in &rules.deny_nets {
        // Refused at once rather than left to time out.
        f.push(format!("-d {n} -p tcp -j REJECT --reject-with tcp-reset"));
        f.push(format!(
            "-d {n} -j REJECT --reject-with icmp-net-prohibited"
        ));
    }
    batch.replace("filter", &filter, &f);
    converge(
        &saved,
        &mut batch,
        "filter",
        EGRESS,
        &link,
        &[format!("-i {link} -j {filter}")],
    );
    if rules.has_domains() {
        let mut r = Vec::new();
        for n in &rules.allow_nets {
            r.push(format!("-d {n} -j RETURN"));
        }
        for ip in &dns {
            r.push(format!("-d {ip}/32 -j RETURN"));
        }
        r.push(format!(
            "-p tcp -m multiport --dports 80,443 -j REDIRECT --to-ports {proxy_port}"
        ));
        batch.replace("nat", &nat, &r);
        converge(
            &saved,
            &mut batch,
            "filter",
            EGRESS_IN,
            &link,
            &[format!(
                "-i {link} -p tcp -m tcp --dport {proxy_port} -j ACCEPT"
            )],
        );
        converge(
            &saved,
            &mut batch,
            "nat",
            REDIRECT,
            &link,
            &[format!("-i {link} -j {nat}")],
        );
        batch.apply("iptables-restore")
    } else {
        converge(&saved, &mut batch, "filter", EGRESS_IN, &link, &[]);
        converge(&saved, &mut batch, "nat", REDIRECT, &link, &[]);
        batch.apply("iptables-restore")?;
        // A chain is deleted only once nothing jumps to it, so after the batch.
        if saved.has_chain("nat", &nat) {
            let _ = run("iptables", &["-w", "-t", "nat", "-X", &nat]);
        }
        Ok(())
    }
}

/// Removes sandbox `id`'s egress rules; a sandbox without any is no error.
pub fn clear_egress(id: &str) {
    let Ok(_held) = rules_lock() else { return };
    let Ok(saved) = Saved::read("iptables-save") else {
        return;
    };
    let link = link_name(id);
    let (filter, nat) = egress_chains(id);
    let mut batch = Batch::default();
    converge(&saved, &mut batch, "filter", EGRESS, &link, &[]);
    converge(&saved, &mut batch, "filter", EGRESS_IN, &link, &[]);
    converge(&saved, &mut batch, "nat", REDIRECT, &link, &[]);
    let mine = [("filter", &filter), ("nat", &nat)];
    for (table, chain) in mine {
        if saved.has_chain(table, chain) {
            batch.replace(table, chain, &[]);
        }
    }
    if batch.apply("iptables-restore").is_ok() {
        for (table, chain) in mine {
            if saved.has_chain(table, chain) {
                let _ = run("iptables", &["-w", "-t", table, "-X", chain]);
            }
        }
    }
}

/// Sandboxes' egress chains whose link is gone (a sandbox being made has its chain a
/// moment before its link).
pub fn leftover_egress() -> Vec<String> {
    let Ok(saved) = Saved::read("iptables-save") else {
        return Vec::new();
    };
    saved
        .rules("filter", EGRESS)
        .iter()
        .filter_map(|l| {
            let link = l.split_whitespace().skip_while(|w| *w != "-i").nth(1)?;
            (!Path::new("/sys/class/net").join(link).exists()).then(|| link.to_string())
        })
        .collect()
}

/// Forwards 127.0.0.1:`map.host` on the host to the sandbox's own 127.0.0.1:`map.sandbox`.
/// The listener is bound before this returns, so a taken port is reported at once.
pub fn publish(pid: Pid, map: PortMap) -> Result<JoinHandle<()>, NetError> {
    let listener = listen(map)?;
    let netns = ns::open_ns(pid, "net")?;
    Ok(forward(listener, map.sandbox, Some(netns)))
}

/// The host side of published port `map`: 127.0.0.1:`map.host`, bound in the calling
/// thread's network namespace (the host's), close-on-exec (a runtime the caller starts
/// afterwards does not hold it).
pub fn listen(map: PortMap) -> Result<TcpListener, NetError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, map.host)).map_err(|e| NetError::Publish(map.host, e))
}

/// Serves a published port's `listener` on a thread of its own: each connection is
/// forwarded to 127.0.0.1:`port` of the network namespace `netns`, which the thread
/// joins first, or, without one, of the namespace the calling thread is in (a process
/// that lives in the sandbox's). The listener, made before, stays in the host's.
pub fn forward(
    listener: TcpListener,
    port: u16,
    netns: Option<std::os::fd::OwnedFd>,
) -> JoinHandle<()> {
    forward_at_most(listener, port, netns, MAX_FORWARDED)
}

/// Connections one published port forwards at once. Anyone on the host's loopback may
/// open them, and each holds two threads and two descriptors of the process forwarding
/// it (the sandbox's helper, keeper or reaper); past this, a new one is closed at once.
const MAX_FORWARDED: usize = 256;

fn forward_at_most(
    listener: TcpListener,
    port: u16,
    netns: Option<std::os::fd::OwnedFd>,
    max: usize,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // From here this thread's sockets are created in the sandbox's namespace.
        if let Some(netns) = netns {
            if ns::setns(&netns, CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
        }
        let open = Arc::new(AtomicUsize::new(0));
        let to = (Ipv4Addr::LOCALHOST, port).into();
        for conn in listener.incoming() {
            let client = match conn {
                Ok(c) => c,
                // Out of descriptors, say: wait for some to close rather than spin.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if open.load(Ordering::Acquire) >= max {
                continue;
            }
            // A sandbox frozen with its backlog full does not answer: one connection
            // must not hold up the port's others for long.
            let Ok(upstream) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
                continue;
            };
            splice_pair(client, upstream, Open::count(&open));
        }
    })
}

/// One forwarded connection, counted against its port's [`MAX_FORWARDED`] until both
/// its directions are done.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn count(open: &Arc<AtomicUsize>) -> Arc<Open> {
        open.fetch_add(1, Ordering::AcqRel);
        Arc::new(Open(open.clone()))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

fn splice_pair(a: TcpStream, b: TcpStream, open: Arc<Open>) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pump = |mut from: TcpStream, mut to: TcpStream, open: Arc<Open>| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
            drop(open);
        });
    };
    pump(a, b2, open.clone());
    pump(b, a2, open);
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A forwarded port carries bytes both ways, and holds at most `max` connections at
    /// once: past that a new one is closed at once, and a slot frees when one ends.
    #[test]
    fn a_forwarded_port_carries_bytes_and_holds_a_bounded_number_of_connections() {
        let inside = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = inside.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in inside.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let outside = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let host = outside.local_addr().unwrap().port();
        forward_at_most(outside, port, None, 2);
        let echo = |c: &mut TcpStream| -> io::Result<Vec<u8>> {
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"ping")?;
            let mut got = vec![0u8; 4];
            let n = c.read(&mut got)?;
            got.truncate(n);
            Ok(got)
        };
        let mut a = TcpStream::connect((Ipv4Addr::LOCALHOST, host)).unwrap();
        let mut b = TcpStream::connect((Ipv4Addr::LOCALHOST, host)).unwrap();
        assert_eq!(echo(&mut a).unwrap(), b"ping");
        assert_eq!(echo(&mut b).unwrap(), b"ping");
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, host)).unwrap();
        let third = echo(&mut c);
        assert!(
            third.as_ref().map_or(true, |g| g.is_empty()),
            "a third connection was forwarded: {third:?}"
        );
        drop((a, c));
        // Both directions of the first end, and its slot is free again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut d = TcpStream::connect((Ipv4Addr::LOCALHOST, host)).unwrap();
            if echo(&mut d).is_ok_and(|g| g == b"ping") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no slot came free");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(echo(&mut b).unwrap(), b"ping");
    }

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
    fn a_saved_table_is_read_and_a_change_is_one_restore() {
        let saved = Saved(
            "# Generated by iptables-save\n*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n\
             *filter\n:INPUT ACCEPT [0:0]\n:WARREN-EGRESS - [0:0]\n\
             -A INPUT -j WARREN-INPUT\n-A WARREN-EGRESS -i wrnaa -j WARREN-E-aa\n\
             -A WARREN-EGRESS -i wrnaab -j WARREN-E-aab\nCOMMIT\n"
                .into(),
        );
        assert!(saved.has_chain("filter", "WARREN-EGRESS"));
        assert!(!saved.has_chain("filter", "WARREN-E-aa"));
        assert!(!saved.has_chain("raw", "WARREN-EGRESS"));
        assert_eq!(saved.rules("filter", "INPUT"), ["-j WARREN-INPUT"]);
        let mut batch = Batch::default();
        // Only the rule of link wrnaa is this sandbox's, not wrnaab's.
        converge(&saved, &mut batch, "filter", "WARREN-EGRESS", "wrnaa", &[]);
        batch.replace("filter", "WARREN-E-aa", &["-d 10.0.0.0/8 -j RETURN".into()]);
        batch.push("nat", ":WARREN-REDIRECT - [0:0]".into());
        assert_eq!(
            batch.input().unwrap(),
            "*filter\n:WARREN-E-aa - [0:0]\n\
             -D WARREN-EGRESS -i wrnaa -j WARREN-E-aa\n\
             -A WARREN-E-aa -d 10.0.0.0/8 -j RETURN\nCOMMIT\n\
             *nat\n:WARREN-REDIRECT - [0:0]\nCOMMIT\n"
        );
        assert_eq!(Batch::default().input(), None);
    }

    #[test]
    fn link_names_fit_ifnamsiz() {
        assert!(link_name("0123456789abcdef").len() < 16);
    }

    #[test]
    fn ids_sharing_a_prefix_get_different_links() {
        // Sandbox ids that agree in their first characters (the old naming cut ids
        // short, so two such sandboxes shared one link name) must not collide.
        let ids: Vec<String> = (0..4096).map(|i| format!("0123456789ab{i:04x}")).collect();
        let names: std::collections::HashSet<String> = ids.iter().map(|i| link_name(i)).collect();
        assert_eq!(names.len(), ids.len());
        assert!(names
            .iter()
            .all(|n| n.starts_with(LINK_PREFIX) && n.len() < 16));
    }

    /// A process alone in a new network namespace, killed on drop.
    struct Netns(std::process::Child);

    impl Netns {
        fn new() -> Self {
            let child = Command::new("unshare")
                .args(["-n", "sleep", "60"])
                .spawn()
                .unwrap();
            let own = fs::read_link("/proc/self/ns/net").unwrap();
            let theirs = format!("/proc/{}/ns/net", child.id());
            while fs::read_link(&theirs).map_or(true, |l| l == own) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Self(child)
        }

        fn pid(&self) -> Pid {
            Pid::from_raw(self.0.id() as i32)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_nat_link_is_made_and_removed_over_netlink() {
        if !warren_testkit::needs_root(
            "a_nat_link_is_made_and_removed_over_netlink",
            "makes a veth pair",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = Netns::new();
        let id = format!("nl-test-{}", std::process::id());
        let host_if = link_name(&id);
        let lease_file = setup_nat(dir.path(), &id, ns.pid(), 4242).unwrap();
        let n: u32 = lease_file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let sys = Path::new("/sys/class/net").join(&host_if);
        assert_eq!(
            link_helper(&host_if),
            Some(4242),
            "the alias names the helper"
        );
        assert_eq!(
            fs::read_to_string(sys.join("operstate")).unwrap().trim(),
            "up"
        );
        let v6 = Path::new("/proc/sys/net/ipv6/conf")
            .join(&host_if)
            .join("disable_ipv6");
        if v6.exists() {
            assert_eq!(fs::read_to_string(v6).unwrap().trim(), "1");
        }
        // The sandbox's side, as its namespace sees it: eth0 up with the lease's second
        // address, and the default route through the first.
        let (gw, ip) = (addr(n, 1), addr(n, 2));
        let inside = in_netns_of(ns.pid(), || {
            let route = fs::read_to_string("/proc/thread-self/net/route")?;
            let fib = fs::read_to_string("/proc/thread-self/net/fib_trie")?;
            let v6 = fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/disable_ipv6").ok();
            Ok((route, fib, v6))
        })
        .unwrap();
        let gw_hex = format!("{:08X}", u32::from(gw).swap_bytes());
        assert!(
            inside
                .0
                .lines()
                .any(|l| l.starts_with("eth0\t00000000\t") && l.contains(&gw_hex)),
            "no default route via {gw}: {}",
            inside.0
        );
        assert!(
            inside.1.contains(&ip.to_string()),
            "no {ip} inside: {}",
            inside.1
        );
        assert!(inside.2.is_none_or(|v| v.trim() == "1"), "eth0 has IPv6");
        remove_link(&host_if);
        assert!(!sys.exists(), "{host_if} outlived remove_link");
        let eth0 = in_netns_of(ns.pid(), || {
            Ok(fs::read_to_string("/proc/thread-self/net/dev")?.contains("eth0:"))
        });
        assert!(!eth0.unwrap(), "the peer outlived its host end");
        fs::remove_file(lease_file).unwrap();
        // A link of that name already there: the kernel's refusal says what failed, and
        // the failed attempt gives its lease back.
        let mut nl = rtnl::Rtnl::open().unwrap();
        nl.add_veth(&host_if, "eth0", ns.pid().as_raw() as u32)
            .unwrap();
        match setup_nat(dir.path(), &id, ns.pid(), 4242) {
            Err(NetError::Link { what, source }) => {
                assert!(what.contains(&host_if), "{what}");
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
            }
            r => panic!("a second veth of the same name: {r:?}"),
        }
        assert_eq!(fs::read_dir(dir.path().join("net")).unwrap().count(), 0);
        remove_link(&host_if);
    }
}
