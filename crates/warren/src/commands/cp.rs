//! `warren cp`: copies files and directories between the host and a sandbox, as `docker
//! cp` does, through the daemon's file API: files stream both ways (never held whole),
//! modes are kept, a directory is copied whole. Copying into an existing directory puts
//! the source inside it under its own name; otherwise the destination is the new name.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_types::proto::User;
use warren_types::proto::{FileInfo, FileType};

use crate::client::{block_on, connect, enc, Client, ClientArgs, Error};

/// Copy files or directories between a sandbox and the host: `warren cp lab:/work/out
/// ./out`, `warren cp ./src alice/lab:/work`. One side is SANDBOX:PATH; a host path that
/// has a colon starts with / or ./ (like ./this:one).
#[derive(Debug, Args)]
pub struct CpArgs {
    /// What to copy: SANDBOX:PATH or a host path.
    from: String,
    /// Where to: SANDBOX:PATH or a host path.
    to: String,
    /// Read and write in the sandbox as this user (name, uid or uid:gid), who owns what
    /// is made [default: the template's user; root when it names none].
    #[arg(short, long, value_parser = crate::parse::parse_user)]
    user: Option<warren_types::proto::User>,
    #[command(flatten)]
    client: ClientArgs,
}

/// One end of a copy.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Host(PathBuf),
    Sandbox { key: String, path: String },
}

fn end(s: &str) -> End {
    if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') {
        return End::Host(PathBuf::from(s));
    }
    match s.split_once(':') {
        Some((key, path)) if !key.is_empty() => End::Sandbox {
            key: key.to_string(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            },
        },
        _ => End::Host(PathBuf::from(s)),
    }
}

pub fn run(args: CpArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let copy = Copy {
        client: &client,
        skipped: Vec::new(),
        as_user: match &args.user {
            None => String::new(),
            Some(User::Name(n)) => format!("&user={}", enc(n)),
            Some(User::Id { uid, gid: None }) => format!("&user={uid}"),
            Some(User::Id {
                uid,
                gid: Some(gid),
            }) => format!("&user={uid}:{gid}"),
        },
    };
    let copied = match (end(&args.from), end(&args.to)) {
        (End::Host(from), End::Sandbox { key, path }) => block_on(copy.upload(&key, from, path))?,
        (End::Sandbox { key, path }, End::Host(to)) => block_on(copy.download(&key, path, to))?,
        (End::Host(_), End::Host(_)) => {
            return Err(Error::invalid(
                "one side must be in a sandbox: SANDBOX:PATH (use cp for host to host)".into(),
            )
            .into())
        }
        (End::Sandbox { .. }, End::Sandbox { .. }) => {
            return Err(Error::invalid(
                "one side must be a host path: copy through the host in two steps".into(),
            )
            .into())
        }
    };
    let skipped = match copied {
        Ok(s) => s,
        // The daemon's answers and connection failures keep their own exit status.
        Err(e) if e.downcast_ref::<Error>().is_some() => return Err(e),
        // A path that is not there or cannot be written is the caller's to fix.
        Err(e) => {
            eprintln!("warren: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    if skipped.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for s in &skipped {
        eprintln!("warren: skipped {s}");
    }
    Ok(ExitCode::from(1))
}

struct Copy<'a> {
    client: &'a Client,
    skipped: Vec<String>,
    /// `&user=...`, or nothing.
    as_user: String,
}

/// The last component of a path, for copying into a directory.
fn base_name(path: &str) -> anyhow::Result<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            Error::invalid(format!(
                "{path:?} names no file: give the file or directory itself"
            ))
            .into()
        })
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

impl Copy<'_> {
    async fn stat(&self, key: &str, path: &str) -> Result<Option<FileInfo>, Error> {
        let url = format!(
            "/v1/sandboxes/{}/files/stat?path={}{}",
            enc(key),
            enc(path),
            self.as_user
        );
        match self
            .client
            .call::<FileInfo>(Method::GET, &url, None::<&()>)
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.code() == Some("file_not_found") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn mkdir(&self, key: &str, path: &str) -> Result<(), Error> {
        let url = format!(
            "/v1/sandboxes/{}/files/mkdir?path={}{}",
            enc(key),
            enc(path),
            self.as_user
        );
        match self.client.call_raw(Method::POST, &url, None::<&()>).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("already_exists") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload(mut self, key: &str, from: PathBuf, to: String) -> anyhow::Result<Vec<String>> {
        let meta = std::fs::symlink_metadata(&from)
            .with_context(|| format!("cannot read {}", from.display()))?;
        let name = from
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .or_else(|| {
                std::fs::canonicalize(&from)
                    .ok()?
                    .file_name()?
                    .to_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| anyhow!("{} has no name to copy under", from.display()))?;
        let target = match self.stat(key, &to).await? {
            Some(i) if i.file_type == FileType::Dir => join(&to, &name),
            Some(_) if meta.is_dir() => {
                bail!("{key}:{to} is a file: cannot copy a directory over it")
            }
            _ if to.ends_with('/') => bail!("{key}:{to} is not a directory"),
            _ => to,
        };
        if meta.is_dir() {
            self.upload_dir(key, &from, &target).await?;
        } else {
            self.upload_one(key, &from, &target, &meta).await?;
        }
        Ok(self.skipped)
    }

    async fn upload_dir(&mut self, key: &str, dir: &Path, target: &str) -> anyhow::Result<()> {
        self.mkdir(key, target).await?;
        // Depth first, with a stack: no recursion into async.
        let mut todo = vec![(dir.to_path_buf(), target.to_string())];
        while let Some((dir, target)) = todo.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    self.skipped
                        .push(format!("{} (a name that is not UTF-8)", path.display()));
                    continue;
                };
                let meta = std::fs::symlink_metadata(&path)?;
                let dest = join(&target, &name);
                if meta.is_dir() {
                    self.mkdir(key, &dest).await?;
                    todo.push((path, dest));
                } else if meta.is_file() {
                    self.upload_one(key, &path, &dest, &meta).await?;
                } else {
                    self.skipped
                        .push(format!("{} (a symlink or special file)", path.display()));
                }
            }
        }
        Ok(())
    }

    async fn upload_one(
        &self,
        key: &str,
        from: &Path,
        to: &str,
        meta: &std::fs::Metadata,
    ) -> anyhow::Result<()> {
        if !meta.is_file() {
            bail!("{} is not a regular file or directory", from.display());
        }
        let file = tokio::fs::File::open(from)
            .await
            .with_context(|| format!("cannot open {}", from.display()))?;
        let chunks = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let url = format!(
            "/v1/sandboxes/{}/files?path={}&mode={:o}{}",
            enc(key),
            enc(to),
            meta.permissions().mode() & 0o7777,
            self.as_user
        );
        let resp = self
            .client
            .send_body(
                Method::PUT,
                &url,
                Some("application/octet-stream"),
                http_body_util::StreamBody::new(chunks),
            )
            .await
            .with_context(|| format!("copying {} to {key}:{to}", from.display()))?;
        drop(resp);
        Ok(())
    }

    async fn download(
        mut self,
        key: &str,
        from: String,
        to: PathBuf,
    ) -> anyhow::Result<Vec<String>> {
        let info = self
            .stat(key, &from)
            .await?
            .ok_or_else(|| anyhow!("{key}:{from}: no such file or directory"))?;
        let target = if to.is_dir() {
            to.join(base_name(&from)?)
        } else {
            to
        };
        match info.file_type {
            FileType::Dir => self.download_dir(key, &from, &target).await?,
            FileType::File => self.download_one(key, &from, &target, info.mode).await?,
            _ => bail!("{key}:{from} is not a regular file or directory"),
        }
        Ok(self.skipped)
    }

    async fn download_dir(&mut self, key: &str, from: &str, target: &Path) -> anyhow::Result<()> {
        let mut todo = vec![(from.to_string(), target.to_path_buf())];
        while let Some((dir, target)) = todo.pop() {
            match std::fs::create_dir(&target) {
                Ok(()) => {}
                // Only a real directory is gone into: a link there (one this copy made
                // from the sandbox's, or one a case-folding file system matched) could
                // lead anywhere on the host.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let is_dir = std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir());
                    if !is_dir {
                        bail!(
                            "{} is there and is not a directory: not copying into it",
                            target.display()
                        );
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot make {}", target.display()))
                }
            }
            let url = format!(
                "/v1/sandboxes/{}/files/list?path={}&depth=1{}",
                enc(key),
                enc(&dir),
                self.as_user
            );
            let entries: Vec<FileInfo> = self.client.call(Method::GET, &url, None::<&()>).await?;
            for e in entries {
                // A name the sandbox chose must stay one component here.
                if e.name_b64.is_some()
                    || e.name.is_empty()
                    || e.name.contains('/')
                    || e.name == "."
                    || e.name == ".."
                {
                    self.skipped
                        .push(format!("{key}:{}/{} (an unusual name)", dir, e.name));
                    continue;
                }
                let src = join(&dir, &e.name);
                let dest = target.join(&e.name);
                match e.file_type {
                    FileType::Dir => todo.push((src, dest)),
                    FileType::File => self.download_one(key, &src, &dest, e.mode).await?,
                    FileType::Symlink => match &e.symlink_target {
                        Some(t) => {
                            let _ = std::fs::remove_file(&dest);
                            std::os::unix::fs::symlink(t, &dest).with_context(|| {
                                format!("cannot make the symlink {}", dest.display())
                            })?;
                        }
                        None => self
                            .skipped
                            .push(format!("{key}:{src} (an unreadable link)")),
                    },
                    FileType::Other => self.skipped.push(format!("{key}:{src} (a special file)")),
                }
            }
        }
        Ok(())
    }

    async fn download_one(
        &self,
        key: &str,
        from: &str,
        to: &Path,
        mode: u32,
    ) -> anyhow::Result<()> {
        let url = format!(
            "/v1/sandboxes/{}/files?path={}{}",
            enc(key),
            enc(from),
            self.as_user
        );
        let resp = self.client.send(Method::GET, &url, None).await?;
        // Never through a link that is already there: the file itself is replaced.
        let _ = std::fs::remove_file(to).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        });
        // No setuid, setgid or sticky bit from the sandbox's say.
        let mode = mode & 0o777;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(to)
            .with_context(|| format!("cannot write {}", to.display()))?;
        // The mode asked for at creation passed through the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow!("copying {key}:{from}: {e}"))?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data).await?;
            }
        }
        file.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_told_apart_as_docker_does() {
        assert_eq!(
            end("lab:/work"),
            End::Sandbox {
                key: "lab".into(),
                path: "/work".into()
            }
        );
        assert_eq!(
            end("lab:"),
            End::Sandbox {
                key: "lab".into(),
                path: "/".into()
            }
        );
        assert_eq!(end("./a:b"), End::Host("./a:b".into()));
        assert_eq!(
            end("alice/lab:x"),
            End::Sandbox {
                key: "alice/lab".into(),
                path: "x".into()
            }
        );
        assert_eq!(end("/tmp/a:b"), End::Host("/tmp/a:b".into()));
        assert_eq!(end("plain"), End::Host("plain".into()));
        assert_eq!(end("/tmp/x"), End::Host("/tmp/x".into()));
        assert_eq!(base_name("/a/b/").unwrap(), "b");
        assert!(base_name("/").is_err() && base_name("..").is_err());
    }
}
