//! Fan-out: offsets, epochs, resume, verbatim data, and who receives publications and pushes.

use super::*;

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
    assert_eq!(harness.stats().messages.published, 3);
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
    harness.publish("chat:1", data, Priority::Normal);
    harness.send_to_user("alice", None, data, Priority::Normal);
    harness.broadcast(data, Priority::Normal, &[]);
    harness
        .send_to_connection(alice.connection().id(), data, Priority::Normal)
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
    let delivered = harness.broadcast("1", Priority::Normal, &[bob.connection().id()]);
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
    assert_eq!(
        harness.send_to_connection(alice.connection().id(), "7", Priority::Normal),
        Ok(1)
    );
    assert_frames(
        &frames(&alice),
        &json!([{"type": "push", "scope": "connection", "data": 7}]),
    );
    assert_eq!(frames(&other), Vec::<Value>::new());
    let unknown = ConnectionId::new(u64::MAX);
    assert!(matches!(
        harness.send_to_connection(unknown, "7", Priority::Normal),
        Err(GatewayError::UnknownConnection(_))
    ));
    assert!(
        harness
            .send_to_connection(anonymous.connection().id(), "7", Priority::Normal)
            .is_err()
    );
    assert_eq!(harness.gateway.disconnect(other.connection().id()), Ok(()));
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
    let delivered = harness.send_to_user("alice", thread, r#"{"k":1}"#, Priority::Normal);
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
    assert_eq!(harness.send_to_user("zed", None, "1", Priority::Normal), 0);
    assert_eq!(frames(&alice), Vec::<Value>::new());
}

#[test]
fn live_frames_carry_their_acceptance_for_the_delivery_latency_and_replays_do_not() {
    use herald_utils::Clock as _;

    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    let epoch = subscribe(&mut alice, "chat:1")["epoch"].clone();
    let accepted = harness.clock.now();
    harness.publish("chat:1", "1", Priority::Normal);
    let live = alice.connection().outbox().take_all();
    let stamps: Vec<_> = live.iter().map(crate::Frame::accepted).collect();
    assert_eq!(stamps, [Some(accepted)]);

    // The transport reports the write 5 ms later.
    harness.advance(5);
    harness.gateway.record_delivery(accepted);
    let latency = harness.stats().latency;
    assert_eq!((latency.samples, latency.p50_us), (1, 5_000));
    assert_eq!(harness.gateway.latency().count(), 1);

    // A replay from history is not a late delivery: its frames carry no acceptance.
    let mut bob = harness.connect("bob");
    bob.on_text(&format!(
        r#"{{"type":"subscribe","data":{{"topic":"chat:1","since":{{"offset":0,"epoch":{epoch}}}}}}}"#
    ));
    let replayed = bob.connection().outbox().take_all();
    assert!(
        replayed
            .iter()
            .any(|f| f.as_str().contains(r#""type":"message""#)),
        "{replayed:?}"
    );
    assert!(
        replayed.iter().all(|f| f.accepted().is_none()),
        "{replayed:?}"
    );
}
