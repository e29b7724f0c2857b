//! The engine's errors: each kind with a stable code on the wire ([`CoreError::code`]).

use warren_types::api::WireCode;

use crate::StoreError;

/// Errors of the engine, each with a stable code (see [`CoreError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no sandbox {0:?}; `warren ls` lists them (by id, name or owner/name)")]
    NotFound(String),
    /// Something in a sandbox, or of the tenant, that is not there (the message says
    /// what).
    #[error("{0}")]
    Missing(String),
    #[error("no template {0:?}; `warren template ls` lists them")]
    TemplateNotFound(String),
    /// A sandbox asked for a template that does not exist (or is another tenant's
    /// snapshot): a bad request, not a missing resource.
    #[error("unknown template {0:?}; `warren template ls` lists them")]
    UnknownTemplate(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("a sandbox named {0:?} already exists for this owner; pick another name, or get the existing one (`--get-or-create`, `\"get_or_create\": true`)")]
    NameTaken(String),
    #[error("{0}")]
    Invalid(String),
    /// The sandbox's backend failed (to make, pause, resume, stop or remove it), with
    /// its own error kept as the source.
    #[error("the sandbox's backend failed: {0}")]
    Backend(#[source] warren_runtime::Error),
    /// A host-side step of the engine's own (a filesystem tool, a task) failed; the
    /// message says which.
    #[error("{0}")]
    Host(String),
    #[error("the sandbox's agent: {0}")]
    Agent(#[from] warren_runtime::client::ClientError),
    #[error("{0}")]
    NoSpace(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Random(#[from] warren_types::random::RandomError),
    /// A tenant's quota would be passed.
    #[error("{0}")]
    Quota(String),
    /// What the caller sent is over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// The daemon does as much of this as it takes at once; retry later.
    #[error("{0}")]
    Busy(String),
    /// Allowed, but not to this caller (whatever its key).
    #[error("{0}")]
    Forbidden(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            return Self::NoSpace(
                "the daemon's data directory is full; free space there and retry".into(),
            );
        }
        Self::Store(e)
    }
}

impl From<warren_runtime::Error> for CoreError {
    /// A backend's failure: a full disk and a bad request keep their kinds, anything else
    /// is the backend's failing.
    fn from(e: warren_runtime::Error) -> Self {
        use warren_runtime::Error as E;
        match e {
            E::NoSpace { why, .. } => Self::NoSpace(why),
            E::Invalid { .. } | E::Image(_) | E::Unavailable { .. } => Self::Invalid(e.to_string()),
            E::Random(r) => Self::Random(r),
            e => Self::Backend(e),
        }
    }
}

impl CoreError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> WireCode {
        match self {
            Self::NotFound(_) | Self::TemplateNotFound(_) | Self::Missing(_) => WireCode::NotFound,
            Self::InvalidState(_) => WireCode::InvalidState,
            Self::UnknownTemplate(_) | Self::Invalid(_) => WireCode::InvalidRequest,
            Self::NameTaken(_) => WireCode::NameTaken,
            Self::Backend(_) => WireCode::BackendFailed,
            Self::Host(_) => WireCode::IoError,
            Self::Agent(_) => WireCode::AgentError,
            Self::NoSpace(_) => WireCode::NoSpace,
            Self::Store(_) => WireCode::StoreError,
            Self::Random(_) => WireCode::Unavailable,
            Self::Quota(_) => WireCode::QuotaExceeded,
            Self::TooLarge(_) => WireCode::PayloadTooLarge,
            Self::Busy(_) => WireCode::Busy,
            Self::Forbidden(_) => WireCode::PermissionDenied,
        }
    }

    /// An I/O failure of the engine's own doing `what`: a full disk is told apart as the
    /// backend's failures are.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        warren_runtime::Error::io(what, source).into()
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_failure_keeps_its_kind_and_its_source() {
        let e = CoreError::from(warren_runtime::Error::Setup(
            "runsc restore: bad image".into(),
        ));
        assert_eq!(e.code(), WireCode::BackendFailed);
        assert_eq!(
            e.to_string(),
            "the sandbox's backend failed: runsc restore: bad image"
        );
        let source = std::error::Error::source(&e).expect("the backend's error kept");
        assert!(source.is::<warren_runtime::Error>(), "{source:?}");

        let full = CoreError::io("write a layer", std::io::Error::from_raw_os_error(28));
        assert_eq!(full.code(), WireCode::NoSpace);
        let bad = CoreError::from(warren_runtime::Error::Invalid {
            what: "memory",
            why: "too small".into(),
        });
        assert_eq!(bad.code(), WireCode::InvalidRequest);
        assert_eq!(
            CoreError::Host("resize2fs failed".into()).code(),
            WireCode::IoError
        );
    }
}
