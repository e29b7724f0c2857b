//! Acting on files as another user, on one thread, without giving up root.
//!
//! The kernel checks file access against a thread's *filesystem* ids (fsuid, fsgid) and
//! supplementary groups, not its effective uid, and keeps them per thread. Switching
//! them is what makes an operation the user's: permission checks, the traversal of
//! directories and symlinks, and the owner of what gets created. It is also what takes
//! root's file privileges away: when the fsuid leaves 0 the kernel drops the file-related
//! capabilities (`CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`,
//! `CAP_FSETID`, ...) from the thread's effective set, and when it returns to 0 raises
//! them again from the permitted set. `CAP_SETUID` and `CAP_SETGID` are not among them,
//! which is why the thread can always switch back.
//!
//! A kernel without setfsuid (gVisor answers it with ENOSYS) gets the same effect from
//! the thread's *effective* ids, which the filesystem ids follow: the real and saved
//! uid stay 0, so the thread keeps its permitted capabilities and can switch back, and
//! its effective set is dropped while the effective uid is not 0, as for the fsuid.
//!
//! libc's `setgroups` and `setuid` are no use here: glibc and musl make them apply to
//! every thread of the process (POSIX wants process-wide credentials), which would turn
//! a file operation for one client into a change of identity for all. The raw syscalls
//! change only the calling thread.

use std::io;

use crate::child::Identity;

// The 32-bit x86 and ARM ABIs kept 16-bit ids under the old numbers; elsewhere the plain
// names take 32-bit ids.
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{
    SYS_getgroups as SYS_GETGROUPS, SYS_setfsgid as SYS_SETFSGID, SYS_setfsuid as SYS_SETFSUID,
    SYS_setgroups as SYS_SETGROUPS,
};
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
use libc::{
    SYS_getgroups32 as SYS_GETGROUPS, SYS_setfsgid32 as SYS_SETFSGID,
    SYS_setfsuid32 as SYS_SETFSUID, SYS_setgroups32 as SYS_SETGROUPS,
};

/// An id the kernel refuses, so setfsuid and setfsgid change nothing and only report the
/// current value.
const QUERY: u32 = u32::MAX;

/// Runs `f` on the calling thread with `id` as its filesystem uid, gid and supplementary
/// groups, then restores the thread's previous ones, also when `f` panics. Other threads
/// keep theirs throughout.
///
/// Fails, without running `f`, when the switch does not take effect (the caller lacks
/// `CAP_SETUID` or `CAP_SETGID`): running it with the caller's own rights instead would
/// be the opposite of what was asked.
pub fn with_fs_identity<T>(id: &Identity, f: impl FnOnce() -> T) -> io::Result<T> {
    if !has_fs_ids() {
        return with_effective_identity(id, f);
    }
    let saved = FsIdentity::current()?;
    let restore = Restore(saved);
    set_groups(&id.groups)?;
    set_fsgid(id.gid)?;
    set_fsuid(id.uid)?;
    let out = f();
    drop(restore);
    Ok(out)
}

/// Whether this kernel has setfsuid (gVisor's does not).
fn has_fs_ids() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: setfsuid with an id the kernel refuses changes nothing.
        let rc = unsafe { libc::syscall(SYS_SETFSUID, QUERY) };
        !(rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
    })
}

/// [`with_fs_identity`] through the thread's effective ids.
fn with_effective_identity<T>(id: &Identity, f: impl FnOnce() -> T) -> io::Result<T> {
    let saved = EffectiveIdentity::current()?;
    let restore = RestoreEffective(saved);
    set_groups(&id.groups)?;
    // The group first: changing it needs CAP_SETGID, which the uid change drops.
    set_resid(libc::SYS_setresgid, id.gid)?;
    set_resid(libc::SYS_setresuid, id.uid)?;
    let now = EffectiveIdentity::current()?;
    if (now.uid, now.gid) != (id.uid, id.gid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "effective ids stayed {}:{} instead of becoming {}:{}",
                now.uid, now.gid, id.uid, id.gid
            ),
        ));
    }
    let out = f();
    drop(restore);
    Ok(out)
}

/// Sets the calling thread's effective id with `call` (setresuid or setresgid), leaving
/// its real and saved ids.
fn set_resid(call: libc::c_long, id: u32) -> io::Result<()> {
    // SAFETY: setresuid and setresgid take three integers; -1 (as u32::MAX) leaves an id.
    check(unsafe { libc::syscall(call, QUERY, id, QUERY) })?;
    Ok(())
}

/// A thread's effective uid, gid and groups.
struct EffectiveIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl EffectiveIdentity {
    fn current() -> io::Result<Self> {
        let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
        // SAFETY: getresuid writes one id through each of the three valid pointers.
        check(unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) })?;
        let uid = e;
        // SAFETY: as above, for the group ids.
        check(unsafe { libc::syscall(libc::SYS_getresgid, &mut r, &mut e, &mut s) })?;
        Ok(Self {
            uid,
            gid: e,
            groups: FsIdentity::current_groups()?,
        })
    }
}

/// Puts a thread's effective ids back when dropped; aborts if it cannot (see
/// [`Restore`]).
struct RestoreEffective(EffectiveIdentity);

impl Drop for RestoreEffective {
    fn drop(&mut self) {
        let saved = &self.0;
        // The uid first: back to root, the thread has CAP_SETGID again.
        let restored = set_resid(libc::SYS_setresuid, saved.uid)
            .and_then(|()| set_resid(libc::SYS_setresgid, saved.gid))
            .and_then(|()| set_groups(&saved.groups));
        if let Err(e) = restored {
            eprintln!("cannot restore a thread's effective ids: {e}");
            std::process::abort();
        }
    }
}

/// A thread's filesystem identity.
struct FsIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl FsIdentity {
    fn current() -> io::Result<Self> {
        Ok(Self {
            uid: fsuid(QUERY),
            gid: fsgid(QUERY),
            groups: Self::current_groups()?,
        })
    }

    fn current_groups() -> io::Result<Vec<u32>> {
        // SAFETY: with a size of 0 getgroups only counts the groups and writes nothing.
        let n = check(unsafe { libc::syscall(SYS_GETGROUPS, 0, std::ptr::null_mut::<u32>()) })?;
        let mut groups = vec![0u32; n as usize];
        // SAFETY: the buffer holds `groups.len()` gids, the size passed. Only this thread
        // changes its own groups, so the count cannot have grown since.
        let n = check(unsafe { libc::syscall(SYS_GETGROUPS, groups.len(), groups.as_mut_ptr()) })?;
        groups.truncate(n as usize);
        Ok(groups)
    }
}

/// Puts a thread's saved identity back when dropped, whether the work returned or
/// unwound.
struct Restore(FsIdentity);

impl Drop for Restore {
    fn drop(&mut self) {
        let saved = &self.0;
        let restored = set_fsuid(saved.uid)
            .and_then(|()| set_fsgid(saved.gid))
            .and_then(|()| set_groups(&saved.groups));
        if let Err(e) = restored {
            // The thread would carry someone else's identity into whatever it runs next,
            // and nothing above can know. Going back needs only CAP_SETGID (the ids were
            // the thread's own), which a process does not lose by itself.
            eprintln!("cannot restore a thread's filesystem identity: {e}");
            std::process::abort();
        }
    }
}

fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`, which the kernel only reads.
    check(unsafe { libc::syscall(SYS_SETGROUPS, groups.len(), groups.as_ptr()) })?;
    Ok(())
}

/// setfsuid reports no error, only the previous fsuid; the switch is confirmed by asking
/// again.
fn set_fsuid(uid: u32) -> io::Result<()> {
    fsuid(uid);
    let now = fsuid(QUERY);
    if now != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("filesystem uid stayed {now} instead of becoming {uid}"),
        ));
    }
    Ok(())
}

fn set_fsgid(gid: u32) -> io::Result<()> {
    fsgid(gid);
    let now = fsgid(QUERY);
    if now != gid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("filesystem gid stayed {now} instead of becoming {gid}"),
        ));
    }
    Ok(())
}

/// Calls setfsuid, returning the fsuid before the call.
fn fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes an integer and cannot fail; it returns the previous fsuid.
    unsafe { libc::syscall(SYS_SETFSUID, uid) as u32 }
}

fn fsgid(gid: u32) -> u32 {
    // SAFETY: setfsgid takes an integer and cannot fail; it returns the previous fsgid.
    unsafe { libc::syscall(SYS_SETFSGID, gid) as u32 }
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::sync::{Arc, Barrier};

    use super::*;

    fn user() -> Identity {
        Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 1001],
        }
    }

    fn root_or_skip(test: &str) -> bool {
        warren_testkit::needs_root(test, "switching to another user")
    }

    /// A directory anyone may create files in.
    fn open_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    fn identity_now() -> (u32, u32, Vec<u32>) {
        let now = FsIdentity::current().unwrap();
        (now.uid, now.gid, now.groups)
    }

    #[test]
    fn the_effective_ids_path_acts_as_the_user_and_restores_root() {
        // What a kernel without setfsuid (gVisor) gets: the same rights, the same owner.
        if !root_or_skip("the_effective_ids_path_acts_as_the_user_and_restores_root") {
            return;
        }
        let dir = open_dir();
        let secret = dir.path().join("secret");
        fs::write(&secret, "root only").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let made = dir.path().join("made");
        let (refused, owner) = std::thread::spawn({
            let (secret, made) = (secret.clone(), made.clone());
            move || {
                with_effective_identity(&user(), || {
                    fs::write(&made, "x").unwrap();
                    let refused = fs::read(&secret).unwrap_err().kind();
                    let m = fs::metadata(&made).unwrap();
                    (refused, (m.uid(), m.gid()))
                })
                .unwrap()
            }
        })
        .join()
        .unwrap();
        assert_eq!(refused, io::ErrorKind::PermissionDenied);
        assert_eq!(owner, (1000, 1000));
        let after = std::thread::spawn(|| {
            let now = EffectiveIdentity::current().unwrap();
            (now.uid, now.gid)
        });
        assert_eq!(after.join().unwrap(), (0, 0));
        // The thread that switched is root again: root's file rights are back.
        let back = std::thread::spawn(move || {
            with_effective_identity(&user(), || ()).unwrap();
            fs::read_to_string(&secret).unwrap()
        });
        assert_eq!(back.join().unwrap(), "root only");
    }

    #[test]
    fn files_created_inside_belong_to_the_identity() {
        if !root_or_skip("files_created_inside_belong_to_the_identity") {
            return;
        }
        let before = identity_now();
        let dir = open_dir();
        let path = dir.path().join("made");
        let inside = with_fs_identity(&user(), || {
            fs::write(&path, "x").unwrap();
            identity_now()
        })
        .unwrap();
        assert_eq!(inside, (1000, 1000, vec![1000, 1001]));
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        assert_eq!(identity_now(), before);
    }

    #[test]
    fn root_only_files_are_refused_inside() {
        if !root_or_skip("root_only_files_are_refused_inside") {
            return;
        }
        let dir = open_dir();
        let secret = dir.path().join("secret");
        fs::write(&secret, "root only").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let inside = with_fs_identity(&user(), || fs::read(&secret)).unwrap();
        assert_eq!(
            inside.unwrap_err().kind(),
            io::ErrorKind::PermissionDenied,
            "root's CAP_DAC_OVERRIDE must not apply inside"
        );
        // Root's own rights come back afterwards.
        assert_eq!(fs::read(&secret).unwrap(), b"root only");
        let created = with_fs_identity(&user(), || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(dir.path().join("theirs"))
                .map(|_| ())
        })
        .unwrap();
        assert!(created.is_ok());
    }

    #[test]
    fn other_threads_keep_their_identity() {
        if !root_or_skip("other_threads_keep_their_identity") {
            return;
        }
        let dir = open_dir();
        let before = identity_now();
        let inside = Arc::new(Barrier::new(2));
        let checked = Arc::new(Barrier::new(2));
        let user_file = dir.path().join("user");
        let worker = {
            let (inside, checked) = (inside.clone(), checked.clone());
            std::thread::spawn(move || {
                with_fs_identity(&user(), || {
                    inside.wait();
                    fs::write(&user_file, "u").unwrap();
                    // Stay switched until the other thread has looked at itself.
                    checked.wait();
                })
                .unwrap();
            })
        };
        inside.wait();
        let during = identity_now();
        fs::write(dir.path().join("root"), "r").unwrap();
        checked.wait();
        worker.join().unwrap();
        assert_eq!(during, before);
        let owner = |name: &str| fs::metadata(dir.path().join(name)).unwrap().uid();
        assert_eq!((owner("root"), owner("user")), (0, 1000));
    }

    #[test]
    fn a_panic_inside_restores_the_identity() {
        if !root_or_skip("a_panic_inside_restores_the_identity") {
            return;
        }
        let before = identity_now();
        let result = std::panic::catch_unwind(|| with_fs_identity(&user(), || panic!("boom")));
        assert!(result.is_err());
        assert_eq!(identity_now(), before);
    }

    /// Removes `cap` from the calling thread's effective set.
    fn drop_effective(cap: u32) {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: version 3 capget writes exactly two Data structs, which `data` holds.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(rc, 0);
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        // SAFETY: version 3 capset reads exactly two Data structs from `data`; it changes
        // the calling thread only.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn a_switch_that_does_not_take_fails_closed() {
        const CAP_SETUID: u32 = 7;
        if !root_or_skip("a_switch_that_does_not_take_fails_closed") {
            return;
        }
        // On a thread of its own: it gives up CAP_SETUID for good.
        std::thread::spawn(|| {
            let before = identity_now();
            drop_effective(CAP_SETUID);
            let mut ran = false;
            let result = with_fs_identity(&user(), || ran = true);
            let err = result.expect_err("switched without CAP_SETUID");
            assert!(err.to_string().contains("filesystem uid"), "{err}");
            assert!(!ran, "the work ran with the wrong identity");
            // The groups and gid that did change were put back.
            assert_eq!(identity_now(), before);
        })
        .join()
        .unwrap();
    }
}
