//! First contact: a server started without API keys says so, at start-up and in every 401 of
//! the HTTP API, so the operator learns which setting to set.

use std::time::Duration;

use herald_tests::{API_KEY, TestServer, WsClient};
use serde_json::json;

#[tokio::test]
async fn without_api_keys_the_log_and_the_401_name_the_setting() -> anyhow::Result<()> {
    let mut server = TestServer::start(&[("HERALD_API_KEYS", "")]).await?;
    let warning = server.log_line_containing("HERALD_API_KEYS").await?;
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("no API keys are configured")),
        "{warning}"
    );

    let (mut subscriber, _) = WsClient::connect_as(&server, "alice").await?;
    subscriber.subscribe("t").await?;
    let body = json!({"topic": "t", "data": 1});
    for bearer in [None, Some("anything"), Some(API_KEY)] {
        let (status, _, answer) = server
            .request_raw("POST", "/api/publish", body.to_string().into(), bearer)
            .await?;
        assert_eq!(status, 401, "{bearer:?}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized");
        assert_eq!(
            answer["error"]["message"],
            "no API keys are configured (HERALD_API_KEYS); the HTTP API is closed",
            "{bearer:?}"
        );
    }
    assert!(
        subscriber
            .try_recv(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing is published"
    );
    Ok(())
}

#[tokio::test]
async fn with_api_keys_a_wrong_key_is_told_apart_from_a_missing_one() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let body = json!({"topic": "t", "data": 1}).to_string();
    let (status, _, answer) = server
        .request_raw("POST", "/api/publish", body.clone().into(), Some("wrong"))
        .await?;
    assert_eq!(
        (status, answer["error"]["message"].clone()),
        (401, json!("invalid API key"))
    );
    let (status, _, answer) = server
        .request_raw("POST", "/api/publish", body.into(), None)
        .await?;
    assert_eq!(status, 401);
    assert_eq!(
        answer["error"]["message"],
        "missing API key: send Authorization: Bearer <key>"
    );
    Ok(())
}
