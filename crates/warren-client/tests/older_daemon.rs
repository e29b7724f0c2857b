//! A daemon older than binary exec streams refuses `stream=binary` (as any unknown query
//! value, before running anything); the client then streams NDJSON from it. The daemon
//! here is a stand-in speaking HTTP/1.1 on a unix socket, as such a daemon answered.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use warren_client::{argv, Client, Output};

/// Answers each request on its own connection: 400 for `stream=binary`, NDJSON (base64
/// output, then the exit) otherwise; returns the request lines it was sent.
async fn older_daemon(listener: UnixListener, requests: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..requests {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).await.unwrap();
        let line = head.lines().next().unwrap().to_string();
        let (status, body) = if line.contains("stream=binary") {
            (
                "400 Bad Request",
                r#"{"code":"invalid_request","message":"query: provided string was not `true` or `false`"}"#
                    .to_string(),
            )
        } else {
            let started = if line.starts_with("POST") {
                "{\"type\":\"started\",\"pid\":7}\n"
            } else {
                ""
            };
            (
                "200 OK",
                format!(
                    "{started}{{\"type\":\"stdout\",\"data\":\"aGkK\"}}\n\
                     {{\"type\":\"stderr\",\"data\":\"AP8=\"}}\n\
                     {{\"type\":\"exit\",\"exit_code\":3,\"signal\":null,\"timed_out\":false,\"oom_killed\":false}}\n"
                ),
            )
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        seen.push(line);
    }
    seen
}

async fn collect(mut run: warren_client::ExecStream) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match run.next().await.unwrap() {
            Some(Output::Stdout(d)) => out.extend_from_slice(&d),
            Some(Output::Stderr(d)) => err.extend_from_slice(&d),
            Some(Output::Exit(e)) => return (out, err, e.exit_code),
            None => panic!("the stream ended before the exit"),
        }
    }
}

#[tokio::test]
async fn an_older_daemon_streams_ndjson_to_the_same_calls() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("warren.sock");
    let daemon = tokio::spawn(older_daemon(UnixListener::bind(&socket).unwrap(), 4));
    let c = Client::unix(&socket);

    let run = c.exec_stream("lab", &argv(["echo", "hi"])).await.unwrap();
    assert_eq!(run.pid(), 7);
    assert_eq!(
        collect(run).await,
        (b"hi\n".to_vec(), vec![0, 255], Some(3))
    );
    let attached = c.attach("lab", 7, true).await.unwrap();
    assert_eq!(
        collect(attached).await,
        (b"hi\n".to_vec(), vec![0, 255], Some(3))
    );

    let seen = daemon.await.unwrap();
    assert!(
        seen[0].starts_with("POST /v1/sandboxes/lab/exec?stream=binary "),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with("POST /v1/sandboxes/lab/exec?stream=true "),
        "{seen:?}"
    );
    assert!(
        seen[2].contains("/attach?replay=true&stream=binary "),
        "{seen:?}"
    );
    // Its attach knows no stream parameter: asked again without one.
    assert!(
        seen[3].starts_with("GET /v1/sandboxes/lab/processes/7/attach?replay=true "),
        "{seen:?}"
    );
}
