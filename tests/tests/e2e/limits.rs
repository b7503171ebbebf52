//! Per-tier rate limits on client writes and the operation queue bound.

use anyhow::Context as _;
use herald_tests::{
    Ended, TestServer, WsClient, client_frame, frames_in, raw_exchange, read_server_frame, token,
    upgrade_head,
};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

#[tokio::test]
async fn client_writes_are_rate_limited_by_tier_and_abuse_closes_4008() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_TIERS", "free:3:5")]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    for n in 0..5 {
        let (reply, _) = client
            .request("publish", json!({"topic": "chat", "data": n}))
            .await?;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    let (reply, _) = client
        .request("publish", json!({"topic": "chat", "data": 5}))
        .await?;
    assert_eq!(reply["error"]["code"], "rate_limited");
    assert!(
        reply["error"]["retryAfter"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 12_000),
        "{reply}"
    );
    // Reads are not limited.
    let (reply, _) = client
        .request("subscribe", json!({"topic": "chat"}))
        .await?;
    assert_eq!(reply["type"], "ack");
    // Another user has a bucket of their own.
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;
    let (reply, _) = bob
        .request("update_preferences", json!({"theme": "dark"}))
        .await?;
    assert_eq!(reply["type"], "ack");
    // Ignoring the refusals closes the connection.
    for n in 0..9 {
        client
            .send(&json!({"type": "publish", "data": {"topic": "chat", "data": n}}))
            .await?;
    }
    assert_eq!(client.ended().await?, Ended::Closed(4008));
    Ok(())
}

#[tokio::test]
async fn a_full_operation_queue_refuses_with_rate_limited_and_loses_nothing_accepted()
-> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_OPERATION_QUEUE_SIZE", "1"),
        ("HERALD_TIERS", "free:10:100000"),
    ])
    .await?;
    let (mut alice, _) = WsClient::connect_as(&server, "alice").await?;
    alice.subscribe("burst").await?;
    // A client's publishes always wait in the queue for the worker (an API publish on an idle
    // gateway is performed in place instead), and 200 of them written at once, behind the
    // `auth`, arrive together: a queue of one is full for most of them.
    let (answer, mut bob) = raw_exchange(&server, &upgrade_head(&server, "", &[])).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    let auth = json!({"type": "auth", "data": {"token": token("bob", json!({}))}});
    let mut burst = client_frame(0x81, auth.to_string().as_bytes(), true);
    for n in 0..200 {
        let publish = json!({"type": "publish", "messageId": format!("p{n}"),
            "data": {"topic": "burst", "data": n}});
        burst.extend(client_frame(0x81, publish.to_string().as_bytes(), true));
    }
    bob.write_all(&burst).await?;
    let mut accepted = Vec::new();
    let mut refused = 0;
    while accepted.len() + refused < 200 {
        let frame = read_server_frame(&mut bob)
            .await?
            .context("bob's connection ended before every publish was answered")?;
        for reply in frames_in(&String::from_utf8(frame.payload)?) {
            match reply["type"].as_str() {
                Some("ack") => accepted.push(reply["data"]["offset"].as_u64()),
                Some("error") => {
                    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
                    assert!(reply["error"]["retryAfter"].as_u64().is_some(), "{reply}");
                    refused += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        refused > 0,
        "a queue of one operation should refuse some of a burst of 200"
    );
    // Every accepted publication is acknowledged with its offset, and arrives, in order.
    let expected: Vec<Option<u64>> = (1..=accepted.len() as u64).map(Some).collect();
    assert_eq!(accepted, expected);
    for offset in 1..=accepted.len() as u64 {
        let frame = alice.recv_data().await?;
        assert_eq!(frame["offset"], offset);
    }
    alice.expect_quiet("alice").await?;
    // An API publish finds the queue full only while another caller or the worker performs,
    // which no test can time from outside: its refusal is the core's
    // `api_operations_wait_in_the_bounded_queue_highest_priority_first`, and its 429 with
    // `Retry-After` is `respond`'s `gateway_errors_map_to_status_and_retry_after`.
    Ok(())
}

#[tokio::test]
async fn batch_frames_keep_order_and_the_batching_preference_turns_them_off() -> anyhow::Result<()>
{
    let server = TestServer::start(&[]).await?;
    let (mut batched, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut single, _) = WsClient::connect_as(&server, "bob").await?;
    let (reply, _) = single
        .request("update_preferences", json!({"batching": false}))
        .await?;
    assert_eq!(reply["type"], "ack");
    batched.subscribe("order").await?;
    single.subscribe("order").await?;
    let messages: Vec<_> = (1..=300)
        .map(|n| json!({"topic": "order", "data": n}))
        .collect();
    server.publish_batch(&messages).await?;
    // Frames as sent: the harness's `recv` unpacks batches, so read the wire text to see them.
    let (mut seen, mut batches) = (0u64, 0);
    while seen < 300 {
        let text = batched.recv_wire_text().await?;
        if serde_json::from_str::<serde_json::Value>(&text)?["type"] == "batch" {
            batches += 1;
        }
        for item in frames_in(&text) {
            seen += 1;
            assert_eq!(item["offset"], seen, "batched delivery out of order");
        }
    }
    assert!(
        batches > 0,
        "300 messages published at once should share frames"
    );
    for expected in 1..=300u64 {
        let text = single.recv_wire_text().await?;
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(frame["type"], "message", "batching is off for bob: {text}");
        assert_eq!(frame["offset"], expected);
    }
    Ok(())
}

#[tokio::test]
async fn the_batch_and_nesting_limits_are_settings() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_BATCH_TOPICS", "2"),
        ("HERALD_MAX_PUBLISH_BATCH", "2"),
        ("HERALD_MAX_JSON_DEPTH", "4"),
    ])
    .await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let (reply, _) = client
        .request("batch_subscribe", json!({"topics": ["a", "b", "c"]}))
        .await?;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    let (reply, _) = client
        .request("batch_subscribe", json!({"topics": ["a", "b"]}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    // Four levels: the frame, its `data`, and two arrays in the publish's `data`.
    let mut delivered = Vec::new();
    let (reply, others) = client
        .request("publish", json!({"topic": "a", "data": [[1]]}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    delivered.extend(others);
    let (reply, others) = client
        .request("publish", json!({"topic": "a", "data": [[[1]]]}))
        .await?;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    delivered.extend(others);
    // The HTTP API: a batch of three items is refused whole, nothing of it published.
    let messages: Vec<_> = ["a", "b", "a"]
        .iter()
        .map(|topic| json!({"topic": topic, "data": "batch"}))
        .collect();
    let body = json!({ "messages": messages });
    let (status, _, body) = server
        .request("POST", "/api/publish/batch", Some(&body), true)
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        "messages must hold at most 2 items (got 3)"
    );
    let deep = json!({"topic": "a", "data": {"x": [[1]]}});
    let deeper = json!({"topic": "a", "data": {"x": [[[1]]]}});
    let (status, _, body) = server
        .request("POST", "/api/publish", Some(&deeper), true)
        .await?;
    assert_eq!(status, 400, "{body}");
    server.post("/api/publish", &deep).await?;
    // Only what was accepted reaches the subscriber.
    server.publish("a", json!("end")).await?;
    while delivered.last().map(|m| &m["data"]) != Some(&json!("end")) {
        delivered.push(client.recv().await?);
    }
    let data: Vec<_> = delivered.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, [json!([[1]]), json!({"x": [[1]]}), json!("end")]);
    Ok(())
}
