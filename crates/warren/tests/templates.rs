//! Templates end to end, through the engine: image archives built here (docker save and
//! OCI layouts, gzip and zstd layers, whiteouts and opaque directories, hostile
//! entries), sandboxes made from them, builds, snapshots, start and ready commands,
//! removal while in use, and the layer collector. Needs root. Nothing is pulled from a
//! registry: every archive is made by these tests.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use warren_core::{
    BuildEvent, BuildTemplate, Caller, Config, CoreError, ImportTemplate, Manager, SnapshotRequest,
};
use warren_types::api::{CreateSandbox, WireCode};
use warren_types::proto::{Command, ExecRequest};

/// A test's own run and data directories; dropping it ends every sandbox it made.
struct Env {
    root: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let root = test_root().join(format!("tpl-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Env { root }
    }

    fn config(&self) -> Config {
        let mut c = Config::new(
            warren_runtime::Paths {
                run: self.root.join("run"),
                data: self.root.join("data"),
            },
            env!("CARGO_BIN_EXE_warren").into(),
        );
        c.reaper_interval = Duration::from_millis(500);
        c.disk_interval = Duration::from_millis(500);
        c
    }

    async fn manager(&self) -> Arc<Manager> {
        Manager::open(self.config()).await.unwrap()
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Unfinished layers left in the store.
    fn staging_left(&self) -> Vec<String> {
        std::fs::read_dir(self.data().join("layers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed assertion left running goes, then the test's directories.
        stop_sandboxes_under(&self.root.join("run"));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn who() -> Caller {
    Caller::tenant("alice")
}

fn sandbox(template: &str, name: &str) -> CreateSandbox {
    CreateSandbox {
        name: Some(name.into()),
        template: Some(template.into()),
        home_volume: Some(false),
        ..Default::default()
    }
}

async fn sh(mgr: &Arc<Manager>, key: &str, script: &str) -> (i32, String) {
    let client = mgr.agent(&who(), key).await.unwrap().into_client();
    let out = client
        .exec(ExecRequest {
            command: Some(Command::Shell(script.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.map(|s| s.shell_code()).unwrap_or(-1), text)
}

// ---- archives, made here ----

/// One entry of a layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Host(&'a str, &'a Path),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Raw bytes: the tar crate's set_path refuses the hostile names these tests need.
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(n) => {
                let mut h = header(n, tar::EntryType::Directory, 0o755, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(n, data, mode) => {
                let mut h = header(n, tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Host(n, p) => {
                let data = std::fs::read(p).unwrap();
                let mut h = header(n, tar::EntryType::Regular, 0o755, data.len() as u64);
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            }
            E::Symlink(n, t) | E::Hardlink(n, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(n, kind, 0o777, 0);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Char(n) => {
                let mut h = header(n, tar::EntryType::Char, 0o666, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(b, 3).unwrap()
}

fn outer(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = header(name, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin:/usr/bin", "GREETING=hello from the image"],
            "WorkingDir": "/app",
            "User": "1000:1000",
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo started"]
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// `docker save` of the classic layout: `N/layer.tar`, config and manifest.
fn docker_save(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let cfg = config(&diff_ids);
    let cfg_name = format!("{}.json", sha(&cfg));
    let mut files = vec![(cfg_name.clone(), cfg)];
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("{i}/layer.tar");
        names.push(n.clone());
        files.push((n, l.clone()));
    }
    let manifest = json!([{ "Config": cfg_name, "RepoTags": ["test:latest"], "Layers": names }]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    outer(&files)
}

/// How a test compresses a layer blob.
type Compress = fn(&[u8]) -> Vec<u8>;

/// An OCI image layout, each layer compressed by `compress`.
fn oci_layout(layers: &[Vec<u8>], compress: &[Compress]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let cfg = config(&diff_ids);
    let mut files = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (format!("blobs/sha256/{}", sha(&cfg)), cfg.clone()),
    ];
    let mut descs = Vec::new();
    for (l, c) in layers.iter().zip(compress) {
        let blob = c(l);
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", sha(&blob)),
            "size": blob.len(),
        }));
        files.push((format!("blobs/sha256/{}", sha(&blob)), blob));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha(&cfg)),
            "size": cfg.len(),
        },
        "layers": descs,
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(),
        }],
    }))
    .unwrap();
    files.push((format!("blobs/sha256/{}", sha(&manifest)), manifest));
    files.push(("index.json".into(), index));
    outer(&files)
}

/// The host's `sh` and the libraries it loads, so an image can run commands.
fn shell_layer() -> Vec<u8> {
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let mut host_files = vec![("bin/sh".to_string(), sh.clone())];
    let ldd = std::process::Command::new("ldd").arg(&sh).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let inside = p.to_string_lossy().trim_start_matches('/').to_string();
            host_files.push((inside, std::fs::canonicalize(&p).unwrap()));
        }
    }
    let mut entries: Vec<E> = vec![
        E::Dir("bin/"),
        E::Dir("lib/"),
        E::Dir("lib64/"),
        E::Dir("lib/x86_64-linux-gnu/"),
        E::Dir("etc/"),
        E::Dir("app/"),
        E::Dir("tmp/"),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        ),
        E::File("etc/motd", b"old motd\n", 0o644),
        E::Dir("var/"),
        E::Dir("var/cache/"),
        E::File("var/cache/a", b"a\n", 0o644),
        E::File("var/cache/b", b"b\n", 0o644),
    ];
    for (inside, host) in &host_files {
        entries.push(E::Host(inside, host));
    }
    layer(&entries)
}

/// Three layers: a shell and some files; then a whiteout and an opaque directory; then
/// a file over a deleted one.
fn three_layers() -> Vec<Vec<u8>> {
    vec![
        shell_layer(),
        layer(&[
            E::File("etc/.wh.motd", b"", 0o644),
            E::File("var/cache/.wh..wh..opq", b"", 0o644),
            E::File("var/cache/c", b"c\n", 0o644),
            E::File("app/hello.txt", b"hello v1\n", 0o644),
        ]),
        // Writable by the image's user (1000), which the sandbox runs as.
        layer(&[E::File("app/hello.txt", b"hello v2\n", 0o666)]),
    ]
}

const VIEW: &str = "for f in /etc/motd /var/cache/a /var/cache/b /var/cache/c /app/hello.txt; do \
                    if [ -e $f ]; then read l < $f; echo \"$f=$l\"; else echo \"$f=gone\"; fi; done; \
                    echo \"GREETING=$GREETING\"; echo \"PWD=$(pwd)\"; \
                    while read k v rest; do [ \"$k\" = Uid: ] && echo \"uid=$v\"; done < /proc/self/status; true";

const EXPECTED_VIEW: &str = "/etc/motd=gone\n/var/cache/a=gone\n/var/cache/b=gone\n\
                             /var/cache/c=c\n/app/hello.txt=hello v2\n\
                             GREETING=hello from the image\nPWD=/app\nuid=1000\n";

async fn import(
    mgr: &Manager,
    archive: &Path,
    name: &str,
) -> warren_core::Result<warren_core::ImportResult> {
    mgr.import_template(
        &who(),
        ImportTemplate {
            archive: archive.to_path_buf(),
            name: name.into(),
            ..Default::default()
        },
        None,
    )
    .await
}

#[tokio::test]
async fn a_docker_save_archive_imports_and_its_config_applies() {
    if !can_run("a_docker_save_archive_imports_and_its_config_applies") {
        return;
    }
    let env = Env::new("docker");
    let mgr = env.manager().await;
    let archive = env.write("image.tar", &docker_save(&three_layers()));
    let r = import(&mgr, &archive, "img").await.unwrap();
    assert_eq!((r.new_layers, r.shared_layers), (3, 0));
    let t = &r.template.meta;
    assert_eq!(t.workdir.as_deref(), Some("/app"));
    assert_eq!(t.user.as_deref(), Some("1000:1000"));
    assert_eq!(t.cmd, vec!["/bin/sh", "-c", "echo started"]);
    assert_eq!(t.env["GREETING"], "hello from the image");
    assert!(r.template.size_bytes > 0);

    mgr.create(&who(), sandbox("img", "a")).await.unwrap();
    let (code, out) = sh(&mgr, "a", VIEW).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, EXPECTED_VIEW);
    // Writes go to the sandbox's own layer; the template's layers stay as they were.
    let (code, out) = sh(
        &mgr,
        "a",
        "echo mine > /app/hello.txt && read l < /app/hello.txt && echo $l",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "mine\n"));
    mgr.create(&who(), sandbox("img", "b")).await.unwrap();
    let (_, out) = sh(&mgr, "b", "read l < /app/hello.txt; echo $l").await;
    assert_eq!(out, "hello v2\n");
    assert!(env.staging_left().is_empty());
}

#[tokio::test]
async fn an_oci_layout_with_gzip_and_zstd_layers_imports_and_shares_layers() {
    if !can_run("an_oci_layout_with_gzip_and_zstd_layers_imports_and_shares_layers") {
        return;
    }
    let env = Env::new("oci");
    let mgr = env.manager().await;
    let layers = three_layers();
    let oci = env.write(
        "oci.tar",
        &oci_layout(&layers, &[gzip, zstd, |b: &[u8]| b.to_vec()]),
    );
    let r = import(&mgr, &oci, "oci").await.unwrap();
    assert_eq!(r.new_layers, 3);
    mgr.create(&who(), sandbox("oci", "o")).await.unwrap();
    let (code, out) = sh(&mgr, "o", VIEW).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, EXPECTED_VIEW);

    // The same layers from a docker save, and the whole archive zstd-compressed: stored
    // once, by content.
    let docker = env.write("d.tar.zst", &zstd(&docker_save(&layers)));
    let r = import(&mgr, &docker, "same").await.unwrap();
    assert_eq!((r.new_layers, r.shared_layers), (0, 3));
    let a = mgr.template(&who(), "oci").unwrap();
    let b = mgr.template(&who(), "same").unwrap();
    assert_eq!(a.meta.layers, b.meta.layers);
}

#[tokio::test]
async fn a_tampered_layer_is_refused() {
    if !can_run("a_tampered_layer_is_refused") {
        return;
    }
    let env = Env::new("tamper");
    let mgr = env.manager().await;
    let mut layers = three_layers();
    // Same config (naming the original diff ids), other bytes in the last layer.
    layers[2] = layer(&[E::File("app/hello.txt", b"evil\n", 0o644)]);
    let diff_ids: Vec<String> = three_layers()
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let cfg = config(&diff_ids);
    let files = vec![
        ("c.json".to_string(), cfg),
        ("0/layer.tar".into(), layers[0].clone()),
        ("1/layer.tar".into(), layers[1].clone()),
        ("2/layer.tar".into(), layers[2].clone()),
        (
            "manifest.json".into(),
            serde_json::to_vec(&json!([{"Config": "c.json", "Layers": ["0/layer.tar", "1/layer.tar", "2/layer.tar"]}])).unwrap(),
        ),
    ];
    let p = env.write("bad.tar", &outer(&files));
    let e = import(&mgr, &p, "bad").await.unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(matches!(
        mgr.template(&who(), "bad"),
        Err(CoreError::TemplateNotFound(_))
    ));
}

/// Imports a one-layer image and returns the error text.
async fn hostile(env: &Env, mgr: &Manager, entries: &[E<'_>]) -> String {
    let p = env.write("hostile.tar", &docker_save(&[layer(entries)]));
    let e = import(mgr, &p, "hostile").await.unwrap_err();
    assert_eq!(e.code(), WireCode::InvalidRequest, "{e}");
    assert!(mgr.template(&who(), "hostile").is_err(), "nothing is kept");
    assert!(env.staging_left().is_empty(), "{:?}", env.staging_left());
    e.to_string()
}

#[tokio::test]
async fn hostile_path_traversal_is_refused() {
    if !can_run("hostile_path_traversal_is_refused") {
        return;
    }
    let env = Env::new("h-traversal");
    let mgr = env.manager().await;
    let planted = env.root.join("planted");
    let e = hostile(&env, &mgr, &[E::File("../../../planted", b"x", 0o644)]).await;
    assert!(e.contains("climbs out"), "{e}");
    assert!(!planted.exists());
    let e = hostile(&env, &mgr, &[E::File("/tmp/warren-planted", b"x", 0o644)]).await;
    assert!(e.contains("absolute"), "{e}");
    assert!(!Path::new("/tmp/warren-planted").exists());
}

#[tokio::test]
async fn hostile_writes_through_symlinks_are_refused() {
    if !can_run("hostile_writes_through_symlinks_are_refused") {
        return;
    }
    let env = Env::new("h-symlink");
    let mgr = env.manager().await;
    let target = env.root.join("outside");
    std::fs::create_dir_all(&target).unwrap();
    let abs = target.display().to_string();
    let e = hostile(
        &env,
        &mgr,
        &[
            E::Symlink("evil", &abs),
            E::File("evil/planted", b"x", 0o644),
        ],
    )
    .await;
    assert!(e.contains("symbolic link"), "{e}");
    let e = hostile(
        &env,
        &mgr,
        &[
            E::Symlink("up", "../../../../../../.."),
            E::File("up/tmp/planted", b"x", 0o644),
        ],
    )
    .await;
    assert!(e.contains("symbolic link"), "{e}");
    assert!(std::fs::read_dir(&target).unwrap().next().is_none());
}

#[tokio::test]
async fn escaping_symlinks_resolve_inside_the_sandbox() {
    if !can_run("escaping_symlinks_resolve_inside_the_sandbox") {
        return;
    }
    let env = Env::new("h-inert");
    let mgr = env.manager().await;
    let layers = vec![
        shell_layer(),
        layer(&[
            E::Symlink("app/abs", "/etc/passwd"),
            E::Symlink("app/up", "../../../../../../etc/passwd"),
        ]),
    ];
    let p = env.write("links.tar", &docker_save(&layers));
    import(&mgr, &p, "links").await.unwrap();
    mgr.create(&who(), sandbox("links", "l")).await.unwrap();
    // Both resolve to the image's own passwd, not the host's.
    let (code, out) = sh(
        &mgr,
        "l",
        "while read l; do echo $l; done < /app/abs; while read l; do echo $l; done < /app/up",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("user:x:1000:1000::/home/user:/bin/sh").count(),
        2,
        "{out}"
    );
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !out.contains(host.lines().nth(1).unwrap_or("daemon:")),
        "{out}"
    );
}

#[tokio::test]
async fn hostile_hardlinks_out_of_the_tree_are_refused() {
    if !can_run("hostile_hardlinks_out_of_the_tree_are_refused") {
        return;
    }
    let env = Env::new("h-hardlink");
    let mgr = env.manager().await;
    let e = hostile(&env, &mgr, &[E::Hardlink("shadow", "/etc/shadow")]).await;
    assert!(e.contains("outside the image"), "{e}");
    let e = hostile(
        &env,
        &mgr,
        &[E::Hardlink("shadow", "../../../../etc/shadow")],
    )
    .await;
    assert!(e.contains("outside the image"), "{e}");
    let e = hostile(
        &env,
        &mgr,
        &[
            E::Symlink("etc", "/etc"),
            E::Hardlink("shadow", "etc/shadow"),
        ],
    )
    .await;
    assert!(e.contains("symbolic link"), "{e}");
}

#[tokio::test]
async fn hostile_devices_and_setuid_files_are_neutralised() {
    if !can_run("hostile_devices_and_setuid_files_are_neutralised") {
        return;
    }
    let env = Env::new("h-devices");
    let mgr = env.manager().await;
    let p = env.write(
        "dev.tar",
        &docker_save(&[layer(&[
            E::Char("mem"),
            E::File("rootshell", b"#!/bin/sh\n", 0o4755),
            E::File("sgid", b"x", 0o2755),
        ])]),
    );
    let r = import(&mgr, &p, "dev").await.unwrap();
    let w = r.warnings.join("\n");
    assert!(
        w.contains("device nodes skipped") && w.contains("mem"),
        "{w}"
    );
    assert!(
        w.contains("setuid/setgid bits cleared") && w.contains("rootshell"),
        "{w}"
    );
    let layer_dir = env.data().join("layers").join(&r.template.meta.layers[0]);
    assert!(layer_dir.join("mem").symlink_metadata().is_err());
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(layer_dir.join("rootshell")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(m.uid(), 100_000, "owned by the sandboxes' root");
}

#[tokio::test]
async fn a_decompression_bomb_is_refused() {
    if !can_run("a_decompression_bomb_is_refused") {
        return;
    }
    let env = Env::new("h-bomb");
    let mgr = env.manager().await;
    let zeros = vec![0u8; 64 << 20];
    let bomb = layer(&[E::File("zeros", &zeros, 0o644)]);
    let small = oci_layout(&[bomb], &[gzip]);
    assert!(small.len() < 1 << 20, "{}", small.len());
    let p = env.write("bomb.tar", &small);
    let e = mgr
        .import_template(
            &who(),
            ImportTemplate {
                archive: p,
                name: "bomb".into(),
                max_bytes: Some(16 << 20),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("decompression bomb"), "{e}");
    assert!(mgr.template(&who(), "bomb").is_err());
    assert!(env.staging_left().is_empty());
}

#[tokio::test]
async fn not_an_image_says_what_to_give() {
    if !can_run("not_an_image_says_what_to_give") {
        return;
    }
    let env = Env::new("notimage");
    let mgr = env.manager().await;
    let p = env.write("x.tar", &outer(&[("hello".into(), b"x".to_vec())]));
    let e = import(&mgr, &p, "x").await.unwrap_err();
    assert!(e.to_string().contains("docker save"), "{e}");
    let e = import(&mgr, Path::new("relative.tar"), "x")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("absolute path"), "{e}");
}

#[tokio::test]
async fn snapshots_capture_files_share_layers_and_block_removal() {
    if !can_run("snapshots_capture_files_share_layers_and_block_removal") {
        return;
    }
    let env = Env::new("snap");
    let mgr = env.manager().await;
    mgr.create(&who(), sandbox("host", "lab")).await.unwrap();
    let (code, out) = sh(
        &mgr,
        "lab",
        "mkdir -p /opt/data && echo setup > /opt/data/state && rm /etc/hostname && \
         head -c 1048576 /dev/urandom > /opt/data/blob && md5sum /opt/data/blob",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let sum = out;

    // A running sandbox: frozen for the copy, running again after.
    let s = mgr
        .snapshot(
            &who(),
            "lab",
            SnapshotRequest {
                name: "lab-live".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s.bytes_written >= 1 << 20, "{}", s.bytes_written);
    assert!(s.template.meta.host_base);
    assert_eq!(
        s.template.meta.layers.len(),
        1,
        "only the sandbox's own layer"
    );
    let (code, _) = sh(&mgr, "lab", "echo after > /opt/data/later").await;
    assert_eq!(code, 0);

    mgr.stop(&who(), "lab").await.unwrap();
    let s2 = mgr
        .snapshot(
            &who(),
            "lab",
            SnapshotRequest {
                name: "lab-after-setup".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s2.millis < 30_000);

    mgr.create(&who(), sandbox("lab-after-setup", "copy1"))
        .await
        .unwrap();
    let (code, out) = sh(
        &mgr,
        "copy1",
        "cat /opt/data/state /opt/data/later; md5sum /opt/data/blob; ls /etc/hostname 2>&1 || true",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("setup\nafter\n"), "{out}");
    assert!(out.contains(&sum), "{out}");
    assert!(out.contains("No such file"), "the deletion is kept: {out}");
    // The live snapshot is the moment it was taken: no `later`.
    mgr.create(&who(), sandbox("lab-live", "copy2"))
        .await
        .unwrap();
    let (_, out) = sh(&mgr, "copy2", "ls /opt/data").await;
    assert_eq!(out, "blob\nstate\n");

    // In use: 409; listed, with who uses it.
    let e = mgr.remove_template(&who(), "lab-after-setup").unwrap_err();
    assert_eq!(e.code(), WireCode::InvalidState, "{e}");
    assert!(e.to_string().contains("in use"), "{e}");
    let listed = mgr.templates_for(&who()).unwrap();
    let t = listed
        .iter()
        .find(|t| t.meta.name == "lab-after-setup")
        .unwrap();
    assert_eq!(t.used_by.len(), 1);
    // A snapshot holds alice's files: bob neither sees, uses nor removes it.
    let bob = Caller::tenant("bob");
    let e = mgr.remove_template(&bob, "lab-live").unwrap_err();
    assert!(matches!(e, CoreError::TemplateNotFound(_)), "{e}");
    assert!(mgr.template(&bob, "lab-live").is_err());
    assert!(!mgr
        .templates_for(&bob)
        .unwrap()
        .iter()
        .any(|t| t.meta.name.starts_with("lab-")));
    let e = mgr
        .create(&bob, sandbox("lab-live", "stolen"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lab-live"), "{e}");
    assert!(mgr.list(&bob, &Default::default()).unwrap().is_empty());

    mgr.terminate(&who(), "copy1").await.unwrap();
    let layer = mgr.template(&who(), "lab-after-setup").unwrap().meta.layers[0].clone();
    mgr.remove_template(&who(), "lab-after-setup").unwrap();
    assert!(matches!(
        mgr.template(&who(), "lab-after-setup"),
        Err(CoreError::TemplateNotFound(_))
    ));
    // The layer stays until the collector runs, then goes; used layers stay.
    let layers = env.data().join("layers");
    assert!(layers.join(&layer).exists());
    let dry = mgr.gc_layers(true).await.unwrap();
    assert_eq!(dry.layers, vec![layer.clone()]);
    assert!(layers.join(&layer).exists());
    let gc = mgr.gc_layers(false).await.unwrap();
    assert_eq!(gc.layers, vec![layer.clone()]);
    assert!(gc.bytes > 0);
    assert!(!layers.join(&layer).exists());
    let live_layer = &mgr.template(&who(), "lab-live").unwrap().meta.layers[0];
    assert!(layers.join(live_layer).exists());

    // Sandboxes' figures are the reaper's last measurement.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage = mgr.disk_usage(&who()).await.unwrap();
        if usage.sandboxes.iter().any(|r| r.bytes > 0) || std::time::Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(usage
        .templates
        .iter()
        .any(|r| r.name == "lab-live" && r.bytes >= 1 << 20));
    assert!(usage.sandboxes.iter().any(|r| r.bytes > 0));
}

#[tokio::test]
async fn a_snapshot_of_a_sandbox_with_a_bounded_disk_works_stopped_and_paused() {
    if !can_run("a_snapshot_of_a_sandbox_with_a_bounded_disk_works_stopped_and_paused") {
        return;
    }
    let env = Env::new("snapdisk");
    let mgr = env.manager().await;
    let mut req = sandbox("host", "d");
    req.resources.disk = Some(64 << 20);
    mgr.create(&who(), req).await.unwrap();
    let (code, out) = sh(&mgr, "d", "echo on-disk > /root/f").await;
    assert_eq!(code, 0, "{out}");
    mgr.pause(&who(), "d").await.unwrap();
    mgr.snapshot(
        &who(),
        "d",
        SnapshotRequest {
            name: "d-paused".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    mgr.resume(&who(), "d").await.unwrap();
    mgr.stop(&who(), "d").await.unwrap();
    mgr.snapshot(
        &who(),
        "d",
        SnapshotRequest {
            name: "d-stopped".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for t in ["d-paused", "d-stopped"] {
        mgr.create(&who(), sandbox(t, t)).await.unwrap();
        let (_, out) = sh(&mgr, t, "cat /root/f").await;
        assert_eq!(out, "on-disk\n", "{t}");
    }
}

async fn build(
    mgr: &Manager,
    req: BuildTemplate,
) -> (
    warren_core::Result<warren_core::TemplateInfo>,
    Vec<BuildEvent>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let r = mgr.build_template(&who(), req, tx).await;
    (r, collect.await.unwrap())
}

#[tokio::test]
async fn a_build_runs_its_steps_and_keeps_the_result() {
    if !can_run("a_build_runs_its_steps_and_keeps_the_result") {
        return;
    }
    let env = Env::new("build");
    let mgr = env.manager().await;
    let (r, events) = build(
        &mgr,
        BuildTemplate {
            name: "sci".into(),
            steps: vec![
                "mkdir -p /opt/tool && echo \"$MPLBACKEND\" > /opt/tool/backend".into(),
                "echo step two output; echo to stderr >&2".into(),
            ],
            env: [("MPLBACKEND".to_string(), "Agg".to_string())].into(),
            workdir: Some("/opt/tool".into()),
            ..Default::default()
        },
    )
    .await;
    let t = r.unwrap();
    assert_eq!(t.meta.env["MPLBACKEND"], "Agg");
    assert!(events.iter().any(|e| matches!(
        e,
        BuildEvent::Step {
            index: 2,
            count: 2,
            ..
        }
    )));
    assert!(events
        .iter()
        .any(|e| matches!(e, BuildEvent::Output { data, .. } if data.contains("step two output"))));
    assert!(matches!(events.last(), Some(BuildEvent::Done { .. })));
    let log = std::fs::read_to_string(
        env.data()
            .join("templates")
            .join(&t.meta.key)
            .join("build.log"),
    )
    .unwrap();
    assert!(
        log.contains("step two output") && log.contains("to stderr"),
        "{log}"
    );

    mgr.create(&who(), sandbox("sci", "s")).await.unwrap();
    let (code, out) = sh(&mgr, "s", "cat /opt/tool/backend; echo $MPLBACKEND; pwd").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "Agg\nAgg\n/opt/tool\n");
    assert!(env.staging_left().is_empty());
}

#[tokio::test]
async fn a_builds_user_runs_its_processes_in_their_home() {
    if !can_run("a_builds_user_runs_its_processes_in_their_home") {
        return;
    }
    let env = Env::new("builduser");
    let mgr = env.manager().await;
    let (r, _) = build(
        &mgr,
        BuildTemplate {
            name: "dev".into(),
            steps: vec!["useradd -m -u 1234 -s /bin/sh alice && id -u > /root/step-ran-as".into()],
            user: Some("alice".into()),
            ..Default::default()
        },
    )
    .await;
    let t = r.unwrap();
    assert_eq!(t.meta.user.as_deref(), Some("alice"));
    mgr.create(&who(), sandbox("dev", "s")).await.unwrap();
    let (code, out) = sh(
        &mgr,
        "s",
        "id -un; id -u; pwd; echo $HOME; touch mine && ls -n mine | cut -d' ' -f3",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "alice\n1234\n/home/alice\n/home/alice\n1234\n");
    // The steps ran as root, whoever the template's processes run as.
    let (_, out) = sh(
        &mgr,
        "s",
        "cat /root/step-ran-as 2>&1 || sudo -n true 2>&1; true",
    )
    .await;
    assert!(
        out.contains("Permission denied"),
        "alice read root's home: {out}"
    );

    // A user the steps did not make is refused, and nothing is kept.
    let (r, _) = build(
        &mgr,
        BuildTemplate {
            name: "ghost".into(),
            steps: vec!["true".into()],
            user: Some("ghost".into()),
            ..Default::default()
        },
    )
    .await;
    let text = r.unwrap_err().to_string();
    assert!(
        text.contains("ghost") && text.contains("useradd -m ghost"),
        "{text}"
    );
    assert!(mgr.template(&who(), "ghost").is_err());
    // A user that is no user name is refused before anything runs.
    let (r, events) = build(
        &mgr,
        BuildTemplate {
            name: "bad".into(),
            steps: vec!["true".into()],
            user: Some("root; rm -rf /".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(r.unwrap_err().to_string().contains("not a user name"));
    assert!(!events.iter().any(|e| matches!(e, BuildEvent::Step { .. })));
    assert!(env.staging_left().is_empty());
}

#[tokio::test]
async fn a_failed_build_step_leaves_nothing() {
    if !can_run("a_failed_build_step_leaves_nothing") {
        return;
    }
    let env = Env::new("buildfail");
    let mgr = env.manager().await;
    let (r, events) = build(
        &mgr,
        BuildTemplate {
            name: "broken".into(),
            steps: vec![
                "echo fine > /opt/f".into(),
                "echo about to fail; exit 3".into(),
                "echo never".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let e = r.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("step 2 of 3") && text.contains("exited 3"),
        "{text}"
    );
    assert!(text.contains("about to fail"), "{text}");
    assert!(matches!(events.last(), Some(BuildEvent::Error { .. })));
    assert!(!events
        .iter()
        .any(|e| matches!(e, BuildEvent::Step { index: 3, .. })));
    assert!(mgr.template(&who(), "broken").is_err());
    assert!(env.staging_left().is_empty());
    let sandboxes: Vec<_> = std::fs::read_dir(env.data().join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
    let templates: Vec<String> = std::fs::read_dir(env.data().join("templates"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "host")
        .collect();
    assert!(templates.is_empty(), "{templates:?}");
}

#[tokio::test]
async fn start_and_ready_commands_run_at_create_and_again_at_start() {
    if !can_run("start_and_ready_commands_run_at_create_and_again_at_start") {
        return;
    }
    let env = Env::new("ready");
    let mgr = env.manager().await;
    let (r, _) = build(
        &mgr,
        BuildTemplate {
            name: "svc".into(),
            steps: vec!["true".into()],
            // The service comes up a little after it is started.
            start_cmd: Some("echo run >> /root/starts; sleep 0.5; touch /tmp/up; sleep 600".into()),
            ready_cmd: Some("test -e /tmp/up".into()),
            ..Default::default()
        },
    )
    .await;
    r.unwrap();
    let t0 = Instant::now();
    mgr.create(&who(), sandbox("svc", "s")).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "waited for ready"
    );
    let (_, out) = sh(&mgr, "s", "test -e /tmp/up && cat /root/starts").await;
    assert_eq!(out, "run\n");
    // Continuation: the kept files, and the start command once more.
    mgr.stop(&who(), "s").await.unwrap();
    mgr.start(&who(), "s").await.unwrap();
    let (_, out) = sh(&mgr, "s", "test -e /tmp/up && cat /root/starts").await;
    assert_eq!(out, "run\nrun\n");
}

#[tokio::test]
async fn a_ready_command_that_never_succeeds_fails_the_create_clearly() {
    if !can_run("a_ready_command_that_never_succeeds_fails_the_create_clearly") {
        return;
    }
    let env = Env::new("notready");
    let mgr = env.manager().await;
    let (r, _) = build(
        &mgr,
        BuildTemplate {
            name: "never".into(),
            steps: vec!["true".into()],
            ready_cmd: Some("echo not yet; false".into()),
            ready_timeout_secs: Some(1),
            ..Default::default()
        },
    )
    .await;
    r.unwrap();
    let e = mgr.create(&who(), sandbox("never", "n")).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("did not succeed within 1 s"), "{text}");
    assert!(text.contains("not yet"), "{text}");
    assert_eq!(mgr.live_count(), 0, "the sandbox is removed");
    assert!(mgr.get(&who(), "n").is_err());
}
