//! The operation queue between client publishes and fan-out.

use herald_monitoring::{CheckStatus, HealthCheck};

use super::*;

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

#[test]
fn api_operations_wait_in_the_bounded_queue_highest_priority_first() {
    let harness = Harness::with(|s| s.operation_queue_size = 3);
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    let gateway = &harness.gateway;
    let publication = |data: &str, priority| Publication {
        topic: topic("chat:1"),
        data: raw(data),
        priority,
        id: None,
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut low = pin!(gateway.publish(publication("1", Priority::Low)));
    let mut push = pin!(gateway.send_to_user(UserSend {
        user: UserId::new("alice"),
        thread: None,
        data: raw("2"),
        priority: Priority::High,
    }));
    let mut event = pin!(gateway.send_event(crate::EventSend {
        user: UserId::new("alice"),
        event: herald_protocol::EventName::AgentStarted,
        data: raw("3"),
        target: crate::EventTarget::default(),
    }));
    assert!(low.as_mut().poll(&mut cx).is_pending());
    assert!(push.as_mut().poll(&mut cx).is_pending());
    assert!(event.as_mut().poll(&mut cx).is_pending());
    // Nothing is performed before the worker runs, and a fourth operation is refused.
    assert!(frames(&alice).is_empty());
    let refused = complete(
        gateway,
        gateway.publish(publication("4", Priority::Critical)),
    );
    assert!(matches!(refused, Err(GatewayError::Overloaded { .. })));
    let stats = harness.stats();
    assert_eq!((stats.operations.queued, stats.operations.rejected), (3, 1));
    // A full queue shows in the gateway's health check, and goes with it.
    let health = |gateway: &Gateway| HealthCheck::check(gateway).status;
    assert_eq!(health(gateway), CheckStatus::Degraded);
    run_operations(gateway);
    assert_eq!(health(gateway), CheckStatus::Ok);
    assert!(matches!(low.as_mut().poll(&mut cx), Poll::Ready(Ok(outcome)) if outcome.offset == 1));
    assert!(
        matches!(push.as_mut().poll(&mut cx), Poll::Ready(Ok(delivered)) if delivered.connections == 1)
    );
    assert!(
        matches!(event.as_mut().poll(&mut cx), Poll::Ready(Ok(outcome)) if outcome.delivered == 1)
    );
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "event", "data": 3},
            {"type": "push", "data": 2},
            {"type": "message", "data": 1},
        ]),
    );
    assert_eq!(harness.stats().operations.queued, 0);
}
