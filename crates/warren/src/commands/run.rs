//! `warren run`: a command in a fresh sandbox, without a daemon; with -d, a sandbox the
//! daemon keeps, its command left running.
//!
//! The CLI builds the sandbox itself (through the runtime's helper), runs one command in
//! it through the agent, streams its output and exits with its status. The helper is
//! told to die with the CLI, so even a killed CLI leaves nothing behind.
//!
//! Detached (`-d`), nothing can outlive the CLI but what a daemon keeps: the sandbox is
//! made by `warren serve` (as `warren create` makes it), the command started in the
//! background there (tagged `main`, which `warren logs` follows by default), and the
//! sandbox's id printed.
//!
//! Which command: `--entrypoint` and the arguments after it; else the arguments; else
//! the template's own command (an imported image's `Entrypoint` and `Cmd`); else a shell,
//! or, detached, none (the sandbox waits for `warren exec`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use warren_runtime::backend::{connect_agent_with, Hello};
use warren_runtime::client::{ClientError, ProcessEvent};
use warren_runtime::namespace::CreateOptions;
use warren_runtime::{trace, Instance, NamespaceBackend, Paths};
use warren_types::proto::{Command, ErrorCode, ExecRequest, FrameKind, Request, WinSize, CHUNK};
use warren_types::spec::{HostMount, Isolation, SandboxSpec, VolumeMount};

use hyper::Method;
use serde::Deserialize;
use warren_types::api::{CreateSandbox, ExecEvent, SandboxInfo};
use warren_types::proto::User;

use super::flags::{SandboxFlags, SandboxSettings};
use super::logs::MAIN_TAG;
use crate::client::{block_on, connect, enc, out, sandbox_path, Client, ClientArgs, Error, Piece};
use crate::parse::{parse_env, parse_host_mount, parse_pair, parse_user};
use warren_types::size::{parse_duration, parse_size};

/// Run a command in a new sandbox.
#[derive(Debug, Args)]
// Here the user watches the command itself fail, so the help adds what passing a limit
// does. Unlike doc comments, these texts are used as written: no final period.
#[command(
    mut_arg("memory", |a| a.help(
        "Memory limit, e.g. 256M or 2G. Past it, the kernel kills the largest process"
    )),
    mut_arg("disk", |a| a.help(
        "Size of the writable layer, e.g. 1G. Writes past it fail with ENOSPC"
    )),
)]
pub struct RunArgs {
    /// Remove the sandbox and its writable layer when the command ends.
    #[arg(long)]
    rm: bool,
    /// Leave it running: the daemon makes the sandbox and starts the command in the
    /// background; prints the sandbox's id (`warren logs ID` shows the command's output).
    #[arg(short, long, conflicts_with = "rm")]
    detach: bool,
    /// A name, unique per owner, to call the sandbox by (with -d: names are the daemon's).
    #[arg(long, requires = "detach")]
    name: Option<String>,
    /// Who the sandbox is for [default: the tenant's name] (with -d).
    #[arg(long, requires = "detach")]
    owner: Option<String>,
    /// A label to find the sandbox by (KEY=VALUE; `ls --label` filters on it) (with -d).
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = parse_pair, requires = "detach")]
    labels: Vec<(String, String)>,
    /// Run this program, with the arguments after `--`, instead of the template's
    /// command.
    #[arg(long, value_name = "PROGRAM")]
    entrypoint: Option<String>,
    /// Keep stdin open and stream it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (with -i, an interactive one).
    #[arg(short, long)]
    tty: bool,
    /// Template to build the root filesystem from [default: host; with -d, the daemon's].
    #[arg(long)]
    template: Option<String>,
    #[command(flatten)]
    sandbox: SandboxFlags,
    /// Set an environment variable (NAME=VALUE).
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User to run as: a name, UID or UID:GID.
    #[arg(short, long)]
    user: Option<String>,
    /// Mount a host directory (/HOST/DIR:/PATH, with :ro after it for read-only), or
    /// the named persistent volume (NAME:/PATH, with :SIZE after it for its size; not
    /// with -d). Repeat for more.
    #[arg(
        short,
        long = "volume",
        value_name = "/HOST/DIR:/PATH[:ro] | NAME:/PATH[:SIZE]",
        value_parser = parse_volume
    )]
    volume: Vec<VolumeArg>,
    /// Hostname inside the sandbox.
    #[arg(long)]
    hostname: Option<String>,
    /// Kill the command (and everything it started) after this long, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
    /// The command and its arguments [default: the template's command, else a shell].
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// The command to run: `--entrypoint` and the arguments; else the arguments; else the
/// template's command; `None` when there is none of them.
fn command_line(
    entrypoint: Option<&str>,
    args: &[String],
    template_cmd: &[String],
) -> Option<Vec<String>> {
    match entrypoint {
        Some(program) => Some(
            std::iter::once(program.to_string())
                .chain(args.iter().cloned())
                .collect(),
        ),
        None if !args.is_empty() => Some(args.to_vec()),
        None if !template_cmd.is_empty() => Some(template_cmd.to_vec()),
        None => None,
    }
}

/// What `-v` mounts: a host directory when its source is an absolute path, as with
/// `docker run -v`, else a named volume.
#[derive(Debug, Clone)]
enum VolumeArg {
    Host(HostMount),
    Named(VolumeMount),
}

impl VolumeArg {
    fn host(&self) -> Option<HostMount> {
        match self {
            VolumeArg::Host(m) => Some(m.clone()),
            VolumeArg::Named(_) => None,
        }
    }
}

fn parse_volume(s: &str) -> Result<VolumeArg, String> {
    if s.starts_with('/') {
        return parse_host_mount(s).map(VolumeArg::Host);
    }
    parse_named_volume(s).map(VolumeArg::Named)
}

fn parse_named_volume(s: &str) -> Result<VolumeMount, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(name), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("{s:?}: write NAME:/path, e.g. data:/home/user"));
    };
    let size = parts.next().map(parse_size).transpose()?;
    Ok(VolumeMount {
        name: name.into(),
        target: target.into(),
        size,
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let sandbox = args.sandbox.settings()?;
    if args.detach {
        return detached(args, sandbox);
    }
    if sandbox.requires.is_some() {
        return Err(Error::invalid(
            "--require, --require-memory and --profile: without -d there is no daemon to \
             choose a backend; run it with -d, or name one with --isolation"
                .into(),
        )
        .into());
    }
    if let Some(p) = sandbox.publish.iter().find(|p| p.host == 0) {
        return Err(Error::invalid(format!(
            "-p {}: without -d there is no daemon to choose a host port; write \
             HOSTPORT:PORT, e.g. -p 8080:{}, or run it with -d",
            p.sandbox, p.sandbox
        ))
        .into());
    }
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "`warren run` makes the sandbox itself (namespaces, cgroups, mounts) and needs \
             root: run it as root, or ask a daemon with `warren create` and `warren exec`"
        );
    }
    let memory = sandbox.resources.memory;
    let user = args
        .user
        .as_deref()
        .map(parse_user)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let template = args
        .template
        .clone()
        .unwrap_or_else(|| warren_runtime::template::HOST.to_string());
    let paths = Paths::from_env();
    // An unknown template is named by the create below, in its own words.
    let template_cmd = match template.as_str() {
        warren_runtime::template::HOST => Vec::new(),
        name => warren_runtime::template::load(&paths, name)
            .map(|m| m.cmd)
            .unwrap_or_default(),
    };
    // Checked and resolved here as the daemon would: the CLI makes this sandbox itself.
    let host: Vec<HostMount> = args.volume.iter().filter_map(VolumeArg::host).collect();
    let named: Vec<&str> = args
        .volume
        .iter()
        .filter_map(|v| match v {
            VolumeArg::Named(v) => Some(v.target.as_str()),
            VolumeArg::Host(_) => None,
        })
        .collect();
    let own = [paths.data.as_path(), paths.run.as_path()];
    let mounts = warren_runtime::mounts::resolve_all(&host, &named, &own)?;
    let spec = SandboxSpec {
        id: warren_runtime::new_id()?,
        template,
        hostname: args.hostname.clone(),
        resources: sandbox.resources,
        network: sandbox.network,
        // Egress rules are the daemon's (its proxy enforces domain rules).
        egress: Default::default(),
        publish: sandbox.publish,
        volumes: args
            .volume
            .iter()
            .filter_map(|v| match v {
                VolumeArg::Named(v) => Some(v.clone()),
                VolumeArg::Host(_) => None,
            })
            .collect(),
        mounts,
        env: BTreeMap::new(),
        isolation: sandbox.isolation.unwrap_or_default(),
    };
    let command = Command::Argv(
        command_line(args.entrypoint.as_deref(), &args.command, &template_cmd)
            .unwrap_or_else(|| vec!["/bin/sh".into()]),
    );
    let tty = args.tty && std::io::stdout().is_terminal();
    let size = if tty {
        warren_sys::pty::size(std::io::stdout().as_fd())
            .map(|s| WinSize {
                rows: s.rows,
                cols: s.cols,
            })
            .unwrap_or(WinSize { rows: 24, cols: 80 })
    } else if args.tty {
        WinSize { rows: 24, cols: 80 }
    } else {
        WinSize { rows: 0, cols: 0 }
    };
    let req = ExecRequest {
        command: Some(command),
        env: args.env.iter().cloned().collect(),
        cwd: args.workdir.clone(),
        user,
        tty: args.tty.then_some(size),
        stdin: args.interactive,
        timeout_ms: args.timeout.map(|d| d.as_millis() as u64),
        background: false,
        tag: None,
    };

    // A namespace sandbox is made before the async runtime exists: this process is still
    // single-threaded, so the helper can be forked rather than started afresh. The
    // runtime is current-thread: the helper dies with the thread that made it, this one.
    let exe = std::env::current_exe().context("find the warren binary")?;
    let opts = CreateOptions {
        die_with_parent: true,
        ephemeral: args.rm,
    };
    let isolation = spec.isolation;
    // Files kept past the run are marked as its own, before a helper is forked that
    // holds the mark too, for `warren gc` to find once nothing uses them.
    let kept = match args.rm {
        true => None,
        false => Some(warren_runtime::kept::mark(&paths, &spec.id)?),
    };
    let forked: Option<Box<dyn Instance>> = match isolation {
        Isolation::Namespace => {
            let backend = NamespaceBackend::new(paths.clone(), exe.clone())?;
            trace::mark("cli: backend ready");
            Some(Box::new(backend.create_forked(spec.clone(), opts)?))
        }
        Isolation::Gvisor | Isolation::Runc | Isolation::Crun => None,
        Isolation::Process => {
            return Err(Error::invalid(
                "trust mode (--isolation process) is the daemon's, as its operator \
                 configured it: use `warren create --isolation process`"
                    .into(),
            )
            .into())
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A helper forked from this process runs this very build's agent: its protocol is
    // known, and the command goes out behind the hello without waiting for the answer.
    let hello = match forked {
        Some(_) => Hello::Known(warren_types::proto::PROTOCOL_VERSION),
        None => Hello::Ask,
    };
    let sandbox = match forked {
        Some(sb) => sb,
        // Other backends are made through the same seam the daemon uses.
        None => {
            let backend: Box<dyn warren_runtime::Backend> = match isolation {
                Isolation::Runc | Isolation::Crun => Box::new(
                    warren_runtime::runc::RuncBackend::new(isolation, paths.clone(), exe, None)?,
                ),
                _ => Box::new(warren_runtime::gvisor::GvisorBackend::new(
                    paths.clone(),
                    exe,
                    None,
                )?),
            };
            rt.block_on(backend.create(spec, opts))?
        }
    };
    let outcome = rt.block_on(async move {
        trace::mark("cli: sandbox created");
        let outcome = run_command(sandbox.as_ref(), hello, req, args.interactive, tty).await;
        trace::mark("cli: command ended");
        let oom = sandbox.usage().oom_kills > 0;
        let task_cap = sandbox.fatal_task_limit_hits() > 0;
        let id = sandbox.id().to_string();
        let teardown = sandbox.destroy().await;
        trace::mark("cli: sandbox destroyed");
        if let Some(mark) = kept {
            if teardown.is_ok() {
                mark.ended();
            }
            eprintln!(
                "warren: sandbox {id} ended; its files are kept in {} (`warren gc` removes \
                 them)",
                paths.sandbox_data(&id).display()
            );
        }
        let code = match outcome {
            Ok(status) => {
                if status.timed_out {
                    eprintln!("warren: the command timed out and was killed");
                    124
                } else if oom && status.signal == Some(9) {
                    let limit = memory
                        .map(|m| format!(" (--memory {} MiB)", m >> 20))
                        .unwrap_or_default();
                    eprintln!("warren: the command was killed by the kernel: out of memory{limit}");
                    137
                } else {
                    status.shell_code()
                }
            }
            Err(ClientError::Agent {
                code: ErrorCode::CommandNotFound,
                message,
            }) => {
                eprintln!("warren: {message}");
                127
            }
            Err(ClientError::Agent { message, .. }) => {
                eprintln!("warren: {message}");
                126
            }
            // The whole sandbox stopped under the command (gVisor, whose kernel is one
            // host process, past a limit; or the agent itself chosen by the OOM killer
            // once memory filesystems held the rest): say which, as a killed process would.
            Err(ClientError::Closed) if oom => {
                let limit = memory
                    .map(|m| format!(" (--memory {} MiB)", m >> 20))
                    .unwrap_or_default();
                eprintln!(
                    "warren: the sandbox was stopped: out of memory{limit}; files in \
                     memory filesystems and its kernel's own memory count too"
                );
                137
            }
            Err(ClientError::Closed) if task_cap => {
                eprintln!(
                    "warren: the sandbox was stopped: too many tasks (past its --pids limit)"
                );
                137
            }
            Err(ClientError::Closed) => {
                eprintln!(
                    "warren: the sandbox stopped under the command: its first process (Warren's \
                     agent) ended, killed from inside or by the host"
                );
                137
            }
            Err(e) => return Err(e.into()),
        };
        teardown?;
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    });
    // Nothing the runtime still runs (a blocked stdin read) may hold up the exit.
    rt.shutdown_background();
    outcome
}

/// `run -d`: the daemon makes the sandbox and starts the command in the background.
fn detached(args: RunArgs, sandbox: SandboxSettings) -> anyhow::Result<ExitCode> {
    // What only a sandbox of the CLI's own has.
    let named = args.volume.iter().find_map(|v| match v {
        VolumeArg::Named(v) => Some(v),
        VolumeArg::Host(_) => None,
    });
    if let Some(v) = named {
        return Err(Error::invalid(format!(
            "-v {}:{}: with -d the daemon mounts the owner's home volume at /home/user; \
             named volumes are for `warren run` without -d",
            v.name, v.target
        ))
        .into());
    }
    if args.hostname.is_some() {
        return Err(Error::invalid("--hostname is for `warren run` without -d".into()).into());
    }
    let user = args
        .user
        .as_deref()
        .map(parse_user)
        .transpose()
        .map_err(Error::invalid)?;
    let body = CreateSandbox {
        owner: args.owner.clone(),
        name: args.name.clone(),
        labels: args.labels.iter().cloned().collect(),
        template: args.template.clone(),
        resources: sandbox.resource_request(),
        network: sandbox.network,
        publish: sandbox.publish.clone(),
        // As docker's -e: every process of the sandbox sees it, later execs too.
        env: args.env.iter().cloned().collect(),
        isolation: sandbox.isolation,
        requires: sandbox.requires.clone(),
        mounts: args.volume.iter().filter_map(VolumeArg::host).collect(),
        ..CreateSandbox::default()
    };
    let client = connect(&args.client)?;
    let code = block_on(async {
        let info: SandboxInfo = client
            .call(Method::POST, "/v1/sandboxes", Some(&body))
            .await?;
        let started = start_main(&client, &info, &args, user).await;
        if !matches!(started, Ok(0)) {
            // A sandbox whose command could not start is not left behind.
            let path = sandbox_path(&info.id, "");
            let _ = client.call_raw(Method::DELETE, &path, None::<&()>).await;
            return started;
        }
        out(format!("{}\n", info.id))?;
        Ok(0)
    })??;
    Ok(ExitCode::from(code))
}

/// Starts the sandbox's main command in the background, if there is one: 0 when it
/// started (or there was none), else the CLI's status for a command that could not.
async fn start_main(
    client: &Client,
    info: &SandboxInfo,
    args: &RunArgs,
    user: Option<User>,
) -> Result<u8, Error> {
    let template_cmd = if args.entrypoint.is_none() && args.command.is_empty() {
        let path = format!("/v1/templates/{}", enc(&info.template));
        match client
            .call::<TemplateCommand>(Method::GET, &path, None::<&()>)
            .await
        {
            Ok(t) => t.cmd,
            Err(warren_client::Error::Api { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    } else {
        Vec::new()
    };
    let Some(argv) = command_line(args.entrypoint.as_deref(), &args.command, &template_cmd) else {
        return Ok(0);
    };
    let req = ExecRequest {
        command: Some(Command::Argv(argv)),
        cwd: args.workdir.clone(),
        user,
        tty: args.tty.then_some(WinSize { rows: 24, cols: 80 }),
        stdin: args.interactive,
        timeout_ms: args.timeout.map(|d| d.as_millis().max(1) as u64),
        background: true,
        tag: Some(MAIN_TAG.into()),
        ..ExecRequest::default()
    };
    let path = sandbox_path(&info.id, "/exec");
    // A command that cannot start is refused before the stream, or as its first line;
    // either way it exits as a shell would.
    let not_started = |code: &str, message: &str| {
        eprintln!("warren: {message} ({code})");
        Ok(if code == "command_not_found" {
            127
        } else {
            126
        })
    };
    let mut pieces = match client.process_stream(Method::POST, &path, Some(&req)).await {
        Ok(pieces) => pieces,
        Err(warren_client::Error::Api { code, message })
            if code == "command_not_found" || code == "permission_denied" =>
        {
            return not_started(&code, &message);
        }
        Err(e) => return Err(e.into()),
    };
    match pieces.next().await? {
        Some(Piece::Event(ExecEvent::Started { .. })) => Ok(0),
        Some(Piece::Event(ExecEvent::Error { code, message })) => not_started(&code, &message),
        other => Err(Error::protocol(format!(
            "expected the command to start, got {other:?}"
        ))),
    }
}

/// The one field of a template's description `run -d` needs.
#[derive(Debug, Deserialize)]
struct TemplateCommand {
    #[serde(default)]
    cmd: Vec<String>,
}

async fn run_command(
    sandbox: &dyn Instance,
    hello: Hello,
    req: ExecRequest,
    interactive: bool,
    tty: bool,
) -> Result<warren_types::proto::ExitStatus, ClientError> {
    let client = match hello {
        Hello::Known(_) => connect_agent_with(sandbox.agent_socket(), hello).await?,
        Hello::Ask => sandbox
            .connect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?,
    };
    trace::mark("cli: agent connected");
    let mut proc = client.exec(req).await?;
    trace::mark("cli: process started");
    let stdin_handle = std::io::stdin();
    let raw = if tty && interactive && stdin_handle.is_terminal() {
        warren_sys::pty::RawMode::enter(stdin_handle.as_fd()).ok()
    } else {
        None
    };

    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(4);
    if interactive {
        // A plain thread, not the runtime's blocking pool: a read blocked on a terminal
        // must not hold up the CLI's exit when the command ends first.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = stdin_tx.blocking_send(None);
                        break;
                    }
                    Ok(n) => {
                        if stdin_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    // Stdin goes in from a task of its own: a write waits for the command to take the
    // input before it, and the command may first wait for its output to be read here.
    let stdin = proc.sender();
    let forward = interactive.then(|| {
        tokio::spawn(async move {
            while let Some(chunk) = stdin_rx.recv().await {
                let sent = match chunk {
                    Some(d) => stdin.send_data(FrameKind::Stdin, d).await,
                    None => stdin.send(&Request::CloseStdin).await,
                };
                // A lost connection ends the command's output too, which says so.
                if sent.is_err() {
                    return;
                }
            }
        })
    });
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    async fn next_sig(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }

    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    let status = loop {
        tokio::select! {
            ev = proc.next() => match ev? {
                ProcessEvent::Stdout(d) => { let _ = out.write_all(&d); let _ = out.flush(); }
                ProcessEvent::Stderr(d) => { let _ = err.write_all(&d); }
                ProcessEvent::Exited(s) => break s,
            },
            _ = next_sig(&mut winch), if tty => {
                if let Ok(s) = warren_sys::pty::size(std::io::stdout().as_fd()) {
                    let _ = proc.resize(WinSize { rows: s.rows, cols: s.cols }).await;
                }
            }
            _ = next_sig(&mut int) => { let _ = proc.signal(libc::SIGINT).await; }
            _ = next_sig(&mut term) => { let _ = proc.signal(libc::SIGTERM).await; }
            _ = next_sig(&mut hup) => { let _ = proc.signal(libc::SIGHUP).await; }
        }
    };
    if let Some(forward) = forward {
        forward.abort();
    }
    drop(raw);
    let _ = out.flush();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::command_line;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_is_the_entrypoint_the_arguments_or_the_templates() {
        let image = v(&["/bin/sh", "-c", "serve"]);
        assert_eq!(command_line(None, &[], &image), Some(image.clone()));
        assert_eq!(
            command_line(None, &v(&["ls"]), &image),
            Some(v(&["ls"])),
            "arguments replace the whole command"
        );
        assert_eq!(
            command_line(Some("echo"), &v(&["hi"]), &image),
            Some(v(&["echo", "hi"]))
        );
        assert_eq!(command_line(Some("top"), &[], &image), Some(v(&["top"])));
        assert_eq!(command_line(None, &[], &[]), None);
    }
}
