//! Watches: inotify on a path and, when recursive, on every directory below it.
//!
//! inotify watches one directory per watch descriptor, so a recursive watch walks the
//! tree and watches each directory, then watches each directory created later. The walk
//! is bounded because the tree is the tenant's: it stays on the filesystem of the
//! watched path (a watch on `/` must not wander into /proc, /sys or /dev, whose trees
//! are huge and never "change" the way files do), it never follows a symlink, and it
//! covers at most [`MAX_WATCHED_DIRS`] directories. A tree larger than that is refused
//! with an error instead of being watched in part; a watch that grows past it later
//! ends with an error, so a client never silently misses changes. Walks run on the
//! blocking pool, never on the runtime's only thread, and as the watch's user when it
//! names one: inotify needs read permission on what it watches, which must be theirs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::Mode;
use tokio::sync::mpsc;
use warren_sys::child::Identity;
use warren_types::proto::{ErrorCode, Frame, Response, User, WatchKind};

use crate::files::{acting_as, identity_of, shown};
use crate::{flow, Failure};

/// Directories one watch covers at most, the root included.
pub(crate) const MAX_WATCHED_DIRS: usize = 8192;

fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVE_SELF
}

/// The watched directories of one watch.
struct Tree {
    ino: Inotify,
    /// What each watch descriptor watches.
    wds: HashMap<WatchDescriptor, PathBuf>,
    root: PathBuf,
    root_wd: WatchDescriptor,
    /// The filesystem of the root, which a recursive watch does not leave.
    dev: u64,
    /// Whom the walks run as; `None` for the agent itself.
    identity: Option<Identity>,
}

/// Why a tree could not be watched whole.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// [`MAX_WATCHED_DIRS`].
    Dirs,
    /// The kernel's `fs.inotify.max_user_watches`.
    Kernel,
}

impl Limit {
    fn failure(self, root: &Path, when: &str) -> Failure {
        let message = match self {
            Limit::Dirs => format!(
                "{}: more than {MAX_WATCHED_DIRS} directories to watch; {when}",
                root.display()
            ),
            Limit::Kernel => format!(
                "{}: the kernel's limit of inotify watches is reached; {when}",
                root.display()
            ),
        };
        Failure::new(ErrorCode::Io, message)
    }
}

impl Tree {
    /// Watches `root` itself, and the directories below it when `recursive`, as `user`.
    /// Blocking.
    fn start(root: &Path, recursive: bool, user: Option<&User>) -> Result<Self, Failure> {
        let identity = identity_of(user)?;
        let mut tree = acting_as(identity.as_ref(), || Self::walk(root, recursive))??;
        tree.identity = identity;
        Ok(tree)
    }

    fn walk(root: &Path, recursive: bool) -> Result<Self, Failure> {
        let io = |e: io::Error| Failure::io(root.display(), &e);
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io(e.into()))?;
        let root_wd = ino
            .add_watch(root, watch_mask())
            .map_err(|e| io(e.into()))?;
        let meta = std::fs::metadata(root).map_err(io)?;
        let mut tree = Self {
            ino,
            wds: HashMap::from([(root_wd, root.to_path_buf())]),
            root: root.to_path_buf(),
            root_wd,
            dev: meta.dev(),
            identity: None,
        };
        if recursive && meta.is_dir() {
            if let Err(limit) = tree.add_children(root, None) {
                return Err(limit.failure(root, "watch a smaller tree, or without recursive"));
            }
        }
        Ok(tree)
    }

    /// Watches the directories below `dir` (not `dir` itself), depth first, recording
    /// in `found` every entry met. Blocking.
    fn add_children(
        &mut self,
        dir: &Path,
        mut found: Option<&mut Vec<PathBuf>>,
    ) -> Result<(), Limit> {
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Some(entries) = self.subdirectories(&dir, found.as_deref_mut()) else {
                continue;
            };
            for child in entries {
                if self.add(&child)? {
                    pending.push(child);
                }
            }
        }
        Ok(())
    }

    /// Watches `dir` itself, if it is a directory on the root's filesystem; whether it
    /// now is watched. Blocking.
    fn add(&mut self, dir: &Path) -> Result<bool, Limit> {
        if self.wds.len() >= MAX_WATCHED_DIRS {
            return Err(Limit::Dirs);
        }
        // Opened without following a symlink, so what is checked is the directory
        // itself, not where a symlink swapped in since the listing points.
        let Ok(handle) = Dir::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return Ok(false);
        };
        match nix::sys::stat::fstat(handle.as_raw_fd()) {
            Ok(st) if st.st_dev == self.dev => {}
            _ => return Ok(false),
        }
        let flags = watch_mask() | AddWatchFlags::IN_ONLYDIR | AddWatchFlags::IN_DONT_FOLLOW;
        match self.ino.add_watch(dir, flags) {
            Ok(wd) => {
                self.wds.insert(wd, dir.to_path_buf());
                Ok(true)
            }
            Err(Errno::ENOSPC) => Err(Limit::Kernel),
            // Gone or unreadable since it was listed: nothing to watch.
            Err(_) => Ok(false),
        }
    }

    /// The directories in `dir` (never through a symlink), recording every entry in
    /// `found`; `None` when it cannot be read.
    fn subdirectories(
        &self,
        dir: &Path,
        mut found: Option<&mut Vec<PathBuf>>,
    ) -> Option<Vec<PathBuf>> {
        let mut handle = Dir::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut dirs = Vec::new();
        for entry in handle.iter().flatten() {
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let path = dir.join(name);
            let is_dir = match entry.file_type() {
                Some(t) => t == Type::Directory,
                // Filesystems that do not fill in d_type.
                None => std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()),
            };
            if let Some(found) = found.as_deref_mut() {
                found.push(path.clone());
            }
            if is_dir {
                dirs.push(path);
            }
        }
        Some(dirs)
    }
}

fn kind_of(mask: AddWatchFlags) -> Option<WatchKind> {
    use AddWatchFlags as F;
    if mask.contains(F::IN_CREATE) {
        Some(WatchKind::Create)
    } else if mask.contains(F::IN_MODIFY) {
        Some(WatchKind::Write)
    } else if mask.intersects(F::IN_DELETE | F::IN_DELETE_SELF) {
        Some(WatchKind::Remove)
    } else if mask.intersects(F::IN_MOVED_FROM | F::IN_MOVED_TO | F::IN_MOVE_SELF) {
        Some(WatchKind::Rename)
    } else if mask.contains(F::IN_ATTRIB) {
        Some(WatchKind::Chmod)
    } else {
        None
    }
}

/// Answers `Ok`, then a `WatchEvent` per change until cancelled (the task is aborted) or
/// until the watched path itself is gone.
pub(crate) async fn watch(
    path: PathBuf,
    recursive: bool,
    user: Option<User>,
    ch: u32,
    out: mpsc::Sender<Frame>,
) {
    let send = |r: Response| Frame::control(ch, &r);
    let shown_root = path.display().to_string();
    let failed = || Failure::new(ErrorCode::Io, format!("{shown_root}: the watch failed"));
    let started =
        tokio::task::spawn_blocking(move || Tree::start(&path, recursive, user.as_ref())).await;
    let mut tree = match started.unwrap_or_else(|_| Err(failed())) {
        Ok(tree) => tree,
        Err(f) => {
            let _ = out.send(send(f.response())).await;
            return;
        }
    };
    // The runtime only needs readiness; the events are read through the tree's Inotify.
    let ready = match tree.ino.as_fd().try_clone_to_owned().and_then(flow::reader) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = out
                .send(send(Failure::io(&shown_root, &e).response()))
                .await;
            return;
        }
    };
    if out.send(send(Response::Ok)).await.is_err() {
        return;
    }
    while !tree.wds.is_empty() {
        if ready.readable().await.is_err() {
            return;
        }
        let events = match ready.try_io(|| Ok(tree.ino.read_events()?)) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                let _ = out
                    .send(send(Failure::io(&shown_root, &e).response()))
                    .await;
                return;
            }
        };
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                tree.wds.remove(&ev.wd);
                continue;
            }
            let Some(dir) = tree.wds.get(&ev.wd).cloned() else {
                continue;
            };
            // A subdirectory's own delete/move also arrives, named, from its parent.
            let is_self = ev
                .mask
                .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF);
            if is_self && ev.wd != tree.root_wd {
                continue;
            }
            let changed = match &ev.name {
                Some(name) => dir.join(name),
                None => dir,
            };
            let mut created = Vec::new();
            if recursive
                && ev.mask.contains(AddWatchFlags::IN_ISDIR)
                && ev
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                // What appeared inside before the watch was in place (mkdir -p) is reported
                // as created: it was, after its parent.
                let dir = changed.clone();
                let grown = tokio::task::spawn_blocking(move || {
                    let mut created = Vec::new();
                    let identity = tree.identity.clone();
                    let added = acting_as(identity.as_ref(), || match tree.add(&dir) {
                        Ok(true) => tree.add_children(&dir, Some(&mut created)),
                        Ok(false) => Ok(()),
                        Err(limit) => Err(limit),
                    });
                    (tree, added, created)
                })
                .await;
                let Ok((back, added, found)) = grown else {
                    let _ = out.send(send(failed().response())).await;
                    return;
                };
                tree = back;
                let failure = match added {
                    Ok(Ok(())) => None,
                    Ok(Err(limit)) => Some(limit.failure(&tree.root, "the watch ended")),
                    Err(failure) => Some(failure),
                };
                if let Some(failure) = failure {
                    let _ = out.send(send(failure.response())).await;
                    return;
                }
                created = found;
            }
            let Some(kind) = kind_of(ev.mask) else {
                continue;
            };
            let events = std::iter::once((kind, changed))
                .chain(created.into_iter().map(|p| (WatchKind::Create, p)));
            for (kind, p) in events {
                let (path, path_b64) = shown(p.as_os_str());
                let event = Response::WatchEvent {
                    kind,
                    path,
                    path_b64,
                };
                if out.send(send(event)).await.is_err() {
                    return;
                }
            }
        }
    }
}
