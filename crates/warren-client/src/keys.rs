//! API keys: a key lists its own tenant's (the unix socket every tenant's) and revokes
//! them by id. Keys are made on the unix socket only, and shown once.

use hyper::Method;
use warren_types::api::ApiKeyInfo;

use crate::transport::enc;
use crate::{Client, Error};

impl Client {
    /// The API keys the caller may see, oldest first: never the keys themselves.
    pub async fn keys(&self) -> Result<Vec<ApiKeyInfo>, Error> {
        self.call(Method::GET, "/v1/keys", None::<&()>).await
    }

    /// Revokes the key `id` (as [`Client::keys`] lists it): every request that sends it
    /// is refused from then on.
    pub async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        self.call_raw(
            Method::DELETE,
            &format!("/v1/keys/{}", enc(id)),
            None::<&()>,
        )
        .await?;
        Ok(())
    }
}
