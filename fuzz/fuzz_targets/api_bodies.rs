//! Fuzzes `herald_protocol::parse_body` for every HTTP API request body: any bytes give a body
//! or a `bad_request`, never a panic.

#![no_main]

use herald_protocol::{
    BroadcastRequest, ConnectionSendRequest, ErrorCode, EventRequest, PublishBatchRequest,
    PublishRequest, UserSendRequest, parse_body,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let errors = [
        parse_body::<PublishRequest>(data).err(),
        parse_body::<PublishBatchRequest>(data).err(),
        parse_body::<BroadcastRequest>(data).err(),
        parse_body::<EventRequest>(data).err(),
        parse_body::<UserSendRequest>(data).err(),
        parse_body::<ConnectionSendRequest>(data).err(),
    ];
    for error in errors.into_iter().flatten() {
        assert_eq!(error.code, ErrorCode::BadRequest, "{error:?}");
    }
});
