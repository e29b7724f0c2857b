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
