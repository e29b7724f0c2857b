//! Templates: the read-only lower layer of a sandbox's root filesystem.
//!
//! The built-in template `host` needs no download: its root is a small synthesized tree
//! (an /etc of its own, the usual empty directories) and the host's /usr, /bin, /sbin and
//! /lib* are bind-mounted read-only on top of it when a sandbox is made. Its /etc holds a
//! `user` account and copies of the host files programs need to run (certificates,
//! alternatives, the dynamic linker's configuration), and nothing secret: no shadow file,
//! no ssh keys, no host accounts.
//!
//! Template files are owned by the ids that root and `user` map to in a sandbox, so they
//! appear as root's and user's inside and the overlay can copy them up when written.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{io_err, Error, Paths, Result, HOST_ID_BASE, USER_ID};

/// Bumped when the synthesized tree changes, so old copies are rebuilt.
const HOST_TEMPLATE_VERSION: &str = "1";

/// Host directories a `host` sandbox sees read-only (those that are real directories).
const HOST_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host /etc entries copied into the `host` template when present.
const HOST_ETC: [&str; 22] = [
    "ssl",
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

/// A template ready to be used as a lower layer.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// The lower layer of the overlay root.
    pub rootfs: PathBuf,
    /// Host directories bind-mounted read-only at the same place in the sandbox.
    pub host_binds: Vec<PathBuf>,
    /// Environment every process of a sandbox made from it gets.
    pub env: BTreeMap<String, String>,
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

/// Finds template `name`, building the `host` template on first use.
pub fn resolve(paths: &Paths, name: &str) -> Result<Template> {
    if name != "host" {
        return Err(Error::UnknownTemplate(name.to_string()));
    }
    let dir = paths.template("host");
    let rootfs = dir.join("rootfs");
    let marker = dir.join("version");
    if fs::read_to_string(&marker).ok().as_deref() != Some(HOST_TEMPLATE_VERSION) {
        build_host(&dir)?;
    }
    let host_binds = HOST_DIRS
        .iter()
        .map(|d| Path::new("/").join(d))
        .filter(|p| p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false))
        .collect();
    Ok(Template {
        name: name.to_string(),
        rootfs,
        host_binds,
        env: default_env(),
    })
}

/// Builds the `host` template in a scratch directory and renames it into place, so a
/// half-built template is never used and concurrent first uses do not collide.
fn build_host(dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("template dir has a parent");
    fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    let scratch = parent.join(format!(".host-{}", crate::new_id()));
    let root = scratch.join("rootfs");
    let r = populate_host(&root).and_then(|()| {
        fs::write(scratch.join("version"), HOST_TEMPLATE_VERSION)
            .map_err(io_err("write template version"))
    });
    if let Err(e) = r {
        let _ = fs::remove_dir_all(&scratch);
        return Err(e);
    }
    let old = parent.join(format!(".old-{}", crate::new_id()));
    let _ = fs::rename(dir, &old);
    let r = fs::rename(&scratch, dir);
    let _ = fs::remove_dir_all(&old);
    if r.is_err() {
        // Another process won the race; its copy is as good as ours.
        let _ = fs::remove_dir_all(&scratch);
    }
    Ok(())
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
    for name in HOST_ETC {
        let src = Path::new("/etc").join(name);
        if src.symlink_metadata().is_ok() {
            copy_tree(&src, &etc.join(name))?;
        }
    }
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
    )
}

/// The host's resolvers, unless they listen on the host's loopback, which a sandbox
/// cannot reach; then public resolvers are named so that `nat` sandboxes can resolve.
fn resolv_conf() -> String {
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = host
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|s| !s.starts_with("127.") && *s != "::1")
        .collect();
    if servers.is_empty() {
        return "nameserver 1.1.1.1\nnameserver 8.8.8.8\n".into();
    }
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
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
            println!("SKIPPED: cannot build the host template here: {e}");
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
    fn unknown_template_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            run: dir.path().join("run"),
            data: dir.path().join("data"),
        };
        let e = resolve(&paths, "nope").unwrap_err();
        assert!(e.to_string().contains("unknown template"));
    }
}
