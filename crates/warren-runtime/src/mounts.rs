//! Host directories mounted into a sandbox (`-v /host/dir:/path[:ro]`).
//!
//! The source is resolved once, when the sandbox is admitted: opened (symlinks followed,
//! as the host's root asked) and recorded as the path the kernel gives the opened
//! directory, with no symlink left in it. Every mount after that (the first boot, a
//! start after a stop, a resume, the adoption of a sandbox by a new daemon) opens the
//! recorded path refusing every symlink and mounts from that descriptor: a directory
//! swapped for a link in between fails the mount rather than lead it elsewhere, and
//! nothing can change between that open and the mount.
//!
//! The mount is idmapped through the sandbox's own maps, so host ids 0-65,535 show inside
//! as themselves: a file of host uid 1000 is uid 1000 inside, and a file root inside
//! writes is the host root's. No setuid bit and no device node in it is honoured inside.
//! A read-only mount is read-only on the mount itself (MOUNT_ATTR_RDONLY), set by the
//! helper in the host's user namespace: the sandbox's root, in its own, cannot clear it.
//! Only the directory is mounted, not what is mounted below it on the host.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use warren_sys::mount::{clone_tree_at, open_dir_no_symlinks, resolve_dir, MountAttrs};
use warren_types::spec::{path_within, HostMount};

use crate::{Error, Result};

/// Resolves `source`, an absolute path of a directory on the host, to the path the
/// sandbox will mount: the opened directory's own, with no symlink in it.
pub fn resolve_source(source: &str) -> Result<PathBuf> {
    let invalid = |why: String| Error::Invalid {
        what: "mount source",
        why,
    };
    if !source.starts_with('/') {
        return Err(invalid(format!(
            "{source:?}: use an absolute path of a directory on the daemon's host"
        )));
    }
    let (_, at) = resolve_dir(Path::new(source)).map_err(|e| {
        invalid(match e.raw_os_error() {
            Some(libc::ENOENT) => format!("{source:?} does not exist on the daemon's host"),
            Some(libc::ENOTDIR) => {
                format!("{source:?} is not a directory (only directories are mounted)")
            }
            _ => format!("{source:?}: {e}"),
        })
    })?;
    Ok(at)
}

/// Checks a sandbox's host mounts and resolves their sources: targets valid, apart from
/// each other (a directory mounted inside another would need its mount point made in the
/// host's directory) and not hiding one of `volumes` (their targets); sources existing
/// directories that neither hold nor lie in one of `own` (the caller's own directories:
/// a sandbox must not reach them). What comes back is what to record and mount.
pub fn resolve_all(
    mounts: &[HostMount],
    volumes: &[&str],
    own: &[&Path],
) -> Result<Vec<HostMount>> {
    let invalid = |why: String| Error::Invalid {
        what: "host directory mount",
        why,
    };
    let mut out: Vec<HostMount> = Vec::with_capacity(mounts.len());
    for m in mounts {
        if let Some(why) = HostMount::target_problem(&m.target) {
            return Err(invalid(why));
        }
        if let Some(v) = volumes.iter().find(|v| path_within(v, &m.target)) {
            return Err(invalid(format!(
                "target {:?} would hide the volume at {v}; mount below it, or leave that \
                 volume out",
                m.target
            )));
        }
        if let Some(o) = out
            .iter()
            .find(|o| path_within(&o.target, &m.target) || path_within(&m.target, &o.target))
        {
            return Err(invalid(format!(
                "targets {:?} and {:?} overlap: one host directory may not be mounted on or \
                 inside another",
                o.target, m.target
            )));
        }
        let source = resolve_source(&m.source)?;
        let overlaps_own = own.iter().any(|d| {
            let d = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
            source.starts_with(&d) || d.starts_with(&source)
        });
        if overlaps_own {
            return Err(invalid(format!(
                "source {:?} is, holds or lies in Warren's own directories; a sandbox may \
                 not reach them",
                m.source
            )));
        }
        let source = source
            .into_os_string()
            .into_string()
            .map_err(|s| invalid(format!("source {s:?}: the path is not UTF-8")))?;
        out.push(HostMount {
            source,
            target: m.target.clone(),
            read_only: m.read_only,
        });
    }
    Ok(out)
}

/// Mounts `m`'s source on `target` (which exists), its owners shown through `userns`
/// (the sandbox's own maps) when given; without, as they are (gVisor maps ids in its own
/// kernel). The caller is the host's root, in a private mount namespace.
pub(crate) fn place(
    m: &HostMount,
    target: &Path,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let source = Path::new(&m.source);
    let dir = open_dir_no_symlinks(source).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::ELOOP) {
            "a symlink is on its path now, which was not when the sandbox was made".to_string()
        } else {
            e.to_string()
        };
        io::Error::new(e.kind(), format!("host directory {}: {why}", m.source))
    })?;
    let tree = clone_tree_at(dir.as_raw_fd(), Path::new(""), false)?;
    if let Some(userns) = userns {
        tree.idmap(userns).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "idmap host directory {} (its filesystem must support idmapped mounts): \
                     {e}",
                    m.source
                ),
            )
        })?;
    }
    tree.set_attrs(MountAttrs {
        readonly: m.read_only,
        ..MountAttrs::PLAIN
    })?;
    tree.attach(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_resolve_to_real_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let canonical = std::fs::canonicalize(&real).unwrap();
        let link = dir.path().join("link");
        assert_eq!(resolve_source(link.to_str().unwrap()).unwrap(), canonical);
        assert_eq!(resolve_source(real.to_str().unwrap()).unwrap(), canonical);
        let file = dir.path().join("file");
        let e = resolve_source(file.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let missing = dir.path().join("missing");
        let e = resolve_source(missing.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(resolve_source("relative/dir").is_err());
    }

    #[test]
    fn a_list_is_refused_for_overlaps_hidden_volumes_and_own_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let m = |src: &Path, target: &str| HostMount {
            source: src.display().to_string(),
            target: target.into(),
            read_only: false,
        };
        let home = ["/home/user"];
        let ok = resolve_all(&[m(&a, "/a"), m(&b, "/home/user/b")], &home, &[]).unwrap();
        assert_eq!(ok.len(), 2);
        let err = |list: &[HostMount], own: &[&Path]| {
            resolve_all(list, &home, own).unwrap_err().to_string()
        };
        assert!(err(&[m(&a, "/x"), m(&b, "/x/y")], &[]).contains("overlap"));
        assert!(err(&[m(&a, "/x"), m(&b, "/x")], &[]).contains("overlap"));
        assert!(err(&[m(&a, "/home")], &[]).contains("hide the volume"));
        assert!(err(&[m(&a, "/home/user")], &[]).contains("hide the volume"));
        assert!(err(&[m(&a, "/proc/x")], &[]).contains("sandbox's own"));
        let data = a.join("data");
        std::fs::create_dir(&data).unwrap();
        assert!(err(&[m(&a, "/x")], &[&data]).contains("own directories"));
        assert!(err(&[m(&data, "/x")], &[&a]).contains("own directories"));
    }

    #[test]
    fn a_link_on_a_recorded_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        assert!(open_dir_no_symlinks(&std::fs::canonicalize(&real).unwrap()).is_ok());
        let e = open_dir_no_symlinks(&dir.path().join("link")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }
}
