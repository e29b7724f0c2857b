//! The whole native API router on arbitrary requests: any method, a path built from the
//! real routes with hostile parameters (or raw bytes), arbitrary headers and body, on
//! both surfaces. The manager is real but its helper binary does not exist, so no
//! sandbox is ever made and no root is needed.
//!
//! Properties: no panic, no hang (an answer's head within 5 s), and every 5xx is a
//! JSON error with a code; `backend_failed` is the one 5xx expected here (creating a
//! sandbox without a helper). `POST /v1/templates/import` is left out: it reads a host
//! path named in the request (the unix socket is root's), and a fuzzer naming
//! /dev/zero would only test the disk. `POST /v1/templates/upload` stays: its archive is
//! the request's body, unpacked under the import's bounds.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use warren_core::{Config, Manager};
use warren_runtime::Paths;
use warren_server::{router, Surface, ROUTES};

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    tcp: bool,
    route: u8,
    params: Vec<u8>,
    raw_path: Option<String>,
    query: String,
    headers: Vec<(u8, String)>,
    body: Vec<u8>,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
const PARAMS: &[&str] = &[
    "x",
    "..",
    "%2e%2e",
    "..%2F..%2Fetc",
    "default%2Fx",
    "%00",
    "0",
    "-1",
    "4294967296",
    "wsh_x",
    "host",
    "a%2Fb%2Fc",
    "%ff%fe",
    "%",
    "",
    "é",
    "18446744073709551615",
];
const HEADERS: &[&str] = &[
    "content-type",
    "authorization",
    "x-access-token",
    "x-warren-tenant",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "accept",
    "content-length",
    "transfer-encoding",
];

struct Env {
    rt: tokio::runtime::Runtime,
    mgr: Arc<Manager>,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            run: dir.path().join("run"),
            data: dir.path().join("data"),
        };
        let mgr = rt
            .block_on(Manager::open(Config::new(
                paths,
                "/nonexistent/warren".into(),
            )))
            .expect("manager");
        // One real key, so that some TCP requests get past authentication.
        let key = mgr.create_api_key("default", false).unwrap();
        std::env::set_var("WARREN_FUZZ_KEY", key);
        Env { rt, mgr, _dir: dir }
    })
}

fn path_for(input: &Input) -> String {
    if let Some(raw) = &input.raw_path {
        return format!("/{}", raw.trim_start_matches('/'));
    }
    let (_, template) = ROUTES[input.route as usize % ROUTES.len()];
    let mut params = input.params.iter();
    let mut out = String::new();
    for seg in template.split('/').skip(1) {
        out.push('/');
        if seg.starts_with('{') {
            let p = params.next().copied().unwrap_or(0);
            out.push_str(PARAMS[p as usize % PARAMS.len()]);
        } else {
            out.push_str(seg);
        }
    }
    if !input.query.is_empty() {
        out.push('?');
        out.push_str(&input.query);
    }
    out
}

fuzz_target!(|input: Input| {
    let e = env();
    let path = path_for(&input);
    if path.starts_with("/v1/templates/import") {
        return;
    }
    let method = METHODS[input.method as usize % METHODS.len()];
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut b = Request::builder().method(method).uri(&path);
    let key = std::env::var("WARREN_FUZZ_KEY").unwrap_or_default();
    for (n, v) in input.headers.iter().take(8) {
        let name = HEADERS[*n as usize % HEADERS.len()];
        let value = if v == "KEY" {
            format!("Bearer {key}")
        } else {
            v.clone()
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            b = b.header(n, v);
        }
    }
    let Ok(req) = b.body(Body::from(input.body.clone())) else {
        return;
    };
    let surface = if input.tcp {
        Surface::Tcp
    } else {
        Surface::Unix
    };
    let app = router(e.mgr.clone(), surface);
    e.rt.block_on(async {
        let resp = tokio::time::timeout(Duration::from_secs(5), app.oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("no answer within 5 s: {path}"))
            .unwrap();
        let status = resp.status();
        let streaming = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
        if status.is_server_error() && !streaming {
            let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
                .await
                .expect("an error body within 5 s")
                .unwrap()
                .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{status} without a JSON error: {path}"));
            let code = v["code"].as_str().unwrap_or("");
            assert!(
                code == "backend_failed",
                "{status} {code} on {path}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    });
});
