//! Settings that take one of a fixed set of words: profile, JWT algorithm, user-limit policy, log format.

use std::{fmt, str::FromStr};

/// A set of built-in values that sits between the defaults and the config file.
///
/// The profile is chosen by the highest layer that names it: a command-line override of
/// `profile`, then `HERALD_PROFILE`, then `profile` in the TOML file; `production` otherwise.
/// Anything the file, the environment or the command line sets still wins over the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// Exactly the documented defaults (docs/configuration.md); the profile changes nothing.
    #[default]
    Production,
    /// Faster cleanup and lower per-user limits, for rehearsals:
    /// `max_connections_per_user = 10`, `memory_cleanup_interval_ms = 30000`,
    /// `shutdown_grace_ms = 5000`.
    Staging,
    /// Fast feedback for test suites:
    /// `max_connections_per_user = 5`, `memory_cleanup_interval_ms = 5000`,
    /// `shutdown_grace_ms = 1000`, `heartbeat_interval_ms = 5000`, `stale_timeout_ms = 15000`,
    /// `auth_timeout_ms = 2000`, `history_ttl_ms = 60000`.
    Ci,
}

impl Profile {
    /// Every profile, in documentation order.
    pub const ALL: [Self; 3] = [Self::Production, Self::Staging, Self::Ci];

    /// The name used in `HERALD_PROFILE` and the TOML `profile` key.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Staging => "staging",
            Self::Ci => "ci",
        }
    }

    /// The settings this profile changes, as `(toml key, value)`; durations are in milliseconds.
    pub const fn settings(self) -> &'static [(&'static str, u64)] {
        match self {
            Self::Production => &[],
            Self::Staging => &[
                ("max_connections_per_user", 10),
                ("memory_cleanup_interval_ms", 30_000),
                ("shutdown_grace_ms", 5_000),
            ],
            Self::Ci => &[
                ("max_connections_per_user", 5),
                ("memory_cleanup_interval_ms", 5_000),
                ("shutdown_grace_ms", 1_000),
                ("heartbeat_interval_ms", 5_000),
                ("stale_timeout_ms", 15_000),
                ("auth_timeout_ms", 2_000),
                ("history_ttl_ms", 60_000),
            ],
        }
    }
}

/// The one JWT signature algorithm the gateway accepts; tokens with any other `alg` are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256, verified with `jwt_secret`.
    #[default]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with the PEM key in `jwt_public_key_file`.
    Rs256,
    /// ECDSA P-256 with SHA-256, verified with the PEM key in `jwt_public_key_file`.
    Es256,
}

impl JwtAlgorithm {
    /// Every algorithm, in documentation order.
    pub const ALL: [Self; 3] = [Self::Hs256, Self::Rs256, Self::Es256];

    /// The JOSE name (`HS256`, `RS256`, `ES256`), as written in settings and in a token's `alg`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    /// Whether tokens are verified with a public key file rather than a shared secret.
    pub const fn uses_public_key(self) -> bool {
        matches!(self, Self::Rs256 | Self::Es256)
    }
}

/// What happens when a user opens a connection beyond their limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UserLimitPolicy {
    /// Close the user's oldest connection with 4029 and admit the new one.
    #[default]
    EvictOldest,
    /// Refuse the new connection (HTTP 429 at the handshake, or close 4030 after an `auth` message).
    Reject,
}

impl UserLimitPolicy {
    /// Every policy, in documentation order.
    pub const ALL: [Self; 2] = [Self::EvictOldest, Self::Reject];

    /// The name used in settings (`evict_oldest`, `reject`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EvictOldest => "evict_oldest",
            Self::Reject => "reject",
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Every format, in documentation order.
    pub const ALL: [Self; 2] = [Self::Text, Self::Json];

    /// The name used in settings (`text`, `json`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// A word that is not one of a setting's choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}: expected one of {choices}")]
pub struct ChoiceError {
    /// What was being parsed, e.g. `jwt algorithm`.
    pub what: &'static str,
    /// The word that was given.
    pub value: String,
    /// The accepted words, comma-separated.
    pub choices: String,
}

impl ChoiceError {
    /// The part of the message that says what would have been accepted.
    pub(crate) fn expected(&self) -> String {
        format!("expected one of {}", self.choices)
    }
}

/// Finds the choice whose name equals `value`, ignoring ASCII case.
fn parse_choice<T: Copy>(
    what: &'static str,
    value: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, ChoiceError> {
    all.iter()
        .copied()
        .find(|choice| name(*choice).eq_ignore_ascii_case(value))
        .ok_or_else(|| ChoiceError {
            what,
            value: value.to_owned(),
            choices: all.iter().map(|c| name(*c)).collect::<Vec<_>>().join(", "),
        })
}

/// Implements `FromStr` (ASCII case-insensitive) and `Display` through `ALL` and `as_str`.
macro_rules! choice_impls {
    ($ty:ident, $what:literal) => {
        impl FromStr for $ty {
            type Err = ChoiceError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_choice($what, s, &Self::ALL, Self::as_str)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice_impls!(Profile, "profile");
choice_impls!(JwtAlgorithm, "jwt algorithm");
choice_impls!(UserLimitPolicy, "user limit policy");
choice_impls!(LogFormat, "log format");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_round_trips_through_its_name() {
        for p in Profile::ALL {
            assert_eq!(p.to_string().parse::<Profile>(), Ok(p));
        }
        for a in JwtAlgorithm::ALL {
            assert_eq!(a.to_string().parse::<JwtAlgorithm>(), Ok(a));
        }
        for u in UserLimitPolicy::ALL {
            assert_eq!(u.to_string().parse::<UserLimitPolicy>(), Ok(u));
        }
        for l in LogFormat::ALL {
            assert_eq!(l.to_string().parse::<LogFormat>(), Ok(l));
        }
    }

    #[test]
    fn parsing_ignores_ascii_case() {
        assert_eq!("hs256".parse(), Ok(JwtAlgorithm::Hs256));
        assert_eq!("Reject".parse(), Ok(UserLimitPolicy::Reject));
        assert_eq!("CI".parse(), Ok(Profile::Ci));
    }

    #[test]
    fn unknown_word_lists_the_choices() {
        let err = "HS512".parse::<JwtAlgorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown jwt algorithm "HS512": expected one of HS256, RS256, ES256"#
        );
        let err = "dev".parse::<Profile>().unwrap_err();
        assert_eq!(err.expected(), "expected one of production, staging, ci");
    }

    #[test]
    fn production_profile_changes_nothing() {
        assert!(Profile::Production.settings().is_empty());
    }
}
