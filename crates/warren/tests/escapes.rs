//! Escape attempts beyond isolation.rs: the host's filesystem through /proc, symlinks,
//! hardlinks, volumes, snapshots and the file API; processes and sockets outside; the
//! syscalls isolation.rs does not name; the daemon's own endpoints from inside; other
//! sandboxes; and every API route with missing, wrong or borrowed credentials. Every
//! attempt must fail or see only the sandbox's own. Needs root; prints SKIPPED otherwise.
//!
//! Network probes only ever target loopback, link-local addresses the host drops, or
//! sandboxes this test made: nothing leaves the machine.

mod common;
mod trust;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::{can_run, isolation, sh, sh_ok, stderr, stdout, syscall_errno, warren};
use trust::{enc, my_turn, Daemon, Resp, Via};

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

/// x86_64 numbers of the calls isolation.rs leaves out.
mod nr {
    pub const PROCESS_VM_WRITEV: i64 = 311;
    pub const KCMP: i64 = 312;
    pub const PIDFD_GETFD: i64 = 438;
    pub const NAME_TO_HANDLE_AT: i64 = 303;
    pub const FANOTIFY_INIT: i64 = 300;
    pub const KEXEC_FILE_LOAD: i64 = 320;
    pub const FSMOUNT: i64 = 432;
    pub const MOVE_MOUNT: i64 = 429;
    pub const FSPICK: i64 = 433;
    pub const MOUNT_SETATTR: i64 = 442;
    pub const IO_URING_REGISTER: i64 = 427;
    pub const REQUEST_KEY: i64 = 249;
    pub const CLONE3: i64 = 435;
    pub const QUOTACTL: i64 = 179;
}

macro_rules! refused {
    ($name:ident, $errno:expr, $nr:expr, [$($arg:expr),*]) => {
        #[test]
        fn $name() {
            if !can_run(stringify!($name)) {
                return;
            }
            assert_eq!(syscall_errno($nr, &[$($arg),*]), $errno, stringify!($name));
        }
    };
}

// Reading or writing another process's memory, or comparing its descriptors.
refused!(
    process_vm_writev_is_denied,
    EPERM,
    nr::PROCESS_VM_WRITEV,
    [1, 0, 0, 0, 0, 0]
);
refused!(kcmp_is_denied, EPERM, nr::KCMP, [1, 1, 0, 0, 0]);
// Stealing PID 1's descriptors (its agent socket) through a pidfd.
refused!(pidfd_getfd_is_denied, EPERM, nr::PIDFD_GETFD, [0, 0, 0]);
// The first half of the shocker attack (the second, open_by_handle_at, is in isolation.rs).
refused!(
    name_to_handle_at_is_denied,
    EPERM,
    nr::NAME_TO_HANDLE_AT,
    [-100, 0, 0, 0, 0]
);
refused!(fanotify_init_is_denied, EPERM, nr::FANOTIFY_INIT, [0, 0]);
refused!(
    kexec_file_load_is_denied,
    EPERM,
    nr::KEXEC_FILE_LOAD,
    [-1, -1, 0, 0, 0]
);
refused!(fsmount_is_denied, EPERM, nr::FSMOUNT, [-1, 0, 0]);
refused!(
    move_mount_is_denied,
    EPERM,
    nr::MOVE_MOUNT,
    [-1, 0, -1, 0, 0]
);
refused!(fspick_is_denied, EPERM, nr::FSPICK, [-100, 0, 0]);
refused!(
    mount_setattr_is_denied,
    EPERM,
    nr::MOUNT_SETATTR,
    [-100, 0, 0, 0, 0]
);
refused!(
    io_uring_register_is_denied,
    EPERM,
    nr::IO_URING_REGISTER,
    [-1, 0, 0, 0]
);
refused!(request_key_is_denied, EPERM, nr::REQUEST_KEY, [0, 0, 0, 0]);
refused!(quotactl_is_denied, EPERM, nr::QUOTACTL, [0, 0, 0, 0]);
// clone3 cannot be filtered by its flags (they are behind a pointer), so it must fail in
// a way that makes libc fall back to clone, whose flags seccomp sees.
refused!(clone3_falls_back_with_enosys, ENOSYS, nr::CLONE3, [0, 0]);

#[test]
fn dotdot_and_proc_roots_stay_inside_the_sandbox() {
    if !can_run("dotdot_and_proc_roots_stay_inside_the_sandbox") {
        return;
    }
    // The same inode for /, /.., /../../.., /proc/self/root and /proc/self/cwd after
    // `cd /`: there is no way above the sandbox's root.
    let out = sh_ok(
        &[],
        "cd /; for p in / /.. /../../.. /proc/self/root/ /proc/self/root/.. /proc/self/cwd/..; do \
           stat -L -c %d:%i $p; done | sort -u | wc -l; \
         ls /proc/self/root/ | tr '\\n' ' '",
    );
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap().trim(), "1", "{out}");
    let listing = lines.next().unwrap_or_default();
    assert!(
        !listing.contains("work") && !listing.contains("old_root"),
        "{listing}"
    );
}

#[test]
fn mountinfo_names_no_host_path() {
    if !can_run("mountinfo_names_no_host_path") {
        return;
    }
    let out = sh_ok(
        &[],
        "cat /proc/self/mountinfo /proc/self/mounts /proc/1/mountinfo 2>/dev/null",
    );
    let root = common::test_root().display().to_string();
    // runc and crun bind the agent's binary, its libraries and its socket directory from
    // the host, and a bind mount's root is its path in the host's filesystem: those three
    // lines name host paths (SECURITY.md, "Known gaps"). Nothing else may.
    let oci_binds = matches!(isolation().as_str(), "runc" | "crun");
    let out: String = out
        .lines()
        .filter(|l| {
            !(oci_binds
                && [" /.warren/warren ", " /.warren/lib ", " /.warren/run "]
                    .iter()
                    .any(|m| l.contains(m)))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    // The root overlay's options name its layers by paths inside a staging root
    // (/.lower/N), not by where they live on the host.
    for secret in [
        root.as_str(),
        "/work/",
        "warren-test",
        "/var/lib/warren",
        "/run/warren",
        "/sandboxes/",
        "/templates/",
    ] {
        assert!(
            !out.lines().any(|l| l.contains(secret)),
            "mount tables inside name the host path {secret:?}:\n{out}"
        );
    }
    // The binds the root overlay is mounted from stay in the helper's own namespace until
    // its teardown: none is a mount of the sandbox's (its first process's copy of that
    // namespace is left before anything of the sandbox runs).
    for line in out.lines().filter(|l| l.contains(" - ")) {
        let point = line.split_whitespace().nth(4).unwrap_or_default();
        assert!(
            !point.contains("/.lower") && !point.contains("/.rw"),
            "a staging bind of the root overlay is mounted inside: {line}"
        );
    }
    // gVisor shows its own mounts (9p from its Gofer), which name no host path either.
    if isolation() != "gvisor" {
        assert!(
            out.lines()
                .any(|l| l.contains(" - overlay overlay ") && l.contains("lowerdir=/.lower/0")),
            "{out}"
        );
    }
}

#[test]
fn hardlinks_to_host_files_cannot_be_made() {
    if !can_run("hardlinks_to_host_files_cannot_be_made") {
        return;
    }
    // /usr is the host's (read-only); a hardlink to one of its files from the writable
    // layer or a volume would be a writable name for a host inode.
    let name = format!("esc-hl-{}", std::process::id());
    let out = sh_ok(
        &["--volume", &format!("{name}:/data")],
        "ln /usr/bin/env /tmp/env 2>/dev/null && echo linked-tmp; \
         ln /usr/bin/env /data/env 2>/dev/null && echo linked-volume; \
         ln -s /usr/bin/env /data/sym && echo x > /data/sym 2>/dev/null && echo wrote-through; true",
    );
    let _ = std::fs::remove_dir_all(common::test_root().join("data/volumes").join(&name));
    assert_eq!(out.trim(), "", "a host file got a writable name: {out}");
}

#[test]
fn symlinks_planted_in_a_volume_resolve_inside_the_next_sandbox() {
    if !can_run("symlinks_planted_in_a_volume_resolve_inside_the_next_sandbox") {
        return;
    }
    // A sandbox plants links to host paths in a volume; the next sandbox (and the host's
    // handling of the volume) must never follow them on the host.
    let name = format!("esc-sym-{}", std::process::id());
    let marker = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    std::fs::write(marker.path(), "HOST SECRET").unwrap();
    let host_path = marker.path().display().to_string();
    let before = std::fs::metadata("/etc/passwd").unwrap();
    sh_ok(
        &["--volume", &format!("{name}:/data")],
        &format!(
            "ln -s {host_path} /data/secret; ln -s / /data/root; ln -s /etc/passwd /data/passwd; \
             chown -h 1000:1000 /data/passwd; chmod 777 /data/root"
        ),
    );
    let out = sh_ok(
        &["--volume", &format!("{name}:/data")],
        "cat /data/secret 2>/dev/null || echo no-secret; ls /data/root/ | grep -c work; \
         echo pwned >> /data/passwd && echo appended",
    );
    let _ = std::fs::remove_dir_all(common::test_root().join("data/volumes").join(&name));
    assert!(!out.contains("HOST SECRET"), "{out}");
    assert!(out.starts_with("no-secret\n0\n"), "{out}");
    let after = std::fs::metadata("/etc/passwd").unwrap();
    assert_eq!(
        (before.uid(), before.len(), before.mode()),
        (after.uid(), after.len(), after.mode()),
        "the host's /etc/passwd changed"
    );
    assert_eq!(
        std::fs::read_to_string(marker.path()).unwrap(),
        "HOST SECRET"
    );
}

#[test]
fn host_processes_cannot_be_seen_or_signalled() {
    if !can_run("host_processes_cannot_be_seen_or_signalled") {
        return;
    }
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = victim.id();
    // The victim's host pid, and every small pid, as seen from inside: no such process.
    let out = sh_ok(
        &[],
        &format!(
            "kill -9 {pid} 2>/dev/null && echo killed-victim; \
             for p in $(seq 2 300); do [ $p = $$ ] || kill -0 $p 2>/dev/null && echo alive:$p; done; \
             ls /proc/{pid} >/dev/null 2>&1 && echo sees-victim; true"
        ),
    );
    let still = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(still, "the host process was killed from inside");
    assert!(
        !out.contains("killed-victim") && !out.contains("sees-victim"),
        "{out}"
    );
    // Only the sandbox's own (the agent as 1, sh, seq, kill) can answer kill -0.
    for line in out.lines().filter(|l| l.starts_with("alive:")) {
        let p: u32 = line[6..].parse().unwrap();
        assert!(p < 10, "a process outside answered: {out}");
    }
}

#[test]
fn abstract_unix_sockets_of_the_host_are_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    if !can_run("abstract_unix_sockets_of_the_host_are_unreachable") {
        return;
    }
    // Abstract sockets have no file to hide: only the network namespace separates them.
    let name = format!("warren-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _host = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    for net in ["none", "nat"] {
        let out = sh_ok(
            &["--network", net],
            &format!(
                "python3 -c 'import socket\ns=socket.socket(socket.AF_UNIX)\n\
                 try:\n s.connect(\"\\0{name}\"); print(\"reached\")\nexcept OSError: print(\"blocked\")'"
            ),
        );
        assert_eq!(out.trim(), "blocked", "{net}");
    }
}

#[test]
fn loopbacks_of_two_sandboxes_are_separate() {
    if !can_run("loopbacks_of_two_sandboxes_are_separate") {
        return;
    }
    let port = 47_000 + (std::process::id() % 1000) as u16;
    let server = warren()
        .args([
            "run",
            "--rm",
            "--",
            "python3",
            "-c",
            &format!(
                "import socket; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); \
                 s.settimeout(6)\ntry: s.accept(); print('accepted')\nexcept OSError: print('nobody')"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = sh_ok(
        &[],
        &format!(
            "python3 -c 'import socket\ntry:\n socket.create_connection((\"127.0.0.1\",{port}),timeout=2); print(\"reached\")\nexcept OSError: print(\"blocked\")'"
        ),
    );
    let o = server.wait_with_output().unwrap();
    assert_eq!(out.trim(), "blocked");
    assert_eq!(stdout(&o).trim(), "nobody");
}

#[test]
fn the_metadata_address_is_unreachable() {
    if !can_run("the_metadata_address_is_unreachable") {
        return;
    }
    let probe = "python3 -c 'import socket\ntry:\n socket.create_connection((\"169.254.169.254\",80),timeout=1); print(\"reached\")\nexcept OSError: print(\"blocked\")'";
    // No route at all.
    assert_eq!(sh_ok(&[], probe).trim(), "blocked");
    // With nat, a probe would be forwarded off the machine unless the host drops it:
    // make sure the rule is in place (a nat sandbox installs it) before sending one.
    sh_ok(&["--network", "nat"], "true");
    let forward = Command::new("nft")
        .args(["list", "chain", "inet", "warren", "forward"])
        .output()
        .unwrap();
    assert!(
        stdout(&forward)
            .lines()
            .any(|l| l.trim() == "iifname \"wrn*\" ip daddr 169.254.0.0/16 drop"),
        "the host forwards nat sandboxes' traffic to link-local (metadata) addresses"
    );
    assert_eq!(sh_ok(&["--network", "nat"], probe).trim(), "blocked");
}

#[test]
fn setuid_binaries_grant_nothing() {
    if !can_run("setuid_binaries_grant_nothing") {
        return;
    }
    // A setuid-root copy made by root inside, run by an unprivileged user inside.
    let o = sh(
        &[],
        "cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id && \
         su -s /bin/sh user -c '/tmp/suid-id -u; /tmp/suid-id -ru' 2>&1 || \
         setpriv --reuid 1000 --regid 1000 --clear-groups /tmp/suid-id -u",
    );
    let out = stdout(&o);
    assert!(
        !out.lines().any(|l| l.trim() == "0"),
        "a setuid binary made a user root: {out} {}",
        stderr(&o)
    );
    assert!(out.contains("1000"), "{out} {}", stderr(&o));
}

#[test]
fn no_process_of_a_sandbox_holds_a_cgroup_file_to_move_itself_out() {
    // A sandbox's first process joins its cgroup through `tasks` files the helper opened
    // as host root (SECURITY.md A46): look for any such descriptor in every process the
    // sandbox can see, and write `0` through whatever is found. Then say where this
    // process stands: in its own cgroup namespace's root in every hierarchy.
    if !can_run("no_process_of_a_sandbox_holds_a_cgroup_file_to_move_itself_out") {
        return;
    }
    let out = sh_ok(
        &[],
        "for l in /proc/[0-9]*/fd/*; do t=$(readlink $l 2>/dev/null) || continue; \
           case \"$t\" in *cgroup*|*tasks*) echo held:$l:$t; \
             echo 0 > $l 2>/dev/null && echo wrote:$l;; esac; done; \
         echo cgroups:; cat /proc/self/cgroup",
    );
    let (found, cgroups) = out.split_once("cgroups:\n").unwrap_or((&out, ""));
    assert!(
        found.trim().is_empty(),
        "a descriptor to a cgroup file was reachable from inside:\n{out}"
    );
    if isolation() == "namespace" {
        // Every hierarchy's line ends at the namespace's root: no host cgroup path shows.
        let lines: Vec<&str> = cgroups.lines().filter(|l| !l.is_empty()).collect();
        assert!(!lines.is_empty(), "{out}");
        for l in lines {
            assert!(
                l.ends_with(":/"),
                "outside its cgroup namespace's root: {l}\n{out}"
            );
        }
    }
}

#[test]
fn cgroup_limits_cannot_be_raised_from_inside() {
    if !can_run("cgroup_limits_cannot_be_raised_from_inside") {
        return;
    }
    // Try every way to a cgroup file: the visible tree, a fresh mount of either
    // version. Then show the limits still hold: 32 processes at most, and a 96 MiB
    // buffer is killed under a 64 MiB limit.
    // (A memory limit with room for 48 processes: gVisor's counts its own kernel's. On
    // gVisor `--pids` caps its host tasks, about six per process: 48 processes past a
    // cap made for 32 stop the sandbox, so it gets room for 64 there.)
    let pids = if isolation() == "gvisor" { "64" } else { "32" };
    let out = sh_ok(
        &["--memory", "256M", "--pids", pids],
        "for f in $(find /sys/fs/cgroup -maxdepth 3 -name 'memory.limit_in_bytes' -o \
                    -maxdepth 3 -name 'memory.max' -o -maxdepth 3 -name 'pids.max' \
                    -o -maxdepth 3 -name 'cgroup.procs' 2>/dev/null); do \
           echo max > $f 2>/dev/null && echo wrote:$f; echo 1 > $f 2>/dev/null && echo wrote:$f; \
         done; mkdir /sys/fs/cgroup/memory/escape 2>/dev/null && echo made-cgroup; \
         mkdir -p /tmp/cg; mount -t cgroup -o memory none /tmp/cg 2>/dev/null && echo mounted-v1; \
         mount -t cgroup2 none /tmp/cg 2>/dev/null && echo mounted-v2; \
         sh -c 'for i in $(seq 1 48); do sleep 5 & done' 2>/dev/null; \
         set -- /proc/[0-9]*; echo procs=$#",
    );
    let lines: Vec<&str> = out.lines().collect();
    let escapes: Vec<&&str> = lines.iter().filter(|l| !l.starts_with("procs=")).collect();
    assert!(
        escapes.is_empty(),
        "a cgroup was reachable from inside:\n{out}"
    );
    let procs: u32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no process count:\n{out}"));
    assert!(
        procs >= 8,
        "the process count is implausible ({procs}):\n{out}"
    );
    // gVisor's task limit is a cap on the host tasks its kernel uses (SECURITY.md, A32):
    // 48 sleeping processes fit under it; a fork bomb does not
    // (backends::a_gvisor_fork_bomb_stops_its_sandbox_and_not_the_hosts_pids).
    if isolation() != "gvisor" {
        assert!(
            procs <= 32,
            "the pids limit of 32 did not hold ({procs} processes):\n{out}"
        );
    }
    // Past the memory limit the process is killed; on gVisor, whose kernel is one host
    // process, the whole sandbox is stopped. The buffer never lives.
    let o = sh(
        &["--memory", "64M"],
        "dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null; echo big=$?",
    );
    let out = stdout(&o);
    assert!(
        !out.contains("big=0"),
        "a 96 MiB buffer lived under a 64 MiB limit:\n{out}"
    );
    if isolation() == "gvisor" {
        assert!(!o.status.success(), "{out}");
    } else {
        assert!(
            out.contains("big="),
            "the shell did not survive: {out} {}",
            stderr(&o)
        );
    }
}

#[test]
fn kernel_interfaces_in_dev_and_sys_are_closed() {
    if !can_run("kernel_interfaces_in_dev_and_sys_are_closed") {
        return;
    }
    let out = sh_ok(
        &[],
        "for d in /dev/mem /dev/kmem /dev/port /dev/kmsg /dev/sda /dev/vda /dev/loop0 \
                  /dev/loop-control /dev/mapper/control /dev/fuse /dev/net/tun /dev/kvm; do \
           [ -e $d ] && echo present:$d; done; \
         echo 1 > /sys/kernel/mm/ksm/run 2>/dev/null && echo sys-written; \
         echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo drop-caches; \
         cat /sys/kernel/security/apparmor/profiles >/dev/null 2>&1 && echo lsm-readable; \
         echo x > /sys/kernel/uevent_helper 2>/dev/null && echo uevent; \
         echo /tmp/x > /proc/sys/kernel/core_pattern 2>/dev/null && echo core-pattern; \
         mknod /dev/fuse c 10 229 2>/dev/null && echo mknod-fuse; \
         mkdir -p /dev/net && mknod /dev/net/tun c 10 200 2>/dev/null && echo mknod-tun; true",
    );
    assert_eq!(out.trim(), "", "{out}");
}

// ---------------------------------------------------------------------------------------
// Through the daemon: the file API, the daemon's endpoints, other sandboxes, credentials.

/// A daemon with TCP, a sandbox for tenant `default` (a) and one for tenant `b`.
struct Two {
    d: Daemon,
    a: String,
    a_token: String,
    b: String,
    b_token: String,
    key_a: String,
    key_b: String,
}

fn two() -> Two {
    let mut d = Daemon::start(true);
    d.tenants.push("b".into());
    let key_a = d.api_key();
    let r = d.http(
        Via::Unix,
        "POST",
        "/v1/keys",
        &[("Content-Type", "application/json")],
        br#"{"tenant":"b"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key_b = r.json()["api_key"].as_str().unwrap().to_string();
    let make = |tenant: &str| -> (String, String) {
        let r = d.http(
            Via::Unix,
            "POST",
            "/v1/sandboxes",
            &[
                ("Content-Type", "application/json"),
                ("X-Warren-Tenant", tenant),
            ],
            br#"{"name":"box"}"#,
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        let id = v["id"].as_str().unwrap().to_string();
        d.saw(&id);
        (id, v["access_token"].as_str().unwrap().to_string())
    };
    let (a, a_token) = make("default");
    let (b, b_token) = make("b");
    Two {
        d,
        a,
        a_token,
        b,
        b_token,
        key_a,
        key_b,
    }
}

fn file_get(d: &Daemon, id: &str, path: &str) -> Resp {
    d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{id}/files?path={}", enc(path)),
        &[],
        b"",
    )
}

#[test]
fn the_file_api_follows_symlinks_inside_the_sandbox_only() {
    if !can_run("the_file_api_follows_symlinks_inside_the_sandbox_only") {
        return;
    }
    let _turn = my_turn();
    let t = two();
    let d = &t.d;
    // A host file, and a sandbox file at the same path with other contents.
    let host_dir = tempfile::tempdir_in("/tmp").unwrap();
    let host = host_dir.path().join("secret");
    std::fs::write(&host, "HOST").unwrap();
    let hp = host.display().to_string();
    let hd = host_dir.path().display().to_string();
    let (code, _) = d.exec(
        &t.a,
        &format!(
            "mkdir -p {hd} && echo SANDBOX > {hp} && ln -s / /tmp/root && ln -s {hp} /tmp/direct \
             && ln -s /proc/1/root /tmp/agentroot && ln -s {hd}/planted /tmp/plant"
        ),
    );
    assert_eq!(code, 0);
    for path in [
        "/tmp/root".to_string() + &hp,
        "/tmp/direct".into(),
        "/tmp/agentroot".to_string() + &hp,
        "/../../..".to_string() + &hp,
        "/tmp/../../../..".to_string() + &hp,
    ] {
        let r = file_get(d, &t.a, &path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), "SANDBOX\n", "{path} read the host's file");
    }
    // Only on the host: not found inside, whatever the route.
    let r = file_get(d, &t.a, "/tmp/root/etc/shadow");
    assert_eq!(r.status, 404, "{}", r.text());
    // A write through a link to a host path lands inside.
    let r = d.http(
        Via::Unix,
        "PUT",
        &format!("/v1/sandboxes/{}/files?path=/tmp/plant", t.a),
        &[],
        b"planted",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(
        !host_dir.path().join("planted").exists(),
        "written on the host"
    );
    // The upload replaces the link itself (it never writes through one).
    assert_eq!(file_get(d, &t.a, "/tmp/plant").text(), "planted");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "HOST");
    t.d.finish();
}

#[test]
fn dotdot_in_every_path_taking_route_stays_inside_or_is_refused() {
    if !can_run("dotdot_in_every_path_taking_route_stays_inside_or_is_refused") {
        return;
    }
    let _turn = my_turn();
    let t = two();
    let d = &t.d;
    let a = &t.a;
    let json = [("Content-Type", "application/json")];
    let (code, hostname) = d.exec(a, "cat /etc/hostname");
    assert_eq!(code, 0);
    let dd = "/../../../../..";
    // Sandbox paths: resolved against the sandbox's root.
    let r = file_get(d, a, &format!("{dd}/etc/hostname"));
    assert_eq!((r.status, r.text()), (200, hostname.clone()));
    let r = d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{a}/files/stat?path={dd}/etc/hostname"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["size"].as_u64(), Some(hostname.len() as u64));
    let r = d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{a}/files/list?path={dd}/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("\"work\""), "{}", r.text());
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{a}/files/mkdir?path={dd}/tmp/made"),
        &[],
        b"",
    );
    assert!(r.status < 300, "{}", r.text());
    assert!(!std::path::Path::new("/tmp/made").exists() || d.exec(a, "test -d /tmp/made").0 == 0);
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{a}/files/rename"),
        &json,
        format!(r#"{{"from":"{dd}/tmp/made","to":"{dd}/tmp/moved"}}"#).as_bytes(),
    );
    assert!(r.status < 300, "{}", r.text());
    assert_eq!(d.exec(a, "test -d /tmp/moved && echo in").1, "in\n");
    let r = d.http(
        Via::Unix,
        "DELETE",
        &format!("/v1/sandboxes/{a}/files?path={dd}/tmp/moved&recursive=true"),
        &[],
        b"",
    );
    assert!(r.status < 300, "{}", r.text());
    let r = d.http(
        Via::Unix,
        "PUT",
        &format!("/v1/sandboxes/{a}/files?path={dd}/tmp/up"),
        &[],
        b"up",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(d.exec(a, "cat /tmp/up").1, "up");
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{a}/exec"),
        &json,
        format!(r#"{{"command":{{"shell":"pwd"}},"cwd":"{dd}/tmp"}}"#).as_bytes(),
    );
    assert_eq!(
        (
            r.status,
            r.json()["stdout"].as_str().unwrap_or("").to_string()
        ),
        (200, "/tmp\n".into()),
        "{}",
        r.text()
    );

    // Host-side names: refused before any path is built from them.
    let mut checked = 0;
    for (method, path, body) in [
        (
            "GET",
            "/v1/sandboxes/..%2F..%2Fetc".to_string(),
            String::new(),
        ),
        ("GET", "/v1/sandboxes/..".to_string(), String::new()),
        (
            "GET",
            format!("/v1/sandboxes/{a}%2F..%2F..%2F{}", t.b),
            String::new(),
        ),
        (
            "POST",
            "/v1/sandboxes".into(),
            r#"{"name":"../../x"}"#.into(),
        ),
        (
            "POST",
            "/v1/sandboxes".into(),
            r#"{"owner":"../../x"}"#.into(),
        ),
        (
            "POST",
            "/v1/sandboxes".into(),
            r#"{"template":"../../../etc"}"#.into(),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{a}/snapshot"),
            r#"{"name":"../../escape"}"#.into(),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{a}/snapshot"),
            r#"{"name":"/tmp/escape"}"#.into(),
        ),
        ("GET", "/v1/templates/..%2F..%2Fetc".into(), String::new()),
        ("DELETE", "/v1/templates/..%2F..".into(), String::new()),
        ("DELETE", "/v1/templates/..".into(), String::new()),
        (
            "POST",
            "/v1/templates/build".into(),
            r#"{"name":"../x","from":"host","steps":[]}"#.into(),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{a}/processes/..%2F1/signal"),
            r#"{"signal":0}"#.into(),
        ),
        (
            "DELETE",
            format!("/v1/sandboxes/{a}/shares/..%2F..%2Fwarren.db"),
            String::new(),
        ),
        ("GET", "/v1/shared/..%2F..%2Fapi-key".into(), String::new()),
    ] {
        let r = d.http(Via::Unix, method, &path, &json, body.as_bytes());
        // A build answers with a stream at once; its refusal is the stream's error line.
        let streamed_error =
            r.status == 200 && path.ends_with("/build") && r.text().contains("invalid_request");
        assert!(
            (400..500).contains(&r.status) || streamed_error,
            "{method} {path} {body}: {} {}",
            r.status,
            r.text()
        );
        checked += 1;
    }
    assert_eq!(checked, 15);
    for p in ["/tmp/escape", "/tmp/x"] {
        assert!(
            !std::path::Path::new(p).exists(),
            "{p} was made on the host"
        );
    }
    // Still all there.
    assert!(d.data_dir().join("warren.db").exists());
    assert_eq!(d.exec(a, "echo ok").1, "ok\n");
    t.d.finish();
}

/// Connects to the daemon's port on loopback and on the gateway (if any), and to its
/// socket by path. Written with explicit indents: a Rust line continuation eats them.
const DAEMON_PROBE: &str = "import socket\n\
    gw = None\n\
    for line in open(\"/proc/net/route\").read().splitlines()[1:]:\n\
    \x20   f = line.split()\n\
    \x20   if f[1] == \"00000000\": gw = socket.inet_ntoa(bytes.fromhex(f[2])[::-1])\n\
    for addr in [\"127.0.0.1\"] + ([gw] if gw else []):\n\
    \x20   try:\n\
    \x20       socket.create_connection((addr, PORT), timeout=1); print(\"reached\", addr)\n\
    \x20   except OSError: print(\"blocked\", addr)\n\
    s = socket.socket(socket.AF_UNIX)\n\
    try:\n\
    \x20   s.connect(\"SOCK\"); print(\"reached socket\")\n\
    except OSError: print(\"blocked socket\")";

#[test]
fn the_daemons_socket_and_port_are_unreachable_from_inside() {
    if !can_run("the_daemons_socket_and_port_are_unreachable_from_inside") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(true);
    let port = d
        .listen
        .as_ref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let sock = d.socket().display().to_string();
    for net in ["none", "nat"] {
        let id = d.create(&["--network", net, "--no-home"]);
        let probe = DAEMON_PROBE.replace("PORT", &port).replace("SOCK", &sock);
        let script = format!(
            "[ -e {sock} ] && echo socket-visible; ls {} >/dev/null 2>&1 && echo run-visible; \
             python3 -c '{probe}'",
            d.run_dir().display()
        );
        let (code, out) = d.exec(&id, &script);
        assert_eq!(code, 0, "{out}");
        assert!(
            !out.contains("reached") && !out.contains("visible"),
            "{net}: {out}"
        );
        assert!(out.contains("blocked 127.0.0.1"), "{net}: {out}");
    }
    d.finish();
}

#[test]
fn another_sandboxs_files_volume_and_processes_are_out_of_reach() {
    if !can_run("another_sandboxs_files_volume_and_processes_are_out_of_reach") {
        return;
    }
    let _turn = my_turn();
    let t = two();
    let d = &t.d;
    let marker = format!("xsb-{}", std::process::id());
    let (code, _) = d.exec_as(
        "b",
        &t.b,
        &format!("echo {marker} > /tmp/{marker}; echo {marker} > /home/user/{marker}; (exec -a {marker} sleep 300 &)"),
    );
    assert_eq!(code, 0);
    // From a, by its filesystem and /proc: nothing of b's. (The bracket keeps grep
    // from matching its own command line.)
    let (first, rest) = marker.split_at(1);
    let (_, out) = d.exec(
        &t.a,
        &format!(
            "grep -rl '[{first}]{rest}' /tmp /home /var /run /mnt /opt /srv 2>/dev/null; \
             cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c '[{first}]{rest}'; \
             ls /home"
        ),
    );
    assert_eq!(out, "0\nuser\n", "{out}");
    // Through the API with a's credentials, b's files are not found.
    let r = d.http(
        Via::Tcp,
        "GET",
        &format!("/v1/sandboxes/{}/files?path=/tmp/{marker}", t.b),
        &[("Authorization", &format!("Bearer {}", t.key_a))],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = d.http(
        Via::Tcp,
        "GET",
        &format!("/v1/sandboxes/{}/files?path=/tmp/{marker}", t.b),
        &[("X-Access-Token", &t.a_token)],
        b"",
    );
    assert!(matches!(r.status, 401 | 404), "{} {}", r.status, r.text());
    // b's owner's home volume is not a's (same name, other tenant).
    let (_, out) = d.exec(&t.a, &format!("ls /home/user | grep -c {marker}"));
    assert_eq!(out.trim(), "0");
    t.d.finish();
}

/// A WebSocket handshake; the status the server answers with.
fn upgrade(d: &Daemon, via: Via, path: &str, extra: &[(&str, &str)]) -> u16 {
    let mut h = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    h.extend_from_slice(extra);
    d.try_http(via, "GET", path, &h, b"", Duration::from_secs(10))
        .map(|r| r.status)
        .unwrap_or(0)
}

/// A WebSocket attempt: what it is, the path, the credential headers.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

#[test]
fn a_terminal_cannot_be_joined_without_its_share_token() {
    if !can_run("a_terminal_cannot_be_joined_without_its_share_token") {
        return;
    }
    let _turn = my_turn();
    let t = two();
    let d = &t.d;
    let pid = d
        .ok(&["exec", "-d", "-t", &t.a, "--", "sh", "-c", "sleep 300"])
        .trim()
        .to_string();
    let token = d.ok(&["share", "--write", &t.a, &pid]).trim().to_string();
    let bearer_b = format!("Bearer {}", t.key_b);
    let pty_a = format!("/v1/sandboxes/{}/pty", t.a);
    // All over TCP, where credentials matter: (what, path, headers).
    let cases: Vec<Case> = vec![
        ("forged token", "/v1/shared/wsh_forged".into(), vec![]),
        (
            "a's access token as share token",
            format!("/v1/shared/{}", t.a_token),
            vec![],
        ),
        (
            "a truncated token",
            format!("/v1/shared/{}", &token[..token.len() - 1]),
            vec![],
        ),
        ("a's pty, no credential", pty_a.clone(), vec![]),
        (
            "a's pty, b's key",
            pty_a.clone(),
            vec![("Authorization", &bearer_b)],
        ),
        (
            "a's pty, b's access token",
            pty_a.clone(),
            vec![("X-Access-Token", &t.b_token)],
        ),
        (
            "a's pty, the share token",
            pty_a.clone(),
            vec![("X-Access-Token", &token)],
        ),
    ];
    for (what, path, extra) in &cases {
        let status = upgrade(d, Via::Tcp, path, extra);
        assert!(matches!(status, 401 | 404), "{what}: {status}");
    }
    // The real token does open it: the refusals above are about the credential.
    assert_eq!(
        upgrade(d, Via::Tcp, &format!("/v1/shared/{token}"), &[]),
        101
    );
    t.d.finish();
}

/// Every route of [`warren_server::ROUTES`] with its parameters filled in.
/// Each route: its method, its template, and a path of it naming `sandbox`.
fn concrete_routes(sandbox: &str) -> Vec<(&'static str, &'static str, String)> {
    warren_server::ROUTES
        .iter()
        .map(|(m, template)| {
            let p = template
                .replace("{key}", sandbox)
                .replace("{pid}", "1")
                .replace("{port}", "8080")
                .replace("{id}", "nope")
                .replace("{token}", "wsh_nope")
                .replace("{name}", "host");
            // File routes need a path; without one they refuse the query, not the caller.
            let p = if p.contains("/files") && !p.ends_with("/rename") {
                format!("{p}?path=/tmp")
            } else {
                p
            };
            (*m, *template, p)
        })
        .collect()
}

fn is_public(path: &str) -> bool {
    path == "/health" || path == "/openapi.json"
}

#[test]
fn every_route_refuses_a_missing_or_wrong_credential() {
    if !can_run("every_route_refuses_a_missing_or_wrong_credential") {
        return;
    }
    let _turn = my_turn();
    let t = two();
    let d = &t.d;
    let json = ("Content-Type", "application/json");
    let creds: [(&str, Vec<(&str, &str)>); 5] = [
        ("none", vec![]),
        (
            "wrong key",
            vec![(
                "Authorization",
                "Bearer wrn_000000000000000000000000000000000000000000000000",
            )],
        ),
        ("malformed", vec![("Authorization", "Basic YTpi")]),
        (
            "b's key as access token",
            vec![("X-Access-Token", &t.key_b)],
        ),
        (
            "forged access token",
            vec![("X-Access-Token", "wat_forged")],
        ),
    ];
    let mut n = 0;
    for (what, h) in &creds {
        for (method, template, path) in concrete_routes(&t.a) {
            if is_public(&path) {
                continue;
            }
            let mut headers = h.clone();
            headers.push(json);
            let r = d.http(Via::Tcp, method, &path, &headers, b"{}");
            let unix_only = warren_server::UNIX_ONLY
                .iter()
                .any(|(m, p)| *m == method && template == *p);
            let shared = path.starts_with("/v1/shared/");
            // A share token is itself the credential: an unknown one is 404, as anything
            // one may not see, handshake or not.
            let ok = if shared {
                r.status == 404
            } else if unix_only {
                matches!(r.status, 401 | 404)
            } else {
                r.status == 401
            };
            assert!(
                ok,
                "{what}: {method} {path} answered {} {}",
                r.status,
                r.text()
            );
            n += 1;
        }
    }
    assert!(n > 150, "{n} requests");
    // Nothing changed: a is still running.
    assert_eq!(t.d.info(&t.a)["state"], "running");
    t.d.finish();
}

/// A JSON body each sandbox route accepts.
fn valid_body(path: &str) -> &'static [u8] {
    let path = path.split('?').next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    match last {
        "exec" => br#"{"command":{"argv":["true"]}}"#,
        "signal" => br#"{"signal":0}"#,
        "resize" => br#"{"rows":24,"cols":80}"#,
        "rename" => br#"{"from":"/tmp/a","to":"/tmp/b"}"#,
        "snapshot" => br#"{"name":"stolen"}"#,
        "share" => br#"{"write":true}"#,
        _ => b"{}",
    }
}

#[test]
fn another_tenants_key_and_another_sandboxs_token_reach_nothing() {
    if !can_run("another_tenants_key_and_another_sandboxs_token_reach_nothing") {
        return;
    }
    let _turn = my_turn();
    let t = two();
    let d = &t.d;
    let json = ("Content-Type", "application/json");
    let bearer_b = format!("Bearer {}", t.key_b);
    let mut n = 0;
    for (method, _, path) in concrete_routes(&t.a) {
        // The terminal is a WebSocket: a_terminal_cannot_be_joined_without_its_share_token
        // sends it a real handshake with these credentials.
        if !path.starts_with(&format!("/v1/sandboxes/{}", t.a)) || path.ends_with("/pty") {
            continue;
        }
        // A body the route accepts, so that only the credential can be refused.
        let body = valid_body(&path);
        // b's key: a's sandbox does not exist for tenant b.
        let r = d.http(
            Via::Tcp,
            method,
            &path,
            &[("Authorization", &bearer_b), json],
            body,
        );
        assert_eq!(r.status, 404, "b's key: {method} {path}: {}", r.text());
        // b's sandbox token: valid for b's sandbox only.
        let r = d.http(
            Via::Tcp,
            method,
            &path,
            &[("X-Access-Token", &t.b_token), json],
            body,
        );
        assert!(
            matches!(r.status, 401 | 404),
            "b's token: {method} {path}: {} {}",
            r.status,
            r.text()
        );
        n += 2;
    }
    // An access token reaches nothing beyond its sandbox's insides.
    for (method, path) in [
        ("GET", "/v1/sandboxes".to_string()),
        ("POST", "/v1/sandboxes".into()),
        ("POST", "/v1/gc".into()),
        ("GET", "/v1/templates".into()),
        ("GET", "/metrics".into()),
        ("DELETE", format!("/v1/sandboxes/{}", t.a)),
        ("POST", format!("/v1/sandboxes/{}/stop", t.a)),
        ("POST", format!("/v1/sandboxes/{}/snapshot", t.a)),
    ] {
        let r = d.http(
            Via::Tcp,
            method,
            &path,
            &[("X-Access-Token", &t.a_token), json],
            b"{}",
        );
        assert!(
            matches!(r.status, 401 | 404),
            "a's token: {method} {path}: {} {}",
            r.status,
            r.text()
        );
        n += 1;
    }
    // The owner's own token does reach its sandbox's insides (the control).
    let r = d.http(
        Via::Tcp,
        "POST",
        &format!("/v1/sandboxes/{}/exec", t.a),
        &[("X-Access-Token", &t.a_token), json],
        br#"{"command":{"argv":["echo","mine"]}}"#,
    );
    assert_eq!(
        (r.status, r.json()["stdout"].clone()),
        (200, "mine\n".into()),
        "{}",
        r.text()
    );
    assert!(n > 40, "{n} requests");
    assert_eq!(t.d.info(&t.a)["state"], "running");
    let r = d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{}", t.b),
        &[("X-Warren-Tenant", "b")],
        b"",
    );
    assert_eq!(r.json()["state"], "running");
    t.d.finish();
}

#[test]
fn the_file_api_cannot_write_kernel_interfaces() {
    if !can_run("the_file_api_cannot_write_kernel_interfaces") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let id = d.create(&["--no-home"]);
    // The agent is more privileged than an exec'd command (no seccomp set-up of its own
    // commands applies to it): these must still be refused. `h` would only print help.
    for path in [
        "/proc/sysrq-trigger",
        "/proc/sys/kernel/core_pattern",
        "/sys/kernel/uevent_helper",
        "/usr/bin/planted",
        "/proc/1/attr/current",
    ] {
        let r = d.http(
            Via::Unix,
            "PUT",
            &format!("/v1/sandboxes/{id}/files?path={path}"),
            &[],
            b"h",
        );
        assert!(
            (400..500).contains(&r.status) || r.status == 507,
            "PUT {path}: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(!std::path::Path::new("/usr/bin/planted").exists());
    let _ = stderr;
    d.finish();
}
