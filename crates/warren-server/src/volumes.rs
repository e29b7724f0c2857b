//! Volumes over the API: the home volumes of a tenant's owners, listed, shown, grown and
//! removed by owner. Each handler is one [`Manager`](warren_core::Manager) call.

use axum::extract::State;
use axum::http::StatusCode;
use warren_types::api::{ResizeVolume, VolumeInfo};

use crate::error::Error;
use crate::extract::{Json, Path, Tenant};
use crate::AppState;

/// `GET /v1/volumes`.
#[utoipa::path(
    get,
    path = "/v1/volumes",
    operation_id = "listVolumes",
    tag = "volumes",
    summary = "The home volumes of the tenant's owners: those recorded when a sandbox was made with one, and those its sandboxes mount.",
    responses(
        (status = 200, description = "The volumes.", body = [warren_types::api::VolumeInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<VolumeInfo>>, Error> {
    Ok(axum::Json(st.mgr.volumes(&who).await?))
}

/// `GET /v1/volumes/{owner}`.
#[utoipa::path(
    get,
    path = "/v1/volumes/{owner}",
    operation_id = "getVolume",
    tag = "volumes",
    summary = "An owner's home volume: its size, the disk it takes, the sandboxes that mount it.",
    params(
        ("owner" = String, Path, description = "The owner whose home volume it is."),
    ),
    responses(
        (status = 200, description = "The volume.", body = warren_types::api::VolumeInfo, content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(owner): Path<String>,
) -> Result<axum::Json<VolumeInfo>, Error> {
    Ok(axum::Json(st.mgr.volume(&who, &owner).await?))
}

/// `POST /v1/volumes/{owner}/resize`: 409 while a sandbox mounts it.
#[utoipa::path(
    post,
    path = "/v1/volumes/{owner}/resize",
    operation_id = "resizeVolume",
    tag = "volumes",
    summary = "Grow an owner's home volume (an ext4 image), its files kept; refused (409 invalid_state) while a sandbox that is not terminated mounts it, and a create that would mount it meanwhile is refused the same way.",
    params(
        ("owner" = String, Path, description = "The owner whose home volume it is."),
    ),
    request_body(content = warren_types::api::ResizeVolume, content_type = "application/json"),
    responses(
        (status = 200, description = "The volume, grown.", body = warren_types::api::VolumeInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
        (status = 507, response = crate::openapi::NoSpace),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn resize(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(owner): Path<String>,
    Json(req): Json<ResizeVolume>,
) -> Result<axum::Json<VolumeInfo>, Error> {
    Ok(axum::Json(
        st.mgr.resize_volume(&who, &owner, req.size_bytes).await?,
    ))
}

/// `DELETE /v1/volumes/{owner}`: 409 while a sandbox mounts it.
#[utoipa::path(
    delete,
    path = "/v1/volumes/{owner}",
    operation_id = "removeVolume",
    tag = "volumes",
    summary = "Remove an owner's home volume and every file in it; refused (409 invalid_state, naming them) while a sandbox that is not terminated mounts it.",
    params(
        ("owner" = String, Path, description = "The owner whose home volume it is."),
    ),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn remove(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(owner): Path<String>,
) -> Result<StatusCode, Error> {
    st.mgr.remove_volume(&who, &owner).await?;
    Ok(StatusCode::NO_CONTENT)
}
