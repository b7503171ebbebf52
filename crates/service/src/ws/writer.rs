//! The data-frame writer: encodes the frames drained from a connection's outbox and writes them
//! with vectored writes straight from their shared bytes.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use herald_core::Frame;
use herald_protocol::encode_batch;
use metrics::Counter;
use tokio::io::AsyncWrite;

use crate::ws::deflate;

/// How a connection that negotiated permessage-deflate sends data frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Compression {
    /// Messages shorter than this go plain (`compression_threshold_bytes`, read live).
    pub(super) threshold: usize,
    /// Messages longer than this go plain (the client's window: `Deflate`).
    pub(super) max_len: usize,
}

impl Compression {
    /// Whether a message of `len` bytes goes compressed.
    fn applies(self, len: usize) -> bool {
        len >= self.threshold && len <= self.max_len
    }
}

/// Encoded data frames on their way to the socket.
///
/// The driver writes data frames itself, with vectored writes straight from the frames' shared
/// bytes: a publication's payload is never copied per subscriber, and an idle connection keeps
/// no write buffer (tungstenite's grows to the largest burst and stays there). tungstenite
/// still writes the control frames it answers with (pong, close); `Wire` makes the two writers
/// take turns at frame boundaries, which [`Writer::at_frame_boundary`] and
/// [`Writer::poll_finish_frame`] exist for.
#[derive(Default)]
pub(super) struct Writer {
    /// Frames taken from the outbox and not yet staged.
    drained: Vec<Frame>,
    /// Frame headers and payloads, oldest first.
    out: VecDeque<Chunk>,
    /// The earliest acceptance of a live publication among the staged frames, reported as
    /// the delivery latency once they are all written.
    accepted: Option<Instant>,
    /// Bytes of the front chunk already written: a chunk is a header or one message's payload,
    /// at most `max_payload_bytes` (64 MiB) or the compressed copy of one, so far below 4 GiB.
    written: u32,
    /// Whether tungstenite, the socket's other writer, holds a control reply not written yet.
    /// `Wire` sets and clears it; it lives here, beside `written`, where it takes no room of
    /// its own (an idle connection's task stays in its allocator class).
    pub(super) control_pending: bool,
}

/// Empty staging buffers, with room, that the last connection to go idle on a thread left
/// for the next one to stage with. A connection woken for one delivery stages it and goes idle
/// again; without these it would allocate and free two buffers each time (about 120 of the
/// 3,500 instructions such a delivery cost the server, measured with callgrind:
/// docs/benchmarks.md), and with them it holds none while idle, as before. A runtime thread runs one connection at a time,
/// so one set per thread is enough.
struct Spare {
    drained: Vec<Frame>,
    out: VecDeque<Chunk>,
}

impl Spare {
    /// The most frames a spare `drained` holds room for: a burst's larger buffer goes back
    /// to the allocator.
    const MAX_FRAMES: usize = 64;
    /// The most chunks a spare `out` holds room for.
    const MAX_CHUNKS: usize = 2 * Self::MAX_FRAMES;
}

thread_local! {
    /// This thread's [`Spare`].
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            drained: Vec::new(),
            out: VecDeque::new(),
        })
    };
}

/// A piece of an encoded data frame.
pub(super) enum Chunk {
    /// A server frame's header (unmasked): 2, 4 or 10 bytes.
    Header {
        /// The header, in its first `len` bytes.
        bytes: [u8; 10],
        /// How many bytes of `bytes` the header takes.
        len: u8,
    },
    /// A payload of this connection's own: a `batch` frame, a compressed copy, an echo.
    Payload(Bytes),
    /// A queued frame's payload, written from the frame itself, which every other connection
    /// that gets it shares: a delivery touches one reference count (the frame's, dropped once
    /// written) rather than three (taking its bytes out costs an increment and a decrement
    /// more), and that count's cache line is one that every core's writers share.
    Shared(Frame),
}

impl Chunk {
    /// The header of a final text frame carrying `len` bytes (RFC 6455, 5.2).
    pub(super) fn text_header(len: usize) -> Self {
        const FIN_TEXT: u8 = 0x81;
        Self::header(FIN_TEXT, len)
    }

    /// The header of a final binary frame carrying `len` bytes (the echo endpoint's).
    pub(super) fn binary_header(len: usize) -> Self {
        const FIN_BINARY: u8 = 0x82;
        Self::header(FIN_BINARY, len)
    }

    /// The header of a final frame with RSV1 set (a permessage-deflate message) carrying `len`
    /// compressed bytes: text, or binary when `binary`.
    fn compressed_header(len: usize, binary: bool) -> Self {
        const FIN_RSV1_TEXT: u8 = 0xc1;
        const FIN_RSV1_BINARY: u8 = 0xc2;
        Self::header(
            if binary {
                FIN_RSV1_BINARY
            } else {
                FIN_RSV1_TEXT
            },
            len,
        )
    }

    /// A server frame's header: `first` (FIN, RSV and opcode bits), then the payload length in
    /// the shortest of its three forms, unmasked.
    fn header(first: u8, len: usize) -> Self {
        let mut bytes = [0; 10];
        bytes[0] = first;
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

    /// The chunk's bytes as they go on the wire.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Header { bytes, len } => &bytes[..usize::from(*len)],
            Self::Payload(payload) => payload,
            Self::Shared(frame) => frame.as_bytes(),
        }
    }

    /// Whether this is a frame's payload (of either kind) rather than its header.
    fn is_payload(&self) -> bool {
        !matches!(self, Self::Header { .. })
    }
}

/// Compressed messages staged in one go, counted in the metrics once.
#[derive(Default)]
struct Saved {
    /// Messages sent compressed.
    messages: u64,
    /// Bytes their compression saved.
    bytes: u64,
}

impl Saved {
    /// One message of `plain` bytes sent as `compressed` bytes.
    fn add(&mut self, plain: usize, compressed: usize) {
        self.messages += 1;
        self.bytes += plain.saturating_sub(compressed) as u64;
    }

    /// Adds them to `herald_compressed_messages_total` and
    /// `herald_compression_saved_bytes_total` (nothing when none was compressed).
    fn record(self) {
        /// The two counters, looked up once: this runs once per compressed delivery.
        static COUNTERS: LazyLock<(Counter, Counter)> = LazyLock::new(|| {
            (
                metrics::counter!("herald_compressed_messages_total", "direction" => "out"),
                metrics::counter!("herald_compression_saved_bytes_total"),
            )
        });
        if self.messages > 0 {
            COUNTERS.0.increment(self.messages);
            COUNTERS.1.increment(self.bytes);
        }
    }
}

impl Writer {
    /// Most chunks handed to one `writev`.
    const MAX_SLICES: usize = 128;
    /// Chunks in the common write: up to four frames (a header and a payload each).
    const FEW_SLICES: usize = 8;

    /// Bytes of the front chunk already written.
    fn written(&self) -> usize {
        self.written as usize
    }

    /// Whether no data frame is half-written, so another writer (tungstenite) may write.
    pub(super) fn at_frame_boundary(&self) -> bool {
        self.written == 0 && !self.out.front().is_some_and(Chunk::is_payload)
    }

    /// Whether staged frames wait to be written.
    pub(super) fn has_staged(&self) -> bool {
        !self.out.is_empty()
    }

    /// Where the driver drains the outbox to; [`Writer::stage`] encodes what it holds.
    pub(super) fn drained(&mut self) -> &mut Vec<Frame> {
        if self.drained.capacity() == 0 {
            SPARE.with_borrow_mut(|spare| std::mem::swap(&mut self.drained, &mut spare.drained));
        }
        &mut self.drained
    }

    /// Turns the drained frames into chunks: one `batch` frame when several wait and the
    /// client allows batching, else one frame per message.
    ///
    /// On a connection that negotiated compression (`compression`), a frame worth compressing
    /// goes alone, as its compressed copy, computed once and shared by every connection that
    /// sends it; the frames between such frames are batched as above, and a `batch` frame
    /// goes plain: compressing it would be this connection's own work, once per delivery.
    pub(super) fn stage(&mut self, batching: bool, compression: Option<Compression>) {
        let earliest = self.drained.iter().filter_map(Frame::accepted).min();
        self.accepted = match (self.accepted, earliest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.out.capacity() == 0 {
            SPARE.with_borrow_mut(|spare| std::mem::swap(&mut self.out, &mut spare.out));
        }
        let mut drained = std::mem::take(&mut self.drained);
        let Some(compression) = compression else {
            self.push_plain(&mut drained, batching);
            // Emptied, its room kept for the next drain.
            self.drained = drained;
            return;
        };
        let mut saved = Saved::default();
        let mut plain = Vec::new();
        for frame in drained {
            let len = frame.len();
            let compressed = if compression.applies(len) {
                Some(frame.encoded_with(deflate::compress)).filter(|bytes| !bytes.is_empty())
            } else {
                None
            };
            match compressed {
                Some(bytes) => {
                    self.push_plain(&mut plain, batching);
                    saved.add(len, bytes.len());
                    self.push_compressed(bytes, false);
                }
                None => plain.push(frame),
            }
        }
        self.push_plain(&mut plain, batching);
        saved.record();
    }

    /// Stages `frames` plain, emptying it: as one `batch` frame when several wait and
    /// `batching`, else one frame per message.
    fn push_plain(&mut self, frames: &mut Vec<Frame>, batching: bool) {
        if batching && frames.len() > 1 {
            let batch = encode_batch(frames.iter().map(Frame::as_bytes));
            frames.clear();
            self.push_frame(Bytes::from(batch));
        } else {
            for frame in frames.drain(..) {
                self.out.push_back(Chunk::text_header(frame.len()));
                self.out.push_back(Chunk::Shared(frame));
            }
        }
    }

    /// Stages one message of this connection's own (the echo endpoint's): compressed here when
    /// `compression` applies and it pays, else plain; binary when `binary`.
    pub(super) fn push_message(
        &mut self,
        payload: Bytes,
        binary: bool,
        compression: Option<Compression>,
    ) {
        if compression.is_some_and(|c| c.applies(payload.len())) {
            let compressed = deflate::compress(&payload);
            if !compressed.is_empty() {
                let mut saved = Saved::default();
                saved.add(payload.len(), compressed.len());
                saved.record();
                self.push_compressed(compressed, binary);
                return;
            }
        }
        if binary {
            self.push_binary_frame(payload);
        } else {
            self.push_frame(payload);
        }
    }

    /// Stages one compressed message (RSV1 set).
    fn push_compressed(&mut self, compressed: Bytes, binary: bool) {
        self.out
            .push_back(Chunk::compressed_header(compressed.len(), binary));
        self.out.push_back(Chunk::Payload(compressed));
    }

    /// Stages one text frame carrying `payload`.
    pub(super) fn push_frame(&mut self, payload: Bytes) {
        self.out.push_back(Chunk::text_header(payload.len()));
        self.out.push_back(Chunk::Payload(payload));
    }

    /// Stages one binary frame carrying `payload` (only the echo endpoint sends binary).
    pub(super) fn push_binary_frame(&mut self, payload: Bytes) {
        self.out.push_back(Chunk::binary_header(payload.len()));
        self.out.push_back(Chunk::Payload(payload));
    }

    /// Once everything staged is written: the earliest acceptance of a live publication among
    /// the frames written since the last call, if any, for the delivery latency.
    pub(super) fn take_written_acceptance(&mut self) -> Option<Instant> {
        if self.out.is_empty() {
            self.accepted.take()
        } else {
            None
        }
    }

    /// Hands the staging buffers back once everything is written, so an idle connection holds
    /// none: to this thread's spare (see [`SPARE`]) when they are small, else to the allocator.
    pub(super) fn release_if_idle(&mut self) {
        if !self.out.is_empty() {
            return;
        }
        SPARE.with_borrow_mut(|spare| {
            if spare.out.capacity() == 0 && self.out.capacity() <= Spare::MAX_CHUNKS {
                std::mem::swap(&mut spare.out, &mut self.out);
            }
            if spare.drained.capacity() == 0 && self.drained.capacity() <= Spare::MAX_FRAMES {
                std::mem::swap(&mut spare.drained, &mut self.drained);
            }
        });
        if self.out.capacity() != 0 {
            self.out = VecDeque::new();
        }
        if self.drained.capacity() != 0 {
            self.drained = Vec::new();
        }
    }

    /// Writes chunks until none is left (`Ready(Ok)`) or the socket is full (`Pending`).
    pub(super) fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<io::Result<()>> {
        self.poll_write_chunks(cx, socket, usize::MAX)
    }

    /// Writes the rest of a half-written frame and nothing after it: `Ready(Ok)` once the
    /// writer is at a frame boundary (at once when it already is).
    pub(super) fn poll_finish_frame(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<io::Result<()>> {
        self.poll_write_chunks(cx, socket, self.unfinished_chunks())
    }

    /// The rest of a half-written frame, taken out of the writer, for the goodbye to finish
    /// before a close frame.
    pub(super) fn take_unfinished_frame(&mut self) -> Vec<Bytes> {
        let chunks = self.unfinished_chunks();
        let mut rest = Vec::with_capacity(chunks);
        for _ in 0..chunks {
            let bytes = match self.out.pop_front() {
                Some(Chunk::Payload(payload)) => payload.slice(self.written()..),
                Some(Chunk::Shared(frame)) => frame.into_bytes().slice(self.written()..),
                Some(header) => Bytes::copy_from_slice(&header.as_bytes()[self.written()..]),
                None => break,
            };
            rest.push(bytes);
            self.written = 0;
        }
        rest
    }

    /// How many chunks, from the front, belong to a half-written frame: none at a frame
    /// boundary, else the front chunk and the payload that follows a front header.
    fn unfinished_chunks(&self) -> usize {
        if self.at_frame_boundary() {
            return 0;
        }
        let payloads = self
            .out
            .iter()
            .skip(1)
            .take_while(|chunk| chunk.is_payload())
            .count();
        1 + payloads
    }

    /// Hands the first `take` (at most `N`) staged chunks to one vectored write; returns how
    /// many bytes it took. `N` sizes the slice array, which is filled whole on every call: a
    /// delivery or two (the common write) does not pay for [`Writer::MAX_SLICES`].
    fn poll_write_slices<const N: usize>(
        &self,
        cx: &mut Context<'_>,
        socket: &mut (impl AsyncWrite + Unpin),
        take: usize,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut count = 0;
        for (i, chunk) in self.out.iter().take(take.min(N)).enumerate() {
            let bytes = chunk.as_bytes();
            slices[i] = IoSlice::new(if i == 0 {
                &bytes[self.written()..]
            } else {
                bytes
            });
            count = i + 1;
        }
        Pin::new(socket).poll_write_vectored(cx, &slices[..count])
    }

    /// Writes the first `chunks` chunks (fewer when fewer are staged), several per system call.
    fn poll_write_chunks(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut (impl AsyncWrite + Unpin),
        mut chunks: usize,
    ) -> Poll<io::Result<()>> {
        while chunks > 0 && !self.out.is_empty() {
            let take = chunks.min(self.out.len()).min(Self::MAX_SLICES);
            let mut n = ready!(if take <= Self::FEW_SLICES {
                self.poll_write_slices::<{ Self::FEW_SLICES }>(cx, socket, take)
            } else {
                self.poll_write_slices::<{ Self::MAX_SLICES }>(cx, socket, take)
            })?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while chunks > 0
                && let Some(front) = self.out.front()
            {
                let left = front.as_bytes().len() - self.written();
                if n < left {
                    // Less than the rest of one chunk, so below 4 GiB (see `written`).
                    self.written += n as u32;
                    break;
                }
                n -= left;
                self.written = 0;
                self.out.pop_front();
                chunks -= 1;
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use proptest::prelude::*;
    use tungstenite::protocol::frame::{
        Frame as WireFrame,
        coding::{Data, OpCode},
    };

    use super::*;

    /// A text frame as tungstenite encodes it: the reference for the driver's own encoding.
    fn reference(payload: &[u8]) -> Vec<u8> {
        reference_of(payload, Data::Text)
    }

    /// A data frame of `opcode` as tungstenite encodes it.
    fn reference_of(payload: &[u8], opcode: Data) -> Vec<u8> {
        let mut out = Vec::new();
        WireFrame::message(payload.to_vec(), OpCode::Data(opcode), true)
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
            let mut ours = Chunk::binary_header(len).as_bytes().to_vec();
            ours.extend_from_slice(&payload);
            assert_eq!(
                ours,
                reference_of(&payload, Data::Binary),
                "binary, length {len}"
            );
        }
    }

    #[test]
    fn text_and_binary_frames_are_written_in_order_as_tungstenite_encodes_them() {
        let mut writer = Writer::default();
        writer.push_binary_frame(Bytes::from_static(b"\x00\xff"));
        writer.push_frame(Bytes::from_static(b"text"));
        let mut socket = Trickle {
            out: Vec::new(),
            per_call: vec![3],
            calls: 0,
            budget: usize::MAX,
        };
        let mut cx = Context::from_waker(Waker::noop());
        assert!(writer.poll_write_out(&mut cx, &mut socket).is_ready());
        let mut expected = reference_of(b"\x00\xff", Data::Binary);
        expected.extend(reference(b"text"));
        assert_eq!(socket.out, expected);
    }

    /// The frames staged, as (first byte, payload) pairs.
    fn staged(writer: &Writer) -> Vec<(u8, Bytes)> {
        let mut frames = Vec::new();
        let mut first = 0;
        for chunk in &writer.out {
            match chunk {
                Chunk::Header { bytes, .. } => first = bytes[0],
                Chunk::Payload(payload) => frames.push((first, payload.clone())),
                Chunk::Shared(frame) => frames.push((first, frame.clone().into_bytes())),
            }
        }
        frames
    }

    #[test]
    fn frames_worth_compressing_go_alone_as_one_shared_copy_and_the_rest_are_batched_plain() {
        let large = Frame::from(format!("{{\"text\":\"{}\"}}", "hello ".repeat(100)));
        let small = |n: u32| Frame::from(format!("{{\"n\":{n}}}"));
        let compression = Compression {
            threshold: 100,
            max_len: usize::MAX,
        };
        let mut writers = [Writer::default(), Writer::default()];
        for writer in &mut writers {
            writer
                .drained()
                .extend([small(1), large.clone(), small(2), small(3)]);
            writer.stage(true, Some(compression));
        }
        let [first, second] = writers.map(|writer| staged(&writer));
        let batch =
            |frames: &[Frame]| Bytes::from(encode_batch(frames.iter().map(Frame::as_bytes)));
        let compressed = deflate::compress(large.as_bytes());
        assert_eq!(
            first,
            [
                (0x81, Bytes::from_static(b"{\"n\":1}")),
                (0xc1, compressed.clone()),
                (0x81, batch(&[small(2), small(3)])),
            ]
        );
        // The same compressed bytes, not a copy of them.
        assert_eq!(first[1].1.as_ptr(), second[1].1.as_ptr());

        // Without compression, as before: one batch.
        let mut plain = Writer::default();
        plain.drained().extend([small(1), large.clone(), small(2)]);
        plain.stage(true, None);
        assert_eq!(
            staged(&plain),
            [(0x81, batch(&[small(1), large.clone(), small(2)]))]
        );
        // Below the threshold, or above the client's window, plain.
        for compression in [
            Compression {
                threshold: 10_000,
                max_len: usize::MAX,
            },
            Compression {
                threshold: 0,
                max_len: 512,
            },
        ] {
            let mut writer = Writer::default();
            writer.drained().push(large.clone());
            writer.stage(false, Some(compression));
            assert_eq!(staged(&writer), [(0x81, large.clone().into_bytes())]);
        }
    }

    /// Stages `payload` as a queued frame (a shared chunk) when `i` is even, else as a payload
    /// of the connection's own, so that the write paths see both kinds of chunk interleaved.
    fn push_either(writer: &mut Writer, payload: &[u8], i: usize) {
        if i.is_multiple_of(2) {
            let text = String::from_utf8(payload.to_vec()).expect("the payloads are ASCII");
            writer.drained().push(Frame::from(text));
            writer.stage(false, None);
        } else {
            writer.push_frame(Bytes::from(payload.to_vec()));
        }
    }

    /// A writer given `payloads` whose socket (taking `per_call` bytes per write) stopped
    /// taking bytes at `stop_at` of the stream; with the frames as tungstenite encodes them.
    fn stopped_inside(
        payloads: &[Vec<u8>],
        per_call: Vec<usize>,
        stop_at: f64,
    ) -> (Writer, Trickle, Vec<Vec<u8>>) {
        let mut writer = Writer::default();
        let mut frames = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            push_either(&mut writer, payload, i);
            frames.push(reference(payload));
        }
        let total: usize = frames.iter().map(Vec::len).sum();
        // Truncation is the point: somewhere inside the stream.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let budget = (total as f64 * stop_at) as usize;
        let mut socket = Trickle {
            out: Vec::new(),
            per_call,
            calls: 0,
            budget,
        };
        let _ = writer.poll_write_out(&mut Context::from_waker(Waker::noop()), &mut socket);
        (writer, socket, frames)
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
            for (i, payload) in payloads.iter().enumerate() {
                push_either(&mut writer, payload, i);
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
            let (mut writer, socket, frames) = stopped_inside(&payloads, per_call, stop_at);
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

        #[test]
        fn finishing_a_frame_writes_up_to_its_end_and_no_further(
            payloads in payloads(),
            per_call in proptest::collection::vec(1_usize..4_000, 1..8),
            stop_at in 0.0_f64..1.0,
        ) {
            let (mut writer, mut socket, frames) = stopped_inside(&payloads, per_call, stop_at);
            let mut cx = Context::from_waker(Waker::noop());
            socket.budget = usize::MAX;
            prop_assert!(writer.poll_finish_frame(&mut cx, &mut socket).is_ready());
            prop_assert!(writer.at_frame_boundary());
            // The wire ends exactly at the end of the frame that was half-written.
            let mut boundary = 0;
            for frame in &frames {
                if boundary >= socket.out.len() {
                    break;
                }
                boundary += frame.len();
            }
            prop_assert_eq!(socket.out.len(), boundary);
            // The rest follows whole.
            prop_assert!(writer.poll_write_out(&mut cx, &mut socket).is_ready());
            prop_assert!(!writer.has_staged());
            prop_assert_eq!(socket.out, frames.concat());
        }
    }
}
