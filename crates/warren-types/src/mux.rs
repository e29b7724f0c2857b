//! The binary form of a streamed exec or attach (`?stream=binary`).
//!
//! NDJSON carries output as base64 inside JSON strings: a third more bytes, and both
//! ends encode and decode every chunk. The binary form carries the bytes as they are, in
//! frames laid out as docker's multiplexed attach stream: an 8-byte header (the kind,
//! three zero bytes, the payload's length as a big-endian `u32`) and the payload. Kind 1
//! is stdout, 2 stderr, both raw; kind 3 is an [`ExecEvent`](crate::api::ExecEvent) as
//! JSON: `started` first (exec only), then `exit` or `error` last. A docker
//! demultiplexer reads the output frames unchanged.

/// The content type of a binary stream.
pub const CONTENT_TYPE: &str = "application/vnd.warren.multiplexed-stream";

/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 8;

/// The largest payload a reader takes; a frame announcing more is a broken stream.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Stdout = 1,
    Stderr = 2,
    /// An `ExecEvent` as JSON.
    Event = 3,
}

/// Why a frame's header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("a frame of unknown kind {0}")]
    Kind(u8),
    #[error("a frame's header has non-zero padding")]
    Padding,
    #[error("a frame of {0} bytes, more than {MAX_PAYLOAD}")]
    TooLong(usize),
}

/// The header of a frame of `kind` carrying `len` bytes (at most [`MAX_PAYLOAD`]).
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_PAYLOAD);
    let n = (len as u32).to_be_bytes();
    [kind as u8, 0, 0, 0, n[0], n[1], n[2], n[3]]
}

/// A frame of `kind` with `payload`, header first.
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&header(kind, payload.len()));
    v.extend_from_slice(payload);
    v
}

/// The kind and payload length a header announces.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(Kind, usize), HeaderError> {
    let kind = match h[0] {
        1 => Kind::Stdout,
        2 => Kind::Stderr,
        3 => Kind::Event,
        k => return Err(HeaderError::Kind(k)),
    };
    if h[1..4] != [0, 0, 0] {
        return Err(HeaderError::Padding);
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(HeaderError::TooLong(len));
    }
    Ok((kind, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_written() {
        for (kind, payload) in [
            (Kind::Stdout, &b"hello"[..]),
            (Kind::Stderr, &[][..]),
            (Kind::Event, &br#"{"type":"started","pid":7}"#[..]),
        ] {
            let f = frame(kind, payload);
            let h: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
            assert_eq!(parse_header(&h), Ok((kind, payload.len())));
            assert_eq!(&f[HEADER_LEN..], payload);
        }
        // Docker's layout: stdout is 1, the length big-endian in the last four bytes.
        assert_eq!(header(Kind::Stdout, 0x0102), [1, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn a_broken_header_is_refused() {
        assert_eq!(parse_header(&[0; 8]), Err(HeaderError::Kind(0)));
        assert_eq!(
            parse_header(&[9, 0, 0, 0, 0, 0, 0, 1]),
            Err(HeaderError::Kind(9))
        );
        assert_eq!(
            parse_header(&[1, 0, 1, 0, 0, 0, 0, 1]),
            Err(HeaderError::Padding)
        );
        assert_eq!(
            parse_header(&[1, 0, 0, 0, 0xff, 0, 0, 0]),
            Err(HeaderError::TooLong(0xff00_0000))
        );
    }
}
