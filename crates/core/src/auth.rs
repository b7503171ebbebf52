//! Authentication: the [`Authenticator`] seam, the JWT implementation and the [`Principal`]
//! it produces, with the topic patterns that authorize subscribe and publish.

use std::{fmt, path::Path, sync::Arc};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

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

/// Why a token was refused. Every variant maps to the `unauthorized` error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server has no key to verify tokens with (`HERALD_JWT_SECRET` unset).
    #[error("the server has no JWT key configured")]
    NoKey,
    /// The token is malformed, badly signed, of another algorithm, or lacks a required claim.
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
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token` at wall-clock time `now_ms` (milliseconds since the Unix epoch).
    fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError>;
}

/// Settings of the [`JwtAuthenticator`], taken from the base configuration.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The pinned algorithm; tokens of any other `alg` are refused.
    pub algorithm: Algorithm,
    /// The verification key; `None` refuses every token.
    pub key: Option<DecodingKey>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock leeway applied to `exp` and `nbf`, in milliseconds.
    pub leeway_ms: u64,
    /// Patterns for tokens without a `topics` claim.
    pub default_topics: Vec<String>,
    /// The tiers a `tier` claim may name.
    pub tiers: Vec<String>,
}

impl JwtSettings {
    /// Reads a PEM public key for RS256/ES256.
    pub fn public_key(algorithm: Algorithm, path: &Path) -> Result<DecodingKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = match algorithm {
            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        };
        key.map_err(|e| format!("{} is not a valid PEM public key: {e}", path.display()))
    }
}

/// Verifies JWTs with `jsonwebtoken`, the algorithm pinned by configuration.
pub struct JwtAuthenticator {
    key: Option<DecodingKey>,
    validation: Validation,
    leeway_ms: u64,
    default_topics: Vec<String>,
    tiers: Vec<String>,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("has_key", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The claims Herald reads. Unknown claims are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    nbf: Option<f64>,
    tier: Option<String>,
    topics: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

impl JwtAuthenticator {
    /// Builds the authenticator. The validation comes from `settings` only, never from a token.
    pub fn new(settings: JwtSettings) -> Self {
        let mut validation = Validation::new(settings.algorithm);
        // Herald checks `exp` and `nbf` itself, in milliseconds and against its own clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        // jsonwebtoken only compares `iss` and `aud` when the token carries them, so a
        // configured issuer or audience must also make the claim required.
        match &settings.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        Self {
            key: settings.key,
            validation,
            leeway_ms: settings.leeway_ms,
            default_topics: settings.default_topics,
            tiers: settings.tiers,
        }
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            AuthError::Invalid(match e.kind() {
                ErrorKind::InvalidSignature => "bad signature".to_owned(),
                ErrorKind::InvalidAlgorithm => "algorithm not allowed".to_owned(),
                ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
                ErrorKind::InvalidAudience => "wrong audience".to_owned(),
                _ => e.to_string(),
            })
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty `sub` claim".to_owned()));
        }
        let expires_at_ms = seconds_to_ms(claims.exp);
        if now_ms > expires_at_ms.saturating_add(self.leeway_ms) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && seconds_to_ms(nbf) > now_ms.saturating_add(self.leeway_ms)
        {
            return Err(AuthError::NotYetValid);
        }
        let tier = claims.tier.unwrap_or_else(|| "free".to_owned());
        if !self.tiers.contains(&tier) {
            return Err(AuthError::UnknownTier(tier));
        }
        let user = UserId::new(&claims.sub);
        let patterns = |list: &[String]| list.iter().map(|p| TopicPattern::new(p, &user)).collect();
        Ok(Principal {
            topics: patterns(claims.topics.as_deref().unwrap_or(&self.default_topics)),
            publish: patterns(claims.publish.as_deref().unwrap_or(&[])),
            tier: Arc::from(tier),
            expires_at_ms,
            close_at_ms: expires_at_ms.saturating_add(self.leeway_ms),
            user,
        })
    }
}

/// JWT NumericDate (seconds, possibly fractional) to milliseconds; negative or NaN clamp to 0.
fn seconds_to_ms(seconds: f64) -> u64 {
    // `as` saturates for out-of-range floats and maps NaN to 0, which is what we want here.
    (seconds * 1000.0) as u64
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_700_000_000_000;

    fn authenticator(configure: impl FnOnce(&mut JwtSettings)) -> JwtAuthenticator {
        let mut settings = JwtSettings {
            algorithm: Algorithm::HS256,
            key: Some(DecodingKey::from_secret(SECRET)),
            issuer: None,
            audience: None,
            leeway_ms: 0,
            default_topics: vec!["public:*".to_owned()],
            tiers: ["free", "early", "mid", "enterprise"]
                .map(String::from)
                .to_vec(),
        };
        configure(&mut settings);
        JwtAuthenticator::new(settings)
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("test token encodes")
    }

    #[track_caller]
    fn check(claims: serde_json::Value, expected: Result<(), AuthError>) {
        let got = authenticator(|_| {})
            .authenticate(&token(claims), NOW)
            .map(|_| ());
        assert_eq!(got, expected);
    }

    #[test]
    fn valid_token_yields_principal_with_substituted_patterns() {
        let p = authenticator(|_| {})
            .authenticate(
                &token(
                    json!({"sub": "alice", "exp": NOW / 1000 + 60, "tier": "mid",
                    "topics": ["user:{sub}", "chat:*"], "publish": ["chat:*"]}),
                ),
                NOW,
            )
            .expect("valid token");
        assert_eq!(p.user.as_str(), "alice");
        assert_eq!(&*p.tier, "mid");
        assert!(p.may_subscribe("user:alice"));
        assert!(!p.may_subscribe("user:bob"));
        assert!(p.may_subscribe("chat:1"));
        assert!(p.may_publish("chat:1"));
        assert!(!p.may_publish("user:alice"));
        assert_eq!(p.expires_at_ms, (NOW / 1000 + 60) * 1000);
    }

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
    fn absent_topics_claim_means_default_topics_and_no_publish() {
        let p = authenticator(|_| {})
            .authenticate(&token(json!({"sub": "a", "exp": NOW / 1000 + 60})), NOW)
            .expect("valid token");
        assert_eq!(&*p.tier, "free");
        assert!(p.may_subscribe("public:news"));
        assert!(!p.may_subscribe("private"));
        assert!(!p.may_publish("public:news"));
    }

    #[test]
    fn expiry_and_not_before_are_checked_in_milliseconds() {
        check(
            json!({"sub": "a", "exp": NOW / 1000 - 1}),
            Err(AuthError::Expired),
        );
        check(json!({"sub": "a", "exp": NOW / 1000}), Ok(()));
        check(
            json!({"sub": "a", "exp": NOW / 1000 + 9, "nbf": NOW / 1000 + 5}),
            Err(AuthError::NotYetValid),
        );
        let lenient = authenticator(|s| s.leeway_ms = 2_000);
        let expired_a_second_ago = token(json!({"sub": "a", "exp": NOW / 1000 - 1}));
        assert!(lenient.authenticate(&expired_a_second_ago, NOW).is_ok());
    }

    #[test]
    fn missing_claims_and_unknown_tiers_are_refused() {
        assert!(matches!(
            authenticator(|_| {}).authenticate(&token(json!({"exp": NOW / 1000 + 60})), NOW),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            authenticator(|_| {}).authenticate(&token(json!({"sub": "a"})), NOW),
            Err(AuthError::Invalid(_))
        ));
        check(
            json!({"sub": "a", "exp": NOW / 1000 + 60, "tier": "gold"}),
            Err(AuthError::UnknownTier("gold".to_owned())),
        );
    }

    #[test]
    fn other_algorithms_and_bad_signatures_are_refused() {
        let claims = json!({"sub": "a", "exp": NOW / 1000 + 60});
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        assert_eq!(
            authenticator(|_| {}).authenticate(&hs512, NOW),
            Err(AuthError::Invalid("algorithm not allowed".to_owned()))
        );
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"x"),
        )
        .expect("encodes");
        assert_eq!(
            authenticator(|_| {}).authenticate(&forged, NOW),
            Err(AuthError::Invalid("bad signature".to_owned()))
        );
        // alg=none: a header and payload with an empty signature.
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            token(claims).split('.').nth(1).expect("payload")
        );
        assert!(authenticator(|_| {}).authenticate(&none, NOW).is_err());
        assert_eq!(
            authenticator(|s| s.key = None).authenticate("x", NOW),
            Err(AuthError::NoKey)
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let strict = authenticator(|s| {
            s.issuer = Some("herald-tests".to_owned());
            s.audience = Some("app".to_owned());
        });
        let exp = NOW / 1000 + 60;
        let good = token(json!({"sub": "a", "exp": exp, "iss": "herald-tests", "aud": "app"}));
        assert!(strict.authenticate(&good, NOW).is_ok());
        let wrong_iss = token(json!({"sub": "a", "exp": exp, "iss": "other", "aud": "app"}));
        assert_eq!(
            strict.authenticate(&wrong_iss, NOW),
            Err(AuthError::Invalid("wrong issuer".to_owned()))
        );
        let no_aud = token(json!({"sub": "a", "exp": exp, "iss": "herald-tests"}));
        assert!(strict.authenticate(&no_aud, NOW).is_err());
        // Without a configured audience, a token that carries one is still accepted.
        let with_aud = token(json!({"sub": "a", "exp": exp, "aud": "anything"}));
        assert!(authenticator(|_| {}).authenticate(&with_aud, NOW).is_ok());
    }
}
