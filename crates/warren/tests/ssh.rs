//! The SSH gateway, driven by OpenSSH's own client: a key registered for an owner signs
//! in as `OWNER+NAME` and lands in that sandbox (made the first time, the same one after);
//! a command's stdout, stderr and exit status come back apart, stdin streams in, a shell
//! gets a terminal of the client's size and follows its resizes, scp moves 100 MB both
//! ways (times and modes kept with -p) and sftp its verbs, local forwarding reaches the
//! sandbox's loopback,
//! the host key stays the same across restarts; unknown keys, another owner's name,
//! remote forwarding and forwarding to other hosts are refused. Needs root and `ssh`.

mod common;
mod tmux;
mod trust;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{can_run, free_port, stderr, stdout};
use tmux::{has_tmux, shell_line, Tmux};
use trust::{my_turn, Daemon};

/// The size of the file scp moves both ways: 100 MB.
const BLOB: u32 = 100_000_000;

/// A fresh ed25519 key pair: (private key path, public key path).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(o.status.success(), "{}", stderr(&o));
    (key.clone(), key.with_extension("pub"))
}

struct Client {
    port: u16,
    known_hosts: PathBuf,
}

impl Client {
    /// One of OpenSSH's tools (`ssh`, `scp`, `sftp`, which name the port flag `port_flag`)
    /// with only the given key, no config, no prompts.
    fn openssh(&self, tool: &str, port_flag: &str, key: &Path) -> Command {
        let mut c = Command::new(tool);
        c.args(["-F", "/dev/null", port_flag, &self.port.to_string(), "-i"])
            .arg(key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .stdin(Stdio::null());
        c
    }

    /// `ssh USER@127.0.0.1 REMOTE...` with `options`.
    fn ssh(&self, key: &Path, user: &str, options: &[&str], remote: &[&str]) -> Command {
        let mut c = self.openssh("ssh", "-p", key);
        c.args(options)
            .arg(format!("{user}@127.0.0.1"))
            .args(remote);
        c
    }

    fn run(&self, key: &Path, user: &str, options: &[&str], remote: &[&str]) -> Output {
        self.ssh(key, user, options, remote)
            .output()
            .expect("run ssh")
    }

    fn run_with_input(
        &self,
        key: &Path,
        user: &str,
        options: &[&str],
        remote: &[&str],
        input: &[u8],
    ) -> Output {
        let mut child = self
            .ssh(key, user, options, remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ssh");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }
}

fn ssh_here(test: &str) -> bool {
    if !can_run(test) {
        return false;
    }
    let found = Command::new("ssh").arg("-V").output().is_ok()
        && Command::new("ssh-keygen").arg("-?").output().is_ok();
    if !found {
        warren_testkit::skip(
            test,
            "the OpenSSH client (ssh, ssh-keygen) is not installed",
        );
    }
    found
}

#[test]
fn an_owner_signs_in_with_a_key_and_lands_in_the_named_sandbox() {
    if !ssh_here("an_owner_signs_in_with_a_key_and_lands_in_the_named_sandbox") {
        return;
    }
    let _turn = my_turn();
    let port = free_port();
    let mut d = Daemon::start_opts(trust::Options {
        serve_args: vec!["--ssh-listen".into(), format!("127.0.0.1:{port}")],
        ..Default::default()
    });
    let keys = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = keypair(keys.path(), "alice");
    let (stranger, _) = keypair(keys.path(), "stranger");
    let client = Client {
        port,
        known_hosts: keys.path().join("known_hosts"),
    };
    let added = d.ok(&[
        "keys",
        "ssh",
        "add",
        "--owner",
        "alice",
        "--template",
        "host",
        alice_pub.to_str().unwrap(),
    ]);
    assert!(added.starts_with("SHA256:"), "{added}");
    let fingerprint = added.split_whitespace().next().unwrap().to_string();
    assert!(d.ok(&["keys", "ssh", "ls"]).contains(&fingerprint));

    // A command: stdout and stderr apart, its exit status, in alice's sandbox `lab`.
    let o = client.run(
        &alice,
        "alice+lab",
        &[],
        &["echo out; echo err >&2; hostname >/dev/null; exit 7"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));
    let listed = d.ok(&["ls"]);
    assert!(
        listed.contains("lab") && listed.contains("alice"),
        "{listed}"
    );
    // The same sandbox the next time.
    client.run(&alice, "alice+lab", &[], &["echo kept > /tmp/mark"]);
    let o = client.run(&alice, "alice+lab", &[], &["cat /tmp/mark"]);
    assert_eq!(stdout(&o), "kept\n", "{}", stderr(&o));
    // Stdin streams in, and ends with the client's.
    let input = vec![b'x'; 300_000];
    let o = client.run_with_input(&alice, "alice+lab", &[], &["wc -c"], &input);
    assert_eq!(stdout(&o).trim(), "300000", "{}", stderr(&o));
    // Both ways at once: 32 MiB through `cat`, its output coming back while input still
    // goes in (a gateway that waits on the input while the output fills stalls here).
    let input: Vec<u8> = (0u32..32 << 20).map(|i| (i % 251) as u8).collect();
    let o = client.run_with_input(&alice, "alice+lab", &[], &["timeout 300 cat"], &input);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout.len(), input.len());
    assert!(o.stdout == input, "cat's output differs from its input");

    // A client that leaves takes its command with it, and what the command started.
    let mut gone = client
        .ssh(
            &alice,
            "alice+lab",
            &[],
            &["sleep 3210 & sleep 3211; echo never"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ssh");
    let sleeps = || {
        let (_, out) = d.exec(
            "alice%2Flab",
            "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleep ] && \
             tr '\\0' ' ' < $p/cmdline && echo; done | sort | tr -s ' \\n' ' '",
        );
        out
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeps().trim() != "sleep 3210 sleep 3211" {
        assert!(
            Instant::now() < deadline,
            "the command never started: {}",
            sleeps()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gone.kill().unwrap();
    gone.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleeps().trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running after the client left: {}",
            sleeps()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A shell on a terminal of the size the client asked for.
    let o = client.run_with_input(
        &alice,
        "alice+lab",
        &["-tt"],
        &[],
        b"stty size; tty; echo $((6*7)); exit 3\n",
    );
    let out = stdout(&o);
    assert!(out.contains("42"), "{out}\n{}", stderr(&o));
    assert!(out.contains("/dev/pts/"), "{out}");
    assert_eq!(o.status.code(), Some(3), "{out}");

    // On a real terminal (tmux's) that changes size: the client tells the gateway, the
    // sandbox's shell sees the new size.
    if has_tmux("an_owner_signs_in_with_a_key_and_lands_in_the_named_sandbox") {
        let line = shell_line(&client.ssh(&alice, "alice+lab", &["-tt"], &[]));
        let term = Tmux::start(keys.path(), "ssh", &line);
        term.type_text("echo size-$(stty size | tr ' ' x)-end");
        term.press(&["Enter"]);
        term.wait_for("size-50x250-end");
        term.resize(120, 40);
        term.type_text("echo size-$(stty size | tr ' ' x)-end");
        term.press(&["Enter"]);
        term.wait_for("size-40x120-end");
        term.type_text("exit");
        term.press(&["Enter"]);
    }

    // Local forwarding to the sandbox's own loopback.
    d.exec(
        "alice%2Flab",
        "mkdir -p /tmp/www && echo forwarded > /tmp/www/index.html && \
         (cd /tmp/www && nohup python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 &) ; \
         for i in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8123))' 2>/dev/null && break; sleep 0.1; done",
    );
    let local = free_port();
    let forward = format!("{local}:localhost:8123");
    let mut tunnel = client
        .ssh(
            &alice,
            "alice+lab",
            &["-N", "-L", &forward, "-o", "ExitOnForwardFailure=yes"],
            &[],
        )
        .spawn()
        .expect("start ssh -L");
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let got = TcpStream::connect(("127.0.0.1", local)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut page = String::new();
            s.read_to_string(&mut page)?;
            Ok(page)
        });
        match got {
            Ok(p) if p.contains("forwarded") => break p,
            _ if Instant::now() > deadline => panic!("the forwarded port never answered: {got:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");
    let _ = tunnel.kill();
    let _ = tunnel.wait();

    // Files both ways: scp (which speaks SFTP) with times and modes kept, a tree, and
    // an sftp session's verbs.
    let local = keys.path().join("blob");
    let blob: Vec<u8> = (0..BLOB).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&local, &blob).unwrap();
    let secs = 1_700_000_000;
    let set_times = Command::new("touch")
        .args(["-d", &format!("@{secs}")])
        .arg(&local)
        .status()
        .unwrap();
    assert!(set_times.success());
    let scp = |args: &[&str]| {
        client
            .openssh("scp", "-P", &alice)
            .args(args)
            .output()
            .expect("run scp")
    };
    let o = scp(&[
        "-p",
        local.to_str().unwrap(),
        "alice+lab@127.0.0.1:/tmp/blob",
    ]);
    assert!(o.status.success(), "scp up: {}", stderr(&o));
    let o = client.run(
        &alice,
        "alice+lab",
        &[],
        &["stat -c '%s %Y' /tmp/blob; sha256sum < /tmp/blob"],
    );
    let host_sum = Command::new("sha256sum").arg(&local).output().unwrap();
    let host_sum = stdout(&host_sum);
    let (stat, sum) = stdout(&o)
        .split_once('\n')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    assert_eq!(stat, format!("{BLOB} {secs}"));
    assert_eq!(
        sum.split_whitespace().next(),
        host_sum.split_whitespace().next()
    );
    let back = keys.path().join("back");
    let o = scp(&["alice+lab@127.0.0.1:/tmp/blob", back.to_str().unwrap()]);
    assert!(o.status.success(), "scp down: {}", stderr(&o));
    assert!(
        std::fs::read(&back).unwrap() == blob,
        "the file came back different"
    );
    let tree = keys.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/deep"), "deep\n").unwrap();
    std::fs::write(tree.join("top"), "top\n").unwrap();
    let o = scp(&["-r", tree.to_str().unwrap(), "alice+lab@127.0.0.1:/tmp/"]);
    assert!(o.status.success(), "scp -r: {}", stderr(&o));
    let o = client.run(
        &alice,
        "alice+lab",
        &[],
        &["cat /tmp/tree/a/b/deep /tmp/tree/top"],
    );
    assert_eq!(stdout(&o), "deep\ntop\n");
    let batch = format!(
        "mkdir /tmp/s\ncd /tmp/s\nput {} one\nrename one two\nls\nget two {}\nrm two\ncd /\nrmdir /tmp/s\n",
        local.display(),
        keys.path().join("two").display()
    );
    let mut sftp = client.openssh("sftp", "-P", &alice);
    sftp.args(["-b", "-", "alice+lab@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = sftp.spawn().expect("run sftp");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "sftp: {}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("two"), "{}", stdout(&o));
    assert!(std::fs::read(keys.path().join("two")).unwrap() == blob);
    let o = client.run(
        &alice,
        "alice+lab",
        &[],
        &["test -e /tmp/s && echo left || echo gone"],
    );
    assert_eq!(stdout(&o), "gone\n");

    // Refused: forwarding to another host, remote forwarding, an unknown key, another
    // owner's name with alice's key.
    let o = client.run(
        &alice,
        "alice+lab",
        &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22"],
        &["true"],
    );
    assert_ne!(o.status.code(), Some(0), "remote forwarding was allowed");
    let o = client.run(&alice, "alice+lab", &["-W", "10.1.2.3:80"], &[]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "forwarding to another host was allowed"
    );
    let o = client.run(&stranger, "alice+lab", &[], &["true"]);
    assert_eq!(o.status.code(), Some(255));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    let o = client.run(&alice, "bob+lab", &[], &["true"]);
    assert_eq!(o.status.code(), Some(255), "alice's key signed in as bob");

    // The host key is the same after a restart: known_hosts still matches, strictly.
    d.shut_down();
    d.spawn();
    let o = client.run(
        &alice,
        "alice+lab",
        &["-o", "StrictHostKeyChecking=yes"],
        &["cat /tmp/mark"],
    );
    assert_eq!(stdout(&o), "kept\n", "{}", stderr(&o));

    // A removed key signs in no more.
    d.ok(&["keys", "ssh", "rm", &fingerprint]);
    let o = client.run(&alice, "alice+lab", &[], &["true"]);
    assert_eq!(o.status.code(), Some(255));
    d.finish();
}

#[test]
fn bad_keys_are_refused_with_a_reason() {
    if !ssh_here("bad_keys_are_refused_with_a_reason") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keypair(dir.path(), "k");
    for (owner, text, why) in [
        ("alice", "not a key", "not an OpenSSH public key"),
        ("alice+x", "", "'+'"),
        ("../x", "", "owner"),
    ] {
        let file = dir.path().join("bad.pub");
        let text = if text.is_empty() {
            std::fs::read_to_string(&public).unwrap()
        } else {
            text.to_string()
        };
        std::fs::write(&file, text).unwrap();
        let o = d.run(&[
            "keys",
            "ssh",
            "add",
            "--owner",
            owner,
            file.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{owner}: accepted");
        assert!(stderr(&o).contains(why), "{owner}: {}", stderr(&o));
    }
    let o = d.run(&[
        "keys",
        "ssh",
        "add",
        "--owner",
        "alice",
        "--template",
        "no-such-template",
        public.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-template"), "{}", stderr(&o));
    assert_eq!(d.ok(&["keys", "ssh", "ls", "--json"]).trim(), "[]");
    // The same key twice is kept once.
    d.ok(&[
        "keys",
        "ssh",
        "add",
        "--owner",
        "alice",
        public.to_str().unwrap(),
    ]);
    d.ok(&[
        "keys",
        "ssh",
        "add",
        "--owner",
        "alice",
        public.to_str().unwrap(),
    ]);
    let listed: serde_json::Value =
        serde_json::from_str(&d.ok(&["keys", "ssh", "ls", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let o = d.run(&["keys", "ssh", "rm", "SHA256:nothing"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no SSH key"), "{}", stderr(&o));
    d.finish();
}
