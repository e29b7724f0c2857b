//! Sandbox networking: the `nat` policy and published ports.
//!
//! Every sandbox has its own network namespace with only loopback. `nat` adds a veth
//! pair: `wrn…` on the host, `eth0` inside, a /30 of 10.200.0.0/16 between them, and
//! masquerading for traffic leaving the host. Neither end has IPv6: the policy below is
//! written for IPv4, and a link-local address on either end would reach the host's
//! services on `[::]` around it (Warren's table drops any other family on its links).
//!
//! The host's rules live in an nftables table of Warren's own, `inet warren`, whose base
//! chains hook prerouting (the reverse-path check at `raw`, the redirections to the egress
//! proxy at `dstnat`), postrouting (the masquerade), input and forward (at `filter - 10`,
//! before the host's own filter). A drop there is final whatever the host's other tables
//! say; an accept is not: a host whose own rules drop forwarded traffic (a `FORWARD`
//! policy of `DROP`, as Docker and ufw set) would drop a sandbox's traffic after
//! Warren's table let it through. So where iptables is installed and its `FORWARD`
//! chain drops (by policy or by a rule), the first change of each Warren process inserts
//! accepts at its head, commented `warren`: from the sandboxes' links out of the
//! interfaces the host's default routes leave by (not to another bridge of the host's,
//! such as Docker's containers, which the host's rules keep apart), and the replies: by then Warren's own chain, earlier in the hook, has dropped whatever its
//! policy refuses. They stay (they match no link once Warren's are gone); `warren
//! doctor` shows them. A host firewall made only of nftables tables of its own that drop
//! forwarded traffic must accept `iifname "wrn*"` itself. The policy does not rely on the
//! host's:
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
//! rtnetlink (`rtnl`), not with `ip` processes: inside the sandbox from a thread that
//! has joined its namespace, with a socket that thread opened there.
//!
//! Every change is one `nft -f` batch, which the kernel applies as one transaction (all
//! of it or nothing), under a host-wide lock: every Warren of the host writes the same
//! base chains. A sandbox's egress rules are chains of its own (`e_<hash>`, and with a
//! domain rule `r_<hash>` and `p_<hash>`), reached through verdict maps from its host
//! link's name (`egress`, `redirects`, `proxy`), so a change of one sandbox's rules
//! touches nothing of another's. The first write of each Warren process, and any on a
//! host without Warren's table, removes the iptables chains (`WARREN-*`) of older
//! Warrens, so an upgraded host does not keep both (an older Warren still running beside
//! a newer one would make them again with its next `nat` sandbox, and the two do not mix:
//! upgrade every Warren of a host together). The host end of a veth carries, in its alias, the pid of the helper
//! that made it, so `warren doctor` tells a live sandbox's link (of any Warren) from a
//! leftover; a link in Warren's maps that no longer exists is a leftover too.
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
    #[error("cannot run {0} (install nftables for --network nat): {1}")]
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

/// Warren's own nftables table; `inet`, so that one table holds the IPv4 policy and the
/// IPv6 drop.
const TABLE: &str = "inet warren";
/// Its base chains, each hooked where the policy needs it: the reverse-path check before
/// conntrack, the redirections and the masquerade in NAT, and the filter a little before
/// the host's own (`filter - 10`), so a drop of Warren's is final whatever they accept.
const BASE_CHAINS: [(&str, &str); 6] = [
    (
        "prerouting_raw",
        "type filter hook prerouting priority raw; policy accept;",
    ),
    (
        "prerouting_nat",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "postrouting_nat",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    (
        "input",
        "type filter hook input priority filter - 10; policy accept;",
    ),
    (
        "forward",
        "type filter hook forward priority filter - 10; policy accept;",
    ),
    // Never flushed by a Warren: its rules say that Warren turned forwarding on.
    (
        "router_guard",
        "type filter hook forward priority filter - 5; policy accept;",
    ),
];
/// Verdict maps from a sandbox's host link to its own chains: egress filter, redirections
/// to the proxy, and the proxy port its redirected connections may reach.
const MAPS: [&str; 3] = ["egress", "redirects", "proxy"];
/// A sandbox's own filter chain starts with this (then its link's hash).
pub const EGRESS_CHAIN: &str = "e_";
/// A sandbox's own chain of redirections starts with this.
const REDIRECT_CHAIN: &str = "r_";
/// A sandbox's own chain accepting its redirected connections starts with this.
const PROXY_CHAIN: &str = "p_";
/// One `nft -f` input: every command in it is one transaction, applied whole or not at
/// all.
#[derive(Debug, Default)]
struct Batch(String);

impl Batch {
    fn push(&mut self, command: impl AsRef<str>) {
        self.0.push_str(command.as_ref());
        self.0.push('\n');
    }

    /// Makes chain `chain` of Warren's table exist and hold exactly `rules`.
    fn replace(&mut self, chain: &str, rules: &[String]) {
        self.push(format!("add chain {TABLE} {chain}"));
        self.push(format!("flush chain {TABLE} {chain}"));
        for r in rules {
            self.push(format!("add rule {TABLE} {chain} {r}"));
        }
    }

    /// Removes `link`'s element of `map` and its chain `chain` when `chain` is among
    /// `existing` (the table's chains, listed under the lock): nothing otherwise, since a
    /// chain deleted in a transaction costs the kernel about 8 ms and a sandbox without
    /// a domain rule never had one. The element is added first, so that its deletion
    /// cannot fail.
    fn remove(&mut self, map: &str, link: &str, chain: &str, existing: &Chains) {
        if !existing.has(chain) {
            return;
        }
        self.push(format!(
            "add element {TABLE} {map} {{ \"{link}\" : jump {chain} }}"
        ));
        self.push(format!("delete element {TABLE} {map} {{ \"{link}\" }}"));
        self.push(format!("delete chain {TABLE} {chain}"));
    }

    fn apply(self) -> Result<(), NetError> {
        run_with("nft", &["-f", "-"], Some(&self.0)).map(drop)
    }
}

/// Declares Warren's table, its maps and its base chains (a no-op where they exist).
fn declare(batch: &mut Batch) {
    batch.push(format!("add table {TABLE}"));
    for map in MAPS {
        batch.push(format!(
            "add map {TABLE} {map} {{ type ifname : verdict; }}"
        ));
    }
    for (chain, hook) in BASE_CHAINS {
        batch.push(format!("add chain {TABLE} {chain} {{ {hook} }}"));
    }
}

/// The host-wide rules of the module doc, rewritten whole in `batch` (so a Warren with
/// other rules converges everyone's); with `guard`, the router guard too.
fn host_batch(batch: &mut Batch, guard: bool) {
    declare(batch);
    batch.push(format!("add chain {TABLE} {RULES_VERSION}"));
    let w = format!("\"{LINK_PREFIX}*\"");
    batch.replace(
        "prerouting_raw",
        &[format!("iifname {w} fib saddr . iif oif missing drop")],
    );
    batch.replace(
        "prerouting_nat",
        &[format!(
            "iifname {w} meta nfproto ipv4 iifname vmap @redirects"
        )],
    );
    batch.replace(
        "postrouting_nat",
        &[format!("ip saddr {SUBNET} oifname != {w} masquerade")],
    );
    batch.replace(
        "input",
        &[
            // Connections a sandbox's egress rules sent to the daemon's proxy
            // (redirected, so only those); each sandbox's own port is accepted in the
            // chain its link maps to.
            format!(
                "iifname {w} meta nfproto ipv4 meta l4proto tcp ct status dnat iifname vmap @proxy"
            ),
            format!("iifname {w} drop"),
        ],
    );
    batch.replace(
        "forward",
        &[
            // Both ends have IPv6 off; this is for anything of Warren's that has it anyway.
            format!("iifname {w} meta nfproto != ipv4 drop"),
            format!("oifname {w} meta nfproto != ipv4 drop"),
            // Behind the reverse-path check: whatever else a sandbox forges, an address
            // outside the sandboxes' subnet never leaves the host unmasqueraded.
            format!("iifname {w} ip saddr != {SUBNET} drop"),
            format!("iifname {w} oifname {w} drop"),
            // Link-local addresses: a cloud's metadata service (169.254.169.254) hands
            // out the machine's credentials to whoever asks.
            format!("iifname {w} ip daddr 169.254.0.0/16 drop"),
            format!("oifname {w} ct state established,related accept"),
            format!("oifname {w} drop"),
            // Each sandbox with egress rules has a chain of its own, its link mapped to it.
            format!("iifname {w} iifname vmap @egress"),
            format!("iifname {w} accept"),
        ],
    );
    if guard {
        batch.replace(
            "router_guard",
            &[
                format!("iifname {w} return"),
                format!("oifname {w} ct state established,related return"),
                "drop".to_string(),
            ],
        );
    }
}

fn rules_lock() -> Result<Flock<fs::File>, NetError> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(RULES_LOCK)?;
    Ok(Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?)
}

/// The host-wide rules (see the module doc), in one transaction when they need one.
fn host_rules() -> Result<(), NetError> {
    let _held = rules_lock()?;
    let mut batch = Batch::default();
    host_rules_locked(&mut batch)?;
    if batch.0.is_empty() {
        return Ok(());
    }
    batch.apply()
}

/// Adds the host-wide rules to `batch` (applied by the caller, with the lock held),
/// unless they are there already: a transaction costs the kernel tens of milliseconds.
/// Returns the chains Warren's table had.
fn host_rules_locked(batch: &mut Batch) -> Result<Chains, NetError> {
    let forwarding = fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    let turned_on = forwarding.trim() == "0";
    if turned_on {
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    accept_in_host_forward();
    let (state, chains) = table_state()?;
    // An older Warren's chains are looked for by each process's first change (an older
    // Warren that ran since, beside this one, would have made them again: their drop of
    // the sandboxes' input would stop this Warren's egress proxy) and wherever the table
    // is missing. Its rules record in theirs whether it turned forwarding on.
    static OLD_CHAINS_LOOKED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    let first = !OLD_CHAINS_LOOKED.swap(true, std::sync::atomic::Ordering::Relaxed);
    let old_guard = (first || state == TableState::Missing) && remove_old_chains();
    if turned_on || old_guard || state != TableState::Current {
        host_batch(batch, turned_on || old_guard);
    }
    Ok(chains)
}

/// What marks the accepts Warren inserts into the host's iptables `FORWARD` chain.
const HOST_ACCEPT_COMMENT: &str = "warren: nat sandboxes, filtered in table inet warren";

/// The accepts of the module doc, as `iptables` arguments after the chain: from the
/// sandboxes' links out of each interface of `uplinks` (those the host's default
/// routes leave by, so that a sandbox is not let through to what the host's own rules
/// keep apart, such as a Docker bridge's containers), and the replies back.
fn host_accepts(uplinks: &[String]) -> Vec<Vec<&str>> {
    let mark = [
        "-m",
        "comment",
        "--comment",
        HOST_ACCEPT_COMMENT,
        "-j",
        "ACCEPT",
    ];
    let into = [
        "-o",
        "wrn+",
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
    ];
    let mut rules: Vec<Vec<&str>> = uplinks
        .iter()
        .map(|up| [&["-i", "wrn+", "-o", up.as_str()][..], &mark].concat())
        .collect();
    rules.push([&into[..], &mark].concat());
    rules
}

/// The interfaces `route` (a `/proc/thread-self/net/route`: the calling thread's network
/// namespace, which `/proc/net` is not for a thread that joined another) sends its
/// default routes out of.
fn default_route_links(route: &str) -> Vec<String> {
    let mut links: Vec<String> = route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
        })
        .filter(|l| !l.starts_with(LINK_PREFIX))
        .collect();
    links.dedup();
    links
}

/// Whether `listed` (an `iptables -S FORWARD`) drops what it does not accept: by its
/// policy, or by a rule that drops or rejects.
fn host_forward_drops(listed: &str) -> bool {
    listed.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("-P FORWARD") && !l.ends_with(" ACCEPT"))
            || (l.starts_with("-A FORWARD") && (l.ends_with("-j DROP") || l.contains("-j REJECT")))
    })
}

/// Makes the host's iptables `FORWARD` chain accept the sandboxes' traffic where it would
/// drop it (see the module doc), once per process: later changes of this process rely on
/// it. A rule that cannot be inserted is said on stderr and the sandbox is made all the
/// same (its network then reaches nothing beyond the host, as on a host firewall of
/// nftables alone).
fn accept_in_host_forward() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        if let Err(e) = insert_host_accepts() {
            eprintln!(
                "warren: the host's FORWARD chain drops forwarded traffic, and accepting nat sandboxes' in it failed: {e}"
            );
        }
    });
}

/// The work of [`accept_in_host_forward`]: nothing without iptables or where its
/// `FORWARD` chain accepts, and no accept inserted twice.
fn insert_host_accepts() -> Result<(), NetError> {
    let Ok(listed) = run_with("iptables", &["-w", "-S", "FORWARD"], None) else {
        return Ok(());
    };
    if !host_forward_drops(&listed) {
        return Ok(());
    }
    let uplinks = default_route_links(&fs::read_to_string("/proc/thread-self/net/route")?);
    // Inserted last first, so they stand at the head in their order.
    for rule in host_accepts(&uplinks).iter().rev() {
        let with = |verb: &'static str| [&["-w", verb, "FORWARD"][..], rule].concat();
        if run_with("iptables", &with("-C"), None).is_err() {
            run_with("iptables", &with("-I"), None)?;
        }
    }
    Ok(())
}

/// The accepts of Warren's in the host's iptables `FORWARD` chain, as `iptables -S`
/// lists them; none without iptables.
pub fn host_forward_accepts() -> Vec<String> {
    run_with("iptables", &["-w", "-S", "FORWARD"], None)
        .map(|listed| {
            listed
                .lines()
                .filter(|l| l.contains(HOST_ACCEPT_COMMENT))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether Warren's table is in this network namespace, and with this Warren's rules.
#[derive(Debug, PartialEq, Eq)]
enum TableState {
    Missing,
    Other,
    Current,
}

/// The chains of Warren's table, as listed.
#[derive(Debug, Default)]
struct Chains(Vec<String>);

impl Chains {
    fn has(&self, chain: &str) -> bool {
        self.0.iter().any(|c| c == chain)
    }

    /// Whether the table is there, and with this Warren's rules.
    fn state(&self, listed: bool) -> TableState {
        match (listed, self.has(RULES_VERSION)) {
            (false, _) => TableState::Missing,
            (true, false) => TableState::Other,
            (true, true) => TableState::Current,
        }
    }
}

/// Warren's table's state and chains, from one listing of the `inet` tables.
fn table_state() -> Result<(TableState, Chains), NetError> {
    let listed = run_with("nft", &["list", "chains", "inet"], None)?;
    Ok(parse_chains(&listed))
}

/// [`table_state`] of an `nft list chains inet` output.
fn parse_chains(listed: &str) -> (TableState, Chains) {
    let mut table = None;
    let mut found = false;
    let mut chains = Chains::default();
    for line in listed.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ") {
            table = Some(t.trim_end_matches(" {").to_string());
            found |= table.as_deref() == Some(TABLE);
        } else if table.as_deref() == Some(TABLE) {
            if let Some(c) = line.strip_prefix("chain ") {
                chains.0.push(c.trim_end_matches(" {").to_string());
            }
        }
    }
    (chains.state(found), chains)
}

/// An empty chain whose name says which version of the host rules the table holds:
/// changed with them, so that a Warren with other rules writes its own.
const RULES_VERSION: &str = "rules_v1";

/// Warren's table's chains, when it exists in this network namespace.
fn has_table() -> Result<Option<Chains>, NetError> {
    let (state, chains) = table_state()?;
    Ok((state != TableState::Missing).then_some(chains))
}

/// Removes the iptables chains of older Warrens (and their IPv6 ones), in one restore a
/// family; a host without iptables has none. Returns whether they held the router guard
/// (an older Warren turned forwarding on).
fn remove_old_chains() -> bool {
    let mut guard = false;
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        let Ok(saved) = run_with(save, &[], None) else {
            continue;
        };
        guard |= save == "iptables-save" && saved.lines().any(|l| l == OLD_GUARD);
        if let Some(input) = old_chains_removal(&saved) {
            let _ = run_with(restore, &["-w", "--noflush"], Some(&input));
        }
    }
    guard
}

/// The rule of an older Warren's that said it had turned IPv4 forwarding on.
const OLD_GUARD: &str = "-A WARREN-FORWARD -j DROP";

/// The `iptables-restore --noflush` input removing every `WARREN-` chain `saved` (an
/// `iptables-save` output) shows, and the jumps to them; none when there are none.
fn old_chains_removal(saved: &str) -> Option<String> {
    let mut input = String::new();
    let mut table = "";
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
            jumps.clear();
            chains.clear();
        } else if let Some(c) = line.strip_prefix(":WARREN-") {
            chains.push(format!("WARREN-{}", c.split(' ').next().unwrap_or("")));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let builtin = !rule.starts_with("WARREN-");
            if builtin && rule.contains(" -j WARREN-") {
                jumps.push(format!("-D {rule}"));
            }
        } else if line == "COMMIT" && !chains.is_empty() {
            input.push_str(&format!("*{table}\n"));
            for c in &chains {
                input.push_str(&format!(":{c} - [0:0]\n"));
            }
            for j in &jumps {
                input.push_str(&format!("{j}\n"));
            }
            for c in &chains {
                input.push_str(&format!("-X {c}\n"));
            }
            input.push_str("COMMIT\n");
        }
    }
    (!input.is_empty()).then_some(input)
}

/// The names of sandbox `id`'s own chains: (filter, redirections, proxy).
fn egress_chains(id: &str) -> (String, String, String) {
    let h = &link_name(id)[LINK_PREFIX.len()..];
    (
        format!("{EGRESS_CHAIN}{h}"),
        format!("{REDIRECT_CHAIN}{h}"),
        format!("{PROXY_CHAIN}{h}"),
    )
}

/// Adds to `batch` what makes sandbox `id`'s egress rules `rules`, with `dns` the
/// resolvers a domain rule keeps reachable.
fn egress_batch(
    batch: &mut Batch,
    existing: &Chains,
    id: &str,
    rules: &warren_types::egress::EgressRules,
    dns: &[Ipv4Addr],
    proxy_port: u16,
) {
    let link = link_name(id);
    let (filter, redirect, proxy) = egress_chains(id);
    let mut f = Vec::new();
    for ip in dns {
        f.push(format!("ip daddr {ip} return"));
    }
    for n in &rules.allow_nets {
        f.push(format!("ip daddr {n} return"));
    }
    for n in &rules.deny_nets {
        // Refused at once rather than left to time out.
        f.push(format!(
            "ip daddr {n} meta l4proto tcp reject with tcp reset"
        ));
        f.push(format!("ip daddr {n} reject with icmp type net-prohibited"));
    }
    batch.replace(&filter, &f);
    batch.push(format!(
        "add element {TABLE} egress {{ \"{link}\" : jump {filter} }}"
    ));
    if rules.has_domains() {
        let mut r = Vec::new();
        for n in &rules.allow_nets {
            r.push(format!("ip daddr {n} return"));
        }
        for ip in dns {
            r.push(format!("ip daddr {ip} return"));
        }
        r.push(format!("tcp dport {{ 80, 443 }} redirect to :{proxy_port}"));
        batch.replace(&redirect, &r);
        batch.replace(&proxy, &[format!("tcp dport {proxy_port} accept")]);
        batch.push(format!(
            "add element {TABLE} redirects {{ \"{link}\" : jump {redirect} }}"
        ));
        batch.push(format!(
            "add element {TABLE} proxy {{ \"{link}\" : jump {proxy} }}"
        ));
    } else {
        batch.remove("redirects", &link, &redirect, existing);
        batch.remove("proxy", &link, &proxy, existing);
    }
}

/// Puts sandbox `id`'s egress rules in place, or replaces the ones it has: the whole
/// change is one transaction, so no connection sees half of the old set and half of the
/// new. Works before the sandbox's link exists (the rules name the link), so a sandbox is
/// under its rules from its first packet. With a domain rule, connections on ports 80
/// and 443 that no address rule allows go to the proxy on `proxy_port`, which looks at
/// the name they carry. Open rules remove everything.
pub fn set_egress(
    id: &str,
    rules: &warren_types::egress::EgressRules,
    proxy_port: u16,
) -> Result<(), NetError> {
    let _held = rules_lock()?;
    let mut batch = Batch::default();
    let existing = host_rules_locked(&mut batch)?;
    let dns: Vec<Ipv4Addr> = if !rules.has_domains() {
        Vec::new()
    } else if rules.dns_given {
        rules.dns.clone()
    } else {
        crate::template::sandbox_resolvers()
    };
    egress_batch(&mut batch, &existing, id, rules, &dns, proxy_port);
    batch.apply()
}

/// Adds to `batch` the removal of sandbox `id`'s egress rules.
fn clear_batch(batch: &mut Batch, existing: &Chains, id: &str) {
    let link = link_name(id);
    let (filter, redirect, proxy) = egress_chains(id);
    batch.remove("egress", &link, &filter, existing);
    batch.remove("redirects", &link, &redirect, existing);
    batch.remove("proxy", &link, &proxy, existing);
}

/// Removes sandbox `id`'s egress rules; a sandbox without any is no error.
pub fn clear_egress(id: &str) {
    let Ok(_held) = rules_lock() else { return };
    // Without Warren's table there is nothing to clear, and making it here would skip
    // the removal of an older Warren's chains that the first write does.
    let Ok(Some(existing)) = has_table() else {
        return;
    };
    let mut batch = Batch::default();
    clear_batch(&mut batch, &existing, id);
    // A sandbox that never had rules has nothing to remove: no transaction at all.
    if !batch.0.is_empty() {
        let _ = batch.apply();
    }
}

/// Sandboxes' egress rules whose link is gone (a sandbox being made has its rules a
/// moment before its link): the links named in Warren's maps.
pub fn leftover_egress() -> Vec<String> {
    let mut links = Vec::new();
    for map in MAPS {
        let Ok(listed) = run_with("nft", &["list", "map", "inet", "warren", map], None) else {
            continue;
        };
        for name in listed.split('"').skip(1).step_by(2) {
            if name.starts_with(LINK_PREFIX)
                && !Path::new("/sys/class/net").join(name).exists()
                && !links.iter().any(|l| l == name)
            {
                links.push(name.to_string());
            }
        }
    }
    links
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

    use warren_types::egress::{Domain, EgressRules, Net};

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
    fn old_iptables_chains_and_the_jumps_to_them_are_removed_in_one_restore() {
        let saved = "# Generated by iptables-save\n*raw\n:PREROUTING ACCEPT [0:0]\n\
             :WARREN-PREROUTING - [0:0]\n-A PREROUTING -j WARREN-PREROUTING\n\
             -A WARREN-PREROUTING -i wrn+ -m rpfilter --invert -j DROP\nCOMMIT\n\
             *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n\
             :WARREN-EGRESS - [0:0]\n:WARREN-E-aa - [0:0]\n\
             -A INPUT -j WARREN-INPUT\n-A FORWARD -j DOCKER\n\
             -A WARREN-EGRESS -i wrnaa -j WARREN-E-aa\nCOMMIT\n\
             *nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n";
        assert_eq!(
            old_chains_removal(saved).unwrap(),
            "*raw\n:WARREN-PREROUTING - [0:0]\n-D PREROUTING -j WARREN-PREROUTING\n\
             -X WARREN-PREROUTING\nCOMMIT\n\
             *filter\n:WARREN-EGRESS - [0:0]\n:WARREN-E-aa - [0:0]\n\
             -D INPUT -j WARREN-INPUT\n-X WARREN-EGRESS\n-X WARREN-E-aa\nCOMMIT\n"
        );
        assert_eq!(
            old_chains_removal("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn a_sandboxs_egress_change_is_one_batch_naming_only_its_link() {
        let rules = EgressRules {
            allow_nets: vec![Net::parse("10.1.0.0/16").unwrap()],
            deny_nets: vec![Net::parse("0.0.0.0/0").unwrap()],
            ..Default::default()
        };
        let link = link_name("sb1");
        let (e, r, p) = egress_chains("sb1");
        // The sandbox had a domain rule before: its redirection chains are there.
        let had = Chains(vec![r.clone(), p.clone()]);
        let mut batch = Batch::default();
        egress_batch(&mut batch, &had, "sb1", &rules, &[], 8080);
        let text = batch.0;
        assert!(
            text.contains(&format!("flush chain inet warren {e}\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "add rule inet warren {e} ip daddr 10.1.0.0/16 return\n"
        )));
        assert!(text.contains(&format!(
            "add element inet warren egress {{ \"{link}\" : jump {e} }}"
        )));
        // Without a domain rule, no redirection is left behind.
        assert!(text.contains(&format!("delete chain inet warren {r}\n")));
        assert!(text.contains(&format!("delete chain inet warren {p}\n")));
        assert!(!text.contains("redirect to"));
        // Chains that are not there are not removed: a deletion costs a transaction.
        let mut fresh = Batch::default();
        egress_batch(&mut fresh, &Chains::default(), "sb1", &rules, &[], 8080);
        assert!(!fresh.0.contains("delete"), "{}", fresh.0);
        let mut other = Batch::default();
        clear_batch(&mut other, &had, "sb2");
        assert!(!other.0.contains(&link), "{}", other.0);
        assert!(other.0.is_empty(), "{}", other.0);
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

    #[test]
    fn default_routes_name_their_links() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_links(route), ["eth0", "wlan0"]);
        let uplinks = ["eth0".to_string()];
        let rules = host_accepts(&uplinks);
        assert_eq!(rules.len(), 2);
        assert_eq!(&rules[0][..4], ["-i", "wrn+", "-o", "eth0"]);
    }

    #[test]
    fn a_host_forward_chain_that_drops_is_told_from_one_that_accepts() {
        assert!(!host_forward_drops(
            "-P FORWARD ACCEPT\n-A FORWARD -j WARREN-FORWARD\n"
        ));
        assert!(host_forward_drops(
            "-P FORWARD DROP\n-N DOCKER\n-A FORWARD -j DOCKER-USER\n"
        ));
        assert!(host_forward_drops(
            "-P FORWARD ACCEPT\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n"
        ));
        assert!(!host_forward_drops("-P INPUT DROP\n-P FORWARD ACCEPT\n"));
    }

    /// In a network namespace of its own whose iptables `FORWARD` policy drops, as
    /// Docker's does: a sandbox's traffic is accepted there once, and a second change does
    /// not add the accepts again.
    #[test]
    fn a_host_forward_chain_that_drops_gets_warrens_accepts_once() {
        let test = "a_host_forward_chain_that_drops_gets_warrens_accepts_once";
        if !warren_testkit::needs_root(test, "writes netfilter rules in its own namespace") {
            return;
        }
        if run_with("iptables", &["--version"], None).is_err() {
            warren_testkit::skip(
                test,
                "no iptables: there is no host FORWARD chain to accept in",
            );
            return;
        }
        let ns = Netns::new();
        in_netns_of(ns.pid(), || {
            // An uplink with the default route.
            for args in [
                &["link", "add", "up0", "type", "veth", "peer", "name", "up1"][..],
                &["addr", "add", "192.0.2.1/24", "dev", "up0"],
                &["link", "set", "up1", "up"],
                &["link", "set", "up0", "up"],
                &["route", "add", "default", "via", "192.0.2.254"],
            ] {
                run_with("ip", args, None)?;
            }
            run_with("iptables", &["-w", "-P", "FORWARD", "DROP"], None)?;
            // Twice, as two Warren processes would.
            insert_host_accepts()?;
            insert_host_accepts()?;
            let listed = host_forward_accepts();
            assert_eq!(listed.len(), 2, "{listed:?}");
            // Out of the uplink only: not to another bridge of the host's.
            assert!(
                listed[0].starts_with("-A FORWARD -i wrn+ -o up0 "),
                "{listed:?}"
            );
            assert!(
                listed[1].contains("-o wrn+") && listed[1].contains("RELATED,ESTABLISHED"),
                "{listed:?}"
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn the_listing_tells_the_tables_state_and_its_chains() {
        let listed = "table inet other {\n\tchain e_x {\n\t}\n}\ntable inet warren {\n\
                      \tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\t}\n\
                      \tchain e_abc {\n\t}\n}\n";
        let (state, chains) = parse_chains(listed);
        assert_eq!(state, TableState::Other);
        assert!(chains.has("e_abc") && chains.has("forward") && !chains.has("e_x"));
        let current = format!("table inet warren {{\n\tchain {RULES_VERSION} {{\n\t}}\n}}\n");
        assert_eq!(parse_chains(&current).0, TableState::Current);
        assert_eq!(
            parse_chains("table inet other {\n}\n").0,
            TableState::Missing
        );
    }

    fn nft_table() -> String {
        run_with("nft", &["list", "table", "inet", "warren"], None).unwrap_or_default()
    }

    /// In a network namespace of its own: the first write removes an older Warren's
    /// iptables chains and makes Warren's table; a sandbox's egress rules are found as
    /// leftovers while its link is missing and go with `clear_egress`; a batch that fails
    /// halfway changes nothing.
    #[test]
    fn rules_live_in_warrens_own_table_and_change_in_one_transaction() {
        let test = "rules_live_in_warrens_own_table_and_change_in_one_transaction";
        if !warren_testkit::needs_root(test, "writes netfilter rules in its own namespace") {
            return;
        }
        if run_with("nft", &["--version"], None).is_err() {
            warren_testkit::skip(test, "no nft (install nftables)");
            return;
        }
        let ns = Netns::new();
        in_netns_of(ns.pid(), || {
            let old = "*filter\n:WARREN-FORWARD - [0:0]\n:WARREN-E-aa - [0:0]\n\
                       -A FORWARD -j WARREN-FORWARD\n-A WARREN-FORWARD -i wrn+ -j WARREN-E-aa\n\
                       -A WARREN-FORWARD -j DROP\nCOMMIT\n";
            let iptables = run_with("iptables-restore", &["-w", "--noflush"], Some(old)).is_ok();
            // Forwarding is on, and the older Warren's rules say it was Warren's doing
            // (without iptables, off: Warren turns it on).
            fs::write(
                "/proc/sys/net/ipv4/ip_forward",
                if iptables { "1" } else { "0" },
            )?;
            host_rules()?;
            if iptables {
                let saved = run_with("iptables-save", &[], None)?;
                assert!(!saved.contains("WARREN"), "old chains left: {saved}");
            }
            let table = nft_table();
            for rule in [
                "fib saddr . iif oif missing drop",
                "masquerade",
                "ip daddr 169.254.0.0/16 drop",
                "iifname vmap @egress",
            ] {
                assert!(table.contains(rule), "no {rule}: {table}");
            }
            // So the router guard carries over to Warren's table (and where iptables is
            // missing, this namespace's forwarding was off: Warren turned it on); a
            // second write keeps it.
            host_rules()?;
            let guard = run_with(
                "nft",
                &["list", "chain", "inet", "warren", "router_guard"],
                None,
            )?;
            assert!(guard.lines().any(|l| l.trim() == "drop"), "{guard}");

            let rules = EgressRules {
                allow_nets: vec![Net::parse("10.9.0.0/16").unwrap()],
                allow_domains: vec![Domain::parse("example.com").unwrap()],
                deny_nets: vec![Net::parse("0.0.0.0/0").unwrap()],
                dns: vec![Ipv4Addr::new(10, 9, 0, 53)],
                dns_given: true,
            };
            let id = "nft-test-gone";
            set_egress(id, &rules, 8080)?;
            let (e, r, p) = egress_chains(id);
            let table = nft_table();
            for chain in [&e, &r, &p] {
                assert!(
                    table.contains(&format!("chain {chain} {{")),
                    "no {chain}: {table}"
                );
            }
            assert!(table.contains("redirect to :8080"), "{table}");
            assert_eq!(leftover_egress(), [link_name(id)]);
            // The same rules without the domain: no redirection is left.
            let plain = EgressRules {
                allow_domains: Vec::new(),
                ..rules.clone()
            };
            set_egress(id, &plain, 8080)?;
            let table = nft_table();
            assert!(!table.contains(&format!("chain {r} {{")), "{table}");
            assert!(!table.contains("redirect to"), "{table}");

            let mut half = Batch::default();
            half.push(format!("add chain {TABLE} half_done"));
            half.push(format!("add rule {TABLE} no_such_chain drop"));
            assert!(half.apply().is_err());
            assert!(
                !nft_table().contains("half_done"),
                "a failed batch left a part"
            );

            clear_egress(id);
            assert_eq!(leftover_egress(), Vec::<String>::new());
            let table = nft_table();
            assert!(!table.contains(&format!("chain {e} {{")), "{table}");
            Ok(())
        })
        .unwrap();
    }
}
