//! `warren snapshot`: a sandbox's files (running, paused or stopped) as a new template.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_core::{SnapshotRequest, SnapshotResult};

use crate::client::{block_on, out, sandbox_path, Client, ClientArgs};

/// Capture a sandbox's files as a template; `warren create --template NAME` makes copies.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The sandbox: id, name, or owner/name.
    sandbox: String,
    /// The new template's name.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let body = SnapshotRequest {
        name: args.name.clone(),
    };
    let path = sandbox_path(&args.sandbox, "/snapshot");
    let r: SnapshotResult = block_on(client.call(Method::POST, &path, Some(&body)))??;
    eprintln!(
        "warren: {} bytes written in {} ms; {} layer(s) shared with its base",
        r.bytes_written,
        r.millis,
        r.template.meta.layers.len().saturating_sub(1)
    );
    out(format!("{}\n", r.template.meta.name))?;
    Ok(ExitCode::SUCCESS)
}
