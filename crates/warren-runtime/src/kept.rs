//! The files of a `warren run` without `--rm`, kept after its sandbox ends until
//! `warren gc` removes them.
//!
//! Such a run is the CLI's own: no daemon records it, and its files sit beside the
//! daemon's sandboxes' in `DATA/sandboxes/ID`. So the run leaves a mark, `DATA/runs/ID`,
//! made before the sandbox and held locked (`flock`) for as long as the run lives. A
//! namespace sandbox's helper is forked from the run and shares the lock until it has
//! torn the sandbox down. A mark nobody holds names a run that is over, whose files no
//! process uses: those are what [`ended`] lists and [`remove`] deletes. The kernel lets
//! go of a lock when its holder dies, so a run killed outright is found too, and a pid
//! reused since cannot pass for it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::SystemTime;

use crate::{io_err, Paths, Result};

/// What the mark holds once its run has finished as it should.
const ENDED: &str = "ended\n";

/// A live run's mark; the lock goes with the process (and with the helper it forked).
#[derive(Debug)]
pub struct RunMark {
    file: File,
}

impl RunMark {
    /// Records that the run finished and its sandbox is torn down (as far as it waits).
    pub fn ended(mut self) {
        let _ = self.file.write_all(ENDED.as_bytes());
    }
}

fn marks(paths: &Paths) -> PathBuf {
    paths.data.join("runs")
}

/// Marks the run whose sandbox will be `id` as live; its files are kept once it ends.
pub fn mark(paths: &Paths, id: &str) -> Result<RunMark> {
    let dir = marks(paths);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    // Made under a name [`ended`] passes over and locked before it takes its own: a `gc`
    // at that moment cannot take it for a run that is over.
    let new = dir.join(format!(".{id}.new"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&new)
        .map_err(io_err(format!("create {}", new.display())))?;
    file.try_lock()
        .map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
        })
        .map_err(io_err(format!("lock {}", new.display())))?;
    let path = dir.join(id);
    std::fs::rename(&new, &path).map_err(io_err(format!("create {}", path.display())))?;
    Ok(RunMark { file })
}

/// A run that is over, with the files it kept.
#[derive(Debug)]
pub struct KeptRun {
    pub id: String,
    /// Its sandbox's files (gone already if something else removed them).
    pub files: PathBuf,
    /// When its mark was last written: the run's end, or its start if it did not finish.
    pub at: Option<SystemTime>,
    /// Whether it finished as it should (not killed before tearing its sandbox down).
    pub finished: bool,
    /// Held while the run is removed, so that no one else removes it at once.
    lock: File,
}

/// The runs that are over, oldest first. A data directory without any is no error.
pub fn ended(paths: &Paths) -> io::Result<Vec<KeptRun>> {
    let entries = match std::fs::read_dir(marks(paths)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    let mut runs = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(id) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !crate::valid_name(&id) {
            continue;
        }
        let Ok(lock) = File::open(entry.path()) else {
            continue;
        };
        // Held: the run, or the helper it forked, still lives.
        if lock.try_lock().is_err() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        runs.push(KeptRun {
            files: paths.sandbox_data(&id),
            at: lock.metadata().and_then(|m| m.modified()).ok(),
            finished: text == ENDED,
            id,
            lock,
        });
    }
    runs.sort_by_key(|r| r.at);
    Ok(runs)
}

/// Deletes a run's files, then its mark. A mount found below the files is left alone and
/// reported, as [`crate::tree::remove`] does; the mark stays then, so a later `gc` tries
/// again.
pub fn remove(paths: &Paths, run: KeptRun) -> Result<()> {
    crate::tree::remove(&run.files)
        .map_err(io_err(format!("remove the files of run {}", run.id)))?;
    let mark = marks(paths).join(&run.id);
    std::fs::remove_file(&mark).map_err(io_err(format!("remove {}", mark.display())))?;
    drop(run.lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_kept_once_it_is_over_and_never_while_it_lives() {
        let root = tempfile::tempdir().unwrap();
        let p = Paths::under(root.path());
        assert!(ended(&p).unwrap().is_empty(), "no data directory yet");
        let live = mark(&p, "aaaa1111").unwrap();
        let done = mark(&p, "bbbb2222").unwrap();
        std::fs::create_dir_all(p.sandbox_data("bbbb2222").join("upper/etc")).unwrap();
        std::fs::write(p.sandbox_data("bbbb2222").join("upper/etc/x"), "x").unwrap();
        done.ended();
        // A daemon's sandbox has files and no mark: never a kept run.
        std::fs::create_dir_all(p.sandbox_data("cccc3333")).unwrap();

        let runs = ended(&p).unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].id, "bbbb2222");
        assert!(runs[0].finished);
        remove(&p, runs.into_iter().next().unwrap()).unwrap();
        assert!(!p.sandbox_data("bbbb2222").exists());
        assert!(p.sandbox_data("cccc3333").exists());
        assert!(ended(&p).unwrap().is_empty(), "the live one is still held");

        // A run that ends without saying so (killed): its lock goes with it.
        drop(live);
        let runs = ended(&p).unwrap();
        assert_eq!(runs.len(), 1);
        assert!(!runs[0].finished);
        // Files someone removed already are no error.
        remove(&p, runs.into_iter().next().unwrap()).unwrap();
        assert!(ended(&p).unwrap().is_empty());
    }
}
