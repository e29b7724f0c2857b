//! The boundary under an outsider's attack: each finding of the last attack round is a
//! test here, named after what it shows. Every attempt must fail, be refused with a
//! clear error, or stay within the sandbox's own limits. Needs root (CI is root); a test
//! that cannot run records its skip.
//!
//! Network probes only target loopback, the host's own addresses and network namespaces
//! a test makes itself.

mod common;
mod trust;

use std::process::{Command, Stdio};

use common::{can_run, stderr, stdout, warren};
use trust::{my_turn, Daemon};

/// Lists, from inside, every descriptor above 2 that the shell running it holds.
const LIST_FDS: &str = "for fd in $(seq 3 1023); do [ -e /proc/self/fd/$fd ] && \
                        echo \"fd $fd -> $(readlink /proc/self/fd/$fd)\"; done; true";

#[test]
fn inherited_descriptors_do_not_reach_sandboxes_of_run() {
    if !can_run("inherited_descriptors_do_not_reach_sandboxes_of_run") {
        return;
    }
    // A directory (a way back to the host's filesystem) and a pipe, left open without
    // close-on-exec by whatever runs `warren run`.
    let w = warren();
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("exec 7</ 8</etc 9<&0; exec \"$0\" run --rm -- sh -c \"$1\"")
        .arg(w.get_program())
        .arg(LIST_FDS)
        .envs(w.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = c.spawn().unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "descriptors reached the sandbox");
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec 7</; exec \"$0\" run --rm -- cat /proc/self/fd/7/etc/hostname")
        .arg(w.get_program())
        .envs(w.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the host's / was readable through an inherited descriptor: {}",
        stdout(&o)
    );
}

#[test]
fn inherited_descriptors_do_not_reach_sandboxes_of_the_daemon() {
    if !can_run("inherited_descriptors_do_not_reach_sandboxes_of_the_daemon") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start_inheriting("exec 7</ 8</etc 9</dev/null");
    let id = d.create(&["--no-home"]);
    let (code, out) = d.exec(&id, LIST_FDS);
    assert_eq!(code, 0);
    assert_eq!(
        out, "",
        "descriptors the daemon inherited reached a sandbox"
    );
    // A process started in the background, and one on a terminal, see the same.
    let body = serde_json::json!({
        "command": {"shell": format!("{LIST_FDS} > /tmp/fds")},
        "tty": {"rows": 24, "cols": 80}
    })
    .to_string();
    let r = d.http(
        trust::Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, fds) = d.exec(&id, "cat /tmp/fds");
    assert_eq!(fds, "", "descriptors reached a terminal process");
    d.finish();
}

/// Python, run in a sandbox and on the host: exhausts (with `EXHAUST = True`) or just
/// uses a little of each per-user counter the kernel keeps (inotify instances and
/// watches, queued real-time signals, POSIX message queue bytes), prints what it got.
const PER_USER: &str = r#"
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
EXHAUST = sys.argv[1] == "exhaust"
got = {}
fds = []
while len(fds) < (100000 if EXHAUST else 4):
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
got["inotify"] = len(fds)
d = "/tmp/w-dirs"
os.makedirs(d, exist_ok=True)
n = 0
for i in range(3000 if EXHAUST else 20):
    p = f"{d}/{i}".encode()
    os.makedirs(p, exist_ok=True)
    for fd in fds:
        if libc.inotify_add_watch(fd, p, 0x100) < 0:
            break
        n += 1
    else:
        continue
    break
got["watches"] = n
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
# sigqueue, not kill: past the limit kill() drops the signal's data silently, sigqueue
# fails with EAGAIN.
n = 0
while n < (500000 if EXHAUST else 100):
    if libc.sigqueue(os.getpid(), int(signal.SIGRTMIN), ctypes.c_void_p(0)) != 0:
        break
    n += 1
got["signals"] = n
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]
a = Attr(0, 10, 8192, 0)
n = 0
tag = f"/warren-per-user-{os.getpid()}"
while n < (100000 if EXHAUST else 1):
    q = libc.mq_open(f"{tag}-{n}".encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(a))
    if q < 0:
        break
    n += 1
for i in range(n):
    libc.mq_unlink(f"{tag}-{i}".encode())
got["mqueues"] = n
print(" ".join(f"{k}={v}" for k, v in sorted(got.items())), flush=True)
if EXHAUST:
    time.sleep(60)
"#;

fn counters(line: &str) -> std::collections::BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

#[test]
fn per_user_counters_of_a_sandbox_reach_neither_the_host_nor_a_neighbour() {
    use std::io::BufRead;
    if !can_run("per_user_counters_of_a_sandbox_reach_neither_the_host_nor_a_neighbour") {
        return;
    }
    // The message queues are held (not unlinked) while the exhauster sleeps: it keeps
    // them open by not exiting; its unlink only drops the names.
    let mut hog = warren()
        .args(["run", "--rm", "--", "python3", "-c", PER_USER, "exhaust"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(hog.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let hogged = counters(&line);
    assert!(
        hogged.get("inotify").copied().unwrap_or(0) >= 100,
        "the sandbox could not even use its own share: {line:?}"
    );
    // The host's root and a neighbour still have all of theirs.
    let host = Command::new("python3")
        .args(["-c", PER_USER, "use"])
        .output()
        .unwrap();
    let neighbour = warren()
        .args(["run", "--rm", "--", "python3", "-c", PER_USER, "use"])
        .output()
        .unwrap();
    let _ = hog.kill();
    let _ = hog.wait();
    let want = [
        ("inotify", 4),
        ("watches", 80),
        ("signals", 100),
        ("mqueues", 1),
    ];
    for (who, out) in [("host root", &host), ("a neighbour sandbox", &neighbour)] {
        let got = counters(&stdout(out));
        for (k, n) in want {
            assert_eq!(
                got.get(k).copied(),
                Some(n),
                "{who} lost its {k} to a sandbox that exhausted its own ({line:?}): {} {}",
                stdout(out),
                stderr(out)
            );
        }
    }
}

/// Runs `script` on the host as the unprivileged user `nobody`.
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv")
}

#[test]
fn local_host_users_cannot_read_warrens_state_or_a_sandboxs_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !can_run("local_host_users_cannot_read_warrens_state_or_a_sandboxs_files") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--owner", "alice"]);
    // A setuid-root (inside) copy of a shell, planted in the writable layer and in the
    // home volume.
    let (code, _) = d.exec(
        &id,
        "cp /bin/sh /tmp/suid-sh && chmod 4755 /tmp/suid-sh && \
         cp /bin/sh /home/user/suid-sh && chmod 4755 /home/user/suid-sh && \
         echo secret > /home/user/notes",
    );
    assert_eq!(code, 0);
    let data = d.data_dir();
    let run = d.run_dir();
    for dir in [&data, &run] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700, "{} is not private", dir.display());
    }
    for file in ["warren.db", "secret", "api-key"] {
        let m = std::fs::metadata(data.join(file)).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o600,
            "{file} is readable by others"
        );
    }
    // The API key is in the store as its hash only.
    let key = d.api_key();
    let mut db = std::fs::read(data.join("warren.db")).unwrap();
    db.extend(std::fs::read(data.join("warren.db-wal")).unwrap_or_default());
    assert!(
        !db.windows(key.len()).any(|w| w == key.as_bytes()),
        "the store holds an API key"
    );
    // Whatever nobody tries, it reads and runs nothing of Warren's or a sandbox's.
    let uppers: Vec<String> = std::fs::read_dir(data.join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("upper/tmp/suid-sh").display().to_string())
        .collect();
    let volumes = data.join("volumes");
    let mut attempts = vec![
        format!("cat {}/warren.db", data.display()),
        format!("cat {}/secret", data.display()),
        format!("ls {}", data.display()),
        format!("ls {}/volumes", data.display()),
        format!("ls {}", run.display()),
        format!("cat {}/*/data/notes", volumes.display()),
        format!("{}/*/data/suid-sh -c id", volumes.display()),
    ];
    attempts.extend(uppers.iter().map(|p| format!("{p} -c id")));
    for a in &attempts {
        let o = as_nobody(a);
        assert!(
            !o.status.success(),
            "nobody could run `{a}`: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    // Even a file of the common on-disk range is no sandbox's process: the sandbox's
    // root runs as host ids of its own.
    let uid: u32 = std::fs::read_to_string(run.join("sandboxes").join(&id).join("uid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(uid >= 1 << 30, "root of the sandbox is host uid {uid}");
    d.finish();
}

/// The host's own addresses (IPv4 and IPv6, every interface), as `ip -o addr` lists them.
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    stdout(&out)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "inet" || *w == "inet6")?;
            Some(f.get(i + 1)?.split('/').next()?.to_string())
        })
        .collect()
}

/// The EUI-64 link-local address of an interface with MAC `mac`: what a neighbour on its
/// link would try.
fn link_local_of(mac: &str) -> String {
    let b: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    format!(
        "fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}",
        b[0] ^ 2,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

/// Python: connects to every address given on argv[2:] at port argv[1] (link-local ones
/// through eth0), prints `reached ADDR` or `blocked ADDR`, then the interfaces that have
/// an IPv6 address.
const PROBE: &str = r#"
import socket, sys
port = int(sys.argv[1])
for t in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in t else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(2)
        if fam == socket.AF_INET6:
            scope = socket.if_nametoindex("eth0") if t.startswith("fe80") else 0
            s.connect((t, port, 0, scope))
        else:
            s.connect((t, port))
        print("reached", t)
    except OSError as e:
        print("blocked", t, e.errno)
print("ipv6-on", sorted({l.split()[-1] for l in open("/proc/net/if_inet6")}))
"#;

#[test]
fn a_nat_sandbox_has_no_ipv6_or_other_path_to_the_hosts_services() {
    if !can_run("a_nat_sandbox_has_no_ipv6_or_other_path_to_the_hosts_services") {
        return;
    }
    let _turn = my_turn();
    // A host service on every address, IPv4 and IPv6.
    let service = std::net::TcpListener::bind("[::]:0").unwrap();
    service.set_nonblocking(true).unwrap();
    let port = service.local_addr().unwrap().port().to_string();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home", "--network", "nat"]);
    let link = warren_runtime::network::link_name(&id);
    let mac = std::fs::read_to_string(format!("/sys/class/net/{link}/address")).unwrap();
    let host_v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    assert!(
        !host_v6.lines().any(|l| l.ends_with(&format!(" {link}"))),
        "the host end of the sandbox's link has IPv6: {host_v6}"
    );
    let mut targets = host_addresses();
    targets.push(link_local_of(&mac));
    let script = format!(
        "python3 -c '{}' {port} {}",
        PROBE.replace('\'', "'\\''"),
        targets.join(" ")
    );
    let (code, out) = d.exec(&id, &script);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("reached"), "a host service answered: {out}");
    assert!(
        out.contains("ipv6-on ['lo']"),
        "the sandbox has IPv6 beyond its loopback: {out}"
    );
    assert!(
        service.accept().is_err(),
        "the host service accepted a connection"
    );
    d.finish();
}

#[test]
fn neighbours_routing_through_the_host_reach_no_sandbox_and_no_other_network() {
    use common::Peer;
    if !can_run("neighbours_routing_through_the_host_reach_no_sandbox_and_no_other_network") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home", "--network", "nat"]);
    // A server on every address of the sandbox.
    let (code, _) = d.exec(
        &id,
        "nohup python3 -c 'import socket\ns=socket.socket()\ns.bind((\"0.0.0.0\",7000))\n\
         s.listen()\nwhile True:\n  c,_=s.accept(); c.sendall(b\"in\"); c.close()' \
         >/dev/null 2>&1 &",
    );
    assert_eq!(code, 0);
    let (_, addr) = d.exec(
        &id,
        "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1",
    );
    let addr = addr.trim().to_string();
    assert!(addr.starts_with("10.200."), "{addr}");
    // Two neighbours of the host, each on a link of its own.
    let a = Peer::new("wtnbra", "192.0.2.1", "192.0.2.2").expect("a test namespace");
    let b = Peer::new("wtnbrb", "198.51.100.1", "198.51.100.2").expect("a test namespace");
    let ok = |mut c: Command| c.status().is_ok_and(|s| s.success());
    assert!(ok(a.cmd(&[
        "ip",
        "route",
        "add",
        "10.200.0.0/16",
        "via",
        "192.0.2.1"
    ])));
    assert!(ok(a.cmd(&[
        "ip",
        "route",
        "add",
        "198.51.100.0/30",
        "via",
        "192.0.2.1"
    ])));
    assert!(ok(b.cmd(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1"
    ])));
    let connect = |to: &str, port: u16| {
        let probe = format!(
            "import socket\ntry:\n socket.create_connection(('{to}', {port}), timeout=2)\n \
             print('reached')\nexcept OSError as e: print('blocked', e)"
        );
        stdout(&a.cmd(&["python3", "-c", &probe]).output().unwrap())
    };
    // Through the host to the sandbox: nothing comes in but replies.
    let got = connect(&addr, 7000);
    assert!(
        got.starts_with("blocked"),
        "a neighbour reached the sandbox: {got}"
    );
    // Through the host to another of its networks: only when the host forwarded before.
    let guard = Command::new("iptables")
        .args(["-w", "-S", "WARREN-FORWARD"])
        .output()
        .unwrap();
    if stdout(&guard)
        .lines()
        .any(|l| l == "-A WARREN-FORWARD -j DROP")
    {
        let mut server = b
            .cmd(&[
                "python3",
                "-c",
                "import socket\ns=socket.socket()\ns.bind(('198.51.100.2',7001))\n\
                 s.listen()\ns.settimeout(6)\ntry:\n c,_=s.accept()\nexcept OSError: pass",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let got = connect("198.51.100.2", 7001);
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            got.starts_with("blocked"),
            "the host forwarded between its other networks: {got}"
        );
    } else {
        warren_testkit::skip(
            "neighbours_routing_through_the_host_reach_no_sandbox_and_no_other_network (router part)",
            "this host forwarded IPv4 before Warren did, so forwarding is the host's own policy",
        );
    }
    drop((a, b));
    d.finish();
}

#[test]
fn the_host_template_holds_no_secret_of_the_host_and_no_host_file_is_the_sandboxs() {
    if !can_run("the_host_template_holds_no_secret_of_the_host_and_no_host_file_is_the_sandboxs") {
        return;
    }
    let script = "for p in /etc/ssl/private /etc/shadow /etc/gshadow /etc/sudoers /etc/ssh \
                  /root/.ssh /var/lib/warren; do [ -e $p ] && echo \"present $p\"; done; \
                  find / -xdev \\( -name '*.key' -o -name '*_key' -o -name 'id_rsa*' \
                  -o -name 'id_ed25519*' \\) 2>/dev/null | sed 's/^/key /'; \
                  stat -c 'owner %u %n' /etc/ssl/openssl.cnf /etc/ld.so.cache 2>/dev/null; \
                  stat -c 'owner %u %n' /etc/passwd";
    let o = warren()
        .args(["run", "--rm", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !out.contains("present"),
        "host secrets in the sandbox:\n{out}"
    );
    assert!(!out.contains("key "), "key files in the sandbox:\n{out}");
    // Copied from the host: not the sandbox's to change (its root is uid 0 inside).
    for line in out.lines().filter(|l| l.starts_with("owner")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[2] == "/etc/passwd" {
            assert_eq!(f[1], "0", "the sandbox's own /etc/passwd is its root's");
        } else {
            assert_ne!(
                f[1], "0",
                "{} copied from the host belongs to the sandbox",
                f[2]
            );
        }
    }
}
