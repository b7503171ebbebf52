//! Memory pressure: what the gateway gives up ([`Relief`]), what it reports holding
//! ([`MemorySources`]) and its cleanup pass ([`Cleanup`]).

use herald_memory::{Cleanup, MemorySources, Relief};
use herald_utils::Priority::{Critical, High, Low, Normal};

use crate::{EventSend, EventTarget, Refusal};

use super::*;

/// A harness whose history keeps `per_topic` publications per topic for five minutes.
fn with_history(per_topic: usize) -> Harness {
    Harness::build_with(
        |_| {},
        ManualClock::at_unix_ms(T0_MS),
        Arc::new(InMemoryBroker::new()),
        Arc::new(InMemoryHistoryStore::new(per_topic, 300_000, 1 << 20)),
    )
}

/// Sends the critical event `id` to `user`; how many connections it was queued to now.
fn send_event(harness: &Harness, user: &str, id: &str) -> usize {
    let send = EventSend {
        user: UserId::new(user),
        event: herald_protocol::EventName::AgentStarted,
        data: raw("1"),
        target: EventTarget {
            id: Some(id.to_owned()),
            ..EventTarget::default()
        },
    };
    complete(&harness.gateway, harness.gateway.send_event(send))
        .expect("event accepted")
        .delivered
}

/// The offsets `GET /api/topics/{topic}/history` would list.
fn history_offsets(harness: &Harness, topic_name: &str) -> Vec<u64> {
    harness
        .gateway
        .history(&topic(topic_name), 0, 1_000)
        .map(|page| page.messages.iter().map(|(offset, _)| *offset).collect())
        .unwrap_or_default()
}

#[test]
fn refusing_connections_turns_new_ones_away_and_keeps_the_others() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    harness.gateway.refuse_connections(true);
    for token in [None, Some(token("bob"))] {
        assert_eq!(
            harness.gateway.admit(token.as_deref(), None).err(),
            Some(Refusal::Unavailable("memory pressure"))
        );
    }
    // The open connection is neither closed nor starved.
    assert_eq!(harness.publish("chat:1", "1", Normal).delivered, 1);
    assert_eq!(offsets(&alice, "chat:1").len(), 1);
    assert_eq!(close_code(&alice), None);
    harness.gateway.refuse_connections(false);
    drop(harness.connect("bob"));
}

#[test]
fn shedding_optional_frames_keeps_high_and_critical_ones_in_order() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    let mut bob = harness.connect("bob");
    subscribe(&mut alice, "chat:1");
    subscribe(&mut bob, "chat:1");
    for (n, priority) in [Low, Normal, High, Critical, Normal]
        .into_iter()
        .enumerate()
    {
        harness.publish("chat:1", &n.to_string(), priority);
    }
    assert_eq!(send_event(&harness, "alice", "e1"), 1);
    // Two connections, three optional frames each.
    assert_eq!(harness.gateway.shed_optional(), 6);
    let shed = harness.stats().messages;
    assert_eq!(
        (
            shed.shed,
            shed.shed_by_priority.low,
            shed.shed_by_priority.normal,
            shed.shed_by_priority.high,
            shed.shed_by_priority.critical
        ),
        (6, 2, 4, 0, 0)
    );
    assert_frames(
        &frames(&alice),
        &json!([
            {"type": "message", "data": 2, "offset": 3},
            {"type": "message", "data": 3, "offset": 4},
            {"type": "event", "id": "e1"},
        ]),
    );
    assert_eq!(
        offsets(&bob, "chat:1")
            .iter()
            .map(|(offset, _)| *offset)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // Nothing optional is left: a second pass sheds nothing, and the queues work as before.
    assert_eq!(harness.gateway.shed_optional(), 0);
    harness.publish("chat:1", "5", Normal);
    assert_eq!(offsets(&alice, "chat:1").len(), 1);
    assert_eq!(harness.stats().events.pending, 1);
}

#[test]
fn closing_the_idlest_closes_1013_and_keeps_their_events_pending() {
    let harness = Harness::new();
    let anonymous = harness.anonymous();
    let alice = harness.connect("alice");
    harness.advance(1_000);
    let bob = harness.connect("bob");
    let carol = harness.connect("carol");
    harness.advance(1_000);
    // Alice was the idlest authenticated connection until she spoke.
    let mut busy_alice = harness.connect("alice");
    busy_alice.on_text(r#"{"type":"ping"}"#);
    frames(&busy_alice);
    harness.advance(1_000);
    carol.touch();
    assert_eq!(send_event(&harness, "alice", "e1"), 2);
    assert_eq!(harness.gateway.close_idlest(3), 3);
    let code = |s: &Session| close_code(s);
    assert_eq!(
        [&anonymous, &alice, &bob, &carol, &busy_alice].map(code),
        [Some(1013), Some(1013), Some(1013), None, None]
    );
    // Connections already closing are not counted again.
    assert_eq!(harness.gateway.close_idlest(1), 1);
    assert_eq!(code(&busy_alice), Some(1013));
    assert_eq!(harness.gateway.close_idlest(0), 0);
    let stats = harness.stats();
    assert_eq!(stats.connection_totals.degradation_closes, 4);
    drop((anonymous, alice, bob, busy_alice));
    assert_eq!(harness.stats().events.pending, 1);
    // Alice comes back and gets the event she did not acknowledge.
    let again = harness.open(Some(&token("alice")), None);
    assert_frames(
        &frames(&again),
        &json!([{"type": "connected"}, {"type": "event", "id": "e1"}]),
    );
}

#[test]
fn trimming_keeps_the_newest_history_and_shrinks_the_dedupe_window() {
    let harness = with_history(10);
    for n in 1..=10 {
        harness.publish("a", &n.to_string(), Normal);
    }
    // Later, so that "a" is the least recently published, whatever shards the topics are in.
    harness.advance(1_000);
    for n in 1..=4 {
        harness.publish("b", &n.to_string(), Normal);
    }
    harness
        .publish_with_id("c", "1", Normal, Some("once"))
        .expect("published");
    let before = harness.stats().history.bytes;
    let freed = harness.gateway.trim(0.5);
    let after = harness.stats().history.bytes;
    // Each topic keeps the newest half of its bound (5 of "a"), then whole topics go, least
    // recently published first, until at most half of what was held is left: "a" goes.
    assert!(history_offsets(&harness, "a").is_empty());
    assert_eq!(history_offsets(&harness, "b"), [1, 2, 3, 4]);
    assert_eq!(harness.stats().history.dropped, 10);
    assert!(
        freed >= before - after && after <= before / 2,
        "{freed} {before} {after}"
    );
    // Half of the dedupe cache still holds the id.
    let again = harness.publish_with_id("c", "1", Normal, Some("once"));
    assert!(again.is_ok_and(|outcome| outcome.deduplicated));
    // Nothing is left of it at 0.0, until trimming at 1.0 restores the cache's size.
    assert!(harness.gateway.trim(0.0) > 0);
    assert!(history_offsets(&harness, "a").is_empty());
    assert_eq!(harness.stats().history.bytes, 0);
    for expect_duplicate in [false, true] {
        let outcome = harness.publish_with_id("c", "2", Normal, Some("twice"));
        assert!(outcome.is_ok_and(|outcome| !outcome.deduplicated));
        let outcome = harness.publish_with_id("c", "2", Normal, Some("twice"));
        assert_eq!(
            outcome.map(|outcome| outcome.deduplicated).ok(),
            Some(expect_duplicate)
        );
        harness.gateway.trim(1.0);
        harness.advance(10_000);
    }
}

#[test]
fn cleanup_drops_what_expired_as_the_sweep_does() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "news");
    harness.publish("news", "1", Normal);
    harness
        .publish_with_id("dropped", "1", Normal, Some("id"))
        .expect("published");
    // Nothing has expired yet.
    let report = harness.gateway.cleanup();
    assert_eq!(report.entries, 0);
    assert_eq!(harness.stats().topics, 2);
    harness.advance(300_000);
    alice.touch();
    let report = harness.gateway.cleanup();
    // Two history entries, the idle topic and the publish id.
    assert_eq!(report.entries, 4);
    assert!(report.bytes > 0);
    let stats = harness.stats();
    assert_eq!(
        (stats.topics, stats.history.bytes, stats.history.dropped),
        (1, 0, 2)
    );
    assert_eq!(harness.gateway.cleanup().entries, 0);
    drop(alice);
}

/// Records every source's size, lets `grow` add to the gateway, and asserts `source` grew.
#[track_caller]
fn check_source_grows(source: &str, grow: impl FnOnce(&Harness, &mut Vec<Session>)) {
    let harness = Harness::new();
    let mut sessions = vec![harness.connect("alice")];
    subscribe(&mut sessions[0], "chat:1");
    let size = |harness: &Harness| {
        let sizes = harness.gateway.sizes();
        sizes
            .iter()
            .find(|s| s.name == source)
            .unwrap_or_else(|| panic!("no source {source} in {sizes:?}"))
            .bytes
    };
    let before = size(&harness);
    grow(&harness, &mut sessions);
    let after = size(&harness);
    assert!(after > before, "{source}: {before} then {after}");
}

#[test]
fn every_memory_source_grows_with_its_component() {
    check_source_grows("connections", |harness, sessions| {
        sessions.push(harness.anonymous());
    });
    check_source_grows("subscriptions", |_, sessions| {
        subscribe(&mut sessions[0], "news");
    });
    check_source_grows("queues", |harness, _| {
        harness.publish("chat:1", "1", Normal);
    });
    check_source_grows("history", |harness, _| {
        harness.publish("elsewhere", "1", Normal);
    });
    check_source_grows("pending_events", |harness, _| {
        send_event(harness, "bob", "e1");
    });
    check_source_grows("dedupe", |harness, _| {
        let outcome = harness.publish_with_id("elsewhere", "1", Normal, Some("id"));
        assert!(outcome.is_ok());
    });
}
