//! `warren rm`: terminate sandboxes; their processes and files are gone and their names
//! free again. Persistent volumes stay.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use crate::client::ClientArgs;

/// Remove sandboxes, whatever their state.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Sandboxes: ids, names, or owner/name.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    /// Accepted for docker's habit and changes nothing: a running sandbox is removed
    /// without it.
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: RmArgs) -> anyhow::Result<ExitCode> {
    let _ = args.force;
    super::for_each_sandbox(&args.client, &args.keys, Method::DELETE, "")
}
