//! One accepted connection from its first byte: a WebSocket handshake that arrives as the
//! connection's first request is answered here directly; everything else is served by hyper.
//!
//! The direct path exists for cost, not features. Connect, subscribe, leave is a gateway's
//! everyday churn, and through hyper each handshake is parsed into hyper's own structures,
//! answered in a write of its own (with `connected` in a second one) and handed over behind a
//! boxed, dynamically dispatched `Upgraded`, in a second task. Here the head is parsed in place
//! with `httparse` (hyper's own parser), the 101 and `connected` leave in one write and the
//! connection's driver runs in the accepting task on the bare `TcpStream`. The handshake's rules
//! are one function for both paths (`ws::handshake`); hyper still answers an upgrade that
//! follows other requests on a keep-alive connection (a proxy's pooled upstream connection).
//!
//! Everything here is generic over the socket (`prefixed::Socket`): a TLS connection, once its
//! TLS handshake is done (`serve_tls`), takes the same path as a plaintext one. The TLS
//! handshake and the first request head share one deadline, `handshake_timeout`, so a client
//! that trickles either costs its socket for that long and no more.

use std::{convert::Infallible, future::Future, io, sync::Arc};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use herald_core::Session;

use crate::{
    abuse::{Client, Standing},
    app::{App, Role},
    head::{DirectHead, Layout},
    prefixed::{Prefixed, Socket},
    ws,
};

/// The first read's buffer: a handshake with a token in its query fits.
const FIRST_READ_BYTES: usize = 2048;
/// Request heads up to this size are parsed here; larger ones (many cookies) are left to hyper,
/// whose limit is higher.
const MAX_DIRECT_HEAD_BYTES: usize = 16 * 1024;
/// Headers parsed here; a request with more is left to hyper.
const MAX_DIRECT_HEADERS: usize = 32;

/// Serves one accepted plaintext connection until it closes; `client` is how it counts against
/// the per-address limits, held until then.
///
/// Not an `async fn`, whose arguments would be stored twice in the future (rust-lang/rust
/// #62958): a direct WebSocket connection lives in this future, and an idle one should cost
/// little more than its driver.
#[allow(clippy::manual_async_fn)] // Deliberate, as above.
pub(crate) fn serve(
    app: Arc<App>,
    role: Role,
    stream: TcpStream,
    client: Client,
    stop: CancellationToken,
) -> impl Future<Output = ()> {
    let deadline = Instant::now() + app.config.handshake_timeout;
    // Boxed: the handshake's state (about 1.2 KB) is freed once the driver runs, rather than
    // sized into the connection's task for its whole life. Built here, outside the `async`
    // block, so that the socket and the stop token it takes are not also kept in the task as
    // the block's captures (a capture keeps its room after it is moved out): 48 bytes less.
    let opening = Box::pin(open(Arc::clone(&app), role, stream, deadline, client, stop));
    async move {
        let Some((ws, session, client)) = opening.await else {
            return;
        };
        // The tracker itself is not kept across the await: its token in the tracked future
        // is all the connection needs (8 bytes less in every connection's task).
        let driving = {
            let sessions = app.sessions.clone();
            sessions.track_future(ws::drive(app, ws, session))
        };
        driving.await;
        // Counted against its address until the connection is over.
        drop(client);
    }
}

/// Serves one accepted connection of a TLS listener: the TLS handshake with `acceptor`, then
/// the same as [`serve`].
#[allow(clippy::manual_async_fn)] // As `serve`.
pub(crate) fn serve_tls(
    app: Arc<App>,
    role: Role,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    client: Client,
    stop: CancellationToken,
) -> impl Future<Output = ()> {
    async move {
        let deadline = Instant::now() + app.config.handshake_timeout;
        let accepting = tokio::time::timeout_at(deadline, acceptor.accept(stream));
        let stream = match Box::pin(accepting).await {
            Ok(Ok(stream)) => Box::new(stream),
            Ok(Err(error)) => {
                // A scanner, a plaintext client or a client that distrusts the certificate.
                tracing::debug!(%error, "TLS handshake failed");
                metrics::counter!("herald_tls_handshake_failures_total").increment(1);
                return;
            }
            Err(_) => {
                metrics::counter!("herald_handshake_timeouts_total").increment(1);
                return;
            }
        };
        let Some((ws, session, client)) =
            Box::pin(open(Arc::clone(&app), role, stream, deadline, client, stop)).await
        else {
            return;
        };
        let sessions = app.sessions.clone();
        sessions.track_future(ws::drive(app, ws, session)).await;
        drop(client);
    }
}

/// Reads the first request (by `deadline`) and either completes a WebSocket handshake
/// (returning the open connection, with `client`, which it keeps counted until it ends) or
/// serves HTTP on the connection until it closes (returning `None`). A trusted proxy's
/// WebSocket handshake is counted against the client it names first ([`Client::resolve`]).
async fn open<S: Socket>(
    app: Arc<App>,
    role: Role,
    mut stream: S,
    deadline: Instant,
    mut client: Client,
    stop: CancellationToken,
) -> Option<(ws::Ws<S>, Session, Client)> {
    let app = &app;
    let first = if role == Role::Admin {
        // The admin listener has no WebSocket route.
        First::Http(Vec::new())
    } else {
        // Closed, failed or too slow before a whole request head: nothing to answer, as
        // hyper's own header timeout would not answer either.
        let echo = app.config.echo_path.as_deref();
        let Ok(read) = tokio::time::timeout_at(deadline, read_first(&mut stream, echo)).await
        else {
            metrics::counter!("herald_handshake_timeouts_total").increment(1);
            return None;
        };
        read.ok()?
    };
    let (head, leftover) = match first {
        First::Upgrade {
            head,
            leftover,
            echo: true,
        } => {
            // Boxed, like HTTP: the echo endpoint's state stays out of `/ws`'s task.
            Box::pin(ws::serve_echo(Arc::clone(app), stream, head, leftover)).await;
            return None;
        }
        First::Upgrade { head, leftover, .. } => (head, leftover),
        // Boxed: an HTTP connection's state is large.
        First::Http(read) => {
            let stream = Prefixed::new(read, stream);
            let http = serve_http(Arc::clone(app), role, stream, client.hand_over(), stop);
            Box::pin(http).await;
            return None;
        }
    };
    if client.resolve(&head).is_err() {
        if stream.write_all(OVER_ADDRESS_LIMIT).await.is_ok() {
            let _ = stream.shutdown().await;
        }
        return None;
    }
    let (greeting, session, deflate) = match ws::answer_direct(app, head) {
        Ok(upgrade) => upgrade,
        Err(refusal) => {
            if stream.write_all(&refusal).await.is_ok() {
                let _ = stream.shutdown().await;
            }
            return None;
        }
    };
    // On failure, dropping the session is the connection's cleanup.
    stream.write_all(&greeting).await.ok()?;
    stream.flush().await.ok()?;
    let ws = ws::websocket(app, stream, leftover, deflate);
    Some((ws, session, client))
}

/// The answer to a trusted proxy's handshake for a client over a per-address limit.
const OVER_ADDRESS_LIMIT: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
    content-type: application/json\r\nretry-after: 1\r\ncontent-length: 91\r\n\
    connection: close\r\n\r\n\
    {\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from this client address\"}}";

/// What the connection's first request turned out to be.
#[allow(clippy::large_enum_variant)] // Lives once per connection, briefly; a box would cost more.
enum First {
    /// A complete `GET /ws` (or `GET` of the echo path) head, parsed, and what the client sent
    /// after it.
    Upgrade {
        head: DirectHead,
        leftover: Vec<u8>,
        /// For the echo endpoint.
        echo: bool,
    },
    /// Anything else, with the bytes read so far: hyper serves it.
    Http(Vec<u8>),
}

/// Reads until the first request head is complete or is known not to be a WebSocket handshake.
async fn read_first<S: Socket>(stream: &mut S, echo: Option<&str>) -> io::Result<First> {
    let mut read = Vec::with_capacity(FIRST_READ_BYTES);
    loop {
        if read.len() >= MAX_DIRECT_HEAD_BYTES {
            return Ok(First::Http(read));
        }
        read.reserve(FIRST_READ_BYTES);
        if stream.read_buf(&mut read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match parse_first(&read, echo) {
            Parsed::Upgrade { layout, echo } => {
                let leftover = read.split_off(layout.head_len());
                return Ok(First::Upgrade {
                    head: DirectHead::new(read, layout),
                    leftover,
                    echo,
                });
            }
            Parsed::Http => return Ok(First::Http(read)),
            Parsed::Partial => {}
        }
    }
}

/// What `parse_first` made of the bytes read so far.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Lives once per connection, briefly; a box would cost more.
enum Parsed {
    Upgrade { layout: Layout, echo: bool },
    Http,
    Partial,
}

/// Decides, as early as the bytes allow, whether the head is a WebSocket handshake to answer
/// here: to `/ws`, or to the echo path when one is configured. Anything unusual (a body,
/// HTTP/1.0, too many headers, a malformed head) is hyper's, which answers it as it answers any
/// request.
fn parse_first(bytes: &[u8], echo: Option<&str>) -> Parsed {
    if !starts_as_get(bytes, "/ws") && !echo.is_some_and(|echo| starts_as_get(bytes, echo)) {
        return Parsed::Http;
    }
    let is_upgrade_path =
        |target: &str| is_websocket_path(target) || echo.is_some_and(|e| path_of(target) == e);
    let mut headers = [httparse::EMPTY_HEADER; MAX_DIRECT_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return match head.path {
                Some(path) if !is_upgrade_path(path) => Parsed::Http,
                _ => Parsed::Partial,
            };
        }
        Err(_) => return Parsed::Http,
    };
    let (Some("GET"), Some(path), Some(1)) = (head.method, head.path, head.version) else {
        return Parsed::Http;
    };
    if !is_upgrade_path(path) {
        return Parsed::Http;
    }
    let echo = !is_websocket_path(path);
    let has_body = head.headers.iter().any(|header| {
        header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length") && header.value != b"0")
    });
    if has_body {
        return Parsed::Http;
    }
    // httparse checked the names and values as hyper's own parse does; the handshake reads
    // them where they lie, without building a request.
    match Layout::of(bytes, head_len, &head) {
        Some(layout) => Parsed::Upgrade { layout, echo },
        None => Parsed::Http,
    }
}

/// Whether the bytes read so far may begin `GET {path}`.
fn starts_as_get(bytes: &[u8], path: &str) -> bool {
    let start = b"GET ".iter().chain(path.as_bytes());
    bytes
        .iter()
        .zip(start)
        .all(|(read, expected)| read == expected)
}

/// `/ws`, with or without a query.
fn is_websocket_path(target: &str) -> bool {
    path_of(target) == "/ws"
}

/// A request target's path: what precedes the query.
fn path_of(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// Serves HTTP/1.1 on the connection until it closes or `stop` asks for a graceful end;
/// `client`, how the connection counts against the per-address limits, goes with it to the
/// WebSocket when a request upgrades it.
async fn serve_http<S: Socket>(
    app: Arc<App>,
    role: Role,
    stream: Prefixed<S>,
    client: Client,
    stop: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let header_timeout = app.config.handshake_timeout;
    let standing = Arc::new(Standing::new(client));
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        let standing = Arc::clone(&standing);
        async move { Ok::<_, Infallible>(crate::http::handle(&app, role, standing, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // A client that closes its write side once its request is sent still gets the answer.
        // This also spares every request a read that only looked for that end of stream: made
        // while the request's head still shared hyper's read buffer, it made hyper allocate a
        // fresh 8 KiB buffer per request (callgrind: 1,000 instructions per publication).
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(?peer, %error, "http connection ended with an error");
            }
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Headers as _;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle WebSocket costs its task (the driver's state, in the accepting task on the direct
    /// path) and its `Connection`, and little else (no read buffer: `ws::stream`; `cargo xtask
    /// bench --scenario idle`). Measured when written: 752 bytes, 760 with the session's frame
    /// counters for the `closed` log, 792 with the connection's standing with the per-address
    /// limits (`abuse::Client`), 808 with the writer's acceptance instant of the oldest
    /// publication it holds (the delivery latency), 800 once the session tracker is no longer
    /// held across the driver's await, 808 with the inflating layer's pointer to a compression
    /// agreement,
    /// 800 again once the control-reply flag moved into the writer's spare room (800 kept
    /// tokio's task cell, 128-byte aligned, in jemalloc's 896-byte class rather than its
    /// 1,024-byte one: 2,820 to 2,670 bytes per idle connection in the bench), 648 once the
    /// close handshake's timer went into its box, the socket and the stop token out of the
    /// task's captures and the driver's loop closure held one reference instead of four,
    /// 632 without tokio-tungstenite's stream (its two waker proxies' pointers and its flags),
    /// 640 with tungstenite's state made droppable while idle and the payload limit to remake
    /// it. At most 672 keeps the cell in the 768-byte class. A captured value stored twice (an
    /// `async fn`'s parameters, or a value moved out of a capture into a binding) costs
    /// hundreds more.
    #[test]
    fn an_idle_connections_task_stays_small() {
        let size = future_size(serve as fn(_, _, _, _, _) -> _);
        eprintln!("the connection task is {size} bytes");
        assert!(size <= 672, "the connection task is {size} bytes");
    }

    const HANDSHAKE: &[u8] = b"GET /ws?token=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn the_over_limit_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_ADDRESS_LIMIT).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"]["code"], "rate_limited");
    }

    #[test]
    fn a_complete_handshake_is_answered_directly() {
        let Parsed::Upgrade { layout, .. } = parse_first(HANDSHAKE, None) else {
            panic!("not an upgrade: {:?}", parse_first(HANDSHAKE, None))
        };
        assert_eq!(layout.head_len(), HANDSHAKE.len());
        let head = DirectHead::new(HANDSHAKE.to_vec(), layout);
        assert_eq!(head.query(), "token=abc");
        assert_eq!(
            head.value(&http::header::SEC_WEBSOCKET_KEY),
            Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..])
        );
    }

    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let mut bytes = HANDSHAKE.to_vec();
        bytes.extend_from_slice(b"\x81\x80");
        let Parsed::Upgrade { layout, .. } = parse_first(&bytes, None) else {
            panic!("not an upgrade")
        };
        assert_eq!(layout.head_len(), HANDSHAKE.len());
        assert_eq!(DirectHead::new(bytes, layout).target(), "/ws?token=abc");
    }

    #[test]
    fn an_incomplete_handshake_waits_for_more() {
        for len in [1, 3, 8, 20, HANDSHAKE.len() - 1] {
            assert!(
                matches!(parse_first(&HANDSHAKE[..len], None), Parsed::Partial),
                "{len}"
            );
        }
    }

    #[test]
    fn other_requests_go_to_hyper_as_soon_as_known() {
        for head in [
            &b"POST /api/publish HTTP/1.1\r\n"[..],
            b"POST",
            b"GET /health HTTP/1.1\r\n",
            b"GET /wsx HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /ws HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x16\x03\x01 not http at all",
        ] {
            assert!(
                matches!(parse_first(head, None), Parsed::Http),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn too_many_headers_go_to_hyper() {
        let mut head = b"GET /ws HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_DIRECT_HEADERS {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(matches!(parse_first(&head, None), Parsed::Http));
    }

    #[test]
    fn the_echo_path_is_answered_directly_only_when_configured() {
        let head = b"GET /echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        assert!(matches!(parse_first(head, None), Parsed::Http));
        assert!(matches!(
            parse_first(head, Some("/echo")),
            Parsed::Upgrade { echo: true, .. }
        ));
        assert!(matches!(
            parse_first(&head[..8], Some("/echo")),
            Parsed::Partial
        ));
        assert!(matches!(
            parse_first(b"GET /echoes HTTP/1.1\r\n", Some("/echo")),
            Parsed::Http
        ));
        assert!(matches!(
            parse_first(HANDSHAKE, Some("/echo")),
            Parsed::Upgrade { echo: false, .. }
        ));
    }
}
