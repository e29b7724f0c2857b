//! `warren serve --config`: `--check-config` says whether the daemon would start with a
//! file and names the key at fault; the `[serve]` table holds the listeners.

mod common;
mod trust;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use trust::{my_turn, Daemon, Options};

/// `--check-config` of a file holding `text`: whether it passed, and what it said.
fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warren.toml");
    std::fs::write(&path, text).unwrap();
    let (code, said) = check_config(dir.path(), &["--config", path.to_str().unwrap()], &[]);
    (code == Some(0), said)
}

/// `warren serve --check-config ARGS` in `dir`, with `vars` set and `WARREN_CONFIG`
/// unset unless `vars` names it: its exit code and what it said.
fn check_config(dir: &Path, args: &[&str], vars: &[(&str, &OsStr)]) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.args(["serve", "--check-config"])
        .args(args)
        .env("WARREN_RUN_DIR", dir.join("run"))
        .env("WARREN_DATA_DIR", dir.join("data"))
        .env_remove("WARREN_CONFIG")
        .envs(vars.iter().copied());
    let o = c.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), said)
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let (ok, said) = check(
        "[serve]\nlisten = \"127.0.0.1:7070\"\nlog_format = \"json\"\n\
         [limits.defaults]\nmemory = \"512M\"\n[connections]\nmax_per_peer = 8\n",
    );
    assert!(ok, "{said}");
    assert!(said.contains(": ok"), "{said}");
    let (ok, said) = check("[serve]\nlisen = \"127.0.0.1:7070\"\n");
    assert!(!ok);
    assert!(said.contains("lisen"), "{said}");
    let (ok, said) = check("[serve]\nlisten = \"not an address\"\n");
    assert!(!ok);
    assert!(said.contains("listen"), "{said}");
    let (ok, said) = check("[connections]\nmax_per_peer = 0\n");
    assert!(!ok);
    assert!(said.contains("max_per_peer"), "{said}");
    let (ok, said) =
        check("[e2b]\ntls_cert = \"/nonexistent.pem\"\ntls_key = \"/nonexistent.key\"\n");
    assert!(!ok, "missing TLS files pass the check: {said}");
}

#[test]
fn the_serve_table_holds_the_listeners() {
    if !common::can_run("the_serve_table_holds_the_listeners") {
        return;
    }
    let _t = my_turn();
    let port = common::free_port();
    let d = Daemon::start_opts(Options {
        config: Some(format!("[serve]\nlisten = \"127.0.0.1:{port}\"\n")),
        ..Default::default()
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the file's listener");
    use std::io::{Read, Write};
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    d.finish();
}

/// A listener's variable wins over the file (a container's or a unit's environment
/// over the packaged file); the flag would win over both.
#[test]
fn a_listeners_variable_wins_over_the_file() {
    if !common::can_run("a_listeners_variable_wins_over_the_file") {
        return;
    }
    let _t = my_turn();
    let (in_file, in_env) = (common::free_port(), common::free_port());
    let d = Daemon::start_opts(Options {
        config: Some(format!("[serve]\nlisten = \"127.0.0.1:{in_file}\"\n")),
        inherit: Some(format!("export WARREN_LISTEN=127.0.0.1:{in_env}")),
        ..Default::default()
    });
    assert!(std::net::TcpStream::connect(("127.0.0.1", in_env)).is_ok());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", in_file)).is_err(),
        "the file's listener was used over the variable's"
    );
    d.finish();
}

/// `WARREN_CONFIG` names the file as `--config` does (the flag wins); with neither,
/// `--check-config` checks the default file, or says there is none. Starts no daemon.
#[test]
fn check_config_finds_the_file_by_environment_or_at_the_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&good, "[connections]\nmax_per_peer = 8\n").unwrap();
    std::fs::write(&bad, "[connections]\nmax_per_peer = 0\n").unwrap();
    let check = |args: &[&str], env: Option<&std::path::Path>| {
        let vars: Vec<(&str, &OsStr)> = env
            .map(|p| ("WARREN_CONFIG", p.as_os_str()))
            .into_iter()
            .collect();
        check_config(dir.path(), args, &vars)
    };
    let (code, said) = check(&[], Some(&bad));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("bad.toml") && said.contains("max_per_peer"),
        "{said}"
    );
    let (code, said) = check(&["--config", good.to_str().unwrap()], Some(&bad));
    assert_eq!(code, Some(0), "the flag does not win: {said}");
    assert!(said.contains("good.toml: ok"), "{said}");
    // Neither: the default file, whether or not this host has one.
    let (_, said) = check(&[], None);
    assert!(said.contains("/etc/warren/warren.toml"), "{said}");
    if !std::path::Path::new("/etc/warren/warren.toml").exists() {
        assert!(said.starts_with("no configuration"), "{said}");
    }
}

/// A `WARREN__TABLE__KEY` variable sets one key over the file (or with no file), as a
/// container's or a unit's environment would; a wrong one is named. Starts no daemon.
#[test]
fn a_variable_sets_one_key_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(&file, "[connections]\nmax_per_peer = 0\n").unwrap();
    let check = |config: Option<&std::path::Path>, vars: &[(&str, &str)]| {
        let args: Vec<&str> = match config {
            Some(p) => vec!["--config", p.to_str().unwrap()],
            None => Vec::new(),
        };
        let vars: Vec<(&str, &OsStr)> = vars.iter().map(|(k, v)| (*k, OsStr::new(*v))).collect();
        check_config(dir.path(), &args, &vars)
    };
    // The file's bad value, mended by the variable.
    let (code, said) = check(Some(&file), &[]);
    assert_eq!(code, Some(1), "{said}");
    let (code, said) = check(Some(&file), &[("WARREN__CONNECTIONS__MAX_PER_PEER", "8")]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("with WARREN__CONNECTIONS__MAX_PER_PEER: ok"),
        "{said}"
    );
    // No file: the variables alone, checked as a file's keys are.
    let (code, said) = check(None, &[("WARREN__LIMITS__DEFAULTS__MEMORY", "512M")]);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = check(None, &[("WARREN__SERVE__LISEN", "127.0.0.1:7070")]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("WARREN__SERVE__LISEN") && said.contains("lisen"),
        "{said}"
    );
    let (code, said) = check(None, &[("WARREN__LIMITS__DEFAULTS__MEMORY", "lots")]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("memory"), "{said}");
}
