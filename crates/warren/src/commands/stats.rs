//! `warren stats`: CPU, memory and disk of running sandboxes, as the daemon last read
//! them (every 5 s).

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::{SandboxInfo, UsageSample};

use super::template::human;
use crate::client::{block_on, connect, out, sandbox_path, ClientArgs};
use crate::format::{parse_format, Format};

/// Show running sandboxes' CPU, memory and disk use (the daemon's last reading).
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Sandboxes (ids, names, or owner/name) [default: every running one].
    #[arg(value_name = "KEY")]
    keys: Vec<String>,
    /// Print JSON: each sandbox with its readings of the last half hour and the newest
    /// (`last`).
    #[arg(long)]
    json: bool,
    /// Print one line per sandbox from a template of its JSON fields, e.g.
    /// '{{.name}} {{.last.cpu_pct}} {{.last.memory_bytes}}' (see README, "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format, conflicts_with = "json")]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    block_on(async {
        let sandboxes: Vec<SandboxInfo> = if args.keys.is_empty() {
            client
                .call(Method::GET, "/v1/sandboxes?state=running", None::<&()>)
                .await?
        } else {
            let mut v = Vec::new();
            for k in &args.keys {
                v.push(
                    client
                        .call(Method::GET, &sandbox_path(k, ""), None::<&()>)
                        .await?,
                );
            }
            v
        };
        let mut rows = Vec::new();
        let mut json = Vec::new();
        for s in &sandboxes {
            let samples: Vec<UsageSample> = client
                .call(Method::GET, &sandbox_path(&s.id, "/metrics"), None::<&()>)
                .await?;
            let last = samples.last();
            let name = s.name.clone().unwrap_or_else(|| "-".into());
            let mem_limit = s
                .resources
                .memory
                .map(|m| format!(" / {}", human(m)))
                .unwrap_or_default();
            rows.push([
                s.id.clone(),
                crate::term::clean_line(&name),
                last.map_or("-".into(), |l| format!("{:.1}%", l.cpu_pct)),
                last.map_or("-".into(), |l| {
                    format!("{}{mem_limit}", human(l.memory_bytes))
                }),
                last.map_or("-".into(), |l| human(l.disk_bytes)),
            ]);
            json.push(serde_json::json!({
                "sandbox": s.id, "name": s.name, "last": last, "samples": samples,
            }));
        }
        if let Some(f) = &args.format {
            return out(f.render_all(&json));
        }
        if args.json {
            return out(format!(
                "{}\n",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            ));
        }
        let mut text = format!(
            "{:<18} {:<16} {:>7}  {:<21} {}\n",
            "ID", "NAME", "CPU", "MEMORY", "DISK"
        );
        for r in rows {
            text.push_str(&format!(
                "{:<18} {:<16} {:>7}  {:<21} {}\n",
                r[0], r[1], r[2], r[3], r[4]
            ));
        }
        out(text)
    })??;
    Ok(ExitCode::SUCCESS)
}
