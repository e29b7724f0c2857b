//! Network policy: `none`, `nat`, and published ports. Traffic goes only to loopback and
//! to a network namespace the test makes itself. Needs root.

mod common;
mod trust;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_published_port_reaches_a_server_in_the_sandbox() {
    if !can_run("a_published_port_reaches_a_server_in_the_sandbox") {
        return;
    }
    let port = free_port();
    let server = "import socket\n\
        s = socket.socket(); s.bind(('127.0.0.1', 8000)); s.listen()\n\
        c, _ = s.accept(); data = c.recv(100)\n\
        c.sendall(b'sandbox got ' + data); c.close()";
    // gVisor's own network stack (`none`) is out of the host's reach: it publishes on
    // `nat`; every other backend publishes on either.
    let network = if isolation() == "gvisor" {
        "nat"
    } else {
        "none"
    };
    let mut child = warren()
        .args([
            "run",
            "--rm",
            "--network",
            network,
            "--publish",
            &format!("{port}:8000"),
            "--",
            "python3",
            "-c",
            server,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        // The listener exists once the sandbox is up; the server a moment later.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"hello");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            if !buf.is_empty() {
                break String::from_utf8(buf).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the published port"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply, "sandbox got hello");
    assert!(child.wait().unwrap().success());
}

#[test]
fn host_loopback_services_are_unreachable() {
    if !can_run("host_loopback_services_are_unreachable") {
        return;
    }
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    // The gateway, if any, from the routing table; then the host's port on loopback and
    // on the gateway address must both be closed.
    let script = format!(
        "import socket\n\
         gw = None\n\
         for line in open('/proc/net/route').read().splitlines()[1:]:\n\
         \x20   f = line.split()\n\
         \x20   if f[1] == '00000000': gw = socket.inet_ntoa(bytes.fromhex(f[2])[::-1])\n\
         for addr in ['127.0.0.1'] + ([gw] if gw else []):\n\
         \x20   try:\n\
         \x20       socket.create_connection((addr, {port}), timeout=1); print('reached', addr)\n\
         \x20   except OSError: print('blocked', addr)"
    );
    for net in ["none", "nat"] {
        let o = warren()
            .args([
                "run",
                "--rm",
                "--network",
                net,
                "--",
                "python3",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        let out = stdout(&o);
        assert!(o.status.success(), "{net}: {}", stderr(&o));
        assert!(!out.contains("reached"), "{net}: {out}");
        assert!(out.contains("blocked 127.0.0.1"), "{net}: {out}");
        if net == "nat" {
            assert!(out.contains("blocked 10.200."), "nat has a gateway: {out}");
        }
    }
    drop(host);
}

#[test]
fn nat_reaches_a_peer_through_masquerade() {
    if !can_run("nat_reaches_a_peer_through_masquerade") {
        return;
    }
    let Some(peer) = Peer::new("wtpeer", "198.18.0.1", "198.18.0.2") else {
        warren_testkit::skip(
            "nat_reaches_a_peer_through_masquerade",
            "cannot make a peer network namespace",
        );
        return;
    };
    // The peer answers with the address it sees the connection come from.
    let server = "import socket\n\
        s = socket.socket(); s.bind(('198.18.0.2', 9000)); s.listen()\n\
        c, a = s.accept(); c.sendall(a[0].encode()); c.close()";
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &peer.ns, "python3", "-c", server])
        .spawn()
        .unwrap();
    let client = "import socket, time\n\
        for i in range(100):\n\
        \x20   try:\n\
        \x20       c = socket.create_connection(('198.18.0.2', 9000), timeout=2); break\n\
        \x20   except OSError: time.sleep(0.05)\n\
        print(c.recv(100).decode())";
    let out = sh_ok(
        &["--network", "nat"],
        &format!("ip -4 -o addr show eth0 | awk '{{print $4}}'; python3 -c \"{client}\""),
    );
    let _ = srv.kill();
    let _ = srv.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("10.200."), "sandbox address: {out}");
    assert_eq!(
        lines[1], "198.18.0.1",
        "the peer sees the host's address (masquerade)"
    );
}

#[test]
fn nat_sandboxes_cannot_reach_each_other() {
    if !can_run("nat_sandboxes_cannot_reach_each_other") {
        return;
    }
    let server = "import socket\n\
        s = socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); s.settimeout(8)\n\
        import subprocess\n\
        print(subprocess.run(['sh','-c',\"ip -4 -o addr show eth0 | awk '{print $4}'\"], capture_output=True, text=True).stdout.strip(), flush=True)\n\
        try:\n\
        \x20   c, _ = s.accept(); print('accepted')\n\
        except OSError: print('nobody')";
    let mut a = warren()
        .args([
            "run",
            "--rm",
            "--network",
            "nat",
            "--",
            "python3",
            "-u",
            "-c",
            server,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = a.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let addr = line.trim().split('/').next().unwrap().to_string();
    assert!(addr.starts_with("10.200."), "{line}");
    let probe = format!(
        "import socket\ntry:\n socket.create_connection(('{addr}', 7000), timeout=2); print('reached')\nexcept OSError: print('blocked')"
    );
    let got = sh_ok(&["--network", "nat"], &format!("python3 -c \"{probe}\""));
    assert_eq!(got.trim(), "blocked");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = a.wait();
    assert_eq!(rest.trim(), "nobody");
}

#[test]
fn a_removed_nat_sandbox_leaves_no_host_link() {
    if !can_run("a_removed_nat_sandbox_leaves_no_host_link") {
        return;
    }
    // The host end's index, as the sandbox sees it from its own end.
    let peer = sh_ok(&["--network", "nat"], "cat /sys/class/net/eth0/iflink");
    let peer = peer.trim();
    // `run --rm` has returned: the sandbox is gone, and so must its link be, at once.
    let left: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("ifindex")).is_ok_and(|i| i.trim() == peer)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "host link {left:?} outlived its sandbox");
}

/// A running sandbox's egress rules hold from its first connection and change at once:
/// a denied peer refuses the connection (a reset, not a timeout), an allowed one answers,
/// and opening the rules again reaches it; the rules go with the sandbox.
#[test]
fn egress_rules_refuse_and_then_allow_a_peer() {
    if !can_run("egress_rules_refuse_and_then_allow_a_peer") {
        return;
    }
    let Some(peer) = Peer::new("wtegr", "198.18.0.5", "198.18.0.6") else {
        warren_testkit::skip(
            "egress_rules_refuse_and_then_allow_a_peer",
            "cannot make a peer network namespace",
        );
        return;
    };
    let server = "import socket\n\
        s = socket.socket(); s.bind(('198.18.0.6', 9001)); s.listen()\n\
        while True:\n\
        \x20   c, a = s.accept(); c.sendall(b'peer'); c.close()";
    let mut srv = peer.cmd(&["python3", "-c", server]).spawn().unwrap();
    let d = trust::Daemon::start(false);
    let key = d.create(&[
        "--isolation",
        &isolation(),
        "--network",
        "nat",
        "--deny-out",
        "198.18.0.4/30",
    ]);
    // Up to a few tries: the peer's server may still be starting.
    let probe = "python3 -c \"\nimport socket, time\nfor i in range(40):\n    try:\n        c = socket.create_connection(('198.18.0.6', 9001), timeout=3); print(c.recv(10).decode()); break\n    except ConnectionRefusedError: print('refused'); break\n    except OSError as e: time.sleep(0.1)\nelse: print('timeout')\n\"";
    let (_, got) = d.exec(&key, probe);
    assert_eq!(got.trim(), "refused", "a denied block");
    d.ok(&[
        "egress",
        &key,
        "--deny-out",
        "198.18.0.4/30",
        "--allow-out",
        "198.18.0.6",
    ]);
    let (_, got) = d.exec(&key, probe);
    assert_eq!(
        got.trim(),
        "peer",
        "an allowed address inside a denied block"
    );
    d.ok(&["egress", &key, "--deny-out", "198.18.0.6"]);
    let (_, got) = d.exec(&key, probe);
    assert_eq!(got.trim(), "refused", "the rules replaced");
    d.ok(&["egress", &key, "--open"]);
    let (_, got) = d.exec(&key, probe);
    assert_eq!(got.trim(), "peer", "open rules");
    d.ok(&["rm", &key]);
    let _ = srv.kill();
    let _ = srv.wait();
}
