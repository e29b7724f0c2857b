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
mod trust;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{can_run, stderr, stdout};
use trust::{loops_under, my_turn, Daemon};
use warren_testkit::eventually;

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

    let logs = d.ok(&["events", "lab"]);
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
        d.ok(&["gc", "--idle-minutes", "0", "--dry-run", "-q"])
            .trim(),
        ids[0]
    );
    // Without -q, what would go and why.
    let o = d.run(&["gc", "--idle-minutes", "0", "--dry-run"]);
    let table = stdout(&o);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("ID ") && rows[0].ends_with("REASON"),
        "{table}"
    );
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[1].starts_with(&format!("{} ", ids[0])), "{table}");
    assert!(
        rows[1].contains(" x ") && rows[1].contains("running"),
        "{table}"
    );
    assert!(
        rows[1].contains("idle ") && rows[1].contains("past --idle-minutes 0"),
        "{table}"
    );
    assert!(
        stderr(&o).contains("1 sandbox(es) would be removed"),
        "{}",
        stderr(&o)
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
        vec!["events", theirs],
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

/// The last tick of the loop `sandboxes_outlive_their_daemon` leaves running.
fn tick(d: &Daemon, id: &str) -> String {
    d.ok(&["exec", id, "--", "cat", "/tmp/tick"])
}

/// Waits (up to 10 s) until the sandbox's ticking loop has moved past `last`.
fn ticks_past(d: &Daemon, id: &str, last: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = tick(d, id);
        if now != last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the background loop stopped at {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon killed with SIGKILL, or shut down with SIGTERM, leaves its sandboxes
/// running, and the next one adopts them. This is also how a host is upgraded: the new
/// binary is the next daemon (README, "Upgrades").
#[test]
fn sandboxes_outlive_their_daemon_and_the_next_one_adopts_them() {
    if !can_run("sandboxes_outlive_their_daemon_and_the_next_one_adopts_them") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    // The run directories are on a tmpfs of the daemon's when the test's are on a disk.
    let on_disk = !on_tmpfs(&d.run_dir());
    assert_eq!(run_tmpfs(&d), on_disk);
    let id = d.create(&["--name", "survivor"]);
    let id = id.as_str();
    d.ok(&["exec", id, "--", "sh", "-c", "echo before > /tmp/mark"]);
    let pid = d
        .ok(&[
            "exec",
            "-d",
            id,
            "--",
            "sh",
            "-c",
            "n=0; while :; do n=$((n+1)); echo $n > /tmp/tick; sleep 0.1; done",
        ])
        .trim()
        .to_string();
    let mut last = ticks_past(&d, id, "");
    let running = |d: &Daemon| {
        d.ok(&["ps", id, "--format", "{{.pid}} {{.exit}}"])
            .lines()
            .any(|l| l.trim() == pid)
    };
    assert!(running(&d), "{}", d.ok(&["ps", id]));

    for (how, stop) in [
        ("SIGKILL", Daemon::crash as fn(&mut Daemon)),
        ("SIGTERM", Daemon::shut_down),
    ] {
        stop(&mut d);
        // A sandbox lives in it: it stays for the next daemon.
        assert_eq!(run_tmpfs(&d), on_disk, "after {how}");
        let o = d.run(&["ls"]);
        assert_eq!(code(&o), Some(125), "no daemon: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is `warren serve` running?"),
            "{}",
            stderr(&o)
        );

        d.spawn();
        assert_eq!(
            d.ok(&["ls", "-q", "--state", "running"]).trim(),
            id,
            "after {how}"
        );
        assert_eq!(
            d.ok(&["exec", "survivor", "--", "cat", "/tmp/mark"]),
            "before\n",
            "after {how}"
        );
        // The process started before runs on, and is still the sandbox's.
        last = ticks_past(&d, id, &last);
        assert!(running(&d), "after {how}: {}", d.ok(&["ps", id]));
    }
    let logs = d.ok(&["events", id]);
    let adoptions = logs
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("adopted"))
        .count();
    assert_eq!(adoptions, 2, "{logs}");
    let run = d.run_dir();
    d.finish();
    // The last daemon, stopping with no sandbox left, took it down.
    assert!(
        !mounted_at(&run.join("sandboxes")),
        "the run tmpfs outlived the daemon"
    );
}

#[test]
fn a_second_daemon_on_the_same_directories_leaves_the_first_ones_run_tmpfs() {
    if !can_run("a_second_daemon_on_the_same_directories_leaves_the_first_ones_run_tmpfs") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let on_disk = !on_tmpfs(&d.run_dir());
    assert_eq!(run_tmpfs(&d), on_disk);
    let o = d.serve_command().output().expect("run warren serve");
    assert!(
        !o.status.success(),
        "a second daemon served: {}",
        stderr(&o)
    );
    // The first one's is still mounted, and its sandboxes are made in it.
    assert_eq!(run_tmpfs(&d), on_disk, "{}", stderr(&o));
    let id = d.create(&[]);
    assert_eq!(d.exec(&id, "echo up"), (0, "up\n".into()));
    d.finish();
}

fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).unwrap().filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
}

/// The daemon's tmpfs is mounted on its sandboxes' run directories.
fn run_tmpfs(d: &Daemon) -> bool {
    let dir = d.run_dir().join("sandboxes");
    mounted_at(&dir) && on_tmpfs(&dir)
}

fn mounted_at(dir: &Path) -> bool {
    let at = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(at.as_str()))
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

        // `warren join` tells a guest which kind of share it is, and Ctrl-P Ctrl-Q
        // leaves it (the process goes on); nothing typed before the keys reaches a
        // read-only share's process.
        let mut guest = d
            .warren(&["join", &ro])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut keys = guest.stdin.take().unwrap();
        keys.write_all(b"typed-by-the-guest\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        keys.write_all(&[0x10, 0x11]).unwrap();
        let left = guest.wait_with_output().unwrap();
        drop(keys);
        let said = String::from_utf8_lossy(&left.stderr);
        assert_eq!(left.status.code(), Some(0), "{said}");
        assert!(said.contains("read-only"), "{said}");
        assert!(said.contains("detached"), "{said}");
        writer
            .send(Message::Binary(b"still-here\n".to_vec().into()))
            .await
            .unwrap();
        let seen = expect_frame(&mut writer, "got:still-here").await;
        assert!(!seen.contains("typed-by-the-guest"), "{seen}");

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

#[test]
fn a_share_shows_only_what_follows_it_and_ends_with_its_process() {
    if !can_run("a_share_shows_only_what_follows_it_and_ends_with_its_process") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--name", "later"]);
    // The owner's terminal shows a secret before anything is shared.
    let pid = d
        .ok(&[
            "exec",
            "-d",
            "-t",
            &id,
            "--",
            "sh",
            "-c",
            "echo owner-only-secret; sleep 1; while :; do echo tick; sleep 0.2; done",
        ])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let token = d.ok(&["share", &id, &pid]).trim().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut guest = join(&d.socket(), &token).await.unwrap();
        let seen = expect_frame(&mut guest, "tick\r\ntick").await;
        assert!(
            !seen.contains("owner-only-secret"),
            "a guest saw what the terminal showed before the share: {seen:?}"
        );
        // The process ends: the guest is told, and the token opens nothing more, not
        // even a later process that happens to get the same pid.
        d.ok(&["exec", &id, "--", "kill", "-9", &pid]);
        expect_frame(&mut guest, "exit").await;
        for _ in 0..50 {
            if join(&d.socket(), &token).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            join(&d.socket(), &token).await.is_err(),
            "a share outlived its process"
        );
    });
    let list = d.ok(&["share", "--list", &id]);
    assert_eq!(list.lines().skip(1).count(), 0, "{list}");
    d.finish();
}

/// The README's walkthrough as written: a bare name finds the one sandbox of the tenant
/// that has it, whoever its owner; two of one name are named back; errors say what is
/// missing in its own words.
#[test]
fn the_readmes_walkthrough_and_its_errors_read_right() {
    if !can_run("the_readmes_walkthrough_and_its_errors_read_right") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(true);
    let alice = d.create(&["--owner", "alice", "--name", "lab", "--memory", "256M"]);
    assert_eq!(d.ok(&["exec", "lab", "--", "echo", "hi"]), "hi\n");
    assert!(d.ok(&["inspect", "lab"]).contains(&alice));
    // The tenant's own sandbox of a name comes first; then only a unique one resolves.
    let bob = d.create(&["--owner", "bob", "--name", "lab"]);
    let o = d.run(&["exec", "lab", "--", "true"]);
    assert_ne!(code(&o), Some(0));
    let e = stderr(&o);
    assert!(
        e.contains("alice/lab") && e.contains("bob/lab"),
        "an ambiguous name lists the candidates: {e}"
    );
    assert_eq!(d.ok(&["exec", "bob/lab", "--", "echo", "bob"]), "bob\n");
    let o = d.run(&["exec", "nosuch", "--", "true"]);
    assert!(stderr(&o).contains("warren ls"), "{}", stderr(&o));
    // A missing process is not a missing sandbox.
    let o = d.run(&["share", "alice/lab", "99999"]);
    let e = stderr(&o);
    assert!(e.contains("no running process 99999"), "{e}");
    assert!(!e.contains("no sandbox"), "{e}");
    // A taken name says how to get the existing one.
    let o = d.run(&["create", "--owner", "alice", "--name", "lab"]);
    assert!(stderr(&o).contains("--get-or-create"), "{}", stderr(&o));
    // A unix-only route over TCP says so.
    let r = d.as_tenant(&d.api_key(), "POST", "/v1/templates/import", "{}");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("unix socket only"), "{}", r.text());
    d.ok(&["rm", &alice, &bob]);
    d.finish();
}

/// `warren serve --listen` on a TCP port another program holds fails naming that
/// address (not the unix socket), and leaves no socket file behind; the next start works.
#[test]
fn serve_on_a_taken_port_names_it_and_leaves_no_socket() {
    if !can_run("serve_on_a_taken_port_names_it_and_leaves_no_socket") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    d.shut_down();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let o = d
        .serve_command()
        .args(["--listen", &addr])
        .output()
        .expect("run warren serve");
    let err = stderr(&o);
    assert!(!o.status.success(), "served on a taken port: {err}");
    assert!(err.contains(&addr), "the taken address is not named: {err}");
    let socket = d.socket();
    assert!(
        !err.contains(&socket.display().to_string()),
        "the unix socket is named as the failing address: {err}"
    );
    assert!(
        !socket.exists(),
        "a socket file was left at {}",
        socket.display()
    );
    drop(holder);
    d.spawn();
    d.finish();
}

/// The shell lines of README.md's section `heading`'s first `sh` block, each without its
/// comment.
fn readme_lines(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"))
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, b)| b.split_once("```"))
        .expect("a sh block")
        .0;
    block
        .lines()
        .map(|l| {
            l.split_once("  #")
                .map_or(l, |(cmd, _)| cmd)
                .trim_end()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// The README's walkthrough of the daemon, its lines run as written (a line naming a
/// placeholder such as `PID`, listing alternatives with ` / `, or starting another
/// daemon is left out, and the test says which it runs), in a shell whose `warren` is
/// this build talking to a daemon of the test's own: so the README cannot drift from
/// what works.
#[test]
fn the_readmes_daemon_walkthrough_runs_as_written() {
    if !can_run("the_readmes_daemon_walkthrough_runs_as_written") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let lines = readme_lines("### The daemon");
    let runs = [
        "warren create --owner alice --name lab --memory 1G --timeout 1h --idle-timeout 15m",
        "warren exec lab -- python3 -c 'print(\"hi from lab\")'",
        "warren events lab",
        "warren create --name web -p 8080; warren port web",
        "warren cp ./src lab:/work; warren cp lab:/work/out ./out",
        "warren snapshot lab --name lab-v2",
        "warren gc --idle-minutes 60 --dry-run",
        "warren keys create --tenant acme",
        "warren keys ls",
    ];
    // `warren` on the PATH is this build; the working directory has the `src` that `cp`
    // sends.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_warren"), bin.path().join("warren")).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cwd.path().join("src")).unwrap();
    std::fs::write(cwd.path().join("src/out"), "made on the host\n").unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut outputs = Vec::new();
    for line in runs {
        assert!(
            lines.iter().any(|l| l == line),
            "README.md's daemon walkthrough no longer has `{line}`; it has:\n{}",
            lines.join("\n")
        );
        let mut c = Command::new("sh");
        d.env(&mut c);
        let o = c
            .args(["-ec", line])
            .env("PATH", &path)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "`{line}` failed: {}", stderr(&o));
        outputs.push(stdout(&o));
    }
    assert_eq!(outputs[1], "hi from lab\n");
    assert!(outputs[2].contains("created"), "{}", outputs[2]);
    assert!(
        outputs[3].contains("8080/tcp -> 127.0.0.1:"),
        "{}",
        outputs[3]
    );
    assert_eq!(
        std::fs::read_to_string(cwd.path().join("out")).unwrap(),
        "made on the host\n"
    );
    assert!(outputs[7].trim().len() > 16, "{}", outputs[7]);
    // The snapshot is a template of its own; then everything goes.
    assert!(d.ok(&["template", "ls"]).contains("lab-v2"));
    d.ok(&["rm", "lab", "web"]);
    d.ok(&["template", "rm", "lab-v2"]);
    d.finish();
}

#[test]
fn cp_copies_files_and_trees_both_ways() {
    if !can_run("cp_copies_files_and_trees_both_ways") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    d.create(&["--owner", "alice", "--name", "lab", "--no-home"]);
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    std::fs::write(src.join("a/b/big.bin"), &big).unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();

    // A tree into an existing directory lands inside it under its own name; the symlink
    // is named as skipped (exit 1), the rest is there.
    let o = d.run(&["cp", src.to_str().unwrap(), "alice/lab:/tmp"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("link"), "{}", stderr(&o));
    let (_, out) = d.exec(
        "alice%2Flab",
        "/tmp/src/run.sh; stat -c %a /tmp/src/run.sh; sha256sum < /tmp/src/a/b/big.bin",
    );
    let sum = Command::new("sha256sum")
        .arg(src.join("a/b/big.bin"))
        .output()
        .unwrap();
    let sum = stdout(&sum).split_whitespace().next().unwrap().to_string();
    assert!(out.starts_with("ran\n750\n"), "{out}");
    assert!(out.contains(&sum), "{out}");

    // A single file to a new name, and back to the host, into a directory and to a name.
    d.ok(&[
        "cp",
        src.join("run.sh").to_str().unwrap(),
        "lab:/tmp/renamed.sh",
    ]);
    let (_, out) = d.exec("alice%2Flab", "cat /tmp/renamed.sh");
    assert_eq!(out, "#!/bin/sh\necho ran\n");
    let back = host.path().join("back");
    std::fs::create_dir(&back).unwrap();
    d.ok(&["cp", "lab:/tmp/src", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("src/a/b/big.bin")).unwrap(), big);
    let mode = std::fs::metadata(back.join("src/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    d.ok(&[
        "cp",
        "lab:/tmp/renamed.sh",
        back.join("one.sh").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(back.join("one.sh")).unwrap(),
        "#!/bin/sh\necho ran\n"
    );
    // A link the sandbox planted comes out as a link, and nothing is written through it.
    d.exec(
        "alice%2Flab",
        "mkdir -p /tmp/t && ln -s /etc /tmp/t/etc && echo x > /tmp/t/f",
    );
    let out_dir = host.path().join("t-out");
    d.ok(&["cp", "lab:/tmp/t", out_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_link(out_dir.join("etc")).unwrap(),
        Path::new("/etc")
    );
    // Errors name what is wrong.
    let o = d.run(&["cp", "lab:/nonexistent", back.to_str().unwrap()]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
    let o = d.run(&["cp", "/tmp", "/var"]);
    assert_eq!(code(&o), Some(2));
    assert!(
        stderr(&o).contains("one side must be in a sandbox"),
        "{}",
        stderr(&o)
    );
    d.finish();
}

/// The ids `warren keys ls -q` prints.
fn key_ids(o: &Output) -> Vec<String> {
    assert!(o.status.success(), "{}", stderr(o));
    stdout(o).lines().map(str::to_string).collect()
}

#[test]
fn keys_are_listed_without_their_secret_and_revoked_at_once() {
    if !can_run("keys_are_listed_without_their_secret_and_revoked_at_once") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(true);
    let kept = d
        .ok(&["keys", "create", "--tenant", "b"])
        .trim()
        .to_string();
    let first = key_ids(&d.tcp(Some(&kept), &["keys", "ls", "-q"]));
    assert_eq!(first.len(), 1, "{first:?}");
    let doomed = d
        .ok(&["keys", "create", "--tenant", "b"])
        .trim()
        .to_string();
    let other = d
        .ok(&["keys", "create", "--tenant", "c"])
        .trim()
        .to_string();
    let both = key_ids(&d.tcp(Some(&kept), &["keys", "ls", "-q"]));
    assert_eq!(both.len(), 2, "{both:?}");
    let doomed_id = both.iter().find(|id| **id != first[0]).unwrap().clone();

    // The listing, as JSON and as a table, never holds a key.
    let o = d.tcp(Some(&kept), &["keys", "ls", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for k in listed.as_array().unwrap() {
        assert_eq!(k["tenant"], "b", "{listed}");
    }
    let table = stdout(&d.tcp(Some(&kept), &["keys", "ls"]));
    assert!(table.starts_with("ID"), "{table}");
    for text in [stdout(&o), table, d.ok(&["keys", "ls", "--json"])] {
        for key in [&kept, &doomed, &other] {
            assert!(!text.contains(&key[4..]), "a listing shows a key: {text}");
        }
    }
    // The unix socket sees every tenant's (the default tenant's key too), or one's.
    assert!(d.ok(&["keys", "ls", "-q"]).lines().count() >= 4);
    assert_eq!(
        d.ok(&["keys", "ls", "-q", "--tenant", "b"]).lines().count(),
        2
    );

    // Another tenant can neither list nor revoke them, and learns nothing: not found.
    let r = d.as_tenant(&other, "GET", "/v1/keys?tenant=b", "");
    assert_eq!(
        (r.status, r.code()),
        (404, "not_found".into()),
        "{}",
        r.text()
    );
    let o = d.tcp(Some(&other), &["keys", "revoke", &doomed_id]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));
    assert_eq!(d.as_tenant(&doomed, "GET", "/v1/sandboxes", "").status, 200);

    // Revoked by its tenant, the key is refused from the next request on; the other works.
    let o = d.tcp(Some(&kept), &["keys", "revoke", &doomed_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), doomed_id);
    let r = d.as_tenant(&doomed, "GET", "/v1/sandboxes", "");
    assert_eq!(
        (r.status, r.code()),
        (401, "unauthorized".into()),
        "{}",
        r.text()
    );
    let o = d.tcp(Some(&doomed), &["keys", "ls"]);
    assert!(stderr(&o).contains("(unauthorized)"), "{}", stderr(&o));
    assert_eq!(d.as_tenant(&kept, "GET", "/v1/sandboxes", "").status, 200);
    assert_eq!(key_ids(&d.tcp(Some(&kept), &["keys", "ls", "-q"])), first);

    // Again: it is gone, and the message says where ids are listed.
    let o = d.tcp(Some(&kept), &["keys", "revoke", &doomed_id]);
    assert_eq!(code(&o), Some(1));
    assert!(
        stderr(&o).contains("(not_found)") && stderr(&o).contains("warren keys ls"),
        "{}",
        stderr(&o)
    );
    d.finish();
}

#[test]
fn a_tenant_is_removed_with_what_it_holds_and_its_snapshots_kept_if_asked() {
    if !can_run("a_tenant_is_removed_with_what_it_holds_and_its_snapshots_kept_if_asked") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(true);
    let key = d
        .ok(&["keys", "create", "--tenant", "acme"])
        .trim()
        .to_string();
    // What it holds: a running sandbox with its owner's home volume, a stopped one, a
    // snapshot; another tenant has a sandbox of its own.
    let a1 = d.create_as(&key, r#"{"owner":"alice","name":"a1"}"#);
    let a2 = d.create_as(&key, r#"{"owner":"alice","name":"a2"}"#);
    let o = d.tcp(Some(&key), &["stop", &a2]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.tcp(Some(&key), &["snapshot", &a1, "--name", "snap1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b1 = d.create(&["--tenant", "other", "--owner", "bob", "--name", "b1"]);

    let listed: serde_json::Value =
        serde_json::from_str(&d.ok(&["tenants", "ls", "--json"])).unwrap();
    let acme = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        (
            &acme["keys"],
            &acme["sandboxes"],
            &acme["volumes"],
            &acme["snapshots"]
        ),
        (&1.into(), &2.into(), &1.into(), &1.into()),
        "{listed}"
    );
    assert!(d.ok(&["tenants", "ls"]).starts_with("NAME"));
    // Over TCP, no key reaches them, the tenant's own neither.
    let o = d.tcp(Some(&key), &["tenants", "ls"]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("unix socket only"), "{}", stderr(&o));
    let o = d.tcp(Some(&key), &["tenants", "rm", "acme"]);
    assert_eq!(code(&o), Some(1));
    assert_eq!(d.ok(&["--tenant", "acme", "ls", "-q"]).lines().count(), 2);

    // Removed, snapshots kept: the key is refused, the sandboxes and volume gone.
    let out = d.ok(&["tenants", "rm", "acme", "--keep-snapshots"]);
    assert_eq!(
        out,
        "acme: removed 1 API key(s), 2 sandbox(es), 1 volume(s), 0 template(s), 0 \
         snapshot(s)\n  kept snapshots: snap1\n"
    );
    let r = d.as_tenant(&key, "GET", "/v1/sandboxes", "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(d.ok(&["--tenant", "acme", "ls", "-q"]), "");
    assert_eq!(d.ok(&["--tenant", "acme", "volume", "ls", "-q"]), "");
    assert!(d
        .ok(&["--tenant", "acme", "template", "ls"])
        .contains("snap1"));
    assert_eq!(
        d.ok(&["--tenant", "other", "ls", "-q"]).trim(),
        b1,
        "another tenant's sandbox"
    );

    // Again, without keeping them: the snapshot goes; a third time, nothing is left.
    let out = d.ok(&["tenants", "rm", "acme"]);
    assert!(out.contains("1 snapshot(s)"), "{out}");
    assert!(!d
        .ok(&["--tenant", "acme", "template", "ls"])
        .contains("snap1"));
    let o = d.run(&["tenants", "rm", "acme"]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("no tenant \"acme\""), "{}", stderr(&o));
    d.ok(&["--tenant", "other", "rm", &b1]);
    d.finish();
}

#[test]
fn a_templates_user_runs_its_processes_and_owns_what_is_copied_in() {
    if !can_run("a_templates_user_runs_its_processes_and_owns_what_is_copied_in") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    d.ok(&[
        "template",
        "build",
        "--name",
        "dev",
        "--run",
        "useradd -m -u 1234 -s /bin/sh alice",
        "--user",
        "alice",
        "--quiet-progress",
    ]);
    let id = d.create(&["--template", "dev", "--no-home"]);
    let (rc, out) = d.exec(&id, "id -un; pwd; echo $HOME $USER $LOGNAME");
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out, "alice\n/home/alice\n/home/alice alice alice\n");

    // What a client copies in is the user's, to change from inside; root's only when
    // asked for.
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("notes.txt");
    std::fs::write(&file, "from the host\n").unwrap();
    let file = file.to_str().unwrap();
    d.ok(&["cp", file, &format!("{id}:/home/alice/notes.txt")]);
    let (rc, out) = d.exec(
        &id,
        "stat -c %U notes.txt && echo more >> notes.txt && cat notes.txt",
    );
    assert_eq!(
        (rc, out.as_str()),
        (0, "alice\nfrom the host\nmore\n"),
        "{out}"
    );
    let o = d.run(&["cp", file, &format!("{id}:/etc/notes.txt")]);
    assert_eq!(code(&o), Some(1), "alice wrote in /etc: {}", stderr(&o));
    d.ok(&[
        "cp",
        "--user",
        "root",
        file,
        &format!("{id}:/etc/notes.txt"),
    ]);
    let (_, out) = d.exec(&id, "stat -c %U /etc/notes.txt");
    assert_eq!(out, "root\n");
    // The API's file calls take the same `user`.
    let r = d.http(
        trust::Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{id}/files/stat?path=/etc/notes.txt&user=nobody-here"),
        &[],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    d.ok(&["rm", &id]);
    d.ok(&["template", "rm", "dev"]);
    d.finish();
}

/// A stream's output and how it ended, read from NDJSON lines or binary frames.
#[derive(Debug, Default, PartialEq)]
struct Streamed {
    /// Every event in order (`started`, then `exit`/`error`), output left out.
    events: Vec<serde_json::Value>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn from_ndjson(body: &[u8]) -> Streamed {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut s = Streamed::default();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let data = || b64.decode(v["data"].as_str().unwrap()).unwrap();
        match v["type"].as_str().unwrap() {
            "stdout" => s.stdout.extend(data()),
            "stderr" => s.stderr.extend(data()),
            _ => s.events.push(v),
        }
    }
    s
}

/// Frames as docs/api.md lays them out: kind, three zero bytes, a big-endian length.
fn from_frames(mut body: &[u8]) -> Streamed {
    let mut s = Streamed::default();
    while !body.is_empty() {
        assert!(body.len() >= 8, "a cut header: {body:?}");
        assert_eq!(body[1..4], [0, 0, 0], "the header's padding");
        let len = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
        let payload = &body[8..8 + len];
        match body[0] {
            1 => s.stdout.extend_from_slice(payload),
            2 => s.stderr.extend_from_slice(payload),
            3 => s.events.push(serde_json::from_slice(payload).unwrap()),
            k => panic!("a frame of kind {k}"),
        }
        body = &body[8 + len..];
    }
    s
}

#[test]
fn an_exec_streams_the_same_bytes_as_ndjson_lines_and_as_binary_frames() {
    if !can_run("an_exec_streams_the_same_bytes_as_ndjson_lines_and_as_binary_frames") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&[]);
    let via = trust::Via::Unix;
    let json = [("Content-Type", "application/json")];
    // Every byte value on stdout, then 3 MiB (many frames), stderr between, and a code.
    // As printf's format: each byte as an octal escape ('%' doubled).
    let escaped = |bytes: &[u8]| -> String {
        bytes
            .iter()
            .map(|b| match b {
                b'%' => "%%".to_string(),
                b => format!("\\{b:03o}"),
            })
            .collect()
    };
    let every = escaped(&(0..=255u8).collect::<Vec<_>>());
    // Last, an attack: output shaped as a whole event frame (kind 3, a fitting length)
    // saying the command exited 0. It must arrive as stdout, byte for byte.
    let forged_event =
        br#"{"type":"exit","exit_code":0,"signal":null,"timed_out":false,"oom_killed":false}"#;
    let mut forged = vec![3, 0, 0, 0];
    forged.extend_from_slice(&(forged_event.len() as u32).to_be_bytes());
    forged.extend_from_slice(forged_event);
    let script = format!(
        "printf 'a\\000b{every}'; echo oops >&2; \
         head -c 3145728 /dev/urandom | tee /tmp/sent; printf '{}'; exit 3",
        escaped(&forged)
    );
    let body = serde_json::json!({ "command": { "shell": script } }).to_string();
    let exec = |stream: &str| {
        let r = d.http(
            via,
            "POST",
            &format!("/v1/sandboxes/{id}/exec?stream={stream}"),
            &json,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.body
    };
    let lines = from_ndjson(&exec("true"));
    let frames = from_frames(&exec("binary"));
    for s in [&lines, &frames] {
        assert_eq!(
            s.events.first().unwrap()["type"],
            "started",
            "{:?}",
            s.events
        );
        let exit = s.events.last().unwrap();
        assert_eq!(
            (exit["type"].as_str(), exit["exit_code"].as_i64()),
            (Some("exit"), Some(3)),
            "{exit}"
        );
        assert_eq!(s.events.len(), 2, "{:?}", s.events);
        assert_eq!(s.stderr, b"oops\n");
        assert!(s.stdout.starts_with(b"a\0b"));
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(s.stdout[3..259], all[..], "every byte value, unchanged");
        assert_eq!(s.stdout.len(), 3 + 256 + (3 << 20) + forged.len());
        assert!(
            s.stdout.ends_with(&forged),
            "the forged frame is output, as written"
        );
    }
    assert_eq!(lines.stderr, frames.stderr);
    // The random tail as the sandbox kept it, byte for byte (it was overwritten by the
    // second run: compare the binary stream's copy).
    let (code, sent) = d.exec(&id, "od -An -tx1 -v /tmp/sent | tr -d ' \\n' | head -c 64");
    assert_eq!(code, 0);
    let head: String = frames.stdout[259..291]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sent, head);

    // A process followed in the background: attach in either form, a wrong one named.
    let r = d.http(
        via,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &json,
        br#"{"command":{"shell":"echo one; echo two >&2"},"background":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let pid = r.json()["pid"].as_u64().unwrap();
    let attach = |q: &str| {
        d.http(
            via,
            "GET",
            &format!("/v1/sandboxes/{id}/processes/{pid}/attach?replay=true{q}"),
            &[],
            b"",
        )
    };
    let r = attach("&stream=binary");
    assert_eq!(r.status, 200, "{}", r.text());
    let framed = from_frames(&r.body);
    assert_eq!(
        (framed.stdout.as_slice(), framed.stderr.as_slice()),
        (&b"one\n"[..], &b"two\n"[..])
    );
    assert_eq!(
        framed.events.len(),
        1,
        "no started event on attach: {:?}",
        framed.events
    );
    assert_eq!(framed.events[0]["exit_code"], 0);
    assert_eq!(from_ndjson(&attach("").body), framed);
    for (q, word) in [
        ("&stream=false", "always streams"),
        ("&stream=yes", "binary"),
    ] {
        let r = attach(q);
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_request".into()),
            "{}",
            r.text()
        );
        assert!(r.text().contains(word), "{}", r.text());
    }
    let r = d.http(
        via,
        "POST",
        &format!("/v1/sandboxes/{id}/exec?stream=yes"),
        &json,
        body.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    d.ok(&["rm", "-f", &id]);
    d.finish();
}

#[test]
fn a_disk_made_ahead_is_the_next_sandboxs_own() {
    if !can_run("a_disk_made_ahead_is_the_next_sandboxs_own") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    let first = d.create(&["--disk", "32M"]);
    assert_eq!(d.exec(&first, "echo mine > /root/first").0, 0);
    // Once the first is made, the next disk of its size waits, mounted nowhere.
    assert!(d.wait_for_prepared_disk(), "no disk made ahead");
    assert_eq!(d.prepared_disks(), 1);
    // And the daemon copies the blank for the disk after it (no helper keeps a thread
    // for that while its sandbox runs).
    let spare = d.data_dir().join(".blank-disks").join(format!(
        "{}-{}-disk.spare",
        32 << 20,
        warren_runtime::HOST_ID_BASE
    ));
    assert!(eventually(10, || spare.is_file()), "no spare disk");
    let second = d.create(&["--disk", "32M"]);
    let image = d
        .data_dir()
        .join("sandboxes")
        .join(&second)
        .join("disk.img");
    assert!(
        image.is_file(),
        "the disk is not in the sandbox's data directory"
    );
    // Its own, empty, of its size, and full at its size.
    let (code, out) = d.exec(
        &second,
        "ls /root; df -m / | awk 'NR==2 {print $2}'; \
         { head -c 40M /dev/zero > /root/big; } 2>&1 | grep -c 'No space'; rm -f /root/big; \
         echo kept > /root/second",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let size: u64 = lines
        .first()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!((24..=32).contains(&size), "df says {size} MiB: {out}");
    assert_eq!(lines.get(1), Some(&"1"), "40M fit on a 32M disk: {out}");
    // Its files stay on it through a stop and a start (the image, not the mount made
    // ahead, is the sandbox's).
    d.ok(&["stop", &second]);
    d.ok(&["start", &second]);
    assert_eq!(d.exec(&second, "cat /root/second"), (0, "kept\n".into()));
    assert_eq!(d.exec(&first, "cat /root/first"), (0, "mine\n".into()));
    let data = d.data_dir();
    // A running sandbox's device caches its writes and takes flushes (an fsync inside
    // reaches the host's disk). A removal's unmount skips them, its image being removed
    // next, and leaves the device caching again for whatever file it is given next.
    let devices: Vec<String> = loops_under(&data)
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .map(|dev| dev.trim_start_matches("/dev/").to_string())
        .collect();
    assert!(
        devices.len() >= 2,
        "no device for the two disks: {devices:?}"
    );
    let cache = |dev: &str| {
        std::fs::read_to_string(format!("/sys/block/{dev}/queue/write_cache"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let prefetch = |dev: &str| {
        std::fs::read_to_string(format!("/sys/fs/ext4/{dev}/mb_prefetch"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    for dev in &devices {
        assert_eq!(cache(dev), "write back", "{dev} of a running sandbox");
        // Its filesystem allocates from the group it asks first, reading no other
        // group's bitmap ahead.
        assert_eq!(prefetch(dev), "0", "{dev} of a running sandbox");
    }
    d.remove_all();
    d.shut_down();
    for dev in &devices {
        assert_eq!(cache(dev), "write back", "{dev} after its sandbox");
    }
    // The daemon that stopped left no disk made ahead, and no loop device.
    assert_eq!(d.prepared_disks(), 0);
    assert!(loops_under(&data).is_empty(), "{:?}", loops_under(&data));
    d.finish();
}

/// Creates that follow one another at once, a removal between (a client that makes and
/// removes sandboxes in a loop), each take a disk made ahead: the next is begun as one is
/// taken, and a create that comes while it is being made waits for it rather than make
/// its own (before, every other create of such a loop made its own, 1.5-3 ms more).
#[test]
fn creates_back_to_back_each_take_a_disk_made_ahead() {
    if !can_run("creates_back_to_back_each_take_a_disk_made_ahead") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start_opts(trust::Options {
        tcp: true,
        inherit: Some("export WARREN_TRACE=1".into()),
        ..Default::default()
    });
    let key = d.api_key();
    let make = || d.create_as(&key, "{}");
    let remove = |id: &str| {
        let r = d.as_tenant(&key, "DELETE", &format!("/v1/sandboxes/{id}"), "");
        assert_eq!(r.status, 204, "{}", r.text());
    };
    // The first of its size makes the blank the others are copies of.
    let first = make();
    remove(&first);
    assert!(d.wait_for_prepared_disk(), "no disk made ahead");
    for _ in 0..12 {
        let id = make();
        remove(&id);
    }
    let log = d.log();
    let taken = log.matches("daemon: disk made ahead taken").count();
    let made_here = log.matches("daemon: no disk made ahead").count();
    assert_eq!((taken, made_here), (12, 1), "{log}");
    d.finish();
}

/// The daemon keeps one connection to a sandbox's agent for every caller: a caller that
/// hangs up mid-command still ends its own command (and only that), callers at once each
/// get their own answers, and the sandbox serves the next call.
#[test]
fn a_caller_that_hangs_up_ends_its_own_command_and_callers_at_once_get_their_own_answers() {
    use std::io::{BufRead, BufReader};
    if !can_run(
        "a_caller_that_hangs_up_ends_its_own_command_and_callers_at_once_get_their_own_answers",
    ) {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&[]);
    // Another command, in a session of its own, that no caller follows.
    let (code, _) = d.exec(
        &id,
        "setsid sleep 1000 >/dev/null 2>&1 & echo $! > /tmp/other",
    );
    assert_eq!(code, 0);

    // A streamed command whose caller reads its first line, then hangs up.
    let body = serde_json::json!({
        "command": { "shell": "echo $$ > /tmp/followed; echo started; exec sleep 1000" }
    })
    .to_string();
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/sandboxes/{id}/exec?stream=true HTTP/1.1\r\nHost: warren\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.exec(&id, "cat /tmp/followed 2>/dev/null").1.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(r);

    let alive = |file: &str| {
        let (_, out) = d.exec(
            &id,
            &format!("kill -0 $(cat {file}) 2>/dev/null && echo alive"),
        );
        out.trim() == "alive"
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive("/tmp/followed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived the caller that hung up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(alive("/tmp/other"), "a command nobody followed died too");

    // Eight callers at once, ten commands each: every answer is its own caller's.
    std::thread::scope(|scope| {
        for caller in 0..8 {
            let (d, id) = (&d, &id);
            scope.spawn(move || {
                for n in 0..10 {
                    let said = format!("caller {caller} command {n}");
                    let (code, out) = d.exec(id, &format!("echo '{said}'"));
                    assert_eq!((code, out.trim()), (0, said.as_str()));
                }
            });
        }
    });
    let (code, _) = d.exec(&id, "kill $(cat /tmp/other)");
    assert_eq!(code, 0);
    d.ok(&["rm", "-f", &id]);
}

/// The cgroups daemon `pid` made ahead (see `warren_runtime::spares`), by name.
fn spare_cgroups(pid: u32) -> Vec<String> {
    let h = warren_sys::cgroup::Hierarchy::detect().unwrap();
    h.list(&format!("warren-spare-{pid}-"))
}

/// What `file` of cgroup `name` holds, in the hierarchy of `ctrl`, if it is there.
fn try_cgroup_file(name: &str, ctrl: &str, file: &str) -> Option<String> {
    let h = warren_sys::cgroup::Hierarchy::detect().ok()?;
    let cg = h.cgroup(name);
    let dir = cg
        .paths()
        .find(|p| p.join(file).exists() && p.to_string_lossy().contains(ctrl))?
        .to_owned();
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    Some(text.trim().to_string())
}

/// [`try_cgroup_file`], which must be there.
fn cgroup_file(name: &str, ctrl: &str, file: &str) -> String {
    try_cgroup_file(name, ctrl, file).unwrap_or_else(|| panic!("no {file} for {name}"))
}

#[test]
fn cgroups_made_ahead_carry_each_creates_limits_and_go_with_their_daemon() {
    let test = "cgroups_made_ahead_carry_each_creates_limits_and_go_with_their_daemon";
    if !can_run(test) {
        return;
    }
    if warren_sys::cgroup::Hierarchy::detect().is_ok_and(|h| h.is_v2()) {
        warren_testkit::skip(
            test,
            "cgroup v2 cannot rename a cgroup: nothing is made ahead",
        );
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    let pid = d.pid().unwrap();
    d.create(&["--no-home"]);
    assert!(
        eventually(10, || spare_cgroups(pid).len() == 2),
        "{:?}",
        spare_cgroups(pid)
    );
    let ready = spare_cgroups(pid);
    // The next create of the same limits is given one, renamed under its own name.
    let second = d.create(&["--no-home"]);
    assert!(
        eventually(10, || {
            let now = spare_cgroups(pid);
            now.len() == 2 && now != ready
        }),
        "{ready:?} -> {:?}",
        spare_cgroups(pid)
    );
    let taken = ready
        .iter()
        .filter(|n| !spare_cgroups(pid).contains(n))
        .count();
    assert_eq!(taken, 1, "one spare taken of {ready:?}");
    let limits = d.info(&second)["resources"].clone();
    assert_eq!(
        cgroup_file(
            &format!("warren-{second}"),
            "memory",
            "memory.limit_in_bytes"
        ),
        limits["memory"].to_string()
    );
    assert_eq!(
        cgroup_file(&format!("warren-{second}"), "pids", "pids.max"),
        limits["pids"].to_string()
    );
    assert_eq!(
        cgroup_file(&format!("warren-{second}"), "cpu", "cpu.cfs_quota_us"),
        (limits["cpu_millis"].as_u64().unwrap() * 100).to_string()
    );
    // Other limits: a cgroup of its own with them; asked for twice running, the spares
    // are made again with them.
    let small = d.create(&["--no-home", "--memory", "64M"]);
    assert_eq!(
        cgroup_file(
            &format!("warren-{small}"),
            "memory",
            "memory.limit_in_bytes"
        ),
        (64u64 << 20).to_string()
    );
    let again = d.create(&["--no-home", "--memory", "64M"]);
    assert_eq!(
        cgroup_file(
            &format!("warren-{again}"),
            "memory",
            "memory.limit_in_bytes"
        ),
        (64u64 << 20).to_string()
    );
    let small_spares = || {
        let spares = spare_cgroups(pid);
        spares.len() == 2
            && spares.iter().all(|s| {
                try_cgroup_file(s, "memory", "memory.limit_in_bytes")
                    == Some((64u64 << 20).to_string())
            })
    };
    assert!(eventually(10, small_spares), "{:?}", spare_cgroups(pid));
    // A running daemon's spares are its own, not leftovers.
    let doctor = stdout(&d.run(&["doctor"]));
    assert!(!doctor.contains("warren-spare-"), "{doctor}");

    // Killed, it leaves them: the doctor names them, the next daemon removes them.
    assert!(eventually(10, || spare_cgroups(pid).len() == 2));
    d.crash();
    let doctor = stdout(&d.run(&["doctor"]));
    assert!(doctor.contains(&format!("warren-spare-{pid}-")), "{doctor}");
    d.spawn();
    assert!(spare_cgroups(pid).is_empty(), "{:?}", spare_cgroups(pid));
    let next = d.pid().unwrap();
    d.create(&["--no-home"]);
    assert!(eventually(10, || spare_cgroups(next).len() == 2));
    // Stopped, it removes its own (`finish` removes the sandboxes first).
    d.finish();
    assert!(spare_cgroups(next).is_empty(), "{:?}", spare_cgroups(next));
}
