//! The Connect protocol, as much of it as E2B's SDKs use: the JSON codec, no
//! compression, unary and server-streaming calls over HTTP/1.1 or HTTP/2.
//!
//! - A **unary** call is `POST /pkg.Service/Method` with `Content-Type:
//!   application/json` and the request message as the body. Success is `200` with the
//!   response message; failure is an HTTP status chosen by the error code and a body
//!   `{"code":"not_found","message":"..."}`.
//! - A **streaming** call says `application/connect+json`; both bodies are then
//!   sequences of envelopes `[flags u8][len u32 BE][json]`. The response is always
//!   `200`: messages with flags 0, then one end-of-stream envelope (flags 2) holding
//!   `{}` or `{"error":{...}}`. A server stream that never sends its end envelope
//!   looks truncated to the client, so every path here ends with one.
//!
//! Messages follow the protobuf JSON mapping: camelCase names, 64-bit integers as
//! strings, bytes as base64, enums by name; clients may also send numbers for enums
//! and leave out defaults, and newer SDKs add fields this server does not know, which
//! are ignored as the mapping requires.

use axum::body::Body as HttpBody;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use warren_types::api::WireCode;

use crate::error::Error;

/// Largest request message; E2B's are small (file contents go over `/files`).
pub const MAX_MESSAGE: usize = 16 << 20;

const FLAG_END_STREAM: u8 = 0b10;
const FLAG_COMPRESSED: u8 = 0b01;

/// Connect's error codes (the gRPC set, by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
    DeadlineExceeded,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// The HTTP status of a unary error with this code (the Connect spec's table).
    pub fn status(self) -> StatusCode {
        match self {
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidArgument | Self::FailedPrecondition => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// An error as a Connect client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

/// The native API's errors carry stable codes; each has one Connect equivalent.
impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        Self::new(connect_code(e.code), e.message)
    }
}

fn connect_code(code: WireCode) -> Code {
    use WireCode as W;
    match code {
        W::NotFound | W::FileNotFound | W::ProcessNotFound => Code::NotFound,
        W::InvalidRequest
        | W::InvalidJson
        | W::IsADirectory
        | W::NotADirectory
        | W::NotAFile
        | W::NotEmpty
        | W::CommandNotFound => Code::InvalidArgument,
        W::AlreadyExists | W::NameTaken => Code::AlreadyExists,
        W::PermissionDenied => Code::PermissionDenied,
        W::Unauthorized => Code::Unauthenticated,
        W::PayloadTooLarge | W::NoSpace => Code::ResourceExhausted,
        // A paused or stopping sandbox cannot run anything: E2B's proxy calls that
        // unavailable, and the SDK then asks whether the sandbox still runs.
        W::InvalidState | W::ShuttingDown => Code::Unavailable,
        W::ReadOnly
        | W::MethodNotAllowed
        | W::ShareRevoked
        | W::QuotaExceeded
        | W::BackendFailed
        | W::StoreError
        | W::AgentError
        | W::IoError
        | W::Busy
        | W::Unavailable => Code::Internal,
    }
}

impl From<warren_agent::client::ClientError> for RpcError {
    fn from(e: warren_agent::client::ClientError) -> Self {
        Error::from(e).into()
    }
}

impl From<warren_core::CoreError> for RpcError {
    fn from(e: warren_core::CoreError) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.body())).into_response()
    }
}

/// A decoded request message, and how the call was made.
#[derive(Debug)]
pub struct Rpc<T> {
    pub msg: T,
    pub streaming: bool,
    /// `Connect-Timeout-Ms`: the client's deadline for the whole call.
    pub timeout_ms: Option<u64>,
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Splits the first envelope off a streaming request body.
fn first_envelope(body: &[u8]) -> Result<&[u8], RpcError> {
    let Some(head) = body.get(..5) else {
        return Err(RpcError::invalid("the request has no message envelope"));
    };
    if head[0] & FLAG_COMPRESSED != 0 {
        return Err(RpcError::new(
            Code::Unimplemented,
            "compressed messages are not supported; send them uncompressed",
        ));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    body.get(5..5 + len)
        .ok_or_else(|| RpcError::invalid("the request envelope is truncated"))
}

/// Parses a message; an empty one is every field's default, as in protobuf.
pub fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, RpcError> {
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        json
    };
    serde_json::from_slice(json).map_err(|e| RpcError::invalid(format!("request message: {e}")))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Rpc<T> {
    type Rejection = RpcError;

    async fn from_request(req: Request, state: &S) -> Result<Self, RpcError> {
        let ct = content_type(req.headers());
        let streaming = match ct.as_str() {
            "application/json" => false,
            "application/connect+json" => true,
            "application/proto" | "application/connect+proto" => {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    "only the JSON codec is supported",
                ))
            }
            other => {
                return Err(RpcError::invalid(format!(
                    "content type {other:?}: send application/json or application/connect+json"
                )))
            }
        };
        if let Some(enc) = req.headers().get("content-encoding") {
            if enc.as_bytes() != b"identity" {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    "compressed requests are not supported",
                ));
            }
        }
        let timeout_ms = req
            .headers()
            .get("connect-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RpcError::new(Code::ResourceExhausted, "the request message is too large")
            } else {
                RpcError::invalid("cannot read the request body")
            }
        })?;
        let msg = if streaming {
            decode(first_envelope(&body)?)?
        } else {
            decode(&body)?
        };
        Ok(Self {
            msg,
            streaming,
            timeout_ms,
        })
    }
}

/// A unary success.
pub fn ok<T: Serialize>(msg: &T) -> Response {
    axum::Json(msg).into_response()
}

/// One envelope.
pub fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + json.len());
    b.put_u8(flags);
    b.put_u32(json.len() as u32);
    b.put_slice(json);
    b.freeze()
}

/// A message envelope of a server stream.
pub fn message<T: Serialize>(msg: &T) -> Bytes {
    envelope(0, &serde_json::to_vec(msg).unwrap_or_default())
}

/// The end-of-stream envelope, with the call's error if it failed.
pub fn end(error: Option<&RpcError>) -> Bytes {
    let body = match error {
        Some(e) => serde_json::json!({"error": e.body()}),
        None => serde_json::json!({}),
    };
    envelope(FLAG_END_STREAM, body.to_string().as_bytes())
}

/// A server-streaming response fed by `rx`; the feeder sends the end envelope last, or
/// [`drop_connection`] instead.
pub fn stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = HttpBody::from_stream(ReceiverStream::new(rx).map(|b| {
        if b.is_empty() {
            Err(std::io::Error::other("the sandbox went away"))
        } else {
            Ok(b)
        }
    }));
    ([(header::CONTENT_TYPE, "application/connect+json")], body).into_response()
}

/// Sent in place of the end envelope (no envelope is empty), it ends the stream as the
/// death of E2B's microVM does: the connection is dropped mid-stream, and the SDKs, which
/// then ask the sandbox's health, tell the caller that the sandbox was killed or reached
/// its end of life.
pub fn drop_connection() -> Bytes {
    Bytes::new()
}

/// A server stream that failed before its first message.
pub fn stream_error(e: &RpcError) -> Response {
    (
        [(header::CONTENT_TYPE, "application/connect+json")],
        end(Some(e)),
    )
        .into_response()
}

/// An answer for either kind of call: a failed stream still answers `200`.
pub fn failure(streaming: bool, e: RpcError) -> Response {
    if streaming {
        stream_error(&e)
    } else {
        e.into_response()
    }
}

/// Bytes fields are base64 in protobuf JSON; decoders accept both alphabets, with or
/// without padding.
pub fn decode_bytes(s: &str) -> Result<Vec<u8>, RpcError> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    B64.decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| RpcError::invalid("a bytes field is not base64"))
}

pub fn encode_bytes(b: &[u8]) -> String {
    B64.encode(b)
}

/// Protobuf JSON lets 32-bit integers be numbers or strings.
pub mod lenient_u32 {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(u32),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<Num>::deserialize(d)? {
            None => Ok(None),
            Some(Num::N(n)) => Ok(Some(n)),
            Some(Num::S(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_framed() {
        let e = envelope(2, b"{}");
        assert_eq!(&e[..], &[2, 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(first_envelope(&e).unwrap(), b"{}");
        assert!(first_envelope(&e[..6]).is_err());
        assert!(first_envelope(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn end_carries_the_error() {
        let e = end(Some(&RpcError::new(Code::NotFound, "gone")));
        let json: serde_json::Value = serde_json::from_slice(&e[5..]).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
        assert_eq!(end(None)[5..], b"{}"[..]);
    }

    #[test]
    fn native_codes_map_to_connect_codes() {
        let code = |c| RpcError::from(Error::new(c, "m")).code;
        assert_eq!(code(WireCode::FileNotFound), Code::NotFound);
        assert_eq!(code(WireCode::AlreadyExists), Code::AlreadyExists);
        assert_eq!(code(WireCode::InvalidState), Code::Unavailable);
        assert_eq!(code(WireCode::ShuttingDown), Code::Unavailable);
        assert_eq!(code(WireCode::NoSpace), Code::ResourceExhausted);
        assert_eq!(code(WireCode::IoError), Code::Internal);
        assert_eq!(code(WireCode::Busy), Code::Internal);
        assert_eq!(Code::NotFound.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn bytes_accept_either_alphabet() {
        assert_eq!(decode_bytes("aGk=").unwrap(), b"hi");
        assert_eq!(decode_bytes("aGk").unwrap(), b"hi");
        assert!(decode_bytes("!!").is_err());
    }
}
