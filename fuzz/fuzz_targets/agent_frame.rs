//! The agent protocol decoder on arbitrary bytes: it must never panic, and every frame
//! it accepts must re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_types::proto::{Frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = Frame::decode(rest) {
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(&again[..], &rest[..used]);
        let _ = frame.parse::<Request>();
        let _ = frame.parse::<Response>();
        rest = &rest[used..];
    }
});
