//! The request log of the E2B listener, through its router: each request one line with
//! the route's template, the status, the tenant and the sandbox; no key, token,
//! signature or query string; lines of callers not known limited together. And a
//! share's token stays out of the native API's lines.
//!
//! One test in its own binary: the log's limits are counted per process, and another
//! test's requests would take from them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing::span;
use warren_core::{Config, Manager, Paths};
use warren_server::e2b::E2bOptions;

/// Lines a second for one sandbox (the log's `PER_SECOND`).
const PER_SECOND: usize = 10;

/// The fields of one line.
type Line = BTreeMap<String, String>;

/// Keeps the lines of `warren::request`.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<Line>>>);

impl Lines {
    fn take(&self) -> Vec<Line> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields(Line);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl tracing::Subscriber for Lines {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() != "warren::request" {
            return;
        }
        let mut fields = Fields(Line::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

async fn status(app: &Router, req: Request<Body>) -> StatusCode {
    app.clone().oneshot(req).await.expect("response").status()
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::get(uri);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::empty()).unwrap()
}

fn post(uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut r = Request::post(uri).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

/// The one line `lines` should hold, checked against `want`.
fn one(lines: &[Line], want: &[(&str, &str)]) {
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for (k, v) in want {
        assert_eq!(
            lines[0].get(*k).map(String::as_str),
            Some(*v),
            "{k} of {:#?}",
            lines[0]
        );
    }
    assert!(lines[0]["us"].parse::<u64>().is_ok(), "{:#?}", lines[0]);
}

#[tokio::test]
async fn e2b_requests_are_logged_by_route_with_tenant_and_sandbox_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths {
        run: dir.path().join("run"),
        data: dir.path().join("data"),
    };
    let mgr = Manager::open(Config::new(paths, "/nonexistent".into()))
        .await
        .expect("manager");
    let key = mgr.create_api_key("logged", false).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let e2b = warren_server::e2b::router(mgr.clone(), shutdown, E2bOptions::default());
    let native = warren_server::router(mgr.clone(), warren_server::Surface::Tcp);
    let lines = Lines::default();
    let _log = tracing::subscriber::set_default(lines.clone());
    // Everything a line must never hold.
    let secrets = [
        key.as_str(),
        "wrn_not-a-key",
        "a-metadata-value",
        "access-token-of-the-test",
        "traffic-token-of-the-test",
        "signature-of-the-test",
        "/secret/file",
        "wsh_share-token-of-the-test",
        "query-token-of-the-test",
    ];
    let mut all = Vec::new();

    // The control plane: the key's tenant, the route, no query.
    let uri = "/v2/sandboxes?metadata=team%3Da-metadata-value";
    let s = status(&e2b, get(uri, &[("x-api-key", &key)])).await;
    assert_eq!(s, StatusCode::OK);
    let got = lines.take();
    one(
        &got,
        &[
            ("api", "e2b"),
            ("method", "GET"),
            ("route", "/v2/sandboxes"),
            ("status", "200"),
            ("tenant", "logged"),
            ("sandbox", "-"),
        ],
    );
    all.extend(got);

    // A sandbox named in the path is the line's sandbox.
    let uri = "/sandboxes/sbx-one/timeout";
    let s = status(&e2b, post(uri, &[("x-api-key", &key)], r#"{"timeout":60}"#)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let got = lines.take();
    one(
        &got,
        &[
            ("method", "POST"),
            ("route", "/sandboxes/{id}/timeout"),
            ("status", "404"),
            ("tenant", "logged"),
            ("sandbox", "sbx-one"),
        ],
    );
    all.extend(got);

    // A wrong key: no tenant.
    let s = status(
        &e2b,
        get("/sandboxes/sbx-two", &[("x-api-key", "wrn_not-a-key")]),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let got = lines.take();
    one(
        &got,
        &[
            ("route", "/sandboxes/{id}"),
            ("status", "401"),
            ("tenant", "-"),
            ("sandbox", "sbx-two"),
        ],
    );
    all.extend(got);

    // envd, by header: the sandbox from it; the token and the signed URL's query
    // stay out.
    let uri = "/files?path=/secret/file&username=user&signature=signature-of-the-test&signature_expiration=9999999999";
    let s = status(&e2b, get(uri, &[("e2b-sandbox-id", "sbx-three")])).await;
    assert!(s.is_client_error() || s.is_server_error(), "{s}");
    let got = lines.take();
    one(
        &got,
        &[
            ("route", "/files"),
            ("tenant", "-"),
            ("sandbox", "sbx-three"),
        ],
    );
    all.extend(got);
    let s = status(
        &e2b,
        post(
            "/process.Process/List",
            &[
                ("host", "49983-sbxfour.e2b.example"),
                ("x-access-token", "access-token-of-the-test"),
            ],
            "{}",
        ),
    )
    .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s}");
    let got = lines.take();
    one(
        &got,
        &[
            ("route", "/process.Process/{method}"),
            ("sandbox", "sbxfour"),
        ],
    );
    all.extend(got);

    // Traffic to a sandbox's port: the port, not the path.
    let s = status(
        &e2b,
        get(
            "/app/callback?token=query-token-of-the-test",
            &[
                ("host", "8080-sbxfive.e2b.example"),
                ("e2b-traffic-access-token", "traffic-token-of-the-test"),
            ],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    let got = lines.take();
    one(
        &got,
        &[
            ("route", "port 8080"),
            ("status", "502"),
            ("sandbox", "sbxfive"),
        ],
    );
    all.extend(got);

    // No route: none named, and not the path either.
    let s = status(&e2b, get("/no/such/query-token-of-the-test", &[])).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let got = lines.take();
    one(&got, &[("route", "-"), ("status", "404"), ("sandbox", "-")]);
    all.extend(got);

    // The native API's share join names the template, not the token.
    let s = status(&native, get("/v1/shared/wsh_share-token-of-the-test", &[])).await;
    assert!(s.is_client_error(), "{s}");
    let got = lines.take();
    one(&got, &[("path", "/v1/shared/{token}"), ("tenant", "-")]);
    all.extend(got);

    for line in &all {
        for value in line.values() {
            for secret in secrets {
                assert!(!value.contains(secret), "{secret:?} logged: {line:#?}");
            }
            assert!(!value.contains('?'), "a query logged: {line:#?}");
        }
    }

    // Callers not known, each naming a sandbox of its own, share one count: a flood
    // costs a few lines, and one that says how many were left out.
    for n in 0..200 {
        let uri = format!("/sandboxes/flood-{n}");
        status(&e2b, get(&uri, &[("x-api-key", "wrn_not-a-key")])).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    status(
        &e2b,
        get("/sandboxes/flood-last", &[("x-api-key", "wrn_not-a-key")]),
    )
    .await;
    let got = lines.take();
    let requests = got.iter().filter(|l| l.contains_key("route")).count();
    // At most one second's worth, twice if the loop crossed into the next second.
    let most = 2 * PER_SECOND + 1;
    assert!(requests <= most, "{requests} lines of 201: {got:#?}");
    let left_out: u64 = got
        .iter()
        .filter_map(|l| l.get("left_out"))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests as u64 + left_out, 201, "{got:#?}");

    // A known caller's requests are counted per sandbox, apart from those.
    let s = status(&e2b, get("/sandboxes/sbx-six", &[("x-api-key", &key)])).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let got = lines.take();
    assert!(
        got.iter()
            .any(|l| l.get("sandbox").map(String::as_str) == Some("sbx-six")),
        "{got:#?}"
    );
}
