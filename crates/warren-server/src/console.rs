//! The web console: one page (`/console/`) and its assets, embedded in the binary, and
//! the session a browser signs in to with an API key.
//!
//! The page drives the same REST API as any client. A browser holds no key: signing in
//! (`POST /console/session` with the key) sets an http-only, `SameSite=Strict` cookie
//! naming a session the daemon keeps in memory, and on TCP a request without
//! `Authorization` is authenticated by that cookie ([`cookie_caller`]). The key is checked
//! again on every request, so revoking it ends its sessions. A cookie-authenticated
//! request must come from the console's own origin (its `Origin`, when the browser sends
//! one, names the `Host` it was sent to: a page elsewhere cannot open a terminal
//! WebSocket with the cookie), and one that changes anything (any method but GET and
//! HEAD) must carry the session's CSRF token in `X-CSRF-Token`, which only the console's
//! own page can read (`GET /console/session`).
//!
//! Sessions live in the daemon's memory: a restart signs everyone out. One ends after
//! [`IDLE`] unused or [`MAX_AGE`] in all; at most [`MAX_TENANT_SESSIONS`] per tenant and
//! [`MAX_SESSIONS`] in all are kept (the least recently used goes first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use warren_core::tokens::{same_secret, sha256_hex};
use warren_core::{Caller, Manager};
use warren_types::api::WireCode;

use crate::error::Error;
use crate::extract::{Json, Path};
use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "warren_session";
/// The header a state-changing cookie-authenticated request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after sign-in, used or not.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 4096;
/// Most sessions of one tenant: its own least recently used goes first, so one tenant
/// signing in over and over cannot push others' sessions out.
pub const MAX_TENANT_SESSIONS: usize = 64;

/// The console's own files, and the npm packages' files the build fetched.
const PAGE: &str = include_str!("../../../console/src/index.html");
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/src/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../console/src/app.css"),
    ),
    (
        "vendor/xterm.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/console-vendor/xterm.mjs")),
    ),
    (
        "vendor/xterm.css",
        "text/css; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/console-vendor/xterm.css")),
    ),
    (
        "vendor/addon-fit.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/console-vendor/addon-fit.mjs")),
    ),
];

/// Scripts and styles from the daemon only; xterm.js sets styles on its elements, which
/// needs `'unsafe-inline'` for styles (never for scripts).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; font-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's signed-in browsers.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// By the SHA-256 of the cookie's value.
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Debug)]
struct Session {
    tenant: String,
    api_key: String,
    csrf: String,
    made: Instant,
    used: Instant,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for `api_key` of `tenant`: its cookie value and CSRF token.
    fn open(&self, tenant: &str, api_key: &str) -> Result<(String, String), Error> {
        let random = || {
            warren_types::random::hex(32).map_err(|_| {
                Error::new(
                    WireCode::Unavailable,
                    "the host's random number generator failed; retry",
                )
            })
        };
        let (id, csrf) = (random()?, random()?);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| live(s, now));
        // Room is made among the tenant's own sessions first, else among all.
        let theirs = map.values().filter(|s| s.tenant == tenant).count();
        let room_among = if theirs >= MAX_TENANT_SESSIONS {
            Some(Some(tenant))
        } else if map.len() >= MAX_SESSIONS {
            Some(None)
        } else {
            None
        };
        if let Some(among) = room_among {
            let oldest = map
                .iter()
                .filter(|(_, s)| among.is_none_or(|t| s.tenant == t))
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            sha256_hex(&id),
            Session {
                tenant: tenant.to_string(),
                api_key: api_key.to_string(),
                csrf: csrf.clone(),
                made: now,
                used: now,
            },
        );
        Ok((id, csrf))
    }

    /// The caller and CSRF token of the session `id`, if it is live and its key still
    /// authenticates; marks it used.
    fn caller(&self, mgr: &Manager, id: &str) -> Option<(Caller, String)> {
        let hash = sha256_hex(id);
        let now = Instant::now();
        let (key, csrf) = {
            let mut map = self.lock();
            let s = map.get_mut(&hash)?;
            if !live(s, now) {
                map.remove(&hash);
                return None;
            }
            s.used = now;
            (s.api_key.clone(), s.csrf.clone())
        };
        match mgr.authenticate(&key) {
            Some(c) => Some((c, csrf)),
            None => {
                self.lock().remove(&hash);
                None
            }
        }
    }

    fn close(&self, id: &str) {
        self.lock().remove(&sha256_hex(id));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.made) < MAX_AGE
}

/// Whether the console session `id` is live and its key still authenticates.
pub(crate) fn session_alive(st: &AppState, id: &str) -> bool {
    st.console.caller(&st.mgr, id).is_some()
}

/// The console session a request's cookie names, if it has one.
pub(crate) fn session_of(headers: &HeaderMap) -> Option<String> {
    session_cookie(headers).map(str::to_string)
}

/// The session cookie's value, if the request has one. Sent twice, it names no session
/// (an empty value): a page on a host under the console's (a sandbox's port host) may
/// have set one for the console's domain, and neither can be told for the browser's own.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v);
    let first = found.next()?;
    Some(if found.next().is_some() { "" } else { first })
}

/// Headers that clear a session cookie set for the console's own host as a domain
/// (`Domain=HOST`, which reaches every host under it): what a page on a port host
/// could have set.
fn clear_domain_cookie(headers: &HeaderMap) -> Option<String> {
    let (name, _) = crate::e2b::ports::host_parts(headers)?;
    (!name.is_empty() && name.parse::<std::net::IpAddr>().is_err())
        .then(|| format!("{COOKIE}=; Path=/; Domain={name}; Max-Age=0"))
}

/// The caller a console session authenticates, for a TCP request without
/// `Authorization`: `None` when the request has no session cookie. A cookie that names
/// no live session, a request from another origin, and a state-changing request without
/// the session's CSRF token are refused.
pub(crate) fn cookie_caller(parts: &Parts, st: &AppState) -> Result<Option<Caller>, Error> {
    let Some(id) = session_cookie(&parts.headers) else {
        return Ok(None);
    };
    let (caller, csrf) = st.console.caller(&st.mgr, id).ok_or_else(|| {
        Error::unauthorized(
            "the console session ended (signed out, expired or its key revoked): sign in again",
        )
    })?;
    same_origin(&parts.headers)?;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same_secret(sent, &csrf) {
            return Err(Error::new(
                WireCode::PermissionDenied,
                "a console request that changes something needs the session's X-CSRF-Token",
            ));
        }
    }
    Ok(Some(caller))
}

/// Refuses a request whose `Origin` is not the host it was sent to (a browser sends
/// `Origin` on every cross-origin request and on every WebSocket handshake), or that
/// the browser says another site or origin made (`Sec-Fetch-Site`: a page on another
/// port of the same host is the same site, not the same origin).
fn same_origin(headers: &HeaderMap) -> Result<(), Error> {
    let refused = || {
        Error::new(
            WireCode::PermissionDenied,
            "a console session is usable from the console's own page only (this request came from another site)",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return Err(refused());
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(refused()),
    }
}

/// `GET /`: the console.
pub async fn root() -> Redirect {
    Redirect::to("/console/")
}

/// `GET /console/`: the page. Every route of the page is a fragment (`#/...`) of it, so
/// a share link's token never reaches a server log.
pub async fn page() -> Response {
    #[cfg(console_off)]
    let body = PAGE.replace(
        "<!--console-off-->",
        "<p class=\"banner error\">This binary was built with WARREN_CONSOLE=off: the \
         terminal's packages are not in it. Rebuild with npm reachable.</p>",
    );
    #[cfg(not(console_off))]
    let body = PAGE;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page_headers(),
        body,
    )
        .into_response()
}

/// `GET /console/{*file}`: an asset.
pub async fn asset(Path(file): Path<String>) -> Result<Response, Error> {
    let (_, kind, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| Error::not_found(format!("the console has no file {file:?}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, *kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page_headers(),
        *body,
    )
        .into_response())
}

fn page_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// `POST /console/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub api_key: String,
}

/// Who a console session is.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub tenant: String,
    /// An operator key: pools and every tenant's templates.
    pub operator: bool,
    /// Send it as `X-CSRF-Token` on every request but GET and HEAD.
    pub csrf_token: String,
}

/// `POST /console/session`: signs in with an API key; sets the session cookie.
pub async fn sign_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<SignIn>,
) -> Result<Response, Error> {
    same_origin(&headers)?;
    let caller = st
        .mgr
        .authenticate(req.api_key.trim())
        .ok_or_else(|| Error::unauthorized("unknown API key"))?;
    let (id, csrf_token) = st.console.open(&caller.tenant, req.api_key.trim())?;
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
    let info = SessionInfo {
        tenant: caller.tenant,
        operator: caller.operator,
        csrf_token,
    };
    let mut resp = (
        StatusCode::CREATED,
        [(header::SET_COOKIE, cookie)],
        axum::Json(info),
    )
        .into_response();
    if let Some(v) = clear_domain_cookie(&headers).and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `GET /console/session`: who the cookie's session is, and its CSRF token.
pub async fn whoami(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<SessionInfo>, Error> {
    same_origin(&headers)?;
    let (caller, csrf_token) = session_cookie(&headers)
        .and_then(|id| st.console.caller(&st.mgr, id))
        .ok_or_else(|| Error::unauthorized("not signed in"))?;
    Ok(axum::Json(SessionInfo {
        tenant: caller.tenant,
        operator: caller.operator,
        csrf_token,
    }))
}

/// `DELETE /console/session`: signs out (with the CSRF token); clears the cookie.
pub async fn sign_out(State(st): State<AppState>, parts: Parts) -> Result<Response, Error> {
    if cookie_caller(&parts, &st)?.is_some() {
        if let Some(id) = session_cookie(&parts.headers) {
            st.console.close(id);
        }
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

/// The sessions, shared by the TCP surface's handlers.
pub(crate) fn sessions() -> Arc<Sessions> {
    Arc::new(Sessions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[(header::COOKIE, "a=1; warren_session=abc; b=2")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        let h = headers(&[
            (header::COOKIE, "a=1"),
            (header::COOKIE, "warren_session=x"),
        ]);
        assert_eq!(session_cookie(&h), Some("x"));
        let h = headers(&[(header::COOKIE, "warren_sessionx=1")]);
        assert_eq!(session_cookie(&h), None);
        // Twice (one set for a parent domain by a page under it): no session.
        let h = headers(&[(
            header::COOKIE,
            "warren_session=mine; warren_session=planted",
        )]);
        assert_eq!(session_cookie(&h), Some(""));
    }

    #[test]
    fn signing_in_clears_a_session_cookie_planted_for_the_consoles_domain() {
        let h = headers(&[(header::HOST, "localhost:7070")]);
        assert_eq!(
            clear_domain_cookie(&h).as_deref(),
            Some("warren_session=; Path=/; Domain=localhost; Max-Age=0")
        );
        // An address has no hosts under it.
        for host in ["127.0.0.1:7070", "[::1]:7070"] {
            assert_eq!(clear_domain_cookie(&headers(&[(header::HOST, host)])), None);
        }
    }

    #[test]
    fn another_origin_is_refused() {
        let ok = headers(&[(header::HOST, "h:1"), (header::ORIGIN, "http://h:1")]);
        assert!(same_origin(&ok).is_ok());
        let none = headers(&[(header::HOST, "h:1")]);
        assert!(same_origin(&none).is_ok());
        for o in ["http://evil:1", "null", "http://h:2", "ftp://h:1"] {
            let bad = headers(&[(header::HOST, "h:1"), (header::ORIGIN, o)]);
            assert!(same_origin(&bad).is_err(), "{o}");
        }
        let site = header::HeaderName::from_static("sec-fetch-site");
        for (v, ok) in [
            ("same-origin", true),
            ("none", true),
            ("same-site", false),
            ("cross-site", false),
        ] {
            let h = headers(&[(header::HOST, "h:1"), (site.clone(), v)]);
            assert_eq!(same_origin(&h).is_ok(), ok, "{v}");
        }
    }

    #[test]
    fn one_tenant_cannot_push_out_anothers_sessions() {
        let s = Sessions::default();
        let (theirs, _) = s.open("b", "kb").unwrap();
        for _ in 0..MAX_TENANT_SESSIONS * 2 {
            s.open("a", "ka").unwrap();
        }
        let map = s.lock();
        assert!(map.contains_key(&sha256_hex(&theirs)));
        assert_eq!(
            map.values().filter(|x| x.tenant == "a").count(),
            MAX_TENANT_SESSIONS
        );
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let t = Instant::now();
        let s = Session {
            tenant: String::new(),
            api_key: String::new(),
            csrf: String::new(),
            made: t,
            used: t,
        };
        assert!(live(&s, t + IDLE / 2));
        assert!(!live(&s, t + IDLE));
        let used_late = Session {
            used: t + MAX_AGE - IDLE / 2,
            ..s
        };
        assert!(live(&used_late, t + MAX_AGE - IDLE / 4));
        assert!(!live(&used_late, t + MAX_AGE));
    }
}
