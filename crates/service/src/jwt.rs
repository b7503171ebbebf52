//! The JWT adapter: [`JwtAuthenticator`] implements core's `Authenticator` seam with
//! `jsonwebtoken`, the algorithm and key pinned by configuration.

use std::{
    cell::RefCell,
    fmt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use herald_config::{BaseConfig, JwtAlgorithm};
use herald_core::{AuthError, Authenticator, Principal, TopicPattern, UserId};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    crypto::{JwtVerifier, aws_lc::DEFAULT_PROVIDER},
};
use serde::Deserialize;

/// Verifies JWTs with `jsonwebtoken`, the algorithm pinned by configuration.
///
/// A token is taken apart once: its header is read for `alg` alone, its signature checked over
/// the encoded header and payload, and only then its payload decoded, once, into [`Claims`],
/// which also carries `iss` and `aud`. (`jsonwebtoken::decode` reads the header twice and the
/// payload twice, once for the caller's claims and once for its own validation; its
/// `crypto::verify` builds a verifier from the key for every token, an HMAC key schedule or a
/// public key parse; its `decode_header` fills every JOSE field. On the connect path those
/// were most of the token's cost after the signature.) The verifier is built once per thread
/// that verifies ([`with_verifier`]).
pub(crate) struct JwtAuthenticator {
    /// Tells this authenticator's verifiers from another's in a thread's cache.
    id: u64,
    key: Option<DecodingKey>,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_ms: u64,
    default_topics: Vec<String>,
    /// The tiers a `tier` claim may name, shared by every principal of the tier.
    tiers: Vec<Arc<str>>,
}

/// Settings of the [`JwtAuthenticator`], taken from the base configuration.
#[derive(Debug, Clone)]
pub(crate) struct JwtSettings {
    /// The pinned algorithm; tokens of any other `alg` are refused.
    pub(crate) algorithm: Algorithm,
    /// The verification key; `None` refuses every token.
    pub(crate) key: Option<DecodingKey>,
    /// Required `iss`, when set.
    pub(crate) issuer: Option<String>,
    /// Required `aud`, when set.
    pub(crate) audience: Option<String>,
    /// Clock leeway applied to `exp` and `nbf`, in milliseconds.
    pub(crate) leeway_ms: u64,
    /// Patterns for tokens without a `topics` claim.
    pub(crate) default_topics: Vec<String>,
    /// The tiers a `tier` claim may name.
    pub(crate) tiers: Vec<String>,
}

/// Why the verification key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The PEM file cannot be read.
    #[error("HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file): cannot read {path}")]
    Read {
        /// The configured path.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not a PEM public key of the configured algorithm.
    #[error(
        "HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file): {path} is not a valid PEM public key"
    )]
    Invalid {
        /// The configured path.
        path: String,
        /// What `jsonwebtoken` made of it.
        source: jsonwebtoken::errors::Error,
    },
}

impl JwtSettings {
    /// The settings of `config`: the algorithm, the secret or the public key file (read now),
    /// the issuer, audience, leeway, default topics and tiers.
    pub(crate) fn from_config(config: &BaseConfig) -> Result<Self, KeyError> {
        let algorithm = match config.jwt_algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        };
        let key = if config.jwt_algorithm.uses_public_key() {
            config
                .jwt_public_key_file
                .as_deref()
                .map(|path| public_key(algorithm, path))
                .transpose()?
        } else {
            config
                .jwt_secret
                .as_ref()
                .map(|secret| DecodingKey::from_secret(secret.expose().as_bytes()))
        };
        Ok(Self {
            algorithm,
            key,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_ms: u64::try_from(config.jwt_leeway.as_millis()).unwrap_or(u64::MAX),
            default_topics: config.default_topics.clone(),
            tiers: config
                .tiers
                .iter()
                .map(|(name, _)| name.to_owned())
                .collect(),
        })
    }
}

/// Reads a PEM public key for RS256 or ES256.
fn public_key(algorithm: Algorithm, path: &Path) -> Result<DecodingKey, KeyError> {
    let shown = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown(),
        source,
    })?;
    let key = match algorithm {
        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_rsa_pem(&pem),
    };
    key.map_err(|source| KeyError::Invalid {
        path: shown(),
        source,
    })
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithm", &self.algorithm)
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
    iss: Option<String>,
    aud: Option<Audience>,
}

/// The `aud` claim: one audience or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// The JOSE header fields Herald reads: only `alg`, checked against the pinned algorithm.
#[derive(Deserialize)]
struct JoseHeader {
    alg: Algorithm,
}

/// Where the next [`JwtAuthenticator`] takes its id.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's verifier, with the id of the authenticator it was built for. The
    /// verifiers `jsonwebtoken` builds are neither `Send` nor `Sync`, so each thread that
    /// verifies keeps its own; a runtime has one authenticator, so each thread builds one
    /// verifier in the process's life (tests that build several rebuild on a change).
    static VERIFIER: RefCell<Option<(u64, Box<dyn JwtVerifier>)>> = const { RefCell::new(None) };
}

/// Runs `check` with this thread's verifier for the authenticator `id`, of `key` and
/// `algorithm`, built first when the thread has none for it.
fn with_verifier<R>(
    id: u64,
    key: &DecodingKey,
    algorithm: Algorithm,
    check: impl FnOnce(&dyn JwtVerifier) -> R,
) -> Result<R, AuthError> {
    VERIFIER.with_borrow_mut(|cached| {
        let verifier = match cached {
            Some((cached_id, verifier)) if *cached_id == id => verifier,
            _ => {
                // Fails only for a key of another family than the algorithm, which loading
                // the configuration rules out.
                let verifier = (DEFAULT_PROVIDER.verifier_factory)(&algorithm, key)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?;
                &mut cached.insert((id, verifier)).1
            }
        };
        Ok(check(verifier.as_ref()))
    })
}

impl JwtAuthenticator {
    /// Builds the authenticator. What is accepted comes from `settings` only, never from a
    /// token.
    pub(crate) fn new(settings: JwtSettings) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key: settings.key,
            algorithm: settings.algorithm,
            issuer: settings.issuer,
            audience: settings.audience,
            leeway_ms: settings.leeway_ms,
            default_topics: settings.default_topics,
            tiers: settings
                .tiers
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
        }
    }

    /// Checks the token's header and signature, then decodes its claims (once) and checks the
    /// configured issuer and audience. Herald checks `exp` and `nbf` itself, in milliseconds
    /// and against its own clock.
    fn verify(&self, token: &str, key: &DecodingKey) -> Result<Claims, AuthError> {
        let invalid = |message: &str| AuthError::Invalid(message.to_owned());
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| invalid("not a JWT (header.payload.signature)"))?;
        let (header, _payload) = message
            .rsplit_once('.')
            .ok_or_else(|| invalid("not a JWT (header.payload.signature)"))?;
        let header: JoseHeader = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|e| AuthError::Invalid(format!("header: {e}")))
            .and_then(|json| {
                serde_json::from_slice(&json)
                    .map_err(|e| AuthError::Invalid(format!("header: {e}")))
            })?;
        if header.alg != self.algorithm {
            return Err(invalid("algorithm not allowed"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| invalid("bad signature"))?;
        let verified = with_verifier(self.id, key, self.algorithm, |verifier| {
            verifier.verify(message.as_bytes(), &signature).is_ok()
        })?;
        if !verified {
            return Err(invalid("bad signature"));
        }
        let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(invalid("wrong issuer"));
        }
        if let Some(audience) = &self.audience
            && !claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.contains(audience))
        {
            return Err(invalid("wrong audience"));
        }
        Ok(claims)
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoKey)?;
        let claims = self.verify(token, key)?;
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
        let tier_name = claims.tier.as_deref().unwrap_or("free");
        let Some(tier) = self.tiers.iter().find(|t| ***t == *tier_name) else {
            return Err(AuthError::UnknownTier(tier_name.to_owned()));
        };
        let user = UserId::new(&claims.sub);
        let patterns = |list: &[String]| list.iter().map(|p| TopicPattern::new(p, &user)).collect();
        Ok(Principal {
            topics: patterns(claims.topics.as_deref().unwrap_or(&self.default_topics)),
            publish: patterns(claims.publish.as_deref().unwrap_or(&[])),
            tier: Arc::clone(tier),
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

    /// A configuration loaded from `env` alone.
    fn config(env: &[(&str, &str)]) -> BaseConfig {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        BaseConfig::load(herald_config::Sources {
            file: None,
            env,
            overrides: Vec::new(),
        })
        .expect("test configuration loads")
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
            json!({"sub": "", "exp": NOW / 1000 + 60}),
            Err(AuthError::Invalid("empty `sub` claim".to_owned())),
        );
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
    fn authenticators_with_other_keys_on_one_thread_never_share_a_verifier() {
        // The thread's cached verifier belongs to one authenticator: used in turns on the same
        // thread, each accepts its own tokens and refuses the other's.
        let other_secret: &[u8] = b"another-secret";
        let ours = authenticator(|_| {});
        let theirs = authenticator(|s| s.key = Some(DecodingKey::from_secret(other_secret)));
        let claims = json!({"sub": "a", "exp": NOW / 1000 + 60});
        let signed = |secret: &[u8]| {
            encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .expect("encodes")
        };
        let (for_ours, for_theirs) = (signed(SECRET), signed(other_secret));
        let bad = Err(AuthError::Invalid("bad signature".to_owned()));
        for _ in 0..2 {
            assert!(ours.authenticate(&for_ours, NOW).is_ok());
            assert_eq!(theirs.authenticate(&for_ours, NOW).map(|_| ()), bad);
            assert!(theirs.authenticate(&for_theirs, NOW).is_ok());
            assert_eq!(ours.authenticate(&for_theirs, NOW).map(|_| ()), bad);
        }
    }

    #[test]
    fn malformed_tokens_are_refused_with_what_is_wrong() {
        let valid = token(json!({"sub": "a", "exp": NOW / 1000 + 60}));
        let (_, payload_and_signature) = valid.split_once('.').expect("three parts");
        let refused = |token: &str| match authenticator(|_| {}).authenticate(token, NOW) {
            Err(AuthError::Invalid(message)) => message,
            other => panic!("{token}: {other:?}"),
        };
        assert_eq!(refused("abc"), "not a JWT (header.payload.signature)");
        assert_eq!(refused("abc.def"), "not a JWT (header.payload.signature)");
        assert!(refused(&format!("!!.{payload_and_signature}")).starts_with("header: "));
        // `{"typ":"JWT"}`: no `alg`.
        assert!(refused(&format!("eyJ0eXAiOiJKV1QifQ.{payload_and_signature}")).contains("alg"));
        let (message, _) = valid.rsplit_once('.').expect("three parts");
        assert_eq!(refused(&format!("{message}.!!")), "bad signature");
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
        let no_iss = token(json!({"sub": "a", "exp": exp, "aud": "app"}));
        assert_eq!(
            strict.authenticate(&no_iss, NOW),
            Err(AuthError::Invalid("wrong issuer".to_owned()))
        );
        let listed =
            token(json!({"sub": "a", "exp": exp, "iss": "herald-tests", "aud": ["other", "app"]}));
        assert!(strict.authenticate(&listed, NOW).is_ok());
        let elsewhere =
            token(json!({"sub": "a", "exp": exp, "iss": "herald-tests", "aud": ["other"]}));
        assert_eq!(
            strict.authenticate(&elsewhere, NOW),
            Err(AuthError::Invalid("wrong audience".to_owned()))
        );
        // Not three parts, or a payload that is not base64 JSON: refused, never a panic.
        for broken in ["", "abc", "a.b", "a.b.c", &format!("{good}.x")] {
            assert!(strict.authenticate(broken, NOW).is_err(), "{broken}");
        }
        // Without a configured audience, a token that carries one is still accepted.
        let with_aud = token(json!({"sub": "a", "exp": exp, "aud": "anything"}));
        assert!(authenticator(|_| {}).authenticate(&with_aud, NOW).is_ok());
    }

    #[test]
    fn settings_come_from_the_configuration() {
        let settings = JwtSettings::from_config(&config(&[
            (
                "HERALD_JWT_SECRET",
                "a-secret-of-at-least-thirty-two-bytes!",
            ),
            ("HERALD_JWT_ISSUER", "iss"),
            ("HERALD_JWT_AUDIENCE", "aud"),
            ("HERALD_JWT_LEEWAY_MS", "1500"),
            ("HERALD_DEFAULT_TOPICS", "public:*, news"),
        ]))
        .expect("settings");
        assert_eq!(settings.algorithm, Algorithm::HS256);
        assert!(settings.key.is_some());
        assert_eq!(settings.issuer.as_deref(), Some("iss"));
        assert_eq!(settings.audience.as_deref(), Some("aud"));
        assert_eq!(settings.leeway_ms, 1500);
        assert_eq!(settings.default_topics, ["public:*", "news"]);
        assert!(
            settings.tiers.iter().any(|t| t == "free"),
            "{:?}",
            settings.tiers
        );
    }

    #[test]
    fn an_unreadable_or_invalid_key_file_names_the_setting() {
        let missing = JwtSettings::from_config(&config(&[
            ("HERALD_JWT_ALGORITHM", "RS256"),
            ("HERALD_JWT_PUBLIC_KEY_FILE", "/nonexistent/herald-key.pem"),
        ]))
        .expect_err("no such file");
        assert!(matches!(missing, KeyError::Read { .. }), "{missing}");
        assert!(
            missing
                .to_string()
                .starts_with("HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file): cannot read"),
            "{missing}"
        );

        let dir = std::env::temp_dir().join(format!("herald-jwt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("not-a-key.pem");
        std::fs::write(&path, "not a PEM file").expect("write");
        let invalid = JwtSettings::from_config(&config(&[
            ("HERALD_JWT_ALGORITHM", "ES256"),
            (
                "HERALD_JWT_PUBLIC_KEY_FILE",
                path.to_str().expect("utf-8 path"),
            ),
        ]))
        .expect_err("not a key");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(invalid, KeyError::Invalid { .. }), "{invalid}");
        assert!(
            invalid
                .to_string()
                .contains("is not a valid PEM public key"),
            "{invalid}"
        );
    }

    #[test]
    fn pem_public_keys_verify_tokens_of_their_algorithm() {
        let (private_pem, public_pem) = (ES256_PRIVATE_PEM, ES256_PUBLIC_PEM);
        let dir = std::env::temp_dir().join(format!("herald-jwt-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("public.pem");
        std::fs::write(&path, public_pem).expect("write");
        let settings = JwtSettings::from_config(&config(&[
            ("HERALD_JWT_ALGORITHM", "ES256"),
            (
                "HERALD_JWT_PUBLIC_KEY_FILE",
                path.to_str().expect("utf-8 path"),
            ),
        ]));
        let _ = std::fs::remove_dir_all(&dir);
        let verifier = JwtAuthenticator::new(settings.expect("settings"));
        let claims = json!({"sub": "a", "exp": NOW / 1000 + 60});
        let signed = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("private key"),
        )
        .expect("encodes");
        assert_eq!(
            verifier.authenticate(&signed, NOW).map(|p| p.user),
            Ok(UserId::new("a"))
        );
        // An HS256 token is refused, whatever its secret.
        assert_eq!(
            verifier.authenticate(&token(claims), NOW),
            Err(AuthError::Invalid("algorithm not allowed".to_owned()))
        );
    }

    /// A P-256 key pair made for these tests (`openssl ecparam -name prime256v1`).
    const ES256_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeJDXd2MQmCVrdP1H
IRUJl8hIcTEEanW8FdWyA/PAWB2hRANCAATKwywzWas47RonB7Z7/Y7iMoOsuVRG
+Bb41a01SrFqukdixFOUN95FoVy+kMIqsrVlSGuenb+6dcQu2Q3iPIuQ
-----END PRIVATE KEY-----
";
    const ES256_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEysMsM1mrOO0aJwe2e/2O4jKDrLlU
RvgW+NWtNUqxarpHYsRTlDfeRaFcvpDCKrK1ZUhrnp2/unXELtkN4jyLkA==
-----END PUBLIC KEY-----
";
}
