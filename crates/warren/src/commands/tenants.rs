//! `warren tenants`: the host's tenants, on the daemon's unix socket: list them with what
//! each holds, and remove one with everything it holds.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use warren_types::api::{TenantInfo, TenantRemoval};

use super::ls::align;
use crate::client::{block_on, connect, enc, out, ClientArgs, ClientError};
use crate::format::ListOutput;
use crate::term::clean_line;

/// Manage tenants (the host's root, on the daemon's unix socket).
#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    Ls(LsArgs),
    Rm(RmArgs),
}

/// List every tenant with its API keys, sandboxes, volumes, templates and snapshots.
#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    output: ListOutput,
    #[command(flatten)]
    client: ClientArgs,
}

/// Remove tenants: their API keys are revoked first (their open streams and console
/// sessions end), then their sandboxes, their owners' home volumes and SSH keys, their
/// own templates and their snapshots go. Templates they made for every tenant stay.
#[derive(Debug, Args)]
struct RmArgs {
    /// The tenants, by name (as `warren tenants ls` shows them).
    #[arg(required = true, value_name = "TENANT")]
    tenants: Vec<String>,
    /// Keep their snapshots: a tenant of the same name made later has them again.
    #[arg(long)]
    keep_snapshots: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TenantsCommand::Ls(a) => {
            let client = connect(&a.client)?;
            let list = block_on(client.call(Method::GET, "/v1/tenants", None::<&()>))??;
            a.output
                .print(list, |t: &TenantInfo| clean_line(&t.name), table)?;
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Rm(a) => {
            let client = connect(&a.client)?;
            let failed = block_on(async {
                let mut failed = false;
                for name in &a.tenants {
                    let mut path = format!("/v1/tenants/{}", enc(name));
                    if a.keep_snapshots {
                        path.push_str("?keep_snapshots=true");
                    }
                    match client
                        .call::<TenantRemoval>(Method::DELETE, &path, None::<&()>)
                        .await
                    {
                        Ok(r) => out(removed(&r))?,
                        Err(e @ ClientError::Api { .. }) => {
                            eprintln!("warren: {e}");
                            failed = true;
                        }
                        // The daemon is unreachable: the others would fail the same way.
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok::<_, crate::client::Error>(failed)
            })??;
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// NAME, KEYS, SANDBOXES, VOLUMES, TEMPLATES, SNAPSHOTS.
fn table(list: &[TenantInfo]) -> String {
    let mut rows = vec![[
        "NAME",
        "KEYS",
        "SANDBOXES",
        "VOLUMES",
        "TEMPLATES",
        "SNAPSHOTS",
    ]
    .map(String::from)];
    for t in list {
        rows.push([
            clean_line(&t.name),
            t.keys.to_string(),
            t.sandboxes.to_string(),
            t.volumes.to_string(),
            t.templates.to_string(),
            t.snapshots.to_string(),
        ]);
    }
    align(&rows)
}

/// One line of what went, and one for each kind of thing kept.
fn removed(r: &TenantRemoval) -> String {
    let mut text = format!(
        "{}: removed {} API key(s), {} sandbox(es), {} volume(s), {} template(s), {} \
         snapshot(s)\n",
        clean_line(&r.name),
        r.keys,
        r.sandboxes,
        r.volumes,
        r.templates,
        r.snapshots
    );
    let names = |l: &[String]| {
        l.iter()
            .map(|n| clean_line(n))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !r.kept_snapshots.is_empty() {
        text.push_str(&format!("  kept snapshots: {}\n", names(&r.kept_snapshots)));
    }
    if !r.kept_templates.is_empty() {
        text.push_str(&format!(
            "  kept templates every tenant may use (`warren template rm` them): {}\n",
            names(&r.kept_templates)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_read_as_a_table_and_a_removal_as_lines() {
        let t = table(&[TenantInfo {
            name: "acme".into(),
            created_at: Some(0),
            keys: 2,
            sandboxes: 3,
            volumes: 1,
            templates: 0,
            snapshots: 4,
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  KEYS  SANDBOXES  VOLUMES  TEMPLATES  SNAPSHOTS"
        );
        assert_eq!(lines[1], "acme  2     3          1        0          4");
        let r = removed(&TenantRemoval {
            name: "acme".into(),
            keys: 2,
            sandboxes: 3,
            kept_snapshots: vec!["s1".into(), "s2".into()],
            ..Default::default()
        });
        assert_eq!(
            r,
            "acme: removed 2 API key(s), 3 sandbox(es), 0 volume(s), 0 template(s), 0 \
             snapshot(s)\n  kept snapshots: s1 s2\n"
        );
    }
}
