//! Abuse limits: new connections per second and open connections per client address (with
//! `X-Forwarded-For` trusted only from configured proxies), the request-head time limit against
//! slowloris clients, and the publish rate per API key.
//!
//! Several clients are told apart by their loopback source address (127.0.0.2, 127.0.0.3 ...);
//! the test's own HTTP calls come from 127.0.0.1.

use std::{net::Ipv4Addr, time::Duration};

use bytes::Bytes;
use herald_tests::{
    API_KEY, TIMEOUT, TestServer, WsClient, metric, read_until_contains, token, upgrade_head,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::Instant,
};

const FLOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A WebSocket as `sub` from `source`, with `headers`; `Err` when the server refuses or drops it.
async fn connect_from(
    server: &TestServer,
    source: Ipv4Addr,
    sub: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(WsClient, Value)> {
    let stream = server.tcp_from(source).await?;
    let url = server.ws_url(&format!("?token={}", token(sub, json!({}))));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes())?,
            value.parse()?,
        );
    }
    let (ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await??;
    let mut client = WsClient::from_stream(ws);
    let connected = client.recv().await?;
    anyhow::ensure!(connected["type"] == "connected", "{connected}");
    Ok((client, connected))
}

/// The value of `series` on `/metrics`, zero when absent.
async fn metric_value(server: &TestServer, series: &str) -> anyhow::Result<f64> {
    let (_, _, text) = server.request_text("GET", "/metrics", None).await?;
    Ok(metric(&text, series).unwrap_or(0.0))
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_held_while_another_connects() -> anyhow::Result<()>
{
    let server = TestServer::start(&[("HERALD_CONNECTION_RATE_PER_IP", "3")]).await?;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for n in 0..12 {
        match connect_from(&server, FLOOD, &format!("flood{n}"), &[]).await {
            Ok((client, _)) => admitted.push(client),
            Err(_) => refused += 1,
        }
    }
    // A burst of three, and at most a few more refilled while the flood ran.
    assert!(admitted.len() >= 3, "{} admitted", admitted.len());
    assert!(refused >= 5, "only {refused} refused");
    // Another address is not held by the flood.
    for n in 0..3 {
        connect_from(&server, OTHER, &format!("other{n}"), &[]).await?;
    }
    let counted = metric_value(&server, r#"herald_abuse_refusals_total{reason="ip_rate"}"#).await?;
    assert!(counted >= f64::from(refused), "{counted} < {refused}");
    Ok(())
}

#[tokio::test]
async fn open_connections_per_address_are_capped_until_one_closes() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_CONNECTIONS_PER_IP", "2")]).await?;
    let (first, _) = connect_from(&server, FLOOD, "a", &[]).await?;
    let _second = connect_from(&server, FLOOD, "b", &[]).await?;
    assert!(
        connect_from(&server, FLOOD, "c", &[]).await.is_err(),
        "a third is refused"
    );
    connect_from(&server, OTHER, "d", &[]).await?;
    first.close().await?;
    // The place is freed once the server has seen the close.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if connect_from(&server, FLOOD, "e", &[]).await.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counted = metric_value(
        &server,
        r#"herald_abuse_refusals_total{reason="ip_connections"}"#,
    )
    .await?;
    assert!(counted >= 1.0, "{counted}");
    Ok(())
}

#[tokio::test]
async fn a_websocket_upgraded_on_a_keep_alive_connection_counts_against_its_address()
-> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_CONNECTIONS_PER_IP", "1")]).await?;
    // An HTTP request first, so hyper serves the connection and the upgrade that follows it.
    let mut stream = server.tcp_from(FLOOD).await?;
    let upgrade = upgrade_head(&server, &format!("?token={}", token("a", json!({}))), &[]);
    let head = format!(
        "GET /health/live HTTP/1.1\r\nHost: {}\r\n\r\n{upgrade}",
        server.addr
    );
    stream.write_all(head.as_bytes()).await?;
    let answered = read_until_contains(&mut stream, "\"connected\"").await?;
    assert!(answered.contains("101 Switching Protocols"), "{answered}");
    // The upgraded WebSocket holds the address's one place.
    assert!(
        connect_from(&server, FLOOD, "b", &[]).await.is_err(),
        "a second connection from the address is refused"
    );
    drop(stream);
    let deadline = Instant::now() + TIMEOUT;
    while connect_from(&server, FLOOD, "c", &[]).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_from_a_trusted_proxy() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_CONNECTIONS_PER_IP", "1"),
        ("HERALD_TRUSTED_PROXIES", "127.0.0.2"),
    ])
    .await?;
    let client = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Through the proxy, each forwarded client has its own allowance.
    let _a = connect_from(&server, FLOOD, "a", &client("203.0.113.5")).await?;
    let _b = connect_from(&server, FLOOD, "b", &client("203.0.113.6")).await?;
    // The same forwarded client again is refused with an answer the proxy can relay.
    let mut stream = server.tcp_from(FLOOD).await?;
    let head = upgrade_head(
        &server,
        &format!("?token={}", token("c", json!({}))),
        &[("X-Forwarded-For", "198.51.100.1, 203.0.113.5")],
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(
        answer.contains("retry-after: 1") && answer.contains("rate_limited"),
        "{answer}"
    );
    // A peer that is not a trusted proxy is counted by its own address, whatever it forwards.
    let _d = connect_from(&server, OTHER, "d", &client("203.0.113.7")).await?;
    assert!(
        connect_from(&server, OTHER, "e", &client("203.0.113.8"))
            .await
            .is_err(),
        "the forwarded address of an untrusted peer is ignored"
    );
    Ok(())
}

/// Sends `head` one byte every 100 ms from a fresh connection until the server closes it;
/// returns how long the server took.
async fn trickle(server: &TestServer, head: &str) -> anyhow::Result<Duration> {
    let stream = server.tcp_from(Ipv4Addr::LOCALHOST).await?;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let bytes = head.as_bytes().to_vec();
    let writing = tokio::spawn(async move {
        for byte in bytes.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0; 256];
    let closed = tokio::time::timeout(TIMEOUT, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writing.abort();
    closed.map_err(|_| anyhow::anyhow!("the trickling client was never dropped"))?;
    Ok(started.elapsed())
}

#[tokio::test]
async fn a_slowloris_client_is_dropped_at_the_handshake_time_limit() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_HANDSHAKE_TIMEOUT_MS", "1000")]).await?;
    // A WebSocket request line that never ends, and an API request whose headers never end.
    let upgrade = upgrade_head(&server, "?token=x", &[]);
    let elapsed = trickle(&server, &upgrade).await?;
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2_500),
        "dropped after {elapsed:?}"
    );
    let api = "POST /api/publish HTTP/1.1\r\nHost: h\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let elapsed = trickle(&server, api).await?;
    // The direct path's deadline, then hyper's header timeout: at most twice the limit.
    assert!(
        elapsed < Duration::from_millis(3_000),
        "dropped after {elapsed:?}"
    );
    let counted = metric_value(&server, "herald_handshake_timeouts_total").await?;
    assert!(counted >= 1.0, "{counted}");
    // Meanwhile an ordinary client is served.
    WsClient::connect_as(&server, "alice").await?;
    Ok(())
}

#[tokio::test]
async fn the_publish_rate_is_per_api_key_with_429_and_retry_after() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_API_PUBLISH_RATE_PER_KEY", "2"),
        ("HERALD_API_KEYS", &format!("{API_KEY},second-key")),
    ])
    .await?;
    let body = || Bytes::from(json!({"topic": "t", "data": 1}).to_string());
    for _ in 0..2 {
        let (status, _, answer) = server
            .request_raw("POST", "/api/publish", body(), Some(API_KEY))
            .await?;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, headers, answer) = server
        .request_raw("POST", "/api/publish", body(), Some(API_KEY))
        .await?;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // Batches count as requests too; another key has its own rate; reads are not limited.
    let (status, _, _) = server
        .request_raw(
            "POST",
            "/api/publish/batch",
            Bytes::from(r#"{"messages":[]}"#),
            Some(API_KEY),
        )
        .await?;
    assert_eq!(status, 429);
    let (status, _, answer) = server
        .request_raw("POST", "/api/publish", body(), Some("second-key"))
        .await?;
    assert_eq!(status, 200, "{answer}");
    let (status, _, _) = server.request("GET", "/api/stats", None, true).await?;
    assert_eq!(status, 200);
    let counted = metric_value(
        &server,
        r#"herald_abuse_refusals_total{reason="api_key_publish_rate"}"#,
    )
    .await?;
    assert!(counted >= 2.0, "{counted}");
    Ok(())
}
