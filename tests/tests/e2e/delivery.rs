//! Guaranteed delivery: topic history and resume with `since`, critical events with acks,
//! redelivery, thread isolation, and a chaos run with random TCP drops.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use herald_tests::{TestServer, WsClient};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages_then_live() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let ack = client.subscribe("news").await?;
    let epoch = ack["epoch"].clone();
    for n in 1..=3 {
        server.publish("news", json!({"n": n})).await?;
    }
    for n in 1..=3 {
        assert_eq!(client.recv_data().await?["offset"], n);
    }
    client.drop_tcp();
    for n in 4..=6 {
        server.publish("news", json!({"n": n})).await?;
    }

    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let (reply, _) = client
        .request(
            "subscribe",
            json!({"topic": "news", "since": {"offset": 3, "epoch": epoch}}),
        )
        .await?;
    assert_eq!(reply["type"], "ack");
    assert_eq!(reply["data"]["recovered"], true);
    assert_eq!(reply["data"]["offset"], 6);
    server.publish("news", json!({"n": 7})).await?;
    let offsets: Vec<Value> = {
        let mut offsets = Vec::new();
        for _ in 4..=7 {
            let frame = client.recv_data().await?;
            assert_eq!(frame["data"]["n"], frame["offset"]);
            offsets.push(frame["offset"].clone());
        }
        offsets
    };
    assert_eq!(offsets, [4, 5, 6, 7].map(Value::from));
    assert!(client.try_recv(Duration::from_millis(100)).await.is_none());
    Ok(())
}

#[tokio::test]
async fn resume_is_not_recovered_when_history_lost_the_gap_or_the_epoch_changed()
-> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_HISTORY_SIZE", "2")]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let epoch = client.subscribe("news").await?["epoch"].clone();
    for n in 1..=5 {
        server.publish("news", json!({"n": n})).await?;
    }
    let (mut fresh, _) = WsClient::connect_as(&server, "alice").await?;
    let (reply, _) = fresh
        .request(
            "subscribe",
            json!({"topic": "news", "since": {"offset": 1, "epoch": epoch}}),
        )
        .await?;
    assert_eq!(reply["data"]["recovered"], false);
    let (reply, _) = fresh
        .request(
            "subscribe",
            json!({"topic": "news", "since": {"offset": 4, "epoch": "other"}}),
        )
        .await?;
    assert_eq!(reply["data"]["recovered"], false);
    // Nothing was replayed: the next frame is live.
    server.publish("news", json!({"n": 6})).await?;
    assert_eq!(fresh.recv_data().await?["offset"], 6);
    // Within what history still holds, the resume recovers.
    let (mut third, _) = WsClient::connect_as(&server, "alice").await?;
    let (reply, _) = third
        .request(
            "subscribe",
            json!({"topic": "news", "since": {"offset": 4, "epoch": epoch}}),
        )
        .await?;
    assert_eq!(reply["data"]["recovered"], true);
    assert_eq!(third.recv_data().await?["offset"], 5);
    assert_eq!(third.recv_data().await?["offset"], 6);
    Ok(())
}

#[tokio::test]
async fn history_route_pages_forward() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    for n in 1..=5 {
        server.publish("feed", json!({"n": n, "raw": 1.50})).await?;
    }
    let (status, _, body) = server
        .request(
            "GET",
            "/api/topics/feed/history?since=1&limit=2",
            None,
            true,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["topic"], "feed");
    assert_eq!(
        body["messages"],
        json!([{"offset": 2, "data": {"n": 2, "raw": 1.50}}, {"offset": 3, "data": {"n": 3, "raw": 1.50}}])
    );
    let (_, _, all) = server
        .request("GET", "/api/topics/feed/history", None, true)
        .await?;
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(5));
    let (status, _, body) = server
        .request("GET", "/api/topics/unknown/history", None, true)
        .await?;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"topic": "unknown", "epoch": null, "messages": []})
        )
    );
    // Data comes back exactly as published: number spellings and key order included.
    let raw = r#"{"topic":"feed","data":{"z":1,"raw":1.50,"s":"\u00e9"}}"#;
    let (status, _, _) = server
        .request_raw(
            "POST",
            "/api/publish",
            raw.into(),
            Some(herald_tests::API_KEY),
        )
        .await?;
    assert_eq!(status, 200);
    let (_, _, text) = server
        .request_text(
            "GET",
            "/api/topics/feed/history?since=5",
            Some(herald_tests::API_KEY),
        )
        .await?;
    assert!(
        text.contains(r#""data":{"z":1,"raw":1.50,"s":"\u00e9"}"#),
        "{text}"
    );
    let (status, _, _) = server
        .request("GET", "/api/topics/feed/history?limit=x", None, true)
        .await?;
    assert_eq!(status, 400);
    Ok(())
}

#[tokio::test]
async fn events_wait_for_an_offline_user_and_are_kept_until_acked() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let sent = server
        .send_event(
            "bob",
            &json!({"event": "agent_started", "data": {"step": 1}, "runId": "r1"}),
        )
        .await?;
    assert_eq!(
        (sent["delivered"].clone(), sent["pending"].clone()),
        (json!(0), json!(1))
    );
    let second = server
        .send_event(
            "bob",
            &json!({"event": "tool_executing", "data": {"step": 2}, "id": "e2"}),
        )
        .await?;
    assert_eq!(second["id"], "e2");
    // A retried send of a pending id changes nothing.
    let retried = server
        .send_event(
            "bob",
            &json!({"event": "tool_executing", "data": {"step": 2}, "id": "e2"}),
        )
        .await?;
    assert_eq!(
        (retried["delivered"].clone(), retried["pending"].clone()),
        (json!(0), json!(2))
    );

    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;
    let first = bob.recv_data().await?;
    assert_eq!(
        (first["type"].clone(), first["event"].clone()),
        (json!("event"), json!("agent_started"))
    );
    assert_eq!(first["runId"], "r1");
    assert_eq!(first["id"], sent["id"]);
    let next = bob.recv_data().await?;
    assert_eq!(
        (next["event"].clone(), next["id"].clone()),
        (json!("tool_executing"), json!("e2"))
    );
    assert_eq!(server.stats().await?["events"]["pending"], 2);

    // Unacknowledged events come back on reconnect, in order.
    bob.drop_tcp();
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;
    let again = bob.recv_data().await?;
    assert_eq!(again["id"], sent["id"]);
    let (reply, _) = bob
        .request("ack", json!({"ids": [sent["id"], "e2", "unknown"]}))
        .await?;
    assert_eq!(reply["data"]["acknowledged"], 2);
    server
        .wait_for_stats(|s| s["events"]["pending"] == 0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn events_are_redelivered_after_the_ack_timeout() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_EVENT_ACK_TIMEOUT_MS", "300")]).await?;
    let (mut carol, _) = WsClient::connect_as(&server, "carol").await?;
    let sent = server
        .send_event("carol", &json!({"event": "agent_thinking", "data": null}))
        .await?;
    assert_eq!(sent["delivered"], 1);
    assert_eq!(carol.recv_data().await?["id"], sent["id"]);
    // No ack: the same event arrives again.
    assert_eq!(carol.recv_data().await?["id"], sent["id"]);
    carol.request("ack", json!({"ids": [sent["id"]]})).await?;
    server
        .wait_for_stats(|s| s["events"]["pending"] == 0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn pending_events_are_bounded_with_a_retry_later_status() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_PENDING_EVENTS", "2")]).await?;
    for _ in 0..2 {
        server
            .send_event("dave", &json!({"event": "agent_started"}))
            .await?;
    }
    let (status, headers, body) = server
        .request(
            "POST",
            "/api/users/dave/events",
            Some(&json!({"event": "agent_started"})),
            true,
        )
        .await?;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["error"]["code"], "limit_exceeded");
    let (status, _, body) = server
        .request(
            "POST",
            "/api/users/dave/events",
            Some(&json!({"event": "agent_exploded"})),
            true,
        )
        .await?;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    Ok(())
}

#[tokio::test]
async fn events_reach_only_their_user_and_thread() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut t1, _) = WsClient::connect_thread(&server, "erin", "t1").await?;
    let (mut t2, _) = WsClient::connect_thread(&server, "erin", "t2").await?;
    let (mut unbound, _) = WsClient::connect_as(&server, "erin").await?;
    let (mut other, _) = WsClient::connect_thread(&server, "frank", "t1").await?;
    let sent = server
        .send_event(
            "erin",
            &json!({"event": "tool_completed", "threadId": "t1", "data": {"x": 1}}),
        )
        .await?;
    assert_eq!(sent["delivered"], 2);
    assert_eq!(t1.recv_data().await?["threadId"], "t1");
    assert_eq!(unbound.recv_data().await?["id"], sent["id"]);
    assert!(t2.try_recv(Duration::from_millis(150)).await.is_none());
    assert!(other.try_recv(Duration::from_millis(50)).await.is_none());
    // A connection of another thread cannot acknowledge it.
    let (reply, _) = t2.request("ack", json!({"ids": [sent["id"]]})).await?;
    assert_eq!(reply["data"]["acknowledged"], 0);
    let (reply, _) = t1.request("ack", json!({"ids": [sent["id"]]})).await?;
    assert_eq!(reply["data"]["acknowledged"], 1);
    Ok(())
}

/// Offsets a subscriber saw on one topic, checked for order and duplicates at every hand-over.
#[derive(Default)]
struct TopicLog {
    last: u64,
    epoch: Option<Value>,
}

#[tokio::test]
async fn resume_while_publishing_at_full_rate_has_no_gap_and_no_duplicate() -> anyhow::Result<()> {
    let server = Arc::new(TestServer::start(&[("HERALD_HISTORY_SIZE", "100000")]).await?);
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                server.publish("race", json!({"n": n})).await?;
            }
            anyhow::Ok(n)
        })
    };
    let mut log = TopicLog::default();
    for round in 0..8 {
        let (mut client, _) = WsClient::connect_as(&server, "racer").await?;
        let data = match &log.epoch {
            Some(epoch) => json!({"topic": "race", "since": {"offset": log.last, "epoch": epoch}}),
            None => json!({"topic": "race"}),
        };
        let (reply, early) = client.request("subscribe", data).await?;
        anyhow::ensure!(
            early.is_empty(),
            "frames before the subscribe ack: {early:?}"
        );
        if log.epoch.is_some() {
            assert_eq!(reply["data"]["recovered"], true, "round {round}");
        } else {
            log.last = reply["data"]["offset"].as_u64().unwrap_or(0);
            log.epoch = Some(reply["data"]["epoch"].clone());
        }
        // Read a while, requiring each offset to follow the previous one exactly.
        for _ in 0..(20 + round * 7) {
            let frame = client.recv_data().await?;
            let offset = frame["offset"].as_u64().unwrap_or(0);
            assert_eq!(offset, log.last + 1, "gap or duplicate at round {round}");
            log.last = offset;
        }
        client.drop_tcp();
    }
    done.store(true, Ordering::Relaxed);
    let published = publisher.await??;
    assert!(published >= log.last);
    Ok(())
}

/// An event the chaos backend sent: its sequence number, thread (if any) and id.
type SentEvent = (u64, Option<&'static str>, String);

/// One logical client of the chaos run: a user's connection bound to a thread.
struct ChaosClient {
    user: &'static str,
    thread: &'static str,
}

#[tokio::test]
async fn chaos_with_random_drops_loses_nothing_and_leaves_no_residue() -> anyhow::Result<()> {
    const USERS: [&str; 3] = ["u1", "u2", "u3"];
    const THREADS: [&str; 2] = ["ta", "tb"];
    const MESSAGES: u64 = 1_500;
    const EVENTS: u64 = 120;
    let server = Arc::new(
        TestServer::start(&[
            ("HERALD_HISTORY_SIZE", "100000"),
            ("HERALD_EVENT_ACK_TIMEOUT_MS", "400"),
            ("HERALD_MAX_PENDING_EVENTS", "1000"),
        ])
        .await?,
    );
    let topics: Vec<String> = vec!["room:all".into(), "room:odd".into()];
    // Events the backend sent, per user: (seq, thread or None, id).
    let sent_events: Arc<Mutex<HashMap<&'static str, Vec<SentEvent>>>> = Arc::default();
    let backend_done = Arc::new(AtomicBool::new(false));

    let backend = {
        let (server, sent_events, done) = (
            Arc::clone(&server),
            Arc::clone(&sent_events),
            Arc::clone(&backend_done),
        );
        let topics = topics.clone();
        tokio::spawn(async move {
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
            let mut event_seq = 0u64;
            for n in 1..=MESSAGES {
                let topic = &topics[(n % 2) as usize];
                server.publish(topic, json!({"n": n})).await?;
                if n % (MESSAGES / EVENTS) == 0 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let user = USERS[(rng % 3) as usize];
                    let thread = match rng % 3 {
                        0 => None,
                        1 => Some(THREADS[0]),
                        _ => Some(THREADS[1]),
                    };
                    event_seq += 1;
                    let mut body = json!({"event": "agent_thinking", "data": {"seq": event_seq, "user": user}});
                    if let Some(thread) = thread {
                        body["threadId"] = json!(thread);
                    }
                    let answer = server.send_event(user, &body).await?;
                    let id = answer["id"].as_str().unwrap_or_default().to_owned();
                    sent_events
                        .lock()
                        .await
                        .entry(user)
                        .or_default()
                        .push((event_seq, thread, id));
                }
            }
            done.store(true, Ordering::Relaxed);
            anyhow::Ok(())
        })
    };

    // Event ids each user received (across its connections).
    let received_events: Arc<Mutex<HashMap<&'static str, BTreeSet<String>>>> = Arc::default();
    let mut clients = Vec::new();
    for (index, (user, thread)) in USERS
        .iter()
        .flat_map(|u| THREADS.iter().map(move |t| (*u, *t)))
        .enumerate()
    {
        let client = ChaosClient { user, thread };
        let (server, topics, received_events, backend_done) = (
            Arc::clone(&server),
            topics.clone(),
            Arc::clone(&received_events),
            Arc::clone(&backend_done),
        );
        clients.push(tokio::spawn(async move {
            let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (index as u64 + 1);
            let mut logs: BTreeMap<String, TopicLog> = topics.iter().map(|t| (t.clone(), TopicLog::default())).collect();
            let mut seen_events: BTreeSet<String> = BTreeSet::new();
            let mut last_event_seq = 0u64;
            let mut drops = 0;
            loop {
                let (mut ws, _) = WsClient::connect_thread(&server, client.user, client.thread).await?;
                for (topic, log) in &mut logs {
                    let data = match &log.epoch {
                        Some(epoch) => json!({"topic": topic, "since": {"offset": log.last, "epoch": epoch}}),
                        None => json!({"topic": topic}),
                    };
                    ws.send(&json!({"type": "subscribe", "messageId": format!("s:{topic}"), "data": data})).await?;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let budget = 40 + (rng % 200) as usize;
                let mut handled = 0;
                loop {
                    let finished = backend_done.load(Ordering::Relaxed)
                        && logs.values().all(|log| log.last == MESSAGES / 2);
                    if finished && handled > 0 {
                        // Stay a little to receive and ack any last events, then leave politely.
                        while let Some(frame) = ws.try_recv(Duration::from_millis(300)).await {
                            handle_event(&frame, &client, &mut seen_events, &mut last_event_seq, &mut ws).await?;
                        }
                        ws.close().await?;
                        received_events.lock().await.entry(client.user).or_default().extend(seen_events);
                        return anyhow::Ok(drops);
                    }
                    let Some(frame) = ws.try_recv(Duration::from_millis(500)).await else {
                        if finished {
                            handled += 1;
                        }
                        continue;
                    };
                    handled += 1;
                    match frame["type"].as_str() {
                        Some("ack") => {
                            let topic = frame["data"]["topic"].as_str().unwrap_or_default().to_owned();
                            let log = logs.get_mut(&topic).ok_or_else(|| anyhow::anyhow!("ack for {topic}"))?;
                            if log.epoch.is_some() {
                                anyhow::ensure!(frame["data"]["recovered"] == true, "not recovered: {frame}");
                            } else {
                                log.epoch = Some(frame["data"]["epoch"].clone());
                                log.last = frame["data"]["offset"].as_u64().unwrap_or(0);
                            }
                        }
                        Some("message") => {
                            let topic = frame["topic"].as_str().unwrap_or_default().to_owned();
                            let log = logs.get_mut(&topic).ok_or_else(|| anyhow::anyhow!("message on {topic}"))?;
                            let offset = frame["offset"].as_u64().unwrap_or(0);
                            anyhow::ensure!(offset == log.last + 1, "{topic}: offset {offset} after {}", log.last);
                            log.last = offset;
                        }
                        Some("event") => {
                            handle_event(&frame, &client, &mut seen_events, &mut last_event_seq, &mut ws).await?;
                        }
                        Some("ping") => {}
                        _ => anyhow::bail!("unexpected frame {frame}"),
                    }
                    if handled >= budget && !finished {
                        drops += 1;
                        ws.drop_tcp();
                        break;
                    }
                }
            }
        }));
    }
    backend.await??;
    let mut total_drops = 0;
    for client in clients {
        total_drops += client.await??;
    }
    assert!(
        total_drops > 10,
        "the run should have dropped connections ({total_drops})"
    );

    // Every event reached its user and was acknowledged.
    let sent = sent_events.lock().await;
    let received = received_events.lock().await;
    for (user, events) in sent.iter() {
        let got = received.get(user).cloned().unwrap_or_default();
        for (_, _, id) in events {
            assert!(got.contains(id), "{user} never received event {id}");
        }
    }
    let stats = server
        .wait_for_stats(|s| {
            s["connections"] == 0 && s["subscriptions"] == 0 && s["events"]["pending"] == 0
        })
        .await?;
    assert_eq!(stats["users"], 0);
    Ok(())
}

/// Checks an event's user, thread and order, acknowledges it and records its id.
async fn handle_event(
    frame: &Value,
    client: &ChaosClient,
    seen: &mut BTreeSet<String>,
    last_seq: &mut u64,
    ws: &mut WsClient,
) -> anyhow::Result<()> {
    if frame["type"] != "event" {
        return Ok(());
    }
    anyhow::ensure!(
        frame["data"]["user"] == client.user,
        "{} got another user's event {frame}",
        client.user
    );
    if let Some(thread) = frame["threadId"].as_str() {
        anyhow::ensure!(
            thread == client.thread,
            "thread {} got event of {thread}",
            client.thread
        );
    }
    let id = frame["id"].as_str().unwrap_or_default().to_owned();
    if seen.insert(id.clone()) {
        let seq = frame["data"]["seq"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            seq > *last_seq,
            "event {seq} after {last_seq}: out of order"
        );
        *last_seq = seq;
    }
    ws.send(&json!({"type": "ack", "data": {"ids": [id]}}))
        .await
}
