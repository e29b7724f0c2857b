//! Finding what a sandbox left behind: the check behind `warren doctor`.
//!
//! A sandbox's mounts live in its own mount namespaces and its veth dies with its network
//! namespace, so in a healthy system the only host objects are those of live sandboxes.
//! Anything else with Warren's names is a leak: a cgroup, a run directory, a host link or
//! an address lease whose sandbox has no live helper, a mount in the host's namespace, a
//! helper or agent process whose sandbox is gone, or a sandbox's egress rules without its
//! link (a sandbox being made has its rules a moment before its link).

use std::fs;
use std::path::{Path, PathBuf};

use crate::namespace::helper_alive;
use crate::network::{link_helper, link_name, LINK_PREFIX};
use crate::{NamespaceBackend, PREFIX};

/// One thing left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub kind: &'static str,
    pub what: String,
}

/// Everything of Warren's on this host that no live sandbox owns.
pub fn leftovers(backend: &NamespaceBackend) -> Vec<Leftover> {
    let paths = backend.paths();
    let mut out = Vec::new();
    let live = |id: &str| helper_alive(&paths.sandbox_run(id));

    for name in backend.hierarchy().list(PREFIX) {
        let id = name.trim_start_matches(PREFIX);
        // Made ahead by a daemon (see crate::spares): its own while it runs.
        if crate::spares::owner(id).is_some_and(crate::namespace::pid_alive) {
            continue;
        }
        // A sandbox kept under other directories (another daemon, another test root) is
        // alive while its agent's parent, the helper, is: only a cgroup with no live
        // helper behind it is left over.
        if !live(id) && !owned_by_live_helper(&backend.cgroup(id).pids()) {
            for p in backend.cgroup(id).paths() {
                if p.exists() {
                    out.push(Leftover {
                        kind: "cgroup",
                        what: p.display().to_string(),
                    });
                }
            }
        }
    }
    // runsc makes a gvisor sandbox's cgroup in every hierarchy, not only those Warren
    // uses itself.
    let known: Vec<PathBuf> = out.iter().map(|l| PathBuf::from(&l.what)).collect();
    for (name, path) in crate::bundle::cgroups_everywhere(PREFIX) {
        let id = name.trim_start_matches(PREFIX);
        let ours = backend.cgroup(id).paths().any(|p| p == path);
        let busy =
            fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty());
        if !ours && !known.contains(&path) && !live(id) && !busy {
            out.push(Leftover {
                kind: "cgroup",
                what: path.display().to_string(),
            });
        }
    }
    let runs = paths.run.join("sandboxes");
    for e in fs::read_dir(&runs).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if !live(&id) {
            out.push(Leftover {
                kind: "run directory",
                what: e.path().display().to_string(),
            });
        }
    }
    for e in fs::read_dir(paths.run.join("net"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = fs::read_to_string(e.path()).unwrap_or_default();
        if !live(id.trim()) {
            out.push(Leftover {
                kind: "address lease",
                what: e.path().display().to_string(),
            });
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let run_s = paths.run.display().to_string();
    let data_s = paths.data.display().to_string();
    for line in mountinfo.lines() {
        let mnt = line.split(' ').nth(4).unwrap_or("");
        // A daemon's tmpfs for the run directories (any Warren's) is left over only when
        // it is this one's, holds none and no daemon serves on it.
        if let Some(at) = crate::rundir::run_mount(line) {
            let empty = fs::read_dir(&runs).is_ok_and(|mut d| d.next().is_none());
            if runs == Path::new(&at) && empty && !crate::rundir::served(paths) {
                out.push(Leftover {
                    kind: "mount",
                    what: at,
                });
            }
            continue;
        }
        if mnt.starts_with(&run_s) || mnt.starts_with(&data_s) || mnt.contains("warren") {
            out.push(Leftover {
                kind: "mount",
                what: mnt.to_string(),
            });
        }
    }
    for e in fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(LINK_PREFIX) {
            continue;
        }
        // Its helper (a gvisor sandbox's Sentry), named in its alias, is alive: a sandbox
        // of some Warren of this host (any run directory) still uses it.
        if link_helper(&name).is_some_and(|p| is_warren(p) || is_runsc(p)) {
            continue;
        }
        let owner = fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|r| r.file_name().to_string_lossy().into_owned())
            .find(|id| link_name(id) == name);
        if owner.as_deref().map(|id| !live(id)).unwrap_or(true) {
            out.push(Leftover {
                kind: "host link",
                what: name,
            });
        }
    }
    for link in crate::network::leftover_egress() {
        out.push(Leftover {
            kind: "egress rules",
            what: format!("the nftables rules of {link}, whose link is gone"),
        });
    }
    out.extend(orphan_processes(&runs));
    out
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid` is a live process of some Warren of this host: one whose second argument
/// is a helper's, a zygote's or an OCI sandbox's keeper's (whatever its binary is called:
/// an operator may run a copy named otherwise, and its live sandboxes are not leftovers),
/// or whose name is `warren`.
fn is_warren(pid: i32) -> bool {
    let state_ok = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        == Some(false);
    if !state_ok {
        return false;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let role = cmdline.split(|b| *b == 0).nth(1);
    // Known by its role (a helper, the zygote, an OCI sandbox's keeper), whatever the
    // binary is named; else by the name of the binary.
    let roles = [
        crate::helper::ARG,
        crate::zygote::ARG,
        crate::bundle::OCI_ARG,
    ];
    role.is_some_and(|a| roles.iter().any(|r| a == r.as_bytes()))
        || fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "warren")
}

/// Whether the processes of a cgroup hang off a live helper: the one process whose
/// parent is outside the cgroup is the agent, and its parent must be a warren process.
fn owned_by_live_helper(pids: &[i32]) -> bool {
    pids.iter()
        .filter_map(|p| parent_of(*p))
        .find(|pp| !pids.contains(pp))
        .is_some_and(is_warren)
        || pids.iter().any(|p| is_runsc(*p))
}

/// A gvisor sandbox's own processes (its Sentry, its Gofer): a live sandbox of some
/// Warren of this host, whichever run directory it has. Known by their name or their
/// first argument: the Sentry re-executes runsc (`/proc/self/exe`, so its name is `exe`)
/// as `runsc-sandbox`.
fn is_runsc(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("runsc"))
        || fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|a| a.starts_with(b"runsc"))
}

/// Helpers (`warren __init`) whose run directory is gone.
fn orphan_processes(runs: &std::path::Path) -> Vec<Leftover> {
    let mut known: Vec<i32> = Vec::new();
    for e in fs::read_dir(runs).into_iter().flatten().flatten() {
        if let Ok(s) = fs::read_to_string(e.path().join("helper.pid")) {
            if let Ok(pid) = s.trim().parse() {
                known.push(pid);
            }
        }
    }
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(PathBuf::from("/proc").join(pid.to_string()).join("cmdline"))
            .unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        // A helper has its agent as a child from its first milliseconds until it exits,
        // and an agent (a clone of its helper, so named alike) has its helper as parent.
        // A process of that name with neither, for a while, belongs to no sandbox.
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if args.get(1) == Some(&crate::helper::ARG.as_bytes())
            && !known.contains(&pid)
            && children.trim().is_empty()
            && !parent_of(pid).is_some_and(is_warren)
            && age_secs(pid).is_some_and(|a| a > 10.0)
        {
            out.push(Leftover {
                kind: "process",
                what: format!("warren process {pid} with no sandbox"),
            });
        }
    }
    out
}

/// How long process `pid` has existed, in seconds.
fn age_secs(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start_ticks: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(uptime - start_ticks / 100.0)
}
