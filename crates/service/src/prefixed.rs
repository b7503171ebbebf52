//! The sockets a connection is served on: [`Socket`], a plain TCP stream or TLS over one, and
//! [`Prefixed`], a socket whose first bytes were already read, replayed before the socket's
//! own.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// TLS over TCP, boxed: the TLS state is large and an idle connection's task holds its socket.
pub(crate) type TlsSocket = Box<tokio_rustls::server::TlsStream<TcpStream>>;

/// A socket a connection is served on; the whole connection code is generic over it, so the
/// plaintext path stays a bare `TcpStream` with no dispatch.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath, for its address and options.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for TlsSocket {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// A socket whose first bytes were already read: reads return those bytes before the socket's.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    consumed: usize,
    stream: S,
}

impl<S: Socket> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, stream: S) -> Self {
        Self {
            prefix,
            consumed: 0,
            stream,
        }
    }

    /// The peer's address.
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp().peer_addr()
    }

    /// The socket and the bytes of the prefix not read yet.
    pub(crate) fn into_parts(mut self) -> (S, Vec<u8>) {
        let unread = self.prefix.split_off(self.consumed);
        (self.stream, unread)
    }
}

impl<S: Socket> AsyncRead for Prefixed<S> {
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

impl<S: Socket> AsyncWrite for Prefixed<S> {
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
