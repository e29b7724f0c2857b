//! `warren ps`: the processes the API started in a sandbox, with the pids `share`,
//! `attach` and the signal calls take.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::proto::{Command, ProcessInfo};

use crate::client::{block_on, connect, out, sandbox_path, ClientArgs};
use crate::format::{parse_format, Format};

/// List a sandbox's processes started through the API (exec, terminals, start commands).
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
    /// Print one line per process from a template of its JSON fields, e.g.
    /// '{{.pid}} {{.tag}} {{.exit.code}}' (see README, "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format, conflicts_with = "json")]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: PsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let path = sandbox_path(&args.key, "/processes");
    if let Some(f) = &args.format {
        let list: Vec<serde_json::Value> = block_on(client.call(Method::GET, &path, None::<&()>))??;
        out(f.render_all(&list))?;
        return Ok(ExitCode::SUCCESS);
    }
    let procs: Vec<ProcessInfo> = block_on(client.call(Method::GET, &path, None::<&()>))??;
    if args.json {
        out(format!("{}\n", serde_json::to_string_pretty(&procs)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = format!("{:>7}  {:<3}  {:<10}  COMMAND\n", "PID", "TTY", "STATE");
    for p in &procs {
        let state = match &p.exit {
            None => "running".to_string(),
            Some(e) => match (e.code, e.signal) {
                (Some(c), _) => format!("exited {c}"),
                (_, Some(sig)) => format!("signal {sig}"),
                _ => "ended".into(),
            },
        };
        let command = match &p.command {
            Command::Shell(c) => c.clone(),
            Command::Argv(a) => a.join(" "),
        };
        let tty = if p.tty { "yes" } else { "no" };
        let line = format!("{:>7}  {tty:<3}  {state:<10}  {command}", p.pid);
        // One line per process, as wide as a terminal can show.
        s.push_str(&crate::term::clean(
            &line.chars().take(200).collect::<String>(),
        ));
        s.push('\n');
    }
    out(s)?;
    Ok(ExitCode::SUCCESS)
}
