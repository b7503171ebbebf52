//! Helpers for Herald's end-to-end tests: start the real `herald` binary on a free port, talk to
//! it with a real WebSocket client and a real HTTP client, and mint JWTs.
//!
//! The binary is `target/debug/herald` (or `$HERALD_BIN`); `cargo xtask ci` builds it before
//! the tests run.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json, value::RawValue};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame},
};

/// The HS256 secret every test server uses.
pub const SECRET: &str = "herald-end-to-end-test-secret-0123456789";
/// The API key every test server accepts.
pub const API_KEY: &str = "test-api-key";
/// How long any single expectation may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running `herald` process, killed when dropped.
pub struct TestServer {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// The admin listener's address, when `HERALD_ADMIN_LISTEN` is set.
    pub admin_addr: Option<std::net::SocketAddr>,
    stderr_lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

fn herald_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_BIN") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/herald")
}

impl TestServer {
    /// Starts herald with the test secret and API key plus `env` (which wins).
    pub async fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = herald_bin();
        if !bin.exists() {
            bail!(
                "{} is missing: run `cargo build -p herald-service` (cargo xtask ci does)",
                bin.display()
            );
        }
        let mut command = Command::new(&bin);
        command
            .env_clear()
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_API_KEYS", API_KEY)
            .env("HERALD_LOG_FORMAT", "json")
            .env("HERALD_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut admin_addr = None;
        let addr = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = rx.recv().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if value["message"] == "admin listening" {
                    admin_addr = value["addr"].as_str().and_then(|a| a.parse().ok());
                }
                if value["message"] == "listening" {
                    return value["addr"].as_str().and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .context("herald did not start listening in time")?
        .context("herald exited before listening")?;
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            child: Some(child),
            addr,
            admin_addr,
            stderr_lines: rx,
            http,
        })
    }

    /// `ws://addr/ws` plus `query` (e.g. `?token=...`).
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// Sends an HTTP request; `api` adds the API key. Returns status, headers and JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        api: bool,
    ) -> anyhow::Result<(u16, http::HeaderMap, Value)> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.request_raw(method, path, bytes, api.then_some(API_KEY))
            .await
    }

    /// `GET path` on another listener of this server (e.g. the admin one); status and JSON body.
    pub async fn get_at(
        &self,
        addr: std::net::SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let request = hyper::Request::builder()
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request)).await??;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Sends raw bytes with an optional bearer key.
    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, http::HeaderMap, Value)> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        if let Some(key) = bearer {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = builder.body(Full::new(body))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request)).await??;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, headers, value))
    }

    /// `GET /api/stats`.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        let (status, _, body) = self.request("GET", "/api/stats", None, true).await?;
        if status != 200 {
            bail!("stats answered {status}: {body}");
        }
        Ok(body)
    }

    /// `POST /api/publish` and the answer's body, retrying while the server answers 429.
    pub async fn publish(&self, topic: &str, data: Value) -> anyhow::Result<Value> {
        self.post_retrying("/api/publish", &json!({"topic": topic, "data": data}))
            .await
    }

    /// `POST /api/users/{user}/events` with `body`, retrying while the server answers 429.
    pub async fn send_event(&self, user: &str, body: &Value) -> anyhow::Result<Value> {
        self.post_retrying(&format!("/api/users/{user}/events"), body)
            .await
    }

    /// POSTs `body` to an API route until it is not refused with 429; fails on any other
    /// status but 200.
    async fn post_retrying(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        loop {
            let (status, _, answer) = self.request("POST", path, Some(body), true).await?;
            match status {
                200 => return Ok(answer),
                429 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => bail!("{path} answered {status}: {answer}"),
            }
        }
    }

    /// Waits until `predicate` holds for `/api/stats`, or fails after [`TIMEOUT`].
    pub async fn wait_for_stats(
        &self,
        predicate: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let stats = self.stats().await?;
            if predicate(&stats) {
                return Ok(stats);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("stats never matched; last: {stats}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.sigterm().await?;
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// Sends `method path` (no body) with an optional bearer key and returns status, headers
    /// and the body as text, for answers that are not JSON (e.g. `/metrics`).
    pub async fn request_text(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, http::HeaderMap, String)> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(key) = bearer {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = builder.body(Full::new(Bytes::new()))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request)).await??;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, String::from_utf8(bytes.to_vec())?))
    }

    /// Sends SIGTERM without waiting for the exit (see [`TestServer::wait_exit`]).
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("already stopped")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill failed");
        }
        Ok(())
    }

    /// Waits at most `limit` for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        tokio::time::timeout(limit, child.wait())
            .await
            .with_context(|| format!("herald did not exit within {limit:?}"))?
            .context("cannot wait for herald")
    }

    /// The next stderr line (JSON log) that contains `needle`.
    pub async fn log_line_containing(&mut self, needle: &str) -> anyhow::Result<Value> {
        tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.stderr_lines.recv().await {
                if line.contains(needle) {
                    return Ok(serde_json::from_str(&line).unwrap_or(Value::String(line)));
                }
            }
            Err(anyhow!("herald's stderr ended"))
        })
        .await?
    }
}

/// A token for `sub` valid for an hour with extra claims merged in.
pub fn token(sub: &str, extra: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = json!({"sub": sub, "exp": now + 3600, "topics": ["*"], "publish": ["*"]});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    sign(&claims)
}

/// Signs arbitrary claims with the test secret (HS256).
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("test token does not encode: {e}"))
}

/// A WebSocket client connection.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Frames of a `batch` not yet returned, as the server wrote them.
    pending: VecDeque<String>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects to `url` with extra request headers.
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

    /// Connects with `?token=` for `sub` (all topics allowed) and reads the `connected` frame.
    pub async fn connect_as(server: &TestServer, sub: &str) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::connect_with(
            &server.ws_url(&format!("?token={}", token(sub, json!({})))),
            &[],
        )
        .await?;
        let connected = client.recv().await?;
        if connected["type"] != "connected" {
            bail!("expected connected, got {connected}");
        }
        Ok((client, connected))
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
        let (reply, _) = self.request("subscribe", json!({"topic": topic})).await?;
        if reply["type"] != "ack" {
            bail!("subscribe to {topic} failed: {reply}");
        }
        Ok(reply["data"].clone())
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

    /// Like [`WsClient::recv`], but the message's text as the server wrote it, for checks on
    /// the exact bytes such as verbatim `data` (a `batch` is unpacked into its raw items).
    pub async fn recv_text(&mut self) -> anyhow::Result<String> {
        if let Some(text) = self.pending.pop_front() {
            return Ok(text);
        }
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .context("no frame within the timeout")?
                .context("connection ended")??;
            match message {
                Message::Text(text) => return Ok(self.unbatch(text.as_str())),
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

    /// Reads until the connection ends and reports how (text frames are discarded).
    pub async fn ended(&mut self) -> anyhow::Result<Ended> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                        return Ended::Closed(code.into());
                    }
                    Some(Ok(Message::Close(None))) => return Ended::Closed(1005),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Dropped,
                }
            }
        })
        .await
        .context("connection did not end within the timeout")
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
