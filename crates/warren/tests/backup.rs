//! `warren backup` copies the store while the daemon runs; `warren serve --restore`
//! starts from such a copy, adopting the sandboxes it knows that still run.

mod common;
mod trust;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use trust::{my_turn, Daemon, Via};

fn backup(d: &Daemon, file: &std::path::Path) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    d.env(&mut c);
    c.arg("backup").arg(file).output().unwrap()
}

#[test]
fn a_backup_taken_while_serving_restores_the_store_it_copied() {
    if !common::can_run("a_backup_taken_while_serving_restores_the_store_it_copied") {
        return;
    }
    let _t = my_turn();
    let mut d = Daemon::start(false);
    let kept = d.create(&["--name", "kept"]);
    let copy = d.dir().join("store.bak");
    let out = backup(&d, &copy);
    assert!(out.status.success(), "{}", trust::stderr(&out));
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the copy holds the keys' records: root's alone"
    );
    // Never over a file, and only of a store.
    let again = backup(&d, &copy);
    assert!(!again.status.success());
    assert!(
        trust::stderr(&again).contains("exists"),
        "{}",
        trust::stderr(&again)
    );

    // After the copy: a sandbox made and removed, which the restored store never knew.
    let later = d.create(&["--name", "later"]);
    d.ok(&["rm", &later]);
    d.shut_down();
    // Refused while a daemon serves the socket: shown with one running.
    d.spawn();
    let mut c = d.serve_command();
    c.args(["--restore", &copy.display().to_string()]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(
        trust::stderr(&out).contains("stop it before restoring"),
        "{}",
        trust::stderr(&out)
    );
    d.shut_down();

    // Not a store: refused, nothing replaced.
    let junk = d.dir().join("junk");
    std::fs::write(&junk, b"not a database").unwrap();
    let mut c = d.serve_command();
    c.args(["--restore", &junk.display().to_string()]);
    let out = c.output().unwrap();
    assert!(!out.status.success());

    d.spawn_with(&["--restore", &copy.display().to_string()]);
    // The sandbox it knew runs on, adopted; the later one is unknown again.
    let info = d.info("kept");
    assert_eq!(info["id"], kept.as_str());
    assert_eq!(info["state"], "running");
    let (code, out) = d.exec(&kept, "echo still here");
    assert_eq!((code, out.trim()), (0, "still here"));
    let r = d.http(Via::Unix, "GET", "/v1/sandboxes/later", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    // The store it replaced is kept beside it.
    let aside = std::fs::read_dir(d.data_dir()).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("warren.db.before-restore-")
    });
    assert!(aside, "the replaced store was not kept");
    d.finish();
}
