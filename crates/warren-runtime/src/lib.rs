//! Sandbox backends and everything they are built from: root filesystems and templates,
//! cgroups, networks, and the client side of the agent protocol.
//!
//! The namespace backend is the default: a sandbox is a set of fresh Linux namespaces
//! around an overlay root, with the agent as PID 1. The privileged set-up runs in a
//! single-threaded helper process (`warren __init`, see [`helper`]) that stays alive as
//! the sandbox's monitor and tears everything down when the sandbox ends.

pub mod backend;
pub mod bundle;
pub use warren_agent::client;
pub mod doctor;
pub mod egress;
pub mod gvisor;
pub mod helper;
pub mod ids;
pub mod kept;
pub mod launch;
pub mod mounts;
pub mod namespace;
pub mod network;
pub mod oci;
pub mod prepared;
pub mod process;
pub mod runc;
pub mod rundir;
pub mod shell;
pub mod spares;
pub mod template;
pub mod trace;
pub mod tree;
pub mod zygote;

use std::path::PathBuf;

pub use backend::{Backend, Backends, Instance, Usage};
pub use namespace::{NamespaceBackend, Sandbox};
pub use warren_sys::host_cores;

/// Host uid and gid that root inside every sandbox maps to. Sandbox ids 0..65536 map to
/// `HOST_ID_BASE..HOST_ID_BASE + 65536`, an unprivileged range no host account uses.
pub const HOST_ID_BASE: u32 = 100_000;
/// How many ids each sandbox's user namespace maps.
pub const ID_COUNT: u32 = 65_536;
/// The uid and gid of the `user` account inside every sandbox.
pub const USER_ID: u32 = 1000;

/// Prefix of every host object Warren makes: cgroups, links, network namespaces.
pub const PREFIX: &str = "warren-";

/// Where Warren keeps things on the host.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Runtime state: one directory per live sandbox with its agent socket.
    pub run: PathBuf,
    /// Persistent data: templates, volumes, writable layers of kept sandboxes.
    pub data: PathBuf,
}

impl Paths {
    /// `ROOT/run` and `ROOT/data`: a test's own directories.
    #[cfg(test)]
    pub(crate) fn under(root: &std::path::Path) -> Self {
        Self {
            run: root.join("run"),
            data: root.join("data"),
        }
    }

    /// `WARREN_RUN_DIR` and `WARREN_DATA_DIR`, or /run/warren and /var/lib/warren; a
    /// relative path is taken from the current directory, once.
    pub fn from_env() -> Self {
        let get = |k: &str, d: &str| {
            let p = std::env::var_os(k).map(PathBuf::from).unwrap_or(d.into());
            std::path::absolute(&p).unwrap_or(p)
        };
        Self {
            run: get("WARREN_RUN_DIR", "/run/warren"),
            data: get("WARREN_DATA_DIR", "/var/lib/warren"),
        }
    }

    /// Makes the run and data directories if missing and keeps them private to the
    /// user running Warren (root): mode 0700, owned by it. They hold every tenant's
    /// state, the daemon's key, and every sandbox's files; a sandbox's files may carry
    /// whatever its processes made (setuid bits included), so no other host user may even
    /// walk into them. A directory with wider permissions is narrowed (an older Warren
    /// made it 0755); one owned by another user is refused.
    pub fn secure(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let me = nix::unistd::geteuid().as_raw();
        for dir in [&self.run, &self.data] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(format!("create {}", dir.display())))?;
            let meta = std::fs::symlink_metadata(dir)
                .map_err(io_err(format!("look at {}", dir.display())))?;
            if !meta.is_dir() || meta.uid() != me {
                return Err(Error::Invalid {
                    what: "state directory",
                    why: format!(
                        "{} must be a directory owned by uid {me} (it holds every sandbox's \
                         state); fix it or point WARREN_RUN_DIR / WARREN_DATA_DIR elsewhere",
                        dir.display()
                    ),
                });
            }
            if meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err(format!("make {} private", dir.display())))?;
            }
        }
        Ok(())
    }

    pub fn sandbox_run(&self, id: &str) -> PathBuf {
        self.run.join("sandboxes").join(id)
    }

    pub fn sandbox_data(&self, id: &str) -> PathBuf {
        self.data.join("sandboxes").join(id)
    }

    pub fn template(&self, name: &str) -> PathBuf {
        self.data.join("templates").join(name)
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.data.join("volumes").join(name)
    }
}

/// Errors of the runtime. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown template {0:?}: `warren template ls` lists them; the built-in one is \"host\""
    )]
    UnknownTemplate(String),
    #[error("a template named {0:?} exists: pick another name, or remove it first (`warren template rm`)")]
    TemplateExists(String),
    /// An archive that could not be imported, for what it holds (a full disk while
    /// importing is [`Error::NoSpace`]).
    #[error(transparent)]
    Image(oci::ImportError),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("cgroups: {0}")]
    Cgroup(#[from] warren_sys::cgroup::CgroupError),
    #[error("{0}")]
    Setup(String),
    /// The host's disk is full, or too small for what was asked. `why` is for the
    /// caller and names no host path; `source` is the write that met the full disk, if
    /// one did.
    #[error("{why}")]
    NoSpace {
        why: String,
        #[source]
        source: Option<Box<Error>>,
    },
    #[error("the sandbox helper failed: {0}")]
    Helper(String),
    #[error("agent: {0}")]
    Agent(#[from] client::ClientError),
    #[error(transparent)]
    Random(#[from] warren_types::random::RandomError),
    /// The backend does not do this (see its capabilities in `GET /v1/backends`).
    #[error("this sandbox's backend does not support {0}")]
    Unsupported(&'static str),
    /// The backend asked for cannot make sandboxes on this host.
    #[error("the {kind} backend is not available here: {why}")]
    Unavailable {
        kind: warren_types::spec::Isolation,
        why: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a write that met a full disk tells the caller: where the host ran out is the
/// operator's business, not the caller's.
pub(crate) const DISK_FULL: &str =
    "the host ran out of disk space in the daemon's data directory; free space there and retry";

impl Error {
    /// The error a helper reported. Its reasons for a full disk are written for the
    /// caller (a helper words them so).
    pub fn from_helper(kind: helper::FailureKind, message: String) -> Self {
        match kind {
            helper::FailureKind::NoSpace => Self::NoSpace {
                why: message,
                source: None,
            },
            helper::FailureKind::Failed => Self::Setup(message),
        }
    }

    /// An I/O failure doing `what`; one that met a full disk is [`Error::NoSpace`].
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        let full = is_disk_full(&source);
        let e = Self::Io {
            what: what.into(),
            source,
        };
        if full {
            Self::disk_full(e)
        } else {
            e
        }
    }

    /// `e`, a write that met a full disk, as the caller is told it.
    pub(crate) fn disk_full(e: Error) -> Self {
        Self::NoSpace {
            why: DISK_FULL.into(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<oci::ImportError> for Error {
    fn from(e: oci::ImportError) -> Self {
        if e.is_disk_full() {
            Self::disk_full(Self::Image(e))
        } else {
            Self::Image(e)
        }
    }
}

/// Whether `e` is the disk's being full: out of blocks or inodes (ENOSPC), or over a
/// quota (EDQUOT).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Whether a tool run in the C locale (`LC_ALL=C`) complains of a full disk. A tool
/// reports its errno only as the C library's text for it, so that text is read back here,
/// and only here: glibc's and musl's for ENOSPC and EDQUOT.
pub(crate) fn tool_says_disk_full(stderr: &str) -> bool {
    let stderr = stderr.to_ascii_lowercase();
    ["no space left on device", "quota exceeded"]
        .iter()
        .any(|t| stderr.contains(t))
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::io(what, source)
}

/// The cgroup limits of a sandbox's resources: the one place a request's limits become
/// what the kernel is told (the disk limit is the writable layer's size, not a cgroup's).
pub fn cgroup_limits(r: &warren_types::spec::Resources) -> warren_sys::cgroup::Limits {
    let warren_types::spec::Resources {
        memory,
        cpu_millis,
        pids,
        disk: _,
    } = r.clone();
    warren_sys::cgroup::Limits {
        memory,
        cpu_millis,
        pids,
    }
}

/// Whether `name` is usable as a sandbox id, template or volume name: it becomes a path
/// component and a cgroup name, so only a plain, short word is accepted.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// Checks `done` until it holds or `limit` has passed: first 50 µs after the first
/// check, then twice as long each time up to 2 ms. What is waited for this way (a socket
/// a process was told to close or bind) usually comes within a millisecond or two, which
/// a fixed 2 ms sleep rounded up to 2 ms every time. Whether it held.
pub(crate) fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + limit;
    let mut nap = Duration::from_micros(50);
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(2));
    }
}

/// A fresh random sandbox id (16 hex digits).
pub fn new_id() -> Result<String> {
    Ok(warren_types::random::hex(8)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_its_condition_holds_or_its_limit_passes() {
        use std::time::{Duration, Instant};
        let mut checks = 0;
        assert!(wait_for(Duration::from_secs(5), || {
            checks += 1;
            checks == 4
        }));
        assert_eq!(checks, 4);
        let t0 = Instant::now();
        assert!(!wait_for(Duration::from_millis(20), || false));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(65), "a\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["host", "py-3.11", "lab_1"] {
            assert!(valid_name(good), "{good:?}");
        }
    }

    #[test]
    fn a_full_disk_is_told_apart_by_its_errno() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = io_err("write /var/lib/warren/x")(std::io::Error::from_raw_os_error(errno));
            let Error::NoSpace { why, source } = &e else {
                panic!("{e:?}");
            };
            assert!(!why.contains("/var/lib"), "{why}");
            assert!(matches!(source.as_deref(), Some(Error::Io { .. })), "{e:?}");
        }
        let e = io_err("write x")(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        let e = io_err("write x")(std::io::ErrorKind::Other.into());
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    #[test]
    fn an_import_that_fills_the_disk_is_no_space() {
        let layer = |source| oci::ImportError::Layer {
            index: 1,
            count: 1,
            source,
        };
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        for e in [
            layer(oci::UnpackError::Tar(full())),
            layer(oci::UnpackError::Io {
                what: "create /var/lib/warren/x".into(),
                source: full(),
            }),
        ] {
            let e = Error::from(e);
            assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
        }
        let e = Error::from(layer(oci::UnpackError::Tar(std::io::Error::other("bad"))));
        assert!(matches!(e, Error::Image(_)), "{e:?}");
        let e = Error::from(oci::ImportError::Format("no manifest".into()));
        assert!(matches!(e, Error::Image(_)), "{e:?}");
    }

    #[test]
    fn tools_saying_the_disk_is_full_are_heard() {
        assert!(tool_says_disk_full(
            "cp: error writing '/x/y': No space left on device"
        ));
        assert!(tool_says_disk_full(
            "cp: cannot create '/x': Disk quota exceeded"
        ));
        assert!(!tool_says_disk_full(
            "cp: cannot stat '/x': No such file or directory"
        ));
    }

    #[test]
    fn ids_are_unique_hex() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(valid_name(&a));
    }
}
