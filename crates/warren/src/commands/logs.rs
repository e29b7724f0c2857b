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

use clap::Args;
use hyper::Method;
use warren_types::api::ExecEvent;
use warren_types::proto::ProcessInfo;

use crate::client::{
    block_on, connect, out, sandbox_path, write_stderr, ClientArgs, Error, Piece, Pieces,
};

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
    /// Only the last N lines of what it has written so far (then, with -f, what
    /// follows).
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// The process, as `warren ps` lists it [default: the one `run -d` started, else the
    /// template's start command, else the only one].
    pid: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
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
        let mut pieces = client
            .process_stream(Method::GET, &path, None::<&()>)
            .await?;
        show(&mut pieces, p.output_end, args.follow, args.tail).await
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

/// A piece of output, from the stream it was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Stdout(d) | Chunk::Stderr(d) => d,
        }
    }

    fn print(&self) -> Result<(), Error> {
        match self {
            Chunk::Stdout(d) => out(d),
            Chunk::Stderr(d) => {
                write_stderr(d);
                Ok(())
            }
        }
    }
}

/// Prints the output the process had written when asked (`output_end` bytes, or what
/// the buffer still holds of it: the stream is left once it stays quiet), only its last
/// `tail` lines when given; then, with `follow`, what follows until the process ends.
async fn show(
    pieces: &mut Pieces,
    output_end: u64,
    follow: bool,
    tail: Option<usize>,
) -> Result<(), Error> {
    let mut shown = 0u64;
    let mut kept = Vec::new();
    let mut ended = false;
    while shown < output_end {
        let Ok(next) = tokio::time::timeout(QUIET, next_chunk(pieces)).await else {
            break;
        };
        let Some(chunk) = next? else {
            ended = true;
            break;
        };
        shown += chunk.bytes().len() as u64;
        match tail {
            Some(_) => kept.push(chunk),
            None => chunk.print()?,
        }
    }
    if let Some(n) = tail {
        for chunk in last_lines(&kept, n) {
            chunk.print()?;
        }
    }
    if ended || !follow {
        return Ok(());
    }
    while let Some(chunk) = next_chunk(pieces).await? {
        chunk.print()?;
    }
    Ok(())
}

/// The next piece of output; `None` once the process has ended.
async fn next_chunk(pieces: &mut Pieces) -> Result<Option<Chunk>, Error> {
    loop {
        return match pieces.next().await? {
            Some(Piece::Stdout(data)) => Ok(Some(Chunk::Stdout(data.into()))),
            Some(Piece::Stderr(data)) => Ok(Some(Chunk::Stderr(data.into()))),
            Some(Piece::Event(ExecEvent::Error { code, message })) => {
                Err(Error::api(code, message))
            }
            Some(Piece::Event(ExecEvent::Exit { .. })) | None => Ok(None),
            Some(Piece::Event(_)) => continue,
        };
    }
}

/// The last `n` lines of the output, stdout and stderr together as they were written
/// (an unfinished last line counts as one), each piece still on its stream.
fn last_lines(chunks: &[Chunk], n: usize) -> Vec<Chunk> {
    let all: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.bytes().iter().copied())
        .collect();
    let mut lines = all.iter().filter(|b| **b == b'\n').count();
    if all.last().is_some_and(|b| *b != b'\n') {
        lines += 1;
    }
    // Bytes before the first line kept: up to and including the newline that ends
    // the last line dropped.
    let mut skip = lines.saturating_sub(n);
    let mut cut = 0;
    for (i, b) in all.iter().enumerate() {
        if skip == 0 {
            break;
        }
        if *b == b'\n' {
            skip -= 1;
        }
        cut = i + 1;
    }
    let mut kept = Vec::new();
    let mut at = 0;
    for c in chunks {
        let len = c.bytes().len();
        if at + len > cut {
            let from = cut.saturating_sub(at);
            let part = c.bytes()[from..].to_vec();
            kept.push(match c {
                Chunk::Stdout(_) => Chunk::Stdout(part),
                Chunk::Stderr(_) => Chunk::Stderr(part),
            });
        }
        at += len;
    }
    kept
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

    #[test]
    fn the_last_lines_cross_chunks_and_keep_their_streams() {
        let out = |s: &str| Chunk::Stdout(s.as_bytes().to_vec());
        let err = |s: &str| Chunk::Stderr(s.as_bytes().to_vec());
        let chunks = [out("one\ntw"), out("o\n"), err("oops\n"), out("three")];
        assert_eq!(last_lines(&chunks, 2), [err("oops\n"), out("three")]);
        assert_eq!(
            last_lines(&chunks, 3),
            [out("tw"), out("o\n"), err("oops\n"), out("three")]
        );
        assert_eq!(last_lines(&chunks, 9), chunks);
        assert_eq!(last_lines(&chunks, 0), []);
        assert_eq!(last_lines(&[out("a\nb\n")], 1), [out("b\n")]);
        assert_eq!(last_lines(&[], 3), []);
    }
}
