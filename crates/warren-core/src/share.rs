//! Shared terminals: a token that lets a second client join one process's terminal,
//! read-only or read-write, until the owner revokes it.
//!
//! The token is the whole credential (a guest needs no API key), so only its hash is
//! kept, and a share names exactly one process of one sandbox. Shares live as long as
//! the daemon: a revocation also ends the guests connected with it.

use std::sync::Arc;

use tokio::sync::watch;
use warren_types::api::{SandboxState, ShareInfo};

use crate::{now_ms, random_hex, rfc3339, sha256_hex, Caller, CoreError, Manager, Result};

/// One share, as the manager keeps it.
#[derive(Debug)]
pub(crate) struct Share {
    info: ShareInfo,
    tenant: String,
    revoked: watch::Sender<bool>,
}

/// What a guest joining with a token may do.
#[derive(Debug)]
pub struct Guest {
    /// Scoped to the shared sandbox.
    pub caller: Caller,
    pub sandbox: String,
    pub pid: u32,
    pub write: bool,
    /// Turns true when the share is revoked.
    pub revoked: watch::Receiver<bool>,
}

impl Manager {
    fn shares(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Share>>> {
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shares the terminal of process `pid`; the token is in the answer only.
    pub async fn share_process(
        &self,
        who: &Caller,
        key: &str,
        pid: u32,
        write: bool,
    ) -> Result<ShareInfo> {
        let (id, client) = self.agent(who, key).await?;
        let procs = client.list_processes().await?;
        let p = procs.iter().find(|p| p.pid == pid && p.exit.is_none());
        match p {
            None => return Err(CoreError::NotFound(format!("process {pid}"))),
            Some(p) if !p.tty => {
                return Err(CoreError::Invalid(format!(
                    "process {pid} has no terminal to share; start it with a tty"
                )))
            }
            Some(_) => {}
        }
        let token = format!("wsh_{}", random_hex(24)?);
        let info = ShareInfo {
            id: sha256_hex(&token)[..16].to_string(),
            token: Some(token),
            sandbox: id,
            pid,
            write,
            created_at: rfc3339(now_ms()),
        };
        let (revoked, _) = watch::channel(false);
        let mut kept = info.clone();
        kept.token = None;
        self.shares().push(Arc::new(Share {
            info: kept,
            tenant: who.tenant.clone(),
            revoked,
        }));
        Ok(info)
    }

    /// The shares of a sandbox (without their tokens).
    pub fn list_shares(&self, who: &Caller, key: &str) -> Result<Vec<ShareInfo>> {
        let info = self.get(who, key)?;
        Ok(self
            .shares()
            .iter()
            .filter(|s| s.info.sandbox == info.id)
            .map(|s| s.info.clone())
            .collect())
    }

    /// Ends a share and disconnects its guests.
    pub fn revoke_share(&self, who: &Caller, key: &str, share_id: &str) -> Result<()> {
        let info = self.get(who, key)?;
        let mut shares = self.shares();
        let i = shares
            .iter()
            .position(|s| {
                s.info.sandbox == info.id && s.info.id == share_id && s.tenant == who.tenant
            })
            .ok_or_else(|| CoreError::NotFound(format!("share {share_id}")))?;
        let s = shares.remove(i);
        let _ = s.revoked.send(true);
        Ok(())
    }

    /// What the holder of `token` may join, if the share stands and its sandbox runs.
    pub fn join_share(&self, token: &str) -> Option<Guest> {
        let id = &sha256_hex(token)[..16];
        let s = self.shares().iter().find(|s| s.info.id == id)?.clone();
        let caller = Caller {
            tenant: s.tenant.clone(),
            only_sandbox: Some(s.info.sandbox.clone()),
            operator: false,
        };
        let running = self
            .get(&caller, &s.info.sandbox)
            .is_ok_and(|i| i.state == SandboxState::Running);
        running.then(|| Guest {
            caller,
            sandbox: s.info.sandbox.clone(),
            pid: s.info.pid,
            write: s.info.write,
            revoked: s.revoked.subscribe(),
        })
    }

    /// Drops the shares of a sandbox that ended.
    pub(crate) fn forget_shares(&self, sandbox: &str) {
        self.shares().retain(|s| {
            let keep = s.info.sandbox != sandbox;
            if !keep {
                let _ = s.revoked.send(true);
            }
            keep
        });
    }
}
