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
    let cli = Cli::parse();
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
