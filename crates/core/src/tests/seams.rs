//! The seams: a gateway built entirely from fakes, its stats (the one source of every count,
//! memory from the probe), and the broker that carries operations between nodes.

use herald_monitoring::StatsSource;

use crate::{
    Envelope, EventSend, EventTarget, Frame,
    tests::fakes::{FakeAuthenticator, RecordingBroker},
};

use super::*;

/// A gateway on a manual clock, a recording broker and a fake probe, with the fakes kept.
struct Faked {
    harness: Harness,
    broker: Arc<RecordingBroker>,
}

fn faked() -> Faked {
    let broker = Arc::new(RecordingBroker::default());
    let harness = Harness::build(
        |_| {},
        ManualClock::at_unix_ms(T0_MS),
        Arc::clone(&broker) as Arc<dyn Broker>,
    );
    Faked { harness, broker }
}

fn event(user: &str, id: &str) -> EventSend {
    EventSend {
        user: UserId::new(user),
        event: herald_protocol::EventName::AgentStarted,
        data: raw(r#"{"step":1}"#),
        target: EventTarget {
            id: Some(id.to_owned()),
            ..EventTarget::default()
        },
    }
}

#[test]
fn a_gateway_built_from_fakes_serves_a_conversation_and_counts_every_step() {
    let Faked { harness, broker } = faked();
    // Alice authenticates at the handshake, bob by message.
    let mut alice = harness.connect("alice");
    let mut bob = harness.anonymous();
    bob.on_text(&expand(
        r#"{"type":"auth","messageId":"a","data":{"token":"{bob}"}}"#,
    ));
    assert_frames(
        &frames(&bob),
        &json!([{"type": "connected", "data": {"userId": "bob"}}, {"type": "ack", "messageId": "a"}]),
    );
    subscribe(&mut alice, "chat:1");
    let outcome = harness.publish("chat:1", r#"{"hello":1}"#, Priority::Normal);
    assert_eq!((outcome.offset, outcome.delivered), (1, 1));
    let delivered = raw_frames(&alice);
    assert_eq!(delivered.len(), 1);
    // The broker got the very frame alice got, with its position.
    let published = broker.take();
    assert!(
        matches!(
            &published[..],
            [Envelope::Publication { topic, offset: 1, frame, .. }]
                if topic.as_str() == "chat:1" && frame.as_str() == delivered[0]
        ),
        "{published:?}"
    );
    // A critical event reaches bob, who acknowledges it.
    let sent = complete(
        &harness.gateway,
        harness.gateway.send_event(event("bob", "e1")),
    )
    .expect("event accepted");
    assert_eq!((sent.delivered, sent.pending), (1, 1));
    assert_frames(
        &frames(&bob),
        &json!([{"type": "event", "event": "agent_started", "id": "e1", "data": {"step": 1}}]),
    );
    assert!(matches!(&broker.take()[..], [Envelope::Event { id, .. }] if &**id == "e1"));
    bob.on_text(r#"{"type":"ack","messageId":"k","data":{"ids":["e1"]}}"#);
    assert_frames(
        &frames(&bob),
        &json!([{"type": "ack", "messageId": "k", "data": {"acknowledged": 1}}]),
    );
    let stats = harness.stats();
    assert_eq!(
        (
            stats.connections,
            stats.users,
            stats.subscriptions,
            stats.topics
        ),
        (2, 2, 1, 1)
    );
    assert_eq!(
        (
            stats.messages.published,
            stats.messages.delivered,
            stats.messages.shed
        ),
        (1, 2, 0)
    );
    assert_eq!(
        (
            stats.events.sent,
            stats.events.acknowledged,
            stats.events.pending
        ),
        (1, 1, 0)
    );
    assert_eq!(stats.connection_totals.opened, 2);
    assert_eq!(
        (
            stats.memory.rss_bytes,
            stats.memory.used_bytes,
            stats.memory.limit_bytes
        ),
        (MEMORY.resident_bytes, MEMORY.used_bytes, MEMORY.limit_bytes)
    );
    // 40 MiB of a 512 MiB budget.
    assert_eq!(stats.memory.pressure_percent, Some(7.8));
    let source: &dyn StatsSource = &harness.gateway;
    assert_eq!(source.stats(), stats);
    drop((alice, bob));
    assert_eq!(harness.stats().connection_totals.closed, 2);
}

#[test]
fn memory_in_the_stats_is_read_from_the_probe_each_time() {
    let probe = FakeProbe::new(MemoryReading::default());
    let base = BaseConfig::default();
    let gateway = Gateway::new(GatewayParts {
        settings: GatewaySettings::from_config(&base),
        runtime: Arc::new(RuntimeConfig::new(&base)),
        authenticator: Arc::new(FakeAuthenticator::new(Vec::new())),
        preferences: Arc::new(InMemoryPreferenceStore::new(10)),
        history: Arc::new(InMemoryHistoryStore::new(10, 1_000, 1 << 20)),
        events: None,
        clock: Arc::new(ManualClock::at_unix_ms(T0_MS)),
        broker: Arc::new(InMemoryBroker::new()),
        memory: Arc::new(probe.clone()),
    });
    assert_eq!(gateway.stats().memory.rss_bytes, 0);
    probe.set(MemoryReading {
        used_bytes: 7,
        resident_bytes: 9,
        allocated_bytes: None,
        limit_bytes: None,
    });
    let memory = gateway.stats().memory;
    assert_eq!(
        (memory.rss_bytes, memory.used_bytes, memory.limit_bytes),
        (9, 7, None)
    );
    assert_eq!(memory.pressure_percent, None);
}

#[test]
fn operations_reach_the_connections_of_the_other_nodes() {
    let bus = InMemoryBroker::new();
    let node_a = Harness::build(|_| {}, ManualClock::at_unix_ms(T0_MS), Arc::new(bus.peer()));
    let node_b = Harness::build(|_| {}, ManualClock::at_unix_ms(T0_MS), Arc::new(bus));
    let mut here = node_a.connect("alice");
    let mut there = node_b.connect("alice");
    let bob_there = node_b.connect_on("bob", Some("t1"));
    subscribe(&mut here, "chat:1");
    subscribe(&mut there, "chat:1");
    // The accepting node answers with its own deliveries; the other node gets the same bytes.
    let outcome = node_a.publish("chat:1", r#"{"n":1}"#, Priority::Normal);
    assert_eq!(outcome.delivered, 1);
    assert_eq!(raw_frames(&here), raw_frames(&there));
    assert_eq!(
        node_a.send_to_user("bob", Some("t1"), "2", Priority::Normal),
        0
    );
    assert_eq!(node_a.broadcast("3", Priority::Normal, &[]), 1);
    let sent = complete(
        &node_a.gateway,
        node_a.gateway.send_event(event("bob", "e1")),
    )
    .expect("event accepted");
    assert_eq!(sent.delivered, 0);
    assert_frames(
        &frames(&bob_there),
        &json!([
            {"type": "push", "scope": "user", "data": 2},
            {"type": "push", "scope": "broadcast", "data": 3},
            {"type": "event", "id": "e1"},
        ]),
    );
    assert_frames(
        &frames(&there),
        &json!([{"type": "push", "scope": "broadcast", "data": 3}]),
    );
    // Nothing comes back to the node that accepted the operations.
    assert_frames(
        &frames(&here),
        &json!([{"type": "push", "scope": "broadcast", "data": 3}]),
    );
    // Each node counts what it queued to its own connections.
    assert_eq!(node_a.stats().messages.delivered, 2);
    assert_eq!(node_b.stats().messages.delivered, 5);
    assert_eq!(node_b.stats().messages.published, 0);
}

#[test]
fn a_broker_failure_costs_only_the_other_nodes_and_is_counted() {
    let Faked { harness, broker } = faked();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    broker.refuse(true);
    let outcome = harness.publish("chat:1", "1", Priority::Normal);
    assert_eq!(outcome.delivered, 1);
    assert_eq!(offsets(&alice, "chat:1").len(), 1);
    assert_eq!(harness.stats().broker.failures, 1);
    broker.refuse(false);
    harness.publish("chat:1", "2", Priority::Normal);
    assert_eq!(broker.take().len(), 1);
    assert_eq!(harness.stats().broker.failures, 1);
}

#[test]
fn envelopes_from_another_node_reach_subscribers_and_create_no_topic() {
    let Faked { harness, broker } = faked();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    let frame = |text: &str| Frame::from(text.to_owned());
    let message = r#"{"type":"message","topic":"chat:1","data":1,"offset":9,"epoch":"other"}"#;
    let publication = |name: &str| Envelope::Publication {
        topic: topic(name),
        offset: 9,
        epoch: Arc::from("other"),
        priority: Priority::Normal,
        frame: frame(message),
    };
    assert_eq!(broker.deliver_from_peer(&publication("chat:1")), 1);
    assert_eq!(broker.deliver_from_peer(&publication("chat:2")), 0);
    assert_eq!(raw_frames(&alice), [message]);
    assert_eq!(harness.stats().topics, 1);
    // Only this node's connections of the user that receive the thread get a user push.
    let push = r#"{"type":"push","scope":"user","data":1}"#;
    let to_alice = |thread: Option<&str>| Envelope::User {
        user: UserId::new("alice"),
        thread: thread.map(ThreadId::new),
        priority: Priority::Normal,
        frame: frame(push),
    };
    assert_eq!(broker.deliver_from_peer(&to_alice(Some("t9"))), 1);
    assert_eq!(raw_frames(&alice), [push]);
    let bound = harness.connect_on("alice", Some("t1"));
    assert_eq!(broker.deliver_from_peer(&to_alice(Some("t9"))), 1);
    assert!(raw_frames(&bound).is_empty());
    assert_eq!(harness.stats().messages.delivered, 3);
    // Nothing delivered from another node is handed back to the broker.
    assert!(broker.take().is_empty());
}
