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
    #[error("the sandbox could not be made: {0}")]
    Backend(String),
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
            e => Self::Backend(e.to_string()),
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
