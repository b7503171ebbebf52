//! The Rust client (`herald-client`) against the real binary: a connection closed by the API
//! and a server killed and restarted during a stream of topic messages and critical events,
//! token refresh in place, a token that expires while the client is reconnecting,
//! `wss://` with a certificate from a test CA, and a client moved to another node of a
//! cluster when its node dies (the topic's numbering lives in Redis, so nothing is reset).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use herald_client::{
    Backoff, Client, ClientConfig, ClientEvent, ConnectionState, Events, TokenError, TopicReset,
};
use herald_tests::{
    Cluster, DropProxy, RedisServer, TIMEOUT, TestCa, TestServer, TlsFiles, now_secs, sign, token,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// A client configuration for `server` that reconnects quickly, also after 4010 (the tests
/// close connections through the API to make them come back).
fn config(server: &TestServer) -> ClientConfig {
    ClientConfig::new(server.ws_url(""))
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(50))
                .max(Duration::from_millis(300)),
        )
        .reconnect_after_close(4010)
}

/// A token provider for `user` that counts its calls; `first` is the token of the first
/// call, later calls get a token valid for an hour.
fn provider(
    user: &'static str,
    first: Option<String>,
    calls: Arc<AtomicU32>,
) -> impl herald_client::TokenProvider {
    move || {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        let token = match (&first, call) {
            (Some(first), 0) => first.clone(),
            _ => token(user, json!({})),
        };
        async move { Ok::<_, TokenError>(token) }
    }
}

/// What a test saw on a client's event stream.
#[derive(Default)]
struct Seen {
    /// Every topic message as (epoch, offset, data).
    messages: Vec<(String, u64, Value)>,
    /// How often each critical event id was handed over.
    events: BTreeMap<String, u32>,
    /// The ids of the connections that were established, in order.
    connections: Vec<String>,
    /// The close codes of the connections that ended.
    closes: Vec<Option<u16>>,
    /// The resets reported.
    resets: Vec<TopicReset>,
    /// Errors reported.
    errors: Vec<String>,
}

impl Seen {
    /// Records one event; critical events are dropped here, which acknowledges them.
    fn record(&mut self, event: ClientEvent) -> anyhow::Result<()> {
        match event {
            ClientEvent::Message(message) => {
                let data: Value = message.json()?;
                self.messages.push((message.epoch, message.offset, data));
            }
            ClientEvent::Event(event) => {
                *self.events.entry(event.id.clone()).or_default() += 1;
            }
            ClientEvent::State(ConnectionState::Connected(info)) => {
                self.connections.push(info.connection_id);
            }
            ClientEvent::State(ConnectionState::Disconnected { code, .. }) => {
                self.closes.push(code);
            }
            ClientEvent::State(ConnectionState::Closed { code, reason }) => {
                bail!("the client closed for good: {code:?} {reason}");
            }
            ClientEvent::Reset(reset) => self.resets.push(reset),
            ClientEvent::Error(error) => self.errors.push(error.to_string()),
            _ => {}
        }
        Ok(())
    }

    /// Reads and records events until `done` holds, or fails after `limit`.
    async fn until(
        &mut self,
        events: &mut Events,
        limit: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .context("timed out waiting on the client's events")?
                .context("the client's events ended")?;
            self.record(event)?;
        }
        Ok(())
    }

    /// The offsets seen in `epoch`, in the order they were delivered.
    fn offsets(&self, epoch: &str) -> Vec<u64> {
        self.messages
            .iter()
            .filter(|(e, _, _)| e == epoch)
            .map(|(_, offset, _)| *offset)
            .collect()
    }
}

#[tokio::test]
async fn a_connection_closed_by_the_api_mid_stream_loses_nothing_and_acks_every_event_once()
-> anyhow::Result<()> {
    const MESSAGES: u64 = 300;
    const EVENTS: usize = 10;
    let server = Arc::new(TestServer::start(&[]).await?);
    let calls = Arc::new(AtomicU32::new(0));
    let (client, mut events) =
        Client::connect(config(&server), provider("alice", None, Arc::clone(&calls)));
    let mut seen = Seen::default();
    seen.until(&mut events, TIMEOUT, |s| !s.connections.is_empty())
        .await?;
    let ack = client.subscribe("stream:a").await?;
    assert_eq!((ack.offset, ack.recovered), (0, false));
    let epoch = ack.epoch;

    // The backend publishes a stream with critical events mixed in.
    let backend = Arc::clone(&server);
    let publisher = tokio::spawn(async move {
        for n in 1..=MESSAGES {
            backend.publish("stream:a", json!({ "n": n })).await?;
            if n % (MESSAGES / EVENTS as u64) == 0 {
                let body = json!({"event": "tool_completed", "id": format!("ev-{n}"), "data": n});
                backend.send_event("alice", &body).await?;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(())
    });

    // Mid-stream, the backend closes the client's connection (4010).
    seen.until(&mut events, TIMEOUT, |s| s.messages.len() >= 60)
        .await?;
    let first = seen.connections[0].clone();
    let (status, _, body) = server
        .request("DELETE", &format!("/api/connections/{first}"), None, true)
        .await?;
    assert_eq!(status, 200, "{body}");

    seen.until(&mut events, 3 * TIMEOUT, |s| {
        s.messages.len() as u64 >= MESSAGES && s.events.len() >= EVENTS
    })
    .await?;
    publisher.await??;

    assert_eq!(seen.offsets(&epoch), (1..=MESSAGES).collect::<Vec<_>>());
    assert!(
        seen.messages
            .iter()
            .all(|(_, offset, data)| data["n"] == json!(offset))
    );
    assert_eq!(seen.events.len(), EVENTS);
    assert!(
        seen.events.values().all(|&count| count == 1),
        "{:?}",
        seen.events
    );
    assert!(seen.closes.contains(&Some(4010)), "{:?}", seen.closes);
    assert!(seen.connections.len() >= 2);
    let stats = server
        .wait_for_stats(|s| s["events"]["pending"] == 0 && s["events"]["acknowledged"] == EVENTS)
        .await?;
    // The gap of the reconnect was closed from history, not by luck.
    assert!(stats["resumes"]["recovered"].as_u64() >= Some(1), "{stats}");
    assert!(seen.resets.is_empty(), "{:?}", seen.resets);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the token was still fresh");
    client.close().await;
    Ok(())
}

/// What a backend that kept publishing across a server restart got accepted.
#[derive(Default)]
struct Accepted {
    /// The `n` of the messages the first server accepted, in order.
    before: Vec<u64>,
    /// The `n` of the messages the restarted server accepted, in order.
    after: Vec<u64>,
    /// The ids of the critical events the restarted server accepted.
    events_after: Vec<String>,
}

/// Publishes `{"n": n}` to `topic` for n in 1..=`total`, and a critical event `ev-{n}` to
/// `user` with every tenth, through `server`'s address; a request that fails (the server is
/// down) is retried until it is accepted. Everything accepted after the first failure was
/// accepted by the restarted server.
async fn publish_across_restart(
    server: Arc<TestServer>,
    topic: &'static str,
    user: &'static str,
    total: u64,
) -> anyhow::Result<Accepted> {
    let deadline = Instant::now() + 3 * TIMEOUT;
    let mut accepted = Accepted::default();
    let mut restarted = false;
    for n in 1..=total {
        while server.publish(topic, json!({ "n": n })).await.is_err() {
            restarted = true;
            if Instant::now() > deadline {
                bail!("the server did not come back");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if restarted {
            accepted.after.push(n);
        } else {
            accepted.before.push(n);
        }
        if n % 10 == 0 {
            let body = json!({"event": "tool_completed", "id": format!("ev-{n}"), "data": n});
            while server.send_event(user, &body).await.is_err() {
                restarted = true;
                if Instant::now() > deadline {
                    bail!("the server did not come back");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if restarted {
                accepted.events_after.push(format!("ev-{n}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(accepted)
}

#[tokio::test]
async fn a_server_killed_and_restarted_mid_stream_is_a_reported_resync_and_nothing_after_it_is_lost()
-> anyhow::Result<()> {
    const TOTAL: u64 = 200;
    let server = Arc::new(TestServer::start(&[]).await?);
    let addr = server.addr;
    let calls = Arc::new(AtomicU32::new(0));
    let (client, mut events) =
        Client::connect(config(&server), provider("bob", None, Arc::clone(&calls)));
    let mut seen = Seen::default();
    seen.until(&mut events, TIMEOUT, |s| !s.connections.is_empty())
        .await?;
    let old_epoch = client.subscribe("stream:b").await?.epoch;

    // The backend publishes messages and critical events without pause; the server is killed
    // under it mid-stream and restarted on the same address, and the backend carries on.
    let publisher = tokio::spawn(publish_across_restart(
        Arc::clone(&server),
        "stream:b",
        "bob",
        TOTAL,
    ));
    seen.until(&mut events, TIMEOUT, |s| s.messages.len() >= 30)
        .await?;
    server.sigkill().await?;
    let restarted = TestServer::start_at(addr, &[]).await?;

    // The client reports the resync: the topic's epoch changed (the history was in memory).
    seen.until(&mut events, TIMEOUT, |s| !s.resets.is_empty())
        .await?;
    let reset = seen.resets[0].clone();
    assert!(reset.epoch_changed(), "{reset:?}");
    assert_eq!(reset.previous.epoch, old_epoch);
    let new_epoch = reset.current.epoch.clone();
    // The application resyncs as docs/clients.md says: what the new epoch published before
    // the resubscription comes from the history API.
    let (status, _, history) = restarted
        .request(
            "GET",
            "/api/topics/stream:b/history?since=0&limit=1000",
            None,
            true,
        )
        .await?;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["epoch"], json!(new_epoch));
    let resynced: Vec<u64> = history["messages"]
        .as_array()
        .context("history messages")?
        .iter()
        .filter(|entry| entry["offset"].as_u64() <= Some(reset.current.offset))
        .filter_map(|entry| entry["data"]["n"].as_u64())
        .collect();
    assert_eq!(resynced.len() as u64, reset.current.offset);

    let accepted = publisher.await??;
    assert!(!accepted.before.is_empty() && !accepted.after.is_empty());
    let live = accepted.after.len() as u64 - reset.current.offset;
    seen.until(&mut events, 2 * TIMEOUT, |s| {
        s.offsets(&new_epoch).len() as u64 >= live
            && accepted
                .events_after
                .iter()
                .all(|id| s.events.contains_key(id))
    })
    .await?;

    // Before the crash: in order, no repeat, up to where the reset says the client was.
    let before = seen.offsets(&old_epoch);
    assert_eq!(before, (1..=before.len() as u64).collect::<Vec<_>>());
    assert_eq!(reset.previous.offset, before.len() as u64);
    // The first server may have delivered one more than it confirmed: the one whose answer
    // the crash cut off (the backend sent it again to the restarted server).
    assert!(before.len() <= accepted.before.len() + 1);
    assert!(
        seen.messages
            .iter()
            .filter(|(epoch, _, _)| *epoch == old_epoch)
            .all(|(_, offset, data)| data["n"] == json!(offset))
    );
    // After the restart: the live messages follow the resync point with no gap and no repeat,
    // and resync plus live is exactly what the restarted server accepted, in order.
    assert_eq!(
        seen.offsets(&new_epoch),
        ((reset.current.offset + 1)..=accepted.after.len() as u64).collect::<Vec<_>>()
    );
    let mut after: Vec<u64> = resynced;
    after.extend(
        seen.messages
            .iter()
            .filter(|(epoch, _, _)| *epoch == new_epoch)
            .filter_map(|(_, _, data)| data["n"].as_u64()),
    );
    assert_eq!(after, accepted.after);
    // Every critical event was handed over once; each one sent after the restart was acked.
    assert!(
        seen.events.values().all(|&count| count == 1),
        "{:?}",
        seen.events
    );
    let expected = accepted.events_after.len();
    restarted
        .wait_for_stats(|s| s["events"]["pending"] == 0 && s["events"]["acknowledged"] == expected)
        .await?;
    assert_eq!(seen.resets.len(), 1, "{:?}", seen.resets);
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_token_that_expires_while_reconnecting_is_fetched_once_and_used() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let addr = server.addr;
    let exp = now_secs() + 3;
    let short = sign(&json!({"sub": "carol", "exp": exp, "topics": ["*"]}));
    let calls = Arc::new(AtomicU32::new(0));
    let config = config(&server).refresh_before_expiry(Duration::from_secs(1));
    let (client, mut events) =
        Client::connect(config, provider("carol", Some(short), Arc::clone(&calls)));
    let mut seen = Seen::default();
    seen.until(&mut events, TIMEOUT, |s| !s.connections.is_empty())
        .await?;
    client.subscribe("news").await?;

    // The server dies before the refresh is due; the client keeps trying, and the token
    // expires meanwhile.
    server.sigkill().await?;
    drop(server);
    seen.until(&mut events, TIMEOUT, |s| !s.closes.is_empty())
        .await?;
    while now_secs() <= exp + 1 {
        seen.until(&mut events, Duration::from_millis(100), |_| false)
            .await
            .ok();
    }
    let restarted = TestServer::start_at(addr, &[]).await?;
    seen.until(&mut events, TIMEOUT, |s| s.connections.len() >= 2)
        .await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one token at the start, one new one for all the attempts after the first expired"
    );
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    // The expired token was never offered: no attempt was refused for it.
    assert!(!seen.closes.contains(&Some(4001)), "{:?}", seen.closes);
    // The new connection works: once it has subscribed again (the new epoch is a reset), it
    // receives what is published.
    seen.until(&mut events, TIMEOUT, |s| !s.resets.is_empty())
        .await
        .context("no resubscription")?;
    restarted.publish("news", json!("back")).await?;
    seen.until(&mut events, TIMEOUT, |s| {
        s.messages.iter().any(|(_, _, data)| data == "back")
    })
    .await?;
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_token_is_refreshed_in_place_before_it_expires() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let exp = now_secs() + 3;
    let short = sign(&json!({"sub": "dave", "exp": exp, "topics": ["*"]}));
    let calls = Arc::new(AtomicU32::new(0));
    let config = config(&server).refresh_before_expiry(Duration::from_secs(2));
    let (client, mut events) =
        Client::connect(config, provider("dave", Some(short), Arc::clone(&calls)));
    let mut refreshed = None;
    let mut closes = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    // Past the first token's expiry (the server closes 4003 within a quarter second of it).
    while now_secs() <= exp + 1 {
        if Instant::now() > deadline {
            bail!("the first token's expiry never passed");
        }
        let Ok(event) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await
        else {
            continue;
        };
        match event.context("the client's events ended")? {
            ClientEvent::TokenRefreshed { expires_at } => refreshed = Some(expires_at),
            ClientEvent::State(ConnectionState::Disconnected { code, .. }) => closes.push(code),
            _ => {}
        }
    }
    let expires_at = refreshed.context("the token was never refreshed")?;
    assert!(expires_at > (exp + 600) * 1000, "{expires_at}");
    assert!(closes.is_empty(), "{closes:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(server.stats().await?["connections"], 1);
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn wss_connects_with_the_configured_roots_and_refuses_an_unknown_certificate()
-> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let leaf = ca.issue()?;
    let files = TlsFiles::write("client-wss", &leaf)?;
    let server = TestServer::start(&[
        ("HERALD_TLS_CERT_FILE", &files.cert_str()),
        ("HERALD_TLS_KEY_FILE", &files.key_str()),
    ])
    .await?;
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let calls = Arc::new(AtomicU32::new(0));
    let config = ClientConfig::new(&url).tls_roots(ca.roots()?);
    let (client, mut events) = Client::connect(config, provider("erin", None, Arc::clone(&calls)));
    let mut seen = Seen::default();
    seen.until(&mut events, TIMEOUT, |s| !s.connections.is_empty())
        .await?;
    client.subscribe("secure").await?;
    let ack = client.publish("secure", &json!({"over": "tls"})).await?;
    seen.until(&mut events, TIMEOUT, |s| !s.messages.is_empty())
        .await?;
    assert_eq!(seen.messages[0].1, ack.offset);
    assert_eq!(seen.messages[0].2, json!({"over": "tls"}));
    client.close().await;

    // A client that trusts another authority does not connect; it says why and keeps trying.
    let stranger = TestCa::new()?;
    let config = ClientConfig::new(&url)
        .tls_roots(stranger.roots()?)
        .backoff(Backoff::default().initial(Duration::from_millis(50)));
    let (client, mut events) = Client::connect(config, provider("erin", None, calls));
    let deadline = Instant::now() + TIMEOUT;
    let reason = loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .context("no disconnect reported")?
            .context("the events ended")?;
        match event {
            ClientEvent::State(ConnectionState::Disconnected { reason, .. }) => break reason,
            ClientEvent::State(ConnectionState::Connected(_)) => bail!("connected to a stranger"),
            _ => {}
        }
    };
    assert!(reason.contains("certificate"), "{reason}");
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_client_whose_node_dies_resumes_on_another_node_with_no_gap_and_no_reset()
-> anyhow::Result<()> {
    const TOTAL: u64 = 200;
    let redis = RedisServer::start().await?;
    let mut cluster = Cluster::start(&redis, 2, &[]).await?;
    // The client dials a "load balancer" in front of node 0.
    let proxy = DropProxy::start(cluster.nodes[0].addr).await?;
    let config = ClientConfig::new(proxy.ws_url()).backoff(
        Backoff::default()
            .initial(Duration::from_millis(50))
            .max(Duration::from_millis(300)),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let (client, mut events) = Client::connect(config, provider("gina", None, calls));
    let mut seen = Seen::default();
    seen.until(&mut events, TIMEOUT, |s| !s.connections.is_empty())
        .await?;
    client.subscribe("feed").await?;

    // The backend publishes through node 1 throughout.
    let backend = Arc::new(cluster.nodes.remove(1));
    let publisher = tokio::spawn({
        let backend = Arc::clone(&backend);
        async move {
            for n in 1..=TOTAL {
                backend.publish("feed", json!({ "n": n })).await?;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(())
        }
    });
    seen.until(&mut events, TIMEOUT, |s| s.messages.len() >= 30)
        .await?;
    // Node 0 dies; the balancer sends new connections to node 1.
    proxy.retarget(backend.addr);
    cluster.nodes[0].sigkill().await?;
    seen.until(&mut events, TIMEOUT, |s| s.connections.len() >= 2)
        .await?;
    publisher.await??;
    seen.until(&mut events, 2 * TIMEOUT, |s| {
        s.messages.len() as u64 >= TOTAL
    })
    .await?;

    // One epoch (Redis numbers the topic), every offset once and in order, no reset.
    let epoch = seen.messages[0].0.clone();
    assert_eq!(seen.offsets(&epoch), (1..=TOTAL).collect::<Vec<_>>());
    assert!(
        seen.messages
            .iter()
            .all(|(_, offset, data)| data["n"] == json!(offset))
    );
    assert!(seen.resets.is_empty(), "{:?}", seen.resets);
    assert_eq!(seen.closes, vec![None], "one abrupt drop");
    client.close().await;
    Ok(())
}
