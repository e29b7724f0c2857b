//! `warren gc`: remove the tenant's sandboxes that have been idle too long.
//!
//! The daemon picks them: live sandboxes last used (a call, an attached stream, CPU use
//! inside) longer ago than asked, and followed by no client now. A removal prints each
//! id, as `rm` does; a dry run prints a table of what would go and why.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use serde::Serialize;
use warren_types::api::SandboxInfo;

use super::ls::{ago, align};
use crate::client::{block_on, connect, out, ClientArgs};
use crate::term::clean_line;

/// Remove sandboxes idle for longer than --idle-minutes; prints each one's id.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Idle for at least this many minutes (no calls, no client, no CPU use).
    #[arg(long, value_name = "N")]
    idle_minutes: u64,
    /// Only show what would be removed, and why.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: ids only.
    #[arg(short, long, requires = "dry_run")]
    quiet: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Serialize)]
struct GcRequest {
    idle_minutes: u64,
    dry_run: bool,
}

pub fn run(args: GcArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let body = GcRequest {
        idle_minutes: args.idle_minutes,
        dry_run: args.dry_run,
    };
    let removed: Vec<SandboxInfo> = block_on(client.call(Method::POST, "/v1/gc", Some(&body)))??;
    if args.dry_run && !args.quiet {
        if !removed.is_empty() {
            out(would_remove(
                &removed,
                args.idle_minutes,
                jiff::Timestamp::now(),
            ))?;
        }
        eprintln!(
            "warren: dry run: {} sandbox(es) would be removed",
            removed.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for s in &removed {
        out(format!("{}\n", s.id))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a dry run would remove, one row each, with the reason.
fn would_remove(list: &[SandboxInfo], idle_minutes: u64, now: jiff::Timestamp) -> String {
    let mut rows = vec![["ID", "NAME", "OWNER", "STATE", "REASON"].map(String::from)];
    for s in list {
        let reason = format!(
            "idle {} (last used {}), past --idle-minutes {idle_minutes}",
            ago(&s.last_active_at, now),
            s.last_active_at
        );
        rows.push(
            [
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                s.owner.clone(),
                s.state.as_str().to_string(),
                reason,
            ]
            .map(|c| clean_line(&c)),
        );
    }
    align(&rows)
}

#[cfg(test)]
mod tests {
    use warren_types::api::SandboxState;

    use super::*;

    #[test]
    fn a_dry_run_says_why_each_would_go() {
        let info: SandboxInfo = serde_json::from_value(serde_json::json!({
            "id": "abc123", "owner": "alice", "name": "lab", "template": "host",
            "state": "paused", "resources": {}, "network": "none", "publish": [],
            "labels": {}, "metadata": {}, "created_at": "2025-01-01T00:00:00Z",
            "last_active_at": "2025-01-01T00:00:00Z", "expires_at": null,
            "idle_timeout_secs": null, "on_timeout": "terminate",
        }))
        .unwrap();
        assert_eq!(info.state, SandboxState::Paused);
        let now: jiff::Timestamp = "2025-01-01T02:00:00Z".parse().unwrap();
        let t = would_remove(&[info], 60, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID      NAME  OWNER  STATE   REASON");
        assert_eq!(
            lines[1],
            "abc123  lab   alice  paused  idle 2h (last used 2025-01-01T00:00:00Z), \
             past --idle-minutes 60"
        );
    }
}
