//! Small JSON helpers shared by the decoders and the direct encoders: a borrowed object view,
//! value kinds, a depth scan and a string writer.

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::value::RawValue;

/// The kind of a JSON value, named as error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonKind {
    /// `null`.
    Null,
    /// `true` or `false`.
    Boolean,
    /// Any number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

impl JsonKind {
    /// Classifies raw JSON text by its first byte, which is enough because `RawValue` holds
    /// one valid value.
    pub(crate) fn of(raw: &RawValue) -> Self {
        Self::of_text(raw.get())
    }

    /// Classifies JSON text by its first byte after JSON whitespace; the value need not be
    /// complete. Anything that starts no other kind counts as a number.
    pub(crate) fn of_text(text: &str) -> Self {
        let first = text
            .bytes()
            .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
        match first {
            Some(b'n') => Self::Null,
            Some(b't' | b'f') => Self::Boolean,
            Some(b'"') => Self::String,
            Some(b'[') => Self::Array,
            Some(b'{') => Self::Object,
            _ => Self::Number,
        }
    }

    /// The name used in error messages.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Boolean => "boolean",
            Self::Number => "number",
            Self::String => "string",
            Self::Array => "array",
            Self::Object => "object",
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// serde_json's message without its " at line L column C" suffix, for errors in a value that
/// was cut out of a larger frame, where the position would point at the wrong place.
pub(crate) fn without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => message,
    }
}

/// Shortens client-controlled text before it is quoted back in an error message, so a huge
/// unknown `type` does not make a huge reply.
pub(crate) fn truncate_for_message(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Returns true when `bytes` nests arrays and objects deeper than `max` levels.
///
/// The scan is linear and never recurses, so it is safe on hostile input. It only needs to be
/// right for valid JSON: invalid JSON is refused by the real parser anyway. Strings, most of a
/// typical payload, are skipped with `memchr` from one quote or backslash to the next rather
/// than byte by byte (four times faster on a 300-byte publish body, which this scan reads
/// before serde_json does).
pub(crate) fn exceeds_depth(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut rest = bytes;
    while let Some((&byte, after)) = rest.split_first() {
        rest = after;
        match byte {
            b'"' => match skip_string(rest) {
                Some(after) => rest = after,
                // An unterminated string: nothing after it is structure.
                None => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// What follows the closing quote of the string whose opening quote precedes `rest`; `None`
/// when the string does not end.
fn skip_string(mut rest: &[u8]) -> Option<&[u8]> {
    loop {
        let at = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[at] == b'"' {
            return rest.get(at + 1..);
        }
        // A backslash escapes the byte after it (a quote, another backslash, or the first
        // byte of an escape that cannot contain either).
        rest = rest.get(at + 2..)?;
    }
}

/// A JSON object whose values are kept as borrowed raw text.
///
/// Decoding stops at the first level: values are validated and skipped by serde_json without
/// recursion, and each one is parsed later only if it is needed. Duplicate keys are kept; the
/// last one wins, as in `JSON.parse`.
#[derive(Debug, Default)]
pub(crate) struct RawObject<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// Parses `text` as a JSON object.
    pub(crate) fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The raw value of the last `key` entry.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|&(_, value)| value)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(RawObject { entries })
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Appends `value` as a JSON number, as serde_json writes it (with `itoa`, as serde_json does;
/// `write!` would go through the formatter, several hundred instructions per number).
pub(crate) fn push_json_u64(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// Appends `value` as a JSON string: quoted as it is when nothing in it needs escaping (a
/// topic or an epoch nearly always), else as serde_json escapes it.
pub(crate) fn push_json_string(out: &mut String, value: &str) {
    if value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Serializing a `str` cannot fail; the fallback keeps the frame valid JSON anyway.
        out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned()));
    } else {
        out.push('"');
        out.push_str(value);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_counts_arrays_and_objects() {
        assert!(!exceeds_depth(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(exceeds_depth(br#"{"a":[1,{"b":[]}]}"#, 3));
    }

    #[test]
    fn depth_scan_ignores_brackets_inside_strings() {
        assert!(!exceeds_depth(br#"{"a":"[[[[\"{{{{"}"#, 1));
    }

    #[test]
    fn depth_scan_handles_escapes_and_unterminated_strings() {
        // An escaped backslash ends the escape: the quote after it closes the string.
        assert!(exceeds_depth(br#"{"a":"\\\\","b":[[1]]}"#, 2));
        assert!(!exceeds_depth(br#"{"a":"\\\\","b":[[1]]}"#, 3));
        // A string that never ends, or ends in a lone backslash, hides what follows.
        assert!(!exceeds_depth(br#"{"a":"[[[[["#, 1));
        assert!(!exceeds_depth(br#"{"a":"\"#, 1));
        assert!(!exceeds_depth(b"", 0));
    }

    /// The byte-by-byte scan the `memchr` one replaced, kept as the property tests' oracle.
    fn exceeds_depth_bytewise(bytes: &[u8], max: usize) -> bool {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for &byte in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest::proptest! {
        /// Any bytes at all, weighted toward the ones the scan treats specially.
        #[test]
        fn depth_scan_agrees_with_the_bytewise_scan(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"\"\\[]{}ax".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..200,
            ),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(exceeds_depth(&bytes, max), exceeds_depth_bytewise(&bytes, max));
        }

        /// Valid JSON with nesting and strings full of brackets, quotes and backslashes.
        #[test]
        fn depth_scan_measures_generated_json(depth in 0usize..12, text in "[\\[\\]{}\"\\\\a-z]{0,20}", max in 0usize..12) {
            let mut json = serde_json::to_string(&text).expect("a string encodes");
            for level in 0..depth {
                json = if level % 2 == 0 { format!("[{json}]") } else { format!("{{\"k\":{json}}}") };
            }
            proptest::prop_assert_eq!(exceeds_depth(json.as_bytes(), max), depth > max);
        }
    }

    #[test]
    fn raw_object_keeps_the_last_duplicate_and_unescapes_keys() {
        let object = RawObject::parse(r#"{"a":1,"\u0061":[2, 3]}"#).unwrap();
        assert_eq!(object.get("a").unwrap().get(), "[2, 3]");
        assert!(object.get("b").is_none());
    }

    #[test]
    fn json_kind_names_every_value() {
        let kinds: Vec<_> = ["null", "true", "-1", "\"s\"", "[]", "{}"]
            .iter()
            .map(|text| JsonKind::of(&serde_json::from_str::<Box<RawValue>>(text).unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                JsonKind::Null,
                JsonKind::Boolean,
                JsonKind::Number,
                JsonKind::String,
                JsonKind::Array,
                JsonKind::Object
            ]
        );
    }
}
