//! Critical events and preferences shared by three nodes through one real Redis: an event accepted
//! on one node reaches the user's connections on every node, an ack on one node stops redelivery on
//! all (only a connection that receives the event's thread acknowledges it), an event id sent to
//! several nodes is delivered once, a node killed with SIGKILL while holding unacknowledged events
//! loses none (the user gets each once, in order, on another node, and resumes its topic there with
//! `since`, no gap and no duplicate), an event Redis cannot keep is refused with 503, a connection
//! made while Redis is paused gets the pending events once Redis answers, preferences set on one
//! node are read on another and pushed to the user's connections there, and the per-user connection
//! limit counts each node's connections (it is per node, not cluster-wide).

use std::time::Duration;

use futures_util::future::join_all;
use herald_tests::{Cluster, Ended, RedisServer, WsClient};
use serde_json::{Value, json};

/// Redelivery after a second, so the tests see it (or its absence) quickly.
const FAST_ACKS: [(&str, &str); 2] = [
    ("HERALD_EVENT_ACK_TIMEOUT_MS", "1000"),
    ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
];

fn event(id: &str, n: u64) -> Value {
    json!({"event": "agent_started", "id": id, "data": {"n": n}})
}

/// The ids of the `event` frames the client receives within `window` (other frames skipped).
async fn events_within(client: &mut WsClient, window: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + window;
    let mut ids = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return ids;
        }
        match client.try_recv(left).await {
            Some(frame) if frame["type"] == "event" => {
                ids.push(frame["id"].as_str().unwrap_or_default().to_owned());
            }
            Some(_) => {}
            None => return ids,
        }
    }
}

/// The next `n` event ids the client receives (other frames skipped), failing after the
/// client's receive timeout.
async fn next_events(client: &mut WsClient, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let frame = client.recv_data().await?;
        if frame["type"] == "event" {
            ids.push(frame["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(ids)
}

#[tokio::test]
async fn an_event_reaches_every_node_and_an_ack_on_one_stops_redelivery_on_all()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 3, &FAST_ACKS).await?;
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        clients.push(WsClient::connect_as(node, "alice").await?.0);
    }
    let sent = cluster.nodes[0]
        .send_event("alice", &event("e1", 1))
        .await?;
    assert_eq!(sent["id"], "e1");
    cluster.nodes[0]
        .send_event("alice", &event("e2", 2))
        .await?;
    for client in &mut clients {
        assert_eq!(next_events(client, 2).await?, ["e1", "e2"]);
    }
    let (reply, _) = clients[1].request("ack", json!({"ids": ["e1"]})).await?;
    assert_eq!(reply["data"]["acknowledged"], 1, "{reply}");
    // Well past the ack timeout (all three watched at once): the unacknowledged e2 comes
    // again on every node, the acknowledged e1 on none, the acknowledging node included.
    let again = join_all(
        clients
            .iter_mut()
            .map(|client| events_within(client, Duration::from_millis(2_500))),
    )
    .await;
    for (i, again) in again.iter().enumerate() {
        assert!(again.contains(&"e2".to_owned()), "node {i}: {again:?}");
        assert!(!again.contains(&"e1".to_owned()), "node {i}: {again:?}");
    }
    clients[2].request("ack", json!({"ids": ["e2"]})).await?;
    let later = join_all(clients.iter_mut().map(|client| async {
        // What was queued before the ack reached the node may still arrive; then nothing.
        events_within(client, Duration::from_millis(300)).await;
        events_within(client, Duration::from_millis(2_500)).await
    }))
    .await;
    for (i, later) in later.iter().enumerate() {
        assert!(later.is_empty(), "node {i} redelivered {later:?}");
    }
    Ok(())
}

/// What a client received: the `message` offsets of one topic and the `event` ids, in order.
#[derive(Debug, Default)]
struct Seen {
    offsets: Vec<u64>,
    events: Vec<String>,
}

impl Seen {
    fn absorb(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("message") => self
                .offsets
                .push(frame["offset"].as_u64().unwrap_or_default()),
            Some("event") => self
                .events
                .push(frame["id"].as_str().unwrap_or_default().to_owned()),
            _ => {}
        }
    }

    /// Reads frames until `done` holds, failing after the client's receive timeout.
    async fn until(
        &mut self,
        client: &mut WsClient,
        done: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        while !done(self) {
            let frame = client.recv_data().await?;
            self.absorb(&frame);
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_event_id_sent_to_several_nodes_is_delivered_once() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let env = [
        ("HERALD_EVENT_ACK_TIMEOUT_MS", "60000"),
        ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
    ];
    let cluster = Cluster::start(&redis, 3, &env).await?;
    let (mut alice, _) = WsClient::connect_as(&cluster.nodes[2], "alice").await?;
    let first = cluster.nodes[0]
        .send_event("alice", &event("once", 1))
        .await?;
    assert_eq!(first["pending"], 1, "{first}");
    // A backend retrying on other nodes, the one alice is on included.
    for node in &cluster.nodes {
        let again = node.send_event("alice", &event("once", 1)).await?;
        assert_eq!(again["id"], "once", "{again}");
        assert_eq!(again["pending"], 1, "{again}");
        assert_eq!(
            again["delivered"], 0,
            "a retry is not delivered again: {again}"
        );
    }
    assert_eq!(next_events(&mut alice, 1).await?, ["once"]);
    assert_eq!(
        events_within(&mut alice, Duration::from_millis(700)).await,
        Vec::<String>::new(),
        "the event came twice"
    );
    // Each node counts the copies it holds for its own connections: only alice's node has one.
    for (i, pending) in [(0, 0), (1, 0), (2, 1)] {
        let stats = cluster.nodes[i].stats().await?;
        assert_eq!(stats["node"], format!("node-{i}"));
        assert_eq!(stats["events"]["pending"], pending, "node-{i}: {stats}");
    }
    Ok(())
}

#[tokio::test]
async fn a_client_of_a_killed_node_resumes_its_topic_and_events_on_another_node()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let env = [
        ("HERALD_EVENT_ACK_TIMEOUT_MS", "60000"),
        ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
    ];
    let cluster = Cluster::start(&redis, 3, &env).await?;
    let [a, b, c] = &cluster.nodes[..] else {
        anyhow::bail!("three nodes expected");
    };
    let (mut alice, _) = WsClient::connect_as(a, "alice").await?;
    alice.subscribe("feed").await?;
    for n in 1..=3 {
        b.publish("feed", json!(n)).await?;
    }
    b.send_event("alice", &event("e1", 1)).await?;
    b.send_event("alice", &event("e2", 2)).await?;
    let mut seen = Seen::default();
    seen.until(&mut alice, |s| s.offsets.len() == 3 && s.events.len() == 2)
        .await?;
    assert_eq!(seen.offsets, [1, 2, 3]);
    assert_eq!(seen.events, ["e1", "e2"]);
    let (status, _, topic) = b.request("GET", "/api/topics/feed", None, true).await?;
    assert_eq!(status, 200, "{topic}");
    let epoch = topic["epoch"].clone();
    // The node alice is on dies with her events unacknowledged; the feed goes on meanwhile.
    a.sigkill().await?;
    let _ = alice.ended().await;
    for n in 4..=5 {
        c.publish("feed", json!(n)).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, info) = b.request("GET", "/api/topics/feed", None, true).await?;
        if info["lastOffset"] == 5 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "b never saw 5: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut back, _) = WsClient::connect_as(b, "alice").await?;
    let (ack, before) = back
        .request(
            "subscribe",
            json!({"topic": "feed", "since": {"offset": 3, "epoch": epoch}}),
        )
        .await?;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    let mut resumed = Seen::default();
    for frame in &before {
        resumed.absorb(frame);
    }
    resumed
        .until(&mut back, |s| s.offsets.len() == 2 && s.events.len() == 2)
        .await?;
    c.publish("feed", json!(6)).await?;
    resumed.until(&mut back, |s| s.offsets.len() == 3).await?;
    assert_eq!(resumed.offsets, [4, 5, 6], "no gap, no duplicate");
    assert_eq!(
        resumed.events,
        ["e1", "e2"],
        "each pending event once, in order"
    );
    while let Some(frame) = back.try_recv(Duration::from_millis(700)).await {
        resumed.absorb(&frame);
    }
    assert_eq!(
        (resumed.offsets.len(), resumed.events.len()),
        (3, 2),
        "{resumed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_killed_with_unacknowledged_events_loses_none() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    // Redelivery far away, so each event arriving more than once would be a hand-over bug.
    let env = [
        ("HERALD_EVENT_ACK_TIMEOUT_MS", "60000"),
        ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
    ];
    let cluster = Cluster::start(&redis, 3, &env).await?;
    let (mut alice, _) = WsClient::connect_as(&cluster.nodes[0], "alice").await?;
    let ids: Vec<String> = (1..=5).map(|n| format!("e{n}")).collect();
    for (n, id) in (1..).zip(&ids) {
        // Answered only once Redis holds it.
        cluster.nodes[0].send_event("alice", &event(id, n)).await?;
    }
    assert_eq!(next_events(&mut alice, 5).await?, ids);
    cluster.nodes[0].sigkill().await?;
    let _ = alice.ended().await;
    let (mut back, _) = WsClient::connect_as(&cluster.nodes[1], "alice").await?;
    assert_eq!(next_events(&mut back, 5).await?, ids);
    assert_eq!(
        events_within(&mut back, Duration::from_millis(700)).await,
        Vec::<String>::new(),
        "an event came twice"
    );
    // A second connection on a third node gets them too, and a new event reaches both once.
    let (mut third, _) = WsClient::connect_as(&cluster.nodes[2], "alice").await?;
    assert_eq!(next_events(&mut third, 5).await?, ids);
    cluster.nodes[2]
        .send_event("alice", &event("e6", 6))
        .await?;
    assert_eq!(next_events(&mut back, 1).await?, ["e6"]);
    assert_eq!(next_events(&mut third, 1).await?, ["e6"]);
    let (reply, _) = back.request("ack", json!({"ids": ids})).await?;
    assert_eq!(reply["data"]["acknowledged"], 5, "{reply}");
    let (mut fourth, _) = WsClient::connect_as(&cluster.nodes[1], "alice").await?;
    assert_eq!(next_events(&mut fourth, 1).await?, ["e6"]);
    Ok(())
}

#[tokio::test]
async fn an_event_redis_cannot_keep_is_refused_with_503() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 2, &FAST_ACKS).await?;
    let (mut alice, _) = WsClient::connect_as(&cluster.nodes[1], "alice").await?;
    redis.kill().await?;
    let (status, _, answer) = cluster.nodes[0]
        .request(
            "POST",
            "/api/users/alice/events",
            Some(&event("lost?", 1)),
            true,
        )
        .await?;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable");
    assert!(
        events_within(&mut alice, Duration::from_millis(500))
            .await
            .is_empty(),
        "a refused event was delivered"
    );
    Ok(())
}

#[tokio::test]
async fn a_connection_made_while_redis_is_paused_gets_its_pending_events_when_it_answers()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let env = [
        ("HERALD_EVENT_ACK_TIMEOUT_MS", "60000"),
        ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
    ];
    let cluster = Cluster::start(&redis, 2, &env).await?;
    cluster.nodes[0]
        .send_event("alice", &event("e1", 1))
        .await?;
    redis.pause().await?;
    let (mut alice, _) = WsClient::connect_as(&cluster.nodes[1], "alice").await?;
    assert_eq!(
        events_within(&mut alice, Duration::from_millis(800)).await,
        Vec::<String>::new(),
        "nothing can come while Redis is paused"
    );
    redis.resume().await?;
    // The node asks Redis again every second while the connection is open.
    assert_eq!(next_events(&mut alice, 1).await?, ["e1"]);
    assert_eq!(
        events_within(&mut alice, Duration::from_millis(1_500)).await,
        Vec::<String>::new(),
        "the event came twice"
    );
    Ok(())
}

#[tokio::test]
async fn a_thread_event_is_acknowledged_only_by_a_connection_that_receives_it() -> anyhow::Result<()>
{
    let redis = RedisServer::start().await?;
    let env = [
        ("HERALD_EVENT_ACK_TIMEOUT_MS", "60000"),
        ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "300"),
    ];
    let cluster = Cluster::start(&redis, 3, &env).await?;
    let (mut on_t1, _) = WsClient::connect_thread(&cluster.nodes[0], "alice", "t1").await?;
    let (mut on_t2, _) = WsClient::connect_thread(&cluster.nodes[1], "alice", "t2").await?;
    let body = json!({"event": "tool_executing", "id": "x", "threadId": "t1", "data": {}});
    cluster.nodes[2].send_event("alice", &body).await?;
    assert_eq!(next_events(&mut on_t1, 1).await?, ["x"]);
    assert_eq!(
        events_within(&mut on_t2, Duration::from_millis(300)).await,
        Vec::<String>::new(),
        "another thread's connection got it"
    );
    let (reply, _) = on_t2.request("ack", json!({"ids": ["x"]})).await?;
    assert_eq!(reply["data"]["acknowledged"], 0, "{reply}");
    let (mut unbound, _) = WsClient::connect_as(&cluster.nodes[2], "alice").await?;
    assert_eq!(next_events(&mut unbound, 1).await?, ["x"], "still pending");
    let (reply, _) = on_t1.request("ack", json!({"ids": ["x"]})).await?;
    assert_eq!(reply["data"]["acknowledged"], 1, "{reply}");
    let (mut later, _) = WsClient::connect_as(&cluster.nodes[1], "alice").await?;
    assert_eq!(
        events_within(&mut later, Duration::from_millis(500)).await,
        Vec::<String>::new(),
        "acknowledged, yet delivered"
    );
    Ok(())
}

#[tokio::test]
async fn the_per_user_event_limit_holds_across_nodes() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let mut env = FAST_ACKS.to_vec();
    env.push(("HERALD_MAX_PENDING_EVENTS", "2"));
    let cluster = Cluster::start(&redis, 3, &env).await?;
    cluster.nodes[0].send_event("bob", &event("a", 1)).await?;
    cluster.nodes[1].send_event("bob", &event("b", 2)).await?;
    let (status, _, answer) = cluster.nodes[2]
        .request("POST", "/api/users/bob/events", Some(&event("c", 3)), true)
        .await?;
    assert_eq!(status, 429, "{answer}");
    // A retried id is answered, not counted twice.
    let again = cluster.nodes[2].send_event("bob", &event("a", 1)).await?;
    assert_eq!(again["pending"], 2, "{again}");
    Ok(())
}

#[tokio::test]
async fn preferences_set_on_one_node_are_read_on_another() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let cluster = Cluster::start(&redis, 3, &FAST_ACKS).await?;
    let (mut on_a, _) = WsClient::connect_as(&cluster.nodes[0], "alice").await?;
    let (set, _) = on_a
        .request("update_preferences", json!({"theme": "dark", "lang": "en"}))
        .await?;
    assert_eq!(set["data"], json!({"theme": "dark", "lang": "en"}), "{set}");
    let (mut on_c, _) = WsClient::connect_as(&cluster.nodes[2], "alice").await?;
    let (read, _) = on_c.request("get_preferences", Value::Null).await?;
    assert_eq!(read["type"], "preferences", "{read}");
    assert_eq!(read["data"], json!({"theme": "dark", "lang": "en"}));
    // The merge rule is the in-memory one: keys replace, `null` removes.
    let (merged, _) = on_c
        .request(
            "update_preferences",
            json!({"lang": null, "batching": false}),
        )
        .await?;
    assert_eq!(merged["data"], json!({"theme": "dark", "batching": false}));
    // The user's connection on the other node is told, as a connection on the same node is.
    let push = loop {
        let frame = on_a.recv_data().await?;
        if frame["type"] == "preferences" {
            break frame;
        }
    };
    assert_eq!(push["messageId"], Value::Null, "{push}");
    assert_eq!(push["data"], json!({"theme": "dark", "batching": false}));
    let (read, _) = on_a.request("get_preferences", Value::Null).await?;
    assert_eq!(read["data"], json!({"theme": "dark", "batching": false}));
    Ok(())
}

#[tokio::test]
async fn the_per_user_connection_limit_counts_each_nodes_connections() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let mut env = FAST_ACKS.to_vec();
    env.push(("HERALD_MAX_CONNECTIONS_PER_USER", "1"));
    let cluster = Cluster::start(&redis, 3, &env).await?;
    // One connection per node: under a per-node limit of 1, all three stay.
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        clients.push(WsClient::connect_as(node, "alice").await?.0);
    }
    for client in &mut clients {
        client
            .expect_quiet("a connection within its node's limit")
            .await?;
    }
    // A second one on the same node evicts that node's first (the default policy).
    let (_second, _) = WsClient::connect_as(&cluster.nodes[1], "alice").await?;
    assert_eq!(clients[1].ended().await?, Ended::Closed(4029));
    let (reply, _) = clients[0].request("ping", Value::Null).await?;
    assert_eq!(reply["type"], "pong");
    Ok(())
}
