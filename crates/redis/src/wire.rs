//! What Herald writes to Redis: the names of its keys and of its channel ([`Keys`]), and the
//! messages on the bus ([`BusMessage`]), encoded as length-prefixed fields so that no user id,
//! topic or frame can be mistaken for a separator.
//!
//! A bus message is one kind byte, then fields written as `<decimal length>:<bytes>`, then the
//! frame (the rest of the message, final wire bytes):
//!
//! | kind | fields | sent by |
//! |---|---|---|
//! | `P` | offset, epoch, priority, topic | the publish script, for every node |
//! | `B` | origin node, priority | the origin, for the others |
//! | `U` | origin node, priority, user, thread (empty: none) | the origin, for the others |
//! | `E` | origin node, user, thread (empty: none), event id | the origin, for the others |

use std::sync::Arc;

use herald_core::{Envelope, Frame, SequencedPublication, ThreadId, UserId};
use herald_protocol::Topic;
use herald_utils::Priority;

/// The names of every key and channel, under the configured prefix.
///
/// A topic's keys put the topic's byte length before it and the topic in braces, so keys of
/// different topics never collide and, on Redis Cluster, all keys of one topic hash to one
/// slot (the hash tag is the topic up to its first `}`).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The channel every node subscribes to.
    pub(crate) fn bus(&self) -> String {
        format!("{}bus", self.prefix)
    }

    /// The hash with a topic's last offset (`offset`) and epoch (`epoch`).
    pub(crate) fn topic(&self, topic: &Topic) -> String {
        self.of_topic("topic", topic)
    }

    /// The stream of a topic's retained publications, entry id `<offset>-0`.
    pub(crate) fn history(&self, topic: &Topic) -> String {
        self.of_topic("history", topic)
    }

    /// The string remembering a publish id of a topic: `<epoch>|<offset>`.
    pub(crate) fn dedupe(&self, topic: &Topic, id: &str) -> String {
        format!("{}:{id}", self.of_topic("dedupe", topic))
    }

    fn of_topic(&self, kind: &str, topic: &Topic) -> String {
        format!(
            "{}{kind}:{}:{{{}}}",
            self.prefix,
            topic.as_str().len(),
            topic.as_str()
        )
    }
}

/// A message on the bus, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BusMessage {
    /// A publication numbered by the publish script.
    Publication(SequencedPublication),
    /// Another operation, from the node that accepted it.
    Forwarded {
        /// The origin node's id.
        node: String,
        /// The operation.
        envelope: Envelope,
    },
}

/// Encodes an operation this node accepted for the other nodes; `None` for a publication
/// (the publish script writes those).
pub(crate) fn encode_envelope(node: &str, envelope: &Envelope) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let frame = match envelope {
        Envelope::Publication { .. } => return None,
        Envelope::Broadcast { priority, frame } => {
            out.push(b'B');
            field(&mut out, node);
            field(&mut out, priority.as_str());
            frame
        }
        Envelope::User {
            user,
            thread,
            priority,
            frame,
        } => {
            out.push(b'U');
            field(&mut out, node);
            field(&mut out, priority.as_str());
            field(&mut out, user.as_str());
            field(&mut out, thread.as_ref().map_or("", ThreadId::as_str));
            frame
        }
        Envelope::Event {
            user,
            thread,
            id,
            frame,
        } => {
            out.push(b'E');
            field(&mut out, node);
            field(&mut out, user.as_str());
            field(&mut out, thread.as_ref().map_or("", ThreadId::as_str));
            field(&mut out, id);
            frame
        }
    };
    out.extend_from_slice(frame.as_str().as_bytes());
    Some(out)
}

fn field(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

/// Decodes a bus message; `None` for one that is malformed (not Herald's, or another version's).
pub(crate) fn decode(message: &[u8]) -> Option<BusMessage> {
    let text = std::str::from_utf8(message).ok()?;
    let (kind, mut rest) = text.split_at_checked(1)?;
    let mut next = || -> Option<&str> {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let (value, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(value)
    };
    let message = match kind {
        "P" => {
            let offset = next()?.parse().ok()?;
            let epoch = Arc::from(next()?);
            let priority = next()?.parse().ok()?;
            let topic = Topic::new(next()?).ok()?;
            BusMessage::Publication(SequencedPublication {
                topic,
                offset,
                epoch,
                priority,
                frame: Frame::from(rest.to_owned()),
            })
        }
        "B" => {
            let node = next()?.to_owned();
            let priority = next()?.parse().ok()?;
            BusMessage::Forwarded {
                node,
                envelope: Envelope::Broadcast {
                    priority,
                    frame: Frame::from(rest.to_owned()),
                },
            }
        }
        "U" => {
            let node = next()?.to_owned();
            let priority: Priority = next()?.parse().ok()?;
            let user = UserId::new(next()?);
            let thread = thread(next()?);
            BusMessage::Forwarded {
                node,
                envelope: Envelope::User {
                    user,
                    thread,
                    priority,
                    frame: Frame::from(rest.to_owned()),
                },
            }
        }
        "E" => {
            let node = next()?.to_owned();
            let user = UserId::new(next()?);
            let thread = thread(next()?);
            let id = Arc::from(next()?);
            BusMessage::Forwarded {
                node,
                envelope: Envelope::Event {
                    user,
                    thread,
                    id,
                    frame: Frame::from(rest.to_owned()),
                },
            }
        }
        _ => return None,
    };
    Some(message)
}

fn thread(value: &str) -> Option<ThreadId> {
    (!value.is_empty()).then(|| ThreadId::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::from(text.to_owned())
    }

    #[track_caller]
    fn round_trip(envelope: Envelope) {
        let bytes = encode_envelope("node:1", &envelope).expect("forwarded kind");
        assert_eq!(
            decode(&bytes),
            Some(BusMessage::Forwarded {
                node: "node:1".to_owned(),
                envelope
            })
        );
    }

    #[test]
    fn forwarded_operations_round_trip_whatever_their_ids_hold() {
        round_trip(Envelope::Broadcast {
            priority: Priority::High,
            frame: frame(r#"{"type":"push","data":"a\nb"}"#),
        });
        round_trip(Envelope::User {
            user: UserId::new("we:ird\n12:user"),
            thread: Some(ThreadId::new("t:1")),
            priority: Priority::Low,
            frame: frame("{}"),
        });
        round_trip(Envelope::Event {
            user: UserId::new("alice"),
            thread: None,
            id: Arc::from("ev-1"),
            frame: frame(r#"{"type":"event"}"#),
        });
    }

    #[test]
    fn a_publication_as_the_script_writes_it_decodes() {
        let bytes = b"P1:72:ab6:normal6:chat:1{\"type\":\"message\"}";
        assert_eq!(
            decode(bytes),
            Some(BusMessage::Publication(SequencedPublication {
                topic: Topic::new("chat:1").expect("valid"),
                offset: 7,
                epoch: Arc::from("ab"),
                priority: Priority::Normal,
                frame: frame(r#"{"type":"message"}"#),
            }))
        );
    }

    #[test]
    fn malformed_messages_are_refused_not_misread() {
        for bytes in [
            &b""[..],
            b"X1:a",
            b"P1:x2:ab6:normal1:t{}",
            b"P1:72:ab6:normal9:t{}",
            b"P1:72:ab4:none1:t{}",
            b"B99:node",
            b"\xff\xfe",
        ] {
            assert_eq!(decode(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn keys_of_different_topics_and_ids_never_collide() {
        let keys = Keys::new("h:");
        let a = Topic::new("a}:d").expect("valid");
        let b = Topic::new("a").expect("valid");
        assert_eq!(keys.topic(&b), "h:topic:1:{a}");
        assert_eq!(keys.history(&b), "h:history:1:{a}");
        assert_ne!(keys.dedupe(&a, "x"), keys.dedupe(&b, "}:d:x"));
        assert_eq!(keys.bus(), "h:bus");
    }
}
