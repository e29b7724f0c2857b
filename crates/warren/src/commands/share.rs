//! `warren share` and `warren join`: a second person on the same terminal.
//!
//! The owner shares a process that runs on a terminal (`exec -d -t`, or the one behind
//! an `exec -it`) and hands the printed token to a collaborator, who joins with it; no
//! API key needed. `--write` lets the guest type; `share --revoke` cuts guests off.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::{ShareInfo, ShareRequest};

use super::exec::terminal;
use crate::client::{block_on, connect, enc, sandbox_path, ClientArgs};

/// Share a process's terminal; prints the token a collaborator joins with.
#[derive(Debug, Args)]
pub struct ShareArgs {
    /// Let the guest type and resize; read-only otherwise.
    #[arg(long)]
    write: bool,
    /// List the sandbox's shares instead of making one.
    #[arg(long, conflicts_with_all = ["write", "revoke"])]
    list: bool,
    /// Revoke the share with this id (as `--list` shows it); its guests are cut off.
    #[arg(long, value_name = "ID")]
    revoke: Option<String>,
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// The process whose terminal to share (`warren ps`); required unless --list or
    /// --revoke.
    #[arg(required_unless_present_any = ["list", "revoke"])]
    pid: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: ShareArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    block_on(async {
        if args.list {
            let shares: Vec<ShareInfo> = client
                .call(
                    Method::GET,
                    &sandbox_path(&args.key, "/shares"),
                    None::<&()>,
                )
                .await?;
            println!("{:<18} {:>7}  {:<5}  CREATED", "ID", "PID", "MODE");
            for s in shares {
                let mode = if s.write { "write" } else { "read" };
                println!("{:<18} {:>7}  {mode:<5}  {}", s.id, s.pid, s.created_at);
            }
            return Ok(());
        }
        if let Some(id) = &args.revoke {
            client
                .call_raw(
                    Method::DELETE,
                    &sandbox_path(&args.key, &format!("/shares/{}", enc(id))),
                    None::<&()>,
                )
                .await?;
            eprintln!("share {id} revoked");
            return Ok(());
        }
        let pid = args.pid.unwrap_or_default();
        let share: ShareInfo = client
            .call(
                Method::POST,
                &sandbox_path(&args.key, &format!("/processes/{pid}/share")),
                Some(&ShareRequest {
                    write: args.write,
                    screen: false,
                }),
            )
            .await?;
        let token = share.token.unwrap_or_default();
        println!("{token}");
        eprintln!(
            "shared {} terminal of process {pid} (share {}); join with: warren join {token}",
            if share.write {
                "read-write"
            } else {
                "read-only"
            },
            share.id
        );
        Ok::<_, crate::client::Error>(())
    })??;
    Ok(ExitCode::SUCCESS)
}

/// Join a terminal someone shared with you.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The token `warren share` printed.
    token: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let code =
        block_on(async { terminal(&client, &format!("/v1/shared/{}", enc(&args.token))).await })??;
    Ok(ExitCode::from(code))
}
