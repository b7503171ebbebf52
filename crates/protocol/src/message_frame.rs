//! The `message` frame written directly: every publication's frame is encoded once on the
//! fan-out path, and writing its five fields in place spares it serde's map machinery (about
//! two thirds of the instructions of [`ServerMessage::encode`](crate::ServerMessage::encode)
//! for this frame) and the buffer's regrowth.
//!
//! The text is byte for byte what `ServerMessage::Message { .. }.encode()` writes (the
//! property tests below pin it): `{"type":"message","topic":…,"data":…,"offset":…,"epoch":…}`,
//! strings escaped by serde_json whenever they hold anything to escape. A cluster's sequencer
//! numbers a publication after its node encoded it, so the frame is built in two steps:
//! [`encode_message_head`] up to and including `"offset":`, then [`complete_message`].

use serde_json::value::RawValue;

use crate::{
    json::{push_json_string, push_json_u64},
    topic::Topic,
};

/// What comes before the topic.
const TYPE_AND_TOPIC_KEY: &str = r#"{"type":"message","topic":"#;
/// Between the topic and the payload.
const DATA_KEY: &str = r#","data":"#;
/// Between the payload and the offset.
const OFFSET_KEY: &str = r#","offset":"#;
/// Between the offset and the epoch.
const EPOCH_KEY: &str = r#","epoch":"#;
/// The most digits of a `u64`, the epoch's quotes and the closing brace.
const TAIL_ROOM: usize = 20 + 2 + 1;

/// The whole `message` frame of `data` published to `topic` at `offset` in `epoch`.
pub fn encode_message(topic: &Topic, data: &RawValue, offset: u64, epoch: &str) -> String {
    let mut text = encode_message_head(topic, data, epoch.len());
    complete_message(&mut text, offset, epoch);
    text
}

/// The `message` frame of `data` on `topic` up to and including `"offset":`, with room for
/// [`complete_message`] to add an offset and an epoch of `epoch_len` bytes without growing.
pub fn encode_message_head(topic: &Topic, data: &RawValue, epoch_len: usize) -> String {
    let topic = topic.as_str();
    let data = data.get();
    let len = TYPE_AND_TOPIC_KEY.len()
        + topic.len()
        + 2
        + DATA_KEY.len()
        + data.len()
        + OFFSET_KEY.len()
        + EPOCH_KEY.len()
        + epoch_len
        + TAIL_ROOM;
    let mut text = String::with_capacity(len);
    text.push_str(TYPE_AND_TOPIC_KEY);
    push_json_string(&mut text, topic);
    text.push_str(DATA_KEY);
    text.push_str(data);
    text.push_str(OFFSET_KEY);
    text
}

/// Completes a head from [`encode_message_head`] with the publication's offset and epoch.
pub fn complete_message(head: &mut String, offset: u64, epoch: &str) {
    push_json_u64(head, offset);
    head.push_str(EPOCH_KEY);
    push_json_string(head, epoch);
    head.push('}');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{ServerMessage, testing};

    /// The frame as serde writes it (`ServerMessage::encode` itself takes the direct path).
    fn serde_encoded(topic: &Topic, data: &RawValue, offset: u64, epoch: &str) -> String {
        let message = ServerMessage::Message {
            topic: topic.clone(),
            data: data.to_owned(),
            offset,
            epoch: epoch.to_owned(),
        };
        serde_json::to_string(&message).unwrap_or_default()
    }

    #[test]
    fn strings_with_quotes_backslashes_and_controls_are_escaped_as_serde_json_escapes_them() {
        let topic = Topic::new(r#"a"b\c"#).expect("valid topic");
        let data = RawValue::from_string(r#"{"x":"\u0001"}"#.to_owned()).expect("valid JSON");
        let text = encode_message(&topic, &data, 7, "e\"\n");
        assert_eq!(
            text,
            r#"{"type":"message","topic":"a\"b\\c","data":{"x":"\u0001"},"offset":7,"epoch":"e\"\n"}"#
        );
        assert_eq!(text, serde_encoded(&topic, &data, 7, "e\"\n"));
    }

    #[test]
    fn the_head_has_room_for_the_largest_offset_and_its_epoch() {
        let topic = Topic::new("chat:1").expect("valid topic");
        let data = RawValue::from_string("[1,2]".to_owned()).expect("valid JSON");
        let mut text = encode_message_head(&topic, &data, "18c-7".len());
        let room = text.capacity();
        complete_message(&mut text, u64::MAX, "18c-7");
        assert_eq!(text.capacity(), room, "the frame grew its buffer: {text}");
        assert_eq!(text, serde_encoded(&topic, &data, u64::MAX, "18c-7"));
    }

    proptest! {
        #[test]
        fn the_frame_is_what_serde_writes(
            topic in testing::topic(),
            data in testing::raw_json(),
            offset in any::<u64>(),
            epoch in "\\PC{0,24}|[\"\\\\\\x00-\\x1f]{0,4}",
        ) {
            let text = encode_message(&topic, &data, offset, &epoch);
            prop_assert_eq!(&text, &serde_encoded(&topic, &data, offset, &epoch));
        }

        #[test]
        fn odd_topics_are_escaped_as_serde_writes_them(
            name in "[^*\\s\\p{Cc}]{1,12}|[a\"\\\\]{1,6}",
            offset in any::<u64>(),
        ) {
            let Ok(topic) = Topic::new(&name) else { return Ok(()) };
            let text = encode_message(&topic, RawValue::NULL, offset, "1-2");
            prop_assert_eq!(&text, &serde_encoded(&topic, RawValue::NULL, offset, "1-2"));
        }
    }
}
