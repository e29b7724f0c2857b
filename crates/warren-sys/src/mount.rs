//! Mounts for building a sandbox's root filesystem, and loop devices for bounded disks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
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
/// each lower layer is bind-mounted at `dir/.lower/N` (and `rw`, the directory holding
/// `upper` and `work`, at `dir/.rw` unless it is inside `dir` already), the caller's root
/// moves to `dir` for the one mount call and back, and the bind mounts are dropped again
/// at once: the overlay holds its layers by reference. The caller must be single-threaded
/// and in a private mount namespace.
pub fn mount_overlay(dir: &Path, lowers: &[PathBuf], rw: &Path) -> io::Result<()> {
    let staged = dir.join(".lower");
    std::fs::create_dir_all(&staged)?;
    let mut binds = Vec::new();
    let result = (|| {
        let mut lower = Vec::with_capacity(lowers.len());
        for (i, l) in lowers.iter().enumerate() {
            let at = staged.join(i.to_string());
            std::fs::create_dir_all(&at)?;
            mount(Some(l), &at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| err("bind", &at, e))?;
            binds.push(at);
            lower.push(format!("/.lower/{i}"));
        }
        let rw_inside = match rw.strip_prefix(dir) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => {
                let at = dir.join(".rw");
                std::fs::create_dir_all(&at)?;
                mount(Some(rw), &at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| err("bind", &at, e))?;
                binds.push(at);
                PathBuf::from("/.rw")
            }
        };
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            rw_inside.join("upper").display(),
            rw_inside.join("work").display()
        );
        with_root(dir, || {
            mount(
                Some("overlay"),
                "/root",
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .map_err(|e| err("mount overlay on", &dir.join("root"), e))
        })
    })();
    // Only empty directories are removed: a bind mount that would not go away must not
    // lead a recursive removal into a template's layer.
    for b in binds.iter().rev() {
        if umount2(b, MntFlags::MNT_DETACH).is_ok() {
            let _ = std::fs::remove_dir(b);
        }
    }
    let _ = std::fs::remove_dir(&staged);
    result
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

/// Unmounts lazily.
pub fn unmount(target: &Path) -> io::Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(|e| err("unmount", target, e))
}

// From <linux/loop.h>.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
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

/// Attaches `backing` to a free loop device with autoclear set.
pub fn attach_loop(backing: &Path) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new().read(true).write(true).open(backing)?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // A concurrent attach may take the device we were given; retry with the next one.
    for _ in 0..16 {
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
            return Ok(LoopDevice { path, _dev: dev });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "no free loop device after 16 tries",
    ))
}
