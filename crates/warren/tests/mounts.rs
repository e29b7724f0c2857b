//! Host directories mounted into sandboxes (`-v /host/dir:/path[:ro]`): only the host's
//! root on the unix socket may ask, the mount shows host ids as themselves, a read-only
//! one stays read-only, and nothing a sandbox's life does (stop, start, pause, a daemon
//! restart, removal) changes the host's directory behind the operator's back. Needs root.
//!
//! Each test runs its own daemon (see trust/mod.rs) and its host directories under /tmp,
//! apart from the daemon's; both are removed at the end.

mod common;
mod trust;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{can_run, stderr};
use trust::{my_turn, Daemon, Via};

/// A host directory of the test's own, with a file owned by uid 1000 and one by root.
struct HostDir {
    dir: tempfile::TempDir,
}

impl HostDir {
    fn new() -> HostDir {
        let dir = tempfile::Builder::new()
            .prefix("wmnt")
            .tempdir_in("/tmp")
            .expect("a host directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("users.txt"), b"user's\n").unwrap();
        std::os::unix::fs::chown(data.join("users.txt"), Some(1000), Some(1000)).unwrap();
        std::fs::write(data.join("roots.txt"), b"root's\n").unwrap();
        std::fs::create_dir(dir.path().join("other")).unwrap();
        std::fs::write(dir.path().join("other/secret"), b"not for the sandbox\n").unwrap();
        HostDir { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn arg(&self, rel: &str, target: &str, mode: &str) -> String {
        format!("{}:{target}{mode}", self.path(rel).display())
    }

    /// Every file below `rel` with its contents and owner.
    fn snapshot(&self, rel: &str) -> BTreeMap<String, (Vec<u8>, u32)> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                let rel = e.path().strip_prefix(base).unwrap().display().to_string();
                if md.is_dir() {
                    out.insert(format!("{rel}/"), (Vec::new(), md.uid()));
                    walk(base, &e.path(), out);
                } else {
                    out.insert(rel, (std::fs::read(e.path()).unwrap(), md.uid()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.path(rel), &self.path(rel), &mut out);
        out
    }
}

fn create(d: &Daemon, body: serde_json::Value) -> trust::Resp {
    d.http(
        Via::Unix,
        "POST",
        "/v1/sandboxes",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn sandbox_count(d: &Daemon) -> usize {
    let r = d.http(Via::Unix, "GET", "/v1/sandboxes", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().map_or(0, Vec::len)
}

#[test]
fn host_directories_mount_read_write_and_read_only_through_a_sandboxs_life() {
    let test = "host_directories_mount_read_write_and_read_only_through_a_sandboxs_life";
    if !can_run(test) {
        return;
    }
    let _turn = my_turn();
    let mut d = Daemon::start(false);
    let host = HostDir::new();
    std::os::unix::fs::symlink(host.path("data"), host.path("link")).unwrap();
    let ro = host.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("kept"), b"read me\n").unwrap();
    let before_ro = host.snapshot("ro");

    let id = d.create(&[
        "--no-home",
        "-v",
        // Through a symlink: recorded as the directory it led to.
        &host.arg("link", "/data", ""),
        "-v",
        &host.arg("ro", "/srv/ro", ":ro"),
    ]);
    let info = d.info(&id);
    let mounts = info["mounts"].as_array().expect("mounts shown").clone();
    let real = std::fs::canonicalize(host.path("data")).unwrap();
    assert_eq!(mounts.len(), 2, "{info}");
    assert_eq!(mounts[0]["source"], real.display().to_string());
    assert_eq!(mounts[0]["target"], "/data");
    assert_eq!(mounts[0]["read_only"], false);
    assert_eq!(mounts[1]["read_only"], true);

    // Host ids show as themselves; root inside writes as the host's root.
    let (c, out) = d.exec(&id, "stat -c '%u %n' /data/users.txt /data/roots.txt");
    assert_eq!(c, 0);
    assert_eq!(out, "1000 /data/users.txt\n0 /data/roots.txt\n");
    let (c, _) = d.exec(&id, "echo from inside > /data/new.txt && mkdir /data/sub");
    assert_eq!(c, 0);
    let new = host.path("data/new.txt");
    assert_eq!(std::fs::read(&new).unwrap(), b"from inside\n");
    assert_eq!(std::fs::metadata(&new).unwrap().uid(), 0);
    // What the host writes shows inside at once.
    std::fs::write(host.path("data/from-host"), b"hello\n").unwrap();
    assert_eq!(d.exec(&id, "cat /data/from-host").1, "hello\n");
    // Nothing beside the directory is reachable from it.
    let (c, out) = d.exec(&id, "cat /data/../other/secret 2>&1; ls /");
    assert!(!out.contains("not for the sandbox"), "{c} {out}");

    // Read-only: writes fail, and a remount by the sandbox's root cannot change that.
    let (c, out) = d.exec(
        &id,
        "cat /srv/ro/kept; echo x > /srv/ro/kept 2>&1 || echo refused",
    );
    assert_eq!((c, out.as_str()), (0, "read me\nrefused\n"));
    let (_, out) = d.exec(
        &id,
        "mount -o remount,rw /srv/ro 2>/dev/null && echo remounted; \
         mount -o remount,rw,bind /srv/ro 2>/dev/null && echo remounted; \
         touch /srv/ro/new 2>/dev/null && echo written; grep ' /srv/ro ' /proc/mounts",
    );
    assert!(
        !out.contains("remounted") && !out.contains("written"),
        "{out}"
    );
    assert!(out.contains(" ro,") || out.contains(" ro "), "{out}");

    // Paused and resumed, stopped and started: the mounts come back with the sandbox.
    d.ok(&["pause", &id]);
    d.ok(&["resume", &id]);
    assert_eq!(d.exec(&id, "cat /data/new.txt").1, "from inside\n");
    d.ok(&["stop", &id]);
    d.ok(&["start", &id]);
    assert_eq!(
        d.exec(&id, "cat /data/new.txt /srv/ro/kept").1,
        "from inside\nread me\n"
    );
    let (_, out) = d.exec(
        &id,
        "touch /srv/ro/new 2>/dev/null && echo written; echo done",
    );
    assert_eq!(out, "done\n", "read-only after a start too");

    // A new daemon adopts the sandbox with its mounts.
    d.shut_down();
    d.spawn();
    assert_eq!(d.exec(&id, "cat /data/new.txt").1, "from inside\n");
    assert_eq!(d.info(&id)["mounts"].as_array().map(Vec::len), Some(2));

    // A snapshot holds the sandbox's own files, not the host directory's.
    let (c, _) = d.exec(&id, "echo own > /own.txt");
    assert_eq!(c, 0);
    d.ok(&["snapshot", "--name", "mnt-snap", &id]);
    let snap = d.create(&["--no-home", "--template", "mnt-snap"]);
    let (_, out) = d.exec(&snap, "cat /own.txt; ls -A /data 2>&1 | wc -l");
    assert_eq!(out, "own\n0\n", "the mount point alone, empty");

    // Removal leaves the host directories exactly as the sandbox left them.
    let before = host.snapshot("data");
    d.ok(&["rm", &id, &snap]);
    d.ok(&["template", "rm", "mnt-snap"]);
    assert_eq!(host.snapshot("data"), before);
    assert_eq!(host.snapshot("ro"), before_ro);
    assert!(host.path("data/users.txt").exists());
    d.finish();
}

#[test]
fn host_mounts_are_refused_over_tcp_and_checked_on_the_unix_socket() {
    let test = "host_mounts_are_refused_over_tcp_and_checked_on_the_unix_socket";
    if !can_run(test) {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(true);
    let host = HostDir::new();
    let source = host.path("data").display().to_string();

    // Over TCP, whatever the key: refused before anything is made.
    let operator = d
        .ok(&["keys", "create", "--tenant", "default", "--operator"])
        .trim()
        .to_string();
    let body = serde_json::json!({
        "home_volume": false,
        "mounts": [{"source": source, "target": "/data"}],
    })
    .to_string();
    for key in [d.api_key(), operator.clone()] {
        let r = d.as_tenant(&key, "POST", "/v1/sandboxes", &body);
        assert_eq!((r.status, r.code().as_str()), (403, "permission_denied"));
        assert!(
            r.text().contains("only on the daemon's unix socket"),
            "{}",
            r.text()
        );
    }
    let o = d.tcp(
        Some(&operator),
        &["create", "--no-home", "-v", &format!("{source}:/data")],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unix socket"), "{}", stderr(&o));

    // On the unix socket, what cannot be mounted safely is refused, naming why.
    let file = host.path("data/roots.txt").display().to_string();
    let cases = [
        (serde_json::json!("data"), "/data", "absolute path"),
        (
            serde_json::json!("/nonexistent/wmnt"),
            "/data",
            "does not exist",
        ),
        (serde_json::json!(file), "/data", "not a directory"),
        (serde_json::json!(source), "/", "root"),
        (serde_json::json!(source), "data", "absolute"),
        (serde_json::json!(source), "/a/../etc", "normalized"),
        (serde_json::json!(source), "/proc/x", "sandbox's own"),
        (serde_json::json!(source), "/dev", "sandbox's own"),
        (serde_json::json!(source), "/.warren/run", "sandbox's own"),
        (serde_json::json!(d.data_dir()), "/data", "own directories"),
        (serde_json::json!("/tmp"), "/data", "own directories"),
    ];
    for (source, target, why) in cases {
        let r = create(
            &d,
            serde_json::json!({
                "home_volume": false,
                "mounts": [{"source": source, "target": target}],
            }),
        );
        assert_eq!(r.status, 400, "{source} {target}: {}", r.text());
        assert!(r.text().contains(why), "{source} {target}: {}", r.text());
    }
    // Nor over the home volume, nor one inside another.
    let r = create(
        &d,
        serde_json::json!({"mounts": [{"source": source, "target": "/home/user"}]}),
    );
    assert!(
        r.status == 400 && r.text().contains("hide the volume"),
        "{}",
        r.text()
    );
    let r = create(
        &d,
        serde_json::json!({
            "home_volume": false,
            "mounts": [
                {"source": source, "target": "/x"},
                {"source": host.path("other"), "target": "/x/y"},
            ],
        }),
    );
    assert!(
        r.status == 400 && r.text().contains("overlap"),
        "{}",
        r.text()
    );
    assert_eq!(sandbox_count(&d), 0, "a refused request leaves no sandbox");
    d.finish();
}

#[test]
fn a_symlink_swapped_in_after_creation_is_not_followed() {
    let test = "a_symlink_swapped_in_after_creation_is_not_followed";
    if !can_run(test) {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let host = HostDir::new();
    let id = d.create(&["--no-home", "-v", &host.arg("data", "/data", "")]);
    d.ok(&["stop", &id]);
    // The recorded directory is replaced by a link to one the operator never named.
    std::fs::rename(host.path("data"), host.path("data.old")).unwrap();
    std::os::unix::fs::symlink(host.path("other"), host.path("data")).unwrap();
    let o = d.run(&["start", &id]);
    assert!(!o.status.success(), "started through a planted link");
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(host.path("other/secret")).unwrap(),
        b"not for the sandbox\n"
    );
    // Put back, it mounts again.
    std::fs::remove_file(host.path("data")).unwrap();
    std::fs::rename(host.path("data.old"), host.path("data")).unwrap();
    d.ok(&["start", &id]);
    assert_eq!(d.exec(&id, "cat /data/users.txt").1, "user's\n");
    d.finish();
}

/// The OCI backends mount host directories as the namespace backend does (gVisor through
/// its gofer); trust mode, which has no mount namespace, refuses them before anything is
/// made.
#[test]
fn host_mounts_alike_on_the_oci_backends_and_refused_in_trust_mode() {
    let test = "host_mounts_alike_on_the_oci_backends_and_refused_in_trust_mode";
    if !can_run(test) {
        return;
    }
    let _turn = my_turn();
    let spaces = tempfile::Builder::new()
        .prefix("wmnt-spaces")
        .tempdir_in("/tmp")
        .unwrap();
    let d = Daemon::start_opts(trust::Options {
        config: Some(format!(
            "[backends.process]\nuser = \"nobody\"\ndir = \"{}\"\n",
            spaces.path().display()
        )),
        ..Default::default()
    });
    let host = HostDir::new();
    let ro = host.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("kept"), b"read me\n").unwrap();
    let mounts = serde_json::json!([
        {"source": host.path("data"), "target": "/data"},
        {"source": ro, "target": "/srv/ro", "read_only": true},
    ]);
    let r = d.http(Via::Unix, "GET", "/v1/backends", &[], b"");
    let list = r.json().as_array().cloned().unwrap_or_default();
    let entry = |name: &str| list.iter().find(|b| b["name"] == name).cloned().unwrap();

    let process = entry("process");
    assert_eq!(process["capabilities"]["host_mounts"], false);
    if process["available"] == true {
        let r = create(
            &d,
            serde_json::json!({"isolation": "process", "mounts": mounts}),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.text()
                .contains("process backend mounts no host directories"),
            "{}",
            r.text()
        );
        assert_eq!(sandbox_count(&d), 0);
    } else {
        warren_testkit::skip(
            &format!("{test} (process)"),
            process["reason"].as_str().unwrap_or("unavailable"),
        );
    }

    for backend in ["gvisor", "runc", "crun"] {
        let b = entry(backend);
        if b["available"] != true {
            warren_testkit::skip(
                &format!("{test} ({backend})"),
                b["reason"].as_str().unwrap_or("unavailable"),
            );
            continue;
        }
        assert_eq!(b["capabilities"]["host_mounts"], true, "{backend}");
        let r = create(
            &d,
            serde_json::json!({
                "isolation": backend,
                "home_volume": false,
                "mounts": mounts,
            }),
        );
        assert_eq!(r.status, 201, "{backend}: {}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        d.saw(&id);
        let (c, out) = d.exec(&id, "stat -c '%u %n' /data/users.txt /data/roots.txt");
        assert_eq!(
            (c, out.as_str()),
            (0, "1000 /data/users.txt\n0 /data/roots.txt\n"),
            "{backend}"
        );
        let file = format!("by-{backend}.txt");
        let (c, _) = d.exec(&id, &format!("echo {backend} > /data/{file}"));
        assert_eq!(c, 0, "{backend}");
        let written = host.path("data").join(&file);
        assert_eq!(
            std::fs::read(&written).unwrap(),
            format!("{backend}\n").as_bytes()
        );
        assert_eq!(std::fs::metadata(&written).unwrap().uid(), 0, "{backend}");
        let ro_check = "cat /srv/ro/kept; echo x > /srv/ro/kept 2>/dev/null && echo written; \
                        touch /srv/ro/new 2>/dev/null && echo written; echo done";
        assert_eq!(d.exec(&id, ro_check).1, "read me\ndone\n", "{backend}");
        let (_, out) = d.exec(
            &id,
            "mount -o remount,rw /srv/ro 2>/dev/null && echo remounted; \
             touch /srv/ro/new 2>/dev/null && echo written; echo done",
        );
        assert_eq!(out, "done\n", "{backend}");
        // Back after a pause (gVisor: a checkpoint and a restore) and after a stop.
        d.ok(&["pause", &id]);
        d.ok(&["resume", &id]);
        assert_eq!(
            d.exec(&id, &format!("cat /data/{file}")).1,
            format!("{backend}\n")
        );
        d.ok(&["stop", &id]);
        d.ok(&["start", &id]);
        assert_eq!(
            d.exec(&id, ro_check).1,
            "read me\ndone\n",
            "{backend} after a start"
        );
        let before = host.snapshot("data");
        d.ok(&["rm", &id]);
        assert_eq!(
            host.snapshot("data"),
            before,
            "{backend}: removal kept the files"
        );
        eprintln!("host mounts on {backend}: checked");
    }
    assert_eq!(std::fs::read(ro.join("kept")).unwrap(), b"read me\n");
    d.finish();
}

/// `warren run` without a daemon mounts host directories itself, with the same checks.
#[test]
fn warren_run_mounts_host_directories_without_a_daemon() {
    if !can_run("warren_run_mounts_host_directories_without_a_daemon") {
        return;
    }
    let host = HostDir::new();
    let out = common::sh_ok(
        &["-v", &host.arg("data", "/data", ":ro")],
        "stat -c %u /data/users.txt; touch /data/new 2>/dev/null || echo refused",
    );
    assert_eq!(out, "1000\nrefused\n");
    let o = common::sh(&["-v", &host.arg("data", "/proc/x", "")], "true");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sandbox's own"), "{}", stderr(&o));
    assert!(!host.path("data/new").exists());
}
