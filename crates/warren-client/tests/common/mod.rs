//! A `warren serve` of a test's own, on run and data directories of its own, and what
//! the tests need around it.
//!
//! The daemon is the workspace's `warren` binary, built beside this test (`cargo test
//! --workspace` builds it; `WARREN_BIN` names another). Daemons of one test binary take
//! turns: `warren doctor` reports every Warren cgroup and helper of the host that is not
//! live in *its* directories, so another test's live sandbox would read as a leak.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use warren_client::Client;

static TURN: Mutex<()> = Mutex::new(());

/// Runs `f` on a runtime of its own.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// The `warren` binary: `WARREN_BIN`, else the one cargo built beside this test.
pub fn warren_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WARREN_BIN") {
        let bin = PathBuf::from(p);
        return bin.is_file().then_some(bin);
    }
    // target/debug/deps/live-HASH → target/debug/warren
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("warren");
    bin.is_file().then_some(bin)
}

/// The directory cargo puts this profile's examples in.
pub fn examples_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("examples"))
}

/// The `warren` binary when `test` can run here: it needs root (sandboxes) and the
/// binary; otherwise the skip is recorded.
pub fn can_run(test: &str) -> Option<PathBuf> {
    if !warren_testkit::needs_root(test, "creating sandboxes") {
        return None;
    }
    match warren_bin() {
        Some(bin) => Some(bin),
        None => {
            warren_testkit::skip(
                test,
                "no warren binary beside the test (or at WARREN_BIN): build it with \
                 cargo build -p warren, or name one in WARREN_BIN",
            );
            None
        }
    }
}

/// A started `warren serve`. Dropped, it removes every sandbox of its tenants, stops,
/// and its directories go.
pub struct Daemon {
    _turn: MutexGuard<'static, ()>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `127.0.0.1:PORT` when it also listens on TCP.
    pub listen: Option<String>,
    /// Tenants whose sandboxes are removed at the end.
    pub tenants: Vec<String>,
}

impl Daemon {
    /// Starts a daemon (also on TCP, 127.0.0.1 on a free port, with `tcp`) and waits
    /// until it answers `/health`.
    pub fn start(bin: PathBuf, tcp: bool) -> Daemon {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        // Under /tmp: a unix socket's path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("wc")
            .tempdir_in("/tmp")
            .expect("make a directory under /tmp");
        let listen = tcp.then(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        });
        let mut d = Daemon {
            _turn: turn,
            bin,
            dir,
            child: None,
            listen,
            tenants: vec!["default".into()],
        };
        let log = std::fs::File::create(d.dir.path().join("serve.log")).unwrap();
        let mut c = d.warren(&["serve"]);
        if let Some(addr) = &d.listen {
            c.args(["--listen", addr]);
        }
        c.stdout(log.try_clone().unwrap()).stderr(log);
        d.child = Some(c.spawn().expect("start warren serve"));
        let client = d.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while block_on(client.health()).is_err() {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.child = None;
                panic!("warren serve exited with {status}:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "warren serve did not answer /health within 60 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("warren.sock")
    }

    /// A client on the daemon's unix socket, as tenant `default`.
    pub fn client(&self) -> Client {
        Client::unix(self.socket())
    }

    /// A client on the daemon's TCP port with `key`.
    pub fn tcp_client(&self, key: Option<&str>) -> Client {
        let addr = self.listen.as_deref().expect("a daemon listening on TCP");
        Client::tcp(&format!("http://{addr}"), key.map(str::to_string)).unwrap()
    }

    /// The default tenant's API key, written on first start.
    pub fn api_key(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("api-key"))
            .expect("the default API key")
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Points `c` at this daemon's directories and at nothing of the caller's.
    pub fn env(&self, c: &mut Command) {
        c.env("WARREN_RUN_DIR", self.run_dir())
            .env("WARREN_DATA_DIR", self.data_dir())
            .env_remove("WARREN_SOCKET")
            .env_remove("WARREN_HOST")
            .env_remove("WARREN_TENANT")
            .env_remove("WARREN_API_KEY");
    }

    /// `warren ARGS` on this daemon's directories.
    pub fn warren(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        self.env(&mut c);
        c.args(args).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.warren(args).output().expect("run warren")
    }

    /// Removes every sandbox of the known tenants.
    fn remove_all(&self) {
        for tenant in &self.tenants {
            let o = self.run(&["ls", "-q", "--tenant", tenant]);
            let ids = String::from_utf8_lossy(&o.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "--tenant", tenant];
                args.extend(ids);
                let o = self.run(&args);
                assert!(
                    o.status.success(),
                    "rm failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }

    fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            warren_testkit::stop_daemon(&mut child);
        }
    }

    /// The lines of `warren doctor` about this daemon's directories: what it left.
    fn leftovers(&self) -> Vec<String> {
        let o = self.run(&["doctor"]);
        if o.status.success() {
            return Vec::new();
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_string)
            .collect()
    }

    /// Removes what the test made, stops the daemon, and checks that nothing of it is
    /// left.
    pub fn finish(mut self) {
        self.remove_all();
        self.shut_down();
        // A network namespace goes a moment after its last process.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = self.leftovers();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left = self.leftovers();
        }
        assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            eprintln!("warren serve's log:\n{}", self.log());
        }
        // Sandboxes outlive their daemon: remove them through it before it goes.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.remove_all()));
        self.shut_down();
    }
}
