//! Shared terminals: a token that lets a second client join one process's terminal,
//! read-only or read-write, until the owner revokes it or the process ends.
//!
//! The token is the whole credential (a guest needs no API key), so only its hash is
//! kept, and it is compared whole. A share names one process of one sandbox by its
//! identity, not its pid: the pid and the serial the agent gave the process, which is
//! never reused. Pids are: once a fork loop wraps the counter, a share naming a pid alone
//! would join whatever new process got it, replay what that one printed (a password) and
//! type into it. A guest sees what the process writes from the moment the share was
//! made, not what came before. Shares live as long as the daemon and their process: a
//! revocation ends the guests connected with it, and a share whose process ended is
//! dropped when it is next listed or joined.

use std::sync::Arc;

use tokio::sync::watch;
use warren_types::api::{SandboxState, ShareInfo, ShareRequest};

use crate::tokens::{same_secret, sha256_hex};
use crate::{now_ms, random_hex, rfc3339, Caller, CoreError, Manager, Result};

/// One share, as the manager keeps it.
#[derive(Debug)]
pub(crate) struct Share {
    info: ShareInfo,
    /// SHA-256 of the token.
    token_hash: String,
    tenant: String,
    /// The agent's serial of the shared process.
    serial: u64,
    /// Where the process's output stood when the share was made.
    from: u64,
    revoked: watch::Sender<bool>,
}

/// What a guest joining with a token may do.
#[derive(Debug)]
pub struct Guest {
    /// Scoped to the shared sandbox.
    pub caller: Caller,
    pub sandbox: String,
    pub pid: u32,
    /// The process's serial: a process that took its pid since is another one.
    pub serial: u64,
    /// Replay from this output offset: what was printed before the share, stays unseen.
    pub from: u64,
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
        req: &ShareRequest,
    ) -> Result<ShareInfo> {
        let (id, client) = self.agent_client(who, key).await?;
        let procs = client.list_processes().await?;
        let p = procs.iter().find(|p| p.pid == pid && p.exit.is_none());
        let p = match p {
            None => {
                return Err(CoreError::Missing(format!(
                    "no running process {pid} in sandbox {id}; `warren ps` lists them"
                )))
            }
            Some(p) if !p.tty => {
                return Err(CoreError::Invalid(format!(
                    "process {pid} has no terminal to share; start it with a tty"
                )))
            }
            Some(p) => p,
        };
        let token = format!("wsh_{}", random_hex(24)?);
        let token_hash = sha256_hex(&token);
        let info = ShareInfo {
            id: token_hash[..16].to_string(),
            token: Some(token),
            sandbox: id,
            pid,
            write: req.write,
            created_at: rfc3339(now_ms()),
        };
        let (revoked, _) = watch::channel(false);
        let mut kept = info.clone();
        kept.token = None;
        self.shares().push(Arc::new(Share {
            info: kept,
            token_hash,
            tenant: who.tenant.clone(),
            serial: p.serial,
            // The oldest output the agent holds, or only what comes next.
            from: if req.screen { 0 } else { p.output_end },
            revoked,
        }));
        Ok(info)
    }

    /// The shares of a sandbox (without their tokens); those whose process has ended
    /// are dropped.
    pub async fn list_shares(&self, who: &Caller, key: &str) -> Result<Vec<ShareInfo>> {
        let info = self.get(who, key)?;
        let mine: Vec<Arc<Share>> = self
            .shares()
            .iter()
            .filter(|s| s.info.sandbox == info.id && s.tenant == who.tenant)
            .cloned()
            .collect();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let running = match self.agent_client(who, &info.id).await {
            Ok((_, client)) => client.list_processes().await?,
            // Not running: its processes are gone, and so are its shares.
            Err(CoreError::InvalidState(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let alive = |s: &Share| {
            running
                .iter()
                .any(|p| p.pid == s.info.pid && p.serial == s.serial && p.exit.is_none())
        };
        let (live, ended): (Vec<_>, Vec<_>) = mine.into_iter().partition(|s| alive(s));
        for s in &ended {
            self.drop_share(s);
        }
        Ok(live.iter().map(|s| s.info.clone()).collect())
    }

    fn drop_share(&self, s: &Share) {
        let _ = s.revoked.send(true);
        self.shares()
            .retain(|x| !same_secret(&x.token_hash, &s.token_hash));
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
            .ok_or_else(|| {
                CoreError::Missing(format!("no share {share_id:?} of sandbox {}", info.id))
            })?;
        let s = shares.remove(i);
        let _ = s.revoked.send(true);
        Ok(())
    }

    /// What the holder of `token` may join, if the share stands, its sandbox runs and
    /// its process is still the one shared.
    pub async fn join_share(&self, token: &str) -> Option<Guest> {
        let hash = sha256_hex(token);
        let s = self
            .shares()
            .iter()
            .find(|s| same_secret(&s.token_hash, &hash))?
            .clone();
        let caller = Caller {
            tenant: s.tenant.clone(),
            only_sandbox: Some(s.info.sandbox.clone()),
            operator: false,
            host_root: false,
        };
        let running = self
            .get(&caller, &s.info.sandbox)
            .is_ok_and(|i| i.state == SandboxState::Running);
        if !running {
            return None;
        }
        let same_process = match self.agent_client(&caller, &s.info.sandbox).await {
            Ok((_, client)) => client.list_processes().await.is_ok_and(|ps| {
                ps.iter()
                    .any(|p| p.pid == s.info.pid && p.serial == s.serial && p.exit.is_none())
            }),
            Err(_) => false,
        };
        if !same_process {
            self.drop_share(&s);
            return None;
        }
        Some(Guest {
            caller,
            sandbox: s.info.sandbox.clone(),
            pid: s.info.pid,
            serial: s.serial,
            from: s.from,
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
