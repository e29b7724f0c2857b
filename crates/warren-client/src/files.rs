//! A sandbox's files: read, write, list, stat, make directories, rename, remove.
//!
//! Paths are the sandbox's own (absolute, or relative to the agent's working directory).
//! Contents travel as raw bytes, at most 128 MiB a file; the daemon streams them and
//! never holds a file whole.

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;
use warren_types::proto::FileInfo;

use crate::transport::{collect, enc, sandbox_path};
use crate::{Client, Error};

/// The files of one sandbox: see [`Client::files`].
#[derive(Debug, Clone)]
pub struct Files {
    client: Client,
    key: String,
}

#[derive(Debug, Serialize)]
struct Rename<'a> {
    from: &'a str,
    to: &'a str,
}

impl Files {
    fn path(&self, route: &str, path: &str, extra: &str) -> String {
        sandbox_path(&self.key, &format!("{route}?path={}{extra}", enc(path)))
    }

    /// A file's contents.
    pub async fn read(&self, path: &str) -> Result<Bytes, Error> {
        let resp = self
            .client
            .send(Method::GET, &self.path("/files", path, ""), None)
            .await?;
        collect(resp).await
    }

    /// Writes `data` as the file's contents, making it (and its parent directories) if
    /// missing; `mode` is its permission bits (e.g. `0o755`) when given.
    pub async fn write(
        &self,
        path: &str,
        data: impl Into<Bytes>,
        mode: Option<u32>,
    ) -> Result<(), Error> {
        let mode = mode.map(|m| format!("&mode={m:o}")).unwrap_or_default();
        let body = Some(("application/octet-stream", data.into()));
        self.client
            .send(Method::PUT, &self.path("/files", path, &mode), body)
            .await
            .map(drop)
    }

    /// The entries of a directory, down to `depth` levels (1 to 16).
    pub async fn list(&self, path: &str, depth: u32) -> Result<Vec<FileInfo>, Error> {
        let path = self.path("/files/list", path, &format!("&depth={depth}"));
        self.client.call(Method::GET, &path, None::<&()>).await
    }

    /// What a path is: type, size, mode, owner, time, a symlink's target.
    pub async fn stat(&self, path: &str) -> Result<FileInfo, Error> {
        let path = self.path("/files/stat", path, "");
        self.client.call(Method::GET, &path, None::<&()>).await
    }

    /// Makes a directory and its parents.
    pub async fn mkdir(&self, path: &str) -> Result<(), Error> {
        let path = self.path("/files/mkdir", path, "");
        self.client
            .call_raw(Method::POST, &path, None::<&()>)
            .await
            .map(drop)
    }

    /// Renames (moves) `from` to `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        let path = sandbox_path(&self.key, "/files/rename");
        self.client
            .call_raw(Method::POST, &path, Some(&Rename { from, to }))
            .await
            .map(drop)
    }

    /// Removes a file, or a directory: an empty one, or with `recursive` everything in
    /// it.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), Error> {
        let extra = if recursive { "&recursive=true" } else { "" };
        self.client
            .send(Method::DELETE, &self.path("/files", path, extra), None)
            .await
            .map(drop)
    }
}

impl Client {
    /// The files of sandbox `key` (its id, name or `owner/name`).
    pub fn files(&self, key: &str) -> Files {
        Files {
            client: self.clone(),
            key: key.to_string(),
        }
    }
}
