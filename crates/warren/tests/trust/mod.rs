//! Shared by the trust suites (escapes.rs, abuse.rs, faults.rs): a `warren serve` of a
//! test's own, and a small HTTP/1.1 client that speaks to it on the unix socket or TCP.
//!
//! The client is hand-written on std sockets so that a test sees exactly what went over
//! the wire (status, raw body), can stream a multi-gigabyte answer without holding it,
//! and needs no dependency beyond the workspace's own.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static TURN: Mutex<()> = Mutex::new(());

/// `warren doctor` reports every Warren cgroup and helper of the host whose sandbox is
/// not live in *its* directories, so daemons of one test binary take turns.
pub fn my_turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Unix,
    Tcp,
    /// The E2B listener.
    E2b,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
}

/// A started `warren serve` and how to reach it.
pub struct Daemon {
    dir: tempfile::TempDir,
    /// The data directory, when the test placed it elsewhere (a small filesystem).
    data: Option<PathBuf>,
    child: Option<Child>,
    /// `127.0.0.1:PORT` when it also listens on TCP.
    pub listen: Option<String>,
    /// `127.0.0.1:PORT` when it serves the E2B API.
    pub e2b: Option<String>,
    /// Tenants whose sandboxes are removed at the end.
    pub tenants: Vec<String>,
    /// Every sandbox id the test saw: `doctor` leftovers are told apart by them.
    ids: Mutex<BTreeSet<String>>,
    finished: bool,
    /// Shell redirections run before `exec warren serve`: descriptors the daemon inherits
    /// from whatever starts it.
    pub inherit: Option<String>,
    /// Extra arguments of `warren serve`.
    pub serve_args: Vec<String>,
    /// The binary it runs, when not the one built for the tests.
    exe: Option<PathBuf>,
}

/// How a test's daemon is started.
#[derive(Debug, Default)]
pub struct Options {
    /// Also listen on TCP (127.0.0.1, a free port).
    pub tcp: bool,
    /// Keep the data there instead of in the daemon's own directory.
    pub data: Option<PathBuf>,
    /// Shell redirections run before `exec warren serve`.
    pub inherit: Option<String>,
    /// The text of a `--config` file.
    pub config: Option<String>,
    /// Also serve the E2B API (127.0.0.1, a free port).
    pub e2b: bool,
    /// More arguments of `warren serve`.
    pub serve_args: Vec<String>,
    /// Run this binary instead of the one built for the tests (a copy named otherwise).
    pub exe: Option<PathBuf>,
}

impl Daemon {
    pub fn start(tcp: bool) -> Daemon {
        Self::start_with(tcp, None)
    }

    /// With `data`, the daemon keeps its data there instead of in its own directory.
    pub fn start_with(tcp: bool, data: Option<PathBuf>) -> Daemon {
        Self::start_opts(Options {
            tcp,
            data,
            ..Default::default()
        })
    }

    /// A daemon started from a shell that first ran `redirections` (e.g. `exec 7</`), so
    /// it inherits those descriptors as a service started carelessly would.
    pub fn start_inheriting(redirections: &str) -> Daemon {
        Self::start_opts(Options {
            inherit: Some(redirections.to_string()),
            ..Default::default()
        })
    }

    pub fn start_opts(o: Options) -> Daemon {
        // Under /tmp: a unix socket's path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("wt")
            .tempdir_in("/tmp")
            .expect("make a directory under /tmp");
        let free_port = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let listen = o.tcp.then(free_port);
        let e2b = o.e2b.then(free_port);
        // Always a file of the test's own (empty: the defaults), so that a host's
        // /etc/warren/warren.toml never reaches a test's daemon.
        let path = dir.path().join("config.toml");
        std::fs::write(&path, o.config.as_deref().unwrap_or_default()).unwrap();
        let mut serve_args = vec!["--config".into(), path.display().to_string()];
        serve_args.extend(o.serve_args);
        let mut d = Daemon {
            dir,
            data: o.data,
            child: None,
            listen,
            e2b,
            tenants: vec!["default".into()],
            ids: Mutex::default(),
            finished: false,
            inherit: o.inherit,
            serve_args,
            exe: o.exe,
        };
        // A free port is free when asked, not necessarily when the daemon binds it:
        // another test may take it between the two. Then the daemon is started again
        // on others (a restart later keeps them).
        for _ in 0..5 {
            match d.try_spawn() {
                Err(e) if e.contains("Address already in use") => {
                    d.listen = d.listen.as_ref().map(|_| free_port());
                    d.e2b = d.e2b.as_ref().map(|_| free_port());
                }
                r => {
                    r.unwrap_or_else(|e| panic!("{e}"));
                    return d;
                }
            }
        }
        panic!("warren serve found no free port in 5 tries:\n{}", d.log());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("warren.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The default tenant's API key, written on first start.
    pub fn api_key(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("api-key"))
            .expect("the default API key")
            .trim()
            .to_string()
    }

    pub fn env(&self, c: &mut Command) {
        c.env("WARREN_RUN_DIR", self.run_dir())
            .env("WARREN_DATA_DIR", self.data_dir())
            .env_remove("WARREN_SOCKET")
            .env_remove("WARREN_HOST")
            .env_remove("WARREN_TENANT")
            .env_remove("WARREN_API_KEY");
    }

    /// `warren serve` with this daemon's directories, not yet started.
    pub fn serve_command(&self) -> Command {
        let exe = self.exe.as_deref();
        let mut c = Command::new(exe.unwrap_or(Path::new(env!("CARGO_BIN_EXE_warren"))));
        self.env(&mut c);
        c.arg("serve").stdin(Stdio::null());
        if let Some(addr) = &self.listen {
            c.args(["--listen", addr]);
        }
        if let Some(addr) = &self.e2b {
            c.args(["--e2b-listen", addr]);
        }
        c.args(&self.serve_args);
        c
    }

    /// Starts `warren serve` with `extra` arguments this once, and waits until it
    /// answers `/health`.
    pub fn spawn_with(&mut self, extra: &[&str]) {
        let kept = self.serve_args.clone();
        self.serve_args.extend(extra.iter().map(|a| a.to_string()));
        let r = self.try_spawn();
        self.serve_args = kept;
        r.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts `warren serve` and waits until it answers `/health`.
    pub fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like [`spawn`](Self::spawn), but a daemon that exits is an error, not a panic.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut c = self.serve_command();
        if let Some(redirections) = &self.inherit {
            let serve = c;
            c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!("{redirections}\nexec \"$0\" \"$@\""))
                .arg(serve.get_program())
                .args(serve.get_args())
                .stdin(Stdio::null());
            for (k, v) in serve.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
        }
        c.stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(c.spawn().expect("start warren serve"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.healthy() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "warren serve exited with {status}:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "warren serve did not answer /health within 60 s:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// A request over TCP with `key`.
    pub fn as_tenant(&self, key: &str, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {key}");
        self.http(
            Via::Tcp,
            method,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    }

    /// Makes a sandbox as `key`'s tenant: its id.
    pub fn create_as(&self, key: &str, body: &str) -> String {
        let r = self.as_tenant(key, "POST", "/v1/sandboxes", body);
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        self.saw(&id);
        id
    }

    /// Builds template `name` as `key`'s tenant (over TCP) with one step; the build's
    /// answer.
    pub fn build_as(&self, key: &str, name: &str, step: &str) -> String {
        let body = serde_json::json!({ "name": name, "steps": [step] }).to_string();
        self.as_tenant(key, "POST", "/v1/templates/build", &body)
            .text()
    }

    pub fn healthy(&self) -> bool {
        matches!(
            self.try_http(Via::Unix, "GET", "/health", &[], b"", Duration::from_secs(5)),
            Ok(r) if r.status == 200
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `warren ARGS` against this daemon, on its unix socket.
    pub fn warren(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        self.env(&mut c);
        c.args(args).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.warren(args).output().expect("run warren")
    }

    /// Runs `warren ARGS`, asserts it succeeded, returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "warren {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            o.status,
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// `warren create ARGS`, asserted to succeed: the new sandbox's id.
    pub fn create(&self, args: &[&str]) -> String {
        let id = self.ok(&[&["create"], args].concat()).trim().to_string();
        assert!(!id.is_empty());
        self.saw(&id);
        id
    }

    pub fn saw(&self, id: &str) {
        self.ids.lock().unwrap().insert(id.to_string());
    }

    /// The full `SandboxInfo` of a sandbox (on the unix socket, as tenant `default`).
    pub fn info(&self, key: &str) -> serde_json::Value {
        let r = self.http(Via::Unix, "GET", &format!("/v1/sandboxes/{key}"), &[], b"");
        assert_eq!(r.status, 200, "inspect {key}: {}", r.text());
        r.json()
    }

    /// Runs a shell script through the exec API on the unix socket: (exit code, stdout).
    pub fn exec(&self, key: &str, script: &str) -> (i64, String) {
        self.exec_as("default", key, script)
    }

    /// [`exec`](Self::exec) as another tenant.
    pub fn exec_as(&self, tenant: &str, key: &str, script: &str) -> (i64, String) {
        let body = serde_json::json!({ "command": { "shell": script } }).to_string();
        let r = self.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{key}/exec"),
            &[
                ("Content-Type", "application/json"),
                ("X-Warren-Tenant", tenant),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "exec in {key}: {}", r.text());
        let v = r.json();
        let code = v["exit_code"].as_i64().unwrap_or(-1);
        if code != 0 {
            eprintln!("exec in {key} exited {code}: {v}");
        }
        (code, v["stdout"].as_str().unwrap_or("").to_string())
    }

    /// A request; panics if the daemon cannot be reached at all.
    pub fn http(
        &self,
        via: Via,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.try_http(via, method, path, headers, body, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub fn try_http(
        &self,
        via: Via,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Resp> {
        let mut conn = self.connect(via, timeout)?;
        send_request(&mut *conn, method, path, headers, body)?;
        let mut r = BufReader::new(conn);
        let (status, chunked, length) = read_head(&mut r)?;
        if status == 101 {
            // Switched protocols: what follows is the WebSocket's, not a body.
            return Ok(Resp {
                status,
                body: Vec::new(),
            });
        }
        let mut out = Vec::new();
        read_body(&mut r, chunked, length, &mut |b| out.extend_from_slice(b))?;
        Ok(Resp { status, body: out })
    }

    /// A request whose answer is passed to `sink` piece by piece and never held whole.
    pub fn http_stream(
        &self,
        via: Via,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> std::io::Result<u16> {
        let mut conn = self.connect(via, Duration::from_secs(600))?;
        send_request(&mut *conn, method, path, headers, body)?;
        let mut r = BufReader::with_capacity(1 << 16, conn);
        let (status, chunked, length) = read_head(&mut r)?;
        read_body(&mut r, chunked, length, sink)?;
        Ok(status)
    }

    fn connect(&self, via: Via, timeout: Duration) -> std::io::Result<Box<dyn ReadWrite>> {
        Ok(match via {
            Via::Unix => {
                let s = UnixStream::connect(self.socket())?;
                s.set_read_timeout(Some(timeout))?;
                Box::new(s)
            }
            Via::Tcp => {
                let s = std::net::TcpStream::connect(self.listen.as_ref().expect("a TCP daemon"))?;
                s.set_read_timeout(Some(timeout))?;
                Box::new(s)
            }
            Via::E2b => {
                let s = std::net::TcpStream::connect(self.e2b.as_ref().expect("an E2B daemon"))?;
                s.set_read_timeout(Some(timeout))?;
                Box::new(s)
            }
        })
    }

    /// `warren ARGS` over TCP with `api_key` (the address in WARREN_HOST: a flag after
    /// ARGS would be part of an exec's command).
    pub fn tcp(&self, api_key: Option<&str>, args: &[&str]) -> Output {
        let host = format!("http://{}", self.listen.as_ref().expect("a TCP daemon"));
        let mut c = self.warren(args);
        c.env("WARREN_HOST", host);
        if let Some(k) = api_key {
            c.env("WARREN_API_KEY", k);
        }
        c.output().expect("run warren")
    }

    /// The binary the next [`spawn`](Self::spawn) runs (an upgrade between two).
    pub fn set_exe(&mut self, exe: PathBuf) {
        self.exe = Some(exe);
    }

    /// kill -9: the daemon gets no chance to tidy up.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("a running daemon");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then SIGKILL if it lingers.
    pub fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            warren_testkit::stop_daemon(&mut child);
        }
    }

    /// The disks the daemon made ahead and has not given out (see
    /// `warren_runtime::prepared`).
    pub fn prepared_disks(&self) -> usize {
        std::fs::read_dir(self.data_dir().join(".blank-disks"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".prepared-"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits up to 10 s for the daemon to have a disk made ahead; whether it has.
    pub fn wait_for_prepared_disk(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.prepared_disks() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.prepared_disks() > 0
    }

    /// Removes every sandbox of the known tenants, stops the daemon, and asserts that
    /// `warren doctor` finds nothing of this test's left.
    pub fn finish(mut self) {
        self.finished = true;
        self.remove_all();
        self.shut_down();
        self.assert_clean();
    }

    /// `warren doctor` on this daemon's directories finds nothing of this test's.
    pub fn assert_clean(&self) {
        // The kernel tears a network namespace (and the host end of its veth) down
        // after its last process is gone, a moment after `rm` answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ours = self.leftovers();
        while !ours.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            ours = self.leftovers();
        }
        assert!(
            ours.is_empty(),
            "warren doctor found leftovers of this test:\n{}",
            ours.join("\n")
        );
    }

    /// The lines of `warren doctor` that are about something this test made.
    pub fn leftovers(&self) -> Vec<String> {
        let o = self.run(&["doctor"]);
        if o.status.success() {
            return Vec::new();
        }
        stdout(&o)
            .lines()
            .filter(|l| self.is_ours(l))
            .map(str::to_string)
            .collect()
    }

    fn is_ours(&self, line: &str) -> bool {
        let dir = self.dir.path().to_string_lossy();
        let ids = self.ids.lock().unwrap();
        if line.contains(&*dir)
            || line.contains(&*self.data_dir().to_string_lossy())
            || ids.iter().any(|id| line.contains(id.as_str()))
        {
            return true;
        }
        let word = line.split_whitespace().last().unwrap_or_default();
        if word.starts_with(warren_runtime::network::LINK_PREFIX) {
            return ids
                .iter()
                .any(|id| warren_runtime::network::link_name(id) == word);
        }
        let Some(pid) = line
            .split("helper pid ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            return false;
        };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ours = format!("WARREN_RUN_DIR={}", self.run_dir().display());
        env.split(|b| *b == 0).any(|v| v == ours.as_bytes())
    }

    pub fn remove_all(&self) {
        for tenant in &self.tenants {
            let o = self.run(&["ls", "-q", "--tenant", tenant]);
            let ids = stdout(&o);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            for id in &ids {
                self.saw(id);
            }
            if !ids.is_empty() {
                let mut args = vec!["rm", "--tenant", tenant];
                args.extend(ids);
                let o = self.run(&args);
                assert!(o.status.success(), "rm failed: {}", stderr(&o));
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() {
            eprintln!("warren serve's log:\n{}", self.log());
        }
        // Sandboxes outlive their daemon: remove them through one before it goes.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.child.is_none() {
                let _ = self.try_spawn();
            }
            self.remove_all();
        }));
        self.shut_down();
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn send_request(
    conn: &mut dyn ReadWrite,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// Status, whether the body is chunked, and its length if given.
fn read_head(r: &mut impl BufRead) -> std::io::Result<(u16, bool, Option<usize>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("headers cut short"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    Ok((status, chunked, length))
}

fn read_body(
    r: &mut impl BufRead,
    chunked: bool,
    length: Option<usize>,
    sink: &mut dyn FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    if !chunked {
        let mut left = length.unwrap_or(usize::MAX);
        while left > 0 {
            let n = r.read(&mut buf[..left.min(1 << 16)])?;
            if n == 0 {
                break;
            }
            sink(&buf[..n]);
            left -= n;
        }
        return Ok(());
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "chunk size"))?;
        if size == 0 {
            return Ok(());
        }
        let mut left = size;
        while left > 0 {
            let n = r.read(&mut buf[..left.min(1 << 16)])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            sink(&buf[..n]);
            left -= n;
        }
        line.clear();
        r.read_line(&mut line)?;
    }
}

/// A small xorshift generator: the fault trials need random delays, reproducible from
/// the seed they print, without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("WARREN_TRUST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("random seed {seed} (set WARREN_TRUST_SEED to repeat)");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// The resident set size of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A daemon on TCP with two tenants: `default` (the first key) and `b` (the second).
pub fn two_tenants(config: Option<&str>) -> (Daemon, String, String) {
    let mut d = Daemon::start_opts(Options {
        tcp: true,
        config: config.map(str::to_string),
        ..Default::default()
    });
    d.tenants.push("b".into());
    let key_a = d.api_key();
    let r = d.http(
        Via::Unix,
        "POST",
        "/v1/keys",
        &[("Content-Type", "application/json")],
        br#"{"tenant":"b"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key_b = r.json()["api_key"].as_str().unwrap().to_string();
    (d, key_a, key_b)
}

/// The loop devices whose backing file is under `dir` (`losetup`), for a test that checks
/// it left none.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE", "-l"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains(&*dir.display().to_string()))
        .map(str::to_string)
        .collect()
}
