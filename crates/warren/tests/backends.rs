//! The isolation backends: one behaviour suite (lifecycle, exec, a terminal, files,
//! limits, network, pause, stop and start) run against every backend this host offers,
//! and how a request picks one. A backend that cannot run here records a visible skip
//! with its reason.

mod common;
mod trust;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::can_run;
use trust::{loops_under, my_turn, Daemon, Options, Via};
use warren_testkit::eventually;

/// A directory for trust-mode sandboxes that the unprivileged user can reach (the
/// daemon's own directory is private to root), removed at the end.
struct Spaces(PathBuf);

impl Spaces {
    fn new() -> Spaces {
        let p = PathBuf::from(format!("/tmp/wt-spaces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Spaces(p)
    }
}

impl Drop for Spaces {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn daemon(spaces: &Path, extra: &str) -> Daemon {
    Daemon::start_opts(Options {
        config: Some(format!(
            "[backends.process]\nuser = \"nobody\"\ndir = \"{}\"\n{extra}",
            spaces.display()
        )),
        tcp: true,
        e2b: true,
        ..Default::default()
    })
}

fn backends(d: &Daemon) -> Vec<serde_json::Value> {
    let r = d.http(Via::Unix, "GET", "/v1/backends", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// The entry of backend `name` in the list.
fn entry<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

fn post(d: &Daemon, path: &str, body: &serde_json::Value) -> trust::Resp {
    d.http(
        Via::Unix,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Forks up to N children that live a second; prints how many it could start.
const FORKS: &str = r#"python3 -c '
import os, time
n = 0
for i in range(N):
    try:
        p = os.fork()
    except OSError:
        break
    if p == 0:
        time.sleep(1)
        os._exit(0)
    n += 1
print(n)
for i in range(n):
    os.wait()
'"#;

/// Whether gVisor can run here; records the test's skip with the reason when not.
fn gvisor_here(d: &Daemon, test: &str) -> bool {
    let list = backends(d);
    let gvisor = entry(&list, "gvisor");
    if gvisor["available"] == true {
        return true;
    }
    warren_testkit::skip(
        test,
        gvisor["reason"].as_str().unwrap_or("gvisor unavailable"),
    );
    false
}

/// What a gVisor test needs: its turn, a daemon and the directory trust mode uses; `None`
/// (with the skip recorded) when the test cannot run here or gVisor cannot.
fn gvisor_test(test: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Spaces, Daemon)> {
    if !can_run(test) {
        return None;
    }
    let turn = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    if !gvisor_here(&d, test) {
        d.finish();
        return None;
    }
    Some((turn, spaces, d))
}

/// Starts `script` under python3 in the background in sandbox `id`.
fn python_in_background(d: &Daemon, id: &str, script: &str) {
    d.ok(&["exec", "-d", id, "--", "python3", "-c", script]);
}

/// Waits until `f` holds, for at most `secs` seconds.
/// Starts a process whose state lives in memory only: a random value drawn once and a
/// counter, written whole (a rename) to /tmp/state as `VALUE COUNT`, so a reader never
/// sees a half-written file. Read back with [`secret_and_count`].
fn start_secret_counter(d: &Daemon, id: &str) {
    python_in_background(d, id, "import os, time, random\nsecret = random.getrandbits(64)\ni = 0\nwhile True:\n    i += 1\n    open('/tmp/s.new', 'w').write(f'{secret} {i}')\n    os.replace('/tmp/s.new', '/tmp/state')\n    time.sleep(0.05)");
}

/// The value and count [`start_secret_counter`]'s process last wrote.
fn secret_and_count(d: &Daemon, id: &str) -> (String, u64) {
    let (_, out) = d.exec(id, "cat /tmp/state");
    let (s, n) = out.trim().split_once(' ').unwrap_or(("", "0"));
    (s.to_string(), n.parse().unwrap_or(0))
}

/// Prints how the sandbox's default gateway answers a connection to port 22: `open`,
/// `refused` or `dropped`; `no route` without one.
const GATEWAY_PROBE: &str = r#"python3 -c '
import socket, struct
gw = [l.split()[2] for l in open("/proc/net/route") if l.split()[1] == "00000000"]
if not gw:
    print("no route"); raise SystemExit
ip = socket.inet_ntoa(struct.pack("<I", int(gw[0], 16)))
s = socket.socket(); s.settimeout(1)
try:
    s.connect((ip, 22)); print("open")
except socket.timeout:
    print("dropped")
except OSError:
    print("refused")
'"#;

/// Prints the sandbox's network interfaces other than loopback (`only lo` when none),
/// then how a connection to `ADDR` port 53 ends: `unreachable` when there is no route,
/// `dropped`, `refused` or `open` otherwise.
const WAY_OUT_PROBE: &str = r#"python3 -c '
import errno, socket
links = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
print(" ".join(sorted(l for l in links if l != "lo")) or "only lo")
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("ADDR", 53)); print("open")
except socket.timeout:
    print("dropped")
except OSError as e:
    print("unreachable" if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "refused")
'"#;

/// The host's source address for the way out (its default route's): what a sandbox on
/// `none` must not reach either.
fn host_address() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:53").unwrap();
    s.local_addr().unwrap().ip().to_string()
}

/// Watches `dir` in sandbox `id` through the E2B API's polling watcher (the only
/// watches Warren serves) while `act` runs; the events seen, as `TYPE name`, once
/// `last` is among them (or after 15 s).
fn watched(d: &Daemon, id: &str, dir: &str, last: &str, act: impl FnOnce()) -> Vec<String> {
    let key = d.api_key();
    let r = d.http(
        Via::E2b,
        "GET",
        &format!("/sandboxes/{id}"),
        &[("X-API-Key", &key)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["envdAccessToken"].as_str().unwrap().to_string();
    let rpc = |method: &str, msg: serde_json::Value| {
        let r = d.http(
            Via::E2b,
            "POST",
            &format!("/filesystem.Filesystem/{method}"),
            &[
                ("E2b-Sandbox-Id", id),
                ("X-Access-Token", &token),
                // As E2B's default user (no `Authorization`): `user`, or in trust mode
                // the host account the operator chose, in the sandbox's directory.
                ("Content-Type", "application/json"),
            ],
            msg.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        r.json()
    };
    let watcher = rpc("CreateWatcher", serde_json::json!({ "path": dir }))["watcherId"]
        .as_str()
        .unwrap()
        .to_string();
    act();
    let mut seen = Vec::new();
    eventually(15, || {
        let events = rpc(
            "GetWatcherEvents",
            serde_json::json!({ "watcherId": watcher }),
        );
        for e in events["events"].as_array().into_iter().flatten() {
            seen.push(format!(
                "{} {}",
                e["type"].as_str().unwrap_or(""),
                e["name"].as_str().unwrap_or("")
            ));
        }
        seen.iter().any(|e| e == last)
    });
    rpc("RemoveWatcher", serde_json::json!({ "watcherId": watcher }));
    seen
}

/// What a terminal session through `GET /v1/sandboxes/{id}/pty` showed: its output, and
/// the exit notice that ended it.
#[derive(Debug)]
struct TerminalSession {
    output: String,
    exit: serde_json::Value,
}

/// Runs `cmd` on a terminal of 30 rows and 100 columns through the terminal WebSocket;
/// once its output shows `ready`, resizes the terminal to 40x120 and types `typed`. Reads
/// until the exit notice (at most 30 s).
fn on_a_terminal(d: &Daemon, id: &str, cmd: &str, ready: &str, typed: &str) -> TerminalSession {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
        let url = format!(
            "ws://localhost/v1/sandboxes/{id}/pty?rows=30&cols=100&cmd={}",
            trust::enc(cmd)
        );
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .unwrap_or_else(|e| panic!("the terminal of {id}: {e}"));
        let mut session = TerminalSession {
            output: String::new(),
            exit: serde_json::Value::Null,
        };
        let mut typed_yet = false;
        let read = async {
            while let Some(m) = ws.next().await {
                match m.unwrap_or_else(|e| panic!("the terminal of {id}: {e}")) {
                    Message::Binary(b) => session.output.push_str(&String::from_utf8_lossy(&b)),
                    Message::Text(t) => {
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                        if v.get("exit").is_some() || v.get("error").is_some() {
                            session.exit = v;
                            return;
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
                if !typed_yet && session.output.contains(ready) {
                    typed_yet = true;
                    ws.send(Message::text(r#"{"resize":{"rows":40,"cols":120}}"#))
                        .await
                        .unwrap();
                    ws.send(Message::binary(typed.as_bytes().to_vec()))
                        .await
                        .unwrap();
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
        session
    })
}

/// The same behaviour, whatever isolates it. `home` is a directory the sandbox's
/// default user may write (inside for isolating backends, on the host in trust mode).
/// A check the backend's capabilities rule out says so on stderr.
fn behaviour(d: &Daemon, backend: &serde_json::Value, home: impl Fn(&str) -> String) {
    let isolation = backend["name"].as_str().unwrap();
    let enforces = |l: &str| {
        backend["capabilities"]["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == l)
    };
    let mut flags = vec!["--isolation", isolation, "--memory", "128M"];
    if enforces("pids") {
        flags.extend(["--pids", "64"]);
    }
    let nat = backend["capabilities"]["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "nat");
    if nat {
        flags.extend(["--network", "nat"]);
    }
    let disk = enforces("disk");
    if disk {
        flags.extend(["--disk", "64M"]);
    }
    let cpu = enforces("cpu");
    if cpu {
        flags.extend(["--cpus", "0.5"]);
    }
    let id = d.create(&flags);
    let info = d.info(&id);
    assert_eq!(info["isolation"], isolation, "{info}");
    assert_eq!(info["state"], "running");

    // Exec: output, exit status, stdin-less commands, environment.
    let (code, out) = d.exec(&id, "echo hello; echo oops >&2");
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{isolation}");
    let (code, _) = d.exec(&id, "exit 7");
    assert_eq!(code, 7, "{isolation}");
    // A program that ends at once, started by argv (no shell), again and again: its
    // start never fails on its having ended before the agent was done with it.
    for _ in 0..20 {
        let r = post(
            d,
            &format!("/v1/sandboxes/{id}/exec"),
            &serde_json::json!({ "command": { "argv": ["true"] } }),
        );
        assert_eq!(r.status, 200, "{isolation}: {}", r.text());
        assert_eq!(r.json()["exit_code"], 0, "{isolation}: {}", r.text());
    }
    // Every process the agent starts is the OOM killer's first choice, never the agent.
    // Under gVisor no OOM killer chooses among them (the host's takes the Sentry, the
    // sandbox whole): the score is left alone, and with it the process's /proc
    // directory, which gVisor's kernel would keep after the process ended.
    let (code, out) = d.exec(&id, "cat /proc/$$/oom_score_adj");
    let score = if isolation == "gvisor" {
        "0\n"
    } else {
        "1000\n"
    };
    assert_eq!((code, out.as_str()), (0, score), "{isolation}");
    // From its first instruction: a program that reads its score at once (no shell
    // before it) never finds it still 0.
    for _ in 0..10 {
        let r = post(
            d,
            &format!("/v1/sandboxes/{id}/exec"),
            &serde_json::json!({ "command": { "argv": ["cat", "/proc/self/oom_score_adj"] } }),
        );
        assert_eq!(r.json()["stdout"], score, "{isolation}: {}", r.text());
    }
    // And the agent keeps the score it was given (the daemon's, which is this test's: a
    // score is inherited). A child that raised its own before exec, sharing the agent's
    // memory, raised the agent's with it.
    let ours = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let agent = if isolation == "gvisor" { "0\n" } else { &ours };
    let (code, out) = d.exec(&id, "cat /proc/$PPID/oom_score_adj");
    assert_eq!(
        (code, out.as_str()),
        (0, agent),
        "{isolation}: the agent's score"
    );
    // The agent holds its own score's file open: no process of the sandbox, its root
    // included, reaches a descriptor of the agent's. Nor does one write the agent's
    // score where the agent's files are the host's (a namespace sandbox's, trust mode's);
    // under runc and crun they are the container's root's, as the agent is, and that
    // root may raise its own agent's score (and nothing above it).
    if isolation != "gvisor" {
        let write = match isolation {
            "runc" | "crun" => "",
            _ => "echo 1000 2>/dev/null >/proc/$PPID/oom_score_adj && echo score-written;",
        };
        let (code, out) = d.exec(
            &id,
            &format!(
                "for f in /proc/$PPID/fd/*; do readlink $f >/dev/null 2>&1 && echo reached $f; \
                 cat $f >/dev/null 2>&1 </dev/null && echo opened $f; done; {write} \
                 cat /proc/$PPID/oom_score_adj"
            ),
        );
        assert_eq!(
            (code, out.as_str()),
            (0, agent),
            "{isolation}: the agent reached from inside"
        );
    }
    // It holds its stdio and nothing else of the agent's (the descriptor `ls` reads
    // through is its own), and none of the agent's blocked or ignored signals (gVisor's
    // status file has no signal lines).
    let r = post(
        d,
        &format!("/v1/sandboxes/{id}/exec"),
        &serde_json::json!({ "command": { "argv": ["ls", "/proc/self/fd"] } }),
    );
    assert_eq!(
        r.json()["stdout"],
        "0\n1\n2\n3\n",
        "{isolation}: {}",
        r.text()
    );
    let (code, out) = d.exec(&id, "grep -E '^Sig(Blk|Ign):' /proc/self/status || true");
    assert_eq!(code, 0, "{isolation}");
    let sig: Vec<&str> = out.lines().collect();
    if isolation != "gvisor" {
        assert_eq!(sig.len(), 2, "{isolation}: {out}");
    }
    for line in sig {
        assert!(line.ends_with("\t0000000000000000"), "{isolation}: {line}");
    }

    // A terminal: the process is on a pseudo-terminal of the size asked, follows a
    // resize, reads what is typed, and its exit code comes back.
    let t = on_a_terminal(
        d,
        &id,
        "tty; stty size; read line; stty size; echo got:$line; exit 3",
        "30 100",
        "typed\r",
    );
    assert_eq!(t.exit["exit"]["exit_code"], 3, "{isolation}: {t:?}");
    let lines: Vec<&str> = t.output.lines().map(str::trim_end).collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("/dev/pts/")),
        "{isolation}: tty said {lines:?}"
    );
    assert!(
        lines.contains(&"30 100") && lines.contains(&"40 120") && lines.contains(&"got:typed"),
        "{isolation}: the terminal's size, its resize and the typed line: {lines:?}"
    );

    // CPU: a quota of half a core holds two busy threads to about half a core.
    if cpu {
        common::assert_cpu_share_held(isolation, 0.5, || {
            let (_, out) = d.exec(&id, &format!("python3 -c '{}'", common::CPU_SPIN));
            out.trim().parse().unwrap_or(f64::NAN)
        });
    } else {
        eprintln!("BACKEND {isolation}: enforces no cpu limit: the quota check does not apply");
    }

    // A `nat` sandbox has a way out, and none into the host: its gateway is the host's
    // end of its link, where nothing answers (dropped, not refused). No packet leaves
    // the host.
    if nat {
        let (code, out) = d.exec(&id, GATEWAY_PROBE);
        assert_eq!((code, out.trim()), (0, "dropped"), "{isolation}");
    }
    // A sandbox on `none` has loopback only: no link, no route out, not even to the
    // host's own address.
    let offers_none = backend["capabilities"]["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "none");
    if offers_none {
        let shut = d.create(&["--isolation", isolation, "--network", "none", "--no-home"]);
        for to in ["1.1.1.1".to_string(), host_address()] {
            let (code, out) = d.exec(&shut, &WAY_OUT_PROBE.replace("ADDR", &to));
            assert_eq!(
                (code, out.as_str()),
                (0, "only lo\nunreachable\n"),
                "{isolation}: on `none`, towards {to}"
            );
        }
        d.ok(&["rm", &shut]);
    } else {
        eprintln!(
            "BACKEND {isolation}: no `none` network among its networks {}: the way-out check does not apply",
            backend["capabilities"]["networks"]
        );
    }

    // Files through the API, read back from a process.
    let dir = home(&id);
    let file = format!("{dir}/note.txt");
    let r = d.http(
        Via::Unix,
        "PUT",
        &format!("/v1/sandboxes/{id}/files?path={file}"),
        &[("Content-Type", "application/octet-stream")],
        b"written through the API",
    );
    assert!(
        r.status < 300,
        "{isolation}: write {file}: {} {}",
        r.status,
        r.text()
    );
    let (_, out) = d.exec(&id, &format!("cat {file}"));
    assert_eq!(out, "written through the API", "{isolation}");
    let (code, _) = d.exec(&id, &format!("echo from-inside > {dir}/made.txt"));
    assert_eq!(code, 0, "{isolation}");
    let r = d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{id}/files?path={dir}/made.txt"),
        &[],
        b"",
    );
    assert_eq!(r.text(), "from-inside\n", "{isolation}");
    // A watch on the home sees a file made, written and removed inside.
    let seen = watched(d, &id, &dir, "EVENT_TYPE_REMOVE gone.txt", || {
        let (code, _) = d.exec(
            &id,
            &format!("echo one > {dir}/w.txt; echo two >> {dir}/w.txt; mv {dir}/w.txt {dir}/gone.txt; rm {dir}/gone.txt"),
        );
        assert_eq!(code, 0, "{isolation}");
    });
    for event in [
        "EVENT_TYPE_CREATE w.txt",
        "EVENT_TYPE_WRITE w.txt",
        "EVENT_TYPE_RENAME w.txt",
        "EVENT_TYPE_REMOVE gone.txt",
    ] {
        assert!(
            seen.iter().any(|e| e == event),
            "{isolation}: a watch on {dir} saw {seen:?}, not {event}"
        );
    }
    if isolation != "process" {
        // The host's files that the template binds in cannot be changed from inside by
        // any path: written or truncated directly, or through a symbolic or hard link
        // planted in the writable layer or in a volume (a runtime that checks its own read-only flag
        // after opening the host file would truncate it first).
        let decoy = format!("/usr/local/share/warren-decoy-{}", std::process::id());
        std::fs::write(&decoy, "the host's own\n").unwrap();
        let script = format!(
            "(echo x > {decoy}); (: > {decoy}); (truncate -s 0 {decoy}); \
             ln -s {decoy} /root/l; (echo x > /root/l); (: > /root/l); \
             ln -s {decoy} {dir}/l; (echo x > {dir}/l); (: > {dir}/l); \
             (ln {decoy} /root/h && echo x > /root/h); (ln {decoy} {dir}/h && echo x > {dir}/h); \
             rm -f /root/l {dir}/l /root/h {dir}/h; true"
        );
        d.exec(&id, &script);
        let after = std::fs::read_to_string(&decoy).unwrap_or_default();
        let _ = std::fs::remove_file(&decoy);
        assert_eq!(
            after, "the host's own\n",
            "{isolation}: a host file was changed from inside"
        );
    }
    if ["gvisor", "runc", "crun"].contains(&isolation) {
        // Nor the agent's binary and libraries, kept once for every sandbox of a binary
        // and run again by every restore of a saved agent.
        let kept = || -> Vec<(PathBuf, u64)> {
            let ls = |dir: &Path| -> Vec<PathBuf> {
                std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect()
            };
            let mut v: Vec<(PathBuf, u64)> = ls(&d.data_dir().join("agent"))
                .into_iter()
                .flat_map(|k| [ls(&k), ls(&k.join("lib"))].concat())
                .filter(|p| p.is_file())
                .map(|p| {
                    let len = std::fs::metadata(&p).unwrap().len();
                    (p, len)
                })
                .collect();
            v.sort();
            v
        };
        let before = kept();
        assert!(
            before.iter().any(|(p, _)| p.ends_with("lib/libc.so.6")),
            "{isolation}: {before:?}"
        );
        d.exec(
            &id,
            "(: > /.warren/lib/libc.so.6); (echo x >> /.warren/lib/libc.so.6); \
             (truncate -s 0 /.warren/warren); (rm -f /.warren/lib/libm.so.6); \
             (ln /.warren/lib/libc.so.6 /root/h && : > /root/h); rm -f /root/h; true",
        );
        assert_eq!(
            kept(),
            before,
            "{isolation}: the agent's files changed from inside"
        );
        assert_eq!(d.exec(&id, "echo alive").1.trim(), "alive");
    }
    if backend["capabilities"]["volumes"] == true {
        // The home is the owner's volume: another sandbox of the owner, made while this
        // one runs, has the same files.
        let other = d.create(&flags);
        let (_, out) = d.exec(
            &other,
            &format!("cat {dir}/note.txt; echo and-back >> {dir}/made.txt"),
        );
        assert_eq!(
            out, "written through the API",
            "{isolation}: the home volume"
        );
        d.ok(&["rm", &other]);
        let (_, out) = d.exec(&id, &format!("cat {dir}/made.txt"));
        assert_eq!(
            out, "from-inside\nand-back\n",
            "{isolation}: the home volume"
        );
    }

    // The writable layer is as large as its disk: a write past it fails inside, and
    // what fits stays (through the pause below too).
    if disk {
        let (_, out) = d.exec(
            &id,
            "{ head -c 100M /dev/zero > /root/big; } 2>&1; echo status=$?; rm -f /root/big; \
             head -c 1M /dev/urandom > /root/kept && echo kept",
        );
        assert!(
            out.contains("No space left") && out.contains("status=1"),
            "{isolation}: 100M fit on a 64M disk: {out}"
        );
        assert!(out.contains("kept"), "{isolation}: {out}");
    }

    // Limits held by the kernel (or the backend's kernel): tasks, and memory last.
    // gVisor's task limit is held on the host's count of its threads and stops the
    // sandbox whole (`gvisor_fork_bomb_...`): here, a few children only, which must start.
    let refuses_forks = enforces("pids") && isolation != "gvisor";
    let n = if refuses_forks { "100" } else { "16" };
    let (_, out) = d.exec(&id, &FORKS.replace('N', n));
    let started: u32 = out.trim().parse().unwrap_or(999);
    assert!(
        !refuses_forks || started < 64,
        "{isolation}: {started} sleeps ran under --pids 64"
    );
    assert!(started > 0, "{isolation}: no child could be started: {out}");

    // Pause stops every process where it is; resume lets them go on.
    d.ok(&[
        "exec",
        "-d",
        &id,
        "--",
        "sh",
        "-c",
        &format!("i=0; while true; do i=$((i+1)); echo $i > {dir}/count; sleep 0.05; done"),
    ]);
    let read = |d: &Daemon| {
        let r = d.http(
            Via::Unix,
            "GET",
            &format!("/v1/sandboxes/{id}/files?path={dir}/count"),
            &[],
            b"",
        );
        r.text().trim().parse::<u64>().unwrap_or(0)
    };
    assert!(
        eventually(10, || read(d) > 0),
        "{isolation}: the counter never started"
    );
    d.ok(&["pause", &id]);
    assert_eq!(d.info(&id)["state"], "paused");
    let (code, _) = (
        d.http(
            Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            &[("Content-Type", "application/json")],
            br#"{"command":{"shell":"true"}}"#,
        )
        .status,
        (),
    );
    assert_eq!(code, 409, "{isolation}: exec in a paused sandbox");
    d.ok(&["resume", &id]);
    let a = read(d);
    assert!(
        eventually(10, || read(d) > a),
        "{isolation}: the counter did not go on"
    );
    if disk {
        let (_, out) = d.exec(&id, "stat -c %s /root/kept");
        assert_eq!(
            out.trim(),
            "1048576",
            "{isolation}: the disk after a resume"
        );
    }
    if refuses_forks {
        // The limit is still held after a resume.
        let (_, out) = d.exec(&id, &FORKS.replace('N', "100"));
        let started: u32 = out.trim().parse().unwrap_or(999);
        assert!(
            started > 0 && started < 64,
            "{isolation}: {started} sleeps ran under --pids 64 after a resume"
        );
    }

    // Stop ends every process and keeps the files (the writable layer's and the
    // home's); start brings the sandbox back, with its limits.
    let (code, _) = d.exec(&id, &format!("echo before-stop > {dir}/stop.txt"));
    assert_eq!(code, 0, "{isolation}");
    d.ok(&["stop", &id]);
    assert_eq!(d.info(&id)["state"], "stopped", "{isolation}");
    let r = post(
        d,
        &format!("/v1/sandboxes/{id}/exec"),
        &serde_json::json!({"command": {"shell": "true"}}),
    );
    assert_eq!(
        r.status,
        409,
        "{isolation}: exec in a stopped sandbox: {}",
        r.text()
    );
    d.ok(&["start", &id]);
    assert_eq!(d.info(&id)["state"], "running", "{isolation}");
    let (code, out) = d.exec(
        &id,
        &format!("cat {dir}/note.txt; echo; cat {dir}/stop.txt"),
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "written through the API\nbefore-stop\n"),
        "{isolation}: the home after a stop and a start"
    );
    if disk {
        let (_, out) = d.exec(&id, "stat -c %s /root/kept");
        assert_eq!(
            out.trim(),
            "1048576",
            "{isolation}: the writable layer after a start"
        );
    }
    let a = read(d);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(d), a, "{isolation}: the counter ran on through a stop");
    if refuses_forks {
        let (_, out) = d.exec(&id, &FORKS.replace('N', "100"));
        let started: u32 = out.trim().parse().unwrap_or(999);
        assert!(
            started > 0 && started < 64,
            "{isolation}: {started} sleeps ran under --pids 64 after a start"
        );
    }

    // Memory: a process past the limit is killed, or (gVisor, whose Sentry is one host
    // process) the whole sandbox is stopped; either way the host is untouched.
    let body = serde_json::json!({"command": {"shell":
        "python3 -c 'b = bytearray(400 << 20); print(len(b))' >/dev/null 2>&1; echo $?"}});
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    if r.status == 200 {
        let out = r.json()["stdout"].as_str().unwrap_or("").trim().to_string();
        assert_ne!(out, "0", "{isolation}: 400 MiB fit under a 128M limit");
    } else {
        assert_eq!(
            isolation,
            "gvisor",
            "{isolation}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            eventually(15, || d.info(&id)["state"] != "running"),
            "{isolation}: a sandbox whose agent died still counts as running"
        );
        assert!(
            eventually(15, || d.ok(&["events", &id]).contains("out of memory")),
            "{isolation}: the stop is not told as out of memory: {}",
            d.ok(&["events", &id])
        );
    }

    // Removal leaves nothing.
    d.ok(&["rm", &id]);
    let r = d.http(Via::Unix, "GET", &format!("/v1/sandboxes/{id}"), &[], b"");
    assert_eq!(r.status, 404, "{isolation}");
}

#[test]
fn every_available_backend_behaves_the_same() {
    if !can_run("every_available_backend_behaves_the_same") {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    for b in backends(&d) {
        let name = b["name"].as_str().unwrap().to_string();
        if b["available"] != true {
            warren_testkit::skip(
                &format!("every_available_backend_behaves_the_same ({name})"),
                b["reason"].as_str().unwrap_or("unavailable"),
            );
            continue;
        }
        match name.as_str() {
            "process" => {
                let base = spaces.0.clone();
                behaviour(&d, &b, move |id| base.join(id).display().to_string())
            }
            _ => behaviour(&d, &b, |_| "/home/user".to_string()),
        }
        eprintln!("BACKEND {name}: behaviour suite passed");
    }
    d.finish();
}

#[test]
fn the_backends_list_says_what_each_offers() {
    if !can_run("the_backends_list_says_what_each_offers") {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    let list = backends(&d);
    let names: Vec<&str> = list.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["namespace", "gvisor", "runc", "crun", "process"]);
    let ns = &list[0];
    assert_eq!(ns["available"], true);
    assert_eq!(
        ns["capabilities"]["networks"],
        serde_json::json!(["none", "nat"])
    );
    assert_eq!(ns["capabilities"]["volumes"], true);
    assert_eq!(
        ns["capabilities"]["publish"],
        serde_json::json!(["none", "nat"])
    );
    for b in &list[1..4] {
        if b["available"] == true {
            assert_eq!(
                b["capabilities"]["networks"],
                serde_json::json!(["none", "nat"])
            );
            assert_eq!(b["capabilities"]["volumes"], true);
        }
    }
    // On `none` gVisor's network is its own, which the host cannot reach.
    assert_eq!(
        entry(&list, "gvisor")["capabilities"]["publish"],
        serde_json::json!(["nat"])
    );
    assert_eq!(
        entry(&list, "process")["capabilities"]["publish"],
        serde_json::json!([])
    );
    // The runc-compatible runtimes say what they are and what they lack, and why.
    for name in ["runc", "crun"] {
        let b = entry(&list, name);
        if b["available"] != true {
            assert!(
                b["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("apt-get install"),
                "{b}"
            );
            continue;
        }
        let caps = &b["capabilities"];
        assert_eq!(caps["strong_isolation"], false, "{b}");
        assert_eq!(caps["memory_snapshots"], false, "{b}");
        assert_eq!(caps["pause"], true, "{b}");
        assert_eq!(
            caps["limits"],
            serde_json::json!(["memory", "cpu", "pids", "disk"])
        );
        assert!(
            caps["isolation"].as_str().unwrap().contains(name),
            "the runtime's version: {b}"
        );
        assert!(
            caps["lacking"]["memory_snapshots"]
                .as_str()
                .unwrap_or("")
                .contains("CRIU"),
            "{b}"
        );
    }
    let process = entry(&list, "process");
    assert_eq!(process["available"], true, "{process}");
    assert_eq!(process["capabilities"]["strong_isolation"], false);
    assert_eq!(
        process["capabilities"]["networks"],
        serde_json::json!(["host"])
    );
    let o = d.ok(&["backends"]);
    assert!(o.contains("namespace  available"), "{o}");
    assert!(o.contains("ports published on: none, nat;"), "{o}");
    if entry(&list, "runc")["available"] == true {
        assert!(
            o.contains("no memory snapshots: runc checkpoints through CRIU"),
            "{o}"
        );
    }
    d.finish();

    // Without the operator's table, trust mode is off and says how to turn it on.
    let d = Daemon::start(false);
    let list = backends(&d);
    let process = entry(&list, "process");
    assert_eq!(process["available"], false);
    assert!(
        process["reason"]
            .as_str()
            .unwrap()
            .contains("[backends.process]"),
        "{process}"
    );
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({"isolation": "process"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    d.finish();
}

#[test]
fn a_request_no_backend_can_serve_is_refused_before_anything_is_recorded() {
    if !can_run("a_request_no_backend_can_serve_is_refused_before_anything_is_recorded") {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    // Every lifecycle event of the tenant, from before the first request.
    let mut events = d
        .warren(&["events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run warren events");
    std::thread::sleep(Duration::from_millis(300));
    let port = serde_json::json!([{"host": 0, "sandbox": 80}]);
    let refused = [
        // Trust mode has the host's network; it cannot make a `nat` one.
        serde_json::json!({"name": "a", "isolation": "process", "network": "nat"}),
        // Nor enforce a disk limit.
        serde_json::json!({"name": "b", "isolation": "process", "resources": {"disk": 1 << 30}}),
        // A namespace sandbox never gets the host's network.
        serde_json::json!({"name": "c", "network": "host"}),
        serde_json::json!({"name": "d", "isolation": "vm"}),
        // Trust mode's ports are the host's already: it publishes none.
        serde_json::json!({"name": "e", "isolation": "process", "publish": port}),
        // gVisor on `none` has a network of its own the host cannot reach (refused as
        // unavailable where it is).
        serde_json::json!({"name": "f", "isolation": "gvisor", "publish": port}),
        // Requirements no one backend meets: memory snapshots (gVisor's) on the host's
        // network (trust mode's).
        serde_json::json!({"name": "g", "network": "host", "requires": {"memory_snapshots": true}}),
        // A backend named with a requirement it does not meet.
        serde_json::json!({"name": "i", "isolation": "namespace",
                           "requires": {"memory_snapshots": true}}),
        // A memory requirement above the memory asked for.
        serde_json::json!({"name": "h", "resources": {"memory": 64 << 20},
                           "requires": {"memory": 128 << 20}}),
    ];
    for body in refused {
        let r = post(&d, "/v1/sandboxes", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        if body["isolation"] != "vm" {
            assert_eq!(r.code(), "invalid_request", "{body}: {}", r.text());
        }
        assert!(!r.text().is_empty());
    }
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({"isolation": "namespace", "requires": {"profile": "snapshots"}}),
    );
    assert!(
        r.text()
            .contains("the namespace backend has no memory snapshots"),
        "{}",
        r.text()
    );
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({"isolation": "process", "publish": port}),
    );
    assert!(r.text().contains("publishes no ports"), "{}", r.text());
    if entry(&backends(&d), "gvisor")["available"] == true {
        let r = post(
            &d,
            "/v1/sandboxes",
            &serde_json::json!({"isolation": "gvisor", "publish": port}),
        );
        assert!(r.text().contains("--network nat"), "{}", r.text());
    }
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({"network": "host", "requires": {"memory_snapshots": true}}),
    );
    let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.starts_with("no backend here offers"), "{msg}");
    assert!(msg.contains("namespace offers no `host` network"), "{msg}");
    assert!(msg.contains("process has no memory snapshots"), "{msg}");
    // A tenant the operator did not name cannot ask for trust mode.
    let key = d
        .ok(&["keys", "create", "--tenant", "other"])
        .trim()
        .to_string();
    let r = d.as_tenant(&key, "POST", "/v1/sandboxes", r#"{"isolation":"process"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not open to tenant"), "{}", r.text());
    // Nothing was recorded: no sandbox, no event. A sandbox made last shows the stream
    // was listening: its `created` is the first event there.
    let r = d.http(Via::Unix, "GET", "/v1/sandboxes", &[], b"");
    assert_eq!(r.json(), serde_json::json!([]));
    let id = d.create(&["--no-home"]);
    let mut seen = String::new();
    let shown = eventually(10, || {
        seen = d.ok(&["events", &id]);
        seen.contains("created")
    });
    assert!(shown, "{seen}");
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let out = events.wait_with_output().expect("warren events");
    let out = String::from_utf8_lossy(&out.stdout);
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.contains(&id) && first.contains("created"),
        "events before the control sandbox's:\n{out}"
    );
    assert!(!out.contains("failed"), "{out}");
    d.finish();
}

#[test]
fn a_request_naming_no_backend_gets_the_first_that_offers_what_it_requires() {
    let test = "a_request_naming_no_backend_gets_the_first_that_offers_what_it_requires";
    let Some((_t, _spaces, d)) = gvisor_test(test) else {
        return;
    };
    let made_on = |body: serde_json::Value| -> (String, serde_json::Value) {
        let r = post(&d, "/v1/sandboxes", &body);
        assert_eq!(r.status, 201, "{body}: {}", r.text());
        let info = r.json();
        let id = info["id"].as_str().unwrap().to_string();
        d.saw(&id);
        (id, info)
    };
    // The daemon's default (namespace) when it offers everything.
    let (id, info) = made_on(serde_json::json!({
        "home_volume": false,
        "requires": {"pause": true, "memory": 96 << 20}
    }));
    assert_eq!(info["isolation"], "namespace", "{info}");
    // At least that much: the daemon's default limit is kept when it is more.
    assert!(
        info["resources"]["memory"].as_u64().unwrap_or(0) >= 96 << 20,
        "{info}"
    );
    d.ok(&["rm", &id]);
    // Memory snapshots and strong isolation are gVisor's.
    let (id, info) = made_on(serde_json::json!({
        "home_volume": false,
        "requires": {"memory_snapshots": true}
    }));
    assert_eq!(info["isolation"], "gvisor", "{info}");
    d.ok(&["rm", &id]);
    let (id, info) = made_on(serde_json::json!({
        "home_volume": false,
        "requires": {"profile": "untrusted"}
    }));
    assert_eq!(info["isolation"], "gvisor", "{info}");
    d.ok(&["rm", &id]);
    // So from the CLI.
    let id = d.create(&["--no-home", "--require", "strong-isolation"]);
    assert_eq!(d.info(&id)["isolation"], "gvisor");
    d.ok(&["rm", &id]);
    // Strong isolation with a port on `none`: gVisor cannot publish there, and every
    // other backend shares the host kernel. Refused, nothing recorded.
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({
            "name": "nowhere",
            "publish": [{"host": 0, "sandbox": 80}],
            "requires": {"strong_isolation": true}
        }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.starts_with("no backend here offers all this request needs together"),
        "{msg}"
    );
    assert!(msg.contains("gvisor publishes no ports on `none`"), "{msg}");
    assert!(msg.contains("namespace shares the host kernel"), "{msg}");
    // On `nat` gVisor publishes.
    let (id, info) = made_on(serde_json::json!({
        "home_volume": false,
        "network": "nat",
        "publish": [{"host": 0, "sandbox": 80}],
        "requires": {"strong_isolation": true}
    }));
    assert_eq!(info["isolation"], "gvisor", "{info}");
    d.ok(&["rm", &id]);
    let r = d.http(Via::Unix, "GET", "/v1/sandboxes", &[], b"");
    assert_eq!(r.json(), serde_json::json!([]));
    d.finish();
}

#[test]
fn a_trust_mode_sandbox_is_its_users_processes_in_its_directory() {
    if !can_run("a_trust_mode_sandbox_is_its_users_processes_in_its_directory") {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let mut d = daemon(&spaces.0, "");
    let id = d.create(&["--isolation", "process", "--memory", "64M"]);
    let (_, out) = d.exec(&id, "id -un; pwd; echo $HOME; cat /proc/self/cgroup");
    let lines: Vec<&str> = out.lines().collect();
    let dir = spaces.0.join(&id).display().to_string();
    assert_eq!(lines[0], "nobody", "{out}");
    assert_eq!(lines[1], dir, "{out}");
    assert_eq!(lines[2], dir, "{out}");
    assert!(
        out.contains(&format!("warren-{id}")),
        "not in its cgroup: {out}"
    );
    // It may not write where its user may not.
    let (code, _) = d.exec(&id, "touch /etc/warren-trust-test");
    assert_ne!(code, 0);
    assert!(!Path::new("/etc/warren-trust-test").exists());
    // A restarted daemon finds it again.
    d.shut_down();
    d.spawn();
    let (code, out) = d.exec(&id, "echo still here");
    assert_eq!((code, out.as_str()), (0, "still here\n"));
    d.ok(&["rm", &id]);
    assert!(!spaces.0.join(&id).exists(), "its directory outlived it");
    d.finish();
}

/// Whether process `pid` runs (a zombie does not).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(
            state.and_then(|r| r.chars().next()),
            Some('Z') | Some('X') | None
        )
    })
}

#[test]
fn a_gvisor_removal_answers_once_its_sentry_is_gone_and_the_rest_follows() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_gvisor_removal_answers_once_its_sentry_is_gone_and_the_rest_follows")
    else {
        return;
    };
    let id = d.create(&["--isolation", "gvisor"]);
    d.ok(&["exec", "-d", &id, "--", "sleep", "1000"]);
    let run = d.run_dir().join(format!("sandboxes/{id}"));
    let sentry: i32 = std::fs::read_to_string(run.join("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(runs(sentry), "no Sentry at {sentry}");
    assert!(run.join("template").exists());
    d.ok(&["rm", &id]);
    // Answered: its Sentry, and every process of the sandbox with it, is gone, and
    // nothing runs from its template any more.
    assert!(!runs(sentry), "the Sentry {sentry} outlived the answer");
    assert!(
        !run.join("template").exists(),
        "its template is still marked used"
    );
    assert!(!d.data_dir().join(format!("sandboxes/{id}")).exists());
    // The rest (runsc's state, the cgroups, the gofer's mounts, the run directory)
    // follows on its own; the daemon waits for it at exit, and nothing is left.
    assert!(eventually(10, || !run.exists()), "its run directory stayed");
    d.finish();
}

#[test]
fn a_paused_gvisor_sandbox_keeps_its_processes_on_disk_and_holds_no_memory() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_paused_gvisor_sandbox_keeps_its_processes_on_disk_and_holds_no_memory")
    else {
        return;
    };
    let id = d.create(&["--isolation", "gvisor", "--memory", "256M", "--cpus", "0.5"]);
    // gVisor's kernel reports the memory limit as the memory there is (programs size
    // their heaps and caches by it), at the start and after a restore.
    let mem_total = |d: &Daemon| d.exec(&id, "grep MemTotal /proc/meminfo").1;
    assert!(
        mem_total(&d).contains(" 262144 kB"),
        "MemTotal is not the limit: {}",
        mem_total(&d)
    );
    // The Sentry, which holds every process of the sandbox, is in the sandbox's cgroup
    // in the hierarchies that hold its limits (runsc places nothing itself), and so is
    // every host process of the sandbox: the gofer's, the Sentry's stubs.
    let in_its_cgroup = |d: &Daemon| {
        let sentry: i32 =
            std::fs::read_to_string(d.run_dir().join(format!("sandboxes/{id}/helper.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        let lines = std::fs::read_to_string(format!("/proc/{sentry}/cgroup")).unwrap();
        for ctrl in ["memory", "pids", "cpu"] {
            let line = lines.lines().find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == ctrl))
            });
            assert!(
                line.is_some_and(|l| l.ends_with(&format!("/warren-{id}"))),
                "the Sentry is outside its {ctrl} cgroup: {lines}"
            );
        }
    };
    in_its_cgroup(&d);
    // A counter in memory only, and a listener with a connection's worth of state.
    // Written whole (a rename), so a reader never sees a half-written file.
    python_in_background(&d, &id, "import os, time\ni = 0\nwhile True:\n    i += 1\n    open('/tmp/c.new', 'w').write(str(i))\n    os.replace('/tmp/c.new', '/tmp/count')\n    time.sleep(0.05)");
    python_in_background(&d, &id, "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 7000))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'still here')\n    c.close()");
    let count = |d: &Daemon| -> u64 {
        let (_, out) = d.exec(&id, "cat /tmp/count");
        out.trim().parse().unwrap_or(0)
    };
    assert!(eventually(20, || count(&d) > 5), "the counter never ran");
    let sentry = std::fs::read_to_string(d.run_dir().join(format!("sandboxes/{id}/helper.pid")))
        .unwrap()
        .trim()
        .to_string();
    d.ok(&["pause", &id]);
    assert_eq!(d.info(&id)["state"], "paused");
    // Nothing of it runs on the host: the Sentry is gone, its memory with it (the
    // pause answers once the memory is saved; the Sentry frees it right after).
    assert!(
        eventually(10, || !Path::new(&format!("/proc/{sentry}")).exists()),
        "the Sentry {sentry} still runs while paused"
    );
    // On disk, in its data directory: the run directory is often a tmpfs, where the
    // image would hold as much memory as the processes it saved.
    let image = d.data_dir().join(format!("sandboxes/{id}/image"));
    assert!(!d.run_dir().join(format!("sandboxes/{id}/image")).exists());
    let bytes: u64 = walk_size(&image);
    eprintln!("GVISOR paused to disk: image {} KiB", bytes >> 10);
    assert!(bytes > 0);
    // A daemon restart keeps it paused, on disk.
    let mut d = d;
    d.shut_down();
    d.spawn();
    assert_eq!(d.info(&id)["state"], "paused");
    d.ok(&["resume", &id]);
    assert_eq!(d.info(&id)["state"], "running");
    assert!(mem_total(&d).contains(" 262144 kB"), "{}", mem_total(&d));
    in_its_cgroup(&d);
    let after = count(&d);
    assert!(after > 5, "the counter started again from nothing: {after}");
    assert!(
        eventually(10, || count(&d) > after),
        "the counter did not go on"
    );
    let (_, out) = d.exec(
        &id,
        "python3 -c \"import socket; print(socket.create_connection(('127.0.0.1', 7000)).recv(20).decode())\"",
    );
    assert_eq!(out.trim(), "still here");
    // The save and the restore ran without the CPU limit (the Sentry's own work, no
    // process of the sandbox running): it holds again once the processes go on.
    common::assert_cpu_share_held("gvisor", 0.5, || {
        let (_, out) = d.exec(&id, &format!("python3 -c '{}'", common::CPU_SPIN));
        out.trim().parse().unwrap_or(f64::NAN)
    });
    d.ok(&["rm", &id]);
    d.finish();
}

/// Every command a sandbox ran used to leave its /proc directory in gVisor's kernel
/// (the agent's child listed /proc/self/fd and wrote its OOM score there), saved by
/// every checkpoint after: 420 commands made an idle shell's pause 1.9 s instead of
/// 0.08, and its image 1.6 MiB instead of 0.3. Measured on the kernel's state
/// (`checkpoint.img`), not its memory (`pages.img`), which the agent's heap moves.
#[test]
fn a_gvisor_pause_does_not_grow_with_the_commands_the_sandbox_ran() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_gvisor_pause_does_not_grow_with_the_commands_the_sandbox_ran")
    else {
        return;
    };
    let id = d.create(&["--isolation", "gvisor"]);
    let state = d
        .data_dir()
        .join(format!("sandboxes/{id}/image/checkpoint.img"));
    d.ok(&["pause", &id]);
    let before = walk_size(&state);
    d.ok(&["resume", &id]);
    for _ in 0..60 {
        assert_eq!(d.exec(&id, "true").0, 0);
    }
    d.ok(&["pause", &id]);
    let after = walk_size(&state);
    eprintln!(
        "GVISOR kernel state before 60 commands {} KiB, after {} KiB",
        before >> 10,
        after >> 10
    );
    assert!(before > 0, "no kernel state at {}", state.display());
    assert!(
        after < before + (32 << 10),
        "the kernel's state grew from {before} to {after} bytes over 60 commands"
    );
    d.ok(&["rm", &id]);
    d.finish();
}

fn walk_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| walk_size(&e.path())).sum())
        .unwrap_or(0)
}

#[test]
fn a_template_names_the_backend_of_requests_that_name_none() {
    if !can_run("a_template_names_the_backend_of_requests_that_name_none") {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    let built = d.ok(&[
        "template",
        "build",
        "--name",
        "trusted",
        "--run",
        "true",
        "--isolation",
        "process",
    ]);
    assert!(built.contains("trusted"), "{built}");
    let r = d.http(Via::Unix, "GET", "/v1/templates/trusted", &[], b"");
    assert_eq!(r.json()["isolation"], "process", "{}", r.text());
    // No isolation in the request (as an E2B create): the template's.
    let id = d.create(&["--template", "trusted"]);
    assert_eq!(d.info(&id)["isolation"], "process");
    // A request that names one wins.
    let id2 = d.create(&["--template", "trusted", "--isolation", "namespace"]);
    assert_eq!(d.info(&id2)["isolation"], "namespace");
    d.ok(&["rm", &id]);
    d.ok(&["rm", &id2]);
    d.ok(&["template", "rm", "trusted"]);
    d.finish();
}

#[test]
fn a_fork_copies_the_files_and_on_gvisor_the_processes() {
    if !can_run("a_fork_copies_the_files_and_on_gvisor_the_processes") {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    // The namespace backend has no memory snapshots: its copies have its files, and
    // the template's processes, not its own.
    let ns = d.create(&[]);
    d.exec(&ns, "echo source > /tmp/who; (sleep 600 &)");
    let r = post(
        &d,
        &format!("/v1/sandboxes/{ns}/fork"),
        &serde_json::json!({"count": 2}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let copies: Vec<String> = r
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["id"].as_str().expect("an id").to_string())
        .collect();
    assert_eq!(copies.len(), 2, "{}", r.text());
    for c in &copies {
        assert_eq!(d.exec(c, "cat /tmp/who").1.trim(), "source");
        assert!(!d.exec(c, "ps -eo args").1.contains("sleep 600"));
        d.exec(c, &format!("echo {c} > /tmp/who"));
    }
    assert_eq!(d.exec(&ns, "cat /tmp/who").1.trim(), "source");
    // The files they start from are not shown as a template.
    assert!(
        !d.ok(&["template", "ls"]).contains(&ns),
        "a fork's template is listed"
    );
    for c in copies.iter().chain([&ns]) {
        d.ok(&["rm", c]);
    }
    if !gvisor_here(&d, "a_fork_copies_the_files_and_on_gvisor_the_processes") {
        d.finish();
        return;
    }
    let id = d.create(&["--isolation", "gvisor", "--memory", "256M"]);
    // State only in memory: a counter, and a value the copies must share.
    start_secret_counter(&d, &id);
    // A file held open, renamed away as soon as the process finds it was stopped (a
    // gap in its clock: its memory being saved) and not made again for a while. Files
    // copied after the source went on would lack it, and a copy restored holding it
    // open would fail: the copies' files must be of the moment their memory was saved.
    python_in_background(
        &d,
        &id,
        "import os, time\n\
         f = open('/tmp/held', 'w')\n\
         last, n = time.monotonic(), 0\n\
         while True:\n\
         \x20   time.sleep(0.01)\n\
         \x20   now = time.monotonic()\n\
         \x20   if now - last > 0.05:\n\
         \x20       n += 1\n\
         \x20       os.rename('/tmp/held', f'/tmp/held.{n}')\n\
         \x20       f.close()\n\
         \x20       time.sleep(3)\n\
         \x20       f = open('/tmp/held', 'w')\n\
         \x20       now = time.monotonic()\n\
         \x20   last = now",
    );
    d.exec(&id, "echo source > /root/who");
    let state = secret_and_count;
    assert!(
        eventually(20, || state(&d, &id).1 > 3),
        "the counter never ran"
    );
    let r = post(
        &d,
        &format!("/v1/sandboxes/{id}/fork"),
        &serde_json::json!({"count": 2}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let copies: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["access_token"].is_string(), "{c}");
            c["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(copies.len(), 2);
    let (secret, _) = state(&d, &id);
    for c in &copies {
        d.saw(c);
        assert_ne!(c, &id);
        assert_eq!(d.info(c)["isolation"], "gvisor");
        let (s, n) = state(&d, c);
        assert_eq!(s, secret, "copy {c} does not carry the source's memory");
        assert!(
            eventually(10, || state(&d, c).1 > n),
            "copy {c}: its counter stopped"
        );
        // Its own files (its writable layer; the home is the owner's volume, shared):
        // a change in one copy is not in the others.
        let (_, who) = d.exec(c, "cat /root/who");
        assert_eq!(who.trim(), "source");
        d.exec(c, &format!("echo {c} > /root/who"));
    }
    let (_, who) = d.exec(&id, "cat /root/who");
    assert_eq!(who.trim(), "source", "a copy wrote into the source's files");
    // The source ran on.
    let before = state(&d, &id).1;
    assert!(eventually(10, || state(&d, &id).1 > before));
    for c in copies.iter().chain([&id]) {
        d.ok(&["rm", c]);
    }
    assert!(
        std::fs::read_dir(d.run_dir().join("forks")).map_or(true, |mut e| e.next().is_none()),
        "a fork's image was left behind"
    );
    d.finish();
}

#[test]
fn a_template_with_memory_starts_its_sandboxes_warm() {
    let Some((_t, _spaces, d)) = gvisor_test("a_template_with_memory_starts_its_sandboxes_warm")
    else {
        return;
    };
    // A namespace sandbox cannot save its memory, and says which backend can.
    let ns = d.create(&[]);
    let r = post(
        &d,
        &format!("/v1/sandboxes/{ns}/snapshot"),
        &serde_json::json!({"name": "ns-warm", "memory": true}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("gvisor"), "{}", r.text());
    d.ok(&["rm", &ns]);

    let id = d.create(&["--isolation", "gvisor", "--memory", "256M"]);
    // A "warm-up" whose result lives only in memory, then a counter going on from it.
    start_secret_counter(&d, &id);
    d.exec(&id, "echo source > /root/who");
    let state = secret_and_count;
    assert!(
        eventually(20, || state(&d, &id).1 > 3),
        "the counter never ran"
    );
    let out = d.ok(&["snapshot", &id, "--name", "warm", "--memory"]);
    assert_eq!(out.trim(), "warm");
    let (warm, at) = state(&d, &id);
    // The source goes on, running.
    assert_eq!(d.info(&id)["state"], "running");
    assert!(
        eventually(10, || state(&d, &id).1 > at),
        "the source stopped"
    );
    let listed = d.ok(&["template", "inspect", "warm"]);
    assert!(listed.contains("image_bytes"), "{listed}");

    // Two sandboxes of the template: the process is there, warm, and goes on; each
    // has its own files.
    let copies = [
        d.create(&["--template", "warm"]),
        d.create(&["--template", "warm"]),
    ];
    for c in &copies {
        assert_eq!(d.info(c)["isolation"], "gvisor");
        let (s, n) = state(&d, c);
        assert_eq!(s, warm, "{c} does not carry the template's memory");
        assert!(n > 3, "{c}: the counter started again from nothing: {n}");
        assert!(
            eventually(10, || state(&d, c).1 > n),
            "{c}: its counter stopped"
        );
        assert_eq!(d.exec(c, "cat /root/who").1.trim(), "source");
        d.exec(c, &format!("echo {c} > /root/who"));
    }
    assert_eq!(d.exec(&copies[0], "cat /root/who").1.trim(), copies[0]);
    assert_eq!(d.exec(&id, "cat /root/who").1.trim(), "source");
    // Only gVisor restores it; no pool boots it cold; in use, it stays.
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({"template": "warm", "isolation": "namespace"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = d.http(Via::Unix, "DELETE", "/v1/templates/warm", &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    for c in copies.iter().chain([&id]) {
        d.ok(&["rm", c]);
    }
    d.ok(&["template", "rm", "warm"]);
    // Nothing of it, nor of its saving, is left.
    let templates = d.data_dir().join("templates");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&templates).unwrap().flatten() {
        names.push(e.file_name().to_string_lossy().into_owned());
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                names.push(f.file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        !names
            .iter()
            .any(|n| n == "warm" || n.starts_with(".memory-")),
        "left under templates/: {names:?}"
    );
    d.finish();
}

/// An upgrade between a save and its restore: a new binary (the build with a byte
/// appended: another file, other contents) resumes a sandbox an old one paused with its
/// memory, and starts one from a template's memory the old one saved. The restored agent
/// maps the very binary and libraries it mapped when it was saved, kept for it in the
/// data directory (it crashed under the new binary's text before, and the resume
/// failed); what nothing needs any more goes at the next start.
#[test]
fn a_new_binary_restores_what_an_old_one_saved_with_memory() {
    let test = "a_new_binary_restores_what_an_old_one_saved_with_memory";
    let Some((_t, _spaces, d)) = gvisor_test(test) else {
        return;
    };
    let mut d = d;
    let id = d.create(&["--isolation", "gvisor", "--memory", "256M"]);
    start_secret_counter(&d, &id);
    assert!(
        eventually(20, || secret_and_count(&d, &id).1 > 3),
        "the counter never ran"
    );
    // A record that cannot be copied fails the pause before the agent lets go of its
    // socket: the sandbox goes on, reachable.
    let record = d.run_dir().join(format!("sandboxes/{id}/agent"));
    let key = std::fs::read_to_string(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir(&record).unwrap();
    let o = d.run(&["pause", &id]);
    assert!(!o.status.success(), "a pause without its record went on");
    assert_eq!(d.info(&id)["state"], "running");
    assert_eq!(d.exec(&id, "echo still").1.trim(), "still");
    std::fs::remove_dir(&record).unwrap();
    std::fs::write(&record, key).unwrap();
    d.ok(&["snapshot", &id, "--name", "warm-old", "--memory"]);
    let (secret, at) = secret_and_count(&d, &id);
    d.ok(&["pause", &id]);
    let agent_dir = d.data_dir().join("agent");
    let kept = || -> Vec<String> {
        std::fs::read_dir(&agent_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    assert_eq!(kept().len(), 1, "{:?}", kept());

    // The new binary.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let newer = dir.path().join("warren");
    std::fs::copy(env!("CARGO_BIN_EXE_warren"), &newer).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newer)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\n"))
        .unwrap();
    d.shut_down();
    d.set_exe(newer);
    d.spawn();
    assert_eq!(d.info(&id)["state"], "paused");
    d.ok(&["resume", &id]);
    let (s, n) = secret_and_count(&d, &id);
    assert_eq!(s, secret, "the resumed sandbox lost its memory");
    assert!(n >= at, "its counter went back: {n} < {at}");
    assert!(
        eventually(10, || secret_and_count(&d, &id).1 > n),
        "its counter did not go on under the new binary"
    );
    let warm = d.create(&["--template", "warm-old"]);
    assert!(
        eventually(10, || secret_and_count(&d, &warm).1 > 3),
        "a sandbox from the old binary's saved memory does not run"
    );
    assert_eq!(secret_and_count(&d, &warm).0, secret);
    // A new sandbox runs from the new binary's files; both kept while something needs
    // the old ones.
    let fresh = d.create(&["--isolation", "gvisor"]);
    assert_eq!(d.exec(&fresh, "echo up").1.trim(), "up");
    assert_eq!(kept().len(), 2, "{:?}", kept());
    d.ok(&["rm", &id, &warm, &fresh]);
    d.ok(&["template", "rm", "warm-old"]);
    d.shut_down();
    d.spawn();
    assert_eq!(
        kept().len(),
        1,
        "the old binary's files stayed: {:?}",
        kept()
    );
    d.finish();
}

#[test]
fn a_pool_of_a_template_with_memory_holds_sandboxes_restored_ahead() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_pool_of_a_template_with_memory_holds_sandboxes_restored_ahead")
    else {
        return;
    };
    let id = d.create(&["--isolation", "gvisor", "--no-home"]);
    start_secret_counter(&d, &id);
    assert!(
        eventually(20, || secret_and_count(&d, &id).1 > 3),
        "the counter never ran"
    );
    d.ok(&["snapshot", &id, "--name", "warm-pool", "--memory"]);
    let (secret, _) = secret_and_count(&d, &id);
    d.ok(&["rm", &id]);

    // Only where a create from it could be: on gvisor, on `none`.
    for (body, says) in [
        (
            serde_json::json!({"template": "warm-pool", "min": 1, "max": 1}),
            "gvisor",
        ),
        (
            serde_json::json!({"template": "warm-pool", "isolation": "gvisor", "network": "nat", "min": 1, "max": 1}),
            "none",
        ),
    ] {
        let r = post(&d, "/v1/pools", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    // Named as the caller's creates name it (the snapshot is its tenant's own).
    let pool =
        serde_json::json!({"template": "warm-pool", "isolation": "gvisor", "min": 1, "max": 1});
    let r = post(&d, "/v1/pools", &pool);
    assert_eq!(r.status, 200, "{}", r.text());
    let pools = || d.http(Via::Unix, "GET", "/v1/pools", &[], b"").json();
    assert!(
        eventually(60, || pools()[0]["ready"] == 1),
        "the pool never filled: {}",
        pools()
    );

    // A create takes the member restored ahead: its process is the template's, warm,
    // and goes on; the pool makes another.
    let c = d.create(&["--template", "warm-pool"]);
    let p = pools();
    assert_eq!(p[0]["hits"], 1, "{p}");
    assert_eq!(d.info(&c)["isolation"], "gvisor");
    let (s, n) = secret_and_count(&d, &c);
    assert_eq!(
        s, secret,
        "the pooled sandbox does not carry the template's memory"
    );
    assert!(n > 3, "its counter started again from nothing: {n}");
    assert!(
        eventually(10, || secret_and_count(&d, &c).1 > n),
        "its counter stopped"
    );
    assert!(
        eventually(60, || pools()[0]["ready"] == 1),
        "the pool did not make another: {}",
        pools()
    );
    let c2 = d.create(&["--template", "warm-pool"]);
    assert_ne!(c, c2);
    assert_eq!(pools()[0]["hits"], 2);
    d.exec(&c, "echo one > /root/who");
    assert_ne!(d.exec(&c2, "cat /root/who 2>&1").1.trim(), "one");

    let mut gone = pool.clone();
    gone["max"] = 0.into();
    gone["min"] = 0.into();
    let r = post(&d, "/v1/pools", &gone);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pools(), serde_json::json!([]));
    for c in [&c, &c2] {
        d.ok(&["rm", c]);
    }
    d.ok(&["template", "rm", "warm-pool"]);
    d.finish();
}

/// A memory image is written as the daemon is told: uncompressed by default, flate with
/// `[backends.gvisor] image_compression = "flate"` (runsc records which in the image's
/// header), and a sandbox resumes from either with its processes.
#[test]
fn a_memory_image_is_compressed_as_configured_and_resumes_either_way() {
    let test = "a_memory_image_is_compressed_as_configured_and_resumes_either_way";
    let Some((_t, spaces, d)) = gvisor_test(test) else {
        return;
    };
    let round = |d: &Daemon, expect: &str| {
        let id = d.create(&["--isolation", "gvisor", "--no-home"]);
        let (code, pid) = d.exec(&id, "sleep 1000 > /dev/null 2>&1 & echo $!");
        assert_eq!(code, 0);
        let pid = pid.trim().to_string();
        d.ok(&["pause", &id]);
        let state = d
            .data_dir()
            .join(format!("sandboxes/{id}/image/checkpoint.img"));
        let mut head = vec![0u8; 4096];
        let n = std::io::Read::read(&mut std::fs::File::open(&state).unwrap(), &mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(
            head.contains(&format!("\"compression\":\"{expect}\"")),
            "the image's header does not say {expect}: {head:.300}"
        );
        d.ok(&["resume", &id]);
        let (code, out) = d.exec(&id, &format!("kill -0 {pid} 2>&1 && echo alive"));
        assert_eq!(
            (code, out.trim()),
            (0, "alive"),
            "its process after the resume"
        );
        d.ok(&["rm", &id]);
    };
    round(&d, "none");
    d.finish();
    let d = daemon(
        &spaces.0,
        "[backends.gvisor]\nimage_compression = \"flate\"\n",
    );
    round(&d, "flate-best-speed");
    d.finish();
}

#[test]
fn a_damaged_memory_image_is_refused_whole_and_the_sandbox_stays_paused() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_damaged_memory_image_is_refused_whole_and_the_sandbox_stays_paused")
    else {
        return;
    };
    let id = d.create(&["--isolation", "gvisor"]);
    d.ok(&["pause", &id]);
    let image = d.data_dir().join(format!("sandboxes/{id}/image"));
    let mut truncated = 0;
    for e in std::fs::read_dir(&image).unwrap().flatten() {
        let len = e.metadata().unwrap().len();
        if e.file_name() != "done" && len > 0 {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap();
            f.set_len(len / 2).unwrap();
            truncated += 1;
        }
    }
    assert!(
        truncated > 0,
        "no image file to damage in {}",
        image.display()
    );
    let r = post(
        &d,
        &format!("/v1/sandboxes/{id}/resume"),
        &serde_json::json!({}),
    );
    assert!(
        r.status >= 400,
        "a damaged image was restored: {}",
        r.text()
    );
    assert!(r.text().contains("could not be restored"), "{}", r.text());
    assert_eq!(d.info(&id)["state"], "paused");
    d.ok(&["rm", &id]);
    d.finish();
}

/// Every host object a runc or crun sandbox could leave: its keeper, its cgroup in any
/// hierarchy, its container in the runtime's state, its run directory.
fn oci_leftovers(d: &Daemon, runtime: &str, id: &str, keeper: i32) -> Vec<String> {
    let mut out = Vec::new();
    if Path::new(&format!("/proc/{keeper}")).exists() {
        out.push(format!("keeper {keeper} still runs"));
    }
    let name = format!("warren-{id}");
    for m in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for dir in [m.path(), m.path().join("process_api")] {
            let hits = walkdir(&dir, &name, 3);
            out.extend(hits.into_iter().map(|p| format!("cgroup {}", p.display())));
        }
    }
    let listed = std::process::Command::new(runtime)
        .arg(format!("--root={}", d.run_dir().join(runtime).display()))
        .arg("list")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&listed.stdout).contains(id) {
        out.push(format!("{runtime} list still shows it"));
    }
    if d.run_dir().join("sandboxes").join(id).exists() {
        out.push("its run directory".into());
    }
    out
}

/// Directories named `name` under `dir`, at most `depth` levels down.
fn walkdir(dir: &Path, name: &str, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.path().is_dir() {
            continue;
        }
        if e.file_name() == name {
            out.push(e.path());
        } else if depth > 0 {
            out.extend(walkdir(&e.path(), name, depth - 1));
        }
    }
    out
}

#[test]
fn a_runc_or_crun_sandbox_is_its_own_ids_and_outlives_a_daemon_restart_and_a_stop() {
    let test = "a_runc_or_crun_sandbox_is_its_own_ids_and_outlives_a_daemon_restart_and_a_stop";
    if !can_run(test) {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let mut d = daemon(&spaces.0, "");
    for runtime in ["runc", "crun"] {
        let list = backends(&d);
        let b = entry(&list, runtime);
        if b["available"] != true {
            warren_testkit::skip(
                &format!("{test} ({runtime})"),
                b["reason"].as_str().unwrap_or("unavailable"),
            );
            continue;
        }
        let id = d.create(&[
            "--isolation",
            runtime,
            "--memory",
            "128M",
            "--network",
            "nat",
        ]);
        let run = d.run_dir().join("sandboxes").join(&id);
        let keeper: i32 = std::fs::read_to_string(run.join("helper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();

        // Root inside is the sandbox's own slot of host ids, and the root's files are
        // shown under it: root owns /, `user` its home.
        let base: u64 = std::fs::read_to_string(run.join("uid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(base >= 1 << 30, "{runtime}: {base} is not a slot's base");
        let (_, out) = d.exec(
            &id,
            "cat /proc/self/uid_map; stat -c '%u %U' / /home/user; id -u; \
             readlink /proc/self/ns/user /proc/self/ns/cgroup",
        );
        let lines: Vec<&str> = out.lines().collect();
        let map: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(map, ["0", &base.to_string(), "65536"], "{runtime}: {out}");
        assert_eq!(lines[1], "0 root", "{runtime}: {out}");
        assert_eq!(lines[2], "1000 user", "{runtime}: {out}");
        let host_user = std::fs::read_link("/proc/self/ns/user").unwrap();
        assert_ne!(lines[4], host_user.to_str().unwrap(), "{runtime}: {out}");
        let host_cgroup = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
        assert_ne!(lines[5], host_cgroup.to_str().unwrap(), "{runtime}: {out}");

        // The agent's socket, which the daemon connects to by its path, cannot be
        // replaced from inside (by a link to another sandbox's agent, say).
        let (_, out) = d.exec(
            &id,
            "rm -f /.warren/run/agent.sock 2>&1; ln -s /tmp /.warren/run/x 2>&1; \
             ls /.warren/run 2>&1; true",
        );
        assert_eq!(
            out.matches("Permission denied").count(),
            3,
            "{runtime}: {out}"
        );
        assert!(run.join("sock/agent.sock").exists(), "{runtime}");

        // A terminal.
        let out = d.ok(&["exec", "-t", &id, "--", "sh", "-c", "test -t 1 && echo tty"]);
        assert_eq!(out.trim_end(), "tty", "{runtime}");

        // A process past the memory limit is killed, and the exec says why.
        let body = serde_json::json!({"command": {"shell":
            "exec python3 -c 'b = bytearray(400 << 20)'"}});
        let r = post(&d, &format!("/v1/sandboxes/{id}/exec"), &body);
        assert_eq!(r.status, 200, "{runtime}: {}", r.text());
        assert_eq!(r.json()["oom_killed"], true, "{runtime}: {}", r.text());

        // A restarted daemon takes it over, processes and all; pause works on it.
        d.ok(&["exec", "-d", &id, "--", "sleep", "1000"]);
        d.ok(&["exec", &id, "--", "sh", "-c", "echo kept > /root/kept"]);
        d.shut_down();
        d.spawn();
        let (code, out) = d.exec(
            &id,
            "pgrep -x sleep >/dev/null && echo running; cat /root/kept",
        );
        assert_eq!((code, out.as_str()), (0, "running\nkept\n"), "{runtime}");
        d.ok(&["pause", &id]);
        assert_eq!(d.info(&id)["state"], "paused", "{runtime}");
        d.ok(&["resume", &id]);

        // Stopped, it keeps its files and nothing else; started, it runs again.
        d.ok(&["stop", &id]);
        assert_eq!(d.info(&id)["state"], "stopped", "{runtime}");
        assert!(
            eventually(10, || oci_leftovers(&d, runtime, &id, keeper).is_empty()),
            "{runtime}: a stopped sandbox left {:?}",
            oci_leftovers(&d, runtime, &id, keeper)
        );
        d.ok(&["start", &id]);
        let (_, out) = d.exec(&id, "cat /root/kept");
        assert_eq!(out, "kept\n", "{runtime}");
        let keeper: i32 = std::fs::read_to_string(run.join("helper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        d.ok(&["rm", &id]);
        assert!(
            eventually(10, || oci_leftovers(&d, runtime, &id, keeper).is_empty()),
            "{runtime}: a removed sandbox left {:?}",
            oci_leftovers(&d, runtime, &id, keeper)
        );
        eprintln!("BACKEND {runtime}: ids, terminal, OOM, restart, stop and start passed");
    }
    d.finish();
}

#[test]
fn warren_run_takes_runc_and_crun() {
    if !can_run("warren_run_takes_runc_and_crun") {
        return;
    }
    let _t = my_turn();
    for runtime in ["runc", "crun"] {
        let here = std::process::Command::new(runtime)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !here {
            warren_testkit::skip(
                &format!("warren_run_takes_runc_and_crun ({runtime})"),
                &format!("{runtime} is not installed (`apt-get install {runtime}`)"),
            );
            continue;
        }
        let o = common::warren()
            .args(["run", "--isolation", runtime, "--rm", "--", "uname", "-a"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.starts_with("Linux sandbox "),
            "{runtime}: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = common::sh(&["--isolation", runtime], "exit 3");
        assert_eq!(o.status.code(), Some(3), "{runtime}");
        // A run directory under one that only host root may walk (made 0700 by
        // `warren`): the runtime, in the sandbox's user namespace, still reaches it.
        let closed = common::test_root().join(format!("closed-{}", std::process::id()));
        let o = common::warren()
            .env("WARREN_RUN_DIR", closed.join("run"))
            .args(["run", "--isolation", runtime, "--rm", "--", "true"])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&closed);
        assert!(
            o.status.success(),
            "{runtime}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Whether the ELF file at `path` is statically linked (no program interpreter).
fn is_static(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u = |at: usize, n: usize| -> usize {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0usize, |acc, x| (acc << 8) | usize::from(*x))
    };
    let (off, size, count) = (u(32, 8), u(54, 2), u(56, 2));
    (0..count).all(|i| {
        let at = off + i * size;
        // PT_INTERP
        at + 4 <= b.len() && u(at, 4) != 3
    })
}

/// A `docker save` archive of one layer: a static busybox as the whole userland.
fn static_busybox_image(busybox: &Path) -> Vec<u8> {
    use sha2::Digest;
    let tar_of = |files: &[(String, Vec<u8>, u32, Option<&str>)]| {
        let mut t = tar::Builder::new(Vec::new());
        for (name, data, mode, link) in files {
            let mut h = tar::Header::new_ustar();
            h.set_mode(*mode);
            match link {
                Some(to) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    t.append_link(&mut h, name, to).unwrap();
                }
                None if name.ends_with('/') => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    t.append_data(&mut h, name, &[][..]).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    t.append_data(&mut h, name, &data[..]).unwrap();
                }
            }
        }
        t.into_inner().unwrap()
    };
    let mut files = vec![
        ("bin/".to_string(), vec![], 0o755, None),
        ("etc/".to_string(), vec![], 0o755, None),
        ("tmp/".to_string(), vec![], 0o1777, None),
        ("root/".to_string(), vec![], 0o700, None),
        (
            "etc/passwd".to_string(),
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
            None,
        ),
        (
            "bin/busybox".to_string(),
            std::fs::read(busybox).unwrap(),
            0o755,
            None,
        ),
    ];
    for applet in ["sh", "ls", "cat", "echo", "sleep", "uname", "id"] {
        files.push((format!("bin/{applet}"), vec![], 0o777, Some("busybox")));
    }
    let layer = tar_of(&files);
    let hex = |b: &[u8]| format!("{:x}", sha2::Sha256::digest(b));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        // A user of its own with no entry in /etc/passwd, and a working directory no
        // layer holds (an image configured without a build step, `buildah config`).
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": "1000:1000",
                   "WorkingDir": "/srv/app"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&layer))]},
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", hex(&config));
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["static:latest"],
                                        "Layers": ["0/layer.tar"]}])
    .to_string()
    .into_bytes();
    tar_of(&[
        (config_name, config, 0o644, None),
        ("0/layer.tar".into(), layer, 0o644, None),
        ("manifest.json".into(), manifest, 0o644, None),
    ])
}

/// An image with no C library of its own (a static busybox, as the `busybox` image or a
/// distroless one; Alpine's musl, or a glibc older than the binary's, is the same case
/// for the agent), a user without a passwd entry and a working directory no layer holds:
/// every backend runs commands in it. On the OCI backends the agent, the
/// warren binary, starts through the host's dynamic loader with the host's libraries,
/// bound read-only beside it; it took the root's before, and found none here.
#[test]
fn an_image_without_a_c_library_runs_on_every_backend() {
    let test = "an_image_without_a_c_library_runs_on_every_backend";
    if !can_run(test) {
        return;
    }
    let busybox = Path::new("/bin/busybox");
    if !is_static(busybox) {
        warren_testkit::skip(
            test,
            "no static /bin/busybox here (`apt-get install busybox-static`)",
        );
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    let archive = common::test_root().join(format!("static-{}.tar", std::process::id()));
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    std::fs::write(&archive, static_busybox_image(busybox)).unwrap();
    d.ok(&[
        "template",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "static",
    ]);
    let _ = std::fs::remove_file(&archive);
    let mut ran = Vec::new();
    for b in backends(&d) {
        let name = b["name"].as_str().unwrap().to_string();
        if b["available"] != true || name == "process" {
            continue;
        }
        let id = d.create(&["--isolation", &name, "--template", "static"]);
        let (code, out) = d.exec(
            &id,
            "echo hello from $(uname -s); ls /lib 2>&1 | head -1; echo $(id -u) $HOME $(pwd)",
        );
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.starts_with("hello from Linux\n"), "{name}: {out}");
        // The root stays the image's: nothing of the host's libraries shows in its /lib.
        assert!(out.contains("No such file"), "{name}: {out}");
        // As an OCI runtime runs it: HOME is / for a user /etc/passwd does not know, and
        // the missing working directory is made (commands failed there before).
        assert!(out.ends_with("\n1000 / /srv/app\n"), "{name}: {out}");
        d.ok(&["rm", "-f", &id]);
        ran.push(name);
    }
    assert!(ran.contains(&"namespace".to_string()), "{ran:?}");
    d.finish();
}

/// A sandbox that can write in its agent socket's directory (gVisor makes the agent's
/// files there host files) swaps its socket for a link to another sandbox's agent: the
/// daemon must not follow it and run the first sandbox's commands in the second.
#[test]
fn a_planted_link_for_the_agent_socket_is_not_followed() {
    let Some((_t, _spaces, d)) = gvisor_test("a_planted_link_for_the_agent_socket_is_not_followed")
    else {
        return;
    };
    let a = d.create(&["--isolation", "gvisor"]);
    let b = d.create(&["--isolation", "gvisor"]);
    d.ok(&["exec", &b, "--", "touch", "/root/this-is-b"]);
    let target = d
        .run_dir()
        .join("sandboxes")
        .join(&b)
        .join("sock/agent.sock");
    let (_, out) = d.exec(
        &a,
        &format!(
            "rm -f /.warren/run/agent.sock && ln -s {} /.warren/run/agent.sock && echo planted",
            target.display()
        ),
    );
    let planted = out.contains("planted");
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{a}/exec"),
        &[("Content-Type", "application/json")],
        br#"{"command":{"shell":"ls /root"}}"#,
    );
    assert!(
        !r.text().contains("this-is-b"),
        "a's command ran in b (planted: {planted}): {}",
        r.text()
    );
    d.ok(&["rm", &a]);
    d.ok(&["rm", &b]);
    d.finish();
}

#[test]
fn an_oci_sandboxs_disk_holds_through_stop_snapshot_and_saved_memory() {
    let test = "an_oci_sandboxs_disk_holds_through_stop_snapshot_and_saved_memory";
    if !can_run(test) {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    let list = backends(&d);
    for name in ["gvisor", "runc", "crun"] {
        let b = entry(&list, name);
        if b["available"] != true {
            warren_testkit::skip(
                &format!("{test} ({name})"),
                b["reason"].as_str().unwrap_or("unavailable"),
            );
            continue;
        }
        let id = d.create(&["--isolation", name, "--disk", "32M", "--memory", "256M"]);
        let (_, out) = d.exec(
            &id,
            "head -c 3M /dev/urandom > /root/kept; md5sum < /root/kept; \
             { head -c 40M /dev/zero > /root/big; } 2>&1 | grep -c 'No space'; rm -f /root/big",
        );
        let mut lines = out.lines();
        let sum = lines.next().unwrap_or_default().to_string();
        assert_eq!(
            lines.next(),
            Some("1"),
            "{name}: 40M fit on a 32M disk: {out}"
        );
        // Its files are in its image, not on the host's disk beside it.
        let data = d.data_dir().join("sandboxes").join(&id);
        assert!(data.join("disk.img").is_file(), "{name}: no disk image");
        // The next disk of that size is copied once this one is ready, off the create's
        // path, for the next create to take by a rename.
        let spare = d.data_dir().join(".blank-disks").join(format!(
            "{}-{}-disk.spare",
            32 << 20,
            warren_runtime::HOST_ID_BASE
        ));
        assert!(eventually(10, || spare.is_file()), "{name}: no spare disk");
        assert_eq!(
            walk_size(&data.join("upper")),
            0,
            "{name}: files outside the image"
        );
        assert_eq!(
            loops_under(&data).len(),
            1,
            "{name}: {:?}",
            loops_under(&data)
        );

        // Stopped and started again: the same disk, still bounded.
        d.ok(&["stop", &id]);
        assert!(
            loops_under(&data).is_empty(),
            "{name}: a stopped sandbox's loop device"
        );
        d.ok(&["start", &id]);
        let (_, out) = d.exec(
            &id,
            "md5sum < /root/kept; { head -c 40M /dev/zero > /root/big; } 2>&1 | grep -c 'No space'; \
             rm -f /root/big",
        );
        assert_eq!(
            out,
            format!("{sum}\n1\n"),
            "{name}: after a stop and a start"
        );

        // A snapshot reads the files from the image while it runs.
        d.ok(&["snapshot", &id, "--name", &format!("disk-{name}")]);
        let copy = d.create(&["--isolation", name, "--template", &format!("disk-{name}")]);
        assert_eq!(
            d.exec(&copy, "md5sum < /root/kept").1,
            format!("{sum}\n"),
            "{name}"
        );
        d.ok(&["rm", &copy]);

        if name == "gvisor" {
            // Saved with its memory, and started again from that: the files come along
            // into the new sandbox's own bounded disk.
            start_secret_counter(&d, &id);
            assert!(eventually(20, || secret_and_count(&d, &id).1 > 2));
            d.ok(&["snapshot", &id, "--name", "disk-warm", "--memory"]);
            let warm = d.create(&["--template", "disk-warm", "--disk", "32M"]);
            assert!(
                secret_and_count(&d, &warm).1 > 2,
                "the warm copy lost its counter"
            );
            let (_, out) = d.exec(
                &warm,
                "md5sum < /root/kept; { head -c 40M /dev/zero > /root/big; } 2>&1 | \
                 grep -c 'No space'; rm -f /root/big",
            );
            assert_eq!(out, format!("{sum}\n1\n"), "a warm copy's disk");
            // Paused to disk and resumed: the image is mounted again.
            d.ok(&["pause", &warm]);
            d.ok(&["resume", &warm]);
            assert_eq!(d.exec(&warm, "md5sum < /root/kept").1, format!("{sum}\n"));
            d.ok(&["rm", &warm]);
            d.ok(&["template", "rm", "disk-warm"]);
        }
        // Its device caches writes while it runs (an fsync inside reaches the host's
        // disk); the removal's unmount skips the flushes, and leaves the device caching
        // again for the next file attached to it.
        let device = loops_under(&data)
            .first()
            .and_then(|l| l.split_whitespace().next())
            .map(|dev| dev.trim_start_matches("/dev/").to_string())
            .unwrap_or_default();
        let cache = || {
            std::fs::read_to_string(format!("/sys/block/{device}/queue/write_cache"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(cache(), "write back", "{name}: {device} while running");
        d.ok(&["rm", &id]);
        d.ok(&["template", "rm", &format!("disk-{name}")]);
        assert!(!data.exists(), "{name}: its data directory stayed");
        // A gVisor removal answers once the Sentry is gone; its gofer lets go of the
        // disk right after, and the loop device goes with the last mount.
        assert!(
            eventually(10, || loops_under(&d.data_dir()).is_empty()),
            "{name}: a loop device stayed: {:?}",
            loops_under(&d.data_dir())
        );
        assert!(
            eventually(10, || cache() == "write back"),
            "{name}: {device} after its sandbox: {}",
            cache()
        );
        eprintln!("BACKEND {name}: the disk limit holds");
    }
    d.finish();
}

#[test]
fn a_link_planted_at_tmp_on_gvisor_is_not_followed_on_the_host() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_link_planted_at_tmp_on_gvisor_is_not_followed_on_the_host")
    else {
        return;
    };
    // /tmp is the root's own directory bound by runsc: a sandbox tries to swap it for a
    // link to /, then its files live on in a stop/start and in a template.
    let id = d.create(&["--isolation", "gvisor"]);
    d.exec(
        &id,
        "rm -rf /tmp 2>/dev/null; mv /tmp /tmp.old 2>/dev/null; ln -s / /tmp 2>/dev/null; \
         mkdir -p /x && ln -s / /x/tmp; true",
    );
    d.ok(&["stop", &id]);
    d.ok(&["start", &id]);
    d.ok(&["snapshot", &id, "--name", "tmp-link"]);
    let copy = d.create(&["--template", "tmp-link", "--isolation", "gvisor"]);
    let marker = format!("/root/warren-tmp-probe-{}", std::process::id());
    for sb in [&id, &copy] {
        let (_, out) = d.exec(
            sb,
            &format!(
                "test -d /tmp -a ! -L /tmp && echo plain; ls /tmp | grep -c -e work -e etc; \
                 touch /tmp/probe && echo wrote; test -e {marker} && echo host-root"
            ),
        );
        assert_eq!(out, "plain\n0\nwrote\n", "{sb}: {out}");
    }
    assert!(!Path::new(&marker).exists());
    d.ok(&["rm", &id]);
    d.ok(&["rm", &copy]);
    d.ok(&["template", "rm", "tmp-link"]);
    d.finish();
}

/// An HTTP GET of `/` on 127.0.0.1:`port` within `secs` seconds (retried while a server
/// starts): whether an HTTP answer came back.
fn answers_http(port: u16, secs: u64) -> bool {
    use std::io::{Read, Write};
    eventually(secs, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer)
            })
            .is_ok_and(|a| a.starts_with("HTTP/"))
    })
}

/// Whether 127.0.0.1:`port` can be listened on again.
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Starts a web server on the sandbox's own 127.0.0.1:8080.
fn serve_http(d: &Daemon, id: &str) {
    d.ok(&[
        "exec",
        "-d",
        id,
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "8080",
    ]);
}

/// The OCI backends this run covers: the one `WARREN_ISOLATION` names, or all three.
fn oci_backends() -> Vec<&'static str> {
    let all = ["runc", "crun", "gvisor"];
    match all.iter().find(|b| **b == common::isolation()) {
        Some(b) => vec![*b],
        None => all.to_vec(),
    }
}

#[test]
fn published_ports_answer_on_the_oci_backends_through_pause_restart_stop_and_remove() {
    let test = "published_ports_answer_on_the_oci_backends_through_pause_restart_stop_and_remove";
    if !can_run(test) {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let mut d = daemon(&spaces.0, "");
    for backend in oci_backends() {
        let list = backends(&d);
        let b = entry(&list, backend);
        if b["available"] != true {
            warren_testkit::skip(
                &format!("{test} ({backend})"),
                b["reason"].as_str().unwrap_or("unavailable"),
            );
            continue;
        }
        // gVisor's own network stack (`none`) is out of the host's reach: `nat` it is.
        let port = common::free_port();
        let publish = format!("{port}:8080");
        let id = d.create(&[
            "--isolation",
            backend,
            "--no-home",
            "--network",
            "nat",
            "-p",
            &publish,
        ]);
        assert_eq!(
            d.ok(&["port", &id]),
            format!("8080/tcp -> 127.0.0.1:{port}\n"),
            "{backend}"
        );
        assert_eq!(d.info(&id)["publish"][0]["host"], port, "{backend}");
        serve_http(&d, &id);
        assert!(answers_http(port, 20), "{backend}: no answer on {port}");

        // Paused, the listener stays; resumed, it answers again.
        d.ok(&["pause", &id]);
        assert!(!port_is_free(port), "{backend}: a pause let the port go");
        d.ok(&["resume", &id]);
        assert!(answers_http(port, 10), "{backend}: no answer after resume");

        // The daemon's restart is not the sandbox's: the port answers while no daemon
        // runs, and after another takes the sandbox over.
        d.shut_down();
        assert!(
            answers_http(port, 5),
            "{backend}: no answer without a daemon"
        );
        d.spawn();
        assert!(answers_http(port, 5), "{backend}: no answer after restart");
        assert_eq!(
            d.ok(&["port", &id]),
            format!("8080/tcp -> 127.0.0.1:{port}\n"),
            "{backend}"
        );

        // Stopped, the port is free; started, it is listened on again.
        d.ok(&["stop", &id]);
        assert!(
            port_is_free(port),
            "{backend}: a stopped sandbox holds {port}"
        );
        d.ok(&["start", &id]);
        serve_http(&d, &id);
        assert!(answers_http(port, 20), "{backend}: no answer after start");

        // Removed, the port can be listened on at once.
        d.ok(&["rm", &id]);
        assert!(
            port_is_free(port),
            "{backend}: a removed sandbox holds {port}"
        );

        // A port someone else listens on fails the create, and leaves nothing.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let before = d.ok(&["ls", "-q"]);
        let o = d.run(&[
            "create",
            "--isolation",
            backend,
            "--no-home",
            "--network",
            "nat",
            "-p",
            &format!("{port}:8080"),
        ]);
        assert!(!o.status.success(), "{backend}: published a taken port");
        let err = trust::stderr(&o);
        assert!(
            err.contains(&format!("host port {port}")) && err.contains("in use"),
            "{backend}: {err}"
        );
        assert_eq!(d.ok(&["ls", "-q"]), before, "{backend}");
        drop(taken);
        eprintln!("BACKEND {backend}: published ports passed");
    }
    d.finish();
}

#[test]
fn a_gvisor_sandbox_on_none_refuses_published_ports_and_says_to_use_nat() {
    let Some((_t, _spaces, d)) =
        gvisor_test("a_gvisor_sandbox_on_none_refuses_published_ports_and_says_to_use_nat")
    else {
        return;
    };
    let before = d.ok(&["ls", "-q"]);
    let port = common::free_port().to_string();
    let o = d.run(&[
        "create",
        "--isolation",
        "gvisor",
        "--no-home",
        "-p",
        &format!("{port}:8080"),
    ]);
    assert!(
        !o.status.success(),
        "a gvisor sandbox on none published a port"
    );
    let err = trust::stderr(&o);
    assert!(err.contains("--network nat"), "{err}");
    assert_eq!(d.ok(&["ls", "-q"]), before);
    d.finish();
}

/// A host port taken between core's check and the sandbox's making (core checks it
/// first, so this is the backend's own answer): the create is the caller's error, and
/// nothing of the sandbox is left.
#[test]
fn an_oci_backend_refuses_a_taken_host_port_and_leaves_nothing() {
    use warren_runtime::Backend;
    use warren_types::api::Isolation;
    use warren_types::spec::{NetworkMode, PortMap, SandboxSpec};
    let test = "an_oci_backend_refuses_a_taken_host_port_and_leaves_nothing";
    if !can_run(test) {
        return;
    }
    let _t = my_turn();
    let root = common::test_root().join(format!("oci-ports-{}", std::process::id()));
    let paths = warren_runtime::Paths {
        run: root.join("run"),
        data: root.join("data"),
    };
    paths.secure().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_warren"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for backend in oci_backends() {
        let b: Box<dyn Backend> = match backend {
            "gvisor" => Box::new(
                warren_runtime::gvisor::GvisorBackend::new(paths.clone(), exe.clone(), None)
                    .unwrap(),
            ),
            k => Box::new(
                warren_runtime::runc::RuncBackend::new(
                    k.parse::<Isolation>().unwrap(),
                    paths.clone(),
                    exe.clone(),
                    None,
                )
                .unwrap(),
            ),
        };
        let info = b.info();
        if !info.available {
            warren_testkit::skip(
                &format!("{test} ({backend})"),
                info.reason.as_deref().unwrap_or("unavailable"),
            );
            continue;
        }
        let id = format!("ports{}{backend}", std::process::id());
        let spec = SandboxSpec {
            id: id.clone(),
            template: "host".into(),
            network: NetworkMode::Nat,
            publish: vec![PortMap {
                host: port,
                sandbox: 80,
            }],
            isolation: b.kind(),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(b.create(spec, Default::default()))
            .map(|_| ())
            .expect_err("a taken port was published");
        assert!(
            matches!(e, warren_runtime::Error::Invalid { .. }),
            "{backend}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("host port {port} cannot be published"))
                && msg.contains("in use"),
            "{backend}: {msg}"
        );
        assert!(
            !paths.sandbox_run(&id).exists(),
            "{backend}: its run directory is left"
        );
        let cgroups = warren_runtime::bundle::cgroups_everywhere(&format!("warren-{id}"));
        assert!(cgroups.is_empty(), "{backend}: {cgroups:?}");
        eprintln!("BACKEND {backend}: a taken port is refused");
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(&root);
}

/// The threads of host process `pid`.
fn threads_of(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A local host user opens connection after connection to a sandbox's published port
/// (the server inside holds each): the process forwarding them (the helper, the keeper,
/// gVisor's reaper) holds at most 256 at once, two threads each, and the port answers
/// again once they close.
#[test]
fn a_published_port_forwards_a_bounded_number_of_connections() {
    let test = "a_published_port_forwards_a_bounded_number_of_connections";
    if !can_run(test) {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    let backend = common::isolation();
    let list = backends(&d);
    let b = entry(&list, &backend);
    if b["available"] != true {
        warren_testkit::skip(test, b["reason"].as_str().unwrap_or("unavailable"));
        d.finish();
        return;
    }
    let port = common::free_port();
    let network = if backend == "gvisor" { "nat" } else { "none" };
    let id = d.create(&[
        "--isolation",
        &backend,
        "--no-home",
        "--network",
        network,
        "-p",
        &format!("{port}:8080"),
    ]);
    // Greets each connection and holds it until its client closes.
    python_in_background(&d, &id, "import selectors, socket\nsel = selectors.DefaultSelector()\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 8080))\ns.listen(1024)\nsel.register(s, selectors.EVENT_READ)\nwhile True:\n    for k, _ in sel.select():\n        if k.fileobj is s:\n            c, _ = s.accept()\n            c.sendall(b'hi')\n            sel.register(c, selectors.EVENT_READ)\n        elif not k.fileobj.recv(64):\n            sel.unregister(k.fileobj)\n            k.fileobj.close()");
    let hello = || {
        use std::io::Read;
        std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut got = [0u8; 2];
                s.read_exact(&mut got)?;
                Ok(got)
            })
            .is_ok_and(|g| &g == b"hi")
    };
    assert!(eventually(20, hello), "{backend}: no answer on {port}");
    let run = d.run_dir().join("sandboxes").join(&id);
    // gVisor's reaper is named in mounts.pid (helper.pid is its Sentry).
    let holder = ["mounts.pid", "helper.pid"]
        .iter()
        .find_map(|f| std::fs::read_to_string(run.join(f)).ok())
        .and_then(|s| s.trim().parse::<i32>().ok())
        .expect("the forwarding process");
    let idle = threads_of(holder);
    let conns: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let busy = threads_of(holder);
    eprintln!(
        "{backend}: {} connections open, forwarder {holder} at {idle} threads idle, {busy} busy",
        conns.len()
    );
    // Its main thread, one per published port, two per connection forwarded, and a
    // few to spare (the greeting's connection may still be ending).
    assert!(
        busy <= 2 * 256 + 8,
        "{backend}: {busy} threads forward {} connections",
        conns.len()
    );
    drop(conns);
    assert!(
        eventually(20, hello),
        "{backend}: no answer once they closed"
    );
    d.ok(&["rm", &id]);
    d.finish();
}

/// No copy of a sandbox binds its host ports: a fork's copies publish nothing (the
/// source keeps its ports), a gVisor sandbox with published ports (on `nat`) is neither
/// forked nor saved with its memory, and a sandbox started from saved memory (on `none`)
/// is refused ports, saying so.
#[test]
fn copies_of_a_sandbox_with_published_ports_publish_nothing() {
    let test = "copies_of_a_sandbox_with_published_ports_publish_nothing";
    if !can_run(test) {
        return;
    }
    let _t = my_turn();
    let spaces = Spaces::new();
    let d = daemon(&spaces.0, "");
    for backend in oci_backends() {
        let list = backends(&d);
        let b = entry(&list, backend);
        if b["available"] != true {
            warren_testkit::skip(
                &format!("{test} ({backend})"),
                b["reason"].as_str().unwrap_or("unavailable"),
            );
            continue;
        }
        let port = common::free_port();
        let id = d.create(&[
            "--isolation",
            backend,
            "--no-home",
            "--network",
            "nat",
            "-p",
            &format!("{port}:8080"),
        ]);
        serve_http(&d, &id);
        assert!(answers_http(port, 20), "{backend}: no answer on {port}");
        let r = post(
            &d,
            &format!("/v1/sandboxes/{id}/fork"),
            &serde_json::json!({"count": 1}),
        );
        if backend == "gvisor" {
            assert_eq!(r.status, 400, "{backend}: {}", r.text());
            assert!(r.text().contains("nat"), "{backend}: {}", r.text());
            let o = d.run(&["snapshot", &id, "--name", "warm-ports", "--memory"]);
            assert!(!o.status.success(), "{backend}: saved with its memory");
            assert!(trust::stderr(&o).contains("nat"), "{}", trust::stderr(&o));
        } else {
            assert_eq!(r.status, 201, "{backend}: {}", r.text());
            let copy = r.json()[0]["id"].as_str().expect("a copy").to_string();
            d.saw(&copy);
            assert_eq!(d.ok(&["port", &copy]), "", "{backend}: the copy publishes");
            d.ok(&["rm", &copy]);
        }
        assert!(answers_http(port, 10), "{backend}: the source lost {port}");
        d.ok(&["rm", &id]);
        assert!(
            port_is_free(port),
            "{backend}: a removed sandbox holds {port}"
        );
        eprintln!("BACKEND {backend}: its copies publish nothing");
    }
    if oci_backends().contains(&"gvisor") && gvisor_here(&d, test) {
        let src = d.create(&["--isolation", "gvisor", "--no-home"]);
        d.ok(&["snapshot", &src, "--name", "warm-ports", "--memory"]);
        let o = d.run(&[
            "create",
            "--isolation",
            "gvisor",
            "--template",
            "warm-ports",
            "--no-home",
            "-p",
            &format!("{}:8080", common::free_port()),
        ]);
        assert!(
            !o.status.success(),
            "a sandbox from memory published a port"
        );
        assert!(
            trust::stderr(&o).contains("saved memory"),
            "{}",
            trust::stderr(&o)
        );
        d.ok(&["rm", &src]);
        d.ok(&["template", "rm", "warm-ports"]);
        eprintln!("BACKEND gvisor: a sandbox from saved memory is refused ports");
    }
    d.finish();
}
