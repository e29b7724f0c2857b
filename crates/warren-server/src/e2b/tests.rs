//! The E2B router through `oneshot`: authentication, routing by header, error shapes,
//! and bad input. A real manager that makes no sandbox, so no root is needed; the SDK
//! drives live sandboxes in `tests/e2b`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt;
use warren_core::Paths;
use warren_core::{Config, Manager};

use super::router;
use crate::conn::Trusted;

struct Env {
    _dir: tempfile::TempDir,
    mgr: Arc<Manager>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths {
        run: dir.path().join("run"),
        data: dir.path().join("data"),
    };
    let mgr = Manager::open(Config::new(paths, "/nonexistent".into()))
        .await
        .expect("manager");
    Env { _dir: dir, mgr }
}

impl Env {
    fn app(&self) -> Router {
        let (_, rx) = watch::channel(false);
        router(self.mgr.clone(), rx, super::E2bOptions::default())
    }
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, Vec<u8>, String) {
    let resp = app.oneshot(req).await.expect("response");
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.to_vec(), ct)
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

#[tokio::test]
async fn control_plane_needs_a_key() {
    let e = env().await;
    let req = Request::get("/v2/sandboxes").body(Body::empty()).unwrap();
    let (status, body, _) = send(e.app(), req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["code"], 401);
    let req = Request::get("/v2/sandboxes")
        .header("x-api-key", "wrn_nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(e.app(), req).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn control_plane_lists_and_refuses_bad_input() {
    let e = env().await;
    let key = e.mgr.create_api_key("t1", false).unwrap();
    let get = |uri: &str| {
        Request::get(uri)
            .header("x-api-key", key.as_str())
            .body(Body::empty())
            .unwrap()
    };
    let (status, body, _) = send(e.app(), get("/v2/sandboxes?state=running")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body), serde_json::json!([]));
    let (status, body, _) = send(e.app(), get("/sandboxes/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["code"], 404);
    for bad in [
        "/v2/sandboxes?limit=x",
        "/v2/sandboxes?nextToken=%21",
        "/v2/sandboxes?order=up",
    ] {
        assert_eq!(
            send(e.app(), get(bad)).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let post = Request::post("/v2/sandboxes")
        .header("x-api-key", key.as_str())
        .body(Body::from("{not json"))
        .unwrap();
    assert_eq!(send(e.app(), post).await.0, StatusCode::BAD_REQUEST);
    let post = Request::post("/v2/sandboxes")
        .header("x-api-key", key.as_str())
        .body(Body::from(r#"{"templateID":"no-such-template"}"#))
        .unwrap();
    let (status, _, _) = send(e.app(), post).await;
    assert!(status.is_client_error(), "{status}");
    let (status, body, _) = send(e.app(), get("/sandboxes/x/logs")).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(json(&body)["code"], 501);
    // Implemented, for a sandbox that exists: another's or a missing one is 404.
    let (status, _, _) = send(e.app(), get("/sandboxes/x/metrics")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn envd(uri: &str, sandbox: &str, token: Option<&str>, ct: &str, body: &str) -> Request<Body> {
    let mut b = Request::post(uri)
        .header("e2b-sandbox-id", sandbox)
        .header(header::CONTENT_TYPE, ct);
    if let Some(t) = token {
        b = b.header("x-access-token", t);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn envd_checks_the_token_before_anything() {
    let e = env().await;
    let uri = "/filesystem.Filesystem/Stat";
    let (status, body, _) = send(
        e.app(),
        envd(uri, "sb1", None, "application/json", r#"{"path":"/"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["code"], 401);
    // An unknown sandbox and a wrong token look the same: E2B's proxy answer.
    let (status, body, _) = send(
        e.app(),
        envd(uri, "sb1", Some("tok"), "application/json", "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("was not found"));
}

/// Whether `r`, coming off a TCP connection, marks that connection as authenticated.
async fn marks(app: Router, mut r: Request<Body>) -> bool {
    let mark = Trusted::default();
    r.extensions_mut().insert(mark.clone());
    let _ = send(app, r).await;
    mark.is_set()
}

#[tokio::test]
async fn keys_and_tokens_that_pass_mark_the_connection() {
    let e = env().await;
    let key = e.mgr.create_api_key("t1", false).unwrap();
    let control = |key: &str| {
        Request::get("/v2/sandboxes")
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap()
    };
    assert!(marks(e.app(), control(&key)).await);
    assert!(!marks(e.app(), control("wrn_nope")).await);
    let health = Request::get("/health").body(Body::empty()).unwrap();
    assert!(!marks(e.app(), health).await);
    let stat = "/filesystem.Filesystem/Stat";
    let wrong = envd(stat, "sb1", Some("tok"), "application/json", "{}");
    assert!(!marks(e.app(), wrong).await);
    let port = Request::get("/")
        .header(header::HOST, "8080-abc123.example.com")
        .body(Body::empty())
        .unwrap();
    assert!(!marks(e.app(), port).await);
}

#[tokio::test]
async fn ports_by_host_header_go_to_the_sandbox() {
    let e = env().await;
    // No such sandbox: E2B's proxy answer (the traffic itself is tested with real
    // sandboxes in tests/e2b).
    let req = Request::get("/")
        .header(header::HOST, "8080-abc123.example.com")
        .body(Body::empty())
        .unwrap();
    let (status, body, _) = send(e.app(), req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["code"], 502);
    // A plain host:port goes to the control plane.
    let req = Request::get("/health")
        .header(header::HOST, "127.0.0.1:3001")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(e.app(), req).await.0, StatusCode::OK);
}

#[test]
fn targets_come_from_headers_or_host() {
    use axum::http::HeaderMap;
    let mut h = HeaderMap::new();
    assert_eq!(super::target(&h), None);
    h.insert(header::HOST, "49983-abc.e2b.local".parse().unwrap());
    let t = super::target(&h).unwrap();
    assert_eq!((t.sandbox.as_str(), t.port), ("abc", 49983));
    h.insert(header::HOST, "localhost:3000".parse().unwrap());
    assert_eq!(super::target(&h), None);
    h.insert(header::HOST, "49983-a/b.x".parse().unwrap());
    assert_eq!(super::target(&h), None);
    h.insert("e2b-sandbox-id", "xyz".parse().unwrap());
    assert_eq!(super::target(&h).unwrap().sandbox, "xyz");
}

#[tokio::test]
async fn a_signed_file_url_naming_no_sandbox_is_looked_up_by_its_signature() {
    let e = env().await;
    let app = e.app();
    let signed = || {
        Request::get("/files?path=x.txt&username=user&signature=v1_abc")
            .body(Body::empty())
            .unwrap()
    };
    // No sandbox signed it: envd's answer to a wrong signature, not the control plane's.
    let (status, body, _) = send(app.clone(), signed()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json(&body),
        serde_json::json!({"code": 401, "message": "invalid signature"})
    );
    // Without a signature it is nobody's.
    let plain = Request::get("/files?path=x.txt")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(app.clone(), plain).await.0, StatusCode::NOT_FOUND);
    // Each lookup looks at every sandbox and needs no key: a few a second.
    let mut statuses = Vec::new();
    for _ in 0..super::SIGNED_LOOKUPS_PER_SECOND + 5 {
        statuses.push(send(app.clone(), signed()).await.0);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}
