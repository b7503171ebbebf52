//! A connection's lifecycle in the server's JSON logs: `connected`, `authenticated`,
//! `subscribed` and `closed`, each with the connection's id, and never the token or a payload.

use herald_tests::{API_KEY, TestServer, WsClient, connection_id, token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

/// A payload marker that must not appear in any log line.
const PAYLOAD_MARKER: &str = "payload-marker-7f3a";

#[tokio::test]
async fn a_connections_life_is_logged_with_its_id_and_no_secrets() -> anyhow::Result<()> {
    // Debug, so that per-message events are checked for secrets too.
    let mut server = TestServer::start(&[("HERALD_LOG", "debug")]).await?;
    let token = token("alice", json!({}));
    let (mut client, connected) = WsClient::connect_token(&server, &token, "").await?;
    let id = connection_id(&connected);
    assert!(!id.is_empty(), "{connected}");
    client.subscribe("chat:logs").await?;
    server
        .publish("chat:logs", json!({ "text": PAYLOAD_MARKER }))
        .await?;
    let message = client.recv_data().await?;
    assert_eq!(message["data"]["text"], PAYLOAD_MARKER);
    client
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await?;
    client.ended().await?;

    // Every line up to this connection's `closed`, in order.
    let mut lines = Vec::new();
    loop {
        let line = server.log_line_containing("").await?;
        let text = line.to_string();
        for secret in [token.as_str(), API_KEY, PAYLOAD_MARKER] {
            assert!(!text.contains(secret), "a log line holds a secret: {text}");
        }
        let closed = line["message"] == "closed" && line["connection_id"] == id.as_str();
        lines.push(line);
        if closed {
            break;
        }
    }
    let event = |name: &str| -> anyhow::Result<&Value> {
        lines
            .iter()
            .find(|line| line["message"] == name && line["connection_id"] == id.as_str())
            .ok_or_else(|| anyhow::anyhow!("no `{name}` line for {id} in {lines:#?}"))
    };

    let connected = event("connected")?;
    assert_eq!(connected["level"], "INFO", "{connected}");

    let authenticated = event("authenticated")?;
    assert_eq!(authenticated["level"], "INFO", "{authenticated}");
    assert_eq!(authenticated["user"], "alice", "{authenticated}");
    assert_eq!(authenticated["tier"], "free", "{authenticated}");

    let subscribed = event("subscribed")?;
    assert_eq!(subscribed["level"], "DEBUG", "{subscribed}");
    assert_eq!(subscribed["topic"], "chat:logs", "{subscribed}");

    let closed = event("closed")?;
    assert_eq!(closed["level"], "INFO", "{closed}");
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["closed_by"], "client", "{closed}");
    assert!(closed["reason"].is_string(), "{closed}");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    // The subscribe request and the close frame.
    assert!(closed["frames_in"].as_u64() >= Some(2), "{closed}");
    // `connected`, the subscribe ack and the message.
    assert!(closed["frames_out"].as_u64() >= Some(3), "{closed}");
    Ok(())
}
