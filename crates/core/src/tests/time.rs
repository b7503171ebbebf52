//! Time: the auth timeout, token expiry, heartbeats and stale connections, on the manual clock.

use self::Tick::{Closed, Open, Pings, Text, Touch, Wait};
use super::*;

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
    // The expiry is wall-clock time on the gateway's clock, which starts at `T0_MS`, a whole
    // second: the deadline is exactly five seconds away.
    let token = token_with("alice", &json!({"exp": T0_MS / 1000 + 5}));
    check_timeline(
        Some(&token),
        &[Wait(3_000), Open, Wait(1_999), Open, Wait(1), Closed(4003)],
    );
}

#[test]
fn refresh_moves_the_expiry() {
    let token = token_with("alice", &json!({"exp": T0_MS / 1000 + 5}));
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

#[test]
fn token_expiry_and_wire_timestamps_follow_the_clocks_wall_time_not_the_systems() {
    // 2001-01-01, long before the tests run: a token expiring five seconds later is valid on
    // this clock, and only this clock's time decides when it runs out.
    let start_ms = 978_307_200_000;
    let harness = Harness::build(
        |_| {},
        ManualClock::at_unix_ms(start_ms),
        Arc::new(InMemoryBroker::new()),
    );
    let token = token_with("alice", &json!({"exp": start_ms / 1000 + 5}));
    let mut session = harness.open(Some(&token), None);
    assert_frames(&frames(&session), &json!([{"type": "connected"}]));
    let listed = harness.gateway.connections(None);
    assert_eq!(listed[0].connected_at_unix_ms, start_ms);
    harness.advance(4_000);
    // A refresh with a token that expired a second ago on this clock is refused.
    let stale = token_with("alice", &json!({"exp": start_ms / 1000 + 3}));
    let mut refreshing = harness.open(Some(&token), None);
    refreshing.connection().outbox().take_all();
    refreshing.on_text(&format!(
        r#"{{"type":"auth","messageId":"r","data":{{"token":"{stale}"}}}}"#
    ));
    assert_frames(
        &frames(&refreshing),
        &json!([{"type": "error", "messageId": "r", "error": {"code": "unauthorized", "message": "token expired"}}]),
    );
    harness.advance(999);
    harness.gateway.sweep();
    assert_eq!(close_code(&session), None);
    harness.advance(1);
    harness.gateway.sweep();
    assert_eq!(close_code(&session), Some(4003));
    // Server pings carry the clock's wall time.
    let fresh = token_with("alice", &json!({"exp": start_ms / 1000 + 3_600}));
    session = harness.open(Some(&fresh), None);
    session.connection().outbox().take_all();
    harness.advance(30_000);
    harness.gateway.sweep();
    assert_frames(
        &frames(&session),
        &json!([{"type": "ping", "timestamp": start_ms + 35_000}]),
    );
    // And a token that is valid today is expired on a clock set past its `exp`.
    let late = Harness::build(
        |_| {},
        ManualClock::at_unix_ms(FAR_EXP * 1000 + 1),
        Arc::new(InMemoryBroker::new()),
    );
    assert_eq!(
        late.gateway
            .admit(Some(&super::fakes::token("alice")), None)
            .err(),
        Some(crate::Refusal::Unauthorized(crate::AuthError::Expired))
    );
}

/// What the transport logs with `closed`: the connection's age on the gateway's clock and the
/// frames it counted each way.
#[test]
fn a_session_reports_its_age_and_the_frames_counted() {
    let harness = Harness::new();
    let mut session = harness.connect("alice");
    harness.advance(1_500);
    session.count_frame_in();
    session.count_frame_in();
    session.count_frames_out(3);
    session.count_frames_out(usize::MAX);
    assert_eq!(session.duration_ms(), 1_500);
    assert_eq!(session.frames_in(), 2);
    // Saturates rather than wraps.
    assert_eq!(session.frames_out(), u32::MAX);
}
