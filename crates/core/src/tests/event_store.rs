//! Gateways sharing an [`EventStore`], as nodes behind Redis do: an event accepted on one node
//! is kept in the store before its sender is answered and reaches the user's connections on
//! every node; an ack on one node stops redelivery on all; a user connecting anywhere gets the
//! pending events from the store, in order and once; the store's limit and unavailability
//! refuse the event.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use crate::{
    AckedElsewhere, Appended, EventOutcome, EventSend, EventStore, EventStoreError,
    EventStoreReply, EventTarget, StoredEvent,
};

use super::*;

/// A shared store in memory, answering at once; each node gets an endpoint.
#[derive(Default)]
struct FakeStore {
    users: Mutex<HashMap<UserId, Vec<StoredEvent>>>,
    nodes: Mutex<Vec<(String, AckedElsewhere)>>,
    down: std::sync::atomic::AtomicBool,
    /// While set, answers to `pending` wait in `held` (read when asked, answered on release).
    hold: std::sync::atomic::AtomicBool,
    held: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

struct Endpoint {
    store: Arc<FakeStore>,
    name: String,
}

impl FakeStore {
    fn ids(&self, user: &str) -> Vec<String> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users
            .get(&UserId::new(user))
            .map(|events| events.iter().map(|e| e.id.clone()).collect())
            .unwrap_or_default()
    }

    fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers the held `pending` calls, in order.
    fn release(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(PoisonError::into_inner));
        for answer in held {
            answer();
        }
    }
}

fn unavailable<T>() -> Result<T, EventStoreError> {
    Err(EventStoreError::Unavailable("store down".to_owned()))
}

impl EventStore for Endpoint {
    fn attach(&self, local: AckedElsewhere) {
        let mut nodes = self
            .store
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nodes.push((self.name.clone(), local));
    }

    fn node(&self) -> &str {
        &self.name
    }

    fn append(
        &self,
        event: StoredEvent,
        limit: usize,
        _ttl: Duration,
        reply: EventStoreReply<Appended>,
    ) {
        if self.store.is_down() {
            return reply(unavailable());
        }
        let mut users = self
            .store
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pending = users.entry(event.user.clone()).or_default();
        let answer = if pending.iter().any(|e| e.id == event.id) {
            Appended::Duplicate {
                pending: pending.len(),
            }
        } else if pending.len() >= limit {
            Appended::Full
        } else {
            pending.push(event);
            Appended::Stored {
                pending: pending.len(),
            }
        };
        drop(users);
        reply(Ok(answer));
    }

    fn pending(
        &self,
        user: &UserId,
        _now_unix_ms: u64,
        _ttl: Duration,
        reply: EventStoreReply<Vec<StoredEvent>>,
    ) {
        if self.store.is_down() {
            return reply(unavailable());
        }
        let users = self
            .store
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let events = users.get(user).cloned().unwrap_or_default();
        drop(users);
        if self.store.hold.load(std::sync::atomic::Ordering::Relaxed) {
            let mut held = self
                .store
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            held.push(Box::new(move || reply(Ok(events))));
            return;
        }
        reply(Ok(events));
    }

    fn acknowledge(
        &self,
        user: &UserId,
        _thread: Option<&ThreadId>,
        ids: Vec<String>,
        reply: EventStoreReply<Vec<String>>,
    ) {
        if self.store.is_down() {
            return reply(unavailable());
        }
        let mut users = self
            .store
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pending = users.entry(user.clone()).or_default();
        let removed: Vec<String> = pending
            .iter()
            .filter(|e| ids.contains(&e.id))
            .map(|e| e.id.clone())
            .collect();
        pending.retain(|e| !removed.contains(&e.id));
        drop(users);
        let nodes = self
            .store
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, node) in nodes {
            if name != self.name {
                node.acknowledged(user, &removed);
            }
        }
        reply(Ok(removed));
    }
}

/// Three gateways on one in-process bus and one shared store; redelivery after 1 s, at most
/// 3 pending events per user.
fn cluster() -> (Arc<FakeStore>, Vec<Harness>) {
    let store = Arc::new(FakeStore::default());
    let bus = InMemoryBroker::new();
    let nodes = (0..3)
        .map(|i| {
            let broker: Arc<dyn Broker> = Arc::new(bus.peer());
            let endpoint: Arc<dyn EventStore> = Arc::new(Endpoint {
                store: Arc::clone(&store),
                name: format!("node-{i}"),
            });
            let base = BaseConfig::default();
            Harness::build_full(
                |settings| {
                    settings.event_ack_timeout = Duration::from_secs(1);
                    settings.max_pending_events = 3;
                },
                ManualClock::at_unix_ms(T0_MS),
                broker,
                Arc::new(InMemoryHistoryStore::new(
                    base.history_size,
                    300_000,
                    base.history_max_bytes,
                )),
                Arc::new(crate::InMemoryPreferenceStore::new(10)),
                Some(endpoint),
            )
        })
        .collect();
    (store, nodes)
}

fn send(node: &Harness, user: &str, id: &str) -> Result<EventOutcome, GatewayError> {
    let event = EventSend {
        user: UserId::new(user),
        event: herald_protocol::EventName::AgentStarted,
        data: raw(&format!(r#"{{"id":"{id}"}}"#)),
        target: EventTarget {
            id: Some(id.to_owned()),
            ..EventTarget::default()
        },
    };
    complete(&node.gateway, node.gateway.send_event(event))
}

/// The ids of the `event` frames queued to the session since the last look.
fn event_ids(session: &Session) -> Vec<String> {
    frames(session)
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn an_event_is_stored_then_reaches_the_user_on_every_node() {
    let (store, nodes) = cluster();
    let sessions: Vec<Session> = nodes.iter().map(|n| n.connect("alice")).collect();
    let outcome = send(&nodes[0], "alice", "e1").expect("accepted");
    assert_eq!((outcome.delivered, outcome.pending), (1, 1));
    assert_eq!(store.ids("alice"), ["e1"]);
    for session in &sessions {
        assert_eq!(event_ids(session), ["e1"]);
    }
}

#[test]
fn an_ack_on_one_node_stops_redelivery_on_every_node() {
    let (store, nodes) = cluster();
    let mut sessions: Vec<Session> = nodes.iter().map(|n| n.connect("alice")).collect();
    send(&nodes[0], "alice", "e1").expect("accepted");
    send(&nodes[0], "alice", "e2").expect("accepted");
    for session in &sessions {
        assert_eq!(event_ids(session), ["e1", "e2"]);
    }
    sessions[1].on_text(r#"{"type":"ack","messageId":"a","data":{"ids":["e1"]}}"#);
    assert_frames(
        &frames(&sessions[1]),
        &json!([{"type": "ack", "messageId": "a", "data": {"acknowledged": 1}}]),
    );
    assert_eq!(store.ids("alice"), ["e2"]);
    for node in &nodes {
        node.advance(1_500);
        node.gateway.sweep();
    }
    // Only the unacknowledged event comes again, on every node.
    for session in &sessions {
        assert_eq!(event_ids(session), ["e2"]);
    }
    sessions[2].on_text(r#"{"type":"ack","data":{"ids":["e2"]}}"#);
    for node in &nodes {
        node.advance(1_500);
        node.gateway.sweep();
        assert_eq!(node.stats().events.pending, 0);
    }
    for session in &sessions {
        assert_eq!(event_ids(session), Vec::<String>::new());
    }
}

#[test]
fn a_user_connecting_to_another_node_gets_the_stored_events_in_order_once() {
    let (store, mut nodes) = cluster();
    let alice = nodes[0].connect("alice");
    for id in ["e1", "e2", "e3"] {
        send(&nodes[0], "alice", id).expect("accepted");
    }
    assert_eq!(event_ids(&alice), ["e1", "e2", "e3"]);
    // The node that accepted them goes away with its memory.
    drop(alice);
    drop(nodes.remove(0));
    // The store answers at once here, so the events follow `connected` straight away.
    let elsewhere = nodes[1].open(Some(&token("alice")), None);
    let kinds: Vec<Value> = frames(&elsewhere)
        .iter()
        .map(|f| f["id"].as_str().map_or(f["type"].clone(), |id| json!(id)))
        .collect();
    assert_eq!(
        kinds,
        [json!("connected"), json!("e1"), json!("e2"), json!("e3")]
    );
    // A later event reaches it live, once; the redelivery repeats them in order.
    send(&nodes[0], "alice", "e4").expect_err("at the limit of 3");
    let mut elsewhere = elsewhere;
    elsewhere.on_text(r#"{"type":"ack","data":{"ids":["e1"]}}"#);
    send(&nodes[0], "alice", "e4").expect("accepted");
    assert_eq!(event_ids(&elsewhere), ["e4"]);
    assert_eq!(store.ids("alice"), ["e2", "e3", "e4"]);
    nodes[1].advance(1_500);
    nodes[1].gateway.sweep();
    assert_eq!(event_ids(&elsewhere), ["e2", "e3", "e4"]);
}

#[test]
fn the_stores_limit_and_duplicates_are_answered_by_the_store() {
    let (store, nodes) = cluster();
    for id in ["e1", "e2", "e3"] {
        send(&nodes[0], "alice", id).expect("accepted");
    }
    let again = send(&nodes[1], "alice", "e2").expect("a duplicate is answered");
    assert_eq!((again.delivered, again.pending), (0, 3));
    assert_eq!(
        send(&nodes[2], "alice", "e4"),
        Err(GatewayError::TooManyPending { limit: 3 })
    );
    assert_eq!(nodes[2].stats().events.rejected, 1);
    assert_eq!(store.ids("alice"), ["e1", "e2", "e3"]);
}

#[test]
fn an_unavailable_store_refuses_the_event_and_delivers_nothing() {
    let (store, nodes) = cluster();
    let alice = nodes[0].connect("alice");
    store.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = send(&nodes[0], "alice", "e1");
    assert!(
        matches!(refused, Err(GatewayError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(frames(&alice).is_empty());
    assert_eq!(nodes[0].stats().events.pending, 0);
    assert_eq!(nodes[0].stats().broker.failures, 1);
}

#[test]
fn a_node_keeps_copies_only_for_the_users_it_holds_connections_of() {
    let (store, nodes) = cluster();
    // Accepted where alice has no connection: kept in the store, not on the node.
    send(&nodes[0], "alice", "e1").expect("accepted");
    assert_eq!(store.ids("alice"), ["e1"]);
    assert_eq!(nodes[0].stats().events.pending, 0);
    let alice = nodes[1].open(Some(&token("alice")), None);
    let ids: Vec<Value> = frames(&alice).iter().map(|f| f["id"].clone()).collect();
    assert_eq!(
        ids,
        [Value::Null, json!("e1")],
        "connected, then e1 from the store"
    );
    assert_eq!(nodes[1].stats().events.pending, 1);
    // Her last connection there leaves: the copy goes at the next sweep, the store keeps it.
    drop(alice);
    nodes[1].gateway.sweep();
    assert_eq!(nodes[1].stats().events.pending, 0);
    assert_eq!(store.ids("alice"), ["e1"]);
    let back = nodes[1].open(Some(&token("alice")), None);
    let ids: Vec<Value> = frames(&back).iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids, [Value::Null, json!("e1")], "connected, then e1 once");
}

#[test]
fn an_event_arriving_live_before_the_stores_answer_is_repeated_after_the_older_ones() {
    let (store, nodes) = cluster();
    send(&nodes[0], "alice", "e1").expect("accepted");
    store.hold.store(true, std::sync::atomic::Ordering::Relaxed);
    let alice = nodes[1].connect("alice");
    // e2 reaches the new connection live while the store's answer (e1) is on its way.
    send(&nodes[0], "alice", "e2").expect("accepted");
    assert_eq!(event_ids(&alice), ["e2"]);
    store.release();
    // What follows is complete and in order: e1 then e2 (the client drops the repeat).
    assert_eq!(event_ids(&alice), ["e1", "e2"]);
    // The node's copies are in the store's order too: the redelivery keeps it.
    nodes[1].advance(1_500);
    nodes[1].gateway.sweep();
    assert_eq!(event_ids(&alice), ["e1", "e2"]);
}

#[test]
fn a_fetch_the_store_could_not_answer_is_asked_again_while_the_connection_lives() {
    let (store, nodes) = cluster();
    send(&nodes[0], "alice", "e1").expect("accepted");
    store.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let alice = nodes[1].connect("alice");
    // A connection that closed before the store answered is not asked for again.
    drop(nodes[1].connect("alice"));
    nodes[1].advance(1_000);
    nodes[1].gateway.sweep();
    assert_eq!(
        event_ids(&alice),
        Vec::<String>::new(),
        "the store is still down"
    );
    store
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    nodes[1].advance(1_000);
    nodes[1].gateway.sweep();
    assert_eq!(event_ids(&alice), ["e1"]);
}
