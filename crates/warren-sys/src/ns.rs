//! Namespaces and process creation for the sandbox helper.
//!
//! The helper that calls these is single-threaded by design: `clone_process` forks it, and
//! forking is only sound when no other thread can hold a lock the child would need.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

pub use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Namespaces a sandbox's first process is cloned into (user, pid, uts, ipc). The
/// mount namespace is made by the child itself once it stands in its root (see
/// `unshare`: the copy it gets follows its working directory), the cgroup namespace
/// once it sits in its own cgroup, and the network namespace, the costliest of all to
/// make, by a task of the child's own while both go on ([`NetnsBeside`]).
pub fn sandbox_flags() -> CloneFlags {
    CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
}

/// A network namespace being made beside the caller's own work, for the caller to enter
/// when it needs it ([`NetnsBeside::enter`]).
///
/// The kernel makes a network namespace in the context of the task that asks for it,
/// running every network subsystem's set-up for it: about two thirds of a sandbox's
/// namespaces' cost. Asked for by a thread of this process's own (a namespace is a
/// task's, not a process's), it is made on another CPU while this thread goes on. A
/// thread rather than a process sharing this memory: the kernel marks a memory that a
/// second process shares for good, and from then on every write of an OOM score of a
/// process of it walks every process on the host (the agent's, at every exec: see
/// `crate::child`). The maker brings its loopback up and leaves a descriptor of it in the shared
/// table (from a socket of the namespace, `SIOCGSKNS`: no `/proc`, no ptrace check,
/// which a process that changed its ids would fail); the namespace belongs to the
/// caller's user namespace, as one the caller made itself would.
pub struct NetnsBeside {
    /// Until it has ended: what the maker shares with this thread.
    maker: Option<Box<Maker>>,
    stack: Option<crate::child::Stack>,
}

/// What the maker thread and its creator share.
#[derive(Debug)]
struct Maker {
    /// The maker's thread id, which the kernel clears (and wakes a futex waiter on) once
    /// the thread has ended (`CLONE_CHILD_CLEARTID`).
    tid: std::sync::atomic::AtomicI32,
    /// The namespace's descriptor, -1 until then or if it could not make one. Read once
    /// the maker has ended, which orders its write before.
    made: std::sync::atomic::AtomicI32,
}

/// Starts making a network namespace beside the caller: see [`NetnsBeside`].
pub fn make_netns_beside() -> io::Result<NetnsBeside> {
    use std::sync::atomic::{AtomicI32, Ordering};
    let stack = crate::child::Stack::new(16 << 10)?;
    let maker = Box::new(Maker {
        tid: AtomicI32::new(0),
        made: AtomicI32::new(-1),
    });
    extern "C" fn make(arg: *mut libc::c_void) -> libc::c_int {
        /// Ends this thread alone (`_exit` would end the whole process).
        fn end() -> ! {
            // SAFETY: exit takes an integer and ends the calling thread.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("exit returned")
        }
        // SAFETY: `arg` is the `Maker` the caller keeps boxed until this thread has
        // ended; the rest is system calls on this stack's own data (integers, and the
        // `ifreq` of `raise_loopback`'s frame): nothing else of the process's memory
        // touched. The thread has no TLS of its own: a failing call may set the errno of
        // the thread that made it, which reads it only on its own error path; the caller
        // then sees -1 and makes a namespace itself.
        unsafe {
            let made = &(*arg.cast::<Maker>()).made;
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                end()
            }
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if sock < 0 {
                end()
            }
            if raise_loopback(sock) == 0 {
                let ns = libc::ioctl(sock, libc::SIOCGSKNS);
                made.store(ns, Ordering::Release);
            }
            libc::close(sock);
            end()
        }
    }
    let blocked = crate::child::BlockedSignals::all()?;
    // SAFETY: `make` touches nothing but its own stack and the boxed `Maker`, both kept
    // until the thread has ended (in `NetnsBeside`'s drop at the latest). A thread of
    // this process (CLONE_THREAD, with the memory, handlers and descriptor table it
    // needs), born with every signal blocked and never unblocking one, so no handler of
    // this process runs on its stack; it ends with the exit of one thread. The kernel
    // writes its id to `tid` before it runs and clears it when it ends.
    let tid = unsafe {
        libc::clone(
            make,
            stack.top(),
            libc::CLONE_VM
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID,
            std::ptr::from_ref::<Maker>(&maker).cast_mut().cast(),
            maker.tid.as_ptr(),
            std::ptr::null_mut::<libc::c_void>(),
            maker.tid.as_ptr(),
        )
    };
    drop(blocked);
    if tid < 0 {
        return Err(io::Error::last_os_error());
    }
    away_from_this_cpu(tid);
    Ok(NetnsBeside {
        maker: Some(maker),
        stack: Some(stack),
    })
}

/// Keeps task `pid` off the CPU this thread runs on, where it can. A new task starts
/// on its maker's CPU and runs there only once its maker sleeps: a task meant to run
/// beside its maker would run after it instead.
fn away_from_this_cpu(pid: libc::pid_t) {
    // SAFETY: sched_getcpu takes nothing; sched_getaffinity and sched_setaffinity read
    // and write the `cpu_set_t` owned here, of the size given.
    unsafe {
        let here = libc::sched_getcpu();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if here < 0 || libc::sched_getaffinity(0, size, &mut set) != 0 {
            return;
        }
        libc::CPU_CLR(here as usize, &mut set);
        if libc::CPU_COUNT(&set) > 0 {
            libc::sched_setaffinity(pid, size, &set);
        }
    }
}

impl std::fmt::Debug for NetnsBeside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsBeside")
            .field("maker", &self.maker)
            .finish_non_exhaustive()
    }
}

impl NetnsBeside {
    /// Waits until the namespace is made and moves the calling thread into it (the
    /// process, if it has one thread), its loopback up. Should the maker have failed, the
    /// caller makes one itself ([`new_netns`]): either way it ends in a network namespace
    /// of its own, never the one it was in.
    pub fn enter(mut self) -> io::Result<()> {
        let ns = self.take();
        drop(self);
        match ns {
            Some(ns) if setns(&ns, CloneFlags::CLONE_NEWNET).is_ok() => Ok(()),
            _ => new_netns(),
        }
    }

    /// Waits for the maker to end (once) and takes the namespace's descriptor it left,
    /// if any.
    fn take(&mut self) -> Option<OwnedFd> {
        use std::os::fd::FromRawFd;
        use std::sync::atomic::Ordering;
        let maker = self.maker.take()?;
        loop {
            let tid = maker.tid.load(Ordering::Acquire);
            if tid == 0 {
                break;
            }
            // SAFETY: waits while the word still holds `tid`; the kernel clears it and
            // wakes the waiters when the thread ends. No timeout.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    maker.tid.as_ptr(),
                    libc::FUTEX_WAIT,
                    tid,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
        let fd = maker.made.load(Ordering::Acquire);
        // SAFETY: the maker opened this descriptor in the table this process shares
        // with it and handed it over here alone.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for NetnsBeside {
    fn drop(&mut self) {
        // The maker ended, and a namespace not entered closed (it lives no longer than
        // its descriptor); then the stack the maker ran on is unmapped.
        drop(self.take());
        drop(self.stack.take());
    }
}

/// Moves the calling thread into a new network namespace, its loopback up.
pub fn new_netns() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)?;
    loopback_up()
}

/// Which side of [`clone_process`] we are on.
#[derive(Debug)]
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Forks into new namespaces, like `fork()` but with `flags` (SIGCHLD is added).
///
/// The caller must be single-threaded; the child must only call async-signal-safe code
/// until it execs or, as here, it is itself the only thread of a fresh process. Warren's
/// helper is started with exec and never spawns threads before this call.
pub fn clone_process(flags: CloneFlags) -> io::Result<Forked> {
    let raw = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a raw clone with no new stack and no CLONE_VM/CLONE_THREAD behaves as
    // fork(): the child gets a copy-on-write copy of this address space. The helper that
    // calls this is single-threaded (documented above), so no lock can be held by a thread
    // that does not exist in the child. The null pointers are the optional parent/child
    // tid and tls arguments, unused without the matching flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            raw,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Forks the single-threaded caller (no new namespaces).
pub fn fork_process() -> io::Result<Forked> {
    clone_process(CloneFlags::empty())
}

/// A descriptor of process `pid` that becomes readable when the process exits, whoever
/// its parent is (a zombie counts as exited).
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags (none) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel, open, and owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process of `pidfd`: never to another that took its pid after
/// it was reaped (the error is then ESRCH).
pub fn pidfd_send_signal(pidfd: std::os::fd::BorrowedFd, signal: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, no siginfo (null:
    // the kernel fills in one as kill(2) would) and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// From <linux/securebits.h>.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;

fn setresuid_raw(r: u32, e: u32, s: u32) -> io::Result<()> {
    // SAFETY: setresuid takes plain integers (u32::MAX leaves an id unchanged). The raw
    // syscall changes the calling thread only, which is all there is here.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, r, e, s) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_securebits(bits: libc::c_ulong) -> io::Result<()> {
    // SAFETY: PR_SET_SECUREBITS takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`clone_process`] into a new user namespace (`flags` must include CLONE_NEWUSER)
/// whose owner is host uid `owner` rather than the caller.
///
/// The kernel charges per-user counters (inotify instances and watches, pending signals,
/// message queue bytes, processes) at every level above a user namespace to that
/// namespace's owner: a sandbox whose namespace root owned could exhaust root's share of
/// them for the whole host. Owned by a uid of its own, it exhausts only its own. The
/// owner is the creator's effective uid, so the caller takes `owner` as its effective uid
/// for the one clone call, with SECBIT_NO_SETUID_FIXUP set so that its capabilities
/// stay (no unprivileged-namespace policy of the host can refuse it), and returns to
/// its own afterwards. The child starts with that bit cleared again: left set, a later
/// switch to an ordinary user inside would keep capabilities it must lose.
///
/// Same preconditions as [`clone_process`]: single-threaded caller.
pub fn clone_process_owned_by(flags: CloneFlags, owner: u32) -> io::Result<Forked> {
    let old_bits = {
        // SAFETY: PR_GET_SECUREBITS takes no arguments and returns the bits or -1.
        let b = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
        if b < 0 {
            return Err(io::Error::last_os_error());
        }
        b as libc::c_ulong
    };
    set_securebits(old_bits | SECBIT_NO_SETUID_FIXUP)?;
    let switched = setresuid_raw(u32::MAX, owner, u32::MAX);
    let forked = switched.and_then(|()| clone_process(flags));
    if let Ok(Forked::Child) = forked {
        // Only this process's own securebits change; the parent restores its own below.
        // A child that cannot shed the bit must not go on (nor return into the caller's
        // code as if it were the parent).
        if set_securebits(old_bits).is_err() {
            // SAFETY: _exit ends this forked child without running the parent's handlers.
            unsafe { libc::_exit(126) }
        }
        return Ok(Forked::Child);
    }
    let back = setresuid_raw(u32::MAX, 0, u32::MAX).and_then(|()| set_securebits(old_bits));
    let forked = forked?;
    back?;
    Ok(forked)
}

/// Starts `f(arg)` in a new process sharing this one's memory (`CLONE_VM`, plus
/// `flags`: namespaces, `CLONE_FILES`), on `stack`: no page tables copied. No signal
/// handler of this process may run there, so the process is born with every signal
/// blocked; `f` must end it with `_exit`, unblocking none.
///
/// # Safety
///
/// `f` may touch only its own stack and `arg` (no allocation, no lock, nothing of the
/// caller's memory), and `stack` must stay mapped until the process is reaped.
unsafe fn run_on_stack(
    stack: &crate::child::Stack,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    flags: libc::c_int,
    arg: usize,
) -> io::Result<Pid> {
    let blocked = crate::child::BlockedSignals::all()?;
    // SAFETY: the caller vouches for `f` and the stack (above); CLONE_VM without
    // CLONE_SIGHAND or CLONE_THREAD: a process of its own that shares this memory.
    let pid = unsafe {
        libc::clone(
            f,
            stack.top(),
            libc::CLONE_VM | flags | libc::SIGCHLD,
            arg as *mut libc::c_void,
        )
    };
    drop(blocked);
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pid::from_raw(pid))
}

/// A user namespace with these maps and no process in it: a description of an id
/// mapping for idmapped mounts (see `mount::DetachedMount::idmap`). A throwaway child,
/// cloned into the new namespace sharing this process's memory (no page tables copied,
/// no copy-on-write faults after), holds it until the maps are written and the namespace
/// opened, then exits.
pub fn idmap_userns(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    use crate::child::Stack;
    // The child only waits for a byte on this pipe and exits.
    let (r, w) = nix::unistd::pipe()?;
    let stack = Stack::new(16 << 10)?;
    extern "C" fn hold(arg: *mut libc::c_void) -> libc::c_int {
        let fd = arg as usize as libc::c_int;
        let mut b = 0u8;
        // SAFETY: read into a byte on this stack, then _exit: two syscalls and no memory
        // of the parent's touched.
        unsafe {
            libc::read(fd, std::ptr::from_mut(&mut b).cast(), 1);
            libc::_exit(0)
        }
    }
    // SAFETY: `hold` touches nothing but its own stack, which stays mapped until the
    // child is reaped below; its argument is a descriptor number.
    let child = unsafe { run_on_stack(&stack, hold, libc::CLONE_NEWUSER, r.as_raw_fd() as usize)? };
    let result = (|| {
        std::fs::write(format!("/proc/{child}/uid_map"), uid_map)?;
        std::fs::write(format!("/proc/{child}/gid_map"), gid_map)?;
        open_ns(child, "user")
    })();
    // A byte ends its wait (not the pipe's end: its copy of the descriptors holds the
    // writing end too).
    let _ = nix::unistd::write(&w, b"x");
    let _ = nix::sys::wait::waitpid(child, None);
    drop((r, w, stack));
    result
}

/// Writes the uid and gid maps of `pid`'s user namespace: `inside` maps to host ids
/// `outside .. outside + count`. Needs CAP_SETUID/CAP_SETGID in the parent namespace.
pub fn write_id_maps(pid: Pid, inside: u32, outside: u32, count: u32) -> io::Result<()> {
    let line = format!("{inside} {outside} {count}\n");
    std::fs::write(format!("/proc/{pid}/uid_map"), &line)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &line)
}

/// Enters the namespaces given as flags (the calling thread, or process for user/mount).
pub fn unshare(flags: CloneFlags) -> io::Result<()> {
    nix::sched::unshare(flags).map_err(io::Error::from)
}

/// Joins the namespace behind `fd` (a /proc/PID/ns/* file).
pub fn setns(fd: impl AsFd, kind: CloneFlags) -> io::Result<()> {
    nix::sched::setns(fd, kind).map_err(io::Error::from)
}

/// Opens `/proc/<pid>/ns/<name>`.
pub fn open_ns(pid: Pid, name: &str) -> io::Result<OwnedFd> {
    Ok(std::fs::File::open(format!("/proc/{pid}/ns/{name}"))?.into())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name).map_err(io::Error::from)
}

/// Makes `new_root` the root of this mount namespace and detaches the old one.
pub fn pivot_root(new_root: &Path) -> io::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let step = |what: &'static str| {
        move |e: nix::Error| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
    };
    let old = std::fs::File::open("/")?;
    std::env::set_current_dir(new_root)?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it then
    // removes the old root without needing a directory to put it in.
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    nix::unistd::fchdir(old.as_raw_fd()).map_err(step("fchdir"))?;
    // Unmount events must not propagate back to the host's copy of these mounts.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("make the old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    std::env::set_current_dir("/")
}

/// Makes the mount whose root is the current directory the caller's root, as
/// [`pivot_root`] does, without the kernel's visit of every thread on the host that
/// `pivot_root` pays: the mount is moved onto the namespace's root and the caller
/// `chroot`s into it. What was the namespace's root stays below it, reachable by a
/// process that may `chroot` again and climbs out: so the namespace must be one whose
/// root holds nothing (warren-runtime's shell).
pub fn move_root_here() -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let step = |what: &'static str| {
        move |e: nix::Error| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
    };
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("move the root onto /"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    std::env::set_current_dir("/")
}

/// Asks the kernel to send `sig` when the parent thread exits.
pub fn set_parent_death_signal(sig: nix::sys::signal::Signal) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)
}

/// Becomes the reaper of orphaned descendants.
pub fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Sets loopback's up and running flags through `sock`, a socket of its network
/// namespace: 0, or -1 with `errno` set, as a system call. Touches nothing but its own
/// stack (a namespace's maker calls it: see [`make_netns_beside`]).
fn raise_loopback(sock: libc::c_int) -> libc::c_int {
    // SAFETY: `ifreq` is plain old data, all-zero valid for every field; SIOCGIFFLAGS
    // fills its flags member, read and written back by SIOCSIFFLAGS; the `ifreq` lives on
    // this stack through both calls. A bad descriptor is the kernel's to refuse.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return -1;
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        libc::ioctl(sock, libc::SIOCSIFFLAGS, &req)
    }
}

/// Brings the loopback interface of the current network namespace up (a new network
/// namespace starts with it down).
pub fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if raise_loopback(sock.as_raw_fd()) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_network_namespace_made_beside_is_new_and_the_callers_alone() {
        if !warren_testkit::needs_root(
            "ns::a_network_namespace_made_beside_is_new_and_the_callers_alone",
            "new network namespaces",
        ) {
            return;
        }
        let netns = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let before = netns();
        // Each in a thread of its own: a thread's network namespace is its own.
        let made: Vec<u64> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    let beside = make_netns_beside().unwrap();
                    // Still where it was until it enters.
                    assert_eq!(netns(), before);
                    beside.enter().unwrap();
                    // A new namespace has its loopback, up, and no other link.
                    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
                    let links: Vec<&str> = dev
                        .lines()
                        .skip(2)
                        .filter_map(|l| l.split(':').next())
                        .map(str::trim)
                        .collect();
                    assert_eq!(links, ["lo"]);
                    netns()
                })
                .join()
                .unwrap()
            })
            .collect();
        assert_eq!(netns(), before, "the test's own thread stayed");
        for (i, n) in made.iter().enumerate() {
            assert_ne!(*n, before);
            assert!(!made[..i].contains(n), "one namespace each");
        }
        // A maker not entered is gone once dropped, and the namespace it made with it (it
        // lives no longer than a descriptor of it).
        let open_netns = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("net:["))
                .count()
        };
        let open_before = open_netns();
        let beside = make_netns_beside().unwrap();
        let maker = beside.maker.as_ref().unwrap();
        let tid = maker.tid.load(std::sync::atomic::Ordering::Acquire);
        drop(beside);
        if tid != 0 {
            // A thread of this process, ended: the kernel wakes its waiter as the thread
            // lets go of the memory, and lists it in /proc a moment longer, until it is
            // released.
            let task = format!("/proc/self/task/{tid}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::path::Path::new(&task).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(
                !std::path::Path::new(&task).exists(),
                "the maker thread lives on"
            );
        }
        assert_eq!(open_netns(), open_before);
    }

    #[test]
    fn an_idmap_namespace_shows_files_through_its_maps() {
        if !warren_testkit::needs_root(
            "ns::an_idmap_namespace_shows_files_through_its_maps",
            "user namespaces with maps and idmapped mounts",
        ) {
            return;
        }
        let map = "0 0 1\n100000 200000 10\n";
        let ns = idmap_userns(map, map).unwrap();
        let ns2 = idmap_userns(map, map).unwrap();
        let id = |fd: &OwnedFd| std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        assert_ne!(
            id(&ns).unwrap().ino(),
            id(&ns2).unwrap().ino(),
            "one namespace each"
        );
        // In a mount namespace of this thread's own, a file stored as 100005 is seen as
        // 200005 through a mount idmapped by it.
        std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).unwrap();
            crate::mount::set_propagation(Path::new("/"), nix::mount::MsFlags::MS_PRIVATE).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (src, at) = (dir.path().join("src"), dir.path().join("at"));
            std::fs::create_dir(&src).unwrap();
            std::fs::create_dir(&at).unwrap();
            std::fs::write(src.join("f"), "x").unwrap();
            std::os::unix::fs::chown(src.join("f"), Some(100005), Some(100005)).unwrap();
            crate::mount::bind_idmapped(&src, &at, ns.as_fd(), crate::mount::MountAttrs::PLAIN)
                .unwrap();
            let m = std::fs::metadata(at.join("f")).unwrap();
            assert_eq!((m.uid(), m.gid()), (200005, 200005));
            crate::mount::unmount(&at).unwrap();
        })
        .join()
        .unwrap();
    }
}
