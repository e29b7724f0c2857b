//! The CLI's side of a running daemon (`warren serve`): the `warren-client` crate, with
//! the flags that choose the daemon, the tenant `warren --tenant` sets, and the CLI's own
//! errors (its output) and exit statuses.
//!
//! Errors keep the daemon's stable code: an API error exits 1 and prints
//! `warren: <message> (<code>)`; a daemon that cannot be reached exits 125 with a hint.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

pub use warren_client::{enc, sandbox_path, Client, Lines, Piece, Pieces};
use warren_types::api::WireCode;

/// How to reach the daemon; accepted by every verb that talks to it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// The daemon's unix socket [default: $WARREN_RUN_DIR/warren.sock, or
    /// /run/warren/warren.sock].
    #[arg(long, env = "WARREN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Reach the daemon over TCP instead, e.g. http://127.0.0.1:3000; the API key is read
    /// from WARREN_API_KEY.
    #[arg(long, env = "WARREN_HOST", value_name = "URL")]
    pub host: Option<String>,
    /// The tenant to act for on the unix socket [default: `warren --tenant`, else
    /// WARREN_TENANT, else default]. Over TCP the API key decides.
    #[arg(long)]
    pub tenant: Option<String>,
}

/// `warren --tenant` (or WARREN_TENANT): the tenant of every verb that names none.
static DEFAULT_TENANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the tenant of every verb that names none; the first call wins.
pub fn set_default_tenant(tenant: Option<String>) {
    if let Some(t) = tenant {
        let _ = DEFAULT_TENANT.set(t);
    }
}

/// The tenant the verb names (`--tenant`), else `warren --tenant` (or WARREN_TENANT).
pub fn named_tenant(args: &ClientArgs) -> Option<String> {
    args.tenant
        .clone()
        .or_else(|| DEFAULT_TENANT.get().cloned())
}

/// The daemon the flags and the environment name: `--host` (TCP, with WARREN_API_KEY)
/// wins over the socket.
pub fn connect(args: &ClientArgs) -> Result<Client, ClientError> {
    let client = match &args.host {
        Some(h) => Client::tcp(h, std::env::var("WARREN_API_KEY").ok())?,
        None => Client::unix(
            args.socket
                .clone()
                .unwrap_or_else(warren_client::default_socket),
        ),
    };
    Ok(match named_tenant(args) {
        Some(t) => client.with_tenant(t),
        None => client,
    })
}

/// Why a call to the daemon failed.
pub use warren_client::Error as ClientError;

/// Why a verb failed: the daemon's answer, or the CLI's own output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Our stdout's reader went away (`warren ls | head`): the command ends quietly, as
    /// SIGPIPE would end it.
    #[error("stdout is closed")]
    StdoutClosed,
    #[error("cannot write the output: {0}")]
    Output(String),
}

impl Error {
    /// The daemon refused the call with `code` and `message`.
    pub fn api(code: String, message: String) -> Self {
        Self::Client(ClientError::Api { code, message })
    }

    /// The CLI's usage error: a flag or argument that cannot be used.
    pub fn invalid(message: String) -> Self {
        Self::Client(ClientError::Invalid(message))
    }

    /// The daemon's answer is not what it should be.
    pub fn protocol(message: String) -> Self {
        Self::Client(ClientError::Protocol(message))
    }

    /// The connection broke.
    pub fn connection(message: String) -> Self {
        Self::Client(ClientError::Connection(message))
    }

    /// What the caller named is not there (a port a sandbox does not publish, a process
    /// it does not have): refused as the daemon refuses what it cannot find.
    pub fn not_found(message: String) -> Self {
        Self::api(WireCode::NotFound.as_str().into(), message)
    }

    /// The CLI's exit status for this error: 2 for a flag or argument that cannot be used,
    /// 1 when the daemon said no, 125 when it could not be asked.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Client(e) => client_exit_code(e),
            Self::StdoutClosed => 141,
            Self::Output(_) => 125,
        }
    }
}

fn client_exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Api { .. } => 1,
        ClientError::Invalid(_) => 2,
        _ => 125,
    }
}

/// The exit status of a verb that failed with `e`, and whether its message is printed
/// (not when our stdout went away).
pub fn exit_status(e: &anyhow::Error) -> (u8, bool) {
    if let Some(e) = e.downcast_ref::<Error>() {
        return (e.exit_code(), !matches!(e, Error::StdoutClosed));
    }
    match e.downcast_ref::<ClientError>() {
        Some(e) => (client_exit_code(e), true),
        None => (125, true),
    }
}

/// Runs a client verb on a single-threaded runtime. The runtime is not waited for at the
/// end: a thread blocked reading the terminal must not keep the CLI from exiting.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    Ok(out)
}

/// Writes `data` to stdout and flushes it, so streamed output shows as it comes.
pub fn out(data: impl AsRef<[u8]>) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(data.as_ref())
        .and_then(|_| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Error::StdoutClosed,
            _ => Error::Output(e.to_string()),
        })
}

/// Writes `data` to stderr.
pub fn write_stderr(data: &[u8]) {
    let _ = std::io::stderr().lock().write_all(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let api = Error::api("not_found".into(), "no sandbox \"x\"".into());
        assert_eq!(api.exit_code(), 1);
        assert_eq!(api.to_string(), "no sandbox \"x\" (not_found)");
        let conn = Error::Client(ClientError::Connect {
            target: "socket /run/warren/warren.sock".into(),
            reason: "No such file or directory (os error 2)".into(),
        });
        assert_eq!(conn.exit_code(), 125);
        assert!(conn.to_string().contains("is `warren serve` running?"));
        assert_eq!(Error::invalid("--x".into()).exit_code(), 2);
        assert_eq!(Error::StdoutClosed.exit_code(), 141);
        // A client error that reached anyhow directly exits as it would have wrapped.
        let bare = anyhow::Error::from(ClientError::Api {
            code: "name_taken".into(),
            message: "m".into(),
        });
        assert_eq!(exit_status(&bare), (1, true));
        assert_eq!(exit_status(&Error::StdoutClosed.into()), (141, false));
        assert_eq!(exit_status(&anyhow::anyhow!("other")), (125, true));
    }
}
