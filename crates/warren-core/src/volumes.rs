//! Volumes: the owners' home volumes a tenant's sandboxes mount at `/home/user`.
//!
//! A home volume is kept in `$WARREN_DATA_DIR/volumes/NAME`, NAME a hash of the tenant
//! and the owner (see [`home_volume_name`]): an ext4 image (`volume.img`, when it was
//! made with a size) or a directory (`data`). Beside them, `volume.json` records whose
//! it is, written when a sandbox is first made with it, so a volume is listed after its
//! sandboxes are gone; one made before that record existed is listed while a sandbox of
//! the tenant mounts it, and is always found by its owner's name.
//!
//! A volume is removed, or grown, only when no sandbox that is not terminated mounts it
//! (a stopped one mounts it again when started). The check holds the lock a create holds
//! while it records its sandbox, so no sandbox can take the volume in between: a removal
//! moves it out of the way under that lock; a resize moves it aside for as long as it
//! works, and a create that would mount it meanwhile is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use warren_types::api::VolumeInfo;

use crate::{home_volume_name, Caller, CoreError, Manager, Result};

/// Where a home volume keeps whose it is, beside its files (never in them).
const META: &str = "volume.json";

/// The target home volumes are mounted at.
const HOME: &str = "/home/user";

#[derive(Debug, Serialize, Deserialize)]
struct VolumeMeta {
    tenant: String,
    owner: String,
}

impl Manager {
    /// Records whose home volume `name` is, unless it is recorded already.
    pub(crate) fn note_home_volume(&self, tenant: &str, owner: &str, name: &str) -> Result<()> {
        let dir = self.config.paths.volume(name);
        if dir.join(META).exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io("create a volume", e))?;
        let meta = VolumeMeta {
            tenant: tenant.to_string(),
            owner: owner.to_string(),
        };
        let bytes = serde_json::to_vec(&meta).expect("volume metadata serializes");
        std::fs::write(dir.join(META), bytes).map_err(|e| CoreError::io("record a volume", e))
    }

    /// The home volumes of `who`'s owners, by owner.
    pub async fn volumes(&self, who: &Caller) -> Result<Vec<VolumeInfo>> {
        let mut owners = BTreeSet::new();
        for r in self.store().list_live(Some(&who.tenant))? {
            if r.spec.volumes.iter().any(|v| v.target == HOME) {
                owners.insert(r.owner);
            }
        }
        let root = self.config.paths.data.join("volumes");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(e.path().join(META)) else {
                continue;
            };
            if let Ok(m) = serde_json::from_slice::<VolumeMeta>(&bytes) {
                if m.tenant == who.tenant {
                    owners.insert(m.owner);
                }
            }
        }
        let mut list = Vec::new();
        for owner in owners {
            match self.volume(who, &owner).await {
                Ok(v) => list.push(v),
                // Recorded, but its files are gone (or set aside while it is resized):
                // nothing to show now.
                Err(CoreError::Missing(_) | CoreError::InvalidState(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(list)
    }

    /// The tenant of each recorded home volume, once per volume.
    pub(crate) fn volume_tenants(&self) -> Vec<String> {
        let root = self.config.paths.data.join("volumes");
        std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            // A volume being removed is moved aside under a dot name.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| std::fs::read(e.path().join(META)).ok())
            .filter_map(|b| serde_json::from_slice::<VolumeMeta>(&b).ok())
            .map(|m| m.tenant)
            .collect()
    }

    /// The home volume of `owner`.
    pub async fn volume(&self, who: &Caller, owner: &str) -> Result<VolumeInfo> {
        let name = home_volume_name(&who.tenant, owner);
        let dir = self.config.paths.volume(&name);
        if !dir.join("volume.img").exists() && !dir.join("data").exists() {
            return Err(absent(&dir, &name, owner));
        }
        let used_by = self.mounted_by(who, &name)?;
        let (size_bytes, used_bytes) = tokio::task::spawn_blocking(move || usage(&dir))
            .await
            .map_err(|e| CoreError::Host(format!("measuring a volume failed: {e}")))?;
        Ok(VolumeInfo {
            owner: owner.to_string(),
            name,
            size_bytes,
            used_bytes,
            used_by,
        })
    }

    /// Removes the home volume of `owner`, with every file in it; refused while a
    /// sandbox mounts it.
    pub async fn remove_volume(&self, who: &Caller, owner: &str) -> Result<()> {
        let name = home_volume_name(&who.tenant, owner);
        let dir = self.config.paths.volume(&name);
        let gone = {
            let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
            if !dir.exists() {
                return Err(absent(&dir, &name, owner));
            }
            let used_by = self.mounted_by(who, &name)?;
            if !used_by.is_empty() {
                return Err(CoreError::InvalidState(format!(
                    "the home volume of {owner:?} is in use by {}; remove {} first \
                     (`warren rm {}`)",
                    used_by.join(", "),
                    if used_by.len() == 1 { "it" } else { "them" },
                    used_by.join(" ")
                )));
            }
            // Out of the way at once, under the lock: a create that follows makes a new
            // volume, whatever is left to delete.
            let gone = dir.with_file_name(format!(".removing-{name}-{}", crate::random_hex(4)?));
            std::fs::rename(&dir, &gone).map_err(|e| CoreError::io("remove a volume", e))?;
            gone
        };
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&gone))
            .await
            .map_err(|e| CoreError::Host(format!("removing a volume failed: {e}")))?
            .map_err(|e| CoreError::io("remove a volume", e))
    }

    /// Grows the home volume of `owner` (an ext4 image) to `size` bytes, its files kept;
    /// refused while a sandbox mounts it.
    pub async fn resize_volume(&self, who: &Caller, owner: &str, size: u64) -> Result<VolumeInfo> {
        self.config.policy.check_home(size)?;
        let name = home_volume_name(&who.tenant, owner);
        let dir = self.config.paths.volume(&name);
        let aside = resizing(&dir, &name);
        // A sandbox just terminated may still be unmounting it: e2fsck and resize2fs
        // must find it unmounted.
        self.settle().await;
        let from = {
            let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
            let img = dir.join("volume.img");
            let Ok(meta) = std::fs::metadata(&img) else {
                return Err(if dir.join("data").exists() {
                    CoreError::Invalid(format!(
                        "the home volume of {owner:?} is a directory: it has no size to change"
                    ))
                } else {
                    absent(&dir, &name, owner)
                });
            };
            let used_by = self.mounted_by(who, &name)?;
            if !used_by.is_empty() {
                return Err(CoreError::InvalidState(format!(
                    "the home volume of {owner:?} is in use by {}; it can grow only when no \
                     sandbox mounts it (`warren rm {}` first)",
                    used_by.join(", "),
                    used_by.join(" ")
                )));
            }
            let from = meta.len();
            if size < from {
                return Err(CoreError::Invalid(format!(
                    "the home volume of {owner:?} is {} MiB and can only grow: give more",
                    from >> 20
                )));
            }
            if size == from {
                None
            } else {
                std::fs::rename(&dir, &aside)
                    .map_err(|e| CoreError::io("set a volume aside", e))?;
                Some(from)
            }
        };
        if let Some(from) = from {
            let img = aside.join("volume.img");
            let free = warren_runtime::template::disk_commitments(&self.config.paths).free;
            let grown = tokio::task::spawn_blocking(move || grow(&img, from, size, free))
                .await
                .map_err(|e| CoreError::Host(format!("resizing a volume failed: {e}")));
            {
                let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
                std::fs::rename(&aside, &dir).map_err(|e| CoreError::io("put a volume back", e))?;
            }
            grown??;
        }
        self.volume(who, owner).await
    }

    /// Refuses a sandbox whose volumes include one being resized.
    pub(crate) fn check_volumes_free(&self, spec: &warren_types::spec::SandboxSpec) -> Result<()> {
        for v in &spec.volumes {
            if resizing(&self.config.paths.volume(&v.name), &v.name).exists() {
                return Err(CoreError::InvalidState(
                    "its home volume is being resized; try again in a moment".into(),
                ));
            }
        }
        Ok(())
    }

    /// The sandboxes of `who`'s tenant that are not terminated and mount volume `name`.
    fn mounted_by(&self, who: &Caller, name: &str) -> Result<Vec<String>> {
        Ok(self
            .store()
            .list_live(Some(&who.tenant))?
            .into_iter()
            .filter(|r| r.spec.volumes.iter().any(|v| v.name == name))
            .map(|r| r.id)
            .collect())
    }
}

/// Why `owner`'s volume, to be kept in `dir`, is not there: it is being resized, or
/// there is none.
fn absent(dir: &Path, name: &str, owner: &str) -> CoreError {
    if resizing(dir, name).exists() {
        return CoreError::InvalidState(format!(
            "the home volume of {owner:?} is being resized; try again in a moment"
        ));
    }
    CoreError::Missing(format!(
        "owner {owner:?} has no home volume; `warren volume ls` lists them"
    ))
}

/// Where volume `name` (kept in `dir`) is while it is resized.
fn resizing(dir: &Path, name: &str) -> PathBuf {
    dir.with_file_name(format!(".resizing-{name}"))
}

/// Grows the ext4 image `img` from `from` to `to` bytes: checked first (resize2fs wants a
/// clean filesystem), then the file, then the filesystem. A failure leaves it as it was.
///
/// The image is sparse, as a new one is: it may grow only as far as the data directory's
/// free space, `free`, could back it.
fn grow(img: &Path, from: u64, to: u64, free: u64) -> Result<()> {
    if to - from > free {
        return Err(CoreError::NoSpace(format!(
            "{} MiB more were asked for and the host has {} MiB free in the data directory; \
             ask for less or free space",
            (to - from) >> 20,
            free >> 20
        )));
    }
    // 0: clean; 1: mended. Anything else: it is not fit to grow.
    let check = tool(Command::new("e2fsck").args(["-f", "-p"]).arg(img))?;
    if !matches!(check.status.code(), Some(0 | 1)) {
        return Err(CoreError::Host(format!(
            "the volume's filesystem has errors e2fsck could not mend: {}",
            String::from_utf8_lossy(&check.stdout).trim()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .map_err(|e| CoreError::io("open a volume's image", e))?;
    file.set_len(to)
        .map_err(|e| CoreError::io("grow a volume's image", e))?;
    let resized = tool(Command::new("resize2fs").arg(img))?;
    if !resized.status.success() {
        let _ = file.set_len(from);
        return Err(CoreError::Host(format!(
            "resize2fs failed: {}",
            String::from_utf8_lossy(&resized.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs an e2fsprogs tool, in the C locale (its messages are read).
fn tool(c: &mut Command) -> Result<std::process::Output> {
    let name = c.get_program().to_string_lossy().into_owned();
    c.env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CoreError::Host(format!("run {name} (install e2fsprogs): {e}")))
}

/// Its size limit (an image's size; a directory has none) and the bytes it takes.
fn usage(dir: &Path) -> (Option<u64>, u64) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir.join("volume.img")) {
        Ok(m) => (Some(m.len()), m.blocks() * 512),
        Err(_) => (None, warren_runtime::template::dir_size(&dir.join("data"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ext4 image of `size` bytes in `dir`, as a sized home volume is made; `None`
    /// (the test says SKIPPED) where e2fsprogs is missing.
    fn image(dir: &Path, size: u64) -> Option<PathBuf> {
        let img = dir.join("volume.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img)
            .output();
        match made {
            Ok(o) if o.status.success() => Some(img),
            _ => {
                eprintln!("SKIPPED: mkfs.ext4 (e2fsprogs) is not installed");
                None
            }
        }
    }

    /// Blocks times block size, as the filesystem itself counts its size.
    fn fs_size(img: &Path) -> u64 {
        let o = Command::new("dumpe2fs")
            .arg("-h")
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        field("Block count:") * field("Block size:")
    }

    #[test]
    fn an_image_grows_its_file_and_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = image(dir.path(), 16 << 20) else {
            return;
        };
        grow(&img, 16 << 20, 48 << 20, u64::MAX).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 48 << 20);
        assert_eq!(fs_size(&img), 48 << 20);
        let check = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
    }

    #[test]
    fn an_image_does_not_grow_past_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = image(dir.path(), 16 << 20) else {
            return;
        };
        let e = grow(&img, 16 << 20, 64 << 20, 8 << 20).unwrap_err();
        assert_eq!(e.code(), warren_types::api::WireCode::NoSpace, "{e}");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    }
}
