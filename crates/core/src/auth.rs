//! Authentication: the [`Authenticator`] seam and the [`Principal`] it produces, with the topic
//! patterns that authorize subscribe and publish.
//!
//! Core never sees how a token is verified (JWT lives with the service); it hands the token and
//! the wall-clock time of its own clock to the authenticator and keeps the principal.

use std::sync::Arc;

use crate::ids::UserId;

/// Who a token says the client is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub user: UserId,
    /// The quota tier (`free` when the token has no `tier` claim).
    pub tier: Arc<str>,
    /// Patterns of topics the user may subscribe to.
    pub topics: Vec<TopicPattern>,
    /// Patterns of topics the user may publish to from the client.
    pub publish: Vec<TopicPattern>,
    /// `exp`, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// When the session must end: `exp` plus the clock leeway, in milliseconds since the epoch.
    pub close_at_ms: u64,
}

impl Principal {
    /// Whether the user may subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| p.matches(topic))
    }

    /// Whether the user may publish to `topic` from the client.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }
}

/// A topic pattern from a token's `topics`/`publish` claim or `HERALD_DEFAULT_TOPICS`.
///
/// An exact topic, a prefix ending in `*` (`bill:*`), or `*` alone for every topic. `{sub}` in a
/// pattern stands for the user's own id and is substituted when the pattern is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Every topic.
    Any,
    /// Topics starting with this prefix.
    Prefix(Box<str>),
    /// Exactly this topic.
    Exact(Box<str>),
}

impl TopicPattern {
    /// Builds a pattern for `user`, substituting `{sub}`.
    ///
    /// The kind of pattern is decided before the substitution, so a `*` inside the user id is
    /// a plain character: a `sub` of `*` must not turn `user:{sub}` into `user:*`.
    pub fn new(pattern: &str, user: &UserId) -> Self {
        let substitute = |text: &str| text.replace("{sub}", user.as_str());
        if pattern == "*" {
            Self::Any
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(substitute(prefix).into())
        } else {
            Self::Exact(substitute(pattern).into())
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => topic.starts_with(&**prefix),
            Self::Exact(exact) => topic == &**exact,
        }
    }
}

/// Why a token was refused. Every variant maps to the `unauthorized` error code (HTTP 401 at
/// the handshake, an `error` reply and close 4001 after an `auth` message), and its message is
/// what the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server has no key to verify tokens with (e.g. `HERALD_JWT_SECRET` unset), so it
    /// refuses every token.
    #[error("the server has no JWT key configured")]
    NoKey,
    /// The token is malformed, badly signed, of another algorithm, or lacks or has a wrong
    /// required claim; the text says which, for the client (e.g. `bad signature`,
    /// `wrong issuer`, ``empty `sub` claim``).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` (plus leeway) is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` (minus leeway) is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// The `tier` claim names no tier of the quota table.
    #[error("unknown tier `{0}`")]
    UnknownTier(String),
}

/// Turns a bearer token into a [`Principal`].
///
/// Called at the handshake (token in the header or query) and for every `auth` message
/// (first authentication and refresh), on the caller's thread: it must not block on I/O.
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token` at wall-clock time `now_ms` (milliseconds since the Unix epoch, read
    /// from the gateway's [`Clock`](herald_utils::Clock)); expiry and not-before are judged
    /// against `now_ms`, never against the system clock.
    fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_in_the_user_id_does_not_widen_sub_patterns() {
        for sub in ["*", "ali*", "user:*"] {
            let user = UserId::new(sub);
            let own = TopicPattern::new("user:{sub}", &user);
            assert!(!own.matches("user:alice"), "{sub}");
            assert!(!own.matches("user:ali"), "{sub}");
            let prefix = TopicPattern::new("inbox:{sub}:*", &user);
            assert!(!prefix.matches("inbox:alice:1"), "{sub}");
            assert!(prefix.matches(&format!("inbox:{sub}:1")), "{sub}");
        }
        assert_eq!(
            TopicPattern::new("{sub}", &UserId::new("*")),
            TopicPattern::Exact("*".into())
        );
    }

    #[test]
    fn principals_may_use_exactly_the_topics_their_patterns_match() {
        let alice = UserId::new("alice");
        let principal = Principal {
            user: alice.clone(),
            tier: Arc::from("free"),
            topics: vec![
                TopicPattern::new("user:{sub}", &alice),
                TopicPattern::new("chat:*", &alice),
            ],
            publish: vec![TopicPattern::new("chat:*", &alice)],
            expires_at_ms: 0,
            close_at_ms: 0,
        };
        assert!(principal.may_subscribe("user:alice"));
        assert!(principal.may_subscribe("chat:1"));
        assert!(!principal.may_subscribe("user:bob"));
        assert!(principal.may_publish("chat:1"));
        assert!(!principal.may_publish("user:alice"));
        assert!(TopicPattern::new("*", &alice).matches("anything"));
    }
}
