//! The verbs a docker or podman user reaches for, run as a user runs them: `warren port`,
//! `logs`, `run -d`, `--format`, `--tenant`, `gc --dry-run`, `volume`, `fork`, `completions`,
//! `template du` and `gc`. Needs root.
//!
//! As in daemon.rs, each test runs a daemon of its own on directories of its own, removes
//! what it made, and ends with `warren doctor` on those directories (the tests take
//! turns: see daemon.rs).

mod common;
mod trust;

use std::io::{Read, Write};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{can_run, stderr, stdout};
use trust::{my_turn, Daemon};

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// An HTTP GET of `/` on 127.0.0.1:`port`, retried while the server inside starts: the
/// answer's status line.
fn http_status(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        });
        match got {
            Ok(a) if a.starts_with("HTTP/") => return a.lines().next().unwrap().to_string(),
            _ if Instant::now() > deadline => panic!("nothing answered on port {port}: {got:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn port_lists_published_ports_and_their_host_addresses() {
    if !can_run("port_lists_published_ports_and_their_host_addresses") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    // `-p PORT` leaves the host port to the daemon: `warren port` is how to learn it.
    // gVisor publishes on `nat` only (its own stack is out of the host's reach).
    let network = if common::isolation() == "gvisor" {
        "nat"
    } else {
        "none"
    };
    d.create(&[
        "--name",
        "web",
        "--no-home",
        "--network",
        network,
        "-p",
        "8080",
        "-p",
        "0:9090",
    ]);
    let all = d.ok(&["port", "web"]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    assert!(lines[0].starts_with("8080/tcp -> 127.0.0.1:"), "{all}");
    assert!(lines[1].starts_with("9090/tcp -> 127.0.0.1:"), "{all}");
    let addr = d.ok(&["port", "web", "8080"]);
    assert_eq!(addr, d.ok(&["port", "web", "8080/tcp"]));
    assert_eq!(
        format!("8080/tcp -> {addr}"),
        format!("{}\n", lines[0]),
        "one port prints its address alone"
    );

    // The address printed reaches the port inside.
    let host_port: u16 = addr.trim().rsplit(':').next().unwrap().parse().unwrap();
    d.ok(&[
        "exec",
        "-d",
        "web",
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "8080",
    ]);
    assert!(
        http_status(host_port).contains(" 200 "),
        "the forwarded port answers"
    );

    // A port it does not publish is not found (1); a UDP port is a usage error (2).
    let o = d.run(&["port", "web", "81"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("publishes no port 81/tcp") && stderr(&o).ends_with("(not_found)\n"),
        "{}",
        stderr(&o)
    );
    let o = d.run(&["port", "web", "53/udp"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("only TCP"), "{}", stderr(&o));
    let o = d.run(&["port", "nosuch"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));

    // A sandbox that publishes nothing lists nothing.
    d.create(&["--name", "quiet", "--no-home"]);
    assert_eq!(d.ok(&["port", "quiet"]), "");
    d.finish();
}

/// Waits until `warren ps SANDBOX` shows `pid` ended.
fn wait_ended(d: &Daemon, key: &str, pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: serde_json::Value = serde_json::from_str(&d.ok(&["ps", "--json", key])).unwrap();
        let ended = list.as_array().unwrap().iter().any(|p| {
            p["pid"].as_u64().map(|p| p.to_string()).as_deref() == Some(pid) && !p["exit"].is_null()
        });
        if ended {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} did not end: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logs_shows_and_follows_a_process_and_events_keeps_the_lifecycle() {
    if !can_run("logs_shows_and_follows_a_process_and_events_keeps_the_lifecycle") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    d.create(&["--name", "lab", "--no-home"]);
    let o = d.run(&["logs", "lab"]);
    assert_eq!(code(&o), Some(1), "no process yet: {}", stderr(&o));
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));

    // A process still running (its stdin open, unwritten): what it has written so far, stdout and stderr apart,
    // and the command returns while the process goes on.
    let pid = d
        .ok(&[
            "exec",
            "-d",
            "-i",
            "lab",
            "--",
            "sh",
            "-c",
            "echo one; echo oops >&2; read never",
        ])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let o = loop {
        let o = d.run(&["logs", "lab", &pid]);
        if stdout(&o) == "one\n" || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\n");
    assert_eq!(stderr(&o), "oops\n");
    // Its only process is the sandbox's main one.
    assert_eq!(d.ok(&["logs", "lab"]), "one\n");

    // -f follows to the end.
    let follower = d
        .warren(&["logs", "-f", "lab", &pid])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    d.ok(&["exec", "lab", "--", "kill", &pid]);
    let o = follower.wait_with_output().unwrap();
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\n");

    // An ended process: its output is still there, as often as asked.
    let done = d
        .ok(&["exec", "-d", "lab", "--", "sh", "-c", "seq 3"])
        .trim()
        .to_string();
    wait_ended(&d, "lab", &done);
    assert_eq!(d.ok(&["logs", "lab", &done]), "1\n2\n3\n");
    assert_eq!(d.ok(&["logs", "lab", &done]), "1\n2\n3\n");
    assert_eq!(d.ok(&["logs", "-f", "lab", &done]), "1\n2\n3\n");
    assert_eq!(d.ok(&["logs", "--tail", "2", "lab", &done]), "2\n3\n");
    assert_eq!(d.ok(&["logs", "-f", "-n", "1", "lab", &done]), "3\n");
    let o = d.run(&["logs", "lab", "99999"]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("no process 99999"), "{}", stderr(&o));

    // The lifecycle is `events SANDBOX`; with -f it goes on with what follows.
    let mut live = d
        .warren(&["events", "-f", "lab"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    d.ok(&["pause", "lab"]);
    d.ok(&["resume", "lab"]);
    let history = d.ok(&["events", "lab"]);
    assert!(
        history.lines().next().unwrap().contains("created"),
        "{history}"
    );
    assert!(history.contains("paused"), "{history}");
    std::thread::sleep(Duration::from_millis(500));
    live.kill().unwrap();
    let seen = stdout(&live.wait_with_output().unwrap());
    for kind in ["created", "paused", "resumed"] {
        assert_eq!(
            seen.lines().filter(|l| l.contains(kind)).count(),
            1,
            "{kind} once:\n{seen}"
        );
    }
    let o = d.run(&["events", "-f"]);
    assert_eq!(code(&o), Some(2), "-f needs a sandbox: {}", stderr(&o));
    d.finish();
}

/// Waits until `warren logs ARGS` prints `want` (a detached command writes it soon).
fn logs_become(d: &Daemon, args: &[&str], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = d.run(&[&["logs"], args].concat());
        if stdout(&o) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "logs {args:?}: wanted {want:?}, got {:?} ({})",
            stdout(&o),
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A template as an image import records it: the host's files, and the image's
/// `Entrypoint` and `Cmd` as one command.
fn image_like_template(d: &Daemon, name: &str, cmd: &[&str]) {
    let dir = d.data_dir().join("templates").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = serde_json::json!({
        "name": name,
        "kind": "image",
        "source": "a test's fixture",
        "layers": [],
        "host_base": true,
        "env": {"GREETING": "hello from the image"},
        "cmd": cmd,
        "created_at": 0,
    });
    std::fs::write(dir.join("template.json"), meta.to_string()).unwrap();
}

#[test]
fn run_d_leaves_a_named_sandbox_running_its_command() {
    if !can_run("run_d_leaves_a_named_sandbox_running_its_command") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    // The id comes back at once; the command goes on in the sandbox, which has the name.
    let o = d.run(&[
        "run",
        "-d",
        "--name",
        "job",
        "--owner",
        "alice",
        "-l",
        "team=ml",
        "-e",
        "WHO=docker",
        "--",
        "sh",
        "-c",
        "echo started $WHO; exec sleep 60",
    ]);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    d.saw(&id);
    assert_eq!(d.ok(&["ls", "-q"]).trim(), id);
    let info: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", "job"])).unwrap();
    assert_eq!(info["id"], id.as_str());
    assert_eq!(info["state"], "running");
    assert_eq!(info["owner"], "alice");
    assert_eq!(info["labels"]["team"], "ml");
    logs_become(&d, &["job"], "started docker\n");
    // -e is the sandbox's: later execs see it too.
    assert_eq!(
        d.ok(&["exec", "job", "--", "sh", "-c", "echo $WHO"]),
        "docker\n"
    );
    let ps = d.ok(&["ps", "job"]);
    assert!(ps.contains("running") && ps.contains("sleep 60"), "{ps}");

    // The template's command when none is given; --entrypoint instead of it.
    image_like_template(&d, "img", &["/bin/sh", "-c", "echo $GREETING"]);
    assert_eq!(
        d.ok(&["template", "inspect", "img", "--format", "{{json .cmd}}"]),
        "[\"/bin/sh\",\"-c\",\"echo $GREETING\"]\n"
    );
    let img = d.ok(&["run", "-d", "--template", "img"]).trim().to_string();
    d.saw(&img);
    logs_become(&d, &[&img], "hello from the image\n");
    let ep = d
        .ok(&[
            "run",
            "-d",
            "--template",
            "img",
            "--entrypoint",
            "echo",
            "--",
            "instead",
        ])
        .trim()
        .to_string();
    d.saw(&ep);
    logs_become(&d, &[&ep], "instead\n");
    // Without -d too, the template's command runs, with its status.
    let o = d.run(&["run", "--rm", "--template", "img"]);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from the image\n");
    let o = d.run(&["run", "--rm", "--entrypoint", "sh", "--", "-c", "exit 7"]);
    assert_eq!(code(&o), Some(7), "{}", stderr(&o));

    // With no command anywhere, the sandbox waits for `warren exec`.
    let idle = d.ok(&["run", "-d", "--name", "idle"]).trim().to_string();
    d.saw(&idle);
    assert_eq!(d.ok(&["exec", "idle", "--", "echo", "here"]), "here\n");
    assert_eq!(
        d.ok(&["ps", "idle"]).lines().count(),
        1,
        "no process but the header"
    );

    // A command that cannot start leaves no sandbox behind; a taken name is the
    // daemon's refusal; what needs -d says so.
    let before = d.ok(&["ls", "-q"]);
    let o = d.run(&["run", "-d", "--", "no-such-command"]);
    assert_eq!(code(&o), Some(127), "{}", stderr(&o));
    assert_eq!(d.ok(&["ls", "-q"]), before, "{}", stderr(&o));
    let o = d.run(&["run", "-d", "--owner", "alice", "--name", "job"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("(name_taken)"), "{}", stderr(&o));
    let o = d.run(&["run", "--name", "x", "--", "true"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    let o = d.run(&["run", "-d", "--rm", "--", "true"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    let o = d.run(&["run", "-d", "-v", "data:/data", "--", "true"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("named volumes"), "{}", stderr(&o));
    d.finish();
}

#[test]
fn format_picks_fields_and_tenant_before_the_verb_applies_to_every_verb() {
    if !can_run("format_picks_fields_and_tenant_before_the_verb_applies_to_every_verb") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    d.tenants.push("acme".into());
    let id = d.create(&[
        "--name",
        "lab",
        "--no-home",
        "--memory",
        "256M",
        "--label",
        "team=ml",
    ]);
    assert_eq!(
        d.ok(&[
            "ls",
            "--format",
            r"{{.id}}\t{{.name}}\t{{.resources.memory}}\t{{.labels.team}}"
        ]),
        format!("{id}\tlab\t268435456\tml\n")
    );
    assert_eq!(
        d.ok(&["inspect", "--format", "{{.state}} {{json .labels}}", "lab"]),
        "running {\"team\":\"ml\"}\n"
    );
    let pid = d.ok(&["exec", "-d", "lab", "--", "sleep", "30"]);
    assert_eq!(
        d.ok(&[
            "ps",
            "lab",
            "--format",
            "{{.pid}} {{.background}} {{.exit}}|"
        ]),
        format!("{} true |\n", pid.trim())
    );
    assert_eq!(
        d.ok(&["stats", "lab", "--format", "{{.sandbox}} {{.name}}"]),
        format!("{id} lab\n")
    );
    let templates = d.ok(&["template", "ls", "--format", "{{.name}}:{{.kind}}"]);
    assert!(
        templates.lines().any(|l| l == "host:builtin"),
        "{templates}"
    );
    // What the template cannot say is a usage error naming what it can.
    let o = d.run(&["ls", "--format", "{{id}}"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("{{.field}}"), "{}", stderr(&o));
    let o = d.run(&["ls", "--format", "{{.id}}", "--json"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));

    // `warren --tenant T VERB` acts for T, as WARREN_TENANT does; a verb's own wins.
    let theirs = d
        .ok(&["--tenant", "acme", "create", "--name", "lab", "--no-home"])
        .trim()
        .to_string();
    d.saw(&theirs);
    assert_ne!(theirs, id);
    assert_eq!(d.ok(&["--tenant", "acme", "ls", "-q"]).trim(), theirs);
    assert_eq!(d.ok(&["ls", "-q"]).trim(), id);
    let o = d
        .warren(&["ls", "-q"])
        .env("WARREN_TENANT", "acme")
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), theirs, "{}", stderr(&o));
    assert_eq!(
        d.ok(&["--tenant", "acme", "ls", "-q", "--tenant", "default"])
            .trim(),
        id
    );
    assert_eq!(
        d.ok(&["--tenant", "acme", "inspect", "--format", "{{.id}}", "lab"])
            .trim(),
        theirs
    );
    assert_eq!(
        d.ok(&["--tenant", "acme", "exec", "lab", "--", "echo", "acme's"]),
        "acme's\n"
    );
    d.ok(&["--tenant", "acme", "rm", "lab"]);
    assert_eq!(d.ok(&["--tenant", "acme", "ls", "-q"]), "");
    d.finish();
}

#[test]
fn volume_lists_inspects_and_removes_owners_homes_but_not_one_in_use() {
    if !can_run("volume_lists_inspects_and_removes_owners_homes_but_not_one_in_use") {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    d.tenants.push("acme".into());
    // alice's home is of her own size; bob's of the daemon's default (2 GiB).
    let a = d.create(&["--owner", "alice", "--name", "a", "--home-size", "64M"]);
    let b = d.create(&["--owner", "bob", "--name", "b"]);
    d.ok(&[
        "exec",
        "a",
        "--",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /home/user/blob",
    ]);
    d.ok(&["exec", "b", "--", "sh", "-c", "echo hi > /home/user/note"]);

    let table = d.ok(&["volume", "ls"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].starts_with("OWNER ") && rows[0].ends_with("MOUNTED BY"),
        "{table}"
    );
    assert!(
        rows[1].starts_with("alice ") && rows[1].contains("64.0M"),
        "{table}"
    );
    assert!(rows[1].ends_with(&a), "{table}");
    assert!(
        rows[2].starts_with("bob ") && rows[2].ends_with(&b),
        "{table}"
    );
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "alice\nbob\n");
    let info: serde_json::Value =
        serde_json::from_str(&d.ok(&["volume", "inspect", "alice"])).unwrap();
    assert_eq!(info["owner"], "alice");
    assert_eq!(info["size_bytes"], 64 << 20);
    assert_eq!(info["used_by"], serde_json::json!([a]));
    assert!(info["used_bytes"].as_u64().unwrap() > 0, "{info}");
    let bob = d.ok(&[
        "volume",
        "inspect",
        "bob",
        "--format",
        "{{.size_bytes}}|{{.owner}}",
    ]);
    assert_eq!(bob, format!("{}|bob\n", 2u64 << 30));

    // In use, even stopped: refused with what to do.
    d.ok(&["stop", "b"]);
    for owner in ["alice", "bob"] {
        let o = d.run(&["volume", "rm", owner]);
        assert_eq!(code(&o), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("in use by") && e.contains("warren rm"), "{e}");
        assert!(e.ends_with("(invalid_state)\n"), "{e}");
    }
    assert!(stderr(&d.run(&["volume", "rm", "alice"])).contains(&a));

    // Another tenant's owners are other people: nothing of these is theirs.
    assert_eq!(d.ok(&["--tenant", "acme", "volume", "ls", "-q"]), "");
    let o = d.run(&["--tenant", "acme", "volume", "inspect", "alice"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));
    let o = d.run(&["--tenant", "acme", "volume", "rm", "alice"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));

    // A volume outlives its sandboxes, files and all, until removed (`-f` as docker's
    // users type it: a running sandbox is removed with or without it).
    d.ok(&["rm", "-f", "a"]);
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "alice\nbob\n");
    d.create(&["--owner", "alice", "--name", "again"]);
    assert_eq!(
        d.ok(&["exec", "again", "--", "stat", "-c", "%s", "/home/user/blob"]),
        "100000\n"
    );
    d.ok(&["rm", "again"]);
    assert_eq!(d.ok(&["volume", "rm", "alice"]), "alice\n");
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "bob\n");
    let o = d.run(&["volume", "inspect", "alice"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    let fresh = d.create(&["--owner", "alice", "--name", "fresh"]);
    assert_eq!(d.ok(&["exec", &fresh, "--", "ls", "-A", "/home/user"]), "");
    let o = d.run(&["volume", "rm", "nosuch"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));
    let o = d.run(&["volume", "rm"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    d.finish();
}

#[test]
fn volume_resize_grows_a_home_with_its_files_only_while_unmounted() {
    if !can_run("volume_resize_grows_a_home_with_its_files_only_while_unmounted") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    d.create(&["--owner", "alice", "--name", "a", "--home-size", "32M"]);
    d.ok(&["exec", "a", "--", "sh", "-c", "echo kept > /home/user/note"]);
    let o = d.run(&["volume", "resize", "alice", "64M"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("in use by") && stderr(&o).ends_with("(invalid_state)\n"),
        "{}",
        stderr(&o)
    );
    d.ok(&["rm", "a"]);
    let o = d.run(&["volume", "resize", "alice", "16M"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("can only grow"), "{}", stderr(&o));
    let o = d.run(&["volume", "resize", "alice", "100T"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("(invalid_request)"), "{}", stderr(&o));
    let o = d.run(&["volume", "resize", "nobody", "64M"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("(not_found)"), "{}", stderr(&o));

    let row = d.ok(&["volume", "resize", "alice", "64M"]);
    assert!(row.lines().nth(1).unwrap().contains(" 64.0M "), "{row}");
    assert_eq!(
        d.ok(&["volume", "inspect", "alice", "--format", "{{.size_bytes}}"]),
        format!("{}\n", 64u64 << 20)
    );
    // The next sandbox of alice's finds her files, on the larger filesystem.
    d.create(&["--owner", "alice", "--name", "b"]);
    let seen = d.ok(&[
        "exec",
        "b",
        "--",
        "sh",
        "-c",
        "cat /home/user/note; df -k --output=size /home/user | tail -1",
    ]);
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("kept"), "{seen}");
    let kib: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(kib > 48 << 10, "{seen}");
    d.finish();
}

/// A bad value is the caller's to change: it exits 2 with the flag and what would do,
/// before any daemon is asked (there is none at this socket), as clap's own usage errors.
/// Needs neither root nor a daemon.
#[test]
fn a_bad_flag_value_is_a_usage_error_before_any_daemon_is_asked() {
    let nowhere = std::env::temp_dir().join("warren-no-daemon-here.sock");
    let run = |args: &[&str]| {
        common::warren()
            .args(args)
            .env("WARREN_SOCKET", &nowhere)
            .env_remove("WARREN_HOST")
            .output()
            .expect("run warren")
    };
    for (args, says) in [
        (
            &["create", "--cpus", "0"][..],
            "--cpus 0: give a positive number",
        ),
        (
            &["create", "--pids", "0"][..],
            "--pids 0: no process could start",
        ),
        (&["create", "--memory", "1K"][..], "--memory 1024 bytes"),
        (&["create", "--network", "bogus"][..], "bogus"),
    ] {
        let o = run(args);
        assert_eq!(code(&o), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with("warren: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // Reaching no daemon is Warren's failure, not the caller's: 125.
    let o = run(&["create", "--cpus", "1"]);
    assert_eq!(code(&o), Some(125), "{}", stderr(&o));
}

#[test]
fn fork_completions_and_the_template_disk_verbs_do_what_their_help_says() {
    if !can_run("fork_completions_and_the_template_disk_verbs_do_what_their_help_says") {
        return;
    }
    let _t = my_turn();
    let d = Daemon::start(false);

    // Completion scripts name the verbs, and bash's parses.
    for shell in ["bash", "zsh", "fish"] {
        let script = d.ok(&["completions", shell]);
        assert!(
            script.contains("tenants") && script.contains("snapshot"),
            "{shell}: {}",
            &script[..script.len().min(300)]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("warren.bash");
    std::fs::write(&bash, d.ok(&["completions", "bash"])).unwrap();
    let o = std::process::Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.run(&["completions", "powershell7"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));

    // Forks are copies with the files as they were, each its own from then on.
    let id = d.create(&["--no-home"]);
    assert_eq!(d.exec(&id, "echo kept > /root/f").0, 0);
    let copies: Vec<String> = d
        .ok(&["fork", &id, "-n", "2"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(
        copies[0] != copies[1] && !copies.contains(&id),
        "{copies:?}"
    );
    for c in &copies {
        assert_eq!(d.exec(c, "cat /root/f").1, "kept\n", "{c}");
    }
    d.exec(&copies[0], "echo mine > /root/f");
    assert_eq!(d.exec(&copies[1], "cat /root/f").1, "kept\n");
    assert_eq!(d.exec(&id, "cat /root/f").1, "kept\n");

    // The disk verbs: every sandbox in `du`, and a dry gc that keeps what is in use.
    let du: serde_json::Value = serde_json::from_str(&d.ok(&["template", "du", "--json"])).unwrap();
    let rows: Vec<&str> = du["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for s in copies.iter().chain([&id]) {
        assert!(rows.contains(&s.as_str()), "{s} not in {du}");
    }
    assert!(d.ok(&["template", "du"]).starts_with("KIND"));
    let o = d.run(&["template", "gc", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("would free"), "{}", stderr(&o));
    assert_eq!(d.exec(&id, "cat /root/f").1, "kept\n");

    for s in copies.iter().chain([&id]) {
        d.ok(&["rm", s]);
    }
    d.finish();
}
