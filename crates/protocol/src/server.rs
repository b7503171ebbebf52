//! Server -> client frames: [`ServerMessage`], its typed `data` helpers and [`encode_batch`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned, de::Error as _};
use serde_json::{Number, Value, value::RawValue};

use crate::{
    error::{ErrorCode, ErrorDetail, ProtocolError},
    event::EventName,
    json::{push_json_string, push_json_u64, without_position},
    message_frame::encode_message,
    topic::Topic,
};

/// A frame the server sends, one variant per `type` of docs/protocol.md.
///
/// Serializes to exactly the shapes of docs/protocol.md: `type` first, camelCase field names,
/// optional fields omitted when `None`. `data` of `message`, `push` and `event` is raw JSON
/// text, relayed verbatim. Deserialize (for tests and Rust clients) needs serde_json, because
/// the raw `data` fields do, and ignores unknown fields.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// `connected`: sent first, once the connection is authenticated.
    Connected {
        /// Who and what the connection is.
        data: ConnectedData,
    },
    /// `ack`: the successful reply to a request that carried a `messageId`.
    Ack {
        /// The request's `messageId`.
        message_id: String,
        /// The result; for `subscribe`, a [`SubscribeResult`].
        data: Value,
    },
    /// `error`: the failed reply to a request, or a notice about the connection.
    Error {
        /// The request's `messageId`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// What went wrong.
        error: ErrorDetail,
    },
    /// `message`: a topic publication.
    Message {
        /// The topic it was published to.
        topic: Topic,
        /// The payload exactly as the publisher sent it.
        data: Box<RawValue>,
        /// Its offset in the topic (the first publication of an epoch is 1).
        offset: u64,
        /// The topic's epoch.
        epoch: String,
    },
    /// `push`: a live-only send with no offset, not stored.
    Push {
        /// The payload exactly as the backend sent it.
        data: Box<RawValue>,
        /// Who it was addressed to.
        scope: PushScope,
    },
    /// `event`: a critical agent event, delivered at least once.
    Event {
        /// The event name.
        event: EventName,
        /// The stable id the client acknowledges and deduplicates by.
        id: String,
        /// The payload exactly as the backend sent it.
        data: Box<RawValue>,
        /// The thread it was addressed to, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        thread_id: Option<String>,
        /// The agent run it belongs to, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        run_id: Option<String>,
    },
    /// `batch`: several messages in one frame, in order. Use [`encode_batch`] on the hot path.
    Batch {
        /// The messages.
        data: Vec<Self>,
    },
    /// `ping`: the server's heartbeat.
    Ping {
        /// When it was sent, in ms since the Unix epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<u64>,
    },
    /// `pong`: the answer to a client `ping`.
    Pong {
        /// The client ping's `timestamp`, echoed as written.
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<Number>,
        /// The client ping's `messageId`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
    /// `preferences`: the user's preferences, as a reply or pushed after an update.
    Preferences {
        /// The `get_preferences` request's `messageId`; absent when pushed after another
        /// connection's update.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// The preferences object.
        data: Value,
    },
}

/// `data` of the `connected` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedData {
    /// The server-assigned connection id.
    pub connection_id: String,
    /// The token's `sub`.
    pub user_id: String,
    /// The token's tier (`free` when the claim is absent).
    pub tier: String,
    /// How often the server pings, in milliseconds.
    pub heartbeat_interval: u64,
    /// The largest frame the server accepts, in bytes.
    pub max_payload: u64,
}

impl ConnectedData {
    /// The whole `connected` frame carrying this data, written directly (see
    /// [`ServerMessage::encode`]).
    fn encode_frame(&self) -> String {
        let mut text = String::with_capacity(
            // The keys, quotes and two numbers of up to 20 digits.
            140 + self.connection_id.len() + self.user_id.len() + self.tier.len(),
        );
        text.push_str(r#"{"type":"connected","data":{"connectionId":"#);
        push_json_string(&mut text, &self.connection_id);
        text.push_str(r#","userId":"#);
        push_json_string(&mut text, &self.user_id);
        text.push_str(r#","tier":"#);
        push_json_string(&mut text, &self.tier);
        text.push_str(r#","heartbeatInterval":"#);
        push_json_u64(&mut text, self.heartbeat_interval);
        text.push_str(r#","maxPayload":"#);
        push_json_u64(&mut text, self.max_payload);
        text.push_str("}}");
        text
    }
}

/// Who a `push` was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushScope {
    /// All of a user's connections (or those of one thread and those bound to none).
    User,
    /// One connection.
    Connection,
    /// Every connection.
    Broadcast,
}

/// `data` of the `ack` answering `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeResult {
    /// The topic subscribed to.
    pub topic: Topic,
    /// The topic's last offset (0 if nothing was published in this epoch).
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: String,
    /// Whether the missed messages after `since` are being replayed.
    pub recovered: bool,
}

impl SubscribeResult {
    /// The result as an `ack`'s `data`.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "topic": self.topic.as_str(),
            "offset": self.offset,
            "epoch": self.epoch,
            "recovered": self.recovered,
        })
    }
}

/// `data` of the `ack` answering an `auth` that refreshed the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResult {
    /// When the new token expires, in ms since the Unix epoch.
    pub expires_at: u64,
}

impl RefreshResult {
    /// The result as an `ack`'s `data`.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "expiresAt": self.expires_at })
    }
}

impl ServerMessage {
    /// An `error` frame.
    pub fn error(message_id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            message_id,
            error: ErrorDetail::new(code, message),
        }
    }

    /// The frame's `type`.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Connected { .. } => "connected",
            Self::Ack { .. } => "ack",
            Self::Error { .. } => "error",
            Self::Message { .. } => "message",
            Self::Push { .. } => "push",
            Self::Event { .. } => "event",
            Self::Batch { .. } => "batch",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::Preferences { .. } => "preferences",
        }
    }

    /// Encodes the frame as JSON text.
    ///
    /// The two frames every publication and every connection cost, `message` and `connected`,
    /// are written directly ([`encode_message`], and a writer of `connected`'s own); the text is
    /// the same as serde's (the property tests pin it), without serde's map machinery.
    pub fn encode(&self) -> String {
        match self {
            Self::Message {
                topic,
                data,
                offset,
                epoch,
            } => encode_message(topic, data, *offset, epoch),
            Self::Connected { data } => data.encode_frame(),
            // Serializing to a String cannot fail: every map key is a string (`Value` maps
            // have `String` keys), `Number` is always finite, raw data is already valid JSON
            // and no custom `Serialize` impl here returns an error.
            _ => serde_json::to_string(self).expect("a server message always serializes"),
        }
    }

    /// Decodes a frame; the same as `serde_json::from_str`.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Wraps already encoded frames into one `{"type":"batch","data":[f1,f2,...]}` frame.
///
/// This is plain byte concatenation into a buffer sized once, so the fan-out path serializes
/// each publication once and batches the bytes. Each item must be one encoded
/// [`ServerMessage`] (the output of [`ServerMessage::encode`]); nothing is re-parsed or checked,
/// and the result is UTF-8 because the items are.
pub fn encode_batch<'a, I>(frames: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: Clone,
{
    const HEAD: &[u8] = br#"{"type":"batch","data":["#;
    const TAIL: &[u8] = b"]}";
    let frames = frames.into_iter();
    let len = HEAD.len() + TAIL.len() + frames.clone().map(|f| f.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(HEAD);
    for (i, frame) in frames.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(frame);
    }
    out.extend_from_slice(TAIL);
    out
}

/// How deeply `batch` frames may nest inside each other when decoding. The server never
/// nests them; the bound keeps a hostile frame from recursing without limit.
const MAX_BATCH_NESTING: usize = 4;

impl<'de> Deserialize<'de> for ServerMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = OwnedObject::deserialize(deserializer)?;
        decode_object(&object, 0).map_err(D::Error::custom)
    }
}

/// A JSON object whose values are kept as raw JSON text.
struct OwnedObject(Vec<(String, Box<RawValue>)>);

impl OwnedObject {
    /// The raw value of the last `key` entry.
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| &**value)
    }

    /// Decodes a required field.
    fn field<T: DeserializeOwned>(&self, ty: &str, key: &str) -> Result<T, String> {
        let raw = self
            .get(key)
            .ok_or_else(|| format!("{ty}: missing field `{key}`"))?;
        serde_json::from_str(raw.get())
            .map_err(|err| format!("{ty}.{key}: {}", without_position(&err)))
    }

    /// Decodes an optional field; `null` counts as absent.
    fn optional<T: DeserializeOwned>(&self, ty: &str, key: &str) -> Result<Option<T>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|err| format!("{ty}.{key}: {}", without_position(&err))),
        }
    }

    /// A required raw field, kept verbatim.
    fn raw(&self, ty: &str, key: &str) -> Result<Box<RawValue>, String> {
        self.get(key)
            .map(ToOwned::to_owned)
            .ok_or_else(|| format!("{ty}: missing field `{key}`"))
    }
}

impl<'de> Deserialize<'de> for OwnedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = OwnedObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a server message object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value::<Box<RawValue>>()?));
                }
                Ok(OwnedObject(entries))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Decodes one server message from its fields; `nesting` counts enclosing batches.
fn decode_object(object: &OwnedObject, nesting: usize) -> Result<ServerMessage, String> {
    let ty: String = object
        .get("type")
        .ok_or_else(|| "missing field `type`".to_owned())
        .and_then(|raw| {
            serde_json::from_str(raw.get())
                .map_err(|err| format!("type: {}", without_position(&err)))
        })?;
    let t = ty.as_str();
    Ok(match t {
        "connected" => ServerMessage::Connected {
            data: object.field(t, "data")?,
        },
        "ack" => ServerMessage::Ack {
            message_id: object.field(t, "messageId")?,
            data: object.field(t, "data")?,
        },
        "error" => ServerMessage::Error {
            message_id: object.optional(t, "messageId")?,
            error: object.field(t, "error")?,
        },
        "message" => ServerMessage::Message {
            topic: object.field(t, "topic")?,
            data: object.raw(t, "data")?,
            offset: object.field(t, "offset")?,
            epoch: object.field(t, "epoch")?,
        },
        "push" => ServerMessage::Push {
            data: object.raw(t, "data")?,
            scope: object.field(t, "scope")?,
        },
        "event" => ServerMessage::Event {
            event: object.field(t, "event")?,
            id: object.field(t, "id")?,
            data: object.raw(t, "data")?,
            thread_id: object.optional(t, "threadId")?,
            run_id: object.optional(t, "runId")?,
        },
        "batch" => {
            if nesting >= MAX_BATCH_NESTING {
                return Err(format!(
                    "batch: nested more than {MAX_BATCH_NESTING} batches deep"
                ));
            }
            let items: Vec<OwnedObject> = object.field(t, "data")?;
            ServerMessage::Batch {
                data: items
                    .iter()
                    .map(|item| decode_object(item, nesting + 1))
                    .collect::<Result<_, _>>()?,
            }
        }
        "ping" => ServerMessage::Ping {
            timestamp: object.optional(t, "timestamp")?,
        },
        "pong" => ServerMessage::Pong {
            timestamp: object.optional(t, "timestamp")?,
            message_id: object.optional(t, "messageId")?,
        },
        "preferences" => ServerMessage::Preferences {
            message_id: object.optional(t, "messageId")?,
            data: object.field(t, "data")?,
        },
        _ => {
            return Err(format!(
                "unknown server message type `{}`",
                crate::json::truncate_for_message(t)
            ));
        }
    })
}

impl ProtocolError {
    /// The `error` frame answering the refused client frame, echoing its `messageId`.
    pub fn to_server_message(&self) -> ServerMessage {
        ServerMessage::Error {
            message_id: self.message_id.clone(),
            error: self.detail(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::testing;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[track_caller]
    fn check(message: &ServerMessage, expected: &str) {
        assert_eq!(message.encode(), expected);
        assert_eq!(ServerMessage::decode(expected).unwrap().encode(), expected);
    }

    #[test]
    fn connected_uses_camel_case_fields() {
        check(
            &ServerMessage::Connected {
                data: ConnectedData {
                    connection_id: "c1".into(),
                    user_id: "u1".into(),
                    tier: "free".into(),
                    heartbeat_interval: 30_000,
                    max_payload: 102_400,
                },
            },
            r#"{"type":"connected","data":{"connectionId":"c1","userId":"u1","tier":"free","heartbeatInterval":30000,"maxPayload":102400}}"#,
        );
    }

    #[test]
    fn subscribe_ack_carries_the_typed_result() {
        let result = SubscribeResult {
            topic: Topic::new("chat:1").unwrap(),
            offset: 3,
            epoch: "e".into(),
            recovered: true,
        };
        assert_eq!(result.to_value(), serde_json::to_value(&result).unwrap());
        check(
            &ServerMessage::Ack {
                message_id: "1".into(),
                data: result.to_value(),
            },
            // `Value` objects keep their keys sorted (serde_json without `preserve_order`).
            r#"{"type":"ack","messageId":"1","data":{"epoch":"e","offset":3,"recovered":true,"topic":"chat:1"}}"#,
        );
        let refresh = RefreshResult { expires_at: 9 };
        assert_eq!(refresh.to_value(), serde_json::to_value(refresh).unwrap());
    }

    #[test]
    fn optional_fields_are_omitted() {
        check(
            &ServerMessage::error(None, ErrorCode::Forbidden, "no"),
            r#"{"type":"error","error":{"code":"forbidden","message":"no"}}"#,
        );
        check(
            &ServerMessage::Ping { timestamp: None },
            r#"{"type":"ping"}"#,
        );
        check(
            &ServerMessage::Pong {
                timestamp: Some(json!(1.5).as_number().unwrap().clone()),
                message_id: Some("p".into()),
            },
            r#"{"type":"pong","timestamp":1.5,"messageId":"p"}"#,
        );
    }

    #[test]
    fn event_keeps_raw_data_and_names_thread_and_run() {
        check(
            &ServerMessage::Event {
                event: EventName::ToolCompleted,
                id: "ev1".into(),
                data: raw(r#"{"a":1.50,"b":"\u00e9"}"#),
                thread_id: Some("t".into()),
                run_id: None,
            },
            r#"{"type":"event","event":"tool_completed","id":"ev1","data":{"a":1.50,"b":"\u00e9"},"threadId":"t"}"#,
        );
    }

    #[test]
    fn encode_batch_of_nothing_is_an_empty_batch() {
        let empty = String::from_utf8(encode_batch([])).unwrap();
        assert_eq!(empty, r#"{"type":"batch","data":[]}"#);
        assert!(matches!(
            ServerMessage::decode(&empty).unwrap(),
            ServerMessage::Batch { data } if data.is_empty()
        ));
    }

    #[test]
    fn deeply_nested_batches_are_refused_without_recursing() {
        let depth = 10_000;
        let text = format!(
            "{}{}{}",
            r#"{"type":"batch","data":["#.repeat(depth),
            r#"{"type":"ping"}"#,
            "]}".repeat(depth)
        );
        let err = ServerMessage::decode(&text).unwrap_err();
        assert!(err.to_string().contains("nested more than"), "{err}");
    }

    #[test]
    fn unknown_type_and_missing_fields_are_errors() {
        assert!(ServerMessage::decode(r#"{"type":"hello"}"#).is_err());
        assert!(ServerMessage::decode(r#"{"type":"message","topic":"t"}"#).is_err());
        assert!(ServerMessage::decode(r#"[]"#).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(message in testing::server_message()) {
            let text = message.encode();
            let decoded = ServerMessage::decode(&text);
            prop_assert!(decoded.is_ok(), "{text}: {decoded:?}");
            prop_assert_eq!(decoded.map(|m| m.encode()).unwrap_or_default(), text);
        }

        #[test]
        fn encode_writes_what_serde_writes(message in testing::server_message()) {
            let serde = serde_json::to_string(&message)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(message.encode(), serde);
        }

        #[test]
        fn encode_batch_decodes_to_the_same_messages_in_order(
            messages in prop::collection::vec(testing::server_message(), 0..6),
        ) {
            let frames: Vec<String> = messages.iter().map(ServerMessage::encode).collect();
            let batch = String::from_utf8(encode_batch(frames.iter().map(String::as_bytes)))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let Ok(ServerMessage::Batch { data }) = ServerMessage::decode(&batch) else {
                return Err(TestCaseError::fail(format!("not a batch: {batch}")));
            };
            let decoded: Vec<String> = data.iter().map(ServerMessage::encode).collect();
            prop_assert_eq!(decoded, frames);
            let whole = ServerMessage::Batch { data: messages };
            prop_assert_eq!(whole.encode(), batch);
        }
    }

    #[test]
    fn error_reply_echoes_the_message_id() {
        let err = ProtocolError {
            message_id: Some("7".into()),
            kind: None,
            code: ErrorCode::BadRequest,
            message: "unknown type `x`".into(),
        };
        assert_eq!(
            err.to_server_message().encode(),
            r#"{"type":"error","messageId":"7","error":{"code":"bad_request","message":"unknown type `x`"}}"#
        );
        assert_eq!(err.to_string(), "bad_request: unknown type `x`");
    }
}
