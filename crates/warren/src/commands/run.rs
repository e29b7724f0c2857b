//! `warren run`: a command in a fresh sandbox, without a daemon.
//!
//! The CLI builds the sandbox itself (through the runtime's helper), runs one command in
//! it through the agent, streams its output and exits with its status. The helper is
//! told to die with the CLI, so even a killed CLI leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use warren_runtime::client::{ClientError, ProcessEvent};
use warren_runtime::namespace::CreateOptions;
use warren_runtime::{trace, Instance, NamespaceBackend, Paths};
use warren_types::proto::{Command, ErrorCode, ExecRequest, WinSize, CHUNK};
use warren_types::spec::{Isolation, SandboxSpec, VolumeMount};

use super::flags::SandboxFlags;
use crate::parse::{parse_env, parse_user};
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
    /// Keep stdin open and stream it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (with -i, an interactive one).
    #[arg(short, long)]
    tty: bool,
    /// Template to build the root filesystem from.
    #[arg(long, default_value = "host")]
    template: String,
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
    /// Mount the named persistent volume: NAME:/path or NAME:/path:SIZE.
    #[arg(short, long = "volume", value_name = "NAME:/PATH[:SIZE]", value_parser = parse_volume)]
    volume: Vec<VolumeMount>,
    /// Hostname inside the sandbox.
    #[arg(long)]
    hostname: Option<String>,
    /// Kill the command (and everything it started) after this long, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
    /// The command and its arguments (default: a shell).
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_volume(s: &str) -> Result<VolumeMount, String> {
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
    if let Some(p) = sandbox.publish.iter().find(|p| p.host == 0) {
        return Err(crate::client::Error::Invalid(format!(
            "-p {}: `warren run` has no daemon to choose a host port; write \
             HOSTPORT:PORT, e.g. -p 8080:{}",
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
    let spec = SandboxSpec {
        id: warren_runtime::new_id()?,
        template: args.template.clone(),
        hostname: args.hostname.clone(),
        resources: sandbox.resources,
        network: sandbox.network,
        // Egress rules are the daemon's (its proxy enforces domain rules).
        egress: Default::default(),
        publish: sandbox.publish,
        volumes: args.volume.clone(),
        env: BTreeMap::new(),
        isolation: sandbox.isolation.unwrap_or_default(),
    };
    let command = if args.command.is_empty() {
        Command::Argv(vec!["/bin/sh".into()])
    } else {
        Command::Argv(args.command.clone())
    };
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
    let paths = Paths::from_env();
    let opts = CreateOptions {
        die_with_parent: true,
        ephemeral: args.rm,
    };
    let isolation = spec.isolation;
    let forked: Option<Box<dyn Instance>> = match isolation {
        Isolation::Namespace => {
            let backend = NamespaceBackend::new(paths.clone(), exe.clone())?;
            trace::mark("cli: backend ready");
            Some(Box::new(backend.create_forked(spec.clone(), opts)?))
        }
        Isolation::Gvisor => None,
        Isolation::Process => anyhow::bail!(
            "trust mode (--isolation process) is the daemon's, as its operator configured \
             it: use `warren create --isolation process`"
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sandbox = match forked {
        Some(sb) => sb,
        // Other backends are made through the same seam the daemon uses.
        None => {
            let backend = warren_runtime::gvisor::GvisorBackend::new(paths.clone(), exe, None)?;
            rt.block_on(warren_runtime::Backend::create(&backend, spec, opts))?
        }
    };
    let outcome = rt.block_on(async move {
        trace::mark("cli: sandbox created");
        let outcome = run_command(sandbox.as_ref(), req, args.interactive, tty).await;
        trace::mark("cli: command ended");
        let oom = sandbox.usage().oom_kills > 0;
        let id = sandbox.id().to_string();
        let teardown = sandbox.destroy().await;
        trace::mark("cli: sandbox destroyed");
        if !args.rm {
            eprintln!(
                "warren: sandbox {id} ended; its files are kept in {}",
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
            Err(e) => return Err(e.into()),
        };
        teardown?;
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    });
    // Nothing the runtime still runs (a blocked stdin read) may hold up the exit.
    rt.shutdown_background();
    outcome
}

async fn run_command(
    sandbox: &dyn Instance,
    req: ExecRequest,
    interactive: bool,
    tty: bool,
) -> Result<warren_types::proto::ExitStatus, ClientError> {
    let client = sandbox
        .connect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
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
            Some(chunk) = stdin_rx.recv(), if interactive => match chunk {
                Some(d) => proc.write_stdin(d).await?,
                None => proc.close_stdin().await?,
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
    drop(raw);
    let _ = out.flush();
    Ok(status)
}
