//! A connection's life and the server's: heartbeats and the stale timeout, many connections
//! coming and going without leaks, abrupt TCP drops, and the graceful drain on SIGTERM.

use std::time::Duration;

use herald_tests::{
    Ended, TIMEOUT, TestServer, WsClient, frames_in, now_ms, read_until_ended, slow_subscriber,
    token,
};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Fast heartbeat settings: a ping every 200 ms, silence closes after 600 ms.
const HEARTBEAT: [(&str, &str); 2] = [
    ("HERALD_HEARTBEAT_INTERVAL_MS", "200"),
    ("HERALD_STALE_TIMEOUT_MS", "600"),
];

#[tokio::test]
async fn answering_server_pings_keeps_a_connection_alive() -> anyhow::Result<()> {
    let server = TestServer::start(&HEARTBEAT).await?;
    let (mut client, connected) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(connected["data"]["heartbeatInterval"], 200);
    let started = Instant::now();
    let watch = Duration::from_millis(1_800);
    let mut pings = 0;
    // Three stale timeouts long, the client only ever answers the server's pings.
    while started.elapsed() < watch {
        let Some(frame) = client.try_recv(watch - started.elapsed()).await else {
            continue;
        };
        assert_eq!(frame["type"], "ping", "{frame}");
        let timestamp = frame["timestamp"].as_u64().unwrap_or_default();
        assert!(
            timestamp.abs_diff(now_ms()) < 5_000,
            "ping timestamp {timestamp} is not now"
        );
        pings += 1;
        client
            .send(&json!({"type": "pong", "timestamp": timestamp}))
            .await?;
    }
    assert!(pings >= 4, "only {pings} pings in {watch:?}");
    let (reply, _) = client.request("ping", Value::Null).await?;
    assert_eq!(reply["type"], "pong");
    assert_eq!(server.stats().await?["connections"], 1);
    Ok(())
}

#[tokio::test]
async fn websocket_pings_count_as_activity() -> anyhow::Result<()> {
    let server = TestServer::start(&HEARTBEAT).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(150));
    // The client never answers the JSON pings, but sends protocol-level pings.
    while started.elapsed() < Duration::from_millis(1_500) {
        ticks.tick().await;
        client
            .send_raw(Message::Ping(bytes::Bytes::from_static(b"hi")))
            .await?;
        while client.try_recv(Duration::ZERO).await.is_some() {}
    }
    let (reply, _) = client.request("ping", Value::Null).await?;
    assert_eq!(reply["type"], "pong");
    Ok(())
}

#[tokio::test]
async fn a_silent_client_is_closed_4000_after_the_stale_timeout() -> anyhow::Result<()> {
    let server = TestServer::start(&HEARTBEAT).await?;
    let started = Instant::now();
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("t").await?;
    let subscribed = Instant::now();
    // The client reads (and ignores the pings) but never sends anything.
    assert_eq!(client.ended().await?, Ended::Closed(4000));
    let silent_for = subscribed.elapsed();
    assert!(
        silent_for >= Duration::from_millis(400),
        "closed after only {silent_for:?} of silence"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
    server
        .wait_for_stats(|s| s["connections"] == 0 && s["subscriptions"] == 0 && s["users"] == 0)
        .await?;
    Ok(())
}

/// One connect/subscribe/disconnect cycle; `how` picks the way the client leaves.
async fn cycle(url: String, topic: String, how: usize) -> anyhow::Result<()> {
    let (mut client, _) = WsClient::connect_url(&url).await?;
    client.subscribe("shared").await?;
    match how % 4 {
        0 => {
            client.subscribe(&topic).await?;
            client.close().await?;
        }
        1 => {
            client.subscribe(&topic).await?;
            client.drop_tcp();
        }
        2 => {
            // Leave in the middle of a request, before its ack arrives.
            client
                .send(&json!({"type": "subscribe", "messageId": "x", "data": {"topic": topic}}))
                .await?;
            client.drop_tcp();
        }
        _ => {
            client
                .send(&json!({"type": "subscribe", "messageId": "x", "data": {"topic": topic}}))
                .await?;
            client.close().await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_thousand_connection_cycles_leave_nothing_behind() -> anyhow::Result<()> {
    const WORKERS: usize = 8;
    const CYCLES: usize = 1_000;
    let server = TestServer::start(&[]).await?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let urls: Vec<(String, String)> = (worker..CYCLES)
            .step_by(WORKERS)
            .map(|i| {
                let user = format!("cycler-{i}");
                let url = server.ws_url(&format!("?token={}", token(&user, json!({}))));
                (url, format!("own:{i}"))
            })
            .collect();
        workers.push(tokio::spawn(async move {
            for (i, (url, topic)) in urls.into_iter().enumerate() {
                cycle(url, topic, i + worker).await?;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let stats = server
        .wait_for_stats(|s| s["connections"] == 0 && s["subscriptions"] == 0 && s["users"] == 0)
        .await?;
    assert_eq!(stats["connections"], 0);
    let (_, _, list) = server
        .request("GET", "/api/connections", None, true)
        .await?;
    assert_eq!(list["connections"], json!([]), "{list}");
    let (_, _, shared) = server
        .request("GET", "/api/topics/shared", None, true)
        .await?;
    assert_eq!(shared["subscribers"], 0, "{shared}");
    // The server still works as new after all of that.
    let (mut client, _) = WsClient::connect_as(&server, "after").await?;
    client.subscribe("shared").await?;
    server.publish("shared", json!("still here")).await?;
    assert_eq!(client.recv_data().await?["data"], "still here");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cycles took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn abrupt_tcp_drops_leave_nothing_behind() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut clients = Vec::new();
    for i in 0..20 {
        // Two connections per user: below the free tier's limit of three.
        let (mut client, _) = WsClient::connect_as(&server, &format!("dropper-{}", i % 10)).await?;
        for topic in ["a", "b", &format!("own:{i}")] {
            client.subscribe(topic).await?;
        }
        clients.push(client);
    }
    // Some connections that never authenticated, too.
    for _ in 0..3 {
        clients.push(WsClient::connect_anonymous(&server, "").await?);
    }
    server
        .wait_for_stats(|s| s["connections"] == 23 && s["subscriptions"] == 60)
        .await?;
    // Messages queued for the dropped connections go nowhere.
    server.publish("a", json!("into the void")).await?;
    for client in clients {
        client.drop_tcp();
    }
    server
        .wait_for_stats(|s| s["connections"] == 0 && s["subscriptions"] == 0 && s["users"] == 0)
        .await?;
    for topic in ["a", "b"] {
        let (_, _, info) = server
            .request("GET", &format!("/api/topics/{topic}"), None, true)
            .await?;
        assert_eq!(info["subscribers"], 0, "{info}");
    }
    let (_, _, list) = server
        .request("GET", "/api/connections", None, true)
        .await?;
    assert_eq!(list["connections"], json!([]), "{list}");
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_queued_messages_then_closes_1001_and_exits_0() -> anyhow::Result<()> {
    /// More than the socket buffers hold (a few MB), so that part of it is still in the
    /// server's queue when the signal comes.
    const MESSAGES: u64 = 700;
    const GRACE: Duration = Duration::from_millis(3_000);
    let mut server = TestServer::start(&[
        ("HERALD_SHUTDOWN_GRACE_MS", "3000"),
        ("HERALD_MAX_QUEUE_SIZE", "100000"),
        ("HERALD_MAX_QUEUE_BYTES", "67108864"),
    ])
    .await?;
    let mut slow = slow_subscriber(&server, "feed").await?;
    let filler = "x".repeat(8192);
    for n in 1..=MESSAGES {
        server
            .publish("feed", json!({"n": n, "filler": filler}))
            .await?;
    }

    server.sigterm().await?;
    let signalled = Instant::now();
    // Readiness turns: a 503, or no answer at all once the listener is closed.
    loop {
        match server.request("GET", "/health/ready", None, false).await {
            Ok((200, _, _)) => {}
            Ok((status, _, body)) => {
                assert_eq!(status, 503, "{body}");
                break;
            }
            Err(_) => break,
        }
        assert!(signalled.elapsed() < TIMEOUT, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections are refused, while the old one is still draining.
    let refused = WsClient::connect_with(
        &server.ws_url(&format!("?token={}", token("late", json!({})))),
        &[],
    )
    .await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );

    // The subscriber gets every queued message, in order, then the 1001 close.
    let mut offsets = Vec::new();
    let ended = read_until_ended(&mut slow, |text| {
        let messages = frames_in(text)
            .into_iter()
            .filter(|f| f["type"] == "message");
        offsets.extend(messages.filter_map(|f| f["offset"].as_u64()));
    })
    .await?;
    assert_eq!(offsets, (1..=MESSAGES).collect::<Vec<_>>());
    assert_eq!(ended, Ended::Closed(1001));
    drop(slow);

    let status = server.wait_exit(GRACE + Duration::from_secs(2)).await?;
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < GRACE + Duration::from_secs(2));
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_0_within_the_grace_period_despite_a_stuck_client() -> anyhow::Result<()> {
    const GRACE: Duration = Duration::from_millis(500);
    let mut server = TestServer::start(&[("HERALD_SHUTDOWN_GRACE_MS", "500")]).await?;
    // This one never reads again, so it can neither take its messages nor finish the close.
    let stuck = slow_subscriber(&server, "feed").await?;
    let (mut polite, _) = WsClient::connect_as(&server, "polite").await?;
    polite.subscribe("feed").await?;
    let filler = "x".repeat(8192);
    for n in 1..=200 {
        server
            .publish("feed", json!({"n": n, "filler": filler}))
            .await?;
    }
    server.sigterm().await?;
    let signalled = Instant::now();
    let mut last = 0;
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            match polite.recv_data().await {
                Ok(frame) => last = frame["offset"].as_u64().unwrap_or(last),
                Err(error) => return error.to_string(),
            }
        }
    })
    .await?;
    assert!(ended.contains("1001") || ended.contains("Away"), "{ended}");
    assert_eq!(last, 200, "the reading client missed messages");
    let status = server
        .wait_exit(GRACE + Duration::from_millis(2_500))
        .await?;
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < GRACE + Duration::from_millis(2_500),
        "exit took {took:?}"
    );
    drop(stuck);
    Ok(())
}

#[tokio::test]
async fn a_client_that_neither_reads_nor_writes_is_still_closed_when_stale() -> anyhow::Result<()> {
    // A queue large enough that it never overflows: only the stale timeout can end this one.
    let mut env = HEARTBEAT.to_vec();
    env.extend([
        ("HERALD_MAX_QUEUE_SIZE", "100000"),
        ("HERALD_MAX_QUEUE_BYTES", "67108864"),
    ]);
    let server = TestServer::start(&env).await?;
    let stuck = slow_subscriber(&server, "feed").await?;
    // More than the socket buffers hold, so the server's writes to it block.
    let filler = "x".repeat(8192);
    for n in 1..=800 {
        server
            .publish("feed", json!({"n": n, "filler": filler}))
            .await?;
    }
    server
        .wait_for_stats(|s| s["connections"] == 0 && s["subscriptions"] == 0)
        .await?;
    drop(stuck);
    Ok(())
}
