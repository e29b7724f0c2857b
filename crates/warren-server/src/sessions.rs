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
pub async fn open(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(req): Json<OpenSession>,
) -> Result<(StatusCode, axum::Json<SessionInfo>), Error> {
    let s = st.mgr.open_session(&who, req).await?;
    Ok((StatusCode::CREATED, axum::Json(s)))
}

/// `GET /v1/sessions`.
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<SessionInfo>>, Error> {
    Ok(axum::Json(st.mgr.sessions(&who)?))
}

/// `GET /v1/sessions/{id}`.
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionInfo>, Error> {
    Ok(axum::Json(st.mgr.session(&who, &id)?))
}

/// `POST /v1/sessions/{id}/heartbeat`: the client is there (also re-attaches).
pub async fn heartbeat(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionInfo>, Error> {
    Ok(axum::Json(st.mgr.heartbeat(&who, &id).await?))
}

/// `POST /v1/sessions/{id}/detach`: the client leaves for now.
pub async fn detach(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionInfo>, Error> {
    Ok(axum::Json(st.mgr.detach_session(&who, &id)?))
}

/// `POST /v1/sessions/{id}/release`: ends the session (keep-alive keeps the sandbox).
pub async fn release(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(id): Path<String>,
    Json(req): Json<ReleaseSession>,
) -> Result<StatusCode, Error> {
    st.mgr.release_session(&who, &id, req.keep_alive).await?;
    Ok(StatusCode::NO_CONTENT)
}
