//! Client -> server frames: the request types and [`parse_client_frame`], which never panics.
//!
//! Decoding is done by hand over raw JSON rather than with derived `Deserialize` impls, for
//! three reasons: errors must name the offending field in words a client developer can act
//! on, the `messageId` and `type` must be recovered even when the rest of the frame is bad,
//! and publish `data` must stay the exact JSON text the client sent.

use std::fmt;

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Number, Value, value::RawValue};

use crate::{
    error::{ErrorCode, ProtocolError},
    json::{JsonKind, RawObject, exceeds_depth, truncate_for_message, without_position},
    limits::Limits,
    request_kind::RequestKind,
    topic::Topic,
    validate::{MAX_ACK_IDS, validate_id},
};

/// One decoded client frame: the envelope fields and the request.
#[derive(Debug, Clone)]
pub struct ClientFrame {
    /// The `messageId`, when the client wants a reply it can correlate.
    pub message_id: Option<String>,
    /// The client's `timestamp` (ms since the Unix epoch), kept as sent so a `pong` can echo it.
    pub timestamp: Option<Number>,
    /// What the client asks for.
    pub request: ClientRequest,
}

/// A client request, one variant per `type` of docs/protocol.md.
#[derive(Debug, Clone)]
pub enum ClientRequest {
    /// `auth`: authenticate, or refresh the token of an authenticated connection.
    Auth {
        /// The JWT, not yet verified.
        token: String,
    },
    /// `subscribe`: subscribe to a topic, replaying what was missed when `since` is given.
    Subscribe {
        /// The topic.
        topic: Topic,
        /// The last position the client received, to resume from.
        since: Option<StreamPosition>,
    },
    /// `unsubscribe`: leave a topic.
    Unsubscribe {
        /// The topic.
        topic: Topic,
    },
    /// `batch_subscribe`: subscribe to several topics; 1 to [`Limits::max_batch_topics`] of them.
    BatchSubscribe {
        /// The topics, in the order sent (duplicates are kept).
        topics: Vec<Topic>,
    },
    /// `batch_unsubscribe`: leave several topics; 1 to [`Limits::max_batch_topics`] of them.
    BatchUnsubscribe {
        /// The topics, in the order sent (duplicates are kept).
        topics: Vec<Topic>,
    },
    /// `publish`: publish to a topic from the client.
    Publish {
        /// The topic.
        topic: Topic,
        /// The payload exactly as the client wrote it (any JSON value, `null` included).
        data: Box<RawValue>,
        /// The dedupe id.
        id: Option<String>,
    },
    /// `ping`: the server answers `pong`, echoing the frame's `timestamp`.
    Ping,
    /// `pong`: the answer to a server `ping`.
    Pong,
    /// `get_preferences`: the server answers `preferences`.
    GetPreferences,
    /// `update_preferences`: merge these top-level keys into the user's preferences; a `null`
    /// value removes its key.
    UpdatePreferences {
        /// The frame's `data` object.
        patch: Map<String, Value>,
    },
    /// `ack`: acknowledge critical events; 1 to [`MAX_ACK_IDS`] ids.
    Ack {
        /// The event ids.
        ids: Vec<String>,
    },
}

/// A position in a topic's stream: the offset of the last message received and its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StreamPosition {
    /// The offset of the last message the client received (0 if none).
    pub offset: u64,
    /// The topic's epoch when that message was received.
    pub epoch: String,
}

impl ClientRequest {
    /// The request's `type`.
    pub const fn kind(&self) -> RequestKind {
        match self {
            Self::Auth { .. } => RequestKind::Auth,
            Self::Subscribe { .. } => RequestKind::Subscribe,
            Self::Unsubscribe { .. } => RequestKind::Unsubscribe,
            Self::BatchSubscribe { .. } => RequestKind::BatchSubscribe,
            Self::BatchUnsubscribe { .. } => RequestKind::BatchUnsubscribe,
            Self::Publish { .. } => RequestKind::Publish,
            Self::Ping => RequestKind::Ping,
            Self::Pong => RequestKind::Pong,
            Self::GetPreferences => RequestKind::GetPreferences,
            Self::UpdatePreferences { .. } => RequestKind::UpdatePreferences,
            Self::Ack { .. } => RequestKind::Ack,
        }
    }
}

impl ClientFrame {
    /// A frame with no `messageId` and no `timestamp`.
    pub const fn new(request: ClientRequest) -> Self {
        Self {
            message_id: None,
            timestamp: None,
            request,
        }
    }

    /// Encodes the frame as a client would send it: `type`, `messageId`, `timestamp`, `data`,
    /// in that order, with publish `data` written verbatim.
    ///
    /// [`parse_client_frame`] decodes the result back to an equal frame.
    pub fn encode(&self) -> String {
        // Serializing to a String cannot fail: every map key is a string, numbers come from
        // `serde_json::Number` (always finite) and raw data is already valid JSON.
        serde_json::to_string(self).expect("a client frame always serializes")
    }
}

/// Decodes one client text frame.
///
/// `limits` bounds the frame: its size in bytes of UTF-8 text (a frame of exactly
/// [`Limits::max_frame_bytes`] is accepted), its nesting and its batch sizes.
///
/// Never panics. The errors are:
/// - `payload_too_large` when `text` is longer than `max_bytes` (nothing else is looked at);
/// - `bad_request` when the frame is not JSON, not an object, nests deeper than
///   [`Limits::max_json_depth`], has no string `type`, an unknown `type`, a non-string `messageId`, a
///   non-number `timestamp`, or `data` of the wrong shape for its type, including an invalid
///   topic or identifier (see [`Topic`] and [`validate_id`]).
///
/// Unknown fields are ignored. An optional field set to `null` counts as absent, except
/// `messageId`, which must be a string when present. The error carries the frame's
/// `messageId` whenever it is a string, and its kind whenever `type` is known.
pub fn parse_client_frame(text: &str, limits: &Limits) -> Result<ClientFrame, ProtocolError> {
    let max_bytes = limits.max_frame_bytes;
    if text.len() > max_bytes {
        return Err(ProtocolError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "frame is {} bytes, more than the limit of {max_bytes}",
                text.len()
            ),
        ));
    }
    let envelope = RawObject::parse(text).map_err(|err| {
        ProtocolError::bad_request(if err.classify() == serde_json::error::Category::Data {
            format!(
                "frame must be a JSON object (got {})",
                JsonKind::of_text(text)
            )
        } else {
            format!("frame is not valid JSON: {err}")
        })
    })?;

    let mut cx = Context::default();
    let message_id = envelope
        .get("messageId")
        .map(|raw| decode_string(raw, "messageId"));
    if let Some(Ok(id)) = &message_id {
        cx.message_id = Some(id.clone());
    }

    let Some(type_raw) = envelope.get("type") else {
        return Err(cx.bad("frame has no `type` field"));
    };
    let type_name = decode_string(type_raw, "`type`").map_err(|message| cx.bad(message))?;
    let Some(kind) = RequestKind::from_type(&type_name) else {
        return Err(cx.bad(format_args!(
            "unknown type `{}`",
            truncate_for_message(&type_name)
        )));
    };
    cx.kind = Some(kind);

    match message_id {
        Some(Err(message)) => return Err(cx.bad(message)),
        Some(Ok(id)) => validate_id(&id).map_err(|err| cx.bad(format_args!("messageId {err}")))?,
        None => {}
    }
    let max_depth = limits.max_json_depth;
    if exceeds_depth(text.as_bytes(), max_depth) {
        return Err(cx.bad(format_args!(
            "frame nests arrays and objects deeper than {max_depth} levels"
        )));
    }
    let timestamp = match present(envelope.get("timestamp")) {
        None => None,
        Some(raw) => Some(decode_number(raw, "timestamp").map_err(|message| cx.bad(message))?),
    };
    let request = decode_request(kind, envelope.get("data"), limits.max_batch_topics)
        .map_err(|message| cx.bad(message))?;
    Ok(ClientFrame {
        message_id: cx.message_id,
        timestamp,
        request,
    })
}

/// What an error needs to know about the frame decoded so far.
#[derive(Default)]
struct Context {
    message_id: Option<String>,
    kind: Option<RequestKind>,
}

impl Context {
    /// A `bad_request` error, prefixed with the request type once it is known.
    fn bad(&self, message: impl fmt::Display) -> ProtocolError {
        let message = match self.kind {
            Some(kind) => format!("{kind}: {message}"),
            None => message.to_string(),
        };
        ProtocolError {
            message_id: self.message_id.clone(),
            kind: self.kind,
            code: ErrorCode::BadRequest,
            message,
        }
    }
}

/// Decodes the request of a known kind from the frame's `data`; errors are messages without
/// the type prefix. A batch names at most `max_batch_topics` topics.
fn decode_request(
    kind: RequestKind,
    data: Option<&RawValue>,
    max_batch_topics: usize,
) -> Result<ClientRequest, String> {
    Ok(match kind {
        // These carry no data; whatever `data` holds is ignored.
        RequestKind::Ping => ClientRequest::Ping,
        RequestKind::Pong => ClientRequest::Pong,
        RequestKind::GetPreferences => ClientRequest::GetPreferences,
        RequestKind::UpdatePreferences => {
            let raw = expect_object(data, "data")?;
            let patch = serde_json::from_str(raw.get())
                .map_err(|err| format!("data is not a valid object: {}", without_position(&err)))?;
            ClientRequest::UpdatePreferences { patch }
        }
        RequestKind::Auth => {
            let fields = data_fields(data)?;
            ClientRequest::Auth {
                token: decode_string(required(&fields, "token")?, "data.token")?,
            }
        }
        RequestKind::Subscribe => {
            let fields = data_fields(data)?;
            ClientRequest::Subscribe {
                topic: decode_topic(required(&fields, "topic")?, "data.topic")?,
                since: present(fields.get("since"))
                    .map(decode_position)
                    .transpose()?,
            }
        }
        RequestKind::Unsubscribe => {
            let fields = data_fields(data)?;
            ClientRequest::Unsubscribe {
                topic: decode_topic(required(&fields, "topic")?, "data.topic")?,
            }
        }
        RequestKind::BatchSubscribe => ClientRequest::BatchSubscribe {
            topics: decode_topics(&data_fields(data)?, max_batch_topics)?,
        },
        RequestKind::BatchUnsubscribe => ClientRequest::BatchUnsubscribe {
            topics: decode_topics(&data_fields(data)?, max_batch_topics)?,
        },
        RequestKind::Publish => {
            let fields = data_fields(data)?;
            let topic = decode_topic(required(&fields, "topic")?, "data.topic")?;
            let Some(payload) = fields.get("data") else {
                return Err("data.data is required (any JSON value, null included)".to_owned());
            };
            let id = present(fields.get("id"))
                .map(|raw| decode_id(raw, "data.id"))
                .transpose()?;
            ClientRequest::Publish {
                topic,
                data: payload.to_owned(),
                id,
            }
        }
        RequestKind::Ack => {
            let fields = data_fields(data)?;
            let items = decode_array(required(&fields, "ids")?, "data.ids", "ids", MAX_ACK_IDS)?;
            let ids = items
                .iter()
                .enumerate()
                .map(|(i, raw)| decode_id(raw, format_args!("data.ids[{i}]")))
                .collect::<Result<_, _>>()?;
            ClientRequest::Ack { ids }
        }
    })
}

/// The fields of the frame's `data`, which must be an object.
fn data_fields(data: Option<&RawValue>) -> Result<RawObject<'_>, String> {
    let raw = expect_object(data, "data")?;
    RawObject::parse(raw.get())
        .map_err(|err| format!("data is not a valid object: {}", without_position(&err)))
}

/// The raw value at `path`, which must be present and an object.
fn expect_object<'a>(raw: Option<&'a RawValue>, path: &str) -> Result<&'a RawValue, String> {
    let Some(raw) = raw else {
        return Err(format!("{path} is required and must be an object"));
    };
    match JsonKind::of(raw) {
        JsonKind::Object => Ok(raw),
        kind => Err(format!("{path} must be an object (got {kind})")),
    }
}

/// The value of a required field of `data`.
fn required<'a>(fields: &RawObject<'a>, name: &str) -> Result<&'a RawValue, String> {
    fields
        .get(name)
        .ok_or_else(|| format!("data.{name} is required"))
}

/// An optional field: absent and `null` are both `None`.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| JsonKind::of(raw) != JsonKind::Null)
}

/// Decodes a JSON string, unescaping it.
fn decode_string(raw: &RawValue, path: impl fmt::Display) -> Result<String, String> {
    match JsonKind::of(raw) {
        JsonKind::String => serde_json::from_str(raw.get())
            .map_err(|err| format!("{path} is not a valid string: {}", without_position(&err))),
        kind => Err(format!("{path} must be a string (got {kind})")),
    }
}

/// Decodes a JSON number, as written.
fn decode_number(raw: &RawValue, path: &str) -> Result<Number, String> {
    match JsonKind::of(raw) {
        JsonKind::Number => serde_json::from_str(raw.get())
            .map_err(|err| format!("{path} is not a usable number: {}", without_position(&err))),
        kind => Err(format!("{path} must be a number (got {kind})")),
    }
}

/// Decodes a topic name.
fn decode_topic(raw: &RawValue, path: impl fmt::Display) -> Result<Topic, String> {
    let name = decode_string(raw, &path)?;
    Topic::new(&name).map_err(|err| format!("{path} {err}"))
}

/// Decodes an identifier.
fn decode_id(raw: &RawValue, path: impl fmt::Display) -> Result<String, String> {
    let id = decode_string(raw, &path)?;
    validate_id(&id).map_err(|err| format!("{path} {err}"))?;
    Ok(id)
}

/// Decodes a non-empty array of at most `max` items, leaving the items raw.
fn decode_array<'a>(
    raw: &'a RawValue,
    path: &str,
    noun: &str,
    max: usize,
) -> Result<Vec<&'a RawValue>, String> {
    let items: Vec<&RawValue> = match JsonKind::of(raw) {
        JsonKind::Array => serde_json::from_str(raw.get())
            .map_err(|err| format!("{path} is not a valid array: {}", without_position(&err)))?,
        kind => return Err(format!("{path} must be an array (got {kind})")),
    };
    if items.is_empty() {
        return Err(format!("{path} must not be empty"));
    }
    if items.len() > max {
        return Err(format!(
            "{path} must hold at most {max} {noun} (got {})",
            items.len()
        ));
    }
    Ok(items)
}

/// Decodes the `topics` of a batch request, at most `max` of them.
fn decode_topics(fields: &RawObject<'_>, max: usize) -> Result<Vec<Topic>, String> {
    let items = decode_array(required(fields, "topics")?, "data.topics", "topics", max)?;
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| decode_topic(raw, format_args!("data.topics[{i}]")))
        .collect()
}

/// Decodes `since: {offset, epoch}`.
fn decode_position(raw: &RawValue) -> Result<StreamPosition, String> {
    let raw = expect_object(Some(raw), "data.since")?;
    let fields = RawObject::parse(raw.get()).map_err(|err| {
        format!(
            "data.since is not a valid object: {}",
            without_position(&err)
        )
    })?;
    let offset = fields
        .get("offset")
        .ok_or_else(|| "data.since.offset is required".to_owned())?;
    let offset = match JsonKind::of(offset) {
        JsonKind::Number => serde_json::from_str(offset.get()).ok(),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "data.since.offset must be a non-negative integer (got {})",
            truncate_for_message(offset.get())
        )
    })?;
    let epoch = fields
        .get("epoch")
        .ok_or_else(|| "data.since.epoch is required".to_owned())?;
    Ok(StreamPosition {
        offset,
        epoch: decode_string(epoch, "data.since.epoch")?,
    })
}

impl Serialize for ClientFrame {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// `data` of requests that name one topic.
        #[derive(Serialize)]
        struct TopicData<'a> {
            topic: &'a Topic,
            #[serde(skip_serializing_if = "Option::is_none")]
            since: Option<&'a StreamPosition>,
        }
        /// `data` of batch requests.
        #[derive(Serialize)]
        struct TopicsData<'a> {
            topics: &'a [Topic],
        }
        /// `data` of `publish`.
        #[derive(Serialize)]
        struct PublishData<'a> {
            topic: &'a Topic,
            data: &'a RawValue,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
        }
        /// `data` of `auth`.
        #[derive(Serialize)]
        struct AuthData<'a> {
            token: &'a str,
        }
        /// `data` of `ack`.
        #[derive(Serialize)]
        struct AckData<'a> {
            ids: &'a [String],
        }

        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", self.request.kind().as_str())?;
        if let Some(id) = &self.message_id {
            map.serialize_entry("messageId", id)?;
        }
        if let Some(timestamp) = &self.timestamp {
            map.serialize_entry("timestamp", timestamp)?;
        }
        match &self.request {
            ClientRequest::Auth { token } => map.serialize_entry("data", &AuthData { token })?,
            ClientRequest::Subscribe { topic, since } => map.serialize_entry(
                "data",
                &TopicData {
                    topic,
                    since: since.as_ref(),
                },
            )?,
            ClientRequest::Unsubscribe { topic } => {
                map.serialize_entry("data", &TopicData { topic, since: None })?;
            }
            ClientRequest::BatchSubscribe { topics }
            | ClientRequest::BatchUnsubscribe { topics } => {
                map.serialize_entry("data", &TopicsData { topics })?;
            }
            ClientRequest::Publish { topic, data, id } => map.serialize_entry(
                "data",
                &PublishData {
                    topic,
                    data,
                    id: id.as_deref(),
                },
            )?,
            ClientRequest::Ping | ClientRequest::Pong | ClientRequest::GetPreferences => {}
            ClientRequest::UpdatePreferences { patch } => map.serialize_entry("data", patch)?,
            ClientRequest::Ack { ids } => map.serialize_entry("data", &AckData { ids })?,
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::{limits::DEFAULT_MAX_JSON_DEPTH, testing};

    const MAX: &Limits = &Limits::new(102_400);

    /// Parses `input` and compares the outcome with `expected`: the re-encoded frame for a
    /// success, or `err <code> <kind or -> <messageId or -> <message>` for a failure.
    #[track_caller]
    fn check(input: &str, expected: &str) {
        let actual = match parse_client_frame(input, MAX) {
            Ok(frame) => frame.encode(),
            Err(err) => format!(
                "err {} {} {} {}",
                err.code,
                err.kind.map_or("-", RequestKind::as_str),
                err.message_id.as_deref().unwrap_or("-"),
                err.message
            ),
        };
        assert_eq!(actual, expected);
    }

    #[test]
    fn subscribe_with_since_decodes_every_field() {
        check(
            r#"{"data":{"since":{"epoch":"e1","offset":41},"topic":"chat:1","x":1},"messageId":"m","type":"subscribe","timestamp":1.5}"#,
            r#"{"type":"subscribe","messageId":"m","timestamp":1.5,"data":{"topic":"chat:1","since":{"offset":41,"epoch":"e1"}}}"#,
        );
    }

    #[test]
    fn publish_keeps_data_byte_identical() {
        check(
            r#"{"type":"publish","data":{"topic":"t","data":{"a":1.50,"b":"\u00e9"}}}"#,
            r#"{"type":"publish","data":{"topic":"t","data":{"a":1.50,"b":"\u00e9"}}}"#,
        );
    }

    #[test]
    fn error_echoes_message_id_and_kind() {
        check(
            r#"{"type":"subscribe","messageId":"7","data":{"topic":1}}"#,
            "err bad_request subscribe 7 subscribe: data.topic must be a string (got number)",
        );
        check(
            r#"{"type":"nope","messageId":"7"}"#,
            "err bad_request - 7 unknown type `nope`",
        );
    }

    #[test]
    fn non_string_message_id_is_refused_after_the_kind_is_known() {
        check(
            r#"{"type":"ping","messageId":7}"#,
            "err bad_request ping - ping: messageId must be a string (got number)",
        );
    }

    #[test]
    fn frame_of_exactly_the_limit_is_accepted() {
        let frame = r#"{"type":"ping"}"#;
        assert!(parse_client_frame(frame, &Limits::new(frame.len())).is_ok());
        let err = parse_client_frame(frame, &Limits::new(frame.len() - 1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn nesting_at_the_depth_limit_is_accepted_and_one_more_is_refused() {
        let frame = |depth: usize| {
            format!(
                r#"{{"type":"publish","data":{{"topic":"t","data":{}{}}}}}"#,
                "[".repeat(depth - 2),
                "]".repeat(depth - 2)
            )
        };
        assert!(parse_client_frame(&frame(DEFAULT_MAX_JSON_DEPTH), MAX).is_ok());
        let err = parse_client_frame(&frame(DEFAULT_MAX_JSON_DEPTH + 1), MAX).unwrap_err();
        assert_eq!(err.kind, Some(RequestKind::Publish));
        assert!(
            err.message.contains("deeper than 64 levels"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_operator_depth_limit_replaces_the_default() {
        let limits = Limits {
            max_json_depth: 4,
            ..*MAX
        };
        let frame = |depth: usize| {
            format!(
                r#"{{"type":"publish","data":{{"topic":"t","data":{}{}}}}}"#,
                "[".repeat(depth - 2),
                "]".repeat(depth - 2)
            )
        };
        assert!(parse_client_frame(&frame(4), &limits).is_ok());
        let err = parse_client_frame(&frame(5), &limits).unwrap_err();
        assert!(
            err.message.contains("deeper than 4 levels"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_operator_batch_limit_bounds_both_batch_requests() {
        let limits = Limits {
            max_batch_topics: 3,
            ..*MAX
        };
        for kind in ["batch_subscribe", "batch_unsubscribe"] {
            let frame = |n: usize| {
                json!({"type": kind, "data": {"topics": (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>()}})
                    .to_string()
            };
            assert!(parse_client_frame(&frame(3), &limits).is_ok());
            let err = parse_client_frame(&frame(4), &limits).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(
                err.message
                    .ends_with("data.topics must hold at most 3 topics (got 4)"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_type_name() {
        for kind in RequestKind::ALL {
            assert_eq!(RequestKind::from_type(kind.as_str()), Some(kind));
        }
        assert_eq!(RequestKind::from_type("Ping"), None);
    }

    #[test]
    fn long_unknown_type_is_truncated_in_the_message() {
        let err =
            parse_client_frame(&json!({"type": "x".repeat(1000)}).to_string(), MAX).unwrap_err();
        assert_eq!(err.message, format!("unknown type `{}...`", "x".repeat(64)));
    }

    /// A valid client request.
    fn request() -> impl Strategy<Value = ClientRequest> {
        let topics = || prop::collection::vec(testing::topic(), 1..5);
        prop_oneof![
            any::<String>().prop_map(|token| ClientRequest::Auth { token }),
            (
                testing::topic(),
                proptest::option::of((any::<u64>(), any::<String>()))
            )
                .prop_map(|(topic, since)| ClientRequest::Subscribe {
                    topic,
                    since: since.map(|(offset, epoch)| StreamPosition { offset, epoch }),
                }),
            testing::topic().prop_map(|topic| ClientRequest::Unsubscribe { topic }),
            topics().prop_map(|topics| ClientRequest::BatchSubscribe { topics }),
            topics().prop_map(|topics| ClientRequest::BatchUnsubscribe { topics }),
            (
                testing::topic(),
                testing::raw_json(),
                proptest::option::of(testing::id())
            )
                .prop_map(|(topic, data, id)| ClientRequest::Publish {
                    topic,
                    data,
                    id
                }),
            Just(ClientRequest::Ping),
            Just(ClientRequest::Pong),
            Just(ClientRequest::GetPreferences),
            testing::json_object().prop_map(|patch| ClientRequest::UpdatePreferences { patch }),
            prop::collection::vec(testing::id(), 1..5).prop_map(|ids| ClientRequest::Ack { ids }),
        ]
    }

    /// A string that is often a known type name.
    fn type_name() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => prop::sample::select(RequestKind::ALL.to_vec())
                .prop_map(|kind| Value::from(kind.as_str())),
            1 => testing::json_value(),
        ]
    }

    /// `data` that is sometimes close to the right shape.
    fn data() -> impl Strategy<Value = Value> {
        let field = prop_oneof![
            Just("topic"),
            Just("topics"),
            Just("since"),
            Just("data"),
            Just("id"),
            Just("ids"),
            Just("token"),
            Just("offset"),
            Just("epoch"),
        ];
        let value = prop_oneof![
            testing::json_value(),
            testing::topic().prop_map(|topic| Value::from(topic.as_str())),
            prop::collection::vec(testing::json_value(), 0..3).prop_map(Value::Array),
        ];
        prop_oneof![
            3 => prop::collection::vec((field, value), 0..4).prop_map(|entries| {
                Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
            1 => testing::json_value(),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(
            text in any::<String>(),
            max in 0usize..200,
            depth in 0usize..8,
            batch in 0usize..4,
        ) {
            let limits = Limits { max_frame_bytes: max, max_json_depth: depth, max_batch_topics: batch, max_publish_batch: batch };
            let _ = parse_client_frame(&text, &limits);
            let _ = parse_client_frame(&text, MAX);
        }

        #[test]
        fn never_panics_on_json_ish_objects(
            ty in proptest::option::of(type_name()),
            message_id in proptest::option::of(testing::json_value()),
            data in proptest::option::of(data()),
            timestamp in proptest::option::of(testing::json_value()),
        ) {
            let mut object = Map::new();
            object.extend(ty.map(|v| ("type".to_owned(), v)));
            object.extend(message_id.clone().map(|v| ("messageId".to_owned(), v)));
            object.extend(data.map(|v| ("data".to_owned(), v)));
            object.extend(timestamp.map(|v| ("timestamp".to_owned(), v)));
            let text = Value::Object(object).to_string();
            if let Err(err) = parse_client_frame(&text, MAX) {
                prop_assert_eq!(err.code, ErrorCode::BadRequest);
                if let Some(Value::String(id)) = message_id {
                    prop_assert_eq!(err.message_id, Some(id));
                }
            }
        }

        #[test]
        fn encoded_frames_parse_back_to_the_same_frame(
            request in request(),
            message_id in proptest::option::of(testing::id()),
            timestamp in proptest::option::of(testing::number()),
        ) {
            let frame = ClientFrame { message_id, timestamp, request };
            let text = frame.encode();
            let parsed = parse_client_frame(&text, MAX);
            prop_assert!(parsed.is_ok(), "{text}: {parsed:?}");
            prop_assert_eq!(parsed.map(|frame| frame.encode()).unwrap_or_default(), text);
        }
    }
}
