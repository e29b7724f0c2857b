//! The verbs a docker or podman user reaches for, run as a user runs them: `warren port`,
//! `logs`, `run -d`, `--format`, `--tenant`, `gc --dry-run`, `volume`. Needs root.
//!
//! As in daemon.rs, each test runs a daemon of its own on directories of its own, removes
//! what it made, and ends with `warren doctor` on those directories (the tests take
//! turns: see daemon.rs).

mod common;
mod trust;

use std::io::{Read, Write};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{can_run, stderr};
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
    d.create(&["--name", "web", "--no-home", "-p", "8080", "-p", "0:9090"]);
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
