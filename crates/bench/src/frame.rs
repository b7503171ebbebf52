//! Reads the bench payloads out of a received text frame in one pass, without building a JSON
//! tree: a Herald `message`, a Herald `batch` of them, or an nchan frame (the raw body).
//!
//! The payload every publisher sends is `{"seq":N,"k":K,"ts":T,"pad":"xx.."}`: a per-topic
//! sequence number (from 1), the topic index, and the send time in Unix nanoseconds.
//! Parsing is on the generator's hot path (one call per received frame), so it walks the text
//! with serde visitors that keep only those numbers and the envelope's `offset`, skipping the
//! rest, instead of allocating a `serde_json::Value` per frame.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One publication found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Sequence number within its topic, from 1.
    pub(crate) seq: u64,
    /// The topic index it was published to.
    pub(crate) topic: u64,
    /// When the publisher stamped it, in nanoseconds since the Unix epoch.
    pub(crate) sent_ns: u64,
    /// The server's offset for it (Herald only; nchan frames carry the raw body).
    pub(crate) offset: Option<u64>,
}

/// What a frame was, for the connection logic around the counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A Herald `message`.
    Message,
    /// A Herald `batch` of server messages.
    Batch,
    /// A Herald heartbeat `ping`: answer with a `pong`.
    Ping,
    /// A Herald `error`.
    Error,
    /// A frame with no `type`: an nchan message (the published body as is).
    Raw,
    /// Any other Herald frame (`connected`, `ack`, `pong` ...).
    Other,
}

/// How deeply `batch` frames may nest; Herald never nests them.
const MAX_DEPTH: u8 = 4;

/// Parses `text`, calling `sink` for every publication in it, in frame order.
///
/// A payload that lacks one of `seq`, `k` or `ts` is not a bench publication and is skipped.
pub(crate) fn scan(text: &str, sink: &mut impl FnMut(Delivery)) -> Result<Kind, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let kind = FrameSeed { sink, depth: 0 }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(kind)
}

/// The keys this module cares about; everything else is skipped.
enum Key {
    Type,
    Offset,
    Data,
    Seq,
    Topic,
    SentAt,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "type" => Key::Type,
                    "offset" => Key::Offset,
                    "data" => Key::Data,
                    "seq" => Key::Seq,
                    "k" => Key::Topic,
                    "ts" => Key::SentAt,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The value of `type`, without allocating.
struct TypeName(Kind);

impl<'de> de::Deserialize<'de> for TypeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl Visitor<'_> for TypeVisitor {
            type Value = TypeName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame type")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<TypeName, E> {
                Ok(TypeName(match name {
                    "message" => Kind::Message,
                    "batch" => Kind::Batch,
                    "ping" => Kind::Ping,
                    "error" => Kind::Error,
                    _ => Kind::Other,
                }))
            }
        }
        deserializer.deserialize_str(TypeVisitor)
    }
}

/// The three numbers of a bench payload, as far as they were found.
#[derive(Default)]
struct Fields {
    seq: Option<u64>,
    topic: Option<u64>,
    sent_ns: Option<u64>,
}

impl Fields {
    fn delivery(&self, offset: Option<u64>) -> Option<Delivery> {
        Some(Delivery {
            seq: self.seq?,
            topic: self.topic?,
            sent_ns: self.sent_ns?,
            offset,
        })
    }
}

/// A whole frame (or one item of a `batch`).
struct FrameSeed<'s, F> {
    sink: &'s mut F,
    depth: u8,
}

impl<'de, F: FnMut(Delivery)> DeserializeSeed<'de> for FrameSeed<'_, F> {
    type Value = Kind;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Kind, D::Error> {
        if self.depth == 0 {
            // A frame must be an object; serde_json refuses anything else here.
            deserializer.deserialize_map(self)
        } else {
            // Inside a batch (or a `data` array), anything else is skipped.
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de, F: FnMut(Delivery)> Visitor<'de> for FrameSeed<'_, F> {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut kind = None;
        let mut offset = None;
        // A `message` frame's payload; its `offset` may come before or after `data`.
        let mut payload = None;
        // An nchan frame is the payload itself, at the top level.
        let mut top = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => kind = Some(map.next_value::<TypeName>()?.0),
                Key::Offset => offset = map.next_value::<Option<u64>>()?,
                Key::Data => {
                    payload = map.next_value_seed(DataSeed {
                        sink: &mut *self.sink,
                        depth: self.depth,
                    })?;
                }
                Key::Seq => top.seq = map.next_value::<Option<u64>>()?,
                Key::Topic => top.topic = map.next_value::<Option<u64>>()?,
                Key::SentAt => top.sent_ns = map.next_value::<Option<u64>>()?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match kind {
            Some(Kind::Message) => {
                if let Some(delivery) = payload.and_then(|fields| fields.delivery(offset)) {
                    (self.sink)(delivery);
                }
                Ok(Kind::Message)
            }
            Some(kind) => Ok(kind),
            None => {
                if let Some(delivery) = top.delivery(None) {
                    (self.sink)(delivery);
                }
                Ok(Kind::Raw)
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Kind, A::Error> {
        while items.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Kind::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
}

/// The `data` of a frame: a payload object, or the items of a `batch`.
struct DataSeed<'s, F> {
    sink: &'s mut F,
    depth: u8,
}

impl<'de, F: FnMut(Delivery)> DeserializeSeed<'de> for DataSeed<'_, F> {
    type Value = Option<Fields>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, F: FnMut(Delivery)> Visitor<'de> for DataSeed<'_, F> {
    type Value = Option<Fields>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("frame data")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Seq => fields.seq = map.next_value::<Option<u64>>()?,
                Key::Topic => fields.topic = map.next_value::<Option<u64>>()?,
                Key::SentAt => fields.sent_ns = map.next_value::<Option<u64>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("batch frames nested too deeply"));
        }
        while items
            .next_element_seed(FrameSeed {
                sink: &mut *self.sink,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Builds the payload for `seq` on topic `topic`, padded with `x` to `size` bytes (when `size`
/// is larger than the unpadded payload).
pub(crate) fn payload(seq: u64, topic: u64, sent_ns: u64, size: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(size.max(64));
    // Writing to a String cannot fail.
    let _ = write!(out, r#"{{"seq":{seq},"k":{topic},"ts":{sent_ns},"pad":""#);
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, kind: Kind, expected: &[(u64, u64, u64, Option<u64>)]) {
        let mut found = Vec::new();
        let got = scan(text, &mut |d: Delivery| {
            found.push((d.seq, d.topic, d.sent_ns, d.offset));
        });
        assert_eq!(got.ok(), Some(kind), "{text}");
        assert_eq!(found, expected, "{text}");
    }

    #[test]
    fn herald_message_yields_its_payload_and_offset() {
        check(
            r#"{"type":"message","topic":"bench:3","data":{"seq":7,"k":3,"ts":99,"pad":"xx"},"offset":12,"epoch":"e1"}"#,
            Kind::Message,
            &[(7, 3, 99, Some(12))],
        );
    }

    #[test]
    fn offset_before_data_is_kept() {
        check(
            r#"{"offset":5,"type":"message","data":{"seq":1,"k":0,"ts":2}}"#,
            Kind::Message,
            &[(1, 0, 2, Some(5))],
        );
    }

    #[test]
    fn batch_yields_every_message_in_order() {
        check(
            r#"{"type":"batch","data":[{"type":"message","topic":"t","data":{"seq":1,"k":0,"ts":5},"offset":1,"epoch":"e"},{"type":"ping","timestamp":3},{"type":"message","topic":"t","data":{"seq":2,"k":0,"ts":6},"offset":2,"epoch":"e"}]}"#,
            Kind::Batch,
            &[(1, 0, 5, Some(1)), (2, 0, 6, Some(2))],
        );
    }

    #[test]
    fn nchan_raw_body_is_a_delivery_without_offset() {
        check(&payload(4, 9, 1234, 256), Kind::Raw, &[(4, 9, 1234, None)]);
    }

    #[test]
    fn control_frames_yield_nothing() {
        check(r#"{"type":"ping","timestamp":1}"#, Kind::Ping, &[]);
        check(
            r#"{"type":"ack","messageId":"s","data":{"topic":"bench:0","offset":0,"epoch":"e","recovered":false}}"#,
            Kind::Other,
            &[],
        );
        check(
            r#"{"type":"connected","data":{"connectionId":"c1","userId":"u1","tier":"free","heartbeatInterval":30000,"maxPayload":102400}}"#,
            Kind::Other,
            &[],
        );
        check(
            r#"{"type":"error","error":{"code":"forbidden","message":"no"}}"#,
            Kind::Error,
            &[],
        );
    }

    #[test]
    fn payload_without_bench_fields_is_skipped() {
        check(
            r#"{"type":"message","data":{"hello":"world"},"offset":1}"#,
            Kind::Message,
            &[],
        );
        check(
            r#"{"type":"message","data":[1,2],"offset":1}"#,
            Kind::Message,
            &[],
        );
    }

    #[test]
    fn malformed_or_deeply_nested_frames_are_errors() {
        let mut sink = |_: Delivery| {};
        assert!(scan("not json", &mut sink).is_err());
        assert!(scan("[1]", &mut sink).is_err());
        assert!(scan(r#"{"type":"message"} trailing"#, &mut sink).is_err());
        let mut nested = String::from(r#"{"seq":1,"k":0,"ts":1}"#);
        for _ in 0..6 {
            nested = format!(r#"{{"type":"batch","data":[{nested}]}}"#);
        }
        assert!(scan(&nested, &mut sink).is_err());
    }

    #[test]
    fn payload_has_the_requested_size() {
        for size in [64, 256, 1000] {
            assert_eq!(payload(123, 4, 1_700_000_000_000_000_000, size).len(), size);
        }
        // Too small a size gives the shortest payload, never a truncated one.
        let short = payload(1, 0, 1, 10);
        assert!(short.ends_with(r#""pad":""}"#), "{short}");
    }
}
