//! Fuzzes token extraction from the in-band `auth` frame (`parse_client_frame`), the one token
//! path in a public crate: the handshake's own extraction (`Authorization: Bearer` and
//! `?token=`, in `herald-service`'s `respond.rs`) lives in the binary crate, which has no
//! library target to fuzz. Any token string is either extracted exactly or refused with a typed
//! error, never a panic.

#![no_main]

use herald_protocol::{ClientRequest, Limits, parse_client_frame};
use libfuzzer_sys::fuzz_target;

/// No size limit; the default depth and batch limits.
const LIMITS: &Limits = &Limits::new(usize::MAX);

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let frame = serde_json::json!({"type": "auth", "data": {"token": token}}).to_string();
    if let Ok(parsed) = parse_client_frame(&frame, LIMITS) {
        match parsed.request {
            ClientRequest::Auth { token: extracted } => assert_eq!(extracted, token),
            other => panic!("an auth frame parsed as {other:?}"),
        }
    }
    // The bytes as a whole frame too, which reaches the token field from any side.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_client_frame(text, LIMITS);
    }
});
