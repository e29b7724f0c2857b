//! Tenants as a whole, for the host's root on the unix socket: listed with what each
//! holds, and removed with everything they hold.
//!
//! A tenant exists once it is given an API key or something is made for it on the unix
//! socket. Removing one revokes its keys first (so nothing new arrives while the rest
//! goes, and its open streams and console sessions end), then removes its sandboxes,
//! its owners' home volumes, the templates it made for itself and its snapshots (kept
//! when asked: snapshots are sandbox state, and a tenant of the same name made later has
//! them again), and forgets its owners' SSH keys. Templates it made for every tenant
//! stay, since other tenants' sandboxes may use them; they are named in the answer. A
//! removal cut short (a template in use, a full disk) says what failed; run again, it
//! finishes the job.

use std::collections::BTreeMap;

use warren_runtime::template::{self, TemplateKind, TemplateMeta};
use warren_types::api::{TenantInfo, TenantRemoval};

use crate::templates::template_error;
use crate::{Caller, CoreError, Manager, Result};

impl Manager {
    /// Every tenant known to the daemon, by name, with what it holds.
    pub async fn tenants(&self, who: &Caller) -> Result<Vec<TenantInfo>> {
        host_root_only(who)?;
        let mut all: BTreeMap<String, TenantInfo> = BTreeMap::new();
        let store = self.store();
        for (name, created_at) in store.tenants()? {
            all.entry(name.clone()).or_default().created_at = Some(created_at);
        }
        for k in store.api_keys(None, true)? {
            all.entry(k.tenant).or_default().keys += 1;
        }
        for r in store.list_live(None)? {
            if r.tenant != crate::POOL_TENANT {
                all.entry(r.tenant).or_default().sandboxes += 1;
            }
        }
        drop(store);
        for meta in self.all_templates()? {
            let Some(tenant) = meta.tenant.clone() else {
                continue;
            };
            let t = all.entry(tenant).or_default();
            match meta.kind {
                TemplateKind::Snapshot => t.snapshots += 1,
                _ => t.templates += 1,
            }
        }
        for tenant in self.volume_tenants() {
            all.entry(tenant).or_default().volumes += 1;
        }
        Ok(all
            .into_iter()
            .map(|(name, t)| TenantInfo { name, ..t })
            .collect())
    }

    /// Removes tenant `name` and what it holds (see the module doc).
    pub async fn remove_tenant(
        &self,
        who: &Caller,
        name: &str,
        keep_snapshots: bool,
    ) -> Result<TenantRemoval> {
        host_root_only(who)?;
        let mut out = TenantRemoval {
            name: name.to_string(),
            ..Default::default()
        };
        let known = self.tenants(who).await?.into_iter().any(|t| t.name == name);
        if !known {
            return Err(CoreError::Missing(format!(
                "no tenant {name:?}; `warren tenants ls` lists them"
            )));
        }
        // Its keys first: nothing new arrives while the rest goes.
        let (keys, _ssh) = self.store().remove_tenant(name)?;
        out.keys = keys as u64;
        self.revocations.send_modify(|n| *n += 1);

        let as_tenant = Caller::host_root(name);
        let live = self.store().list_live(Some(name))?;
        for r in live {
            match self.terminate(&as_tenant, &r.id).await {
                Ok(()) => out.sandboxes += 1,
                // Gone meanwhile (its own timeout, another removal).
                Err(CoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for v in self.volumes(&as_tenant).await? {
            self.remove_volume(&as_tenant, &v.owner).await?;
            out.volumes += 1;
        }
        for meta in self.all_templates()? {
            if meta.tenant.as_deref() != Some(name) {
                continue;
            }
            let shown = template::display_name(&meta.name).to_string();
            match meta.kind {
                TemplateKind::Snapshot if keep_snapshots => {
                    out.kept_snapshots.push(shown);
                    continue;
                }
                _ if !meta.private && meta.kind != TemplateKind::Snapshot => {
                    out.kept_templates.push(shown);
                    continue;
                }
                _ => {}
            }
            self.remove_tenant_template(&meta).await?;
            match meta.kind {
                TemplateKind::Snapshot => out.snapshots += 1,
                _ => out.templates += 1,
            }
        }
        tracing::info!(
            tenant = name,
            keys = out.keys,
            sandboxes = out.sandboxes,
            volumes = out.volumes,
            templates = out.templates,
            snapshots = out.snapshots,
            "tenant removed"
        );
        Ok(out)
    }

    /// Removes one of a removed tenant's templates, with the warm pools made of it.
    async fn remove_tenant_template(&self, meta: &TemplateMeta) -> Result<()> {
        for pool in self.pools() {
            if pool.spec.template == meta.key {
                self.remove_pool(pool.spec).await?;
            }
        }
        let users = self.template_users(&meta.key, &Caller::operator(""));
        if !users.is_empty() {
            return Err(CoreError::InvalidState(format!(
                "template {} is in use by {}: remove {} (`warren rm`), then the tenant again",
                meta.name,
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            )));
        }
        template::remove(&self.config.paths, &meta.key).map_err(template_error)
    }

    fn all_templates(&self) -> Result<Vec<TemplateMeta>> {
        template::list(&self.config.paths).map_err(template_error)
    }
}

/// Tenants are the host's business: its root's, on the unix socket.
fn host_root_only(who: &Caller) -> Result<()> {
    if who.host_root {
        Ok(())
    } else {
        Err(CoreError::Forbidden(
            "tenants are listed and removed by the host's root, on the daemon's unix socket".into(),
        ))
    }
}
