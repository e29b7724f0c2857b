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
use warren_types::api::ApiError;
use warren_types::proto::ErrorCode;

/// An HTTP error: status, stable code, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_state", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// The wire form, also used for error lines inside streams.
    pub fn body(&self) -> ApiError {
        ApiError {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
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
        match e {
            CoreError::NotFound(_) | CoreError::TemplateNotFound(_) => Self::not_found(message),
            CoreError::InvalidState(_) => Self::invalid_state(message),
            CoreError::NameTaken(_) => Self::new(StatusCode::CONFLICT, "name_taken", message),
            CoreError::Invalid(_) | CoreError::UnknownTemplate(_) => Self::invalid(message),
            CoreError::Backend(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "backend_failed", message)
            }
            CoreError::Agent(e) => e.into(),
            CoreError::NoSpace(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message)
            }
            // The store's errors name files and SQL: none of that is the client's business.
            CoreError::Quota(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
            }
            CoreError::Random(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the host's random number generator failed; retry",
            ),
            CoreError::Store(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "the daemon's store failed; see the daemon's log",
            ),
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
                StatusCode::INTERNAL_SERVER_ERROR,
                "agent_error",
                "unexpected reply from the sandbox's agent",
            ),
            ClientError::Upload(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "io_error",
                "reading the data to upload failed",
            ),
        }
    }
}

fn agent_error(code: ErrorCode, message: String) -> Error {
    let message = one_line(&message);
    let (status, code) = match code {
        ErrorCode::NotFound => (StatusCode::NOT_FOUND, "file_not_found"),
        ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        ErrorCode::IsADirectory => (StatusCode::BAD_REQUEST, "is_a_directory"),
        ErrorCode::NotADirectory => (StatusCode::BAD_REQUEST, "not_a_directory"),
        ErrorCode::NotAFile => (StatusCode::BAD_REQUEST, "not_a_file"),
        ErrorCode::NotEmpty => (StatusCode::BAD_REQUEST, "not_empty"),
        ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
        ErrorCode::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
        ErrorCode::ProcessNotFound => (StatusCode::NOT_FOUND, "process_not_found"),
        ErrorCode::CommandNotFound => (StatusCode::BAD_REQUEST, "command_not_found"),
        ErrorCode::VersionMismatch => (StatusCode::INTERNAL_SERVER_ERROR, "agent_error"),
        ErrorCode::Io => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
    };
    Error::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_codes() {
        let cases = [
            (CoreError::NotFound("x".into()), 404, "not_found"),
            (CoreError::InvalidState("x".into()), 409, "invalid_state"),
            (CoreError::NameTaken("x".into()), 409, "name_taken"),
            (CoreError::Invalid("x".into()), 400, "invalid_request"),
            (
                CoreError::UnknownTemplate("x".into()),
                400,
                "invalid_request",
            ),
            (
                CoreError::Backend("first\nsecond".into()),
                500,
                "backend_failed",
            ),
            (
                CoreError::backend("copy /var/lib/x: No space left on device (os error 28)"),
                507,
                "no_space",
            ),
        ];
        for (e, status, code) in cases {
            let core_code = e.code();
            let e = Error::from(e);
            assert_eq!(e.status.as_u16(), status);
            assert_eq!(e.code, code);
            assert!(!e.message.contains('\n'));
            assert!(!e.message.contains("/var/lib"), "{}", e.message);
            if code != "backend_failed" {
                assert_eq!(core_code.as_str(), code);
            }
        }
    }

    #[test]
    fn agent_errors_map_to_http() {
        let e = |code| {
            Error::from(ClientError::Agent {
                code,
                message: "m".into(),
            })
        };
        assert_eq!(e(ErrorCode::NotFound).code, "file_not_found");
        assert_eq!(e(ErrorCode::NotFound).status, StatusCode::NOT_FOUND);
        assert_eq!(e(ErrorCode::PermissionDenied).status, StatusCode::FORBIDDEN);
        assert_eq!(e(ErrorCode::AlreadyExists).status, StatusCode::CONFLICT);
        assert_eq!(e(ErrorCode::NotEmpty).status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e(ErrorCode::NoSpace).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(e(ErrorCode::ProcessNotFound).code, "process_not_found");
        assert_eq!(e(ErrorCode::CommandNotFound).code, "command_not_found");
        let closed = Error::from(ClientError::Closed);
        assert_eq!(
            (closed.status, closed.code),
            (StatusCode::CONFLICT, "invalid_state")
        );
    }
}
