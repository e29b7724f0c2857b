//! `warren pause`: freeze a sandbox's processes (the freezer cgroup); `resume` thaws them.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use crate::client::ClientArgs;

/// Pause sandboxes: their processes stop running but keep their memory.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Sandboxes: ids, names, or owner/name.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: PauseArgs) -> anyhow::Result<ExitCode> {
    super::for_each_sandbox(&args.client, &args.keys, Method::POST, "/pause")
}
