//! `warren events`: lifecycle events (created, paused, timed out...), one line each.
//!
//! Without a sandbox, the tenant's events are followed as they happen, until
//! interrupted. With one, its recorded history is printed, oldest first; with -f the
//! events that follow are printed too. The live stream is opened before the history is
//! read, so nothing falls between them; what both carry is printed once.

use std::collections::HashSet;
use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::{Event, SandboxInfo};

use crate::client::{block_on, connect, out, sandbox_path, ClientArgs, Error, Lines};
use crate::term::clean_line;

/// Follow lifecycle events of the tenant's sandboxes, or show one sandbox's.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this sandbox's (its id, name, or owner/name): its history, then with -f what
    /// follows.
    key: Option<String>,
    /// With a sandbox: keep following its events after its history.
    #[arg(short, long, requires = "key")]
    follow: bool,
    /// Print each event as the daemon's JSON line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    block_on(async {
        let Some(key) = &args.key else {
            let mut live = client.lines(Method::GET, "/v1/events", None::<&()>).await?;
            return follow(&mut live, None, &HashSet::new(), args.json).await;
        };
        let info: SandboxInfo = client
            .call(Method::GET, &sandbox_path(key, ""), None::<&()>)
            .await?;
        let mut live = match args.follow {
            true => Some(client.lines(Method::GET, "/v1/events", None::<&()>).await?),
            false => None,
        };
        let history: Vec<Event> = client
            .call(Method::GET, &sandbox_path(&info.id, "/logs"), None::<&()>)
            .await?;
        for e in &history {
            print(e, args.json, false)?;
        }
        match &mut live {
            Some(live) => {
                let seen = history.iter().map(identity).collect();
                follow(live, Some(&info.id), &seen, args.json).await
            }
            None => Ok(()),
        }
    })??;
    Ok(ExitCode::SUCCESS)
}

fn identity(e: &Event) -> (String, String, String) {
    (e.time.clone(), e.kind.clone(), e.message.clone())
}

/// Prints live events (only `sandbox`'s, when given) until the daemon ends the stream.
async fn follow(
    live: &mut Lines,
    sandbox: Option<&str>,
    seen: &HashSet<(String, String, String)>,
    json: bool,
) -> Result<(), Error> {
    while let Some(line) = live.next_line().await? {
        let e: Event =
            serde_json::from_slice(&line).map_err(|e| Error::protocol(format!("an event: {e}")))?;
        if sandbox.is_some_and(|id| e.sandbox != id) || seen.contains(&identity(&e)) {
            continue;
        }
        if json {
            // As the daemon sent it: fields this CLI does not know yet are kept.
            let mut line = line;
            line.push(b'\n');
            out(&line)?;
            continue;
        }
        print(&e, false, sandbox.is_none())?;
    }
    Err(Error::connection(
        "the daemon ended the event stream".into(),
    ))
}

/// One event: its JSON line, or its time, kind and message (and, for every sandbox's
/// events, which sandbox and owner).
fn print(e: &Event, json: bool, whose: bool) -> Result<(), Error> {
    if json {
        let line = serde_json::to_string(e).map_err(|e| Error::Output(e.to_string()))?;
        return out(format!("{line}\n"));
    }
    let who = match whose {
        true => format!("{}  {}  ", clean_line(&e.sandbox), clean_line(&e.owner)),
        false => String::new(),
    };
    out(format!(
        "{}  {who}{:<10}  {}\n",
        clean_line(&e.time),
        clean_line(&e.kind),
        clean_line(&e.message)
    ))
}
