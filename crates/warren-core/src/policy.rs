//! What the daemon allows: defaults for the limits a request leaves out, maxima no
//! request may pass, per-tenant quotas, and the host ports tenants may publish on.
//!
//! Every request is checked here, in the engine, before anything is recorded: a bad one
//! leaves no row, no event and nothing on the host. The operator (the host's root on the
//! unix socket, or the holder of an operator key) is held to the same limits (a daemon
//! sandbox is never unlimited unless the operator configures it so) but to no quota, and
//! may publish on any host port.

use std::collections::BTreeMap;

use serde::Deserialize;
use warren_types::size::deserialize_size;
use warren_types::spec::{PortMap, Resources};

use crate::{Caller, CoreError, Result};

/// The smallest memory limit a program can start in.
pub const MIN_MEMORY: u64 = 8 << 20;
/// The smallest disk: an ext4 image smaller than this has no room for its own journal.
pub const MIN_DISK: u64 = 16 << 20;
/// The smallest CPU share the kernel's bandwidth control takes (1 ms per 100 ms period).
pub const MIN_CPU_MILLIS: u32 = 10;
/// Most tasks the kernel allows one cgroup at all.
pub const MAX_PIDS: u32 = 4 << 20;

/// Limits in a configuration file: sizes as bytes or "512M", CPUs as cores. In
/// `[limits.defaults]` and `[limits.maxima]`, 0 means none: no limit unless a request asks
/// for one, or no maximum.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default, deserialize_with = "deserialize_size")]
    pub memory: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
    #[serde(default, deserialize_with = "deserialize_size")]
    pub disk: Option<u64>,
    /// Size of an owner's home volume when it is first made.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub home: Option<u64>,
}

/// Per-tenant quotas in a configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Sandboxes not terminated (template builds count while they run).
    #[serde(default)]
    pub sandboxes: Option<u32>,
    /// The memory limits of the tenant's sandboxes, added up.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub memory: Option<u64>,
    /// The disk limits and home volume sizes of the tenant's sandboxes, added up.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub disk: Option<u64>,
}

/// The limits half of a `warren serve --config` file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub defaults: LimitsConfig,
    #[serde(default)]
    pub maxima: LimitsConfig,
    #[serde(default)]
    pub quotas: QuotasConfig,
    /// Host ports tenants may publish on, e.g. "20000-29999".
    #[serde(default)]
    pub publish_ports: Option<String>,
    /// Longest a template build's step may run, in seconds.
    #[serde(default)]
    pub build_step_secs: Option<u64>,
}

/// The limits every sandbox is held to.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// What a request that names no limit gets.
    pub defaults: Resources,
    /// What no request may pass.
    pub maxima: Resources,
    /// Size of an owner's home volume when it is first made.
    pub home_size: u64,
    /// Largest home volume a request may ask for.
    pub max_home_size: u64,
    pub quotas: Quotas,
    /// Host ports a tenant may publish on (the operator may use any).
    pub publish_ports: std::ops::RangeInclusive<u16>,
    /// Longest a template build's step may run.
    pub build_step_secs: u64,
}

/// Per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    pub sandboxes: Option<u32>,
    pub memory: Option<u64>,
    pub disk: Option<u64>,
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024)
}

impl Default for Policy {
    /// Out of the box: a sandbox gets 1 GiB of memory, one core, 1024 tasks, a 4 GiB
    /// disk and a 2 GiB home; nothing may ask for more than the host has; a tenant may
    /// keep 100 sandboxes, 64 GiB of memory limits and 1 TiB of disk.
    fn default() -> Self {
        let cores = warren_runtime::host_cores();
        Self {
            defaults: Resources {
                memory: Some((1 << 30u64).min(host_memory())),
                cpu_millis: Some(1000.min(cores * 1000)),
                pids: Some(1024),
                disk: Some(4 << 30),
            },
            maxima: Resources {
                memory: Some(host_memory()),
                cpu_millis: Some(cores * 1000),
                pids: Some(65_536),
                disk: Some(1 << 40),
            },
            home_size: 2 << 30,
            max_home_size: 1 << 40,
            quotas: Quotas {
                sandboxes: Some(100),
                memory: Some(64 << 30),
                disk: Some(1 << 40),
            },
            publish_ports: 20_000..=29_999,
            build_step_secs: 3600,
        }
    }
}

fn cpu_millis(cores: f64, key: &str) -> Result<u32> {
    if !(cores.is_finite() && cores > 0.0 && cores <= 1e6) {
        return Err(CoreError::Invalid(format!(
            "{key}: {cores} is not a number of cores; write e.g. 0.5 or 2"
        )));
    }
    Ok((cores * 1000.0).round().max(1.0) as u32)
}

impl Policy {
    /// The policy a configuration file describes, over the defaults. Errors name the key.
    pub fn from_config(c: &PolicyConfig) -> Result<Self> {
        let mut p = Self::default();
        let apply = |into: &mut Resources, home: &mut u64, l: &LimitsConfig, section: &str| {
            let some = |v: u64| (v > 0).then_some(v);
            if let Some(m) = l.memory {
                into.memory = some(m);
            }
            if let Some(c) = l.cpus {
                into.cpu_millis = if c == 0.0 {
                    None
                } else {
                    Some(cpu_millis(c, &format!("{section}.cpus"))?)
                };
            }
            if let Some(n) = l.pids {
                into.pids = (n > 0).then_some(n);
            }
            if let Some(d) = l.disk {
                into.disk = some(d);
            }
            if let Some(h) = l.home {
                *home = h;
            }
            Ok::<(), CoreError>(())
        };
        apply(&mut p.defaults, &mut p.home_size, &c.defaults, "defaults")?;
        apply(&mut p.maxima, &mut p.max_home_size, &c.maxima, "maxima")?;
        let q = &c.quotas;
        if q.sandboxes.is_some() {
            p.quotas.sandboxes = q.sandboxes;
        }
        if q.memory.is_some() {
            p.quotas.memory = q.memory;
        }
        if q.disk.is_some() {
            p.quotas.disk = q.disk;
        }
        if let Some(r) = &c.publish_ports {
            let bad = || {
                CoreError::Invalid(format!(
                    "publish_ports: {r:?} must be FIRST-LAST, e.g. \"20000-29999\", above 1023"
                ))
            };
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let (a, b): (u16, u16) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a < 1024 || a > b {
                return Err(bad());
            }
            p.publish_ports = a..=b;
        }
        if let Some(s) = c.build_step_secs {
            p.build_step_secs = s;
        }
        // The defaults must themselves be allowed.
        p.check_resources(&p.defaults.clone(), "defaults")?;
        if p.home_size > p.max_home_size || p.home_size < MIN_DISK {
            return Err(CoreError::Invalid(format!(
                "defaults.home: {} bytes must be between 16M and maxima.home",
                p.home_size
            )));
        }
        Ok(p)
    }

    /// Fills what `r` leaves out with the defaults.
    pub fn with_defaults(&self, r: &Resources) -> Resources {
        Resources {
            memory: r.memory.or(self.defaults.memory),
            cpu_millis: r.cpu_millis.or(self.defaults.cpu_millis),
            pids: r.pids.or(self.defaults.pids),
            disk: r.disk.or(self.defaults.disk),
        }
    }

    /// Refuses a limit below what works or above the maximum, each with its own message.
    pub fn check_resources(&self, r: &Resources, what: &str) -> Result<()> {
        let invalid = |m: String| Err(CoreError::Invalid(format!("{what}: {m}")));
        let mib = |b: u64| b >> 20;
        if let Some(m) = r.memory {
            if m < MIN_MEMORY {
                return invalid(format!(
                    "memory {m} bytes is below 8M, where no program can start"
                ));
            }
            if let Some(max) = self.maxima.memory.filter(|max| m > *max) {
                return invalid(format!(
                    "memory {} MiB is above the most this daemon allows, {} MiB",
                    mib(m),
                    mib(max)
                ));
            }
        }
        if let Some(c) = r.cpu_millis {
            if c < MIN_CPU_MILLIS {
                return invalid(format!(
                    "cpus {} is below 0.01 core, the least the kernel can give",
                    c as f64 / 1000.0
                ));
            }
            if let Some(max) = self.maxima.cpu_millis.filter(|max| c > *max) {
                return invalid(format!(
                    "cpus {} is above the most this daemon allows, {}",
                    c as f64 / 1000.0,
                    max as f64 / 1000.0
                ));
            }
        }
        if let Some(n) = r.pids {
            if n == 0 {
                return invalid("pids 0 would let no process start; give at least 1".into());
            }
            let max = self.maxima.pids.unwrap_or(MAX_PIDS).min(MAX_PIDS);
            if n > max {
                return invalid(format!(
                    "pids {n} is above the most this daemon allows, {max}"
                ));
            }
        }
        if let Some(d) = r.disk {
            if d < MIN_DISK {
                return invalid(format!("disk {d} bytes is below 16M; give at least 16M"));
            }
            if let Some(max) = self.maxima.disk.filter(|max| d > *max) {
                return invalid(format!(
                    "disk {} MiB is above the most this daemon allows, {} MiB",
                    mib(d),
                    mib(max)
                ));
            }
        }
        Ok(())
    }

    /// Checks the home volume size a request asks for.
    pub fn check_home(&self, size: u64) -> Result<()> {
        if size < MIN_DISK || size > self.max_home_size {
            return Err(CoreError::Invalid(format!(
                "home_size {} MiB must be between 16 MiB and {} MiB",
                size >> 20,
                self.max_home_size >> 20
            )));
        }
        Ok(())
    }

    /// Checks published ports: distinct, and for a tenant within the published range.
    /// A host port of 0 is given the first free port of the range.
    pub fn place_ports(&self, who: &Caller, publish: &[PortMap]) -> Result<Vec<PortMap>> {
        let mut out: Vec<PortMap> = Vec::with_capacity(publish.len());
        for p in publish {
            if p.sandbox == 0 {
                return Err(CoreError::Invalid(
                    "a published port's sandbox side must be 1-65535".into(),
                ));
            }
            let host = if p.host == 0 {
                self.free_port(&out)?
            } else {
                if !who.operator && !self.publish_ports.contains(&p.host) {
                    return Err(CoreError::Invalid(format!(
                        "host port {} is outside the ports this daemon lets tenants publish \
                         on ({}-{}); pick one of those, or 0 to be given one",
                        p.host,
                        self.publish_ports.start(),
                        self.publish_ports.end()
                    )));
                }
                if out.iter().any(|q| q.host == p.host) {
                    return Err(CoreError::Invalid(format!(
                        "host port {} is published twice",
                        p.host
                    )));
                }
                if let Err(e) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, p.host))
                {
                    return Err(CoreError::Invalid(format!(
                        "host port {} cannot be published ({e}); pick another, or 0",
                        p.host
                    )));
                }
                p.host
            };
            out.push(PortMap {
                host,
                sandbox: p.sandbox,
            });
        }
        Ok(out)
    }

    fn free_port(&self, taken: &[PortMap]) -> Result<u16> {
        self.publish_ports
            .clone()
            .find(|port| {
                !taken.iter().any(|t| t.host == *port)
                    && std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, *port)).is_ok()
            })
            .ok_or_else(|| {
                CoreError::Quota(format!(
                    "no free host port left in {}-{}",
                    self.publish_ports.start(),
                    self.publish_ports.end()
                ))
            })
    }
}

/// What a tenant holds now, against its quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub sandboxes: u32,
    pub memory: u64,
    pub disk: u64,
}

impl Quotas {
    /// Refuses `adding` when it would take `used` past a quota.
    pub fn check(&self, used: &Usage, adding: &Usage) -> Result<()> {
        let over = |what: &str, used: u64, add: u64, max: u64, unit: &str| {
            CoreError::Quota(format!(
                "the tenant's {what} quota is {max}{unit}; it holds {used}{unit} and this \
                 needs {add}{unit} more: remove sandboxes it no longer needs, or ask the \
                 operator for more"
            ))
        };
        if let Some(max) = self.sandboxes {
            if used.sandboxes + adding.sandboxes > max {
                return Err(over(
                    "sandbox",
                    used.sandboxes.into(),
                    adding.sandboxes.into(),
                    max.into(),
                    "",
                ));
            }
        }
        if let Some(max) = self.memory {
            if used.memory.saturating_add(adding.memory) > max {
                return Err(over(
                    "memory",
                    used.memory >> 20,
                    adding.memory >> 20,
                    max >> 20,
                    " MiB",
                ));
            }
        }
        if let Some(max) = self.disk {
            if used.disk.saturating_add(adding.disk) > max {
                return Err(over(
                    "disk",
                    used.disk >> 20,
                    adding.disk >> 20,
                    max >> 20,
                    " MiB",
                ));
            }
        }
        Ok(())
    }
}

/// Labels and metadata a request may carry: a tenant's strings end up in the store and
/// in every listing.
pub fn check_tags(what: &str, m: &BTreeMap<String, String>) -> Result<()> {
    const MAX_PAIRS: usize = 64;
    const MAX_LEN: usize = 1024;
    if m.len() > MAX_PAIRS {
        return Err(CoreError::Invalid(format!(
            "{what}: at most {MAX_PAIRS} entries"
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 256 || v.len() > MAX_LEN {
            return Err(CoreError::Invalid(format!(
                "{what}: keys are 1-256 bytes and values at most {MAX_LEN}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_its_own_message() {
        let p = Policy::default();
        let msg = |r: Resources| p.check_resources(&r, "x").unwrap_err().to_string();
        assert!(msg(Resources {
            cpu_millis: Some(0),
            ..Default::default()
        })
        .contains("cpus"));
        assert!(msg(Resources {
            pids: Some(0),
            ..Default::default()
        })
        .contains("pids 0"));
        assert!(msg(Resources {
            disk: Some(u64::MAX),
            ..Default::default()
        })
        .contains("disk"));
        assert!(msg(Resources {
            memory: Some(1),
            ..Default::default()
        })
        .contains("memory"));
    }

    #[test]
    fn defaults_fill_gaps_only() {
        let p = Policy::default();
        let r = p.with_defaults(&Resources {
            memory: Some(64 << 20),
            ..Default::default()
        });
        assert_eq!(r.memory, Some(64 << 20));
        assert_eq!(r.pids, Some(1024));
        assert!(r.disk.is_some() && r.cpu_millis.is_some());
    }

    #[test]
    fn a_configuration_names_its_bad_key() {
        let bad = PolicyConfig {
            defaults: LimitsConfig {
                cpus: Some(-1.0),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(Policy::from_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("defaults.cpus"));
        let range = PolicyConfig {
            publish_ports: Some("80-90".into()),
            ..Default::default()
        };
        assert!(Policy::from_config(&range)
            .unwrap_err()
            .to_string()
            .contains("publish_ports"));
    }

    #[test]
    fn quotas_refuse_what_would_pass_them() {
        let q = Quotas {
            sandboxes: Some(2),
            memory: Some(1 << 30),
            disk: None,
        };
        let used = Usage {
            sandboxes: 1,
            memory: 512 << 20,
            disk: 0,
        };
        let one = |memory| Usage {
            sandboxes: 1,
            memory,
            disk: 0,
        };
        assert!(q.check(&used, &one(256 << 20)).is_ok());
        assert!(q.check(&used, &one(768 << 20)).is_err());
        let two = Usage {
            sandboxes: 2,
            ..Default::default()
        };
        assert!(q.check(&used, &two).is_err());
    }
}
