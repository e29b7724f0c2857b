//! `warren ls`: the tenant's sandboxes, as a table or (with -q) ids only.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::{SandboxInfo, SandboxState};

use crate::client::{block_on, enc, out, Client, ClientArgs};
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
    /// Print ids only.
    #[arg(short, long)]
    quiet: bool,
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
    let client = Client::new(&args.client)?;
    let list: Vec<SandboxInfo> = block_on(client.call(Method::GET, &path, None::<&()>))??;
    if args.quiet {
        for s in &list {
            out(format!("{}\n", s.id))?;
        }
    } else {
        out(table(&list))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell; the last is not padded.
fn table(list: &[SandboxInfo]) -> String {
    let mut rows = vec![["ID", "NAME", "OWNER", "STATE", "TEMPLATE", "CREATED"].map(String::from)];
    for s in list {
        rows.push(
            [
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                s.owner.clone(),
                s.state.as_str().to_string(),
                s.template.clone(),
                s.created_at.clone(),
            ]
            .map(|c| crate::term::clean_line(&c)),
        );
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
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
        };
        let t = table(&[info]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID      NAME  OWNER    STATE    TEMPLATE  CREATED"
        );
        assert_eq!(
            lines[1],
            "abc123  -     default  running  host      2025-01-01T00:00:00Z"
        );
    }
}
