//! What a sandboxed process's child does between fork and exec.
//!
//! After `fork` in a multi-threaded parent only async-signal-safe calls are sound (another
//! thread may have held the allocator's lock), so [`prepare`] does every allocation up
//! front and the hook it installs makes plain syscalls on prepared data. A failing step
//! returns its `io::Error` from the hook, which std turns into an error from `spawn`: a
//! process never starts half-confined.
//!
//! The steps run in this order, each for a reason:
//!
//! 1. `setsid`: a new session and process group, so a timeout or a disconnect can kill
//!    the whole group, and so a terminal can become the controlling one.
//! 2. The terminal (if any) becomes the controlling terminal and stdin/stdout/stderr.
//! 3. Every descriptor above 2 becomes close-on-exec: the agent's sockets, other
//!    processes' pipes and whatever a library left inheritable must not leak into tenant
//!    code. std's own exec-error pipe is close-on-exec already, so marking it again
//!    changes nothing.
//! 4. The signal mask and dispositions are reset: the agent's handlers and masks are its
//!    own business, and an ignored signal would survive exec.
//! 5. Capabilities drop to [`crate::caps`]'s set, before the uid changes, because the
//!    bounding set can only shrink while `CAP_SETPCAP` is effective.
//! 6. Groups, gid, then uid (the uid last: it takes the right to change the others).
//! 7. `no_new_privs`, so setuid binaries and file capabilities cannot undo steps 5-6, and
//!    so an unprivileged process may install seccomp.
//! 8. seccomp, so the filter never has to allow the setup above.
//! 9. Only now the child becomes dumpable and raises `oom_score_adj` to 1000: when a
//!    sandbox runs out of memory the OOM killer must pick a sandboxed process, never the
//!    agent, which reports the kill. (Lowering the agent's own score would need
//!    CAP_SYS_RESOURCE, which hosts may withhold; raising a score needs nothing.)
//!
//! A template that carries setuid programs it trusts (a distribution's `sudo`) asks for
//! [`ChildSetup::allow_setuid`]: then step 7 is left out, so a setuid program can raise
//! its process to the sandbox's root and no further (the bounding set of step 5 and the
//! filter stay), and the filter is installed first, before step 5, while the child still
//! holds `CAP_SYS_ADMIN` in the sandbox's user namespace, which installing a filter
//! without `no_new_privs` needs. The steps after it are ones the filter allows.
//!
//! Step 9 is last because dumpability is what lets other processes of the same uid
//! reach this one: a dumpable process can be ptraced, and its `/proc/PID/mem` written,
//! by the sandbox's root. A child forked from the agent is non-dumpable, like the agent,
//! and must stay so until nothing it still runs could be worth hijacking: a process
//! stopped and rewritten before step 8 would run the attacker's code with the agent's
//! capabilities and without seccomp. After the uid change `/proc/self/oom_score_adj`
//! belongs to the new uid once the process is dumpable, so the unprivileged child can
//! still write it. What remains reachable until exec is a process confined exactly as
//! the program it is about to run.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use crate::seccomp::SeccompProgram;

/// Who a child becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; empty leaves none.
    pub groups: Vec<u32>,
}

/// Everything a child sets up before exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// A pseudo-terminal slave that becomes the controlling terminal and fds 0-2.
    pub tty: Option<OwnedFd>,
    /// Raise `oom_score_adj` to 1000, making the process the OOM killer's first choice
    /// (see the module doc).
    pub oom_victim: bool,
    pub identity: Option<Identity>,
    /// Limit capabilities to [`crate::caps::KEPT_MASK`].
    pub drop_caps: bool,
    pub seccomp: Option<Arc<SeccompProgram>>,
    /// Leave `no_new_privs` unset so setuid programs work (see the module doc).
    pub allow_setuid: bool,
}

/// Installs `setup` to run in the child of `cmd`. Stdio configured on `cmd` is replaced
/// when `setup.tty` is set. The setup (including the terminal fd) lives as long as `cmd`:
/// drop `cmd` after spawning so the parent's copy of the slave closes.
pub fn prepare(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        tty,
        oom_victim,
        identity,
        drop_caps,
        seccomp,
        allow_setuid,
    } = setup;
    // std sets up stdio in the child before the hook runs, so a slave numbered 0-2 (an
    // agent started with those closed) would be overwritten; move it out of the way.
    let tty = tty.map(|fd| match fd.as_raw_fd() {
        0..=2 => fd.try_clone().unwrap_or(fd),
        _ => fd,
    });
    let hook = move || -> io::Result<()> {
        // SAFETY: setsid takes no arguments.
        check(unsafe { libc::setsid() })?;
        if let Some(fd) = &tty {
            let fd = fd.as_raw_fd();
            // SAFETY: TIOCSCTTY takes an int by value; `fd` is an open terminal owned by
            // the hook.
            check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) })?;
            for target in 0..3 {
                // SAFETY: dup2 on an open descriptor; it replaces 0-2 in this child only.
                check(unsafe { libc::dup2(fd, target) })?;
            }
        }
        crate::fd::cloexec_from(3)?;
        reset_signals()?;
        if allow_setuid {
            if let Some(filter) = &seccomp {
                filter.install()?;
            }
        }
        if drop_caps {
            crate::caps::drop_to_kept()?;
        }
        if let Some(id) = &identity {
            // SAFETY: the pointer and length describe `id.groups`, alive for the hook.
            check(unsafe { libc::setgroups(id.groups.len(), id.groups.as_ptr()) })?;
            // SAFETY: setgid and setuid take plain integers.
            check(unsafe { libc::setgid(id.gid) })?;
            // SAFETY: as above.
            check(unsafe { libc::setuid(id.uid) })?;
        }
        if !allow_setuid {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
            if let Some(filter) = &seccomp {
                filter.install()?;
            }
        }
        if oom_victim {
            // The agent is non-dumpable and a fork inherits that, which makes /proc/self
            // belong to global root, unwritable for the sandbox's own root or user. exec
            // resets dumpability from the credentials anyway.
            // SAFETY: PR_SET_DUMPABLE takes integers only.
            check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })?;
            write_oom_score_adj_max()?;
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls on data prepared before the
    // fork (no allocation, no locks), as pre_exec requires.
    unsafe { cmd.pre_exec(hook) };
}

/// Makes the calling process non-dumpable: no core dumps, and its /proc files and memory
/// become root-only, so a sandboxed process cannot inspect the agent.
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes integers only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn reset_signals() -> io::Result<()> {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero sigaction is SIG_DFL with no flags and an empty mask.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = libc::SIG_DFL;
        // SAFETY: `act` is a valid sigaction; the old action is not requested. Errors are
        // ignored: libc reserves a few real-time signals and refuses to touch them.
        unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
    }
    // SAFETY: sigemptyset initialises the set it is given.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; the old mask is not requested.
    check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) })?;
    Ok(())
}

fn write_oom_score_adj_max() -> io::Result<()> {
    // SAFETY: the path is a NUL-terminated literal.
    let fd = check(unsafe {
        libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    })?;
    const MAX: &[u8] = b"1000";
    // SAFETY: writes from a static buffer, of its length, to the descriptor just opened.
    let written = unsafe { libc::write(fd, MAX.as_ptr().cast(), MAX.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, which nothing else uses.
    unsafe { libc::close(fd) };
    if written != MAX.len() as isize {
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::process::Stdio;

    use super::*;
    use crate::pty::{self, TermSize};

    #[test]
    fn child_gets_new_session_and_is_the_oom_victim() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "cat /proc/self/oom_score_adj; ps -o sid= -o pgid= -p $$ 2>/dev/null || cut -d' ' -f5,6 /proc/$$/stat; echo $$"]);
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        prepare(
            &mut cmd,
            ChildSetup {
                oom_victim: true,
                ..Default::default()
            },
        );
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1000");
        let pid = lines[2].trim();
        let ids: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(ids, [pid, pid], "session and group led by the child");
    }

    #[test]
    fn child_runs_on_its_terminal() {
        let pty = pty::open(TermSize { rows: 33, cols: 77 }).unwrap();
        let master = pty.master;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "stty size; test -t 0 && echo tty"]);
        prepare(
            &mut cmd,
            ChildSetup {
                tty: Some(pty.slave),
                ..Default::default()
            },
        );
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        let status = child.wait().unwrap();
        assert!(status.success());
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        // The child and our copy of the slave are gone: the master reads what is left,
        // then EIO.
        while let Ok(n) = nix::unistd::read(master.as_fd().as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("33 77"), "{text:?}");
        assert!(text.contains("tty"), "{text:?}");
    }

    #[test]
    fn unprivileged_child_is_confined_and_still_the_oom_victim() {
        const TEST: &str = "unprivileged_child_is_confined_and_still_the_oom_victim";
        if !warren_testkit::needs_root(TEST, "changing to another uid") {
            return;
        }
        let seccomp = match SeccompProgram::default_policy() {
            Ok(p) => Arc::new(p),
            Err(e) => {
                warren_testkit::skip(TEST, &format!("no seccomp policy here: {e}"));
                return;
            }
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; cat /proc/self/oom_score_adj",
        ]);
        cmd.current_dir("/")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        prepare(
            &mut cmd,
            ChildSetup {
                oom_victim: true,
                identity: Some(Identity {
                    uid: 1000,
                    gid: 1000,
                    groups: vec![1000],
                }),
                drop_caps: true,
                seccomp: Some(seccomp),
                ..Default::default()
            },
        );
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            fields,
            [
                vec!["1000"],
                vec!["NoNewPrivs:", "1"],
                vec!["Seccomp:", "2"],
                vec!["1000"],
            ],
            "{text}"
        );
    }

    /// The descriptors `/bin/ls` finds open in itself, while `parent_fd` is open here
    /// without close-on-exec.
    fn inherited(parent_fd: libc::c_int, hook: Option<fn() -> io::Result<()>>) -> Vec<String> {
        let mut cmd = Command::new("/bin/ls");
        cmd.arg("/proc/self/fd")
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        match hook {
            // SAFETY: the hooks given make only async-signal-safe syscalls.
            Some(hook) => unsafe {
                cmd.pre_exec(hook);
            },
            None => prepare(&mut cmd, ChildSetup::default()),
        }
        // SAFETY: F_GETFD takes no argument.
        let flags = unsafe { libc::fcntl(parent_fd, libc::F_GETFD) };
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            0,
            "the test descriptor is inheritable"
        );
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn only_stdio_is_inherited() {
        // nix's pipe() does not set close-on-exec, like a library that forgot to.
        let (r, w) = nix::unistd::pipe().unwrap();
        // ls lists 0-2 and the descriptor it reads the listing through, the lowest free.
        assert_eq!(inherited(r.as_raw_fd(), None), ["0", "1", "2", "3"]);
        drop(w);
    }

    #[test]
    fn the_slow_path_marks_descriptors_too() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            inherited(w.as_raw_fd(), Some(|| crate::fd::cloexec_each(3))),
            ["0", "1", "2", "3"]
        );
        drop(r);
    }

    #[test]
    fn failing_setup_is_a_spawn_error() {
        let mut cmd = Command::new("/bin/true");
        // No such descriptor: TIOCSCTTY fails in the child.
        let bogus = std::fs::File::open("/dev/null").unwrap();
        prepare(
            &mut cmd,
            ChildSetup {
                tty: Some(bogus.into()),
                ..Default::default()
            },
        );
        assert!(cmd.spawn().is_err());
    }
}
