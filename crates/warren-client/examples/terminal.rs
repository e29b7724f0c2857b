//! A terminal in a sandbox: types a line into a shell, resizes the window, and prints
//! the screen until the shell exits.
//!
//! ```sh
//! cargo run -p warren-client --example terminal
//! ```

use std::io::Write;

use warren_client::warren_types::api::CreateSandbox;
use warren_client::{Client, Error, Notice, TerminalEvent, TerminalOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let client = Client::from_env()?;
    let sandbox = client.create(&CreateSandbox::default()).await?;
    let result = terminal(&client, &sandbox.id).await;
    client.remove(&sandbox.id).await?;
    result
}

async fn terminal(client: &Client, key: &str) -> Result<(), Error> {
    let opts = TerminalOptions {
        cmd: Some("read -r line; echo \"you typed: $line\"; stty size; exit 7".into()),
        ..TerminalOptions::default()
    };
    let term = client.terminal(key, &opts).await?;
    // One task types while this one reads the screen.
    let (mut keys, mut screen) = term.split();
    let typing = tokio::spawn(async move {
        keys.resize(30, 100).await?;
        keys.write("hello\r").await?;
        Ok::<_, Error>(keys)
    });
    loop {
        match screen.next().await? {
            Some(TerminalEvent::Output(b)) => {
                let _ = std::io::stdout().write_all(&b);
            }
            Some(TerminalEvent::Notice(Notice::Exit(e))) => {
                println!("\nshell exited with {:?}", e.exit_code);
                break;
            }
            Some(TerminalEvent::Notice(n)) => println!("\nnotice: {n:?}"),
            None => return Err(Error::Connection("the terminal closed early".into())),
        }
    }
    let mut keys = typing
        .await
        .map_err(|e| Error::Connection(e.to_string()))??;
    let _ = keys.close().await;
    Ok(())
}
