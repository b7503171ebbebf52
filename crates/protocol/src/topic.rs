//! `Topic`: a validated, cheaply cloned topic name.

use std::{borrow::Borrow, fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Visitor};

use crate::validate::{MAX_TOPIC_BYTES, ValidationError, check_len};

/// A topic name, validated once and shared by reference count.
///
/// A topic is 1 to [`MAX_TOPIC_BYTES`] bytes of UTF-8 with no control characters, no
/// whitespace and no `*` (reserved for the patterns of the `topics` and `publish` claims).
/// These rules are Herald extensions; docs/protocol.md only calls topics strings.
///
/// Cloning copies a pointer, so fan-out code can hold one per subscription. `Hash`, `Eq` and
/// `Ord` agree with `str`, and `Borrow<str>` lets maps keyed by `Topic` be queried with `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` and makes a topic of it.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        check_len(name, MAX_TOPIC_BYTES)?;
        for c in name.chars() {
            if c.is_control() {
                return Err(ValidationError::ControlCharacter);
            }
            if c.is_whitespace() {
                return Err(ValidationError::Whitespace);
            }
            if c == '*' {
                return Err(ValidationError::Wildcard);
            }
        }
        Ok(Self(Arc::from(name)))
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Topic {
    type Error = ValidationError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl std::str::FromStr for Topic {
    type Err = ValidationError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopicVisitor;

        impl Visitor<'_> for TopicVisitor {
            type Value = Topic;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a topic name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Topic::new(v).map_err(|err| E::custom(format_args!("topic {err}")))
            }
        }

        deserializer.deserialize_str(TopicVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[track_caller]
    fn check(name: &str, expected: Result<(), ValidationError>) {
        assert_eq!(
            Topic::new(name).map(|topic| assert_eq!(topic.as_str(), name)),
            expected
        );
    }

    #[test]
    fn ordinary_names_are_topics() {
        check("chat:1", Ok(()));
        check("user:{sub}/inbox", Ok(()));
        check("événement", Ok(()));
        check(&"t".repeat(MAX_TOPIC_BYTES), Ok(()));
    }

    #[test]
    fn broken_names_are_refused() {
        check("", Err(ValidationError::Empty));
        check(
            &"t".repeat(MAX_TOPIC_BYTES + 1),
            Err(ValidationError::TooLong { len: 257, max: 256 }),
        );
        check("a\u{0}b", Err(ValidationError::ControlCharacter));
        check("a\u{7f}", Err(ValidationError::ControlCharacter));
        check("a b", Err(ValidationError::Whitespace));
        check("a\u{a0}b", Err(ValidationError::Whitespace));
        check("bill:*", Err(ValidationError::Wildcard));
    }

    #[test]
    fn serde_uses_a_plain_string_and_validates() {
        let topic: Topic = serde_json::from_str(r#""chat:\u0031""#).unwrap();
        assert_eq!(topic.as_str(), "chat:1");
        assert_eq!(serde_json::to_string(&topic).unwrap(), r#""chat:1""#);
        let err = serde_json::from_str::<Topic>(r#""a*""#).unwrap_err();
        assert!(
            err.to_string().starts_with("topic must not contain `*`"),
            "{err}"
        );
        assert!(serde_json::from_str::<Topic>("1").is_err());
    }

    #[test]
    fn sets_of_topics_are_queried_by_str() {
        let topics: HashSet<Topic> = [Topic::new("a").unwrap()].into_iter().collect();
        assert!(topics.contains("a"));
    }
}
