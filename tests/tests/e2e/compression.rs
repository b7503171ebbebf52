//! permessage-deflate (RFC 7692) with raw frames over TCP: the negotiation on both paths to a
//! WebSocket (accepted, declined, refused), compressed server frames that inflate to the exact
//! message, compressed client frames, one broadcast sent compressed to some subscribers and
//! plain to others, the threshold (live), the switch, the inflated-size limit, and the echo
//! endpoint; and two clients that compress on their own, Python's `websockets` and Chromium's
//! WebSocket.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::time::Duration;

use anyhow::Context as _;
use herald_tests::{
    Browser, ServerFrame, StaticSite, TestServer, client_frame, metric, python_websockets,
    raw_exchange, read_close_code, read_head, read_server_frame, read_until_contains, token,
    upgrade_head, upgrade_head_for,
};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, process::Command};

/// What Chromium offers.
const OFFER: &str = "permessage-deflate; client_max_window_bits";
/// What the server answers to it.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The tail RFC 7692 strips from a compressed message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// First bytes: FIN and a text opcode, with RSV1 (compressed) or without.
const COMPRESSED_TEXT: u8 = 0xc1;
const PLAIN_TEXT: u8 = 0x81;

/// A publication of about 4 KiB of JSON, which compresses well.
fn large_data() -> Value {
    let items: Vec<Value> = (0..60)
        .map(|i| json!({"id": i, "user": format!("user-{}", i % 7), "status": "running", "progress": i * 3}))
        .collect();
    json!({"items": items})
}

/// `message` compressed as a client does: raw deflate, sync-flushed, the tail stripped.
fn deflate(message: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    compressor
        .compress_vec(message, &mut out, FlushCompress::Sync)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.ends_with(&TAIL), "the buffer was too small");
    out.truncate(out.len() - TAIL.len());
    out
}

/// A compressed payload inflated as a client does (the tail appended).
fn inflate(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(64 * 1024);
    inflater.decompress_vec(&input, &mut out, FlushDecompress::Sync)?;
    anyhow::ensure!(
        inflater.total_in() == input.len() as u64,
        "not all inflated"
    );
    Ok(out)
}

/// A raw socket upgraded on `/ws` as `sub` with `extensions` offered (none when empty), past
/// `connected`; with the 101's `Sec-WebSocket-Extensions`.
async fn socket(
    server: &TestServer,
    sub: &str,
    extensions: &str,
) -> anyhow::Result<(TcpStream, Option<String>)> {
    let query = format!("?token={}", token(sub, json!({})));
    let extra: Vec<(&str, &str)> = if extensions.is_empty() {
        Vec::new()
    } else {
        vec![("Sec-WebSocket-Extensions", extensions)]
    };
    let mut stream = TcpStream::connect(server.addr).await?;
    stream
        .write_all(upgrade_head(server, &query, &extra).as_bytes())
        .await?;
    // Read byte by byte: `connected` follows the head at once.
    let head = read_head(&mut stream).await?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
    let extensions = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    });
    let connected = text_of(&next_frame(&mut stream).await?)?;
    anyhow::ensure!(connected["type"] == "connected", "{connected}");
    Ok((stream, extensions))
}

/// The next server frame, failing when there is none.
async fn next_frame(stream: &mut TcpStream) -> anyhow::Result<ServerFrame> {
    read_server_frame(stream)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the connection ended"))
}

/// A text frame's JSON, inflated first when RSV1 is set.
fn text_of(frame: &ServerFrame) -> anyhow::Result<Value> {
    let bytes = match frame.first {
        COMPRESSED_TEXT => inflate(&frame.payload)?,
        PLAIN_TEXT => frame.payload.clone(),
        other => anyhow::bail!("not a final text frame: {other:#x}"),
    };
    Ok(serde_json::from_slice(&bytes)?)
}

/// Subscribes to `topic` with a plain (or, when `compressed`, a compressed) client frame and
/// waits for the ack.
async fn subscribe(stream: &mut TcpStream, topic: &str, compressed: bool) -> anyhow::Result<()> {
    let request = json!({"type": "subscribe", "messageId": "s", "data": {"topic": topic}});
    let bytes = serde_json::to_vec(&request)?;
    let frame = if compressed {
        client_frame(COMPRESSED_TEXT, &deflate(&bytes), true)
    } else {
        client_frame(PLAIN_TEXT, &bytes, true)
    };
    stream.write_all(&frame).await?;
    let reply = text_of(&next_frame(stream).await?)?;
    anyhow::ensure!(reply["type"] == "ack", "{reply}");
    Ok(())
}

/// The value of `series` on `/metrics`, zero when absent.
async fn metric_value(server: &TestServer, series: &str) -> anyhow::Result<f64> {
    let (_, _, text) = server.request_text("GET", "/metrics", None).await?;
    Ok(metric(&text, series).unwrap_or(0.0))
}

#[tokio::test]
async fn a_client_that_negotiated_receives_a_compressed_frame_of_the_exact_message()
-> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut stream, extensions) = socket(&server, "alice", OFFER).await?;
    assert_eq!(extensions.as_deref(), Some(ANSWER));
    subscribe(&mut stream, "chat:1", false).await?;
    let data = large_data();
    server.publish("chat:1", data.clone()).await?;
    let frame = next_frame(&mut stream).await?;
    assert_eq!(frame.first, COMPRESSED_TEXT, "not compressed");
    let plain_len = inflate(&frame.payload)?.len();
    assert!(plain_len > 3_000, "{plain_len}");
    assert!(
        frame.payload.len() * 4 < plain_len,
        "{} bytes for {plain_len}",
        frame.payload.len()
    );
    let message = text_of(&frame)?;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["data"], data);
    assert_eq!(
        metric_value(
            &server,
            "herald_compressed_messages_total{direction=\"out\"}"
        )
        .await?,
        1.0
    );
    assert!(metric_value(&server, "herald_compression_saved_bytes_total").await? > 2_000.0);
    Ok(())
}

#[tokio::test]
async fn a_compressed_client_frame_is_understood() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (mut stream, _) = socket(&server, "alice", OFFER).await?;
    subscribe(&mut stream, "chat:1", true).await?;
    // In fragments, a ping between them.
    let request = serde_json::to_vec(
        &json!({"type": "subscribe", "messageId": "t", "data": {"topic": "chat:2"}}),
    )?;
    let compressed = deflate(&request);
    let half = compressed.len() / 2;
    stream
        .write_all(&client_frame(0x41, &compressed[..half], true))
        .await?;
    stream.write_all(&client_frame(0x89, b"p", true)).await?;
    stream
        .write_all(&client_frame(0x80, &compressed[half..], true))
        .await?;
    let pong = next_frame(&mut stream).await?;
    assert_eq!(
        (pong.first, pong.payload.as_slice()),
        (0x8a, b"p".as_slice())
    );
    let reply = text_of(&next_frame(&mut stream).await?)?;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["messageId"], "t", "{reply}");
    server.publish("chat:2", json!({"n": 2})).await?;
    assert_eq!(
        text_of(&next_frame(&mut stream).await?)?["data"],
        json!({"n": 2})
    );
    assert_eq!(
        metric_value(
            &server,
            "herald_compressed_messages_total{direction=\"in\"}"
        )
        .await?,
        2.0
    );
    Ok(())
}

#[tokio::test]
async fn a_broadcast_goes_compressed_to_some_subscribers_and_plain_to_others() -> anyhow::Result<()>
{
    let server = TestServer::start(&[]).await?;
    let mut compressed = Vec::new();
    let mut plain = Vec::new();
    for i in 0..3 {
        let (mut stream, _) = socket(&server, &format!("c{i}"), OFFER).await?;
        subscribe(&mut stream, "news", false).await?;
        compressed.push(stream);
        let (mut stream, extensions) = socket(&server, &format!("p{i}"), "").await?;
        assert_eq!(extensions, None);
        subscribe(&mut stream, "news", false).await?;
        plain.push(stream);
    }
    server.publish("news", large_data()).await?;
    let mut payloads = Vec::new();
    for stream in &mut compressed {
        let frame = next_frame(stream).await?;
        assert_eq!(frame.first, COMPRESSED_TEXT);
        payloads.push(frame.payload);
    }
    // One compressed copy, the same bytes for every subscriber that negotiated.
    assert!(payloads.windows(2).all(|w| w[0] == w[1]));
    let inflated = inflate(&payloads[0])?;
    for stream in &mut plain {
        let frame = next_frame(stream).await?;
        assert_eq!(frame.first, PLAIN_TEXT);
        assert_eq!(frame.payload, inflated, "the same message either way");
    }
    Ok(())
}

#[tokio::test]
async fn below_the_threshold_nothing_is_compressed_and_the_threshold_is_live() -> anyhow::Result<()>
{
    let server = TestServer::start(&[("HERALD_COMPRESSION_THRESHOLD_BYTES", "1024")]).await?;
    let (mut stream, _) = socket(&server, "alice", OFFER).await?;
    subscribe(&mut stream, "chat:1", false).await?;
    // About 300 bytes of repetitive JSON: it would compress, but is under the threshold.
    let data = json!({"text": "hello ".repeat(40)});
    server.publish("chat:1", data.clone()).await?;
    let frame = next_frame(&mut stream).await?;
    assert_eq!(frame.first, PLAIN_TEXT);
    assert_eq!(text_of(&frame)?["data"], data);

    server
        .patch_runtime(&json!({"compression_threshold_bytes": 100}))
        .await?;
    server.publish("chat:1", data.clone()).await?;
    let frame = next_frame(&mut stream).await?;
    assert_eq!(frame.first, COMPRESSED_TEXT, "the new threshold applies");
    assert_eq!(text_of(&frame)?["data"], data);
    Ok(())
}

#[tokio::test]
async fn with_compression_switched_off_offers_are_declined() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_COMPRESSION_ENABLED", "false")]).await?;
    let (mut stream, extensions) = socket(&server, "alice", OFFER).await?;
    assert_eq!(extensions, None);
    subscribe(&mut stream, "chat:1", false).await?;
    server.publish("chat:1", large_data()).await?;
    assert_eq!(next_frame(&mut stream).await?.first, PLAIN_TEXT);
    // Not negotiated, a compressed frame breaks RFC 6455: 1002.
    let bytes = deflate(br#"{"type":"ping"}"#);
    stream
        .write_all(&client_frame(COMPRESSED_TEXT, &bytes, true))
        .await?;
    assert_eq!(read_close_code(&mut stream).await?, Some(1002));
    Ok(())
}

#[tokio::test]
async fn offers_are_honoured_declined_or_refused() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    // The first offer has a parameter the server does not know: the second is taken.
    let (_, extensions) = socket(
        &server,
        "alice",
        "permessage-deflate; x-unknown, permessage-deflate; client_no_context_takeover; \
         server_max_window_bits=10",
    )
    .await?;
    assert_eq!(
        extensions.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        )
    );
    // Only unknown offers: no extension.
    let (_, extensions) = socket(&server, "alice", "permessage-deflate; x-unknown").await?;
    assert_eq!(extensions, None);
    // Bad parameters and broken headers: a 400 that says why.
    for (offer, says) in [
        (
            "permessage-deflate; server_max_window_bits=20",
            "server_max_window_bits must be an integer from 8 to 15",
        ),
        (
            "permessage-deflate; client_no_context_takeover=yes",
            "client_no_context_takeover takes no value",
        ),
        (
            "permessage-deflate;;",
            "malformed Sec-WebSocket-Extensions header",
        ),
    ] {
        let query = format!("?token={}", token("alice", json!({})));
        let head = upgrade_head(&server, &query, &[("Sec-WebSocket-Extensions", offer)]);
        let (answer, _) = raw_exchange(&server, &head).await?;
        answer.assert_refused(400, "bad_request");
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{offer}: {message}");
    }
    Ok(())
}

#[tokio::test]
async fn a_small_client_window_gets_only_messages_that_fit_it_compressed() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_COMPRESSION_THRESHOLD_BYTES", "100")]).await?;
    let (mut stream, _) = socket(
        &server,
        "alice",
        "permessage-deflate; server_max_window_bits=9",
    )
    .await?;
    subscribe(&mut stream, "chat:1", false).await?;
    let short = json!({"text": "hi ".repeat(60)});
    server.publish("chat:1", short.clone()).await?;
    let frame = next_frame(&mut stream).await?;
    assert_eq!(frame.first, COMPRESSED_TEXT, "fits the 512-byte window");
    assert_eq!(text_of(&frame)?["data"], short);
    server.publish("chat:1", large_data()).await?;
    assert_eq!(next_frame(&mut stream).await?.first, PLAIN_TEXT);
    Ok(())
}

#[tokio::test]
async fn a_compressed_message_inflating_past_the_limit_closes_1009() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_MAX_PAYLOAD_BYTES", "65536")]).await?;
    let (mut stream, _) = socket(&server, "alice", OFFER).await?;
    // 8 MiB of one byte: a few kilobytes on the wire.
    let bomb = deflate(&vec![b' '; 8 << 20]);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    stream
        .write_all(&client_frame(COMPRESSED_TEXT, &bomb, true))
        .await?;
    assert_eq!(read_close_code(&mut stream).await?, Some(1009));
    // Garbage that does not inflate: 1002.
    let (mut stream, _) = socket(&server, "alice", OFFER).await?;
    stream
        .write_all(&client_frame(COMPRESSED_TEXT, &[0xff; 16], true))
        .await?;
    assert_eq!(read_close_code(&mut stream).await?, Some(1002));
    Ok(())
}

#[tokio::test]
async fn compression_is_negotiated_on_hypers_path_too() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let mut stream = TcpStream::connect(server.addr).await?;
    let query = format!("?token={}", token("alice", json!({})));
    let plain = format!("GET /nowhere HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let upgrade = upgrade_head(&server, &query, &[("Sec-WebSocket-Extensions", OFFER)]);
    stream
        .write_all(format!("{plain}{upgrade}").as_bytes())
        .await?;
    let read = read_until_contains(&mut stream, "server_no_context_takeover").await?;
    let answer = read
        .split("HTTP/1.1 101")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no 101: {read}"))?;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("sec-websocket-extensions: {ANSWER}")),
        "{answer}"
    );
    Ok(())
}

#[tokio::test]
async fn the_echo_endpoint_speaks_compression_for_conformance_suites() -> anyhow::Result<()> {
    let server = TestServer::start(&[
        ("HERALD_ECHO_PATH", "/echo"),
        ("HERALD_COMPRESSION_THRESHOLD_BYTES", "0"),
    ])
    .await?;
    let head = upgrade_head_for(&server, "/echo", &[("Sec-WebSocket-Extensions", OFFER)]);
    let (answer, mut stream) = raw_exchange(&server, &head).await?;
    assert_eq!(answer.status, 101);
    assert_eq!(answer.header("sec-websocket-extensions"), Some(ANSWER));
    let message = "echo echo echo echo echo echo";
    stream
        .write_all(&client_frame(
            COMPRESSED_TEXT,
            &deflate(message.as_bytes()),
            true,
        ))
        .await?;
    let frame = next_frame(&mut stream).await?;
    assert_eq!(frame.first, COMPRESSED_TEXT);
    assert_eq!(inflate(&frame.payload)?, message.as_bytes());
    // What does not shrink goes plain.
    stream
        .write_all(&client_frame(0xc2, &deflate(b"x"), true))
        .await?;
    let frame = next_frame(&mut stream).await?;
    assert_eq!(
        (frame.first, frame.payload.as_slice()),
        (0x82, b"x".as_slice())
    );
    Ok(())
}

/// A Python `websockets` client (which offers permessage-deflate and compresses what it sends):
/// subscribes to `chat:1`, publishes `data` there itself and prints, as one JSON line, the
/// extensions it negotiated and the data of the message it got back.
const PYTHON_CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def main(url, data):
    async with connect(url, max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "subscribe", "messageId": "s", "data": {"topic": "chat:1"}}))
        assert json.loads(await ws.recv())["type"] == "ack"
        await ws.send(json.dumps({"type": "publish", "messageId": "p", "data": {"topic": "chat:1", "data": json.loads(data)}}))
        while True:
            frame = json.loads(await ws.recv())
            # The reply and the message may come in one `batch` frame.
            for one in frame["data"] if frame["type"] == "batch" else [frame]:
                if one["type"] == "message":
                    print(json.dumps({"extensions": extensions, "data": one["data"]}))
                    return

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn pythons_websockets_client_negotiates_and_exchanges_compressed_messages()
-> anyhow::Result<()> {
    let python = python_websockets().await?;
    let server = TestServer::start(&[]).await?;
    let data = large_data();
    let url = server.ws_url(&format!("?token={}", token("alice", json!({}))));
    let run = Command::new(python)
        .args(["-c", PYTHON_CLIENT, &url, &data.to_string()])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .context("the Python client did not finish")??;
    anyhow::ensure!(
        output.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(result["extensions"], ANSWER);
    assert_eq!(result["data"], data);
    // It compressed what it sent (subscribe, publish), and got the message compressed.
    assert!(
        metric_value(
            &server,
            "herald_compressed_messages_total{direction=\"in\"}"
        )
        .await?
            >= 2.0
    );
    assert_eq!(
        metric_value(
            &server,
            "herald_compressed_messages_total{direction=\"out\"}"
        )
        .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn chromiums_websocket_negotiates_and_exchanges_compressed_messages() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_ALLOWED_ORIGINS", "*")]).await?;
    let page = include_str!("../../pages/compression.html");
    let site = StaticSite::serve(vec![(
        "/",
        "text/html; charset=utf-8",
        page.as_bytes().to_vec(),
    )])
    .await?;
    let browser = Browser::launch().await?;
    browser.navigate(&site.url("/")).await?;
    let url = server.ws_url(&format!("?token={}", token("alice", json!({}))));
    let extensions = browser
        .evaluate(&format!("window.start({}, \"chat:1\")", json!(url)))
        .await?;
    assert_eq!(extensions, json!(ANSWER));
    let data = large_data();
    browser
        .evaluate(&format!("window.publish(\"chat:1\", {data}), true"))
        .await?;
    browser
        .wait_for("window.log.messages.length", &json!(1))
        .await?;
    assert_eq!(browser.evaluate("window.log.messages[0]").await?, data);
    assert!(
        metric_value(
            &server,
            "herald_compressed_messages_total{direction=\"in\"}"
        )
        .await?
            >= 1.0
    );
    assert_eq!(
        metric_value(
            &server,
            "herald_compressed_messages_total{direction=\"out\"}"
        )
        .await?,
        1.0
    );
    Ok(())
}
