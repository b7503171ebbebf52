//! Authentication after the upgrade: the `auth` message, what an unauthenticated connection
//! may do, the auth timeout, token refresh, token expiry (4003), the per-user limit with
//! policy `reject` for message-authenticated connections (4030), and `?thread=` binding.

use std::time::Duration;

use anyhow::Context as _;
use herald_tests::{
    Ended, TestServer, WsClient, assert_error, now_ms, now_secs, refused_tokens, token,
};
use serde_json::{Value, json};

#[tokio::test]
async fn auth_message_sends_connected_then_ack_with_expiry() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut client = WsClient::connect_anonymous(&server, "").await?;
    let exp = now_secs() + 600;
    let (reply, before) = client
        .request(
            "auth",
            json!({"token": token("alice", json!({"exp": exp}))}),
        )
        .await?;
    assert_eq!(
        before.len(),
        1,
        "exactly `connected` comes first: {before:?}"
    );
    assert_eq!(before[0]["type"], "connected");
    assert_eq!(before[0]["data"]["userId"], "alice");
    assert_eq!(before[0]["data"]["tier"], "free");
    assert!(before[0]["data"]["connectionId"].is_string());
    assert_eq!(before[0]["data"]["heartbeatInterval"], 30_000);
    assert_eq!(before[0]["data"]["maxPayload"], 102_400);
    assert_eq!(reply["type"], "ack");
    assert_eq!(reply["data"]["expiresAt"], exp * 1000);

    // Now it is a full session.
    client.subscribe("room").await?;
    server
        .wait_for_stats(|s| s["users"] == 1 && s["subscriptions"] == 1)
        .await?;
    Ok(())
}

#[tokio::test]
async fn auth_message_without_message_id_still_connects() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut client = WsClient::connect_anonymous(&server, "").await?;
    client
        .send(&json!({"type": "auth", "data": {"token": token("alice", json!({}))}}))
        .await?;
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["data"]["userId"], "alice");
    client.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn before_auth_requests_are_refused_and_ping_is_answered() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    server.publish("room", json!({"n": 1})).await?;
    let mut client = WsClient::connect_anonymous(&server, "").await?;
    let requests = [
        ("subscribe", json!({"topic": "room"})),
        ("unsubscribe", json!({"topic": "room"})),
        ("batch_subscribe", json!({"topics": ["room", "other"]})),
        ("batch_unsubscribe", json!({"topics": ["room"]})),
        ("publish", json!({"topic": "room", "data": {"x": 1}})),
        ("get_preferences", Value::Null),
        ("update_preferences", json!({"theme": "dark"})),
        ("ack", json!({"ids": ["e1"]})),
        ("pong", Value::Null),
        // Malformed but of a known type: still unauthorized, never an ack.
        ("subscribe", json!({"nope": true})),
    ];
    for (kind, data) in requests {
        let (reply, others) = client.request(kind, data).await?;
        assert!(others.is_empty(), "{kind}: unexpected frames {others:?}");
        assert_error(&reply, "unauthorized");
    }

    client
        .send(&json!({"type": "ping", "messageId": "p1", "timestamp": 1_234_567}))
        .await?;
    let pong = client.recv().await?;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["messageId"], "p1");
    assert_eq!(pong["timestamp"], 1_234_567);

    let (reply, _) = client.request("teleport", json!({})).await?;
    assert_error(&reply, "bad_request");

    // Nothing was published from, or subscribed by, the unauthenticated connection.
    let stats = server.stats().await?;
    assert_eq!(stats["subscriptions"], 0);
    assert_eq!(stats["messages"]["published"], 1);
    assert_eq!(stats["users"], 0);

    // And it can still authenticate afterwards.
    let (reply, before) = client
        .request("auth", json!({"token": token("alice", json!({}))}))
        .await?;
    assert_eq!(before[0]["type"], "connected");
    assert_eq!(reply["type"], "ack");
    Ok(())
}

#[tokio::test]
async fn bad_token_in_auth_message_gets_unauthorized_and_4001() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    for (name, bad) in refused_tokens() {
        let mut client = WsClient::connect_anonymous(&server, "").await?;
        let (reply, others) = client.request("auth", json!({"token": bad})).await?;
        assert!(others.is_empty(), "{name}: {others:?}");
        assert_error(&reply, "unauthorized");
        assert_eq!(client.ended().await?, Ended::Closed(4001), "{name}");
    }
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn no_auth_within_the_timeout_closes_4001() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_AUTH_TIMEOUT_MS", "300")]).await?;
    let mut client = WsClient::connect_anonymous(&server, "").await?;
    // Pings are answered but do not extend the time to authenticate.
    client
        .send(&json!({"type": "ping", "messageId": "p"}))
        .await?;
    assert_eq!(client.recv().await?["type"], "pong");
    let started = tokio::time::Instant::now();
    assert_eq!(client.ended().await?, Ended::Closed(4001));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A connection that authenticates in time is not affected.
    let mut late = WsClient::connect_anonymous(&server, "").await?;
    late.request("auth", json!({"token": token("alice", json!({}))}))
        .await?;
    assert!(late.try_recv(Duration::from_millis(700)).await.is_none());
    late.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn refresh_for_the_same_user_acks_the_new_expiry() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let exp = now_secs() + 7200;
    let (reply, others) = client
        .request(
            "auth",
            json!({"token": token("alice", json!({"exp": exp}))}),
        )
        .await?;
    assert!(
        others.is_empty(),
        "a refresh sends no second connected: {others:?}"
    );
    assert_eq!(reply["type"], "ack");
    assert_eq!(reply["data"]["expiresAt"], exp * 1000);
    client.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn refresh_replaces_the_permissions() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let first = token("alice", json!({"topics": ["a:*"], "publish": []}));
    let (mut client, _) = WsClient::connect_token(&server, &first, "").await?;
    let (reply, _) = client.request("subscribe", json!({"topic": "b:1"})).await?;
    assert_error(&reply, "forbidden");

    let second = token("alice", json!({"topics": ["b:*"], "publish": []}));
    let (reply, _) = client.request("auth", json!({"token": second})).await?;
    assert_eq!(reply["type"], "ack");
    client.subscribe("b:1").await?;
    let (reply, _) = client.request("subscribe", json!({"topic": "a:1"})).await?;
    assert_error(&reply, "forbidden");
    Ok(())
}

#[tokio::test]
async fn refresh_for_another_user_is_refused_with_4001() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let (reply, _) = client
        .request("auth", json!({"token": token("mallory", json!({}))}))
        .await?;
    assert_error(&reply, "unauthorized");
    assert_eq!(client.ended().await?, Ended::Closed(4001));
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn refresh_with_a_bad_token_is_refused_with_4001() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let expired = token("alice", json!({"exp": now_secs() - 10}));
    let (reply, _) = client.request("auth", json!({"token": expired})).await?;
    assert_error(&reply, "unauthorized");
    assert_eq!(client.ended().await?, Ended::Closed(4001));
    Ok(())
}

#[tokio::test]
async fn session_is_closed_4003_within_a_second_of_token_expiry() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let exp = now_secs() + 2;
    let (mut client, _) =
        WsClient::connect_token(&server, &token("alice", json!({"exp": exp})), "").await?;
    assert_eq!(client.ended().await?, Ended::Closed(4003));
    let closed_at = now_ms();
    let exp_ms = exp * 1000;
    assert!(
        closed_at >= exp_ms,
        "closed {} ms before exp",
        exp_ms - closed_at
    );
    assert!(
        closed_at <= exp_ms + 1000,
        "closed {} ms after exp",
        closed_at - exp_ms
    );
    Ok(())
}

#[tokio::test]
async fn message_authenticated_session_also_expires_with_4003() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut client = WsClient::connect_anonymous(&server, "").await?;
    let exp = now_secs() + 2;
    client
        .request(
            "auth",
            json!({"token": token("alice", json!({"exp": exp}))}),
        )
        .await?;
    assert_eq!(client.ended().await?, Ended::Closed(4003));
    let closed_at = now_ms();
    assert!(closed_at >= exp * 1000 && closed_at <= exp * 1000 + 1000);
    Ok(())
}

#[tokio::test]
async fn refresh_before_expiry_keeps_the_session_open() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let exp = now_secs() + 2;
    let (mut client, _) =
        WsClient::connect_token(&server, &token("alice", json!({"exp": exp})), "").await?;
    let (reply, _) = client
        .request(
            "auth",
            json!({"token": token("alice", json!({"exp": now_secs() + 3600}))}),
        )
        .await?;
    assert_eq!(reply["type"], "ack");

    // Past the first token's expiry plus the one second of grace, nothing closed it.
    let deadline = exp * 1000 + 1200;
    while now_ms() < deadline {
        let wait = Duration::from_millis((deadline - now_ms()).min(200));
        if let Some(frame) = client.try_recv(wait).await {
            assert_eq!(frame["type"], "ping", "unexpected frame {frame}");
        }
    }
    client.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn reject_policy_refuses_message_auth_over_the_limit_with_4030() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_CONNECTIONS_PER_USER", "1"),
        ("HERALD_USER_LIMIT_POLICY", "reject"),
    ])
    .await?;
    let (mut first, _) = WsClient::connect_as(&server, "alice").await?;
    let mut second = WsClient::connect_anonymous(&server, "").await?;
    let (reply, others) = second
        .request("auth", json!({"token": token("alice", json!({}))}))
        .await?;
    assert!(
        others.is_empty(),
        "no connected for a refused auth: {others:?}"
    );
    assert_error(&reply, "limit_exceeded");
    assert_eq!(second.ended().await?, Ended::Closed(4030));

    // The first connection is untouched.
    first.subscribe("room").await?;
    server
        .wait_for_stats(|s| s["connections"] == 1 && s["users"] == 1)
        .await?;
    Ok(())
}

#[tokio::test]
async fn evict_policy_with_message_auth_replaces_the_oldest() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_CONNECTIONS_PER_USER", "1")]).await?;
    let (mut first, _) = WsClient::connect_as(&server, "alice").await?;
    let mut second = WsClient::connect_anonymous(&server, "").await?;
    let (reply, before) = second
        .request("auth", json!({"token": token("alice", json!({}))}))
        .await?;
    assert_eq!(before[0]["type"], "connected");
    assert_eq!(reply["type"], "ack");
    assert_eq!(first.ended().await?, Ended::Closed(4029));
    second.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn thread_bound_connections_receive_only_their_thread() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let alice = token("alice", json!({"tier": "early"}));
    let (mut t1, _) = WsClient::connect_token(&server, &alice, "&thread=t1").await?;
    // The options may come in any order.
    let (mut t2, _) =
        WsClient::connect_url(&server.ws_url(&format!("?thread=t2&token={alice}"))).await?;
    let (mut unbound, _) = WsClient::connect_token(&server, &alice, "").await?;
    // Bound by query, authenticated by message.
    let mut t1_late = WsClient::connect_anonymous(&server, "?thread=t1").await?;
    t1_late.request("auth", json!({"token": alice})).await?;
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;

    assert_eq!(
        server
            .send_to_user("alice", json!({"n": 1}), Some("t1"))
            .await?["delivered"],
        3
    );
    for client in [&mut t1, &mut unbound, &mut t1_late] {
        let push = client.recv_data().await?;
        assert_eq!(push["type"], "push");
        assert_eq!(push["scope"], "user");
        assert_eq!(push["data"], json!({"n": 1}));
    }
    assert_eq!(
        server
            .send_to_user("alice", json!({"n": 2}), Some("t2"))
            .await?["delivered"],
        2
    );
    let push = t2.recv_data().await?;
    assert_eq!(push["data"], json!({"n": 2}), "t2 gets only its own thread");
    assert_eq!(unbound.recv_data().await?["data"], json!({"n": 2}));

    assert_eq!(
        server.send_to_user("alice", json!({"n": 3}), None).await?["delivered"],
        4
    );
    for client in [&mut t1, &mut t2, &mut unbound, &mut t1_late] {
        assert_eq!(client.recv_data().await?["data"], json!({"n": 3}));
    }
    // Nobody got anything else, and bob got nothing at all.
    for (client, who) in [
        (&mut t1, "t1"),
        (&mut t2, "t2"),
        (&mut unbound, "unbound"),
        (&mut t1_late, "t1 by message"),
        (&mut bob, "bob"),
    ] {
        client.expect_quiet(who).await?;
    }
    let (_, _, listed) = server
        .request("GET", "/api/connections?userId=alice", None, true)
        .await?;
    let mut threads: Vec<Value> = listed["connections"]
        .as_array()
        .context("no connections")?
        .iter()
        .map(|c| c["threadId"].clone())
        .collect();
    threads.sort_by_key(Value::to_string);
    assert_eq!(
        threads,
        [json!("t1"), json!("t1"), json!("t2"), json!(null)]
    );
    Ok(())
}

/// Sends a critical event to `user` with an optional thread and returns the answer.
async fn event_to(
    server: &TestServer,
    user: &str,
    data: Value,
    thread: Option<&str>,
) -> anyhow::Result<Value> {
    let mut body = json!({"event": "agent_started", "data": data});
    if let Some(thread) = thread {
        body["threadId"] = json!(thread);
    }
    server.send_event(user, &body).await
}

#[tokio::test]
async fn thread_bound_connections_receive_only_their_threads_events() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let alice = token("alice", json!({}));
    let mut clients = Vec::new();
    for query in ["&thread=t1", "&thread=t2", ""] {
        clients.push(WsClient::connect_token(&server, &alice, query).await?.0);
    }
    let answer = event_to(&server, "alice", json!({"step": 1}), Some("t1")).await?;
    assert_eq!(answer["delivered"], 2, "{answer}");
    for index in [0, 2] {
        let event = clients[index].recv_data().await?;
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["event"], "agent_started");
        assert_eq!(event["threadId"], "t1");
        assert_eq!(event["id"], answer["id"]);
        assert_eq!(event["data"], json!({"step": 1}));
    }
    clients[1].expect_quiet("t2").await?;
    Ok(())
}

#[tokio::test]
async fn pending_thread_events_reach_only_a_connection_of_that_thread() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let answer = event_to(&server, "bob", json!({"step": 1}), Some("t1")).await?;
    assert_eq!(answer["delivered"], 0, "{answer}");
    assert_eq!(answer["pending"], 1, "{answer}");

    let bob = token("bob", json!({}));
    let (mut other, _) = WsClient::connect_token(&server, &bob, "&thread=t2").await?;
    other.expect_quiet("bob's t2").await?;

    let (mut bound, _) = WsClient::connect_token(&server, &bob, "&thread=t1").await?;
    let event = bound.recv_data().await?;
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["id"], answer["id"]);
    assert_eq!(event["threadId"], "t1");
    Ok(())
}

#[tokio::test]
async fn reject_policy_never_acks_a_message_auth_it_then_refuses() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_MAX_CONNECTIONS_PER_USER", "2"),
        ("HERALD_USER_LIMIT_POLICY", "reject"),
    ])
    .await?;
    let alice = token("alice", json!({}));
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(WsClient::connect_anonymous(&server, "").await?);
    }
    // Every `auth` is written before any answer is read, so they race in the server.
    for client in &mut clients {
        client
            .send(&json!({"type": "auth", "messageId": "a", "data": {"token": alice}}))
            .await?;
    }
    let mut admitted = Vec::new();
    for mut client in clients {
        let first = client.recv().await?;
        if first["type"] == "connected" {
            let ack = client.recv().await?;
            assert_eq!(ack["type"], "ack", "{ack}");
            admitted.push(client);
        } else {
            assert_error(&first, "limit_exceeded");
            assert_eq!(first["messageId"], "a");
            assert_eq!(client.ended().await?, Ended::Closed(4030));
        }
    }
    assert_eq!(admitted.len(), 2);
    for client in &mut admitted {
        client.subscribe("room").await?;
    }
    Ok(())
}
