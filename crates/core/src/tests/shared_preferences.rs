//! Gateways sharing a [`PreferenceStore`], as nodes behind Redis do: a change made on one node
//! reaches the user's connections on every node as the in-memory store's change reaches the
//! user's other connections (a `preferences` push, and batching follows it), and a store that
//! cannot answer is an `unavailable` error, nothing else.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::Map;

use crate::{ChangedElsewhere, PreferenceError, PreferenceReply, PreferenceStore, merge_patch};

use super::*;

/// One store for every node, answering at once; each node gets an endpoint.
#[derive(Default)]
struct FakeStore {
    users: Mutex<HashMap<UserId, Map<String, Value>>>,
    nodes: Mutex<Vec<(usize, ChangedElsewhere)>>,
    down: AtomicBool,
}

struct Endpoint {
    store: Arc<FakeStore>,
    node: usize,
}

impl PreferenceStore for Endpoint {
    fn attach(&self, local: ChangedElsewhere) {
        let mut nodes = self
            .store
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nodes.push((self.node, local));
    }

    fn get(&self, user: &UserId, reply: PreferenceReply) {
        if self.store.down.load(Ordering::Relaxed) {
            return reply(Err(PreferenceError::Unavailable("store down".to_owned())));
        }
        let users = self
            .store
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = users.get(user).cloned().unwrap_or_default();
        drop(users);
        reply(Ok(current));
    }

    fn update(&self, user: &UserId, patch: Map<String, Value>, reply: PreferenceReply) {
        if self.store.down.load(Ordering::Relaxed) {
            return reply(Err(PreferenceError::Unavailable("store down".to_owned())));
        }
        let mut users = self
            .store
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = users.entry(user.clone()).or_default();
        merge_patch(current, patch);
        let after = current.clone();
        drop(users);
        let nodes = self
            .store
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (node, local) in nodes {
            if node != self.node {
                local.changed(user, after.clone());
            }
        }
        reply(Ok(after));
    }
}

/// Two gateways on one in-process bus and one shared preference store.
fn cluster() -> (Arc<FakeStore>, Vec<Harness>) {
    let store = Arc::new(FakeStore::default());
    let bus = InMemoryBroker::new();
    let nodes = (0..2)
        .map(|node| {
            let base = BaseConfig::default();
            Harness::build_full(
                |_| {},
                ManualClock::at_unix_ms(T0_MS),
                Arc::new(bus.peer()),
                Arc::new(InMemoryHistoryStore::new(
                    base.history_size,
                    300_000,
                    base.history_max_bytes,
                )),
                Arc::new(Endpoint {
                    store: Arc::clone(&store),
                    node,
                }),
                None,
            )
        })
        .collect();
    (store, nodes)
}

#[test]
fn a_change_on_one_node_reaches_the_users_connections_on_every_node() {
    let (_store, nodes) = cluster();
    let mut here = nodes[0].connect("alice");
    let beside = nodes[0].connect("alice");
    let there = nodes[1].connect("alice");
    let bob = nodes[1].connect("bob");
    assert!(there.connection().batching());
    here.on_text(
        r#"{"type":"update_preferences","messageId":"u1","data":{"theme":"dark","batching":false}}"#,
    );
    let after = json!({"theme": "dark", "batching": false});
    assert_frames(
        &frames(&here),
        &json!([{"type": "ack", "messageId": "u1", "data": after}]),
    );
    for other in [&beside, &there] {
        assert_frames(
            &frames(other),
            &json!([{"type": "preferences", "messageId": null, "data": after}]),
        );
        assert!(!other.connection().batching());
    }
    assert_eq!(frames(&bob), Vec::<Value>::new());
    let mut there = there;
    there.on_text(r#"{"type":"get_preferences","messageId":"g"}"#);
    assert_frames(
        &frames(&there),
        &json!([{"type": "preferences", "messageId": "g", "data": after}]),
    );
}

#[test]
fn a_store_that_cannot_answer_is_an_unavailable_error() {
    let (store, nodes) = cluster();
    let mut alice = nodes[0].connect("alice");
    let other = nodes[1].connect("alice");
    store.down.store(true, Ordering::Relaxed);
    alice.on_text(r#"{"type":"update_preferences","messageId":"u","data":{"theme":"dark"}}"#);
    alice.on_text(r#"{"type":"get_preferences","messageId":"g"}"#);
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "error", "messageId": "u", "error": {"code": "unavailable"}},
            {"type": "error", "messageId": "g", "error": {"code": "unavailable"}},
        ]),
    );
    assert_eq!(frames(&other), Vec::<Value>::new());
    assert_eq!(nodes[0].stats().broker.failures, 2);
}
