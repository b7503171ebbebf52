//! The connection driver: one task per WebSocket that reads client frames into the core
//! `Session` and writes what the connection's outbox yields, until the connection ends; then
//! the cleanup and the close handshake.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use herald_core::Session;
use herald_protocol::CloseCode;
use tokio::{io::AsyncWriteExt as _, time::Sleep};
use tungstenite::{
    self, Message, Utf8Bytes,
    protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
};

use crate::{
    app::App,
    prefixed::Socket,
    ws::{Ws, wire::Wire},
};

/// How long a closing connection may take to finish the close handshake.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Inbound frames handled per poll before yielding to other tasks.
pub(super) const READ_BUDGET: usize = 32;
/// Outbound batches written per poll before yielding to other tasks.
const WRITE_BUDGET: usize = 4;

/// Drives one connection until it ends, then runs the cleanup (dropping the session) and the
/// close handshake.
#[allow(clippy::manual_async_fn)] // Deliberate: see the comment in the body.
pub(crate) fn drive<S: Socket>(
    app: Arc<App>,
    ws: Ws<S>,
    session: Session,
) -> impl Future<Output = ()> {
    // Not an `async fn`: its parameters would be stored twice in the future (rust-lang/rust
    // #62958); an `async move` block uses the captured values in place. For the same reason
    // the wire is built here and captured, not built inside the block from a captured `ws`,
    // which would keep room for the socket twice (320 bytes more per connection). With one
    // task per connection this is most of an idle connection's task. Everything the loop
    // uses is one value, so the loop's closure holds one reference, not four.
    let mut live = Live {
        app,
        wire: Wire::new(ws),
        session,
        fill: FillDelay::default(),
    };
    async move {
        let end = poll_fn(|cx| live.poll(cx)).await;
        log_closed(&live.session, end);
        // The one cleanup path: every index forgets the connection before the (bounded) goodbye.
        drop(live.session);
        drop(live.fill);
        // A dropped socket takes nothing more; otherwise a half-written frame is finished
        // before any close frame.
        let (ws, unfinished) = live.wire.into_goodbye(end != End::Dropped);
        // Boxed with its timer: the close handshake's state and the timer that bounds it are
        // only needed while closing, so an idle connection's task does not carry room for
        // them (the timer alone is over 60 bytes).
        let goodbye = Box::pin(tokio::time::timeout(
            CLOSE_TIMEOUT,
            goodbye(ws, end, unfinished),
        ));
        let _ = goodbye.await;
    }
}

/// What a live connection's loop works on.
struct Live<S> {
    app: Arc<App>,
    wire: Wire<S>,
    session: Session,
    fill: FillDelay,
}

impl<S: Socket> Live<S> {
    /// One round of the connection's work ([`poll_connection`]).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        poll_connection(
            cx,
            &self.app,
            &mut self.wire,
            &mut self.session,
            &mut self.fill,
        )
    }
}

/// How a connection's driving loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The server closes with this code.
    Close(CloseCode),
    /// The server closes with a code of RFC 6455's own (1007, 1009 ...).
    Protocol(WsCloseCode),
    /// The client sent a close frame (tungstenite queued the reply), with its code if any.
    PeerClosed(Option<u16>),
    /// The socket failed or ended without a close handshake.
    Dropped,
}

/// One round of a connection's work: read client frames (at most [`READ_BUDGET`]), then drain
/// the outbox (at most [`WRITE_BUDGET`] batches) and write. `Ready` when the connection ends.
fn poll_connection<S: Socket>(
    cx: &mut Context<'_>,
    app: &App,
    wire: &mut Wire<S>,
    session: &mut Session,
    fill: &mut FillDelay,
) -> Poll<End> {
    // Read: feed client frames to the session, which queues its replies in the outbox. This
    // goes on while a data frame is half-written, so a slow reader's requests and acks do not
    // wait behind its socket; `Wire` keeps tungstenite's control replies out of data frames.
    let mut read_budget_spent = true;
    for _ in 0..READ_BUDGET {
        match wire.poll_read(cx) {
            Poll::Ready(Some(Ok(message))) => {
                session.count_frame_in();
                match message {
                    Message::Text(text) => session.on_text(text.as_str()),
                    Message::Binary(_) => {
                        return Poll::Ready(End::Close(CloseCode::UnsupportedData));
                    }
                    // A ping's pong is tungstenite's to write, in turn (`Wire`).
                    Message::Ping(_) | Message::Pong(_) => session.touch(),
                    Message::Close(frame) => {
                        let code = frame.map(|frame| u16::from(frame.code));
                        return Poll::Ready(End::PeerClosed(code));
                    }
                    Message::Frame(_) => {}
                }
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(end_for(&error)),
            Poll::Ready(None) => return Poll::Ready(End::Dropped),
            Poll::Pending => {
                read_budget_spent = false;
                break;
            }
        }
    }

    // Write: drain the outbox into frames (a few batches' worth), then write them all, in
    // one system call when the socket takes them. Frames left from a write the socket did
    // not take go first; new ones are drained only once no control reply waits, so that a
    // socket that takes nothing leaves them in the outbox, where shedding applies.
    let resuming = wire.writer().has_staged();
    let mut write_budget_spent = false;
    let written = match wire.poll_control(cx) {
        Poll::Ready(Ok(())) => {
            if !resuming {
                match drain(cx, app, wire, session, fill) {
                    Drained::End(end) => return Poll::Ready(end),
                    Drained::Staged { budget_spent } => write_budget_spent = budget_spent,
                }
            }
            wire.poll_write(cx)
        }
        other => other,
    };
    match written {
        Poll::Ready(Ok(())) => {
            write_budget_spent |= resuming;
            if let Some(accepted) = wire.writer().take_written_acceptance() {
                app.gateway.record_delivery(accepted);
            }
        }
        Poll::Ready(Err(error)) => return Poll::Ready(end_for(&error)),
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
    // Idle again: hand the staging buffers back so an idle connection holds none.
    wire.writer().release_if_idle();
    if read_budget_spent || write_budget_spent {
        // Work is left but other connections deserve a turn: come back right away.
        cx.waker().wake_by_ref();
    }
    Poll::Pending
}

/// What [`drain`] did.
enum Drained {
    /// Frames (perhaps none) are staged; `budget_spent` when more may wait in the outbox.
    Staged { budget_spent: bool },
    /// The connection ends.
    End(End),
}

/// Takes up to [`WRITE_BUDGET`] batches from the outbox into the writer, and counts the
/// frames taken.
fn drain<S: Socket>(
    cx: &mut Context<'_>,
    app: &App,
    wire: &mut Wire<S>,
    session: &mut Session,
    fill: &mut FillDelay,
) -> Drained {
    let mut taken = 0;
    let drained = drain_counted(cx, app, wire, session, fill, &mut taken);
    session.count_frames_out(taken);
    drained
}

/// [`drain`], adding the frames taken from the outbox to `taken`.
fn drain_counted<S: Socket>(
    cx: &mut Context<'_>,
    app: &App,
    wire: &mut Wire<S>,
    session: &Session,
    fill: &mut FillDelay,
    taken: &mut usize,
) -> Drained {
    let batch = app.gateway.runtime().message_batch_size();
    let compression = wire.compression(app.gateway.runtime().compression_threshold_bytes());
    let connection = session.connection();
    let outbox = connection.outbox();
    for _ in 0..WRITE_BUDGET {
        if fill.waiting(cx, app, session, batch) {
            return Drained::Staged {
                budget_spent: false,
            };
        }
        let writer = wire.writer();
        match outbox.poll_drain(cx, batch, writer.drained()) {
            Poll::Ready(None) => {
                let moved = writer.drained().len();
                *taken += moved;
                writer.stage(connection.batching(), compression);
                if moved < batch {
                    // The outbox ran empty and will wake the task for what comes next.
                    return Drained::Staged {
                        budget_spent: false,
                    };
                }
            }
            // A slow consumer's queue is the problem: close without the rest.
            Poll::Ready(Some(CloseCode::SlowConsumer)) => {
                let settings = app.gateway.settings();
                tracing::warn!(
                    connection_id = %connection.id(),
                    queued_frames = outbox.len(),
                    max_queue_size = settings.max_queue_size,
                    max_queue_bytes = settings.max_queue_bytes,
                    "slow consumer closed"
                );
                return Drained::End(End::Close(CloseCode::SlowConsumer));
            }
            // Everything queued before the close request is out of the queue: close once
            // it is written too (the request stays set for the next round).
            Poll::Ready(Some(code)) => {
                if !writer.has_staged() {
                    return Drained::End(End::Close(code));
                }
                // No waker was registered: come back once this is written.
                return Drained::Staged { budget_spent: true };
            }
            Poll::Pending => {
                return Drained::Staged {
                    budget_spent: false,
                };
            }
        }
    }
    Drained::Staged { budget_spent: true }
}

/// With `message_batch_delay_ms` above zero, holds back a partly filled batch until the delay
/// has passed since its first frame.
#[derive(Default)]
struct FillDelay {
    /// While a batch is waiting to fill.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl FillDelay {
    /// Whether to wait before draining a batch of `batch` frames; the task is woken when the
    /// delay ends.
    fn waiting(
        &mut self,
        cx: &mut Context<'_>,
        app: &App,
        session: &Session,
        batch: usize,
    ) -> bool {
        let delay = app.gateway.runtime().message_batch_delay();
        if delay.is_zero() {
            // The default: no wait, and no extra lock of the outbox on every write.
            self.deadline = None;
            return false;
        }
        let queued = session.connection().outbox().len();
        if queued == 0 || queued >= batch {
            self.deadline = None;
            return false;
        }
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.deadline = None;
            return false;
        }
        true
    }
}

/// The close handshake for how the connection ended, after the rest of a frame that was
/// half-written when it ended (a close frame must not land inside it).
pub(super) async fn goodbye<S: Socket>(mut ws: Ws<S>, end: End, unfinished: Vec<Bytes>) {
    for bytes in unfinished {
        if ws.get_mut().get_mut().write_all(&bytes).await.is_err() {
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
            let reason = Utf8Bytes::from_static(protocol_reason(code));
            let _ = ws.close(Some(CloseFrame { code, reason })).await;
            while let Some(Ok(_)) = ws.next().await {}
        }
        End::PeerClosed(_) => {
            // Corked, the reply to the peer's close frame waits in the socket until the close
            // that follows, and both leave as one segment: a packet less per connection, and
            // on loopback a packet is most of what a closing connection costs.
            #[cfg(target_os = "linux")]
            let _ = socket2::SockRef::from(ws.get_ref().get_ref().tcp()).set_tcp_cork(true);
            let _ = ws.flush().await;
        }
        End::Dropped => {}
    }
}

/// The reason sent with a close of RFC 6455's own codes.
fn protocol_reason(code: WsCloseCode) -> &'static str {
    match code {
        WsCloseCode::Size => "message larger than the payload limit",
        WsCloseCode::Invalid => "invalid UTF-8",
        _ => "protocol error",
    }
}

/// Logs `closed` with how the connection ended, how long it lived and the frames each way.
/// A close the client began is logged with its code (1005 when its frame had none); one
/// without a close handshake with 1006, as RFC 6455 reports them. The client's close reason
/// is its own text and is not logged.
fn log_closed(session: &Session, end: End) {
    let (code, reason, by) = match end {
        End::Close(code) => {
            if code == CloseCode::RateLimited {
                // The client kept breaking its limits.
                metrics::counter!("herald_abuse_closes_total").increment(1);
            }
            (code.code(), code.reason(), "server")
        }
        End::Protocol(code) => (u16::from(code), protocol_reason(code), "server"),
        End::PeerClosed(code) => (code.unwrap_or(1005), "closed by the client", "client"),
        End::Dropped => (1006, "dropped without a close handshake", "client"),
    };
    tracing::info!(
        connection_id = %session.connection().id(),
        code,
        reason,
        closed_by = by,
        duration_ms = session.duration_ms(),
        frames_in = session.frames_in(),
        frames_out = session.frames_out(),
        "closed"
    );
}

/// How a tungstenite error ends the connection.
pub(super) fn end_for(error: &tungstenite::Error) -> End {
    match error {
        tungstenite::Error::Capacity(_) => End::Protocol(WsCloseCode::Size),
        tungstenite::Error::Utf8(_) => End::Protocol(WsCloseCode::Invalid),
        tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => {
            End::Protocol(WsCloseCode::Protocol)
        }
        // Socket errors, and the control-frame cap (which `Wire` keeps from being reached).
        _ => End::Dropped,
    }
}
