//! `warren logs`: what a process in a sandbox has written (stdout and stderr, each to
//! ours), as `docker logs` shows a container's; with -f, followed until it ends.
//!
//! Without a pid it is the sandbox's main process: the one `warren run -d` started
//! (tagged `main`), else its template's start command (tagged `start`), else its only
//! process. The output comes from the process's buffer in the agent through the attach
//! stream; the buffer keeps the newest output (the oldest goes once it is full). Without
//! -f the stream is read up to the output the process had written when asked
//! (`output_end` in its listing), then left. A process started in the background stays
//! listed once ended, its output with it (a sandbox keeps its 64 newest ended ones).
//!
//! A sandbox's lifecycle (created, paused, timed out...) is `warren events SANDBOX`.

use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use clap::Args;
use hyper::Method;
use warren_types::api::ExecEvent;
use warren_types::proto::ProcessInfo;

use crate::client::{block_on, out, sandbox_path, write_stderr, Client, ClientArgs, Error};

/// The tag `run -d` gives the process it starts.
pub const MAIN_TAG: &str = "main";

/// How long a stream read without -f may stay silent before the buffer is taken as
/// shown whole (its oldest output was dropped, so less than `output_end` comes).
const QUIET: Duration = Duration::from_millis(500);

/// Show a process's output: the sandbox's main process, or the one named.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output until the process ends.
    #[arg(short, long)]
    follow: bool,
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// The process, as `warren ps` lists it [default: the one `run -d` started, else the
    /// template's start command, else the only one].
    pid: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    block_on(async {
        let procs: Vec<ProcessInfo> = client
            .call(
                Method::GET,
                &sandbox_path(&args.key, "/processes"),
                None::<&()>,
            )
            .await?;
        let p = pick(&procs, args.pid).map_err(|why| {
            Error::not_found(format!(
                "{} {why}; `warren ps {}` lists its processes",
                args.key, args.key
            ))
        })?;
        if !args.follow && p.output_end == 0 {
            return Ok(());
        }
        let path = sandbox_path(
            &args.key,
            &format!("/processes/{}/attach?replay=true", p.pid),
        );
        let mut lines = client.lines(Method::GET, &path, None::<&()>).await?;
        let until = (!args.follow).then_some(p.output_end);
        show(&mut lines, until).await
    })??;
    Ok(ExitCode::SUCCESS)
}

/// The process `pid` names, or the sandbox's main one.
fn pick(procs: &[ProcessInfo], pid: Option<u32>) -> Result<&ProcessInfo, String> {
    if let Some(pid) = pid {
        return procs
            .iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| format!("has no process {pid}"));
    }
    let newest_tagged = |tag: &str| {
        procs
            .iter()
            .filter(|p| p.tag.as_deref() == Some(tag))
            .max_by_key(|p| p.serial)
    };
    if let Some(p) = newest_tagged(MAIN_TAG).or_else(|| newest_tagged("start")) {
        return Ok(p);
    }
    match procs {
        [only] => Ok(only),
        [] => Err("has no process to show".into()),
        _ => Err("has no main process (one `warren run -d` started): name its pid".into()),
    }
}

/// Prints the stream's output until the process ends, or (with `until`) until that many
/// bytes were shown or the stream stays quiet.
async fn show(lines: &mut crate::client::Lines, until: Option<u64>) -> Result<(), Error> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |data: &str| {
        b64.decode(data)
            .map_err(|e| Error::Protocol(format!("output not in base64: {e}")))
    };
    let mut shown = 0u64;
    loop {
        if until.is_some_and(|u| shown >= u) {
            return Ok(());
        }
        let next = lines.next::<ExecEvent>();
        let ev = match until {
            None => next.await?,
            Some(_) => match tokio::time::timeout(QUIET, next).await {
                Ok(ev) => ev?,
                Err(_) => return Ok(()),
            },
        };
        match ev {
            Some(ExecEvent::Stdout { data }) => {
                let d = decode(&data)?;
                shown += d.len() as u64;
                out(d)?;
            }
            Some(ExecEvent::Stderr { data }) => {
                let d = decode(&data)?;
                shown += d.len() as u64;
                write_stderr(&d);
            }
            Some(ExecEvent::Error { code, message }) => return Err(Error::Api { code, message }),
            Some(ExecEvent::Exit { .. }) | None => return Ok(()),
            Some(ExecEvent::Started { .. }) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use warren_types::proto::Command;

    use super::*;

    fn proc(pid: u32, serial: u64, tag: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid,
            serial,
            command: Command::Shell("true".into()),
            tag: tag.map(str::to_string),
            tty: false,
            background: true,
            exit: None,
            output_end: 0,
        }
    }

    #[test]
    fn the_main_process_is_run_ds_then_the_start_command_then_the_only_one() {
        let procs = [
            proc(10, 1, Some("start")),
            proc(20, 2, Some(MAIN_TAG)),
            proc(30, 3, None),
        ];
        assert_eq!(pick(&procs, None).unwrap().pid, 20);
        assert_eq!(pick(&procs[..1], None).unwrap().pid, 10);
        assert_eq!(pick(&procs[2..], None).unwrap().pid, 30);
        assert_eq!(pick(&procs, Some(30)).unwrap().pid, 30);
        assert!(pick(&procs, Some(99))
            .unwrap_err()
            .contains("no process 99"));
        let untagged = [proc(1, 1, None), proc(2, 2, None)];
        assert!(pick(&untagged, None).unwrap_err().contains("name its pid"));
        assert!(pick(&[], None).unwrap_err().contains("no process"));
    }
}
