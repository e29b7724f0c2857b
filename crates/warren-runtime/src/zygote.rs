//! The zygote: one `warren __zygote` per daemon that forks each sandbox's helper.
//!
//! Started afresh, a helper pays for the exec of the whole `warren` binary: the dynamic
//! loader, about 30,000 relocations of a position-independent executable (which make
//! half a megabyte of the binary's pages private to that process, for the sandbox's
//! life) and the runtime's start. The zygote pays that once. It is single-threaded and
//! does nothing but wait on its socket (fd 0, a `SOCK_SEQPACKET` pair with the daemon)
//! for a request: a byte and two descriptors, the pipe a helper reads its configuration
//! from and the one it writes its status to. It forks; the child puts them on its
//! stdin and stdout, renames itself `warren __init` and becomes the helper as if
//! started so; the zygote answers the child's pid and reaps its children. Every helper
//! shares the zygote's relocated pages copy-on-write.
//!
//! The zygote exits when the daemon's end of the socket closes; helpers it forked live
//! on (as a helper the daemon started would), and a daemon started later adopts them.
//!
//! It reaps its children when told one has exited (`SIGCHLD` through a signalfd), not on
//! a timer: each `waitpid(-1)` looks at every child, and the zygote's children are every
//! running sandbox's helper.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    setsockopt, socketpair, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// The argument that starts the zygote.
pub const ARG: &str = "__zygote";

/// The daemon's side: the zygote process and the socket to it.
#[derive(Debug)]
pub(crate) struct Zygote {
    sock: OwnedFd,
    child: Child,
}

impl Zygote {
    /// Starts `exe __zygote`.
    pub(crate) fn start(exe: &Path) -> io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // A zygote that stopped answering must not hang a create.
        setsockopt(&ours, sockopt::ReceiveTimeout, &TimeVal::new(10, 0))
            .map_err(io::Error::from)?;
        let child = Command::new(exe)
            .arg(ARG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { sock: ours, child })
    }

    /// Has a helper forked that reads its configuration from `config` and writes its
    /// status to `status`, with the mount of a disk made ahead at
    /// [`crate::helper::PREPARED_DISK_FD`] when `disk` is given; its pid.
    ///
    /// A signal that interrupts the wait is not an answer: with a receive timeout set,
    /// the kernel never restarts `recv` after a handler ran (signal(7)), and the daemon's
    /// threads take `SIGCHLD` for the children it starts. A caller that gives up on an
    /// error must not hand the same descriptors to another zygote: this one may have
    /// forked a helper on them already.
    pub(crate) fn fork_helper(
        &self,
        config: BorrowedFd,
        status: BorrowedFd,
        disk: Option<BorrowedFd>,
    ) -> io::Result<i32> {
        let mut fds = vec![config, status];
        fds.extend(disk);
        loop {
            match warren_sys::fd::send_fds(self.sock.as_fd(), b'h', &fds) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        }
        let mut b = [0u8; 4];
        let n = loop {
            match nix::sys::socket::recv(self.sock.as_raw_fd(), &mut b, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(io::Error::from)?,
            }
        };
        match i32::from_le_bytes(b) {
            pid if n == 4 && pid > 0 => Ok(pid),
            _ => Err(io::Error::other("the zygote could not fork a helper")),
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Its socket closes with `sock`, after this: it exits at once.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// Entry point of `warren __zygote` (fd 0 is its socket). Never returns.
pub fn main() -> ! {
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    // The namespace every helper builds its sandbox in a copy of (see crate::shell), made
    // once by a thread that is gone before the first fork. Without it, each sandbox's
    // first process pivots out of a copy of the host's namespace.
    let shell = crate::shell::make()
        .map_err(|e| eprintln!("warren: no shell namespace for sandboxes ({e}): they pivot_root"))
        .ok();
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let exited = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None)
        .and_then(|()| SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let Ok(exited) = exited else {
        std::process::exit(1)
    };
    // Made and read here once, every helper forked after has them (a failure is the
    // helper's to report, as it tries again).
    let _ = warren_sys::seccomp::SeccompProgram::default_policy_shared();
    let _ = warren_sys::cgroup::Hierarchy::detect_shared();
    // Where the command line is, which each helper rewrites for itself and then for its
    // sandbox's first process: the same place in every process forked from this one.
    let _ = warren_sys::proctitle::ArgArea::own();
    loop {
        let mut fds = [
            PollFd::new(sock, PollFlags::POLLIN),
            PollFd::new(exited.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(1),
        }
        let [request, child] = fds.map(|f| f.revents().unwrap_or(PollFlags::empty()));
        if !child.is_empty() {
            // Signals of the same kind merge: one read may stand for many exits.
            while let Ok(Some(_)) = exited.read_signal() {}
            reap();
        }
        if request.is_empty() {
            continue;
        }
        let pid = match warren_sys::fd::recv_fds(sock) {
            // The daemon is gone.
            Ok(None) => std::process::exit(0),
            Ok(Some(fds)) => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next(), fds.next(), fds.next()) {
                    (Some(config), Some(status), disk, None) => {
                        fork_one(config, status, disk, &chld, shell.as_ref())
                    }
                    _ => -1,
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => std::process::exit(1),
        };
        if nix::sys::socket::send(sock.as_raw_fd(), &pid.to_le_bytes(), MsgFlags::MSG_NOSIGNAL)
            .is_err()
        {
            std::process::exit(0);
        }
    }
}

/// Forks a helper on `config` and `status` (and `disk`, see [`Zygote::fork_helper`]),
/// which builds its sandbox from a copy of `shell`; its pid, or -1.
fn fork_one(
    config: OwnedFd,
    status: OwnedFd,
    disk: Option<OwnedFd>,
    chld: &SigSet,
    shell: Option<&OwnedFd>,
) -> i32 {
    match warren_sys::ns::fork_process() {
        Ok(warren_sys::ns::Forked::Child) => {
            // Its copy first, numbered above the descriptors placed below (the zygote's
            // own may be one of those numbers).
            let shell = shell.and_then(|s| {
                warren_sys::fd::dup_at_least(s.as_fd(), crate::helper::PREPARED_DISK_FD + 1).ok()
            });
            // A helper starts with the signal mask a helper started afresh has (it blocks
            // what it waits for itself); the signalfd goes with the inherited descriptors.
            if nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(chld), None).is_err() {
                std::process::exit(1);
            }
            // The request's descriptors become stdin and stdout (the socket's copy on
            // fd 0 goes), and the process is named as a helper started afresh is.
            if nix::unistd::dup2(config.as_raw_fd(), 0).is_err()
                || nix::unistd::dup2(status.as_raw_fd(), 1).is_err()
            {
                std::process::exit(1);
            }
            drop(config);
            drop(status);
            // Its originals are gone: the disk's number cannot be one of theirs.
            if let Some(d) = disk {
                use std::os::fd::IntoRawFd;
                let at = crate::helper::PREPARED_DISK_FD;
                if d.as_raw_fd() == at {
                    let _ = d.into_raw_fd();
                } else if nix::unistd::dup2(d.as_raw_fd(), at).is_err() {
                    std::process::exit(1);
                }
            }
            let exe = std::env::args().next().unwrap_or_default();
            let _ = warren_sys::proctitle::set(&format!("{exe}\0{}", crate::helper::ARG));
            crate::helper::main(shell)
        }
        Ok(warren_sys::ns::Forked::Parent(pid)) => pid.as_raw(),
        Err(_) => -1,
    }
}

/// Reaps the helpers that have exited.
fn reap() {
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(s, WaitStatus::StillAlive) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::pthread::{pthread_kill, pthread_self};

    use super::*;

    #[test]
    fn a_signal_during_the_wait_is_not_an_answer() {
        // The daemon's side of a zygote's socket, the test playing the zygote: it answers
        // late, and meanwhile a signal that has a handler (the one tokio installs for
        // `SIGUSR2`, with SA_RESTART) interrupts the wait for the answer.
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        setsockopt(&ours, sockopt::ReceiveTimeout, &TimeVal::new(10, 0)).unwrap();
        let zygote = Zygote {
            sock: ours,
            child: Command::new("true").spawn().unwrap(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _handled = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
        });
        let fake = std::thread::spawn(move || {
            let fds = warren_sys::fd::recv_fds(theirs.as_fd()).unwrap().unwrap();
            assert_eq!(fds.len(), 2);
            std::thread::sleep(Duration::from_millis(300));
            nix::sys::socket::send(
                theirs.as_raw_fd(),
                &4242i32.to_le_bytes(),
                MsgFlags::empty(),
            )
            .unwrap();
        });
        let waiter = pthread_self();
        let signaller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            pthread_kill(waiter, Signal::SIGUSR2).unwrap();
        });
        let (config, status) = nix::unistd::pipe().unwrap();
        let pid = zygote.fork_helper(config.as_fd(), status.as_fd(), None);
        signaller.join().unwrap();
        fake.join().unwrap();
        assert_eq!(pid.unwrap(), 4242);
    }
}
