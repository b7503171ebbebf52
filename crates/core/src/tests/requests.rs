//! Requests of an authenticated client: replies, authorization and error codes.

use super::*;

/// Connects a client with the token `{placeholder}` given by `token` (see [`expand`]), feeds it
/// `script` and compares every frame it was sent after `connected` with `expected`.
#[track_caller]
fn check_requests(token: &str, script: &[&str], expected: &Value) {
    let harness = Harness::new();
    let mut session = harness.open(Some(&expand(token)), None);
    assert_frames(&frames(&session), &json!([{"type": "connected"}]));
    play(&harness, &mut session, script, expected, None);
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
