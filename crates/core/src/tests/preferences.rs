//! Preferences: merge, push to the user's other connections, replies.

use super::*;

#[test]
fn preference_updates_merge_and_reach_the_users_other_connections_only() {
    let harness = Harness::new();
    let mut first = harness.connect("alice");
    let mut second = harness.connect_on("alice", Some("t1"));
    let mut bob = harness.connect("bob");
    first.on_text(
        r#"{"type":"update_preferences","messageId":"u1","data":{"theme":"dark","lang":"en"}}"#,
    );
    first.on_text(
        r#"{"type":"update_preferences","messageId":"u2","data":{"lang":null,"size":12.50}}"#,
    );
    assert_frames(
        &frames(&first),
        &json!([
            {"type": "ack", "messageId": "u1", "data": {"theme": "dark", "lang": "en"}},
            {"type": "ack", "messageId": "u2", "data": {"theme": "dark", "lang": null, "size": 12.5}},
        ]),
    );
    assert_frames(
        &frames(&second),
        &json!([
            {"type": "preferences", "messageId": null, "data": {"theme": "dark", "lang": "en"}},
            {"type": "preferences", "messageId": null, "data": {"theme": "dark", "size": 12.5}},
        ]),
    );
    assert_eq!(frames(&bob), Vec::<Value>::new());
    second.on_text(r#"{"type":"get_preferences","messageId":"g"}"#);
    assert_frames(
        &frames(&second),
        &json!([{"type": "preferences", "messageId": "g", "data": {"theme": "dark", "size": 12.5, "lang": null}}]),
    );
    bob.on_text(r#"{"type":"get_preferences","messageId":"g"}"#);
    assert_eq!(
        frames(&bob),
        vec![json!({"type": "preferences", "messageId": "g", "data": {}})]
    );
    assert_eq!(frames(&first), Vec::<Value>::new());
    first.on_text(r#"{"type":"update_preferences","messageId":"u3","data":"dark"}"#);
    assert_frames(
        &frames(&first),
        &json!([{"type": "error", "messageId": "u3", "error": {"code": "bad_request"}}]),
    );
    assert_eq!(frames(&second), Vec::<Value>::new());
}
