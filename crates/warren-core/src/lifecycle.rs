//! The lifecycle verbs of a live sandbox: pause, resume, stop, start, terminate, timeouts.

use super::*;

impl Manager {
    pub(crate) fn invalid(r: &Record, action: &str) -> CoreError {
        let hint = match r.state {
            SandboxState::Paused => "; resume it first",
            SandboxState::Stopped => "; start it first",
            SandboxState::Creating | SandboxState::Stopping => "; wait a moment",
            _ => "",
        };
        CoreError::InvalidState(format!(
            "cannot {action} sandbox {}: it is {}{hint}",
            r.id,
            r.state.as_str()
        ))
    }

    pub async fn pause(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        self.touch_key(who, key)?;
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let mut r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Paused => return Ok(self.info(&r)),
            SandboxState::Running => {}
            _ => return Err(Self::invalid(&r, "pause")),
        }
        self.off_lock(&r.id, |l| l.sandbox.pause())
            .await?
            .map_err(CoreError::from)?;
        let recorded = self.store().set_state(&r.id, SandboxState::Paused);
        if let Err(e) = recorded {
            // Unrecorded, so undone: the store and the cgroup must agree.
            let _ = self.off_lock(&r.id, |l| l.sandbox.resume()).await;
            return Err(e.into());
        }
        r.state = SandboxState::Paused;
        self.event(&r, "paused", "processes frozen");
        Ok(self.info(&r))
    }

    pub async fn resume(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        self.resume_id(&r.id).await
    }

    /// `r` as it is after its own resume, when it is paused and asked to resume by
    /// itself on use; `r` unchanged otherwise.
    pub(crate) async fn wake_if_asked(&self, r: Record) -> Result<Record> {
        if r.state != SandboxState::Paused || !r.auto_resume {
            return Ok(r);
        }
        self.resume_id(&r.id).await?;
        self.store()
            .get(&r.id)?
            .ok_or_else(|| CoreError::NotFound(r.id.clone()))
    }

    /// Resumes sandbox `id` (whose caller was already checked).
    ///
    /// A sandbox its lifetime paused, and that keeps the ended lifetime (one that resumes
    /// by itself, see the reaper), would be paused again at the reaper's next pass: it
    /// lives [`AUTO_RESUME_LIFETIME_MS`] more from the resume (E2B's default lifetime),
    /// which `set_timeout` changes as usual.
    async fn resume_id(&self, id: &str) -> Result<SandboxInfo> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut r = self
            .store()
            .get(id)?
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        match r.state {
            SandboxState::Running => return Ok(self.info(&r)),
            SandboxState::Paused => {}
            _ => return Err(Self::invalid(&r, "resume")),
        }
        self.off_lock(&r.id, |l| l.sandbox.resume())
            .await?
            .map_err(CoreError::from)?;
        let recorded = self.store().set_state(&r.id, SandboxState::Running);
        if let Err(e) = recorded {
            let _ = self.off_lock(&r.id, |l| l.sandbox.pause()).await;
            return Err(e.into());
        }
        let now = now_ms();
        let _ = self.store().touch(&r.id, now);
        if r.expires_at.is_some_and(|t| t <= now) {
            let until = now + AUTO_RESUME_LIFETIME_MS;
            self.store()
                .set_timeouts(&r.id, Some(until), r.idle_timeout_secs, r.on_timeout)?;
            r.expires_at = Some(until);
        }
        r.state = SandboxState::Running;
        self.event(&r, "resumed", "processes thawed");
        Ok(self.info(&r))
    }

    /// Runs `f` on a live sandbox off the async runtime and outside the table's lock (a
    /// pause that saves memory to disk takes a while). The caller holds the sandbox's own
    /// lock; meanwhile the sandbox is out of the table and counts as not running.
    pub(crate) async fn off_lock<T: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Live) -> T + Send + 'static,
    ) -> Result<T> {
        let mut l = self
            .live()
            .remove(id)
            .ok_or_else(|| CoreError::InvalidState(format!("sandbox {id} is not running")))?;
        // What it does (a pause, a save of its memory) may end the agent's connections,
        // or leave one that a restored agent does not know: the next call makes a new one.
        l.agent = None;
        let (l, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut l);
            (l, out)
        })
        .await
        .map_err(|e| CoreError::InvalidState(format!("sandbox {id}: {e}")))?;
        self.live().insert(id.to_string(), l);
        Ok(out)
    }

    pub(crate) fn with_live<T>(&self, id: &str, f: impl FnOnce(&mut Live) -> T) -> Result<T> {
        let mut live = self.live();
        let l = live
            .get_mut(id)
            .ok_or_else(|| CoreError::InvalidState(format!("sandbox {id} is not running")))?;
        Ok(f(l))
    }

    /// Stops every process; the files stay, and `start` runs the sandbox again.
    pub async fn stop(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Stopped => return Ok(self.info(&r)),
            SandboxState::Running | SandboxState::Paused => {}
            _ => return Err(Self::invalid(&r, "stop")),
        }
        self.stop_locked(r, "stopped", "processes ended, files kept")
            .await
    }

    pub(crate) async fn stop_locked(
        &self,
        mut r: Record,
        kind: &str,
        why: &str,
    ) -> Result<SandboxInfo> {
        self.store().set_state(&r.id, SandboxState::Stopping)?;
        let live = self.live().remove(&r.id);
        if let Some(l) = live {
            l.sandbox.destroy().await.map_err(CoreError::from)?;
        }
        self.clear_egress(&r.spec);
        self.store().set_state(&r.id, SandboxState::Stopped)?;
        self.forget_shares(&r.id);
        r.state = SandboxState::Stopped;
        self.event(&r, kind, why);
        Ok(self.info(&r))
    }

    /// Runs a stopped sandbox again from its kept files.
    pub async fn start(&self, who: &Caller, key: &str) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let mut r = self.resolve(who, &r.id)?;
        match r.state {
            SandboxState::Running => return Ok(self.info(&r)),
            SandboxState::Stopped => {}
            _ => return Err(Self::invalid(&r, "start")),
        }
        let opts = CreateOptions {
            die_with_parent: false,
            ephemeral: false,
        };
        let sb = self
            .boot(r.spec.clone(), opts)
            .await
            .map_err(CoreError::from)?;
        self.store().set_state(&r.id, SandboxState::Running)?;
        self.store().touch(&r.id, now_ms())?;
        self.live().insert(r.id.clone(), Live::booted(sb));
        r.state = SandboxState::Running;
        self.event(&r, "started", "running again from its kept files");
        Ok(self.info(&r))
    }

    /// Ends the sandbox for good: processes and files go (volumes stay).
    pub async fn terminate(&self, who: &Caller, key: &str) -> Result<()> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let r = self.resolve(who, &r.id)?;
        self.terminate_locked(r, "terminated", "removed").await
    }

    pub(crate) async fn terminate_locked(&self, r: Record, kind: &str, why: &str) -> Result<()> {
        // The intent is written first: a daemon killed halfway finishes the job when it
        // starts again (see `recover`) instead of leaving half a sandbox.
        self.store().set_state(&r.id, SandboxState::Stopping)?;
        self.event(&r, TERMINATING, why);
        let live = self.live().remove(&r.id);
        if let Some(l) = live {
            // Its id is never used again: what is left of its teardown once its processes
            // are gone may finish after the answer (`settle` waits for it at exit).
            l.sandbox.end().await.map_err(CoreError::from)?;
        }
        self.clear_egress(&r.spec);
        self.remove_data(&r).await?;
        self.store().set_state(&r.id, SandboxState::Terminated)?;
        self.forget_shares(&r.id);
        self.metrics.terminated.fetch_add(1, Ordering::Relaxed);
        self.event(&r, kind, why);
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r.id);
        Ok(())
    }

    /// Changes the lifetime (from now), the idle timeout, or the action on expiry.
    pub fn set_timeout(&self, who: &Caller, key: &str, t: SetTimeout) -> Result<SandboxInfo> {
        let mut r = self.resolve(who, key)?;
        let now = now_ms();
        if let Some(s) = t.timeout_secs {
            r.expires_at = Some(after(now, s));
        }
        if t.idle_timeout_secs.is_some() {
            r.idle_timeout_secs = t.idle_timeout_secs;
        }
        if let Some(a) = t.on_timeout {
            r.on_timeout = a;
        }
        self.store()
            .set_timeouts(&r.id, r.expires_at, r.idle_timeout_secs, r.on_timeout)?;
        self.store().touch(&r.id, now)?;
        Ok(self.info(&r))
    }
}
