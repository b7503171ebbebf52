//! Fuzzes `herald_protocol::parse_body` for every HTTP API request body: any bytes give a body
//! or a `bad_request`, never a panic.

#![no_main]

use herald_protocol::{
    BroadcastRequest, ConnectionSendRequest, ErrorCode, EventRequest, Limits, PublishBatchRequest,
    PublishRequest, UserSendRequest, parse_body,
};
use libfuzzer_sys::fuzz_target;

/// The default limits (bodies are bounded by size before they are decoded).
const LIMITS: &Limits = &Limits::new(usize::MAX);

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = parse_body::<PublishBatchRequest>(data, LIMITS) {
        if let Ok(items) = batch.items(LIMITS) {
            for item in items {
                if let Err(error) = item {
                    assert_eq!(error.code, ErrorCode::BadRequest, "{error:?}");
                }
            }
        }
    }
    let errors = [
        parse_body::<PublishRequest>(data, LIMITS).err(),
        parse_body::<PublishBatchRequest>(data, LIMITS).err(),
        parse_body::<BroadcastRequest>(data, LIMITS).err(),
        parse_body::<EventRequest>(data, LIMITS).err(),
        parse_body::<UserSendRequest>(data, LIMITS).err(),
        parse_body::<ConnectionSendRequest>(data, LIMITS).err(),
    ];
    for error in errors.into_iter().flatten() {
        assert_eq!(error.code, ErrorCode::BadRequest, "{error:?}");
    }
});
