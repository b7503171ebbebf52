//! The connection's socket shared by its two writers, tungstenite and the driver's data-frame
//! `Writer`, which take turns so that no control frame ever lands inside a data frame.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tungstenite::{self, Message};

use crate::{
    prefixed::ReadReady,
    ws::{
        Ws,
        inflate::Failure,
        writer::{Compression, Writer},
    },
};

/// A WebSocket's socket, written by two writers in turns: tungstenite reads client frames and
/// writes the control frames it answers with (pong, close reply); the [`Writer`] writes data
/// frames.
///
/// tungstenite 0.30 writes a queued control reply the next time it is asked to read
/// (`WebSocketContext::read` flushes `additional_send` before reading a frame) or to flush,
/// and never otherwise; `Ws::poll_next` is that `read` and nothing more. A
/// reply written while a data frame is half-written would corrupt the stream, so:
///
/// - tungstenite is asked to read only while it holds no reply, and such a read writes
///   nothing: client frames are read even while a large data frame is half-written to a slow
///   reader, whose requests and acks therefore do not wait behind its socket;
/// - a read that returns a ping (or a close) leaves a reply queued: nothing more is read and
///   no data frame is begun until the half-written data frame is finished and the reply is
///   flushed, which happens at a frame boundary;
/// - so tungstenite holds at most one reply, far below its write-buffer cap, and a flush that
///   succeeds leaves it holding nothing.
pub(super) struct Wire<S> {
    ws: Ws<S>,
    /// The data frames, and whether tungstenite holds a control reply not written yet.
    writer: Writer,
}

impl<S: AsyncRead + AsyncWrite + ReadReady + Unpin> Wire<S> {
    /// The socket of `ws`, with nothing staged.
    pub(super) fn new(ws: Ws<S>) -> Self {
        Self {
            ws,
            writer: Writer::default(),
        }
    }

    /// The data-frame writer, to stage frames or ask what it holds.
    pub(super) fn writer(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// How data frames are compressed on this connection, with messages of `threshold` bytes
    /// and more worth it; `None` when it did not negotiate compression.
    pub(super) fn compression(&self, threshold: usize) -> Option<Compression> {
        self.ws.get_ref().deflate().map(|deflate| Compression {
            threshold,
            max_len: deflate.max_compressed_message(),
        })
    }

    /// The next client message: `Pending` while none has arrived, and also while a control
    /// reply cannot be written yet (the socket is full), in which case the task is woken when
    /// the socket takes more, not when the client sends.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        if let Err(error) = ready!(self.poll_control(cx)) {
            return Poll::Ready(Some(Err(error)));
        }
        let message = ready!(self.ws.poll_next(cx));
        if let Some(Ok(Message::Ping(_) | Message::Close(_))) = &message {
            // tungstenite queued the pong (or the close reply): see the type's docs.
            self.writer.control_pending = true;
        }
        // A compressed message that failed to inflate, or text found not to be UTF-8 before
        // its frame was whole, reaches tungstenite as a read error: report it as what it is.
        let failure = self.ws.get_ref().failure();
        Poll::Ready(match (message, failure) {
            (Some(Err(tungstenite::Error::Io(_))), Some(failure)) => Some(Err(match failure {
                Failure::TooLarge => tungstenite::Error::Capacity(
                    tungstenite::error::CapacityError::MessageTooLong {
                        size: usize::MAX,
                        max_size: 0,
                    },
                ),
                Failure::Invalid => tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::InvalidOpcode(0),
                ),
                Failure::Utf8 => tungstenite::Error::Utf8(Failure::Utf8.to_string()),
            })),
            (message, _) => message,
        })
    }

    /// `Ready(Ok)` once tungstenite holds no control reply, so that data frames may be begun:
    /// at once when it holds none, else after finishing the half-written data frame and
    /// flushing the reply.
    pub(super) fn poll_control(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        if !self.writer.control_pending {
            return Poll::Ready(Ok(()));
        }
        ready!(
            self.writer
                .poll_finish_frame(cx, self.ws.get_mut().get_mut())
        )?;
        ready!(self.ws.poll_flush(cx))?;
        self.writer.control_pending = false;
        Poll::Ready(Ok(()))
    }

    /// Writes every staged data frame, after a control reply that waits (see
    /// [`Wire::poll_control`]): `Ready(Ok)` once all are written, `Pending` while the socket is
    /// full.
    pub(super) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        ready!(self.poll_control(cx))?;
        let socket = self.ws.get_mut().get_mut();
        ready!(self.writer.poll_write_out(cx, socket))?;
        // TLS may hold records it took but could not write yet; a bare socket holds nothing
        // and returns at once.
        ready!(Pin::new(socket).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// The WebSocket back, for the close handshake, with the rest of the half-written data
    /// frame when `finish_frame` is set (it must go out before any close frame); the other
    /// staged frames are dropped.
    pub(super) fn into_goodbye(mut self, finish_frame: bool) -> (Ws<S>, Vec<Bytes>) {
        let unfinished = if finish_frame {
            self.writer.take_unfinished_frame()
        } else {
            Vec::new()
        };
        (self.ws, unfinished)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        io::{self, Cursor},
        task::Waker,
    };

    use proptest::prelude::*;
    use tokio::io::ReadBuf;
    use tungstenite::protocol::frame::{
        Frame as WireFrame, FrameHeader,
        coding::{Control, Data, OpCode},
    };

    use super::*;
    use crate::ws::inflate::Inflating;

    /// An in-memory socket: reads return what the test fed in (`Pending` when nothing is
    /// left), and writes take at most `room` bytes in all until the test makes more room
    /// (`Pending` when there is none), like a slow reader's full socket.
    #[derive(Default)]
    struct Pipe {
        inbound: VecDeque<u8>,
        outbound: Vec<u8>,
        room: usize,
    }

    impl ReadReady for Pipe {}

    impl AsyncRead for Pipe {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.inbound.is_empty() {
                return Poll::Pending;
            }
            let n = this.inbound.len().min(buf.remaining());
            let bytes: Vec<u8> = this.inbound.drain(..n).collect();
            buf.put_slice(&bytes);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(this.room);
            this.outbound.extend_from_slice(&buf[..n]);
            this.room -= n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a client sends.
    #[derive(Debug, Clone)]
    enum Sent {
        Text(String),
        Ping(Vec<u8>),
    }

    /// A server-side wire over an empty pipe, configured as in production.
    fn wire() -> Wire<Pipe> {
        let ws = Ws::from_partially_read(
            Inflating::new(Pipe::default(), None, 1 << 20, Vec::new()).0,
            Vec::new(),
            1 << 20,
        );
        Wire::new(ws)
    }

    /// Feeds `sent` to the server as a client sends it (masked).
    fn feed(wire: &mut Wire<Pipe>, sent: &Sent) {
        let mut frame = match sent {
            Sent::Text(text) => WireFrame::message(text.clone(), OpCode::Data(Data::Text), true),
            Sent::Ping(payload) => WireFrame::ping(payload.clone()),
        };
        frame.header_mut().mask = Some([0x37, 0xfa, 0x21, 0x3d]);
        let mut bytes = Vec::new();
        frame
            .format(&mut bytes)
            .unwrap_or_else(|e| panic!("formatting into a Vec failed: {e}"));
        wire.ws.get_mut().get_mut().inbound.extend(bytes);
    }

    /// Everything the server wrote, as (opcode, payload) frames; fails unless the bytes are a
    /// sequence of whole, unmasked frames.
    #[track_caller]
    fn frames_written(wire: &mut Wire<Pipe>) -> Vec<(OpCode, Vec<u8>)> {
        let bytes = &wire.ws.get_mut().get_mut().outbound;
        let mut cursor = Cursor::new(bytes.as_slice());
        let mut frames = Vec::new();
        while usize::try_from(cursor.position()).is_ok_and(|at| at < bytes.len()) {
            let (header, len) = FrameHeader::parse(&mut cursor)
                .unwrap_or_else(|e| panic!("bad frame header: {e}"))
                .unwrap_or_else(|| panic!("a frame header is cut short"));
            assert_eq!(header.mask, None, "server frames are not masked");
            let start = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
            let end = usize::try_from(len).map_or(usize::MAX, |len| start.saturating_add(len));
            assert!(end <= bytes.len(), "a frame's payload is cut short");
            frames.push((header.opcode, bytes[start..end].to_vec()));
            cursor.set_position(end as u64);
        }
        frames
    }

    /// Reads until `Pending`, returning what was read (texts and pings).
    fn read_all(wire: &mut Wire<Pipe>, cx: &mut Context<'_>) -> Vec<String> {
        let mut read = Vec::new();
        while let Poll::Ready(message) = wire.poll_read(cx) {
            match message {
                Some(Ok(Message::Text(text))) => read.push(text.as_str().to_owned()),
                Some(Ok(Message::Ping(payload))) => {
                    read.push(format!("ping {}", String::from_utf8_lossy(&payload)));
                }
                other => panic!("unexpected read: {other:?}"),
            }
        }
        read
    }

    #[test]
    fn reading_goes_on_while_a_data_frame_is_half_written_until_a_ping_needs_its_pong() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut wire = wire();
        wire.writer().push_frame(Bytes::from(vec![b'x'; 10_000]));
        wire.ws.get_mut().get_mut().room = 100;
        assert!(wire.poll_write(&mut cx).is_pending());
        assert!(!wire.writer().at_frame_boundary());
        for sent in [
            Sent::Text("a".into()),
            Sent::Ping(b"p".to_vec()),
            Sent::Text("b".into()),
        ] {
            feed(&mut wire, &sent);
        }

        // The text is read mid-frame; after the ping nothing is, until the pong can go.
        assert_eq!(read_all(&mut wire, &mut cx), ["a", "ping p"]);
        assert_eq!(
            wire.ws.get_mut().get_mut().outbound.len(),
            100,
            "tungstenite wrote mid-frame"
        );

        wire.ws.get_mut().get_mut().room = usize::MAX;
        assert_eq!(read_all(&mut wire, &mut cx), ["b"]);
        assert!(wire.poll_write(&mut cx).is_ready());
        assert_eq!(
            frames_written(&mut wire),
            [
                (OpCode::Data(Data::Text), vec![b'x'; 10_000]),
                (OpCode::Control(Control::Pong), b"p".to_vec()),
            ]
        );
    }

    #[test]
    fn no_data_frame_is_begun_while_a_pong_waits() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut wire = wire();
        feed(&mut wire, &Sent::Ping(b"p".to_vec()));
        assert_eq!(read_all(&mut wire, &mut cx), ["ping p"]);
        // The pong could not be written: the data frame staged meanwhile waits for it.
        wire.writer().push_frame(Bytes::from_static(b"data"));
        assert!(wire.poll_write(&mut cx).is_pending());
        wire.ws.get_mut().get_mut().room = usize::MAX;
        assert!(wire.poll_write(&mut cx).is_ready());
        assert_eq!(
            frames_written(&mut wire),
            [
                (OpCode::Control(Control::Pong), b"p".to_vec()),
                (OpCode::Data(Data::Text), b"data".to_vec()),
            ]
        );
    }

    fn sent() -> impl Strategy<Value = Vec<Sent>> {
        let one = prop_oneof![
            3 => "[a-z]{0,20}".prop_map(Sent::Text),
            1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Sent::Ping),
        ];
        proptest::collection::vec(one, 0..30)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the client sends and however slowly the socket drains, the server writes
        /// whole frames: its data frames in order, one pong per ping between them, and every
        /// client message is read in order.
        #[test]
        fn control_frames_never_land_inside_data_frames(
            payload_lens in proptest::collection::vec(0_usize..70_000, 1..6),
            sent in sent(),
            rooms in proptest::collection::vec(0_usize..5_000, 1..60),
            feed_every in 1_usize..4,
        ) {
            let mut cx = Context::from_waker(Waker::noop());
            let mut wire = wire();
            for (i, len) in payload_lens.iter().enumerate() {
                let byte = b'a' + u8::try_from(i % 26).unwrap_or(0);
                wire.writer().push_frame(Bytes::from(vec![byte; *len]));
            }
            let mut to_send = sent.iter();
            let mut read = Vec::new();
            // Interleave the client's frames, reads, writes and the socket draining; at the end
            // the socket takes everything.
            for (step, room) in rooms.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
                let last = *room == usize::MAX;
                if step % feed_every == 0 || last {
                    for sent in to_send.by_ref().take(if last { usize::MAX } else { 1 }) {
                        feed(&mut wire, sent);
                    }
                }
                let pipe = wire.ws.get_mut().get_mut();
                pipe.room = pipe.room.saturating_add(*room);
                read.extend(read_all(&mut wire, &mut cx));
                let _ = wire.poll_write(&mut cx);
            }
            prop_assert!(wire.poll_control(&mut cx).is_ready());
            prop_assert!(!wire.writer().has_staged());

            let expected_read: Vec<String> = sent
                .iter()
                .map(|sent| match sent {
                    Sent::Text(text) => text.clone(),
                    Sent::Ping(payload) => format!("ping {}", String::from_utf8_lossy(payload)),
                })
                .collect();
            prop_assert_eq!(read, expected_read);

            let frames = frames_written(&mut wire);
            let data: Vec<Vec<u8>> = frames
                .iter()
                .filter(|(opcode, _)| *opcode == OpCode::Data(Data::Text))
                .map(|(_, payload)| payload.clone())
                .collect();
            let expected_data: Vec<Vec<u8>> = payload_lens
                .iter()
                .enumerate()
                .map(|(i, len)| vec![b'a' + u8::try_from(i % 26).unwrap_or(0); *len])
                .collect();
            prop_assert_eq!(data, expected_data);
            let pongs: Vec<Vec<u8>> = frames
                .iter()
                .filter(|(opcode, _)| *opcode == OpCode::Control(Control::Pong))
                .map(|(_, payload)| payload.clone())
                .collect();
            let pings: Vec<Vec<u8>> = sent
                .iter()
                .filter_map(|sent| match sent {
                    Sent::Ping(payload) => Some(payload.clone()),
                    Sent::Text(_) => None,
                })
                .collect();
            prop_assert_eq!(pongs, pings);
        }
    }
}
