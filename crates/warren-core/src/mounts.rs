//! Host directories mounted into a sandbox: who may ask, and what a request may name.
//!
//! A host path is the host's business: only the host's root, on the daemon's unix socket,
//! may name one. An API key, an operator's included, is refused: a key is a string that
//! travels, and its holder need not be anyone on this host. Everything here is checked
//! before a sandbox is recorded, so a refused request leaves no row and no event.

use warren_types::spec::HostMount;

use super::*;

/// Most host directories one sandbox mounts.
pub const MAX_MOUNTS: usize = 32;

impl Manager {
    /// The request's host mounts, their sources resolved on the host (see
    /// [`warren_runtime::mounts`]), or why they are refused.
    pub(crate) fn check_mounts(
        &self,
        who: &Caller,
        kind: Isolation,
        info: &warren_types::api::BackendInfo,
        req: &CreateSandbox,
    ) -> Result<Vec<HostMount>> {
        if req.mounts.is_empty() {
            return Ok(Vec::new());
        }
        if !who.host_root || who.only_sandbox.is_some() {
            return Err(CoreError::Forbidden(
                "host directory mounts are allowed only on the daemon's unix socket (the \
                 host's root, `warren` on the daemon's host); no API key grants them, an \
                 operator's neither"
                    .into(),
            ));
        }
        if !info.capabilities.host_mounts {
            return Err(CoreError::Invalid(format!(
                "the {kind} backend mounts no host directories; leave mounts out or pick \
                 another isolation (`GET /v1/backends`)"
            )));
        }
        if req.mounts.len() > MAX_MOUNTS {
            return Err(CoreError::Invalid(format!(
                "{} host directory mounts: at most {MAX_MOUNTS}",
                req.mounts.len()
            )));
        }
        let home: &[&str] = if req.home_volume.unwrap_or(true) {
            &["/home/user"]
        } else {
            &[]
        };
        let own = [
            self.config.paths.data.as_path(),
            self.config.paths.run.as_path(),
        ];
        Ok(warren_runtime::mounts::resolve_all(
            &req.mounts,
            home,
            &own,
        )?)
    }
}
