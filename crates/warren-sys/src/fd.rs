//! Descriptors a process must not hand on.
//!
//! Whatever starts Warren (a shell, a service manager, a test) may leave descriptors
//! open without close-on-exec: a directory, a pipe, a socket. Inherited by a sandbox's
//! processes, a directory descriptor is a way out of every namespace (`/proc/self/fd/N/..`
//! reaches the host's filesystem) and a pipe or socket talks to the host. So the helper
//! closes everything it did not open itself, the agent keeps only its listener, and the
//! daemon and CLI mark what they inherited close-on-exec before they start anything.

use std::io;
use std::os::fd::RawFd;

/// The highest descriptor number there can be: descriptors are `int`s. close_range(2)
/// is given this, not `u32::MAX`, as the end of "every descriptor from here up": Linux
/// takes either, gVisor's refuses a range whose end is negative as an `int` (`EINVAL`).
const LAST_FD: u32 = i32::MAX as u32;

/// close_range(2) over `first..=last` with `flags`. Async-signal-safe.
fn close_range(first: u32, last: u32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches only this process's table.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Most descriptors [`close_all_except`] can keep.
pub const MAX_KEPT: usize = 16;

/// Closes every descriptor from 3 up except those in `keep` (at most [`MAX_KEPT`]).
/// Standard input, output and error are the caller's to redirect. Async-signal-safe: it
/// allocates nothing.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    if keep.len() > MAX_KEPT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors to keep",
        ));
    }
    let mut sorted = [u32::MAX; MAX_KEPT];
    let mut n = 0;
    for fd in keep.iter().filter(|fd| **fd >= 3) {
        sorted[n] = *fd as u32;
        n += 1;
    }
    let sorted = &mut sorted[..n];
    sorted.sort_unstable();
    let mut from = 3u32;
    for &k in sorted.iter().chain(std::iter::once(&u32::MAX)) {
        if k > from {
            let last = if k == u32::MAX { LAST_FD } else { k - 1 };
            close_between(from, last)?;
        }
        from = k.saturating_add(1);
    }
    Ok(())
}

fn close_between(first: u32, last: u32) -> io::Result<()> {
    match close_range(first, last, 0) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            // An older kernel: close one by one what /proc lists.
            close_listed(first, last)
        }
        other => other,
    }
}

/// Closes the descriptors from `first` to `last` that /proc/self/fd lists
/// (async-signal-safe, as [`for_each_listed`]).
fn close_listed(first: u32, last: u32) -> io::Result<()> {
    for_each_listed(first, |fd| {
        if fd as u32 <= last {
            let _ = nix::unistd::close(fd);
        }
        Ok(())
    })
    .map(|_| ())
}

/// Marks every descriptor from `first` up close-on-exec, without closing any: one still
/// needed before an exec (std's error pipe) keeps working. Async-signal-safe: fit for
/// the moment between fork and exec.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    let first = first.max(0) as u32;
    match close_range(first, LAST_FD, libc::CLOSE_RANGE_CLOEXEC) {
        // Kernels before 5.11 know close_range without the flag, before 5.9 not at all.
        // (Not /proc/self/fd first: under gVisor each process that opens its own /proc
        // directory leaves some 1,600 objects in the Sentry's kernel, which every later
        // checkpoint of the sandbox saves, the process long gone.)
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            match cloexec_listed(first)? {
                true => Ok(()),
                false => cloexec_each(first),
            }
        }
        other => other,
    }
}

/// [`cloexec_from`] over the descriptors /proc/self/fd lists; false, having done nothing,
/// when that directory cannot be opened. A few calls per descriptor open, where
/// [`cloexec_each`] makes two per number up to the limit: under gVisor, where every
/// system call is a trip to its kernel, a thousand of them cost an exec some 20 ms.
pub(crate) fn cloexec_listed(first: u32) -> io::Result<bool> {
    for_each_listed(first, mark_cloexec)
}

/// Calls `each` with every descriptor from `first` up that /proc/self/fd lists, read
/// with raw `getdents64` into a buffer on the stack (async-signal-safe when `each` is);
/// false, having done nothing, when that directory cannot be opened. `each` may close
/// the descriptor it is given: the directory is read by number, on from the last one.
fn for_each_listed(first: u32, mut each: impl FnMut(RawFd) -> io::Result<()>) -> io::Result<bool> {
    // SAFETY: open reads a NUL-terminated literal.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Ok(false);
    }
    let r = walk_listed(dir, first, &mut each);
    // SAFETY: closes the descriptor opened above, which nothing else uses.
    unsafe { libc::close(dir) };
    r.map(|()| true)
}

/// The loop of [`for_each_listed`] over the open directory `dir`.
fn walk_listed(
    dir: RawFd,
    first: u32,
    each: &mut impl FnMut(RawFd) -> io::Result<()>,
) -> io::Result<()> {
    // u64s: `struct linux_dirent64` is 8-byte aligned.
    let mut buf = [0u64; 512];
    loop {
        // SAFETY: getdents64 writes at most the buffer's length into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the first `n` bytes of `buf` were just written, and `n` is at most its
        // size in bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut at = 0;
        while at + 19 < bytes.len() {
            // d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name (NUL-terminated).
            let reclen = usize::from(u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]));
            if reclen == 0 || at + reclen > bytes.len() {
                break;
            }
            let name = &bytes[at + 19..at + reclen];
            let fd = name
                .iter()
                .take_while(|b| **b != 0)
                .try_fold(0u32, |n, b| match b {
                    b'0'..=b'9' => n.checked_mul(10)?.checked_add(u32::from(b - b'0')),
                    _ => None,
                });
            at += reclen;
            let Some(fd) = fd.filter(|fd| *fd >= first && *fd as RawFd != dir) else {
                continue;
            };
            each(fd as RawFd)?;
        }
    }
}

/// Marks `fd` close-on-exec if it is open and not marked yet; one that is not open is
/// no error. Async-signal-safe.
fn mark_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD takes no argument; a descriptor not open fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFD takes an int of flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The slow way of [`cloexec_from`]: one descriptor at a time, up to the soft limit (no
/// descriptor can be open at or above it), capped so that a huge limit does not make
/// every spawn take seconds.
pub(crate) fn cloexec_each(first: u32) -> io::Result<()> {
    const MAX_SCANNED: libc::rlim_t = 65536;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = limit.rlim_cur.min(MAX_SCANNED) as RawFd;
    for fd in first as RawFd..end {
        mark_cloexec(fd)?;
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard one and returns it. A daemon
/// that serves many clients needs the room, and only the hard limit is a decision of
/// whoever started it; the soft one is a default for programs that never ask.
///
/// A hard limit above what the kernel allows a process (`fs.nr_open`) cannot be the soft
/// one; the soft limit then stays, and is what is returned.
pub fn raise_open_files_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(_) => Ok(soft),
    }
}

/// Sends one message of `byte` carrying `fds` (SCM_RIGHTS) on the Unix socket `sock`.
pub fn send_fds(
    sock: std::os::fd::BorrowedFd,
    byte: u8,
    fds: &[std::os::fd::BorrowedFd],
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[io::IoSlice::new(&[byte])],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one message sent by [`send_fds`] on `sock`: the descriptors it carried (at
/// most [`MAX_RECEIVED`], each close-on-exec), or `None` when the peer has closed.
pub fn recv_fds(sock: std::os::fd::BorrowedFd) -> io::Result<Option<Vec<std::os::fd::OwnedFd>>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; MAX_RECEIVED]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed each of these descriptors in this process for
            // this message; nothing else refers to them.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(fds))
}

/// Most descriptors [`recv_fds`] takes from one message.
pub const MAX_RECEIVED: usize = 4;

/// A close-on-exec copy of `fd` numbered `min` or above: out of the way of descriptors
/// about to be placed at fixed numbers below `min`.
pub fn dup_at_least(fd: std::os::fd::BorrowedFd, min: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let raw = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))
        .map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}

/// Takes the descriptor a parent placed at `fd` for this process before it started
/// (once, at start: nothing else in the process may own that number), moved above the
/// standard three and close-on-exec.
pub fn take_inherited(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let moved = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl just made `moved`, a new descriptor nothing else refers to.
    let owned = unsafe { OwnedFd::from_raw_fd(moved) };
    nix::unistd::close(fd)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn descriptors_travel_over_a_socket_and_the_end_is_seen() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_fds(a.as_fd(), b'x', &[r.as_fd(), w.as_fd()]).unwrap();
        drop((r, w));
        let got = recv_fds(b.as_fd()).unwrap().unwrap();
        assert_eq!(got.len(), 2);
        // The same pipe, through the copies that arrived.
        let mut it = got.into_iter();
        let (mut r, mut w) = (
            std::fs::File::from(it.next().unwrap()),
            std::fs::File::from(it.next().unwrap()),
        );
        w.write_all(b"hi").unwrap();
        drop(w);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
        drop(a);
        assert!(recv_fds(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(1024), hard).unwrap();
        let now = raise_open_files_limit().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (now, hard));
        assert!(now == hard || hard == libc::RLIM_INFINITY);
    }

    #[test]
    fn everything_but_what_is_kept_is_closed_in_a_child() {
        // In a child process: the test harness's own descriptors must not be closed.
        let (a, b) = nix::unistd::pipe().unwrap();
        let (a, b) = (a.into_raw_fd(), b.into_raw_fd());
        let dir = std::fs::File::open("/").unwrap().into_raw_fd();
        in_child(|| close_all_except(&[b]).is_ok() && !is_open(a) && is_open(b) && !is_open(dir));
        for fd in [a, b, dir] {
            let _ = nix::unistd::close(fd);
        }
    }

    #[test]
    fn marked_descriptors_do_not_survive_exec() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let raw = r.as_raw_fd();
        in_child(|| {
            let _ = cloexec_from(3);
            is_cloexec(raw)
        });
        drop((r, w));
    }

    /// Runs `check` in a child with a pipe open (`low`, `high`) and a copy of it numbered
    /// far above the others (`far`), as a scan up to the limit finds.
    fn with_listed_fds(check: impl FnOnce(RawFd, RawFd, RawFd) -> bool) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (low, high) = (r.as_raw_fd(), w.as_raw_fd());
        // SAFETY: F_DUPFD takes the lowest number by value; the copy is closed below.
        let far = unsafe { libc::fcntl(low, libc::F_DUPFD, 900) };
        assert!(far >= 900);
        in_child(|| check(low, high, far));
        let _ = nix::unistd::close(far);
        drop((r, w));
    }

    #[test]
    fn the_listed_way_marks_what_proc_lists_and_only_from_first() {
        with_listed_fds(|low, high, far| {
            cloexec_listed(high as u32).unwrap_or(false)
                && !is_cloexec(low)
                && is_cloexec(high)
                && is_cloexec(far)
                && !is_cloexec(0)
        });
    }

    #[test]
    fn the_listed_way_closes_what_proc_lists_from_first_to_last() {
        with_listed_fds(|low, high, far| {
            close_listed(high as u32, far as u32 - 1).is_ok()
                && is_open(low)
                && !is_open(high)
                && is_open(far)
        });
        with_listed_fds(|low, high, far| {
            close_listed(high as u32, u32::MAX).is_ok()
                && is_open(low)
                && !is_open(high)
                && !is_open(far)
        });
    }

    fn is_cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    }

    /// Runs `check` in a forked child (the test harness's own descriptors must not be
    /// touched) and asserts that it held there.
    fn in_child(check: impl FnOnce() -> bool) {
        // SAFETY: the children of these tests make only plain syscalls (close_range,
        // open, getdents64, fcntl) and exit; they take no lock another thread of the
        // harness could hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let ok = check();
            // SAFETY: _exit ends the forked child at once, running nothing of the
            // parent's.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        let pid = nix::unistd::Pid::from_raw(pid);
        assert_eq!(
            nix::sys::wait::waitpid(pid, None).unwrap(),
            nix::sys::wait::WaitStatus::Exited(pid, 0)
        );
    }
}
