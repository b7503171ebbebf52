//! Fuzzes `herald_protocol::parse_client_frame`, the parser of every WebSocket text message a
//! client sends: any UTF-8 text gives a frame or a typed `ProtocolError`, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The default `max_payload_bytes`.
const MAX_PAYLOAD_BYTES: usize = 102_400;

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the parser only valid UTF-8 (anything else closes 1007).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herald_protocol::parse_client_frame(text, MAX_PAYLOAD_BYTES);
        // A small limit exercises the size check on the same input.
        let _ = herald_protocol::parse_client_frame(text, 16);
    }
});
