//! Attacks beyond the last round's findings: what an outsider who read the docs would
//! try next. Each test is one attack, named after what must hold. Some found bugs when
//! written (a tree deeper than the stack aborted the daemon; core dumps could be turned
//! back on; forged source addresses were forwarded; `A=B` was taken as a variable
//! name); the rest pin down what held. docs/trust.md lists them with their verdicts.
//! Needs root (CI is root); a test that cannot run records its skip.
//!
//! Network probes only target loopback and network namespaces a test makes itself.

mod common;
mod trust;

use std::process::Command;
use std::time::Duration;

use common::{can_run, sh, stderr, stdout};
use trust::{my_turn, Daemon, Options, Via};

/// A daemon whose sandboxes keep their writable layers as directories on the host's
/// disk (no disk limit): the trees the host itself copies, measures and removes.
fn daemon_with_host_layers(extra: &str) -> Daemon {
    Daemon::start_opts(Options {
        config: Some(format!("{extra}[limits.defaults]\ndisk = 0\n")),
        ..Default::default()
    })
}

/// A JSON request on the unix socket, as tenant `default`.
fn post(d: &Daemon, path: &str, body: &serde_json::Value) -> trust::Resp {
    d.http(
        Via::Unix,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Runs `script` through the exec API with extra request fields: (HTTP status, answer).
fn exec_with(d: &Daemon, id: &str, script: &str, extra: serde_json::Value) -> trust::Resp {
    let mut body = serde_json::json!({ "command": { "shell": script } });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    post(d, &format!("/v1/sandboxes/{id}/exec"), &body)
}

/// The sandbox's PID 1 on the host: the first child of its helper.
fn agent_pid(d: &Daemon, id: &str) -> i32 {
    let helper = std::fs::read_to_string(d.run_dir().join("sandboxes").join(id).join("helper.pid"))
        .expect("the sandbox's helper.pid");
    let helper = helper.trim();
    let children =
        std::fs::read_to_string(format!("/proc/{helper}/task/{helper}/children")).unwrap();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the helper has a child")
}

#[test]
fn a_tree_deeper_than_any_stack_is_measured_and_removed() {
    if !can_run("a_tree_deeper_than_any_stack_is_measured_and_removed") {
        return;
    }
    let _turn = my_turn();
    let d = daemon_with_host_layers("disk_measure_secs = 1\n");
    let id = d.create(&["--no-home"]);
    // 20,000 levels (deeper than a thread's stack allows a recursive walk, and than any
    // path), with 20 MB at the bottom.
    let (code, out) = d.exec(
        &id,
        "python3 -c \"import os\nos.chdir('/tmp')\nfor i in range(20000):\n os.mkdir('d')\n \
         os.chdir('d')\nopen('big', 'wb').write(b'x' * (20 << 20))\nprint('made')\"",
    );
    assert_eq!((code, out.as_str()), (0, "made\n"));
    // The disk count sees what lies at the bottom.
    let mut bytes = 0;
    for _ in 0..300 {
        let r = d.http(Via::Unix, "GET", "/v1/disk", &[], b"");
        bytes = r.json()["sandboxes"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == id.as_str()))
            .and_then(|s| s["bytes"].as_u64())
            .unwrap_or(0);
        if bytes >= 20 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        bytes >= 20 << 20,
        "the disk count missed the bottom: {bytes}"
    );
    // Removing it neither aborts the daemon nor leaves the tree behind.
    d.ok(&["rm", &id]);
    assert!(
        d.healthy(),
        "the daemon died removing the tree:\n{}",
        d.log()
    );
    assert!(!d.data_dir().join("sandboxes").join(&id).exists());
    d.finish();
}

#[test]
fn a_snapshot_keeps_fifos_links_and_holes_and_refuses_what_it_cannot_copy() {
    if !can_run("a_snapshot_keeps_fifos_links_and_holes_and_refuses_what_it_cannot_copy") {
        return;
    }
    let _turn = my_turn();
    let d = daemon_with_host_layers("");
    let id = d.create(&["--no-home"]);
    // A FIFO (a copy that opened it would hang), a link to a path the host also has, an
    // 8 GiB hole (a copy that wrote it out would fill the host's disk), two names of one
    // file.
    let (code, _) = d.exec(
        &id,
        "mkfifo /tmp/fifo && ln -s /etc/shadow /tmp/abs && truncate -s 8G /tmp/hole && \
         echo one > /tmp/a && ln /tmp/a /tmp/b",
    );
    assert_eq!(code, 0);
    d.ok(&["snapshot", "--name", "attack-snap", &id]);
    let r = d.http(Via::Unix, "GET", "/v1/templates/attack-snap", &[], b"");
    let size = r.json()["size_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        size < 64 << 20,
        "the snapshot wrote the hole out: {size} bytes"
    );
    let copy = d.create(&["--no-home", "--template", "attack-snap"]);
    let (code, out) = d.exec(
        &copy,
        "[ -p /tmp/fifo ] && echo fifo; readlink /tmp/abs; stat -c %s /tmp/hole; \
         [ $(stat -c %i /tmp/a) = $(stat -c %i /tmp/b) ] && echo linked",
    );
    assert_eq!(code, 0);
    assert_eq!(out, "fifo\n/etc/shadow\n8589934592\nlinked\n");
    // A path longer than any path: the snapshot fails, briefly, and nothing else does.
    let (code, _) = d.exec(
        &id,
        "python3 -c \"import os\nos.chdir('/tmp')\nfor i in range(3000):\n os.mkdir('d')\n \
         os.chdir('d')\"",
    );
    assert_eq!(code, 0);
    let o = d.run(&["snapshot", "--name", "attack-deep", &id]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).len() < 1024,
        "the error is {} bytes long",
        stderr(&o).len()
    );
    assert!(d.healthy());
    d.ok(&["rm", &id, &copy]);
    d.ok(&["template", "rm", "attack-snap"]);
    d.finish();
}

#[test]
fn no_core_dump_leaves_a_sandbox() {
    if !can_run("no_core_dump_leaves_a_sandbox") {
        return;
    }
    // The host's core_pattern may pipe a crash to a host program running as host root
    // (systemd-coredump, apport) and writes to the host's disk: a sandbox may not turn
    // its dumps on.
    let o = sh(
        &[],
        "ulimit -Hc; ulimit -c unlimited 2>/dev/null && echo raised; cd /tmp && \
         sh -c 'kill -SEGV $$'; ls /tmp | grep -c core; true",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\n0\n", "core dumps could be turned on");
}

#[test]
fn a_forged_source_address_never_leaves_the_host() {
    if !can_run("a_forged_source_address_never_leaves_the_host") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home", "--network", "nat"]);
    let peer = common::Peer::new("wtspf", "198.18.7.1", "198.18.7.2").expect("a test netns");
    // The peer records the source of every datagram it gets.
    let listener = peer
        .cmd(&[
            "python3",
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('198.18.7.2',7100))\ns.settimeout(3)\n\
             try:\n while True:\n  d,a=s.recvfrom(100); print(a[0], d.decode(), flush=True)\n\
             except OSError: pass",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Root in the sandbox has no CAP_NET_ADMIN or CAP_NET_RAW; a backend with a network
    // stack of its own (gVisor's) would let it set any source. The test does it for it,
    // in the sandbox's network namespace: one datagram from its own address, one forged.
    let netns = format!("/proc/{}/ns/net", agent_pid(&d, &id));
    let inside = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(inside(&[
        "ip",
        "addr",
        "add",
        "192.0.2.77/32",
        "dev",
        "eth0"
    ]));
    let send = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                s.bind((sys.argv[1],0))\ns.sendto(sys.argv[2].encode(),('198.18.7.2',7100))";
    let (_, own) = d.exec(&id, "ip -4 -o addr show eth0 | awk '{print $4}' | head -1");
    let own = own.trim().split('/').next().unwrap().to_string();
    assert!(inside(&["python3", "-c", send, &own, "honest"]));
    assert!(inside(&["python3", "-c", send, "192.0.2.77", "forged"]));
    let got = stdout(&listener.wait_with_output().unwrap());
    assert!(
        got.contains("honest"),
        "the sandbox's own traffic did not get out: {got:?}"
    );
    assert!(
        !got.contains("forged"),
        "a forged source address left the host: {got:?}"
    );
    drop(peer);
    d.finish();
}

#[test]
fn environment_names_that_would_set_other_variables_are_refused() {
    if !can_run("environment_names_that_would_set_other_variables_are_refused") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    for env in [
        serde_json::json!({ "LD_PRELOAD=/tmp/x.so #": "1" }),
        serde_json::json!({ "": "x" }),
        serde_json::json!({ "A\u{0}B": "x" }),
        serde_json::json!({ "A": "x\u{0}y" }),
    ] {
        let r = post(
            &d,
            "/v1/sandboxes",
            &serde_json::json!({ "env": env, "home_volume": false }),
        );
        assert_eq!(r.status, 400, "create with env {env}: {}", r.text());
    }
    let id = d.create(&["--no-home"]);
    let r = exec_with(
        &d,
        &id,
        "env",
        serde_json::json!({ "env": { "PATH=/tmp:/bin #": "x" } }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(
        &d,
        &format!("/v1/sandboxes/{id}/exec"),
        &serde_json::json!({ "command": { "argv": ["ec\u{0}ho", "x"] } }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let (code, out) = d.exec(&id, "echo fine");
    assert_eq!((code, out.as_str()), (0, "fine\n"));
    assert!(
        d.ok(&["ls"]).lines().count() == 2,
        "a refused create made a sandbox"
    );
    d.finish();
}

#[test]
fn the_daemons_environment_reaches_no_sandbox() {
    if !can_run("the_daemons_environment_reaches_no_sandbox") {
        return;
    }
    let _turn = my_turn();
    // A service manager's or operator's secrets in the daemon's environment.
    let d = Daemon::start_opts(Options {
        inherit: Some("export WARREN_ATTACK_SECRET=s3cr3t-of-the-host".into()),
        ..Default::default()
    });
    let built = post(
        &d,
        "/v1/templates/build",
        &serde_json::json!({
            "name": "attack-env",
            "steps": ["env > /build-env"],
            "start_cmd": "env > /tmp/start-env; sleep 1000",
        }),
    );
    assert_eq!(built.status, 200, "{}", built.text());
    let id = d.create(&["--no-home", "--template", "attack-env"]);
    let (code, out) = d.exec(
        &id,
        "sleep 0.5; env; cat /build-env /tmp/start-env; cat /proc/1/environ 2>/dev/null; true",
    );
    assert_eq!(code, 0);
    assert!(out.contains("PATH="), "{out}");
    assert!(
        !out.contains("s3cr3t"),
        "the daemon's environment reached the sandbox:\n{out}"
    );
    d.ok(&["rm", &id]);
    d.ok(&["template", "rm", "attack-env"]);
    d.finish();
}

#[test]
fn signals_from_inside_reach_nothing_outside_and_pid_1_survives() {
    if !can_run("signals_from_inside_reach_nothing_outside_and_pid_1_survives") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let a = d.create(&["--no-home"]);
    let b = d.create(&["--no-home"]);
    let daemon = d.pid().unwrap();
    let (_, out) = d.exec(
        &a,
        &format!(
            "kill -9 {daemon} 2>/dev/null && echo reached-daemon; kill -STOP 1; kill -9 1; \
             kill -SEGV 1; kill -9 -1; echo done"
        ),
    );
    assert_eq!(out, "done\n");
    assert!(d.healthy());
    for id in [&a, &b] {
        let (code, out) = d.exec(id, "echo alive");
        assert_eq!((code, out.as_str()), (0, "alive\n"), "sandbox {id}");
    }
    d.finish();
}

#[test]
fn every_way_in_runs_confined() {
    if !can_run("every_way_in_runs_confined") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let status = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -d ' \\t'";
    let built = post(
        &d,
        "/v1/templates/build",
        &serde_json::json!({
            "name": "attack-confined",
            "steps": [format!("{status} > /from-build")],
            "start_cmd": format!("{status} > /tmp/from-start; sleep 1000"),
        }),
    );
    assert_eq!(built.status, 200, "{}", built.text());
    let id = d.create(&["--no-home", "--template", "attack-confined"]);
    let confined = "NoNewPrivs:1\nSeccomp:2\n";
    let mut seen = Vec::new();
    // A plain exec, as root and as the unprivileged user, on a terminal, detached.
    for (what, extra) in [
        ("exec", serde_json::json!({})),
        (
            "exec as user",
            serde_json::json!({ "user": { "name": "user" } }),
        ),
        (
            "exec on a terminal",
            serde_json::json!({ "tty": { "rows": 24, "cols": 80 } }),
        ),
    ] {
        let r = exec_with(&d, &id, status, extra);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        seen.push((
            what,
            r.json()["stdout"].as_str().unwrap_or("").replace('\r', ""),
        ));
    }
    d.ok(&[
        "exec",
        "-d",
        &id,
        "--",
        "sh",
        "-c",
        &format!("{status} > /tmp/detached"),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    for (what, file) in [
        ("build step", "/from-build"),
        ("start command", "/tmp/from-start"),
        ("detached exec", "/tmp/detached"),
    ] {
        seen.push((what, d.exec(&id, &format!("cat {file}")).1));
    }
    for (what, got) in seen {
        assert_eq!(got, confined, "{what} ran unconfined");
    }
    d.ok(&["rm", &id]);
    d.ok(&["template", "rm", "attack-confined"]);
    d.finish();
}

#[test]
fn names_cannot_climb_out_of_warrens_directories() {
    if !can_run("names_cannot_climb_out_of_warrens_directories") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    for bad in ["../attack", "..", "a/b", "/etc", "x\u{0}y", ".attack"] {
        for (path, body) in [
            (
                "/v1/sandboxes",
                serde_json::json!({ "name": bad, "home_volume": false }),
            ),
            (
                "/v1/sandboxes",
                serde_json::json!({ "owner": bad, "home_volume": false }),
            ),
            (
                "/v1/templates/build",
                serde_json::json!({ "name": bad, "steps": ["true"] }),
            ),
            (
                &format!("/v1/sandboxes/{id}/snapshot"),
                serde_json::json!({ "name": bad }),
            ),
        ] {
            // An owner is hashed into its paths: a leading dot is an owner's own business.
            if bad == ".attack" && body.get("owner").is_some() {
                continue;
            }
            let r = post(&d, path, &body);
            assert!(
                matches!(r.status, 400 | 404 | 422),
                "{path} with {body}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Nothing was made beside the daemon's directories, or above its templates.
    let around: Vec<_> = std::fs::read_dir(d.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("attack"))
        .collect();
    assert!(around.is_empty(), "{around:?}");
    assert!(!d.data_dir().join("attack").exists());
    assert_eq!(d.ok(&["ls"]).lines().count(), 2);
    d.finish();
}

#[test]
fn the_same_owner_in_two_tenants_has_two_homes() {
    if !can_run("the_same_owner_in_two_tenants_has_two_homes") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, key_b) = trust::two_tenants(None);
    let a = d.create_as(&key_a, r#"{"owner":"alice"}"#);
    let r = d.as_tenant(
        &key_a,
        "POST",
        &format!("/v1/sandboxes/{a}/exec"),
        r#"{"command":{"shell":"echo tenant-a-secret > /home/user/notes"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b = d.create_as(&key_b, r#"{"owner":"alice"}"#);
    let r = d.as_tenant(
        &key_b,
        "POST",
        &format!("/v1/sandboxes/{b}/exec"),
        r#"{"command":{"shell":"cat /home/user/notes 2>&1; ls -A /home/user"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json()["stdout"].as_str().unwrap_or("").to_string();
    assert!(
        !out.contains("tenant-a-secret"),
        "tenant b's alice read tenant a's alice's home: {out}"
    );
    d.finish();
}

#[test]
fn a_sandbox_name_belongs_to_its_tenant() {
    if !can_run("a_sandbox_name_belongs_to_its_tenant") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, key_b) = trust::two_tenants(None);
    let a = d.create_as(&key_a, r#"{"name":"db","home_volume":false}"#);
    for (method, path) in [
        ("GET", "/v1/sandboxes/db"),
        ("DELETE", "/v1/sandboxes/db"),
        ("POST", "/v1/sandboxes/db/pause"),
    ] {
        let r = d.as_tenant(&key_b, method, path, "");
        assert_eq!(r.status, 404, "{method} {path} as b: {}", r.text());
    }
    // B may take the same name; each name leads to its own tenant's sandbox.
    let b = d.create_as(&key_b, r#"{"name":"db","home_volume":false}"#);
    assert_ne!(a, b);
    for (key, id) in [(&key_a, &a), (&key_b, &b)] {
        let r = d.as_tenant(key, "GET", "/v1/sandboxes/db", "");
        assert_eq!(r.json()["id"], id.as_str());
    }
    d.finish();
}

#[test]
fn ipc_objects_stay_in_their_sandbox() {
    if !can_run("ipc_objects_stay_in_their_sandbox") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let a = d.create(&["--no-home"]);
    let b = d.create(&["--no-home"]);
    let (code, keys) = d.exec(
        &a,
        "ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && ipcmk -S 1 >/dev/null && \
         ipcs | awk '/^0x/ {print $1}'",
    );
    assert_eq!(code, 0);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let (_, in_b) = d.exec(&b, "ipcs | awk '/^0x/ {print $1}'");
    let host = stdout(&Command::new("ipcs").output().unwrap());
    for k in keys {
        assert!(!in_b.contains(k), "a neighbour sees IPC object {k}");
        assert!(!host.contains(k), "the host sees IPC object {k}");
    }
    d.finish();
}

#[test]
fn the_clock_and_kernel_settings_cannot_be_changed() {
    if !can_run("the_clock_and_kernel_settings_cannot_be_changed") {
        return;
    }
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    let o = sh(
        &[],
        "date -s @86400 >/dev/null 2>&1 && echo clock; \
         sysctl -w vm.swappiness=7 >/dev/null 2>&1 && echo sysctl; \
         echo 7 > /proc/sys/vm/swappiness 2>/dev/null && echo procsys; \
         echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo sysrq; \
         echo 0 > /proc/sys/kernel/randomize_va_space 2>/dev/null && echo aslr; \
         python3 -c 'import time; time.clock_settime(time.CLOCK_REALTIME, 86400)' 2>/dev/null \
           && echo settime; true",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "a setting of the host's kernel changed");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        swappiness
    );
    let year: u32 = stdout(&Command::new("date").arg("+%Y").output().unwrap())
        .trim()
        .parse()
        .unwrap();
    assert!(year >= 2025);
}

#[test]
fn a_sandbox_cannot_retune_its_disk_or_any_filesystem_of_the_host() {
    if !can_run("a_sandbox_cannot_retune_its_disk_or_any_filesystem_of_the_host") {
        return;
    }
    // Its disk's allocator is set from the host (`mb_prefetch`), in the host's sysfs:
    // the sandbox's own /sys is read-only, its root no root of the host's, and a
    // remount or a fresh sysfs changes neither.
    let o = sh(
        &["--disk", "64M"],
        "ls /sys/fs/ext4 | grep -q '^loop' || echo 'no disk of its own seen'; \
         for f in /sys/fs/ext4/*/mb_prefetch /sys/fs/ext4/*/mb_stats \
                  /sys/fs/ext4/*/inode_readahead_blks; do \
           [ -e \"$f\" ] || continue; echo 32 > \"$f\" 2>/dev/null && echo \"wrote $f\"; done; \
         mount -o remount,rw /sys 2>/dev/null && echo remounted; \
         mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s 2>/dev/null && \
           for f in /tmp/s/fs/ext4/*/mb_prefetch; do \
             [ -e \"$f\" ] || continue; echo 32 > \"$f\" 2>/dev/null && echo \"wrote $f\"; done; \
         true",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "",
        "a filesystem setting was changed from inside"
    );
}

#[test]
fn mounts_cannot_be_made_undone_or_remounted_from_inside() {
    if !can_run("mounts_cannot_be_made_undone_or_remounted_from_inside") {
        return;
    }
    let o = sh(
        &[],
        "mkdir -p /tmp/m; try() { \"$@\" >/dev/null 2>&1 && echo \"did: $*\"; }; \
         try umount /proc/interrupts; try umount -l /proc/kcore; try umount -l /dev; \
         try umount /proc/acpi; try umount -l /sys/firmware; \
         try mount -o remount,rw /sys/firmware; try mount -o remount,rw /proc/acpi; \
         try touch /sys/firmware/x; try touch /proc/acpi/x; \
         try mount -o remount,rw /usr; try mount -o remount,suid /; \
         try mount -t proc proc /tmp/m; try mount -t sysfs sys /tmp/m; \
         try mount -t tmpfs t /tmp/m; try mount --bind / /tmp/m; \
         try mount -t cgroup2 c /tmp/m; try unshare -m true; try unshare -U true; \
         try unshare -Ur true; try chroot /tmp true; true",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // chroot alone is allowed (CAP_SYS_CHROOT, as in Docker); it leads nowhere new.
    let did: Vec<&str> = out.lines().filter(|l| !l.contains("chroot")).collect();
    assert!(did.is_empty(), "mount changes went through: {did:?}");
}

/// The classic climb out of a chroot, as root inside (who may `chroot`): keep a
/// descriptor of `/`, chroot into a subdirectory, go back to the descriptor and up. A
/// sandbox made by the daemon sits on an empty shell namespace rather than pivoting out
/// of the host's (see warren-runtime's `shell`), one made by `warren run` pivots: either
/// way the climb stops at the sandbox's own root and nothing else is in reach.
#[test]
fn a_chroot_climb_stops_at_the_sandboxs_own_root() {
    if !can_run("a_chroot_climb_stops_at_the_sandboxs_own_root") {
        return;
    }
    let _turn = my_turn();
    let marker = format!("warren-climb-{}", std::process::id());
    let climb = format!(
        "import os\n\
         before = sorted(os.listdir('/'))\n\
         os.makedirs('/tmp/in', exist_ok=True)\n\
         fd = os.open('/', os.O_RDONLY)\n\
         os.chroot('/tmp/in')\n\
         os.fchdir(fd)\n\
         for _ in range(64): os.chdir('..')\n\
         os.chroot('.')\n\
         after = sorted(os.listdir('/'))\n\
         print('same' if after == before else 'other: %s' % after)\n\
         for p in ['/r', '/p', '/s', '/p/1/root', '/tmp/{marker}', '/proc/1/root/tmp/{marker}']:\n\
         \x20   if os.path.exists(p): print('reached', p)\n"
    );
    // Something of the host's to look for from inside: it must stay out of reach.
    std::fs::create_dir_all(std::env::temp_dir().join(&marker)).unwrap();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    let (code, via_daemon) = d.exec(&id, &format!("python3 -c \"{climb}\""));
    let via_cli = stdout(&sh(&[], &format!("python3 -c \"{climb}\"")));
    d.finish();
    let _ = std::fs::remove_dir(std::env::temp_dir().join(&marker));
    assert_eq!(code, 0, "{via_daemon}");
    for (how, out) in [("daemon", via_daemon), ("warren run", via_cli)] {
        assert_eq!(
            out.trim(),
            "same",
            "through the {how}: the climb reached {out}"
        );
    }
}

/// /dev/shm is a directory of the /dev tmpfs, and the masked directories are binds of
/// /dev/pts's directory of it: what a sandbox writes to /dev/shm must reach nothing
/// else of that filesystem, as root or as another user.
#[test]
fn dev_shm_reaches_nothing_else_of_the_dev_tmpfs() {
    if !can_run("dev_shm_reaches_nothing_else_of_the_dev_tmpfs") {
        return;
    }
    let script = "try() { \"$@\" >/dev/null 2>&1 && echo \"did: $*\"; }; \
         echo x > /dev/shm/f || echo 'no write to /dev/shm'; cp /bin/true /dev/shm/t; \
         try touch /dev/x; try mkdir /dev/d; try ln /dev/shm/f /dev/f; \
         try mv /dev/shm/f /dev/null; try mv /dev/shm/f /dev/pts/f; \
         try ln -s /dev/shm/f /dev/l; try mknod /dev/shm/n c 1 3; \
         try mount -o remount,exec /dev/shm; try mount -o remount,dev /dev/shm; \
         try mount -o remount,suid /dev/shm; try umount /dev/shm; try /dev/shm/t; \
         test -c /dev/null || echo 'did: /dev/null replaced'; \
         for m in /proc/acpi /sys/firmware; do \
           test -z \"$(ls -A $m 2>/dev/null)\" || echo \"did: $m filled\"; done; \
         true";
    for user in [&[][..], &["--user", "65534"][..]] {
        let o = sh(user, script);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            !out.contains("no write"),
            "{user:?}: /dev/shm is not writable: {out}"
        );
        let did: Vec<&str> = out.lines().filter(|l| l.starts_with("did:")).collect();
        assert!(did.is_empty(), "{user:?}: went through: {did:?}");
    }
}

#[test]
fn memory_filesystems_are_charged_to_the_sandbox() {
    if !can_run("memory_filesystems_are_charged_to_the_sandbox") {
        return;
    }
    // The writable layer of `warren run --rm` lives in memory, and /dev/shm is tmpfs:
    // filling them is the sandbox's memory, under its limit, not the host's.
    let o = sh(
        &["--memory", "64M"],
        "dd if=/dev/zero of=/root/fill bs=1M count=256 2>/dev/null; \
         dd if=/dev/zero of=/dev/shm/fill bs=1M count=256 2>/dev/null; \
         echo $(( ($(stat -c %s /root/fill) + $(stat -c %s /dev/shm/fill)) >> 20 ))",
    );
    // Three outcomes keep the host whole: the writes stop at the limit (the files hold
    // at most 64 MiB), or the kernel's OOM killer, acting for the sandbox's cgroup,
    // picks the shell itself before it can print, or, once the shell is gone and the
    // files still hold the memory, the sandbox's agent (tmpfs pages belong to no
    // process, so which one it picks varies). Anything else means the pages went
    // uncharged.
    let err = stderr(&o);
    if !o.status.success()
        && (err.contains("killed by the kernel: out of memory")
            || err.contains("the sandbox was stopped: out of memory"))
    {
        return;
    }
    let out = stdout(&o);
    let held: u64 = out
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .parse()
        .unwrap_or(u64::MAX);
    assert!(
        held <= 64,
        "{held} MiB were held in memory filesystems under a 64 MiB limit ({}): {out}{err}",
        o.status
    );
}

#[test]
fn a_paused_sandbox_answers_at_once() {
    if !can_run("a_paused_sandbox_answers_at_once") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    d.ok(&["pause", &id]);
    // Its agent is frozen: nothing may wait on it.
    let exec = exec_with(&d, &id, "true", serde_json::json!({}));
    let read = d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{id}/files?path=/etc/hostname"),
        &[],
        b"",
    );
    let write = d.http(
        Via::Unix,
        "PUT",
        &format!("/v1/sandboxes/{id}/files?path=/tmp/x"),
        &[],
        b"x",
    );
    for (what, r) in [("exec", exec), ("read", read), ("write", write)] {
        assert_eq!(r.status, 409, "{what} in a paused sandbox: {}", r.text());
    }
    d.ok(&["resume", &id]);
    assert_eq!(d.exec(&id, "echo back").1, "back\n");
    d.finish();
}

#[test]
fn oversized_bodies_and_tags_are_refused_before_anything_is_made() {
    if !can_run("oversized_bodies_and_tags_are_refused_before_anything_is_made") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let many: serde_json::Map<String, serde_json::Value> = (0..65)
        .map(|i| (format!("k{i}"), serde_json::json!("v")))
        .collect();
    let cases = [
        (
            "a 10 MB metadata value",
            serde_json::json!({ "metadata": { "k": "x".repeat(10 << 20) } }).to_string(),
        ),
        (
            "65 metadata entries",
            serde_json::json!({ "metadata": many }).to_string(),
        ),
        (
            "a 5000-byte label",
            serde_json::json!({ "labels": { "l".repeat(5000): "v" } }).to_string(),
        ),
        // Nesting that a recursive parser without a limit would follow off its stack.
        ("JSON nested 100,000 deep", "[".repeat(100_000)),
    ];
    for (what, body) in cases {
        let r = d.http(
            Via::Unix,
            "POST",
            "/v1/sandboxes",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert!(
            matches!(r.status, 400 | 413 | 422),
            "{what}: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(d.healthy());
    assert_eq!(
        d.ok(&["ls"]).lines().count(),
        1,
        "a refused request made a sandbox"
    );
    d.finish();
}

#[test]
fn links_at_a_templates_mount_points_lead_nowhere() {
    if !can_run("links_at_a_templates_mount_points_lead_nowhere") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let marker = format!("/tmp/warren-attack-marker-{}", std::process::id());
    std::fs::write(&marker, "host").unwrap();
    // /home/user (where the home volume is mounted) a link to /etc, /tmp a link that
    // climbs through /proc to the root.
    let built = post(
        &d,
        "/v1/templates/build",
        &serde_json::json!({
            "name": "attack-links",
            "steps": ["rm -rf /home/user /tmp && ln -s /etc /home/user && \
                       ln -s /proc/1/root/../../../tmp /tmp"],
        }),
    );
    assert_eq!(built.status, 200, "{}", built.text());
    let r = post(
        &d,
        "/v1/sandboxes",
        &serde_json::json!({ "template": "attack-links" }),
    );
    assert!(
        r.status >= 400,
        "a home volume was mounted through a link: {}",
        r.text()
    );
    assert!(d.healthy());
    let id = d.create(&["--no-home", "--template", "attack-links"]);
    let name = marker.trim_start_matches("/tmp/");
    let (_, out) = d.exec(&id, &format!("ls -a /tmp/ 2>&1; cat /tmp/{name} 2>&1"));
    assert!(
        !out.contains("host\n"),
        "the host's /tmp was reached: {out}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host");
    let _ = std::fs::remove_file(&marker);
    d.ok(&["rm", &id]);
    d.ok(&["template", "rm", "attack-links"]);
    d.finish();
}

#[test]
fn file_capabilities_set_inside_grant_nothing() {
    if !can_run("file_capabilities_set_inside_grant_nothing") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    // Root inside may set file capabilities (CAP_SETFCAP, as in Docker); running the
    // file must not grant them, to root (beyond its own) or to the unprivileged user.
    let (code, out) = d.exec(
        &id,
        "cp /usr/bin/python3 /tmp/py && setcap cap_sys_admin,cap_net_raw,cap_sys_ptrace+ep \
         /tmp/py && chmod 755 /tmp/py && getcap /tmp/py",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cap_sys_admin"), "{out}");
    let caps = "grep CapEff /proc/self/status";
    let (_, mine) = d.exec(&id, caps);
    let (_, with_file) = d.exec(
        &id,
        "/tmp/py -c \"print(open('/proc/self/status').read())\" | grep CapEff",
    );
    assert_eq!(with_file, mine, "file capabilities raised root's");
    let r = exec_with(
        &d,
        &id,
        "/tmp/py -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); \
         print(\"raw\")' 2>&1 | tail -1",
        serde_json::json!({ "user": { "name": "user" } }),
    );
    let out = r.json()["stdout"].as_str().unwrap_or("").to_string();
    assert!(
        !out.contains("raw\n") && out.contains("PermissionError"),
        "the user got a raw socket: {out}"
    );
    d.finish();
}

#[test]
fn a_process_that_keeps_forking_does_not_outlive_its_sandbox() {
    if !can_run("a_process_that_keeps_forking_does_not_outlive_its_sandbox") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    // New sessions, double forks and a loop that keeps making more, all detached.
    let (code, _) = d.exec(
        &id,
        "nohup setsid sh -c 'while :; do (setsid sleep 987654 &); sleep 0.05; done' \
         >/dev/null 2>&1 & sleep 1",
    );
    assert_eq!(code, 0);
    let survivors = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00987654\x00")
            })
            .count()
    };
    assert!(survivors() > 0, "the loop never started");
    d.ok(&["rm", &id]);
    let mut left = survivors();
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = survivors();
    }
    assert_eq!(left, 0, "processes outlived their sandbox");
    d.finish();
}

#[test]
fn stalled_readers_of_tiny_writes_hold_little_in_the_daemon() {
    use std::io::{Read, Write};
    if !can_run("stalled_readers_of_tiny_writes_hold_little_in_the_daemon") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    let pid = d.pid().unwrap();
    let before = trust::rss(pid);
    // Each stream's process writes one byte at a time as fast as it can; each client
    // reads the answer's head and then nothing. One-byte frames must not pile up on the
    // host (the credit window bounds bytes, and a frame costs at least 256 of it).
    let body = serde_json::json!({
        "command": { "argv": ["python3", "-c",
            "import os\nwhile True:\n os.write(1, b'x')"] },
    })
    .to_string();
    let streams: Vec<std::os::unix::net::UnixStream> = (0..8)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
            write!(
                s,
                "POST /v1/sandboxes/{id}/exec?stream=true HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut head = [0u8; 512];
            let n = s.read(&mut head).unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
            s
        })
        .collect();
    let mut peak = 0;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(trust::rss(pid));
    }
    let grew = peak.saturating_sub(before) >> 20;
    println!("ATTACK tiny writes: 8 stalled streams, daemon RSS grew {grew} MiB at its peak");
    assert!(
        grew < 64,
        "8 stalled streams of tiny writes grew the daemon by {grew} MiB"
    );
    drop(streams);
    assert!(d.healthy());
    d.finish();
}
