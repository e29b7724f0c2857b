//! Sessions over HTTP: a platform opens one when its user arrives, sends heartbeats while
//! the user is there, and releases it when done (see `warren_core`'s session module for
//! the states and their timeouts).

use axum::extract::State;
use axum::http::StatusCode;
use warren_types::api::{OpenSession, ReleaseSession, SessionInfo};

use crate::error::Error;
use crate::extract::{Json, Path, Tenant};
use crate::AppState;

/// `POST /v1/sessions`: attaches a client to its default sandbox.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "openSession",
    tag = "sessions",
    summary = "Attach a client to its default sandbox (owner = the client, name default), made on first use; a client with a live session gets it back, active again.",
    request_body(content = warren_types::api::OpenSession, content_type = "application/json"),
    responses(
        (status = 201, description = "The session.", body = warren_types::api::SessionInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::QuotaExceeded),
    ),
)]
pub async fn open(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(req): Json<OpenSession>,
) -> Result<(StatusCode, axum::Json<SessionInfo>), Error> {
    let s = st.mgr.open_session(&who, req).await?;
    Ok((StatusCode::CREATED, axum::Json(s)))
}

/// `GET /v1/sessions`.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    operation_id = "listSessions",
    tag = "sessions",
    summary = "The tenant's live sessions.",
    responses(
        (status = 200, description = "Sessions.", body = [warren_types::api::SessionInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<SessionInfo>>, Error> {
    Ok(axum::Json(st.mgr.sessions(&who)?))
}

/// `GET /v1/sessions/{id}`.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    operation_id = "getSession",
    tag = "sessions",
    summary = "One session.",
    params(
        ("id" = String, Path),
    ),
    responses(
        (status = 200, description = "The session.", body = warren_types::api::SessionInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionInfo>, Error> {
    Ok(axum::Json(st.mgr.session(&who, &id)?))
}

/// `POST /v1/sessions/{id}/heartbeat`: the client is there (also re-attaches).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/heartbeat",
    operation_id = "heartbeatSession",
    tag = "sessions",
    summary = "The client is there: the session is active again (its sandbox resumed if it was suspended).",
    params(
        ("id" = String, Path),
    ),
    responses(
        (status = 200, description = "The session.", body = warren_types::api::SessionInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn heartbeat(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionInfo>, Error> {
    Ok(axum::Json(st.mgr.heartbeat(&who, &id).await?))
}

/// `POST /v1/sessions/{id}/detach`: the client leaves for now.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/detach",
    operation_id = "detachSession",
    tag = "sessions",
    summary = "The client leaves for now; the sandbox runs on until the detached timeout suspends it.",
    params(
        ("id" = String, Path),
    ),
    responses(
        (status = 200, description = "The session.", body = warren_types::api::SessionInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn detach(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionInfo>, Error> {
    Ok(axum::Json(st.mgr.detach_session(&who, &id)?))
}

/// `POST /v1/sessions/{id}/release`: ends the session (keep-alive keeps the sandbox).
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/release",
    operation_id = "releaseSession",
    tag = "sessions",
    summary = "End the session. With keep_alive the sandbox stays for the client's next session; otherwise it is removed unless another session uses it.",
    params(
        ("id" = String, Path),
    ),
    request_body(content = Option<warren_types::api::ReleaseSession>, content_type = "application/json"),
    responses(
        (status = 204, description = "Released."),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn release(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
    Json(req): Json<ReleaseSession>,
) -> Result<StatusCode, Error> {
    st.mgr.release_session(&who, &id, req.keep_alive).await?;
    Ok(StatusCode::NO_CONTENT)
}
