//! Making sandboxes: admission against policy, quotas and the chosen backend, warm-pool
//! claims, booting or restoring, and forks.

use super::*;
use warren_runtime::template;
use warren_types::spec::NetworkMode;

impl Manager {
    /// Creates a sandbox; with a name and `get_or_create`, returns the existing one
    /// (resumed or started if needed). The flag says whether a new one was made.
    pub async fn create(&self, who: &Caller, req: CreateSandbox) -> Result<(SandboxInfo, bool)> {
        warren_runtime::trace::mark("daemon: request in");
        if who.only_sandbox.is_some() {
            return Err(CoreError::Forbidden(
                "a sandbox's own token cannot create sandboxes: use an API key".into(),
            ));
        }
        let mut req = req;
        let name = req.template.clone().unwrap_or_else(|| "host".into());
        // From here on the template is named by where it is stored: the name `who` gave
        // resolves once, to its own or a shared one, never to another tenant's.
        let meta = self
            .resolve_template(who, &name)
            .map_err(|e| match e {
                CoreError::TemplateNotFound(_) => CoreError::UnknownTemplate(name.clone()),
                e => CoreError::Invalid(e.to_string()),
            })?
            .meta;
        // A request that names no backend gets its template's (then the daemon's), or,
        // stating what it requires, the first that offers it.
        if req.isolation.is_none() {
            req.isolation = match &req.requires {
                Some(_) => Some(self.choose_backend(who, meta.isolation, &req)?),
                None => meta.isolation,
            };
        }
        if let Some(saved) = &meta.memory {
            check_memory_template(&name, saved, &mut req)?;
        }
        let template = meta.key.clone();
        let req = self.admit(who, req)?;
        warren_runtime::trace::mark("daemon: template and limits checked");
        // A template that carries memory is restored, never booted: its processes go on.
        let memory = saved_memory(&self.config.paths, &template, &meta);
        if memory.is_some() && req.network != NetworkMode::None {
            return Err(CoreError::Invalid(format!(
                "template {name} carries memory, which a sandbox on `{}` cannot restore (its \
                 sockets would be the host's): ask for network none",
                req.network.as_str()
            )));
        }
        let from = memory.as_ref().map(|(i, d)| (i.as_path(), d.as_path()));
        let owner = req.owner.clone().unwrap_or_else(|| who.tenant.clone());
        if !valid_owner(&owner) {
            return Err(CoreError::Invalid(format!(
                "owner {owner:?}: use 1-128 letters, digits and - _ . @ + (not . or ..)"
            )));
        }
        if let Some(n) = &req.name {
            if !warren_runtime::valid_name(n) {
                return Err(CoreError::Invalid(format!(
                    "name {n:?}: use 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
        }
        // A pool of a template that carries memory holds sandboxes restored ahead.
        if let Some(info) = self.claim_from_pool(who, &owner, &template, &req)? {
            return Ok((info, true));
        }
        // Creation with a taken name races with its creator at most this many times.
        for _ in 0..100 {
            if let (Some(name), true) = (&req.name, req.get_or_create) {
                let existing = self.store().by_name(&who.tenant, &owner, name)?;
                if let Some(r) = existing {
                    return Ok((self.bring_up(who, r).await?, false));
                }
            }
            match self.create_from(who, &owner, &template, &req, from).await {
                Err(CoreError::NameTaken(_)) if req.get_or_create => continue,
                other => return other.map(|i| (i, true)),
            }
        }
        Err(CoreError::InvalidState(
            "the sandbox of that name keeps changing; try again".into(),
        ))
    }

    /// Copies of a running sandbox (a fork): each has its own id, tokens and writable
    /// layer, and goes on from the moment of the copy; the source keeps running. On a
    /// backend with memory snapshots the copies have its processes and memory; on one
    /// without (namespace), its files, with the template's start command run afresh.
    ///
    /// The answer has one entry per copy asked for: each copy is made, or fails, on its
    /// own (as E2B's fork); a failure to take the copy fails the whole call.
    pub async fn fork(
        &self,
        who: &Caller,
        key: &str,
        count: usize,
    ) -> Result<Vec<Result<SandboxInfo>>> {
        if who.only_sandbox.is_some() {
            return Err(CoreError::Forbidden(
                "a sandbox's own token cannot fork sandboxes: use an API key".into(),
            ));
        }
        if count == 0 || count > MAX_FORKS {
            return Err(CoreError::Invalid(format!(
                "count {count}: ask for 1 to {MAX_FORKS} copies"
            )));
        }
        let r = self.resolve(who, key)?;
        if !r.spec.mounts.is_empty() {
            // A copy would not have them, and one made from memory would miss them.
            return Err(CoreError::Invalid(format!(
                "sandbox {} mounts host directories: it cannot be forked",
                r.id
            )));
        }
        let backend = self.backend(r.spec.isolation)?.clone();
        let caps = backend.info().capabilities;
        if r.state != SandboxState::Running && caps.memory_snapshots {
            return Err(Self::invalid(&r, "fork"));
        }
        let mut template = r.spec.template.clone();
        let memory = if caps.memory_snapshots {
            // The memory and the files of one moment, as a snapshot with memory takes
            // them (the image in `image`, the files in `upper`): files copied from the
            // source after its memory was saved would be of a later moment, which a copy
            // restored from that memory cannot make sense of (a file its processes held
            // open, renamed since, fails the restore). Saved aside in the data
            // directory, as a snapshot's memory is (the run directory is often in
            // memory, and the files can be large), and removed once the copies are made.
            let dir = (self.config.paths.data.join("templates"))
                .join(format!(".memory-{}", random_hex(8)?));
            let lock = self.lock_for(&r.id);
            let _g = lock.lock().await;
            let into = dir.clone();
            let saved = self
                .off_lock(&r.id, move |l| l.sandbox.save_memory(&into))
                .await?
                .map_err(CoreError::from);
            if let Err(e) = saved {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            Some((dir.join("image"), dir))
        } else if r.spec.isolation != Isolation::Process {
            // Its files as a template of its tenant's that no listing shows, removed by
            // the reaper once the last copy is gone.
            let name = format!("fork-{}-{}", r.id, random_hex(4)?);
            let (meta, _) = self
                .capture_files(
                    who,
                    &r.id,
                    &name,
                    warren_runtime::template::TemplateKind::Fork,
                )
                .await?;
            template = meta.key;
            None
        } else {
            return Err(CoreError::Invalid(format!(
                "a {} sandbox cannot be forked",
                r.spec.isolation
            )));
        };
        let req = CreateSandbox {
            resources: r.spec.resources.clone(),
            network: r.spec.network,
            // A copy goes where its source may, no further.
            egress: r.spec.egress.clone(),
            env: r.spec.env.clone(),
            labels: r.labels.clone(),
            metadata: r.metadata.clone(),
            idle_timeout_secs: r.idle_timeout_secs,
            on_timeout: Some(r.on_timeout),
            auto_resume: Some(r.auto_resume),
            request_host: r.request_host.clone(),
            // The owner's home volume is the owner's, not the source's: mounted again
            // (a memory image expects its mounts where they were).
            home_volume: Some(!r.spec.volumes.is_empty()),
            isolation: Some(r.spec.isolation),
            timeout_secs: r
                .expires_at
                .map(|e| u64::try_from((e - now_ms()).max(1000) / 1000).unwrap_or(1)),
            ..Default::default()
        };
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let from = memory.as_ref().map(|(i, f)| (i.as_path(), f.as_path()));
            out.push(self.create_from(who, &r.owner, &template, &req, from).await);
        }
        if let Some((_, dir)) = &memory {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(out)
    }

    /// Checks a request against the policy and gives it the defaults it leaves out:
    /// nothing is recorded or made for a request refused here.
    pub(crate) fn admit(&self, who: &Caller, mut req: CreateSandbox) -> Result<CreateSandbox> {
        let policy = &self.config.policy;
        let isolation = req.isolation.unwrap_or(self.config.isolation);
        // A default fills in only a limit the backend enforces; one the request names
        // itself is refused below if the backend cannot hold it.
        let info = self.backend(isolation)?.info();
        let enforced = &info.capabilities.limits;
        let defaults = policy.with_defaults(&Resources::default());
        let keep = |l: &str| enforced.iter().any(|e| e == l);
        let least = req.requires.as_ref().and_then(|n| n.memory);
        if let (Some(asked), Some(least)) = (req.resources.memory, least) {
            if asked < least {
                return Err(CoreError::Invalid(format!(
                    "resources.memory {asked} is below requires.memory {least}: ask for at \
                     least that, or leave resources.memory out"
                )));
            }
        }
        let r = &mut req.resources;
        r.memory = r.memory.or(defaults.memory.filter(|_| keep("memory")));
        if let Some(least) = least.filter(|_| keep("memory")) {
            r.memory = Some(r.memory.unwrap_or(0).max(least));
        }
        r.cpu_millis = r.cpu_millis.or(defaults.cpu_millis.filter(|_| keep("cpu")));
        r.pids = r.pids.or(defaults.pids.filter(|_| keep("pids")));
        r.disk = r.disk.or(defaults.disk.filter(|_| keep("disk")));
        policy.check_resources(&req.resources, "resources")?;
        policy::check_tags("labels", &req.labels)?;
        policy::check_tags("metadata", &req.metadata)?;
        if let Some(why) = warren_types::spec::env_problem(&req.env) {
            return Err(CoreError::Invalid(why));
        }
        if !info.capabilities.volumes {
            // Its home is in its own files (trust mode: its directory on the host).
            if req.home_volume == Some(true) {
                return Err(CoreError::Invalid(format!(
                    "the {isolation} backend mounts no volumes: leave home_volume out"
                )));
            }
            req.home_volume = Some(false);
        }
        if req.home_volume.unwrap_or(true) {
            let size = req.home_size.unwrap_or(policy.home_size);
            policy.check_home(size)?;
            req.home_size = Some(size);
        }
        req.publish = policy.place_ports(who, &req.publish)?;
        // `none` is only the default: a backend that cannot honour it (trust mode has the
        // host's network) says which network the sandbox gets instead of pretending.
        req.network = choose::network_on(&info.capabilities.networks, req.network);
        self.check_backend(who, isolation, &info, &req)?;
        req.mounts = self.check_mounts(who, isolation, &info, &req)?;
        self.check_egress(req.network, &req.egress)?;
        req.isolation = Some(isolation);
        Ok(req)
    }

    /// Refuses a request the chosen backend cannot serve here, naming what it lacks.
    pub(crate) fn check_backend(
        &self,
        who: &Caller,
        kind: Isolation,
        info: &warren_types::api::BackendInfo,
        req: &CreateSandbox,
    ) -> Result<()> {
        if kind == Isolation::Process && !self.trust_open(who) {
            return Err(CoreError::Invalid(format!(
                "the process backend (trust mode) is not open to tenant {:?}: the operator \
                 allows it per tenant (`[backends.process] tenants`)",
                who.tenant
            )));
        }
        match choose::lacks(info, req).first() {
            Some(lack) => Err(CoreError::Invalid(lack.refusal(kind, info))),
            None => Ok(()),
        }
    }

    /// Whether trust mode (the process backend) is open to `who`.
    fn trust_open(&self, who: &Caller) -> bool {
        who.operator || self.config.process_tenants.contains(&who.tenant)
    }

    /// The backend for a request that names none but states what it requires: the first
    /// available one, of the template's default, the daemon's, then a fixed order, that
    /// offers everything the request asks.
    fn choose_backend(
        &self,
        who: &Caller,
        template: Option<Isolation>,
        req: &CreateSandbox,
    ) -> Result<Isolation> {
        let infos = self.backends.infos();
        let candidates: Vec<choose::Candidate> =
            choose::candidates(template, self.config.isolation)
                .into_iter()
                .filter_map(|kind| {
                    let info = infos.iter().find(|i| i.name == kind)?.clone();
                    Some(choose::Candidate {
                        info,
                        open: kind != Isolation::Process || self.trust_open(who),
                    })
                })
                .collect();
        choose::choose(&candidates, req).map_err(|e| CoreError::Invalid(e.to_string()))
    }

    /// Refuses a sandbox that would take `who`'s tenant past a quota (the operator has
    /// none). Called with the quota lock held, right before the row is written.
    pub(crate) fn check_quota(&self, who: &Caller, owner: &str, req: &CreateSandbox) -> Result<()> {
        if who.operator {
            return Ok(());
        }
        let live = self.store().list_live(Some(&who.tenant))?;
        let mut used = policy::Usage::default();
        let mut homes = std::collections::BTreeSet::new();
        for r in &live {
            used.sandboxes += 1;
            used.memory += r.spec.resources.memory.unwrap_or(0);
            used.disk += r.spec.resources.disk.unwrap_or(0);
            for v in r.spec.volumes.iter().filter(|v| v.target == "/home/user") {
                if homes.insert(v.name.clone()) {
                    used.disk += v.size.unwrap_or(0);
                }
            }
        }
        let home_new = req.home_volume.unwrap_or(true)
            && !homes.contains(&home_volume_name(&who.tenant, owner));
        let adding = policy::Usage {
            sandboxes: 1,
            memory: req.resources.memory.unwrap_or(0),
            disk: req.resources.disk.unwrap_or(0)
                + if home_new {
                    req.home_size.unwrap_or(0)
                } else {
                    0
                },
        };
        self.config.policy.quotas.check(&used, &adding)
    }

    /// Makes an existing named sandbox usable: waits for its creation, resumes, starts.
    pub(crate) async fn bring_up(&self, who: &Caller, r: Record) -> Result<SandboxInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut r = r;
        while r.state == SandboxState::Creating || r.state == SandboxState::Stopping {
            if tokio::time::Instant::now() > deadline {
                return Err(CoreError::InvalidState(format!(
                    "sandbox {} is still {}",
                    r.id,
                    r.state.as_str()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            r = self.resolve(who, &r.id)?;
        }
        match r.state {
            SandboxState::Paused => self.resume(who, &r.id).await,
            SandboxState::Stopped => self.start(who, &r.id).await,
            _ => Ok(self.info(&r)),
        }
        .map(|i| SandboxInfo {
            access_token: self.keys.token(TokenKind::Access, &r.id, &r.access),
            traffic_token: r
                .traffic
                .as_ref()
                .and_then(|t| self.keys.token(TokenKind::Traffic, &r.id, t)),
            ..i
        })
    }

    /// Makes a sandbox of `template` (a stored key) as a create naming it would: booted,
    /// or restored from the memory it carries.
    pub(crate) async fn create_new(
        &self,
        who: &Caller,
        owner: &str,
        template: &str,
        req: &CreateSandbox,
    ) -> Result<SandboxInfo> {
        let t = template::resolve(&self.config.paths, template)
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let memory = saved_memory(&self.config.paths, template, &t.meta);
        let from = memory.as_ref().map(|(i, d)| (i.as_path(), d.as_path()));
        self.create_from(who, owner, template, req, from).await
    }

    /// Makes a sandbox and records it; with `from`, by restoring a memory image over a
    /// copy of another sandbox's files (a fork) instead of booting the template.
    pub(crate) async fn create_from(
        &self,
        who: &Caller,
        owner: &str,
        template: &str,
        req: &CreateSandbox,
        from: Option<(&Path, &Path)>,
    ) -> Result<SandboxInfo> {
        warren_runtime::trace::mark("daemon: create asked");
        let id = warren_runtime::new_id().map_err(CoreError::from)?;
        let mut volumes = Vec::new();
        if req.home_volume.unwrap_or(true) {
            let name = home_volume_name(&who.tenant, owner);
            self.note_home_volume(&who.tenant, owner, &name)?;
            volumes.push(VolumeMount {
                name,
                target: "/home/user".into(),
                size: req.home_size,
            });
        }
        let spec = SandboxSpec {
            id: id.clone(),
            template: template.to_string(),
            hostname: None,
            resources: req.resources.clone(),
            network: req.network,
            publish: req.publish.clone(),
            volumes,
            mounts: req.mounts.clone(),
            env: req.env.clone(),
            isolation: req.isolation.unwrap_or_default(),
            egress: req.egress.clone(),
        };
        let now = now_ms();
        let record = Record {
            id: id.clone(),
            tenant: who.tenant.clone(),
            owner: owner.to_string(),
            name: req.name.clone(),
            state: SandboxState::Creating,
            spec: spec.clone(),
            labels: req.labels.clone(),
            metadata: req.metadata.clone(),
            created_at: now,
            last_active_at: now,
            expires_at: req.timeout_secs.map(|s| after(now, s)),
            idle_timeout_secs: req.idle_timeout_secs,
            on_timeout: req.on_timeout.unwrap_or_default(),
            access: TokenRef::Derived(0),
            traffic: req.traffic_token.then_some(TokenRef::Derived(0)),
            auto_resume: req.auto_resume.unwrap_or(false),
            request_host: req.request_host.clone(),
        };
        {
            // Checked and recorded under one lock: concurrent creates of one tenant
            // cannot each find room for themselves in the same quota.
            let _quota = self.quota_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.check_volumes_free(&spec)?;
            self.check_quota(who, owner, req)?;
            self.store().insert(&record).map_err(|e| match e {
                StoreError::NameTaken(n) => CoreError::NameTaken(n),
                e => e.into(),
            })?;
        }
        warren_runtime::trace::mark("daemon: recorded");
        let lock = self.lock_for(&id);
        let _g = lock.lock().await;
        let started = std::time::Instant::now();
        let opts = CreateOptions {
            die_with_parent: false,
            ephemeral: false,
        };
        let booted = from.is_none();
        let made = match from {
            None => self.boot(spec, opts).await,
            Some((image, files)) => match self.backends.get(spec.isolation) {
                Ok(b) => b.restore(spec, image, files).await,
                Err(e) => Err(e),
            },
        };
        warren_runtime::trace::mark("daemon: backend answered");
        match made {
            Ok(sb) => {
                self.metrics.observe_create(started.elapsed());
                self.store().set_state(&id, SandboxState::Running)?;
                let live = match booted {
                    true => Live::booted(sb),
                    false => Live::new(sb, 0),
                };
                self.live().insert(id.clone(), live);
                self.metrics.created.fetch_add(1, Ordering::Relaxed);
                let mut r = record;
                r.state = SandboxState::Running;
                self.event(
                    &r,
                    "created",
                    format!(
                        "from template {}",
                        warren_runtime::template::display_name(template)
                    ),
                );
                let info = self.info_with(&r, true);
                warren_runtime::trace::mark("daemon: running recorded");
                Ok(info)
            }
            Err(e) => {
                let _ = self.remove_data(&record).await;
                self.store().set_state(&id, SandboxState::Terminated)?;
                self.event(&record, "failed", e.to_string());
                Err(match e {
                    warren_runtime::Error::UnknownTemplate(_) => CoreError::Invalid(e.to_string()),
                    e => e.into(),
                })
            }
        }
    }
}

/// Where the template stored as `key` keeps its saved memory, when it carries some: the
/// checkpoint image, and the directory holding it with the files saved beside it.
fn saved_memory(
    paths: &warren_runtime::Paths,
    key: &str,
    meta: &template::TemplateMeta,
) -> Option<(PathBuf, PathBuf)> {
    meta.memory.as_ref().map(|_| {
        let dir = template::memory_dir(paths, key);
        (dir.join("image"), dir)
    })
}

/// Fits a request to a template that carries memory: only a backend with memory
/// snapshots restores it, on `none` (so with no published ports), and its processes find
/// the mounts they had.
fn check_memory_template(
    name: &str,
    saved: &template::SavedMemory,
    req: &mut CreateSandbox,
) -> Result<()> {
    if req.isolation != Some(Isolation::Gvisor) {
        return Err(CoreError::Invalid(format!(
            "template {name} carries a gVisor sandbox's memory: only the gvisor backend can \
             start it (leave isolation out)"
        )));
    }
    if !req.publish.is_empty() {
        return Err(CoreError::Invalid(format!(
            "template {name} carries saved memory: a sandbox started from it is on `none`, \
             which the host cannot reach, so it publishes no ports (a fresh one on \
             `--network nat` does)"
        )));
    }
    match req.home_volume {
        Some(home) if home != saved.home_volume => Err(CoreError::Invalid(format!(
            "template {name} carries memory saved {} the owner's home volume: leave \
             home_volume out",
            if saved.home_volume { "with" } else { "without" }
        ))),
        _ => {
            req.home_volume = Some(saved.home_volume);
            Ok(())
        }
    }
}
