//! The E2B surface on a live daemon, for what the SDK suite (tests/e2b) cannot show:
//! whose rights an envd file operation has, and how much of a transfer or of a watch
//! the daemon holds while a client stalls. Requests go over plain sockets, so each
//! test says exactly what is sent and when; memory is the daemon's resident set. Needs
//! root.

mod common;
mod trust;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::can_run;
use serde_json::{json, Value};
use trust::{enc, my_turn, rss, Daemon, Resp, Via};

/// `Authorization` for envd's RPCs: base64 of `user:` and of `root:`.
const AS_USER: &str = "Basic dXNlcjo=";
const AS_ROOT: &str = "Basic cm9vdDo=";

fn e2b_daemon(config: Option<&str>) -> Daemon {
    Daemon::start_opts(trust::Options {
        e2b: true,
        config: config.map(str::to_string),
        ..Default::default()
    })
}

/// An E2B sandbox: its id and the token envd calls carry.
struct Sandbox<'a> {
    d: &'a Daemon,
    id: String,
    token: String,
}

/// Creates a sandbox through E2B's control plane, with `env` as its environment.
fn create(d: &Daemon, env: Value) -> Sandbox<'_> {
    let key = d.api_key();
    let body = json!({"templateID": "base", "timeout": 900, "envVars": env}).to_string();
    let r = d.http(
        Via::E2b,
        "POST",
        "/sandboxes",
        &[("X-API-Key", &key), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "create: {}", r.text());
    let v = r.json();
    let id = v["sandboxID"].as_str().unwrap().to_string();
    d.saw(&id);
    Sandbox {
        d,
        id,
        token: v["envdAccessToken"].as_str().unwrap().to_string(),
    }
}

impl Sandbox<'_> {
    fn headers<'h>(&'h self, extra: &[(&'h str, &'h str)]) -> Vec<(&'h str, &'h str)> {
        let mut h = vec![
            ("E2b-Sandbox-Id", self.id.as_str()),
            ("X-Access-Token", self.token.as_str()),
        ];
        h.extend_from_slice(extra);
        h
    }

    /// The head of an envd request, for tests that send the body themselves.
    fn head(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> String {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in self.headers(extra) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head + "\r\n"
    }

    /// A unary `filesystem.Filesystem` call.
    fn rpc(&self, method: &str, auth: &str, msg: Value) -> Resp {
        self.d.http(
            Via::E2b,
            "POST",
            &format!("/filesystem.Filesystem/{method}"),
            &self.headers(&[
                ("Content-Type", "application/json"),
                ("Authorization", auth),
            ]),
            msg.to_string().as_bytes(),
        )
    }

    /// `POST /files` with a raw body.
    fn upload(&self, path: &str, user: &str, data: &[u8]) -> Resp {
        self.d.http(
            Via::E2b,
            "POST",
            &format!("/files?path={}&username={user}", enc(path)),
            &self.headers(&[("Content-Type", "application/octet-stream")]),
            data,
        )
    }

    /// `POST /files` with one multipart part named `name`, as the SDK sends it.
    fn upload_part(&self, name: &str, user: &str, data: &[u8]) -> Resp {
        let mut body = format!(
            "--XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--XB--\r\n");
        self.d.http(
            Via::E2b,
            "POST",
            &format!("/files?username={user}"),
            &self.headers(&[("Content-Type", "multipart/form-data; boundary=XB")]),
            &body,
        )
    }

    fn download(&self, path: &str, user: &str) -> Resp {
        self.d.http(
            Via::E2b,
            "GET",
            &format!("/files?path={}&username={user}", enc(path)),
            &self.headers(&[]),
            b"",
        )
    }

    /// Runs a shell script in the sandbox as `user`, through the native API; its
    /// stdout.
    fn sh_as(&self, user: &str, script: &str) -> String {
        let body = json!({"command": {"shell": script}, "user": {"name": user}}).to_string();
        let r = self.d.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{}/exec", self.id),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "exec: {}", r.text());
        let v = r.json();
        assert_eq!(v["exit_code"], 0, "{script}: {v}");
        v["stdout"].as_str().unwrap_or_default().to_string()
    }

    fn sh(&self, script: &str) -> String {
        self.sh_as("root", script)
    }
}

fn assert_denied(what: &str, r: &Resp) {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    let code = &r.json()["code"];
    assert!(
        code == "permission_denied" || code == 403,
        "{what}: {}",
        r.text()
    );
}

#[test]
fn envd_file_operations_have_the_users_rights_only() {
    if !can_run("envd_file_operations_have_the_users_rights_only") {
        return;
    }
    let _turn = my_turn();
    let d = e2b_daemon(None);
    // The user's own bin directory first on the PATH, as many images have it.
    let path = "/home/user/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let sb = create(&d, json!({ "PATH": path }));
    sb.sh(
        "echo root only > /root/secret; chmod 600 /root/secret; chmod 700 /root; \
         echo keep > /etc/keep; mkdir -m 755 /etc/jobs",
    );
    // What the user plants: a chown of their own on that PATH, and a link to a
    // directory of root's.
    sb.sh_as(
        "user",
        "mkdir -p ~/.local/bin && printf '#!/bin/sh\\nid -u > /tmp/planted-ran\\n' > ~/.local/bin/chown \
         && chmod +x ~/.local/bin/chown && ln -s /etc/jobs ~/reports",
    );

    // A plain write and a new directory as the user are the user's, parents included,
    // and nothing of the user's ran on the way.
    let r = sb.upload("notes/deep/a.txt", "user", b"hello");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sb.upload_part("parts/b.txt", "user", b"part");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sb.rpc("MakeDir", AS_USER, json!({"path": "made/sub"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let owners = sb.sh(
        "cd /home/user && stat -c %u:%g notes notes/deep notes/deep/a.txt parts parts/b.txt \
         made made/sub",
    );
    assert_eq!(owners, "1000:1000\n".repeat(7));
    assert_eq!(
        sb.sh("cat /tmp/planted-ran 2>&1; true"),
        "cat: /tmp/planted-ran: No such file or directory\n",
        "the user's chown ran"
    );

    // Through the planted link: refused, and nothing lands in root's directory.
    assert_denied(
        "write through a link",
        &sb.upload("reports/daily.sh", "user", b"echo hi\n"),
    );
    assert_denied(
        "multipart write through a link",
        &sb.upload_part("reports/weekly.sh", "user", b"echo hi\n"),
    );
    assert_denied(
        "mkdir through a link",
        &sb.rpc("MakeDir", AS_USER, json!({"path": "reports/sub"})),
    );
    assert_denied(
        "move through a link",
        &sb.rpc(
            "Move",
            AS_USER,
            json!({"source": "notes/deep/a.txt", "destination": "reports/a.sh"}),
        ),
    );
    assert_denied(
        "remove in /etc",
        &sb.rpc("Remove", AS_USER, json!({"path": "/etc/keep"})),
    );
    assert_eq!(sb.sh("ls /etc/jobs | wc -l; cat /etc/keep"), "0\nkeep\n");

    // Root's files stay root's.
    let r = sb.download("../../root/secret", "user");
    assert_denied("read of /root/secret", &r);
    assert!(!r.text().contains("root only"));
    assert_denied(
        "stat in /root",
        &sb.rpc("Stat", AS_USER, json!({"path": "/root/secret"})),
    );
    assert_denied(
        "list /root",
        &sb.rpc("ListDir", AS_USER, json!({"path": "/root"})),
    );
    assert_denied(
        "watch /root",
        &sb.rpc("CreateWatcher", AS_USER, json!({"path": "/root"})),
    );

    // And root is root.
    let r = sb.download("/root/secret", "root");
    assert_eq!((r.status, r.text().as_str()), (200, "root only\n"));
    let r = sb.rpc("ListDir", AS_ROOT, json!({"path": "/root"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sb.upload("/home/user/reports/by-root.sh", "root", b"# root's\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sb.sh("stat -c %u /etc/jobs/by-root.sh"), "0\n");
    d.finish();
}

/// The resident set of `pid`, sampled every 20 ms while `work` runs: its peak.
fn peak_rss_during<R: Send>(pid: u32, work: impl FnOnce() -> R + Send) -> (R, u64) {
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(rss(pid));
    /// Stops the sampling however `work` ends, a failed assertion included.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let _done = Done(&done);
        work()
    });
    (result, peak.load(Ordering::SeqCst).max(rss(pid)))
}

const MIB: u64 = 1 << 20;

/// Waits up to 30 s for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stalled_uploads_hold_little_of_their_bodies() {
    if !can_run("stalled_uploads_hold_little_of_their_bodies") {
        return;
    }
    const DECLARED: u64 = 128 * MIB;
    const SENT: u64 = 120 * MIB;
    const CONNECTIONS: usize = 50;
    /// Of them, aimed where the user may not write: refused at once.
    const REFUSED: usize = 10;
    const BOUND: u64 = 150 * MIB;
    let _turn = my_turn();
    // No disk limit: 40 uploads of 120 MiB sit in the sandbox's /tmp while they stall.
    let d = e2b_daemon(Some("[limits.defaults]\ndisk = 0\n"));
    let sb = create(&d, json!({}));
    let pid = d.pid().unwrap();
    let addr = d.e2b.clone().unwrap();
    let before = rss(pid);
    let started = Instant::now();
    let ((conns, stalled), peak) = peak_rss_during(pid, || {
        let conns: Vec<TcpStream> = std::thread::scope(|s| {
            let senders: Vec<_> = (0..CONNECTIONS)
                .map(|i| {
                    let (sb, addr) = (&sb, &addr);
                    s.spawn(move || {
                        let dir = if i < REFUSED { "/etc" } else { "/tmp" };
                        let head = sb.head(
                            "POST",
                            &format!("/files?path={dir}/stall-{i}&username=user"),
                            &[
                                ("Content-Type", "application/octet-stream"),
                                ("Content-Length", &DECLARED.to_string()),
                            ],
                        );
                        let mut c = TcpStream::connect(addr).unwrap();
                        c.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
                        c.write_all(head.as_bytes()).unwrap();
                        let chunk = vec![b'w'; MIB as usize];
                        for _ in 0..SENT / MIB {
                            // A refused upload is cut off: the daemon stops reading it.
                            if c.write_all(&chunk).is_err() {
                                assert!(i < REFUSED, "upload {i} was cut off");
                                break;
                            }
                        }
                        c
                    })
                })
                .collect();
            senders.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Every accepted upload is in the sandbox, as far as it was sent, while its
        // client stalls.
        let expected = (CONNECTIONS - REFUSED) as u64 * SENT;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let now = rss(pid);
            assert!(now < BOUND, "the daemon grew to {} MiB", now / MIB);
            let got: u64 = sb.sh("cat /tmp/.stall-* | wc -c").trim().parse().unwrap();
            if got == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{got} of {expected} bytes arrived"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(Duration::from_secs(1));
        (conns, rss(pid))
    });
    println!(
        "UPLOADS {CONNECTIONS} stalled at {} of {} MiB ({REFUSED} refused) in {:.1} s: daemon \
         RSS {:.1} MiB before, {:.1} MiB stalled, peak {:.1} MiB",
        SENT / MIB,
        DECLARED / MIB,
        started.elapsed().as_secs_f64(),
        before as f64 / MIB as f64,
        stalled as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert!(peak < BOUND, "the daemon grew to {} MiB", peak / MIB);
    // Gone with their clients: nothing of the abandoned uploads stays.
    drop(conns);
    eventually("the abandoned uploads are removed", || {
        sb.sh("ls -a /tmp /etc | grep -c stall || true") == "0\n"
    });

    // A declared size past the limit is refused before anything is sent.
    let mut c = TcpStream::connect(&addr).unwrap();
    let head = sb.head(
        "POST",
        "/files?path=/tmp/huge&username=user",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &(DECLARED + 1).to_string()),
            ("Connection", "close"),
        ],
    );
    c.write_all(head.as_bytes()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut status = String::new();
    BufReader::new(&c).read_line(&mut status).unwrap();
    assert!(status.contains(" 413 "), "{status}");
    // One sent without a length is cut off where it passes the limit.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = sb.head(
        "POST",
        "/files?path=/tmp/huge&username=user",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
        ],
    );
    c.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; MIB as usize];
    let mut sent = 0;
    while sent <= DECLARED {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if c.write_all(&framed).is_err() {
            break;
        }
        sent += MIB;
    }
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    eventually("the refused upload is removed", || {
        sb.sh("ls -a /tmp | grep -c huge || true") == "0\n"
    });
    d.finish();
}

#[test]
fn downloads_stream_and_refuse_special_files() {
    if !can_run("downloads_stream_and_refuse_special_files") {
        return;
    }
    const SIZE: u64 = 1 << 30;
    const GROWTH: u64 = 64 * MIB;
    let _turn = my_turn();
    let d = e2b_daemon(None);
    let sb = create(&d, json!({}));
    sb.sh("truncate -s 1G /tmp/sparse; mkfifo -m 666 /tmp/fifo");
    for special in ["/dev/zero", "/dev/urandom", "/tmp/fifo"] {
        let t = Instant::now();
        let r = d
            .try_http(
                Via::E2b,
                "GET",
                &format!("/files?path={special}&username=user"),
                &sb.headers(&[]),
                b"",
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("{special}: {e}"));
        assert_eq!(r.status, 400, "{special}: {}", r.text());
        assert!(r.text().contains("not a regular file"), "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{special} took {:?}",
            t.elapsed()
        );
    }

    let pid = d.pid().unwrap();
    let before = rss(pid);
    let started = Instant::now();
    let ((status, received, zeros), peak) = peak_rss_during(pid, || {
        let (mut received, mut zeros) = (0u64, true);
        let status = d
            .http_stream(
                Via::E2b,
                "GET",
                "/files?path=/tmp/sparse&username=user",
                &sb.headers(&[]),
                b"",
                &mut |b| {
                    received += b.len() as u64;
                    zeros &= b.iter().all(|&x| x == 0);
                },
            )
            .unwrap();
        (status, received, zeros)
    });
    println!(
        "DOWNLOAD 1 GiB sparse in {:.1} s: daemon RSS {:.1} MiB before, peak {:.1} MiB",
        started.elapsed().as_secs_f64(),
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert_eq!((status, received, zeros), (200, SIZE, true));
    assert!(
        peak.saturating_sub(before) < GROWTH,
        "the daemon grew by {} MiB",
        (peak - before) / MIB
    );

    // A client that stops reading holds the agent back, not the daemon.
    let mut c = TcpStream::connect(d.e2b.as_ref().unwrap()).unwrap();
    let head = sb.head("GET", "/files?path=/tmp/sparse&username=user", &[]);
    c.write_all(head.as_bytes()).unwrap();
    let mut first = vec![0u8; MIB as usize];
    c.read_exact(&mut first).unwrap();
    let stalled_at = rss(pid);
    std::thread::sleep(Duration::from_secs(3));
    let later = rss(pid);
    println!(
        "DOWNLOAD stalled: daemon RSS {:.1} MiB, 3 s later {:.1} MiB",
        stalled_at as f64 / MIB as f64,
        later as f64 / MIB as f64
    );
    assert!(later.saturating_sub(before) < GROWTH, "grew to {later}");
    drop(c);
    d.finish();
}

/// `GetWatcherEvents`: the names of the events, oldest first.
fn watcher_events(sb: &Sandbox, id: &str) -> Vec<String> {
    let r = sb.rpc("GetWatcherEvents", AS_USER, json!({ "watcherId": id }));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Collects from watcher `probe` until it has seen an event named `last`.
fn wait_for_event(sb: &Sandbox, probe: &str, last: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !watcher_events(sb, probe).iter().any(|n| n.ends_with(last)) {
        assert!(Instant::now() < deadline, "no event for {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other watchers saw it at the same moment; give their tasks a moment more.
    std::thread::sleep(Duration::from_secs(1));
}

#[test]
fn watchers_keep_a_bounded_count_and_size_of_events() {
    if !can_run("watchers_keep_a_bounded_count_and_size_of_events") {
        return;
    }
    const WATCHERS: usize = 64;
    const MAX_EVENTS: usize = 1000;
    const MAX_BYTES: usize = 256 << 10;
    const GROWTH: u64 = 64 * MIB;
    let _turn = my_turn();
    let d = e2b_daemon(None);
    let sb = create(&d, json!({}));
    // Twelve levels of long names: every event below them is named by over 3 KB.
    let deep: Vec<String> = (0..12)
        .map(|i| format!("{}{i:02}", "d".repeat(250)))
        .collect();
    let deep = deep.join("/");
    sb.sh_as("user", &format!("mkdir -p ~/w/{deep}"));
    let ids: Vec<String> = (0..WATCHERS)
        .map(|_| {
            let r = sb.rpc(
                "CreateWatcher",
                AS_USER,
                json!({"path": "w", "recursive": true}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["watcherId"].as_str().unwrap().to_string()
        })
        .collect();
    let probe = &ids[WATCHERS - 1];

    let pid = d.pid().unwrap();
    let before = rss(pid);
    let started = Instant::now();
    let ((), peak) = peak_rss_during(pid, || {
        sb.sh_as(
            "user",
            &format!("cd ~/w/{deep} && for i in $(seq 3000); do : > f$i; done"),
        );
        wait_for_event(&sb, probe, "/f3000");
    });
    println!(
        "WATCHERS {WATCHERS} x 3000 events of 3 KB names in {:.1} s: daemon RSS {:.1} MiB \
         before, peak {:.1} MiB",
        started.elapsed().as_secs_f64(),
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    let kept = watcher_events(&sb, &ids[0]);
    let bytes: usize = kept.iter().map(|n| n.len() + 64).sum();
    assert!(
        kept.len() < 3000 && bytes <= MAX_BYTES,
        "{} events of {bytes} bytes kept",
        kept.len()
    );
    assert!(
        kept.last().unwrap().ends_with("/f3000"),
        "the newest were dropped"
    );
    assert!(
        peak.saturating_sub(before) < GROWTH,
        "the daemon grew by {} MiB",
        (peak - before) / MIB
    );

    // Short names: the count is the bound, and the oldest go first.
    watcher_events(&sb, &ids[1]);
    watcher_events(&sb, probe);
    sb.sh_as("user", "cd ~/w && for i in $(seq 1500); do : > g$i; done");
    wait_for_event(&sb, probe, "g1500");
    let kept = watcher_events(&sb, &ids[1]);
    assert_eq!(kept.len(), MAX_EVENTS);
    assert_eq!(
        (kept[0].as_str(), kept[MAX_EVENTS - 1].as_str()),
        ("g501", "g1500")
    );
    assert!(watcher_events(&sb, &ids[1]).is_empty());

    for id in &ids {
        let r = sb.rpc("RemoveWatcher", AS_USER, json!({ "watcherId": id }));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = sb.rpc("GetWatcherEvents", AS_USER, json!({ "watcherId": ids[0] }));
    assert_eq!(r.status, 404, "{}", r.text());
    d.finish();
}

#[test]
fn watchers_are_capped_per_sandbox_and_team_and_go_with_their_sandbox() {
    if !can_run("watchers_are_capped_per_sandbox_and_team_and_go_with_their_sandbox") {
        return;
    }
    const PER_SANDBOX: usize = 64;
    let _turn = my_turn();
    let d = e2b_daemon(None);
    let sbs: Vec<Sandbox> = (0..5).map(|_| create(&d, json!({}))).collect();
    let watch = |sb: &Sandbox| sb.rpc("CreateWatcher", AS_USER, json!({"path": "/home/user"}));
    let exhausted = |what: &str, r: Resp| {
        assert_eq!(r.status, 429, "{what}: {}", r.text());
        assert_eq!(r.json()["code"], "resource_exhausted", "{what}");
        r.json()["message"].as_str().unwrap().to_string()
    };
    let mut first = String::new();
    for sb in &sbs[..4] {
        for _ in 0..PER_SANDBOX {
            let r = watch(sb);
            assert_eq!(r.status, 200, "{}", r.text());
            if first.is_empty() {
                first = r.json()["watcherId"].as_str().unwrap().to_string();
            }
        }
        exhausted("a sandbox's 65th", watch(sb));
    }
    // Four sandboxes hold the team's 256: a fifth gets none.
    let message = exhausted("the team's 257th", watch(&sbs[4]));
    assert!(message.contains("team"), "{message}");
    // A removed watcher makes room for one.
    let r = sbs[0].rpc("RemoveWatcher", AS_USER, json!({ "watcherId": first }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(watch(&sbs[4]).status, 200);
    exhausted("the team's 257th again", watch(&sbs[4]));

    // A sandbox that ends takes its watchers with it, without waiting for a call, and
    // with the events they kept.
    sbs[1].sh_as("user", "touch ~/unseen");
    std::thread::sleep(Duration::from_millis(500));
    let key = d.api_key();
    let r = d.http(
        Via::E2b,
        "DELETE",
        &format!("/sandboxes/{}", sbs[1].id),
        &[("X-API-Key", &key)],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    eventually("the ended sandbox's watchers are gone", || {
        let r = d.http(
            Via::Unix,
            "GET",
            &format!("/v1/sandboxes/{}", sbs[1].id),
            &[],
            b"",
        );
        r.status == 404 || r.json()["state"] == "terminated"
    });
    let t = Instant::now();
    let mut made = 0;
    while made < PER_SANDBOX - 1 {
        let r = watch(&sbs[4]);
        if r.status == 200 {
            made += 1;
        } else {
            exhausted("while the ended sandbox's watchers go", r);
            assert!(t.elapsed() < Duration::from_secs(10), "they stayed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    exhausted("a sandbox's 65th", watch(&sbs[4]));
    d.finish();
}
