//! Connection limits and slots: per-user policies and the server-wide maximum.

use crate::{LimitExceeded, LimitPolicy, Refusal};

use super::*;

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
        harness.send_to_user("alice", None, "1", Priority::Normal),
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
        harness.send_to_user("alice", None, "2", Priority::Normal),
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

#[test]
fn the_tier_caps_subscriptions_below_the_global_limit() {
    let harness = Harness::with(|s| {
        s.tier_subscriptions.insert("free".to_owned(), 2);
        s.tier_subscriptions.insert("early".to_owned(), 3);
    });
    let mut free = harness.connect("alice");
    subscribe(&mut free, "chat:1");
    subscribe(&mut free, "chat:2");
    free.on_text(r#"{"type":"subscribe","messageId":"s3","data":{"topic":"chat:3"}}"#);
    assert_frames(
        &frames(&free),
        &json!([{"type": "error", "messageId": "s3", "error": {
            "code": "limit_exceeded",
            "message": "subscription limit of 2 per connection reached (tier `free`)"
        }}]),
    );
    // Another tier has its own quota, and the global limit still caps every tier.
    let early = token_with("bob", &json!({"tier": "early"}));
    let mut bob = harness.open(Some(&early), None);
    frames(&bob);
    for topic in ["chat:1", "chat:2", "chat:3"] {
        subscribe(&mut bob, topic);
    }
    let capped = Harness::with(|s| {
        s.tier_subscriptions.insert("free".to_owned(), 5);
        s.max_subscriptions_per_connection = 1;
    });
    let mut carol = capped.connect("carol");
    subscribe(&mut carol, "chat:1");
    carol.on_text(r#"{"type":"subscribe","messageId":"s2","data":{"topic":"chat:2"}}"#);
    assert_frames(
        &frames(&carol),
        &json!([{"type": "error", "messageId": "s2", "error": {"code": "limit_exceeded"}}]),
    );
}

#[test]
fn the_tier_caps_the_size_of_a_client_publish() {
    let harness = Harness::with(|s| {
        s.tier_publish_bytes.insert("free".to_owned(), 10);
    });
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    // Ten bytes of JSON text are allowed, eleven are not.
    alice.on_text(
        r#"{"type":"publish","messageId":"ok","data":{"topic":"chat:1","data":"12345678"}}"#,
    );
    alice.on_text(
        r#"{"type":"publish","messageId":"big","data":{"topic":"chat:1","data":"123456789"}}"#,
    );
    run_operations(&harness.gateway);
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "error", "messageId": "big", "error": {
                "code": "payload_too_large",
                "message": "tier `free` may publish at most 10 bytes of data; this is 11"
            }},
            {"type": "message", "topic": "chat:1", "data": "12345678"},
            {"type": "ack", "messageId": "ok"},
        ]),
    );
}

#[test]
fn quota_refusals_in_a_row_close_4008_and_a_write_within_them_clears_the_count() {
    let harness = Harness::with(|s| {
        s.tier_subscriptions.insert("free".to_owned(), 1);
        s.tier_publish_bytes.insert("free".to_owned(), 10);
    });
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:0");
    let over_quota = |n: usize| {
        if n.is_multiple_of(2) {
            format!(r#"{{"type":"subscribe","data":{{"topic":"chat:x{n}"}}}}"#)
        } else {
            r#"{"type":"publish","data":{"topic":"chat:0","data":"123456789"}}"#.to_owned()
        }
    };
    // Nine refusals, then a write within its quotas: the count starts again.
    for n in 0..9 {
        alice.on_text(&over_quota(n));
    }
    assert_eq!(frames(&alice).len(), 9);
    alice.on_text(r#"{"type":"publish","data":{"topic":"chat:0","data":"fits"}}"#);
    for n in 0..9 {
        alice.on_text(&over_quota(n));
    }
    frames(&alice);
    assert_eq!(close_code(&alice), None);
    // The tenth in a row closes the connection: it keeps breaking its limits.
    alice.on_text(&over_quota(9));
    assert_eq!(close_code(&alice), Some(4008));
}
