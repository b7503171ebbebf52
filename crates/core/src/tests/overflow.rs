//! Outbox overflow: priority shedding, slow-consumer closes, and the one count of shed frames.

use herald_utils::Priority::{Critical, High, Low, Normal};

use super::*;

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
    assert_eq!(harness.stats().messages.shed, 1);
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

#[test]
fn replies_that_shed_frames_count_them_once_in_the_stats_and_in_what_is_exported() {
    let harness = Harness::with(|s| s.max_queue_size = 3);
    let mut slow = harness.connect("alice");
    for n in 1..=3 {
        assert_eq!(harness.broadcast(&n.to_string(), Low, &[]), 1);
    }
    let before = harness.stats().messages;
    assert_eq!(before.shed, 0);
    // Each pong is critical: it takes the place of the oldest `low` push.
    slow.on_text(r#"{"type":"ping","messageId":"p1"}"#);
    slow.on_text(r#"{"type":"ping","messageId":"p2"}"#);
    assert_eq!(close_code(&slow), None);
    assert_frames(
        &frames(&slow),
        &json!([
            {"type": "push", "scope": "broadcast", "data": 3},
            {"type": "pong", "messageId": "p1"},
            {"type": "pong", "messageId": "p2"},
        ]),
    );
    let stats = harness.stats();
    assert_eq!(stats.messages.shed, before.shed + 2);
    assert_eq!(stats.messages.shed_by_priority.low, 2);
    // Replies are not deliveries: only the three pushes are.
    assert_eq!(stats.messages.delivered, 3);
    let exported: u64 = stats
        .samples()
        .iter()
        .filter(|sample| sample.name == "herald_messages_shed_total")
        .map(|sample| sample.value)
        .sum();
    assert_eq!(exported, stats.messages.shed);
}

#[test]
fn slow_consumer_closes_are_counted() {
    let harness = Harness::with(|s| s.max_queue_size = 1);
    let mut slow = harness.connect("alice");
    subscribe(&mut slow, "chat:1");
    harness.publish("chat:1", "1", Normal);
    harness.publish("chat:1", "2", Normal);
    assert_eq!(close_code(&slow), Some(4009));
    let stats = harness.stats();
    assert_eq!(
        (stats.messages.slow_consumer_closes, stats.messages.shed),
        (1, 0)
    );
}
