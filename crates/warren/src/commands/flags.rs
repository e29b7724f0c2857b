//! The sandbox flags `run` and `create` share: limits, network and published ports.
//!
//! The two verbs differ in where the sandbox is made (the CLI itself or the daemon) but
//! not in what it is made of, so they take these flags the same way.

use clap::{Args, ValueEnum};
use warren_types::api::{Profile, Requirements, ResourceRequest};
use warren_types::spec::{Isolation, NetworkMode, PortMap, Resources};

use warren_types::size::parse_size;

use crate::client::Error;
use crate::parse::parse_publish;

#[derive(Debug, Args)]
pub struct SandboxFlags {
    /// Memory limit, e.g. 256M or 2G.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// CPU limit in cores, e.g. 0.5 (at least 0.01).
    #[arg(long, allow_negative_numbers = true)]
    cpus: Option<f64>,
    /// Most processes and threads at once (at least 1).
    #[arg(long, allow_negative_numbers = true)]
    pids: Option<i64>,
    /// Size of the writable layer, e.g. 1G.
    #[arg(long, value_parser = parse_size)]
    disk: Option<u64>,
    /// Network: none (loopback only), nat (outbound through the host), or host (the
    /// host's own; process isolation only).
    #[arg(long, value_enum, default_value_t = Network::None)]
    network: Network,
    /// Isolation backend: namespace, gvisor, runc, crun or process (`warren backends`
    /// lists what this host offers) [default: the daemon's]
    #[arg(long, value_name = "BACKEND", env = "WARREN_ISOLATION")]
    isolation: Option<Isolation>,
    /// Without --isolation, let the daemon pick the first backend that offers this:
    /// memory-snapshots, strong-isolation or pause. Repeat for more (`warren backends`
    /// shows what each offers).
    #[arg(long = "require", value_name = "CAPABILITY", value_enum)]
    require: Vec<Need>,
    /// Require a backend that holds a memory limit, and at least this much memory under
    /// it, e.g. 1G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    require_memory: Option<u64>,
    /// A named set of requirements: untrusted (strong isolation) or snapshots (memory
    /// snapshots).
    #[arg(long, value_enum)]
    profile: Option<ProfileArg>,
    /// Forward 127.0.0.1:HOSTPORT on the host to PORT in the sandbox; a daemon's sandbox
    /// may leave HOSTPORT out to be given a free one (`warren port` shows it).
    #[arg(short, long = "publish", value_name = "[HOSTPORT:]PORT", value_parser = parse_publish)]
    publish: Vec<PortMap>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Network {
    None,
    Nat,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Need {
    MemorySnapshots,
    StrongIsolation,
    Pause,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Untrusted,
    Snapshots,
}

/// The flags as the sandbox's specification takes them.
#[derive(Debug)]
pub struct SandboxSettings {
    pub resources: Resources,
    pub network: NetworkMode,
    pub publish: Vec<PortMap>,
    pub isolation: Option<Isolation>,
    /// What the backend must offer, when a flag asked for anything.
    pub requires: Option<Requirements>,
}

impl SandboxFlags {
    /// The flags checked, each with its own message, before anything is asked of a
    /// daemon or the kernel; a bad one is a usage error (exit 2).
    pub fn settings(&self) -> Result<SandboxSettings, Error> {
        let bad = |m: String| Err(Error::invalid(m));
        let cpu_millis = match self.cpus {
            Some(c) if !(c.is_finite() && c > 0.0) => {
                return bad(format!(
                    "--cpus {c}: give a positive number of cores, e.g. 0.5"
                ));
            }
            Some(c) if c < 0.01 => {
                return bad(format!(
                    "--cpus {c}: below 0.01 core, the least the kernel can give"
                ));
            }
            Some(c) if c > 4096.0 => {
                return bad(format!("--cpus {c}: more cores than any host has"));
            }
            Some(c) => Some((c * 1000.0).round() as u32),
            None => None,
        };
        let pids = match self.pids {
            Some(n) if n < 1 => {
                return bad(format!(
                    "--pids {n}: no process could start; give at least 1"
                ));
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => return bad(format!("--pids {n}: at most {}", u32::MAX)),
            },
            None => None,
        };
        if let Some(m) = self.memory.filter(|m| *m < 8 << 20) {
            return bad(format!(
                "--memory {m} bytes: below 8M, where no program can start"
            ));
        }
        Ok(SandboxSettings {
            resources: Resources {
                memory: self.memory,
                cpu_millis,
                pids,
                disk: self.disk,
            },
            network: match self.network {
                Network::None => NetworkMode::None,
                Network::Nat => NetworkMode::Nat,
                Network::Host => NetworkMode::Host,
            },
            publish: self.publish.clone(),
            isolation: self.isolation,
            requires: self.requirements(),
        })
    }

    fn requirements(&self) -> Option<Requirements> {
        if self.require.is_empty() && self.require_memory.is_none() && self.profile.is_none() {
            return None;
        }
        Some(Requirements {
            memory_snapshots: self.require.contains(&Need::MemorySnapshots),
            strong_isolation: self.require.contains(&Need::StrongIsolation),
            pause: self.require.contains(&Need::Pause),
            memory: self.require_memory,
            profile: self.profile.map(|p| match p {
                ProfileArg::Untrusted => Profile::Untrusted,
                ProfileArg::Snapshots => Profile::Snapshots,
            }),
        })
    }
}

impl SandboxSettings {
    /// The limits as the daemon's API asks for them.
    pub fn resource_request(&self) -> ResourceRequest {
        let Resources {
            memory,
            cpu_millis,
            pids,
            disk,
        } = self.resources;
        ResourceRequest {
            memory,
            cpu_millis,
            pids,
            disk,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: SandboxFlags,
    }

    fn settings(args: &[&str]) -> anyhow::Result<SandboxSettings> {
        let cli = Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied()))?;
        Ok(cli.sandbox.settings()?)
    }

    #[test]
    fn cpus_become_millicores() {
        let s = settings(&["--cpus", "0.5"]).unwrap();
        assert_eq!(s.resources.cpu_millis, Some(500));
        let s = settings(&["--cpus", "0.01"]).unwrap();
        assert_eq!(s.resources.cpu_millis, Some(10));
    }

    #[test]
    fn every_limit_is_checked_with_its_own_message() {
        let err = |args: &[&str]| settings(args).unwrap_err().to_string();
        for bad in ["0", "-1", "NaN", "inf"] {
            assert!(err(&["--cpus", bad])
                .starts_with(&format!("--cpus {}", bad.parse::<f64>().unwrap())));
        }
        assert!(err(&["--cpus", "0.0001"]).contains("below 0.01 core"));
        assert!(err(&["--pids", "0"]).starts_with("--pids 0"));
        assert!(err(&["--pids", "-3"]).starts_with("--pids -3"));
        assert!(err(&["--memory", "1K"]).starts_with("--memory 1024 bytes"));
        // Each is the caller's to change: a usage error.
        let cli = Cli::try_parse_from(["warren", "--cpus", "0"]).unwrap();
        assert_eq!(cli.sandbox.settings().unwrap_err().exit_code(), 2);
    }

    #[test]
    fn defaults_leave_the_host_limits() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.resources, Resources::default());
        assert_eq!(s.network, NetworkMode::None);
        assert!(s.publish.is_empty());
        assert_eq!(s.resource_request(), ResourceRequest::default());
        assert_eq!(s.requires, None);
    }

    #[test]
    fn requirements_reach_the_request() {
        let s = settings(&[
            "--require",
            "memory-snapshots",
            "--require",
            "pause",
            "--require-memory",
            "1G",
            "--profile",
            "untrusted",
        ])
        .unwrap();
        assert_eq!(
            s.requires,
            Some(Requirements {
                memory_snapshots: true,
                strong_isolation: false,
                pause: true,
                memory: Some(1 << 30),
                profile: Some(Profile::Untrusted),
            })
        );
        assert!(settings(&["--require", "gpu"]).is_err());
    }

    #[test]
    fn limits_reach_the_request() {
        let s = settings(&[
            "--memory",
            "64M",
            "--pids",
            "50",
            "--disk",
            "1G",
            "--network",
            "nat",
            "-p",
            "8080:80",
        ])
        .unwrap();
        assert_eq!(
            s.resource_request(),
            ResourceRequest {
                memory: Some(64 << 20),
                cpu_millis: None,
                pids: Some(50),
                disk: Some(1 << 30),
            }
        );
        assert_eq!(s.network, NetworkMode::Nat);
        assert_eq!(
            s.publish,
            [PortMap {
                host: 8080,
                sandbox: 80
            }]
        );
    }
}
