//! Per-tier quotas (`HERALD_TIERS` / `[tiers]`): how many connections, messages and subscriptions
//! a tier allows, and the largest payload it may publish.

use std::{collections::BTreeMap, ops::RangeInclusive};

/// The limits of one tier, picked by a token's `tier` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TierQuota {
    /// Connections one user of this tier may hold at once (further capped by
    /// `max_connections_per_user`).
    pub max_connections: u32,
    /// Messages one user of this tier may send per minute.
    pub messages_per_minute: u32,
    /// Topics one connection of this tier may subscribe to (further capped by
    /// `max_subscriptions_per_connection`).
    pub max_subscriptions: u32,
    /// The largest `data` (JSON text, in bytes) one client `publish` of this tier may carry
    /// (further capped by `max_payload_bytes`, the whole frame's limit).
    pub max_publish_bytes: u32,
}

impl TierQuota {
    /// The accepted range of [`TierQuota::max_connections`].
    pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u32> = 1..=10_000;
    /// The accepted range of [`TierQuota::messages_per_minute`].
    pub const MESSAGES_PER_MINUTE_RANGE: RangeInclusive<u32> = 1..=1_000_000;
    /// The accepted range of [`TierQuota::max_subscriptions`]; the largest is also the value of
    /// a tier that does not say (the global cap alone applies).
    pub const MAX_SUBSCRIPTIONS_RANGE: RangeInclusive<u32> = 1..=1_000_000;
    /// The accepted range of [`TierQuota::max_publish_bytes`]; the largest is also the value of
    /// a tier that does not say (the global cap alone applies).
    pub const MAX_PUBLISH_BYTES_RANGE: RangeInclusive<u32> = 1..=67_108_864;

    /// A quota of `max_connections` and `messages_per_minute` that leaves subscriptions and
    /// publish sizes to the global caps.
    pub const fn new(max_connections: u32, messages_per_minute: u32) -> Self {
        Self {
            max_connections,
            messages_per_minute,
            max_subscriptions: *Self::MAX_SUBSCRIPTIONS_RANGE.end(),
            max_publish_bytes: *Self::MAX_PUBLISH_BYTES_RANGE.end(),
        }
    }
}

/// The quota table: tier name to [`TierQuota`], ordered by name, always containing `free`.
///
/// The default is the seed table: `free` 3 connections / 30 messages per minute, `early` 10/100,
/// `mid` 15/200, `enterprise` 25/500; beside it, subscriptions per connection and the largest
/// client publish: `free` 100 / 16 KiB, `early` 250 / 32 KiB, `mid` 500 / 64 KiB,
/// `enterprise` 1000 / 100 KiB. A config file's `[tiers]` or `HERALD_TIERS` replaces the whole
/// table rather than merging into it, so an operator sees exactly the tiers they wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierQuotas(BTreeMap<String, TierQuota>);

/// The seed quota of `free`, also the fallback of [`TierQuotas::free`].
const SEED_FREE: TierQuota = TierQuota {
    max_connections: 3,
    messages_per_minute: 30,
    max_subscriptions: 100,
    max_publish_bytes: 16 * 1024,
};

/// How to write the table in the environment, shown in error messages.
const TEXT_FORMAT: &str = "expected comma-separated \
     name:max_connections:messages_per_minute[:max_subscriptions:max_publish_bytes] items, \
     e.g. free:3:30,early:10:100:250:32768";

/// The fields of a tier in the TOML form; the last two may be left out.
const TOML_FIELDS: [&str; 4] = [
    "max_connections",
    "messages_per_minute",
    "max_subscriptions",
    "max_publish_bytes",
];

impl TierQuotas {
    /// The tier of tokens without a `tier` claim; every table contains it.
    pub const DEFAULT_TIER: &'static str = "free";

    /// The quota of `name`, or `None` for a tier the table does not have (such a token is refused).
    pub fn tier(&self, name: &str) -> Option<&TierQuota> {
        self.0.get(name)
    }

    /// The quota of the `free` tier, which every table contains.
    pub fn free(&self) -> &TierQuota {
        // Every constructor puts `free` in the table and nothing removes it, so the fallback is
        // never used; it only spares a panic path.
        self.0.get(Self::DEFAULT_TIER).unwrap_or(&SEED_FREE)
    }

    /// Every tier and its quota, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TierQuota)> {
        self.0.iter().map(|(name, quota)| (name.as_str(), quota))
    }

    /// Adds or replaces one tier. Meant for tests and embedders; ranges are checked only when
    /// the table is loaded from settings.
    #[must_use]
    pub fn with_tier(mut self, name: impl Into<String>, quota: TierQuota) -> Self {
        self.0.insert(name.into(), quota);
        self
    }

    /// Parses the environment form, `free:3:30,early:10:100:250:32768` (spaces around items
    /// ignored, empty items dropped; an item without the last two numbers leaves them to the
    /// global caps). The error is the "expected ..." part of a message.
    pub(crate) fn parse_text(text: &str) -> Result<Self, String> {
        let mut tiers = BTreeMap::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let parts: Vec<&str> = item.split(':').map(str::trim).collect();
            let (name, numbers) = match parts[..] {
                [name, connections, messages] => (name, [connections, messages, "", ""]),
                [name, connections, messages, subscriptions, bytes] => {
                    (name, [connections, messages, subscriptions, bytes])
                }
                _ => return Err(format!("{TEXT_FORMAT}; `{item}` is not")),
            };
            check_name(name)?;
            let [connections, messages, subscriptions, bytes] =
                numbers.map(|n| (!n.is_empty()).then(|| parse_digits(n)));
            let quota = quota_from(name, connections, messages, subscriptions, bytes)?;
            if tiers.insert(name.to_owned(), quota).is_some() {
                return Err(format!("tier `{name}` is listed twice"));
            }
        }
        Self::checked(tiers)
    }

    /// Parses the TOML form, a table of `{ max_connections, messages_per_minute,
    /// max_subscriptions?, max_publish_bytes? }` tables.
    pub(crate) fn parse_toml(value: &toml::Value) -> Result<Self, String> {
        let Some(table) = value.as_table() else {
            return Err(
                "expected a table of tiers, e.g. [tiers.free] with max_connections and messages_per_minute"
                    .to_owned(),
            );
        };
        let mut tiers = BTreeMap::new();
        for (name, fields) in table {
            check_name(name)?;
            let Some(fields) = fields.as_table() else {
                return Err(format!(
                    "expected tier `{name}` to be a table with max_connections and messages_per_minute"
                ));
            };
            if let Some(unknown) = fields.keys().find(|k| !TOML_FIELDS.contains(&k.as_str())) {
                return Err(format!(
                    "unknown field `{unknown}` in tier `{name}`: expected {}",
                    TOML_FIELDS.join(", ")
                ));
            }
            let [connections, messages, subscriptions, bytes] = TOML_FIELDS.map(|field| {
                fields
                    .get(field)
                    .map(|value| value.as_integer().and_then(|n| u64::try_from(n).ok()))
            });
            let quota = quota_from(name, connections, messages, subscriptions, bytes)?;
            tiers.insert(name.clone(), quota);
        }
        Self::checked(tiers)
    }

    /// Accepts a parsed table only when it has the `free` tier.
    fn checked(tiers: BTreeMap<String, TierQuota>) -> Result<Self, String> {
        if tiers.contains_key(Self::DEFAULT_TIER) {
            Ok(Self(tiers))
        } else {
            Err(format!(
                "expected a table that contains the tier `{}` (the tier of tokens without a `tier` claim)",
                Self::DEFAULT_TIER
            ))
        }
    }

    /// The environment form of the table, as `parse_text` reads it.
    pub(crate) fn to_text(&self) -> String {
        self.iter()
            .map(|(name, q)| {
                format!(
                    "{name}:{}:{}:{}:{}",
                    q.max_connections,
                    q.messages_per_minute,
                    q.max_subscriptions,
                    q.max_publish_bytes
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for TierQuotas {
    fn default() -> Self {
        let quota = |max_connections, messages_per_minute, max_subscriptions, max_publish_bytes| {
            TierQuota {
                max_connections,
                messages_per_minute,
                max_subscriptions,
                max_publish_bytes,
            }
        };
        let seed = [
            (Self::DEFAULT_TIER, SEED_FREE),
            ("early", quota(10, 100, 250, 32 * 1024)),
            ("mid", quota(15, 200, 500, 64 * 1024)),
            ("enterprise", quota(25, 500, 1_000, 100 * 1024)),
        ];
        Self(
            seed.into_iter()
                .map(|(name, quota)| (name.to_owned(), quota))
                .collect(),
        )
    }
}

/// Tier names are bare TOML keys, so they print and parse back unchanged.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected tier names of 1 to 64 letters, digits, `_` or `-`; `{name}` is not"
        ))
    }
}

/// A tier's quota from its numbers: `None` is a number not given (required for the first two),
/// `Some(None)` one that is not a non-negative integer.
fn quota_from(
    name: &str,
    connections: Option<Option<u64>>,
    messages: Option<Option<u64>>,
    subscriptions: Option<Option<u64>>,
    bytes: Option<Option<u64>>,
) -> Result<TierQuota, String> {
    let required = |field: &str, number: Option<Option<u64>>, range| match number {
        Some(number) => quota_number(name, field, number, range),
        None => Err(format!("tier `{name}` needs {field}")),
    };
    let optional = |field: &str, number: Option<Option<u64>>, range: RangeInclusive<u32>| {
        number.map_or(Ok(*range.end()), |n| quota_number(name, field, n, range))
    };
    Ok(TierQuota {
        max_connections: required(
            "max_connections",
            connections,
            TierQuota::MAX_CONNECTIONS_RANGE,
        )?,
        messages_per_minute: required(
            "messages_per_minute",
            messages,
            TierQuota::MESSAGES_PER_MINUTE_RANGE,
        )?,
        max_subscriptions: optional(
            "max_subscriptions",
            subscriptions,
            TierQuota::MAX_SUBSCRIPTIONS_RANGE,
        )?,
        max_publish_bytes: optional(
            "max_publish_bytes",
            bytes,
            TierQuota::MAX_PUBLISH_BYTES_RANGE,
        )?,
    })
}

/// Checks one quota number against its range.
fn quota_number(
    tier: &str,
    field: &str,
    number: Option<u64>,
    range: RangeInclusive<u32>,
) -> Result<u32, String> {
    number
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "expected {field} of tier `{tier}` to be an integer from {} to {}",
                range.start(),
                range.end()
            )
        })
}

/// Parses a string made only of ASCII digits; signs, spaces and other forms are refused.
pub(crate) fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_text(text: &str, expected: &[(&str, u32, u32)]) {
        let tiers = TierQuotas::parse_text(text).unwrap();
        let got: Vec<(&str, u32, u32)> = tiers
            .iter()
            .map(|(n, q)| (n, q.max_connections, q.messages_per_minute))
            .collect();
        assert_eq!(got, expected);
    }

    #[track_caller]
    fn check_text_error(text: &str, expected_part: &str) {
        let err = TierQuotas::parse_text(text).unwrap_err();
        assert!(
            err.contains(expected_part),
            "{err:?} lacks {expected_part:?}"
        );
    }

    #[test]
    fn default_is_the_seed_table() {
        let tiers = TierQuotas::default();
        assert_eq!(
            tiers.to_text(),
            "early:10:100:250:32768,enterprise:25:500:1000:102400,free:3:30:100:16384,\
             mid:15:200:500:65536"
        );
        assert_eq!(tiers.free(), &SEED_FREE);
    }

    #[test]
    fn text_form_is_parsed_with_spaces_and_empty_items() {
        check_text(
            " free:3:30 , ,early : 10 : 100,",
            &[("early", 10, 100), ("free", 3, 30)],
        );
    }

    #[test]
    fn text_form_round_trips() {
        let tiers = TierQuotas::default();
        assert_eq!(TierQuotas::parse_text(&tiers.to_text()), Ok(tiers));
    }

    #[test]
    fn text_without_free_is_refused() {
        check_text_error("early:10:100", "contains the tier `free`");
        check_text_error("", "contains the tier `free`");
    }

    #[test]
    fn text_with_bad_items_is_refused() {
        check_text_error("free:3", "`free:3` is not");
        check_text_error("free:3:30:4", "`free:3:30:4` is not");
        check_text_error("free:3:30:4:5:6", "`free:3:30:4:5:6` is not");
        check_text_error("free:3:30:0:5", "max_subscriptions of tier `free`");
        check_text_error("free:3:30:4:x", "max_publish_bytes of tier `free`");
        check_text_error("free:0:30", "max_connections of tier `free`");
        check_text_error("free:3:-1", "messages_per_minute of tier `free`");
        check_text_error("free:3:30,free:4:40", "listed twice");
        check_text_error("free:3:30,a b:1:1", "`a b` is not");
    }

    #[test]
    fn toml_form_is_parsed() {
        let value: toml::Value = toml::from_str::<toml::Table>(
            "[tiers.free]\nmax_connections = 2\nmessages_per_minute = 20\n",
        )
        .unwrap()["tiers"]
            .clone();
        let tiers = TierQuotas::parse_toml(&value).unwrap();
        assert_eq!(tiers.to_text(), "free:2:20:1000000:67108864");
        assert_eq!(tiers.tier("early"), None);
    }

    #[test]
    fn subscriptions_and_publish_bytes_are_optional_in_both_forms() {
        let text = TierQuotas::parse_text("free:3:30,gold:5:50:7:4096").unwrap();
        assert_eq!(text.free(), &TierQuota::new(3, 30));
        let gold = text.tier("gold").copied().unwrap();
        assert_eq!((gold.max_subscriptions, gold.max_publish_bytes), (7, 4096));
        let table: toml::Table = toml::from_str(
            "[tiers.free]\nmax_connections = 3\nmessages_per_minute = 30\n\
             max_subscriptions = 7\nmax_publish_bytes = 4096\n",
        )
        .unwrap();
        let toml = TierQuotas::parse_toml(&table["tiers"]).unwrap();
        assert_eq!(toml.to_text(), "free:3:30:7:4096");
    }

    #[track_caller]
    fn check_toml_error(toml_text: &str, expected_part: &str) {
        let table: toml::Table = toml::from_str(toml_text).unwrap();
        let err = TierQuotas::parse_toml(&table["tiers"]).unwrap_err();
        assert!(
            err.contains(expected_part),
            "{err:?} lacks {expected_part:?}"
        );
    }

    #[test]
    fn toml_form_errors_name_the_problem() {
        check_toml_error("tiers = 3", "expected a table of tiers");
        check_toml_error("tiers = { free = 3 }", "tier `free` to be a table");
        check_toml_error(
            "[tiers.free]\nmax_connections = 2\n",
            "tier `free` needs messages_per_minute",
        );
        check_toml_error(
            "[tiers.free]\nmax_connections = 2\nmessages_per_minute = 1\nburst = 4\n",
            "unknown field `burst` in tier `free`",
        );
        check_toml_error(
            "[tiers.free]\nmax_connections = 0\nmessages_per_minute = 1\n",
            "max_connections of tier `free`",
        );
        check_toml_error(
            "[tiers.early]\nmax_connections = 1\nmessages_per_minute = 1\n",
            "contains the tier `free`",
        );
    }

    #[test]
    fn with_tier_adds_and_replaces() {
        let quota = TierQuota::new(7, 70);
        let tiers = TierQuotas::default()
            .with_tier("gold", quota)
            .with_tier("free", quota);
        assert_eq!(tiers.tier("gold"), Some(&quota));
        assert_eq!(tiers.free(), &quota);
    }

    #[test]
    fn digits_are_parsed_strictly() {
        assert_eq!(parse_digits("42"), Some(42));
        assert_eq!(parse_digits("007"), Some(7));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1_000",
            "1e3",
            "0x10",
            "99999999999999999999",
        ] {
            assert_eq!(parse_digits(bad), None, "{bad:?}");
        }
    }
}
