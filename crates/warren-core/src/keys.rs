//! Listing and revoking API keys. A key is named by the start of its hash (see
//! [`ApiKeyInfo::id`]), never shown again after it is made. Every request on TCP looks its
//! key up in the store, so a key revoked here fails from the next request on, and a web
//! console session signed in with it ends at once; streams opened with it (terminals,
//! exec and attach output, events) are told of each revocation and end too.
//!
//! A tenant sees and revokes its own keys only; another tenant's look missing, so ids do
//! not leak. An operator's keys are an operator's business: a tenant's key of the same
//! tenant neither lists nor revokes them. The host's root on the unix socket sees every
//! tenant's.

use super::*;
use crate::store::API_KEY_ID_LEN;
use warren_types::api::ApiKeyInfo;

impl Manager {
    /// The keys the caller may see: its tenant's, or for the host's root every tenant's
    /// (or `tenant`'s).
    pub fn api_keys(&self, who: &Caller, tenant: Option<&str>) -> Result<Vec<ApiKeyInfo>> {
        who.tenant_wide("API keys")?;
        let of = match tenant {
            _ if who.host_root => tenant,
            Some(t) if t != who.tenant => {
                return Err(CoreError::Missing(format!(
                    "no tenant {t:?} among this key's; a key lists its own tenant's keys \
                     (leave out tenant)"
                )))
            }
            _ => Some(who.tenant.as_str()),
        };
        Ok(self.store().api_keys(of, who.operator)?)
    }

    /// Revokes the key named `id`: it authenticates nothing from now on.
    pub fn revoke_api_key(&self, who: &Caller, id: &str) -> Result<()> {
        who.tenant_wide("API keys")?;
        if id.len() != API_KEY_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            // Not echoed: it may be a key pasted by mistake.
            return Err(CoreError::Invalid(format!(
                "that is not a key's id: an id is {API_KEY_ID_LEN} hex digits, as \
                 `warren keys ls` shows them (a key itself is never asked for)"
            )));
        }
        let of = (!who.host_root).then_some(who.tenant.as_str());
        match self.store().remove_api_key(id, of, who.operator)? {
            0 => Err(CoreError::Missing(format!(
                "no API key {id}; `warren keys ls` lists them"
            ))),
            _ => {
                self.revocations.send_modify(|n| *n += 1);
                Ok(())
            }
        }
    }

    /// Changes each time a key is revoked: a stream opened with a key waits on it, then
    /// checks its key again.
    pub fn key_revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }
}
