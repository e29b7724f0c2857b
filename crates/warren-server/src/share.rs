//! Shared terminals over HTTP: the owner makes, lists and revokes shares of a process's
//! terminal with its usual credentials; a guest joins with the share's token alone, over
//! a WebSocket, and is cut off when the share is revoked or the process ends.
//!
//! The guest's WebSocket speaks the same frames as `/pty`: binary frames carry terminal
//! bytes, text frames `{"resize":{...}}` in and `{"exit":{...}}`/`{"error":{...}}` out. A
//! read-only guest's input and resizes are refused with an error notice and ignored.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use warren_agent::client::{AttachOptions, Process};
use warren_core::{AgentConn, Guest};
use warren_types::api::{ShareInfo, ShareRequest, WireCode};

use crate::conn::Connection;
use crate::error::Error;
use crate::exec::{terminal, Input, TerminalRules};
use crate::extract::{Json, Path, SandboxAccess, Tenant};
use crate::AppState;

/// `POST /v1/sandboxes/{key}/processes/{pid}/share`: a token for a second client.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/processes/{pid}/share",
    operation_id = "shareProcess",
    tag = "terminals",
    summary = "Share the terminal of a running process: the token in the answer (shown once) lets a second client join it at /v1/shared/{token}, read-only unless write is true.",
    params(
        crate::openapi::SandboxKey,
        crate::openapi::ProcessId,
    ),
    request_body(content = Option<warren_types::api::ShareRequest>, content_type = "application/json"),
    responses(
        (status = 201, description = "The share, with its token.", body = warren_types::api::ShareInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
    ),
)]
pub async fn create(
    State(st): State<AppState>,
    access: SandboxAccess,
    Path((_, pid)): Path<(String, u32)>,
    Json(req): Json<ShareRequest>,
) -> Result<(StatusCode, axum::Json<ShareInfo>), Error> {
    let info = st
        .mgr
        .share_process(&access.caller, &access.key, pid, &req)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

/// `GET /v1/sandboxes/{key}/shares`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{key}/shares",
    operation_id = "listShares",
    tag = "terminals",
    summary = "The sandbox's shares (without tokens).",
    params(
        crate::openapi::SandboxKey,
    ),
    responses(
        (status = 200, description = "Shares.", body = [warren_types::api::ShareInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<Vec<ShareInfo>>, Error> {
    Ok(axum::Json(st.mgr.list_shares(&who, &key).await?))
}

/// `DELETE /v1/sandboxes/{key}/shares/{id}`: revokes; connected guests are cut off.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{key}/shares/{id}",
    operation_id = "revokeShare",
    tag = "terminals",
    summary = "Revoke a share; guests connected with it are cut off.",
    params(
        crate::openapi::SandboxKey,
        ("id" = String, Path),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn revoke(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path((key, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    st.mgr.revoke_share(&who, &key, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/shared/{token}`: joins a shared terminal (WebSocket). The token is the
/// credential; an unknown or revoked one is 404, as for anything one may not see.
#[utoipa::path(
    get,
    path = "/v1/shared/{token}",
    operation_id = "joinShare",
    tag = "terminals",
    summary = "Join a shared terminal (WebSocket upgrade). The token is the credential: no API key. Binary frames carry terminal bytes; a read-write guest may send input and {\"resize\":{...}} text frames; the server sends {\"exit\":{...}} or {\"error\":{...}} text frames.",
    params(
        ("token" = String, Path),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 404, response = crate::openapi::NotFound),
    ),
)]
pub async fn join(
    State(st): State<AppState>,
    Path(token): Path<String>,
    conn: Connection,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    // The credential first: a request without a handshake learns only that.
    let guest = st.mgr.join_share(&token).await.ok_or_else(|| {
        Error::not_found("no such share (revoked, or its process or sandbox ended)")
    })?;
    conn.authenticated();
    let ws =
        ws.map_err(|e| Error::with_status(e.status(), WireCode::InvalidRequest, e.body_text()))?;
    let conn = st.mgr.agent(&guest.caller, &guest.sandbox).await?;
    // The shared process itself (its serial), from where the share began.
    let process = conn
        .client()
        .attach_with(
            guest.pid,
            AttachOptions {
                replay: false,
                from: Some(guest.from),
                serial: Some(guest.serial),
            },
        )
        .await?;
    let activity = conn.hold();
    Ok(ws.on_upgrade(move |socket| async move {
        let _activity = activity;
        guest_terminal(conn, guest, process, socket).await;
    }))
}

/// A guest's session on the shared process. `conn` carries the agent connection the
/// process is followed on: it must live as long as the session.
async fn guest_terminal(conn: AgentConn, mut guest: Guest, mut p: Process, mut socket: WebSocket) {
    let mode = crate::exec::PtyNotice::Share { write: guest.write };
    crate::exec::notice(&mut socket, &mode).await;
    let input = if guest.write {
        Input::Forward {
            report_failures: false,
        }
    } else {
        Input::Refuse
    };
    let rules = TerminalRules {
        input,
        cut_off: async {
            let _ = guest.revoked.changed().await;
            Error::new(WireCode::ShareRevoked, "the owner revoked this share")
        },
        close_wait: None,
    };
    terminal(&conn, &mut p, socket, rules).await;
}
