//! Warm pools: the operator's (the unix socket, or an operator key on TCP, which the web
//! console uses); the engine refuses anyone else.

use axum::extract::State;
use warren_types::api::{PoolInfo, PoolSpec};

use crate::error::Error;
use crate::extract::{Json, Tenant};
use crate::AppState;

/// `GET /v1/pools`: every pool with its readiness and hit counters.
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<PoolInfo>>, Error> {
    Ok(axum::Json(st.mgr.pools_for(&who)?))
}

/// `POST /v1/pools`: adds a pool, or changes the pool of the same template and profile;
/// `max` 0 removes it and ends its warm sandboxes.
pub async fn set(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(spec): Json<PoolSpec>,
) -> Result<axum::Json<PoolInfo>, Error> {
    Ok(axum::Json(st.mgr.set_pool(&who, spec).await?))
}
