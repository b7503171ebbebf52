//! Per-tier quotas from the token's `tier` claim: subscriptions per connection and the largest
//! payload a client may publish.

use herald_tests::{TestServer, WsClient, token};
use serde_json::json;

#[tokio::test]
async fn a_tier_caps_its_subscriptions_and_its_publish_size() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_TIERS", "free:3:30:2:16,early:10:100")]).await?;
    let (mut free, _) = WsClient::connect_as(&server, "alice").await?;
    free.subscribe("a").await?;
    free.subscribe("b").await?;
    let (reply, _) = free.request("subscribe", json!({"topic": "c"})).await?;
    assert_eq!(reply["error"]["code"], "limit_exceeded", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tier `free`")),
        "{reply}"
    );
    // Sixteen bytes of JSON text are allowed, seventeen are not.
    let (reply, _) = free
        .request("publish", json!({"topic": "a", "data": "12345678901234"}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    let (reply, _) = free
        .request("publish", json!({"topic": "a", "data": "123456789012345"}))
        .await?;
    assert_eq!(reply["error"]["code"], "payload_too_large", "{reply}");
    // A tier without those columns has only the global caps.
    let early = token("bob", json!({"tier": "early"}));
    let (mut bob, _) = WsClient::connect_token(&server, &early, "").await?;
    for topic in ["a", "b", "c"] {
        bob.subscribe(topic).await?;
    }
    let (reply, _) = bob
        .request("publish", json!({"topic": "a", "data": "x".repeat(1000)}))
        .await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    Ok(())
}
