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
    // The worker is in the middle of a turn: API operations queue behind it.
    let busy = gateway.node.operations.worker_turn();
    assert!(busy.is_some());
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
    drop(busy);
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
    let busy = gateway.node.operations.worker_turn();
    let mut first = pin!(gateway.publish(publication("chat:1")));
    let mut second = pin!(gateway.publish(publication("chat:2")));
    assert!(
        first
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(second.as_mut().poll(&mut noop).is_pending());
    drop(busy);
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

/// Wakers that log their names, in the order they are woken.
#[derive(Default)]
struct WakeLog(Arc<std::sync::Mutex<Vec<&'static str>>>);

impl WakeLog {
    fn waker(&self, name: &'static str) -> Waker {
        Waker::from(Arc::new(Logged {
            name,
            log: Arc::clone(&self.0),
        }))
    }

    fn woken(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Alice subscribed to `chat:1`, her transport waiting for frames as its task does, with a
/// waker that `log` names "transport".
fn alice_waiting_on_chat(harness: &Harness, log: &WakeLog) -> Session {
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    let transport = log.waker("transport");
    let mut drained = Vec::new();
    assert!(
        alice
            .connection()
            .outbox()
            .poll_drain(&mut Context::from_waker(&transport), 8, &mut drained)
            .is_pending()
    );
    alice
}

/// A normal-priority publication of `data` to `chat:1`.
fn chat(data: &str) -> Publication {
    Publication {
        topic: topic("chat:1"),
        data: raw(data),
        priority: Priority::Normal,
        id: None,
    }
}

#[test]
fn a_turns_transports_are_woken_after_its_http_publishers_are_answered() {
    let harness = Harness::new();
    let log = WakeLog::default();
    let alice = alice_waiting_on_chat(&harness, &log);
    let gateway = &harness.gateway;
    let publisher = log.waker("publisher");
    let busy = gateway.node.operations.worker_turn();
    let mut publish = pin!(gateway.publish(chat("1")));
    assert!(
        publish
            .as_mut()
            .poll(&mut Context::from_waker(&publisher))
            .is_pending()
    );
    drop(busy);
    run_operations(gateway);
    // The runtime runs the task woken last first: the delivery's writer, then the answer.
    assert_eq!(log.woken(), ["publisher", "transport"]);
    assert_frames(
        &frames(&alice),
        &json!([{"type": "message", "topic": "chat:1"}]),
    );
}

#[test]
fn an_api_publication_on_an_idle_gateway_is_performed_in_place_and_steps_aside_for_the_delivery() {
    let harness = Harness::new();
    let log = WakeLog::default();
    let alice = alice_waiting_on_chat(&harness, &log);
    let gateway = &harness.gateway;
    let publisher = log.waker("publisher");
    let mut publish = pin!(gateway.publish(chat("1")));
    let mut cx = Context::from_waker(&publisher);
    // No worker runs: the first poll performs it, wakes the transport, then steps aside
    // (woken at once, behind the transport) so the delivery is written before the answer.
    assert!(publish.as_mut().poll(&mut cx).is_pending());
    assert_eq!(log.woken(), ["transport", "publisher"]);
    assert_eq!(alice.connection().outbox().len(), 1);
    assert!(matches!(publish.as_mut().poll(&mut cx), Poll::Ready(Ok(o)) if o.offset == 1));
    let stats = harness.stats();
    assert_eq!((stats.operations.queued, stats.operations.rejected), (0, 0));
    assert_frames(
        &frames(&alice),
        &json!([{"type": "message", "topic": "chat:1", "offset": 1}]),
    );
}

/// Alice subscribed to `chat:1` with a client publish of `"client"` to it waiting in the queue
/// for the worker, as a client's publish always does.
fn alice_with_a_client_publish_queued(harness: &Harness) -> Session {
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    alice.on_text(
        r#"{"type":"publish","messageId":"p1","data":{"topic":"chat:1","data":"client"}}"#,
    );
    alice
}

#[test]
fn an_api_operation_queues_behind_work_already_queued_and_never_overtakes_it() {
    let harness = Harness::new();
    let alice = alice_with_a_client_publish_queued(&harness);
    let gateway = &harness.gateway;
    let mut cx = Context::from_waker(Waker::noop());
    let mut publish = pin!(gateway.publish(chat(r#""api""#)));
    assert!(publish.as_mut().poll(&mut cx).is_pending());
    assert!(frames(&alice).is_empty());
    assert_eq!(harness.stats().operations.queued, 2);
    run_operations(gateway);
    assert!(matches!(publish.as_mut().poll(&mut cx), Poll::Ready(Ok(o)) if o.offset == 2));
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "message", "offset": 1, "data": "client"},
            {"type": "ack", "messageId": "p1", "data": {"offset": 1}},
            {"type": "message", "offset": 2, "data": "api"},
        ]),
    );
}

#[test]
fn a_publish_batch_on_an_idle_gateway_is_performed_in_one_turn_and_steps_aside_once() {
    let harness = Harness::new();
    let log = WakeLog::default();
    let alice = alice_waiting_on_chat(&harness, &log);
    let gateway = &harness.gateway;
    let publisher = log.waker("publisher");
    let mut batch = pin!(gateway.publish_batch(vec![chat("1"), chat("2"), chat("3")]));
    let mut cx = Context::from_waker(&publisher);
    assert!(batch.as_mut().poll(&mut cx).is_pending());
    // All three queued to alice before her transport is woken, once, and the publisher
    // stepped aside once, behind it.
    assert_eq!(log.woken(), ["transport", "publisher"]);
    assert_eq!(alice.connection().outbox().len(), 3);
    let Poll::Ready(outcomes) = batch.as_mut().poll(&mut cx) else {
        panic!("the batch was answered in place");
    };
    let offsets: Vec<_> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().map(|o| o.offset).ok())
        .collect();
    assert_eq!(offsets, [Some(1), Some(2), Some(3)]);
    assert_eq!(harness.stats().operations.queued, 0);
}

#[test]
fn a_publish_batch_behind_queued_work_is_queued_item_by_item_and_a_full_queue_refuses_the_rest() {
    let harness = Harness::with(|s| s.operation_queue_size = 3);
    let alice = alice_with_a_client_publish_queued(&harness);
    let gateway = &harness.gateway;
    let mut cx = Context::from_waker(Waker::noop());
    let mut batch = pin!(gateway.publish_batch(vec![chat("2"), chat("3"), chat("4")]));
    assert!(batch.as_mut().poll(&mut cx).is_pending());
    assert!(frames(&alice).is_empty());
    let stats = harness.stats();
    assert_eq!((stats.operations.queued, stats.operations.rejected), (3, 1));
    run_operations(gateway);
    let Poll::Ready(outcomes) = batch.as_mut().poll(&mut cx) else {
        panic!("the worker answered the queued items");
    };
    assert!(matches!(outcomes[0], Ok(ref o) if o.offset == 2));
    assert!(matches!(outcomes[1], Ok(ref o) if o.offset == 3));
    assert!(matches!(outcomes[2], Err(GatewayError::Overloaded { .. })));
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "message", "offset": 1, "data": "client"},
            {"type": "ack", "messageId": "p1", "data": {"offset": 1}},
            {"type": "message", "offset": 2, "data": 2},
            {"type": "message", "offset": 3, "data": 3},
        ]),
    );
}
