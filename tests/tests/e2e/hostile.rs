//! Hostile and sloppy clients: payloads at and over the limit, invalid UTF-8, binary and
//! protocol-violating frames, malformed JSON, fragmentation, a garbage flood next to a
//! well-behaved client, and WebSocket protocol pings as activity.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_tests::{
    Ended, TIMEOUT, TestServer, WsClient, frames_in, raw_exchange, read_until_ended, token,
    upgrade_head,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

/// Upgrades a raw socket without a token (so the server sends nothing until it closes).
async fn raw_socket(server: &TestServer) -> anyhow::Result<TcpStream> {
    let (answer, stream) = raw_exchange(server, &upgrade_head(server, "", &[])).await?;
    anyhow::ensure!(answer.status == 101, "not upgraded: {answer:?}");
    Ok(stream)
}

/// A client frame as raw bytes: FIN and `opcode` in the first byte, masked with a fixed key
/// unless `masked` is false.
fn raw_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x12_u8, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | u8::try_from(n).unwrap_or(0)),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close frame (its code, 1005 without one) or the end of the
/// stream (`None`).
async fn raw_close_code(stream: &mut TcpStream) -> anyhow::Result<Option<u16>> {
    let mut buffer = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            // Parse every complete frame in the buffer (server frames are never masked).
            while buffer.len() >= 2 {
                let opcode = buffer[0] & 0x0f;
                let (len, header) = match buffer[1] & 0x7f {
                    126 if buffer.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4)
                    }
                    127 if buffer.len() >= 10 => {
                        let mut bytes = [0_u8; 8];
                        bytes.copy_from_slice(&buffer[2..10]);
                        (usize::try_from(u64::from_be_bytes(bytes))?, 10)
                    }
                    126 | 127 => break,
                    n => (usize::from(n), 2),
                };
                if buffer.len() < header + len {
                    break;
                }
                if opcode == 0x8 {
                    let payload = &buffer[header..header + len];
                    return Ok(Some(if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    }));
                }
                buffer.drain(..header + len);
            }
            let mut chunk = [0_u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .context("the server neither closed nor dropped the connection")?
}

/// A data frame of `opcode` carrying `payload`, final or not, sent as is.
fn data_frame(payload: &[u8], opcode: Data, is_final: bool) -> Message {
    Message::Frame(Frame::message(
        payload.to_vec(),
        OpCode::Data(opcode),
        is_final,
    ))
}

/// A `ping` request with `messageId` `id`, padded with a `pad` field to exactly `len` bytes.
fn padded_ping(id: &str, len: usize) -> String {
    let bare = format!(r#"{{"type":"ping","messageId":"{id}","pad":""}}"#);
    assert!(bare.len() <= len, "{len} bytes cannot hold a ping");
    let text = format!(
        r#"{{"type":"ping","messageId":"{id}","pad":"{}"}}"#,
        "x".repeat(len - bare.len())
    );
    assert_eq!(text.len(), len);
    text
}

/// A server limited to 1024-byte messages and a client connected to it as `alice`.
async fn small_payload_server() -> anyhow::Result<(TestServer, WsClient)> {
    let server = TestServer::start(&[("HERALD_MAX_PAYLOAD_BYTES", "1024")]).await?;
    let (client, connected) = WsClient::connect_as(&server, "alice").await?;
    assert_eq!(connected["data"]["maxPayload"], 1024);
    Ok((server, client))
}

/// Asserts the next reply is a `pong` answering `id`.
async fn expect_pong(client: &mut WsClient, id: &str) -> anyhow::Result<()> {
    let reply = client.recv_data().await?;
    if reply["type"] != "pong" || reply["messageId"] != id {
        bail!("expected the pong for {id}, got {reply}");
    }
    Ok(())
}

/// `text` as three fragments: a text frame and two continuations, split at bytes 400 and 800.
fn three_fragments(text: &str) -> Vec<Message> {
    let (a, rest) = text.as_bytes().split_at(400);
    let (b, c) = rest.split_at(400);
    vec![
        data_frame(a, Data::Text, false),
        data_frame(b, Data::Continue, false),
        data_frame(c, Data::Continue, true),
    ]
}

/// Sends `messages` in order. The server may close before the last ones are written, so a
/// failed send ends the sending: the close code (or a missing reply) is what the test checks.
async fn send_all(client: &mut WsClient, messages: Vec<Message>) {
    for message in messages {
        if client.send_raw(message).await.is_err() {
            return;
        }
    }
}

/// Connects as `user` (or without a token), sends `messages` and expects the server to close
/// the connection with `code`.
async fn expect_close(
    server: &TestServer,
    user: Option<&str>,
    messages: Vec<Message>,
    code: u16,
) -> anyhow::Result<()> {
    let mut client = match user {
        Some(user) => WsClient::connect_as(server, user).await?.0,
        None => WsClient::connect_anonymous(server, "").await?,
    };
    send_all(&mut client, messages).await;
    assert_eq!(client.ended().await?, Ended::Closed(code));
    Ok(())
}

/// Writes `bytes` on a fresh raw WebSocket and expects the server to close it with `code`.
async fn expect_raw_close(server: &TestServer, bytes: &[u8], code: u16) -> anyhow::Result<()> {
    let mut stream = raw_socket(server).await?;
    stream.write_all(bytes).await?;
    assert_eq!(raw_close_code(&mut stream).await?, Some(code));
    Ok(())
}

#[tokio::test]
async fn message_of_exactly_the_limit_is_accepted() -> anyhow::Result<()> {
    let (_server, mut client) = small_payload_server().await?;
    client
        .send_raw(Message::text(padded_ping("edge", 1024)))
        .await?;
    expect_pong(&mut client, "edge").await?;
    // Still open and usable.
    client.subscribe("room").await?;
    Ok(())
}

#[tokio::test]
async fn message_one_byte_over_the_limit_closes_1009() -> anyhow::Result<()> {
    let (server, mut client) = small_payload_server().await?;
    client
        .send_raw(Message::text(padded_ping("over", 1025)))
        .await?;
    assert_eq!(client.ended().await?, Ended::Closed(1009));
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn limit_applies_to_the_reassembled_message() -> anyhow::Result<()> {
    let (_server, mut client) = small_payload_server().await?;
    // Exactly the limit in three fragments: accepted.
    send_all(
        &mut client,
        three_fragments(&padded_ping("frag-edge", 1024)),
    )
    .await;
    expect_pong(&mut client, "frag-edge").await?;
    // One byte more, every fragment well under the limit: 1009.
    send_all(
        &mut client,
        three_fragments(&padded_ping("frag-over", 1025)),
    )
    .await;
    assert_eq!(client.ended().await?, Ended::Closed(1009));
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let invalid = data_frame(b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}", Data::Text, true);
    expect_close(&server, Some("alice"), vec![invalid], 1007).await?;
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_across_fragments_closes_1007() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    // A lead byte of a two-byte sequence followed by an ASCII byte in the next fragment.
    let fragments = vec![
        data_frame(b"{\"type\":\"ping\",\"x\":\"\xc3", Data::Text, false),
        data_frame(b"A\"}", Data::Continue, true),
    ];
    expect_close(&server, Some("alice"), fragments, 1007).await
}

#[tokio::test]
async fn invalid_utf8_before_auth_closes_1007() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let invalid = data_frame(b"\xc0\xaf", Data::Text, true);
    expect_close(&server, None, vec![invalid], 1007).await
}

#[tokio::test]
async fn binary_frame_closes_1003() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let binary = Message::binary(br#"{"type":"ping"}"#.to_vec());
    expect_close(&server, Some("alice"), vec![binary], 1003).await?;
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn binary_frame_before_auth_closes_1003() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    expect_close(&server, None, vec![Message::binary(vec![0_u8, 1, 2])], 1003).await
}

#[tokio::test]
async fn continuation_without_a_start_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let orphan = data_frame(br#"{"type":"ping"}"#, Data::Continue, true);
    expect_close(&server, Some("alice"), vec![orphan], 1002).await
}

#[tokio::test]
async fn reserved_bits_are_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut frame = Frame::message(
        br#"{"type":"ping"}"#.to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    // RSV1 means permessage-deflate, which was not negotiated.
    frame.header_mut().rsv1 = true;
    expect_close(&server, Some("alice"), vec![Message::Frame(frame)], 1002).await
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let frames = [
        "",
        "hello",
        "{\"type\":\"ping\"",
        "[1,2,3]",
        "[{\"type\":\"ping\"}]",
        "\"ping\"",
        "42",
        "null",
        "{}",
        "{\"data\":{}}",
        "{\"type\":null}",
        "{\"type\":42}",
        "{\"type\":\"PING\"}",
        "{\"type\":\"teleport\",\"messageId\":\"t1\"}",
        "{\"type\":\"subscribe\",\"messageId\":\"s1\"}",
        "{\"type\":\"subscribe\",\"messageId\":\"s2\",\"data\":{\"topic\":42}}",
        "{\"type\":\"subscribe\",\"messageId\":\"s3\",\"data\":[\"room\"]}",
        "{\"type\":\"publish\",\"messageId\":\"p1\",\"data\":{\"topic\":\"room\"}}",
        "{\"type\":\"ping\",\"messageId\":7}",
        "{\"type\":\"ping\",\"timestamp\":\"soon\"}",
        "{\"type\":\"subscribe\",\"messageId\":\"d1\",\"data\":{\"topic\":\"room\",\"x\":DEEP}}",
    ];
    for raw in frames {
        let raw = raw.replace("DEEP", &deep);
        client.send_raw(Message::text(raw.clone())).await?;
        let reply = client.recv_data().await?;
        assert_eq!(reply["type"], "error", "{raw:.80}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{raw:.80}: {reply}");
        // A string messageId is echoed so the client can match the error.
        let id = serde_json::from_str::<Value>(&raw).ok().and_then(|v| {
            v.get("messageId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if let Some(id) = id {
            assert_eq!(reply["messageId"], id.as_str(), "{raw:.80}: {reply}");
        }
    }
    // Nothing above was acted on, and the connection still works.
    assert_eq!(server.stats().await?["subscriptions"], 0);
    client.subscribe("room").await?;
    server.publish("room", json!({"ok": true})).await?;
    assert_eq!(client.recv_data().await?["data"], json!({"ok": true}));
    Ok(())
}

#[tokio::test]
async fn fragmented_text_message_is_reassembled() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut client, _) = WsClient::connect_as(&server, "alice").await?;
    let text = r#"{"type":"subscribe","messageId":"frag","data":{"topic":"caf\u00e9-é"}}"#;
    let bytes = text.as_bytes();
    // Split inside the two-byte `é`, so UTF-8 is only valid once reassembled.
    let split = text.rfind('é').context("no é")? + 1;
    client
        .send_raw(data_frame(&bytes[..10], Data::Text, false))
        .await?;
    // A control frame may come between fragments.
    client
        .send_raw(Message::Ping(b"mid".to_vec().into()))
        .await?;
    client
        .send_raw(data_frame(&bytes[10..split], Data::Continue, false))
        .await?;
    client
        .send_raw(data_frame(&bytes[split..], Data::Continue, true))
        .await?;
    let reply = client.recv_data().await?;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["messageId"], "frag");
    assert_eq!(reply["data"]["topic"], "café-é");
    Ok(())
}

#[tokio::test]
async fn garbage_flood_does_not_disturb_another_client() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut good, _) = WsClient::connect_as(&server, "alice").await?;
    good.subscribe("room").await?;
    let (mut flooder, _) = WsClient::connect_as(&server, "mallory").await?;

    // The flooder never reads its replies; whatever happens to it, it must stay its problem.
    let flood = tokio::spawn(async move {
        for i in 0..3000_u32 {
            let junk = match i % 4 {
                0 => Message::text("not json at all"),
                1 => Message::text("[1,2,3]"),
                2 => Message::text(r#"{"type":"teleport","messageId":"x"}"#),
                _ => Message::text(r#"{"type":"subscribe","data":{"topic":"room"}}"#),
            };
            if flooder.send_raw(junk).await.is_err() {
                break;
            }
        }
        flooder
    });
    for n in 1..=50_u64 {
        let published = server.publish("room", json!({"n": n})).await?;
        assert_eq!(published["offset"], n);
    }
    for n in 1..=50_u64 {
        let message = good.recv_data().await?;
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["offset"], n, "{message}");
        assert_eq!(message["data"]["n"], n, "{message}");
    }
    let flooder = tokio::time::timeout(TIMEOUT, flood).await??;
    drop(flooder);

    // The good client is still fully served.
    let (reply, _) = good
        .request("ping", Value::Null)
        .await
        .context("good client lost")?;
    assert_eq!(reply["type"], "pong");
    Ok(())
}

#[tokio::test]
async fn websocket_ping_is_answered_and_counts_as_activity() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_HEARTBEAT_INTERVAL_MS", "200"),
        ("HERALD_STALE_TIMEOUT_MS", "600"),
    ])
    .await?;
    let url = server.ws_url(&format!("?token={}", token("alice", json!({}))));
    let (mut ws, _) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await??;

    // For 1.5 s (well past the stale timeout) the client only sends protocol pings, never a
    // JSON `pong`, and the server must keep the connection open and answer each ping.
    let mut ticker = tokio::time::interval(Duration::from_millis(150));
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut sent = 0_u32;
    let mut answered = 0_u32;
    let mut json_pings = 0;
    while tokio::time::Instant::now() < until {
        tokio::select! {
            _ = ticker.tick() => {
                sent += 1;
                ws.send(Message::Ping(format!("p{sent}").into_bytes().into())).await?;
            }
            message = ws.next() => match message.context("connection ended")?? {
                Message::Pong(payload) => {
                    answered += 1;
                    assert_eq!(payload.as_ref(), format!("p{answered}").as_bytes());
                }
                Message::Text(text) => json_pings += frames_in(&text).len(),
                Message::Close(frame) => bail!("closed while pinging: {frame:?}"),
                _ => {}
            },
        }
    }
    assert!(answered + 1 >= sent, "sent {sent} pings, {answered} pongs");
    assert!(json_pings >= 2, "the heartbeat kept running");

    // Silence now: the stale timeout closes it.
    assert_eq!(
        read_until_ended(&mut ws, |_| {}).await?,
        Ended::Closed(4000)
    );
    Ok(())
}

#[tokio::test]
async fn websocket_ping_before_auth_is_answered() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(server.ws_url("").as_str()),
    )
    .await??;
    ws.send(Message::Ping(b"hello".to_vec().into())).await?;
    let reply = tokio::time::timeout(TIMEOUT, ws.next())
        .await?
        .context("connection ended")??;
    assert_eq!(reply, Message::Pong(b"hello".to_vec().into()));
    Ok(())
}

#[tokio::test]
async fn raw_frames_of_a_well_behaved_client_are_served() -> anyhow::Result<()> {
    // The raw helpers themselves: a masked ping gets a pong, then a close is answered.
    let server = TestServer::start(&[]).await?;
    let mut bytes = raw_frame(0x1, br#"{"type":"ping","messageId":"r"}"#, true);
    bytes.extend(raw_frame(0x8, &1000_u16.to_be_bytes(), true));
    expect_raw_close(&server, &bytes, 1000).await
}

#[tokio::test]
async fn unmasked_client_frame_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let unmasked = raw_frame(0x1, br#"{"type":"ping"}"#, false);
    expect_raw_close(&server, &unmasked, 1002).await?;
    server.wait_for_stats(|s| s["connections"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn absurd_declared_frame_length_closes_1009_without_waiting() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_PAYLOAD_BYTES", "1024")]).await?;
    // A header announcing 2^62 bytes, followed by nothing: the server must not wait for them.
    let mut header = vec![0x81_u8, 0x80 | 127];
    header.extend_from_slice(&(1_u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    expect_raw_close(&server, &header, 1009).await
}

#[tokio::test]
async fn oversized_control_frame_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    expect_raw_close(&server, &raw_frame(0x9, &[b'p'; 200], true), 1002).await
}

#[tokio::test]
async fn unknown_opcode_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    expect_raw_close(&server, &raw_frame(0x3, b"??", true), 1002).await
}

#[tokio::test]
async fn new_message_inside_a_fragmented_one_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let frames = vec![
        data_frame(br#"{"type":"pi"#, Data::Text, false),
        data_frame(br#"{"type":"ping"}"#, Data::Text, true),
    ];
    expect_close(&server, Some("alice"), frames, 1002).await
}

#[tokio::test]
async fn close_frame_with_an_invalid_code_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    // 999 is below the range of close codes; 1005 must never be sent on the wire.
    for code in [999_u16, 1005] {
        expect_raw_close(&server, &raw_frame(0x8, &code.to_be_bytes(), true), 1002).await?;
    }
    Ok(())
}

#[tokio::test]
async fn close_reason_with_invalid_utf8_closes_1007() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut payload = 1000_u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye \xff");
    expect_raw_close(&server, &raw_frame(0x8, &payload, true), 1007).await
}
