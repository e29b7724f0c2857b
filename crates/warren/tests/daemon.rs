//! The daemon end to end: `warren serve` driven by the CLI, on its unix socket and on TCP
//! with API keys. Needs root.
//!
//! Each test runs its own daemon on run and data directories of its own under /tmp (a
//! unix socket's path must fit in `sun_path`), removes what it made, and ends with
//! `warren doctor` on those directories. `doctor` reports every Warren cgroup and helper
//! on the host whose sandbox is not live *in its directories*, so another test's live
//! sandbox reads as a leak there: the tests take turns, and a test fails only on the
//! leftovers that are its own (its sandboxes' ids, its directories, helpers started
//! with its run directory).

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{can_run, stderr, stdout};

static TURN: Mutex<()> = Mutex::new(());

fn my_turn() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next still gets its turn.
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `warren serve` of the test's own, and how to reach it.
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `127.0.0.1:PORT` when it also listens on TCP.
    listen: Option<String>,
    /// Tenants whose sandboxes are removed at the end (on the unix socket, which needs
    /// no key).
    tenants: Vec<String>,
    /// Every sandbox id the test saw: leftovers are told apart by them.
    ids: RefCell<BTreeSet<String>>,
    /// `finish` ran: nothing is left for `drop` to clean.
    finished: bool,
}

impl Daemon {
    fn start(tcp: bool) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("wd")
            .tempdir_in("/tmp")
            .expect("make a directory under /tmp");
        let listen = tcp.then(|| {
            // The port is free now; the daemon binds it a moment later.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        });
        let mut d = Daemon {
            dir,
            child: None,
            listen,
            tenants: vec!["default".into()],
            ids: RefCell::default(),
            finished: false,
        };
        d.spawn();
        d
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn socket(&self) -> PathBuf {
        self.run_dir().join("warren.sock")
    }

    fn env(&self, c: &mut Command) {
        c.env("WARREN_RUN_DIR", self.run_dir())
            .env("WARREN_DATA_DIR", self.dir.path().join("data"))
            .env_remove("WARREN_SOCKET")
            .env_remove("WARREN_HOST")
            .env_remove("WARREN_TENANT")
            .env_remove("WARREN_API_KEY");
    }

    /// Starts `warren serve` and waits until it answers `/health`.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        self.env(&mut c);
        c.arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(addr) = &self.listen {
            c.args(["--listen", addr]);
        }
        self.child = Some(c.spawn().expect("start warren serve"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(&self.socket()) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("warren serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "warren serve did not answer /health within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `warren ARGS` against this daemon, on its unix socket.
    fn warren(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        self.env(&mut c);
        c.args(args).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.warren(args).output().expect("run warren")
    }

    /// Runs `warren ARGS`, asserts it succeeded, returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
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
    fn create(&self, args: &[&str]) -> String {
        let id = self.ok(&[&["create"], args].concat()).trim().to_string();
        assert!(!id.is_empty());
        self.saw(&id);
        id
    }

    fn saw(&self, id: &str) {
        self.ids.borrow_mut().insert(id.to_string());
    }

    /// `warren ARGS` over TCP with `api_key` (the address in WARREN_HOST: a flag after
    /// ARGS would be part of an exec's command).
    fn tcp(&self, api_key: Option<&str>, args: &[&str]) -> Output {
        let host = format!("http://{}", self.listen.as_ref().expect("a TCP daemon"));
        let mut c = self.warren(args);
        c.env("WARREN_HOST", host);
        if let Some(k) = api_key {
            c.env("WARREN_API_KEY", k);
        }
        c.output().expect("run warren")
    }

    /// kill -9: the daemon gets no chance to tidy up.
    fn crash(&mut self) {
        let mut child = self.child.take().expect("a running daemon");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then SIGKILL if it lingers.
    fn shut_down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }

    /// Removes every sandbox of the known tenants, stops the daemon, and asserts that
    /// `warren doctor` finds nothing of this test's left.
    fn finish(mut self) {
        self.finished = true;
        self.remove_all();
        self.shut_down();
        let o = self.run(&["doctor"]);
        if o.status.success() {
            return;
        }
        let report = stdout(&o);
        let (ours, others): (Vec<&str>, Vec<&str>) = report.lines().partition(|l| self.is_ours(l));
        assert!(
            ours.is_empty(),
            "warren doctor found leftovers of this test:\n{}",
            ours.join("\n")
        );
        if !others.is_empty() {
            println!(
                "(leftovers of others, not this test's:\n{})",
                others.join("\n")
            );
        }
    }

    /// Whether a line of `warren doctor` is about something this test made.
    fn is_ours(&self, line: &str) -> bool {
        let dir = self.dir.path().to_string_lossy();
        let ids = self.ids.borrow();
        if line.contains(&*dir) || ids.iter().any(|id| line.contains(id.as_str())) {
            return true;
        }
        let word = line.split_whitespace().last().unwrap_or_default();
        if let Some(short) = word.strip_prefix(warren_runtime::network::LINK_PREFIX) {
            return ids.iter().any(|id| id.starts_with(short));
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

    fn remove_all(&self) {
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
        // After a failed assertion: sandboxes outlive their daemon, so remove them
        // through one (started again if the test had it down) before it goes.
        if std::thread::panicking() {
            eprintln!("warren serve's log:\n{}", self.log());
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.child.is_none() {
                self.spawn();
            }
            self.remove_all();
        }));
        self.shut_down();
    }
}

/// True when `GET /health` on the socket answers 200.
fn healthy(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn a_sandbox_lives_through_exec_pause_stop_and_rm() {
    if !can_run("a_sandbox_lives_through_exec_pause_stop_and_rm") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let events = d
        .warren(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let id = d.create(&["--name", "lab", "--label", "team=ml"]);
    let id = id.as_str();

    // Output streams apart, and the status is the command's.
    let o = d.run(&[
        "exec",
        id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(code(&o), Some(3), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    let o = d.run(&["exec", "lab", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&o), Some(143), "128 + SIGTERM");
    let o = d.run(&["exec", "lab", "--", "no-such-command"]);
    assert_eq!(code(&o), Some(127), "stderr: {}", stderr(&o));
    assert_eq!(
        d.ok(&[
            "exec",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "lab",
            "sh",
            "-c",
            "echo $A $(pwd)"
        ]),
        "1 /tmp\n"
    );
    assert_eq!(
        d.ok(&[
            "exec",
            "default/lab",
            "sh",
            "-c",
            "echo kept > /tmp/kept; echo ok"
        ]),
        "ok\n",
        "owner/name names it too"
    );

    // Stdin reaches the command, and its end closes the command's stdin.
    let mut child = d
        .warren(&[
            "exec",
            "-i",
            "lab",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "HELLO\nWORLD\ndone\n");

    // An interactive terminal (the WebSocket), on a terminal of script(1)'s.
    let cmd = format!(
        "{} exec -it lab -- sh -c 'test -t 0 && echo on a tty; exit 5'",
        env!("CARGO_BIN_EXE_warren")
    );
    let mut script = Command::new("script");
    d.env(&mut script);
    let o = script
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(5), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("on a tty\r\n"), "{:?}", stdout(&o));

    // A terminal without stdin.
    let out = d.ok(&[
        "exec",
        "-t",
        "lab",
        "--",
        "sh",
        "-c",
        "test -t 1 && echo tty",
    ]);
    assert_eq!(out.trim_end(), "tty");

    // In the background, then followed from its start.
    let pid = d.ok(&[
        "exec",
        "-d",
        "lab",
        "--",
        "sh",
        "-c",
        "echo one; sleep 1; echo two",
    ]);
    let pid = pid.trim();
    assert!(pid.parse::<u32>().is_ok(), "{pid:?}");
    assert_eq!(d.ok(&["attach", "lab", pid]), "one\ntwo\n");

    let table = d.ok(&["ls"]);
    let mut rows = table.lines();
    assert!(rows.next().unwrap().starts_with("ID "));
    let row = rows.next().expect("one sandbox listed");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..5], [id, "lab", "default", "running", "host"]);
    assert_eq!(d.ok(&["ls", "-q", "--label", "team=ml"]).trim(), id);
    assert_eq!(d.ok(&["ls", "-q", "--label", "team=web"]), "");
    assert_eq!(d.ok(&["ls", "-q", "--state", "paused"]), "");

    let info: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", "lab"])).unwrap();
    assert_eq!(info["id"], id);
    assert_eq!(info["labels"]["team"], "ml");

    // Paused: a clear refusal, then back.
    assert_eq!(d.ok(&["pause", "lab"]).trim(), "lab");
    assert_eq!(d.ok(&["ls", "-q", "--state", "paused"]).trim(), id);
    let o = d.run(&["exec", "lab", "--", "true"]);
    assert_eq!(code(&o), Some(1));
    assert!(
        stderr(&o).starts_with("warren: ") && stderr(&o).contains("(invalid_state)"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("paused"), "{}", stderr(&o));
    d.ok(&["resume", "lab"]);
    assert_eq!(d.ok(&["exec", "lab", "--", "echo", "back"]), "back\n");

    // Stopped: processes end, files stay.
    d.ok(&["stop", id]);
    assert_eq!(d.ok(&["ls", "-q", "--state", "stopped"]).trim(), id);
    d.ok(&["start", id]);
    assert_eq!(d.ok(&["exec", "lab", "--", "cat", "/tmp/kept"]), "kept\n");

    let logs = d.ok(&["logs", "lab"]);
    for kind in ["created", "paused", "resumed", "stopped", "started"] {
        assert!(logs.contains(kind), "no {kind} in the log:\n{logs}");
    }

    assert_eq!(d.ok(&["rm", "lab"]).trim(), "lab");
    let o = d.run(&["inspect", id]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));
    let o = d.run(&["rm", id, "nope"]);
    assert_eq!(code(&o), Some(1), "each key fails on its own");
    assert_eq!(stderr(&o).lines().count(), 2, "{}", stderr(&o));
    assert_eq!(d.ok(&["ls", "-q"]), "");

    let mut events = events;
    events.kill().unwrap();
    let seen = stdout(&events.wait_with_output().unwrap());
    for kind in ["created", "paused", "stopped", "terminated"] {
        assert!(
            seen.lines().any(|l| l.contains(id) && l.contains(kind)),
            "no {kind} event:\n{seen}"
        );
    }
    d.finish();
}

#[test]
fn twenty_parallel_get_or_creates_make_one_sandbox() {
    if !can_run("twenty_parallel_get_or_creates_make_one_sandbox") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let children: Vec<Child> = (0..20)
        .map(|_| {
            d.warren(&["create", "--name", "x", "--get-or-create"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "create failed: {}", stderr(&o));
        ids.push(stdout(&o).trim().to_string());
        d.saw(ids.last().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(d.ok(&["ls", "-q"]).trim(), ids[0]);
    // Without --get-or-create the name is taken.
    let o = d.run(&["create", "--name", "x"]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("(name_taken)"), "{}", stderr(&o));

    // Limits given at creation hold for every exec; an OOM kill says so.
    let small = d.create(&["--memory", "64M", "--pids", "64", "--no-home"]);
    let o = d.run(&[
        "exec",
        &small,
        "--",
        "python3",
        "-c",
        "b = bytearray(256 << 20)",
    ]);
    assert_eq!(code(&o), Some(137), "{}", stderr(&o));
    assert!(stderr(&o).contains("out of memory"), "{}", stderr(&o));
    assert_eq!(d.ok(&["exec", &small, "--", "echo", "fine"]), "fine\n");
    d.ok(&["rm", &small]);

    // Garbage collection: nothing has been idle an hour; everything has been idle for
    // no time at all.
    assert_eq!(d.ok(&["gc", "--idle-minutes", "60"]), "");
    assert_eq!(
        d.ok(&["gc", "--idle-minutes", "0", "--dry-run"]).trim(),
        ids[0]
    );
    assert_eq!(
        d.ok(&["ls", "-q"]).trim(),
        ids[0],
        "a dry run removes nothing"
    );
    assert_eq!(d.ok(&["gc", "--idle-minutes", "0"]).trim(), ids[0]);
    assert_eq!(d.ok(&["ls", "-q"]), "");
    d.finish();
}

#[test]
fn a_tenant_cannot_see_or_touch_another_tenants_sandbox() {
    if !can_run("a_tenant_cannot_see_or_touch_another_tenants_sandbox") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(true);
    d.tenants.push("b".into());
    let theirs = d.create(&["--name", "secret"]);
    let theirs = theirs.as_str();
    let key = d.ok(&["keys", "create", "--tenant", "b"]);
    let key = key.trim();
    assert!(!key.is_empty());

    // No key, a wrong key: refused.
    let o = d.tcp(None, &["ls"]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("(unauthorized)"), "{}", stderr(&o));
    let o = d.tcp(Some("wrn_not-a-key"), &["ls"]);
    assert!(stderr(&o).contains("(unauthorized)"), "{}", stderr(&o));

    // Tenant b sees nothing of default's, and every call on it is not found.
    let o = d.tcp(Some(key), &["ls", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    for args in [
        vec!["inspect", theirs],
        vec!["inspect", "default/secret"],
        vec!["exec", theirs, "--", "true"],
        vec!["logs", theirs],
        vec!["pause", theirs],
        vec!["stop", theirs],
        vec!["rm", theirs],
        vec!["rm", "default/secret"],
    ] {
        let o = d.tcp(Some(key), &args);
        assert_eq!(code(&o), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("(not_found)"),
            "{args:?}: {}",
            stderr(&o)
        );
    }

    // Its own sandbox works over TCP, and is not default's to see.
    let o = d.tcp(Some(key), &["create", "--name", "mine"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mine = stdout(&o).trim().to_string();
    d.saw(&mine);
    let o = d.tcp(Some(key), &["exec", "mine", "--", "echo", "b"]);
    assert_eq!(stdout(&o), "b\n", "{}", stderr(&o));
    let o = d.run(&["inspect", &mine]);
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));
    assert_eq!(d.ok(&["ls", "-q", "--tenant", "b"]).trim(), mine);

    // default's sandbox is untouched.
    assert_eq!(d.ok(&["exec", "secret", "--", "echo", "still"]), "still\n");
    d.finish();
}

#[test]
fn sandboxes_outlive_a_daemon_killed_with_sigkill() {
    if !can_run("sandboxes_outlive_a_daemon_killed_with_sigkill") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    let id = d.create(&["--name", "survivor"]);
    let id = id.as_str();
    d.ok(&["exec", id, "--", "sh", "-c", "echo before > /tmp/mark"]);
    d.crash();
    let o = d.run(&["ls"]);
    assert_eq!(code(&o), Some(125), "no daemon: {}", stderr(&o));
    assert!(
        stderr(&o).contains("is `warren serve` running?"),
        "{}",
        stderr(&o)
    );

    d.spawn();
    assert_eq!(d.ok(&["ls", "-q", "--state", "running"]).trim(), id);
    assert_eq!(
        d.ok(&["exec", "survivor", "--", "cat", "/tmp/mark"]),
        "before\n"
    );
    let logs = d.ok(&["logs", id]);
    assert!(logs.contains("adopted"), "{logs}");
    d.finish();
}

/// Joins a shared terminal over the daemon's unix socket.
async fn join(
    socket: &Path,
    token: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let url = format!("ws://localhost/v1/shared/{token}");
    tokio_tungstenite::client_async(url, stream)
        .await
        .map(|(ws, _)| ws)
}

/// Reads frames until the terminal output contains `needle` (or a text frame with it).
async fn expect_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    needle: &str,
) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = String::new();
    let wait = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Message::Text(t) => seen.push_str(t.as_str()),
                Message::Close(_) => seen.push_str("<closed>"),
                _ => {}
            }
            if seen.contains(needle) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    assert!(seen.contains(needle), "waited for {needle:?}, saw {seen:?}");
    seen
}

#[test]
fn a_shared_terminal_lets_guests_watch_or_type_until_revoked() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    if !can_run("a_shared_terminal_lets_guests_watch_or_type_until_revoked") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--name", "pair"]);
    let pid = d
        .ok(&[
            "exec",
            "-d",
            "-t",
            &id,
            "--",
            "sh",
            "-c",
            "while read l; do echo got:$l; done",
        ])
        .trim()
        .to_string();
    let rw = d.ok(&["share", "--write", &id, &pid]).trim().to_string();
    let ro = d.ok(&["share", &id, &pid]).trim().to_string();
    assert!(rw.starts_with("wsh_") && ro.starts_with("wsh_") && rw != ro);
    // A process without a terminal cannot be shared.
    let plain = d
        .ok(&["exec", "-d", &id, "--", "sleep", "30"])
        .trim()
        .to_string();
    let o = d.run(&["share", &id, &plain]);
    assert!(
        !o.status.success() && stderr(&o).contains("no terminal"),
        "{}",
        stderr(&o)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut writer = join(&d.socket(), &rw).await.unwrap();
        writer
            .send(Message::Binary(b"hello\n".to_vec().into()))
            .await
            .unwrap();
        expect_frame(&mut writer, "got:hello").await;

        // The read-only guest sees what was typed, and may not type.
        let mut watcher = join(&d.socket(), &ro).await.unwrap();
        expect_frame(&mut watcher, "got:hello").await;
        watcher
            .send(Message::Binary(b"sneaky\n".to_vec().into()))
            .await
            .unwrap();
        expect_frame(&mut watcher, "read_only").await;
        writer
            .send(Message::Binary(b"again\n".to_vec().into()))
            .await
            .unwrap();
        let seen = expect_frame(&mut watcher, "got:again").await;
        assert!(
            !seen.contains("got:sneaky"),
            "a read-only guest typed: {seen}"
        );

        // Revoking cuts the guest off, and the token no longer opens anything.
        let list = d.ok(&["share", "--list", &id]);
        let share_id = list
            .lines()
            .skip(1)
            .find(|l| l.contains("write"))
            .and_then(|l| l.split_whitespace().next())
            .expect("the read-write share is listed")
            .to_string();
        d.ok(&["share", "--revoke", &share_id, &id]);
        expect_frame(&mut writer, "share_revoked").await;
        assert!(
            join(&d.socket(), &rw).await.is_err(),
            "a revoked token still joins"
        );
        assert!(join(&d.socket(), "wsh_forged").await.is_err());
    });
    d.finish();
}
