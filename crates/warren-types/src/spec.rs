//! What a sandbox is made of: the specification a backend builds it from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kernel-enforced limits. `None` means the host's own limit (in a request: the
/// daemon's default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
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
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// A veth to a host bridge; outbound traffic is masqueraded. The host's own loopback
    /// services and private addresses of the host stay unreachable.
    Nat,
}

/// A host port on 127.0.0.1 forwarded to a port inside the sandbox.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMap {
    pub host: u16,
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
    /// The base environment of every process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
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
