//! The WebSocket handshake: validates an upgrade request (version, key, origin, admission) and
//! answers it, on `conn`'s direct path (101 and `connected` as bytes, in one write) or on
//! hyper's (`upgrade`), then sets tungstenite up on the socket.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use herald_core::{Admission, Refusal, Session};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tungstenite::handshake::derive_accept_key;

use crate::{
    abuse::{Client, Standing},
    app::App,
    head::{DirectHead, Headers, text},
    prefixed::{Prefixed, Socket, TlsSocket},
    respond::{bearer_token, error_response, query_param},
    ws::{
        Ws,
        deflate::{self, Deflate},
        driver::drive,
        inflate::Inflating,
        writer::Chunk,
    },
};

/// The optional subprotocol, echoed when offered.
const SUBPROTOCOL: &str = "herald.v1";

/// A handshake that passed every check: the connection is admitted.
struct Accepted {
    admission: Admission,
    /// `Sec-WebSocket-Accept`.
    accept_key: String,
    /// Whether the client offered `herald.v1`, which the 101 then echoes.
    subprotocol: bool,
    /// The permessage-deflate agreement, when the client offered one the server accepts.
    deflate: Option<Deflate>,
}

/// Answers a `GET /ws` that arrived as a connection's first request (parsed by `conn`).
///
/// Returns what to write: on success the 101 followed by the first frame (`connected`), so both
/// leave in one write, the open session and the compression agreement; on a refusal the HTTP error, after which the
/// connection closes. Synchronous on purpose: nothing of the request outlives this call, so
/// the connection's long-lived task does not carry it.
pub(crate) fn answer_direct(
    app: &App,
    head: DirectHead,
) -> Result<(Vec<u8>, Session, Option<Deflate>), Vec<u8>> {
    let accepted = handshake(app, head.query(), &head).map_err(encode_response)?;
    drop(head);
    let deflate = accepted.deflate;
    let mut greeting = encode_response(accepted.switching_protocols());
    let mut session = app.gateway.open(accepted.admission);
    let mut first = Vec::with_capacity(1);
    // `open` queued `connected`; taking it needs no waker, the driver registers its own.
    let _ = session.connection().outbox().poll_drain(
        &mut Context::from_waker(Waker::noop()),
        1,
        &mut first,
    );
    session.count_frames_out(first.len());
    for frame in first {
        greeting.extend_from_slice(Chunk::text_header(frame.len()).as_bytes());
        greeting.extend_from_slice(frame.as_bytes());
    }
    Ok((greeting, session, deflate))
}

/// Answers a handshake to the echo endpoint (`echo_path`, for conformance suites), parsed by
/// `conn` like a direct `GET /ws`: only the upgrade's own checks (version, key), no origin
/// check, no token and no admission, because the echo endpoint reaches nothing of the gateway.
/// Compression is negotiated as on `/ws`, so a suite's compression cases run against the same
/// code. Returns the 101 to write and the compression agreement, or the HTTP refusal after
/// which the connection closes.
pub(crate) fn answer_echo(
    app: &App,
    head: &DirectHead,
) -> Result<(Vec<u8>, Option<Deflate>), Vec<u8>> {
    let key = validate_handshake(head).map_err(encode_response)?;
    let deflate = negotiate_deflate(app, head).map_err(encode_response)?;
    let response = switching_protocols(&derive_accept_key(key.as_bytes()), false, deflate);
    Ok((encode_response(response), deflate))
}

/// Answers a `GET /ws` that hyper parsed (one that followed other requests on a keep-alive
/// connection): checks the handshake, admits the connection and upgrades it. The WebSocket
/// takes the connection's `standing` against the per-address limits for its whole life.
pub(crate) fn upgrade(
    app: &Arc<App>,
    mut request: Request<Incoming>,
    standing: &Standing,
) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("");
    let accepted = match handshake(app, query, request.headers()) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let Ok(client) = standing.take(request.headers()) else {
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            herald_protocol::ErrorCode::RateLimited,
            "too many connections from this client address",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
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
        // Every connection is served over `Prefixed` (see `conn`), on TCP or TLS, so one of
        // these succeeds; the bare socket spares each read and write the `Upgraded` box's
        // dynamic dispatch.
        let (admission, deflate) = (accepted.admission, accepted.deflate);
        let upgraded = match upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() {
            Ok(parts) => return run_upgraded(task_app, parts, admission, deflate, client).await,
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<Prefixed<TlsSocket>>>() {
            Ok(parts) => run_upgraded(task_app, parts, admission, deflate, client).await,
            Err(_) => tracing::error!("upgraded connection of an unexpected type"),
        }
    });
    response
}

/// Opens the session of a connection that hyper upgraded and spawns its driver, which holds
/// `client` (how it counts against the per-address limits; `None` when uncounted) until it
/// ends.
async fn run_upgraded<S: Socket>(
    app: Arc<App>,
    parts: hyper::upgrade::Parts<TokioIo<Prefixed<S>>>,
    admission: Admission,
    deflate: Option<Deflate>,
    client: Option<Client>,
) {
    let (stream, unread) = parts.io.into_inner().into_parts();
    let mut leftover = parts.read_buf.to_vec();
    leftover.extend_from_slice(&unread);
    let ws = websocket(&app, stream, leftover, deflate);
    let session = app.gateway.open(admission);
    // The connection lives in a task of its own, spawned now: its future holds only the
    // driver's state, not the upgrade's, which keeps an idle connection small.
    let sessions = app.sessions.clone();
    sessions.spawn(async move {
        drive(app, ws, session).await;
        drop(client);
    });
}

/// The WebSocket over a socket whose handshake is done; `leftover` is what the client sent
/// after the request head, `deflate` the compression agreement.
pub(crate) fn websocket<S: Socket>(
    app: &App,
    stream: S,
    leftover: Vec<u8>,
    deflate: Option<Deflate>,
) -> Ws<S> {
    let max_payload = app.config.max_payload_bytes;
    let (socket, leftover) = Inflating::new(stream, deflate, max_payload, leftover);
    Ws::from_partially_read(socket, leftover, max_payload)
}

/// The permessage-deflate agreement for a handshake's offers: none when compression is off
/// (`compression_enabled`) or nothing acceptable was offered; a 400 when the offers are
/// malformed.
#[allow(clippy::result_large_err)] // The error is the response itself, built once.
fn negotiate_deflate(
    app: &App,
    headers: &impl Headers,
) -> Result<Option<Deflate>, Response<Full<Bytes>>> {
    if !app.config.compression_enabled {
        return Ok(None);
    }
    let offers = headers.values(&header::SEC_WEBSOCKET_EXTENSIONS);
    deflate::negotiate(offers).map_err(|error| {
        error_response(
            StatusCode::BAD_REQUEST,
            herald_protocol::ErrorCode::BadRequest,
            &error.to_string(),
        )
    })
}

/// The handshake's checks, shared by both paths to a WebSocket (`conn`'s direct one and
/// hyper's): the upgrade headers, the origin and the admission (token, limits). A refusal is
/// the HTTP response to send, counted in `herald_handshakes_refused_total` by its status.
#[allow(clippy::result_large_err)] // The error is the response itself, built once.
fn handshake(
    app: &App,
    query: &str,
    headers: &impl Headers,
) -> Result<Accepted, Response<Full<Bytes>>> {
    let checked = check_handshake(app, query, headers);
    if let Err(response) = &checked {
        let status = response.status().as_str().to_owned();
        metrics::counter!("herald_handshakes_refused_total", "status" => status).increment(1);
    }
    checked
}

/// [`handshake`] without the metric.
#[allow(clippy::result_large_err)] // As above.
fn check_handshake(
    app: &App,
    query: &str,
    headers: &impl Headers,
) -> Result<Accepted, Response<Full<Bytes>>> {
    let key = validate_handshake(headers)?;
    let deflate = negotiate_deflate(app, headers)?;
    if let Err(message) = check_origin(app, headers) {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            herald_protocol::ErrorCode::Forbidden,
            &message,
        ));
    }
    let bearer = bearer_token(headers).map(str::to_owned);
    let token = bearer.or_else(|| query_param(query, "token"));
    let thread = query_param(query, "thread");
    let admission = app
        .gateway
        .admit(token.as_deref(), thread.as_deref())
        .map_err(|refusal| refusal_response(&refusal))?;
    let subprotocol = headers
        .items(&header::SEC_WEBSOCKET_PROTOCOL)
        .any(|p| p == SUBPROTOCOL);
    Ok(Accepted {
        admission,
        accept_key: derive_accept_key(key.as_bytes()),
        subprotocol,
        deflate,
    })
}

impl Accepted {
    /// The 101 that completes the handshake.
    fn switching_protocols(&self) -> Response<Full<Bytes>> {
        switching_protocols(&self.accept_key, self.subprotocol, self.deflate)
    }
}

/// A 101 with `Sec-WebSocket-Accept: accept_key`, echoing `herald.v1` when `subprotocol`, and
/// accepting permessage-deflate as `deflate` says.
fn switching_protocols(
    accept_key: &str,
    subprotocol: bool,
    deflate: Option<Deflate>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if subprotocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    if let Some(extension) = deflate.and_then(|d| HeaderValue::from_str(&d.response_header()).ok())
    {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
    }
    response
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

/// Checks what tungstenite's own handshake would (hyper did the HTTP part): `Upgrade` and
/// `Connection` tokens, version 13 and a well-formed key. Returns the key.
#[allow(clippy::result_large_err)] // The error is the response itself, built once.
fn validate_handshake(headers: &impl Headers) -> Result<String, Response<Full<Bytes>>> {
    let bad = |message: &str| {
        error_response(
            StatusCode::BAD_REQUEST,
            herald_protocol::ErrorCode::BadRequest,
            message,
        )
    };
    let has_token = |name: &header::HeaderName, token: &str| {
        headers.items(name).any(|t| t.eq_ignore_ascii_case(token))
    };
    if !has_token(&header::UPGRADE, "websocket") || !has_token(&header::CONNECTION, "upgrade") {
        return Err(bad(
            "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if headers.value(&header::SEC_WEBSOCKET_VERSION) != Some(b"13") {
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
        .text(&header::SEC_WEBSOCKET_KEY)
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
fn check_origin(app: &App, headers: &impl Headers) -> Result<(), String> {
    let Some(origin) = headers.value(&header::ORIGIN) else {
        return Ok(());
    };
    let origin = text(origin)
        .ok_or_else(|| "malformed Origin header".to_owned())?
        .to_ascii_lowercase();
    let allowed = &app.config.allowed_origins;
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return Ok(());
    }
    let host = headers.text(&header::HOST).map(str::to_ascii_lowercase);
    let origin_authority = origin.split_once("://").map(|(_, rest)| rest);
    match (origin_authority, host) {
        (Some(authority), Some(host)) if authority == host => Ok(()),
        _ => Err(format!("origin {origin} is not allowed")),
    }
}

/// The HTTP answer to a refused admission: its contract code's status, and `Retry-After` when
/// the server is unavailable.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_checked() {
        assert!(is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25j!Q=="));
    }

    #[test]
    fn a_refusal_is_encoded_with_its_body_and_closes_the_connection() {
        let response = error_response(
            StatusCode::BAD_REQUEST,
            herald_protocol::ErrorCode::BadRequest,
            "nope",
        );
        let encoded = String::from_utf8(encode_response(response))
            .unwrap_or_else(|e| panic!("not UTF-8: {e}"));
        let (head, body) = encoded
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head: {encoded}"));
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(head.ends_with("\r\nconnection: close"), "{head}");
        assert!(body.contains("nope"), "{body}");
    }

    #[test]
    fn a_switching_protocols_answer_has_no_body_headers() {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            encode_response(response),
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );
    }
}
