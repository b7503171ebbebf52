//! Topics from the client's side: authorization by token claims, client publishing,
//! (un)subscribing, one reply per request, verbatim payloads, the subscription cap, preferences,
//! isolation between users, and a slow reader that must not hold anyone else back.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use herald_tests::{
    API_KEY, Ended, TestServer, WsClient, assert_error, connection_id, frames_in, now_secs,
    read_until_ended, sign, slow_subscriber, token,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits to be sure that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

/// Claims for `sub` valid for an hour; `topics` and `publish` are left out when `None`.
fn claims(sub: &str, topics: Option<Value>, publish: Option<Value>) -> Value {
    let mut claims = json!({"sub": sub, "exp": now_secs() + 3600});
    if let Some(topics) = topics {
        claims["topics"] = topics;
    }
    if let Some(publish) = publish {
        claims["publish"] = publish;
    }
    claims
}

/// Connects with a token signed from `claims` and reads the `connected` frame.
async fn connect_claims(server: &TestServer, claims: &Value) -> anyhow::Result<WsClient> {
    Ok(WsClient::connect_token(server, &sign(claims), "").await?.0)
}

#[tokio::test]
async fn the_topics_claim_decides_what_a_client_may_subscribe_to() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut client = connect_claims(
        &server,
        &claims("alice", Some(json!(["chat:*", "news", "user:{sub}"])), None),
    )
    .await?;
    for allowed in ["chat:1", "chat:", "news", "user:alice"] {
        let reply = client.try_subscribe(allowed).await?;
        assert_eq!(reply["type"], "ack", "{allowed}: {reply}");
        assert_eq!(reply["data"]["topic"], allowed);
    }
    for forbidden in [
        "chat",
        "news:1",
        "newsx",
        "user:bob",
        "user:alice2",
        "user:",
    ] {
        let reply = client.try_subscribe(forbidden).await?;
        assert_error(&reply, "forbidden");
    }
    // Refused subscriptions deliver nothing: the next message is the allowed topic's.
    server.publish("user:bob", json!("bob's")).await?;
    server.publish("news:1", json!("not news")).await?;
    server.publish("news", json!("news")).await?;
    let message = client.recv_data().await?;
    assert_eq!(
        (message["topic"].clone(), message["data"].clone()),
        (json!("news"), json!("news"))
    );
    let (_, _, info) = server
        .request("GET", "/api/topics/user:bob", None, true)
        .await?;
    assert_eq!(info["subscribers"], 0);
    Ok(())
}

#[tokio::test]
async fn the_sub_placeholder_matches_the_users_own_id_only() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let patterns = json!(["user:{sub}", "inbox:{sub}:*"]);
    let mut alice = connect_claims(&server, &claims("alice", Some(patterns.clone()), None)).await?;
    assert_eq!(alice.try_subscribe("user:alice").await?["type"], "ack");
    assert_eq!(alice.try_subscribe("inbox:alice:7").await?["type"], "ack");
    for other in ["user:bob", "user:{sub}", "inbox:bob:7", "inbox:alice"] {
        assert_error(&alice.try_subscribe(other).await?, "forbidden");
    }
    // A `sub` with wildcard characters is a plain id: it must not widen the pattern to other
    // users' topics.
    for hostile in ["*", "ali*", "user:*"] {
        let mut client =
            connect_claims(&server, &claims(hostile, Some(patterns.clone()), None)).await?;
        for other in ["user:alice", "user:bob", "inbox:alice:7", "user:ali"] {
            assert_error(&client.try_subscribe(other).await?, "forbidden");
        }
    }
    Ok(())
}

#[tokio::test]
async fn default_topics_apply_to_tokens_without_a_topics_claim() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_DEFAULT_TOPICS", "public:*, user:{sub}")]).await?;
    let mut plain = connect_claims(&server, &claims("alice", None, None)).await?;
    for allowed in ["public:lobby", "user:alice"] {
        assert_eq!(
            plain.try_subscribe(allowed).await?["type"],
            "ack",
            "{allowed}"
        );
    }
    for forbidden in ["private", "user:bob"] {
        assert_error(&plain.try_subscribe(forbidden).await?, "forbidden");
    }
    // An explicit claim replaces the defaults, even an empty one.
    let mut explicit = connect_claims(&server, &claims("bob", Some(json!(["team"])), None)).await?;
    assert_eq!(explicit.try_subscribe("team").await?["type"], "ack");
    assert_error(&explicit.try_subscribe("public:lobby").await?, "forbidden");
    let mut empty = connect_claims(&server, &claims("carol", Some(json!([])), None)).await?;
    assert_error(&empty.try_subscribe("public:lobby").await?, "forbidden");

    // Without HERALD_DEFAULT_TOPICS a token without the claim may subscribe to nothing.
    let bare = TestServer::start(&[]).await?;
    let mut client = connect_claims(&bare, &claims("alice", None, None)).await?;
    for topic in ["public:lobby", "user:alice", "anything"] {
        assert_error(&client.try_subscribe(topic).await?, "forbidden");
    }
    Ok(())
}

#[tokio::test]
async fn client_publish_needs_the_publish_claim() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut reader, _) = WsClient::connect_as(&server, "reader").await?;
    reader.subscribe("chat:1").await?;
    let mut writer = connect_claims(
        &server,
        &claims("writer", Some(json!(["*"])), Some(json!(["chat:*"]))),
    )
    .await?;
    for expected in [1, 2] {
        let (reply, _) = writer
            .request(
                "publish",
                json!({"topic": "chat:1", "data": {"n": expected}}),
            )
            .await?;
        assert_eq!(reply["type"], "ack", "{reply}");
        assert_eq!(reply["data"]["topic"], "chat:1");
        assert_eq!(reply["data"]["offset"], expected);
        assert_eq!(reply["data"]["deduplicated"], false);
        assert!(reply["data"]["epoch"].is_string(), "{reply}");
        let message = reader.recv_data().await?;
        assert_eq!(message["offset"], expected);
        assert_eq!(message["data"], json!({"n": expected}));
    }
    let (reply, _) = writer
        .request("publish", json!({"topic": "news", "data": 1}))
        .await?;
    assert_error(&reply, "forbidden");

    // Without a `publish` claim nothing may be published, whatever `topics` allows.
    let mut silent = connect_claims(&server, &claims("silent", Some(json!(["*"])), None)).await?;
    let (reply, _) = silent
        .request("publish", json!({"topic": "chat:1", "data": 1}))
        .await?;
    assert_error(&reply, "forbidden");
    // Neither refused publish reached the reader or took an offset.
    assert_eq!(server.publish("chat:1", json!(3)).await?["offset"], 3);
    assert_eq!(reader.recv_data().await?["offset"], 3);
    Ok(())
}

#[tokio::test]
async fn unsubscribe_stops_delivery() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("a").await?;
    client.subscribe("b").await?;
    server.publish("a", json!("a1")).await?;
    assert_eq!(client.recv_data().await?["data"], "a1");

    let (reply, _) = client.request("unsubscribe", json!({"topic": "a"})).await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    server.publish("a", json!("a2")).await?;
    server.publish("b", json!("b1")).await?;
    // The message published to `a` after the unsubscribe never arrives: `b`'s comes next.
    let next = client.recv_data().await?;
    assert_eq!(
        (next["topic"].clone(), next["data"].clone()),
        (json!("b"), json!("b1"))
    );

    let (reply, _) = client
        .request("batch_unsubscribe", json!({"topics": ["b", "never"]}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    server.publish("b", json!("b2")).await?;
    assert!(client.try_recv(QUIET).await.is_none());
    server
        .wait_for_stats(|s| s["subscriptions"] == 0 && s["connections"] == 1)
        .await?;
    Ok(())
}

#[tokio::test]
async fn batch_subscribe_reports_each_topic() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    server.publish("a:1", json!(0)).await?;
    let mut client = connect_claims(&server, &claims("alice", Some(json!(["a:*"])), None)).await?;
    let (reply, _) = client
        .request("batch_subscribe", json!({"topics": ["a:1", "b:1", "a:2"]}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    let results = reply["data"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 3, "{reply}");
    assert_eq!(results[0]["topic"], "a:1");
    assert_eq!(results[0]["offset"], 1);
    assert!(results[0]["epoch"].is_string(), "{reply}");
    assert_eq!(results[0]["recovered"], false);
    assert_eq!(results[1]["topic"], "b:1");
    assert_eq!(results[1]["error"]["code"], "forbidden", "{reply}");
    assert_eq!(results[2]["topic"], "a:2");
    assert_eq!(results[2]["offset"], 0);

    server.publish("b:1", json!("b")).await?;
    server.publish("a:2", json!("a2")).await?;
    server.publish("a:1", json!("a1")).await?;
    let first = client.recv_data().await?;
    assert_eq!(
        (first["topic"].clone(), first["data"].clone()),
        (json!("a:2"), json!("a2"))
    );
    let second = client.recv_data().await?;
    assert_eq!(
        (second["topic"].clone(), second["offset"].clone()),
        (json!("a:1"), json!(2))
    );
    Ok(())
}

#[tokio::test]
async fn every_message_id_gets_exactly_one_reply() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut client = connect_claims(
        &server,
        &claims("alice", Some(json!(["ok:*"])), Some(json!(["ok:*"]))),
    )
    .await?;
    let requests = [
        (
            json!({"type": "subscribe", "data": {"topic": "ok:1"}}),
            "ack",
        ),
        (
            json!({"type": "subscribe", "data": {"topic": "ok:1"}}),
            "ack",
        ),
        (
            json!({"type": "subscribe", "data": {"topic": "no"}}),
            "error",
        ),
        (json!({"type": "subscribe", "data": {}}), "error"),
        (json!({"type": "subscribe"}), "error"),
        (
            json!({"type": "unsubscribe", "data": {"topic": "no"}}),
            "ack",
        ),
        (
            json!({"type": "batch_subscribe", "data": {"topics": ["ok:2", "no"]}}),
            "ack",
        ),
        (
            json!({"type": "batch_unsubscribe", "data": {"topics": ["ok:2"]}}),
            "ack",
        ),
        (
            json!({"type": "publish", "data": {"topic": "ok:1", "data": 1}}),
            "ack",
        ),
        (
            json!({"type": "publish", "data": {"topic": "no", "data": 1}}),
            "error",
        ),
        (
            json!({"type": "publish", "data": {"topic": "ok:1"}}),
            "error",
        ),
        (json!({"type": "ping", "timestamp": 12345}), "pong"),
        (json!({"type": "pong"}), "ack"),
        (json!({"type": "get_preferences"}), "preferences"),
        (
            json!({"type": "update_preferences", "data": {"k": 1}}),
            "ack",
        ),
        (json!({"type": "update_preferences", "data": [1]}), "error"),
        (json!({"type": "ack", "data": {"ids": ["x"]}}), "ack"),
        (json!({"type": "no_such_type"}), "error"),
        (
            json!({"type": "auth", "data": {"token": token("alice", json!({"topics": ["ok:*"]}))}}),
            "ack",
        ),
    ];
    for (i, (request, _)) in requests.iter().enumerate() {
        let mut frame = request.clone();
        frame["messageId"] = json!(format!("r{i}"));
        client.send(&frame).await?;
    }
    // Replies may come in any order (a client publish is acked after its fan-out): read until
    // every request has one, then a while longer to catch any second reply.
    let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
    let record = |replies: &mut HashMap<String, Vec<Value>>, frame: Value| {
        if let Some(id) = frame["messageId"].as_str() {
            replies
                .entry(id.to_owned())
                .or_default()
                .push(frame.clone());
        }
    };
    while replies.len() < requests.len() {
        record(&mut replies, client.recv().await?);
    }
    while let Some(frame) = client.try_recv(QUIET).await {
        record(&mut replies, frame);
    }
    for (i, (request, expected)) in requests.iter().enumerate() {
        let got = replies.remove(&format!("r{i}")).unwrap_or_default();
        // A `pong` the client sends answers a server ping: it needs no reply, but one sent
        // with a messageId still gets exactly one.
        assert_eq!(got.len(), 1, "{request} got {got:?}");
        assert_eq!(got[0]["type"], *expected, "{request} got {}", got[0]);
    }
    assert!(replies.is_empty(), "replies to unknown ids: {replies:?}");
    Ok(())
}

#[tokio::test]
async fn data_is_relayed_verbatim() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut reader = connect_claims(
        &server,
        &claims("alice", Some(json!(["*"])), Some(json!(["*"]))),
    )
    .await?;
    let connected_id = {
        let (_, _, list) = server
            .request("GET", "/api/connections?userId=alice", None, true)
            .await?;
        list["connections"][0]["connectionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    reader.subscribe("t").await?;
    let payloads = [
        r#"{"b":1.50,"a":[1e3,-0.0,1E+2,0.10],"z":{"y":null,"x":true},"n":12345678901234567890123}"#,
        r#"{"text":"\u00e9\n\"quoted\"\\ \ud83d\ude00","empty":{},"list":[]}"#,
        "1.50",
        r#""\u0041\t""#,
        "[3,2,1,{\"z\":1,\"a\":2}]",
        "null",
    ];
    for data in payloads {
        let routes = [
            (
                "/api/publish".to_owned(),
                format!(r#"{{"topic":"t","data":{data}}}"#),
                "message",
            ),
            (
                "/api/users/alice/send".to_owned(),
                format!(r#"{{"data":{data}}}"#),
                "push",
            ),
            (
                format!("/api/connections/{connected_id}/send"),
                format!(r#"{{"data":{data}}}"#),
                "push",
            ),
            (
                "/api/broadcast".to_owned(),
                format!(r#"{{"data":{data}}}"#),
                "push",
            ),
        ];
        for (path, body, kind) in routes {
            let (status, _, answer) = server
                .request_raw("POST", &path, Bytes::from(body), Some(API_KEY))
                .await?;
            assert_eq!(status, 200, "{path} {data}: {answer}");
            let text = reader.recv_text().await?;
            assert!(
                text.contains(&format!(r#""data":{data}"#)),
                "{path}: {data} became {text}"
            );
            assert_eq!(
                serde_json::from_str::<Value>(&text)?["type"],
                kind,
                "{text}"
            );
        }
        // From a client: the frame's text goes out as written.
        let frame =
            format!(r#"{{"type":"publish","messageId":"p","data":{{"topic":"t","data":{data}}}}}"#);
        reader.send_raw(Message::text(frame)).await?;
        let mut saw_message = false;
        let mut saw_ack = false;
        while !(saw_message && saw_ack) {
            let text = reader.recv_text().await?;
            let value: Value = serde_json::from_str(&text)?;
            if value["type"] == "message" {
                assert!(
                    text.contains(&format!(r#""data":{data}"#)),
                    "{data} became {text}"
                );
                saw_message = true;
            } else {
                assert_eq!(value["type"], "ack", "{text}");
                saw_ack = true;
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_per_connection_subscription_cap_is_enforced() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_SUBSCRIPTIONS_PER_CONNECTION", "2")]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    client.subscribe("a").await?;
    client.subscribe("b").await?;
    assert_error(&client.try_subscribe("c").await?, "limit_exceeded");
    // Subscribing again to a topic already held is not a new subscription.
    assert_eq!(client.try_subscribe("a").await?["type"], "ack");
    let (reply, _) = client
        .request("batch_subscribe", json!({"topics": ["c", "d"]}))
        .await?;
    assert_eq!(
        reply["data"]["results"][0]["error"]["code"], "limit_exceeded",
        "{reply}"
    );
    assert_eq!(
        reply["data"]["results"][1]["error"]["code"], "limit_exceeded",
        "{reply}"
    );
    // The refused topic delivers nothing.
    server.publish("c", json!("c")).await?;
    server.publish("b", json!("b")).await?;
    assert_eq!(client.recv_data().await?["topic"], "b");

    // Room frees up after an unsubscribe, and the cap is per connection.
    client.request("unsubscribe", json!({"topic": "a"})).await?;
    client.subscribe("c").await?;
    let (mut other, _) = WsClient::connect_as(&server, "alice").await?;
    other.subscribe("x").await?;
    other.subscribe("y").await?;
    let stats = server.stats().await?;
    assert_eq!(stats["subscriptions"], 4);
    Ok(())
}

#[tokio::test]
async fn preferences_merge_and_reach_the_users_other_connections() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut first, _) = WsClient::connect_as(&server, "alice").await?;
    let (mut second, second_connected) = WsClient::connect_as(&server, "alice").await?;
    let (mut bob, bob_connected) = WsClient::connect_as(&server, "bob").await?;

    let (reply, _) = first.request("get_preferences", Value::Null).await?;
    assert_eq!(reply["type"], "preferences");
    assert_eq!(reply["data"], json!({}));

    let (reply, _) = first
        .request("update_preferences", json!({"theme": "dark", "lang": "en"}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["data"], json!({"theme": "dark", "lang": "en"}));
    let pushed = second.recv_data().await?;
    assert_eq!(pushed["type"], "preferences");
    assert_eq!(pushed["data"], json!({"theme": "dark", "lang": "en"}));

    let (reply, _) = second
        .request("update_preferences", json!({"lang": null, "size": 2}))
        .await?;
    assert_eq!(reply["data"], json!({"theme": "dark", "size": 2}));
    let pushed = first.recv_data().await?;
    assert_eq!(pushed["type"], "preferences");
    assert_eq!(pushed["data"], json!({"theme": "dark", "size": 2}));
    let (reply, _) = first.request("get_preferences", Value::Null).await?;
    assert_eq!(reply["data"], json!({"theme": "dark", "size": 2}));

    let (reply, _) = first.request("update_preferences", json!(["dark"])).await?;
    assert_error(&reply, "bad_request");

    // Bob saw none of it: his next frame is a push sent to him afterwards.
    let send = format!("/api/connections/{}/send", connection_id(&bob_connected));
    server.post(&send, &json!({"data": "marker"})).await?;
    assert_eq!(bob.recv_data().await?["data"], "marker");
    let (reply, _) = bob.request("get_preferences", Value::Null).await?;
    assert_eq!(reply["data"], json!({}));

    // The updating connection gets its ack, not a push of its own update.
    let send = format!("/api/connections/{}/send", connection_id(&second_connected));
    server.post(&send, &json!({"data": "marker"})).await?;
    assert_eq!(second.recv_data().await?["data"], "marker");
    Ok(())
}

/// A tiny deterministic generator (xorshift64), so the interleavings are random but replayable.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What a connection receives, reduced to what the isolation test compares.
fn delivery(frame: &Value) -> Option<(String, Value)> {
    match frame["type"].as_str()? {
        "message" => Some((
            format!("message {}", frame["topic"].as_str()?),
            frame["data"].clone(),
        )),
        "push" => Some((
            format!("push {}", frame["scope"].as_str()?),
            frame["data"].clone(),
        )),
        "event" | "preferences" => Some((frame["type"].to_string(), frame.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn users_never_receive_each_others_messages() -> anyhow::Result<()> {
    const USERS: usize = 6;
    const PER_USER: usize = 2;
    const OPS: usize = 300;
    let server = TestServer::start(&[]).await?;
    for seed in [0x9E37_79B9_7F4A_7C15_u64, 42] {
        let mut rng = XorShift(seed);
        let users: Vec<String> = (0..USERS).map(|u| format!("iso{seed:x}-{u}")).collect();
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for user in &users {
            for _ in 0..PER_USER {
                let own = Some(json!(["user:{sub}"]));
                let token = sign(&claims(user, own.clone(), own));
                let (client, connected) = WsClient::connect_token(&server, &token, "").await?;
                ids.push(connection_id(&connected));
                clients.push(client);
            }
        }
        let owner = |c: usize| c / PER_USER;
        let conns_of = |u: usize| (u * PER_USER)..((u + 1) * PER_USER);
        let mut subscribed = vec![false; clients.len()];
        let mut expected: Vec<Vec<(String, Value)>> = vec![Vec::new(); clients.len()];
        let mut received: Vec<Vec<(String, Value)>> = vec![Vec::new(); clients.len()];
        let collect = |into: &mut Vec<(String, Value)>, frames: Vec<Value>| {
            into.extend(frames.iter().filter_map(delivery));
        };
        for seq in 0..OPS {
            let c = rng.below(clients.len());
            let u = owner(c);
            let topic = format!("user:{}", users[u]);
            let data = json!({"to": users[u], "seq": seq});
            match rng.below(7) {
                0 => {
                    let kind = if subscribed[c] {
                        "unsubscribe"
                    } else {
                        "subscribe"
                    };
                    let (reply, others) = clients[c].request(kind, json!({"topic": topic})).await?;
                    assert_eq!(reply["type"], "ack", "{kind} {topic}: {reply}");
                    collect(&mut received[c], others);
                    subscribed[c] = !subscribed[c];
                }
                1 => {
                    server.publish(&topic, data.clone()).await?;
                    for d in conns_of(u).filter(|&d| subscribed[d]) {
                        expected[d].push((format!("message {topic}"), data.clone()));
                    }
                }
                2 => {
                    let (reply, others) = clients[c]
                        .request("publish", json!({"topic": topic, "data": data}))
                        .await?;
                    assert_eq!(reply["type"], "ack", "{reply}");
                    collect(&mut received[c], others);
                    for d in conns_of(u).filter(|&d| subscribed[d]) {
                        expected[d].push((format!("message {topic}"), data.clone()));
                    }
                }
                3 => {
                    assert_eq!(
                        server
                            .post(
                                &format!("/api/users/{}/send", users[u]),
                                &json!({"data": data})
                            )
                            .await?,
                        json!({"delivered": PER_USER})
                    );
                    for d in conns_of(u) {
                        expected[d].push(("push user".to_owned(), data.clone()));
                    }
                }
                4 => {
                    let send = format!("/api/connections/{}/send", ids[c]);
                    server.post(&send, &json!({"data": data})).await?;
                    expected[c].push(("push connection".to_owned(), data.clone()));
                }
                5 => {
                    // Reaching into another user's topic is refused.
                    let victim = (u + 1 + rng.below(USERS - 1)) % USERS;
                    let foreign = format!("user:{}", users[victim]);
                    let (reply, others) = clients[c]
                        .request("subscribe", json!({"topic": foreign}))
                        .await?;
                    assert_error(&reply, "forbidden");
                    collect(&mut received[c], others);
                }
                _ => {
                    let victim = (u + 1 + rng.below(USERS - 1)) % USERS;
                    let foreign = format!("user:{}", users[victim]);
                    let (reply, others) = clients[c]
                        .request("publish", json!({"topic": foreign, "data": data}))
                        .await?;
                    assert_error(&reply, "forbidden");
                    collect(&mut received[c], others);
                }
            }
        }
        // A last push to every connection marks the end of what it should have received.
        for (c, client) in clients.iter_mut().enumerate() {
            let send = format!("/api/connections/{}/send", ids[c]);
            server.post(&send, &json!({"data": "end"})).await?;
            loop {
                let frame = client.recv_data().await?;
                if frame["data"] == "end" {
                    break;
                }
                received[c].extend(delivery(&frame));
            }
        }
        for c in 0..clients.len() {
            for (_, data) in &received[c] {
                assert_eq!(
                    data["to"],
                    users[owner(c)].as_str(),
                    "seed {seed:x}: {data}"
                );
            }
            assert_eq!(received[c], expected[c], "seed {seed:x}, connection {c}");
        }
        assert!(
            expected.iter().map(Vec::len).sum::<usize>() > OPS / 2,
            "the run exercised too little traffic"
        );
        drop(clients);
        server
            .wait_for_stats(|s| s["connections"] == 0 && s["subscriptions"] == 0)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_reader_does_not_hold_back_other_subscribers() -> anyhow::Result<()> {
    /// Publications after which a reader that never reads must have been dropped: far more
    /// than its queue (100 frames) and the kernel's socket buffers (a few MB) together hold.
    const MOST: u64 = 2_000;
    let server = TestServer::start(&[("HERALD_MAX_QUEUE_SIZE", "100")]).await?;

    // The slow reader stops reading after its subscribe ack.
    let mut slow = slow_subscriber(&server, "feed").await?;

    let mut readers = Vec::new();
    for name in ["fast-1", "fast-2"] {
        let (mut client, _) = WsClient::connect_as(&server, name).await?;
        client.subscribe("feed").await?;
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            loop {
                let frame = client.recv_data().await?;
                if frame["type"] == "message" {
                    offsets.push(frame["offset"].as_u64().unwrap_or_default());
                    if frame["data"]["last"] == true {
                        return anyhow::Ok((offsets, tokio::time::Instant::now(), client));
                    }
                }
            }
        }));
    }

    // Publish until the server gives up on the slow reader; the fast readers keep up all along.
    let filler = "x".repeat(8192);
    let mut published = 0;
    loop {
        for _ in 0..50 {
            published += 1;
            server
                .publish("feed", json!({"n": published, "filler": filler}))
                .await?;
        }
        if server.stats().await?["connections"] == 2 {
            break;
        }
        assert!(published < MOST, "the slow reader is still connected");
    }
    published += 1;
    server.publish("feed", json!({"last": true})).await?;
    let sent = tokio::time::Instant::now();
    let mut fast_clients = Vec::new();
    for reader in readers {
        let (offsets, done, client) = reader.await??;
        assert_eq!(offsets, (1..=published).collect::<Vec<_>>());
        let lag = done.saturating_duration_since(sent);
        assert!(lag < Duration::from_secs(2), "a fast reader lagged {lag:?}");
        fast_clients.push(client);
    }
    let stats = server.stats().await?;
    assert_eq!(stats["connections"], 2, "{stats}");
    assert_eq!(stats["subscriptions"], 2, "{stats}");

    // Reading at last, the slow reader finds a gap and then the end of its connection.
    let mut got = 0;
    let ending = read_until_ended(&mut slow, |text| {
        got += frames_in(text)
            .iter()
            .filter(|f| f["type"] == "message")
            .count();
    })
    .await?;
    assert!(
        matches!(ending, Ended::Closed(4009) | Ended::Dropped),
        "slow reader ended with {ending:?}"
    );
    assert!(
        (got as u64) < published,
        "the slow reader got {got} of {published} messages"
    );
    Ok(())
}
