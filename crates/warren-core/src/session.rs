//! Sessions: a client (a user, an agent) attached to its default sandbox.
//!
//! A platform opens a session when its user shows up and sends heartbeats while the user
//! is there; the session then walks down by itself as the user goes away, each state with
//! its own timeout (by default 5 min active without a heartbeat, 1 h detached, 24 h
//! suspended):
//!
//! ```text
//! active → detached (sandbox runs on) → suspended (sandbox paused) → terminated (removed)
//!   ↑__________________ heartbeat / attach ________________|
//! ```
//!
//! Each client has one default sandbox per tenant (owner = the client, name `default`),
//! made on first use and found again on later sessions. `release` ends the session: with
//! keep-alive the sandbox stays for the client's next session, otherwise it goes (unless
//! another live session still uses it).

use warren_types::api::{CreateSandbox, OpenSession, SandboxState, SessionInfo, SessionState};

use crate::store::SessionRow;
use crate::{after, now_ms, random_hex, rfc3339, valid_owner, Caller, CoreError, Manager, Result};

fn state_str(s: SessionState) -> &'static str {
    match s {
        SessionState::Active => "active",
        SessionState::Detached => "detached",
        SessionState::Suspended => "suspended",
        SessionState::Terminated => "terminated",
    }
}

fn parse_state(s: &str) -> SessionState {
    match s {
        "active" => SessionState::Active,
        "detached" => SessionState::Detached,
        "suspended" => SessionState::Suspended,
        _ => SessionState::Terminated,
    }
}

/// The name of every client's default sandbox.
const DEFAULT_NAME: &str = "default";

impl Manager {
    fn session_info(&self, who: &Caller, s: &SessionRow) -> Result<SessionInfo> {
        Ok(SessionInfo {
            id: s.id.clone(),
            client: s.client.clone(),
            state: parse_state(&s.state),
            sandbox: self.get(who, &s.sandbox)?,
            timeouts: s.timeouts,
            created_at: rfc3339(s.created_at),
            last_seen_at: rfc3339(s.last_seen_at),
        })
    }

    fn find_session(&self, who: &Caller, id: &str) -> Result<SessionRow> {
        self.store()
            .live_sessions(Some(&who.tenant))?
            .into_iter()
            .find(|s| s.id == id)
            .filter(|s| who.only_sandbox.as_ref().is_none_or(|o| *o == s.sandbox))
            .ok_or_else(|| CoreError::Missing(format!("no session {id:?}")))
    }

    /// Attaches `client` to its default sandbox, making it on first use. A client with a
    /// live session gets that session back, active again.
    pub async fn open_session(&self, who: &Caller, req: OpenSession) -> Result<SessionInfo> {
        who.tenant_wide("sessions")?;
        if !valid_owner(&req.client) {
            return Err(CoreError::Invalid(format!(
                "client {:?}: use 1-128 letters, digits and - _ . @ + (not . or ..)",
                req.client
            )));
        }
        let existing = self
            .store()
            .live_sessions(Some(&who.tenant))?
            .into_iter()
            .find(|s| s.client == req.client);
        if let Some(s) = existing {
            return self.heartbeat(who, &s.id).await;
        }
        let sandbox = CreateSandbox {
            owner: Some(req.sandbox.owner.clone().unwrap_or(req.client.clone())),
            name: Some(req.sandbox.name.clone().unwrap_or(DEFAULT_NAME.into())),
            get_or_create: true,
            ..req.sandbox
        };
        let (info, _) = self.create(who, sandbox).await?;
        let now = now_ms();
        let row = SessionRow {
            id: format!("ses_{}", random_hex(12)?),
            tenant: who.tenant.clone(),
            client: req.client,
            sandbox: info.id.clone(),
            state: state_str(SessionState::Active).into(),
            timeouts: req.timeouts.unwrap_or_default(),
            created_at: now,
            last_seen_at: now,
            since: now,
        };
        self.store().put_session(&row)?;
        if let Ok(r) = self.resolve(who, &info.id) {
            self.event(
                &r,
                "session",
                format!("{} attached ({})", row.client, row.id),
            );
        }
        self.session_info(who, &row)
    }

    pub fn sessions(&self, who: &Caller) -> Result<Vec<SessionInfo>> {
        let rows = self.store().live_sessions(Some(&who.tenant))?;
        Ok(rows
            .iter()
            .filter_map(|s| self.session_info(who, s).ok())
            .collect())
    }

    pub fn session(&self, who: &Caller, id: &str) -> Result<SessionInfo> {
        let s = self.find_session(who, id)?;
        self.session_info(who, &s)
    }

    /// The client is there: the session is active again, its sandbox resumed if the
    /// session had been suspended.
    pub async fn heartbeat(&self, who: &Caller, id: &str) -> Result<SessionInfo> {
        let mut s = self.find_session(who, id)?;
        let sandbox = self.resolve(who, &s.sandbox)?;
        match sandbox.state {
            SandboxState::Paused => {
                self.resume(who, &s.sandbox).await?;
            }
            SandboxState::Stopped => {
                self.start(who, &s.sandbox).await?;
            }
            _ => {}
        }
        let now = now_ms();
        if parse_state(&s.state) != SessionState::Active {
            s.since = now;
        }
        s.state = state_str(SessionState::Active).into();
        s.last_seen_at = now;
        self.store().put_session(&s)?;
        self.store().touch(&s.sandbox, now)?;
        self.session_info(who, &s)
    }

    /// The client says it is leaving for now; the sandbox runs on.
    pub fn detach_session(&self, who: &Caller, id: &str) -> Result<SessionInfo> {
        let mut s = self.find_session(who, id)?;
        self.move_session(&mut s, SessionState::Detached)?;
        self.session_info(who, &s)
    }

    fn move_session(&self, s: &mut SessionRow, to: SessionState) -> Result<()> {
        s.state = state_str(to).into();
        s.since = now_ms();
        self.store().put_session(s)?;
        // Bound first: the store's guard must be gone before `event` takes it again.
        let found = self.store().get(&s.sandbox);
        if let Ok(Some(r)) = found {
            self.event(
                &r,
                "session",
                format!("{} {} ({})", s.client, state_str(to), s.id),
            );
        }
        Ok(())
    }

    /// Ends the session. Without `keep_alive` its sandbox goes too, unless another live
    /// session uses it.
    pub async fn release_session(&self, who: &Caller, id: &str, keep_alive: bool) -> Result<()> {
        let mut s = self.find_session(who, id)?;
        self.move_session(&mut s, SessionState::Terminated)?;
        if !keep_alive && !self.sandbox_in_session(&s.sandbox)? {
            match self.terminate(who, &s.sandbox).await {
                Ok(()) | Err(CoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sandbox_in_session(&self, sandbox: &str) -> Result<bool> {
        Ok(self
            .store()
            .live_sessions(None)?
            .iter()
            .any(|s| s.sandbox == sandbox))
    }

    /// Moves sessions along when their state's time is up (called by the reaper).
    pub(crate) async fn reap_sessions(&self) {
        let Ok(rows) = self.store().live_sessions(None) else {
            return;
        };
        let now = now_ms();
        for mut s in rows {
            let who = Caller::tenant(&s.tenant);
            let t = s.timeouts;
            match parse_state(&s.state) {
                SessionState::Active if after(s.last_seen_at, t.active_secs) <= now => {
                    let _ = self.move_session(&mut s, SessionState::Detached);
                }
                SessionState::Detached if after(s.since, t.detached_secs) <= now => {
                    let _ = self.pause(&who, &s.sandbox).await;
                    let _ = self.move_session(&mut s, SessionState::Suspended);
                }
                SessionState::Suspended if after(s.since, t.suspended_secs) <= now => {
                    let _ = self.move_session(&mut s, SessionState::Terminated);
                    if !self.sandbox_in_session(&s.sandbox).unwrap_or(true) {
                        let _ = self.terminate(&who, &s.sandbox).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// Live sessions by state, for metrics.
    pub(crate) fn session_counts(&self, tenant: Option<&str>) -> [usize; 3] {
        let mut n = [0; 3];
        for s in self.store().live_sessions(tenant).unwrap_or_default() {
            match parse_state(&s.state) {
                SessionState::Active => n[0] += 1,
                SessionState::Detached => n[1] += 1,
                SessionState::Suspended => n[2] += 1,
                SessionState::Terminated => {}
            }
        }
        n
    }
}
