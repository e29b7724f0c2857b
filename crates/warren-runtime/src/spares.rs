//! Cgroups made ahead for a daemon's next creates.
//!
//! On cgroup v1 a sandbox's cgroup is a directory in each of five hierarchies, and its
//! limits are four writes, two of which make the kernel check the bandwidth of every CPU
//! cgroup on the host: 0.2 ms of a create on an idle host, 0.45 ms beside a thousand
//! running sandboxes, more when another sandbox's removal holds the kernel's cgroup lock.
//! A daemon keeps a few spare cgroups, made with the limits its creates ask for (other
//! limits once two creates running have asked for them), and a create whose limits are
//! the same has its helper rename one into place under the sandbox's name (v1 renames
//! within a parent; v2 cannot, and makes its one directory).
//!
//! A spare is named `warren-spare-<daemon pid>-<n>`: its daemon removes its own when it
//! stops, the next daemon those of a daemon that died, and `warren doctor` reports those
//! of a daemon no longer running.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};

use warren_sys::cgroup::{Cgroup, Hierarchy, Limits};

use crate::namespace::pid_alive;
use crate::PREFIX;

/// What follows [`PREFIX`] in a spare's name.
const SPARE: &str = "spare-";

/// How many spares are kept ready.
const KEEP: usize = 2;

/// A daemon's spare cgroups.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    state: Mutex<State>,
    /// Refills asked for and not yet done.
    pending: AtomicUsize,
    /// Spares are being cleared: none is made meanwhile.
    closed: AtomicBool,
    next: AtomicU64,
    /// The thread that makes and removes spares, started with the first refill: one
    /// thread for the daemon's life rather than one of the async runtime's blocking
    /// threads, started anew when none is idle.
    worker: Mutex<Option<mpsc::Sender<Job>>>,
}

/// A refill: the limits wanted, and the spare the create that asked was handed (to be
/// removed if its helper did not take it).
type Job = (Limits, Option<Taken>);

#[derive(Debug, Default)]
struct State {
    /// The limits the ready spares were made with.
    limits: Option<Limits>,
    ready: Vec<String>,
    /// Other limits the last create asked for: the spares follow them when the next
    /// create asks for them again, not before (creates of ever-changing limits would
    /// have every spare made only to be removed).
    asked: Option<Limits>,
}

impl State {
    /// Whether spares with `limits` are to be made now, and the names of those made with
    /// other limits, to be removed.
    fn follow(&mut self, limits: Limits) -> Option<Vec<String>> {
        if self.limits == Some(limits) || self.limits.is_none() {
            self.limits = Some(limits);
            self.asked = None;
            return Some(Vec::new());
        }
        if self.asked != Some(limits) {
            self.asked = Some(limits);
            return None;
        }
        self.limits = Some(limits);
        self.asked = None;
        Some(std::mem::take(&mut self.ready))
    }
}

impl Spares {
    /// A ready spare made with `limits`, now the caller's.
    pub(crate) fn take(&self, hierarchy: &Hierarchy, limits: &Limits) -> Option<Taken> {
        let name = self.take_name(limits)?;
        Some(Taken {
            cgroup: hierarchy.cgroup(&name),
            name,
        })
    }

    fn take_name(&self, limits: &Limits) -> Option<String> {
        let mut st = self.state.lock().ok()?;
        if st.limits.as_ref() != Some(limits) {
            return None;
        }
        st.ready.pop()
    }

    /// Off the caller's path: removes `used` unless its create renamed it, and makes
    /// spares with `limits` until [`KEEP`] are ready (those made with other limits are
    /// removed). Nothing on cgroup v2.
    pub(crate) fn refill(
        self: &Arc<Self>,
        hierarchy: &Hierarchy,
        limits: Limits,
        used: Option<Taken>,
    ) {
        if hierarchy.is_v2() {
            return;
        }
        let Ok(mut worker) = self.worker.lock() else {
            return;
        };
        if worker.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let spares = Arc::downgrade(self);
            let hierarchy = hierarchy.clone();
            let started = std::thread::Builder::new()
                .name("cgroup-spares".into())
                .spawn(move || {
                    for (limits, used) in rx {
                        drop(used);
                        let Some(spares) = spares.upgrade() else {
                            return;
                        };
                        spares.fill(&hierarchy, limits);
                        spares.pending.fetch_sub(1, SeqCst);
                    }
                });
            if started.is_err() {
                return;
            }
            *worker = Some(tx);
        }
        if let Some(tx) = worker.as_ref() {
            self.pending.fetch_add(1, SeqCst);
            if tx.send((limits, used)).is_err() {
                self.pending.fetch_sub(1, SeqCst);
            }
        }
    }

    fn fill(&self, hierarchy: &Hierarchy, limits: Limits) {
        let stale = match self.state.lock() {
            Ok(mut st) => st.follow(limits),
            Err(_) => None,
        };
        let Some(stale) = stale else {
            return;
        };
        for name in stale {
            let _ = hierarchy.cgroup(&name).remove();
        }
        loop {
            {
                let Ok(st) = self.state.lock() else {
                    return;
                };
                let done = st.limits != Some(limits) || st.ready.len() >= KEEP;
                if done || self.closed.load(SeqCst) {
                    return;
                }
            }
            let name = spare_name(std::process::id(), self.next.fetch_add(1, SeqCst));
            let cgroup = hierarchy.cgroup(&name);
            if cgroup.create(&limits).is_err() {
                return;
            }
            let Ok(mut st) = self.state.lock() else {
                let _ = cgroup.remove();
                return;
            };
            match st.limits == Some(limits) && !self.closed.load(SeqCst) {
                true => st.ready.push(name),
                false => {
                    drop(st);
                    let _ = cgroup.remove();
                }
            }
        }
    }

    /// Removes every ready spare, once the refills asked for are done (the daemon stops,
    /// or waits for its host objects to settle); the next create's refill makes more.
    pub(crate) async fn clear(&self, hierarchy: &Hierarchy) {
        self.closed.store(true, SeqCst);
        for _ in 0..100 {
            if self.pending.load(SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let ready = self
            .state
            .lock()
            .map(|mut st| std::mem::take(&mut st.ready))
            .unwrap_or_default();
        for name in ready {
            let _ = hierarchy.cgroup(&name).remove();
        }
        self.closed.store(false, SeqCst);
    }
}

/// A spare handed to a create: removed when dropped if it is still there under its own
/// name (its helper made a cgroup afresh, or failed before it got that far). A create
/// abandoned while its helper runs drops it too: a helper renaming it meanwhile finds a
/// directory gone, removes what it renamed and makes its own (see
/// [`Cgroup::rename_from`]); either way nothing is left.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) name: String,
    cgroup: Cgroup,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.cgroup.exists() {
            let _ = self.cgroup.remove();
        }
    }
}

fn spare_name(daemon: u32, n: u64) -> String {
    format!("{PREFIX}{SPARE}{daemon}-{n}")
}

/// The pid of the daemon that made spare `name` (a cgroup's name without [`PREFIX`]),
/// or `None` when it is not a spare's.
pub fn owner(name: &str) -> Option<i32> {
    let (pid, n) = name.strip_prefix(SPARE)?.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the spares of daemons no longer running (a daemon killed before it could).
pub fn clear_dead(hierarchy: &Hierarchy) {
    for name in hierarchy.list(&format!("{PREFIX}{SPARE}")) {
        let pid = owner(name.trim_start_matches(PREFIX));
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = hierarchy.cgroup(&name).remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spares_name_says_its_daemon() {
        let name = spare_name(4242, 7);
        assert_eq!(name, "warren-spare-4242-7");
        assert_eq!(owner(name.trim_start_matches(PREFIX)), Some(4242));
        // A sandbox's id is never taken for a spare's.
        assert_eq!(owner("0123456789abcdef"), None);
        assert_eq!(owner("spare-x-1"), None);
        assert_eq!(owner("spare-12"), None);
    }

    #[test]
    fn a_spare_is_taken_only_for_the_limits_it_was_made_with() {
        let spares = Spares::default();
        let limits = Limits {
            memory: Some(1 << 30),
            cpu_millis: Some(1000),
            pids: Some(1024),
        };
        {
            let mut st = spares.state.lock().unwrap();
            st.limits = Some(limits);
            st.ready = vec!["warren-spare-1-0".into()];
        }
        let other = Limits {
            pids: Some(64),
            ..limits
        };
        assert_eq!(spares.take_name(&other), None);
        assert_eq!(
            spares.take_name(&limits).as_deref(),
            Some("warren-spare-1-0")
        );
        assert_eq!(spares.take_name(&limits), None);
        assert!(pid_alive(std::process::id() as i32));
    }

    #[test]
    fn the_spares_follow_other_limits_only_when_asked_for_twice_running() {
        let a = Limits {
            memory: Some(1 << 30),
            ..Limits::default()
        };
        let b = Limits {
            memory: Some(1 << 28),
            ..Limits::default()
        };
        let c = Limits {
            pids: Some(64),
            ..Limits::default()
        };
        let mut st = State::default();
        assert_eq!(st.follow(a), Some(vec![]));
        st.ready = vec!["warren-spare-1-0".into()];
        // Ever-changing limits: the spares stay as they are.
        assert_eq!(st.follow(b), None);
        assert_eq!(st.follow(c), None);
        assert_eq!(st.follow(b), None);
        assert_eq!(st.limits, Some(a));
        // The first limits again: kept, and what was asked in between forgotten.
        assert_eq!(st.follow(a), Some(vec![]));
        assert_eq!(st.follow(b), None);
        // Asked for twice running: the spares follow, those of before to be removed.
        assert_eq!(st.follow(b), Some(vec!["warren-spare-1-0".to_string()]));
        assert_eq!(st.limits, Some(b));
        assert!(st.ready.is_empty());
    }
}
