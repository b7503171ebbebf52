//! JWTs for the tests: valid ones signed with the test secret, and every kind the server must
//! refuse; plus the wall clock their claims are computed from.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::SECRET;

/// A token for `sub` valid for an hour, allowed every topic for reading and publishing, with
/// `extra` claims merged in (they win: `json!({"exp": ..})` sets another expiry).
pub fn token(sub: &str, extra: Value) -> String {
    let mut claims =
        json!({"sub": sub, "exp": now_secs() + 3600, "topics": ["*"], "publish": ["*"]});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    sign(&claims)
}

/// Signs arbitrary claims with the test secret (HS256).
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("test token does not encode: {e}"))
}

/// Tokens the server must refuse, each with a name for the failure message.
pub fn refused_tokens() -> Vec<(&'static str, String)> {
    let now = now_secs();
    let claims = json!({"sub": "mallory", "exp": now + 3600, "topics": ["*"]});
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("HS512 token does not encode: {e}"));
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-of-enough-length!!"),
    )
    .unwrap_or_else(|e| panic!("token does not encode: {e}"));
    let none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    );
    vec![
        ("garbage", "not-a-jwt".to_owned()),
        ("wrong secret", other_secret),
        ("expired", sign(&json!({"sub": "mallory", "exp": now - 60}))),
        ("no exp", sign(&json!({"sub": "mallory"}))),
        ("no sub", sign(&json!({"exp": now + 3600}))),
        ("empty sub", sign(&json!({"sub": "", "exp": now + 3600}))),
        ("numeric sub", sign(&json!({"sub": 42, "exp": now + 3600}))),
        (
            "not yet valid",
            sign(&json!({"sub": "mallory", "exp": now + 3600, "nbf": now + 600})),
        ),
        ("wrong algorithm HS512", hs512),
        ("alg none", none),
        (
            "unknown tier",
            token("mallory", json!({"tier": "platinum"})),
        ),
    ]
}

/// Wall-clock seconds since the Unix epoch, as `exp` and `nbf` count them.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Wall-clock milliseconds since the Unix epoch, as the server's timestamps count them.
// The server under test is a real process on the system clock; tokens must match it.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Base64url without padding, enough to hand-craft JWT segments.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
