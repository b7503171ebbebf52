//! Tests of the example's pure parts: the demo token, the query parsing, the run's events.

use herald_client::protocol::EventName;
use herald_utils::{Clock as _, SystemClock};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{PAGE, TOKEN_LIFETIME, mint_token, run_steps, user_of, ws_url_of};

/// The claims Herald reads.
#[derive(Deserialize)]
struct Claims {
    /// The user.
    sub: String,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
    /// Topic patterns.
    topics: Vec<String>,
}

#[test]
fn the_minted_token_decodes_with_the_secret_and_names_the_user() {
    let now = SystemClock.unix_ms() / 1000;
    let token = mint_token("s3cret", "alice", now).unwrap_or_else(|e| panic!("mint: {e}"));
    let decoded = jsonwebtoken::decode::<Claims>(
        &token,
        &DecodingKey::from_secret(b"s3cret"),
        &Validation::new(Algorithm::HS256),
    )
    .unwrap_or_else(|e| panic!("decode: {e}"));
    assert_eq!(decoded.claims.sub, "alice");
    assert_eq!(decoded.claims.exp, now + TOKEN_LIFETIME.as_secs());
    assert!(decoded.claims.topics.is_empty());
    let wrong = jsonwebtoken::decode::<Claims>(
        &token,
        &DecodingKey::from_secret(b"other"),
        &Validation::new(Algorithm::HS256),
    );
    assert!(
        wrong.is_err(),
        "a token must not verify with another secret"
    );
}

#[test]
fn users_come_from_the_query_and_odd_names_are_refused() {
    assert_eq!(user_of(None).as_deref(), Ok("alice"));
    assert_eq!(user_of(Some("x=1&user=bob_2")).as_deref(), Ok("bob_2"));
    assert!(user_of(Some("user=a%2Fb")).is_err());
    assert!(user_of(Some(&format!("user={}", "a".repeat(65)))).is_err());
}

#[test]
fn a_run_sends_the_five_critical_events_in_order() {
    let names: Vec<EventName> = run_steps("r1").iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            EventName::AgentStarted,
            EventName::AgentThinking,
            EventName::ToolExecuting,
            EventName::ToolCompleted,
            EventName::AgentCompleted,
        ]
    );
    assert!(
        run_steps("r1")
            .iter()
            .all(|(_, data)| data["runId"] == "r1")
    );
}

#[test]
fn the_websocket_url_follows_the_http_url_and_the_page_has_its_placeholder() {
    assert_eq!(
        ws_url_of("http://127.0.0.1:8080/"),
        "ws://127.0.0.1:8080/ws"
    );
    assert_eq!(
        ws_url_of("https://rt.example.com"),
        "wss://rt.example.com/ws"
    );
    assert!(PAGE.contains("__HERALD_WS_URL__"));
}
