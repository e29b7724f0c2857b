//! The engine's counters, and their Prometheus text exposition.
//!
//! What a caller sees is scoped like everything else: a tenant sees its own sandboxes
//! and sessions; the whole host (every tenant's sandbox ids, the create histogram, the
//! pools, the host's disk commitments) is the operator's alone. Sandbox ids are not
//! secrets, but they are the key to a sandbox's ports on the E2B surface, and listing
//! other tenants' would hand them out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warren_types::api::SandboxState;

use crate::{Caller, Manager};

/// Buckets of the create-latency histogram, in milliseconds.
const CREATE_BUCKETS_MS: [u64; 9] = [5, 10, 25, 50, 100, 250, 500, 1000, 5000];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) created: AtomicU64,
    pub(crate) terminated: AtomicU64,
    pub(crate) timeouts: [AtomicU64; 3],
    /// Create latency histogram: counts per bucket of [`CREATE_BUCKETS_MS`], plus +Inf.
    create_buckets: [AtomicU64; 10],
    create_sum_us: AtomicU64,
}

/// Writes the HELP and TYPE lines of a Prometheus metric.
fn describe(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics {
    pub(crate) fn observe_create(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let bucket = CREATE_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(CREATE_BUCKETS_MS.len());
        self.create_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.create_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn write_host(&self, out: &mut String) {
        describe(
            out,
            "warren_sandboxes_created_total",
            "counter",
            "Sandboxes created.",
        );
        let _ = writeln!(
            out,
            "warren_sandboxes_created_total {}",
            self.created.load(Ordering::Relaxed)
        );
        describe(
            out,
            "warren_sandboxes_terminated_total",
            "counter",
            "Sandboxes terminated.",
        );
        let _ = writeln!(
            out,
            "warren_sandboxes_terminated_total {}",
            self.terminated.load(Ordering::Relaxed)
        );
        describe(
            out,
            "warren_timeouts_total",
            "counter",
            "Timeouts applied, by action.",
        );
        for (i, a) in ["pause", "stop", "terminate"].iter().enumerate() {
            let _ = writeln!(
                out,
                "warren_timeouts_total{{action=\"{a}\"}} {}",
                self.timeouts[i].load(Ordering::Relaxed)
            );
        }
        describe(
            out,
            "warren_create_seconds",
            "histogram",
            "Time to create a sandbox.",
        );
        let mut cum = 0;
        for (i, b) in CREATE_BUCKETS_MS.iter().enumerate() {
            cum += self.create_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "warren_create_seconds_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / 1000.0
            );
        }
        cum += self.create_buckets[CREATE_BUCKETS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "warren_create_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "warren_create_seconds_sum {}",
            self.create_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "warren_create_seconds_count {cum}");
    }
}

impl Manager {
    /// Prometheus text exposition of what `who` may see: its tenant's sandboxes and
    /// sessions, or for the operator the whole host.
    pub fn metrics(&self, who: &Caller) -> String {
        let tenant = (!who.operator).then_some(who.tenant.as_str());
        let mut out = String::new();
        let records: Vec<_> = self
            .store()
            .list_live(tenant)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| who.only_sandbox.as_ref().is_none_or(|o| *o == r.id))
            .collect();
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for s in [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Stopping,
            SandboxState::Stopped,
        ] {
            by_state.insert(s.as_str(), 0);
        }
        for r in &records {
            *by_state.entry(r.state.as_str()).or_default() += 1;
        }
        describe(&mut out, "warren_sandboxes", "gauge", "Sandboxes by state.");
        for (s, n) in &by_state {
            let _ = writeln!(out, "warren_sandboxes{{state=\"{s}\"}} {n}");
        }
        if who.operator {
            self.metrics.write_host(&mut out);
            self.write_pools(&mut out);
            self.write_disk_commitments(&mut out);
        }
        describe(
            &mut out,
            "warren_sessions",
            "gauge",
            "Live sessions by state.",
        );
        for (state, n) in ["active", "detached", "suspended"]
            .iter()
            .zip(self.session_counts(tenant))
        {
            let _ = writeln!(out, "warren_sessions{{state=\"{state}\"}} {n}");
        }
        describe(
            &mut out,
            "warren_sandbox_cpu_seconds_total",
            "counter",
            "CPU used by a sandbox.",
        );
        describe(
            &mut out,
            "warren_sandbox_memory_bytes",
            "gauge",
            "Memory used by a sandbox.",
        );
        describe(
            &mut out,
            "warren_sandbox_disk_bytes",
            "gauge",
            &format!(
                "Disk taken by a sandbox's writable layer (measured every {} s).",
                self.config.disk_interval.as_secs()
            ),
        );
        let live = self.live();
        for r in &records {
            let id = &r.id;
            let _ = writeln!(
                out,
                "warren_sandbox_disk_bytes{{sandbox=\"{id}\"}} {}",
                self.disk_bytes(id)
            );
            let Some(l) = live.get(id) else { continue };
            let u = l.sandbox.usage();
            let _ = writeln!(
                out,
                "warren_sandbox_cpu_seconds_total{{sandbox=\"{id}\"}} {}",
                u.cpu_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "warren_sandbox_memory_bytes{{sandbox=\"{id}\"}} {}",
                u.memory_bytes
            );
        }
        out
    }

    fn write_pools(&self, out: &mut String) {
        describe(
            out,
            "warren_pool_ready",
            "gauge",
            "Warm sandboxes ready, by pool template.",
        );
        let pools = self.pools();
        for p in &pools {
            let _ = writeln!(
                out,
                "warren_pool_ready{{template=\"{}\"}} {}",
                p.spec.template, p.ready
            );
        }
        describe(
            out,
            "warren_pool_requests_total",
            "counter",
            "Creates that fit a pool, by outcome.",
        );
        for p in &pools {
            let _ = writeln!(
                out,
                "warren_pool_requests_total{{template=\"{}\",outcome=\"hit\"}} {}",
                p.spec.template, p.hits
            );
            let _ = writeln!(
                out,
                "warren_pool_requests_total{{template=\"{}\",outcome=\"miss\"}} {}",
                p.spec.template, p.misses
            );
        }
    }

    fn write_disk_commitments(&self, out: &mut String) {
        let c = warren_runtime::template::disk_commitments(&self.config.paths);
        describe(
            out,
            "warren_disk_free_bytes",
            "gauge",
            "Free space in the data directory.",
        );
        let _ = writeln!(out, "warren_disk_free_bytes {}", c.free);
        describe(
            out,
            "warren_disk_committed_bytes",
            "gauge",
            "Space the sandboxes' and volumes' sparse disk images may still take: more than \
             the free space means a full host disk will fail writes inside them.",
        );
        let _ = writeln!(out, "warren_disk_committed_bytes {}", c.unbacked);
    }
}
