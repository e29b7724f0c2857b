//! File operations, on the sandbox's filesystem as the agent sees it.
//!
//! Transfers stream in [`CHUNK`]s: a read waits for the client's credit before each
//! chunk, and an upload's chunks wait in a queue that the client's own credit bounds
//! (each chunk's credit goes back once it is written), so a 100 MB file never sits in
//! the agent's memory. A whole-file upload goes to a
//! temporary file beside the target and is renamed over it at the end, so readers see the
//! old contents or the new, never a torn mix, and an abandoned upload leaves nothing.
//!
//! Paths stay bytes throughout (`OsStr`): a name that is not UTF-8 is reported with its
//! exact bytes beside the display string, and can be addressed by them.
//!
//! A request that names a user runs, whole, on a blocking-pool thread that has taken
//! that user's filesystem identity ([`warren_sys::fsid`]): the kernel then checks every
//! step as it would for the user's own processes, symlinks included, and what is created
//! belongs to them. Nothing is checked by hand, so nothing can be checked wrong. Only
//! that thread changes identity; the agent stays root for everything else.

use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use warren_sys::child::Identity;
use warren_sys::fsid::with_fs_identity;
use warren_types::proto::{
    frame_credit, ErrorCode, FileInfo, FileType, Frame, FrameKind, Resolved, Response, User,
    WirePath, CHUNK, MAX_PAYLOAD, METADATA_XATTR, MIN_FRAME_CREDIT,
};

use crate::flow::{self, Charged, Credit};
use crate::{user, Failure};

/// What the connection forwards to an upload.
#[derive(Debug)]
pub(crate) enum Upload {
    Data(Charged),
    End,
}

/// Entries one listing may hold; past this its JSON could not fit in a frame anyway.
const MAX_ENTRIES: usize = MAX_PAYLOAD / 64;

/// The filesystem identity file work for `user` runs with; `None` (the agent's own)
/// when no user is named. Blocking: reads the sandbox's /etc/passwd and /etc/group.
pub(crate) fn identity_of(user: Option<&User>) -> Result<Option<Identity>, Failure> {
    user.map(|u| {
        user::resolve(Path::new("/"), u)
            .map(|account| account.identity)
            .map_err(|e| Failure::new(ErrorCode::BadRequest, e.to_string()))
    })
    .transpose()
}

/// Runs `work` on this thread with `identity` as its filesystem identity, or as the
/// agent when `None`. Blocking, like the work it runs.
pub(crate) fn acting_as<T>(
    identity: Option<&Identity>,
    work: impl FnOnce() -> T,
) -> Result<T, Failure> {
    match identity {
        None => Ok(work()),
        Some(id) => with_fs_identity(id, work).map_err(|e| {
            Failure::new(
                ErrorCode::Io,
                format!("acting as uid {}: {}", id.uid, crate::reason(&e)),
            )
        }),
    }
}

/// Answers `work` done as `user` (see the module doc). Blocking.
pub(crate) fn as_user(user: Option<&User>, work: impl FnOnce() -> Response) -> Response {
    identity_of(user)
        .and_then(|id| acting_as(id.as_ref(), work))
        .unwrap_or_else(Failure::response)
}

/// A name for display, and its exact bytes in base64 when the display cannot hold them.
pub(crate) fn shown(name: &OsStr) -> (String, Option<String>) {
    let raw = WirePath::from(name);
    (raw.to_string_lossy().into_owned(), raw.b64_unless_utf8())
}

/// Describes `path` (as the client named it, or joined below it for listings).
fn info(path: &Path, meta: &Metadata) -> FileInfo {
    let file_type = if meta.is_dir() {
        FileType::Dir
    } else if meta.is_file() {
        FileType::File
    } else if meta.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::Other
    };
    let (path_shown, path_b64) = shown(path.as_os_str());
    let (name, name_b64) = shown(path.file_name().unwrap_or(path.as_os_str()));
    let target = (file_type == FileType::Symlink)
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|t| shown(t.as_os_str()));
    let (symlink_target, symlink_target_b64) = match target {
        Some((t, b64)) => (Some(t), b64),
        None => (None, None),
    };
    let resolved = (file_type == FileType::Symlink)
        .then(|| resolve(path))
        .flatten()
        .map(Box::new);
    let metadata = metadata_of(path);
    FileInfo {
        path: path_shown,
        name,
        file_type,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        modified: meta.mtime(),
        symlink_target,
        path_b64,
        name_b64,
        symlink_target_b64,
        resolved,
        metadata,
    }
}

/// A file's `user.e2b.*` extended attributes, by the rest of their names (the link
/// itself for a symlink, which holds none). Unreadable ones are left out.
///
/// The sandbox sets these as it likes: at most [`METADATA_KEYS`] keys of values up to
/// [`METADATA_VALUE`] bytes are reported, so a listing stays within a frame whatever a
/// directory's files carry.
fn metadata_of(path: &Path) -> std::collections::BTreeMap<String, String> {
    let Ok(names) = xattr::list(path) else {
        return Default::default();
    };
    names
        .filter_map(|name| {
            let key = name.to_str()?.strip_prefix(METADATA_XATTR)?.to_string();
            let value = xattr::get(path, &name).ok()??;
            (key.len() <= METADATA_VALUE && value.len() <= METADATA_VALUE)
                .then(|| Some((key, String::from_utf8(value).ok()?)))?
        })
        .take(METADATA_KEYS)
        .collect()
}

/// Most metadata keys reported per file, and longest key or value.
const METADATA_KEYS: usize = 32;
const METADATA_VALUE: usize = 1024;

/// Sets `metadata` on an open file as `user.e2b.*` extended attributes.
fn set_metadata(
    file: &fs::File,
    metadata: &std::collections::BTreeMap<String, String>,
) -> io::Result<()> {
    use xattr::FileExt;
    for (k, v) in metadata {
        match file.set_xattr(format!("{METADATA_XATTR}{k}"), v.as_bytes()) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "file metadata is kept in extended attributes (user.*), which this \
                     filesystem does not hold (a gVisor sandbox's files, served by its \
                     gofer): write the file without metadata",
                ));
            }
            set => set?,
        }
    }
    Ok(())
}

/// Makes `metadata` the open file's whole metadata, as envd does when it overwrites a
/// file: its `user.e2b.*` attributes absent from `metadata` go (a truncation keeps a
/// file's attributes, and an overwrite must not report the last writer's), then the
/// given ones are set.
fn replace_metadata(
    file: &fs::File,
    metadata: &std::collections::BTreeMap<String, String>,
) -> io::Result<()> {
    use xattr::FileExt;
    let stale: Vec<_> = file
        .list_xattr()?
        .filter(|name| {
            name.to_str()
                .and_then(|n| n.strip_prefix(METADATA_XATTR))
                .is_some_and(|k| !metadata.contains_key(k))
        })
        .collect();
    for name in stale {
        match file.remove_xattr(&name) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e),
            _ => {}
        }
    }
    set_metadata(file, metadata)
}

/// Where the symlink at `path` finally leads, if anywhere (followed by the kernel, as
/// the acting user).
fn resolve(path: &Path) -> Option<Resolved> {
    let end = fs::canonicalize(path).ok()?;
    let meta = fs::metadata(&end).ok()?;
    let file_type = if meta.is_dir() {
        FileType::Dir
    } else if meta.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    Some(Resolved {
        path: end.to_string_lossy().into_owned(),
        file_type,
        mode: meta.mode() & 0o7777,
    })
}

/// Describes a path itself (a symlink is reported as one, with its target).
pub(crate) fn stat(path: &Path) -> Response {
    match fs::symlink_metadata(path) {
        Ok(meta) => Response::FileInfo {
            info: info(path, &meta),
        },
        Err(e) => Failure::io(path.display(), &e).response(),
    }
}

/// Lists a directory and, down to `depth` levels, its subdirectories (never through a
/// symlink). Subdirectories that cannot be read are listed but not entered.
pub(crate) fn list_dir(path: &Path, depth: u32) -> Response {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<(PathBuf, FileInfo)>) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let child = entry?.path();
            let Ok(meta) = fs::symlink_metadata(&child) else {
                continue; // removed while we listed it
            };
            out.push((child.clone(), info(&child, &meta)));
            if out.len() > MAX_ENTRIES {
                return Ok(());
            }
            if meta.is_dir() && depth > 1 {
                let _ = walk(&child, depth - 1, out);
            }
        }
        Ok(())
    }
    let shown = path.display();
    if depth == 0 {
        return Failure::new(ErrorCode::BadRequest, "depth must be at least 1").response();
    }
    match fs::metadata(path) {
        Ok(m) if !m.is_dir() => {
            return Failure::io(shown, &io::Error::from_raw_os_error(libc::ENOTDIR)).response()
        }
        Ok(_) => {}
        Err(e) => return Failure::io(shown, &e).response(),
    }
    let mut entries = Vec::new();
    if let Err(e) = walk(path, depth, &mut entries) {
        return Failure::io(shown, &e).response();
    }
    if entries.len() > MAX_ENTRIES {
        return Failure::new(
            ErrorCode::Io,
            format!("{shown}: more than {MAX_ENTRIES} entries; list with a smaller depth"),
        )
        .response();
    }
    // By bytes, not by Path's component order: a listing reads like `ls -R | sort`.
    entries.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    let response = Response::DirEntries {
        entries: entries.into_iter().map(|(_, info)| info).collect(),
    };
    if serde_json::to_vec(&response).map_or(0, |v| v.len()) > MAX_PAYLOAD {
        return Failure::new(
            ErrorCode::Io,
            format!("{shown}: listing too large; list with a smaller depth"),
        )
        .response();
    }
    response
}

/// `mkdir -p`, except that an existing path is reported as `AlreadyExists`.
pub(crate) fn make_dir(path: &Path, mode: Option<u32>) -> Response {
    if fs::symlink_metadata(path).is_ok() {
        return Failure::io(path.display(), &io::Error::from_raw_os_error(libc::EEXIST)).response();
    }
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode.unwrap_or(0o755))
        .create(path)
    {
        Ok(()) => Response::Ok,
        Err(e) => Failure::io(path.display(), &e).response(),
    }
}

/// [`make_dir`] as `user`, making what the user is refused as envd's `MakeDir` does: the
/// directory and those missing above it become the user's (see [`make_parents`]).
pub(crate) fn make_dir_as(path: &Path, mode: Option<u32>, user: Option<&User>) -> Response {
    let id = match identity_of(user) {
        Ok(Some(id)) => id,
        Ok(None) => return make_dir(path, mode),
        Err(f) => return f.response(),
    };
    let mine = acting_as(Some(&id), || make_dir(path, mode)).unwrap_or_else(Failure::response);
    let refused =
        matches!(&mine, Response::Error { code, .. } if *code == ErrorCode::PermissionDenied);
    if !refused {
        return mine;
    }
    if let Err(e) = make_parents(&path.join("_"), &id) {
        return Failure::io(path.display(), &e).response();
    }
    acting_as(Some(&id), || match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if let Some(mode) = mode {
                if let Err(e) = fs::set_permissions(path, Permissions::from_mode(mode)) {
                    return Failure::io(path.display(), &e).response();
                }
            }
            Response::Ok
        }
        _ => mine,
    })
    .unwrap_or_else(Failure::response)
}

pub(crate) fn remove(path: &Path, recursive: bool) -> Response {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && recursive => remove_tree(path),
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Response::Ok,
        Err(e) => Failure::io(path.display(), &e).response(),
    }
}

/// Removes a directory and everything in it, without recursion: a tree in a sandbox
/// can be nested deeper than any stack (a level past the longest path fails cleanly
/// with ENAMETOOLONG). Links are removed, never followed.
fn remove_tree(root: &Path) -> io::Result<()> {
    // Each directory is visited twice: to remove its files and queue its
    // subdirectories, then, once they are gone, to remove it.
    let mut stack = vec![(root.to_path_buf(), false)];
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            fs::remove_dir(&dir)?;
            continue;
        }
        stack.push((dir.clone(), true));
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push((entry.path(), false));
            } else {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

pub(crate) fn rename(from: &Path, to: &Path) -> Response {
    match fs::rename(from, to) {
        Ok(()) => Response::Ok,
        Err(e) => Failure::io(format!("{} -> {}", from.display(), to.display()), &e).response(),
    }
}

/// A file opened for a read, described as the client will see it.
pub(crate) struct Opened {
    file: fs::File,
    info: FileInfo,
    regular: bool,
}

/// What a file that is not regular is, for the client.
fn what(t: &fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Refuses what a read must not open (or must not have opened): directories, and
/// special files unless asked for.
fn check_readable(path: &Path, meta: &Metadata, special: bool) -> Result<(), Failure> {
    if meta.is_dir() {
        return Err(Failure::io(
            path.display(),
            &io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    if !meta.is_file() && !special {
        return Err(Failure::new(
            ErrorCode::NotAFile,
            format!(
                "{} is {}; special files are read only when asked (special)",
                path.display(),
                what(&meta.file_type())
            ),
        ));
    }
    Ok(())
}

/// Opens `path` for a read. Blocking: run it on the blocking pool.
///
/// The type is checked before the open, so that a device is not even opened (which has
/// effects of its own) unless asked for, and again on the open file, which is what is
/// read. The open never waits: O_NONBLOCK makes a FIFO without a writer open at once, and
/// O_NOCTTY keeps a terminal from becoming the agent's.
pub(crate) fn open_for_read(path: &Path, special: bool) -> Result<Opened, Failure> {
    let io = |e: io::Error| Failure::io(path.display(), &e);
    check_readable(path, &fs::metadata(path).map_err(io)?, special)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_readable(path, &meta, special)?;
    Ok(Opened {
        info: info(path, &meta),
        regular: meta.is_file(),
        file,
    })
}

/// Where a read's bytes come from.
fn source(opened: Opened) -> io::Result<Box<dyn AsyncRead + Unpin + Send>> {
    if opened.regular {
        return Ok(Box::new(tokio::fs::File::from_std(opened.file)));
    }
    // FIFOs, sockets and most devices can be polled, and a silent one then costs no
    // thread while it keeps the client waiting.
    if let Ok(polled) = flow::reader(OwnedFd::from(opened.file.try_clone()?)) {
        return Ok(Box::new(polled));
    }
    // The rest (/dev/zero, /dev/urandom) answer at once; they are read on the blocking
    // pool like files, in the blocking mode they expect.
    let fd = opened.file.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(Box::new(tokio::fs::File::from_std(opened.file)))
}

/// Opens the file on the blocking pool, then sends `FileInfo`, the contents as credit
/// allows, then `End`.
pub(crate) async fn read_file(
    path: PathBuf,
    special: bool,
    user: Option<User>,
    ch: u32,
    credit: Arc<Credit>,
    out: mpsc::Sender<Frame>,
) {
    let send = |r: Response| Frame::control(ch, &r);
    let shown = path.display().to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let identity = identity_of(user.as_ref())?;
        acting_as(identity.as_ref(), || open_for_read(&path, special))?
    })
    .await
    .unwrap_or_else(|_| Err(Failure::new(ErrorCode::Io, "opening the file failed")));
    let opened = match opened {
        Ok(opened) => opened,
        Err(f) => {
            let _ = out.send(send(f.response())).await;
            return;
        }
    };
    let info = opened.info.clone();
    let result: io::Result<()> = async {
        let mut file = source(opened)?;
        if out.send(send(Response::FileInfo { info })).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let granted = credit.take_between(MIN_FRAME_CREDIT, CHUNK).await;
            if granted == 0 {
                return Ok(());
            }
            let n = file.read(&mut buf[..granted]).await?;
            if n == 0 {
                credit.refund(granted);
                break;
            }
            credit.refund(granted - frame_credit(n));
            if out
                .send(Frame::new(ch, FrameKind::Data, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        let _ = out.send(send(Response::End)).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = out.send(send(Failure::io(&shown, &e).response())).await;
    }
}

/// How an upload meets the file already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteHow {
    /// Written beside it and renamed over it at the end: readers see old or new.
    Replace,
    /// Added at its end.
    Append,
    /// Truncated and written through: the same inode, which watchers see written.
    InPlace,
}

/// What one upload writes, and how.
pub(crate) struct WriteJob {
    pub path: PathBuf,
    pub mode: Option<u32>,
    pub how: WriteHow,
    /// Set as `user.e2b.KEY` extended attributes.
    pub metadata: std::collections::BTreeMap<String, String>,
    pub user: Option<User>,
}

/// Receives an upload and answers `Written`. Blocking: run it on the blocking pool.
pub(crate) fn write_file(
    job: WriteJob,
    mut rx: mpsc::UnboundedReceiver<Upload>,
    ch: u32,
    out: mpsc::Sender<Frame>,
) {
    let WriteJob {
        path,
        mode,
        how,
        metadata,
        user,
    } = job;
    let failed = |e: io::Error| Failure::io(path.display(), &e);
    let written = identity_of(user.as_ref()).and_then(|identity| {
        // As the user: the directories above the file, then the upload. One the user was
        // refused, before anything of the upload is read, is made by the agent (see
        // `make_parents`) and the write tried again.
        let attempt = |rx: &mut mpsc::UnboundedReceiver<Upload>| {
            acting_as(identity.as_ref(), || {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    match fs::create_dir_all(parent) {
                        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                            return Ok(Err(e));
                        }
                        made => made?,
                    }
                }
                write_upload(&path, mode, how, &metadata, rx).map(Ok)
            })?
            .map_err(failed)
        };
        match (attempt(&mut rx)?, &identity) {
            (Ok(written), _) => Ok(written),
            (Err(refused), Some(id)) => {
                make_parents(&path, id).map_err(failed)?;
                attempt(&mut rx)?.or(Err(refused)).map_err(failed)
            }
            (Err(refused), None) => Err(failed(refused)),
        }
    });
    let response = match written {
        Ok(Some(bytes)) => Response::Written { bytes },
        // Abandoned: the client cancelled or went away.
        Ok(None) => return,
        Err(failure) => {
            let _ = out.blocking_send(Frame::control(ch, &failure.response()));
            // Absorb what the client had in flight, up to its End.
            while let Some(Upload::Data(_)) = rx.blocking_recv() {}
            return;
        }
    };
    let _ = out.blocking_send(Frame::control(ch, &response));
}

/// Makes the directories missing above `target` that the user `id` was refused making,
/// as envd does: where the user may not make them (a new top-level directory such as
/// `/app`), the agent makes them and gives them to the user. The agent follows nothing
/// the user could have placed: the directories that exist are walked from `/` as the
/// user, one name at a time and through no link (a path through a link is left to the
/// user's own rights), and the agent makes each missing one inside the one before through
/// their descriptors. A directory the user may not search is neither entered nor given
/// away, nor is anything that was there before. (Not `warren_sys::mount::
/// open_dir_no_symlinks`: gVisor's kernel as Debian ships it, runsc 20240729, answers
/// openat2 with ENOSYS.)
fn make_parents(target: &Path, id: &Identity) -> io::Result<()> {
    use std::path::Component;
    let Some(parent) = target.parent().filter(|p| p.is_absolute()) else {
        return Ok(());
    };
    let as_user =
        |work: &mut dyn FnMut() -> io::Result<()>| with_fs_identity(id, work).and_then(|r| r);
    let mut names = Vec::new();
    for c in parent.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => names.push(n.to_owned()),
            _ => return Ok(()),
        }
    }
    let through = |dir: &fs::File, name: &OsStr| {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        p.push(name);
        p
    };
    let open_dir = |at: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(at)
    };
    // As the user: down from `/` while the names exist.
    let mut dir = None;
    let mut walked = 0;
    let mut stop = false;
    as_user(&mut || {
        let mut here = open_dir(Path::new("/"))?;
        for name in &names {
            match open_dir(&through(&here, name)) {
                Ok(next) => here = next,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // A link, a file, or a directory the user may not search.
                Err(_) => {
                    stop = true;
                    break;
                }
            }
            walked += 1;
        }
        // Only inside a directory the user may search.
        stop |= fs::metadata(through(&here, OsStr::new("."))).is_err();
        dir = Some(here);
        Ok(())
    })?;
    let Some(mut dir) = dir.filter(|_| !stop) else {
        return Ok(());
    };
    let mut made = Vec::new();
    for name in &names[walked..] {
        match fs::DirBuilder::new()
            .mode(0o755)
            .create(through(&dir, name))
        {
            Ok(()) => {}
            // Made meanwhile: not entered, nor given away; the write fails as the user's.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => break,
            Err(e) => return Err(e),
        }
        dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(through(&dir, name))?;
        made.push(dir.try_clone()?);
    }
    for d in made {
        std::os::unix::fs::fchown(&d, Some(id.uid), Some(id.gid))?;
    }
    Ok(())
}

/// Writes the upload; `None` when it was abandoned before its End.
fn write_upload(
    target: &Path,
    mode: Option<u32>,
    how: WriteHow,
    metadata: &std::collections::BTreeMap<String, String>,
    rx: &mut mpsc::UnboundedReceiver<Upload>,
) -> io::Result<Option<u64>> {
    let existing = fs::metadata(target).ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let open_target = || -> io::Result<fs::File> {
        let file = OpenOptions::new()
            .write(true)
            .append(how == WriteHow::Append)
            .truncate(how == WriteHow::InPlace)
            .create(true)
            .mode(mode.unwrap_or(0o644))
            .open(target)?;
        if let Some(mode) = mode {
            file.set_permissions(Permissions::from_mode(mode))?;
        }
        Ok(file)
    };
    if how == WriteHow::Append {
        let mut file = open_target()?;
        set_metadata(&file, metadata)?;
        return receive(rx, &mut file);
    }
    let mut tmp = TempFile::beside(target)?;
    // Before the upload is read: metadata the filesystem cannot keep is refused with
    // nothing written. The temporary file takes the file's place, or is only a probe
    // of the same filesystem for a write in place.
    set_metadata(&tmp.file, metadata)?;
    let Some(bytes) = receive(rx, &mut tmp.file)? else {
        return Ok(None);
    };
    if how == WriteHow::InPlace {
        // Only a complete upload touches the file: then it is truncated and written
        // through (in the kernel, from the temporary file).
        use std::io::Seek;
        tmp.file.rewind()?;
        let mut file = open_target()?;
        // envd gives the file it made to its user before it writes, which a watcher
        // sees as CREATE, CHMOD, WRITE (E2B's tests count them); programs written
        // against it see the same events here. To its own owner and group: nothing else
        // changes. Only a new file: an overwrite's first event is a WRITE, the
        // truncation's on Linux, and under gVisor, whose truncation at open makes none,
        // the write's (a CHMOD would come first there). Not on a set-user-ID or
        // set-group-ID file (a `mode` may ask for one), whose bits a chown clears.
        let meta = file.metadata()?;
        if existing.is_none() && meta.mode() & 0o6000 == 0 {
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
        }
        io::copy(&mut tmp.file, &mut file)?;
        // A file just made holds no metadata to replace.
        if existing.is_some() {
            replace_metadata(&file, metadata)?;
        } else {
            set_metadata(&file, metadata)?;
        }
        return Ok(Some(bytes));
    }
    let mode = mode
        .or(existing.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    tmp.file.set_permissions(Permissions::from_mode(mode))?;
    if let Some(m) = &existing {
        // A file replaced by its owner's upload stays theirs. Best effort: an agent
        // without CAP_CHOWN can only write files it owns anyway, and an upload as a user
        // makes the file the user's (a user may give a file to a group of theirs, no
        // more).
        let _ = std::os::unix::fs::fchown(&tmp.file, Some(m.uid()), Some(m.gid()));
    }
    fs::rename(&tmp.path, target)?;
    tmp.persisted = true;
    Ok(Some(bytes))
}

fn receive(
    rx: &mut mpsc::UnboundedReceiver<Upload>,
    file: &mut fs::File,
) -> io::Result<Option<u64>> {
    let mut bytes = 0u64;
    loop {
        match rx.blocking_recv() {
            // Dropping the chunk once written gives its credit back.
            Some(Upload::Data(input)) => {
                file.write_all(&input.data)?;
                bytes += input.data.len() as u64;
            }
            Some(Upload::End) => return Ok(Some(bytes)),
            None => return Ok(None),
        }
    }
}

/// A temporary file that is removed unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: fs::File,
    persisted: bool,
}

impl TempFile {
    fn beside(target: &Path) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut name = OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(format!(".warren-upload-{}-{n}", std::process::id()));
        let path = target.with_file_name(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Self {
            path,
            file,
            persisted: false,
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_a_sandbox_piles_on_a_file_is_reported_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "x").unwrap();
        if xattr::set(&f, "user.e2b.probe", b"1").is_err() {
            eprintln!("SKIPPED: this filesystem keeps no user xattrs");
            return;
        }
        // Within what ext4 keeps per file (a block of xattrs).
        xattr::set(&f, "user.e2b.big", &vec![b'v'; METADATA_VALUE + 100]).unwrap();
        for i in 0..METADATA_KEYS + 8 {
            xattr::set(&f, format!("user.e2b.k{i}"), b"v").unwrap();
        }
        xattr::set(&f, "user.other", b"not ours").unwrap();
        let m = metadata_of(&f);
        assert_eq!(m.len(), METADATA_KEYS);
        assert!(!m.contains_key("big") && !m.contains_key("other"));
        assert!(m.values().all(|v| v.len() <= METADATA_VALUE));
    }

    #[test]
    fn a_deep_tree_is_removed_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        fs::create_dir(&keep).unwrap();
        fs::write(keep.join("file"), "mine").unwrap();
        let root = dir.path().join("t");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&keep, root.join("link")).unwrap();
        // Deeper than the stack of a thread that recursed once per level would allow.
        let made = std::process::Command::new("perl")
            .arg("-e")
            .arg("chdir $ARGV[0] or die; for (1..800) { mkdir 'd' or die; chdir 'd' or die; open(F, '>f') or die }")
            .arg(&root)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(matches!(remove(&root, true), Response::Ok));
        assert!(!root.exists());
        assert_eq!(fs::read_to_string(keep.join("file")).unwrap(), "mine");
    }
}
