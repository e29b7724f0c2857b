//! `warren doctor`: lists what sandboxes left behind; exits 1 if anything.

use std::process::ExitCode;

use clap::Args;
use warren_runtime::{doctor, NamespaceBackend, Paths};

/// Check the host for leftovers of ended sandboxes (cgroups, mounts, links, processes).
#[derive(Debug, Args)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let backend = NamespaceBackend::new(Paths::from_env(), exe)?;
    let found = doctor::leftovers(&backend);
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
