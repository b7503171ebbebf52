//! Gateway behaviour tests without sockets: sessions fed text frames, outboxes read directly,
//! time driven by a `ManualClock`.
//!
//! Each area has one `check_*` helper, the one place that drives the gateway for it, and tests
//! that are one call to it with the client's frames and what the client must see. Frames are
//! compared with [`assert_frames`], which matches JSON *patterns*: a pattern object names only
//! the keys that matter (others are ignored), `null` means "absent", and the string `"<any>"`
//! matches any value that is present.

use std::{
    collections::BTreeSet,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use herald_config::{BaseConfig, RuntimeConfig};
use herald_protocol::{CloseCode, ServerMessage, Topic};
use herald_utils::{
    ManualClock,
    Priority::{self, Critical, High, Low, Normal},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Value, json, value::RawValue};

use crate::{
    ConnectionId, Emitter, EventOutcome, EventTarget, Gateway, GatewayError, GatewayParts,
    GatewaySettings, GatewayStats, InMemoryHistoryStore, InMemoryPreferenceStore, JwtAuthenticator,
    JwtSettings, LimitExceeded, LimitPolicy, PublishOutcome, Refusal, Session, ThreadId, UserId,
    tests::Tick::{Closed, Open, Pings, Text, Touch, Wait},
    unix_ms,
};

/// The HS256 secret the test gateway verifies tokens with.
const SECRET: &[u8] = b"herald-core-tests-secret";

/// `exp` of the default test tokens (2100-01-01), so `expiresAt` is known in advance.
const FAR_EXP: u64 = 4_102_444_800;

/// Matches any present value in a frame pattern.
const ANY: &str = "<any>";

/// A gateway on a manual clock with the default configuration, plus the clock to move it.
struct Harness {
    gateway: Gateway,
    clock: ManualClock,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A harness whose settings `configure` adjusted first.
    fn with(configure: impl FnOnce(&mut GatewaySettings)) -> Self {
        let base = BaseConfig::default();
        let mut settings = GatewaySettings::from_config(&base);
        configure(&mut settings);
        let clock = ManualClock::new();
        let authenticator = JwtAuthenticator::new(JwtSettings {
            algorithm: Algorithm::HS256,
            key: Some(DecodingKey::from_secret(SECRET)),
            issuer: None,
            audience: None,
            leeway_ms: 0,
            default_topics: Vec::new(),
            tiers: base.tiers.iter().map(|(name, _)| name.to_owned()).collect(),
        });
        let gateway = Gateway::new(GatewayParts {
            settings,
            runtime: Arc::new(RuntimeConfig::new(&base)),
            authenticator: Arc::new(authenticator),
            preferences: Arc::new(InMemoryPreferenceStore::new(1_000)),
            history: Arc::new(InMemoryHistoryStore::new(
                base.history_size,
                300_000,
                base.history_max_bytes,
            )),
            clock: Arc::new(clock.clone()),
        });
        Self { gateway, clock }
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    /// A connection that has not authenticated yet.
    fn anonymous(&self) -> Session {
        self.open(None, None)
    }

    fn open(&self, token: Option<&str>, thread: Option<&str>) -> Session {
        let admission = self
            .gateway
            .admit(token, thread)
            .expect("connection admitted");
        self.gateway.open(admission)
    }

    /// A connection of `user` authenticated at the handshake, its `connected` frame consumed.
    fn connect(&self, user: &str) -> Session {
        self.connect_on(user, None)
    }

    /// Like [`connect`](Self::connect), bound to `thread`.
    fn connect_on(&self, user: &str, thread: Option<&str>) -> Session {
        let session = self.open(Some(&token(user)), thread);
        assert_frames(
            &frames(&session),
            &json!([{"type": "connected", "data": {"userId": user}}]),
        );
        session
    }

    fn publish(&self, topic_name: &str, data: &str, priority: Priority) -> PublishOutcome {
        self.gateway
            .publish(&topic(topic_name), &raw(data), priority, None)
            .expect("gateway accepts publications")
    }

    fn stats(&self) -> GatewayStats {
        self.gateway.stats()
    }
}

/// A token for `user` expiring at [`FAR_EXP`], allowed to subscribe to `user:{sub}`, `chat:*`
/// and `news`, and to publish to `chat:*`.
fn token(user: &str) -> String {
    token_with(user, &json!({}))
}

/// Like [`token`], with the claims of `extra` replacing the defaults (`null` removes a claim).
fn token_with(user: &str, extra: &Value) -> String {
    let mut claims = json!({
        "sub": user,
        "exp": FAR_EXP,
        "topics": ["user:{sub}", "chat:*", "news"],
        "publish": ["chat:*"],
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            if value.is_null() {
                claims.remove(key);
            } else {
                claims.insert(key.clone(), value.clone());
            }
        }
    }
    sign(&claims, SECRET)
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("test token encodes")
}

/// Wall-clock seconds now, for tokens whose expiry matters.
fn now_s() -> u64 {
    unix_ms() / 1000
}

/// Builds the token a placeholder stands for.
type MakeToken = fn() -> String;

/// Replaces the token placeholders of a scripted client frame.
///
/// `{alice}`, `{bob}`: valid tokens; `{alice-renewed}`: alice, expiring a minute after
/// [`FAR_EXP`]; `{expired}`: alice's, expired a minute ago; `{forged}`: alice's, signed with
/// another secret; `{gold}`: alice's, with an unknown tier; `{no-publish}`, `{no-topics}`,
/// `{everything}`: alice's without a `publish` claim, without a `topics` claim, and with `*`
/// for both.
fn expand(frame: &str) -> String {
    let placeholders: [(&str, MakeToken); 9] = [
        ("{alice}", || token("alice")),
        ("{bob}", || token("bob")),
        ("{alice-renewed}", || {
            token_with("alice", &json!({"exp": FAR_EXP + 60}))
        }),
        ("{expired}", || {
            token_with("alice", &json!({"exp": now_s() - 60}))
        }),
        ("{forged}", || {
            sign(&json!({"sub": "alice", "exp": FAR_EXP}), b"another secret")
        }),
        ("{gold}", || token_with("alice", &json!({"tier": "gold"}))),
        ("{no-publish}", || {
            token_with("alice", &json!({"publish": null}))
        }),
        ("{no-topics}", || {
            token_with("alice", &json!({"topics": null}))
        }),
        ("{everything}", || {
            token_with("alice", &json!({"topics": ["*"], "publish": ["*"]}))
        }),
    ];
    let mut frame = frame.to_owned();
    for (placeholder, make) in placeholders {
        if frame.contains(placeholder) {
            frame = frame.replace(placeholder, &make());
        }
    }
    frame
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid test topic")
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid test JSON")
}

/// Every frame queued to the session, in the order the transport would write them, as text.
fn raw_frames(session: &Session) -> Vec<String> {
    session
        .connection()
        .outbox()
        .take_all()
        .iter()
        .map(|frame| String::from_utf8(frame.as_bytes().to_vec()).expect("frames are UTF-8"))
        .collect()
}

/// Every frame queued to the session, checked to decode as a `ServerMessage`.
fn frames(session: &Session) -> Vec<Value> {
    raw_frames(session)
        .iter()
        .map(|text| {
            if let Err(error) = ServerMessage::decode(text) {
                panic!("not a server message ({error}): {text}");
            }
            serde_json::from_str(text).expect("frames are JSON")
        })
        .collect()
}

/// Performs the operations queued so far (client publishes) as the service's fan-out worker
/// does, by polling [`Gateway::run_operations`] until it waits for more work.
fn run_operations(gateway: &Gateway) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut worker = std::pin::pin!(gateway.run_operations());
    // Each poll performs one batch of operations (then yields) or finds the queue empty and
    // parks; a test queues far fewer operations than a few batches.
    for _ in 0..8 {
        if worker.as_mut().poll(&mut cx).is_ready() {
            break;
        }
    }
}

/// The close code the connection was asked to close with, if any.
fn close_code(session: &Session) -> Option<u16> {
    session
        .connection()
        .outbox()
        .close_requested()
        .map(CloseCode::code)
}

/// Whether `actual` matches `pattern` (see the module docs).
fn matches(actual: &Value, pattern: &Value) -> bool {
    match (pattern, actual) {
        (Value::String(any), _) if any == ANY => true,
        (Value::Object(pattern), Value::Object(actual)) => pattern.iter().all(|(key, want)| {
            actual
                .get(key)
                .map_or(want.is_null(), |got| matches(got, want))
        }),
        (Value::Array(pattern), Value::Array(actual)) => {
            pattern.len() == actual.len() && pattern.iter().zip(actual).all(|(p, a)| matches(a, p))
        }
        _ => pattern == actual,
    }
}

#[track_caller]
fn assert_frames(actual: &[Value], expected: &Value) {
    let actual = Value::Array(actual.to_vec());
    assert!(
        matches(&actual, expected),
        "frames differ\n     got: {actual}\nexpected: {expected}"
    );
}

/// Sends `subscribe` and returns the ack's `data`, asserting the ack is the only frame.
#[track_caller]
fn subscribe(session: &mut Session, topic_name: &str) -> Value {
    session.on_text(&format!(
        r#"{{"type":"subscribe","messageId":"sub-{topic_name}","data":{{"topic":"{topic_name}"}}}}"#
    ));
    let mut replies = frames(session);
    assert_frames(
        &replies,
        &json!([{"type": "ack", "messageId": format!("sub-{topic_name}")}]),
    );
    replies.remove(0)["data"].take()
}

/// The `(offset, epoch)` of every `message` frame queued to the session, asserting they are all
/// messages of `topic_name`.
#[track_caller]
fn offsets(session: &Session, topic_name: &str) -> Vec<(u64, String)> {
    frames(session)
        .iter()
        .map(|frame| {
            assert!(
                matches(frame, &json!({"type": "message", "topic": topic_name})),
                "expected a message of {topic_name}, got {frame}"
            );
            let epoch = frame["epoch"]
                .as_str()
                .expect("epoch is a string")
                .to_owned();
            (frame["offset"].as_u64().expect("offset is a number"), epoch)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Authentication by message: what an unauthenticated client sees.
// ---------------------------------------------------------------------------------------------

/// Feeds `script` (with [`expand`]ed placeholders) to a new, unauthenticated connection and
/// compares every frame it was sent with `expected`, and its close request with `close`.
#[track_caller]
fn check_conversation(script: &[&str], expected: &Value, close: Option<u16>) {
    let harness = Harness::new();
    let mut session = harness.anonymous();
    for frame in script {
        session.on_text(&expand(frame));
        run_operations(&harness.gateway);
    }
    let got = frames(&session);
    assert!(
        matches(&Value::Array(got.clone()), expected),
        "script {script:?}\n     got: {}\nexpected: {expected}",
        Value::Array(got)
    );
    assert_eq!(close_code(&session), close, "close code after {script:?}");
}

fn unauthorized(message_id: &str) -> Value {
    json!({"type": "error", "messageId": message_id, "error": {"code": "unauthorized"}})
}

fn connected(user: &str) -> Value {
    json!({"type": "connected", "data": {
        "connectionId": ANY, "userId": user, "tier": "free", "heartbeatInterval": 30_000, "maxPayload": 102_400,
    }})
}

/// One frame of every known request type but `auth` and `ping`, each with `messageId` `m`.
const REQUESTS_NEEDING_AUTH: [&str; 9] = [
    r#"{"type":"subscribe","messageId":"m","data":{"topic":"chat:1"}}"#,
    r#"{"type":"unsubscribe","messageId":"m","data":{"topic":"chat:1"}}"#,
    r#"{"type":"batch_subscribe","messageId":"m","data":{"topics":["chat:1"]}}"#,
    r#"{"type":"batch_unsubscribe","messageId":"m","data":{"topics":["chat:1"]}}"#,
    r#"{"type":"publish","messageId":"m","data":{"topic":"chat:1","data":{"a":1}}}"#,
    r#"{"type":"pong","messageId":"m"}"#,
    r#"{"type":"get_preferences","messageId":"m"}"#,
    r#"{"type":"update_preferences","messageId":"m","data":{"theme":"dark"}}"#,
    r#"{"type":"ack","messageId":"m","data":{"ids":["e1"]}}"#,
];

#[test]
fn every_known_request_but_ping_is_unauthorized_before_auth() {
    for request in REQUESTS_NEEDING_AUTH {
        check_conversation(&[request], &json!([unauthorized("m")]), None);
    }
}

#[test]
fn malformed_known_requests_are_unauthorized_before_auth() {
    check_conversation(
        &[r#"{"type":"subscribe","messageId":"m","data":{}}"#],
        &json!([unauthorized("m")]),
        None,
    );
}

#[test]
fn ping_before_auth_gets_pong_echoing_id_and_timestamp() {
    check_conversation(
        &[r#"{"type":"ping","messageId":"p1","timestamp":1700000000123}"#],
        &json!([{"type": "pong", "messageId": "p1", "timestamp": 1_700_000_000_123_u64}]),
        None,
    );
}

#[test]
fn unknown_type_or_non_object_gets_bad_request_before_auth() {
    check_conversation(
        &[
            r#"{"type":"subscribe_all","messageId":"m"}"#,
            "[1,2]",
            "not json",
            r#"{"data":{}}"#,
        ],
        &json!([
            {"type": "error", "messageId": "m", "error": {"code": "bad_request"}},
            {"type": "error", "messageId": null, "error": {"code": "bad_request"}},
            {"type": "error", "error": {"code": "bad_request"}},
            {"type": "error", "error": {"code": "bad_request"}},
        ]),
        None,
    );
}

#[test]
fn auth_message_gets_connected_then_ack_with_expiry() {
    check_conversation(
        &[r#"{"type":"auth","messageId":"a1","data":{"token":"{alice}"}}"#],
        &json!([
            connected("alice"),
            {"type": "ack", "messageId": "a1", "data": {"expiresAt": FAR_EXP * 1000}},
        ]),
        None,
    );
}

#[test]
fn auth_message_without_message_id_gets_only_connected() {
    check_conversation(
        &[r#"{"type":"auth","data":{"token":"{alice}"}}"#],
        &json!([connected("alice")]),
        None,
    );
}

#[test]
fn requests_after_auth_are_served() {
    check_conversation(
        &[
            r#"{"type":"subscribe","messageId":"s0","data":{"topic":"chat:1"}}"#,
            r#"{"type":"auth","data":{"token":"{alice}"}}"#,
            r#"{"type":"subscribe","messageId":"s1","data":{"topic":"chat:1"}}"#,
        ],
        &json!([
            unauthorized("s0"),
            connected("alice"),
            {"type": "ack", "messageId": "s1", "data": {"topic": "chat:1", "offset": 0, "recovered": false}},
        ]),
        None,
    );
}

#[test]
fn bad_tokens_get_unauthorized_and_close_4001() {
    for token in ["{forged}", "{expired}", "{gold}", "not-a-jwt", ""] {
        check_conversation(
            &[&format!(
                r#"{{"type":"auth","messageId":"a1","data":{{"token":"{token}"}}}}"#
            )],
            &json!([unauthorized("a1")]),
            Some(4001),
        );
    }
}

#[test]
fn refresh_for_the_same_user_is_acked_with_the_new_expiry() {
    check_conversation(
        &[
            r#"{"type":"auth","messageId":"a1","data":{"token":"{alice}"}}"#,
            r#"{"type":"auth","messageId":"a2","data":{"token":"{alice-renewed}"}}"#,
        ],
        &json!([
            connected("alice"),
            {"type": "ack", "messageId": "a1", "data": {"expiresAt": FAR_EXP * 1000}},
            {"type": "ack", "messageId": "a2", "data": {"expiresAt": (FAR_EXP + 60) * 1000}},
        ]),
        None,
    );
}

#[test]
fn refresh_for_another_user_is_refused_with_4001() {
    check_conversation(
        &[
            r#"{"type":"auth","messageId":"a1","data":{"token":"{alice}"}}"#,
            r#"{"type":"auth","messageId":"a2","data":{"token":"{bob}"}}"#,
        ],
        &json!([connected("alice"), {"type": "ack", "messageId": "a1"}, unauthorized("a2")]),
        Some(4001),
    );
}

#[test]
fn refresh_with_a_bad_token_closes_4001() {
    check_conversation(
        &[
            r#"{"type":"auth","messageId":"a1","data":{"token":"{alice}"}}"#,
            r#"{"type":"auth","messageId":"a2","data":{"token":"{expired}"}}"#,
        ],
        &json!([connected("alice"), {"type": "ack", "messageId": "a1"}, unauthorized("a2")]),
        Some(4001),
    );
}

#[test]
fn handshake_token_is_checked_at_admission() {
    let harness = Harness::new();
    for bad in ["{forged}", "{expired}", "{gold}", "garbage"] {
        let refusal = harness
            .gateway
            .admit(Some(&expand(bad)), None)
            .expect_err("bad token refused");
        assert!(
            matches!(refusal, Refusal::Unauthorized(_)),
            "{bad}: {refusal:?}"
        );
    }
    let session = harness.open(Some(&token("alice")), Some("t1"));
    assert!(session.is_authenticated());
    assert_frames(&frames(&session), &json!([connected("alice")]));
    assert!(matches!(
        harness.gateway.admit(None, Some("")),
        Err(Refusal::BadRequest(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Time: auth timeout, token expiry, heartbeats and stale connections.
// ---------------------------------------------------------------------------------------------

/// One step of a [`check_timeline`].
#[derive(Debug, Clone, Copy)]
enum Tick {
    /// Advance the gateway clock by this many milliseconds, then sweep.
    Wait(u64),
    /// Feed the session this client text frame (placeholders expanded): activity.
    Text(&'static str),
    /// Record WebSocket-level activity (a protocol ping or pong) without a text frame.
    Touch,
    /// Exactly this many server pings were queued since the last check, and nothing else.
    Pings(usize),
    /// The connection has not been asked to close.
    Open,
    /// The connection has been asked to close with this code.
    Closed(u16),
}

/// Opens a connection (authenticated at the handshake with `token`, or anonymous) and plays
/// `ticks` against the default timing: auth timeout 10 s, heartbeat 30 s, stale 60 s.
#[track_caller]
fn check_timeline(token: Option<&str>, ticks: &[Tick]) {
    let harness = Harness::new();
    let mut session = harness.open(token, None);
    session.connection().outbox().take_all();
    for (step, tick) in ticks.iter().enumerate() {
        match *tick {
            Tick::Wait(ms) => {
                harness.advance(ms);
                harness.gateway.sweep();
            }
            Tick::Text(frame) => session.on_text(&expand(frame)),
            Tick::Touch => session.touch(),
            Tick::Pings(expected) => {
                let got = frames(&session);
                let pings = vec![json!({"type": "ping", "timestamp": ANY}); expected];
                assert!(
                    matches(&Value::Array(got.clone()), &Value::Array(pings)),
                    "step {step}: expected {expected} pings, got {got:?}"
                );
            }
            Tick::Open => assert_eq!(close_code(&session), None, "step {step}: {ticks:?}"),
            Tick::Closed(code) => {
                assert_eq!(close_code(&session), Some(code), "step {step}: {ticks:?}")
            }
        }
    }
}

#[test]
fn no_auth_within_the_auth_timeout_closes_4001() {
    check_timeline(None, &[Wait(9_999), Open, Wait(1), Closed(4001)]);
}

#[test]
fn auth_message_within_the_timeout_keeps_the_connection() {
    check_timeline(
        None,
        &[
            Wait(9_000),
            Text(r#"{"type":"auth","data":{"token":"{alice}"}}"#),
            Wait(1_000),
            Open,
            Wait(20_000),
            Open,
        ],
    );
}

#[test]
fn activity_before_auth_does_not_extend_the_auth_timeout() {
    check_timeline(
        None,
        &[
            Wait(5_000),
            Text(r#"{"type":"ping"}"#),
            Wait(5_000),
            Closed(4001),
        ],
    );
}

#[test]
fn expired_token_closes_4003_once_the_clock_passes_exp() {
    // The expiry is wall-clock; `exp` has one-second resolution, so the deadline lies between
    // four and five seconds from now on the gateway clock.
    let token = token_with("alice", &json!({"exp": now_s() + 5}));
    check_timeline(
        Some(&token),
        &[Wait(3_000), Open, Wait(2_001), Closed(4003)],
    );
}

#[test]
fn refresh_moves_the_expiry() {
    let token = token_with("alice", &json!({"exp": now_s() + 5}));
    check_timeline(
        Some(&token),
        &[
            Wait(3_000),
            Text(r#"{"type":"auth","data":{"token":"{alice}"}}"#),
            Wait(10_000),
            Open,
        ],
    );
}

#[test]
fn silent_connection_closes_4000_after_the_stale_timeout() {
    check_timeline(
        Some(&token("alice")),
        &[
            Wait(30_000),
            Pings(1),
            Wait(29_999),
            Open,
            Wait(1),
            Closed(4000),
            Wait(30_000),
            Pings(0),
        ],
    );
}

#[test]
fn heartbeat_pings_are_queued_every_interval() {
    check_timeline(
        Some(&token("alice")),
        &[
            Wait(29_999),
            Pings(0),
            Wait(1),
            Pings(1),
            Touch,
            Wait(29_999),
            Pings(0),
            Wait(1),
            Pings(1),
            Text(r#"{"type":"pong"}"#),
            Wait(30_000),
            Pings(1),
            Open,
        ],
    );
}

#[test]
fn anonymous_connections_get_no_heartbeat() {
    check_timeline(None, &[Wait(5_000), Wait(4_000), Pings(0)]);
}

#[test]
fn any_activity_prevents_stale() {
    check_timeline(
        Some(&token("alice")),
        &[
            Wait(59_000),
            Text(r#"{"type":"pong"}"#),
            Wait(59_000),
            Touch,
            Wait(59_000),
            Text("not even json"),
            Wait(59_999),
            Open,
            Wait(1),
            Closed(4000),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Requests of an authenticated client: replies, authorization and error codes.
// ---------------------------------------------------------------------------------------------

/// Connects a client with the token `{placeholder}` given by `token` (see [`expand`]), feeds it
/// `script` and compares every frame it was sent after `connected` with `expected`.
#[track_caller]
fn check_requests(token: &str, script: &[&str], expected: &Value) {
    let harness = Harness::new();
    let mut session = harness.open(Some(&expand(token)), None);
    assert_frames(&frames(&session), &json!([{"type": "connected"}]));
    for frame in script {
        session.on_text(&expand(frame));
        run_operations(&harness.gateway);
    }
    let got = frames(&session);
    assert!(
        matches(&Value::Array(got.clone()), expected),
        "script {script:?}\n     got: {}\nexpected: {expected}",
        Value::Array(got)
    );
    assert_eq!(close_code(&session), None, "close code after {script:?}");
}

fn forbidden(message_id: &str) -> Value {
    json!({"type": "error", "messageId": message_id, "error": {"code": "forbidden"}})
}

/// Every request type, each with `messageId` `m`, and the type of the one reply it must get.
const ONE_REPLY_EACH: [(&str, &str); 17] = [
    (
        r#"{"type":"auth","messageId":"m","data":{"token":"{alice}"}}"#,
        "ack",
    ),
    (r#"{"type":"auth","messageId":"m","data":{}}"#, "error"),
    (
        r#"{"type":"subscribe","messageId":"m","data":{"topic":"chat:2"}}"#,
        "ack",
    ),
    (
        r#"{"type":"subscribe","messageId":"m","data":{"topic":"user:bob"}}"#,
        "error",
    ),
    (
        r#"{"type":"unsubscribe","messageId":"m","data":{"topic":"chat:1"}}"#,
        "ack",
    ),
    (
        r#"{"type":"batch_subscribe","messageId":"m","data":{"topics":["chat:2","user:bob"]}}"#,
        "ack",
    ),
    (
        r#"{"type":"batch_unsubscribe","messageId":"m","data":{"topics":["chat:1","chat:9"]}}"#,
        "ack",
    ),
    (
        r#"{"type":"publish","messageId":"m","data":{"topic":"chat:1","data":{"a":1}}}"#,
        "ack",
    ),
    (
        r#"{"type":"publish","messageId":"m","data":{"topic":"news","data":{"a":1}}}"#,
        "error",
    ),
    (r#"{"type":"ping","messageId":"m"}"#, "pong"),
    (r#"{"type":"pong","messageId":"m"}"#, "ack"),
    (
        r#"{"type":"get_preferences","messageId":"m"}"#,
        "preferences",
    ),
    (
        r#"{"type":"update_preferences","messageId":"m","data":{"theme":"dark"}}"#,
        "ack",
    ),
    (
        r#"{"type":"update_preferences","messageId":"m","data":[1]}"#,
        "error",
    ),
    (
        r#"{"type":"ack","messageId":"m","data":{"ids":["e1"]}}"#,
        "ack",
    ),
    (r#"{"type":"no_such_type","messageId":"m"}"#, "error"),
    (
        r#"{"type":"subscribe","messageId":"m","data":{"topic":"a b"}}"#,
        "error",
    ),
];

#[test]
fn every_request_with_a_message_id_gets_exactly_one_reply() {
    for (request, reply) in ONE_REPLY_EACH {
        let harness = Harness::new();
        let mut session = harness.connect("alice");
        subscribe(&mut session, "chat:1");
        session.on_text(&expand(request));
        run_operations(&harness.gateway);
        let replies: Vec<Value> = frames(&session)
            .into_iter()
            .filter(|frame| frame.get("messageId").is_some())
            .collect();
        assert_frames(&replies, &json!([{"type": reply, "messageId": "m"}]));
    }
}

#[test]
fn subscribe_ack_carries_topic_offset_epoch_and_recovered() {
    check_requests(
        "{alice}",
        &[r#"{"type":"subscribe","messageId":"s","data":{"topic":"user:alice"}}"#],
        &json!([{"type": "ack", "messageId": "s",
                 "data": {"topic": "user:alice", "offset": 0, "epoch": ANY, "recovered": false}}]),
    );
}

#[test]
fn subscribing_outside_the_topics_claim_is_forbidden() {
    check_requests(
        "{alice}",
        &[
            r#"{"type":"subscribe","messageId":"1","data":{"topic":"user:bob"}}"#,
            r#"{"type":"subscribe","messageId":"2","data":{"topic":"user:alice:extra"}}"#,
            r#"{"type":"subscribe","messageId":"3","data":{"topic":"news:sports"}}"#,
            r#"{"type":"subscribe","messageId":"4","data":{"topic":"chat"}}"#,
        ],
        &json!([
            forbidden("1"),
            forbidden("2"),
            forbidden("3"),
            forbidden("4")
        ]),
    );
}

#[test]
fn token_without_topics_claim_subscribes_to_nothing_by_default() {
    check_requests(
        "{no-topics}",
        &[r#"{"type":"subscribe","messageId":"1","data":{"topic":"chat:1"}}"#],
        &json!([forbidden("1")]),
    );
}

#[test]
fn wildcard_topics_claim_subscribes_to_everything() {
    check_requests(
        "{everything}",
        &[r#"{"type":"subscribe","messageId":"1","data":{"topic":"user:bob"}}"#],
        &json!([{"type": "ack", "messageId": "1", "data": {"topic": "user:bob"}}]),
    );
}

#[test]
fn batch_subscribe_reports_each_topic() {
    check_requests(
        "{alice}",
        &[r#"{"type":"batch_subscribe","messageId":"b","data":{"topics":["chat:1","user:bob"]}}"#],
        &json!([{"type": "ack", "messageId": "b", "data": {"results": [
            {"topic": "chat:1", "offset": 0, "epoch": ANY, "recovered": false},
            {"topic": "user:bob", "error": {"code": "forbidden"}},
        ]}}]),
    );
}

#[test]
fn unsubscribe_reports_whether_it_was_subscribed() {
    check_requests(
        "{alice}",
        &[
            r#"{"type":"subscribe","messageId":"s","data":{"topic":"chat:1"}}"#,
            r#"{"type":"unsubscribe","messageId":"u1","data":{"topic":"chat:1"}}"#,
            r#"{"type":"unsubscribe","messageId":"u2","data":{"topic":"chat:1"}}"#,
        ],
        &json!([
            {"type": "ack", "messageId": "s"},
            {"type": "ack", "messageId": "u1", "data": {"topic": "chat:1", "unsubscribed": true}},
            {"type": "ack", "messageId": "u2", "data": {"topic": "chat:1", "unsubscribed": false}},
        ]),
    );
}

#[test]
fn client_publish_within_the_publish_claim_is_acked_with_its_offset() {
    check_requests(
        "{alice}",
        &[
            r#"{"type":"publish","messageId":"p1","data":{"topic":"chat:1","data":{"a":1}}}"#,
            r#"{"type":"publish","messageId":"p2","data":{"topic":"chat:1","data":{"a":2},"id":"x"}}"#,
            r#"{"type":"publish","messageId":"p3","data":{"topic":"chat:1","data":{"a":3},"id":"x"}}"#,
        ],
        &json!([
            {"type": "ack", "messageId": "p1", "data": {"topic": "chat:1", "offset": 1, "epoch": ANY, "deduplicated": false}},
            {"type": "ack", "messageId": "p2", "data": {"topic": "chat:1", "offset": 2, "deduplicated": false}},
            {"type": "ack", "messageId": "p3", "data": {"topic": "chat:1", "offset": 2, "deduplicated": true}},
        ]),
    );
}

#[test]
fn client_publish_outside_the_publish_claim_is_forbidden() {
    check_requests(
        "{alice}",
        &[r#"{"type":"publish","messageId":"p","data":{"topic":"news","data":1}}"#],
        &json!([forbidden("p")]),
    );
    check_requests(
        "{no-publish}",
        &[r#"{"type":"publish","messageId":"p","data":{"topic":"chat:1","data":1}}"#],
        &json!([forbidden("p")]),
    );
}

#[test]
fn pong_with_a_message_id_is_acked_and_without_one_is_silent() {
    check_requests(
        "{alice}",
        &[r#"{"type":"pong"}"#, r#"{"type":"pong","messageId":"p"}"#],
        &json!([{"type": "ack", "messageId": "p"}]),
    );
}

#[test]
fn subscription_limit_per_connection_gives_limit_exceeded() {
    let harness = Harness::with(|s| s.max_subscriptions_per_connection = 2);
    let mut session = harness.connect("alice");
    subscribe(&mut session, "chat:1");
    subscribe(&mut session, "chat:2");
    // Subscribing again to a topic already held takes no new place.
    subscribe(&mut session, "chat:2");
    session.on_text(r#"{"type":"subscribe","messageId":"s3","data":{"topic":"chat:3"}}"#);
    assert_frames(
        &frames(&session),
        &json!([{"type": "error", "messageId": "s3", "error": {"code": "limit_exceeded"}}]),
    );
    assert_eq!(harness.stats().subscriptions, 2);
}

// ---------------------------------------------------------------------------------------------
// Fan-out: offsets, epochs, verbatim data and who receives what.
// ---------------------------------------------------------------------------------------------

#[test]
fn publications_reach_subscribers_with_consecutive_offsets_and_one_epoch() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    let mut bob = harness.connect("bob");
    let carol = harness.connect("carol");
    let ack = subscribe(&mut alice, "chat:1");
    subscribe(&mut bob, "chat:1");
    let epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    for n in 1..=3 {
        let outcome = harness.publish("chat:1", &format!(r#"{{"n":{n}}}"#), Priority::Normal);
        assert_eq!(
            (
                outcome.offset,
                &*outcome.epoch,
                outcome.deduplicated,
                outcome.delivered
            ),
            (n, &*epoch, false, 2)
        );
    }
    let expected: Vec<(u64, String)> = (1..=3).map(|n| (n, epoch.clone())).collect();
    assert_eq!(offsets(&alice, "chat:1"), expected);
    assert_eq!(offsets(&bob, "chat:1"), expected);
    assert_eq!(frames(&carol), Vec::<Value>::new());
    // A later subscriber learns the position it starts from.
    let mut dave = harness.connect("dave");
    assert!(matches(
        &subscribe(&mut dave, "chat:1"),
        &json!({"topic": "chat:1", "offset": 3, "epoch": epoch, "recovered": false})
    ));
    assert_eq!(harness.stats().published, 3);
}

#[test]
fn unsubscribed_connections_receive_nothing() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    harness.publish("chat:1", "1", Priority::Normal);
    alice.on_text(r#"{"type":"unsubscribe","data":{"topic":"chat:1"}}"#);
    assert_eq!(
        harness.publish("chat:1", "2", Priority::Normal).delivered,
        0
    );
    assert_eq!(offsets(&alice, "chat:1").len(), 1);
}

/// Publishes three messages to `chat:1`, waits `wait_ms`, then subscribes a new connection
/// with `since: {offset, epoch}` (the topic's epoch when `same_epoch`, another one otherwise)
/// and compares what it receives with `expected`.
#[track_caller]
fn check_resume(wait_ms: u64, offset: u64, same_epoch: bool, expected: &Value) {
    let harness = Harness::new();
    let mut first = harness.connect("alice");
    let epoch = subscribe(&mut first, "chat:1")["epoch"].clone();
    for n in 1..=3 {
        harness.publish("chat:1", &n.to_string(), Priority::Normal);
    }
    harness.advance(wait_ms);
    let epoch = if same_epoch {
        epoch
    } else {
        json!("another-epoch")
    };
    let mut second = harness.connect("bob");
    second.on_text(&format!(
        r#"{{"type":"subscribe","messageId":"r","data":{{"topic":"chat:1","since":{{"offset":{offset},"epoch":{epoch}}}}}}}"#
    ));
    assert_frames(&frames(&second), expected);
    // Live delivery follows the replay with no gap and no duplicate.
    harness.publish("chat:1", "4", Priority::Normal);
    assert_frames(
        &frames(&second),
        &json!([{"type": "message", "offset": 4, "data": 4}]),
    );
}

fn resume_ack(recovered: bool) -> Value {
    json!({"type": "ack", "messageId": "r", "data": {"topic": "chat:1", "offset": 3, "recovered": recovered}})
}

fn message(offset: u64) -> Value {
    json!({"type": "message", "topic": "chat:1", "offset": offset, "data": offset})
}

#[test]
fn resume_at_the_current_offset_is_recovered_with_nothing_to_replay() {
    check_resume(0, 3, true, &json!([resume_ack(true)]));
}

#[test]
fn resume_replays_what_was_missed_in_order_after_the_ack() {
    check_resume(
        0,
        1,
        true,
        &json!([resume_ack(true), message(2), message(3)]),
    );
    check_resume(
        0,
        0,
        true,
        &json!([resume_ack(true), message(1), message(2), message(3)]),
    );
}

#[test]
fn resume_from_another_epoch_is_not_recovered_and_replays_nothing() {
    check_resume(0, 1, false, &json!([resume_ack(false)]));
}

#[test]
fn resume_past_the_history_ttl_is_not_recovered() {
    check_resume(300_000, 1, true, &json!([resume_ack(false)]));
}

#[test]
fn messages_of_a_topic_arrive_in_offset_order_whatever_their_priority() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    for priority in [
        Priority::Low,
        Priority::Critical,
        Priority::Normal,
        Priority::High,
    ] {
        harness.publish("chat:1", "{}", priority);
    }
    let got: Vec<u64> = offsets(&alice, "chat:1")
        .into_iter()
        .map(|(offset, _)| offset)
        .collect();
    assert_eq!(got, [1, 2, 3, 4]);
}

/// Sends `data` through every path that relays a payload and asserts each frame carries it
/// byte for byte.
#[track_caller]
fn check_verbatim(data: &str) {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    let alice_user = UserId::new("alice");
    let payload = raw(data);
    harness.publish("chat:1", data, Priority::Normal);
    harness
        .gateway
        .send_to_user(&alice_user, None, &payload, Priority::Normal);
    harness.gateway.broadcast(&payload, Priority::Normal, &[]);
    harness
        .gateway
        .send_to_connection(alice.connection().id(), &payload, Priority::Normal)
        .expect("connection is known");
    alice.on_text(&format!(
        r#"{{"type":"publish","data":{{"topic":"chat:1","data":{data}}}}}"#
    ));
    run_operations(&harness.gateway);
    let texts = raw_frames(&alice);
    assert_eq!(texts.len(), 5, "{texts:?}");
    for text in texts {
        assert!(
            text.contains(&format!(r#""data":{data}"#)),
            "{data} not verbatim in {text}"
        );
    }
}

#[test]
fn payloads_are_relayed_verbatim() {
    check_verbatim(r#"{"a":1.50}"#);
    check_verbatim(r#"{"z":1,"a":2,"m":[1e3,-0.0,1E+2]}"#);
    check_verbatim(r#""caf\u00e9 \"quoted\"""#);
    check_verbatim("123456789012345678901234567890");
    check_verbatim("null");
    check_verbatim("[]");
}

#[test]
fn broadcast_reaches_authenticated_connections_but_the_excluded() {
    let harness = Harness::new();
    let alice = harness.connect("alice");
    let bob = harness.connect("bob");
    let anonymous = harness.anonymous();
    let delivered =
        harness
            .gateway
            .broadcast(&raw("1"), Priority::Normal, &[bob.connection().id()]);
    assert_eq!(delivered, 1);
    assert_frames(
        &frames(&alice),
        &json!([{"type": "push", "scope": "broadcast", "data": 1}]),
    );
    assert_eq!(frames(&bob), Vec::<Value>::new());
    assert_eq!(frames(&anonymous), Vec::<Value>::new());
}

#[test]
fn connection_sends_reach_one_authenticated_connection() {
    let harness = Harness::new();
    let alice = harness.connect("alice");
    let other = harness.connect("alice");
    let anonymous = harness.anonymous();
    let gateway = &harness.gateway;
    assert_eq!(
        gateway.send_to_connection(alice.connection().id(), &raw("7"), Priority::Normal),
        Ok(1)
    );
    assert_frames(
        &frames(&alice),
        &json!([{"type": "push", "scope": "connection", "data": 7}]),
    );
    assert_eq!(frames(&other), Vec::<Value>::new());
    let unknown = ConnectionId::new(u64::MAX);
    assert!(matches!(
        gateway.send_to_connection(unknown, &raw("7"), Priority::Normal),
        Err(GatewayError::UnknownConnection(_))
    ));
    assert!(
        gateway
            .send_to_connection(anonymous.connection().id(), &raw("7"), Priority::Normal)
            .is_err()
    );
    assert_eq!(gateway.disconnect(other.connection().id()), Ok(()));
    assert_eq!(close_code(&other), Some(4010));
}

/// Connections named `user` or `user/thread`; `send_to_user(alice, thread)` must reach exactly
/// the `expected` ones.
#[track_caller]
fn check_thread_routing(thread: Option<&str>, expected: &[&str]) {
    let harness = Harness::new();
    let names = ["alice", "alice/t1", "alice/t2", "bob", "bob/t1"];
    let sessions: Vec<Session> = names
        .iter()
        .map(|name| {
            let mut parts = name.split('/');
            let user = parts.next().expect("a user");
            harness.connect_on(user, parts.next())
        })
        .collect();
    let thread = thread.map(ThreadId::new);
    let delivered = harness.gateway.send_to_user(
        &UserId::new("alice"),
        thread.as_ref(),
        &raw(r#"{"k":1}"#),
        Priority::Normal,
    );
    let reached: Vec<&str> = names
        .iter()
        .zip(&sessions)
        .filter_map(|(name, session)| {
            let got = frames(session);
            if got.is_empty() {
                return None;
            }
            assert_frames(
                &got,
                &json!([{"type": "push", "scope": "user", "data": {"k": 1}}]),
            );
            Some(*name)
        })
        .collect();
    assert_eq!(reached, expected);
    assert_eq!(delivered, expected.len());
}

#[test]
fn user_send_without_thread_reaches_all_the_users_connections() {
    check_thread_routing(None, &["alice", "alice/t1", "alice/t2"]);
}

#[test]
fn user_send_with_thread_reaches_that_thread_and_unbound_connections() {
    check_thread_routing(Some("t1"), &["alice", "alice/t1"]);
    check_thread_routing(Some("t2"), &["alice", "alice/t2"]);
    check_thread_routing(Some("t3"), &["alice"]);
}

#[test]
fn user_send_to_a_user_without_connections_reaches_nobody() {
    let harness = Harness::new();
    let alice = harness.connect("alice");
    assert_eq!(
        harness
            .gateway
            .send_to_user(&UserId::new("zed"), None, &raw("1"), Priority::Normal),
        0
    );
    assert_eq!(frames(&alice), Vec::<Value>::new());
}

// ---------------------------------------------------------------------------------------------
// Isolation: random interleavings against a model.
// ---------------------------------------------------------------------------------------------

/// The connections of the isolation model: `(user, thread)`.
const MODEL_CONNECTIONS: [(&str, Option<&str>); 6] = [
    ("alice", None),
    ("alice", Some("t1")),
    ("bob", None),
    ("bob", Some("t1")),
    ("bob", Some("t2")),
    ("carol", Some("t2")),
];
const MODEL_USERS: [&str; 4] = ["alice", "bob", "carol", "nobody"];
const MODEL_TOPICS: [&str; 5] = ["user:alice", "user:bob", "user:carol", "room:1", "room:2"];
const MODEL_THREADS: [&str; 2] = ["t1", "t2"];

#[derive(Debug, Clone)]
enum Op {
    Subscribe(usize, usize),
    Unsubscribe(usize, usize),
    Publish(usize),
    SendToUser(usize, Option<usize>),
    Reconnect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let connection = 0..MODEL_CONNECTIONS.len();
    let topic = 0..MODEL_TOPICS.len();
    prop_oneof![
        3 => (connection.clone(), topic.clone()).prop_map(|(c, t)| Op::Subscribe(c, t)),
        1 => (connection.clone(), topic.clone()).prop_map(|(c, t)| Op::Unsubscribe(c, t)),
        3 => topic.prop_map(Op::Publish),
        3 => (0..MODEL_USERS.len(), proptest::option::of(0..MODEL_THREADS.len()))
            .prop_map(|(u, t)| Op::SendToUser(u, t)),
        1 => connection.prop_map(Op::Reconnect),
    ]
}

fn model_connect(harness: &Harness, index: usize) -> Session {
    let (user, thread) = MODEL_CONNECTIONS[index];
    // The early tier allows ten connections per user, so a reconnect never evicts.
    let token = token_with(
        user,
        &json!({"topics": ["user:{sub}", "room:*"], "tier": "early"}),
    );
    let session = harness.open(Some(&token), thread);
    session.connection().outbox().take_all();
    session
}

/// Plays `ops` and checks after each one that every connection received exactly what the model
/// says: its own replies, messages of the topics it is subscribed to, and pushes to its user
/// (and thread). So no connection ever sees another user's traffic.
fn check_isolation(ops: &[Op]) {
    let harness = Harness::new();
    let mut sessions: Vec<Session> = (0..MODEL_CONNECTIONS.len())
        .map(|i| model_connect(&harness, i))
        .collect();
    let mut subscribed: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); sessions.len()];
    let mut last_offset = [0_u64; MODEL_TOPICS.len()];
    for (step, op) in ops.iter().enumerate() {
        let data = format!(r#"{{"step":{step}}}"#);
        let mut expected: Vec<Vec<Value>> = vec![Vec::new(); sessions.len()];
        match *op {
            Op::Subscribe(c, t) => {
                let (user, _) = MODEL_CONNECTIONS[c];
                let name = MODEL_TOPICS[t];
                sessions[c].on_text(&format!(
                    r#"{{"type":"subscribe","messageId":"{step}","data":{{"topic":"{name}"}}}}"#
                ));
                if name.starts_with("room:") || name == format!("user:{user}") {
                    subscribed[c].insert(t);
                    expected[c].push(json!({"type": "ack", "messageId": step.to_string(),
                        "data": {"topic": name, "offset": last_offset[t]}}));
                } else {
                    expected[c].push(forbidden(&step.to_string()));
                }
            }
            Op::Unsubscribe(c, t) => {
                let name = MODEL_TOPICS[t];
                sessions[c].on_text(&format!(
                    r#"{{"type":"unsubscribe","messageId":"{step}","data":{{"topic":"{name}"}}}}"#
                ));
                let was = subscribed[c].remove(&t);
                expected[c].push(json!({"type": "ack", "messageId": step.to_string(),
                    "data": {"topic": name, "unsubscribed": was}}));
            }
            Op::Publish(t) => {
                last_offset[t] += 1;
                let outcome = harness.publish(MODEL_TOPICS[t], &data, Priority::Normal);
                assert_eq!(outcome.offset, last_offset[t]);
                for (c, topics) in subscribed.iter().enumerate() {
                    if topics.contains(&t) {
                        expected[c].push(json!({"type": "message", "topic": MODEL_TOPICS[t],
                            "offset": last_offset[t], "data": {"step": step}}));
                    }
                }
                let receivers = expected.iter().filter(|frames| !frames.is_empty()).count();
                assert_eq!(outcome.delivered, receivers, "step {step}: {op:?}");
            }
            Op::SendToUser(u, t) => {
                let thread = t.map(|t| ThreadId::new(MODEL_THREADS[t]));
                let user = UserId::new(MODEL_USERS[u]);
                let delivered = harness.gateway.send_to_user(
                    &user,
                    thread.as_ref(),
                    &raw(&data),
                    Priority::Normal,
                );
                for (c, (owner, bound)) in MODEL_CONNECTIONS.iter().enumerate() {
                    let thread_matches =
                        t.is_none() || bound.is_none() || *bound == t.map(|t| MODEL_THREADS[t]);
                    if *owner == MODEL_USERS[u] && thread_matches {
                        expected[c]
                            .push(json!({"type": "push", "scope": "user", "data": {"step": step}}));
                    }
                }
                let receivers = expected.iter().filter(|frames| !frames.is_empty()).count();
                assert_eq!(delivered, receivers, "step {step}: {op:?}");
            }
            Op::Reconnect(c) => {
                sessions[c] = model_connect(&harness, c);
                subscribed[c].clear();
            }
        }
        for (c, session) in sessions.iter().enumerate() {
            let got = frames(session);
            assert!(
                matches(
                    &Value::Array(got.clone()),
                    &Value::Array(expected[c].clone())
                ),
                "step {step} ({op:?}), connection {c} {:?}\n     got: {got:?}\nexpected: {:?}",
                MODEL_CONNECTIONS[c],
                expected[c]
            );
        }
        let subscriptions: usize = subscribed.iter().map(BTreeSet::len).sum();
        assert_eq!(
            harness.stats().subscriptions,
            subscriptions,
            "step {step}: {op:?}"
        );
        assert_eq!(harness.stats().users, 3);
    }
    drop(sessions);
    assert_stats_empty(&harness);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn connections_never_receive_another_users_traffic(ops in proptest::collection::vec(op(), 1..40)) {
        check_isolation(&ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Connection limits and slots.
// ---------------------------------------------------------------------------------------------

#[test]
fn evict_oldest_closes_the_oldest_with_4029_and_keeps_the_index_consistent() {
    let harness = Harness::new();
    let alice = UserId::new("alice");
    // The free tier allows three connections.
    let mut sessions: Vec<Session> = (0..3).map(|_| harness.connect("alice")).collect();
    for session in &mut sessions {
        subscribe(session, "chat:1");
    }
    let newest = harness.connect("alice");
    assert_eq!(close_code(&sessions[0]), Some(4029));
    assert!(sessions[1..].iter().all(|s| close_code(s).is_none()));
    assert_eq!(close_code(&newest), None);
    let listed: Vec<ConnectionId> = harness
        .gateway
        .connections(Some(&alice))
        .iter()
        .map(|c| c.id)
        .collect();
    let expected: Vec<ConnectionId> = sessions[1..]
        .iter()
        .chain([&newest])
        .map(|s| s.connection().id())
        .collect();
    assert_eq!(listed, expected);
    // The evicted connection no longer receives its user's traffic, even before it is dropped.
    assert_eq!(
        harness
            .gateway
            .send_to_user(&alice, None, &raw("1"), Priority::Normal),
        3
    );
    // Its cleanup, when the transport drops it, leaves the others in place.
    let evicted = sessions.remove(0);
    drop(evicted);
    let stats = harness.stats();
    assert_eq!(
        (stats.connections, stats.users, stats.subscriptions),
        (3, 1, 2)
    );
    assert_eq!(harness.gateway.connections(Some(&alice)).len(), 3);
    assert_eq!(
        harness
            .gateway
            .send_to_user(&alice, None, &raw("2"), Priority::Normal),
        3
    );
    // A fifth connection evicts the next oldest.
    let fifth = harness.connect("alice");
    assert_eq!(close_code(&sessions[0]), Some(4029));
    drop((sessions, newest, fifth));
    assert_stats_empty(&harness);
}

#[test]
fn evict_oldest_applies_to_auth_by_message_and_per_tier() {
    let harness = Harness::new();
    let early = token_with("alice", &json!({"tier": "early"}));
    // Ten connections for the early tier: none is evicted.
    let sessions: Vec<Session> = (0..10).map(|_| harness.open(Some(&early), None)).collect();
    assert!(sessions.iter().all(|s| close_code(s).is_none()));
    let mut late = harness.anonymous();
    late.on_text(&format!(
        r#"{{"type":"auth","messageId":"a","data":{{"token":"{early}"}}}}"#
    ));
    assert_frames(
        &frames(&late),
        &json!([{"type": "connected", "data": {"tier": "early"}}, {"type": "ack"}]),
    );
    assert_eq!(close_code(&sessions[0]), Some(4029));
    assert!(sessions[1..].iter().all(|s| close_code(s).is_none()));
    assert_eq!(
        harness
            .gateway
            .connections(Some(&UserId::new("alice")))
            .len(),
        10
    );
}

#[test]
fn reject_policy_refuses_at_the_handshake_and_closes_4030_after_auth_message() {
    let harness = Harness::with(|s| s.user_limit_policy = LimitPolicy::Reject);
    let mut sessions: Vec<Session> = (0..3).map(|_| harness.connect("alice")).collect();
    assert_eq!(
        harness
            .gateway
            .admit(Some(&token("alice")), None)
            .expect_err("over the limit"),
        Refusal::LimitExceeded(LimitExceeded { limit: 3 })
    );
    let mut by_message = harness.anonymous();
    by_message.on_text(&format!(
        r#"{{"type":"auth","messageId":"a","data":{{"token":"{}"}}}}"#,
        token("alice")
    ));
    assert_frames(
        &frames(&by_message),
        &json!([{"type": "error", "messageId": "a", "error": {"code": "limit_exceeded"}}]),
    );
    assert_eq!(close_code(&by_message), Some(4030));
    assert!(!by_message.is_authenticated());
    assert!(sessions.iter().all(|s| close_code(s).is_none()));
    // Another user is not affected, and a slot of alice's comes back when one closes.
    assert!(harness.gateway.admit(Some(&token("bob")), None).is_ok());
    sessions.pop();
    drop(by_message);
    sessions.push(harness.connect("alice"));
    let stats = harness.stats();
    assert_eq!((stats.connections, stats.users), (3, 1));
}

#[test]
fn server_full_refuses_unavailable_until_a_slot_comes_back() {
    let harness = Harness::with(|s| s.max_connections = 2);
    let first = harness.anonymous();
    let admission = harness
        .gateway
        .admit(Some(&token("bob")), None)
        .expect("second slot");
    assert_eq!(
        harness.gateway.admit(None, None).expect_err("full"),
        Refusal::Unavailable("server full")
    );
    drop(admission);
    let second = harness.connect("alice");
    assert!(harness.gateway.admit(None, None).is_err());
    drop(first);
    let third = harness.anonymous();
    assert!(harness.gateway.admit(None, None).is_err());
    drop((second, third));
    assert!(harness.gateway.admit(None, None).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Cleanup: every way a connection ends leaves nothing behind.
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_stats_empty(harness: &Harness) {
    let stats = harness.stats();
    assert_eq!(
        (stats.connections, stats.users, stats.subscriptions),
        (0, 0, 0),
        "after every session was dropped: {stats:?}"
    );
    assert_eq!(harness.gateway.connections(None), Vec::new());
}

/// Opens a mix of connections (two of alice's, one bound to a thread, bob's, an anonymous one),
/// subscribes the authenticated ones, lets `end` close some of them its way, drops them all
/// and asserts every index is empty. `end` may add sessions.
#[track_caller]
fn check_cleanup(
    configure: impl FnOnce(&mut GatewaySettings),
    end: impl FnOnce(&Harness, &mut Vec<Session>),
) {
    let harness = Harness::with(configure);
    let mut sessions = vec![
        harness.connect("alice"),
        harness.connect_on("alice", Some("t1")),
        harness.connect("bob"),
    ];
    for session in &mut sessions {
        subscribe(session, "chat:1");
        subscribe(session, "news");
    }
    sessions.push(harness.anonymous());
    end(&harness, &mut sessions);
    drop(sessions);
    assert_stats_empty(&harness);
    // Published topics keep their offsets for the retention time, then go too.
    harness.advance(300_000);
    harness.gateway.sweep();
    assert_eq!(harness.stats().topics, 0);
}

#[test]
fn dropping_sessions_leaves_nothing() {
    check_cleanup(|_| {}, |_, _| {});
}

#[test]
fn sessions_closed_by_the_sweep_leave_nothing() {
    check_cleanup(
        |_| {},
        |harness, _| {
            harness.advance(60_000);
            let report = harness.gateway.sweep();
            assert_eq!((report.stale, report.auth_timeouts), (3, 1));
        },
    );
}

#[test]
fn evicted_sessions_leave_nothing() {
    check_cleanup(
        |_| {},
        |harness, sessions| {
            for _ in 0..3 {
                let mut session = harness.connect("alice");
                subscribe(&mut session, "chat:1");
                sessions.push(session);
            }
            assert_eq!(close_code(&sessions[0]), Some(4029));
            assert_eq!(close_code(&sessions[1]), Some(4029));
        },
    );
}

#[test]
fn refused_and_unauthenticated_sessions_leave_nothing() {
    check_cleanup(
        |s| s.user_limit_policy = LimitPolicy::Reject,
        |harness, sessions| {
            sessions.push(harness.connect("alice"));
            let mut refused = harness.anonymous();
            refused.on_text(&format!(
                r#"{{"type":"auth","data":{{"token":"{}"}}}}"#,
                token("alice")
            ));
            assert_eq!(close_code(&refused), Some(4030));
            sessions.push(refused);
            sessions[0].on_text(r#"{"type":"auth","data":{"token":"garbage"}}"#);
            assert_eq!(close_code(&sessions[0]), Some(4001));
        },
    );
}

#[test]
fn slow_consumers_and_api_disconnects_leave_nothing() {
    check_cleanup(
        |s| s.max_queue_size = 2,
        |harness, sessions| {
            for n in 0..3 {
                harness.publish("news", &n.to_string(), Priority::Normal);
            }
            assert!(sessions[..3].iter().all(|s| close_code(s) == Some(4009)));
            harness
                .gateway
                .disconnect(sessions[3].connection().id())
                .expect("known connection");
        },
    );
}

#[test]
fn shutdown_leaves_nothing() {
    check_cleanup(|_| {}, |harness, _| harness.gateway.begin_shutdown());
}

#[test]
fn a_thousand_open_subscribe_drop_cycles_leave_nothing() {
    let harness = Harness::new();
    let mut steady = harness.connect("steady");
    subscribe(&mut steady, "chat:shared");
    for cycle in 0..1_000 {
        let user = format!("user{}", cycle % 7);
        let mut session = harness.connect_on(&user, (cycle % 3 == 0).then_some("t1"));
        subscribe(&mut session, "chat:shared");
        subscribe(&mut session, &format!("chat:{cycle}"));
        subscribe(&mut session, &format!("user:{user}"));
        if cycle % 10 == 0 {
            harness.publish("chat:shared", "1", Priority::Normal);
        }
        drop(session);
    }
    let stats = harness.stats();
    assert_eq!(
        (
            stats.connections,
            stats.users,
            stats.subscriptions,
            stats.topics
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(offsets(&steady, "chat:shared").len(), 100);
    drop(steady);
    assert_stats_empty(&harness);
}

// ---------------------------------------------------------------------------------------------
// Dedupe.
// ---------------------------------------------------------------------------------------------

/// Publishes to `chat:1` with one subscriber: each step advances the clock by `wait_ms`, then
/// publishes with `id`, and expects `(offset, deduplicated)`. A duplicate queues no frame.
#[track_caller]
fn check_dedupe(steps: &[(u64, Option<&str>, u64, bool)]) {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    for &(wait_ms, id, offset, deduplicated) in steps {
        harness.advance(wait_ms);
        let outcome = harness
            .gateway
            .publish(&topic("chat:1"), &raw("{}"), Priority::Normal, id)
            .expect("published");
        assert_eq!(
            (outcome.offset, outcome.deduplicated),
            (offset, deduplicated),
            "{id:?} after {wait_ms} ms"
        );
        let got: Vec<u64> = offsets(&alice, "chat:1")
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        let expected: Vec<u64> = if deduplicated { vec![] } else { vec![offset] };
        assert_eq!(got, expected);
        assert_eq!(outcome.delivered, expected.len());
    }
}

#[test]
fn same_id_within_the_window_is_deduplicated_with_the_original_offset() {
    check_dedupe(&[
        (0, Some("x"), 1, false),
        (0, Some("x"), 1, true),
        (0, Some("y"), 2, false),
        (4_999, Some("x"), 1, true),
        (0, None, 3, false),
        (0, None, 4, false),
    ]);
}

#[test]
fn same_id_after_the_window_is_a_new_publication() {
    check_dedupe(&[
        (0, Some("x"), 1, false),
        (5_000, Some("x"), 2, false),
        (4_999, Some("x"), 2, true),
        (1, Some("x"), 3, false),
    ]);
}

#[test]
fn ids_are_deduplicated_per_topic() {
    let harness = Harness::new();
    let publish = |name: &str| {
        let outcome = harness
            .gateway
            .publish(&topic(name), &raw("1"), Priority::Normal, Some("x"))
            .expect("published");
        (outcome.offset, outcome.deduplicated)
    };
    assert_eq!(publish("chat:1"), (1, false));
    assert_eq!(publish("chat:2"), (1, false));
    assert_eq!(publish("chat:1"), (1, true));
    assert_eq!(harness.stats().published, 2);
}

// ---------------------------------------------------------------------------------------------
// Outbox overflow.
// ---------------------------------------------------------------------------------------------

/// With outbound queues of four frames, `stuck` (never drained) and `reader` (drained after
/// every publication) subscribe to `chat:1`; each of `priorities` is published in turn. `stuck`
/// must be closed 4009 exactly from publication `closed_at` (0-based) on, while `reader`
/// receives every publication.
#[track_caller]
fn check_overflow(priorities: &[Priority], closed_at: Option<usize>) {
    let harness = Harness::with(|s| s.max_queue_size = 4);
    let mut stuck = harness.connect("alice");
    let mut reader = harness.connect("bob");
    subscribe(&mut stuck, "chat:1");
    subscribe(&mut reader, "chat:1");
    for (n, &priority) in priorities.iter().enumerate() {
        let outcome = harness.publish("chat:1", &n.to_string(), priority);
        let closed = closed_at.is_some_and(|at| n >= at);
        let want = closed.then_some(CloseCode::SlowConsumer.code());
        assert_eq!(
            close_code(&stuck),
            want,
            "after publication {n} of {priorities:?}"
        );
        assert_eq!(
            outcome.delivered,
            if closed { 1 } else { 2 },
            "publication {n}"
        );
        assert_eq!(offsets(&reader, "chat:1").len(), 1, "publication {n}");
        assert_eq!(close_code(&reader), None);
    }
    if closed_at.is_some() {
        // A slow consumer's queue is the problem: it closes at once, without flushing.
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        assert_eq!(
            stuck
                .connection()
                .outbox()
                .poll_drain(&mut cx, 100, &mut out),
            Poll::Ready(Some(CloseCode::SlowConsumer))
        );
        assert!(out.is_empty());
    }
}

#[test]
fn full_queue_of_equal_priority_closes_4009() {
    check_overflow(&[Normal, Normal, Normal, Normal, Normal, Normal], Some(4));
    check_overflow(&[Low, Low, Low, Low, Low], Some(4));
    check_overflow(&[Critical, Critical, Critical, Critical, Critical], Some(4));
}

#[test]
fn full_queue_sheds_lower_priorities_before_closing() {
    check_overflow(&[Low, Low, Low, Low, Normal, Normal, Normal, Normal], None);
    check_overflow(
        &[Low, Low, Low, Low, Normal, Normal, Normal, Normal, Normal],
        Some(8),
    );
    check_overflow(
        &[Normal, Low, Normal, Low, High, High, Critical, Critical],
        None,
    );
    let mixed = [
        Normal, Low, Normal, Low, High, High, Critical, Critical, Critical, Critical,
    ];
    check_overflow(&mixed, None);
    check_overflow(&[&mixed[..], &[Critical]].concat(), Some(10));
}

#[test]
fn shed_messages_are_counted_and_show_as_offset_gaps() {
    let harness = Harness::with(|s| s.max_queue_size = 3);
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    for priority in [Low, Normal, Low, High] {
        harness.publish("chat:1", "{}", priority);
    }
    assert_eq!(harness.stats().shed, 1);
    let got: Vec<u64> = offsets(&alice, "chat:1")
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(got, [2, 3, 4]);
}

#[test]
fn replies_shed_lower_priority_messages_of_a_full_queue() {
    let harness = Harness::with(|s| s.max_queue_size = 2);
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    harness.publish("chat:1", "1", Normal);
    harness.publish("chat:1", "2", Normal);
    alice.on_text(r#"{"type":"ping","messageId":"p"}"#);
    assert_eq!(close_code(&alice), None);
    assert_frames(
        &frames(&alice),
        &json!([{"type": "message", "offset": 2}, {"type": "pong", "messageId": "p"}]),
    );
}

// ---------------------------------------------------------------------------------------------
// Preferences.
// ---------------------------------------------------------------------------------------------

#[test]
fn preference_updates_merge_and_reach_the_users_other_connections_only() {
    let harness = Harness::new();
    let mut first = harness.connect("alice");
    let mut second = harness.connect_on("alice", Some("t1"));
    let mut bob = harness.connect("bob");
    first.on_text(
        r#"{"type":"update_preferences","messageId":"u1","data":{"theme":"dark","lang":"en"}}"#,
    );
    first.on_text(
        r#"{"type":"update_preferences","messageId":"u2","data":{"lang":null,"size":12.50}}"#,
    );
    assert_frames(
        &frames(&first),
        &json!([
            {"type": "ack", "messageId": "u1", "data": {"theme": "dark", "lang": "en"}},
            {"type": "ack", "messageId": "u2", "data": {"theme": "dark", "lang": null, "size": 12.5}},
        ]),
    );
    assert_frames(
        &frames(&second),
        &json!([
            {"type": "preferences", "messageId": null, "data": {"theme": "dark", "lang": "en"}},
            {"type": "preferences", "messageId": null, "data": {"theme": "dark", "size": 12.5}},
        ]),
    );
    assert_eq!(frames(&bob), Vec::<Value>::new());
    second.on_text(r#"{"type":"get_preferences","messageId":"g"}"#);
    assert_frames(
        &frames(&second),
        &json!([{"type": "preferences", "messageId": "g", "data": {"theme": "dark", "size": 12.5, "lang": null}}]),
    );
    bob.on_text(r#"{"type":"get_preferences","messageId":"g"}"#);
    assert_eq!(
        frames(&bob),
        vec![json!({"type": "preferences", "messageId": "g", "data": {}})]
    );
    assert_eq!(frames(&first), Vec::<Value>::new());
    first.on_text(r#"{"type":"update_preferences","messageId":"u3","data":"dark"}"#);
    assert_frames(
        &frames(&first),
        &json!([{"type": "error", "messageId": "u3", "error": {"code": "bad_request"}}]),
    );
    assert_eq!(frames(&second), Vec::<Value>::new());
}

// ---------------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------------

/// Drains the outbox the way the transport does: frames first, then the close code.
fn drain(session: &Session) -> (usize, Option<CloseCode>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match session
            .connection()
            .outbox()
            .poll_drain(&mut cx, 16, &mut out)
        {
            Poll::Ready(None) => {}
            Poll::Ready(Some(code)) => return (out.len(), Some(code)),
            Poll::Pending => return (out.len(), None),
        }
    }
}

#[test]
fn shutdown_flushes_queued_frames_then_closes_1001_and_refuses_newcomers() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    let bob = harness.connect("bob");
    let anonymous = harness.anonymous();
    let admitted_before = harness
        .gateway
        .admit(None, None)
        .expect("admitted before shutdown");
    subscribe(&mut alice, "chat:1");
    harness.publish("chat:1", "1", Normal);
    harness.publish("chat:1", "2", Normal);
    harness.gateway.begin_shutdown();
    assert_eq!(drain(&alice), (2, Some(CloseCode::GoingAway)));
    assert_eq!(drain(&bob), (0, Some(CloseCode::GoingAway)));
    assert_eq!(drain(&anonymous), (0, Some(CloseCode::GoingAway)));
    assert_eq!(
        harness
            .gateway
            .admit(None, None)
            .expect_err("shutting down"),
        Refusal::Unavailable("shutting down")
    );
    assert!(harness.gateway.admit(Some(&token("carol")), None).is_err());
    assert_eq!(
        harness
            .gateway
            .publish(&topic("chat:1"), &raw("3"), Normal, None),
        Err(GatewayError::ShuttingDown)
    );
    // A connection admitted just before the shutdown and opened after it is closed too.
    let late = harness.gateway.open(admitted_before);
    assert_eq!(close_code(&late), Some(1001));
    // A sweep during the drain does not replace the close code.
    harness.advance(120_000);
    harness.gateway.sweep();
    assert_eq!(close_code(&alice), Some(1001));
}

// ---------------------------------------------------------------------------------------------
// The operation queue between client publishes and fan-out.
// ---------------------------------------------------------------------------------------------

#[test]
fn client_publishes_wait_for_the_worker_and_a_full_queue_is_rate_limited() {
    let harness = Harness::with(|s| s.operation_queue_size = 2);
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    for n in 1..=3 {
        alice.on_text(&format!(
            r#"{{"type":"publish","messageId":"p{n}","data":{{"topic":"chat:1","data":{n}}}}}"#
        ));
    }
    assert_frames(
        &frames(&alice),
        &json!([{"type": "error", "messageId": "p3", "error": {"code": "rate_limited", "retryAfter": ANY}}]),
    );
    run_operations(&harness.gateway);
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "message", "offset": 1, "data": 1},
            {"type": "ack", "messageId": "p1", "data": {"offset": 1}},
            {"type": "message", "offset": 2, "data": 2},
            {"type": "ack", "messageId": "p2", "data": {"offset": 2}},
        ]),
    );
}

// Critical events.

/// Sends `event` through the [`Emitter`] (the operation queue), performing it at once.
fn emit(
    h: &Harness,
    user: &str,
    thread: Option<&str>,
    id: Option<&str>,
) -> Result<EventOutcome, GatewayError> {
    let emitter = Emitter::new(h.gateway.clone());
    let user = UserId::new(user);
    let target = EventTarget {
        thread: thread.map(ThreadId::new),
        run: Some("run-1".into()),
        id: id.map(str::to_owned),
    };
    let data = raw(r#"{"step":1}"#);
    let mut cx = Context::from_waker(Waker::noop());
    let mut sending = std::pin::pin!(emitter.agent_started(&user, &data, target));
    assert!(
        sending.as_mut().poll(&mut cx).is_pending(),
        "queued for the worker"
    );
    run_operations(&h.gateway);
    match sending.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(outcome) => outcome,
        std::task::Poll::Pending => panic!("the worker performed the event"),
    }
}

#[test]
fn emitter_events_wait_for_an_offline_user_and_arrive_on_connect() {
    let h = Harness::new();
    let sent = emit(&h, "alice", None, Some("e1")).expect("event accepted");
    assert_eq!(
        (sent.id.as_str(), sent.delivered, sent.pending),
        ("e1", 0, 1)
    );
    let alice = h.open(Some(&token("alice")), None);
    assert_frames(
        &frames(&alice),
        &json!([{"type": "connected"}, {"type": "event", "event": "agent_started", "id": "e1", "runId": "run-1", "data": {"step": 1}}]),
    );
    assert_eq!(h.stats().pending_events, 1);
}

#[test]
fn acked_events_are_removed_and_unacked_ones_redelivered_after_the_timeout() {
    let h = Harness::new();
    let mut alice = h.connect("alice");
    emit(&h, "alice", None, Some("e1")).expect("accepted");
    emit(&h, "alice", None, Some("e2")).expect("accepted");
    assert_eq!(frames(&alice).len(), 2);
    alice.on_text(r#"{"type":"ack","messageId":"a","data":{"ids":["e1"]}}"#);
    assert_frames(
        &frames(&alice),
        &json!([{"type": "ack", "messageId": "a", "data": {"acknowledged": 1}}]),
    );
    h.advance(29_000);
    h.gateway.sweep();
    assert!(
        frames(&alice).iter().all(|f| f["type"] == "ping"),
        "not due yet"
    );
    h.advance(1_000);
    h.gateway.sweep();
    let again: Vec<Value> = frames(&alice)
        .into_iter()
        .filter(|f| f["type"] == "event")
        .collect();
    assert_frames(&again, &json!([{"id": "e2"}]));
    alice.on_text(r#"{"type":"ack","data":{"ids":["e2"]}}"#);
    assert_eq!(h.stats().pending_events, 0);
}

#[test]
fn events_follow_threads_and_keep_their_order() {
    let h = Harness::new();
    let t1 = h.connect_on("alice", Some("t1"));
    let t2 = h.connect_on("alice", Some("t2"));
    let bob = h.connect("bob");
    emit(&h, "alice", Some("t1"), Some("a")).expect("accepted");
    emit(&h, "alice", None, Some("b")).expect("accepted");
    emit(&h, "alice", Some("t2"), Some("c")).expect("accepted");
    emit(&h, "alice", Some("t1"), Some("d")).expect("accepted");
    let ids = |session: &Session| -> Vec<String> {
        frames(session)
            .iter()
            .filter_map(|f| f["id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(ids(&t1), ["a", "b", "d"]);
    assert_eq!(ids(&t2), ["b", "c"]);
    assert!(frames(&bob).is_empty());
}

#[test]
fn pending_events_are_bounded_and_a_pending_id_is_not_sent_twice() {
    let h = Harness::with(|s| s.max_pending_events = 2);
    emit(&h, "alice", None, Some("e1")).expect("accepted");
    let retried = emit(&h, "alice", None, Some("e1")).expect("idempotent");
    assert_eq!((retried.delivered, retried.pending), (0, 1));
    emit(&h, "alice", None, None).expect("accepted");
    assert_eq!(
        emit(&h, "alice", None, None),
        Err(GatewayError::TooManyPending { limit: 2 })
    );
}

#[test]
fn unacked_events_expire_after_their_time_to_live() {
    let h = Harness::with(|s| s.event_ttl = Duration::from_secs(60));
    emit(&h, "alice", None, None).expect("accepted");
    h.advance(60_000);
    h.gateway.sweep();
    assert_eq!(h.stats().pending_events, 0);
}
