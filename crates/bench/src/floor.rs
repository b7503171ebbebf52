//! `herald-bench floor`: the cheapest server the churn client can talk to, for the floor under
//! Herald's churn figure.
//!
//! It accepts, reads the upgrade request, answers the 101 and a fixed `connected` frame in one
//! write, reads the `subscribe` frame and answers a fixed `ack`, then answers the client's
//! close with its own and closes: the same system calls and bytes the churn cycle needs from
//! any server, and nothing else (no token check, no state, no JSON). What Herald spends above
//! this per cycle is Herald's; what this spends is the kernel's TCP lifecycle and the runtime.
//! Run it pinned like the servers under test (`cargo xtask bench --scenario churn` does).

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The `connected` frame (unmasked text), as the client expects it.
const CONNECTED: &[u8] = b"\x81\x21{\"type\":\"connected\",\"floor\":true}";
/// The `ack` of the client's `subscribe` (its `messageId` is `s`).
const ACK: &[u8] = b"\x81\x1e{\"type\":\"ack\",\"messageId\":\"s\"}";
/// An empty close frame.
const CLOSE: &[u8] = b"\x88\x00";
/// Read buffer per connection: a handshake with a token fits.
const BUFFER_BYTES: usize = 2048;

/// Serves churn clients on `addr` until the process is killed.
pub(crate) async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("herald-bench: floor server on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            // A client that misbehaves just loses its connection.
            let _ = cycle(stream).await;
        });
    }
}

/// One connection: handshake, subscribe, close.
async fn cycle(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = Vec::with_capacity(BUFFER_BYTES);
    let head_len = loop {
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let key = header_value(&buffer[..head_len], b"sec-websocket-key").unwrap_or_default();
    let mut greeting = Vec::with_capacity(160);
    greeting.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-accept: ",
    );
    greeting.extend_from_slice(derive_accept_key(key).as_bytes());
    greeting.extend_from_slice(b"\r\n\r\n");
    greeting.extend_from_slice(CONNECTED);
    stream.write_all(&greeting).await?;
    buffer.drain(..head_len);
    // The subscribe frame, then the ack.
    let Some(len) = read_frame(&mut stream, &mut buffer).await? else {
        return Ok(());
    };
    buffer.drain(..len);
    stream.write_all(ACK).await?;
    // The client's close, then ours.
    if read_frame(&mut stream, &mut buffer).await?.is_some() {
        stream.write_all(CLOSE).await?;
    }
    Ok(())
}

/// Reads until `buffer` holds one whole client frame; its length, or `None` at EOF.
async fn read_frame(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(len) = frame_len(buffer)
            && buffer.len() >= len
        {
            return Ok(Some(len));
        }
        if stream.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

/// The length of the (masked) frame at the start of `bytes`, once its header is complete.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let second = *bytes.get(1)?;
    let mask = if second & 0x80 == 0 { 0 } else { 4 };
    let (header, payload) = match second & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (10, usize::try_from(u64::from_be_bytes(raw)).ok()?)
        }
        short => (2, usize::from(short)),
    };
    Some(header + mask + payload)
}

/// The value of header `name` (lower case) in a request head.
fn header_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|b| *b == b'\n').find_map(|line| {
        let colon = line.iter().position(|b| *b == b':')?;
        let (field, value) = line.split_at(colon);
        field
            .eq_ignore_ascii_case(name)
            .then(|| value[1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_frames_carry_their_lengths() {
        for frame in [CONNECTED, ACK] {
            assert_eq!(usize::from(frame[1]), frame.len() - 2);
            let json: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
            assert!(json["type"].is_string());
        }
    }

    #[test]
    fn frame_lengths_are_read_from_the_header() {
        assert_eq!(frame_len(&[0x81]), None);
        assert_eq!(frame_len(&[0x81, 0x85]), Some(11));
        assert_eq!(frame_len(&[0x88, 0x80]), Some(6));
        assert_eq!(frame_len(&[0x81, 0xfe, 0x01, 0x00]), Some(264));
        assert_eq!(frame_len(&[0x81, 0xfe, 0x01]), None);
    }

    #[test]
    fn header_values_are_found_case_blind() {
        let head = b"GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: abc==\r\n\r\n";
        assert_eq!(
            header_value(head, b"sec-websocket-key"),
            Some(&b"abc=="[..])
        );
        assert_eq!(header_value(head, b"origin"), None);
    }
}
