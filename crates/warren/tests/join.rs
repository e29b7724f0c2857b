//! `warren join` on a real terminal: tmux runs it, and the test reads the screen and
//! types. A read-only guest sees the banner, its keys (Ctrl-C and Ctrl-D too) never
//! reach the shell; a read-write guest's do; Ctrl-P Ctrl-Q leaves either way, with
//! status 0 and the shared shell running on. Needs root and tmux (see [`tmux`]).

mod common;
mod tmux;
mod trust;

use std::time::{Duration, Instant};

use common::can_run;
use tmux::{has_tmux, Tmux};
use trust::{my_turn, Daemon, Via};

/// A sandbox with a shell on a terminal, left running: (sandbox id, the shell's pid).
fn shell(d: &Daemon) -> (String, String) {
    let id = d.create(&[]);
    let pid = d
        .ok(&["exec", "-d", "-t", &id, "--", "sh"])
        .trim()
        .to_string();
    (id, pid)
}

/// Whether process `pid` of the sandbox still runs.
fn running(d: &Daemon, id: &str, pid: &str) -> bool {
    d.ok(&["ps", id, "--format", "{{.pid}} {{.exit}}"])
        .lines()
        .any(|l| l.trim() == pid)
}

/// Types into the shell as its owner does (`warren attach`'s stdin call), not as the
/// guest.
fn owner_types(d: &Daemon, id: &str, pid: &str, text: &str) {
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/processes/{pid}/stdin"),
        &[("Content-Type", "application/octet-stream")],
        text.as_bytes(),
    );
    assert!(r.status < 300, "stdin: {} {}", r.status, r.text());
}

/// The command line tmux runs: `warren join`, then its status, then a pause that keeps
/// the pane to be read.
fn join_command(d: &Daemon, token: &str) -> String {
    let data = d.data_dir();
    // The caller's own daemon settings (tmux's server passes its environment on) never
    // reach it, as with every command the test daemon runs.
    format!(
        "unset WARREN_SOCKET WARREN_HOST WARREN_TENANT WARREN_API_KEY; \
         WARREN_RUN_DIR={} WARREN_DATA_DIR={} {} join {token}; echo JOIN-EXIT=$?; sleep 60",
        d.run_dir().display(),
        data.display(),
        env!("CARGO_BIN_EXE_warren"),
    )
}

/// Waits (up to 10 s) until `path` in the sandbox holds `want`.
fn file_holds(d: &Daemon, id: &str, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, got) = d.exec(id, &format!("cat {path} 2>/dev/null"));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} holds {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_read_only_guest_watches_and_leaves_with_the_detach_keys() {
    let test = "a_read_only_guest_watches_and_leaves_with_the_detach_keys";
    if !can_run(test) || !has_tmux(test) {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let (id, pid) = shell(&d);
    let token = d.ok(&["share", &id, &pid]).trim().to_string();
    let tmux = Tmux::start(d.dir(), "ro", &join_command(&d, &token));

    tmux.wait_for("joined a shared terminal, read-only: you watch, your keys are not sent");
    // What the shell prints reaches the guest.
    owner_types(&d, &id, &pid, "echo seen-$((6*7))\n");
    tmux.wait_for("seen-42");

    // The guest's keys do not reach the shell, and it is told so once.
    tmux.type_text("echo x > /tmp/f");
    tmux.press(&["Enter"]);
    tmux.wait_for("read-only share: your keys are not sent; Ctrl-P Ctrl-Q leaves");
    // Nor do Ctrl-C and Ctrl-D end the guest's view or the shell.
    tmux.press(&["C-c"]);
    tmux.press(&["C-d"]);
    tmux.type_text("exit");
    tmux.press(&["Enter"]);
    // The shell has read everything typed by now: what it runs next comes after.
    owner_types(&d, &id, &pid, "echo still-$((6*7))\n");
    let screen = tmux.wait_for("still-42");
    assert!(!screen.contains("JOIN-EXIT"), "{screen}");
    assert_eq!(d.exec(&id, "test -e /tmp/f; echo $?").1, "1\n", "{screen}");
    assert!(running(&d, &id, &pid), "{}", d.ok(&["ps", &id]));

    tmux.press(&["C-p", "C-q"]);
    let screen = tmux.wait_for("JOIN-EXIT=");
    assert!(screen.contains("JOIN-EXIT=0"), "{screen}");
    assert!(screen.contains("detached; the process goes on"), "{screen}");
    assert!(running(&d, &id, &pid), "{}", d.ok(&["ps", &id]));
    owner_types(&d, &id, &pid, "echo after > /tmp/after\n");
    file_holds(&d, &id, "/tmp/after", "after\n");
    drop(tmux);
    d.finish();
}

#[test]
fn a_read_write_guest_types_into_the_shell_and_leaves_it_running() {
    let test = "a_read_write_guest_types_into_the_shell_and_leaves_it_running";
    if !can_run(test) || !has_tmux(test) {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let (id, pid) = shell(&d);
    let token = d.ok(&["share", "--write", &id, &pid]).trim().to_string();
    let tmux = Tmux::start(d.dir(), "rw", &join_command(&d, &token));

    tmux.wait_for("joined a shared terminal, read-write: you type into it");
    tmux.type_text("echo typed-$((6*7)) > /tmp/f; echo done-$((6*7))");
    tmux.press(&["Enter"]);
    // The shell's answer comes back to the guest's screen.
    tmux.wait_for("done-42");
    file_holds(&d, &id, "/tmp/f", "typed-42\n");

    tmux.press(&["C-p", "C-q"]);
    let screen = tmux.wait_for("JOIN-EXIT=");
    assert!(screen.contains("JOIN-EXIT=0"), "{screen}");
    assert!(running(&d, &id, &pid), "{}", d.ok(&["ps", &id]));
    // The shell still reads its terminal.
    owner_types(&d, &id, &pid, "echo after > /tmp/after\n");
    file_holds(&d, &id, "/tmp/after", "after\n");
    drop(tmux);
    d.finish();
}
