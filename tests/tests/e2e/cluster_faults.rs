//! The Redis circuit breaker and local fallback, end to end: Redis killed mid-stream and
//! restarted, Redis paused with `SIGSTOP` so calls time out, and a node started before its
//! Redis. In each, the origin node keeps delivering what it accepts to its own subscribers at
//! once (in a local epoch), keeps it in its outbox, replays it when Redis is back, and the
//! other nodes receive it then; the breaker is seen opening and closing in `/api/stats`,
//! `/metrics` and `/health/detailed`.

use std::{collections::BTreeSet, time::Duration};

use herald_tests::{Cluster, RedisServer, TIMEOUT, TestServer, WsClient, metric};
use serde_json::{Value, json};

/// Settings that make the breaker quick for a test: calls fail after 300 ms, two failures
/// open it, and it probes again after 300 ms.
const QUICK_BREAKER: [(&str, &str); 3] = [
    ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
    ("HERALD_REDIS_BREAKER_FAILURES", "2"),
    ("HERALD_REDIS_BREAKER_OPEN_MS", "300"),
];

/// `POST /api/publish` of `{"n": n}` once: the status and the body.
async fn try_publish(node: &TestServer, topic: &str, n: u64) -> anyhow::Result<(u16, Value)> {
    let body = json!({"topic": topic, "data": {"n": n}});
    let (status, _, answer) = node
        .request("POST", "/api/publish", Some(&body), true)
        .await?;
    anyhow::ensure!(
        status == 200 || status == 503,
        "unexpected answer {status} {answer}"
    );
    if status == 503 {
        assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    }
    Ok((status, answer))
}

/// Publishes `{"n": ...}` from `next` on until `wanted` publications were accepted in an epoch
/// other than `redis_epoch` (the node's local one); returns every accepted `n` (some may
/// still have been numbered by Redis, before the outage was noticed) and the local epoch.
async fn publish_locally(
    node: &TestServer,
    topic: &str,
    next: &mut u64,
    wanted: usize,
    redis_epoch: Option<&str>,
) -> anyhow::Result<(Vec<u64>, String)> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut accepted = Vec::new();
    let mut local = 0;
    let mut local_epoch = String::new();
    while local < wanted {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the node never fell back to local numbering"
        );
        let n = *next;
        *next += 1;
        let (status, answer) = try_publish(node, topic, n).await?;
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        accepted.push(n);
        let epoch = answer["epoch"].as_str().unwrap_or_default();
        if Some(epoch) != redis_epoch {
            local += 1;
            epoch.clone_into(&mut local_epoch);
        }
    }
    Ok((accepted, local_epoch))
}

/// Reads `topic`'s messages until every `n` in `wanted` has arrived (others may come too);
/// returns every `(n, epoch)` seen, in order.
async fn receive_all(
    client: &mut WsClient,
    topic: &str,
    wanted: &[u64],
) -> anyhow::Result<Vec<(u64, String)>> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut missing: BTreeSet<u64> = wanted.iter().copied().collect();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never received {missing:?}; got {seen:?}"
        );
        let Some(frame) = client.try_recv(Duration::from_millis(100)).await else {
            continue;
        };
        if frame["type"] != "message" || frame["topic"] != topic {
            continue;
        }
        let n = frame["data"]["n"].as_u64().unwrap_or_default();
        missing.remove(&n);
        seen.push((n, frame["epoch"].as_str().unwrap_or_default().to_owned()));
    }
    Ok(seen)
}

/// The `redis` object of `/api/stats` once `predicate` holds for it.
async fn wait_for_redis(
    node: &TestServer,
    predicate: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let stats = node
        .wait_for_stats(|stats| predicate(&stats["redis"]))
        .await?;
    Ok(stats["redis"].clone())
}

/// Back to normal: breaker closed, nothing left in the outbox, Redis numbers again, and the
/// bus is subscribed (what is published from now on reaches the node).
fn recovered(redis: &Value) -> bool {
    redis["breaker"] == "closed"
        && redis["localFallback"] == false
        && redis["outboxDepth"] == 0
        && redis["busConnected"] == true
}

/// Each `n` in the order it first arrived.
fn first_arrivals(seen: &[(u64, String)]) -> Vec<u64> {
    let mut firsts = Vec::new();
    for (n, _) in seen {
        if !firsts.contains(n) {
            firsts.push(*n);
        }
    }
    firsts
}

/// `GET /metrics` as text.
async fn metrics(node: &TestServer) -> anyhow::Result<String> {
    let (status, _, text) = node.request_text("GET", "/metrics", None).await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(text)
}

#[tokio::test]
async fn redis_killed_mid_stream_the_origin_delivers_at_once_and_the_others_after_the_replay()
-> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 2, &QUICK_BREAKER).await?;
    let [origin, other] = &cluster.nodes[..] else {
        anyhow::bail!("two nodes expected");
    };
    let (mut near, _) = WsClient::connect_as(origin, "near").await?;
    let (mut far, _) = WsClient::connect_as(other, "far").await?;
    near.subscribe("live").await?;
    far.subscribe("live").await?;
    let mut accepted = Vec::new();
    let mut redis_epoch = String::new();
    for n in 1..=5 {
        let (status, answer) = try_publish(origin, "live", n).await?;
        assert_eq!(status, 200, "{answer}");
        redis_epoch = answer["epoch"].as_str().unwrap_or_default().to_owned();
        accepted.push(n);
    }
    let mut far_seen = receive_all(&mut far, "live", &accepted).await?;
    let mut near_seen = receive_all(&mut near, "live", &accepted).await?;
    redis.kill().await?;
    let mut next = 6;
    let (during, local_epoch) =
        publish_locally(origin, "live", &mut next, 5, Some(&redis_epoch)).await?;
    accepted.extend(&during);
    // The origin's subscriber has every accepted publication now, while Redis is down, in the
    // node's local epoch.
    let local_seen = receive_all(&mut near, "live", &during).await?;
    assert!(
        local_seen.iter().all(|(_, epoch)| *epoch == local_epoch),
        "{local_seen:?}"
    );
    near_seen.extend(local_seen);
    let open = wait_for_redis(origin, |r| r["localFallback"] == true).await?;
    assert!(open["opened"].as_u64() >= Some(1), "{open}");
    assert!(open["outboxDepth"].as_u64() >= Some(1), "{open}");
    let text = metrics(origin).await?;
    assert!(metric(&text, "herald_redis_breaker_transitions_total{to=\"open\"}") >= Some(1.0));
    let (_, _, detailed) = origin
        .request("GET", "/health/detailed", None, true)
        .await?;
    assert_eq!(
        detailed["checks"]["redis"]["status"], "degraded",
        "{detailed}"
    );

    redis.restart().await?;
    let closed = wait_for_redis(origin, recovered).await?;
    wait_for_redis(other, recovered).await?;
    assert!(closed["closed"].as_u64() >= Some(1), "{closed}");
    assert!(
        closed["outboxReplayed"].as_u64() >= Some(during.len() as u64),
        "{closed}"
    );
    let text = metrics(origin).await?;
    assert_eq!(metric(&text, "herald_redis_breaker_state"), Some(0.0));
    let after = accepted.len();
    for _ in 0..3 {
        let n = next;
        next += 1;
        let (status, answer) = try_publish(origin, "live", n).await?;
        assert_eq!(status, 200, "{answer}");
        assert_ne!(answer["epoch"], local_epoch.as_str(), "redis numbers again");
        accepted.push(n);
    }
    // The origin's subscriber saw everything first in the order it was accepted.
    near_seen.extend(receive_all(&mut near, "live", &accepted[after..]).await?);
    let firsts: Vec<u64> = first_arrivals(&near_seen)
        .into_iter()
        .filter(|n| accepted.contains(n))
        .collect();
    assert_eq!(firsts, accepted);
    // The other node receives every accepted publication: live before the kill, and what the
    // origin kept once it was replayed (or fetched from the shared history when its bus
    // connection came back after the replay).
    far_seen.extend(receive_all(&mut far, "live", &accepted[5..]).await?);
    let far_firsts: Vec<u64> = first_arrivals(&far_seen)
        .into_iter()
        .filter(|n| accepted.contains(n))
        .collect();
    assert_eq!(
        far_firsts, accepted,
        "in the order the origin accepted them"
    );
    Ok(())
}

#[tokio::test]
async fn a_paused_redis_times_calls_out_opens_the_breaker_and_the_outbox_is_replayed_after_sigcont()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 2, &QUICK_BREAKER).await?;
    let [origin, other] = &cluster.nodes[..] else {
        anyhow::bail!("two nodes expected");
    };
    let (mut near, _) = WsClient::connect_as(origin, "near").await?;
    let (mut far, _) = WsClient::connect_as(other, "far").await?;
    near.subscribe("t").await?;
    far.subscribe("t").await?;
    let (status, first) = try_publish(origin, "t", 1).await?;
    assert_eq!(status, 200, "{first}");
    let redis_epoch = first["epoch"].as_str().unwrap_or_default().to_owned();
    let mut accepted = vec![1];
    redis.pause().await?;
    let started = tokio::time::Instant::now();
    let mut next = 2;
    let (during, _) = publish_locally(origin, "t", &mut next, 3, Some(&redis_epoch)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "calls to a stopped redis were not bounded"
    );
    accepted.extend(&during);
    // At once, while Redis is stopped (the first publication may still be in Redis's
    // output buffers: it comes after the resume).
    let mut near_seen = receive_all(&mut near, "t", &during).await?;
    let open = wait_for_redis(origin, |r| r["breaker"] != "closed").await?;
    assert!(open["opened"].as_u64() >= Some(1), "{open}");

    redis.resume().await?;
    let closed = wait_for_redis(origin, recovered).await?;
    assert!(closed["closed"].as_u64() >= Some(1), "{closed}");
    wait_for_redis(other, recovered).await?;
    let (status, answer) = try_publish(origin, "t", next).await?;
    assert_eq!(status, 200, "{answer}");
    accepted.push(next);
    let far_seen = receive_all(&mut far, "t", &accepted).await?;
    let far_firsts: Vec<u64> = first_arrivals(&far_seen)
        .into_iter()
        .filter(|n| accepted.contains(n))
        .collect();
    assert_eq!(far_firsts, accepted);
    // And the origin's subscriber has them all too, the first one included.
    let missing: Vec<u64> = accepted
        .iter()
        .copied()
        .filter(|n| !near_seen.iter().any(|(seen, _)| seen == n))
        .collect();
    near_seen.extend(receive_all(&mut near, "t", &missing).await?);
    Ok(())
}

#[tokio::test]
async fn a_node_started_before_its_redis_serves_its_clients_then_joins() -> anyhow::Result<()> {
    let mut redis = RedisServer::unstarted()?;
    let url = redis.url();
    let mut env = vec![
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_NODE_ID", "early"),
        ("HERALD_REDIS_CONNECT_TIMEOUT_MS", "300"),
    ];
    env.extend_from_slice(&QUICK_BREAKER);
    let mut early = TestServer::start(&env).await?;
    let state = wait_for_redis(&early, |r| r.is_object()).await?;
    assert_ne!(state["breaker"], "closed", "{state}");
    // Ready (it serves its own clients), and the detailed health says why it is degraded.
    let (status, _, ready) = early.request("GET", "/health/ready", None, false).await?;
    assert_eq!(status, 200, "{ready}");
    let (_, _, detailed) = early.request("GET", "/health/detailed", None, true).await?;
    assert_eq!(
        detailed["checks"]["redis"]["status"], "degraded",
        "{detailed}"
    );

    let (mut near, _) = WsClient::connect_as(&early, "near").await?;
    near.subscribe("t").await?;
    let mut next = 1;
    let (accepted, _) = publish_locally(&early, "t", &mut next, 3, None).await?;
    receive_all(&mut near, "t", &accepted).await?;

    redis.restart().await?;
    let joined = wait_for_redis(&early, recovered).await?;
    assert!(joined["closed"].as_u64() >= Some(1), "{joined}");
    // Each transition is logged.
    let closed = early
        .log_line_containing("redis circuit breaker closed")
        .await?;
    assert!(closed.to_string().contains(r#""to":"closed""#), "{closed}");
    // A node that starts now sees what the early one kept, through the shared history, and
    // what it publishes next.
    let cluster = Cluster::start(&redis, 1, &QUICK_BREAKER).await?;
    wait_for_redis(&cluster.nodes[0], recovered).await?;
    let (mut far, _) = WsClient::connect_as(&cluster.nodes[0], "far").await?;
    far.subscribe("t").await?;
    let (status, answer) = try_publish(&early, "t", next).await?;
    assert_eq!(status, 200, "{answer}");
    let mut all = accepted.clone();
    all.push(next);
    let far_seen = receive_all(&mut far, "t", &all).await?;
    assert_eq!(first_arrivals(&far_seen), all);
    // The early node now receives over the bus too, in Redis's epoch.
    let near_seen = receive_all(&mut near, "t", &[next]).await?;
    let redis_epoch = answer["epoch"].as_str().unwrap_or_default();
    assert!(
        near_seen
            .iter()
            .any(|(n, epoch)| *n == next && epoch == redis_epoch),
        "{near_seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_full_outbox_refuses_publications_with_503_and_retry_after_and_counts_them()
-> anyhow::Result<()> {
    let redis = RedisServer::unstarted()?;
    let url = redis.url();
    let mut env = vec![
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_REDIS_CONNECT_TIMEOUT_MS", "300"),
        ("HERALD_REDIS_OUTBOX_SIZE", "2"),
    ];
    env.extend_from_slice(&QUICK_BREAKER);
    let alone = TestServer::start(&env).await?;
    let (mut near, _) = WsClient::connect_as(&alone, "near").await?;
    near.subscribe("t").await?;
    let mut next = 1;
    let (accepted, _) = publish_locally(&alone, "t", &mut next, 2, None).await?;
    assert_eq!(accepted, [1, 2]);
    let body = json!({"topic": "t", "data": {"n": 3}});
    let (status, headers, refused) = alone
        .request("POST", "/api/publish", Some(&body), true)
        .await?;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("outbox is full"), "{message}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // Nothing refused reached a subscriber; what was accepted did.
    let seen = receive_all(&mut near, "t", &accepted).await?;
    assert_eq!(first_arrivals(&seen), accepted);
    near.expect_quiet("near").await?;
    let state = wait_for_redis(&alone, |r| r["outboxRefused"] == 1).await?;
    assert_eq!(state["outboxDepth"], 2, "{state}");
    assert_eq!(state["outboxCapacity"], 2, "{state}");
    let text = metrics(&alone).await?;
    assert_eq!(
        metric(&text, "herald_redis_outbox_refused_total"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "herald_redis_outbox_depth"), Some(2.0));
    Ok(())
}
