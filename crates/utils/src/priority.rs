//! Message priority: the four levels that decide what an outbound queue sheds first.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// How important a message is when a connection's outbound queue is full.
///
/// Ordered `Low < Normal < High < Critical`.
/// A full queue sheds the oldest message of the lowest priority strictly below the incoming one;
/// `Critical` is never shed.
/// On the wire (serde, [`Display`](fmt::Display), [`FromStr`]) the names are lower-case:
/// `low`, `normal`, `high`, `critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Shed first; for messages a client can do without.
    Low,
    /// The default for publications and pushes.
    #[default]
    Normal,
    /// Shed only to make room for `Critical` messages.
    High,
    /// Never shed; agent events and protocol replies.
    Critical,
}

impl Priority {
    /// Every priority, lowest first, so `Priority::ALL[p.index()] == p`.
    pub const ALL: [Self; 4] = [Self::Low, Self::Normal, Self::High, Self::Critical];

    /// The lower-case wire name: `"low"`, `"normal"`, `"high"` or `"critical"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The position in [`Priority::ALL`]: `Low` is 0, `Critical` is 3.
    ///
    /// Useful to index per-priority arrays such as counters or queue lanes.
    pub const fn index(self) -> usize {
        match self {
            Self::Low => 0,
            Self::Normal => 1,
            Self::High => 2,
            Self::Critical => 3,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = ParsePriorityError;

    /// Parses the exact lower-case wire name; anything else (including `"High"`) is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParsePriorityError {
                input: s.to_owned(),
            })
    }
}

/// A string that is not one of the lower-case priority names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePriorityError {
    /// The rejected input, kept so callers can echo it in an error reply.
    input: String,
}

impl ParsePriorityError {
    /// The string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParsePriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown priority {:?}: expected low, normal, high or critical",
            self.input
        )
    }
}

impl std::error::Error for ParsePriorityError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, de::IntoDeserializer};

    use crate::priority::{ParsePriorityError, Priority};

    #[track_caller]
    fn check_parse(input: &str, expected: Option<Priority>) {
        let parsed = input.parse::<Priority>();
        assert_eq!(parsed.as_ref().ok().copied(), expected, "parsing {input:?}");
        let deserialized: Result<Priority, serde::de::value::Error> =
            Priority::deserialize(input.into_deserializer());
        assert_eq!(deserialized.ok(), expected, "deserializing {input:?}");
    }

    #[test]
    fn parses_lowercase_names() {
        check_parse("low", Some(Priority::Low));
        check_parse("normal", Some(Priority::Normal));
        check_parse("high", Some(Priority::High));
        check_parse("critical", Some(Priority::Critical));
    }

    #[test]
    fn rejects_other_spellings() {
        check_parse("High", None);
        check_parse("CRITICAL", None);
        check_parse(" low", None);
        check_parse("", None);
        check_parse("urgent", None);
    }

    #[test]
    fn parse_error_names_input_in_lowercase_message() {
        let err: ParsePriorityError = "urgent".parse::<Priority>().unwrap_err();
        assert_eq!(err.input(), "urgent");
        assert_eq!(
            err.to_string(),
            r#"unknown priority "urgent": expected low, normal, high or critical"#
        );
    }

    #[test]
    fn default_is_normal() {
        assert_eq!(Priority::default(), Priority::Normal);
    }

    #[test]
    fn ordering_runs_low_to_critical() {
        assert!(Priority::Low < Priority::Normal);
        assert!(Priority::Normal < Priority::High);
        assert!(Priority::High < Priority::Critical);
        assert!(Priority::ALL.is_sorted());
    }

    #[test]
    fn index_matches_position_in_all() {
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }

    proptest! {
        #[test]
        fn display_round_trips_through_from_str(i in 0usize..4) {
            let p = Priority::ALL[i];
            prop_assert_eq!(p.to_string().parse::<Priority>(), Ok(p));
            prop_assert_eq!(p.to_string(), p.as_str());
        }

        #[test]
        fn index_order_matches_ord(a in 0usize..4, b in 0usize..4) {
            let (pa, pb) = (Priority::ALL[a], Priority::ALL[b]);
            prop_assert_eq!(pa.cmp(&pb), pa.index().cmp(&pb.index()));
        }
    }
}
