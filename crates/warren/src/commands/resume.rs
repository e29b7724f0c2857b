//! `warren resume`: thaw a paused sandbox.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use crate::client::ClientArgs;

/// Resume paused sandboxes.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Sandboxes: ids, names, or owner/name.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: ResumeArgs) -> anyhow::Result<ExitCode> {
    super::for_each_sandbox(&args.client, &args.keys, Method::POST, "/resume")
}
