//! Mounts for building a sandbox's root filesystem, and loop devices for bounded disks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use nix::mount::MsFlags;
use nix::mount::{mount, umount2, MntFlags};

fn err(op: &str, target: &Path, e: nix::Error) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{op} {}: {e}", target.display()),
    )
}

/// Mounts a filesystem of type `fstype`.
pub fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| err("mount", target, e))
}

/// Bind-mounts `source` on `target`, recursively, read-only when asked. A read-only bind
/// needs a second remount: the kernel ignores MS_RDONLY on the first bind call.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> io::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .map_err(|e| err("bind", target, e))?;
    if readonly {
        remount_readonly(target, MsFlags::empty())?;
    }
    Ok(())
}

/// Makes an existing mount read-only, keeping `extra` flags (nosuid, nodev, noexec).
/// Flags a user namespace may not clear (locked ones) are carried over from the mount.
pub fn remount_readonly(target: &Path, extra: MsFlags) -> io::Result<()> {
    let locked = locked_flags(target).unwrap_or(MsFlags::empty());
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra | locked;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| err("remount read-only", target, e))
}

fn locked_flags(target: &Path) -> io::Result<MsFlags> {
    let st = nix::sys::statvfs::statvfs(target).map_err(io::Error::from)?;
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    Ok(out)
}

/// Sets the propagation of every mount below `target` (MS_PRIVATE, MS_SLAVE, ...).
pub fn set_propagation(target: &Path, kind: MsFlags) -> io::Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        kind | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| err("set propagation of", target, e))
}

/// Mounts an overlay on `dir/root` whose options name its layers by short paths inside
/// `dir` instead of their paths on the host. Every process in the sandbox can read those
/// options in /proc/self/mountinfo; the host's directory layout is none of its business.
///
/// The kernel records each layer as the path it resolves to from the caller's root. So
/// each lower layer is bind-mounted at `dir/.lower/N` and `rw` (the directory holding
/// `upper` and `work`) at `dir/.rw`, the caller's root moves to `dir` for the one mount
/// call and back, and the bind mounts are dropped again at once: the overlay holds its
/// layers by reference. With `idmap`, those binds show the layers' owners through that
/// user namespace's maps (see [`DetachedMount::idmap`]), so files stored under one range
/// of ids appear, and are created, under the sandbox's own. The overlay itself honours no
/// device node, and no setuid bit unless `setuid` (a trusted template's). The caller must
/// be single-threaded and in a private mount namespace.
pub fn mount_overlay(
    dir: &Path,
    lowers: &[PathBuf],
    rw: &Path,
    idmap: Option<BorrowedFd<'_>>,
    setuid: bool,
) -> io::Result<()> {
    let staged = mount_overlay_staged(dir, lowers, rw, idmap, setuid)?;
    drop_staged(&staged);
    Ok(())
}

/// [`mount_overlay`], leaving the bind mounts of the layers where they are: each
/// unmount waits for an RCU grace period the kernel makes all CPUs take part in, and a
/// caller whose private mount namespace ends with it loses them all at once then. Returns
/// the directories staged, which hold nothing else: `dir/.lower`, then the binds. Each
/// is removed only as an empty directory ([`drop_staged`]): one still mounted shows a
/// layer, which a recursive removal would empty.
pub fn mount_overlay_staged(
    dir: &Path,
    lowers: &[PathBuf],
    rw: &Path,
    idmap: Option<BorrowedFd<'_>>,
    setuid: bool,
) -> io::Result<Vec<PathBuf>> {
    let staged = dir.join(".lower");
    std::fs::create_dir_all(&staged)?;
    let mut binds = Vec::new();
    let stage = |from: &Path, at: &Path| -> io::Result<()> {
        std::fs::create_dir_all(at)?;
        match idmap {
            Some(ns) => bind_idmapped(from, at, ns, MountAttrs::PLAIN),
            None => mount(Some(from), at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| err("bind", at, e)),
        }
    };
    let result = (|| {
        let mut lower = Vec::with_capacity(lowers.len());
        for (i, l) in lowers.iter().enumerate() {
            let at = staged.join(i.to_string());
            stage(l, &at)?;
            binds.push(at);
            lower.push(format!("/.lower/{i}"));
        }
        let at = dir.join(".rw");
        stage(rw, &at)?;
        binds.push(at);
        let opts = format!(
            "lowerdir={},upperdir=/.rw/upper,workdir=/.rw/work",
            lower.join(":")
        );
        let flags = if setuid {
            MsFlags::MS_NODEV
        } else {
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        };
        with_root(dir, || {
            mount(
                Some("overlay"),
                "/root",
                Some("overlay"),
                flags,
                Some(opts.as_str()),
            )
            .map_err(|e| err("mount overlay on", &dir.join("root"), e))
        })
    })();
    // First, so that it goes last: it holds the others.
    binds.insert(0, staged);
    if let Err(e) = result {
        drop_staged(&binds);
        return Err(e);
    }
    Ok(binds)
}

/// Unmounts the binds [`mount_overlay_staged`] left and removes their directories. Only
/// empty directories are removed: a bind mount that would not go away must not lead a
/// recursive removal into a template's layer.
pub fn drop_staged(staged: &[PathBuf]) {
    for b in staged.iter().rev() {
        let gone = match umount2(b, MntFlags::MNT_DETACH) {
            Ok(()) => true,
            // Not a mount point: `.lower` itself, or a bind that was never made.
            Err(nix::Error::EINVAL) => true,
            Err(_) => false,
        };
        if gone {
            let _ = std::fs::remove_dir(b);
        }
    }
}

/// Runs `f` with the process's root and working directory at `dir`, then puts both back.
fn with_root<T>(dir: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(p)
    };
    let old_root = open(Path::new("/"))?;
    let old_cwd = open(Path::new("."))?;
    nix::unistd::chroot(dir).map_err(|e| err("chroot", dir, e))?;
    let result = nix::unistd::chdir("/")
        .map_err(io::Error::from)
        .and_then(|()| f());
    // Back out: the saved descriptor of the old root is outside the new one, and chroot
    // to "." from there restores it.
    let back = nix::unistd::fchdir(old_root.as_raw_fd())
        .and_then(|()| nix::unistd::chroot("."))
        .and_then(|()| nix::unistd::fchdir(old_cwd.as_raw_fd()));
    if let Err(e) = back {
        return Err(io::Error::other(format!(
            "return from the staging root {}: {e}",
            dir.display()
        )));
    }
    result
}

/// Attributes of a mount, for [`DetachedMount::set_attrs`] (MOUNT_ATTR_* of
/// <linux/mount.h>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountAttrs {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

impl MountAttrs {
    /// What host directories shared into a sandbox get: read-only, no setuid, no devices.
    pub const PROTECTED: Self = Self {
        readonly: true,
        nosuid: true,
        nodev: true,
        noexec: false,
    };
    /// What a sandbox's own writable mounts get: no setuid, no devices.
    pub const PLAIN: Self = Self {
        readonly: false,
        nosuid: true,
        nodev: true,
        noexec: false,
    };

    fn bits(self) -> u64 {
        let mut b = 0;
        for (on, bit) in [
            (self.readonly, MOUNT_ATTR_RDONLY),
            (self.nosuid, MOUNT_ATTR_NOSUID),
            (self.nodev, MOUNT_ATTR_NODEV),
            (self.noexec, MOUNT_ATTR_NOEXEC),
        ] {
            if on {
                b |= bit;
            }
        }
        b
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of <linux/mount.h>.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A copy of a mount (tree) that is attached nowhere yet: its attributes and id mapping
/// can change before it is placed, and until it is placed nobody sees it. Dropped
/// unattached, it vanishes.
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
    recursive: bool,
}

fn path_cstr(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// Copies the mount at `source` (with what is mounted below it, when `recursive`) into
/// a detached mount: open_tree(2) with OPEN_TREE_CLONE.
pub fn clone_tree(source: &Path, recursive: bool) -> io::Result<DetachedMount> {
    clone_tree_at(libc::AT_FDCWD, source, recursive)
}

/// [`clone_tree`] of `path` relative to the directory `dirfd` (an empty path: `dirfd`
/// itself), so that the caller need not be able to walk to it from the root.
pub fn clone_tree_at(dirfd: RawFd, path: &Path, recursive: bool) -> io::Result<DetachedMount> {
    let c = path_cstr(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    if path.as_os_str().is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    // SAFETY: open_tree reads the NUL-terminated path, which outlives the call, and
    // returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(err_at("clone the mount at", path));
    }
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    Ok(DetachedMount { fd, recursive })
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// Mounts the filesystem of type `fstype` on the block device `device` as a detached
/// mount with `attrs` (fsopen, fsconfig, fsmount): in no namespace's table until it is
/// placed with [`DetachedMount::attach`], and unmounted when its descriptor closes
/// unplaced. One process can make it and another place it, in a namespace of its own.
pub fn mount_detached(device: &Path, fstype: &str, attrs: MountAttrs) -> io::Result<DetachedMount> {
    let kind = std::ffi::CString::new(fstype)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a type with a NUL byte"))?;
    let source = path_cstr(device)?;
    // SAFETY: fsopen reads the NUL-terminated type name, which outlives the call, and
    // returns a new descriptor or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, kind.as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(err_at("open a filesystem context for", device));
    }
    // SAFETY: fsopen returned a fresh descriptor that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let at = |what: &'static str| {
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", device.display()))
    };
    fsconfig(&fs, FSCONFIG_SET_STRING, Some((c"source", &source)))
        .map_err(at("name the device"))?;
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None).map_err(at("mount"))?;
    // SAFETY: fsmount takes the context's descriptor and flags, returns a new descriptor
    // or -1.
    let m = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attrs.bits() as libc::c_uint,
        )
    };
    if m < 0 {
        return Err(err_at("make a mount of", device));
    }
    // SAFETY: fsmount returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(m as RawFd) };
    Ok(DetachedMount {
        fd,
        recursive: false,
    })
}

/// One fsconfig(2) call on the context `fs`: `cmd` with a string key and value, or none.
fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    pair: Option<(&std::ffi::CStr, &std::ffi::CStr)>,
) -> io::Result<()> {
    let (key, value) = pair.map_or((std::ptr::null(), std::ptr::null()), |(k, v)| {
        (k.as_ptr(), v.as_ptr())
    });
    // SAFETY: fsconfig reads the NUL-terminated key and value (or takes none, null), which
    // outlive the call; the descriptor is an open filesystem context.
    let rc = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl From<OwnedFd> for DetachedMount {
    /// A detached mount received from another process (see [`mount_detached`]).
    fn from(fd: OwnedFd) -> Self {
        Self {
            fd,
            recursive: false,
        }
    }
}

fn err_at(what: &str, path: &Path) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl DetachedMount {
    fn setattr(&self, attr: &MountAttr) -> io::Result<()> {
        let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
        if self.recursive {
            flags |= AT_RECURSIVE;
        }
        // SAFETY: mount_setattr reads one `struct mount_attr` of the given size from a
        // live reference; the empty path names the descriptor itself.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                flags,
                attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets `attrs` on the mount (every mount of the tree when it was cloned
    /// recursively): unlike a remount, this reaches submounts too.
    pub fn set_attrs(&self, attrs: MountAttrs) -> io::Result<()> {
        self.setattr(&MountAttr {
            attr_set: attrs.bits(),
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        })
    }

    /// Shows the files' owners through `userns`'s id maps: an owner stored as id N on
    /// disk appears as whatever N maps to in `userns`, and files created through the
    /// mount are stored with the id that maps to their creator.
    pub fn idmap(&self, userns: BorrowedFd<'_>) -> io::Result<()> {
        self.setattr(&MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        })
    }

    /// Places the mount on `target`.
    pub fn attach(self, target: &Path) -> io::Result<()> {
        self.attach_at(libc::AT_FDCWD, target)
    }

    /// Places the mount on `path` relative to `dirfd` (an empty path: on `dirfd` itself).
    pub fn attach_at(self, dirfd: RawFd, path: &Path) -> io::Result<()> {
        let c = path_cstr(path)?;
        let mut flags = MOVE_MOUNT_F_EMPTY_PATH;
        if path.as_os_str().is_empty() {
            flags |= MOVE_MOUNT_T_EMPTY_PATH;
        }
        // SAFETY: move_mount reads the NUL-terminated paths, which outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                dirfd,
                c.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            return Err(err_at("place a mount on", path));
        }
        Ok(())
    }

    /// The mount's root, e.g. to change into once it is placed.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Bind-mounts `source` on `target` (recursively) with `attrs` on every mount of the
/// copy, submounts included.
pub fn bind_with(source: &Path, target: &Path, attrs: MountAttrs) -> io::Result<()> {
    let m = clone_tree(source, true)?;
    m.set_attrs(attrs)
        .map_err(|e| io::Error::new(e.kind(), format!("protect {}: {e}", source.display())))?;
    m.attach(target)
}

/// Bind-mounts `source` on `target`, its owners shown through `userns` (see
/// [`DetachedMount::idmap`]) and with `attrs`. Not recursive: what is mounted below
/// `source` stays out.
pub fn bind_idmapped(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    attrs: MountAttrs,
) -> io::Result<()> {
    let m = clone_tree(source, false)?;
    m.idmap(userns)
        .map_err(|e| io::Error::new(e.kind(), format!("idmap {}: {e}", source.display())))?;
    m.set_attrs(attrs)
        .map_err(|e| io::Error::new(e.kind(), format!("protect {}: {e}", source.display())))?;
    m.attach(target)
}

/// `struct open_how` of <linux/openat2.h>.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens the directory at the absolute `path` as an `O_PATH` descriptor, refusing any
/// symlink on the way (openat2 with RESOLVE_NO_SYMLINKS): a path recorded once resolved
/// keeps naming what it named, and a link planted on it since makes the open fail
/// instead of leading elsewhere. Mount from the descriptor ([`clone_tree_at`] with an
/// empty path) and nothing can be swapped in between the check and the mount.
pub fn open_dir_no_symlinks(path: &Path) -> io::Result<OwnedFd> {
    let c = path_cstr(path)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads the NUL-terminated path and one `struct open_how` of the
    // given size, both live for the call, and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        // Left bare, for its errno: ELOOP is a symlink met on the way.
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens the directory at `path` as an `O_PATH` descriptor, following symlinks, and
/// tells where it is: the path the kernel knows the opened directory by, with no
/// symlink left in it.
pub fn resolve_dir(path: &Path) -> io::Result<(OwnedFd, PathBuf)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    let fd: OwnedFd = f.into();
    let at = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok((fd, at))
}

/// Unmounts lazily.
pub fn unmount(target: &Path) -> io::Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(|e| err("unmount", target, e))
}

/// The major number of loop devices (`<linux/major.h>`).
const LOOP_MAJOR: u32 = 7;

/// A loop device told that it keeps no writes in a cache of its own (see
/// [`write_through`]), held open so that it stays bound to its file. Dropped, it is told
/// it caches again (the kernel keeps the setting for whatever file the device is given
/// next) and then let go of, which lets a device with autoclear clear itself.
#[derive(Debug)]
pub struct WriteThrough {
    knob: PathBuf,
    _dev: File,
}

impl Drop for WriteThrough {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.knob, "write back");
    }
}

/// Tells the loop device under the filesystem mounted at `mount` that it keeps no
/// writes in a cache ("write through"): the block layer then drops the flushes and
/// forced writes the filesystem sends, and what it writes stays in its image file's
/// page cache until the host writes it back. For a disk whose image is removed next:
/// an ext4 unmount's journal commit and superblock write (some ten flushes and thirty
/// writes, each flush an `fsync` of the image on the host) then never reach the host's
/// disk. Never for a filesystem whose image is kept: an `fsync` inside would no longer
/// make anything durable. `None` when `mount` is not on a loop device.
pub fn write_through(mount: &Path) -> io::Result<Option<WriteThrough>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dev = std::fs::metadata(mount)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major != LOOP_MAJOR {
        return Ok(None);
    }
    // Held open, the device stays bound to this file until the setting is undone.
    let node = PathBuf::from(format!("/dev/loop{minor}"));
    let held = File::open(&node)?;
    let meta = held.metadata()?;
    if !meta.file_type().is_block_device() || meta.rdev() != dev {
        return Err(io::Error::other(format!(
            "{} is not the device of {}",
            node.display(),
            mount.display()
        )));
    }
    hold_write_through(minor, held).map(Some)
}

/// [`write_through`] for the loop device the image file open as `img` is attached to,
/// found through the device the file's attribute names and checked against the file: for
/// a disk whose mounts belong to another process (an OCI runtime's). `None` when no
/// device has the file.
pub fn write_through_image(img: &File) -> io::Result<Option<WriteThrough>> {
    let meta = img.metadata()?;
    let Some(n) = recorded_loop(img) else {
        return Ok(None);
    };
    let Some(dev) = bound_to(n, &meta) else {
        return Ok(None);
    };
    hold_write_through(n, dev._dev).map(Some)
}

/// Sets loop device `n`, which `held` keeps bound, to "write through".
fn hold_write_through(n: u32, held: File) -> io::Result<WriteThrough> {
    let knob = PathBuf::from(format!("/sys/block/loop{n}/queue/write_cache"));
    std::fs::write(&knob, "write through")
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", knob.display())))?;
    Ok(WriteThrough { knob, _dev: held })
}

/// Undoes a "write through" a device kept from an earlier binding (a process that died
/// holding a [`WriteThrough`]): the file just attached gets its flushes.
fn cache_writes(n: libc::c_int) {
    let knob = format!("/sys/block/loop{n}/queue/write_cache");
    if std::fs::read_to_string(&knob).is_ok_and(|v| v.trim() == "write through") {
        let _ = std::fs::write(&knob, "write back");
    }
}

// From <linux/loop.h>.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to a backing file. It clears itself when its last user (the mount
/// made from it) goes away, so a crashed sandbox cannot leave it behind.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    // Held until the mount exists: autoclear fires when the last open or mount is gone.
    _dev: File,
}

/// Attaches `backing` to a free loop device with autoclear set; or, when a loop device
/// already has that file (a volume two sandboxes mount at once), gives that one: one
/// file system mounted from two devices would be two caches writing one disk, and
/// corrupt it. Mounted from one device it is one file system, however often mounted.
///
/// `fresh` says the file was just made by the caller, so no device can have it. Else
/// the device is found through the file's `user.warren.loop` attribute, which every
/// attach here sets under the lock below: only the device it names can have the file.
/// A file without it (attached before the attribute, or on a filesystem without
/// extended attributes) is looked for in every loop device, one read each: linear in
/// the devices the host ever made, some 9 ms at a thousand.
pub fn attach_loop(backing: &Path, fresh: bool) -> io::Result<LoopDevice> {
    let name = backing;
    let backing = OpenOptions::new().read(true).write(true).open(backing)?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Two attaches at once are given the same free device and all but one fail: every
    // Warren process (each sandbox's helper attaches its own) takes turns on this lock,
    // held for the few calls below. Another program's attach can still race one: retry.
    let _turn = nix::fcntl::Flock::lock(ctl, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))?;
    let ctl = &*_turn;
    if !fresh {
        let meta = backing.metadata()?;
        let found = match recorded_loop(&backing) {
            Some(n) => bound_to(n, &meta),
            None => loop_of(name, &meta),
        };
        if let Some(dev) = found {
            return Ok(dev);
        }
    }
    for attempt in 0..LOOP_TRIES {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(attempt as u64));
        }
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1;
        // the descriptor is valid for the duration of the call.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new().read(true).write(true).open(&path)?;
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which LoopConfig mirrors
        // field for field (repr(C)); the pointer is valid for the call and not retained.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            record_loop(&backing, n);
            cache_writes(n);
            return Ok(LoopDevice { path, _dev: dev });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("no free loop device after {LOOP_TRIES} tries"),
    ))
}

/// Tells the ext4 filesystem mounted from the block device at `dev` not to read the
/// bitmaps of other block groups ahead when it allocates: on a fresh disk the first
/// allocation (its writable layer's directories) otherwise reads and indexes every
/// group's (a 4 GiB disk's 32: some 0.1-0.2 ms of CPU, and 380 KiB of page cache for as
/// long as it is mounted), where the group it asks first has the room.
pub fn ext4_no_bitmap_prefetch(dev: &Path) -> io::Result<()> {
    let name = dev
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no device", dev.display())))?;
    std::fs::write(
        Path::new("/sys/fs/ext4").join(name).join("mb_prefetch"),
        "0",
    )
}

/// The extended attribute of a backing file naming the loop device last attached to it.
const LOOP_ATTR: &str = "user.warren.loop";

/// The device number the backing file's attribute names; none when it has no readable
/// one (never attached here, or a filesystem without extended attributes).
fn recorded_loop(backing: &File) -> Option<u32> {
    use xattr::FileExt;
    let v = backing.get_xattr(LOOP_ATTR).ok()??;
    std::str::from_utf8(&v).ok()?.parse().ok()
}

/// Names device `n` in the backing file's attribute. A name that cannot be written is
/// removed, so that it cannot point away from the device that has the file; a file
/// left without one is searched for (see [`loop_of`]).
fn record_loop(backing: &File, n: libc::c_int) {
    use xattr::FileExt;
    if backing
        .set_xattr(LOOP_ATTR, n.to_string().as_bytes())
        .is_err()
    {
        let _ = backing.remove_xattr(LOOP_ATTR);
    }
}

/// The loop device bound to the file `meta` describes (at `path`), opened, so that it
/// stays bound until the caller's mount of it exists; none if no device has it.
fn loop_of(path: &Path, meta: &std::fs::Metadata) -> Option<LoopDevice> {
    let want = std::fs::canonicalize(path).ok()?;
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let dev = e.file_name().to_string_lossy().into_owned();
        let Some(n) = dev.strip_prefix("loop").and_then(|n| n.parse().ok()) else {
            continue;
        };
        // The name narrows it down; the device and inode numbers decide.
        let Ok(file) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(file.trim_end()) != want {
            continue;
        }
        if let Some(found) = bound_to(n, meta) {
            return Some(found);
        }
    }
    None
}

/// Loop device `n`, opened, when the file `meta` describes is bound to it.
fn bound_to(n: u32, meta: &std::fs::Metadata) -> Option<LoopDevice> {
    use std::os::unix::fs::MetadataExt;
    let path = PathBuf::from(format!("/dev/loop{n}"));
    let f = OpenOptions::new().read(true).write(true).open(&path).ok()?;
    // SAFETY: all-zero is a valid LoopInfo64 (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which LoopInfo64
    // mirrors (repr(C)); the pointer is valid for the call and not retained.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    };
    // Read after the open: a device being cleared, or free, answers ENXIO.
    (r == 0 && info.lo_device == meta.dev() && info.lo_inode == meta.ino())
        .then_some(LoopDevice { path, _dev: f })
}

/// How often [`attach_loop`] asks for another free device when one it was given was
/// taken by another program first.
const LOOP_TRIES: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use xattr::FileExt;

    /// A sparse backing file of 16 MiB in a new directory.
    fn backing() -> (tempfile::TempDir, PathBuf) {
        backing_of(16 << 20)
    }

    /// A sparse file of `len` bytes in a temporary directory.
    fn backing_of(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        File::create(&img).unwrap().set_len(len).unwrap();
        (dir, img)
    }

    /// [`backing`] made an ext4 filesystem; `None`, the test skipped, without mkfs.ext4.
    fn ext4_backing(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
        ext4_backing_of(test, 16 << 20)
    }

    /// [`backing_of`] `len` bytes made an ext4 filesystem (its inode tables and journal
    /// left to be zeroed lazily, as Warren's disks are); `None`, the test skipped, without
    /// mkfs.ext4.
    fn ext4_backing_of(test: &str, len: u64) -> Option<(tempfile::TempDir, PathBuf)> {
        let (dir, img) = backing_of(len);
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(&img)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            warren_testkit::skip(test, "no mkfs.ext4");
            return None;
        }
        Some((dir, img))
    }

    #[test]
    fn a_fresh_disks_first_allocation_reads_no_other_groups_bitmap() {
        let name = "mount::a_fresh_disks_first_allocation_reads_no_other_groups_bitmap";
        if !warren_testkit::needs_root(name, "attaching loop devices") {
            return;
        }
        // Eight block groups of 128 MiB.
        let Some((_dir, img)) = ext4_backing_of(name, 1 << 30) else {
            return;
        };
        let dev = attach_loop(&img, true).unwrap();
        let m = mount_detached(&dev.path, "ext4", MountAttrs::PLAIN).unwrap();
        ext4_no_bitmap_prefetch(&dev.path).unwrap();
        let sys = Path::new("/sys/fs/ext4").join(dev.path.file_name().unwrap());
        let prefetch = std::fs::read_to_string(sys.join("mb_prefetch")).unwrap();
        assert_eq!(prefetch.trim(), "0");
        // Counted (`mb_stats`): after its first allocation the filesystem has indexed
        // one group's free blocks (built its buddy), not the other seven's.
        std::fs::write(sys.join("mb_stats"), "1").unwrap();
        let root = PathBuf::from(format!("/proc/self/fd/{}", m.as_fd().as_raw_fd()));
        std::fs::create_dir(root.join("d")).unwrap();
        let stats = Path::new("/proc/fs/ext4")
            .join(dev.path.file_name().unwrap())
            .join("mb_stats");
        let stats = std::fs::read_to_string(stats).unwrap();
        let built = stats
            .lines()
            .find_map(|l| l.trim().strip_prefix("buddies_generated:"))
            .unwrap_or_else(|| panic!("no buddies_generated in {stats}"))
            .trim();
        assert_eq!(built, "1/8", "{stats}");
        drop((m, dev));
    }

    #[test]
    fn a_file_attached_twice_is_given_the_device_it_has() {
        if !warren_testkit::needs_root(
            "mount::a_file_attached_twice_is_given_the_device_it_has",
            "attaching loop devices",
        ) {
            return;
        }
        let (_dir, img) = backing();
        let first = attach_loop(&img, true).unwrap();
        let again = attach_loop(&img, false).unwrap();
        assert_eq!(again.path, first.path, "one file, one device");
        // The device is found through the attribute, not by reading every device.
        let recorded = recorded_loop(&File::open(&img).unwrap()).unwrap();
        assert_eq!(first.path, PathBuf::from(format!("/dev/loop{recorded}")));
        // A name that points elsewhere (the device cleared and taken by another file)
        // is checked, not believed: a new device is attached and named instead.
        let (_other_dir, other) = backing();
        let taken = attach_loop(&other, true).unwrap();
        drop((first, again));
        let n = taken
            .path
            .to_string_lossy()
            .trim_start_matches("/dev/loop")
            .to_string();
        File::open(&img)
            .unwrap()
            .set_xattr(LOOP_ATTR, n.as_bytes())
            .unwrap();
        let fresh = attach_loop(&img, false).unwrap();
        assert_ne!(
            fresh.path, taken.path,
            "another file's device is never given"
        );
        let recorded = recorded_loop(&File::open(&img).unwrap()).unwrap();
        assert_eq!(fresh.path, PathBuf::from(format!("/dev/loop{recorded}")));
    }

    #[test]
    fn a_file_without_the_attribute_is_found_by_its_device_and_inode() {
        if !warren_testkit::needs_root(
            "mount::a_file_without_the_attribute_is_found_by_its_device_and_inode",
            "attaching loop devices",
        ) {
            return;
        }
        let (_dir, img) = backing();
        let first = attach_loop(&img, true).unwrap();
        // As a file attached before the attribute existed.
        File::open(&img).unwrap().remove_xattr(LOOP_ATTR).unwrap();
        let again = attach_loop(&img, false).unwrap();
        assert_eq!(again.path, first.path);
    }

    #[test]
    fn a_detached_mount_is_placed_elsewhere_or_gone_with_its_descriptor() {
        let test = "mount::a_detached_mount_is_placed_elsewhere_or_gone_with_its_descriptor";
        if !warren_testkit::needs_root(test, "attaching loop devices and mounting") {
            return;
        }
        let Some((dir, img)) = ext4_backing(test) else {
            return;
        };
        let bound = |dev: &Path| {
            let name = dev.file_name().unwrap().to_string_lossy().into_owned();
            Path::new("/sys/block")
                .join(name)
                .join("loop/backing_file")
                .exists()
        };
        // Unplaced, it goes with its descriptor, and its loop device with it.
        let dev = attach_loop(&img, true).unwrap();
        let m = mount_detached(&dev.path, "ext4", MountAttrs::PLAIN).unwrap();
        let path = dev.path.clone();
        drop(dev);
        assert!(bound(&path));
        drop(m);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bound(&path) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!bound(&path), "{} still bound", path.display());
        // Made here, placed in another mount namespace (a thread's own), written there.
        let dev = attach_loop(&img, true).unwrap();
        let m = mount_detached(&dev.path, "ext4", MountAttrs::PLAIN).unwrap();
        drop(dev);
        let at = dir.path().join("at");
        std::fs::create_dir(&at).unwrap();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            set_propagation(Path::new("/"), MsFlags::MS_PRIVATE).unwrap();
            m.attach(&at).unwrap();
            std::fs::write(at.join("f"), "x").unwrap();
            assert!(at.join("lost+found").is_dir(), "not the image's filesystem");
            umount2(&at, MntFlags::empty()).unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_disk_made_write_through_sends_its_device_no_flush() {
        let test = "mount::a_disk_made_write_through_sends_its_device_no_flush";
        if !warren_testkit::needs_root(test, "attaching loop devices and mounting") {
            return;
        }
        let Some((dir, img)) = ext4_backing(test) else {
            return;
        };
        let dev = attach_loop(&img, true).unwrap();
        let m = mount_detached(&dev.path, "ext4", MountAttrs::PLAIN).unwrap();
        let sys = Path::new("/sys/block").join(dev.path.file_name().unwrap());
        let flushes = || {
            let stat = std::fs::read_to_string(sys.join("stat")).unwrap();
            stat.split_whitespace()
                .nth(15)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let cache = || std::fs::read_to_string(sys.join("queue/write_cache")).unwrap();
        let root = PathBuf::from(format!("/proc/self/fd/{}", m.as_fd().as_raw_fd()));
        let synced_write = |name: &str| {
            let f = File::create(root.join(name)).unwrap();
            std::io::Write::write_all(&mut &f, b"x").unwrap();
            f.sync_all().unwrap();
        };
        assert_eq!(cache().trim(), "write back");
        let before = flushes();
        synced_write("a");
        assert!(
            flushes() > before,
            "an fsync flushes the device while it caches"
        );
        let held = write_through(&root).unwrap().unwrap();
        assert_eq!(cache().trim(), "write through");
        let before = flushes();
        synced_write("b");
        assert_eq!(flushes(), before, "no flush reaches the device");
        // Unmounted, the device stays bound while held, and caches again once let go.
        drop((m, dev));
        assert!(sys.join("loop/backing_file").exists());
        drop(held);
        assert_eq!(cache().trim(), "write back");
        // A device a process left "write through" (it died holding it) caches again
        // for the next file attached to it.
        let dev = attach_loop(&img, true).unwrap();
        let n: libc::c_int = dev.path.to_string_lossy()["/dev/loop".len()..]
            .parse()
            .unwrap();
        let knob = Path::new("/sys/block")
            .join(dev.path.file_name().unwrap())
            .join("queue/write_cache");
        std::fs::write(&knob, "write through").unwrap();
        cache_writes(n);
        assert_eq!(std::fs::read_to_string(&knob).unwrap().trim(), "write back");
        // Not a loop device: nothing to do, nothing done.
        assert!(write_through(dir.path()).unwrap().is_none());
    }
}
