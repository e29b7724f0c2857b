//! The shell: a mount namespace whose root is an empty, read-only tmpfs with one
//! directory, [`ROOT`], for a sandbox's root tree to be placed on (and two more the
//! kernel asks for: see `build`).
//!
//! A sandbox's first process must end up in a mount namespace that holds nothing of the
//! host. `pivot_root` gives it one, but the kernel then visits every thread on the host
//! to move those rooted at the old root (`chroot_fs_refs`): about 3 ms a create with a
//! thousand sandboxes running. The zygote makes the shell once, with the one
//! `pivot_root` of its life, and each helper it forks works from a copy: it places a copy
//! of the sandbox's root tree on [`ROOT`] there and clones the first process, which
//! moves that tree onto the namespace's root and `chroot`s into it
//! ([`warren_sys::ns::move_root_here`]), with no walk of the host.
//!
//! Below a sandbox's root is then the shell's root, not a host directory. A process that
//! may `chroot` (root inside holds `CAP_SYS_CHROOT` in its namespace) and climbs out of
//! its root that way gets no higher than that root: it is mounted on the shell root's
//! own root directory, and `..` climbs a mount only to a mount point that is not its
//! parent's root. Were it to stand on the shell's root, it could neither read it nor
//! pass through it (mode 0, owned by the host's root, whom no sandbox maps).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use std::sync::mpsc;

use warren_sys::mount::{mount_fs, remount_readonly, set_propagation, MsFlags};
use warren_sys::ns::{self, CloneFlags, Forked};

/// Where a helper places the sandbox's root tree in its copy of the shell.
pub const ROOT: &str = "/r";

/// Where the shell's proc and sysfs are.
const PROC: &str = "/p";
const SYS: &str = "/s";

/// A directory every host has, covered in the maker's private namespace by the tmpfs
/// that becomes the shell's root.
const MAKE_AT: &str = "/dev";

/// Makes the shell: a thread of this process builds it in a mount namespace of its own
/// (a thread's `unshare` gives it its own filesystem context; the rest of the process
/// stays where it is), which is opened here before the thread ends.
pub fn make() -> io::Result<OwnedFd> {
    let (built_tx, built) = mpsc::channel();
    let (done, done_rx) = mpsc::channel::<()>();
    let maker = std::thread::Builder::new()
        .name("warren-shell".into())
        .spawn(move || {
            let _ = built_tx.send(build().map(|()| nix::unistd::gettid()));
            // Until its namespace is open (or the maker gives up).
            let _ = done_rx.recv();
        })?;
    let shell = match built.recv() {
        Ok(Ok(tid)) => {
            std::fs::File::open(format!("/proc/self/task/{tid}/ns/mnt")).map(OwnedFd::from)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the shell's maker stopped")),
    };
    drop(done);
    let _ = maker.join();
    shell
}

/// The maker thread's part of [`make`]: its own namespace, whose root becomes the tmpfs
/// (made where the host's /dev was), with [`ROOT`], a proc of a pid namespace in which
/// no process runs and a sysfs of a network namespace without devices. Those two are
/// there because the kernel lets a user namespace mount proc and sysfs only where an
/// instance of each is already fully visible (`mount_too_revealing`): a sandbox's first
/// process mounts its own. They show nothing a sandbox's own do not, and nothing in the
/// sandbox can reach them: every path to them starts at the shell's root, mode 0.
fn build() -> io::Result<()> {
    ns::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)?;
    set_propagation(Path::new("/"), MsFlags::MS_PRIVATE)?;
    let at = Path::new(MAKE_AT);
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(
        "warren-shell",
        at,
        "tmpfs",
        hidden,
        Some("mode=0,size=4k,nr_inodes=8"),
    )?;
    for d in [ROOT, PROC, SYS] {
        let dir = at.join(d.trim_start_matches('/'));
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o000))?;
    }
    remount_readonly(at, hidden)?;
    // Writable, as a sandbox's own proc is (a read-only one would make the kernel refuse
    // a writable mount of proc there); sysfs read-only, as a sandbox's is. The kernel
    // names a pid namespace only while a process runs in it: one waits in it while the
    // proc is made, and is gone after.
    let holder = match ns::clone_process(CloneFlags::CLONE_NEWPID)? {
        Forked::Child => loop {
            nix::unistd::pause();
        },
        Forked::Parent(pid) => pid,
    };
    let proc = mount_fs(
        "proc",
        &at.join(PROC.trim_start_matches('/')),
        "proc",
        hidden,
        Some(&format!("pidns=/proc/{holder}/ns/pid")),
    );
    let _ = nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(holder, None);
    proc?;
    mount_fs(
        "sysfs",
        &at.join(SYS.trim_start_matches('/')),
        "sysfs",
        hidden | MsFlags::MS_RDONLY,
        None,
    )?;
    ns::pivot_root(at)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn the_shell_holds_one_empty_directory_on_a_read_only_root() {
        let name = "the_shell_holds_one_empty_directory_on_a_read_only_root";
        if !warren_testkit::needs_root(name, "mounting a tmpfs in a mount namespace") {
            return;
        }
        let shell = make().unwrap();
        // Looked at from a thread of its own, which alone joins the shell.
        std::thread::spawn(move || {
            ns::unshare(CloneFlags::CLONE_FS).unwrap();
            ns::setns(&shell, CloneFlags::CLONE_NEWNS).unwrap();
            let names: Vec<String> = std::fs::read_dir("/")
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let mut names = names;
            names.sort();
            assert_eq!(names, ["p", "r", "s"]);
            for p in ["/", ROOT] {
                let m = std::fs::metadata(p).unwrap();
                assert_eq!(m.permissions().mode() & 0o7777, 0, "{p}");
                assert_eq!((m.uid(), m.gid()), (0, 0), "{p}");
            }
            assert_eq!(std::fs::read_dir(ROOT).unwrap().count(), 0);
            let e = std::fs::create_dir("/x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS));
            let st = nix::sys::statfs::statfs("/").unwrap();
            assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
            // Its proc is of a pid namespace where nothing runs, its sysfs of a network
            // namespace without devices; nothing else is mounted, not even /proc.
            let pids = std::fs::read_dir(PROC)
                .unwrap()
                .filter(|e| {
                    let n = e.as_ref().unwrap().file_name();
                    n.to_string_lossy().bytes().all(|b| b.is_ascii_digit())
                })
                .count();
            assert_eq!(pids, 0);
            assert!(std::fs::metadata(format!("{PROC}/meminfo")).is_ok());
            // (Its loopback goes with the namespace, once the maker is gone.)
            let nets: Vec<_> = std::fs::read_dir(format!("{SYS}/class/net"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n != "lo")
                .collect();
            assert!(nets.is_empty(), "{nets:?}");
            assert!(std::fs::metadata("/proc/self").is_err());
        })
        .join()
        .unwrap();
        // This thread, and the host, are where they were.
        assert!(std::fs::metadata("/proc/self").is_ok());
    }
}
