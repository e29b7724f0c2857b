//! The sandboxes' run directories in memory.
//!
//! `RUN/sandboxes/ID` holds what a live sandbox needs while the host is up and never
//! after: its agent's socket, pid files, the mount points its helper mounts on in its
//! own namespace. On most hosts the run directory is under `/run`, a tmpfs; where it is
//! on a disk, each sandbox's dozen files and directories cost the disk's inode
//! allocator on create and its freeing on removal (on an ext4 without a journal, a scan
//! of the recently deleted inodes for every new one). The daemon then mounts a tmpfs of
//! its own on `RUN/sandboxes` when it starts, if the directory is empty, and unmounts it
//! when it stops with no sandbox left; a sandbox that outlives the daemon keeps it
//! mounted for the next one. Nothing persistent is ever in it: a sandbox's files are in
//! the data directory.
//!
//! `warren run` does the same without a daemon: the CLI mounts the tmpfs and makes its
//! sandbox's directory in it under the lock of [`hold`], and that sandbox's helper, once
//! its sandbox is gone, unmounts it when no other run directory is left and no daemon
//! serves there ([`release`], under the same lock, so that a sandbox being made never
//! loses its directory to another's release).

use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::MsFlags;
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

use crate::Paths;

/// The source name of the tmpfs, as `/proc/self/mountinfo` shows it.
pub const SOURCE: &str = "warren-run";

/// Where the run directories were put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The run directory was on a tmpfs already (the usual `/run`), or a daemon before
    /// this one mounted ours.
    InMemory,
    /// A tmpfs was mounted on `RUN/sandboxes` now.
    Mounted,
    /// They stay on the disk, for the reason given.
    OnDisk(String),
}

fn dir(paths: &Paths) -> PathBuf {
    paths.run.join("sandboxes")
}

/// Puts `RUN/sandboxes` on a tmpfs unless it is on one already or holds run directories
/// (sandboxes of an earlier daemon on the disk, which must stay where they are). Called
/// by the daemon before any backend starts, so every helper it forks sees the mount.
pub fn keep_in_memory(paths: &Paths) -> io::Result<Placed> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dir(paths);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    // Not two mounts stacked by two callers at once.
    let _held = lock(paths, FlockArg::LockExclusive)?;
    if statfs(&dir).map_err(io::Error::from)?.filesystem_type() == TMPFS_MAGIC {
        return Ok(Placed::InMemory);
    }
    if std::fs::read_dir(&dir)?.next().is_some() {
        return Ok(Placed::OnDisk(format!(
            "{} holds run directories already",
            dir.display()
        )));
    }
    warren_sys::mount::mount_fs(
        SOURCE,
        &dir,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )?;
    Ok(Placed::Mounted)
}

/// The run directory's lock (`flock` on `RUN` itself), taken as `how`.
fn lock(paths: &Paths, how: FlockArg) -> io::Result<Flock<std::fs::File>> {
    let run = std::fs::File::open(&paths.run)?;
    Flock::lock(run, how).map_err(|(_, e)| io::Error::from(e))
}

/// For a sandbox made without a daemon: puts `RUN/sandboxes` in memory as
/// [`keep_in_memory`] does, then holds the lock shared, so that no [`release`] takes the
/// tmpfs away before the caller has made its sandbox's directory in it (drop the lock
/// then, and before any process that may call [`release`] waits on the caller).
/// None when the lock cannot be had: the directories stay where they are.
pub fn hold(paths: &Paths) -> Option<Flock<std::fs::File>> {
    // A release between the two leaves the directories on the disk: slower, no harm.
    let _ = keep_in_memory(paths);
    lock(paths, FlockArg::LockShared).ok()
}

/// Unmounts the tmpfs of [`keep_in_memory`] when no run directory is left in it: the
/// daemon's last step, and that of the helper of a sandbox [`hold`] made room for. One
/// that a sandbox still uses stays for the next. True when it was unmounted.
pub fn release(paths: &Paths) -> io::Result<bool> {
    let dir = dir(paths);
    let _held = lock(paths, FlockArg::LockExclusive)?;
    // Nor while another daemon serves on these directories (one started second, that
    // found the socket taken and stops, must not take the first one's away).
    if !is_ours(&dir) || std::fs::read_dir(&dir)?.next().is_some() || served(paths) {
        return Ok(false);
    }
    nix::mount::umount2(&dir, nix::mount::MntFlags::empty()).map_err(io::Error::from)?;
    Ok(true)
}

/// True when a daemon answers on the run directory's socket (`RUN/warren.sock`; one
/// serving on a socket elsewhere is not seen).
pub fn served(paths: &Paths) -> bool {
    std::os::unix::net::UnixStream::connect(paths.run.join("warren.sock")).is_ok()
}

/// True when `dir` is the mount point of a tmpfs of [`keep_in_memory`].
fn is_ours(dir: &Path) -> bool {
    // The calling thread's namespace (a test mounts in one of its own).
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(run_mount)
        .any(|at| Path::new(&at) == dir)
}

/// The mount point of `line` (of `/proc/self/mountinfo`) when it is a run-directory tmpfs
/// of some Warren on this host.
pub fn run_mount(line: &str) -> Option<String> {
    let (left, right) = line.split_once(" - ")?;
    let at = left.split(' ').nth(4)?;
    let mut fs = right.split(' ');
    let ours = fs.next() == Some("tmpfs") && fs.next() == Some(SOURCE);
    (ours && at.ends_with("/sandboxes")).then(|| unescape(at))
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_tmpfs_is_told_from_other_mounts() {
        let ours = "812 29 0:95 / /tmp/a\\040b/run/sandboxes rw,nosuid,nodev,relatime shared:1 \
                    - tmpfs warren-run rw,mode=700";
        assert_eq!(run_mount(ours).as_deref(), Some("/tmp/a b/run/sandboxes"));
        let other = "813 29 0:96 / /tmp/x/sandboxes rw - tmpfs tmpfs rw";
        assert_eq!(run_mount(other), None);
        let elsewhere = "814 29 0:97 / /tmp/x/layer rw - tmpfs warren-run rw";
        assert_eq!(run_mount(elsewhere), None);
    }

    #[test]
    fn the_tmpfs_is_mounted_on_an_empty_disk_directory_and_released_when_empty() {
        if !warren_testkit::needs_root(
            "the_tmpfs_is_mounted_on_an_empty_disk_directory_and_released_when_empty",
            "mounting a tmpfs",
        ) {
            return;
        }
        // A mount namespace of this thread's own keeps the host's table untouched.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            warren_sys::mount::set_propagation(Path::new("/"), MsFlags::MS_PRIVATE).unwrap();
            let base = tempfile::tempdir().unwrap();
            let paths = Paths::under(base.path());
            let placed = keep_in_memory(&paths).unwrap();
            let dir = paths.run.join("sandboxes");
            let on_tmpfs = statfs(&dir).unwrap().filesystem_type() == TMPFS_MAGIC;
            if statfs(base.path()).unwrap().filesystem_type() == TMPFS_MAGIC {
                assert_eq!(placed, Placed::InMemory);
                return;
            }
            assert_eq!(placed, Placed::Mounted);
            assert!(on_tmpfs && is_ours(&dir));
            // A second daemon keeps the first one's.
            assert_eq!(keep_in_memory(&paths).unwrap(), Placed::InMemory);
            // Not while a sandbox's directory is in it.
            std::fs::create_dir(dir.join("abc")).unwrap();
            release(&paths).unwrap();
            assert!(is_ours(&dir));
            std::fs::remove_dir(dir.join("abc")).unwrap();
            release(&paths).unwrap();
            assert!(!is_ours(&dir));
            // A disk directory with run directories in it stays on the disk.
            std::fs::create_dir(dir.join("def")).unwrap();
            assert!(matches!(keep_in_memory(&paths).unwrap(), Placed::OnDisk(_)));
            assert!(!is_ours(&dir));
        })
        .join()
        .unwrap();
    }
}
