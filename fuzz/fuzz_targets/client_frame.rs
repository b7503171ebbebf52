//! Fuzzes `herald_protocol::parse_client_frame`, the parser of every WebSocket text message a
//! client sends: any UTF-8 text gives a frame or a typed `ProtocolError`, never a panic.

#![no_main]

use herald_protocol::{Limits, parse_client_frame};
use libfuzzer_sys::fuzz_target;

/// The default limits (`max_payload_bytes` 102400).
const DEFAULTS: &Limits = &Limits::new(102_400);
/// Small limits, which exercise the size, depth and batch checks on the same input.
const SMALL: &Limits = &Limits {
    max_frame_bytes: 16,
    max_json_depth: 2,
    max_batch_topics: 1,
    max_publish_batch: 1,
};

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the parser only valid UTF-8 (anything else closes 1007).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_client_frame(text, DEFAULTS);
        let _ = parse_client_frame(text, SMALL);
    }
});
