//! Proptest strategies shared by the unit tests: JSON values, topics, ids and messages.

use proptest::prelude::*;
use serde_json::{Map, Number, Value, value::RawValue};

use crate::{ConnectedData, ErrorCode, ErrorDetail, EventName, PushScope, ServerMessage, Topic};

/// A finite number that prints and parses back exactly: integers, and quarters of integers.
pub(crate) fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u64>().prop_map(Number::from),
        any::<i64>().prop_map(Number::from),
        any::<i32>().prop_map(|n| Number::from_f64(f64::from(n) / 4.0).unwrap_or_else(|| 0.into())),
    ]
}

/// Any JSON value, a few levels deep, with arbitrary strings.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object.
pub(crate) fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((any::<String>(), json_value()), 0..4)
        .prop_map(|entries| entries.into_iter().collect())
}

/// Raw JSON text, written with odd spellings serde_json would not produce itself.
pub(crate) fn raw_json() -> impl Strategy<Value = Box<RawValue>> {
    prop_oneof![
        json_value().prop_map(|value| value.to_string()),
        Just(r#"{"a":1.50,"b":"\u00e9","a":2e3}"#.to_owned()),
        Just("[ 1 , -0.0 , \"\\/\" ]".to_owned()),
    ]
    .prop_map(|text| RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned()))
}

/// A valid topic.
pub(crate) fn topic() -> impl Strategy<Value = Topic> {
    "[a-zA-Z0-9:_./{}é-]{1,40}".prop_map(|name| Topic::new(&name).unwrap_or_else(|_| fallback()))
}

/// A topic that always exists, for the impossible case where a generated name is refused.
fn fallback() -> Topic {
    Topic::new("t").unwrap_or_else(|_| unreachable!("`t` is a valid topic"))
}

/// A valid identifier, with any characters.
pub(crate) fn id() -> impl Strategy<Value = String> {
    "\\PC{1,20}"
}

/// Any server message that is not a batch.
pub(crate) fn leaf_server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (id(), id(), "[a-z]{1,10}", any::<u64>(), any::<u64>()).prop_map(
            |(connection_id, user_id, tier, heartbeat_interval, max_payload)| {
                ServerMessage::Connected {
                    data: ConnectedData {
                        connection_id,
                        user_id,
                        tier,
                        heartbeat_interval,
                        max_payload,
                    },
                }
            }
        ),
        (id(), json_value()).prop_map(|(message_id, data)| ServerMessage::Ack { message_id, data }),
        (
            proptest::option::of(id()),
            prop::sample::select(ErrorCode::ALL.to_vec()),
            any::<String>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(message_id, code, message, retry_after)| ServerMessage::Error {
                    message_id,
                    error: ErrorDetail {
                        code,
                        message,
                        retry_after,
                    },
                }
            ),
        (topic(), raw_json(), any::<u64>(), id()).prop_map(|(topic, data, offset, epoch)| {
            ServerMessage::Message {
                topic,
                data,
                offset,
                epoch,
            }
        }),
        (
            raw_json(),
            prop::sample::select(vec![
                PushScope::User,
                PushScope::Connection,
                PushScope::Broadcast
            ])
        )
            .prop_map(|(data, scope)| ServerMessage::Push { data, scope }),
        (
            prop::sample::select(EventName::ALL.to_vec()),
            id(),
            raw_json(),
            proptest::option::of(id()),
            proptest::option::of(id())
        )
            .prop_map(
                |(event, id, data, thread_id, run_id)| ServerMessage::Event {
                    event,
                    id,
                    data,
                    thread_id,
                    run_id,
                }
            ),
        proptest::option::of(any::<u64>()).prop_map(|timestamp| ServerMessage::Ping { timestamp }),
        (proptest::option::of(number()), proptest::option::of(id())).prop_map(
            |(timestamp, message_id)| ServerMessage::Pong {
                timestamp,
                message_id
            }
        ),
        (json_object(), proptest::option::of(id())).prop_map(|(data, message_id)| {
            ServerMessage::Preferences {
                message_id,
                data: Value::Object(data),
            }
        }),
    ]
}

/// Any server message, batches included (one level).
pub(crate) fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        4 => leaf_server_message(),
        1 => prop::collection::vec(leaf_server_message(), 0..4)
            .prop_map(|data| ServerMessage::Batch { data }),
    ]
}
