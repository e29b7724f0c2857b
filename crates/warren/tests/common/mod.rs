//! Shared by the integration tests: run `warren` with test-only directories.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Where the tests' sandboxes keep their state (shared by all tests, so the host template
/// is built once). `scripts/test` runs `warren doctor` on it at the end.
pub fn test_root() -> PathBuf {
    std::env::var_os("WARREN_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-test"))
}

/// A `warren` command aimed at the test directories.
pub fn warren() -> Command {
    let root = test_root();
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.env("WARREN_RUN_DIR", root.join("run"))
        .env("WARREN_DATA_DIR", root.join("data"))
        .stdin(Stdio::null());
    c
}

/// The backend the suites run against: `WARREN_ISOLATION` (which `warren run` and
/// `warren create` read too), the namespace backend when unset.
pub fn isolation() -> String {
    std::env::var("WARREN_ISOLATION").unwrap_or_else(|_| "namespace".into())
}

/// True when the suite's backend runs the sandbox on the host kernel (every backend but
/// gVisor); otherwise records the test's skip: what it checks is the host kernel's
/// boundary (host uid ranges, the host's namespaces), which gVisor's kernel replaces.
pub fn host_kernel(test: &str) -> bool {
    if isolation() != "gvisor" {
        return true;
    }
    warren_testkit::skip(
        test,
        "gVisor: the sandbox's ids and namespaces are its kernel's own; the host sees only \
         runsc's Sentry and Gofer",
    );
    false
}

/// True when the test can run: sandboxes need root. Otherwise the skip is recorded.
pub fn can_run(test: &str) -> bool {
    warren_testkit::needs_root(test, "creating sandboxes")
}

/// `warren run --rm <flags> -- sh -c <script>`.
pub fn sh(flags: &[&str], script: &str) -> Output {
    let mut c = warren();
    c.arg("run")
        .arg("--rm")
        .args(flags)
        .args(["--", "sh", "-c", script]);
    c.output().expect("run warren")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `script` and asserts it exits 0, returning its stdout.
pub fn sh_ok(flags: &[&str], script: &str) -> String {
    let o = sh(flags, script);
    assert!(
        o.status.success(),
        "script failed ({:?}):\n{script}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Python inside the sandbox: runs a raw syscall and prints the errno it failed with
/// (0 when it succeeded).
pub fn syscall_errno(nr: i64, args: &[i64]) -> i32 {
    let args: Vec<String> = args.iter().map(|a| format!("ctypes.c_long({a})")).collect();
    let script = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         r = libc.syscall(ctypes.c_long({nr}){}{})\n\
         print(0 if r >= 0 else ctypes.get_errno())",
        if args.is_empty() { "" } else { ", " },
        args.join(", ")
    );
    let o = warren()
        .args(["run", "--rm", "--", "python3", "-c", &script])
        .output()
        .expect("run warren");
    assert!(o.status.success(), "python failed: {}", stderr(&o));
    stdout(&o).trim().parse().expect("errno")
}

/// Stops the helper of every sandbox recorded under `run_dir` and waits (up to 10 s) for
/// each to finish its teardown: a test's clean-up after a failed assertion.
pub fn stop_sandboxes_under(run_dir: &std::path::Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut pids = Vec::new();
    for e in std::fs::read_dir(run_dir.join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let pid = std::fs::read_to_string(e.path().join("helper.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            pids.push(pid);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for pid in pids {
        while kill(Pid::from_raw(pid), None).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// A peer host: a network namespace of the test's own, linked to the host by a veth, with
/// `host_addr` on the host's end and `peer_addr` on its own (/30s). Removed on drop.
pub struct Peer {
    pub ns: String,
    pub link: String,
}

impl Peer {
    /// Names start with `tag` (at most 7 characters), which must not look like Warren's.
    pub fn new(tag: &str, host_addr: &str, peer_addr: &str) -> Option<Peer> {
        let id = std::process::id() % 100_000;
        let peer = Peer {
            ns: format!("{tag}{id}"),
            link: format!("{}{id}", &tag[..tag.len().min(7)]),
        };
        let ip = |args: &str| {
            Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let ok = ip(&format!("netns add {}", peer.ns))
            && ip(&format!(
                "link add {} type veth peer name eth0 netns {}",
                peer.link, peer.ns
            ))
            && ip(&format!("addr add {host_addr}/30 dev {}", peer.link))
            && ip(&format!("link set {} up", peer.link))
            && ip(&format!("-n {} addr add {peer_addr}/30 dev eth0", peer.ns))
            && ip(&format!("-n {} link set eth0 up", peer.ns))
            && ip(&format!("-n {} link set lo up", peer.ns));
        ok.then_some(peer)
    }

    /// `cmd` run inside the peer's namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Python: two busy threads for 2 s of wall time; prints the CPU time they got per
/// second of wall time (about 2 without a quota). Contains no single quote.
pub const CPU_SPIN: &str = r#"
import threading, time
def spin(stop):
    while time.monotonic() < stop:
        pass
stop = time.monotonic() + 2.0
t0, c0 = time.monotonic(), time.process_time()
ts = [threading.Thread(target=spin, args=(stop,)) for _ in range(2)]
[t.start() for t in ts]; [t.join() for t in ts]
print((time.process_time() - c0) / (time.monotonic() - t0))
"#;

/// Asserts that a quota of `quota` cores holds [`CPU_SPIN`]: `measure` runs it under
/// the quota on backend `isolation` and returns its figure, up to three times.
pub fn assert_cpu_share_held(isolation: &str, quota: f64, mut measure: impl FnMut() -> f64) {
    // gVisor's kernel counts its processes' CPU time by its own clock, which runs on
    // while the host holds the Sentry back: the quota is the host's, the figure is
    // gVisor's, and they agree only roughly (0.55-0.65 here for 0.5).
    let slack = if isolation == "gvisor" { 0.5 } else { 0.15 };
    let within = quota * (1.0 - slack)..=quota * (1.0 + slack);
    // A shared host's clocks are noisy (a hypervisor's stolen time, other tests'
    // memory pressure): one figure in three within the slack shows the quota holds,
    // while a quota not applied is above it every time (about 1.9 for two threads).
    let mut shares = Vec::new();
    for _ in 0..3 {
        let share = measure();
        println!("{isolation}: CPU share under --cpus {quota}: {share:.3}");
        shares.push(share);
        if within.contains(&share) {
            return;
        }
    }
    // On a host busier than its cores the sandbox may get less than its share, which
    // says nothing of the quota: what it must never get is more.
    let (load, cores) = host_load();
    if load >= cores && shares.iter().all(|s| s < within.start()) {
        println!(
            "the host is loaded ({load:.1} on {cores:.0} cores): no share above the quota, \
             the lower bound not held against it"
        );
        return;
    }
    panic!(
        "{isolation}: CPU shares {shares:.3?} under --cpus {quota}: none within {:.0} % of \
         {quota} (host load {load:.1} on {cores:.0} cores)",
        slack * 100.0
    );
}

/// The host's one-minute load average and its number of cores.
pub fn host_load() -> (f64, f64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (load, cores as f64)
}

/// A loopback TCP port free right now (another may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
