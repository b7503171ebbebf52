//! Why a configuration could not be loaded; every message names the setting by variable and key.

use std::{fmt, io, path::PathBuf};

use crate::origin::Origin;

/// Why [`BaseConfig::load`](crate::BaseConfig::load) refused the configuration.
///
/// The messages are meant for an operator reading the one line the server prints before it
/// exits, so each names the setting both ways (`HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes)`),
/// shows the offending value (secrets excepted) and says what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile {
        /// The file given with `--config`.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {source}", .path.display())]
    ParseFile {
        /// The file given with `--config`.
        path: PathBuf,
        /// The parser's report, with line and column.
        source: Box<toml::de::Error>,
    },
    /// The config file sets a key that is not a setting (often a typo).
    #[error("unknown setting `{key}` in config file {}{}", .path.display(), Suggestion(*.suggestion))]
    UnknownKey {
        /// The key as written in the file.
        key: String,
        /// The file given with `--config`.
        path: PathBuf,
        /// The closest known key, when one is close enough to be a likely typo.
        suggestion: Option<&'static str>,
    },
    /// A command-line override names a key that is not a setting.
    #[error("unknown setting `{key}` on the command line{}", Suggestion(*.suggestion))]
    UnknownOverride {
        /// The key as given.
        key: String,
        /// The closest known key, when one is close enough to be a likely typo.
        suggestion: Option<&'static str>,
    },
    /// A value cannot be parsed or lies outside the setting's range.
    #[error("invalid value {value} for {env} ({key}){}: {expected}", .origin.location())]
    InvalidValue {
        /// The environment variable, e.g. `HERALD_MAX_PAYLOAD_BYTES`.
        env: &'static str,
        /// The TOML key, e.g. `max_payload_bytes`.
        key: &'static str,
        /// The value as given, quoted; `<redacted>` for secrets.
        value: String,
        /// The layer the value came from.
        origin: Origin,
        /// What would have been accepted, e.g. `expected a positive integer`.
        expected: String,
    },
    /// Two settings are each valid but contradict each other.
    #[error(
        "invalid value {value} for {env} ({key}): {rule} {other_env} ({other_key}), which is {other_value}"
    )]
    Conflict {
        /// The environment variable of the setting reported as wrong.
        env: &'static str,
        /// The TOML key of the setting reported as wrong.
        key: &'static str,
        /// Its value. Boxed, like `other_value`, to keep the error small.
        value: Box<str>,
        /// The relation that does not hold, e.g. `must be greater than`.
        rule: &'static str,
        /// The environment variable of the other setting.
        other_env: &'static str,
        /// The TOML key of the other setting.
        other_key: &'static str,
        /// The other setting's value.
        other_value: Box<str>,
    },
    /// A setting that another setting depends on is not set.
    #[error("missing {env} ({key}): {reason}")]
    Missing {
        /// The environment variable of the missing setting.
        env: &'static str,
        /// The TOML key of the missing setting.
        key: &'static str,
        /// Why it is needed.
        reason: String,
    },
}

/// Formats `; did you mean `x`?` when there is a suggestion, and nothing otherwise.
struct Suggestion(Option<&'static str>);

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "; did you mean `{name}`?"),
            None => Ok(()),
        }
    }
}
