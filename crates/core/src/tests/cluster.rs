//! Gateways sharing a sequencer, as nodes behind Redis do: the same offsets and epoch on every
//! node, resume on another node than the one a client left, dedupe across nodes, and the
//! offset gaps a lossy bus leaves, closed from the shared history.

use crate::{
    Frame, SequencedDelivery, SequencedPublication, complete_message_frame,
    tests::fakes::SequencingCluster,
};

use super::*;

/// Three gateways on one [`SequencingCluster`].
fn cluster() -> (Arc<SequencingCluster>, Vec<Harness>) {
    let cluster = Arc::new(SequencingCluster::default());
    let nodes = (0..3)
        .map(|_| Harness::build(|_| {}, ManualClock::at_unix_ms(T0_MS), cluster.endpoint()))
        .collect();
    (cluster, nodes)
}

fn shared(offsets: &[u64]) -> Vec<(u64, String)> {
    offsets
        .iter()
        .map(|o| (*o, "shared-1".to_owned()))
        .collect()
}

#[test]
fn publications_accepted_on_any_node_reach_every_node_once_in_cluster_order() {
    let (cluster, nodes) = cluster();
    let mut readers: Vec<Session> = nodes.iter().map(|n| n.connect("alice")).collect();
    for reader in &mut readers {
        subscribe(reader, "chat:1");
    }
    let first = nodes[0].publish("chat:1", r#"{"n":1}"#, Priority::Normal);
    let second = nodes[2].publish("chat:1", r#"{"n":2}"#, Priority::Normal);
    assert_eq!((first.offset, second.offset), (1, 2));
    assert_eq!(&*second.epoch, "shared-1");
    // Nothing is delivered before the broker brings it back, not even on the origin.
    assert!(frames(&readers[0]).is_empty());
    cluster.pump();
    for reader in &readers {
        assert_eq!(offsets(reader, "chat:1"), shared(&[1, 2]));
    }
    for node in &nodes {
        let info = node.gateway.topic(&topic("chat:1")).expect("topic known");
        assert_eq!(
            (info.position.last_offset, &*info.position.epoch),
            (2, "shared-1")
        );
    }
    assert_eq!(nodes[0].stats().messages.published, 1);
    assert_eq!(nodes[1].stats().messages.published, 0);
    assert_eq!(nodes[1].stats().messages.delivered, 2);
}

#[test]
fn a_client_resumes_on_another_node_with_no_gap_and_no_duplicate() {
    let (cluster, nodes) = cluster();
    let mut alice = nodes[0].connect("alice");
    subscribe(&mut alice, "chat:1");
    for n in 1..=3 {
        nodes[1].publish("chat:1", &format!(r#"{{"n":{n}}}"#), Priority::Normal);
    }
    cluster.pump();
    assert_eq!(offsets(&alice, "chat:1"), shared(&[1, 2, 3]));
    drop(alice);
    // Published while alice is away, on yet another node.
    nodes[2].publish("chat:1", r#"{"n":4}"#, Priority::Normal);
    nodes[2].publish("chat:1", r#"{"n":5}"#, Priority::Normal);
    cluster.pump();
    let mut back = nodes[1].connect("alice");
    back.on_text(
        r#"{"type":"subscribe","messageId":"r","data":{"topic":"chat:1","since":{"offset":3,"epoch":"shared-1"}}}"#,
    );
    assert_frames(
        &frames(&back),
        &json!([
            {"type": "ack", "messageId": "r", "data": {"offset": 5, "epoch": "shared-1", "recovered": true}},
            {"type": "message", "offset": 4, "data": {"n": 4}},
            {"type": "message", "offset": 5, "data": {"n": 5}},
        ]),
    );
    nodes[0].publish("chat:1", r#"{"n":6}"#, Priority::Normal);
    cluster.pump();
    assert_eq!(offsets(&back, "chat:1"), shared(&[6]));
}

#[test]
fn a_publish_id_is_deduplicated_across_nodes() {
    let (cluster, nodes) = cluster();
    let mut alice = nodes[2].connect("alice");
    subscribe(&mut alice, "chat:1");
    let first = nodes[0]
        .publish_with_id("chat:1", "1", Priority::Normal, Some("order-7"))
        .expect("accepted");
    let again = nodes[1]
        .publish_with_id("chat:1", "1", Priority::Normal, Some("order-7"))
        .expect("accepted");
    assert_eq!((again.offset, again.deduplicated), (first.offset, true));
    cluster.pump();
    assert_eq!(offsets(&alice, "chat:1"), shared(&[1]));
    assert_eq!(nodes[1].stats().messages.deduplicated, 1);
}

#[test]
fn messages_the_bus_lost_are_fetched_from_the_shared_history_in_order() {
    let (cluster, nodes) = cluster();
    let mut bob = nodes[1].connect("bob");
    subscribe(&mut bob, "chat:1");
    for n in 1..=4 {
        nodes[0].publish("chat:1", &n.to_string(), Priority::Normal);
    }
    // Node 1 misses offsets 1 and 2; offset 3 reveals the gap.
    cluster.lose(1, 2);
    cluster.pump();
    assert_eq!(offsets(&bob, "chat:1"), shared(&[1, 2, 3, 4]));
}

#[test]
fn what_the_shared_history_no_longer_holds_is_a_visible_gap_that_resume_refuses() {
    let (cluster, nodes) = cluster();
    let mut bob = nodes[1].connect("bob");
    subscribe(&mut bob, "chat:1");
    for n in 1..=4 {
        nodes[0].publish("chat:1", &n.to_string(), Priority::Normal);
    }
    cluster.lose(1, 3);
    cluster.trim("chat:1", 2);
    cluster.pump();
    // 3 comes from the shared history, 1 and 2 are gone: bob sees the gap.
    assert_eq!(offsets(&bob, "chat:1"), shared(&[3, 4]));
    let mut carol = nodes[1].connect("carol");
    carol.on_text(
        r#"{"type":"subscribe","messageId":"r","data":{"topic":"chat:1","since":{"offset":1,"epoch":"shared-1"}}}"#,
    );
    assert_frames(
        &frames(&carol),
        &json!([{"type": "ack", "messageId": "r", "data": {"offset": 4, "recovered": false}}]),
    );
}

#[test]
fn a_stale_copy_is_dropped_and_a_new_epoch_starts_the_topic_afresh() {
    let (cluster, nodes) = cluster();
    let mut bob = nodes[0].connect("bob");
    let ack = subscribe(&mut bob, "chat:1");
    // Before any publication the topic has this node's own epoch.
    assert_ne!(ack["epoch"], json!("shared-1"));
    nodes[1].publish("chat:1", "1", Priority::Normal);
    cluster.pump();
    assert_eq!(offsets(&bob, "chat:1"), shared(&[1]));
    let local = cluster.local(0);
    let copy = SequencedPublication {
        topic: topic("chat:1"),
        offset: 1,
        epoch: Arc::from("shared-1"),
        priority: Priority::Normal,
        frame: Frame::from("stale".to_owned()),
    };
    assert_eq!(
        local.deliver_sequenced(&copy, false),
        SequencedDelivery::Stale
    );
    let reset = SequencedPublication {
        epoch: Arc::from("shared-2"),
        frame: complete_message_frame(
            r#"{"type":"message","topic":"chat:1","data":2,"offset":"#,
            1,
            "shared-2",
        ),
        ..copy
    };
    assert_eq!(
        local.deliver_sequenced(&reset, false),
        SequencedDelivery::Delivered(1)
    );
    assert_eq!(offsets(&bob, "chat:1"), vec![(1, "shared-2".to_owned())]);
}

#[test]
fn a_publication_the_store_refuses_is_an_error_and_reaches_nobody() {
    let (cluster, nodes) = cluster();
    let mut alice = nodes[0].connect("alice");
    subscribe(&mut alice, "chat:1");
    cluster.set_down(true);
    let refused = nodes[0].publish_with_id("chat:1", "1", Priority::Normal, None);
    assert!(
        matches!(refused, Err(GatewayError::Unavailable(_))),
        "{refused:?}"
    );
    alice.on_text(r#"{"type":"publish","messageId":"p","data":{"topic":"chat:1","data":2}}"#);
    run_operations(&nodes[0].gateway);
    cluster.pump();
    assert_frames(
        &frames(&alice),
        &json!([{"type": "error", "messageId": "p", "error": {"code": "unavailable"}}]),
    );
    assert_eq!(nodes[0].stats().messages.published, 0);
    cluster.set_down(false);
    assert_eq!(nodes[0].publish("chat:1", "3", Priority::Normal).offset, 1);
}
