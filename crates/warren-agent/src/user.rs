//! Users and programs, looked up the way a shell inside the sandbox would.
//!
//! The agent is statically linked and must not depend on NSS modules the sandbox's libc
//! may or may not have, so users come from the sandbox's own /etc/passwd and /etc/group.
//!
//! Both files belong to the tenant, who may have replaced them with anything: a FIFO
//! (a plain read would block the agent's only runtime thread until someone writes), a
//! symlink to /dev/zero (endless), a huge file. So they are opened without following a
//! symlink and without blocking, must be regular files, and are read only up to
//! [`MAX_ACCOUNT_FILE`].

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use warren_sys::child::Identity;
use warren_types::proto::User;

/// The PATH used when neither the sandbox nor the request sets one.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most of /etc/passwd or /etc/group that is read; real ones are a few KiB.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;

/// Why a user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UserError {
    #[error("reading {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file} is not a regular file")]
    NotAFile { file: String },
    #[error("{file} is larger than {MAX_ACCOUNT_FILE} bytes")]
    TooLarge { file: String },
    #[error("no user named {0} in /etc/passwd")]
    NoSuchUser(String),
}

/// A user resolved for an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub identity: Identity,
    pub home: Option<String>,
    /// The account's name, when /etc/passwd has it.
    pub name: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// The contents of `root`/`name`; empty when it does not exist.
fn read_account_file(root: &Path, name: &str) -> Result<String, UserError> {
    let path = root.join(name);
    let file = || path.display().to_string();
    let read = |e: io::Error| match e.raw_os_error() {
        // What O_NOFOLLOW answers for a symlink.
        Some(libc::ELOOP) => UserError::NotAFile { file: file() },
        _ => UserError::Read {
            file: file(),
            reason: crate::reason(&e),
        },
    };
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(read(e)),
    };
    let meta = f.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(UserError::NotAFile { file: file() });
    }
    // Room for the whole file and the read that finds its end: two reads, where an
    // empty buffer grown as it fills took five or six (each a trip to the kernel, under
    // gVisor a costly one, and these files are read for every command).
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_ACCOUNT_FILE) as usize + 1);
    f.take(MAX_ACCOUNT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_ACCOUNT_FILE {
        return Err(UserError::TooLarge { file: file() });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn passwd(root: &Path) -> Result<Vec<PasswdEntry>, UserError> {
    let text = read_account_file(root, "etc/passwd")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5)?.to_string(),
            })
        })
        .collect())
}

/// The groups `name` belongs to besides `primary`, from /etc/group.
fn supplementary(root: &Path, name: &str, primary: u32) -> Result<Vec<u32>, UserError> {
    let text = read_account_file(root, "etc/group")?;
    let mut groups = vec![primary];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let (Some(gid), Some(members)) = (f.get(2).and_then(|g| g.parse().ok()), f.get(3)) else {
            continue;
        };
        if members.split(',').any(|m| m == name) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    Ok(groups)
}

/// Resolves `user` against the passwd and group files under `root` ("/" in the agent).
pub(crate) fn resolve(root: &Path, user: &User) -> Result<Account, UserError> {
    match user {
        User::Name(name) => {
            let entries = passwd(root)?;
            let e = entries
                .iter()
                .find(|e| &e.name == name)
                .ok_or_else(|| UserError::NoSuchUser(name.clone()))?;
            Ok(Account {
                identity: Identity {
                    uid: e.uid,
                    gid: e.gid,
                    groups: supplementary(root, &e.name, e.gid)?,
                },
                home: Some(e.home.clone()),
                name: Some(e.name.clone()),
            })
        }
        User::Id { uid, gid } => {
            // A number needs no account: with /etc/passwd unusable (a sandbox may make
            // it anything), the process runs as that id, without a home or groups.
            let entries = passwd(root).unwrap_or_default();
            let known = entries.iter().find(|e| e.uid == *uid);
            let gid = gid.or(known.map(|e| e.gid)).unwrap_or(*uid);
            let groups = match known {
                Some(e) => supplementary(root, &e.name, gid).unwrap_or_else(|_| vec![gid]),
                None => vec![gid],
            };
            Ok(Account {
                identity: Identity {
                    uid: *uid,
                    gid,
                    groups,
                },
                home: known.map(|e| e.home.clone()),
                name: known.map(|e| e.name.clone()),
            })
        }
    }
}

/// Finds `name` the way execvp would: as given when it contains a slash (relative to
/// `cwd`), else in each PATH directory. Only executable regular files count.
pub(crate) fn find_program(name: &str, path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    // A path that cannot be looked at for another reason than its absence (EMFILE,
    // ENOMEM, EIO) is taken: exec then reports the real error, not "command not found".
    let executable = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(e) => !matches!(
            e.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EACCES) | Some(libc::ELOOP)
        ),
    };
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let p = cwd.join(name);
        return executable(&p).then_some(p);
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                cwd.to_path_buf()
            } else {
                cwd.join(dir)
            }
        })
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_come_from_the_sandbox_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\nbroken\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "user:x:1000:\ndocker:x:999:user,other\n",
        )
        .unwrap();
        let a = resolve(root.path(), &User::Name("user".into())).unwrap();
        assert_eq!(
            a.identity,
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 999]
            }
        );
        assert_eq!(a.home.as_deref(), Some("/home/user"));
        assert_eq!(a.name.as_deref(), Some("user"));
        let b = resolve(
            root.path(),
            &User::Id {
                uid: 4242,
                gid: None,
            },
        )
        .unwrap();
        assert_eq!(
            b.identity,
            Identity {
                uid: 4242,
                gid: 4242,
                groups: vec![4242]
            }
        );
        assert!(resolve(root.path(), &User::Name("nobody-here".into())).is_err());
    }

    /// Resolves `user` under `root` on a thread of its own, failing the test instead of
    /// hanging it when the resolution blocks.
    fn resolve_in_time(root: &Path, user: User) -> Result<Account, UserError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(resolve(&root, &user));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("resolving a user blocked")
    }

    fn sandbox_root(passwd: Option<&str>) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        if let Some(text) = passwd {
            std::fs::write(root.path().join("etc/passwd"), text).unwrap();
        }
        root
    }

    #[test]
    fn a_fifo_for_passwd_or_group_is_refused_without_blocking() {
        let root = sandbox_root(None);
        let passwd = root.path().join("etc/passwd");
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = resolve_in_time(root.path(), User::Name("user".into())).unwrap_err();
        assert!(matches!(err, UserError::NotAFile { .. }), "{err}");
        assert!(err.to_string().contains("/etc/passwd"), "{err}");

        let root = sandbox_root(Some("user:x:1000:1000::/home/user:/bin/sh\n"));
        let group = root.path().join("etc/group");
        nix::unistd::mkfifo(&group, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = resolve_in_time(root.path(), User::Name("user".into())).unwrap_err();
        assert!(err.to_string().contains("/etc/group"), "{err}");
    }

    #[test]
    fn endless_or_huge_passwd_files_are_refused() {
        let root = sandbox_root(None);
        std::os::unix::fs::symlink("/dev/zero", root.path().join("etc/passwd")).unwrap();
        let err = resolve_in_time(root.path(), User::Name("user".into())).unwrap_err();
        assert!(matches!(err, UserError::NotAFile { .. }), "{err}");
        // A number needs no account: it runs as that id, without a home.
        let a = resolve_in_time(root.path(), User::Id { uid: 0, gid: None }).unwrap();
        assert_eq!((a.identity.uid, a.identity.gid, a.home), (0, 0, None));

        let mut huge = "user:x:1000:1000::/home/user:/bin/sh\n".repeat(40_000);
        huge.truncate(MAX_ACCOUNT_FILE as usize + 1);
        let root = sandbox_root(Some(&huge));
        let err = resolve_in_time(root.path(), User::Name("user".into())).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/etc/passwd") && message.contains(&MAX_ACCOUNT_FILE.to_string()),
            "{message}"
        );

        // Exactly at the limit is still read.
        let mut full = "user:x:1000:1000::/home/user:/bin/sh\n".to_string();
        full.push_str(&"#".repeat(MAX_ACCOUNT_FILE as usize - full.len()));
        let root = sandbox_root(Some(&full));
        let a = resolve_in_time(root.path(), User::Name("user".into())).unwrap();
        assert_eq!(a.identity.uid, 1000);
    }

    #[test]
    fn programs_are_found_like_execvp() {
        let cwd = Path::new("/");
        assert_eq!(
            find_program("sh", Some("/nonexistent:/bin"), cwd),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_program("/bin/sh", None, cwd),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_program("no-such-program-here", None, cwd), None);
        // Not executable.
        assert_eq!(find_program("passwd", Some("/etc"), cwd), None);
    }
}
