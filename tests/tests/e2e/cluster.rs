//! Several `herald` nodes joined through one real Redis: publications accepted on any node
//! reach every node once and in order with the same offsets and epoch, a client resumes on
//! another node than the one it left, publish ids are deduplicated across nodes, and user
//! pushes reach the user's connections wherever they are. Faults: Redis killed and restarted
//! mid-stream, and Redis paused with `SIGSTOP`.

use std::time::Duration;

use herald_tests::{Cluster, RedisServer, TIMEOUT, TestServer, WsClient};
use serde_json::{Value, json};

/// The `message` frames of `topic` a client receives until it has the one at `last`, as
/// `(offset, epoch, data)`; other frames (pings, pushes) are skipped.
async fn messages_until(
    client: &mut WsClient,
    topic: &str,
    last: u64,
    epoch: Option<&str>,
) -> anyhow::Result<Vec<(u64, String, Value)>> {
    let mut seen = Vec::new();
    loop {
        let frame = client.recv_data().await?;
        if frame["type"] != "message" || frame["topic"] != topic {
            continue;
        }
        let offset = frame["offset"].as_u64().unwrap_or_default();
        let frame_epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
        let done = offset == last && epoch.is_none_or(|e| e == frame_epoch);
        seen.push((offset, frame_epoch, frame["data"].clone()));
        if done {
            return Ok(seen);
        }
    }
}

/// `POST /api/publish` once: the status and the body.
async fn try_publish(node: &TestServer, topic: &str, data: Value) -> anyhow::Result<(u16, Value)> {
    let body = json!({"topic": topic, "data": data});
    let (status, _, answer) = node
        .request("POST", "/api/publish", Some(&body), true)
        .await?;
    Ok((status, answer))
}

/// Publishes until a node accepts (Redis is coming back); the accepted answer.
async fn publish_when_accepted(
    node: &TestServer,
    topic: &str,
    data: Value,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, answer) = try_publish(node, topic, data.clone()).await?;
        if status == 200 {
            return Ok(answer);
        }
        anyhow::ensure!(status == 503, "unexpected answer {status} {answer}");
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never accepted: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` knows `topic` at `offset`.
async fn wait_for_offset(node: &TestServer, topic: &str, offset: u64) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, _, info) = node
            .request("GET", &format!("/api/topics/{topic}"), None, true)
            .await?;
        if status == 200 && info["lastOffset"] == offset {
            return Ok(info);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the node never reached offset {offset}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn offsets(seen: &[(u64, String, Value)]) -> Vec<u64> {
    seen.iter().map(|(offset, _, _)| *offset).collect()
}

#[tokio::test]
async fn publications_on_any_node_reach_every_node_once_in_order() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 3, &[]).await?;
    let mut readers = Vec::new();
    for node in &cluster.nodes {
        let (mut reader, _) = WsClient::connect_as(node, "reader").await?;
        reader.subscribe("room").await?;
        readers.push(reader);
    }
    let mut epoch = None;
    for n in 1..=30_u64 {
        let node = &cluster.nodes[(n % 3) as usize];
        let answer = node.publish("room", json!({"n": n})).await?;
        assert_eq!(answer["offset"], n, "{answer}");
        assert_eq!(answer["deduplicated"], false);
        let this_epoch = answer["epoch"].as_str().unwrap_or_default().to_owned();
        assert_eq!(*epoch.get_or_insert_with(|| this_epoch.clone()), this_epoch);
    }
    for reader in &mut readers {
        let seen = messages_until(reader, "room", 30, None).await?;
        assert_eq!(offsets(&seen), (1..=30).collect::<Vec<_>>());
        for (offset, seen_epoch, data) in &seen {
            assert_eq!(Some(seen_epoch), epoch.as_ref());
            assert_eq!(data, &json!({"n": offset}));
        }
        reader.expect_quiet("a reader").await?;
    }
    // Every node answers for itself, and names itself.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let stats = node.stats().await?;
        assert_eq!(stats["node"], format!("node-{i}"));
        let (_, _, list) = node.request("GET", "/api/connections", None, true).await?;
        assert_eq!(list["node"], format!("node-{i}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_no_gap_and_no_duplicate() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 3, &[]).await?;
    let [a, b, c] = &cluster.nodes[..] else {
        anyhow::bail!("three nodes expected");
    };
    let (mut alice, _) = WsClient::connect_as(a, "alice").await?;
    alice.subscribe("feed").await?;
    for n in 1..=3 {
        b.publish("feed", json!(n)).await?;
    }
    let seen = messages_until(&mut alice, "feed", 3, None).await?;
    let epoch = seen[0].1.clone();
    alice.close().await?;
    for n in 4..=6 {
        b.publish("feed", json!(n)).await?;
    }
    wait_for_offset(c, "feed", 6).await?;
    let (mut back, _) = WsClient::connect_as(c, "alice").await?;
    let (ack, replayed) = back
        .request(
            "subscribe",
            json!({"topic": "feed", "since": {"offset": 3, "epoch": epoch}}),
        )
        .await?;
    assert!(
        replayed.is_empty(),
        "nothing precedes the ack: {replayed:?}"
    );
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    assert_eq!(ack["data"]["offset"], 6);
    a.publish("feed", json!(7)).await?;
    let seen = messages_until(&mut back, "feed", 7, None).await?;
    assert_eq!(offsets(&seen), vec![4, 5, 6, 7]);
    back.expect_quiet("alice").await?;
    Ok(())
}

#[tokio::test]
async fn a_publish_id_is_deduplicated_across_nodes_and_user_pushes_cross_nodes()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 2, &[]).await?;
    let [a, b] = &cluster.nodes[..] else {
        anyhow::bail!("two nodes expected");
    };
    let (mut bob, _) = WsClient::connect_as(b, "bob").await?;
    bob.subscribe("orders").await?;
    let first = a
        .post(
            "/api/publish",
            &json!({"topic": "orders", "data": 1, "id": "o-1"}),
        )
        .await?;
    let again = b
        .post(
            "/api/publish",
            &json!({"topic": "orders", "data": 1, "id": "o-1"}),
        )
        .await?;
    assert_eq!(first["deduplicated"], false);
    assert_eq!(again["deduplicated"], true, "{again}");
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(
        offsets(&messages_until(&mut bob, "orders", 1, None).await?),
        vec![1]
    );
    // A push to bob accepted by the node bob is not on.
    a.send_to_user("bob", json!({"hi": "bob"}), None).await?;
    let push = bob.recv_data().await?;
    assert_eq!(push["type"], "push", "{push}");
    assert_eq!(push["data"], json!({"hi": "bob"}));
    bob.expect_quiet("bob").await?;
    Ok(())
}

#[tokio::test]
async fn redis_killed_mid_stream_refuses_publications_then_a_new_epoch_starts_with_no_gap()
-> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let cluster = Cluster::start(
        &redis,
        3,
        &[
            ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
            // The breaker never opens: this tests the refusal, not the local fallback
            // (cluster_faults.rs).
            ("HERALD_REDIS_BREAKER_FAILURES", "1000"),
        ],
    )
    .await?;
    let mut readers = Vec::new();
    for node in &cluster.nodes {
        let (mut reader, _) = WsClient::connect_as(node, "reader").await?;
        reader.subscribe("live").await?;
        readers.push(reader);
    }
    for n in 1..=5 {
        cluster.nodes[0].publish("live", json!(n)).await?;
    }
    for reader in &mut readers {
        assert_eq!(
            offsets(&messages_until(reader, "live", 5, None).await?),
            vec![1, 2, 3, 4, 5]
        );
    }
    let old_epoch = cluster.nodes[0].publish("live", json!(6)).await?["epoch"].clone();
    redis.kill().await?;
    // Nothing is accepted that could not be numbered: a clear 503, never a silent loss.
    let (status, refused) = try_publish(&cluster.nodes[1], "live", json!("lost?")).await?;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable");
    redis.restart().await?;
    // The restarted Redis is empty: the topic starts a new epoch at offset 1.
    let first = publish_when_accepted(&cluster.nodes[1], "live", json!("back")).await?;
    assert_ne!(first["epoch"], old_epoch);
    let epoch = first["epoch"].as_str().unwrap_or_default().to_owned();
    let last = first["offset"].as_u64().unwrap_or_default() + 5;
    for n in 0..5 {
        cluster.nodes[n % 3].publish("live", json!(n)).await?;
    }
    // Every node ends up with the new epoch's publications, none missing: what a node's bus
    // connection missed while it resubscribed was fetched from the shared history.
    for reader in &mut readers {
        let seen = messages_until(reader, "live", last, Some(&epoch)).await?;
        let new: Vec<u64> = seen
            .iter()
            .filter(|(_, e, _)| *e == epoch)
            .map(|(offset, _, _)| *offset)
            .collect();
        assert_eq!(new, (1..=last).collect::<Vec<_>>());
    }
    Ok(())
}

#[tokio::test]
async fn a_paused_redis_times_calls_out_and_the_cluster_recovers_after_sigcont()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(
        &redis,
        2,
        &[
            ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
            // The breaker never opens: this tests the refusal, not the local fallback
            // (cluster_faults.rs).
            ("HERALD_REDIS_BREAKER_FAILURES", "1000"),
        ],
    )
    .await?;
    let (mut reader, _) = WsClient::connect_as(&cluster.nodes[1], "reader").await?;
    reader.subscribe("t").await?;
    cluster.nodes[0].publish("t", json!(1)).await?;
    redis.pause().await?;
    let started = tokio::time::Instant::now();
    let (status, refused) = try_publish(&cluster.nodes[0], "t", json!(2)).await?;
    assert_eq!(status, 503, "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the call was not bounded"
    );
    redis.resume().await?;
    let answer = publish_when_accepted(&cluster.nodes[0], "t", json!(3)).await?;
    let last = answer["offset"].as_u64().unwrap_or_default();
    let seen = messages_until(&mut reader, "t", last, None).await?;
    assert_eq!(offsets(&seen), (1..=last).collect::<Vec<_>>());
    Ok(())
}
