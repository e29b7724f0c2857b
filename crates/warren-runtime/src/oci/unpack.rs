//! One image layer (a tar stream) unpacked into a directory in overlayfs's own format, so
//! the directory can be stacked as a lower layer as it is.
//!
//! The archive is untrusted and this code runs as host root, so nothing in it is taken
//! on faith:
//!
//! - every path is cleaned first: `..` and absolute names are refused, never joined;
//! - parents are walked one component at a time and a symbolic link met on the way is
//!   refused, so no entry (nor a hard link's target) is ever written through a link. A
//!   link itself is kept whatever it points to: it is resolved later, inside the
//!   sandbox's own root, where `/etc` is the sandbox's and `../../..` stops at its `/`;
//! - files are created with `O_EXCL | O_NOFOLLOW` after the old entry is removed;
//! - device nodes are skipped (a sandbox gets its own /dev) and setuid and setgid bits
//!   are cleared (sandboxes run with `no_new_privs`, so they would grant nothing), unless
//!   the operator imports a template whose setuid programs it trusts
//!   ([`Options::keep_setid`]); such a binary is owned by the sandboxes' id range and
//!   lies in the data directory, which only host root may enter;
//! - owners are shifted into the sandboxes' id range (`id_base + uid`); ids past the
//!   65536 a sandbox maps would show as `nobody` anyway, and are clamped to it;
//! - extended attributes of entries are dropped: `trusted.overlay.*` ones would steer
//!   the overlay, and file capabilities would be set by host root;
//! - the bytes the stream decompresses to and the number of entries are bounded, across
//!   all layers of one import (a decompression bomb stops at the bound).
//!
//! Whiteouts become overlayfs whiteouts: `.wh.NAME` a character device 0/0 named NAME,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its directory.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use serde::{Deserialize, Serialize};

use crate::ID_COUNT;

/// The id files owned by unmappable ids are given (`nobody`).
const NOBODY: u32 = 65_534;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The attribute overlayfs reads to hide what lower layers hold under a directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Bounds on what one import may unpack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the layers decompress to, all layers together.
    pub max_bytes: u64,
    /// Entries, all layers together.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// What is left of the limits while an import goes on.
#[derive(Debug, Clone)]
pub struct Budget {
    pub limits: Limits,
    /// Bytes read from the layers' tar streams.
    pub bytes_used: u64,
    /// Bytes the files of the layers hold, as written: a sparse entry's holes count as
    /// the zeros they become, though the archive stores none of them.
    pub bytes_written: u64,
    pub entries_used: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            bytes_used: 0,
            bytes_written: 0,
            entries_used: 0,
        }
    }
}

/// How entries are written.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Owners become `id_base + uid`; `None` leaves files to the unpacking user (unit
    /// tests without root).
    pub id_base: Option<u32>,
    /// Keep setuid and setgid bits (a trusted template's `sudo`).
    pub keep_setid: bool,
}

/// What unpacking a layer did, beyond writing the files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Device nodes not created.
    pub skipped_devices: Vec<String>,
    /// Files whose setuid or setgid bit was cleared.
    pub stripped_setid: Vec<String>,
    /// Entries whose owner was past the mapped range, now `nobody`.
    pub clamped_owners: u64,
}

/// Why a layer was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refused entry {path:?}: {why}")]
    Unsafe { path: String, why: String },
    #[error(
        "the image unpacks to more than {limit} bytes (a decompression bomb?); \
         raise the import's size limit if the image is genuinely that large"
    )]
    TooLarge { limit: u64 },
    #[error(
        "the image has more than {limit} entries; raise the import's entry limit if it is \
         genuine"
    )]
    TooManyEntries { limit: u64 },
    #[error("the layer is not a readable tar archive: {0}")]
    Tar(#[source] io::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let what = what.into();
    move |source| UnpackError::Io { what, source }
}

fn unsafe_entry(path: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        path: path.to_string(),
        why: why.into(),
    }
}

/// Counts the bytes a decompressor yields and fails once the budget is spent; the flag
/// tells the caller that the error came from here and not from the data.
struct Bounded<R> {
    inner: R,
    left: u64,
    used: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.used += n as u64;
        if self.used > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("size limit reached"));
        }
        Ok(n)
    }
}

/// Unpacks the tar stream `reader` into `dest` (an existing, empty directory),
/// charging `budget`. `reader` is read to its end, so a digest computed around it is
/// complete.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: Options,
    budget: &mut Budget,
) -> Result<Report, UnpackError> {
    let exceeded = Rc::new(Cell::new(false));
    let bounded = Bounded {
        inner: reader,
        left: budget.limits.max_bytes.saturating_sub(budget.bytes_used),
        used: 0,
        exceeded: exceeded.clone(),
    };
    let mut archive = tar::Archive::new(bounded);
    let too_large = UnpackError::TooLarge {
        limit: budget.limits.max_bytes,
    };
    let mut report = Report::default();
    let entries = archive.entries().map_err(UnpackError::Tar)?;
    let r = (|| {
        for entry in entries {
            let entry = entry.map_err(UnpackError::Tar)?;
            budget.entries_used += 1;
            if budget.entries_used > budget.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: budget.limits.max_entries,
                });
            }
            report.entries += 1;
            // What the entry will be on disk, before a byte is written: a 10 KiB archive
            // may describe a sparse file near 2^63 bytes.
            budget.bytes_written = budget.bytes_written.saturating_add(entry.size());
            if budget.bytes_written > budget.limits.max_bytes {
                return Err(UnpackError::TooLarge {
                    limit: budget.limits.max_bytes,
                });
            }
            apply(entry, dest, opts, &mut report)?;
        }
        Ok(())
    })();
    let mut rest = archive.into_inner();
    let r = r.and_then(|()| {
        // The end-of-archive blocks and any padding: read so the digests cover them.
        io::copy(&mut rest, &mut io::sink())
            .map(drop)
            .map_err(UnpackError::Tar)
    });
    budget.bytes_used += rest.used;
    match r {
        Err(_) if exceeded.get() => Err(too_large),
        other => other.map(|()| report),
    }
}

/// The path's components, or why it is refused.
fn clean(raw: &Path) -> Result<Vec<OsString>, UnpackError> {
    let shown = raw.display().to_string();
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                return Err(unsafe_entry(&shown, "its path climbs out with \"..\""))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(
                    &shown,
                    "its path is absolute; layer entries are relative to the image's root",
                ))
            }
        }
    }
    Ok(out)
}

/// `dest` joined with `dirs`, each an existing real directory or made one; a symbolic
/// link or a file on the way is refused. A whiteout met on the way (an earlier entry
/// deleted the directory, a later one recreates it) becomes an opaque directory.
fn parent_dir(
    dest: &Path,
    dirs: &[OsString],
    shown: &str,
    opts: Options,
) -> Result<PathBuf, UnpackError> {
    let mut p = dest.to_path_buf();
    for c in dirs {
        p.push(c);
        match p.symlink_metadata() {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(unsafe_entry(
                    shown,
                    format!(
                        "it lies under {:?}, a symbolic link; entries are never written \
                         through links",
                        p.strip_prefix(dest).unwrap_or(&p)
                    ),
                ))
            }
            Ok(m) if is_whiteout(&m) => {
                fs::remove_file(&p).map_err(io_err(format!("replace {}", p.display())))?;
                make_dir(&p, 0o755, opts, (0, 0))?;
                set_opaque(&p)?;
            }
            Ok(_) => {
                return Err(unsafe_entry(
                    shown,
                    format!(
                        "its parent {:?} is not a directory",
                        p.strip_prefix(dest).unwrap_or(&p)
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_dir(&p, 0o755, opts, (0, 0))?;
            }
            Err(e) => return Err(io_err(format!("inspect {}", p.display()))(e)),
        }
    }
    Ok(p)
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == 0
}

fn make_dir(p: &Path, mode: u32, opts: Options, owner: (u32, u32)) -> Result<(), UnpackError> {
    fs::create_dir(p).map_err(io_err(format!("create {}", p.display())))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", p.display())))?;
    chown(p, opts, owner)
}

fn chown(p: &Path, opts: Options, (uid, gid): (u32, u32)) -> Result<(), UnpackError> {
    if let Some(base) = opts.id_base {
        lchown(p, Some(base + uid), Some(base + gid))
            .map_err(io_err(format!("chown {}", p.display())))?;
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> Result<(), UnpackError> {
    xattr::set(dir, OPAQUE_XATTR, b"y").map_err(io_err(format!(
        "mark {} opaque (the data directory's filesystem must support trusted xattrs)",
        dir.display()
    )))
}

/// Removes whatever is at `p` (a whole directory too) so a new entry can take its place.
fn clear(p: &Path) -> Result<(), UnpackError> {
    match p.symlink_metadata() {
        Ok(m) if m.file_type().is_dir() => {
            crate::tree::remove(p).map_err(io_err(format!("replace {}", p.display())))
        }
        Ok(_) => fs::remove_file(p).map_err(io_err(format!("replace {}", p.display()))),
        Err(_) => Ok(()),
    }
}

fn owner_of<R: Read>(entry: &tar::Entry<'_, R>, report: &mut Report) -> (u32, u32) {
    let h = entry.header();
    let mut clamp = |id: Option<u64>| match id {
        Some(id) if id < u64::from(ID_COUNT) => id as u32,
        _ => {
            report.clamped_owners += 1;
            NOBODY
        }
    };
    let uid = clamp(h.uid().ok());
    let gid = clamp(h.gid().ok());
    (uid, gid)
}

fn apply<R: Read>(
    mut entry: tar::Entry<'_, R>,
    dest: &Path,
    opts: Options,
    report: &mut Report,
) -> Result<(), UnpackError> {
    let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
    let shown = raw.display().to_string();
    let comps = clean(&raw)?;
    let kind = entry.header().entry_type();
    let owner = owner_of(&entry, report);
    let mode = entry.header().mode().map_err(UnpackError::Tar)? & 0o7777;
    let Some((name, dirs)) = comps.split_last() else {
        // "./": the image's root directory itself.
        if kind.is_dir() {
            fs::set_permissions(dest, fs::Permissions::from_mode(mode & 0o1777))
                .map_err(io_err("chmod the layer's root"))?;
            chown(dest, opts, owner)?;
        }
        return Ok(());
    };
    let name_bytes = name.as_bytes();
    let parent = parent_dir(dest, dirs, &shown, opts)?;
    if name_bytes == OPAQUE_MARKER.as_bytes() {
        set_opaque(&parent)?;
        report.opaque_dirs += 1;
        return Ok(());
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        // `.wh..wh.*` other than the opaque marker are aufs bookkeeping: nothing to do.
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
            return Ok(());
        }
        // `.wh..` and `.wh...` name the directory itself and its parent: clearing them
        // would delete the layer, or whatever holds it, outside the destination.
        if hidden == b"." || hidden == b".." {
            return Err(unsafe_entry(
                &shown,
                "a whiteout of \".\" or \"..\" would remove a directory, not an entry",
            ));
        }
        let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
        clear(&target)?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
            io_err(format!(
                "create the whiteout {} (needs root)",
                target.display()
            ))(e.into())
        })?;
        chown(&target, opts, (0, 0))?;
        report.whiteouts += 1;
        return Ok(());
    }
    let path = parent.join(name);
    use tar::EntryType as T;
    match kind {
        T::Directory => {
            match path.symlink_metadata() {
                Ok(m) if m.file_type().is_dir() => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o3777))
                        .map_err(io_err(format!("chmod {}", path.display())))?;
                    chown(&path, opts, owner)?;
                }
                _ => {
                    clear(&path)?;
                    make_dir(&path, mode & 0o3777, opts, owner)?;
                }
            }
            return Ok(());
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            clear(&path)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err(format!("create {}", path.display())))?;
            io::copy(&mut entry, &mut f).map_err(UnpackError::Tar)?;
            drop(f);
            let kept = if mode & 0o6000 != 0 && !opts.keep_setid {
                report.stripped_setid.push(shown.clone());
                mode & !0o6000
            } else {
                mode
            };
            chown(&path, opts, owner)?;
            // After chown, which clears the bits anyway.
            fs::set_permissions(&path, fs::Permissions::from_mode(kept))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        T::Symlink => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Tar)?
                .ok_or_else(|| unsafe_entry(&shown, "a symbolic link without a target"))?
                .into_owned();
            clear(&path)?;
            symlink(&target, &path).map_err(io_err(format!("link {}", path.display())))?;
            chown(&path, opts, owner)?;
        }
        T::Link => {
            let raw_target = entry
                .link_name()
                .map_err(UnpackError::Tar)?
                .ok_or_else(|| unsafe_entry(&shown, "a hard link without a target"))?
                .into_owned();
            let tcomps = clean(&raw_target).map_err(|_| {
                unsafe_entry(
                    &shown,
                    format!("its hard link target {raw_target:?} is outside the image"),
                )
            })?;
            let Some((tname, tdirs)) = tcomps.split_last() else {
                return Err(unsafe_entry(&shown, "a hard link to the image's root"));
            };
            let tparent = parent_dir(dest, tdirs, &shown, opts)?;
            let target = tparent.join(tname);
            match target.symlink_metadata() {
                Ok(m) if m.file_type().is_file() || m.file_type().is_symlink() => {}
                _ => {
                    return Err(unsafe_entry(
                        &shown,
                        format!(
                            "its hard link target {raw_target:?} is not a file this layer \
                             holds"
                        ),
                    ))
                }
            }
            if target == path {
                return Ok(());
            }
            clear(&path)?;
            fs::hard_link(&target, &path).map_err(io_err(format!("link {}", path.display())))?;
            return Ok(());
        }
        T::Fifo => {
            clear(&path)?;
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(mode & 0o777))
                .map_err(|e| io_err(format!("create {}", path.display()))(e.into()))?;
            chown(&path, opts, owner)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o777))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        T::Char | T::Block => {
            report.skipped_devices.push(shown);
            return Ok(());
        }
        other => {
            return Err(unsafe_entry(
                &shown,
                format!("entries of type {other:?} are not supported in an image"),
            ))
        }
    }
    set_mtime(&path, &entry);
    Ok(())
}

fn set_mtime<R: Read>(path: &Path, entry: &tar::Entry<'_, R>) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let Ok(secs) = entry.header().mtime() else {
        return;
    };
    let t = TimeSpec::new(i64::try_from(secs).unwrap_or(0), 0);
    let _ = utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// An archive built entry by entry, with raw names (the tar crate's `append_data`
    /// refuses `..`, which is what these tests need to write).
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn entry(&mut self, name: &str, kind: tar::EntryType, mode: u32, data: &[u8]) {
            self.entry_owned(name, kind, mode, data, 0);
        }

        fn entry_owned(
            &mut self,
            name: &str,
            kind: tar::EntryType,
            mode: u32,
            data: &[u8],
            uid: u64,
        ) {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
        }

        fn link(&mut self, name: &str, kind: tar::EntryType, target: &str) {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(0o777);
            h.set_size(0);
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn run(bytes: &[u8], limits: Limits) -> (tempfile::TempDir, Result<Report, UnpackError>) {
        run_with(bytes, limits, false)
    }

    fn run_with(
        bytes: &[u8],
        limits: Limits,
        keep_setid: bool,
    ) -> (tempfile::TempDir, Result<Report, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let mut budget = Budget::new(limits);
        let opts = Options {
            id_base: None,
            keep_setid,
        };
        let r = unpack(bytes, &dest, opts, &mut budget);
        (dir, r)
    }

    fn refused(bytes: &[u8], expect: &str) {
        let (_d, r) = run(bytes, Limits::default());
        match r {
            Err(e @ UnpackError::Unsafe { .. }) => {
                assert!(e.to_string().contains(expect), "{e}")
            }
            other => panic!("expected a refusal mentioning {expect:?}, got {other:?}"),
        }
    }

    use tar::EntryType as T;

    #[test]
    fn plain_files_dirs_and_links_unpack() {
        let mut t = Tar::new();
        t.entry("etc/", T::Directory, 0o755, b"");
        t.entry("etc/hello", T::Regular, 0o644, b"hi\n");
        t.link("etc/hello2", T::Link, "etc/hello");
        t.link("etc/abs", T::Symlink, "/etc/hello");
        t.entry("bin/tool", T::Regular, 0o755, b"#!/bin/sh\n");
        let (d, r) = run(&t.bytes(), Limits::default());
        let r = r.unwrap();
        let root = d.path().join("layer");
        assert_eq!(r.entries, 5);
        assert_eq!(fs::read(root.join("etc/hello")).unwrap(), b"hi\n");
        let a = fs::metadata(root.join("etc/hello")).unwrap();
        let b = fs::metadata(root.join("etc/hello2")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            fs::read_link(root.join("etc/abs")).unwrap(),
            Path::new("/etc/hello")
        );
        assert_eq!(
            fs::metadata(root.join("bin/tool")).unwrap().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn dot_dot_is_refused() {
        let mut t = Tar::new();
        t.entry("../../escaped", T::Regular, 0o644, b"x");
        refused(&t.bytes(), "climbs out");
        let mut t = Tar::new();
        t.entry("a/../../escaped", T::Regular, 0o644, b"x");
        refused(&t.bytes(), "climbs out");
    }

    #[test]
    fn absolute_names_are_refused() {
        let mut t = Tar::new();
        t.entry("/tmp/escaped", T::Regular, 0o644, b"x");
        refused(&t.bytes(), "absolute");
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        for target in ["/tmp", "../../../../tmp", "."] {
            let mut t = Tar::new();
            t.link("evil", T::Symlink, target);
            t.entry("evil/planted", T::Regular, 0o644, b"x");
            refused(&t.bytes(), "symbolic link");
        }
    }

    #[test]
    fn escaping_symlinks_are_kept_but_inert() {
        let mut t = Tar::new();
        t.link("up", T::Symlink, "../../../../../etc/passwd");
        let (d, r) = run(&t.bytes(), Limits::default());
        r.unwrap();
        // A link, never followed here; inside a sandbox `..` stops at its own root.
        let m = d.path().join("layer/up").symlink_metadata().unwrap();
        assert!(m.file_type().is_symlink());
    }

    #[test]
    fn hard_links_out_of_the_tree_are_refused() {
        let mut t = Tar::new();
        t.link("passwd", T::Link, "../../../../etc/passwd");
        refused(&t.bytes(), "outside the image");
        let mut t = Tar::new();
        t.link("passwd", T::Link, "/etc/passwd");
        refused(&t.bytes(), "outside the image");
        // Through a symlink planted first.
        let mut t = Tar::new();
        t.link("etc", T::Symlink, "/etc");
        t.link("passwd", T::Link, "etc/passwd");
        refused(&t.bytes(), "symbolic link");
        // To something the layer does not hold.
        let mut t = Tar::new();
        t.link("passwd", T::Link, "missing");
        refused(&t.bytes(), "not a file this layer holds");
    }

    #[test]
    fn device_nodes_are_skipped() {
        let mut t = Tar::new();
        let mut h = tar::Header::new_gnu();
        h.set_path("sda").unwrap();
        h.set_entry_type(T::Block);
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_mode(0o666);
        h.set_size(0);
        h.set_cksum();
        t.0.append(&h, &[][..]).unwrap();
        t.entry("mem", T::Char, 0o666, b"");
        let (d, r) = run(&t.bytes(), Limits::default());
        let r = r.unwrap();
        assert_eq!(
            r.skipped_devices,
            vec!["sda".to_string(), "mem".to_string()]
        );
        assert!(d.path().join("layer/sda").symlink_metadata().is_err());
    }

    #[test]
    fn setuid_bits_are_cleared() {
        let mut t = Tar::new();
        t.entry("su", T::Regular, 0o4755, b"x");
        t.entry("wall", T::Regular, 0o2755, b"x");
        let (d, r) = run(&t.bytes(), Limits::default());
        let r = r.unwrap();
        assert_eq!(r.stripped_setid.len(), 2);
        for f in ["su", "wall"] {
            let m = fs::metadata(d.path().join("layer").join(f)).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o755, "{f}");
        }
    }

    #[test]
    fn a_trusted_image_keeps_its_setuid_bits() {
        let mut t = Tar::new();
        t.entry("sudo", T::Regular, 0o4755, b"x");
        t.entry("wall", T::Regular, 0o2755, b"x");
        let (d, r) = run_with(&t.bytes(), Limits::default(), true);
        assert!(r.unwrap().stripped_setid.is_empty());
        for (f, mode) in [("sudo", 0o4755), ("wall", 0o2755)] {
            let m = fs::metadata(d.path().join("layer").join(f)).unwrap();
            assert_eq!(m.mode() & 0o7777, mode, "{f}");
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros gzips to ~64 KiB.
        let mut t = Tar::new();
        let zeros = vec![0u8; 64 << 20];
        t.entry("bomb", T::Regular, 0o644, &zeros);
        let raw = t.bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gz, &raw).unwrap();
        let small = gz.finish().unwrap();
        assert!(small.len() < 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(Limits {
            max_bytes: 8 << 20,
            max_entries: 100,
        });
        let r = unpack(
            flate2::read::GzDecoder::new(&small[..]),
            dir.path(),
            Options {
                id_base: None,
                keep_setid: false,
            },
            &mut budget,
        );
        assert!(matches!(r, Err(UnpackError::TooLarge { .. })), "{r:?}");
        // What was written before the stop is bounded too.
        let written = fs::metadata(dir.path().join("bomb"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(written <= 8 << 20);
    }

    /// A GNU sparse entry of `real` bytes whose archive holds `data` at `offset`.
    fn sparse(name: &str, offset: u64, data: &[u8], real: u64) -> Vec<u8> {
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{:0w$o}\0", v, w = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(T::GNUSparse);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let g = h.as_gnu_mut().unwrap();
        octal(&mut g.sparse[0].offset, offset);
        octal(&mut g.sparse[0].numbytes, data.len() as u64);
        octal(&mut g.realsize, real);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_sparse_entry_counts_what_it_writes_not_what_it_stores() {
        // 10 KiB of archive for 100 MiB of file.
        let archive = sparse("holes", 100 << 20, &[b'x'; 512], (100 << 20) + 512);
        assert!(archive.len() < 10 << 10);
        let (d, r) = run(
            &archive,
            Limits {
                max_bytes: 1 << 20,
                max_entries: 10,
            },
        );
        assert!(matches!(r, Err(UnpackError::TooLarge { .. })), "{r:?}");
        let written = fs::metadata(d.path().join("layer/holes")).map_or(0, |m| m.len());
        assert!(written <= 1 << 20, "{written} bytes written");
        // Within the limit, the same file unpacks.
        let (d, r) = run(
            &archive,
            Limits {
                max_bytes: 1 << 30,
                max_entries: 10,
            },
        );
        r.unwrap();
        let m = fs::metadata(d.path().join("layer/holes")).unwrap();
        assert_eq!(m.len(), (100 << 20) + 512);
    }

    #[test]
    fn too_many_entries_stop() {
        let mut t = Tar::new();
        for i in 0..20 {
            t.entry(&format!("f{i}"), T::Regular, 0o644, b"");
        }
        let (_d, r) = run(
            &t.bytes(),
            Limits {
                max_bytes: 1 << 30,
                max_entries: 10,
            },
        );
        assert!(matches!(r, Err(UnpackError::TooManyEntries { .. })));
    }

    #[test]
    fn owners_past_the_mapped_range_are_clamped() {
        let mut t = Tar::new();
        t.entry_owned("mine", T::Regular, 0o644, b"", 1000);
        t.entry_owned("far", T::Regular, 0o644, b"", 70_000);
        let (_d, r) = run(&t.bytes(), Limits::default());
        assert_eq!(r.unwrap().clamped_owners, 2, "uid and gid of `far`");
    }

    #[test]
    fn whiteouts_of_dot_and_dotdot_are_refused() {
        // Found by the oci_unpack fuzz target: `.wh...` cleared the layer's parent.
        for name in [".wh..", ".wh...", "a/.wh..."] {
            let mut t = Tar::new();
            t.entry("a/", T::Directory, 0o755, b"");
            t.entry(name, T::Regular, 0o644, b"");
            let (d, r) = run(&t.bytes(), Limits::default());
            assert!(
                matches!(r, Err(UnpackError::Unsafe { .. })),
                "{name}: {r:?}"
            );
            assert!(
                d.path().join("layer/a").is_dir(),
                "{name} removed the layer"
            );
        }
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlay_ones() {
        if !warren_testkit::needs_root("whiteouts_and_opaque_dirs_become_overlay_ones", "mknod") {
            return;
        }
        let mut t = Tar::new();
        t.entry("etc/", T::Directory, 0o755, b"");
        t.entry("etc/.wh.motd", T::Regular, 0o644, b"");
        t.entry("var/.wh..wh..opq", T::Regular, 0o644, b"");
        t.entry("var/new", T::Regular, 0o644, b"n");
        let (d, r) = run(&t.bytes(), Limits::default());
        let r = r.unwrap();
        assert_eq!((r.whiteouts, r.opaque_dirs), (1, 1));
        let root = d.path().join("layer");
        let m = root.join("etc/motd").symlink_metadata().unwrap();
        assert!(is_whiteout(&m));
        assert!(root.join("etc/.wh.motd").symlink_metadata().is_err());
        match xattr::get(root.join("var"), OPAQUE_XATTR) {
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"y"[..])),
            Err(e) => warren_testkit::skip(
                "whiteouts_and_opaque_dirs_become_overlay_ones (opaque check)",
                &format!("this filesystem has no trusted xattrs: {e}"),
            ),
        }
    }
}
