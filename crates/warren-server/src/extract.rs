//! Extractors whose failures are [`Error`]s, and authentication.
//!
//! axum's own extractors answer bad input with plain-text bodies and statuses of their
//! choosing (415, 422); every failure here is the API's JSON error instead, so a client
//! handles one shape. Authentication is an extractor too: a handler that takes
//! [`Tenant`] or [`SandboxAccess`] cannot run for a caller who failed it, and a caller
//! who passed it on TCP has its connection marked as authenticated (see [`crate::conn`]).
//! On TCP a request with neither `Authorization` nor an access token may be the web
//! console's, authenticated by its session cookie (see [`crate::console`]).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use warren_core::Caller;

use crate::conn::mark_authenticated;
use crate::console::{cookie_caller, session_alive, session_of};
use crate::error::Error;
use crate::reqlog::note_caller;
use crate::{AppState, Surface};

/// The header naming the tenant on the unix socket.
pub const TENANT_HEADER: &str = "x-warren-tenant";
/// The header carrying a sandbox's access token on TCP.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// A JSON body. An empty body reads as `{}`, so requests whose fields are all optional
/// need none; anything else must say it is JSON.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        let body = Body::from_request(req, state).await?.0;
        if body.is_empty() {
            return serde_json::from_slice(b"{}")
                .map(Json)
                .map_err(|e| Error::invalid_json(format!("a body is required: {e}")));
        }
        if is_json != Some(true) {
            return Err(Error::invalid_json(
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        serde_json::from_slice(&body)
            .map(Json)
            .map_err(|e| Error::invalid_json(e.to_string()))
    }
}

/// A raw body within the route's limit.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::too_large("the body is larger than this route accepts")
                } else {
                    Error::invalid(format!("cannot read the body: {}", e.body_text()))
                }
            })
    }
}

/// Query parameters.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let q = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(q)
            .map(Query)
            .map_err(|e| Error::invalid(format!("query: {e}")))
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| Error::invalid(e.body_text()))
    }
}

/// A caller acting as a tenant: the routes that are not about one sandbox's insides.
#[derive(Debug, Clone)]
pub struct Tenant(pub Caller);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        match state.surface {
            Surface::Unix => {
                let caller = unix_caller(&parts.headers)?;
                note_caller(&parts.extensions, &caller);
                Ok(Tenant(caller))
            }
            Surface::Tcp => {
                let caller = match bearer(&parts.headers)? {
                    Some(key) => api_key_caller(state, key)?,
                    None => cookie_caller(parts, state)?.ok_or_else(|| {
                        Error::unauthorized("send Authorization: Bearer <api key>")
                    })?,
                };
                mark_authenticated(&parts.extensions);
                note_caller(&parts.extensions, &caller);
                Ok(Tenant(caller))
            }
        }
    }
}

/// A caller allowed to act on the sandbox named in the path, with its key: a tenant, or
/// on TCP the holder of that sandbox's access token (scoped to it alone).
#[derive(Debug, Clone)]
pub struct SandboxAccess {
    pub caller: Caller,
    pub key: String,
    /// What revoking an API key can take away from this caller.
    pub credential: Option<Credential>,
}

/// An API key, or the console session signed in with one: what a TCP caller passed.
#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey(String),
    ConsoleSession(String),
}

impl Credential {
    fn still_valid(&self, st: &AppState) -> bool {
        match self {
            Self::ApiKey(key) => st.mgr.authenticate(key).is_some(),
            Self::ConsoleSession(id) => session_alive(st, id),
        }
    }
}

/// The credential a tenant's request passed with (see [`Tenant`]): its API key, else its
/// console session; none on the unix socket.
pub fn tenant_credential(st: &AppState, headers: &HeaderMap) -> Option<Credential> {
    if st.surface == Surface::Unix {
        return None;
    }
    match bearer(headers) {
        Ok(Some(key)) => Some(Credential::ApiKey(key.to_string())),
        _ => session_of(headers).map(Credential::ConsoleSession),
    }
}

/// Resolves, to what the client is told, once `credential` no longer authenticates (its
/// key was revoked): a stream opened with it ends then. Never without one (the unix
/// socket, a sandbox's access token).
pub fn revoked(
    st: AppState,
    credential: Option<Credential>,
) -> impl std::future::Future<Output = Error> {
    // Subscribed now, not when first polled: a revocation in between counts.
    let mut revocations = st.mgr.key_revocations();
    async move {
        if let Some(c) = credential {
            while revocations.changed().await.is_ok() {
                if !c.still_valid(&st) {
                    return Error::unauthorized(
                        "the API key this stream was opened with was revoked",
                    );
                }
            }
        }
        std::future::pending().await
    }
}

impl FromRequestParts<AppState> for SandboxAccess {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        // Read as they are (percent-decoded): no map is built for one parameter.
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::invalid(e.body_text()))?;
        let key = params
            .iter()
            .find_map(|(name, value)| (name == "key").then(|| value.to_string()))
            .ok_or_else(|| Error::invalid("no sandbox in the path"))?;
        let mut credential = None;
        let caller = match state.surface {
            Surface::Unix => unix_caller(&parts.headers)?,
            Surface::Tcp => match bearer(&parts.headers)? {
                Some(api_key) => {
                    let caller = api_key_caller(state, api_key)?;
                    credential = Some(Credential::ApiKey(api_key.to_string()));
                    caller
                }
                None if parts.headers.get(ACCESS_TOKEN_HEADER).is_none() => {
                    let caller = cookie_caller(parts, state)?.ok_or_else(|| {
                        Error::unauthorized(
                            "send Authorization: Bearer <api key>, or X-Access-Token: <the sandbox's access token>",
                        )
                    })?;
                    credential = session_of(&parts.headers).map(Credential::ConsoleSession);
                    caller
                }
                None => {
                    let token = parts
                        .headers
                        .get(ACCESS_TOKEN_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| {
                            Error::unauthorized(
                                "send Authorization: Bearer <api key>, or X-Access-Token: <the sandbox's access token>",
                            )
                        })?;
                    state
                        .mgr
                        .authenticate_sandbox(&key, token)
                        .ok_or_else(|| {
                            Error::unauthorized(
                                "the access token is not this sandbox's (address the sandbox by id with a token)",
                            )
                        })?
                }
            },
        };
        mark_authenticated(&parts.extensions);
        note_caller(&parts.extensions, &caller);
        Ok(SandboxAccess {
            caller,
            key,
            credential,
        })
    }
}

fn unix_caller(headers: &HeaderMap) -> Result<Caller, Error> {
    let Some(v) = headers.get(TENANT_HEADER) else {
        return Ok(Caller::host_root("default"));
    };
    let tenant = v.to_str().ok().filter(|t| valid_tenant(t)).ok_or_else(|| {
        Error::invalid("X-Warren-Tenant: use 1-128 letters, digits and - _ . @ + (not . or ..)")
    })?;
    Ok(Caller::host_root(tenant))
}

/// The rule the engine applies to tenant names when it makes keys.
pub fn valid_tenant(t: &str) -> bool {
    warren_core::valid_owner(t)
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| Some(k.trim()))
        .ok_or_else(|| Error::unauthorized("Authorization must be: Bearer <api key>"))
}

fn api_key_caller(state: &AppState, key: &str) -> Result<Caller, Error> {
    state
        .mgr
        .authenticate(key)
        .ok_or_else(|| Error::unauthorized("unknown API key"))
}
