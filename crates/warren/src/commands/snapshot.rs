//! `warren snapshot`: a sandbox's files (running, paused or stopped) as a new template;
//! with `--memory`, its processes and memory too (gVisor).

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_core::{SnapshotRequest, SnapshotResult};

use crate::client::{block_on, connect, out, sandbox_path, ClientArgs};

/// Capture a sandbox's files as a template; `warren create --template NAME` makes copies.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The sandbox: id, name, or owner/name.
    sandbox: String,
    /// The new template's name.
    #[arg(long)]
    name: String,
    /// Save its processes and memory too (a running or paused gvisor sandbox on network
    /// none): sandboxes made from the template go on from this moment, already warm.
    #[arg(long)]
    memory: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let body = SnapshotRequest {
        name: args.name.clone(),
        memory: args.memory,
    };
    let path = sandbox_path(&args.sandbox, "/snapshot");
    let r: SnapshotResult = block_on(client.call(Method::POST, &path, Some(&body)))??;
    match &r.template.meta.memory {
        Some(m) => eprintln!(
            "warren: memory image of {} bytes and the files saved in {} ms",
            m.image_bytes, r.millis
        ),
        None => eprintln!(
            "warren: {} bytes written in {} ms; {} layer(s) shared with its base",
            r.bytes_written,
            r.millis,
            r.template.meta.layers.len().saturating_sub(1)
        ),
    }
    out(format!("{}\n", r.template.meta.name))?;
    Ok(ExitCode::SUCCESS)
}
