//! Template archives sent over the API rather than named on the daemon's host.
//!
//! An upload is written, as it arrives, to a file of its own under the data directory's
//! `uploads/`, counted against its limit; then the archive is imported as
//! [`Manager::import_template`] imports a file of the host. The [`Upload`] owns that
//! file and removes it when dropped, whatever ended it: the import done or failed, the
//! limit passed, the client gone. A daemon that died mid-upload leaves files there that
//! the next one removes when it opens.
//!
//! Uploads take disk, not memory, but the disk is the node's: only [`MAX_UPLOADS`] run at
//! once, across tenants, and a tenant's upload makes a template of its own (seen by it
//! alone), as a tenant's build does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use warren_runtime::oci;

use crate::{Caller, CoreError, ImportProgress, ImportResult, Manager, Result};

/// The largest archive an upload takes unless its `max_bytes` says less.
pub const MAX_UPLOAD: u64 = 8 << 30;

/// Uploads the daemon takes at once.
pub const MAX_UPLOADS: usize = 2;

/// `POST /v1/templates/upload`: what to make of the archive in the body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UploadTemplate {
    pub name: String,
    #[serde(default)]
    pub start_cmd: Option<String>,
    #[serde(default)]
    pub ready_cmd: Option<String>,
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    /// Most bytes the archive, and so its layers, may take ([`MAX_UPLOAD`] at most).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub isolation: Option<warren_types::spec::Isolation>,
    /// The operator's alone to ask, as for an import.
    #[serde(default)]
    pub setuid: bool,
    /// Answer with NDJSON [`ImportEvent`](crate::ImportEvent)s as the layers unpack,
    /// instead of one result at the end.
    #[serde(default)]
    pub progress: bool,
}

/// The uploads' side of the [`Manager`].
#[derive(Debug)]
pub(crate) struct Uploads {
    slots: Arc<Semaphore>,
}

impl Default for Uploads {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_UPLOADS)),
        }
    }
}

/// Where uploads are written while they arrive.
fn uploads_dir(paths: &crate::Paths) -> PathBuf {
    paths.data.join("uploads")
}

/// Removes what uploads a dead daemon left.
pub(crate) fn clear_leftovers(paths: &crate::Paths) {
    let _ = std::fs::remove_dir_all(uploads_dir(paths));
}

/// An archive being received: its file, removed on drop, and its limit.
#[derive(Debug)]
pub struct Upload {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    written: u64,
    limit: u64,
    req: UploadTemplate,
    _slot: OwnedSemaphorePermit,
}

impl Upload {
    /// Most bytes this upload takes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Refuses an upload whose sender says it is larger than the limit.
    pub fn write_declared(&self, bytes: u64) -> Result<()> {
        if bytes > self.limit {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> CoreError {
        CoreError::TooLarge(format!(
            "the archive is larger than {}; nothing was imported",
            human(self.limit)
        ))
    }

    /// Appends `chunk`; past the limit, nothing more is written and the upload is refused.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(self.too_large());
        }
        let Some(file) = self.file.as_mut() else {
            return Err(CoreError::InvalidState("the upload is finished".into()));
        };
        file.write_all(chunk)
            .await
            .map_err(|e| CoreError::io("write the uploaded archive", e))
    }

    /// The path of the complete archive, its file flushed and closed.
    async fn finish(&mut self) -> Result<&Path> {
        if let Some(mut file) = self.file.take() {
            file.flush()
                .await
                .map_err(|e| CoreError::io("write the uploaded archive", e))?;
        }
        Ok(&self.path)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

impl Manager {
    /// Checks what can be checked before the archive arrives (the caller, the name, the
    /// setuid request) and makes a place for it, or says the daemon is busy.
    pub fn begin_upload(&self, who: &Caller, req: UploadTemplate) -> Result<Upload> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::TemplateNotFound(req.name));
        }
        check_setuid(who, req.setuid)?;
        self.new_template_key(who, &req.name, false)?;
        let limit = req.max_bytes.unwrap_or(MAX_UPLOAD).min(MAX_UPLOAD);
        let slot = self
            .uploads
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                CoreError::Busy(format!(
                    "the daemon already receives {MAX_UPLOADS} archives; retry when one is done"
                ))
            })?;
        let dir = uploads_dir(&self.config.paths);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CoreError::io("make the uploads directory", e))?;
        let path = dir.join(format!("{}.tar", crate::random_hex(16)?));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CoreError::io("make a file for the upload", e))?;
        Ok(Upload {
            file: Some(tokio::fs::File::from_std(file)),
            path,
            written: 0,
            limit,
            req,
            _slot: slot,
        })
    }

    /// Imports a complete upload as its request says; its file is gone afterwards.
    pub async fn import_upload(
        &self,
        who: &Caller,
        mut upload: Upload,
        progress: Option<watch::Sender<ImportProgress>>,
    ) -> Result<ImportResult> {
        let archive = upload.finish().await?.to_path_buf();
        let req = upload.req.clone();
        let mut limits = oci::Limits::default();
        if let Some(m) = req.max_bytes {
            limits.max_bytes = m;
        }
        let opts = oci::ImportOptions {
            name: req.name,
            limits,
            start_cmd: req.start_cmd,
            ready_cmd: req.ready_cmd,
            ready_timeout_secs: req.ready_timeout_secs,
            tenant: Some(who.tenant.clone()),
            isolation: req.isolation,
            setuid: req.setuid,
            private: !who.operator,
            source: Some(format!(
                "an archive of {:.1} MiB sent to the API",
                upload.written as f64 / (1 << 20) as f64
            )),
        };
        // The file goes when the import is done, even if the caller stopped waiting.
        self.import_archive(archive, opts, upload, progress).await
    }
}

/// Setuid programs that work inside are the operator's alone to allow.
pub(crate) fn check_setuid(who: &Caller, setuid: bool) -> Result<()> {
    if setuid && !who.operator {
        return Err(CoreError::Invalid(
            "only the operator may import a template whose setuid programs work inside \
             (import it on the daemon's unix socket)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_people_write_them() {
        assert_eq!(human(MAX_UPLOAD), "8 GiB");
        assert_eq!(human(3 << 20), "3 MiB");
        assert_eq!(human(4 << 10), "4 KiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
