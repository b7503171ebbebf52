//! Isolation: random interleavings of subscriptions, publications and user sends against a model.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// The connections of the isolation model: `(user, thread)`.
const MODEL_CONNECTIONS: [(&str, Option<&str>); 6] = [
    ("alice", None),
    ("alice", Some("t1")),
    ("bob", None),
    ("bob", Some("t1")),
    ("bob", Some("t2")),
    ("carol", Some("t2")),
];
const MODEL_USERS: [&str; 4] = ["alice", "bob", "carol", "nobody"];
const MODEL_TOPICS: [&str; 5] = ["user:alice", "user:bob", "user:carol", "room:1", "room:2"];
const MODEL_THREADS: [&str; 2] = ["t1", "t2"];

#[derive(Debug, Clone)]
enum Op {
    Subscribe(usize, usize),
    Unsubscribe(usize, usize),
    Publish(usize),
    SendToUser(usize, Option<usize>),
    Reconnect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let connection = 0..MODEL_CONNECTIONS.len();
    let topic = 0..MODEL_TOPICS.len();
    prop_oneof![
        3 => (connection.clone(), topic.clone()).prop_map(|(c, t)| Op::Subscribe(c, t)),
        1 => (connection.clone(), topic.clone()).prop_map(|(c, t)| Op::Unsubscribe(c, t)),
        3 => topic.prop_map(Op::Publish),
        3 => (0..MODEL_USERS.len(), proptest::option::of(0..MODEL_THREADS.len()))
            .prop_map(|(u, t)| Op::SendToUser(u, t)),
        1 => connection.prop_map(Op::Reconnect),
    ]
}

fn model_connect(harness: &Harness, index: usize) -> Session {
    let (user, thread) = MODEL_CONNECTIONS[index];
    // The early tier allows ten connections per user, so a reconnect never evicts.
    let token = token_with(
        user,
        &json!({"topics": ["user:{sub}", "room:*"], "tier": "early"}),
    );
    let session = harness.open(Some(&token), thread);
    session.connection().outbox().take_all();
    session
}

/// Plays `ops` and checks after each one that every connection received exactly what the model
/// says: its own replies, messages of the topics it is subscribed to, and pushes to its user
/// (and thread). So no connection ever sees another user's traffic.
fn check_isolation(ops: &[Op]) {
    let harness = Harness::new();
    let mut sessions: Vec<Session> = (0..MODEL_CONNECTIONS.len())
        .map(|i| model_connect(&harness, i))
        .collect();
    let mut subscribed: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); sessions.len()];
    let mut last_offset = [0_u64; MODEL_TOPICS.len()];
    for (step, op) in ops.iter().enumerate() {
        let data = format!(r#"{{"step":{step}}}"#);
        let mut expected: Vec<Vec<Value>> = vec![Vec::new(); sessions.len()];
        match *op {
            Op::Subscribe(c, t) => {
                let (user, _) = MODEL_CONNECTIONS[c];
                let name = MODEL_TOPICS[t];
                sessions[c].on_text(&format!(
                    r#"{{"type":"subscribe","messageId":"{step}","data":{{"topic":"{name}"}}}}"#
                ));
                if name.starts_with("room:") || name == format!("user:{user}") {
                    subscribed[c].insert(t);
                    expected[c].push(json!({"type": "ack", "messageId": step.to_string(),
                        "data": {"topic": name, "offset": last_offset[t]}}));
                } else {
                    expected[c].push(forbidden(&step.to_string()));
                }
            }
            Op::Unsubscribe(c, t) => {
                let name = MODEL_TOPICS[t];
                sessions[c].on_text(&format!(
                    r#"{{"type":"unsubscribe","messageId":"{step}","data":{{"topic":"{name}"}}}}"#
                ));
                let was = subscribed[c].remove(&t);
                expected[c].push(json!({"type": "ack", "messageId": step.to_string(),
                    "data": {"topic": name, "unsubscribed": was}}));
            }
            Op::Publish(t) => {
                last_offset[t] += 1;
                let outcome = harness.publish(MODEL_TOPICS[t], &data, Priority::Normal);
                assert_eq!(outcome.offset, last_offset[t]);
                for (c, topics) in subscribed.iter().enumerate() {
                    if topics.contains(&t) {
                        expected[c].push(json!({"type": "message", "topic": MODEL_TOPICS[t],
                            "offset": last_offset[t], "data": {"step": step}}));
                    }
                }
                let receivers = expected.iter().filter(|frames| !frames.is_empty()).count();
                assert_eq!(outcome.delivered, receivers, "step {step}: {op:?}");
            }
            Op::SendToUser(u, t) => {
                let thread = t.map(|t| MODEL_THREADS[t]);
                let delivered =
                    harness.send_to_user(MODEL_USERS[u], thread, &data, Priority::Normal);
                for (c, (owner, bound)) in MODEL_CONNECTIONS.iter().enumerate() {
                    let thread_matches =
                        t.is_none() || bound.is_none() || *bound == t.map(|t| MODEL_THREADS[t]);
                    if *owner == MODEL_USERS[u] && thread_matches {
                        expected[c]
                            .push(json!({"type": "push", "scope": "user", "data": {"step": step}}));
                    }
                }
                let receivers = expected.iter().filter(|frames| !frames.is_empty()).count();
                assert_eq!(delivered, receivers, "step {step}: {op:?}");
            }
            Op::Reconnect(c) => {
                sessions[c] = model_connect(&harness, c);
                subscribed[c].clear();
            }
        }
        for (c, session) in sessions.iter().enumerate() {
            let got = frames(session);
            assert!(
                matches(
                    &Value::Array(got.clone()),
                    &Value::Array(expected[c].clone())
                ),
                "step {step} ({op:?}), connection {c} {:?}\n     got: {got:?}\nexpected: {:?}",
                MODEL_CONNECTIONS[c],
                expected[c]
            );
        }
        let subscriptions: usize = subscribed.iter().map(BTreeSet::len).sum();
        let subscriptions = u64::try_from(subscriptions).expect("a few subscriptions");
        assert_eq!(
            harness.stats().subscriptions,
            subscriptions,
            "step {step}: {op:?}"
        );
        assert_eq!(harness.stats().users, 3);
    }
    drop(sessions);
    assert_stats_empty(&harness);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn connections_never_receive_another_users_traffic(ops in proptest::collection::vec(op(), 1..40)) {
        check_isolation(&ops);
    }
}
