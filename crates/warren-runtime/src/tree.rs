//! Trees that sandboxes made (writable layers, snapshots, built templates), measured and
//! removed on the host.
//!
//! Such a tree is shaped by whoever ran in the sandbox: a million entries in one
//! directory, directories nested 100,000 deep (far deeper than any thread's stack or a
//! path's 4096 bytes), a directory swapped for a symlink to the host's `/` while it is
//! read. Coreutils' `du` and `rm` walk any depth relative to open directories, never
//! follow a link they did not start on, stay on one filesystem, and keep their memory
//! in their own process: whatever a tree holds, the daemon neither recurses nor grows,
//! and cannot be made to abort.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// How much of a tool's complaints is kept: one line per bad entry of a tree with a
/// million of them must not be held in the daemon.
const STDERR_KEPT: usize = 2048;

/// Runs `cmd` with stdout discarded; returns its status and the start of what it wrote
/// to stderr (at most `STDERR_KEPT` bytes, the rest read and dropped), on one line.
pub fn run_quietly(cmd: &mut Command) -> io::Result<(ExitStatus, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut kept = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        let mut buf = [0u8; 8192];
        loop {
            match err.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = STDERR_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let status = child.wait()?;
    let text = String::from_utf8_lossy(&kept);
    let first = text.lines().next().unwrap_or("").trim();
    // A path as long as the kernel allows says nothing more past its first part.
    let first: String = match first.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &first[..i]),
        None => first.to_string(),
    };
    Ok((status, first))
}

/// Bytes on disk under `root` (allocated blocks, hard links counted once); 0 when it
/// does not exist. Entries that vanish or cannot be read during the walk are left out.
pub fn size(root: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-x", "-P", "-B1", "--"])
        .arg(root)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    // du prints its total even when some entries could not be read.
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Removes `path` and everything under it; one that does not exist is no error. A
/// mount found below is left alone (and reported as an error), never emptied.
pub fn remove(path: &Path) -> io::Result<()> {
    if path.symlink_metadata().is_err() {
        return Ok(());
    }
    if remove_flat(path).is_ok() {
        return Ok(());
    }
    let (status, why) = run_quietly(
        Command::new("rm")
            .args(["-r", "-f", "--one-file-system", "--"])
            .arg(path),
    )
    .map_err(|e| io::Error::new(e.kind(), format!("run rm (install coreutils): {e}")))?;
    if status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "removing {}: {}",
        path.display(),
        if why.is_empty() { "rm failed" } else { &why }
    )))
}

/// How many entries a directory [`remove_flat`] empties itself may have.
const FLAT_MOST: usize = 64;

/// Removes the directory `path` when it holds at most [`FLAT_MOST`] entries and none is a
/// directory with anything in it: a run directory, or a data directory holding a disk
/// image, without starting `rm` (a process: about 1-2 ms of a teardown). Anything else
/// is an error, and what was removed stays removed: the caller hands the rest to `rm`.
/// Nothing is followed: unlink and rmdir act on the entry itself, and a mount point
/// among the entries answers EBUSY.
fn remove_flat(path: &Path) -> io::Result<()> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(path)? {
        if entries.len() == FLAT_MOST {
            return Err(io::Error::other("more entries than a flat directory has"));
        }
        let e = e?;
        entries.push((e.path(), e.file_type()?.is_dir()));
    }
    for (p, dir) in entries {
        if dir {
            std::fs::remove_dir(p)?;
        } else {
            std::fs::remove_file(p)?;
        }
    }
    std::fs::remove_dir(path)
}

/// [`remove`] on a blocking thread, off the async runtime's workers (a tree a sandbox
/// made can take seconds to remove).
pub async fn remove_off_runtime(path: std::path::PathBuf) -> crate::Result<()> {
    tokio::task::spawn_blocking(move || remove(&path))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
        .map_err(crate::io_err("remove the sandbox's files"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_tree_deeper_than_any_path_is_measured_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir(&root).unwrap();
        // 3,000 levels of 4-byte names: 15,000 bytes of path, past PATH_MAX, made
        // relative to each level as a sandbox would, and a megabyte at the bottom that
        // a walk stopping early would miss.
        let made = Command::new("perl")
            .arg("-e")
            .arg(
                "chdir $ARGV[0] or die; for (1..3000) { mkdir 'deep' or die; chdir 'deep' or die } \
                 open(F, '>big') or die; print F 'x' x 1048576; close F or die",
            )
            .arg(&root)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(size(&root) > 1 << 20, "{}", size(&root));
        remove(&root).unwrap();
        assert!(!root.exists());
        assert!(remove(&root).is_ok(), "a missing tree is no error");
        assert_eq!(size(&root), 0);
    }

    #[test]
    fn a_flat_directory_is_removed_without_following_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("kept"), "x").unwrap();
        let flat = dir.path().join("flat");
        fs::create_dir(&flat).unwrap();
        fs::write(flat.join("disk.img"), "x").unwrap();
        fs::create_dir(flat.join("empty")).unwrap();
        std::os::unix::fs::symlink(&outside, flat.join("to-outside")).unwrap();
        std::os::unix::net::UnixListener::bind(flat.join("agent.sock")).unwrap();
        remove_flat(&flat).unwrap();
        assert!(!flat.exists());
        assert!(outside.join("kept").exists(), "a link was followed");

        // A directory with a tree in it is not flat: `remove` gives it to rm.
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/to-outside")).unwrap();
        assert!(remove_flat(&tree).is_err());
        remove(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("kept").exists(), "a link was followed");
    }
}
