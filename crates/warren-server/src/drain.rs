//! Reads what a client sent before refusing it.
//!
//! A route that answers an error before reading the request body (a bad path, a missing
//! credential, no such route) leaves the body unread; the server then closes the
//! connection while the client may still be writing, the kernel resets it, and the client
//! sees "connection reset" or "broken pipe" instead of the answer. This layer hands the
//! handler a body it can still take back: when the answer is an error and the handler let
//! go of the body unread, the rest is read (up to [`DRAIN_LIMIT`] bytes, for at most
//! [`DRAIN_TIME`]) and thrown away before the answer goes out.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// Most bytes read and thrown away after an error; a larger upload is cut off.
pub(crate) const DRAIN_LIMIT: u64 = 16 << 20;
/// Longest wait for the rest of a refused request.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(5);

type Slot = Arc<Mutex<Option<Body>>>;

/// The request body as the handler sees it; the layer keeps a handle on what is left.
struct Shared(Slot);

impl http_body::Body for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            *slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

/// The middleware: see the module's comment.
pub(crate) async fn drain_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if http_body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let slot: Slot = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, Body::new(Shared(slot.clone())));
    let response = next.run(req).await;
    let refused = response.status().is_client_error() || response.status().is_server_error();
    // Still held elsewhere means a task of the handler reads it: not ours to touch.
    if refused && Arc::strong_count(&slot) == 1 {
        let rest = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(body) = rest {
            // Each piece is dropped as it comes: many refused uploads at once must not
            // hold their bodies in the daemon.
            let mut limited = http_body_util::Limited::new(body, DRAIN_LIMIT as usize);
            let discard = async { while let Some(Ok(_)) = limited.frame().await {} };
            let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A refusal that never looks at the body, and a route that reads it.
    fn app() -> Router {
        Router::new()
            .route("/refuse", post(|| async { StatusCode::BAD_REQUEST }))
            .route(
                "/echo",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn(drain_unread))
    }

    /// Sends `head` and a body of `len` bytes in small writes with pauses, as a slow
    /// client does, and returns the status line it got.
    async fn send_slowly(addr: std::net::SocketAddr, path: &str, len: usize) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'a'; 64 << 10];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            s.write_all(&chunk[..n])
                .await
                .expect("the server reset the connection while the client was sending");
            sent += n;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut buf = vec![0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    #[tokio::test]
    async fn a_refused_body_is_read_before_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        assert_eq!(
            send_slowly(addr, "/refuse", 2 << 20).await,
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(send_slowly(addr, "/echo", 1 << 20).await, "HTTP/1.1 200 OK");
    }
}
