//! `warren backends`: the daemon's isolation backends, whether each is available on this
//! host (and why not), and what each offers.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::BackendInfo;

use crate::client::{block_on, connect, out, ClientArgs};

/// List the isolation backends and their capabilities.
#[derive(Debug, Args)]
pub struct BackendsArgs {
    /// Print the daemon's JSON answer as it is.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: BackendsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let list: Vec<BackendInfo> = block_on(client.call(Method::GET, "/v1/backends", None::<&()>))??;
    if args.json {
        out(format!("{}\n", serde_json::to_string_pretty(&list)?))?;
    } else {
        out(table(&list))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn table(list: &[BackendInfo]) -> String {
    let mut s = String::new();
    for b in list {
        let c = &b.capabilities;
        let nets: Vec<String> = c.networks.iter().map(|n| n.as_str().to_string()).collect();
        if b.available {
            s += &format!("{:<10} available\n", b.name.as_str());
        } else {
            let why = b.reason.as_deref().unwrap_or("unavailable");
            s += &format!(
                "{:<10} unavailable: {}\n",
                b.name.as_str(),
                crate::term::clean_line(why)
            );
        }
        s += &format!(
            "           isolation: {}\n",
            crate::term::clean_line(&c.isolation)
        );
        let ports: Vec<&str> = c.publish.iter().map(|n| n.as_str()).collect();
        s += &format!(
            "           networks: {}; ports published on: {}; limits: {}; pause: {}; \
             memory snapshots: {}\n",
            if nets.is_empty() {
                "-".into()
            } else {
                nets.join(", ")
            },
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(", ")
            },
            if c.limits.is_empty() {
                "-".into()
            } else {
                c.limits.join(", ")
            },
            if c.pause { "yes" } else { "no" },
            if c.memory_snapshots { "yes" } else { "no" },
        );
        for (what, why) in &c.lacking {
            s += &format!(
                "           no {}: {}\n",
                what.replace('_', " "),
                crate::term::clean_line(why)
            );
        }
    }
    s
}
