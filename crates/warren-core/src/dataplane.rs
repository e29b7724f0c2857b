//! The data plane: a caller's way to a running sandbox's processes and files.
//!
//! Every surface that runs commands or touches files in a sandbox (the REST API, the
//! E2B envd API, SSH and SFTP, shared terminals) starts with [`Manager::agent`], so what
//! goes with reaching a sandbox is decided here once rather than by each handler:
//!
//! - tenancy: the caller reaches only a sandbox it may see;
//! - waking: a sandbox set to resume on use is brought up first;
//! - activity: every call counts as use of the sandbox (its idle timeout starts again),
//!   and a stream (a followed process, a terminal, an SFTP session) keeps it counted
//!   active for as long as it lives ([`AgentConn::hold`]);
//! - OOM reporting: whether a process the kernel killed was killed for the sandbox's
//!   memory limit ([`AgentConn::exit`]);
//! - the connection: one per sandbox, made by the first call and shared by the rest.
//!
//! The servers only translate between their wire formats and the agent's protocol.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use warren_runtime::backend::{connect_agent_with, Hello};
use warren_runtime::client::AgentClient;
use warren_types::api::SandboxState;
use warren_types::proto::ExitStatus;

use crate::{now_ms, Caller, Manager, Result};

/// The signal the OOM killer sends.
const SIGKILL: i32 = 9;

/// Keeps a sandbox counted as active while held (an attached terminal or a stream).
#[derive(Debug)]
pub struct ActivityGuard(Arc<AtomicUsize>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running sandbox's agent, reached for one caller's call or stream, with what core
/// needs to account for it: the sandbox, and its OOM count when it was reached (just
/// before a process is started or followed), to tell at the process's exit whether the
/// memory limit killed it.
#[derive(Debug)]
pub struct AgentConn {
    mgr: Arc<Manager>,
    who: Caller,
    id: String,
    client: AgentClient,
    oom_before: u64,
}

/// How a process ended, as reported to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when it was killed.
    pub signal: Option<i32>,
    /// Killed because its timeout passed.
    pub timed_out: bool,
    /// Killed by the OOM killer for the sandbox's memory limit.
    pub oom_killed: bool,
}

impl AgentConn {
    /// The sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent's client, for file calls and for starting or following processes.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The client alone, for a call that keeps it (a watch, an SFTP session) and needs
    /// no exit reported.
    pub fn into_client(self) -> AgentClient {
        self.client
    }

    /// Who file calls act as when the caller names nobody: the template's user (the
    /// one its processes run as), `None` for the sandbox's root. Files a client puts in
    /// a sandbox are then its processes' to change.
    pub fn default_user(&self) -> Result<Option<warren_types::proto::User>> {
        self.mgr.default_user(&self.who, &self.id)
    }

    /// Keeps the sandbox counted as active while the guard lives: for a stream, which
    /// may be idle on the wire for long while someone is still using the sandbox. `None`
    /// when the sandbox stopped meanwhile (nothing is left to keep active).
    pub fn hold(&self) -> Option<ActivityGuard> {
        self.mgr.hold_activity(&self.id)
    }

    /// How a process started or followed on this connection ended: its status, and
    /// whether the memory limit killed it (the sandbox's OOM count rose since the
    /// connection was made).
    pub fn exit(&self, status: &ExitStatus) -> ProcessExit {
        // Only a SIGKILL can be the OOM killer's: the count is read again for those alone.
        let oom_killed = status.signal == Some(SIGKILL)
            && oom_killed(status, self.oom_before, self.mgr.oom_count(&self.id));
        ProcessExit {
            code: status.code,
            signal: status.signal,
            timed_out: status.timed_out,
            oom_killed,
        }
    }
}

/// Whether a process was the OOM killer's: it died of SIGKILL, and the sandbox's OOM
/// count rose while it ran. Another process's OOM kill in the same window is counted
/// too; the kernel tells no more than the count.
fn oom_killed(status: &ExitStatus, before: u64, after: u64) -> bool {
    status.signal == Some(SIGKILL) && after > before
}

impl Manager {
    /// A running sandbox's agent (for exec and file calls). Counts as activity. Callers
    /// share one connection per sandbox, each operation on a channel of its own: a
    /// caller that goes away before its operation ended drops its channel, and the agent
    /// ends what ran on it (a foreground process is killed), as it ends everything on a
    /// connection that closes. An agent too old to be told (an older build's, adopted
    /// after a restart) gets a connection per caller instead. No call waits for a
    /// connection to be made after the sandbox's first.
    pub async fn agent(self: &Arc<Self>, who: &Caller, key: &str) -> Result<AgentConn> {
        let (id, client) = self.agent_client(who, key).await?;
        let oom_before = self.oom_count(&id);
        Ok(AgentConn {
            mgr: self.clone(),
            who: who.clone(),
            id,
            client,
            oom_before,
        })
    }

    /// For a sandbox in trust mode (the process backend), its directory on the host,
    /// where its processes start; `None` for any other.
    pub fn trust_dir(&self, who: &Caller, key: &str) -> Result<Option<std::path::PathBuf>> {
        // Off (the default): no sandbox is in trust mode, and no envd call pays a lookup.
        if self.config.process.is_none() {
            return Ok(None);
        }
        let r = self.resolve(who, key)?;
        Ok(match (r.spec.isolation, &self.config.process) {
            (warren_types::spec::Isolation::Process, Some(c)) => Some(c.dir.join(&r.id)),
            _ => None,
        })
    }

    /// [`Manager::agent`]'s client and the sandbox's id, without the accounting of a
    /// stream: for core's own look at a sandbox's processes.
    pub(crate) async fn agent_client(
        &self,
        who: &Caller,
        key: &str,
    ) -> Result<(String, AgentClient)> {
        let r = self.resolve(who, key)?;
        let r = self.wake_if_asked(r).await?;
        if r.state != SandboxState::Running {
            return Err(Self::invalid(&r, "reach the processes of"));
        }
        // Best-effort: a data directory too full to record the activity must not stop
        // the sandbox's own work (a read, a command that frees space).
        let now = now_ms();
        let _ = self.store().touch(&r.id, now);
        let (socket, known, shared) = self.with_live(&r.id, |l| {
            let shared = l.agent.clone().filter(|c| !c.is_closed());
            if shared.is_some() {
                l.agent_used_ms = now;
            }
            (l.sandbox.agent_socket().to_owned(), l.agent_version, shared)
        })?;
        if let Some(client) = shared {
            return Ok((r.id, client));
        }
        // An agent that once spoke a protocol version always will (a later one, after a
        // restart, is the same build's): its hello is not waited for again.
        let hello = known.map_or(Hello::Ask, Hello::Known);
        let client = connect_agent_with(&socket, hello).await?;
        // Kept for every later call when its agent ends what a caller leaves behind on
        // it; an older agent gets a connection per call, whose closing does that.
        let share = client.ends_dropped_channels().then(|| client.clone());
        let version = client.version();
        // Gone meanwhile (stopped, removed): nothing to remember.
        let _ = self.with_live(&r.id, |l| {
            l.agent_version = Some(version);
            if share.is_some() {
                l.agent = share;
                l.agent_used_ms = now;
            }
        });
        Ok((r.id, client))
    }

    /// Marks the sandbox active for as long as the guard lives.
    pub(crate) fn hold_activity(&self, id: &str) -> Option<ActivityGuard> {
        self.with_live(id, |l| {
            l.streams.fetch_add(1, Ordering::Relaxed);
            ActivityGuard(l.streams.clone())
        })
        .ok()
    }

    /// OOM kills so far in a sandbox; 0 once it is no longer running.
    fn oom_count(&self, id: &str) -> u64 {
        self.with_live(id, |l| l.sandbox.oom_kills()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Option<i32>, signal: Option<i32>) -> ExitStatus {
        ExitStatus {
            code,
            signal,
            timed_out: false,
        }
    }

    #[test]
    fn an_oom_kill_is_a_sigkill_while_the_count_rose() {
        assert!(oom_killed(&status(None, Some(SIGKILL)), 0, 1));
        assert!(oom_killed(&status(None, Some(SIGKILL)), 3, 5));
        // A SIGKILL from someone else: the count did not move.
        assert!(!oom_killed(&status(None, Some(SIGKILL)), 2, 2));
        // Another signal, or an exit, while some other process was OOM-killed.
        assert!(!oom_killed(&status(None, Some(15)), 0, 1));
        assert!(!oom_killed(&status(Some(137), None), 0, 1));
        // The sandbox gone meanwhile reads as 0: not an OOM kill.
        assert!(!oom_killed(&status(None, Some(SIGKILL)), 4, 0));
    }
}
