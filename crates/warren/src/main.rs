//! `warren`: one binary for the CLI, and the hidden sandbox helper (`warren __init`).
#![forbid(unsafe_code)]

mod commands;
mod size;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Isolated Linux sandboxes: run untrusted code with kernel-enforced limits.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(Box<commands::run::RunArgs>),
    Doctor(commands::doctor::DoctorArgs),
}

fn main() -> ExitCode {
    // The helper must start single-threaded and before anything else: it forks into new
    // namespaces.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__init") {
        warren_runtime::helper::main();
    }
    warren_runtime::trace::mark("cli: start");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let r = match cli.command {
        Command::Run(a) => commands::run::run(*a),
        Command::Doctor(a) => commands::doctor::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warren: {e:#}");
            ExitCode::from(125)
        }
    }
}

/// Help and version print as clap renders them; a usage error is one line naming what to
/// change, as every other error of the CLI.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    eprintln!(
        "warren: {} (see --help)",
        first.trim_start_matches("error: ")
    );
    ExitCode::from(2)
}
