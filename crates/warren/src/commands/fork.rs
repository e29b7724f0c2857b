//! `warren fork SANDBOX`: copies of a running sandbox, with its processes and memory on
//! gvisor, with its files on namespace; prints the copies' ids.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::{ForkRequest, SandboxInfo};

use crate::client::{block_on, connect, enc, out, ClientArgs};

/// Copy a running sandbox: its files, and on gvisor its processes and memory too.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The sandbox: id, OWNER/NAME or NAME.
    sandbox: String,
    /// How many copies.
    #[arg(short = 'n', long, default_value_t = 1)]
    count: usize,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: ForkArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let body = ForkRequest {
        count: Some(args.count),
    };
    let path = format!("/v1/sandboxes/{}/fork", enc(&args.sandbox));
    let copies: Vec<SandboxInfo> = block_on(client.call(Method::POST, &path, Some(&body)))??;
    for c in copies {
        out(format!("{}\n", c.id))?;
    }
    Ok(ExitCode::SUCCESS)
}
