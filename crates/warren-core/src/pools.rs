//! Warm pools: sandboxes made ahead per profile, claimed by requests that fit exactly.
//!
//! Pools are the host's: their warm sandboxes take the node's memory and disk before any
//! tenant asks for them, so only the operator (the unix socket, or an operator key) reads
//! or sets them.
//! An operator key already makes sandboxes without quota, so a pool gives it no more
//! than it has; a pool names no host path, so no key is kept from it as one is from host
//! directory mounts.

use super::*;

impl Manager {
    /// Hands out a warm sandbox when the request fits a pool exactly; counts the hit or
    /// the miss. The store claims the member atomically.
    pub(crate) fn claim_from_pool(
        &self,
        who: &Caller,
        owner: &str,
        template: &str,
        req: &CreateSandbox,
    ) -> Result<Option<SandboxInfo>> {
        let fits = req.home_volume == Some(false)
            && req.env.is_empty()
            && req.publish.is_empty()
            && req.egress.is_open()
            && req.mounts.is_empty();
        let key = pool_key(
            template,
            &req.resources,
            req.network,
            req.isolation.unwrap_or_default(),
        );
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.key == key)
            .cloned();
        let (Some(pool), true) = (pool, fits) else {
            return Ok(None);
        };
        if let (Some(name), false) = (&req.name, req.get_or_create) {
            if self.store().by_name(&who.tenant, owner, name)?.is_some() {
                return Err(CoreError::NameTaken(name.clone()));
            }
        }
        let now = now_ms();
        let claim = Record {
            id: String::new(),
            tenant: who.tenant.clone(),
            owner: owner.to_string(),
            name: req.name.clone(),
            state: SandboxState::Running,
            spec: SandboxSpec::default(),
            labels: req.labels.clone(),
            metadata: req.metadata.clone(),
            created_at: now,
            last_active_at: now,
            expires_at: req.timeout_secs.map(|s| after(now, s)),
            idle_timeout_secs: req.idle_timeout_secs,
            on_timeout: req.on_timeout.unwrap_or_default(),
            // A new generation: the warm member's own token was never shown, and its
            // new tenant's is one no earlier holder could have derived.
            access: TokenRef::Derived(1),
            traffic: req.traffic_token.then_some(TokenRef::Derived(1)),
            auto_resume: req.auto_resume.unwrap_or(false),
            request_host: req.request_host.clone(),
        };
        let claimed = {
            let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.check_quota(who, owner, req)?;
            self.store()
                .claim_from_pool(&key, &claim)
                .map_err(|e| match e {
                    StoreError::NameTaken(n) => CoreError::NameTaken(n),
                    e => e.into(),
                })?
        };
        match claimed {
            Some(r) => {
                // Its connection, made ahead, is an ordinary one from now on.
                let _ = self.with_live(&r.id, |l| {
                    l.warm = false;
                    l.agent_used_ms = now;
                });
                pool.hits.fetch_add(1, Ordering::Relaxed);
                self.metrics.created.fetch_add(1, Ordering::Relaxed);
                self.event(
                    &r,
                    "created",
                    format!(
                        "from the warm pool of {}",
                        warren_runtime::template::display_name(template)
                    ),
                );
                Ok(Some(self.info_with(&r, true)))
            }
            None => {
                pool.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Adds a warm pool, or changes the pool of the same template and profile. A pool
    /// with `max` 0 is removed, and its warm sandboxes with it. The operator's alone.
    pub async fn set_pool(&self, who: &Caller, spec: PoolSpec) -> Result<PoolInfo> {
        operator_only(who)?;
        if spec.min > spec.max || spec.max > 1000 {
            return Err(CoreError::Invalid(
                "a pool needs min <= max <= 1000 (max 0 removes the pool)".into(),
            ));
        }
        let mut spec = spec;
        spec.resources = self.config.policy.with_defaults(&spec.resources);
        self.config
            .policy
            .check_resources(&spec.resources, "the pool's resources")?;
        // A name means what it means to the caller's creates (a snapshot it made is
        // its own tenant's); the pool holds the template's stored key.
        let t = self.pool_template(who, &spec.template);
        if spec.max == 0 {
            // A pool of a template since removed is removed by the key it holds.
            if let Ok(t) = &t {
                spec.template = t.meta.key.clone();
            }
            return self.remove_pool(spec).await;
        }
        let t = t?;
        spec.template = t.meta.key.clone();
        if let Some(saved) = &t.meta.memory {
            // Its members are restored ahead from the saved memory, their processes
            // going on, as a create from it would make them: only where such a create
            // can be, and with what every pool member has (no home volume).
            let why = if spec.isolation != Isolation::Gvisor {
                Some("only the gvisor backend restores it: set isolation gvisor")
            } else if spec.network != warren_types::spec::NetworkMode::None {
                Some("a sandbox restored from it is on `none`: leave network out")
            } else if saved.home_volume {
                Some(
                    "its memory was saved with the owner's home volume, which no pool's \
                     sandbox has",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(CoreError::Invalid(format!(
                    "template {} carries memory: {why}",
                    t.name
                )));
            }
        }
        let key = pool_key(
            &spec.template,
            &spec.resources,
            spec.network,
            spec.isolation,
        );
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = match pools.iter().position(|p| p.key == key) {
            Some(i) => {
                let old = &pools[i];
                let p = Arc::new(Pool {
                    spec: spec.clone(),
                    key: key.clone(),
                    filling: old.filling.clone(),
                    hits: AtomicU64::new(old.hits.load(Ordering::Relaxed)),
                    misses: AtomicU64::new(old.misses.load(Ordering::Relaxed)),
                });
                pools[i] = p.clone();
                p
            }
            None => {
                let p = Arc::new(Pool {
                    spec: spec.clone(),
                    key: key.clone(),
                    filling: Arc::default(),
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                });
                pools.push(p.clone());
                p
            }
        };
        drop(pools);
        Ok(self.pool_info(&pool))
    }

    /// The template a pool of `name` is made of: the one `who`'s creates would use (a
    /// key names the templates its own creates may use: another tenant's are as unknown
    /// to it here as there, so a pool is no way to learn they exist); the host's root
    /// may also name any by its stored key.
    fn pool_template(
        &self,
        who: &Caller,
        name: &str,
    ) -> Result<warren_runtime::template::Template> {
        let unknown = || {
            let shown = warren_runtime::template::display_name(name).to_string();
            CoreError::Invalid(warren_runtime::Error::UnknownTemplate(shown).to_string())
        };
        match self.resolve_template(who, name) {
            Ok(t) => Ok(t),
            Err(CoreError::TemplateNotFound(_)) if who.host_root => {
                warren_runtime::template::resolve(&self.config.paths, name).map_err(|e| match e {
                    warren_runtime::Error::UnknownTemplate(_) => unknown(),
                    e => CoreError::Invalid(e.to_string()),
                })
            }
            Err(CoreError::TemplateNotFound(_)) => Err(unknown()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn remove_pool(&self, spec: PoolSpec) -> Result<PoolInfo> {
        let key = pool_key(
            &spec.template,
            &spec.resources,
            spec.network,
            spec.isolation,
        );
        let removed = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            let i = pools.iter().position(|p| p.key == key);
            i.map(|i| pools.remove(i))
        };
        // A member being made now ends itself once it finds its pool gone: waited for,
        // so that the pool is all gone when this answers.
        if let Some(p) = &removed {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while p.filling.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let members = self.store().pool_members(&key)?;
        for (id, _) in members {
            self.end_warm(&id, "its pool was removed").await?;
        }
        Ok(PoolInfo {
            spec,
            ready: 0,
            hits: removed
                .as_ref()
                .map_or(0, |p| p.hits.load(Ordering::Relaxed)),
            misses: removed
                .as_ref()
                .map_or(0, |p| p.misses.load(Ordering::Relaxed)),
        })
    }

    pub(crate) fn pool_info(&self, p: &Pool) -> PoolInfo {
        PoolInfo {
            spec: p.spec.clone(),
            ready: self
                .store()
                .pool_members(&p.key)
                .map(|m| m.len())
                .unwrap_or(0),
            hits: p.hits.load(Ordering::Relaxed),
            misses: p.misses.load(Ordering::Relaxed),
        }
    }

    /// Every pool with its readiness and hit counts, for the operator.
    pub fn pools_for(&self, who: &Caller) -> Result<Vec<PoolInfo>> {
        operator_only(who)?;
        Ok(self.pools())
    }

    pub fn pools(&self) -> Vec<PoolInfo> {
        let pools: Vec<Arc<Pool>> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pools.iter().map(|p| self.pool_info(p)).collect()
    }

    /// Makes a new pool member's shared agent connection and keeps it until the member
    /// is claimed: the agent's first connection (its hello, the agent's first work for a
    /// caller) is then behind the member when a request takes it. Best-effort: a member
    /// whose agent does not answer now (within [`WARM_AGENT_WAIT`]: the fill, and with it
    /// the pool's removal, waits no longer) is reached as any other at its first call.
    async fn warm_agent(&self, who: &Caller, id: &str) {
        let made = tokio::time::timeout(WARM_AGENT_WAIT, self.agent_client(who, id)).await;
        if let Ok(Ok(_)) = made {
            let _ = self.with_live(id, |l| l.warm = l.agent.is_some());
        }
    }

    /// Removes `id` if it is still a pool's unclaimed member (a claim may have taken it,
    /// or another removal ended it, meanwhile).
    async fn end_warm(&self, id: &str, why: &str) -> Result<()> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let found = self.store().get(id)?;
        if let Some(r) =
            found.filter(|r| r.tenant == POOL_TENANT && r.state == SandboxState::Running)
        {
            self.terminate_locked(r, "terminated", why).await?;
        }
        Ok(())
    }

    /// Whether a pool of `key` is configured now.
    fn has_pool(&self, key: &str) -> bool {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().any(|p| p.key == key)
    }

    /// Removes warm members that no pool holds: those of a pool removed while they were
    /// being made, or of one this daemon (after a restart) was not given again; and
    /// those a fill never finished marking (an earlier daemon's, stopped in between),
    /// once they are older than any fill takes.
    fn sweep_orphans(self: &Arc<Self>, now: i64) {
        /// Longer than any fill takes from its record to its pool key.
        const UNMARKED_AFTER_MS: i64 = 300_000;
        /// A look is a query of the store: not at every pass of the reaper.
        const EVERY_MS: i64 = 10_000;
        if now - self.orphans_swept_at.load(Ordering::Relaxed) < EVERY_MS {
            return;
        }
        self.orphans_swept_at.store(now, Ordering::Relaxed);
        let Ok(warm) = self.store().running_of_tenant(POOL_TENANT) else {
            return;
        };
        for (id, key, created) in warm {
            let orphan = match &key {
                Some(key) => !self.has_pool(key),
                None => now - created >= UNMARKED_AFTER_MS,
            };
            if orphan {
                let mgr = self.clone();
                tokio::spawn(async move {
                    let _ = mgr.end_warm(&id, "no pool holds it").await;
                });
            }
        }
    }

    /// Tops pools up to their minimum, replaces members past their time to live, and
    /// removes members no pool holds.
    pub(crate) fn refill_pools(self: &Arc<Self>) {
        let pools: Vec<Arc<Pool>> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = now_ms();
        self.sweep_orphans(now);
        for pool in pools {
            let Ok(members) = self.store().pool_members(&pool.key) else {
                continue;
            };
            let mut ready = members.len();
            if let Some(ttl) = pool.spec.ttl_secs {
                for (id, created) in &members {
                    if after(*created, ttl) <= now {
                        ready -= 1;
                        let mgr = self.clone();
                        let id = id.clone();
                        tokio::spawn(async move {
                            let _ = mgr.end_warm(&id, "warm too long").await;
                        });
                    }
                }
            }
            let filling = pool.filling.load(Ordering::Relaxed);
            let want = pool.spec.min.saturating_sub(ready + filling);
            let room = pool.spec.max.saturating_sub(ready + filling);
            for _ in 0..want.min(room) {
                pool.filling.fetch_add(1, Ordering::Relaxed);
                let mgr = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    let who = Caller::operator(POOL_TENANT);
                    let req = CreateSandbox {
                        resources: pool.spec.resources.clone(),
                        network: pool.spec.network,
                        isolation: Some(pool.spec.isolation),
                        home_volume: Some(false),
                        ..Default::default()
                    };
                    if let Ok(info) = mgr
                        .create_new(&who, POOL_TENANT, &pool.spec.template, &req)
                        .await
                    {
                        // Before it can be claimed, so that a claim always finds it
                        // warm or not yet made, never warmed after it was claimed.
                        mgr.warm_agent(&who, &info.id).await;
                        let _ = mgr.store().set_pool(&info.id, Some(&pool.key));
                        // Its pool removed while it was being made: the removal may
                        // have listed the members before this one was marked.
                        if !mgr.has_pool(&pool.key) {
                            let _ = mgr.end_warm(&info.id, "its pool was removed").await;
                        }
                    }
                    pool.filling.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// How long a fill waits for a new member's agent to answer its first connection.
const WARM_AGENT_WAIT: Duration = Duration::from_secs(5);

fn operator_only(who: &Caller) -> Result<()> {
    if !who.operator || who.only_sandbox.is_some() {
        return Err(CoreError::Forbidden(
            "pools are the host operator's: use an operator key (warren keys create --operator)"
                .into(),
        ));
    }
    Ok(())
}
