//! The operation queue between client publishes and fan-out.

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
