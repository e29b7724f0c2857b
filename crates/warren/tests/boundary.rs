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
