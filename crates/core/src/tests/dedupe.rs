//! Dedupe: publish ids within the window are answered with the first offset.

use super::*;

/// Publishes to `chat:1` with one subscriber: each step advances the clock by `wait_ms`, then
/// publishes with `id`, and expects `(offset, deduplicated)`. A duplicate queues no frame.
#[track_caller]
fn check_dedupe(steps: &[(u64, Option<&str>, u64, bool)]) {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    subscribe(&mut alice, "chat:1");
    for &(wait_ms, id, offset, deduplicated) in steps {
        harness.advance(wait_ms);
        let outcome = harness
            .publish_with_id("chat:1", "{}", Priority::Normal, id)
            .expect("published");
        assert_eq!(
            (outcome.offset, outcome.deduplicated),
            (offset, deduplicated),
            "{id:?} after {wait_ms} ms"
        );
        let got: Vec<u64> = offsets(&alice, "chat:1")
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        let expected: Vec<u64> = if deduplicated { vec![] } else { vec![offset] };
        assert_eq!(got, expected);
        assert_eq!(outcome.delivered, expected.len());
    }
}

#[test]
fn same_id_within_the_window_is_deduplicated_with_the_original_offset() {
    check_dedupe(&[
        (0, Some("x"), 1, false),
        (0, Some("x"), 1, true),
        (0, Some("y"), 2, false),
        (4_999, Some("x"), 1, true),
        (0, None, 3, false),
        (0, None, 4, false),
    ]);
}

#[test]
fn same_id_after_the_window_is_a_new_publication() {
    check_dedupe(&[
        (0, Some("x"), 1, false),
        (5_000, Some("x"), 2, false),
        (4_999, Some("x"), 2, true),
        (1, Some("x"), 3, false),
    ]);
}

#[test]
fn ids_are_deduplicated_per_topic() {
    let harness = Harness::new();
    let publish = |name: &str| {
        let outcome = harness
            .publish_with_id(name, "1", Priority::Normal, Some("x"))
            .expect("published");
        (outcome.offset, outcome.deduplicated)
    };
    assert_eq!(publish("chat:1"), (1, false));
    assert_eq!(publish("chat:2"), (1, false));
    assert_eq!(publish("chat:1"), (1, true));
    assert_eq!(harness.stats().messages.published, 2);
}
