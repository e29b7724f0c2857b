//! Templates through the engine: import, build, snapshot, list, remove, collect, and the
//! start and ready commands a template gives the sandboxes made from it.
//!
//! Templates are the node's, shared by every tenant (a tenant sees the templates others
//! made, as it sees `host`), except snapshots: they hold a sandbox's files, so only
//! their tenant sees and uses them. The tenant that made a template is recorded and
//! alone may remove it. A template is in use while any sandbox that is not terminated was made from it,
//! by the daemon or by `warren run`: its layers are the lower half of those sandboxes'
//! roots, so removing it is refused (409) until they are gone.
//!
//! A build is a sandbox of the base template that the engine keeps to itself (it is not
//! in the store and no tenant sees it): each step runs there through the agent, its
//! output streamed to the caller and to the build log; then the sandbox stops and its
//! writable layer becomes the new template's top layer. A failed step removes the
//! sandbox and everything it wrote, so a build either makes a whole template or nothing.
//!
//! A snapshot copies a sandbox's writable layer, and only that: the new template lists
//! the copy above the base template's layers, which it shares. A running sandbox is
//! frozen for the copy so the files are those of one moment, then thawed.
//!
//! Start and ready commands run when a sandbox made from a template boots (created or
//! started again from its kept files): the start command in the background, then the
//! ready command is polled until it exits 0; a sandbox whose ready command does not
//! succeed before the deadline is removed and the creation fails, saying so. Memory
//! checkpoints (resuming processes, not only files) would slot in at the same place as
//! a `Checkpoint` step before `destroy` and a restore instead of `boot`; they need CRIU
//! 4.1 or later, which this host does not have, so a stopped sandbox continues from its
//! files with its start command run again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use warren_runtime::client::ProcessEvent;
use warren_runtime::namespace::CreateOptions;
use warren_runtime::oci::{self, ImportProgress};
use warren_runtime::template::{self, Template, TemplateKind, TemplateMeta, UpperSource};
use warren_runtime::Instance;
use warren_types::api::SandboxState;
use warren_types::proto::{Command, ExecRequest, User};
use warren_types::spec::{Isolation, NetworkMode, SandboxSpec};

use crate::{random_hex, Caller, CoreError, Manager, Record, Result};

/// A template as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    #[serde(flatten)]
    pub meta: TemplateMeta,
    /// Bytes its own layers take (layers shared with other templates count in each).
    pub size_bytes: u64,
    /// Sandboxes made from it that are not terminated.
    pub used_by: Vec<String>,
}

/// `POST /v1/templates/import`: an archive on the daemon's host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportTemplate {
    /// Absolute path of a `docker save` or OCI layout archive on the daemon's host.
    pub archive: PathBuf,
    pub name: String,
    #[serde(default)]
    pub start_cmd: Option<String>,
    #[serde(default)]
    pub ready_cmd: Option<String>,
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    /// Most bytes the layers may unpack to (default 32 GiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The backend its sandboxes get when their request names none (an E2B create
    /// names none).
    #[serde(default)]
    pub isolation: Option<warren_types::spec::Isolation>,
    /// Keep the image's setuid programs working inside its sandboxes (its `sudo`
    /// raises to the sandbox's root); the operator's alone to ask, for an image it
    /// trusts. See SECURITY.md.
    #[serde(default)]
    pub setuid: bool,
}

/// What an import made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    pub template: TemplateInfo,
    pub new_layers: usize,
    pub shared_layers: usize,
    /// Device nodes skipped, setuid bits cleared, owners clamped: what was neutralised.
    pub warnings: Vec<String>,
}

/// A line of an import's progress (NDJSON on the wire, when the caller asks for it with
/// `?progress=true`), tagged by `type`; the last is `done` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImportEvent {
    Progress(ImportProgress),
    Done { result: Box<ImportResult> },
    Error { code: String, message: String },
}

/// `POST /v1/templates/build`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildTemplate {
    pub name: String,
    /// The base template [default: host].
    #[serde(default)]
    pub from: Option<String>,
    /// Shell commands (`sh -c`), run in order as root; the first to fail ends the build.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Environment of the steps, kept in the template.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Give the steps outbound network (NAT).
    #[serde(default)]
    pub network: bool,
    /// Working directory of the steps and of the template's processes (made if missing).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Who the template's processes run as when they name nobody, in their home:
    /// `name`, `uid` or `uid:gid` [default: the base template's, else root]. The steps
    /// run as root; a name must exist once they have run (`useradd -m NAME` in a step).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub start_cmd: Option<String>,
    #[serde(default)]
    pub ready_cmd: Option<String>,
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    /// Most seconds one step may run (default 3600).
    #[serde(default)]
    pub step_timeout_secs: Option<u64>,
    /// The backend its sandboxes get when their request names none [default: the base
    /// template's]. The steps themselves run in a namespace sandbox.
    #[serde(default)]
    pub isolation: Option<warren_types::spec::Isolation>,
}

/// A line of a build's progress (NDJSON on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    Step {
        index: usize,
        count: usize,
        command: String,
    },
    /// Output of the running step (UTF-8, invalid bytes replaced).
    Output {
        stream: String,
        data: String,
    },
    /// The steps are done; the files are being captured.
    Capturing,
    Done {
        template: Box<TemplateInfo>,
    },
    Error {
        code: String,
        message: String,
    },
}

/// `POST /v1/sandboxes/{key}/snapshot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub name: String,
    /// Its processes and memory too (a gVisor sandbox on network `none`): sandboxes made
    /// from the template go on from that moment, warm, instead of booting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
}

/// What a snapshot made and cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResult {
    pub template: TemplateInfo,
    /// Bytes of the new layer: the sandbox's own changes, nothing of its base.
    pub bytes_written: u64,
    pub millis: u64,
}

/// What the layer collector removed (or would).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerGcResult {
    pub layers: Vec<String>,
    pub bytes: u64,
    /// Kept files of builds that never finished.
    pub build_leftovers: Vec<String>,
}

/// Disk used per template and per sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub templates: Vec<UsageRow>,
    pub sandboxes: Vec<UsageRow>,
    /// The layers of those templates together, each counted once.
    pub layers_bytes: u64,
    /// The host's disk, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostDisk>,
}

/// The data directory's disk and what the sparse images on it may still take.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDisk {
    pub free_bytes: u64,
    /// The sizes of every sandbox's disk image and every sized volume, added up.
    pub images_bytes: u64,
    /// What those images may still take as their sandboxes write: more than
    /// `free_bytes` means the host's disk can fill before they do.
    pub unbacked_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub name: String,
    pub bytes: u64,
}

pub(crate) fn template_error(e: warren_runtime::Error) -> CoreError {
    use warren_runtime::Error as E;
    match e {
        E::UnknownTemplate(n) => CoreError::TemplateNotFound(n),
        E::TemplateExists(_) => CoreError::InvalidState(e.to_string()),
        e => e.into(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> warren_runtime::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Host(format!("a template task failed: {e}")))?
        .map_err(template_error)
}

/// The last `n` bytes of `s`, from a line start when there is one.
fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let t = &s[start..];
    t.find('\n').map(|i| &t[i + 1..]).unwrap_or(t)
}

impl Manager {
    /// Template `meta` as `who` sees it: of its users, only `who`'s tenant's sandboxes
    /// (an operator sees every one); of a template another made, the archive's file name
    /// and not where on the host it was (an operator sees the whole path).
    fn template_info(&self, mut meta: TemplateMeta, who: &Caller) -> TemplateInfo {
        let key = meta.key.clone();
        let paths = &self.config.paths;
        let size_bytes = meta
            .layers
            .iter()
            .map(|l| template::layer_size(paths, l))
            .sum();
        let used_by = self.template_users(&key, who);
        let theirs = meta.tenant.as_deref() == Some(who.tenant.as_str());
        if !who.operator && !theirs && meta.kind == TemplateKind::Image {
            if let Some(name) = std::path::Path::new(&meta.source).file_name() {
                meta.source = name.to_string_lossy().into_owned();
            }
        }
        TemplateInfo {
            meta,
            size_bytes,
            used_by,
        }
    }

    /// Sandboxes (not terminated) made from the template stored under `key`: every one
    /// for an operator, `who`'s tenant's for anyone else (other tenants' sandbox ids are
    /// theirs to know: an id alone reaches a sandbox's ports on the E2B surface).
    pub(crate) fn template_users(&self, key: &str, who: &Caller) -> Vec<String> {
        let mut users: Vec<String> = self
            .store()
            .list_live((!who.operator).then_some(who.tenant.as_str()))
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.spec.template == key)
            .map(|r| r.id)
            .collect();
        // Sandboxes the store does not hold (`warren run`'s, builds'): the host's root's.
        if who.operator {
            for id in template::live_users(&self.config.paths, key) {
                if !users.contains(&id) {
                    users.push(id);
                }
            }
        }
        users.sort();
        users
    }

    /// The templates `who` may see and use, `host` first.
    pub fn templates_for(&self, who: &Caller) -> Result<Vec<TemplateInfo>> {
        let metas = template::list(&self.config.paths).map_err(template_error)?;
        Ok(metas
            .into_iter()
            .filter(|m| m.kind != TemplateKind::Fork && usable_by(m, who))
            .map(|m| self.template_info(m, who))
            .collect())
    }

    pub fn template(&self, who: &Caller, name: &str) -> Result<TemplateInfo> {
        Ok(self.template_info(self.resolve_template(who, name)?.meta, who))
    }

    /// Template `name`'s metadata, if `who` may see it (cheaper than
    /// [`Manager::template`], which also measures it and counts its users).
    pub fn template_meta(&self, who: &Caller, name: &str) -> Result<TemplateMeta> {
        Ok(self.resolve_template(who, name)?.meta)
    }

    /// The snapshots `who`'s tenant made, oldest first.
    pub fn snapshots(&self, who: &Caller) -> Result<Vec<TemplateMeta>> {
        let mut out: Vec<TemplateMeta> = template::list(&self.config.paths)
            .map_err(template_error)?
            .into_iter()
            .filter(|m| m.kind == TemplateKind::Snapshot)
            .filter(|m| m.tenant.as_deref() == Some(who.tenant.as_str()))
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        Ok(out)
    }

    /// The template `who` means by `name`: the built-in one, else one every tenant sees
    /// (these cannot be shadowed), else the tenant's own. Another tenant's is never found,
    /// and not told apart from a missing one.
    pub(crate) fn resolve_template(&self, who: &Caller, name: &str) -> Result<Template> {
        let paths = &self.config.paths;
        if !warren_runtime::valid_name(name) {
            return Err(CoreError::TemplateNotFound(name.to_string()));
        }
        match template::resolve(paths, name) {
            Ok(t) if usable_by(&t.meta, who) => return Ok(t),
            Ok(_) | Err(warren_runtime::Error::UnknownTemplate(_)) => {}
            Err(e) => return Err(template_error(e)),
        }
        match template::resolve(paths, &template::key(Some(&who.tenant), name)) {
            Ok(t) => Ok(t),
            Err(warren_runtime::Error::UnknownTemplate(_)) => {
                Err(CoreError::TemplateNotFound(name.to_string()))
            }
            Err(e) => Err(template_error(e)),
        }
    }

    /// Where a new template `name` made by `who` is stored: the operator's are every
    /// tenant's, a tenant's (and every snapshot, which holds a sandbox's files) its own.
    pub(crate) fn new_template_key(
        &self,
        who: &Caller,
        name: &str,
        snapshot: bool,
    ) -> Result<(String, bool)> {
        let private = snapshot || !who.operator;
        if !warren_runtime::valid_name(name) {
            return Err(CoreError::Invalid(format!(
                "template name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not \
                 starting with '.'"
            )));
        }
        let key = template::key(private.then_some(who.tenant.as_str()), name);
        template::check_new_name(&self.config.paths, &key).map_err(template_error)?;
        Ok((key, private))
    }

    /// Imports an image archive from the daemon's host as a template; `progress`, when
    /// given, hears how far it has come.
    pub async fn import_template(
        &self,
        who: &Caller,
        req: ImportTemplate,
        progress: Option<watch::Sender<ImportProgress>>,
    ) -> Result<ImportResult> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::TemplateNotFound(req.name));
        }
        if !req.archive.is_absolute() {
            return Err(CoreError::Invalid(format!(
                "archive {:?} must be an absolute path on the daemon's host",
                req.archive
            )));
        }
        crate::upload::check_setuid(who, req.setuid)?;
        let mut limits = oci::Limits::default();
        if let Some(m) = req.max_bytes {
            limits.max_bytes = m;
        }
        let opts = oci::ImportOptions {
            name: req.name.clone(),
            limits,
            start_cmd: req.start_cmd,
            ready_cmd: req.ready_cmd,
            ready_timeout_secs: req.ready_timeout_secs,
            tenant: Some(who.tenant.clone()),
            isolation: req.isolation,
            setuid: req.setuid,
            // A file of the daemon's host: only the host's root names one.
            private: false,
            source: None,
        };
        self.import_archive(req.archive, opts, (), progress).await
    }

    /// Imports `archive` as `opts` says; `keep` lives until the import is done, whether
    /// or not the caller still waits.
    pub(crate) async fn import_archive(
        &self,
        archive: PathBuf,
        opts: oci::ImportOptions,
        keep: impl Send + 'static,
        progress: Option<watch::Sender<ImportProgress>>,
    ) -> Result<ImportResult> {
        let paths = self.config.paths.clone();
        let imported = blocking(move || {
            let r = oci::import(&paths, &archive, &opts, &mut |at| {
                if let Some(p) = &progress {
                    p.send_replace(at);
                }
            });
            drop(keep);
            r
        })
        .await?;
        let mut warnings = Vec::new();
        for (i, r) in imported.reports.iter().enumerate() {
            let layer = i + 1;
            if !r.skipped_devices.is_empty() {
                warnings.push(format!(
                    "layer {layer}: device nodes skipped (a sandbox has its own /dev): {}",
                    r.skipped_devices.join(", ")
                ));
            }
            if !r.stripped_setid.is_empty() {
                warnings.push(format!(
                    "layer {layer}: setuid/setgid bits cleared: {}",
                    r.stripped_setid.join(", ")
                ));
            }
            if r.clamped_owners > 0 {
                warnings.push(format!(
                    "layer {layer}: {} owners past uid/gid 65535 now belong to nobody",
                    r.clamped_owners
                ));
            }
        }
        // Whoever imported it: its tenant, or the host's root for a template of all.
        let importer = match &imported.template.tenant {
            Some(t) => Caller::tenant(t),
            None => Caller::operator(""),
        };
        Ok(ImportResult {
            template: self.template_info(imported.template, &importer),
            new_layers: imported.new_layers,
            shared_layers: imported.shared_layers,
            warnings,
        })
    }

    /// Removes a template no sandbox uses; 409 (`invalid_state`) while one does.
    pub fn remove_template(&self, who: &Caller, name: &str) -> Result<()> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::TemplateNotFound(name.into()));
        }
        let paths = &self.config.paths;
        if name == template::HOST {
            return Err(CoreError::Invalid(
                "\"host\" is built in and cannot be removed".into(),
            ));
        }
        let meta = self.resolve_template(who, name)?.meta;
        if !meta.private && meta.tenant.as_ref().is_some_and(|t| *t != who.tenant) && !who.operator
        {
            return Err(CoreError::InvalidState(format!(
                "template {name} belongs to another tenant; only its maker can remove it"
            )));
        }
        let users = self.template_users(&meta.key, &Caller::operator(""));
        if !users.is_empty() {
            // Named when they are the caller's to see; counted otherwise.
            let seen = self.template_users(&meta.key, who);
            let others = users.len() - seen.len();
            let mut by = Vec::new();
            if !seen.is_empty() {
                by.push(format!("sandbox(es) {}", seen.join(", ")));
            }
            if others > 0 {
                by.push(format!("{others} sandbox(es) of other tenants"));
            }
            return Err(CoreError::InvalidState(format!(
                "template {name} is in use by {}: it can be removed once they are gone",
                by.join(" and ")
            )));
        }
        template::remove(paths, &meta.key).map_err(template_error)
    }

    /// Removes layers no template lists, unfinished layers, and the files of builds
    /// that never finished.
    pub async fn gc_layers(&self, dry_run: bool) -> Result<LayerGcResult> {
        let paths = self.config.paths.clone();
        let report = blocking({
            let paths = paths.clone();
            move || template::gc(&paths, dry_run)
        })
        .await?;
        let mut leftovers = Vec::new();
        for e in std::fs::read_dir(paths.data.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(id) = e.file_name().into_string() else {
                continue;
            };
            if id.starts_with("build-")
                && !warren_runtime::namespace::helper_alive(&paths.sandbox_run(&id))
            {
                if !dry_run {
                    if let Ok(b) = self.backends.get(Isolation::Namespace) {
                        b.purge(&id, true);
                    }
                }
                leftovers.push(id);
            }
        }
        Ok(LayerGcResult {
            layers: report.layers,
            bytes: report.bytes,
            build_leftovers: leftovers,
        })
    }

    /// Disk used by the templates the caller can see and by its sandboxes (as last
    /// measured: a request never walks a sandbox's tree), and for the operator what the
    /// host's disk images may still take.
    pub async fn disk_usage(self: &std::sync::Arc<Self>, who: &Caller) -> Result<DiskUsage> {
        let sandboxes = self
            .store()
            .list_live(Some(&who.tenant))?
            .into_iter()
            .filter(|r| who.only_sandbox.as_ref().is_none_or(|o| *o == r.id))
            .map(|r| UsageRow {
                bytes: self.disk_bytes(&r.id),
                name: r.id,
            })
            .collect();
        let (mgr, who) = (self.clone(), who.clone());
        // Layer sizes are recorded when layers are made; an old layer without its record
        // is measured once, off the runtime's threads.
        let (templates, layers_bytes, host) = tokio::task::spawn_blocking(move || {
            let paths = &mgr.config.paths;
            let templates = mgr.templates_for(&who)?;
            let mut all_layers = std::collections::BTreeSet::new();
            for t in &templates {
                all_layers.extend(t.meta.layers.iter().cloned());
            }
            let layers: u64 = all_layers
                .iter()
                .map(|l| template::layer_size(paths, l))
                .sum();
            let host = who
                .operator
                .then(|| template::disk_commitments(paths))
                .map(|c| HostDisk {
                    free_bytes: c.free,
                    images_bytes: c.nominal,
                    unbacked_bytes: c.unbacked,
                });
            Ok::<_, CoreError>((templates, layers, host))
        })
        .await
        .map_err(|e| CoreError::Host(format!("measuring disks: {e}")))??;
        Ok(DiskUsage {
            layers_bytes,
            templates: templates
                .into_iter()
                .map(|t| UsageRow {
                    name: t.meta.name,
                    bytes: t.size_bytes,
                })
                .collect(),
            sandboxes,
            host,
        })
    }

    /// Captures a sandbox's files (running, paused or stopped) as template `req.name`.
    pub async fn snapshot(
        &self,
        who: &Caller,
        key: &str,
        req: SnapshotRequest,
    ) -> Result<SnapshotResult> {
        let started = Instant::now();
        let (meta, bytes_written) = if req.memory {
            self.capture_memory(who, key, &req.name).await?
        } else {
            self.capture_files(who, key, &req.name, TemplateKind::Snapshot)
                .await?
        };
        Ok(SnapshotResult {
            template: self.template_info(meta, who),
            bytes_written,
            millis: started.elapsed().as_millis() as u64,
        })
    }

    /// Captures a sandbox's files as template `name` of `kind`, private to the sandbox's
    /// tenant; a running sandbox is frozen for the copy.
    pub(crate) async fn capture_files(
        &self,
        who: &Caller,
        key: &str,
        name: &str,
        kind: TemplateKind,
    ) -> Result<(TemplateMeta, u64)> {
        let paths = self.config.paths.clone();
        let r = self.resolve(who, key)?;
        // A snapshot holds its sandbox's files: the sandbox's tenant's alone.
        let owner = Caller::tenant(&r.tenant);
        self.new_template_key(&owner, name, true)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let r = self.resolve(who, &r.id)?;
        if !matches!(
            r.state,
            SandboxState::Running | SandboxState::Paused | SandboxState::Stopped
        ) {
            return Err(Self::invalid(&r, "snapshot"));
        }
        let base = template::resolve(&paths, &r.spec.template).map_err(template_error)?;
        let freeze = r.state == SandboxState::Running;
        if freeze {
            self.off_lock(&r.id, |l| l.sandbox.pause())
                .await?
                .map_err(CoreError::from)?;
        }
        // Asked once paused: a sandbox paused to disk (gVisor) has no process left that
        // mounts its disk, once the end of its pause has run (it may wait for that).
        let helper = self
            .off_lock(&r.id, |l| l.sandbox.monitor_pid())
            .await
            .ok()
            .flatten();
        let src = template::upper_source(&paths, &r.id, helper);
        let meta = snapshot_meta(&r, &base.meta, name, kind);
        let made = blocking({
            let paths = paths.clone();
            move || capture(&paths, &src, meta)
        })
        .await;
        if freeze {
            let _ = self.off_lock(&r.id, |l| l.sandbox.resume()).await;
        }
        let made = made?;
        if kind == TemplateKind::Snapshot {
            self.event(&r, "snapshot", format!("files captured as template {name}"));
        }
        Ok(made)
    }

    /// Captures a running or paused sandbox's processes, memory and files, at one moment,
    /// as template `name` of its tenant's (see [`SnapshotRequest::memory`]).
    async fn capture_memory(
        &self,
        who: &Caller,
        key: &str,
        name: &str,
    ) -> Result<(TemplateMeta, u64)> {
        let paths = self.config.paths.clone();
        let r = self.resolve(who, key)?;
        let caps = self.backend(r.spec.isolation)?.info().capabilities;
        if !caps.memory_snapshots {
            return Err(CoreError::Invalid(format!(
                "a {} sandbox cannot save its memory (the gvisor backend can): snapshot its \
                 files alone, without `memory`",
                r.spec.isolation
            )));
        }
        if !r.spec.mounts.is_empty() {
            // Its processes' memory holds what they read of the host's directories, and
            // a sandbox started from it would find them missing.
            return Err(CoreError::Invalid(format!(
                "sandbox {} mounts host directories: snapshot its files alone, without                  `memory`",
                r.id
            )));
        }
        let owner = Caller::tenant(&r.tenant);
        self.new_template_key(&owner, name, true)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let r = self.resolve(who, &r.id)?;
        if !matches!(r.state, SandboxState::Running | SandboxState::Paused) {
            return Err(Self::invalid(&r, "snapshot with memory"));
        }
        let base = template::resolve(&paths, &r.spec.template).map_err(template_error)?;
        let mut meta = snapshot_meta(&r, &base.meta, name, TemplateKind::Snapshot);
        // Saved aside, then moved into the template's directory as it appears.
        let aside = paths
            .data
            .join("templates")
            .join(format!(".memory-{}", random_hex(8)?));
        let into = aside.clone();
        let saved = self
            .off_lock(&r.id, move |l| l.sandbox.save_memory(&into))
            .await?
            .map_err(CoreError::from);
        let image_bytes = template::dir_size(&aside.join("image"));
        let made = saved.and_then(|()| {
            meta.memory = Some(template::SavedMemory {
                home_volume: !r.spec.volumes.is_empty(),
                image_bytes,
            });
            template::save_with(&paths, &meta, |stage| {
                std::fs::rename(&aside, stage.join("memory"))
                    .map_err(|e| warren_runtime::Error::io("place the saved memory", e))
            })
            .map_err(template_error)
        });
        if made.is_err() {
            let _ = warren_runtime::tree::remove(&aside);
        }
        made?;
        meta.key = meta.storage_key();
        self.event(
            &r,
            "snapshot",
            format!("processes, memory and files captured as template {name}"),
        );
        Ok((meta, image_bytes))
    }

    /// Removes the templates forks were made from once no sandbox uses them (and they
    /// are old enough that no fork is still being made from them).
    pub(crate) fn sweep_fork_templates(&self) {
        let paths = &self.config.paths;
        let Ok(metas) = template::list(paths) else {
            return;
        };
        let old = crate::now_ms() - crate::FORK_TEMPLATE_GRACE_MS;
        for m in metas {
            if m.kind == TemplateKind::Fork
                && m.created_at < old
                && self
                    .template_users(&m.key, &Caller::operator(""))
                    .is_empty()
            {
                let _ = template::remove(paths, &m.key);
            }
        }
    }

    /// Builds template `req.name`; progress goes to `events` (a closed receiver does
    /// not stop the build).
    pub async fn build_template(
        &self,
        who: &Caller,
        req: BuildTemplate,
        events: mpsc::Sender<BuildEvent>,
    ) -> Result<TemplateInfo> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::TemplateNotFound(req.name));
        }
        let paths = self.config.paths.clone();
        let (_, private) = self.new_template_key(who, &req.name, false)?;
        let from = req.from.clone().unwrap_or_else(|| template::HOST.into());
        let base = self.resolve_template(who, &from)?;
        if base.meta.memory.is_some() {
            return Err(CoreError::Invalid(format!(
                "template {from} carries a sandbox's memory and cannot be built on: build on \
                 the template it was made from, or snapshot that sandbox without memory"
            )));
        }
        // A build is a sandbox like any other: the daemon's default limits, its step
        // time bounded, and a tenant's builds at once counted.
        let mut req = req;
        let max_step = self.config.policy.build_step_secs;
        match req.step_timeout_secs {
            Some(s) if s == 0 || s > max_step => {
                return Err(CoreError::Invalid(format!(
                    "step_timeout_secs must be 1 to {max_step}"
                )))
            }
            Some(_) => {}
            None => req.step_timeout_secs = Some(max_step),
        }
        if let Some(user) = &req.user {
            check_user(user)?;
        }
        let _build = self.start_build(who)?;
        let id = format!(
            "build-{}",
            warren_runtime::new_id().map_err(CoreError::from)?
        );
        let resources = self.config.policy.with_defaults(&Default::default());
        let spec = SandboxSpec {
            resources,
            id: id.clone(),
            template: base.meta.key.clone(),
            network: if req.network {
                NetworkMode::Nat
            } else {
                NetworkMode::None
            },
            env: req.env.clone(),
            ..Default::default()
        };
        let log_path = paths.data.join("templates").join(format!(".{id}.log"));
        std::fs::create_dir_all(paths.data.join("templates"))
            .map_err(|e| CoreError::io("create the templates directory", e))?;
        // Builds run on the namespace backend: the layer they leave is a template's,
        // the same whichever backend later starts from it.
        let sb = self
            .backends
            .get(Isolation::Namespace)
            .map_err(CoreError::from)?
            .create(
                spec,
                CreateOptions {
                    die_with_parent: false,
                    ephemeral: false,
                },
            )
            .await
            .map_err(|e| match e {
                e @ warren_runtime::Error::NoSpace { .. } => e.into(),
                e => CoreError::Host(format!("the build sandbox: {e}")),
            })?;
        let ran = run_steps(sb.as_ref(), &req, &log_path, &events).await;
        let destroyed = sb.destroy().await;
        let result = match (ran, destroyed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(())) => {
                let _ = events.send(BuildEvent::Capturing).await;
                let meta = TemplateMeta {
                    name: req.name.clone(),
                    kind: TemplateKind::Build,
                    source: format!("{} step(s) on template {from}", req.steps.len()),
                    layers: base.meta.layers.clone(),
                    host_base: base.meta.host_base,
                    env: {
                        let mut env = base.meta.env.clone();
                        env.extend(req.env.clone());
                        env
                    },
                    workdir: req.workdir.clone().or(base.meta.workdir.clone()),
                    user: req.user.clone().or(base.meta.user.clone()),
                    cmd: base.meta.cmd.clone(),
                    start_cmd: req.start_cmd.clone().or(base.meta.start_cmd.clone()),
                    ready_cmd: req.ready_cmd.clone().or(base.meta.ready_cmd.clone()),
                    ready_timeout_secs: req.ready_timeout_secs.or(base.meta.ready_timeout_secs),
                    created_at: crate::now_ms(),
                    tenant: Some(who.tenant.clone()),
                    source_sandbox: None,
                    private,
                    isolation: req.isolation.or(base.meta.isolation),
                    setuid: base.meta.setuid,
                    memory: None,
                    key: String::new(),
                };
                // The build sandbox is gone: its layer is read where it was kept.
                let src = template::upper_source(&paths, &id, None);
                let p = paths.clone();
                let log = log_path.clone();
                blocking(move || {
                    let (meta, _) = capture(&p, &src, meta)?;
                    let _ = std::fs::rename(&log, p.template(&meta.key).join("build.log"));
                    Ok(meta)
                })
                .await
            }
        };
        if let Ok(b) = self.backends.get(Isolation::Namespace) {
            let _ = b.remove_data(&id).await;
        }
        let _ = std::fs::remove_file(&log_path);
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = events
                    .send(BuildEvent::Error {
                        code: e.code().to_string(),
                        message: e.to_string(),
                    })
                    .await;
                return Err(e);
            }
        };
        let info = self.template_info(meta, who);
        let _ = events
            .send(BuildEvent::Done {
                template: Box::new(info.clone()),
            })
            .await;
        Ok(info)
    }

    /// Counts a build of `who`'s tenant for as long as the guard lives; refuses one past
    /// [`MAX_BUILDS`] at once (the operator's are not counted).
    fn start_build(&self, who: &Caller) -> Result<BuildGuard<'_>> {
        let mut builds = self.builds.lock().unwrap_or_else(|e| e.into_inner());
        let n = builds.entry(who.tenant.clone()).or_default();
        if !who.operator && *n >= MAX_BUILDS {
            return Err(CoreError::Quota(format!(
                "the tenant already runs {MAX_BUILDS} template builds; wait for one to end"
            )));
        }
        *n += 1;
        Ok(BuildGuard {
            mgr: self,
            tenant: who.tenant.clone(),
        })
    }

    /// Makes a sandbox and runs its template's start and ready commands; on a failed
    /// ready command the sandbox is removed again.
    pub(crate) async fn boot(
        &self,
        spec: SandboxSpec,
        opts: CreateOptions,
    ) -> warren_runtime::Result<Box<dyn Instance>> {
        let backend = self.backends.get(spec.isolation)?;
        // What runs once it is up: read before it is made (its layers are the backend's).
        let meta = template::meta(&self.config.paths, &spec.template)?;
        // Before the sandbox exists: it is under its rules from its first packet.
        self.apply_egress(&spec)?;
        let kept = spec.clone();
        let sb = match backend.create(spec, opts).await {
            Ok(sb) => sb,
            Err(e) => {
                self.clear_egress(&kept);
                return Err(e);
            }
        };
        if meta.start_cmd.is_none() && meta.ready_cmd.is_none() {
            return Ok(sb);
        }
        match start_and_wait(sb.as_ref(), &meta).await {
            Ok(()) => Ok(sb),
            Err(message) => {
                let _ = sb.destroy().await;
                self.clear_egress(&kept);
                Err(warren_runtime::Error::Setup(message))
            }
        }
    }
}

/// Bytes of a ready command's output kept to report why it failed.
const READY_TAIL: usize = 4096;

/// Template builds one tenant may run at once.
const MAX_BUILDS: u32 = 2;

/// A running build, counted until dropped.
struct BuildGuard<'a> {
    mgr: &'a Manager,
    tenant: String,
}

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        let mut builds = self.mgr.builds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = builds.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                builds.remove(&self.tenant);
            }
        }
    }
}

/// Copies a sandbox's writable layer into a new layer and saves `meta` with it on top.
/// Whether `who` may see and use template `meta`: a snapshot holds its sandbox's files,
/// so it is its tenant's alone; every other template is the node's, shared.
pub(crate) fn usable_by(meta: &TemplateMeta, who: &Caller) -> bool {
    if meta.private {
        return template::in_scope_of(&meta.key, &who.tenant);
    }
    // Snapshots made before snapshots were stored privately.
    !matches!(meta.kind, TemplateKind::Snapshot | TemplateKind::Fork)
        || meta.tenant.as_deref().is_none_or(|t| t == who.tenant)
}

/// A snapshot's metadata: its sandbox's template's, as its tenant's own, of the same
/// backend (its copies are, unless asked otherwise).
fn snapshot_meta(r: &Record, base: &TemplateMeta, name: &str, kind: TemplateKind) -> TemplateMeta {
    TemplateMeta {
        name: name.to_string(),
        kind,
        source: format!("sandbox {} of template {}", r.id, base.name),
        created_at: crate::now_ms(),
        tenant: Some(r.tenant.clone()),
        source_sandbox: Some(r.id.clone()),
        private: true,
        isolation: Some(r.spec.isolation),
        memory: None,
        key: String::new(),
        ..base.clone()
    }
}

fn capture(
    paths: &warren_runtime::Paths,
    src: &UpperSource,
    mut meta: TemplateMeta,
) -> warren_runtime::Result<(TemplateMeta, u64)> {
    let _lock = template::lock_shared(paths)?;
    let (layer, bytes) = template::snapshot_layer(paths, src)?;
    meta.layers.insert(0, layer.clone());
    if let Err(e) = template::save(paths, &meta) {
        let _ = warren_runtime::tree::remove(&template::layer_path(paths, &layer));
        return Err(e);
    }
    meta.key = meta.storage_key();
    Ok((meta, bytes))
}

async fn run_steps(
    sb: &dyn Instance,
    req: &BuildTemplate,
    log_path: &std::path::Path,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<()> {
    let mut log = tokio::fs::File::create(log_path)
        .await
        .map_err(|e| CoreError::io("create the build log", e))?;
    let client = sb.connect().await?;
    if let Some(dir) = &req.workdir {
        // As a Dockerfile's WORKDIR: made if missing.
        match client.make_dir(dir).await {
            Err(warren_runtime::client::ClientError::Agent {
                code: warren_types::proto::ErrorCode::AlreadyExists,
                ..
            })
            | Ok(()) => {}
            Err(e) => {
                return Err(CoreError::Invalid(format!(
                    "the build's working directory {dir:?} cannot be made: {e}"
                )))
            }
        }
    }
    let count = req.steps.len();
    for (i, step) in req.steps.iter().enumerate() {
        let index = i + 1;
        let _ = events
            .send(BuildEvent::Step {
                index,
                count,
                command: step.clone(),
            })
            .await;
        let _ = log
            .write_all(format!("### step {index}/{count}: {step}\n").as_bytes())
            .await;
        let mut p = client
            .exec(ExecRequest {
                command: Some(Command::Shell(step.clone())),
                env: req.env.clone(),
                cwd: req.workdir.clone(),
                timeout_ms: req.step_timeout_secs.map(|s| s.saturating_mul(1000)),
                user: Some(ROOT),
                ..Default::default()
            })
            .await?;
        let mut output = String::new();
        let status = loop {
            let (stream, data) = match p.next().await? {
                ProcessEvent::Stdout(d) => ("stdout", d),
                ProcessEvent::Stderr(d) => ("stderr", d),
                ProcessEvent::Exited(s) => break s,
            };
            let _ = log.write_all(&data).await;
            let text = String::from_utf8_lossy(&data).into_owned();
            output.push_str(&text);
            if output.len() > 64 << 10 {
                output = tail(&output, 16 << 10).to_string();
            }
            let _ = events
                .send(BuildEvent::Output {
                    stream: stream.into(),
                    data: text,
                })
                .await;
        };
        let _ = log.flush().await;
        if status.code != Some(0) {
            let how = match (status.code, status.signal, status.timed_out) {
                (_, _, true) => "timed out".to_string(),
                (Some(c), _, _) => format!("exited {c}"),
                (None, Some(s), _) => format!("was killed by signal {s}"),
                _ => "failed".to_string(),
            };
            let last = tail(output.trim_end(), 2000);
            return Err(CoreError::Invalid(format!(
                "build step {index} of {count} ({step:?}) {how}; nothing was kept. Its \
                 last output: {}",
                last.replace('\n', " | ")
            )));
        }
    }
    if let Some(user) = &req.user {
        // The template's processes will run as this user: it must exist in what the
        // steps left, or every exec would fail later.
        let mut p = client
            .exec(ExecRequest {
                command: Some(Command::Argv(vec!["true".into()])),
                user: Some(template::agent_user(user)),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                CoreError::Invalid(format!(
                    "the template's user {user:?} cannot run a process once the steps have                      run ({e}); nothing was kept: add it in a step, e.g. `useradd -m {user}`"
                ))
            })?;
        while !matches!(p.next().await?, ProcessEvent::Exited(_)) {}
    }
    Ok(())
}

/// The steps of a build run as root, whoever the base template's processes run as.
const ROOT: User = User::Id {
    uid: 0,
    gid: Some(0),
};

/// A template's user as `warren build --user` takes it: a name as `useradd` accepts
/// it, a uid, or `uid:gid` (read as [`User::parse`] reads them).
fn check_user(user: &str) -> Result<()> {
    let name_ok = |s: &str| {
        (1..=32).contains(&s.len())
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    match User::parse(user) {
        Ok(User::Id { .. }) => Ok(()),
        Ok(User::Name(n)) if name_ok(&n) => Ok(()),
        _ => Err(CoreError::Invalid(format!(
            "user {user:?} is not a user name (lowercase letters, digits, `_` and `-`, at \
             most 32), a uid, or uid:gid"
        ))),
    }
}

/// Runs the start command in the background, then polls the ready command until it
/// succeeds or the deadline passes. The error says which and what it printed.
async fn start_and_wait(sb: &dyn Instance, meta: &TemplateMeta) -> Result<(), String> {
    let client = sb
        .connect()
        .await
        .map_err(|e| format!("reach the agent to run the start command: {e}"))?;
    if let Some(start) = &meta.start_cmd {
        client
            .exec(ExecRequest {
                command: Some(Command::Shell(start.clone())),
                background: true,
                tag: Some("start".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!(
                    "the start command {start:?} of template {} did not start: {e}",
                    meta.name
                )
            })?;
    }
    let Some(ready) = &meta.ready_cmd else {
        return Ok(());
    };
    let secs = meta
        .ready_timeout_secs
        .unwrap_or(template::DEFAULT_READY_TIMEOUT_SECS);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ran = |e| format!("the ready command {ready:?} could not run: {e}");
        let mut p = client
            .exec(ExecRequest {
                command: Some(Command::Shell(ready.clone())),
                timeout_ms: Some(left.as_millis().clamp(100, 10_000) as u64),
                tag: Some("ready".into()),
                ..Default::default()
            })
            .await
            .map_err(ran)?;
        // Only the end of what it says is kept: a template's ready command may print
        // without end, and the daemon reports its last words, not all of them.
        let mut said: Vec<u8> = Vec::new();
        let status = loop {
            match p.next().await.map_err(ran)? {
                ProcessEvent::Stdout(d) | ProcessEvent::Stderr(d) => {
                    said.extend_from_slice(&d);
                    if said.len() > READY_TAIL * 2 {
                        said.drain(..said.len() - READY_TAIL);
                    }
                }
                ProcessEvent::Exited(s) => break s,
            }
        };
        if status.code == Some(0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let said = String::from_utf8_lossy(&said);
            let said = tail(said.trim(), 300).replace('\n', " | ");
            let code = status.shell_code().to_string();
            return Err(format!(
                "the ready command {ready:?} of template {} did not succeed within {secs} s \
                 (last exit {code}{}{said}); fix the template's start or ready command, or \
                 give it a longer ready timeout",
                meta.name,
                if said.is_empty() { "" } else { ": " }
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_start_at_a_line() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("one\ntwo\nthree", 7), "three");
        assert_eq!(tail("ééééé", 3), "é");
    }

    #[test]
    fn a_builds_user_is_a_name_a_uid_or_uid_and_gid() {
        for ok in ["user", "_svc", "a-b_1", "1000", "0", "1000:1000"] {
            assert!(check_user(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "User",
            "1a",
            "-x",
            "a b",
            "a:b",
            "1000:",
            ":1000",
            "99999999999",
            "../x",
            "user:1000",
            &"a".repeat(33),
        ] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn build_events_are_tagged() {
        let e = BuildEvent::Step {
            index: 1,
            count: 2,
            command: "true".into(),
        };
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains("\"type\":\"step\""), "{j}");
    }
}
