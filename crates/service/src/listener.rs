//! The listening sockets: binding them with the options a gateway needs, and the accept loop
//! that hands each connection to `conn::serve`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::app::{App, Role};

/// Pending connections the kernel queues for `accept` (tokio's default is 128).
const LISTEN_BACKLOG: u32 = 4096;
/// How long the accept loop waits after a failed `accept` (out of file descriptors and the
/// like) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listening socket on `addr`.
pub(crate) fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(|| format!("cannot create a socket for {addr}"))?;
    // Restarts must not wait for TIME_WAIT sockets of the previous process.
    socket
        .set_reuseaddr(true)
        .with_context(|| format!("cannot configure {addr}"))?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which saves a
    // setsockopt per connection; frames are batched by the writer, not by Nagle.
    socket
        .set_nodelay(true)
        .with_context(|| format!("cannot configure {addr}"))?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    // A deep accept queue absorbs reconnect storms (the kernel caps it at somaxconn).
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Accepts connections on `listener` and serves each (`conn::serve`, tracked by `http`) until
/// `stop`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    role: Role,
    app: Arc<App>,
    stop: CancellationToken,
    http: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Elsewhere accepted sockets may not inherit the listener's TCP_NODELAY.
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        http.spawn(crate::conn::serve(
            Arc::clone(&app),
            role,
            stream,
            stop.clone(),
        ));
    }
}
