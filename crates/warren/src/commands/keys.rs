//! `warren keys`: API keys for tenants, which TCP clients present as
//! `Authorization: Bearer <key>`. Only the unix socket hands them out, so only whoever
//! may open it (the host's root) makes keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{block_on, out, Client, ClientArgs};

/// Manage API keys.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new API key for a tenant (created if new) and print it. The key is shown
    /// only this once.
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// An operator's key: no quota, any host port, the whole host's metrics and
        /// templates for every tenant. Give these to people who run the host only.
        #[arg(long)]
        operator: bool,
        /// The daemon's unix socket [default: $WARREN_RUN_DIR/warren.sock, or
        /// /run/warren/warren.sock].
        #[arg(long, env = "WARREN_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize)]
struct KeyRequest<'a> {
    tenant: &'a str,
    operator: bool,
}

#[derive(Debug, Deserialize)]
struct KeyResponse {
    api_key: String,
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        KeysCommand::Create {
            tenant,
            operator,
            socket,
        } => {
            let client = Client::new(&ClientArgs {
                socket,
                ..ClientArgs::default()
            })?;
            let body = KeyRequest {
                tenant: &tenant,
                operator,
            };
            let key: KeyResponse = block_on(client.call(Method::POST, "/v1/keys", Some(&body)))??;
            out(format!("{}\n", key.api_key))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
