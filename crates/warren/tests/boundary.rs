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
    // The next sandbox's disk was made ahead and handed to its helper as a descriptor
    // (the mount's): nothing of it reaches the sandbox's processes either.
    assert!(d.wait_for_prepared_disk(), "no disk made ahead");
    let ahead: Vec<_> = std::fs::read_dir(d.data_dir().join(".blank-disks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("/.prepared-"))
        .collect();
    let next = d.create(&["--no-home"]);
    assert!(
        ahead.iter().all(|p| !p.exists()),
        "the next sandbox did not take the disk made ahead"
    );
    let (code, out) = d.exec(&next, LIST_FDS);
    assert_eq!(code, 0);
    assert_eq!(
        out, "",
        "a descriptor reached the sandbox with a disk made ahead"
    );
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
    // The server answers on that address (so a refusal below is the host's doing).
    let (_, own) = d.exec(
        &id,
        &format!(
            "for i in $(seq 50); do python3 -c \"import socket; \
             print(socket.create_connection(('{addr}', 7000), timeout=1).recv(2).decode())\" \
             2>/dev/null && break; sleep 0.1; done"
        ),
    );
    assert_eq!(own.trim(), "in", "the sandbox's server did not start");
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
    let guard = Command::new("nft")
        .args(["list", "chain", "inet", "warren", "router_guard"])
        .output()
        .unwrap();
    if stdout(&guard).lines().any(|l| l.trim() == "drop") {
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

/// A daemon on TCP with two tenants, `default` (the first key) and `b`: their keys.
#[test]
fn metrics_show_a_tenant_its_own_sandboxes_only() {
    if !can_run("metrics_show_a_tenant_its_own_sandboxes_only") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, key_b) = trust::two_tenants(None);
    let a = d.create_as(&key_a, r#"{"home_volume":false}"#);
    let b = d.create_as(&key_b, r#"{"home_volume":false}"#);
    let seen_by = |key: &str| d.as_tenant(key, "GET", "/metrics", "").text();
    let (ma, mb) = (seen_by(&key_a), seen_by(&key_b));
    assert!(
        ma.contains(&a) && !ma.contains(&b),
        "tenant a sees b's ids:\n{ma}"
    );
    assert!(
        mb.contains(&b) && !mb.contains(&a),
        "tenant b sees a's ids:\n{mb}"
    );
    assert!(
        !ma.contains("warren_sandboxes_created_total"),
        "a tenant sees the host's counters"
    );
    // The host's root sees the whole host.
    let all = d.http(trust::Via::Unix, "GET", "/metrics", &[], b"").text();
    assert!(all.contains(&a) && all.contains(&b));
    d.finish();
}

#[test]
fn a_tenants_template_names_never_lead_to_another_tenants_templates() {
    if !can_run("a_tenants_template_names_never_lead_to_another_tenants_templates") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, key_b) = trust::two_tenants(None);
    // b squats a name a would use.
    let built = d.build_as(&key_b, "python", "echo b > /etc/owner");
    assert!(built.contains("\"done\""), "{built}");
    // a's name does not lead to b's template...
    let r = d.as_tenant(
        &key_a,
        "POST",
        "/v1/sandboxes",
        r#"{"template":"python","home_volume":false}"#,
    );
    assert_eq!(r.status, 400, "a got b's template: {}", r.text());
    // ...and a's own template of that name is a's.
    let built = d.build_as(&key_a, "python", "echo a > /etc/owner");
    assert!(built.contains("\"done\""), "{built}");
    let id = d.create_as(&key_a, r#"{"template":"python","home_volume":false}"#);
    let (_, owner) = d.exec_as("default", &id, "cat /etc/owner");
    assert_eq!(owner, "a\n");
    // b's listing shows b's template only; a's shows a's.
    let listed = d.as_tenant(&key_b, "GET", "/v1/templates", "").json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == "python").count(), 1);
    // Shared names cannot be shadowed: the built-in one and the operator's.
    // (Refused as an answer's status or as a stream's error line: both carry a code.)
    let refused = |built: &str| built.contains("\"code\"") && !built.contains("\"done\"");
    let built = d.build_as(&key_b, "host", "true");
    assert!(refused(&built), "{built}");
    let r = d.http(
        trust::Via::Unix,
        "POST",
        "/v1/templates/build",
        &[("Content-Type", "application/json")],
        br#"{"name":"shared","steps":["true"]}"#,
    );
    assert!(r.text().contains("\"done\""), "{}", r.text());
    let built = d.build_as(&key_b, "shared", "echo mine > /etc/owner");
    assert!(
        refused(&built),
        "b shadowed an operator's template: {built}"
    );
    for (key, name) in [(&key_a, "python"), (&key_b, "python")] {
        let r = d.as_tenant(key, "DELETE", &format!("/v1/templates/{name}"), "");
        assert!(r.status == 204 || r.status == 409, "{}", r.text());
    }
    d.finish();
}

#[test]
fn a_pool_names_templates_as_its_keys_creates_do_and_never_another_tenants() {
    if !can_run("a_pool_names_templates_as_its_keys_creates_do_and_never_another_tenants") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, _key_b) = trust::two_tenants(None);
    // A snapshot is its tenant's own template.
    let id = d.create_as(&key_a, r#"{"home_volume":false}"#);
    let r = d.as_tenant(
        &key_a,
        "POST",
        &format!("/v1/sandboxes/{id}/snapshot"),
        r#"{"name":"mine"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let operator = |tenant: &str| {
        d.ok(&["keys", "create", "--tenant", tenant, "--operator"])
            .trim()
            .to_string()
    };
    let (op_a, op_b) = (operator("default"), operator("b"));
    // a's operator pools it by the name a's creates use (min 0: nothing is made); the
    // pool holds its stored key.
    let r = d.as_tenant(
        &op_a,
        "POST",
        "/v1/pools",
        r#"{"template":"mine","min":0,"max":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = r.json()["spec"]["template"].as_str().unwrap().to_string();
    assert!(stored.ends_with("/mine"), "{stored}");
    // b's operator reaches it neither by that name nor by the stored key, and is told
    // only that it does not know it.
    for name in ["mine", stored.as_str()] {
        let body = serde_json::json!({"template": name, "min": 0, "max": 1}).to_string();
        let r = d.as_tenant(&op_b, "POST", "/v1/pools", &body);
        assert_eq!(
            r.status,
            400,
            "b pooled a's template as {name}: {}",
            r.text()
        );
        assert!(r.text().contains("unknown template"), "{}", r.text());
    }
    let listed = d.as_tenant(&op_a, "GET", "/v1/pools", "").json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // Removed by the name it was set with.
    let r = d.as_tenant(
        &op_a,
        "POST",
        "/v1/pools",
        r#"{"template":"mine","min":0,"max":0}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        d.as_tenant(&op_a, "GET", "/v1/pools", "").json(),
        serde_json::json!([])
    );
    d.ok(&["rm", &id]);
    let r = d.as_tenant(&key_a, "DELETE", "/v1/templates/mine", "");
    assert_eq!(r.status, 204, "{}", r.text());
    d.finish();
}

#[test]
fn home_volumes_have_a_size_the_kernel_enforces() {
    if !can_run("home_volumes_have_a_size_the_kernel_enforces") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start_opts(trust::Options {
        config: Some("[limits.defaults]\nhome = \"64M\"\ndisk = \"256M\"\n".into()),
        ..Default::default()
    });
    let id = d.create(&["--owner", "carol"]);
    let (code, out) = d.exec(
        &id,
        "dd if=/dev/zero of=/home/user/big bs=1M count=200 2>&1 | grep -o 'No space left'; \
         du -sm /home/user | cut -f1",
    );
    assert_eq!(code, 0);
    assert!(out.contains("No space left"), "{out}");
    let used: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(used <= 64, "the home took {used} MiB past its 64M");
    // On the host, too: the volume's image holds no more than its size.
    for e in std::fs::read_dir(d.data_dir().join("volumes"))
        .unwrap()
        .flatten()
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(e.path().join("volume.img")) {
            assert!(
                m.blocks() * 512 <= 64 << 20,
                "{} bytes on the host",
                m.blocks() * 512
            );
        }
    }
    // A bigger home asked for when it is first made.
    let id = d.create(&["--owner", "dave", "--home-size", "32M"]);
    let (_, out) = d.exec(&id, "df -m /home/user | tail -1 | awk '{print $2}'");
    let size: u64 = out.trim().parse().unwrap();
    assert!((24..=32).contains(&size), "a 32M home is {size} MiB");
    d.finish();
}

#[test]
fn an_owners_sandboxes_at_once_share_one_home_file_system() {
    if !can_run("an_owners_sandboxes_at_once_share_one_home_file_system") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start_opts(trust::Options {
        config: Some("[limits.defaults]\nhome = \"64M\"\n".into()),
        ..Default::default()
    });
    // Two mounts of one image through two loop devices would be two ext4 caches
    // writing one disk: each sandbox would miss the other's writes, and the image
    // would end up corrupt.
    let a = d.create(&["--owner", "erin"]);
    let b = d.create(&["--owner", "erin"]);
    d.exec(&a, "seq 1 2000 > /home/user/from-a; mkdir /home/user/dir-a");
    let (code, out) = d.exec(
        &b,
        "wc -l < /home/user/from-a; seq 1 10 > /home/user/dir-a/from-b",
    );
    assert_eq!((code, out.trim()), (0, "2000"), "b does not see a's write");
    let (_, out) = d.exec(&a, "wc -l < /home/user/dir-a/from-b");
    assert_eq!(out.trim(), "10", "a does not see b's write");
    let img = std::fs::read_dir(d.data_dir().join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("volume.img"))
        .find(|p| p.exists())
        .expect("the home's image");
    let loops = || {
        let out = std::process::Command::new("losetup")
            .args(["-j"])
            .arg(&img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let now = loops();
    assert_eq!(now.lines().count(), 1, "one loop device: {now}");
    d.ok(&["rm", &a]);
    d.ok(&["rm", &b]);
    for _ in 0..100 {
        if loops().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // With both gone the file system is whole, and the next sandbox has both files.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let c = d.create(&["--owner", "erin"]);
    let (_, out) = d.exec(&c, "cat /home/user/from-a /home/user/dir-a/from-b | wc -l");
    assert_eq!(out.trim(), "2010");
    d.finish();
}

#[test]
fn the_disk_route_reads_the_last_measurement_and_walks_nothing() {
    if !can_run("the_disk_route_reads_the_last_measurement_and_walks_nothing") {
        return;
    }
    let _turn = my_turn();
    // Writable layers on the host's disk (walked to be measured), measured rarely.
    let d = Daemon::start_opts(trust::Options {
        config: Some("disk_measure_secs = 3600\n[limits.defaults]\ndisk = 0\n".into()),
        ..Default::default()
    });
    let id = d.create(&["--no-home"]);
    let bytes = || -> u64 {
        let r = d.http(trust::Via::Unix, "GET", "/v1/disk", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == id.as_str())
            .and_then(|s| s["bytes"].as_u64())
            .unwrap_or(0)
    };
    // The first measurement comes soon after the start; the next in an hour.
    let mut before = bytes();
    for _ in 0..100 {
        if before > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        before = bytes();
    }
    assert!(before > 0, "the sandbox was never measured");
    let (code, _) = d.exec(&id, "head -c 50000000 /dev/urandom > /root/blob");
    assert_eq!(code, 0);
    // A request that walked the layer would see the 50 MB now.
    let after = bytes();
    assert!(
        after < before + 10_000_000,
        "GET /v1/disk walked the sandbox's tree ({before} -> {after})"
    );
    d.finish();
}

#[test]
fn the_disk_walk_never_follows_a_swapped_link_out_of_the_sandbox() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    if !can_run("the_disk_walk_never_follows_a_swapped_link_out_of_the_sandbox") {
        return;
    }
    let _turn = my_turn();
    // A host directory only root may read, watched for any open.
    let secret = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::create_dir(secret.path().join("inner")).unwrap();
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    for p in [secret.path().to_path_buf(), secret.path().join("inner")] {
        ino.add_watch(&p, AddWatchFlags::IN_OPEN).unwrap();
    }
    let d = Daemon::start_opts(trust::Options {
        config: Some("disk_measure_secs = 1\n[limits.defaults]\ndisk = 0\n".into()),
        ..Default::default()
    });
    let id = d.create(&["--no-home"]);
    // 70 levels deep, then a directory swapped with a symlink to the host's directory,
    // as fast as the sandbox can.
    let target = secret.path().display().to_string();
    let script = format!(
        "import ctypes, os, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         p = '/root/deep'\n\
         for i in range(70): p += '/d'\n\
         os.makedirs(p + '/real/x', exist_ok=True)\n\
         os.symlink('{target}', p + '/link')\n\
         end = time.time() + 6\n\
         n = 0\n\
         while time.time() < end:\n\
         \x20   libc.renameat2(-100, (p + '/real').encode(), -100, (p + '/link').encode(), 2)\n\
         \x20   n += 1\n\
         print(n)"
    );
    let (code, out) = d.exec(&id, &format!("python3 -c \"{script}\""));
    assert_eq!(code, 0, "{out}");
    let events = ino.read_events().unwrap_or_default();
    assert!(
        events.is_empty(),
        "the daemon opened a host directory through the sandbox's symlink ({} swaps)",
        out.trim()
    );
    d.finish();
}

#[test]
fn daemon_sandboxes_get_default_limits_and_tenants_quotas() {
    if !can_run("daemon_sandboxes_get_default_limits_and_tenants_quotas") {
        return;
    }
    let _turn = my_turn();
    let config = "[limits.defaults]\nmemory = \"96M\"\ncpus = 0.5\npids = 200\n\
                  [limits.maxima]\nmemory = \"1G\"\n\
                  [limits.quotas]\nsandboxes = 2\n";
    let (d, key, _) = trust::two_tenants(Some(config));
    // Unasked-for limits are the defaults, and the kernel holds the sandbox to them.
    let id = d.create_as(&key, r#"{"home_volume":false}"#);
    let info = d.info(&id);
    assert_eq!(info["resources"]["memory"], 96 << 20);
    assert_eq!(info["resources"]["cpu_millis"], 500);
    assert_eq!(info["resources"]["pids"], 200);
    assert!(info["resources"]["disk"].as_u64().is_some());
    let (_, out) = d.exec(
        &id,
        "python3 -c 'x = bytearray(300 << 20)' 2>&1; echo rc=$?",
    );
    assert!(
        out.contains("rc=137") || out.contains("MemoryError"),
        "{out}"
    );
    // Past the maximum: refused, saying which limit.
    let r = d.as_tenant(
        &key,
        "POST",
        "/v1/sandboxes",
        r#"{"resources":{"memory":4294967296}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("memory"), "{}", r.text());
    // The tenant's second sandbox fits; the third passes its quota.
    d.create_as(&key, r#"{"home_volume":false}"#);
    let r = d.as_tenant(&key, "POST", "/v1/sandboxes", r#"{"home_volume":false}"#);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "quota_exceeded");
    // Nothing was recorded for the refused ones.
    let listed = d.as_tenant(&key, "GET", "/v1/sandboxes", "").json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // The operator has no quota.
    d.create(&["--no-home"]);
    // A build runs under the same limits: a step that needs more memory fails.
    let built = d.build_as(&key, "big", "python3 -c 'x = bytearray(300 << 20)'");
    assert!(
        built.contains("\"error\""),
        "a build ran unlimited: {built}"
    );
    d.finish();
}

#[test]
fn limits_are_checked_with_their_own_messages_before_anything_is_made() {
    if !can_run("limits_are_checked_with_their_own_messages_before_anything_is_made") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let cases = [
        (r#"{"resources":{"disk":18446744073709551615}}"#, "disk"),
        (r#"{"resources":{"cpu_millis":0}}"#, "cpus"),
        (r#"{"resources":{"pids":0}}"#, "pids"),
        (r#"{"resources":{"memory":1}}"#, "memory"),
        (r#"{"home_size":1}"#, "home_size"),
    ];
    for (body, word) in cases {
        let r = d.http(
            trust::Via::Unix,
            "POST",
            "/v1/sandboxes",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(word), "{body}: {}", r.text());
    }
    let listed = d
        .http(trust::Via::Unix, "GET", "/v1/sandboxes", &[], b"")
        .json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "a refused request left a row"
    );
    let events = d.http(trust::Via::Unix, "GET", "/metrics", &[], b"").text();
    assert!(
        events.contains("warren_sandboxes_created_total 0"),
        "{events}"
    );
    d.finish();
}

#[test]
fn host_ports_come_from_the_operators_range() {
    if !can_run("host_ports_come_from_the_operators_range") {
        return;
    }
    let _turn = my_turn();
    let (d, key, _) = trust::two_tenants(Some("[limits]\npublish_ports = \"21000-21099\"\n"));
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let outside = free.local_addr().unwrap().port();
    drop(free);
    for port in [81, outside] {
        let body = format!(r#"{{"home_volume":false,"publish":[{{"host":{port},"sandbox":80}}]}}"#);
        let r = d.as_tenant(&key, "POST", "/v1/sandboxes", &body);
        assert_eq!(r.status, 400, "a tenant published on {port}: {}", r.text());
    }
    // Port 0: one of the range is given.
    let r = d.as_tenant(
        &key,
        "POST",
        "/v1/sandboxes",
        r#"{"home_volume":false,"publish":[{"host":0,"sandbox":80}]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d.saw(r.json()["id"].as_str().unwrap());
    let given = r.json()["publish"][0]["host"].as_u64().unwrap();
    assert!((21000..=21099).contains(&given), "{given}");
    // The operator may choose freely.
    let body = format!(r#"{{"home_volume":false,"publish":[{{"host":{outside},"sandbox":80}}]}}"#);
    let r = d.http(
        trust::Via::Unix,
        "POST",
        "/v1/sandboxes",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d.saw(r.json()["id"].as_str().unwrap());
    d.finish();
}

#[test]
fn tenant_text_reaches_the_operators_terminal_escaped() {
    if !can_run("tenant_text_reaches_the_operators_terminal_escaped") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    // A template whose ready command prints terminal escapes and fails.
    let noisy = r#"printf '\033]0;owned\007\033[2J\033[31mred'; exit 1"#;
    let o = d.run(&[
        "template",
        "build",
        "--name",
        "noisy",
        "--run",
        "true",
        "--ready-cmd",
        noisy,
        "--ready-timeout",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut events = d
        .warren(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = d.run(&["create", "--no-home", "--template", "noisy"]);
    assert!(!o.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = events.kill();
    let shown = events.wait_with_output().unwrap();
    for (what, bytes) in [("create's error", &o.stderr), ("events", &shown.stdout)] {
        assert!(
            !bytes.contains(&0x1b) && !bytes.contains(&0x07),
            "{what} printed raw terminal escapes: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\\x1b"),
        "the escapes are shown, escaped: {}",
        stderr(&o)
    );
    d.finish();
}

#[test]
fn pid_1_shows_nothing_of_the_host_or_the_command_line() {
    if !can_run("pid_1_shows_nothing_of_the_host_or_the_command_line") {
        return;
    }
    let o = warren()
        .args([
            "run",
            "--rm",
            "--",
            "sh",
            "-c",
            "cat /proc/1/cmdline; echo; cat /proc/1/environ",
        ])
        .output()
        .unwrap();
    let out = stdout(&o);
    let cmdline = out.lines().next().unwrap_or_default();
    assert_eq!(
        cmdline.trim_end_matches('\0'),
        "warren-agent",
        "PID 1's command line: {cmdline:?}"
    );
    assert!(!out.contains("/work") && !out.contains("target"), "{out:?}");
}

/// Python, run as the sandbox's root: stops each new process the agent starts right
/// after its fork, then steps it (continue, stop) through its confinement; whenever its
/// memory can be opened for writing, it must already be under seccomp with
/// no_new_privs. Prints `stops=N violations=M` at the end.
const RACER: &str = r#"
import os, signal, sys, time
me = os.getpid()
stops = violations = 0
end = time.time() + float(sys.argv[1])
seen = set(int(p) for p in os.listdir("/proc") if p.isdigit())
def field(pid, name):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(name):
                return line.split()[1]
    except OSError:
        return None
while time.time() < end:
    nxt = max(seen) + 1
    try:
        os.kill(nxt, signal.SIGSTOP)
    except ProcessLookupError:
        continue
    except OSError:
        seen.add(nxt)
        continue
    seen.add(nxt)
    for _ in range(200):
        stops += 1
        try:
            fd = os.open(f"/proc/{nxt}/mem", os.O_RDWR)
            os.close(fd)
            if field(nxt, "Seccomp:") != "2" or field(nxt, "NoNewPrivs:") != "1":
                violations += 1
        except OSError:
            pass
        try:
            os.kill(nxt, signal.SIGCONT)
            os.kill(nxt, signal.SIGSTOP)
        except OSError:
            break
    try:
        os.kill(nxt, signal.SIGCONT)
    except OSError:
        pass
print(f"stops={stops} violations={violations}", flush=True)
"#;

#[test]
fn seccomp_cannot_be_skipped_by_catching_a_child_before_it_is_confined() {
    if !can_run("seccomp_cannot_be_skipped_by_catching_a_child_before_it_is_confined") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    let (code, _) = d.exec(
        &id,
        &format!(
            "nohup python3 -c '{}' 20 > /tmp/racer.out 2>&1 &",
            RACER.replace('\'', "'\\''")
        ),
    );
    assert_eq!(code, 0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Many execs while the racer watches.
    for _ in 0..300 {
        let body = br#"{"command":{"argv":["true"]}}"#;
        d.http(
            trust::Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            &[("Content-Type", "application/json")],
            body,
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let out = loop {
        let (_, out) = d.exec(&id, "cat /tmp/racer.out");
        if out.contains("stops=") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let n = |k: &str| -> u64 {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        n("stops=") >= 100,
        "the racer caught too few children to show anything: {out}"
    );
    assert_eq!(
        n("violations="),
        0,
        "a child was writable before seccomp and no_new_privs: {out}"
    );
    d.finish();
}

#[test]
fn a_hostile_etc_passwd_blocks_nothing() {
    if !can_run("a_hostile_etc_passwd_blocks_nothing") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    for plant in [
        "rm /etc/passwd && mkfifo /etc/passwd",
        "rm -f /etc/passwd && ln -s /dev/zero /etc/passwd",
    ] {
        let (code, _) = d.exec(&id, plant);
        assert_eq!(code, 0, "{plant}");
        // Each exec as a named user resolves it; none may hang the agent.
        let body = br#"{"command":{"argv":["true"]},"user":"user"}"#;
        let r = d.try_http(
            trust::Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            &[("Content-Type", "application/json")],
            body,
            std::time::Duration::from_secs(10),
        );
        let r = r.unwrap_or_else(|e| panic!("after `{plant}`, an exec hung: {e}"));
        assert!(r.status == 200 || r.status == 400, "{}", r.text());
        // And the agent still serves everyone else at once.
        let r = d.try_http(
            trust::Via::Unix,
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            &[("Content-Type", "application/json")],
            br#"{"command":{"argv":["echo","alive"]}}"#,
            std::time::Duration::from_secs(10),
        );
        let r = r.unwrap_or_else(|e| panic!("after `{plant}`, the agent hung: {e}"));
        assert_eq!(r.json()["stdout"], "alive\n", "{}", r.text());
    }
    let rss = trust::rss(d.pid().unwrap());
    assert!(rss < 256 << 20, "the daemon grew to {} MiB", rss >> 20);
    d.finish();
}

#[test]
fn file_reads_stream_and_refuse_special_files_unless_asked() {
    if !can_run("file_reads_stream_and_refuse_special_files_unless_asked") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    let path = format!("/v1/sandboxes/{id}/files?path=/dev/zero");
    let r = d.try_http(
        trust::Via::Unix,
        "GET",
        &path,
        &[],
        b"",
        std::time::Duration::from_secs(10),
    );
    let r = r.expect("a read of /dev/zero must answer, not stream forever");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "not_a_file");
    // A sparse gigabyte streams through, the daemon holding a window of it.
    let (code, _) = d.exec(&id, "truncate -s 1G /root/sparse");
    assert_eq!(code, 0);
    let before = trust::rss(d.pid().unwrap());
    let mut got = 0u64;
    let mut peak = before;
    let pid = d.pid().unwrap();
    let status = d
        .http_stream(
            trust::Via::Unix,
            "GET",
            &format!("/v1/sandboxes/{id}/files?path=/root/sparse"),
            &[],
            b"",
            &mut |b| {
                got += b.len() as u64;
                if got % (64 << 20) < b.len() as u64 {
                    peak = peak.max(trust::rss(pid));
                }
            },
        )
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(got, 1 << 30);
    assert!(
        peak < before + (64 << 20),
        "the daemon grew by {} MiB reading a file",
        (peak - before) >> 20
    );
    // Asked for, a special file streams for as long as the client reads.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        write!(
            s,
            "GET /v1/sandboxes/{id}/files?path=/dev/zero&special=true HTTP/1.1\r\n\
             Host: localhost\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        while n < 8 << 20 {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "the stream ended after {n} bytes");
            n += k;
        }
    }
    d.finish();
}

#[test]
fn stalled_uploads_hold_no_memory_in_the_daemon() {
    use std::io::Write;
    if !can_run("stalled_uploads_hold_no_memory_in_the_daemon") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    let pid = d.pid().unwrap();
    let before = trust::rss(pid);
    // 50 uploads of 128 MiB each send 16 MiB and stall.
    let chunk = vec![b'u'; 1 << 20];
    let mut held = Vec::new();
    for i in 0..50 {
        let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        write!(
            s,
            "PUT /v1/sandboxes/{id}/files?path=/root/up{i} HTTP/1.1\r\nHost: localhost\r\n\
             Content-Length: {}\r\n\r\n",
            128u64 << 20
        )
        .unwrap();
        for _ in 0..16 {
            s.write_all(&chunk).unwrap();
        }
        held.push(s);
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let during = trust::rss(pid);
    drop(held);
    assert!(
        during < before + (200 << 20),
        "50 stalled uploads grew the daemon by {} MiB",
        (during - before) >> 20
    );
    // The abandoned uploads left no file behind (nor a temporary one).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (_, left) = d.exec(&id, "ls -A /root");
    assert!(!left.contains("up"), "abandoned uploads left {left}");
    d.finish();
}

#[test]
fn a_collected_answer_is_bounded_as_sent() {
    if !can_run("a_collected_answer_is_bounded_as_sent") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    // 12 MiB of control characters: six bytes each as JSON text, plus the base64.
    let body = br#"{"command":{"shell":"head -c 12582912 /dev/zero | tr '\\0' '\\1'"}}"#;
    let pid = d.pid().unwrap();
    let before = trust::rss(pid);
    let r = d.http(
        trust::Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(r.status, 413, "an answer of {} bytes", r.body.len());
    assert!(r.text().contains("stream"), "{}", r.text());
    let grew = trust::rss(pid).saturating_sub(before);
    assert!(grew < 256 << 20, "the daemon grew by {} MiB", grew >> 20);
    // Plain text of the same size is within the bound.
    let r = d.http(
        trust::Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &[("Content-Type", "application/json")],
        br#"{"command":{"shell":"head -c 12582912 /dev/zero | tr '\\0' a"}}"#,
    );
    assert_eq!(r.status, 200);
    d.finish();
}

#[test]
fn a_templates_noisy_ready_command_costs_the_daemon_nothing() {
    if !can_run("a_templates_noisy_ready_command_costs_the_daemon_nothing") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let o = d.run(&[
        "template",
        "build",
        "--name",
        "chatty",
        "--run",
        "true",
        "--ready-cmd",
        "head -c 300000000 /dev/zero; exit 1",
        "--ready-timeout",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid = d.pid().unwrap();
    let before = trust::rss(pid);
    let o = d.run(&["create", "--no-home", "--template", "chatty"]);
    assert!(!o.status.success());
    let grew = trust::rss(pid).saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "a ready command's output grew the daemon by {} MiB",
        grew >> 20
    );
    d.finish();
}

#[test]
fn names_that_are_not_utf8_are_listed_and_read_exactly() {
    if !can_run("names_that_are_not_utf8_are_listed_and_read_exactly") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    let (code, _) = d.exec(
        &id,
        "mkdir /root/n && printf one > \"/root/n/$(printf 'a\\377')\" && \
         printf two > \"/root/n/$(printf 'a\\376')\"",
    );
    assert_eq!(code, 0);
    let r = d.http(
        trust::Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{id}/files/list?path=/root/n"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = r.json();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let twins: Vec<&str> = entries
        .iter()
        .map(|e| e["path_b64"].as_str().expect("an exact twin of the name"))
        .collect();
    assert_ne!(
        twins[0], twins[1],
        "two names that display alike are told apart"
    );
    let mut read = Vec::new();
    for t in twins {
        let r = d.http(
            trust::Via::Unix,
            "GET",
            &format!("/v1/sandboxes/{id}/files?path_b64={}", trust::enc(t)),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        read.push(r.text());
    }
    read.sort();
    assert_eq!(read, ["one", "two"]);
    d.finish();
}

#[test]
fn host_directories_stay_read_only_below_and_nothing_honours_setuid_or_devices() {
    if !can_run("host_directories_stay_read_only_below_and_nothing_honours_setuid_or_devices") {
        return;
    }
    // A submount below /usr, in a mount namespace of the test's own (the host's /usr
    // is untouched): a sandbox made there must not write through it.
    let w = warren();
    let script = "mount -t tmpfs sub /usr/local/games && \
                  exec \"$0\" run --rm --volume bnd-vol:/data -- sh -c \"$1\"";
    let inside = "touch /usr/local/games/x 2>&1; echo rc=$?; \
                  cat /proc/self/mountinfo; \
                  wc -c < /proc/interrupts; ls /sys/devices/virtual/powercap 2>/dev/null | wc -l";
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(w.get_program())
        .arg(inside)
        .envs(w.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !out.contains("rc=0"),
        "a submount of a host directory was writable:\n{out}"
    );
    // Every mount refuses setuid; every mount but /dev and the /dev/null binds that
    // mask files (whose nodes are the point) refuses device nodes.
    let mut checked = 0;
    for line in out.lines().filter(|l| l.contains(" - ")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (point, opts) = (fields[4], fields[5]);
        assert!(opts.contains("nosuid"), "a mount honours setuid: {line}");
        let device = point == "/dev" || point.starts_with("/dev/") || fields[3] == "/null";
        if !device {
            assert!(
                opts.contains("nodev"),
                "a mount honours device nodes: {line}"
            );
        }
        checked += usize::from(matches!(point, "/" | "/usr" | "/data" | "/usr/local/games"));
    }
    assert!(
        checked >= 3,
        "the root, /usr and /data mounts were not all seen:\n{out}"
    );
    let counts: Vec<&str> = out.lines().rev().take(2).collect();
    assert_eq!(
        counts,
        ["0", "0"],
        "/proc/interrupts or powercap is not masked:\n{out}"
    );
    let _ = std::fs::remove_dir_all(common::test_root().join("data/volumes/bnd-vol"));
}

/// `warren doctor` of another Warren of the host, with directories of its own.
fn doctor_of_another_warren() -> std::process::Output {
    let other = tempfile::tempdir_in("/tmp").unwrap();
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("doctor")
        .env("WARREN_RUN_DIR", other.path().join("run"))
        .env("WARREN_DATA_DIR", other.path().join("data"))
        .output()
        .unwrap()
}

#[test]
fn doctor_tells_another_daemons_live_link_from_a_leftover() {
    if !can_run("doctor_tells_another_daemons_live_link_from_a_leftover") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home", "--network", "nat"]);
    let link = warren_runtime::network::link_name(&id);
    let o = doctor_of_another_warren();
    assert!(
        !stdout(&o).contains(&link),
        "another daemon's live sandbox was reported as a leftover:\n{}",
        stdout(&o)
    );
    d.finish();
}

#[test]
fn doctor_tells_a_live_sandbox_of_a_renamed_binary_from_a_leftover() {
    if !can_run("doctor_tells_a_live_sandbox_of_a_renamed_binary_from_a_leftover") {
        return;
    }
    let _turn = my_turn();
    // An operator's copy of the binary under another name: its processes are not called
    // `warren`. A hard link beside the build, so nothing is copied.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = dir.path().join("warren-renamed");
    std::fs::hard_link(env!("CARGO_BIN_EXE_warren"), &exe).unwrap();
    let d = Daemon::start_opts(trust::Options {
        exe: Some(exe),
        ..Default::default()
    });
    let id = d.create(&["--no-home", "--network", "nat"]);
    let link = warren_runtime::network::link_name(&id);
    let helper =
        std::fs::read_to_string(d.run_dir().join(format!("sandboxes/{id}/helper.pid"))).unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", helper.trim())).unwrap();
    assert_eq!(
        comm.trim(),
        "warren-renamed",
        "the helper runs the renamed binary"
    );
    // An OCI sandbox's processes hang off its keeper (`warren-renamed __oci`), which
    // also owns its `nat` link.
    let r = d.http(trust::Via::Unix, "GET", "/v1/backends", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids = vec![(id, link)];
    for b in r.json().as_array().into_iter().flatten() {
        let name = b["name"].as_str().unwrap_or_default();
        if !["gvisor", "runc", "crun"].contains(&name) {
            continue;
        }
        if b["available"] != true {
            warren_testkit::skip(
                &format!(
                    "doctor_tells_a_live_sandbox_of_a_renamed_binary_from_a_leftover ({name})"
                ),
                b["reason"].as_str().unwrap_or("not available"),
            );
            continue;
        }
        let id = d.create(&["--isolation", name, "--no-home", "--network", "nat"]);
        let link = warren_runtime::network::link_name(&id);
        ids.push((id, link));
    }
    let o = doctor_of_another_warren();
    for (id, link) in &ids {
        assert!(
            !stdout(&o).contains(id.as_str()) && !stdout(&o).contains(link.as_str()),
            "a live sandbox of a renamed binary ({id}) was reported as a leftover:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    d.finish();
}
