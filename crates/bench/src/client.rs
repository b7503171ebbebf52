//! The server under test and how a bench client talks to it: WebSocket subscribers (Herald's
//! token, `connected`, `subscribe` and `ack`, or nchan's subscriber URL), topic names, tokens
//! and client source addresses.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// A subscriber's WebSocket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long one handshake step may take before the connection counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Client connections per source address: the ephemeral port range (32768-60999) holds about
/// 28,000 connections per source and destination pair, so past this many the clients move to
/// the next 127.0.0.x address.
const CONNECTIONS_PER_SOURCE: usize = 16_000;
/// How long a bench token stays valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Which server is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TargetKind {
    /// Herald: JWT in the query, `subscribe`/`ack`, `POST /api/publish[/batch]`.
    Herald,
    /// nginx with nchan: `/sub/<id>` WebSocket subscribers, `POST /pub/<id>` publishers.
    Nchan,
}

impl TargetKind {
    /// The lower-case name used in reports.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Herald => "herald",
            Self::Nchan => "nchan",
        }
    }
}

/// Everything needed to reach the server under test.
#[derive(Clone)]
pub(crate) struct Target {
    /// Herald or nchan.
    pub(crate) kind: TargetKind,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Herald's API key for `/api/*`.
    pub(crate) api_key: String,
    /// Herald's HS256 key for minting client tokens.
    jwt_key: Option<EncodingKey>,
    /// tungstenite settings for every subscriber.
    ws_config: WebSocketConfig,
    /// Put between `bench` and the topic index, so runs against one server can use fresh
    /// topics (a fresh offset sequence for Herald, an empty message buffer for nchan).
    topic_prefix: String,
    /// What reports call it, when not the kind's name.
    label: Option<String>,
}

/// The claims of a bench client's token.
#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    exp: u64,
    topics: [&'a str; 1],
}

impl Target {
    /// Describes the server. Herald needs the JWT secret; `read_buffer` sizes each client's
    /// read buffer, which tungstenite allocates up front for every connection.
    pub(crate) fn new(
        kind: TargetKind,
        addr: SocketAddr,
        api_key: String,
        jwt_secret: Option<&str>,
        read_buffer: usize,
    ) -> anyhow::Result<Self> {
        let jwt_key = match (kind, jwt_secret) {
            (TargetKind::Herald, None) => bail!("--jwt-secret is required for herald"),
            (_, secret) => secret.map(|s| EncodingKey::from_secret(s.as_bytes())),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            // Subscribers write almost nothing: write each frame at once.
            .write_buffer_size(0);
        Ok(Self {
            kind,
            addr,
            api_key,
            jwt_key,
            ws_config,
            topic_prefix: String::new(),
            label: None,
        })
    }

    /// The same target with topic names `bench:<prefix><k>` (`bench<prefix><k>` for nchan);
    /// `prefix` must be letters, digits or `_` (nchan's channel ids are `\w+`).
    pub(crate) fn with_topic_prefix(&self, prefix: &str) -> Self {
        Self {
            topic_prefix: prefix.to_owned(),
            ..self.clone()
        }
    }

    /// The same target, named `label` in reports (its kind's name when `None`).
    pub(crate) fn with_label(self, label: Option<String>) -> Self {
        Self { label, ..self }
    }

    /// What reports call this target.
    pub(crate) fn name(&self) -> &str {
        self.label.as_deref().unwrap_or(self.kind.name())
    }

    /// The name of topic index `k` on this server.
    pub(crate) fn topic_name(&self, k: u64) -> String {
        match self.kind {
            TargetKind::Herald => format!("bench:{}{k}", self.topic_prefix),
            TargetKind::Nchan => format!("bench{}{k}", self.topic_prefix),
        }
    }

    /// A token for user `u<user>` allowed to subscribe to every topic.
    fn token(&self, user: usize) -> anyhow::Result<String> {
        let key = self
            .jwt_key
            .as_ref()
            .ok_or_else(|| anyhow!("no JWT secret configured"))?;
        let claims = Claims {
            sub: format!("u{user}"),
            exp: (unix_ns() / 1_000_000_000) + TOKEN_LIFETIME.as_secs(),
            topics: ["*"],
        };
        Ok(jsonwebtoken::encode(&Header::default(), &claims, key)?)
    }

    /// Opens client `index`'s WebSocket and subscribes it to topic index `topic`; returns once
    /// the subscription is in effect (Herald's `ack`; for nchan, once upgraded: see
    /// [`crate::publisher::wait_for_nchan_subscribers`]).
    pub(crate) async fn subscribe(&self, index: usize, topic: u64) -> anyhow::Result<Ws> {
        let stream = connect_tcp(self.addr, index).await?;
        let url = match self.kind {
            TargetKind::Herald => format!("ws://{}/ws?token={}", self.addr, self.token(index)?),
            TargetKind::Nchan => format!("ws://{}/sub/{}", self.addr, self.topic_name(topic)),
        };
        let (mut ws, _) = step(tokio_tungstenite::client_async_with_config(
            url,
            stream,
            Some(self.ws_config),
        ))
        .await
        .context("websocket handshake")?;
        if self.kind == TargetKind::Herald {
            expect_frame(&mut ws, "connected", None).await?;
            let subscribe = serde_json::json!({
                "type": "subscribe",
                "messageId": "s",
                "data": {"topic": self.topic_name(topic)},
            });
            step(ws.send(Message::text(subscribe.to_string())))
                .await
                .context("sending subscribe")?;
            expect_frame(&mut ws, "ack", Some("s")).await?;
        }
        Ok(ws)
    }
}

/// Runs one handshake step within [`STEP_TIMEOUT`].
async fn step<T, E>(future: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("timed out after {STEP_TIMEOUT:?}"),
    }
}

/// Reads frames until one of type `kind` (with `messageId` `id`, when given); pings are
/// skipped and an `error` frame or a close fails.
async fn expect_frame(ws: &mut Ws, kind: &str, id: Option<&str>) -> anyhow::Result<()> {
    loop {
        let message = step(async { ws.next().await.transpose() })
            .await
            .with_context(|| format!("waiting for `{kind}`"))?
            .ok_or_else(|| anyhow!("connection closed while waiting for `{kind}`"))?;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("closed while waiting for `{kind}`: {frame:?}"),
            _ => continue,
        };
        let frame: Value = serde_json::from_str(text.as_str())
            .with_context(|| format!("malformed frame while waiting for `{kind}`"))?;
        match frame.get("type").and_then(Value::as_str) {
            Some(t) if t == kind && id.is_none_or(|id| frame["messageId"] == id) => return Ok(()),
            Some("error") => bail!("error while waiting for `{kind}`: {}", frame["error"]),
            _ => {}
        }
    }
}

/// Closes a WebSocket politely: a close frame, then reads until the server's close and EOF.
pub(crate) async fn close(mut ws: Ws) -> anyhow::Result<()> {
    let goodbye = async {
        ws.close(None).await?;
        while let Some(message) = ws.next().await {
            message?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    };
    match tokio::time::timeout(STEP_TIMEOUT, goodbye).await {
        Ok(Ok(())) => Ok(()),
        // The server may drop the TCP connection right after its close frame.
        Ok(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => bail!("close handshake timed out"),
    }
}

/// Connects client `index` over TCP, from 127.0.0.1 for the first
/// [`CONNECTIONS_PER_SOURCE`] clients and from the next 127.0.0.x address for each block after,
/// so tens of thousands of loopback connections do not run out of ephemeral ports.
pub(crate) async fn connect_tcp(addr: SocketAddr, index: usize) -> anyhow::Result<TcpStream> {
    let stream = match source_address(addr, index) {
        None => step(TcpStream::connect(addr)).await,
        Some(source) => {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            step(socket.connect(addr)).await
        }
    }
    .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The source address for client `index`, or `None` for the kernel's choice.
fn source_address(addr: SocketAddr, index: usize) -> Option<Ipv4Addr> {
    let block = index / CONNECTIONS_PER_SOURCE;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && block > 0 => {
            // 127.0.0.2 to 127.0.0.254; the block count is bounded by the client count.
            Some(Ipv4Addr::new(127, 0, 0, (1 + block.min(253)) as u8))
        }
        _ => None,
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
// The load generator stamps frames that a real server relays: the system clock is the point.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_spread_over_loopback_sources_past_a_block() {
        let server: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(source_address(server, 0), None);
        assert_eq!(source_address(server, CONNECTIONS_PER_SOURCE - 1), None);
        assert_eq!(
            source_address(server, CONNECTIONS_PER_SOURCE),
            Some(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            source_address(server, 3 * CONNECTIONS_PER_SOURCE + 5),
            Some(Ipv4Addr::new(127, 0, 0, 4))
        );
        assert_eq!(
            source_address(server, usize::MAX),
            Some(Ipv4Addr::new(127, 0, 0, 254))
        );
        let remote: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        assert_eq!(source_address(remote, 50_000), None);
    }

    #[test]
    fn topic_names_follow_each_server() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let herald = Target::new(TargetKind::Herald, addr, String::new(), Some("s"), 4096);
        let nchan = Target::new(TargetKind::Nchan, addr, String::new(), None, 4096);
        let (herald, nchan) = (herald.unwrap(), nchan.unwrap());
        assert_eq!(herald.topic_name(3), "bench:3");
        assert_eq!(nchan.topic_name(3), "bench3");
        assert_eq!(herald.with_topic_prefix("c1_").topic_name(0), "bench:c1_0");
        assert_eq!(nchan.with_topic_prefix("c1_").topic_name(0), "benchc1_0");
        assert!(Target::new(TargetKind::Herald, addr, String::new(), None, 4096).is_err());
    }

    #[test]
    fn herald_tokens_carry_the_user_and_every_topic() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let target = Target::new(
            TargetKind::Herald,
            addr,
            String::new(),
            Some("secret"),
            4096,
        )
        .unwrap();
        let token = target.token(7).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = true;
        let decoded = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims["sub"], "u7");
        assert_eq!(decoded.claims["topics"], serde_json::json!(["*"]));
    }
}
