//! The ways a handshake reaches the server: as a connection's first request (answered without
//! hyper, the 101 and `connected` in one write), after other requests on a keep-alive
//! connection (a proxy's pooled upstream connection, answered by hyper), with a head too large
//! for the direct path, and with frames pipelined right behind the head.

use anyhow::Context as _;
use herald_tests::{
    TIMEOUT, TestServer, WsClient, metric, raw_exchange, read_head, read_until_closed,
    read_until_contains, token, upgrade_head,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::protocol::{
        Role,
        frame::{
            Frame,
            coding::{Data, OpCode},
        },
    },
};

/// Subscribes `client` to `topic`, publishes to it and expects the publication.
async fn assert_delivers(
    server: &TestServer,
    client: &mut WsClient,
    topic: &str,
) -> anyhow::Result<()> {
    client.subscribe(topic).await?;
    server.publish(topic, json!({"n": 1})).await?;
    let message = client.recv_data().await?;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["data"], json!({"n": 1}), "{message}");
    Ok(())
}

/// A request head for a route that does not exist: the server answers it with a 404 and keeps
/// the connection open.
fn plain_request(server: &TestServer) -> String {
    format!("GET /nowhere HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr)
}

/// Sends a plain request and a refused upgrade (a bad token) on one connection, and returns
/// what the server wrote up to the refusal's 401.
async fn refusal_after_a_plain_request(server: &TestServer) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(server.addr).await?;
    let refused = upgrade_head(server, "?token=not-a-jwt", &[]);
    stream
        .write_all(format!("{}{refused}", plain_request(server)).as_bytes())
        .await?;
    read_until_contains(&mut stream, "HTTP/1.1 401 ").await
}

#[tokio::test]
async fn upgrade_after_other_requests_on_a_keep_alive_connection() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut stream = TcpStream::connect(server.addr).await?;
    for _ in 0..2 {
        stream.write_all(plain_request(&server).as_bytes()).await?;
        let head = read_head(&mut stream).await?;
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .context("no content-length")?
            .parse()?;
        let mut body = vec![0_u8; length];
        stream.read_exact(&mut body).await?;
    }
    let url = server.ws_url(&format!("?token={}", token("alice", json!({}))));
    let mut client = WsClient::connect_over(stream, &url).await?;
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["data"]["userId"], "alice");
    assert_delivers(&server, &mut client, "room").await
}

#[tokio::test]
async fn refusal_after_other_requests_is_an_http_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let received = refusal_after_a_plain_request(&server).await?;
    assert!(received.starts_with("HTTP/1.1 404 "), "{received}");
    assert!(!received.contains(" 101 "), "{received}");
    Ok(())
}

#[tokio::test]
async fn handshake_with_a_head_larger_than_the_direct_path_takes() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    // Browsers send the page's cookies with the handshake; 20 KB of them is unusual, not wrong.
    let cookie = format!("session={}", "c".repeat(20_000));
    let url = server.ws_url(&format!("?token={}", token("alice", json!({}))));
    let mut client = WsClient::connect_with(&url, &[("cookie", &cookie)]).await?;
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_delivers(&server, &mut client, "room").await
}

#[tokio::test]
async fn frames_pipelined_behind_the_head_are_read() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let mut bytes = upgrade_head(&server, &query, &[]).into_bytes();
    let subscribe = json!({"type": "subscribe", "messageId": "s1", "data": {"topic": "room"}});
    let mut frame = Frame::message(subscribe.to_string(), OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some([7, 1, 9, 3]);
    frame.format(&mut bytes)?;
    // Head and frame in one write: the server must not lose the bytes after the head.
    let mut stream = TcpStream::connect(server.addr).await?;
    stream.write_all(&bytes).await?;
    let head = read_head(&mut stream).await?;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let ws =
        WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(stream), Role::Client, None).await;
    let mut client = WsClient::from_stream(ws);
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected", "{connected}");
    let ack = client.recv().await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["messageId"], "s1", "{ack}");
    server.publish("room", json!({"n": 2})).await?;
    let message = client.recv_data().await?;
    assert_eq!(message["data"], json!({"n": 2}), "{message}");
    Ok(())
}

#[tokio::test]
async fn refusal_as_the_first_request_closes_the_connection() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let head = upgrade_head(&server, "?token=not-a-jwt", &[]);
    let (answer, mut stream) = raw_exchange(&server, &head).await?;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.error_code(), "unauthorized", "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    let rest = read_until_closed(&mut stream, TIMEOUT).await?;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    Ok(())
}

#[tokio::test]
async fn refusals_and_handshake_timeouts_are_counted() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_HANDSHAKE_TIMEOUT_MS", "200")]).await?;
    // One refusal on the direct path, one after another request (hyper's path).
    let head = upgrade_head(&server, "?token=not-a-jwt", &[]);
    raw_exchange(&server, &head).await?;
    refusal_after_a_plain_request(&server).await?;
    // A connection that never sends its request head.
    let mut silent = TcpStream::connect(server.addr).await?;
    read_until_closed(&mut silent, TIMEOUT).await?;

    let (status, _, text) = server.request_text("GET", "/metrics", None).await?;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "herald_handshakes_refused_total{status=\"401\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "herald_handshake_timeouts_total"),
        Some(1.0),
        "{text}"
    );
    Ok(())
}
