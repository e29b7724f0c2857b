//! Which backend serves a create: what a backend lacks for a request, and, for a request
//! that states its requirements but names no backend, the first one in a fixed order that
//! lacks nothing.
//!
//! Everything here is decided from the backends' [`BackendInfo`]s, before anything is
//! recorded: a request no backend can serve is refused without a row or an event.

use std::fmt;

use warren_types::api::{BackendInfo, CreateSandbox};
use warren_types::spec::{Isolation, NetworkMode};

/// The backends tried after the template's default and the daemon's, in this order.
/// Trust mode comes last, and only for a caller it is open to.
pub(crate) const ORDER: [Isolation; 5] = [
    Isolation::Namespace,
    Isolation::Gvisor,
    Isolation::Runc,
    Isolation::Crun,
    Isolation::Process,
];

/// The backends a request that names none is tried on, in order: its template's
/// default, the daemon's, then [`ORDER`], each once.
pub(crate) fn candidates(template: Option<Isolation>, daemon: Isolation) -> Vec<Isolation> {
    let mut out = Vec::with_capacity(ORDER.len());
    for kind in template.into_iter().chain([daemon]).chain(ORDER) {
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    out
}

/// One thing a backend lacks for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lack {
    /// It cannot make sandboxes here at all; why, as `GET /v1/backends` says.
    Unavailable(String),
    /// Trust mode, which the operator has not opened to the caller's tenant.
    NotOpen,
    Network(NetworkMode),
    Limit(&'static str),
    /// Ports published on this network.
    Publish(NetworkMode),
    StrongIsolation,
    MemorySnapshots,
    Pause,
}

impl Lack {
    /// The requirement it leaves unmet, as a request states it; none for a backend that
    /// is not there to ask.
    fn need(&self) -> Option<String> {
        Some(match self {
            Lack::Unavailable(_) | Lack::NotOpen => return None,
            Lack::Network(n) => format!("a `{}` network", n.as_str()),
            Lack::Limit(l) => format!("a {l} limit"),
            Lack::Publish(n) => format!("published ports on `{}`", n.as_str()),
            Lack::StrongIsolation => "strong isolation".into(),
            Lack::MemorySnapshots => "memory snapshots".into(),
            Lack::Pause => "a pause that keeps memory".into(),
        })
    }

    /// The refusal of a request that named backend `kind` itself.
    pub(crate) fn refusal(&self, kind: Isolation, info: &BackendInfo) -> String {
        match self {
            Lack::Network(n) => {
                let offered: Vec<&str> = info
                    .capabilities
                    .networks
                    .iter()
                    .map(|n| n.as_str())
                    .collect();
                format!(
                    "the {kind} backend offers no `{}` network; it offers {}",
                    n.as_str(),
                    offered.join(", ")
                )
            }
            Lack::Limit(limit) => format!(
                "the {kind} backend cannot enforce a {limit} limit here; leave it out or pick \
                 another isolation (`GET /v1/backends`)"
            ),
            Lack::Publish(n) => match kind {
                Isolation::Gvisor => format!(
                    "a gvisor sandbox on `{}` has no network the host can reach, so it \
                     publishes no ports: create it with `--network nat` to publish them",
                    n.as_str()
                ),
                _ => format!(
                    "the {kind} backend publishes no ports on `{}`; leave publish out or pick \
                     another isolation (`GET /v1/backends`)",
                    n.as_str()
                ),
            },
            other => format!(
                "the {kind} backend {other}; leave it out of `requires` or pick another \
                 isolation (`GET /v1/backends`)"
            ),
        }
    }
}

impl fmt::Display for Lack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lack::Unavailable(why) => write!(f, "is unavailable ({why})"),
            Lack::NotOpen => f.write_str("is trust mode, not open to this tenant"),
            Lack::Network(n) => write!(f, "offers no `{}` network", n.as_str()),
            Lack::Limit(l) => write!(f, "cannot enforce a {l} limit"),
            Lack::Publish(n) => write!(f, "publishes no ports on `{}`", n.as_str()),
            Lack::StrongIsolation => f.write_str("shares the host kernel (no strong isolation)"),
            Lack::MemorySnapshots => f.write_str("has no memory snapshots"),
            Lack::Pause => f.write_str("loses memory on pause"),
        }
    }
}

/// The network `req` gets on a backend offering `networks`: `none` is only the default,
/// so a backend without it (trust mode) gives its own first network instead.
pub(crate) fn network_on(networks: &[NetworkMode], asked: NetworkMode) -> NetworkMode {
    match networks.first() {
        Some(first) if asked == NetworkMode::None && !networks.contains(&asked) => *first,
        _ => asked,
    }
}

/// Everything the backend `info` describes lacks to serve `req`; empty when it can. Only
/// the limits `req` names count (defaults fill in only what a backend enforces).
pub(crate) fn lacks(info: &BackendInfo, req: &CreateSandbox) -> Vec<Lack> {
    if !info.available {
        return vec![Lack::Unavailable(info.reason.clone().unwrap_or_default())];
    }
    let caps = &info.capabilities;
    let mut out = Vec::new();
    let network = network_on(&caps.networks, req.network);
    if !caps.networks.contains(&network) {
        out.push(Lack::Network(network));
    } else if !req.publish.is_empty() && !caps.publish.contains(&network) {
        out.push(Lack::Publish(network));
    }
    let r = &req.resources;
    let needs = req.requires.clone().unwrap_or_default();
    let asked = [
        ("memory", r.memory.is_some() || needs.memory.is_some()),
        ("cpu", r.cpu_millis.is_some()),
        ("pids", r.pids.is_some()),
        ("disk", r.disk.is_some()),
    ];
    for (limit, set) in asked {
        if set && !caps.limits.iter().any(|l| l == limit) {
            out.push(Lack::Limit(limit));
        }
    }
    if needs.needs_strong_isolation() && !caps.strong_isolation {
        out.push(Lack::StrongIsolation);
    }
    if needs.needs_memory_snapshots() && !caps.memory_snapshots {
        out.push(Lack::MemorySnapshots);
    }
    if needs.pause && !caps.pause {
        out.push(Lack::Pause);
    }
    out
}

/// A backend tried for a request, as [`choose`] sees it.
pub(crate) struct Candidate {
    pub info: BackendInfo,
    /// Whether the caller may use it (trust mode is open per tenant).
    pub open: bool,
}

/// The first of `candidates` that lacks nothing for `req`, or why each fell short.
pub(crate) fn choose(
    candidates: &[Candidate],
    req: &CreateSandbox,
) -> Result<Isolation, NoBackend> {
    let mut skipped = Vec::with_capacity(candidates.len());
    for c in candidates {
        let lacks = if c.open {
            lacks(&c.info, req)
        } else {
            vec![Lack::NotOpen]
        };
        if lacks.is_empty() {
            return Ok(c.info.name);
        }
        skipped.push((c.info.name, lacks));
    }
    Err(NoBackend { skipped })
}

/// No backend of the host serves a request: what each tried one lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoBackend {
    pub skipped: Vec<(Isolation, Vec<Lack>)>,
}

impl fmt::Display for NoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What no backend that could be asked offers: the request's own problem, named
        // first. Failing that, only the combination is missing.
        let usable = || {
            self.skipped.iter().filter(|(_, l)| {
                !l.iter()
                    .any(|l| matches!(l, Lack::Unavailable(_) | Lack::NotOpen))
            })
        };
        let mut needs: Vec<String> = Vec::new();
        for (_, lacks) in &self.skipped {
            for need in lacks.iter().filter_map(Lack::need) {
                if !needs.contains(&need) {
                    needs.push(need);
                }
            }
        }
        let nowhere: Vec<&String> = needs
            .iter()
            .filter(|n| {
                usable().all(|(_, lacks)| lacks.iter().any(|l| l.need().as_ref() == Some(n)))
            })
            .collect();
        if nowhere.is_empty() {
            write!(f, "no backend here offers all this request needs together")?;
        } else {
            let nowhere: Vec<&str> = nowhere.iter().map(|n| n.as_str()).collect();
            write!(f, "no backend here offers {}", nowhere.join(" or "))?;
        }
        let each: Vec<String> = self
            .skipped
            .iter()
            .map(|(kind, lacks)| {
                let lacks: Vec<String> = lacks.iter().map(|l| l.to_string()).collect();
                format!("{kind} {}", lacks.join(" and "))
            })
            .collect();
        write!(
            f,
            " ({}); relax `requires` or the request (`GET /v1/backends` lists what each \
             offers)",
            each.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use warren_types::api::{Capabilities, Profile, Requirements};
    use warren_types::spec::PortMap;

    use super::*;

    fn info(kind: Isolation) -> BackendInfo {
        let limits = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        let both = vec![NetworkMode::None, NetworkMode::Nat];
        let capabilities = match kind {
            Isolation::Gvisor => Capabilities {
                strong_isolation: true,
                pause: true,
                memory_snapshots: true,
                networks: both,
                publish: vec![NetworkMode::Nat],
                limits: limits(&["memory", "cpu", "pids", "disk"]),
                ..Default::default()
            },
            Isolation::Process => Capabilities {
                pause: true,
                networks: vec![NetworkMode::Host],
                limits: limits(&["memory", "cpu", "pids"]),
                ..Default::default()
            },
            _ => Capabilities {
                pause: true,
                networks: both.clone(),
                publish: both,
                limits: limits(&["memory", "cpu", "pids", "disk"]),
                ..Default::default()
            },
        };
        BackendInfo {
            name: kind,
            available: true,
            reason: None,
            capabilities,
        }
    }

    fn all(open_process: bool) -> Vec<Candidate> {
        candidates(None, Isolation::Namespace)
            .into_iter()
            .map(|k| Candidate {
                info: info(k),
                open: k != Isolation::Process || open_process,
            })
            .collect()
    }

    fn requiring(r: Requirements) -> CreateSandbox {
        CreateSandbox {
            requires: Some(r),
            ..Default::default()
        }
    }

    #[test]
    fn the_template_and_the_daemon_come_first_then_the_fixed_order() {
        use Isolation::*;
        assert_eq!(
            candidates(None, Namespace),
            [Namespace, Gvisor, Runc, Crun, Process]
        );
        assert_eq!(
            candidates(Some(Crun), Gvisor),
            [Crun, Gvisor, Namespace, Runc, Process]
        );
        assert_eq!(
            candidates(Some(Runc), Runc),
            [Runc, Namespace, Gvisor, Crun, Process]
        );
    }

    #[test]
    fn the_first_backend_that_lacks_nothing_is_chosen() {
        let pick = |r| choose(&all(false), &requiring(r)).unwrap();
        assert_eq!(pick(Requirements::default()), Isolation::Namespace);
        let snapshots = Requirements {
            memory_snapshots: true,
            ..Default::default()
        };
        assert_eq!(pick(snapshots), Isolation::Gvisor);
        let strong = Requirements {
            strong_isolation: true,
            memory: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!(pick(strong), Isolation::Gvisor);
        let untrusted = Requirements {
            profile: Some(Profile::Untrusted),
            ..Default::default()
        };
        assert_eq!(pick(untrusted), Isolation::Gvisor);
        // The template's default goes first when it serves.
        let mut c = all(false);
        c.rotate_left(2);
        assert_eq!(
            choose(&c, &requiring(Requirements::default())).unwrap(),
            Isolation::Runc
        );
    }

    #[test]
    fn an_unavailable_backend_is_passed_over() {
        let mut c = all(false);
        c[1].info.available = false;
        c[1].info.reason = Some("no runsc".into());
        let req = requiring(Requirements {
            memory_snapshots: true,
            ..Default::default()
        });
        let err = choose(&c, &req).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("no backend here offers memory snapshots ("),
            "{msg}"
        );
        assert!(msg.contains("gvisor is unavailable (no runsc)"), "{msg}");
        assert!(msg.contains("process is trust mode, not open"), "{msg}");
    }

    #[test]
    fn ports_and_networks_count_as_requirements() {
        // gVisor cannot publish on `none`: a strong sandbox publishing there has nowhere.
        let req = CreateSandbox {
            publish: vec![PortMap {
                host: 8080,
                sandbox: 80,
            }],
            ..requiring(Requirements {
                strong_isolation: true,
                ..Default::default()
            })
        };
        let err = choose(&all(false), &req).unwrap_err();
        assert_eq!(
            err.skipped[1],
            (Isolation::Gvisor, vec![Lack::Publish(NetworkMode::None)])
        );
        assert!(
            err.to_string()
                .starts_with("no backend here offers all this request needs together"),
            "{err}"
        );
        // On `nat` it can.
        let req = CreateSandbox {
            network: NetworkMode::Nat,
            ..req
        };
        assert_eq!(choose(&all(false), &req).unwrap(), Isolation::Gvisor);
        // The host's network is trust mode's alone, for a tenant it is open to.
        let req = CreateSandbox {
            network: NetworkMode::Host,
            ..requiring(Requirements::default())
        };
        assert_eq!(choose(&all(true), &req).unwrap(), Isolation::Process);
        let err = choose(&all(false), &req).unwrap_err().to_string();
        assert!(
            err.starts_with("no backend here offers a `host` network ("),
            "{err}"
        );
        // Nor can trust mode enforce a disk limit.
        let req = CreateSandbox {
            resources: warren_types::spec::Resources {
                disk: Some(1 << 30),
                ..Default::default()
            },
            ..req
        };
        let err = choose(&all(true), &req).unwrap_err();
        assert_eq!(
            err.skipped.last().unwrap(),
            &(Isolation::Process, vec![Lack::Limit("disk")])
        );
    }

    #[test]
    fn a_named_backend_is_refused_with_what_it_lacks() {
        let ns = info(Isolation::Namespace);
        let refusal = |lack: Lack| lack.refusal(Isolation::Namespace, &ns);
        assert_eq!(
            refusal(Lack::Network(NetworkMode::Host)),
            "the namespace backend offers no `host` network; it offers none, nat"
        );
        assert_eq!(
            refusal(Lack::Limit("disk")),
            "the namespace backend cannot enforce a disk limit here; leave it out or pick \
             another isolation (`GET /v1/backends`)"
        );
        assert_eq!(
            refusal(Lack::MemorySnapshots),
            "the namespace backend has no memory snapshots; leave it out of `requires` or \
             pick another isolation (`GET /v1/backends`)"
        );
        let gvisor = info(Isolation::Gvisor);
        let req = CreateSandbox {
            publish: vec![PortMap {
                host: 8080,
                sandbox: 80,
            }],
            ..Default::default()
        };
        let lacks = lacks(&gvisor, &req);
        assert_eq!(lacks, [Lack::Publish(NetworkMode::None)]);
        assert!(lacks[0]
            .refusal(Isolation::Gvisor, &gvisor)
            .contains("--network nat"));
    }

    #[test]
    fn trust_mode_defaults_to_its_own_network() {
        let req = requiring(Requirements::default());
        assert!(lacks(&info(Isolation::Process), &req).is_empty());
        let req = CreateSandbox {
            publish: vec![PortMap {
                host: 8080,
                sandbox: 80,
            }],
            ..req
        };
        assert_eq!(
            lacks(&info(Isolation::Process), &req),
            [Lack::Publish(NetworkMode::Host)]
        );
    }
}
