//! `warren volume`: the home volumes of the tenant's owners (each owner's sandboxes mount
//! theirs at /home/user), named by owner: list, inspect, grow, remove.
//!
//! Named volumes of `warren run -v NAME:/path` are the CLI's own, in the data directory
//! (`$WARREN_DATA_DIR/volumes/NAME`), and not the daemon's to list.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use warren_types::api::VolumeInfo;

use super::ls::align;
use super::template::human;
use crate::client::{block_on, connect, enc, out, ClientArgs};
use crate::format::{parse_format, Format, ListOutput};
use crate::term::clean_line;
use warren_types::api::ResizeVolume;
use warren_types::size::parse_size;

/// Manage volumes: the owners' persistent homes.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    Ls(LsArgs),
    Inspect(InspectArgs),
    Resize(ResizeArgs),
    Rm(RmArgs),
}

/// Grow an owner's home volume, its files kept (only while no sandbox mounts it).
#[derive(Debug, Args)]
struct ResizeArgs {
    /// The owner whose home volume it is.
    owner: String,
    /// The new size, e.g. 10G: more than it has.
    #[arg(value_parser = parse_size)]
    size: u64,
    #[command(flatten)]
    client: ClientArgs,
}

/// List the home volumes of the tenant's owners.
#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    output: ListOutput,
    #[command(flatten)]
    client: ClientArgs,
}

/// Show an owner's home volume as JSON: its size, the disk it takes, who mounts it.
#[derive(Debug, Args)]
struct InspectArgs {
    /// The owner whose home volume it is.
    owner: String,
    /// Print one line from a template of its JSON fields, e.g. '{{.used_by}}'.
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format)]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Remove owners' home volumes and every file in them (refused while a sandbox that is
/// not terminated mounts one: `warren rm` it first).
#[derive(Debug, Args)]
struct RmArgs {
    /// The owners whose home volumes go.
    #[arg(required = true, value_name = "OWNER")]
    owners: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn volume_path(owner: &str) -> String {
    format!("/v1/volumes/{}", enc(owner))
}

pub fn run(args: VolumeArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        VolumeCommand::Ls(a) => ls(a),
        VolumeCommand::Inspect(a) => {
            let client = connect(&a.client)?;
            let path = volume_path(&a.owner);
            let v: serde_json::Value = block_on(client.call(Method::GET, &path, None::<&()>))??;
            match &a.format {
                Some(f) => out(f.render(&v))?,
                None => out(format!("{}\n", serde_json::to_string_pretty(&v)?))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Resize(a) => {
            let client = connect(&a.client)?;
            let path = format!("{}/resize", volume_path(&a.owner));
            let body = ResizeVolume { size_bytes: a.size };
            let v: VolumeInfo = block_on(client.call(Method::POST, &path, Some(&body)))??;
            out(table(&[v]))?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm(a) => super::for_each(&a.client, &a.owners, Method::DELETE, volume_path),
    }
}

fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.client)?;
    let list = block_on(client.call(Method::GET, "/v1/volumes", None::<&()>))??;
    a.output
        .print(list, |v: &VolumeInfo| clean_line(&v.owner), table)?;
    Ok(ExitCode::SUCCESS)
}

/// OWNER, NAME, SIZE (the image's, or `-`), USED (on disk), and the sandboxes mounting it.
fn table(list: &[VolumeInfo]) -> String {
    let mut rows = vec![["OWNER", "NAME", "SIZE", "USED", "MOUNTED BY"].map(String::from)];
    for v in list {
        rows.push([
            clean_line(&v.owner),
            v.name.clone(),
            v.size_bytes.map_or("-".into(), human),
            human(v.used_bytes),
            if v.used_by.is_empty() {
                "-".into()
            } else {
                v.used_by.join(",")
            },
        ]);
    }
    align(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_read_as_a_table() {
        let list = [
            VolumeInfo {
                owner: "alice".into(),
                name: "home-0123".into(),
                size_bytes: Some(2 << 30),
                used_bytes: 3 << 20,
                used_by: vec!["a1".into(), "b2".into()],
            },
            VolumeInfo {
                owner: "bob".into(),
                name: "home-4567".into(),
                size_bytes: None,
                used_bytes: 512,
                used_by: vec![],
            },
        ];
        let t = table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "OWNER  NAME       SIZE  USED  MOUNTED BY");
        assert_eq!(lines[1], "alice  home-0123  2.0G  3.0M  a1,b2");
        assert_eq!(lines[2], "bob    home-4567  -     512B  -");
    }
}
