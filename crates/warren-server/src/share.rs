//! Shared terminals over HTTP: the owner makes, lists and revokes shares of a process's
//! terminal with its usual credentials; a guest joins with the share's token alone, over
//! a WebSocket, and is cut off when the share is revoked or the process ends.
//!
//! The guest's WebSocket speaks the same frames as `/pty`: binary frames carry terminal
//! bytes, text frames `{"resize":{...}}` in and `{"exit":{...}}`/`{"error":{...}}` out. A
//! read-only guest's input and resizes are refused with an error notice and ignored.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use warren_core::Guest;
use warren_runtime::client::{Process, ProcessEvent};
use warren_types::api::{ShareInfo, ShareRequest};

use crate::error::Error;
use crate::exec::{notice, oom_killed, win_size, PtyControl, PtyExit, PtyNotice};
use crate::extract::{Json, Path, SandboxAccess, Tenant};
use crate::AppState;

/// `POST /v1/sandboxes/{key}/processes/{pid}/share`: a token for a second client.
pub async fn create(
    State(st): State<AppState>,
    access: SandboxAccess,
    Path((_, pid)): Path<(String, u32)>,
    Json(req): Json<ShareRequest>,
) -> Result<(StatusCode, axum::Json<ShareInfo>), Error> {
    let info = st
        .mgr
        .share_process(&access.caller, &access.key, pid, req.write)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

/// `GET /v1/sandboxes/{key}/shares`.
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
) -> Result<axum::Json<Vec<ShareInfo>>, Error> {
    Ok(axum::Json(st.mgr.list_shares(&who, &key)?))
}

/// `DELETE /v1/sandboxes/{key}/shares/{id}`: revokes; connected guests are cut off.
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
pub async fn join(
    State(st): State<AppState>,
    Path(token): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let ws = ws.map_err(|e| Error::new(e.status(), "invalid_request", e.body_text()))?;
    let guest = st
        .mgr
        .join_share(&token)
        .ok_or_else(|| Error::not_found("no such share (revoked, or its sandbox ended)"))?;
    let (id, client) = st.mgr.agent(&guest.caller, &guest.sandbox).await?;
    let process = client.attach(guest.pid, true).await?;
    let activity = st.mgr.hold_activity(&id);
    Ok(ws.on_upgrade(move |socket| async move {
        let _activity = activity;
        let _client = client;
        guest_terminal(st, id, guest, process, socket).await;
    }))
}

async fn refuse(socket: &mut WebSocket, what: &str) {
    let e = Error::new(
        StatusCode::FORBIDDEN,
        "read_only",
        format!("this share is read-only: {what} is ignored"),
    );
    notice(socket, &PtyNotice::Error(e.body())).await;
}

async fn guest_terminal(
    st: AppState,
    id: String,
    mut guest: Guest,
    mut p: Process,
    mut socket: WebSocket,
) {
    let oom_before = st.mgr.oom_kills(&id);
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if !guest.write {
                        refuse(&mut socket, "input").await;
                    } else if p.write_stdin(b.to_vec()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if !guest.write {
                        refuse(&mut socket, "a resize").await;
                        continue;
                    }
                    let r = serde_json::from_str::<PtyControl>(t.as_str())
                        .map_err(|e| Error::invalid_json(e.to_string()))
                        .and_then(|c| win_size(c.resize.rows, c.resize.cols));
                    match r {
                        Ok(size) => {
                            let _ = p.resize(size).await;
                        }
                        Err(e) => notice(&mut socket, &PtyNotice::Error(e.body())).await,
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            ev = p.next() => match ev {
                Ok(ProcessEvent::Stdout(d) | ProcessEvent::Stderr(d)) => {
                    if socket.send(Message::Binary(d.into())).await.is_err() {
                        return;
                    }
                }
                Ok(ProcessEvent::Exited(s)) => {
                    let exit = PtyExit {
                        exit_code: s.code,
                        signal: s.signal,
                        timed_out: s.timed_out,
                        oom_killed: oom_killed(&s, oom_before, st.mgr.oom_kills(&id)),
                    };
                    notice(&mut socket, &PtyNotice::Exit(exit)).await;
                    break;
                }
                Err(e) => {
                    notice(&mut socket, &PtyNotice::Error(Error::from(e).body())).await;
                    break;
                }
            },
            _ = guest.revoked.changed() => {
                let e = Error::new(StatusCode::GONE, "share_revoked", "the owner revoked this share");
                notice(&mut socket, &PtyNotice::Error(e.body())).await;
                break;
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
