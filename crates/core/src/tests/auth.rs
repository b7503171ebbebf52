//! Authentication by message and at the handshake: what an unauthenticated client sees.

use crate::Refusal;

use super::*;

/// Feeds `script` (with [`expand`]ed placeholders) to a new, unauthenticated connection and
/// compares every frame it was sent with `expected`, and its close request with `close`.
#[track_caller]
fn check_conversation(script: &[&str], expected: &Value, close: Option<u16>) {
    let harness = Harness::new();
    let mut session = harness.anonymous();
    play(&harness, &mut session, script, expected, close);
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
