//! The reaper: timeouts, idle sandboxes, disk measurements, and `gc`.

use super::*;

impl Manager {
    /// Sandboxes of `who` idle longer than `idle`; removed unless `dry_run`.
    pub async fn gc(
        &self,
        who: &Caller,
        idle: Duration,
        dry_run: bool,
    ) -> Result<Vec<SandboxInfo>> {
        if who.only_sandbox.is_some() {
            return Ok(Vec::new());
        }
        let cutoff = now_ms().saturating_sub(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX));
        let busy: Vec<String> = self
            .live()
            .iter()
            .filter(|(_, l)| l.streams.load(Ordering::Relaxed) > 0)
            .map(|(id, _)| id.clone())
            .collect();
        let idle_ones: Vec<Record> = self
            .store()
            .list_live(Some(&who.tenant))?
            .into_iter()
            .filter(|r| r.last_active_at < cutoff && !busy.contains(&r.id))
            .collect();
        let infos = idle_ones.iter().map(|r| self.info(r)).collect();
        if !dry_run {
            for r in idle_ones {
                let lock = self.lock_for(&r.id);
                let _g = lock.lock().await;
                if let Ok(r) = self.resolve(who, &r.id) {
                    self.terminate_locked(r, "terminated", "removed by gc: idle")
                        .await?;
                }
            }
        }
        Ok(infos)
    }

    /// Measures the disk each sandbox's files take (its writable layer, or the image
    /// that holds it), on a thread of its own and one walk at a time: requests read the
    /// last figures, never walk a tree themselves.
    pub(crate) fn measure_disks(&self, only_new: bool) {
        // A sandbox still being made has no files yet: measured then, it would keep a
        // figure of nothing until the next full walk. It is measured once it is made.
        let ids: Vec<String> = match self.store().list_live(None) {
            Ok(rs) => rs
                .into_iter()
                .filter(|r| r.state != SandboxState::Creating)
                .map(|r| r.id)
                .collect(),
            Err(_) => return,
        };
        let known = |id: &str| {
            self.disk_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(id)
        };
        let mut measured = HashMap::with_capacity(ids.len());
        for id in ids {
            if only_new && known(&id) {
                continue;
            }
            let bytes = warren_runtime::template::sandbox_disk_used(&self.config.paths, &id);
            measured.insert(id, bytes);
        }
        let mut cache = self.disk_cache.lock().unwrap_or_else(|e| e.into_inner());
        if only_new {
            cache.extend(measured);
        } else {
            *cache = measured;
        }
    }

    /// Whether a live sandbox has no measurement yet (made since the last walk).
    pub(crate) fn has_unmeasured(&self) -> bool {
        let live = self.live();
        let cache = self.disk_cache.lock().unwrap_or_else(|e| e.into_inner());
        live.keys().any(|id| !cache.contains_key(id))
    }

    /// One pass of the reaper: activity from CPU use and attached clients, then expiry;
    /// now and then, the records of sandboxes that ended long ago are forgotten.
    pub(crate) async fn reap(&self) {
        let interval_us = self.config.reaper_interval.as_micros() as f64;
        let now = now_ms();
        if now - self.pruned_at.load(Ordering::Relaxed) >= PRUNE_EVERY_MS {
            self.pruned_at.store(now, Ordering::Relaxed);
            let _ = self.store().prune_terminated(now - KEEP_TERMINATED_MS);
            self.sweep_fork_templates();
        }
        let mut active = Vec::new();
        let mut dead = Vec::new();
        // One sandbox at a time under the live table's lock: with a thousand running, a
        // pass reads a thousand cgroups, and a create or an exec waiting for the table
        // meanwhile would wait for all of them.
        let ids: Vec<String> = self.live().keys().cloned().collect();
        for id in ids {
            let _ = self.with_live(&id, |l| {
                if !l.sandbox.is_alive() {
                    let s = &l.sandbox;
                    dead.push((id.clone(), s.oom_kills(), s.fatal_task_limit_hits()));
                    return;
                }
                // Its CPU time every pass (is it busy?); the rest of its use (three more
                // cgroup files) only when a reading is kept.
                let cpu = if l.sample_due(now) {
                    let usage = l.sandbox.usage();
                    // Taken with the live table, in the order `has_unmeasured` takes them.
                    let disk = self
                        .disk_cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .copied()
                        .unwrap_or(0);
                    l.sample(now, &usage, disk);
                    usage.cpu_us
                } else {
                    l.sandbox.cpu_us()
                };
                if !l.warm && now - l.agent_used_ms >= crate::AGENT_KEPT_MS {
                    l.agent = None;
                }
                let used = cpu.saturating_sub(l.last_cpu_us) as f64;
                l.last_cpu_us = cpu;
                if l.streams.load(Ordering::Relaxed) > 0
                    || used > interval_us * self.config.busy_cpu_fraction
                {
                    active.push(id.clone());
                }
            });
        }
        for id in &active {
            let _ = self.store().touch(id, now);
        }
        for (id, oom_kills, task_limit_hits) in dead {
            let lock = self.lock_for(&id);
            let _g = lock.lock().await;
            let Ok(Some(r)) = self.store().get(&id) else {
                continue;
            };
            if matches!(r.state, SandboxState::Running | SandboxState::Paused) {
                // A gVisor sandbox past its memory limit is one host process killed whole.
                let reason = if oom_kills > 0 {
                    "out of memory: it went past its memory limit and its init process was \
                     killed; stopped, files kept (start it again, with more memory)"
                } else if task_limit_hits > 0 {
                    "too many tasks: it went past its pids limit, which stops a gVisor \
                     sandbox whole; stopped, files kept (start it again, with a higher --pids)"
                } else {
                    "its init process died; stopped, files kept"
                };
                let _ = self.stop_locked(r, "failed", reason).await;
            }
        }
        let Ok(records) = self.store().list_due(now) else {
            return;
        };
        for r in records {
            if r.state != SandboxState::Running {
                continue;
            }
            let reason = if r.expires_at.is_some_and(|t| t <= now) {
                "its lifetime ended"
            } else if r
                .idle_timeout_secs
                .is_some_and(|s| after(r.last_active_at, s) <= now)
            {
                "it was idle too long"
            } else {
                continue;
            };
            self.expire(r, reason).await;
        }
    }

    pub(crate) async fn expire(&self, r: Record, reason: &str) {
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let Ok(Some(mut r)) = self.store().get(&r.id) else {
            return;
        };
        if r.state != SandboxState::Running {
            return;
        }
        let action = r.on_timeout;
        self.metrics.timeouts[action as usize].fetch_add(1, Ordering::Relaxed);
        self.event(
            &r,
            "timeout",
            format!("{reason}: {action:?}").to_lowercase(),
        );
        // The lifetime is used up: a later resume or start gets no second expiry at once.
        // A sandbox that resumes by itself keeps its ended lifetime, which tells the
        // resume to give it a new one (see `wake_if_asked`).
        if !(action == TimeoutAction::Pause && r.auto_resume) {
            let _ = self
                .store()
                .set_timeouts(&r.id, None, r.idle_timeout_secs, r.on_timeout);
        }
        match action {
            TimeoutAction::Pause => {
                let paused = self.off_lock(&r.id, |l| l.sandbox.pause()).await;
                if matches!(paused, Ok(Ok(()))) {
                    let _ = self.store().set_state(&r.id, SandboxState::Paused);
                    r.state = SandboxState::Paused;
                    self.event(&r, "paused", reason);
                }
            }
            TimeoutAction::Stop => {
                let _ = self.stop_locked(r, "stopped", reason).await;
            }
            TimeoutAction::Terminate => {
                let _ = self.terminate_locked(r, "terminated", reason).await;
            }
        }
    }
}
