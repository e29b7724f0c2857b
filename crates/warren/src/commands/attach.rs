//! `warren attach`: follow a process started earlier (usually with `exec -d`), from the
//! output its buffer kept, to its exit. As with `docker attach`, Ctrl-C and other
//! signals to the CLI are passed on to the process; a process on a terminal gets ours
//! (raw, with its size following) when attached with -i.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::proto::ProcessInfo;

use super::exec::{follow, Follow};
use crate::client::{block_on, connect, sandbox_path, ClientArgs};

/// Follow a running process's output until it ends; exits with its status.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Send stdin to the process (it must have been started with -i).
    #[arg(short, long)]
    interactive: bool,
    /// Show only output from now on, not what the process wrote before.
    #[arg(long)]
    no_replay: bool,
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// The process, as `exec -d` printed it.
    pid: u32,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let code = block_on(async {
        let path = sandbox_path(
            &args.key,
            &format!("/processes/{}/attach?replay={}", args.pid, !args.no_replay),
        );
        let processes: Vec<ProcessInfo> = client
            .call(
                Method::GET,
                &sandbox_path(&args.key, "/processes"),
                None::<&()>,
            )
            .await?;
        let tty = processes.iter().any(|p| p.pid == args.pid && p.tty);
        let mut pieces = client
            .process_stream(Method::GET, &path, None::<&()>)
            .await?;
        let opts = Follow {
            stdin: args.interactive,
            tty,
        };
        follow(&client, &args.key, Some(args.pid), &mut pieces, opts).await
    })??;
    Ok(ExitCode::from(code))
}
