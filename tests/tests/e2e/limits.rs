//! Per-tier rate limits on client writes and the operation queue bound.

use herald_tests::{Ended, TestServer, WsClient};
use serde_json::json;

#[tokio::test]
async fn client_writes_are_rate_limited_by_tier_and_abuse_closes_4008() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_TIERS", "free:3:5")]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    for n in 0..5 {
        let (reply, _) = client
            .request("publish", json!({"topic": "chat", "data": n}))
            .await?;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    let (reply, _) = client
        .request("publish", json!({"topic": "chat", "data": 5}))
        .await?;
    assert_eq!(reply["error"]["code"], "rate_limited");
    assert!(
        reply["error"]["retryAfter"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 12_000),
        "{reply}"
    );
    // Reads are not limited.
    let (reply, _) = client
        .request("subscribe", json!({"topic": "chat"}))
        .await?;
    assert_eq!(reply["type"], "ack");
    // Another user has a bucket of their own.
    let (mut bob, _) = WsClient::connect_as(&server, "bob").await?;
    let (reply, _) = bob
        .request("update_preferences", json!({"theme": "dark"}))
        .await?;
    assert_eq!(reply["type"], "ack");
    // Ignoring the refusals closes the connection.
    for n in 0..9 {
        client
            .send(&json!({"type": "publish", "data": {"topic": "chat", "data": n}}))
            .await?;
    }
    assert_eq!(client.ended().await?, Ended::Closed(4008));
    Ok(())
}
