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
pub(crate) trait Socket:
    AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static
{
    /// The TCP socket underneath, for its address and options.
    fn tcp(&self) -> &TcpStream;
}

/// A socket that can tell, without reading, whether a read might find something.
pub(crate) trait ReadReady {
    /// `Ready` when a read might find bytes, the end of the stream or an error (it may be
    /// wrong that way); `Pending` when a read would wait, with the task registered to be
    /// woken when that changes.
    ///
    /// Only meaningful after a read of this socket waited (returned `Pending`) and nothing
    /// was read since: a layer above the bytes on the wire (TLS) may otherwise hold bytes
    /// the wire no longer shows.
    ///
    /// By default always `Ready`: every read is tried (the in-memory sockets of tests).
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The inherent method (inherent methods resolve before trait ones).
        Self::poll_read_ready(self, cx)
    }
}

impl Socket for TlsSocket {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

#[cfg(test)]
impl ReadReady for tokio::io::DuplexStream {}

/// A TLS read waits (tokio-rustls's `poll_read` returns `Pending`) only once rustls holds no
/// decrypted bytes and the TCP socket would block, so after one the TCP socket's readiness
/// is the whole story: new records arrive there first.
impl ReadReady for TlsSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A TCP socket says a read would wait once a read waited (tokio assumes a new socket
    /// ready, and a read that would block clears that), is woken and says it may have
    /// something once the peer writes, and says a read would wait again once that is read.
    #[tokio::test]
    async fn a_tcp_socket_is_read_ready_only_with_something_to_read() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut client = TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut waiting_read = |socket: &mut TcpStream| {
            let mut byte = [0; 1];
            let mut buf = ReadBuf::new(&mut byte);
            assert!(
                Pin::new(&mut *socket)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            );
            ReadReady::poll_read_ready(&*socket, &mut cx).is_ready()
        };

        assert!(!waiting_read(&mut server), "ready with nothing sent");
        client
            .write_all(b"hi")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        poll_fn(|cx| ReadReady::poll_read_ready(&server, cx))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut read = [0; 2];
        server
            .read_exact(&mut read)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&read, b"hi");
        assert!(
            !waiting_read(&mut server),
            "ready after everything was read"
        );
    }
}
