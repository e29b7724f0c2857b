//! Public keys of the SSH gateway: each is a tenant's, for one of its owners, who signs in
//! with it as `OWNER+NAME`. Keys are parsed and fingerprinted by the caller (the server,
//! which speaks SSH); here they are checked against the tenant and kept.

use super::*;
use warren_types::api::SshKey;

/// At most this many keys per tenant.
const MAX_SSH_KEYS: usize = 10_000;

impl Manager {
    /// Registers `key` for its owner; the same key again answers the one kept.
    pub fn add_ssh_key(&self, who: &Caller, key: SshKey) -> Result<SshKey> {
        who.tenant_wide("SSH keys")?;
        if !valid_owner(&key.owner) {
            return Err(CoreError::Invalid(format!(
                "owner {:?}: use 1-128 letters, digits and - _ . @ (not . or ..)",
                key.owner
            )));
        }
        if key.owner.contains('+') {
            return Err(CoreError::Invalid(format!(
                "owner {:?}: an owner that signs in over SSH has no '+' in its name \
                 (the login name is OWNER+SANDBOX)",
                key.owner
            )));
        }
        if let Some(t) = &key.template {
            // Checked now, as the tenant sees templates: a login must not fail on it later.
            self.resolve_template(who, t).map_err(|e| match e {
                CoreError::TemplateNotFound(_) => CoreError::UnknownTemplate(t.clone()),
                e => e,
            })?;
        }
        let store = self.store();
        if let Some(kept) = store
            .ssh_keys(&who.tenant, Some(&key.owner))?
            .into_iter()
            .find(|k| k.fingerprint == key.fingerprint)
        {
            return Ok(kept);
        }
        // A key names one tenant's owner: registered by two for the same owner name, it
        // could sign in to neither, and a tenant could lock another's user out with the
        // user's public key alone.
        if store
            .ssh_key_tenants(&key.owner, &key.fingerprint)?
            .iter()
            .any(|(t, _)| *t != who.tenant)
        {
            return Err(CoreError::InvalidState(format!(
                "key {} is registered for owner {} by another tenant; an owner's key signs \
                 in to one tenant only (ask the operator)",
                key.fingerprint, key.owner
            )));
        }
        if store.ssh_keys(&who.tenant, None)?.len() >= MAX_SSH_KEYS {
            return Err(CoreError::Quota(format!(
                "a tenant has at most {MAX_SSH_KEYS} SSH keys; remove some first"
            )));
        }
        let key = SshKey {
            created_at: now_ms(),
            ..key
        };
        store.add_ssh_key(&who.tenant, &key)?;
        Ok(key)
    }

    /// The tenant's keys, of one owner or of all.
    pub fn ssh_keys(&self, who: &Caller, owner: Option<&str>) -> Result<Vec<SshKey>> {
        who.tenant_wide("SSH keys")?;
        Ok(self.store().ssh_keys(&who.tenant, owner)?)
    }

    /// Removes a key of the tenant's (of one owner, or of every owner that has it).
    pub fn remove_ssh_key(
        &self,
        who: &Caller,
        fingerprint: &str,
        owner: Option<&str>,
    ) -> Result<()> {
        who.tenant_wide("SSH keys")?;
        match self
            .store()
            .remove_ssh_key(&who.tenant, fingerprint, owner)?
        {
            0 => Err(CoreError::Missing(format!(
                "no SSH key {fingerprint}; `warren keys ssh ls` lists them"
            ))),
            _ => Ok(()),
        }
    }

    /// Who signs in as `owner` with the key `fingerprint`: the tenant that registered it
    /// for that owner, and the template the key makes sandboxes from. None when no tenant
    /// did, or more than one did (the key then cannot say which tenant is meant).
    pub fn ssh_caller(&self, owner: &str, fingerprint: &str) -> Option<(Caller, Option<String>)> {
        let tenants = self.store().ssh_key_tenants(owner, fingerprint).ok()?;
        match tenants.as_slice() {
            [(tenant, template)] => Some((Caller::tenant(tenant), template.clone())),
            _ => None,
        }
    }

    /// Who a sandbox's processes run as when a request names nobody: its template's
    /// user (`None`: the sandbox's root). File operations made for a login use it too.
    pub fn default_user(
        &self,
        who: &Caller,
        key: &str,
    ) -> Result<Option<warren_types::proto::User>> {
        let r = self.resolve(who, key)?;
        let t = warren_runtime::template::resolve(&self.config.paths, &r.spec.template)
            .map_err(crate::templates::template_error)?;
        Ok(t.meta
            .user
            .as_deref()
            .map(warren_runtime::template::agent_user))
    }
}
