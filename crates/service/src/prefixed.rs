//! [`Prefixed`]: a socket whose first bytes were already read, replayed before the socket's own.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A socket whose first bytes were already read: reads return those bytes before the socket's.
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    consumed: usize,
    stream: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(prefix: Vec<u8>, stream: TcpStream) -> Self {
        Self {
            prefix,
            consumed: 0,
            stream,
        }
    }

    /// The peer's address.
    pub(crate) fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }

    /// The socket and the bytes of the prefix not read yet.
    pub(crate) fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        let unread = self.prefix.split_off(self.consumed);
        (self.stream, unread)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let unread = &this.prefix[this.consumed..];
        if unread.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        this.consumed += n;
        if this.consumed == this.prefix.len() {
            // Replayed in full: a long-lived connection keeps no copy of its first request.
            this.prefix = Vec::new();
            this.consumed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
