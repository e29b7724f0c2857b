//! Makes a sandbox, runs a command in it with its output streamed as it comes, and
//! removes the sandbox.
//!
//! ```sh
//! cargo run -p warren-client --example run               # the daemon's default socket
//! WARREN_SOCKET=/tmp/w/run/warren.sock cargo run -p warren-client --example run
//! WARREN_HOST=http://127.0.0.1:7070 WARREN_API_KEY=... cargo run -p warren-client --example run
//! ```

use std::io::Write;

use warren_client::warren_types::api::CreateSandbox;
use warren_client::{argv, Client, Error, Output};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let client = Client::from_env()?;
    let sandbox = client.create(&CreateSandbox::default()).await?;
    println!("sandbox {}", sandbox.id);
    let result = run(&client, &sandbox.id).await;
    // Removed whatever the command did.
    client.remove(&sandbox.id).await?;
    let code = result?;
    println!("exit code {code}");
    Ok(())
}

async fn run(client: &Client, key: &str) -> Result<i32, Error> {
    let script = "for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo done >&2; exit 3";
    let mut process = client.exec_stream(key, &argv(["sh", "-c", script])).await?;
    loop {
        match process.next().await? {
            Some(Output::Stdout(b)) => {
                let _ = std::io::stdout().write_all(&b);
                let _ = std::io::stdout().flush();
            }
            Some(Output::Stderr(b)) => {
                let _ = std::io::stderr().write_all(&b);
            }
            Some(Output::Exit(exit)) => return Ok(exit.shell_code()),
            None => return Err(Error::Protocol("no exit".into())),
        }
    }
}
