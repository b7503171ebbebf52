//! The WebSocket transport: validates the upgrade request, hands the upgraded socket to
//! tungstenite for reading, and drives one connection with a single task that reads client
//! frames into the core `Session` and writes what the connection's outbox yields, several
//! frames per vectored write, straight from their shared bytes.

use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use herald_core::{Admission, Frame, Refusal, Session};
use herald_protocol::{CloseCode, encode_batch};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, Utf8Bytes,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode as WsCloseCode},
    },
};

use crate::{
    app::App,
    prefixed::Prefixed,
    respond::{bearer_token, error_response, query_param},
};

/// The optional subprotocol, echoed when offered.
const SUBPROTOCOL: &str = "herald.v1";
/// How long a closing connection may take to finish the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// tungstenite's read buffer, allocated per connection. Client frames are small control
/// messages; a larger one grows the buffer as needed. Measured: 4 KiB cost 8.2 KB per idle
/// connection in all, 512 bytes 4.5 KB (`cargo xtask bench --scenario idle`).
const READ_BUFFER_BYTES: usize = 256;
/// Control frames (pong replies to the peer's pings) tungstenite may hold for a peer that does
/// not read; past it the connection is dropped.
const CONTROL_BUFFER_BYTES: usize = 64 * 1024;
/// Inbound frames handled per poll before yielding to other tasks.
const READ_BUDGET: usize = 32;
/// Outbound batches written per poll before yielding to other tasks.
const WRITE_BUDGET: usize = 4;

/// A WebSocket connection on its socket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// A handshake that passed every check: the connection is admitted.
pub(crate) struct Accepted {
    admission: Admission,
    /// `Sec-WebSocket-Accept`.
    accept_key: String,
    /// Whether the client offered `herald.v1`, which the 101 then echoes.
    subprotocol: bool,
}

/// The handshake's checks, shared by both paths to a WebSocket (`conn`'s direct one and
/// hyper's): the upgrade headers, the origin and the admission (token, limits). A refusal is
/// the HTTP response to send, counted in `herald_handshakes_refused_total` by its status.
#[allow(clippy::result_large_err)] // The error is the response itself, built once.
pub(crate) fn handshake(
    app: &App,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Accepted, Response<Full<Bytes>>> {
    let checked = check_handshake(app, uri, headers);
    if let Err(response) = &checked {
        let status = response.status().as_str().to_owned();
        metrics::counter!("herald_handshakes_refused_total", "status" => status).increment(1);
    }
    checked
}

#[allow(clippy::result_large_err)] // As above.
fn check_handshake(
    app: &App,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Accepted, Response<Full<Bytes>>> {
    let key = validate_handshake(headers)?;
    if let Err(message) = check_origin(app, headers) {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            herald_protocol::ErrorCode::Forbidden,
            &message,
        ));
    }
    let query = uri.query().unwrap_or("");
    let bearer = bearer_token(headers).map(str::to_owned);
    let token = bearer.or_else(|| query_param(query, "token"));
    let thread = query_param(query, "thread");
    let admission = app
        .gateway
        .admit(token.as_deref(), thread.as_deref())
        .map_err(|refusal| refusal_response(&refusal))?;
    let subprotocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    Ok(Accepted {
        admission,
        accept_key: derive_accept_key(key.as_bytes()),
        subprotocol,
    })
}

impl Accepted {
    /// The 101 that completes the handshake.
    fn switching_protocols(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&self.accept_key) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if self.subprotocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        response
    }
}

/// Answers a `GET /ws` that hyper parsed (one that followed other requests on a keep-alive
/// connection): checks the handshake, admits the connection and upgrades it.
pub(crate) fn upgrade(app: &Arc<App>, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let accepted = match handshake(app, request.uri(), request.headers()) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let response = accepted.switching_protocols();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let task_app = Arc::clone(app);
    app.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        // Every connection is served over `Prefixed` (see `conn`), so this cannot fail; the
        // bare socket spares each read and write the `Upgraded` box's dynamic dispatch.
        let Ok(parts) = upgraded.downcast::<TokioIo<Prefixed>>() else {
            tracing::error!("upgraded connection of an unexpected type");
            return;
        };
        let (stream, unread) = parts.io.into_inner().into_parts();
        let mut leftover = parts.read_buf.to_vec();
        leftover.extend_from_slice(&unread);
        let ws = websocket(&task_app, stream, leftover).await;
        let session = task_app.gateway.open(accepted.admission);
        // The connection lives in a task of its own, spawned now: its future holds only the
        // driver's state, not the upgrade's, which keeps an idle connection small.
        let sessions = task_app.sessions.clone();
        sessions.spawn(drive(task_app, ws, session));
    });
    response
}

/// Answers a `GET /ws` that arrived as a connection's first request (parsed by `conn`).
///
/// Returns what to write: on success the 101 followed by the first frame (`connected`), so both
/// leave in one write, and the open session; on a refusal the HTTP error, after which the
/// connection closes. Synchronous on purpose: nothing of the request outlives this call, so
/// the connection's long-lived task does not carry it.
pub(crate) fn answer_direct(
    app: &App,
    request: Request<()>,
) -> Result<(Vec<u8>, Session), Vec<u8>> {
    let accepted = handshake(app, request.uri(), request.headers()).map_err(encode_response)?;
    drop(request);
    let mut greeting = encode_response(accepted.switching_protocols());
    let session = app.gateway.open(accepted.admission);
    let mut first = Vec::with_capacity(1);
    // `open` queued `connected`; taking it needs no waker, the driver registers its own.
    let _ = session.connection().outbox().poll_drain(
        &mut Context::from_waker(Waker::noop()),
        1,
        &mut first,
    );
    for frame in first {
        greeting.extend_from_slice(Chunk::text_header(frame.len()).as_bytes());
        greeting.extend_from_slice(frame.as_bytes());
    }
    Ok((greeting, session))
}

/// The WebSocket over a socket whose handshake is done; `leftover` is what the client sent
/// after the request head.
pub(crate) async fn websocket(app: &App, stream: TcpStream, leftover: Vec<u8>) -> Ws {
    WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(ws_config(app))).await
}

/// A response as HTTP/1.1 bytes: a 101 as is, anything else with its body and
/// `connection: close` (the direct path answers one request per connection).
fn encode_response(response: Response<Full<Bytes>>) -> Vec<u8> {
    let (parts, mut body) = response.into_parts();
    // `Full` yields its one frame at once: no waker is ever registered.
    let body = match Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    let mut out = Vec::with_capacity(256 + body.len());
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\nconnection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// tungstenite's per-connection buffers, sized for many mostly idle connections.
fn ws_config(app: &App) -> WebSocketConfig {
    let max_payload = app.config.max_payload_bytes;
    WebSocketConfig::default()
        // Client frames are small control messages; the buffer is allocated per connection.
        .read_buffer_size(READ_BUFFER_BYTES)
        // Only control frames (pong and close replies) go through tungstenite's write buffer:
        // written as soon as they are queued, and capped for a peer that pings without
        // reading. Data frames are the driver's (`Writer`).
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_BUFFER_BYTES)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload))
}

/// Checks what tungstenite's own handshake would (hyper did the HTTP part): `Upgrade` and
/// `Connection` tokens, version 13 and a well-formed key. Returns the key.
#[allow(clippy::result_large_err)] // The error is the response itself, built once.
fn validate_handshake(headers: &HeaderMap) -> Result<String, Response<Full<Bytes>>> {
    let bad = |message: &str| {
        error_response(
            StatusCode::BAD_REQUEST,
            herald_protocol::ErrorCode::BadRequest,
            message,
        )
    };
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(bad(
            "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            herald_protocol::ErrorCode::BadRequest,
            "unsupported WebSocket version: expected 13",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(response);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|key| is_websocket_key(key))
        .ok_or_else(|| bad("missing or malformed Sec-WebSocket-Key"))?;
    Ok(key.to_owned())
}

/// A key is 16 bytes in base64: 22 base64 characters and `==`.
fn is_websocket_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Same-origin, an allowed origin, or no `Origin` (non-browser clients).
fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "malformed Origin header".to_owned())?
        .to_ascii_lowercase();
    let allowed = &app.config.allowed_origins;
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let origin_authority = origin.split_once("://").map(|(_, rest)| rest);
    match (origin_authority, host) {
        (Some(authority), Some(host)) if authority == host => Ok(()),
        _ => Err(format!("origin {origin} is not allowed")),
    }
}

fn refusal_response(refusal: &Refusal) -> Response<Full<Bytes>> {
    let code = refusal.code();
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = error_response(status, code, &refusal.to_string());
    if matches!(refusal, Refusal::Unavailable(_)) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// How a connection's driving loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closes with this code.
    Close(CloseCode),
    /// The server closes with a code of RFC 6455's own (1007, 1009 ...).
    Protocol(WsCloseCode),
    /// The client sent a close frame (tungstenite queued the reply).
    PeerClosed,
    /// The socket failed or ended without a close handshake.
    Dropped,
}

/// Drives one connection until it ends, then runs the cleanup (dropping the session) and the
/// close handshake.
#[allow(clippy::manual_async_fn)] // Deliberate: see the comment in the body.
pub(crate) fn drive(app: Arc<App>, mut ws: Ws, mut session: Session) -> impl Future<Output = ()> {
    // Not an `async fn`: its parameters would be stored twice in the future (rust-lang/rust
    // #62958); an `async move` block uses the captured values in place. With one task per
    // connection this is most of an idle connection's task.
    async move {
        let mut writer = Writer::default();
        let end = poll_fn(|cx| poll_connection(cx, &app, &mut ws, &mut session, &mut writer)).await;
        // The one cleanup path: every index forgets the connection before the (bounded) goodbye.
        drop(session);
        // A dropped socket takes nothing more; otherwise a half-written frame is finished
        // before any close frame.
        let unfinished = match end {
            End::Dropped => Vec::new(),
            _ => writer.take_unfinished_frame(),
        };
        drop(writer);
        // Boxed: the close handshake's state is only needed while closing, so an idle
        // connection's task does not carry room for it.
        let goodbye = Box::pin(goodbye(ws, end, unfinished));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }
}

/// The close handshake for how the connection ended, after the rest of a frame that was
/// half-written when it ended (a close frame must not land inside it).
async fn goodbye(mut ws: Ws, end: End, unfinished: Vec<Bytes>) {
    for bytes in unfinished {
        if ws.get_mut().write_all(&bytes).await.is_err() {
            return;
        }
    }
    match end {
        End::Close(code) => {
            let frame = CloseFrame {
                code: WsCloseCode::from(code.code()),
                reason: Utf8Bytes::from_static(code.reason()),
            };
            let _ = ws.close(Some(frame)).await;
            while let Some(Ok(_)) = ws.next().await {}
        }
        End::Protocol(code) => {
            let reason = match code {
                WsCloseCode::Size => "message larger than the payload limit",
                WsCloseCode::Invalid => "invalid UTF-8",
                _ => "protocol error",
            };
            let reason = Utf8Bytes::from_static(reason);
            let _ = ws.close(Some(CloseFrame { code, reason })).await;
            while let Some(Ok(_)) = ws.next().await {}
        }
        End::PeerClosed => {
            // Corked, the reply to the peer's close frame waits in the socket until the close
            // that follows, and both leave as one segment: a packet less per connection, and
            // on loopback a packet is most of what a closing connection costs.
            #[cfg(target_os = "linux")]
            let _ = socket2::SockRef::from(ws.get_ref()).set_tcp_cork(true);
            let _ = ws.flush().await;
        }
        End::Dropped => {}
    }
}

/// Encoded data frames on their way to the socket.
///
/// The driver writes data frames itself, with vectored writes straight from the frames' shared
/// bytes: a publication's payload is never copied per subscriber, and an idle connection keeps
/// no write buffer (tungstenite's grows to the largest burst and stays there). tungstenite
/// still reads, and writes the control frames it answers with (pong, close), so the two
/// writers take turns at frame boundaries: nothing is read while a data frame is half-written
/// (tungstenite writes queued replies while reading), and no data frame is written while
/// tungstenite holds a control frame.
#[derive(Default)]
struct Writer {
    drained: Vec<Frame>,
    /// Frame headers and payloads, oldest first.
    out: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    written: usize,
    /// tungstenite queued a control frame (a pong reply) that must be written first.
    control_pending: bool,
    /// While `message_batch_delay_ms` is waiting for a batch to fill.
    fill_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A piece of an encoded data frame.
enum Chunk {
    /// A server frame's header (unmasked): 2, 4 or 10 bytes.
    Header { bytes: [u8; 10], len: u8 },
    /// The frame's payload, shared with every other connection that gets it.
    Payload(Bytes),
}

impl Chunk {
    /// The header of a final text frame carrying `len` bytes (RFC 6455, 5.2).
    fn text_header(len: usize) -> Self {
        const FIN_TEXT: u8 = 0x81;
        let mut bytes = [0; 10];
        bytes[0] = FIN_TEXT;
        let header_len = if len < 126 {
            // Fits in 7 bits (checked), so the cast keeps it whole.
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self::Header {
            bytes,
            len: header_len,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Header { bytes, len } => &bytes[..usize::from(*len)],
            Self::Payload(payload) => payload,
        }
    }
}

impl Writer {
    /// Most chunks handed to one `writev`.
    const MAX_SLICES: usize = 128;

    /// Whether no data frame is half-written, so tungstenite may write.
    fn at_frame_boundary(&self) -> bool {
        self.written == 0 && !matches!(self.out.front(), Some(Chunk::Payload(_)))
    }

    /// Turns the drained frames into chunks: one `batch` frame when several wait and the
    /// client allows batching, else one frame per message.
    fn stage(&mut self, batching: bool) {
        if batching && self.drained.len() > 1 {
            let batch = encode_batch(self.drained.iter().map(Frame::as_bytes));
            self.drained.clear();
            self.push_frame(Bytes::from(batch));
        } else {
            for frame in std::mem::take(&mut self.drained) {
                self.push_frame(frame.into_bytes());
            }
        }
    }

    fn push_frame(&mut self, payload: Bytes) {
        self.out.push_back(Chunk::text_header(payload.len()));
        self.out.push_back(Chunk::Payload(payload));
    }

    /// Writes chunks until none is left (`Ready(Ok)`) or the socket is full (`Pending`).
    fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); Self::MAX_SLICES];
            let mut count = 0;
            for (i, chunk) in self.out.iter().take(Self::MAX_SLICES).enumerate() {
                let bytes = chunk.as_bytes();
                slices[i] = IoSlice::new(if i == 0 {
                    &bytes[self.written..]
                } else {
                    bytes
                });
                count = i + 1;
            }
            let mut n = ready!(Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while let Some(front) = self.out.front() {
                let left = front.as_bytes().len() - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                self.written = 0;
                self.out.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The rest of a half-written frame, for the goodbye to finish before a close frame.
    fn take_unfinished_frame(&mut self) -> Vec<Bytes> {
        let mut rest = Vec::new();
        if self.at_frame_boundary() {
            return rest;
        }
        let mut first = true;
        while let Some(chunk) = self.out.front() {
            if !first && matches!(chunk, Chunk::Header { .. }) {
                break;
            }
            let bytes = match self.out.pop_front() {
                Some(Chunk::Payload(payload)) if first => payload.slice(self.written..),
                Some(Chunk::Payload(payload)) => payload,
                Some(header) => Bytes::copy_from_slice(&header.as_bytes()[self.written..]),
                None => break,
            };
            rest.push(bytes);
            self.written = 0;
            first = false;
        }
        rest
    }

    /// With `message_batch_delay_ms` above zero, holds back a partly filled batch until the
    /// delay has passed since its first frame. Returns whether to wait.
    fn waiting_to_fill(
        &mut self,
        cx: &mut Context<'_>,
        app: &App,
        session: &Session,
        batch: usize,
    ) -> bool {
        let delay = app.gateway.runtime().message_batch_delay();
        if delay.is_zero() {
            // The default: no wait, and no extra lock of the outbox on every write.
            self.fill_deadline = None;
            return false;
        }
        let queued = session.connection().outbox().len();
        if queued == 0 || queued >= batch {
            self.fill_deadline = None;
            return false;
        }
        let deadline = self
            .fill_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.fill_deadline = None;
            return false;
        }
        true
    }
}

fn poll_connection(
    cx: &mut Context<'_>,
    app: &App,
    ws: &mut Ws,
    session: &mut Session,
    writer: &mut Writer,
) -> Poll<End> {
    // Read: feed client frames to the session, which queues its replies in the outbox. Not
    // while a data frame is half-written: reading lets tungstenite write its queued replies.
    let mut read_budget_spent = false;
    if writer.at_frame_boundary() {
        read_budget_spent = true;
        for _ in 0..READ_BUDGET {
            match Pin::new(&mut *ws).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => match message {
                    Message::Text(text) => session.on_text(text.as_str()),
                    Message::Binary(_) => {
                        return Poll::Ready(End::Close(CloseCode::UnsupportedData));
                    }
                    Message::Ping(_) => {
                        session.touch();
                        // tungstenite queued the pong reply; it goes out before more data.
                        writer.control_pending = true;
                    }
                    Message::Pong(_) => session.touch(),
                    Message::Close(_) => return Poll::Ready(End::PeerClosed),
                    Message::Frame(_) => {}
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(end_for(&error)),
                Poll::Ready(None) => return Poll::Ready(End::Dropped),
                Poll::Pending => {
                    read_budget_spent = false;
                    break;
                }
            }
        }
    }

    if writer.control_pending && writer.at_frame_boundary() {
        match Pin::new(&mut *ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => writer.control_pending = false,
            Poll::Ready(Err(error)) => return Poll::Ready(end_for(&error)),
            Poll::Pending => {}
        }
    }

    // Write: drain the outbox into frames (a few batches' worth), then write them all, in
    // one system call when the socket takes them.
    let batch = app.gateway.runtime().message_batch_size();
    let mut write_budget_spent = false;
    // Frames left from a write the socket did not take: write them first, then come back.
    let resuming = !writer.out.is_empty();
    if !writer.control_pending && !resuming {
        write_budget_spent = true;
        for _ in 0..WRITE_BUDGET {
            if writer.waiting_to_fill(cx, app, session, batch) {
                write_budget_spent = false;
                break;
            }
            match session
                .connection()
                .outbox()
                .poll_drain(cx, batch, &mut writer.drained)
            {
                Poll::Ready(None) => writer.stage(session.connection().batching()),
                // A slow consumer's queue is the problem: close without the rest.
                Poll::Ready(Some(CloseCode::SlowConsumer)) => {
                    tracing::debug!(connection = %session.connection().id(), "slow consumer closed");
                    return Poll::Ready(End::Close(CloseCode::SlowConsumer));
                }
                // Everything queued before the close request is out of the queue: close once
                // it is written too (the request stays set for the next round).
                Poll::Ready(Some(code)) => {
                    if writer.out.is_empty() {
                        return Poll::Ready(End::Close(code));
                    }
                    // No waker was registered: come back once this is written.
                    write_budget_spent = true;
                    break;
                }
                Poll::Pending => {
                    write_budget_spent = false;
                    break;
                }
            }
        }
    }
    if !writer.control_pending && !writer.out.is_empty() {
        match writer.poll_write_out(cx, ws.get_mut()) {
            Poll::Ready(Ok(())) => write_budget_spent |= resuming,
            Poll::Ready(Err(_)) => return Poll::Ready(End::Dropped),
            Poll::Pending => {
                // The socket is full, so the outbox is not drained meanwhile: be woken by a
                // close request instead. A slow consumer (4009) or a connection closed for
                // any reason but shutdown ends now rather than when, if ever, the peer reads
                // again; the shutdown drain has its own grace period.
                if let Poll::Ready(code) = session.connection().outbox().poll_close_requested(cx)
                    && code != CloseCode::GoingAway
                {
                    return Poll::Ready(End::Close(code));
                }
                write_budget_spent = false;
            }
        }
    }
    if writer.out.is_empty() {
        // Idle again: hand the staging buffers back so an idle connection holds none.
        writer.drained = Vec::new();
        writer.out = VecDeque::new();
    }
    if read_budget_spent || write_budget_spent {
        // Work is left but other connections deserve a turn: come back right away.
        cx.waker().wake_by_ref();
    }
    Poll::Pending
}

fn end_for(error: &tungstenite::Error) -> End {
    match error {
        tungstenite::Error::Capacity(_) => End::Protocol(WsCloseCode::Size),
        tungstenite::Error::Utf8(_) => End::Protocol(WsCloseCode::Invalid),
        tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => {
            End::Protocol(WsCloseCode::Protocol)
        }
        // The control-frame cap was hit: the peer pings but stopped reading.
        tungstenite::Error::WriteBufferFull(_) => End::Dropped,
        _ => End::Dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame as WireFrame,
        coding::{Data, OpCode},
    };

    /// A frame as tungstenite encodes it: the reference for the driver's own encoding.
    fn reference(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        WireFrame::message(payload.to_vec(), OpCode::Data(Data::Text), true)
            .format(&mut out)
            .unwrap_or_else(|e| panic!("formatting into a Vec failed: {e}"));
        out
    }

    /// A socket that accepts at most `per_call[i]` bytes on its i-th write (cycling), and
    /// nothing more once `budget` bytes are in.
    struct Trickle {
        out: Vec<u8>,
        per_call: Vec<usize>,
        calls: usize,
        budget: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.budget == 0 {
                return Poll::Pending;
            }
            let mut room = this.per_call[this.calls % this.per_call.len()].min(this.budget);
            this.calls += 1;
            let mut written = 0;
            for buf in bufs {
                let n = buf.len().min(room);
                this.out.extend_from_slice(&buf[..n]);
                room -= n;
                written += n;
            }
            this.budget -= written;
            Poll::Ready(Ok(written))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
        // Mostly short frames; now and then one past the 16-bit length boundary.
        let size = prop_oneof![19 => 0_usize..140, 1 => 65_530_usize..65_540];
        proptest::collection::vec(size.prop_map(|n| vec![b'x'; n]), 0..40)
    }

    #[test]
    fn frame_headers_match_tungstenite() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'a'; len];
            let mut ours = Chunk::text_header(len).as_bytes().to_vec();
            ours.extend_from_slice(&payload);
            assert_eq!(ours, reference(&payload), "length {len}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn frames_reach_the_socket_whole_and_in_order(
            payloads in payloads(),
            per_call in proptest::collection::vec(1_usize..4_000, 1..8),
        ) {
            let mut writer = Writer::default();
            let mut expected = Vec::new();
            for payload in &payloads {
                writer.push_frame(Bytes::from(payload.clone()));
                expected.extend(reference(payload));
            }
            let mut socket = Trickle { out: Vec::new(), per_call, calls: 0, budget: usize::MAX };
            let mut cx = Context::from_waker(Waker::noop());
            prop_assert!(writer.poll_write_out(&mut cx, &mut socket).is_ready());
            prop_assert!(writer.at_frame_boundary());
            prop_assert_eq!(socket.out, expected);
        }

        #[test]
        fn a_half_written_frame_is_finished_exactly(
            payloads in payloads(),
            per_call in proptest::collection::vec(1_usize..4_000, 1..8),
            stop_at in 0.0_f64..1.0,
        ) {
            let mut writer = Writer::default();
            let mut frames = Vec::new();
            for payload in &payloads {
                writer.push_frame(Bytes::from(payload.clone()));
                frames.push(reference(payload));
            }
            let total: usize = frames.iter().map(Vec::len).sum();
            // Truncation is the point: somewhere inside the stream.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let budget = (total as f64 * stop_at) as usize;
            let mut socket = Trickle { out: Vec::new(), per_call, calls: 0, budget };
            let mut cx = Context::from_waker(Waker::noop());
            let _ = writer.poll_write_out(&mut cx, &mut socket);
            let mut on_wire = socket.out;
            for rest in writer.take_unfinished_frame() {
                on_wire.extend_from_slice(&rest);
            }
            // The wire now ends exactly at the end of a frame.
            let mut boundary = 0;
            for frame in &frames {
                if boundary >= on_wire.len() {
                    break;
                }
                boundary += frame.len();
            }
            prop_assert_eq!(on_wire.len(), boundary);
            prop_assert_eq!(&on_wire[..], &frames.concat()[..boundary]);
        }
    }

    #[test]
    fn websocket_keys_are_checked() {
        assert!(is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25j!Q=="));
    }
}
