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
//! Three BPF programs are installed, all of which the kernel runs on every syscall:
//!
//! - `main` (from the JSON): the `EPERM` list, including `clone` with namespace flags,
//!   `personality` outside the values Docker allows, and `socket` and `socketpair` for the
//!   address families Docker refuses.
//! - `clone3` (from the JSON): `ENOSYS`, because clone3's flags sit in user memory that
//!   a filter cannot inspect; libc then falls back to `clone`, which `main` checks.
//!   seccompiler gives one action per filter, hence a filter of its own.
//! - a guard built here: kills the process for a foreign architecture or an x32 syscall
//!   number (x32 shares x86-64's audit arch, so without it every rule above could be
//!   bypassed by setting bit 30 of the syscall number), and refuses the syscalls that
//!   seccompiler 0.4's table cannot name.
//!
//! Installing only copies a prepared program into the kernel, so it is async-signal-safe
//! and can run between fork and exec.

use seccompiler::{sock_filter, BpfProgram};

/// Why the policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the seccomp policy")]
    Compile(#[from] seccompiler::Error),
    #[error("seccomp policy has no filter named {0}")]
    MissingFilter(&'static str),
    #[error("no seccomp policy for architecture {0}")]
    UnsupportedArch(&'static str),
}

const DEFAULT_POLICY: &str = include_str!("../seccomp/default.json");

/// Syscalls missing from seccompiler 0.4's x86-64 table, refused with `EPERM` by the guard.
/// The reasons are those of their relatives in `default.json`.
#[cfg(target_arch = "x86_64")]
const UNNAMED_EPERM: &[(&str, u32)] = &[
    // The mount API, as mount and open_tree; quotactl_fd as quotactl.
    ("mount_setattr", 442),
    ("quotactl_fd", 443),
    ("open_tree_attr", 467),
    // NUMA placement, as mbind.
    ("set_mempolicy_home_node", 450),
    // A process's own LSM attributes; Docker refuses them, and /proc/self/attr remains
    // for the programs that read them.
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
];

/// A compiled policy, ready to install in a child.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    /// Installed in order; the kernel applies the strictest verdict of all of them.
    filters: Vec<BpfProgram>,
}

impl SeccompProgram {
    /// Compiles `seccomp/default.json` for this machine. Compile once and share the result:
    /// it is immutable.
    #[cfg(target_arch = "x86_64")]
    pub fn default_policy() -> Result<Self, SeccompError> {
        let mut map = seccompiler::compile_from_json(
            DEFAULT_POLICY.as_bytes(),
            seccompiler::TargetArch::x86_64,
        )?;
        let mut take =
            |name: &'static str| map.remove(name).ok_or(SeccompError::MissingFilter(name));
        let main = take("main")?;
        let clone3 = take("clone3")?;
        Ok(Self {
            filters: vec![guard_program(), main, clone3],
        })
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
                    0,
                    &prog as *const SockFprog,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
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

#[cfg(target_arch = "x86_64")]
fn guard_program() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // Offsets in struct seccomp_data.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let n = UNNAMED_EPERM.len() as u8;
    let mut p = vec![
        ins(LD_W_ABS, 0, 0, ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, NR),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    // Each match jumps over the remaining comparisons and the ALLOW to the EPERM.
    for (i, (_, nr)) in UNNAMED_EPERM.iter().enumerate() {
        p.push(ins(JEQ_K, n - i as u8, 0, *nr));
    }
    p.push(ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    p.push(ins(
        RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ));
    p
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use super::*;

    fn run_filtered(
        f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
        sh: &str,
    ) -> std::process::Output {
        let policy = Arc::new(SeccompProgram::default_policy().unwrap());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", sh]).stdin(Stdio::null());
        let mut f = f;
        // SAFETY: the hook only makes async-signal-safe syscalls (prctl, seccomp) and
        // whatever the test's own closure does, which is equally restricted.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
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
        assert_eq!(p.filters.len(), 3);
        assert!(p
            .filters
            .iter()
            .all(|f| !f.is_empty() && f.len() < u16::MAX as usize));
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
}
