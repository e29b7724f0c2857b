//! One module per CLI verb, and `flags` for the sandbox flags several verbs take.

pub mod attach;
pub mod backends;
pub mod backup;
pub mod cp;
pub mod create;
pub mod doctor;
pub mod egress;
pub mod events;
pub mod exec;
mod flags;
pub mod fork;
pub mod gc;
pub mod inspect;
pub mod keys;
pub mod logs;
pub mod ls;
pub mod pause;
pub mod port;
pub mod ps;
pub mod resume;
pub mod rm;
pub mod run;
pub mod serve;
pub mod share;
pub mod snapshot;
pub mod start;
pub mod stats;
pub mod stop;
pub mod template;
pub mod tenants;
pub mod volume;

use std::process::ExitCode;

use hyper::Method;

use crate::client::{block_on, connect, out, sandbox_path, ClientArgs, ClientError, Error};

/// One call per sandbox named; each success prints its key, each failure its error, and
/// the status is 1 if any failed (the others still happen).
pub(crate) fn for_each_sandbox(
    client: &ClientArgs,
    keys: &[String],
    method: Method,
    action: &str,
) -> anyhow::Result<ExitCode> {
    for_each(client, keys, method, |key| sandbox_path(key, action))
}

/// [`for_each_sandbox`] for any resource: one `method` call on `path(key)` per key.
pub(crate) fn for_each(
    client: &ClientArgs,
    keys: &[String],
    method: Method,
    path: impl Fn(&str) -> String,
) -> anyhow::Result<ExitCode> {
    let client = connect(client)?;
    let failed = block_on(async {
        let mut failed = false;
        for key in keys {
            let path = path(key);
            match client.call_raw(method.clone(), &path, None::<&()>).await {
                Ok(_) => out(format!("{key}\n"))?,
                Err(e @ ClientError::Api { .. }) => {
                    eprintln!("warren: {e}");
                    failed = true;
                }
                // The daemon is unreachable: the other keys would fail the same way.
                Err(e) => return Err(e.into()),
            }
        }
        Ok::<_, Error>(failed)
    })??;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
