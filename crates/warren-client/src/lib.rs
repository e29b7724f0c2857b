//! A Rust client of Warren's REST API (`warren serve`), over the daemon's unix socket or
//! over TCP with an API key. It speaks the wire types of `warren-types` and nothing of
//! the daemon's insides.
//!
//! ```no_run
//! use warren_client::{argv, Client, Output};
//! use warren_types::api::CreateSandbox;
//!
//! # async fn demo() -> Result<(), warren_client::Error> {
//! let client = Client::from_env()?; // WARREN_HOST + WARREN_API_KEY, or the unix socket
//! let sandbox = client.create(&CreateSandbox::default()).await?;
//! let mut run = client.exec_stream(&sandbox.id, &argv(["sh", "-c", "echo hi; exit 3"])).await?;
//! while let Some(out) = run.next().await? {
//!     match out {
//!         Output::Stdout(b) | Output::Stderr(b) => print!("{}", String::from_utf8_lossy(&b)),
//!         Output::Exit(e) => println!("exit {:?}", e.exit_code),
//!     }
//! }
//! client.remove(&sandbox.id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every call opens its own connection, so a [`Client`] is cheap to clone and share
//! between tasks. Sandboxes are named by their id, their name, or `owner/name`. A
//! refusal of the daemon is an [`Error::Api`] with the daemon's stable code (docs/api.md
//! lists them); [`Client::send`], [`Client::call`], [`Client::lines`] and
//! [`Client::websocket`] reach the routes without a typed method here.

#![warn(missing_docs)]

mod error;
pub mod exec;
pub mod files;
pub mod keys;
pub mod sandboxes;
pub mod sessions;
pub mod tenants;
pub mod terminal;
mod transport;

pub use hyper::Method;
pub use warren_types;

pub use crate::error::Error;
pub use crate::exec::{argv, shell, ExecStream, Exit, Output, Piece, Pieces, ProcessHandle};
pub use crate::files::Files;
pub use crate::sandboxes::{
    Events, Health, ListFilter, SnapshotRequest, SnapshotResult, TemplateInfo,
};
pub use crate::sessions::Lease;
pub use crate::terminal::{
    Notice, Terminal, TerminalEvent, TerminalInput, TerminalOptions, TerminalOutput,
};
pub use crate::transport::{
    default_socket, enc, sandbox_path, Client, Frames, Io, Lines, ACCESS_TOKEN_HEADER,
    TENANT_HEADER,
};
