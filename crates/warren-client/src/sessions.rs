//! Sessions: a client's attachment to its own sandbox, kept warm between uses.
//!
//! A session names a client (a user, an agent run); opening one finds that client's
//! sandbox or makes it. While the client is there it sends heartbeats; without them the
//! session becomes `detached` (the sandbox runs on), then `suspended` (paused), then
//! `terminated` (removed), after the session's [`SessionTimeouts`]. Releasing it with
//! `keep_alive` leaves the sandbox running for the client's next session; without,
//! removes it.
//!
//! [`Client::acquire`] does the bookkeeping: it opens the session and sends heartbeats
//! from a task until the [`Lease`] is released or dropped.

use std::time::Duration;

use hyper::Method;
#[cfg(doc)]
use warren_types::api::SessionTimeouts;
use warren_types::api::{OpenSession, ReleaseSession, SessionInfo};

use crate::transport::enc;
use crate::{Client, Error};

fn session_path(id: &str, rest: &str) -> String {
    format!("/v1/sessions/{}{rest}", enc(id))
}

impl Client {
    /// Opens a session for `req.client`: its sandbox, made from `req.sandbox` on first
    /// use and found again afterwards (resumed if it was suspended).
    pub async fn open_session(&self, req: &OpenSession) -> Result<SessionInfo, Error> {
        self.call(Method::POST, "/v1/sessions", Some(req)).await
    }

    /// The tenant's sessions.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, Error> {
        self.call(Method::GET, "/v1/sessions", None::<&()>).await
    }

    /// One session.
    pub async fn session(&self, id: &str) -> Result<SessionInfo, Error> {
        self.call(Method::GET, &session_path(id, ""), None::<&()>)
            .await
    }

    /// Says the client is still there: the session stays (or becomes again) `active`.
    pub async fn heartbeat(&self, id: &str) -> Result<SessionInfo, Error> {
        self.call(Method::POST, &session_path(id, "/heartbeat"), None::<&()>)
            .await
    }

    /// Says the client is going away for now: its sandbox runs on, waiting for it.
    pub async fn detach_session(&self, id: &str) -> Result<SessionInfo, Error> {
        self.call(Method::POST, &session_path(id, "/detach"), None::<&()>)
            .await
    }

    /// Ends a session: with `keep_alive` its sandbox keeps running for the client's next
    /// session, otherwise it is removed.
    pub async fn release_session(&self, id: &str, keep_alive: bool) -> Result<(), Error> {
        let body = ReleaseSession { keep_alive };
        self.call_raw(Method::POST, &session_path(id, "/release"), Some(&body))
            .await
            .map(drop)
    }

    /// Opens a session and keeps it active with a heartbeat every `every` (keep it well
    /// under the session's `active_secs`, 300 s by default; at least 100 ms) until the
    /// lease is released or dropped. Needs a tokio runtime.
    pub async fn acquire(&self, req: &OpenSession, every: Duration) -> Result<Lease, Error> {
        let info = self.open_session(req).await?;
        let (client, id) = (self.clone(), info.id.clone());
        let heartbeats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tick.tick().await;
                // A missed beat is made up by the next; the session's timeouts are far
                // longer than a beat.
                let _ = client.heartbeat(&id).await;
            }
        });
        Ok(Lease {
            client: self.clone(),
            info,
            heartbeats,
        })
    }
}

/// A session kept active by heartbeats: see [`Client::acquire`]. Dropped without
/// [`release`](Self::release), the heartbeats stop and the session ages as a client that
/// went away (detached, then suspended, then terminated).
#[derive(Debug)]
pub struct Lease {
    client: Client,
    info: SessionInfo,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// The session as it was opened.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The id of the session's sandbox: the key for exec, files and terminals.
    pub fn sandbox(&self) -> &str {
        &self.info.sandbox.id
    }

    /// Ends the session: with `keep_alive` the sandbox stays for the client's next
    /// session (back in its pool), otherwise it is removed.
    pub async fn release(self, keep_alive: bool) -> Result<(), Error> {
        self.heartbeats.abort();
        self.client.release_session(&self.info.id, keep_alive).await
    }

    /// Stops the heartbeats and tells the daemon the client went away; the sandbox runs
    /// on until a session of the same client opens again (or the timeouts pass).
    pub async fn detach(self) -> Result<SessionInfo, Error> {
        self.heartbeats.abort();
        self.client.detach_session(&self.info.id).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}
