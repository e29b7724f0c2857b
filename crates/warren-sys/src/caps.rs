//! Capabilities every sandboxed process is limited to.
//!
//! Root inside a sandbox keeps what ordinary package installs, file ownership changes and
//! dropping to another user need, and nothing that reaches the kernel's global state. The
//! set is Docker's default minus `CAP_NET_RAW` (raw sockets forge packets on the bridge)
//! and `CAP_MKNOD` (device nodes):
//!
//! | kept | why |
//! |---|---|
//! | `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_FSETID` | root owns its files |
//! | `CAP_KILL` | signal any process of the sandbox |
//! | `CAP_SETGID`, `CAP_SETUID` | `su`, `sudo`, daemons dropping privileges |
//! | `CAP_SETPCAP` | drop capabilities further |
//! | `CAP_NET_BIND_SERVICE` | listen on ports below 1024 |
//! | `CAP_SYS_CHROOT` | `chroot`, used by package builders |
//! | `CAP_AUDIT_WRITE` | `login`, `sshd` and PAM write audit records |
//! | `CAP_SETFCAP` | packages that install file capabilities |
//!
//! Everything else (`CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`, `CAP_NET_ADMIN`, `CAP_NET_RAW`,
//! `CAP_MKNOD`, `CAP_SYS_MODULE`, ...) is removed from the bounding, effective, permitted
//! and ambient sets, so no later exec can regain it. The inheritable set is emptied, as
//! runc does since CVE-2022-24769: it only matters to files with inheritable capabilities.
//!
//! The bounding set can only shrink while `CAP_SETPCAP` is effective, which a switch to a
//! non-root uid clears, so [`drop_to_kept`] must run before the identity change.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// The capabilities kept, by name, as published to users.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// The same set as a bit mask (bit n = capability number n, from <linux/capability.h>).
pub const KEPT_MASK: u64 = (1 << 0) // CHOWN
    | (1 << 1) // DAC_OVERRIDE
    | (1 << 3) // FOWNER
    | (1 << 4) // FSETID
    | (1 << 5) // KILL
    | (1 << 6) // SETGID
    | (1 << 7) // SETUID
    | (1 << 8) // SETPCAP
    | (1 << 10) // NET_BIND_SERVICE
    | (1 << 18) // SYS_CHROOT
    | (1 << 29) // AUDIT_WRITE
    | (1 << 31); // SETFCAP

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Set once every thread of this process has a bounding set within [`KEPT_MASK`] (see
/// [`limit_bounding_set`]): [`drop_to_kept`] then leaves the bounding set as it is, which
/// spares every process a sandbox starts some forty system calls.
static BOUNDING_KEPT: AtomicBool = AtomicBool::new(false);

/// Limits the bounding set of this process, while it has a single thread, to
/// [`KEPT_MASK`], for a process whose children are all to get no more (the agent): the
/// children's [`drop_to_kept`] then skips the bounding set. Its own effective and
/// permitted capabilities stay: the bounding set only bounds what an exec may gain.
///
/// The set is each thread's own, so a thread made before would keep the full one: with
/// more than one thread (or when the set cannot be limited) nothing is recorded, and each
/// child limits the set itself as before. True when it is recorded; once recorded (the
/// namespace backend's first process limits it as it starts), asked again, it reads
/// nothing and calls nothing.
pub fn limit_bounding_set() -> bool {
    if BOUNDING_KEPT.load(Ordering::Acquire) {
        return true;
    }
    let single = std::fs::read_dir("/proc/self/task").map(|d| d.count() == 1);
    matches!(single, Ok(true)) && limit_bounding_set_of_one_thread()
}

/// [`limit_bounding_set`] for a process its caller knows to have one thread (one just
/// cloned, which may stand where no /proc is). True when it is recorded.
pub fn limit_bounding_set_of_one_thread() -> bool {
    if drop_bounding().is_err() {
        return false;
    }
    BOUNDING_KEPT.store(true, Ordering::Release);
    true
}

/// Removes from the calling thread's bounding set every capability outside [`KEPT_MASK`].
/// Async-signal-safe: only `prctl`.
fn drop_bounding() -> io::Result<()> {
    for cap in 0..64 {
        if KEPT_MASK & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ takes a capability number and reads no memory.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if present < 0 {
            // EINVAL: past the last capability this kernel knows.
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(io::Error::last_os_error());
        }
        if present == 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and reads no memory.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Limits the calling thread to [`KEPT_MASK`] in every capability set. Never raises a
/// capability the caller lacks. Async-signal-safe: only `prctl`, `capget` and `capset`.
pub fn drop_to_kept() -> io::Result<()> {
    if !BOUNDING_KEPT.load(Ordering::Acquire) {
        drop_bounding()?;
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: a kernel with no ambient set (before 4.3, or gVisor's), so there is
        // nothing to clear.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }

    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 capget writes exactly two CapData structs, which `data` holds.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let kept = (KEPT_MASK >> (32 * i)) as u32;
        d.effective &= kept;
        d.permitted &= kept;
        d.inheritable = 0;
    }
    // SAFETY: version 3 capset reads exactly two CapData structs from `data`.
    if unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    fn status_field(status: &str, name: &str) -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    }

    #[test]
    fn kept_names_match_mask() {
        assert_eq!(KEPT_CAPABILITIES.len(), KEPT_MASK.count_ones() as usize);
    }

    /// Whether this process may limit a bounding set; says SKIPPED for `test` if not.
    fn may_limit(test: &str) -> bool {
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let may = status_field(&own, "CapEff:") & (1 << 8) != 0;
        if !may {
            warren_testkit::skip(test, "needs CAP_SETPCAP (run as root)");
        }
        may
    }

    /// `/proc/self/status` of a `cat` that dropped to the kept set before exec.
    fn status_of_a_dropped_child() -> String {
        let mut cmd = Command::new("/bin/cat");
        cmd.arg("/proc/self/status");
        // SAFETY: drop_to_kept is async-signal-safe.
        unsafe { cmd.pre_exec(drop_to_kept) };
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let status = String::from_utf8(out.stdout).unwrap();
        assert_eq!(status_field(&status, "CapBnd:"), KEPT_MASK);
        // cat runs as root without file capabilities: permitted comes from the bounding set.
        assert_eq!(status_field(&status, "CapEff:"), KEPT_MASK);
        assert_eq!(status_field(&status, "CapPrm:"), KEPT_MASK);
        status
    }

    #[test]
    fn child_keeps_only_the_safe_set() {
        if !may_limit("child_keeps_only_the_safe_set") {
            return;
        }
        let status = status_of_a_dropped_child();
        assert_eq!(status_field(&status, "CapInh:"), 0);
        assert_eq!(status_field(&status, "CapAmb:"), 0);
    }

    #[test]
    fn a_process_that_limits_its_bounding_set_starts_children_within_it() {
        if !may_limit("a_process_that_limits_its_bounding_set_starts_children_within_it") {
            return;
        }
        // Here, with the harness's threads, nothing is limited or recorded.
        assert!(!limit_bounding_set(), "more than one thread here");
        assert!(!BOUNDING_KEPT.load(Ordering::Acquire));
        crate::testing::in_a_forked_process(limited_in_one_thread);
    }

    /// In a process of one thread: the bounding set limited, its own capabilities kept,
    /// and a child that drops to the kept set within it.
    fn limited_in_one_thread() {
        let before = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(limit_bounding_set(), "{before}");
        assert!(BOUNDING_KEPT.load(Ordering::Acquire));
        // Asked again (the agent's `serve` after its first process's start): still true.
        assert!(limit_bounding_set());
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(status_field(&own, "CapBnd:"), KEPT_MASK);
        assert_eq!(
            status_field(&own, "CapEff:"),
            status_field(&before, "CapEff:")
        );
        status_of_a_dropped_child();
    }
}
