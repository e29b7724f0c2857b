//! Volumes over the API: the home volumes of a tenant's owners, listed, shown, grown and
//! removed by owner. Each handler is one [`Manager`](warren_core::Manager) call.

use axum::extract::State;
use axum::http::StatusCode;
use warren_types::api::{ResizeVolume, VolumeInfo};

use crate::error::Error;
use crate::extract::{Json, Path, Tenant};
use crate::AppState;

/// `GET /v1/volumes`.
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<VolumeInfo>>, Error> {
    Ok(axum::Json(st.mgr.volumes(&who).await?))
}

/// `GET /v1/volumes/{owner}`.
pub async fn get(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(owner): Path<String>,
) -> Result<axum::Json<VolumeInfo>, Error> {
    Ok(axum::Json(st.mgr.volume(&who, &owner).await?))
}

/// `POST /v1/volumes/{owner}/resize`: 409 while a sandbox mounts it.
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
pub async fn remove(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(owner): Path<String>,
) -> Result<StatusCode, Error> {
    st.mgr.remove_volume(&who, &owner).await?;
    Ok(StatusCode::NO_CONTENT)
}
