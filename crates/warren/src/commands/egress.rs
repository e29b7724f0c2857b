//! `warren egress`: show or replace a sandbox's egress rules.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::SandboxInfo;

use super::create::EgressFlags;
use crate::client::{block_on, connect, out, sandbox_path, ClientArgs};

/// Show a `nat` sandbox's egress rules, or replace them (a running sandbox is under the
/// new ones at once, its open connections included).
#[derive(Debug, Args)]
pub struct EgressArgs {
    /// The sandbox: an id, a name, or owner/name.
    #[arg(value_name = "KEY")]
    key: String,
    #[command(flatten)]
    rules: EgressFlags,
    /// Remove every rule: every destination is reachable again.
    #[arg(long, conflicts_with_all = ["allow_out", "deny_out", "dns"])]
    open: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: EgressArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let info: SandboxInfo = if args.open || !args.rules.is_open() {
        let body = args.rules.into_egress();
        let path = sandbox_path(&args.key, "/egress");
        block_on(client.call(Method::PUT, &path, Some(&body)))??
    } else {
        let path = sandbox_path(&args.key, "");
        block_on(client.call(Method::GET, &path, None::<&()>))??
    };
    let e = &info.egress;
    if e.is_open() {
        out("open: every destination is reachable\n")?;
    } else {
        let mut s = String::new();
        for a in &e.allow {
            s.push_str(&format!("allow {a}\n"));
        }
        for d in &e.deny {
            s.push_str(&format!("deny  {d}\n"));
        }
        for d in e.dns.iter().flatten() {
            s.push_str(&format!("dns   {d}\n"));
        }
        out(s)?;
    }
    Ok(ExitCode::SUCCESS)
}
