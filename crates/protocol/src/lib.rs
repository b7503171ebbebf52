//! Herald's wire contract in types: client and server WebSocket frames, HTTP API bodies,
//! error codes and close codes, as fixed by docs/protocol.md.
//!
//! - [`parse_client_frame`] decodes a client text frame into a [`ClientFrame`], or a
//!   [`ProtocolError`] that carries what the `error` reply must echo. It never panics.
//! - [`ServerMessage`] is every frame the server sends; [`ServerMessage::encode`] writes it
//!   once and [`encode_batch`] joins encoded frames into a `batch` without re-parsing.
//!   [`encode_message`] writes the hottest frame, a publication's `message`, directly (the
//!   same text), and [`encode_message_head`] with [`complete_message`] in two steps for a
//!   cluster's sequencer.
//! - The HTTP API bodies ([`PublishRequest`], [`EventRequest`], ...) are decoded with
//!   [`parse_body`].
//! - [`Limits`] holds the bounds an operator sets on nesting and batch sizes.
//! - [`Topic`] and [`validate_id`] hold the limits on names that docs/protocol.md leaves open;
//!   they are Herald extensions, documented on each item.
//!
//! Payloads (`data` of publishes, pushes and events) stay raw JSON text
//! ([`serde_json::value::RawValue`]) from the request to the socket, so they are relayed
//! verbatim: number spellings, string escapes and key order are preserved.
//!
//! Architecture invariant: this crate is pure data. It has no tokio dependency, does no I/O
//! and reads no clock; the server and any Rust client can share it.

mod api;
mod client;
mod close;
mod error;
mod event;
mod json;
mod limits;
mod message_frame;
mod request_kind;
mod server;
#[cfg(test)]
mod testing;
mod topic;
mod validate;

pub use crate::{
    api::{
        ApiErrorBody, BroadcastRequest, ConnectionSendRequest, DeliveredResponse, EventRequest,
        EventResponse, PublishBatchRequest, PublishBatchResponse, PublishBatchResult,
        PublishRequest, PublishResponse, UserSendRequest, parse_body,
    },
    client::{ClientFrame, ClientRequest, StreamPosition, parse_client_frame},
    close::CloseCode,
    error::{ErrorCode, ErrorDetail, ProtocolError},
    event::{EventName, UnknownEventError},
    limits::{
        DEFAULT_MAX_BATCH_TOPICS, DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_PUBLISH_BATCH, Limits,
        MAX_JSON_DEPTH_CEILING,
    },
    message_frame::{complete_message, encode_message, encode_message_head},
    request_kind::RequestKind,
    server::{
        ConnectedData, PushScope, RefreshResult, ServerMessage, SubscribeResult, encode_batch,
    },
    topic::Topic,
    validate::{MAX_ACK_IDS, MAX_ID_BYTES, MAX_TOPIC_BYTES, ValidationError, validate_id},
};
