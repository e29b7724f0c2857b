//! `warren gc`: remove the tenant's sandboxes that have been idle too long.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use serde::Serialize;
use warren_types::api::SandboxInfo;

use crate::client::{block_on, out, Client, ClientArgs};

/// Remove sandboxes idle for longer than --idle-minutes; prints each one's id.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Idle for at least this many minutes (no calls, no client, no CPU use).
    #[arg(long, value_name = "N")]
    idle_minutes: u64,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Serialize)]
struct GcRequest {
    idle_minutes: u64,
    dry_run: bool,
}

pub fn run(args: GcArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let body = GcRequest {
        idle_minutes: args.idle_minutes,
        dry_run: args.dry_run,
    };
    let removed: Vec<SandboxInfo> = block_on(client.call(Method::POST, "/v1/gc", Some(&body)))??;
    for s in &removed {
        out(format!("{}\n", s.id))?;
    }
    if args.dry_run && !removed.is_empty() {
        eprintln!(
            "warren: dry run: {} sandbox(es) would be removed",
            removed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
