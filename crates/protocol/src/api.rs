//! Bodies of the HTTP API (server to server), per docs/protocol.md's route table, and [`parse_body`].
//!
//! Requests are decoded with [`parse_body`], which turns every decoding failure into a
//! `bad_request` carrying serde's message. Topics and identifiers are validated while decoding.
//! Every type also serializes, so tests and Rust backends can build the bodies.

use herald_utils::Priority;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    error::{ErrorCode, ErrorDetail, ProtocolError},
    event::EventName,
    json::{exceeds_depth, push_json_string, push_json_u64},
    limits::Limits,
    topic::Topic,
    validate::validate_id,
};

/// Decodes an HTTP request body as `T`.
///
/// Every failure is a `bad_request` (never a panic): invalid JSON or UTF-8, a wrong shape,
/// an invalid topic or identifier, or nesting deeper than [`Limits::max_json_depth`]. The body
/// size limit (`HERALD_MAX_HTTP_BODY_BYTES`) is the HTTP layer's to enforce before this, and
/// [`PublishBatchRequest::items`] applies the batch limit.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8], limits: &Limits) -> Result<T, ProtocolError> {
    let max_depth = limits.max_json_depth;
    if exceeds_depth(bytes, max_depth) {
        return Err(ProtocolError::bad_request(format!(
            "body nests arrays and objects deeper than {max_depth} levels"
        )));
    }
    serde_json::from_slice(bytes).map_err(|err| ProtocolError::bad_request(err.to_string()))
}

/// `POST /api/publish`: publish to a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishRequest {
    /// The topic.
    pub topic: Topic,
    /// The payload, relayed verbatim (any JSON value, `null` included; required).
    pub data: Box<RawValue>,
    /// The priority of the resulting messages (default `normal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The dedupe id.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_id"
    )]
    pub id: Option<String>,
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishResponse {
    /// The topic.
    pub topic: Topic,
    /// The publication's offset (the original one when deduplicated).
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: String,
    /// Whether the `id` was seen within the dedupe window, so nothing was delivered.
    pub deduplicated: bool,
}

impl PublishResponse {
    /// The answer as JSON text, written directly: the same text as serde writes (the property
    /// tests pin it), without serde's map machinery, since every HTTP publish answers one.
    pub fn encode(&self) -> String {
        let topic = self.topic.as_str();
        // The keys, quotes, 20 digits and `false`.
        let mut text = String::with_capacity(64 + topic.len() + self.epoch.len());
        text.push_str(r#"{"topic":"#);
        push_json_string(&mut text, topic);
        text.push_str(r#","offset":"#);
        push_json_u64(&mut text, self.offset);
        text.push_str(r#","epoch":"#);
        push_json_string(&mut text, &self.epoch);
        text.push_str(if self.deduplicated {
            r#","deduplicated":true}"#
        } else {
            r#","deduplicated":false}"#
        });
        text
    }
}

/// `POST /api/publish/batch`: several publishes that succeed or fail one by one.
///
/// Only the outer shape is checked when the body is decoded; [`PublishBatchRequest::items`]
/// decodes each item separately.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishBatchRequest {
    /// The publish bodies, still raw.
    pub messages: Vec<Box<RawValue>>,
}

impl PublishBatchRequest {
    /// Decodes each item as a [`PublishRequest`], in order; a bad item is an error of its
    /// own, with a message naming its index.
    ///
    /// A batch of more than [`Limits::max_publish_batch`] items is refused as a whole
    /// (`bad_request`), before any item is decoded.
    pub fn items<'a>(
        &'a self,
        limits: &'a Limits,
    ) -> Result<impl Iterator<Item = Result<PublishRequest, ProtocolError>> + 'a, ProtocolError>
    {
        let max = limits.max_publish_batch;
        if self.messages.len() > max {
            return Err(ProtocolError::bad_request(format!(
                "messages must hold at most {max} items (got {})",
                self.messages.len()
            )));
        }
        Ok(self.messages.iter().enumerate().map(move |(i, raw)| {
            parse_body(raw.get().as_bytes(), limits).map_err(|mut err: ProtocolError| {
                err.message = format!("messages[{i}]: {}", err.message);
                err
            })
        }))
    }
}

/// The answer to a batch publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishBatchResponse {
    /// One result per item, in order.
    pub results: Vec<PublishBatchResult>,
}

/// The result of one item of a batch publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PublishBatchResult {
    /// The item was published (or deduplicated).
    Published(PublishResponse),
    /// The item failed: `{"error": {code, message}}`.
    Failed(ApiErrorBody),
}

/// `POST /api/broadcast`: push to every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastRequest {
    /// The payload, relayed verbatim.
    pub data: Box<RawValue>,
    /// The push's priority (default `normal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Connection ids not to send to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// `POST /api/users/{userId}/events`: send a critical event to a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRequest {
    /// The event name; an unknown one is a `bad_request` listing the known names.
    pub event: EventName,
    /// The payload, relayed verbatim; `null` when absent.
    #[serde(default = "raw_null")]
    pub data: Box<RawValue>,
    /// Deliver only to this thread's connections (and those bound to no thread).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_thread_id"
    )]
    pub thread_id: Option<String>,
    /// The agent run the event belongs to.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_run_id"
    )]
    pub run_id: Option<String>,
    /// The event's stable id; the server makes one when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_id"
    )]
    pub id: Option<String>,
}

/// The answer to an event send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResponse {
    /// The event's id.
    pub id: String,
    /// How many connections it was queued to.
    pub delivered: u64,
    /// How many of the user's events await an `ack`, this one included.
    pub pending: u64,
}

/// `POST /api/users/{userId}/send`: push to a user's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSendRequest {
    /// The payload, relayed verbatim.
    pub data: Box<RawValue>,
    /// Deliver only to this thread's connections (and those bound to no thread).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_thread_id"
    )]
    pub thread_id: Option<String>,
    /// The push's priority (default `normal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// `POST /api/connections/{id}/send`: push to one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSendRequest {
    /// The payload, relayed verbatim.
    pub data: Box<RawValue>,
    /// The push's priority (default `normal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// The answer to a broadcast or a send: `{delivered}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredResponse {
    /// How many connections the frame was queued to.
    pub delivered: u64,
}

/// An HTTP error body: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong. Leave `retry_after` empty: HTTP carries it in `Retry-After`.
    pub error: ErrorDetail,
}

impl ApiErrorBody {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail::new(code, message),
        }
    }

    /// The HTTP status for this body.
    pub const fn http_status(&self) -> u16 {
        self.error.code.http_status()
    }
}

impl ProtocolError {
    /// The HTTP error body answering a refused request body.
    pub fn to_api_body(&self) -> ApiErrorBody {
        ApiErrorBody {
            error: self.detail(),
        }
    }
}

/// The default `data` of an event: JSON `null`.
fn raw_null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// Decodes an optional `id` and validates it.
fn optional_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    validated_id(deserializer, "id")
}

/// Decodes an optional `threadId` and validates it.
fn optional_thread_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    validated_id(deserializer, "threadId")
}

/// Decodes an optional `runId` and validates it.
fn optional_run_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    validated_id(deserializer, "runId")
}

/// Decodes an optional identifier named `field` and validates it.
fn validated_id<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &str,
) -> Result<Option<String>, D::Error> {
    let id = Option::<String>::deserialize(deserializer)?;
    if let Some(id) = &id {
        validate_id(id).map_err(|err| serde::de::Error::custom(format_args!("{field} {err}")))?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default limits, with frames of any size (bodies are bounded before decoding).
    const L: &Limits = &Limits::new(usize::MAX);

    #[test]
    fn a_batch_over_the_limit_is_refused_whole() {
        let limits = Limits {
            max_publish_batch: 2,
            ..*L
        };
        let batch: PublishBatchRequest = parse_body(
            br#"{"messages":[{"topic":"a","data":1},{"topic":"b","data":2},{"topic":"c","data":3}]}"#,
            &limits,
        )
        .unwrap();
        let err = batch.items(&limits).err().unwrap();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(err.message, "messages must hold at most 2 items (got 3)");
        let two: PublishBatchRequest =
            parse_body(br#"{"messages":[{"topic":"a","data":1},3]}"#, &limits).unwrap();
        assert_eq!(two.items(&limits).unwrap().count(), 2);
    }

    #[test]
    fn an_operator_depth_limit_bounds_bodies() {
        let limits = Limits {
            max_json_depth: 3,
            ..*L
        };
        assert!(parse_body::<PublishRequest>(br#"{"topic":"t","data":[[1]]}"#, &limits).is_ok());
        let err =
            parse_body::<PublishRequest>(br#"{"topic":"t","data":[[[1]]]}"#, &limits).unwrap_err();
        assert_eq!(
            err.message,
            "body nests arrays and objects deeper than 3 levels"
        );
    }

    #[test]
    fn publish_body_keeps_data_raw_and_validates() {
        let body: PublishRequest = parse_body(
            br#"{"topic":"t","data":{"a":1.50},"priority":"high","id":"x"}"#,
            L,
        )
        .unwrap();
        assert_eq!(body.data.get(), r#"{"a":1.50}"#);
        assert_eq!(body.priority, Some(Priority::High));
        let err = parse_body::<PublishRequest>(br#"{"topic":"a b","data":1}"#, L).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(
            err.message.starts_with("topic must not contain whitespace"),
            "{}",
            err.message
        );
        let err = parse_body::<PublishRequest>(br#"{"topic":"t"}"#, L).unwrap_err();
        assert!(
            err.message.starts_with("missing field `data`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn publish_null_data_is_kept() {
        let body: PublishRequest = parse_body(br#"{"topic":"t","data":null}"#, L).unwrap();
        assert_eq!(body.data.get(), "null");
    }

    #[test]
    fn batch_items_fail_one_by_one() {
        let batch: PublishBatchRequest = parse_body(
            br#"{"messages":[{"topic":"a","data":1},{"topic":"*","data":2},3]}"#,
            L,
        )
        .unwrap();
        let results: Vec<_> = batch
            .items(L)
            .unwrap()
            .map(|item| item.map(|p| p.topic))
            .collect();
        assert_eq!(results[0].as_ref().unwrap().as_str(), "a");
        assert!(
            results[1]
                .as_ref()
                .unwrap_err()
                .message
                .starts_with("messages[1]: topic must not contain `*`")
        );
        assert!(
            results[2]
                .as_ref()
                .unwrap_err()
                .message
                .starts_with("messages[2]: invalid type")
        );
        assert!(parse_body::<PublishBatchRequest>(br#"[{"topic":"a","data":1}]"#, L).is_err());
    }

    #[test]
    fn batch_response_mixes_answers_and_errors() {
        let response = PublishBatchResponse {
            results: vec![
                PublishBatchResult::Published(PublishResponse {
                    topic: Topic::new("a").unwrap(),
                    offset: 1,
                    epoch: "e".into(),
                    deduplicated: false,
                }),
                PublishBatchResult::Failed(ApiErrorBody::new(ErrorCode::BadRequest, "bad")),
            ],
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(
            text,
            r#"{"results":[{"topic":"a","offset":1,"epoch":"e","deduplicated":false},{"error":{"code":"bad_request","message":"bad"}}]}"#
        );
        assert_eq!(
            parse_body::<PublishBatchResponse>(text.as_bytes(), L).unwrap(),
            response
        );
    }

    #[test]
    fn event_data_defaults_to_null_and_unknown_events_are_named() {
        let body: EventRequest = parse_body(
            br#"{"event":"agent_started","threadId":"t1","runId":"r1"}"#,
            L,
        )
        .unwrap();
        assert_eq!(body.data.get(), "null");
        assert_eq!(body.thread_id.as_deref(), Some("t1"));
        let err = parse_body::<EventRequest>(br#"{"event":"agent_dancing"}"#, L).unwrap_err();
        assert!(
            err.message
                .starts_with("unknown event `agent_dancing` (expected one of"),
            "{}",
            err.message
        );
        let err =
            parse_body::<EventRequest>(br#"{"event":"agent_error","threadId":""}"#, L).unwrap_err();
        assert!(
            err.message.starts_with("threadId must not be empty"),
            "{}",
            err.message
        );
    }

    #[test]
    fn send_and_broadcast_bodies_decode() {
        let body: BroadcastRequest =
            parse_body(br#"{"data":"hi","exclude":["c1","c2"]}"#, L).unwrap();
        assert_eq!(body.exclude, ["c1", "c2"]);
        assert_eq!(body.priority, None);
        let body: UserSendRequest = parse_body(br#"{"data":[],"priority":"low"}"#, L).unwrap();
        assert_eq!(body.priority, Some(Priority::Low));
        let body: ConnectionSendRequest = parse_body(br#"{"data":{}}"#, L).unwrap();
        assert_eq!(body.data.get(), "{}");
        assert!(
            parse_body::<ConnectionSendRequest>(br#"{"data":1,"priority":"urgent"}"#, L).is_err()
        );
    }

    #[test]
    fn error_body_has_the_documented_shape() {
        let body = ApiErrorBody::new(ErrorCode::NotFound, "no such connection");
        assert_eq!(body.http_status(), 404);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"not_found","message":"no such connection"}}"#
        );
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [
            &b""[..],
            b"{",
            b"\xff",
            b"[]",
            b"null",
            &b"[".repeat(100_000),
        ] {
            let err = parse_body::<DeliveredResponse>(body, L).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
        }
    }

    /// Parses `bytes` as every request body type; each gives a value or a typed error.
    fn parse_every_body(bytes: &[u8]) -> Vec<Option<ProtocolError>> {
        vec![
            parse_body::<PublishRequest>(bytes, L).err(),
            parse_body::<PublishBatchRequest>(bytes, L).err(),
            parse_body::<BroadcastRequest>(bytes, L).err(),
            parse_body::<EventRequest>(bytes, L).err(),
            parse_body::<UserSendRequest>(bytes, L).err(),
            parse_body::<ConnectionSendRequest>(bytes, L).err(),
        ]
    }

    proptest::proptest! {
        /// The directly written answer is what serde writes, odd topics and epochs included.
        #[test]
        fn a_publish_answer_is_encoded_as_serde_encodes_it(
            topic in crate::testing::topic(),
            odd in "[a\"\\\\]{1,6}",
            offset in proptest::prelude::any::<u64>(),
            epoch in "\\PC{0,24}|[\"\\\\\\x00-\\x1f]{0,4}",
            deduplicated in proptest::prelude::any::<bool>(),
        ) {
            for topic in [Some(topic), Topic::new(&odd).ok()].into_iter().flatten() {
                let answer = PublishResponse { topic, offset, epoch: epoch.clone(), deduplicated };
                let serde = serde_json::to_string(&answer)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
                proptest::prop_assert_eq!(answer.encode(), serde);
            }
        }

        /// Whatever the bytes, every body type is a value or a `bad_request`, never a panic.
        #[test]
        fn every_body_type_parses_or_is_a_bad_request(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            for error in parse_every_body(&bytes).into_iter().flatten() {
                proptest::prop_assert_eq!(error.code, ErrorCode::BadRequest);
            }
        }

        /// JSON objects with the bodies' field names and arbitrary values: the same.
        #[test]
        fn json_objects_with_body_fields_parse_or_are_a_bad_request(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(&[
                        "topic", "data", "priority", "id", "messages", "exclude", "event",
                        "threadId", "runId",
                    ][..]),
                    crate::testing::json_value(),
                ),
                0..6,
            ),
        ) {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect();
            let text = serde_json::Value::Object(object).to_string();
            for error in parse_every_body(text.as_bytes()).into_iter().flatten() {
                proptest::prop_assert_eq!(error.code, ErrorCode::BadRequest);
            }
        }
    }
}
