//! Each example of the crate, run once against a daemon of its own, so that none of
//! them rots. Needs root and the `warren` binary (see common/mod.rs); cargo builds the
//! examples with the tests.

mod common;

use std::process::Command;

use common::{can_run, examples_dir, Daemon};

fn run_example(d: &Daemon, name: &str) -> String {
    let bin = examples_dir().expect("the examples' directory").join(name);
    assert!(bin.is_file(), "{} is not built", bin.display());
    let mut c = Command::new(&bin);
    d.env(&mut c);
    let o = c
        .env("WARREN_SOCKET", d.socket())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "example {name} failed ({:?})\nstdout: {stdout}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

#[test]
fn the_examples_run_against_a_daemon() {
    let Some(bin) = can_run("the_examples_run_against_a_daemon") else {
        return;
    };
    let d = Daemon::start(bin, false);
    let out = run_example(&d, "run");
    assert!(out.contains("tick 1\ntick 2\ntick 3\n"), "{out}");
    assert!(out.contains("exit code 3"), "{out}");
    let out = run_example(&d, "files");
    assert!(out.contains("ran: hello from a file"), "{out}");
    assert!(out.contains("mode 755"), "{out}");
    assert!(out.contains("removed:"), "{out}");
    let out = run_example(&d, "terminal");
    assert!(out.contains("you typed: hello"), "{out}");
    assert!(out.contains("30 100"), "{out}");
    assert!(out.contains("shell exited with Some(7)"), "{out}");
    // Each example removed its own sandbox.
    let ls = d.warren(&["ls", "-q"]).output().unwrap();
    assert!(
        ls.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
    d.finish();
}
