//! Tenants, for the host's root on the daemon's unix socket: listed with what each
//! holds, and removed with all of it (over TCP these calls answer `not_found`).

use hyper::Method;
use warren_types::api::{TenantInfo, TenantRemoval};

use crate::transport::enc;
use crate::{Client, Error};

impl Client {
    /// Every tenant, by name, with its keys, sandboxes, volumes, templates and snapshots.
    pub async fn tenants(&self) -> Result<Vec<TenantInfo>, Error> {
        self.call(Method::GET, "/v1/tenants", None::<&()>).await
    }

    /// Removes tenant `name`: its keys first, then its sandboxes, volumes, own templates
    /// and snapshots (these kept with `keep_snapshots`).
    pub async fn remove_tenant(
        &self,
        name: &str,
        keep_snapshots: bool,
    ) -> Result<TenantRemoval, Error> {
        let mut path = format!("/v1/tenants/{}", enc(name));
        if keep_snapshots {
            path.push_str("?keep_snapshots=true");
        }
        self.call(Method::DELETE, &path, None::<&()>).await
    }
}
