//! Limits on identifiers and request sizes, and the error that reports a broken one.
//!
//! docs/protocol.md does not bound these values; the limits here are Herald extensions that keep a
//! single frame from pinning unbounded memory in dedupe caches, event stores and replies.

/// The longest topic name, in UTF-8 bytes. Topics are also non-empty.
pub const MAX_TOPIC_BYTES: usize = 256;

/// The longest identifier, in UTF-8 bytes: `messageId`, a publish `id`, an event `id`,
/// `threadId` and `runId`. Identifiers are also non-empty.
pub const MAX_ID_BYTES: usize = 128;

/// The most event ids one `ack` may carry.
pub const MAX_ACK_IDS: usize = 1000;

/// Why a topic or identifier was refused.
///
/// Messages are written to follow the field's name ("data.topic must not be empty"), which is
/// how the decoders use them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The value is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The value is longer than its limit.
    #[error("must be at most {max} bytes (got {len})")]
    TooLong {
        /// The value's length in UTF-8 bytes.
        len: usize,
        /// The limit in UTF-8 bytes.
        max: usize,
    },
    /// A topic holds a control character (Unicode category Cc, which includes ASCII 0-31 and 127).
    #[error("must not contain control characters")]
    ControlCharacter,
    /// A topic holds whitespace.
    #[error("must not contain whitespace")]
    Whitespace,
    /// A topic holds `*`, which only subscription patterns may use.
    #[error("must not contain `*` (reserved for patterns)")]
    Wildcard,
}

/// Checks an identifier: non-empty and at most [`MAX_ID_BYTES`] bytes. Any characters are allowed.
pub fn validate_id(id: &str) -> Result<(), ValidationError> {
    check_len(id, MAX_ID_BYTES)
}

/// Checks that `value` is non-empty and at most `max` bytes long.
pub(crate) const fn check_len(value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty);
    }
    if value.len() > max {
        return Err(ValidationError::TooLong {
            len: value.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_at_the_limit_is_accepted() {
        assert_eq!(validate_id(&"x".repeat(MAX_ID_BYTES)), Ok(()));
    }

    #[test]
    fn id_over_the_limit_or_empty_is_refused() {
        assert_eq!(
            validate_id(&"é".repeat(65)),
            Err(ValidationError::TooLong { len: 130, max: 128 })
        );
        assert_eq!(validate_id(""), Err(ValidationError::Empty));
    }
}
