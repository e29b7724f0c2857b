//! What a sandbox is made of: the specification a backend builds it from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kernel-enforced limits. `None` means the host's own limit (in a request: the
/// daemon's default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ResourceRequest))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory (and tmpfs) in bytes; swap is not granted beyond it.
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU bandwidth in millicores: 500 is half a core.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Most tasks (processes and threads) alive at once.
    #[serde(default)]
    pub pids: Option<u32>,
    /// Size of the writable layer in bytes.
    #[serde(default)]
    pub disk: Option<u64>,
}

/// How a sandbox reaches the network.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(default = "none"))]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// A veth to a host bridge; outbound traffic is masqueraded. The host's own loopback
    /// services and private addresses of the host stay unreachable.
    Nat,
    /// The host's own network, not separated at all: the process backend (trust mode)
    /// only.
    Host,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Nat => "nat",
            NetworkMode::Host => "host",
        }
    }
}

/// What separates a sandbox from the host: the backend that makes it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(default = "namespace"))]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Linux namespaces, cgroups, seccomp and an overlay root; the host kernel is
    /// shared.
    #[default]
    Namespace,
    /// gVisor (`runsc`): the sandbox's system calls reach gVisor's user-space kernel,
    /// not the host's.
    Gvisor,
    /// runc, the OCI reference runtime: namespaces, seccomp and cgroups on the host
    /// kernel, set up by runc rather than by Warren.
    Runc,
    /// crun, an OCI runtime in C: the same isolation as `runc`.
    Crun,
    /// Trust mode: a process tree on the host in a cgroup, as a chosen host user, in a
    /// host directory. No isolation beyond the user's own permissions.
    Process,
}

impl Isolation {
    pub const ALL: [Isolation; 5] = [
        Isolation::Namespace,
        Isolation::Gvisor,
        Isolation::Runc,
        Isolation::Crun,
        Isolation::Process,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespace => "namespace",
            Isolation::Gvisor => "gvisor",
            Isolation::Runc => "runc",
            Isolation::Crun => "crun",
            Isolation::Process => "process",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Isolation::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| {
                format!("unknown isolation {s:?}: use namespace, gvisor, runc, crun or process")
            })
    }
}

/// A host port on 127.0.0.1 forwarded to a port inside the sandbox.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortMap {
    /// Port on the host's 127.0.0.1.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub host: u16,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub sandbox: u16,
}

/// A persistent named volume mounted into the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    /// Size of the volume in bytes when it is first made; ignored afterwards.
    pub size: Option<u64>,
}

/// A directory of the daemon's host mounted into a sandbox (`-v /host/dir:/path[:ro]`).
/// Only the host's root, on the daemon's unix socket, may ask for one: its source is a
/// path on the host. Host ids 0-65,535 show inside as themselves (the mount is idmapped
/// onto the sandbox's ids), so root inside writes as the host's root there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HostMount {
    /// An absolute path of an existing directory on the host. Recorded as the daemon
    /// resolved it (symlinks followed once, at creation); a symlink found on that path
    /// later fails the mount instead of being followed.
    pub source: String,
    /// Where it shows inside: an absolute path, not `/` and not under `/proc`, `/sys`,
    /// `/dev` or Warren's own `/.warren`.
    pub target: String,
    /// Mounted read-only: writes fail, and a remount inside cannot make it writable.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub read_only: bool,
}

/// Paths inside a sandbox a host directory may not be mounted on, nor under: the kernel's
/// and Warren's own (its agent's socket and binary are under `/.warren`).
pub const RESERVED_TARGETS: [&str; 4] = ["/proc", "/sys", "/dev", "/.warren"];

impl HostMount {
    /// Why `target` cannot be where a host directory shows, if it cannot: it must be
    /// absolute and normalized (no `.`, `..`, `//` or trailing `/`), not `/`, and not at
    /// or under one of [`RESERVED_TARGETS`].
    pub fn target_problem(target: &str) -> Option<String> {
        let bad = |why: &str| Some(format!("mount target {target:?}: {why}"));
        if !target.starts_with('/') {
            return bad("use an absolute path");
        }
        if target == "/" {
            return bad("the sandbox's root cannot be replaced");
        }
        if target.contains('\0') {
            return bad("the path holds a NUL byte");
        }
        if target[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return bad("use a normalized path, without '.', '..', '//' or a trailing '/'");
        }
        if let Some(r) = RESERVED_TARGETS.iter().find(|r| path_within(target, r)) {
            return bad(&format!("{r} is the sandbox's own; mount elsewhere"));
        }
        None
    }
}

/// Whether the normalized absolute path `p` is `dir` or below it.
pub fn path_within(p: &str, dir: &str) -> bool {
    p == dir || (p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Everything a backend needs to build a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    pub id: String,
    pub template: String,
    pub hostname: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub publish: Vec<PortMap>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Host directories mounted in, after the volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<HostMount>,
    /// The base environment of every process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The backend that makes (and, after a restart, adopts) the sandbox.
    #[serde(default)]
    pub isolation: Isolation,
    /// Where a `nat` sandbox may connect to; open when empty.
    #[serde(default, skip_serializing_if = "crate::egress::Egress::is_open")]
    pub egress: crate::egress::Egress,
}

/// Why `env` cannot be a process's environment, if it cannot: a name must be
/// non-empty and hold neither `=` nor NUL (`A=B` would set another variable than the
/// one named), and no value may hold NUL.
pub fn env_problem(env: &BTreeMap<String, String>) -> Option<String> {
    env.iter().find_map(|(k, v)| {
        if k.is_empty() || k.contains(['=', '\0']) {
            Some(format!(
                "environment variable name {k:?}: use a non-empty name without '=' or NUL"
            ))
        } else if v.contains('\0') {
            Some(format!(
                "environment variable {k}: the value holds a NUL byte"
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    #[test]
    fn mount_targets_are_absolute_normalized_and_not_the_sandboxs_own() {
        for ok in [
            "/data",
            "/home/user/project",
            "/procfs",
            "/devices",
            "/srv/.warren",
        ] {
            assert_eq!(HostMount::target_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "data",
            "/",
            "/data/",
            "//data",
            "/a/../etc",
            "/a/./b",
            "/proc",
            "/proc/sys",
            "/sys/fs/cgroup",
            "/dev",
            "/dev/shm",
            "/.warren",
            "/.warren/run",
            "/a\0b",
        ] {
            assert!(HostMount::target_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn within_means_at_or_below() {
        assert!(path_within("/a", "/a"));
        assert!(path_within("/a/b", "/a"));
        assert!(!path_within("/ab", "/a"));
        assert!(!path_within("/a", "/a/b"));
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn names_that_would_set_another_variable_are_refused() {
        let one = |k: &str, v: &str| env_problem(&BTreeMap::from([(k.into(), v.into())]));
        assert_eq!(one("PATH", "/bin:/usr/bin"), None);
        assert_eq!(one("WEIRD_BUT_FINE.x-y", "a=b"), None);
        assert!(one("", "x").is_some());
        assert!(one("A=B", "x").unwrap().contains("'='"));
        assert!(one("A\0B", "x").is_some());
        assert!(one("A", "x\0y").unwrap().contains("NUL"));
    }
}
