//! Tenants over the API, on the daemon's unix socket only: listed with what each holds,
//! and removed with all of it. On TCP the routes answer as if they did not exist, before
//! any key is looked at. Each handler is one [`Manager`](warren_core::Manager) call.

use axum::extract::{FromRequestParts, Request, State};
use serde::Deserialize;
use warren_core::Caller;
use warren_types::api::{TenantInfo, TenantRemoval};

use crate::error::Error;
use crate::extract::{Path, Query, Tenant};
use crate::{AppState, Surface};

/// `GET /v1/tenants`.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    operation_id = "listTenants",
    tag = "daemon",
    summary = "Every tenant, by name, with its keys, sandboxes, volumes, templates and snapshots (unix socket only; 404 on TCP).",
    responses(
        (status = 200, description = "The tenants.", body = [warren_types::api::TenantInfo], content_type = "application/json"),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("unixTenant" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    req: Request,
) -> Result<axum::Json<Vec<TenantInfo>>, Error> {
    let (who, _) = host_root(&st, req, "GET", "/v1/tenants").await?;
    Ok(axum::Json(st.mgr.tenants(&who).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct RemoveQuery {
    /// Keep the tenant's snapshots: a tenant of the same name made later has them again.
    keep_snapshots: bool,
}

/// `DELETE /v1/tenants/{name}`.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{name}",
    operation_id = "removeTenant",
    tag = "daemon",
    summary = "Remove a tenant (unix socket only; 404 on TCP): its API keys are revoked first (its open streams and console sessions end), then its sandboxes, its owners' home volumes and SSH keys, its own templates and its snapshots (unless `keep_snapshots`) are removed. Templates it made for every tenant stay and are named. A removal cut short says what failed; sent again, it finishes.",
    params(
        ("name" = String, Path, description = "The tenant."),
        RemoveQuery,
    ),
    responses(
        (status = 200, description = "What was removed and kept.", body = warren_types::api::TenantRemoval, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::ServerError),
    ),
    security(("unixTenant" = [])),
)]
pub async fn remove(
    State(st): State<AppState>,
    req: Request,
) -> Result<axum::Json<TenantRemoval>, Error> {
    let (who, mut parts) = host_root(&st, req, "DELETE", "/v1/tenants/{name}").await?;
    let Path(name) = Path::<String>::from_request_parts(&mut parts, &st).await?;
    let Query(q) = Query::<RemoveQuery>::from_request_parts(&mut parts, &st).await?;
    Ok(axum::Json(
        st.mgr.remove_tenant(&who, &name, q.keep_snapshots).await?,
    ))
}

/// The host's root on the unix socket; on TCP, no such route.
async fn host_root(
    st: &AppState,
    req: Request,
    method: &str,
    path: &str,
) -> Result<(Caller, axum::http::request::Parts), Error> {
    if st.surface != Surface::Unix {
        return Err(crate::no_route(method, path));
    }
    let (mut parts, _) = req.into_parts();
    let Tenant(who) = Tenant::from_request_parts(&mut parts, st).await?;
    Ok((who, parts))
}
