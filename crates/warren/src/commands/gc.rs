//! `warren gc`: remove the tenant's sandboxes that have been idle too long, and the
//! files `warren run` kept.
//!
//! The daemon picks the sandboxes: live sandboxes last used (a call, an attached stream,
//! CPU use inside) longer ago than asked, and followed by no client now. The kept files
//! are this host's: those of every `warren run` without `--rm` that is over (see
//! `warren_runtime::kept`; a run still going, or its sandbox still being torn down, is
//! never touched). A removal prints each id, as `rm` does; a dry run prints a table of
//! what would go and why.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;
use hyper::Method;
use serde::Serialize;
use warren_runtime::kept::{self, KeptRun};
use warren_runtime::Paths;
use warren_types::api::SandboxInfo;

use super::ls::{ago, align};
use crate::client::{block_on, connect, out, ClientArgs};
use crate::term::clean_line;

/// Remove sandboxes idle for longer than --idle-minutes, and the files every finished
/// `warren run` without --rm kept on this host; prints each one's id.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also ask the daemon to remove sandboxes idle for at least this many minutes (no
    /// calls, no client, no CPU use) [default: leave the daemon's sandboxes alone].
    #[arg(long, value_name = "N")]
    idle_minutes: Option<u64>,
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
    let removed: Vec<SandboxInfo> = match args.idle_minutes {
        Some(idle_minutes) => {
            let client = connect(&args.client)?;
            let body = GcRequest {
                idle_minutes,
                dry_run: args.dry_run,
            };
            block_on(client.call(Method::POST, "/v1/gc", Some(&body)))??
        }
        None => Vec::new(),
    };
    let paths = Paths::from_env();
    let kept = match kept::ended(&paths) {
        Ok(k) => k,
        // The daemon's part is done: what cannot be looked at here is said, not fatal.
        Err(e) if args.idle_minutes.is_some() => {
            eprintln!(
                "warren: kept runs not looked for in {}: {e}",
                paths.data.display()
            );
            Vec::new()
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot look for kept runs in {} (it is root's: run as root, or set \
                     WARREN_DATA_DIR)",
                    paths.data.display()
                )
            })
        }
    };
    if args.dry_run && !args.quiet {
        if !removed.is_empty() || !kept.is_empty() {
            let now = jiff::Timestamp::now();
            let runs: Vec<[String; 5]> = kept
                .iter()
                .map(|k| kept_row(&k.id, &k.files, k.at, k.finished, now))
                .collect();
            out(would_remove(&removed, args.idle_minutes, &runs, now))?;
        }
        let mut what = Vec::new();
        if args.idle_minutes.is_some() {
            what.push(format!("{} sandbox(es)", removed.len()));
        }
        if args.idle_minutes.is_none() || !kept.is_empty() {
            what.push(format!("{} kept run(s)", kept.len()));
        }
        eprintln!("warren: dry run: {} would be removed", what.join(" and "));
        return Ok(ExitCode::SUCCESS);
    }
    for s in &removed {
        out(format!("{}\n", s.id))?;
    }
    for k in kept {
        let id = k.id.clone();
        if !args.dry_run {
            remove(&paths, k)?;
        }
        out(format!("{id}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(paths: &Paths, run: KeptRun) -> anyhow::Result<()> {
    let files = run.files.clone();
    kept::remove(paths, run).with_context(|| {
        format!(
            "{} stays (`warren doctor` shows what holds it)",
            files.display()
        )
    })
}

/// A kept run's row of a dry run: files `at` the run's end, or its start when it did not
/// finish.
fn kept_row(
    id: &str,
    files: &Path,
    at: Option<SystemTime>,
    finished: bool,
    now: jiff::Timestamp,
) -> [String; 5] {
    let when = at
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map_or("-".into(), |t| ago(&t.to_string(), now));
    let reason = if finished {
        format!(
            "kept by `warren run` without --rm in {}, ended {when} ago; nothing uses them",
            files.display()
        )
    } else {
        format!(
            "kept by `warren run` without --rm in {}, started {when} ago and gone without \
             finishing; nothing uses them",
            files.display()
        )
    };
    [
        id.to_string(),
        "-".into(),
        "-".into(),
        "ended".into(),
        reason,
    ]
    .map(|c| clean_line(&c))
}

/// What a dry run would remove, one row each, with the reason.
fn would_remove(
    list: &[SandboxInfo],
    idle_minutes: Option<u64>,
    kept: &[[String; 5]],
    now: jiff::Timestamp,
) -> String {
    let mut rows = vec![["ID", "NAME", "OWNER", "STATE", "REASON"].map(String::from)];
    for s in list {
        let reason = format!(
            "idle {} (last used {}), past --idle-minutes {}",
            ago(&s.last_active_at, now),
            s.last_active_at,
            idle_minutes.unwrap_or_default()
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
    rows.extend(kept.iter().cloned());
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
        let ended = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_735_689_600);
        let kept = [
            kept_row(
                "ffff0000",
                Path::new("/d/sandboxes/ffff0000"),
                Some(ended),
                true,
                now,
            ),
            kept_row(
                "eeee1111",
                Path::new("/d/sandboxes/eeee1111"),
                None,
                false,
                now,
            ),
        ];
        let t = would_remove(&[info], Some(60), &kept, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID        NAME  OWNER  STATE   REASON");
        assert_eq!(
            lines[1],
            "abc123    lab   alice  paused  idle 2h (last used 2025-01-01T00:00:00Z), \
             past --idle-minutes 60"
        );
        assert_eq!(
            lines[2],
            "ffff0000  -     -      ended   kept by `warren run` without --rm in \
             /d/sandboxes/ffff0000, ended 2h ago; nothing uses them"
        );
        assert!(
            lines[3].contains("started - ago and gone without finishing"),
            "{t}"
        );
    }
}
