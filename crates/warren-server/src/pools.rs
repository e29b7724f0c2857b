//! Warm pools: the operator's (the unix socket, or an operator key on TCP, which the web
//! console uses); the engine refuses anyone else.

use axum::extract::State;
use warren_types::api::{PoolInfo, PoolSpec};

use crate::error::Error;
use crate::extract::{Json, Tenant};
use crate::AppState;

/// `GET /v1/pools`: every pool with its readiness and hit counters.
#[utoipa::path(
    get,
    path = "/v1/pools",
    operation_id = "listPools",
    tag = "pools",
    summary = "Warm pools with how many sandboxes are ready and their hit and miss counts. The host's operator only: the unix socket, or an operator key on TCP (403 for other keys).",
    responses(
        (status = 200, description = "The pools.", body = [warren_types::api::PoolInfo], content_type = "application/json"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<PoolInfo>>, Error> {
    Ok(axum::Json(st.mgr.pools_for(&who)?))
}

/// `POST /v1/pools`: adds a pool, or changes the pool of the same template and profile;
/// `max` 0 removes it and ends its warm sandboxes.
#[utoipa::path(
    post,
    path = "/v1/pools",
    operation_id = "setPool",
    tag = "pools",
    summary = "Add a warm pool, or change the pool of the same template and resource profile. Creates that ask for exactly that profile, with home_volume false and no env or published ports, get a ready sandbox; max 0 removes the pool and its warm sandboxes. The host's operator only: the unix socket, or an operator key on TCP (403 for other keys).",
    request_body(content = warren_types::api::PoolSpec, content_type = "application/json"),
    responses(
        (status = 200, description = "The pool.", body = warren_types::api::PoolInfo, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    ),
)]
pub async fn set(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(spec): Json<PoolSpec>,
) -> Result<axum::Json<PoolInfo>, Error> {
    Ok(axum::Json(st.mgr.set_pool(&who, spec).await?))
}
