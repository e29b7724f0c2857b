//! `warren`: one binary for the CLI, and the hidden sandbox helper (`warren __init`).
#![forbid(unsafe_code)]

mod client;
mod commands;
mod format;
mod parse;
mod term;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Isolated Linux sandboxes: run untrusted code with kernel-enforced limits.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, max_term_width = 100)]
struct Cli {
    /// The tenant every verb acts for on the daemon's unix socket [default: default]; a
    /// verb's own --tenant wins. Over TCP the API key decides.
    #[arg(long, env = "WARREN_TENANT", value_name = "TENANT")]
    tenant: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
enum Command {
    Run(Box<commands::run::RunArgs>),
    Serve(commands::serve::ServeArgs),
    Create(Box<commands::create::CreateArgs>),
    Exec(commands::exec::ExecArgs),
    Attach(commands::attach::AttachArgs),
    Share(commands::share::ShareArgs),
    Join(commands::share::JoinArgs),
    Ls(commands::ls::LsArgs),
    Inspect(commands::inspect::InspectArgs),
    Egress(commands::egress::EgressArgs),
    Port(commands::port::PortArgs),
    Ps(commands::ps::PsArgs),
    Stats(commands::stats::StatsArgs),
    Logs(commands::logs::LogsArgs),
    Events(commands::events::EventsArgs),
    Pause(commands::pause::PauseArgs),
    Resume(commands::resume::ResumeArgs),
    Stop(commands::stop::StopArgs),
    Start(commands::start::StartArgs),
    Rm(commands::rm::RmArgs),
    Gc(commands::gc::GcArgs),
    Backends(commands::backends::BackendsArgs),
    Fork(commands::fork::ForkArgs),
    Cp(commands::cp::CpArgs),
    Keys(commands::keys::KeysArgs),
    Doctor(commands::doctor::DoctorArgs),
    Backup(commands::backup::BackupArgs),
    Template(commands::template::TemplateArgs),
    Snapshot(commands::snapshot::SnapshotArgs),
    Volume(commands::volume::VolumeArgs),
    Tenants(commands::tenants::TenantsArgs),
    Completions(CompletionsArgs),
}

/// Print a shell's completion script: `warren completions bash > /etc/bash_completion.d/warren`,
/// `warren completions zsh > "${fpath[1]}/_warren"`, `warren completions fish >
/// ~/.config/fish/completions/warren.fish`.
#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(
        args.shell,
        &mut whole_command("warren"),
        "warren",
        &mut script,
    );
    client::out(script)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // The helper must start single-threaded and before anything else: it forks into new
    // namespaces.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == warren_runtime::helper::ARG)
    {
        warren_runtime::helper::main(None);
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == warren_runtime::zygote::ARG)
    {
        warren_runtime::zygote::main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == warren_runtime::bundle::OCI_ARG)
    {
        warren_runtime::bundle::oci_main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__oci-watch")
    {
        warren_runtime::bundle::watch_main();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "__agent") {
        warren_runtime::launch::agent_main();
    }
    warren_runtime::trace::mark("cli: start");
    // What started us may have left descriptors open without close-on-exec; none of them
    // may reach a helper, a tool or a sandbox this process starts (see warren_sys::fd).
    if let Err(e) = warren_sys::fd::cloexec_from(3) {
        eprintln!("warren: cannot mark inherited descriptors close-on-exec: {e}");
        return ExitCode::from(125);
    }
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    client::set_default_tenant(cli.tenant);
    let r = match cli.command {
        Command::Run(a) => commands::run::run(*a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Create(a) => commands::create::run(*a),
        Command::Exec(a) => commands::exec::run(a),
        Command::Attach(a) => commands::attach::run(a),
        Command::Share(a) => commands::share::run(a),
        Command::Join(a) => commands::share::join(a),
        Command::Ls(a) => commands::ls::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Egress(a) => commands::egress::run(a),
        Command::Completions(a) => completions(a),
        Command::Port(a) => commands::port::run(a),
        Command::Ps(a) => commands::ps::run(a),
        Command::Stats(a) => commands::stats::run(a),
        Command::Logs(a) => commands::logs::run(a),
        Command::Events(a) => commands::events::run(a),
        Command::Pause(a) => commands::pause::run(a),
        Command::Resume(a) => commands::resume::run(a),
        Command::Stop(a) => commands::stop::run(a),
        Command::Start(a) => commands::start::run(a),
        Command::Rm(a) => commands::rm::run(a),
        Command::Gc(a) => commands::gc::run(a),
        Command::Backends(a) => commands::backends::run(a),
        Command::Fork(a) => commands::fork::run(a),
        Command::Cp(a) => commands::cp::run(a),
        Command::Keys(a) => commands::keys::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
        Command::Backup(a) => commands::backup::run(a),
        Command::Template(a) => commands::template::run(a),
        Command::Snapshot(a) => commands::snapshot::run(a),
        Command::Volume(a) => commands::volume::run(a),
        Command::Tenants(a) => commands::tenants::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            let (code, say) = client::exit_status(&e);
            if say {
                eprintln!("warren: {}", term::clean(&format!("{e:#}")));
            }
            // A bad flag or argument is the caller's to change (2), as is a daemon's
            // refusal (1); not reaching it, or a sandbox that could not be made, is
            // Warren's (125).
            ExitCode::from(code)
        }
    }
}

/// The command line. A verb's flags (and its own verbs) are built only when it is the
/// verb named (`defer` on the verbs' enum): building every verb's was half of the
/// instructions of a CLI start. Help and usage errors are rendered from the whole
/// command, which lists each verb with its help text.
fn parse(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    Cli::try_parse_from(&args).or_else(|_| {
        // Named as clap names it, after the program's file.
        let bin = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name()?.to_str())
            .unwrap_or("warren")
            .to_owned();
        whole_command(&bin)
            .try_get_matches_from(args)
            .and_then(|m| Cli::from_arg_matches(&m))
    })
}

/// Every verb and flag, built, the program named `bin`. Each verb is built before the
/// whole: clap's `help` verb copies the verbs as they are when it is made, and a verb not
/// built yet has none of its own (`warren help template import`, and the completion
/// scripts, need them). A verb built alone would name itself as the program: it is
/// named as the whole command names it.
fn whole_command(bin: &str) -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command().bin_name(bin);
    let verbs: Vec<String> = cmd
        .get_subcommands()
        .map(|v| v.get_name().to_owned())
        .collect();
    for verb in verbs {
        cmd = cmd.mut_subcommand(&verb, |v| {
            let mut v = v.bin_name(format!("{bin} {verb}"));
            v.build();
            v
        });
    }
    cmd.build();
    cmd
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
    eprintln!(
        "warren: {} (see --help)",
        one_line_usage(&e.render().to_string())
    );
    ExitCode::from(2)
}

/// clap's error as one line: its first line with what follows it (the missing
/// arguments, the allowed values, a tip) up to the usage.
fn one_line_usage(text: &str) -> String {
    let mut parts = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Usage:") || l.starts_with("For more information") {
            break;
        }
        if !l.is_empty() {
            parts.push(l.trim_start_matches("error: "));
        }
    }
    if parts.is_empty() {
        return "invalid arguments".into();
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::{whole_command, Cli};

    /// A verb's flags are built only when it is named: what is parsed is what the whole
    /// command parses, and help lists every verb (and a verb's own verbs) with its text.
    #[test]
    fn a_verb_built_when_named_parses_and_helps_as_the_whole_command() {
        use clap::FromArgMatches;
        for args in [
            &["run", "--rm", "--memory", "256M", "--", "sh", "-c", "true"][..],
            &["--tenant", "t", "exec", "lab", "--", "ls", "-l"],
            &["create", "--network", "nat", "--template", "base"],
            &[
                "template", "build", "--name", "x", "--from", "base", "--run", "true",
            ],
            &["keys", "ssh", "ls"],
            &["volume", "ls"],
        ] {
            let argv: Vec<&str> = std::iter::once("warren")
                .chain(args.iter().copied())
                .collect();
            let whole = whole_command("warren")
                .try_get_matches_from(&argv)
                .and_then(|m| Cli::from_arg_matches(&m))
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.to_string());
            // As `parse` first tries: the verb built when named.
            let named = <Cli as clap::Parser>::try_parse_from(&argv)
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.to_string());
            assert_eq!(named, whole, "{args:?}");
        }
        let help = |args: &[&str]| parse(args).unwrap_err().render().to_string();
        let top = help(&["--help"]);
        assert!(top.contains("Run a command in a new sandbox"), "{top}");
        assert!(top.contains("Manage templates"), "{top}");
        let template = help(&["template", "--help"]);
        assert!(template.contains("List templates"), "{template}");
        let keys = help(&["keys", "ssh", "--help"]);
        assert!(keys.contains("Register an owner's public key"), "{keys}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        whole_command("warren").debug_assert();
    }

    /// Every verb says what it does, in words of its own (no two verbs share a help
    /// text), and every flag and argument has a help line.
    #[test]
    fn every_verb_and_flag_has_its_own_help() {
        fn walk(
            c: &clap::Command,
            path: &str,
            missing: &mut Vec<String>,
            abouts: &mut Vec<(String, String)>,
        ) {
            for sub in c.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() == "help" {
                    continue;
                }
                match sub.get_about() {
                    Some(about) => abouts.push((about.to_string(), name.clone())),
                    None => missing.push(format!("{name}: no help text")),
                }
                for arg in sub.get_arguments() {
                    let id = arg.get_id().as_str();
                    if matches!(id, "help" | "version") || arg.is_hide_set() {
                        continue;
                    }
                    if arg.get_help().is_none() && arg.get_long_help().is_none() {
                        missing.push(format!("{name}: {id} has no help"));
                    }
                }
                walk(sub, &name, missing, abouts);
            }
        }
        let mut missing = Vec::new();
        let mut abouts = Vec::new();
        walk(
            &whole_command("warren"),
            "warren",
            &mut missing,
            &mut abouts,
        );
        abouts.sort();
        for pair in abouts.windows(2) {
            if pair[0].0 == pair[1].0 {
                missing.push(format!("{} and {} share a help text", pair[0].1, pair[1].1));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// Each shell's script names the verbs.
    #[test]
    fn completion_scripts_know_the_verbs() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut whole_command("warren"), "warren", &mut script);
            let text = String::from_utf8(script).unwrap();
            for verb in ["create", "exec", "egress", "template"] {
                assert!(text.contains(verb), "{shell}: {verb}");
            }
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        super::parse(
            std::iter::once("warren")
                .chain(args.iter().copied())
                .map(Into::into)
                .collect(),
        )
    }

    /// A usage error names what is missing or wrong, and what would do.
    #[test]
    fn usage_errors_say_what_to_change() {
        let err =
            |args: &[&str]| super::one_line_usage(&parse(args).unwrap_err().render().to_string());
        let m = err(&["inspect"]);
        assert!(m.contains("<KEY>"), "{m}");
        let m = err(&["exec"]);
        assert!(m.contains("<KEY>"), "{m}");
        let m = err(&["create", "--network", "bogus"]);
        assert!(m.contains("none") && m.contains("nat"), "{m}");
        let m = err(&["create", "--on-timeout", "x"]);
        assert!(m.contains("pause") && m.contains("terminate"), "{m}");
    }
}
