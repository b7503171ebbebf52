//! Where the client's JWTs come from: the [`TokenProvider`] seam, its closure impl, and the
//! `exp` claim read from a token's payload (without verifying it) to know when to ask again.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

/// A boxed, sendable future, as [`TokenProvider::token`] returns it.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + 'a>>;

/// Hands the client a JWT whenever it needs one: before its first connection, before the
/// current token expires (the client then refreshes it in place with an `auth` message), and
/// when the server refused or expired the token it had.
///
/// A closure `Fn() -> impl Future<Output = Result<String, TokenError>>` is a provider.
///
/// # Example
///
/// ```
/// use herald_client::{TokenError, TokenProvider};
///
/// struct Fixed(String);
///
/// impl TokenProvider for Fixed {
///     fn token(&self) -> herald_client::TokenFuture<'_> {
///         Box::pin(async move { Ok(self.0.clone()) })
///     }
/// }
///
/// // The same as a closure:
/// let provider = || async { Ok::<_, TokenError>("eyJ...".to_owned()) };
/// # fn is_provider(_: impl TokenProvider) {}
/// # is_provider(provider);
/// # is_provider(Fixed("t".into()));
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// A fresh token, or why there is none.
    fn token(&self) -> TokenFuture<'_>;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
{
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self())
    }
}

/// Why a [`TokenProvider`] could not hand out a token; the client reports it and retries on
/// its backoff schedule.
///
/// # Example
///
/// ```
/// use herald_client::TokenError;
///
/// let error = TokenError::new("the auth service answered 503");
/// assert_eq!(error.to_string(), "the auth service answered 503");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    /// What went wrong, for people.
    message: String,
}

impl TokenError {
    /// A token error with this message.
    ///
    /// # Example
    ///
    /// ```
    /// let error = herald_client::TokenError::new(format!("status {}", 401));
    /// assert_eq!(error.message(), "status 401");
    /// ```
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(herald_client::TokenError::new("no").message(), "no");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The provider as the driver shares it.
pub(crate) type SharedProvider = Arc<dyn TokenProvider>;

/// The `exp` claim of a JWT, in milliseconds since the Unix epoch, read from its payload
/// without checking the signature (the server does that); `None` when the token is not a JWT
/// or has no numeric `exp`.
///
/// # Example
///
/// ```
/// // A token whose payload is {"sub":"alice","exp":1795323503}.
/// let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5NTMyMzUwM30.sig";
/// assert_eq!(herald_client::token_expiry_ms(token), Some(1_795_323_503_000));
/// assert_eq!(herald_client::token_expiry_ms("not-a-jwt"), None);
/// ```
pub fn token_expiry_ms(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    // `exp` may carry fractions of a second; a negative or absurd one is no expiry we can use.
    (0.0..1e15).contains(&exp).then_some((exp * 1000.0) as u64)
}

/// How long `token` stays valid from `now_ms` (wall clock, ms since the Unix epoch); `None`
/// when its expiry cannot be read, zero when it has passed.
pub(crate) fn remaining_validity(token: &str, now_ms: u64) -> Option<Duration> {
    token_expiry_ms(token).map(|exp| Duration::from_millis(exp.saturating_sub(now_ms)))
}

/// Wall-clock milliseconds since the Unix epoch.
///
/// A JWT's `exp` is wall-clock time, so it can only be compared with the wall clock; the
/// client reads it once per token and turns the answer into a `tokio::time` deadline, so
/// everything it schedules still runs on tokio's (pausable) clock.
#[allow(clippy::disallowed_methods)] // The one wall-clock read, for `exp`; see above.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Decodes base64url, with or without padding; `None` on any other character.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0_u32;
    let mut bits = 0_u32;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_known_vectors() {
        assert_eq!(base64url_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64url_decode("Zg").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64url_decode("Zm8").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64url_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64url_decode("Zm9vYg==").as_deref(), Some(&b"foob"[..]));
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("a b"), None);
    }

    #[test]
    fn expiry_reads_fractional_seconds_and_refuses_garbage() {
        // {"exp":1.5}
        assert_eq!(token_expiry_ms("h.eyJleHAiOjEuNX0.s"), Some(1500));
        // {"exp":"soon"}
        assert_eq!(token_expiry_ms("h.eyJleHAiOiJzb29uIn0.s"), None);
        // {"sub":"a"}
        assert_eq!(token_expiry_ms("h.eyJzdWIiOiJhIn0.s"), None);
        assert_eq!(token_expiry_ms("h.!!!.s"), None);
        assert_eq!(token_expiry_ms(""), None);
    }

    #[test]
    fn remaining_validity_saturates_at_zero() {
        // {"exp":10}
        let token = "h.eyJleHAiOjEwfQ.s";
        assert_eq!(
            remaining_validity(token, 4_000),
            Some(Duration::from_secs(6))
        );
        assert_eq!(remaining_validity(token, 20_000), Some(Duration::ZERO));
        assert_eq!(remaining_validity("x", 0), None);
    }
}
