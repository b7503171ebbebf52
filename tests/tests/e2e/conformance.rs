//! RFC 6455 conformance, with raw frames over TCP: against the echo endpoint
//! (`HERALD_ECHO_PATH`, which reads with `/ws`'s tungstenite settings and writes with its
//! hand-written data-frame writer) and, where the rule is the reader's, against `/ws` too:
//! fragmentation, control frames between fragments, UTF-8 (split inside a code point, and
//! refused at the chop that breaks it, before the frame is whole), close codes, control-frame
//! limits, reserved opcodes and bits, masking, and the writer's three length forms checked
//! against tungstenite's encoding.

use herald_tests::{
    ServerFrame, TestServer, client_frame, raw_exchange, read_close_code, read_server_frame,
    upgrade_head, upgrade_head_for,
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::{
    Frame,
    coding::{Data, OpCode},
};

/// The echo endpoint's path in these tests.
const ECHO: &str = "/echo";

/// FIN, set on the last frame of a message.
const FIN: u8 = 0x80;
/// Opcodes (RFC 6455, 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A server with the echo endpoint at [`ECHO`].
async fn echo_server() -> anyhow::Result<TestServer> {
    TestServer::start(&[("HERALD_ECHO_PATH", ECHO)]).await
}

/// A raw socket upgraded on the echo endpoint.
async fn echo_socket(server: &TestServer) -> anyhow::Result<TcpStream> {
    let (answer, stream) = raw_exchange(server, &upgrade_head_for(server, ECHO, &[])).await?;
    anyhow::ensure!(answer.status == 101, "not upgraded: {answer:?}");
    Ok(stream)
}

/// A raw socket upgraded on `/ws` without a token (the server asks for `auth` in-band).
async fn ws_socket(server: &TestServer) -> anyhow::Result<TcpStream> {
    let (answer, stream) = raw_exchange(server, &upgrade_head(server, "", &[])).await?;
    anyhow::ensure!(answer.status == 101, "not upgraded: {answer:?}");
    Ok(stream)
}

/// Writes each frame in turn.
async fn send(stream: &mut TcpStream, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    for frame in frames {
        stream.write_all(frame).await?;
    }
    Ok(())
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(first, payload, true)
}

/// A close frame from the client with `code` and `reason`.
fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(FIN | CLOSE, &payload)
}

/// The next server frame, which must exist.
async fn next(stream: &mut TcpStream) -> anyhow::Result<ServerFrame> {
    read_server_frame(stream)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the server ended the connection"))
}

/// Asserts the next frame is a final `opcode` frame carrying `payload`.
async fn expect_message(stream: &mut TcpStream, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
    let frame = next(stream).await?;
    assert_eq!(
        (frame.fin(), frame.opcode(), frame.payload.as_slice()),
        (true, opcode, payload),
        "{frame:?}"
    );
    Ok(())
}

/// Sends `frames` on a fresh echo connection and on a fresh `/ws` connection (the reader is the
/// same) and asserts both close with `code`.
async fn both_close_with(server: &TestServer, frames: &[Vec<u8>], code: u16) -> anyhow::Result<()> {
    let mut echo = echo_socket(server).await?;
    send(&mut echo, frames).await?;
    assert_eq!(
        read_close_code(&mut echo).await?,
        Some(code),
        "echo: {frames:02x?}"
    );
    let mut ws = ws_socket(server).await?;
    send(&mut ws, frames).await?;
    assert_eq!(
        read_close_code(&mut ws).await?,
        Some(code),
        "/ws: {frames:02x?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_echo_endpoint_is_off_unless_configured() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let (answer, _) = raw_exchange(&server, &upgrade_head_for(&server, ECHO, &[])).await?;
    answer.assert_refused(404, "not_found");
    Ok(())
}

#[tokio::test]
async fn text_and_binary_messages_are_echoed_without_a_token() -> anyhow::Result<()> {
    let server = echo_server().await?;
    let mut stream = echo_socket(&server).await?;
    send(
        &mut stream,
        &[
            frame(FIN | TEXT, "héllo".as_bytes()),
            frame(FIN | BINARY, &[0, 0xff, 0x80]),
            frame(FIN | TEXT, b""),
        ],
    )
    .await?;
    expect_message(&mut stream, TEXT, "héllo".as_bytes()).await?;
    expect_message(&mut stream, BINARY, &[0, 0xff, 0x80]).await?;
    expect_message(&mut stream, TEXT, b"").await?;
    Ok(())
}

#[tokio::test]
async fn fragmented_messages_are_echoed_whole() -> anyhow::Result<()> {
    let server = echo_server().await?;
    let mut stream = echo_socket(&server).await?;
    send(
        &mut stream,
        &[
            frame(TEXT, b"Hel"),
            frame(CONTINUATION, b""),
            frame(CONTINUATION, b"lo, "),
            frame(FIN | CONTINUATION, b"world"),
            frame(BINARY, &[1, 2]),
            frame(FIN | CONTINUATION, &[3]),
        ],
    )
    .await?;
    expect_message(&mut stream, TEXT, b"Hello, world").await?;
    expect_message(&mut stream, BINARY, &[1, 2, 3]).await?;
    Ok(())
}

#[tokio::test]
async fn a_ping_between_fragments_is_answered_before_the_message_ends() -> anyhow::Result<()> {
    let server = echo_server().await?;
    let mut stream = echo_socket(&server).await?;
    send(
        &mut stream,
        &[frame(TEXT, b"frag"), frame(FIN | PING, b"between")],
    )
    .await?;
    // The message is not complete, so the pong can only be an answer in between.
    expect_message(&mut stream, PONG, b"between").await?;
    send(
        &mut stream,
        &[
            frame(CONTINUATION, b"men"),
            frame(FIN | PONG, b"unsolicited"),
            frame(FIN | CONTINUATION, b"ted"),
        ],
    )
    .await?;
    // An unsolicited pong is ignored (RFC 6455, 5.5.3).
    expect_message(&mut stream, TEXT, b"fragmented").await?;
    Ok(())
}

#[tokio::test]
async fn fragmentation_errors_close_1002() -> anyhow::Result<()> {
    let server = echo_server().await?;
    // A continuation with no message to continue.
    both_close_with(&server, &[frame(FIN | CONTINUATION, b"orphan")], 1002).await?;
    // A new data frame inside a fragmented message.
    for opcode in [TEXT, BINARY] {
        both_close_with(
            &server,
            &[frame(TEXT, b"start"), frame(FIN | opcode, b"intruder")],
            1002,
        )
        .await?;
    }
    // A fragmented control frame.
    both_close_with(&server, &[frame(PING, b"not final")], 1002).await
}

#[tokio::test]
async fn invalid_utf8_closes_1007_but_a_code_point_split_across_fragments_is_accepted()
-> anyhow::Result<()> {
    let server = echo_server().await?;
    // "€" is E2 82 AC and "é" C3 A9: split inside each, valid once joined.
    let mut stream = echo_socket(&server).await?;
    send(
        &mut stream,
        &[
            frame(TEXT, b"price \xe2\x82"),
            frame(CONTINUATION, b"\xac caf\xc3"),
            frame(FIN | CONTINUATION, b"\xa9"),
        ],
    )
    .await?;
    expect_message(&mut stream, TEXT, "price € café".as_bytes()).await?;

    for frames in [
        vec![frame(FIN | TEXT, b"bad \xff byte")],
        vec![frame(FIN | TEXT, b"\xc0\xaf")],
        vec![frame(FIN | TEXT, b"\xed\xa0\x80")],
        // Truncated at the end of the message.
        vec![frame(TEXT, b"ok"), frame(FIN | CONTINUATION, b"\xe2\x82")],
        // Invalid in a fragment.
        vec![
            frame(TEXT, b"ok"),
            frame(FIN | CONTINUATION, b"\xf8\x88\x80\x80\x80"),
        ],
        // A close reason that is not UTF-8.
        vec![frame(FIN | CLOSE, b"\x03\xe8\xff")],
    ] {
        both_close_with(&server, &frames, 1007).await?;
    }
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_closes_1007_at_the_chop_that_breaks_it_before_the_rest_of_the_frame()
-> anyhow::Result<()> {
    let server = echo_server().await?;
    // Autobahn 6.4.1's message: "κόσμε" (11 bytes), then U+110000 in UTF-8's form (no code
    // point), then "edited"; sent as one frame whose end never comes.
    let message = ["κόσμε".as_bytes(), b"\xf4\x90\x80\x80", b"edited"].concat();
    let whole = frame(FIN | TEXT, &message);
    let header = whole.len() - message.len();
    // Autobahn 6.4.3: the valid start, then the bad code point; 6.4.4: the valid start and
    // 0xf4, then the one byte (0x90) that no code point continues with.
    for (first, bad) in [(header + 11, header + 15), (header + 12, header + 13)] {
        for path in ["echo", "/ws"] {
            let mut stream = if path == "echo" {
                echo_socket(&server).await?
            } else {
                ws_socket(&server).await?
            };
            stream.set_nodelay(true)?;
            stream.write_all(&whole[..first]).await?;
            stream.write_all(&whole[first..bad]).await?;
            // The rest of the frame is not sent: the close must not wait for it.
            assert_eq!(
                read_close_code(&mut stream).await?,
                Some(1007),
                "{path}: chops at {first} and {bad}"
            );
            // The server is done with the connection; the rest changes nothing.
            let _ = stream.write_all(&whole[bad..]).await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn valid_close_codes_are_echoed_and_invalid_ones_close_1002() -> anyhow::Result<()> {
    let server = echo_server().await?;
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999,
    ] {
        let mut stream = echo_socket(&server).await?;
        send(&mut stream, &[close(code, "bye")]).await?;
        let reply = next(&mut stream).await?;
        assert_eq!(reply.close_code(), Some(code), "{reply:?}");
        // The server closes the TCP connection after the close handshake.
        assert_eq!(read_server_frame(&mut stream).await?, None);
    }
    // A close without a payload is answered with one without a code.
    let mut stream = echo_socket(&server).await?;
    send(&mut stream, &[frame(FIN | CLOSE, b"")]).await?;
    assert_eq!(read_close_code(&mut stream).await?, Some(1005));

    // Autobahn's 7.9.* codes, and beyond the range.
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        both_close_with(&server, &[close(code, "")], 1002).await?;
    }
    // A payload of one byte cannot hold a code.
    both_close_with(&server, &[frame(FIN | CLOSE, &[0x03])], 1002).await
}

#[tokio::test]
async fn control_frames_over_125_bytes_close_1002() -> anyhow::Result<()> {
    let server = echo_server().await?;
    let mut stream = echo_socket(&server).await?;
    send(&mut stream, &[frame(FIN | PING, &[b'p'; 125])]).await?;
    expect_message(&mut stream, PONG, &[b'p'; 125]).await?;
    for opcode in [PING, PONG, CLOSE] {
        both_close_with(&server, &[frame(FIN | opcode, &[b'x'; 126])], 1002).await?;
    }
    Ok(())
}

#[tokio::test]
async fn reserved_opcodes_and_bits_close_1002() -> anyhow::Result<()> {
    let server = echo_server().await?;
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        both_close_with(&server, &[frame(FIN | opcode, b"")], 1002).await?;
    }
    // No extension is negotiated, so every RSV bit is reserved.
    for rsv in [0x40, 0x20, 0x10] {
        both_close_with(&server, &[frame(FIN | rsv | TEXT, b"hi")], 1002).await?;
        both_close_with(&server, &[frame(FIN | rsv | PING, b"")], 1002).await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_1002() -> anyhow::Result<()> {
    let server = echo_server().await?;
    both_close_with(&server, &[client_frame(FIN | TEXT, b"hi", false)], 1002).await?;
    both_close_with(&server, &[client_frame(FIN | PING, b"", false)], 1002).await
}

#[tokio::test]
async fn echoed_frames_are_encoded_as_tungstenite_encodes_them() -> anyhow::Result<()> {
    let server = echo_server().await?;
    let mut stream = echo_socket(&server).await?;
    // Each length form: 7 bits, 16 bits (126) and 64 bits (127), at their edges.
    for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        for (opcode, data) in [(TEXT, Data::Text), (BINARY, Data::Binary)] {
            let payload = vec![b'a' + u8::try_from(len % 26)?; len];
            send(&mut stream, &[frame(FIN | opcode, &payload)]).await?;
            let echoed = next(&mut stream).await?;
            let mut expected = Vec::new();
            Frame::message(payload, OpCode::Data(data), true).format(&mut expected)?;
            assert!(echoed.raw == expected, "length {len}, opcode {opcode}");
        }
    }
    Ok(())
}
