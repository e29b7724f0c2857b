//! `warren stop`: end a sandbox's processes and keep its files; `start` brings it back.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use crate::client::ClientArgs;

/// Stop sandboxes: their processes end, their files are kept.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Sandboxes: ids, names, or owner/name.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: StopArgs) -> anyhow::Result<ExitCode> {
    super::for_each_sandbox(&args.client, &args.keys, Method::POST, "/stop")
}
