//! The admin listener and readiness while draining.

use herald_tests::{TestServer, WsClient, token};
use serde_json::json;

#[tokio::test]
async fn admin_listener_serves_metrics_and_health_only() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_ADMIN_LISTEN", "127.0.0.1:0")]).await?;
    let admin = server
        .admin_addr
        .ok_or_else(|| anyhow::anyhow!("no admin listener reported"))?;
    assert_eq!(server.get_at(admin, "/health/live").await?.0, 200);
    assert_eq!(server.get_at(admin, "/metrics").await?.0, 200);
    assert_eq!(server.get_at(admin, "/api/stats").await?.0, 404);
    // The public listener keeps the API and the WebSocket, not the private routes.
    assert_eq!(server.get_at(server.addr, "/metrics").await?.0, 404);
    assert_eq!(server.get_at(server.addr, "/health/ready").await?.0, 404);
    assert_eq!(server.stats().await?["connections"], 0);
    Ok(())
}

#[tokio::test]
async fn readiness_answers_503_while_connections_drain() -> anyhow::Result<()> {
    let mut server = TestServer::start(&[("HERALD_SHUTDOWN_GRACE_MS", "5000")]).await?;
    // A client that does not answer the close handshake keeps the drain going for a while.
    let (client, _) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(server.get_at(server.addr, "/health/ready").await?.0, 200);
    server.sigterm().await?;
    let mut saw_503 = false;
    for _ in 0..100 {
        match server.get_at(server.addr, "/health/ready").await {
            Ok((503, body)) => {
                assert_eq!(body["status"], "shutting_down");
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            Err(error) => anyhow::bail!("listener closed before the drain ended: {error}"),
        }
    }
    assert!(saw_503, "readiness never turned 503");
    let url = server.ws_url(&format!("?token={}", token("bob", json!({}))));
    let refused = WsClient::connect_with(&url, &[])
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("503"),
        "new connection during the drain: {refused}"
    );
    drop(client);
    let exit = server.wait_exit(std::time::Duration::from_secs(10)).await?;
    assert!(exit.success(), "{exit}");
    Ok(())
}
