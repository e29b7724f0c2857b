//! `warren backup FILE`: a consistent copy of the daemon's store (sandboxes, keys,
//! shares, volumes' records), made while it runs. `warren serve --restore FILE` puts one
//! back.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use warren_core::{Paths, Store};

/// Copy the daemon's store to FILE while it runs (root only; the copy is 0600). Restore
/// with `warren serve --restore FILE` on a stopped daemon.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new file for the copy (never overwritten).
    file: PathBuf,
}

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let store = Paths::from_env().data.join("warren.db");
    let bytes = Store::backup(&store, &args.file)
        .with_context(|| format!("cannot back up {}", store.display()))?;
    eprintln!(
        "warren: {} backed up to {} ({bytes} bytes, checked)",
        store.display(),
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}
