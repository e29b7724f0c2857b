//! The seccomp policy, from inside a real sandbox: one sandboxed process makes every call
//! the policy refuses and must see each fail as the policy says; the calls the argument
//! filters let through must still work. warren-sys's unit tests check the compiled policy
//! itself (where the kernel's own permission checks cannot answer in its place); this
//! checks that what runs in a sandbox is under it. Needs root (CI runs as root); prints
//! SKIPPED otherwise.

mod common;

use common::*;

const EPERM: i32 = libc::EPERM;
const ENOSYS: i32 = libc::ENOSYS;
/// The call must succeed.
const OK: i32 = 0;

/// Page 0 is never mapped.
const BAD_PTR: i64 = 1;
const NO_FD: i64 = -1;
/// Replaced inside the sandbox by a buffer for two descriptors.
const PAIR: i64 = -2;
const STREAM: i64 = libc::SOCK_STREAM as i64;
const SIGCHLD: i64 = libc::SIGCHLD as i64;

/// A call made in the sandbox: the syscall's name, what the call is (when the name alone
/// does not say), its x86-64 number, arguments that would be harmless even if a refused
/// call got through, and the errno it must fail with (or OK).
struct Call {
    syscall: &'static str,
    what: &'static str,
    nr: i64,
    args: &'static [i64],
    errno: i32,
}

const fn call(syscall: &'static str, nr: i64, args: &'static [i64], errno: i32) -> Call {
    Call {
        syscall,
        what: "",
        nr,
        args,
        errno,
    }
}

const fn with(
    syscall: &'static str,
    what: &'static str,
    nr: i64,
    args: &'static [i64],
    errno: i32,
) -> Call {
    Call {
        syscall,
        what,
        nr,
        args,
        errno,
    }
}

#[rustfmt::skip]
const CALLS: &[Call] = &[
    call("mount", libc::SYS_mount, &[0, 0, 0, 0, 0], EPERM),
    call("umount2", libc::SYS_umount2, &[0, 0], EPERM),
    call("pivot_root", libc::SYS_pivot_root, &[0, 0], EPERM),
    call("fsopen", libc::SYS_fsopen, &[0, 0], EPERM),
    call("fsconfig", libc::SYS_fsconfig, &[NO_FD, 0, 0, 0, 0], EPERM),
    call("fsmount", libc::SYS_fsmount, &[NO_FD, 0, 0], EPERM),
    call("fspick", libc::SYS_fspick, &[NO_FD, 0, 0], EPERM),
    call("move_mount", libc::SYS_move_mount, &[NO_FD, 0, NO_FD, 0, 0], EPERM),
    call("open_tree", libc::SYS_open_tree, &[NO_FD, 0, 0], EPERM),
    call("unshare", libc::SYS_unshare, &[0], EPERM),
    call("setns", libc::SYS_setns, &[NO_FD, 0], EPERM),
    call("keyctl", libc::SYS_keyctl, &[-1, 0, 0, 0, 0], EPERM),
    call("add_key", libc::SYS_add_key, &[0, 0, 0, 0, 0], EPERM),
    call("request_key", libc::SYS_request_key, &[0, 0, 0, 0], EPERM),
    call("bpf", libc::SYS_bpf, &[-1, 0, 0], EPERM),
    call("perf_event_open", libc::SYS_perf_event_open, &[0, 0, -1, -1, 0], EPERM),
    // An unknown flag: never an unload.
    call("kexec_load", libc::SYS_kexec_load, &[0, 0, 0, 0x8000], EPERM),
    call("kexec_file_load", libc::SYS_kexec_file_load, &[NO_FD, NO_FD, 0, 0, 0x8000], EPERM),
    call("init_module", libc::SYS_init_module, &[0, 0, 0], EPERM),
    call("finit_module", libc::SYS_finit_module, &[NO_FD, 0, 0], EPERM),
    call("delete_module", libc::SYS_delete_module, &[0, 0], EPERM),
    call("acct", libc::SYS_acct, &[BAD_PTR], EPERM),
    call("swapon", libc::SYS_swapon, &[BAD_PTR, 0], EPERM),
    call("swapoff", libc::SYS_swapoff, &[BAD_PTR], EPERM),
    call("reboot", libc::SYS_reboot, &[0, 0, 0, 0], EPERM),
    call("settimeofday", libc::SYS_settimeofday, &[0, 0], EPERM),
    call("clock_settime", libc::SYS_clock_settime, &[0, BAD_PTR], EPERM),
    call("clock_adjtime", libc::SYS_clock_adjtime, &[0, BAD_PTR], EPERM),
    call("adjtimex", libc::SYS_adjtimex, &[BAD_PTR], EPERM),
    // SYSLOG_ACTION_SIZE_BUFFER, a read.
    call("syslog", libc::SYS_syslog, &[10, 0, 0], EPERM),
    call("quotactl", libc::SYS_quotactl, &[0, 0, 0, 0], EPERM),
    // PTRACE_ATTACH to the agent.
    call("ptrace", libc::SYS_ptrace, &[16, 1, 0, 0], EPERM),
    call("process_vm_readv", libc::SYS_process_vm_readv, &[1, 0, 0, 0, 0, 0], EPERM),
    call("process_vm_writev", libc::SYS_process_vm_writev, &[1, 0, 0, 0, 0, 0], EPERM),
    call("kcmp", libc::SYS_kcmp, &[1, 1, 0, 0, 0], EPERM),
    call("pidfd_getfd", libc::SYS_pidfd_getfd, &[NO_FD, 0, 0], EPERM),
    call("open_by_handle_at", libc::SYS_open_by_handle_at, &[NO_FD, BAD_PTR, 0], EPERM),
    call("name_to_handle_at", libc::SYS_name_to_handle_at, &[NO_FD, BAD_PTR, BAD_PTR, BAD_PTR, 0], EPERM),
    call("userfaultfd", libc::SYS_userfaultfd, &[0], EPERM),
    call("io_uring_setup", libc::SYS_io_uring_setup, &[1, 0], EPERM),
    call("io_uring_enter", libc::SYS_io_uring_enter, &[NO_FD, 0, 0, 0, 0, 0], EPERM),
    call("io_uring_register", libc::SYS_io_uring_register, &[NO_FD, 0, 0, 0], EPERM),
    call("iopl", libc::SYS_iopl, &[3], EPERM),
    call("ioperm", libc::SYS_ioperm, &[0x80, 1, 1], EPERM),
    call("lookup_dcookie", libc::SYS_lookup_dcookie, &[0, 0, 0], EPERM),
    call("fanotify_init", libc::SYS_fanotify_init, &[0, 0], EPERM),
    call("vhangup", libc::SYS_vhangup, &[], EPERM),
    call("mbind", libc::SYS_mbind, &[0, 0, 0, 0, 0, 0], EPERM),
    call("set_mempolicy", libc::SYS_set_mempolicy, &[0, 0, 0], EPERM),
    call("get_mempolicy", libc::SYS_get_mempolicy, &[0, 0, 0, 0, 0], EPERM),
    call("move_pages", libc::SYS_move_pages, &[0, 0, 0, 0, 0, 0], EPERM),
    call("migrate_pages", libc::SYS_migrate_pages, &[0, 0, 0, 0], EPERM),
    call("uselib", libc::SYS_uselib, &[BAD_PTR], EPERM),
    call("ustat", libc::SYS_ustat, &[0, BAD_PTR], EPERM),
    call("sysfs", libc::SYS_sysfs, &[1, BAD_PTR], EPERM),
    call("_sysctl", libc::SYS__sysctl, &[BAD_PTR], EPERM),
    // Reads nothing of the LDT.
    call("modify_ldt", libc::SYS_modify_ldt, &[0, 0, 0], EPERM),
    call("sethostname", libc::SYS_sethostname, &[BAD_PTR, 65], EPERM),
    call("setdomainname", libc::SYS_setdomainname, &[BAD_PTR, 65], EPERM),
    call("process_madvise", libc::SYS_process_madvise, &[NO_FD, 0, 0, 0, 0], EPERM),
    with("personality", "READ_IMPLIES_EXEC", libc::SYS_personality, &[0x0040_0000], EPERM),
    with("personality", "ADDR_NO_RANDOMIZE", libc::SYS_personality, &[0x0004_0000], EPERM),
    with("personality", "the query", libc::SYS_personality, &[0xffff_ffff], OK),
    with("personality", "PER_LINUX32", libc::SYS_personality, &[8], OK),
    with("personality", "PER_LINUX", libc::SYS_personality, &[0], OK),
    with("socket", "AF_VSOCK", libc::SYS_socket, &[40, STREAM, 0], EPERM),
    with("socket", "AF_VSOCK datagram", libc::SYS_socket, &[40, libc::SOCK_DGRAM as i64, 0], EPERM),
    with("socket", "AF_ALG", libc::SYS_socket, &[38, libc::SOCK_SEQPACKET as i64, 0], EPERM),
    with("socket", "AF_ATMSVC", libc::SYS_socket, &[20, STREAM, 0], EPERM),
    with("socket", "AF_ISDN", libc::SYS_socket, &[34, STREAM, 0], EPERM),
    with("socket", "AF_CAIF", libc::SYS_socket, &[37, STREAM, 0], EPERM),
    with("socket", "AF_DECnet", libc::SYS_socket, &[12, STREAM, 0], EPERM),
    with("socket", "AF_ECONET", libc::SYS_socket, &[19, STREAM, 0], EPERM),
    with("socket", "AF_IRDA", libc::SYS_socket, &[23, STREAM, 0], EPERM),
    with("socket", "AF_WANPIPE", libc::SYS_socket, &[25, STREAM, 0], EPERM),
    with("socket", "AF_MAX", libc::SYS_socket, &[46, STREAM, 0], EPERM),
    with("socket", "AF_UNIX", libc::SYS_socket, &[1, STREAM, 0], OK),
    with("socket", "AF_INET", libc::SYS_socket, &[2, libc::SOCK_DGRAM as i64, 0], OK),
    with("socket", "AF_NETLINK", libc::SYS_socket, &[16, libc::SOCK_RAW as i64, 0], OK),
    with("socketpair", "AF_VSOCK", libc::SYS_socketpair, &[40, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_ALG", libc::SYS_socketpair, &[38, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_ATMSVC", libc::SYS_socketpair, &[20, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_ISDN", libc::SYS_socketpair, &[34, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_CAIF", libc::SYS_socketpair, &[37, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_DECnet", libc::SYS_socketpair, &[12, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_ECONET", libc::SYS_socketpair, &[19, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_IRDA", libc::SYS_socketpair, &[23, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_WANPIPE", libc::SYS_socketpair, &[25, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_MAX", libc::SYS_socketpair, &[46, STREAM, 0, PAIR], EPERM),
    with("socketpair", "AF_UNIX", libc::SYS_socketpair, &[1, STREAM, 0, PAIR], OK),
    // Device nodes, refused; a FIFO is not (a bad path: EFAULT, past the filter).
    with("mknod", "a character device", libc::SYS_mknod, &[BAD_PTR, 0o20600, 0], EPERM),
    with("mknod", "a block device", libc::SYS_mknod, &[BAD_PTR, 0o60600, 0], EPERM),
    with("mknodat", "a character device", libc::SYS_mknodat, &[NO_FD, BAD_PTR, 0o20600, 0], EPERM),
    with("mknodat", "a block device", libc::SYS_mknodat, &[NO_FD, BAD_PTR, 0o60600, 0], EPERM),
    with("mknod", "a FIFO", libc::SYS_mknod, &[BAD_PTR, 0o10600, 0], libc::EFAULT),
    with("clone", "CLONE_NEWNS", libc::SYS_clone, &[libc::CLONE_NEWNS as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWCGROUP", libc::SYS_clone, &[libc::CLONE_NEWCGROUP as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWUTS", libc::SYS_clone, &[libc::CLONE_NEWUTS as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWIPC", libc::SYS_clone, &[libc::CLONE_NEWIPC as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWUSER", libc::SYS_clone, &[libc::CLONE_NEWUSER as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWPID", libc::SYS_clone, &[libc::CLONE_NEWPID as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWNET", libc::SYS_clone, &[libc::CLONE_NEWNET as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "CLONE_NEWTIME", libc::SYS_clone, &[libc::CLONE_NEWTIME as i64 | SIGCHLD, 0, 0, 0, 0], EPERM),
    with("clone", "a plain fork", libc::SYS_clone, &[SIGCHLD, 0, 0, 0, 0], OK),
    call("clone3", libc::SYS_clone3, &[0, 0], ENOSYS),
    // Refused by the guard, by number.
    call("mount_setattr", 442, &[NO_FD, BAD_PTR, 0, 0, 0], EPERM),
    call("quotactl_fd", 443, &[NO_FD, 0, 0, 0], EPERM),
    call("set_mempolicy_home_node", 450, &[0, 0, 0, 0], EPERM),
    call("lsm_get_self_attr", 459, &[0, 0, 0, 0], EPERM),
    call("lsm_set_self_attr", 460, &[0, 0, 0, 0], EPERM),
    call("lsm_list_modules", 461, &[0, 0, 0], EPERM),
    call("open_tree_attr", 467, &[NO_FD, BAD_PTR, 0, 0, 0], EPERM),
    // Newer than the reviewed kernel: listns (6.19). This kernel may not have it either,
    // so only warren-sys's unit test tells the guard's answer from the kernel's.
    with("listns", "a number from 470 on", 470, &[0, 0, 0, 0], ENOSYS),
];

/// Makes the calls given as JSON, printing "index errno" for each (0 for a success), then
/// makes an x32 and an i386 call in processes of their own, printing "x32 status" and
/// "i386 status".
const SCRIPT: &str = r#"
import ctypes, json, mmap, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE, SOCKET, SOCKETPAIR, PERSONALITY = 56, 41, 53, 135
pair = (ctypes.c_int * 2)()
for i, (nr, args) in enumerate(json.loads(sys.argv[1])):
    args = [ctypes.addressof(pair) if a == -2 else a for a in args]
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and nr == CLONE:
        os._exit(0)
    err = ctypes.get_errno() if r < 0 else 0
    if r > 0 and nr == CLONE:
        err = os.waitpid(r, 0)[1]
    if r >= 0 and nr == SOCKET:
        os.close(r)
    if r == 0 and nr == SOCKETPAIR:
        os.close(pair[0])
        os.close(pair[1])
    if r >= 0 and nr == PERSONALITY:
        libc.syscall(ctypes.c_long(PERSONALITY), ctypes.c_long(0))
    print(i, err, flush=True)
X32 = "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39)"
# mov eax, 20 (i386 getpid); int 0x80; ret
I386 = """
import ctypes, mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3]))
ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
"""
for name, code in (("x32", X32), ("i386", I386)):
    print(name, subprocess.run([sys.executable, "-c", code]).returncode, flush=True)
"#;

fn describe(errno: i32) -> String {
    match errno {
        OK => "success".into(),
        e => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

/// Whether a rule of default.json applies to `call`, evaluated as the filter does
/// (a dword compares the argument's low 32 bits).
fn rule_matches(rule: &serde_json::Value, call: &Call) -> bool {
    rule["args"].as_array().into_iter().flatten().all(|c| {
        let index = c["index"].as_u64().unwrap() as usize;
        let mut arg = call.args.get(index).copied().unwrap_or(0) as u64;
        if c["type"] == "dword" {
            arg &= 0xffff_ffff;
        }
        let val = c["val"].as_u64().unwrap();
        match &c["op"] {
            serde_json::Value::String(op) => match op.as_str() {
                "eq" => arg == val,
                "ne" => arg != val,
                "lt" => arg < val,
                "le" => arg <= val,
                "gt" => arg > val,
                "ge" => arg >= val,
                other => panic!("operator {other}"),
            },
            op => arg & op["masked_eq"].as_u64().unwrap() == val,
        }
    })
}

/// Every rule of default.json has a call here that it refuses, so a rule added to the
/// policy is exercised in a sandbox too. The guard's rules are listed above by number;
/// warren-sys's unit tests pin those.
#[test]
fn every_rule_of_the_policy_has_a_call() {
    let policy: serde_json::Value =
        serde_json::from_str(include_str!("../../warren-sys/seccomp/default.json")).unwrap();
    for (name, filter) in policy.as_object().unwrap() {
        let errno = filter["match_action"]["errno"].as_i64().unwrap() as i32;
        for rule in filter["filter"].as_array().unwrap() {
            let syscall = rule["syscall"].as_str().unwrap();
            let covered = CALLS
                .iter()
                .any(|c| c.syscall == syscall && c.errno == errno && rule_matches(rule, c));
            assert!(
                covered,
                "no call in a sandbox exercises {name}'s rule {rule}"
            );
        }
    }
}

#[test]
fn every_refused_call_fails_in_a_sandbox() {
    if !can_run("every_refused_call_fails_in_a_sandbox") {
        return;
    }
    let calls: Vec<(i64, &[i64])> = CALLS.iter().map(|c| (c.nr, c.args)).collect();
    let o = warren()
        .args(["run", "--rm", "--", "python3", "-c", SCRIPT])
        .arg(serde_json::to_string(&calls).unwrap())
        .output()
        .expect("run warren");
    assert!(
        o.status.success(),
        "python failed: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let out = stdout(&o);
    let gvisor = isolation() == "gvisor";
    let mut wrong = Vec::new();
    let mut seen = 0;
    let mut kills = std::collections::HashMap::new();
    for line in out.lines() {
        let (key, value) = line.split_once(' ').expect("index and result");
        let value: i32 = value.parse().unwrap();
        let Ok(i) = key.parse::<usize>() else {
            kills.insert(key.to_string(), value);
            continue;
        };
        seen += 1;
        let c = &CALLS[i];
        // gVisor's kernel knows only PER_LINUX and answers the other values EINVAL:
        // stricter than the policy.
        let gvisor_refuses =
            gvisor && c.nr == libc::SYS_personality && c.errno == OK && value == libc::EINVAL;
        if value != c.errno && !gvisor_refuses {
            let what = if c.what.is_empty() {
                String::new()
            } else {
                format!(" {}", c.what)
            };
            let got = if c.nr == libc::SYS_clone && c.errno == OK {
                format!("a child that ended with wait status {value}")
            } else {
                describe(value)
            };
            wrong.push(format!(
                "{}{what} (nr {}, args {:?}): expected {}, got {got}",
                c.syscall,
                c.nr,
                c.args,
                describe(c.errno)
            ));
        }
    }
    assert_eq!(seen, CALLS.len(), "not every call reported:\n{out}");
    // A process killed by SIGSYS: subprocess reports the signal negated.
    let sigsys = -libc::SIGSYS;
    if kills.get("x32") != Some(&sigsys) {
        wrong.push(format!(
            "an x32 call: expected SIGSYS, got status {:?}",
            kills.get("x32")
        ));
    }
    match kills.get("i386") {
        Some(s) if *s == sigsys => {}
        // Without ia32 emulation int 0x80 faults before any syscall is made.
        Some(s) if *s == -libc::SIGSEGV => println!("i386: this kernel runs no i386 calls"),
        // gVisor's kernel takes every call of the process (the host kernel sees none) and
        // answers int 0x80 itself.
        Some(0) if gvisor => println!("i386: answered by gVisor's kernel"),
        other => wrong.push(format!(
            "an i386 call: expected SIGSYS, got status {other:?}"
        )),
    }
    assert!(
        wrong.is_empty(),
        "calls that did not fail as the policy says:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_command_inherits_the_agents_one_filter() {
    if !can_run("a_command_inherits_the_agents_one_filter") {
        return;
    }
    // The agent (the sandbox's first process) runs under the policy itself, so a command
    // inherits that filter rather than stacking a second one of its own; and a command's
    // child inherits it again.
    let out = sh_ok(
        &[],
        "grep -H '^Seccomp' /proc/1/status /proc/self/status; \
         sh -c 'grep -H ^Seccomp /proc/self/status' | sed s/self/child/",
    );
    for who in ["1", "self", "child"] {
        let field = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("/proc/{who}/status:{key}:")))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(
            field("Seccomp").as_deref(),
            Some("2"),
            "/proc/{who} is not under the filter:\n{out}"
        );
        // gVisor's kernel does not count a process's filters.
        if isolation() != "gvisor" {
            assert_eq!(
                field("Seccomp_filters").as_deref(),
                Some("1"),
                "/proc/{who} carries other than the one filter:\n{out}"
            );
        }
    }
}
