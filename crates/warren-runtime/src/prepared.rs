//! The next sandbox's disk, made and mounted ahead by the daemon.
//!
//! A new sandbox with a bounded disk needs an ext4 image (a copy of the kept blank, see
//! `helper::make_ext4`), a loop device attached to it and the filesystem
//! mounted: some 1.5 ms of its create, most of it the kernel's (`LOOP_CONFIGURE` syncs
//! the file, ext4 reads its metadata and starts its journal's thread). The daemon does
//! that for the next sandbox of the size it last made, off any create's path, and keeps
//! the result as a detached mount (in no namespace's table): the create that takes it
//! renames the image into the sandbox's data directory and hands the mount to its
//! helper, which places it in its own mount namespace (`move_mount`).
//!
//! Nothing is left behind: an unplaced detached mount is unmounted when its last
//! descriptor closes (a daemon that stops or dies, a helper that fails first), its loop
//! device then clears itself, and an image that no sandbox took is removed, by the daemon
//! that made it or, after a crash, by the next one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use warren_sys::mount::{DetachedMount, MountAttrs};

use crate::helper::{blank_disk, copy_of_blank, Image};
use crate::HOST_ID_BASE;

/// The file name prefix of a prepared image in `DATA/.blank-disks`.
const PREFIX: &str = ".prepared-";

/// A disk image made, attached and mounted for the next sandbox of its size.
#[derive(Debug)]
pub struct PreparedDisk {
    pub size: u64,
    /// Where it waits; `None` once a sandbox has taken it.
    image: Option<PathBuf>,
    mount: Option<DetachedMount>,
}

impl PreparedDisk {
    /// Makes the next disk of `size` bytes under the data directory `data`: the spare
    /// copy of the blank when there is one, else a copy of the blank. `None` when there
    /// is no blank of that size yet (the first sandbox of a size makes it) or any step
    /// fails: the create then makes its disk itself.
    pub fn make(data: &Path, size: u64) -> Option<Self> {
        let blank = blank_disk(data, size, HOST_ID_BASE, Image::Disk);
        if !blank.exists() {
            return None;
        }
        let id = crate::new_id().ok()?;
        let image = blank.with_file_name(format!("{PREFIX}{id}.img"));
        copy_of_blank(&blank, &image).ok()?;
        let mut disk = Self {
            size,
            image: Some(image),
            mount: None,
        };
        let at = disk.image.as_deref()?;
        let dev = warren_sys::mount::attach_loop(at, true).ok()?;
        let mount = warren_sys::mount::mount_detached(&dev.path, "ext4", MountAttrs::PLAIN).ok()?;
        let _ = warren_sys::mount::ext4_no_bitmap_prefetch(&dev.path);
        // The writable layer's directories, which the sandbox's root owns, made here too:
        // the filesystem's first allocation (which indexes its first group's free
        // blocks) is made now, not by the overlay's mount in the create.
        crate::helper::layer_dirs(mount.as_fd()).ok()?;
        disk.mount = Some(mount);
        Some(disk)
    }

    /// Renames the image to `img` (a new sandbox's `disk.img`) and gives its mount.
    /// Refused, and the disk left to be dropped, when the data directory has less free
    /// space than the disk's size, as a disk made on the spot would be.
    pub fn take(mut self, img: &Path) -> io::Result<DetachedMount> {
        let free = nix::sys::statvfs::statvfs(img.parent().unwrap_or(Path::new("/")))
            .map(|st| st.blocks_available() * st.fragment_size())?;
        if self.size > free {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let from = self.image.as_deref().unwrap_or(Path::new(""));
        fs::rename(from, img)?;
        self.image = None;
        self.mount
            .take()
            .ok_or_else(|| io::Error::other("no mount"))
    }
}

impl Drop for PreparedDisk {
    fn drop(&mut self) {
        // The mount first: its loop device holds the file until it is gone.
        drop(self.mount.take());
        if let Some(image) = self.image.take() {
            let _ = fs::remove_file(image);
        }
    }
}

/// Removes what a daemon that died may have left under `data` (called before this
/// daemon makes its first prepared disk): its prepared images, and copies being made
/// (dot-names; one a helper is making now then fails, which costs it only time). The
/// kept blanks and spares stay.
pub fn clear_left(data: &Path) {
    let dir = data.join(".blank-disks");
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_dead_daemon_left_is_removed_and_nothing_else() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join(".blank-disks");
        fs::create_dir(&dir).unwrap();
        for n in [
            ".prepared-a.img",
            ".prepared-b.img",
            ".0123456789abcdef",
            "64-1-disk.img",
            "64-1-disk.spare",
            "64-1.img",
        ] {
            fs::write(dir.join(n), "x").unwrap();
        }
        clear_left(data.path());
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["64-1-disk.img", "64-1-disk.spare", "64-1.img"]);
        // One of this daemon's, dropped untaken: its image goes.
        let image = dir.join(".prepared-c.img");
        fs::write(&image, "x").unwrap();
        let made = PreparedDisk {
            size: 64,
            image: Some(image.clone()),
            mount: None,
        };
        drop(made);
        assert!(!image.exists());
    }
}
