//! Memory pressure on the real binary: with a small `HERALD_MEMORY_LIMIT_BYTES`, history
//! drives the degradation level up (1, then 2 with new handshakes refused), the level shows in
//! stats, metrics and readiness, no critical event is lost, and the server recovers.

use std::time::Duration;

use herald_tests::{TIMEOUT, TestServer, WsClient, metric, try_upgrade};
use serde_json::{Value, json};

/// The memory budget: small, so that a few megabytes of history cross its thresholds (85 % and
/// 95 % by default).
const LIMIT: &str = "8388608";
/// Bytes of each publication's data.
const PAYLOAD: usize = 500 * 1024;

async fn level(server: &TestServer) -> anyhow::Result<u64> {
    let stats = server.stats().await?;
    stats["degradation"]["level"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no degradation level in {stats}"))
}

async fn publish_large(server: &TestServer, n: usize) -> anyhow::Result<Value> {
    server
        .publish(&format!("fill-{n}"), json!("x".repeat(PAYLOAD)))
        .await
}

#[tokio::test]
async fn history_over_the_budget_degrades_in_steps_and_recovers() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MEMORY_LIMIT_BYTES", LIMIT),
        // Recovery within the test: a level is held 2 s before falling.
        ("HERALD_MEMORY_LEVEL_HOLD_MS", "2000"),
    ])
    .await?;
    let (mut alice, _) = WsClient::connect_as(&server, "alice").await?;
    server
        .send_event(
            "alice",
            &json!({"event": "agent_started", "id": "run-1-start", "data": {"run": 1}}),
        )
        .await?;
    let event = alice.recv_data().await?;
    assert_eq!(event["id"], "run-1-start", "{event}");
    assert_eq!(level(&server).await?, 0);

    // A slow ramp, one publication (about 6 % of the budget) per memory sample (one a
    // second): the level reaches 1 (high) first.
    let mut n = 0;
    loop {
        anyhow::ensure!(n < 40, "level 1 was never reached");
        publish_large(&server, n).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        match level(&server).await? {
            0 => continue,
            1 => break,
            other => anyhow::bail!("jumped to level {other} on a slow ramp"),
        }
    }

    // A burst, faster than the samples and past what trimming frees: level 2 (critical).
    let burst = (n..n + 24).map(|n| publish_large(&server, n));
    for published in futures_util::future::join_all(burst).await {
        published?;
    }
    server
        .wait_for_stats(|stats| stats["degradation"]["level"] == 2)
        .await?;
    let refused = try_upgrade(&server, "", &[]).await?;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.header("retry-after").is_some());
    let (_, _, metrics) = server.request_text("GET", "/metrics", None).await?;
    assert_eq!(metric(&metrics, "herald_degradation_level"), Some(2.0));
    let (ready, _, _) = server.request_text("GET", "/health/ready", None).await?;
    assert_eq!(ready, 503);

    // Trimming history at level 2 brings memory down; after the hold the level falls and
    // handshakes succeed again.
    let deadline = tokio::time::Instant::now() + 3 * TIMEOUT;
    while level(&server).await? != 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            server.stats().await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = server.stats().await?;
    assert!(stats["history"]["dropped"].as_u64() > Some(0), "{stats}");
    let (ready, _, _) = server.request_text("GET", "/health/ready", None).await?;
    assert_eq!(ready, 200);

    // The unacknowledged critical event was not lost: whether alice's connection survived
    // or was closed as one of the idlest (1013), a new one gets it again.
    let (mut again, _) = WsClient::connect_as(&server, "alice").await?;
    let event = again.recv_data().await?;
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["id"], "run-1-start");
    assert_eq!(server.stats().await?["events"]["pending"], 1);
    Ok(())
}

/// The seed's case: subscribers that stopped reading pile up a burst in their queues; once
/// they are gone, the memory goes back to the system (jemalloc's background purging), not
/// only back to the allocator.
#[tokio::test]
async fn a_bursts_memory_goes_back_to_the_system_once_freed() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_QUEUE_BYTES", "67108864"),
        // Nothing kept for resume: only the queues hold the burst.
        ("HERALD_HISTORY_SIZE", "0"),
    ])
    .await?;
    let memory = |stats: &Value, key: &str| stats["memory"][key].as_u64().unwrap_or(0);
    let before = server.stats().await?;
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(herald_tests::slow_subscriber(&server, "burst").await?);
    }
    // 40 MiB of publications, queued (shared) for every slow subscriber.
    for n in 0..160 {
        let data = json!(format!("{n:08}{}", "x".repeat(256 * 1024)));
        server.publish("burst", data).await?;
    }
    // Held: allocated and resident (the pages touched).
    let held = server
        .wait_for_stats(|stats| {
            memory(stats, "allocatedBytes") > memory(&before, "allocatedBytes") + (32 << 20)
                && memory(stats, "rssBytes") > memory(&before, "rssBytes") + (20 << 20)
        })
        .await?;
    drop(slow);
    // Allocations go at once; the pages follow within jemalloc's decay time (1 s) plus the
    // sampling interval (1 s).
    server
        .wait_for_stats(|stats| {
            memory(stats, "allocatedBytes") < memory(&before, "allocatedBytes") + (4 << 20)
                && memory(stats, "rssBytes") < memory(&before, "rssBytes") + (16 << 20)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; before: {before}; while held: {held}"))?;
    Ok(())
}

/// Connect, subscribe, close, many times over: what the connections allocated goes back, and
/// the leak detector sees nothing. The first cycles are a warm-up (metric series and indexes
/// created once), measured from after it.
#[tokio::test]
async fn connection_churn_leaves_no_allocations_behind() -> anyhow::Result<()> {
    const CONCURRENCY: usize = 16;
    let server = TestServer::start(&[]).await?;
    let cycles = |count: usize| {
        let server = &server;
        async move {
            let lanes = (0..CONCURRENCY).map(|lane| async move {
                for n in (lane..count).step_by(CONCURRENCY) {
                    let (mut client, _) = WsClient::connect_as(server, &format!("u{n}")).await?;
                    client.subscribe(&format!("topic-{}", n % 50)).await?;
                    client.close().await?;
                }
                anyhow::Ok(())
            });
            for lane in futures_util::future::join_all(lanes).await {
                lane?;
            }
            anyhow::Ok(())
        }
    };
    let allocated = |stats: &Value| stats["memory"]["allocatedBytes"].as_u64().unwrap_or(0);
    // Memory is sampled once a second: wait for a sample taken after `opened` cycles.
    let settled = |opened: u64| {
        let server = &server;
        async move {
            server
                .wait_for_stats(|stats| stats["connectionTotals"]["closed"] == opened)
                .await?;
            tokio::time::sleep(Duration::from_millis(2_100)).await;
            server.stats().await
        }
    };
    cycles(1_000).await?;
    let start = settled(1_000).await?;
    cycles(10_000).await?;
    let end = settled(11_000).await?;
    assert!(
        allocated(&end) <= allocated(&start) + allocated(&start) / 100,
        "allocations grew from {} to {} bytes over 10,000 cycles",
        allocated(&start),
        allocated(&end)
    );
    assert_eq!(end["leak"]["severity"], "none", "{}", end["leak"]);
    assert_eq!(end["connections"], 0);
    Ok(())
}
