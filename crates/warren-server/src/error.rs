//! The one error type of every route.
//!
//! Clients program against `code`, so codes are stable and few; `message` is for people
//! and never carries more of the daemon's internals than a one-line reason. Everything a
//! handler can fail with (engine, agent, extractor) converts into [`Error`] here, so no
//! route decides a status on its own.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use warren_agent::client::ClientError;
use warren_core::CoreError;
use warren_types::api::{ApiError, WireCode};
use warren_types::proto::ErrorCode;

/// An HTTP error: status, stable code, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: StatusCode,
    pub code: WireCode,
    pub message: String,
}

impl Error {
    /// An error answered with its code's status.
    pub fn new(code: WireCode, message: impl Into<String>) -> Self {
        Self::with_status(status_of(code), code, message)
    }

    /// An error answered with a status of the caller's: a refused WebSocket upgrade keeps
    /// the upgrade's own (see [`WireCode::InvalidRequest`]).
    pub fn with_status(status: StatusCode, code: WireCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(WireCode::InvalidRequest, message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(WireCode::InvalidJson, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(WireCode::NotFound, message)
    }

    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(WireCode::InvalidState, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(WireCode::Unauthorized, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(WireCode::PayloadTooLarge, message)
    }

    /// The wire form, also used for error lines inside streams.
    pub fn body(&self) -> ApiError {
        ApiError {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

/// The status of `code` as axum's type. Every code's status is a valid one (a test
/// checks).
pub fn status_of(code: WireCode) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Only the first line: reasons from below may carry a helper's multi-line output.
fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        let message = one_line(&e.to_string());
        let code = e.code();
        match e {
            // The agent's own code says more than the engine's `agent_error`.
            CoreError::Agent(e) => e.into(),
            CoreError::Random(_) => {
                Self::new(code, "the host's random number generator failed; retry")
            }
            // The store's errors name files and SQL: none of that is the client's business.
            CoreError::Store(_) => {
                Self::new(code, "the daemon's store failed; see the daemon's log")
            }
            _ => Self::new(code, message),
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Agent { code, message } => agent_error(code, message),
            ClientError::Closed | ClientError::Connect(_) => Self::invalid_state(
                "the sandbox's agent is not reachable: the sandbox stopped or is stopping",
            ),
            ClientError::Protocol(_) => Self::new(
                WireCode::AgentError,
                "unexpected reply from the sandbox's agent",
            ),
            ClientError::Upload(_) => {
                Self::new(WireCode::IoError, "reading the data to upload failed")
            }
        }
    }
}

/// The agent's codes, as the API names them.
fn agent_error(code: ErrorCode, message: String) -> Error {
    let code = match code {
        ErrorCode::NotFound => WireCode::FileNotFound,
        ErrorCode::PermissionDenied => WireCode::PermissionDenied,
        ErrorCode::AlreadyExists => WireCode::AlreadyExists,
        ErrorCode::IsADirectory => WireCode::IsADirectory,
        ErrorCode::NotADirectory => WireCode::NotADirectory,
        ErrorCode::NotAFile => WireCode::NotAFile,
        ErrorCode::NotEmpty => WireCode::NotEmpty,
        ErrorCode::BadRequest => WireCode::InvalidRequest,
        ErrorCode::NoSpace => WireCode::NoSpace,
        ErrorCode::ProcessNotFound => WireCode::ProcessNotFound,
        ErrorCode::CommandNotFound => WireCode::CommandNotFound,
        ErrorCode::VersionMismatch => WireCode::AgentError,
        ErrorCode::Io => WireCode::IoError,
    };
    Error::new(code, one_line(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_valid_status() {
        for code in WireCode::ALL {
            assert!(StatusCode::from_u16(code.status()).is_ok(), "{code}");
            assert_eq!(status_of(code).as_u16(), code.status(), "{code}");
        }
    }

    #[test]
    fn engine_errors_keep_their_codes() {
        let cases = [
            (CoreError::NotFound("x".into()), 404, "not_found"),
            (CoreError::TemplateNotFound("x".into()), 404, "not_found"),
            (CoreError::InvalidState("x".into()), 409, "invalid_state"),
            (CoreError::NameTaken("x".into()), 409, "name_taken"),
            (CoreError::Invalid("x".into()), 400, "invalid_request"),
            (
                CoreError::UnknownTemplate("x".into()),
                400,
                "invalid_request",
            ),
            (CoreError::Host("first\nsecond".into()), 500, "io_error"),
            (CoreError::NoSpace("full".into()), 507, "no_space"),
            // ENOSPC, as the runtime meets it writing, through the engine to the wire.
            (
                CoreError::io("copy /var/lib/x", std::io::Error::from_raw_os_error(28)),
                507,
                "no_space",
            ),
            (CoreError::Quota("x".into()), 429, "quota_exceeded"),
        ];
        for (e, status, code) in cases {
            let core_code = e.code();
            let e = Error::from(e);
            assert_eq!(e.status.as_u16(), status);
            assert_eq!(e.code.as_str(), code);
            assert_eq!(core_code, e.code);
            assert!(!e.message.contains('\n'));
            assert!(!e.message.contains("/var/lib"), "{}", e.message);
            assert_eq!(
                serde_json::to_value(e.body()).unwrap(),
                serde_json::json!({"code": code, "message": e.message})
            );
        }
    }

    #[test]
    fn agent_errors_map_to_http() {
        let e = |code| {
            Error::from(ClientError::Agent {
                code,
                message: "m\nmore".into(),
            })
        };
        let cases = [
            (ErrorCode::NotFound, 404, "file_not_found"),
            (ErrorCode::PermissionDenied, 403, "permission_denied"),
            (ErrorCode::AlreadyExists, 409, "already_exists"),
            (ErrorCode::IsADirectory, 400, "is_a_directory"),
            (ErrorCode::NotADirectory, 400, "not_a_directory"),
            (ErrorCode::NotAFile, 400, "not_a_file"),
            (ErrorCode::NotEmpty, 400, "not_empty"),
            (ErrorCode::BadRequest, 400, "invalid_request"),
            (ErrorCode::NoSpace, 507, "no_space"),
            (ErrorCode::ProcessNotFound, 404, "process_not_found"),
            (ErrorCode::CommandNotFound, 400, "command_not_found"),
            (ErrorCode::VersionMismatch, 500, "agent_error"),
            (ErrorCode::Io, 500, "io_error"),
        ];
        for (agent, status, code) in cases {
            let e = e(agent);
            assert_eq!((e.status.as_u16(), e.code.as_str()), (status, code));
            assert_eq!(e.message, "m");
        }
        let closed = Error::from(ClientError::Closed);
        assert_eq!(
            (closed.status, closed.code),
            (StatusCode::CONFLICT, WireCode::InvalidState)
        );
    }
}
