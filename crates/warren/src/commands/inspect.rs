//! `warren inspect`: everything the daemon says about a sandbox, as JSON.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use crate::client::{block_on, connect, out, sandbox_path, ClientArgs};
use crate::format::{parse_format, Format};

/// Show a sandbox as pretty-printed JSON.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// Print one line per sandbox from a template of its JSON fields, e.g.
    /// '{{.state}} {{.publish}}' (see README, "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format)]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let path = sandbox_path(&args.key, "");
    // As the daemon sent it: fields this CLI does not know yet are shown too.
    let info: serde_json::Value = block_on(client.call(Method::GET, &path, None::<&()>))??;
    match &args.format {
        Some(f) => out(f.render(&info))?,
        None => out(format!("{}\n", serde_json::to_string_pretty(&info)?))?,
    }
    Ok(ExitCode::SUCCESS)
}
