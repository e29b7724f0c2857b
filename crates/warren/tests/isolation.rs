//! Isolation, checked from inside sandboxes: every attempt here must fail or see nothing
//! of the host. Needs root (CI runs as root); prints SKIPPED otherwise.

mod common;

use common::*;

/// x86_64 syscall numbers used below.
mod nr {
    pub const PTRACE: i64 = 101;
    pub const SYSLOG: i64 = 103;
    pub const PERSONALITY: i64 = 135;
    pub const PIVOT_ROOT: i64 = 155;
    pub const ACCT: i64 = 163;
    pub const SETTIMEOFDAY: i64 = 164;
    pub const MOUNT: i64 = 165;
    pub const UMOUNT2: i64 = 166;
    pub const SWAPON: i64 = 167;
    pub const REBOOT: i64 = 169;
    pub const IOPL: i64 = 172;
    pub const INIT_MODULE: i64 = 175;
    pub const DELETE_MODULE: i64 = 176;
    pub const CLOCK_SETTIME: i64 = 227;
    pub const KEXEC_LOAD: i64 = 246;
    pub const ADD_KEY: i64 = 248;
    pub const KEYCTL: i64 = 250;
    pub const UNSHARE: i64 = 272;
    pub const PERF_EVENT_OPEN: i64 = 298;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const SETNS: i64 = 308;
    pub const PROCESS_VM_READV: i64 = 310;
    pub const FINIT_MODULE: i64 = 313;
    pub const BPF: i64 = 321;
    pub const USERFAULTFD: i64 = 323;
    pub const IO_URING_SETUP: i64 = 425;
    pub const OPEN_TREE: i64 = 428;
    pub const FSOPEN: i64 = 430;
    pub const CLONE: i64 = 56;
    pub const MBIND: i64 = 237;
    pub const SET_MEMPOLICY: i64 = 238;
    pub const MOVE_PAGES: i64 = 279;
}

const EPERM: i32 = 1;
const CLONE_NEWUSER: i64 = 0x1000_0000;
const CLONE_NEWNET: i64 = 0x4000_0000;
const SIGCHLD: i64 = 17;

macro_rules! denied {
    ($name:ident, $nr:expr, [$($arg:expr),*]) => {
        #[test]
        fn $name() {
            if !can_run(stringify!($name)) {
                return;
            }
            let errno = syscall_errno($nr, &[$($arg),*]);
            assert_eq!(errno, EPERM, "{} should fail with EPERM", stringify!($name));
        }
    };
}

denied!(mount_is_denied, nr::MOUNT, [0, 0, 0, 0, 0]);
denied!(umount_is_denied, nr::UMOUNT2, [0, 0]);
denied!(pivot_root_is_denied, nr::PIVOT_ROOT, [0, 0]);
denied!(
    unshare_user_namespace_is_denied,
    nr::UNSHARE,
    [CLONE_NEWUSER]
);
denied!(unshare_net_namespace_is_denied, nr::UNSHARE, [CLONE_NEWNET]);
denied!(
    clone_into_new_user_namespace_is_denied,
    nr::CLONE,
    [CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0]
);
denied!(setns_is_denied, nr::SETNS, [0, 0]);
denied!(keyctl_is_denied, nr::KEYCTL, [0, 0, 0, 0, 0]);
denied!(add_key_is_denied, nr::ADD_KEY, [0, 0, 0, 0, 0]);
denied!(bpf_is_denied, nr::BPF, [0, 0, 0]);
denied!(
    perf_event_open_is_denied,
    nr::PERF_EVENT_OPEN,
    [0, 0, -1, -1, 0]
);
denied!(kexec_load_is_denied, nr::KEXEC_LOAD, [0, 0, 0, 0]);
denied!(init_module_is_denied, nr::INIT_MODULE, [0, 0, 0]);
denied!(finit_module_is_denied, nr::FINIT_MODULE, [0, 0, 0]);
denied!(delete_module_is_denied, nr::DELETE_MODULE, [0, 0]);
// PTRACE_ATTACH to PID 1, the agent.
denied!(ptrace_of_the_agent_is_denied, nr::PTRACE, [16, 1, 0, 0]);
denied!(
    process_vm_readv_is_denied,
    nr::PROCESS_VM_READV,
    [1, 0, 0, 0, 0, 0]
);
denied!(acct_is_denied, nr::ACCT, [0]);
denied!(swapon_is_denied, nr::SWAPON, [0, 0]);
denied!(reboot_is_denied, nr::REBOOT, [0, 0, 0, 0]);
denied!(settimeofday_is_denied, nr::SETTIMEOFDAY, [0, 0]);
denied!(clock_settime_is_denied, nr::CLOCK_SETTIME, [0, 0]);
denied!(syslog_is_denied, nr::SYSLOG, [3, 0, 0]);
denied!(
    open_by_handle_at_is_denied,
    nr::OPEN_BY_HANDLE_AT,
    [0, 0, 0]
);
denied!(userfaultfd_is_denied, nr::USERFAULTFD, [0]);
denied!(io_uring_setup_is_denied, nr::IO_URING_SETUP, [1, 0]);
denied!(iopl_is_denied, nr::IOPL, [3]);
denied!(fsopen_is_denied, nr::FSOPEN, [0, 0]);
denied!(open_tree_is_denied, nr::OPEN_TREE, [0, 0, 0]);
denied!(mbind_is_denied, nr::MBIND, [0, 0, 0, 0, 0, 0]);
denied!(set_mempolicy_is_denied, nr::SET_MEMPOLICY, [0, 0, 0]);
denied!(move_pages_is_denied, nr::MOVE_PAGES, [0, 0, 0, 0, 0, 0]);
// READ_IMPLIES_EXEC, a personality Docker's profile refuses too.
denied!(
    personality_read_implies_exec_is_denied,
    nr::PERSONALITY,
    [0x0040_0000]
);

#[test]
fn root_inside_is_an_unprivileged_host_uid() {
    if !can_run("root_inside_is_an_unprivileged_host_uid")
        || !host_kernel("root_inside_is_an_unprivileged_host_uid")
    {
        return;
    }
    // Two sandboxes at once: each maps its ids to a range of host ids of its own, far
    // from every account and from the range files are stored under on disk.
    let script = "id -u; cat /proc/self/uid_map /proc/self/gid_map; sleep 1";
    let other = warren()
        .args(["run", "--rm", "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = sh_ok(&[], script);
    let other = stdout(&other.wait_with_output().unwrap());
    let maps = |out: &str| -> Vec<Vec<u64>> {
        out.lines()
            .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
            .collect()
    };
    let (a, b) = (maps(&out), maps(&other));
    for lines in [&a, &b] {
        assert_eq!(lines[0], [0]);
        assert_eq!(lines[1], lines[2], "uid and gid maps agree");
        assert_eq!(lines[1][0], 0);
        assert_eq!(lines[1][2], 65536);
        assert!(
            lines[1][1] >= 1 << 30,
            "root maps to an unprivileged host uid: {lines:?}"
        );
    }
    assert_ne!(a[1][1], b[1][1], "two sandboxes share host ids");
}

#[test]
fn files_written_to_a_volume_belong_to_the_mapped_uid() {
    use std::os::unix::fs::MetadataExt;
    if !can_run("files_written_to_a_volume_belong_to_the_mapped_uid") {
        return;
    }
    let name = format!("iso-vol-{}", std::process::id());
    sh_ok(
        &["--volume", &format!("{name}:/data")],
        "echo hi > /data/by-root; su -s /bin/sh user -c 'echo hi > /data/by-user' 2>/dev/null || true",
    );
    let dir = test_root().join("data/volumes").join(&name).join("data");
    let meta = std::fs::metadata(dir.join("by-root")).expect("file in volume");
    assert_eq!(
        meta.uid(),
        100_000,
        "root inside owns files as host uid 100000"
    );
    std::fs::remove_dir_all(test_root().join("data/volumes").join(&name)).unwrap();
}

#[test]
fn pid_1_is_the_agent_and_no_host_process_is_visible() {
    if !can_run("pid_1_is_the_agent_and_no_host_process_is_visible") {
        return;
    }
    let out = sh_ok(&[], "ls /proc | grep -c '^[0-9]'; cat /proc/1/comm");
    let mut lines = out.lines();
    let count: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(
        count <= 4,
        "only the agent, sh, ls and grep: saw {count} processes"
    );
    assert_eq!(lines.next().unwrap().trim(), "warren");
}

#[test]
fn the_agent_cannot_be_inspected_or_killed() {
    if !can_run("the_agent_cannot_be_inspected_or_killed") {
        return;
    }
    let inspect = "ls /proc/1/root/ >/dev/null 2>&1 && echo root-readable; \
         cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable; \
         readlink /proc/1/exe >/dev/null 2>&1 && echo exe-readable; ";
    if isolation() == "gvisor" {
        // gVisor's kernel shows PID 1's environment (the sandbox's own, which every
        // process is given) and delivers SIGKILL to it from inside, which Linux refuses:
        // the sandbox's root can stop its own sandbox, and nothing else (SECURITY.md).
        let out = sh_ok(&[], &format!("{inspect} true"));
        assert!(
            out.lines().all(|l| l == "environ-readable"),
            "PID 1 leaked something: {out}"
        );
        let o = sh(&[], "kill -9 1 2>/dev/null; sleep 1; echo still-here");
        assert!(!o.status.success(), "{}", stdout(&o));
        return;
    }
    // Nor its memory map: every helper and agent of a daemon is a copy of one zygote's
    // address space (SECURITY.md A47), so one agent's layout is every agent's.
    let out = sh_ok(
        &[],
        &format!(
            "{inspect} cat /proc/1/maps >/dev/null 2>&1 && echo maps-readable; \
             kill -9 1 2>/dev/null; sleep 0.1; echo still-here"
        ),
    );
    assert_eq!(out.trim(), "still-here", "PID 1 leaked something: {out}");
}

#[test]
fn each_namespace_is_new() {
    if !can_run("each_namespace_is_new") || !host_kernel("each_namespace_is_new") {
        return;
    }
    let out = sh_ok(
        &[],
        "for n in user mnt pid uts ipc net cgroup; do readlink /proc/self/ns/$n; done",
    );
    for (line, kind) in out
        .lines()
        .zip(["user", "mnt", "pid", "uts", "ipc", "net", "cgroup"])
    {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(
            line.trim(),
            host.to_string_lossy(),
            "{kind} namespace is the host's"
        );
    }
}

/// The network namespace is made by a task of the sandbox's first process beside its
/// set-up: it must still be the sandbox's own, owned by its user namespace (whose root
/// then holds CAP_NET_ADMIN over it and nothing else), and no other sandbox's.
#[test]
fn the_network_namespace_is_the_sandboxs_own() {
    let name = "the_network_namespace_is_the_sandboxs_own";
    if !can_run(name) || !host_kernel(name) {
        return;
    }
    // NS_GET_USERNS: the user namespace owning the network namespace, refused (EPERM)
    // when that owner is outside the caller's, as the host's is.
    let script = "python3 -c '\nimport fcntl, os\n\
        fd = os.open(\"/proc/self/ns/net\", os.O_RDONLY)\n\
        try:\n    owner = os.readlink(\"/proc/self/fd/%d\" % fcntl.ioctl(fd, 0xb701))\n\
        except OSError as e:\n    owner = \"refused: %s\" % e\n\
        print(owner, os.readlink(\"/proc/self/ns/user\"), os.readlink(\"/proc/self/ns/net\"))'";
    // Two sandboxes alive at once: one holds while the other looks.
    let mut first = warren()
        .args(["run", "--rm", "--", "sh", "-c"])
        .arg(format!("{script}; sleep 2"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let second = sh_ok(&[], script);
    assert!(first.wait().unwrap().success());
    let mut nets = Vec::new();
    for out in [line.as_str(), second.as_str()] {
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{out}");
        assert_eq!(
            f[0], f[1],
            "the network namespace's owner is not the sandbox's: {out}"
        );
        nets.push(f[2].to_string());
    }
    assert_ne!(nets[0], nets[1], "two sandboxes share a network namespace");
}

#[test]
fn hostname_is_the_sandboxs_and_cannot_be_changed() {
    if !can_run("hostname_is_the_sandboxs_and_cannot_be_changed") {
        return;
    }
    let out = sh_ok(
        &["--hostname", "box1"],
        "hostname; hostname evil 2>/dev/null && echo changed; true",
    );
    assert_eq!(out.trim(), "box1");
}

#[test]
fn network_none_has_only_loopback() {
    if !can_run("network_none_has_only_loopback") {
        return;
    }
    // Interfaces as the kernel counts them (gVisor's has no /sys/class/net).
    let out = sh_ok(&[], "tail -n +3 /proc/net/dev | cut -d: -f1");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    // Loopback works inside.
    let out = sh_ok(
        &[],
        "python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\",0)); s.listen(); \
         c=socket.create_connection(s.getsockname()); print(\"loopback-ok\")'",
    );
    assert_eq!(out.trim(), "loopback-ok");
}

#[test]
fn root_is_an_overlay_and_host_dirs_are_read_only() {
    if !can_run("root_is_an_overlay_and_host_dirs_are_read_only") {
        return;
    }
    let out = sh_ok(
        &[],
        "awk '$5==\"/\"{print $9}' /proc/self/mountinfo; \
         touch /usr/x 2>/dev/null && echo usr-writable; \
         touch /sys/x 2>/dev/null && echo sys-writable; \
         echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo procsys-writable; \
         echo h > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable; \
         touch /etc/x && echo etc-writable",
    );
    // gVisor's root is its Gofer's mount, whatever Warren's overlay under it.
    let root = if isolation() == "gvisor" {
        "none"
    } else {
        "overlay"
    };
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [root, "etc-writable"]
    );
}

#[test]
fn proc_is_masked_like_the_oci_default() {
    if !can_run("proc_is_masked_like_the_oci_default") {
        return;
    }
    let out = sh_ok(
        &[],
        "for f in kcore keys timer_list sched_debug latency_stats; do \
           [ -e /proc/$f ] && printf '%s=%s\\n' $f $(head -c 64 /proc/$f | wc -c); done; \
         find /proc/acpi /proc/scsi -mindepth 1 2>/dev/null | wc -l",
    );
    for line in out.lines() {
        if let Some((name, bytes)) = line.split_once('=') {
            assert_eq!(bytes.trim(), "0", "/proc/{name} is readable");
        } else {
            assert_eq!(line.trim(), "0", "masked dirs are empty");
        }
    }
}

#[test]
fn the_boot_id_is_the_sandboxs_own() {
    if !can_run("the_boot_id_is_the_sandboxs_own") {
        return;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let read = "cat /proc/sys/kernel/random/boot_id; \
                (echo x > /proc/sys/kernel/random/boot_id) 2>/dev/null && echo written; true";
    let first = sh_ok(&[], read);
    let second = sh_ok(&[], read);
    for id in [&first, &second] {
        let id = id.trim();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id:?} is no UUID");
        assert_eq!(&id[14..15], "4", "{id:?} is no random UUID");
    }
    // runc refuses a mount inside /proc but for the few files lxcfs emulates ("cannot be
    // mounted because it is inside /proc"), and crun is given the same bundle: an OCI
    // sandbox shows the host's.
    if matches!(isolation().as_str(), "runc" | "crun") {
        eprintln!(
            "the_boot_id_is_the_sandboxs_own: on {} the host's boot id shows",
            isolation()
        );
        assert_eq!(first.trim(), host.trim());
        return;
    }
    assert_ne!(first.trim(), host.trim(), "the host's boot id is shown");
    assert_ne!(first, second, "two starts share a boot id");
}

#[test]
fn the_hosts_boot_id_cannot_be_uncovered() {
    if !can_run("the_hosts_boot_id_cannot_be_uncovered") {
        return;
    }
    if matches!(isolation().as_str(), "runc" | "crun") {
        return warren_testkit::skip(
            "the_hosts_boot_id_cannot_be_uncovered",
            "runc and crun show the host's boot id (see the_boot_id_is_the_sandboxs_own)",
        );
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    // Take the mount off, mount a /proc of one's own, or find the file hidden in /dev.
    let out = sh_ok(
        &[],
        "umount /proc/sys/kernel/random/boot_id 2>/dev/null; \
         umount -l /proc/sys/kernel/random/boot_id 2>/dev/null; \
         cat /proc/sys/kernel/random/boot_id; \
         mkdir -p /tmp/p && mount -t proc proc /tmp/p 2>/dev/null && \
           cat /tmp/p/sys/kernel/random/boot_id; \
         cat /proc/1/root/proc/sys/kernel/random/boot_id 2>/dev/null; \
         cat /dev/.boot_id 2>/dev/null; true",
    );
    assert!(!out.contains(host.trim()), "the host's boot id: {out}");
    assert!(!out.trim().is_empty());
}

#[test]
fn dev_is_minimal() {
    if !can_run("dev_is_minimal") {
        return;
    }
    let out = sh_ok(&[], "ls -A /dev | sort | tr '\\n' ' '");
    assert_eq!(
        out.trim(),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    let out = sh_ok(&[], "echo x > /dev/null && head -c 4 /dev/zero | wc -c");
    assert_eq!(out.trim(), "4");
    let out = sh(&[], "mknod /tmp/mem c 1 1 2>/dev/null && echo made");
    assert!(
        !stdout(&out).contains("made"),
        "mknod of a device must fail"
    );
}

#[test]
fn no_host_paths_are_visible() {
    if !can_run("no_host_paths_are_visible") {
        return;
    }
    let out = sh_ok(
        &[],
        "for p in /work /etc/shadow /etc/gshadow /etc/ssh /root/.ssh /root/.cargo \
                  /var/run/docker.sock /run/docker.sock /run/warren /var/lib/warren \
                  /home/user/.ssh /var/lib/dpkg /var/log/apt /old_root /.dockerenv; do \
           [ -e $p ] && echo visible:$p; done; ls -A /home; ls -A /root; ls -A /run",
    );
    assert!(!out.contains("visible:"), "host paths leak: {out}");
    assert_eq!(out.trim(), "user", "only the sandbox's own home");
}

#[test]
fn capabilities_are_reduced_and_no_new_privileges_is_set() {
    if !can_run("capabilities_are_reduced_and_no_new_privileges_is_set") {
        return;
    }
    // The fields as /proc/self/status shows them, and no_new_privs as prctl tells it
    // (gVisor's kernel shows neither it nor the ambient set there).
    let out = sh_ok(
        &[],
        "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
         python3 -c 'import ctypes; print(\"prctl:\", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'",
    );
    let gvisor = isolation() == "gvisor";
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .or_else(|| (k == "CapAmb:" && gvisor).then_some("0000000000000000"))
            .or_else(|| (k == "NoNewPrivs:" && gvisor).then(|| field_of(&out, "prctl:")))
            .unwrap_or_else(|| panic!("{k} missing in {out}"))
            .trim()
            .to_string()
    };
    let safe = u64::from_str_radix("a00405fb", 16).unwrap();
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    let bnd = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
    assert_eq!(
        eff & !safe,
        0,
        "effective caps beyond the safe set: {eff:x}"
    );
    assert_eq!(bnd & !safe, 0, "bounding caps beyond the safe set: {bnd:x}");
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("prctl:"), "1");
    assert_eq!(field("Seccomp:"), "2");
}

/// The value after `key` on its line of `out` (empty when there is none).
fn field_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(key)).unwrap_or("")
}

#[test]
fn raw_sockets_are_denied() {
    if !can_run("raw_sockets_are_denied") {
        return;
    }
    let out = sh_ok(
        &[],
        "python3 -c 'import socket\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print(\"raw-ok\")\nexcept PermissionError: print(\"denied\")'",
    );
    assert_eq!(out.trim(), "denied");
}

#[test]
fn user_processes_have_no_privileges_at_all() {
    if !can_run("user_processes_have_no_privileges_at_all") {
        return;
    }
    let out = sh_ok(
        &["--user", "1000"],
        "id -u; grep CapEff /proc/self/status; touch /etc/x 2>/dev/null && echo etc-writable; true",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert!(lines[1].ends_with("0000000000000000"), "{}", lines[1]);
    assert_eq!(lines.len(), 2, "{out}");
}

#[test]
fn cgroup_namespace_hides_the_host_hierarchy() {
    if !can_run("cgroup_namespace_hides_the_host_hierarchy") {
        return;
    }
    let out = sh_ok(&[], "cat /proc/self/cgroup");
    for line in out.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        assert!(
            !path.contains("warren-"),
            "cgroup path leaks host layout: {line}"
        );
    }
}
