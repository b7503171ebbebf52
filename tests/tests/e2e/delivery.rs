//! Guaranteed delivery: topic history and resume with `since`, critical events with acks,
//! redelivery, thread isolation (protocol-level, on raw sockets), and a chaos run with random
//! TCP drops that `herald-client` must ride out (behaviour, through the Rust client).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use herald_client::{Backoff, Client, ClientConfig, ClientEvent, ConnectionState, TokenError};
use herald_tests::{DropProxy, TestServer, WsClient, token};
use serde_json::{Value, json};

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

/// What one chaos client saw: the event ids handed to it, and how many topic messages.
type ChaosSeen = (BTreeSet<String>, u64);

/// One logical client of the chaos run: a user's `herald-client` bound to a thread, dialing
/// through the proxy that cuts connections. It checks what the client hands it: topic
/// messages exactly once and in order on each topic (no reset: history holds every gap),
/// events of its own user and thread, first deliveries in the order they were sent; the
/// client acknowledges each event when the handler drops it.
async fn chaos_client(
    url: String,
    user: &'static str,
    thread: &'static str,
    topics: Vec<String>,
    complete: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ChaosSeen> {
    let config = ClientConfig::new(url).thread(thread).backoff(
        Backoff::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(200)),
    );
    let (client, mut events) = Client::connect(config, move || async move {
        Ok::<_, TokenError>(token(user, json!({})))
    });
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for topic in &topics {
        let ack = client.subscribe(topic).await?;
        last.insert(topic.clone(), ack.offset);
    }
    let mut seen = BTreeSet::new();
    let mut last_seq = 0;
    let mut messages = 0;
    let mut counted = false;
    while !stop.load(Ordering::SeqCst) {
        let Ok(event) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await
        else {
            continue;
        };
        match event.context("the client's events ended")? {
            ClientEvent::Message(message) => {
                let last = last
                    .get_mut(&message.topic)
                    .with_context(|| format!("a message on {}", message.topic))?;
                anyhow::ensure!(
                    message.offset == *last + 1,
                    "{}: offset {} after {last}",
                    message.topic,
                    message.offset
                );
                *last = message.offset;
                messages += 1;
            }
            ClientEvent::Event(event) => {
                let data: Value = event.json()?;
                anyhow::ensure!(
                    data["user"] == user,
                    "{user} got another user's event {data}"
                );
                if let Some(other) = &event.thread_id {
                    anyhow::ensure!(other == thread, "thread {thread} got an event of {other}");
                }
                anyhow::ensure!(
                    seen.insert(event.id.clone()),
                    "{} handed over twice",
                    event.id
                );
                let seq = data["seq"].as_u64().unwrap_or(0);
                anyhow::ensure!(seq > last_seq, "event {seq} after {last_seq}: out of order");
                last_seq = seq;
                // Dropped here: acknowledged.
            }
            ClientEvent::Reset(reset) => anyhow::bail!("{user}/{thread}: unexpected {reset:?}"),
            ClientEvent::State(ConnectionState::Closed { code, reason }) => {
                anyhow::bail!("{user}/{thread} closed for good: {code:?} {reason}")
            }
            _ => {}
        }
        if !counted && last.values().all(|&offset| offset == CHAOS_MESSAGES / 2) {
            counted = true;
            complete.fetch_add(1, Ordering::SeqCst);
        }
    }
    client.close().await;
    while events.recv().await.is_some() {}
    Ok((seen, messages))
}

/// How many topic messages the chaos backend publishes (half on each topic).
const CHAOS_MESSAGES: u64 = 1_500;

#[tokio::test]
async fn chaos_with_random_drops_loses_nothing_and_leaves_no_residue() -> anyhow::Result<()> {
    const USERS: [&str; 3] = ["u1", "u2", "u3"];
    const THREADS: [&str; 2] = ["ta", "tb"];
    const EVENTS: u64 = 120;
    let server = Arc::new(
        TestServer::start(&[
            ("HERALD_HISTORY_SIZE", "100000"),
            ("HERALD_EVENT_ACK_TIMEOUT_MS", "400"),
            ("HERALD_MAX_PENDING_EVENTS", "1000"),
        ])
        .await?,
    );
    let proxy = DropProxy::start(server.addr).await?;
    let topics: Vec<String> = vec!["room:all".into(), "room:odd".into()];

    // The clients connect and subscribe first, so each must see every message.
    let complete = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (user, thread) in USERS
        .iter()
        .flat_map(|u| THREADS.iter().map(move |t| (*u, *t)))
    {
        let task = tokio::spawn(chaos_client(
            proxy.ws_url(),
            user,
            thread,
            topics.clone(),
            Arc::clone(&complete),
            Arc::clone(&stop),
        ));
        clients.push((user, task));
    }
    server.wait_for_stats(|s| s["subscriptions"] == 12).await?;

    // Events the backend sent, per user: (seq, thread or None, id).
    let backend = {
        let (server, topics) = (Arc::clone(&server), topics.clone());
        tokio::spawn(async move {
            let mut sent: HashMap<&'static str, Vec<SentEvent>> = HashMap::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
            let mut event_seq = 0u64;
            for n in 1..=CHAOS_MESSAGES {
                let topic = &topics[(n % 2) as usize];
                server.publish(topic, json!({"n": n})).await?;
                if n % (CHAOS_MESSAGES / EVENTS) == 0 {
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
                    sent.entry(user).or_default().push((event_seq, thread, id));
                }
            }
            anyhow::Ok(sent)
        })
    };

    // Meanwhile the network cuts every connection at random moments.
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut drops = 0;
    while !backend.is_finished() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(50 + rng % 200)).await;
        drops += proxy.sever_all();
    }
    let sent = backend.await??;
    assert!(
        drops > 10,
        "the run should have dropped connections ({drops})"
    );

    // Every client catches up with both topics, and every event is acknowledged.
    server
        .wait_for_stats(|s| complete.load(Ordering::SeqCst) == 6 && s["events"]["pending"] == 0)
        .await?;
    stop.store(true, Ordering::SeqCst);
    let mut received: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
    for (user, task) in clients {
        let (seen, messages) = task.await??;
        assert!(messages >= CHAOS_MESSAGES, "{user}: {messages} messages");
        received.entry(user).or_default().extend(seen);
    }
    // Every event reached its user.
    for (user, events) in &sent {
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
