//! Router tests through `oneshot`, no socket. The manager is real but makes no sandbox
//! (its helper binary does not exist), so these run without root; routes that need a
//! live sandbox are covered by the CLI crate's integration tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warren_core::Paths;
use warren_core::{Caller, Config, Manager, UploadTemplate};
use warren_types::api::WireCode;

use crate::conn::Trusted;
use crate::{router, Surface, ROUTES, UNIX_ONLY};

struct Env {
    _dir: tempfile::TempDir,
    paths: Paths,
    mgr: Arc<Manager>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths {
        run: dir.path().join("run"),
        data: dir.path().join("data"),
    };
    let mgr = Manager::open(Config::new(paths.clone(), "/nonexistent".into()))
        .await
        .expect("manager");
    Env {
        _dir: dir,
        paths,
        mgr,
    }
}

impl Env {
    fn unix(&self) -> Router {
        router(self.mgr.clone(), Surface::Unix)
    }

    fn tcp(&self) -> Router {
        router(self.mgr.clone(), Surface::Tcp)
    }
}

fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn json_req(method: &str, uri: &str, body: &str) -> Request<Body> {
    req(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn empty(method: &str, uri: &str) -> Request<Body> {
    req(method, uri).body(Body::empty()).expect("request")
}

async fn send(app: Router, r: Request<Body>) -> (StatusCode, Value) {
    let resp = app.oneshot(r).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, v)
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn health_reports_version_and_count() {
    let e = env().await;
    let (s, v) = send(e.tcp(), empty("GET", "/health")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["sandboxes"], 0);
}

#[tokio::test]
async fn openapi_is_served_as_json() {
    let e = env().await;
    let resp = e
        .tcp()
        .oneshot(empty("GET", "/openapi.json"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let doc: Value = serde_json::from_slice(&body).expect("valid JSON");
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let e = env().await;
    let resp = e
        .unix()
        .oneshot(empty("GET", "/metrics"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("warren_sandboxes_created_total 0"));
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let e = env().await;
    let (s, v) = send(e.unix(), empty("GET", "/v2/nothing")).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = send(e.unix(), empty("PATCH", "/v1/sandboxes")).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn bad_json_is_invalid_json() {
    let e = env().await;
    for body in ["{", "[1,2]", r#"{"name": 5}"#, r#"{"nmae": "x"}"#, "\u{0}"] {
        let (s, v) = send(e.unix(), json_req("POST", "/v1/sandboxes", body)).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{body}"
        );
        assert!(!v["message"].as_str().unwrap_or_default().is_empty());
    }
    let unknown = json_req("POST", "/v1/sandboxes", r#"{"evil": true}"#);
    let (_, v) = send(e.unix(), unknown).await;
    assert!(v["message"].as_str().unwrap_or_default().contains("evil"));
    let form = req("POST", "/v1/sandboxes")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("name=x"))
        .expect("request");
    let (s, v) = send(e.unix(), form).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_json"));
    let no_type = req("POST", "/v1/gc")
        .body(Body::from(r#"{"idle_minutes":1}"#))
        .expect("request");
    let (s, v) = send(e.unix(), no_type).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_json"));
    let (s, v) = send(e.unix(), empty("POST", "/v1/gc")).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_json"));
    assert!(v["message"]
        .as_str()
        .unwrap_or_default()
        .contains("idle_minutes"));
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let e = env().await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(crate::MAX_JSON));
    let (s, v) = send(e.unix(), json_req("POST", "/v1/sandboxes", &big)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // Uploads have their own, larger limit: this one gets as far as the sandbox lookup.
    let upload = req("PUT", "/v1/sandboxes/nosuch/files?path=/x")
        .body(Body::from(vec![0u8; 2 * crate::MAX_JSON]))
        .expect("request");
    let (s, v) = send(e.unix(), upload).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn unknown_sandboxes_are_404_everywhere() {
    let e = env().await;
    let cases = [
        empty("GET", "/v1/sandboxes/nosuch"),
        empty("GET", "/v1/sandboxes/alice%2Fnosuch"),
        empty("DELETE", "/v1/sandboxes/nosuch"),
        empty("POST", "/v1/sandboxes/nosuch/pause"),
        empty("POST", "/v1/sandboxes/nosuch/resume"),
        empty("POST", "/v1/sandboxes/nosuch/stop"),
        empty("POST", "/v1/sandboxes/nosuch/start"),
        json_req(
            "POST",
            "/v1/sandboxes/nosuch/timeout",
            r#"{"timeout_secs":5}"#,
        ),
        empty("GET", "/v1/sandboxes/nosuch/logs"),
        json_req(
            "POST",
            "/v1/sandboxes/nosuch/exec",
            r#"{"command":{"argv":["true"]}}"#,
        ),
        empty("GET", "/v1/sandboxes/nosuch/processes"),
        json_req(
            "POST",
            "/v1/sandboxes/nosuch/processes/1/signal",
            r#"{"signal":15}"#,
        ),
        empty("GET", "/v1/sandboxes/nosuch/files?path=/etc/hostname"),
        empty("GET", "/v1/sandboxes/nosuch/files/stat?path=/"),
        empty("GET", "/v1/sandboxes/nosuch/files/list?path=/"),
    ];
    for r in cases {
        let what = format!("{} {}", r.method(), r.uri());
        let (s, v) = send(e.unix(), r).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{what}"
        );
    }
}

#[tokio::test]
async fn bad_parameters_are_400() {
    let e = env().await;
    let cases = [
        empty("GET", "/v1/sandboxes?state=sleeping"),
        empty("GET", "/v1/sandboxes?label=novalue"),
        empty("GET", "/v1/sandboxes?colour=red"),
        empty("GET", "/v1/sandboxes/x/processes/abc/attach"),
        empty("GET", "/v1/sandboxes/x/processes/-1/attach"),
        empty("GET", "/v1/sandboxes/x/files?path=/a&bogus=1"),
        empty("GET", "/v1/sandboxes/x/files"),
        empty("GET", "/v1/sandboxes/x/files?path="),
        empty("GET", "/v1/sandboxes/x/files/list?path=/&depth=0"),
        empty("GET", "/v1/sandboxes/x/files/list?path=/&depth=many"),
        req("PUT", "/v1/sandboxes/x/files?path=/a&mode=999")
            .body(Body::empty())
            .expect("request"),
        json_req(
            "POST",
            "/v1/sandboxes/x/exec?stream=maybe",
            r#"{"command":{"argv":["true"]}}"#,
        ),
        json_req(
            "POST",
            "/v1/sandboxes/x/processes/1/resize",
            r#"{"rows":0,"cols":80}"#,
        ),
        req("GET", "/v1/sandboxes")
            .header("x-warren-tenant", "no spaces please")
            .body(Body::empty())
            .expect("request"),
        json_req("POST", "/v1/keys", r#"{"tenant":"a/b"}"#),
        empty("GET", "/v1/sandboxes/%FF"),
        empty("GET", "/v1/sandboxes/%FF/files?path=/"),
        json_req(
            "POST",
            "/v1/sandboxes",
            r#"{"timeout_secs":18446744073709551615}"#,
        ),
        json_req(
            "POST",
            "/v1/sandboxes/x/timeout",
            r#"{"idle_timeout_secs":9223372036854775807}"#,
        ),
        json_req("POST", "/v1/gc", r#"{"idle_minutes":153722867280912930}"#),
        json_req("POST", "/v1/gc", r#"{"idle_minutes":-1}"#),
    ];
    for r in cases {
        let what = format!("{} {}", r.method(), r.uri());
        let (s, v) = send(e.unix(), r).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert!(
            ["invalid_request", "invalid_json"].contains(&code(&v)),
            "{what}: {v}"
        );
    }
}

#[tokio::test]
async fn list_filters_and_tenants() {
    let e = env().await;
    let (s, v) = send(
        e.unix(),
        empty(
            "GET",
            "/v1/sandboxes?owner=bob&state=running&label=a=1&label=b=2&metadata=k=v%3Dw",
        ),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, Value::Array(vec![])));
    let tenant = req("GET", "/v1/sandboxes")
        .header("x-warren-tenant", "team-a")
        .body(Body::empty())
        .expect("request");
    let (s, _) = send(e.unix(), tenant).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = send(
        e.unix(),
        json_req("POST", "/v1/gc", r#"{"idle_minutes":5,"dry_run":true}"#),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, Value::Array(vec![])));
}

#[tokio::test]
async fn tcp_needs_a_key() {
    let e = env().await;
    let (s, v) = send(e.tcp(), empty("GET", "/v1/sandboxes")).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    for auth in [
        "Bearer wrn_nope",
        "Basic dXNlcjpwYXNz",
        "wrn_nope",
        "Bearer ",
    ] {
        let r = req("GET", "/v1/sandboxes")
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .expect("request");
        let (s, v) = send(e.tcp(), r).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{auth}"
        );
    }
    // The unix socket's tenant header means nothing on TCP.
    let r = req("GET", "/v1/sandboxes")
        .header("x-warren-tenant", "default")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(e.tcp(), r).await.0, StatusCode::UNAUTHORIZED);
    // A sandbox token opens only per-sandbox insides, and only with the right token.
    for uri in [
        "/v1/sandboxes/abc",
        "/v1/sandboxes",
        "/metrics",
        "/v1/events",
    ] {
        let r = req("GET", uri)
            .header("x-access-token", "whatever")
            .body(Body::empty())
            .expect("request");
        assert_eq!(send(e.tcp(), r).await.0, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let r = req("GET", "/v1/sandboxes/abc/files?path=/")
        .header("x-access-token", "whatever")
        .body(Body::empty())
        .expect("request");
    let (s, v) = send(e.tcp(), r).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // Authentication is checked before the body is.
    let (s, _) = send(e.tcp(), json_req("POST", "/v1/sandboxes", "{")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_are_minted_on_unix_only_and_work_on_tcp() {
    let e = env().await;
    let (s, v) = send(e.tcp(), json_req("POST", "/v1/keys", r#"{"tenant":"t1"}"#)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = send(e.unix(), json_req("POST", "/v1/keys", r#"{"tenant":"t1"}"#)).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["tenant"], "t1");
    let key = v["api_key"].as_str().expect("api_key").to_string();
    let r = req("GET", "/v1/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request");
    let (s, v) = send(e.tcp(), r).await;
    assert_eq!((s, v), (StatusCode::OK, Value::Array(vec![])));
    // Another tenant's (or no) sandbox looks the same: not found.
    let r = req("GET", "/v1/sandboxes/nosuch/files/stat?path=/")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(e.tcp(), r).await.0, StatusCode::NOT_FOUND);
}

/// A TCP request with `key` as its bearer.
fn with_key(method: &str, uri: &str, key: &str) -> Request<Body> {
    req(method, uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request")
}

/// The ids a key listing shows.
fn key_ids(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|k| k["id"].as_str().expect("id"))
        .collect()
}

#[tokio::test]
async fn keys_are_listed_by_id_and_revoked_within_their_tenant() {
    let e = env().await;
    let one = e.mgr.create_api_key("t1", false).expect("key");
    let two = e.mgr.create_api_key("t1", false).expect("key");
    let other = e.mgr.create_api_key("t2", false).expect("key");

    let (s, listed) = send(e.tcp(), with_key("GET", "/v1/keys", &one)).await;
    assert_eq!(s, StatusCode::OK);
    let ids = key_ids(&listed);
    assert_eq!(ids.len(), 2, "{listed}");
    let text = listed.to_string();
    for k in [&one, &two, &other] {
        assert!(!text.contains(k.as_str()), "a listing shows a key: {text}");
        assert!(
            !text.contains(&k[4..12]),
            "a listing shows part of a key: {text}"
        );
    }
    for k in listed.as_array().expect("list") {
        assert_eq!(k["tenant"], "t1");
        assert_eq!(k["operator"], false);
        assert!(k["created_at"].as_i64().expect("created_at") > 0);
    }
    // The unix socket sees every tenant's, or one's.
    let (_, all) = send(e.unix(), empty("GET", "/v1/keys")).await;
    assert_eq!(key_ids(&all).len(), 3);
    let (_, theirs) = send(e.unix(), empty("GET", "/v1/keys?tenant=t2")).await;
    let other_id = key_ids(&theirs)[0].to_string();
    assert!(!ids.contains(&other_id.as_str()));

    // Another tenant's keys look missing, listed or revoked.
    let (s, v) = send(e.tcp(), with_key("GET", "/v1/keys?tenant=t1", &other)).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    let (s, v) = send(
        e.tcp(),
        with_key("DELETE", &format!("/v1/keys/{}", ids[1]), &other),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    let (s, v) = send(
        e.tcp(),
        with_key("DELETE", "/v1/keys/0123456789abcdef", &one),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap_or_default()
        .contains("warren keys ls"));
    // A key pasted where its id belongs is not echoed.
    let (s, v) = send(
        e.tcp(),
        with_key("DELETE", &format!("/v1/keys/{two}"), &one),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{v}"
    );
    assert!(!v.to_string().contains(&two[4..]), "{v}");

    // Revoked, a key stops working at once; the others go on.
    let two_id = listed
        .as_array()
        .expect("list")
        .iter()
        .map(|k| k["id"].as_str().expect("id"))
        .find(|id| warren_core::tokens::sha256_hex(&two).starts_with(id))
        .expect("the second key's id")
        .to_string();
    let (s, _) = send(
        e.tcp(),
        with_key("DELETE", &format!("/v1/keys/{two_id}"), &one),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = send(e.tcp(), with_key("GET", "/v1/sandboxes", &two)).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = send(e.tcp(), with_key("GET", "/v1/sandboxes", &one)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(
        e.tcp(),
        with_key("DELETE", &format!("/v1/keys/{two_id}"), &one),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The host's root revokes any tenant's.
    let (s, _) = send(e.unix(), empty("DELETE", &format!("/v1/keys/{other_id}"))).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = send(e.tcp(), with_key("GET", "/v1/sandboxes", &other)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // An operator's key in the same tenant is an operator's business: a tenant's key
    // neither lists nor revokes it; the operator's own key does both.
    let op = e.mgr.create_api_key("t1", true).expect("key");
    let op_id = warren_core::tokens::sha256_hex(&op)[..16].to_string();
    let (_, v) = send(e.tcp(), with_key("GET", "/v1/keys", &one)).await;
    assert!(!key_ids(&v).contains(&op_id.as_str()), "{v}");
    let (s, _) = send(
        e.tcp(),
        with_key("DELETE", &format!("/v1/keys/{op_id}"), &one),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = send(e.tcp(), with_key("GET", "/v1/sandboxes", &op)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = send(e.tcp(), with_key("GET", "/v1/keys", &op)).await;
    assert!(key_ids(&v).contains(&op_id.as_str()), "{v}");
    let (s, _) = send(
        e.tcp(),
        with_key("DELETE", &format!("/v1/keys/{op_id}"), &op),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// Whether `r`, coming off a TCP connection, marks that connection as authenticated.
async fn marks(app: Router, mut r: Request<Body>) -> bool {
    let mark = Trusted::default();
    r.extensions_mut().insert(mark.clone());
    let _ = send(app, r).await;
    mark.is_set()
}

#[tokio::test]
async fn credentials_that_pass_mark_the_connection() {
    let e = env().await;
    let key = e.mgr.create_api_key("t1", false).expect("key");
    let bearer = format!("Bearer {key}");
    let with = |uri: &str, header: &str, value: &str| {
        req("GET", uri)
            .header(header, value)
            .body(Body::empty())
            .expect("request")
    };
    // A tenant's key, on a tenant's route and on a sandbox's (unknown: 404 all the same).
    assert!(marks(e.tcp(), with("/v1/sandboxes", "authorization", &bearer)).await);
    let stat = "/v1/sandboxes/nosuch/files/stat?path=/";
    assert!(marks(e.tcp(), with(stat, "authorization", &bearer)).await);
    // What passes no check leaves the connection anonymous.
    assert!(!marks(e.tcp(), empty("GET", "/health")).await);
    assert!(!marks(e.tcp(), empty("GET", "/v1/sandboxes")).await);
    let nope = "Bearer wrn_nope";
    assert!(!marks(e.tcp(), with("/v1/sandboxes", "authorization", nope)).await);
    assert!(!marks(e.tcp(), with(stat, "authorization", nope)).await);
    assert!(!marks(e.tcp(), with(stat, "x-access-token", "whatever")).await);
    assert!(!marks(e.tcp(), empty("GET", "/v1/shared/nosuchtoken")).await);
}

#[tokio::test]
async fn events_stream_as_ndjson() {
    let e = env().await;
    let resp = e
        .unix()
        .oneshot(empty("GET", "/v1/events"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
}

/// The path with its parameters filled in, so it reaches the handler.
fn concrete(path: &str) -> String {
    path.replace("{key}", "nosuch")
        .replace("{pid}", "1")
        .replace("{id}", "0123456789abcdef")
}

#[tokio::test]
async fn every_listed_route_is_routed() {
    let e = env().await;
    for (method, path) in ROUTES {
        let r = json_req(method, &concrete(path), "{}");
        let resp = e.unix().oneshot(r).await.expect("infallible");
        let status = resp.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let v: Value = serde_json::from_slice(&body).expect("JSON error");
            let msg = v["message"].as_str().unwrap_or_default();
            assert!(
                !msg.starts_with("no route"),
                "{method} {path} is not routed"
            );
        }
    }
    for (method, path) in UNIX_ONLY {
        let (s, v) = send(e.tcp(), json_req(method, &concrete(path), "{}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path} on TCP");
        assert!(v["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("no route"));
    }
}

/// The other way round: on a listed path, the router takes no method the list leaves
/// out, so nothing is routed that the document does not describe.
#[tokio::test]
async fn no_unlisted_method_is_routed() {
    let e = env().await;
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if ROUTES.contains(&(method, path)) {
                continue;
            }
            let r = json_req(method, &concrete(path), "{}");
            let resp = e.unix().oneshot(r).await.expect("infallible");
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is routed but not listed"
            );
        }
    }
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let doc: Value = serde_json::from_str(crate::openapi::document()).expect("valid JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, _) in item.as_object().expect("path item") {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json documents unknown routes: {extra:?}"
    );
}

#[test]
fn openapi_references_resolve() {
    let text = crate::openapi::document();
    let doc: Value = serde_json::from_str(text).expect("valid JSON");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let responses = doc["components"]["responses"].as_object();
    for r in text.split("\"$ref\"").skip(1) {
        let target = r
            .split('"')
            .nth(1)
            .expect("a $ref is followed by its target");
        if let Some(name) = target.strip_prefix("#/components/schemas/") {
            assert!(schemas.contains_key(name), "dangling {target}");
        } else if let Some(name) = target.strip_prefix("#/components/responses/") {
            assert!(
                responses.is_some_and(|r| r.contains_key(name)),
                "dangling {target}"
            );
        } else if let Some(name) = target.strip_prefix("#/components/parameters/") {
            assert!(
                doc["components"]["parameters"].get(name).is_some(),
                "dangling {target}"
            );
        } else {
            panic!("unexpected $ref {target}");
        }
    }
}

/// The codes each documented error response names are answered with its status.
#[test]
fn openapi_error_responses_name_codes_of_their_status() {
    use warren_types::api::WireCode;
    let doc: Value = serde_json::from_str(crate::openapi::document()).expect("valid JSON");
    let mut used: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, r) in responses {
                if let Some(name) = r["$ref"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("#/components/responses/"))
                {
                    used.entry(name.to_string())
                        .or_default()
                        .insert(status.parse().expect("a numeric status"));
                }
            }
        }
    }
    for (name, r) in doc["components"]["responses"]
        .as_object()
        .expect("responses")
    {
        let text = r["description"].as_str().unwrap_or_default();
        let codes: Vec<WireCode> = text
            .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .filter_map(|w| serde_json::from_value(Value::String(w.into())).ok())
            .collect();
        assert!(!codes.is_empty(), "{name} names no code: {text}");
        for code in codes {
            let statuses = used.get(name).cloned().unwrap_or_default();
            assert_eq!(
                statuses,
                BTreeSet::from([code.status()]),
                "{name} names {code}"
            );
        }
    }
}

fn host_mount() -> warren_types::api::HostMount {
    warren_types::api::HostMount {
        source: "/srv".into(),
        target: "/srv".into(),
        read_only: true,
    }
}

/// The documented schemas use the field names serde writes.
#[test]
fn openapi_schemas_match_serde() {
    use warren_types::api::{ApiError, Event, ExecResult, SandboxInfo, SandboxState};
    let doc: Value = serde_json::from_str(crate::openapi::document()).expect("valid JSON");
    let props = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has properties"))
            .keys()
            .cloned()
            .collect()
    };
    let info = SandboxInfo {
        id: "i".into(),
        owner: "o".into(),
        name: None,
        template: "host".into(),
        state: SandboxState::Running,
        resources: Default::default(),
        network: Default::default(),
        egress: Default::default(),
        publish: vec![],
        // Present when it has some.
        mounts: vec![host_mount()],
        isolation: Default::default(),
        labels: Default::default(),
        metadata: Default::default(),
        created_at: String::new(),
        last_active_at: String::new(),
        expires_at: None,
        idle_timeout_secs: None,
        on_timeout: Default::default(),
        auto_resume: false,
        request_host: Some(String::new()),
        // Present in the answer that creates a sandbox.
        access_token: Some(String::new()),
        traffic_token: Some(String::new()),
        // Present while it runs.
        usage: Some(warren_types::api::UsageSample {
            at_ms: 0,
            cpu_pct: 0.0,
            memory_bytes: 0,
            disk_bytes: 0,
            pids: 0,
        }),
    };
    assert_eq!(props("SandboxInfo"), keys(&info));
    assert_eq!(
        props("ResourceRequest"),
        keys(&warren_types::api::ResourceRequest::default())
    );
    assert_eq!(
        props("CreateSandbox"),
        keys(&warren_types::api::CreateSandbox {
            mounts: vec![host_mount()],
            // Present when asked.
            requires: Some(Default::default()),
            ..Default::default()
        })
    );
    assert_eq!(
        props("Requirements"),
        keys(&warren_types::api::Requirements::default())
    );
    assert_eq!(props("HostMount"), keys(&host_mount()));
    assert_eq!(
        props("SetTimeout"),
        keys(&warren_types::api::SetTimeout::default())
    );
    let result = ExecResult {
        pid: 1,
        stdout: String::new(),
        stderr: String::new(),
        stdout_b64: String::new(),
        stderr_b64: String::new(),
        exit_code: None,
        signal: None,
        timed_out: false,
        oom_killed: false,
    };
    assert_eq!(props("ExecResult"), keys(&result));
    let ev = Event {
        time: String::new(),
        sandbox: String::new(),
        owner: String::new(),
        kind: String::new(),
        message: String::new(),
    };
    assert_eq!(props("Event"), keys(&ev));
    let err = ApiError {
        code: String::new(),
        message: String::new(),
    };
    assert_eq!(props("Error"), keys(&err));
    assert_eq!(
        props("ExecRequest"),
        keys(&warren_types::proto::ExecRequest::default())
    );
    let fi = warren_types::proto::FileInfo {
        path: String::new(),
        name: String::new(),
        file_type: warren_types::proto::FileType::File,
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        modified: 0,
        symlink_target: None,
        // Present only for names that are not UTF-8; set so that they are compared too.
        path_b64: Some(String::new()),
        name_b64: Some(String::new()),
        symlink_target_b64: Some(String::new()),
        resolved: Some(Box::new(warren_types::proto::Resolved {
            path: String::new(),
            file_type: warren_types::proto::FileType::File,
            mode: 0,
        })),
        metadata: [(String::new(), String::new())].into(),
    };
    assert_eq!(props("FileInfo"), keys(&fi));
    let pi = warren_types::proto::ProcessInfo {
        pid: 1,
        serial: 1,
        command: warren_types::proto::Command::Shell(String::new()),
        tag: None,
        tty: false,
        background: false,
        exit: None,
        output_end: 0,
    };
    assert_eq!(props("ProcessInfo"), keys(&pi));
    let link = warren_types::api::PortLinkInfo {
        sandbox: String::new(),
        port: 1,
        code: String::new(),
        url: Some(String::new()),
        expires_in_secs: 60,
    };
    assert_eq!(props("PortLinkInfo"), keys(&link));
}

#[tokio::test]
async fn a_port_host_on_tcp_is_never_the_api_and_needs_a_grant() {
    let e = env().await;
    let (_, v) = send(
        e.unix(),
        json_req("POST", "/v1/keys", r#"{"tenant":"alice"}"#),
    )
    .await;
    let key = v["api_key"].as_str().expect("api_key").to_string();
    // A port's host with a valid key is still not the API: the key opens no port.
    let r = req("GET", "/v1/sandboxes")
        .header(header::HOST, "8080-sbx1.localhost:7070")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let (status, v) = send(e.tcp(), r).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    // A code that was never given is refused the same way, with no cookie.
    let r = req("GET", "/?warren_port_link=wpl_0000")
        .header(header::HOST, "8080-sbx1.localhost:7070")
        .body(Body::empty())
        .unwrap();
    let resp = e.tcp().oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    // The API's own hosts stay the API's.
    for host in [
        "127.0.0.1:7070",
        "localhost:7070",
        "warren.example.com",
        "my-host.lan:7070",
    ] {
        let r = req("GET", "/health")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        let (status, v) = send(e.tcp(), r).await;
        assert_eq!(status, StatusCode::OK, "{host}: {v}");
    }
    // A link to a sandbox that is not the caller's (or does not exist) is a 404.
    let r = req("POST", "/v1/sandboxes/nope/ports/8080/link")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let (status, v) = send(e.tcp(), r).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let r = req("POST", "/v1/sandboxes/nope/ports/70000/link")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let (status, v) = send(e.tcp(), r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

#[test]
fn a_links_address_is_the_ports_host_under_the_callers() {
    use axum::http::HeaderMap;
    let link = warren_core::PortLink {
        sandbox: "sbx1".into(),
        port: 8888,
        code: "wpl_c".into(),
    };
    let url = |host: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        crate::e2b::ports::link_url(&h, &link)
    };
    let q = "/?warren_port_link=wpl_c";
    assert_eq!(
        url("127.0.0.1:7070").as_deref(),
        Some(&*format!("http://8888-sbx1.localhost:7070{q}"))
    );
    assert_eq!(
        url("[::1]:7070").as_deref(),
        Some(&*format!("http://8888-sbx1.localhost:7070{q}"))
    );
    assert_eq!(
        url("warren.example.com").as_deref(),
        Some(&*format!("http://8888-sbx1.warren.example.com{q}"))
    );
    // An address other than loopback has no names under it.
    assert_eq!(url("192.0.2.1:7070"), None);
}

/// The field names `v` serializes with.
fn keys<T: serde::Serialize>(v: &T) -> BTreeSet<String> {
    serde_json::to_value(v)
        .expect("serializable")
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_socket_replaces_stale_ones_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub").join("warren.sock");
    let first = crate::bind_unix(&path).expect("bind");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().expect("parent")), 0o700);
    // Live: refused.
    assert!(crate::bind_unix(&path).is_err());
    drop(first);
    // Stale: replaced.
    let _second = crate::bind_unix(&path).expect("rebind over a stale socket");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").expect("write");
    assert!(crate::bind_unix(&plain).is_err());
    assert!(plain.exists());
}

/// The files uploads left in the data directory.
fn uploads_left(e: &Env) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(e._dir.path().join("data/uploads"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path())
        .collect()
}

#[tokio::test]
async fn template_uploads_are_bounded_and_leave_no_file() {
    let e = env().await;
    let upload = |uri: &str, body: Vec<u8>, declared: bool| {
        let mut r = req("POST", uri);
        if declared {
            r = r.header(header::CONTENT_LENGTH, body.len());
        }
        r.body(Body::from(body)).expect("request")
    };
    // Counted as it arrives, and refused before a byte is written when declared.
    for declared in [false, true] {
        let r = upload(
            "/v1/templates/upload?name=big&max_bytes=1024",
            vec![0; 4096],
            declared,
        );
        let (s, v) = send(e.unix(), r).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
        assert_eq!(code(&v), "payload_too_large");
        assert!(v["message"].as_str().unwrap().contains("1 KiB"), "{v}");
        assert!(uploads_left(&e).is_empty());
    }
    // A client that leaves mid-body: its part is not kept.
    let broken = futures_util::stream::iter([
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 4096])),
        Err(std::io::Error::other("the client left")),
    ]);
    let r = req("POST", "/v1/templates/upload?name=gone")
        .body(Body::from_stream(broken))
        .expect("request");
    let (s, v) = send(e.unix(), r).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(uploads_left(&e).is_empty());
    // Within the limit but not an archive: refused, nothing kept; with progress asked
    // for too (refused before its first layer: a status, not a stream).
    for uri in [
        "/v1/templates/upload?name=junk",
        "/v1/templates/upload?name=junk&progress=true",
    ] {
        let r = upload(uri, vec![7; 4096], false);
        let (s, v) = send(e.unix(), r).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(code(&v), "invalid_request", "{v}");
        assert!(uploads_left(&e).is_empty());
    }
    // A bad name, setuid from a tenant, and no name are refused before the body is read.
    let r = upload("/v1/templates/upload?name=..", vec![0; 10], false);
    assert_eq!(send(e.unix(), r).await.0, StatusCode::BAD_REQUEST);
    let r = upload("/v1/templates/upload", vec![0; 10], false);
    assert_eq!(send(e.unix(), r).await.0, StatusCode::BAD_REQUEST);
    let tenant = Caller::tenant("t");
    let refused = e.mgr.begin_upload(
        &tenant,
        UploadTemplate {
            name: "s".into(),
            setuid: true,
            ..Default::default()
        },
    );
    assert_eq!(refused.unwrap_err().code(), WireCode::InvalidRequest);
    // Two at once at most; a finished one frees its place.
    let one = UploadTemplate {
        name: "a".into(),
        ..Default::default()
    };
    let held: Vec<_> = (0..warren_core::MAX_UPLOADS)
        .map(|_| e.mgr.begin_upload(&tenant, one.clone()).expect("a place"))
        .collect();
    let busy = e.mgr.begin_upload(&tenant, one.clone()).unwrap_err();
    assert_eq!(busy.code(), WireCode::Busy);
    assert_eq!(uploads_left(&e).len(), warren_core::MAX_UPLOADS);
    drop(held);
    assert!(uploads_left(&e).is_empty());
    assert!(e.mgr.begin_upload(&tenant, one).is_ok());
}

/// Host directory mounts are the unix socket's alone: over TCP even an operator's key is
/// refused, before anything is recorded.
#[tokio::test]
async fn host_mounts_are_refused_over_tcp_whatever_the_key() {
    let e = env().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let body = serde_json::json!({
        "home_volume": false,
        "mounts": [{"source": dir.path(), "target": "/data"}],
    })
    .to_string();
    for operator in [false, true] {
        let key = e.mgr.create_api_key("t1", operator).expect("key");
        let r = req("POST", "/v1/sandboxes")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .expect("request");
        let (s, v) = send(e.tcp(), r).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::FORBIDDEN, "permission_denied"),
            "operator {operator}: {v}"
        );
        assert!(
            v["message"]
                .as_str()
                .unwrap_or("")
                .contains("only on the daemon's unix socket"),
            "{v}"
        );
    }
    let everyone = Caller::operator("t1");
    let listed = e.mgr.list(&everyone, &Default::default()).expect("list");
    assert!(listed.is_empty(), "{listed:?}");
    // On the unix socket the request is checked, not refused for where it came from.
    for (source, target, why) in [
        ("relative/dir", "/data", "absolute path"),
        (
            "/nonexistent/warren-mount-source",
            "/data",
            "does not exist",
        ),
        (
            dir.path().to_str().expect("utf-8"),
            "/proc/x",
            "sandbox's own",
        ),
    ] {
        let body = serde_json::json!({
            "home_volume": false,
            "mounts": [{"source": source, "target": target}],
        });
        let (s, v) = send(
            e.unix(),
            json_req("POST", "/v1/sandboxes", &body.to_string()),
        )
        .await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
        assert!(v["message"].as_str().unwrap_or("").contains(why), "{v}");
    }
}

/// Pools are the operator's on either surface: an operator key sets, changes and removes
/// them over TCP (as the web console does); a tenant's key may neither read nor set them.
#[tokio::test]
async fn pools_are_the_operators_on_either_surface() {
    let e = env().await;
    let with_key = |key: &str, method: &str, body: Option<&str>| {
        let r = req(method, "/v1/pools").header(header::AUTHORIZATION, format!("Bearer {key}"));
        match body {
            Some(b) => r
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => r.body(Body::empty()),
        }
        .expect("request")
    };
    let tenant = e.mgr.create_api_key("t1", false).expect("key");
    let operator = e.mgr.create_api_key("ops", true).expect("key");
    // A warm sandbox is never made here (no helper binary): min 0 keeps the pool empty.
    let pool = r#"{"template":"host","min":0,"max":2}"#;
    for (method, body) in [("GET", None), ("POST", Some(pool))] {
        let (s, v) = send(e.tcp(), with_key(&tenant, method, body)).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::FORBIDDEN, "permission_denied"),
            "{method}: {v}"
        );
    }
    assert!(e.mgr.pools().is_empty());
    let (s, v) = send(e.tcp(), with_key(&operator, "POST", Some(pool))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["spec"]["max"].as_u64(), v["ready"].as_u64()),
        (Some(2), Some(0))
    );
    // The same profile again changes that pool rather than adding one.
    let bigger = r#"{"template":"host","min":0,"max":3}"#;
    let (s, _) = send(e.tcp(), with_key(&operator, "POST", Some(bigger))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = send(e.tcp(), with_key(&operator, "GET", None)).await;
    assert_eq!(s, StatusCode::OK);
    let listed = v.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{v}");
    assert_eq!(listed[0]["spec"]["max"], 3);
    // Checked as on the unix socket.
    let (s, v) = send(
        e.tcp(),
        with_key(
            &operator,
            "POST",
            Some(r#"{"template":"host","min":3,"max":1}"#),
        ),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
    // Another tenant's own template is as unknown to an operator key as one that does
    // not exist (a pool would tell otherwise); the host's root names it.
    let scope = |tenant: &str| {
        use sha2::Digest;
        let hex = warren_types::random::to_hex(&sha2::Sha256::digest(tenant.as_bytes()));
        format!("@{}", &hex[..16])
    };
    let theirs = format!("{}/secret", scope("alice"));
    let dir = e.paths.template(&theirs);
    std::fs::create_dir_all(&dir).expect("template dir");
    let meta = serde_json::json!({
        "name": "secret", "kind": "build", "source": "host", "layers": [],
        "host_base": false, "created_at": 0, "tenant": "alice", "private": true,
    });
    std::fs::write(dir.join("template.json"), meta.to_string()).expect("template.json");
    let answer = |template: &str| {
        let body = serde_json::json!({"template": template, "min": 0, "max": 1}).to_string();
        send(e.tcp(), with_key(&operator, "POST", Some(&body)))
    };
    let (s, known) = answer(&theirs).await;
    assert_eq!(
        (s, code(&known)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (_, unknown) = answer(&format!("{}/nothing", scope("alice"))).await;
    assert_eq!(
        known["message"]
            .as_str()
            .map(|m| m.replace("secret", "nothing")),
        unknown["message"].as_str().map(str::to_string),
    );
    assert_eq!(e.mgr.pools().len(), 1, "{:?}", e.mgr.pools());
    let body = serde_json::json!({"template": theirs, "min": 0, "max": 1}).to_string();
    let (s, v) = send(e.unix(), json_req("POST", "/v1/pools", &body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let body = serde_json::json!({"template": theirs, "min": 0, "max": 0}).to_string();
    let (s, _) = send(e.unix(), json_req("POST", "/v1/pools", &body)).await;
    assert_eq!(s, StatusCode::OK);
    let gone = r#"{"template":"host","min":0,"max":0}"#;
    let (s, _) = send(e.tcp(), with_key(&operator, "POST", Some(gone))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(e.mgr.pools().is_empty());
    // The unix socket is the operator, as before.
    let (s, v) = send(e.unix(), json_req("POST", "/v1/pools", pool)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = send(e.unix(), json_req("POST", "/v1/pools", gone)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(e.mgr.pools().is_empty());
}

/// `docs/openapi.json`, kept for readers, is the document the code generates.
#[test]
fn openapi_document_is_checked_in() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let generated = crate::openapi::document();
    if std::env::var_os("WARREN_BLESS").is_some() {
        std::fs::write(path, generated).expect("write docs/openapi.json");
        return;
    }
    let kept = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        kept == generated,
        "docs/openapi.json is not the document the code generates; regenerate it with \
         `WARREN_BLESS=1 cargo test -p warren-server openapi_document_is_checked_in`"
    );
}

/// The schemas the document gives the engine's template types (described in the server,
/// as the engine knows nothing of OpenAPI) use the field names serde writes.
#[test]
fn openapi_engine_schemas_match_serde() {
    use warren_core::{
        BuildTemplate, DiskUsage, HostDisk, ImportResult, ImportTemplate, LayerGcResult,
        SnapshotRequest, SnapshotResult, TemplateInfo, UsageRow,
    };
    let doc: Value = serde_json::from_str(crate::openapi::document()).expect("valid JSON");
    let props = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has properties"))
            .keys()
            .cloned()
            .collect()
    };
    // Every field set, so that those left out when empty are compared too; a field the
    // schema names and the engine does not know is dropped on the way back.
    let template: TemplateInfo = serde_json::from_value(serde_json::json!({
        "name": "t", "kind": "snapshot", "source": "s", "layers": ["l"], "host_base": false,
        "env": {"A": "1"}, "workdir": "/", "user": "root", "cmd": ["sh"],
        "start_cmd": "true", "ready_cmd": "true", "ready_timeout_secs": 1,
        "created_at": 0, "tenant": "default", "source_sandbox": "sbx", "private": true,
        "isolation": "gvisor", "setuid": true,
        "memory": {"home_volume": true, "image_bytes": 1},
        "size_bytes": 1, "used_by": ["sbx"],
    }))
    .expect("a template");
    assert_eq!(props("TemplateInfo"), keys(&template));
    assert_eq!(props("SavedMemory"), keys(&keys_of(&template, "memory")));
    assert_eq!(
        props("ImportTemplate"),
        keys(&ImportTemplate {
            isolation: Some(Default::default()),
            ..Default::default()
        })
    );
    assert_eq!(props("BuildTemplate"), keys(&BuildTemplate::default()));
    assert_eq!(
        props("SnapshotRequest"),
        keys(&SnapshotRequest {
            name: String::new(),
            memory: true,
        })
    );
    assert_eq!(
        props("SnapshotResult"),
        keys(&SnapshotResult {
            template: template.clone(),
            bytes_written: 0,
            millis: 0,
        })
    );
    assert_eq!(
        props("ImportResult"),
        keys(&ImportResult {
            template,
            new_layers: 0,
            shared_layers: 0,
            warnings: vec![],
        })
    );
    assert_eq!(props("LayerGcResult"), keys(&LayerGcResult::default()));
    assert_eq!(
        props("DiskUsage"),
        keys(&DiskUsage {
            host: Some(HostDisk::default()),
            ..Default::default()
        })
    );
    assert_eq!(props("HostDisk"), keys(&HostDisk::default()));
    assert_eq!(
        props("UsageRow"),
        keys(&UsageRow {
            name: String::new(),
            bytes: 0,
        })
    );
}

fn keys_of<T: serde::Serialize>(v: &T, field: &str) -> Value {
    serde_json::to_value(v).expect("serializable")[field].clone()
}

#[tokio::test]
async fn a_sandbox_token_is_refused_tenant_wide_things_by_name() {
    let e = env().await;
    let scoped = Caller {
        only_sandbox: Some("abc".into()),
        ..Caller::tenant("t1")
    };
    let key = warren_types::api::SshKey {
        owner: "alice".into(),
        fingerprint: "SHA256:x".into(),
        algorithm: "ssh-ed25519".into(),
        comment: String::new(),
        public_key: "ssh-ed25519 AAAA".into(),
        template: None,
        created_at: 0,
    };
    let session = warren_types::api::OpenSession {
        client: "c1".into(),
        ..Default::default()
    };
    let refusals = [
        ("SSH keys", e.mgr.add_ssh_key(&scoped, key).err()),
        ("SSH keys", e.mgr.ssh_keys(&scoped, None).err()),
        (
            "SSH keys",
            e.mgr.remove_ssh_key(&scoped, "SHA256:x", None).err(),
        ),
        ("sessions", e.mgr.open_session(&scoped, session).await.err()),
    ];
    for (what, err) in refusals {
        let err = crate::error::Error::from(err.expect("refused"));
        let resp = axum::response::IntoResponse::into_response(err);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("JSON error");
        assert_eq!(code(&v), "permission_denied", "{what}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(what) && msg.contains("API key"), "{msg}");
        assert!(!msg.contains("no sandbox"), "{msg}");
    }
}
