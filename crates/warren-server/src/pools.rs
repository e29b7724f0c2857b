//! Warm pools: host-wide configuration, so only the unix socket (the host's root) may
//! change them; an operator key may read them over TCP (the web console shows them).

use axum::extract::State;
use warren_types::api::{PoolInfo, PoolSpec};

use crate::error::Error;
use crate::extract::{Json, Tenant};
use crate::AppState;
use warren_types::api::WireCode;

/// `GET /v1/pools`: every pool with its readiness and hit counters; the operator's.
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
) -> Result<axum::Json<Vec<PoolInfo>>, Error> {
    if !who.operator {
        return Err(Error::new(
            WireCode::PermissionDenied,
            "pools are the host operator's: use an operator key (warren keys create --operator)",
        ));
    }
    Ok(axum::Json(st.mgr.pools()))
}

/// `POST /v1/pools`: adds a pool, or changes the pool of the same template and profile;
/// `max` 0 removes it and ends its warm sandboxes.
pub async fn set(
    State(st): State<AppState>,
    Json(spec): Json<PoolSpec>,
) -> Result<axum::Json<PoolInfo>, Error> {
    Ok(axum::Json(st.mgr.set_pool(spec).await?))
}
