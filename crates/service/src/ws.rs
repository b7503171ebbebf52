//! The WebSocket transport: validates the upgrade request, hands the upgraded socket to
//! tungstenite, and drives one connection with a single task that reads client frames into the
//! core `Session` and writes what the connection's outbox yields, flushing once per batch.

use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
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
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, Utf8Bytes,
        handshake::derive_accept_key,
        protocol::{
            CloseFrame, Role, WebSocketConfig,
            frame::coding::{CloseCode as WsCloseCode, Data, OpCode},
        },
    },
};

use crate::{
    conn::Prefixed,
    http::{bearer_token, error_response, query_param},
    server::App,
};

/// The optional subprotocol, echoed when offered.
const SUBPROTOCOL: &str = "herald.v1";
/// How long a closing connection may take to finish the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// tungstenite's read buffer, allocated per connection. Client frames are small control
/// messages; a larger one grows the buffer as needed. Measured: 4 KiB cost 8.2 KB per idle
/// connection in all, 512 bytes 4.5 KB (`cargo xtask bench --scenario idle`).
const READ_BUFFER_BYTES: usize = 256;
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
        let frame = tungstenite::protocol::frame::Frame::message(
            frame.into_bytes(),
            OpCode::Data(Data::Text),
            true,
        );
        // Writing into a `Vec` cannot fail.
        let _ = frame.format(&mut greeting);
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
        // Frames accumulate up to this before a write; the writer flushes once per batch.
        .write_buffer_size(8 * 1024)
        // Herald's own outbox is the back-pressure point; this only caps a stalled socket.
        .max_write_buffer_size(app.config.max_queue_bytes.saturating_add(1 << 20))
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
        drop(writer);
        // Boxed: the close handshake's state is only needed while closing, so an idle
        // connection's task does not carry room for it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, Box::pin(goodbye(ws, end))).await;
    }
}

/// The close handshake for how the connection ended.
async fn goodbye(mut ws: Ws, end: End) {
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

/// Frames taken from the outbox but not yet accepted by the socket.
#[derive(Default)]
struct Writer {
    drained: Vec<Frame>,
    pending: VecDeque<Message>,
    needs_flush: bool,
    close: Option<CloseCode>,
    /// While `message_batch_delay_ms` is waiting for a batch to fill.
    fill_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Writer {
    /// Turns the drained frames into messages: one `batch` frame when several wait and the
    /// client allows batching, else one message per frame.
    fn stage(&mut self, batching: bool) {
        if batching && self.drained.len() > 1 {
            let text = encode_batch(self.drained.iter().map(Frame::as_str));
            self.drained.clear();
            self.pending.push_back(Message::Text(text.into()));
        } else {
            self.pending.extend(self.drained.drain(..).map(to_message));
        }
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
    // Read: feed client frames to the session, which queues its replies in the outbox.
    let mut read_budget_spent = true;
    for _ in 0..READ_BUDGET {
        match Pin::new(&mut *ws).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => match message {
                Message::Text(text) => session.on_text(text.as_str()),
                Message::Binary(_) => return Poll::Ready(End::Close(CloseCode::UnsupportedData)),
                Message::Ping(_) | Message::Pong(_) => {
                    session.touch();
                    // tungstenite queued the pong reply; a flush sends it.
                    writer.needs_flush = true;
                }
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

    // Write: move queued frames into the socket, then flush once.
    let batch = app.gateway.runtime().message_batch_size();
    let mut write_budget_spent = true;
    for _ in 0..WRITE_BUDGET {
        if writer.pending.is_empty() {
            if let Some(code) = writer.close {
                return Poll::Ready(End::Close(code));
            }
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
                Poll::Ready(Some(code)) => {
                    if code == CloseCode::SlowConsumer {
                        // The peer is not reading: a close frame would queue behind the rest.
                        tracing::debug!(connection = %session.connection().id(), "slow consumer closed");
                        return Poll::Ready(End::Close(code));
                    }
                    writer.close = Some(code);
                    if !writer.needs_flush {
                        return Poll::Ready(End::Close(code));
                    }
                    write_budget_spent = false;
                    break;
                }
                Poll::Pending => {
                    write_budget_spent = false;
                    break;
                }
            }
        }
        while let Some(message) = writer.pending.pop_front() {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if let Err(error) = Pin::new(&mut *ws).start_send(message) {
                        return Poll::Ready(end_for(&error));
                    }
                    writer.needs_flush = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(end_for(&error)),
                Poll::Pending => {
                    writer.pending.push_front(message);
                    // The socket is full, so the outbox is not drained meanwhile: be woken by a
                    // close request instead. A slow consumer (4009) or a connection closed for
                    // any reason but shutdown ends now rather than when, if ever, the peer
                    // reads again; the shutdown drain has its own grace period.
                    if let Poll::Ready(code) =
                        session.connection().outbox().poll_close_requested(cx)
                        && code != CloseCode::GoingAway
                    {
                        return Poll::Ready(End::Close(code));
                    }
                    write_budget_spent = false;
                    break;
                }
            }
        }
        if !writer.pending.is_empty() {
            break;
        }
    }
    if writer.needs_flush {
        match Pin::new(&mut *ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                writer.needs_flush = false;
                if let (Some(code), true) = (writer.close, writer.pending.is_empty()) {
                    return Poll::Ready(End::Close(code));
                }
            }
            Poll::Ready(Err(error)) => return Poll::Ready(end_for(&error)),
            Poll::Pending => {}
        }
    }
    if writer.pending.is_empty() && !writer.needs_flush {
        // Idle again: hand the staging buffers back so an idle connection holds none.
        writer.drained = Vec::new();
        writer.pending = VecDeque::new();
    }
    if read_budget_spent || write_budget_spent {
        // Work is left but other connections deserve a turn: come back right away.
        cx.waker().wake_by_ref();
    }
    Poll::Pending
}

fn to_message(frame: Frame) -> Message {
    // SAFETY: a `Frame` can only be built from a `String` (see `herald_core::Frame`), so its
    // bytes are valid UTF-8; skipping the re-validation saves a pass over every payload on the
    // fan-out path. `frame_bytes_are_utf8` tests the invariant this relies on.
    #[allow(unsafe_code)]
    let text = unsafe { Utf8Bytes::from_bytes_unchecked(frame.into_bytes()) };
    Message::Text(text)
}

fn end_for(error: &tungstenite::Error) -> End {
    match error {
        tungstenite::Error::Capacity(_) => End::Protocol(WsCloseCode::Size),
        tungstenite::Error::Utf8(_) => End::Protocol(WsCloseCode::Invalid),
        tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => {
            End::Protocol(WsCloseCode::Protocol)
        }
        // The write buffer cap was hit: the peer stopped reading.
        tungstenite::Error::WriteBufferFull(_) => End::Dropped,
        _ => End::Dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes_are_utf8() {
        let frame = Frame::from("{\"data\":\"héllo ✓\"}".to_owned());
        let Message::Text(text) = to_message(frame.clone()) else {
            panic!("not text")
        };
        assert_eq!(
            std::str::from_utf8(frame.as_bytes()).ok(),
            Some(text.as_str())
        );
    }

    #[test]
    fn websocket_keys_are_checked() {
        assert!(is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25j!Q=="));
    }
}
