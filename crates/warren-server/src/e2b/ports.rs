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
//! The daemon's own TCP listener (`--listen`) serves the same hosts for browsers, with
//! a stricter rule ([`Door::Listener`]): only a port link's grant or the sandbox's
//! traffic token gets in, never a sandbox id alone. A link
//! (`POST /v1/sandboxes/{key}/ports/{port}/link`) gives a one-time code; the first
//! request that carries it as `?warren_port_link=CODE` is answered with a redirect to
//! the same address without it and a cookie of that host only, holding the grant
//! ([`warren_core::Manager::port_link`]). The cookie is taken off every request before
//! it goes in: the server inside never sees it.
//!
//! Whoever reaches this listener can send anything here, with no API key: so a sandbox
//! that does not exist, a missing or wrong traffic token (or, on the daemon's listener,
//! a missing grant), and, to a caller who named only the id, a sandbox that is not
//! running or a port nothing listens on get one and the same answer. Anything else would
//! tell a stranger which sandbox ids exist. Only a request that carries the sandbox's
//! traffic token or a port link's grant learns more: that the sandbox is not running, or
//! that nothing listens on the port, in E2B's proxy's words ("The sandbox is running but
//! port is not open").

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use warren_core::{Manager, PortError, PortLink, PortPass};

use super::Target;

/// The header that carries a sandbox's traffic token.
pub(crate) const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// The query parameter that carries a port link's one-time code.
pub(crate) const LINK_PARAM: &str = "warren_port_link";
/// The cookie that carries a port link's grant, on the port's host only.
const GRANT_COOKIE: &str = "__warren_port";

/// Which listener a request to a sandbox's port came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// The E2B surface: a sandbox made without a traffic token is open to whoever names
    /// it, as on E2B.
    E2b,
    /// The daemon's own TCP listener: a port link's grant or the traffic token only.
    Listener,
}

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
        // E2B's words for each case are in it, whichever it is.
        "message": format!(
            "The sandbox was not found or cannot be reached on port {port}: it does not \
             exist, is not running, needs its traffic access token in the \
             {TRAFFIC_TOKEN_HEADER} header, or is running but port is not open"
        ),
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// The answer to a request that would be let in, for a port nothing listens on: E2B's
/// proxy's, word for word.
fn port_closed(id: &str, port: u16) -> Response {
    let body = serde_json::json!({
        "sandboxId": id,
        "message": "The sandbox is running but port is not open",
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// The answer to a request that would be let in, for a sandbox that is not running.
fn not_running(id: &str, port: u16, state: warren_types::api::SandboxState) -> Response {
    let body = serde_json::json!({
        "sandboxId": id,
        "message": format!(
            "The sandbox is {}: port {port} is reached while it runs (resume it, or create \
             it with auto-resume)",
            state.as_str()
        ),
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// Passes `req` to `target`'s port and its answer back.
pub(crate) async fn proxy(mgr: &Manager, target: Target, door: Door, mut req: Request) -> Response {
    if let Some(code) = query_value(req.uri(), LINK_PARAM) {
        return redeem(mgr, &target, &code, req.uri());
    }
    let token = req
        .headers()
        .get(TRAFFIC_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let grants = take_cookie(req.headers_mut(), GRANT_COOKIE);
    let pass = PortPass {
        token: token.as_deref(),
        grants: &grants,
        open_by_id: door == Door::E2b,
    };
    let warren_core::PortConnection {
        stream,
        activity,
        host,
        tenant,
    } = match mgr.connect_port(&target.sandbox, target.port, pass).await {
        Ok(c) => c,
        Err(PortError::NoSandbox | PortError::Store(_) | PortError::Token) => {
            return unreachable(&target.sandbox, target.port)
        }
        // Asked with the sandbox's token or a grant (see the module doc).
        Err(PortError::NotRunning(state)) => {
            return not_running(&target.sandbox, target.port, state)
        }
        Err(PortError::Closed(_)) => return port_closed(&target.sandbox, target.port),
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

/// Spends a port link's `code`: a redirect to the same address without it, with the
/// grant in a cookie of this host only; the one refusal otherwise.
fn redeem(mgr: &Manager, target: &Target, code: &str, uri: &Uri) -> Response {
    let Some(grant) = mgr.redeem_port_link(code, &target.sandbox, target.port) else {
        return unreachable(&target.sandbox, target.port);
    };
    let location = redirect_target(uri);
    let cookie = format!("{GRANT_COOKIE}={grant}; Path=/; HttpOnly; SameSite=Lax");
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let (Ok(l), Ok(c)) = (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&cookie),
    ) {
        h.insert(header::LOCATION, l);
        h.insert(header::SET_COOKIE, c);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// Where a request that spent a link's code goes next: the same address without the
/// code. A path a browser would read as another host's (`//evil.example/`, `/\\...`)
/// goes to the port's own root instead.
fn redirect_target(uri: &Uri) -> String {
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(LINK_PARAM))
        .collect();
    let path = uri.path();
    let path = if path.starts_with("//") || path.starts_with("/\\") || !path.starts_with('/') {
        "/"
    } else {
        path
    };
    if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

/// The value of query parameter `name`, when the request has it.
fn query_value(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// Takes cookie `name` off the request's `Cookie` headers (the others stay as they
/// were) and returns its values.
fn take_cookie(h: &mut HeaderMap, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut kept = Vec::new();
    for v in h.get_all(header::COOKIE) {
        let Ok(text) = v.to_str() else {
            kept.push(v.clone());
            continue;
        };
        let mut others = Vec::new();
        for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if k.trim() == name => found.push(v.trim().to_string()),
                _ => others.push(pair),
            }
        }
        if !others.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&others.join("; ")) {
                kept.push(v);
            }
        }
    }
    h.remove(header::COOKIE);
    for v in kept {
        h.append(header::COOKIE, v);
    }
    found
}

/// The `Host` header as its name (or address, without brackets) and what follows it
/// (`:PORT`, or nothing).
pub(crate) fn host_parts(headers: &HeaderMap) -> Option<(&str, &str)> {
    let host = headers.get(header::HOST)?.to_str().ok()?.trim();
    match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split_once(']'),
        None => Some(match host.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (n, &host[n.len()..]),
            _ => (host, ""),
        }),
    }
}

/// Where a browser goes with `link`: the port's host under the host `headers` name
/// (`localhost` for a loopback address, which browsers resolve with every name under
/// it); `None` for another address, which has no names under it.
pub(crate) fn link_url(headers: &HeaderMap, link: &PortLink) -> Option<String> {
    let (name, port) = host_parts(headers)?;
    let name = match name.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => "localhost",
        Ok(_) => return None,
        Err(_) if name.is_empty() => return None,
        Err(_) => name,
    };
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!(
        "{scheme}://{}-{}.{name}{port}/?{LINK_PARAM}={}",
        link.port, link.sandbox, link.code
    ))
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
    fn the_grant_cookie_is_taken_off_and_the_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("_xsrf=1; __warren_port=g1"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("__warren_port=g2"));
        h.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        assert_eq!(take_cookie(&mut h, GRANT_COOKIE), ["g1", "g2"]);
        let left: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["_xsrf=1", "theme=dark"]);
    }

    #[test]
    fn spending_a_code_redirects_to_the_ports_own_host_only() {
        for (path, to) in [
            ("/lab/tree?x=1&warren_port_link=c", "/lab/tree?x=1"),
            ("/?warren_port_link=c", "/"),
            ("//evil.example/x?warren_port_link=c", "/"),
            (
                "/%5Cevil.example/x?warren_port_link=c",
                "/%5Cevil.example/x",
            ),
        ] {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(redirect_target(&uri), to, "{path}");
        }
    }

    #[test]
    fn a_link_code_is_read_from_the_query() {
        let uri: Uri = "/lab?x=1&warren_port_link=wpl_abc".parse().unwrap();
        assert_eq!(query_value(&uri, LINK_PARAM).as_deref(), Some("wpl_abc"));
        let uri: Uri = "/lab?warren_port_linkx=1".parse().unwrap();
        assert_eq!(query_value(&uri, LINK_PARAM), None);
    }

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
