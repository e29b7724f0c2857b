//! The SSH gateway's SFTP subsystem (`sftp`, and `scp`, which speaks SFTP), over the
//! sandbox agent's file operations: every call acts inside the sandbox, as the template's
//! user, confined as the file API's calls are.
//!
//! Files stream: a read handle follows one agent read from its start (a read at another
//! offset starts it again and skips), a write handle feeds one agent write (truncated in
//! place, as sftp-server writes) and is done at close, so neither is ever held whole. Writes
//! must come in order (OpenSSH's clients send them so). Attributes are set with the
//! sandbox's own `chmod`, `chown`, `touch` and `truncate`; symlinks cannot be made.

use std::collections::HashMap;

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
};
use russh_sftp::server::StatusReply;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use warren_agent::client::{AgentClient, ClientError, FileReader, ReadOptions, WriteOptions};
use warren_core::ActivityGuard;
use warren_types::proto::{Command, ErrorCode, ExecRequest, FileInfo, FileType, User};

/// Handles a session holds open at once.
const MAX_HANDLES: usize = 64;
/// Bytes a write handle holds between the client and the agent.
const WRITE_PIPE: usize = 256 << 10;
/// Largest read answered (OpenSSH asks for 32 KiB at a time, and takes no packet over
/// 256 KiB whole).
const MAX_READ: u32 = 64 << 10;
/// Directory entries answered per `readdir` (a NAME packet must stay under 256 KiB).
const DIR_BATCH: usize = 100;
/// Attribute changes kept for a file open for writing.
const MAX_LATER: usize = 8;

/// One SFTP session of a login, in one sandbox.
pub(crate) struct Sftp {
    client: AgentClient,
    user: Option<User>,
    home: String,
    handles: HashMap<String, Open>,
    next: u64,
    /// Keeps the sandbox counted as active while the session lasts.
    _activity: Option<ActivityGuard>,
}

enum Open {
    Read {
        path: String,
        reader: Box<FileReader>,
        pos: u64,
        buf: Vec<u8>,
        eof: bool,
    },
    Write {
        path: String,
        pos: u64,
        pipe: Option<tokio::io::DuplexStream>,
        done: JoinHandle<Result<u64, ClientError>>,
        /// Attributes set on the open file, applied once its data has landed (times set
        /// before would be undone by the writes still on their way).
        later: Vec<FileAttributes>,
    },
    Dir {
        listed: Option<Vec<FileInfo>>,
    },
}

impl Drop for Sftp {
    /// A session that ends with files open for writing abandons them: the files stay as
    /// they were.
    fn drop(&mut self) {
        for open in self.handles.values() {
            if let Open::Write { done, .. } = open {
                done.abort();
            }
        }
    }
}

impl Sftp {
    pub(crate) fn new(
        client: AgentClient,
        user: Option<User>,
        activity: Option<ActivityGuard>,
    ) -> Self {
        let home = match &user {
            Some(User::Name(n)) if n != "root" => format!("/home/{n}"),
            Some(User::Id { uid, .. }) if *uid != 0 => "/".to_string(),
            _ => "/root".to_string(),
        };
        Self {
            client,
            user,
            home,
            handles: HashMap::new(),
            next: 0,
            _activity: activity,
        }
    }

    fn abs(&self, path: &str) -> String {
        absolute(&self.home, path)
    }

    fn add(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message(format!(
                "at most {MAX_HANDLES} files open at once; close some"
            )));
        }
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        Ok(h)
    }

    async fn stat_of(&self, path: &str, follow: bool) -> Result<FileAttributes, StatusReply> {
        let info = self
            .client
            .stat_as(path, self.user.as_ref())
            .await
            .map_err(reply)?;
        match (&info.resolved, follow) {
            // What the link finally leads to.
            (Some(r), true) => self
                .client
                .stat_as(r.path.as_str(), self.user.as_ref())
                .await
                .map(|i| attrs(&i))
                .map_err(reply),
            _ => Ok(attrs(&info)),
        }
    }
}

impl Sftp {
    /// Sets what `attrs` names on `path` with the sandbox's own tools (`chmod`, `chown`,
    /// `touch`, `truncate`), run as the session's user: the agent has no call for them,
    /// and they apply the sandbox's own permission rules.
    async fn set_attrs(&self, path: &str, attrs: &FileAttributes) -> Result<(), StatusReply> {
        let mut steps: Vec<Vec<String>> = Vec::new();
        if let Some(size) = attrs.size {
            steps.push(vec!["truncate".into(), "-s".into(), size.to_string()]);
        }
        if let (Some(uid), Some(gid)) = (attrs.uid, attrs.gid) {
            steps.push(vec!["chown".into(), format!("{uid}:{gid}")]);
        }
        if let Some(p) = attrs.permissions {
            steps.push(vec!["chmod".into(), format!("{:o}", p & 0o7777)]);
        }
        if let Some(t) = attrs.mtime {
            steps.push(vec![
                "touch".into(),
                "-m".into(),
                "-d".into(),
                format!("@{t}"),
            ]);
        }
        if let Some(t) = attrs.atime {
            steps.push(vec![
                "touch".into(),
                "-a".into(),
                "-d".into(),
                format!("@{t}"),
            ]);
        }
        for mut argv in steps {
            argv.push("--".into());
            argv.push(path.to_string());
            let req = ExecRequest {
                command: Some(Command::Argv(argv.clone())),
                user: self.user.clone(),
                timeout_ms: Some(10_000),
                ..Default::default()
            };
            let out = self
                .client
                .exec(req)
                .await
                .map_err(reply)?
                .output()
                .await
                .map_err(reply)?;
            if out.status.and_then(|s| s.code) != Some(0) {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                let code = if why.contains("Operation not permitted")
                    || why.contains("Permission denied")
                {
                    StatusCode::PermissionDenied
                } else {
                    StatusCode::Failure
                };
                return Err(code.with_message(format!("{}: {why}", argv[0])));
            }
        }
        Ok(())
    }
}

/// `path` made absolute against `home`, `.` and `..` resolved by name.
fn absolute(home: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{home}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// An agent error as SFTP tells it.
fn reply(e: ClientError) -> StatusReply {
    let code = match &e {
        ClientError::Agent { code, .. } => match code {
            ErrorCode::NotFound => StatusCode::NoSuchFile,
            ErrorCode::PermissionDenied => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        },
        ClientError::Closed | ClientError::Connect(_) => StatusCode::ConnectionLost,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

fn type_bits(t: FileType) -> u32 {
    match t {
        FileType::Dir => 0o040000,
        FileType::Symlink => 0o120000,
        FileType::File => 0o100000,
        FileType::Other => 0,
    }
}

fn attrs(info: &FileInfo) -> FileAttributes {
    let mtime = u32::try_from(info.modified.max(0)).unwrap_or(u32::MAX);
    FileAttributes {
        size: Some(info.size),
        uid: Some(info.uid),
        gid: Some(info.gid),
        user: None,
        group: None,
        permissions: Some(info.mode | type_bits(info.file_type)),
        atime: Some(mtime),
        mtime: Some(mtime),
    }
}

fn unsupported(what: &str) -> StatusReply {
    StatusCode::OpUnsupported.with_message(format!("{what} is not supported by Warren's SFTP"))
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        Ok(Name {
            id,
            files: vec![File::dummy(self.abs(&path))],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let attrs = self.stat_of(&self.abs(&path), true).await?;
        Ok(Attrs { id, attrs })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let attrs = self.stat_of(&self.abs(&path), false).await?;
        Ok(Attrs { id, attrs })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let path = match self.handles.get(&handle) {
            Some(Open::Read { path, .. } | Open::Write { path, .. }) => path.clone(),
            _ => return Err(StatusCode::Failure.with_message("no such file handle")),
        };
        let attrs = self.stat_of(&path, true).await?;
        Ok(Attrs { id, attrs })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.abs(&filename);
        let open = if pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND) {
            // One look serves both rules: EXCLUDE refuses a file that is there, and
            // without TRUNCATE or APPEND only a new file can be written from its start.
            let exists = self
                .client
                .stat_as(path.as_str(), self.user.as_ref())
                .await
                .is_ok();
            if pflags.contains(OpenFlags::EXCLUDE) && exists {
                return Err(StatusCode::Failure.with_message(format!("{path} exists")));
            }
            let append = pflags.contains(OpenFlags::APPEND);
            if !append && !pflags.contains(OpenFlags::TRUNCATE) && exists {
                return Err(unsupported(
                    "writing into an existing file without truncating it",
                ));
            }
            let opts = WriteOptions {
                user: self.user.clone(),
                mode: attrs.permissions.map(|p| p & 0o7777),
                append,
                // Replaced whole when the handle closes: a session that drops mid-way
                // leaves the old file, not half of a new one.
                in_place: false,
                ..Default::default()
            };
            let (pipe, source) = tokio::io::duplex(WRITE_PIPE);
            let client = self.client.clone();
            let target = path.clone();
            let done =
                tokio::spawn(
                    async move { client.write_stream(target.as_str(), source, &opts).await },
                );
            Open::Write {
                path,
                pos: 0,
                pipe: Some(pipe),
                done,
                later: Vec::new(),
            }
        } else {
            let reader = self
                .client
                .open_read(
                    path.as_str(),
                    &ReadOptions {
                        user: self.user.clone(),
                        special: false,
                    },
                )
                .await
                .map_err(reply)?;
            if reader.info().file_type == FileType::Dir {
                return Err(StatusCode::Failure.with_message(format!("{path} is a directory")));
            }
            Open::Read {
                path,
                reader: Box::new(reader),
                pos: 0,
                buf: Vec::new(),
                eof: false,
            }
        };
        Ok(Handle {
            id,
            handle: self.add(open)?,
        })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let (client, user) = (self.client.clone(), self.user.clone());
        let Some(Open::Read {
            path,
            reader,
            pos,
            buf,
            eof,
        }) = self.handles.get_mut(&handle)
        else {
            return Err(StatusCode::Failure.with_message("not a file opened for reading"));
        };
        if offset < *pos {
            // Back to an earlier place: read again from the start.
            let opts = ReadOptions {
                user,
                special: false,
            };
            **reader = client
                .open_read(path.as_str(), &opts)
                .await
                .map_err(reply)?;
            (*pos, *eof) = (0, false);
            buf.clear();
        }
        let want = len.min(MAX_READ) as usize;
        loop {
            // What lies before the offset is dropped as it comes: a read far ahead holds
            // no more than a chunk.
            let skip = usize::try_from(offset - *pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            buf.drain(..skip);
            *pos += skip as u64;
            if (*pos == offset && buf.len() >= want) || *eof {
                break;
            }
            match reader.chunk().await.map_err(reply)? {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => *eof = true,
            }
        }
        if *pos != offset || buf.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let n = want.min(buf.len());
        let data: Vec<u8> = buf.drain(..n).collect();
        *pos += n as u64;
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Open::Write { pos, pipe, .. }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("not a file opened for writing"));
        };
        if offset != *pos {
            return Err(unsupported("writing out of order"));
        }
        let written = match pipe.as_mut() {
            Some(p) => p.write_all(&data).await.is_ok(),
            None => false,
        };
        if !written {
            // The agent stopped taking the file: its answer says why.
            pipe.take();
            let Some(Open::Write { done, .. }) = self.handles.remove(&handle) else {
                return Err(StatusCode::Failure.into());
            };
            return Err(match done.await {
                Ok(Err(e)) => reply(e),
                _ => StatusCode::Failure.with_message("the write was abandoned"),
            });
        }
        *pos += data.len() as u64;
        Ok(ok(id))
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::Write {
                path,
                pipe,
                done,
                later,
                ..
            }) => {
                drop(pipe);
                match done.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(reply(e)),
                    Err(_) => {
                        return Err(StatusCode::Failure.with_message("the write was abandoned"))
                    }
                }
                for attrs in later {
                    self.set_attrs(&path, &attrs).await?;
                }
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure.with_message("no such handle")),
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.abs(&path);
        let listed = self
            .client
            .list_dir_as(path.as_str(), 1, self.user.as_ref())
            .await
            .map_err(reply)?;
        Ok(Handle {
            id,
            handle: self.add(Open::Dir {
                listed: Some(listed),
            })?,
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { listed }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("not a directory handle"));
        };
        match listed {
            Some(entries) if !entries.is_empty() => {
                let n = entries.len().min(DIR_BATCH);
                Ok(Name {
                    id,
                    files: entries
                        .drain(..n)
                        .map(|e| File::new(e.name.clone(), attrs(&e)))
                        .collect(),
                })
            }
            _ => {
                *listed = None;
                Err(StatusCode::Eof.into())
            }
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let path = self.abs(&filename);
        let info = self
            .client
            .stat_as(path.as_str(), self.user.as_ref())
            .await
            .map_err(reply)?;
        if info.file_type == FileType::Dir {
            return Err(StatusCode::Failure.with_message(format!("{path} is a directory")));
        }
        self.client
            .remove_as(path.as_str(), false, self.user.as_ref())
            .await
            .map_err(reply)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.abs(&path);
        self.client
            .remove_as(path.as_str(), false, self.user.as_ref())
            .await
            .map_err(reply)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.abs(&path);
        self.client
            .make_dir_as(
                path.as_str(),
                attrs.permissions.map(|p| p & 0o7777),
                self.user.as_ref(),
            )
            .await
            .map_err(reply)?;
        Ok(ok(id))
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (self.abs(&oldpath), self.abs(&newpath));
        self.client
            .rename_as(from.as_str(), to.as_str(), self.user.as_ref())
            .await
            .map_err(reply)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.abs(&path);
        let info = self
            .client
            .stat_as(path.as_str(), self.user.as_ref())
            .await
            .map_err(reply)?;
        match info.symlink_target {
            Some(t) => Ok(Name {
                id,
                files: vec![File::dummy(t)],
            }),
            None => Err(StatusCode::Failure.with_message(format!("{path} is not a symlink"))),
        }
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.set_attrs(&self.abs(&path), &attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = match self.handles.get_mut(&handle) {
            Some(Open::Write { later, .. }) => {
                if later.len() >= MAX_LATER {
                    return Err(StatusCode::Failure.with_message("too many attribute changes"));
                }
                later.push(attrs);
                return Ok(ok(id));
            }
            Some(Open::Read { path, .. }) => path.clone(),
            _ => return Err(StatusCode::Failure.with_message("no such file handle")),
        };
        self.set_attrs(&path, &attrs).await?;
        Ok(ok(id))
    }

    async fn symlink(
        &mut self,
        _id: u32,
        _linkpath: String,
        _targetpath: String,
    ) -> Result<Status, Self::Error> {
        Err(unsupported("making symlinks"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_made_absolute_against_the_home() {
        use super::absolute;
        assert_eq!(absolute("/home/user", "."), "/home/user");
        assert_eq!(absolute("/home/user", ""), "/home/user");
        assert_eq!(absolute("/home/user", "a/../b/./c"), "/home/user/b/c");
        assert_eq!(absolute("/root", "/etc/../../x"), "/x");
        assert_eq!(absolute("/root", "../.."), "/");
    }
}
