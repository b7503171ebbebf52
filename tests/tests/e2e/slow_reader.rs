//! A slow reader: the server keeps reading a client's frames while a large publication is
//! half-written to it, and never lets a control frame (a pong) land inside that publication.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_tests::{TIMEOUT, TestServer, WsClient, token};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// Bytes of the publication that fills the slow reader's socket: more than the server's send
/// buffer (which Linux grows to at most `tcp_wmem`'s maximum, 4 MiB by default) and the
/// client's receive buffer together, so that its frame stays half-written.
const LARGE: usize = 8 * 1024 * 1024;
/// The slow reader's receive buffer (`SO_RCVBUF`, which Linux doubles).
const SLOW_RECEIVE_BUFFER: u32 = 4096;
/// How long the server is given to fill the slow reader's socket before the client acts.
const FILL_TIME: Duration = Duration::from_millis(500);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server that takes and queues publications of [`LARGE`] bytes.
async fn server() -> anyhow::Result<TestServer> {
    TestServer::start(&[
        ("HERALD_MAX_HTTP_BODY_BYTES", "33554432"),
        ("HERALD_MAX_QUEUE_BYTES", "67108864"),
    ])
    .await
}

/// A client `sub` with a small receive buffer, subscribed to `big`, that has read everything
/// so far and reads nothing more until told to.
async fn slow_reader(server: &TestServer, sub: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    // Before connecting, so the window the client offers stays small.
    socket.set_recv_buffer_size(SLOW_RECEIVE_BUFFER)?;
    let stream = socket.connect(server.addr).await?;
    let url = server.ws_url(&format!("?token={}", token(sub, json!({}))));
    let (mut ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await??;
    let connected = next_json(&mut ws).await?;
    anyhow::ensure!(connected["type"] == "connected", "{connected}");
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "messageId": "s", "data": {"topic": "big"}}),
    )
    .await?;
    let ack = next_json(&mut ws).await?;
    anyhow::ensure!(ack["type"] == "ack" && ack["messageId"] == "s", "{ack}");
    Ok(ws)
}

/// Publishes [`LARGE`] bytes to `big` and waits until the server has filled the slow reader's
/// socket with part of it.
async fn publish_large(server: &TestServer) -> anyhow::Result<()> {
    server.publish("big", json!("x".repeat(LARGE))).await?;
    tokio::time::sleep(FILL_TIME).await;
    Ok(())
}

async fn send_json(ws: &mut Ws, value: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(value.to_string())).await?;
    Ok(())
}

/// The next message that is not a heartbeat `ping`, whatever its kind.
async fn next_message(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .context("no message within the timeout")?
            .context("connection ended")??;
        if let Message::Text(text) = &message
            && serde_json::from_str::<Value>(text.as_str())?["type"] == "ping"
        {
            continue;
        }
        return Ok(message);
    }
}

/// The next JSON frame that is not a heartbeat `ping`.
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    match next_message(ws).await? {
        Message::Text(text) => Ok(serde_json::from_str(text.as_str())?),
        other => bail!("expected a text frame, got {other:?}"),
    }
}

/// Checks that `frame` is the large publication, whole.
#[track_caller]
fn assert_large_publication(frame: &Value) {
    let start: String = frame.to_string().chars().take(200).collect();
    assert_eq!(frame["type"], "message", "{start}");
    assert_eq!(frame["topic"], "big");
    assert_eq!(frame["data"].as_str().map(str::len), Some(LARGE));
}

#[tokio::test]
async fn a_slow_readers_publish_is_served_while_a_large_frame_is_half_written_to_it()
-> anyhow::Result<()> {
    let server = server().await?;
    let mut slow = slow_reader(&server, "alice").await?;
    let (mut watcher, _) = WsClient::connect_as(&server, "bob").await?;
    watcher.subscribe("side").await?;
    publish_large(&server).await?;

    // The slow reader publishes without reading: another connection gets it at once, not
    // once the slow reader has read the large frame (it never does, within the timeout).
    send_json(
        &mut slow,
        &json!({"type": "publish", "messageId": "p", "data": {"topic": "side", "data": "meanwhile"}}),
    )
    .await?;
    let delivered = watcher
        .recv_data()
        .await
        .context("the slow reader's publish was not served while its frame was half-written")?;
    assert_eq!(delivered["type"], "message", "{delivered}");
    assert_eq!(delivered["topic"], "side");
    assert_eq!(delivered["data"], "meanwhile");

    // The slow reader then gets the large frame whole, and its ack after it.
    assert_large_publication(&next_json(&mut slow).await?);
    let ack = next_json(&mut slow).await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["messageId"], "p");
    Ok(())
}

#[tokio::test]
async fn a_ping_read_while_a_large_frame_is_half_written_is_answered_after_the_frame()
-> anyhow::Result<()> {
    let server = server().await?;
    let mut slow = slow_reader(&server, "alice").await?;
    publish_large(&server).await?;

    slow.send(Message::Ping("are you there".into())).await?;
    send_json(&mut slow, &json!({"type": "ping", "messageId": "q"})).await?;

    // Frame by frame: a pong inside the large frame would break the client's parsing.
    assert_large_publication(&next_json(&mut slow).await?);
    match next_message(&mut slow).await? {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    let pong = next_json(&mut slow).await?;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["messageId"], "q");
    Ok(())
}

/// A slow reader whose queue is full of `low` publications behind a half-written frame sends
/// two `ping`s: each `pong` (never shed) makes room by shedding a `low` frame, and
/// `/api/stats` and `/metrics` both count exactly those two.
#[tokio::test]
async fn frames_shed_for_replies_are_counted_once_in_stats_and_metrics() -> anyhow::Result<()> {
    const QUEUE: usize = 8;
    let server = TestServer::start(&[
        ("HERALD_MAX_HTTP_BODY_BYTES", "33554432"),
        ("HERALD_MAX_QUEUE_BYTES", "67108864"),
        ("HERALD_MAX_QUEUE_SIZE", "8"),
        // No heartbeat `ping` may take a place in the queue during the test.
        ("HERALD_HEARTBEAT_INTERVAL_MS", "3600000"),
        ("HERALD_STALE_TIMEOUT_MS", "7200000"),
    ])
    .await?;
    let mut slow = slow_reader(&server, "alice").await?;
    publish_large(&server).await?;
    // The large frame is in the writer's hands; these fill the queue behind it.
    for n in 0..QUEUE {
        let body = json!({"topic": "big", "data": n, "priority": "low"});
        server.post("/api/publish", &body).await?;
    }
    assert_eq!(server.stats().await?["messages"]["shed"], 0);

    for id in ["p1", "p2"] {
        send_json(&mut slow, &json!({"type": "ping", "messageId": id})).await?;
    }
    let stats = server
        .wait_for_stats(|stats| stats["messages"]["shed"] == 2)
        .await
        .context("two pongs should shed two low frames")?;
    let (_, _, metrics) = server.request_text("GET", "/metrics", None).await?;
    let exported: f64 = ["low", "normal", "high", "critical"]
        .iter()
        .filter_map(|p| {
            herald_tests::metric(
                &metrics,
                &format!("herald_messages_shed_total{{priority=\"{p}\"}}"),
            )
        })
        .sum();
    assert_eq!(stats["messages"]["shed"], 2, "{stats}");
    assert_eq!(exported, 2.0, "{metrics}");

    // The client still gets the large frame, the six `low` frames left, then both pongs.
    assert_large_publication(&next_json(&mut slow).await?);
    let mut frames = Vec::new();
    while frames.len() < QUEUE {
        frames.extend(herald_tests::frames_in(
            &next_json(&mut slow).await?.to_string(),
        ));
    }
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "message").count(),
        QUEUE - 2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "pong").count(),
        2,
        "{kinds:?}"
    );
    Ok(())
}
