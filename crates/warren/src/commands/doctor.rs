//! `warren doctor`: lists what sandboxes left behind; exits 1 if anything. When a daemon
//! answers on its socket, also says which backends it offers, trust mode included.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_runtime::{doctor, NamespaceBackend, Paths};
use warren_types::api::{BackendInfo, Isolation};

use crate::client::{block_on, connect, ClientArgs};

/// Check the host for leftovers of ended sandboxes (cgroups, mounts, links, processes).
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let backend = NamespaceBackend::new(Paths::from_env(), exe)?;
    let found = doctor::leftovers(&backend);
    backends(&args.client);
    // Not leftovers: they are the host firewall's, and stay (see warren_runtime::network).
    for rule in warren_runtime::network::host_forward_accepts() {
        println!("host firewall: nat sandboxes accepted in FORWARD: {rule}");
    }
    if found.is_empty() {
        println!("no leftovers: nothing of an ended sandbox remains");
        return Ok(ExitCode::SUCCESS);
    }
    for l in &found {
        println!("{:<14} {}", l.kind, l.what);
    }
    eprintln!("warren: {} leftover(s) found", found.len());
    Ok(ExitCode::from(1))
}

/// The running daemon's backends, if one answers; nothing otherwise (the leftovers are
/// the doctor's business, the daemon may well be stopped).
fn backends(client: &ClientArgs) {
    if client.host.is_some() {
        return;
    }
    let Ok(c) = connect(client) else {
        return;
    };
    let Ok(Ok(list)) =
        block_on(c.call::<Vec<BackendInfo>>(Method::GET, "/v1/backends", None::<&()>))
    else {
        return;
    };
    for b in list {
        let what = match (b.name, b.available) {
            (Isolation::Process, true) => "trust mode (process backend): ON".to_string(),
            (Isolation::Process, false) => "trust mode (process backend): off".to_string(),
            (n, true) => format!("backend {n}: available"),
            (n, false) => format!(
                "backend {n}: unavailable ({})",
                crate::term::clean_line(b.reason.as_deref().unwrap_or("-"))
            ),
        };
        println!("{what}");
    }
}
