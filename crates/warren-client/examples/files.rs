//! A sandbox's files: writes a script, lists and reads it back, runs it, and tidies up.
//!
//! ```sh
//! cargo run -p warren-client --example files
//! ```

use warren_client::warren_types::api::CreateSandbox;
use warren_client::{argv, Client, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let client = Client::from_env()?;
    let sandbox = client.create(&CreateSandbox::default()).await?;
    let result = files(&client, &sandbox.id).await;
    client.remove(&sandbox.id).await?;
    result
}

async fn files(client: &Client, key: &str) -> Result<(), Error> {
    let files = client.files(key);
    files.mkdir("/tmp/demo/bin").await?;
    files
        .write(
            "/tmp/demo/bin/hello.sh",
            "echo hello from a file\n",
            Some(0o755),
        )
        .await?;
    for entry in files.list("/tmp/demo", 2).await? {
        println!("{:?} {} {} bytes", entry.file_type, entry.path, entry.size);
    }
    let text = files.read("/tmp/demo/bin/hello.sh").await?;
    print!("contents: {}", String::from_utf8_lossy(&text));
    let ran = client.exec(key, &argv(["/tmp/demo/bin/hello.sh"])).await?;
    print!("ran: {}", ran.stdout);
    files
        .rename("/tmp/demo/bin/hello.sh", "/tmp/demo/hi.sh")
        .await?;
    let stat = files.stat("/tmp/demo/hi.sh").await?;
    println!("renamed: {} mode {:o}", stat.path, stat.mode & 0o7777);
    files.remove("/tmp/demo", true).await?;
    match files.stat("/tmp/demo").await {
        Err(e) if e.is_not_found() => println!("removed: {e}"),
        Err(e) => return Err(e),
        Ok(_) => return Err(Error::Protocol("/tmp/demo is still there".into())),
    }
    Ok(())
}
