//! The core flow a new user tries first: connect with a token, subscribe, publish over HTTP,
//! receive the message.

use herald_tests::{TestServer, WsClient};
use serde_json::json;

#[tokio::test]
async fn subscribe_then_publish_over_http_delivers_the_message() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, connected) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(connected["data"]["userId"], "alice");
    assert_eq!(connected["data"]["tier"], "free");
    assert_eq!(connected["data"]["maxPayload"], 102_400);
    let ack = client.subscribe("chat:1").await?;
    assert_eq!(ack["topic"], "chat:1");
    assert_eq!(ack["offset"], 0);
    assert_eq!(ack["recovered"], false);

    let published = server
        .publish("chat:1", json!({"text": "hi", "n": 1.50}))
        .await?;
    assert_eq!(published["offset"], 1);
    assert_eq!(published["epoch"], ack["epoch"]);
    assert_eq!(published["deduplicated"], false);

    let message = client.recv_data().await?;
    assert_eq!(message["type"], "message");
    assert_eq!(message["topic"], "chat:1");
    assert_eq!(message["offset"], 1);
    assert_eq!(message["epoch"], ack["epoch"]);
    assert_eq!(message["data"]["text"], "hi");
    Ok(())
}
