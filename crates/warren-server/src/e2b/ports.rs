//! Traffic to a sandbox's own ports: a request whose `Host` is `PORT-ID.DOMAIN` (what the
//! SDK's `get_host(port)` gives), or that names the sandbox and port in E2B's proxy
//! headers, is passed to whatever listens on that port inside the sandbox, as E2B's
//! proxy does. HTTP/1.1 only between us and the sandbox; upgrades (WebSocket) are
//! spliced through once the sandbox's side agrees.
//!
//! A sandbox made with `network.allowPublicTraffic: false` has a traffic token, which
//! every request must carry in `e2b-traffic-access-token`; it is taken off the request
//! before it goes in.
//!
//! Whoever reaches this listener can send anything here, with no API key: so a sandbox
//! that does not exist, one that is not running, a missing or wrong traffic token and a
//! port nothing listens on all get one and the same answer. Anything else would tell a
//! stranger which sandbox ids exist.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use warren_core::{Manager, PortError};

use super::Target;

/// The header that carries a sandbox's traffic token.
pub(crate) const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// Headers of one hop that a proxy does not pass on (RFC 9110, 7.6.1), besides those
/// the `Connection` header names.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The one answer for traffic that does not get through (see the module doc).
fn unreachable(id: &str, port: u16) -> Response {
    let body = serde_json::json!({
        "sandboxId": id,
        "message": format!(
            "The sandbox is not reachable on port {port}: it does not exist, is not running, \
             nothing listens on the port, or it needs its traffic access token in the \
             {TRAFFIC_TOKEN_HEADER} header"
        ),
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// Passes `req` to `target`'s port and its answer back.
pub(crate) async fn proxy(mgr: &Manager, target: Target, mut req: Request) -> Response {
    let token = req
        .headers()
        .get(TRAFFIC_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let warren_core::PortConnection {
        stream,
        activity,
        host,
        tenant,
    } = match mgr
        .connect_port(&target.sandbox, target.port, token.as_deref())
        .await
    {
        Ok(c) => c,
        Err(
            PortError::NoSandbox
            | PortError::Store(_)
            | PortError::Token
            | PortError::NotRunning(_)
            | PortError::Closed(_),
        ) => return unreachable(&target.sandbox, target.port),
    };
    crate::reqlog::note_tenant(req.extensions(), &tenant);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(_) => return unreachable(&target.sandbox, target.port),
    };
    tokio::spawn(async move {
        // Counts as activity for as long as the connection to the sandbox lasts.
        let _activity = activity;
        let _ = conn.with_upgrades().await;
    });

    let client_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    parts.headers.remove(TRAFFIC_TOKEN_HEADER);
    parts.headers.remove(super::SANDBOX_ID_HEADER);
    parts.headers.remove(super::SANDBOX_PORT_HEADER);
    // `mask_request_host`: the sandbox asked its services to see this host.
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        parts.headers.insert(header::HOST, h);
    }
    // Origin form on the way in: the path and query only.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = axum::http::Version::HTTP_11;
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(_) => return unreachable(&target.sandbox, target.port),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let inside = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(client), Ok(inside)) = (client.await, inside.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(inside),
                    )
                    .await;
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, Body::new(body))
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Drops the headers of one hop; an upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    let upgrade = h.get(header::UPGRADE).cloned();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
    if keep_upgrade {
        if let Some(u) = upgrade {
            h.insert(header::UPGRADE, u);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-private, keep-alive"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_what_it_needs() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        let mut plain = HeaderMap::new();
        plain.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&plain));
    }
}
