//! The HTTP body limit over raw TCP: a client that sends a whole body over
//! `HERALD_MAX_HTTP_BODY_BYTES` always reads its 413 JSON answer (never a connection reset),
//! and nothing of such a body is published.

use std::{net::SocketAddr, time::Duration};

use herald_tests::{API_KEY, TIMEOUT, TestServer, WsClient, metric, raw_exchange};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
};

/// The default `HERALD_MAX_HTTP_BODY_BYTES`: the tests run with the default limit.
const LIMIT: usize = 1024 * 1024;
/// The client's socket send buffer (the kernel doubles it): smaller than the body, as the
/// bytes in flight on a real network are, so the client is still sending when the server
/// answers. With loopback's default buffers the whole body would be queued at once.
const SEND_BUFFER_BYTES: u32 = 256 * 1024;
/// How long a test waits to be sure that nothing arrives.
const QUIET: Duration = Duration::from_millis(300);

/// How the over-limit body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `Content-Length` announces the size, so the server can refuse before reading.
    Length,
    /// `Transfer-Encoding: chunked`: the server only learns the size while reading.
    Chunked,
}

/// A valid publish to `topic` of exactly `len` bytes, so only the limit keeps it out.
fn publish_body(topic: &str, len: usize) -> Vec<u8> {
    let prefix = format!("{{\"topic\":\"{topic}\",\"data\":\"");
    let suffix = "\"}";
    let filler = "x".repeat(len - prefix.len() - suffix.len());
    format!("{prefix}{filler}{suffix}").into_bytes()
}

/// The request: head and framed body, as one buffer.
fn request(addr: SocketAddr, body: &[u8], framing: Framing) -> Vec<u8> {
    let mut head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\n"
    );
    let mut bytes = Vec::with_capacity(body.len() + 1024);
    match framing {
        Framing::Length => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            bytes.extend_from_slice(head.as_bytes());
            bytes.extend_from_slice(body);
        }
        Framing::Chunked => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            bytes.extend_from_slice(head.as_bytes());
            for chunk in body.chunks(64 * 1024) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
    }
    bytes
}

/// Sends the whole request while reading the answer until the server closes, as a client that
/// writes its body and reads whatever comes back does. Fails unless every byte was sent and a
/// complete 413 with the contract's JSON error came back.
async fn expect_413(addr: SocketAddr, request: &[u8]) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_send_buffer_size(SEND_BUFFER_BYTES)?;
    let stream = socket.connect(addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let send = async {
        writer.write_all(request).await?;
        writer.flush().await
    };
    let receive = async {
        let mut response = Vec::new();
        reader.read_to_end(&mut response).await.map(|_| response)
    };
    let (sent, received) = tokio::time::timeout(TIMEOUT, async { tokio::join!(send, receive) })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))?;
    let response = received.map_err(|e| anyhow::anyhow!("reading the answer failed: {e}"))?;
    sent.map_err(|e| anyhow::anyhow!("sending the body failed: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no complete answer: {text:?}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 413 "), "{head}");
    anyhow::ensure!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close")),
        "no `connection: close`: {head}"
    );
    let body: Value = serde_json::from_str(body)?;
    anyhow::ensure!(body["error"]["code"] == "payload_too_large", "{body}");
    anyhow::ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&LIMIT.to_string())),
        "{body}"
    );
    Ok(())
}

/// Checks that the topic took no publication and its subscriber received nothing.
async fn nothing_was_published(
    server: &TestServer,
    subscriber: &mut WsClient,
) -> anyhow::Result<()> {
    assert!(subscriber.try_recv(QUIET).await.is_none());
    let (status, _, topic) = server.request("GET", "/api/topics/t", None, true).await?;
    assert_eq!(status, 200, "{topic}");
    assert_eq!(topic["lastOffset"], 0, "{topic}");
    assert_eq!(server.stats().await?["messages"]["published"], 0);
    // The server still publishes: the subscriber's first message is this one, at offset 1.
    server.publish("t", json!("after")).await?;
    let message = subscriber.recv_data().await?;
    assert_eq!(
        (message["offset"].clone(), message["data"].clone()),
        (json!(1), json!("after"))
    );
    Ok(())
}

/// Waits until `/metrics` counts `expected` lingering closes that read the body to its end.
async fn drained_closes_reach(server: &TestServer, expected: f64) -> anyhow::Result<()> {
    let series = "herald_http_lingering_closes_total{outcome=\"drained\"}";
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, _, text) = server.request_text("GET", "/metrics", None).await?;
        let counted = metric(&text, series);
        if counted == Some(expected) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{series} is {counted:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `request` (an over-limit publish to topic `t`, which one client subscribes to)
/// `sequential` times one after another, then `concurrent` times at once: every try must get
/// its 413, every refused body must be drained, and nothing may be published.
async fn every_try_gets_its_413(
    framing: Framing,
    body_bytes: usize,
    sequential: usize,
    concurrent: usize,
) -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut subscriber, _) = WsClient::connect_as(&server, "alice").await?;
    subscriber.subscribe("t").await?;
    let request = request(server.addr, &publish_body("t", body_bytes), framing);
    let mut failures = Vec::new();
    for attempt in 0..sequential {
        if let Err(error) = expect_413(server.addr, &request).await {
            failures.push(format!("attempt {attempt}: {error:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sequential} failed: {failures:#?}",
        failures.len()
    );

    // Several clients at once.
    let at_once = (0..concurrent).map(|_| expect_413(server.addr, &request));
    let failures: Vec<String> = futures_util::future::join_all(at_once)
        .await
        .into_iter()
        .filter_map(|result| result.err().map(|e| format!("{e:#}")))
        .collect();
    assert!(failures.is_empty(), "concurrent: {failures:#?}");
    // Counts are far below 2^53: exact as f64.
    drained_closes_reach(&server, (sequential + concurrent) as f64).await?;
    nothing_was_published(&server, &mut subscriber).await
}

#[tokio::test]
async fn a_body_one_byte_over_the_limit_always_gets_its_413() -> anyhow::Result<()> {
    every_try_gets_its_413(Framing::Length, LIMIT + 1, 50, 8).await
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_always_gets_its_413() -> anyhow::Result<()> {
    // Well over the limit, so the server refuses it in the middle of the body.
    every_try_gets_its_413(Framing::Chunked, 2 * LIMIT, 20, 4).await
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_gets_the_413_instead() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        server.addr,
        LIMIT + 1
    );
    // The first answer is the refusal, not `100 Continue`: the client never sends the body.
    let (answer, _) = raw_exchange(&server, &head).await?;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.error_code(), "payload_too_large");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    Ok(())
}
