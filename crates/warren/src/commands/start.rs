//! `warren start`: boot a stopped sandbox again, on the files it had.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use crate::client::ClientArgs;

/// Start stopped sandboxes again.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Sandboxes: ids, names, or owner/name.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    super::for_each_sandbox(&args.client, &args.keys, Method::POST, "/start")
}
