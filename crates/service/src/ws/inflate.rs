//! The layer under tungstenite on every connection's read path: [`Inflating`], the reading
//! side of permessage-deflate (RFC 7692), which collects a client's compressed message and
//! hands tungstenite the plain frame it inflates to, and the watch that fails a text message
//! at its first byte that is not UTF-8 (`utf8scan`), so that tungstenite stays the one reader
//! and validator of every client frame while invalid text is refused as soon as it arrives.
//!
//! Why a layer and not a second reader: tungstenite's reader checks framing, fragmentation,
//! control frames, close codes, sizes and UTF-8, but checks a text frame's UTF-8 only once the
//! frame is whole, so a client that sends a frame's bad bytes and then pauses held the
//! connection open until the rest came (Autobahn 6.4.3, 6.4.4). The layer sees every byte
//! before tungstenite does, in the same order, so it can follow the frames and judge the UTF-8
//! early without taking anything else from tungstenite. It never withholds bytes: when it
//! finds bad text it still hands over the read that held it and fails the next read, so
//! tungstenite first judges every whole frame before it (a frame it refuses for another reason
//! keeps that reason's close code).

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ws::{
    deflate::{Deflate, TAIL},
    frame::Header,
    utf8scan::Utf8Scan,
};

/// Bytes read from the socket at a time on a connection that negotiated compression.
const READ_CHUNK: usize = 2048;

thread_local! {
    /// Each worker thread's inflater, reset before every client message (the client compresses
    /// each on its own): no connection keeps one.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Why [`Inflating`] stopped reading: the connection is closed with the matching code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Failure {
    /// A compressed message inflates past the message limit (1009).
    #[error("a compressed message inflates past the message limit")]
    TooLarge,
    /// Compressed data that does not inflate, or a compressed message's frames out of order
    /// (1002).
    #[error("invalid compressed message")]
    Invalid,
    /// A text message's bytes are not UTF-8, found before the frame that holds them is whole
    /// (1007).
    #[error("invalid UTF-8 in a text message")]
    Utf8,
}

/// A connection's socket seen through permessage-deflate: writes pass straight through; reads
/// pass every frame through untouched except a compressed message's, which tungstenite (which
/// rejects RSV1) is handed as the one plain frame the message inflates to.
///
/// On a connection that did not negotiate compression the bytes pass straight from the socket
/// into tungstenite's buffer, and a frame with RSV1 reaches tungstenite, which fails the
/// connection (RFC 6455, 5.2). Either way tungstenite reads and checks every frame
/// (fragmentation, control frames, close codes, UTF-8, size), on one read path for all
/// connections, and a [`Utf8Scan`] watches what it is handed so that a text message fails
/// ([`Failure::Utf8`]) at the read that brings its first bad byte.
pub(crate) struct Inflating<S> {
    socket: S,
    /// One pointer, so a connection's task grows by no more than that: a connection that
    /// negotiated compression always holds its [`Negotiated`]; one that did not holds its scan
    /// only while a frame or a fragmented message is partly received, none between messages.
    layer: Option<Box<Layer>>,
}

/// What [`Inflating`] keeps beyond the socket.
enum Layer {
    /// A connection without compression, inside a frame or a fragmented message (or failed).
    Plain(Utf8Scan),
    /// A connection that negotiated compression.
    Negotiated(Negotiated),
}

/// What [`Inflating`] keeps on a connection that negotiated compression.
struct Negotiated {
    /// The agreement.
    deflate: Deflate,
    /// The largest message, inflated.
    max_message: usize,
    /// Only while a read is under way (inside a frame, or with bytes not yet taken): an idle
    /// connection holds none.
    state: Option<Box<InflateState>>,
}

/// The reading side of permessage-deflate on one connection.
struct InflateState {
    /// The largest message, inflated.
    max_message: usize,
    /// Read from the socket, not yet scanned.
    input: Vec<u8>,
    /// Scanned, for tungstenite: frames passed through and inflated messages re-framed.
    output: Vec<u8>,
    /// How much of `output` tungstenite has taken.
    taken: usize,
    /// Where the scan is in the stream of frames.
    at: At,
    /// The compressed message being read: its opcode and its compressed bytes so far,
    /// inflated at once when its last frame is in.
    message: Option<(u8, Vec<u8>)>,
    /// A plain message's first fragment passed through and its last one not yet.
    plain_fragmented: bool,
    /// Sticky: once set, every read fails once `output` is taken.
    failure: Option<Failure>,
    /// What tungstenite has taken of `output`, followed for its text messages' UTF-8.
    utf8: Utf8Scan,
}

/// The scan's position.
#[derive(Debug, Clone, Copy)]
enum At {
    /// At a frame's header.
    Header,
    /// Inside a frame passed through: bytes left.
    Forward(u64),
    /// Inside a compressed frame's payload: bytes left, the mask, how far into the payload,
    /// and whether the frame ends the message.
    Inflate {
        left: u64,
        mask: [u8; 4],
        offset: usize,
        fin: bool,
    },
}

impl<S> Inflating<S> {
    /// `socket` read through permessage-deflate when `deflate` was negotiated; `leftover` is
    /// what the client sent after its request head, which the layer reads first.
    ///
    /// Returns the layer and what tungstenite should read before the socket: `leftover`
    /// itself on a passthrough, else nothing (the layer has it).
    pub(crate) fn new(
        socket: S,
        deflate: Option<Deflate>,
        max_message: usize,
        leftover: Vec<u8>,
    ) -> (Self, Vec<u8>) {
        let Some(deflate) = deflate else {
            // tungstenite reads `leftover` first, then the socket: the scan follows it there.
            let mut layer = Self {
                socket,
                layer: None,
            };
            scan_plain(&mut layer.layer, &leftover);
            return (layer, leftover);
        };
        let mut state = InflateState::new(max_message);
        state.input = leftover;
        state.scan();
        let negotiated = Negotiated {
            deflate,
            max_message,
            state: (!state.idle()).then(|| Box::new(state)),
        };
        let layer = Self {
            socket,
            layer: Some(Box::new(Layer::Negotiated(negotiated))),
        };
        (layer, Vec::new())
    }

    /// The socket.
    pub(crate) fn get_ref(&self) -> &S {
        &self.socket
    }

    /// The socket, to write to.
    pub(super) fn get_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// The connection's compression agreement, if any.
    pub(super) fn deflate(&self) -> Option<Deflate> {
        match self.layer.as_deref() {
            Some(Layer::Negotiated(negotiated)) => Some(negotiated.deflate),
            _ => None,
        }
    }

    /// Whether every byte tungstenite was handed ends a whole frame outside any fragmented
    /// message, with nothing read and not yet handed held here (nor a failure).
    pub(super) fn between_messages(&self) -> bool {
        match self.layer.as_deref() {
            None => true,
            Some(Layer::Plain(_)) => false,
            Some(Layer::Negotiated(negotiated)) => negotiated.state.is_none(),
        }
    }

    /// Why reading failed, if the layer failed it (on a compressed message or on text that is
    /// not UTF-8).
    pub(super) fn failure(&self) -> Option<Failure> {
        match self.layer.as_deref()? {
            Layer::Plain(scan) => scan.failed().then_some(Failure::Utf8),
            Layer::Negotiated(negotiated) => negotiated.state.as_ref()?.failure(),
        }
    }
}

/// Follows `bytes`, the next ones tungstenite reads on a connection without compression, with
/// the scan in `layer`; keeps a scan there only while it is not idle (the common read, whole
/// frames, allocates nothing).
fn scan_plain(layer: &mut Option<Box<Layer>>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match layer.as_deref_mut() {
        Some(Layer::Plain(scan)) => {
            scan.feed(bytes);
            if scan.idle() {
                *layer = None;
            }
        }
        // Its scan follows what its `InflateState` hands tungstenite.
        Some(Layer::Negotiated(_)) => {}
        None => {
            let mut scan = Utf8Scan::default();
            scan.feed(bytes);
            if !scan.idle() {
                *layer = Some(Box::new(Layer::Plain(scan)));
            }
        }
    }
}

impl InflateState {
    /// Nothing read yet.
    fn new(max_message: usize) -> Self {
        Self {
            max_message,
            input: Vec::new(),
            output: Vec::new(),
            taken: 0,
            at: At::Header,
            message: None,
            plain_fragmented: false,
            failure: None,
            utf8: Utf8Scan::default(),
        }
    }

    /// Why reading failed, if it did: bad text tungstenite was handed comes first, since it
    /// was found in what came before the failure the scan of `input` ran into.
    fn failure(&self) -> Option<Failure> {
        if self.utf8.failed() {
            Some(Failure::Utf8)
        } else {
            self.failure
        }
    }

    /// Whether the state is between frames with nothing held, as new.
    fn idle(&self) -> bool {
        matches!(self.at, At::Header)
            && self.message.is_none()
            && !self.plain_fragmented
            && self.input.is_empty()
            && self.taken >= self.output.len()
            && self.failure.is_none()
            && self.utf8.idle()
    }

    /// Scans as much of `input` as it can into `output`.
    fn scan(&mut self) {
        let mut pos = 0;
        while self.failure.is_none() {
            match self.at {
                At::Header => {
                    let Some(header) = Header::parse(&self.input[pos..]) else {
                        break;
                    };
                    match self.begin(header) {
                        Ok(forward) => {
                            if forward {
                                let end = pos + header.header_len;
                                self.output.extend_from_slice(&self.input[pos..end]);
                            }
                            pos += header.header_len;
                        }
                        Err(failure) => self.failure = Some(failure),
                    }
                }
                At::Forward(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.input.len() - pos);
                    if n == 0 && left > 0 {
                        break;
                    }
                    self.output.extend_from_slice(&self.input[pos..pos + n]);
                    pos += n;
                    let left = left - n as u64;
                    self.at = if left == 0 {
                        At::Header
                    } else {
                        At::Forward(left)
                    };
                }
                At::Inflate {
                    left,
                    mask,
                    offset,
                    fin,
                } => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.input.len() - pos);
                    if n == 0 && left > 0 {
                        break;
                    }
                    let chunk = &mut self.input[pos..pos + n];
                    for (i, byte) in chunk.iter_mut().enumerate() {
                        *byte ^= mask[(offset + i) % 4];
                    }
                    pos += n;
                    let left = left - n as u64;
                    let result = self.inflate(pos - n..pos, left == 0 && fin);
                    if let Err(failure) = result {
                        self.failure = Some(failure);
                        break;
                    }
                    self.at = if left == 0 {
                        At::Header
                    } else {
                        At::Inflate {
                            left,
                            mask,
                            offset: (offset + n) % 4,
                            fin,
                        }
                    };
                }
            }
        }
        self.input.drain(..pos);
    }

    /// Decides what becomes of the frame `header` begins: `Ok(true)` to pass it through,
    /// `Ok(false)` to inflate its payload.
    fn begin(&mut self, header: Header) -> Result<bool, Failure> {
        let data = header.opcode == 1 || header.opcode == 2;
        let continuation = header.opcode == 0;
        let compressed = if self.message.is_some() {
            if data {
                // A new message inside a compressed one.
                return Err(Failure::Invalid);
            }
            continuation
        } else {
            data && header.rsv1 && !self.plain_fragmented
        };
        if !compressed {
            // tungstenite checks it, RSV bits included.
            if data && !header.fin {
                self.plain_fragmented = true;
            } else if continuation && header.fin {
                self.plain_fragmented = false;
            }
            self.at = At::Forward(header.len);
            return Ok(true);
        }
        // RSV1 marks only a compressed message's first frame; clients mask every frame.
        let first = self.message.is_none();
        let Some(mask) = header.mask else {
            return Err(Failure::Invalid);
        };
        if header.other_rsv || (!first && header.rsv1) {
            return Err(Failure::Invalid);
        }
        if first {
            self.message = Some((header.opcode, Vec::new()));
        }
        self.at = At::Inflate {
            left: header.len,
            mask,
            offset: 0,
            fin: header.fin,
        };
        if header.len == 0 {
            self.inflate(0..0, header.fin)?;
            self.at = At::Header;
        }
        Ok(false)
    }

    /// Adds `input[range]` to the message's compressed bytes; at its end, inflates the message
    /// and re-frames it for tungstenite.
    fn inflate(&mut self, range: std::ops::Range<usize>, end: bool) -> Result<(), Failure> {
        let limit = self.max_message;
        let Some((opcode, compressed)) = self.message.as_mut() else {
            return Err(Failure::Invalid);
        };
        compressed.extend_from_slice(&self.input[range]);
        // Deflate's stored blocks cost 5 bytes per 64 KiB: a message within the limit never
        // takes more than this compressed.
        if compressed.len() > limit.saturating_add(limit / 1024).saturating_add(1024) {
            return Err(Failure::TooLarge);
        }
        if !end {
            return Ok(());
        }
        let opcode = *opcode;
        compressed.extend_from_slice(&TAIL);
        let payload = INFLATER.with_borrow_mut(|inflater| {
            inflater.reset(false);
            let mut inflated = Vec::new();
            inflate_bounded(inflater, compressed, &mut inflated, limit).map(|()| inflated)
        })?;
        self.message = None;
        metrics::counter!("herald_compressed_messages_total", "direction" => "in").increment(1);
        // FIN, the opcode, then the length with the mask bit and an all-zero mask (a client
        // frame must be masked; zeros leave the payload as it is).
        self.output.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            // Below 126 (checked), so the cast keeps it whole.
            self.output.push(0x80 | len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            self.output.push(0x80 | 126);
            self.output.extend_from_slice(&short.to_be_bytes());
        } else {
            self.output.push(0x80 | 127);
            self.output.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.output.extend_from_slice(&[0; 4]);
        self.output.extend_from_slice(&payload);
        Ok(())
    }
}

/// Inflates a whole message, `input` (its tail appended), onto `out`, failing once `out`
/// would pass `limit` bytes.
fn inflate_bounded(
    inflater: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), Failure> {
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(Failure::TooLarge);
            }
            // Room up to one byte past the limit, so passing it shows.
            let room = out.capacity().clamp(256, 64 * 1024);
            out.reserve_exact(room.min(limit + 1 - out.len()));
        }
        let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
            .map_err(|_| Failure::Invalid)?;
        consumed += usize::try_from(inflater.total_in() - in_before).unwrap_or(usize::MAX);
        if out.len() > limit {
            return Err(Failure::TooLarge);
        }
        let progress = inflater.total_in() != in_before || inflater.total_out() != out_before;
        // A message may end with a final block (BFINAL), and the tail after it is ignored.
        if status == Status::StreamEnd
            || (consumed >= input.len() || !progress) && out.len() < out.capacity()
        {
            return Ok(());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(Layer::Negotiated(negotiated)) = this.layer.as_deref_mut() else {
            if this.failure().is_some() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Failure::Utf8,
                )));
            }
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.socket).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = polled {
                scan_plain(&mut this.layer, &buf.filled()[before..]);
            }
            return polled;
        };
        let max_message = negotiated.max_message;
        let state = negotiated
            .state
            .get_or_insert_with(|| Box::new(InflateState::new(max_message)));
        let polled = state.poll_read(&mut this.socket, cx, buf);
        if state.idle() {
            negotiated.state = None;
        }
        polled
    }
}

impl InflateState {
    /// Hands tungstenite what is scanned, reading and scanning more from `socket` when nothing
    /// is.
    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        socket: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.utf8.failed() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Failure::Utf8,
                )));
            }
            if self.taken < self.output.len() {
                let n = buf.remaining().min(self.output.len() - self.taken);
                let handed = &self.output[self.taken..self.taken + n];
                buf.put_slice(handed);
                self.utf8.feed(handed);
                self.taken += n;
                if self.taken == self.output.len() {
                    // Nothing kept between reads: an idle connection holds no buffer.
                    self.output = Vec::new();
                    self.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(failure) = self.failure {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, failure)));
            }
            let start = self.input.len();
            self.input.resize(start + READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut self.input[start..]);
            let polled = Pin::new(&mut *socket).poll_read(cx, &mut read);
            let n = read.filled().len();
            self.input.truncate(start + n);
            if self.input.is_empty() {
                self.input = Vec::new();
            }
            match polled {
                Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    self.scan();
                    if self.input.is_empty() {
                        self.input = Vec::new();
                    }
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use flate2::{Compress, Compression, FlushCompress};
    use futures_util::FutureExt as _;
    use proptest::prelude::*;
    use tungstenite::{self, Message};

    use super::*;
    use crate::ws::Ws;

    /// A client's compressor: raw deflate, sync-flushed, the tail stripped; its context kept
    /// from one message to the next unless reset.
    fn client_compress(compressor: &mut Compress, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + 64);
        let before = compressor.total_in();
        loop {
            let consumed = usize::try_from(compressor.total_in() - before).unwrap_or(0);
            compressor
                .compress_vec(&message[consumed..], &mut out, FlushCompress::Sync)
                .unwrap_or_else(|e| panic!("{e}"));
            let consumed = usize::try_from(compressor.total_in() - before).unwrap_or(0);
            if consumed == message.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// A client frame: `first` (FIN, RSV, opcode), then the payload masked.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        crate::ws::frame::masked(first, payload, [0x12, 0x34, 0x56, 0x78])
    }

    /// An in-memory socket that yields `bytes` in reads of the given sizes (cycling), then
    /// the end of the stream.
    struct Chunks {
        bytes: VecDeque<u8>,
        sizes: Vec<usize>,
        reads: usize,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let size = this.sizes[this.reads % this.sizes.len()].max(1);
            this.reads += 1;
            let n = size.min(buf.remaining()).min(this.bytes.len());
            let bytes: Vec<u8> = this.bytes.drain(..n).collect();
            buf.put_slice(&bytes);
            Poll::Ready(Ok(()))
        }
    }

    impl crate::prefixed::ReadReady for Chunks {}

    impl AsyncWrite for Chunks {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What tungstenite reads from `sent` through the inflating layer (all of it arriving as
    /// `leftover` when `leftover`), in reads of `sizes`: the messages, then the error that
    /// ended the stream with the layer's failure, if any.
    fn read_through(
        deflate: Option<Deflate>,
        max: usize,
        sent: &[u8],
        sizes: Vec<usize>,
        leftover: bool,
    ) -> (Vec<Message>, Option<(String, Option<Failure>)>) {
        let read = read_until_end(deflate, max, sent, sizes, leftover);
        (read.messages, read.end)
    }

    /// What [`read_until_end`] saw.
    struct Read {
        /// The messages tungstenite read.
        messages: Vec<Message>,
        /// The error that ended the stream with the layer's failure, if any.
        end: Option<(String, Option<Failure>)>,
        /// The bytes sent that were never read from the socket.
        unread: usize,
        /// Whether the layer held no state in the end.
        holds_nothing: bool,
    }

    /// [`read_through`], with how much was never read and what the layer held in the end.
    fn read_until_end(
        deflate: Option<Deflate>,
        max: usize,
        sent: &[u8],
        sizes: Vec<usize>,
        leftover: bool,
    ) -> Read {
        let (socket_bytes, leftover_bytes) = if leftover {
            (Vec::new(), sent.to_vec())
        } else {
            (sent.to_vec(), Vec::new())
        };
        let socket = Chunks {
            bytes: socket_bytes.into(),
            sizes,
            reads: 0,
        };
        let (layer, leftover) = Inflating::new(socket, deflate, max, leftover_bytes);
        let mut ws = Ws::from_partially_read(layer, leftover, max);
        let mut messages = Vec::new();
        let end = loop {
            match ws.next().now_or_never() {
                Some(Some(Ok(message))) => messages.push(message),
                // The end of the bytes sent.
                Some(Some(Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )))) if ws.get_ref().failure().is_none() => break None,
                Some(Some(Err(tungstenite::Error::ConnectionClosed)))
                    if ws.get_ref().failure().is_none() =>
                {
                    break None;
                }
                Some(Some(Err(error))) => {
                    break Some((error.to_string(), ws.get_ref().failure()));
                }
                Some(None) => break None,
                None => panic!("the socket never waits"),
            }
        };
        let layer = ws.get_ref();
        Read {
            messages,
            end,
            unread: layer.socket.bytes.len(),
            holds_nothing: match layer.layer.as_deref() {
                None => true,
                Some(Layer::Plain(_)) => false,
                Some(Layer::Negotiated(negotiated)) => negotiated.state.is_none(),
            },
        }
    }

    /// The bounds of the fragments of a `len`-byte message cut at `splits`.
    fn bounds(len: usize, splits: &[usize]) -> Vec<(usize, usize)> {
        let mut cuts: Vec<usize> = splits
            .iter()
            .copied()
            .filter(|&c| c > 0 && c < len)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let starts = std::iter::once(0).chain(cuts.iter().copied());
        let ends = cuts.iter().copied().chain(std::iter::once(len));
        starts.zip(ends).collect()
    }

    /// `message` as a text message in frames cut at `splits`, a ping between every two.
    fn fragments(message: &[u8], splits: &[usize]) -> Vec<u8> {
        let bounds = bounds(message.len(), splits);
        let mut sent = Vec::new();
        for (i, &(start, end)) in bounds.iter().enumerate() {
            let opcode = if i == 0 { 0x01 } else { 0x00 };
            let fin = if i + 1 == bounds.len() { 0x80 } else { 0x00 };
            sent.extend(client_frame(fin | opcode, &message[start..end]));
            if fin == 0 {
                sent.extend(client_frame(0x89, b"\xff"));
            }
        }
        sent
    }

    /// Where byte `at` of `message` lies in [`fragments`]' stream.
    fn stream_offset(message: &[u8], splits: &[usize], at: usize) -> usize {
        let bounds = bounds(message.len(), splits);
        let mut offset = 0;
        for (i, &(start, end)) in bounds.iter().enumerate() {
            let header = client_frame(0x00, &message[start..end]).len() - (end - start);
            if at < end {
                return offset + header + at - start;
            }
            offset += header + end - start;
            if i + 1 < bounds.len() {
                offset += client_frame(0x89, b"\xff").len();
            }
        }
        offset
    }

    fn text(message: &str) -> Message {
        Message::text(message)
    }

    /// The agreement of a plain `permessage-deflate` offer.
    fn agreed() -> Option<Deflate> {
        crate::ws::deflate::negotiate([b"permessage-deflate".as_slice()])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a connection that negotiated compression, tungstenite's state is dropped only once
    /// a compressed message is whole, and the next one is read with a new state.
    #[test]
    fn compressed_messages_split_across_reads_are_read_whole_around_idle_drops() {
        use futures_util::FutureExt as _;
        use tokio::io::AsyncWriteExt as _;

        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (server, mut client) = tokio::io::duplex(4096);
        let (layer, part) = Inflating::new(server, agreed(), 1 << 20, Vec::new());
        let mut ws = Ws::from_partially_read(layer, part, 1 << 20);
        for message in [
            "first, first, first message",
            "second, second, second message",
        ] {
            let mut compressor = Compress::new(Compression::default(), false);
            let sent = client_frame(0xc1, &client_compress(&mut compressor, message.as_bytes()));
            let (head, tail) = sent.split_at(sent.len() / 2);
            assert!(client.write_all(head).now_or_never().is_some());
            assert!(ws.poll_next(&mut cx).is_pending());
            assert!(ws.holds_context(), "dropped inside a compressed frame");
            assert!(client.write_all(tail).now_or_never().is_some());
            match ws.poll_next(&mut cx) {
                Poll::Ready(Some(Ok(read))) => assert_eq!(read, text(message)),
                other => panic!("unexpected read: {other:?}"),
            }
            assert!(ws.poll_next(&mut cx).is_pending());
            assert!(!ws.holds_context(), "kept between messages");
        }
    }

    #[test]
    fn a_compressed_client_message_is_read_as_the_plain_one() {
        let mut compressor = Compress::new(Compression::default(), false);
        let message = "subscribe to chat:1 please, subscribe to chat:1 please";
        let mut sent = client_frame(0xc1, &client_compress(&mut compressor, message.as_bytes()));
        // A plain one after it is read as it is.
        sent.extend(client_frame(0x81, b"plain"));
        compressor.reset();
        sent.extend(client_frame(
            0xc1,
            &client_compress(&mut compressor, message.as_bytes()),
        ));
        for leftover in [false, true] {
            for sizes in [vec![1], vec![3, 7], vec![4096]] {
                let (messages, end) = read_through(agreed(), 1 << 20, &sent, sizes, leftover);
                assert_eq!(end, None);
                assert_eq!(messages, [text(message), text("plain"), text(message)]);
            }
        }
    }

    #[test]
    fn a_fragmented_compressed_message_with_a_ping_between_fragments_is_read_whole() {
        let mut compressor = Compress::new(Compression::default(), false);
        // A text split inside a code point, and in its compressed form across three frames.
        let message = "caf\u{e9} \u{1f600} ".repeat(40);
        let compressed = client_compress(&mut compressor, message.as_bytes());
        let third = compressed.len() / 3;
        let mut sent = client_frame(0x41, &compressed[..third]);
        sent.extend(client_frame(0x89, b"p"));
        sent.extend(client_frame(0x00, &compressed[third..2 * third]));
        sent.extend(client_frame(0x80, &compressed[2 * third..]));
        let (messages, end) = read_through(agreed(), 1 << 20, &sent, vec![5], false);
        assert_eq!(end, None);
        assert_eq!(
            messages,
            [Message::Ping(Bytes::from_static(b"p")), text(&message)]
        );
    }

    #[test]
    fn a_compressed_binary_message_and_an_empty_one_are_read() {
        let mut compressor = Compress::new(Compression::default(), false);
        let mut sent = client_frame(0xc2, &client_compress(&mut compressor, &[0, 1, 2, 0, 1, 2]));
        compressor.reset();
        sent.extend(client_frame(0xc1, &client_compress(&mut compressor, b"")));
        sent.extend(client_frame(0xc1, &[0x00]));
        let (messages, end) = read_through(agreed(), 1 << 20, &sent, vec![64], false);
        assert_eq!(end, None);
        assert_eq!(
            messages,
            [
                Message::Binary(Bytes::from_static(&[0, 1, 2, 0, 1, 2])),
                text(""),
                text("")
            ]
        );
    }

    #[test]
    fn the_inflated_size_is_bounded_so_a_zip_bomb_fails_the_read() {
        let mut compressor = Compress::new(Compression::best(), false);
        let bomb = client_compress(&mut compressor, &vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 2_000, "{}", bomb.len());
        let (messages, end) = read_through(
            agreed(),
            64 * 1024,
            &client_frame(0xc1, &bomb),
            vec![4096],
            false,
        );
        assert!(messages.is_empty());
        assert_eq!(
            end.map(|(_, failure)| failure),
            Some(Some(Failure::TooLarge))
        );
        // One byte under the limit is fine; the limit itself too.
        for len in [64 * 1024 - 1, 64 * 1024] {
            let mut compressor = Compress::new(Compression::best(), false);
            let sent = client_frame(0xc1, &client_compress(&mut compressor, &vec![b'a'; len]));
            let (messages, end) = read_through(agreed(), 64 * 1024, &sent, vec![4096], false);
            assert_eq!(end, None, "{len}");
            assert_eq!(messages.len(), 1);
        }
    }

    #[test]
    fn broken_compressed_messages_fail_the_read() {
        let mut compressor = Compress::new(Compression::default(), false);
        let good = client_compress(&mut compressor, b"hello hello");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "not deflate data",
                client_frame(0xc1, &[0xff, 0xff, 0xff, 0xff]),
            ),
            ("RSV1 on a continuation", {
                let mut sent = client_frame(0x41, &good[..2]);
                sent.extend(client_frame(0xc0, &good[2..]));
                sent
            }),
            ("a new message inside a compressed one", {
                let mut sent = client_frame(0x41, &good[..2]);
                sent.extend(client_frame(0x81, b"x"));
                sent
            }),
            ("unmasked", {
                let mut sent = vec![0xc1, u8::try_from(good.len()).unwrap_or(0)];
                sent.extend_from_slice(&good);
                sent
            }),
            ("RSV2 with RSV1", client_frame(0xe1, &good)),
        ];
        for (case, sent) in cases {
            let (messages, end) = read_through(agreed(), 1 << 20, &sent, vec![4096], false);
            assert!(messages.is_empty(), "{case}");
            assert_eq!(end.map(|(_, f)| f), Some(Some(Failure::Invalid)), "{case}");
        }
    }

    #[test]
    fn tungstenite_still_checks_what_is_passed_through_and_what_is_inflated() {
        let mut compressor = Compress::new(Compression::default(), false);
        // RSV1 on a connection that did not negotiate compression.
        let sent = client_frame(0xc1, &client_compress(&mut compressor, b"hello"));
        let (messages, end) = read_through(None, 1 << 20, &sent, vec![4096], false);
        assert!(messages.is_empty());
        let (error, failure) = end.unwrap_or_else(|| panic!("accepted RSV1 without the extension"));
        assert!(error.contains("Reserved bits are non-zero"), "{error}");
        assert_eq!(failure, None);
        // RSV1 on a control frame.
        let (_, end) = read_through(agreed(), 1 << 20, &client_frame(0xc9, b""), vec![64], false);
        assert!(end.is_some_and(|(e, _)| e.contains("Reserved bits")));
        // Invalid UTF-8 inside a compressed text message.
        let mut compressor = Compress::new(Compression::default(), false);
        let sent = client_frame(0xc1, &client_compress(&mut compressor, &[b'a', 0xff, b'b']));
        let (_, end) = read_through(agreed(), 1 << 20, &sent, vec![64], false);
        // The scan watches the inflated frame too, whole as tungstenite gets it, which refuses
        // it itself: the same close (1007).
        assert!(end.is_some_and(|(e, f)| e.contains("UTF-8") && f == Some(Failure::Utf8)));
        // A compressed message inside a plain fragmented one.
        let mut sent = client_frame(0x01, b"ab");
        sent.extend(client_frame(0xc1, &good_bytes()));
        let (_, end) = read_through(agreed(), 1 << 20, &sent, vec![64], false);
        assert!(end.is_some());
    }

    /// Autobahn 6.4.1's message: "κόσμε", then U+110000 in UTF-8's form (no code point),
    /// then "edited".
    const PART1: &[u8] = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes();
    const PART2: &[u8] = b"\xf4\x90\x80\x80";
    const PART3: &[u8] = b"edited";

    #[test]
    fn invalid_utf8_fails_the_read_that_brings_it_before_the_rest_of_the_frame() {
        let message = [PART1, PART2, PART3].concat();
        let sent = client_frame(0x81, &message);
        let header = sent.len() - message.len();
        // Autobahn 6.4.3: up to the bad code point, the bad code point, the rest; 6.4.4: the
        // first 12 bytes of the payload, the one byte that breaks it (0x90), the rest.
        let chops = [
            [header + PART1.len(), PART2.len(), PART3.len()],
            [header + 12, 1, message.len() - 13],
        ];
        for sizes in chops {
            for deflate in [None, agreed()] {
                let read = read_until_end(deflate, 1 << 20, &sent, sizes.to_vec(), false);
                assert!(read.messages.is_empty());
                assert_eq!(read.end.map(|(_, f)| f), Some(Some(Failure::Utf8)));
                assert_eq!(read.unread, sizes[2], "{sizes:?}: the rest is never read");
            }
        }
    }

    #[test]
    fn what_came_before_bad_text_is_read_and_binary_is_not_checked() {
        let mut sent = client_frame(0x81, b"first");
        sent.extend(client_frame(0x82, b"\xff binary"));
        sent.extend(client_frame(0x01, b"split \xe2\x82"));
        sent.extend(client_frame(0x89, b"\xff"));
        sent.extend(client_frame(0x80, b"\xac"));
        sent.extend(client_frame(0x81, b"bad \xff, and the rest of the frame"));
        for deflate in [None, agreed()] {
            let read = read_until_end(deflate, 1 << 20, &sent, vec![sent.len() - 10, 10], false);
            assert_eq!(
                read.messages,
                [
                    text("first"),
                    Message::Binary(Bytes::from_static(b"\xff binary")),
                    Message::Ping(Bytes::from_static(b"\xff")),
                    text("split \u{20ac}"),
                ]
            );
            assert_eq!(read.end.map(|(_, f)| f), Some(Some(Failure::Utf8)));
            assert_eq!(read.unread, 10);
        }
    }

    #[test]
    fn invalid_utf8_in_what_followed_the_request_head_fails_the_first_read() {
        // Half a frame, its bad byte in what the client sent with its handshake: nothing more
        // is needed to fail it.
        let frame = client_frame(0x81, b"ab\xffcd");
        let sent = &frame[..frame.len() - 2];
        for deflate in [None, agreed()] {
            let read = read_until_end(deflate, 1 << 20, sent, vec![64], true);
            assert_eq!(read.end.map(|(_, f)| f), Some(Some(Failure::Utf8)));
        }
        // Without a bad byte, it waits for the rest.
        let frame = client_frame(0x81, b"abcd");
        let read = read_until_end(None, 1 << 20, &frame[..frame.len() - 2], vec![64], true);
        assert_eq!(read.end, None);
        assert!(!read.holds_nothing);
    }

    #[test]
    fn the_layer_stays_one_small_allocation() {
        // A connection's task holds one pointer; the allocation behind it is no larger than a
        // compressed connection's state was before the scan (jemalloc's 32-byte class).
        assert_eq!(std::mem::size_of::<Option<Box<Layer>>>(), 8);
        assert!(
            std::mem::size_of::<Layer>() <= 32,
            "{}",
            std::mem::size_of::<Layer>()
        );
    }

    fn good_bytes() -> Vec<u8> {
        client_compress(&mut Compress::new(Compression::default(), false), b"hello")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends, the layer never panics, and what it passes to tungstenite
        /// ends in a message list or an error.
        #[test]
        fn any_bytes_are_read_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1_usize..64, 1..5),
        ) {
            let _ = read_through(agreed(), 4096, &bytes, sizes, false);
        }

        /// Frames that look like compressed messages, with random payloads and flags, never
        /// make the layer panic either.
        #[test]
        fn random_compressed_looking_frames_are_read_without_panic(
            frames in proptest::collection::vec(
                (prop_oneof![Just(0xc1_u8), Just(0x41), Just(0x00), Just(0x80), Just(0x89), Just(0x81)],
                 proptest::collection::vec(any::<u8>(), 0..200)),
                1..6),
            sizes in proptest::collection::vec(1_usize..64, 1..5),
        ) {
            let sent: Vec<u8> = frames.iter().flat_map(|(first, payload)| client_frame(*first, payload)).collect();
            let _ = read_through(agreed(), 4096, &sent, sizes, false);
        }

        /// Valid text, fragmented anywhere with pings between fragments, masked and read in
        /// any chops, comes out whole on every connection, and the layer holds nothing after.
        #[test]
        fn valid_text_in_any_chops_is_read_and_leaves_nothing_held(
            messages in proptest::collection::vec(("\\PC{0,60}", proptest::collection::vec(0_usize..200, 0..3)), 1..4),
            sizes in proptest::collection::vec(1_usize..40, 1..5),
        ) {
            let mut sent = Vec::new();
            for (message, splits) in &messages {
                sent.extend(fragments(message.as_bytes(), splits));
            }
            for deflate in [None, agreed()] {
                let read = read_until_end(deflate, 4096, &sent, sizes.clone(), false);
                prop_assert_eq!(read.end, None);
                let texts: Vec<Message> = read.messages.into_iter().filter(|m| m.is_text()).collect();
                prop_assert_eq!(texts, messages.iter().map(|(m, _)| text(m)).collect::<Vec<_>>());
                prop_assert!(read.holds_nothing);
            }
        }

        /// Text broken anywhere fails with 1007's failure (the layer's, or tungstenite's once
        /// the frame is whole) no later than the read that brings the first bad byte.
        #[test]
        fn broken_text_fails_at_the_read_with_the_bad_byte(
            before in "\\PC{0,60}",
            bad in prop_oneof![Just(&b"\xff"[..]), Just(&b"\xed\xa0\x80"[..]), Just(&b"\xf4\x90"[..]), Just(&b"\xc3\x28"[..])],
            after in "[a-z]{0,60}",
            splits in proptest::collection::vec(0_usize..200, 0..3),
            sizes in proptest::collection::vec(1_usize..40, 1..5),
        ) {
            let message = [before.as_bytes(), bad, after.as_bytes()].concat();
            let sent = fragments(&message, &splits);
            // The stream offset of the bad sequence's last byte, an upper bound on the byte
            // that breaks it: its frame's header and pings before it move it on.
            let last_bad = before.len() + bad.len() - 1;
            let offset = stream_offset(&message, &splits, last_bad);
            for deflate in [None, agreed()] {
                let read = read_until_end(deflate, 4096, &sent, sizes.clone(), false);
                let (error, _) = read.end.clone().unwrap_or_default();
                prop_assert!(error.contains("UTF-8"), "{:?}", read.end);
                let consumed = sent.len() - read.unread;
                prop_assert!(consumed <= offset + sizes.iter().max().copied().unwrap_or(1), "{} {}", consumed, offset);
            }
        }

        /// Compressed messages come out as sent, however the reads split them.
        #[test]
        fn compressed_messages_survive_any_split(
            messages in proptest::collection::vec("[a-c ]{0,300}", 1..5),
            sizes in proptest::collection::vec(1_usize..100, 1..5),
        ) {
            let mut compressor = Compress::new(Compression::default(), false);
            let mut sent = Vec::new();
            for message in &messages {
                compressor.reset();
                sent.extend(client_frame(0xc1, &client_compress(&mut compressor, message.as_bytes())));
            }
            let (read, end) = read_through(agreed(), 4096, &sent, sizes, false);
            prop_assert_eq!(end, None);
            prop_assert_eq!(read, messages.iter().map(|m| text(m)).collect::<Vec<_>>());
        }
    }
}
