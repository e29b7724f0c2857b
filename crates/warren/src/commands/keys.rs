//! `warren keys`: API keys for tenants, which TCP clients present as
//! `Authorization: Bearer <key>`. Only the unix socket hands them out, so only whoever
//! may open it (the host's root) makes keys; a key lists and revokes its own tenant's,
//! each named by an id that does not reveal it. `warren keys ssh`: the public keys owners
//! sign in to the SSH gateway with, a tenant's to manage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{block_on, connect, enc, named_tenant, out, ClientArgs};
use crate::format::ListOutput;

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
    /// List API keys by id (never the keys themselves): the tenant's own, or on the unix
    /// socket every tenant's (`--tenant`: one's).
    Ls {
        #[command(flatten)]
        output: ListOutput,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke API keys by id (as `warren keys ls` shows them): every request with one is
    /// refused from then on.
    Revoke {
        /// The keys' ids (16 hex digits, the ID column of `warren keys ls`).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Public keys for the SSH gateway (`warren serve --ssh-listen`).
    Ssh {
        #[command(subcommand)]
        command: SshCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SshCommand {
    /// Register an owner's public key: `ssh OWNER+SANDBOX@host` then signs in with it
    /// and lands in that owner's sandbox (made if missing).
    Add {
        /// The owner the key signs in as.
        #[arg(long)]
        owner: String,
        /// The template a sandbox this key signs in to is made from, when it does not
        /// exist yet [default: the daemon's].
        #[arg(long)]
        template: Option<String>,
        /// The public key file (e.g. ~/.ssh/id_ed25519.pub); `-` reads it from stdin.
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the tenant's keys.
    Ls {
        /// Only this owner's.
        #[arg(long)]
        owner: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a key by its fingerprint (`SHA256:...`, as `warren keys ssh ls` shows it).
    Rm {
        /// The key's fingerprint, `SHA256:...`.
        fingerprint: String,
        /// Only from this owner (otherwise from every owner that has it).
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
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
            let client = connect(&ClientArgs {
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
        KeysCommand::Ls { output, client } => ls(&output, &client),
        KeysCommand::Revoke { ids, client } => {
            super::for_each(&client, &ids, Method::DELETE, |id| {
                format!("/v1/keys/{}", enc(id))
            })
        }
        KeysCommand::Ssh { command } => ssh(command),
    }
}

fn ls(output: &ListOutput, args: &ClientArgs) -> anyhow::Result<ExitCode> {
    use warren_types::api::ApiKeyInfo;
    let client = connect(args)?;
    // Over TCP the key decides whose keys are listed.
    let path = match named_tenant(args).filter(|_| args.host.is_none()) {
        Some(t) => format!("/v1/keys?tenant={}", enc(&t)),
        None => "/v1/keys".to_string(),
    };
    let list = block_on(client.call(Method::GET, &path, None::<&()>))??;
    output.print(
        list,
        |k: &ApiKeyInfo| k.id.clone(),
        |list| {
            let now = jiff::Timestamp::now();
            let mut text = format!(
                "{:<16}  {:<24} {:<8} {}\n",
                "ID", "TENANT", "OPERATOR", "CREATED"
            );
            for k in list {
                let created = jiff::Timestamp::from_millisecond(k.created_at)
                    .map(|t| super::ls::ago(&t.to_string(), now))
                    .unwrap_or_else(|_| "-".into());
                text.push_str(&format!(
                    "{:<16}  {:<24} {:<8} {created} ago\n",
                    k.id,
                    crate::term::clean_line(&k.tenant),
                    if k.operator { "yes" } else { "no" },
                ));
            }
            text
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

fn ssh(command: SshCommand) -> anyhow::Result<ExitCode> {
    use warren_types::api::{AddSshKey, SshKey};
    match command {
        SshCommand::Add {
            owner,
            template,
            file,
            client,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
            };
            let client = connect(&client)?;
            let body = AddSshKey {
                owner,
                public_key: text.trim().to_string(),
                template,
            };
            let key: SshKey = block_on(client.call(Method::POST, "/v1/ssh-keys", Some(&body)))??;
            out(format!(
                "{} {} ({})\n",
                key.fingerprint, key.owner, key.algorithm
            ))?;
        }
        SshCommand::Ls {
            owner,
            json,
            client,
        } => {
            let client = connect(&client)?;
            let path = match &owner {
                Some(o) => format!("/v1/ssh-keys?owner={}", enc(o)),
                None => "/v1/ssh-keys".to_string(),
            };
            let keys: Vec<SshKey> = block_on(client.call(Method::GET, &path, None::<&()>))??;
            if json {
                out(format!("{}\n", serde_json::to_string_pretty(&keys)?))?;
            } else {
                let mut text = format!(
                    "{:<16} {:<52} {:<20} {}\n",
                    "OWNER", "FINGERPRINT", "TYPE", "COMMENT"
                );
                for k in keys {
                    text.push_str(&format!(
                        "{:<16} {:<52} {:<20} {}\n",
                        k.owner, k.fingerprint, k.algorithm, k.comment
                    ));
                }
                out(text)?;
            }
        }
        SshCommand::Rm {
            fingerprint,
            owner,
            client,
        } => {
            let client = connect(&client)?;
            let mut path = format!("/v1/ssh-keys/{}", enc(&fingerprint));
            if let Some(o) = &owner {
                path.push_str(&format!("?owner={}", enc(o)));
            }
            block_on(client.call_raw(Method::DELETE, &path, None::<&()>))??;
        }
    }
    Ok(ExitCode::SUCCESS)
}
