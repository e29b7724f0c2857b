//! Port links: how a browser reaches a web server inside a sandbox (JupyterLab, an
//! editor, a preview) through the daemon's own listener, on a host of its own
//! (`PORT-ID.HOST`), without an API key in the page.
//!
//! A signed-in caller asks for a link to one port of one of its sandboxes and gets a
//! one-time code, good for [`CODE_TTL_MS`]. The browser brings the code to the port's
//! host once; the daemon trades it for a grant, kept in a cookie of that host only, and
//! every later request of that browser to that port carries it. The code is the only
//! secret that ever sits in a URL, and it is spent on first use. Only hashes are kept,
//! compared whole. A grant names one sandbox and one port, lasts [`GRANT_TTL_MS`] and
//! lives as long as the daemon: a restart asks for a new link.

use crate::tokens::{same_secret, sha256_hex};
use crate::{now_ms, random_hex, Caller, Manager, Result};

/// How long a link's code may wait for its browser.
pub const CODE_TTL_MS: i64 = 60_000;
/// How long a grant lasts once the code is spent.
pub const GRANT_TTL_MS: i64 = 12 * 3_600_000;
/// Most codes and grants kept at once; the oldest go first past it.
const MAX_KEPT: usize = 4096;

#[derive(Debug)]
pub(crate) struct PortGrant {
    /// SHA-256 of the code or grant.
    hash: String,
    sandbox: String,
    port: u16,
    expires_ms: i64,
    /// A code not yet spent (true) or a grant (false).
    code: bool,
}

/// A one-time link to a sandbox's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortLink {
    /// The sandbox's id (its port's host is `PORT-ID.HOST`).
    pub sandbox: String,
    pub port: u16,
    /// Spent by the first request that carries it.
    pub code: String,
}

impl Manager {
    fn port_grants(&self) -> std::sync::MutexGuard<'_, Vec<PortGrant>> {
        self.port_grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep_grant(&self, g: PortGrant) {
        let now = now_ms();
        let mut all = self.port_grants();
        all.retain(|g| g.expires_ms > now);
        if all.len() >= MAX_KEPT {
            all.remove(0);
        }
        all.push(g);
    }

    /// A one-time code that lets a browser reach `port` of `who`'s sandbox `key` through
    /// the daemon's listener (see the module doc).
    pub fn port_link(&self, who: &Caller, key: &str, port: u16) -> Result<PortLink> {
        if port == 0 {
            return Err(crate::CoreError::Invalid(
                "a port link names a port of 1-65535".into(),
            ));
        }
        let r = self.resolve(who, key)?;
        let code = format!("wpl_{}", random_hex(24)?);
        self.keep_grant(PortGrant {
            hash: sha256_hex(&code),
            sandbox: r.id.clone(),
            port,
            expires_ms: now_ms() + CODE_TTL_MS,
            code: true,
        });
        Ok(PortLink {
            sandbox: r.id,
            port,
            code,
        })
    }

    /// Spends a link's `code` on `port` of sandbox `id`: the grant a browser then keeps,
    /// or `None` when the code is unknown, spent, expired or for another port.
    pub fn redeem_port_link(&self, code: &str, id: &str, port: u16) -> Option<String> {
        let hash = sha256_hex(code);
        let now = now_ms();
        {
            let mut all = self.port_grants();
            let i = all.iter().position(|g| {
                g.code
                    && g.expires_ms > now
                    && g.sandbox == id
                    && g.port == port
                    && same_secret(&g.hash, &hash)
            })?;
            all.remove(i);
        }
        let grant = format!("wpg_{}", random_hex(24).ok()?);
        self.keep_grant(PortGrant {
            hash: sha256_hex(&grant),
            sandbox: id.to_string(),
            port,
            expires_ms: now + GRANT_TTL_MS,
            code: false,
        });
        Some(grant)
    }

    /// Whether `grant` lets its holder reach `port` of sandbox `id`.
    pub(crate) fn port_granted(&self, grant: &str, id: &str, port: u16) -> bool {
        let hash = sha256_hex(grant);
        let now = now_ms();
        self.port_grants().iter().any(|g| {
            !g.code
                && g.expires_ms > now
                && g.sandbox == id
                && g.port == port
                && same_secret(&g.hash, &hash)
        })
    }
}
