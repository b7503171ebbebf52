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

/// Records, when the publisher it wakes is answered, how many frames another subscriber's
/// queue holds.
struct QueuedAtAnswer {
    other: Arc<crate::Connection>,
    seen: std::sync::Mutex<Option<usize>>,
}

impl std::task::Wake for QueuedAtAnswer {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get_or_insert(self.other.outbox().len());
    }
}

#[test]
fn http_publishers_are_answered_once_every_publication_of_the_turn_is_queued() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    let mut bob = harness.connect("bob");
    subscribe(&mut alice, "chat:1");
    subscribe(&mut bob, "chat:2");
    let gateway = &harness.gateway;
    let publication = |name: &str| Publication {
        topic: topic(name),
        data: raw("1"),
        priority: Priority::Normal,
        id: None,
    };
    let probe = Arc::new(QueuedAtAnswer {
        other: Arc::clone(bob.connection()),
        seen: std::sync::Mutex::new(None),
    });
    let waker = Waker::from(Arc::clone(&probe));
    let mut noop = Context::from_waker(Waker::noop());
    let mut first = pin!(gateway.publish(publication("chat:1")));
    let mut second = pin!(gateway.publish(publication("chat:2")));
    assert!(
        first
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(second.as_mut().poll(&mut noop).is_pending());
    run_operations(gateway);
    // The first publisher heard back only once bob's publication, performed after it in the
    // same turn, was queued too.
    let seen = *probe
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(seen, Some(1));
    assert!(matches!(first.as_mut().poll(&mut noop), Poll::Ready(Ok(o)) if o.offset == 1));
    assert!(matches!(second.as_mut().poll(&mut noop), Poll::Ready(Ok(o)) if o.offset == 1));
    assert_frames(
        &frames(&alice),
        &json!([{"type": "message", "topic": "chat:1"}]),
    );
    assert_frames(
        &frames(&bob),
        &json!([{"type": "message", "topic": "chat:2"}]),
    );
}

/// Appends its name to a shared log when woken.
struct Logged {
    name: &'static str,
    log: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl std::task::Wake for Logged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self.name);
    }
}

#[test]
fn a_turns_transports_are_woken_after_its_http_publishers_are_answered() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waker = |name| {
        Waker::from(Arc::new(Logged {
            name,
            log: Arc::clone(&log),
        }))
    };
    // Alice's transport waits for frames, as its task does.
    let transport = waker("transport");
    let mut drained = Vec::new();
    assert!(
        alice
            .connection()
            .outbox()
            .poll_drain(&mut Context::from_waker(&transport), 8, &mut drained)
            .is_pending()
    );
    let gateway = &harness.gateway;
    let publisher = waker("publisher");
    let mut publish = pin!(gateway.publish(Publication {
        topic: topic("chat:1"),
        data: raw("1"),
        priority: Priority::Normal,
        id: None,
    }));
    assert!(
        publish
            .as_mut()
            .poll(&mut Context::from_waker(&publisher))
            .is_pending()
    );
    run_operations(gateway);
    // The runtime runs the task woken last first: the delivery's writer, then the answer.
    assert_eq!(
        *log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        ["publisher", "transport"]
    );
    assert_frames(
        &frames(&alice),
        &json!([{"type": "message", "topic": "chat:1"}]),
    );
}
