//! Warm pools: host-wide configuration, so only the unix socket (the host's root) may
//! change them; the TCP router has no such routes.

use axum::extract::State;
use warren_types::api::{PoolInfo, PoolSpec};

use crate::error::Error;
use crate::extract::Json;
use crate::AppState;

/// `GET /v1/pools`: every pool with its readiness and hit counters.
pub async fn list(State(st): State<AppState>) -> axum::Json<Vec<PoolInfo>> {
    axum::Json(st.mgr.pools())
}

/// `POST /v1/pools`: adds a pool, or changes the pool of the same template and profile;
/// `max` 0 removes it and ends its warm sandboxes.
pub async fn set(
    State(st): State<AppState>,
    Json(spec): Json<PoolSpec>,
) -> Result<axum::Json<PoolInfo>, Error> {
    Ok(axum::Json(st.mgr.set_pool(spec).await?))
}
