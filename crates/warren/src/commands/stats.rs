//! `warren stats`: CPU, memory, disk and processes of running sandboxes, as the daemon
//! last read them (every 5 s).
//!
//! On a terminal the table is redrawn in place until Ctrl-C, as `docker stats` does;
//! elsewhere (a pipe, a file), with `--no-stream`, `--json` or `--format`, one reading
//! is printed and the verb ends.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;
use warren_types::api::{SandboxInfo, UsageSample};

use super::template::human;
use crate::client::{block_on, connect, out, sandbox_path, Client, ClientArgs, Error};
use crate::format::{parse_format, Format};

/// How often a live table is redrawn. The daemon reads every 5 s; a shorter wait shows a
/// new reading soon after it is taken.
const REDRAW_EVERY: Duration = Duration::from_secs(2);

/// Clears the screen and moves the cursor home, where the next table is drawn.
const CLEAR: &str = "\x1b[2J\x1b[H";

/// Show running sandboxes' CPU, memory, disk and processes (the daemon's last reading);
/// on a terminal, redrawn every 2 s until Ctrl-C.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Sandboxes (ids, names, or owner/name) [default: every running one].
    #[arg(value_name = "KEY")]
    keys: Vec<String>,
    /// Print one reading and end, as when stdout is not a terminal.
    #[arg(long)]
    no_stream: bool,
    /// Print JSON, once: each sandbox with its readings of the last half hour and the
    /// newest (`last`).
    #[arg(long)]
    json: bool,
    /// Print one line per sandbox, once, from a template of its JSON fields, e.g.
    /// '{{.name}} {{.last.cpu_pct}} {{.last.memory_bytes}} {{.last.pids}}' (see README,
    /// "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format, conflicts_with = "json")]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let once =
        args.no_stream || args.json || args.format.is_some() || !std::io::stdout().is_terminal();
    block_on(async {
        if args.json || args.format.is_some() {
            return history(&client, &args).await;
        }
        loop {
            let table = table(&sandboxes(&client, &args.keys).await?);
            if once {
                return out(table);
            }
            out(format!("{CLEAR}{table}"))?;
            tokio::time::sleep(REDRAW_EVERY).await;
        }
    })??;
    Ok(ExitCode::SUCCESS)
}

/// The sandboxes named, or every running one; each with its last reading.
async fn sandboxes(client: &Client, keys: &[String]) -> Result<Vec<SandboxInfo>, Error> {
    if keys.is_empty() {
        return Ok(client
            .call(Method::GET, "/v1/sandboxes?state=running", None::<&()>)
            .await?);
    }
    let mut v = Vec::new();
    for k in keys {
        v.push(
            client
                .call(Method::GET, &sandbox_path(k, ""), None::<&()>)
                .await?,
        );
    }
    Ok(v)
}

/// `--json` and `--format`: each sandbox with the readings the daemon keeps.
async fn history(client: &Client, args: &StatsArgs) -> Result<(), Error> {
    let mut json = Vec::new();
    for s in &sandboxes(client, &args.keys).await? {
        let samples: Vec<UsageSample> = client
            .call(Method::GET, &sandbox_path(&s.id, "/metrics"), None::<&()>)
            .await?;
        json.push(serde_json::json!({
            "sandbox": s.id, "name": s.name, "last": samples.last(), "samples": samples,
        }));
    }
    if let Some(f) = &args.format {
        return out(f.render_all(&json));
    }
    out(format!(
        "{}\n",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    ))
}

fn table(sandboxes: &[SandboxInfo]) -> String {
    let line = |r: [&str; 6]| {
        format!(
            "{:<18} {:<16} {:>7}  {:<21} {:<9} {}\n",
            r[0], r[1], r[2], r[3], r[4], r[5]
        )
    };
    let mut text = line(["ID", "NAME", "CPU", "MEMORY", "DISK", "PIDS"]);
    for s in sandboxes {
        let last = s.usage.as_ref();
        let name = s.name.clone().unwrap_or_else(|| "-".into());
        let mem_limit = s
            .resources
            .memory
            .map(|m| format!(" / {}", human(m)))
            .unwrap_or_default();
        let pids_limit = s
            .resources
            .pids
            .map(|p| format!(" / {p}"))
            .unwrap_or_default();
        let cell = |f: &dyn Fn(&UsageSample) -> String| last.map_or("-".into(), f);
        text.push_str(&line([
            &s.id,
            &crate::term::clean_line(&name),
            &cell(&|l| format!("{:.1}%", l.cpu_pct)),
            &cell(&|l| format!("{}{mem_limit}", human(l.memory_bytes))),
            &cell(&|l| human(l.disk_bytes)),
            &cell(&|l| format!("{}{pids_limit}", l.pids)),
        ]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_shows_each_figure_against_its_limit() {
        let mut s: SandboxInfo = serde_json::from_value(serde_json::json!({
            "id": "sb-1", "owner": "default", "name": "web", "state": "running",
            "template": "base", "resources": {"memory": 268435456, "pids": 64},
            "network": "none", "publish": [], "labels": {}, "metadata": {},
            "on_timeout": "terminate", "created_at": "2026-01-01T00:00:00Z",
            "last_active_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
        let text = table(std::slice::from_ref(&s));
        assert!(text.starts_with("ID "), "{text}");
        assert!(text.lines().next().unwrap().ends_with("PIDS"), "{text}");
        // No reading yet: each figure is a dash.
        assert!(text.lines().nth(1).unwrap().ends_with(" -"), "{text}");
        s.usage = Some(UsageSample {
            at_ms: 0,
            cpu_pct: 12.34,
            memory_bytes: 64 << 20,
            disk_bytes: 0,
            pids: 5,
        });
        let text = table(&[s]);
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("12.3%"), "{row}");
        assert!(row.contains(" / 256"), "{row}");
        assert!(row.ends_with("5 / 64"), "{row}");
    }
}
