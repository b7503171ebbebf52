//! A WebSocket client as an application uses one: connect (with a token, a thread, or none),
//! send requests and read their replies, and see how the connection ended; plus the few helpers
//! for frames read off the wire.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json, value::RawValue};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _},
};

use crate::{TIMEOUT, server::TestServer, tokens::token};

/// A WebSocket client connection.
pub struct WsClient {
    /// The connection.
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The number of the last `messageId` that [`WsClient::request`] sent.
    next_id: u64,
    /// Frames of a `batch` not yet returned, as the server wrote them.
    pending: VecDeque<String>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code (1005 when it carried none).
    Closed(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects to `url` with extra request headers, and reads nothing.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes())?,
                value.parse()?,
            );
        }
        let (ws, _) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request)).await??;
        Ok(Self::from_stream(ws))
    }

    /// Completes the handshake for `url` over `stream`, a connection that may already have
    /// served other HTTP requests.
    pub async fn connect_over(stream: TcpStream, url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
        )
        .await??;
        Ok(Self::from_stream(ws))
    }

    /// A client over a WebSocket whose handshake is already done.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            ws,
            next_id: 0,
            pending: VecDeque::new(),
        }
    }

    /// Connects to `url`, which carries a valid token, and reads the `connected` frame.
    pub async fn connect_url(url: &str) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::connect_with(url, &[]).await?;
        let connected = client.recv().await?;
        if connected["type"] != "connected" {
            bail!("expected connected, got {connected}");
        }
        Ok((client, connected))
    }

    /// Connects with `?token={token}` and `query` after it (e.g. `&thread=t1`), and reads the
    /// `connected` frame.
    pub async fn connect_token(
        server: &TestServer,
        token: &str,
        query: &str,
    ) -> anyhow::Result<(Self, Value)> {
        Self::connect_url(&server.ws_url(&format!("?token={token}{query}"))).await
    }

    /// Connects as `sub` (all topics allowed) and reads the `connected` frame.
    pub async fn connect_as(server: &TestServer, sub: &str) -> anyhow::Result<(Self, Value)> {
        Self::connect_token(server, &token(sub, json!({})), "").await
    }

    /// Connects as `sub` (all topics allowed) bound to `thread`, and reads the `connected`
    /// frame.
    pub async fn connect_thread(
        server: &TestServer,
        sub: &str,
        thread: &str,
    ) -> anyhow::Result<(Self, Value)> {
        let query = format!("&thread={thread}");
        Self::connect_token(server, &token(sub, json!({})), &query).await
    }

    /// Connects without a token, with `query` (e.g. `?thread=t1` or nothing): the connection
    /// must authenticate with an `auth` message, and the server sends nothing before.
    pub async fn connect_anonymous(server: &TestServer, query: &str) -> anyhow::Result<Self> {
        Self::connect_with(&server.ws_url(query), &[]).await
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: &Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(value.to_string())).await?;
        Ok(())
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// Sends `{type, data, messageId}` and returns the reply with that messageId (skipping
    /// other frames, which are returned in order in the second element).
    pub async fn request(
        &mut self,
        kind: &str,
        data: Value,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        let mut frame = json!({"type": kind, "messageId": id});
        if !data.is_null() {
            frame["data"] = data;
        }
        self.send(&frame).await?;
        let mut others = Vec::new();
        loop {
            let reply = self.recv().await?;
            if reply["messageId"] == id.as_str() {
                return Ok((reply, others));
            }
            others.push(reply);
        }
    }

    /// Subscribes and returns the ack's data, failing on an error reply.
    pub async fn subscribe(&mut self, topic: &str) -> anyhow::Result<Value> {
        let reply = self.try_subscribe(topic).await?;
        if reply["type"] != "ack" {
            bail!("subscribe to {topic} failed: {reply}");
        }
        Ok(reply["data"].clone())
    }

    /// Subscribes and returns the whole reply, an `ack` or an `error`.
    pub async fn try_subscribe(&mut self, topic: &str) -> anyhow::Result<Value> {
        Ok(self.request("subscribe", json!({"topic": topic})).await?.0)
    }

    /// The next JSON server message (server pings included), failing on close or after
    /// [`TIMEOUT`]. A `batch` frame is unpacked: its messages are returned one by one, in order.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        let text = self.recv_text().await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The next text frame exactly as the server sent it, `batch` frames included (not
    /// unpacked); heartbeat pings are returned too.
    pub async fn recv_wire_text(&mut self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.pending.is_empty(),
            "unpacked frames are waiting; read them with recv_text"
        );
        self.next_text_frame().await
    }

    /// Like [`WsClient::recv`], but the message's text as the server wrote it, for checks on
    /// the exact bytes such as verbatim `data` (a `batch` is unpacked into its raw items).
    pub async fn recv_text(&mut self) -> anyhow::Result<String> {
        if let Some(text) = self.pending.pop_front() {
            return Ok(text);
        }
        let text = self.next_text_frame().await?;
        Ok(self.unbatch(&text))
    }

    /// The next text frame off the socket, skipping control frames; fails on close or after
    /// [`TIMEOUT`].
    async fn next_text_frame(&mut self) -> anyhow::Result<String> {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .context("no frame within the timeout")?
                .context("connection ended")??;
            match message {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Returns `text`, or the first item of a `batch` frame (queueing the others).
    fn unbatch(&mut self, text: &str) -> String {
        let items = serde_json::from_str::<HashMap<String, Box<RawValue>>>(text)
            .ok()
            .filter(|frame| frame.get("type").map(|t| t.get()) == Some("\"batch\""))
            .and_then(|frame| {
                serde_json::from_str::<Vec<Box<RawValue>>>(frame.get("data")?.get()).ok()
            });
        let Some(items) = items else {
            return text.to_owned();
        };
        self.pending
            .extend(items.into_iter().map(|item| item.get().to_owned()));
        self.pending.pop_front().unwrap_or_default()
    }

    /// The next frame that is not a server heartbeat `ping`.
    pub async fn recv_data(&mut self) -> anyhow::Result<Value> {
        loop {
            let frame = self.recv().await?;
            if frame["type"] != "ping" {
                return Ok(frame);
            }
        }
    }

    /// Whether a frame arrives within `wait` (it is returned).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        if let Some(text) = self.pending.pop_front() {
            return serde_json::from_str(&text).ok();
        }
        let message = tokio::time::timeout(wait, self.ws.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) => serde_json::from_str(&self.unbatch(text.as_str())).ok(),
            _ => None,
        }
    }

    /// Waits until nothing but heartbeat pings has arrived for a short while; fails on any
    /// other frame, naming `who` got it.
    pub async fn expect_quiet(&mut self, who: &str) -> anyhow::Result<()> {
        while let Some(frame) = self.try_recv(Duration::from_millis(200)).await {
            anyhow::ensure!(frame["type"] == "ping", "{who} got {frame}");
        }
        Ok(())
    }

    /// Reads until the connection ends and reports how (text frames are discarded).
    pub async fn ended(&mut self) -> anyhow::Result<Ended> {
        read_until_ended(&mut self.ws, |_| {}).await
    }

    /// Closes politely (1000).
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_tcp(self) {
        drop(self.ws);
    }
}

/// Reads `ws` until the connection ends, within [`TIMEOUT`], passing each text frame to
/// `on_text`, and reports how it ended.
pub async fn read_until_ended<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    mut on_text: impl FnMut(&str),
) -> anyhow::Result<Ended> {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Closed(frame.map_or(1005, |f| f.code.into()));
                }
                Some(Ok(Message::Text(text))) => on_text(text.as_str()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    })
    .await
    .context("connection did not end within the timeout")
}

/// A subscriber to `topic` (as user `slow`) that reads only when told to, with a small receive
/// buffer so that what the server sends stays queued on the server's side. Returned once the
/// subscribe ack has arrived.
pub async fn slow_subscriber(
    server: &TestServer,
    topic: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(server.addr).await?;
    let url = server.ws_url(&format!("?token={}", token("slow", json!({}))));
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let subscribe = json!({"type": "subscribe", "messageId": "s", "data": {"topic": topic}});
    ws.send(Message::text(subscribe.to_string())).await?;
    tokio::time::timeout(TIMEOUT, async {
        while let Some(message) = ws.next().await {
            if let Message::Text(text) = message?
                && text.contains(r#""messageId":"s""#)
            {
                return anyhow::Ok(());
            }
        }
        bail!("closed before the subscribe ack")
    })
    .await??;
    Ok(ws)
}

/// The frames one text frame off the wire carries: a `batch`'s items in order, or the frame
/// itself; nothing when it is not JSON.
pub fn frames_in(text: &str) -> Vec<Value> {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    match frame["type"].as_str() {
        Some("batch") => frame["data"].as_array().cloned().unwrap_or_default(),
        _ => vec![frame],
    }
}

/// Asserts that `reply` is an `error` frame with `code` and a message.
#[track_caller]
pub fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "reply: {reply}");
    assert_eq!(reply["error"]["code"], code, "reply: {reply}");
    assert!(reply["error"]["message"].is_string(), "reply: {reply}");
}

/// The `connectionId` of a `connected` frame (empty when it has none).
pub fn connection_id(connected: &Value) -> String {
    connected["data"]["connectionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
