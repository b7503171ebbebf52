//! The server-to-server HTTP API: API keys, publishing (single, batch, dedupe), pushes to users,
//! connections and everyone, connection management, topic and stats introspection, the runtime
//! config, body limits and malformed input, metrics and health.

use std::time::Duration;

use bytes::Bytes;
use herald_tests::{
    API_KEY, Ended, TIMEOUT, TestServer, WsClient, connection_id, metric, now_ms, read_until_closed,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

/// How long a test waits to be sure that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

/// Sends raw bytes as a request body with the API key.
async fn post_raw(
    server: &TestServer,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> anyhow::Result<(u16, Value)> {
    let (status, _, body) = server
        .request_raw(method, path, body.into(), Some(API_KEY))
        .await?;
    Ok((status, body))
}

/// Sorted keys of a JSON object.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn api_routes_need_the_api_key_but_metrics_and_health_do_not() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (_client, connected) = WsClient::connect_as(&server, "alice").await?;
    let id = connection_id(&connected);
    let (_, _, config_before) = server
        .request("GET", "/api/config/runtime", None, true)
        .await?;
    let publish = json!({"topic": "t", "data": 1});
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/api/publish".into(), Some(publish.clone())),
        (
            "POST",
            "/api/publish/batch".into(),
            Some(json!({"messages": [publish]})),
        ),
        ("POST", "/api/broadcast".into(), Some(json!({"data": 1}))),
        (
            "POST",
            "/api/users/alice/send".into(),
            Some(json!({"data": 1})),
        ),
        (
            "POST",
            format!("/api/connections/{id}/send"),
            Some(json!({"data": 1})),
        ),
        ("DELETE", format!("/api/connections/{id}"), None),
        ("GET", "/api/connections".into(), None),
        ("GET", "/api/connections?userId=alice".into(), None),
        ("GET", "/api/topics/t".into(), None),
        ("GET", "/api/stats".into(), None),
        ("GET", "/api/config/runtime".into(), None),
        (
            "PATCH",
            "/api/config/runtime".into(),
            Some(json!({"message_batch_size": 3})),
        ),
    ];
    for (method, path, body) in &routes {
        let bytes = body
            .as_ref()
            .map(|b| Bytes::from(b.to_string()))
            .unwrap_or_default();
        for bearer in [None, Some("wrong-key"), Some("")] {
            let (status, _, answer) = server
                .request_raw(method, path, bytes.clone(), bearer)
                .await?;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{method} {path}");
            assert!(answer["error"]["message"].is_string(), "{answer}");
        }
    }
    // Nothing above took effect: the connection is still open and nothing was published.
    let stats = server.stats().await?;
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["messages"]["published"], 0);
    let (_, _, config) = server
        .request("GET", "/api/config/runtime", None, true)
        .await?;
    assert_eq!(config, config_before);

    for path in ["/metrics", "/health", "/health/live", "/health/ready"] {
        let (status, _, _) = server.request_text("GET", path, None).await?;
        assert_eq!(status, 200, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn publish_answers_its_offset_and_offsets_count_up_per_topic() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut epochs: std::collections::HashMap<&str, Value> = std::collections::HashMap::new();
    let expected = [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)];
    for (topic, offset) in expected {
        let answer = server
            .post(
                "/api/publish",
                &json!({"topic": topic, "data": {"n": offset}}),
            )
            .await?;
        assert_eq!(keys(&answer), ["deduplicated", "epoch", "offset", "topic"]);
        assert_eq!(answer["topic"], topic);
        assert_eq!(answer["offset"], offset, "{answer}");
        assert_eq!(answer["deduplicated"], false);
        assert!(answer["epoch"].as_str().is_some_and(|e| !e.is_empty()));
        let epoch = epochs
            .entry(topic)
            .or_insert_with(|| answer["epoch"].clone());
        assert_eq!(*epoch, answer["epoch"], "the epoch of {topic} changed");
    }
    // `priority` is accepted; an unknown priority is a bad request.
    let (status, _, answer) = server
        .request(
            "POST",
            "/api/publish",
            Some(&json!({"topic": "a", "data": 0, "priority": "high"})),
            true,
        )
        .await?;
    assert_eq!((status, answer["offset"].clone()), (200, json!(4)));
    let (status, _, answer) = server
        .request(
            "POST",
            "/api/publish",
            Some(&json!({"topic": "a", "data": 0, "priority": "urgent"})),
            true,
        )
        .await?;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_request");
    let stats = server.stats().await?;
    assert_eq!(stats["messages"]["published"], 7);
    Ok(())
}

#[tokio::test]
async fn batch_publish_fails_bad_items_alone() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("t").await?;
    let body = json!({"messages": [
        {"topic": "t", "data": "first"},
        {"topic": "*", "data": "bad topic"},
        3,
        {"data": "no topic"},
        {"topic": "t", "data": "second"},
        {"topic": "u", "data": "other topic"},
    ]});
    let answer = server.post("/api/publish/batch", &body).await?;
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 6, "{answer}");
    for (i, offset, topic) in [(0, 1, "t"), (4, 2, "t"), (5, 1, "u")] {
        assert_eq!(results[i]["offset"], offset, "{answer}");
        assert_eq!(results[i]["topic"], topic, "{answer}");
        assert_eq!(results[i]["deduplicated"], false, "{answer}");
        assert!(results[i].get("error").is_none(), "{answer}");
    }
    for i in [1, 2, 3] {
        assert_eq!(results[i]["error"]["code"], "bad_request", "{answer}");
        assert!(results[i]["error"]["message"].is_string(), "{answer}");
        assert!(results[i].get("offset").is_none(), "{answer}");
    }
    for (offset, data) in [(1, "first"), (2, "second")] {
        let message = client.recv_data().await?;
        assert_eq!(message["type"], "message");
        assert_eq!(message["offset"], offset);
        assert_eq!(message["data"], data);
    }

    for body in [
        &b"[{\"topic\":\"t\",\"data\":1}]"[..],
        b"{}",
        b"{\"messages\":5}",
        b"{\"messages\":{\"topic\":\"t\",\"data\":1}}",
        b"{\"topic\":\"t\",\"data\":1}",
        b"null",
    ] {
        let (status, answer) = post_raw(&server, "POST", "/api/publish/batch", body).await?;
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(body));
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    // An empty batch is a valid batch of nothing.
    let (status, answer) = post_raw(
        &server,
        "POST",
        "/api/publish/batch",
        &b"{\"messages\":[]}"[..],
    )
    .await?;
    assert_eq!((status, answer), (200, json!({"results": []})));
    // The refused batches published nothing: the next message is offset 3.
    server.publish("t", json!("third")).await?;
    assert_eq!(client.recv_data().await?["offset"], 3);
    Ok(())
}

#[tokio::test]
async fn broadcast_reaches_every_connection_but_the_excluded() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut alice, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;
    let (mut carol, carol_connected) = WsClient::connect_as(&server, "carol").await?;
    let excluding_carol = json!({
        "data": {"notice": "maintenance"},
        "exclude": [connection_id(&carol_connected)],
    });
    assert_eq!(
        server.post("/api/broadcast", &excluding_carol).await?,
        json!({"delivered": 2})
    );
    for client in [&mut alice, &mut bob] {
        let push = client.recv_data().await?;
        assert_eq!(
            push,
            json!({"type": "push", "scope": "broadcast", "data": {"notice": "maintenance"}})
        );
    }
    // Carol's next frame is the broadcast without exclusion, not the one she was excluded from.
    assert_eq!(
        server
            .post("/api/broadcast", &json!({"data": "all", "priority": "low"}))
            .await?,
        json!({"delivered": 3})
    );
    for client in [&mut alice, &mut bob, &mut carol] {
        let push = client.recv_data().await?;
        assert_eq!(push["data"], "all");
        assert_eq!(push["scope"], "broadcast");
    }
    Ok(())
}

#[tokio::test]
async fn user_send_reaches_the_users_connections_by_thread() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut unbound, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut thread_1, _) = WsClient::connect_thread(&server, "alice", "t1").await?;
    let (mut thread_2, _) = WsClient::connect_thread(&server, "alice", "t2").await?;
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;

    assert_eq!(
        server
            .send_to_user("alice", json!({"to": "all"}), None)
            .await?,
        json!({"delivered": 3})
    );
    for client in [&mut unbound, &mut thread_1, &mut thread_2] {
        let push = client.recv_data().await?;
        assert_eq!(
            push,
            json!({"type": "push", "scope": "user", "data": {"to": "all"}})
        );
    }

    assert_eq!(
        server
            .send_to_user("alice", json!({"to": "t1"}), Some("t1"))
            .await?,
        json!({"delivered": 2})
    );
    for client in [&mut unbound, &mut thread_1] {
        let push = client.recv_data().await?;
        assert_eq!(push["scope"], "user");
        assert_eq!(push["data"], json!({"to": "t1"}));
    }
    // Thread 2 and bob see the next sends addressed to them, not alice's thread 1 send.
    assert_eq!(
        server
            .send_to_user("alice", json!({"to": "t2"}), Some("t2"))
            .await?,
        json!({"delivered": 2})
    );
    assert_eq!(thread_2.recv_data().await?["data"], json!({"to": "t2"}));
    assert_eq!(unbound.recv_data().await?["data"], json!({"to": "t2"}));
    assert!(thread_1.try_recv(QUIET).await.is_none());
    assert_eq!(
        server
            .send_to_user("bob", json!({"to": "bob"}), None)
            .await?,
        json!({"delivered": 1})
    );
    assert_eq!(bob.recv_data().await?["data"], json!({"to": "bob"}));

    // A user without connections is not an error: nothing is delivered.
    assert_eq!(
        server.send_to_user("nobody", json!(1), None).await?,
        json!({"delivered": 0})
    );
    Ok(())
}

#[tokio::test]
async fn connection_send_reaches_that_connection_only() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut first, first_connected) = WsClient::connect_as(&server, "alice").await?;
    let (mut second, second_connected) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(
        server
            .post(
                &format!("/api/connections/{}/send", connection_id(&first_connected)),
                &json!({"data": {"only": "first"}, "priority": "high"})
            )
            .await?,
        json!({"delivered": 1})
    );
    assert_eq!(
        first.recv_data().await?,
        json!({"type": "push", "scope": "connection", "data": {"only": "first"}})
    );
    assert_eq!(
        server
            .post(
                &format!("/api/connections/{}/send", connection_id(&second_connected)),
                &json!({"data": {"only": "second"}})
            )
            .await?,
        json!({"delivered": 1})
    );
    // The second connection's first push is its own, not the first connection's.
    assert_eq!(second.recv_data().await?["data"], json!({"only": "second"}));

    for unknown in ["ffffffffffffff00", "nope", "0"] {
        let (status, _, answer) = server
            .request(
                "POST",
                &format!("/api/connections/{unknown}/send"),
                Some(&json!({"data": 1})),
                true,
            )
            .await?;
        assert_eq!(status, 404, "{unknown}: {answer}");
        assert_eq!(answer["error"]["code"], "not_found");
    }
    Ok(())
}

#[tokio::test]
async fn deleting_a_connection_closes_it_with_4010() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut doomed, connected) = WsClient::connect_as(&server, "alice").await?;
    let (mut other, _) = WsClient::connect_as(&server, "alice").await?;
    doomed.subscribe("t").await?;
    let id = connection_id(&connected);
    let (status, _, answer) = server
        .request("DELETE", &format!("/api/connections/{id}"), None, true)
        .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(doomed.ended().await?, Ended::Closed(4010));
    let stats = server
        .wait_for_stats(|s| s["connections"] == 1 && s["subscriptions"] == 0)
        .await?;
    assert_eq!(stats["users"], 1);
    // The other connection of the same user is untouched.
    let (pong, _) = other.request("ping", Value::Null).await?;
    assert_eq!(pong["type"], "pong");

    let (status, _, answer) = server
        .request("DELETE", &format!("/api/connections/{id}"), None, true)
        .await?;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    let (status, _, answer) = server
        .request("DELETE", "/api/connections/garbage", None, true)
        .await?;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    Ok(())
}

#[tokio::test]
async fn connections_are_listed_with_their_details() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let before = now_ms();
    let (mut alice, alice_connected) = WsClient::connect_thread(&server, "alice", "t1").await?;
    let after = now_ms();
    alice.subscribe("b").await?;
    alice.subscribe("a").await?;
    let (_bob, bob_connected) = WsClient::connect_as(&server, "bob").await?;

    let (status, _, answer) = server
        .request("GET", "/api/connections?userId=alice", None, true)
        .await?;
    assert_eq!(status, 200, "{answer}");
    let list = answer["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 1, "{answer}");
    let entry = &list[0];
    assert_eq!(
        keys(entry),
        [
            "connectedAt",
            "connectionId",
            "idleMs",
            "threadId",
            "topics",
            "userId"
        ]
    );
    assert_eq!(entry["connectionId"], connection_id(&alice_connected));
    assert_eq!(entry["userId"], "alice");
    assert_eq!(entry["threadId"], "t1");
    let mut topics: Vec<Value> = entry["topics"].as_array().cloned().unwrap_or_default();
    topics.sort_by_key(ToString::to_string);
    assert_eq!(topics, [json!("a"), json!("b")]);
    assert!(entry["idleMs"].is_u64(), "{entry}");
    let connected_at = entry["connectedAt"].as_u64().unwrap_or_default();
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&connected_at),
        "connectedAt {connected_at} not within [{before}, {after}]"
    );

    let (status, _, answer) = server
        .request("GET", "/api/connections?userId=bob", None, true)
        .await?;
    assert_eq!(status, 200);
    let list = answer["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 1, "{answer}");
    assert_eq!(list[0]["connectionId"], connection_id(&bob_connected));
    assert_eq!(list[0]["threadId"], Value::Null);
    assert_eq!(list[0]["topics"], json!([]));

    let (_, _, answer) = server
        .request("GET", "/api/connections", None, true)
        .await?;
    assert_eq!(answer["connections"].as_array().map(Vec::len), Some(2));
    let (_, _, answer) = server
        .request("GET", "/api/connections?userId=nobody", None, true)
        .await?;
    assert_eq!(answer["connections"], json!([]), "{answer}");
    // The node that answered names itself: the list holds its connections only.
    assert!(
        answer["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{answer}"
    );
    Ok(())
}

#[tokio::test]
async fn topic_info_reports_subscribers_last_offset_and_epoch() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut alice, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;
    alice.subscribe("news").await?;
    let ack = bob.subscribe("news").await?;
    let mut epoch = Value::Null;
    for _ in 0..3 {
        epoch = server.publish("news", json!(1)).await?["epoch"].clone();
    }
    assert_eq!(epoch, ack["epoch"]);
    let (status, _, answer) = server
        .request("GET", "/api/topics/news", None, true)
        .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"topic": "news", "subscribers": 2, "lastOffset": 3, "epoch": epoch})
    );

    let (_, _) = bob.request("unsubscribe", json!({"topic": "news"})).await?;
    let (_, _, answer) = server
        .request("GET", "/api/topics/news", None, true)
        .await?;
    assert_eq!(answer["subscribers"], 1);
    assert_eq!(answer["lastOffset"], 3);

    // A percent-encoded topic name is decoded.
    alice.subscribe("chat:1").await?;
    let (status, _, answer) = server
        .request("GET", "/api/topics/chat%3A1", None, true)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(answer["topic"], "chat:1");
    assert_eq!(answer["subscribers"], 1);

    let (status, _, answer) = server
        .request("GET", "/api/topics/never-used", None, true)
        .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["subscribers"], 0);
    assert_eq!(answer["lastOffset"], 0);
    Ok(())
}

#[tokio::test]
async fn stats_have_the_documented_shape_and_counts() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut alice, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut again, _) = WsClient::connect_as(&server, "alice").await?;
    let (_bob, _) = WsClient::connect_as(&server, "bob").await?;
    alice.subscribe("a").await?;
    alice.subscribe("b").await?;
    again.subscribe("a").await?;
    server.publish("a", json!(1)).await?;
    alice.recv_data().await?;
    again.recv_data().await?;

    let stats = server.stats().await?;
    // The contract's fields; extensions (e.g. `events`) are welcome.
    for key in [
        "connections",
        "degradation",
        "forecast",
        "leak",
        "latency",
        "memory",
        "messages",
        "subscriptions",
        "topics",
        "users",
    ] {
        assert!(stats.get(key).is_some(), "{key} missing in {stats}");
    }
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["users"], 2);
    assert_eq!(stats["subscriptions"], 3);
    assert_eq!(stats["topics"], 2);
    // The contract's counts; more (e.g. `deduplicated`) may sit beside them.
    for key in ["delivered", "published", "shed"] {
        assert!(stats["messages"][key].is_u64(), "messages.{key} in {stats}");
    }
    assert_eq!(stats["messages"]["published"], 1);
    assert_eq!(stats["messages"]["delivered"], 2);
    assert_eq!(stats["messages"]["shed"], 0);
    assert_eq!(
        keys(&stats["latency"]),
        ["p50Us", "p90Us", "p999Us", "p99Us", "samples"]
    );
    // Latency is measured per socket write that carried a publication: two here, one for
    // each subscriber, each written before its client read it. The recent window may skip a
    // sample when two writers record at the same instant; the histogram never does.
    let samples = stats["latency"]["samples"].as_u64().unwrap_or(0);
    assert!((1..=2).contains(&samples), "{stats}");
    assert!(stats["latency"]["p50Us"].as_u64() > Some(0), "{stats}");
    assert!(stats["latency"]["p99Us"].is_u64());
    let (_, _, text) = server.request_text("GET", "/metrics", None).await?;
    assert_eq!(
        metric(&text, "herald_delivery_latency_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert!(stats["memory"].is_object());
    assert!(stats["degradation"]["level"].is_u64(), "{stats}");
    Ok(())
}

#[tokio::test]
async fn runtime_config_patches_apply_all_keys_or_none() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (status, _, initial) = server
        .request("GET", "/api/config/runtime", None, true)
        .await?;
    assert_eq!(status, 200, "{initial}");
    for key in [
        "compression_threshold_bytes",
        "dedupe_cache_size",
        "dedupe_window_ms",
        "max_connections_per_user",
        "memory_cleanup_interval_ms",
        "message_batch_delay_ms",
        "message_batch_size",
    ] {
        assert!(initial[key].is_u64(), "{key} missing in {initial}");
    }

    let patched = server
        .patch_runtime(&json!({"message_batch_size": 5, "dedupe_window_ms": 1234}))
        .await?;
    assert_eq!(patched["message_batch_size"], 5);
    assert_eq!(patched["dedupe_window_ms"], 1234);
    assert_eq!(
        patched["max_connections_per_user"],
        initial["max_connections_per_user"]
    );
    let (_, _, current) = server
        .request("GET", "/api/config/runtime", None, true)
        .await?;
    assert_eq!(current, patched);

    for bad in [
        json!({"message_batch_size": 7, "no_such_key": 1}),
        json!({"message_batch_size": 7, "max_connections_per_user": 0}),
        json!({"message_batch_size": 0}),
        json!({"message_batch_size": 7, "dedupe_window_ms": 3_600_001}),
        json!({"message_batch_size": -1}),
        json!({"message_batch_size": "7"}),
        json!({"message_batch_size": 7.5}),
        json!({"message_batch_size": null}),
        json!({"memory_cleanup_interval_ms": 999}),
    ] {
        let (status, _, answer) = server
            .request("PATCH", "/api/config/runtime", Some(&bad), true)
            .await?;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{bad}");
        let (_, _, now) = server
            .request("GET", "/api/config/runtime", None, true)
            .await?;
        assert_eq!(now, patched, "{bad} changed the config");
    }
    // The new values take effect: the per-user limit now comes from the patch.
    server
        .patch_runtime(&json!({"max_connections_per_user": 1}))
        .await?;
    let (mut first, _) = WsClient::connect_as(&server, "alice").await?;
    let (_second, _) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(first.ended().await?, Ended::Closed(4029));
    Ok(())
}

#[tokio::test]
async fn malformed_bodies_are_json_400s() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (_client, connected) = WsClient::connect_as(&server, "alice").await?;
    let send_path = format!("/api/connections/{}/send", connection_id(&connected));
    let paths = [
        ("POST", "/api/publish"),
        ("POST", "/api/publish/batch"),
        ("POST", "/api/broadcast"),
        ("POST", "/api/users/alice/send"),
        ("POST", send_path.as_str()),
        ("PATCH", "/api/config/runtime"),
    ];
    let deep = Bytes::from(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
    let bodies: [Bytes; 9] = [
        Bytes::from_static(b""),
        Bytes::from_static(b"{"),
        Bytes::from_static(b"{not json}"),
        Bytes::from_static(b"\"text\""),
        Bytes::from_static(b"[]"),
        Bytes::from_static(b"42"),
        Bytes::from_static(b"{\"data\":1}}"),
        Bytes::from_static(b"\xff\xfe{}"),
        deep,
    ];
    for (method, path) in paths {
        for body in &bodies {
            let (status, answer) = post_raw(&server, method, path, body.clone()).await?;
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            assert_eq!(status, 400, "{method} {path} {shown}: {answer}");
            assert_eq!(answer["error"]["code"], "bad_request", "{path} {shown}");
            assert!(answer["error"]["message"].is_string(), "{path} {shown}");
        }
    }
    // Fields of the wrong type, and missing `data`.
    let wrong: Vec<(&str, &str, &'static [u8])> = vec![
        ("POST", "/api/publish", b"{\"topic\":5,\"data\":1}"),
        (
            "POST",
            "/api/publish",
            b"{\"topic\":\"t\",\"data\":1,\"id\":5}",
        ),
        ("POST", "/api/broadcast", b"{\"data\":1,\"priority\":5}"),
        ("POST", "/api/broadcast", b"{\"data\":1,\"exclude\":\"x\"}"),
        ("POST", "/api/broadcast", b"{}"),
        (
            "POST",
            "/api/users/alice/send",
            b"{\"data\":1,\"threadId\":5}",
        ),
        (
            "POST",
            "/api/users/alice/send",
            b"{\"data\":1,\"priority\":\"urgent\"}",
        ),
        ("POST", "/api/users/alice/send", b"{}"),
        ("POST", send_path.as_str(), b"{\"data\":1,\"priority\":[]}"),
        ("POST", send_path.as_str(), b"{}"),
        (
            "PATCH",
            "/api/config/runtime",
            b"{\"message_batch_size\":{}}",
        ),
    ];
    for (method, path, body) in wrong {
        let (status, answer) = post_raw(&server, method, path, body).await?;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status, 400, "{method} {path} {shown}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{path} {shown}");
    }
    // A publish without `data`, or to an invalid topic, is refused too.
    for body in [
        &b"{\"topic\":\"t\"}"[..],
        b"{\"topic\":\"\",\"data\":1}",
        b"{\"topic\":\"a*\",\"data\":1}",
    ] {
        let (status, answer) = post_raw(&server, "POST", "/api/publish", body).await?;
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(body));
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    // Unknown routes are JSON 404s.
    let (status, _, answer) = server.request("GET", "/api/nope", None, true).await?;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    assert_eq!(server.stats().await?["messages"]["published"], 0);
    Ok(())
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_HTTP_BODY_BYTES", "1024")]).await?;
    let body_of = |len: usize| {
        let prefix = "{\"topic\":\"t\",\"data\":\"";
        let suffix = "\"}";
        let filler = "x".repeat(len - prefix.len() - suffix.len());
        Bytes::from(format!("{prefix}{filler}{suffix}"))
    };
    let (status, _, answer) = server
        .request_raw("POST", "/api/publish", body_of(1024), Some(API_KEY))
        .await?;
    assert_eq!(status, 200, "a body of exactly the limit is fine: {answer}");
    for path in ["/api/publish", "/api/publish/batch", "/api/broadcast"] {
        let (status, _, answer) = server
            .request_raw("POST", path, body_of(1025), Some(API_KEY))
            .await?;
        assert_eq!(status, 413, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "payload_too_large");
    }

    // A chunked body announces no length: the limit applies while it is read.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
    let chunk = "y".repeat(600);
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        server.addr,
        len = chunk.len(),
    );
    stream.write_all(request.as_bytes()).await?;
    let response = read_until_closed(&mut stream, TIMEOUT).await?;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    assert_eq!(server.stats().await?["messages"]["published"], 1);
    Ok(())
}

#[tokio::test]
async fn a_repeated_publish_id_within_the_window_is_delivered_once() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("t").await?;
    let publish = |id: &'static str, data: i32| {
        let server = &server;
        async move {
            let (status, _, answer) = server
                .request(
                    "POST",
                    "/api/publish",
                    Some(&json!({"topic": "t", "data": data, "id": id})),
                    true,
                )
                .await?;
            anyhow::ensure!(status == 200, "publish answered {status}: {answer}");
            anyhow::Ok(answer)
        }
    };
    let first = publish("order-1", 1).await?;
    assert_eq!(first["offset"], 1);
    assert_eq!(first["deduplicated"], false);
    let again = publish("order-1", 2).await?;
    assert_eq!(again["offset"], 1, "{again}");
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["epoch"], first["epoch"]);
    // The same id on another topic is another publication.
    let (_, _, other) = server
        .request(
            "POST",
            "/api/publish",
            Some(&json!({"topic": "u", "data": 3, "id": "order-1"})),
            true,
        )
        .await?;
    assert_eq!(other["deduplicated"], false);
    let next = publish("order-2", 4).await?;
    assert_eq!(next["offset"], 2, "a duplicate takes no offset");

    let message = client.recv_data().await?;
    assert_eq!(
        (message["offset"].clone(), message["data"].clone()),
        (json!(1), json!(1))
    );
    let message = client.recv_data().await?;
    assert_eq!(
        (message["offset"].clone(), message["data"].clone()),
        (json!(2), json!(4))
    );
    let stats = server.stats().await?;
    assert_eq!(stats["messages"]["published"], 3);
    Ok(())
}

#[tokio::test]
async fn a_publish_id_counts_as_new_after_the_dedupe_window() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_DEDUPE_WINDOW_MS", "300")]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("t").await?;
    let body = json!({"topic": "t", "data": "x", "id": "retry-me"});
    let (_, _, first) = server
        .request("POST", "/api/publish", Some(&body), true)
        .await?;
    assert_eq!(first["offset"], 1);
    let started = tokio::time::Instant::now();
    let (_, _, again) = server
        .request("POST", "/api/publish", Some(&body), true)
        .await?;
    assert_eq!(again["deduplicated"], true, "{again}");
    // Retry until the server stops deduplicating; duplicates take no offset, so retries are
    // harmless, and the first non-duplicate must come after the window.
    let renewed = loop {
        let (_, _, answer) = server
            .request("POST", "/api/publish", Some(&body), true)
            .await?;
        if answer["deduplicated"] == false {
            break answer;
        }
        assert_eq!(answer["offset"], 1);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still deduplicated"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "window ended after only {:?}",
        started.elapsed()
    );
    assert_eq!(renewed["offset"], 2);
    assert_eq!(client.recv_data().await?["offset"], 1);
    assert_eq!(client.recv_data().await?["offset"], 2);
    Ok(())
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_herald_names() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("t").await?;
    server.publish("t", json!(1)).await?;
    client.recv_data().await?;
    let (status, headers, text) = server.request_text("GET", "/metrics", None).await?;
    assert_eq!(status, 200);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let mut names = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or_default();
            assert!(matches!(kind, "TYPE" | "HELP"), "{line}");
            let name = words.next().unwrap_or_default();
            assert!(name.starts_with("herald_"), "{line}");
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(name.starts_with("herald_"), "{line}");
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        names.push(name.to_owned());
    }
    for expected in [
        "herald_connections",
        "herald_subscriptions",
        "herald_messages_published_total",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {text}");
    }
    assert_eq!(metric(&text, "herald_connections"), Some(1.0), "{text}");
    Ok(())
}

#[tokio::test]
async fn health_answers_ready_live_and_detail() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (status, _, body) = server.request("GET", "/health/ready", None, false).await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = server.request("GET", "/health/live", None, false).await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = server.request("GET", "/health", None, false).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["components"].is_object(), "{body}");
    // Every check's figures are for the operator: the API key is needed.
    let (status, _, body) = server
        .request("GET", "/health/detailed", None, false)
        .await?;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = server
        .request("GET", "/health/detailed", None, true)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["checks"]["gateway"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["memory"]["level"], 0, "{body}");
    assert_eq!(body["checks"]["gateway"]["operationsQueued"], 0, "{body}");
    assert!(body["checks"]["event_loop"]["lagMicros"].is_u64(), "{body}");
    assert!(body["checks"]["memory"]["usedBytes"].is_u64(), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_publisher_that_half_closes_after_its_request_still_gets_the_answer() -> anyhow::Result<()>
{
    let server = TestServer::start(&[]).await?;
    let (mut alice, _) = WsClient::connect_as(&server, "alice").await?;
    alice.subscribe("half").await?;
    let body = json!({"topic": "half", "data": 1}).to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
    stream.write_all(request.as_bytes()).await?;
    // Done sending: the write side closes (a half-close), the read side waits for the answer.
    stream.shutdown().await?;
    let answer = String::from_utf8(read_until_closed(&mut stream, TIMEOUT).await?)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""offset":1"#), "{answer}");
    assert_eq!(alice.recv_data().await?["data"], 1);
    Ok(())
}
