//! Importing an image archive as a template: `docker save` output (its `manifest.json`)
//! or an OCI image layout (`oci-layout` and `index.json`), as a tar file, optionally
//! gzip- or zstd-compressed as a whole; layers plain, gzip or zstd.
//!
//! The outer archive is indexed once (name → offset and size, symbolic and hard links
//! resolved inside the archive only) and its blobs are read in place, so nothing but
//! the layers' contents is written. Each layer streams through: blob digest →
//! decompressor (chosen by the bytes' magic, not the declared media type) → diff-id
//! digest → [`unpack`](unpack::unpack) into a fresh staging directory, which is then
//! stored under its diff id, or dropped if the store has that layer already. Digests the
//! archive declares (OCI descriptors, `blobs/sha256/…` names, the config's `diff_ids`)
//! are checked; a mismatch refuses the archive.
//!
//! From the image's config, `Env`, `WorkingDir`, `User`, `Entrypoint` and `Cmd` are kept
//! in the template. Nothing of the archive is trusted: JSON documents are size-bounded,
//! the layers' bytes and entries are bounded across the whole import, and the unpacker's
//! rules for paths, links, devices and owners apply (see [`unpack`]).

pub mod unpack;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::template::{self, Staging, TemplateKind, TemplateMeta};
use crate::{Paths, HOST_ID_BASE};

pub use unpack::{Limits, Report, UnpackError};

/// Largest JSON document (manifest, index, config) read from an archive.
const MAX_JSON: u64 = 4 << 20;
/// Most entries in the outer archive.
const MAX_OUTER_ENTRIES: usize = 100_000;

/// Why an archive was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Format(String),
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    #[error("layer {index} of {count}: {source}")]
    Layer {
        index: usize,
        count: usize,
        #[source]
        source: UnpackError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ImportError {
    /// Whether writing the image met a full disk: the host's trouble, not the archive's.
    /// A layer's file is copied out of the tar stream, so its write fails as `Tar` does.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Io { source, .. }
            | Self::Layer {
                source: UnpackError::Io { source, .. } | UnpackError::Tar(source),
                ..
            } => crate::is_disk_full(source),
            _ => false,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImportError {
    let what = what.into();
    move |source| ImportError::Io { what, source }
}

fn format_err(why: impl Into<String>) -> ImportError {
    ImportError::Format(why.into())
}

/// What to import, and as what.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub name: String,
    pub limits: Limits,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    pub ready_timeout_secs: Option<u64>,
    pub tenant: Option<String>,
    /// The backend its sandboxes get when they name none.
    pub isolation: Option<warren_types::spec::Isolation>,
    /// Keep setuid and setgid bits, and honour them inside (see [`TemplateMeta::setuid`]).
    pub setuid: bool,
    /// Stored in `tenant`'s own namespace, seen by it alone (see [`TemplateMeta::private`]).
    pub private: bool,
    /// What the template's `source` says it came from [default: the archive's path].
    pub source: Option<String>,
}

/// What an import made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Imported {
    pub template: TemplateMeta,
    /// Layers stored by this import; the others were in the store already.
    pub new_layers: usize,
    pub shared_layers: usize,
    /// Per layer, bottom first: what the unpacker neutralised.
    pub reports: Vec<Report>,
}

/// How far an import has come: the layers' bytes read, as the archive stores them
/// (compressed or not), of all its layers'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportProgress {
    /// The layer being unpacked, from 1.
    pub layer: usize,
    pub layers: usize,
    pub bytes: u64,
    pub total_bytes: u64,
}

/// Bytes between two reports of progress within a layer.
const PROGRESS_STEP: u64 = 4 << 20;

/// Imports `archive` as template `opts.name`. `progress` hears as each layer starts,
/// every few MiB read of it, and once at the end.
pub fn import(
    paths: &Paths,
    archive: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(ImportProgress),
) -> crate::Result<Imported> {
    let key = template::key(opts.tenant.as_deref().filter(|_| opts.private), &opts.name);
    template::check_new_name(paths, &key)?;
    let _lock = template::lock_shared(paths)?;
    let mut budget = unpack::Budget::new(opts.limits);
    let (file, _tmp) = open_outer(paths, archive, &mut budget)?;
    let index = Index::build(file)?;
    let image = index.image()?;
    let count = image.layers.len();
    if count == 0 {
        return Err(format_err("the image has no layers").into());
    }
    let mut ids = Vec::with_capacity(count);
    let mut reports = Vec::with_capacity(count);
    let (mut new_layers, mut shared_layers) = (0, 0);
    let mut at = ImportProgress {
        layer: 0,
        layers: count,
        bytes: 0,
        total_bytes: image
            .layers
            .iter()
            .map(|l| index.find(&l.path).map(|(_, size)| size).unwrap_or(0))
            .sum(),
    };
    for (i, layer) in image.layers.iter().enumerate() {
        at.layer = i + 1;
        progress(at);
        let staging = Staging::new(paths)?;
        let (report, diff_id) = index
            .unpack_layer(
                layer,
                staging.path(),
                opts.setuid,
                &mut budget,
                &mut at,
                progress,
            )
            .map_err(|e| match e {
                LayerError::Unpack(source) => ImportError::Layer {
                    index: i + 1,
                    count,
                    source,
                },
                LayerError::Import(e) => e,
            })?;
        if let Some(want) = image
            .diff_ids
            .get(i)
            .filter(|_| image.diff_ids.len() == count)
        {
            if want.strip_prefix("sha256:") != Some(diff_id.as_str()) {
                return Err(ImportError::Corrupt(format!(
                    "layer {} unpacks to sha256:{diff_id}, but the config says {want}",
                    i + 1
                ))
                .into());
            }
        }
        if staging.commit(paths, &diff_id)? {
            new_layers += 1;
        } else {
            shared_layers += 1;
        }
        ids.push(diff_id);
        reports.push(report);
    }
    progress(at);
    ids.reverse();
    let c = image.config;
    let meta = TemplateMeta {
        name: opts.name.clone(),
        kind: TemplateKind::Image,
        source: opts
            .source
            .clone()
            .unwrap_or_else(|| archive.display().to_string()),
        layers: ids,
        host_base: false,
        env: c
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workdir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        cmd: c.entrypoint.into_iter().chain(c.cmd).collect(),
        start_cmd: opts.start_cmd.clone(),
        ready_cmd: opts.ready_cmd.clone(),
        ready_timeout_secs: opts.ready_timeout_secs,
        created_at: unix_ms(),
        tenant: opts.tenant.clone(),
        source_sandbox: None,
        // A file of the daemon's host is the operator's, for every tenant; an archive a
        // tenant sent is that tenant's.
        private: opts.private,
        isolation: opts.isolation,
        setuid: opts.setuid,
        memory: None,
        key: String::new(),
    };
    template::save(paths, &meta)?;
    let meta = TemplateMeta {
        key: meta.storage_key(),
        ..meta
    };
    Ok(Imported {
        template: meta,
        new_layers,
        shared_layers,
        reports,
    })
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn decoder<'a, R: BufRead + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

/// The archive as a seekable tar file: itself, or (compressed as a whole) its
/// decompressed copy in the layer store, removed when the second value drops.
fn open_outer(
    paths: &Paths,
    archive: &Path,
    budget: &mut unpack::Budget,
) -> crate::Result<(File, Option<Staging>)> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| ImportError::Open {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut f = open(archive)?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(format_err(format!(
            "{} is not a file: give a `docker save` or OCI layout tar archive",
            archive.display()
        ))
        .into());
    }
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(io_err("read the archive"))?;
    f.seek(SeekFrom::Start(0))
        .map_err(io_err("read the archive"))?;
    let c = sniff(&head[..n]);
    if c == Compression::None {
        return Ok((f, None));
    }
    let staging = Staging::new(paths)?;
    let tmp = staging.path().join("archive.tar");
    let mut out = File::create(&tmp).map_err(io_err("decompress the archive"))?;
    let limit = budget.limits.max_bytes;
    let mut dec = decoder(BufReader::new(f), c)
        .map_err(io_err("decompress the archive"))?
        .take(limit + 1);
    let n = io::copy(&mut dec, &mut out)
        .map_err(|e| ImportError::Corrupt(format!("the archive does not decompress: {e}")))?;
    if n > limit {
        return Err(ImportError::Layer {
            index: 0,
            count: 0,
            source: UnpackError::TooLarge { limit },
        }
        .into());
    }
    let f = open(&tmp)?;
    Ok((f, Some(staging)))
}

/// The outer archive's table of contents.
struct Index {
    file: File,
    blobs: HashMap<String, (u64, u64)>,
    links: HashMap<String, String>,
}

/// The parts of an image the import uses.
struct Image {
    config: ImageConfig,
    diff_ids: Vec<String>,
    /// Bottom first.
    layers: Vec<LayerRef>,
}

struct LayerRef {
    path: String,
    /// `sha256:…` the stored blob must hash to, when the archive says.
    digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    env: Vec<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    entrypoint: Vec<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

enum LayerError {
    Unpack(UnpackError),
    Import(ImportError),
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

/// A layer's reader that tells `progress` every [`PROGRESS_STEP`] bytes.
struct Counting<'a, R> {
    inner: R,
    at: &'a mut ImportProgress,
    /// `at.bytes` at which to tell next.
    next: u64,
    progress: &'a mut dyn FnMut(ImportProgress),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at.bytes += n as u64;
        if self.at.bytes >= self.next {
            self.next = self.at.bytes + PROGRESS_STEP;
            (self.progress)(*self.at);
        }
        Ok(n)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `name` as the archive's own relative path: no `./`, no leading or doubled slashes.
fn norm(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The blob path of `sha256:HEX`, or why the digest is unusable.
fn blob_path(digest: &str) -> Result<String, ImportError> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{}", h.to_ascii_lowercase()))
        }
        _ => Err(format_err(format!(
            "digest {digest:?} is not sha256:<64 hex digits>; only sha256 images are supported"
        ))),
    }
}

impl Index {
    fn build(mut file: File) -> Result<Self, ImportError> {
        let mut blobs = HashMap::new();
        let mut links = HashMap::new();
        {
            let mut ar = tar::Archive::new(&mut file);
            let entries = ar.entries_with_seek().map_err(not_tar)?;
            for (n, e) in entries.enumerate() {
                if n >= MAX_OUTER_ENTRIES {
                    return Err(format_err(format!(
                        "the archive has more than {MAX_OUTER_ENTRIES} entries; an image \
                         archive has a few per layer"
                    )));
                }
                let e = e.map_err(not_tar)?;
                let name = norm(&String::from_utf8_lossy(&e.path_bytes()));
                match e.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        blobs.insert(name, (e.raw_file_position(), e.size()));
                    }
                    tar::EntryType::Symlink => {
                        if let Some(t) = e.link_name_bytes() {
                            // Relative to the link's directory; resolved in the archive.
                            let t = String::from_utf8_lossy(&t).into_owned();
                            let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                            let target = resolve_rel(dir, &t);
                            links.insert(name, target);
                        }
                    }
                    tar::EntryType::Link => {
                        if let Some(t) = e.link_name_bytes() {
                            links.insert(name, norm(&String::from_utf8_lossy(&t)));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self { file, blobs, links })
    }

    fn find(&self, name: &str) -> Result<(u64, u64), ImportError> {
        let mut n = norm(name);
        for _ in 0..16 {
            if let Some(b) = self.blobs.get(&n) {
                return Ok(*b);
            }
            match self.links.get(&n) {
                Some(t) => n = t.clone(),
                None => break,
            }
        }
        Err(ImportError::Corrupt(format!(
            "{name} is missing from the archive"
        )))
    }

    fn section(&self, name: &str) -> Result<io::Take<File>, ImportError> {
        let (off, size) = self.find(name)?;
        let mut f = self.file.try_clone().map_err(io_err("read the archive"))?;
        f.seek(SeekFrom::Start(off))
            .map_err(io_err("read the archive"))?;
        Ok(f.take(size))
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        digest: Option<&str>,
    ) -> Result<T, ImportError> {
        let (_, size) = self.find(name)?;
        if size > MAX_JSON {
            return Err(format_err(format!(
                "{name} is {size} bytes; image metadata is at most {MAX_JSON}"
            )));
        }
        let mut buf = Vec::new();
        self.section(name)?
            .read_to_end(&mut buf)
            .map_err(io_err(format!("read {name}")))?;
        if let Some(d) = digest {
            let got = format!("sha256:{}", hex(Sha256::digest(&buf)));
            if !got.eq_ignore_ascii_case(d) {
                return Err(ImportError::Corrupt(format!(
                    "{name} hashes to {got}, not {d}"
                )));
            }
        }
        serde_json::from_slice(&buf)
            .map_err(|e| ImportError::Corrupt(format!("{name} is not valid JSON: {e}")))
    }

    /// The image the archive holds: `docker save`'s manifest first (Docker 25 writes
    /// both), else the OCI index.
    fn image(&self) -> Result<Image, ImportError> {
        if self.find("manifest.json").is_ok() {
            let m: Vec<DockerManifest> = self.json("manifest.json", None)?;
            let m = match m.len() {
                1 => m.into_iter().next().expect("one manifest"),
                0 => return Err(format_err("manifest.json lists no image")),
                n => {
                    return Err(format_err(format!(
                        "the archive holds {n} images; save one image per archive"
                    )))
                }
            };
            let cfg: ConfigFile = self.json(&m.config, None)?;
            let layers = m
                .layers
                .into_iter()
                .map(|path| {
                    // Docker 25+ stores layers as OCI blobs, named by their digest.
                    let digest = norm(&path)
                        .strip_prefix("blobs/sha256/")
                        .map(|h| format!("sha256:{h}"));
                    LayerRef { path, digest }
                })
                .collect();
            return Ok(Image {
                config: cfg.config.unwrap_or_default(),
                diff_ids: cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
                layers,
            });
        }
        if self.find("index.json").is_err() {
            return Err(format_err(
                "not an image archive: it has neither manifest.json (docker save) nor \
                 index.json (OCI layout); make one with `docker save IMAGE -o FILE.tar`",
            ));
        }
        let mut index: OciIndex = self.json("index.json", None)?;
        // An index may point at a nested index (multi-platform images): follow it.
        for _ in 0..4 {
            let d = pick(index.manifests)?;
            let path = blob_path(&d.digest)?;
            let is_index = d
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("image.index") || m.contains("manifest.list"));
            if is_index {
                index = self.json(&path, Some(&d.digest))?;
                continue;
            }
            let m: OciManifest = self.json(&path, Some(&d.digest))?;
            let cfg: ConfigFile =
                self.json(&blob_path(&m.config.digest)?, Some(&m.config.digest))?;
            let layers = m
                .layers
                .into_iter()
                .map(|l| {
                    Ok(LayerRef {
                        path: blob_path(&l.digest)?,
                        digest: Some(l.digest),
                    })
                })
                .collect::<Result<_, ImportError>>()?;
            return Ok(Image {
                config: cfg.config.unwrap_or_default(),
                diff_ids: cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
                layers,
            });
        }
        Err(format_err("index.json nests indexes too deeply"))
    }

    fn unpack_layer(
        &self,
        layer: &LayerRef,
        dest: &Path,
        keep_setid: bool,
        budget: &mut unpack::Budget,
        at: &mut ImportProgress,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<(Report, String), LayerError> {
        let mut blob = Hashing {
            inner: Counting {
                inner: self.section(&layer.path).map_err(LayerError::Import)?,
                at,
                next: 0,
                progress,
            },
            hash: Sha256::new(),
        };
        let (report, diff_hash) = {
            let mut buffered = BufReader::with_capacity(1 << 16, &mut blob);
            let head = buffered
                .fill_buf()
                .map_err(|e| LayerError::Import(io_err("read a layer")(e)))?;
            let c = sniff(head);
            let dec = decoder(buffered, c).map_err(|e| {
                LayerError::Import(ImportError::Corrupt(format!(
                    "layer {} does not decompress: {e}",
                    layer.path
                )))
            })?;
            let mut diff = Hashing {
                inner: dec,
                hash: Sha256::new(),
            };
            let opts = unpack::Options {
                id_base: Some(HOST_ID_BASE),
                keep_setid,
            };
            let report =
                unpack::unpack(&mut diff, dest, opts, budget).map_err(LayerError::Unpack)?;
            (report, diff.hash)
        };
        io::copy(&mut blob, &mut io::sink())
            .map_err(|e| LayerError::Import(io_err("read a layer")(e)))?;
        if let Some(want) = &layer.digest {
            let got = format!("sha256:{}", hex(blob.hash.finalize()));
            if !got.eq_ignore_ascii_case(want) {
                return Err(LayerError::Import(ImportError::Corrupt(format!(
                    "layer {} hashes to {got}, not {want}",
                    layer.path
                ))));
            }
        }
        Ok((report, hex(diff_hash.finalize())))
    }
}

fn not_tar(e: io::Error) -> ImportError {
    format_err(format!(
        "not a tar archive ({e}); give the file `docker save` or an OCI layout export wrote"
    ))
}

/// `target` seen from directory `dir` of the archive, kept inside the archive.
fn resolve_rel(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// The manifest for this host among several: the only one, or the one for linux on
/// this machine's architecture.
fn pick(mut manifests: Vec<Descriptor>) -> Result<Descriptor, ImportError> {
    if manifests.len() == 1 {
        return Ok(manifests.remove(0));
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let n = manifests.len();
    manifests
        .into_iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| {
            format_err(format!(
                "index.json lists {n} manifests and none is for linux/{arch}; export the \
                 image for this platform"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_resolve_inside_the_archive() {
        assert_eq!(norm("./a//b/"), "a/b");
        assert_eq!(resolve_rel("x", "../y/layer.tar"), "y/layer.tar");
        assert_eq!(resolve_rel("x", "../../../../etc/passwd"), "etc/passwd");
        assert_eq!(resolve_rel("x", "/abs"), "abs");
    }

    #[test]
    fn digests_are_checked_for_shape() {
        assert!(blob_path("sha256:../../etc").is_err());
        assert!(blob_path("md5:abcd").is_err());
        let h = "a".repeat(64);
        assert_eq!(
            blob_path(&format!("sha256:{h}")).unwrap(),
            format!("blobs/sha256/{h}")
        );
    }

    #[test]
    fn compression_is_told_by_magic() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn a_config_with_nulls_parses() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"config":{"Env":null,"Cmd":["python3"],"Entrypoint":null,"WorkingDir":"/app","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .unwrap();
        let cfg = c.config.unwrap();
        assert!(cfg.env.is_empty());
        assert_eq!(cfg.cmd, vec!["python3"]);
        assert_eq!(cfg.working_dir.as_deref(), Some("/app"));
    }
}
