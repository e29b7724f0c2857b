//! The seccomp policy every sandboxed process runs under.
//!
//! The policy is reviewed data, `seccomp/default.json` in seccompiler's JSON format, not
//! calls scattered through the code. It is a deny list: everything is allowed except the
//! syscalls that reach host-wide state or a large kernel attack surface, which fail with
//! `EPERM` so programs that probe for them (container tools, test suites) degrade instead
//! of dying. A deny list lets a new syscall through until the policy names it; the
//! sandbox's other layers (namespaces, dropped capabilities, no_new_privs) are what stop
//! the dangerous ones, and this filter narrows what is left.
//!
//! Three BPF programs make the policy, run in this order:
//!
//! - a guard built here: kills the process for a foreign architecture or an x32 syscall
//!   number (x32 shares x86-64's audit arch, so without it every rule below could be
//!   bypassed by setting bit 30 of the syscall number), refuses the syscalls that
//!   seccompiler 0.4's table cannot name, and answers `ENOSYS` for numbers newer than the
//!   reviewed kernel.
//! - `clone3` (from the JSON): `ENOSYS`, because clone3's flags sit in user memory that
//!   a filter cannot inspect; libc then falls back to `clone`, which `main` checks.
//!   seccompiler gives one action per filter, hence a filter of its own.
//! - `main` (from the JSON): the `EPERM` list, including `clone` with namespace flags,
//!   `personality` outside the values Docker allows, and `socket` and `socketpair` for the
//!   address families Docker refuses.
//!
//! They are installed as one filter (`chain`): each program's "allow" goes on to the
//! next, the first other verdict is the answer. Installed one by one, the kernel would
//! run all three and keep the most severe verdict; the two agree because the guard, the
//! only one that kills, runs first, and no syscall gets an error from two of them. One
//! filter is one program to run per syscall, and one to install per process: under
//! gVisor, whose kernel prepares every filter stack it is given, three installs cost an
//! exec some 7 ms against about 4 for one.
//!
//! Between the guard and the rest sits a search over the syscall number (`fast_path`),
//! made from the rest itself: a number the rest allows whatever the arguments is allowed
//! there after some eight comparisons, every other number goes on to the rest unchanged.
//! Nothing is decided differently; what changes is the install. The kernel works out, as
//! it installs a filter, which numbers the filter allows without reading arguments, by
//! running it for each number under a lock with interrupts off; through a deny list of
//! some 500 instructions that cost 0.3 ms per install, on every sandbox's create.
//!
//! The program is made when Warren is built: the build script runs `compile` (this
//! module's `compile.rs`, included there) over the JSON and leaves the program for
//! [`SeccompProgram::default_policy`] to copy, so a policy that does not compile fails the
//! build and no process spends the compile (half a millisecond of CPU) as it starts.
//!
//! Installing only copies a prepared program into the kernel, so it is async-signal-safe
//! and can run between fork and exec.

use seccompiler::{sock_filter, BpfProgram};

/// Why the policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp policy for architecture {0}")]
    UnsupportedArch(&'static str),
}

/// The policy's text, as reviewed; the build compiled it to [`DEFAULT_PROGRAM`].
#[cfg(test)]
const DEFAULT_POLICY: &str = include_str!("../seccomp/default.json");

/// The x86-64 program of `seccomp/default.json`, compiled by the build script with
/// `compile` (empty for other architectures, whose policy is not reviewed).
#[cfg(target_arch = "x86_64")]
static DEFAULT_PROGRAM: &[sock_filter] = include!(concat!(env!("OUT_DIR"), "/default_policy.rs"));

#[cfg(test)]
mod compile;

/// A compiled policy, ready to install in a child.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    /// Installed in order; the kernel applies the strictest verdict of all of them.
    filters: Vec<BpfProgram>,
}

impl SeccompProgram {
    /// The policy of `seccomp/default.json`, compiled as this binary was built.
    #[cfg(target_arch = "x86_64")]
    pub fn default_policy() -> Result<Self, SeccompError> {
        Ok(Self {
            filters: vec![DEFAULT_PROGRAM.to_vec()],
        })
    }

    /// The default policy, made once in this process and shared after: by the first
    /// caller, or before the fork that made this process.
    pub fn default_policy_shared() -> Result<&'static Self, SeccompError> {
        static COMPILED: std::sync::OnceLock<SeccompProgram> = std::sync::OnceLock::new();
        if let Some(p) = COMPILED.get() {
            return Ok(p);
        }
        let p = Self::default_policy()?;
        Ok(COMPILED.get_or_init(|| p))
    }

    /// Only the x86-64 policy has been reviewed.
    #[cfg(not(target_arch = "x86_64"))]
    pub fn default_policy() -> Result<Self, SeccompError> {
        let _ = DEFAULT_POLICY;
        Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
    }

    /// Installs the policy on the calling thread. Requires no_new_privs (or
    /// CAP_SYS_ADMIN). Async-signal-safe: no allocation, only `seccomp(2)` calls, so it is
    /// fit for a `pre_exec` hook.
    pub fn install(&self) -> std::io::Result<()> {
        self.install_with(0)
    }

    /// Installs the policy on every thread of the calling process
    /// (`SECCOMP_FILTER_FLAG_TSYNC`), for a process whose children are all to run under
    /// it: a child inherits its parent's filter as it is, where an install converts,
    /// JIT-compiles and analyses the program again. Requires no_new_privs (or
    /// CAP_SYS_ADMIN); fails, installing nothing, if a thread cannot take it.
    pub fn install_on_process(&self) -> std::io::Result<()> {
        self.install_with(libc::SECCOMP_FILTER_FLAG_TSYNC)
    }

    fn install_with(&self, flags: libc::c_ulong) -> std::io::Result<()> {
        for filter in &self.filters {
            let prog = SockFprog {
                len: filter.len() as u16,
                filter: filter.as_ptr(),
            };
            // SAFETY: `prog` points at a live, correctly sized sock_filter array (the
            // layout the kernel expects; seccompiler's sock_filter is repr(C)). The kernel
            // copies the program and keeps no pointer to our memory.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &prog as *const SockFprog,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if rc > 0 {
                // TSYNC's answer: the thread that could not take it (its filter is not an
                // ancestor of this one's).
                return Err(std::io::Error::other(format!(
                    "thread {rc} cannot take the seccomp filter"
                )));
            }
        }
        Ok(())
    }
}

/// `struct sock_fprog` from <linux/filter.h>, pointing at seccompiler's filter type.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const sock_filter,
}

/// What running `program` on an x86-64 syscall numbered `nr` answers, with `args` as its
/// arguments (the six of `struct seccomp_data`, in order), or `None` when it reads an
/// argument it is not given (`args` of `None`), or anything else of `seccomp_data`: the
/// kernel's own reckoning of a filter's answers at install time, one number at a time;
/// the tests' reference for [`unconditionally_allowed`]. Knows the instructions
/// seccompiler and this module write; `None` for any other.
#[cfg(all(test, target_arch = "x86_64"))]
fn evaluate(program: &[sock_filter], nr: u32, args: Option<&[u64; 6]>) -> Option<u32> {
    use compile::bpf::*;
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    while let Some(ins) = program.get(pc) {
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
        match ins.code {
            LD_W_ABS => {
                acc = match ins.k {
                    NR => nr,
                    ARCH => AUDIT_ARCH_X86_64,
                    // The arguments start at 16, eight bytes each, low half first.
                    k if (16..64).contains(&k) && k % 4 == 0 => {
                        let arg = args?[(k as usize - 16) / 8];
                        if k % 8 == 0 {
                            arg as u32
                        } else {
                            (arg >> 32) as u32
                        }
                    }
                    _ => return None,
                }
            }
            JEQ_K => pc += jump(acc == ins.k),
            JGE_K => pc += jump(acc >= ins.k),
            JGT_K => pc += jump(acc > ins.k),
            JSET_K => pc += jump(acc & ins.k != 0),
            JA => pc += ins.k as usize,
            AND_K => acc &= ins.k,
            RET_K => return Some(ins.k),
            _ => return None,
        }
    }
    None
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use super::compile::*;
    use super::*;

    #[test]
    fn the_built_program_is_the_policy_compiled_from_its_text() {
        let compiled = compile(DEFAULT_POLICY.as_bytes()).unwrap();
        assert_eq!(compiled, DEFAULT_PROGRAM);
        assert_eq!(
            SeccompProgram::default_policy().unwrap().filters,
            [compiled]
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_shared_policy_is_compiled_once_and_is_the_default() {
        let a = SeccompProgram::default_policy_shared().unwrap();
        let b = SeccompProgram::default_policy_shared().unwrap();
        assert!(std::ptr::eq(a, b));
        let fresh = SeccompProgram::default_policy().unwrap();
        assert_eq!(format!("{:?}", a.filters), format!("{:?}", fresh.filters));
    }

    fn run_filtered(
        f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
        sh: &str,
    ) -> std::process::Output {
        run_filtered_after(None, f, sh)
    }

    /// Runs `sh` in a child that installs `first` (when given), then the policy, then
    /// calls `f`.
    fn run_filtered_after(
        first: Option<SeccompProgram>,
        f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
        sh: &str,
    ) -> std::process::Output {
        let policy = Arc::new(SeccompProgram::default_policy().unwrap());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", sh]).stdin(Stdio::null());
        let mut f = f;
        // SAFETY: the hook only makes async-signal-safe syscalls (prctl, seccomp, on
        // programs built before the fork) and whatever the test's own closure does, which
        // is equally restricted.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(first) = &first {
                    first.install()?;
                }
                policy.install()?;
                f()
            });
        }
        cmd.output().unwrap()
    }

    #[test]
    fn policy_compiles() {
        let p = SeccompProgram::default_policy().unwrap();
        // One filter, within the kernel's limit of 4,096 instructions; the only allows
        // left are the search's and `main`'s, the last program's.
        assert_eq!(p.filters.len(), 1);
        assert!(p.filters[0].len() <= 4096, "{}", p.filters[0].len());
        let allows: Vec<usize> = p.filters[0]
            .iter()
            .enumerate()
            .filter(|(_, i)| i.code == bpf::RET_K && i.k == libc::SECCOMP_RET_ALLOW)
            .map(|(at, _)| at)
            .collect();
        let main_start = p.filters[0].len()
            - seccompiler::compile_from_json(
                DEFAULT_POLICY.as_bytes(),
                seccompiler::TargetArch::x86_64,
            )
            .unwrap()["main"]
                .len();
        let search = guard_program().len()..guard_program().len() + search_len();
        assert!(!allows.is_empty());
        assert!(
            allows
                .iter()
                .all(|at| *at >= main_start || search.contains(at)),
            "{allows:?}"
        );
        // What makes the chain agree with three filters: no syscall gets an error from
        // two of them (the guard's are those `main` cannot name).
        let json: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
        let named = |f: &str| -> Vec<String> {
            json[f]["filter"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["syscall"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(named("clone3"), ["clone3"]);
        assert!(!named("main").contains(&"clone3".to_string()));
        for (name, _) in UNNAMED_EPERM {
            assert!(!named("main").contains(&name.to_string()), "{name}");
        }
        assert!(p
            .filters
            .iter()
            .all(|f| !f.is_empty() && f.len() < u16::MAX as usize));
    }

    /// `clone3` and `main` chained, as the search is made from.
    fn rest() -> BpfProgram {
        let mut map = seccompiler::compile_from_json(
            DEFAULT_POLICY.as_bytes(),
            seccompiler::TargetArch::x86_64,
        )
        .unwrap();
        chain(vec![
            map.remove("clone3").unwrap(),
            map.remove("main").unwrap(),
        ])
    }

    fn search_len() -> usize {
        fast_path(&rest()).len()
    }

    #[test]
    fn the_search_allows_what_the_rest_allows_whatever_the_arguments_and_sends_on_the_rest() {
        let rest = rest();
        let search = fast_path(&rest);
        let mut allowed = 0;
        for nr in 0..FIRST_UNREVIEWED + 64 {
            let free =
                nr < FIRST_UNREVIEWED && evaluate(&rest, nr, None) == Some(libc::SECCOMP_RET_ALLOW);
            // Run alone, the search answers ALLOW or jumps past its end (no answer).
            let answer = evaluate(&search, nr, None);
            if free {
                allowed += 1;
                assert_eq!(answer, Some(libc::SECCOMP_RET_ALLOW), "#{nr}");
            } else {
                assert_eq!(answer, None, "#{nr} is not the search's to allow");
            }
        }
        // A deny list: most numbers are allowed, each after a few comparisons.
        assert!(allowed > 350, "{allowed}");
        assert!(search.len() < 400, "{}", search.len());
    }

    #[test]
    fn one_pass_finds_the_numbers_running_each_number_finds() {
        let rest = rest();
        // The rest, and the whole policy, guard and all: what the guard refuses is
        // refused, the rest as the rest says.
        let plain = chain(vec![guard_program(), rest.clone()]);
        for (program, what) in [(&rest, "the rest"), (&plain, "the policy")] {
            let free = unconditionally_allowed(program);
            for nr in 0..FIRST_UNREVIEWED {
                assert_eq!(
                    free.has(nr),
                    evaluate(program, nr, None) == Some(libc::SECCOMP_RET_ALLOW),
                    "#{nr} in {what}"
                );
            }
        }
        let free = unconditionally_allowed(&plain);
        assert!(!free.has(165), "mount");
    }

    #[test]
    fn the_policy_answers_as_it_did_without_the_search() {
        let plain = chain(vec![guard_program(), rest()]);
        let policy = SeccompProgram::default_policy().unwrap();
        let policy = &policy.filters[0];
        // Every value the policy compares anything with, in every argument, with the high
        // half clear and set; and no argument, and every bit set.
        let mut values: Vec<u64> = plain
            .iter()
            .filter(|i| [bpf::JEQ_K, bpf::JGE_K, bpf::JGT_K, bpf::JSET_K].contains(&i.code))
            .map(|i| u64::from(i.k))
            .collect();
        values.sort_unstable();
        values.dedup();
        let mut vectors = vec![[0u64; 6], [u64::MAX; 6]];
        for v in values {
            vectors.push([v; 6]);
            vectors.push([v | 1 << 32; 6]);
        }
        for nr in (0..FIRST_UNREVIEWED + 64).chain([bpf::X32_SYSCALL_BIT - 1]) {
            for args in &vectors {
                assert_eq!(
                    evaluate(policy, nr, Some(args)),
                    evaluate(&plain, nr, Some(args)),
                    "#{nr} with {args:?}"
                );
            }
        }
    }

    #[test]
    fn namespaces_and_mounts_are_refused() {
        let out = run_filtered(
            || Ok(()),
            "unshare -U true 2>&1; echo rc=$?; mount -t tmpfs none /nonexistent 2>&1; echo rc=$?",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(!text.contains("rc=0"), "{text}");
    }

    #[test]
    fn ordinary_programs_still_run_and_fork() {
        // A pipeline and a background job exercise clone (and clone3's ENOSYS fallback).
        let out = run_filtered(
            || Ok(()),
            "echo hi | cat & wait; setarch linux32 true && echo ok32",
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nok32\n");
        assert!(out.status.success());
    }

    #[test]
    fn personality_outside_the_allowed_values_is_refused() {
        let out = run_filtered(|| Ok(()), "setarch x86_64 -R true");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not permitted"));
    }

    #[test]
    fn clone_with_namespace_flags_is_refused() {
        // Checked in the child itself, right after the filter is installed: no shell tool
        // calls clone(2) with namespace flags.
        let out = run_filtered(
            || {
                let flags = (libc::CLONE_NEWUTS | libc::SIGCHLD) as libc::c_ulong;
                // SAFETY: a raw fork-like clone with a null stack; the child branch exits
                // at once without touching the parent's memory.
                let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
                if rc == 0 {
                    // SAFETY: _exit is async-signal-safe and ends the grandchild.
                    unsafe { libc::_exit(0) };
                }
                if rc > 0 {
                    // EPROTO stands for "allowed"; building a message would allocate after fork.
                    return Err(std::io::Error::from_raw_os_error(libc::EPROTO));
                }
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EPERM) => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            },
            "true",
        );
        assert!(out.status.success());
    }

    #[test]
    fn x32_syscalls_kill_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let out = run_filtered(
            || {
                // SAFETY: getpid through the x32 ABI; the filter kills before it runs.
                unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) };
                Ok(())
            },
            "true",
        );
        assert_eq!(out.status.signal(), Some(libc::SIGSYS));
    }

    #[test]
    fn clone3_reports_enosys() {
        let out = run_filtered(
            || {
                // SAFETY: clone3 with a null argument pointer only returns an error.
                let rc = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
                if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
                {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(libc::EPROTO))
                }
            },
            "true",
        );
        assert!(out.status.success());
    }

    #[test]
    fn i386_syscalls_kill_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let out = run_filtered(
            || {
                // SAFETY: i386 getpid (20) through int 0x80, which takes no memory operand;
                // the guard kills the process before the kernel runs it. The registers the
                // 32-bit entry may change are declared clobbered.
                unsafe {
                    std::arch::asm!(
                        "int 0x80",
                        inlateout("eax") 20u32 => _,
                        lateout("r8") _,
                        lateout("r9") _,
                        lateout("r10") _,
                        lateout("r11") _,
                    );
                }
                Ok(())
            },
            "true",
        );
        if out.status.signal() == Some(libc::SIGSEGV) {
            warren_testkit::skip(
                "i386_syscalls_kill_the_process",
                "this kernel runs no i386 calls",
            );
            return;
        }
        assert_eq!(out.status.signal(), Some(libc::SIGSYS));
    }

    /// The reviewed policy, as docs/seccomp.md sets it out: every rule of `default.json`
    /// and of the guard, rendered as `policy_rules` renders them, with the action it
    /// takes. `policy_is_the_reviewed_one` compares the two, so that no rule is added or
    /// dropped without this list, and the review, changing too.
    const REVIEWED: &[(&str, &str)] = &[
        ("mount", "EPERM"),
        ("umount2", "EPERM"),
        ("pivot_root", "EPERM"),
        ("fsopen", "EPERM"),
        ("fsconfig", "EPERM"),
        ("fsmount", "EPERM"),
        ("fspick", "EPERM"),
        ("move_mount", "EPERM"),
        ("open_tree", "EPERM"),
        ("unshare", "EPERM"),
        ("setns", "EPERM"),
        ("keyctl", "EPERM"),
        ("add_key", "EPERM"),
        ("request_key", "EPERM"),
        ("bpf", "EPERM"),
        ("perf_event_open", "EPERM"),
        ("kexec_load", "EPERM"),
        ("kexec_file_load", "EPERM"),
        ("init_module", "EPERM"),
        ("finit_module", "EPERM"),
        ("delete_module", "EPERM"),
        ("acct", "EPERM"),
        ("swapon", "EPERM"),
        ("swapoff", "EPERM"),
        ("reboot", "EPERM"),
        ("settimeofday", "EPERM"),
        ("clock_settime", "EPERM"),
        ("clock_adjtime", "EPERM"),
        ("adjtimex", "EPERM"),
        ("syslog", "EPERM"),
        ("quotactl", "EPERM"),
        ("ptrace", "EPERM"),
        ("process_vm_readv", "EPERM"),
        ("process_vm_writev", "EPERM"),
        ("kcmp", "EPERM"),
        ("pidfd_getfd", "EPERM"),
        ("open_by_handle_at", "EPERM"),
        ("name_to_handle_at", "EPERM"),
        ("userfaultfd", "EPERM"),
        ("io_uring_setup", "EPERM"),
        ("io_uring_enter", "EPERM"),
        ("io_uring_register", "EPERM"),
        ("iopl", "EPERM"),
        ("ioperm", "EPERM"),
        ("lookup_dcookie", "EPERM"),
        ("fanotify_init", "EPERM"),
        ("vhangup", "EPERM"),
        ("mbind", "EPERM"),
        ("set_mempolicy", "EPERM"),
        ("get_mempolicy", "EPERM"),
        ("move_pages", "EPERM"),
        ("migrate_pages", "EPERM"),
        ("uselib", "EPERM"),
        ("ustat", "EPERM"),
        ("sysfs", "EPERM"),
        ("_sysctl", "EPERM"),
        ("modify_ldt", "EPERM"),
        ("sethostname", "EPERM"),
        ("setdomainname", "EPERM"),
        ("process_madvise", "EPERM"),
        // All but PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32 and the query.
        (PERSONALITY, "EPERM"),
        // AF_VSOCK, AF_ALG, AF_ATMSVC, AF_ISDN, AF_CAIF, AF_DECnet, AF_ECONET, AF_IRDA,
        // AF_WANPIPE, and AF_MAX on.
        ("socket(arg0 == 40)", "EPERM"),
        ("socket(arg0 == 38)", "EPERM"),
        ("socket(arg0 == 20)", "EPERM"),
        ("socket(arg0 == 34)", "EPERM"),
        ("socket(arg0 == 37)", "EPERM"),
        ("socket(arg0 == 12)", "EPERM"),
        ("socket(arg0 == 19)", "EPERM"),
        ("socket(arg0 == 23)", "EPERM"),
        ("socket(arg0 == 25)", "EPERM"),
        ("socket(arg0 >= 46)", "EPERM"),
        ("socketpair(arg0 == 40)", "EPERM"),
        ("socketpair(arg0 == 38)", "EPERM"),
        ("socketpair(arg0 == 20)", "EPERM"),
        ("socketpair(arg0 == 34)", "EPERM"),
        ("socketpair(arg0 == 37)", "EPERM"),
        ("socketpair(arg0 == 12)", "EPERM"),
        ("socketpair(arg0 == 19)", "EPERM"),
        ("socketpair(arg0 == 23)", "EPERM"),
        ("socketpair(arg0 == 25)", "EPERM"),
        ("socketpair(arg0 >= 46)", "EPERM"),
        // CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
        // CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME.
        ("mknod(arg1 & 61440 == 8192)", "EPERM"),
        ("mknod(arg1 & 61440 == 24576)", "EPERM"),
        ("mknodat(arg2 & 61440 == 8192)", "EPERM"),
        ("mknodat(arg2 & 61440 == 24576)", "EPERM"),
        ("clone(arg0 & 131072 == 131072)", "EPERM"),
        ("clone(arg0 & 33554432 == 33554432)", "EPERM"),
        ("clone(arg0 & 67108864 == 67108864)", "EPERM"),
        ("clone(arg0 & 134217728 == 134217728)", "EPERM"),
        ("clone(arg0 & 268435456 == 268435456)", "EPERM"),
        ("clone(arg0 & 536870912 == 536870912)", "EPERM"),
        ("clone(arg0 & 1073741824 == 1073741824)", "EPERM"),
        ("clone(arg0 & 128 == 128)", "EPERM"),
        ("clone3", "ENOSYS"),
        ("guard: mount_setattr #442", "EPERM"),
        ("guard: quotactl_fd #443", "EPERM"),
        ("guard: set_mempolicy_home_node #450", "EPERM"),
        ("guard: lsm_get_self_attr #459", "EPERM"),
        ("guard: lsm_set_self_attr #460", "EPERM"),
        ("guard: lsm_list_modules #461", "EPERM"),
        ("guard: open_tree_attr #467", "EPERM"),
        ("guard: #470 and above", "ENOSYS"),
        ("guard: another architecture", "KILL_PROCESS"),
        ("guard: x32 calls", "KILL_PROCESS"),
    ];

    const PERSONALITY: &str = "personality(arg0 != 0 && arg0 != 8 && arg0 != 131072 \
                               && arg0 != 131080 && arg0 != 4294967295)";

    /// The guard's kills end the process, so their own tests make those calls.
    const KILLS_TESTED_APART: &[&str] = &["guard: another architecture", "guard: x32 calls"];

    /// Every rule of the policy as it is: `default.json` read the way seccompiler reads it,
    /// and the guard as it answers when run.
    fn policy_rules() -> Vec<(String, String)> {
        let mut rules = json_rules();
        rules.extend(guard_rules());
        rules.sort();
        rules
    }

    fn json_rules() -> Vec<(String, String)> {
        let policy: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
        let mut rules = Vec::new();
        for (name, filter) in policy.as_object().unwrap() {
            assert_eq!(
                filter["mismatch_action"], "allow",
                "{name} is not a deny list"
            );
            let errno = filter["match_action"]["errno"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: not an errno action"));
            let action = errno_name(errno as i32);
            for rule in filter["filter"].as_array().unwrap() {
                let syscall = rule["syscall"].as_str().unwrap();
                let conditions: Vec<String> = rule["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(render_condition)
                    .collect();
                let rendered = if conditions.is_empty() {
                    syscall.to_string()
                } else {
                    format!("{syscall}({})", conditions.join(" && "))
                };
                rules.push((rendered, action.clone()));
            }
        }
        rules
    }

    fn render_condition(c: &serde_json::Value) -> String {
        let width = match c["type"].as_str() {
            Some("dword") => "",
            Some("qword") => ":64",
            other => panic!("argument type {other:?}"),
        };
        let arg = format!("arg{}{width}", c["index"]);
        let val = c["val"].as_u64().unwrap();
        match &c["op"] {
            serde_json::Value::String(op) => {
                let op = match op.as_str() {
                    "eq" => "==",
                    "ne" => "!=",
                    "lt" => "<",
                    "le" => "<=",
                    "gt" => ">",
                    "ge" => ">=",
                    other => panic!("operator {other}"),
                };
                format!("{arg} {op} {val}")
            }
            op => {
                let mask = op["masked_eq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("operator {op}"));
                format!("{arg} & {mask} == {val}")
            }
        }
    }

    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

    fn guard_rules() -> Vec<(String, String)> {
        let guard = guard_program();
        let mut rules = Vec::new();
        let foreign: Vec<String> = [AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64]
            .iter()
            .map(|arch| action(run_bpf(&guard, *arch, 20)))
            .collect();
        if foreign.iter().all(|a| *a == foreign[0]) {
            rules.push(("guard: another architecture".into(), foreign[0].clone()));
        } else {
            rules.push(("guard: i386".into(), foreign[0].clone()));
            rules.push(("guard: aarch64".into(), foreign[1].clone()));
        }
        let x32 = run_bpf(&guard, bpf::AUDIT_ARCH_X86_64, bpf::X32_SYSCALL_BIT | 39);
        rules.push(("guard: x32 calls".into(), action(x32)));
        // Every number below x32's bit: the range at the top, where all give one answer
        // (checked at its ends and at every number up to 1024), is one rule.
        let verdict = |nr| run_bpf(&guard, bpf::AUDIT_ARCH_X86_64, nr);
        let top = bpf::X32_SYSCALL_BIT - 1;
        let mut open_from = 1024;
        while open_from > 0 && verdict(open_from - 1) == verdict(top) {
            open_from -= 1;
        }
        if verdict(top) != libc::SECCOMP_RET_ALLOW {
            rules.push((
                format!("guard: #{open_from} and above"),
                action(verdict(top)),
            ));
        }
        for nr in 0..open_from {
            if verdict(nr) != libc::SECCOMP_RET_ALLOW {
                let name = UNNAMED_EPERM
                    .iter()
                    .find(|(_, n)| *n == nr)
                    .map_or("?", |(name, _)| name);
                rules.push((format!("guard: {name} #{nr}"), action(verdict(nr))));
            }
        }
        rules
    }

    /// Runs the guard's classic BPF on a syscall of `arch` numbered `nr`.
    fn run_bpf(program: &[sock_filter], arch: u32, nr: u32) -> u32 {
        let mut acc = 0;
        let mut pc = 0;
        loop {
            let ins = &program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
            match ins.code {
                bpf::LD_W_ABS if ins.k == bpf::NR => acc = nr,
                bpf::LD_W_ABS if ins.k == bpf::ARCH => acc = arch,
                bpf::JEQ_K => pc += jump(acc == ins.k),
                bpf::JGE_K => pc += jump(acc >= ins.k),
                bpf::RET_K => return ins.k,
                code => panic!("the guard grew an instruction this test cannot run: {code:#x}"),
            }
        }
    }

    fn action(verdict: u32) -> String {
        match verdict {
            libc::SECCOMP_RET_KILL_PROCESS => "KILL_PROCESS".into(),
            libc::SECCOMP_RET_ALLOW => "ALLOW".into(),
            v if v & 0xffff_0000 == libc::SECCOMP_RET_ERRNO => errno_name((v & 0xffff) as i32),
            v => format!("{v:#x}"),
        }
    }

    fn errno_name(errno: i32) -> String {
        match errno {
            libc::EPERM => "EPERM".into(),
            libc::ENOSYS => "ENOSYS".into(),
            e => format!("errno {e}"),
        }
    }

    #[test]
    fn policy_is_the_reviewed_one() {
        let mut reviewed: Vec<(String, String)> = REVIEWED
            .iter()
            .map(|(rule, action)| (rule.to_string(), action.to_string()))
            .collect();
        reviewed.sort();
        let actual = policy_rules();
        let unreviewed: Vec<_> = actual.iter().filter(|r| !reviewed.contains(r)).collect();
        let dropped: Vec<_> = reviewed.iter().filter(|r| !actual.contains(r)).collect();
        assert!(
            unreviewed.is_empty() && dropped.is_empty(),
            "the policy is not the reviewed one (docs/seccomp.md, REVIEWED):\n\
             in the policy, not reviewed: {unreviewed:#?}\n\
             reviewed, not in the policy: {dropped:#?}"
        );
        assert_eq!(actual, reviewed, "a rule appears twice");
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Verdict {
        /// The policy answers this errno.
        Refused(i32),
        /// The policy lets the call through to the kernel.
        Allowed,
    }
    use Verdict::{Allowed, Refused};

    const EPERM: Verdict = Refused(libc::EPERM);

    /// A call made under the policy and the verdict the policy must give it. `rule` is the
    /// REVIEWED rule a refused call exercises, or what an allowed call is. The arguments
    /// would be harmless even if a refused call reached the kernel: bad pointers, bad
    /// descriptors, flags the kernel rejects, reads, no-ops.
    #[derive(Debug)]
    struct Probe {
        rule: &'static str,
        nr: libc::c_long,
        args: [libc::c_long; 6],
        verdict: Verdict,
    }

    const fn probe(
        rule: &'static str,
        nr: libc::c_long,
        given: &[libc::c_long],
        verdict: Verdict,
    ) -> Probe {
        let mut args = [0; 6];
        let mut i = 0;
        while i < given.len() {
            args[i] = given[i];
            i += 1;
        }
        Probe {
            rule,
            nr,
            args,
            verdict,
        }
    }

    /// Page 0 is never mapped.
    const BAD_PTR: libc::c_long = 1;
    const NO_FD: libc::c_long = -1;
    const STREAM: libc::c_long = libc::SOCK_STREAM as libc::c_long;
    const SIGCHLD: libc::c_long = libc::SIGCHLD as libc::c_long;

    const fn ns_clone(rule: &'static str, flag: libc::c_int) -> Probe {
        probe(
            rule,
            libc::SYS_clone,
            &[flag as libc::c_long | SIGCHLD],
            EPERM,
        )
    }

    #[rustfmt::skip]
    const PROBES: &[Probe] = &[
        probe("mount", libc::SYS_mount, &[0, 0, 0, 0, 0], EPERM),
        probe("umount2", libc::SYS_umount2, &[0, 0], EPERM),
        probe("pivot_root", libc::SYS_pivot_root, &[0, 0], EPERM),
        probe("fsopen", libc::SYS_fsopen, &[0, 0], EPERM),
        probe("fsconfig", libc::SYS_fsconfig, &[NO_FD, 0, 0, 0, 0], EPERM),
        probe("fsmount", libc::SYS_fsmount, &[NO_FD, 0, 0], EPERM),
        probe("fspick", libc::SYS_fspick, &[NO_FD, 0, 0], EPERM),
        probe("move_mount", libc::SYS_move_mount, &[NO_FD, 0, NO_FD, 0, 0], EPERM),
        probe("open_tree", libc::SYS_open_tree, &[NO_FD, 0, 0], EPERM),
        // No flags: a no-op.
        probe("unshare", libc::SYS_unshare, &[0], EPERM),
        probe("setns", libc::SYS_setns, &[NO_FD, 0], EPERM),
        // An unknown operation.
        probe("keyctl", libc::SYS_keyctl, &[-1, 0, 0, 0, 0], EPERM),
        probe("add_key", libc::SYS_add_key, &[0, 0, 0, 0, 0], EPERM),
        probe("request_key", libc::SYS_request_key, &[0, 0, 0, 0], EPERM),
        probe("bpf", libc::SYS_bpf, &[-1, 0, 0], EPERM),
        probe("perf_event_open", libc::SYS_perf_event_open, &[0, 0, -1, -1, 0], EPERM),
        // An unknown flag: never an unload of the loaded kernel.
        probe("kexec_load", libc::SYS_kexec_load, &[0, 0, 0, 0x8000], EPERM),
        probe("kexec_file_load", libc::SYS_kexec_file_load, &[NO_FD, NO_FD, 0, 0, 0x8000], EPERM),
        probe("init_module", libc::SYS_init_module, &[0, 0, 0], EPERM),
        probe("finit_module", libc::SYS_finit_module, &[NO_FD, 0, 0], EPERM),
        probe("delete_module", libc::SYS_delete_module, &[0, 0], EPERM),
        // Not NULL, which would switch accounting off.
        probe("acct", libc::SYS_acct, &[BAD_PTR], EPERM),
        probe("swapon", libc::SYS_swapon, &[BAD_PTR, 0], EPERM),
        probe("swapoff", libc::SYS_swapoff, &[BAD_PTR], EPERM),
        // Without the magic numbers.
        probe("reboot", libc::SYS_reboot, &[0, 0, 0, 0], EPERM),
        // Neither a time nor a zone: a no-op.
        probe("settimeofday", libc::SYS_settimeofday, &[0, 0], EPERM),
        probe("clock_settime", libc::SYS_clock_settime, &[0, BAD_PTR], EPERM),
        probe("clock_adjtime", libc::SYS_clock_adjtime, &[0, BAD_PTR], EPERM),
        probe("adjtimex", libc::SYS_adjtimex, &[BAD_PTR], EPERM),
        // SYSLOG_ACTION_SIZE_BUFFER, a read.
        probe("syslog", libc::SYS_syslog, &[10, 0, 0], EPERM),
        probe("quotactl", libc::SYS_quotactl, &[0, 0, 0, 0], EPERM),
        // An unknown request.
        probe("ptrace", libc::SYS_ptrace, &[0x7fff, 0, 0, 0], EPERM),
        probe("process_vm_readv", libc::SYS_process_vm_readv, &[0, 0, 0, 0, 0, 0], EPERM),
        probe("process_vm_writev", libc::SYS_process_vm_writev, &[0, 0, 0, 0, 0, 0], EPERM),
        probe("kcmp", libc::SYS_kcmp, &[0, 0, -1, 0, 0], EPERM),
        probe("pidfd_getfd", libc::SYS_pidfd_getfd, &[NO_FD, 0, 0], EPERM),
        probe("open_by_handle_at", libc::SYS_open_by_handle_at, &[NO_FD, BAD_PTR, 0], EPERM),
        probe("name_to_handle_at", libc::SYS_name_to_handle_at, &[NO_FD, BAD_PTR, BAD_PTR, BAD_PTR, 0], EPERM),
        // An unknown flag.
        probe("userfaultfd", libc::SYS_userfaultfd, &[0x4000_0000], EPERM),
        probe("io_uring_setup", libc::SYS_io_uring_setup, &[0, 0], EPERM),
        probe("io_uring_enter", libc::SYS_io_uring_enter, &[NO_FD, 0, 0, 0, 0, 0], EPERM),
        probe("io_uring_register", libc::SYS_io_uring_register, &[NO_FD, 0, 0, 0], EPERM),
        // Level 0, no ports: no-ops.
        probe("iopl", libc::SYS_iopl, &[0], EPERM),
        probe("ioperm", libc::SYS_ioperm, &[0, 0, 0], EPERM),
        probe("lookup_dcookie", libc::SYS_lookup_dcookie, &[0, 0, 0], EPERM),
        probe("fanotify_init", libc::SYS_fanotify_init, &[0x7fff_ffff, 0], EPERM),
        // The probing child has left its terminal (setsid), so there is none to hang up.
        probe("vhangup", libc::SYS_vhangup, &[], EPERM),
        // Empty ranges; the calling thread's own default policy.
        probe("mbind", libc::SYS_mbind, &[0, 0, 0, 0, 0, 0], EPERM),
        probe("set_mempolicy", libc::SYS_set_mempolicy, &[0, 0, 0], EPERM),
        probe("get_mempolicy", libc::SYS_get_mempolicy, &[0, 0, 0, 0, 0], EPERM),
        probe("move_pages", libc::SYS_move_pages, &[0, 0, 0, 0, 0, 0], EPERM),
        probe("migrate_pages", libc::SYS_migrate_pages, &[0, 0, 0, 0], EPERM),
        probe("uselib", libc::SYS_uselib, &[BAD_PTR], EPERM),
        probe("ustat", libc::SYS_ustat, &[0, BAD_PTR], EPERM),
        probe("sysfs", libc::SYS_sysfs, &[1, BAD_PTR], EPERM),
        probe("_sysctl", libc::SYS__sysctl, &[BAD_PTR], EPERM),
        // Reads nothing of the LDT.
        probe("modify_ldt", libc::SYS_modify_ldt, &[0, 0, 0], EPERM),
        // Longer than any name: rejected before anything changes.
        probe("sethostname", libc::SYS_sethostname, &[BAD_PTR, 65], EPERM),
        probe("setdomainname", libc::SYS_setdomainname, &[BAD_PTR, 65], EPERM),
        probe("process_madvise", libc::SYS_process_madvise, &[NO_FD, 0, 0, 0, 0], EPERM),
        // READ_IMPLIES_EXEC; then the values Docker allows.
        probe(PERSONALITY, libc::SYS_personality, &[0x0040_0000], EPERM),
        probe("personality(PER_LINUX)", libc::SYS_personality, &[0], Allowed),
        probe("personality(PER_LINUX32)", libc::SYS_personality, &[8], Allowed),
        probe("personality(UNAME26)", libc::SYS_personality, &[0x2_0000], Allowed),
        probe("personality(UNAME26|PER_LINUX32)", libc::SYS_personality, &[0x2_0008], Allowed),
        probe("personality(query)", libc::SYS_personality, &[0xffff_ffff], Allowed),
        probe("socket(arg0 == 40)", libc::SYS_socket, &[40, STREAM, 0], EPERM),
        probe("socket(arg0 == 38)", libc::SYS_socket, &[38, STREAM, 0], EPERM),
        probe("socket(arg0 == 20)", libc::SYS_socket, &[20, STREAM, 0], EPERM),
        probe("socket(arg0 == 34)", libc::SYS_socket, &[34, STREAM, 0], EPERM),
        probe("socket(arg0 == 37)", libc::SYS_socket, &[37, STREAM, 0], EPERM),
        probe("socket(arg0 == 12)", libc::SYS_socket, &[12, STREAM, 0], EPERM),
        probe("socket(arg0 == 19)", libc::SYS_socket, &[19, STREAM, 0], EPERM),
        probe("socket(arg0 == 23)", libc::SYS_socket, &[23, STREAM, 0], EPERM),
        probe("socket(arg0 == 25)", libc::SYS_socket, &[25, STREAM, 0], EPERM),
        probe("socket(arg0 >= 46)", libc::SYS_socket, &[46, STREAM, 0], EPERM),
        probe("socket(arg0 >= 46)", libc::SYS_socket, &[0x7fff_ffff, STREAM, 0], EPERM),
        probe("socket(AF_UNIX)", libc::SYS_socket, &[1, STREAM, 0], Allowed),
        probe("socket(AF_INET)", libc::SYS_socket, &[2, STREAM, 0], Allowed),
        probe("socket(AF_NETLINK)", libc::SYS_socket, &[16, 3, 0], Allowed),
        probe("socket(AF_NFC)", libc::SYS_socket, &[39, STREAM, 0], Allowed),
        probe("socket(AF_KCM)", libc::SYS_socket, &[41, STREAM, 0], Allowed),
        probe("socket(AF_MCTP)", libc::SYS_socket, &[45, STREAM, 0], Allowed),
        // A NULL pair, should a call get through.
        probe("socketpair(arg0 == 40)", libc::SYS_socketpair, &[40, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 38)", libc::SYS_socketpair, &[38, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 20)", libc::SYS_socketpair, &[20, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 34)", libc::SYS_socketpair, &[34, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 37)", libc::SYS_socketpair, &[37, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 12)", libc::SYS_socketpair, &[12, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 19)", libc::SYS_socketpair, &[19, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 23)", libc::SYS_socketpair, &[23, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 == 25)", libc::SYS_socketpair, &[25, STREAM, 0, 0], EPERM),
        probe("socketpair(arg0 >= 46)", libc::SYS_socketpair, &[46, STREAM, 0, 0], EPERM),
        probe("socketpair(AF_UNIX)", libc::SYS_socketpair, &[1, STREAM, 0, 0], Allowed),
        // A bad path: nothing is made should a call get through.
        probe("mknod(arg1 & 61440 == 8192)", libc::SYS_mknod, &[BAD_PTR, 0o20600, 0], EPERM),
        probe("mknod(arg1 & 61440 == 24576)", libc::SYS_mknod, &[BAD_PTR, 0o60600, 0], EPERM),
        probe("mknodat(arg2 & 61440 == 8192)", libc::SYS_mknodat, &[NO_FD, BAD_PTR, 0o20600, 0], EPERM),
        probe("mknodat(arg2 & 61440 == 24576)", libc::SYS_mknodat, &[NO_FD, BAD_PTR, 0o60600, 0], EPERM),
        probe("mknod(FIFO)", libc::SYS_mknod, &[BAD_PTR, 0o10600, 0], Allowed),
        ns_clone("clone(arg0 & 131072 == 131072)", libc::CLONE_NEWNS),
        ns_clone("clone(arg0 & 33554432 == 33554432)", libc::CLONE_NEWCGROUP),
        ns_clone("clone(arg0 & 67108864 == 67108864)", libc::CLONE_NEWUTS),
        ns_clone("clone(arg0 & 134217728 == 134217728)", libc::CLONE_NEWIPC),
        ns_clone("clone(arg0 & 268435456 == 268435456)", libc::CLONE_NEWUSER),
        ns_clone("clone(arg0 & 536870912 == 536870912)", libc::CLONE_NEWPID),
        ns_clone("clone(arg0 & 1073741824 == 1073741824)", libc::CLONE_NEWNET),
        ns_clone("clone(arg0 & 128 == 128)", libc::CLONE_NEWTIME),
        probe("clone(SIGCHLD)", libc::SYS_clone, &[SIGCHLD, 0, 0, 0, 0], Allowed),
        probe("clone3", libc::SYS_clone3, &[0, 0], Refused(libc::ENOSYS)),
        probe("guard: mount_setattr #442", 442, &[NO_FD, BAD_PTR, 0, 0, 0], EPERM),
        probe("guard: quotactl_fd #443", 443, &[NO_FD, 0, 0, 0], EPERM),
        probe("guard: set_mempolicy_home_node #450", 450, &[0, 0, 0, 0], EPERM),
        probe("guard: lsm_get_self_attr #459", 459, &[0, 0, 0, 0], EPERM),
        probe("guard: lsm_set_self_attr #460", 460, &[0, 0, 0, 0], EPERM),
        probe("guard: lsm_list_modules #461", 461, &[0, 0, 0], EPERM),
        probe("guard: open_tree_attr #467", 467, &[NO_FD, BAD_PTR, 0, 0, 0], EPERM),
        // listns (6.19), and the last number below x32's bit.
        probe("guard: #470 and above", 470, &[0, 0, 0, 0], Refused(libc::ENOSYS)),
        probe("guard: #470 and above", 0x3fff_ffff, &[], Refused(libc::ENOSYS)),
    ];

    #[test]
    fn every_reviewed_rule_has_a_probe() {
        for (rule, action) in REVIEWED {
            if KILLS_TESTED_APART.contains(rule) {
                continue;
            }
            let probed = PROBES.iter().any(|p| {
                p.rule == *rule && matches!(p.verdict, Refused(e) if errno_name(e) == *action)
            });
            assert!(probed, "no probe calls {rule} expecting {action}");
        }
        for p in PROBES.iter().filter(|p| p.verdict != Allowed) {
            assert!(
                REVIEWED.iter().any(|(rule, _)| *rule == p.rule),
                "{} is not a reviewed rule",
                p.rule
            );
        }
    }

    /// What a filter installed before the policy answers for every probed syscall. For
    /// verdicts of equal precedence the kernel keeps the most recently installed filter's,
    /// so a probe sees the policy's errno where the policy refuses the call and SENTINEL
    /// where it lets it through: the answer is the policy's, not the kernel's permission
    /// check, whoever runs the test, and a call the policy wrongly allowed still never
    /// reaches the kernel.
    fn sentinel_program() -> SeccompProgram {
        use bpf::*;
        let mut nrs: Vec<u32> = PROBES.iter().map(|p| p.nr as u32).collect();
        nrs.sort_unstable();
        nrs.dedup();
        let n = u8::try_from(nrs.len()).expect("fewer than 256 probed syscalls");
        let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        let mut p = vec![ins(LD_W_ABS, 0, 0, NR)];
        for (i, nr) in nrs.iter().enumerate() {
            p.push(ins(JEQ_K, n - i as u8, 0, *nr));
        }
        p.push(ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
        p.push(ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | SENTINEL as u32));
        SeccompProgram { filters: vec![p] }
    }

    const SENTINEL: i32 = libc::ENOTRECOVERABLE;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Writes "index errno" and a newline to stdout with neither allocation nor locks, as
    /// a child between fork and exec must.
    fn report(index: usize, errno: i32) {
        fn decimal(out: &mut [u8], mut n: u32) -> usize {
            let mut digits = [0u8; 10];
            let mut k = 0;
            loop {
                digits[k] = b'0' + (n % 10) as u8;
                k += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for (o, d) in out.iter_mut().zip(digits[..k].iter().rev()) {
                *o = *d;
            }
            k
        }
        let mut line = [0u8; 24];
        let mut len = decimal(&mut line, index as u32);
        line[len] = b' ';
        len += 1;
        len += decimal(&mut line[len..], errno as u32);
        line[len] = b'\n';
        len += 1;
        // SAFETY: writes `len` initialised bytes of `line`.
        unsafe { libc::write(1, line.as_ptr().cast(), len) };
    }

    /// Reads `report`'s lines back: the index and the errno (0 for a success) of each call
    /// that misbehaved.
    fn reports(out: &std::process::Output) -> Vec<(usize, i32)> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (i, e) = l.split_once(' ').unwrap();
                (i.parse().unwrap(), e.parse().unwrap())
            })
            .collect()
    }

    fn describe(errno: i32) -> String {
        match errno {
            0 => "success".into(),
            SENTINEL => "let through".into(),
            e => std::io::Error::from_raw_os_error(e).to_string(),
        }
    }

    /// Calls every probe and reports those whose answer is not their verdict.
    fn call_probes() -> std::io::Result<()> {
        // SAFETY: setsid takes no arguments.
        unsafe { libc::setsid() };
        for (i, p) in PROBES.iter().enumerate() {
            let [a, b, c, d, e, f] = p.args;
            // SAFETY: under the sentinel no probed call reaches the kernel, and the
            // arguments would be harmless if one did (see Probe).
            let rc = unsafe { libc::syscall(p.nr, a, b, c, d, e, f) };
            if rc == 0 && p.nr == libc::SYS_clone {
                // SAFETY: the new process ends at once, touching nothing.
                unsafe { libc::_exit(0) };
            }
            let seen = if rc < 0 { errno() } else { 0 };
            let expected = match p.verdict {
                Refused(errno) => errno,
                Allowed => SENTINEL,
            };
            if seen != expected {
                report(i, seen);
            }
        }
        Ok(())
    }

    #[test]
    fn every_rule_refuses_its_calls_and_lets_the_rest_through() {
        let out = run_filtered_after(Some(sentinel_program()), call_probes, "true");
        assert!(out.status.success(), "{out:?}");
        let wrong: Vec<String> = reports(&out)
            .into_iter()
            .map(|(i, seen)| {
                let p = &PROBES[i];
                let expected = match p.verdict {
                    Refused(e) => describe(e),
                    Allowed => describe(SENTINEL),
                };
                format!(
                    "{} (nr {}, args {:?}): expected {expected}, got {}",
                    p.rule,
                    p.nr,
                    p.args,
                    describe(seen)
                )
            })
            .collect();
        assert!(wrong.is_empty(), "misbehaved:\n{}", wrong.join("\n"));
    }

    /// The calls `call_allowed_values` makes for real.
    const WORKS: &[&str] = &[
        "socket(AF_UNIX)",
        "socket(AF_INET)",
        "socket(AF_NETLINK)",
        "socketpair(AF_UNIX)",
        "personality(query)",
        "personality(PER_LINUX32)",
        "personality(PER_LINUX)",
        "clone(SIGCHLD)",
    ];

    fn call_allowed_values() -> std::io::Result<()> {
        let check = |i: usize, ok: bool| {
            if !ok {
                report(i, errno());
            }
        };
        for (i, (family, kind)) in [
            (libc::AF_UNIX, libc::SOCK_STREAM),
            (libc::AF_INET, libc::SOCK_DGRAM),
            (libc::AF_NETLINK, libc::SOCK_RAW),
        ]
        .into_iter()
        .enumerate()
        {
            // SAFETY: socket takes integers; the descriptor is closed at once.
            let fd = unsafe { libc::socket(family, kind, 0) };
            check(i, fd >= 0);
            // SAFETY: closes only the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        let mut pair = [-1; 2];
        // SAFETY: `pair` has room for the two descriptors, closed at once.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) };
        check(3, rc == 0);
        for fd in pair {
            // SAFETY: closes only the descriptors just opened.
            unsafe { libc::close(fd) };
        }
        // The child ends as it began, in PER_LINUX.
        for (i, persona) in [(4, 0xffff_ffff), (5, 8), (6, 0)] {
            // SAFETY: personality takes an integer.
            let rc = unsafe { libc::personality(persona) };
            check(i, rc >= 0);
        }
        // SAFETY: a fork-like clone with a null stack; the new process exits at once.
        let pid = unsafe { libc::syscall(libc::SYS_clone, SIGCHLD, 0, 0, 0, 0) };
        if pid == 0 {
            // SAFETY: _exit is async-signal-safe and ends the new process.
            unsafe { libc::_exit(0) };
        }
        let mut status = -1;
        if pid > 0 {
            // SAFETY: waits for the process just created, into a local.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        }
        check(7, pid > 0 && status == 0);
        Ok(())
    }

    #[test]
    fn what_the_argument_filters_allow_still_works() {
        let out = run_filtered(call_allowed_values, "true");
        assert!(out.status.success(), "{out:?}");
        let failed: Vec<String> = reports(&out)
            .into_iter()
            .map(|(i, e)| format!("{}: {}", WORKS[i], describe(e)))
            .collect();
        assert!(failed.is_empty(), "refused: {failed:?}");
    }
}
