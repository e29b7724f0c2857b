//! Why a call to the daemon failed.

use warren_types::api::WireCode;

/// Why a call to the daemon failed.
///
/// [`Error::Api`] is the daemon's own refusal and keeps its stable machine code
/// (docs/api.md lists them); the other variants are about reaching the daemon at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon answered with an error: its wire code (`not_found`, `invalid_state`,
    /// ...) and its message. The code stays a string, so that a code of a daemon newer
    /// than this client still reaches the caller; [`Error::wire_code`] reads the known
    /// ones.
    #[error("{message} ({code})")]
    Api {
        /// The stable machine code.
        code: String,
        /// What went wrong, for people.
        message: String,
    },
    /// The daemon could not be reached (no socket, nothing listening on the port).
    #[error("cannot connect: {reason}; is `warren serve` running? ({target})")]
    Connect {
        /// The socket or host tried.
        target: String,
        /// Why the connection failed.
        reason: String,
    },
    /// The connection broke during the call.
    #[error("the connection to the daemon failed: {0}")]
    Connection(String),
    /// The daemon answered something this client does not understand.
    #[error("the daemon's answer was not understood: {0}")]
    Protocol(String),
    /// The request could not be made as asked (a bad address, a header that cannot be
    /// sent).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The daemon's code, when the daemon refused the call.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The daemon's code as a [`WireCode`], when it is one this client knows.
    pub fn wire_code(&self) -> Option<WireCode> {
        let code = self.code()?;
        WireCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// Whether the daemon refused the call with `code`.
    pub fn is(&self, code: WireCode) -> bool {
        self.code() == Some(code.as_str())
    }

    /// Whether what the call named (a sandbox, a file, a process, a session) is not
    /// there.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.wire_code(),
            Some(WireCode::NotFound | WireCode::FileNotFound | WireCode::ProcessNotFound)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_back() {
        let e = Error::Api {
            code: "file_not_found".into(),
            message: "no file /x".into(),
        };
        assert_eq!(e.to_string(), "no file /x (file_not_found)");
        assert_eq!(e.wire_code(), Some(WireCode::FileNotFound));
        assert!(e.is_not_found());
        assert!(e.is(WireCode::FileNotFound));
        let newer = Error::Api {
            code: "brand_new".into(),
            message: "m".into(),
        };
        assert_eq!(newer.code(), Some("brand_new"));
        assert_eq!(newer.wire_code(), None);
        assert_eq!(Error::Connection("x".into()).code(), None);
    }
}
