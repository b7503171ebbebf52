//! Critical events: pending until acknowledged, redelivery, threads, bounds and expiry.

use crate::{Emitter, EventOutcome, EventTarget};

use super::*;

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
    assert_eq!(h.stats().events.pending, 1);
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
    assert_eq!(h.stats().events.pending, 0);
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
    assert_eq!(h.stats().events.pending, 0);
}
