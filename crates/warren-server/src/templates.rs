//! Templates and snapshots: list, inspect, import (unix socket only: it reads a file of
//! the daemon's host), upload (the archive in the body, on both surfaces), build (progress streamed as NDJSON), remove, collect unused
//! layers, disk usage; and the snapshot of a sandbox.
//!
//! Each handler is one [`Manager`](warren_core::Manager) call; a build's progress comes
//! from the engine as typed events and leaves here as one JSON line each.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use warren_core::{
    BuildEvent, BuildTemplate, CoreError, DiskUsage, ImportEvent, ImportProgress, ImportResult,
    ImportTemplate, LayerGcResult, SnapshotRequest, SnapshotResult, TemplateInfo, UploadTemplate,
};

use crate::error::Error;
use crate::exec::ndjson;
use crate::extract::{Json, Path, Query, Tenant};
use crate::{AppState, Surface};

/// `GET /v1/templates`.
#[utoipa::path(
    get,
    path = "/v1/templates",
    operation_id = "listTemplates",
    tag = "templates",
    summary = "Every template of the node, `host` first, with the bytes its layers take and the sandboxes made from it.",
    responses(
        (status = 200, description = "The templates.", body = [crate::openapi::TemplateInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<TemplateInfo>>, Error> {
    Ok(axum::Json(st.mgr.templates_for(&who)?))
}

/// `GET /v1/templates/{name}`.
#[utoipa::path(
    get,
    path = "/v1/templates/{name}",
    operation_id = "getTemplate",
    tag = "templates",
    summary = "One template.",
    params(
        ("name" = String, Path),
    ),
    responses(
        (status = 200, description = "The template.", body = crate::openapi::TemplateInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(name): Path<String>,
) -> Result<axum::Json<TemplateInfo>, Error> {
    Ok(axum::Json(st.mgr.template(&who, &name)?))
}

/// `DELETE /v1/templates/{name}`: 409 while a sandbox uses it.
#[utoipa::path(
    delete,
    path = "/v1/templates/{name}",
    operation_id = "removeTemplate",
    tag = "templates",
    summary = "Remove a template. Refused (409) while any sandbox that is not terminated was made from it, or when another tenant made it. Its layers stay until `POST /v1/templates/gc` finds them unused.",
    params(
        ("name" = String, Path),
    ),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn remove(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    st.mgr.remove_template(&who, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/templates/import` (unix socket only: the archive is a path on the daemon's
/// host, which only the host's root may name).
#[utoipa::path(
    post,
    path = "/v1/templates/import",
    operation_id = "importTemplate",
    tag = "templates",
    summary = "Import a `docker save` or OCI image layout archive (a path on the daemon's host) as a template: layers gzip, zstd or plain, whiteouts applied, the image's Env, WorkingDir, User, Entrypoint and Cmd kept. Hostile archives (path traversal, writes through links, hard links out of the tree) are refused; device nodes, setuid bits and unmappable owners are neutralised and reported in `warnings`. Unix socket only.",
    params(
        ("progress" = Option<bool>, Query, description = "Answer 200 with NDJSON ImportEvent lines as the layers unpack (the last `done` or `error`) instead of 201 with the result."),
    ),
    request_body(content = crate::openapi::ImportTemplate, content_type = "application/json"),
    responses(
        (status = 201, description = "The template made.", body = crate::openapi::ImportResult, content_type = "application/json"),
        (status = 200, description = "With `progress=true`: the import's progress, one ImportEvent per line.", body = crate::openapi::ImportEvent, content_type = "application/x-ndjson"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
)]
pub async fn import(State(st): State<AppState>, req: Request) -> Result<Response, Error> {
    let (who, query, req) =
        unix_only::<ProgressQuery, ImportTemplate>(&st, req, "/v1/templates/import").await?;
    let mgr = st.mgr.clone();
    answer_import(query.progress, move |progress| async move {
        mgr.import_template(&who, req, progress).await
    })
    .await
}

/// `?progress=true`: the answer is NDJSON [`ImportEvent`]s instead of one result.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressQuery {
    #[serde(default)]
    progress: bool,
}

/// Answers an import: `201` with its result, or, when the caller asked for its
/// progress, `200` with NDJSON [`ImportEvent`]s, the last `done` or `error`. An import
/// refused before its first layer (a bad name, a missing file) is answered with its
/// error's status either way. The import goes on if the caller leaves.
async fn answer_import<F, Fut>(progress: bool, run: F) -> Result<Response, Error>
where
    F: FnOnce(Option<watch::Sender<ImportProgress>>) -> Fut,
    Fut: std::future::Future<Output = warren_core::Result<ImportResult>> + Send + 'static,
{
    if !progress {
        let r = run(None).await?;
        return Ok((StatusCode::CREATED, axum::Json(r)).into_response());
    }
    let (progress_tx, mut progress_rx) = watch::channel(ImportProgress::default());
    let mut task = tokio::spawn(run(Some(progress_tx)));
    let ended = |r: Result<warren_core::Result<ImportResult>, tokio::task::JoinError>| match r
        .unwrap_or_else(|e| Err(CoreError::Host(format!("the import failed: {e}"))))
    {
        Ok(result) => ImportEvent::Done {
            result: Box::new(result),
        },
        Err(e) => ImportEvent::Error {
            code: e.code().to_string(),
            message: e.to_string(),
        },
    };
    if progress_rx.changed().await.is_err() {
        // Over before its first layer: refused, most likely.
        let r = (&mut task).await;
        if let Ok(Err(e)) = r {
            return Err(e.into());
        }
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let _ = tx.send(line(&ended(r))).await;
        return Ok(ndjson(rx));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let first = ImportEvent::Progress(*progress_rx.borrow_and_update());
        let _ = tx.send(line(&first)).await;
        loop {
            tokio::select! {
                r = &mut task => {
                    let _ = tx.send(line(&ended(r))).await;
                    return;
                }
                changed = progress_rx.changed() => {
                    if changed.is_err() {
                        let r = (&mut task).await;
                        let _ = tx.send(line(&ended(r))).await;
                        return;
                    }
                    let at = ImportEvent::Progress(*progress_rx.borrow_and_update());
                    // A client gone stops hearing; the import goes on.
                    let _ = tx.send(line(&at)).await;
                }
            }
        }
    });
    Ok(ndjson(rx))
}

/// One NDJSON line.
fn line(event: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(event).expect("events serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// Longest wait for the next part of an upload.
const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /v1/templates/upload?name=...`: the body is the archive, written to the
/// daemon's disk as it arrives (never held whole) and counted against its limit, then
/// imported as `import` does. The route has no body limit of axum's: the engine's
/// [`Upload`](warren_core::Upload) counts, and removes its file however this ends (the
/// client leaving drops it with this future).
#[utoipa::path(
    post,
    path = "/v1/templates/upload",
    operation_id = "uploadTemplate",
    tag = "templates",
    summary = "Import a `docker save` or OCI image layout archive sent as the body (a tar, optionally gzip or zstd as a whole), as `importTemplate` imports a file of the daemon's host. The body is written to the daemon's data directory as it arrives and removed once imported, refused or broken off; it may be at most 8 GiB, or `max_bytes` if less (`413 payload_too_large` naming the limit). A tenant's template is its own (other tenants do not see it); an operator's is every tenant's. At most 2 uploads at once on the daemon (`503 busy` otherwise).",
    params(
        ("name" = String, Query, description = "The new template's name."),
        ("start_cmd" = Option<String>, Query, description = "Run in the background whenever a sandbox of this template starts."),
        ("ready_cmd" = Option<String>, Query, description = "Polled until it exits 0 before a sandbox counts as running."),
        ("ready_timeout_secs" = Option<i64>, Query, description = "How long the ready command may take to succeed (default 60)."),
        ("max_bytes" = Option<i64>, Query, description = "Most bytes the archive, and its layers unpacked, may take."),
        ("isolation" = Option<warren_types::spec::Isolation>, Query, description = "The backend its sandboxes get when their request names none."),
        ("setuid" = Option<bool>, Query, description = "Keep the image's setuid programs working inside: the operator's alone to ask (see `importTemplate`)."),
        ("progress" = Option<bool>, Query, description = "Once the body is in, answer 200 with NDJSON ImportEvent lines as the layers unpack (the last `done` or `error`) instead of 201 with the result."),
    ),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "The template made.", body = crate::openapi::ImportResult, content_type = "application/json"),
        (status = 200, description = "With `progress=true`: the import's progress, one ImportEvent per line.", body = crate::openapi::ImportEvent, content_type = "application/x-ndjson"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::ServerError),
        (status = 503, description = "`busy`: the daemon already receives as many archives as it takes at once; retry.", body = warren_types::api::ApiError, content_type = "application/json"),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn upload(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Query(req): Query<UploadTemplate>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let progress = req.progress;
    let mut upload = st.mgr.begin_upload(&who, req)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared {
        // Refused before a byte is written; the same words as a body found too long.
        upload.write_declared(n)?;
    }
    let mut data = body.into_data_stream();
    use tokio_stream::StreamExt;
    loop {
        // A sender that stops sending gives its place back rather than hold it.
        let next = tokio::time::timeout(UPLOAD_STALL, data.next())
            .await
            .map_err(|_| {
                Error::invalid(format!(
                    "the upload stalled: nothing arrived for {} s",
                    UPLOAD_STALL.as_secs()
                ))
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Error::invalid(format!("the upload broke off: {e}")))?;
        upload.write(&chunk).await?;
    }
    let mgr = st.mgr.clone();
    answer_import(progress, move |p| async move {
        mgr.import_upload(&who, upload, p).await
    })
    .await
}

/// The caller and body of a unix-socket-only route. On TCP the route does not exist,
/// whoever asks: checked before authentication, so TCP callers learn nothing more.
async fn unix_only<Q: serde::de::DeserializeOwned, T: serde::de::DeserializeOwned>(
    st: &AppState,
    req: Request,
    path: &str,
) -> Result<(warren_core::Caller, Q, T), Error> {
    if st.surface != Surface::Unix {
        return Err(crate::no_route("POST", path));
    }
    let (mut parts, body) = req.into_parts();
    let Tenant(who) = Tenant::from_request_parts(&mut parts, st).await?;
    let Query(query) = Query::<Q>::from_request_parts(&mut parts, st).await?;
    let Json(body) = Json::<T>::from_request(Request::from_parts(parts, body), st).await?;
    Ok((who, query, body))
}

/// `POST /v1/templates/build`: NDJSON [`BuildEvent`]s, the last `done` or `error`.
#[utoipa::path(
    post,
    path = "/v1/templates/build",
    operation_id = "buildTemplate",
    tag = "templates",
    summary = "Build a template: run `steps` (`sh -c`, as root, in order) in a sandbox of the base template, then keep its files as the new template's top layer. Streams NDJSON BuildEvent lines; the last is `done` or `error`. A failed step keeps nothing.",
    request_body(content = crate::openapi::BuildTemplate, content_type = "application/json"),
    responses(
        (status = 200, description = "Build progress, one BuildEvent per line.", body = crate::openapi::BuildEvent, content_type = "application/x-ndjson"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 429, response = crate::openapi::QuotaExceeded),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn build(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(req): Json<BuildTemplate>,
) -> Result<Response, Error> {
    if req.steps.len() > 1000 {
        return Err(Error::invalid("a build has at most 1000 steps"));
    }
    let (events_tx, mut events_rx) = mpsc::channel::<BuildEvent>(256);
    let (result_tx, mut result_rx) = tokio::sync::oneshot::channel();
    let mgr = st.mgr.clone();
    tokio::spawn(async move {
        // The build goes on even if the client leaves: it cleans up after itself.
        let r = mgr.build_template(&who, req, events_tx).await;
        let _ = result_tx.send(r.err());
    });
    // A build refused before it began (a bad name, an unknown base, a quota) sends no
    // event: it is answered with its error's status, not with a stream.
    let mut finished = false;
    let first = tokio::select! {
        ev = events_rx.recv() => ev,
        r = &mut result_rx => {
            if let Ok(Some(e)) = r {
                return Err(e.into());
            }
            finished = true;
            events_rx.recv().await
        }
    };
    // Nor does one whose first word is its error, or that ended without a word.
    if !finished && matches!(first, None | Some(BuildEvent::Error { .. })) {
        if let Ok(Some(e)) = (&mut result_rx).await {
            return Err(e.into());
        }
        finished = true;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let mut ended = false;
        use tokio_stream::StreamExt;
        let mut events =
            tokio_stream::iter(first).chain(tokio_stream::wrappers::ReceiverStream::new(events_rx));
        while let Some(ev) = events.next().await {
            ended |= matches!(ev, BuildEvent::Done { .. } | BuildEvent::Error { .. });
            if tx.send(line(&ev)).await.is_err() {
                // Keep draining so the build is never blocked on a gone client.
                continue;
            }
        }
        // A build that failed without saying so still ends its stream with the error.
        if ended || finished {
            return;
        }
        if let Ok(Some(e)) = result_rx.await {
            let ev = BuildEvent::Error {
                code: e.code().to_string(),
                message: e.to_string(),
            };
            let _ = tx.send(line(&ev)).await;
        }
    });
    Ok(ndjson(rx))
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerGcRequest {
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/templates/gc` (unix socket only: layers are the node's, not a tenant's):
/// removes layers no template uses.
#[utoipa::path(
    post,
    path = "/v1/templates/gc",
    operation_id = "gcLayers",
    tag = "templates",
    summary = "Remove layers no template lists, unfinished layers, and the files of builds that never finished (or only list them, with dry_run). Unix socket only.",
    request_body(content = crate::templates::LayerGcRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What was removed.", body = crate::openapi::LayerGcResult, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
)]
pub async fn gc(
    State(st): State<AppState>,
    req: Request,
) -> Result<axum::Json<LayerGcResult>, Error> {
    let (_, _, req) =
        unix_only::<serde::de::IgnoredAny, LayerGcRequest>(&st, req, "/v1/templates/gc").await?;
    Ok(axum::Json(st.mgr.gc_layers(req.dry_run).await?))
}

/// `GET /v1/disk`: bytes per template and per sandbox of the caller.
#[utoipa::path(
    get,
    path = "/v1/disk",
    operation_id = "diskUsage",
    tag = "templates",
    summary = "Disk used by each template (its layers) and by each of the caller's sandboxes (writable layer or disk image).",
    responses(
        (status = 200, description = "Disk use.", body = crate::openapi::DiskUsage, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn disk(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<DiskUsage>, Error> {
    Ok(axum::Json(st.mgr.disk_usage(&who).await?))
}

/// `POST /v1/sandboxes/{key}/snapshot`: the sandbox's files as a new template.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{key}/snapshot",
    operation_id = "snapshotSandbox",
    tag = "templates",
    summary = "Capture the sandbox's files (running: frozen during the copy; paused; or stopped) as a new template that shares its base template's layers. Only the sandbox's own changes are copied.",
    params(
        crate::openapi::SandboxKey,
    ),
    request_body(content = crate::openapi::SnapshotRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The template made, the bytes written and the time taken.", body = crate::openapi::SnapshotResult, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn snapshot(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(key): Path<String>,
    Json(req): Json<SnapshotRequest>,
) -> Result<(StatusCode, axum::Json<SnapshotResult>), Error> {
    let r = st.mgr.snapshot(&who, &key, req).await?;
    Ok((StatusCode::CREATED, axum::Json(r)))
}
