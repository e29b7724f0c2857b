//! Users and programs, looked up the way a shell inside the sandbox would.
//!
//! The agent is statically linked and must not depend on NSS modules the sandbox's libc
//! may or may not have, so users come from the sandbox's own /etc/passwd and /etc/group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use warren_sys::child::Identity;
use warren_types::proto::User;

/// The PATH used when neither the sandbox nor the request sets one.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A user resolved for an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub identity: Identity,
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    let text = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5)?.to_string(),
            })
        })
        .collect()
}

/// The groups `name` belongs to besides `primary`, from /etc/group.
fn supplementary(root: &Path, name: &str, primary: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
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
    groups
}

/// Resolves `user` against the passwd and group files under `root` ("/" in the agent).
pub(crate) fn resolve(root: &Path, user: &User) -> Result<Account, String> {
    let entries = passwd(root);
    match user {
        User::Name(name) => {
            let e = entries
                .iter()
                .find(|e| &e.name == name)
                .ok_or_else(|| format!("no user named {name} in /etc/passwd"))?;
            Ok(Account {
                identity: Identity {
                    uid: e.uid,
                    gid: e.gid,
                    groups: supplementary(root, &e.name, e.gid),
                },
                home: Some(e.home.clone()),
            })
        }
        User::Id { uid, gid } => {
            let known = entries.iter().find(|e| e.uid == *uid);
            let gid = gid.or(known.map(|e| e.gid)).unwrap_or(*uid);
            let groups = match known {
                Some(e) => supplementary(root, &e.name, gid),
                None => vec![gid],
            };
            Ok(Account {
                identity: Identity {
                    uid: *uid,
                    gid,
                    groups,
                },
                home: known.map(|e| e.home.clone()),
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
