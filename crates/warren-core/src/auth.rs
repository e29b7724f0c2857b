//! Who is asking: the [`Caller`] an API key, a sandbox's access token or a signed URL
//! stands for, and the keys themselves (made here; listed and revoked in `keys`).

use super::*;

/// Who is asking: a tenant sees and touches only its own sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// Set when the caller authenticated with one sandbox's access token: it may act on
    /// that sandbox only.
    pub only_sandbox: Option<String>,
    /// The host's operator (root on the unix socket, or an operator key): no quota, any
    /// host port, the whole host's metrics, templates for every tenant.
    pub operator: bool,
    /// The host's root itself, on the daemon's unix socket: it may name paths of the
    /// host (host directory mounts). No key confers this, an operator's neither: a key
    /// travels, and whoever holds it need not be on the host.
    pub host_root: bool,
}

impl Caller {
    /// A tenant's caller.
    pub fn tenant(name: &str) -> Self {
        Self {
            tenant: name.to_string(),
            only_sandbox: None,
            operator: false,
            host_root: false,
        }
    }

    /// The holder of sandbox `id`'s access token (or of a URL signed with it), in
    /// tenant `tenant`: it reaches that sandbox only.
    pub(crate) fn sandbox(tenant: String, id: String) -> Self {
        Self {
            tenant,
            only_sandbox: Some(id),
            operator: false,
            host_root: false,
        }
    }

    /// The operator, acting in tenant `name`.
    pub fn operator(name: &str) -> Self {
        Self {
            operator: true,
            ..Self::tenant(name)
        }
    }

    /// The host's root on the unix socket, acting in tenant `name`: the operator, who may
    /// also mount host directories.
    pub fn host_root(name: &str) -> Self {
        Self {
            host_root: true,
            ..Self::operator(name)
        }
    }

    /// Refuses a caller that holds one sandbox's access token only: `what` (keys,
    /// sessions) belongs to the tenant, which that token does not stand for.
    pub(crate) fn tenant_wide(&self, what: &str) -> Result<()> {
        if self.only_sandbox.is_some() {
            return Err(CoreError::Forbidden(format!(
                "a sandbox's access token cannot manage {what}; send the tenant's API key \
                 (Authorization: Bearer <api key>)"
            )));
        }
        Ok(())
    }
}

impl Manager {
    /// A new API key for `tenant` (created if new), an operator's when `operator` (see
    /// [`Caller::operator`]). Only its hash is stored: the key is shown this once.
    pub fn create_api_key(&self, tenant: &str, operator: bool) -> Result<String> {
        if !valid_owner(tenant) || tenant.starts_with('@') {
            return Err(CoreError::Invalid(format!(
                "tenant {tenant:?}: use letters, digits and - _ . @ +, not starting with @"
            )));
        }
        let key = format!("wrn_{}", random_hex(24)?);
        self.store()
            .add_api_key(&sha256_hex(&key), tenant, operator, now_ms())?;
        Ok(key)
    }

    /// The caller an API key stands for.
    pub fn authenticate(&self, api_key: &str) -> Option<Caller> {
        let (tenant, operator) = self.store().tenant_of_key(&sha256_hex(api_key)).ok()??;
        Some(Caller {
            operator,
            ..Caller::tenant(&tenant)
        })
    }

    /// A caller limited to sandbox `id`, if `token` is its access token.
    pub fn authenticate_sandbox(&self, id: &str, token: &str) -> Option<Caller> {
        let r = self.store().get(id).ok()??;
        if r.state == SandboxState::Terminated
            || !self.keys.verify(TokenKind::Access, &r.id, &r.access, token)
        {
            return None;
        }
        Some(Caller::sandbox(r.tenant, r.id))
    }

    /// The sandbox whose access token `signed` (given a token) says signed a file URL
    /// that names no sandbox: the SDK builds its signed URLs on `E2B_SANDBOX_URL`, one URL
    /// for every sandbox. Every sandbox not terminated is looked at: one HMAC and one
    /// hash each, which the caller keeps to a few lookups a second.
    pub fn sandbox_signed_by(&self, signed: impl Fn(&str) -> bool) -> Option<String> {
        self.store()
            .list_live(None)
            .ok()?
            .into_iter()
            .find(|r| {
                self.keys
                    .token(TokenKind::Access, &r.id, &r.access)
                    .is_some_and(|t| signed(&t))
            })
            .map(|r| r.id)
    }

    /// The caller a file URL signed with sandbox `id`'s access token acts as, when
    /// `signed` (given that token) says the signature is right. A sandbox whose token is
    /// kept only as a hash (made by an old version) cannot check signatures.
    pub fn authenticate_signed(
        &self,
        id: &str,
        signed: impl FnOnce(&str) -> bool,
    ) -> Option<Caller> {
        let r = self.store().get(id).ok()??;
        if r.state == SandboxState::Terminated {
            return None;
        }
        let token = self.keys.token(TokenKind::Access, &r.id, &r.access)?;
        if !signed(&token) {
            return None;
        }
        Some(Caller::sandbox(r.tenant, r.id))
    }
}
