//! A string that must never reach a log line, an error message or `--print-config`.

use std::fmt;

/// A secret setting (`jwt_secret`, each of `api_keys`).
///
/// `Debug` and `Display` print `<redacted>`, so a secret can sit inside a struct that is logged
/// with `{:?}` without leaking. Call [`Secret::expose`] at the one place that needs the value.
/// Equality runs in time independent of where two secrets of equal length differ, so comparing
/// a presented API key with [`Secret::matches`] does not leak its prefix through timing.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    /// What `Debug`, `Display` and the redacted TOML print instead of the value.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The secret value itself. Keep the result out of logs and error messages.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the secret, compared in constant time for a given length.
    ///
    /// Only the length of the secret can leak through timing, which is accepted for API keys
    /// and JWT secrets.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose())
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

/// Compares two byte strings without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold back into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
    }

    #[test]
    fn expose_returns_the_value() {
        assert_eq!(Secret::from("hunter2").expose(), "hunter2");
    }

    #[test]
    fn matches_only_the_exact_value() {
        let secret = Secret::new("key-one");
        assert!(secret.matches("key-one"));
        assert!(!secret.matches("key-onf"));
        assert!(!secret.matches("key-on"));
        assert!(!secret.matches("key-one "));
        assert!(!secret.matches(""));
    }

    #[test]
    fn equality_compares_values() {
        assert_eq!(Secret::new("a"), Secret::new("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
    }
}
