//! The WebSocket handshake as a client sees it: subprotocol, where the token may travel, tokens
//! refused with HTTP 401 before any upgrade, Origin checks, the server and per-user connection
//! limits, a stalled request head, and a malformed upgrade request.

use std::time::Duration;

use anyhow::{Context as _, bail};
use herald_tests::{
    Ended, SAMPLE_KEY, TIMEOUT, TestServer, WsClient, now_secs, raw_exchange, read_until_closed,
    refused_tokens, sign, token, try_upgrade, upgrade_head,
};
use serde_json::json;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[tokio::test]
async fn subprotocol_is_echoed_only_when_offered() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let url = server.ws_url(&format!("?token={}", token("alice", json!({}))));

    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "other.v9, herald.v1".parse()?);
    let (mut ws, response) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request)).await??;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"herald.v1"[..])
    );
    futures_util::SinkExt::close(&mut ws).await?;

    let (_ws, response) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await??;
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    Ok(())
}

#[tokio::test]
async fn token_in_the_authorization_header_authenticates() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let bearer = format!("Bearer {}", token("alice", json!({"tier": "early"})));
    let mut client =
        WsClient::connect_with(&server.ws_url(""), &[("authorization", &bearer)]).await?;
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["data"]["userId"], "alice");
    assert_eq!(connected["data"]["tier"], "early");
    assert!(connected["data"]["connectionId"].is_string());
    Ok(())
}

#[tokio::test]
async fn token_in_the_query_authenticates() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, connected) =
        WsClient::connect_token(&server, &token("bob", json!({})), "").await?;
    assert_eq!(connected["data"]["userId"], "bob");
    assert_eq!(connected["data"]["tier"], "free");
    let ack = client.subscribe("news").await?;
    assert_eq!(ack["topic"], "news");
    Ok(())
}

#[tokio::test]
async fn refused_tokens_in_the_query_get_401_without_upgrade() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    for (name, bad) in refused_tokens() {
        let answer = try_upgrade(&server, &format!("?token={bad}"), &[]).await?;
        assert_eq!(answer.status, 401, "{name}: {answer:?}");
        assert_eq!(answer.error_code(), "unauthorized", "{name}: {answer:?}");
        assert!(answer.header("sec-websocket-accept").is_none(), "{name}");
    }
    assert_eq!(server.stats().await?["connections"], 0);
    Ok(())
}

#[tokio::test]
async fn refused_tokens_in_the_header_get_401_without_upgrade() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    for (name, bad) in refused_tokens() {
        let bearer = format!("Bearer {bad}");
        let answer = try_upgrade(&server, "", &[("Authorization", &bearer)]).await?;
        assert_eq!(answer.status, 401, "{name}: {answer:?}");
        assert_eq!(answer.error_code(), "unauthorized", "{name}: {answer:?}");
        assert!(answer.header("sec-websocket-accept").is_none(), "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn refusal_reaches_a_websocket_client_as_an_http_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let url = server.ws_url("?token=not-a-jwt");
    let error = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await?
        .err()
        .context("a bad token was upgraded")?;
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status().as_u16(), 401);
        }
        other => bail!("expected an HTTP error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn same_origin_and_no_origin_are_allowed() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let same = format!("http://{}", server.addr);
    let answer = try_upgrade(&server, &query, &[("Origin", &same)]).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    let answer = try_upgrade(&server, &query, &[]).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn foreign_origin_is_forbidden() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let answer = try_upgrade(&server, &query, &[("Origin", "https://evil.example")]).await?;
    answer.assert_refused(403, "forbidden");
    // Same host on another port is another origin.
    let other_port = format!("http://127.0.0.1:{}", server.addr.port().wrapping_add(1));
    let answer = try_upgrade(&server, &query, &[("Origin", &other_port)]).await?;
    answer.assert_refused(403, "forbidden");
    Ok(())
}

#[tokio::test]
async fn configured_origins_are_allowed() -> anyhow::Result<()> {
    let server = TestServer::start(&[(
        "HERALD_ALLOWED_ORIGINS",
        "https://app.example, https://admin.example:8443",
    )])
    .await?;
    let query = format!("?token={}", token("alice", json!({})));
    for origin in ["https://app.example", "https://admin.example:8443"] {
        let answer = try_upgrade(&server, &query, &[("Origin", origin)]).await?;
        assert_eq!(answer.status, 101, "{origin}: {answer:?}");
    }
    let answer = try_upgrade(&server, &query, &[("Origin", "https://evil.example")]).await?;
    answer.assert_refused(403, "forbidden");
    Ok(())
}

#[tokio::test]
async fn wildcard_origin_allows_any() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_ALLOWED_ORIGINS", "*")]).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let answer = try_upgrade(&server, &query, &[("Origin", "https://anything.example")]).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn full_server_answers_503_until_a_connection_closes() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_CONNECTIONS", "2")]).await?;
    let (first, _) = WsClient::connect_as(&server, "alice").await?;
    let (_second, _) = WsClient::connect_as(&server, "bob").await?;

    let query = format!("?token={}", token("carol", json!({})));
    let answer = try_upgrade(&server, &query, &[]).await?;
    answer.assert_refused(503, "unavailable");
    let retry_after: u64 = answer
        .header("retry-after")
        .context("no Retry-After")?
        .parse()?;
    assert!(retry_after > 0);

    first.close().await?;
    server.wait_for_stats(|s| s["connections"] == 1).await?;
    let (mut third, connected) = WsClient::connect_as(&server, "carol").await?;
    assert_eq!(connected["data"]["userId"], "carol");
    third.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn unauthenticated_connections_count_toward_the_server_limit() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_CONNECTIONS", "1")]).await?;
    let _anonymous = WsClient::connect_anonymous(&server, "").await?;
    let answer = try_upgrade(&server, "", &[]).await?;
    answer.assert_refused(503, "unavailable");
    assert!(answer.header("retry-after").is_some());
    Ok(())
}

#[tokio::test]
async fn over_the_user_limit_the_oldest_connection_is_evicted() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_CONNECTIONS_PER_USER", "2")]).await?;
    let (mut oldest, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut middle, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut newest, _) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(oldest.ended().await?, Ended::Closed(4029));

    // The survivors both work.
    newest.subscribe("room").await?;
    middle.subscribe("room").await?;
    server.wait_for_stats(|s| s["connections"] == 2).await?;
    Ok(())
}

#[tokio::test]
async fn free_tier_quota_of_three_applies_by_default() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::connect_as(&server, "alice").await?.0);
    }
    // An early-tier user may hold more than three.
    for _ in 0..4 {
        let early = token("bob", json!({"tier": "early"}));
        clients.push(WsClient::connect_token(&server, &early, "").await?.0);
    }
    let (mut fourth, _) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(clients[0].ended().await?, Ended::Closed(4029));
    fourth.subscribe("room").await?;
    for bob in &mut clients[3..] {
        assert!(
            bob.try_recv(Duration::from_millis(50)).await.is_none(),
            "bob's connections are untouched"
        );
    }
    server
        .wait_for_stats(|s| s["connections"] == 7 && s["users"] == 2)
        .await?;
    Ok(())
}

#[tokio::test]
async fn reject_policy_answers_429_at_the_handshake() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_CONNECTIONS_PER_USER", "2"),
        ("HERALD_USER_LIMIT_POLICY", "reject"),
    ])
    .await?;
    let (mut first, _) = WsClient::connect_as(&server, "alice").await?;
    let (_second, _) = WsClient::connect_as(&server, "alice").await?;

    let query = format!("?token={}", token("alice", json!({})));
    let answer = try_upgrade(&server, &query, &[]).await?;
    answer.assert_refused(429, "limit_exceeded");

    // Existing connections are untouched, and another user is not limited.
    first.subscribe("room").await?;
    let (_bob, _) = WsClient::connect_as(&server, "bob").await?;
    Ok(())
}

#[tokio::test]
async fn stalled_request_head_is_dropped_after_the_handshake_timeout() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_HANDSHAKE_TIMEOUT_MS", "300")]).await?;
    // The server's timer cannot start before the connection exists.
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(server.addr).await?;
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .await?;
    let received = read_until_closed(&mut stream, Duration::from_secs(3)).await?;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "dropped too early: {elapsed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&received).contains(" 101 "),
        "a stalled request was upgraded"
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_malformed_websocket_key_is_a_400() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let base = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n",
        server.addr
    );
    for key in [
        None,
        Some("short"),
        Some("dGhlIHNhbXBsZSBub25jZQ"),
        Some("dGhlIHNhbXBsZSBub25j!Q=="),
    ] {
        let mut head = base.clone();
        if let Some(key) = key {
            head.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
        }
        head.push_str("\r\n");
        let (answer, _) = raw_exchange(&server, &head).await?;
        answer.assert_refused(400, "bad_request");
    }
    Ok(())
}

#[tokio::test]
async fn a_plain_get_of_the_websocket_path_is_a_400() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (status, _, body) = server.request("GET", "/ws", None, false).await?;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    Ok(())
}

#[tokio::test]
async fn malformed_thread_option_is_a_400() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let query = format!(
        "?token={}&thread={}",
        token("alice", json!({})),
        "x".repeat(1000)
    );
    let answer = try_upgrade(&server, &query, &[]).await?;
    answer.assert_refused(400, "bad_request");
    Ok(())
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    for scheme in ["bearer", "BEARER"] {
        let header = format!("{scheme} {}", token("alice", json!({})));
        let mut client =
            WsClient::connect_with(&server.ws_url(""), &[("authorization", &header)]).await?;
        let connected = client.recv().await?;
        assert_eq!(connected["type"], "connected", "{scheme}");
        assert_eq!(connected["data"]["userId"], "alice", "{scheme}");
    }
    Ok(())
}

#[tokio::test]
async fn header_token_wins_over_the_query() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let answer = try_upgrade(&server, &query, &[("Authorization", "Bearer not-a-jwt")]).await?;
    answer.assert_refused(401, "unauthorized");
    let header = format!("Bearer {}", token("bob", json!({})));
    let mut client = WsClient::connect_with(
        &server.ws_url("?token=not-a-jwt"),
        &[("authorization", &header)],
    )
    .await?;
    assert_eq!(client.recv().await?["data"]["userId"], "bob");
    Ok(())
}

#[tokio::test]
async fn configured_issuer_and_audience_are_required() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_JWT_ISSUER", "https://auth.example"),
        ("HERALD_JWT_AUDIENCE", "herald"),
    ])
    .await?;
    let good = json!({"iss": "https://auth.example", "aud": "herald"});
    let cases = [
        (json!({}), 401),
        (json!({"iss": "https://auth.example"}), 401),
        (json!({"aud": "herald"}), 401),
        (json!({"iss": "https://evil.example", "aud": "herald"}), 401),
        (json!({"iss": "https://auth.example", "aud": "other"}), 401),
        (good.clone(), 101),
        (
            json!({"iss": "https://auth.example", "aud": ["other", "herald"]}),
            101,
        ),
    ];
    for (claims, status) in cases {
        let query = format!("?token={}", token("alice", claims.clone()));
        let answer = try_upgrade(&server, &query, &[]).await?;
        assert_eq!(answer.status, status, "{claims}: {answer:?}");
        if status == 401 {
            assert_eq!(answer.error_code(), "unauthorized");
        }
    }
    Ok(())
}

#[tokio::test]
async fn leeway_accepts_a_recently_expired_token() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_JWT_LEEWAY_MS", "30000")]).await?;
    let now = now_secs();
    let recently = sign(&json!({"sub": "alice", "exp": now - 5}));
    let answer = try_upgrade(&server, &format!("?token={recently}"), &[]).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    let long_ago = sign(&json!({"sub": "alice", "exp": now - 60}));
    let answer = try_upgrade(&server, &format!("?token={long_ago}"), &[]).await?;
    answer.assert_refused(401, "unauthorized");
    let soon = sign(&json!({"sub": "alice", "exp": now + 3600, "nbf": now + 5}));
    let answer = try_upgrade(&server, &format!("?token={soon}"), &[]).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn per_user_limit_follows_the_runtime_config() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut first, _) = WsClient::connect_as(&server, "alice").await?;
    server
        .patch_runtime(&json!({"max_connections_per_user": 1}))
        .await?;
    let (mut second, _) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(first.ended().await?, Ended::Closed(4029));
    second.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn auth_timeout_frees_the_slot_of_a_silent_connection() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_CONNECTIONS", "1"),
        ("HERALD_AUTH_TIMEOUT_MS", "300"),
    ])
    .await?;
    let mut silent = WsClient::connect_anonymous(&server, "").await?;
    assert_eq!(silent.ended().await?, Ended::Closed(4001));
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn silent_tcp_connection_is_dropped_after_the_handshake_timeout() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_HANDSHAKE_TIMEOUT_MS", "300")]).await?;
    let mut stream = TcpStream::connect(server.addr).await?;
    let received = read_until_closed(&mut stream, Duration::from_secs(3)).await?;
    assert!(
        !String::from_utf8_lossy(&received).contains(" 101 "),
        "{received:?}"
    );
    Ok(())
}

#[tokio::test]
async fn trickled_request_head_is_dropped_after_the_handshake_timeout() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_HANDSHAKE_TIMEOUT_MS", "300")]).await?;
    let started = tokio::time::Instant::now();
    let stream = TcpStream::connect(server.addr).await?;
    let (mut read, mut write) = stream.into_split();
    // One byte every 50 ms: each byte arrives well within the timeout, the head never does.
    let trickle = tokio::spawn(async move {
        let head = format!("GET /ws HTTP/1.1\r\nX-Slow: {}", "a".repeat(200));
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for byte in head.bytes() {
            pace.tick().await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let dropped = read_until_closed(&mut read, Duration::from_secs(3)).await;
    trickle.abort();
    dropped.context("a trickled head keeps the connection open")?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn unsupported_websocket_version_is_a_426() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n\r\n",
        server.addr
    );
    let (answer, _) = raw_exchange(&server, &head).await?;
    answer.assert_refused(426, "bad_request");
    assert_eq!(answer.header("sec-websocket-version"), Some("13"));
    Ok(())
}

#[tokio::test]
async fn browser_style_upgrade_headers_are_accepted() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let head = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: WebSocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nOrigin: http://{}\r\n\
         Sec-WebSocket-Protocol: herald.v1\r\n\r\n",
        token("alice", json!({})),
        server.addr,
        server.addr
    );
    let (answer, _) = raw_exchange(&server, &head).await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    // The accept key of RFC 6455's sample.
    assert_eq!(
        answer.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(answer.header("sec-websocket-protocol"), Some("herald.v1"));
    Ok(())
}

#[tokio::test]
async fn unknown_subprotocols_alone_get_no_subprotocol() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let answer = try_upgrade(
        &server,
        &query,
        &[("Sec-WebSocket-Protocol", "herald.v2, HERALD.V1")],
    )
    .await?;
    assert_eq!(answer.status, 101, "{answer:?}");
    assert_eq!(answer.header("sec-websocket-protocol"), None);
    Ok(())
}

#[tokio::test]
async fn reject_policy_holds_for_concurrent_handshakes() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_CONNECTIONS_PER_USER", "2"),
        ("HERALD_USER_LIMIT_POLICY", "reject"),
    ])
    .await?;
    let query = format!("?token={}", token("alice", json!({})));
    let head = upgrade_head(&server, &query, &[]);
    let attempts = (0..20).map(|_| raw_exchange(&server, &head));
    let answers = futures_util::future::join_all(attempts).await;
    let mut upgraded = Vec::new();
    let mut refused = 0;
    for answer in answers {
        let (answer, stream) = answer?;
        match answer.status {
            101 => upgraded.push(stream),
            429 => {
                assert_eq!(answer.error_code(), "limit_exceeded");
                refused += 1;
            }
            other => bail!("unexpected answer {other}: {answer:?}"),
        }
    }
    assert_eq!((upgraded.len(), refused), (2, 18), "every refusal is a 429");
    server
        .wait_for_stats(|s| s["connections"] == 2 && s["users"] == 1)
        .await?;
    Ok(())
}
