//! `warren logs`: a sandbox's lifecycle log (created, paused, timed out...), oldest
//! first.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::Event;

use crate::client::{block_on, out, sandbox_path, Client, ClientArgs};
use crate::term::clean_line;

/// Show a sandbox's lifecycle events.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The sandbox: its id, name, or owner/name.
    key: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let path = sandbox_path(&args.key, "/logs");
    let events: Vec<Event> = block_on(client.call(Method::GET, &path, None::<&()>))??;
    for e in &events {
        out(format!(
            "{}  {:<10}  {}\n",
            clean_line(&e.time),
            clean_line(&e.kind),
            clean_line(&e.message)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
