//! `warren ls`: the tenant's sandboxes, as a table or (with -q) ids only.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::{SandboxInfo, SandboxState};

use super::template::human;
use crate::client::{block_on, connect, enc, ClientArgs};
use crate::format::ListOutput;
use crate::parse::parse_pair;

/// List sandboxes.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this owner's.
    #[arg(long)]
    owner: Option<String>,
    /// Only those in this state.
    #[arg(long, value_parser = parse_state)]
    state: Option<SandboxState>,
    /// Only those with this label (KEY=VALUE); repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    output: ListOutput,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_state(s: &str) -> Result<SandboxState, String> {
    SandboxState::parse(s)
        .ok_or_else(|| format!("{s:?}: use creating, running, paused, stopping or stopped"))
}

pub fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(o) = &args.owner {
        query.push(format!("owner={}", enc(o)));
    }
    if let Some(s) = args.state {
        query.push(format!("state={}", s.as_str()));
    }
    for (k, v) in &args.labels {
        query.push(format!("label={}", enc(&format!("{k}={v}"))));
    }
    let mut path = "/v1/sandboxes".to_string();
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let client = connect(&args.client)?;
    let list = block_on(client.call(Method::GET, &path, None::<&()>))??;
    args.output.print(
        list,
        |s: &SandboxInfo| s.id.clone(),
        |l| table(l, jiff::Timestamp::now()),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// How long ago `time` (RFC 3339) was, as `docker ps` says it: `45s`, `12m`, `3h`, `2d`.
pub(crate) fn ago(time: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = time.parse::<jiff::Timestamp>() else {
        return "-".into();
    };
    let s = now.as_second().saturating_sub(t.as_second()).max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Columns padded to their widest cell; the last is not padded. IDLE is the time since
/// the sandbox was last used (calls, attached streams, CPU); CPU, MEM and DISK are the
/// daemon's last reading (`warren stats` has the limits and processes).
fn table(list: &[SandboxInfo], now: jiff::Timestamp) -> String {
    let mut rows = vec![[
        "ID", "NAME", "OWNER", "STATE", "TEMPLATE", "BACKEND", "IDLE", "CPU", "MEM", "DISK",
        "CREATED",
    ]
    .map(String::from)];
    for s in list {
        // The daemon's last reading (every 5 s); none for a sandbox that is not running.
        let usage = |f: &dyn Fn(&warren_types::api::UsageSample) -> String| {
            s.usage.as_ref().map_or_else(|| "-".into(), f)
        };
        rows.push(
            [
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                s.owner.clone(),
                s.state.as_str().to_string(),
                s.template.clone(),
                s.isolation.as_str().to_string(),
                ago(&s.last_active_at, now),
                usage(&|u| format!("{:.1}%", u.cpu_pct)),
                usage(&|u| human(u.memory_bytes)),
                usage(&|u| human(u.disk_bytes)),
                s.created_at.clone(),
            ]
            .map(|c| crate::term::clean_line(&c)),
        );
    }
    align(&rows)
}

/// Rows of cells as columns padded to their widest cell; the last is not padded.
pub(crate) fn align<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths = Vec::new();
    for r in rows {
        for (i, cell) in r.as_ref().iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let r = r.as_ref();
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 < r.len() {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_types::api::{ResourceRequest, TimeoutAction};
    use warren_types::spec::NetworkMode;

    #[test]
    fn table_aligns_columns() {
        let info = SandboxInfo {
            egress: Default::default(),
            id: "abc123".into(),
            owner: "default".into(),
            name: None,
            template: "host".into(),
            state: SandboxState::Running,
            resources: ResourceRequest::default(),
            network: NetworkMode::None,
            publish: vec![],
            mounts: vec![],
            isolation: Default::default(),
            labels: Default::default(),
            metadata: Default::default(),
            created_at: "2025-01-01T00:00:00Z".into(),
            last_active_at: "2025-01-01T00:00:00Z".into(),
            expires_at: None,
            idle_timeout_secs: None,
            on_timeout: TimeoutAction::Terminate,
            auto_resume: false,
            request_host: None,
            access_token: None,
            traffic_token: None,
            usage: None,
        };
        let measured = SandboxInfo {
            id: "def456".into(),
            usage: Some(warren_types::api::UsageSample {
                at_ms: 0,
                cpu_pct: 12.345,
                memory_bytes: 48 << 20,
                disk_bytes: 3 << 20,
                pids: 4,
            }),
            ..info.clone()
        };
        let now: jiff::Timestamp = "2025-01-01T00:12:30Z".parse().unwrap();
        let t = table(&[info, measured], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "ID      NAME  OWNER    STATE    TEMPLATE  BACKEND    IDLE  CPU    MEM    DISK  CREATED",
                "abc123  -     default  running  host      namespace  12m   -      -      -     2025-01-01T00:00:00Z",
                "def456  -     default  running  host      namespace  12m   12.3%  48.0M  3.0M  2025-01-01T00:00:00Z",
            ]
        );
    }
}
