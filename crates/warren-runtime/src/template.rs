//! Templates: the read-only lower layers of a sandbox's root filesystem, and what a
//! sandbox made from one starts with (environment, working directory, user, start and
//! ready commands).
//!
//! A template is an ordered list of layers plus metadata, `templates/NAME/template.json`
//! under the data directory. A layer is a directory in overlayfs's own format (whiteouts
//! are character devices 0/0, opaque directories carry `trusted.overlay.opaque=y`), kept
//! once under `layers/ID` and shared by every template that lists it: a sandbox's root
//! is `overlay lowerdir=top:…:bottom`, so making one costs the same whatever the
//! template. Imported layers are named by the SHA-256 of their uncompressed tar (the
//! image's diff id), so the same layer imported twice, or from two images, is stored
//! once. Snapshot layers are a sandbox's writable layer, unique by construction; they
//! are named by a random id rather than paying a full read to hash them.
//!
//! The built-in template `host` needs no download: its root is a small synthesized tree
//! (an /etc of its own, the usual empty directories) and the host's /usr, /bin, /sbin and
//! /lib* are bind-mounted read-only on top of it when a sandbox is made. Its /etc holds a
//! `user` account and copies of the host files programs need to run (certificates,
//! alternatives, the dynamic linker's configuration), and nothing secret: no shadow file,
//! no ssh keys, no host accounts. A template built or snapshotted from `host` keeps
//! those binds (`host_base`) and stacks its own layers over the synthesized tree.
//!
//! Template files are owned by the ids that root and `user` map to in a sandbox, so they
//! appear as root's and user's inside and the overlay can copy them up when written.
//!
//! Concurrency: whatever creates layers or templates holds a shared lock on
//! `layers/.lock` throughout, and [`gc`] holds it exclusively, so the collector never
//! removes a layer that a template being written is about to name. Unfinished layers
//! live in `layers/.tmp-PID-RANDOM`, removed on failure and by [`gc`] once their
//! process is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{io_err, Error, Paths, Result, HOST_ID_BASE, USER_ID};

/// Bumped when the synthesized tree changes, so old copies are rebuilt.
const HOST_TEMPLATE_VERSION: &str = "2";

/// Host directories a `host` sandbox sees read-only (those that are real directories).
const HOST_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host /etc entries copied into the `host` template when present: what programs need
/// to run, and nothing secret (the certificates of /etc/ssl, not its private keys).
const HOST_ETC: [&str; 23] = [
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "ld.so.conf",
    "ld.so.conf.d",
    "ld.so.cache",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "bash.bashrc",
    "profile",
    "profile.d",
    "inputrc",
    "mime.types",
    "protocols",
    "services",
    "python3",
    "python3.11",
    "magic",
    "terminfo",
];

/// The name of the built-in template.
pub const HOST: &str = "host";

/// Where template `name` is stored: `name` when every tenant sees it (the built-in one,
/// the operator's), under the tenant's own directory when it is that tenant's alone. A
/// tenant's names lead to its own templates and to everyone's, never to another tenant's.
pub fn key(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(t) => format!("{}/{name}", scope_dir(t)),
        None => name.to_string(),
    }
}

/// The directory of a tenant's own templates: a hash, so that any tenant name makes a
/// safe path component.
fn scope_dir(tenant: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = warren_types::random::to_hex(&Sha256::digest(tenant.as_bytes()));
    format!("@{}", &h[..16])
}

/// The name a template is shown by: its key without the tenant's directory.
pub fn display_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Whether `key` names a template that belongs to `tenant`'s own namespace.
pub fn in_scope_of(key: &str, tenant: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(scope, _)| scope == scope_dir(tenant))
}

/// Whether `key` can name a stored template: a plain name, or a tenant's directory and
/// a plain name.
pub fn valid_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((scope, name)) => {
            scope.len() == 17
                && scope.starts_with('@')
                && scope[1..].bytes().all(|b| b.is_ascii_hexdigit())
                && crate::valid_name(name)
        }
        None => crate::valid_name(key),
    }
}

impl TemplateMeta {
    /// Where this template is stored.
    pub fn storage_key(&self) -> String {
        if self.private {
            key(self.tenant.as_deref(), &self.name)
        } else {
            self.name.clone()
        }
    }
}

/// Where an older version of the host template waits until no sandbox runs on it.
const OLD_HOST: &str = ".old-host-";

/// Most lower layers of one overlay root: the `lowerdir=` option names each as
/// `/.lower/N` and must fit in one page (the kernel's own limit is 500).
const MAX_LAYERS: usize = 300;

/// How long a ready command may take to succeed when the template does not say.
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 60;

/// Where a template came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    #[default]
    Builtin,
    /// Imported from an OCI or `docker save` archive.
    Image,
    /// Built from a base template by running steps.
    Build,
    /// A sandbox's filesystem at one moment.
    Snapshot,
    /// The files a fork's copies start from (a backend without memory snapshots): its
    /// tenant's, never listed, and removed once no sandbox uses it.
    Fork,
}

/// A template's metadata: `templates/NAME/template.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub name: String,
    pub kind: TemplateKind,
    /// The archive, base template or sandbox it was made from, for people.
    pub source: String,
    /// Layer ids, top first.
    pub layers: Vec<String>,
    /// Stacked on the `host` template's tree, with the host's /usr and /lib* bound.
    pub host_base: bool,
    /// Environment of every process, over [`default_env`].
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of processes that name none.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Who processes run as when they name nobody: `name`, `uid` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// The image's entrypoint and command, as it declared them.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Run in the background (`sh -c`) whenever a sandbox made from it starts.
    #[serde(default)]
    pub start_cmd: Option<String>,
    /// Polled (`sh -c`) until it exits 0 before the sandbox counts as running.
    #[serde(default)]
    pub ready_cmd: Option<String>,
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The tenant that made it; only it (or the host's root) may remove it.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The sandbox a snapshot was taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sandbox: Option<String>,
    /// Its tenant's alone: stored in that tenant's own namespace, where only that
    /// tenant's names lead (see [`key`]). Otherwise every tenant's.
    #[serde(default)]
    pub private: bool,
    /// The backend a sandbox made from it gets when its request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<warren_types::spec::Isolation>,
    /// Its setuid programs keep their bits and work inside its sandboxes (`sudo` raises
    /// a process to the sandbox's root, no further): processes run without
    /// `no_new_privs` (see SECURITY.md). For templates the operator trusts, such as one
    /// built from the distribution's packages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub setuid: bool,
    /// A sandbox's processes and memory, saved with its files (gVisor): a sandbox made
    /// from it goes on from that moment instead of booting. Stored in [`memory_dir`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SavedMemory>,
    /// Where it is stored (see [`key`]); set when it is read.
    #[serde(skip)]
    pub key: String,
}

/// What a template that carries memory expects of the sandboxes made from it: the
/// processes it holds had these mounts, and find them again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMemory {
    /// The owner's home volume was mounted at /home/user.
    pub home_volume: bool,
    /// Bytes of the memory image.
    pub image_bytes: u64,
}

/// Where a template that carries memory keeps it: `image/` (the backend's memory image)
/// and `upper/` (the sandbox's writable layer at the same moment).
pub fn memory_dir(paths: &Paths, key: &str) -> PathBuf {
    paths.template(key).join("memory")
}

/// A template ready to be used as the lower layers of a root.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// The lower layers of the overlay root, top first.
    pub lower: Vec<PathBuf>,
    /// Host directories bind-mounted read-only at the same place in the sandbox.
    pub host_binds: Vec<PathBuf>,
    /// Environment every process of a sandbox made from it gets.
    pub env: BTreeMap<String, String>,
    pub meta: TemplateMeta,
}

impl Template {
    /// Refuses a template with more layers than one overlay mount can stack.
    pub fn check_layers(&self) -> Result<()> {
        if self.lower.len() > MAX_LAYERS {
            return Err(Error::Invalid {
                what: "template",
                why: format!(
                    "{} has {} layers, more than one overlay mount can stack ({MAX_LAYERS}); \
                     build a new template from a sandbox of it (`warren template build \
                     --from {}`) to flatten it",
                    self.name,
                    self.lower.len(),
                    self.name
                ),
            });
        }
        Ok(())
    }
}

/// The default environment of a sandbox's processes. HOME is not here: the agent sets it
/// from the account a process runs as.
pub fn default_env() -> BTreeMap<String, String> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub(crate) fn host_meta() -> TemplateMeta {
    TemplateMeta {
        name: HOST.into(),
        key: HOST.into(),
        kind: TemplateKind::Builtin,
        source: "the host's /usr and /lib*, read-only".into(),
        host_base: true,
        ..Default::default()
    }
}

/// The `host` template's synthesized tree, built on first use.
fn host_rootfs(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.template(HOST);
    let current =
        || fs::read_to_string(dir.join("version")).ok().as_deref() == Some(HOST_TEMPLATE_VERSION);
    if !current() {
        // Built once, under a lock: a second builder that replaced a finished copy would
        // delete the files under sandboxes already mounted on it.
        let _lock = lock(paths, ".host.lock", FlockArg::LockExclusive)?;
        if !current() {
            build_host(paths, &dir)?;
        }
    }
    Ok(dir.join("rootfs"))
}

/// The description of the template stored under `key`, without looking at its layers
/// (see [`resolve`] for those).
pub fn meta(paths: &Paths, key: &str) -> Result<TemplateMeta> {
    if key == HOST {
        Ok(host_meta())
    } else {
        load(paths, key)
    }
}

/// Finds the template stored under `key` (see [`key`]), building the `host` template on
/// first use.
pub fn resolve(paths: &Paths, key: &str) -> Result<Template> {
    let meta = meta(paths, key)?;
    let name = meta.name.as_str();
    let mut lower = Vec::with_capacity(meta.layers.len() + 1);
    for id in &meta.layers {
        let p = layer_path(paths, id);
        if !p.is_dir() {
            return Err(Error::Invalid {
                what: "template",
                why: format!(
                    "{name} is damaged: its layer {id} is missing; remove it with \
                     `warren template rm {name}` and make it again"
                ),
            });
        }
        lower.push(p);
    }
    let mut host_binds = Vec::new();
    if meta.host_base {
        lower.push(host_rootfs(paths)?);
        host_binds = HOST_DIRS
            .iter()
            .map(|d| Path::new("/").join(d))
            .filter(|p| p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false))
            .collect();
    }
    let mut env = default_env();
    env.extend(meta.env.clone());
    Ok(Template {
        name: name.to_string(),
        lower,
        host_binds,
        env,
        meta,
    })
}

/// Checks that `key` can name a new template. A tenant's own template may not take the
/// name of one every tenant sees (it would be shadowed), nor `host`.
pub fn check_new_name(paths: &Paths, key: &str) -> Result<()> {
    let name = display_name(key);
    if !valid_key(key) || name == HOST {
        return Err(Error::Invalid {
            what: "template name",
            why: format!(
                "{name:?} must be 1-64 letters, digits, '-', '_' or '.', and not \"host\""
            ),
        });
    }
    if paths.template(key).join("template.json").exists()
        || paths.template(name).join("template.json").exists()
    {
        return Err(Error::TemplateExists(name.to_string()));
    }
    Ok(())
}

/// The metadata of the template stored under `key` (not `host`).
pub fn load(paths: &Paths, key: &str) -> Result<TemplateMeta> {
    let name = display_name(key);
    if !valid_key(key) {
        return Err(Error::UnknownTemplate(name.to_string()));
    }
    let p = paths.template(key).join("template.json");
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::UnknownTemplate(name.to_string()))
        }
        Err(e) => return Err(io_err(format!("read {}", p.display()))(e)),
    };
    let mut meta: TemplateMeta = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
        what: "template",
        why: format!(
            "{} is unreadable ({e}); remove it with `warren template rm {name}`",
            p.display()
        ),
    })?;
    meta.key = key.to_string();
    Ok(meta)
}

/// Every template of every namespace, `host` first, then by key.
pub fn list(paths: &Paths) -> Result<Vec<TemplateMeta>> {
    let mut out = vec![host_meta()];
    let dir = paths.data.join("templates");
    let entries = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    };
    let mut keys = Vec::new();
    for n in entries(&dir) {
        if n.starts_with('@') {
            keys.extend(
                entries(&dir.join(&n))
                    .into_iter()
                    .map(|m| format!("{n}/{m}")),
            );
        } else if n != HOST {
            keys.push(n);
        }
    }
    keys.retain(|k| valid_key(k));
    keys.sort();
    for k in keys {
        if let Ok(m) = load(paths, &k) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Writes a new template's metadata; it appears whole or not at all, and a crash part
/// way leaves nothing under its name. Fails if the name was taken meanwhile.
pub fn save(paths: &Paths, meta: &TemplateMeta) -> Result<()> {
    save_with(paths, meta, |_| Ok(()))
}

/// [`save`], with `fill` putting the template's own files (see [`memory_dir`]) in its
/// directory before it appears.
pub fn save_with(
    paths: &Paths,
    meta: &TemplateMeta,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let key = meta.storage_key();
    check_new_name(paths, &key)?;
    let dir = paths.template(&key);
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    // Made aside, then renamed into place: rename(2) replaces nothing but an empty
    // directory, so of two makers of one name only one wins.
    let stage = paths.data.join("templates").join(format!(
        ".new-{}-{}",
        std::process::id(),
        crate::new_id()?
    ));
    fs::create_dir_all(&stage).map_err(io_err(format!("create {}", stage.display())))?;
    let body = serde_json::to_vec_pretty(meta).expect("template metadata serializes");
    let r = fill(&stage)
        .and_then(|()| {
            fs::write(stage.join("template.json"), body)
                .map_err(io_err(format!("write {}", stage.display())))
        })
        .and_then(|()| match fs::rename(&stage, &dir) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                Err(Error::TemplateExists(meta.name.clone()))
            }
            Err(e) => Err(io_err("write the template")(e)),
        });
    if r.is_err() {
        let _ = crate::tree::remove(&stage);
    }
    r
}

/// Removes template `name`'s metadata (and build log). Its layers stay until [`gc`]
/// finds nothing else uses them. Whether sandboxes use it is the caller's to check.
pub fn remove(paths: &Paths, key: &str) -> Result<()> {
    if key == HOST {
        return Err(Error::Invalid {
            what: "template",
            why: "\"host\" is built in and cannot be removed".into(),
        });
    }
    load(paths, key)?;
    let dir = paths.template(key);
    let gone = paths.data.join("templates").join(format!(
        ".removed-{}-{}",
        display_name(key),
        crate::new_id()?
    ));
    fs::rename(&dir, &gone).map_err(io_err(format!("remove {}", dir.display())))?;
    crate::tree::remove(&gone).map_err(io_err(format!("remove {}", gone.display())))
}

/// Where the layers live.
pub fn layers_dir(paths: &Paths) -> PathBuf {
    paths.data.join("layers")
}

pub fn layer_path(paths: &Paths, id: &str) -> PathBuf {
    layers_dir(paths).join(id)
}

/// Whether `id` can name a layer: 64 hex digits (content-addressed) or `snap-` and hex.
pub fn valid_layer_id(id: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (id.len() == 64 && hex(id)) || id.strip_prefix("snap-").is_some_and(hex)
}

/// Held while layers or templates are being made (shared) or collected (exclusive).
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] Flock<fs::File>);

/// Takes lock file `name` in the layer store: `.lock` is the store's own, `.host.lock`
/// the host template's (kept here: the templates directory holds templates only).
fn lock(paths: &Paths, name: &str, arg: FlockArg) -> Result<StoreLock> {
    let dir = layers_dir(paths);
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
        .map_err(io_err(format!("open the lock {name}")))?;
    Flock::lock(f, arg)
        .map(StoreLock)
        .map_err(|(_, e)| io_err(format!("take the lock {name}"))(e.into()))
}

/// Held by whatever makes layers and templates; blocks [`gc`] only.
pub fn lock_shared(paths: &Paths) -> Result<StoreLock> {
    lock(paths, ".lock", FlockArg::LockShared)
}

/// A layer being made: removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    done: bool,
}

impl Staging {
    /// A fresh, empty directory in the layer store, owned by the sandboxes' root.
    pub fn new(paths: &Paths) -> Result<Self> {
        let dir =
            layers_dir(paths).join(format!(".tmp-{}-{}", std::process::id(), crate::new_id()?));
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let s = Self { dir, done: false };
        lchown(&s.dir, Some(HOST_ID_BASE), Some(HOST_ID_BASE))
            .map_err(io_err(format!("chown {}", s.dir.display())))?;
        fs::set_permissions(&s.dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", s.dir.display())))?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the layer `id`. Returns false when the store had it already (this copy is
    /// dropped and the stored one shared).
    pub fn commit(mut self, paths: &Paths, id: &str) -> Result<bool> {
        let dest = layer_path(paths, id);
        if dest.exists() {
            return Ok(false);
        }
        let size = dir_size(&self.dir);
        match fs::rename(&self.dir, &dest) {
            Ok(()) => {
                self.done = true;
                let _ = fs::write(size_file(paths, id), size.to_string());
                Ok(true)
            }
            // Another import stored the same layer first.
            Err(_) if dest.exists() => Ok(false),
            Err(e) => Err(io_err(format!("store layer {id}"))(e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = crate::tree::remove(&self.dir);
        }
    }
}

fn size_file(paths: &Paths, id: &str) -> PathBuf {
    layers_dir(paths).join(format!(".{id}.size"))
}

/// Bytes on disk under `root`, which a sandbox may have shaped: see [`crate::tree`].
pub fn dir_size(root: &Path) -> u64 {
    crate::tree::size(root)
}

/// Bytes the files of sandbox `id` take on the host: its writable layer, walked (see
/// [`dir_size`]), or when it has a bounded disk, what that filesystem holds. A running
/// sandbox's image is mounted in its helper's namespace, where the filesystem's own count
/// is current; a stopped one's is read from the image's blocks.
pub fn sandbox_disk_used(paths: &Paths, id: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let data = paths.sandbox_data(id);
    let Ok(image) = fs::symlink_metadata(data.join("disk.img")) else {
        return dir_size(&data);
    };
    // The namespace backend's helper, or what holds an OCI sandbox's mounts.
    let run = paths.sandbox_run(id);
    let helper = crate::bundle::mounts_holder(&run).or_else(|| {
        fs::read_to_string(run.join("helper.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|_| crate::namespace::helper_alive(&run))
    });
    if let Some(pid) = helper {
        let mounted = crate::bundle::seen_by(pid, &run.join("disk"));
        if let Ok(st) = nix::sys::statvfs::statvfs(&mounted) {
            return (st.blocks() - st.blocks_free()) * st.fragment_size();
        }
    }
    (image.blocks() * 512).min(image.len())
}

/// What the sparse disk images of the data directory may still take from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Commitments {
    /// Free space in the data directory.
    pub free: u64,
    /// The images' sizes added up.
    pub nominal: u64,
    /// What the images hold now.
    pub allocated: u64,
    /// `nominal - allocated`: what they may still take as their sandboxes write.
    pub unbacked: u64,
}

/// Adds up the disk images of sandboxes' bounded writable layers and of sized volumes.
/// A stat each: no walk.
pub fn disk_commitments(paths: &Paths) -> Commitments {
    use std::os::unix::fs::MetadataExt;
    let mut c = Commitments::default();
    let images = [
        (paths.data.join("sandboxes"), "disk.img"),
        (paths.data.join("volumes"), "volume.img"),
    ];
    for (dir, file) in images {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(m) = fs::symlink_metadata(e.path().join(file)) {
                c.nominal += m.len();
                c.allocated += (m.blocks() * 512).min(m.len());
            }
        }
    }
    c.unbacked = c.nominal - c.allocated;
    if let Ok(st) = nix::sys::statvfs::statvfs(&paths.data) {
        c.free = st.blocks_available() * st.fragment_size();
    }
    c
}

/// The size of the filesystem that holds the data directory, in bytes.
pub fn data_disk_size(paths: &Paths) -> u64 {
    nix::sys::statvfs::statvfs(&paths.data).map_or(0, |s| s.blocks() * s.fragment_size())
}

/// Bytes layer `id` takes, recorded when it was made.
pub fn layer_size(paths: &Paths, id: &str) -> u64 {
    if let Some(n) = fs::read_to_string(size_file(paths, id))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return n;
    }
    let n = dir_size(&layer_path(paths, id));
    let _ = fs::write(size_file(paths, id), n.to_string());
    n
}

/// Where a sandbox's writable layer is read from for a snapshot.
#[derive(Debug, Clone)]
pub enum UpperSource {
    /// A directory on the host (the sandbox has no bounded disk).
    Dir(PathBuf),
    /// The `upper` directory inside an ext4 image that nothing mounts now (a stopped
    /// sandbox with a bounded disk); it is mounted read-only in a private namespace.
    Image(PathBuf),
    /// A directory in the mount namespace of a live helper (a paused sandbox with a
    /// bounded disk, whose image only that namespace mounts).
    InNamespace { pid: i32, dir: PathBuf },
}

/// Where sandbox `id`'s writable layer is read from: its directory; or, with a bounded
/// disk, inside the mount namespace of `holder` (the live process that mounts that disk:
/// a namespace sandbox's helper, an OCI sandbox's mounts holder), or from the image
/// itself when nothing mounts it.
pub fn upper_source(paths: &Paths, id: &str, holder: Option<i32>) -> UpperSource {
    let data = paths.sandbox_data(id);
    let image = data.join("disk.img");
    if !image.exists() {
        return UpperSource::Dir(data.join("upper"));
    }
    match holder {
        Some(pid) => UpperSource::InNamespace {
            pid,
            dir: paths.sandbox_run(id).join("disk/upper"),
        },
        None => UpperSource::Image(image),
    }
}

/// Copies a sandbox's writable layer into directory `dst` (see [`snapshot_layer`]).
pub(crate) fn copy_upper(src: &UpperSource, dst: &Path) -> Result<()> {
    let mnt = dst.with_extension("mnt");
    let mut cmd = match src {
        UpperSource::Dir(dir) => {
            let mut c = Command::new("cp");
            c.arg("-a").arg(dir.join(".")).arg(dst);
            c
        }
        UpperSource::Image(img) => {
            fs::create_dir_all(&mnt).map_err(io_err("create a mount point"))?;
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(
                    "mount -o ro,loop,nodev,nosuid \"$1\" \"$2\" && cp -a \"$2/upper/.\" \"$3\"; \
                     r=$?; umount \"$2\"; exit $r",
                )
                .arg("sh")
                .arg(img)
                .arg(&mnt)
                .arg(dst);
            c
        }
        UpperSource::InNamespace { pid, dir } => {
            let mut c = Command::new("nsenter");
            c.arg("-t")
                .arg(pid.to_string())
                .args(["-m", "--", "cp", "-a"])
                .arg(dir.join("."))
                .arg(dst);
            c
        }
    };
    let (status, why) = crate::tree::run_quietly(cmd.env("LC_ALL", "C")).map_err(io_err(
        "run cp for the snapshot (install coreutils and util-linux)",
    ))?;
    if let UpperSource::Image(_) = src {
        let _ = fs::remove_dir(&mnt);
    }
    if !status.success() {
        let e = Error::Setup(format!("copying the sandbox's files failed: {why}"));
        return Err(if crate::tool_says_disk_full(&why) {
            Error::disk_full(e)
        } else {
            e
        });
    }
    Ok(())
}

/// Copies a sandbox's writable layer into a new layer. Overlayfs's upper directories
/// are already in the lower-layer format (whiteouts, opaque directories), so the copy
/// is a plain one that keeps owners, modes, times, links, devices and xattrs: `cp -a`,
/// which also keeps sparse files sparse and hard links linked. Returns the layer's id
/// and the bytes it takes.
pub fn snapshot_layer(paths: &Paths, src: &UpperSource) -> Result<(String, u64)> {
    let staging = Staging::new(paths)?;
    copy_upper(src, staging.path())?;
    let id = format!("snap-{}{}", crate::new_id()?, crate::new_id()?);
    let size = dir_size(staging.path());
    staging.commit(paths, &id)?;
    Ok((id, size))
}

/// What [`gc`] removed (or would).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub layers: Vec<String>,
    pub bytes: u64,
}

/// Removes layers no template lists and unfinished layers whose maker is gone.
pub fn gc(paths: &Paths, dry_run: bool) -> Result<GcReport> {
    let _lock = lock(paths, ".lock", FlockArg::LockExclusive)?;
    let used: BTreeSet<String> = list(paths)?.into_iter().flat_map(|t| t.layers).collect();
    let mut report = GcReport::default();
    let dir = layers_dir(paths);
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let path = e.path();
        if let Some(rest) = name.strip_prefix(".tmp-") {
            if !pid_alive(rest) {
                report.bytes += dir_size(&path);
                if !dry_run {
                    let _ = crate::tree::remove(&path);
                }
            }
            continue;
        }
        if !valid_layer_id(&name) || used.contains(&name) {
            continue;
        }
        report.bytes += layer_size(paths, &name);
        report.layers.push(name.clone());
        if !dry_run {
            crate::tree::remove(&path).map_err(io_err(format!("remove {}", path.display())))?;
            let _ = fs::remove_file(size_file(paths, &name));
        }
    }
    // Templates whose maker died before renaming them into place, and host templates of
    // an older version that no sandbox runs on any more.
    let host_in_use = !live_users(paths, HOST).is_empty();
    for e in fs::read_dir(paths.data.join("templates"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(OLD_HOST) && !host_in_use {
            report.bytes += dir_size(&e.path());
            if !dry_run {
                let _ = crate::tree::remove(&e.path());
            }
            continue;
        }
        let Some(rest) = name.strip_prefix(".new-") else {
            continue;
        };
        if !pid_alive(rest) {
            report.bytes += dir_size(&e.path());
            if !dry_run {
                let _ = crate::tree::remove(&e.path());
            }
        }
    }
    report.layers.sort();
    Ok(report)
}

/// Whether the process whose pid starts `name` (`PID-...` or `PID.…`) still runs.
fn pid_alive(name: &str) -> bool {
    let pid = name
        .split(['-', '.'])
        .next()
        .and_then(|p| p.parse::<i32>().ok());
    pid.is_some_and(|p| p == std::process::id() as i32 || Path::new(&format!("/proc/{p}")).exists())
}

/// The live sandboxes (any maker, the daemon's or `warren run`'s) whose root is built
/// from template `name`: the helper records it in the run directory.
pub fn live_users(paths: &Paths, name: &str) -> Vec<String> {
    let dir = paths.run.join("sandboxes");
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("template"))
                .ok()
                .as_deref()
                == Some(name)
                && crate::namespace::helper_alive(&e.path())
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The agent's default user for a template's `user` (`name`, `uid`, `uid:gid`,
/// `name:group`; a group name is not looked up and the user's own group applies).
pub fn agent_user(spec: &str) -> warren_types::proto::User {
    use warren_types::proto::User;
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(uid), Ok(gid)) => User::Id {
            uid,
            gid: Some(gid),
        },
        (Ok(uid), Err(_)) => User::Id { uid, gid: None },
        (Err(_), _) => User::Name(u.to_string()),
    }
}

/// Builds the `host` template in a scratch directory and renames it into place, so a
/// half-built template is never used. The caller holds the host template's lock.
fn build_host(paths: &Paths, dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("template dir has a parent");
    fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    // A builder that died left its scratch copy; with the lock held, none is running.
    for e in fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".host-") {
            let _ = crate::tree::remove(&e.path());
        }
    }
    let scratch = parent.join(format!(".host-{}", crate::new_id()?));
    let root = scratch.join("rootfs");
    let r = populate_host(&root).and_then(|()| {
        fs::write(scratch.join("version"), HOST_TEMPLATE_VERSION)
            .map_err(io_err("write template version"))
    });
    if let Err(e) = r {
        let _ = crate::tree::remove(&scratch);
        return Err(e);
    }
    // An older version is set aside; sandboxes still running on it keep their files
    // until `template gc` finds it unused.
    let old = parent.join(format!("{OLD_HOST}{}", crate::new_id()?));
    let _ = fs::rename(dir, &old);
    let r = fs::rename(&scratch, dir).map_err(io_err(format!("rename into {}", dir.display())));
    if r.is_err() {
        let _ = crate::tree::remove(&scratch);
    }
    if old.exists() && live_users(paths, HOST).is_empty() {
        let _ = crate::tree::remove(&old);
    }
    r
}

fn populate_host(root: &Path) -> Result<()> {
    let mk = |rel: &str, mode: u32| -> Result<()> {
        let p = root.join(rel);
        fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", p.display())))
    };
    for d in [
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "mnt",
        "opt",
        "srv",
        "home",
        "var/lib",
        "var/cache",
        "var/log",
        "var/spool",
        "media",
    ] {
        mk(d, 0o755)?;
    }
    mk("tmp", 0o1777)?;
    mk("var/tmp", 0o1777)?;
    mk("root", 0o700)?;
    mk("home/user", 0o755)?;
    for d in HOST_DIRS {
        let host = Path::new("/").join(d);
        let Ok(meta) = host.symlink_metadata() else {
            continue;
        };
        let p = root.join(d);
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&host).map_err(io_err(format!("read {}", host.display())))?;
            symlink(&target, &p).map_err(io_err(format!("link {}", p.display())))?;
        } else if meta.is_dir() {
            mk(d, 0o755)?;
        }
    }
    let etc = root.join("etc");
    let files: [(&str, String); 7] = [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/bash\n\
             user:x:1000:1000:user:/home/user:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                .into(),
        ),
        (
            "group",
            "root:x:0:\ntty:x:5:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n".into(),
        ),
        (
            "hosts",
            "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n".into(),
        ),
        ("hostname", "sandbox\n".into()),
        ("resolv.conf", resolv_conf()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
             networks: files\nprotocols: files\nservices: files\n"
                .into(),
        ),
        ("shells", "/bin/sh\n/bin/bash\n/usr/bin/bash\n".into()),
    ];
    for (name, body) in files {
        let p = etc.join(name);
        let _ = fs::remove_file(&p);
        fs::write(&p, body).map_err(io_err(format!("write {}", p.display())))?;
    }
    chown_tree(root, HOST_ID_BASE, HOST_ID_BASE)?;
    chown_tree(
        &root.join("home/user"),
        HOST_ID_BASE + USER_ID,
        HOST_ID_BASE + USER_ID,
    )?;
    // Copied last, and left to the host's root: a sandbox reads them, and can replace
    // them in its own /etc, but never owns (or changes) a file that came from the host.
    for name in HOST_ETC {
        let src = Path::new("/etc").join(name);
        if src.symlink_metadata().is_ok() {
            let dst = etc.join(name);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)
                    .map_err(io_err(format!("create {}", parent.display())))?;
            }
            copy_tree(&src, &dst)?;
        }
    }
    Ok(())
}

/// The host's resolvers, unless they listen on the host's loopback, which a sandbox
/// cannot reach; then public resolvers are named so that `nat` sandboxes can resolve.
fn resolv_conf() -> String {
    sandbox_resolvers()
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// The IPv4 resolvers a sandbox's `resolv.conf` names: the host's, unless they listen
/// on the host's loopback, which a sandbox cannot reach; then public ones.
pub fn sandbox_resolvers() -> Vec<std::net::Ipv4Addr> {
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<std::net::Ipv4Addr> = host
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse().ok())
        .filter(|s: &std::net::Ipv4Addr| !s.is_loopback())
        .collect();
    if servers.is_empty() {
        return vec![[1, 1, 1, 1].into(), [8, 8, 8, 8].into()];
    }
    servers
}

/// Copies a file, symlink or directory tree, keeping symlinks as links and modes.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = src
        .symlink_metadata()
        .map_err(io_err(format!("read {}", src.display())))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err(format!("read {}", src.display())))?;
        symlink(target, dst).map_err(io_err(format!("link {}", dst.display())))?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst).map_err(io_err(format!("create {}", dst.display())))?;
        let entries = fs::read_dir(src).map_err(io_err(format!("read {}", src.display())))?;
        for e in entries.flatten() {
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, meta.permissions())
            .map_err(io_err(format!("chmod {}", dst.display())))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(io_err(format!("copy {}", src.display())))?;
    }
    Ok(())
}

/// Changes the owner of everything under `root` (links themselves, not their targets).
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<()> {
    lchown(root, Some(uid), Some(gid)).map_err(io_err(format!("chown {}", root.display())))?;
    if root.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
        let entries = fs::read_dir(root).map_err(io_err(format!("read {}", root.display())))?;
        for e in entries.flatten() {
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn host_template_has_accounts_and_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        if let Err(e) = populate_host(&root) {
            // chown needs root; the namespace tests cover this path as root in CI.
            warren_testkit::skip(
                "host_template_has_accounts_and_no_secrets",
                &format!("cannot build the host template here: {e}"),
            );
            return;
        }
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("user:x:1000:1000"));
        assert!(!root.join("etc/shadow").exists());
        assert!(!root.join("etc/ssh").exists());
        let home = fs::metadata(root.join("home/user")).unwrap();
        assert_eq!(home.uid(), HOST_ID_BASE + USER_ID);
        let tmp = fs::metadata(root.join("tmp")).unwrap();
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
    }

    #[test]
    fn concurrent_first_uses_share_one_host_template() {
        if !warren_testkit::needs_root(
            "concurrent_first_uses_share_one_host_template",
            "building the host template (chown)",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // Each user holds its copy open, as a sandbox's overlay does; no later builder may
        // empty a copy that is in use.
        let start = std::sync::Barrier::new(8);
        let held: Vec<fs::File> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let t = resolve(&paths, HOST).unwrap();
                        fs::File::open(t.lower.last().unwrap()).unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for f in &held {
            use std::os::fd::AsRawFd;
            let passwd = format!("/proc/self/fd/{}/etc/passwd", f.as_raw_fd());
            assert!(
                Path::new(&passwd).exists(),
                "a host template in use was emptied"
            );
        }
        let names: Vec<String> = fs::read_dir(paths.data.join("templates"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![HOST.to_string()], "one copy, no scratch left");
    }

    #[test]
    fn unknown_template_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let e = resolve(&paths, "nope").unwrap_err();
        assert!(e.to_string().contains("unknown template"));
    }
}
