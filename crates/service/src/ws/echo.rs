//! The echo endpoint for WebSocket conformance suites (Autobahn|Testsuite): every text and
//! binary message comes back as it arrived, read by the same tungstenite settings and written by
//! the same data-frame `Writer` as `/ws`, so the suite checks what `/ws` runs.

use std::{
    future::poll_fn,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::io::AsyncWriteExt as _;
use tungstenite::Message;

use crate::{
    app::App,
    head::DirectHead,
    prefixed::Socket,
    ws::{
        driver::{CLOSE_TIMEOUT, End, READ_BUDGET, end_for, goodbye},
        handshake::{answer_echo, websocket},
        wire::Wire,
    },
};

/// Serves a handshake to `echo_path` that arrived as a connection's first request (parsed by
/// `conn`; `leftover` is what the client sent after the head): answers it, then echoes until
/// the connection ends, then closes as `/ws` does.
pub(crate) async fn serve_echo<S: Socket>(
    app: Arc<App>,
    mut stream: S,
    head: DirectHead,
    leftover: Vec<u8>,
) {
    let answer = answer_echo(&app, &head);
    drop(head);
    let (greeting, deflate) = match answer {
        Ok(answer) => answer,
        Err(refusal) => {
            if stream.write_all(&refusal).await.is_ok() {
                let _ = stream.shutdown().await;
            }
            return;
        }
    };
    if stream.write_all(&greeting).await.is_err() {
        return;
    }
    let mut wire = Wire::new(websocket(&app, stream, leftover, deflate));
    let end = poll_fn(|cx| poll_echo(cx, &app, &mut wire)).await;
    let (ws, unfinished) = wire.into_goodbye(end != End::Dropped);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye(ws, end, unfinished)).await;
}

/// Echoes until the connection ends: writes what is staged, then reads one message and stages
/// its echo. Nothing more is read while the socket does not take the echoes, so a client that
/// does not read holds at most one message's echo here. `Ready` when the connection ends.
fn poll_echo<S: Socket>(cx: &mut Context<'_>, app: &App, wire: &mut Wire<S>) -> Poll<End> {
    let compression = wire.compression(app.gateway.runtime().compression_threshold_bytes());
    for _ in 0..READ_BUDGET {
        match wire.poll_write(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => return Poll::Ready(end_for(&error)),
            Poll::Pending => return Poll::Pending,
        }
        match wire.poll_read(cx) {
            Poll::Ready(Some(Ok(message))) => match message {
                Message::Text(text) => {
                    wire.writer()
                        .push_message(Bytes::from(text), false, compression);
                }
                Message::Binary(payload) => wire.writer().push_message(payload, true, compression),
                // A ping's pong is tungstenite's to write, in turn (`Wire`).
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    let code = frame.map(|frame| u16::from(frame.code));
                    return Poll::Ready(End::PeerClosed(code));
                }
            },
            Poll::Ready(Some(Err(error))) => return Poll::Ready(end_for(&error)),
            Poll::Ready(None) => return Poll::Ready(End::Dropped),
            Poll::Pending => return Poll::Pending,
        }
    }
    // Other connections deserve a turn: come back right away.
    cx.waker().wake_by_ref();
    Poll::Pending
}
