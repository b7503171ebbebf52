//! HTTP and WebSocket frames written and read by hand over TCP, for what a ready-made client
//! would not send or would hide: upgrade requests with chosen headers, the exact response head,
//! frames that break RFC 6455 and the exact bytes of the server's frames, and whether and when
//! the server closes the socket.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{TIMEOUT, server::TestServer};

/// A well-formed `Sec-WebSocket-Key` (the RFC 6455 sample).
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// What the server answered to a request written by hand.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
}

impl RawAnswer {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of the body.
    pub fn error_code(&self) -> &Value {
        &self.body["error"]["code"]
    }

    /// Asserts this is a refusal with `status` and `code`, and not an upgrade.
    #[track_caller]
    pub fn assert_refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "answer: {self:?}");
        assert_eq!(self.error_code(), code, "answer: {self:?}");
        assert!(
            self.header("sec-websocket-accept").is_none(),
            "a refusal must not upgrade: {self:?}"
        );
    }
}

/// Writes `head` (a complete request head, ending with an empty line) and reads the response
/// head and its `Content-Length` body. Returns the socket too, so a 101 can be used further.
pub async fn raw_exchange(
    server: &TestServer,
    head: &str,
) -> anyhow::Result<(RawAnswer, TcpStream)> {
    let mut stream = TcpStream::connect(server.addr).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut buffer = Vec::new();
    let head_end = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(at + 4);
            }
            let mut chunk = [0_u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "the server closed before a response head: {:?}",
                    String::from_utf8_lossy(&buffer)
                );
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .context("no response head within the timeout")??;
    let text = String::from_utf8(buffer[..head_end].to_vec())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("no status code")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Ok(0), |(_, v)| v.parse())?;
    let mut body = buffer[head_end..].to_vec();
    if status != 101 {
        tokio::time::timeout(TIMEOUT, async {
            while body.len() < length {
                let mut chunk = [0_u8; 1024];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("the body ended early");
                }
                body.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        })
        .await
        .context("no complete body within the timeout")??;
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((
        RawAnswer {
            status,
            headers,
            body,
        },
        stream,
    ))
}

/// A complete, valid upgrade request head for `GET /ws{query}` with `extra` headers.
pub fn upgrade_head(server: &TestServer, query: &str, extra: &[(&str, &str)]) -> String {
    upgrade_head_for(server, &format!("/ws{query}"), extra)
}

/// A complete, valid upgrade request head for `GET {target}` with `extra` headers.
pub fn upgrade_head_for(server: &TestServer, target: &str, extra: &[(&str, &str)]) -> String {
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n",
        server.addr
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends a valid upgrade request with `query` and `extra` headers and returns the answer.
pub async fn try_upgrade(
    server: &TestServer,
    query: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<RawAnswer> {
    Ok(raw_exchange(server, &upgrade_head(server, query, extra))
        .await?
        .0)
}

/// Reads one response head byte by byte (so nothing after it is consumed) and returns it.
pub async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream
                .read_u8()
                .await
                .context("closed before a response head")?;
            head.push(byte);
        }
        anyhow::Ok(())
    })
    .await
    .context("no response head within the timeout")??;
    Ok(String::from_utf8(head)?)
}

/// Reads until what arrived contains `needle` and returns it all, as text; fails when the
/// server closes first or after [`TIMEOUT`].
pub async fn read_until_contains(stream: &mut TcpStream, needle: &str) -> anyhow::Result<String> {
    let mut received = String::new();
    tokio::time::timeout(TIMEOUT, async {
        let mut chunk = [0_u8; 4096];
        while !received.contains(needle) {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed after {received:?}");
            }
            received.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        Ok(())
    })
    .await
    .with_context(|| format!("no {needle:?} within the timeout"))??;
    Ok(received)
}

/// Reads until the server ends the connection (a close or a reset) and returns what arrived;
/// fails if it is still open after `limit`.
pub async fn read_until_closed<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut received = Vec::new();
    tokio::time::timeout(limit, async {
        let mut chunk = [0_u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .with_context(|| format!("the server kept the connection open for {limit:?}"))?;
    Ok(received)
}

/// The masking key of every frame [`client_frame`] writes.
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A client frame as raw bytes: `first` is the whole first byte (FIN, RSV bits, opcode), the
/// length in its shortest form, and the payload masked with a fixed key unless `masked` is
/// false. Nothing is checked, so any violation of RFC 6455 can be written.
pub fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match u16::try_from(payload.len()) {
        Ok(n @ 0..=125) => out.extend_from_slice(&[mask_bit | n.to_be_bytes()[1]]),
        Ok(n) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// One frame as the server wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// The first byte: FIN, RSV bits and opcode.
    pub first: u8,
    /// The payload (server frames are never masked; a masked one fails the read).
    pub payload: Vec<u8>,
    /// The whole frame as it came off the wire, header included.
    pub raw: Vec<u8>,
}

impl ServerFrame {
    /// The opcode (the low four bits of the first byte).
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// Whether FIN is set.
    pub fn fin(&self) -> bool {
        self.first & 0x80 != 0
    }

    /// A close frame's code: 1005 when it has no payload, `None` when it is not a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == 0x8).then(|| match self.payload.as_slice() {
            [high, low, ..] => u16::from_be_bytes([*high, *low]),
            _ => 1005,
        })
    }
}

/// Reads exactly one server frame; `None` when the server ended the connection first (a close
/// or a reset). Fails after [`TIMEOUT`] or on a masked server frame.
pub async fn read_server_frame(stream: &mut TcpStream) -> anyhow::Result<Option<ServerFrame>> {
    tokio::time::timeout(TIMEOUT, async {
        let mut head = [0_u8; 2];
        if stream.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        if head[1] & 0x80 != 0 {
            bail!("a masked server frame: {head:?}");
        }
        let mut raw = head.to_vec();
        let len = match head[1] & 0x7f {
            126 => {
                let mut bytes = [0_u8; 2];
                stream.read_exact(&mut bytes).await?;
                raw.extend_from_slice(&bytes);
                u64::from(u16::from_be_bytes(bytes))
            }
            127 => {
                let mut bytes = [0_u8; 8];
                stream.read_exact(&mut bytes).await?;
                raw.extend_from_slice(&bytes);
                u64::from_be_bytes(bytes)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0_u8; usize::try_from(len)?];
        stream.read_exact(&mut payload).await?;
        raw.extend_from_slice(&payload);
        Ok(Some(ServerFrame {
            first: head[0],
            payload,
            raw,
        }))
    })
    .await
    .context("no server frame within the timeout")?
}

/// Reads server frames, skipping data frames, until a close frame (its code, 1005 without one)
/// or the end of the connection (`None`).
pub async fn read_close_code(stream: &mut TcpStream) -> anyhow::Result<Option<u16>> {
    while let Some(frame) = read_server_frame(stream).await? {
        if let Some(code) = frame.close_code() {
            return Ok(Some(code));
        }
    }
    Ok(None)
}
