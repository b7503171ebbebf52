//! A WebSocket on an async socket: tungstenite's protocol state (`WebSocketContext`) driven
//! with the polling task's own `Context`, lent to the socket for each call and never stored,
//! and dropped while the connection is idle (and not remade until the socket has something to
//! read).
//!
//! tokio-tungstenite's `WebSocketStream` does the same job with two `Arc`'d waker proxies per
//! connection (so that a reading and a writing task can share one socket); a connection here
//! is driven by one task, which needs no proxy.

use std::{
    future::poll_fn,
    io::{self, Read, Write},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::{
    Error, Message,
    protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext},
};

use crate::{prefixed::ReadReady, ws::inflate::Inflating};

/// tungstenite's read buffer, allocated per connection, and the most it reads from the socket
/// at a time. Client frames are small control messages; a larger one grows the buffer as
/// needed. Measured: 4 KiB cost 8.2 KB per idle connection in all, 512 bytes 4.5 KB (`cargo
/// xtask bench --scenario idle`). 128 bytes saves nothing: tungstenite reserves a frame's
/// length again once its header is read, with the frame already in the buffer, so any frame
/// over about 61 bytes (a `subscribe` is more) grows 128 to 256 (docs/benchmarks.md).
const READ_BUFFER_BYTES: usize = 256;
/// Control frames (pong and close replies) tungstenite may hold for a peer that does not read.
/// `Wire` lets it hold one at a time, so this is a backstop, not a limit that is reached.
const CONTROL_BUFFER_BYTES: usize = 64 * 1024;

/// tungstenite's per-connection buffers, sized for many mostly idle connections, and the
/// limit on a client's messages and frames (`max_payload_bytes`).
pub(super) fn ws_config(max_payload: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        // Client frames are small control messages; the buffer is allocated per connection.
        .read_buffer_size(READ_BUFFER_BYTES)
        // Only control frames (pong and close replies) go through tungstenite's write buffer:
        // written as soon as they are queued, and capped (a backstop: `Wire` lets it hold one
        // at a time). Data frames are the driver's (`Writer`).
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_BUFFER_BYTES)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload))
}

/// A WebSocket connection on its socket (`prefixed::Socket`: TCP, or TLS over it), read
/// through permessage-deflate where the connection negotiated it.
pub(crate) struct Ws<S> {
    /// tungstenite's side: the read buffer, the frame and message being read, the queued
    /// control reply and the close state. `None` while the connection is idle (see
    /// [`Ws::poll_next`]): a new one is made, with a new read buffer, when it is next needed.
    context: Option<WebSocketContext>,
    socket: Inflating<S>,
    /// The limit on a client's messages and frames, for a new `context`.
    max_payload: usize,
    /// Whether reading has ended (an error or the close was returned): nothing more is read.
    ended: bool,
    /// Whether tungstenite may hold a control reply (it read a ping or a close) that no flush
    /// has written yet.
    reply_queued: bool,
}

impl<S: AsyncRead + AsyncWrite + ReadReady + Unpin> Ws<S> {
    /// A server-side WebSocket on `socket`, whose handshake is done; `part` is what the client
    /// sent after it that was already read, `max_payload` the limit on a client's messages and
    /// frames.
    pub(crate) fn from_partially_read(
        socket: Inflating<S>,
        part: Vec<u8>,
        max_payload: usize,
    ) -> Self {
        let config = ws_config(max_payload);
        Self {
            context: Some(WebSocketContext::from_partially_read(
                part,
                Role::Server,
                Some(config),
            )),
            socket,
            max_payload,
            ended: false,
            reply_queued: false,
        }
    }

    /// The socket, under tungstenite.
    pub(crate) fn get_ref(&self) -> &Inflating<S> {
        &self.socket
    }

    /// The socket, under tungstenite, to write to it directly (data frames).
    pub(crate) fn get_mut(&mut self) -> &mut Inflating<S> {
        &mut self.socket
    }

    /// Whether tungstenite's state is held (it is dropped while the connection is idle).
    #[cfg(test)]
    pub(super) fn holds_context(&self) -> bool {
        self.context.is_some()
    }

    /// The next client message, as tokio-tungstenite's `Stream` gives it: `Ready(None)` once
    /// the connection is closed, and after an error has been returned once. A read also writes
    /// a control reply that tungstenite has queued (see `wire::Wire`).
    ///
    /// A read that must wait for the client with tungstenite between messages (every byte it
    /// was handed ends a whole frame outside any fragmented message, as the socket's scan
    /// knows), no control reply queued and the connection open, drops tungstenite's state: it
    /// then holds nothing a new one would not (an empty read buffer, no partial frame or
    /// message, nothing to write, the state `Active`), and an idle connection holds no read
    /// buffer.
    ///
    /// While it is dropped, the socket is asked whether a read might find anything before a
    /// new one is made to read: a connection woken to write (every delivery wakes it) does
    /// not remake tungstenite's state, with its read buffer, only to find nothing to read.
    /// That is sound because the state is dropped only by a read that waited, and nothing
    /// has read the socket since (see [`ReadReady`]).
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.context.is_none() && self.socket.get_ref().poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        let context = context(&mut self.context, self.max_payload);
        match pending_on_would_block(context.read(&mut Lent::new(&mut self.socket, cx))) {
            Poll::Pending => {
                if !self.reply_queued && context.can_write() && self.socket.between_messages() {
                    self.context = None;
                }
                Poll::Pending
            }
            Poll::Ready(Ok(message)) => {
                if matches!(message, Message::Ping(_) | Message::Close(_)) {
                    self.reply_queued = true;
                }
                Poll::Ready(Some(Ok(message)))
            }
            Poll::Ready(Err(error)) => {
                self.ended = true;
                match error {
                    Error::AlreadyClosed | Error::ConnectionClosed => Poll::Ready(None),
                    error => Poll::Ready(Some(Err(error))),
                }
            }
        }
    }

    /// [`Ws::poll_next`] as a future.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Writes the control reply tungstenite holds, if any, and flushes the socket: `Ready(Ok)`
    /// once all is written, also once the close handshake is complete.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let context = context(&mut self.context, self.max_payload);
        let flushed =
            match pending_on_would_block(context.flush(&mut Lent::new(&mut self.socket, cx))) {
                Poll::Ready(Err(Error::ConnectionClosed)) => Poll::Ready(Ok(())),
                other => other,
            };
        if let Poll::Ready(Ok(())) = flushed {
            self.reply_queued = false;
        }
        flushed
    }

    /// [`Ws::poll_flush`] as a future.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Begins the close handshake with `frame` (nothing more when it has begun) and writes it
    /// out.
    pub(crate) async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        let mut frame = Some(frame);
        poll_fn(|cx| {
            let context = context(&mut self.context, self.max_payload);
            let mut lent = Lent::new(&mut self.socket, cx);
            let result = match frame.take() {
                // Queues the close frame and flushes; a flush that would block is finished
                // by the next polls.
                Some(frame) => context.close(&mut lent, frame),
                None => context.flush(&mut lent),
            };
            match pending_on_would_block(result) {
                Poll::Ready(Err(Error::ConnectionClosed)) => Poll::Ready(Ok(())),
                other => other,
            }
        })
        .await
    }
}

/// tungstenite's state in `slot`, a new one (between messages, `Active`) if it was dropped.
fn context(slot: &mut Option<WebSocketContext>, max_payload: usize) -> &mut WebSocketContext {
    slot.get_or_insert_with(|| WebSocketContext::new(Role::Server, Some(ws_config(max_payload))))
}

/// `Pending` for a result that failed only because the socket would block (the task is then
/// registered to be woken by the socket: see [`Lent`]).
fn pending_on_would_block<T>(result: Result<T, Error>) -> Poll<Result<T, Error>> {
    match result {
        Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// The async socket lent to tungstenite as a blocking-style `Read + Write` for one call, with
/// the polling task's context: an operation the socket cannot do now registers the task's
/// waker with it and fails with `WouldBlock`, which tungstenite passes up (it keeps what it
/// had read or queued) and [`pending_on_would_block`] turns into `Pending`.
struct Lent<'a, 'b, S> {
    socket: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<'a, 'b, S> Lent<'a, 'b, S> {
    fn new(socket: &'a mut S, cx: &'a mut Context<'b>) -> Self {
        Self { socket, cx }
    }
}

/// The `WouldBlock` of an operation the socket cannot do now.
fn would_block<T>(poll: Poll<io::Result<T>>) -> io::Result<T> {
    match poll {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<S: AsyncRead + Unpin> Read for Lent<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        would_block(Pin::new(&mut *self.socket).poll_read(self.cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl<S: AsyncWrite + Unpin> Write for Lent<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.socket).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        would_block(Pin::new(&mut *self.socket).poll_flush(self.cx))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Wake, Waker},
    };

    use futures_util::FutureExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex};

    use super::*;

    /// A task's waker that counts its wakes.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A server-side WebSocket over one end of an in-memory pipe, and the client's end.
    fn ws() -> (Ws<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1024);
        let (socket, part) = Inflating::new(server, None, 1 << 20, Vec::new());
        (Ws::from_partially_read(socket, part, 1 << 20), client)
    }

    /// A client's masked text frame (a zero mask, so the payload reads as sent).
    fn text_frame(text: &str) -> Vec<u8> {
        let mut frame = vec![
            0x81,
            0x80 | u8::try_from(text.len()).unwrap_or(0),
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    /// Bytes this thread holds from the allocator (jemalloc's counters, by size class).
    fn held_by_this_thread() -> u64 {
        let counter = |read: fn() -> tikv_jemalloc_ctl::Result<u64>| {
            read().unwrap_or_else(|e| panic!("jemalloc's thread counters: {e}"))
        };
        let allocated = counter(|| Ok(tikv_jemalloc_ctl::thread::allocatedp::read()?.get()));
        let deallocated = counter(|| Ok(tikv_jemalloc_ctl::thread::deallocatedp::read()?.get()));
        allocated.saturating_sub(deallocated)
    }

    /// What an idle connection's WebSocket costs on the heap: tungstenite's read buffer (256
    /// bytes, `READ_BUFFER_BYTES`) until it has read, and nothing once it waits between
    /// messages (tungstenite's state is dropped; it then held the buffer and the 48-byte
    /// record of the `BytesMut` it shares with the frames it split off, and tokio-tungstenite
    /// added two waker proxies, 128 bytes). Measured when written: 256 bytes, then 0.
    #[test]
    fn an_idle_websocket_holds_nothing_on_the_heap() {
        let (server, mut client) = duplex(1024);
        // Sent first: the pipe's own buffer is not the WebSocket's.
        assert!(client.write_all(&text_frame("hi")).now_or_never().is_some());
        let before = held_by_this_thread();
        let (socket, part) = Inflating::new(server, None, 1 << 20, Vec::new());
        let mut ws = Ws::from_partially_read(socket, part, 1 << 20);
        let fresh = held_by_this_thread() - before;
        assert!(fresh <= 256, "a new WebSocket holds {fresh} bytes");

        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(ws.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(ws.poll_next(&mut cx).is_pending());
        assert!(!ws.holds_context());
        let idle = held_by_this_thread() - before;
        // Printed only now: under `cargo test`, the first output of a test thread allocates
        // the harness's capture buffer on this thread, which the counters would take for
        // the WebSocket's.
        eprintln!("a new WebSocket holds {fresh} bytes, an idle one {idle}");
        assert_eq!(idle, 0, "an idle WebSocket holds {idle} bytes");

        // The next frame is read with a new read buffer.
        assert!(
            client
                .write_all(&text_frame("again"))
                .now_or_never()
                .is_some()
        );
        match ws.poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Message::Text(text)))) => assert_eq!(text.as_str(), "again"),
            other => panic!("unexpected read: {other:?}"),
        }
    }

    /// Whatever the split of the client's bytes into reads, tungstenite's state is dropped only
    /// between messages with no reply waiting, and every message is read whole and in order:
    /// a text message in two fragments with a ping between them, then a ping, then a text.
    #[test]
    fn tungstenite_is_dropped_only_between_messages_whatever_the_reads() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let masked = |first: u8, payload: &[u8]| {
            let mut frame = vec![first, 0x80 | u8::try_from(payload.len()).unwrap_or(0)];
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            frame
        };
        let sent = [
            masked(0x01, "héllo ".as_bytes()),
            masked(0x89, b"p1"),
            masked(0x80, b"world"),
            masked(0x89, b"p2"),
            masked(0x81, b"last"),
        ]
        .concat();
        for chunk in 1..=sent.len() {
            let mut cx = Context::from_waker(Waker::noop());
            let (mut ws, mut client) = ws();
            let mut read = Vec::new();
            // Where the state was dropped, as the count of messages read by then.
            let mut dropped_after = Vec::new();
            for piece in sent.chunks(chunk) {
                assert!(client.write_all(piece).now_or_never().is_some());
                loop {
                    match ws.poll_next(&mut cx) {
                        Poll::Ready(Some(Ok(message))) => read.push(message.to_string()),
                        Poll::Ready(other) => panic!("unexpected read: {other:?}"),
                        Poll::Pending => break,
                    }
                    // A pong goes out as `Wire` sends it: flushed before the next read.
                    assert!(matches!(ws.poll_flush(&mut cx), Poll::Ready(Ok(()))));
                }
                if !ws.holds_context() {
                    dropped_after.push(read.len());
                }
            }
            assert_eq!(
                read,
                ["p1", "héllo world", "p2", "last"],
                "reads of {chunk}"
            );
            assert!(
                // Never inside the fragmented message (after the first ping, read within it).
                dropped_after.iter().all(|&n| (2..=4).contains(&n)),
                "reads of {chunk}: dropped after {dropped_after:?} messages"
            );
            assert_eq!(dropped_after.last(), Some(&4), "reads of {chunk}");
        }
    }

    #[test]
    fn a_pong_the_socket_cannot_take_yet_keeps_tungstenites_state_until_it_is_written() {
        let mut cx = Context::from_waker(Waker::noop());
        let (server, mut client) = duplex(8);
        let (socket, part) = Inflating::new(server, None, 1 << 20, Vec::new());
        let mut ws = Ws::from_partially_read(socket, part, 1 << 20);
        // The way to the client is full.
        assert!(
            ws.get_mut()
                .get_mut()
                .write_all(&[0; 8])
                .now_or_never()
                .is_some()
        );
        assert!(
            client
                .write_all(&[0x89, 0x81, 0, 0, 0, 0, b'p'])
                .now_or_never()
                .is_some()
        );

        assert!(matches!(
            ws.poll_next(&mut cx),
            Poll::Ready(Some(Ok(Message::Ping(_))))
        ));
        assert!(ws.poll_next(&mut cx).is_pending());
        assert!(ws.holds_context(), "dropped with the pong unwritten");
        assert!(ws.poll_flush(&mut cx).is_pending());

        let mut filler = [0_u8; 8];
        assert!(client.read_exact(&mut filler).now_or_never().is_some());
        assert!(matches!(ws.poll_flush(&mut cx), Poll::Ready(Ok(()))));
        let mut pong = [0_u8; 3];
        assert!(client.read_exact(&mut pong).now_or_never().is_some());
        assert_eq!(pong, [0x8a, 1, b'p']);
        assert!(ws.poll_next(&mut cx).is_pending());
        assert!(!ws.holds_context());
    }

    #[test]
    fn a_frame_larger_than_the_read_buffer_is_read_whole() {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut ws, mut client) = ws();
        let text = "x".repeat(1000);
        let mut frame = vec![0x81, 0x80 | 126, 0x03, 0xe8, 0, 0, 0, 0];
        frame.extend_from_slice(text.as_bytes());
        assert!(client.write_all(&frame).now_or_never().is_some());
        match ws.poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Message::Text(read)))) => assert_eq!(read.as_str(), text),
            other => panic!("unexpected read: {other:?}"),
        }
    }

    /// A pipe whose readiness the test sets, and which counts the reads tried on it.
    struct Gated {
        pipe: DuplexStream,
        ready: bool,
        reads: usize,
    }

    impl ReadReady for Gated {
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.ready {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl AsyncRead for Gated {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            Pin::new(&mut this.pipe).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Gated {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().pipe).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().pipe).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().pipe).poll_shutdown(cx)
        }
    }

    /// A connection woken with nothing to read (to write a delivery) leaves its socket alone
    /// and tungstenite's state unmade, and reads again once the socket has something.
    #[test]
    fn an_idle_websocket_tries_no_read_until_its_socket_has_something() {
        let mut cx = Context::from_waker(Waker::noop());
        let (server, mut client) = duplex(1024);
        let gated = Gated {
            pipe: server,
            ready: true,
            reads: 0,
        };
        let (socket, part) = Inflating::new(gated, None, 1 << 20, Vec::new());
        let mut ws = Ws::from_partially_read(socket, part, 1 << 20);
        let mut send = |text: &str| {
            assert!(client.write_all(&text_frame(text)).now_or_never().is_some());
        };

        send("first");
        assert!(ws.poll_next(&mut cx).is_ready());
        assert!(ws.poll_next(&mut cx).is_pending());
        assert!(!ws.holds_context());

        ws.get_mut().get_mut().ready = false;
        let reads = ws.get_ref().get_ref().reads;
        for _ in 0..3 {
            assert!(ws.poll_next(&mut cx).is_pending());
        }
        assert_eq!(ws.get_ref().get_ref().reads, reads, "a read was tried");
        assert!(!ws.holds_context());

        send("second");
        ws.get_mut().get_mut().ready = true;
        match ws.poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Message::Text(text)))) => assert_eq!(text.as_str(), "second"),
            other => panic!("unexpected read: {other:?}"),
        }
    }

    /// While tungstenite's state is held (inside a message), readiness is not asked: the bytes
    /// of the message may already be in its buffer.
    #[test]
    fn a_websocket_inside_a_message_reads_whatever_the_socket_says() {
        let mut cx = Context::from_waker(Waker::noop());
        let (server, mut client) = duplex(1024);
        let gated = Gated {
            pipe: server,
            ready: false,
            reads: 0,
        };
        let (socket, part) = Inflating::new(gated, None, 1 << 20, Vec::new());
        let mut ws = Ws::from_partially_read(socket, part, 1 << 20);
        // Two whole frames in one write: the first read takes both into tungstenite's buffer.
        let frames = [text_frame("one"), text_frame("two")].concat();
        assert!(client.write_all(&frames).now_or_never().is_some());
        for expected in ["one", "two"] {
            match ws.poll_next(&mut cx) {
                Poll::Ready(Some(Ok(Message::Text(text)))) => {
                    assert_eq!(text.as_str(), expected);
                }
                other => panic!("unexpected read: {other:?}"),
            }
        }
        assert!(ws.poll_next(&mut cx).is_pending());
        assert!(!ws.holds_context());
    }

    #[test]
    fn a_read_that_must_wait_leaves_the_tasks_own_waker_with_the_socket_and_no_other() {
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let (mut ws, mut client) = ws();

        assert!(ws.poll_next(&mut cx).is_pending());
        // Ours, the test's, and the one the socket keeps to wake the task: no proxy holds it.
        assert_eq!(Arc::strong_count(&task), 3);

        client
            .write_all(&text_frame("hi"))
            .now_or_never()
            .unwrap_or_else(|| panic!("the pipe has room"))
            .unwrap_or_else(|e| panic!("the pipe is open: {e}"));
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was not woken");
        match ws.poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Message::Text(text)))) => assert_eq!(text.as_str(), "hi"),
            other => panic!("unexpected read: {other:?}"),
        }
    }

    #[test]
    fn a_ping_is_answered_on_the_next_read_and_a_close_ends_reading() {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut ws, mut client) = ws();
        let ping = [0x89, 0x81, 0, 0, 0, 0, b'p'];
        let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
        let sent = [&ping[..], &close[..]].concat();
        assert!(client.write_all(&sent).now_or_never().is_some());

        assert!(matches!(
            ws.poll_next(&mut cx),
            Poll::Ready(Some(Ok(Message::Ping(_))))
        ));
        assert!(matches!(
            ws.poll_next(&mut cx),
            Poll::Ready(Some(Ok(Message::Close(Some(_)))))
        ));
        // The close reply, queued by the read, goes out with a flush; then reading has ended.
        assert!(matches!(ws.poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert!(matches!(ws.poll_next(&mut cx), Poll::Ready(None)));
        assert!(matches!(ws.poll_next(&mut cx), Poll::Ready(None)));

        let mut written = [0_u8; 7];
        assert!(client.read_exact(&mut written).now_or_never().is_some());
        assert_eq!(written, [0x8a, 1, b'p', 0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn close_writes_the_close_frame_once_the_socket_takes_it() {
        let (server, mut client) = duplex(4);
        let (socket, part) = Inflating::new(server, None, 1 << 20, Vec::new());
        let mut ws = Ws::from_partially_read(socket, part, 1 << 20);
        let mut close = Box::pin(ws.close(Some(CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        })));
        let mut cx = Context::from_waker(Waker::noop());
        // Seven bytes into a pipe of four: the close waits for the client to read.
        assert!(close.as_mut().poll(&mut cx).is_pending());
        let mut written = [0_u8; 7];
        let mut read = 0;
        let mut closed = None;
        while read < written.len() {
            if closed.is_none()
                && let Poll::Ready(result) = close.as_mut().poll(&mut cx)
            {
                closed = Some(result);
            }
            read += client
                .read(&mut written[read..])
                .now_or_never()
                .and_then(Result::ok)
                .unwrap_or(0);
        }
        if closed.is_none()
            && let Poll::Ready(result) = close.as_mut().poll(&mut cx)
        {
            closed = Some(result);
        }
        assert!(matches!(closed, Some(Ok(()))), "{closed:?}");
        assert_eq!(written, [0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
    }
}
