//! `warren events`: follow the daemon's lifecycle events as they happen, one line each,
//! until interrupted.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::Event;

use crate::client::{block_on, out, Client, ClientArgs, Error};
use crate::term::clean_line;

/// Follow lifecycle events of the tenant's sandboxes.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print each event as the daemon's JSON line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    block_on(async {
        let mut lines = client.lines(Method::GET, "/v1/events", None::<&()>).await?;
        while let Some(line) = lines.next_line().await? {
            if args.json {
                let mut line = line;
                line.push(b'\n');
                out(&line)?;
                continue;
            }
            let e: Event = serde_json::from_slice(&line)
                .map_err(|e| Error::Protocol(format!("an event: {e}")))?;
            let text = format!(
                "{}  {}  {}  {:<10}  {}\n",
                clean_line(&e.time),
                clean_line(&e.sandbox),
                clean_line(&e.owner),
                clean_line(&e.kind),
                clean_line(&e.message)
            );
            out(text)?;
        }
        Err::<(), _>(Error::Connection(
            "the daemon ended the event stream".into(),
        ))
    })??;
    Ok(ExitCode::SUCCESS)
}
